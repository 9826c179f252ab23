import { existsSync, readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'

export const PKG_DIR = resolve(__dirname, '..')
export const REPO_ROOT = resolve(PKG_DIR, '../..')
export const FIXTURES = process.env.PHI2_FIXTURES ? resolve(process.env.PHI2_FIXTURES) : join(REPO_ROOT, 'test/fixtures/gen')
export const CLI = join(PKG_DIR, 'dist/cli.js')

export function fixture(name: string): string {
  const p = join(FIXTURES, name)
  if (!existsSync(p)) {
    throw new Error(`fixture ${p} is missing: run target/release/phi2-fixtures --out ${FIXTURES} (or set PHI2_FIXTURES)`)
  }
  return p
}

/** The Phi-2 tokenizer test prompt (= "The quick brown fox jumps over\n    the lazy dog"). */
export const PROMPT_IDS = [464, 2068, 7586, 21831, 18045, 625, 198, 50284, 1169, 16931, 3290]
export const PROMPT_TEXT = 'The quick brown fox jumps over\n    the lazy dog'

export interface Golden {
  prompt: number[]
  tokens: number[]
  margins: number[]
  vocab: number
  rows: number
  logprobs: Float32Array
}

/** HF transformers golden data (scripts/golden_hf.py): test/golden/{name}.hf.json + .hf.logprobs.f32. */
export function hfGolden(name: string): Golden {
  const dir = join(REPO_ROOT, 'test/golden')
  const json = JSON.parse(readFileSync(join(dir, `${name}.hf.json`), 'utf8')) as Omit<Golden, 'logprobs'>
  const buf = readFileSync(join(dir, `${name}.hf.logprobs.f32`))
  const logprobs = new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength))
  if (logprobs.length !== json.rows * json.vocab) throw new Error('golden row count mismatch')
  return { ...json, logprobs }
}

export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new Error(`lengths differ: ${a.length} vs ${b.length}`)
  let m = 0
  for (let i = 0; i < a.length; i++) {
    const d = a[i] === b[i] ? 0 : Math.abs(a[i]! - b[i]!)
    if (!(d <= m)) m = d
  }
  return m
}
