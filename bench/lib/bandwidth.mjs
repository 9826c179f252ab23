// Memory read bandwidth, measured with nothing but Node: N worker_threads each sum their own slice
// of one large shared WebAssembly.Memory with a 20-instruction wasm SIMD128 loop (four independent
// v128.load + i64x2.add chains, 64 bytes per iteration; the module's bytes are below, no compiler
// involved). The threads start together (Atomics), each pass reads every byte of the buffer once;
// bandwidth = bytes / slowest thread's time, best of `passes`. The buffer (default 1 GiB) is far
// larger than any last-level cache, so this is DRAM read bandwidth, what batch-1 decoding is bound by.
//
// wasm memory lives on 4 KB pages, which stream slower than the 2 MB pages the native engine maps
// model files with (Linux; measured here ~26 vs ~31 GB/s), so where the native addon loads it is
// asked too (`readBandwidth`: the same kind of read over a buffer on 2 MB pages) and the ceiling
// is the better of the two: the machine's, whatever the engine.
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

// (module
//   (import "e" "m" (memory 1 65536 shared))
//   (func (export "sum") (param $p i32) (param $end i32) (result i64)
//     (local v128 v128 v128 v128)
//     (loop  a+=load(p) b+=load(p+16) c+=load(p+32) d+=load(p+48)  p+=64  (br_if 0 (p < end)))
//     (a+b+c+d) → lane 0 + lane 1))
const WASM = Uint8Array.from([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
  0x01, 0x07, 0x01, 0x60, 0x02, 0x7f, 0x7f, 0x01, 0x7e, // type: (i32, i32) -> i64
  0x02, 0x0b, 0x01, 0x01, 0x65, 0x01, 0x6d, 0x02, 0x03, 0x01, 0x80, 0x80, 0x04, // import e.m shared memory 1..65536
  0x03, 0x02, 0x01, 0x00, // function 0 has type 0
  0x07, 0x07, 0x01, 0x03, 0x73, 0x75, 0x6d, 0x00, 0x00, // export "sum"
  0x0a, 0x68, 0x01, 0x66, // code: 1 body of 102 bytes
  0x01, 0x04, 0x7b, // 4 locals of v128
  0x03, 0x40, // loop
  0x20, 0x02, 0x20, 0x00, 0xfd, 0x00, 0x04, 0x00, 0xfd, 0xce, 0x01, 0x21, 0x02,
  0x20, 0x03, 0x20, 0x00, 0xfd, 0x00, 0x04, 0x10, 0xfd, 0xce, 0x01, 0x21, 0x03,
  0x20, 0x04, 0x20, 0x00, 0xfd, 0x00, 0x04, 0x20, 0xfd, 0xce, 0x01, 0x21, 0x04,
  0x20, 0x05, 0x20, 0x00, 0xfd, 0x00, 0x04, 0x30, 0xfd, 0xce, 0x01, 0x21, 0x05,
  0x20, 0x00, 0x41, 0xc0, 0x00, 0x6a, 0x21, 0x00, // p += 64
  0x20, 0x00, 0x20, 0x01, 0x49, 0x0d, 0x00, // br_if 0 (p < end)
  0x0b, // end loop
  0x20, 0x02, 0x20, 0x03, 0xfd, 0xce, 0x01, 0x20, 0x04, 0xfd, 0xce, 0x01, 0x20, 0x05, 0xfd, 0xce, 0x01,
  0x22, 0x02, 0xfd, 0x1d, 0x00, 0x20, 0x02, 0xfd, 0x1d, 0x01, 0x7c, // lane 0 + lane 1
  0x0b,
]);

