// The engine worker's Cache API path (browsers; Node has no `caches`), run in-process: the worker
// core (src/wasm/worker-core.ts) with the real single-threaded engine (bindings/wasm/pkg), a loopback
// HTTP server and an in-memory CacheStorage. First load downloads and stores (sha256 recorded only
// after the load completed), the next comes from the cache (verified), a corrupted entry is deleted
// and downloaded again, an aborted download leaves nothing cached.
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { type AddressInfo } from 'node:net'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { FromWorker, LoadReply, Request } from '../src/wasm/protocol.js'
import { type Glue, runWorker } from '../src/wasm/worker-core.js'
import { PKG_DIR, fixture } from './helpers.js'

const file = readFileSync(fixture('tiny-q8_0.gguf'))
const fileSha = createHash('sha256').update(file).digest('hex')

class FakeCache {
  readonly entries = new Map<string, { body: Uint8Array; headers: [string, string][] }>()
  async match(url: string): Promise<Response | undefined> {
    const e = this.entries.get(url)
    return e ? new Response(e.body.slice(), { headers: e.headers }) : undefined
  }
  async put(url: string, res: Response): Promise<void> {
    if (stallPuts) return new Promise<void>(() => {}) // a writer that never reads and never settles
    const body = new Uint8Array(await res.arrayBuffer()) // rejects if the stream errors (aborted download)
    this.entries.set(url, { body, headers: [...res.headers.entries()] })
    afterPut?.(this, url)
  }
  async delete(url: string): Promise<boolean> {
    return this.entries.delete(url)
  }
}
const stores = new Map<string, FakeCache>()
/** Runs after an entry is stored (tests look at the other store then). */
let afterPut: ((store: FakeCache, url: string) => void) | null = null
let stallPuts = false
const fakeCaches = {
  async open(name: string) {
    let c = stores.get(name)
    if (!c) stores.set(name, (c = new FakeCache()))
    return c
  },
}

let server: Server
let base = ''
const hits = new Map<string, number>()
let glue: Glue
let module: WebAssembly.Module

