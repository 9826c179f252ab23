/**
 * Prompt-lookup speculative decoding through the SDK and the CLI: the option reaches the engine
 * (drafts are verified and accepted), greedy results equal plain greedy, stop strings cut at the
 * same place, and bad settings are typed option errors naming the field / flag.
 */
import { spawnSync } from 'node:child_process'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Phi2OptionsError, loadModel, type GenerateOptions, type Phi2Model } from '@x/phi2'
import { CLI, PROMPT_TEXT, fixture } from './helpers.js'

// A "code" line given twice and started a third time (as when asking for an edit of given code).
const LINE = [4299, 751, 7, 64, 11, 275, 2599, 198, 50284, 7783, 257, 1343, 275, 198]
const REPETITIVE = [...LINE, ...LINE, ...LINE.slice(0, 4)]
// The random-weight fixture does not copy text by itself: biasing the line's tokens up makes its
// greedy output loop over them, as a trained model copies, so drafts are accepted.
const COPYING: GenerateOptions = { maxNewTokens: 40, logitBias: Object.fromEntries(LINE.map((t) => [t, 50])) }

let model: Phi2Model
beforeAll(async () => {
  model = await loadModel(fixture('tiny-q8_0.gguf'))
})
afterAll(() => model?.dispose())

describe('speculative decoding (SDK)', () => {
  it('reaches the engine, and greedy output equals plain greedy', async () => {
    const plain = await model.generate(REPETITIVE, COPYING)
    expect(plain.speculation).toBeUndefined()
    let accepted = 0
    for (const speculative of [true, { ngram: 1 }, { ngram: 2, maxDraft: 64 }, { maxDraft: 1 }] as const) {
      const r = await model.generate(REPETITIVE, { ...COPYING, speculative })
      expect(r.tokens).toEqual(plain.tokens)
      expect(r.text).toBe(plain.text)
      expect(r.finishReason).toBe(plain.finishReason)
      expect(r.speculation).toBeDefined()
      expect(r.speculation!.accepted).toBeLessThanOrEqual(r.speculation!.drafted)
      accepted += r.speculation!.accepted
    }
    expect(accepted).toBeGreaterThan(0)
    // A non-repetitive prompt, plain options: the same tokens too.
    const a = await model.generate(PROMPT_TEXT, { maxNewTokens: 30 })
    const b = await model.generate(PROMPT_TEXT, { maxNewTokens: 30, speculative: { ngram: 1, maxDraft: 4 } })
    expect(b.tokens).toEqual(a.tokens)
  })

  it('stream() and stop strings behave as without speculation', async () => {
    const opts: GenerateOptions = { ...COPYING, speculative: { ngram: 1 } }
    const expected = await model.generate(REPETITIVE, COPYING)
    const stream = model.stream(REPETITIVE, opts)
    const tokens: number[] = []
    let text = ''
    for await (const c of stream) {
      tokens.push(...c.tokens)
      text += c.text
    }
    expect(tokens).toEqual(expected.tokens)
    expect(text).toBe(expected.text)
    expect((await stream.result).speculation!.accepted).toBeGreaterThan(0)
    // A stop string in the middle of the output: cut at the same token.
    const stop = expected.text.slice(5, 8)
    const cutPlain = await model.generate(REPETITIVE, { ...COPYING, stop: [stop] })
    const cut = await model.generate(REPETITIVE, { ...opts, stop: [stop] })
    expect(cutPlain.finishReason).toBe('stop')
    expect(cut.finishReason).toBe('stop')
    expect(cut.tokens).toEqual(cutPlain.tokens)
    expect(cut.text).toBe(cutPlain.text)
    // maxNewTokens is exact.
    for (const n of [1, 2, 7]) {
      const r = await model.generate(REPETITIVE, { ...opts, maxNewTokens: n })
      expect(r.tokens).toEqual(expected.tokens.slice(0, n))
    }
  })

  it('chats accept it (per send and as a default)', async () => {
    const plain = model.createChat({ defaults: { maxNewTokens: 12 } })
    const spec = model.createChat({ defaults: { maxNewTokens: 12, speculative: true } })
    for (const msg of ['Hello there', 'Tell me more']) {
      const a = await plain.send(msg)
      const b = await spec.send(msg)
      expect(b.tokens).toEqual(a.tokens)
      expect(b.speculation).toBeDefined()
    }
  })

  it('rejects bad settings with typed errors naming the field', async () => {
    const bad: Array<[unknown, string]> = [
      [{ ngram: 0 }, 'speculative.ngram'],
      [{ ngram: 17 }, 'speculative.ngram'],
      [{ maxDraft: 65 }, 'speculative.maxDraft'],
      [{ maxDraft: 1.5 }, 'speculative.maxDraft'],
      [{ draft: 3 }, 'speculative.draft'],
      ['yes', 'speculative'],
    ]
    for (const [speculative, path] of bad) {
      const err = await model.generate('Hi', { speculative } as unknown as GenerateOptions).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(Phi2OptionsError)
      expect((err as Phi2OptionsError).path).toBe(path)
    }
  })
})

function phi2(args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

describe('phi2 generate --speculative', () => {
  it('gives the same greedy tokens and reports the drafts', () => {
    const m = fixture('tiny-q8_0.gguf')
    const prompt = 'def add(a, b):\n    return a + b\ndef add(a, b):\n    return a + b\ndef add('
    const base = ['generate', '--model', m, '--json', '--quiet', '--max-new-tokens', '24', '--logit-bias', '4299=50', '--logit-bias', '7=50', prompt]
    const plain = JSON.parse(phi2(base).stdout)
    expect(plain.speculation).toBeUndefined()
    for (const extra of [['--speculative'], ['--speculative-ngram', '1'], ['--speculative', '--speculative-max-draft', '3']]) {
      const r = phi2([...base.slice(0, -1), ...extra, prompt])
      expect(r.code, r.stderr).toBe(0)
      const out = JSON.parse(r.stdout)
      expect(out.tokens).toEqual(plain.tokens)
      expect(out.speculation.drafted).toBeGreaterThanOrEqual(out.speculation.accepted)
    }
    const one = JSON.parse(phi2([...base.slice(0, -1), '--speculative-ngram', '1', prompt]).stdout)
    expect(one.speculation.accepted).toBeGreaterThan(0)
    const streamed = phi2(['generate', '--model', m, '--max-new-tokens', '8', '--speculative', prompt])
    expect(streamed.code, streamed.stderr).toBe(0)
    expect(streamed.stderr).toMatch(/speculative: \d+\/\d+ draft tokens accepted in \d+ passes/)
  })

  it('rejects bad values naming the flag, and documents it in the help', () => {
    const r = phi2(['generate', '--model', fixture('tiny-q8_0.gguf'), '--speculative-ngram', '0', 'Hi'])
    expect(r.code).toBe(2)
    expect(r.stderr).toContain('--speculative-ngram')
    const d = phi2(['generate', '--speculative-max-draft', '100', 'Hi'])
    expect(d.code).toBe(2)
    expect(d.stderr).toContain('--speculative-max-draft')
    const help = phi2(['generate', '--help'])
    expect(help.stdout).toContain('--speculative')
    expect(help.stdout).toMatch(/--speculative-ngram N\s+n-gram length looked up for drafts, integer 1\.\.16 \(default 3/)
    expect(help.stdout).toMatch(/--speculative-max-draft N\s+most draft tokens per forward pass, integer 1\.\.64\s+\(default 8/)
    expect(phi2(['tokenize', '--speculative', 'Hi']).code).toBe(2)
  })
})
