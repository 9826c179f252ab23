// The trained default model (scripts/train) against PyTorch: the engine's log-probs on held-out
// text (test/golden/default-model/heldout.txt, windows of 256 tokens from an empty context) equal
// HF transformers' (scripts/train/golden.py, float32) within 1e-4 for the F32 files (HF
// safetensors directory and GGUF) and within the engine's F16 tolerance (2e-2, as
// crates/phi2/tests/convert.rs) for F16: at every position, the next token's log-prob and the
// log-probs of PyTorch's top-5 ids; greedy top-1 equal wherever PyTorch's top-1/top-2 margin
// exceeds twice the tolerance. Also: the F32 files regenerated from the committed F16 file are
// the model the goldens were made from, and their Q8_0 conversion is, byte for byte, the
// embedded default model packages/phi2/models/default.gguf.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fixtures, root, VOCAB } from './helpers.mjs';
import { defaultModel, f16Source, sha256, trainedFixtures, trainedGolden } from '../trained/fixtures.mjs';

const require = createRequire(path.join(root, 'package.json'));
const { NativeModel } = require('@x/phi2-native');
const fx = trainedFixtures(fixtures);
const golden = trainedGolden();

test('the F16 source is the goldens\' model; its Q8_0 conversion is the embedded default.gguf', () => {
  assert.equal(sha256(f16Source()), golden.modelSha256);
  assert.equal(sha256(readFileSync(fx.gguf.Q8_0)), sha256(readFileSync(defaultModel)),
    'packages/phi2/models/default.gguf is not the Q8_0 conversion of test/golden/default-model (run scripts/train/export.py --install)');
});

const cases = [
  ['F32 HF safetensors', fx.hf, 1e-4],
  ['F32 GGUF', fx.gguf.F32, 1e-4],
  ['F16 GGUF', fx.gguf.F16, 2e-2],
];

for (const [name, model, tol] of cases) {
  test(`${name}: held-out log-probs equal PyTorch's within ${tol}`, async () => {
    const N = golden.contextLength;
    let worst = 0;
    let greedyChecked = 0;
    // The addon's prompt log-probs (a window fills the model's whole context of 256).
    const m = await NativeModel.load(model);
    for (const w of golden.windows) {
      const ids = golden.ids.slice(w.start, w.start + N);
      assert.equal(ids.length, N);
      const rows = await m.logprobs(ids);
      assert.equal(rows.length, N * VOCAB);
      for (let k = 0; k < N - 1; k++) {
        const row = rows.subarray(k * VOCAB, (k + 1) * VOCAB);
        const d = Math.abs(row[ids[k + 1]] - w.next[k]);
        assert.ok(d <= tol, `${name}: window at ${w.start}, position ${k}: next-token log-prob ${row[ids[k + 1]]} vs PyTorch ${w.next[k]} (|Δ| ${d})`);
        worst = Math.max(worst, d);
        for (let j = 0; j < w.topIds[k].length; j++) {
          const dj = Math.abs(row[w.topIds[k][j]] - w.topLogprobs[k][j]);
          assert.ok(dj <= tol, `${name}: window at ${w.start}, position ${k}: id ${w.topIds[k][j]} log-prob |Δ| ${dj}`);
          worst = Math.max(worst, dj);
        }
        if (w.topLogprobs[k][0] - w.topLogprobs[k][1] > 2 * tol) {
          let arg = 0;
          for (let i = 1; i < VOCAB; i++) if (row[i] > row[arg]) arg = i;
          assert.equal(arg, w.topIds[k][0], `${name}: window at ${w.start}, position ${k}: greedy token`);
          greedyChecked++;
        }
      }
    }
    m.dispose();
    assert.ok(greedyChecked > golden.windows.length * 100, `only ${greedyChecked} positions had a clear top-1`);
    console.log(`# ${name}: max |Δ log-prob| vs PyTorch ${worst.toExponential(2)} over ${golden.windows.length} windows of ${N}`);
  });
}
