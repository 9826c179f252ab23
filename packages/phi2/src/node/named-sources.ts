/**
 * Node's `loadModel()` sources that are names rather than paths: Hugging Face Hub ids
 * (`ORG/REPO`, `hf:ORG/REPO/PATH`, downloaded into the Hugging Face cache by `hub-cache.ts`) and
 * the models `phi2 convert --cache` wrote into phi2's own cache (`NAME.gguf`). Node only.
 */
import { existsSync } from 'node:fs'
import { homedir } from 'node:os'
import { join, resolve } from 'node:path'
import { Phi2ModelLoadError } from '../errors.js'
import { parseHubId } from '../hub.js'
import type { LoadOptions } from '../options.js'
import { fetchFromHub, hubEnv } from './hub-cache.js'

/**
 * phi2's own model cache, where `phi2 convert --cache` writes: `$PHI2_CACHE`, else
 * `$XDG_CACHE_HOME/phi2`, else `~/.cache/phi2`; models in its `models/` folder.
 */
export function localModelsDir(env: NodeJS.ProcessEnv = process.env): string {
  const root = env.PHI2_CACHE || join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'phi2')
  return join(root, 'models')
}

/** `NAME.gguf` in phi2's model cache, when `name` is a bare file name that exists there. */
export function cachedLocalModel(name: string): string | null {
  if (!/^[^/\\]+\.gguf$/i.test(name)) return null
  const p = join(localModelsDir(), name)
  return existsSync(p) ? p : null
}

/**
 * A string source → the local path to load: itself when it exists; a Hub id's file or snapshot
 * directory (downloaded if needed); a model of phi2's cache; else unchanged (the loader reports it).
 */
export async function resolveNamedSource(source: string, opts: LoadOptions): Promise<string> {
  if (source.length === 0 || /^https?:\/\//i.test(source) || existsSync(resolve(source))) return source
  const ref = parseHubId(source, true)
  if (ref) {
    if (ref.path === null && opts.backend === 'wasm') {
      throw new Phi2ModelLoadError(
        'E_UNSUPPORTED_FORMAT',
        source,
        `Could not load model ${JSON.stringify(source)}: the wasm backend reads GGUF files only, not a safetensors model repository; ` +
          `load a GGUF of it (hf:ORG/REPO/FILE.gguf), use backend 'cpu', or convert it with phi2 convert`,
      )
    }
    const onProgress = opts.onProgress
    const env = hubEnv()
    const r = await fetchFromHub(ref, {
      env: opts.hubEndpoint ? { ...env, endpoint: opts.hubEndpoint.replace(/\/+$/, '') } : env,
      revision: opts.revision,
      signal: opts.signal,
      onProgress: onProgress
        ? (p) =>
            onProgress({
              phase: 'download',
              progress: p.totalBytes > 0 ? p.loadedBytes / p.totalBytes : 1,
              loadedBytes: p.loadedBytes,
              totalBytes: p.totalBytes,
              fromCache: false,
              file: p.file,
            })
        : undefined,
    })
    return r.path
  }
  return cachedLocalModel(source) ?? source
}
