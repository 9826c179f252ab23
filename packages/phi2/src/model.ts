/**
 * `Phi2Model` and the platform-neutral half of `loadModel()` (`loadWithEngine`): no `node:` imports.
 * The entries (`index.ts` for Node, `browser.ts`) turn a source into an {@link EngineSource}, pick
 * the engine and the tokenizer fallback, and call `loadWithEngine`.
 */
import { Phi2Chat, type ChatHost } from './chat.js'
import type { Engine, EngineGgufVocab, EngineLoaded, EngineModel, EngineModelInfo, EngineRuntime, EngineSession, EngineSource } from './engine.js'
import {
  Phi2DisposedError,
  Phi2Error,
  abortErrorFrom,
  fromNativeError,
} from './errors.js'
import {
  type GenerateChunk,
  type GenerateResult,
  type GenerationHost,
  type GenerationStream,
  type CancellableWork,
  GenerationJob,
  checkTokenIds,
  makeStream,
  resolveGeneration,
} from './generation.js'
import {
  type ChatOptions,
  ChatOptionsSchema,
  type GenerateOptions,
  GenerateOptionsSchema,
  type LoadOptions,
  type LogprobsOptions,
  LogprobsOptionsSchema,
  invalidOption,
  parseOptions,
} from './options.js'
import { formatPrompt } from './prompts.js'
import { type PerplexityOptions, type PerplexityResult, measurePerplexity } from './perplexity.js'
import { type Phi2Tokenizer, type TokenizerSource, tokenizerFromGguf } from './tokenizer.js'

/** `model.info.runtime`: which engine build runs and why. */
export interface ModelRuntime {
  backend: 'cpu' | 'cuda' | 'wasm'
  /**
   * `'native'` (CPU addon), `'native-cuda'` (CUDA addon), `'wasm-simd'` (single-threaded wasm),
   * `'wasm-simd-threads'` (wasm with a thread pool).
   */
  build: 'native' | 'native-cuda' | 'wasm-simd' | 'wasm-simd-threads'
  /** Native builds: the device the model runs on, `'cpu'` or e.g. `'cuda:0 (NVIDIA H200, compute 9.0)'`. */
  device?: string
  /**
   * wasm only: which wasm build runs: `'st'` (SIMD128), `'mt'` (SIMD128 + threads) or `'relaxed'`
   * (mt plus relaxed SIMD, picked over mt where the JS engine validates relaxed SIMD and passes a self-test).
   */
  flavour?: 'st' | 'mt' | 'relaxed'
  /** Compute threads in use. */
  threads: number
  /** Why this path runs, e.g. `'threads: 1 requested: single-threaded SIMD build'`. */
  reason: string
}

/** `model.info.format`. */
export type ModelFormat = 'gguf' | 'safetensors'

function modelFormat(format: string): ModelFormat {
  const f = format.toLowerCase()
  if (f === 'gguf' || f === 'safetensors') return f
  throw new Phi2Error('E_INTERNAL', `The engine reported an unknown model format ${JSON.stringify(format)}`)
}

/** What `model.info` reports. */
export interface ModelInfo {
  /** `'phi2'`. */
  architecture: string
  /** The file format: `'gguf'` or `'safetensors'`. */
  format: ModelFormat
  /** Bulk weight type: `f32`, `f16`, `bf16`, `q8_0`, `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q4_K`, `q5_K`, `q6_K`. */
  dtype: string
  /** The compute backend in use: `'cpu'` (native addon), `'cuda'` (CUDA addon) or `'wasm'` (wasm engine in a Worker). */
  backend: 'cpu' | 'cuda' | 'wasm'
  /** Which engine build runs, with how many threads, and why. */
  runtime: ModelRuntime
  /**
   * What was loaded: the absolute path of a file or directory, a URL's href, a File's name, or
   * `'blob'` / `'bytes'` for unnamed Blobs and byte buffers.
   */
  source: string
  /** Total size of the weight files, bytes. */
  fileSizeBytes: number
  /** wasm backend: whether the file came from the Cache API (false otherwise). */
  fromCache: boolean
  /** sha256 of the file (lowercase hex) when the engine computed it (wasm URL sources), else null. */
  sha256: string | null
  /** Where the tokenizer came from: the model's `tokenizer.json`, the GGUF metadata, or the bundled Phi-2 tokenizer. */
  tokenizer: TokenizerSource
  /** Rows of the embedding / logits (51200 for Phi-2); `logprobs()` rows have this many floats. */
  vocabSize: number
  /** Ids >= this are padding and never generated (50295 for Phi-2). */
  tokenizerSize: number
  /** The context window in use (the `contextLength` load option, else the model's). */
  contextLength: number
  /** The context window the model was trained with (2048 for Phi-2). */
  trainedContextLength: number
  /** What the KV cache stores: the `kvCache` load option (default `'f32'`). */
  kvCache: 'f32' | 'f16'
  hiddenSize: number
  intermediateSize: number
  numLayers: number
  numHeads: number
  headDim: number
  rotaryDim: number
  ropeTheta: number
  layerNormEps: number
  /** `<|endoftext|>` (50256 for Phi-2), or null. */
  eosTokenId: number | null
}

