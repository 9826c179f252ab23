/**
 * @x/phi2 — Microsoft Phi-2 in Node.js over a Rust engine.
 *
 * ```ts
 * import { loadModel } from '@x/phi2'
 * const model = await loadModel('phi-2.Q4_K_M.gguf')
 * const { text } = await model.generate('What is a prime number?', { format: 'qa', maxNewTokens: 64 })
 * ```
 */
export { loadModel, defaultModelPath, hasDefaultModel, Phi2Model, type ModelInfo } from './model.js'
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
  bundledTokenizer,
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
  Phi2Error,
  Phi2ModelLoadError,
  Phi2OptionsError,
  type Phi2ErrorCode,
} from './errors.js'
