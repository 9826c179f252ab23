#!/usr/bin/env python3
"""HF transformers goldens for the phi2-fixtures models.

    /root/golden-venv/bin/python scripts/golden_hf.py            # all: tiny, odd, kq
    python scripts/golden_hf.py --models tiny --check-llama      # also diff vs llama.cpp

Steps:
 1. Generates the fixtures with the Rust generator
    (`cargo run -p phi2-fixtures -- --out FIXTURES --only tiny,odd,kq`; skip with
    --no-generate). FIXTURES defaults to test/fixtures/gen (git-ignored).
 2. For each model: loads FIXTURES/NAME (HF layout, F32) with
    PhiForCausalLM.from_pretrained(dir, torch_dtype=float32, attn_implementation="eager"),
    greedily generates N new tokens after PROMPT with a loop of full forward passes
    (no KV cache; argmax restricted to ids < 50295, the real tokenizer entries), then
    runs one forward pass over prompt + generated and takes log_softmax over the full
    vocabulary (51200) in float32 for every position.
 3. Writes test/golden/NAME.hf.logprobs.f32 (rows x 51200 little-endian f32, row i =
    log p(. | tokens[0..=i]), rows = P + N) and test/golden/NAME.hf.json.

Diagnostics printed per model: logit std per position, and how much the logits move
when attention / MLP / rotary are ablated (to show the layers matter).

--check-llama runs test/oracle/llama-logprobs.mjs on FIXTURES/NAME-f32.gguf (same
weights) and reports max |delta logprob| against the HF rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
PROMPT = [464, 2068, 7586, 21831, 18045, 625, 198, 50284, 1169, 16931, 3290]
N_REAL_TOKENS = 50295
DEFAULT_NEW_TOKENS = {"tiny": 8, "odd": 8, "kq": 4}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def generate_fixtures(out: Path, models: list[str], release: bool) -> None:
    cmd = ["cargo", "run", "-q", "-p", "phi2-fixtures"]
    if release:
        cmd.append("--release")
    cmd += ["--", "--out", str(out), "--only", ",".join(models)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


@torch.no_grad()
def logits_of(model, tokens: list[int]) -> torch.Tensor:
    ids = torch.tensor([tokens], dtype=torch.long)
    return model(input_ids=ids, use_cache=False).logits[0].float()


@torch.no_grad()
def ablation_report(model, tokens: list[int], base: torch.Tensor) -> dict:
    """Relative change of the logits when parts of the network are disabled."""
    out = {}

    def rel(x):
        return float((x - base).norm() / base.norm())

    hooks = []
    try:
        for layer in model.model.layers:
            hooks.append(layer.self_attn.register_forward_hook(
                lambda m, i, o: (torch.zeros_like(o[0]),) + tuple(o[1:])))
        out["no_attention"] = rel(logits_of(model, tokens))
    finally:
        for h in hooks:
            h.remove()
    hooks = []
    try:
        for layer in model.model.layers:
            hooks.append(layer.mlp.register_forward_hook(lambda m, i, o: torch.zeros_like(o)))
        out["no_mlp"] = rel(logits_of(model, tokens))
    finally:
        for h in hooks:
            h.remove()
    # rotary: evaluate every token at position 0 only through position_ids
    ids = torch.tensor([tokens], dtype=torch.long)
    pos = torch.zeros_like(ids)
    out["no_rotary"] = rel(model(input_ids=ids, position_ids=pos, use_cache=False).logits[0].float())
    return out


def run_model(name: str, fixtures: Path, golden: Path, n_new: int) -> dict:
    from transformers import PhiForCausalLM

    mdir = fixtures / name
    st = mdir / "model.safetensors"
    if not st.is_file():
        raise SystemExit(f"missing {st} (run without --no-generate)")
    model = PhiForCausalLM.from_pretrained(str(mdir), torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    cfg = model.config
    rot = model.model.rotary_emb.inv_freq.numel() * 2
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    print(f"[{name}] hidden {cfg.hidden_size} layers {cfg.num_hidden_layers} heads {cfg.num_attention_heads} "
          f"head_dim {head_dim} rotary_dims {rot} rope {cfg.rope_parameters}", flush=True)

    tokens = list(PROMPT)
    margins = []
    for _ in range(n_new):
        lg = logits_of(model, tokens)[-1]
        lp = torch.log_softmax(lg, dim=-1)[:N_REAL_TOKENS]
        top = torch.topk(lp, 2)
        margins.append(float(top.values[0] - top.values[1]))
        tokens.append(int(top.indices[0]))
    generated = tokens[len(PROMPT):]

    logits = logits_of(model, tokens)
    logprobs = torch.log_softmax(logits, dim=-1).to(torch.float32).numpy()
    rows, vocab = logprobs.shape
    assert rows == len(PROMPT) + n_new and vocab == cfg.vocab_size, (rows, vocab)
    # the greedy choices must be reproduced by the single full pass
    for i, t in enumerate(generated):
        row = logprobs[len(PROMPT) - 1 + i, :N_REAL_TOKENS]
        if int(np.argmax(row)) != t:
            print(f"[{name}] warning: step {i}: full-pass argmax {int(np.argmax(row))} != greedy {t}")

    stds = logits[:, :N_REAL_TOKENS].std(dim=-1).tolist()
    abl = ablation_report(model, tokens, logits)
    print(f"[{name}] generated {generated}")
    print(f"[{name}] margins {[round(m, 4) for m in margins]}")
    print(f"[{name}] logit std per position {[round(s, 3) for s in stds]}")
    print(f"[{name}] ablation (relative logit change) {({k: round(v, 3) for k, v in abl.items()})}", flush=True)

    golden.mkdir(parents=True, exist_ok=True)
    bin_path = golden / f"{name}.hf.logprobs.f32"
    logprobs.astype("<f4").tofile(bin_path)
    import transformers
    meta = {
        "model": name,
        "fixture": f"{name}/model.safetensors",
        "fixture_sha256": sha256_file(st),
        "prompt": PROMPT,
        "tokens": generated,
        "rows": rows,
        "vocab": vocab,
        "dtype": "f32le",
        "row_meaning": "row i = log_softmax(logits) of the next token after tokens[0..=i] of prompt+tokens",
        "greedy": "argmax over ids < 50295",
        "margins": margins,
        "logit_std": stds,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    (golden / f"{name}.hf.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"[{name}] wrote {bin_path} ({bin_path.stat().st_size} bytes)", flush=True)
    return {"tokens": generated, "logprobs": logprobs}


def check_llama(name: str, fixtures: Path, hf: dict, n_new: int, gguf_type: str = "f32") -> float:
    gguf = fixtures / f"{name}-{gguf_type}.gguf"
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"{name}-{gguf_type}.llama.logprobs.f32"
    cmd = ["node", str(REPO / "test/oracle/llama-logprobs.mjs"), "--model", str(gguf),
           "--tokens", ",".join(map(str, PROMPT)), "--max-new-tokens", str(n_new), "--out", str(out)]
    res = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    toks = json.loads(res.stdout.strip().splitlines()[-1])["tokens"]
    ll = np.fromfile(out, dtype="<f4").reshape(hf["logprobs"].shape)
    d = np.abs(ll.astype(np.float64) - hf["logprobs"].astype(np.float64))
    same = toks == hf["tokens"]
    print(f"[{name}] llama.cpp {gguf.name}: tokens {toks} ({'same' if same else 'DIFFERENT'}), "
          f"max|dlogprob| {d.max():.3g}, mean {d.mean():.3g}, per-row max {[float(f'{x:.2g}') for x in d.max(axis=1)]}",
          flush=True)
    return float(d.max())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", type=Path, default=REPO / "test/fixtures/gen")
    ap.add_argument("--golden", type=Path, default=REPO / "test/golden")
    ap.add_argument("--models", default="tiny,odd,kq")
    ap.add_argument("--new-tokens", default=None,
                    help="N for every model, or name=N,... (default tiny=8,odd=8,kq=4)")
    ap.add_argument("--no-generate", action="store_true", help="use existing fixtures")
    ap.add_argument("--release", action="store_true", help="build the generator with --release")
    ap.add_argument("--check-llama", action="store_true", help="diff against llama.cpp on NAME-f32.gguf")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = [m for m in args.models.split(",") if m]
    n_new = dict(DEFAULT_NEW_TOKENS)
    if args.new_tokens:
        if "=" in args.new_tokens:
            for kv in args.new_tokens.split(","):
                k, v = kv.split("=")
                n_new[k] = int(v)
        else:
            n_new = {m: int(args.new_tokens) for m in models}
    t0 = time.time()
    if not args.no_generate:
        generate_fixtures(args.fixtures, models, args.release)
    worst = {}
    for m in models:
        hf = run_model(m, args.fixtures, args.golden, n_new.get(m, 8))
        if args.check_llama:
            worst[m] = check_llama(m, args.fixtures, hf, n_new.get(m, 8))
    if worst:
        print("max |dlogprob| HF vs llama.cpp (f32 gguf):", {k: float(f"{v:.3g}") for k, v in worst.items()})
    print(f"done in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
