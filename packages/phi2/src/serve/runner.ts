/**
 * The server's side of the native batch engine (`NativeBatchEngine`, crates/phi2/src/batch.rs):
 * one engine per loaded model, every request a sequence of its continuous batch. A request is
 * validated with the SDK's own rules (`resolveGeneration`: defaults, context limits, logit-bias
 * ids), its tokens are turned into text with the SDK's `TextAssembler` (stop strings, UTF-8
 * boundaries), so a request gives the same text as `model.generate()` with the same options.
 */
import { createRequire } from 'node:module'
import type { EngineGenerateOptions } from '../engine.js'
import { Phi2Error, abortErrorFrom, fromNativeError } from '../errors.js'
import { type GenerationHost, resolveGeneration } from '../generation.js'
import { ENGINE_MODEL, MODEL_TOKENIZER, type Phi2Model } from '../model.js'
import type { SamplingOptions } from '../options.js'
import { TextAssembler } from '../text.js'
import type { Phi2Tokenizer } from '../tokenizer.js'

/** What the addon's batch engine sends per request (see bindings/node/src/batch.rs). */
interface NativeBatchEvent {
  kind: 'token' | 'done' | 'error'
  token?: number | null
  logprob?: number | null
  topIds?: number[] | null
  topLogprobs?: number[] | null
  finishReason?: string | null
  promptTokens?: number | null
  completionTokens?: number | null
  queueMs?: number | null
  generateMs?: number | null
  error?: string | null
}

interface NativeBatchEngine {
  submit(tokens: number[], options: EngineGenerateOptions, topLogprobs: number | null, onEvent: (err: Error | null, e: NativeBatchEvent) => void): number
  cancel(id: number): void
  stats(): { active: number; queued: number; lastBatchSize: number; steps: number }
  dispose(): void
}

interface BatchAddon {
  NativeBatchEngine: { create(model: unknown, config?: { maxSequences?: number; prefillChunk?: number; stepTokens?: number } | null): NativeBatchEngine }
}

/** The log-probs of one produced token (model's raw distribution). */
export interface TokenLogprob {
  token: number
  logprob: number
  top: { token: number; logprob: number }[]
}

/** A piece of output as it becomes final (text never ends inside a UTF-8 character or a possible stop string). */
export interface Piece {
  text: string
  tokens: number[]
  logprobs: TokenLogprob[]
}

export type RunFinish = 'stop' | 'length' | 'eos' | 'abort'

export interface RunResult {
  text: string
  tokens: number[]
  finishReason: RunFinish
  stopString: string | null
  promptTokens: number
  completionTokens: number
  logprobs: TokenLogprob[]
  /** Submit → first step that ran the request. */
  queueMs: number
  /** First step → end. */
  generateMs: number
  /** Submit → first token (null when none). */
  firstTokenMs: number | null
}

export interface RunRequest {
  /** Prompt token ids (already formatted and tokenized). */
  ids: number[]
  /** SDK-style sampling options (camelCase), validated by the SDK's rules. */
  options: SamplingOptions
  /** Stop strings (the text is cut before the first one). */
  stop: readonly string[]
  /** Alternatives per token to report, 0..20; undefined = no log-probs. */
  topLogprobs?: number
  /** Aborting it makes the sequence leave the batch at the next step (finish 'abort'). */
  signal?: AbortSignal
  /** Called with each piece of text as it becomes final. */
  onPiece?: (p: Piece) => void
  /** Field name for errors, e.g. `max_tokens`, keyed by the SDK option name. */
  what?: string
}

export interface BatchRunnerOptions {
  /** Sequences decoded together (the batch size). */
  maxSequences: number
  prefillChunk?: number
  stepTokens?: number
}

/** A model's continuous-batching engine with the SDK's text handling around it. */
export class BatchRunner {
  readonly model: Phi2Model
  readonly tokenizer: Phi2Tokenizer
  readonly #engine: NativeBatchEngine
  readonly #host: GenerationHost
  #disposed = false

