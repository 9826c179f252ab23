/**
 * `phi2 serve`: one process, one model, many users. Fastify routes:
 *
 * - `POST /score`: the model card's real-time contract (`input_data` / `inputs` with
 *   `input_string` and `parameters`) → `[{"0": text}, {"1": text}, ...]`.
 * - `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models`: the OpenAI API, with
 *   `stream: true` as server-sent events ending in `data: [DONE]`.
 * - `GET /health` (200 once the model is loaded, 503 before), `GET /metrics` (Prometheus text).
 *
 * Every generation is one sequence of the model's continuous batch ({@link BatchRunner}). Limits:
 * a bounded queue (429 + Retry-After when full), body size, prompt and max tokens within the
 * context, a time limit per request; a client that disconnects aborts its sequences at the next
 * step. Errors use OpenAI's body `{"error": {"message", "type", "param", "code"}}`.
 */
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto'
import { basename } from 'node:path'
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import { Phi2Error, Phi2OptionsError } from '../errors.js'
import { checkTokenIds } from '../generation.js'
import type { Phi2Model } from '../model.js'
import type { SamplingOptions } from '../options.js'
import { ServerMetrics } from './metrics.js'
import {
  ApiError,
  COMPLETIONS_DEFAULT_MAX_TOKENS,
  type OpenAIRequest,
  badRequest,
  chatStops,
  openaiNames,
  parseOpenAI,
  parseScore,
  scoreNames,
  wireError,
  type WireNames,
} from './protocol.js'
import { BatchRunner, type Piece, type RunResult, type TokenLogprob } from './runner.js'

export interface ServeOptions {
  /**
   * Loads the model (called once, after the server listens, so that /health can say "loading").
   * `signal` is aborted when the server is closed during the load.
   */
  load: (signal: AbortSignal) => Promise<Phi2Model>
  /** The id reported by /v1/models and accepted as `model` (default: the model file's name). */
  modelName?: string
  /** Sequences decoded together. Default 8. */
  parallel?: number
  /** Generations waiting beyond `parallel` before new requests get 429. Default 64. */
  maxQueue?: number
  /** Largest request body in bytes. Default 1 MiB. */
  bodyLimit?: number
  /** Time limit per request in ms. Default 300 000 (5 min). */
  timeoutMs?: number
  /** Bearer token required on every route but /health. */
  apiKey?: string
  /** The one origin allowed by CORS (`*` for any); CORS is off without it. */
  cors?: string
  /** Logs one line per request to stderr. */
  log?: boolean
}

export interface Phi2Server {
  app: FastifyInstance
  /** Resolves when the model is loaded (rejects if loading failed). */
  ready: Promise<void>
  /** Stops accepting requests, lets the running ones finish, frees the model. */
  close(): Promise<void>
}

const FINISH: Record<RunResult['finishReason'], 'stop' | 'length' | null> = { stop: 'stop', eos: 'stop', length: 'length', abort: null }

/** Compares secrets in constant time (hashes first, so lengths do not leak either). */
function sameSecret(a: string, b: string): boolean {
  const h = (s: string) => createHash('sha256').update(s).digest()
  return timingSafeEqual(h(a), h(b))
}

function engineError(err: unknown, names: WireNames): ApiError {
  const e = wireError(err, names)
  if (e instanceof ApiError) return e
  if (e instanceof Phi2OptionsError) return badRequest(e.message, e.path)
  if (e instanceof Phi2Error) {
    if (e.code === 'E_INVALID_ARGUMENT' || e.code === 'E_INVALID_OPTION') return badRequest(e.message, null, e.code)
    if (e.code === 'E_DISPOSED') return new ApiError(503, 'The server is shutting down', 'server_error', null, 'shutting_down')
    return new ApiError(500, e.message, 'server_error', null, e.code)
  }
  return new ApiError(500, e instanceof Error ? e.message : String(e), 'server_error')
}

