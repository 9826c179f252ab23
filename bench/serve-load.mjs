#!/usr/bin/env node
// Load test of `phi2 serve` on loopback: starts the server, then for each concurrency level runs
// N clients at once, each sending its requests one after another (streaming /v1/completions,
// greedy, end-of-text banned so every request generates exactly --max-tokens tokens). Reports
// per level: requests, errors (must be 0), latency p50/p99, time to first token p50/p99,
// aggregate generated tokens/s, and the server's RSS before and after; the speed-up of each level
// over the first (e.g. 8 concurrent streams vs 1: what continuous batching buys).
//
//   node bench/serve-load.mjs --synthetic q4_0 --clients 1,8 --threads 2 --write-results
//   node bench/serve-load.mjs --model phi-2.Q4_0.gguf --clients 1,4,8,16 --requests 4
//
// --write-results adds or replaces this configuration's section of bench/RESULTS.md (the same
// marker scheme as phi2-bench --write-results); RESULTS.md is written by tools only.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { mdTable, writeSection } from './lib/report.mjs';
import { machineLine, resultsFile, runScript, scriptArgs } from './lib/script.mjs';
import { ensureSynthetic } from './lib/synthetic.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));

const HELP = `Usage: node bench/serve-load.mjs [--model FILE | --synthetic q4_0|q8_0|q4_k_m|f16] [options]

  --clients LIST       concurrency levels, comma-separated (default 1,8)
  --requests N         requests per client at each level (default 2)
  --max-tokens N       tokens generated per request (default 64)
  --prompt-tokens N    prompt length in tokens (default 32)
  --parallel N         the server's --parallel (default: the largest level)
  --threads N          the server's --threads (default: all cores)
  --cli PATH           the phi2 CLI (default: packages/phi2/dist/cli.js in a checkout)
  --write-results [F]  add/replace this configuration's section of bench/RESULTS.md (or F)
  --json               print the report as JSON
`;

function intList(s, name, fail) {
  const v = s.split(',').map((x) => Number(x));
  if (!v.length || v.some((x) => !Number.isInteger(x) || x < 1)) fail(`--${name} must be positive integers, got ${s}`);
  return v;
}

function quantile(sorted, q) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

function rssMiB(pid) {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

/** A deterministic prompt of n token ids (ordinary word-piece ids of the Phi-2 vocabulary). */
function promptIds(n, seed) {
  let x = seed * 2654435761 + 1;
  return Array.from({ length: n }, () => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return 1000 + (x % 30000);
  });
}

async function startServer({ cli, model, parallel, threads, queue }) {
  const args = [cli, 'serve', '--port', '0', '--quiet', '--model', model, '--parallel', String(parallel), '--max-queue', String(queue), '--timeout', '3600'];
  if (threads) args.push('--threads', String(threads));
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr.setEncoding('utf8');
  const url = await new Promise((resolve, reject) => {
    proc.stderr.on('data', (d) => {
      err += d;
      const m = /listening on (http:\/\/\S+)/.exec(err);
      if (m && /ready/.test(err)) resolve(m[1]);
    });
    proc.once('exit', (code) => reject(new Error(`phi2 serve exited with ${code}: ${err.trim()}`)));
  });
  return { proc, url };
}

/** One streaming completion; resolves with its timings, or throws. */
async function oneRequest(url, ids, maxTokens) {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: ids, max_tokens: maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true }, logit_bias: { 50256: -100 } }),
  });
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  const dec = new TextDecoder();
  let buf = '';
  let first = null;
  let usage = null;
  let done = false;
  for await (const chunk of res.body) {
    buf += dec.decode(chunk, { stream: true });
    let at;
    while ((at = buf.indexOf('\n\n')) >= 0) {
      const line = buf.slice(0, at).trim();
      buf = buf.slice(at + 2);
      if (!line.startsWith('data: ')) continue;
      const data = line.slice(6);
      if (data === '[DONE]') {
        done = true;
        continue;
      }
      const j = JSON.parse(data);
      if (j.error) throw new Error(j.error.message);
      if (j.usage) usage = j.usage;
      else if (first === null && j.choices?.[0]?.text) first = performance.now() - t0;
    }
  }
  if (!done) throw new Error('the stream ended without data: [DONE]');
  if (!usage) throw new Error('no usage chunk');
  return { ms: performance.now() - t0, firstMs: first ?? performance.now() - t0, tokens: usage.completion_tokens };
}

async function runLevel(url, clients, requests, maxTokens, promptTokens, level) {
  const lat = [];
  const ttft = [];
  const decode = [];
  let tokens = 0;
  const errors = [];
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let r = 0; r < requests; r++) {
        try {
          const out = await oneRequest(url, promptIds(promptTokens, level * 100000 + c * 1000 + r), maxTokens);
          lat.push(out.ms);
          ttft.push(out.firstMs);
          if (out.tokens > 1 && out.ms > out.firstMs) decode.push(((out.tokens - 1) * 1000) / (out.ms - out.firstMs));
          tokens += out.tokens;
          if (out.tokens !== maxTokens) errors.push(`generated ${out.tokens} tokens, not ${maxTokens}`);
        } catch (e) {
          errors.push(e.message);
        }
      }
    }),
  );
  const wall = (performance.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  ttft.sort((a, b) => a - b);
  decode.sort((a, b) => a - b);
  const perStream = quantile(decode, 0.5);
  return {
    clients,
    requests: clients * requests,
    errors: errors.length,
    errorSamples: errors.slice(0, 3),
    wallSeconds: wall,
    tokens,
    tokensPerSecond: tokens / wall,
    // Decode speed of one stream (tokens after its first / time after its first), median; the
    // clients decode at the same time, so the aggregate decode speed is clients x that.
    decodePerStream: perStream,
    decodeAggregate: perStream * clients,
    latencyMs: { p50: quantile(lat, 0.5), p99: quantile(lat, 0.99) },
    firstTokenMs: { p50: quantile(ttft, 0.5), p99: quantile(ttft, 0.99) },
  };
}

