/**
 * One generation on one engine session: option resolution, token → text assembly (UTF-8 safe,
 * stop strings), cancellation (AbortSignal, dispose, consumer break) and the result. Used by
 * `model.generate`, `model.stream` and the chat object. Backend-agnostic.
 */
import type { Engine, EngineCancelToken, EngineGenerateOptions, EngineGenerateResult, EngineSession } from './engine.js'
import { Phi2DisposedError, Phi2Error, abortErrorFrom, fromNativeError } from './errors.js'
import { DEFAULT_SAMPLING, DEFAULT_SPECULATIVE, type SamplingOptions, invalidOption } from './options.js'
import { TextAssembler } from './text.js'
import type { Phi2Tokenizer } from './tokenizer.js'

/** Why generation ended. */
export type FinishReason =
  /** A stop string appeared (the text is cut before it). */
  | 'stop'
  /** `maxNewTokens` tokens were generated, or the context window is full. */
  | 'length'
  /** The model produced end-of-text (`<|endoftext|>`, id 50256; kept in `tokens`, not in `text`). */
  | 'eos'
  /** A stream's consumer stopped early (`break` out of `for await`, or `stream.cancel()`). */
  | 'abort'

/** Token counts of one generation. */
export interface Usage {
  /** Tokens in the prompt (for a chat: the whole conversation so far). */
  promptTokens: number
  /** Prompt tokens that actually had to be evaluated (the rest were in the session's KV cache). */
  promptTokensEvaluated: number
  /** Tokens in `result.tokens`. */
  completionTokens: number
  /** promptTokens + completionTokens. */
  totalTokens: number
}

/** Wall-clock timings of one generation. */
export interface Timings {
  /** Prompt evaluation (prefill) time, ms. */
  promptMs: number
  /** Token-by-token decoding time, ms. */
  generateMs: number
  /** Generated tokens per second of decoding time (0 when too fast to measure). */
  tokensPerSecond: number
}

/** What every {@link GenerateResult} has, whatever ended the generation. */
export interface GenerateResultBase {
  /** The generated text (the prompt excluded; cut before a stop string; end-of-text not included). */
  text: string
  /** The generated token ids: up to the one that completed a stop string; includes a final end-of-text id. */
  tokens: number[]
  usage: Usage
  timings: Timings
  /**
   * What speculative decoding did, when the `speculative` option was set: verify passes run,
   * draft tokens proposed and accepted (`accepted / drafted` is the acceptance rate). All zero
   * when the model's type does not support it exactly (it then decoded plainly).
   */
  speculation?: { passes: number; drafted: number; accepted: number }
}

/** A generation ended by a stop string (`finishReason: 'stop'`): `stopString` says which. */
export interface GenerateResultStopped extends GenerateResultBase {
  finishReason: 'stop'
  /** The stop string that ended generation (the text is cut before it). */
  stopString: string
}

/** A generation ended by `'length'`, `'eos'` or `'abort'`: no stop string. */
export interface GenerateResultEnded extends GenerateResultBase {
  finishReason: Exclude<FinishReason, 'stop'>
  stopString?: undefined
}

/**
 * The outcome of `generate()` (and `stream().result`, `chat.send()`), discriminated by
 * `finishReason`: `stopString` is a `string` exactly when `finishReason === 'stop'`.
 */
export type GenerateResult = GenerateResultStopped | GenerateResultEnded

/**
 * One piece of a stream. Text deltas never split a UTF-8 character and never contain a prefix of
 * a stop string that may still complete. The last chunk has `finishReason` set (its text and
 * tokens may be empty). Joining every chunk's `text` / `tokens` gives the result's.
 */
export interface GenerateChunk {
  /** New text (may be `''`, e.g. for the end-of-text token or the final chunk). */
  text: string
  /** The token ids this chunk accounts for. */
  tokens: number[]
  /** Set on the last chunk only. */
  finishReason?: FinishReason
}

/** Work that dispose() can stop. */
export interface CancellableWork {
  fail(err: Phi2Error): void
}

/** What a generation needs from its model. */
export interface GenerationHost {
  readonly engine: Engine
  readonly tokenizer: Phi2Tokenizer
  readonly vocabSize: number
  readonly contextLength: number
  readonly eosTokenId: number | null
  readonly disposed: boolean
  /** Registers running work (so that dispose() can fail it); returns the function that unregisters it. */
  track(work: CancellableWork): () => void
}

export interface ResolvedGeneration {
  native: EngineGenerateOptions
  stop: string[]
  signal?: AbortSignal
}

