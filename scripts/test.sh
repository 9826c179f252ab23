#!/usr/bin/env bash
# Runs every test: Rust unit + golden tests (engine vs HF transformers goldens, format parity,
# malformed files, quant round trips), then the end-to-end tests that drive the `generate`
# example and the Node addon against llama.cpp (node-llama-cpp) on freshly generated fixtures.
# `node --test` gets test files, not directories: Node 22 and later take files and globs only.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"

echo "== build (release)"
cargo build --release --locked -p phi2 -p phi2-fixtures --bins --examples

echo "== fixtures"
target/release/phi2-fixtures --out test/fixtures/gen >/dev/null

echo "== native addon (napi-rs)"
npm run build --silent -w @x/phi2-native

echo "== cargo test"
PHI2_FIXTURES=$PWD/test/fixtures/gen cargo test --release --locked --workspace

echo "== end-to-end (node --test)"
PHI2_FIXTURES=$PWD/test/fixtures/gen node --test --test-concurrency=1 test/engine/*.test.mjs

echo "== wasm32 + SIMD128 engine, single- and multi-threaded (Debian rustc-web + build-std, run in Node)"
scripts/setup-wasm.sh
scripts/build-wasm.sh
PHI2_FIXTURES=$PWD/test/fixtures/gen node --test --test-concurrency=1 test/wasm/*.test.mjs

echo "== @x/phi2 SDK + CLI (vitest; backends cpu and wasm)"
npm run build --silent -w @x/phi2
PHI2_FIXTURES=$PWD/test/fixtures/gen npm test --silent -w @x/phi2

if [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ]; then
  echo "== Node 22 LTS (relaxed SIMD in its V8): end-to-end, wasm engines, SDK + CLI"
  node22=$(scripts/setup-node22.sh)
  PHI2_FIXTURES=$PWD/test/fixtures/gen "$node22" --test --test-concurrency=1 test/engine/*.test.mjs test/wasm/*.test.mjs
  (cd packages/phi2 && PHI2_FIXTURES=$PWD/../../test/fixtures/gen "$node22" ../../node_modules/vitest/vitest.mjs run)
fi

echo "== aarch64: NEON kernels, golden tests, the linux-arm64 addon and CLI under qemu (Debian rustc + build-std, cross-linked)"
scripts/setup-aarch64.sh
PHI2_FIXTURES=$PWD/test/fixtures/gen scripts/test-aarch64.sh

echo "== phi2-bench (bench/) and the workspace bin links"
PHI2_FIXTURES=$PWD/test/fixtures/gen node --test --test-concurrency=1 test/bench/*.test.mjs

echo "== the device scripts' carry budget (test/device)"
node --test test/device/budget.test.mjs

echo "== browser (Chromium via playwright-core)"
scripts/setup-browser.sh
npm run build --silent -w @x/phi2-demo
PHI2_FIXTURES=$PWD/test/fixtures/gen npm run test:browser --silent
