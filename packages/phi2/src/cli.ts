#!/usr/bin/env node
/**
 * The `phi2` command line: generate, chat, tokenize, info. Errors: one line `phi2: CODE: message`
 * on stderr and exit 1; bad usage (unknown flag, bad value, invalid option) exits 2.
 */
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import {
  type GenerateOptions,
  type LoadOptions,
  Phi2Error,
  type Phi2Model,
  defaultModelPath,
  loadModel,
} from './index.js'
import { GenerateOptionsSchema, LoadOptionsSchema, parseOptions } from './options.js'

const HELP = `Usage: phi2 <command> [options]

Microsoft Phi-2 on the command line (Rust engine: native CPU addon, or wasm).

Commands:
  generate [prompt]      Complete a prompt (argument, --file F, or stdin) and stream it to stdout
  chat                   Interactive chat that keeps its context (/reset clears it, /exit quits)
  tokenize [text]        Print the token ids of a text (argument, --file F, or stdin)
  info                   Print facts about the model

Model:
  --model PATH           .gguf file, .safetensors file, or Hugging Face model directory.
                         Default: the embedded model, a TINY RANDOM-WEIGHT Phi-2-architecture GGUF
                         (it proves the pipeline; its output is gibberish). Use --model for real Phi-2.
  --threads N            compute threads (default: all cores)
  --context-length N     context window to use (<= the model's)
  --backend B            auto | cpu | wasm (auto = cpu; cuda is not in this build)
  --quiet                no progress or statistics on stderr

Generation (generate, chat):
  --format F             qa | chat | code | none (default none): wrap the prompt in the Phi-2 model
                         card format and use its stop strings
  --max-new-tokens N     default 256
  --do-sample            sample instead of greedy decoding (default: greedy, like HF transformers)
  --temperature T        default 0.7 (with --do-sample)
  --top-k K              default 50 (with --do-sample; 0 = off)
  --top-p P              default 1 (with --do-sample)
  --min-p P              default 0 (with --do-sample)
  --repetition-penalty R default 1 (off)
  --presence-penalty P   default 0
  --frequency-penalty F  default 0
  --seed S               sampling seed (default: random)
  --stop S               stop string (repeatable; replaces the format's defaults)
  --logit-bias ID=B      add B to token ID's logit (repeatable; B may be -inf to ban it)

Chat:
  --user-name NAME       default Alice
  --bot-name NAME        default Bob
  --system TEXT          a line placed before the first turn

Input / output:
  --file F               read the prompt / text from a file
  --json                 machine-readable output: generate → {"text","tokens","finishReason","usage","timings"},
                         tokenize → {"ids":[...]}, info → the info object, chat → one JSON object per reply
  -h, --help             this help
  -v, --version          print the version

Exit codes: 0 ok, 1 error (message with its code on stderr), 2 bad usage.
`

class UsageError extends Error {}

const OPTIONS = {
  model: { type: 'string' },
  threads: { type: 'string' },
  'context-length': { type: 'string' },
  backend: { type: 'string' },
  quiet: { type: 'boolean' },
  format: { type: 'string' },
  'max-new-tokens': { type: 'string' },
  'do-sample': { type: 'boolean' },
  temperature: { type: 'string' },
  'top-k': { type: 'string' },
  'top-p': { type: 'string' },
  'min-p': { type: 'string' },
  'repetition-penalty': { type: 'string' },
  'presence-penalty': { type: 'string' },
  'frequency-penalty': { type: 'string' },
  seed: { type: 'string' },
  stop: { type: 'string', multiple: true },
  'logit-bias': { type: 'string', multiple: true },
  'user-name': { type: 'string' },
  'bot-name': { type: 'string' },
  system: { type: 'string' },
  file: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'v' },
} as const

type Flags = ReturnType<typeof parse>['values']

function parse(argv: string[]) {
  return parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true })
}

