/**
 * `phi2 serve --model M [--host 127.0.0.1] [--port 8000] ...`: the HTTP server of `server.ts`.
 * Own flags and help; `cli.ts` hands it `argv` after the command name. Runs until SIGTERM or
 * SIGINT, then stops accepting requests, lets the running ones finish and exits 0.
 * Exit codes: 0 after a drain, 1 error (`phi2: CODE: message`), 2 bad usage.
 */
import { parseArgs } from 'node:util'
import { Phi2Error, defaultModelPath, loadModel } from '../index.js'
import { createServer } from './server.js'

export const SERVE_HELP = `Usage: phi2 serve [--model M] [options]

Serves a model over HTTP, many users at once: their generations share forward passes
(continuous batching). Endpoints:
  POST /score                 the model card's real-time contract: {"input_data": {"input_string":
                              [...], "parameters": {...}}} -> [{"0": text}, ...]
  POST /v1/completions        OpenAI completions (stream, n, stop, seed, logprobs, usage)
  POST /v1/chat/completions   OpenAI chat in the card's chat format (Alice:/Bob:, system as preamble)
  GET  /v1/models             the served model
  GET  /health                200 once the model is loaded, 503 before
  GET  /metrics               Prometheus metrics (requests, tokens, queue, batch size, latencies)

Options:
  --model PATH           .gguf file, .safetensors file or Hugging Face model directory
                         (default: the embedded default model)
  --host H               address to listen on (default: 127.0.0.1, this machine only)
  --port N               TCP port (default: 8000; 0 = any free port)
  --model-name NAME      the model id of the OpenAI API (default: the file name without .gguf)
  --parallel N           generations decoded together, 1..256 (default: 8)
  --max-queue N          generations waiting beyond --parallel before 429, 0..100000 (default: 64)
  --timeout S            time limit per request in seconds (default: 300)
  --body-limit BYTES     largest request body (default: 1048576)
  --api-key KEY          require "Authorization: Bearer KEY" (all routes but /health);
                         default: the PHI2_API_KEY environment variable (keeps the key out
                         of the process list)
  --cors ORIGIN          allow browser requests from ORIGIN (or *); off by default
  --threads N            compute threads, integer 1..1024 (default: all cores)
  --kv-cache T           f32 | f16: what the KV caches store (default f32; f16 halves their
                         memory, about 320 KB per token of every stream for Phi-2)
  --quiet                no log line per request
  -h, --help             this help

SIGTERM / SIGINT: stop accepting requests, finish the running ones, exit 0 (during the model
load: abort it and exit 0).
Exit codes: 0 ok, 1 error (one line "phi2: CODE: message" on stderr), 2 bad usage.
`

class UsageError extends Error {}

/** Whether `host` is a loopback address (reachable from this machine only). */
function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase()
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h) || h === '::ffff:127.0.0.1'
}

function int(name: string, v: string | undefined, min: number, max: number): number | undefined {
  if (v === undefined) return undefined
  if (!/^[0-9]+$/.test(v) || Number(v) < min || Number(v) > max) throw new UsageError(`--${name} must be an integer in ${min}..${max}, got ${JSON.stringify(v)}`)
  return Number(v)
}

