/**
 * The only module that touches the native addon `@x/phi2-native` (Rust, napi-rs). It is loaded
 * lazily on the first `loadModel()`, so that the tokenizer, prompt helpers and option schemas work
 * (and can be imported) even where the addon is missing. Node only.
 */
import { createRequire } from 'node:module'
import { availableParallelism } from 'node:os'
import type { Engine, EngineCancelToken, EngineModel } from '../engine.js'
import { Phi2BackendUnavailableError, Phi2Error, Phi2ModelLoadError, abortErrorFrom } from '../errors.js'

interface NativeAddon {
  NativeModel: { load(path: string, threads?: number | null): Promise<EngineModel> }
  NativeCancelToken: new () => EngineCancelToken
}

let cached: Engine | undefined
/** Threads of the process-wide native pool (set by the first load). */
let poolThreads: number | null = null

/** The CPU engine backed by the native addon; throws E_BACKEND_UNAVAILABLE when it cannot be loaded. */
export function nativeEngine(): Engine {
  if (cached) return cached
  let addon: NativeAddon
  try {
    const require = createRequire(import.meta.url)
    addon = require('@x/phi2-native') as NativeAddon
  } catch (err) {
    throw new Phi2BackendUnavailableError(
      'cpu',
      `The native engine (@x/phi2-native) could not be loaded for ${process.platform}-${process.arch}: ` +
        `${err instanceof Error ? err.message : String(err)}. Reinstall @x/phi2 so that npm installs the ` +
        `platform package (@x/phi2-native-${process.platform}-${process.arch}-*), build bindings/node, ` +
        `or use backend 'wasm'.`,
      { cause: err },
    )
  }
  const { NativeModel, NativeCancelToken } = addon
  cached = {
    backend: 'cpu',
    async load(source, options) {
      if (source.kind !== 'path') {
        throw new Phi2ModelLoadError(
          'E_UNSUPPORTED_FORMAT',
          source.name,
          `The 'cpu' backend loads files from a path; for a URL, Blob or bytes use backend 'wasm'`,
        )
      }
      const signal = options.signal
      const loading = NativeModel.load(source.path, options.threads ?? null)
      let model: EngineModel
      if (signal) {
        let onAbort: () => void = () => {}
        const aborted = new Promise<never>((_, reject) => {
          onAbort = () => reject(abortErrorFrom(signal))
          signal.addEventListener('abort', onAbort, { once: true })
        })
        try {
          model = await Promise.race([loading, aborted])
        } catch (err) {
          if (err instanceof Phi2Error) {
            loading.then(
              (m) => m.dispose(),
              () => {},
            )
          }
          throw err
        } finally {
          signal.removeEventListener('abort', onAbort)
        }
      } else {
        model = await loading
      }
      const requested = options.threads ?? null
      const first = poolThreads === null
      poolThreads ??= requested ?? availableParallelism()
      const reason =
        first
          ? requested !== null
            ? `native addon, ${poolThreads} threads requested`
            : `native addon, ${poolThreads} threads (all cores)`
          : `native addon, ${poolThreads} threads (the process-wide pool set by the first model loaded)`
      return {
        model,
        runtime: { backend: 'cpu', build: 'native', threads: poolThreads, reason },
        fileSizeBytes: null,
        fromCache: false,
        sha256: null,
      }
    },
    createCancelToken: () => new NativeCancelToken(),
  }
  return cached
}
