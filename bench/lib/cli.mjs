// phi2-bench: the command line. See USAGE.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { measureBandwidth, measureCudaBandwidth } from './bandwidth.mjs';
import { decodeBytesPerToken, kvValuesPerPosition, readGgufInfo, typeSummary } from './gguf-info.mjs';
import { readCpuId } from './cpu.mjs';
import { kvBytesPerValue, printReport, writeResults } from './report.mjs';
import { SHAPES, SYNTHETIC_TYPES, defaultCacheDir, ensureSynthetic, syntheticPath } from './synthetic.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const pkgDir = path.resolve(here, '..');
const require = createRequire(import.meta.url);
const VERSION = JSON.parse(readFileSync(path.join(pkgDir, 'package.json'), 'utf8')).version;

export const USAGE = `usage: phi2-bench (--model FILE | --synthetic f16|q8_0|q4_0|q4_k_m) [options]

Measures @x/phi2 through its public SDK (loadModel(file, { threads, backend })): load time, time to
first token, prefill tok/s, decode tok/s, peak RSS and the share of the memory-bandwidth ceiling
(read bandwidth is measured first, and again beside every run), optionally against node-llama-cpp and
wllama in the same run.

model
  --model FILE             a GGUF (or anything loadModel takes with --backend cpu)
  --synthetic TYPE         a random-weight GGUF with Phi-2's exact shapes: f16 (5.6 GB), q8_0 (3.0 GB),
                           q4_0 (1.6 GB), q4_k_m (1.8 GB, llama.cpp's Q4_K_M mix); written once, then cached
  --cache-dir DIR          where synthetic files are kept (default $PHI2_BENCH_CACHE, else ~/.cache/phi2-bench)

what to run
  --prompt-tokens N[,N]    prompt sizes, one generation each (default 128; e.g. 128,512)
  --gen-tokens N           greedy tokens per generation, >= 2 (default 64)
  --threads N              compute threads for every engine (default: all ${os.availableParallelism()} cores)
  --runs N                 measured runs per engine, alternating engines; median and min–max (default 3)
  --backend cpu|wasm|cuda  @x/phi2's backend in Node (default cpu); cuda: the CUDA addon on GPU 0, and the
                           ceiling is the GPU's memory bandwidth (a device copy) instead of the CPU's
  --kv-cache f32|f16       @x/phi2's KV cache in Node (loadModel's kvCache; default f32). node-llama-cpp
                           keeps its default, f16
  --compare LIST           node-llama-cpp, wllama and/or transformers, comma-separated: node-llama-cpp on the
                           same file and threads; wllama in headless Chromium against @x/phi2's wasm build,
                           same page setup; transformers (with --backend cuda and --synthetic): HF
                           PhiForCausalLM in PyTorch fp16, eager attention, random weights of the same shapes,
                           on the same GPU (python3 with torch + transformers, or $PHI2_PYTHON)
  --load warm|cold         warm (default): the file is evicted and read back into the page cache
                           (8 MB reads) before the runs;
                           cold: evicted from the page cache before every run (dd iflag=nocache)
  --no-warmup              skip the short warm-up generation after each load
  --bandwidth-mb N         size of the bandwidth probe's buffer (default 1024); --no-bandwidth skips it

output
  --json                   one JSON object on stdout (everything, every run)
  --markdown               a Markdown report on stdout
  --write-results [FILE]   add/replace this configuration's section of RESULTS.md (default: bench/RESULTS.md
                           in a checkout, else ./RESULTS.md)
  -h, --help | -V, --version

Exit status: 0 done, 1 a run failed, 2 usage error.`;

export class UsageError extends Error {}

const FLAGS = {
  '--model': 'value', '--synthetic': 'value', '--cache-dir': 'value', '--prompt-tokens': 'value', '--gen-tokens': 'value',
  '--threads': 'value', '--runs': 'value', '--backend': 'value', '--compare': 'value', '--load': 'value',
  '--no-warmup': 'bool', '--bandwidth-mb': 'value', '--no-bandwidth': 'bool', '--json': 'bool', '--markdown': 'bool',
  '--write-results': 'optional', '--shape': 'value', '--help': 'bool', '-h': 'bool', '--version': 'bool', '-V': 'bool',
  '--chromium': 'value', '--kv-cache': 'value',
};

const posInt = (flag, v, min = 1, max = 1 << 20) => {
  if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) throw new UsageError(`${flag} must be an integer in ${min}..${max}, got "${v}"`);
  return Number(v);
};

