#!/usr/bin/env bash
# Builds bindings/wasm (the phi2 engine for wasm32-unknown-unknown + SIMD128) in two flavours, both
# wasm-bindgen `--target web` ES modules with the same file names and the same exports
# (bindings/wasm/CONTRACT.md):
#   bindings/wasm/pkg/     single-threaded: +simd128, its own growable memory   (target/wasm-st)
#   bindings/wasm/pkg-mt/  multi-threaded: +simd128,+atomics,+bulk-memory, imported *shared*
#                          memory (max 4 GiB), cargo feature `threads` (rayon pool on JS workers)
#                                                                                (target/wasm-mt)
# Each holds phi2_wasm.js (`initSync({ module })` in Node or a Worker, `await init(url)` in a page;
# pkg-mt thread workers: `initSync({ module, memory })`), phi2_wasm.d.ts and phi2_wasm_bg.wasm.
# Needs scripts/setup-wasm.sh (Debian rustc 1.96 + rust-src for -Z build-std, wasm-ld-16,
# wasm-opt, wasm-bindgen CLI in target/tools).
# Usage: scripts/build-wasm.sh [--only st|mt] [--no-opt] [--features F]
set -euo pipefail
cd "$(dirname "$0")/.."

opt=1
features=""
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-opt) opt=0 ;;
    --features) features="$2"; shift ;;
    --only) only="$2"; shift; case "$only" in st|mt) ;; *) echo "--only takes st or mt" >&2; exit 2 ;; esac ;;
    *) echo "usage: $0 [--only st|mt] [--no-opt] [--features F]" >&2; exit 2 ;;
  esac
  shift
done

say() { echo "[build-wasm] $*" >&2; }
for tool in /usr/bin/rustc /usr/bin/cargo wasm-ld-16 target/tools/bin/wasm-bindgen; do
  command -v "$tool" >/dev/null 2>&1 || { say "missing $tool: run scripts/setup-wasm.sh"; exit 1; }
done

# rustup cannot add the wasm32 target here: Debian's rustc 1.96 compiles std from its own sources
# (rust-web-src) with -Z build-std (RUSTC_BOOTSTRAP unlocks -Z on a stable compiler). Separate
# target dir per RUSTFLAGS flavour (wasm-st, wasm-mt), so std is not rebuilt when switching.
# getrandom 0.3 (pulled by candle, never called by the engine) needs its wasm_js backend cfg.
export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
# One codegen unit + fat LTO: smaller and faster wasm; the env leaves the workspace profile alone.
export CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
export CARGO_PROFILE_RELEASE_PANIC=abort

# build FLAVOUR OUT_DIR: one flavour, st or mt.
build() {
  local flavour=$1 out=$2
  local flags=(-C linker=wasm-ld-16 --cfg 'getrandom_backend="wasm_js"')
  local feats=$features opt_features=()
  if [ "$flavour" = mt ]; then
    # Threads: std must itself be built with atomics (build-std=std,panic_abort below does it with
    # these flags), and rustc 1.96 no longer adds the shared-memory link flags for +atomics. The
    # wasm-bindgen thread transform needs an imported shared memory and the linker's TLS symbols
    # (__wasm_init_tls, __tls_size, __tls_align, __tls_base); it finds __stack_pointer itself.
    flags=(-C target-feature=+atomics,+bulk-memory,+simd128 "${flags[@]}"
      -C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--max-memory=4294967296
      -C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size
      -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base)
    feats="threads${feats:+,$feats}"
    opt_features=(--enable-threads)
  else
    flags=(-C target-feature=+simd128 "${flags[@]}")
  fi
  export CARGO_TARGET_DIR="$PWD/target/wasm-$flavour"
  CARGO_ENCODED_RUSTFLAGS=$(printf '%s\x1f' "${flags[@]}" | sed 's/\x1f$//')
  export CARGO_ENCODED_RUSTFLAGS
  say "[$flavour] cargo build (wasm32-unknown-unknown, ${flags[*]:0:2}, build-std${feats:+, features $feats})"
  /usr/bin/cargo build --release --locked -p phi2-wasm ${feats:+--features "$feats"} \
    --target wasm32-unknown-unknown -Z build-std=std,panic_abort

  local wasm="$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/phi2_wasm.wasm"
  if [ "$opt" = 1 ] && command -v wasm-opt >/dev/null 2>&1; then
    # Before wasm-bindgen, not after: Debian's binaryen 108 rewrites the externref table that
    # wasm-bindgen adds as `anyref`, and V8 then rejects `table.set(0, undefined)` at init.
    # (binaryen keeps wasm-bindgen's custom section and describe exports.)
    say "[$flavour] wasm-opt -O3 (before wasm-bindgen)"
    wasm-opt -O3 --enable-simd --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
      --enable-mutable-globals --enable-multivalue --enable-reference-types "${opt_features[@]}" \
      "$wasm" -o "$CARGO_TARGET_DIR/phi2_wasm.opt.wasm"
    wasm="$CARGO_TARGET_DIR/phi2_wasm.opt.wasm"
  fi
  rm -rf "$out"
  say "[$flavour] wasm-bindgen --target web -> $out"
  # --out-name keeps the file names stable whichever input (optimised or not) is used.
  target/tools/bin/wasm-bindgen --target web --out-name phi2_wasm --out-dir "$out" "$wasm"
  # The glue is an ES module; this marks it as one for Node (wasm-bindgen writes no package.json).
  local name=@x/phi2-wasm
  [ "$flavour" = mt ] && name=@x/phi2-wasm-mt
  cat > "$out/package.json" <<JSON
{
  "name": "$name",
  "version": "0.1.0",
  "private": true,
  "type": "module",
  "main": "phi2_wasm.js",
  "types": "phi2_wasm.d.ts",
  "files": ["phi2_wasm.js", "phi2_wasm.d.ts", "phi2_wasm_bg.wasm", "phi2_wasm_bg.wasm.d.ts"],
  "sideEffects": false
}
JSON
  if [ "$flavour" = mt ]; then
    # A threads build that silently lost its shared memory would run single-threaded (or fail
    # only in a worker): check what wasm-bindgen made of it.
    grep -q 'shared: *true' "$out/phi2_wasm.js" ||
      { say "[$flavour] $out/phi2_wasm.js creates no shared memory: not a threads build"; exit 1; }
  fi
  say "[$flavour] ok: $(du -b "$out/phi2_wasm_bg.wasm" | cut -f1) bytes $out/phi2_wasm_bg.wasm"
}

[ "$only" = mt ] || build st bindings/wasm/pkg
[ "$only" = st ] || build mt bindings/wasm/pkg-mt
