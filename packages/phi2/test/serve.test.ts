// `phi2 serve` on loopback, run as users run it (the built CLI in a child process): the model
// card's /score samples equal the SDK's completions, the official `openai` client works against
// /v1 (plain and streaming), concurrent requests in one batch equal their runs alone, and the
// limits and errors (400 naming the field, 401, 404, 413, 429 + Retry-After, disconnect,
// SIGTERM drain).
import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Phi2Model, defaultModelPath, loadModel } from '@x/phi2'
import { Phi2Error as Phi2ErrorSrc, loadModel as loadModelSrc } from '../src/index.js'
import { BatchRunner } from '../src/serve/runner.js'
import { createServer } from '../src/serve/server.js'
import { CLI, fixture } from './helpers.js'

interface Served {
  url: string
  proc: ChildProcess
  stderr: () => string
  stop: () => Promise<number | null>
}

async function serve(args: string[]): Promise<Served> {
  const proc = spawn(process.execPath, [CLI, 'serve', '--port', '0', '--quiet', ...args], { stdio: ['ignore', 'ignore', 'pipe'] })
  let err = ''
  proc.stderr!.setEncoding('utf8')
  const url = await new Promise<string>((resolve, reject) => {
    proc.stderr!.on('data', (d: string) => {
      err += d
      const m = /listening on (http:\/\/[^\s]+)/.exec(err)
      if (m && /ready/.test(err)) resolve(m[1]!)
    })
    proc.once('exit', (code) => reject(new Error(`phi2 serve exited with ${code}: ${err}`)))
  })
  return {
    url,
    proc,
    stderr: () => err,
    async stop() {
      if (proc.exitCode !== null) return proc.exitCode
      proc.kill('SIGTERM')
      const [code] = await once(proc, 'exit')
      return code as number | null
    },
  }
}

async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: any; headers: Headers }> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) })
  const text = await res.text()
  let json: unknown = text
  try {
    json = JSON.parse(text)
  } catch {
    // not JSON: keep the text
  }
  return { status: res.status, json, headers: res.headers }
}

/** The model card's three real-time samples (QA, chat, code), with a seed added for determinism. */
const CARD_SAMPLES = [
  { prompt: 'Instruct: What is a fermi paradox?\nOutput:', parameters: { top_p: 0.1, temperature: 0.1, max_new_tokens: 100, do_sample: true } },
  { prompt: 'Alice: What is a fermi paradox?', parameters: { top_p: 0.9, temperature: 0.6, max_new_tokens: 100, do_sample: true } },
  { prompt: 'def is_prime(', parameters: { top_p: 0.9, temperature: 0.6, max_new_tokens: 100, do_sample: true } },
]

describe('phi2 serve --kv-cache f16', () => {
  it("serves with f16 KV caches: the SDK's greedy text with kvCache 'f16', and its log-probs, not f32's", async () => {
    const s = await serve(['--model', fixture('kq-f16.gguf'), '--kv-cache', 'f16'])
    const [model, f32] = await Promise.all([loadModel(fixture('kq-f16.gguf'), { kvCache: 'f16' }), loadModel(fixture('kq-f16.gguf'))])
    try {
      const prompt = 'def add(a, b):'
      const r = await post(`${s.url}/v1/completions`, { prompt, max_tokens: 12, temperature: 0, logprobs: 1 })
      expect(r.status).toBe(200)
      const want = await model.generate(prompt, { maxNewTokens: 12 })
      expect(r.json.choices[0].text).toBe(want.text)
      // The served log-probs of those tokens: an f16 cache's (the two caches differ by ~1e-3 here,
      // far more than the log-softmax definitions of the server and of logprobs()).
      const served: number[] = r.json.choices[0].logprobs.token_logprobs
      const ids = [...model.tokenize(prompt), ...want.tokens]
      const vocab = model.info.vocabSize
      const off = async (m: Phi2Model) => {
        const rows = await m.logprobs(ids)
        return served.reduce((sum, lp, k) => sum + Math.abs(lp - rows[(ids.length - want.tokens.length + k - 1) * vocab + want.tokens[k]!]!), 0)
      }
      const [toF16, toF32] = [await off(model), await off(f32)]
      expect(served).toHaveLength(want.tokens.length)
      expect(toF16).toBeLessThan(toF32 / 10)
    } finally {
      model.dispose()
      f32.dispose()
      expect(await s.stop()).toBe(0)
    }
  })
})

