// The demo page as a person uses it (cross-origin isolated, as `npm run demo` serves it): the
// embedded default model through the Load button, a prompt through the form, Generate, streamed
// output, Stop; a model from the file picker. Plus what the page must keep doing meanwhile: the
// main thread is never blocked by the engine (it runs in a Web Worker).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  disposeNatives,
  fileSize,
  fixture,
  generateInPage,
  launchBrowser,
  loadInPage,
  nativeModel,
  openDemo,
  root,
  serveDemo,
  waitState,
} from './helpers.mjs';

const DEFAULT_MODEL = path.join(root, 'packages/phi2/models/default.gguf');
const CHAT = "I don't know why, I'm struggling to maintain focus while studying. Any suggestions?";

let browser;
let server;
let page;
before(async () => {
  browser = await launchBrowser();
  server = await serveDemo({ isolated: true });
  page = await openDemo(browser, server);
});
after(async () => {
  await page?.context().close();
  await server?.close();
  await browser?.close();
  disposeNatives();
});

describe('the demo page', () => {
  test('embedded default model: Load, chat format, Generate through the UI', { timeout: 90_000 }, async () => {
    assert.equal(await page.getAttribute('#app', 'data-state'), 'empty');
    assert.ok(await page.isDisabled('#generate'), 'Generate is disabled before a model is loaded');
    await page.check('#source-default');
    await page.click('#load');
    await waitState(page, 'ready');
    // The default model is the SDK's defaultModelUrl(), served from the demo's own files.
    const url = await page.evaluate(() => String(window.phi2Demo.defaultModelUrl()));
    const requested = server.stats.get(new URL(url, server.url).pathname);
    assert.equal(requested.get, 1, `defaultModelUrl() ${url} was fetched once`);
    assert.equal(requested.bytesSent, fileSize(DEFAULT_MODEL));
    const info = await page.evaluate(() => JSON.parse(JSON.stringify(window.phi2Demo.model.info)));
    assert.equal(info.fileSizeBytes, fileSize(DEFAULT_MODEL));
    assert.equal(await page.textContent('#engine-build'), info.runtime.build);
    assert.equal(await page.textContent('#engine-build'), 'wasm-simd-threads');
    assert.equal(await page.textContent('#engine-threads'), String(info.runtime.threads));
    assert.match(await page.textContent('#status'), /^Loaded/);

    await page.selectOption('#format', 'chat');
    await page.fill('#prompt', CHAT);
    assert.equal(await page.textContent('#formatted'), `Alice: ${CHAT}\nBob:`);
    await page.fill('#max-new-tokens', '40');
    await page.click('#generate');
    assert.equal(await waitState(page, ['done', 'error']), 'done', await page.textContent('#status'));
    const shown = await page.textContent('#output');

    const native = await nativeModel(DEFAULT_MODEL);
    const want = await native.generate(CHAT, { format: 'chat', maxNewTokens: 40 });
    const inPage = await page.evaluate((p) => window.phi2Demo.model.generate(p, { format: 'chat', maxNewTokens: 40, doSample: false, repetitionPenalty: 1 }), CHAT);
    assert.equal(shown, inPage.text, 'the UI shows what the SDK generates');
    assert.equal(shown, want.text, 'and that is what the native engine generates');
    assert.ok(shown.length > 0);
    const stats = await page.textContent('#stats');
    assert.match(stats, /\d+(\.\d+)? tokens\/s/);
    assert.match(stats, /prompt \d+ tokens in \d+(\.\d+)? ms/);
    assert.ok(Number(await page.getAttribute('#stats', 'data-tokens-per-second')) > 0, stats);
    console.log(`# UI: ${JSON.stringify(shown.slice(0, 60))}… | ${stats}`);
    assert.deepEqual(page.pageErrors, []);
  });

  test('streaming: chunks arrive in order while generating and join to the result', { timeout: 60_000 }, async () => {
    const prompt = 'def print_prime(n):\n   """\n   Print all primes between 1 and n\n   """';
    const opts = { format: 'none', maxNewTokens: 60, logitBias: { 50256: -Infinity } };
    const got = await page.evaluate(
      async ({ prompt, opts }) => {
        const s = window.phi2Demo.model.stream(prompt, opts);
        const chunks = [];
        for await (const c of s) chunks.push({ text: c.text, tokens: c.tokens, finishReason: c.finishReason ?? null, at: performance.now() });
        const result = await s.result;
        return { chunks, result, resolvedAt: performance.now() };
      },
      { prompt, opts },
    );
    const want = await (await nativeModel(DEFAULT_MODEL)).generate(prompt, opts);
    const { chunks, result } = got;
    assert.ok(chunks.length > 5, `${chunks.length} chunks`);
    assert.equal(chunks.map((c) => c.text).join(''), result.text);
    assert.deepEqual(chunks.flatMap((c) => c.tokens), result.tokens);
    assert.deepEqual(result.tokens, want.tokens, 'the stream gives the native tokens, in order');
    assert.equal(result.text, want.text);
    assert.ok(chunks.slice(0, -1).every((c) => c.finishReason === null), 'only the last chunk has a finishReason');
    assert.equal(chunks.at(-1).finishReason, result.finishReason);
    // Streamed, not delivered at the end: the first token came well before the last.
    const times = new Set(chunks.map((c) => c.at));
    assert.ok(times.size > 2, `chunks arrived at ${times.size} distinct times`);
  });

  test('Stop in the UI ends a generation early (finishReason abort); the page goes on working', { timeout: 60_000 }, async () => {
    const ctx = await page.evaluate(() => window.phi2Demo.model.info.contextLength);
    await page.selectOption('#format', 'none');
    await page.fill('#prompt', 'Once upon a time');
    await page.fill('#max-new-tokens', String(ctx - 8));
    // Press Stop as soon as the first text is on screen (from inside the page: no round trip).
    await page.evaluate(() => {
      const out = document.getElementById('output');
      const obs = new MutationObserver(() => {
        if (out.textContent.length > 0 && !document.getElementById('stop').disabled) {
          obs.disconnect();
          document.getElementById('stop').click();
        }
      });
      obs.observe(out, { childList: true, characterData: true, subtree: true });
    });
    await page.click('#generate');
    assert.equal(await waitState(page, ['stopped', 'done', 'error']), 'stopped', await page.textContent('#status'));
    const r = await page.evaluate(() => window.phi2Demo.lastResult);
    assert.equal(r.finishReason, 'abort');
    assert.ok(r.tokens.length < ctx - 8, `stopped after ${r.tokens.length} tokens`);
    assert.equal(await page.getAttribute('#stats', 'data-finish-reason'), 'abort');
    assert.equal(await page.textContent('#output'), r.text);
    assert.ok(await page.isDisabled('#stop'));
    // Responsive, and the next generation runs to the end.
    await page.fill('#max-new-tokens', '10');
    await page.click('#generate');
    assert.equal(await waitState(page, ['done', 'error', 'stopped']), 'done');
    assert.equal((await page.evaluate(() => window.phi2Demo.lastResult)).tokens.length, 10);
  });

  test('an AbortSignal aborts generate() and stream() with AbortError', { timeout: 60_000 }, async () => {
    const r = await page.evaluate(async () => {
      const m = window.phi2Demo.model;
      const opts = { maxNewTokens: m.info.contextLength - 8, logitBias: { 50256: -Infinity } };
      const out = {};
      const ac = new AbortController();
      const s = m.stream('Once upon a time', { ...opts, signal: ac.signal });
      let n = 0;
      try {
        for await (const c of s) {
          n += c.tokens.length;
          if (n >= 2) ac.abort();
        }
        out.stream = 'completed';
      } catch (e) {
        out.stream = { name: e.name, code: e.code, tokens: n };
      }
      out.result = await s.result.then(
        () => 'resolved',
        (e) => ({ name: e.name, code: e.code }),
      );
      const ac2 = new AbortController();
      const p = m.generate('Once upon a time', { ...opts, signal: ac2.signal });
      setTimeout(() => ac2.abort(), 5);
      out.generate = await p.then(
        (x) => ({ finishReason: x.finishReason, tokens: x.tokens.length }),
        (e) => ({ name: e.name, code: e.code }),
      );
      const t0 = performance.now();
      out.after = (await m.generate('Once upon a time', { maxNewTokens: 3, logitBias: { 50256: -Infinity } })).tokens.length;
      out.afterMs = performance.now() - t0;
      return out;
    });
    assert.deepEqual({ name: r.stream.name, code: r.stream.code }, { name: 'AbortError', code: 'E_ABORTED' });
    assert.deepEqual(r.result, { name: 'AbortError', code: 'E_ABORTED' });
    assert.deepEqual(r.generate, { name: 'AbortError', code: 'E_ABORTED' });
    assert.equal(r.after, 3);
    assert.deepEqual(page.pageErrors, []);
  });

  test('the main thread is never blocked while generating (~100+ tokens)', { timeout: 90_000 }, async () => {
    // F16 weights: slow enough per run (100 tokens, the fixture's context is 128) for the probe to
    // tell; the relaxed-SIMD build makes kq-q4_K's runs shorter than the limit.
    await loadInPage(page, 'kq', '/fixtures/kq-f16.gguf', { cache: false });
    // This machine may be shared and busy: the same probe on the idle page first gives the noise
    // floor; the limit is 200 ms, or that floor + 150 ms when the machine alone makes gaps > 50 ms.
    const idle = await page.evaluate(async () => {
      let last = performance.now();
      let maxGap = 0;
      const id = setInterval(() => {
        const now = performance.now();
        maxGap = Math.max(maxGap, now - last);
        last = now;
      }, 10);
      await new Promise((r) => setTimeout(r, 1000));
      clearInterval(id);
      return maxGap;
    });
    const limit = Math.max(200, idle + 150);
    const r = await page.evaluate(async () => {
      const m = window.__models.kq;
      let last = performance.now();
      let maxGap = 0;
      let ticks = 0;
      const id = setInterval(() => {
        const now = performance.now();
        maxGap = Math.max(maxGap, now - last);
        last = now;
        ticks++;
      }, 10);
      let rafLast = performance.now();
      let rafMax = 0;
      let frames = 0;
      let rafOn = true;
      const frame = (t) => {
        const now = performance.now();
        rafMax = Math.max(rafMax, now - rafLast);
        rafLast = now;
        frames++;
        if (rafOn) requestAnimationFrame(frame);
      };
      requestAnimationFrame(frame);
      const t0 = performance.now();
      let tokens = 0;
      let runs = 0;
      let longestRun = 0;
      while (tokens < 100 || performance.now() - t0 < 1500) {
        const s = performance.now();
        const g = await m.generate('Once upon a time', { maxNewTokens: 100, logitBias: { 50256: -Infinity } });
        longestRun = Math.max(longestRun, performance.now() - s);
        tokens += g.tokens.length;
        runs++;
      }
      const elapsed = performance.now() - t0;
      clearInterval(id);
      rafOn = false;
      return { maxGap, ticks, rafMax, frames, elapsed, tokens, runs, longestRun };
    });
    console.log(`# main-thread probe: idle gap ${idle.toFixed(1)} ms, limit ${limit.toFixed(0)} ms; ${JSON.stringify(r)}`);
    assert.ok(r.tokens >= 100);
    // A generate() that ran on the main thread would block it for a whole run: runs must be longer
    // than the limit for this probe to tell.
    assert.ok(r.longestRun > limit, `runs of ${r.longestRun.toFixed(0)} ms are too short to show blocking`);
    assert.ok(r.ticks >= r.elapsed / 50, `only ${r.ticks} timer ticks in ${r.elapsed} ms`);
    assert.ok(r.maxGap <= limit, `setInterval(10) gap ${r.maxGap.toFixed(1)} ms > ${limit.toFixed(0)}`);
    assert.ok(r.rafMax <= limit, `requestAnimationFrame gap ${r.rafMax.toFixed(1)} ms > ${limit.toFixed(0)}`);
    await page.evaluate(() => window.__models.kq.dispose());
  });

  test('a model from the file picker (setInputFiles) loads and generates the native tokens', { timeout: 60_000 }, async () => {
    const name = 'kq-q4_K.gguf';
    const file = fixture(name);
    const before = server.stats.get(`/fixtures/${name}`).get;
    await page.setInputFiles('#model-file', file);
    assert.ok(await page.isChecked('#source-file'), 'choosing a file selects the file source');
    await page.click('#load');
    assert.equal(await waitState(page, ['ready', 'error']), 'ready', await page.textContent('#status'));
    assert.equal(await page.textContent('#model-dtype'), 'q4_K');
    assert.equal(server.stats.get(`/fixtures/${name}`).get, before, 'read from the File, not fetched');
    const info = await page.evaluate(() => JSON.parse(JSON.stringify(window.phi2Demo.model.info)));
    assert.equal(info.fileSizeBytes, readFileSync(file).length);
    await page.evaluate(() => {
      window.__models.picked = window.phi2Demo.model;
    });
    const got = await generateInPage(page, 'picked', 'Instruct: hi\nOutput:', { maxNewTokens: 16 });
    const want = await (await nativeModel(file)).generate('Instruct: hi\nOutput:', { maxNewTokens: 16 });
    assert.deepEqual(got.tokens, want.tokens);
    assert.deepEqual(page.pageErrors, []);
  });
});
