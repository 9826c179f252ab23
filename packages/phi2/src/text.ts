/**
 * Turns a stream of generated token ids into text chunks:
 * - bytes are decoded incrementally, so a chunk never ends in the middle of a UTF-8 character
 *   (byte-level BPE tokens can end mid-character: "😀" is 47249 + 222);
 * - text that could be the start of a stop string is held back until it is known not to be;
 * - when a stop string appears, the text is cut before it and everything after is ignored;
 * - `skipText` ids (end-of-text) contribute their id but no text.
 * The concatenation of all chunks' `text` / `tokens` is the final `text` / `tokens`.
 */
import type { Phi2Tokenizer } from './tokenizer.js'
import { Utf8StreamDecoder } from './tokenizer.js'

export interface TextPiece {
  text: string
  tokens: number[]
}

export class TextAssembler {
  private readonly decoder = new Utf8StreamDecoder()
  private readonly maxStop: number
  private pendingText = ''
  private pendingTokens: number[] = []
  /** All accepted token ids (up to and including the one that completed a stop string). */
  readonly tokens: number[] = []
  /** All emitted text. */
  text = ''
  /** The stop string that ended the text, if any. */
  stoppedBy: string | null = null

  constructor(
    private readonly tokenizer: Phi2Tokenizer,
    private readonly stop: readonly string[],
    private readonly skipText: ReadonlySet<number>,
  ) {
    this.maxStop = stop.reduce((m, s) => Math.max(m, s.length), 0)
  }

  get stopped(): boolean {
    return this.stoppedBy !== null
  }

  /** Feeds one token; returns the chunk that became final, or null. Ignored once stopped. */
  push(id: number): TextPiece | null {
    if (this.stopped) return null
    this.tokens.push(id)
    this.pendingTokens.push(id)
    if (!this.skipText.has(id)) this.pendingText += this.decoder.push(this.tokenizer.tokenBytes(id))
    return this.release(false)
  }

  /** Ends the stream: flushes held-back text (incomplete bytes become U+FFFD, as in a one-shot decode). */
  finish(): TextPiece | null {
    if (!this.stopped) this.pendingText += this.decoder.flush()
    return this.release(true)
  }

  private release(final: boolean): TextPiece | null {
    if (this.stopped) {
      return this.take(0, final)
    }
    let cut = this.pendingText.length
    if (this.stop.length > 0) {
      let at = -1
      let which = ''
      for (const s of this.stop) {
        const i = this.pendingText.indexOf(s)
        if (i !== -1 && (at === -1 || i < at)) {
          at = i
          which = s
        }
      }
      if (at !== -1) {
        this.stoppedBy = which
        cut = at
        const piece = this.take(cut, true)
        this.pendingText = ''
        return piece
      }
      if (!final) cut = this.holdFrom()
    }
    return this.take(cut, final)
  }

  /** Emits pendingText[0:cut] with the pending tokens (if there is text, or at the end). */
  private take(cut: number, final: boolean): TextPiece | null {
    const text = this.pendingText.slice(0, cut)
    if (text.length === 0 && !(final && this.pendingTokens.length > 0)) return null
    const piece = { text, tokens: this.pendingTokens }
    this.pendingText = this.pendingText.slice(cut)
    this.pendingTokens = []
    this.text += text
    return piece
  }

  /** The earliest position whose suffix could still grow into a stop string. */
  private holdFrom(): number {
    const t = this.pendingText
    for (let p = Math.max(0, t.length - this.maxStop + 1); p < t.length; p++) {
      const tail = t.slice(p)
      if (this.stop.some((s) => s.length > tail.length && s.startsWith(tail))) return p
    }
    return t.length
  }
}