describe('phi2 serve: /score (the model card contract)', () => {
  let s: Served
  let model: Phi2Model
  beforeAll(async () => {
    s = await serve(['--model', defaultModelPath()])
    model = await loadModel(defaultModelPath())
  })
  afterAll(async () => {
    model?.dispose()
    expect(await s?.stop()).toBe(0)
  })

  it('answers the card samples in the card shape, equal to the SDK for the same parameters and seed', async () => {
    for (const [i, sample] of CARD_SAMPLES.entries()) {
      const seed = 1000 + i
      const { status, json } = await post(`${s.url}/score`, { input_data: { input_string: [sample.prompt], parameters: { ...sample.parameters, seed } } })
      expect(status).toBe(200)
      const p = sample.parameters
      const sdk = await model.generate(sample.prompt, { topP: p.top_p, temperature: p.temperature, maxNewTokens: p.max_new_tokens, doSample: p.do_sample, seed })
      expect(sdk.usage.completionTokens).toBeGreaterThan(0)
      expect(json).toEqual([{ '0': sample.prompt + sdk.text }])
    }
  })

  it('several prompts (and the older "inputs" key): one record per prompt, in order; return_full_text false', async () => {
    const prompts = CARD_SAMPLES.map((x) => x.prompt)
    const { status, json } = await post(`${s.url}/score`, { inputs: { input_string: prompts, parameters: { max_new_tokens: 12, return_full_text: false } } })
    expect(status).toBe(200)
    const want = await Promise.all(prompts.map((p) => model.generate(p, { maxNewTokens: 12 })))
    expect(json).toEqual(want.map((w, i) => ({ [String(i)]: w.text })))
  })

  it('stop_sequences cut the text as the SDK stop option does', async () => {
    const sdk = await model.generate(CARD_SAMPLES[0]!.prompt, { maxNewTokens: 40 })
    const word = sdk.text.trim().split(/\s+/)[2]!
    const cut = await model.generate(CARD_SAMPLES[0]!.prompt, { maxNewTokens: 40, stop: [word] })
    const { json } = await post(`${s.url}/score`, { input_data: { input_string: [CARD_SAMPLES[0]!.prompt], parameters: { max_new_tokens: 40, stop_sequences: [word], return_full_text: false } } })
    expect(cut.finishReason).toBe('stop')
    expect(json).toEqual([{ '0': cut.text }])
  })

  it('more input strings than the server can ever admit are a 400 naming input_string, not a 429', async () => {
    // Defaults: --parallel 8 + --max-queue 64 = 72.
    const r = await post(`${s.url}/score`, { input_data: { input_string: Array.from({ length: 73 }, () => 'x'), parameters: { max_new_tokens: 1 } } })
    expect(r.status).toBe(400)
    expect(r.json.error).toMatchObject({ type: 'invalid_request_error', param: 'input_data.input_string' })
    const cap = await post(`${s.url}/score`, { inputs: { input_string: Array.from({ length: 1025 }, () => 'x') } })
    expect(cap.status).toBe(400)
    expect(cap.json.error).toMatchObject({ param: 'inputs.input_string', message: expect.stringMatching(/at most 1024/) })
  })

  it('unsupported Azure parameters, unknown ones, bad types and bad JSON are 400s naming the field', async () => {
    const bad = async (body: unknown, param: string | null, re: RegExp) => {
      const r = await post(`${s.url}/score`, body)
      expect(r.status).toBe(400)
      expect(r.json.error.param).toBe(param)
      expect(r.json.error.message).toMatch(re)
    }
    for (const k of ['best_of', 'typical_p', 'truncate', 'watermark', 'decoder_input_details']) {
      await bad({ input_data: { input_string: ['x'], parameters: { [k]: 1 } } }, `input_data.parameters.${k}`, new RegExp(`Unsupported parameter "${k}"`))
    }
    await bad({ input_data: { input_string: ['x'], parameters: { colour: 1 } } }, 'input_data.parameters.colour', /Unknown field/)
    await bad({ input_data: { input_string: ['x'], parameters: { top_p: 'high' } } }, 'input_data.parameters.top_p', /must be a number/)
    await bad({ input_data: { input_string: ['x'], parameters: { top_p: 1.5 } } }, 'input_data.parameters.top_p', /top_p/)
    await bad({ input_data: { input_string: ['x'], parameters: { max_new_tokens: 1e6 } } }, 'input_data.parameters.max_new_tokens', /max_new_tokens/)
    await bad({ input_data: { input_string: 'x' } }, 'input_data.input_string', /list of strings/)
    await bad({ prompts: ['x'] }, 'input_data', /input_data/)
    await bad('{"input_data": ', null, /Malformed/)
    await bad({ input_data: { input_string: ['word '.repeat(5000)] } }, 'input_data.input_string', /context length/)
  })
})