/** Defaults + model-dependent validation (maxNewTokens vs context, logit-bias ids). */
export function resolveGeneration(
  host: GenerationHost,
  opts: SamplingOptions,
  promptLength: number,
  defaultStop: readonly string[],
  what: string,
): ResolvedGeneration {
  const ctx = host.contextLength
  // The default is clipped to the context; an explicit value beyond it is an error.
  const maxNewTokens = opts.maxNewTokens ?? Math.min(DEFAULT_SAMPLING.maxNewTokens, ctx)
  if (maxNewTokens > ctx) {
    invalidOption('maxNewTokens', what, `must be at most the context length ${ctx}, got ${maxNewTokens}`)
  }
  if (promptLength >= ctx) {
    throw new Phi2Error(
      'E_PROMPT_TOO_LONG',
      what === 'chat.send'
        ? // The chat already dropped every earlier turn: only a shorter message (or system line) helps.
          `The message needs ${promptLength} tokens with the chat's format (and system line), which leaves no room to reply in the context length ${ctx}: shorten it`
        : `The prompt has ${promptLength} tokens, which leaves no room to generate in the context length ${ctx}: shorten it`,
    )
  }
  const logitBiasIds: number[] = []
  const logitBiasValues: number[] = []
  for (const [key, value] of Object.entries(opts.logitBias ?? {})) {
    const id = Number(key)
    if (id >= host.vocabSize) {
      invalidOption(`logitBias.${key}`, what, `token id ${id} is out of range (vocabulary size ${host.vocabSize})`)
    }
    logitBiasIds.push(id)
    logitBiasValues.push(value)
  }
  const native: EngineGenerateOptions = {
    maxNewTokens: Math.min(maxNewTokens, ctx - promptLength),
    doSample: opts.doSample ?? DEFAULT_SAMPLING.doSample,
    temperature: opts.temperature ?? DEFAULT_SAMPLING.temperature,
    topK: opts.topK ?? DEFAULT_SAMPLING.topK,
    topP: opts.topP ?? DEFAULT_SAMPLING.topP,
    minP: opts.minP ?? DEFAULT_SAMPLING.minP,
    repetitionPenalty: opts.repetitionPenalty ?? DEFAULT_SAMPLING.repetitionPenalty,
    presencePenalty: opts.presencePenalty ?? DEFAULT_SAMPLING.presencePenalty,
    frequencyPenalty: opts.frequencyPenalty ?? DEFAULT_SAMPLING.frequencyPenalty,
    logitBiasIds,
    logitBiasValues,
    seed: opts.seed ?? Math.floor(Math.random() * 2 ** 32),
    stopOnEos: true,
  }
  if (opts.speculative) {
    const s = opts.speculative === true ? {} : opts.speculative
    native.speculative = {
      ngram: s.ngram ?? DEFAULT_SPECULATIVE.ngram,
      maxDraft: s.maxDraft ?? DEFAULT_SPECULATIVE.maxDraft,
    }
  }
  return { native, stop: [...(opts.stop ?? defaultStop)], ...(opts.signal ? { signal: opts.signal } : {}) }
}

/** Validates a token-id prompt. */
export function checkTokenIds(ids: readonly unknown[], vocabSize: number, path: string, what: string): number[] {
  ids.forEach((id, i) => {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= vocabSize) {
      invalidOption(`${path}.${i}`, what, `must be a token id, an integer in 0..${vocabSize - 1}, got ${String(id)}`)
    }
  })
  return ids as number[]
}

/**
 * A running generation. `promise` settles with the result; `nativeDone` when the engine has
 * finished (only then may its session be disposed or reused).
 */
export class GenerationJob implements CancellableWork {
  readonly promise: Promise<GenerateResult>
  nativeDone: Promise<void> = Promise.resolve()
  /** Every accepted token (also readable after an abort / dispose, for chats). */
  assembler: TextAssembler | null = null
  private readonly cancelToken: EngineCancelToken
  private failure: Phi2Error | null = null
  private rejectNow: ((err: Phi2Error) => void) | null = null
  private consumerStopped = false
  /** Tokens the engine produced after the consumer stopped (ignored: no chunk carries them). */
  private dropped = 0
  /** Set by a consumer that left the loop (break / return()): the result keeps only what it was given. */
  private keep: ConsumedPrefix | null = null

  constructor(
    private readonly host: GenerationHost,
    private readonly session: EngineSession,
    private readonly prompt: number[],
    private readonly resolved: ResolvedGeneration,
    private readonly onChunk?: (chunk: GenerateChunk) => void,
  ) {
    this.cancelToken = host.engine.createCancelToken()
    this.promise = this.run()
  }

  /** Stops the generation now and rejects with `err` (abort, dispose). */
  fail(err: Phi2Error): void {
    if (this.failure) return
    this.failure = err
    this.cancelToken.cancel()
    this.rejectNow?.(err)
  }

