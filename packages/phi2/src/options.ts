/**
 * Every option the SDK accepts, its TypeScript type (with JSDoc: default and range), and the zod
 * schema that validates it. This is the only file that defines options.
 *
 * Validation failures throw {@link Phi2OptionsError} (`code: 'E_INVALID_OPTION'`) whose message and
 * `path` name the field (e.g. `topP`, `logitBias.50256`, `stop.1`). Unknown keys are rejected too,
 * so that a typo (`temprature`) never silently does nothing.
 */
import { z } from 'zod'
import { Phi2OptionsError } from './errors.js'

// ---------------------------------------------------------------------------------------------
// Shared pieces

/**
 * Compute backends. `'cpu'`: the native addon (Node only). `'cuda'`: the CUDA addon on an NVIDIA GPU
 * (Node on linux-x64 with the driver and `@x/phi2-native-linux-x64-gnu-cuda` installed). `'wasm'`:
 * the wasm32+SIMD128 engine in a Worker (browsers, and Node). `'auto'`: `'cuda'` where it is usable,
 * else `'cpu'` in Node; `'wasm'` in browsers.
 */
export type Backend = 'auto' | 'cpu' | 'cuda' | 'wasm'

/** Prompt formats from the Phi-2 model card (see `prompts.ts`). `'none'` sends the prompt as-is. */
export type PromptFormat = 'qa' | 'chat' | 'code' | 'none'

/**
 * A load progress report, discriminated by `phase`: `'download'` (wasm backend: bytes streamed
 * into the engine, from a URL, the cache, a Blob, bytes or a file; `loadedBytes` grows
 * monotonically to `totalBytes`) → `'loading'` (0 then 1) → `'tokenizer'` (1) → `'ready'` (1).
 * `'cache-invalid'` (once, progress 0) when a cached copy failed its sha256 / length check and was
 * deleted: the download starts over.
 */
export type LoadProgress = LoadProgressDownload | LoadProgressCacheInvalid | LoadProgressStep

/** `phase: 'download'`: bytes streamed into the wasm engine so far. */
export interface LoadProgressDownload {
  phase: 'download'
  /** 0..1: `loadedBytes / totalBytes`. */
  progress: number
  /** Bytes received so far. */
  loadedBytes: number
  /** Size of the file. */
  totalBytes: number
  /** Whether the bytes come from the Cache API. */
  fromCache: boolean
  /**
   * Node, Hugging Face Hub sources: the Hub file being downloaded into the Hugging Face cache
   * (`ORG/REPO/PATH`); the byte counts are then those of the whole download (every file of a
   * repository together). Absent for the wasm engine's own streaming.
   */
  file?: string
}

/** `phase: 'cache-invalid'`: the cached copy (of `totalBytes` bytes) failed its check and was deleted. */
export interface LoadProgressCacheInvalid {
  phase: 'cache-invalid'
  progress: 0
  loadedBytes: 0
  /** Size the deleted cache entry claimed. */
  totalBytes: number
  fromCache: true
}

/** `phase: 'loading' | 'tokenizer' | 'ready'`: no byte counts. */
export interface LoadProgressStep {
  phase: 'loading' | 'tokenizer' | 'ready'
  /** 0..1 within the phase. */
  progress: number
  loadedBytes?: undefined
  totalBytes?: undefined
  fromCache?: undefined
}

const isAbortSignal = (v: unknown): v is AbortSignal =>
  typeof v === 'object' &&
  v !== null &&
  typeof (v as AbortSignal).aborted === 'boolean' &&
  typeof (v as AbortSignal).addEventListener === 'function'

const signalSchema = z.custom<AbortSignal>(isAbortSignal, { message: 'expected an AbortSignal' })
const int = (min: number, max: number) => z.number().int().min(min).max(max)

// ---------------------------------------------------------------------------------------------
// loadModel()

