import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  Phi2AbortError,
  Phi2DisposedError,
  formatQA,
  loadModel,
  type GenerateChunk,
  type GenerateOptions,
  type Phi2Model,
} from '@x/phi2'
import { PROMPT_TEXT, fixture } from './helpers.js'

let model: Phi2Model
beforeAll(async () => {
  model = await loadModel(fixture('tiny-q8_0.gguf'))
})
afterAll(() => model?.dispose())

async function collect(iterable: AsyncIterable<GenerateChunk>): Promise<GenerateChunk[]> {
  const chunks: GenerateChunk[] = []
  for await (const c of iterable) chunks.push(c)
  return chunks
}

const SAMPLED: GenerateOptions = { doSample: true, temperature: 1.2, topK: 0, seed: 1234, maxNewTokens: 40 }

describe('generate and stream', () => {
  it('stream deltas and tokens join to exactly the generate() result (greedy and seeded)', async () => {
    for (const opts of [{ maxNewTokens: 30 }, SAMPLED, { ...SAMPLED, seed: 99, topP: 0.9 }]) {
      const expected = await model.generate(PROMPT_TEXT, opts)
      const stream = model.stream(PROMPT_TEXT, opts)
      const chunks = await collect(stream)
      const result = await stream.result
      expect(chunks.map((c) => c.text).join('')).toBe(expected.text)
      expect(chunks.flatMap((c) => c.tokens)).toEqual(expected.tokens)
      expect(chunks.at(-1)!.finishReason).toBe(expected.finishReason)
      expect(chunks.slice(0, -1).every((c) => c.finishReason === undefined)).toBe(true)
      expect(result.text).toBe(expected.text)
      expect(result.tokens).toEqual(expected.tokens)
      expect(result.finishReason).toBe('length')
    }
    // Seeded sampling is reproducible and differs from greedy.
    const a = await model.generate(PROMPT_TEXT, SAMPLED)
    const b = await model.generate(PROMPT_TEXT, SAMPLED)
    const greedy = await model.generate(PROMPT_TEXT, { maxNewTokens: 40 })
    expect(a.tokens).toEqual(b.tokens)
    expect(a.tokens).not.toEqual(greedy.tokens)
  })

  it('never splits a UTF-8 character across chunks (tokens forced to split emoji / 4-byte chars)', async () => {
    // Byte-level tokens: "😀" = 47249 + 222, "𝄞" = 47728 + 226 + 252. Logit biases with a
    // frequency penalty make greedy decoding cycle through them in order.
    expect(model.tokenize('😀')).toEqual([47249, 222])
    expect(model.tokenize('𝄞')).toEqual([47728, 226, 252])
    const cases: Array<[Record<number, number>, string, number]> = [
      [{ 47249: 1000, 222: 990 }, '😀', 2],
      [{ 47728: 1000, 226: 990, 252: 980 }, '𝄞', 3],
      [{ 33768: 1000, 98: 990 }, '日', 2],
    ]
    for (const [logitBias, char, perChar] of cases) {
      const opts = { logitBias, frequencyPenalty: 30, maxNewTokens: perChar * 6 }
      const stream = model.stream('Emoji:', opts)
      const chunks = await collect(stream)
      const joined = chunks.map((c) => c.text).join('')
      expect(joined).toBe(char.repeat(6))
      for (const c of chunks) {
        expect(c.text).not.toContain('\uFFFD')
        if (c.text) expect(c.text).toBe(char) // whole characters only
      }
      expect(chunks.filter((c) => c.text).every((c) => c.tokens.length === perChar)).toBe(true)
      expect((await model.generate('Emoji:', opts)).text).toBe(joined)
    }
  })

  it('stops at a stop string: text cut before it, tokens up to the one that completed it', async () => {
    const full = await model.generate(PROMPT_TEXT, { maxNewTokens: 24 })
    // A stop string that spans a token boundary, in the middle of the greedy continuation.
    const pieces = full.tokens.map((t) => model.detokenize([t]))
    const k = 10
    const before = pieces.slice(0, k).join('')
    const stop = (pieces[k - 1]!.slice(-2) + pieces[k]!.slice(0, 2)).trim() || pieces[k]!
    const at = full.text.indexOf(stop)
    expect(at).toBeGreaterThan(-1)
    const r = await model.generate(PROMPT_TEXT, { maxNewTokens: 24, stop: [stop, 'never appears'] })
    expect(r.finishReason).toBe('stop')
    expect(r.stopString).toBe(stop)
    expect(r.text).toBe(full.text.slice(0, at))
    const end = full.tokens.findIndex((_, i) => model.detokenize(full.tokens.slice(0, i + 1)).length >= at + stop.length)
    expect(r.tokens).toEqual(full.tokens.slice(0, end + 1))
    expect(r.usage.completionTokens).toBe(r.tokens.length)
    expect(before.length).toBeGreaterThan(0)
    // Streaming: never emits text past the cut, never a partial stop string.
    const chunks = await collect(model.stream(PROMPT_TEXT, { maxNewTokens: 24, stop: [stop] }))
    expect(chunks.map((c) => c.text).join('')).toBe(r.text)
    expect(chunks.flatMap((c) => c.tokens)).toEqual(r.tokens)
    expect(chunks.at(-1)!.finishReason).toBe('stop')
  })

  it('prompt formats wrap the prompt and bring their stop strings', async () => {
    const q = 'What is a prime number?'
    const r = await model.generate(q, { format: 'qa', maxNewTokens: 5, stop: [] })
    expect(r.usage.promptTokens).toBe(model.tokenize(formatQA(q).prompt).length)
    const chat = await model.generate('Hi', { format: 'chat', maxNewTokens: 5 })
    expect(chat.usage.promptTokens).toBe(model.tokenize('Alice: Hi\nBob:').length)
    const code = await model.generate('def f(x):', { format: 'code', maxNewTokens: 5 })
    expect(code.usage.promptTokens).toBe(model.tokenize('def f(x):').length)
  })

  it("reports 'eos' for end-of-text (kept in tokens, not in text) and 'length' at the context end", async () => {
    const eos = await model.generate('Hi', { logitBias: { 50256: 1000 } })
    expect(eos.finishReason).toBe('eos')
    expect(eos.tokens).toEqual([50256])
    expect(eos.text).toBe('')
    const chunks = await collect(model.stream('Hi', { logitBias: { 50256: 1000 } }))
    expect(chunks).toEqual([{ text: '', tokens: [50256], finishReason: 'eos' }])
    // Default maxNewTokens (256) is clipped to the tiny model's context (128).
    const full = await model.generate(PROMPT_TEXT, { logitBias: { 50256: -Infinity } })
    expect(full.finishReason).toBe('length')
    expect(full.usage.totalTokens).toBe(model.info.contextLength)
  })

  it('runs concurrent generations independently (each equals its sequential result)', async () => {
    const jobs: Array<[string, GenerateOptions]> = [
      [PROMPT_TEXT, { maxNewTokens: 30 }],
      ['Instruct: Write a poem.\nOutput:', { ...SAMPLED, seed: 5 }],
      ['def print_prime(n):', { ...SAMPLED, seed: 6, repetitionPenalty: 1.3 }],
    ]
    const sequential = []
    for (const [p, o] of jobs) sequential.push(await model.generate(p, o))
    const parallel = await Promise.all(jobs.map(([p, o]) => model.generate(p, o)))
    const streamed = await Promise.all(
      jobs.map(async ([p, o]) => (await collect(model.stream(p, o))).map((c) => c.text).join('')),
    )
    for (let i = 0; i < jobs.length; i++) {
      expect(parallel[i]!.tokens).toEqual(sequential[i]!.tokens)
      expect(streamed[i]).toBe(sequential[i]!.text)
    }
  })
})

