// The multi-threaded wasm build (bindings/wasm/pkg-mt: +atomics, shared memory, a rayon pool on
// worker_threads) against the single-threaded one (bindings/wasm/pkg), both from
// scripts/build-wasm.sh:
//   scripts/build-wasm.sh && PHI2_FIXTURES=$PWD/test/fixtures/gen node --test test/wasm/threads.test.mjs
//
// Start-up, as CONTRACT.md "Threads" describes it (here the engine runs on Node's main thread,
// which may block in Atomics.wait; a page's main thread may not):
//   1. compile the module once; the engine instantiates it (`initSync({ module })`), which creates
//      the shared memory (`exports.memory`);
//   2. N workers get `{ module, memory }`, call `initSync({ module, memory })`, then
//      `threadWorkerRun()` (blocks for ever, running one pool thread);
//   3. the engine calls `threadPoolBuild(N)`.
// Matrix products are then split by output rows: every output is the same dot product through
// the same kernel, so tokens and log-probs must equal the single-threaded build's exactly (dense
// f32 weights go through gemm, whose blocking may depend on the split: 1e-6 there).
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';

import { fixtures, maxAbsDiff, root } from '../engine/helpers.mjs';

const THREADS = 2;
const PROMPT = [464, 2068, 7586];
const MAX_NEW = 8;
const FIXTURES = ['tiny-q8_0.gguf', 'tiny-q4_0.gguf', 'kq-q4_K.gguf', 'tiny-f32.gguf'];
const SAMPLING = { maxNewTokens: 12, doSample: true, temperature: 0.9, topK: 40, topP: 0.95, seed: 1234 };

const pkgs = { st: path.join(root, 'bindings/wasm/pkg'), mt: path.join(root, 'bindings/wasm/pkg-mt') };
for (const dir of Object.values(pkgs)) {
  const f = path.join(dir, 'phi2_wasm_bg.wasm');
  if (!existsSync(f)) throw new Error(`${f} is missing: run scripts/build-wasm.sh`);
}
const glue = (flavour) => pathToFileURL(path.join(pkgs[flavour], 'phi2_wasm.js')).href;

const st = await import(glue('st'));
st.initSync({ module: readFileSync(path.join(pkgs.st, 'phi2_wasm_bg.wasm')) });
const mt = await import(glue('mt'));
const mtModule = new WebAssembly.Module(readFileSync(path.join(pkgs.mt, 'phi2_wasm_bg.wasm')));
const mtExports = mt.initSync({ module: mtModule });
const memory = mtExports.memory;

/** Calls `fn`, expecting a JS Error whose `code` is `code`. */
function throwsCode(fn, code) {
  assert.throws(fn, (e) => {
    assert.ok(e instanceof Error, `not an Error: ${e}`);
    assert.equal(e.code, code, `${e.code}: ${e.message}`);
    return true;
  });
}

