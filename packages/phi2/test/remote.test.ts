// The SDK's remote backend, `loadModel({ remote, model, apiKey })`: against `phi2 serve` on
// loopback (same text as the local SDK, streaming, AbortSignal, chat, typed errors) and against
// vLLM-style responses replayed from test/recordings (written by hand from the OpenAI and vLLM
// docs: see test/recordings/README.md), sent in small byte pieces.
import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { type IncomingMessage, type Server, createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Phi2AbortError, Phi2Error, Phi2RemoteModel, loadModel, type GenerateChunk, type Phi2Model } from '@x/phi2'
import { CLI, fixture } from './helpers.js'

async function collect(it: AsyncIterable<GenerateChunk>): Promise<GenerateChunk[]> {
  const out: GenerateChunk[] = []
  for await (const c of it) out.push(c)
  return out
}

describe('remote backend against phi2 serve', () => {
  let proc: ChildProcess
  let url: string
  let local: Phi2Model
  let remote: Phi2RemoteModel
  const KEY = 'remote-test-key'
  beforeAll(async () => {
    proc = spawn(process.execPath, [CLI, 'serve', '--port', '0', '--quiet', '--model', fixture('tiny-q8_0.gguf'), '--api-key', KEY], { stdio: ['ignore', 'ignore', 'pipe'] })
    let err = ''
    proc.stderr!.setEncoding('utf8')
    url = await new Promise<string>((resolve, reject) => {
      proc.stderr!.on('data', (d: string) => {
        err += d
        const m = /listening on (http:\/\/\S+)/.exec(err)
        if (m && /ready/.test(err)) resolve(m[1]!)
      })
      proc.once('exit', (code) => reject(new Error(`phi2 serve exited with ${code}: ${err}`)))
    })
    local = await loadModel(fixture('tiny-q8_0.gguf'))
    remote = await loadModel({ remote: `${url}/v1`, apiKey: KEY })
  })
  afterAll(async () => {
    local?.dispose()
    remote?.dispose()
    if (proc && proc.exitCode === null) {
      proc.kill('SIGTERM')
      await once(proc, 'exit')
    }
  })

  it('reports the served model; generate equals the local SDK (greedy and seeded sampling), with usage', async () => {
    expect(remote).toBeInstanceOf(Phi2RemoteModel)
    expect(remote.info).toMatchObject({ backend: 'remote', model: 'tiny-q8_0', contextLength: 128 })
    for (const opts of [{ maxNewTokens: 12 }, { maxNewTokens: 12, doSample: true, temperature: 0.8, topK: 20, topP: 0.9, seed: 11 }, { maxNewTokens: 10, format: 'qa' as const }]) {
      const [a, b] = await Promise.all([local.generate('The quick brown fox', opts), remote.generate('The quick brown fox', opts)])
      expect(b.text).toBe(a.text)
      expect(b.finishReason).toBe(a.finishReason)
      expect(b.usage).toMatchObject({ promptTokens: a.usage.promptTokens, completionTokens: a.usage.completionTokens })
    }
  })

  it('a stop string ends with finishReason stop and stopString, as locally', async () => {
    const ref = await local.generate('Hello', { maxNewTokens: 20 })
    const word = ref.text.trim().split(/\s+/)[1]!
    const [a, b] = await Promise.all([local.generate('Hello', { maxNewTokens: 20, stop: [word] }), remote.generate('Hello', { maxNewTokens: 20, stop: [word] })])
    expect(a.finishReason).toBe('stop')
    expect(b).toMatchObject({ text: a.text, finishReason: 'stop', stopString: word })
  })

  it('stream: chunks join to the text, last chunk has finishReason; AbortSignal rejects with Phi2AbortError', async () => {
    const want = await local.generate('Once upon a time', { maxNewTokens: 16 })
    const s = remote.stream('Once upon a time', { maxNewTokens: 16 })
    const chunks = await collect(s)
    expect(chunks.map((c) => c.text).join('')).toBe(want.text)
    expect(chunks.at(-1)!.finishReason).toBe('length')
    expect((await s.result).text).toBe(want.text)
    await expect(remote.generate('x', { signal: AbortSignal.abort() })).rejects.toBeInstanceOf(Phi2AbortError)
  })

  it('chat keeps the history and equals the server chat format', async () => {
    const chat = remote.createChat({ system: 'You are terse.' })
    const r1 = await chat.send('Hi', { maxNewTokens: 6 })
    expect(r1.usage.promptTokens).toBeGreaterThan(0)
    const r2 = await chat.send('And then?', { maxNewTokens: 6 })
    expect(chat.turns.map((t) => t.role)).toEqual(['user', 'bot', 'user', 'bot'])
    // The second turn's prompt holds the first exchange.
    expect(r2.usage.promptTokens).toBeGreaterThan(r1.usage.promptTokens + r1.usage.completionTokens)
    const streamed = await collect(chat.sendStream('Bye', { maxNewTokens: 4 }))
    expect(streamed.at(-1)!.finishReason).toBeDefined()
  })

  it('typed errors: bad key, unknown model, bad option, prompt too long, unreachable, local-only calls', async () => {
    await expect(loadModel({ remote: `${url}/v1`, apiKey: 'nope' })).rejects.toMatchObject({ code: 'E_REMOTE_AUTH', status: 401 })
    await expect(loadModel({ remote: `${url}/v1`, apiKey: KEY, model: 'gpt-4' })).rejects.toMatchObject({ code: 'E_REMOTE' })
    await expect(loadModel({ remote: 'ftp://x' })).rejects.toMatchObject({ code: 'E_INVALID_OPTION' })
    await expect(loadModel({ remote: 'http://127.0.0.1:9/v1' })).rejects.toMatchObject({ code: 'E_NETWORK' })
    await expect(remote.generate('x', { topP: 3 })).rejects.toMatchObject({ code: 'E_INVALID_OPTION' })
    await expect(remote.generate('x', { maxNewTokens: 100000 })).rejects.toMatchObject({ code: 'E_INVALID_OPTION', path: 'max_tokens' })
    await expect(remote.generate('word '.repeat(400), { maxNewTokens: 4 })).rejects.toMatchObject({ code: 'E_PROMPT_TOO_LONG' })
    expect(() => remote.tokenize('x')).toThrow(Phi2Error)
  })
})

