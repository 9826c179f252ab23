// The Node-API addon (@x/phi2-native) directly: same tokens and log-probs as the engine's CLI,
// streaming order, cancellation, concurrency, dispose, and coded errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';
import { stat } from 'node:fs/promises';
import { fixtures, generate, readRows, maxAbsDiff, PROMPT, root, scratch } from './helpers.mjs';

const require = createRequire(path.join(root, 'package.json'));
const { NativeModel, NativeCancelToken } = require('@x/phi2-native');

const greedy = { maxNewTokens: 8, doSample: false, temperature: 1, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1,
  presencePenalty: 0, frequencyPenalty: 0, logitBiasIds: [], logitBiasValues: [], seed: 0, stopOnEos: true };
const model = path.join(fixtures, 'kq-q4_K.gguf');

test('tokens and log-probs equal the engine CLI on the same file', async () => {
  const m = await NativeModel.load(model);
  const streamed = [];
  const r = await m.createSession().generate(PROMPT, greedy, (err, t) => { assert.equal(err, null); streamed.push(t); });
  const lpFile = path.join(scratch, 'native-cli.f32');
  const cli = generate(model, PROMPT, 8, [], lpFile);
  assert.deepEqual(r.tokens, cli);
  assert.deepEqual(streamed, r.tokens, 'every token streamed, in order, before the promise settled');
  const lp = await m.logprobs([...PROMPT, ...r.tokens]);
  assert.equal(maxAbsDiff(lp, readRows(lpFile)), 0);
  m.dispose();
});

test('concurrent sessions on one model equal their sequential results', async () => {
  const m = await NativeModel.load(model);
  const opts = (seed) => ({ ...greedy, doSample: true, temperature: 0.9, topP: 0.95, seed, maxNewTokens: 12 });
  const seq = [];
  for (const seed of [1, 2, 3]) seq.push((await m.createSession().generate(PROMPT, opts(seed), () => {})).tokens);
  const par = await Promise.all([1, 2, 3].map((seed) => m.createSession().generate(PROMPT, opts(seed), () => {})));
  assert.deepEqual(par.map((r) => r.tokens), seq);
  // Two calls on one session are queued, never interleaved.
  const s = m.createSession();
  const [a, b] = await Promise.all([s.generate(PROMPT, opts(1), () => {}), s.generate([1, 2, 3], opts(2), () => {})]);
  assert.deepEqual(a.tokens, seq[0]);
  assert.deepEqual(b.tokens, (await m.createSession().generate([1, 2, 3], opts(2), () => {})).tokens);
  m.dispose();
});

test('a cancel token stops generation within one token of cancel()', async () => {
  const m = await NativeModel.load(model);
  const c = new NativeCancelToken();
  let seen = 0;
  let atCancel = -1;
  const r = await m.createSession().generate(PROMPT, { ...greedy, maxNewTokens: 500, stopOnEos: false }, () => {
    seen++;
    if (seen === 3) { c.cancel(); atCancel = seen; }
  }, c);
  assert.equal(r.finishReason, 'abort');
  assert.ok(r.tokens.length < 500);
  assert.equal(seen, r.tokens.length);
  assert.ok(c.cancelled && atCancel === 3);
  const pre = new NativeCancelToken();
  pre.cancel();
  const r2 = await m.createSession().generate(PROMPT, greedy, () => assert.fail('no token expected'), pre);
  assert.deepEqual([r2.finishReason, r2.tokens.length], ['abort', 0]);
  await assert.rejects(m.logprobs(PROMPT, pre), { code: 'E_ABORTED' });
  m.dispose();
});

test('dispose: in-flight work finishes, later calls fail with E_DISPOSED', async () => {
  const m = await NativeModel.load(model);
  const s = m.createSession();
  const running = s.generate(PROMPT, { ...greedy, maxNewTokens: 30, stopOnEos: false }, () => {});
  m.dispose();
  assert.equal(m.disposed, true);
  m.dispose(); // idempotent
  const r = await running.catch((e) => e);
  assert.ok(Array.isArray(r.tokens) || r.code === 'E_DISPOSED', String(r));
  assert.throws(() => m.info, { code: 'E_DISPOSED' });
  assert.throws(() => m.createSession(), { code: 'E_DISPOSED' });
  await assert.rejects(async () => m.logprobs(PROMPT), { code: 'E_DISPOSED' });
  await assert.rejects(async () => s.generate(PROMPT, greedy, () => {}), { code: 'E_DISPOSED' });
});