  /**
   * Stops the generation for its consumer (`stream.cancel()`, or with `keep` a `break` / `return()`
   * out of the loop). Tokens the engine produces from now on are ignored. Without `keep` the last
   * chunk (held-back text, `finishReason`) is still emitted; with `keep` the result is cut to the
   * chunks the consumer received. The result resolves with `finishReason: 'abort'` (unless the
   * generation had already ended).
   */
  stop(keep?: ConsumedPrefix): void {
    this.consumerStopped = true
    if (keep) this.keep = keep
    this.cancelToken.cancel()
  }

  private async run(): Promise<GenerateResult> {
    const { host, resolved } = this
    const signal = resolved.signal
    if (signal?.aborted) throw abortErrorFrom(signal)
    if (host.disposed) throw new Phi2DisposedError()
    const skip = new Set<number>(host.eosTokenId === null ? [] : [host.eosTokenId])
    const assembler = new TextAssembler(host.tokenizer, resolved.stop, skip)
    this.assembler = assembler
    const failed = new Promise<never>((_, reject) => {
      this.rejectNow = reject
    })
    failed.catch(() => {})
    const onAbort = () => this.fail(abortErrorFrom(signal))
    signal?.addEventListener('abort', onAbort, { once: true })
    const untrack = host.track(this)
    let nativeError: unknown = null
    try {
      const nativePromise = this.session.generate(
        this.prompt,
        resolved.native,
        (err, id) => {
          if (this.failure) return
          if (this.consumerStopped) {
            this.dropped++
            return
          }
          if (err) {
            nativeError ??= err
            this.cancelToken.cancel()
            return
          }
          const piece = assembler.push(id)
          if (assembler.stopped) this.cancelToken.cancel()
          if (piece && this.onChunk) this.onChunk(piece)
        },
        this.cancelToken,
      )
      this.nativeDone = nativePromise.then(
        () => {},
        () => {},
      )
      let out: EngineGenerateResult
      try {
        out = await Promise.race([nativePromise, failed])
      } catch (err) {
        if (this.failure) throw this.failure
        const e = fromNativeError(err)
        // The engine refuses work cancelled before it started: for a consumer's cancel that is
        // an ordinary 'abort' finish with no tokens.
        if (!(this.consumerStopped && e.code === 'E_ABORTED')) throw e
        out = { tokens: [], finishReason: 'abort', promptTokens: this.prompt.length, promptTokensEvaluated: 0, promptMs: 0, generateMs: 0 }
      }
      if (this.failure) throw this.failure
      if (nativeError) throw fromNativeError(nativeError)
      const last = assembler.finish()
      let finishReason: FinishReason
      if (assembler.stopped) finishReason = 'stop'
      else if (this.consumerStopped && this.dropped > 0) finishReason = 'abort'
      else if (out.finishReason === 'eos') finishReason = 'eos'
      else if (out.finishReason === 'length' || out.finishReason === 'context') finishReason = 'length'
      else finishReason = 'abort'
      let text = assembler.text
      let tokens = [...assembler.tokens]
      const keep = this.keep
      if (keep) {
        // The consumer left the loop: the result is what it was given (no chunk after that exists).
        text = text.slice(0, keep.textLength)
        tokens = tokens.slice(0, keep.tokens)
        finishReason = 'abort'
      } else if (this.onChunk) {
        this.onChunk({ text: last?.text ?? '', tokens: last?.tokens ?? [], finishReason })
      }
      const base: GenerateResultBase = {
        text,
        tokens,
        usage: {
          promptTokens: this.prompt.length,
          promptTokensEvaluated: out.promptTokensEvaluated,
          completionTokens: tokens.length,
          totalTokens: this.prompt.length + tokens.length,
        },
        timings: {
          promptMs: out.promptMs,
          generateMs: out.generateMs,
          tokensPerSecond: out.generateMs > 0 ? (out.tokens.length * 1000) / out.generateMs : 0,
        },
      }
      if (this.resolved.native.speculative) {
        const s = out.speculation
        base.speculation = { passes: s?.passes ?? 0, drafted: s?.drafted ?? 0, accepted: s?.accepted ?? 0 }
      }
      if (finishReason === 'stop') return { ...base, finishReason, stopString: assembler.stoppedBy! }
      return { ...base, finishReason }
    } finally {
      signal?.removeEventListener('abort', onAbort)
      untrack()
    }
  }
}

/** How much of a stream its consumer received: token count and text length (UTF-16 units). */
export interface ConsumedPrefix {
  tokens: number
  textLength: number
}

