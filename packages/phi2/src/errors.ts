/**
 * Typed errors. Every error the SDK throws or rejects with is a {@link Phi2Error} with a stable,
 * machine-readable `code` (never changes meaning once published) and, where there is one, the
 * underlying `cause` (e.g. the native addon's error, or an AbortSignal's reason).
 *
 * Codes:
 * - `E_INVALID_OPTION`      {@link Phi2OptionsError}: an option or argument failed validation; `path` names it.
 * - `E_ABORTED`             {@link Phi2AbortError}: an AbortSignal fired (its `name` is `'AbortError'`).
 * - `E_DISPOSED`            {@link Phi2DisposedError}: the model or chat was disposed.
 * - `E_BACKEND_UNAVAILABLE` {@link Phi2BackendUnavailableError}: the requested backend is not in this build,
 *                           or the native addon could not be loaded.
 * - `E_PROMPT_TOO_LONG`     the prompt leaves no room to generate within the context length.
 * - `E_TOKENIZER`           the tokenizer could not be built (bad tokenizer.json / GGUF vocabulary).
 * - `E_MODEL_TOO_LARGE`     {@link Phi2ModelLoadError}: the model cannot fit in wasm32 memory (checked before downloading).
 * - `E_UNSUPPORTED_FORMAT`  {@link Phi2ModelLoadError}: the backend cannot read this kind of file (wasm: GGUF only).
 * - `E_UNKNOWN_SIZE`        {@link Phi2ModelLoadError}: a URL's server sent no usable Content-Length.
 * - `E_INTEGRITY`           {@link Phi2ModelLoadError}: a download delivered more bytes than its Content-Length said,
 *                           or (Hub) bytes whose sha256 / git hash differs from the file's etag.
 * - `E_ENGINE_CRASHED`      {@link Phi2EngineCrashedError}: the engine worker failed (error, wasm trap, exit).
 * - Hugging Face Hub sources ({@link Phi2ModelLoadError}; the message names the repository and file):
 *   `E_HUB_AUTH` (401: the repository needs a token, set `HF_TOKEN`), `E_HUB_GATED` (403: a gated
 *   or forbidden repository), `E_HUB_NOT_FOUND` (404: no such repository, revision or file),
 *   `E_NOT_CACHED` (`HF_HUB_OFFLINE=1` and the file is not in the cache), `E_NETWORK` (the Hub
 *   could not be reached, or a download was interrupted: loading again resumes it), `E_DISK_FULL`
 *   (no space left in the cache); `E_INTEGRITY` also when a download does not match its sha256 etag.
 * - Native codes, kept as-is ({@link Phi2ModelLoadError} when they come from loading):
 *   `E_IO`, `E_MALFORMED_FILE`, `E_BAD_TENSOR`, `E_MISSING_TENSOR`, `E_BAD_CONFIG`,
 *   `E_INVALID_ARGUMENT`, `E_BACKEND`, `E_OUT_OF_MEMORY`, `E_BUSY`, `E_INTERNAL`.
 * - Remote models (`loadModel({ remote })`, `Phi2RemoteError` with the HTTP `status`): `E_REMOTE`
 *   (the server answered an error), `E_REMOTE_AUTH` (401/403: check apiKey), `E_BUSY` (429),
 *   `E_NETWORK` (unreachable or no answer in time), `E_PROMPT_TOO_LONG`.
 */

export type Phi2ErrorCode =
  | 'E_INVALID_OPTION'
  | 'E_REMOTE'
  | 'E_REMOTE_AUTH'
  | 'E_ABORTED'
  | 'E_DISPOSED'
  | 'E_BACKEND_UNAVAILABLE'
  | 'E_PROMPT_TOO_LONG'
  | 'E_TOKENIZER'
  | 'E_IO'
  | 'E_MALFORMED_FILE'
  | 'E_BAD_TENSOR'
  | 'E_MISSING_TENSOR'
  | 'E_BAD_CONFIG'
  | 'E_INVALID_ARGUMENT'
  | 'E_BACKEND'
  | 'E_OUT_OF_MEMORY'
  | 'E_BUSY'
  | 'E_MODEL_TOO_LARGE'
  | 'E_UNSUPPORTED_FORMAT'
  | 'E_UNKNOWN_SIZE'
  | 'E_INTEGRITY'
  | 'E_ENGINE_CRASHED'
  | 'E_HUB_AUTH'
  | 'E_HUB_GATED'
  | 'E_HUB_NOT_FOUND'
  | 'E_NOT_CACHED'
  | 'E_NETWORK'
  | 'E_DISK_FULL'
  | 'E_INTERNAL'

/** Base class of every error thrown by `@x/phi2`. */
export class Phi2Error extends Error {
  /** Stable machine-readable code, e.g. `'E_INVALID_OPTION'`. */
  readonly code: Phi2ErrorCode
  constructor(code: Phi2ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined)
    this.code = code
    this.name = 'Phi2Error'
  }
}

/** An option or argument failed validation. `path` is the offending field, e.g. `'topP'` or `'logitBias.50256'`. */
export class Phi2OptionsError extends Phi2Error {
  /** Dotted path of the invalid field (`''` when the whole value is wrong). */
  readonly path: string
  constructor(path: string, message: string, options?: { cause?: unknown }) {
    super('E_INVALID_OPTION', message, options)
    this.name = 'Phi2OptionsError'
    this.path = path
  }
}

