// The wasm32 (+SIMD128, single-threaded) build of the engine, loaded in Node from
// bindings/wasm/pkg (scripts/build-wasm.sh), against the native engine's `generate` example:
// same greedy (and seeded sampled) tokens and log-probs, models loaded from bytes.
//   scripts/setup-wasm.sh && scripts/build-wasm.sh && node --test test/wasm/*.test.mjs
//
// The engine pins candle's x86 kernels to its AVX2 level (crates/phi2/src/model.rs,
// pin_cpu_kernels): on AVX-512 VNNI CPUs candle 0.11 would otherwise send Q8_0 matmuls through
// repacked kernels that round activations differently (|Δ| ~0.2 on these fixtures, and other
// tokens), so native and wasm would disagree for reasons that are candle's, not ours.
//
// Log-probs: the same bits as the native engine for every quantized and 16-bit fixture. Every
// matrix of these models runs on the engine's own kernels in both builds (Q4_0, Q8_0, Q4_K, Q5_K,
// Q6_K, F16 and BF16 on crates/phi2/src/kernels: the SIMD128 kernels in wasm, the x86 ones natively, each equal to
// the scalar twin bit for bit, see the parity test below and crates/phi2/tests/kernels.rs), and
// what lies outside them is defined without the platform libm (crates/phi2/src/detmath.rs:
// rotary tables and log-softmax; before it, the two builds were up to 3.8e-6 apart, from libm's
// sinf / cosf / expf / logf). F32 weights run on candle's f32 product, whose sums follow each
// ISA's kernel: 1e-4 for those (measured 7.6e-6 on tiny-f32).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { fixtures, generate, generateBin, maxAbsDiff, readRows, root, scratch, TOKENIZER_SIZE, VOCAB } from '../engine/helpers.mjs';
import { ATTENTION_CASES, runParity } from './parity-cases.mjs';

const pkg = path.join(root, 'bindings/wasm/pkg');
const wasmFile = path.join(pkg, 'phi2_wasm_bg.wasm');
for (const [f, how] of [[wasmFile, 'scripts/build-wasm.sh'], [generateBin, 'cargo build --release -p phi2 --examples']]) {
  if (!existsSync(f)) throw new Error(`${f} is missing: run ${how}`);
}
const wasm = await import(path.join(pkg, 'phi2_wasm.js'));
const exports = wasm.initSync({ module: readFileSync(wasmFile) });
const { WasmModel, WasmModelLoader, WasmCancelToken } = wasm;

const PROMPT = [464, 2068, 7586];
const MAX_NEW = 8;
/** Allowed max |Δ log-prob| against the native engine: none, but for f32 weights (see above). */
const tolerance = (dtype) => (dtype === 'f32' ? 1e-4 : 0);
const FIXTURES = ['tiny-q8_0.gguf', 'tiny-q4_0.gguf', 'kq-q4_K.gguf', 'tiny-f32.gguf', 'odd-q8_0.gguf', 'kq-q6_K.gguf', 'odd-q4_0.gguf', 'kq-q4_0.gguf', 'kq-q8_0.gguf', 'kq-q5_K.gguf', 'kq-mix.gguf', 'kq-f16.gguf', 'kq-bf16.gguf', 'odd-f16.gguf'];

function fixture(name) {
  const f = path.join(fixtures, name);
  if (!existsSync(f)) throw new Error(`${f} is missing: run target/release/phi2-fixtures --out ${fixtures}`);
  return f;
}

function load(name) {
  return WasmModel.load(readFileSync(fixture(name)), name);
}

/** Calls `fn`, expecting a JS Error whose `code` is `code`. */
function throwsCode(fn, code) {
  assert.throws(fn, (e) => {
    assert.ok(e instanceof Error, `not an Error: ${e}`);
    assert.equal(e.code, code, `${e.code}: ${e.message}`);
    return true;
  });
}

