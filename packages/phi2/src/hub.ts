/**
 * Hugging Face Hub model ids (platform-neutral): which strings name a Hub repository or one file
 * of it, and the Hub's download URL for a file. Node downloads them into the Hugging Face cache
 * (`node/hub-cache.ts`); browsers stream the file URL through the wasm loader and the Cache API.
 *
 * Accepted forms:
 * - `hf:ORG/REPO/PATH` — one file of a repository (`PATH` may contain `/`), e.g.
 *   `hf:TheBloke/phi-2-GGUF/phi-2.Q4_K_M.gguf`;
 * - `hf:ORG/REPO` and `ORG/REPO` — a whole model repository (config.json + safetensors +
 *   tokenizer.json), e.g. `microsoft/phi-2`. A bare `ORG/REPO` is a Hub id only in Node, where no
 *   local file or directory of that name exists, and never when its last part ends in a model or
 *   JSON file extension. Browsers need the `hf:` prefix (a bare `ORG/REPO` is a relative URL).
 *
 * The revision (branch, tag or commit; default `main`) is the `revision` load option.
 */
import { Phi2ModelLoadError, Phi2OptionsError } from './errors.js'

/** The Hub's default endpoint (Node honours `HF_ENDPOINT`). */
export const DEFAULT_HUB_ENDPOINT = 'https://huggingface.co'

