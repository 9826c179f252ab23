/**
 * The `phi2` CLI's flags: one table that drives parsing (node:util parseArgs), which subcommand
 * accepts which flag, and every `--help` text. Defaults and ranges are the SDK's (see `options.ts`);
 * the defaults are taken from its constants so that the help cannot drift from them.
 */
import { DEFAULT_SAMPLING, DEFAULT_SPECULATIVE } from './options.js'
import { DEFAULT_BOT_NAME, DEFAULT_USER_NAME } from './prompts.js'

export const COMMANDS = ['generate', 'chat', 'tokenize', 'info'] as const
export type Command = (typeof COMMANDS)[number]

export interface FlagDef {
  type: 'string' | 'boolean'
  multiple?: boolean
  short?: string
  /** The value's name in the help, e.g. `N`. */
  arg?: string
  /** Help text (one line, or lines); `{json}` in a command's help is replaced per command. */
  help: string | Partial<Record<Command, string>>
  /** Subcommands that accept it (`[]`: only without a command, e.g. --version). */
  commands: readonly Command[]
  group: 'Model' | 'Generation' | 'Prompt format' | 'Chat format' | 'Input / output' | 'Other'
}

const ALL = COMMANDS
const GEN = ['generate', 'chat'] as const
const D = DEFAULT_SAMPLING

