/**
 * The wasm engine worker script for Node (dist/wasm-worker.node.js), run by worker_threads. Same
 * core and roles as the browser script (`wasm/worker-core.ts`); reads the .wasm and model files
 * from disk.
 */
import { open, readFile } from 'node:fs/promises'
import { parentPort } from 'node:worker_threads'
import * as mt from './wasm/mt/phi2_wasm.js'
import * as relaxed from './wasm/relaxed/phi2_wasm.js'
import * as st from './wasm/st/phi2_wasm.js'
import type { FromWorker, ToWorker } from './wasm/protocol.js'
import { type Glue, runWorker } from './wasm/worker-core.js'

const port = parentPort
if (!port) throw new Error('@x/phi2: wasm-worker.node.js runs as a worker thread only')

const CHUNK = 4 << 20

runWorker({
  post: (msg: FromWorker, transfer?: Transferable[]) => port.postMessage(msg, (transfer ?? []) as never),
  listen: (cb) => port.on('message', (m: ToWorker) => cb(m)),
  glue: { st: st as unknown as Glue, mt: mt as unknown as Glue, relaxed: relaxed as unknown as Glue },
  async compile(flavour) {
    const url =
      flavour === 'st'
        ? new URL('./wasm/st/phi2_wasm_bg.wasm', import.meta.url)
        : flavour === 'mt'
          ? new URL('./wasm/mt/phi2_wasm_bg.wasm', import.meta.url)
          : new URL('./wasm/relaxed/phi2_wasm_bg.wasm', import.meta.url)
    return WebAssembly.compile(await readFile(url))
  },
  async openPath(path) {
    let fh
    try {
      fh = await open(path, 'r')
    } catch (err) {
      throw Object.assign(new Error(`cannot open ${path}: ${(err as Error).message}`), { code: 'E_IO' })
    }
    let size: number
    try {
      size = (await fh.stat()).size
    } catch (err) {
      await fh.close().catch(() => {})
      throw Object.assign(new Error(`cannot stat ${path}: ${(err as Error).message}`), { code: 'E_IO' })
    }
    const f = fh
    let closed = false
    const close = async () => {
      if (!closed) {
        closed = true
        await f.close()
      }
    }
    const stream = new ReadableStream<Uint8Array>({
      async pull(c) {
        const buf = new Uint8Array(CHUNK)
        const { bytesRead } = await f.read(buf, 0, CHUNK, null)
        if (bytesRead === 0) {
          await close()
          c.close()
        } else c.enqueue(buf.subarray(0, bytesRead))
      },
      cancel: close,
    })
    return { size, stream }
  },
  yieldNow: () => new Promise<void>((resolve) => setImmediate(resolve)),
  exitNow: () => process.exit(1),
})
