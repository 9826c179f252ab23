// phi2-bench (bench/): flags, the synthetic GGUF writer (llama.cpp's type mix, sizes, caching; the
// files load in @x/phi2 and in node-llama-cpp), and end-to-end runs on tiny models. No timed
// assertions: only that every number is measured, finite and reported.
//   PHI2_FIXTURES=$PWD/test/fixtures/gen node --test test/bench/*.test.mjs
// Needs: the native addon and the SDK built (npm run build -w @x/phi2), the fixtures, and for the
// wasm run the wasm engines (scripts/build-wasm.sh).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { readGgufInfo, decodeBytesPerToken, kvValuesPerPosition } from '../../bench/lib/gguf-info.mjs';
import { SHAPES, bytesPerToken, ensureSynthetic, f16bits, syntheticSize, tensorPlan, useMoreBits } from '../../bench/lib/synthetic.mjs';
import { measureBandwidth } from '../../bench/lib/bandwidth.mjs';
import { describeCpuId, parseCpuinfo } from '../../bench/lib/cpu.mjs';
import { analyse, cpuTag, kvBytesPerValue, writeSection } from '../../bench/lib/report.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const bin = path.join(root, 'bench/bin/phi2-bench.mjs');
const fixtures = process.env.PHI2_FIXTURES ?? path.join(root, 'test/fixtures/gen');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'phi2-bench-test-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const cache = path.join(tmp, 'cache');

function bench(args, opts = {}) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', cwd: opts.cwd ?? tmp, env: { ...process.env, NODE_LLAMA_CPP_SKIP_DOWNLOAD: 'true' }, timeout: 600_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('flags', () => {
  for (const [args, flag] of [
    [['--synthetic', 'q4_0', '--threads', 'abc'], '--threads'],
    [['--synthetic', 'q4_0', '--threads', '0'], '--threads'],
    [['--synthetic', 'q4_0', '--runs', '-1'], '--runs'],
    [['--synthetic', 'q4_0', '--gen-tokens', '1'], '--gen-tokens'],
    [['--synthetic', 'q4_0', '--prompt-tokens', '128,x'], '--prompt-tokens'],
    [['--synthetic', 'q5_1'], '--synthetic'],
    [['--synthetic', 'q4_0', '--backend', 'gpu'], '--backend'],
    [['--synthetic', 'q4_0', '--compare', 'ollama'], '--compare'],
    [['--synthetic', 'q4_0', '--load', 'hot'], '--load'],
    [['--synthetic', 'q4_0', '--kv-cache', 'q8_0'], '--kv-cache'],
    [['--synthetic', 'q4_0', '--frobnicate'], '--frobnicate'],
    [['--synthetic', 'q4_0', '--json', '--markdown'], '--json'],
    [['--synthetic'], '--synthetic'],
    [['--threads', '2'], '--model'],
    [['--model', 'a.gguf', '--synthetic', 'q4_0'], '--synthetic'],
    [['--synthetic', 'q4_0', '--compare', 'transformers'], '--compare transformers'],
    [['--model', 'a.gguf', '--backend', 'cuda', '--compare', 'transformers'], '--compare transformers'],
  ]) {
    test(`${args.join(' ')} → usage error naming ${flag}, exit 2`, () => {
      const r = bench(args);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr.split('\n')[0], new RegExp(`^phi2-bench: .*${flag.replace(/-/g, '\\-')}`));
      assert.match(r.stderr, /usage: phi2-bench/);
      assert.equal(r.stdout, '');
    });
  }
  test('a missing --model file → exit 2 naming it', () => {
    const r = bench(['--model', path.join(tmp, 'nope.gguf'), '--no-bandwidth']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /nope\.gguf: no such file/);
  });
  test('--help and --version exit 0', () => {
    const h = bench(['--help']);
    assert.equal(h.code, 0);
    assert.match(h.stdout, /--synthetic TYPE/);
    const v = bench(['--version']);
    assert.equal(v.code, 0);
    assert.match(v.stdout, /^phi2-bench \d+\.\d+\.\d+/);
  });
});

