// Memory of a streamed load in the wasm engine (bindings/wasm/pkg, single-threaded): the file is
// read in 1 MiB chunks and pushed into WasmModelLoader, as the SDK's worker does with a download.
// Prints the wasm heap (memory.buffer.byteLength, which only grows, so it is the peak) against the
// file size, after the header, after the last push and after finish(), then a short greedy run.
// Not a test.
//   node bench/wasm-load.mjs MODEL.gguf [--context N] [--tokens T]
import { closeSync, fstatSync, openSync, readSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : dflt;
};
const context = opt('--context', undefined);
const maxNew = Number(opt('--tokens', '8'));
const model = args[0];
if (!model) {
  console.error('usage: node bench/wasm-load.mjs MODEL.gguf [--context N] [--tokens T]');
  process.exit(2);
}
const dir = path.join(root, 'bindings/wasm/pkg');
const w = await import(pathToFileURL(path.join(dir, 'phi2_wasm.js')).href);
const exports = w.initSync({ module: new WebAssembly.Module(readFileSync(path.join(dir, 'phi2_wasm_bg.wasm'))) });
const heap = () => exports.memory.buffer.byteLength;
const gb = (n) => (n / 1e9).toFixed(3) + ' GB';

const fd = openSync(model, 'r');
const size = fstatSync(fd).size;
const t0 = performance.now();
const loader = new w.WasmModelLoader(path.basename(model), size, false, context === undefined ? undefined : Number(context));
const chunk = Buffer.allocUnsafe(1 << 20);
let at = 0;
let afterHeader = null;
while (at < size) {
  const n = readSync(fd, chunk, 0, chunk.length, at);
  loader.push(chunk.subarray(0, n));
  at += n;
  if (afterHeader === null && loader.headerParsed) afterHeader = heap();
}
closeSync(fd);
const afterPush = heap();
const m = loader.finish();
const afterFinish = heap();
const loadMs = performance.now() - t0;
const info = m.info;
console.log(`file ${gb(size)} (${info.dtype}, context ${info.contextLength} of ${info.trainedContextLength})`);
console.log(`wasm heap: after header ${gb(afterHeader)}, after the last push ${gb(afterPush)}, after finish ${gb(afterFinish)} = ${(afterFinish / size).toFixed(2)}× the file; load ${(loadMs / 1000).toFixed(1)} s`);
const s = m.createSession();
const t1 = performance.now();
const r = s.generate([464, 2068, 7586, 21831, 18045, 625, 198, 50284], { maxNewTokens: maxNew, stopOnEos: false }, null, null);
console.log(`generated ${r.tokens.length} tokens in ${((performance.now() - t1) / 1000).toFixed(1)} s; wasm heap now ${gb(heap())}`);
m.dispose();
