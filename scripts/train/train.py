#!/usr/bin/env python3
"""Trains the embedded default model: HF transformers' PhiForCausalLM (Phi-2's architecture) with a
small config, on the corpus of prepare.py, on the CPU with ONE torch thread.

    nice -n 10 /root/train-venv/bin/python scripts/train/train.py --data /root/phi2-train \\
        --out /root/phi2-train/run --steps 1300 > /root/phi2-train/train.log 2>&1 &

Deterministic and resumable: the batch of step s is drawn from a generator seeded with (seed, s),
so a run resumed from OUT/ckpt.pt (written every --ckpt-every steps and at the end; model,
optimizer and step) goes on exactly as an uninterrupted one would (up to the nondeterminism of
the CPU kernels, which is below the loss noise).

The softmax is restricted to the ids the corpus uses (meta.json's used_ids, ~22k of 51200):
the model trains on a compact vocabulary (embedding rows and lm_head rows only for those ids).
export.py scatters the rows back into a normal 51200-id Phi model whose other ids have a zero
embedding, a zero lm_head row and an lm_head bias of -100, so their probability is below e^-90
and the exported model's log-probs equal the compact model's up to that mass.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

MODEL = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, partial_rotary_factor=0.4,
             rope_theta=10000.0, layer_norm_eps=1e-5, max_position_embeddings=2048, hidden_act="gelu_new")


def phi_config(vocab_size: int):
    from transformers import PhiConfig

    return PhiConfig(vocab_size=vocab_size, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, qk_layernorm=False,
                     tie_word_embeddings=False, bos_token_id=50256, eos_token_id=50256, **MODEL)


def load_data(data: Path):
    meta = json.loads((data / "meta.json").read_text())
    used = np.asarray(meta["used_ids"], dtype=np.int64)
    remap = np.full(51200, -1, dtype=np.int64)
    remap[used] = np.arange(used.size)
    train = remap[np.fromfile(data / "train.u16", dtype="<u2").astype(np.int64)]
    held = remap[np.fromfile(data / "heldout.u16", dtype="<u2").astype(np.int64)]
    assert (train >= 0).all() and (held >= 0).all()
    return used, torch.from_numpy(train), torch.from_numpy(held)


def batch(stream: torch.Tensor, seed: int, step: int, bsz: int, ctx: int) -> torch.Tensor:
    g = np.random.default_rng([seed, step])
    starts = g.integers(0, stream.numel() - ctx - 1, size=bsz)
    return torch.stack([stream[s:s + ctx + 1] for s in starts])


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1.0, p)))


def loss_of(model, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=x[:, :-1], use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model, stream: torch.Tensor, ctx: int, bsz: int, bf16: bool, limit: int | None = None) -> float:
    """Mean NLL over non-overlapping windows of ctx+1 tokens (every token but each window's first)."""
    model.eval()
    n = (stream.numel() - 1) // ctx
    wins = [stream[i * ctx:i * ctx + ctx + 1] for i in range(n)][:limit]
    tot, cnt = 0.0, 0
    for i in range(0, len(wins), bsz):
        x = torch.stack(wins[i:i + bsz])
        tot += float(loss_of(model, x, bf16)) * x[:, 1:].numel()
        cnt += x[:, 1:].numel()
    model.train()
    return tot / cnt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=1300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-bf16", action="store_true", help="F32 matmuls (default: bf16 autocast, F32 master weights)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    bf16 = not args.no_bf16
    from transformers import PhiForCausalLM

    used, train, held = load_data(args.data)
    cfg = phi_config(int(used.size))
    cfg._attn_implementation = "sdpa"
    model = PhiForCausalLM(cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "ckpt.pt"
    step, elapsed = 0, 0.0
    if ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, elapsed = st["step"], st.get("elapsed", 0.0)
        print(f"resumed from {ckpt} at step {step}", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"event": "start", "params_compact": n_params, "vocab_compact": int(used.size), "train_tokens": train.numel(),
                      "heldout_tokens": held.numel(), "args": {k: str(v) for k, v in vars(args).items()}}), flush=True)

    def save():
        tmp = args.out / "ckpt.pt.tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": elapsed,
                    "config": cfg.to_dict(), "used_ids": used.tolist(), "args": vars(args) | {"data": str(args.data), "out": str(args.out)}}, tmp)
        tmp.replace(ckpt)

    model.train()
    t0 = time.time()
    ema = None
    while step < args.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        x = batch(train, args.seed, step, args.batch, args.ctx)
        loss = loss_of(model, x, bf16)
        loss.backward()
        gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        ema = float(loss) if ema is None else 0.95 * ema + 0.05 * float(loss)
        now = time.time()
        elapsed += now - t0
        t0 = now
        if step % 10 == 0:
            print(json.dumps({"step": step, "loss": round(float(loss), 4), "ema": round(ema, 4), "gnorm": round(gn, 3),
                              "lr": round(lr_at(step - 1, args), 6), "elapsed_s": round(elapsed)}), flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            full = step == args.steps
            hl = evaluate(model, held, args.ctx, args.batch, bf16, None if full else 32)
            print(json.dumps({"step": step, "heldout_loss": round(hl, 4), "heldout_ppl": round(math.exp(hl), 2), "full": full}), flush=True)
            t0 = time.time()
        if step % args.ckpt_every == 0 or step == args.steps:
            save()
            t0 = time.time()
    tl = evaluate(model, train[:held.numel()], args.ctx, args.batch, bf16)
    print(json.dumps({"event": "done", "step": step, "elapsed_s": round(elapsed), "train_loss_sample": round(tl, 4)}), flush=True)


if __name__ == "__main__":
    main()
