#!/usr/bin/env bash
# Installs what the wasm32 build (scripts/build-wasm.sh) needs, when it is missing. Idempotent.
#   - Debian rustc-web/cargo-web 1.96 + rust-web-src (std sources for `-Z build-std`; rustup
#     cannot add the wasm32 target here), lld-16 (wasm-ld-16) and binaryen (wasm-opt).
#   - wasm-pack (pinned below), which drives the build, and wasm-bindgen-cli at exactly the
#     version of the `wasm-bindgen` crate in Cargo.lock (wasm-pack looks for that version on
#     PATH before it would download one), both built with `cargo install --locked` into
#     target/tools (project-local, nothing global; skipped when the right version is there).
#     The npm `wasm-pack` package is not used: it downloads a prebuilt binary from GitHub.
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

# cargo_install NAME VERSION CRATE: `cargo install --locked CRATE --version =VERSION` into
# target/tools unless target/tools/bin/NAME already reports VERSION.
root="$PWD/target/tools"
cargo_install() {
  local bin=$1 ver=$2 crate=$3 have
  have=$("$root/bin/$bin" --version 2>/dev/null | awk '{print $2}' || true)
  [ "$have" = "$ver" ] && return 0
  [ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
  say "cargo install $crate $ver -> target/tools"
  # --locked first; if the registry mirror lacks one of the tool's locked dependencies (seen:
  # webpki-roots 1.0.11 for wasm-bindgen-cli's ureq, used only by its test runner), resolve
  # afresh instead. No CARGO_TARGET_DIR: cargo install then builds in a temporary directory.
  ( unset CARGO_TARGET_DIR
    cargo install -f --locked "$crate" --version "=$ver" --root "$root" ||
      { say "locked install of $crate failed; retrying without --locked"
        cargo install -f "$crate" --version "=$ver" --root "$root"; } )
}

# wasm-pack: builds (cargo), runs wasm-bindgen and writes the npm package (scripts/build-wasm.sh).
wasm_pack_ver=0.15.1
cargo_install wasm-pack "$wasm_pack_ver" wasm-pack

# The CLI must match the crate exactly (older CLIs also reject wasm from rustc >= 1.94).
ver=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[ -n "$ver" ] || { say "wasm-bindgen not found in Cargo.lock"; exit 1; }
cargo_install wasm-bindgen "$ver" wasm-bindgen-cli
say "ok: $(/usr/bin/rustc --version), $(wasm-ld-16 --version | head -1), $(wasm-opt --version), wasm-pack $wasm_pack_ver, wasm-bindgen $ver"