export function createServer(opts: ServeOptions): Phi2Server {
  const parallel = opts.parallel ?? 8
  const maxQueue = opts.maxQueue ?? 64
  const timeoutMs = opts.timeoutMs ?? 300_000
  const metrics = new ServerMetrics()
  const app = Fastify({ bodyLimit: opts.bodyLimit ?? 1 << 20, logger: false, return503OnClosing: true })
  let runner: BatchRunner | null = null
  let model: Phi2Model | null = null
  let loadError: unknown = null
  let modelName = opts.modelName ?? 'phi-2'
  /** Generations admitted (running or waiting in the engine). */
  let admitted = 0
  let closing = false
  const loading = new AbortController()

  const ready = (async () => {
    try {
      model = await opts.load(loading.signal)
      if (closing) throw new Phi2Error('E_ABORTED', 'The server was closed while the model was loading')
      if (!opts.modelName) modelName = basename(model.info.source).replace(/\.gguf$/i, '') || modelName
      runner = new BatchRunner(model, { maxSequences: parallel })
    } catch (err) {
      loadError = err
      throw err
    }
  })()
  ready.catch(() => {})

  app.addHook('onRequest', async (req, reply) => {
    if (opts.cors) {
      reply.header('access-control-allow-origin', opts.cors)
      if (opts.cors !== '*') reply.header('vary', 'Origin')
      if (req.method === 'OPTIONS') {
        reply
          .header('access-control-allow-methods', 'GET, POST, OPTIONS')
          .header('access-control-allow-headers', 'authorization, content-type')
          .header('access-control-max-age', '600')
          .code(204)
          .send()
        return reply
      }
    }
    if (opts.apiKey && req.url !== '/health') {
      const h = req.headers.authorization ?? ''
      const m = /^Bearer\s+(.+)$/i.exec(h)
      if (!m || !sameSecret(m[1]!.trim(), opts.apiKey)) {
        const e = new ApiError(401, 'Missing or invalid API key (send "Authorization: Bearer KEY")', 'invalid_request_error', null, 'invalid_api_key')
        reply.code(401).header('www-authenticate', 'Bearer').send(e.body())
        return reply
      }
    }
  })
  app.addHook('onResponse', async (req, reply) => {
    metrics.requests.inc({ route: req.routeOptions.url ?? 'unknown', code: String(reply.statusCode) })
  })
  if (opts.log) {
    app.addHook('onResponse', async (req, reply) => {
      process.stderr.write(`phi2 serve: ${req.method} ${req.url} ${reply.statusCode} ${reply.elapsedTime.toFixed(0)} ms\n`)
    })
  }

  app.setErrorHandler((err: unknown, _req, reply) => {
    if (err instanceof ApiError) {
      reply.code(err.status).headers(err.headers).send(err.body())
      return
    }
    const e = err as { statusCode?: number; code?: string; message?: string }
    const status = typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500 ? e.statusCode : 500
    const message =
      e.code === 'FST_ERR_CTP_BODY_TOO_LARGE'
        ? `The request body is larger than the limit of ${opts.bodyLimit ?? 1 << 20} bytes`
        : status === 400 && e.code?.startsWith('FST_ERR_CTP')
          ? `Malformed request body: ${e.message}`
          : status === 400
            ? `Malformed JSON body: ${e.message}`
            : (e.message ?? 'Internal error')
    reply.code(status).send(new ApiError(status, message, status < 500 ? 'invalid_request_error' : 'server_error', null, e.code ?? null).body())
  })
  app.setNotFoundHandler((req, reply) => {
    reply.code(404).send(new ApiError(404, `No route ${req.method} ${req.url}`, 'invalid_request_error', null, 'not_found').body())
  })

  /** The runner once loaded; 503 before. */
  const loaded = (): BatchRunner => {
    if (runner) return runner
    if (loadError) throw new ApiError(503, `The model failed to load: ${(loadError as Error).message}`, 'server_error', null, 'model_load_failed')
    throw new ApiError(503, 'The model is still loading', 'server_error', null, 'model_loading', { 'retry-after': '1' })
  }

  /**
   * Reserves `count` generations in the queue, or throws 429 (400 when `count` could never fit:
   * `param` names the field that makes it that many).
   */
  const admit = (count: number, param: string): (() => void) => {
    if (closing) throw new ApiError(503, 'The server is shutting down', 'server_error', null, 'shutting_down')
    if (count > parallel + maxQueue) {
      throw badRequest(
        `The request asks for ${count} generations; this server runs at most ${parallel + maxQueue} at once (--parallel ${parallel} + --max-queue ${maxQueue}): send fewer in "${param}"`,
        param,
      )
    }
    if (admitted + count > parallel + maxQueue) {
      metrics.rejected.inc()
      throw new ApiError(429, `The server is busy (${admitted} generations running or queued); retry later`, 'rate_limit_error', null, 'queue_full', {
        'retry-after': '1',
      })
    }
    admitted += count
    let released = false
    return () => {
      if (!released) admitted -= count
      released = true
    }
  }

  /** An AbortController for a request: aborted on client disconnect or the time limit. */
  const lifetime = (req: FastifyRequest, reply: FastifyReply) => {
    const ctl = new AbortController()
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      ctl.abort(new Error('time limit'))
    }, timeoutMs)
    const onClose = () => {
      if (!reply.raw.writableFinished) ctl.abort(new Error('client disconnected'))
    }
    reply.raw.on('close', onClose)
    req.raw.on('aborted', onClose)
    return {
      signal: ctl.signal,
      /** Stops every sequence of the request (one of them failed). */
      abort(reason: unknown) {
        ctl.abort(reason)
      },
      get timedOut() {
        return timedOut
      },
      done() {
        clearTimeout(timer)
      },
    }
  }

  /**
   * Longest token in UTF-16 units (≤ its bytes): a text longer than context × this cannot fit,
   * whatever it holds, so it is refused before the tokenizer runs on the JS thread.
   */
  let maxTokenChars = 0
  const tooLong = (r: BatchRunner, text: string, param: string): ApiError | null => {
    if (maxTokenChars === 0) {
      for (let id = 0; id < r.model.info.vocabSize; id++) {
        try {
          maxTokenChars = Math.max(maxTokenChars, r.tokenizer.tokenBytes(id).length)
        } catch {
          // ids of the embedding beyond the tokenizer's vocabulary have no text
        }
      }
      maxTokenChars = Math.max(maxTokenChars, 1)
    }
    const ctx = r.model.info.contextLength
    if (text.length <= ctx * maxTokenChars) return null
    return badRequest(
      `The prompt has ${text.length} characters, more than the context of ${ctx} tokens can hold (at most ${maxTokenChars} characters per token)`,
      param,
      'context_length_exceeded',
    )
  }

  /** Waits for all of a request's generations; the first failure aborts the others, then is thrown once they ended. */
  const all = async <T>(runs: Promise<T>[], life: { abort(reason: unknown): void }): Promise<T[]> => {
    try {
      return await Promise.all(runs)
    } catch (err) {
      life.abort(err)
      await Promise.allSettled(runs)
      throw err
    }
  }

  const promptIds = (r: BatchRunner, text: string): number[] => {
    const ids = r.tokenizer.encode(text)
    if (ids.length > 0) return ids
    const eos = r.model.info.eosTokenId
    return eos === null ? [0] : [eos]
  }

  const record = (out: RunResult, t0: number) => {
    metrics.promptTokens.inc({}, out.promptTokens)
    metrics.completionTokens.inc({}, out.completionTokens)
    metrics.latency.observe((performance.now() - t0) / 1000)
    metrics.queueWait.observe(out.queueMs / 1000)
    if (out.firstTokenMs !== null) metrics.firstToken.observe(out.firstTokenMs / 1000)
  }

  app.get('/health', async (_req, reply) => {
    if (runner && !closing) return { status: 'ok', model: modelName }
    reply.code(503)
    return { status: closing ? 'shutting_down' : loadError ? 'failed' : 'loading' }
  })

  app.get('/metrics', async (_req, reply) => {
    const s = runner?.stats() ?? { active: 0, queued: 0, lastBatchSize: 0, steps: 0 }
    reply.type('text/plain; version=0.0.4; charset=utf-8')
    return metrics.render({ queueDepth: s.queued, active: s.active, batchSize: s.lastBatchSize, steps: s.steps, ready: runner !== null })
  })

  app.get('/v1/models', async () => {
    loaded()
    const created = Math.floor(Date.now() / 1000)
    return {
      object: 'list',
      data: [{ id: modelName, object: 'model', created, owned_by: 'phi2', max_model_len: model!.info.contextLength }],
    }
  })

  app.post('/score', async (req, reply) => {
    const r = loaded()
    const score = parseScore(req.body)
    const names = scoreNames(score.key)
    const release = admit(score.prompts.length, `${score.key}.input_string`)
    let jobs: { text: string; ids: number[] }[]
    const stop = score.options.stop ?? []
    try {
      score.prompts.forEach((text, i) => {
        const e = tooLong(r, text, `${score.key}.input_string.${i}`)
        if (e) throw e
      })
      jobs = score.prompts.map((text) => ({ text, ids: promptIds(r, text) }))
      for (const j of jobs) r.resolve({ ids: j.ids, options: score.options, stop, what: 'score' })
    } catch (err) {
      release()
      throw engineError(err, names)
    }
    const life = lifetime(req, reply)
    const t0 = performance.now()
    try {
      const outs = await all(
        jobs.map((j) => r.run({ ids: j.ids, options: score.options, stop, signal: life.signal, what: 'score' })),
        life,
      )
      if (life.timedOut) throw new ApiError(504, `The request ran past the time limit of ${timeoutMs} ms`, 'server_error', null, 'timeout')
      outs.forEach((o) => record(o, t0))
      return outs.map((o, i) => ({ [String(i)]: score.returnFullText ? jobs[i]!.text + o.text : o.text }))
    } catch (err) {
      throw engineError(err, names)
    } finally {
      life.done()
      release()
    }
  })

  const openai = (kind: 'completion' | 'chat') => async (req: FastifyRequest, reply: FastifyReply) => {
    const r = loaded()
    const q = parseOpenAI(kind, req.body)
    const names = openaiNames(kind)
    if (q.model !== undefined && q.model !== modelName) {
      throw new ApiError(404, `The model "${q.model}" does not exist (this server serves "${modelName}")`, 'invalid_request_error', 'model', 'model_not_found')
    }
    const stop = kind === 'chat' ? [...q.stop, ...chatStops()] : q.stop
    const release = admit(q.prompts.length * q.n, q.prompts.length > 1 && q.n > 1 ? 'prompt' : q.n > 1 ? 'n' : kind === 'chat' ? 'messages' : 'prompt')
    const jobs: { prompt: number; choice: number; ids: number[]; options: SamplingOptions }[] = []
    let prompts: number[][]
    try {
      const vocab = r.model.info.vocabSize
      const ctx = r.model.info.contextLength
      const param = (pi: number) => (kind === 'chat' ? 'messages' : q.prompts.length > 1 ? `prompt.${pi}` : 'prompt')
      q.prompts.forEach((p, pi) => {
        const e = 'text' in p ? tooLong(r, p.text, param(pi)) : null
        if (e) throw e
      })
      prompts = q.prompts.map((p, pi) => ('ids' in p ? checkTokenIds(p.ids, vocab, param(pi), kind) : promptIds(r, p.text)))
      for (const [pi, ids] of prompts.entries()) {
        for (let i = 0; i < q.n; i++) {
          const options: SamplingOptions =
            q.options.seed !== undefined ? { ...q.options, seed: Math.min(q.options.seed + i, Number.MAX_SAFE_INTEGER) } : { ...q.options }
          // OpenAI's (and vLLM's) completions default: 16 new tokens, within the context's room.
          if (kind === 'completion' && !q.maxTokensGiven) options.maxNewTokens = Math.max(1, Math.min(COMPLETIONS_DEFAULT_MAX_TOKENS, ctx - ids.length))
          jobs.push({ prompt: pi, choice: pi * q.n + i, ids, options })
        }
      }
      for (const j of jobs) r.resolve({ ids: j.ids, options: j.options, stop, what: kind })
    } catch (err) {
      release()
      throw engineError(err, names)
    }
    const life = lifetime(req, reply)
    const t0 = performance.now()
    const id = `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replace(/-/g, '')}`
    const created = Math.floor(Date.now() / 1000)
    const promptTokens = prompts.reduce((s, p) => s + p.length, 0)
    const run = (j: (typeof jobs)[number], onPiece?: (p: Piece) => void) =>
      r.run({
        ids: j.ids,
        options: j.options,
        stop,
        signal: life.signal,
        what: kind,
        ...(q.topLogprobs !== undefined ? { topLogprobs: q.topLogprobs } : {}),
        ...(onPiece ? { onPiece } : {}),
      })
    if (!q.stream) {
      try {
        const outs = await all(
          jobs.map((j) => run(j)),
          life,
        )
        if (life.timedOut) throw new ApiError(504, `The request ran past the time limit of ${timeoutMs} ms`, 'server_error', null, 'timeout')
        outs.forEach((o) => record(o, t0))
        const completionTokens = outs.reduce((s, o) => s + o.completionTokens, 0)
        const usage = { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens }
        const choices = outs.map((o, i) =>
          kind === 'chat'
            ? {
                index: jobs[i]!.choice,
                message: { role: 'assistant', content: o.text.trim() },
                logprobs: q.topLogprobs !== undefined ? { content: chatLogprobs(r, o.logprobs) } : null,
                finish_reason: FINISH[o.finishReason],
                stop_reason: stopReason(r, o),
              }
            : {
                index: jobs[i]!.choice,
                text: o.text,
                logprobs: q.topLogprobs !== undefined ? completionLogprobs(r, o.logprobs) : null,
                finish_reason: FINISH[o.finishReason],
                stop_reason: stopReason(r, o),
              },
        )
        return { id, object: kind === 'chat' ? 'chat.completion' : 'text_completion', created, model: modelName, choices, usage }
      } catch (err) {
        throw engineError(err, names)
      } finally {
        life.done()
        release()
      }
    }

    // Server-sent events.
    reply.hijack()
    const res = reply.raw
    res.writeHead(200, {
      ...(reply.getHeaders() as Record<string, string>),
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    })
    res.flushHeaders()
    const send = (data: unknown) => {
      if (!res.destroyed) res.write(`data: ${JSON.stringify(data)}\n\n`)
    }
    const object = kind === 'chat' ? 'chat.completion.chunk' : 'text_completion'
    const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) => ({ id, object, created, model: modelName, choices, ...extra })
    try {
      if (kind === 'chat') send(chunk(jobs.map((j) => ({ index: j.choice, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }))))
      const outs = await all(
        jobs.map((j) => {
          let started = false
          return run(j, (p) => {
            let text = p.text
            if (kind === 'chat' && !started) {
              text = text.trimStart()
              if (text) started = true
            }
            if (!text && p.logprobs.length === 0) return
            if (kind === 'chat') {
              send(chunk([{ index: j.choice, delta: { content: text }, logprobs: q.topLogprobs !== undefined ? { content: chatLogprobs(r, p.logprobs) } : null, finish_reason: null }]))
            } else {
              send(chunk([{ index: j.choice, text, logprobs: q.topLogprobs !== undefined ? completionLogprobs(r, p.logprobs) : null, finish_reason: null }]))
            }
          }).then((o) => {
            const finish = FINISH[o.finishReason]
            const stop_reason = stopReason(r, o)
            if (kind === 'chat') send(chunk([{ index: j.choice, delta: {}, logprobs: null, finish_reason: finish, stop_reason }]))
            else send(chunk([{ index: j.choice, text: '', logprobs: null, finish_reason: finish, stop_reason }]))
            return o
          })
        }),
        life,
      )
      outs.forEach((o) => record(o, t0))
      if (life.timedOut) {
        send(new ApiError(504, `The request ran past the time limit of ${timeoutMs} ms`, 'server_error', null, 'timeout').body())
      } else if (q.includeUsage) {
        const completionTokens = outs.reduce((s, o) => s + o.completionTokens, 0)
        send(chunk([], { usage: { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens } }))
      }
    } catch (err) {
      send(engineError(err, names).body())
    } finally {
      life.done()
      release()
      if (!res.destroyed) res.end('data: [DONE]\n\n')
    }
  }
  app.post('/v1/completions', openai('completion'))
  app.post('/v1/chat/completions', openai('chat'))

  return {
    app,
    ready,
    async close() {
      closing = true
      // A load still running is aborted, and waited for so that its model is freed too.
      loading.abort(new Error('the server is closing'))
      await app.close()
      await ready.catch(() => {})
      runner?.dispose()
      model?.dispose()
    },
  }
}

