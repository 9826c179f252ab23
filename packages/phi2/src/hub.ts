/**
 * Hugging Face Hub model ids (platform-neutral): which strings name a Hub repository or one file
 * of it, and the Hub's download URL for a file. Node downloads them into the Hugging Face cache
 * (`node/hub-cache.ts`); browsers stream the file URL through the wasm loader and the Cache API.
 *
 * Accepted forms:
 * - `hf:ORG/REPO/PATH` — one file of a repository (`PATH` may contain `/`), e.g.
 *   `hf:TheBloke/phi-2-GGUF/phi-2.Q4_K_M.gguf`;
 * - `hf:ORG/REPO` and `ORG/REPO` — a whole model repository (config.json + safetensors +
 *   tokenizer.json), e.g. `microsoft/phi-2`. A bare `ORG/REPO` is a Hub id only where no local
 *   file or directory of that name exists (Node), and never when its last part ends in a model
 *   or JSON file extension.
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
 * Browsers: a Hub id → the URL the streamed wasm loader fetches (and keeps in the Cache API), or
 * null when `source` is not a Hub id. A repository id (safetensors) is refused: its f32 / bf16
 * weights cannot stream into wasm32's memory, a GGUF of the model can.
 */
export function browserHubUrl(source: string, revision: string | undefined, endpoint: string = DEFAULT_HUB_ENDPOINT): string | null {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(source) || source.startsWith('/') || source.startsWith('.')) return null
  const ref = parseHubId(source, true)
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
  return hubFileUrl(endpoint, ref.repo, revision ?? 'main', ref.path)
}
