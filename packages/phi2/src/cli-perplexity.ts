/**
 * `phi2 perplexity --file TEXT [--model M] [--context N] [--stride S] [--json]`: the perplexity of
 * a text file, measured as llama.cpp's `llama-perplexity` does (see `perplexity.ts`), with a
 * progress bar on a TTY. Own flags and help; `cli.ts` hands it `argv` after the command name.
 * Exit codes as the other commands: 0 ok, 1 error (`phi2: CODE: message`), 2 bad usage.
 */
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { Phi2Error, type Phi2Model, defaultModelPath, loadModel } from './index.js'
import { LoadOptionsSchema, parseOptions, type LoadOptions } from './options.js'
import type { PerplexityOptions, PerplexityProgress, PerplexityResult } from './perplexity.js'

export const PERPLEXITY_HELP = `Usage: phi2 perplexity --file F [options]

Perplexity of a text, measured as llama.cpp's perplexity tool (llama-perplexity) does: the text
(--file F, or stdin) is tokenized without BOS and cut into windows of --context N tokens, each
evaluated from an empty context; only the later tokens of each window are scored:
  default        side-by-side windows [i*N, (i+1)*N); in each, the tokens after its first
                 half (N - 1 - floor(N/2) tokens) are scored, predicted from the window before them
  --stride S     llama.cpp's --ppl-stride: windows start every S tokens (ceil((T - N) / S) of them
                 for T tokens), the last S tokens of each are scored
Prints "perplexity: PPL +/- ERR" (ERR = PPL x the standard error of the mean NLL) and the counts;
a progress bar on stderr when it is a terminal.

Options:
  --model PATH           .gguf file, .safetensors file or Hugging Face model directory
                         (default: the embedded default model)
  --file F               the text (UTF-8); without it, stdin
  --context N            window length in tokens, integer >= 2, at most the model's context
                         (default: 512, or the model's context when smaller)
  --stride S             llama.cpp's --ppl-stride, integer 1..N-1 (default: none)
  --threads N            compute threads, integer 1..1024 (default: all cores)
  --backend B            auto | cpu | wasm (default auto = cpu)
  --kv-cache T           f32 | f16: what the KV cache stores (default f32)
  --json                 print one JSON object {"perplexity","nll","nllStdError","tokens",
                         "windows","textTokens","contextLength","stride","model"}
  --quiet                no progress or statistics on stderr
  -h, --help             this help

Exit codes: 0 ok, 1 error (one line "phi2: CODE: message" on stderr), 2 bad usage.
`

