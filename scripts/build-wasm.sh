#!/usr/bin/env bash
# Builds bindings/wasm (the phi2 engine for wasm32-unknown-unknown) with wasm-pack, in up to three
# flavours. Each is a standard wasm-pack `--target web` package (package.json, phi2_wasm.js,
# phi2_wasm.d.ts, phi2_wasm_bg.wasm, phi2_wasm_bg.wasm.d.ts) with the same file names and the same
# exports (bindings/wasm/CONTRACT.md):
#   bindings/wasm/pkg/          st: +simd128, its own growable memory                 (target/wasm-st)
#   bindings/wasm/pkg-mt/       mt: +simd128,+atomics,+bulk-memory, imported *shared* memory
#                               (max 4 GiB), cargo feature `threads` (rayon pool on JS workers)
#                                                                                      (target/wasm-mt)
#   bindings/wasm/pkg-relaxed/  relaxed: mt plus +relaxed-simd (the SDK loads it instead of mt where
#                               the runtime validates and runs it correctly)      (target/wasm-relaxed)
# phi2_wasm.js: `initSync({ module })` in Node or a Worker, `await init(url)` in a page; threaded
# builds' thread workers: `initSync({ module, memory })`.
# Needs scripts/setup-wasm.sh (Debian rustc 1.96 + rust-src for -Z build-std, wasm-ld-16,
# wasm-opt, wasm-pack and the wasm-bindgen CLI in target/tools).
# Usage: scripts/build-wasm.sh [--only st|mt|relaxed[,...]] [--no-opt] [--features F]
#   default: st, mt and relaxed (the relaxed one is a third full build of std and the engine, as
#   long as mt's, on the first run). `--only` builds a subset, e.g. `--only st` for a quick check.
set -euo pipefail
cd "$(dirname "$0")/.."

opt=1
features=""
only="st,mt,relaxed"
usage="usage: $0 [--only st|mt|relaxed[,...]] [--no-opt] [--features F]"
while [ $# -gt 0 ]; do
  case "$1" in
    --no-opt) opt=0 ;;
    --features) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; features="$2"; shift ;;
    --only)
      [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
      only="$2"; shift
      for f in ${only//,/ }; do
        case "$f" in st|mt|relaxed) ;; *) echo "--only takes st, mt or relaxed (comma-separated)" >&2; exit 2 ;; esac
      done ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
  shift
