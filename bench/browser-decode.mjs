#!/usr/bin/env node
// Browser decode speed: @x/phi2 (wasm backend, the SDK's browser entry) vs wllama (llama.cpp
// compiled to wasm, @wllama/wllama, pinned in the root package.json) on the same GGUF file, in the
// same run, in headless Chromium (Debian's /usr/bin/chromium through playwright-core). Not a test.
//
//   node bench/browser-decode.mjs [--model /tmp/bench/phi2-q4_0.gguf] [--tokens 32]
//        [--prompt-tokens 16] [--runs 2] [--threads 1,2] [--engines phi2,wllama]
//   npm run bench:browser -- --tokens 32
//
// Needs: npm run build -w @x/phi2 (packages/phi2/dist), /usr/bin/chromium (or PHI2_CHROMIUM), and a
// GGUF. Phi-2-shaped random-weight model: target/release/phi2-fixtures --out /tmp/bench --only phi2
// --files phi2-q4_0.gguf (1.57 GB).
//
// One local server (packages/demo/serve.mjs, cross-origin isolated: COOP/COEP, so both engines may
// use threads) serves a snapshot of the repository's files (bench/browser/index.html imports @x/phi2's
// dist/browser.js and wllama's esm/index.js directly) and the model at /fixtures/. Each
// (engine, threads) gets its own browser context and page: load from the URL, one warm-up
// generation, then --runs timed ones, dispose, close; one model in memory at a time.
// Both engines get the same prompt string (--prompt-tokens tokens, checked), greedy decoding, EOS
// banned (phi2: logitBias -Infinity on 50256; wllama: ignore_eos), prompt re-evaluated every run
// (wllama: cache_prompt false), and are timed
// with each engine's own timers (bench/browser/bench.js): prompt ms = the prompt's evaluation,
// decode tok/s = generated tokens / generation time (phi2: timings.tokensPerSecond; wllama:
// llama-server's predicted_per_second); call s = the page's wall clock of the whole generate call
// (prompt + N tokens + messaging), the same measure for both. Best of the runs for each column.
// Load s = the load call from the local server to ready (phi2: URL, cache off; wllama: fetch → Blob → loadModel).
import { cpSync, existsSync, mkdtempSync, rmSync, statSync, symlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { startServer } from '../packages/demo/serve.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (k, d) => (args.includes(k) ? args[args.indexOf(k) + 1] : d);
if (args.includes('--help') || args.includes('-h')) {
  console.log('usage: node bench/browser-decode.mjs [--model FILE.gguf] [--tokens 32] [--prompt-tokens 16] [--runs 2] [--threads 1,2] [--engines phi2,wllama]');
  process.exit(0);
}
const model = path.resolve(opt('--model', '/tmp/bench/phi2-q4_0.gguf'));
const n = Number(opt('--tokens', 32));
const promptTokens = Number(opt('--prompt-tokens', 16));
const runs = Number(opt('--runs', 2));
const threadList = String(opt('--threads', '1,2')).split(',').map(Number);
const engines = String(opt('--engines', 'phi2,wllama')).split(',');
const CHROMIUM = process.env.PHI2_CHROMIUM ?? '/usr/bin/chromium';
const nCtx = 512;

const missing = [
  [model, `the model: make a Phi-2-shaped random-weight one with\n  target/release/phi2-fixtures --out ${path.dirname(model)} --only phi2 --files phi2-q4_0.gguf\nor pass --model PATH`],
  [path.join(root, 'packages/phi2/dist/browser.js'), 'npm run build -w @x/phi2'],
  [path.join(root, 'node_modules/@wllama/wllama/esm/wasm/wllama.wasm'), 'npm ci (devDependency @wllama/wllama)'],
  [CHROMIUM, 'scripts/setup-browser.sh (Debian chromium), or set PHI2_CHROMIUM'],
].filter(([f]) => !existsSync(f));
for (const [f, how] of missing) console.error(`missing ${f}: ${how}`);
if (missing.length) process.exit(2);
if (!(n >= 2) || !(promptTokens >= 1) || !(runs >= 1) || promptTokens + n > nCtx) {
  console.error(`--tokens must be >= 2, --prompt-tokens >= 1, --runs >= 1, prompt + tokens <= ${nCtx}`);
  process.exit(2);
}

// One prompt string for both engines (wllama 3.13 takes no token-id prompts): the first
// --prompt-tokens GPT-2 BPE tokens of a repeated sentence (Phi-2's tokenizer is GPT-2's plus
// whitespace-run tokens, which this text has none of). The token count each engine saw is checked.
const { encode, decode } = (await import('gpt-3-encoder')).default;
const prompt = decode(encode('The quick brown fox jumps over the lazy dog. '.repeat(Math.ceil(promptTokens / 10) + 1)).slice(0, promptTokens));

// The served tree: a snapshot of packages/phi2/dist and bench/browser (a rebuild of the SDK during
// the run cannot pull files from under it) and the repository's node_modules (linked).
const served = mkdtempSync(path.join(os.tmpdir(), 'phi2-browser-bench-'));
cpSync(path.join(root, 'packages/phi2/dist'), path.join(served, 'packages/phi2/dist'), { recursive: true });
cpSync(path.join(root, 'bench/browser'), path.join(served, 'bench/browser'), { recursive: true });
symlinkSync(path.join(root, 'node_modules'), path.join(served, 'node_modules'));
const server = await startServer({ root: served, fixtures: path.dirname(model), isolated: true, quiet: true });
const modelUrl = `${server.url}fixtures/${encodeURIComponent(path.basename(model))}`;
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-timer-throttling',
    '--disable-renderer-backgrounding', '--disable-backgrounding-occluded-windows'],
});

