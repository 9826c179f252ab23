#!/usr/bin/env bash
# Builds the CUDA addon: the phi2 engine with candle's CUDA device (feature `cuda`), as the platform
# package @x/phi2-native-linux-x64-gnu-cuda (bindings/node/npm/linux-x64-gnu-cuda). Needs no GPU:
# scripts/setup-cuda.sh provides nvcc 13.0 (the machine's, or NVIDIA's PyPI wheels) and the
# libraries to link against. Not part of scripts/test.sh (about 10 minutes on 2 cores, ~1.5 GB of
# wheels); the CPU build never needs any of it.
#
#   scripts/build-cuda.sh            # kernels for sm_90 (H100 / H200)
#   CUDA_COMPUTE_CAP=80 scripts/build-cuda.sh   # for Ampere / Ada instead
#
# candle compiles most of its kernels to PTX (which the driver compiles for the GPU it finds) but
# its quantized matmul kernels (MMVQ / MMQ) to machine code for the one architecture named by
# CUDA_COMPUTE_CAP; 90 means sm_90a, which runs on Hopper only. The addon loads only where
# libcuda.so.1 (the driver) and the CUDA 13 libraries (libcudart.so.13, libcublas.so.13,
# libcurand.so.10) are found; the SDK never loads it otherwise (packages/phi2/src/node/native.ts).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"

eval "$(scripts/setup-cuda.sh)"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# A target directory of its own: the CUDA build must not replace the CPU build's artifacts.
export CARGO_TARGET_DIR="$PWD/target/cuda"

echo "[build-cuda] cargo build --release --locked -p phi2-node --features cuda (sm_$CUDA_COMPUTE_CAP, $("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/nvcc \1/p'))" >&2
cargo build --release --locked -p phi2-node --features cuda

out=bindings/node/npm/linux-x64-gnu-cuda/phi2.linux-x64-gnu.node
cp target/cuda/release/libphi2_node.so "$out.tmp"
strip --strip-unneeded "$out.tmp"
mv "$out.tmp" "$out"
echo "[build-cuda] $out ($(du -h "$out" | cut -f1)); needs: $(readelf -d "$out" | sed -n 's/.*NEEDED.*\[\(lib\(cuda\|cu\|nv\)[^]]*\)\]/\1/p' | tr '\n' ' ')" >&2
