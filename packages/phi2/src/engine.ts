/**
 * The contract between the SDK and an inference engine. It mirrors the native addon's API
 * (bindings/node/native.d.ts): `node/native.ts` adapts the addon, `wasm/client.ts` implements it
 * over messages to the wasm engine worker. Every other module works against these interfaces.
 * Platform-neutral (no `node:` imports). Internal: not exported from the package.
 */
import type { LoadProgress } from './options.js'

export interface EngineModelInfo {
  architecture: string
  format: string
  dtype: string
  vocabSize: number
  tokenizerSize: number
  hiddenSize: number
  intermediateSize: number
  numLayers: number
  numHeads: number
  headDim: number
  rotaryDim: number
  ropeTheta: number
  layerNormEps: number
  contextLength: number
  /** The file's context length when the engine capped `contextLength` (wasm), else absent. */
  trainedContextLength?: number
  eosTokenId?: number | null
  /** Native engines: the device the model runs on (`'cpu'`, `'cuda:0 (…)'`). */
  device?: string
  /** What the KV cache stores (engines before the option: absent, f32). */
  kvCache?: 'f32' | 'f16'
  /** wasm: the load's timings of the kernel settings that depend on the CPU (ms with each on and off) and what it kept. */
  calibration?: { knob: 'touchAhead' | 'dot16'; on: boolean; msOn: number; msOff: number }[]
}

export interface EngineGgufVocab {
  model: string
  pre?: string | null
  tokens: string[]
  tokenTypes: number[]
  merges: string[]
  bosTokenId?: number | null
  eosTokenId?: number | null
}

export interface EngineGenerateOptions {
  maxNewTokens: number
  doSample: boolean
  temperature: number
  topK: number
  topP: number
  minP: number
  repetitionPenalty: number
  presencePenalty: number
  frequencyPenalty: number
  logitBiasIds: number[]
  logitBiasValues: number[]
  seed: number
  stopOnEos: boolean
  /** Prompt-lookup speculative decoding; absent = off. */
  speculative?: { ngram: number; maxDraft: number }
}

export interface EngineSpeculationStats {
  passes: number
  drafted: number
  accepted: number
}

export interface EngineGenerateResult {
  tokens: number[]
  finishReason: string // "eos" | "length" | "context" | "abort"
  promptTokens: number
  promptTokensEvaluated: number
  promptMs: number
  generateMs: number
  /** Absent from engines that predate speculative decoding. */
  speculation?: EngineSpeculationStats
}

export interface EngineCancelToken {
  cancel(): void
  readonly cancelled: boolean
}

export interface EngineSession {
  generate(
    tokens: number[],
    options: EngineGenerateOptions,
    onToken: (err: Error | null, token: number) => void,
    cancel?: EngineCancelToken | null,
  ): Promise<EngineGenerateResult>
  reset(): void
  dispose(): void
}

export interface EngineModel {
  readonly info: EngineModelInfo
  ggufVocab(): EngineGgufVocab | null
  createSession(): EngineSession
  logprobs(tokens: number[], cancel?: EngineCancelToken | null): Promise<Float32Array>
  dispose(): void
  readonly disposed: boolean
}

/** Where the weights come from. `name` labels errors and `model.info.source`. */
export type EngineSource =
  | { kind: 'path'; path: string; name: string }
  | { kind: 'url'; url: string; name: string }
  | { kind: 'blob'; blob: Blob; name: string }
  | { kind: 'bytes'; bytes: Uint8Array; name: string }

export interface EngineLoadOptions {
  /** Requested compute threads (null: the engine's default). */
  threads?: number | null
  signal?: AbortSignal
  onProgress?: (p: LoadProgress) => void
  /** Use the Cache API for URL sources where it exists (wasm engine). Default true. */
  cache?: boolean
  /** The `contextLength` load option: the wasm engine caps its context there (and plans memory for it). */
  contextLength?: number | null
  /** The `kvCache` load option (null: the engine's default, f32). */
  kvCache?: 'f32' | 'f16' | null
  /** Why the backend asked for was not used (e.g. CUDA under `'auto'`): starts `runtime.reason`. */
  note?: string
}

/** Which engine build runs and why (`model.info.runtime`). */
export interface EngineRuntime {
  backend: 'cpu' | 'cuda' | 'wasm'
  build: 'native' | 'native-cuda' | 'wasm-simd' | 'wasm-simd-threads'
  /** Native builds: the device, `'cpu'` or e.g. `'cuda:0 (NVIDIA H200, compute 9.0)'`. */
  device?: string
  /**
   * wasm only: which wasm build runs: `'st'` (SIMD128), `'mt'` (SIMD128 + threads) or `'relaxed'`
   * (mt plus relaxed SIMD, picked over mt where the JS engine validates relaxed SIMD and passes a self-test).
   */
  flavour?: 'st' | 'mt' | 'relaxed'
  /** Compute threads in use. */
  threads: number
  /** Why this path runs, in words. */
  reason: string
}

export interface EngineLoaded {
  model: EngineModel
  runtime: EngineRuntime
  /** Bytes of the weights as read (null: let the caller measure, e.g. a directory on disk). */
  fileSizeBytes: number | null
  /** Whether the weights came from the Cache API. */
  fromCache: boolean
  /** sha256 of the file (lowercase hex) when the engine computed it, else null. */
  sha256: string | null
}

export interface Engine {
  /** Backend name reported in `model.info.backend`. */
  readonly backend: 'cpu' | 'cuda' | 'wasm'
  load(source: EngineSource, options: EngineLoadOptions): Promise<EngineLoaded>
  createCancelToken(): EngineCancelToken
}
