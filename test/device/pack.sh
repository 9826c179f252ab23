#!/usr/bin/env bash
# Prepares, on this machine, what test/device/run.sh needs on a GPU machine that has CUDA, PyTorch
# and transformers but no Rust, no network and no Node.js (the project's device machine):
#   .device/node.xz       this machine's Node.js, xz-compressed (the first device call unpacks it)
#   .device/pkg.tar.xz    the CUDA addon, the CPU addon, phi2-fixtures, the SDK's dist/ (no wasm)
#                         and the npm packages the SDK and phi2-bench import
# Two files because a device call carries at most 64 MiB with the repository's tracked files
# (~43 MB): Node.js alone is ~22 MB compressed (stripped), the rest ~8 MB. .device/ is ignored by
# git; test/device/budget.test.mjs keeps the tracked files small enough for the first call.
#   test/device/pack.sh   (then see test/device/run.sh for the two calls)
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh
cargo build --release --locked -p phi2-fixtures
npm run build --silent -w @x/phi2-native
npm run build --silent -w @x/phi2
scripts/build-cuda.sh

rm -rf .device
mkdir -p .device/pkg/dist .device/pkg/node_modules/@huggingface
cp bindings/node/npm/linux-x64-gnu-cuda/phi2.linux-x64-gnu.node .device/pkg/phi2-cuda.node
cp bindings/node/npm/linux-x64-gnu/phi2.linux-x64-gnu.node .device/pkg/phi2-cpu.node
cp target/release/phi2-fixtures .device/pkg/
strip --strip-unneeded .device/pkg/phi2-cpu.node .device/pkg/phi2-fixtures
(cd packages/phi2/dist && tar cf - --exclude=./wasm .) | tar xf - -C .device/pkg/dist
cp -r node_modules/zod node_modules/gpt-3-encoder .device/pkg/node_modules/
cp -r node_modules/@huggingface/tokenizers .device/pkg/node_modules/@huggingface/
tar -C .device/pkg -cf - . | xz -9 -T2 >.device/pkg.tar.xz
rm -rf .device/pkg
# Debian's node carries its debug information: stripped, 2 MB less to carry (v20.20.2: 23.9 ->
# 21.9 MB compressed), which the call with the tracked tree needs.
cp "$(readlink -f "$(command -v node)")" .device/node
strip --strip-unneeded .device/node
xz -9 -T2 -c .device/node >.device/node.xz
rm .device/node

# (du prints the total even when a tracked file is missing from the tree; its status is not ours.)
tree_bytes=$({ git ls-files -z | xargs -0 du -cb 2>/dev/null || true; } | tail -1 | cut -f1)
over=0
for f in .device/node.xz .device/pkg.tar.xz; do
  size=$(stat -c %s "$f")
  echo "[device/pack] $f: $((size / 1000000)) MB; with the tracked tree $(((size + tree_bytes) / 1048576)) MiB of the 64 MiB a call carries" >&2
  [ $((size + tree_bytes)) -le $((64 << 20)) ] || { echo "[device/pack] $f does not fit in one call" >&2; over=1; }
done
exit $over