/** Options of `loadModel(source, options)`. */
export interface LoadOptions {
  /**
   * Compute threads. Default: the number of CPU cores (wasm: capped at 8). Range: integer 1..1024.
   * cpu: the native compute pool is process-wide, only the first model loaded in a process sets it.
   * wasm: > 1 runs the threaded build where SharedArrayBuffer is usable (Node; cross-origin
   * isolated pages), else the single-threaded one (see `model.info.runtime.reason`).
   */
  threads?: number
  /**
   * Context window in tokens (prompt + generated), at most the model's trained context (2048 for
   * Phi-2). Default: the model's. Range: integer >= 2. Generation stops with `finishReason: 'length'`
   * when it is full. With the wasm backend the engine also plans its memory for it: a model whose
   * KV cache does not fit in wasm32's 4 GiB at the full context (phi-2 Q8_0) loads with a smaller one
   * (the `E_MODEL_TOO_LARGE` message names the largest that fits).
   */
  contextLength?: number
  /**
   * What the KV cache (the keys and values of every token in the context) stores. Default `'f32'`:
   * as computed, the engine's exact numerics. `'f16'`: rounded to 16-bit floats as they are written
   * (llama.cpp's default), attention still computed in f32 on the widened values: half the cache's
   * memory on the cpu and wasm backends (Phi-2: 320 KB per token instead of 640 KB, 0.67 GB instead of
   * 1.34 GB at 2048 tokens; on cuda the rounded values are kept in f32, the same results), and
   * faster decoding at long contexts, where reading the cache takes a large share of each step
   * (bench/RESULTS.md). Results then differ from `'f32'` by that rounding only, and stay the same on
   * every backend build and batch shape. `model.info.kvCache` says which is in use.
   */
  kvCache?: 'f32' | 'f16'
  /**
   * Compute backend. Default `'auto'`: in Node the GPU (`'cuda'`) where the CUDA addon and an NVIDIA
   * driver are there, else `'cpu'`, with the reason in `model.info.runtime.reason`; `'wasm'` in
   * browsers. `'cuda'` where it is not usable (and `'cpu'` / `'cuda'` in browsers):
   * `E_BACKEND_UNAVAILABLE`, naming what is missing.
   */
  backend?: Backend
  /**
   * wasm backend, URL sources: keep the file in the Cache API (where `caches` exists, i.e. browsers)
   * and load it from there next time (verified by sha256 and length). Default true.
   */
  cache?: boolean
  /**
   * Hugging Face Hub sources (`ORG/REPO`, `hf:ORG/REPO/PATH`): the branch, tag or commit to load.
   * Default `'main'`.
   */
  revision?: string
  /**
   * Hugging Face Hub ids: the Hub's base URL (a mirror, a self-hosted Hub). Default: `$HF_ENDPOINT`
   * in Node, else `https://huggingface.co`.
   */
  hubEndpoint?: string
  /** Called with load progress; at least `{phase:'loading', progress:0}` and `{phase:'loading', progress:1}`. */
  onProgress?: (progress: LoadProgress) => void
  /** Aborts the load: the promise rejects with `Phi2AbortError` (the weights are released). */
  signal?: AbortSignal
}

export const LoadOptionsSchema: z.ZodType<LoadOptions> = z.strictObject({
  threads: int(1, 1024).optional(),
  contextLength: int(2, 1 << 24).optional(),
  kvCache: z.enum(['f32', 'f16']).optional(),
  backend: z.enum(['auto', 'cpu', 'cuda', 'wasm']).optional(),
  cache: z.boolean().optional(),
  revision: z.string().min(1).max(256).optional(),
  hubEndpoint: z.url({ protocol: /^https?$/ }).optional(),
  onProgress: z
    .custom<(p: LoadProgress) => void>((v) => typeof v === 'function', { message: 'expected a function' })
    .optional(),
  signal: signalSchema.optional(),
})

// ---------------------------------------------------------------------------------------------
// generate() / stream() / chat.send()