beforeAll(async () => {
  // dist/wasm/st is bindings/wasm/pkg as the package ships it.
  const dir = join(PKG_DIR, 'dist/wasm/st')
  glue = (await import(pathToFileURL(join(dir, 'phi2_wasm.js')).href)) as Glue
  module = await WebAssembly.compile(readFileSync(join(dir, 'phi2_wasm_bg.wasm')))
  server = createServer((req, res) => {
    const path = req.url ?? '/'
    hits.set(path, (hits.get(path) ?? 0) + 1)
    res.writeHead(200, { 'content-length': String(file.length), 'content-type': 'application/octet-stream' })
    let o = 0
    const slow = path.startsWith('/slow')
    const pump = () => {
      while (o < file.length && !res.destroyed) {
        const piece = file.subarray(o, o + 256 * 1024)
        o += piece.length
        const more = res.write(piece)
        if (o >= file.length) return void res.end()
        if (slow) return void setTimeout(pump, 30)
        if (!more) return void res.once('drain', pump)
      }
    }
    pump()
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  ;(globalThis as { caches?: unknown }).caches = fakeCaches
})
afterAll(async () => {
  delete (globalThis as { caches?: unknown }).caches
  await new Promise<void>((r) => server.close(() => r()))
})

/** One in-process "engine worker". */
/** Resolves once the worker reported downloaded bytes. */
function downloadStarted(w: ReturnType<typeof worker>): Promise<void> {
  return new Promise<void>((resolve) => {
    const t = setInterval(() => {
      if (w.events.some((e) => e.kind === 'progress' && e.loadedBytes > 0)) {
        clearInterval(t)
        resolve()
      }
    }, 5)
  })
}

function worker(cacheStallMs = 300) {
  const events: FromWorker[] = []
  const waiting = new Map<number, (m: FromWorker) => void>()
  let send: ((m: unknown) => void) | null = null
  let next = 1
  runWorker({
    post: (m) => {
      events.push(m)
      if (m.kind === 'reply') waiting.get(m.id)?.(m)
    },
    listen: (cb) => {
      send = cb as (m: unknown) => void
    },
    glue: { st: glue, mt: glue },
    compile: async () => module,
    yieldNow: () => new Promise((r) => setImmediate(r)),
    exitNow: () => {},
    cacheStallMs,
  })
  const call = async <T>(req: Request): Promise<T> => {
    const id = next++
    const reply = new Promise<FromWorker>((r) => waiting.set(id, r))
    send!({ kind: 'call', id, req })
    const m = await reply
    if (m.kind !== 'reply') throw new Error('unexpected')
    if (!m.ok) throw Object.assign(new Error(m.error.message), { code: m.error.code })
    return m.value as T
  }
  return { events, call, send: (m: unknown) => send!(m), nextId: () => next }
}

async function loadVia(url: string) {
  const w = worker()
  await w.call({ op: 'init', flavour: 'st' })
  const r = await w.call<LoadReply>({ op: 'load', source: { kind: 'url', url, name: 'm.gguf' }, cache: true })
  await w.call({ op: 'session', sid: 1 })
  const g = await w.call<{ tokens: number[] }>({
    op: 'generate',
    sid: 1,
    tokens: [15496],
    options: { maxNewTokens: 5, doSample: false, temperature: 1, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, presencePenalty: 0, frequencyPenalty: 0, logitBiasIds: [], logitBiasValues: [], seed: 0, stopOnEos: true },
  })
  await w.call({ op: 'dispose' })
  return { r, tokens: g.tokens, events: w.events }
}

const EXPECTED = [11044, 44899, 13104, 2952, 25581] // greedy after "Hello" on tiny-q8_0

describe('wasm engine worker: Cache API', () => {
  it('stores a completed download with its sha256, then loads from the cache', async () => {
    const url = `${base}/model.gguf`
    const first = await loadVia(url)
    expect(first.r).toMatchObject({ fromCache: false, sha256: fileSha, fileSizeBytes: file.length })
    expect(first.tokens).toEqual(EXPECTED)
    expect(hits.get('/model.gguf')).toBe(1)
    expect(stores.get('phi2-models-v1')!.entries.get(url)!.body.length).toBe(file.length)
    expect(JSON.parse(new TextDecoder().decode(stores.get('phi2-models-meta-v1')!.entries.get(url)!.body))).toEqual({
      sha256: fileSha,
      length: file.length,
    })

    const second = await loadVia(url)
    expect(second.r).toMatchObject({ fromCache: true, sha256: fileSha })
    expect(second.tokens).toEqual(EXPECTED)
    expect(hits.get('/model.gguf')).toBe(1) // no network
    const dl = second.events.filter((e) => e.kind === 'progress')
    expect(dl.every((e) => e.kind === 'progress' && e.fromCache)).toBe(true)
  })

  it('a corrupted cache entry is deleted and downloaded again', async () => {
    const url = `${base}/model.gguf`
    const entry = stores.get('phi2-models-v1')!.entries.get(url)!
    entry.body[entry.body.length - 100]! ^= 0xff // tensor data: parses, but the sha256 differs
    const third = await loadVia(url)
    expect(third.events.some((e) => e.kind === 'progress' && e.phase === 'cache-invalid')).toBe(true)
    expect(third.r).toMatchObject({ fromCache: false, sha256: fileSha })
    expect(third.tokens).toEqual(EXPECTED)
    expect(hits.get('/model.gguf')).toBe(2)
    expect(Buffer.compare(stores.get('phi2-models-v1')!.entries.get(url)!.body, file)).toBe(0)
  })

  it('a stale sha256 entry is gone before a new body is stored (body and metadata never disagree)', async () => {
    const url = `${base}/stale.gguf`
    const meta = (await fakeCaches.open('phi2-models-meta-v1')) as FakeCache
    const body = (await fakeCaches.open('phi2-models-v1')) as FakeCache
    // The metadata of an earlier file of the same length, whose body was evicted.
    const stale = JSON.stringify({ sha256: '0'.repeat(64), length: file.length })
    meta.entries.set(url, { body: new TextEncoder().encode(stale), headers: [] })
    const metaWhenBodyStored: (string | null)[] = []
    afterPut = (store, u) => {
      if (store === body && u === url) {
        const e = meta.entries.get(url)
        metaWhenBodyStored.push(e ? new TextDecoder().decode(e.body) : null)
      }
    }
    try {
      const r = await loadVia(url)
      expect(r.r).toMatchObject({ fromCache: false, sha256: fileSha })
    } finally {
      afterPut = null
    }
    expect(metaWhenBodyStored).toEqual([null])
    expect(JSON.parse(new TextDecoder().decode(meta.entries.get(url)!.body))).toEqual({ sha256: fileSha, length: file.length })
  })

  it('a cache writer that stalls is dropped: the load completes (no hang) and nothing is cached', async () => {
    const url = `${base}/stall.gguf`
    stallPuts = true
    let r: Awaited<ReturnType<typeof loadVia>>
    try {
      r = await loadVia(url)
    } finally {
      stallPuts = false
    }
    expect(r.r).toMatchObject({ fromCache: false, sha256: fileSha, fileSizeBytes: file.length })
    expect(r.tokens).toEqual(EXPECTED)
    expect(stores.get('phi2-models-v1')!.entries.has(url)).toBe(false)
    expect(stores.get('phi2-models-meta-v1')!.entries.has(url)).toBe(false)
  }, 15_000)

  it('names a safetensors file whose first bytes arrive in small pieces (the format check sees 16 bytes)', async () => {
    const header = new TextEncoder().encode('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')
    const st = new Uint8Array(8 + header.length + 4)
    new DataView(st.buffer).setBigUint64(0, BigInt(header.length), true)
    st.set(header, 8)
    const pieces = [st.subarray(0, 3), st.subarray(3, 7), st.subarray(7, 12), st.subarray(12)]
    const blob = {
      size: st.length,
      stream: () =>
        new ReadableStream<Uint8Array>({
          pull(c) {
            const p = pieces.shift()
            if (p) c.enqueue(p)
            else c.close()
          },
        }),
    } as unknown as Blob
    const w = worker()
    await w.call({ op: 'init', flavour: 'st' })
    await expect(w.call({ op: 'load', source: { kind: 'blob', blob, name: 'model.bin' }, cache: false })).rejects.toMatchObject({
      code: 'E_UNSUPPORTED_FORMAT',
      message: expect.stringMatching(/safetensors/),
    })
  })

  it('an abort while the download waits for a slow cache writer ends the load at once', async () => {
    const url = `${base}/slow-writer.gguf`
    const w = worker(20_000)
    await w.call({ op: 'init', flavour: 'st' })
    const id = w.nextId()
    stallPuts = true
    try {
      const loading = w.call({ op: 'load', source: { kind: 'url', url, name: 'm.gguf' }, cache: true })
      await downloadStarted(w)
      await new Promise((r) => setTimeout(r, 50)) // the loader now waits for the writer
      const t0 = Date.now()
      w.send({ kind: 'abortLoad', id })
      await expect(loading).rejects.toMatchObject({ code: 'E_ABORTED' })
      expect(Date.now() - t0).toBeLessThan(5000)
    } finally {
      stallPuts = false
    }
    expect(stores.get('phi2-models-meta-v1')!.entries.has(url)).toBe(false)
  }, 40_000)

  it('an aborted download leaves nothing in the cache', async () => {
    const url = `${base}/slow.gguf`
    const w = worker()
    await w.call({ op: 'init', flavour: 'st' })
    const id = w.nextId()
    const loading = w.call({ op: 'load', source: { kind: 'url', url, name: 'slow.gguf' }, cache: true })
    await downloadStarted(w)
    w.send({ kind: 'abortLoad', id })
    await expect(loading).rejects.toMatchObject({ code: 'E_ABORTED' })
    expect(stores.get('phi2-models-v1')!.entries.has(url)).toBe(false)
    expect(stores.get('phi2-models-meta-v1')!.entries.has(url)).toBe(false)
  })
})
