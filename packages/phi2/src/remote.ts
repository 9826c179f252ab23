/**
 * The SDK as a client of any OpenAI-compatible server (`phi2 serve`, vLLM, llama-server, ...):
 * `loadModel({ remote: 'http://host:8000/v1', model, apiKey })` returns a {@link Phi2RemoteModel}
 * with the generation API of a local `Phi2Model`: `generate`, `stream` (AbortSignal, `cancel`,
 * `result`), `createChat` (`send`, `sendStream`), the same options, results (`text`, `usage`,
 * `timings`, `finishReason`, `stopString`) and typed errors. Prompt formats are applied here, so
 * `format: 'qa'` sends the card's `Instruct: …\nOutput:` prompt with its stop strings.
 *
 * Mapping onto the OpenAI protocol: `/completions` for generate/stream, `/chat/completions` for
 * chats (the server applies its chat format); greedy (`doSample: false`, the default) is
 * `temperature: 0`; `topK`, `minP` and `repetitionPenalty` go as vLLM's extra body fields (sent
 * only when set: OpenAI itself refuses unknown fields). Token ids are not part of the protocol:
 * results have `tokens: []`, and `usage` is the server's. What needs the weights locally
 * (`tokenize`, `logprobs`, `perplexity`) throws `E_BACKEND_UNAVAILABLE`.
 */
import { z } from 'zod'
import { Phi2AbortError, Phi2BackendUnavailableError, Phi2DisposedError, Phi2Error, Phi2OptionsError, type Phi2ErrorCode } from './errors.js'
import type { FinishReason, GenerateChunk, GenerateResult, GenerationStream } from './generation.js'
import { DEFAULT_SAMPLING, type ChatOptions, ChatOptionsSchema, type ChatSendOptions, ChatSendOptionsSchema, type GenerateOptions, GenerateOptionsSchema, type SamplingOptions, invalidOption, parseOptions } from './options.js'
import { type ChatTurn, formatPrompt } from './prompts.js'

/** `loadModel({ remote, ... })`: an OpenAI-compatible server instead of a model file. */
export interface RemoteSource {
  /** The API base URL, e.g. `'http://127.0.0.1:8000/v1'` (the part before `/completions`). */
  remote: string
  /** The model id to request (default: the first one the server lists). */
  model?: string
  /** Sent as `Authorization: Bearer …`. */
  apiKey?: string
  /** Extra HTTP headers on every request. */
  headers?: Record<string, string>
  /**
   * How long to wait for the server, ms (default: no limit): for its answer's headers, and then
   * between two pieces of its body (a server that stalls mid-stream fails with `E_NETWORK`).
   */
  timeoutMs?: number
  /** Aborts the connection check. */
  signal?: AbortSignal
}

export const RemoteSourceSchema = z.strictObject({
  remote: z.string().regex(/^https?:\/\/[^\s]+$/i, 'must be an http(s) URL, e.g. http://127.0.0.1:8000/v1'),
  model: z.string().min(1).optional(),
  apiKey: z.string().min(1).optional(),
  headers: z.record(z.string(), z.string()).optional(),
  timeoutMs: z.number().int().min(1).optional(),
  signal: z.custom<AbortSignal>((v) => typeof AbortSignal !== 'undefined' && v instanceof AbortSignal, 'must be an AbortSignal').optional(),
})

/** Whether `loadModel`'s argument is a {@link RemoteSource}. */
export function isRemoteSource(source: unknown): source is RemoteSource {
  return typeof source === 'object' && source !== null && !(source instanceof URL) && 'remote' in source
}

/** An HTTP or protocol error from the server: `status`, and OpenAI's `type` / `param` when it sent them. */
export class Phi2RemoteError extends Phi2Error {
  constructor(
    code: Phi2ErrorCode,
    message: string,
    readonly status: number | null,
    readonly type: string | null = null,
    readonly param: string | null = null,
    options?: { cause?: unknown },
  ) {
    super(code, message, options)
    this.name = 'Phi2RemoteError'
  }
}

