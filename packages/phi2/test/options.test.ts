import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  GenerateOptionsSchema,
  Phi2BackendUnavailableError,
  Phi2Error,
  Phi2ModelLoadError,
  Phi2OptionsError,
  loadModel,
  type Phi2Model,
} from '@x/phi2'
import { fixture } from './helpers.js'

let model: Phi2Model
beforeAll(async () => {
  model = await loadModel(fixture('tiny-q8_0.gguf'))
})
afterAll(() => model?.dispose())

async function optionError(p: Promise<unknown> | (() => unknown)): Promise<Phi2OptionsError> {
  try {
    await (typeof p === 'function' ? p() : p)
  } catch (err) {
    expect(err).toBeInstanceOf(Phi2OptionsError)
    return err as Phi2OptionsError
  }
  throw new Error('expected a Phi2OptionsError')
}

// [field, bad value, path named in the error]
const BAD_GENERATE: Array<[string, unknown, string?]> = [
  ['maxNewTokens', 0],
  ['maxNewTokens', 1.5],
  ['maxNewTokens', 129], // > the tiny model's context length 128
  ['maxNewTokens', '10'],
  ['doSample', 'yes'],
  ['temperature', -0.1],
  ['temperature', Number.NaN],
  ['temperature', 101],
  ['topK', -1],
  ['topK', 2.5],
  ['topP', 0],
  ['topP', 1.01],
  ['minP', -0.1],
  ['minP', 1],
  ['repetitionPenalty', 0],
  ['repetitionPenalty', Infinity],
  ['presencePenalty', Infinity],
  ['presencePenalty', 101],
  ['frequencyPenalty', Number.NaN],
  ['frequencyPenalty', -101],
  ['seed', -1],
  ['seed', 0.5],
  ['seed', 2 ** 53],
  ['stop', 'END'],
  ['stop', ['ok', ''], 'stop.1'],
  ['stop', [1], 'stop.0'],
  ['logitBias', { 50256: Infinity }, 'logitBias.50256'],
  ['logitBias', { 50256: 'ban' }, 'logitBias.50256'],
  ['logitBias', { '-3': 1 }, 'logitBias.-3'],
  ['logitBias', { 51200: 1 }, 'logitBias.51200'], // out of the vocabulary
  ['logitBias', [1, 2]],
  ['signal', {}],
  ['format', 'markdown'],
  ['temprature', 0.5], // unknown key (typo)
]

