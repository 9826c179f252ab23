/**
 * `model.perplexity(text)`: the measurement of llama.cpp's `llama-perplexity` tool
 * (tools/perplexity/perplexity.cpp), over the engine's prompt log-probs (`model.logprobs`).
 *
 * The text is tokenized with the model's tokenizer (no BOS: Phi-2 has none) into N tokens, cut
 * into windows of `contextLength` (n_ctx) tokens, and each window is evaluated from an empty
 * context. Only the later tokens of a window are scored, so every scored token has context:
 *
 * - default (llama.cpp's `perplexity()`): windows `[i*n_ctx, (i+1)*n_ctx)` for i < floor(N / n_ctx),
 *   side by side; in each, the tokens at window positions `n_ctx/2 + 1 .. n_ctx - 1` (rounded down
 *   halves: n_ctx - 1 - floor(n_ctx/2) tokens, the first window too) are scored, each predicted
 *   from the window's tokens before it.
 * - `stride: S` (llama.cpp's `--ppl-stride S`, `perplexity_v2()`): windows of n_ctx tokens
 *   starting at `i*S` for i < ceil((N - n_ctx) / S); the last S tokens of each window are scored.
 *
 * nll = mean of -log p(token | window prefix) over the scored tokens; perplexity = exp(nll);
 * `nllStdError` = sqrt((mean(nll²) - nll²) / (count - 1)), llama.cpp's "+/-" (on the PPL:
 * `perplexity * nllStdError`). llama.cpp refuses texts shorter than 2 x n_ctx tokens; here one
 * window is enough (N >= n_ctx; N > n_ctx with a stride). When the GGUF says add_bos_token,
 * llama.cpp puts BOS in place of each window's first token; Phi-2's tokenizer has no BOS and
 * nothing is replaced here.
 */
import { z } from 'zod'
import { abortErrorFrom } from './errors.js'
import { invalidOption, parseOptions } from './options.js'

/** `onProgress` of {@link PerplexityOptions}: after each window. */
export interface PerplexityProgress {
  /** Windows done so far (1-based count). */
  window: number
  /** Windows in all. */
  windows: number
  /** Tokens scored so far. */
  tokens: number
  /** Mean NLL / perplexity of the tokens scored so far. */
  nll: number
  perplexity: number
}

/** Options of `model.perplexity()`. */
export interface PerplexityOptions {
  /** Window length n_ctx in tokens, integer 2..model context (default: min(512, model context), llama.cpp's classic default). */
  contextLength?: number
  /**
   * llama.cpp's `--ppl-stride`: windows start every `stride` tokens and their last `stride` tokens
   * are scored; integer 1..contextLength-1. Default: none (side-by-side windows, second halves scored).
   */
  stride?: number
  /** Called after each window. */
  onProgress?: (progress: PerplexityProgress) => void
  /** Aborts the measurement (rejects with `Phi2AbortError`). */
  signal?: AbortSignal
}

/** What `model.perplexity()` resolves with. */
export interface PerplexityResult {
  /** Mean negative log-likelihood (nats per token) of the scored tokens. */
  nll: number
  /** exp(nll). */
  perplexity: number
  /** Standard error of `nll` (llama.cpp's "+/-" is `perplexity * nllStdError`); 0 for one token. */
  nllStdError: number
  /** Tokens scored. */
  tokens: number
  /** Windows evaluated. */
  windows: number
  /** Tokens the text has. */
  textTokens: number
  /** The window length used. */
  contextLength: number
  /** The stride used, or null (llama.cpp's default mode). */
  stride: number | null
}

export const PerplexityOptionsSchema: z.ZodType<PerplexityOptions> = z.strictObject({
  contextLength: z.number().int().min(2).optional(),
  stride: z.number().int().min(1).optional(),
  onProgress: z.custom<(p: PerplexityProgress) => void>((v) => typeof v === 'function', { message: 'expected a function' }).optional(),
  signal: z
    .custom<AbortSignal>((v) => typeof v === 'object' && v !== null && typeof (v as AbortSignal).addEventListener === 'function', {
      message: 'expected an AbortSignal',
    })
    .optional(),
})

