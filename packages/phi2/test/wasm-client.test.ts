// The wasm engine client (src/wasm/client.ts) against the worker core (src/wasm/worker-core.ts),
// in-process (fake message channel, scripted engine): what happens when the caller's hooks throw,
// when the engine worker dies while the thread pool starts, and when a load is aborted then.
import { describe, expect, it } from 'vitest'
import type { FromWorker, ToWorker } from '../src/wasm/protocol.js'
import { type WasmEnvironment, type WorkerEvents, wasmEngine } from '../src/wasm/client.js'
import { type Glue, runWorker } from '../src/wasm/worker-core.js'

const INFO = {
  architecture: 'phi2', format: 'gguf', dtype: 'q8_0', vocabSize: 100, tokenizerSize: 100, hiddenSize: 8, intermediateSize: 32,
  numLayers: 1, numHeads: 1, headDim: 8, rotaryDim: 4, ropeTheta: 10000, layerNormEps: 1e-5, contextLength: 64, eosTokenId: null,
}

function fakeGlue(): Glue {
  class Session {
    n = 0
    begin() {
      this.n = 0
    }
    step() {
      return this.n < 5 ? 10 + this.n++ : undefined
    }
    end() {
      return { tokens: [], finishReason: 'length', promptTokens: 1, promptTokensEvaluated: 1, promptMs: 0, generateMs: 0 }
    }
    generate(): never {
      throw new Error('not used')
    }
    reset() {}
    dispose() {}
  }
  const model = { info: INFO, ggufVocab: () => null, createSession: () => new Session(), logprobs: () => new Float32Array(100), dispose() {} }
  class Loader {
    received = 0
    push(c: Uint8Array) {
      this.received += c.byteLength
    }
    sha256() {
      return null
    }
    finish() {
      return model
    }
  }
  return {
    initSync: () => ({ memory: new WebAssembly.Memory({ initial: 1 }) }),
    WasmModel: { load: () => model },
    WasmModelLoader: Loader as unknown as Glue['WasmModelLoader'],
    threadPoolBuild: () => {},
    threadPoolSize: () => 2,
    threadWorkerRun: () => {},
  }
}

/**
 * "Workers" running the worker core in this thread. With `onThreadSpawn`, pool threads never answer
 * (e.g. still fetching their script) and it runs, with the engine worker's events, when one starts.
 */
function inProcessEnv(glue: Glue, opts: { shared?: boolean; onThreadSpawn?: (engine: WorkerEvents) => void } = {}) {
  const terminated: number[] = []
  let spawned = 0
  let engineEvents: WorkerEvents | null = null
  const env: WasmEnvironment = {
    platform: 'node',
    spawn(on) {
      const me = ++spawned
      let dead = false
      let toWorker: ((m: ToWorker) => void) | null = null
      runWorker({
        post: (m: FromWorker) => setImmediate(() => !dead && on.message(m)),
        listen: (cb) => {
          toWorker = cb
        },
        glue: { st: glue, mt: glue },
        compile: async () => ({}) as WebAssembly.Module,
        yieldNow: () => new Promise((r) => setImmediate(r)),
        exitNow: () => {},
      })
      return {
        post: (m) => {
          if (m.kind === 'call' && m.req.op === 'init') engineEvents = on
          if (m.kind === 'thread' && opts.onThreadSpawn) {
            const engine = engineEvents!
            setImmediate(() => opts.onThreadSpawn!(engine))
            return
          }
          setImmediate(() => !dead && toWorker!(m))
        },
        terminate: () => {
          dead = true
          terminated.push(me)
        },
      }
    },
    sharedMemory: () => (opts.shared ? { usable: true, reason: 'test: shared memory' } : { usable: false, reason: 'test' }),
    defaultThreads: () => 1,
  }
  return { env, terminated, spawned: () => spawned }
}

function gguf(size = 64): Uint8Array {
  const b = new Uint8Array(size)
  b.set([0x47, 0x47, 0x55, 0x46, 3, 0, 0, 0, 0])
  return b
}

describe('wasm engine client: hooks, thread start, abort', () => {
  it('an onProgress that throws rejects the load with its error and ends the worker (no uncaught exception)', async () => {
    const { env, terminated } = inProcessEnv(fakeGlue())
    const boom = new Error('progress bar exploded')
    const uncaught: unknown[] = []
    const onUncaught = (e: unknown) => uncaught.push(e)
    process.prependListener('uncaughtException', onUncaught)
    try {
      const err = await wasmEngine(env)
        .load(
          { kind: 'bytes', bytes: gguf(), name: 'fake.gguf' },
          {
            threads: 1,
            onProgress: (p) => {
              if (p.phase === 'download') throw boom
            },
          },
        )
        .then(
          () => null,
          (e: unknown) => e,
        )
      await new Promise((r) => setTimeout(r, 20))
      expect(err).toBe(boom)
      expect(terminated).toEqual([1])
    } finally {
      process.removeListener('uncaughtException', onUncaught)
    }
    expect(uncaught).toEqual([])
  })

  it('an onToken that throws rejects that generation with its error; the engine stays usable', async () => {
    const { env } = inProcessEnv(fakeGlue())
    const engine = wasmEngine(env)
    const { model } = await engine.load({ kind: 'bytes', bytes: gguf(), name: 'fake.gguf' }, { threads: 1 })
    const boom = new Error('token consumer failed')
    const uncaught: unknown[] = []
    const onUncaught = (e: unknown) => uncaught.push(e)
    process.prependListener('uncaughtException', onUncaught)
    try {
      const s = model.createSession()
      const opts = { maxNewTokens: 5 } as never
      const err = await s.generate([1], opts, () => {
        throw boom
      }).then(
        () => null,
        (e: unknown) => e,
      )
      expect(err).toBe(boom)
      const tokens: number[] = []
      const r = await model.createSession().generate([1], opts, (_e, t) => tokens.push(t))
      expect(r.finishReason).toBe('length')
      expect(tokens).toEqual([10, 11, 12, 13, 14])
    } finally {
      process.removeListener('uncaughtException', onUncaught)
      model.dispose()
    }
    expect(uncaught).toEqual([])
  })

  it('the engine worker dying while the pool threads start falls back at once (no wait for the start timeout)', async () => {
    const { env } = inProcessEnv(fakeGlue(), { shared: true, onThreadSpawn: (engine) => engine.exit(1) })
    const t0 = Date.now()
    const loaded = await wasmEngine(env).load({ kind: 'bytes', bytes: gguf(), name: 'fake.gguf' }, { threads: 2 })
    expect(Date.now() - t0).toBeLessThan(3000)
    expect(loaded.runtime.build).toBe('wasm-simd')
    expect(loaded.runtime.reason).toMatch(/threaded build could not start.*exited/)
    loaded.model.dispose()
  })

  it('an abort while the pool threads start ends every worker at once', async () => {
    const ac = new AbortController()
    const { env, terminated, spawned } = inProcessEnv(fakeGlue(), { shared: true, onThreadSpawn: () => ac.abort() })
    const err = await wasmEngine(env)
      .load({ kind: 'bytes', bytes: gguf(), name: 'fake.gguf' }, { threads: 2, signal: ac.signal })
      .catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'E_ABORTED' })
    await new Promise((r) => setTimeout(r, 50))
    expect(spawned()).toBe(3) // the engine worker and 2 pool threads
    expect(terminated.sort()).toEqual([1, 2, 3])
  })
})