describe('option validation', () => {
  for (const [field, value, path] of BAD_GENERATE) {
    it(`generate rejects ${field} = ${String(JSON.stringify(value) ?? value)}`, async () => {
      const err = await optionError(model.generate('Hi', { [field]: value } as never))
      expect(err.code).toBe('E_INVALID_OPTION')
      expect(err.path).toBe(path ?? field)
      expect(err.message).toContain(`"${path ?? field}"`)
    })
  }

  it('stream() reports option errors from the loop and from result', async () => {
    const s = model.stream('Hi', { topP: 2 })
    await expect(s.result).rejects.toMatchObject({ code: 'E_INVALID_OPTION', path: 'topP' })
    const s2 = model.stream('Hi', { topP: 2 })
    await expect(async () => {
      for await (const _ of s2) void _
    }).rejects.toMatchObject({ code: 'E_INVALID_OPTION', path: 'topP' })
  })

  it('accepts -Infinity logit bias (ban) and every documented value', async () => {
    const r = await model.generate('Hi', {
      maxNewTokens: 3,
      doSample: true,
      temperature: 0.9,
      topK: 10,
      topP: 0.9,
      minP: 0.01,
      repetitionPenalty: 1.1,
      presencePenalty: 0.5,
      frequencyPenalty: 0.5,
      seed: 42,
      stop: ['\n\n'],
      logitBias: { 50256: -Infinity, 1169: 2 },
      signal: new AbortController().signal,
      format: 'qa',
    })
    expect(r.tokens.length).toBeGreaterThan(0)
    expect(GenerateOptionsSchema.safeParse({ maxNewTokens: 5 }).success).toBe(true)
  })

  it('validates the prompt', async () => {
    expect((await optionError(model.generate([1, 99999]))).path).toBe('prompt.1')
    expect((await optionError(model.generate([]))).path).toBe('prompt')
    expect((await optionError(model.generate(42 as never))).path).toBe('prompt')
    expect((await optionError(model.generate([1, 2], { format: 'qa' }))).path).toBe('format')
    await expect(model.generate(Array(128).fill(1))).rejects.toMatchObject({ code: 'E_PROMPT_TOO_LONG' })
  })

  it('validates logprobs arguments', async () => {
    expect((await optionError(model.logprobs([]))).path).toBe('tokens')
    expect((await optionError(model.logprobs([1, -2]))).path).toBe('tokens.1')
    expect((await optionError(model.logprobs([1], { signal: 'x' } as never))).path).toBe('signal')
    expect((await optionError(model.logprobs([1], { bogus: 1 } as never))).path).toBe('bogus')
  })

  it('validates createChat and chat.send options', async () => {
    expect((await optionError(() => model.createChat({ userName: '' }))).path).toBe('userName')
    expect((await optionError(() => model.createChat({ botName: 'B:ob' }))).path).toBe('botName')
    expect((await optionError(() => model.createChat({ system: 5 } as never))).path).toBe('system')
    expect((await optionError(() => model.createChat({ defaults: { topK: -1 } }))).path).toBe('defaults.topK')
    expect((await optionError(() => model.createChat({ nickname: 'x' } as never))).path).toBe('nickname')
    const chat = model.createChat()
    expect((await optionError(chat.send('hi', { minP: 2 }))).path).toBe('minP')
    expect((await optionError(chat.send('hi', { format: 'qa' } as never))).path).toBe('format')
    expect((await optionError(chat.send(7 as never))).path).toBe('message')
    chat.dispose()
  })

  it('validates loadModel options', async () => {
    const path = fixture('tiny-q8_0.gguf')
    const cases: Array<[string, unknown]> = [
      ['threads', 0],
      ['threads', 1.5],
      ['contextLength', 1],
      ['contextLength', 4096], // more than the model's 128
      ['backend', 'tpu'],
      ['kvCache', 'f8'],
      ['kvCache', 16],
      ['onProgress', 'yes'],
      ['signal', 1],
      ['gpu', true],
    ]
    for (const [field, value] of cases) {
      const err = await optionError(loadModel(path, { [field]: value } as never))
      expect(err.path, field).toBe(field)
      expect(err.message).toContain(`"${field}"`)
    }
    expect((await optionError(loadModel(''))).path).toBe('source')
  })

  it('reports unavailable backends and load failures with codes', async () => {
    const path = fixture('tiny-q8_0.gguf')
    for (const backend of ['cuda'] as const) {
      const err = await loadModel(path, { backend }).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(Phi2BackendUnavailableError)
      expect(err).toMatchObject({ code: 'E_BACKEND_UNAVAILABLE', backend })
      // Why, and what to use instead (test/cuda-backend.test.ts covers each reason).
      expect((err as Error).message).toMatch(/The 'cuda' backend is not available: .+\. Use backend 'cpu'/)
    }
    // URLs / bytes need the wasm backend.
    for (const source of ['http://127.0.0.1:9/x.gguf', new Uint8Array(8)] as const) {
      const err = await loadModel(source as never, { backend: 'cpu' }).catch((e: unknown) => e)
      expect(err).toMatchObject({ code: 'E_INVALID_OPTION', path: 'source' })
    }
    const phases: string[] = []
    const cpu = await loadModel(path, { backend: 'cpu', contextLength: 64, onProgress: (p) => phases.push(`${p.phase}:${p.progress}`) })
    expect(phases).toEqual(['loading:0', 'loading:1', 'tokenizer:1', 'ready:1'])
    expect(cpu.info.backend).toBe('cpu')
    expect(cpu.info.contextLength).toBe(64)
    expect(cpu.info.trainedContextLength).toBe(128)
    await expect(cpu.generate('x', { maxNewTokens: 65 })).rejects.toMatchObject({ path: 'maxNewTokens' })
    cpu.dispose()

    expect(model.info.kvCache).toBe('f32')

    const missing = await loadModel('/nonexistent/phi-2.gguf').catch((e: unknown) => e)
    expect(missing).toBeInstanceOf(Phi2ModelLoadError)
    expect(missing).toMatchObject({ code: 'E_IO' })
    const notAModel = await loadModel(fixture('manifest.json')).catch((e: unknown) => e)
    expect(notAModel).toBeInstanceOf(Phi2Error)
    expect((notAModel as Phi2Error).code).toMatch(/^E_(MALFORMED_FILE|IO|BAD_CONFIG)$/)
  })
})

describe('kvCache', () => {
  it("'f16' stores the cache in f16: reported, deterministic, close to 'f32' and not the same", async () => {
    const path = fixture('kq-f16.gguf')
    const [f32, f16, again] = await Promise.all([
      loadModel(path, { backend: 'cpu' }),
      loadModel(path, { backend: 'cpu', kvCache: 'f16' }),
      loadModel(path, { backend: 'cpu', kvCache: 'f16' }),
    ])
    try {
      expect(f32.info.kvCache).toBe('f32')
      expect(f16.info.kvCache).toBe('f16')
      const tokens = Array.from({ length: 40 }, (_, i) => (i * 7919) % 1000)
      const [a, b, c] = await Promise.all([f32.logprobs(tokens), f16.logprobs(tokens), again.logprobs(tokens)])
      let worst = 0
      for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!))
      // F16 weights take the activations as they are: only the rounding of keys and values differs
      // (the engine's own test measured 2.9e-3 on this model).
      expect(worst).toBeGreaterThan(0)
      expect(worst).toBeLessThan(1e-2)
      expect(Buffer.from(c.buffer)).toEqual(Buffer.from(b.buffer))
      const opts = { maxNewTokens: 12, temperature: 0.8, doSample: true, seed: 5 }
      const g = await f16.generate('def add(a, b):', opts)
      expect((await again.generate('def add(a, b):', opts)).tokens).toEqual(g.tokens)
    } finally {
      for (const m of [f32, f16, again]) m.dispose()
    }
  })
})