export async function runServe(argv: string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>
  try {
    ;({ values } = parseArgs({
      args: argv,
      allowPositionals: false,
      strict: true,
      options: {
        model: { type: 'string' },
        host: { type: 'string' },
        port: { type: 'string' },
        'model-name': { type: 'string' },
        parallel: { type: 'string' },
        'max-queue': { type: 'string' },
        timeout: { type: 'string' },
        'body-limit': { type: 'string' },
        'api-key': { type: 'string' },
        cors: { type: 'string' },
        threads: { type: 'string' },
        'kv-cache': { type: 'string' },
        quiet: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }))
  } catch (err) {
    process.stderr.write(`phi2: E_USAGE: ${(err as Error).message} (see phi2 serve --help)\n`)
    return 2
  }
  if (values.help) {
    process.stdout.write(SERVE_HELP)
    return 0
  }
  let port: number, parallel: number | undefined, maxQueue: number | undefined, timeout: number | undefined, bodyLimit: number | undefined, threads: number | undefined
  try {
    port = int('port', values.port as string | undefined, 0, 65535) ?? 8000
    parallel = int('parallel', values.parallel as string | undefined, 1, 256)
    maxQueue = int('max-queue', values['max-queue'] as string | undefined, 0, 100000)
    timeout = int('timeout', values.timeout as string | undefined, 1, 86400)
    bodyLimit = int('body-limit', values['body-limit'] as string | undefined, 1024, 1 << 30)
    threads = int('threads', values.threads as string | undefined, 1, 1024)
    if (values['api-key'] === '') throw new UsageError('--api-key must not be empty')
    if (values['kv-cache'] !== undefined && values['kv-cache'] !== 'f32' && values['kv-cache'] !== 'f16') {
      throw new UsageError(`--kv-cache must be f32 or f16, got ${JSON.stringify(values['kv-cache'])}`)
    }
  } catch (err) {
    process.stderr.write(`phi2: E_USAGE: ${(err as Error).message} (see phi2 serve --help)\n`)
    return 2
  }
  const host = (values.host as string | undefined) ?? '127.0.0.1'
  const modelPath = (values.model as string | undefined) ?? defaultModelPath()
  const apiKey = (values['api-key'] as string | undefined) ?? (process.env.PHI2_API_KEY || undefined)
  const server = createServer({
    load: (signal) =>
      loadModel(modelPath, {
        backend: 'cpu',
        signal,
        ...(threads ? { threads } : {}),
        ...(values['kv-cache'] ? { kvCache: values['kv-cache'] as 'f32' | 'f16' } : {}),
      }),
    ...(values['model-name'] ? { modelName: values['model-name'] as string } : {}),
    ...(parallel ? { parallel } : {}),
    ...(maxQueue !== undefined ? { maxQueue } : {}),
    ...(timeout ? { timeoutMs: timeout * 1000 } : {}),
    ...(bodyLimit ? { bodyLimit } : {}),
    ...(apiKey ? { apiKey } : {}),
    ...(values.cors ? { cors: values.cors as string } : {}),
    log: !values.quiet,
  })
  let address: string
  try {
    address = await server.app.listen({ host, port })
  } catch (err) {
    process.stderr.write(`phi2: E_LISTEN: cannot listen on ${host}:${port}: ${(err as Error).message}\n`)
    return 1
  }
  process.stderr.write(`phi2 serve: listening on ${address} (loading ${modelPath})\n`)
  if (!apiKey && !isLoopback(host)) {
    process.stderr.write(`phi2 serve: warning: listening on ${host} (not only this machine) without an API key: anyone who can reach it can use it; set --api-key or PHI2_API_KEY\n`)
  }
  let stopping = false
  const stopped = new Promise<number>((resolve) => {
    let draining = false
    const drain = (signal: string) => {
      if (draining) return
      draining = true
      stopping = true
      process.stderr.write(`phi2 serve: ${signal}: finishing running requests\n`)
      server.close().then(
        () => resolve(0),
        (err) => {
          process.stderr.write(`phi2: E_INTERNAL: shutting down: ${(err as Error).message}\n`)
          resolve(1)
        },
      )
    }
    process.once('SIGTERM', () => drain('SIGTERM'))
    process.once('SIGINT', () => drain('SIGINT'))
  })
  try {
    // A signal during the load aborts it (server.close) and ends the wait.
    await Promise.race([server.ready, stopped])
    if (stopping) return stopped
    process.stderr.write(`phi2 serve: ready\n`)
  } catch (err) {
    if (stopping) return stopped
    const code = err instanceof Phi2Error ? err.code : 'E_INTERNAL'
    process.stderr.write(`phi2: ${code}: ${(err as Error).message.replace(/\s*\n\s*/g, ' ')}\n`)
    await server.close().catch(() => {})
    return 1
  }
  return stopped
}
