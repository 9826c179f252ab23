// Loading a model in the browser: from a URL with progress reports, from an ArrayBuffer, the
// refusal of a model too large for wasm32 before it is downloaded, and the Cache API (a second load
// is not downloaded again; a damaged cached copy is detected and downloaded again).
// Each test gets a fresh browser context (its own, empty Cache API storage).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';

import {
  disposeNatives,
  fileSize,
  fixture,
  generateInPage,
  launchBrowser,
  loadInPage,
  nativeModel,
  openDemo,
  serveDemo,
  sleep,
} from './helpers.mjs';

const HUGE = 6 * 1024 ** 3;
const HUGE_DELAY_MS = 2000;
const huge = { requests: 0, bodyBytes: 0, closedBeforeBody: 0 };

let browser;
let server;
before(async () => {
  browser = await launchBrowser();
  // /huge.gguf advertises 6 GiB. It sends the headers at once and the body (a real GGUF header,
  // then zeros) only after HUGE_DELAY_MS, so a client that refuses the size from the headers
  // closes the connection having received no body byte at all.
  const head = readFileSync(fixture('tiny-q8_0.gguf')).subarray(0, 1 << 20);
  server = await serveDemo({
    isolated: false,
    handler: async (req, res, ctx) => {
      if (ctx.pathname !== '/huge.gguf') return false;
      huge.requests++;
      res.writeHead(200, { ...ctx.headers, 'Content-Type': 'application/octet-stream', 'Content-Length': HUGE });
      if (req.method === 'HEAD') return res.end(), true;
      res.flushHeaders();
      let closed = false;
      res.on('close', () => (closed = true));
      const t0 = Date.now();
      while (!closed && Date.now() - t0 < HUGE_DELAY_MS) await sleep(20);
      if (closed) {
        huge.closedBeforeBody++;
        return true;
      }
      // Send at most 64 MiB, respecting back-pressure, then cut the connection.
      const zeros = Buffer.alloc(1 << 20);
      for (let sent = 0; sent < 64 << 20 && !closed; ) {
        const chunk = sent === 0 ? head : zeros;
        sent += chunk.length;
        huge.bodyBytes += chunk.length;
        ctx.count(chunk.length);
        if (!res.write(chunk)) await new Promise((r) => res.once('drain', r).once('close', r));
      }
      res.destroy();
      return true;
    },
  });
});
after(async () => {
  await server?.close();
  await browser?.close();
  disposeNatives();
});

async function withPage(fn) {
  const page = await openDemo(browser, server);
  try {
    return await fn(page);
  } finally {
    await page.context().close();
  }
}

test('from a URL: download progress is monotonic and ends at the file size', { timeout: 60_000 }, async () => {
  await withPage(async (page) => {
    const name = 'kq-q4_K.gguf';
    const size = fileSize(fixture(name));
    const { info, events } = await loadInPage(page, 'm', `/fixtures/${name}`, { cache: false });
    assert.equal(info.fileSizeBytes, size);
    const downloads = events.filter((e) => e.phase === 'download');
    assert.ok(downloads.length >= 2, `${downloads.length} download reports`);
    for (let i = 1; i < downloads.length; i++) {
      assert.ok(downloads[i].progress >= downloads[i - 1].progress, `progress went back at report ${i}`);
      assert.ok(downloads[i].loadedBytes >= downloads[i - 1].loadedBytes, `loadedBytes went back at report ${i}`);
    }
    for (const e of events) assert.ok(e.progress >= 0 && e.progress <= 1, JSON.stringify(e));
    const last = downloads.at(-1);
    assert.equal(last.loadedBytes, size);
    assert.equal(last.totalBytes, size);
    assert.equal(last.progress, 1);
    assert.equal(events.at(-1).phase, 'ready');
    assert.ok(events.findIndex((e) => e.phase === 'ready') > events.indexOf(last), 'ready comes after the download');
    assert.equal(server.stats.get(`/fixtures/${name}`).get, 1);
    const got = await generateInPage(page, 'm', 'Instruct: hello\nOutput:', { maxNewTokens: 12 });
    const want = await (await nativeModel(fixture(name))).generate('Instruct: hello\nOutput:', { maxNewTokens: 12 });
    assert.deepEqual(got.tokens, want.tokens);
    assert.deepEqual(page.pageErrors, []);
  });
});