/** What `model.info` reports for a remote model. */
export interface RemoteModelInfo {
  backend: 'remote'
  /** The API base URL. */
  source: string
  /** The model id used in requests. */
  model: string
  /** The server's context length when it reports one (`max_model_len`, vLLM and phi2 serve), else null. */
  contextLength: number | null
}

interface Endpoint {
  base: string
  headers: Record<string, string>
  timeoutMs: number | undefined
}

function sameAbort(signal: AbortSignal | undefined): Phi2AbortError {
  return new Phi2AbortError('The operation was aborted', signal?.reason !== undefined ? { cause: signal.reason } : undefined)
}

/** An error answer → a typed error (OpenAI body `{ error: { message, type, param, code } }` when present). */
async function httpError(res: Response, what: string): Promise<Phi2Error> {
  const text = await res.text().catch(() => '')
  let e: { message?: string; type?: string; param?: string | null; code?: string | null } = {}
  try {
    const j = JSON.parse(text) as { error?: typeof e; message?: string }
    e = typeof j.error === 'object' && j.error ? j.error : { message: j.message ?? (typeof j.error === 'string' ? j.error : undefined) }
  } catch {
    e = { message: text.slice(0, 300) }
  }
  const msg = `${what}: HTTP ${res.status}${e.message ? `: ${e.message}` : ''}`
  if (res.status === 400 && (e.code === 'context_length_exceeded' || /maximum context length/i.test(e.message ?? ''))) {
    return new Phi2RemoteError('E_PROMPT_TOO_LONG', msg, res.status, e.type ?? null, e.param ?? null)
  }
  if (res.status === 400 || res.status === 422) return new Phi2OptionsError(e.param ?? '', msg)
  if (res.status === 401 || res.status === 403) return new Phi2RemoteError('E_REMOTE_AUTH', `${msg} (check apiKey)`, res.status, e.type ?? null, e.param ?? null)
  if (res.status === 429) return new Phi2RemoteError('E_BUSY', `${msg} (retry after ${res.headers.get('retry-after') ?? 'a while'} s)`, res.status, e.type ?? null, e.param ?? null)
  return new Phi2RemoteError('E_REMOTE', msg, res.status, e.type ?? null, e.param ?? null)
}

/**
 * `res`'s body with typed read errors: `timeoutMs` without a piece of it (idle timer, reset on
 * every piece) or a lost connection → `E_NETWORK` naming the server, the caller's abort →
 * `Phi2AbortError`. `ctl` aborts the underlying fetch.
 */
function guardedBody(res: Response, ep: Endpoint, ctl: AbortController, signal: AbortSignal | undefined, what: string, cleanup: () => void): Response {
  if (!res.body) return res
  const reader = res.body.getReader()
  let timer: ReturnType<typeof setTimeout> | null = null
  let timedOut = false
  const arm = () => {
    if (timer) clearTimeout(timer)
    timer = ep.timeoutMs
      ? setTimeout(() => {
          timedOut = true
          ctl.abort(new Error('timeout'))
        }, ep.timeoutMs)
      : null
  }
  const finish = () => {
    if (timer) clearTimeout(timer)
    timer = null
    cleanup()
  }
  arm()
  const body = new ReadableStream<Uint8Array>({
    async pull(c) {
      try {
        const { done, value } = await reader.read()
        if (done) {
          finish()
          c.close()
          return
        }
        arm()
        c.enqueue(value)
      } catch (err) {
        finish()
        if (signal?.aborted) c.error(sameAbort(signal))
        else if (timedOut) c.error(new Phi2RemoteError('E_NETWORK', `${what}: ${ep.base} sent nothing for ${ep.timeoutMs} ms (timeoutMs) while answering`, null, null, null, { cause: err }))
        else c.error(networkError(err, ep, what, 'lost the connection while reading the answer from'))
      }
    },
    cancel(reason) {
      finish()
      return reader.cancel(reason)
    },
  })
  return new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers })
}

function networkError(err: unknown, ep: Endpoint, what: string, doing: string): Phi2RemoteError {
  if (err instanceof Phi2RemoteError) return err
  const cause = (err as { cause?: { code?: string; message?: string } }).cause
  return new Phi2RemoteError('E_NETWORK', `${what}: ${doing} ${ep.base}: ${cause?.code ?? cause?.message ?? (err as Error)?.message ?? String(err)}`, null, null, null, { cause: err })
}

