#!/usr/bin/env node
/**
 * The `phi2` command line: generate, chat, tokenize, info. Errors: one line `phi2: CODE: message`
 * on stderr and exit 1; bad usage (unknown flag, a flag the command does not take, bad value,
 * invalid option) exits 2. The flags, which command takes which, and the help texts are in
 * `cli-flags.ts`.
 */
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { PERPLEXITY_HELP, runPerplexity } from './cli-perplexity.js'
import { CONVERT_HELP, runConvert } from './cli-convert.js'
import { progressBar } from './cli-progress.js'
import { SERVE_HELP, runServe } from './serve/cli.js'
import { progressBarsDisabled } from './node/hub-cache.js'
import { COMMANDS, type Command, FLAGS, type FlagName, PARSE_OPTIONS, accepts, commandHelp, globalHelp, joinDashValues } from './cli-flags.js'
import {
  type ChatOptions,
  type GenerateOptions,
  type GenerateResult,
  type LoadOptions,
  Phi2Error,
  type Phi2Model,
  defaultModelPath,
  formatChat,
  loadModel,
} from './index.js'
import { ChatOptionsSchema, GenerateOptionsSchema, LoadOptionsSchema, parseOptions } from './options.js'

class UsageError extends Error {}

type FlagValue = string | boolean | string[] | undefined
type Flags = Partial<Record<FlagName, FlagValue>>

function parse(argv: string[]): { flags: Flags; positionals: string[] } {
  const { values, positionals } = parseArgs({ args: joinDashValues(argv), options: PARSE_OPTIONS, allowPositionals: true, strict: true })
  return { flags: values as Flags, positionals }
}

const str = (flags: Flags, name: FlagName): string | undefined => {
  const v = flags[name]
  return typeof v === 'string' ? v : undefined
}
const list = (flags: Flags, name: FlagName): string[] | undefined => {
  const v = flags[name]
  return Array.isArray(v) ? v : undefined
}

const NUMBER = /^[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?$/i

/** A number flag: any decimal number (negative too); the SDK checks its range. */
function num(flags: Flags, name: FlagName): number | undefined {
  const v = str(flags, name)
  if (v === undefined) return undefined
  if (!NUMBER.test(v.trim())) throw new UsageError(`--${name} expects a number, got ${JSON.stringify(v)}`)
  return Number(v)
}

function kebab(s: string): string {
  return s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)
}

/** The flag behind an SDK option path (`logitBias.5` → `logit-bias`, `source` → `model`). */
function flagForPath(path: string): string | null {
  const head = path.split('.')[0]!
  if (head === 'source') return 'model'
  if (path === 'speculative.ngram') return 'speculative-ngram'
  if (path === 'speculative.maxDraft') return 'speculative-max-draft'
  const k = kebab(head)
  return Object.hasOwn(FLAGS, k) ? k : null
}

function loadOptions(flags: Flags): LoadOptions {
  const o: LoadOptions = {}
  const threads = num(flags, 'threads')
  if (threads !== undefined) o.threads = threads
  const ctx = num(flags, 'context-length')
  if (ctx !== undefined) o.contextLength = ctx
  const backend = str(flags, 'backend')
  if (backend !== undefined) o.backend = backend as LoadOptions['backend']
  const kv = str(flags, 'kv-cache')
  if (kv !== undefined) o.kvCache = kv as LoadOptions['kvCache']
  const revision = str(flags, 'revision')
  if (revision !== undefined) o.revision = revision
  return parseOptions(LoadOptionsSchema, o, 'load')
}

/** `ID=B`: B a number, `-inf` (ban) or `inf` (passed on: the SDK rejects it with its own message). */
function logitBiasEntry(entry: string): [number, number] {
  const m = /^\s*(\d+)\s*[=:]\s*(\S+)\s*$/.exec(entry)
  const raw = m?.[2] ?? ''
  let value = Number.NaN
  if (/^-inf(inity)?$/i.test(raw)) value = -Infinity
  else if (/^\+?inf(inity)?$/i.test(raw)) value = Infinity
  else if (NUMBER.test(raw)) value = Number(raw)
  if (!m || Number.isNaN(value)) throw new UsageError(`--logit-bias expects ID=BIAS (e.g. 50256=-inf), got ${JSON.stringify(entry)}`)
  return [Number(m[1]), value]
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
  const stop = list(flags, 'stop')
  if (stop) o.stop = stop.map(unescapeFlag)
  const bias = list(flags, 'logit-bias')
  if (bias) o.logitBias = Object.fromEntries(bias.map(logitBiasEntry))
  const format = str(flags, 'format')
  if (format !== undefined) o.format = format as GenerateOptions['format']
  const ngram = num(flags, 'speculative-ngram')
  const maxDraft = num(flags, 'speculative-max-draft')
  if (flags.speculative || ngram !== undefined || maxDraft !== undefined) {
    o.speculative = {
      ...(ngram !== undefined ? { ngram } : {}),
      ...(maxDraft !== undefined ? { maxDraft } : {}),
    }
  }
  // Validate before loading the model, so that a bad flag fails fast (exit 2).
  return parseOptions(GenerateOptionsSchema, o, 'generate')
}

