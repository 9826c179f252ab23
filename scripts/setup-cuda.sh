#!/usr/bin/env bash
# Provides a CUDA 13.0 toolkit for building the CUDA addon (scripts/build-cuda.sh) on a machine
# with or without a GPU, and prints `export` lines for it (eval "$(scripts/setup-cuda.sh)").
#
# - nvcc: the machine's (CUDA_HOME, or nvcc on PATH) when it is CUDA 13.0; otherwise NVIDIA's
#   PyPI wheels, installed once under $PHI2_CUDA_HOME (default ~/.cache/phi2/cuda-13.0).
#   The version is pinned to 13.0: nvcc 13.0 writes PTX ISA 9.0, which an R580 driver (CUDA 13.0)
#   can load; a newer nvcc writes PTX that only newer drivers take.
# - Link libraries: candle's CUDA build links cuBLAS, cuBLASLt, cuRAND, NVRTC and the CUDA
#   runtime by name (cudarc's dynamic linking), so their sonames (libcublas.so.13, ...) end up in
#   the addon and must exist where it runs; here we only need something to link against. The
#   wheels hold the real libraries under their versioned names; lib/ gets the unversioned links the
#   linker looks for.
# - libcuda (the driver) comes with the driver, never with a toolkit wheel. Without a GPU we build
#   a stub with the soname libcuda.so.1 that defines every driver function cuda.h declares, so the
#   addon records libcuda.so.1 as needed (a stub defining nothing would be dropped by
#   --as-needed) and the real driver's library is used wherever the addon is loaded.
# Idempotent; needs python3 with pip and a C compiler (scripts/setup.sh installs one).
set -euo pipefail

say() { echo "[setup-cuda] $*" >&2; }

want_release="13.0"
home="${PHI2_CUDA_HOME:-$HOME/.cache/phi2/cuda-$want_release}"

nvcc_release() { "$1" --version 2>/dev/null | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p'; }

# A machine toolkit of the right release wins (the device machine has one).
for cand in "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "$(command -v nvcc 2>/dev/null || true)" /usr/local/cuda/bin/nvcc; do
  if [ -n "$cand" ] && [ -x "$cand" ] && [ "$(nvcc_release "$cand")" = "$want_release" ]; then
    root="$(cd "$(dirname "$cand")/.." && pwd)"
    say "using the machine's CUDA $want_release at $root"
    echo "export CUDA_HOME='$root' NVCC='$cand' PATH='$root/bin':\"\$PATH\""
    exit 0
  fi
done

# Wheel versions of the CUDA 13.0 release (nvcc 13.0.88, the device machine's).
wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14
)
root="$home/nvidia/cu13"
stamp="$home/.installed"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${wheels[*]}" ]; then
  say "installing the CUDA $want_release toolkit wheels into $home (about 1.5 GB)"
  # Only what an earlier install of ours left ($PHI2_CUDA_HOME may name a folder with other things).
  rm -rf "$home/nvidia" "$stamp"
  mkdir -p "$home"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$home" "${wheels[@]}" >&2
  echo "${wheels[*]}" >"$stamp"
fi
[ -x "$root/bin/nvcc" ] || { say "no nvcc at $root/bin/nvcc after the install"; exit 1; }

# Unversioned names for the linker.
for so in "$root"/lib/lib{cudart,cublas,cublasLt,curand,nvrtc}.so.*; do
  base="${so##*/}"
  ln -sfn "$base" "$root/lib/${base%%.so.*}.so"
done

# The driver stub (see the header).
stub="$root/lib/stubs/libcuda.so"
if [ ! -f "$stub" ] || [ "$root/include/cuda.h" -nt "$stub" ]; then
  say "building the libcuda.so.1 link stub from cuda.h"
  mkdir -p "$root/lib/stubs"
  src="$(mktemp --suffix=.c)"
  # Every function cuda.h declares, under the name the preprocessor gives it (cuMemAlloc →
  # cuMemAlloc_v2, ...): those are the symbols a binding generated from cuda.h refers to.
  cc -E -P -I "$root/include" -x c - <<<'#include <cuda.h>' |
    grep -oE '\bcu[A-Za-z0-9_]+[[:space:]]*\(' | tr -d '( \t' | sort -u |
    sed 's/.*/int &(void) { return 999; }/' >"$src"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub" "$src"
  ln -sfn libcuda.so "$root/lib/stubs/libcuda.so.1"
  rm -f "$src"
fi

echo "export CUDA_HOME='$root' NVCC='$root/bin/nvcc' PATH='$root/bin':\"\$PATH\" LIBRARY_PATH='$root/lib:$root/lib/stubs'\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
