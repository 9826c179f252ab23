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
export { CONVERT_TYPES, convertModel, type ConvertOptions, type ConvertProgress, type ConvertResult, type ConvertType } from './node/convert.js'
export * from './api.js'