for (const name of FIXTURES) {
  test(`${name}: wasm greedy tokens and log-probs equal the native engine`, () => {
    const lpFile = path.join(scratch, `${name}.lp`);
    const expected = generate(fixture(name), PROMPT, MAX_NEW, [], lpFile);
    const nativeRows = readRows(lpFile);

    const model = load(name);
    const info = model.info;
    assert.equal(info.format, 'gguf');
    assert.equal(info.vocabSize, VOCAB);
    const session = model.createSession();
    const streamed = [];
    const t0 = performance.now();
    const r = session.generate(PROMPT, { maxNewTokens: MAX_NEW, doSample: false, stopOnEos: true }, (err, id) => {
      assert.equal(err, null);
      streamed.push(id);
    });
    const genMs = performance.now() - t0;
    assert.deepEqual(r.tokens, expected, 'greedy tokens');
    assert.deepEqual(streamed, expected, 'streamed tokens');
    assert.equal(r.finishReason, expected.length === MAX_NEW ? 'length' : 'eos');
    assert.equal(r.promptTokens, PROMPT.length);
    assert.equal(r.promptTokensEvaluated, PROMPT.length);

    const rows = model.logprobs([...PROMPT, ...expected]);
    assert.ok(rows instanceof Float32Array);
    const d = maxAbsDiff(rows, nativeRows);
    const perRow = [];
    for (let i = 0; i < rows.length / VOCAB; i++) {
      perRow.push(maxAbsDiff(rows.subarray(i * VOCAB, (i + 1) * VOCAB), nativeRows.subarray(i * VOCAB, (i + 1) * VOCAB)));
    }
    const tol = tolerance(info.dtype);
    const within = perRow.filter((x) => x <= tol).length;
    console.log(`# ${name} (${info.dtype}): tokens [${r.tokens}] equal; max |Δ logprob| = ${d.toExponential(2)}; ` +
      `rows within ${tol}: ${within}/${perRow.length}; generate ${genMs.toFixed(1)} ms`);
    assert.ok(d <= tol, `max |Δ logprob| ${d} > ${tol}: rows [${perRow.map((x) => x.toExponential(1))}]`);
    session.free();
    model.free();
  });
}

// The fixture tests above compare the wasm build with the native engine within a tolerance. This
// one proves the SIMD128 kernels (crates/phi2/src/kernels/wasm.rs) equal the scalar twin bit for
// bit inside the wasm build itself: `phi2_simd128_parity`, a plain export of the module (no
// wasm-bindgen glue), runs random weights of the type (every quant value and 6/8-bit scale, sane
// f16 scales) and random activations through both kernel sets and returns how many output
// elements differ in their bits (-1 when SIMD128 does not take the type);
// `phi2_simd128_attention_parity` does the same for attention's row. The cases (parity-cases.mjs)
// are the ones test/browser/kernels.test.mjs runs on the relaxed-SIMD build in Chromium.
test('SIMD128 kernels and attention give the scalar twin\'s bits', () => {
  const { failures, outputs } = runParity(exports);
  assert.deepEqual(failures, [], 'cases whose outputs differ from the scalar twin');
  // A type without a kernel of ours (candle runs it): refused, not compared against itself.
  assert.equal(exports.phi2_simd128_parity(3, 4, 256, 1, 1), -1); // Q4_1
  assert.equal(exports.phi2_simd128_attention_parity(0, 4, 1), -1);
  console.log(`# SIMD128 = scalar twin on ${outputs} outputs and ${ATTENTION_CASES.length} attention shapes`);
});

// bench/wasm-kernels.mjs times products through `phi2_simd128_bench` (same random cases): it
// must run every type SIMD128 takes (a finite sum of outputs, equal for equal work) and refuse
// the rest with NaN.
test('phi2_simd128_bench runs the SIMD128 products it is asked for', () => {
  for (const id of [2, 8, 12, 13, 14, 1, 30]) {
    const once = exports.phi2_simd128_bench(id, 9, 512, 3, 1);
    assert.ok(Number.isFinite(once) && once !== 0, `type ${id}: ${once}`);
    assert.equal(exports.phi2_simd128_bench(id, 9, 512, 3, 4), once, `type ${id}: repeated products differ`);
  }
  assert.ok(Number.isNaN(exports.phi2_simd128_bench(3, 4, 256, 1, 1)), 'Q4_1 has no SIMD128 kernel');
  assert.ok(Number.isNaN(exports.phi2_simd128_bench(2, 4, 100, 1, 1)), 'not whole blocks');
});

