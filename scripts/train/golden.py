#!/usr/bin/env python3
"""PyTorch goldens for the trained default model (test/golden/default-model/).

    /root/train-venv/bin/python scripts/train/golden.py --data /root/phi2-train --gguf /root/phi2-train/export/gguf

1. heldout.txt: a fixed excerpt of the held-out split (prepare.py; documents no training batch
   saw): the first held-out standard-library module and the first held-out documentation page,
   each cut at a line end after ~2600 characters, joined by a blank line.
2. Loads test/golden/default-model/{config.json, model.f16.safetensors} widened to F32 into HF
   transformers' PhiForCausalLM (eager attention, float32) and evaluates the excerpt's tokens
   (Phi-2's tokenizer, no BOS) in windows of CONTEXT tokens exactly as `model.perplexity()` and
   llama.cpp's perplexity tool cut them (side by side, from an empty context each):
   heldout.golden.json gets every position's log-prob of the next token and its top-5
   (id, log-prob), log_softmax over all 51200 ids in float32.
3. PyTorch's perplexity of the excerpt (second half of each window scored, as llama.cpp) for
   F32 and for each GGUF in --gguf, its weights dequantized to F32 with the `gguf` package;
   and, for information, PyTorch's perplexity of the whole held-out split with the same windows.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load

REPO = Path(__file__).resolve().parents[2]
GOLD = REPO / "test/golden/default-model"
CONTEXT = 256
TOPK = 5
TYPES = ["F32", "F16", "Q8_0", "Q4_0", "Q4_K_M"]


def f16_bytes() -> bytes:
    """The committed model: test/golden/default-model/model.f16.safetensors.gz, expanded."""
    return gzip.decompress((GOLD / "model.f16.safetensors.gz").read_bytes())


def excerpt(data: Path) -> str:
    docs = json.loads((data / "docs.json").read_text())
    held = [d["name"] for d in docs if d["split"] == "heldout"]
    parts = []
    for prefix, root in (("stdlib/", Path("/usr/lib/python3.11")), ("docs/", Path("/usr/share/doc/python3.11/html/_sources"))):
        name = next(n for n in held if n.startswith(prefix) and (root / n[len(prefix):]).stat().st_size > 4000)
        text = (root / name[len(prefix):]).read_text(encoding="utf-8")
        cut = text.index("\n", 2600) + 1
        parts.append(text[:cut])
        print(f"excerpt: {name} [0:{cut}]")
    return "\n".join(parts)


def model_from(sd: dict, config: dict):
    from transformers import PhiConfig, PhiForCausalLM

    cfg = PhiConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type", "torch_dtype")})
    cfg._attn_implementation = "eager"
    m = PhiForCausalLM(cfg)
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return m.eval().float()


def windows(n: int, ctx: int) -> list[int]:
    return [i * ctx for i in range(n // ctx)]


@torch.no_grad()
def window_logprobs(model, ids: list[int], start: int, ctx: int) -> torch.Tensor:
    x = torch.tensor([ids[start:start + ctx]])
    return torch.log_softmax(model(input_ids=x, use_cache=False).logits[0].float(), dim=-1)


@torch.no_grad()
def perplexity(model, ids: list[int], ctx: int) -> dict:
    first = ctx // 2 + 1
    nll, n = 0.0, 0
    for s in windows(len(ids), ctx):
        lp = window_logprobs(model, ids, s, ctx)
        for k in range(first, ctx):
            nll -= float(lp[k - 1, ids[s + k]])
            n += 1
    return {"nll": nll / n, "perplexity": math.exp(nll / n), "tokens": n}


def gguf_state(path: Path, h: int) -> dict:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    sd = {}
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.final_layernorm.weight",
             "output_norm.bias": "model.final_layernorm.bias", "output.weight": "lm_head.weight", "output.bias": "lm_head.bias"}
    per_layer = {"attn_norm": "input_layernorm", "attn_output": "self_attn.dense", "ffn_up": "mlp.fc1", "ffn_down": "mlp.fc2"}
    for t in GGUFReader(path).tensors:
        shape = [int(d) for d in reversed(t.shape)]
        w = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape))
        if t.name in names:
            sd[names[t.name]] = w
            continue
        _, i, kind, what = t.name.split(".")
        pre = f"model.layers.{i}."
        if kind == "attn_qkv":
            for j, p in enumerate(("q_proj", "k_proj", "v_proj")):
                sd[f"{pre}self_attn.{p}.{what}"] = w[j * h:(j + 1) * h].clone()
        else:
            sd[f"{pre}{per_layer[kind]}.{what}"] = w
    return sd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="prepare.py's output")
    ap.add_argument("--gguf", type=Path, help="export.py's OUT/gguf (default-{type}.gguf)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from tokenizers import Tokenizer

    text = excerpt(args.data)
    (GOLD / "heldout.txt").write_text(text, encoding="utf-8")
    tok = Tokenizer.from_file(str(args.data / "tokenizer.json"))
    ids = tok.encode(text, add_special_tokens=False).ids
    config = json.loads((GOLD / "config.json").read_text())
    sd = {k: v.float() for k, v in load(f16_bytes()).items()}
    model = model_from(sd, config)

    out_windows = []
    for s in windows(len(ids), CONTEXT):
        lp = window_logprobs(model, ids, s, CONTEXT)
        top = torch.topk(lp, TOPK, dim=-1)
        tgt = [float(lp[k - 1, ids[s + k]]) for k in range(1, CONTEXT)]
        out_windows.append({"start": s, "next": tgt, "topIds": top.indices.tolist(), "topLogprobs": top.values.tolist()})
    ppl = {"F32": perplexity(model, ids, CONTEXT)}
    if args.gguf:
        for t in TYPES[1:]:
            ppl[t] = perplexity(model_from(gguf_state(args.gguf / f"default-{t.lower()}.gguf", config["hidden_size"]), config), ids, CONTEXT)
    held = np.fromfile(args.data / "heldout.u16", dtype="<u2").astype(np.int64).tolist()
    whole = perplexity(model, held, CONTEXT)
    golden = {
        "producer": "scripts/train/golden.py (HF transformers PhiForCausalLM, float32, eager attention)",
        "model": "test/golden/default-model/model.f16.safetensors.gz (expanded, widened to F32)",
        "modelSha256": hashlib.sha256(f16_bytes()).hexdigest(),
        "text": "test/golden/default-model/heldout.txt",
        "ids": ids,
        "contextLength": CONTEXT,
        "windows": out_windows,
        "pytorchPerplexity": ppl,
        "pytorchPerplexityWholeHeldout": whole | {"textTokens": len(held)},
    }
    (GOLD / "heldout.golden.json").write_text(json.dumps(golden) + "\n")
    print(json.dumps({"tokens": len(ids), "windows": len(out_windows), "perplexity": ppl, "wholeHeldout": whole}, indent=1))


if __name__ == "__main__":
    main()
