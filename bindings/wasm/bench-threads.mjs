// Decode speed of the wasm builds on one GGUF: pkg (single-threaded) vs pkg-mt on N threads.
// Not a test; prints one line per run.
//   node bindings/wasm/bench-threads.mjs MODEL.gguf [--threads N] [--tokens T] [--only st|mt]
// The engine runs on this (main) thread, the N pool threads in worker_threads, started as
// CONTRACT.md "Threads" says.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : dflt;
};
const threads = Number(opt('--threads', '2'));
const maxNew = Number(opt('--tokens', '16'));
const only = opt('--only', '');
const model = args[0];
if (!model) {
  console.error('usage: node bindings/wasm/bench-threads.mjs MODEL.gguf [--threads N] [--tokens T] [--only st|mt]');
  process.exit(2);
}
const PROMPT = [464, 2068, 7586, 21831, 18045, 625, 198, 50284];

const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
(async () => {
  const m = await import(workerData.glue);
  m.initSync({ module: workerData.module, memory: workerData.memory });
  parentPort.postMessage('ready');
  m.threadWorkerRun();
})().catch((e) => parentPort.postMessage('error: ' + (e && e.message)));
`;

async function instantiate(flavour) {
  const dir = path.join(here, flavour === 'mt' ? 'pkg-mt' : 'pkg');
  const glue = pathToFileURL(path.join(dir, 'phi2_wasm.js')).href;
  const w = await import(glue);
  const module = new WebAssembly.Module(readFileSync(path.join(dir, 'phi2_wasm_bg.wasm')));
  const exports = w.initSync({ module });
  const workers = [];
  if (flavour === 'mt') {
    await Promise.all(Array.from({ length: threads }, () => new Promise((resolve, reject) => {
      const worker = new Worker(WORKER, { eval: true, workerData: { glue, module, memory: exports.memory } });
      workers.push(worker);
      worker.once('message', (m) => (m === 'ready' ? resolve() : reject(new Error(m))));
      worker.once('error', reject);
    })));
    w.threadPoolBuild(threads);
  }
  return { w, workers };
}

const bytes = readFileSync(model);
for (const flavour of only ? [only] : ['st', 'mt']) {
  const { w, workers } = await instantiate(flavour);
  let t0 = performance.now();
  const m = w.WasmModel.load(bytes, path.basename(model));
  const loadMs = performance.now() - t0;
  const best = { prompt: Infinity, decode: 0 };
  for (let rep = 0; rep < 2; rep++) {
    const r = m.createSession().generate(PROMPT, { maxNewTokens: maxNew, stopOnEos: false }, null);
    best.prompt = Math.min(best.prompt, r.promptMs);
    best.decode = Math.max(best.decode, ((r.tokens.length - 1) / r.generateMs) * 1000);
  }
  console.log(`${flavour}${flavour === 'mt' ? ` (${threads} threads)` : ''}: load ${(loadMs / 1000).toFixed(1)} s, ` +
    `prefill ${PROMPT.length} tokens ${best.prompt.toFixed(0)} ms, decode ${best.decode.toFixed(2)} tok/s ` +
    `(best of 2, ${maxNew} new tokens)`);
  m.free();
  await Promise.all(workers.map((x) => x.terminate()));
}
