// Where a backend's forward passes spend their time, phase by phase (the engine's profile,
// crates/phi2/src/profile.rs): one prompt, then greedy decode steps, through the public SDK, with
// the profile's totals read from the addon that ran them. For choosing which of the CUDA backend's
// operations to replace with kernels of our own (issue 12); on the CPU, the same table for our
// kernels.
//   node test/device/profile.mjs --model FILE [--backend cpu|cuda] [--prompt-tokens 512]
//                                [--gen-tokens 64] [--threads N] [--json OUT.json]
// Prints, per kind of pass (the prompt's "batch", the steps' "decode"), each phase's time per
// pass and its share. Every phase ends by waiting for the device, so profiled passes are slower
// than plain ones (on a GPU by tens of microseconds per phase): read the shares. Exit 1 if the
// profile recorded nothing.
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { promptIds } from '../../bench/lib/prompt.mjs';

process.env.PHI2_PROFILE = '1';
const args = process.argv.slice(2);
const opt = (k, d) => (args.includes(k) ? args[args.indexOf(k) + 1] : d);
const model = opt('--model', null);
const backend = opt('--backend', 'cpu');
const promptTokens = Number(opt('--prompt-tokens', 512));
const genTokens = Number(opt('--gen-tokens', 64));
const threads = opt('--threads', null);
const jsonOut = opt('--json', null);
if (!model || !['cpu', 'cuda'].includes(backend) || !(promptTokens >= 1) || !(genTokens >= 2)) {
  console.error('usage: node test/device/profile.mjs --model FILE [--backend cpu|cuda] [--prompt-tokens N] [--gen-tokens N>=2] [--threads N] [--json FILE]');
  process.exit(2);
}

const { loadModel } = await import('@x/phi2');
const addon = createRequire(import.meta.url)(backend === 'cuda' ? '@x/phi2-native/cuda' : '@x/phi2-native');
const m = await loadModel(model, { backend, ...(threads ? { threads: Number(threads) } : {}) });
// phi2-bench's prompt (English text, GPT-2 ids), so the profile is of the passes the bench times.
const prompt = promptIds(promptTokens);
const opts = (n) => ({ maxNewTokens: n, doSample: false, logitBias: { [m.info.eosTokenId ?? 50256]: -Infinity } });
await m.generate(prompt.slice(0, 8), opts(2)); // warm-up, not counted
addon.profileReset();
const t0 = performance.now();
const out = await m.generate(prompt, opts(genTokens));
const wallMs = performance.now() - t0;
const rows = addon.profileSnapshot();
await m.dispose();
if (rows.length === 0) {
  console.error('the profile recorded nothing (is PHI2_PROFILE honoured by this addon?)');
  process.exit(1);
}

const device = m.info.runtime?.device ?? backend;
console.log(`profile: ${model} on ${backend} (${device}), prompt ${promptTokens} tokens, ${out.usage.completionTokens} generated; wall ${wallMs.toFixed(0)} ms`);
for (const pass of ['batch', 'decode']) {
  const rs = rows.filter((r) => r.pass === pass);
  if (rs.length === 0) continue;
  const total = rs.reduce((s, r) => s + r.ms, 0);
  const { passes, tokens } = rs[0];
  console.log(`\n${pass === 'decode' ? 'decode steps' : 'passes of several tokens'}: ${passes} passes, ${tokens} tokens, ${(total / passes).toFixed(2)} ms per pass`);
  console.log('phase       ms/pass   share   calls/pass');
  for (const r of rs) {
    console.log(`${r.phase.padEnd(10)} ${(r.ms / passes).toFixed(3).padStart(8)} ${((100 * r.ms) / total).toFixed(1).padStart(6)}%   ${(r.calls / passes).toFixed(0).padStart(6)}`);
  }
}
if (jsonOut) writeFileSync(jsonOut, JSON.stringify({ model, backend, device, promptTokens, genTokens, wallMs, rows }, null, 1));
