/**
 * The only module that touches the native addon `@x/phi2-native` (Rust, napi-rs). It is loaded
 * lazily on the first `loadModel()`, so that the tokenizer, prompt helpers and option schemas work
 * (and can be imported) even where the addon is missing. Node only.
 *
 * Two builds of the same engine: the CPU addon (always installed) and the CUDA addon
 * (`@x/phi2-native/cuda`: installed on purpose, see bindings/node/cuda.js), which links the CUDA
 * libraries and so is only tried where an NVIDIA driver is present.
 */
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { availableParallelism } from 'node:os'
import type { Engine, EngineCancelToken, EngineModel, EngineRuntime } from '../engine.js'
import { Phi2BackendUnavailableError, Phi2Error, Phi2ModelLoadError, abortErrorFrom } from '../errors.js'

interface NativeAddon {
  NativeModel: { load(path: string, threads?: number | null, backend?: string | null, kvCache?: string | null): Promise<EngineModel> }
  NativeCancelToken: new () => EngineCancelToken
}

let cached: Engine | undefined
let cachedCuda: { engine: Engine } | { reason: string } | undefined
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
  cached = addonEngine(addon, 'cpu')
  return cached
}

/** Where an NVIDIA driver shows itself on Linux (device nodes, the kernel module's proc entry). */
const DRIVER_MARKS = ['/dev/nvidiactl', '/dev/nvidia0', '/proc/driver/nvidia/version']

/**
 * The CUDA engine, or why there is none: `PHI2_CUDA=0`, no NVIDIA driver, the CUDA addon not
 * installed or not loadable (e.g. the CUDA 13 libraries missing). With `PHI2_CUDA_ADDON` set (a
 * built addon carried to a GPU machine) the driver check is left to the addon's own loading.
 * A GPU that fails when a model is loaded on it is reported by that load.
 */
export function cudaEngine(): { engine: Engine } | { reason: string } {
  if (cachedCuda) return cachedCuda
  cachedCuda = findCuda()
  return cachedCuda
}

function findCuda(): { engine: Engine } | { reason: string } {
  if (process.env.PHI2_CUDA === '0') return { reason: 'CUDA is switched off (PHI2_CUDA=0)' }
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    return { reason: `the CUDA addon is built for linux-x64 only, this is ${process.platform}-${process.arch}` }
  }
  if (!process.env.PHI2_CUDA_ADDON && !DRIVER_MARKS.some((p) => existsSync(p))) {
    return { reason: `no NVIDIA driver found (none of ${DRIVER_MARKS.join(', ')})` }
  }
  try {
    const require = createRequire(import.meta.url)
    return { engine: addonEngine(require('@x/phi2-native/cuda') as NativeAddon, 'cuda') }
  } catch (err) {
    // The first line: Node appends the require stack to "Cannot find module".
    const message = (err instanceof Error ? err.message : String(err)).split('\n')[0]
    return { reason: `the CUDA addon could not be loaded: ${message}` }
  }
}

/**
 * An {@link Engine} over one addon build. A load's `note` (why another backend was not used, e.g.
 * CUDA under `'auto'`) starts its `runtime.reason`.
 */
function addonEngine(addon: NativeAddon, backend: 'cpu' | 'cuda'): Engine {
  const { NativeModel, NativeCancelToken } = addon
  const engine: Engine = {
    backend,
    async load(source, options) {
      if (source.kind !== 'path') {
        throw new Phi2ModelLoadError(
          'E_UNSUPPORTED_FORMAT',
          source.name,
          `The '${backend}' backend loads files from a path; for a URL, Blob or bytes use backend 'wasm'`,
        )
      }
      const signal = options.signal
      const loading = NativeModel.load(source.path, options.threads ?? null, backend, options.kvCache ?? null).catch((err: unknown) => {
        // The CUDA build answers E_BACKEND_UNAVAILABLE when the GPU cannot be used (no device, a
        // driver too old for its kernels): a backend problem, not a bad model file.
        if ((err as { code?: unknown } | null)?.code === 'E_BACKEND_UNAVAILABLE') {
          throw new Phi2BackendUnavailableError(backend, (err as Error).message, { cause: err })
        }
        throw err
      })
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
      const device = model.info.device ?? backend
      let runtime: EngineRuntime
      if (backend === 'cuda') {
        runtime = { backend, build: 'native-cuda', device, threads: 1, reason: `CUDA addon on ${device}` }
      } else {
        const requested = options.threads ?? null
        const first = poolThreads === null
        poolThreads ??= requested ?? availableParallelism()
        const reason = first
          ? requested !== null
            ? `native addon, ${poolThreads} threads requested`
            : `native addon, ${poolThreads} threads (all cores)`
          : `native addon, ${poolThreads} threads (the process-wide pool set by the first model loaded)`
        runtime = { backend, build: 'native', device, threads: poolThreads, reason }
      }
      if (options.note) runtime.reason = `${options.note}; ${runtime.reason}`
      return { model, runtime, fileSizeBytes: null, fromCache: false, sha256: null }
    },
    createCancelToken: () => new NativeCancelToken(),
  }
  return engine
}
