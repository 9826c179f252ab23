// What the bench's standalone scripts (serve-load.mjs, speculative.mjs) share: their command
// line (the common options, --help, usage errors on stderr with exit code 2), positive-integer
// options, the machine line of a report and where --write-results writes.
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { describeCpuId, readCpuId } from './cpu.mjs';
import { SYNTHETIC_TYPES } from './synthetic.mjs';

const BENCH = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Options every script takes, besides its own. */
const COMMON = {
  model: { type: 'string' },
  synthetic: { type: 'string' },
  threads: { type: 'string' },
  'write-results': { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
};

/**
 * The command line of script `prog`: `{ values, fail, posInt }`. Prints `help` and exits 0 on
 * --help; a malformed line exits 2 with the reason. `--write-results` takes an optional file
 * (bare, it is the empty string: bench/RESULTS.md). `fail(msg)` is a usage error (exit 2);
 * `posInt(name, dflt)` reads option `name` as an integer >= 1, or `dflt` when it is absent.
 */
export function scriptArgs(prog, help, options, argv = process.argv.slice(2)) {
  const fail = (msg) => {
    process.stderr.write(`${prog}: ${msg}\n`);
    process.exit(2);
  };
  let values;
  try {
    ({ values } = parseArgs({
      options: { ...COMMON, ...options },
      args: argv.map((a, i, all) => (a === '--write-results' && (i === all.length - 1 || all[i + 1].startsWith('--')) ? '--write-results=' : a)),
    }));
  } catch (e) {
    fail(e.message);
  }
  if (values.help) {
    process.stdout.write(help);
    process.exit(0);
  }
  if (values.synthetic !== undefined && !SYNTHETIC_TYPES.includes(values.synthetic)) {
    fail(`--synthetic must be one of ${SYNTHETIC_TYPES.join(', ')}, got "${values.synthetic}"`);
  }
  const posInt = (name, dflt) => {
    const s = values[name];
    if (s === undefined) return dflt;
    const v = Number(s);
    if (!Number.isInteger(v) || v < 1) fail(`--${name} must be a positive integer, got ${s}`);
    return v;
  };
  return { values, fail, posInt };
}

/** The results file --write-results names (bench/RESULTS.md when bare), or null without it. */
export function resultsFile(values) {
  const v = values['write-results'];
  return v === undefined ? null : v ? path.resolve(v) : path.join(BENCH, 'RESULTS.md');
}

/** CPU (model, and generation where Linux tells it), cores, memory and Node version: a report's machine line. */
export function machineLine() {
  const id = describeCpuId(readCpuId());
  return `${os.cpus()[0]?.model ?? 'unknown CPU'}${id ? ` (${id})` : ''}, ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`;
}

/**
 * Runs script `prog`'s `main` (resolving to its exit code). A failure exits 1: an engine or SDK
 * error (one with a `code`, e.g. E_MODEL_LOAD) as its name, code and message, anything else
 * with its stack.
 */
export function runScript(prog, main) {
  main().then(
    (code) => process.exit(code),
    (e) => {
      const what = e?.code ? `${e.name} (${e.code}): ${e.message}` : (e?.stack ?? String(e));
      process.stderr.write(`${prog}: ${what}\n`);
      process.exit(1);
    },
  );
}