describe('synthetic Phi-2-shaped GGUF', () => {
  test("llama.cpp's Q4_K_M mix and the published files' sizes", () => {
    const plan = tensorPlan('phi2', 'q4_k_m');
    const type = (n) => plan.find((t) => t.name === n).typeName;
    assert.equal(type('token_embd.weight'), 'Q4_K');
    assert.equal(type('output.weight'), 'Q6_K');
    assert.equal(type('blk.0.attn_qkv.weight'), 'Q5_K');
    assert.equal(type('blk.5.attn_output.weight'), 'Q4_K');
    assert.equal(type('blk.5.ffn_up.weight'), 'Q4_K');
    const q6Down = plan.filter((t) => /ffn_down\.weight/.test(t.name) && t.typeName === 'Q6_K').map((t) => Number(t.name.split('.')[1]));
    assert.deepEqual(q6Down, [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
    assert.equal(q6Down.length, 16);
    assert.equal(useMoreBits(4, 32), false);
    assert.equal(tensorPlan('phi2', 'q4_0').find((t) => t.name === 'output.weight').typeName, 'Q6_K');
    assert.equal(tensorPlan('phi2', 'q8_0').find((t) => t.name === 'output.weight').typeName, 'Q8_0');
    assert.ok(tensorPlan('phi2', 'f16').filter((t) => t.ne.length === 2).every((t) => t.typeName === 'F16'));
    assert.ok(plan.filter((t) => t.ne.length === 1).every((t) => t.typeName === 'F32'));
    // Phi-2's shapes: 32 layers × (qkv, out, up, down) + embeddings + lm_head
    assert.equal(plan.filter((t) => t.ne.length === 2).length, 32 * 4 + 2);
    assert.deepEqual(plan.find((t) => t.name === 'blk.31.attn_qkv.weight').ne, [2560, 7680]);
    assert.deepEqual(plan.find((t) => t.name === 'blk.0.ffn_down.weight').ne, [10240, 2560]);
    assert.deepEqual(plan.find((t) => t.name === 'output.weight').ne, [2560, 51200]);
    // sizes of the published phi-2 GGUFs (TheBloke/phi-2-GGUF): 5.56, 2.96, 1.60, 1.79 GB
    for (const [t, gb] of [['f16', 5.56], ['q8_0', 2.96], ['q4_0', 1.6], ['q4_k_m', 1.79]]) {
      assert.ok(Math.abs(syntheticSize('phi2', t) / 1e9 - gb) < 0.01, `${t}: ${syntheticSize('phi2', t)}`);
    }
  });

  test('KV-cache values per position: fused q/k/v or separate k and v', () => {
    // Phi-2: 32 layers, keys and values 2560 wide each.
    assert.equal(kvValuesPerPosition({ tensors: tensorPlan('phi2', 'q4_0') }), 163840);
    const layer = (l, kv) => [
      { name: `blk.${l}.attn_norm.weight`, ne: [64] },
      { name: `blk.${l}.attn_q.weight`, ne: [64, 64] },
      { name: `blk.${l}.attn_k.weight`, ne: [64, kv] },
      { name: `blk.${l}.attn_v.weight`, ne: [64, kv] },
    ];
    // Grouped heads: keys and values narrower than the hidden size.
    assert.equal(kvValuesPerPosition({ tensors: [...layer(0, 16), ...layer(1, 16)] }), 64);
    // A layer with neither form, or missing between others: not known.
    assert.equal(kvValuesPerPosition({ tensors: [...layer(0, 16), { name: 'blk.1.attn_norm.weight', ne: [64] }] }), null);
    assert.equal(kvValuesPerPosition({ tensors: [...layer(0, 16), ...layer(2, 16)] }), null);
    assert.equal(kvValuesPerPosition({ tensors: [{ name: 'output.weight', ne: [64, 100] }] }), null);
  });

  test('bytes per cached number, by engine and options', () => {
    assert.equal(kvBytesPerValue('phi2', { backend: 'cpu', kvCache: 'f32' }), 4);
    assert.equal(kvBytesPerValue('phi2', { backend: 'cpu', kvCache: 'f16' }), 2);
    assert.equal(kvBytesPerValue('phi2', { backend: 'wasm', kvCache: 'f16' }), 2);
    // cuda rounds to f16 but keeps f32 tensors
    assert.equal(kvBytesPerValue('phi2', { backend: 'cuda', kvCache: 'f16' }), 4);
    assert.equal(kvBytesPerValue('node-llama-cpp', { backend: 'cpu', kvCache: 'f16' }), 2);
    assert.equal(kvBytesPerValue('transformers', { backend: 'cuda', kvCache: 'f32' }), 2);
    assert.equal(kvBytesPerValue('wllama', { backend: 'wasm', kvCache: 'f32' }), null);
  });

  test('weights + KV-cache share: beside the run where probed there, else against the ceiling', () => {
    // 1 GB of weights, 1e6 numbers per position; prompt 100, 10 generated (9 timed steps in
    // 0.9 s: 10 tok/s) over 105 positions on average.
    const run = (beside) => ({ loadMs: 1, peakRss: 1, ...(beside ? { bandwidthBeside: beside } : {}), prompts: [{ promptTokens: 100, promptMs: 50, generated: 10, generateMs: 900 }] });
    const report = {
      bandwidth: { gbPerS: 20 },
      model: { bytesPerToken: 1e9, kvValuesPerPosition: 1e6, sizeBytes: 1e9 },
      engines: [
        { label: 'ours', kvBytes: 4, runs: [run(25)] },
        { label: 'peer', kvBytes: 2, runs: [run(null)] },
        { label: 'unknown cache', runs: [run(25)] },
      ],
    };
    const [ours, peer, unknown] = analyse(report).native;
    const near = (a, b) => assert.ok(Math.abs(a - b) < 1e-9, `${a} vs ${b}`);
    near(ours.stats['shareKvBeside@100'].median, (100 * 10 * (1e9 + 1e6 * 4 * 105)) / 25e9);
    assert.equal(ours.stats['shareKv@100'], undefined);
    near(peer.stats['shareKv@100'].median, (100 * 10 * (1e9 + 1e6 * 2 * 105)) / 20e9);
    assert.equal(peer.stats['shareKvBeside@100'], undefined);
    assert.equal(unknown.stats['shareKvBeside@100'], undefined);
    near(unknown.stats['shareBeside@100'].median, (100 * 10 * 1e9) / 25e9);
  });

  test('f16 conversion', () => {
    assert.equal(f16bits(1), 0x3c00);
    assert.equal(f16bits(-2), 0xc000);
    assert.equal(f16bits(0.1), 0x2e66);
    assert.equal(f16bits(65504), 0x7bff);
  });

  const files = {};
  test('written once, then cached; the header reads back as planned', () => {
    for (const t of ['f16', 'q8_0', 'q4_0', 'q4_k_m']) {
      const seen = [];
      const r = ensureSynthetic({ cacheDir: cache, shape: 'test', type: t, onProgress: (d, n) => seen.push([d, n]) });
      assert.equal(r.created, true);
      assert.equal(statSync(r.file).size, r.size);
      assert.equal(seen.at(-1)[0], r.size);
      const info = readGgufInfo(r.file);
      assert.equal(info.architecture, 'phi2');
      assert.deepEqual(info.tensors.map((x) => [x.name, x.type]), r.plan.map((x) => [x.name, x.typeName]));
      assert.equal(decodeBytesPerToken(info), bytesPerToken(r.plan));
      assert.equal(kvValuesPerPosition(info), 2 * 2 * 256);
      files[t] = r.file;
      const again = ensureSynthetic({ cacheDir: cache, shape: 'test', type: t });
      assert.equal(again.created, false);
    }
    // same bytes every time (deterministic)
    const copy = ensureSynthetic({ cacheDir: path.join(tmp, 'cache2'), shape: 'test', type: 'q4_k_m' });
    assert.ok(readFileSync(copy.file).equals(readFileSync(files.q4_k_m)));
  });

  test('a truncated cache file is rewritten', () => {
    const r = ensureSynthetic({ cacheDir: path.join(tmp, 'cache3'), shape: 'test', type: 'q4_0' });
    writeFileSync(r.file, readFileSync(r.file).subarray(0, 1000));
    const again = ensureSynthetic({ cacheDir: path.join(tmp, 'cache3'), shape: 'test', type: 'q4_0' });
    assert.equal(again.created, true);
    assert.equal(statSync(again.file).size, again.size);
  });

  test('every type loads and generates in @x/phi2 (cpu) and in node-llama-cpp', async () => {
    const { loadModel } = await import('@x/phi2');
    process.env.NODE_LLAMA_CPP_SKIP_DOWNLOAD = 'true';
    const { getLlama, LlamaLogLevel } = await import('node-llama-cpp');
    const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
    for (const [t, file] of Object.entries(files)) {
      const m = await loadModel(file, { threads: 1 });
      try {
        assert.equal(m.info.hiddenSize, 256);
        assert.equal(m.info.vocabSize, 51200);
        assert.equal(m.info.tokenizer, 'gguf');
        const r = await m.generate('The quick brown fox', { maxNewTokens: 4 });
        assert.equal(r.tokens.length + (r.finishReason === 'eos' ? 0 : 0), r.usage.completionTokens);
        assert.ok(r.usage.completionTokens >= 1, t);
        // logits are finite (sane scales)
        const lp = await m.logprobs(m.tokenize('Hello world'));
        assert.ok(lp.every(Number.isFinite), `${t}: non-finite log-probs`);
      } finally {
        m.dispose();
      }
      const lm = await llama.loadModel({ modelPath: file });
      const ctx = await lm.createContext({ contextSize: 64, threads: 1 });
      const seq = ctx.getSequence();
      let n = 0;
      for await (const _ of seq.evaluate(lm.tokenize('The quick brown fox'), { temperature: 0, yieldEogToken: true })) if (++n >= 3) break;
      assert.equal(n, 3, t);
      await ctx.dispose();
      await lm.dispose();
    }
  });
});

test('results sections are keyed by CPU model', () => {
  assert.equal(cpuTag('Intel(R) Xeon(R) Processor'), 'intel-xeon-processor');
  assert.equal(cpuTag('AMD EPYC'), 'amd-epyc');
  assert.equal(cpuTag('AMD Ryzen 9 7950X 16-Core Processor'), 'amd-ryzen-9-7950x-16-core-processor');
  assert.equal(cpuTag(''), 'unknown-cpu');
  assert.equal(cpuTag(undefined), 'unknown-cpu');
});

test('the CPU is told apart by x86 family and model or Arm part, from /proc/cpuinfo', () => {
  const x86 = ['processor\t: 0', 'vendor_id\t: AuthenticAMD', 'cpu family\t: 26', 'model\t\t: 2', 'model name\t: AMD EPYC', 'stepping\t: 1',
    'flags\t\t: fpu sse2 avx2 fma f16c avx512f avx512_vnni avx_vnni', '', 'processor\t: 1', 'cpu family\t: 25', 'model\t\t: 17', ''].join('\n');
  const id = parseCpuinfo(x86);
  assert.deepEqual(id, { arch: 'x86', vendor: 'AuthenticAMD', family: 26, model: 2, stepping: 1, isa: ['avx2', 'fma', 'f16c', 'avx512f', 'avx512_vnni', 'avx_vnni'] });
  assert.equal(describeCpuId(id), 'x86 family 26 model 2 stepping 1; avx2 fma f16c avx512f avx512_vnni avx_vnni');
  assert.equal(describeCpuId(id, { short: true }), 'family 26 model 2');
  assert.equal(cpuTag('AMD EPYC', id), 'amd-epyc-f26m2');
  // The same model string, another generation: another section.
  assert.equal(cpuTag('AMD EPYC', parseCpuinfo(x86.replace('cpu family\t: 26', 'cpu family\t: 25').replace('model\t\t: 2', 'model\t\t: 17'))), 'amd-epyc-f25m17');
  const arm = parseCpuinfo('processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n');
  assert.deepEqual(arm, { arch: 'arm', implementer: '0x41', part: '0xd0c', isa: ['asimd', 'asimddp', 'i8mm'] });
  assert.equal(cpuTag('Neoverse-N1', arm), 'neoverse-n1-0x41p0xd0c');
  // An empty field is empty, not the next line's value.
  assert.deepEqual(parseCpuinfo(x86.replace(/^flags.*$/m, 'flags\t\t:\nbugs\t\t: avx2 spectre_v1')).isa, []);
  assert.equal(parseCpuinfo(''), null);
  assert.equal(parseCpuinfo(undefined), null);
  assert.equal(cpuTag('AMD EPYC', null), 'amd-epyc');
});

test('a results file keeps its sections and its own text, and a header the tool wrote becomes the current one', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'phi2-results-'));
  const file = path.join(dir, 'RESULTS.md');
  const old = '# phi2-bench results\n\nWritten by `phi2-bench --write-results`, never by hand. An old header.\n\n';
  writeFileSync(file, `${old}<!-- phi2-bench:a -->\nold a\n<!-- /phi2-bench:a -->\n`);
  writeSection(file, 'b', 'new b');
  let text = readFileSync(file, 'utf8');
  assert.doesNotMatch(text, /An old header/);
  assert.match(text, /^# phi2-bench results\n\nWritten by `phi2-bench --write-results`/);
  assert.match(text, /x86 family and model/);
  assert.match(text, /<!-- phi2-bench:a -->\nold a\n<!-- \/phi2-bench:a -->/);
  assert.match(text, /<!-- phi2-bench:b -->\nnew b\n<!-- \/phi2-bench:b -->/);
  // Text before the first section that the tool did not write is the user's: it stays.
  const mine = '# phi2-bench results (serve runs, my laptop)\n\nNotes: mine.\n\n';
  writeFileSync(file, `${mine}<!-- phi2-bench:a -->\nold a\n<!-- /phi2-bench:a -->\n`);
  writeSection(file, 'a', 'new a');
  text = readFileSync(file, 'utf8');
  assert.ok(text.startsWith(mine), text);
  assert.match(text, /<!-- phi2-bench:a -->\nnew a\n<!-- \/phi2-bench:a -->/);
  rmSync(dir, { recursive: true, force: true });
});

