// Shared helpers for the end-to-end engine tests: run the `generate` example, read log-prob rows.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const fixtures = process.env.PHI2_FIXTURES ?? path.join(root, 'test/fixtures/gen');
export const generateBin = path.join(root, 'target/release/examples/generate');
export const PROMPT = [464, 2068, 7586, 21831, 18045, 625, 198, 50284, 1169, 16931, 3290];
export const VOCAB = 51200;
export const TOKENIZER_SIZE = 50295;
export const scratch = mkdtempSync(path.join(tmpdir(), 'phi2-e2e-'));
// Removed when the test process exits (a run used to leave ~230 MB of model copies behind).
process.on('exit', () => rmSync(scratch, { recursive: true, force: true }));

/** Runs a command; returns { status, signal, stdout, stderr }. */
export function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...opts });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/** Runs the engine's generate example; throws with stderr on failure. */
export function generate(model, tokens, maxNew, extra = [], logprobsOut) {
  const args = ['--model', model, '--tokens', tokens.join(','), '--max-new-tokens', String(maxNew), ...extra];
  if (logprobsOut) args.push('--logprobs-out', logprobsOut);
  const r = run(generateBin, args);
  if (r.status !== 0) throw new Error(`generate ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout).tokens;
}

export function readRows(file, vocab = VOCAB) {
  const buf = readFileSync(file);
  const f = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  if (f.length % vocab) throw new Error(`${file}: ${f.length} floats is not a whole number of rows`);
  return f;
}

export function maxAbsDiff(a, b) {
  if (a.length !== b.length) throw new Error(`lengths differ: ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    if (a[i] === b[i]) continue; // also -Infinity == -Infinity
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = d; // NaN propagates as a failure
  }
  return m;
}

/** top1 - top2 log-prob over ids < TOKENIZER_SIZE in row r. */
export function margin(rows, r, vocab = VOCAB) {
  let a = -Infinity, b = -Infinity;
  for (let i = r * vocab; i < r * vocab + TOKENIZER_SIZE; i++) {
    const v = rows[i];
    if (v > a) { b = a; a = v; } else if (v > b) b = v;
  }
  return a - b;
}