describe('abort and dispose', () => {
  it('rejects before any native work when the signal is already aborted', async () => {
    const ac = new AbortController()
    ac.abort(new Error('user gave up'))
    const err = await model.generate('Hi', { signal: ac.signal }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(Phi2AbortError)
    expect(err).toMatchObject({ name: 'AbortError', code: 'E_ABORTED' })
    expect((err as Error).cause).toBe(ac.signal.reason)
    const chunks: GenerateChunk[] = []
    await expect(async () => {
      for await (const c of model.stream('Hi', { signal: ac.signal })) chunks.push(c)
    }).rejects.toMatchObject({ name: 'AbortError' })
    expect(chunks).toEqual([])
    await expect(model.logprobs([1, 2], { signal: ac.signal })).rejects.toMatchObject({ code: 'E_ABORTED' })
    await expect(loadModel(fixture('tiny-q8_0.gguf'), { signal: ac.signal })).rejects.toMatchObject({ code: 'E_ABORTED' })
  })

  it('aborts during generation: generate() rejects, a stream loop throws after 2 chunks', async () => {
    const ac = new AbortController()
    const pending = model.generate(PROMPT_TEXT, { maxNewTokens: 100, signal: ac.signal })
    ac.abort()
    await expect(pending).rejects.toMatchObject({ name: 'AbortError', code: 'E_ABORTED' })

    const ac2 = new AbortController()
    const stream = model.stream(PROMPT_TEXT, { maxNewTokens: 100, signal: ac2.signal })
    const seen: GenerateChunk[] = []
    const err = await (async () => {
      for await (const c of stream) {
        seen.push(c)
        if (seen.length === 2) ac2.abort()
      }
    })().catch((e: unknown) => e)
    expect(err).toBeInstanceOf(Phi2AbortError)
    expect(seen).toHaveLength(2)
    await expect(stream.result).rejects.toBeInstanceOf(Phi2AbortError)
    // The model is fine afterwards.
    expect((await model.generate(PROMPT_TEXT, { maxNewTokens: 5 })).tokens).toHaveLength(5)
  })

  it('ignores an abort after generation finished', async () => {
    const ac = new AbortController()
    const r = await model.generate('Hi', { maxNewTokens: 3, signal: ac.signal })
    ac.abort()
    expect(r.finishReason).toBe('length')
    const s = model.stream('Hi', { maxNewTokens: 3, signal: ac.signal })
    await expect(s.result).rejects.toBeInstanceOf(Phi2AbortError) // already aborted now
  })

  it('breaking out of for-await cancels native work at once; the result is what the loop received', async () => {
    const stream = model.stream(PROMPT_TEXT, { maxNewTokens: 100, logitBias: { 50256: -Infinity } })
    const seen: GenerateChunk[] = []
    for await (const c of stream) {
      seen.push(c)
      if (seen.length === 2) break
    }
    const r = await stream.result
    expect(r.finishReason).toBe('abort')
    expect(r.tokens.length).toBeLessThan(20)
    expect(r.tokens).toEqual(seen.flatMap((c) => c.tokens))
    expect(r.text).toBe(seen.map((c) => c.text).join(''))
    const s2 = model.stream(PROMPT_TEXT, { maxNewTokens: 100 })
    s2.cancel()
    expect((await s2.result).finishReason).toBe('abort')
  })

  it('stream.cancel() inside for await: the loop ends with a finishReason chunk, chunks join to the result', async () => {
    for (const opts of [{ maxNewTokens: 100, logitBias: { 50256: -Infinity } }, { maxNewTokens: 100, stop: ['zzzz'] }]) {
      const stream = model.stream(PROMPT_TEXT, opts)
      const chunks: GenerateChunk[] = []
      for await (const c of stream) {
        chunks.push(c)
        if (chunks.length === 3) stream.cancel()
      }
      const r = await stream.result
      expect(chunks.length).toBeGreaterThan(3)
      expect(chunks.at(-1)!.finishReason).toBe(r.finishReason)
      expect(chunks.slice(0, -1).every((c) => c.finishReason === undefined)).toBe(true)
      expect(chunks.flatMap((c) => c.tokens)).toEqual(r.tokens)
      expect(chunks.map((c) => c.text).join('')).toBe(r.text)
      expect(r.usage.completionTokens).toBe(r.tokens.length)
      expect(r.tokens.length).toBeLessThan(50)
    }
    // The same through a chat.
    const chat = model.createChat()
    const s = chat.sendStream('Hello there', { maxNewTokens: 60, stop: [] })
    const chunks: GenerateChunk[] = []
    for await (const c of s) {
      chunks.push(c)
      if (chunks.length === 2) s.cancel()
    }
    const r = await s.result
    expect(r.finishReason).toBe('abort')
    expect(chunks.at(-1)!.finishReason).toBe('abort')
    expect(chunks.flatMap((c) => c.tokens)).toEqual(r.tokens)
    expect(chunks.map((c) => c.text).join('')).toBe(r.text)
    chat.dispose()
  })

  it('dispose during generation stops it with E_DISPOSED; later calls reject E_DISPOSED', async () => {
    const m = await loadModel(fixture('tiny-q8_0.gguf'))
    const chat = m.createChat()
    const pending = m.generate(PROMPT_TEXT, { maxNewTokens: 117, logitBias: { 50256: -Infinity } })
    const stream = m.stream(PROMPT_TEXT, { maxNewTokens: 100 })
    let n = 0
    const err = await (async () => {
      for await (const _ of stream) {
        void _
        if (++n === 2) m.dispose()
      }
    })().catch((e: unknown) => e)
    expect(err).toBeInstanceOf(Phi2DisposedError)
    expect(err).toMatchObject({ code: 'E_DISPOSED' })
    await expect(pending).rejects.toMatchObject({ code: 'E_DISPOSED' })
    expect(m.disposed).toBe(true)
    await expect(m.generate('Hi')).rejects.toMatchObject({ code: 'E_DISPOSED' })
    await expect(m.stream('Hi').result).rejects.toMatchObject({ code: 'E_DISPOSED' })
    await expect(m.logprobs([1])).rejects.toMatchObject({ code: 'E_DISPOSED' })
    await expect(chat.send('Hi')).rejects.toMatchObject({ code: 'E_DISPOSED' })
    expect(() => m.tokenize('Hi')).toThrow(Phi2DisposedError)
    expect(() => m.createChat()).toThrow(Phi2DisposedError)
    m.dispose() // idempotent
    await m[Symbol.asyncDispose]()
  })
})

describe('chat', () => {
  it('keeps its KV cache between turns: the second turn evaluates only the new tokens', async () => {
    const chat = model.createChat({ system: 'A friendly conversation.' })
    const opts = { maxNewTokens: 6, stop: [] as string[] }
    const first = await chat.send('Hello, who are you?', opts)
    const firstPrompt = model.tokenize('A friendly conversation.\nAlice: Hello, who are you?\nBob:')
    expect(first.usage.promptTokens).toBe(firstPrompt.length)
    expect(first.usage.promptTokensEvaluated).toBe(firstPrompt.length)
    expect(first.tokens).toHaveLength(6)

    const suffix = model.tokenize('\nAlice: Tell me more.\nBob:')
    const second = await chat.send('Tell me more.', opts)
    expect(second.usage.promptTokens).toBe(firstPrompt.length + 6 + suffix.length)
    // Only the last generated token (never run through the model) and the new turn.
    expect(second.usage.promptTokensEvaluated).toBe(1 + suffix.length)

    // Streaming turns share the same history.
    const stream = chat.sendStream('And then?', opts)
    const chunks = await collect(stream)
    const third = await stream.result
    expect(chunks.map((c) => c.text).join('')).toBe(third.text)
    expect(third.usage.promptTokensEvaluated).toBeLessThan(15)
    expect(chat.turns.map((t) => t.role)).toEqual(['user', 'bot', 'user', 'bot', 'user', 'bot'])
    expect(chat.historyLength).toBe(third.usage.totalTokens)

    // The same conversation, replayed as one prompt, gives the same reply (the cache is exact).
    const replay = await model.generate([...model.tokenize('A friendly conversation.\nAlice: Hello, who are you?\nBob:'), ...first.tokens, ...suffix], opts)
    expect(replay.tokens).toEqual(second.tokens)

    chat.reset()
    const again = await chat.send('Hello, who are you?', opts)
    expect(again.usage.promptTokensEvaluated).toBe(firstPrompt.length)
    expect(again.tokens).toEqual(first.tokens)
    chat.dispose()
    await expect(chat.send('Hi')).rejects.toMatchObject({ code: 'E_DISPOSED' })
  })

  it('serializes concurrent sends and uses the chat stop strings by default', async () => {
    const chat = model.createChat({ userName: 'Ann', botName: 'Tutor', defaults: { maxNewTokens: 4 } })
    const [a, b] = await Promise.all([chat.send('One'), chat.send('Two')])
    expect(a.tokens.length).toBeLessThanOrEqual(4)
    expect(b.usage.promptTokens).toBe(a.usage.totalTokens + model.tokenize('\nAnn: Two\nTutor:').length)
    chat.dispose()
  })

  it('drops the oldest turns when the context fills up', async () => {
    const chat = model.createChat()
    for (let i = 0; i < 8; i++) {
      const r = await chat.send(`Message number ${i} with some extra words to fill the context`, { maxNewTokens: 16, stop: [] })
      expect(r.usage.totalTokens).toBeLessThanOrEqual(model.info.contextLength)
    }
    chat.dispose()
  })
})
