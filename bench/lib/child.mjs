// One measured run in its own process (so peak RSS is this run's alone): load the model, one
// short warm-up generation, then for each prompt size one generation of `genTokens` greedy tokens
// from a fresh context. Prints one line `PHI2BENCH_RESULT {json}` on stdout.
//   node child.mjs '{"engine":"phi2"|"node-llama-cpp","model":FILE,"threads":N,"backend":"cpu",
//                    "promptTokens":[128],"genTokens":64,"warmup":true[,"kvCache":"f16"]}'
import { readFileSync, realpathSync, statSync } from 'node:fs';
import { promptIds } from './prompt.mjs';

const cfg = JSON.parse(process.argv[2]);
const peakRss = () => process.resourceUsage().maxRSS * 1024; // getrusage ru_maxrss (kB) = Linux VmHWM
const maxP = Math.max(...cfg.promptTokens);

// Linux: the share of the model file this process maps with 2 MB page-table entries (file pages
// cached in 2 MB folios; weights stream faster from them), read while the model is loaded: the
// FilePmdMapped of the mappings of that file in /proc/self/smaps.
function hugePageShare() {
  try {
    const file = realpathSync(cfg.model);
    let mine = false;
    let kb = 0;
    for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
      if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) mine = line.endsWith(` ${file}`);
      else if (mine && line.startsWith('FilePmdMapped:')) kb += Number(line.split(/\s+/)[1]);
    }
    return Math.min(1, (kb * 1024) / statSync(file).size);
  } catch {
    return null;
  }
}
const EOS = 50256;

async function phi2() {
  const { loadModel } = await import('@x/phi2');
  const t0 = performance.now();
  const model = await loadModel(cfg.model, { threads: cfg.threads, backend: cfg.backend, ...(cfg.kvCache ? { kvCache: cfg.kvCache } : {}) });
  const loadMs = performance.now() - t0;
  const out = { loadMs, rssAfterLoad: process.memoryUsage().rss, peakRssAfterLoad: peakRss(), info: { ...model.info }, prompts: [] };
  const opts = (n) => ({ maxNewTokens: n, doSample: false, logitBias: { [model.info.eosTokenId ?? EOS]: -Infinity } });
  try {
    if (cfg.warmup) await model.generate(promptIds(4), opts(2));
    for (const p of cfg.promptTokens) {
      const ids = promptIds(p);
      const t = performance.now();
      const r = await model.generate(ids, opts(cfg.genTokens));
      const wallMs = performance.now() - t;
      out.prompts.push({
        promptTokens: r.usage.promptTokens,
        promptTokensEvaluated: r.usage.promptTokensEvaluated,
        generated: r.usage.completionTokens,
        finishReason: r.finishReason,
        promptMs: r.timings.promptMs, // engine clock: start of the call → first token sampled
        generateMs: r.timings.generateMs, // first token → last token: generated − 1 decode steps
        wallMs,
      });
    }
    // The wasm backend copies the file into its memory: no file map to report.
    if (cfg.backend !== 'wasm') out.hugePageShare = hugePageShare();
  } finally {
    await model.dispose();
  }
  return out;
}

async function llamaCpp() {
  process.env.NODE_LLAMA_CPP_SKIP_DOWNLOAD = 'true';
  const { getLlama, LlamaLogLevel } = await import('node-llama-cpp');
  const llama = await getLlama({ gpu: false, build: 'never', maxThreads: cfg.threads, logLevel: LlamaLogLevel.error });
  const t0 = performance.now();
  const model = await llama.loadModel({ modelPath: cfg.model });
  const loadOnlyMs = performance.now() - t0;
  const ctx = await model.createContext({
    contextSize: Math.min(model.trainContextSize, maxP + cfg.genTokens + 16),
    batchSize: maxP, // the whole prompt in one batch, as @x/phi2 does
    threads: { ideal: cfg.threads, min: cfg.threads },
    sequences: 1,
  });
  const loadMs = performance.now() - t0;
  const out = { loadMs, loadOnlyMs, rssAfterLoad: process.memoryUsage().rss, peakRssAfterLoad: peakRss(), info: { llamaCpp: llama.llamaCppRelease?.release, buildType: llama.buildType, gpu: llama.gpu, cpuMathCores: llama.cpuMathCores }, prompts: [] };
  const seq = ctx.getSequence();
  // Greedy; EOS is yielded and generation goes on (llama.cpp cannot ban it through node-llama-cpp's
  // TokenBias), so both engines run exactly genTokens steps; eogTokens reports how often it came up.
  const run = async (ids, n) => {
    await seq.clearHistory();
    const t = performance.now();
    let first = null;
    let count = 0;
    let eog = 0;
    for await (const tok of seq.evaluate(ids, { temperature: 0, yieldEogToken: true })) {
      if (count === 0) first = performance.now();
      count++;
      if (model.isSpecialToken?.(tok) || tok === EOS) eog++;
      if (count >= n) break;
    }
    const end = performance.now();
    return { promptMs: first - t, generateMs: end - first, generated: count, eogTokens: eog, wallMs: end - t };
  };
  try {
    if (cfg.warmup) await run(promptIds(4), 2);
    for (const p of cfg.promptTokens) {
      const r = await run(promptIds(p), cfg.genTokens);
      out.prompts.push({ promptTokens: p, promptTokensEvaluated: p, finishReason: 'length', ...r });
    }
    out.hugePageShare = hugePageShare();
  } finally {
    await ctx.dispose();
    await model.dispose();
    await llama.dispose?.();
  }
  return out;
}

try {
  const out = cfg.engine === 'phi2' ? await phi2() : await llamaCpp();
  out.peakRss = peakRss();
  process.stdout.write(`\nPHI2BENCH_RESULT ${JSON.stringify(out)}\n`);
} catch (e) {
  process.stdout.write(`\nPHI2BENCH_RESULT ${JSON.stringify({ error: `${e?.code ? e.code + ': ' : ''}${e?.message ?? e}` })}\n`);
  process.exitCode = 1;
}
