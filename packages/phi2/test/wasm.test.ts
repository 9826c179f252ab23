// backend 'wasm' in Node: the wasm engine in a worker thread (dist/wasm-worker.node.js driving
// dist/wasm/st = bindings/wasm/pkg, or dist/wasm/mt = pkg-mt with threads > 1) against the native
// cpu backend: same tokens, log-probs, streaming, cancellation, dispose, chat, every source kind,
// size checks, malformed files and a crashing worker.
import { readFileSync } from 'node:fs'
import { type AddressInfo } from 'node:net'
import { createServer, type Server } from 'node:http'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  Phi2AbortError,
  Phi2DisposedError,
  Phi2EngineCrashedError,
  Phi2ModelLoadError,
  loadModel,
  type GenerateChunk,
  type GenerateOptions,
  type LoadProgress,
  type Phi2Model,
} from '@x/phi2'
import { PKG_DIR, PROMPT_TEXT, fixture, maxAbsDiff } from './helpers.js'

const MT_BUILT = !readFileSync(join(PKG_DIR, 'dist/wasm/mt/phi2_wasm.js'), 'utf8').includes('__phi2_missing')
const ENGINE_MODEL = Symbol.for('@x/phi2/engine-model')
const CRASH = Symbol.for('@x/phi2/crash-engine-worker')

const SAMPLED: GenerateOptions = { doSample: true, temperature: 0.9, topK: 40, topP: 0.95, seed: 1234, maxNewTokens: 16 }

async function collect(iterable: AsyncIterable<GenerateChunk>): Promise<GenerateChunk[]> {
  const chunks: GenerateChunk[] = []
  for await (const c of iterable) chunks.push(c)
  return chunks
}

// ------------------------------------------------------------------ a loopback HTTP server

interface Served {
  /** Body bytes written to sockets for this path so far. */
  sent: number
  closed: boolean
}
let server: Server
let base = ''
const stats = new Map<string, Served>()
const q8 = readFileSync(fixture('tiny-q8_0.gguf'))

beforeAll(async () => {
  server = createServer((req, res) => {
    const path = req.url ?? '/'
    const st: Served = { sent: 0, closed: false }
    stats.set(path, st)
    res.on('close', () => (st.closed = true))
    const send = (body: Buffer, headers: Record<string, string>, chunk = 64 * 1024, delayMs = 0) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', ...headers })
      let o = 0
      const pump = () => {
        while (o < body.length && !res.destroyed) {
          const piece = body.subarray(o, Math.min(body.length, o + chunk))
          o += piece.length
          st.sent += piece.length
          const more = res.write(piece)
          if (o >= body.length) return void res.end()
          if (delayMs > 0) return void setTimeout(pump, delayMs)
          if (!more) return void res.once('drain', pump)
        }
      }
      pump()
    }
    if (path === '/tiny-q8_0.gguf') send(q8, { 'content-length': String(q8.length) })
    else if (path === '/slow.gguf') send(q8, { 'content-length': String(q8.length) }, 64 * 1024, 50)
    else if (path === '/no-length.gguf') send(q8, {}) // chunked transfer encoding
    else if (path === '/huge.gguf') {
      // Advertises 6 GB; would stream the fixture's bytes over and over.
      const total = 6 * 1024 ** 3
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(total) })
      const pump = () => {
        while (!res.destroyed && st.sent < total) {
          st.sent += q8.length
          if (!res.write(q8)) return void res.once('drain', pump)
        }
      }
      pump()
    } else {
      res.writeHead(404).end('not found')
    }
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})
afterAll(() => new Promise<void>((r) => server.close(() => r())))

// ------------------------------------------------------------------ parity with the cpu backend

const flavours: Array<{ name: string; threads: number; build: string }> = [{ name: 'st', threads: 1, build: 'wasm-simd' }]
if (MT_BUILT) flavours.push({ name: 'mt', threads: 2, build: 'wasm-simd-threads' })
else console.warn('# bindings/wasm/pkg-mt was not built into dist/wasm/mt: the threaded (mt) cases are not run')

