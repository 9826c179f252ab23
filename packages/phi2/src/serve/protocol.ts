/**
 * Request parsing for `phi2 serve`: the model card's real-time contract (`POST /score`) and the
 * OpenAI API (`/v1/completions`, `/v1/chat/completions`). Every bad field becomes an
 * {@link ApiError} (HTTP 400) whose `param` names it with the wire name the client sent.
 */
import { z } from 'zod'
import { Phi2OptionsError } from '../errors.js'
import type { SamplingOptions } from '../options.js'
import { SamplingOptionsSchema, parseOptions } from '../options.js'
import { type ChatTurn, formatChat } from '../prompts.js'

/** An error answered with OpenAI's body `{ error: { message, type, param, code } }`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type = 'invalid_request_error',
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message)
  }

  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } }
  }
}

export function badRequest(message: string, param: string | null, code: string | null = null): ApiError {
  return new ApiError(400, message, 'invalid_request_error', param, code)
}

/** The first zod issue as a 400 naming its field (dotted path), `prefix` in front of the path. */
function zodError(error: z.ZodError, prefix = ''): ApiError {
  const issue = error.issues[0]!
  let path = issue.path.map(String).join('.')
  if (issue.code === 'unrecognized_keys') path = path ? `${path}.${issue.keys[0]}` : issue.keys[0]!
  const full = prefix && path ? `${prefix}.${path}` : prefix || path
  const message =
    issue.code === 'unrecognized_keys' ? `Unknown field "${full}"` : `Invalid field "${full || 'body'}": ${issue.message}`
  return badRequest(message, full || null)
}

/** SDK option name → the wire name of each protocol, for errors found by the SDK's validation. */
export type WireNames = Partial<Record<keyof SamplingOptions | 'prompt', string>>

/**
 * Validates `opts` with the SDK's schema; a failure becomes a 400 naming the wire field.
 */
export function checkSampling(opts: SamplingOptions, names: WireNames, what: string): SamplingOptions {
  try {
    return parseOptions(SamplingOptionsSchema, opts, what)
  } catch (err) {
    throw wireError(err, names)
  }
}

/** A `Phi2OptionsError` (SDK names) → a 400 with the protocol's field name; other errors pass. */
export function wireError(err: unknown, names: WireNames): unknown {
  if (err instanceof Phi2OptionsError) {
    const head = err.path.split('.')[0] as keyof WireNames
    const wire = names[head] ?? err.path
    const rest = err.path.slice(head.length)
    const msg = err.message.replace(/option "([^"]*)"/, `field "${wire}${rest}"`).replace(/Unknown \S+ option/, 'Unknown field')
    return badRequest(msg, `${wire}${rest}`)
  }
  if (err instanceof Error && (err as { code?: string }).code === 'E_PROMPT_TOO_LONG') {
    return badRequest(err.message, names.prompt ?? 'prompt', 'context_length_exceeded')
  }
  return err
}

// ---------------------------------------------------------------------------------------------
// POST /score (the model card's real-time contract)

/** Parameters of Azure's text-generation containers that this server does not implement. */
export const SCORE_UNSUPPORTED = ['best_of', 'typical_p', 'truncate', 'watermark', 'decoder_input_details'] as const

const num = z.number({ error: 'must be a number' })

/** Most prompts in one request (`input_string`, a list `prompt`); the queue bounds it further. */
export const MAX_PROMPTS = 1024
const ScoreParams = z.strictObject({
  do_sample: z.boolean({ error: 'must be a boolean' }).optional(),
  max_new_tokens: num.int('must be an integer').optional(),
  temperature: num.optional(),
  top_p: num.optional(),
  top_k: num.int('must be an integer').optional(),
  repetition_penalty: num.optional(),
  seed: num.int('must be an integer').optional(),
  stop_sequences: z.array(z.string({ error: 'must be a string' }), { error: 'must be a list of strings' }).optional(),
  return_full_text: z.boolean({ error: 'must be a boolean' }).optional(),
  min_p: num.optional(),
  presence_penalty: num.optional(),
  frequency_penalty: num.optional(),
})
const ScoreInput = z.strictObject({
  input_string: z
    .array(z.string({ error: 'must be a string' }), { error: 'must be a list of strings' })
    .min(1, 'must hold at least one prompt')
    .max(MAX_PROMPTS, `must hold at most ${MAX_PROMPTS} prompts`),
  parameters: z.record(z.string(), z.unknown(), { error: 'must be an object' }).optional(),
})

