// Decode speed of the engine vs llama.cpp (node-llama-cpp 3.21.1, CPU) on the same GGUF file.
//
//   node bench/decode.mjs --model FILE.gguf [--tokens 32] [--threads 2]
//
// Phi-2-shaped random-weight models for this: target/release/phi2-fixtures --out DIR --only phi2
//   --files phi2-q4_0.gguf   (1.57 GB; the F32 source weights need ~11 GB of RAM while writing).
// Engine: the `generate` example run with 1 and with 1+N new tokens (fastest of 3 each); the
// difference is N decode steps (load and prefill cancel out). llama.cpp: one context, the prompt evaluated, then N
// single-token evaluations timed. Greedy, same prompt, both on all cores unless --threads.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (k, d) => (args.includes(k) ? args[args.indexOf(k) + 1] : d);
const model = opt('--model');
const n = Number(opt('--tokens', 32));
const threads = Number(opt('--threads', 2));
if (!model) { console.error('usage: node bench/decode.mjs --model FILE.gguf [--tokens N] [--threads T]'); process.exit(2); }
const prompt = [464, 2068, 7586, 21831, 18045, 625, 198, 50284, 1169, 16931, 3290];

function engineRun(newTokens) {
  const t0 = performance.now();
  execFileSync(path.join(root, 'target/release/examples/generate'),
    ['--model', model, '--tokens', prompt.join(','), '--max-new-tokens', String(newTokens)],
    { env: { ...process.env, CANDLE_NUM_THREADS: String(threads) } });
  return performance.now() - t0;
}
// Load time varies run to run (page cache): take the fastest of 3 runs of each.
const fastest = (k) => Math.min(...[0, 1, 2].map(() => engineRun(k)));
const base = fastest(1);
const full = fastest(1 + n);
const ours = (n * 1000) / (full - base);

process.env.NODE_LLAMA_CPP_SKIP_DOWNLOAD = 'true';
const { getLlama } = await import('node-llama-cpp');
const llama = await getLlama({ gpu: false, build: 'never' });
const lm = await llama.loadModel({ modelPath: model });
const ctx = await lm.createContext({ contextSize: 512, threads, batchSize: 512 });
const seq = ctx.getSequence();
let next;
for await (const t of seq.evaluate(prompt, { temperature: 0 })) { next = t; break; }
const t1 = performance.now();
let count = 0;
for await (const t of seq.evaluate([next], { temperature: 0 })) { if (++count >= n) break; }
const theirs = (n * 1000) / (performance.now() - t1);
await ctx.dispose(); await lm.dispose();

console.log(JSON.stringify({ model: path.basename(model), threads, decodeTokens: n,
  engineTokPerS: +ours.toFixed(2), llamaCppTokPerS: +theirs.toFixed(2) }));