// Two settings of the wasm kernels depend on the CPU under the JS engine, so a model's load times
// both values of each on its own weights and keeps the faster (crates/phi2/src/kernels/mod.rs,
// Knob): the one-token kernels' touches of the weights ahead (knob 0, default on) and the
// relaxed-SIMD build's i16 dots (knob 1, default off). `phi2_calibration_check(knob, msOn, msOff)`
// runs a calibration with a clock that moves msOn per pass with the knob on and msOff with it
// off, and returns what it kept (1 on, 0 off; -2 when the setting in force or the times disagree,
// -1 when it did not calibrate). The other value only when clearly faster (fastest pass ≤ 90%).
test('the load-time timing of the kernel settings keeps the faster', () => {
  assert.equal(exports.phi2_calibration_check(0, 10, 5), 0, 'touches twice as slow: off');
  assert.equal(exports.phi2_calibration_check(0, 5, 10), 1, 'touches twice as fast: on');
  assert.equal(exports.phi2_calibration_check(0, 10, 9.5), 1, 'within 10%: the default (on) stays');
  assert.equal(exports.phi2_calibration_check(0, 10, 9), 0);
  assert.equal(exports.phi2_calibration_check(1, 5, 10), -1, 'SIMD128 builds have no i16 dots to choose');
  assert.equal(exports.phi2_calibration_check(2, 5, 10), -1, 'no such knob');
  // The settings themselves: each call says what it replaced.
  assert.equal(exports.phi2_set_knob(0, 0), 1, 'touches on by default');
  assert.equal(exports.phi2_set_knob(0, 1), 0);
  assert.equal(exports.phi2_set_knob(0, 1), 1);
  assert.equal(exports.phi2_set_knob(1, 0), 0, 'i16 dots off by default');
  assert.equal(exports.phi2_set_knob(7, 1), -1);
});

test('seeded sampling gives the native tokens', () => {
  const name = 'tiny-q8_0.gguf';
  const extra = ['--temperature', '0.9', '--top-k', '40', '--top-p', '0.95', '--seed', '1234'];
  const expected = generate(fixture(name), PROMPT, 12, extra);
  const model = load(name);
  const r = model.createSession().generate(
    PROMPT,
    { maxNewTokens: 12, doSample: true, temperature: 0.9, topK: 40, topP: 0.95, seed: 1234 },
    null,
  );
  assert.deepEqual(r.tokens, expected);
});

test('the session keeps its KV cache across turns; reset forgets it', () => {
  const model = load('tiny-q8_0.gguf');
  const s = model.createSession();
  const first = s.generate(PROMPT, { maxNewTokens: 4 });
  const next = [...PROMPT, ...first.tokens, 198];
  const second = s.generate(next, { maxNewTokens: 4 });
  assert.ok(second.promptTokensEvaluated <= 2, `re-evaluated ${second.promptTokensEvaluated}`);
  // Same tokens as a fresh session on the whole conversation.
  const fresh = model.createSession().generate(next, { maxNewTokens: 4 });
  assert.deepEqual(second.tokens, fresh.tokens);
  s.reset();
  assert.equal(s.generate(next, { maxNewTokens: 1 }).promptTokensEvaluated, next.length);
});

test('cancel from onToken, and onToken returning false, stop with finishReason abort', () => {
  const model = load('tiny-q8_0.gguf');
  const cancel = new WasmCancelToken();
  const seen = [];
  const r = model.createSession().generate(PROMPT, { maxNewTokens: 8, stopOnEos: false }, (_, id) => {
    seen.push(id);
    if (seen.length === 2) cancel.cancel();
  }, cancel);
  assert.equal(r.finishReason, 'abort');
  assert.equal(r.tokens.length, 2);
  assert.ok(cancel.cancelled);

  const r2 = model.createSession().generate(PROMPT, { maxNewTokens: 8, stopOnEos: false }, () => false);
  assert.equal(r2.finishReason, 'abort');
  assert.equal(r2.tokens.length, 1);

  const pre = new WasmCancelToken();
  pre.cancel();
  const r3 = model.createSession().generate(PROMPT, { maxNewTokens: 8 }, null, pre);
  assert.deepEqual([r3.tokens.length, r3.finishReason], [0, 'abort']);
  throwsCode(() => model.logprobs(PROMPT, pre), 'E_ABORTED');
});