test('bandwidth probe returns a positive, finite rate', async () => {
  const b = await measureBandwidth({ threads: 2, bufferBytes: 64 << 20, passes: 2 });
  assert.ok(Number.isFinite(b.gbPerS) && b.gbPerS > 0);
  assert.equal(b.passesGbPerS.length, 2);
  // Both probes ran (the addon is built in this checkout); the ceiling is the better one.
  assert.ok(Number.isFinite(b.wasmGbPerS) && b.wasmGbPerS > 0);
  assert.ok(Number.isFinite(b.nativeGbPerS) && b.nativeGbPerS > 0);
  assert.equal(b.gbPerS, Math.max(b.wasmGbPerS, b.nativeGbPerS));
  assert.match(b.method, b.nativeGbPerS > b.wasmGbPerS ? /^native read .* 2 MB pages/ : /^wasm SIMD128/);
});

describe('end to end', () => {
  const common = ['--runs', '2', '--prompt-tokens', '8,16', '--gen-tokens', '4', '--threads', '1', '--bandwidth-mb', '32'];
  test('--synthetic (test shape) vs node-llama-cpp, --json', () => {
    const r = bench(['--synthetic', 'q4_k_m', '--shape', 'test', '--cache-dir', cache, ...common, '--compare', 'node-llama-cpp', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.equal(j.engines.length, 2);
    assert.deepEqual(j.engines.map((e) => e.id), ['phi2', 'node-llama-cpp']);
    for (const e of j.engines) {
      assert.equal(e.runs.length, 2);
      for (const run of e.runs) {
        assert.equal(run.error, undefined);
        assert.ok(run.loadMs > 0 && run.peakRss > 0);
        assert.equal(run.loadState, 'warm');
        assert.deepEqual(run.prompts.map((p) => p.promptTokens), [8, 16]);
        for (const p of run.prompts) {
          assert.equal(p.generated, 4);
          assert.ok(p.promptMs > 0 && p.generateMs > 0);
        }
      }
    }
    assert.ok(j.bandwidth.gbPerS > 0);
    assert.ok(j.model.bytesPerToken > 0);
    const [ours, llama] = j.summary.native;
    // Every native run has its own probe beside it, and its decode share against that probe.
    for (const e of j.engines) for (const run of e.runs) assert.ok(run.bandwidthBeside > 0, `${e.id}: bandwidthBeside ${run.bandwidthBeside}`);
    for (const s of j.summary.native) {
      const per = j.engines.find((e) => e.label === s.label).runs.map((run) => (100 * (3 / run.prompts[1].generateMs) * 1000 * j.model.bytesPerToken) / (run.bandwidthBeside * 1e9));
      assert.ok(Math.abs(s.stats['shareBeside@16'].median - (per[0] + per[1]) / 2) < 1e-9, `${s.label}: shareBeside@16`);
    }
    // The share with the KV cache's reads: the test shape's keys and values per position (2 per
    // layer, each as wide as the hidden size: no grouped heads), 16 + 4 / 2 positions on average,
    // f32 for ours and f16 for llama.cpp's.
    assert.equal(j.model.kvValuesPerPosition, 2 * SHAPES.test.layers * SHAPES.test.hidden);
    assert.deepEqual(j.engines.map((e) => e.kvBytes), [4, 2]);
    for (const s of j.summary.native) {
      const e = j.engines.find((x) => x.label === s.label);
      const step = j.model.bytesPerToken + j.model.kvValuesPerPosition * e.kvBytes * 18;
      const per = e.runs.map((run) => (100 * (3 / run.prompts[1].generateMs) * 1000 * step) / (run.bandwidthBeside * 1e9));
      assert.ok(Math.abs(s.stats['shareKvBeside@16'].median - (per[0] + per[1]) / 2) < 1e-9, `${s.label}: shareKvBeside@16`);
    }
    for (const k of ['load', 'rssLoad', 'rss', 'rssFile', 'ttft@8', 'prefill@16', 'decode@16', 'share@16', 'shareBeside@16', 'bwBeside']) {
      assert.ok(Number.isFinite(ours.stats[k].median), k);
      assert.equal(ours.stats[k].n, 2);
      assert.ok(ours.stats[k].min <= ours.stats[k].median && ours.stats[k].median <= ours.stats[k].max);
      assert.ok(Number.isFinite(llama.stats[k].median), k);
    }
    // peak RSS: at load no more than over the whole run; ÷ file size = the whole run's / the file's
    for (const e of [ours, llama]) {
      assert.ok(e.stats.rssLoad.median <= e.stats.rss.median);
      assert.ok(Math.abs(e.stats.rssFile.median - (e.stats.rss.median * 1e9) / j.model.sizeBytes) < 1e-9);
    }
    assert.match(j.command, /^phi2-bench --synthetic q4_k_m --shape test/);
  });

  test('--model (tiny fixture), table output and --write-results', () => {
    const model = path.join(fixtures, 'tiny-q8_0.gguf');
    assert.ok(existsSync(model), `${model} missing: run target/release/phi2-fixtures --out test/fixtures/gen`);
    const results = path.join(tmp, 'RESULTS.md');
    const r = bench(['--model', model, ...common, '--write-results', results]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /memory read bandwidth: [\d.]+ GB\/s/);
    assert.match(r.stdout, /prefill tok\/s \(16 tokens\)/);
    assert.match(r.stdout, /decode tok\/s \(after 8\)/);
    assert.match(r.stdout, /peak RSS when loaded, GB/);
    assert.match(r.stdout, /peak RSS GB/);
    assert.match(r.stdout, /peak RSS ÷ model file size/);
    assert.match(r.stdout, /decode, % of the bandwidth beside its run/);
    assert.match(r.stdout, /decode, % of the bandwidth beside its run, weights \+ KV-cache reads/);
    assert.match(r.stdout, /KV cache per position: 256 numbers \(keys \+ values, all layers\)/);
    assert.match(r.stdout, /weights \+ KV-cache reads: a decode step also reads/);
    assert.match(r.stdout, /memory read bandwidth beside the run, GB\/s/);
    const first = readFileSync(results, 'utf8');
    assert.match(first, /^# phi2-bench results/);
    assert.equal(first.match(/<!-- phi2-bench:/g).length, 1);
    assert.match(first, /command: `phi2-bench --model /);
    assert.match(first, /\| metric \| @x\/phi2 cpu \|/);
    // same configuration again: its section is replaced; another configuration: appended
    assert.equal(bench(['--model', model, ...common, '--write-results', results, '--no-bandwidth']).code, 0);
    const second = readFileSync(results, 'utf8');
    assert.equal(second.match(/<!-- phi2-bench:/g).length, 1);
    assert.doesNotMatch(second, /memory read bandwidth/);
    assert.equal(bench(['--model', model, ...common.slice(0, -4), '--gen-tokens', '3', '--no-bandwidth', '--write-results', results]).code, 0);
    assert.equal(readFileSync(results, 'utf8').match(/<!-- phi2-bench:/g).length, 2);
  });

  test('--backend wasm, --markdown', () => {
    const model = path.join(fixtures, 'tiny-q8_0.gguf');
    const r = bench(['--model', model, '--backend', 'wasm', '--runs', '1', '--prompt-tokens', '8', '--gen-tokens', '3', '--threads', '2', '--no-bandwidth', '--markdown']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /\| metric \| @x\/phi2 wasm \|/);
    assert.match(r.stdout, /\| decode tok\/s \(after 8\) \| [\d.]+ \|/);
    // --no-bandwidth: no probe beside the runs, so neither its rows nor its note.
    assert.doesNotMatch(r.stdout, /beside/);
  });

  test('--kv-cache f16 reaches the engine and names the run', () => {
    const model = path.join(fixtures, 'tiny-q8_0.gguf');
    const args = ['--model', model, '--runs', '1', '--prompt-tokens', '8', '--gen-tokens', '3', '--threads', '1', '--no-bandwidth', '--kv-cache', 'f16'];
    const j = JSON.parse(bench([...args, '--json']).stdout);
    assert.equal(j.engines[0].runs[0].error, undefined);
    assert.equal(j.engines[0].runs[0].info.kvCache, 'f16');
    assert.equal(j.engines[0].label, '@x/phi2 cpu (f16 KV)');
    const results = path.join(tmp, 'RESULTS-kv.md');
    assert.equal(bench([...args, '--write-results', results]).code, 0);
    const text = readFileSync(results, 'utf8');
    // Sections are kept per CPU model: the key and the heading name the one the report names.
    assert.ok(j.machine.cpu, 'the report names its CPU');
    const tag = cpuTag(j.machine.cpu, j.machine.cpuId);
    if (process.platform === 'linux' && process.arch === 'x64') assert.match(tag, /-f\d+m\d+$/, 'on Linux x86 the key names family and model');
    assert.ok(text.includes(`<!-- phi2-bench:tiny-q8_0.gguf cpu kv-f16 t1 p8 g3 on-${tag} -->`), `the section key ends in on-${tag}`);
    assert.match(text, /## tiny-q8_0.gguf, cpu, f16 KV cache, 1 threads, on \S/);
    assert.match(text, /KV cache: f16 for @x\/phi2/);
  });

  test('a run that fails is reported and the exit status is 1', () => {
    // a context too short for the prompt: the engine refuses, the tool says so
    const model = path.join(fixtures, 'tiny-q8_0.gguf');
    const r = bench(['--model', model, '--runs', '1', '--prompt-tokens', '200', '--gen-tokens', '4', '--threads', '1', '--no-bandwidth']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /FAILED: E_PROMPT_TOO_LONG/);
    assert.match(r.stdout, /1 of 1 runs failed/);
  });
});

describe('--backend cuda', () => {
  const common = ['--synthetic', 'q4_0', '--shape', 'test', '--cache-dir', cache, '--runs', '1', '--prompt-tokens', '8', '--gen-tokens', '3'];
  const noDriver = !['/dev/nvidiactl', '/dev/nvidia0', '/proc/driver/nvidia/version'].some((p) => existsSync(p));

  test('without a usable GPU: exit 2, naming why, before any run', { skip: !noDriver && 'this machine has an NVIDIA driver (test/device covers it)' }, () => {
    // The ceiling is the GPU's (a device copy through the CUDA addon), so that is asked first.
    const c = bench([...common, '--backend', 'cuda']);
    assert.equal(c.code, 2, c.stderr);
    assert.doesNotMatch(c.stderr, /run 1\/1/);
    assert.match(c.stderr, /--backend cuda: the CUDA addon does not load: /);
  });

  test('--compare transformers runs the Python peer and reports it beside @x/phi2', () => {
    // A stand-in for python3 that answers as bench/peers/transformers_peer.py does; the real peer
    // needs a GPU with torch (test/device). @x/phi2's own cuda runs fail here, and say so.
    const fake = path.join(tmp, 'fake-python.mjs');
    writeFileSync(fake, `#!${process.execPath}
const [script, json] = process.argv.slice(2);
const cfg = JSON.parse(json);
if (!script.endsWith('transformers_peer.py') || cfg.engine !== 'transformers' || cfg.shape.hidden !== 256) process.exit(3);
const prompts = cfg.promptTokens.map((p) => ({ promptTokens: p, promptTokensEvaluated: p, finishReason: 'length', promptMs: 2, generateMs: 4, generated: cfg.genTokens, wallMs: 6 }));
console.log('PHI2BENCH_RESULT ' + JSON.stringify({ loadMs: 100, rssAfterLoad: 1e9, peakRssAfterLoad: 1e9, peakRss: 1e9, info: { torch: 'fake' }, prompts }));
`, { mode: 0o755 });
    const r = spawnSync(process.execPath, [bin, ...common, '--backend', 'cuda', '--no-bandwidth', '--compare', 'transformers', '--json'], {
      encoding: 'utf8', cwd: tmp, timeout: 600_000, env: { ...process.env, PHI2_PYTHON: fake, PHI2_CUDA: '0' },
    });
    assert.equal(r.status, 1, r.stderr); // @x/phi2 cuda could not run here
    const j = JSON.parse(r.stdout);
    assert.deepEqual(j.engines.map((e) => e.id), ['phi2', 'transformers']);
    assert.match(j.engines[0].runs[0].error, /E_BACKEND_UNAVAILABLE.*PHI2_CUDA=0/);
    const peer = j.engines[1].runs[0];
    assert.equal(peer.error, undefined);
    assert.deepEqual(peer.prompts.map((p) => [p.promptTokens, p.generated]), [[8, 3]]);
  });
});

