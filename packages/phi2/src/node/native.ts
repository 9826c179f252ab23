/**
 * The only module that touches the native addon `@x/phi2-native` (Rust, napi-rs). It is loaded
 * lazily on the first `loadModel()`, so that the tokenizer, prompt helpers and option schemas work
 * (and can be imported) even where the addon is missing.
 */
import { createRequire } from 'node:module'
import type { Engine, EngineCancelToken, EngineModel } from './engine.js'
import { Phi2BackendUnavailableError } from './errors.js'

interface NativeAddon {
  NativeModel: { load(path: string, threads?: number | null): Promise<EngineModel> }
  NativeCancelToken: new () => EngineCancelToken
}

let cached: Engine | undefined

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
        `platform package (@x/phi2-native-${process.platform}-${process.arch}-*), or build bindings/node.`,
      { cause: err },
    )
  }
  const { NativeModel, NativeCancelToken } = addon
  cached = {
    backend: 'cpu',
    load: (path, threads) => NativeModel.load(path, threads ?? null),
    createCancelToken: () => new NativeCancelToken(),
  }
  return cached
}
