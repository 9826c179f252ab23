// The `phi2` CLI as a demanding user runs it (node dist/cli.js): flag values, per-command flags and
// help, input from files / stdin, a reader that goes away, `info` text, and chat sessions.
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { DEFAULT_SAMPLING, GenerateOptionsSchema } from '@x/phi2'
import { FLAGS, type FlagName, accepts } from '../src/cli-flags.js'
import { CLI, fixture } from './helpers.js'

function phi2(args: string[], input?: string) {
  const r = spawnSync(process.execPath, [CLI, ...args], { input: input ?? '', encoding: 'utf8', timeout: 60_000 })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

const tmp = mkdtempSync(join(tmpdir(), 'phi2-cli-usage-'))
afterAll(() => rmSync(tmp, { recursive: true, force: true }))

const model = () => fixture('tiny-q8_0.gguf')
const gen = (...args: string[]) => ['generate', '--model', model(), '--json', '--quiet', ...args]
const json = (r: { code: number | null; stdout: string; stderr: string }) => {
  expect(r.code, r.stderr).toBe(0)
  return JSON.parse(r.stdout)
}
function tokenize(text: string): number[] {
  const f = join(tmp, `tok-${Math.random().toString(36).slice(2)}.txt`)
  writeFileSync(f, text)
  return json(phi2(['tokenize', '--model', model(), '--json', '--file', f])).ids
}

describe('flag values', () => {
  it('negative numbers parse as values: --presence-penalty -0.5 / --frequency-penalty -1 act like the = form', () => {
    const spaced = phi2(gen('--max-new-tokens', '6', '--presence-penalty', '-0.5', '--frequency-penalty', '-1', 'Hello'))
    const joined = phi2(gen('--max-new-tokens', '6', '--presence-penalty=-0.5', '--frequency-penalty=-1', 'Hello'))
    expect(spaced.stderr).not.toMatch(/ambiguous/)
    expect(json(spaced).tokens).toEqual(json(joined).tokens)
    // The logit bias value -inf after a space too: token 11 banned.
    const free = json(phi2(gen('--max-new-tokens', '6', 'Hello')))
    const banned = json(phi2(gen('--max-new-tokens', '6', '--logit-bias', `${free.tokens[0]}=-inf`, 'Hello')))
    expect(banned.tokens).not.toContain(free.tokens[0])
  })

  it('an out-of-range negative value gets the option\'s own range error (exit 2), on every number flag', () => {
    const cases: Array<[string, string, RegExp]> = [
      ['--temperature', '-1', /"temperature".*>=0.*\(flag --temperature\)/],
      ['--seed', '-1', /"seed".*>=0.*\(flag --seed\)/],
      ['--presence-penalty', '-101', /"presencePenalty".*>=-100.*\(flag --presence-penalty\)/],
      ['--frequency-penalty', '-100.5', /"frequencyPenalty".*>=-100/],
      ['--max-new-tokens', '-3', /"maxNewTokens".*>=1/],
      ['--top-k', '-1', /"topK".*>=0/],
      ['--top-p', '-0.5', /"topP".*>0/],
      ['--min-p', '-0.1', /"minP".*>=0/],
      ['--repetition-penalty', '-2', /"repetitionPenalty".*>0/],
      ['--threads', '-2', /"threads".*>=1.*\(flag --threads\)/],
      ['--context-length', '-5', /"contextLength".*>=2.*\(flag --context-length\)/],
      ['--kv-cache', 'f8', /"kvCache".*"f32"\|"f16".*\(flag --kv-cache\)/],
    ]
    for (const [flag, value, message] of cases) {
      const r = phi2(['generate', '--model', model(), flag, value, 'Hi'])
      expect(r.code, `${flag} ${value}: ${r.stderr}`).toBe(2)
      expect(r.stderr, flag).toMatch(/^phi2: E_INVALID_OPTION: /)
      expect(r.stderr, flag).toMatch(message)
      expect(r.stderr, flag).not.toMatch(/ambiguous/)
    }
    // Not a number at all: the CLI's own message.
    for (const v of ['hot', '0x10', '', '1e', 'inf']) {
      const r = phi2(['generate', '--temperature', v, 'Hi'])
      expect(r.code, v).toBe(2)
      expect(r.stderr).toMatch(/E_USAGE: --temperature expects a number/)
    }
  })

  it('--logit-bias: -inf bans, +inf / inf is rejected with the SDK\'s own message', () => {
    for (const v of ['inf', '+inf', 'Infinity', '1e999']) {
      const r = phi2(['generate', '--model', model(), '--logit-bias', `5=${v}`, 'Hi'])
      expect(r.code, v).toBe(2)
      expect(r.stderr).toMatch(/^phi2: E_INVALID_OPTION: Invalid generate option "logitBias\.5": must be a finite number or -Infinity.*\(flag --logit-bias\)/)
    }
    // 5=inf no longer silently means a ban: banning the greedy first token changes the output.
    const free = json(phi2(gen('--max-new-tokens', '4', 'Hi')))
    const t = free.tokens[0]
    for (const ban of ['-inf', '-Infinity', '-INF']) {
      expect(json(phi2(gen('--max-new-tokens', '4', '--logit-bias', `${t}=${ban}`, 'Hi'))).tokens[0]).not.toBe(t)
    }
    expect(json(phi2(gen('--max-new-tokens', '4', '--logit-bias', `${t}=-1e3`, 'Hi'))).tokens[0]).not.toBe(t)
    expect(phi2(['generate', '--logit-bias', '5=lots', 'Hi']).stderr).toMatch(/E_USAGE: --logit-bias expects ID=BIAS/)
  })
})

describe('prompt input', () => {
  const q = 'What is 2+2?'
  it('one trailing newline of stdin / --file is not part of a formatted prompt; --format none keeps it', () => {
    const file = join(tmp, 'q.txt')
    writeFileSync(file, `${q}\n`)
    const crlf = join(tmp, 'q-crlf.txt')
    writeFileSync(crlf, `${q}\r\n`)
    for (const format of ['qa', 'chat', 'code']) {
      const arg = json(phi2(gen('--format', format, '--max-new-tokens', '2', q)))
      const fromStdin = json(phi2(gen('--format', format, '--max-new-tokens', '2'), `${q}\n`))
      const fromFile = json(phi2(gen('--format', format, '--max-new-tokens', '2', '--file', file)))
      const fromCrlf = json(phi2(gen('--format', format, '--max-new-tokens', '2', '--file', crlf)))
      for (const r of [fromStdin, fromFile, fromCrlf]) {
        expect(r.usage.promptTokens, format).toBe(arg.usage.promptTokens)
        expect(r.tokens, format).toEqual(arg.tokens)
      }
    }
    expect(json(phi2(gen('--format', 'qa', '--max-new-tokens', '2'), `${q}\n`)).usage.promptTokens).toBe(tokenize(`Instruct: ${q}\nOutput:`).length)
    // Only one newline goes: a blank last line stays.
    expect(json(phi2(gen('--format', 'qa', '--max-new-tokens', '2'), `${q}\n\n`)).usage.promptTokens).toBe(tokenize(`Instruct: ${q}\n\nOutput:`).length)
    // --format none (the default): exactly the text, newline included.
    expect(json(phi2(gen('--max-new-tokens', '2'), `${q}\n`)).usage.promptTokens).toBe(tokenize(`${q}\n`).length)
    expect(json(phi2(gen('--format', 'none', '--max-new-tokens', '2', '--file', file))).usage.promptTokens).toBe(tokenize(`${q}\n`).length)
  })
})

describe('a reader that goes away', () => {
  /** Runs the CLI with its stdout closed by the reader after `keep` bytes (0: before any output). */
  function closedReader(args: string[], keep: number): Promise<{ code: number | null; signal: string | null; stderr: string; got: string }> {
    return new Promise((resolve) => {
      const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
      let got = ''
      let stderr = ''
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
      if (keep === 0) child.stdout.destroy()
      else
        child.stdout.setEncoding('utf8').on('data', (d: string) => {
          got += d
          if (got.length >= keep) child.stdout.destroy()
        })
      child.on('close', (code, signal) => resolve({ code, signal, stderr, got }))
    })
  }

  it('generate stops and exits 0 quietly when stdout is closed (streamed and --json), as do tokenize and info', async () => {
    const cases = [
      ['generate', '--model', model(), '--max-new-tokens', '120', '--logit-bias', '50256=-inf', 'hi'],
      ['generate', '--model', model(), '--max-new-tokens', '120', '--json', 'hi'],
      ['tokenize', '--model', model(), 'hello world'],
      ['info', '--model', model()],
      ['info', '--json'],
    ]
    for (const args of cases) {
      const r = await closedReader(args, 0)
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0)
      expect(r.stderr, args.join(' ')).not.toMatch(/EPIPE|Error|\n\s+at /)
    }
  })

  it('generate | head -c 10: no stack trace, exit status 0', () => {
    const r = spawnSync(
      'bash',
      ['-c', `"${process.execPath}" "${CLI}" generate hi --model "${model()}" --max-new-tokens 120 --logit-bias 50256=-inf | head -c 10; echo " rc=\${PIPESTATUS[0]}"`],
      { encoding: 'utf8', timeout: 60_000 },
    )
    expect(r.stdout).toMatch(/ rc=0\n$/)
    expect(r.stdout.replace(/ rc=0\n$/, '')).toHaveLength(10)
    expect(r.stderr).not.toMatch(/EPIPE|Error|\n\s+at /)
  })
})

