// bench/speculative.mjs (plain against prompt-lookup speculative decoding, through the SDK) end
// to end on the embedded default model: every prompt reports both rates, the draft counters,
// and the same greedy tokens both ways; --write-results adds then replaces its own section of a
// results file, leaving the other sections alone. No timed assertions.
//   node --test test/bench/speculative.test.mjs
// Needs the native addon and the SDK built (npm run build -w @x/phi2).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const script = path.join(root, 'bench/speculative.mjs');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'phi2-speculative-test-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function bench(args) {
  const r = spawnSync(process.execPath, [script, ...args], { encoding: 'utf8', cwd: tmp, timeout: 300_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('three prompts, plain and speculative, same tokens, counters, results section written and replaced', () => {
  const results = path.join(tmp, 'RESULTS.md');
  writeFileSync(results, '# results\n\n<!-- phi2-bench:other -->\nkeep me\n<!-- /phi2-bench:other -->\n');
  const args = ['--max-new-tokens', '12', '--runs', '1', '--threads', '2', '--json', '--write-results', results];
  const r = bench(args);
  assert.equal(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout);
  assert.equal(report.model.name, 'default-model');
  assert.deepEqual(report.prompts.map((p) => p.repeats), [true, true, false]);
  for (const p of report.prompts) {
    assert.equal(p.sameTokens, true, p.kind);
    assert.equal(p.generated, 12, 'end-of-text is banned: every run generates --max-new-tokens');
    assert.ok(p.plainTokensPerSecond > 0 && p.speculativeTokensPerSecond > 0, p.kind);
    assert.ok(Math.abs(p.speedup - p.speculativeTokensPerSecond / p.plainTokensPerSecond) < 1e-9);
    assert.ok(p.accepted <= p.drafted && p.drafted <= p.passes * 8, JSON.stringify(p));
    assert.ok(p.promptTokens > 10);
  }
  // The repeated code's draft (the prompt ends inside it) finds its n-gram at once, and the
  // model takes some of it: a verify pass that rejected everything would still give the same
  // tokens, so this is what tells that drafts are really used.
  assert.ok(report.prompts[0].passes > 0 && report.prompts[0].accepted > 0, JSON.stringify(report.prompts[0]));
  const once = readFileSync(results, 'utf8');
  assert.match(once, /keep me/);
  assert.match(once, /## Prompt-lookup speculative decoding: the embedded default model/);
  assert.match(once, /\| edit given code \|/);
  assert.equal(bench(args).code, 0);
  const twice = readFileSync(results, 'utf8');
  assert.equal(twice.split('<!-- phi2-bench:speculative default-model').length, 2, 'the section is replaced, not added again');
  assert.match(twice, /keep me/);
});

test('usage errors exit 2', () => {
  assert.equal(bench(['--runs', '0']).code, 2);
  assert.equal(bench(['--model', 'x.gguf', '--synthetic', 'q4_0']).code, 2);
  assert.equal(bench(['--max-draft', 'x']).code, 2);
  const bad = bench(['--synthetic', 'q9']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--synthetic must be one of f16, q8_0, q4_0, q4_k_m, got "q9"/);
});

test('a model that cannot be loaded exits 1 with the typed error, not a stack', () => {
  const r = bench(['--model', path.join(tmp, 'missing.gguf')]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^speculative: \w+ \(E_\w+\): .*missing\.gguf/);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
});
