// The relaxed-SIMD build's kernels bit for bit against the scalar twin, in Chromium. Node 20 cannot
// run that build (its V8 computes `i32x4.relaxed_dot_i8x16_i7x16_add` wrongly), so test/wasm checks
// the SIMD128 build there; here the same cases (test/wasm/parity-cases.mjs, imported into the page)
// run through the parity exports of bindings/wasm/pkg-relaxed in a cross-origin isolated page. The
// model-level parity test requires the native log-probs bit for bit on its fixtures; this one
// covers every relaxed kernel path (Q5_K included, which no browser fixture uses) exactly.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { launchBrowser, root, serveDemo } from './helpers.mjs';

// Served under /kernels/ next to the demo: an empty page, the relaxed module and its glue, and
// the shared cases.
const FILES = {
  '/kernels/phi2_wasm.js': path.join(root, 'bindings/wasm/pkg-relaxed/phi2_wasm.js'),
  '/kernels/phi2_wasm_bg.wasm': path.join(root, 'bindings/wasm/pkg-relaxed/phi2_wasm_bg.wasm'),
  '/kernels/parity-cases.mjs': path.join(root, 'test/wasm/parity-cases.mjs'),
};

let browser;
let server;
before(async () => {
  for (const f of Object.values(FILES)) assert.ok(existsSync(f), `${f} is missing (scripts/build-wasm.sh)`);
  server = await serveDemo({
    isolated: true,
    handler: (req, res, { headers, pathname }) => {
      if (pathname === '/kernels/') {
        res.writeHead(200, { ...headers, 'Content-Type': 'text/html' }).end('<!doctype html><title>kernels</title>');
        return true;
      }
      const file = FILES[pathname];
      if (!file) return false;
      const body = readFileSync(file);
      const type = file.endsWith('.wasm') ? 'application/wasm' : 'text/javascript';
      res.writeHead(200, { ...headers, 'Content-Type': type, 'Content-Length': body.length }).end(body);
      return true;
    },
  });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.close();
});

test('relaxed-SIMD kernels and attention give the scalar twin\'s bits in Chromium', { timeout: 120_000 }, async () => {
  const page = await browser.newPage();
  await page.goto(`${server.url}/kernels/`);
  assert.equal(await page.evaluate(() => globalThis.crossOriginIsolated), true);
  const r = await page.evaluate(async () => {
    const wasm = await import('/kernels/phi2_wasm.js');
    const exports = await wasm.default('/kernels/phi2_wasm_bg.wasm');
    const { runParity, ATTENTION_CASES } = await import('/kernels/parity-cases.mjs');
    return { ...runParity(exports), attention: ATTENTION_CASES.length };
  });
  await page.close();
  assert.deepEqual(r.failures, [], 'cases whose outputs differ from the scalar twin');
  console.log(`# relaxed SIMD = scalar twin on ${r.outputs} outputs and ${r.attention} attention shapes`);
});

// The relaxed-SIMD build's i16 dots (knob 1) are a setting a load times and chooses
// (test/wasm/wasm.test.mjs has the touches ahead): the calibration keeps them only when clearly
// faster. Their bits are in the parity cases above (phi2_simd128_parity runs both forms).
test('the relaxed-SIMD build times its two dot forms and keeps the faster', { timeout: 60_000 }, async () => {
  const page = await browser.newPage();
  await page.goto(`${server.url}/kernels/`);
  const r = await page.evaluate(async () => {
    const wasm = await import('/kernels/phi2_wasm.js');
    const e = await wasm.default('/kernels/phi2_wasm_bg.wasm');
    return [e.phi2_calibration_check(1, 5, 10), e.phi2_calibration_check(1, 10, 9.5), e.phi2_calibration_check(1, 9, 10), e.phi2_set_knob(1, 0)];
  });
  await page.close();
  assert.deepEqual(r, [1, 0, 1, 0], 'i16 dots twice as fast: on; 5% faster: off (the default); 10% faster: on; left off');
});
