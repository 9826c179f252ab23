// The SDK against Hugging Face transformers goldens (test/golden, from scripts/golden_hf.py):
// log-probs within 1e-4 and greedy tokens equal, through the public API, for the HF safetensors
// directory and the F32 GGUF of the same weights.
import { describe, expect, it } from 'vitest'
import { loadModel } from '@x/phi2'
import { PROMPT_IDS, PROMPT_TEXT, fixture, hfGolden, maxAbsDiff } from './helpers.js'

const CASES: Array<[golden: string, source: string]> = [
  ['tiny', 'tiny'],
  ['tiny', 'tiny-f32.gguf'],
  ['odd', 'odd'],
  ['odd', 'odd-f32.gguf'],
]

describe('HF golden parity', () => {
  for (const [name, source] of CASES) {
    it(`${source}: logprobs within 1e-4 and greedy tokens equal (${name})`, async () => {
      const g = hfGolden(name)
      expect(g.prompt).toEqual(PROMPT_IDS)
      await using model = await loadModel(fixture(source))
      expect(model.info.vocabSize).toBe(g.vocab)
      expect(model.tokenize(PROMPT_TEXT)).toEqual(g.prompt)

      const rows = await model.logprobs([...g.prompt, ...g.tokens])
      expect(rows).toBeInstanceOf(Float32Array)
      expect(rows.length).toBe(g.rows * g.vocab)
      expect(maxAbsDiff(rows, g.logprobs)).toBeLessThanOrEqual(1e-4)

      // Greedy is the default; from text and from ids alike.
      const fromText = await model.generate(PROMPT_TEXT, { maxNewTokens: g.tokens.length })
      expect(fromText.tokens).toEqual(g.tokens)
      expect(fromText.text).toBe(model.detokenize(g.tokens))
      expect(fromText.finishReason).toBe('length')
      expect(fromText.usage).toMatchObject({
        promptTokens: g.prompt.length,
        completionTokens: g.tokens.length,
        totalTokens: g.prompt.length + g.tokens.length,
      })
      const fromIds = await model.generate(g.prompt, { maxNewTokens: g.tokens.length })
      expect(fromIds.tokens).toEqual(g.tokens)
    })
  }
})