describe.each(flavours)('backend wasm ($name, threads $threads)', ({ threads, build }) => {
  let cpu: Phi2Model
  let wasm: Phi2Model
  beforeAll(async () => {
    cpu = await loadModel(fixture('tiny-q8_0.gguf'))
    wasm = await loadModel(fixture('tiny-q8_0.gguf'), { backend: 'wasm', threads })
  })
  afterAll(() => {
    cpu?.dispose()
    wasm?.dispose()
  })

  it('reports its runtime', () => {
    expect(wasm.info.backend).toBe('wasm')
    expect(wasm.info.runtime).toMatchObject({ backend: 'wasm', build, threads })
    expect(wasm.info.runtime.reason).toMatch(threads === 1 ? /threads: 1 requested/ : /SharedArrayBuffer available, 2 threads/)
    expect(wasm.info.fileSizeBytes).toBe(q8.length)
    expect(wasm.info.tokenizer).toBe('gguf')
    expect(wasm.info.fromCache).toBe(false)
    expect(cpu.info.runtime).toMatchObject({ backend: 'cpu', build: 'native' })
  })

  it('gives the cpu backend\'s tokens, greedy and seeded sampling; stream chunks join to generate()', async () => {
    for (const opts of [{ maxNewTokens: 24 }, SAMPLED, { ...SAMPLED, seed: 7, topK: 0 }]) {
      const expected = await cpu.generate(PROMPT_TEXT, opts)
      const got = await wasm.generate(PROMPT_TEXT, opts)
      expect(got.tokens).toEqual(expected.tokens)
      expect(got.text).toBe(expected.text)
      expect(got.finishReason).toBe(expected.finishReason)
      expect(got.usage).toEqual(expected.usage)
      const stream = wasm.stream(PROMPT_TEXT, opts)
      const chunks = await collect(stream)
      expect(chunks.map((c) => c.text).join('')).toBe(expected.text)
      expect(chunks.flatMap((c) => c.tokens)).toEqual(expected.tokens)
      expect((await stream.result).tokens).toEqual(expected.tokens)
    }
  })

  it('log-probs within 1e-4 of cpu (q8_0 and f32)', async () => {
    const tokens = wasm.tokenize(PROMPT_TEXT)
    expect(maxAbsDiff(await wasm.logprobs(tokens), await cpu.logprobs(tokens))).toBeLessThanOrEqual(1e-4)
    const f32c = await loadModel(fixture('tiny-f32.gguf'))
    const f32w = await loadModel(fixture('tiny-f32.gguf'), { backend: 'wasm', threads })
    try {
      const rows = await f32w.logprobs(tokens)
      expect(rows.length).toBe(tokens.length * f32w.info.vocabSize)
      expect(maxAbsDiff(rows, await f32c.logprobs(tokens))).toBeLessThanOrEqual(1e-4)
    } finally {
      f32c.dispose()
      f32w.dispose()
    }
  })

  it('concurrent calls queue in the worker and each gets its own result', async () => {
    const opts = [{ maxNewTokens: 12 }, SAMPLED, { ...SAMPLED, seed: 3 }]
    const expected = await Promise.all(opts.map((o) => cpu.generate(PROMPT_TEXT, o)))
    const got = await Promise.all(opts.map((o) => wasm.generate(PROMPT_TEXT, o)))
    expect(got.map((r) => r.tokens)).toEqual(expected.map((r) => r.tokens))
  })

  it('aborts before and during generation; a stream break stops it', async () => {
    const ac = new AbortController()
    ac.abort()
    await expect(wasm.generate(PROMPT_TEXT, { signal: ac.signal })).rejects.toBeInstanceOf(Phi2AbortError)
    const during = new AbortController()
    const seen: number[] = []
    const stream = wasm.stream(PROMPT_TEXT, { maxNewTokens: 100, signal: during.signal })
    await expect(
      (async () => {
        for await (const c of stream) {
          seen.push(...c.tokens)
          if (seen.length >= 3) during.abort()
        }
      })(),
    ).rejects.toMatchObject({ code: 'E_ABORTED' })
    await expect(stream.result).rejects.toBeInstanceOf(Phi2AbortError)
    expect(seen.length).toBeGreaterThanOrEqual(3)
    const s2 = wasm.stream(PROMPT_TEXT, { maxNewTokens: 60 })
    let n = 0
    for await (const c of s2) {
      n += c.tokens.length
      if (n >= 2) break
    }
    const r = await s2.result
    expect(r.finishReason).toBe('abort')
    expect(r.tokens.length).toBeLessThan(60)
    // The engine is still fine afterwards.
    expect((await wasm.generate(PROMPT_TEXT, { maxNewTokens: 4 })).tokens).toEqual((await cpu.generate(PROMPT_TEXT, { maxNewTokens: 4 })).tokens)
  })

  it('a chat\'s second turn evaluates only the new tokens (the worker keeps the session)', async () => {
    const chat = wasm.createChat()
    const cchat = cpu.createChat()
    const a1 = await chat.send('Hello there', { maxNewTokens: 8 })
    const c1 = await cchat.send('Hello there', { maxNewTokens: 8 })
    expect(a1.tokens).toEqual(c1.tokens)
    const a2 = await chat.send('And then?', { maxNewTokens: 8 })
    const c2 = await cchat.send('And then?', { maxNewTokens: 8 })
    expect(a2.tokens).toEqual(c2.tokens)
    expect(a2.usage.promptTokensEvaluated).toBe(c2.usage.promptTokensEvaluated)
    expect(a2.usage.promptTokensEvaluated).toBeLessThan(a2.usage.promptTokens / 2)
    chat.dispose()
    cchat.dispose()
  })
})

