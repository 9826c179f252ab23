/**
 * @x/phi2 for browsers and bundlers (the package's `"browser"` export condition): the same API as
 * the Node entry — the wasm engine (wasm32 + SIMD128, threaded where the page is cross-origin
 * isolated) runs in a module Web Worker — minus the Node-only helpers (`defaultModelPath`,
 * `hasDefaultModel`, `bundledTokenizer`), plus {@link defaultModelUrl}.
 *
 * ```ts
 * import { loadModel, defaultModelUrl } from '@x/phi2'
 * const model = await loadModel(defaultModelUrl(), { onProgress: (p) => console.log(p.phase, p.progress) })
 * for await (const c of model.stream('def is_prime(n):', { format: 'code' })) out.textContent += c.text
 * ```
 */
import type { EngineModelInfo } from './engine.js'
import { Phi2BackendUnavailableError, Phi2Error, Phi2ModelLoadError, abortErrorFrom } from './errors.js'
import { type Phi2Model, loadWithEngine } from './model.js'
import { type LoadOptions, LoadOptionsSchema, parseOptions } from './options.js'
import { parseHubId, resolveBrowserHubUrl } from './hub.js'
import { type ModelSource, sourceFromValue } from './sources.js'
import { type WasmEnvironment, wasmEngine } from './wasm/client.js'

const browserEnv: WasmEnvironment = {
  platform: 'browser',
  spawn(on) {
    const worker = new Worker(new URL('./wasm-worker.js', import.meta.url), { type: 'module' })
    worker.addEventListener('message', (e: MessageEvent) => on.message(e.data))
    worker.addEventListener('messageerror', () => on.error(new Error('a message from the engine worker could not be deserialized')))
    worker.addEventListener('error', (e: ErrorEvent) => {
      e.preventDefault()
      on.error(e.error ?? new Error(e.message || 'the worker script failed to load or threw'))
    })
    return {
      post: (msg, transfer) => worker.postMessage(msg, transfer ?? []),
      terminate: () => worker.terminate(),
    }
  },
  sharedMemory() {
    const isolated = (globalThis as { crossOriginIsolated?: boolean }).crossOriginIsolated === true
    if (!isolated) {
      return { usable: false, reason: 'page is not cross-origin isolated (no COOP/COEP headers): SharedArrayBuffer unavailable' }
    }
    if (typeof SharedArrayBuffer !== 'function') return { usable: false, reason: 'SharedArrayBuffer is not available in this browser' }
    return { usable: true, reason: 'cross-origin isolated: SharedArrayBuffer available' }
  },
  defaultThreads: () => (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator?.hardwareConcurrency ?? 1,
}

let engine: ReturnType<typeof wasmEngine> | undefined

function noTokenizer(_info: EngineModelInfo): never {
  throw new Phi2Error(
    'E_TOKENIZER',
    'This GGUF file has no tokenizer in its metadata (tokenizer.ggml.*). In browsers the tokenizer comes from the GGUF ' +
      '(the bundled Phi-2 tokenizer needs Node files): use a GGUF converted with its tokenizer (llama.cpp convert_hf_to_gguf.py does this).',
  )
}

/**
 * Loads a Phi-2 GGUF model into the wasm engine (a module Web Worker). `source`: a URL string
 * (relative to the page), a `URL`, a `Blob` / `File`, an `ArrayBuffer` or a `Uint8Array` (buffers
 * are transferred to the worker, i.e. detached here; pass `bytes.slice()` to keep a copy). URLs are
 * fetched by the worker (progress: `phase: 'download'`) and kept in the Cache API (`cache: false`
 * to skip). Rejects with {@link Phi2ModelLoadError} (`E_IO`, `E_MALFORMED_FILE`, `E_MODEL_TOO_LARGE`,
 * `E_UNSUPPORTED_FORMAT`, `E_UNKNOWN_SIZE`, ...), {@link Phi2OptionsError},
 * {@link Phi2BackendUnavailableError} (`backend: 'cpu' | 'cuda'`) or {@link Phi2AbortError}.
 */
export async function loadModel(source: ModelSource, options?: LoadOptions): Promise<Phi2Model> {
  const opts = parseOptions(LoadOptionsSchema, options, 'loadModel')
  const backend = opts.backend ?? 'auto'
  if (backend === 'cpu' || backend === 'cuda') {
    throw new Phi2BackendUnavailableError(
      backend,
      `The '${backend}' backend is not available in browsers: use backend 'wasm' (or 'auto')`,
    )
  }
  if (opts.signal?.aborted) throw abortErrorFrom(opts.signal)
  const base = (globalThis as { location?: { href?: string } }).location?.href
  // Hugging Face Hub ids (hf:ORG/REPO/FILE.gguf) → the Hub's file URL at the commit `revision` is at.
  const hubUrl =
    typeof source === 'string'
      ? await resolveBrowserHubUrl(source, { revision: opts.revision, endpoint: opts.hubEndpoint, useCache: opts.cache !== false, signal: opts.signal })
      : null
  if (opts.signal?.aborted) throw abortErrorFrom(opts.signal)
  const { source: engineSource, display } = sourceFromValue(hubUrl ?? source, base)
  engine ??= wasmEngine(browserEnv)
  try {
    return await loadWithEngine({
      engine,
      source: engineSource,
      display,
      options: opts,
      useGgufVocab: true,
      fallbackTokenizer: noTokenizer,
    })
  } catch (err) {
    // A bare ORG/REPO is a relative URL here; when nothing is there, say how to name the Hub.
    if (typeof source === 'string' && hubUrl === null && err instanceof Phi2ModelLoadError && err.code === 'E_IO' && parseHubId(source, true)) {
      throw new Phi2ModelLoadError(
        err.code,
        err.source,
        `${err.message} (${JSON.stringify(source)} was loaded as a URL relative to the page; in browsers a Hugging Face id needs the hf: prefix, e.g. hf:${source}/FILE.gguf)`,
        { cause: err },
      )
    }
    throw err
  }
}

/** URL of the embedded default model (a small Phi-2-architecture GGUF trained on CPython's stdlib and docs, Q8_0, ~17 MB; not Phi-2; bundlers copy it). */
export function defaultModelUrl(): string {
  return new URL('../models/default.gguf', import.meta.url).href
}

export * from './api.js'