test('an exception thrown by onToken stops generation and is rethrown; the session stays usable', () => {
  const model = load('tiny-q8_0.gguf');
  const s = model.createSession();
  assert.throws(() => s.generate(PROMPT, { maxNewTokens: 8 }, () => { throw new Error('boom'); }), /boom/);
  // Re-entrant generate from onToken is refused, not a trap.
  let inner;
  s.generate(PROMPT, { maxNewTokens: 1 }, () => {
    try { s.generate(PROMPT, { maxNewTokens: 1 }); } catch (e) { inner = e; }
  });
  assert.equal(inner?.code, 'E_BUSY');
  assert.equal(s.generate(PROMPT, { maxNewTokens: 2 }).tokens.length, 2);
});

test('ggufVocab returns the tokenizer stored in the GGUF metadata', () => {
  const model = load('tiny-q4_0.gguf');
  const v = model.ggufVocab();
  assert.equal(v.model, 'gpt2');
  assert.ok(v.tokens.length >= TOKENIZER_SIZE && v.tokens.length <= VOCAB, `${v.tokens.length} tokens`);
  assert.equal(v.tokenTypes.length, v.tokens.length);
  assert.ok(v.merges.length > 40000);
  assert.equal(v.tokens[464], 'The');
  assert.equal(v.eosTokenId, 50256);
});

test('errors are JS Errors with the engine code; nothing traps', () => {
  throwsCode(() => WasmModel.load(new Uint8Array([1, 2, 3, 4]), 'junk.gguf'), 'E_MALFORMED_FILE');
  throwsCode(() => WasmModel.load('not bytes'), 'E_INVALID_ARGUMENT');
  const bytes = readFileSync(fixture('tiny-q8_0.gguf'));
  throwsCode(() => WasmModel.load(bytes.subarray(0, bytes.length - 100), 'cut.gguf'), 'E_MALFORMED_FILE');
  // An ArrayBuffer works too.
  const ab = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const model = WasmModel.load(ab, 'ab.gguf');
  throwsCode(() => model.logprobs([VOCAB + 5]), 'E_INVALID_ARGUMENT');
  throwsCode(() => model.logprobs([]), 'E_INVALID_ARGUMENT');
  const s = model.createSession();
  throwsCode(() => s.generate([], { maxNewTokens: 2 }), 'E_INVALID_ARGUMENT');
  throwsCode(() => s.generate(PROMPT, { maxNewTokens: -1 }), 'E_INVALID_ARGUMENT');
  throwsCode(() => s.generate(PROMPT, { temperature: 'hot' }), 'E_INVALID_ARGUMENT');
  throwsCode(() => s.generate(PROMPT, { doSample: true, temperature: -1 }), 'E_INVALID_ARGUMENT');
  throwsCode(() => s.generate(PROMPT, { seed: 1.5 }), 'E_INVALID_ARGUMENT');
  throwsCode(() => s.generate(PROMPT, { logitBiasIds: [1], logitBiasValues: [] }), 'E_INVALID_ARGUMENT');
  throwsCode(() => s.generate(PROMPT, {}, null, 42), 'E_INVALID_ARGUMENT');
  assert.equal(s.generate(PROMPT, { maxNewTokens: 1 }).tokens.length, 1);
  model.dispose();
  assert.ok(model.disposed);
  throwsCode(() => model.info, 'E_DISPOSED');
  throwsCode(() => model.createSession(), 'E_DISPOSED');
  throwsCode(() => s.generate(PROMPT, { maxNewTokens: 1 }), 'E_DISPOSED');
});

// ---- streamed loading (WasmModelLoader) and step-wise generation (begin / step / end) ----

/** mulberry32: seeded chunk sizes. */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Pushes `bytes` in seeded random chunks, 1 byte up to the whole file (log-uniform sizes). */
function pushRandom(loader, bytes, seed) {
  const r = rng(seed);
  let at = 0;
  let headerAt = null;
  while (at < bytes.length) {
    const left = bytes.length - at;
    const n = Math.min(left, 1 + Math.floor(Math.exp(r() * Math.log(left))));
    loader.push(bytes.subarray(at, at + n));
    at += n;
    assert.equal(loader.received, at);
    if (headerAt === null && loader.headerParsed) headerAt = at;
  }
  return headerAt;
}