describe('info', () => {
  it('prints nested facts (runtime) as readable lines, never [object Object]', () => {
    const r = phi2(['info', '--model', model()])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).not.toMatch(/object Object/)
    expect(r.stdout).toMatch(/^runtime\.backend\s+cpu$/m)
    expect(r.stdout).toMatch(/^runtime\.build\s+native$/m)
    expect(r.stdout).toMatch(/^runtime\.threads\s+\d+$/m)
    expect(r.stdout).toMatch(/^format\s+gguf$/m)
  })
})

describe('flags per command', () => {
  it('implements --user-name / --bot-name / --system for generate --format chat', () => {
    const named = json(phi2(gen('--format', 'chat', '--user-name', 'Me', '--bot-name', 'AI', '--system', 'A short talk.', '--max-new-tokens', '3', 'Hi')))
    expect(named.usage.promptTokens).toBe(tokenize('A short talk.\nMe: Hi\nAI:').length)
    const plain = json(phi2(gen('--format', 'chat', '--max-new-tokens', '3', 'Hi')))
    expect(plain.usage.promptTokens).toBe(tokenize('Alice: Hi\nBob:').length)
    // The names' stop strings come with them: a reply is cut at "\nMe:".
    const long = json(phi2(gen('--format', 'chat', '--user-name', 'Me', '--stop', 'zzzz', '--max-new-tokens', '40', '--logit-bias', '50256=-inf', 'Hi')))
    const at = long.text.indexOf(' the')
    if (at > 0) {
      const cut = json(phi2(gen('--format', 'chat', '--user-name', 'Me', '--stop', ' the', '--max-new-tokens', '40', '--logit-bias', '50256=-inf', 'Hi')))
      expect(cut.text).toBe(long.text.slice(0, at))
    }
    // Bad names get the SDK's message.
    const bad = phi2(gen('--format', 'chat', '--user-name', 'A:B', 'Hi'))
    expect(bad.code).toBe(2)
    expect(bad.stderr).toMatch(/"userName".*\(flag --user-name\)/)
  })

  it('rejects a flag that does nothing for the command: exit 2, naming the flag and the command', () => {
    const cases: Array<[string[], RegExp]> = [
      [['tokenize', '--do-sample', 'hi'], /--do-sample does not apply to tokenize \(see phi2 tokenize --help\)/],
      [['tokenize', '--temperature', '0.5', 'hi'], /--temperature does not apply to tokenize/],
      [['tokenize', '--format', 'qa', 'hi'], /--format does not apply to tokenize/],
      [['info', '--format', 'qa'], /--format does not apply to info \(see phi2 info --help\)/],
      [['info', '--stop', 'x'], /--stop does not apply to info/],
      [['info', '--file', 'x'], /--file does not apply to info/],
      [['info', '--system', 'x'], /--system does not apply to info/],
      [['chat', '--format', 'qa'], /--format does not apply to chat/],
      [['chat', '--file', 'x'], /--file does not apply to chat/],
      [['generate', '--user-name', 'Me', 'Hi'], /--user-name applies to generate --format chat only/],
      [['generate', '--format', 'qa', '--system', 'S', 'Hi'], /--system applies to generate --format chat only/],
      [['generate', '--bot-name', 'AI', '--format', 'code', 'Hi'], /--bot-name applies to generate --format chat only/],
      [['generate', '--version', 'Hi'], /--version takes no command/],
    ]
    for (const [args, message] of cases) {
      const r = phi2(args)
      expect(r.code, args.join(' ')).toBe(2)
      expect(r.stderr, args.join(' ')).toMatch(/^phi2: E_USAGE: /)
      expect(r.stderr, args.join(' ')).toMatch(message)
      expect(r.stdout).toBe('')
    }
  })
})

