// The page side of bench/browser-decode.mjs: window.bench drives one engine at a time.
// The page's import map resolves '@x/phi2' (the SDK's dist/browser.js) and '@wllama/wllama' (its esm/index.js):
// bench/browser/index.html for bench/browser-decode.mjs (repository tree served at /), and the page
// phi2-bench generates (lib/browser.mjs, installed packages mounted under /pkg/).
// Each run returns the engine's own prompt time and decode rate (@x/phi2: timings.promptMs,
// timings.tokensPerSecond = tokens / generateMs; wllama = llama-server's timings.prompt_ms,
// predicted_per_second = predicted_n / predicted_ms) and the page's wall clock of the whole call.
import * as phi2 from '@x/phi2';
import { Wllama } from '@wllama/wllama';

const EOS = 50256;
let model = null; // @x/phi2
let wllama = null;

window.bench = {
  isolated: () => self.crossOriginIsolated,

  async loadPhi2(url, threads, contextLength) {
    const t0 = performance.now();
    model = await phi2.loadModel(url, { backend: 'wasm', threads, cache: false, contextLength });
    const loadMs = performance.now() - t0;
    return { loadMs, runtime: model.info.runtime, dtype: model.info.dtype };
  },
  async runPhi2(prompt, n) {
    const t0 = performance.now();
    const r = await model.generate(prompt, { maxNewTokens: n, doSample: false, logitBias: { [EOS]: -Infinity } });
    const wallMs = performance.now() - t0;
    return {
      wallMs,
      tokens: r.tokens.length,
      promptTokens: r.usage.promptTokens,
      promptMs: r.timings.promptMs,
      generateMs: r.timings.generateMs, // first token → last: tokens − 1 decode steps
      decodeTokPerS: r.timings.tokensPerSecond,
      ids: r.tokens,
    };
  },
  async disposePhi2() {
    await model?.dispose();
    model = null;
  },

  async loadWllama(url, threads, nCtx) {
    const base = new URL('./', import.meta.resolve('@wllama/wllama')).pathname;
    const t0 = performance.now();
    wllama = new Wllama({ default: base + 'wasm/wllama.wasm' }, { suppressNativeLog: true, logger: { ...console, debug: () => {}, log: () => {} } });
    // loadModelFromUrl writes the file into the origin's storage first (its cache manager, even with
    // useCache: false), which a fresh browser context's quota refuses for 1.57 GB: fetch it as a Blob.
    const blob = await (await fetch(url)).blob();
    await wllama.loadModel([blob], {
      n_threads: threads,
      n_ctx: nCtx,
      n_batch: 512,
      n_parallel: 1,
      n_gpu_layers: 0, // CPU (wasm SIMD) only, like @x/phi2's wasm backend
    });
    const loadMs = performance.now() - t0;
    return { loadMs, multithread: wllama.isMultithread(), threads: wllama.getNumThreads() };
  },
  async runWllama(prompt, n) {
    const t0 = performance.now();
    // Not streamed: wllama 3.13's stream chunks fail on a token that is an incomplete UTF-8
    // sequence ("invalid UTF-8 byte", then "Invalid magic number"), which random weights produce.
    const r = await wllama.createCompletion({
      prompt, // a string: wllama 3.13's glue takes no token-id prompts ("type must be string")
      max_tokens: n,
      temperature: 0, // greedy
      top_k: 1,
      ignore_eos: true,
      cache_prompt: false, // re-evaluate the prompt every run
    });
    const wallMs = performance.now() - t0;
    return {
      wallMs,
      tokens: r.timings.predicted_n,
      promptTokens: r.usage.prompt_tokens,
      promptMs: r.timings.prompt_ms,
      generateMs: r.timings.predicted_ms, // llama-server: from the first token (sampled with the prompt) to the last
      decodeTokPerS: r.timings.predicted_per_second,
      text: r.choices[0].text,
    };
  },
  async disposeWllama() {
    await wllama?.exit();
    wllama = null;
  },
};
document.getElementById('log').textContent = 'ready';
