// Hugging Face Hub ids in the browser: `hf:ORG/REPO/FILE.gguf` resolves to the Hub's
// `/resolve/<revision>/<path>` URL (here the demo server, given as `hubEndpoint`, redirecting to a
// "CDN" path as the Hub does), streams through the wasm loader into the Cache API (a second load
// makes no request), and a safetensors repository id is refused with the "use a GGUF" error.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';

import { disposeNatives, fixture, generateInPage, launchBrowser, loadInPage, nativeModel, openDemo, serveDemo } from './helpers.mjs';

const COMMIT = '0123456789abcdef0123456789abcdef01234567';
const requests = [];
let browser;
let server;
before(async () => {
  browser = await launchBrowser();
  const gguf = readFileSync(fixture('tiny-q8_0.gguf'));
  server = await serveDemo({
    isolated: false,
    handler: async (req, res, ctx) => {
      const resolve = /^\/test-org\/tiny-gguf\/resolve\/([^/]+)\/tiny\.Q8_0\.gguf$/.exec(ctx.pathname);
      if (resolve) {
        requests.push({ path: ctx.pathname, revision: decodeURIComponent(resolve[1]) });
        res.writeHead(302, { ...ctx.headers, Location: '/cdn/tiny.Q8_0.gguf', 'X-Repo-Commit': COMMIT });
        return res.end(), true;
      }
      if (ctx.pathname === '/cdn/tiny.Q8_0.gguf') {
        requests.push({ path: ctx.pathname });
        res.writeHead(200, { ...ctx.headers, 'Content-Type': 'application/octet-stream', 'Content-Length': gguf.length });
        if (req.method === 'HEAD') return res.end(), true;
        ctx.count(gguf.length);
        return res.end(gguf), true;
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

test('hf:ORG/REPO/FILE.gguf loads from the Hub URL, then from the Cache API', { timeout: 120_000 }, async () => {
  const page = await openDemo(browser, server);
  try {
    const id = 'hf:test-org/tiny-gguf/tiny.Q8_0.gguf';
    const first = await loadInPage(page, 'a', id, { hubEndpoint: server.url, revision: 'v1', threads: 1 });
    assert.equal(first.info.format, 'gguf');
    assert.ok(first.info.source.endsWith('/test-org/tiny-gguf/resolve/v1/tiny.Q8_0.gguf'), first.info.source);
    assert.deepEqual(requests.map((r) => r.path), ['/test-org/tiny-gguf/resolve/v1/tiny.Q8_0.gguf', '/cdn/tiny.Q8_0.gguf']);
    const downloads = first.events.filter((e) => e.phase === 'download');
    assert.equal(downloads.at(-1).loadedBytes, readFileSync(fixture('tiny-q8_0.gguf')).length);
    assert.equal(downloads.at(-1).fromCache, false);
    const got = await generateInPage(page, 'a', 'Hello', { maxNewTokens: 6 });
    const native = await nativeModel(fixture('tiny-q8_0.gguf'));
    const want = await native.generate('Hello', { maxNewTokens: 6 });
    assert.deepEqual(got.tokens, want.tokens);

    requests.length = 0;
    const again = await loadInPage(page, 'b', id, { hubEndpoint: server.url, revision: 'v1', threads: 1 });
    assert.equal(again.events.filter((e) => e.phase === 'download').at(-1).fromCache, true);
    assert.deepEqual(requests, []);

    const refused = await page.evaluate(async () => {
      try {
        await window.phi2Demo.loadModel('microsoft/phi-2');
        return 'loaded';
      } catch (e) {
        return `${e.code} ${e.message}`;
      }
    });
    assert.match(refused, /^E_UNSUPPORTED_FORMAT .*microsoft\/phi-2.*GGUF/);
    assert.deepEqual(page.pageErrors, []);
  } finally {
    await page.context().close();
  }
});
