// The linux-arm64 addon (NEON kernels) under qemu user-mode emulation against the host's
// (x86-64) addon: the same greedy and sampled tokens and the same log-probs, bit for bit, on
// every weight type our kernels take, with dotprod (`sdot`), with NEON alone (forced by
// PHI2_KERNELS=neon), and on a CPU without dotprod (qemu's Cortex-A53, where the run-time check
// must pick NEON alone: an `sdot` there is an illegal instruction); and the whole JS stack, the
// `phi2` CLI of packages/phi2/dist on the arm64 Node, writes the host CLI's text.
//   scripts/test-aarch64.sh runs it (it builds the addon and fetches an arm64 Node first; the
//   SDK must be built: npm run build -w @x/phi2).
// Needs PHI2_ARM64_NODE (an arm64 `node` binary) and PHI2_ARM64_ADDON (the arm64 addon).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const fixtures = process.env.PHI2_FIXTURES ?? path.join(root, 'test/fixtures/gen');
const { PHI2_ARM64_NODE: armNode, PHI2_ARM64_ADDON: armAddon } = process.env;
for (const [name, v] of [['PHI2_ARM64_NODE', armNode], ['PHI2_ARM64_ADDON', armAddon]]) {
  if (!v || !existsSync(v)) throw new Error(`${name}=${v ?? ''} is missing: run scripts/test-aarch64.sh`);
}

const MODELS = ['kq-q4_0.gguf', 'kq-q8_0.gguf', 'kq-q4_K.gguf', 'kq-q5_K.gguf', 'kq-q6_K.gguf', 'kq-f16.gguf', 'kq-bf16.gguf',
  'kq-mix.gguf', 'odd-q4_0.gguf', 'odd-f16.gguf'].map((m) => path.join(fixtures, m));

/** digest.mjs's output: run by `cmd` (with `args` before the script) in `env`. */
function digest(cmd, args, env) {
  const dir = mkdtempSync(path.join(tmpdir(), 'phi2-arm64-'));
  try {
    execFileSync(cmd, [...args, path.join(here, 'digest.mjs'), dir, ...MODELS], { cwd: root, env: { ...process.env, ...env }, stdio: 'inherit' });
    return JSON.parse(readFileSync(path.join(dir, 'digest.json'), 'utf8'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const qemu = (cpu) => ['-cpu', cpu, '-L', '/usr/aarch64-linux-gnu', armNode];
const host = digest(process.execPath, [], { PHI2_KERNELS: '' });

for (const [what, cpu, kernels] of [['dotprod', 'max', ''], ['NEON alone', 'max', 'neon'], ['a CPU without dotprod', 'cortex-a53', '']]) {
  test(`arm64 addon (${what}) gives the x86-64 addon's tokens and log-probs bit for bit`, () => {
    const arm = digest('qemu-aarch64-static', qemu(cpu), { NAPI_RS_NATIVE_LIBRARY_PATH: armAddon, PHI2_KERNELS: kernels });
    assert.equal(arm.arch, 'arm64');
    assert.equal(host.arch, process.arch);
    for (const m of Object.keys(host.models)) {
      assert.deepEqual(arm.models[m], host.models[m], `${m}: tokens and log-probs (SHA-256 of the f32 bytes)`);
    }
    assert.equal(Object.keys(arm.models).length, MODELS.length);
  });
}

test('the phi2 CLI on an arm64 Node writes the x86-64 CLI\'s text (embedded model, greedy and sampled)', () => {
  const cli = path.join(root, 'packages/phi2/dist/cli.js');
  if (!existsSync(cli)) throw new Error(`${cli} is missing: npm run build -w @x/phi2`);
  for (const flags of [[], ['--do-sample', '--temperature', '0.8', '--seed', '11']]) {
    const args = [cli, 'generate', 'def fibonacci(n):', '--max-new-tokens', '24', '--threads', '2', '--quiet', ...flags];
    const opts = { cwd: root, encoding: 'utf8', env: { ...process.env, PHI2_KERNELS: '' } };
    const want = execFileSync(process.execPath, args, opts);
    const got = execFileSync('qemu-aarch64-static', [...qemu('max'), ...args],
      { ...opts, env: { ...opts.env, NAPI_RS_NATIVE_LIBRARY_PATH: armAddon } });
    assert.ok(want.length > 20, `host output: ${JSON.stringify(want)}`);
    assert.equal(got, want, `flags [${flags}]`);
  }
});
