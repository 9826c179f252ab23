/**
 * The platform-neutral public API, exported by both entries: the Node entry (`index.ts`) adds
 * `loadModel` over paths and the native addon, `defaultModelPath`, `hasDefaultModel` and
 * `bundledTokenizer`; the browser entry (`browser.ts`) adds its `loadModel` and `defaultModelUrl`.
 */
export { Phi2Model, type ModelFormat, type ModelInfo, type ModelRuntime } from './model.js'
export type { ModelSource } from './sources.js'
export { Phi2Chat } from './chat.js'
export { Phi2RemoteChat, Phi2RemoteError, Phi2RemoteModel, type RemoteModelInfo, type RemoteSource } from './remote.js'
export {
  PerplexityOptionsSchema,
  perplexityWindows,
  type PerplexityOptions,
  type PerplexityProgress,
  type PerplexityResult,
  type PerplexityWindow,
} from './perplexity.js'
export type {
  FinishReason,
  GenerateChunk,
  GenerateResult,
  GenerateResultBase,
  GenerateResultEnded,
  GenerateResultStopped,
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
  type LoadProgressCacheInvalid,
  type LoadProgressDownload,
  type LoadProgressStep,
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
