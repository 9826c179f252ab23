/**
 * Node's `loadModel()`: a path (native `cpu` backend, or `wasm`), or — with backend `'wasm'` — a
 * URL, Blob or bytes like in browsers. Node only.
 */
import { existsSync, readdirSync, statSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { basename, dirname, extname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'
import type { Engine, EngineSource } from '../engine.js'
import { Phi2BackendUnavailableError, Phi2ModelLoadError, Phi2OptionsError, abortErrorFrom } from '../errors.js'
import { type LoadPlan, type Phi2Model, loadWithEngine } from '../model.js'
import { type LoadOptions, LoadOptionsSchema, invalidOption, parseOptions } from '../options.js'
import { sourceFromValue, type ModelSource } from '../sources.js'
import { type Phi2RemoteModel, type RemoteSource, isRemoteSource, loadRemoteModel } from '../remote.js'
import { type WasmEnvironment, type WorkerHandle, wasmEngine } from '../wasm/client.js'
import { bundledTokenizer, packageAsset, tokenizerFromDirectory } from './files.js'
import { cudaEngine, nativeEngine } from './native.js'
import { resolveNamedSource } from './named-sources.js'
import { workerExecArgv } from './worker-exec-argv.js'

function weightFilesSize(path: string, isDir: boolean): number {
  if (!isDir) return statSync(path).size
  let total = 0
  for (const f of readdirSync(path)) {
    if (/\.(safetensors|gguf|bin)$/.test(f)) total += statSync(join(path, f)).size
  }
  return total
}

/** The wasm engine in Node: worker_threads running dist/wasm-worker.node.js (pkg or pkg-mt). */
const nodeWasmEnv: WasmEnvironment = {
  platform: 'node',
  spawn(on) {
    // An explicit execArgv: by default a worker inherits the host's, and flags such as
    // --input-type / -e / --inspect make worker_threads refuse to start (E_ENGINE_CRASHED).
    const w = new Worker(new URL('./wasm-worker.node.js', import.meta.url), { execArgv: workerExecArgv(process.execArgv) })
    w.on('message', (m) => on.message(m))
    w.on('messageerror', (e) => on.error(e))
    w.on('error', (e) => on.error(e))
    w.on('exit', (code) => on.exit(code))
    const handle: WorkerHandle = {
      post: (msg, transfer) => w.postMessage(msg, transfer as never),
      terminate: () => void w.terminate(),
      ref: () => w.ref(),
      unref: () => w.unref(),
    }
    return handle
  },
  sharedMemory: () =>
    typeof SharedArrayBuffer === 'function'
      ? { usable: true, reason: 'Node.js: SharedArrayBuffer available' }
      : { usable: false, reason: 'SharedArrayBuffer is not available in this Node.js' },
  defaultThreads: () => availableParallelism(),
}

let wasmNode: ReturnType<typeof wasmEngine> | undefined

/**
 * Loads a Phi-2 model.
 *
 * - backend `'cpu'` / `'cuda'` / `'auto'` (native addon): a `.gguf` file, a `.safetensors` file (with
 *   `config.json` next to it), or a Hugging Face model directory (`config.json` + `*.safetensors`
 *   shards, ideally `tokenizer.json`).
 * - A `file:` URL (a `URL`, e.g. `pathToFileURL(p)`, or its `href`) is read as its path on every backend.
 * - A Hugging Face Hub id, on every backend: `ORG/REPO` (a safetensors model repository: config.json,
 *   shards, tokenizer.json; cpu only) or `hf:ORG/REPO/PATH` (one file, e.g. a GGUF), at the
 *   `revision` option (default `main`). Downloaded once into the Hugging Face cache shared with
 *   Python (`HF_HUB_CACHE`, `HF_HOME`; `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE=1`), resumed
 *   after an interruption, verified against the Hub's sha256; progress `phase: 'download'`.
 * - `NAME.gguf` that does not exist in the current directory: phi2's model cache
 *   (`phi2 convert --cache`; `$PHI2_CACHE/models`, default `~/.cache/phi2/models`).
 * - backend `'wasm'` (the wasm engine in a worker thread): a `.gguf` path, an `http(s)://` URL (or
 *   `URL`), a `Blob`, an `ArrayBuffer` or a `Uint8Array` (buffers are transferred to the worker:
 *   they are detached afterwards; pass `bytes.slice()` to keep a copy).
 * - `{ remote: 'http://host:8000/v1', model?, apiKey? }`: an OpenAI-compatible server (`phi2 serve`,
 *   vLLM, ...); resolves with a `Phi2RemoteModel` (same generate / stream / chat API, see remote.ts).
 *
 * Rejects with {@link Phi2ModelLoadError} (`E_IO`, `E_MALFORMED_FILE`, `E_BAD_CONFIG`,
 * `E_MODEL_TOO_LARGE`, ...), {@link Phi2OptionsError}, {@link Phi2BackendUnavailableError} or
 * {@link Phi2AbortError}.
 */
export function loadModel(source: RemoteSource): Promise<Phi2RemoteModel>
export function loadModel(source: ModelSource, options?: LoadOptions): Promise<Phi2Model>
export async function loadModel(source: ModelSource | RemoteSource, options?: LoadOptions): Promise<Phi2Model | Phi2RemoteModel> {
  // An OpenAI-compatible server (phi2 serve, vLLM, ...) instead of a model file (remote.ts).
  if (isRemoteSource(source)) return loadRemoteModel(source)
  const opts = parseOptions(LoadOptionsSchema, options, 'loadModel')
  const backend = opts.backend ?? 'auto'
  if (backend === 'cuda') {
    const cuda = cudaEngine()
    if ('reason' in cuda) {
      throw new Phi2BackendUnavailableError('cuda', `The 'cuda' backend is not available: ${cuda.reason}. Use backend 'cpu' (or 'auto') or 'wasm'`)
    }
  }
  if (opts.signal?.aborted) throw abortErrorFrom(opts.signal)
  source = fileUrlToPath(source)
  // Hugging Face Hub ids (into the HF cache) and models of phi2's cache (phi2 convert --cache).
  if (typeof source === 'string') source = await resolveNamedSource(source, opts)
  if (backend === 'wasm') return loadNodeWasm(source, opts)
  if (typeof source !== 'string' || source.length === 0) {
    invalidOption(
      'source',
      'loadModel',
      typeof source === 'string' || source === undefined || source === null
        ? 'must be a path (or file: URL) to a .gguf / .safetensors file or a model directory'
        : `must be a path or a file: URL for backend '${backend}' (http(s) URLs, Blobs and bytes need backend 'wasm')`,
    )
  }
  if (/^https?:\/\//i.test(source)) {
    invalidOption('source', 'loadModel', `is a URL: backend '${backend}' loads files from a path, use backend 'wasm' for URLs`)
  }
  const path = resolve(source)
  let isDir: boolean
  try {
    isDir = statSync(path).isDirectory()
  } catch (err) {
    throw new Phi2ModelLoadError('E_IO', source, `Could not load model ${JSON.stringify(source)}: no such file or directory`, {
      cause: err,
    })
  }
  const plan = (engine: Engine, note?: string): LoadPlan => ({
    engine,
    source: { kind: 'path', path, name: source },
    display: path,
    options: opts,
    useGgufVocab: !isDir && extname(path).toLowerCase() === '.gguf',
    fallbackTokenizer: () => tokenizerFromDirectory(isDir ? path : dirname(path)) ?? bundledTokenizer(),
    fileSize: () => weightFilesSize(path, isDir),
    ...(note ? { note } : {}),
  })
  if (backend === 'cpu') return loadWithEngine(plan(nativeEngine()))
  // 'cuda' (available: checked above) or 'auto': the GPU when there is one, else the CPU, saying why.
  const cuda = cudaEngine()
  if ('reason' in cuda) return loadWithEngine(plan(nativeEngine(), `CUDA not used: ${cuda.reason}`))
  try {
    return await loadWithEngine(plan(cuda.engine))
  } catch (err) {
    if (backend === 'auto' && err instanceof Phi2BackendUnavailableError) {
      return loadWithEngine(plan(nativeEngine(), `CUDA not used: ${err.message}`))
    }
    throw err
  }
}

/** A `file:` URL (a `URL` or a string) → its path, on every backend; anything else unchanged. */
function fileUrlToPath(source: ModelSource): ModelSource {
  let url: URL
  if (source instanceof URL) {
    if (source.protocol !== 'file:') return source
    url = source
  } else if (typeof source === 'string' && /^file:/i.test(source)) {
    try {
      url = new URL(source)
    } catch (err) {
      throw new Phi2OptionsError('source', `loadModel: source ${JSON.stringify(source)} is not a valid file: URL`, { cause: err })
    }
  } else return source
  try {
    return fileURLToPath(url)
  } catch (err) {
    throw new Phi2OptionsError('source', `loadModel: source ${JSON.stringify(url.href)} is not a local file: URL (${(err as Error).message})`, { cause: err })
  }
}

async function loadNodeWasm(source: ModelSource, opts: LoadOptions): Promise<Phi2Model> {
  let engineSource: EngineSource
  let display: string
  let dir: string | null = null
  if (typeof source === 'string' && !/^https?:\/\//i.test(source) && !/^(blob|data):/i.test(source)) {
    if (source.length === 0) invalidOption('source', 'loadModel', 'must not be empty')
    const path = resolve(source)
    let st
    try {
      st = statSync(path)
    } catch (err) {
      throw new Phi2ModelLoadError('E_IO', source, `Could not load model ${JSON.stringify(source)}: no such file or directory`, { cause: err })
    }
    if (st.isDirectory()) {
      throw new Phi2ModelLoadError(
        'E_UNSUPPORTED_FORMAT',
        source,
        `Could not load model ${JSON.stringify(source)}: the wasm backend reads GGUF files only, not a safetensors model directory (use backend 'cpu', or a GGUF of the model)`,
      )
    }
    engineSource = { kind: 'path', path, name: basename(path) }
    display = path
    dir = dirname(path)
  } else {
    const s = sourceFromValue(source, undefined)
    engineSource = s.source
    display = s.display
  }
  wasmNode ??= wasmEngine(nodeWasmEnv)
  return loadWithEngine({
    engine: wasmNode,
    source: engineSource,
    display,
    options: opts,
    useGgufVocab: true,
    // As on the cpu path: tokenizer.json next to the file, else the bundled Phi-2 tokenizer.
    fallbackTokenizer: () => (dir !== null ? tokenizerFromDirectory(dir) : null) ?? bundledTokenizer(),
  })
}

/** Path of the embedded default model: a small Phi-2-architecture GGUF trained on CPython's stdlib and docs (not Phi-2; scripts/train). */
export function defaultModelPath(): string {
  return packageAsset('default.gguf', 'models')
}

/** Whether `defaultModelPath()` exists in this installation. */
export function hasDefaultModel(): boolean {
  return existsSync(defaultModelPath())
}
