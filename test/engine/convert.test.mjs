// `convert` end to end: the engine's convert example turns each fixture's HF safetensors (f32) into
// every GGUF type; llama.cpp (node-llama-cpp 3.21.1, CPU) loads each file, and its full-vocabulary
// log-probs agree with the engine's on the same file, with the tolerances of llama.test.mjs:
//   f32 5e-3, f16 2e-2, bf16 0.15 max |Δ log-prob|; quantized 0.35 max, 0.06 mean.
// (The bytes themselves are checked against llama-quantize's in crates/phi2/tests/convert.rs.)
// Needs: cargo build --release -p phi2 --examples, and the fixtures.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fixtures, generate, readRows, maxAbsDiff, run, root, PROMPT, scratch } from './helpers.mjs';

const convertBin = path.join(root, 'target/release/examples/convert');
const oracle = path.join(root, 'test/oracle/llama-logprobs.mjs');
const TYPES = ['F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q4_K_M', 'Q5_K_M', 'Q6_K'];
const N = 4;

function tolerance(type) {
  if (type === 'F32') return { max: 5e-3, mean: 1e-3 };
  if (type === 'F16') return { max: 2e-2, mean: 3e-3 };
  if (type === 'BF16') return { max: 0.15, mean: 0.02 };
  return { max: 0.35, mean: 0.06 };
}

function meanAbsDiff(a, b) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] === b[i] ? 0 : Math.abs(a[i] - b[i]);
  return s / a.length;
}

function llamaRows(model, tokens, out) {
  const r = run(process.execPath, [oracle, '--model', model, '--tokens', tokens.join(','), '--max-new-tokens', '0', '--out', out],
    { env: { ...process.env, NODE_LLAMA_CPP_SKIP_DOWNLOAD: 'true' } });
  if (r.status !== 0) throw new Error(`llama.cpp could not run ${model}: ${r.stderr}`);
  return readRows(out);
}

const measured = [];

test('the convert example is built', () => {
  assert.ok(existsSync(convertBin), `${convertBin} missing: cargo build --release -p phi2 --examples`);
});

for (const model of ['tiny', 'odd', 'kq']) {
  for (const type of TYPES) {
    test(`${model} → ${type}: llama.cpp loads the converted file and agrees with the engine`, () => {
      const out = path.join(scratch, `${model}-${type}.converted.gguf`);
      const r = run(convertBin, [path.join(fixtures, model), '--type', type, '--out', out, '--quiet']);
      assert.equal(r.status, 0, `convert failed: ${r.stderr}`);
      const report = JSON.parse(r.stdout);
      assert.equal(report.type, type);
      // Greedy continuation by the engine, then both engines score the same sequence.
      const ours = path.join(scratch, `${model}-${type}.ours.f32`);
      const theirs = path.join(scratch, `${model}-${type}.llama.f32`);
      const tokens = generate(out, PROMPT, N, [], ours);
      const mine = readRows(ours);
      const ref = llamaRows(out, [...PROMPT, ...tokens], theirs);
      const d = maxAbsDiff(mine, ref);
      const mean = meanAbsDiff(mine, ref);
      const tol = tolerance(type);
      const types = [...new Set(report.tensors.filter((t) => t.shape.length === 2).map((t) => t.type))].join('/');
      measured.push(`${model} ${type} (${types}, ${report.fallbacks} fallbacks): max |Δ logprob| ${d.toExponential(2)}, mean ${mean.toExponential(2)}`);
      assert.ok(d <= tol.max, `max |Δ logprob| ${d} > ${tol.max}`);
      assert.ok(mean <= tol.mean, `mean |Δ logprob| ${mean} > ${tol.mean}`);
      rmSync(out);
    });
  }
}

test('a bad source is a typed error and no output is written', () => {
  const out = path.join(scratch, 'never.gguf');
  const r = run(convertBin, [path.join(fixtures, 'tiny-f32.gguf'), '--type', 'Q4_0', '--out', out, '--quiet']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /E_INVALID_ARGUMENT/);
  assert.ok(!existsSync(out));
  const u = run(convertBin, [path.join(fixtures, 'tiny'), '--type', 'Q3_K', '--out', out]);
  assert.equal(u.status, 2);
  assert.match(u.stderr, /Q4_K_M/);
});

test('report', () => { console.log(measured.join('\n')); });