/** A parsed Hub id. */
export interface HubRef {
  /** `ORG/REPO`. */
  repo: string
  /** A file in the repository, or null for the whole (safetensors) model repository. */
  path: string | null
  /** The id as written (for messages). */
  id: string
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/
const FILE_EXT = /\.(gguf|safetensors|bin|json|pt|pth|onnx)$/i

function checkName(part: string, id: string, what: string): void {
  if (!NAME.test(part) || part.includes('..') || part.length > 96) {
    throw new Phi2OptionsError('source', `loadModel: ${JSON.stringify(id)} is not a valid Hugging Face id (bad ${what} ${JSON.stringify(part)})`)
  }
}

/**
 * `hf:...` ids always parse (or throw `E_INVALID_OPTION`); a bare `ORG/REPO` parses when
 * `allowBare` (the caller checked that no local path of that name exists).
 */
export function parseHubId(source: string, allowBare: boolean): HubRef | null {
  if (/^hf:/i.test(source)) {
    const rest = source.slice(3).replace(/^\/+/, '')
    const parts = rest.split('/')
    if (parts.length < 2 || parts.some((p) => p.length === 0)) {
      throw new Phi2OptionsError('source', `loadModel: ${JSON.stringify(source)} is not a Hugging Face id: expected hf:ORG/REPO or hf:ORG/REPO/PATH`)
    }
    checkName(parts[0]!, source, 'organisation')
    checkName(parts[1]!, source, 'repository name')
    const path = parts.slice(2)
    if (path.some((p) => p === '.' || p === '..')) {
      throw new Phi2OptionsError('source', `loadModel: ${JSON.stringify(source)}: the file path must not contain . or .. segments`)
    }
    return { repo: `${parts[0]}/${parts[1]}`, path: path.length ? path.join('/') : null, id: source }
  }
  if (!allowBare) return null
  const m = /^([A-Za-z0-9][A-Za-z0-9._-]*)\/([A-Za-z0-9][A-Za-z0-9._-]*)$/.exec(source)
  if (!m || FILE_EXT.test(source) || source.includes('..')) return null
  return { repo: source, path: null, id: source }
}

/** `{endpoint}/{repo}/resolve/{revision}/{path}` (each part URL-encoded, `/` kept in the path). */
export function hubFileUrl(endpoint: string, repo: string, revision: string, path: string): string {
  const enc = (s: string) => s.split('/').map(encodeURIComponent).join('/')
  return `${endpoint.replace(/\/+$/, '')}/${enc(repo)}/resolve/${encodeURIComponent(revision)}/${enc(path)}`
}

/**
 * Browsers: a Hub id (`hf:ORG/REPO/PATH` only) → its parsed form, or null when `source` is not one.
 *
 * In browsers a Hub id needs the `hf:` prefix: a bare `ORG/REPO` (or `models/phi`) is a relative
 * URL, loaded from the page's own server like any other. A repository id (`hf:ORG/REPO`,
 * safetensors) is refused: its f32 / bf16 weights cannot stream into wasm32's memory, a GGUF of
 * the model can.
 */
export function browserHubRef(source: string): (HubRef & { path: string }) | null {
  const ref = parseHubId(source, false)
  if (!ref) return null
  if (ref.path === null) {
    throw new Phi2ModelLoadError(
      'E_UNSUPPORTED_FORMAT',
      source,
      `Could not load model ${JSON.stringify(source)}: ${ref.repo} is a safetensors model repository, which cannot stream into ` +
        `the browser's wasm engine (f32 / bf16 weights do not fit in wasm32 memory); load a GGUF of it instead, ` +
        `e.g. hf:ORG/REPO/FILE.Q4_K_M.gguf (phi2 convert makes one)`,
    )
  }
  return ref as HubRef & { path: string }
}

/**
 * Browsers: a Hub id → the `/resolve/<revision>/<path>` URL (no network), or null when `source`
 * is not a Hub id (see {@link browserHubRef}).
 */
export function browserHubUrl(source: string, revision: string | undefined, endpoint: string = DEFAULT_HUB_ENDPOINT): string | null {
  const ref = browserHubRef(source)
  return ref && hubFileUrl(endpoint, ref.repo, revision ?? 'main', ref.path)
}

const COMMIT = /^[0-9a-f]{40}$/
/** Cache API storage of the last commit each (endpoint, repo, revision, file) resolved to. */
const REFS_CACHE = 'phi2-hub-refs-v1'

async function refsCache(): Promise<Cache | null> {
  const cs = (globalThis as { caches?: CacheStorage }).caches
  if (!cs) return null
  try {
    return await cs.open(REFS_CACHE)
  } catch {
    return null // opaque origins, private mode
  }
}

/**
 * Browsers: a Hub id → the URL the streamed wasm loader fetches and keeps in the Cache API, or null
 * when `source` is not a Hub id. The URL names the commit, not the branch or tag: the revision is
 * resolved first (`GET {endpoint}/api/models/{repo}/revision/{revision}`), so the Cache API entry
 * (keyed by URL) is the file of that commit and a branch that moved is downloaded again. The commit
 * each revision had is remembered (with `useCache`): when the Hub cannot be reached, the last one
 * is used, so a cached model loads offline. A commit id as `revision` needs no request.
 */
export async function resolveBrowserHubUrl(
  source: string,
  options: { revision?: string; endpoint?: string; useCache: boolean; signal?: AbortSignal },
): Promise<string | null> {
  const ref = browserHubRef(source)
  if (!ref) return null
  const endpoint = (options.endpoint ?? DEFAULT_HUB_ENDPOINT).replace(/\/+$/, '')
  const revision = options.revision ?? 'main'
  if (COMMIT.test(revision)) return hubFileUrl(endpoint, ref.repo, revision, ref.path)
  const byRevision = hubFileUrl(endpoint, ref.repo, revision, ref.path)
  const cache = options.useCache ? await refsCache() : null
  const enc = (s: string) => s.split('/').map(encodeURIComponent).join('/')
  let res: Response | null = null
  try {
    res = await fetch(`${endpoint}/api/models/${enc(ref.repo)}/revision/${encodeURIComponent(revision)}`, { signal: options.signal })
  } catch {
    // Offline or unreachable (an abort is reported by the caller): the remembered commit below.
    res = null
  }
  if (res && (res.status === 401 || res.status === 404)) {
    await res.body?.cancel().catch(() => {})
    const code = res.status === 401 ? 'E_HUB_AUTH' : 'E_HUB_NOT_FOUND'
    throw new Phi2ModelLoadError(
      code,
      source,
      `Could not load model ${JSON.stringify(source)}: the Hub at ${endpoint} has no repository ${ref.repo} at revision ${JSON.stringify(revision)} ` +
        `(HTTP ${res.status}${res.status === 401 ? ': private, gated or missing; browsers send no token' : ''})`,
    )
  }
  let commit: string | null = null
  if (res?.ok) {
    try {
      const sha = ((await res.json()) as { sha?: unknown }).sha
      if (typeof sha === 'string' && COMMIT.test(sha)) commit = sha
    } catch {
      commit = null
    }
  } else await res?.body?.cancel().catch(() => {})
  if (commit) {
    await cache?.put(byRevision, new Response(commit, { headers: { 'content-type': 'text/plain' } })).catch(() => {})
    return hubFileUrl(endpoint, ref.repo, commit, ref.path)
  }
  try {
    const known = await (await cache?.match(byRevision))?.text()
    if (known && COMMIT.test(known)) return hubFileUrl(endpoint, ref.repo, known, ref.path)
  } catch {
    // fall through
  }
  return byRevision
}