/** vLLM's `stop_reason`: the stop string that ended the choice, the end-of-text id, or null. */
function stopReason(r: BatchRunner, o: RunResult): string | number | null {
  if (o.finishReason === 'stop') return o.stopString
  if (o.finishReason === 'eos') return r.model.info.eosTokenId
  return null
}

function tokenText(r: BatchRunner, id: number): string {
  return r.tokenizer.decode([id])
}

/** OpenAI completions `logprobs`: tokens, token_logprobs, top_logprobs (dicts), text_offset. */
function completionLogprobs(r: BatchRunner, lps: readonly TokenLogprob[]) {
  let offset = 0
  const text_offset: number[] = []
  const tokens = lps.map((l) => {
    const t = tokenText(r, l.token)
    text_offset.push(offset)
    offset += t.length
    return t
  })
  return {
    tokens,
    token_logprobs: lps.map((l) => l.logprob),
    top_logprobs: lps.map((l) => Object.fromEntries(l.top.map((t) => [tokenText(r, t.token), t.logprob]))),
    text_offset,
  }
}

/** OpenAI chat `logprobs.content`. */
function chatLogprobs(r: BatchRunner, lps: readonly TokenLogprob[]) {
  const bytes = (id: number) => [...r.tokenizer.tokenBytes(id)]
  return lps.map((l) => ({
    token: tokenText(r, l.token),
    logprob: l.logprob,
    bytes: bytes(l.token),
    top_logprobs: l.top.map((t) => ({ token: tokenText(r, t.token), logprob: t.logprob, bytes: bytes(t.token) })),
  }))
}