/** What the platform entry hands to {@link loadWithEngine}. */
export interface LoadPlan {
  engine: Engine
  source: EngineSource
  /** `model.info.source`. */
  display: string
  options: LoadOptions
  /**
   * The tokenizer when the GGUF metadata has none (or the model is not a GGUF): Node reads
   * tokenizer.json / the bundled tokenizer; browsers throw a typed error.
   */
  fallbackTokenizer(info: EngineModelInfo): Phi2Tokenizer
  /** Whether the model's own GGUF vocabulary may be used (false for directories / safetensors). */
  useGgufVocab: boolean
  /** Size of the weights when the engine does not report one (Node: sizes on disk). */
  fileSize?: () => number
  /** Why the backend asked for was not used (`'auto'` without CUDA): starts `runtime.reason`. */
  note?: string
}

/** The platform-neutral load: engine load (abortable, with progress) → tokenizer → `Phi2Model`. */
export async function loadWithEngine(plan: LoadPlan): Promise<Phi2Model> {
  const opts = plan.options
  const signal = opts.signal
  if (signal?.aborted) throw abortErrorFrom(signal)
  const progress = opts.onProgress ?? (() => {})
  progress({ phase: 'loading', progress: 0 })
  let loaded: EngineLoaded
  try {
    loaded = await plan.engine.load(plan.source, {
      threads: opts.threads ?? null,
      ...(signal ? { signal } : {}),
      onProgress: progress,
      cache: opts.cache ?? true,
      contextLength: opts.contextLength ?? null,
      kvCache: opts.kvCache ?? null,
      ...(plan.note ? { note: plan.note } : {}),
    })
  } catch (err) {
    throw fromNativeError(err, { loading: plan.display })
  }
  const native = loaded.model
  try {
    progress({ phase: 'loading', progress: 1 })
    const info = native.info
    let tokenizer: Phi2Tokenizer | null = null
    if (plan.useGgufVocab) {
      const vocab: EngineGgufVocab | null = native.ggufVocab()
      if (vocab) tokenizer = tokenizerFromGguf(vocab)
    }
    tokenizer ??= plan.fallbackTokenizer(info)
    progress({ phase: 'tokenizer', progress: 1 })
    // An engine build that predates the option ignores it: refuse rather than run another cache.
    if (opts.kvCache !== undefined && (info.kvCache ?? 'f32') !== opts.kvCache) {
      invalidOption('kvCache', 'loadModel', `'${opts.kvCache}' is not supported by this engine build (it keeps an ${info.kvCache ?? 'f32'} KV cache)`)
    }
    const trainedContextLength = info.trainedContextLength ?? info.contextLength
    let contextLength = info.contextLength
    if (opts.contextLength !== undefined) {
      if (opts.contextLength > trainedContextLength) {
        invalidOption(
          'contextLength',
          'loadModel',
          `must be at most the model's context length ${trainedContextLength}, got ${opts.contextLength}`,
        )
      }
      contextLength = opts.contextLength
    }
    const runtime: EngineRuntime = loaded.runtime
    const model = new Phi2Model(plan.engine, native, tokenizer, {
      architecture: info.architecture,
      format: modelFormat(info.format),
      dtype: info.dtype,
      backend: plan.engine.backend,
      runtime: { ...runtime },
      source: plan.display,
      fileSizeBytes: loaded.fileSizeBytes ?? plan.fileSize?.() ?? 0,
      fromCache: loaded.fromCache,
      sha256: loaded.sha256,
      tokenizer: tokenizer.source,
      vocabSize: info.vocabSize,
      tokenizerSize: info.tokenizerSize,
      contextLength,
      trainedContextLength,
      kvCache: info.kvCache ?? 'f32',
      hiddenSize: info.hiddenSize,
      intermediateSize: info.intermediateSize,
      numLayers: info.numLayers,
      numHeads: info.numHeads,
      headDim: info.headDim,
      rotaryDim: info.rotaryDim,
      ropeTheta: info.ropeTheta,
      layerNormEps: info.layerNormEps,
      eosTokenId: info.eosTokenId ?? null,
    })
    if (signal?.aborted) {
      model.dispose()
      throw abortErrorFrom(signal)
    }
    progress({ phase: 'ready', progress: 1 })
    return model
  } catch (err) {
    if (!native.disposed) safeDispose(native)
    if (err instanceof Phi2Error) throw err
    throw fromNativeError(err, { loading: plan.display })
  }
}

