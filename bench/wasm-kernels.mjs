// Single-thread speed of the wasm builds' quantized products (crates/phi2/src/kernels/wasm.rs), the
// wasm twin of `cargo run --release -p phi2 --example kernel_bench`:
//
//   node bench/wasm-kernels.mjs [--flavour st|mt|relaxed] [--browser] [--types q4_0,q8_0,q4_k,q5_k,q6_k]
//                               [--tokens 1,2,16] [--shape 10240x2560] [--budget-ms 1500] [--touch on|off] [--dot16 on|off]
//
// `st` and `mt` run in this Node process (in Chromium with `--browser`); `relaxed` (whose relaxed
// dot product Node 20's V8 computes wrongly) runs in headless Chromium (playwright-core, /usr/bin/chromium or $PHI2_CHROMIUM) in a
// cross-origin isolated page. Each case: random weights and activations (the module's own
// `phi2_simd128_bench` export), then products for about `--budget-ms`; the case's set-up (a call
// with 0 products) is timed and taken off. The default shape, 10240 × 2560 (Phi-2's fc1),
// is 14.7 MB of Q4_0: it streams from memory, as in a decode step. `--touch on|off`: the one-token
// kernels' touches of the weights ahead; `--dot16 on|off`: the relaxed build's i16 dots for Q4_0
// (`phi2_set_knob`; a model's load times both values of each and keeps the faster); default: the
// module's defaults (touches on, i16 dots off).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (k, d) => (args.includes(k) ? args[args.indexOf(k) + 1] : d);
const flavour = opt('--flavour', 'mt');
const TYPES = { q4_0: 2, q8_0: 8, q4_k: 12, q5_k: 13, q6_k: 14 };
const types = opt('--types', 'q4_0,q8_0,q4_k,q6_k').split(',');
const tokensList = opt('--tokens', '1,2,16').split(',').map(Number);
const [rows, cols] = opt('--shape', '10240x2560').split('x').map(Number);
const budgetMs = Number(opt('--budget-ms', 1500));
const touch = opt('--touch', null);
const dot16 = opt('--dot16', null);
if (!['st', 'mt', 'relaxed'].includes(flavour) || types.some((t) => !(t in TYPES)) || !(rows > 0 && cols > 0 && budgetMs > 0) || ![null, 'on', 'off'].includes(touch) || ![null, 'on', 'off'].includes(dot16)) {
  console.error('usage: node bench/wasm-kernels.mjs [--flavour st|mt|relaxed] [--browser] [--types q4_0,q8_0,q4_k,q5_k,q6_k] [--tokens 1,2,16] [--shape ROWSxCOLS] [--budget-ms MS] [--touch on|off] [--dot16 on|off]');
  process.exit(2);
}
const pkg = { st: 'pkg', mt: 'pkg-mt', relaxed: 'pkg-relaxed' }[flavour];
const cases = types.flatMap((t) => tokensList.map((tokens) => ({ name: t, id: TYPES[t], tokens })));

// Runs in Node or in the page: `bench(id, rows, cols, tokens, products)` is the module's export. The
// case's set-up (random weights) costs far more than one product, so each case runs enough products
// for about `budgetMs` and the set-up alone (0 products, fastest of 2) is taken off.
function timeCases(bench, cases, rows, cols, budgetMs) {
  const timed = (c, n) => {
    const t = performance.now();
    const sum = bench(c.id, rows, cols, c.tokens, n);
    return { ms: performance.now() - t, sum };
  };
  const out = [];
  for (const c of cases) {
    const setup = Math.min(timed(c, 0).ms, timed(c, 0).ms);
    const est = Math.max((timed(c, 8).ms - setup) / 8, 1e-3);
    const n = Math.max(8, Math.ceil(budgetMs / est));
    const r = timed(c, n);
    out.push({ ...c, ms: (r.ms - setup) / n, products: n, ok: Number.isFinite(r.sum) });
  }
  return out;
}

let results;
const inBrowser = flavour === 'relaxed' || args.includes('--browser');
if (!inBrowser) {
  const wasm = await import(path.join(root, 'bindings/wasm', pkg, 'phi2_wasm.js'));
  const exports = wasm.initSync({ module: readFileSync(path.join(root, 'bindings/wasm', pkg, 'phi2_wasm_bg.wasm')) });
  if (touch) exports.phi2_set_knob(0, touch === 'on' ? 1 : 0);
  if (dot16) exports.phi2_set_knob(1, dot16 === 'on' ? 1 : 0);
  results = timeCases(exports.phi2_simd128_bench, cases, rows, cols, budgetMs);
} else {
  const { chromium } = await import('playwright-core');
  const { serve } = await import('./lib/browser.mjs');
  const { server, url } = await serve({ '/pkg/': path.join(root, 'bindings/wasm', pkg) }, { '/index.html': '<!doctype html><title>wasm kernels</title>' });
  const browser = await chromium.launch({ executablePath: process.env.PHI2_CHROMIUM ?? '/usr/bin/chromium', headless: true, args: ['--no-sandbox', '--disable-gpu'] });
  try {
    const page = await browser.newPage();
    await page.goto(`${url}/index.html`);
    results = await page.evaluate(
      async ({ cases, rows, cols, budgetMs, touch, dot16, fn }) => {
        const wasm = await import('/pkg/phi2_wasm.js');
        const exports = await wasm.default('/pkg/phi2_wasm_bg.wasm');
        if (touch) exports.phi2_set_knob(0, touch === 'on' ? 1 : 0);
        if (dot16) exports.phi2_set_knob(1, dot16 === 'on' ? 1 : 0);
        // eslint-disable-next-line no-new-func
        return new Function(`return (${fn})`)()(exports.phi2_simd128_bench, cases, rows, cols, budgetMs);
      },
      { cases, rows, cols, budgetMs, touch, dot16, fn: timeCases.toString() },
    );
  } finally {
    await browser.close();
    server.close();
  }
}

console.log(`wasm ${flavour} (${pkg}) in ${inBrowser ? 'Chromium' : `Node ${process.version}`}, one thread, ${rows} x ${cols}, ~${budgetMs} ms of products per case${touch ? `, touches ahead ${touch}` : ''}${dot16 ? `, i16 dots ${dot16}` : ''}`);
console.log('type   tokens   ms/product   GMAC/s');
for (const r of results) {
  const gmac = (rows * cols * r.tokens) / (r.ms * 1e6);
  console.log(`${r.name.padEnd(6)} ${String(r.tokens).padStart(6)} ${r.ms.toFixed(2).padStart(12)} ${r.ok ? gmac.toFixed(2).padStart(8) : '  (not taken)'}`);
}
