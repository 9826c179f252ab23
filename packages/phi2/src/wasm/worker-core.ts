/**
 * The wasm engine worker (platform-neutral core; `wasm-worker.ts` / `wasm-worker-node.ts` give it
 * the glue modules and the platform's messaging). Roles, chosen by the first message:
 *
 * - engine: instantiates pkg (st) or pkg-mt (mt), loads the model by streaming the source (fetch,
 *   Cache API, `blob.stream()`, transferred bytes, a file in Node) into `WasmModelLoader`, keeps
 *   sessions by id, and runs generate / logprobs calls one at a time (a FIFO queue). Generation is
 *   step-wise (`begin` / `step` / `end`) and yields to the event loop between tokens, so a `cancel`
 *   message is handled before the next token; tokens are posted as they come.
 * - thread (pkg-mt / pkg-relaxed): `initSync({ module, memory })` then `threadWorkerRun()`, which never returns.
 */
import type { EngineGenerateOptions, EngineGenerateResult, EngineGgufVocab, EngineModelInfo, EngineSource } from '../engine.js'
import { type Flavour, type FromWorker, type InitReply, type LoadReply, type Request, type ToWorker, toWire } from './protocol.js'
import { relaxedSimdCheck } from './relaxed-simd.js'

// ---------------------------------------------------------------------------------------------
// What the worker needs from the wasm-bindgen glue (pkg and pkg-mt export the same names)

interface WasmSessionLike {
  begin(tokens: Uint32Array, options: Partial<EngineGenerateOptions>): void
  step(): number | undefined
  end(): EngineGenerateResult
  reset(): void
  dispose(): void
  free?(): void
}

interface WasmModelLike {
  readonly info: EngineModelInfo
  ggufVocab(): EngineGgufVocab | null
  createSession(): WasmSessionLike
  logprobs(tokens: Uint32Array, cancel: unknown): Float32Array
  dispose(): void
  free?(): void
}

interface LoaderLike {
  push(chunk: Uint8Array): void
  readonly received: number
  sha256(): string | null
  finish(): WasmModelLike
  free?(): void
}

export interface Glue {
  initSync(arg: { module: WebAssembly.Module; memory?: WebAssembly.Memory }): { memory: WebAssembly.Memory }
  WasmModelLoader: new (name: string, totalBytes: number, hash: boolean, contextLength?: number, kvCache?: string) => LoaderLike
  threadsSupported?(): boolean
  threadWorkerRun?(): void
  threadPoolBuild?(n: number): void
  threadPoolSize?(): number
  /** Set by the package build when pkg-mt was not available: a placeholder module. */
  __phi2_missing?: boolean
}

export interface WorkerHost {
  post(msg: FromWorker, transfer?: Transferable[]): void
  listen(cb: (msg: ToWorker) => void): void
  /** relaxed: absent in hosts that never load pkg-relaxed (they run mt). */
  glue: { st: Glue; mt: Glue; relaxed?: Glue }
  /** The compiled .wasm of a flavour (browser: fetched from its bundled URL; Node: read from dist/wasm). */
  compile(flavour: Flavour): Promise<WebAssembly.Module>
  /** Node: a file as a stream. */
  openPath?(path: string): Promise<{ size: number; stream: ReadableStream<Uint8Array> }>
  /** A macrotask turn (lets queued messages, e.g. cancel, run). */
  yieldNow(): Promise<void>
  /** Ends this worker thread at once (test hook). */
  exitNow(): void
  /** How long the download may wait for the Cache API writer before caching is given up (default 30 s). */
  cacheStallMs?: number
}

function coded(code: string, message: string): Error & { code: string } {
  const e = new Error(message) as Error & { code: string }
  e.code = code
  return e
}

const CHUNK = 4 << 20
const CACHE_BODY = 'phi2-models-v1'
const CACHE_META = 'phi2-models-meta-v1'

/** GGUF magic check on the first bytes: names safetensors files explicitly. */
function checkMagic(head: Uint8Array, name: string): void {
  if (head.byteLength < 9) return
  if (head[0] === 0x47 && head[1] === 0x47 && head[2] === 0x55 && head[3] === 0x46) return // "GGUF"
  const dv = new DataView(head.buffer, head.byteOffset, head.byteLength)
  const headerLen = dv.getBigUint64(0, true)
  if (head[8] === 0x7b && headerLen > 1n && headerLen < 1n << 32n) {
    throw coded(
      'E_UNSUPPORTED_FORMAT',
      `${name} is a safetensors file: the wasm backend reads GGUF files only (use a GGUF of the model, e.g. phi-2.Q4_K_M.gguf, or backend 'cpu' in Node)`,
    )
  }
  throw coded('E_MALFORMED_FILE', `${name} is not a GGUF file (no "GGUF" magic at offset 0)`)
}