describe('help', () => {
  const commands = ['generate', 'chat', 'tokenize', 'info'] as const
  const flagsIn = (help: string) => [...help.matchAll(/^  (?:-\w, )?--([a-z-]+)/gm)].map((m) => m[1]!)

  it('each command has its own help (also as phi2 help CMD), listing exactly the flags it takes', () => {
    const global = phi2(['--help'])
    expect(global.code).toBe(0)
    for (const cmd of commands) {
      const r = phi2([cmd, '--help'])
      expect(r.code).toBe(0)
      expect(r.stdout).toMatch(new RegExp(`^Usage: phi2 ${cmd}\\b`))
      expect(r.stdout).not.toBe(global.stdout)
      expect(phi2(['help', cmd]).stdout).toBe(r.stdout)
      expect(phi2([cmd, '-h']).stdout).toBe(r.stdout)
      // The help lists exactly the flags the command accepts.
      const accepted = (Object.keys(FLAGS) as FlagName[]).filter((f) => accepts(cmd, f))
      expect(flagsIn(r.stdout).sort(), cmd).toEqual(accepted.sort())
    }
    expect(flagsIn(phi2(['tokenize', '--help']).stdout).sort()).toEqual(['backend', 'context-length', 'file', 'help', 'json', 'kv-cache', 'model', 'quiet', 'revision', 'threads'])
    expect(flagsIn(phi2(['info', '--help']).stdout).sort()).toEqual(['backend', 'context-length', 'help', 'json', 'kv-cache', 'model', 'quiet', 'revision', 'threads'])
    // --kv-cache reaches the engine: `info --json` reports what the cache stores.
    expect(JSON.parse(phi2(['info', '--model', model(), '--kv-cache', 'f16', '--json']).stdout).kvCache).toBe('f16')
    const chat = flagsIn(phi2(['chat', '--help']).stdout)
    expect(chat).toContain('user-name')
    expect(chat).not.toContain('format')
    expect(chat).not.toContain('file')
    expect(phi2(['chat', '--help']).stdout).toMatch(/\/reset/)
    expect(flagsIn(phi2(['generate', '--help']).stdout)).toEqual(expect.arrayContaining(['format', 'file', 'presence-penalty', 'logit-bias', 'user-name']))
    expect(phi2(['help', 'bogus']).code).toBe(2)
  })

  it('states the SDK\'s defaults and ranges: each range in the help is the one GenerateOptionsSchema enforces', () => {
    const help = phi2(['generate', '--help']).stdout
    // A flag's entry: its line and the indented lines that continue it.
    const lines = help.split('\n')
    const line = (flag: string) => {
      const i = lines.findIndex((l) => l.startsWith(`  --${flag} `))
      expect(i, flag).toBeGreaterThan(-1)
      let entry = lines[i]!
      for (let j = i + 1; j < lines.length && /^ {20,}\S/.test(lines[j]!); j++) entry += ` ${lines[j]!.trim()}`
      return entry
    }
    const defaults: Record<string, number> = {
      'max-new-tokens': DEFAULT_SAMPLING.maxNewTokens,
      temperature: DEFAULT_SAMPLING.temperature,
      'top-k': DEFAULT_SAMPLING.topK,
      'top-p': DEFAULT_SAMPLING.topP,
      'min-p': DEFAULT_SAMPLING.minP,
      'repetition-penalty': DEFAULT_SAMPLING.repetitionPenalty,
      'presence-penalty': DEFAULT_SAMPLING.presencePenalty,
      'frequency-penalty': DEFAULT_SAMPLING.frequencyPenalty,
    }
    for (const [flag, value] of Object.entries(defaults)) expect(line(flag), flag).toMatch(new RegExp(`default ${value}\\b`))
    const keys: Record<string, string> = {
      temperature: 'temperature',
      'top-k': 'topK',
      'top-p': 'topP',
      'min-p': 'minP',
      'repetition-penalty': 'repetitionPenalty',
      'presence-penalty': 'presencePenalty',
      'frequency-penalty': 'frequencyPenalty',
      seed: 'seed',
    }
    const ok = (key: string, v: number) => GenerateOptionsSchema.safeParse({ [key]: v }).success
    const num = (s: string) => (s === '2^53-1' ? Number.MAX_SAFE_INTEGER : Number(s))
    for (const [flag, key] of Object.entries(keys)) {
      const l = line(flag)
      const integer = /\binteger\b/.test(l)
      const eps = integer ? 1 : 1e-6
      let m: RegExpMatchArray | null
      if ((m = l.match(/([([])(-?[\d.]+), (-?[\d.]+)([)\]])/))) {
        const [, open, lo, hi, close] = m
        expect(ok(key, Number(lo)), `${flag} ${lo}`).toBe(open === '[')
        expect(ok(key, Number(lo) - eps), `${flag} below`).toBe(false)
        expect(ok(key, Number(hi)), `${flag} ${hi}`).toBe(close === ']')
        expect(ok(key, Number(hi) + eps), `${flag} above`).toBe(false)
      } else if ((m = l.match(/(-?[\d.]+)\.\.(2\^53-1|-?[\d.]+)/))) {
        const lo = num(m[1]!)
        const hi = num(m[2]!)
        expect(ok(key, lo) && ok(key, hi), `${flag} ${lo}..${hi}`).toBe(true)
        expect(ok(key, lo - eps) || ok(key, hi + (hi === Number.MAX_SAFE_INTEGER ? hi : eps)), `${flag} outside`).toBe(false)
      } else if ((m = l.match(/>= (\d+)/))) {
        expect(ok(key, Number(m[1])), flag).toBe(true)
        expect(ok(key, Number(m[1]) - eps), flag).toBe(false)
      } else throw new Error(`no range in the help line of --${flag}: ${l}`)
    }
  })
})

