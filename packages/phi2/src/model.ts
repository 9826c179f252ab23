/**
 * `loadModel()` and the `Phi2Model` it returns. Backend-agnostic: the engine comes from
 * `native.ts` (the only file that imports the addon).
 */
import { existsSync, readdirSync, statSync } from 'node:fs'
import { dirname, extname, join, resolve } from 'node:path'
import { Phi2Chat, type ChatHost } from './chat.js'
import type { Engine, EngineModel, EngineSession } from './engine.js'
import {
  Phi2BackendUnavailableError,
  Phi2DisposedError,
  Phi2Error,
  Phi2ModelLoadError,
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
import { nativeEngine } from './native.js'
import {
  type ChatOptions,
  ChatOptionsSchema,
  type GenerateOptions,
  GenerateOptionsSchema,
  type LoadOptions,
  LoadOptionsSchema,
  type LogprobsOptions,
  LogprobsOptionsSchema,
  invalidOption,
  parseOptions,
} from './options.js'
import { formatPrompt } from './prompts.js'
import {
  type Phi2Tokenizer,
  type TokenizerSource,
  bundledTokenizer,
  packageAsset,
  tokenizerFromDirectory,
  tokenizerFromGguf,
} from './tokenizer.js'

/** What `model.info` reports. */
export interface ModelInfo {
  /** `'phi2'`. */
  architecture: string
  /** `'gguf'` or `'safetensors'`. */
  format: string
  /** Bulk weight type: `f32`, `f16`, `bf16`, `q8_0`, `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q4_K`, `q5_K`, `q6_K`. */
  dtype: string
  /** The compute backend in use (`'cpu'`). */
  backend: 'cpu'
  /** Absolute path of the loaded file or directory. */
  source: string
  /** Total size of the weight files, bytes. */
  fileSizeBytes: number
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

function weightFilesSize(path: string, isDir: boolean): number {
  if (!isDir) return statSync(path).size
  let total = 0
  for (const f of readdirSync(path)) {
    if (/\.(safetensors|gguf|bin)$/.test(f)) total += statSync(join(path, f)).size
  }
  return total
}

/**
 * Loads a Phi-2 model: a `.gguf` file, a `.safetensors` file (with `config.json` next to it), or
 * a Hugging Face model directory (`config.json` + one or more `*.safetensors` shards, ideally
 * `tokenizer.json`). Rejects with {@link Phi2ModelLoadError} (`E_IO`, `E_MALFORMED_FILE`,
 * `E_BAD_CONFIG`, ...), {@link Phi2OptionsError}, {@link Phi2BackendUnavailableError} or
 * {@link Phi2AbortError}.
 */
export async function loadModel(source: string, options?: LoadOptions): Promise<Phi2Model> {
  if (typeof source !== 'string' || source.length === 0) {
    invalidOption('source', 'loadModel', 'must be a path to a .gguf / .safetensors file or a model directory')
  }
  const opts = parseOptions(LoadOptionsSchema, options, 'loadModel')
  const backend = opts.backend ?? 'auto'
  if (backend === 'cuda' || backend === 'wasm') {
    throw new Phi2BackendUnavailableError(
      backend,
      `The '${backend}' backend is not available in this build of @x/phi2: use backend 'cpu' (or 'auto')`,
    )
  }
  const signal = opts.signal
  if (signal?.aborted) throw abortErrorFrom(signal)
  const path = resolve(source)
  let isDir: boolean
  try {
    isDir = statSync(path).isDirectory()
  } catch (err) {
    throw new Phi2ModelLoadError('E_IO', source, `Could not load model ${JSON.stringify(source)}: no such file or directory`, {
      cause: err,
    })
  }
  const progress = opts.onProgress ?? (() => {})
  progress({ phase: 'loading', progress: 0 })
  const engine = nativeEngine()

  const loading = engine.load(path, opts.threads ?? null)
  let native: EngineModel
  if (signal) {
    let onAbort: () => void = () => {}
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => reject(abortErrorFrom(signal))
      signal.addEventListener('abort', onAbort, { once: true })
    })
    try {
      native = await Promise.race([loading, aborted])
    } catch (err) {
      loading.then(
        (m) => m.dispose(),
        () => {},
      )
      if (err instanceof Phi2Error) throw err
      throw fromNativeError(err, { loading: source })
    } finally {
      signal.removeEventListener('abort', onAbort)
    }
  } else {
    try {
      native = await loading
    } catch (err) {
      throw fromNativeError(err, { loading: source })
    }
  }
  try {
    progress({ phase: 'loading', progress: 1 })
    const info = native.info
    let tokenizer: Phi2Tokenizer | null = null
    if (!isDir && extname(path).toLowerCase() === '.gguf') {
      const vocab = native.ggufVocab()
      if (vocab) tokenizer = tokenizerFromGguf(vocab)
    }
    tokenizer ??= tokenizerFromDirectory(isDir ? path : dirname(path)) ?? bundledTokenizer()
    progress({ phase: 'tokenizer', progress: 1 })
    let contextLength = info.contextLength
    if (opts.contextLength !== undefined) {
      if (opts.contextLength > info.contextLength) {
        invalidOption(
          'contextLength',
          'loadModel',
          `must be at most the model's context length ${info.contextLength}, got ${opts.contextLength}`,
        )
      }
      contextLength = opts.contextLength
    }
    const model = new Phi2Model(engine, native, tokenizer, {
      architecture: info.architecture,
      format: info.format,
      dtype: info.dtype,
      backend: engine.backend,
      source: path,
      fileSizeBytes: weightFilesSize(path, isDir),
      tokenizer: tokenizer.source,
      vocabSize: info.vocabSize,
      tokenizerSize: info.tokenizerSize,
      contextLength,
      trainedContextLength: info.contextLength,
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
    if (!native.disposed) native.dispose()
    if (err instanceof Phi2Error) throw err
    throw fromNativeError(err, { loading: source })
  }
}

/** Path of the embedded default model: a tiny *random-weight* Phi-2-architecture GGUF (gibberish output). */
export function defaultModelPath(): string {
  return packageAsset('default.gguf', 'models')
}

/** Whether `defaultModelPath()` exists in this installation. */
export function hasDefaultModel(): boolean {
  return existsSync(defaultModelPath())
}

function safeDispose(x: { dispose(): void }): void {
  try {
    x.dispose()
  } catch {
    // already disposed / model gone: nothing to release
  }
}

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

  /** `await using model = await loadModel(...)` disposes it at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose()
  }
}