for (const [i, name] of ['tiny-f32.gguf', 'tiny-q8_0.gguf', 'kq-q4_K.gguf'].entries()) {
  test(`${name}: WasmModelLoader with random chunks equals WasmModel.load and the native engine`, () => {
    const bytes = readFileSync(fixture(name));
    const lpFile = path.join(scratch, `${name}.stream.lp`);
    const expected = generate(fixture(name), PROMPT, MAX_NEW, [], lpFile);
    const nativeRows = readRows(lpFile);

    const loader = new WasmModelLoader(name, bytes.length, true);
    assert.equal(loader.headerParsed, false);
    assert.equal(loader.sha256(), null);
    const headerAt = pushRandom(loader, bytes, 17 + i);
    assert.ok(headerAt !== null && headerAt < bytes.length, `header parsed at ${headerAt} of ${bytes.length}`);
    assert.equal(loader.sha256(), createHash('sha256').update(bytes).digest('hex'));
    const streamed = loader.finish();
    const oneShot = load(name);

    const tokens = [...PROMPT, ...expected];
    const a = streamed.logprobs(tokens);
    const b = oneShot.logprobs(tokens);
    assert.equal(maxAbsDiff(a, b), 0, 'streamed and one-shot loads give the same log-probs');
    const d = maxAbsDiff(a, nativeRows);
    const tol = tolerance(oneShot.info.dtype);
    assert.ok(d <= tol, `max |Δ logprob| vs native ${d} > ${tol}`);
    assert.deepEqual(streamed.info, oneShot.info);
    assert.deepEqual(streamed.ggufVocab(), oneShot.ggufVocab());
    const r = streamed.createSession().generate(PROMPT, { maxNewTokens: MAX_NEW });
    assert.deepEqual(r.tokens, expected);
    console.log(`# ${name}: streamed header parsed after ${headerAt} of ${bytes.length} bytes; max |Δ| vs native ${d.toExponential(2)}`);
    streamed.free();
    oneShot.free();
  });
}

/** begin, step until undefined, end. */
function stepped(session, prompt, opts) {
  session.begin(prompt, opts);
  const seen = [];
  for (let t = session.step(); t !== undefined; t = session.step()) seen.push(t);
  assert.equal(session.step(), undefined, 'stays done');
  const r = session.end();
  assert.deepEqual(r.tokens, seen);
  return r;
}

test('begin/step/end gives the same tokens as generate (greedy and seeded sampling)', () => {
  const model = load('tiny-q8_0.gguf');
  const greedy = { maxNewTokens: 9, stopOnEos: false };
  const sampled = { maxNewTokens: 12, doSample: true, temperature: 0.9, topK: 40, topP: 0.95, seed: 1234 };
  for (const opts of [greedy, sampled]) {
    const whole = model.createSession().generate(PROMPT, opts);
    const steps = stepped(model.createSession(), PROMPT, opts);
    assert.deepEqual(steps.tokens, whole.tokens);
    assert.equal(steps.finishReason, whole.finishReason);
    assert.equal(steps.promptTokens, PROMPT.length);
    assert.equal(steps.promptTokensEvaluated, PROMPT.length);
    for (const k of ['promptMs', 'generateMs']) assert.ok(typeof steps[k] === 'number' && steps[k] >= 0, k);
  }
  // Against the native engine's seeded sampling too.
  const extra = ['--temperature', '0.9', '--top-k', '40', '--top-p', '0.95', '--seed', '1234'];
  assert.deepEqual(stepped(model.createSession(), PROMPT, sampled).tokens, generate(fixture('tiny-q8_0.gguf'), PROMPT, 12, extra));
});

test('ending mid-way gives finishReason abort; the next turn reuses the cache', () => {
  const model = load('tiny-q8_0.gguf');
  const opts = { maxNewTokens: 8, stopOnEos: false };
  const full = model.createSession().generate(PROMPT, opts);
  const s = model.createSession();
  s.begin(PROMPT, opts);
  const got = [s.step(), s.step()];
  const r = s.end();
  assert.deepEqual(r.tokens, got);
  assert.deepEqual(got, full.tokens.slice(0, 2));
  assert.equal(r.finishReason, 'abort');
  // Ended before any step.
  const s2 = model.createSession();
  s2.begin(PROMPT, opts);
  assert.deepEqual([s2.end().tokens.length, 'abort'], [0, 'abort']);
  // Continued conversation: only the new tokens are evaluated.
  const next = [...PROMPT, ...got, 198];
  const r2 = stepped(s, next, { maxNewTokens: 3 });
  assert.ok(r2.promptTokensEvaluated <= 2, `re-evaluated ${r2.promptTokensEvaluated}`);
  assert.deepEqual(r2.tokens, model.createSession().generate(next, { maxNewTokens: 3 }).tokens);
});

