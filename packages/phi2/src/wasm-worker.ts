/**
 * The wasm engine worker script for browsers (dist/wasm-worker.js), a module Web Worker. One script,
 * two roles (engine / pkg-mt or pkg-relaxed thread), see `wasm/worker-core.ts`. The glue modules are
 * imported statically; the .wasm files are referenced with literal `new URL(..., import.meta.url)` so that
 * bundlers (Vite, webpack 5) copy them.
 */
import * as mt from './wasm/mt/phi2_wasm.js'
import * as relaxed from './wasm/relaxed/phi2_wasm.js'
import * as st from './wasm/st/phi2_wasm.js'
import type { Flavour, FromWorker, ToWorker } from './wasm/protocol.js'
import { type Glue, runWorker } from './wasm/worker-core.js'

interface WorkerScope {
  postMessage(msg: unknown, transfer?: Transferable[]): void
  addEventListener(type: 'message', cb: (e: MessageEvent) => void): void
  close(): void
}
const scope = globalThis as unknown as WorkerScope

async function compile(flavour: Flavour): Promise<WebAssembly.Module> {
  // Literal URLs, one per flavour (bundlers copy what they see).
  const url =
    flavour === 'st'
      ? new URL('./wasm/st/phi2_wasm_bg.wasm', import.meta.url)
      : flavour === 'mt'
        ? new URL('./wasm/mt/phi2_wasm_bg.wasm', import.meta.url)
        : new URL('./wasm/relaxed/phi2_wasm_bg.wasm', import.meta.url)
  const res = await fetch(url)
  if (!res.ok) throw Object.assign(new Error(`could not fetch ${url.href}: HTTP ${res.status}`), { code: 'E_IO' })
  if (typeof WebAssembly.compileStreaming === 'function' && (res.headers.get('content-type') ?? '').startsWith('application/wasm')) {
    return WebAssembly.compileStreaming(res)
  }
  return WebAssembly.compile(await res.arrayBuffer())
}

// A macrotask turn without setTimeout's 4 ms clamp.
const channel = new MessageChannel()
const waiters: Array<() => void> = []
channel.port1.onmessage = () => waiters.shift()?.()

runWorker({
  post: (msg: FromWorker, transfer?: Transferable[]) => scope.postMessage(msg, transfer ?? []),
  listen: (cb) => scope.addEventListener('message', (e) => cb(e.data as ToWorker)),
  glue: { st: st as unknown as Glue, mt: mt as unknown as Glue, relaxed: relaxed as unknown as Glue },
  compile,
  yieldNow: () =>
    new Promise<void>((resolve) => {
      waiters.push(resolve)
      channel.port2.postMessage(0)
    }),
  exitNow: () => scope.close(),
})