test('from an ArrayBuffer and a Uint8Array', { timeout: 60_000 }, async () => {
  await withPage(async (page) => {
    const name = 'tiny-q4_0.gguf';
    const r = await page.evaluate(async (url) => {
      const buf = await (await fetch(url)).arrayBuffer();
      const out = {};
      // The SDK transfers the bytes to its worker (documented: the caller's buffer is detached), so each load gets its own copy.
      for (const [kind, src] of [['ArrayBuffer', buf.slice(0)], ['Uint8Array', new Uint8Array(buf.slice(0))]]) {
        const m = await window.phi2Demo.loadModel(src);
        const g = await m.generate('Write a poem', { format: 'qa', maxNewTokens: 12 });
        out[kind] = { tokens: g.tokens, size: m.info.fileSizeBytes, dtype: m.info.dtype };
        m.dispose();
      }
      return out;
    }, `/fixtures/${name}`);
    const native = await nativeModel(fixture(name));
    const want = await native.generate('Write a poem', { format: 'qa', maxNewTokens: 12 });
    for (const kind of ['ArrayBuffer', 'Uint8Array']) {
      assert.deepEqual(r[kind].tokens, want.tokens, kind);
      assert.equal(r[kind].size, fileSize(fixture(name)), kind);
      assert.equal(r[kind].dtype, 'q4_0', kind);
    }
    assert.deepEqual(page.pageErrors, []);
  });
});

test('a URL advertising 6 GiB is refused with E_MODEL_TOO_LARGE before its body is downloaded', { timeout: 60_000 }, async () => {
  await withPage(async (page) => {
    const t0 = Date.now();
    const err = await page.evaluate(async () => {
      try {
        await window.phi2Demo.loadModel(new URL('/huge.gguf', location.href).href);
        return null;
      } catch (e) {
        return { name: e.name, code: e.code, message: e.message };
      }
    });
    const ms = Date.now() - t0;
    assert.ok(err, 'loadModel resolved');
    assert.equal(err.code, 'E_MODEL_TOO_LARGE', JSON.stringify(err));
    assert.ok(ms < HUGE_DELAY_MS, `refused after ${ms} ms: not from the headers alone`);
    // Give a client that kept the download going the time to receive body bytes.
    await sleep(HUGE_DELAY_MS + 500);
    assert.equal(huge.bodyBytes, 0, `${huge.bodyBytes} body bytes were sent`);
    assert.ok(huge.requests >= 1);
    assert.equal(huge.closedBeforeBody, huge.requests - server.stats.get('/huge.gguf').head, 'every GET was closed before any body byte');
    console.log(`# 6 GiB refused in ${ms} ms: ${err.message}`);
    assert.deepEqual(page.pageErrors, []);
  });
});

test('the Cache API: a second load is not downloaded again; a damaged cached copy is downloaded again', { timeout: 90_000 }, async () => {
  await withPage(async (page) => {
    const name = 'tiny-q8_0.gguf';
    const pathname = `/fixtures/${name}`;
    const gets = () => server.stats.get(pathname).get;
    const native = await nativeModel(fixture(name));
    const want = await native.generate('Instruct: cache\nOutput:', { maxNewTokens: 10 });
    const start = gets();

    await loadInPage(page, 'first', pathname, { cache: true });
    assert.equal(gets(), start + 1, 'first load downloads');
    await page.evaluate(() => window.__models.first.dispose());

    const second = await loadInPage(page, 'second', pathname, { cache: true });
    assert.equal(gets(), start + 1, 'second load comes from the Cache API');
    assert.equal(second.info.fileSizeBytes, fileSize(fixture(name)));
    assert.deepEqual((await generateInPage(page, 'second', 'Instruct: cache\nOutput:', { maxNewTokens: 10 })).tokens, want.tokens);
    await page.evaluate(() => window.__models.second.dispose());

    // Flip bytes in the middle of the cached body (same length, same headers: only the content is wrong).
    const damaged = await page.evaluate(async (pathname) => {
      const hits = [];
      for (const cacheName of await caches.keys()) {
        const cache = await caches.open(cacheName);
        for (const req of await cache.keys()) {
          if (new URL(req.url).pathname !== pathname) continue;
          const res = await cache.match(req);
          const bytes = new Uint8Array(await res.arrayBuffer());
          const mid = bytes.length >> 1;
          for (let i = mid; i < mid + 64; i++) bytes[i] ^= 0x5a;
          await cache.put(req, new Response(bytes, { status: res.status, statusText: res.statusText, headers: res.headers }));
          hits.push({ cacheName, url: req.url, bytes: bytes.length });
        }
      }
      return hits;
    }, pathname);
    assert.ok(damaged.length >= 1, 'the model is in the Cache API under its URL');
    console.log(`# damaged cache entries: ${JSON.stringify(damaged)}`);

    const third = await loadInPage(page, 'third', pathname, { cache: true });
    assert.equal(gets(), start + 2, 'the damaged copy was detected and the model downloaded again');
    console.log(`# phases of the load after the damage: ${[...new Set(third.events.map((e) => e.phase))].join(' → ')}`);
    assert.deepEqual((await generateInPage(page, 'third', 'Instruct: cache\nOutput:', { maxNewTokens: 10 })).tokens, want.tokens);
    await page.evaluate(() => window.__models.third.dispose());

    // The good copy replaced it.
    await loadInPage(page, 'fourth', pathname, { cache: true });
    assert.equal(gets(), start + 2, 'the fresh copy is cached again');
    assert.deepEqual(page.pageErrors, []);
  });
});
