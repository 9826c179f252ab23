"""phi2-bench's HF transformers peer (--compare transformers, with --backend cuda).

One measured run in its own process, like bench/lib/child.mjs: HF `PhiForCausalLM` with random
weights of the benchmark's shapes, in PyTorch fp16 on the GPU with eager attention (transformers'
reference path for Phi), then for each prompt size one greedy generation of `genTokens` tokens
from a fresh cache, each step one forward pass of one token plus the argmax read back on the
host, as a user's generation loop does. Prints `PHI2BENCH_RESULT {json}` on stdout.

    python3 transformers_peer.py '{"promptTokens":[512],"genTokens":128,"warmup":true,
                                   "shape":{"hidden":2560,"layers":32,"heads":32,"intermediate":10240,
                                            "vocab":51200,"rotary":32,"context":2048}}'

Needs torch and transformers (the device machine has both); no weights are read.
"""

import json
import resource
import sys
import time


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def prompt_ids(n: int, vocab: int) -> list:
    # Deterministic ordinary-looking ids (the GPU's speed does not depend on which).
    return [(7919 * i + 198) % min(vocab, 50000) for i in range(n)]


def main() -> dict:
    cfg = json.loads(sys.argv[1])
    s = cfg["shape"]
    import torch
    import transformers
    from transformers import PhiConfig, PhiForCausalLM

    if not torch.cuda.is_available():
        raise RuntimeError("PyTorch sees no CUDA device")
    head_dim = s["hidden"] // s["heads"]
    conf = PhiConfig(
        vocab_size=s["vocab"],
        hidden_size=s["hidden"],
        intermediate_size=s["intermediate"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["heads"],
        max_position_embeddings=s["context"],
        partial_rotary_factor=s["rotary"] / head_dim,
        layer_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    conf._attn_implementation = "eager"
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device("cuda"):
        torch.set_default_dtype(torch.float16)
        model = PhiForCausalLM(conf).eval()
        torch.set_default_dtype(torch.float32)
    torch.cuda.synchronize()
    load_ms = (time.perf_counter() - t0) * 1000
    out = {
        "loadMs": load_ms,
        "rssAfterLoad": peak_rss(),
        "peakRssAfterLoad": peak_rss(),
        "info": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0),
            "dtype": "float16",
            "attention": "eager",
            "weights": "random (no file)",
        },
        "prompts": [],
    }

    @torch.inference_mode()
    def run(ids: list, n: int) -> dict:
        x = torch.tensor([ids], device="cuda")
        torch.cuda.synchronize()
        t = time.perf_counter()
        o = model(input_ids=x, use_cache=True)
        past = o.past_key_values
        tok = int(o.logits[0, -1].argmax())
        first = time.perf_counter()
        for _ in range(n - 1):
            o = model(input_ids=torch.tensor([[tok]], device="cuda"), past_key_values=past, use_cache=True)
            past = o.past_key_values
            tok = int(o.logits[0, -1].argmax())
        end = time.perf_counter()
        return {"promptMs": (first - t) * 1000, "generateMs": (end - first) * 1000, "generated": n, "wallMs": (end - t) * 1000}

    if cfg.get("warmup", True):
        run(prompt_ids(4, s["vocab"]), 2)
    for p in cfg["promptTokens"]:
        r = run(prompt_ids(p, s["vocab"]), cfg["genTokens"])
        out["prompts"].append({"promptTokens": p, "promptTokensEvaluated": p, "finishReason": "length", **r})
    out["info"]["gpuPeakMemoryBytes"] = torch.cuda.max_memory_allocated()
    return out


if __name__ == "__main__":
    try:
        result = main()
        result["peakRss"] = peak_rss()
        print("\nPHI2BENCH_RESULT " + json.dumps(result), flush=True)
    except Exception as e:  # reported to phi2-bench as this run's failure
        print("\nPHI2BENCH_RESULT " + json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        sys.exit(1)
