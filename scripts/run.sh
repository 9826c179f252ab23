#!/usr/bin/env bash
# The main job: builds the engine, the Node addon and the @x/phi2 SDK/CLI (whatever is missing),
# then runs `phi2 generate` on the Phi-2 model card's three sample prompts (QA, chat, code) with the
# card's sampling parameters, on the embedded default model: NOT Microsoft's Phi-2 but a 14M-parameter
# model with Phi-2's architecture and tokenizer, trained here on CPython's standard library and
# documentation (scripts/train; see README "The embedded default model"). Its answers read as
# Python-documentation English and its code as Python, without being right.
# Real Phi-2: ./scripts/run.sh --model /path/to/phi-2 (HF directory, .safetensors or .gguf).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"

model_args=()
if [ "${1:-}" = "--model" ] && [ -n "${2:-}" ]; then model_args=(--model "$2"); shift 2; fi

if [ ! -f bindings/node/npm/linux-x64-gnu/phi2.linux-x64-gnu.node ]; then
  echo "[run] building the native addon (first run only)" >&2
  npm run build --silent -w @x/phi2-native >&2
fi
if [ ! -f packages/phi2/dist/cli.js ] || [ ! -f packages/phi2/models/default.gguf ]; then
  echo "[run] building @x/phi2 (first run only)" >&2
  npm run build --silent -w @x/phi2 >&2
fi

phi2() { node packages/phi2/dist/cli.js "$@"; }
max=${PHI2_MAX_NEW_TOKENS:-60}

echo "=== QA (top_p 0.1, temperature 0.1)"
phi2 generate "${model_args[@]}" --format qa --do-sample --top-p 0.1 --temperature 0.1 --max-new-tokens "$max" --seed 1 \
  "What is a fermi paradox?" "$@"
echo
echo "=== chat (top_p 0.9, temperature 0.6)"
phi2 generate "${model_args[@]}" --format chat --do-sample --top-p 0.9 --temperature 0.6 --max-new-tokens "$max" --seed 1 \
  "What is a fermi paradox?" "$@"
echo
echo "=== code (top_p 0.9, temperature 0.6)"
phi2 generate "${model_args[@]}" --format code --do-sample --top-p 0.9 --temperature 0.6 --max-new-tokens "$max" --seed 1 \
  'def is_prime(n):
    """Return True if n is a prime number."""' "$@"
echo
