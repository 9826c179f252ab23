// bench/serve-load.mjs (the `phi2 serve` load test) end to end on a tiny fixture: every level is
// measured with 0 errors, RSS is read, and --write-results adds then replaces its own section of a
// results file, leaving the other sections alone. No timed assertions.
//   PHI2_FIXTURES=$PWD/test/fixtures/gen node --test test/bench/serve-load.test.mjs
// Needs the native addon and the SDK built (npm run build -w @x/phi2).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const script = path.join(root, 'bench/serve-load.mjs');
const fixtures = process.env.PHI2_FIXTURES ?? path.join(root, 'test/fixtures/gen');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'phi2-serve-load-test-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function load(args) {
  const r = spawnSync(process.execPath, [script, ...args], { encoding: 'utf8', cwd: tmp, timeout: 300_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('levels of concurrent streaming clients, 0 errors, RSS, results section written and replaced', () => {
  const results = path.join(tmp, 'RESULTS.md');
  writeFileSync(results, '# results\n\n<!-- phi2-bench:other -->\nkeep me\n<!-- /phi2-bench:other -->\n');
  const args = ['--model', path.join(fixtures, 'tiny-q8_0.gguf'), '--clients', '1,3', '--requests', '2', '--max-tokens', '5', '--prompt-tokens', '7', '--json', '--write-results', results];
  const r = load(args);
  assert.equal(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout);
  assert.deepEqual(report.levels.map((l) => [l.clients, l.requests, l.errors, l.tokens]), [[1, 2, 0, 10], [3, 6, 0, 30]]);
  for (const l of report.levels) {
    assert.ok(l.tokensPerSecond > 0 && Number.isFinite(l.tokensPerSecond));
    assert.ok(l.decodePerStream > 0 && Math.abs(l.decodeAggregate - l.clients * l.decodePerStream) < 1e-9);
    assert.ok(l.latencyMs.p50 > 0 && l.latencyMs.p99 >= l.latencyMs.p50);
    assert.ok(l.firstTokenMs.p50 > 0 && l.firstTokenMs.p50 <= l.latencyMs.p99);
  }
  assert.ok(report.rssMiB.before > 0 && report.rssMiB.after > 0);
  const once = readFileSync(results, 'utf8');
  assert.match(once, /keep me/);
  assert.match(once, /## phi2 serve load test: tiny-q8_0\.gguf, 1 \/ 3 concurrent streaming clients/);
  assert.match(once, /\| 3 \| 6 \| 0 \|/);
  assert.equal(load(args).code, 0);
  const twice = readFileSync(results, 'utf8');
  assert.equal(twice.split('<!-- phi2-bench:serve tiny-q8_0.gguf').length, 2, 'the section is replaced, not added again');
  assert.match(twice, /keep me/);
});

test('usage errors exit 2', () => {
  assert.equal(load(['--clients', '1']).code, 2);
  assert.equal(load(['--model', 'x.gguf', '--clients', '0']).code, 2);
  assert.equal(load(['--synthetic', 'q9']).code, 2);
});
