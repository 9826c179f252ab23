#!/usr/bin/env bash
# The CUDA backend's device checks and benchmark (issue 12), run on a GPU machine in the
# repository root with what test/device/pack.sh prepared here. That machine has CUDA 13, PyTorch
# and transformers, but no Rust, no network and no Node.js, and one call carries at most 64 MiB
# with the tracked files, so Node.js travels in a first call of its own; the machine keeps
# ignored files while it stays warm (30 s after a call), so the second call must follow at once:
#
#   call 1, carry [".device/node.xz"]:     test/device/run.sh node
#   call 2, carry [".device/pkg.tar.xz"]:  test/device/run.sh [all|checks|bench|profile]   (timeout_s 540)
#
# (Call 1 only reports the version where the machine has Node.js >= 20 itself.)
# checks: test/device/checks.mjs on fixtures made there by phi2-fixtures (log-probs CPU vs CUDA,
#   greedy and seeded tokens, 100 load/generate/dispose cycles of device memory, the f16 KV cache).
# bench: phi2-bench --backend cuda on Phi-2-shaped random-weight GGUFs written there (F16, Q8_0,
#   Q4_0): 512-token prefill, 128-token decode, the GPU's bandwidth ceiling, HF transformers fp16
#   (eager) as the peer for F16 and Q4_0.
# profile: test/device/profile.mjs on the bench's Q4_0 and F16 models (512-token prompt, 64 steps):
#   each phase's share of a pass on the GPU (where our own kernels would pay), and with Nsight
#   Systems where installed, its per-kernel summary of the Q4_0 run (nsys-q4_0.txt).
# Everything lands in $OUT: log, device-checks.json, RESULTS.md (bench/RESULTS.md with the CUDA
# sections added by phi2-bench --write-results), bench-<type>.json, profile-<type>.json and
# nsys-q4_0.txt.
# PHI2_DEVICE_DRY_RUN=1 runs the same steps on a machine without a GPU, in a scratch clone with the
# carried files (CPU against CPU, the benchmark's tiny test shape on the CPU): a check of this
# script before device time is spent on it.
set -uo pipefail
cd "$(dirname "$0")/../.."
D=.device
OUT="${OUT:-/tmp/phi2-device-out}"
mkdir -p "$D" "$OUT"
exec > >(tee -a "$OUT/log") 2>&1

node_bin() {
  if command -v node >/dev/null 2>&1 && node -e 'process.exit(+process.versions.node.split(".")[0] < 20 ? 1 : 0)'; then
    command -v node
  elif [ -x "$D/node/node" ]; then
    echo "$PWD/$D/node/node"
  fi
}

if [ "${1:-}" = node ]; then
  if [ -z "$(node_bin)" ]; then
    [ -f "$D/node.xz" ] || { echo "no $D/node.xz: carry it (test/device/pack.sh makes it)"; exit 2; }
    mkdir -p "$D/node"
    python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('$D/node.xz'), open('$D/node/node', 'wb'))" || exit 1
    chmod +x "$D/node/node"
  fi
  echo "node: $(node_bin) $("$(node_bin)" --version)"
  exit 0
fi

what="${1:-all}"
NODE="$(node_bin)"
[ -n "$NODE" ] || { echo "no Node.js here: run 'test/device/run.sh node' first, carrying $D/node.xz"; exit 2; }
export PATH="$(dirname "$NODE"):$PATH"
echo "== $(date -u +%FT%TZ) node $(node --version), $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"

# The carried build: addons, phi2-fixtures, the SDK's dist and the npm packages it imports; the
# workspace links npm would make.
[ -f "$D/pkg.tar.xz" ] || { echo "no $D/pkg.tar.xz: carry it (test/device/pack.sh makes it)"; exit 2; }
rm -rf "$D/pkg" && mkdir -p "$D/pkg"
python3 -c "import tarfile; tarfile.open('$D/pkg.tar.xz').extractall('$D/pkg')" || exit 1
cp "$D/pkg/phi2-cpu.node" bindings/node/npm/linux-x64-gnu/phi2.linux-x64-gnu.node
cp "$D/pkg/phi2-cuda.node" bindings/node/npm/linux-x64-gnu-cuda/phi2.linux-x64-gnu.node
rm -rf packages/phi2/dist && cp -r "$D/pkg/dist" packages/phi2/dist
mkdir -p node_modules/@x node_modules/@huggingface
cp -r "$D/pkg/node_modules/zod" "$D/pkg/node_modules/gpt-3-encoder" node_modules/
cp -r "$D/pkg/node_modules/@huggingface/tokenizers" node_modules/@huggingface/
ln -sfn ../../packages/phi2 node_modules/@x/phi2
ln -sfn ../../bindings/node node_modules/@x/phi2-native
ln -sfn ../../bindings/node/npm/linux-x64-gnu node_modules/@x/phi2-native-linux-x64-gnu
ln -sfn ../../bindings/node/npm/linux-x64-gnu-cuda node_modules/@x/phi2-native-linux-x64-gnu-cuda
ln -sfn ../../bench node_modules/@x/phi2-bench