describe('phi2 serve: OpenAI API', () => {
  let s: Served
  let client: OpenAI
  const KEY = 'sk-test-key'
  beforeAll(async () => {
    s = await serve(['--model', fixture('tiny-q8_0.gguf'), '--api-key', KEY, '--model-name', 'phi-2-test', '--parallel', '4', '--max-queue', '4'])
    client = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: KEY, maxRetries: 0 })
  })
  afterAll(async () => {
    expect(await s?.stop()).toBe(0)
  })

  it('models, completions and chat with the official client, plain and streaming give the same text', async () => {
    const models = await client.models.list()
    expect(models.data.map((m) => m.id)).toEqual(['phi-2-test'])
    const c = await client.completions.create({ model: 'phi-2-test', prompt: 'The quick brown fox', max_tokens: 12, seed: 7, temperature: 0.8 })
    expect(c.object).toBe('text_completion')
    expect(c.choices).toHaveLength(1)
    expect(c.usage).toEqual({ prompt_tokens: 4, completion_tokens: 12, total_tokens: 16 })
    expect(c.choices[0]!.finish_reason).toBe('length')
    const stream = await client.completions.create({ model: 'phi-2-test', prompt: 'The quick brown fox', max_tokens: 12, seed: 7, temperature: 0.8, stream: true, stream_options: { include_usage: true } })
    let text = ''
    let usage = null
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? ''
      usage = chunk.usage ?? usage
    }
    expect(text).toBe(c.choices[0]!.text)
    expect(usage).toEqual(c.usage)

    const chat = await client.chat.completions.create({
      model: 'phi-2-test',
      messages: [
        { role: 'system', content: 'You are helpful.' },
        { role: 'user', content: 'What is a prime number?' },
      ],
      max_tokens: 10,
      seed: 3,
    })
    expect(chat.object).toBe('chat.completion')
    expect(chat.choices[0]!.message.role).toBe('assistant')
    const chatStream = await client.chat.completions.create({
      model: 'phi-2-test',
      messages: [
        { role: 'system', content: 'You are helpful.' },
        { role: 'user', content: 'What is a prime number?' },
      ],
      max_tokens: 10,
      seed: 3,
      stream: true,
    })
    let content = ''
    let finish: string | null = null
    for await (const chunk of chatStream) {
      content += chunk.choices[0]?.delta.content ?? ''
      finish = chunk.choices[0]?.finish_reason ?? finish
    }
    expect(content.trim()).toBe(chat.choices[0]!.message.content)
    expect(finish).toBe(chat.choices[0]!.finish_reason)
  })

  it('chat uses the card format: system line, Alice/Bob turns, equal to a completion of that prompt', async () => {
    const prompt = 'You are helpful.\nAlice: Hi there\nBob: Hello!\nAlice: Name a colour.\nBob:'
    const chat = await client.chat.completions.create({
      model: 'phi-2-test',
      messages: [
        { role: 'system', content: 'You are helpful.' },
        { role: 'user', content: 'Hi there' },
        { role: 'assistant', content: 'Hello!' },
        { role: 'user', content: 'Name a colour.' },
      ],
      max_tokens: 8,
      temperature: 0,
    })
    const c = await client.completions.create({ model: 'phi-2-test', prompt, max_tokens: 8, temperature: 0, stop: ['\nAlice:', '\nBob:', '<|endoftext|>'] })
    expect(chat.choices[0]!.message.content).toBe(c.choices[0]!.text.trim())
    expect(chat.usage!.prompt_tokens).toBe(c.usage!.prompt_tokens)
  })

  it('n, logprobs and concurrent requests: each equals its run alone (greedy, batched)', async () => {
    const prompts = ['The quick brown fox', 'Hello, my name is', 'def add(a, b):', 'In a small village,', 'Once upon a time']
    const alone = []
    for (const p of prompts) alone.push(await client.completions.create({ model: 'phi-2-test', prompt: p, max_tokens: 16, temperature: 0, logprobs: 3 }))
    const together = await Promise.all(prompts.map((p) => client.completions.create({ model: 'phi-2-test', prompt: p, max_tokens: 16, temperature: 0, logprobs: 3 })))
    for (const [i, a] of alone.entries()) {
      const t = together[i]!
      expect(t.choices[0]!.text).toBe(a.choices[0]!.text)
      expect(t.choices[0]!.logprobs).toEqual(a.choices[0]!.logprobs)
      const lp = a.choices[0]!.logprobs!
      expect(lp.tokens!.join('')).toBe(a.choices[0]!.text)
      expect(lp.top_logprobs![0]).toSatisfy((o: Record<string, number>) => Object.keys(o).length === 3)
      // Greedy: the produced token is the most likely one.
      expect(Math.max(...Object.values(lp.top_logprobs![0]!))).toBe(lp.token_logprobs![0])
    }
    const n = await client.completions.create({ model: 'phi-2-test', prompt: ['a', 'b'], max_tokens: 4, n: 2, seed: 5, temperature: 1 })
    expect(n.choices.map((c) => c.index).sort()).toEqual([0, 1, 2, 3])
    expect(n.usage!.completion_tokens).toBe(16)
  })

  it('errors: OpenAI error body, 401, 404 model, 400 naming fields, 413', async () => {
    const noKey = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'wrong', maxRetries: 0 })
    await expect(noKey.models.list()).rejects.toMatchObject({ status: 401 })
    expect((await fetch(`${s.url}/health`)).status).toBe(200)
    await expect(client.completions.create({ model: 'gpt-4', prompt: 'x' })).rejects.toMatchObject({ status: 404, code: 'model_not_found' })
    const auth = { authorization: `Bearer ${KEY}` }
    const r = await post(`${s.url}/v1/completions`, { prompt: 'x', max_tokens: 'ten' }, auth)
    expect(r.status).toBe(400)
    expect(r.json.error).toMatchObject({ type: 'invalid_request_error', param: 'max_tokens' })
    expect((await post(`${s.url}/v1/completions`, { prompt: 'x', temperature: -1 }, auth)).json.error.param).toBe('temperature')
    expect((await post(`${s.url}/v1/completions`, { prompt: 'x', max_tokens: 100000 }, auth)).json.error.param).toBe('max_tokens')
    expect((await post(`${s.url}/v1/chat/completions`, { messages: [{ role: 'robot', content: 'x' }] }, auth)).json.error.param).toBe('messages.0.role')
    expect((await post(`${s.url}/v1/chat/completions`, { messages: [{ role: 'user', content: 'x' }], tools: [] }, auth)).json.error.param).toBe('tools')
    expect((await post(`${s.url}/v1/completions`, { prompt: 'word '.repeat(500) }, auth)).json.error).toMatchObject({ param: 'prompt', code: 'context_length_exceeded' })
    const big = await post(`${s.url}/v1/completions`, { prompt: 'x'.repeat(2 << 20) }, auth)
    expect(big.status).toBe(413)
    expect(big.json.error.message).toMatch(/larger than the limit/)
  })

  it('requests that could never be admitted, out-of-range token ids and huge prompts are 400s naming the field', async () => {
    const auth = { authorization: `Bearer ${KEY}` }
    // --parallel 4 + --max-queue 4: 9 generations never fit (a 429 would invite endless retries).
    const many = await post(`${s.url}/v1/completions`, { prompt: 'x', n: 9, max_tokens: 1 }, auth)
    expect(many.status).toBe(400)
    expect(many.json.error).toMatchObject({ type: 'invalid_request_error', param: 'n' })
    const prompts = await post(`${s.url}/v1/completions`, { prompt: Array.from({ length: 9 }, () => 'x'), max_tokens: 1 }, auth)
    expect(prompts.status).toBe(400)
    expect(prompts.json.error.param).toBe('prompt')
    const tooMany = await post(`${s.url}/v1/completions`, { prompt: Array.from({ length: 1025 }, () => 'x'), max_tokens: 1 }, auth)
    expect(tooMany.json.error).toMatchObject({ param: 'prompt', message: expect.stringMatching(/at most 1024 prompts/) })
    // Token ids beyond the vocabulary (51200) or u32 are refused, not wrapped.
    for (const [prompt, param] of [
      [[464, 4294967296], 'prompt.1'],
      [[464, 51200], 'prompt.1'],
      [[464, -1], 'prompt.1'],
      [[[464], [464, 2068, 4294967297]], 'prompt.1.2'],
    ] as const) {
      const r = await post(`${s.url}/v1/completions`, { prompt, max_tokens: 1 }, auth)
      expect(r.status).toBe(400)
      expect(r.json.error).toMatchObject({ type: 'invalid_request_error', param })
    }
    // Far more characters than the context can hold: refused before tokenizing.
    const huge = await post(`${s.url}/v1/completions`, { prompt: 'a'.repeat(900_000) }, auth)
    expect(huge.status).toBe(400)
    expect(huge.json.error).toMatchObject({ param: 'prompt', code: 'context_length_exceeded' })
    // The server still serves.
    expect((await post(`${s.url}/v1/completions`, { prompt: 'x', max_tokens: 1 }, auth)).status).toBe(200)
  })

  it('/v1/completions without max_tokens generates 16 tokens (OpenAI and vLLM default)', async () => {
    const r = await client.completions.create({ model: 'phi-2-test', prompt: 'Hello', logit_bias: { '50256': -100 } })
    expect(r.usage!.completion_tokens).toBe(16)
    expect(r.choices[0]!.finish_reason).toBe('length')
  })

  it('a client that disconnects frees its sequence; a full queue answers 429 with Retry-After', async () => {
    const auth = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' }
    // Long streams fill the 4 batch slots and the 4 queue places.
    const ctls = Array.from({ length: 8 }, () => new AbortController())
    const streams = await Promise.all(
      ctls.map((c) => fetch(`${s.url}/v1/completions`, { method: 'POST', headers: auth, body: JSON.stringify({ prompt: 'x', max_tokens: 120, stream: true }), signal: c.signal })),
    )
    const full = await post(`${s.url}/v1/completions`, { prompt: 'x', max_tokens: 2 }, auth)
    expect(full.status).toBe(429)
    expect(full.headers.get('retry-after')).toBe('1')
    expect(full.json.error.type).toBe('rate_limit_error')
    // Read a chunk of each, then hang up: the server must cancel them all.
    for (const [i, r] of streams.entries()) {
      await r.body!.getReader().read()
      ctls[i]!.abort()
    }
    let metrics = ''
    for (let i = 0; i < 200; i++) {
      metrics = await (await fetch(`${s.url}/metrics`, { headers: auth })).text()
      if (/^phi2_active_sequences 0$/m.test(metrics) && /^phi2_queue_depth 0$/m.test(metrics)) break
      await new Promise((r) => setTimeout(r, 50))
    }
    expect(metrics).toMatch(/^phi2_active_sequences 0$/m)
    // The aborted streams stopped early: far fewer than 8 x 120 tokens were generated.
    const generated = Number(/^phi2_completion_tokens_total (\d+)$/m.exec(metrics)![1])
    const ok = await post(`${s.url}/v1/completions`, { prompt: 'x', max_tokens: 2 }, auth)
    expect(ok.status).toBe(200)
    expect(generated).toBeLessThan(8 * 120)
    expect(metrics).toMatch(/phi2_request_duration_seconds_bucket\{le="\+Inf"\}/)
    expect(metrics).toMatch(/phi2_rejected_total 1/)
  })
})

