#!/usr/bin/env bash
# Cross-builds the engine crate (crates/phi2) for aarch64-unknown-linux-gnu and runs its tests under
# qemu user-mode emulation, on an x86-64 host:
#   1. every test binary below under `qemu-aarch64-static -cpu max` (NEON + dotprod and more), so
#      the best kernel set the engine detects there is checked against the scalar twin and the
#      goldens;
#   2. the kernels test (and generation, when it is one of them) once more under `-cpu cortex-a53`
#      (NEON, no dotprod): a kernel that used a dotprod instruction there without detecting it
#      first dies with SIGILL.
# rustup cannot add the target here: Debian's rustc 1.96 (rustc-web) builds std for it from its own
# sources (rust-web-src) with -Z build-std (RUSTC_BOOTSTRAP unlocks -Z on a stable compiler), and
# aarch64-linux-gnu-gcc links. Its own target dir (target/aarch64), so the Debian compiler's host
# artifacts (build scripts, proc macros) never replace the rustup build's in target/release.
# Needs scripts/setup-aarch64.sh, and the fixtures (scripts/test.sh generates them:
# target/release/phi2-fixtures --out test/fixtures/gen); the aarch64 binaries read the same files.
# Usage: scripts/test-aarch64.sh [TEST ...]   (default: the tests listed below; e.g. `kernels`)
set -euo pipefail
cd "$(dirname "$0")/.."

# Test binaries (crates/phi2/tests/*.rs) run under `-cpu max`: the numerical ones that check the
# kernels, the model math and decoding against goldens. Emulation is slow; measured under qemu on
# this 2-core host (shared): kernels 5 s, golden_hf 39 s, generation 6 s, quant 1 s (batch 87 s,
# speculative ~530 s and convert ~220 s are left to the native `cargo test`: too slow here).
default_tests=(kernels golden_hf generation quant reference_path)
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=("${default_tests[@]}")

say() { echo "[test-aarch64] $*" >&2; }
for tool in /usr/bin/rustc /usr/bin/cargo aarch64-linux-gnu-gcc qemu-aarch64-static; do
  command -v "$tool" >/dev/null 2>&1 || { say "missing $tool: run scripts/setup-aarch64.sh"; exit 1; }
done
for t in "${tests[@]}"; do
  [ -f "crates/phi2/tests/$t.rs" ] || { say "no test crates/phi2/tests/$t.rs"; exit 2; }
done
export PHI2_FIXTURES=${PHI2_FIXTURES:-$PWD/test/fixtures/gen}
[ -f "$PHI2_FIXTURES/manifest.json" ] ||
  { say "no fixtures in $PHI2_FIXTURES: run target/release/phi2-fixtures --out test/fixtures/gen"; exit 1; }

target=aarch64-unknown-linux-gnu
sysroot=/usr/aarch64-linux-gnu
export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$PWD/target/aarch64"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# Flags from the environment (a RUSTFLAGS meant for the host build) must not reach this one.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
test_args=()
for t in "${tests[@]}"; do test_args+=(--test "$t"); done
cargo_test() {
  /usr/bin/cargo test --release --locked -p phi2 --target "$target" -Z build-std=std,panic_abort "$@"
}

echo "== aarch64: cross-build (Debian rustc + build-std -> $CARGO_TARGET_DIR)"
started=$SECONDS
cargo_test --no-run "${test_args[@]}"
say "built in $((SECONDS - started)) s"

run() { # CPU TEST [FILTER]: one test binary (its tests matching FILTER) under qemu -cpu CPU
  local cpu=$1 t=$2 filter=${3:-} started=$SECONDS show=""
  # The kernels test prints the kernel sets it found on this CPU and the one in use.
  [ "$t" = kernels ] && show=1
  echo "== aarch64 (qemu -cpu $cpu): cargo test --test $t"
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -cpu $cpu -L $sysroot" \
    cargo_test --test "$t" -- ${show:+--show-output} $filter
  say "-cpu $cpu --test $t: $((SECONDS - started)) s"
}
for t in "${tests[@]}"; do run max "$t"; done
# A CPU without dotprod (Armv8.0): the run-time detection must not pick a dotprod kernel (the
# kernels test, and a whole model through the set it picks: generation), and candle's own
# quantized products, which use `sdot` unchecked, must not be reached from the engine (the CPU
# reference backend gives candle dequantized matrices there: reference_path's
# every_weight_type_runs_on_the_reference_path; its other tests compare candle's products with
# ours, which differ by more on dequantized weights, and the quant test calls candle's quantized
# product directly, which dies there).
for t in kernels generation; do
  if [[ " ${tests[*]} " == *" $t "* ]]; then run cortex-a53 "$t"; fi
done
if [[ " ${tests[*]} " == *" reference_path "* ]]; then
  run cortex-a53 reference_path every_weight_type_runs_on_the_reference_path
fi

# The linux-arm64 Node addon (bindings/node/npm/linux-arm64-gnu), run by an arm64 Node under
# qemu against the host's addon: the same tokens and log-probs, bit for bit; and the SDK's CLI
# (packages/phi2/dist, built by scripts/test.sh before this) on it (test/aarch64).
[ $# -eq 0 ] || exit 0
echo "== aarch64: the Node addon (napi-rs cdylib, cross-built)"
started=$SECONDS
/usr/bin/cargo build --release --locked -p phi2-node --target "$target" -Z build-std=std,panic_abort
addon=bindings/node/npm/linux-arm64-gnu/phi2.linux-arm64-gnu.node
cp "$CARGO_TARGET_DIR/$target/release/libphi2_node.so" "$addon"
say "addon built in $((SECONDS - started)) s: $addon"
node_arm64=$(scripts/setup-aarch64.sh --node)
[ -f bindings/node/npm/linux-x64-gnu/phi2.linux-x64-gnu.node ] ||
  { say "the host addon is missing: npm run build -w @x/phi2-native"; exit 1; }
started=$SECONDS
PHI2_ARM64_NODE="$node_arm64" PHI2_ARM64_ADDON="$PWD/$addon" node --test --test-concurrency=1 test/aarch64/*.test.mjs
say "addon tests: $((SECONDS - started)) s"