# The CUDA 13 libraries the addon links by name (the toolkit's, else PyTorch's wheels).
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
  p="$(ldconfig -p 2>/dev/null | awk -v l="$lib" '$1 == l { print $NF; exit }')"
  [ -n "$p" ] || p="$(find /usr/local/cuda/ /usr/local/cuda-13*/ /opt /usr/lib -name "$lib" 2>/dev/null | head -1)"
  if [ -n "$p" ]; then export LD_LIBRARY_PATH="$(dirname "$p")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; else echo "warning: $lib not found"; fi
done
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
# The SDK tries the CUDA addon where it sees the driver's device files; say so if they are absent
# here (a sandbox may hide them) and point it at the addon directly.
if ! ls /dev/nvidiactl /dev/nvidia0 /proc/driver/nvidia/version >/dev/null 2>&1; then
  echo "note: no /dev/nvidiactl, /dev/nvidia0 or /proc/driver/nvidia/version here; using PHI2_CUDA_ADDON"
  export PHI2_CUDA_ADDON="$PWD/bindings/node/npm/linux-x64-gnu-cuda/phi2.linux-x64-gnu.node"
fi
dry="${PHI2_DEVICE_DRY_RUN:-}"
if [ -n "$dry" ]; then
  export PHI2_CHECK_BACKEND=cpu
  bench_args=(--backend cpu --shape test --no-bandwidth)
  prof_backend=cpu
else
  prof_backend=cuda
  node -e "const c = require('@x/phi2-native/cuda'); console.log('CUDA addon:', c.addonPath, JSON.stringify(c.addonBackends()), JSON.stringify(c.cudaMemory(0)))" || exit 1
  bench_args=(--backend cuda)
fi

rc=0
if [ "$what" = all ] || [ "$what" = checks ]; then
  echo "== checks"
  chmod +x "$D/pkg/phi2-fixtures"
  "$D/pkg/phi2-fixtures" --out /tmp/phi2-fixtures >/dev/null || exit 1
  OUT="$OUT" node test/device/checks.mjs /tmp/phi2-fixtures || rc=1
fi
if [ "$what" = all ] || [ "$what" = bench ]; then
  echo "== bench"
  cp bench/RESULTS.md "$OUT/RESULTS.md"
  export PHI2_BENCH_CACHE=/tmp/phi2-bench
  for t in f16 q8_0 q4_0; do
    compare=()
    [ "$t" != q8_0 ] && [ -z "$dry" ] && compare=(--compare transformers)
    node bench/bin/phi2-bench.mjs --synthetic "$t" "${bench_args[@]}" "${compare[@]}" --runs 2 --prompt-tokens 512 --gen-tokens 128 \
      --write-results "$OUT/RESULTS.md" --json >"$OUT/bench-$t.json" || rc=1
  done
fi
if [ "$what" = all ] || [ "$what" = profile ]; then
  # Where the passes' time goes on this backend (the bench's models; test/device/profile.mjs),
  # and, where Nsight Systems is installed, the same Q4_0 run's CUDA kernels and copies.
  echo "== profile"
  # The bench's files (phi2-bench's names: phi2-TYPE-synthetic-vN.gguf, the dry run's test
  # shape phi2-test-TYPE-…); without them (`run.sh profile` alone on a fresh machine) the step
  # fails rather than passing with nothing profiled.
  for t in q4_0 f16; do
    f="$(ls /tmp/phi2-bench/phi2-"$t"-synthetic-v*.gguf /tmp/phi2-bench/phi2-test-"$t"-synthetic-v*.gguf 2>/dev/null | head -1)"
    [ -n "$f" ] || { echo "FAIL no $t model from the bench in /tmp/phi2-bench: run the bench first (run.sh all)"; rc=1; continue; }
    node test/device/profile.mjs --model "$f" --backend "$prof_backend" --prompt-tokens 512 --gen-tokens 64 --json "$OUT/profile-$t.json" || rc=1
    if [ "$t" = q4_0 ] && [ -z "$dry" ] && command -v nsys >/dev/null 2>&1; then
      timeout 120 nsys profile --trace=cuda --stats=true --force-overwrite=true -o /tmp/phi2-nsys \
        node test/device/profile.mjs --model "$f" --backend cuda --prompt-tokens 512 --gen-tokens 64 >"$OUT/nsys-q4_0.txt" 2>&1 ||
        echo "nsys failed (exit $?): see $OUT/nsys-q4_0.txt"
    fi
  done
fi
echo "== $(date -u +%FT%TZ) done, exit $rc"
exit $rc
