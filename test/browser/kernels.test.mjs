// The relaxed-SIMD build's kernels bit for bit against the scalar twin, in Chromium. Node 20 cannot
// run that build (its V8 computes `i32x4.relaxed_dot_i8x16_i7x16_add` wrongly), so test/wasm checks
// the SIMD128 build there; here the same exports of bindings/wasm/pkg-relaxed (`phi2_simd128_parity`
// for the quantized products, one token and two-token tiles; `phi2_simd128_attention_parity`) run in
// a cross-origin isolated page. The model-level parity test compares log-probs within 1e-4; this one
// covers every relaxed kernel path (Q5_K included, which no browser fixture uses) exactly.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { launchBrowser, root } from './helpers.mjs';

const pkg = path.join(root, 'bindings/wasm/pkg-relaxed');

let browser;
let server;
before(async () => {
  assert.ok(existsSync(path.join(pkg, 'phi2_wasm_bg.wasm')), `${pkg} is not built (scripts/build-wasm.sh)`);
  server = http.createServer((req, res) => {
    const headers = { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' };
    const name = path.basename(new URL(req.url, 'http://x').pathname);
    if (name === '' || name === 'index.html') return res.writeHead(200, { ...headers, 'Content-Type': 'text/html' }).end('<!doctype html><title>kernels</title>');
    if (!['phi2_wasm.js', 'phi2_wasm_bg.wasm'].includes(name)) return res.writeHead(404, headers).end();
    res.writeHead(200, { ...headers, 'Content-Type': name.endsWith('.wasm') ? 'application/wasm' : 'text/javascript' }).end(readFileSync(path.join(pkg, name)));
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  server?.close();
});

test('relaxed-SIMD kernels give the scalar twin\'s bits in Chromium', { timeout: 120_000 }, async () => {
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  assert.equal(await page.evaluate(() => globalThis.crossOriginIsolated), true);
  const r = await page.evaluate(async () => {
    const wasm = await import('/phi2_wasm.js');
    const e = await wasm.default('/phi2_wasm_bg.wasm');
    // The same shapes as test/wasm: odd row counts, one to many blocks, Phi-2's 2560 columns;
    // 1..5 and 8 tokens (one-token kernels, two-token tiles, their tails).
    const K = [[1, 256], [7, 512], [33, 768], [70, 2560]];
    const Q = [[1, 32], [9, 96], [13, 352], [17, 1600], [5, 2560]];
    const types = [['Q4_0', 2, Q], ['Q8_0', 8, Q], ['Q4_K', 12, K], ['Q5_K', 13, K], ['Q6_K', 14, K]];
    const failures = [];
    let outputs = 0;
    let seed = 1;
    for (const [name, id, shapes] of types) {
      for (const [rows, cols] of shapes) {
        for (const tokens of [1, 2, 3, 5, 8]) {
          const bad = e.phi2_simd128_parity(id, rows, cols, tokens, seed++);
          if (bad !== 0) failures.push(`${name} ${rows}x${cols}, ${tokens} tokens: ${bad}`);
          outputs += rows * tokens;
        }
      }
    }
    for (const hd of [1, 7, 8, 80, 81]) {
      for (const keys of [1, 3, 4, 5, 17, 100]) {
        const bad = e.phi2_simd128_attention_parity(hd, keys, hd * 1000 + keys);
        if (bad !== 0) failures.push(`attention head_dim ${hd}, ${keys} keys: ${bad}`);
      }
    }
    return { failures, outputs };
  });
  await page.close();
  assert.deepEqual(r.failures, [], 'outputs that differ from the scalar twin (type shape, tokens: count)');
  console.log(`# relaxed SIMD = scalar twin on ${r.outputs} outputs and 30 attention shapes`);
});
