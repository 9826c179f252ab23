// An in-process wasm engine for client tests: the worker core (src/wasm/worker-core.ts) runs in
// this thread behind a fake message channel, driving a scripted engine instead of the wasm glue.
import type { FromWorker, ToWorker } from '../src/wasm/protocol.js'
import type { WasmEnvironment, WorkerEvents } from '../src/wasm/client.js'
import { type Glue, runWorker } from '../src/wasm/worker-core.js'

export const INFO = {
  architecture: 'phi2', format: 'gguf', dtype: 'q8_0', vocabSize: 100, tokenizerSize: 100, hiddenSize: 8, intermediateSize: 32,
  numLayers: 1, numHeads: 1, headDim: 8, rotaryDim: 4, ropeTheta: 10000, layerNormEps: 1e-5, contextLength: 64, eosTokenId: null,
}

/**
 * A scripted engine: sessions yield tokens 10, 11, ... (`tokens` of them), and `step()` traps
 * (WebAssembly.RuntimeError, as a Rust panic with panic=abort does) at step `trapAfter`.
 */
export function fakeGlue({ tokens = 5, trapAfter = Infinity }: { tokens?: number; trapAfter?: number } = {}): Glue {
  class Session {
    n = 0
    begin() {
      this.n = 0
    }
    step() {
      if (this.n === trapAfter) throw new WebAssembly.RuntimeError('unreachable')
      return this.n < tokens ? 10 + this.n++ : undefined
    }
    end() {
      return { tokens: [], finishReason: 'length', promptTokens: 1, promptTokensEvaluated: 1, promptMs: 0, generateMs: 0 }
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
export function inProcessEnv(glue: Glue, opts: { shared?: boolean; onThreadSpawn?: (engine: WorkerEvents) => void } = {}) {
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

/** The smallest bytes the worker accepts as a GGUF (the fake loader ignores them). */
export function gguf(size = 64): Uint8Array {
  const b = new Uint8Array(size)
  b.set([0x47, 0x47, 0x55, 0x46, 3, 0, 0, 0, 0])
  return b
}
