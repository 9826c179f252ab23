// Unit tests of the pieces that need no model: incremental UTF-8 text assembly with stop
// strings (src/text.ts, internal) and the prompt formats.
import { describe, expect, it } from 'vitest'
import { CODE_STOP, QA_STOP, Utf8StreamDecoder, chatStop, formatChat, formatCode, formatPrompt, formatQA } from '@x/phi2'
import { bundledTokenizer } from '../src/node/files.js'
import { TextAssembler, type TextPiece } from '../src/text.js'

const tok = bundledTokenizer()

function run(ids: number[], stop: string[] = [], skip: number[] = []) {
  const a = new TextAssembler(tok, stop, new Set(skip))
  const pieces: TextPiece[] = []
  for (const id of ids) {
    const p = a.push(id)
    if (p) pieces.push(p)
  }
  const last = a.finish()
  if (last) pieces.push(last)
  return { a, pieces }
}

describe('TextAssembler', () => {
  it('never splits a UTF-8 character across chunks', () => {
    const text = 'ok 😀 日本語 👍🏽 é'
    const ids = tok.encode(text)
    const { a, pieces } = run(ids)
    expect(pieces.map((p) => p.text).join('')).toBe(text)
    expect(pieces.flatMap((p) => p.tokens)).toEqual(ids)
    for (const p of pieces) expect(p.text).not.toContain('\uFFFD')
    // "😀" = 47249 + 222: the first token alone yields no text, the pair yields the emoji.
    const emoji = run([47249, 222]).pieces
    expect(emoji).toEqual([{ text: '😀', tokens: [47249, 222] }])
    expect(a.text).toBe(text)
  })

  it('turns bytes left incomplete at the end into U+FFFD, like a one-shot decode', () => {
    const { pieces } = run([47249])
    expect(pieces).toEqual([{ text: tok.decode([47249]), tokens: [47249] }])
    expect(pieces[0]!.text).toBe('\uFFFD')
  })

  it('cuts at a stop string, holding back text that could start one', () => {
    const ids = tok.encode('Answer: 42\nInstruct: more')
    const { a, pieces } = run(ids, ['\nInstruct:'])
    expect(a.text).toBe('Answer: 42')
    expect(a.stoppedBy).toBe('\nInstruct:')
    const joined = pieces.flatMap((p) => p.tokens)
    expect(tok.decode(joined)).toBe('Answer: 42\nInstruct:')
    expect(joined).toEqual(ids.slice(0, joined.length))
    for (const p of pieces) expect(p.text.includes('\n')).toBe(false)
  })

  it('releases held-back text when the stop string does not complete', () => {
    const text = 'a\nInstr b\nInst'
    const ids = tok.encode(text)
    const { a, pieces } = run(ids, ['\nInstruct:'])
    expect(a.stopped).toBe(false)
    expect(a.text).toBe(text)
    expect(pieces.flatMap((p) => p.tokens)).toEqual(ids)
  })

  it('finds the earliest of several stop strings, also inside one token', () => {
    const { a } = run(tok.encode('xx END yy STOP'), ['STOP', 'END'])
    expect(a.text).toBe('xx ')
    expect(a.stoppedBy).toBe('END')
    const single = run(tok.encode('hello world'), ['lo w'])
    expect(single.a.text).toBe('hel')
  })

  it('gives skipped ids (end-of-text) no text but keeps them in tokens', () => {
    const { a, pieces } = run([15496, 50256], [], [50256])
    expect(a.text).toBe('Hello')
    expect(pieces.flatMap((p) => p.tokens)).toEqual([15496, 50256])
  })

  it('ignores tokens after the stop', () => {
    const a = new TextAssembler(tok, ['World'], new Set())
    a.push(15496)
    a.push(2159)
    expect(a.stopped).toBe(true)
    expect(a.push(15496)).toBeNull()
    expect(a.tokens).toEqual([15496, 2159])
  })
})

describe('Utf8StreamDecoder', () => {
  it('decodes byte by byte', () => {
    const bytes = new TextEncoder().encode('€😀a')
    const d = new Utf8StreamDecoder()
    let out = ''
    const seen: string[] = []
    for (const b of bytes) {
      const s = d.push(new Uint8Array([b]))
      seen.push(s)
      out += s
    }
    out += d.flush()
    expect(out).toBe('€😀a')
    expect(seen.filter((s) => s !== '')).toEqual(['€', '😀', 'a'])
  })
})

describe('prompt formats', () => {
  it('QA', () => {
    expect(formatQA('What is 2+2?')).toEqual({ prompt: 'Instruct: What is 2+2?\nOutput:', stop: [...QA_STOP] })
    expect(QA_STOP).toContain('\nInstruct:')
  })

  it('chat, with names and a system line', () => {
    expect(formatChat('Hi!')).toEqual({ prompt: 'Alice: Hi!\nBob:', stop: ['\nAlice:', '\nBob:', '<|endoftext|>'] })
    const f = formatChat(
      [
        { role: 'user', text: 'I have trouble focusing.' },
        { role: 'bot', text: 'Have you tried timers?' },
        { role: 'user', text: 'No.' },
      ],
      { userName: 'Ann', botName: 'Tutor', system: 'A tutoring session.' },
    )
    expect(f.prompt).toBe('A tutoring session.\nAnn: I have trouble focusing.\nTutor: Have you tried timers?\nAnn: No.\nTutor:')
    expect(f.stop).toEqual(chatStop('Ann', 'Tutor'))
  })

  it('code', () => {
    const sig = 'def print_prime(n):\n   """\n   Print all primes between 1 and n\n   """'
    expect(formatCode(sig)).toEqual({ prompt: sig, stop: [...CODE_STOP] })
    expect(CODE_STOP).toEqual(expect.arrayContaining(['\ndef ', '\nclass ', '\nif __name__', '\n#', '\n\n\n']))
  })

  it('none', () => {
    expect(formatPrompt('none', 'x')).toEqual({ prompt: 'x', stop: [] })
    expect(formatPrompt('qa', 'x')).toEqual(formatQA('x'))
  })
})
