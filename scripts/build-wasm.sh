#!/usr/bin/env bash
# Builds bindings/wasm (the phi2 engine for wasm32-unknown-unknown + SIMD128, single-threaded)
# into bindings/wasm/pkg/: phi2_wasm.js (wasm-bindgen `--target web` ES module: `initSync({ module })`
# in Node or a Worker, `await init(url)` in a page), phi2_wasm.d.ts and phi2_wasm_bg.wasm.
# Needs scripts/setup-wasm.sh (Debian rustc 1.96 + rust-src for -Z build-std, wasm-ld-16,
# wasm-opt, wasm-bindgen CLI in target/tools). Usage: scripts/build-wasm.sh [--no-opt] [--features F]
set -euo pipefail
cd "$(dirname "$0")/.."

opt=1
features=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-opt) opt=0 ;;
    --features) features=(--features "$2"); shift ;;
    *) echo "usage: $0 [--no-opt] [--features F]" >&2; exit 2 ;;
  esac
  shift
done

say() { echo "[build-wasm] $*" >&2; }
for tool in /usr/bin/rustc /usr/bin/cargo wasm-ld-16 target/tools/bin/wasm-bindgen; do
  command -v "$tool" >/dev/null 2>&1 || { say "missing $tool: run scripts/setup-wasm.sh"; exit 1; }
done

# rustup cannot add the wasm32 target here: Debian's rustc 1.96 compiles std from its own sources
# (rust-web-src) with -Z build-std (RUSTC_BOOTSTRAP unlocks -Z on a stable compiler). Separate
# target dir per RUSTFLAGS flavour, so std is not rebuilt when switching (threads later: wasm-mt).
# getrandom 0.3 (pulled by candle, never called by the engine) needs its wasm_js backend cfg.
export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$PWD/target/wasm-st"
export CARGO_ENCODED_RUSTFLAGS=$(printf '%s\x1f' -C target-feature=+simd128 -C linker=wasm-ld-16 --cfg 'getrandom_backend="wasm_js"' | sed 's/\x1f$//')
# One codegen unit + fat LTO: smaller and faster wasm; the env leaves the workspace profile alone.
export CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
export CARGO_PROFILE_RELEASE_PANIC=abort
say "cargo build (wasm32-unknown-unknown, +simd128, build-std)"
/usr/bin/cargo build --release --locked -p phi2-wasm "${features[@]}" \
  --target wasm32-unknown-unknown -Z build-std=std,panic_abort

wasm="$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/phi2_wasm.wasm"
out=bindings/wasm/pkg
if [ "$opt" = 1 ] && command -v wasm-opt >/dev/null 2>&1; then
  # Before wasm-bindgen, not after: Debian's binaryen 108 rewrites the externref table that
  # wasm-bindgen adds as `anyref`, and V8 then rejects `table.set(0, undefined)` at init.
  # (binaryen keeps wasm-bindgen's custom section and describe exports.)
  say "wasm-opt -O3 (before wasm-bindgen)"
  wasm-opt -O3 --enable-simd --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
    --enable-mutable-globals --enable-multivalue --enable-reference-types \
    "$wasm" -o "$CARGO_TARGET_DIR/phi2_wasm.opt.wasm"
  wasm="$CARGO_TARGET_DIR/phi2_wasm.opt.wasm"
fi
rm -rf "$out"
say "wasm-bindgen --target web -> $out"
# --out-name keeps the file names stable whichever input (optimised or not) is used.
target/tools/bin/wasm-bindgen --target web --out-name phi2_wasm --out-dir "$out" "$wasm"
# The glue is an ES module; this marks it as one for Node (wasm-bindgen writes no package.json).
cat > "$out/package.json" <<'JSON'
{
  "name": "@x/phi2-wasm",
  "version": "0.1.0",
  "private": true,
  "type": "module",
  "main": "phi2_wasm.js",
  "types": "phi2_wasm.d.ts",
  "files": ["phi2_wasm.js", "phi2_wasm.d.ts", "phi2_wasm_bg.wasm", "phi2_wasm_bg.wasm.d.ts"],
  "sideEffects": false
}
JSON
say "ok: $(du -b "$out/phi2_wasm_bg.wasm" | cut -f1) bytes $out/phi2_wasm_bg.wasm"
