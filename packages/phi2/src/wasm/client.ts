/**
 * The wasm engine on the calling thread: implements the {@link Engine} interface by messages to the
 * engine worker (see `worker-core.ts`). Platform-neutral: the entry gives it a
 * {@link WasmEnvironment} (how to spawn the worker script, whether SharedArrayBuffer is usable,
 * the default thread count).
 *
 * One engine worker per loaded model. With pkg-mt the thread-pool workers are spawned HERE (the
 * client), from the same script, each receiving `{ module, memory }` forwarded from the engine
 * worker; they block in `Atomics.wait` inside their own worker, never on this thread.
 *
 * Failure model: a worker error, a wasm trap or an unexpected exit rejects every pending call with
 * {@link Phi2EngineCrashedError} (`E_ENGINE_CRASHED`) and terminates the workers; later calls reject
 * with it too. `dispose()` terminates the workers.
 */
import type {
  Engine,
  EngineCancelToken,
  EngineGenerateOptions,
  EngineGenerateResult,
  EngineGgufVocab,
  EngineLoadOptions,
  EngineLoaded,
  EngineModel,
  EngineModelInfo,
  EngineRuntime,
  EngineSession,
  EngineSource,
} from '../engine.js'
import { Phi2DisposedError, Phi2EngineCrashedError, Phi2Error, abortErrorFrom, fromNativeError } from '../errors.js'
import { type Flavour, type FromWorker, type InitReply, type LoadReply, type Request, type ToWorker, fromWire } from './protocol.js'

export interface WorkerHandle {
  post(msg: ToWorker, transfer?: Transferable[]): void
  terminate(): void
  /** Node: keep the process alive while calls are pending (and only then). */
  ref?(): void
  unref?(): void
}

export interface WorkerEvents {
  message(msg: FromWorker): void
  error(err: unknown): void
  exit(code: number): void
}

export interface WasmEnvironment {
  platform: 'node' | 'browser'
  /** Starts the worker script (`wasm-worker.js` / `wasm-worker.node.js`). */
  spawn(on: WorkerEvents): WorkerHandle
  sharedMemory(): { usable: boolean; reason: string }
  defaultThreads(): number
}

/** The most threads the wasm engine uses by default. */
export const WASM_DEFAULT_MAX_THREADS = 8
/** The most pool threads the threaded build takes (threadPoolBuild's range). */
export const WASM_MAX_THREADS = 64
const THREAD_START_TIMEOUT_MS = 20_000

/** Internal test hook on the engine model: make the engine worker fail like a crash. */
export const CRASH_ENGINE = Symbol.for('@x/phi2/crash-engine-worker')

interface Pending {
  resolve(v: unknown): void
  reject(e: unknown): void
  onToken?: (t: number) => void
  onProgress?: (m: Extract<FromWorker, { kind: 'progress' }>) => void
  /** Reject with the engine's coded error as-is (loads: the caller wraps it with the source's name). */
  raw?: boolean
  /** A hook (the caller's onProgress / onToken) threw: the call is stopped and rejects with this. */
  hookError?: { error: unknown }
}

function describe(err: unknown): string {
  if (err && typeof err === 'object' && 'message' in err && typeof (err as Error).message === 'string') return (err as Error).message
  return String(err)
}

/** One engine worker (+ its thread workers) and the calls in flight on it. */
class Connection {
  readonly #env: WasmEnvironment
  readonly #engine: WorkerHandle
  readonly #threads: WorkerHandle[] = []
  readonly #pending = new Map<number, Pending>()
  /** Called once when the connection fails (crash or close): waits that are not calls (thread start). */
  readonly #onFailure = new Set<(err: Phi2Error) => void>()
  #nextId = 1
  /** Set once: why every call fails from now on (crash or dispose). */
  failure: Phi2Error | null = null

