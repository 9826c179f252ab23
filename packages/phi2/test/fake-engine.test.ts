// The SDK's generation logic against a scripted in-memory engine (src/engine.ts contract): chat
// history bookkeeping around stop strings, cancellation timing, native errors. Deterministic cases
// that the random-weight fixtures cannot produce on demand.
import { describe, expect, it } from 'vitest'
import type { Engine, EngineCancelToken, EngineGenerateOptions, EngineModel, EngineSession } from '../src/engine.js'
import { Phi2Model, type ModelInfo, loadWithEngine } from '../src/model.js'
import { bundledTokenizer } from '../src/node/files.js'

const tok = bundledTokenizer()

class FakeCancel implements EngineCancelToken {
  cancelled = false
  cancel() {
    this.cancelled = true
  }
}

/** A session that "generates" a scripted text, with the real engine's cache-prefix rule. */
class FakeSession implements EngineSession {
  history: number[] = []
  calls: number[][] = []
  constructor(private readonly script: () => number[], private readonly failAt?: number) {}
  async generate(tokens: number[], o: EngineGenerateOptions, onToken: (e: Error | null, t: number) => void, cancel?: EngineCancelToken | null) {
    this.calls.push(tokens)
    let common = 0
    while (common < this.history.length && common < tokens.length - 1 && this.history[common] === tokens[common]) common++
    if (common < this.history.length) common = 0
    const evaluated = tokens.length - common
    this.history = [...tokens]
    const out: number[] = []
    let finishReason = 'length'
    for (const t of this.script()) {
      if (cancel?.cancelled) {
        finishReason = 'abort'
        break
      }
      await new Promise((r) => setImmediate(r))
      if (this.failAt !== undefined && out.length === this.failAt) throw Object.assign(new Error('boom'), { code: 'E_BACKEND' })
      out.push(t)
      onToken(null, t)
      if (out.length >= o.maxNewTokens) break
      if (cancel?.cancelled) {
        finishReason = 'abort'
        break
      }
      this.history.push(t) // like the engine: the last token is not run through the model
    }
    if (finishReason !== 'abort' && out.length >= o.maxNewTokens) finishReason = 'length'
    return { tokens: out, finishReason, promptTokens: tokens.length, promptTokensEvaluated: evaluated, promptMs: 1, generateMs: 1 }
  }
  reset() {
    this.history = []
  }
  dispose() {}
}

function fakeModel(script: () => number[], failAt?: number) {
  const sessions: FakeSession[] = []
  const engine: Engine = {
    backend: 'cpu',
    load: async () => ({ model: native, runtime: { backend: 'cpu', build: 'native', threads: 1, reason: 'fake' }, fileSizeBytes: 0, fromCache: false, sha256: null }),
    createCancelToken: () => new FakeCancel(),
  }
  const native: EngineModel = {
    info: {} as EngineModel['info'],
    disposed: false,
    ggufVocab: () => null,
    createSession: () => {
      const s = new FakeSession(script, failAt)
      sessions.push(s)
      return s
    },
    logprobs: async () => new Float32Array(0),
    dispose() {},
  }
  const info = { vocabSize: 51200, contextLength: 2048, eosTokenId: 50256 } as ModelInfo
  return { model: new Phi2Model(engine, native, tok, info), sessions }
}