// A thread worker: instantiate the same module on the shared memory, report, run a pool thread.
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
(async () => {
  try {
    const m = await import(workerData.glue);
    m.initSync({ module: workerData.module, memory: workerData.memory });
    parentPort.postMessage({ ready: true });
    m.threadWorkerRun();
    parentPort.postMessage({ returned: true });
  } catch (e) {
    parentPort.postMessage({ error: String(e && e.message), code: e && e.code });
  }
})();
`;

const workers = [];
const workerEvents = [];
after(async () => {
  // Pool threads block in Atomics.wait for ever; terminate() interrupts them so the process exits.
  await Promise.all(workers.map((w) => w.terminate()));
});

/** Starts `n` thread workers; resolves when each has instantiated the module. */
function startWorkers(n) {
  return Promise.all(Array.from({ length: n }, () => new Promise((resolve, reject) => {
    const w = new Worker(WORKER, { eval: true, workerData: { glue: glue('mt'), module: mtModule, memory } });
    workers.push(w);
    w.on('message', (msg) => {
      workerEvents.push(msg);
      if (msg.ready) resolve();
      else reject(new Error(`thread worker: ${JSON.stringify(msg)}`));
    });
    w.on('error', reject);
  })));
}

test('the exports report the build: pkg has no threads, pkg-mt has a shared memory', () => {
  assert.equal(st.threadsSupported(), false);
  assert.equal(st.threadPoolSize(), 0);
  throwsCode(() => st.threadPoolBuild(2), 'E_BACKEND');
  throwsCode(() => st.threadWorkerRun(), 'E_BACKEND');
  assert.equal(mt.threadsSupported(), true);
  assert.equal(mt.threadPoolSize(), 0);
  assert.ok(memory instanceof WebAssembly.Memory);
  assert.ok(memory.buffer instanceof SharedArrayBuffer, 'pkg-mt memory is shared');
  // Same exports in both builds (CONTRACT.md).
  const names = (m) => Object.keys(m).filter((k) => k !== 'default').sort();
  assert.deepEqual(names(mt), names(st));
});

test('threadPoolBuild: coded errors for bad counts; builds once', async () => {
  for (const n of [0, -1, 65, 1.5, NaN, Infinity]) throwsCode(() => mt.threadPoolBuild(n), 'E_INVALID_ARGUMENT');
  throwsCode(() => mt.threadPoolBuild('2'), 'E_INVALID_ARGUMENT');
  assert.equal(mt.threadPoolSize(), 0);
  await startWorkers(THREADS);
  mt.threadPoolBuild(THREADS);
  assert.equal(mt.threadPoolSize(), THREADS);
  throwsCode(() => mt.threadPoolBuild(THREADS), 'E_BACKEND');
  assert.equal(mt.threadPoolSize(), THREADS);
  assert.ok(workerEvents.every((m) => m.ready), JSON.stringify(workerEvents));
});

for (const name of FIXTURES) {
  test(`${name}: pkg-mt on ${THREADS} threads gives pkg's tokens and log-probs`, () => {
    assert.equal(mt.threadPoolSize(), THREADS, 'pool built by the previous test');
    const bytes = readFileSync(path.join(fixtures, name));
    const run = (w) => {
      const model = w.WasmModel.load(bytes, name);
      const t0 = performance.now();
      const greedy = model.createSession().generate(PROMPT, { maxNewTokens: MAX_NEW, doSample: false }, null);
      const ms = performance.now() - t0;
      const sampled = model.createSession().generate(PROMPT, SAMPLING, null);
      const rows = model.logprobs([...PROMPT, ...greedy.tokens]);
      const dtype = model.info.dtype;
      model.free();
      return { greedy: greedy.tokens, sampled: sampled.tokens, rows, ms, dtype };
    };
    const a = run(st);
    const split0 = mt.threadSplitProducts();
    const b = run(mt);
    const split = mt.threadSplitProducts() - split0;
    assert.ok(split > 0, 'no product was split over the pool');
    assert.equal(st.threadSplitProducts(), 0);
    assert.deepEqual(b.greedy, a.greedy, 'greedy tokens');
    assert.deepEqual(b.sampled, a.sampled, 'seeded sampled tokens');
    const d = maxAbsDiff(b.rows, a.rows);
    let same = b.rows.length === a.rows.length;
    for (let i = 0; same && i < a.rows.length; i++) same = Object.is(a.rows[i], b.rows[i]);
    console.log(`# ${name} (${a.dtype}): tokens equal; log-probs ${same ? 'bit-identical' : `max |Δ| ${d.toExponential(2)}`}; ` +
      `${split} split products; greedy ${MAX_NEW} tokens: st ${a.ms.toFixed(1)} ms, mt ${b.ms.toFixed(1)} ms`);
    if (a.dtype === 'f32') assert.ok(d <= 1e-6, `max |Δ logprob| ${d}`);
    else assert.ok(same, `quantized log-probs differ (max |Δ| ${d}): the split changed a dot product`);
  });
}

test('pkg-mt keeps its coded errors (no trap) with the pool running', () => {
  throwsCode(() => mt.WasmModel.load(new Uint8Array([1, 2, 3, 4]), 'junk.gguf'), 'E_MALFORMED_FILE');
  const model = mt.WasmModel.load(readFileSync(path.join(fixtures, 'tiny-q8_0.gguf')), 'tiny-q8_0.gguf');
  throwsCode(() => model.logprobs([1 << 30]), 'E_INVALID_ARGUMENT');
  assert.equal(model.createSession().generate(PROMPT, { maxNewTokens: 2, stopOnEos: false }).tokens.length, 2);
  model.free();
});
