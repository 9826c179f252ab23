/**
 * The contract between the SDK and an inference engine. It mirrors the native addon's API
 * (bindings/node/native.d.ts) so that `native.ts` is the only file that knows about the addon;
 * every other module works against these interfaces (a WASM engine can implement them later).
 * Internal: not exported from the package.
 */

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
  eosTokenId?: number | null
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
}

export interface EngineGenerateResult {
  tokens: number[]
  finishReason: string // "eos" | "length" | "context" | "abort"
  promptTokens: number
  promptTokensEvaluated: number
  promptMs: number
  generateMs: number
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

export interface Engine {
  /** Backend name reported in `model.info.backend`. */
  readonly backend: 'cpu'
  load(path: string, threads?: number | null): Promise<EngineModel>
  createCancelToken(): EngineCancelToken
}
