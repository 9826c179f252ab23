// The CUDA backend's checks on a GPU machine (issue 12), through the public SDK, CPU against CUDA on
// the project's fixtures (made there by phi2-fixtures):
//   1. log-probs of a prompt on every fixture: within 1e-3 for F32 and F16 weights, the BF16 and
//      quantized tolerances of the llama.cpp comparison (test/engine/llama.test.mjs) otherwise;
//   2. greedy and seeded (sampled) tokens identical to the CPU's;
//   3. 100 load / generate / dispose cycles without growth of the device's memory use;
//   4. with `kvCache: 'f16'`, log-probs and greedy tokens against the CPU's f16 cache (the CUDA
//      path rounds keys and values to f16 as the CPU's cache stores them), on an F16 and a Q4_0
//      fixture.
// Prints one line per check and writes everything to $OUT/device-checks.json when OUT is set.
// Exit 1 when a check fails.
//   node test/device/checks.mjs FIXTURES_DIR
// (PHI2_CHECK_BACKEND=cpu compares the CPU with itself and skips the memory cycles: a dry run of
// this script on a machine without a GPU.)
import { readdirSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { loadModel } from '@x/phi2';

const fixtures = path.resolve(process.argv[2] ?? 'test/fixtures/gen');
const PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n        return n\n';
const results = { fixtures, logprobs: [], tokens: [], kvF16: [], memory: null, failures: [] };
const fail = (what) => {
  results.failures.push(what);
  console.log(`FAIL ${what}`);
};

/** Tolerances on |Δ log-prob| (max over every row and token, mean) by the file's weight type. */
function tolerance(name) {
  if (/-f16(\.gguf)?$/.test(name) || /-f32(-split)?\.gguf$/.test(name) || /^(tiny|odd|kq)(-legacy)?$/.test(name)) return { max: 1e-3, mean: 1e-4 };
  if (/-bf16(\.gguf)?$/.test(name)) return { max: 0.15, mean: 0.02 };
  return { max: 0.35, mean: 0.06 };
}

/** max and mean |Δ| of two log-prob arrays; a length mismatch or a NaN on one side only: Infinity. */
function difference(a, b) {
  let max = a.length === b.length ? 0 : Infinity;
  let sum = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    max = Number.isNaN(d) ? Infinity : Math.max(max, d);
    sum += Number.isFinite(d) ? d : 0;
  }
  return { max, mean: sum / a.length };
}

const models = readdirSync(fixtures)
  .filter((f) => f.endsWith('.gguf') || (statSync(path.join(fixtures, f)).isDirectory() && readdirSync(path.join(fixtures, f)).includes('config.json')))
  .sort();
if (models.length === 0) throw new Error(`no fixtures in ${fixtures}`);

const backend = process.env.PHI2_CHECK_BACKEND ?? 'cuda';
const device = { cuda: null };
for (const name of models) {
  const file = path.join(fixtures, name);
  let cpu;
  let gpu;
  try {
    cpu = await loadModel(file, { backend: 'cpu' });
    gpu = await loadModel(file, { backend });
  } catch (e) {
    fail(`${name}: load: ${e.code ?? ''} ${e.message}`);
    cpu?.dispose();
    continue;
  }
  device.cuda ??= gpu.info.runtime.device;
  try {
    const ids = cpu.tokenize(PROMPT).slice(0, Math.min(48, cpu.info.contextLength - 40));
    const [a, b] = [await cpu.logprobs(ids), await gpu.logprobs(ids)];
    const { max, mean } = difference(a, b);
    const tol = tolerance(name);
    const ok = max <= tol.max && mean <= tol.mean;
    results.logprobs.push({ name, dtype: cpu.info.dtype, rows: ids.length, max, mean, tol, ok });
    console.log(`${ok ? 'ok  ' : 'FAIL'} log-probs ${name} (${cpu.info.dtype}): max |Δ| ${max.toExponential(2)} mean ${mean.toExponential(2)} (tolerance ${tol.max} / ${tol.mean})`);
    if (!ok) results.failures.push(`log-probs ${name}`);

    for (const [kind, opts] of [
      ['greedy', { maxNewTokens: 24, doSample: false }],
      ['seeded', { maxNewTokens: 24, doSample: true, temperature: 0.8, topP: 0.95, seed: 7 }],
    ]) {
      const [x, y] = [await cpu.generate(ids, opts), await gpu.generate(ids, opts)];
      const same = x.tokens.length === y.tokens.length && x.tokens.every((t, i) => t === y.tokens[i]);
      const at = same ? -1 : x.tokens.findIndex((t, i) => t !== y.tokens[i]);
      results.tokens.push({ name, kind, same, cpu: x.tokens, cuda: y.tokens, firstDifference: at });
      console.log(`${same ? 'ok  ' : 'FAIL'} ${kind} tokens ${name}: ${same ? `${x.tokens.length} identical` : `differ from token ${at}`}`);
      if (!same) results.failures.push(`${kind} tokens ${name}`);
    }
  } catch (e) {
    fail(`${name}: ${e.code ?? ''} ${e.message}`);
  } finally {
    cpu.dispose();
    gpu.dispose();
  }
}
results.device = device.cuda;