describe('backend wasm: runtime choice', () => {
  it('the shipped engine builds have the streamed loader and step-wise generation the worker requires', () => {
    for (const flavour of MT_BUILT ? ['st', 'mt'] : ['st']) {
      const glue = readFileSync(join(PKG_DIR, 'dist/wasm', flavour, 'phi2_wasm.js'), 'utf8')
      expect(glue, flavour).toMatch(/export class WasmModelLoader/)
      expect(glue, flavour).toMatch(/\bbegin\(tokens, options\)/)
      expect(glue, flavour).toMatch(/\bstep\(\)/)
    }
  })

  it(MT_BUILT ? 'threads > 1 runs the threaded build' : 'threads > 1 without pkg-mt in the package falls back to st and says why', async () => {
    const m = await loadModel(fixture('tiny-q8_0.gguf'), { backend: 'wasm', threads: 2 })
    try {
      if (MT_BUILT) expect(m.info.runtime).toMatchObject({ build: 'wasm-simd-threads', threads: 2 })
      else {
        expect(m.info.runtime).toMatchObject({ build: 'wasm-simd', threads: 1 })
        expect(m.info.runtime.reason).toMatch(/multi-threaded build \(pkg-mt\) is not in this package/)
      }
      expect((await m.generate('Hello', { maxNewTokens: 5 })).tokens).toEqual([11044, 44899, 13104, 2952, 25581])
    } finally {
      m.dispose()
    }
  })
})

describe('backend wasm: lifecycle', () => {
  it('dispose during generation rejects with E_DISPOSED and ends the worker', async () => {
    const m = await loadModel(fixture('tiny-q8_0.gguf'), { backend: 'wasm', threads: 1 })
    const stream = m.stream(PROMPT_TEXT, { maxNewTokens: 100 })
    const it = stream[Symbol.asyncIterator]()
    await it.next()
    const pending = m.generate(PROMPT_TEXT, { maxNewTokens: 50 })
    m.dispose()
    await expect(stream.result).rejects.toBeInstanceOf(Phi2DisposedError)
    await expect(pending).rejects.toMatchObject({ code: 'E_DISPOSED' })
    await expect(m.generate('x')).rejects.toMatchObject({ code: 'E_DISPOSED' })
  })

  for (const mode of ['throw', 'exit'] as const) {
    it(`a worker that dies mid-generation (${mode}) rejects every pending call with E_ENGINE_CRASHED`, async () => {
      const m = await loadModel(fixture('tiny-q8_0.gguf'), { backend: 'wasm', threads: 1 })
      const stream = m.stream(PROMPT_TEXT, { maxNewTokens: 100 })
      const queued = m.generate(PROMPT_TEXT, { maxNewTokens: 10 })
      const it = stream[Symbol.asyncIterator]()
      await it.next()
      ;(m as unknown as Record<symbol, Record<symbol, (mode: string) => void>>)[ENGINE_MODEL]![CRASH]!(mode)
      await expect(stream.result).rejects.toBeInstanceOf(Phi2EngineCrashedError)
      await expect(queued).rejects.toMatchObject({ code: 'E_ENGINE_CRASHED' })
      await expect(m.generate('x', { maxNewTokens: 2 })).rejects.toMatchObject({ code: 'E_ENGINE_CRASHED' })
      await expect(m.logprobs([1, 2])).rejects.toMatchObject({ code: 'E_ENGINE_CRASHED' })
      m.dispose()
    })
  }
})

describe('backend wasm: contextLength', () => {
  it('caps the engine\'s context (the memory it plans for) and reports the trained one', async () => {
    const m = await loadModel(fixture('tiny-q8_0.gguf'), { backend: 'wasm', threads: 1, contextLength: 40 })
    try {
      expect(m.info.contextLength).toBe(40)
      expect(m.info.trainedContextLength).toBe(128)
      const prompt = Array.from({ length: 30 }, (_, i) => 464 + i)
      const r = await m.generate(prompt, { maxNewTokens: 40 })
      expect(prompt.length + r.tokens.length).toBeLessThanOrEqual(40)
      await expect(m.logprobs(Array.from({ length: 41 }, () => 464))).rejects.toMatchObject({ code: 'E_INVALID_OPTION' })
    } finally {
      m.dispose()
    }
    await expect(loadModel(fixture('tiny-q8_0.gguf'), { backend: 'wasm', threads: 1, contextLength: 129 })).rejects.toMatchObject({
      name: 'Phi2OptionsError',
    })
  })
})

