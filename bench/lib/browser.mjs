// --compare wllama: @x/phi2's wasm build (the SDK's browser entry, engine in a Web Worker) and
// wllama (llama.cpp compiled to wasm) in headless Chromium through playwright-core, the same page
// (browser/bench.js) served cross-origin isolated (COOP/COEP: both may use threads), same file,
// same threads, same prompt, alternating runs; each run gets a fresh browser context and page:
// load from the local server, a 2-token warm-up, then one generation per prompt size.
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { promptIds, promptText } from './prompt.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

function packageDir(spec, from = require) {
  let p;
  try {
    p = from.resolve(`${spec}/package.json`);
  } catch {
    let d = path.dirname(from.resolve(spec));
    while (!existsSync(path.join(d, 'package.json'))) d = path.dirname(d);
    return d;
  }
  return path.dirname(p);
}

const MIME = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8', '.json': 'application/json', '.wasm': 'application/wasm', '.gguf': 'application/octet-stream' };
const HEADERS = { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp', 'Cross-Origin-Resource-Policy': 'same-origin', 'Cache-Control': 'no-store' };

/** A static server on 127.0.0.1 with prefix mounts (cross-origin isolated); every response has Content-Length. */
export function serve(mounts, pages) {
  const server = http.createServer((req, res) => {
    const url = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    if (pages[url]) {
      const body = Buffer.from(pages[url]);
      res.writeHead(200, { ...HEADERS, 'Content-Type': MIME['.html'], 'Content-Length': body.length });
      return res.end(req.method === 'HEAD' ? undefined : body);
    }
    for (const [prefix, dir] of Object.entries(mounts)) {
      if (!url.startsWith(prefix)) continue;
      const file = dir.endsWith('.gguf') ? (url === prefix ? dir : null) : path.resolve(dir, '.' + path.posix.normalize('/' + url.slice(prefix.length)));
      if (!file || (!dir.endsWith('.gguf') && !file.startsWith(dir + path.sep))) break;
      let st;
      try {
        st = statSync(file);
      } catch {
        break;
      }
      if (!st.isFile()) break;
      res.writeHead(200, { ...HEADERS, 'Content-Type': MIME[path.extname(file)] ?? 'application/octet-stream', 'Content-Length': st.size });
      if (req.method === 'HEAD') return res.end();
      return createReadStream(file).pipe(res);
    }
    res.writeHead(404, { ...HEADERS, 'Content-Length': 0 }).end();
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, url: `http://127.0.0.1:${server.address().port}` })));
}