function num(flags: Flags, name: keyof Flags): number | undefined {
  const v = flags[name]
  if (v === undefined) return undefined
  if (typeof v !== 'string' || v.trim() === '' || Number.isNaN(Number(v))) {
    throw new UsageError(`--${String(name)} expects a number, got ${JSON.stringify(v)}`)
  }
  return Number(v)
}

function kebab(s: string): string {
  return s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)
}

function loadOptions(flags: Flags): LoadOptions {
  const o: LoadOptions = {}
  const threads = num(flags, 'threads')
  if (threads !== undefined) o.threads = threads
  const ctx = num(flags, 'context-length')
  if (ctx !== undefined) o.contextLength = ctx
  if (flags.backend !== undefined) o.backend = flags.backend as LoadOptions['backend']
  return parseOptions(LoadOptionsSchema, o, 'load')
}

function generateOptions(flags: Flags): GenerateOptions {
  const o: GenerateOptions = {}
  const set = <K extends keyof GenerateOptions>(k: K, v: GenerateOptions[K] | undefined) => {
    if (v !== undefined) o[k] = v
  }
  set('maxNewTokens', num(flags, 'max-new-tokens'))
  if (flags['do-sample']) o.doSample = true
  set('temperature', num(flags, 'temperature'))
  set('topK', num(flags, 'top-k'))
  set('topP', num(flags, 'top-p'))
  set('minP', num(flags, 'min-p'))
  set('repetitionPenalty', num(flags, 'repetition-penalty'))
  set('presencePenalty', num(flags, 'presence-penalty'))
  set('frequencyPenalty', num(flags, 'frequency-penalty'))
  set('seed', num(flags, 'seed'))
  if (flags.stop) o.stop = flags.stop.map(unescapeFlag)
  if (flags['logit-bias']) {
    const bias: Record<number, number> = {}
    for (const entry of flags['logit-bias']) {
      const m = /^\s*(\d+)\s*[=:]\s*(-?inf(inity)?|[-+0-9.eE]+)\s*$/i.exec(entry)
      const value = m ? (/inf/i.test(m[2]!) ? -Infinity : Number(m[2])) : Number.NaN
      if (!m || Number.isNaN(value)) throw new UsageError(`--logit-bias expects ID=BIAS (e.g. 50256=-inf), got ${JSON.stringify(entry)}`)
      bias[Number(m[1])] = value
    }
    o.logitBias = bias
  }
  if (flags.format !== undefined) o.format = flags.format as GenerateOptions['format']
  // Validate before loading the model, so that a bad flag fails fast (exit 2).
  return parseOptions(GenerateOptionsSchema, o, 'generate')
}