/**
 * Splits a download into the loader's stream and the Cache API writer's, in lockstep: the next chunk
 * is read only when the writer took the previous one, so at most one chunk waits for it (`tee()`
 * buffers whatever the slower branch has not read yet: a writer slower than the download would hold
 * up to a second full copy of the file in JS). A writer that takes nothing for `stallMs` (or that
 * cancels) is dropped: its stream errors (its `put` fails, nothing is recorded) and the load goes on.
 */
function lockstepTee(
  src: ReadableStream<Uint8Array>,
  stallMs: number,
  signal: AbortSignal,
): [ReadableStream<Uint8Array>, ReadableStream<Uint8Array>] {
  const reader = src.getReader()
  let cacheCtl!: ReadableStreamDefaultController<Uint8Array>
  let cacheGone = false
  let room: (() => void) | null = null
  const dropCache = (reason: unknown) => {
    if (cacheGone) return
    cacheGone = true
    try {
      cacheCtl.error(reason)
    } catch {
      // already closed
    }
    room?.()
  }
  const forCache = new ReadableStream<Uint8Array>(
    {
      start(c) {
        cacheCtl = c
      },
      pull() {
        const r = room
        room = null
        r?.()
      },
      cancel() {
        cacheGone = true
        room?.()
      },
    },
    { highWaterMark: 1 },
  )
  const forLoader = new ReadableStream<Uint8Array>(
    {
      async pull(c) {
        while (!cacheGone && (cacheCtl.desiredSize ?? 0) <= 0) {
          // An abort (abortLoad) does not wait for a slow writer.
          if (signal.aborted) {
            const err = coded('E_ABORTED', 'load aborted')
            dropCache(err)
            throw err
          }
          let timer: ReturnType<typeof setTimeout> | undefined
          let onAbort: (() => void) | undefined
          const tookIt = await new Promise<boolean>((resolve) => {
            room = () => resolve(true)
            timer = setTimeout(() => resolve(false), stallMs)
            onAbort = () => resolve(true)
            signal.addEventListener('abort', onAbort, { once: true })
          })
          clearTimeout(timer)
          signal.removeEventListener('abort', onAbort!)
          room = null
          if (!tookIt) dropCache(new Error(`the cache writer took nothing for ${stallMs} ms: not caching this download`))
        }
        let r: ReadableStreamReadResult<Uint8Array>
        try {
          r = await reader.read()
        } catch (err) {
          dropCache(err)
          throw err
        }
        if (r.done) {
          if (!cacheGone) cacheCtl.close()
          cacheGone = true
          c.close()
          return
        }
        if (!cacheGone) cacheCtl.enqueue(r.value)
        c.enqueue(r.value)
      },
      cancel(reason) {
        dropCache(reason ?? new Error('download cancelled'))
        return reader.cancel(reason)
      },
    },
    { highWaterMark: 0 },
  )
  return [forLoader, forCache]
}

interface Opened {
  total: number
  stream?: ReadableStream<Uint8Array>
  bytes?: Uint8Array
  fromCache: boolean
}