/** --user-name / --bot-name / --system, validated as the SDK's chat options. */
function chatFormatOptions(flags: Flags): ChatOptions {
  const o: ChatOptions = {}
  const user = str(flags, 'user-name')
  const bot = str(flags, 'bot-name')
  const system = str(flags, 'system')
  if (user !== undefined) o.userName = user
  if (bot !== undefined) o.botName = bot
  if (system !== undefined) o.system = system
  return parseOptions(ChatOptionsSchema, o, 'chat')
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

/** The input text, and whether it came from a file or stdin (where a final newline ends the file, not the text). */
async function inputText(flags: Flags, positionals: string[], what: string): Promise<{ text: string; fromStream: boolean }> {
  const file = str(flags, 'file')
  if (positionals.length > 0 && file !== undefined) throw new UsageError(`give the ${what} as an argument or with --file, not both`)
  if (positionals.length > 0) return { text: positionals.join(' '), fromStream: false }
  if (file !== undefined) {
    try {
      return { text: readFileSync(file, 'utf8'), fromStream: true }
    } catch (err) {
      throw new Phi2Error('E_IO', `cannot read --file ${file}: ${(err as Error).message}`)
    }
  }
  if (process.stdin.isTTY) throw new UsageError(`no ${what}: give it as an argument, with --file F, or on stdin`)
  return { text: await readStdin(), fromStream: true }
}

/** One trailing newline (`\n` or `\r\n`) of a file / stdin, as `$(cat F)` drops it. */
function dropFinalNewline(text: string): string {
  return text.replace(/\r?\n$/, '')
}

function version(): string {
  try {
    const here = dirname(fileURLToPath(import.meta.url))
    return (JSON.parse(readFileSync(join(here, '..', 'package.json'), 'utf8')) as { version: string }).version
  } catch {
    return 'unknown'
  }
}

// ------------------------------------------------------------------------- output streams

/**
 * Aborted when stdout's reader goes away (EPIPE, e.g. `phi2 generate ... | head -c 10`): work
 * stops, nothing more is written, and phi2 exits 0 quietly (as `yes | head` ends).
 */
const stdoutGone = new AbortController()
let stdoutError: Error | null = null

function watchOutput(): void {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (stdoutGone.signal.aborted) return
    if (err.code !== 'EPIPE' && err.code !== 'ERR_STREAM_DESTROYED') stdoutError = err
    stdoutGone.abort()
  })
  // A closed stderr (2>&1 | head) only stops the log lines.
  process.stderr.on('error', () => {})
}

function out(text: string): void {
  if (!stdoutGone.signal.aborted) process.stdout.write(text)
}

const log = (flags: Flags, msg: string) => {
  if (!flags.quiet && !process.stderr.destroyed) process.stderr.write(`${msg}\n`)
}

async function open(flags: Flags): Promise<{ model: Phi2Model; isDefault: boolean }> {
  const model = str(flags, 'model')
  const isDefault = model === undefined
  const path = model ?? defaultModelPath()
  if (isDefault) {
    log(flags, 'phi2: using the embedded default model: a 14M-parameter Phi-2-architecture model trained on Python\'s standard library and docs (NOT Microsoft\'s Phi-2); pass --model PATH for real Phi-2')
  }
  const t0 = performance.now()
  // Hub downloads: a progress bar on a TTY (not with --quiet or HF_HUB_DISABLE_PROGRESS_BARS).
  const bar = progressBar(!flags.quiet && !progressBarsDisabled())
  let downloading = false
  const m = await loadModel(path, {
    ...loadOptions(flags),
    onProgress: (p) => {
      if (p.phase === 'download' && p.file !== undefined) {
        if (!downloading) log(flags, `phi2: downloading ${path} into the Hugging Face cache`)
        downloading = true
        bar.update(p.file, p.loadedBytes, p.totalBytes)
      }
      if (p.phase === 'loading' && p.progress === 0) {
        bar.done()
        log(flags, `phi2: loading ${path}`)
      }
    },
  }).finally(() => bar.done())
  log(
    flags,
    `phi2: loaded ${m.info.format} ${m.info.dtype}, ${m.info.numLayers} layers, context ${m.info.contextLength} in ${Math.round(performance.now() - t0)} ms`,
  )
  return { model: m, isDefault }
}