const log = (s) => console.error(`# ${s}`);
const rows = [];
const outputs = {};
try {
  for (const engine of engines) {
    for (const threads of threadList) {
      const context = await browser.newContext();
      const page = await context.newPage();
      page.on('pageerror', (e) => log(`[${engine} t${threads} pageerror] ${e?.stack ?? e}`));
      page.on('response', (r) => {
        if (r.status() >= 400) log(`[${engine} t${threads}] ${r.status()} ${r.url()}`);
      });
      page.on('console', (m) => {
        if (m.type() === 'error' || m.type() === 'warning') log(`[${engine} t${threads} console.${m.type()}] ${m.text()}`);
      });
      const row = { engine: engine === 'phi2' ? '@x/phi2' : 'wllama', threads };
      try {
        await page.goto(`${server.url}bench/browser/index.html`);
        await page.waitForFunction(() => typeof window.bench === 'object', null, { timeout: 60_000 });
        if (!(await page.evaluate(() => window.bench.isolated()))) throw new Error('the page is not cross-origin isolated');
        const cap = engine === 'phi2' ? 'Phi2' : 'Wllama';
        const loaded = await page.evaluate(([fn, url, t, c]) => window.bench[fn](url, t, c), [`load${cap}`, modelUrl, threads, nCtx]);
        row.loadS = loaded.loadMs / 1000;
        row.runtime = engine === 'phi2' ? `${loaded.runtime.build} x${loaded.runtime.threads}` : `${loaded.multithread ? 'multi-thread' : 'single-thread'} x${loaded.threads}`;
        log(`${row.engine} threads ${threads}: loaded in ${row.loadS.toFixed(1)} s (${row.runtime}${engine === 'phi2' ? `; ${loaded.runtime.reason}` : ''})`);
        const run = (k) => page.evaluate(([fn, p, k]) => window.bench[fn](p, k), [`run${cap}`, prompt, k]);
        const warm = await run(2);
        log(`  warm-up: ${warm.tokens} tokens, prompt ${warm.promptMs.toFixed(0)} ms`);
        const results = [];
        for (let i = 0; i < runs; i++) {
          const r = await run(n);
          if (r.tokens !== n) throw new Error(`run ${i + 1} generated ${r.tokens} tokens, not ${n}`);
          log(`  run ${i + 1}: prompt ${r.promptMs.toFixed(0)} ms (${r.promptTokens} tokens), decode ${r.decodeTokPerS.toFixed(2)} tok/s, call ${(r.wallMs / 1000).toFixed(1)} s`);
          results.push(r);
        }
        row.promptMs = Math.min(...results.map((r) => r.promptMs));
        row.decode = Math.max(...results.map((r) => r.decodeTokPerS));
        row.wallS = Math.min(...results.map((r) => r.wallMs)) / 1000;
        row.promptTokens = results[0].promptTokens;
        if (row.promptTokens !== promptTokens) throw new Error(`the engine saw ${row.promptTokens} prompt tokens, not ${promptTokens}`);
        if (results[0].ids) outputs[`${engine}-${threads}`] = results[0].ids;
        await page.evaluate((fn) => window.bench[fn](), `dispose${cap}`);
      } catch (err) {
        row.error = String(err?.message ?? err).split('\n')[0];
        log(`${row.engine} threads ${threads} failed: ${err?.stack ?? err}`);
      } finally {
        await context.close();
      }
      rows.push(row);
    }
  }
} finally {
  await browser.close();
  await server.close();
  rmSync(served, { recursive: true, force: true });
}

const size = statSync(model).size;
console.log(`\n${path.basename(model)} (${(size / 1e9).toFixed(2)} GB), prompt ${promptTokens} tokens, ${n} greedy tokens, best of ${runs} after a warm-up, Chromium headless, cross-origin isolated\n`);
const table = [['engine', 'threads', 'build', 'load s', 'prompt ms', 'decode tok/s', `call s (${n} tok)`]];
for (const r of rows) {
  table.push(r.error
    ? [r.engine, String(r.threads), 'FAILED: ' + r.error.slice(0, 100), '', '', '', '']
    : [r.engine, String(r.threads), r.runtime, r.loadS.toFixed(1), r.promptMs.toFixed(0), r.decode.toFixed(2), r.wallS.toFixed(1)]);
}
const widths = table[0].map((_, c) => Math.max(...table.map((row) => row[c].length)));
for (const [i, row] of table.entries()) {
  console.log(row.map((cell, c) => (c < 3 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('  '));
  if (i === 0) console.log(widths.map((w) => '-'.repeat(w)).join('  '));
}
// Same prompt, greedy: do @x/phi2's single- and multi-threaded builds pick the same tokens?
const keys = Object.keys(outputs);
if (keys.length > 1) {
  const ref = outputs[keys[0]];
  for (const k of keys.slice(1)) {
    const o = outputs[k] ?? [];
    let same = 0;
    while (same < Math.min(ref.length, o.length) && ref[same] === o[same]) same++;
    console.log(`greedy tokens ${keys[0]} vs ${k}: ${same === ref.length && o.length === ref.length ? 'identical' : `first ${same} of ${ref.length} identical`}`);
  }
}
console.log(JSON.stringify({ model: path.basename(model), promptTokens, decodeTokens: n, runs, rows }));
process.exitCode = rows.some((r) => r.error) ? 1 : 0;