describe('generation logic (scripted engine)', () => {
  it('a chat reply stopped at the user marker keeps the marker in the history: next turn evaluates only new tokens', async () => {
    const { model, sessions } = fakeModel(() => tok.encode(' Sure thing.\nAlice: and more text'))
    const chat = model.createChat()
    const r1 = await chat.send('Hi')
    expect(r1).toMatchObject({ text: ' Sure thing.', finishReason: 'stop', stopString: '\nAlice:' })
    expect(tok.decode(r1.tokens)).toBe(' Sure thing.\nAlice:')
    const r2 = await chat.send('Thanks')
    const suffix = tok.encode(' Thanks\nBob:')
    expect(sessions[0]!.calls[1]).toEqual([...sessions[0]!.calls[0]!, ...r1.tokens, ...suffix])
    expect(r2.usage.promptTokensEvaluated).toBe(1 + suffix.length)
    expect(chat.turns).toEqual([
      { role: 'user', text: 'Hi' },
      { role: 'bot', text: 'Sure thing.' },
      { role: 'user', text: 'Thanks' },
      { role: 'bot', text: 'Sure thing.' },
    ])
  })

  it('a reply stopped by another stop string is re-encoded without it', async () => {
    const { model, sessions } = fakeModel(() => tok.encode(' Fine. END of reply'))
    const chat = model.createChat({ defaults: { stop: [' END'] } })
    const r1 = await chat.send('Hi')
    expect(r1.text).toBe(' Fine.')
    await chat.send('Ok')
    expect(sessions[0]!.calls[1]).toEqual([...sessions[0]!.calls[0]!, ...tok.encode(' Fine.'), ...tok.encode('\nAlice: Ok\nBob:')])
  })

  it('cancels the engine as soon as a stop string completes', async () => {
    let produced = 0
    const { model } = fakeModel(() => {
      const ids = tok.encode(' one two three four five six seven eight')
      return ids.map((t) => {
        produced++
        return t
      })
    })
    const r = await model.generate('x', { stop: [' three'] })
    expect(r.text).toBe(' one two')
    expect(r.tokens).toEqual(tok.encode(' one two three'))
    expect(produced).toBeGreaterThan(0)
  })

  it('turns a native error during generation into a coded Phi2Error', async () => {
    const { model } = fakeModel(() => tok.encode(' a b c d'), 2)
    await expect(model.generate('x')).rejects.toMatchObject({ name: 'Phi2Error', code: 'E_BACKEND', message: 'boom' })
    const s = model.stream('x')
    const seen: string[] = []
    await expect(async () => {
      for await (const c of s) seen.push(c.text)
    }).rejects.toMatchObject({ code: 'E_BACKEND' })
  })

  describe('a stream stopped by its consumer keeps its promises (last chunk, chunks join to the result)', () => {
    const script = () => tok.encode(' one two three four five six seven eight nine ten eleven twelve')
    type Chunk = { text: string; tokens: number[]; finishReason?: string }
    const joined = (chunks: Chunk[]) => ({ text: chunks.map((c) => c.text).join(''), tokens: chunks.flatMap((c) => c.tokens) })

    it('cancel() inside for await: a last chunk with finishReason "abort"; chunks join to the result', async () => {
      const { model } = fakeModel(script)
      for (const opts of [{}, { stop: [' four', ' eleven'] }, { stop: [' thr'] }]) {
        const stream = model.stream('x', opts)
        const chunks: Chunk[] = []
        for await (const c of stream) {
          chunks.push(c)
          if (chunks.length === 2) stream.cancel()
        }
        const r = await stream.result
        expect(chunks.at(-1)!.finishReason).toBe(r.finishReason)
        expect(chunks.slice(0, -1).every((c) => c.finishReason === undefined)).toBe(true)
        expect(joined(chunks)).toEqual({ text: r.text, tokens: r.tokens })
        expect(r.usage.completionTokens).toBe(r.tokens.length)
        expect(r.tokens.length).toBeLessThan(script().length)
        if (r.finishReason !== 'stop') expect(r.finishReason).toBe('abort')
      }
    })

    it('cancel() before the loop: one empty last chunk; cancel() after the end changes nothing', async () => {
      const { model } = fakeModel(script)
      const s = model.stream('x')
      s.cancel()
      const chunks: Chunk[] = []
      for await (const c of s) chunks.push(c)
      expect(chunks).toEqual([{ text: '', tokens: [], finishReason: 'abort' }])
      expect(await s.result).toMatchObject({ text: '', tokens: [], finishReason: 'abort' })
      const done = model.stream('x', { maxNewTokens: 3 })
      const all: Chunk[] = []
      for await (const c of done) all.push(c)
      done.cancel()
      expect((await done.result).finishReason).toBe('length')
      expect(joined(all).tokens).toEqual((await done.result).tokens)
    })

    it('break and return(): the result is exactly what the loop received, finishReason "abort"', async () => {
      const { model } = fakeModel(script)
      const viaBreak = model.stream('x')
      const seen: Chunk[] = []
      for await (const c of viaBreak) {
        seen.push(c)
        if (seen.length === 3) break
      }
      const r1 = await viaBreak.result
      expect(r1.finishReason).toBe('abort')
      expect({ text: r1.text, tokens: r1.tokens }).toEqual(joined(seen))
      expect(r1.usage.completionTokens).toBe(3)

      const viaReturn = model.stream('x')
      const it = viaReturn[Symbol.asyncIterator]()
      const got: Chunk[] = []
      for (let i = 0; i < 2; i++) got.push((await it.next()).value as Chunk)
      // Let the engine run ahead of the consumer: its buffered chunks are not part of the result.
      for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r))
      expect(await it.return!()).toEqual({ value: undefined, done: true })
      const r2 = await viaReturn.result
      expect(r2.finishReason).toBe('abort')
      expect({ text: r2.text, tokens: r2.tokens }).toEqual(joined(got))
      expect((await it.next()).done).toBe(true)
    })

    it('a chat turn stopped by cancel() keeps the text the chunks carried', async () => {
      const { model } = fakeModel(script)
      const chat = model.createChat()
      const stream = chat.sendStream('Hi')
      const chunks: Chunk[] = []
      for await (const c of stream) {
        chunks.push(c)
        if (chunks.length === 3) stream.cancel()
      }
      const r = await stream.result
      expect(joined(chunks)).toEqual({ text: r.text, tokens: r.tokens })
      expect(chunks.at(-1)!.finishReason).toBe('abort')
      expect(chat.turns.at(-1)).toEqual({ role: 'bot', text: r.text.trim() })
    })

    it('an AbortSignal: the loop throws, no chunk carries a finishReason, result rejects', async () => {
      const { model } = fakeModel(script)
      const ac = new AbortController()
      const stream = model.stream('x', { signal: ac.signal })
      const chunks: Chunk[] = []
      await expect(async () => {
        for await (const c of stream) {
          chunks.push(c)
          if (chunks.length === 2) ac.abort()
        }
      }).rejects.toMatchObject({ code: 'E_ABORTED' })
      expect(chunks).toHaveLength(2)
      expect(chunks.every((c) => c.finishReason === undefined)).toBe(true)
      await expect(stream.result).rejects.toMatchObject({ code: 'E_ABORTED' })
    })
  })
})