  constructor(env: WasmEnvironment) {
    this.#env = env
    this.#engine = env.spawn({
      message: (m) => this.#onMessage(m),
      error: (e) => this.crash(`the engine worker failed: ${describe(e)}`, e),
      exit: (code) => this.crash(`the engine worker exited unexpectedly (code ${code})`),
    })
    this.#engine.unref?.()
  }

  #onMessage(m: FromWorker): void {
    if (m.kind === 'thread-ready' || m.kind === 'thread-failed') return
    const p = this.#pending.get(m.id)
    if (!p) return
    if (m.kind === 'token') this.#hook(m.id, p, () => p.onToken?.(m.token))
    else if (m.kind === 'progress') this.#hook(m.id, p, () => p.onProgress?.(m))
    else {
      this.#settle(m.id)
      if (p.hookError && !(!m.ok && m.fatal)) p.reject(p.hookError.error)
      else if (m.ok) p.resolve(m.value)
      else {
        const wire = fromWire(m.error)
        const err = m.fatal ? new Phi2EngineCrashedError(m.error.message, { cause: wire }) : p.raw ? wire : fromNativeError(wire)
        p.reject(err)
        if (m.fatal) this.crash(m.error.message, err)
      }
    }
  }

  /**
   * Runs a caller's hook for a message. A hook that throws must not escape this event handler (in
   * Node that is an uncaught exception, i.e. the process ends): the call is stopped in the worker
   * (load: abortLoad, generate / logprobs: cancel) and rejects with the hook's error when it replies.
   */
  #hook(id: number, p: Pending, run: () => void): void {
    if (p.hookError) return
    try {
      run()
    } catch (error) {
      p.hookError = { error }
      this.post(p.onProgress ? { kind: 'abortLoad', id } : { kind: 'cancel', id })
    }
  }

  #settle(id: number): void {
    this.#pending.delete(id)
    if (this.#pending.size === 0) this.#engine.unref?.()
  }

  call<T>(req: Request, transfer?: Transferable[], hooks?: Omit<Pending, 'resolve' | 'reject'>): { id: number; promise: Promise<T> } {
    const id = this.#nextId++
    if (this.failure) return { id, promise: Promise.reject(this.failure) }
    const promise = new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject, ...hooks })
    })
    if (this.#pending.size === 1) this.#engine.ref?.()
    try {
      this.#engine.post({ kind: 'call', id, req }, transfer)
    } catch (err) {
      const p = this.#pending.get(id)
      this.#settle(id)
      p?.reject(new Phi2Error('E_INVALID_ARGUMENT', `Could not send the request to the engine worker: ${describe(err)}`, { cause: err }))
    }
    return { id, promise }
  }

  post(msg: ToWorker): void {
    if (!this.failure) this.#engine.post(msg)
  }

  /** Spawns `n` thread workers for pkg-mt / pkg-relaxed and waits until each is about to run its pool loop. */
  async startThreads(n: number, flavour: 'mt' | 'relaxed', module: WebAssembly.Module, memory: WebAssembly.Memory): Promise<void> {
    let ready = 0
    if (this.failure) throw this.failure
    let onFailure: ((err: Phi2Error) => void) | undefined
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`thread workers did not start within ${THREAD_START_TIMEOUT_MS / 1000} s`)), THREAD_START_TIMEOUT_MS)
      const done = (err?: unknown) => {
        clearTimeout(timer)
        if (onFailure) this.#onFailure.delete(onFailure)
        if (err) reject(err)
        else resolve()
      }
      // The engine worker died, or the load was aborted / the connection closed, while the threads
      // start: stop waiting now (not after the timeout).
      onFailure = (err) => done(err)
      this.#onFailure.add(onFailure)
      for (let i = 0; i < n; i++) {
        let started = false
        const w = this.#env.spawn({
          message: (m) => {
            if (m.kind === 'thread-ready' && !started) {
              started = true
              if (++ready === n) done()
            } else if (m.kind === 'thread-failed') {
              const e = fromWire(m.error)
              if (ready < n) done(e)
              else this.crash(`a thread worker failed: ${e.message}`, e)
            }
          },
          error: (e) => {
            if (ready < n) done(e)
            else this.crash(`a thread worker failed: ${describe(e)}`, e)
          },
          exit: (code) => {
            if (ready < n) done(new Error(`a thread worker exited (code ${code})`))
            else this.crash(`a thread worker exited unexpectedly (code ${code})`)
          },
        })
        w.unref?.()
        this.#threads.push(w)
        w.post({ kind: 'thread', flavour, module, memory })
      }
    })
  }

  /** The worker died: every pending and later call rejects with E_ENGINE_CRASHED. */
  crash(reason: string, cause?: unknown): void {
    if (this.failure) return
    this.#shutdown(new Phi2EngineCrashedError(`The wasm engine stopped: ${reason}`, cause !== undefined ? { cause } : undefined))
  }

  /** Ends the workers; pending calls reject with `err`. */
  close(err: Phi2Error): void {
    if (this.failure) return
    this.#shutdown(err)
  }

  #shutdown(err: Phi2Error): void {
    this.failure = err
    const pending = [...this.#pending.values()]
    this.#pending.clear()
    const waits = [...this.#onFailure]
    this.#onFailure.clear()
    for (const w of [this.#engine, ...this.#threads]) {
      try {
        w.terminate()
      } catch {
        // already gone
      }
    }
    for (const p of pending) p.reject(err)
    for (const w of waits) w(err)
  }
}

class WasmCancel implements EngineCancelToken {
  cancelled = false
  #hooks: Array<() => void> = []
  cancel(): void {
    if (this.cancelled) return
    this.cancelled = true
    for (const h of this.#hooks.splice(0)) h()
  }
  bind(h: () => void): void {
    if (this.cancelled) h()
    else this.#hooks.push(h)
  }
}

class WasmEngineSession implements EngineSession {
  constructor(
    private readonly conn: Connection,
    private readonly sid: number,
  ) {
    conn.call({ op: 'session', sid }).promise.catch(() => {})
  }

  generate(
    tokens: number[],
    options: EngineGenerateOptions,
    onToken: (err: Error | null, token: number) => void,
    cancel?: EngineCancelToken | null,
  ): Promise<EngineGenerateResult> {
    if (cancel?.cancelled) {
      return Promise.resolve({ tokens: [], finishReason: 'abort', promptTokens: tokens.length, promptTokensEvaluated: 0, promptMs: 0, generateMs: 0 })
    }
    const { id, promise } = this.conn.call<EngineGenerateResult>(
      { op: 'generate', sid: this.sid, tokens: [...tokens], options },
      undefined,
      { onToken: (t) => onToken(null, t) },
    )
    if (cancel instanceof WasmCancel) cancel.bind(() => this.conn.post({ kind: 'cancel', id }))
    return promise
  }

  reset(): void {
    this.conn.call({ op: 'reset', sid: this.sid }).promise.catch(() => {})
  }

  dispose(): void {
    this.conn.call({ op: 'sessionDispose', sid: this.sid }).promise.catch(() => {})
  }
}

class WasmEngineModel implements EngineModel {
  readonly info: EngineModelInfo
  readonly #vocab: EngineGgufVocab | null
  readonly #conn: Connection
  #nextSid = 1
  #disposed = false

  constructor(conn: Connection, loaded: LoadReply) {
    this.#conn = conn
    this.info = loaded.info
    this.#vocab = loaded.vocab
  }

  get disposed(): boolean {
    return this.#disposed
  }

  ggufVocab(): EngineGgufVocab | null {
    return this.#vocab
  }

  createSession(): EngineSession {
    if (this.#disposed) throw new Phi2DisposedError()
    if (this.#conn.failure) throw this.#conn.failure
    return new WasmEngineSession(this.#conn, this.#nextSid++)
  }

  logprobs(tokens: number[], cancel?: EngineCancelToken | null): Promise<Float32Array> {
    const { id, promise } = this.#conn.call<Float32Array>({ op: 'logprobs', tokens: [...tokens] })
    if (cancel instanceof WasmCancel) cancel.bind(() => this.#conn.post({ kind: 'cancel', id }))
    return promise
  }

  dispose(): void {
    if (this.#disposed) return
    this.#disposed = true
    this.#conn.close(new Phi2DisposedError())
  }

  /** Test hook (internal): simulate a crash of the engine worker. */
  [CRASH_ENGINE](mode: 'throw' | 'exit'): void {
    this.#conn.post({ kind: 'crash', mode })
  }
}

/** Bytes go to the worker by transfer (no copy); a view on part of a larger buffer is copied first. */
function transferable(source: EngineSource): { source: EngineSource; transfer: Transferable[] } {
  if (source.kind !== 'bytes') return { source, transfer: [] }
  let bytes = source.bytes
  const whole = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && bytes.buffer instanceof ArrayBuffer
  if (!whole) bytes = bytes.slice()
  return { source: { ...source, bytes }, transfer: [bytes.buffer as ArrayBuffer] }
}

/** The wasm engine for an environment. */
export function wasmEngine(env: WasmEnvironment): Engine {
  async function start(
    flavour: 'st' | 'mt',
    threads: number,
    onConn: (conn: Connection) => void,
  ): Promise<{ conn: Connection; build: EngineRuntime['build']; flavour: Flavour; threads: number; note: string | null; relaxed?: string }> {
    const conn = new Connection(env)
    onConn(conn)
    try {
      const init = await conn.call<InitReply>({ op: 'init', flavour }).promise
      if (flavour === 'st' || !init.available) {
        return {
          conn,
          build: 'wasm-simd',
          flavour: 'st',
          threads: 1,
          note: flavour === 'mt' ? 'the multi-threaded build (pkg-mt) is not in this package: single-threaded SIMD build' : null,
        }
      }
      const mtFlavour = init.flavour === 'relaxed' ? 'relaxed' : 'mt'
      await conn.startThreads(threads, mtFlavour, init.module!, init.memory!)
      // The engine worker blocks in threadPoolBuild until every pool thread runs: bounded, so that a
      // pool that never forms ends in the single-threaded fallback instead of a hang.
      let timer: ReturnType<typeof setTimeout> | undefined
      const size = await Promise.race([
        conn.call<number>({ op: 'pool', threads }).promise,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`the thread pool did not start within ${THREAD_START_TIMEOUT_MS / 1000} s`)), THREAD_START_TIMEOUT_MS)
        }),
      ]).finally(() => clearTimeout(timer))
      return { conn, build: 'wasm-simd-threads', flavour: mtFlavour, threads: size, note: null, relaxed: init.relaxed }
    } catch (err) {
      conn.close(err instanceof Phi2Error ? err : new Phi2EngineCrashedError(describe(err), { cause: err }))
      throw err
    }
  }

  return {
    backend: 'wasm',
    createCancelToken: () => new WasmCancel(),
    async load(source: EngineSource, options: EngineLoadOptions): Promise<EngineLoaded> {
      const signal = options.signal
      const requested = options.threads ?? null
      const threads = Math.min(WASM_MAX_THREADS, requested ?? Math.max(1, Math.min(WASM_DEFAULT_MAX_THREADS, env.defaultThreads())))
      const sm = env.sharedMemory()
      let reason: string
      let flavour: 'st' | 'mt' = 'st'
      if (threads <= 1) {
        reason = requested !== null ? 'threads: 1 requested: single-threaded SIMD build' : 'one CPU core available: single-threaded SIMD build'
      } else if (!sm.usable) {
        reason = `${sm.reason}: single-threaded SIMD build`
      } else {
        flavour = 'mt'
        reason = sm.reason
      }
      let aborted = false
      /** The connection being started (init, thread pool): an abort ends its workers at once. */
      let starting: Connection | null = null
      let onAbort: () => void = () => {}
      const abortedP = new Promise<never>((_, reject) => {
        onAbort = () => {
          aborted = true
          reject(abortErrorFrom(signal))
          starting?.close(abortErrorFrom(signal))
        }
      })
      abortedP.catch(() => {})
      signal?.addEventListener('abort', onAbort, { once: true })
      let conn: Connection | null = null
      try {
        const onConn = (c: Connection) => {
          starting = c
        }
        const started = start(flavour, threads, onConn)
          .catch(async (err: unknown) => {
            if (flavour !== 'mt' || aborted) throw err
            // The threaded start failed (e.g. shared memory refused): run single-threaded, say why.
            const st = await start('st', 1, onConn)
            return { ...st, note: `the threaded build could not start (${describe(err)}): single-threaded SIMD build` }
          })
          .finally(() => {
            starting = null
          })
        started.then(
          (s) => {
            if (aborted) s.conn.close(abortErrorFrom(signal))
          },
          () => {},
        )
        const s = await Promise.race([started, abortedP])
        conn = s.conn
        if (s.note) reason = s.note
        else if (s.build === 'wasm-simd-threads') {
          reason = `${reason}, ${s.threads} threads${requested !== null && requested > WASM_MAX_THREADS ? ` (${requested} requested, at most ${WASM_MAX_THREADS})` : ''}`
          if (s.relaxed) reason = s.flavour === 'relaxed' ? `${reason}, relaxed SIMD` : `${reason}, SIMD128 build (${s.relaxed})`
        }
        const { source: src, transfer } = transferable(source)
        const onProgress = options.onProgress
        const { id, promise } = conn.call<LoadReply>({ op: 'load', source: src, cache: options.cache ?? true, contextLength: options.contextLength ?? null, kvCache: options.kvCache ?? null }, transfer, {
          raw: true,
          onProgress: (m) => {
            if (m.phase === 'download') {
              onProgress?.({
                phase: 'download',
                progress: m.totalBytes > 0 ? m.loadedBytes / m.totalBytes : 1,
                loadedBytes: m.loadedBytes,
                totalBytes: m.totalBytes,
                fromCache: m.fromCache,
              })
            } else onProgress?.({ phase: 'cache-invalid', progress: 0, loadedBytes: 0, totalBytes: m.totalBytes, fromCache: true })
          },
        })
        const c = conn
        const abortLoad = () => {
          c.post({ kind: 'abortLoad', id })
          // Let the worker abort its fetch and clean the cache entry, then end it.
          const t = setTimeout(() => c.close(abortErrorFrom(signal)), 1000)
          ;(t as { unref?: () => void }).unref?.()
          promise.then(
            () => c.close(abortErrorFrom(signal)),
            () => c.close(abortErrorFrom(signal)),
          )
        }
        if (aborted) abortLoad()
        else signal?.addEventListener('abort', abortLoad, { once: true })
        let loaded: LoadReply
        try {
          loaded = await Promise.race([promise, abortedP])
        } finally {
          signal?.removeEventListener('abort', abortLoad)
        }
        for (const c of loaded.info.calibration ?? []) reason = `${reason}, ${calibrationNote(c)}`
        return {
          model: new WasmEngineModel(conn, loaded),
          runtime: { backend: 'wasm', build: s.build, flavour: s.flavour, threads: s.threads, reason },
          fileSizeBytes: loaded.fileSizeBytes,
          fromCache: loaded.fromCache,
          sha256: loaded.sha256,
        }
      } catch (err) {
        if (conn && !aborted) conn.close(err instanceof Phi2Error ? err : new Phi2DisposedError())
        throw err
      } finally {
        signal?.removeEventListener('abort', onAbort)
      }
    },
  }
}

/** `runtime.reason`'s note on one of the load's timings of a kernel setting (EngineModelInfo.calibration). */
export function calibrationNote(c: { knob: string; on: boolean; msOn: number; msOff: number }): string {
  const what = c.knob === 'touchAhead' ? 'weights touched ahead' : c.knob === 'dot16' ? 'i16 dots' : c.knob
  return `${what} ${c.on ? 'on' : 'off'} (timed at load, fastest pass: ${c.msOn.toFixed(2)} ms on, ${c.msOff.toFixed(2)} ms off)`
}
