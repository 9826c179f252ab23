#!/usr/bin/env bash
# Installs what the browser tests (test/browser, playwright-core) need when it is missing: Debian's
# Chromium at /usr/bin/chromium (playwright-core never downloads a browser; PHI2_CHROMIUM may point at
# another Chromium instead). Installs with apt-get as root, or through sudo when not root. Idempotent.
set -euo pipefail

say() { echo "[setup-browser] $*" >&2; }

chromium=${PHI2_CHROMIUM:-/usr/bin/chromium}
if [ -x "$chromium" ]; then
  say "ok: $("$chromium" --version 2>/dev/null || echo "$chromium")"
  exit 0
fi
if [ -n "${PHI2_CHROMIUM:-}" ]; then
  say "PHI2_CHROMIUM=$PHI2_CHROMIUM is not an executable file"
  exit 1
fi

if [ "$(id -u)" = 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  say "Chromium is missing at /usr/bin/chromium and this user cannot install it (not root, no sudo)."
  say "Install it as root: apt-get install chromium   (or set PHI2_CHROMIUM to a Chromium binary)"
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  say "Chromium is missing at /usr/bin/chromium and there is no apt-get: install Chromium, or set PHI2_CHROMIUM"
  exit 1
fi
say "installing Debian's chromium (apt-get)"
"${SUDO[@]}" apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
if [ ! -x /usr/bin/chromium ]; then
  say "apt-get install chromium finished but /usr/bin/chromium is still missing"
  exit 1
fi
say "ok: $(/usr/bin/chromium --version 2>/dev/null)"