/** `--stop '\n'` on a shell passes a backslash and an n: accept the usual escapes. */
function unescapeFlag(s: string): string {
  return s.replace(/\\([ntr\\])/g, (_, c: string) => ({ n: '\n', t: '\t', r: '\r', '\\': '\\' })[c]!)
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = []
  for await (const c of process.stdin) chunks.push(c as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}

async function inputText(flags: Flags, positionals: string[], what: string): Promise<string> {
  if (positionals.length > 0 && flags.file !== undefined) throw new UsageError(`give the ${what} as an argument or with --file, not both`)
  if (positionals.length > 0) return positionals.join(' ')
  if (flags.file !== undefined) {
    try {
      return readFileSync(flags.file, 'utf8')
    } catch (err) {
      throw new Phi2Error('E_IO', `cannot read --file ${flags.file}: ${(err as Error).message}`)
    }
  }
  if (process.stdin.isTTY) throw new UsageError(`no ${what}: give it as an argument, with --file F, or on stdin`)
  return readStdin()
}

function version(): string {
  try {
    const here = dirname(fileURLToPath(import.meta.url))
    return (JSON.parse(readFileSync(join(here, '..', 'package.json'), 'utf8')) as { version: string }).version
  } catch {
    return 'unknown'
  }
}

const log = (flags: Flags, msg: string) => {
  if (!flags.quiet) process.stderr.write(`${msg}\n`)
}

async function open(flags: Flags): Promise<{ model: Phi2Model; isDefault: boolean }> {
  const isDefault = flags.model === undefined
  const path = flags.model ?? defaultModelPath()
  if (isDefault) {
    log(flags, 'phi2: using the embedded default model: a tiny RANDOM-WEIGHT Phi-2-architecture model (its output is gibberish); pass --model PATH for real Phi-2')
  }
  const t0 = performance.now()
  const model = await loadModel(path, {
    ...loadOptions(flags),
    onProgress: (p) => {
      if (p.phase === 'loading' && p.progress === 0) log(flags, `phi2: loading ${path}`)
    },
  })
  log(
    flags,
    `phi2: loaded ${model.info.format} ${model.info.dtype}, ${model.info.numLayers} layers, context ${model.info.contextLength} in ${Math.round(performance.now() - t0)} ms`,
  )
  return { model, isDefault }
}

function jsonResult(r: { text: string; tokens: number[]; finishReason: string; usage: unknown; timings: unknown; stopString?: string }) {
  return JSON.stringify({ text: r.text, tokens: r.tokens, finishReason: r.finishReason, usage: r.usage, timings: r.timings })
}

async function cmdGenerate(flags: Flags, positionals: string[]): Promise<void> {
  const prompt = await inputText(flags, positionals, 'prompt')
  const options = generateOptions(flags)
  const { model } = await open(flags)
  const ac = new AbortController()
  const onSigint = () => ac.abort()
  process.once('SIGINT', onSigint)
  try {
    if (flags.json) {
      const r = await model.generate(prompt, { ...options, signal: ac.signal })
      process.stdout.write(`${jsonResult(r)}\n`)
      return
    }
    const stream = model.stream(prompt, { ...options, signal: ac.signal })
    for await (const chunk of stream) process.stdout.write(chunk.text)
    const r = await stream.result
    process.stdout.write('\n')
    log(
      flags,
      `phi2: ${r.finishReason}, ${r.usage.completionTokens} tokens, prompt ${r.usage.promptTokens} tokens in ${r.timings.promptMs.toFixed(1)} ms, ${r.timings.tokensPerSecond.toFixed(1)} tokens/s`,
    )
  } finally {
    process.removeListener('SIGINT', onSigint)
    model.dispose()
  }
}

async function cmdChat(flags: Flags): Promise<void> {
  const options = generateOptions(flags)
  if (options.format !== undefined) throw new UsageError('--format does not apply to chat (it always uses the chat format)')
  const { model } = await open(flags)
  const chat = model.createChat({
    ...(flags['user-name'] !== undefined ? { userName: flags['user-name'] } : {}),
    ...(flags['bot-name'] !== undefined ? { botName: flags['bot-name'] } : {}),
    ...(flags.system !== undefined ? { system: flags.system } : {}),
  })
  const interactive = Boolean(process.stdin.isTTY)
  const rl = createInterface({ input: process.stdin, output: interactive ? process.stdout : undefined, terminal: interactive })
  let current: AbortController | null = null
  rl.on('SIGINT', () => {
    if (current) current.abort()
    else rl.close()
  })
  if (interactive) {
    process.stderr.write(`phi2 chat: you are ${chat.userName}, the model is ${chat.botName}. /reset clears the context, /exit quits.\n`)
  }
  const ask = () => {
    if (interactive) {
      rl.setPrompt(`${chat.userName}: `)
      rl.prompt()
    }
  }
  ask()
  try {
    for await (const raw of rl) {
      const line = raw.trim()
      if (line === '') {
        ask()
        continue
      }
      if (line === '/exit' || line === '/quit') break
      if (line === '/reset') {
        chat.reset()
        log(flags, '(context cleared)')
        ask()
        continue
      }
      current = new AbortController()
      try {
        if (flags.json) {
          const r = await chat.send(line, { ...options, signal: current.signal })
          process.stdout.write(`${jsonResult(r)}\n`)
        } else {
          process.stdout.write(`${chat.botName}:`)
          const stream = chat.sendStream(line, { ...options, signal: current.signal })
          let first = true
          for await (const chunk of stream) {
            let t = chunk.text
            if (first && t.length > 0) {
              t = ` ${t.trimStart()}`
              if (t !== ' ') first = false
              else t = ''
            }
            process.stdout.write(t)
          }
          process.stdout.write('\n')
        }
      } catch (err) {
        if (err instanceof Phi2Error && err.code === 'E_ABORTED') process.stdout.write('\n(interrupted)\n')
        else throw err
      } finally {
        current = null
      }
      ask()
    }
  } finally {
    rl.close()
    chat.dispose()
    model.dispose()
  }
}

async function cmdTokenize(flags: Flags, positionals: string[]): Promise<void> {
  const text = await inputText(flags, positionals, 'text')
  const { model } = await open({ ...flags, quiet: flags.quiet || flags.json })
  try {
    const ids = model.tokenize(text)
    process.stdout.write(flags.json ? `${JSON.stringify({ ids })}\n` : `${ids.join(' ')}\n`)
  } finally {
    model.dispose()
  }
}

async function cmdInfo(flags: Flags): Promise<void> {
  const { model, isDefault } = await open({ ...flags, quiet: flags.quiet || flags.json })
  try {
    const info = { ...model.info, randomWeights: isDefault }
    if (flags.json) {
      process.stdout.write(`${JSON.stringify(info)}\n`)
      return
    }
    const lines: string[] = []
    if (isDefault) {
      lines.push('NOTE: this is the embedded default model, a tiny RANDOM-WEIGHT model with Phi-2\'s architecture and')
      lines.push('      tokenizer. Its output is gibberish by construction. Use --model PATH for the real Phi-2.')
    }
    for (const [k, v] of Object.entries(model.info)) lines.push(`${k.padEnd(22)} ${String(v)}`)
    process.stdout.write(`${lines.join('\n')}\n`)
  } finally {
    model.dispose()
  }
}

/** Runs the CLI; resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  let flags: Flags
  let positionals: string[]
  try {
    ;({ values: flags, positionals } = parse(argv))
  } catch (err) {
    process.stderr.write(`phi2: E_USAGE: ${(err as Error).message} (see phi2 --help)\n`)
    return 2
  }
  if (flags.version) {
    process.stdout.write(`${version()}\n`)
    return 0
  }
  const [command, ...rest] = positionals
  if (flags.help || command === undefined || command === 'help') {
    process.stdout.write(HELP)
    return command === undefined && !flags.help ? 2 : 0
  }
  try {
    switch (command) {
      case 'generate':
        await cmdGenerate(flags, rest)
        break
      case 'chat':
        if (rest.length) throw new UsageError('chat takes no arguments')
        await cmdChat(flags)
        break
      case 'tokenize':
        await cmdTokenize(flags, rest)
        break
      case 'info':
        if (rest.length) throw new UsageError('info takes no arguments')
        await cmdInfo(flags)
        break
      default:
        throw new UsageError(`unknown command ${JSON.stringify(command)} (commands: generate, chat, tokenize, info)`)
    }
    return 0
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`phi2: E_USAGE: ${err.message} (see phi2 --help)\n`)
      return 2
    }
    if (err instanceof Phi2Error) {
      let msg = err.message.replace(/\s*\n\s*/g, ' ')
      if (err.code === 'E_INVALID_OPTION' && 'path' in err && typeof err.path === 'string' && err.path) {
        msg += ` (flag --${kebab(err.path.split('.')[0]!)})`
      }
      process.stderr.write(`phi2: ${err.code}: ${msg}\n`)
      return err.code === 'E_INVALID_OPTION' ? 2 : 1
    }
    process.stderr.write(`phi2: E_INTERNAL: ${err instanceof Error ? err.message : String(err)}\n`)
    return 1
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (err: unknown) => {
    process.stderr.write(`phi2: E_INTERNAL: ${String(err)}\n`)
    process.exitCode = 1
  },
)