describe('chat session', () => {
  it('refuses one message too long for the context and goes on; /help lists the commands without sending them', () => {
    const long = Array.from({ length: 100 }, (_, i) => `word${i}`).join(' ') // > 200 tokens: more than the context (128)
    const input = `Hello\n/help\n${long}\nAnd now?\n/bogus\n/exit\n`
    const r = phi2(['chat', '--model', model(), '--json', '--quiet', '--max-new-tokens', '4', '--stop', 'zzzz'], input)
    expect(r.code, r.stderr).toBe(0)
    const replies = r.stdout.trim().split('\n').map((l) => JSON.parse(l))
    expect(replies).toHaveLength(2) // Hello, And now?
    // The second reply continues the first conversation (its history was kept).
    expect(replies[1].usage.promptTokensEvaluated).toBeLessThan(replies[1].usage.promptTokens)
    expect(r.stderr).toMatch(/^phi2: E_PROMPT_TOO_LONG: .*message not sent; the chat goes on/m)
    expect(r.stderr).not.toMatch(/reset\(\)/)
    expect(r.stderr).toMatch(/\/reset/)
    expect(r.stderr).toMatch(/\/exit/)
    expect(r.stderr).toMatch(/unknown command \/bogus/)
    // Streamed: no dangling "Bob:" for the refused message.
    const plain = phi2(['chat', '--model', model(), '--quiet', '--max-new-tokens', '3'], `${long}\nHi\n`)
    expect(plain.code, plain.stderr).toBe(0)
    expect(plain.stdout.split('\n').filter((l) => l.startsWith('Bob:'))).toHaveLength(1)
  })
})