/** Sampling and stopping options shared by `generate`, `stream` and chat `send` / `sendStream`. */
export interface SamplingOptions {
  /**
   * Maximum number of tokens to generate. Default 256. Range: integer 1..contextLength.
   * Generation also stops (`finishReason: 'length'`) when the context window is full.
   */
  maxNewTokens?: number
  /**
   * Sample instead of taking the most likely token. Default `false`: greedy decoding, exactly
   * like Hugging Face transformers' `do_sample=False` (and transformers.js). The sampling options
   * below (`temperature`, `topK`, `topP`, `minP`, `seed`) only take effect when this is `true`.
   */
  doSample?: boolean
  /** Softmax temperature when sampling. Default 0.7. Range: 0..100 (`0` = greedy). */
  temperature?: number
  /** Keep only the K most likely tokens when sampling. Default 50 (as HF). Range: integer >= 0 (`0` = off). */
  topK?: number
  /** Nucleus sampling: keep the smallest set of tokens with cumulative probability >= topP. Default 1 (off). Range: (0, 1]. */
  topP?: number
  /** Drop tokens whose probability is below `minP` × the top token's. Default 0 (off). Range: [0, 1). */
  minP?: number
  /** HF/CTRL repetition penalty on every token already in the context (prompt included). Default 1 (off). Range: (0, 100]. */
  repetitionPenalty?: number
  /** OpenAI-style presence penalty: subtracted once from every token already in the context. Default 0. Range: -100..100 (typically -2..2). */
  presencePenalty?: number
  /** OpenAI-style frequency penalty: subtracted per occurrence in the context. Default 0. Range: -100..100 (typically -2..2). */
  frequencyPenalty?: number
  /** RNG seed for sampling: the same seed, prompt and options give the same tokens. Default: random. Range: integer 0..2^53-1. */
  seed?: number
  /**
   * Stop strings: generation stops as soon as the text contains one; the text is cut before it
   * (`finishReason: 'stop'`). Default: the prompt format's stop list (see `prompts.ts`), else `[]`.
   * Passing `stop` replaces the format's list (`[]` disables it). Range: up to 32 non-empty strings.
   */
  stop?: string[]
  /**
   * Added to the logits of these token ids before sampling / greedy choice: `{ 50256: -Infinity }`
   * bans end-of-text, `{ 1169: 5 }` favours " the". Default `{}`. Keys: token ids 0..vocabSize-1;
   * values: finite numbers or `-Infinity`.
   */
  logitBias?: Record<number, number>
  /**
   * Prompt-lookup (n-gram) speculative decoding. Default off. `true` = `{ ngram: 3, maxDraft: 8 }`.
   * Each step looks up the last `ngram` tokens earlier in the prompt + output and proposes the
   * tokens that followed as a draft, verified in one forward pass: faster when the output repeats
   * the prompt (editing given code, summarising given text), about as fast otherwise. Greedy output
   * is identical to plain greedy; sampled output has the same distribution (not the same tokens
   * for a seed). Used for models whose matrices run on the engine's own kernels (Q4_0, Q8_0, Q4_K,
   * Q5_K, Q6_K, F16, BF16); others decode plainly (`result.speculation.passes` is 0).
   */
  speculative?: boolean | SpeculativeOptions
  /**
   * Aborts the generation: `generate()` rejects with `Phi2AbortError` (`name: 'AbortError'`,
   * `code: 'E_ABORTED'`), and a `stream()` loop throws it. Native work stops within one token.
   */
  signal?: AbortSignal
}

/** Settings of {@link SamplingOptions.speculative}. */
export interface SpeculativeOptions {
  /** Length of the n-gram (the last tokens) looked up in prompt + output. Default 3. Range: integer 1..16. */
  ngram?: number
  /** Most draft tokens verified per forward pass. Default 8. Range: integer 1..64. */
  maxDraft?: number
}

/** Options of `model.generate()` and `model.stream()`. */
export interface GenerateOptions extends SamplingOptions {
  /**
   * Wraps a string prompt in a Phi-2 model-card format and uses that format's stop strings
   * (unless `stop` is given): `'qa'` → `Instruct: {prompt}\nOutput:`, `'chat'` →
   * `Alice: {prompt}\nBob:`, `'code'` → the prompt as-is. Default `'none'` (as-is, no stops).
   * Only for string prompts.
   */
  format?: PromptFormat
}

/** Options of `chat.send()` / `chat.sendStream()`. */
export type ChatSendOptions = SamplingOptions

const samplingShape = {
  maxNewTokens: int(1, 1 << 24).optional(),
  doSample: z.boolean().optional(),
  temperature: z.number().min(0).max(100).optional(),
  topK: int(0, 1 << 24).optional(),
  topP: z.number().gt(0).max(1).optional(),
  minP: z.number().min(0).lt(1).optional(),
  repetitionPenalty: z.number().gt(0).max(100).optional(),
  presencePenalty: z.number().min(-100).max(100).optional(),
  frequencyPenalty: z.number().min(-100).max(100).optional(),
  seed: int(0, Number.MAX_SAFE_INTEGER).optional(),
  stop: z.array(z.string().min(1, 'a stop string must not be empty')).max(32).optional(),
  logitBias: z
    .record(
      z.string().regex(/^(0|[1-9][0-9]*)$/, 'logit bias keys must be token ids (non-negative integers)'),
      z.union([z.number(), z.literal(-Infinity)], { error: 'must be a finite number or -Infinity (which bans the token)' }),
    )
    .optional(),
  // `true` → `{}` (the defaults), `false` → off; a union would hide which field is wrong.
  speculative: z
    .preprocess(
      (v) => (v === true ? {} : v === false ? undefined : v),
      z.strictObject(
        { ngram: int(1, 16).optional(), maxDraft: int(1, 64).optional() },
        { error: 'expected true, false or { ngram?, maxDraft? }' },
      ),
    )
    .optional(),
  signal: signalSchema.optional(),
}

