/**
 * Multi-turn chat in the Phi-2 model card's format. The chat owns one engine session whose KV
 * cache holds the conversation; each turn appends its tokens to the token history, so only the
 * new tokens are evaluated (`result.usage.promptTokensEvaluated`). Turns are serialized.
 */
import type { EngineSession } from './engine.js'
import { Phi2DisposedError, type Phi2Error } from './errors.js'
import {
  type GenerateChunk,
  type GenerateResult,
  type GenerationHost,
  type GenerationStream,
  GenerationJob,
  makeStream,
  resolveGeneration,
} from './generation.js'
import {
  type ChatOptions,
  type ChatSendOptions,
  ChatSendOptionsSchema,
  DEFAULT_SAMPLING,
  invalidOption,
  parseOptions,
} from './options.js'
import { type ChatTurn, DEFAULT_BOT_NAME, DEFAULT_USER_NAME, chatStop, formatChat } from './prompts.js'

/** @internal what a chat needs from its model. */
export interface ChatHost extends GenerationHost {
  createSession(): EngineSession
  chatClosed(chat: Phi2Chat): void
}

/** A conversation with a model. Create it with `model.createChat()`. */
export class Phi2Chat {
  /** The user's speaker name (default `'Alice'`). */
  readonly userName: string
  /** The model's speaker name (default `'Bob'`). */
  readonly botName: string
  /** The text placed before the first turn, if any. */
  readonly system: string | undefined
  readonly #host: ChatHost
  readonly #defaults: ChatSendOptions
  #session: EngineSession | null = null
  #history: number[] = []
  #turns: ChatTurn[] = []
  #endsWithUserMarker = false
  #queue: Promise<void> = Promise.resolve()
  #epoch = 0
  #current: GenerationJob | null = null
  #disposed = false

  /** @internal use `model.createChat()`. */
  constructor(host: ChatHost, options: ChatOptions) {
    this.#host = host
    this.userName = options.userName ?? DEFAULT_USER_NAME
    this.botName = options.botName ?? DEFAULT_BOT_NAME
    this.system = options.system
    this.#defaults = options.defaults ?? {}
  }

  /** The conversation so far (user and bot turns, oldest first). */
  get turns(): readonly ChatTurn[] {
    return [...this.#turns]
  }

  /** Number of tokens in the conversation's token history. */
  get historyLength(): number {
    return this.#history.length
  }

  /** Sends a user message and resolves with the model's reply (text cut at the next speaker's turn). */
  async send(message: string, options?: ChatSendOptions): Promise<GenerateResult> {
    const job = await this.#enqueue(message, options)
    return job.promise
  }

  /** Like {@link send}, streaming the reply (see `GenerationStream`). */
  sendStream(message: string, options?: ChatSendOptions): GenerationStream {
    return makeStream((onChunk) => this.#enqueue(message, options, onChunk))
  }

  /** Forgets the conversation (and the KV cache). A reply in progress still completes, but is not kept. */
  reset(): void {
    this.#epoch++
    this.#history = []
    this.#turns = []
    this.#endsWithUserMarker = false
    this.#queue = this.#queue.then(() => {
      try {
        this.#session?.reset()
      } catch {
        // disposed meanwhile
      }
    })
  }

  /** Releases the chat's session; a reply in progress rejects with `E_DISPOSED`. Idempotent. */
  dispose(): void {
    if (this.#disposed) return
    this.#disposed = true
    this.#current?.fail(new Phi2DisposedError('chat'))
    const session = this.#session
    this.#session = null
    this.#host.chatClosed(this)
    if (session) {
      void this.#queue.then(() => {
        try {
          session.dispose()
        } catch {
          // model already gone
        }
      })
    }
  }

  /** `using chat = model.createChat()` disposes it at the end of the scope. */
  [Symbol.dispose](): void {
    this.dispose()
  }

  /** `await using chat = model.createChat()` disposes it at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose()
  }

  #enqueue(message: string, options: ChatSendOptions | undefined, onChunk?: (c: GenerateChunk) => void): Promise<GenerationJob> {
    const opts = parseOptions(ChatSendOptionsSchema, { ...this.#defaults, ...(options ?? {}) }, 'chat.send')
    if (typeof message !== 'string') invalidOption('message', 'chat.send', 'must be a string')
    const started = this.#queue.then(() => this.#begin(message, opts, onChunk))
    this.#queue = started.then(
      (job) =>
        job.promise
          .then(
            () => {},
            () => {},
          )
          .then(() => job.nativeDone),
      () => {},
    )
    return started
  }

  #assertAlive(): void {
    if (this.#disposed) throw new Phi2DisposedError('chat')
    if (this.#host.disposed) throw new Phi2DisposedError()
  }

  #begin(message: string, opts: ChatSendOptions, onChunk?: (c: GenerateChunk) => void): GenerationJob {
    this.#assertAlive()
    const host = this.#host
    const tok = host.tokenizer
    const user = this.userName
    const bot = this.botName
    const text = message.trim()
    let prompt: number[]
    if (this.#history.length === 0) {
      prompt = tok.encode(formatChat([{ role: 'user', text }], { userName: user, botName: bot, system: this.system }).prompt)
    } else {
      const suffix = this.#endsWithUserMarker ? ` ${text}\n${bot}:` : `\n${user}: ${text}\n${bot}:`
      prompt = [...this.#history, ...tok.encode(suffix)]
    }
    // Keep room to answer: drop the oldest turns (re-encoding the transcript) when the context is short.
    const ctx = host.contextLength
    const reserve = Math.min(opts.maxNewTokens ?? DEFAULT_SAMPLING.maxNewTokens, Math.floor(ctx / 2))
    if (prompt.length + reserve > ctx) {
      for (let k = 0; k <= this.#turns.length; k += 2) {
        const turns: ChatTurn[] = [...this.#turns.slice(k), { role: 'user', text }]
        prompt = tok.encode(formatChat(turns, { userName: user, botName: bot, system: this.system }).prompt)
        if (prompt.length + reserve <= ctx) break
      }
    }
    const resolved = resolveGeneration(host, opts, prompt.length, chatStop(user, bot), 'chat.send')
    this.#session ??= host.createSession()
    const job = new GenerationJob(host, this.#session, prompt, resolved, onChunk)
    this.#current = job
    const epoch = this.#epoch
    job.promise.then(
      (r) => {
        if (this.#current === job) this.#current = null
        if (epoch !== this.#epoch) return
        const marker = `\n${user}:`
        if (r.finishReason === 'stop') {
          if (r.stopString === marker && tok.decode(r.tokens) === r.text + marker) {
            this.#history = [...prompt, ...r.tokens]
            this.#endsWithUserMarker = true
          } else {
            this.#history = [...prompt, ...tok.encode(r.text)]
            this.#endsWithUserMarker = false
          }
        } else {
          this.#history = [...prompt, ...r.tokens]
          this.#endsWithUserMarker = false
        }
        this.#turns.push({ role: 'user', text }, { role: 'bot', text: r.text.trim() })
      },
      (_err: Phi2Error) => {
        if (this.#current === job) this.#current = null
      },
    )
    return job
  }
}
