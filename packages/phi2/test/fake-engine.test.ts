// The SDK's generation logic against a scripted in-memory engine (src/engine.ts contract): chat
// history bookkeeping around stop strings, cancellation timing, native errors. Deterministic cases
// that the random-weight fixtures cannot produce on demand.
import { describe, expect, it } from 'vitest'
import type { Engine, EngineCancelToken, EngineGenerateOptions, EngineModel, EngineSession } from '../src/engine.js'
import { Phi2Model, type ModelInfo } from '../src/model.js'
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
})