export const SamplingOptionsSchema: z.ZodType<SamplingOptions> = z.strictObject(samplingShape)

export const GenerateOptionsSchema: z.ZodType<GenerateOptions> = z.strictObject({
  ...samplingShape,
  format: z.enum(['qa', 'chat', 'code', 'none']).optional(),
})

export const ChatSendOptionsSchema: z.ZodType<ChatSendOptions> = SamplingOptionsSchema

// ---------------------------------------------------------------------------------------------
// createChat()

/** Options of `model.createChat()`. */
export interface ChatOptions {
  /** Name of the user's turns (Phi-2 card: `Alice`). Default `'Alice'`. Range: 1..64 characters, no newline or ':'. */
  userName?: string
  /** Name of the model's turns (Phi-2 card: `Bob`). Default `'Bob'`. Range: 1..64 characters, no newline or ':'. */
  botName?: string
  /** Text placed before the first turn (e.g. a description of the conversation). Default: none. */
  system?: string
  /**
   * Default options of every `send` / `sendStream` (per-call options override them).
   * Default stop strings: the chat format's (`\n{userName}:`, `\n{botName}:`, ...).
   */
  defaults?: Omit<ChatSendOptions, 'signal'>
}

const nameSchema = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[^\n\r:]+$/, 'a speaker name must not contain a newline or ":"')

export const ChatOptionsSchema: z.ZodType<ChatOptions> = z.strictObject({
  userName: nameSchema.optional(),
  botName: nameSchema.optional(),
  system: z.string().optional(),
  defaults: z.strictObject({ ...samplingShape, signal: z.undefined().optional() }).optional(),
})

// ---------------------------------------------------------------------------------------------
// logprobs()

/** Options of `model.logprobs()`. */
export interface LogprobsOptions {
  /** Aborts the computation (rejects with `Phi2AbortError`). */
  signal?: AbortSignal
}

export const LogprobsOptionsSchema: z.ZodType<LogprobsOptions> = z.strictObject({
  signal: signalSchema.optional(),
})

// ---------------------------------------------------------------------------------------------
// Defaults and validation helpers

/** Default values of {@link SamplingOptions}. */
export const DEFAULT_SAMPLING = Object.freeze({
  maxNewTokens: 256,
  doSample: false,
  temperature: 0.7,
  topK: 50,
  topP: 1,
  minP: 0,
  repetitionPenalty: 1,
  presencePenalty: 0,
  frequencyPenalty: 0,
})

/** Defaults of {@link SpeculativeOptions}. */
export const DEFAULT_SPECULATIVE = Object.freeze({ ngram: 3, maxDraft: 8 })

function describePath(path: readonly PropertyKey[]): string {
  return path.map((p) => String(p)).join('.')
}

/**
 * Validates `value` against `schema`; throws {@link Phi2OptionsError} naming the first bad field.
 * `what` names the call in the message (e.g. `'generate'`).
 */
export function parseOptions<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const input = value === undefined || value === null ? {} : value
  const r = schema.safeParse(input)
  if (r.success) return r.data
  const issue = r.error.issues[0]!
  let path = describePath(issue.path)
  let message: string
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0]!
    path = path ? `${path}.${key}` : key
    message = `Unknown ${what} option "${path}" (check the spelling; see the README's options table)`
  } else if (path === '') {
    message = `Invalid ${what} options: ${issue.message}`
  } else {
    message = `Invalid ${what} option "${path}": ${issue.message}`
  }
  const more = r.error.issues.length - 1
  if (more > 0) message += ` (and ${more} more problem${more > 1 ? 's' : ''})`
  return throwOptionsError(path, message, r.error)
}

function throwOptionsError(path: string, message: string, cause?: unknown): never {
  throw new Phi2OptionsError(path, message, { cause })
}

/** Throws a {@link Phi2OptionsError} for `path`. */
export function invalidOption(path: string, what: string, problem: string): never {
  throwOptionsError(path, `Invalid ${what} option "${path}": ${problem}`)
}