function safeDispose(x: { dispose(): void }): void {
  try {
    x.dispose()
  } catch {
    // already disposed / model gone: nothing to release
  }
}

/** @internal the engine model behind a Phi2Model (tests reach the wasm engine's crash hook through it). */
export const ENGINE_MODEL: unique symbol = Symbol.for('@x/phi2/engine-model') as never
/** @internal the tokenizer behind a Phi2Model (`phi2 serve` assembles text from the batch engine's tokens). */
export const MODEL_TOKENIZER: unique symbol = Symbol.for('@x/phi2/model-tokenizer') as never

/** A loaded Phi-2 model. Create it with {@link loadModel}; release it with `dispose()` (or `await using`). */
export class Phi2Model {
  /** Model facts: architecture, sizes, dtype, format, backend, context length, tokenizer source. */
  readonly info: Readonly<ModelInfo>
  readonly #engine: Engine
  readonly #native: EngineModel
  readonly #tokenizer: Phi2Tokenizer
  readonly #work = new Set<CancellableWork>()
  readonly #chats = new Set<Phi2Chat>()
  #disposed = false
  readonly #host: ChatHost

  /** @internal use {@link loadModel}. */
  constructor(engine: Engine, native: EngineModel, tokenizer: Phi2Tokenizer, info: ModelInfo) {
    this.#engine = engine
    this.#native = native
    this.#tokenizer = tokenizer
    this.info = Object.freeze(info)
    const self = this
    this.#host = {
      engine,
      tokenizer,
      vocabSize: info.vocabSize,
      contextLength: info.contextLength,
      eosTokenId: info.eosTokenId,
      get disposed() {
        return self.#disposed
      },
      track: (work) => {
        this.#work.add(work)
        return () => this.#work.delete(work)
      },
      createSession: () => this.#createSession(),
      chatClosed: (chat) => this.#chats.delete(chat),
    }
  }

  /** @internal */
  get [ENGINE_MODEL](): EngineModel {
    return this.#native
  }

  /** @internal */
  get [MODEL_TOKENIZER](): Phi2Tokenizer {
    return this.#tokenizer
  }

  /** Whether `dispose()` was called. */
  get disposed(): boolean {
    return this.#disposed
  }

  #checkAlive(): void {
    if (this.#disposed) throw new Phi2DisposedError()
  }

  #createSession(): EngineSession {
    try {
      return this.#native.createSession()
    } catch (err) {
      throw fromNativeError(err)
    }
  }

  /** Text → token ids with the model's tokenizer (no BOS is added; Phi-2 uses none). */
  tokenize(text: string): number[] {
    this.#checkAlive()
    if (typeof text !== 'string') invalidOption('text', 'tokenize', 'must be a string')
    return this.#tokenizer.encode(text)
  }

  /** Token ids → text. `[]` gives `''`; padding ids (>= info.tokenizerSize) decode to nothing. */
  detokenize(ids: readonly number[]): string {
    this.#checkAlive()
    if (!Array.isArray(ids)) invalidOption('ids', 'detokenize', 'must be an array of token ids')
    checkTokenIds(ids, this.info.vocabSize, 'ids', 'detokenize')
    return this.#tokenizer.decode(ids)
  }

  #promptIds(prompt: string | readonly number[], opts: GenerateOptions, what: string): { ids: number[]; stop: string[] } {
    const format = opts.format ?? 'none'
    if (typeof prompt === 'string') {
      const f = formatPrompt(format, prompt)
      let ids = this.#tokenizer.encode(f.prompt)
      if (ids.length === 0) {
        const eos = this.info.eosTokenId ?? this.#tokenizer.eosTokenId
        if (eos === null) invalidOption('prompt', what, 'must not be empty')
        ids = [eos]
      }
      return { ids, stop: f.stop }
    }
    if (!Array.isArray(prompt)) invalidOption('prompt', what, 'must be a string or an array of token ids')
    if (format !== 'none') invalidOption('format', what, 'applies to string prompts only, not to token ids')
    if (prompt.length === 0) invalidOption('prompt', what, 'must contain at least one token id')
    return { ids: [...checkTokenIds(prompt, this.info.vocabSize, 'prompt', what)], stop: [] }
  }

  #startJob(
    prompt: string | readonly number[],
    options: GenerateOptions | undefined,
    what: string,
    onChunk?: (c: GenerateChunk) => void,
  ): GenerationJob {
    const opts = parseOptions(GenerateOptionsSchema, options, what)
    this.#checkAlive()
    const { ids, stop } = this.#promptIds(prompt, opts, what)
    const resolved = resolveGeneration(this.#host, opts, ids.length, stop, what)
    if (resolved.signal?.aborted) throw abortErrorFrom(resolved.signal)
    const session = this.#createSession()
    const job = new GenerationJob(this.#host, session, ids, resolved, onChunk)
    job.promise
      .catch(() => {})
      .then(() => job.nativeDone)
      .then(() => safeDispose(session))
    return job
  }

  /**
   * Generates a completion of `prompt` (text, or token ids). Greedy by default (see options).
   * Rejects with `Phi2AbortError` when `options.signal` aborts (before or during generation),
   * `Phi2DisposedError` when the model is disposed meanwhile, `Phi2OptionsError` for bad options.
   * Concurrent calls are independent (each has its own session / KV cache).
   */
  async generate(prompt: string | readonly number[], options?: GenerateOptions): Promise<GenerateResult> {
    return this.#startJob(prompt, options, 'generate').promise
  }

  /**
   * Streams a completion: `for await (const chunk of model.stream(prompt)) process.stdout.write(chunk.text)`.
   * See {@link GenerationStream}: `break` stops native work; `stream.result` has the final result.
   */
  stream(prompt: string | readonly number[], options?: GenerateOptions): GenerationStream {
    return makeStream(async (onChunk) => this.#startJob(prompt, options, 'stream', onChunk))
  }

  /**
   * Log-softmax of the next-token distribution at every position: `tokens.length × info.vocabSize`
   * floats, row-major (row i = distribution after tokens[0..=i]), computed from an empty context.
   */
  async logprobs(tokens: readonly number[], options?: LogprobsOptions): Promise<Float32Array> {
    const opts = parseOptions(LogprobsOptionsSchema, options, 'logprobs')
    this.#checkAlive()
    if (!Array.isArray(tokens) || tokens.length === 0) {
      invalidOption('tokens', 'logprobs', 'must be a non-empty array of token ids')
    }
    if (tokens.length > this.info.contextLength) {
      invalidOption('tokens', 'logprobs', `has ${tokens.length} tokens, more than the context length ${this.info.contextLength}`)
    }
    const ids = checkTokenIds(tokens, this.info.vocabSize, 'tokens', 'logprobs')
    const signal = opts.signal
    if (signal?.aborted) throw abortErrorFrom(signal)
    const cancel = this.#engine.createCancelToken()
    let fail: (err: Phi2Error) => void = () => {}
    const failed = new Promise<never>((_, reject) => {
      fail = (err) => {
        cancel.cancel()
        reject(err)
      }
    })
    failed.catch(() => {})
    const work: CancellableWork = { fail }
    const onAbort = () => fail(abortErrorFrom(signal))
    signal?.addEventListener('abort', onAbort, { once: true })
    this.#work.add(work)
    try {
      return await Promise.race([this.#native.logprobs([...ids], cancel), failed])
    } catch (err) {
      throw err instanceof Phi2Error ? err : fromNativeError(err)
    } finally {
      this.#work.delete(work)
      signal?.removeEventListener('abort', onAbort)
    }
  }

  /**
   * Perplexity of a text (or token ids) as llama.cpp's perplexity tool measures it: windows of
   * `contextLength` tokens, each evaluated from an empty context, the later tokens of each scored
   * (see `perplexity.ts` for exactly which). Resolves with `{ nll, perplexity, tokens, windows, ... }`.
   */
  async perplexity(text: string | readonly number[], options?: PerplexityOptions): Promise<PerplexityResult> {
    this.#checkAlive()
    return measurePerplexity(this, text, options)
  }

  /**
   * A multi-turn chat in the Phi-2 card's format (`Alice: …\nBob:`). It keeps its own session
   * (KV cache): each turn evaluates only the new tokens.
   */
  createChat(options?: ChatOptions): Phi2Chat {
    const opts = parseOptions(ChatOptionsSchema, options, 'createChat')
    this.#checkAlive()
    const chat = new Phi2Chat(this.#host, opts)
    this.#chats.add(chat)
    return chat
  }

  /**
   * Releases the model. Running generations stop and reject with `Phi2DisposedError`
   * (`E_DISPOSED`), as does every later call. Idempotent.
   */
  dispose(): void {
    if (this.#disposed) return
    this.#disposed = true
    const err = new Phi2DisposedError()
    for (const w of [...this.#work]) w.fail(err)
    for (const c of [...this.#chats]) c.dispose()
    this.#chats.clear()
    safeDispose(this.#native)
  }

  /** `using model = await loadModel(...)` disposes it at the end of the scope. */
  [Symbol.dispose](): void {
    this.dispose()
  }

  /** `await using model = await loadModel(...)` disposes it at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose()
  }
}