test('step-wise misuse is a coded error, not a trap', () => {
  const model = load('tiny-q8_0.gguf');
  const s = model.createSession();
  throwsCode(() => s.step(), 'E_INVALID_ARGUMENT');
  throwsCode(() => s.end(), 'E_INVALID_ARGUMENT');
  throwsCode(() => s.begin([], {}), 'E_INVALID_ARGUMENT');
  throwsCode(() => s.begin(PROMPT, { temperature: 'hot' }), 'E_INVALID_ARGUMENT');
  s.begin(PROMPT, { maxNewTokens: 2 });
  throwsCode(() => s.begin(PROMPT, {}), 'E_BUSY');
  throwsCode(() => s.generate(PROMPT, { maxNewTokens: 1 }), 'E_BUSY');
  assert.equal(typeof s.step(), 'number');
  s.end();
  s.reset();
  s.begin(PROMPT, { maxNewTokens: 1 });
  model.dispose();
  throwsCode(() => s.step(), 'E_DISPOSED');
});

test('WasmModelLoader errors carry their codes', () => {
  const bytes = readFileSync(fixture('tiny-q8_0.gguf'));
  // Truncated: finish() says how many bytes arrived.
  const cut = new WasmModelLoader('cut.gguf', bytes.length, false);
  cut.push(bytes.subarray(0, bytes.length - 100));
  assert.ok(cut.headerParsed);
  assert.throws(() => cut.finish(), (e) => e.code === 'E_MALFORMED_FILE' && e.message.includes(`${bytes.length - 100} of the declared ${bytes.length}`));
  // Extra bytes: refused, nothing taken; the stream stays usable.
  const extra = new WasmModelLoader('extra.gguf', bytes.length, false);
  extra.push(bytes);
  throwsCode(() => extra.push(new Uint8Array(1)), 'E_INVALID_ARGUMENT');
  assert.equal(extra.received, bytes.length);
  extra.finish().free();
  throwsCode(() => new WasmModelLoader('kv.gguf', bytes.length, false, undefined, 'f8'), 'E_INVALID_ARGUMENT');
  throwsCode(() => WasmModel.load(bytes, 'kv.gguf', 'bf16'), 'E_INVALID_ARGUMENT');
  const over = new WasmModelLoader('over.gguf', 10, false);
  throwsCode(() => over.push(bytes.subarray(0, 11)), 'E_INVALID_ARGUMENT');
  assert.equal(over.received, 0);
  // A corrupt header fails at the first push, long before the rest.
  const bad = Buffer.from(bytes.subarray(0, 64));
  bad.write('GGXF', 0, 'latin1');
  const early = new WasmModelLoader('bad.gguf', bytes.length, false);
  throwsCode(() => early.push(bad), 'E_MALFORMED_FILE');
  throwsCode(() => early.push(bytes.subarray(64, 128)), 'E_INVALID_ARGUMENT'); // it already failed
  const absurd = Buffer.from(bytes.subarray(0, 24));
  absurd.writeBigUInt64LE(1n << 60n, 16); // kv_count
  throwsCode(() => new WasmModelLoader('absurd.gguf', bytes.length, false).push(absurd), 'E_MALFORMED_FILE');
  // Too large for wasm32 memory (phi-2 F16 is 5.6 GB): refused before any byte, with advice.
  assert.throws(() => new WasmModelLoader('phi-2.F16.gguf', 5.6e9, false), (e) => {
    assert.equal(e.code, 'E_MODEL_TOO_LARGE', e.message);
    for (const s of ['4 GiB', 'Q4_0', 'Q4_K']) assert.ok(e.message.includes(s), `${s} in ${e.message}`);
    return true;
  });
  throwsCode(() => new WasmModelLoader('x.gguf', -1, false), 'E_INVALID_ARGUMENT');
  throwsCode(() => new WasmModelLoader('x.gguf', 1.5, false), 'E_INVALID_ARGUMENT');
  throwsCode(() => new WasmModelLoader('x.gguf', 10, false).push('text'), 'E_INVALID_ARGUMENT');
});