async function request(ep: Endpoint, path: string, body: unknown, signal: AbortSignal | undefined, what: string): Promise<Response> {
  const ctl = new AbortController()
  const onAbort = () => ctl.abort(signal?.reason)
  if (signal?.aborted) throw sameAbort(signal)
  signal?.addEventListener('abort', onAbort, { once: true })
  let timer = ep.timeoutMs ? setTimeout(() => ctl.abort(new Error('timeout')), ep.timeoutMs) : null
  try {
    const res = await fetch(`${ep.base}${path}`, {
      method: body === undefined ? 'GET' : 'POST',
      headers: { ...ep.headers, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: ctl.signal,
    })
    if (!res.ok) throw await httpError(res, what)
    // The body is read after this returns: the caller's signal keeps aborting it, and the idle
    // timer of `guardedBody` takes over from the headers' timer.
    if (timer) clearTimeout(timer)
    timer = null
    return guardedBody(res, ep, ctl, signal, what, () => signal?.removeEventListener('abort', onAbort))
  } catch (err) {
    signal?.removeEventListener('abort', onAbort)
    if (err instanceof Phi2Error) throw err
    if (signal?.aborted) throw sameAbort(signal)
    if (ctl.signal.aborted) throw new Phi2RemoteError('E_NETWORK', `${what}: no answer from ${ep.base} within ${ep.timeoutMs} ms (timeoutMs)`, null)
    throw networkError(err, ep, what, 'cannot reach')
  } finally {
    if (timer) clearTimeout(timer)
  }
}

/** The `data:` payloads of a server-sent-events body, until `[DONE]` (sets `state.done`) or the end. */
export async function* sseData(body: ReadableStream<Uint8Array>, state: { done: boolean } = { done: false }): AsyncGenerator<string> {
  const dec = new TextDecoder()
  let buf = ''
  let data: string[] = []
  const reader = body.getReader()
  try {
    for (;;) {
      const { done, value } = await reader.read()
      buf += done ? dec.decode() : dec.decode(value, { stream: true })
      let nl: number
      while ((nl = buf.search(/\r?\n/)) >= 0) {
        const line = buf.slice(0, nl)
        buf = buf.slice(buf[nl] === '\r' ? nl + 2 : nl + 1)
        if (line === '') {
          if (data.length) {
            const payload = data.join('\n')
            data = []
            if (payload === '[DONE]') {
              state.done = true
              return
            }
            yield payload
          }
        } else if (line.startsWith('data:')) {
          data.push(line.slice(line[5] === ' ' ? 6 : 5))
        } // comments (":…"), event:, id:, retry: are ignored
      }
      if (done) {
        if (data.length && data.join('\n') === '[DONE]') state.done = true
        else if (data.length) yield data.join('\n')
        return
      }
    }
  } finally {
    reader.releaseLock()
    await body.cancel().catch(() => {})
  }
}

interface Choice {
  text?: string
  delta?: { content?: string | null }
  message?: { content?: string | null }
  finish_reason?: string | null
  /** vLLM: the stop string (or token id) that ended the choice. */
  stop_reason?: string | number | null
}

interface Completion {
  choices?: Choice[]
  usage?: { prompt_tokens?: number; completion_tokens?: number; total_tokens?: number } | null
  error?: { message?: string; type?: string; code?: string }
}

/** OpenAI finish_reason (+ vLLM stop_reason) → ours. */
function finishOf(c: Choice, stop: readonly string[], text: string): { finishReason: FinishReason; stopString?: string } {
  if (c.finish_reason === 'length') return { finishReason: 'length' }
  if (c.finish_reason === 'stop' || c.finish_reason === 'eos') {
    if (typeof c.stop_reason === 'string') return { finishReason: 'stop', stopString: c.stop_reason }
    if (typeof c.stop_reason === 'number') return { finishReason: 'eos' }
    // Servers that do not say which stop matched (OpenAI, llama-server): a stop string when the
    // text ended on one of the request's (servers that keep it in the text), else an end-of-text.
    const ended = stop.find((s) => s && text.endsWith(s))
    if (ended !== undefined) return { finishReason: 'stop', stopString: ended }
    return { finishReason: 'eos' }
  }
  if (c.finish_reason === 'abort' || c.finish_reason === null || c.finish_reason === undefined) return { finishReason: 'abort' }
  return { finishReason: 'eos' }
}

/** What one generation sends: the body (minus prompt/messages) and the stop strings. */
function samplingBody(opts: SamplingOptions, model: string, contextLength: number | null, what: string): Record<string, unknown> {
  if (opts.speculative) invalidOption('speculative', what, 'is not available for a remote model (the server decides how it decodes)')
  const greedy = !(opts.doSample ?? DEFAULT_SAMPLING.doSample) || opts.temperature === 0
  const body: Record<string, unknown> = {
    model,
    max_tokens: opts.maxNewTokens ?? Math.min(DEFAULT_SAMPLING.maxNewTokens, contextLength ?? DEFAULT_SAMPLING.maxNewTokens),
    temperature: greedy ? 0 : (opts.temperature ?? DEFAULT_SAMPLING.temperature),
  }
  if (!greedy) {
    if (opts.topP !== undefined) body.top_p = opts.topP
    body.top_k = opts.topK ?? DEFAULT_SAMPLING.topK
    if (opts.minP !== undefined && opts.minP > 0) body.min_p = opts.minP
  }
  if (opts.repetitionPenalty !== undefined && opts.repetitionPenalty !== 1) body.repetition_penalty = opts.repetitionPenalty
  if (opts.presencePenalty) body.presence_penalty = opts.presencePenalty
  if (opts.frequencyPenalty) body.frequency_penalty = opts.frequencyPenalty
  if (opts.seed !== undefined) body.seed = opts.seed
  if (opts.logitBias) {
    body.logit_bias = Object.fromEntries(Object.entries(opts.logitBias).map(([k, v]) => [k, v === -Infinity ? -100 : Math.max(-100, Math.min(100, v))]))
  }
  return body
}

/** A streamed or plain generation against the server. */
function startRemote(
  ep: Endpoint,
  path: '/completions' | '/chat/completions',
  body: Record<string, unknown>,
  stop: readonly string[],
  signal: AbortSignal | undefined,
  onChunk: ((c: GenerateChunk) => void) | null,
  what: string,
): { result: Promise<GenerateResult>; cancel: () => void } {
  const ctl = new AbortController()
  let cancelled = false
  const onAbort = () => ctl.abort()
  signal?.addEventListener('abort', onAbort, { once: true })
  const chat = path === '/chat/completions'
  const t0 = performance.now()
  const result = (async (): Promise<GenerateResult> => {
    let text = ''
    let first: number | null = null
    let choice: Choice = {}
    let usage: Completion['usage'] = null
    try {
      if (signal?.aborted) throw sameAbort(signal)
      const streaming = onChunk !== null
      const res = await request(ep, path, { ...body, ...(stop.length ? { stop } : {}), stream: streaming, ...(streaming ? { stream_options: { include_usage: true } } : {}) }, ctl.signal, what)
      if (!streaming) {
        // Read errors are typed by request() (E_NETWORK / abort); a body that is not JSON is E_REMOTE.
        const raw = await res.text()
        let j: Completion
        try {
          j = JSON.parse(raw) as Completion
        } catch (err) {
          throw new Phi2RemoteError('E_REMOTE', `${what}: ${ep.base}${path} answered something that is not JSON: ${JSON.stringify(raw.slice(0, 100))}`, res.status, null, null, { cause: err })
        }
        choice = j.choices?.[0] ?? {}
        text = (chat ? choice.message?.content : choice.text) ?? ''
        if (chat) text = text.trim()
        usage = j.usage ?? null
        first = performance.now() - t0
      } else {
        let started = false
        const sse = { done: false }
        for await (const data of sseData(res.body!, sse)) {
          let j: Completion
          try {
            j = JSON.parse(data) as Completion
          } catch (err) {
            throw new Phi2RemoteError('E_REMOTE', `${what}: ${ep.base}${path} sent an event that is not JSON: ${JSON.stringify(data.slice(0, 100))}`, res.status, null, null, { cause: err })
          }
          if (j.error) throw new Phi2RemoteError('E_REMOTE', `${what}: the server reported an error mid-stream: ${j.error.message ?? 'unknown'}`, null, j.error.type ?? null)
          if (j.usage) usage = j.usage
          const c = j.choices?.[0]
          if (!c) continue
          let piece = (chat ? c.delta?.content : c.text) ?? ''
          if (chat && !started) {
            piece = piece.trimStart()
            started = piece.length > 0
          }
          if (c.finish_reason) choice = c
          if (piece) {
            first ??= performance.now() - t0
            text += piece
            onChunk({ text: piece, tokens: [] })
          }
        }
        // Neither a finish_reason nor [DONE]: the server went away mid-generation.
        if (!cancelled && !choice.finish_reason && !sse.done) {
          throw new Phi2RemoteError('E_NETWORK', `${what}: the stream from ${ep.base}${path} ended before the generation finished (the server closed the connection)`, null)
        }
      }
    } catch (err) {
      if (cancelled && !(signal?.aborted ?? false)) {
        choice = { finish_reason: null }
      } else if (signal?.aborted) {
        throw sameAbort(signal)
      } else if (err instanceof Phi2Error) {
        throw err
      } else {
        throw networkError(err, ep, what, 'lost the connection to')
      }
    } finally {
      signal?.removeEventListener('abort', onAbort)
    }
    if (chat && onChunk) text = text.trimEnd()
    const f = cancelled ? { finishReason: 'abort' as const } : finishOf(choice, stop, text)
    const end = performance.now() - t0
    const promptTokens = usage?.prompt_tokens ?? 0
    const completionTokens = usage?.completion_tokens ?? 0
    const generateMs = first === null ? 0 : end - first
    const base = {
      text,
      tokens: [] as number[],
      usage: { promptTokens, promptTokensEvaluated: promptTokens, completionTokens, totalTokens: promptTokens + completionTokens },
      timings: { promptMs: first ?? end, generateMs, tokensPerSecond: generateMs > 0 && completionTokens > 1 ? ((completionTokens - 1) * 1000) / generateMs : 0 },
    }
    if (onChunk) onChunk({ text: '', tokens: [], finishReason: f.finishReason })
    return f.finishReason === 'stop' ? { ...base, finishReason: 'stop', stopString: f.stopString! } : { ...base, finishReason: f.finishReason as Exclude<FinishReason, 'stop'> }
  })()
  return {
    result,
    cancel: () => {
      cancelled = true
      ctl.abort()
    },
  }
}

/** An async-iterable stream over `startRemote` with the local stream's contract. */
function remoteStream(start: (onChunk: (c: GenerateChunk) => void) => { result: Promise<GenerateResult>; cancel: () => void }): GenerationStream {
  const queue: GenerateChunk[] = []
  let wake: (() => void) | null = null
  let ended = false
  let failure: unknown = null
  let run: { result: Promise<GenerateResult>; cancel: () => void }
  try {
    run = start((c) => {
      queue.push(c)
      wake?.()
    })
  } catch (err) {
    const result = Promise.reject(err)
    result.catch(() => {})
    run = { result, cancel: () => {} }
  }
  run.result.then(
    () => {
      ended = true
      wake?.()
    },
    (err) => {
      failure = err
      ended = true
      wake?.()
    },
  )
  let iterated = false
  return {
    result: run.result,
    cancel: () => run.cancel(),
    [Symbol.asyncIterator]() {
      if (iterated) throw new TypeError('A generation stream can be iterated only once')
      iterated = true
      return {
        async next(): Promise<IteratorResult<GenerateChunk>> {
          for (;;) {
            const c = queue.shift()
            if (c) return { value: c, done: false }
            if (ended) {
              if (failure) throw failure
              return { value: undefined, done: true }
            }
            await new Promise<void>((r) => (wake = r))
            wake = null
          }
        },
        async return(): Promise<IteratorResult<GenerateChunk>> {
          run.cancel()
          return { value: undefined, done: true }
        },
      }
    },
  }
}

/** A chat with a remote model: the history is kept here and sent as OpenAI messages each turn. */
export class Phi2RemoteChat {
  readonly #model: Phi2RemoteModel
  readonly #system: string | undefined
  readonly #defaults: SamplingOptions
  readonly #turns: ChatTurn[] = []
  #disposed = false
  #busy: Promise<unknown> = Promise.resolve()

  /** @internal use `model.createChat()`. */
  constructor(model: Phi2RemoteModel, options: ChatOptions) {
    this.#model = model
    this.#system = options.system
    this.#defaults = (options.defaults ?? {}) as SamplingOptions
  }

  /** The conversation so far. */
  get turns(): readonly ChatTurn[] {
    return [...this.#turns]
  }

  /** Sends a user message and resolves with the reply (appended to the history unless aborted). */
  async send(message: string, options?: ChatSendOptions): Promise<GenerateResult> {
    return this.#run(message, options, null).result
  }

  /** Streams the reply to a user message. */
  sendStream(message: string, options?: ChatSendOptions): GenerationStream {
    return remoteStream((onChunk) => this.#run(message, options, onChunk))
  }

  /** Forgets the history. */
  reset(): void {
    this.#turns.length = 0
  }

  dispose(): void {
    this.#disposed = true
  }

  #run(message: string, options: ChatSendOptions | undefined, onChunk: ((c: GenerateChunk) => void) | null) {
    if (this.#disposed || this.#model.disposed) throw new Phi2DisposedError('chat')
    if (typeof message !== 'string') invalidOption('message', 'chat.send', 'must be a string')
    const opts = parseOptions(ChatSendOptionsSchema, { ...this.#defaults, ...(options ?? {}) }, 'chat.send')
    const messages = [
      ...(this.#system ? [{ role: 'system', content: this.#system }] : []),
      ...this.#turns.map((t) => ({ role: t.role === 'user' ? 'user' : 'assistant', content: t.text })),
      { role: 'user', content: message },
    ]
    let cancel = () => {}
    // Turns run one after another, as a local chat's do.
    const result = this.#busy.then(() => {
      const run = this.#model._start('/chat/completions', { messages }, opts, opts.stop ?? [], onChunk, 'chat.send')
      cancel = run.cancel
      return run.result
    })
    this.#busy = result.catch(() => {})
    const done = result.then((r) => {
      if (r.finishReason !== 'abort') this.#turns.push({ role: 'user', text: message }, { role: 'bot', text: r.text })
      return r
    })
    return { result: done, cancel: () => cancel() }
  }
}

/** A model behind an OpenAI-compatible server (module docs). Create it with `loadModel({ remote })`. */
export class Phi2RemoteModel {
  readonly info: Readonly<RemoteModelInfo>
  readonly #ep: Endpoint
  #disposed = false
  readonly #running = new Set<() => void>()

  /** @internal use `loadModel({ remote })`. */
  constructor(ep: Endpoint, info: RemoteModelInfo) {
    this.#ep = ep
    this.info = Object.freeze(info)
  }

  get disposed(): boolean {
    return this.#disposed
  }

  /** @internal */
  _start(path: '/completions' | '/chat/completions', payload: Record<string, unknown>, opts: SamplingOptions, stop: readonly string[], onChunk: ((c: GenerateChunk) => void) | null, what: string) {
    if (this.#disposed) throw new Phi2DisposedError()
    const body = { ...samplingBody(opts, this.info.model, this.info.contextLength, what), ...payload }
    const run = startRemote(this.#ep, path, body, stop, opts.signal, onChunk, what)
    this.#running.add(run.cancel)
    run.result.finally(() => this.#running.delete(run.cancel)).catch(() => {})
    return run
  }

  #prompt(prompt: string | readonly number[], opts: GenerateOptions, what: string): { prompt: string | number[]; stop: string[] } {
    if (typeof prompt === 'string') {
      const f = formatPrompt(opts.format ?? 'none', prompt)
      return { prompt: f.prompt, stop: opts.stop ?? f.stop }
    }
    if (!Array.isArray(prompt) || prompt.length === 0 || prompt.some((t) => !Number.isInteger(t) || t < 0)) {
      invalidOption('prompt', what, 'must be a string or a non-empty array of token ids')
    }
    if (opts.format && opts.format !== 'none') invalidOption('format', what, 'applies to string prompts only, not to token ids')
    return { prompt: [...prompt], stop: opts.stop ?? [] }
  }

  /** Generates a completion of `prompt` on the server (greedy by default, as locally). */
  async generate(prompt: string | readonly number[], options?: GenerateOptions): Promise<GenerateResult> {
    const opts = parseOptions(GenerateOptionsSchema, options, 'generate')
    const p = this.#prompt(prompt, opts, 'generate')
    return this._start('/completions', { prompt: p.prompt }, opts, p.stop, null, 'generate').result
  }

  /** Streams a completion (server-sent events): `for await (const c of model.stream(p)) …`. */
  stream(prompt: string | readonly number[], options?: GenerateOptions): GenerationStream {
    return remoteStream((onChunk) => {
      const opts = parseOptions(GenerateOptionsSchema, options, 'stream')
      const p = this.#prompt(prompt, opts, 'stream')
      return this._start('/completions', { prompt: p.prompt }, opts, p.stop, onChunk, 'stream')
    })
  }

  /** A multi-turn chat; the server formats the messages (phi2 serve: the card's Alice/Bob format). */
  createChat(options?: ChatOptions): Phi2RemoteChat {
    const opts = parseOptions(ChatOptionsSchema, options, 'createChat')
    if (this.#disposed) throw new Phi2DisposedError()
    return new Phi2RemoteChat(this, opts)
  }

  tokenize(_text: string): number[] {
    throw new Phi2BackendUnavailableError('remote', 'tokenize() needs the model locally; a remote model has no tokenizer here')
  }

  detokenize(_ids: readonly number[]): string {
    throw new Phi2BackendUnavailableError('remote', 'detokenize() needs the model locally; a remote model has no tokenizer here')
  }

  async logprobs(_tokens: readonly number[]): Promise<Float32Array> {
    throw new Phi2BackendUnavailableError('remote', 'logprobs() needs the model locally (use the server\'s logprobs option of /v1/completions)')
  }

  /** Stops running requests (they resolve with 'abort'); later calls throw E_DISPOSED. */
  dispose(): void {
    this.#disposed = true
    for (const c of [...this.#running]) c()
  }

  [Symbol.dispose](): void {
    this.dispose()
  }
}

/** `loadModel({ remote })`: checks the server (GET /models) and picks the model id. */
export async function loadRemoteModel(source: RemoteSource): Promise<Phi2RemoteModel> {
  const s = parseOptions(RemoteSourceSchema, source, 'loadModel')
  const ep: Endpoint = {
    base: s.remote.replace(/\/+$/, ''),
    headers: { accept: 'application/json', ...(s.headers ?? {}), ...(s.apiKey ? { authorization: `Bearer ${s.apiKey}` } : {}) },
    timeoutMs: s.timeoutMs,
  }
  const res = await request(ep, '/models', undefined, s.signal, 'loadModel')
  let list: { data?: { id?: string; max_model_len?: number }[] }
  try {
    list = (await res.json()) as typeof list
  } catch (err) {
    if (err instanceof Phi2Error) throw err // the connection (E_NETWORK) or an abort
    throw new Phi2RemoteError('E_REMOTE', `loadModel: ${ep.base}/models did not answer JSON`, res.status, null, null, { cause: err })
  }
  const models = (list.data ?? []).filter((m) => typeof m.id === 'string')
  const chosen = s.model ? models.find((m) => m.id === s.model) : models[0]
  if (!chosen) {
    throw new Phi2RemoteError(
      'E_REMOTE',
      s.model ? `loadModel: the server does not serve "${s.model}" (it lists: ${models.map((m) => m.id).join(', ') || 'nothing'})` : `loadModel: the server lists no model`,
      404,
    )
  }
  return new Phi2RemoteModel(ep, { backend: 'remote', source: ep.base, model: chosen.id!, contextLength: typeof chosen.max_model_len === 'number' ? chosen.max_model_len : null })
}
