/**
 * The prompt formats of the Phi-2 model card, with stop strings that curb Phi-2's habit of
 * carrying on past the answer (it was trained on textbook-like data and tends to invent the next
 * exercise, the next speaker's turn, or more code).
 *
 * | format | prompt                                  | default stop strings |
 * | ------ | --------------------------------------- | -------------------- |
 * | `qa`   | `Instruct: {question}\nOutput:`         | `\nInstruct:`, `\nExercise`, `\nQuestion:`, `<\|endoftext\|>` |
 * | `chat` | `Alice: {message}\nBob:` (names configurable, optional system line first) | `\nAlice:`, `\nBob:`, `<\|endoftext\|>` |
 * | `code` | the prompt as-is (e.g. a signature + docstring) | `\ndef `, `\nclass `, `\nif __name__`, `\n#`, `\n\n\n`, `<\|endoftext\|>` |
 *
 * Use them through `generate(text, { format: 'qa' })` or directly: `const { prompt, stop } = formatQA(q)`.
 */
import type { PromptFormat } from './options.js'

/** A formatted prompt and the stop strings that go with it. */
export interface FormattedPrompt {
  prompt: string
  stop: string[]
}

/** Default stop strings of the QA format. */
export const QA_STOP: readonly string[] = Object.freeze(['\nInstruct:', '\nExercise', '\nQuestion:', '<|endoftext|>'])

/** Default stop strings of the code format (a new top-level statement ends the completion). */
export const CODE_STOP: readonly string[] = Object.freeze([
  '\ndef ',
  '\nclass ',
  '\nif __name__',
  '\n#',
  '\n\n\n',
  '<|endoftext|>',
])

/** Default speaker names of the chat format (as on the model card). */
export const DEFAULT_USER_NAME = 'Alice'
export const DEFAULT_BOT_NAME = 'Bob'

/** Default stop strings of the chat format: either speaker starting a new turn. */
export function chatStop(userName = DEFAULT_USER_NAME, botName = DEFAULT_BOT_NAME): string[] {
  return [`\n${userName}:`, `\n${botName}:`, '<|endoftext|>']
}

/** QA format: `Instruct: {question}\nOutput:`. */
export function formatQA(question: string): FormattedPrompt {
  return { prompt: `Instruct: ${question}\nOutput:`, stop: [...QA_STOP] }
}

/** One turn of a chat transcript. */
export interface ChatTurn {
  role: 'user' | 'bot'
  text: string
}

/** Options of {@link formatChat}. */
export interface ChatFormatOptions {
  /** Default `'Alice'`. */
  userName?: string
  /** Default `'Bob'`. */
  botName?: string
  /** A line placed before the first turn. */
  system?: string
}

/**
 * Chat format: `{system}\nAlice: {message}\nBob:`. `input` is one user message or a whole
 * transcript; the prompt always ends with the bot's name and a colon, ready for its reply.
 */
export function formatChat(input: string | readonly ChatTurn[], options: ChatFormatOptions = {}): FormattedPrompt {
  const user = options.userName ?? DEFAULT_USER_NAME
  const bot = options.botName ?? DEFAULT_BOT_NAME
  const turns: readonly ChatTurn[] = typeof input === 'string' ? [{ role: 'user', text: input }] : input
  const lines: string[] = []
  if (options.system) lines.push(options.system)
  for (const t of turns) lines.push(`${t.role === 'user' ? user : bot}: ${t.text.trim()}`)
  lines.push(`${bot}:`)
  return { prompt: lines.join('\n'), stop: chatStop(user, bot) }
}

/** Code format: the prompt as-is (e.g. `def print_prime(n):\n   """Print all primes between 1 and n"""`). */
export function formatCode(code: string): FormattedPrompt {
  return { prompt: code, stop: [...CODE_STOP] }
}

/** Applies a {@link PromptFormat} to a string prompt. */
export function formatPrompt(format: PromptFormat, text: string, chat: ChatFormatOptions = {}): FormattedPrompt {
  switch (format) {
    case 'qa':
      return formatQA(text)
    case 'chat':
      return formatChat(text, chat)
    case 'code':
      return formatCode(text)
    case 'none':
      return { prompt: text, stop: [] }
  }
}
