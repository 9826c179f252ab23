// Shared pieces of the browser tests: Chromium through playwright-core (the system's Chromium,
// nothing downloaded), the built demo served twice (cross-origin isolated and not) by
// packages/demo/serve.mjs, the fixtures under /fixtures/, and the native engine (the Node entry of
// @x/phi2, backend 'cpu') as the reference every browser result is compared with.
//
//   scripts/setup-browser.sh && npm run build -w @x/phi2-demo && npm run test:browser
import assert from 'node:assert/strict';
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { startServer } from '../../packages/demo/serve.mjs';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const fixtures = path.resolve(process.env.PHI2_FIXTURES ?? path.join(root, 'test/fixtures/gen'));
export const demoDist = path.join(root, 'packages/demo/dist');
export const CHROMIUM = process.env.PHI2_CHROMIUM ?? '/usr/bin/chromium';
export const VOCAB = 51200;
/** The QA prompt every parity check uses (the model card's first sample). */
export const PROMPT = 'Write a detailed analogy between mathematics and a lighthouse.';
/** The seeded sampling options of the parity checks. */
export const SAMPLED = { doSample: true, temperature: 0.8, topP: 0.9, seed: 1234 };

for (const [f, how] of [
  [CHROMIUM, 'scripts/setup-browser.sh (Debian chromium), or set PHI2_CHROMIUM'],
  [path.join(demoDist, 'index.html'), 'npm run build -w @x/phi2-demo'],
]) {
  if (!existsSync(f)) throw new Error(`${f} is missing: run ${how}`);
}

export function fixture(name) {
  const f = path.join(fixtures, name);
  if (!existsSync(f)) throw new Error(`${f} is missing: run target/release/phi2-fixtures --out ${fixtures}`);
  return f;
}

export const fileSize = (f) => statSync(f).size;

/** Launches headless Chromium. */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-dev-shm-usage',
      '--disable-background-timer-throttling',
      '--disable-renderer-backgrounding',
      '--disable-backgrounding-occluded-windows',
    ],
  });
}

/** Serves the built demo with /fixtures/; `handler` may add routes (see serve.mjs). */
export function serveDemo({ isolated, handler } = {}) {
  return startServer({ root: demoDist, fixtures, isolated: !!isolated, quiet: true, handler });
}

/**
 * Opens the demo in a fresh browser context (own Cache API storage) and waits for its test hook.
 * Uncaught page errors are collected in `page.pageErrors` (tests assert there are none).
 */
export async function openDemo(browser, server) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.pageErrors = [];
  page.on('pageerror', (err) => page.pageErrors.push(String(err?.stack ?? err)));
  page.on('console', (msg) => {
    if (msg.type() === 'error') console.log(`# [page console.error] ${msg.text()}`);
  });
  await page.goto(server.url);
  await page.waitForFunction(() => typeof window.phi2Demo === 'object' && window.phi2Demo !== null);
  await page.evaluate(() => {
    window.__models = {};
  });
  return page;
}

/** Loads `url` in the page through the SDK (not the UI) as window.__models[key]; returns info + progress events. */
export async function loadInPage(page, key, source, options = {}) {
  return page.evaluate(
    async ({ key, source, options }) => {
      const events = [];
      const m = await window.phi2Demo.loadModel(new URL(source, location.href).href, { ...options, onProgress: (p) => events.push({ ...p }) });
      window.__models[key] = m;
      return { info: JSON.parse(JSON.stringify(m.info)), events };
    },
    { key, source, options },
  );
}

/** `model.generate` in the page. */
export function generateInPage(page, key, prompt, options) {
  return page.evaluate(({ key, prompt, options }) => window.__models[key].generate(prompt, options), { key, prompt, options });
}

/** `model.logprobs` in the page, returned as a Float32Array (bytes sent base64: exact, -Infinity included). */
export async function logprobsInPage(page, key, ids) {
  const b64 = await page.evaluate(
    async ({ key, ids }) => {
      const lp = await window.__models[key].logprobs(ids);
      if (!(lp instanceof Float32Array)) throw new Error(`logprobs returned ${Object.prototype.toString.call(lp)}`);
      const bytes = new Uint8Array(lp.buffer, lp.byteOffset, lp.byteLength);
      let s = '';
      for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
      return btoa(s);
    },
    { key, ids },
  );
  const buf = Buffer.from(b64, 'base64');
  return new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
}

// ---------------------------------------------------------------------------------------------
// The reference: @x/phi2's Node entry on the native addon.

let sdk;
const natives = new Map();

/** The native model of a file (loaded once per test process). */
export async function nativeModel(file) {
  sdk ??= await import('@x/phi2');
  if (!natives.has(file)) natives.set(file, await sdk.loadModel(file, { backend: 'cpu' }));
  return natives.get(file);
}

export function disposeNatives() {
  for (const m of natives.values()) m.dispose();
  natives.clear();
}

export function maxAbsDiff(a, b) {
  assert.equal(a.length, b.length, 'log-prob arrays differ in length');
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    if (a[i] === b[i]) continue; // also -Infinity === -Infinity
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = d; // NaN propagates as a failure
  }
  return m;
}

/** Waits until the page's `#app[data-state]` is one of `states`. */
export async function waitState(page, states, timeout = 60_000) {
  const list = Array.isArray(states) ? states : [states];
  try {
    await page.waitForFunction((l) => l.includes(document.getElementById('app')?.dataset.state), list, { timeout });
  } catch (err) {
    const now = await page.evaluate(() => [document.getElementById('app')?.dataset.state, document.getElementById('status')?.textContent]);
    throw new Error(`the page did not reach ${list.join(' / ')}: state ${now[0]}, status ${JSON.stringify(now[1])}`, { cause: err });
  }
  return page.evaluate(() => document.getElementById('app').dataset.state);
}

/** Pauses Node (the server keeps serving meanwhile). */
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