describe('phi2 serve: batch runner', () => {
  it('a callback that throws inside the engine event fails just its request (never into napi)', async () => {
    const m = await loadModelSrc(fixture('tiny-q8_0.gguf'))
    const r = new BatchRunner(m, { maxSequences: 2 })
    try {
      const ids = r.tokenizer.encode('Hello')
      const boom = () => {
        throw new Error('boom')
      }
      const bad = r.run({ ids, options: { maxNewTokens: 20 }, stop: [], onPiece: boom })
      await expect(bad).rejects.toMatchObject({ code: 'E_INTERNAL', message: expect.stringContaining('boom') })
      const ok = await r.run({ ids, options: { maxNewTokens: 5 }, stop: [] })
      expect(ok.completionTokens).toBe(5)
    } finally {
      r.dispose()
      m.dispose()
    }
  })

  it('when one choice fails, the request aborts its other choices before answering', async () => {
    const server = createServer({ load: () => loadModelSrc(fixture('tiny-q8_0.gguf'), { backend: 'cpu' }), parallel: 4, maxQueue: 0 })
    await server.ready
    const orig = BatchRunner.prototype.run
    const seen: { signal: AbortSignal | undefined; result?: Promise<unknown> }[] = []
    BatchRunner.prototype.run = function (this: BatchRunner, req) {
      const entry: (typeof seen)[number] = { signal: req.signal }
      seen.push(entry)
      // The second choice fails once the first is running.
      const p = seen.length === 2 ? Promise.reject(new Phi2ErrorSrc('E_INTERNAL', 'injected failure')) : orig.call(this, req)
      entry.result = p.catch((e: unknown) => e)
      return p
    }
    try {
      const res = await server.app.inject({ method: 'POST', url: '/v1/completions', payload: { prompt: 'x', n: 2, max_tokens: 100, logit_bias: { '50256': -100 } } })
      expect(res.statusCode).toBe(500)
      expect(res.json().error.message).toMatch(/injected failure/)
      expect(seen).toHaveLength(2)
      expect(seen[0]!.signal!.aborted).toBe(true)
      // The sibling had already ended (aborted) when the answer came: its queue place is free again.
      const first = (await seen[0]!.result) as { finishReason?: string; completionTokens?: number }
      expect(first.finishReason).toBe('abort')
      expect(first.completionTokens).toBeLessThan(100)
    } finally {
      BatchRunner.prototype.run = orig
      await server.close()
    }
  })
})