/**
 * The operation was aborted through an AbortSignal (or the stream's consumer stopped it).
 * Compatible with DOM/fetch conventions: `name === 'AbortError'`; `cause` is the signal's reason.
 */
export class Phi2AbortError extends Phi2Error {
  constructor(message = 'The operation was aborted', options?: { cause?: unknown }) {
    super('E_ABORTED', message, options)
    this.name = 'AbortError'
  }
}

/** The model (or chat) was disposed before or during the call. */
export class Phi2DisposedError extends Phi2Error {
  constructor(what = 'model') {
    super('E_DISPOSED', `This ${what} has been disposed; load it again with loadModel() to keep using it`)
    this.name = 'Phi2DisposedError'
  }
}

/** The requested compute backend is not available in this build (or the native addon is missing). */
export class Phi2BackendUnavailableError extends Phi2Error {
  readonly backend: string
  constructor(backend: string, message: string, options?: { cause?: unknown }) {
    super('E_BACKEND_UNAVAILABLE', message, options)
    this.name = 'Phi2BackendUnavailableError'
    this.backend = backend
  }
}

/** The engine worker died (uncaught error, wasm trap, unexpected exit): every pending call rejects with this. */
export class Phi2EngineCrashedError extends Phi2Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super('E_ENGINE_CRASHED', message, options)
    this.name = 'Phi2EngineCrashedError'
  }
}

/** Loading the model failed; `code` is the native code (`E_IO`, `E_MALFORMED_FILE`, `E_BAD_CONFIG`, ...). */
export class Phi2ModelLoadError extends Phi2Error {
  /** The path / URL / name of what was being loaded. */
  readonly source: string
  constructor(code: Phi2ErrorCode, source: string, message: string, options?: { cause?: unknown }) {
    super(code, message, options)
    this.name = 'Phi2ModelLoadError'
    this.source = source
  }
}

const NATIVE_CODES = new Set<string>([
  'E_IO',
  'E_MALFORMED_FILE',
  'E_BAD_TENSOR',
  'E_MISSING_TENSOR',
  'E_BAD_CONFIG',
  'E_INVALID_ARGUMENT',
  'E_BACKEND',
  'E_DISPOSED',
  'E_ABORTED',
  'E_OUT_OF_MEMORY',
  'E_BUSY',
  'E_MODEL_TOO_LARGE',
  'E_UNSUPPORTED_FORMAT',
  'E_UNKNOWN_SIZE',
  'E_INTEGRITY',
  'E_ENGINE_CRASHED',
  'E_INTERNAL',
])

const LOAD_HINTS: Partial<Record<string, string>> = {
  E_IO: 'check that the path exists and is readable',
  E_MALFORMED_FILE: 'the file is not a valid GGUF / safetensors file (truncated download?)',
  E_BAD_TENSOR: 'the weights do not match the Phi-2 architecture described by the config',
  E_MISSING_TENSOR: 'the weights are incomplete or not a Phi-2 (phi) model',
  E_BAD_CONFIG: 'config.json / GGUF metadata is missing a value or has an invalid one',
}

function messageOf(err: unknown): string {
  if (err instanceof Error) return err.message
  return String(err)
}

/** Wraps an error from the native addon into a typed {@link Phi2Error}, keeping its native code. */
export function fromNativeError(err: unknown, context?: { loading?: string }): Phi2Error {
  if (err instanceof Phi2Error) return err
  const rawCode = (err as { code?: unknown } | null)?.code
  const code = typeof rawCode === 'string' && NATIVE_CODES.has(rawCode) ? (rawCode as Phi2ErrorCode) : 'E_INTERNAL'
  if (code === 'E_DISPOSED') {
    const e = new Phi2DisposedError()
    ;(e as { cause?: unknown }).cause = err
    return e
  }
  if (code === 'E_ABORTED') return new Phi2AbortError('The operation was aborted', { cause: err })
  if (code === 'E_ENGINE_CRASHED') return new Phi2EngineCrashedError(messageOf(err), { cause: err })
  const msg = messageOf(err)
  if (context?.loading !== undefined) {
    const hint = LOAD_HINTS[code]
    return new Phi2ModelLoadError(
      code,
      context.loading,
      `Could not load model ${JSON.stringify(context.loading)}: ${msg}${hint ? ` (${hint})` : ''}`,
      { cause: err },
    )
  }
  if (code === 'E_INTERNAL') {
    return new Phi2Error(code, `Internal error in the native engine: ${msg} (please report it)`, { cause: err })
  }
  return new Phi2Error(code, msg, { cause: err })
}

/** The abort error for a signal: a {@link Phi2AbortError} whose cause is `signal.reason`. */
export function abortErrorFrom(signal: AbortSignal | undefined): Phi2AbortError {
  const reason = signal?.reason
  const detail = reason instanceof Error && reason.name !== 'AbortError' && reason.message ? `: ${reason.message}` : ''
  return new Phi2AbortError(`The operation was aborted${detail}`, { cause: reason })
}