test('bad input is a coded error, never a crash', async () => {
  await assert.rejects(NativeModel.load('/nonexistent/model.gguf'), { code: 'E_IO', message: /nonexistent/ });
  await assert.rejects(NativeModel.load(path.join(root, 'package.json')), (e) => /^E_/.test(e.code));
  await assert.rejects(NativeModel.load(model, null, 'cpu', 'f8'), { code: 'E_INVALID_ARGUMENT', message: /kvCache.*f8/ });
  const m = await NativeModel.load(model);
  const s = m.createSession();
  await assert.rejects(s.generate([1, 51200], greedy, () => {}), { code: 'E_INVALID_ARGUMENT', message: /51200/ });
  await assert.rejects(s.generate([], greedy, () => {}), { code: 'E_INVALID_ARGUMENT', message: /prompt/ });
  await assert.rejects(s.generate(PROMPT, { ...greedy, doSample: true, topP: 2 }, () => {}), { code: 'E_INVALID_ARGUMENT', message: /top_p/ });
  assert.throws(() => s.generate(PROMPT, { ...greedy, seed: -1 }, () => {}), { code: 'E_INVALID_ARGUMENT', message: /seed/ });
  assert.throws(() => s.generate(PROMPT, { ...greedy, logitBiasIds: [1] }, () => {}), { code: 'E_INVALID_ARGUMENT' });
  assert.equal(m.ggufVocab().tokens.length, 51200);
  const st = await NativeModel.load(path.join(fixtures, 'tiny'));
  assert.equal(st.ggufVocab(), null);
  assert.equal(st.info.format, 'safetensors');
  m.dispose();
  st.dispose();
});

test("generations run on their own threads: libuv's pool stays free for file system work", async () => {
  const m = await NativeModel.load(model);
  const long = { ...greedy, maxNewTokens: 200, stopOnEos: false };
  let firstDone = Infinity;
  // More generations than libuv has pool threads (4 by default).
  const gens = Array.from({ length: 6 }, () =>
    m.createSession().generate(PROMPT, long, () => {}).then(() => { firstDone = Math.min(firstDone, performance.now()); }));
  await new Promise((r) => setTimeout(r, 20));
  await stat(root);
  const statDone = performance.now();
  await Promise.all(gens);
  assert.ok(statDone < firstDone, 'a file system call waited for a generation to finish');
  m.dispose();
});

test('the profile times each phase of every pass while on, and records nothing while off', async () => {
  const { profileEnable, profileReset, profileSnapshot } = require('@x/phi2-native');
  const m = await NativeModel.load(model);
  const layers = m.info.numLayers;
  const run = async () => (await m.createSession().generate(PROMPT, { ...greedy, stopOnEos: false }, () => {})).tokens;
  try {
    assert.equal(profileEnable(true), true);
    profileReset();
    const tokens = await run();
    const rows = profileSnapshot();
    const of = (pass) => Object.fromEntries(rows.filter((x) => x.pass === pass).map((x) => [x.phase, x]));
    const phases = ['attend', 'dense', 'embed', 'fc2', 'head', 'project', 'residual'];
    // The prompt (several tokens) in one pass, then a one-token pass per token after the first
    // (no speculative decoding unless asked for: it would verify drafts in passes of several).
    for (const [pass, passes, tokensIn] of [['batch', 1, PROMPT.length], ['decode', tokens.length - 1, tokens.length - 1]]) {
      const p = of(pass);
      assert.deepEqual(Object.keys(p).sort(), phases, `${pass}: every phase`);
      for (const phase of phases) {
        const perPass = ['embed', 'head'].includes(phase) ? 1 : layers;
        assert.equal(p[phase].calls, perPass * passes, `${pass} ${phase}: calls`);
        assert.equal(p[phase].passes, passes);
        assert.equal(p[phase].tokens, tokensIn);
        assert.ok(Number.isFinite(p[phase].ms) && p[phase].ms >= 0, `${pass} ${phase}: ms`);
      }
      assert.ok(phases.reduce((s, x) => s + p[x].ms, 0) > 0, `${pass}: some time`);
    }
    assert.equal(profileEnable(false), false);
    profileReset();
    assert.deepEqual(await run(), tokens, 'the same tokens, profiled or not');
    assert.deepEqual(profileSnapshot(), []);
  } finally {
    profileEnable(false);
    m.dispose();
  }
});