export function runWorker(host: WorkerHost): void {
  let role: 'none' | 'engine' | 'thread' = 'none'
  let glue: Glue | null = null
  let model: WasmModelLike | null = null
  const sessions = new Map<number, WasmSessionLike>()
  const queue: Array<{ id: number; run: () => Promise<void>; cancelled: () => void }> = []
  let pumping = false
  /** The job running now (generate / logprobs), and the ids cancelled while running. */
  let running: number | null = null
  const cancelled = new Set<number>()
  const loads = new Map<number, AbortController>()

  const reply = (id: number, value: unknown, transfer?: Transferable[]) => host.post({ kind: 'reply', id, ok: true, value }, transfer)
  const fail = (id: number, err: unknown) => {
    const fatal = typeof WebAssembly !== 'undefined' && err instanceof WebAssembly.RuntimeError
    const wire = toWire(err)
    if (fatal) {
      wire.code = 'E_ENGINE_CRASHED'
      wire.message = `The wasm engine trapped (${wire.message}); the engine is unusable, load the model again`
    }
    host.post({ kind: 'reply', id, ok: false, error: wire, ...(fatal ? { fatal: true } : {}) })
  }

  async function pump(): Promise<void> {
    if (pumping) return
    pumping = true
    try {
      while (queue.length > 0) {
        const job = queue.shift()!
        await job.run()
      }
    } finally {
      pumping = false
    }
  }

  function needModel(): WasmModelLike {
    if (!model) throw coded('E_DISPOSED', 'no model is loaded in this engine worker')
    return model
  }

  function needSession(sid: number): WasmSessionLike {
    const s = sessions.get(sid)
    if (!s) throw coded('E_DISPOSED', `session ${sid} does not exist (disposed)`)
    return s
  }

  // ------------------------------------------------------------------ loading

  /** The load's `contextLength` option: the engine caps its context (and the memory it plans for) there. */
  let contextCap: number | null = null
  /** The load's `kvCache` option: what the KV cache stores (the engine's memory check counts it). */
  let kvCache: 'f32' | 'f16' | null = null

  async function consume(
    id: number,
    opened: Opened,
    name: string,
    hash: boolean,
    signal: AbortSignal,
  ): Promise<{ model: WasmModelLike; sha256: string | null }> {
    const g = glue!
    const total = opened.total
    const reader = opened.stream?.getReader()
    let loader: LoaderLike | null = null
    let finishing = false
    let lastPosted = -1
    const progress = (loaded: number) => {
      if (loaded === lastPosted) return
      if (loaded !== total && lastPosted >= 0 && loaded - lastPosted < total / 200) return
      lastPosted = loaded
      host.post({ kind: 'progress', id, phase: 'download', loadedBytes: loaded, totalBytes: total, fromCache: opened.fromCache })
    }
    try {
      loader = new g.WasmModelLoader(name, total, hash, contextCap ?? undefined, kvCache ?? undefined)
      progress(0)
      // The magic check needs the first 16 bytes, which may come in more than one chunk (a stream
      // is free to deliver a few bytes first): they are held back from the loader until then.
      let head: Uint8Array | null = new Uint8Array(0)
      const feed = (chunk: Uint8Array) => {
        if (loader!.received + chunk.byteLength > total) {
          throw coded(
            'E_INTEGRITY',
            `${name}: more than the announced ${total} bytes arrived (a compressed or changed response? serve the file uncompressed with its exact Content-Length)`,
          )
        }
        loader!.push(chunk)
        progress(loader!.received)
      }
      const flushHead = () => {
        if (!head) return
        const h = head
        head = null
        checkMagic(h, name)
        if (h.byteLength > 0) feed(h)
      }
      const push = (chunk: Uint8Array) => {
        if (head) {
          if (head.byteLength + chunk.byteLength < 16) {
            const h = new Uint8Array(head.byteLength + chunk.byteLength)
            h.set(head)
            h.set(chunk, head.byteLength)
            head = h
            return
          }
          const take = 16 - head.byteLength
          const h = new Uint8Array(16)
          h.set(head)
          h.set(chunk.subarray(0, take), head.byteLength)
          head = h
          flushHead()
          chunk = chunk.subarray(take)
          if (chunk.byteLength === 0) return
        }
        feed(chunk)
      }
      if (opened.bytes) {
        for (let o = 0; o < total; o += CHUNK) {
          if (signal.aborted) throw coded('E_ABORTED', 'load aborted')
          push(opened.bytes.subarray(o, Math.min(total, o + CHUNK)))
        }
      } else if (reader) {
        for (;;) {
          if (signal.aborted) throw coded('E_ABORTED', 'load aborted')
          const { done, value } = await reader.read()
          if (done) break
          if (value.byteLength > 0) push(value)
        }
      }
      flushHead() // a file shorter than 16 bytes
      if (loader.received !== total) {
        throw coded('E_MALFORMED_FILE', `${name}: truncated, ${loader.received} of ${total} bytes arrived`)
      }
      const sha = hash ? loader.sha256() : null
      finishing = true
      const m = loader.finish()
      return { model: m, sha256: sha ?? null }
    } catch (err) {
      if (reader) reader.cancel().catch(() => {})
      else opened.stream?.cancel().catch(() => {})
      if (loader && !finishing) {
        try {
          loader.free?.()
        } catch {
          // already consumed
        }
      }
      if (signal.aborted) throw coded('E_ABORTED', 'load aborted')
      throw err
    }
  }

  async function openCaches(): Promise<{ body: Cache; meta: Cache } | null> {
    const cs = (globalThis as { caches?: CacheStorage }).caches
    if (!cs) return null
    try {
      return { body: await cs.open(CACHE_BODY), meta: await cs.open(CACHE_META) }
    } catch {
      return null // e.g. opaque origins / private mode
    }
  }

  async function loadUrl(
    id: number,
    src: Extract<EngineSource, { kind: 'url' }>,
    useCache: boolean,
    ac: AbortController,
  ): Promise<{ model: WasmModelLike; sha256: string | null; fromCache: boolean; total: number }> {
    const url = src.url
    const caches = useCache && /^https?:/.test(url) ? await openCaches() : null
    if (caches) {
      let hit: Response | undefined
      let meta: { sha256?: unknown; length?: unknown } | undefined
      try {
        hit = await caches.body.match(url)
        const m = await caches.meta.match(url)
        meta = m ? ((await m.json()) as typeof meta) : undefined
      } catch {
        hit = undefined
      }
      if (hit?.body && meta && typeof meta.sha256 === 'string' && typeof meta.length === 'number') {
        const stored = Number(hit.headers.get('content-length') ?? meta.length)
        let ok = stored === meta.length
        if (ok) {
          try {
            const r = await consume(id, { total: meta.length, stream: hit.body, fromCache: true }, src.name, true, ac.signal)
            if (r.sha256 === meta.sha256) return { ...r, fromCache: true, total: meta.length }
            r.model.dispose()
            r.model.free?.()
            ok = false
          } catch (err) {
            const code = (err as { code?: string }).code
            if (code === 'E_ABORTED' || code === 'E_MODEL_TOO_LARGE' || code === 'E_OUT_OF_MEMORY' || ac.signal.aborted) throw err
            ok = false
          }
        } else {
          await hit.body.cancel().catch(() => {})
        }
        if (!ok) {
          await caches.body.delete(url).catch(() => false)
          await caches.meta.delete(url).catch(() => false)
          host.post({ kind: 'progress', id, phase: 'cache-invalid', loadedBytes: 0, totalBytes: meta.length, fromCache: true })
        }
      } else if (hit?.body) {
        await hit.body.cancel().catch(() => {})
      }
    }
    let res: Response
    try {
      res = await fetch(url, { signal: ac.signal })
    } catch (err) {
      if (ac.signal.aborted) throw coded('E_ABORTED', 'load aborted')
      throw coded('E_IO', `fetching ${url} failed: ${err instanceof Error ? err.message : String(err)}`)
    }
    if (!res.ok || !res.body) {
      await res.body?.cancel().catch(() => {})
      throw coded('E_IO', `fetching ${url} failed: HTTP ${res.status} ${res.statusText}`)
    }
    const len = res.headers.get('content-length')
    const enc = res.headers.get('content-encoding')
    const total = len !== null && /^\d+$/.test(len.trim()) ? Number(len) : NaN
    if (!Number.isSafeInteger(total) || (enc !== null && enc !== '' && enc !== 'identity')) {
      await res.body.cancel().catch(() => {})
      throw coded(
        'E_UNKNOWN_SIZE',
        `${url}: the server sent ${enc ? `a ${enc}-encoded body` : 'no Content-Length'}; the wasm engine needs the file's size before ` +
          'downloading it (to check that it fits and stream it without a second copy): serve the file uncompressed with a Content-Length header, ' +
          'or download it yourself and pass a Blob',
      )
    }
    if (!caches) {
      const r = await consume(id, { total, stream: res.body, fromCache: false }, src.name, false, ac.signal)
      return { ...r, fromCache: false, total }
    }
    // Tee: one branch into the loader, the other into the cache. The sha256 is recorded (in its own
    // small entry) only after the whole file arrived and loaded; a body without it is never used.
    // An older sha256 entry (its body evicted, or from an earlier version of the file) goes first:
    // otherwise the new body sits beside it until the new entry is written, and a page closed (or
    // another tab loading) in between sees a body that does not match its metadata.
    await caches.meta.delete(url).catch(() => false)
    const stallMs = host.cacheStallMs ?? 30_000
    const [mine, theirs] = lockstepTee(res.body, stallMs, ac.signal)
    const putting = caches.body
      .put(url, new Response(theirs, { headers: { 'content-length': String(total), 'content-type': 'application/octet-stream' } }))
      .then(
        () => null,
        (e: unknown) => e ?? new Error('cache put failed'),
      )
    // Once its stream has ended, the load waits a bounded time for the write to settle (a Cache API
    // put that never settles must not hang the load); one that did not settle counts as failed.
    const put = async (waitMs: number): Promise<unknown> => {
      let timer: ReturnType<typeof setTimeout> | undefined
      const late = new Promise<Error>((resolve) => {
        timer = setTimeout(() => resolve(new Error(`the cache write did not finish within ${waitMs} ms`)), waitMs)
      })
      try {
        return await Promise.race([putting, late])
      } finally {
        clearTimeout(timer)
      }
    }
    let r: { model: WasmModelLike; sha256: string | null }
    try {
      r = await consume(id, { total, stream: mine, fromCache: false }, src.name, true, ac.signal)
    } catch (err) {
      ac.abort()
      // The body is deleted once the write settled (briefly waited for here; a later one deletes
      // it then). A body without its sha256 entry is never used either way.
      if ((await put(Math.min(stallMs, 500))) instanceof Error) {
        void putting.then(() => caches.body.delete(url).catch(() => false))
      }
      await caches.body.delete(url).catch(() => false)
      throw err
    }
    const putError = await put(stallMs)
    if (putError === null && r.sha256) {
      await caches.meta
        .put(url, new Response(JSON.stringify({ sha256: r.sha256, length: total }), { headers: { 'content-type': 'application/json' } }))
        .catch(() => caches.body.delete(url).catch(() => false))
    } else {
      await caches.body.delete(url).catch(() => false)
    }
    return { ...r, fromCache: false, total }
  }

  async function load(id: number, source: EngineSource, useCache: boolean, contextLength: number | null, kv: 'f32' | 'f16' | null): Promise<void> {
    contextCap = contextLength
    kvCache = kv
    const ac = new AbortController()
    loads.set(id, ac)
    try {
      if (model) throw coded('E_BUSY', 'a model is already loaded in this engine worker')
      let r: { model: WasmModelLike; sha256: string | null; fromCache: boolean; total: number }
      if (source.kind === 'url') {
        r = await loadUrl(id, source, useCache, ac)
      } else if (source.kind === 'bytes') {
        const total = source.bytes.byteLength
        r = { ...(await consume(id, { total, bytes: source.bytes, fromCache: false }, source.name, false, ac.signal)), fromCache: false, total }
      } else if (source.kind === 'blob') {
        const total = source.blob.size
        r = { ...(await consume(id, { total, stream: source.blob.stream() as ReadableStream<Uint8Array>, fromCache: false }, source.name, false, ac.signal)), fromCache: false, total }
      } else {
        if (!host.openPath) throw coded('E_INVALID_ARGUMENT', 'file paths can be loaded in Node only')
        const f = await host.openPath(source.path)
        r = { ...(await consume(id, { total: f.size, stream: f.stream, fromCache: false }, source.name, false, ac.signal)), fromCache: false, total: f.size }
      }
      if (ac.signal.aborted) {
        r.model.dispose()
        throw coded('E_ABORTED', 'load aborted')
      }
      model = r.model
      const out: LoadReply = { info: model.info, vocab: model.ggufVocab(), fileSizeBytes: r.total, fromCache: r.fromCache, sha256: r.sha256 }
      reply(id, out)
    } finally {
      loads.delete(id)
    }
  }

  // ------------------------------------------------------------------ generation

  async function generate(id: number, sid: number, tokens: number[], options: EngineGenerateOptions): Promise<void> {
    const s = needSession(sid)
    const ids = Uint32Array.from(tokens)
    s.begin(ids, options)
    let ended = false
    try {
      while (!cancelled.has(id)) {
        const t = s.step()
        if (t === undefined) break
        host.post({ kind: 'token', id, token: t })
        await host.yieldNow()
      }
      ended = true
      reply(id, s.end())
    } finally {
      if (!ended) {
        try {
          s.end()
        } catch {
          // the session is finished either way
        }
      }
    }
  }

  function enqueue(id: number, run: () => Promise<void>, whenCancelledQueued: () => void): void {
    queue.push({
      id,
      run: async () => {
        running = id
        try {
          await run()
        } catch (err) {
          fail(id, err)
        } finally {
          running = null
          cancelled.delete(id)
        }
      },
      cancelled: whenCancelledQueued,
    })
    void pump()
  }

  // ------------------------------------------------------------------ dispatch

  async function call(id: number, req: Request): Promise<void> {
    switch (req.op) {
      case 'init': {
        let flavour = req.flavour
        let available = true
        if (flavour === 'mt' && (host.glue.mt.__phi2_missing || typeof host.glue.mt.threadPoolBuild !== 'function')) {
          flavour = 'st'
          available = false
        }
        // Threads: the relaxed-SIMD build where this JS engine validates relaxed SIMD and computes it
        // right (a self-test), else mt.
        let relaxed: string | undefined
        let module: WebAssembly.Module | undefined
        if (flavour === 'mt') {
          const check = relaxedSimdCheck()
          const g = host.glue.relaxed
          if (!check.ok) relaxed = check.reason
          else if (!g || g.__phi2_missing || typeof g.threadPoolBuild !== 'function') relaxed = 'the relaxed-SIMD build (pkg-relaxed) is not in this package'
          else {
            try {
              module = await host.compile('relaxed')
              flavour = 'relaxed'
              relaxed = 'relaxed SIMD'
            } catch (err) {
              relaxed = `the relaxed-SIMD build did not compile (${err instanceof Error ? err.message : String(err)})`
            }
          }
        }
        glue = (flavour === 'relaxed' ? host.glue.relaxed : host.glue[flavour])!
        module ??= await host.compile(flavour)
        const exports = glue.initSync({ module })
        const out: InitReply = { flavour, available }
        if (relaxed !== undefined) out.relaxed = relaxed
        if (flavour !== 'st') {
          out.module = module
          out.memory = exports.memory
        }
        reply(id, out)
        return
      }
      case 'pool': {
        const g = glue!
        if (!g.threadPoolBuild) throw coded('E_BACKEND', 'this engine build has no thread pool')
        g.threadPoolBuild(req.threads)
        reply(id, g.threadPoolSize ? g.threadPoolSize() : req.threads)
        return
      }
      case 'load':
        await load(id, req.source, req.cache, req.contextLength ?? null, req.kvCache ?? null)
        return
      case 'session': {
        // The client picks the id (its createSession() is synchronous); later calls name it.
        sessions.set(req.sid, needModel().createSession())
        reply(id, req.sid)
        return
      }
      case 'generate': {
        const { sid, tokens, options } = req
        enqueue(
          id,
          () => generate(id, sid, tokens, options),
          () => reply(id, { tokens: [], finishReason: 'abort', promptTokens: tokens.length, promptTokensEvaluated: 0, promptMs: 0, generateMs: 0 }),
        )
        return
      }
      case 'logprobs': {
        const { tokens } = req
        enqueue(
          id,
          async () => {
            const rows = needModel().logprobs(Uint32Array.from(tokens), null)
            reply(id, rows, [rows.buffer])
          },
          () => fail(id, coded('E_ABORTED', 'logprobs cancelled')),
        )
        return
      }
      case 'reset':
        sessions.get(req.sid)?.reset()
        reply(id, null)
        return
      case 'sessionDispose': {
        const s = sessions.get(req.sid)
        sessions.delete(req.sid)
        if (s) {
          s.dispose()
          s.free?.()
        }
        reply(id, null)
        return
      }
      case 'dispose': {
        for (const s of sessions.values()) {
          try {
            s.dispose()
          } catch {
            // model gone
          }
        }
        sessions.clear()
        model?.dispose()
        model = null
        reply(id, null)
        return
      }
    }
  }

  host.listen((msg) => {
    switch (msg.kind) {
      case 'thread': {
        if (role !== 'none') return
        role = 'thread'
        try {
          const g = msg.flavour === 'relaxed' ? host.glue.relaxed : host.glue.mt
          if (!g) throw coded('E_BACKEND', 'this worker has no relaxed-SIMD build')
          g.initSync({ module: msg.module, memory: msg.memory })
          host.post({ kind: 'thread-ready' })
          g.threadWorkerRun!()
        } catch (err) {
          host.post({ kind: 'thread-failed', error: toWire(err) })
        }
        return
      }
      case 'call': {
        role = 'engine'
        call(msg.id, msg.req).catch((err: unknown) => fail(msg.id, err))
        return
      }
      case 'cancel': {
        const i = queue.findIndex((j) => j.id === msg.id)
        if (i >= 0) {
          const [job] = queue.splice(i, 1)
          job!.cancelled()
        } else if (running === msg.id) cancelled.add(msg.id)
        // else: already finished, nothing to stop
        return
      }
      case 'abortLoad':
        loads.get(msg.id)?.abort()
        return
      case 'crash':
        if (msg.mode === 'exit') host.exitNow()
        else
          setTimeout(() => {
            throw new Error('@x/phi2 test hook: simulated engine worker crash')
          }, 0)
        return
    }
  })
}
