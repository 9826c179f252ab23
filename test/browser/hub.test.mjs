// Hugging Face Hub ids in the browser: `hf:ORG/REPO/FILE.gguf` resolves its revision to a commit
// (the Hub's /api/models/ORG/REPO/revision/REV, here the demo server given as `hubEndpoint`), then
// streams `/resolve/<commit>/<path>` (redirected to a "CDN" path as the Hub does) through the wasm
// loader into the Cache API. A second load downloads nothing; a branch that moved downloads the new
// file; with the Hub unreachable, the last commit seen loads from the cache. A safetensors
// repository id (hf:ORG/REPO) is refused with the "use a GGUF" error, and a bare `ORG/REPO` or an
// extension-less relative path is a URL, not a Hub id.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';

import { disposeNatives, fixture, generateInPage, launchBrowser, loadInPage, nativeModel, openDemo, serveDemo } from './helpers.mjs';

const COMMIT_A = '0123456789abcdef0123456789abcdef01234567';
const COMMIT_B = 'fedcba9876543210fedcba9876543210fedcba98';
const FILES = { [COMMIT_A]: fixture('tiny-q8_0.gguf'), [COMMIT_B]: fixture('tiny-q4_0.gguf') };
const hub = { main: COMMIT_A, v1: COMMIT_A, offline: false };
const requests = [];
let browser;
let server;
before(async () => {
  browser = await launchBrowser();
  const gguf = readFileSync(fixture('tiny-q8_0.gguf'));
  server = await serveDemo({
    isolated: false,
    handler: async (req, res, ctx) => {
      const api = /^\/api\/models\/test-org\/tiny-gguf\/revision\/([^/]+)$/.exec(ctx.pathname);
      if (api) {
        requests.push({ path: ctx.pathname });
        if (hub.offline) return req.socket.destroy(), true;
        const sha = hub[decodeURIComponent(api[1])];
        if (!sha) return res.writeHead(404, ctx.headers).end('{"error":"Revision Not Found"}'), true;
        res.writeHead(200, { ...ctx.headers, 'Content-Type': 'application/json' });
        return res.end(JSON.stringify({ id: 'test-org/tiny-gguf', sha })), true;
      }
      const resolve = /^\/test-org\/tiny-gguf\/resolve\/([^/]+)\/tiny\.Q8_0\.gguf$/.exec(ctx.pathname);
      if (resolve) {
        requests.push({ path: ctx.pathname });
        const commit = hub[decodeURIComponent(resolve[1])] ?? decodeURIComponent(resolve[1]);
        if (hub.offline || !FILES[commit]) return req.socket.destroy(), true;
        res.writeHead(302, { ...ctx.headers, Location: `/cdn/${commit}/tiny.Q8_0.gguf`, 'X-Repo-Commit': commit });
        return res.end(), true;
      }
      const cdn = /^\/cdn\/([0-9a-f]{40})\/tiny\.Q8_0\.gguf$/.exec(ctx.pathname);
      if (cdn && FILES[cdn[1]]) {
        requests.push({ path: ctx.pathname });
        const body = readFileSync(FILES[cdn[1]]);
        res.writeHead(200, { ...ctx.headers, 'Content-Type': 'application/octet-stream', 'Content-Length': body.length });
        if (req.method === 'HEAD') return res.end(), true;
        ctx.count(body.length);
        return res.end(body), true;
      }
      // An extension-less model file beside the page (a relative path, not a Hub id).
      if (ctx.pathname === '/models/phi') {
        res.writeHead(200, { ...ctx.headers, 'Content-Type': 'application/octet-stream', 'Content-Length': gguf.length });
        return res.end(req.method === 'HEAD' ? undefined : gguf), true;
      }
      return false;
    },
  });
});
after(async () => {
  await server?.close();
  await browser?.close();
  disposeNatives();
});

const downloadOf = (r) => r.events.filter((e) => e.phase === 'download').at(-1);

async function sameAsNative(page, key, file) {
  const got = await generateInPage(page, key, 'Hello', { maxNewTokens: 6 });
  const native = await nativeModel(file);
  const want = await native.generate('Hello', { maxNewTokens: 6 });
  assert.deepEqual(got.tokens, want.tokens);
}

