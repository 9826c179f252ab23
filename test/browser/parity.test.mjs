// The SDK in Chromium (wasm engine in a Web Worker) against the native engine (@x/phi2's Node
// entry, backend 'cpu') on the same GGUF files: the engine path each kind of page gets, and the same
// greedy and seeded-sampling tokens and log-probs on both paths (multi-threaded wasm in a cross-origin
// isolated page, single-threaded otherwise).
//
// Log-probs: the same bits on both paths for every quantized type (Q8_0, Q4_0, Q4_K, Q6_K run the
// engine's own kernels on both sides, SIMD128 or relaxed-SIMD in the page and x86 natively, each
// equal to the scalar twin bit for bit; what lies outside the kernels avoids the platform libm:
// crates/phi2/src/detmath.rs). F32 weights run on candle's f32 product, whose sums follow each
// ISA's kernel: 1e-4 for those. Tokens must be equal for every type.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  PROMPT,
  SAMPLED,
  VOCAB,
  disposeNatives,
  fileSize,
  fixture,
  generateInPage,
  launchBrowser,
  loadInPage,
  logprobsInPage,
  maxAbsDiff,
  nativeModel,
  openDemo,
  serveDemo,
} from './helpers.mjs';

// In the cross-origin isolated page the SDK runs pkg-relaxed (Chromium validates relaxed SIMD and
// passes the self-test): Q4_0, Q4_K and Q6_K use its relaxed-dot kernels there, SIMD128 elsewhere.
const FIXTURES = ['tiny-q8_0.gguf', 'tiny-q4_0.gguf', 'kq-q4_K.gguf', 'kq-q6_K.gguf', 'tiny-f32.gguf'];
/** Allowed max |Δ log-prob| against the native engine: none, but for f32 weights (see above). */
const tolerance = (dtype) => (dtype === 'f32' ? 1e-4 : 0);
const MAX_NEW = 24;

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  disposeNatives();
});

for (const isolated of [true, false]) {
  const mode = isolated ? 'cross-origin isolated page' : 'page without cross-origin isolation';
  describe(mode, () => {
    let server;
    let page;
    before(async () => {
      server = await serveDemo({ isolated });
      page = await openDemo(browser, server);
    });
    after(async () => {
      await page?.context().close();
      await server?.close();
    });

    test('crossOriginIsolated and the engine build the SDK picks', { timeout: 60_000 }, async () => {
      assert.equal(await page.evaluate(() => globalThis.crossOriginIsolated), isolated);
      const { info } = await loadInPage(page, 'runtime', '/fixtures/tiny-q8_0.gguf', { cache: false });
      const rt = info.runtime;
      console.log(`# ${mode}: runtime ${JSON.stringify(rt)}; hardwareConcurrency ${await page.evaluate(() => navigator.hardwareConcurrency)}`);
      assert.equal(rt.backend, 'wasm');
      if (isolated) {
        assert.equal(rt.build, 'wasm-simd-threads');
        assert.equal(rt.flavour, 'relaxed', rt.reason);
        assert.match(rt.reason, /, relaxed SIMD$/);
        assert.ok(rt.threads > 1, `threads = ${rt.threads}`);
      } else {
        assert.equal(rt.build, 'wasm-simd');
        assert.equal(rt.flavour, 'st');
        assert.equal(rt.threads, 1);
        assert.match(rt.reason, /cross-origin isolat|crossOriginIsolated/i);
      }
      // The page says so too.
      assert.equal(await page.locator('#coi').getAttribute('data-value'), String(isolated));
      await page.evaluate(() => window.__models.runtime.dispose());
    });

    for (const name of FIXTURES) {
      test(`${name}: greedy and seeded-sampling tokens equal native; log-probs`, { timeout: 90_000 }, async () => {
        const file = fixture(name);
        const native = await nativeModel(file);
        const { info } = await loadInPage(page, name, `/fixtures/${name}`, { cache: false });
        assert.equal(info.dtype, native.info.dtype);
        assert.equal(info.vocabSize, VOCAB);
        assert.equal(info.fileSizeBytes, fileSize(file));

        // Same tokenizer.
        const ids = await page.evaluate(({ name, p }) => window.__models[name].tokenize(`Instruct: ${p}\nOutput:`), { name, p: PROMPT });
        assert.deepEqual(ids, native.tokenize(`Instruct: ${PROMPT}\nOutput:`));

        const greedyOpts = { format: 'qa', maxNewTokens: MAX_NEW };
        const want = await native.generate(PROMPT, greedyOpts);
        const got = await generateInPage(page, name, PROMPT, greedyOpts);
        assert.deepEqual(got.tokens, want.tokens, 'greedy tokens');
        assert.equal(got.text, want.text);
        assert.equal(got.finishReason, want.finishReason);
        assert.deepEqual(got.usage, want.usage);

        const sampledOpts = { format: 'qa', maxNewTokens: MAX_NEW, ...SAMPLED };
        const wantS = await native.generate(PROMPT, sampledOpts);
        const gotS = await generateInPage(page, name, PROMPT, sampledOpts);
        assert.deepEqual(gotS.tokens, wantS.tokens, 'seeded sampling tokens');
        assert.equal(gotS.text, wantS.text);
        // A different seed is a different draw (the seed is really used).
        const other = await generateInPage(page, name, PROMPT, { ...sampledOpts, seed: 99 });
        assert.deepEqual(other.tokens, (await native.generate(PROMPT, { ...sampledOpts, seed: 99 })).tokens);

        const seq = [...ids, ...want.tokens];
        const rows = await logprobsInPage(page, name, seq);
        const nativeRows = await native.logprobs(seq);
        assert.equal(rows.length, seq.length * VOCAB);
        const d = maxAbsDiff(rows, nativeRows);
        const tol = tolerance(info.dtype);
        console.log(
          `# ${mode} ${name} (${info.dtype}, ${info.runtime.build}, ${info.runtime.flavour}): ${want.tokens.length} greedy + ${wantS.tokens.length} sampled tokens equal; ` +
            `max |Δ logprob| ${d.toExponential(2)} (allowed ${tol})`,
        );
        assert.ok(d <= tol, `max |Δ logprob| ${d} > ${tol}`);
        await page.evaluate((name) => window.__models[name].dispose(), name);
        assert.deepEqual(page.pageErrors, []);
      });
    }
  });
}