function jsonResult(r: GenerateResult) {
  return JSON.stringify({
    text: r.text,
    tokens: r.tokens,
    finishReason: r.finishReason,
    usage: r.usage,
    timings: r.timings,
    ...(r.speculation ? { speculation: r.speculation } : {}),
  })
}

/** An AbortSignal for one generation: Ctrl-C, or stdout's reader going away. */
function generationSignal(): { signal: AbortSignal; done: () => void } {
  const ac = new AbortController()
  const onSigint = () => ac.abort()
  const onGone = () => ac.abort()
  process.once('SIGINT', onSigint)
  stdoutGone.signal.addEventListener('abort', onGone, { once: true })
  return {
    signal: ac.signal,
    done: () => {
      process.removeListener('SIGINT', onSigint)
      stdoutGone.signal.removeEventListener('abort', onGone)
    },
  }
}

// ------------------------------------------------------------------------------- commands

const CHAT_FORMAT_FLAGS = ['user-name', 'bot-name', 'system'] as const

async function cmdGenerate(flags: Flags, positionals: string[]): Promise<void> {
  let options = generateOptions(flags)
  const format = options.format ?? 'none'
  const names = CHAT_FORMAT_FLAGS.filter((n) => flags[n] !== undefined)
  if (names.length > 0 && format !== 'chat') {
    throw new UsageError(`--${names[0]} applies to generate --format chat only (the chat format's speaker names and system line)`)
  }
  const chatFormat = names.length > 0 ? chatFormatOptions(flags) : null
  const input = await inputText(flags, positionals, 'prompt')
  let prompt = input.fromStream && format !== 'none' ? dropFinalNewline(input.text) : input.text
  if (chatFormat) {
    // The chat format with its own names / system line (the SDK's `format: 'chat'` uses Alice and Bob).
    const f = formatChat(prompt, chatFormat)
    prompt = f.prompt
    options = { ...options, format: 'none', stop: options.stop ?? f.stop }
  }
  const { model } = await open(flags)
  const { signal, done } = generationSignal()
  try {
    if (flags.json) {
      const r = await model.generate(prompt, { ...options, signal })
      out(`${jsonResult(r)}\n`)
      return
    }
    const stream = model.stream(prompt, { ...options, signal })
    for await (const chunk of stream) out(chunk.text)
    const r = await stream.result
    out('\n')
    log(
      flags,
      `phi2: ${r.finishReason}, ${r.usage.completionTokens} tokens, prompt ${r.usage.promptTokens} tokens in ${r.timings.promptMs.toFixed(1)} ms, ${r.timings.tokensPerSecond.toFixed(1)} tokens/s` +
        (r.speculation
          ? `, speculative: ${r.speculation.accepted}/${r.speculation.drafted} draft tokens accepted in ${r.speculation.passes} passes`
          : ''),
    )
  } catch (err) {
    // The reader went away: stop quietly.
    if (stdoutGone.signal.aborted && err instanceof Phi2Error && err.code === 'E_ABORTED') return
    throw err
  } finally {
    done()
    model.dispose()
  }
}

const CHAT_COMMANDS = `Commands:
  /help           this list
  /reset          forget the conversation (clears the model's context)
  /exit, /quit    quit (so does end of input, or Ctrl-D)
Any other line is sent to the model as your message. Ctrl-C stops a reply.`

