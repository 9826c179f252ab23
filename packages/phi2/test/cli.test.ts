// The `phi2` CLI as a user runs it (node dist/cli.js), against the golden data.
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { CLI, PROMPT_IDS, PROMPT_TEXT, fixture, hfGolden } from './helpers.js'

function phi2(args: string[], input?: string) {
  const r = spawnSync(process.execPath, [CLI, ...args], { input: input ?? '', encoding: 'utf8', timeout: 60_000 })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

const tmp = mkdtempSync(join(tmpdir(), 'phi2-cli-'))
afterAll(() => rmSync(tmp, { recursive: true, force: true }))

describe('phi2 CLI', () => {
  it('generate --json on the HF golden model gives the golden greedy tokens', () => {
    const g = hfGolden('tiny')
    const promptFile = join(tmp, 'prompt.txt')
    writeFileSync(promptFile, PROMPT_TEXT)
    for (const model of [fixture('tiny'), fixture('tiny-f32.gguf')]) {
      const r = phi2(['generate', '--model', model, '--json', '--file', promptFile, '--max-new-tokens', String(g.tokens.length)])
      expect(r.stderr).toContain('phi2: loading')
      expect(r.code, r.stderr).toBe(0)
      const out = JSON.parse(r.stdout)
      expect(out.tokens).toEqual(g.tokens)
      expect(out.finishReason).toBe('length')
      expect(out.usage).toMatchObject({ promptTokens: PROMPT_IDS.length, completionTokens: g.tokens.length })
      expect(typeof out.text).toBe('string')
    }
  })

  it('generate streams to stdout; prompt from argument, stdin or --file agree', () => {
    const model = fixture('tiny-q8_0.gguf')
    const json = JSON.parse(phi2(['generate', '--model', model, '--json', '--quiet', '--max-new-tokens', '12', PROMPT_TEXT]).stdout)
    const streamed = phi2(['generate', '--model', model, '--max-new-tokens', '12', PROMPT_TEXT])
    expect(streamed.code).toBe(0)
    expect(streamed.stdout).toBe(`${json.text}\n`)
    expect(streamed.stderr).toMatch(/length, 12 tokens/)
    const fromStdin = phi2(['generate', '--model', model, '--json', '--quiet', '--max-new-tokens', '12'], PROMPT_TEXT)
    expect(JSON.parse(fromStdin.stdout).tokens).toEqual(json.tokens)
  })

  it('passes sampling flags, stop strings, logit bias and formats through', () => {
    const model = fixture('tiny-q8_0.gguf')
    const args = ['generate', '--model', model, '--json', '--quiet', '--do-sample', '--temperature', '0.8', '--top-k', '40', '--top-p', '0.95', '--min-p', '0.01', '--seed', '7', '--repetition-penalty', '1.1', '--presence-penalty', '0.1', '--frequency-penalty', '0.1', '--max-new-tokens', '10', 'Hello']
    const a = JSON.parse(phi2(args).stdout)
    const b = JSON.parse(phi2(args).stdout)
    expect(a.tokens).toEqual(b.tokens)
    const eos = JSON.parse(phi2(['generate', '--model', model, '--json', '--quiet', '--logit-bias', '50256=1000', 'Hi']).stdout)
    expect(eos).toMatchObject({ finishReason: 'eos', tokens: [50256], text: '' })
    const qa = JSON.parse(phi2(['generate', '--model', model, '--json', '--quiet', '--format', 'qa', '--max-new-tokens', '3', 'What is 2+2?']).stdout)
    expect(qa.usage.promptTokens).toBe(phi2Tokenize(model, 'Instruct: What is 2+2?\nOutput:').length)
    const full = JSON.parse(phi2(['generate', '--model', model, '--json', '--quiet', '--max-new-tokens', '10', 'Hi']).stdout)
    const stop = full.text.slice(4, 7)
    const cut = JSON.parse(phi2(['generate', '--model', model, '--json', '--quiet', '--max-new-tokens', '10', '--stop', stop, 'Hi']).stdout)
    expect(cut.finishReason).toBe('stop')
    expect(cut.text).toBe(full.text.slice(0, full.text.indexOf(stop)))
  })

  function phi2Tokenize(model: string, text: string): number[] {
    const f = join(tmp, 'tok.txt')
    writeFileSync(f, text)
    return JSON.parse(phi2(['tokenize', '--model', model, '--json', '--file', f]).stdout).ids
  }

  it('tokenize --json --file prints {"ids":[...]}, on the default embedded model too', () => {
    const f = join(tmp, 'text.txt')
    writeFileSync(f, PROMPT_TEXT)
    const r = phi2(['tokenize', '--json', '--file', f])
    expect(r.code, r.stderr).toBe(0)
    expect(JSON.parse(r.stdout)).toEqual({ ids: PROMPT_IDS })
    expect(phi2(['tokenize', 'Hello World']).stdout).toBe('15496 2159\n')
    expect(phi2Tokenize(fixture('tiny'), '\n    the')).toEqual([198, 50284, 1169]) // bundled tokenizer
  })

  it('info says plainly that the default model is not Phi-2 (the trained embedded model)', () => {
    const r = phi2(['info'])
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/NOT Microsoft's Phi-2/)
    expect(r.stdout).toMatch(/hiddenSize\s+128/)
    const j = JSON.parse(phi2(['info', '--json']).stdout)
    expect(j).toMatchObject({ architecture: 'phi2', format: 'gguf', dtype: 'q8_0', embeddedDefault: true, vocabSize: 51200, numLayers: 4 })
    const real = JSON.parse(phi2(['info', '--json', '--model', fixture('tiny')]).stdout)
    expect(real).toMatchObject({ format: 'safetensors', dtype: 'f32', embeddedDefault: false, tokenizer: 'bundled' })
    expect(phi2(['--help']).stdout).toMatch(/NOT Microsoft's Phi-2/)
  })

  it('chat keeps context across turns, /reset clears it, /exit quits', () => {
    const model = fixture('tiny-q8_0.gguf')
    const r = phi2(['chat', '--model', model, '--json', '--quiet', '--max-new-tokens', '4', '--stop', 'zzzz'], 'Hello there\nHow are you?\n/reset\nHello there\n/exit\nnever sent\n')
    expect(r.code, r.stderr).toBe(0)
    const turns = r.stdout.trim().split('\n').map((l) => JSON.parse(l))
    expect(turns).toHaveLength(3)
    expect(turns[1].usage.promptTokensEvaluated).toBeLessThan(turns[1].usage.promptTokens)
    expect(turns[2].usage.promptTokensEvaluated).toBe(turns[0].usage.promptTokens)
    expect(turns[2].tokens).toEqual(turns[0].tokens)
    const plain = phi2(['chat', '--model', model, '--max-new-tokens', '4', '--bot-name', 'Tutor'], 'Hi\n')
    expect(plain.stdout).toMatch(/^Tutor: \S/)
  })

  it('--backend wasm gives the cpu tokens and exits by itself (worker threads end)', () => {
    const model = fixture('tiny-q8_0.gguf')
    const args = ['generate', '--model', model, '--json', '--quiet', '--max-new-tokens', '8', PROMPT_TEXT]
    const cpu = phi2(args)
    const wasm = phi2([...args, '--backend', 'wasm', '--threads', '1'])
    expect(wasm.code, wasm.stderr).toBe(0)
    expect(JSON.parse(wasm.stdout).tokens).toEqual(JSON.parse(cpu.stdout).tokens)
    const info = phi2(['info', '--json', '--model', model, '--backend', 'wasm', '--threads', '1'])
    expect(info.code, info.stderr).toBe(0)
    expect(JSON.parse(info.stdout)).toMatchObject({ backend: 'wasm', runtime: { backend: 'wasm', build: 'wasm-simd', threads: 1 } })
  })

  it('errors: one line with the code on stderr; exit 1, or 2 for bad usage', () => {
    const missing = phi2(['generate', '--model', '/no/such/model.gguf', 'Hi'])
    expect(missing.code).toBe(1)
    expect(missing.stderr.trim().split('\n').at(-1)).toMatch(/^phi2: E_IO: .*no such file/)
    const cuda = phi2(['info', '--backend', 'cuda'])
    expect(cuda.code).toBe(1)
    expect(cuda.stderr).toMatch(/E_BACKEND_UNAVAILABLE/)
    for (const args of [['generate', '--top-p', '3', 'x'], ['generate', '--temperature', 'hot', 'x'], ['generate', '--bogus', 'x'], ['frobnicate'], ['generate', '--logit-bias', 'x=1', 'y'], []]) {
      const r = phi2(args)
      expect(r.code, args.join(' ')).toBe(2)
      if (args.length) expect(r.stderr).toMatch(/^phi2: E_(USAGE|INVALID_OPTION): /)
    }
    expect(phi2(['generate', '--top-p', '3', 'x']).stderr).toMatch(/"topP".*--top-p/)
    expect(phi2(['--version']).stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/)
  })
})