/** Internal: an async iterable over chunks, fed by a job. */
export class ChunkChannel implements AsyncIterator<GenerateChunk> {
  private readonly buffered: GenerateChunk[] = []
  private waiting: { resolve: (r: IteratorResult<GenerateChunk>) => void; reject: (e: unknown) => void } | null = null
  private ended = false
  private error: unknown = null
  private readonly consumed: ConsumedPrefix = { tokens: 0, textLength: 0 }
  /** Called when the consumer leaves before the end (`return()`), with what it received. */
  onReturn: ((consumed: ConsumedPrefix) => void) | null = null

  push(chunk: GenerateChunk): void {
    if (this.ended) return
    if (this.waiting) {
      const w = this.waiting
      this.waiting = null
      w.resolve(this.deliver(chunk))
    } else this.buffered.push(chunk)
  }

  private deliver(chunk: GenerateChunk): IteratorResult<GenerateChunk> {
    this.consumed.tokens += chunk.tokens.length
    this.consumed.textLength += chunk.text.length
    return { value: chunk, done: false }
  }

  end(): void {
    if (this.ended) return
    this.ended = true
    if (this.waiting && this.buffered.length === 0) {
      const w = this.waiting
      this.waiting = null
      w.resolve({ value: undefined, done: true })
    }
  }

  /** Ends with an error: pending and later `next()` calls reject with it (buffered chunks are dropped). */
  fail(err: unknown): void {
    if (this.ended && this.error === null && this.buffered.length === 0 && !this.waiting) {
      // Already fully consumed: nothing to report.
      return
    }
    this.ended = true
    this.error = err
    this.buffered.length = 0
    if (this.waiting) {
      const w = this.waiting
      this.waiting = null
      w.reject(err)
    }
  }

  next(): Promise<IteratorResult<GenerateChunk>> {
    if (this.error !== null) {
      const err = this.error
      this.error = null
      return Promise.reject(err)
    }
    const chunk = this.buffered.shift()
    if (chunk) return Promise.resolve(this.deliver(chunk))
    if (this.ended) return Promise.resolve({ value: undefined, done: true })
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject }
    })
  }

  return(): Promise<IteratorResult<GenerateChunk>> {
    if (!this.ended) {
      this.ended = true
      this.buffered.length = 0
      this.onReturn?.({ ...this.consumed })
    }
    this.error = null
    if (this.waiting) {
      const w = this.waiting
      this.waiting = null
      w.resolve({ value: undefined, done: true })
    }
    return Promise.resolve({ value: undefined, done: true })
  }
}

/**
 * What `model.stream()` and `chat.sendStream()` return: iterate it with `for await`, and/or await
 * `result`. The last chunk carries `finishReason`, and the chunks' `text` / `tokens` join to the
 * result's. `cancel()` (also from inside the loop) stops native work at once: the loop still gets
 * a last chunk (held-back text, `finishReason: 'abort'`). Leaving the loop (`break`, `return()`)
 * stops it too, and `result` then holds exactly the chunks the loop received (`'abort'`), unless
 * generation had already ended. An AbortSignal makes the loop throw `Phi2AbortError` and `result`
 * reject with it.
 */
export interface GenerationStream extends AsyncIterable<GenerateChunk> {
  /** The final result (resolves when generation ends; rejects on abort / dispose / error). */
  readonly result: Promise<GenerateResult>
  /**
   * Stops generating. The stream then ends with a last chunk (`finishReason: 'abort'`, plus any
   * held-back text), and `result` resolves with the joined chunks. No effect once generation ended.
   */
  cancel(): void
}

/**
 * Builds a stream around a job started by `start` (which may wait, e.g. for a chat's previous turn).
 * Errors before the job starts (validation, abort, dispose) surface from the loop and `result`.
 */
export function makeStream(start: (onChunk: (c: GenerateChunk) => void) => Promise<GenerationJob>): GenerationStream {
  const channel = new ChunkChannel()
  let job: GenerationJob | null = null
  let stopped = false
  let keep: ConsumedPrefix | undefined
  const result = (async () => {
    try {
      job = await start((c) => channel.push(c))
      if (stopped) job.stop(keep)
      const r = await job.promise
      channel.end()
      return r
    } catch (err) {
      channel.fail(err)
      throw err
    }
  })()
  result.catch(() => {})
  // cancel() and / or leaving the loop; leaving after cancel() still cuts the result to what the
  // loop received (it did not take the last chunk).
  const stop = (consumed?: ConsumedPrefix) => {
    if (stopped && (consumed === undefined || keep !== undefined)) return
    stopped = true
    keep ??= consumed
    job?.stop(keep)
  }
  channel.onReturn = stop
  let iterated = false
  return {
    result,
    cancel: () => stop(),
    [Symbol.asyncIterator]() {
      if (iterated) throw new TypeError('A generation stream can be iterated only once')
      iterated = true
      return channel
    },
  }
}
