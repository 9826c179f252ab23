/**
 * `convertModel()`: HF safetensors (a model directory, a .safetensors file, or a Hub repository
 * id) → one GGUF file, through the engine's converter (`phi2::convert`, run on a native thread by
 * the addon). Node only; the `phi2 convert` command calls it.
 */
import { createRequire } from 'node:module'
import { existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs'
import { basename, dirname, join, resolve } from 'node:path'
import { z } from 'zod'
import { Phi2BackendUnavailableError, Phi2Error, Phi2OptionsError, abortErrorFrom, fromNativeError } from '../errors.js'
import { parseHubId } from '../hub.js'
import { parseOptions } from '../options.js'
import { packageAsset } from './files.js'
import { fetchFromHub } from './hub-cache.js'
import { localModelsDir } from './named-sources.js'

/** GGUF file types `convertModel` writes (llama-quantize's names; case-insensitive on input). */
export const CONVERT_TYPES = ['F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q4_K_M', 'Q5_K_M', 'Q6_K'] as const
export type ConvertType = (typeof CONVERT_TYPES)[number]

/** Progress of `convertModel`: `'download'` (Hub sources, bytes into the HF cache), then `'convert'`. */
export interface ConvertProgress {
  phase: 'download' | 'convert'
  /** 0..1 within the phase. */
  progress: number
  /** download: bytes received; convert: output bytes written. */
  loadedBytes: number
  /** download: bytes to fetch; convert: the output file's size. */
  totalBytes: number
  /** convert: the GGUF tensor being written; download: the Hub file (`ORG/REPO/PATH`). */
  item: string
}

export interface ConvertOptions {
  /** Output type: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K_M Q5_K_M Q6_K (case-insensitive). Required. */
  type: string
  /** The GGUF file to write (a temporary file beside it until it is complete). Required unless `cache`. */
  out?: string
  /**
   * Write into phi2's model cache (`$PHI2_CACHE/models`, default `~/.cache/phi2/models`) as
   * `<name>.<TYPE>.gguf` (name: the Hub repository's or source directory's name), which
   * `loadModel('<name>.<TYPE>.gguf')` then finds from any directory. Default false.
   */
  cache?: boolean
  /** Quantization threads, integer 1..1024. Default: all cores. */
  threads?: number
  /** `general.name` in the GGUF (default: the source directory's name). */
  name?: string
  /**
   * Tokenizer when the source has no tokenizer.json: a tokenizer.json, or a directory with one.
   * Default: the bundled Phi-2 tokenizer.
   */
  tokenizer?: string
  /** Hub sources: branch, tag or commit (default `main`). */
  revision?: string
  onProgress?: (p: ConvertProgress) => void
  /** Stops the conversion (or download): rejects with `Phi2AbortError`; nothing is left at the output path. */
  signal?: AbortSignal
}

export interface ConvertResult {
  /** The GGUF written. */
  out: string
  type: ConvertType
  bytes: number
  /** Where the tokenizer came from. */
  tokenizer: string
  /** How many tensors took a fallback type (rows not a multiple of the type's block). */
  fallbacks: number
  tensors: { name: string; type: string; shape: number[]; fallback: boolean }[]
}

const isSignal = (v: unknown): v is AbortSignal => typeof v === 'object' && v !== null && typeof (v as AbortSignal).aborted === 'boolean'

const ConvertOptionsSchema: z.ZodType<ConvertOptions> = z
  .strictObject({
    type: z.string().refine((t) => CONVERT_TYPES.some((c) => c.toLowerCase() === t.toLowerCase()), {
      message: `expected one of ${CONVERT_TYPES.join(', ')}`,
    }),
    out: z.string().min(1).optional(),
    cache: z.boolean().optional(),
    threads: z.number().int().min(1).max(1024).optional(),
    name: z.string().min(1).max(256).optional(),
    tokenizer: z.string().min(1).optional(),
    revision: z.string().min(1).max(256).optional(),
    onProgress: z.custom<(p: ConvertProgress) => void>((v) => typeof v === 'function', { message: 'expected a function' }).optional(),
    signal: z.custom<AbortSignal>(isSignal, { message: 'expected an AbortSignal' }).optional(),
  })
  .refine((o) => (o.out !== undefined) !== (o.cache === true), { message: 'give exactly one of out and cache: true', path: ['out'] })

interface NativeConvert {
  convertModel(
    src: string,
    out: string,
    options: { fileType: string; threads?: number; tokenizer?: string; name?: string },
    onProgress: ((err: Error | null, p: { tensor: string; tensorIndex: number; tensorCount: number; bytesWritten: number; bytesTotal: number }) => void) | null,
    cancel: { cancel(): void } | null,
  ): Promise<{ out: string; fileType: string; bytes: number; tokenizer: string; fallbacks: number; tensors: { name: string; dtype: string; shape: number[]; fallback: boolean }[] }>
  NativeCancelToken: new () => { cancel(): void }
}

function addon(): NativeConvert {
  try {
    return createRequire(import.meta.url)('@x/phi2-native') as NativeConvert
  } catch (err) {
    throw new Phi2BackendUnavailableError('cpu', `phi2 convert needs the native engine (@x/phi2-native): ${(err as Error).message}`, { cause: err })
  }
}

/**
 * Converts an HF safetensors Phi model (F32 / F16 / BF16, one file or shards, HF or legacy
 * phi-msft names) to a GGUF v3 file llama.cpp and `loadModel` read. `src`: a model directory, a
 * .safetensors file (config.json beside it), or a Hub id (`ORG/REPO`, `hf:ORG/REPO`; downloaded
 * into the Hugging Face cache first). Rejects with `E_INVALID_OPTION`, `E_IO`, `E_BAD_CONFIG`,
 * `E_MALFORMED_FILE`, `E_MISSING_TENSOR`, the Hub's codes (see errors.ts) or `Phi2AbortError`.
 */
export async function convertModel(src: string, options: ConvertOptions): Promise<ConvertResult> {
  if (typeof src !== 'string' || src.length === 0) throw new Phi2OptionsError('src', 'convertModel: src must be a path or a Hugging Face id')
  const opts = parseOptions(ConvertOptionsSchema, options, 'convertModel')
  const type = CONVERT_TYPES.find((c) => c.toLowerCase() === opts.type.toLowerCase())!
  const signal = opts.signal
  if (signal?.aborted) throw abortErrorFrom(signal)

  let path = src
  let baseName: string
  const ref = existsSync(resolve(src)) ? null : parseHubId(src, true)
  if (ref) {
    if (ref.path !== null && !/\.safetensors$/i.test(ref.path)) {
      throw new Phi2OptionsError('src', `convertModel: ${JSON.stringify(src)} is not a safetensors model (convert reads HF safetensors; give ORG/REPO)`)
    }
    const r = await fetchFromHub(ref.path === null ? ref : { ...ref, path: null }, {
      revision: opts.revision,
      signal,
      onProgress: opts.onProgress
        ? (p) => opts.onProgress!({ phase: 'download', progress: p.totalBytes ? p.loadedBytes / p.totalBytes : 1, loadedBytes: p.loadedBytes, totalBytes: p.totalBytes, item: p.file })
        : undefined,
    })
    path = ref.path === null ? r.path : join(r.path, ref.path)
    baseName = ref.repo.split('/')[1]!
  } else {
    const abs = resolve(src)
    if (!existsSync(abs)) throw new Phi2Error('E_IO', `convertModel: ${JSON.stringify(src)}: no such file or directory (nor a Hugging Face id ORG/REPO)`)
    path = abs
    baseName = statSync(abs).isDirectory() ? basename(abs) : basename(dirname(abs))
  }

  let out: string
  if (opts.cache) {
    const safe = (opts.name ?? baseName).replace(/[^A-Za-z0-9._-]+/g, '-')
    out = join(localModelsDir(), `${safe}.${type}.gguf`)
  } else out = resolve(opts.out!)
  try {
    mkdirSync(dirname(out), { recursive: true })
  } catch (err) {
    throw new Phi2Error('E_IO', `convertModel: cannot create ${dirname(out)}: ${(err as Error).message}`, { cause: err })
  }

  const native = addon()
  const token = new native.NativeCancelToken()
  const onAbort = () => token.cancel()
  signal?.addEventListener('abort', onAbort, { once: true })
  const tokenizer = opts.tokenizer ?? (existsSync(join(statSync(path).isDirectory() ? path : dirname(path), 'tokenizer.json')) ? undefined : packageAsset('phi2-tokenizer.json'))
  const onProgress = opts.onProgress
  // The engine writes (through its own partial file) to `tmp` beside `out`; `out` is replaced only
  // by the final rename, so an abort or failure at any point leaves an existing file untouched.
  const tmp = join(dirname(out), `.${basename(out)}.${process.pid}.${Date.now().toString(36)}.converting`)
  // A throw from the user's onProgress must not escape the native callback (napi-rs treats it as
  // a fatal uncaught exception): it cancels the conversion and becomes the rejection.
  let progressError: { error: unknown } | null = null
  try {
    let r
    try {
      r = await native.convertModel(
        path,
        tmp,
        {
          fileType: type,
          ...(opts.threads !== undefined ? { threads: opts.threads } : {}),
          ...(tokenizer !== undefined ? { tokenizer: resolve(tokenizer) } : {}),
          ...(opts.name !== undefined ? { name: opts.name } : {}),
        },
        onProgress
          ? (err, p) => {
              if (err || signal?.aborted || progressError) return
              try {
                onProgress({ phase: 'convert', progress: p.bytesTotal ? p.bytesWritten / p.bytesTotal : 1, loadedBytes: p.bytesWritten, totalBytes: p.bytesTotal, item: p.tensor })
              } catch (error) {
                progressError = { error }
                token.cancel()
              }
            }
          : null,
        token,
      )
    } catch (err) {
      if (progressError) throw (progressError as { error: unknown }).error
      throw err
    }
    if (progressError) throw (progressError as { error: unknown }).error
    // An abort that came after the last chunk still wins: no output is written.
    if (signal?.aborted) throw abortErrorFrom(signal)
    try {
      renameSync(tmp, out)
    } catch (err) {
      throw new Phi2Error('E_IO', `convertModel: cannot rename the converted file to ${out}: ${(err as Error).message}`, { cause: err })
    }
    return {
      out,
      type,
      bytes: r.bytes,
      tokenizer: r.tokenizer,
      fallbacks: r.fallbacks,
      tensors: r.tensors.map((t) => ({ name: t.name, type: t.dtype, shape: t.shape, fallback: t.fallback })),
    }
  } catch (err) {
    rmSync(tmp, { force: true })
    if (progressError) throw (progressError as { error: unknown }).error
    if (err instanceof Phi2Error) throw err
    if ((err as { code?: string }).code === 'E_CANCELLED' || signal?.aborted) throw abortErrorFrom(signal)
    throw fromNativeError(err)
  } finally {
    signal?.removeEventListener('abort', onAbort)
  }
}