export function parseArgs(argv) {
  const o = {};
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    let inline;
    if (a.startsWith('--') && a.includes('=')) [a, inline] = [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)];
    const kind = FLAGS[a];
    if (!kind) throw new UsageError(a.startsWith('-') ? `unknown option ${a}` : `unexpected argument "${a}"`);
    if (kind === 'bool') {
      if (inline !== undefined) throw new UsageError(`${a} takes no value`);
      o[a] = true;
    } else if (kind === 'optional') {
      o[a] = inline ?? (argv[i + 1] && !argv[i + 1].startsWith('--') ? argv[++i] : true);
    } else {
      const v = inline ?? argv[++i];
      if (v === undefined || (inline === undefined && v.startsWith('--'))) throw new UsageError(`${a} needs a value`);
      o[a] = v;
    }
  }
  if (o['--help'] || o['-h'] || o['--version'] || o['-V']) return { help: !!(o['--help'] || o['-h']), version: !!(o['--version'] || o['-V']) };
  if (o['--synthetic'] && !SYNTHETIC_TYPES.includes(o['--synthetic'])) throw new UsageError(`--synthetic must be one of ${SYNTHETIC_TYPES.join(', ')}, got "${o['--synthetic']}"`);
  const shape = o['--shape'] ?? 'phi2';
  if (!SHAPES[shape]) throw new UsageError(`--shape must be one of ${Object.keys(SHAPES).join(', ')}, got "${shape}"`);
  if (o['--shape'] && !o['--synthetic']) throw new UsageError('--shape only applies to --synthetic');
  const promptTokens = String(o['--prompt-tokens'] ?? '128').split(',').map((v) => posInt('--prompt-tokens', v.trim(), 1, 4096));
  const genTokens = posInt('--gen-tokens', o['--gen-tokens'] ?? '64', 2, 4096);
  const threads = posInt('--threads', o['--threads'] ?? String(os.availableParallelism()), 1, 1024);
  const runs = posInt('--runs', o['--runs'] ?? '3', 1, 1000);
  const backend = o['--backend'] ?? 'cpu';
  if (!['cpu', 'wasm', 'cuda'].includes(backend)) throw new UsageError(`--backend must be cpu, wasm or cuda, got "${backend}"`);
  const compare = o['--compare'] ? String(o['--compare']).split(',').map((s) => s.trim()) : [];
  for (const c of compare) if (!['node-llama-cpp', 'wllama', 'transformers'].includes(c)) throw new UsageError(`--compare takes node-llama-cpp, wllama and/or transformers, got "${c}"`);
  if (compare.includes('transformers') && (backend !== 'cuda' || !o['--synthetic'])) {
    throw new UsageError('--compare transformers runs HF transformers on the GPU with random weights of the synthetic shapes: it needs --backend cuda and --synthetic');
  }
  const kvCache = o['--kv-cache'] ?? 'f32';
  if (!['f32', 'f16'].includes(kvCache)) throw new UsageError(`--kv-cache must be f32 or f16, got "${kvCache}"`);
  const load = o['--load'] ?? 'warm';
  if (!['warm', 'cold'].includes(load)) throw new UsageError(`--load must be warm or cold, got "${load}"`);
  const bandwidthMb = posInt('--bandwidth-mb', o['--bandwidth-mb'] ?? '1024', 16, 3072);
  if (o['--json'] && o['--markdown']) throw new UsageError('--json and --markdown exclude each other');
  if (!!o['--model'] === !!o['--synthetic']) throw new UsageError('give exactly one of --model FILE or --synthetic TYPE');
  return {
    model: o['--model'] ? path.resolve(o['--model']) : null,
    synthetic: o['--synthetic'] ?? null,
    shape,
    cacheDir: o['--cache-dir'] ? path.resolve(o['--cache-dir']) : defaultCacheDir(),
    promptTokens,
    genTokens,
    threads,
    runs,
    backend,
    kvCache,
    compare,
    load,
    warmup: !o['--no-warmup'],
    bandwidth: !o['--no-bandwidth'],
    bandwidthMb,
    format: o['--json'] ? 'json' : o['--markdown'] ? 'markdown' : 'table',
    writeResults: o['--write-results'] === undefined ? null : o['--write-results'] === true ? defaultResultsFile() : path.resolve(o['--write-results']),
    chromium: o['--chromium'] ?? process.env.PHI2_CHROMIUM ?? '/usr/bin/chromium',
  };
}