describe('remote backend against recorded vLLM responses', () => {
  const dir = join(__dirname, 'recordings')
  const rec = (f: string) => readFileSync(join(dir, f))
  let server: Server
  let base: string
  const bodies: Record<string, unknown>[] = []
  let hangClosedResolve = () => {}
  const hangClosed = { promise: new Promise<void>((r) => (hangClosedResolve = r)), resolve: () => hangClosedResolve() }
  beforeAll(async () => {
    server = createServer(async (req: IncomingMessage, res) => {
      let raw = ''
      for await (const c of req) raw += c
      if (req.headers.authorization !== 'Bearer vllm-key') {
        res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ object: 'error', message: 'Unauthorized', type: 'invalid_request_error', param: null, code: 401 }))
        return
      }
      if (req.method === 'GET' && req.url === '/v1/models') {
        res.writeHead(200, { 'content-type': 'application/json' }).end(rec('vllm-models.json'))
        return
      }
      const body = JSON.parse(raw) as Record<string, unknown>
      bodies.push(body)
      if (body.prompt === 'hang') {
        // One event, then nothing until the client goes away.
        res.writeHead(200, { 'content-type': 'text/event-stream' })
        res.write(rec('vllm-completions-stream.sse').toString().split('\n\n')[0] + '\n\n')
        res.on('close', () => hangClosed.resolve())
        return
      }
      const firstEvent = rec('vllm-completions-stream.sse').toString().split('\n\n')[0] + '\n\n'
      if (body.prompt === 'ends' || body.prompt === 'dies' || body.prompt === 'stalls') {
        // One event, then: a clean end without finish_reason or [DONE], a reset connection, or silence.
        res.writeHead(200, { 'content-type': 'text/event-stream' })
        res.write(firstEvent)
        if (body.prompt === 'ends') res.end()
        else if (body.prompt === 'dies') setTimeout(() => res.socket?.destroy(), 20)
        return
      }
      if (body.prompt === 'garbage') {
        res.writeHead(200, { 'content-type': 'text/event-stream' })
        res.end(firstEvent + 'data: {"choices": [oops\n\n')
        return
      }
      if (body.prompt === 'plain garbage') {
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"choices": [')
        return
      }
      if (body.prompt === 'kept stop') {
        // An OpenAI-style answer (no stop_reason) whose text ends on a requested stop string.
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ choices: [{ index: 0, text: ' yes END', finish_reason: 'stop' }], usage: { prompt_tokens: 2, completion_tokens: 2, total_tokens: 4 } }))
        return
      }
      const file = req.url === '/v1/chat/completions' ? 'vllm-chat-stream.sse' : body.stream ? 'vllm-completions-stream.sse' : 'vllm-completions.json'
      const data = rec(file)
      if (!body.stream) {
        res.writeHead(200, { 'content-type': 'application/json' }).end(data)
        return
      }
      res.writeHead(200, { 'content-type': 'text/event-stream' })
      // Small pieces: events and UTF-8 split across reads.
      for (let i = 0; i < data.length; i += 7) {
        res.write(data.subarray(i, i + 7))
        await new Promise((r) => setImmediate(r))
      }
      res.end()
    })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`
  })
  afterAll(() => server?.close())

  it('loads, generates (plain and streamed) with stop_reason mapped to stopString, and sends OpenAI/vLLM fields', async () => {
    const m = await loadModel({ remote: base, apiKey: 'vllm-key' })
    expect(m.info).toMatchObject({ model: 'microsoft/phi-2', contextLength: 2048 })
    const text = ' A prime number is a natural number greater than 1 that has no divisors other than 1 and itself.'
    const plain = await m.generate('What is a prime number?', { format: 'qa', maxNewTokens: 64 })
    expect(plain).toMatchObject({ text, finishReason: 'stop', stopString: '\nInstruct:', usage: { promptTokens: 12, completionTokens: 22, totalTokens: 34 } })
    expect(bodies.at(-1)).toMatchObject({ model: 'microsoft/phi-2', prompt: 'Instruct: What is a prime number?\nOutput:', max_tokens: 64, temperature: 0, stream: false })
    expect(bodies.at(-1)!.stop).toEqual(['\nInstruct:', '\nExercise', '\nQuestion:', '<|endoftext|>'])
    expect(bodies.at(-1)!.top_k).toBeUndefined()
    const s = m.stream('What is a prime number?', { format: 'qa', doSample: true, temperature: 0.7, topP: 0.9, seed: 5 })
    const chunks = await collect(s)
    expect(chunks.map((c) => c.text).join('')).toBe(text)
    expect(chunks.at(-1)!.finishReason).toBe('stop')
    expect(await s.result).toMatchObject({ text, finishReason: 'stop', stopString: '\nInstruct:', usage: { completionTokens: 22 } })
    expect(bodies.at(-1)).toMatchObject({ stream: true, stream_options: { include_usage: true }, temperature: 0.7, top_p: 0.9, top_k: 50, seed: 5, max_tokens: 256 })
    m.dispose()
  })

  it('an AbortSignal mid-stream rejects with Phi2AbortError and closes the connection; cancel() ends with abort', async () => {
    const m = await loadModel({ remote: base, apiKey: 'vllm-key' })
    const ctl = new AbortController()
    const s = m.stream('hang', { signal: ctl.signal })
    const seen: GenerateChunk[] = []
    await expect(
      (async () => {
        for await (const c of s) {
          seen.push(c)
          ctl.abort()
        }
      })(),
    ).rejects.toBeInstanceOf(Phi2AbortError)
    expect(seen.map((c) => c.text)).toEqual([' A'])
    await expect(s.result).rejects.toMatchObject({ code: 'E_ABORTED' })
    await hangClosed.promise
    const c = m.stream('hang')
    const got: GenerateChunk[] = []
    for await (const x of c) {
      got.push(x)
      c.cancel()
    }
    expect(got.at(-1)!.finishReason).toBe('abort')
    expect(await c.result).toMatchObject({ text: ' A', finishReason: 'abort' })
    m.dispose()
  })

  it('a stream that ends early, a lost connection or a bad event is a typed error naming the server, not abort', async () => {
    const m = await loadModel({ remote: base, apiKey: 'vllm-key' })
    for (const prompt of ['ends', 'dies']) {
      const s = m.stream(prompt)
      const seen: string[] = []
      const err = await (async () => {
        for await (const c of s) seen.push(c.text)
      })().then(
        () => null,
        (e: unknown) => e,
      )
      expect(seen).toEqual([' A'])
      expect(err).toBeInstanceOf(Phi2Error)
      expect(err).toMatchObject({ name: 'Phi2RemoteError', code: 'E_NETWORK' })
      expect((err as Error).message).toContain(base)
      await expect(s.result).rejects.toMatchObject({ code: 'E_NETWORK' })
    }
    const bad = m.stream('garbage')
    await expect(collect(bad)).rejects.toMatchObject({ name: 'Phi2RemoteError', code: 'E_REMOTE', message: expect.stringContaining('not JSON') })
    await expect(m.generate('plain garbage')).rejects.toMatchObject({ name: 'Phi2RemoteError', code: 'E_REMOTE', message: expect.stringContaining('not JSON') })
    m.dispose()
  })

  it('timeoutMs also bounds the wait between pieces of a body (a server stalling mid-stream)', async () => {
    const m = await loadModel({ remote: base, apiKey: 'vllm-key', timeoutMs: 1000 })
    const s = m.stream('stalls')
    await expect(collect(s)).rejects.toMatchObject({ name: 'Phi2RemoteError', code: 'E_NETWORK', message: expect.stringContaining('timeoutMs') })
    await expect(s.result).rejects.toMatchObject({ code: 'E_NETWORK' })
    m.dispose()
  })

  it('without stop_reason, a text that ends on a requested stop string is finishReason stop', async () => {
    const m = await loadModel({ remote: base, apiKey: 'vllm-key' })
    expect(await m.generate('kept stop', { stop: ['END'] })).toMatchObject({ finishReason: 'stop', stopString: 'END' })
    expect(await m.generate('kept stop', { stop: ['NOPE'] })).toMatchObject({ finishReason: 'eos' })
    m.dispose()
  })

  it('chat stream (CRLF events) ends with length and the server usage; a wrong key is E_REMOTE_AUTH', async () => {
    const m = await loadModel({ remote: base, apiKey: 'vllm-key', model: 'microsoft/phi-2' })
    const chat = m.createChat({ system: 'Answer briefly.' })
    const s = chat.sendStream('What is the Fermi paradox?', { maxNewTokens: 12 })
    const chunks = await collect(s)
    expect(chunks.map((c) => c.text).join('')).toBe('The Fermi paradox asks why we have not found any sign of')
    expect(await s.result).toMatchObject({ finishReason: 'length', usage: { promptTokens: 19, completionTokens: 12 } })
    expect(bodies.at(-1)).toMatchObject({
      messages: [
        { role: 'system', content: 'Answer briefly.' },
        { role: 'user', content: 'What is the Fermi paradox?' },
      ],
      max_tokens: 12,
    })
    expect(chat.turns).toHaveLength(2)
    await expect(loadModel({ remote: base, apiKey: 'wrong' })).rejects.toMatchObject({ code: 'E_REMOTE_AUTH', status: 401 })
    m.dispose()
  })
})