export interface ScoreRequest {
  prompts: string[]
  options: SamplingOptions
  returnFullText: boolean
  /** Where the input was: `input_data` or `inputs`. */
  key: 'input_data' | 'inputs'
}

const SCORE_NAMES: WireNames = {
  maxNewTokens: 'parameters.max_new_tokens',
  doSample: 'parameters.do_sample',
  temperature: 'parameters.temperature',
  topK: 'parameters.top_k',
  topP: 'parameters.top_p',
  minP: 'parameters.min_p',
  repetitionPenalty: 'parameters.repetition_penalty',
  presencePenalty: 'parameters.presence_penalty',
  frequencyPenalty: 'parameters.frequency_penalty',
  seed: 'parameters.seed',
  stop: 'parameters.stop_sequences',
  prompt: 'input_string',
}

export function scoreNames(key: string): WireNames {
  return Object.fromEntries(Object.entries(SCORE_NAMES).map(([k, v]) => [k, `${key}.${v}`]))
}

export function parseScore(body: unknown): ScoreRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw badRequest('The body must be a JSON object', null)
  const b = body as Record<string, unknown>
  const keys = Object.keys(b)
  const key = 'input_data' in b ? 'input_data' : 'inputs' in b ? 'inputs' : null
  if (key === null) throw badRequest('The body needs "input_data" (or "inputs") with "input_string" and "parameters"', 'input_data')
  const extra = keys.filter((k) => k !== key)
  if (extra.length) throw badRequest(`Unknown field "${extra[0]}"`, extra[0]!)
  const input = ScoreInput.safeParse(b[key])
  if (!input.success) throw zodError(input.error, key)
  const raw = input.data.parameters ?? {}
  const unsupported = Object.keys(raw).filter((k) => (SCORE_UNSUPPORTED as readonly string[]).includes(k))
  if (unsupported.length) {
    throw badRequest(
      `Unsupported parameter${unsupported.length > 1 ? 's' : ''} ${unsupported.map((k) => `"${k}"`).join(', ')}: this server does not implement ${unsupported.length > 1 ? 'them' : 'it'}`,
      `${key}.parameters.${unsupported[0]}`,
    )
  }
  const params = ScoreParams.safeParse(raw)
  if (!params.success) throw zodError(params.error, `${key}.parameters`)
  const p = params.data
  const options: SamplingOptions = {
    ...(p.max_new_tokens !== undefined ? { maxNewTokens: p.max_new_tokens } : {}),
    ...(p.do_sample !== undefined ? { doSample: p.do_sample } : {}),
    ...(p.temperature !== undefined ? { temperature: p.temperature } : {}),
    ...(p.top_k !== undefined ? { topK: p.top_k } : {}),
    ...(p.top_p !== undefined ? { topP: p.top_p } : {}),
    ...(p.min_p !== undefined ? { minP: p.min_p } : {}),
    ...(p.repetition_penalty !== undefined ? { repetitionPenalty: p.repetition_penalty } : {}),
    ...(p.presence_penalty !== undefined ? { presencePenalty: p.presence_penalty } : {}),
    ...(p.frequency_penalty !== undefined ? { frequencyPenalty: p.frequency_penalty } : {}),
    ...(p.seed !== undefined ? { seed: p.seed } : {}),
    ...(p.stop_sequences !== undefined ? { stop: p.stop_sequences } : {}),
  }
  return {
    prompts: input.data.input_string,
    options: checkSampling(options, scoreNames(key), 'score'),
    returnFullText: p.return_full_text ?? true,
    key,
  }
}

// ---------------------------------------------------------------------------------------------
// OpenAI: /v1/completions and /v1/chat/completions

/** OpenAI fields this server does not implement (400 naming them rather than silently ignoring). */
const OPENAI_UNSUPPORTED = ['best_of', 'suffix', 'echo', 'tools', 'tool_choice', 'functions', 'function_call', 'response_format', 'audio', 'modalities', 'prediction']