/** One window: tokens `[start, start + length)`; window positions `>= firstScored` are scored. */
export interface PerplexityWindow {
  start: number
  firstScored: number
}

/**
 * The windows llama.cpp's perplexity tool evaluates for `nTokens` tokens (see the module docs).
 * Empty when the text is too short for one window.
 */
export function perplexityWindows(nTokens: number, contextLength: number, stride: number | null): PerplexityWindow[] {
  const out: PerplexityWindow[] = []
  if (stride === null) {
    const first = Math.floor(contextLength / 2) + 1
    for (let i = 0; i < Math.floor(nTokens / contextLength); i++) out.push({ start: i * contextLength, firstScored: first })
  } else if (nTokens > contextLength) {
    const n = Math.ceil((nTokens - contextLength) / stride)
    for (let i = 0; i < n; i++) out.push({ start: i * stride, firstScored: contextLength - stride })
  }
  return out
}

/** What perplexity needs of a model (a `Phi2Model`). */
export interface PerplexityHost {
  readonly info: { readonly contextLength: number; readonly vocabSize: number }
  tokenize(text: string): number[]
  logprobs(tokens: readonly number[], options?: { signal?: AbortSignal }): Promise<Float32Array>
}

const DEFAULT_CONTEXT = 512

/** `model.perplexity()`. */
export async function measurePerplexity(
  model: PerplexityHost,
  text: string | readonly number[],
  options?: PerplexityOptions,
): Promise<PerplexityResult> {
  const opts = parseOptions(PerplexityOptionsSchema, options, 'perplexity')
  const maxCtx = model.info.contextLength
  const ctx = opts.contextLength ?? Math.min(DEFAULT_CONTEXT, maxCtx)
  if (ctx > maxCtx) invalidOption('contextLength', 'perplexity', `must be at most the model's context length ${maxCtx}, got ${ctx}`)
  const stride = opts.stride ?? null
  if (stride !== null && stride >= ctx) invalidOption('stride', 'perplexity', `must be less than contextLength ${ctx}, got ${stride}`)
  let ids: readonly number[]
  if (typeof text === 'string') ids = model.tokenize(text)
  else if (Array.isArray(text)) ids = text
  else return invalidOption('text', 'perplexity', 'must be a string or an array of token ids')
  const windows = perplexityWindows(ids.length, ctx, stride)
  if (windows.length === 0) {
    const need = stride === null ? `at least ${ctx}` : `more than ${ctx}`
    invalidOption('text', 'perplexity', `has ${ids.length} tokens; one window needs ${need} (contextLength ${ctx})`)
  }
  const signal = opts.signal
  if (signal?.aborted) throw abortErrorFrom(signal)
  const V = model.info.vocabSize
  let sum = 0
  let sum2 = 0
  let count = 0
  for (let w = 0; w < windows.length; w++) {
    const { start, firstScored } = windows[w]!
    const tokens = ids.slice(start, start + ctx)
    // The engine validates the ids (E_INVALID_OPTION naming the bad one).
    const rows = await model.logprobs(tokens, signal ? { signal } : {})
    for (let k = firstScored; k < ctx; k++) {
      const v = -rows[(k - 1) * V + tokens[k]!]!
      sum += v
      sum2 += v * v
      count++
    }
    if (signal?.aborted) throw abortErrorFrom(signal)
    opts.onProgress?.({ window: w + 1, windows: windows.length, tokens: count, nll: sum / count, perplexity: Math.exp(sum / count) })
  }
  const nll = sum / count
  const variance = sum2 / count - nll * nll
  return {
    nll,
    perplexity: Math.exp(nll),
    nllStdError: count > 1 && variance > 0 ? Math.sqrt(variance / (count - 1)) : 0,
    tokens: count,
    windows: windows.length,
    textTokens: ids.length,
    contextLength: ctx,
    stride,
  }
}