export async function runBrowser({ file, threads, runs, promptTokens, genTokens, chromium, log }) {
  let playwright;
  try {
    playwright = await import('playwright-core');
  } catch {
    throw new Error('--compare wllama needs the npm packages playwright-core and @wllama/wllama (npm install playwright-core@1.65.1 @wllama/wllama@3.13.0)');
  }
  if (!existsSync(chromium)) throw new Error(`--compare wllama needs Chromium: ${chromium} is missing (apt-get install chromium, or --chromium PATH / PHI2_CHROMIUM)`);
  const phi2Dir = packageDir('@x/phi2');
  const wllamaDir = packageDir('@wllama/wllama');
  const phi2Require = createRequire(path.join(phi2Dir, 'package.json'));
  const zodDir = packageDir('zod', phi2Require);
  const tokDir = packageDir('@huggingface/tokenizers', phi2Require);
  for (const f of [path.join(phi2Dir, 'dist/browser.js'), path.join(wllamaDir, 'esm/wasm/wllama.wasm')]) if (!existsSync(f)) throw new Error(`missing ${f}`);
  const zodEntry = JSON.parse(readFileSync(path.join(zodDir, 'package.json'), 'utf8')).exports?.['.']?.import;
  const importMap = {
    imports: {
      zod: `/pkg/zod/${(typeof zodEntry === 'string' ? zodEntry : zodEntry?.default ?? './index.js').replace(/^\.\//, '')}`,
      '@huggingface/tokenizers': '/pkg/tokenizers/dist/tokenizers.mjs',
      '@x/phi2': '/pkg/phi2/dist/browser.js',
      '@wllama/wllama': '/pkg/wllama/esm/index.js',
    },
  };
  const page = `<!doctype html><html><head><meta charset="utf-8"><title>phi2-bench</title>
<script type="importmap">${JSON.stringify(importMap)}</script>
<script type="module" src="/bench/bench.js"></script></head><body><pre id="log">loading…</pre></body></html>`;
  const modelName = encodeURIComponent(path.basename(file));
  const { server, url } = await serve(
    { '/pkg/phi2/': phi2Dir, '/pkg/wllama/': wllamaDir, '/pkg/zod/': zodDir, '/pkg/tokenizers/': tokDir, '/bench/': path.join(here, '..', 'browser'), [`/model/${path.basename(file)}`]: file },
    { '/index.html': page },
  );
  const browser = await playwright.chromium.launch({
    executablePath: chromium,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-timer-throttling', '--disable-renderer-backgrounding', '--disable-backgrounding-occluded-windows'],
  });
  const maxP = Math.max(...promptTokens);
  const nCtx = maxP + genTokens + 16;
  const engines = [
    { id: 'phi2', label: `@x/phi2 wasm (Chromium)`, runs: [] },
    { id: 'wllama', label: 'wllama (Chromium)', runs: [] },
  ];
  try {
    for (let i = 0; i < runs; i++) {
      for (const e of engines) {
        const context = await browser.newContext();
        const tab = await context.newPage();
        const pageErrors = [];
        tab.on('pageerror', (err) => pageErrors.push(String(err?.message ?? err)));
        const cap = e.id === 'phi2' ? 'Phi2' : 'Wllama';
        try {
          await tab.goto(`${url}/index.html`);
          await tab.waitForFunction(() => typeof window.bench === 'object', null, { timeout: 60_000 });
          if (!(await tab.evaluate(() => window.bench.isolated()))) throw new Error('the page is not cross-origin isolated');
          const loaded = await tab.evaluate(([fn, u, t, c]) => window.bench[fn](u, t, c), [`load${cap}`, `${url}/model/${modelName}`, threads, nCtx]);
          const r = { loadMs: loaded.loadMs, runtime: loaded.runtime ?? { multithread: loaded.multithread, threads: loaded.threads }, prompts: [], loadState: 'network (127.0.0.1)' };
          const run = (p, n) => tab.evaluate(([fn, pr, k]) => window.bench[fn](pr, k), [`run${cap}`, p, n]);
          const prompt = (n) => (e.id === 'phi2' ? promptIds(n) : promptText(n));
          await run(prompt(4), 2); // warm-up
          for (const P of promptTokens) {
            const x = await run(prompt(P), genTokens);
            if (x.promptTokens !== P) throw new Error(`the engine saw ${x.promptTokens} prompt tokens, not ${P}`);
            r.prompts.push({ promptTokens: P, promptMs: x.promptMs, generateMs: x.generateMs, generated: x.tokens, wallMs: x.wallMs });
          }
          await tab.evaluate((fn) => window.bench[fn](), `dispose${cap}`);
          e.runs.push(r);
          log(`browser run ${i + 1}/${runs} ${e.label}: load ${(r.loadMs / 1000).toFixed(2)} s, ${r.prompts.map((p) => `prefill ${p.promptTokens} ${((p.promptTokens / p.promptMs) * 1000).toFixed(1)} tok/s, decode ${(((p.generated - 1) / p.generateMs) * 1000).toFixed(2)} tok/s`).join('; ')}${r.runtime?.reason ? ` (${r.runtime.reason})` : ''}`);
        } catch (err) {
          const msg = `${String(err?.message ?? err).split('\n')[0]}${pageErrors.length ? ` (page: ${pageErrors[0]})` : ''}`;
          e.runs.push({ error: msg });
          log(`browser run ${i + 1}/${runs} ${e.label}: FAILED: ${msg}`);
        } finally {
          await context.close();
        }
      }
    }
  } finally {
    await browser.close();
    server.close();
  }
  return { engines, nCtx };
}
