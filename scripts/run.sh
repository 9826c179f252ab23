#!/usr/bin/env bash
# The main job: builds the engine and generates with Phi-2's architecture on the embedded default
# model (a deterministic tiny random-weight Phi-2, see README), greedy, from the seed prompt tokens.
# Pass `--model PATH` (a real phi-2 .gguf, .safetensors or HF directory) to run the real Phi-2.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -q -p phi2 -p phi2-fixtures --bin phi2-fixtures --example generate
model=test/fixtures/gen/tiny-q8_0.gguf
if [ "${1:-}" = "--model" ] && [ -n "${2:-}" ]; then model=$2; shift 2; fi
if [ ! -f "$model" ] && [ ! -d "$model" ]; then
  target/release/phi2-fixtures --out test/fixtures/gen --only tiny >/dev/null
fi
exec node scripts/generate-demo.mjs --model "$model" "$@"