export const FLAGS = {
  model: {
    type: 'string',
    arg: 'PATH',
    help:
      '.gguf file, .safetensors file, or Hugging Face model directory (or a\n' +
      'file: URL); a Hub id hf:ORG/REPO/FILE.gguf or ORG/REPO (downloaded once\n' +
      'into the Hugging Face cache); NAME.gguf from phi2 convert --cache.\n' +
      'Default: the embedded model, NOT Microsoft\'s Phi-2: a 14M-parameter Phi-2-architecture\n' +
      'GGUF trained on Python\'s standard library and docs. Use --model for real Phi-2.',
    commands: ALL,
    group: 'Model',
  },
  revision: { type: 'string', arg: 'REV', help: 'Hub ids: branch, tag or commit (default main)', commands: ALL, group: 'Model' },
  threads: { type: 'string', arg: 'N', help: 'compute threads, integer 1..1024 (default: all cores; wasm: at most 8)', commands: ALL, group: 'Model' },
  'context-length': {
    type: 'string',
    arg: 'N',
    help: "context window in tokens, integer >= 2 and at most the model's (default: the model's)",
    commands: ALL,
    group: 'Model',
  },
  backend: { type: 'string', arg: 'B', help: 'auto | cpu | cuda | wasm (default auto: cuda where usable, else cpu)', commands: ALL, group: 'Model' },
  'kv-cache': {
    type: 'string',
    arg: 'T',
    help: 'f32 | f16: what the KV cache stores (default f32; f16 halves its memory and\nspeeds up decoding at long contexts, results differ by that rounding)',
    commands: ALL,
    group: 'Model',
  },
  quiet: { type: 'boolean', help: 'no progress or statistics on stderr', commands: ALL, group: 'Model' },

  'max-new-tokens': {
    type: 'string',
    arg: 'N',
    help: `tokens to generate at most, integer 1..context length (default ${D.maxNewTokens}, clipped to the context)`,
    commands: GEN,
    group: 'Generation',
  },
  'do-sample': {
    type: 'boolean',
    help: `sample instead of greedy decoding (default: ${D.doSample ? 'sampling' : 'greedy, like HF transformers'})`,
    commands: GEN,
    group: 'Generation',
  },
  temperature: {
    type: 'string',
    arg: 'T',
    help: `softmax temperature, 0..100 (default ${D.temperature}; with --do-sample; 0 = greedy)`,
    commands: GEN,
    group: 'Generation',
  },
  'top-k': {
    type: 'string',
    arg: 'K',
    help: `keep the K most likely tokens, integer >= 0 (default ${D.topK}; with --do-sample; 0 = off)`,
    commands: GEN,
    group: 'Generation',
  },
  'top-p': {
    type: 'string',
    arg: 'P',
    help: `nucleus sampling, (0, 1] (default ${D.topP} = off; with --do-sample)`,
    commands: GEN,
    group: 'Generation',
  },
  'min-p': {
    type: 'string',
    arg: 'P',
    help: `drop tokens below P x the top probability, [0, 1) (default ${D.minP} = off; with --do-sample)`,
    commands: GEN,
    group: 'Generation',
  },
  'repetition-penalty': {
    type: 'string',
    arg: 'R',
    help: `HF/CTRL penalty on tokens already in the context, (0, 100] (default ${D.repetitionPenalty} = off)`,
    commands: GEN,
    group: 'Generation',
  },
  'presence-penalty': {
    type: 'string',
    arg: 'P',
    help: `OpenAI-style, once per token present, -100..100 (typically -2..2; default ${D.presencePenalty})`,
    commands: GEN,
    group: 'Generation',
  },
  'frequency-penalty': {
    type: 'string',
    arg: 'F',
    help: `OpenAI-style, per occurrence, -100..100 (typically -2..2; default ${D.frequencyPenalty})`,
    commands: GEN,
    group: 'Generation',
  },
  seed: {
    type: 'string',
    arg: 'S',
    help: 'sampling seed, integer 0..2^53-1 (default: random; with --do-sample)',
    commands: GEN,
    group: 'Generation',
  },
  stop: {
    type: 'string',
    multiple: true,
    arg: 'S',
    help: {
      generate: "stop string (repeatable, up to 32; \\n \\t \\r \\\\ escapes work); replaces the --format's defaults",
      chat: 'stop string (repeatable, up to 32; \\n \\t \\r \\\\ escapes work); replaces the chat\'s defaults\n("\\n<user-name>:", "\\n<bot-name>:", "<|endoftext|>")',
    },
    commands: GEN,
    group: 'Generation',
  },
  'logit-bias': {
    type: 'string',
    multiple: true,
    arg: 'ID=B',
    help: "add B to token ID's logit (repeatable; B a finite number, or -inf to ban the token)",
    commands: GEN,
    group: 'Generation',
  },
  speculative: {
    type: 'boolean',
    help:
      'prompt-lookup speculative decoding: drafts copied from the prompt and output, verified in one\n' +
      'forward pass; faster on repetitive text, same greedy output (default off)',
    commands: GEN,
    group: 'Generation',
  },
  'speculative-ngram': {
    type: 'string',
    arg: 'N',
    help: `n-gram length looked up for drafts, integer 1..16 (default ${DEFAULT_SPECULATIVE.ngram}; implies --speculative)`,
    commands: GEN,
    group: 'Generation',
  },
  'speculative-max-draft': {
    type: 'string',
    arg: 'N',
    help: `most draft tokens per forward pass, integer 1..64 (default ${DEFAULT_SPECULATIVE.maxDraft}; implies --speculative)`,
    commands: GEN,
    group: 'Generation',
  },

  format: {
    type: 'string',
    arg: 'F',
    help:
      'qa | chat | code | none (default none): wrap the prompt in the Phi-2 model card\'s format\n' +
      'and use its stop strings: qa = "Instruct: {prompt}\\nOutput:", chat = "Alice: {prompt}\\nBob:",\n' +
      'code = the prompt as-is; none = the prompt exactly as given, no stop strings',
    commands: ['generate'],
    group: 'Prompt format',
  },
  'user-name': {
    type: 'string',
    arg: 'NAME',
    help: `the user's speaker name, 1..64 characters, no newline or ':' (default ${DEFAULT_USER_NAME})`,
    commands: GEN,
    group: 'Chat format',
  },
  'bot-name': {
    type: 'string',
    arg: 'NAME',
    help: `the model's speaker name, 1..64 characters, no newline or ':' (default ${DEFAULT_BOT_NAME})`,
    commands: GEN,
    group: 'Chat format',
  },
  system: { type: 'string', arg: 'TEXT', help: 'a line placed before the first turn (default: none)', commands: GEN, group: 'Chat format' },

  file: {
    type: 'string',
    arg: 'F',
    help: { generate: 'read the prompt from a file', tokenize: 'read the text from a file' },
    commands: ['generate', 'tokenize'],
    group: 'Input / output',
  },
  json: {
    type: 'boolean',
    help: {
      generate: 'print one JSON object {"text","tokens","finishReason","usage","timings"} instead of streaming',
      chat: 'print one JSON object per reply, as generate --json',
      tokenize: 'print {"ids":[...]}',
      info: 'print the info object (plus "embeddedDefault") as JSON',
    },
    commands: ALL,
    group: 'Input / output',
  },
  help: { type: 'boolean', short: 'h', help: 'this help', commands: ALL, group: 'Other' },
  version: { type: 'boolean', short: 'v', help: 'print the version', commands: [], group: 'Other' },
} as const satisfies Record<string, FlagDef>

