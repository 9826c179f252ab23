/**
 * @x/phi2 — Microsoft Phi-2 in Node.js over a Rust engine (native addon, or `backend: 'wasm'`).
 * The browser entry (`browser.ts`, the package's `"browser"` export condition) has the same API
 * minus the Node-only helpers (paths, bundled tokenizer), plus `defaultModelUrl()`.
 *
 * ```ts
 * import { loadModel } from '@x/phi2'
 * const model = await loadModel('phi-2.Q4_K_M.gguf')
 * const { text } = await model.generate('What is a prime number?', { format: 'qa', maxNewTokens: 64 })
 * ```
 */
export { loadModel, defaultModelPath, hasDefaultModel } from './node/load.js'
export { bundledTokenizer } from './node/files.js'
export { Phi2Model, type ModelInfo, type ModelRuntime } from './model.js'
export type { ModelSource } from './sources.js'
export { Phi2Chat } from './chat.js'
export type {
  FinishReason,
  GenerateChunk,
  GenerateResult,
  GenerationStream,
  Timings,
  Usage,
} from './generation.js'
export {
  ChatOptionsSchema,
  ChatSendOptionsSchema,
  DEFAULT_SAMPLING,
  GenerateOptionsSchema,
  LoadOptionsSchema,
  LogprobsOptionsSchema,
  SamplingOptionsSchema,
  type Backend,
  type ChatOptions,
  type ChatSendOptions,
  type GenerateOptions,
  type LoadOptions,
  type LoadProgress,
  type LogprobsOptions,
  type PromptFormat,
  type SamplingOptions,
} from './options.js'
export {
  CODE_STOP,
  DEFAULT_BOT_NAME,
  DEFAULT_USER_NAME,
  QA_STOP,
  chatStop,
  formatChat,
  formatCode,
  formatPrompt,
  formatQA,
  type ChatFormatOptions,
  type ChatTurn,
  type FormattedPrompt,
} from './prompts.js'
export {
  Phi2Tokenizer,
  PHI2_EOS_TOKEN_ID,
  Utf8StreamDecoder,
  phi2TokenizerJsonFromGpt2,
  tokenizerJsonFromGguf,
  type TokenizerJson,
  type TokenizerSource,
} from './tokenizer.js'
export type { EngineGgufVocab as GgufVocab } from './engine.js'
export {
  Phi2AbortError,
  Phi2BackendUnavailableError,
  Phi2DisposedError,
  Phi2EngineCrashedError,
  Phi2Error,
  Phi2ModelLoadError,
  Phi2OptionsError,
  type Phi2ErrorCode,
} from './errors.js'
