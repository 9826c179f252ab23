/**
 * `phi2 convert SRC --type TYPE (--out FILE.gguf | --cache)`: HF safetensors (a directory, a
 * .safetensors file, or a Hub id) → GGUF, through the SDK's `convertModel`. Its own flags and help
 * (the generation flags of cli-flags.ts do not apply). Exit codes as the other commands: 0 ok,
 * 1 error (`phi2: CODE: message`), 2 bad usage; Ctrl-C cancels (nothing is left at the output).
 */
import { parseArgs } from 'node:util'
import { progressBar } from './cli-progress.js'
import { Phi2Error } from './errors.js'
import { CONVERT_TYPES, type ConvertOptions, convertModel } from './node/convert.js'
import { progressBarsDisabled } from './node/hub-cache.js'

export const CONVERT_HELP = `Usage: phi2 convert SRC --type TYPE (--out FILE.gguf | --cache) [options]

Converts a Hugging Face safetensors Phi model (F32 / F16 / BF16, one file or shards, HF or legacy
phi-msft tensor names) into one GGUF v3 file, as llama.cpp's converter and llama-quantize write it
(same quantized bytes, llama-quantize's per-tensor mixes for the _M types), with the tokenizer
and phi2.* metadata. The tensors are streamed: memory stays bounded whatever the model's size.
SRC: a model directory (config.json + *.safetensors, ideally tokenizer.json), a .safetensors
file (config.json beside it), or a Hugging Face repository id ORG/REPO (downloaded into the
Hugging Face cache first; --revision).

Options:
  --type TYPE                ${CONVERT_TYPES.join(' ')}
  --out FILE                 the GGUF to write (a temporary file beside it until it is complete)
  --cache                    write it into phi2's model cache instead, as NAME.TYPE.gguf (NAME: the
                             repository's or directory's name, or --name): $PHI2_CACHE/models,
                             default ~/.cache/phi2/models; then --model NAME.TYPE.gguf (or
                             loadModel('NAME.TYPE.gguf')) finds it from any directory
  --threads N                quantization threads, integer 1..1024 (default: all cores)
  --name NAME                general.name in the GGUF (default: the source directory's name)
  --tokenizer PATH           tokenizer.json (or a directory with one) when SRC has none
                             (default: the bundled Phi-2 tokenizer)
  --revision REV             Hub sources: branch, tag or commit (default main)
  --json                     print the report {"out","type","bytes","fallbacks","tokenizer","tensors"}
  --quiet                    no progress on stderr
  -h, --help                 this help

Exit codes: 0 ok, 1 error (one line "phi2: CODE: message" on stderr), 2 bad usage.
`

function usage(message: string): number {
  process.stderr.write(`phi2: E_USAGE: ${message} (see phi2 convert --help)\n`)
  return 2
}

/** Runs `phi2 convert` with the arguments after `convert`; resolves with the exit code. */
export async function runConvert(argv: string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>
  let positionals: string[]
  try {
    ;({ values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        type: { type: 'string' },
        out: { type: 'string' },
        cache: { type: 'boolean' },
        threads: { type: 'string' },
        name: { type: 'string' },
        tokenizer: { type: 'string' },
        revision: { type: 'string' },
        json: { type: 'boolean' },
        quiet: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }))
  } catch (err) {
    return usage((err as Error).message)
  }
  if (values.help) {
    process.stdout.write(CONVERT_HELP)
    return 0
  }
  if (positionals.length !== 1) return usage(positionals.length ? `convert takes one SRC, got ${positionals.length}` : 'no SRC: give a model directory, a .safetensors file or a Hub id ORG/REPO')
  const type = values.type as string | undefined
  if (type === undefined) return usage(`--type is required (${CONVERT_TYPES.join(', ')})`)
  if (!CONVERT_TYPES.some((t) => t.toLowerCase() === type.toLowerCase())) return usage(`--type ${JSON.stringify(type)}: expected one of ${CONVERT_TYPES.join(', ')}`)
  if ((values.out === undefined) === !values.cache) return usage('give exactly one of --out FILE.gguf and --cache')
  let threads: number | undefined
  if (values.threads !== undefined) {
    threads = Number(values.threads)
    if (!/^\d+$/.test(String(values.threads).trim()) || threads < 1 || threads > 1024) return usage(`--threads expects an integer 1..1024, got ${JSON.stringify(values.threads)}`)
  }
  const quiet = Boolean(values.quiet)
  const src = positionals[0]!
  const ac = new AbortController()
  const onSigint = () => ac.abort()
  process.once('SIGINT', onSigint)
  const bar = progressBar(!quiet)
  const downloadBar = progressBar(!quiet && !progressBarsDisabled())
  let phase: string | null = null
  const opts: ConvertOptions = {
    type,
    ...(values.out !== undefined ? { out: values.out as string } : { cache: true }),
    ...(threads !== undefined ? { threads } : {}),
    ...(values.name !== undefined ? { name: values.name as string } : {}),
    ...(values.tokenizer !== undefined ? { tokenizer: values.tokenizer as string } : {}),
    ...(values.revision !== undefined ? { revision: values.revision as string } : {}),
    signal: ac.signal,
    onProgress: (p) => {
      if (p.phase !== phase) {
        if (phase === 'download') downloadBar.done()
        phase = p.phase
        if (!quiet && !process.stderr.isTTY) process.stderr.write(p.phase === 'download' ? `phi2: downloading ${src}\n` : `phi2: converting ${src} to ${type.toUpperCase()}\n`)
      }
      ;(p.phase === 'download' ? downloadBar : bar).update(p.item, p.loadedBytes, p.totalBytes)
    },
  }
  try {
    const r = await convertModel(src, opts)
    downloadBar.done()
    bar.done()
    if (values.json) process.stdout.write(`${JSON.stringify(r)}\n`)
    if (!quiet) {
      process.stderr.write(`phi2: wrote ${r.out} (${r.type}, ${r.bytes} bytes, ${r.tensors.length} tensors, ${r.fallbacks} fallbacks; tokenizer ${r.tokenizer})\n`)
      if (values.cache) process.stderr.write(`phi2: load it with --model ${r.out.split('/').pop()}\n`)
    }
    return 0
  } catch (err) {
    downloadBar.done()
    bar.done()
    if (err instanceof Phi2Error) {
      process.stderr.write(`phi2: ${err.code}: ${err.message.replace(/\s*\n\s*/g, ' ')}\n`)
      return err.code === 'E_INVALID_OPTION' ? 2 : 1
    }
    process.stderr.write(`phi2: E_INTERNAL: ${err instanceof Error ? err.message : String(err)}\n`)
    return 1
  } finally {
    process.removeListener('SIGINT', onSigint)
  }
}
