// The `generate` example's command-line contract: output shape, log-prob rows, and errors that
// are messages and exit codes, never signals or panic traces.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fixtures, generate, generateBin, run, PROMPT, VOCAB, scratch } from './helpers.mjs';

const tiny = path.join(fixtures, 'tiny-q4_0.gguf');

function assertCleanFailure(r, code, mention) {
  assert.equal(r.signal, null, `killed by ${r.signal}`);
  assert.equal(r.status, code, r.stderr);
  assert.doesNotMatch(r.stderr, /panicked|RUST_BACKTRACE|stack backtrace/, r.stderr);
  if (mention) assert.match(r.stderr, mention);
}

test('prints the generated ids as one JSON line and writes P+N log-prob rows', () => {
  const out = path.join(scratch, 'lp.f32');
  const r = run(generateBin, ['--model', tiny, '--tokens', PROMPT.join(','), '--max-new-tokens', '5', '--logprobs-out', out]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^\{"tokens":\[(\d+,){4}\d+\]\}\n$/);
  assert.equal(statSync(out).size, (PROMPT.length + 5) * VOCAB * 4);
  const rows = new Float32Array(readFileSync(out).buffer.slice(0));
  for (let r0 = 0; r0 < PROMPT.length + 5; r0++) {
    let s = 0;
    for (let i = 0; i < VOCAB; i++) s += Math.exp(rows[r0 * VOCAB + i]);
    assert.ok(Math.abs(s - 1) < 1e-3, `row ${r0} sums to ${s}`);
  }
});

test('sampling flags are honoured and seeded', () => {
  const flags = ['--temperature', '0.9', '--top-k', '40', '--top-p', '0.95', '--min-p', '0.01', '--repetition-penalty', '1.1'];
  const a = generate(tiny, PROMPT, 8, [...flags, '--seed', '1']);
  const b = generate(tiny, PROMPT, 8, [...flags, '--seed', '1']);
  const c = generate(tiny, PROMPT, 8, [...flags, '--seed', '2']);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
});

test('usage errors exit 2 with the usage line', () => {
  assertCleanFailure(run(generateBin, []), 2, /--model is required[\s\S]*usage:/);
  assertCleanFailure(run(generateBin, ['--model', tiny, '--tokens', '1,x', '--max-new-tokens', '1']), 2, /--tokens/);
  assertCleanFailure(run(generateBin, ['--bogus']), 2, /unknown argument/);
});

test('bad models and bad values exit 1 with a message naming the problem', () => {
  const base = ['--tokens', '1,2', '--max-new-tokens', '2'];
  assertCleanFailure(run(generateBin, ['--model', '/nonexistent.gguf', ...base]), 1, /nonexistent\.gguf/);
  assertCleanFailure(run(generateBin, ['--model', tiny, '--tokens', '1,51200', '--max-new-tokens', '2']), 1, /51200/);
  assertCleanFailure(run(generateBin, ['--model', tiny, ...base, '--temperature', '-1']), 1, /temperature/);
  assertCleanFailure(run(generateBin, ['--model', tiny, ...base, '--top-p', '1.5', '--temperature', '1']), 1, /top_p/);
  const half = path.join(scratch, 'half.gguf');
  const bytes = readFileSync(tiny);
  writeFileSync(half, bytes.subarray(0, bytes.length >> 1));
  assertCleanFailure(run(generateBin, ['--model', half, ...base]), 1, /half\.gguf/);
});

test('corrupted files never crash the process (200 seeded corruptions)', () => {
  const bytes = readFileSync(tiny);
  let seed = 12345;
  const rnd = (n) => { seed = (seed * 1103515245 + 12345) >>> 0; return seed % n; };
  const target = path.join(scratch, 'corrupt.gguf');
  const outcomes = { ok: 0, err: 0 };
  for (let i = 0; i < 200; i++) {
    const b = Buffer.from(bytes);
    // Corrupt the header / metadata / tensor-info region where it matters most, sometimes the data.
    const span = i % 4 === 0 ? b.length : Math.min(b.length, 8 << 20 >>> 6);
    for (let k = 0; k < 1 + rnd(4); k++) b[rnd(span)] = rnd(256);
    writeFileSync(target, i % 10 === 9 ? b.subarray(0, rnd(b.length)) : b);
    const r = run(generateBin, ['--model', target, '--tokens', '1,2,3', '--max-new-tokens', '1']);
    assert.equal(r.signal, null, `iteration ${i}: killed by ${r.signal}`);
    assert.ok(r.status === 0 || r.status === 1, `iteration ${i}: exit ${r.status}: ${r.stderr}`);
    assert.doesNotMatch(r.stderr, /panicked|stack backtrace/, `iteration ${i}: ${r.stderr}`);
    outcomes[r.status === 0 ? 'ok' : 'err']++;
  }
  assert.ok(outcomes.err > 20, `only ${outcomes.err} corruptions were rejected: the test is not reaching the parser`);
});
