// A wasm trap in the engine worker (RuntimeError, e.g. `unreachable` from a Rust panic with
// panic=abort) makes the engine unusable: the client (src/wasm/client.ts) must reject the call that
// trapped and every other pending call with E_ENGINE_CRASHED, end the workers, and refuse later
// calls. Client and worker core run in-process here, joined by a fake message channel, with a
// scripted engine whose step() traps on demand.
import { describe, expect, it } from 'vitest'
import type { EngineGenerateOptions } from '../src/engine.js'
import { Phi2EngineCrashedError } from '../src/errors.js'
import type { FromWorker, ToWorker } from '../src/wasm/protocol.js'
import { type WasmEnvironment, wasmEngine } from '../src/wasm/client.js'
import { type Glue, runWorker } from '../src/wasm/worker-core.js'

const INFO = {
  architecture: 'phi2', format: 'gguf', dtype: 'q8_0', vocabSize: 100, tokenizerSize: 100, hiddenSize: 8, intermediateSize: 32,
  numLayers: 1, numHeads: 1, headDim: 8, rotaryDim: 4, ropeTheta: 10000, layerNormEps: 1e-5, contextLength: 64, eosTokenId: null,
}

function fakeGlue(trapAfter: number): Glue {
  class Session {
    n = 0
    begin() {
      this.n = 0
    }
    step() {
      if (this.n === trapAfter) throw new WebAssembly.RuntimeError('unreachable')
      return 10 + this.n++
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
  const model = {
    info: INFO,
    ggufVocab: () => null,
    createSession: () => new Session(),
    logprobs: () => new Float32Array(100),
    dispose() {},
  }
  class Loader {
    received = 0
    constructor(_n: string, private readonly total: number) {}
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
  }
}

/** A WasmEnvironment whose "workers" run the worker core in this thread. */
function inProcessEnv(glue: Glue) {
  const terminated: number[] = []
  let spawned = 0
  const env: WasmEnvironment = {
    platform: 'node',
    spawn(on) {
      const me = ++spawned
      let toWorker: ((m: ToWorker) => void) | null = null
      let dead = false
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
        post: (m) => setImmediate(() => !dead && toWorker!(m)),
        terminate: () => {
          dead = true
          terminated.push(me)
        },
      }
    },
    sharedMemory: () => ({ usable: false, reason: 'test' }),
    defaultThreads: () => 1,
  }
  return { env, terminated }
}

const OPTS: EngineGenerateOptions = {
  maxNewTokens: 20, doSample: false, temperature: 1, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1,
  presencePenalty: 0, frequencyPenalty: 0, logitBiasIds: [], logitBiasValues: [], seed: 0, stopOnEos: true,
}

describe('wasm engine client: a trap in the worker', () => {
  it('rejects the trapping call and every pending call with E_ENGINE_CRASHED, ends the worker, refuses later calls', async () => {
    const { env, terminated } = inProcessEnv(fakeGlue(3))
    const engine = wasmEngine(env)
    const gguf = new Uint8Array(64)
    gguf.set([0x47, 0x47, 0x55, 0x46, 3, 0, 0, 0, 0])
    const loaded = await engine.load({ kind: 'bytes', bytes: gguf, name: 'fake.gguf' }, { threads: 1 })
    expect(loaded.runtime).toMatchObject({ backend: 'wasm', build: 'wasm-simd', threads: 1 })
    const model = loaded.model
    const tokens: number[] = []
    const session = model.createSession()
    const gen = session.generate([1], OPTS, (_e, t) => tokens.push(t), engine.createCancelToken())
    const queued = model.logprobs([1, 2]) // waits behind the generation in the worker's queue
    const err = await gen.catch((e: unknown) => e)
    expect(err).toBeInstanceOf(Phi2EngineCrashedError)
    expect(err).toMatchObject({ code: 'E_ENGINE_CRASHED' })
    expect((err as Error).message).toMatch(/trapped.*unreachable/)
    expect(tokens).toEqual([10, 11, 12]) // streamed live before the trap
    await expect(queued).rejects.toMatchObject({ code: 'E_ENGINE_CRASHED' })
    expect(terminated).toEqual([1])
    expect(() => model.createSession()).toThrow(Phi2EngineCrashedError)
    await expect(model.logprobs([1])).rejects.toMatchObject({ code: 'E_ENGINE_CRASHED' })
    model.dispose()
  })

  it('a load that fails with a coded engine error ends its worker', async () => {
    const glue = fakeGlue(99)
    glue.WasmModelLoader = class {
      constructor() {
        throw Object.assign(new Error('model too large: ...'), { code: 'E_MODEL_TOO_LARGE' })
      }
    } as unknown as Glue['WasmModelLoader']
    const { env, terminated } = inProcessEnv(glue)
    const err = await wasmEngine(env)
      .load({ kind: 'bytes', bytes: new Uint8Array(16), name: 'x.gguf' }, { threads: 1 })
      .catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'E_MODEL_TOO_LARGE' })
    expect(terminated).toEqual([1])
  })
})