describe('load', () => {
  it("refuses kvCache 'f16' when the engine build keeps another cache (an addon that predates the option)", async () => {
    let disposed = false
    const { model } = fakeModel(() => [])
    const native = { ...(model as unknown as { info: unknown }), info: { vocabSize: 51200, contextLength: 2048, architecture: 'phi2', format: 'gguf', dtype: 'q8_0' }, disposed: false, ggufVocab: () => null, dispose: () => void (disposed = true) }
    const engine: Engine = {
      backend: 'cpu',
      load: async () => ({ model: native as unknown as EngineModel, runtime: { backend: 'cpu', build: 'native', threads: 1, reason: 'fake' }, fileSizeBytes: 0, fromCache: false, sha256: null }),
      createCancelToken: () => new FakeCancel(),
    }
    const plan = { engine, source: { kind: 'path' as const, path: '/x.gguf', name: 'x.gguf' }, display: '/x.gguf', useGgufVocab: false, fallbackTokenizer: () => tok }
    await expect(loadWithEngine({ ...plan, options: { kvCache: 'f16' } })).rejects.toMatchObject({ name: 'Phi2OptionsError', path: 'kvCache' })
    expect(disposed).toBe(true)
    const ok = await loadWithEngine({ ...plan, options: {} })
    expect(ok.info.kvCache).toBe('f32')
  })
})