describe('backend wasm: kvCache', () => {
  it("'f16' gives the native engine's f16 results and is reported", async () => {
    const path = fixture('tiny-q8_0.gguf')
    const [wasm, cpu] = await Promise.all([
      loadModel(path, { backend: 'wasm', threads: 1, kvCache: 'f16' }),
      loadModel(path, { backend: 'cpu', kvCache: 'f16' }),
    ])
    try {
      expect(wasm.info.kvCache).toBe('f16')
      expect(cpu.info.kvCache).toBe('f16')
      // A prompt of 16+ tokens: its pass reads the cache through the widened f32 copy.
      const prompt = `${PROMPT_TEXT} ${PROMPT_TEXT} ${PROMPT_TEXT}`
      const tokens = wasm.tokenize(prompt)
      expect(tokens.length).toBeGreaterThanOrEqual(16)
      const opts = { maxNewTokens: 16 }
      expect((await wasm.generate(prompt, opts)).tokens).toEqual((await cpu.generate(prompt, opts)).tokens)
      // Quantized weights: the same bits as native (as with f32 caches).
      expect(Buffer.from((await wasm.logprobs(tokens)).buffer)).toEqual(Buffer.from((await cpu.logprobs(tokens)).buffer))
    } finally {
      wasm.dispose()
      cpu.dispose()
    }
    await expect(loadModel(fixture('tiny-q8_0.gguf'), { backend: 'wasm', threads: 1, kvCache: 'bf16' as never })).rejects.toMatchObject({
      name: 'Phi2OptionsError',
      path: 'kvCache',
    })
  })
})