// 4. The f16 KV cache: CPU (keys and values stored as f16) against the backend (rounded to f16).
for (const name of models.filter((m) => /^kq-(f16|q4_0)\.gguf$/.test(m))) {
  const file = path.join(fixtures, name);
  let cpu;
  let gpu;
  try {
    cpu = await loadModel(file, { backend: 'cpu', kvCache: 'f16' });
    gpu = await loadModel(file, { backend, kvCache: 'f16' });
    const ids = cpu.tokenize(PROMPT).slice(0, Math.min(48, cpu.info.contextLength - 40));
    const { max } = difference(await cpu.logprobs(ids), await gpu.logprobs(ids));
    const opts = { maxNewTokens: 24, doSample: false };
    const [x, y] = [await cpu.generate(ids, opts), await gpu.generate(ids, opts)];
    const same = x.tokens.length === y.tokens.length && x.tokens.every((t, i) => t === y.tokens[i]);
    const tol = tolerance(name);
    const ok = gpu.info.kvCache === 'f16' && max <= tol.max && same;
    results.kvF16.push({ name, kvCache: gpu.info.kvCache, max, tol: tol.max, same, ok });
    console.log(`${ok ? 'ok  ' : 'FAIL'} kvCache f16 ${name}: info.kvCache ${gpu.info.kvCache}, log-probs max |Δ| ${max.toExponential(2)} (tolerance ${tol.max}), greedy tokens ${same ? 'identical' : 'differ'}`);
    if (!ok) results.failures.push(`kvCache f16 ${name}`);
  } catch (e) {
    fail(`kvCache f16 ${name}: ${e.code ?? ''} ${e.message}`);
  } finally {
    cpu?.dispose();
    gpu?.dispose();
  }
}

// 3. Device memory over load / generate / dispose cycles: after a warm-up of 10 (kernels loaded,
// the allocator's pools filled), 90 more must not take more memory.
if (backend === 'cuda') {
  const require = createRequire(import.meta.url);
  const cuda = createRequire(require.resolve('@x/phi2'))('@x/phi2-native/cuda');
  const file = path.join(fixtures, models.find((m) => m.endsWith('-q4_0.gguf')) ?? models[0]);
  const used = () => {
    const m = cuda.cudaMemory(0);
    return m.total - m.free;
  };
  const samples = [];
  for (let i = 1; i <= 100; i++) {
    const m = await loadModel(file, { backend: 'cuda' });
    await m.generate('Hello', { maxNewTokens: 4, doSample: false });
    m.dispose();
    if (i === 1 || i % 10 === 0) samples.push({ cycle: i, usedBytes: used() });
  }
  const growth = samples.at(-1).usedBytes - samples[1].usedBytes;
  const ok = growth <= 32 * 2 ** 20;
  results.memory = { file: path.basename(file), samples, growthBytes: growth, ok };
  console.log(`${ok ? 'ok  ' : 'FAIL'} device memory over 100 load/generate/dispose cycles of ${path.basename(file)}: ${(growth / 2 ** 20).toFixed(1)} MiB more after cycle 100 than after cycle 10 (${samples.map((s) => `${s.cycle}: ${(s.usedBytes / 2 ** 20).toFixed(0)}`).join(', ')} MiB used)`);
  if (!ok) results.failures.push('device memory growth');
}

console.log(`${results.failures.length ? "FAILED" : "passed"}: ${results.logprobs.length} log-prob checks, ${results.tokens.length} token checks, ${results.kvF16.length} f16-KV checks, memory ${results.memory === null ? "not checked" : results.memory.ok ? "ok" : "FAILED"} on ${device.cuda}`);
if (process.env.OUT) writeFileSync(path.join(process.env.OUT, 'device-checks.json'), JSON.stringify(results, null, 1));
process.exitCode = results.failures.length ? 1 : 0;