done
[ -n "${only//,/}" ] || { echo "--only takes st, mt or relaxed (comma-separated)" >&2; exit 2; }
wanted() { case ",$only," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

say() { echo "[build-wasm] $*" >&2; }
tools="$PWD/target/tools/bin"
for tool in /usr/bin/rustc /usr/bin/cargo wasm-ld-16 "$tools/wasm-pack" "$tools/wasm-bindgen"; do
  command -v "$tool" >/dev/null 2>&1 || { say "missing $tool: run scripts/setup-wasm.sh"; exit 1; }
done

# wasm-pack runs `cargo` and `wasm-bindgen` from PATH (it uses a wasm-bindgen there when its version
# is the one in Cargo.lock, and would download one otherwise). Put first on PATH: Debian's cargo and
# the project's wasm-bindgen CLI.
#
# wasm-opt runs BEFORE wasm-bindgen, as it did before wasm-pack: Debian 12's binaryen 108 has no
# externref type (binaryen removed it in 108 and restored it in 110) and rewrites the externref
# table that wasm-bindgen adds, which V8 then rejects at init ("WebAssembly.Table.set(): Argument 1
# is invalid for table: function-typed object must be null ...").
# wasm-pack's own wasm-opt step runs after wasm-bindgen, so it is off (--no-opt, and `wasm-opt =
# false` in bindings/wasm/Cargo.toml), and the `wasm-bindgen` that wasm-pack finds on PATH is this
# wrapper: with PHI2_WASM_OPT_FLAGS set it optimises cargo's module into PHI2_WASM_OPT_OUT, then runs
# the real CLI on that (with the same arguments wasm-pack gave, --out-name included).
shim="$PWD/target/tools/wasm-pack-path"
mkdir -p "$shim"
ln -sfn /usr/bin/cargo "$shim/cargo"
cat > "$shim/wasm-bindgen.tmp" <<SH
#!/usr/bin/env bash
# Made by scripts/build-wasm.sh: the wasm-bindgen that wasm-pack runs (see there).
set -euo pipefail
if [ -n "\${PHI2_WASM_OPT_FLAGS:-}" ] && [ \$# -gt 0 ] && [[ "\$1" == *.wasm ]]; then
  in=\$1; shift
  echo "[build-wasm] wasm-opt \$PHI2_WASM_OPT_FLAGS (before wasm-bindgen)" >&2
  wasm-opt \$PHI2_WASM_OPT_FLAGS "\$in" -o "\$PHI2_WASM_OPT_OUT"
  exec "$tools/wasm-bindgen" "\$PHI2_WASM_OPT_OUT" "\$@"
fi
exec "$tools/wasm-bindgen" "\$@"
SH
chmod +x "$shim/wasm-bindgen.tmp" && mv "$shim/wasm-bindgen.tmp" "$shim/wasm-bindgen"
export PATH="$shim:$PATH"
# wasm-pack's download cache (nothing is downloaded with the above, but it creates it): project-local.
# (Its once-a-day update check asks the crates.io API; where that fails it only prints
# "[WARN]: failed to get wasm-pack version".)
export WASM_PACK_CACHE="$PWD/target/tools/wasm-pack-cache"
binaryen=$(wasm-opt --version 2>/dev/null | awk '{print $3}' || true)

# rustup cannot add the wasm32 target here: Debian's rustc 1.96 compiles std from its own sources
# (rust-web-src) with -Z build-std (RUSTC_BOOTSTRAP unlocks -Z on a stable compiler). wasm-pack's
# `--mode force` skips its rustup target check, and everything after `--` goes to `cargo build`.
# Separate target dir per RUSTFLAGS flavour (wasm-st, wasm-mt, wasm-relaxed), so std is not rebuilt
# when switching. getrandom 0.3 (pulled by candle, never called by the engine) needs its wasm_js
# backend cfg.
export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
# One codegen unit + fat LTO: smaller and faster wasm; the env leaves the workspace profile alone.
export CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
export CARGO_PROFILE_RELEASE_PANIC=abort

# build FLAVOUR OUT_DIR: one flavour, st, mt or relaxed.
build() {
  local flavour=$1 out=$2
  local flags=(-C linker=wasm-ld-16 --cfg 'getrandom_backend="wasm_js"')
  local feats=$features opt_features=()
  local started=$SECONDS
  case "$flavour" in
    mt|relaxed)
      # Threads: std must itself be built with atomics (build-std=std,panic_abort below does it with
      # these flags), and rustc 1.96 no longer adds the shared-memory link flags for +atomics. The
      # wasm-bindgen thread transform needs an imported shared memory and the linker's TLS symbols
      # (__wasm_init_tls, __tls_size, __tls_align, __tls_base); it finds __stack_pointer itself.
      local simd=+simd128
      [ "$flavour" = relaxed ] && { simd=+simd128,+relaxed-simd; opt_features=(--enable-relaxed-simd); }
      flags=(-C target-feature=+atomics,+bulk-memory,$simd "${flags[@]}"
        -C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--max-memory=4294967296
        -C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size
        -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base)
      feats="threads${feats:+,$feats}"
      opt_features+=(--enable-threads) ;;
    *)
      flags=(-C target-feature=+simd128 "${flags[@]}") ;;
  esac
  export CARGO_TARGET_DIR="$PWD/target/wasm-$flavour"
  CARGO_ENCODED_RUSTFLAGS=$(printf '%s\x1f' "${flags[@]}" | sed 's/\x1f$//')
  export CARGO_ENCODED_RUSTFLAGS

  unset PHI2_WASM_OPT_FLAGS PHI2_WASM_OPT_OUT
  if [ "$opt" = 1 ] && [ -n "$binaryen" ]; then
    if [ "$flavour" = relaxed ] && ! [ "$binaryen" -ge 116 ] 2>/dev/null; then
      # binaryen 108 (Debian 12) knows only a draft of relaxed SIMD: it reads the final opcodes as
      # other instructions (0xfd 0x113, i32x4.relaxed_dot_i8x16_i7x16_add_s, decodes as its own
      # two-operand i16x8.dot_i8x16_i7x16_u) or rejects them (0x100, relaxed_swizzle). 116 is a
      # conservative bound (binaryen updated the opcodes in 109-112, not pinned down here).
      say "[$flavour] wasm-opt skipped: binaryen $binaryen predates the final relaxed-SIMD opcodes"
    else
      local wasm_opt_flags=(-O3 --enable-simd --enable-bulk-memory --enable-sign-ext
        --enable-nontrapping-float-to-int --enable-mutable-globals --enable-multivalue
        --enable-reference-types "${opt_features[@]}")
      export PHI2_WASM_OPT_FLAGS="${wasm_opt_flags[*]}"
      export PHI2_WASM_OPT_OUT="$CARGO_TARGET_DIR/phi2_wasm.opt.wasm"
    fi
  fi

  # wasm-pack only adds files to its out dir: start from an empty one.
  rm -rf "$out"
  say "[$flavour] wasm-pack build --target web (${flags[*]:0:2}, build-std${feats:+, features $feats}) -> $out"
  # --no-opt: wasm-pack's wasm-opt step would run after wasm-bindgen (see above for why not).
  # --scope x: the package is @x/phi2-wasm. --out-dir is relative to the crate (bindings/wasm).
  "$tools/wasm-pack" build bindings/wasm --target web --mode force --no-opt --release \
    --scope x --out-dir "${out#bindings/wasm/}" --out-name phi2_wasm -- \
    --locked ${feats:+--features "$feats"} -Z build-std=std,panic_abort


  local f
  for f in package.json phi2_wasm.js phi2_wasm.d.ts phi2_wasm_bg.wasm phi2_wasm_bg.wasm.d.ts; do
    [ -s "$out/$f" ] || { say "[$flavour] wasm-pack wrote no $out/$f"; exit 1; }
  done
  if [ "$flavour" != st ]; then
    # A threads build that silently lost its shared memory would run single-threaded (or fail
    # only in a worker): check what wasm-bindgen made of it.
    grep -q 'shared: *true' "$out/phi2_wasm.js" ||
      { say "[$flavour] $out/phi2_wasm.js creates no shared memory: not a threads build"; exit 1; }
  fi
  say "[$flavour] ok in $((SECONDS - started)) s: $(du -b "$out/phi2_wasm_bg.wasm" | cut -f1) bytes $out/phi2_wasm_bg.wasm"
}

if wanted st; then build st bindings/wasm/pkg; fi
if wanted mt; then build mt bindings/wasm/pkg-mt; fi
if wanted relaxed; then build relaxed bindings/wasm/pkg-relaxed; fi