const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { memory, module, start, end, ctl, index, passes } = workerData;
const { exports } = new WebAssembly.Instance(module, { e: { m: memory } });
const flags = new Int32Array(ctl);
const times = new Float64Array(ctl, 64);
let sink = 0n;
for (let p = 0; p < passes; p++) {
  Atomics.add(flags, 1, 1); Atomics.notify(flags, 1);
  while (Atomics.load(flags, 0) <= p) Atomics.wait(flags, 0, p);   // the go signal for pass p
  const t0 = performance.now();
  sink += exports.sum(start, end);
  times[p * 64 + index] = performance.now() - t0;
  Atomics.add(flags, 2, 1); Atomics.notify(flags, 2);
}
parentPort.postMessage(String(sink));
`;

/**
 * `id` (an @x/phi2-native entry) as bench/ resolves it, else as @x/phi2 does (an installed
 * phi2-bench finds the addon through the SDK). Throws the last place's error.
 */
function requireAddon(id) {
  const require = createRequire(import.meta.url);
  try {
    return require(id);
  } catch {
    return createRequire(require.resolve('@x/phi2'))(id);
  }
}

/** The native addon's probe, or null where the addon does not load. */
function nativeProbe() {
  try {
    const addon = requireAddon('@x/phi2-native');
    return typeof addon.readBandwidth === 'function' ? addon.readBandwidth : null;
  } catch {
    return null;
  }
}

/**
 * The better of the wasm probe and (where the addon loads) the native one.
 * @returns {Promise<{gbPerS: number, threads: number, bufferBytes: number, passes: number, method: string, wasmGbPerS: number, nativeGbPerS: number | null}>}
 */
export async function measureBandwidth({ threads, bufferBytes = 1 << 30, passes = 5 } = {}) {
  const wasm = await measureWasmBandwidth({ threads, bufferBytes, passes });
  const probe = nativeProbe();
  const mib = Math.max(1, Math.round(bufferBytes / 2 ** 20));
  let native = null;
  try {
    native = probe ? probe(mib, threads, passes) : null;
  } catch (e) {
    // E_OUT_OF_MEMORY: the buffer would not fit in the memory available now; the wasm probe stands.
    native = null;
  }
  const out = { ...wasm, wasmGbPerS: wasm.gbPerS, nativeGbPerS: native };
  if (native !== null && native > wasm.gbPerS) {
    out.gbPerS = native;
    out.method = `native read of a ${(mib / 1024).toFixed(2)} GiB buffer on 2 MB pages by ${threads} thread${threads > 1 ? 's' : ''}, best of ${passes} passes (the wasm probe, 4 KB pages: ${wasm.gbPerS.toFixed(2)} GB/s)`;
  } else if (native !== null) {
    out.method += ` (the native probe: ${native.toFixed(2)} GB/s)`;
  }
  return out;
}

async function measureWasmBandwidth({ threads, bufferBytes, passes }) {
  if (!WebAssembly.validate(WASM)) throw new Error('the bandwidth probe needs WebAssembly SIMD128 (Node >= 16.4)');
  const module = new WebAssembly.Module(WASM);
  const pages = Math.ceil(bufferBytes / 65536);
  const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
  new Uint8Array(memory.buffer).fill(1); // touch every page: really allocated, not the zero page
  const per = Math.floor(pages / threads) * 65536;
  const ctl = new SharedArrayBuffer(64 + passes * 64 * 8);
  const flags = new Int32Array(ctl);
  const times = new Float64Array(ctl, 64);
  const workers = [];
  const done = [];
  for (let i = 0; i < threads; i++) {
    const w = new Worker(WORKER, { eval: true, execArgv: [], workerData: { memory, module, start: i * per, end: (i + 1) * per, ctl, index: i, passes } });
    workers.push(w);
    done.push(new Promise((res, rej) => { w.once('message', res); w.once('error', rej); }));
  }
  try {
    const results = [];
    for (let p = 0; p < passes; p++) {
      // wait until every worker is parked for this pass, then release them together
      while (Atomics.load(flags, 1) < (p + 1) * threads) await new Promise((r) => setTimeout(r, 1));
      Atomics.store(flags, 0, p + 1);
      Atomics.notify(flags, 0);
      while (Atomics.load(flags, 2) < (p + 1) * threads) await new Promise((r) => setTimeout(r, 1));
      let slowest = 0;
      for (let i = 0; i < threads; i++) slowest = Math.max(slowest, times[p * 64 + i]);
      results.push((per * threads) / (slowest / 1000) / 1e9);
    }
    await Promise.all(done);
    return {
      gbPerS: Math.max(...results),
      passesGbPerS: results,
      threads,
      bufferBytes: per * threads,
      passes,
      method: `wasm SIMD128 read of a ${((per * threads) / 2 ** 30).toFixed(2)} GiB shared buffer by ${threads} worker thread${threads > 1 ? 's' : ''}, best of ${passes} passes`,
    };
  } finally {
    for (const w of workers) await w.terminate();
  }
}

/**
 * The GPU's memory bandwidth for `--backend cuda`: the CUDA addon's device-to-device copy of
 * `bufferBytes`, bytes read + written, best of `passes` (a decode step on the GPU streams its
 * weights from device memory, so this is its ceiling).
 * @returns {{gbPerS: number, threads: number, bufferBytes: number, passes: number, method: string}}
 */
export function measureCudaBandwidth({ bufferBytes = 4 * 2 ** 30, passes = 10, ordinal = 0 } = {}) {
  let addon;
  try {
    addon = requireAddon('@x/phi2-native/cuda');
  } catch (e) {
    throw new Error(`the CUDA addon does not load: ${String(e?.message ?? e).split('\n')[0]}`);
  }
  const mib = Math.max(1, Math.round(bufferBytes / 2 ** 20));
  const gbPerS = addon.cudaCopyBandwidth(ordinal, mib, passes);
  return { gbPerS, threads: 1, bufferBytes: mib * 2 ** 20, passes, method: `CUDA device ${ordinal}: device-to-device copy of ${(mib / 1024).toFixed(2)} GiB, bytes read + written, best of ${passes}` };
}
