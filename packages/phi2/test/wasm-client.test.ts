// The wasm engine client (src/wasm/client.ts) against the worker core (src/wasm/worker-core.ts),
// in-process (fake message channel, scripted engine): what happens when the caller's hooks throw,
// when the engine worker dies while the thread pool starts, and when a load is aborted then.
import { describe, expect, it } from 'vitest'
import { wasmEngine } from '../src/wasm/client.js'
import { fakeGlue, gguf, inProcessEnv } from './in-process-wasm.js'

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
