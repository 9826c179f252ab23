/**
 * Messages between the wasm engine client (calling thread) and the worker script
 * (`dist/wasm-worker.js` in browsers, `dist/wasm-worker.node.js` in Node). One script, two roles:
 * the first message says which (`init` → engine, `thread` → a thread-pool worker of pkg-mt).
 */
import type { EngineGenerateOptions, EngineGenerateResult, EngineGgufVocab, EngineModelInfo, EngineSource } from '../engine.js'

/** st: pkg; mt: pkg-mt (threads); relaxed: pkg-relaxed (mt + relaxed SIMD, see relaxed-simd.ts). */
export type Flavour = 'st' | 'mt' | 'relaxed'

/** Errors cross the thread boundary as plain data. */
export interface WireError {
  code: string
  message: string
  name: string
}

export type Request =
  | { op: 'init'; flavour: Flavour }
  | { op: 'pool'; threads: number }
  | { op: 'load'; source: EngineSource; cache: boolean; contextLength?: number | null; kvCache?: 'f32' | 'f16' | null }
  | { op: 'session'; sid: number }
  | { op: 'generate'; sid: number; tokens: number[]; options: EngineGenerateOptions }
  | { op: 'logprobs'; tokens: number[] }
  | { op: 'reset'; sid: number }
  | { op: 'sessionDispose'; sid: number }
  | { op: 'dispose' }

export interface InitReply {
  flavour: Flavour
  /** False when the requested flavour is not in this package (pkg-mt missing): the engine runs st. */
  available: boolean
  /** mt requested: why the relaxed build runs, or why not (relaxed SIMD unsupported, self-test failed, not built). */
  relaxed?: string
  /** mt / relaxed: what each thread worker needs. */
  module?: WebAssembly.Module
  memory?: WebAssembly.Memory
}

export interface LoadReply {
  info: EngineModelInfo
  vocab: EngineGgufVocab | null
  fileSizeBytes: number
  fromCache: boolean
  sha256: string | null
}

export type ToWorker =
  | { kind: 'call'; id: number; req: Request }
  /** Stops a running / queued generation or logprobs call (its reply comes as usual, finishReason 'abort'). */
  | { kind: 'cancel'; id: number }
  /** Aborts a load in progress (fetch abort; the load replies E_ABORTED). */
  | { kind: 'abortLoad'; id: number }
  /** Test hook: make the worker fail like a crash ('throw': uncaught error; 'exit': the thread ends). */
  | { kind: 'crash'; mode: 'throw' | 'exit' }
  /** Thread-pool role (pkg-mt). */
  | { kind: 'thread'; flavour: 'mt' | 'relaxed'; module: WebAssembly.Module; memory: WebAssembly.Memory }

export type FromWorker =
  | { kind: 'reply'; id: number; ok: true; value: unknown }
  | { kind: 'reply'; id: number; ok: false; error: WireError; fatal?: boolean }
  | { kind: 'token'; id: number; token: number }
  | { kind: 'progress'; id: number; phase: 'download' | 'cache-invalid'; loadedBytes: number; totalBytes: number; fromCache: boolean }
  /** A thread worker is about to enter `threadWorkerRun()`. */
  | { kind: 'thread-ready' }
  | { kind: 'thread-failed'; error: WireError }

export type GenerateReply = EngineGenerateResult

export function toWire(err: unknown): WireError {
  if (err && typeof err === 'object') {
    const e = err as { code?: unknown; message?: unknown; name?: unknown }
    return {
      code: typeof e.code === 'string' ? e.code : 'E_INTERNAL',
      message: typeof e.message === 'string' ? e.message : String(err),
      name: typeof e.name === 'string' ? e.name : 'Error',
    }
  }
  return { code: 'E_INTERNAL', message: String(err), name: 'Error' }
}

export function fromWire(w: WireError): Error & { code: string } {
  const e = new Error(w.message) as Error & { code: string }
  e.code = w.code
  e.name = w.name === 'Error' ? 'Error' : w.name
  return e
}