export type FlagName = keyof typeof FLAGS

/** The parseArgs `options` object. */
export const PARSE_OPTIONS = Object.fromEntries(
  Object.entries(FLAGS).map(([name, f]) => {
    const def = f as FlagDef
    return [name, { type: def.type, ...(def.multiple ? { multiple: true } : {}), ...(def.short ? { short: def.short } : {}) }]
  }),
) as { [K in FlagName]: { type: (typeof FLAGS)[K]['type']; multiple?: boolean; short?: string } }

/** Whether `command` accepts `--flag`. */
export function accepts(command: Command, flag: FlagName): boolean {
  return (FLAGS[flag] as FlagDef).commands.includes(command)
}

/**
 * node:util parseArgs reads `--presence-penalty -0.5` as a flag missing its value ("argument is
 * ambiguous"). A value-taking flag followed by an argument that starts with a single '-' (a
 * negative number, `-inf`, `- item`) takes it as its value: rewritten as `--flag=value`.
 */
export function joinDashValues(argv: readonly string[]): string[] {
  const out: string[] = []
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    const next = argv[i + 1]
    const name = a.startsWith('--') && !a.includes('=') ? a.slice(2) : null
    const def = name !== null && Object.hasOwn(FLAGS, name) ? (FLAGS[name as FlagName] as FlagDef) : null
    if (def?.type === 'string' && next !== undefined && /^-(?!-)./s.test(next) && !isShortFlag(next)) {
      out.push(`${a}=${next}`)
      i++
    } else out.push(a)
  }
  return out
}

function isShortFlag(arg: string): boolean {
  return Object.values(FLAGS).some((f) => 'short' in f && arg === `-${f.short}`)
}

const COMMAND_HELP: Record<Command, { usage: string; about: string }> = {
  generate: {
    usage: 'phi2 generate [prompt] [options]',
    about:
      'Completes a prompt and streams the completion to stdout (statistics on stderr).\n' +
      'The prompt: the arguments (joined by spaces), the contents of --file F, or stdin.\n' +
      'With --format qa | chat | code, one trailing newline of a file or stdin is not part of the\n' +
      'prompt (as $(cat F) drops it); --format none (the default) keeps the text exactly.\n' +
      '--user-name, --bot-name and --system apply with --format chat only.\n' +
      'When stdout is closed early (e.g. | head), generation stops and phi2 exits quietly.',
  },
  chat: {
    usage: 'phi2 chat [options]',
    about:
      'Interactive chat in the Phi-2 card\'s chat format ("Alice: ...\\nBob:"), one message per\n' +
      'line of stdin; the model keeps the conversation in its context. When the context fills up,\n' +
      'the oldest turns are dropped; a single message too long for the context is refused (not\n' +
      'sent) and the chat goes on.\n' +
      'Commands: /help lists them, /reset clears the conversation, /exit (or /quit) quits.',
  },
  tokenize: {
    usage: 'phi2 tokenize [text] [options]',
    about:
      'Prints the token ids of a text (the arguments, --file F, or stdin), separated by spaces.\n' +
      'The text is taken exactly as given (a trailing newline of a file or stdin is tokenized too).',
  },
  info: {
    usage: 'phi2 info [options]',
    about: 'Prints facts about the model (architecture, format, dtype, sizes, backend and runtime).',
  },
}