async function cmdChat(flags: Flags): Promise<void> {
  const options = generateOptions(flags)
  const chatOptions = chatFormatOptions(flags)
  const { model } = await open(flags)
  const chat = model.createChat(chatOptions)
  const interactive = Boolean(process.stdin.isTTY)
  const rl = createInterface({ input: process.stdin, output: interactive ? process.stdout : undefined, terminal: interactive })
  let current: AbortController | null = null
  rl.on('SIGINT', () => {
    if (current) current.abort()
    else rl.close()
  })
  const onGone = () => {
    current?.abort()
    rl.close()
  }
  stdoutGone.signal.addEventListener('abort', onGone, { once: true })
  if (interactive) {
    process.stderr.write(`phi2 chat: you are ${chat.userName}, the model is ${chat.botName}. /help lists the commands, /exit quits.\n`)
  }
  const ask = () => {
    if (interactive && !stdoutGone.signal.aborted) {
      rl.setPrompt(`${chat.userName}: `)
      rl.prompt()
    }
  }
  ask()
  try {
    for await (const raw of rl) {
      if (stdoutGone.signal.aborted) break
      const line = raw.trim()
      if (line === '') {
        ask()
        continue
      }
      if (line === '/exit' || line === '/quit') break
      if (line === '/help') {
        process.stderr.write(`${CHAT_COMMANDS}\n`)
        ask()
        continue
      }
      if (line === '/reset') {
        chat.reset()
        log(flags, '(context cleared)')
        ask()
        continue
      }
      if (/^\/[a-z]+$/i.test(line)) {
        process.stderr.write(`phi2 chat: unknown command ${line} (not sent to the model; /help lists the commands)\n`)
        ask()
        continue
      }
      current = new AbortController()
      let started = false
      try {
        if (flags.json) {
          const r = await chat.send(line, { ...options, signal: current.signal })
          out(`${jsonResult(r)}\n`)
        } else {
          const stream = chat.sendStream(line, { ...options, signal: current.signal })
          let first = true
          for await (const chunk of stream) {
            if (!started) {
              // Written with the first chunk, so that a refused message prints no reply line.
              out(`${chat.botName}:`)
              started = true
            }
            let t = chunk.text
            if (first && t.length > 0) {
              t = ` ${t.trimStart()}`
              if (t !== ' ') first = false
              else t = ''
            }
            out(t)
          }
          out('\n')
        }
      } catch (err) {
        if (stdoutGone.signal.aborted) break
        if (err instanceof Phi2Error && err.code === 'E_ABORTED') out(`${started ? '\n' : ''}(interrupted)\n`)
        else if (err instanceof Phi2Error && err.code === 'E_PROMPT_TOO_LONG') {
          // One message too long for the context even alone: refuse it, keep the conversation.
          if (started) out('\n')
          process.stderr.write(`phi2: E_PROMPT_TOO_LONG: ${oneLine(err.message)} (message not sent; the chat goes on, /help lists the commands)\n`)
        } else throw err
      } finally {
        current = null
      }
      ask()
    }
  } finally {
    stdoutGone.signal.removeEventListener('abort', onGone)
    rl.close()
    chat.dispose()
    model.dispose()
  }
}

async function cmdTokenize(flags: Flags, positionals: string[]): Promise<void> {
  const { text } = await inputText(flags, positionals, 'text')
  const { model } = await open({ ...flags, quiet: Boolean(flags.quiet || flags.json) })
  try {
    const ids = model.tokenize(text)
    out(flags.json ? `${JSON.stringify({ ids })}\n` : `${ids.join(' ')}\n`)
  } finally {
    model.dispose()
  }
}

/** `runtime: {backend, build}` → `runtime.backend`, `runtime.build` lines. */
function infoLines(obj: Record<string, unknown>, prefix = ''): string[] {
  const lines: string[] = []
  for (const [k, v] of Object.entries(obj)) {
    const key = `${prefix}${k}`
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) lines.push(...infoLines(v as Record<string, unknown>, `${key}.`))
    else lines.push(`${key.padEnd(22)} ${Array.isArray(v) ? v.join(', ') : String(v)}`)
  }
  return lines
}

async function cmdInfo(flags: Flags): Promise<void> {
  const { model, isDefault } = await open({ ...flags, quiet: Boolean(flags.quiet || flags.json) })
  try {
    const info = { ...model.info, embeddedDefault: isDefault }
    if (flags.json) {
      out(`${JSON.stringify(info)}\n`)
      return
    }
    const lines: string[] = []
    if (isDefault) {
      lines.push('NOTE: this is the embedded default model, NOT Microsoft\'s Phi-2: a 14M-parameter model with Phi-2\'s')
      lines.push('      architecture and tokenizer, trained on CPython\'s standard library and documentation (see the')
      lines.push('      README). Use --model PATH for the real Phi-2.')
    }
    lines.push(...infoLines(model.info))
    out(`${lines.join('\n')}\n`)
  } finally {
    model.dispose()
  }
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ')
}