const stopField = z.union([z.string(), z.array(z.string()).max(32, 'at most 32 stop strings')], { error: 'must be a string or a list of strings' }).nullable().optional()
const common = {
  model: z.string({ error: 'must be a string' }).optional(),
  max_tokens: num.int('must be an integer').nullable().optional(),
  temperature: num.nullable().optional(),
  top_p: num.nullable().optional(),
  n: num.int('must be an integer').min(1, 'must be at least 1').max(16, 'must be at most 16').nullable().optional(),
  stream: z.boolean({ error: 'must be a boolean' }).nullable().optional(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).nullable().optional(),
  stop: stopField,
  seed: num.int('must be an integer').min(0, 'must be >= 0').nullable().optional(),
  presence_penalty: num.min(-2, 'must be in [-2, 2]').max(2, 'must be in [-2, 2]').nullable().optional(),
  frequency_penalty: num.min(-2, 'must be in [-2, 2]').max(2, 'must be in [-2, 2]').nullable().optional(),
  logit_bias: z.record(z.string(), num).nullable().optional(),
  user: z.string().optional(),
  // vLLM's extra sampling parameters (its OpenAI server takes them in the body).
  top_k: num.int('must be an integer').nullable().optional(),
  min_p: num.nullable().optional(),
  repetition_penalty: num.nullable().optional(),
}
const CompletionBody = z.object({
  ...common,
  prompt: z.union([z.string(), z.array(z.string()).min(1), z.array(z.number().int()).min(1), z.array(z.array(z.number().int()).min(1)).min(1)], {
    error: 'must be a string, a list of strings, a list of token ids or a list of token-id lists',
  }),
  logprobs: num.int('must be an integer').min(0, 'must be in 0..5').max(5, 'must be in 0..5').nullable().optional(),
})
const Content = z.union([
  z.string(),
  z.array(z.object({ type: z.literal('text', { error: 'only "text" content parts are supported' }), text: z.string() }), {
    error: 'must be a string or a list of text parts',
  }),
])
const ChatBody = z.object({
  ...common,
  max_completion_tokens: num.int('must be an integer').nullable().optional(),
  messages: z
    .array(
      z.object({
        role: z.enum(['system', 'developer', 'user', 'assistant'], { error: 'must be "system", "user" or "assistant"' }),
        content: Content.nullable(),
        name: z.string().optional(),
      }),
      { error: 'must be a list of messages' },
    )
    .min(1, 'must hold at least one message'),
  logprobs: z.boolean({ error: 'must be a boolean' }).nullable().optional(),
  top_logprobs: num.int('must be an integer').min(0, 'must be in 0..20').max(20, 'must be in 0..20').nullable().optional(),
})

/** One prompt of an OpenAI request: text (formatted) or token ids. */
export type OpenAIPrompt = { text: string } | { ids: number[] }

export interface OpenAIRequest {
  kind: 'completion' | 'chat'
  model: string | undefined
  prompts: OpenAIPrompt[]
  options: SamplingOptions
  /** Stop strings given by the client (chat adds its speaker stops). */
  stop: string[]
  n: number
  stream: boolean
  includeUsage: boolean
  /** Alternatives per token, or undefined for no log-probs. */
  topLogprobs: number | undefined
  /** Whether max_tokens was given (else the server fills the context). */
  maxTokensGiven: boolean
}

const OPENAI_NAMES: WireNames = {
  maxNewTokens: 'max_tokens',
  temperature: 'temperature',
  topP: 'top_p',
  topK: 'top_k',
  minP: 'min_p',
  repetitionPenalty: 'repetition_penalty',
  presencePenalty: 'presence_penalty',
  frequencyPenalty: 'frequency_penalty',
  seed: 'seed',
  stop: 'stop',
  logitBias: 'logit_bias',
  prompt: 'prompt',
}

export function openaiNames(kind: 'completion' | 'chat'): WireNames {
  return kind === 'chat' ? { ...OPENAI_NAMES, prompt: 'messages' } : OPENAI_NAMES
}

/** Default max_tokens of /v1/completions (OpenAI's and vLLM's); chat completions fill the context. */
export const COMPLETIONS_DEFAULT_MAX_TOKENS = 16