describe('phi2 serve: lifecycle', () => {
  it('closing the server during the model load aborts the load', async () => {
    let loadSignal: AbortSignal | null = null
    const server = createServer({
      // A load that only ends when aborted (as loadModel does with its signal).
      load: (signal) =>
        new Promise((_resolve, reject) => {
          loadSignal = signal
          signal.addEventListener('abort', () => reject(new Error('load aborted')), { once: true })
        }),
    })
    const health = await server.app.inject({ method: 'GET', url: '/health' })
    expect(health.json()).toEqual({ status: 'loading' })
    await server.close()
    expect(loadSignal!.aborted).toBe(true)
    await expect(server.ready).rejects.toThrow(/load aborted/)
  })

  it('help and usage errors', async () => {
    const runCli = async (args: string[]) => {
      const p = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
      let out = ''
      p.stdout!.on('data', (d) => (out += d))
      p.stderr!.on('data', (d) => (out += d))
      const [code] = await once(p, 'exit')
      return { code, out }
    }
    const help = await runCli(['serve', '--help'])
    expect(help.code).toBe(0)
    expect(help.out).toMatch(/POST \/score/)
    expect((await runCli(['help', 'serve'])).out).toBe(help.out)
    const bad = await runCli(['serve', '--port', 'eighty'])
    expect(bad.code).toBe(2)
    expect(bad.out).toMatch(/E_USAGE: --port must be an integer/)
    expect((await runCli(['serve', '--colour'])).code).toBe(2)
    const kv = await runCli(['serve', '--kv-cache', 'q8'])
    expect(kv.code).toBe(2)
    expect(kv.out).toMatch(/E_USAGE: --kv-cache must be f32 or f16/)
    const missing = await runCli(['serve', '--model', '/nonexistent/m.gguf', '--port', '0'])
    expect(missing.code).toBe(1)
    expect(missing.out).toMatch(/phi2: E_IO: /)
  })

  it('SIGTERM lets a running stream finish, then exits 0; binds 127.0.0.1; CORS only with --cors', async () => {
    const s = await serve(['--model', fixture('tiny-q8_0.gguf'), '--cors', 'https://app.example'])
    expect(new URL(s.url).hostname).toBe('127.0.0.1')
    const pre = await fetch(`${s.url}/v1/completions`, { method: 'OPTIONS', headers: { origin: 'https://app.example', 'access-control-request-method': 'POST' } })
    expect(pre.status).toBe(204)
    expect(pre.headers.get('access-control-allow-origin')).toBe('https://app.example')
    const res = await fetch(`${s.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'x', max_tokens: 60, stream: true }) })
    expect(res.headers.get('access-control-allow-origin')).toBe('https://app.example')
    const reader = res.body!.getReader()
    await reader.read()
    s.proc.kill('SIGTERM')
    let body = ''
    const dec = new TextDecoder()
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      body += dec.decode(value)
    }
    expect(body.trim().endsWith('data: [DONE]')).toBe(true)
    expect(body).toMatch(/"finish_reason":"length"/)
    const [code] = await once(s.proc, 'exit')
    expect(code).toBe(0)
    const plain = await serve(['--model', fixture('tiny-q8_0.gguf')])
    const r = await fetch(`${plain.url}/health`, { headers: { origin: 'https://evil.example' } })
    expect(r.headers.get('access-control-allow-origin')).toBeNull()
    expect(plain.stderr()).not.toMatch(/warning/)
    expect(await plain.stop()).toBe(0)
    // Every interface without an API key: a warning on stderr.
    const open = await serve(['--model', fixture('tiny-q8_0.gguf'), '--host', '0.0.0.0'])
    expect(open.stderr()).toMatch(/warning: listening on 0\.0\.0\.0 .*without an API key.*PHI2_API_KEY/)
    expect(await open.stop()).toBe(0)
  })
})