function usageLine(message: string, command: Command | null): string {
  return `phi2: E_USAGE: ${message} (see phi2 ${command ? `${command} ` : ''}--help)\n`
}

/** Why a given flag is refused by `command`. */
function notForCommand(flag: FlagName, command: Command): string {
  if (flag === 'version') return `--version takes no command (phi2 --version)`
  if (flag === 'format' && command === 'chat') return '--format does not apply to chat (it always uses the chat format)'
  if (flag === 'file' && command === 'chat') return '--file does not apply to chat (it reads its messages from stdin, one per line)'
  return `--${flag} does not apply to ${command}`
}

/** Runs the CLI; resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  // `phi2 convert` has its own flags and help (cli-convert.ts).
  if (argv[0] === 'convert') return runConvert(argv.slice(1))
  if (argv[0] === 'help' && argv[1] === 'convert') {
    out(CONVERT_HELP)
    return 0
  }
  // `phi2 perplexity` has its own flags and help (cli-perplexity.ts).
  if (argv[0] === 'perplexity') return runPerplexity(argv.slice(1))
  if (argv[0] === 'help' && argv[1] === 'perplexity') {
    out(PERPLEXITY_HELP)
    return 0
  }
  // `phi2 serve` has its own flags and help (serve/cli.ts).
  if (argv[0] === 'serve') return runServe(argv.slice(1))
  if (argv[0] === 'help' && argv[1] === 'serve') {
    out(SERVE_HELP)
    return 0
  }
  let flags: Flags
  let positionals: string[]
  try {
    ;({ flags, positionals } = parse(argv))
  } catch (err) {
    process.stderr.write(usageLine((err as Error).message, null))
    return 2
  }
  const [first, ...rest] = positionals
  if (first === undefined) {
    if (flags.version) {
      out(`${version()}\n`)
      return 0
    }
    out(globalHelp())
    return flags.help ? 0 : 2
  }
  if (first === 'help') {
    const topic = rest[0]
    if (topic === undefined) {
      out(globalHelp())
      return 0
    }
    if (!(COMMANDS as readonly string[]).includes(topic)) {
      process.stderr.write(usageLine(`unknown command ${JSON.stringify(topic)} (commands: ${COMMANDS.join(', ')})`, null))
      return 2
    }
    out(commandHelp(topic as Command))
    return 0
  }
  if (!(COMMANDS as readonly string[]).includes(first)) {
    process.stderr.write(usageLine(`unknown command ${JSON.stringify(first)} (commands: ${COMMANDS.join(', ')})`, null))
    return 2
  }
  const command = first as Command
  if (flags.help) {
    out(commandHelp(command))
    return 0
  }
  try {
    for (const name of Object.keys(flags) as FlagName[]) {
      if (flags[name] !== undefined && !accepts(command, name)) throw new UsageError(notForCommand(name, command))
    }
    if ((command === 'chat' || command === 'info') && rest.length) throw new UsageError(`${command} takes no arguments`)
    switch (command) {
      case 'generate':
        await cmdGenerate(flags, rest)
        break
      case 'chat':
        await cmdChat(flags)
        break
      case 'tokenize':
        await cmdTokenize(flags, rest)
        break
      case 'info':
        await cmdInfo(flags)
        break
    }
    return finalCode(0)
  } catch (err) {
    if (stdoutGone.signal.aborted) return finalCode(0)
    if (err instanceof UsageError) {
      process.stderr.write(usageLine(err.message, command))
      return 2
    }
    if (err instanceof Phi2Error) {
      let msg = oneLine(err.message)
      const flag = err.code === 'E_INVALID_OPTION' && 'path' in err && typeof err.path === 'string' && err.path ? flagForPath(err.path) : null
      if (flag) msg += ` (flag --${flag})`
      process.stderr.write(`phi2: ${err.code}: ${msg}\n`)
      return err.code === 'E_INVALID_OPTION' ? 2 : 1
    }
    process.stderr.write(`phi2: E_INTERNAL: ${err instanceof Error ? err.message : String(err)}\n`)
    return 1
  }
}

/** Exit 0 when stdout's reader went away (EPIPE); 1 when writing to stdout failed otherwise. */
function finalCode(code: number): number {
  if (stdoutError) {
    process.stderr.write(`phi2: E_IO: cannot write to stdout: ${stdoutError.message}\n`)
    return 1
  }
  return code
}

watchOutput()
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (err: unknown) => {
    process.stderr.write(`phi2: E_INTERNAL: ${String(err)}\n`)
    process.exitCode = 1
  },
)