describe('backend wasm: sources', () => {
  const expectedTokens = async (m: Phi2Model) => (await m.generate('Hello', { maxNewTokens: 5 })).tokens
  const EXPECTED = [11044, 44899, 13104, 2952, 25581] // greedy after "Hello" on tiny-q8_0 (package.test.ts)

  it('loads from a path, a Uint8Array (transferred), an ArrayBuffer and a Blob', async () => {
    const bytes = new Uint8Array(readFileSync(fixture('tiny-q8_0.gguf')))
    const sources: Array<[unknown, string]> = [
      [fixture('tiny-q8_0.gguf'), fixture('tiny-q8_0.gguf')],
      [pathToFileURL(fixture('tiny-q8_0.gguf')), fixture('tiny-q8_0.gguf')],
      [bytes, 'bytes'],
      [q8.buffer.slice(q8.byteOffset, q8.byteOffset + q8.byteLength), 'bytes'],
      [new Blob([q8]), 'blob'],
      [new File([q8], 'named.gguf'), 'named.gguf'],
    ]
    for (const [source, display] of sources) {
      const progress: LoadProgress[] = []
      const m = await loadModel(source as Blob, { backend: 'wasm', threads: 1, onProgress: (p) => progress.push(p) })
      try {
        expect(await expectedTokens(m)).toEqual(EXPECTED)
        expect(m.info.source).toBe(display)
        expect(m.info.fileSizeBytes).toBe(q8.length)
        const dl = progress.filter((p) => p.phase === 'download')
        expect(dl.at(-1)).toMatchObject({ loadedBytes: q8.length, totalBytes: q8.length, progress: 1 })
      } finally {
        m.dispose()
      }
    }
    expect(bytes.byteLength).toBe(0) // transferred to the worker, no copy
  })

  it('loads over http with monotonic download progress ending at totalBytes', async () => {
    const progress: LoadProgress[] = []
    const m = await loadModel(`${base}/tiny-q8_0.gguf`, { backend: 'wasm', threads: 1, onProgress: (p) => progress.push(p) })
    try {
      expect(await expectedTokens(m)).toEqual(EXPECTED)
      expect(m.info.source).toBe(`${base}/tiny-q8_0.gguf`)
      expect(m.info.fromCache).toBe(false) // no Cache API in Node
      const dl = progress.filter((p) => p.phase === 'download')
      expect(dl.length).toBeGreaterThan(2)
      for (let i = 1; i < dl.length; i++) expect(dl[i]!.loadedBytes!).toBeGreaterThanOrEqual(dl[i - 1]!.loadedBytes!)
      expect(dl.every((p) => p.totalBytes === q8.length)).toBe(true)
      expect(dl.at(-1)!.loadedBytes).toBe(q8.length)
      expect(progress.map((p) => p.phase)).toEqual([
        'loading',
        ...dl.map(() => 'download'),
        'loading',
        'tokenizer',
        'ready',
      ])
    } finally {
      m.dispose()
    }
  })

  it('E_MODEL_TOO_LARGE from Content-Length before the body is downloaded', async () => {
    const err = await loadModel(`${base}/huge.gguf`, { backend: 'wasm', threads: 1 }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(Phi2ModelLoadError)
    expect(err).toMatchObject({ code: 'E_MODEL_TOO_LARGE', source: `${base}/huge.gguf` })
    await new Promise((r) => setTimeout(r, 200))
    const st = stats.get('/huge.gguf')!
    expect(st.closed).toBe(true)
    expect(st.sent).toBeLessThan(64 * 1024 * 1024) // of 6 GB: only what socket buffers took
  })

  it('aborts an in-flight download', async () => {
    const ac = new AbortController()
    const progress: LoadProgress[] = []
    const p = loadModel(`${base}/slow.gguf`, {
      backend: 'wasm',
      threads: 1,
      signal: ac.signal,
      onProgress: (x) => {
        progress.push(x)
        if (x.phase === 'download' && (x.loadedBytes ?? 0) > 0) ac.abort()
      },
    })
    await expect(p).rejects.toBeInstanceOf(Phi2AbortError)
    await new Promise((r) => setTimeout(r, 300))
    const st = stats.get('/slow.gguf')!
    expect(st.closed).toBe(true)
    expect(st.sent).toBeLessThan(q8.length)
  })

  it('rejects what it cannot read with typed errors', async () => {
    const noLen = await loadModel(`${base}/no-length.gguf`, { backend: 'wasm', threads: 1 }).catch((e: unknown) => e)
    expect(noLen).toMatchObject({ code: 'E_UNKNOWN_SIZE', name: 'Phi2ModelLoadError' })
    expect((noLen as Error).message).toMatch(/Content-Length/)
    const missing = await loadModel(`${base}/missing.gguf`, { backend: 'wasm', threads: 1 }).catch((e: unknown) => e)
    expect(missing).toMatchObject({ code: 'E_IO', name: 'Phi2ModelLoadError' })
    expect((missing as Error).message).toMatch(/404/)
    // safetensors: by name before anything is read, and by content.
    const st1 = await loadModel(join(fixture('tiny'), 'model.safetensors'), { backend: 'wasm' }).catch((e: unknown) => e)
    expect(st1).toMatchObject({ code: 'E_UNSUPPORTED_FORMAT' })
    expect((st1 as Error).message).toMatch(/GGUF/)
    const stBytes = new Uint8Array(readFileSync(join(fixture('tiny'), 'model.safetensors')).subarray(0, 1 << 20))
    const st2 = await loadModel(new Blob([stBytes]), { backend: 'wasm', threads: 1 }).catch((e: unknown) => e)
    expect(st2).toMatchObject({ code: 'E_UNSUPPORTED_FORMAT', name: 'Phi2ModelLoadError' })
    const dir = await loadModel(fixture('tiny'), { backend: 'wasm' }).catch((e: unknown) => e)
    expect(dir).toMatchObject({ code: 'E_UNSUPPORTED_FORMAT' })
    // Malformed GGUF: garbage, and a truncated file.
    const garbage = await loadModel(new Uint8Array(4096).fill(7), { backend: 'wasm', threads: 1 }).catch((e: unknown) => e)
    expect(garbage).toMatchObject({ code: 'E_MALFORMED_FILE', name: 'Phi2ModelLoadError' })
    const truncated = await loadModel(q8.subarray(0, 100_000).slice(), { backend: 'wasm', threads: 1 }).catch((e: unknown) => e)
    expect(truncated).toMatchObject({ code: 'E_MALFORMED_FILE', name: 'Phi2ModelLoadError' })
    const dataUrl = await loadModel(new URL('data:application/octet-stream;base64,R0dVRg=='), { backend: 'wasm' }).catch((e: unknown) => e)
    expect(dataUrl).toMatchObject({ code: 'E_INVALID_OPTION', path: 'source' })
    expect((dataUrl as Error).message).toMatch(/data: URLs are not supported.*Uint8Array/)
    const bad = await loadModel(42 as never, { backend: 'wasm' }).catch((e: unknown) => e)
    expect(bad).toMatchObject({ code: 'E_INVALID_OPTION', path: 'source' })
  })
})
