#!/usr/bin/env bash
# Installs what the wasm32 build (scripts/build-wasm.sh) needs, when it is missing. Idempotent.
#   - Debian rustc-web/cargo-web 1.96 + rust-web-src (std sources for `-Z build-std`; rustup
#     cannot add the wasm32 target here), lld-16 (wasm-ld-16) and binaryen (wasm-opt).
#   - wasm-bindgen-cli at exactly the version of the `wasm-bindgen` crate in Cargo.lock,
#     built with `cargo install --locked` into target/tools (project-local; nothing global).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[setup-wasm] $*" >&2; }

missing=()
[ -x /usr/bin/rustc ] || missing+=(rustc-web)
[ -x /usr/bin/cargo ] || missing+=(cargo-web)
ls -d /usr/src/rustc-*/library/std >/dev/null 2>&1 || missing+=(rust-web-src)
command -v wasm-ld-16 >/dev/null 2>&1 || missing+=(lld-16)
command -v wasm-opt >/dev/null 2>&1 || missing+=(binaryen)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The CLI must match the crate exactly (older CLIs also reject wasm from rustc >= 1.94).
ver=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[ -n "$ver" ] || { say "wasm-bindgen not found in Cargo.lock"; exit 1; }
root="$PWD/target/tools"
have=$("$root/bin/wasm-bindgen" --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$ver" ]; then
  [ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
  say "cargo install wasm-bindgen-cli $ver -> target/tools"
  # --locked first; if the registry mirror lacks one of the CLI's locked dependencies (seen:
  # webpki-roots 1.0.11 for ureq, used only by the test runner), resolve afresh instead.
  # No CARGO_TARGET_DIR: cargo install then builds in a temporary directory and removes it.
  unset CARGO_TARGET_DIR
  cargo install -f --locked wasm-bindgen-cli --version "=$ver" --root "$root" ||
    { say "locked install failed; retrying without --locked"; \
      cargo install -f wasm-bindgen-cli --version "=$ver" --root "$root"; }
fi
say "ok: $(/usr/bin/rustc --version), $(wasm-ld-16 --version | head -1), $(wasm-opt --version), wasm-bindgen $ver"