function defaultResultsFile() {
  // In the repository checkout (bench/ next to packages/phi2): bench/RESULTS.md. Installed: ./RESULTS.md.
  return existsSync(path.join(pkgDir, '..', 'packages', 'phi2', 'package.json')) ? path.join(pkgDir, 'RESULTS.md') : path.resolve('RESULTS.md');
}

const log = (s) => process.stderr.write(`${s}\n`);

function progressBar(label) {
  const tty = process.stderr.isTTY;
  let lastPct = -1;
  const t0 = performance.now();
  return (done, total) => {
    const pct = Math.floor((done / total) * 100);
    if (pct === lastPct) return;
    lastPct = pct;
    const s = (performance.now() - t0) / 1000;
    const eta = done > 0 ? (s * (total - done)) / done : 0;
    const w = 30;
    const fill = Math.round((done / total) * w);
    const line = `${label} [${'#'.repeat(fill)}${'.'.repeat(w - fill)}] ${pct}% ${(done / 1e9).toFixed(2)}/${(total / 1e9).toFixed(2)} GB, ${s.toFixed(0)} s${done < total ? `, ~${eta.toFixed(0)} s left` : ''}`;
    if (tty) process.stderr.write(`\r${line}${done >= total ? '\n' : ''}`);
    else if (pct % 10 === 0) log(line);
  };
}

function pageCacheResident(file) {
  // util-linux fincore: bytes of the file in the page cache (null where unavailable)
  try {
    const out = execFileSync('fincore', ['--bytes', '--noheadings', '--raw', '--output', 'RES', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    return Number(out.trim());
  } catch {
    return null;
  }
}

function evictFromPageCache(file) {
  // posix_fadvise(POSIX_FADV_DONTNEED) on the whole file: GNU dd's documented "drop cache" idiom.
  execFileSync('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none'], { stdio: 'ignore' });
}

async function readThrough(file) {
  const { createReadStream } = await import('node:fs');
  await new Promise((res, rej) => createReadStream(file, { highWaterMark: 8 << 20 }).on('data', () => {}).on('end', res).on('error', rej));
}

function runChild(cfg) {
  return new Promise((resolve) => {
    // HF transformers runs in Python (bench/peers/transformers_peer.py; python3 with torch and
    // transformers, $PHI2_PYTHON to choose another), every other engine in Node.
    const [cmd, script] = cfg.engine === 'transformers' ? [process.env.PHI2_PYTHON ?? 'python3', path.join(pkgDir, 'peers', 'transformers_peer.py')] : [process.execPath, path.join(here, 'child.mjs')];
    const child = spawn(cmd, [script, JSON.stringify(cfg)], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_LLAMA_CPP_SKIP_DOWNLOAD: 'true' } });
    child.on('error', (e) => resolve({ error: `${cmd}: ${e.message}` }));
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('close', (code, signal) => {
      const line = out.split('\n').find((l) => l.startsWith('PHI2BENCH_RESULT '));
      if (line) return resolve(JSON.parse(line.slice('PHI2BENCH_RESULT '.length)));
      resolve({ error: `the run's process ended (${signal ?? `exit ${code}`}) without a result: ${(err.trim().split('\n').slice(-3).join(' | ') || 'no output').slice(0, 400)}` });
    });
  });
}

function engineVersion(name) {
  // the package's own package.json, found from its entry point (not every package exports ./package.json)
  try {
    let d = path.dirname(require.resolve(name));
    while (!existsSync(path.join(d, 'package.json')) || JSON.parse(readFileSync(path.join(d, 'package.json'), 'utf8')).name !== name) {
      if (path.dirname(d) === d) return null;
      d = path.dirname(d);
    }
    return JSON.parse(readFileSync(path.join(d, 'package.json'), 'utf8')).version;
  } catch {
    return null;
  }
}