test('hf:ORG/REPO/FILE.gguf loads the commit its revision is at, from the Hub, then from the Cache API', { timeout: 180_000 }, async () => {
  const page = await openDemo(browser, server);
  try {
    const id = 'hf:test-org/tiny-gguf/tiny.Q8_0.gguf';
    const opts = { hubEndpoint: server.url, threads: 1 };
    const first = await loadInPage(page, 'a', id, { ...opts, revision: 'v1' });
    assert.equal(first.info.format, 'gguf');
    assert.ok(first.info.source.endsWith(`/test-org/tiny-gguf/resolve/${COMMIT_A}/tiny.Q8_0.gguf`), first.info.source);
    assert.deepEqual(requests.map((r) => r.path), [
      '/api/models/test-org/tiny-gguf/revision/v1',
      `/test-org/tiny-gguf/resolve/${COMMIT_A}/tiny.Q8_0.gguf`,
      `/cdn/${COMMIT_A}/tiny.Q8_0.gguf`,
    ]);
    assert.equal(downloadOf(first).loadedBytes, readFileSync(FILES[COMMIT_A]).length);
    assert.equal(downloadOf(first).fromCache, false);
    await sameAsNative(page, 'a', FILES[COMMIT_A]);

    // main is at the same commit: the cached file, only the revision asked for.
    requests.length = 0;
    const again = await loadInPage(page, 'b', id, opts);
    assert.equal(downloadOf(again).fromCache, true);
    assert.deepEqual(requests.map((r) => r.path), ['/api/models/test-org/tiny-gguf/revision/main']);

    // main moves to another commit (another file): downloaded again, not the cached one.
    hub.main = COMMIT_B;
    requests.length = 0;
    const moved = await loadInPage(page, 'c', id, opts);
    assert.equal(downloadOf(moved).fromCache, false);
    assert.ok(moved.info.source.includes(`/resolve/${COMMIT_B}/`), moved.info.source);
    assert.deepEqual(requests.map((r) => r.path), [
      '/api/models/test-org/tiny-gguf/revision/main',
      `/test-org/tiny-gguf/resolve/${COMMIT_B}/tiny.Q8_0.gguf`,
      `/cdn/${COMMIT_B}/tiny.Q8_0.gguf`,
    ]);
    await sameAsNative(page, 'c', FILES[COMMIT_B]);

    // The Hub unreachable: the commit main was last seen at, from the cache.
    hub.offline = true;
    requests.length = 0;
    const offline = await loadInPage(page, 'd', id, opts);
    assert.equal(downloadOf(offline).fromCache, true);
    assert.ok(offline.info.source.includes(`/resolve/${COMMIT_B}/`), offline.info.source);
    // (Chromium retries a request whose connection was reset once: one or two API requests.)
    assert.ok(requests.length >= 1, JSON.stringify(requests));
    assert.deepEqual(requests.filter((r) => r.path !== '/api/models/test-org/tiny-gguf/revision/main'), []);
    hub.offline = false;

    // A revision the Hub does not have: E_HUB_NOT_FOUND naming repository and revision.
    const missing = await page.evaluate(
      async ({ id, endpoint }) => window.phi2Demo.loadModel(id, { hubEndpoint: endpoint, revision: 'nope' }).then(() => 'loaded', (e) => `${e.code} ${e.message}`),
      { id, endpoint: server.url },
    );
    assert.match(missing, /^E_HUB_NOT_FOUND .*test-org\/tiny-gguf.*"nope"/);
    assert.deepEqual(page.pageErrors, []);
  } finally {
    hub.main = COMMIT_A;
    hub.offline = false;
    await page.context().close();
  }
});

test('Hub ids need hf: in browsers: hf:ORG/REPO is refused, models/phi and ORG/REPO are relative URLs', { timeout: 120_000 }, async () => {
  const page = await openDemo(browser, server);
  try {
    const tryLoad = (source) =>
      page.evaluate(async (source) => {
        try {
          const m = await window.phi2Demo.loadModel(source, { threads: 1 });
          window.__models[source] = m;
          return `loaded ${m.info.format} ${m.info.source}`;
        } catch (e) {
          return `${e.code} ${e.message}`;
        }
      }, source);
    assert.match(await tryLoad('hf:microsoft/phi-2'), /^E_UNSUPPORTED_FORMAT .*microsoft\/phi-2.*GGUF/);
    const relative = await tryLoad('models/phi');
    assert.match(relative, /^loaded gguf .*\/models\/phi$/);
    await sameAsNative(page, 'models/phi', fixture('tiny-q8_0.gguf'));
    // Nothing at ./microsoft/phi-2: the error says how to name the Hub.
    assert.match(await tryLoad('microsoft/phi-2'), /^E_IO .*relative to the page.*hf:microsoft\/phi-2\/FILE\.gguf/);
    assert.deepEqual(page.pageErrors, []);
  } finally {
    await page.context().close();
  }
});