  constructor(model: Phi2Model, options: BatchRunnerOptions) {
    if (model.info.backend !== 'cpu') {
      throw new Phi2Error('E_BACKEND_UNAVAILABLE', `phi2 serve batches on the native (cpu) backend; the model was loaded with '${model.info.backend}'`)
    }
    this.model = model
    this.tokenizer = model[MODEL_TOKENIZER]
    const require = createRequire(import.meta.url)
    const addon = require('@x/phi2-native') as BatchAddon
    try {
      this.#engine = addon.NativeBatchEngine.create(model[ENGINE_MODEL], {
        maxSequences: options.maxSequences,
        ...(options.prefillChunk ? { prefillChunk: options.prefillChunk } : {}),
        ...(options.stepTokens ? { stepTokens: options.stepTokens } : {}),
      })
    } catch (err) {
      throw fromNativeError(err)
    }
    const info = model.info
    this.#host = {
      engine: undefined as never,
      tokenizer: this.tokenizer,
      vocabSize: info.vocabSize,
      contextLength: info.contextLength,
      eosTokenId: info.eosTokenId,
      disposed: false,
      track: () => () => {},
    }
  }

  stats(): { active: number; queued: number; lastBatchSize: number; steps: number } {
    return this.#engine.stats()
  }

  /**
   * Validates `req.options` as `model.generate()` does (throws `Phi2OptionsError` /
   * `E_PROMPT_TOO_LONG` before anything runs) and returns the engine options.
   */
  resolve(req: Pick<RunRequest, 'ids' | 'options' | 'stop' | 'what'>): EngineGenerateOptions {
    return resolveGeneration(this.#host, req.options, req.ids.length, req.stop, req.what ?? 'generate').native
  }

  /** Runs one request in the batch. Rejects with a `Phi2Error` (options, prompt, engine). */
  run(req: RunRequest): Promise<RunResult> {
    if (this.#disposed) return Promise.reject(new Phi2Error('E_DISPOSED', 'The server is shutting down'))
    const native = this.resolve(req)
    const signal = req.signal
    if (signal?.aborted) return Promise.reject(abortErrorFrom(signal))
    const eos = this.model.info.eosTokenId
    const assembler = new TextAssembler(this.tokenizer, req.stop, new Set(eos === null ? [] : [eos]))
    const logprobs: TokenLogprob[] = []
    let pendingLogprobs: TokenLogprob[] = []
    const started = performance.now()
    let firstTokenMs: number | null = null
    return new Promise<RunResult>((resolve, reject) => {
      let id = -1
      let settled = false
      const onAbort = () => {
        if (id >= 0) this.#engine.cancel(id)
      }
      const emit = (p: { text: string; tokens: number[] } | null) => {
        if (!p || !req.onPiece) return
        const lp = pendingLogprobs.slice(0, p.tokens.length)
        pendingLogprobs = pendingLogprobs.slice(p.tokens.length)
        req.onPiece({ text: p.text, tokens: p.tokens, logprobs: lp })
      }
      // Called by the addon's threadsafe function: nothing may throw out of it (in napi-rs 3 a
      // throw there is a fatal exception). A throw (the caller's onPiece, the text assembly) fails
      // just this request and takes its sequence out of the batch.
      const onEvent = (err: Error | null, e: NativeBatchEvent) => {
        try {
          handle(err, e)
        } catch (thrown) {
          if (settled) return
          settled = true
          signal?.removeEventListener('abort', onAbort)
          try {
            if (id >= 0) this.#engine.cancel(id)
          } catch {
            // the engine is gone: the sequence is too
          }
          reject(thrown instanceof Phi2Error ? thrown : new Phi2Error('E_INTERNAL', `A generation failed while handling its output: ${thrown instanceof Error ? thrown.message : String(thrown)}`, { cause: thrown }))
        }
      }
      const handle = (err: Error | null, e: NativeBatchEvent) => {
        if (settled) return
        if (err) {
          settled = true
          signal?.removeEventListener('abort', onAbort)
          reject(fromNativeError(err))
          return
        }
        if (e.kind === 'token') {
          const token = e.token as number
          firstTokenMs ??= performance.now() - started
          if (assembler.stopped) return
          if (req.topLogprobs !== undefined && e.logprob != null) {
            const lp: TokenLogprob = {
              token,
              logprob: e.logprob,
              top: (e.topIds ?? []).map((t, i) => ({ token: t, logprob: (e.topLogprobs ?? [])[i] ?? -Infinity })),
            }
            logprobs.push(lp)
            pendingLogprobs.push(lp)
          }
          emit(assembler.push(token))
          if (assembler.stopped) this.#engine.cancel(id)
          return
        }
        settled = true
        signal?.removeEventListener('abort', onAbort)
        if (e.kind === 'error') {
          reject(nativeCoded(e.error ?? 'E_INTERNAL: unknown engine error'))
          return
        }
        emit(assembler.finish())
        let finishReason: RunFinish
        if (assembler.stopped) finishReason = 'stop'
        else if (e.finishReason === 'eos') finishReason = 'eos'
        else if (e.finishReason === 'length' || e.finishReason === 'context') finishReason = 'length'
        else finishReason = 'abort'
        const tokens = [...assembler.tokens]
        resolve({
          text: assembler.text,
          tokens,
          finishReason,
          stopString: assembler.stoppedBy,
          promptTokens: req.ids.length,
          completionTokens: tokens.length,
          logprobs: logprobs.slice(0, tokens.length),
          queueMs: e.queueMs ?? 0,
          generateMs: e.generateMs ?? 0,
          firstTokenMs,
        })
      }
      try {
        id = this.#engine.submit(req.ids, native, req.topLogprobs ?? null, onEvent)
      } catch (err) {
        settled = true
        reject(fromNativeError(err))
        return
      }
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  /** Stops the engine thread; requests still running end with 'abort' / E_DISPOSED. */
  dispose(): void {
    if (this.#disposed) return
    this.#disposed = true
    this.#engine.dispose()
  }
}

/** `E_CODE: message` (the addon's event errors) → a typed error. */
function nativeCoded(message: string): Phi2Error {
  const m = /^(E_[A-Z_]+): /.exec(message)
  const err = Object.assign(new Error(m ? message.slice(m[0].length) : message), m ? { code: m[1] } : {})
  return fromNativeError(err)
}