function machine() {
  const cpus = os.cpus();
  let gitCommit = null;
  try {
    gitCommit = execFileSync('git', ['-C', pkgDir, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {}
  return {
    cpu: cpus[0]?.model?.trim() ?? 'unknown',
    cpuId: readCpuId(),
    cores: os.availableParallelism(),
    ramBytes: os.totalmem(),
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    gitCommit,
  };
}

export async function main(argv) {
  let opts;
  try {
    opts = parseArgs(argv);
  } catch (e) {
    if (e instanceof UsageError) {
      log(`phi2-bench: ${e.message}\n\n${USAGE}`);
      return 2;
    }
    throw e;
  }
  if (opts.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (opts.version) {
    process.stdout.write(`phi2-bench ${VERSION}\n`);
    return 0;
  }

  // The model
  let file = opts.model;
  if (opts.synthetic) {
    const target = syntheticPath(opts.cacheDir, opts.shape, opts.synthetic);
    const r = ensureSynthetic({ cacheDir: opts.cacheDir, shape: opts.shape, type: opts.synthetic, onProgress: progressBar(`writing ${path.basename(target)}`) });
    file = r.file;
    log(`${r.created ? 'wrote' : 'cached'}: ${file}`);
  } else if (!existsSync(file)) {
    log(`phi2-bench: --model ${opts.model}: no such file`);
    return 2;
  }
  const st = statSync(file);
  let gguf = null;
  if (st.isFile()) {
    try {
      gguf = readGgufInfo(file);
    } catch {}
  }
  const model = {
    file,
    name: path.basename(file),
    sizeBytes: st.isFile() ? st.size : null,
    synthetic: opts.synthetic,
    types: gguf ? typeSummary(gguf) : null,
    // Weight bytes one decode step reads: every tensor but the token embedding (one row of it);
    // KV-cache reads are not counted. Non-GGUF sources: the file size, an upper bound.
    bytesPerToken: gguf ? decodeBytesPerToken(gguf) : st.isFile() ? st.size : null,
    // Numbers the KV cache holds per position (all layers' keys and values), which a decode step
    // reads once for every position so far: the "weights + KV-cache reads" share.
    kvValuesPerPosition: gguf ? kvValuesPerPosition(gguf) : null,
  };
  const needsGguf = opts.compare.length > 0 || opts.backend === 'wasm';
  if (needsGguf && !gguf) {
    log(`phi2-bench: ${file} is not a GGUF file (--compare and --backend wasm need one)`);
    return 2;
  }

  // Bandwidth
  let bandwidth = null;
  if (opts.bandwidth) {
    if (opts.backend === 'cuda') {
      log('measuring the GPU\'s memory bandwidth (device copy)…');
      try {
        bandwidth = measureCudaBandwidth({ bufferBytes: Math.max(opts.bandwidthMb, 1024) * 4 * 2 ** 20 });
      } catch (e) {
        log(`phi2-bench: --backend cuda: ${e?.message ?? e}`);
        return 2;
      }
    } else {
      log(`measuring memory read bandwidth (${opts.threads} thread${opts.threads > 1 ? 's' : ''}, ${opts.bandwidthMb} MiB)…`);
      bandwidth = await measureBandwidth({ threads: opts.threads, bufferBytes: opts.bandwidthMb * 2 ** 20 });
    }
    if (opts.backend !== 'cuda' && opts.threads !== os.availableParallelism()) {
      const all = await measureBandwidth({ threads: os.availableParallelism(), bufferBytes: opts.bandwidthMb * 2 ** 20 });
      bandwidth.allCoresGbPerS = all.gbPerS;
    }
    log(`  ${bandwidth.gbPerS.toFixed(2)} GB/s`);
  }

  // Runs: native engines alternate, one process per run
  // kvBytes: bytes per cached value, each engine's own (the weights + KV-cache share).
  const engines = [{ id: 'phi2', label: `@x/phi2 ${opts.backend}${opts.kvCache === 'f16' ? ' (f16 KV)' : ''}`, kvBytes: kvBytesPerValue('phi2', opts) }];
  if (opts.compare.includes('node-llama-cpp')) {
    if (!engineVersion('node-llama-cpp')) {
      log('phi2-bench: --compare node-llama-cpp needs the npm package node-llama-cpp (npm install node-llama-cpp@3.21.1)');
      return 2;
    }
    engines.push({ id: 'node-llama-cpp', label: 'node-llama-cpp', kvBytes: kvBytesPerValue('node-llama-cpp', opts) });
  }
  if (opts.compare.includes('transformers')) {
    // Random weights of the synthetic model's shapes in PyTorch fp16, eager attention: the peer
    // reads no file (it has no GGUF loader), so it needs --synthetic to know the shapes.
    engines.push({ id: 'transformers', label: 'HF transformers fp16', kvBytes: kvBytesPerValue('transformers', opts) });
  }
  const fileRes = model.sizeBytes ? pageCacheResident(file) : null;
  if (opts.load === 'warm' && model.sizeBytes) {
    // Evicted first: pages already cached may sit in small folios (the file was written in small
    // pieces, or faulted in 4 KB at a time); read back in 8 MB reads they come in 2 MB folios,
    // which the engines can map as 2 MB pages. Every engine then starts from that same state.
    log('reading the file afresh into the page cache (--load warm)…');
    evictFromPageCache(file);
    await readThrough(file);
  }
  const runs = Object.fromEntries(engines.map((e) => [e.id, []]));
  // The bandwidth beside each native run: the same probe just before and just after it (in this
  // process, so the run's peak RSS does not count the probe's buffer), the better of the two. On
  // shared machines read bandwidth drifts over minutes (seen: 35 to 65 GB/s within one bench on a
  // 2-core cloud VM), so a run's decode is also given as a share of what the machine streamed then.
  // A probe that fails (no memory for its buffer) gives no reading; the runs go on.
  const besideProbe = opts.bandwidth && opts.backend !== 'cuda'
    ? async () => {
      try {
        return (await measureBandwidth({ threads: opts.threads, bufferBytes: opts.bandwidthMb * 2 ** 20 })).gbPerS;
      } catch (e) {
        log(`bandwidth probe beside the run failed: ${e?.message ?? e}`);
        return null;
      }
    }
    : null;
  for (let i = 0; i < opts.runs; i++) {
    for (const e of engines) {
      // Before the page-cache state is taken (the probe's buffer may push file pages out).
      const bwBefore = besideProbe ? await besideProbe() : null;
      if (opts.load === 'cold' && model.sizeBytes) evictFromPageCache(file);
      const residentBefore = model.sizeBytes ? pageCacheResident(file) : null;
      const cfg = { engine: e.id, model: file, threads: opts.threads, backend: opts.backend, promptTokens: opts.promptTokens, genTokens: opts.genTokens, warmup: opts.warmup };
      if (e.id === 'phi2' && opts.kvCache !== 'f32') cfg.kvCache = opts.kvCache;
      if (e.id === 'transformers') cfg.shape = SHAPES[opts.shape];
      const t0 = performance.now();
      const r = await runChild(cfg);
      const beside = besideProbe ? [bwBefore, await besideProbe()].filter((b) => b > 0) : [];
      if (beside.length) r.bandwidthBeside = Math.max(...beside);
      r.residentBefore = residentBefore;
      r.loadState = residentBefore === null || !model.sizeBytes ? 'unknown' : residentBefore >= 0.9 * model.sizeBytes ? 'warm' : residentBefore <= 0.1 * model.sizeBytes ? 'cold' : 'partial';
      runs[e.id].push(r);
      log(r.error
        ? `run ${i + 1}/${opts.runs} ${e.label}: FAILED: ${r.error}`
        : `run ${i + 1}/${opts.runs} ${e.label}: load ${(r.loadMs / 1000).toFixed(2)} s (${r.loadState}), ${r.prompts.map((p) => `prefill ${p.promptTokens} ${(p.promptTokens / p.promptMs * 1000).toFixed(1)} tok/s, decode ${((p.generated - 1) / p.generateMs * 1000).toFixed(2)} tok/s`).join('; ')}, peak RSS ${(r.peakRss / 1e9).toFixed(2)} GB${r.bandwidthBeside ? `, bandwidth beside ${r.bandwidthBeside.toFixed(1)} GB/s` : ''} (${((performance.now() - t0) / 1000).toFixed(0)} s)`);
    }
  }

  let browser = null;
  if (opts.compare.includes('wllama')) {
    const { runBrowser } = await import('./browser.mjs');
    try {
      browser = await runBrowser({ file, threads: opts.threads, runs: opts.runs, promptTokens: opts.promptTokens, genTokens: opts.genTokens, chromium: opts.chromium, log });
    } catch (e) {
      browser = { error: String(e?.message ?? e) };
      log(`wllama comparison FAILED: ${browser.error}`);
    }
  }

  const report = {
    tool: `phi2-bench ${VERSION}`,
    date: new Date().toISOString(),
    command: `phi2-bench ${argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ')}`,
    machine: machine(),
    bandwidth,
    model,
    options: { ...opts, cacheDir: undefined, chromium: undefined },
    versions: { '@x/phi2': engineVersion('@x/phi2'), 'node-llama-cpp': engineVersion('node-llama-cpp'), '@wllama/wllama': engineVersion('@wllama/wllama') },
    pageCacheBefore: fileRes,
    engines: engines.map((e) => ({ ...e, runs: runs[e.id] })),
    browser,
  };
  printReport(report, opts.format);
  if (opts.writeResults) {
    writeResults(report, opts.writeResults);
    log(`updated ${opts.writeResults}`);
  }
  const failed = report.engines.some((e) => e.runs.some((r) => r.error)) || (browser && (browser.error || browser.engines?.some((e) => e.runs.some((r) => r.error))));
  return failed ? 1 : 0;
}