const OPTIONS = {
  model: { type: 'string' },
  file: { type: 'string' },
  context: { type: 'string' },
  'context-length': { type: 'string' },
  stride: { type: 'string' },
  threads: { type: 'string' },
  backend: { type: 'string' },
  'kv-cache': { type: 'string' },
  json: { type: 'boolean' },
  quiet: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const

class UsageError extends Error {}

function int(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined
  if (!/^\s*[+-]?\d+\s*$/.test(v)) throw new UsageError(`--${flag} expects an integer, got ${JSON.stringify(v)}`)
  return Number(v)
}

/** A text progress bar: `[#######.............]  7/20 windows  ppl 12.34`. */
export function progressBar(p: PerplexityProgress, width = 30): string {
  const filled = Math.round((p.window / p.windows) * width)
  const ppl = Number.isFinite(p.perplexity) ? p.perplexity.toFixed(4) : String(p.perplexity)
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${p.window}/${p.windows} windows  ppl ${ppl}`
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = []
  for await (const c of process.stdin) chunks.push(c as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}

/** Runs `phi2 perplexity`; `argv` are the arguments after the command name. Resolves with the exit code. */
export async function runPerplexity(argv: string[]): Promise<number> {
  const usage = (msg: string) => {
    process.stderr.write(`phi2: E_USAGE: ${msg} (see phi2 perplexity --help)\n`)
    return 2
  }
  let values: { [K in keyof typeof OPTIONS]?: (typeof OPTIONS)[K]['type'] extends 'string' ? string : boolean }
  let positionals: string[]
  try {
    ;({ values, positionals } = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true }))
  } catch (err) {
    return usage((err as Error).message)
  }
  if (values.help) {
    process.stdout.write(PERPLEXITY_HELP)
    return 0
  }
  const quiet = Boolean(values.quiet)
  const log = (m: string) => {
    if (!quiet) process.stderr.write(`${m}\n`)
  }
  let model: Phi2Model | null = null
  const ac = new AbortController()
  const onSigint = () => ac.abort()
  process.once('SIGINT', onSigint)
  const tty = Boolean(process.stderr.isTTY) && !quiet
  try {
    if (positionals.length > 0) throw new UsageError(`perplexity takes no arguments (the text comes from --file F or stdin), got ${JSON.stringify(positionals[0])}`)
    if (values.context !== undefined && values['context-length'] !== undefined) throw new UsageError('give --context or --context-length, not both')
    const opts: PerplexityOptions = { signal: ac.signal }
    const ctx = int(values.context ?? values['context-length'], values.context !== undefined ? 'context' : 'context-length')
    const stride = int(values.stride, 'stride')
    if (ctx !== undefined) opts.contextLength = ctx
    if (stride !== undefined) opts.stride = stride
    const load: LoadOptions = {}
    const threads = int(values.threads, 'threads')
    if (threads !== undefined) load.threads = threads
    if (values.backend !== undefined) load.backend = values.backend as LoadOptions['backend']
    if (values['kv-cache'] !== undefined) load.kvCache = values['kv-cache'] as LoadOptions['kvCache']
    parseOptions(LoadOptionsSchema, load, 'load')
    let text: string
    if (values.file !== undefined) {
      try {
        text = readFileSync(values.file, 'utf8')
      } catch (err) {
        throw new Phi2Error('E_IO', `cannot read --file ${values.file}: ${(err as Error).message}`)
      }
    } else {
      if (process.stdin.isTTY) throw new UsageError('no text: give it with --file F or on stdin')
      text = await readStdin()
    }
    const path = values.model ?? defaultModelPath()
    log(`phi2: loading ${path}`)
    model = await loadModel(path, load)
    log(`phi2: loaded ${model.info.format} ${model.info.dtype}, ${model.info.numLayers} layers, context ${model.info.contextLength}`)
    const t0 = performance.now()
    let last = 0
    const r: PerplexityResult = await model.perplexity(text, {
      ...opts,
      onProgress: (p) => {
        if (!tty) return
        const now = performance.now()
        if (p.window === p.windows || now - last > 100) {
          last = now
          process.stderr.write(`\r${progressBar(p)}`)
        }
      },
    })
    if (tty) process.stderr.write('\n')
    const secs = (performance.now() - t0) / 1000
    if (values.json) {
      process.stdout.write(`${JSON.stringify({ ...r, model: { source: model.info.source, format: model.info.format, dtype: model.info.dtype } })}\n`)
    } else {
      process.stdout.write(
        `perplexity: ${r.perplexity.toFixed(4)} +/- ${(r.perplexity * r.nllStdError).toFixed(5)}  (nll ${r.nll.toFixed(6)}, ` +
          `${r.tokens} tokens scored in ${r.windows} windows of ${r.contextLength}${r.stride !== null ? `, stride ${r.stride}` : ''}; ` +
          `text ${r.textTokens} tokens)\n`,
      )
    }
    log(`phi2: ${r.windows} windows in ${secs.toFixed(1)} s (${((r.windows * r.contextLength) / secs).toFixed(0)} tokens/s evaluated)`)
    return 0
  } catch (err) {
    if (tty) process.stderr.write('\n')
    if (err instanceof UsageError) return usage(err.message)
    if (err instanceof Phi2Error) {
      let msg = err.message.replace(/\s*\n\s*/g, ' ')
      const path = 'path' in err && typeof err.path === 'string' ? err.path : ''
      const flag = { contextLength: 'context', stride: 'stride', text: 'file', threads: 'threads', backend: 'backend', kvCache: 'kv-cache' }[path.split('.')[0]!]
      if (err.code === 'E_INVALID_OPTION' && flag) msg += ` (flag --${flag})`
      process.stderr.write(`phi2: ${err.code}: ${msg}\n`)
      return err.code === 'E_INVALID_OPTION' ? 2 : 1
    }
    process.stderr.write(`phi2: E_INTERNAL: ${err instanceof Error ? err.message : String(err)}\n`)
    return 1
  } finally {
    process.removeListener('SIGINT', onSigint)
    model?.dispose()
  }
}
