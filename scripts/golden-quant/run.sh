#!/usr/bin/env bash
# Regenerates the committed goldens that prove the engine's quantizers and `convert` byte-exact
# against llama.cpp itself (the build node-llama-cpp 3.21.1 ships: node_modules/@node-llama-cpp/linux-x64):
#
#   test/golden/quant/input.f32, <type>.bin   ggml's quantize_row_<type>_ref (and f32 -> f16/bf16)
#                                             on deterministic test rows (crates/phi2/tests/convert_quant.rs)
#   test/golden/llama-quantize/<fixture>.<type>.tsv
#                                             llama_model_quantize (llama-quantize's defaults) of the
#                                             fixture's f32 GGUF: per tensor name, ggml type, sha256
#                                             (crates/phi2/tests/convert.rs compares `convert`'s output)
#
# Needs gcc, git, sha256sum, node_modules (npm ci) and the fixtures (test/fixtures/gen, from
# target/release/phi2-fixtures --out test/fixtures/gen). Usage: scripts/golden-quant/run.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bins="$root/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64"
bundle="$root/node_modules/node-llama-cpp/llama/gitRelease.bundle"
fixtures="${PHI2_FIXTURES:-$root/test/fixtures/gen}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The headers of exactly the llama.cpp these binaries were built from (node-llama-cpp ships its source as a git bundle).
git clone -q --no-checkout "$bundle" "$work/src"
mkdir -p "$work/include"
for h in include/llama.h ggml/include/ggml.h ggml/include/gguf.h ggml/include/ggml-cpu.h ggml/include/ggml-backend.h ggml/include/ggml-alloc.h ggml/include/ggml-opt.h; do
  git -C "$work/src" show "HEAD:$h" > "$work/include/$(basename "$h")"
done
gcc -O2 -std=c11 -I"$work/include" "$root/scripts/golden-quant/oracle.c" -o "$work/oracle" \
  "$bins/libllama.v0.4.0.so" "$bins/libggml-base.so" "$bins/libggml.v0.4.0.so" -Wl,-rpath,"$bins" -lm

out="$root/test/golden/quant"
mkdir -p "$out"
"$work/oracle" rows "$out"

tsv="$root/test/golden/llama-quantize"
mkdir -p "$tsv"
# llama_ftype numbers (llama.h) and the names `convert --type` takes.
ftypes="1:F16 32:BF16 7:Q8_0 2:Q4_0 3:Q4_1 8:Q5_0 9:Q5_1 15:Q4_K_M 17:Q5_K_M 18:Q6_K"
for model in tiny odd kq; do
  src="$fixtures/$model-f32.gguf"
  src_sha="$(sha256sum "$src" | cut -d' ' -f1)"
  for ft in $ftypes; do
    num="${ft%%:*}"; name="${ft#*:}"
    dst="$work/$model.$name.gguf"
    "$work/oracle" quantize "$src" "$dst" "$num" > "$work/log" 2>&1 || { cat "$work/log"; exit 1; }
    {
      set +o pipefail   # `tail | head` ends tail with SIGPIPE
      echo "# llama_model_quantize($model-f32.gguf sha256 $src_sha, ftype $num = $name), node-llama-cpp 3.21.1 (llama.cpp $(git -C "$work/src" rev-parse --short HEAD))"
      "$work/oracle" tensors "$dst" | while read -r tname ttype off size; do
        sha="$(tail -c +"$((off + 1))" "$dst" | head -c "$size" | sha256sum | cut -d' ' -f1)"
        printf '%s\t%s\t%s\n' "$tname" "$ttype" "$sha"
      done
    } > "$tsv/$model.$name.tsv"
    rm -f "$dst"
  done
done
echo "goldens written to $out and $tsv"