const GROUP_ORDER: FlagDef['group'][] = ['Model', 'Generation', 'Prompt format', 'Chat format', 'Input / output', 'Other']

function flagLines(command: Command | null, names: FlagName[]): string {
  const lines: string[] = []
  for (const group of GROUP_ORDER) {
    const inGroup = names.filter((n) => (FLAGS[n] as FlagDef).group === group)
    if (inGroup.length === 0) continue
    lines.push('', `${group}:`)
    for (const n of inGroup) {
      const f = FLAGS[n] as FlagDef
      const text = typeof f.help === 'string' ? f.help : (command !== null ? f.help[command] : undefined) ?? Object.values(f.help)[0]!
      const head = `  ${'short' in f && f.short ? `-${f.short}, ` : ''}--${n}${f.arg ? ` ${f.arg}` : ''}`
      const [first, ...rest] = text.split('\n').flatMap((l) => wrap(l, 100 - 27))
      if (head.length < 27) lines.push(`${head.padEnd(27)}${first}`)
      else lines.push(head, `${' '.repeat(27)}${first}`)
      for (const r of rest) lines.push(`${' '.repeat(27)}${r}`)
    }
  }
  return lines.join('\n')
}

/** Splits a line at spaces into lines of at most `width` characters (longer words stay whole). */
function wrap(line: string, width: number): string[] {
  const out: string[] = []
  let cur = ''
  for (const word of line.split(' ')) {
    if (cur !== '' && cur.length + 1 + word.length > width) {
      out.push(cur)
      cur = word
    } else cur = cur === '' ? word : `${cur} ${word}`
  }
  out.push(cur)
  return out
}

const EXIT_CODES = 'Exit codes: 0 ok (also when stdout was closed early), 1 error (one line "phi2: CODE: message"\non stderr), 2 bad usage (unknown flag, a flag the command does not take, invalid value).'

/** `phi2 <command> --help`. */
export function commandHelp(command: Command): string {
  const names = (Object.keys(FLAGS) as FlagName[]).filter((n) => accepts(command, n))
  const { usage, about } = COMMAND_HELP[command]
  return `Usage: ${usage}\n\n${about}\n${flagLines(command, names)}\n\n${EXIT_CODES}\n`
}

/** `phi2 --help`. */
export function globalHelp(): string {
  const common = (Object.keys(FLAGS) as FlagName[]).filter((n) => FLAGS[n].group === 'Model' || FLAGS[n].group === 'Other')
  return `Usage: phi2 <command> [options]

Microsoft Phi-2 on the command line (Rust engine: native CPU addon, or wasm).

Commands:
  generate [prompt]      Complete a prompt (argument, --file F, or stdin) and stream it to stdout
  chat                   Interactive chat that keeps its context (/help lists its commands)
  tokenize [text]        Print the token ids of a text (argument, --file F, or stdin)
  info                   Print facts about the model
  convert SRC            Convert HF safetensors (directory, file or Hub id) to GGUF (phi2 convert --help)
  perplexity --file F    Perplexity of a text, measured as llama.cpp's perplexity tool does
  serve                  HTTP server: the card's /score and an OpenAI API, batched (phi2 serve --help)

Run "phi2 <command> --help" for a command's own flags, with their defaults and ranges.
${flagLines(null, common)}

${EXIT_CODES}
`
}
