// A wasm trap in the engine worker (RuntimeError, e.g. `unreachable` from a Rust panic with
// panic=abort) makes the engine unusable: the client (src/wasm/client.ts) must reject the call that
// trapped and every other pending call with E_ENGINE_CRASHED, end the workers, and refuse later
// calls. Client and worker core run in-process here, joined by a fake message channel, with a
// scripted engine whose step() traps on demand.
import { describe, expect, it } from 'vitest'
import type { EngineGenerateOptions } from '../src/engine.js'
import { Phi2EngineCrashedError } from '../src/errors.js'
import { wasmEngine } from '../src/wasm/client.js'
import type { Glue } from '../src/wasm/worker-core.js'
import { fakeGlue, gguf, inProcessEnv } from './in-process-wasm.js'

const OPTS: EngineGenerateOptions = {
  maxNewTokens: 20, doSample: false, temperature: 1, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1,
  presencePenalty: 0, frequencyPenalty: 0, logitBiasIds: [], logitBiasValues: [], seed: 0, stopOnEos: true,
}

describe('wasm engine client: a trap in the worker', () => {
  it('rejects the trapping call and every pending call with E_ENGINE_CRASHED, ends the worker, refuses later calls', async () => {
    const { env, terminated } = inProcessEnv(fakeGlue({ tokens: Infinity, trapAfter: 3 }))
    const engine = wasmEngine(env)
    const loaded = await engine.load({ kind: 'bytes', bytes: gguf(), name: 'fake.gguf' }, { threads: 1 })
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
    const glue = fakeGlue({ tokens: Infinity })
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
