// Issue 8, 7a: after the README's set-up, `npx phi2` and `npx phi2-bench` work in the checkout.
// `npm ci` cannot link @x/phi2's bin (dist/cli.js does not exist yet when it installs), so the test
// starts from that state (the phi2 link removed, as a fresh `npm ci` leaves it) and runs
// scripts/setup.sh. Needs the SDK built (npm run build -w @x/phi2).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const run = (cmd, args) => spawnSync(cmd, args, { cwd: root, encoding: 'utf8', env: { ...process.env, NODE_LLAMA_CPP_SKIP_DOWNLOAD: 'true' }, timeout: 600_000 });

test('scripts/setup.sh links the workspace bins: npx phi2 and npx phi2-bench run', () => {
  assert.ok(existsSync(path.join(root, 'packages/phi2/dist/cli.js')), 'build the SDK first: npm run build -w @x/phi2');
  rmSync(path.join(root, 'node_modules/.bin/phi2'), { force: true }); // what npm ci leaves
  const setup = run('bash', ['scripts/setup.sh']);
  assert.equal(setup.status, 0, setup.stderr);
  const version = JSON.parse(readFileSync(path.join(root, 'packages/phi2/package.json'), 'utf8')).version;
  const phi2 = run('npx', ['--no-install', 'phi2', '--version']);
  assert.equal(phi2.status, 0, `npx phi2 --version: ${phi2.stderr}`);
  assert.match(phi2.stdout, new RegExp(version.replace(/\./g, '\\.')));
  const bench = run('npx', ['--no-install', 'phi2-bench', '--version']);
  assert.equal(bench.status, 0, `npx phi2-bench --version: ${bench.stderr}`);
  assert.match(bench.stdout, /^phi2-bench \d/);
  // idempotent: a second run changes nothing and says nothing about links
  const again = run('bash', ['scripts/setup.sh']);
  assert.equal(again.status, 0);
  assert.doesNotMatch(again.stderr, /linked/);
});