export function parseOpenAI(kind: 'completion' | 'chat', body: unknown): OpenAIRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw badRequest('The body must be a JSON object', null)
  const unsupported = OPENAI_UNSUPPORTED.filter((k) => (body as Record<string, unknown>)[k] !== undefined && (body as Record<string, unknown>)[k] !== null)
  if (unsupported.length) throw badRequest(`Unsupported field "${unsupported[0]}": this server does not implement it`, unsupported[0]!)
  const r = (kind === 'chat' ? ChatBody : CompletionBody).safeParse(body)
  if (!r.success) throw zodError(r.error)
  const b = r.data as z.infer<typeof CompletionBody> & z.infer<typeof ChatBody>
  const stop = b.stop == null ? [] : typeof b.stop === 'string' ? [b.stop] : b.stop
  const maxTokens = kind === 'chat' ? (b.max_completion_tokens ?? b.max_tokens) : b.max_tokens
  const temperature = b.temperature ?? 1
  const logitBias: Record<string, number> = {}
  for (const [k, v] of Object.entries(b.logit_bias ?? {})) {
    if (!/^(0|[1-9][0-9]*)$/.test(k)) throw badRequest(`Invalid field "logit_bias.${k}": keys must be token ids`, `logit_bias.${k}`)
    if (v < -100 || v > 100) throw badRequest(`Invalid field "logit_bias.${k}": must be in [-100, 100]`, `logit_bias.${k}`)
    logitBias[k] = v
  }
  const options: SamplingOptions = {
    doSample: temperature > 0,
    temperature,
    // OpenAI has no top-k: off unless vLLM's top_k asks for it (-1 = off there too).
    topK: b.top_k == null || b.top_k < 0 ? 0 : b.top_k,
    ...(b.top_p != null ? { topP: b.top_p } : {}),
    ...(b.min_p != null ? { minP: b.min_p } : {}),
    ...(b.repetition_penalty != null ? { repetitionPenalty: b.repetition_penalty } : {}),
    ...(b.presence_penalty != null ? { presencePenalty: b.presence_penalty } : {}),
    ...(b.frequency_penalty != null ? { frequencyPenalty: b.frequency_penalty } : {}),
    ...(b.seed != null ? { seed: b.seed } : {}),
    ...(maxTokens != null ? { maxNewTokens: maxTokens } : {}),
    ...(Object.keys(logitBias).length ? { logitBias } : {}),
    ...(stop.length ? { stop } : {}),
  }
  const names = openaiNames(kind)
  if (kind === 'chat' && b.max_completion_tokens != null) names.maxNewTokens = 'max_completion_tokens'
  let prompts: OpenAIPrompt[]
  let topLogprobs: number | undefined
  if (kind === 'chat') {
    prompts = [{ text: chatPrompt(b.messages) }]
    topLogprobs = b.logprobs ? (b.top_logprobs ?? 0) : undefined
  } else {
    const p = b.prompt
    if (typeof p === 'string') prompts = [{ text: p }]
    else if (p.every((x) => typeof x === 'string')) prompts = (p as string[]).map((text) => ({ text }))
    else if (p.every((x) => typeof x === 'number')) prompts = [{ ids: p as number[] }]
    else prompts = (p as number[][]).map((ids) => ({ ids }))
    if (prompts.length > MAX_PROMPTS) throw badRequest(`Invalid field "prompt": at most ${MAX_PROMPTS} prompts per request, got ${prompts.length}`, 'prompt')
    topLogprobs = b.logprobs ?? undefined
  }
  return {
    kind,
    model: b.model,
    prompts,
    options: checkSampling(options, names, kind === 'chat' ? 'chat.completions' : 'completions'),
    stop,
    n: b.n ?? 1,
    stream: b.stream ?? false,
    includeUsage: b.stream_options?.include_usage ?? false,
    topLogprobs,
    maxTokensGiven: maxTokens != null,
  }
}

/** The card's chat format: system/developer messages as the preamble, then `Alice:` / `Bob:` turns. */
export function chatPrompt(messages: { role: string; content: string | { text: string }[] | null }[]): string {
  const text = (c: string | { text: string }[] | null) => (c === null ? '' : typeof c === 'string' ? c : c.map((p) => p.text).join(''))
  const system = messages.filter((m) => m.role === 'system' || m.role === 'developer').map((m) => text(m.content).trim())
  const turns: ChatTurn[] = messages
    .filter((m) => m.role === 'user' || m.role === 'assistant')
    .map((m) => ({ role: m.role === 'user' ? 'user' : 'bot', text: text(m.content) }))
  if (turns.length === 0) throw badRequest('Invalid field "messages": needs at least one user or assistant message', 'messages')
  return formatChat(turns, system.length ? { system: system.join('\n') } : {}).prompt
}

/** The chat format's speaker stop strings (a new turn ends the reply). */
export function chatStops(): string[] {
  return formatChat('x').stop
}
