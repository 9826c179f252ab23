// The addon's continuous-batching engine (NativeBatchEngine, bindings/node/src/batch.rs) directly:
// requests submitted together equal their session runs, events arrive in order and end once,
// the queue beyond maxSequences, cancel per request (running or queued), option errors thrown at
// submit, prompt errors as "error" events, dispose ending everything.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fixtures, PROMPT, root } from './helpers.mjs';

const require = createRequire(path.join(root, 'package.json'));
const { NativeModel, NativeBatchEngine } = require('@x/phi2-native');

const greedy = { maxNewTokens: 8, doSample: false, temperature: 1, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1,
  presencePenalty: 0, frequencyPenalty: 0, logitBiasIds: [], logitBiasValues: [], seed: 0, stopOnEos: false };
const model = path.join(fixtures, 'tiny-q8_0.gguf');

/** Submits and collects: { id, done: Promise<{ tokens, end, events }> }. */
function run(engine, tokens, opts, top = null) {
  const events = [];
  let settle;
  const done = new Promise((resolve) => (settle = resolve));
  const id = engine.submit(tokens, opts, top, (err, e) => {
    assert.equal(err, null);
    events.push(e);
    if (e.kind !== 'token') settle({ tokens: events.filter((x) => x.kind === 'token').map((x) => x.token), end: e, events });
  });
  return { id, done };
}

test('requests in one batch equal their session runs; log-probs per token; stats', async () => {
  const m = await NativeModel.load(model);
  const engine = NativeBatchEngine.create(m, { maxSequences: 2 });
  const reqs = [
    [PROMPT, greedy],
    [[1, 2, 3], { ...greedy, doSample: true, temperature: 0.9, topP: 0.95, seed: 4, maxNewTokens: 10 }],
    [[15496, 11], { ...greedy, maxNewTokens: 5 }],
    [[50256], { ...greedy, doSample: true, temperature: 1.2, seed: 9 }],
  ];
  // Four requests, two sequences at a time: two wait in the engine's queue.
  const runs = reqs.map(([t, o]) => run(engine, t, o, 2));
  const outs = await Promise.all(runs.map((r) => r.done));
  for (const [i, [t, o]] of reqs.entries()) {
    const alone = await m.createSession().generate(t, o, () => {});
    assert.deepEqual(outs[i].tokens, alone.tokens, `request ${i}`);
    assert.equal(outs[i].end.kind, 'done');
    assert.equal(outs[i].end.finishReason, 'length');
    assert.equal(outs[i].end.completionTokens, alone.tokens.length);
    assert.equal(outs[i].end.promptTokens, t.length);
    assert.equal(outs[i].events.filter((e) => e.kind !== 'token').length, 1, 'one end event, last');
    for (const e of outs[i].events.filter((x) => x.kind === 'token')) {
      assert.equal(e.topIds.length, 2);
      assert.ok(e.logprob <= 0 && e.topLogprobs[0] >= e.topLogprobs[1]);
    }
  }
  assert.equal(new Set(runs.map((r) => r.id)).size, 4, 'ids are distinct');
  const s = engine.stats();
  assert.equal(s.active, 0);
  assert.equal(s.queued, 0);
  assert.ok(s.steps > 0 && s.lastBatchSize >= 1 && s.lastBatchSize <= 2);
  engine.dispose();
  m.dispose();
});

test('cancel a running and a queued request; errors; dispose ends the rest', async () => {
  const m = await NativeModel.load(model);
  const engine = NativeBatchEngine.create(m, { maxSequences: 1 });
  const long = { ...greedy, maxNewTokens: 100 };
  const a = run(engine, [1], long);
  const b = run(engine, [2], long);
  engine.cancel(b.id); // still queued behind a
  const bOut = await b.done;
  assert.equal(bOut.end.finishReason, 'abort');
  assert.equal(bOut.tokens.length, 0);
  engine.cancel(a.id);
  const aOut = await a.done;
  assert.equal(aOut.end.finishReason, 'abort');
  assert.ok(aOut.tokens.length < 100);
  engine.cancel(12345); // unknown: no effect
  assert.throws(() => engine.submit([1], { ...greedy, topP: 3 }, null, () => {}), { code: 'E_INVALID_ARGUMENT', message: /top_p/ });
  assert.throws(() => engine.submit([1], { ...greedy, seed: -1 }, null, () => {}), { code: 'E_INVALID_ARGUMENT', message: /seed/ });
  const empty = await run(engine, [], greedy).done;
  assert.equal(empty.end.kind, 'error');
  assert.match(empty.end.error, /^E_INVALID_ARGUMENT: .*prompt/);
  const tooLong = await run(engine, new Array(200).fill(1), greedy).done;
  assert.match(tooLong.end.error, /^E_INVALID_ARGUMENT: .*context length/);
  const c = run(engine, [3], long);
  const d = run(engine, [4], long);
  engine.dispose();
  const [cOut, dOut] = await Promise.all([c.done, d.done]);
  // c was in the batch (it leaves with 'abort') or still on its way in (E_DISPOSED).
  assert.ok((cOut.end.kind === 'done' && cOut.end.finishReason === 'abort') || /^E_DISPOSED/.test(cOut.end.error ?? ''), JSON.stringify(cOut.end));
  assert.equal(dOut.end.kind, 'error');
  assert.match(dOut.end.error, /^E_DISPOSED/);
  m.dispose();
});