function renderMarkdown(report) {
  const base = report.levels[0];
  const header = [
    'concurrent clients', 'requests', 'errors', 'latency p50 / p99 (ms)', 'first token p50 / p99 (ms)',
    'tokens/s end to end (all clients)', 'decode tokens/s per stream (p50)', 'aggregate decode tokens/s',
    `aggregate decode vs ${base.clients} client${base.clients > 1 ? 's' : ''}`,
  ];
  const rows = report.levels.map((l) => [
    l.clients, l.requests, l.errors,
    `${l.latencyMs.p50.toFixed(0)} / ${l.latencyMs.p99.toFixed(0)}`,
    `${l.firstTokenMs.p50.toFixed(0)} / ${l.firstTokenMs.p99.toFixed(0)}`,
    l.tokensPerSecond.toFixed(2), l.decodePerStream.toFixed(2), l.decodeAggregate.toFixed(2),
    `${(l.decodeAggregate / base.decodeAggregate).toFixed(2)}×`,
  ]);
  return [
    mdTable([header, ...rows]),
    '',
    `Server RSS: ${report.rssMiB.before?.toFixed(0) ?? '?'} MiB after loading, ${report.rssMiB.after?.toFixed(0) ?? '?'} MiB after the last level.`,
  ].join('\n');
}

function writeResults(report, file) {
  const key = `serve ${report.model.name} threads-${report.threads ?? 'all'} c${report.levels.map((l) => l.clients).join('+')} p${report.promptTokens} g${report.maxTokens}`;
  writeSection(file, key, [
    `## phi2 serve load test: ${report.model.label}, ${report.levels.map((l) => l.clients).join(' / ')} concurrent streaming clients`,
    '',
    `- date: ${report.date}`,
    `- command: \`${report.command}\``,
    `- machine: ${report.machine}`,
    `- each client sends ${report.requestsPerClient} streaming /v1/completions requests one after another: ${report.promptTokens}-token prompt, ${report.maxTokens} tokens generated (greedy, end-of-text banned); the server runs with --parallel ${report.parallel}`,
    '',
    renderMarkdown(report),
  ].join('\n'));
}

async function main() {
  const { values, fail, posInt } = scriptArgs('serve-load', HELP, {
    clients: { type: 'string' },
    requests: { type: 'string' },
    'max-tokens': { type: 'string' },
    'prompt-tokens': { type: 'string' },
    parallel: { type: 'string' },
    cli: { type: 'string' },
  });
  if (!!values.model === !!values.synthetic) fail('give --model FILE or --synthetic TYPE (one of them)');
  const levels = intList(values.clients ?? '1,8', 'clients', fail);
  const requests = posInt('requests', 2);
  const maxTokens = posInt('max-tokens', 64);
  const promptTokens = posInt('prompt-tokens', 32);
  const parallel = posInt('parallel', Math.max(...levels));
  const threads = posInt('threads', null);
  const cli = values.cli ?? path.join(HERE, '..', 'packages', 'phi2', 'dist', 'cli.js');
  if (!existsSync(cli)) fail(`the phi2 CLI is not at ${cli} (build @x/phi2, or pass --cli)`);
  let model = values.model;
  let label = model ? path.basename(model) : `Phi-2-shaped ${values.synthetic} (random weights)`;
  if (values.synthetic) {
    model = ensureSynthetic({ type: values.synthetic }).file;
  }
  if (!model || !existsSync(model)) fail(`model ${model} not found`);
  const { proc, url } = await startServer({ cli, model, parallel, threads, queue: Math.max(...levels) * requests });
  const report = {
    date: new Date().toISOString(),
    command: `node bench/serve-load.mjs ${process.argv.slice(2).join(' ')}`,
    machine: machineLine(),
    model: { name: values.synthetic ? `synthetic-${values.synthetic}` : path.basename(model), label },
    threads,
    parallel,
    requestsPerClient: requests,
    promptTokens,
    maxTokens,
    rssMiB: { before: null, after: null },
    levels: [],
  };
  let code = 0;
  try {
    // Warm-up (page cache, first-use allocations), not measured.
    await oneRequest(url, promptIds(promptTokens, 7), 2);
    report.rssMiB.before = rssMiB(proc.pid);
    for (const [i, c] of levels.entries()) {
      const level = await runLevel(url, c, requests, maxTokens, promptTokens, i + 1);
      report.levels.push(level);
      process.stderr.write(`serve-load: ${c} clients: ${level.tokensPerSecond.toFixed(2)} tokens/s end to end, ${level.decodeAggregate.toFixed(2)} decode tokens/s, ${level.errors} errors\n`);
      if (level.errors) code = 1;
    }
    report.rssMiB.after = rssMiB(proc.pid);
  } finally {
    proc.kill('SIGTERM');
    await once(proc, 'exit');
  }
  if (values.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  else process.stdout.write(`${renderMarkdown(report)}\n`);
  const file = resultsFile(values);
  if (file) {
    writeResults(report, file);
    process.stderr.write(`serve-load: wrote ${file}\n`);
  }
  return code;
}

runScript('serve-load', main);
