// The @x/phi2 browser demo: plain TypeScript + DOM. It uses the SDK exactly as an application
// would (`import ... from '@x/phi2'`, resolved through the package's "browser" export condition).
import { defaultModelUrl, formatPrompt, loadModel } from '@x/phi2'

type Model = Awaited<ReturnType<typeof loadModel>>
type LoadOptions = NonNullable<Parameters<typeof loadModel>[1]>
type LoadSource = Parameters<typeof loadModel>[0]
type GenerateOptions = NonNullable<Parameters<Model['generate']>[1]>
type GenerateResult = Awaited<ReturnType<Model['generate']>>
type Stream = ReturnType<Model['stream']>
type Format = 'qa' | 'chat' | 'code' | 'none'

/** The page's states (`#app[data-state]`; the tests wait on them). */
type State = 'empty' | 'loading' | 'ready' | 'generating' | 'done' | 'stopped' | 'error'

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id)
  if (!el) throw new Error(`#${id} is missing from index.html`)
  return el as T
}

const ui = {
  app: $('app'),
  modelUrl: $<HTMLInputElement>('model-url'),
  modelFile: $<HTMLInputElement>('model-file'),
  threads: $<HTMLInputElement>('threads'),
  cache: $<HTMLInputElement>('cache'),
  load: $<HTMLButtonElement>('load'),
  progress: $<HTMLProgressElement>('load-progress'),
  status: $('status'),
  coi: $('coi'),
  engineBuild: $('engine-build'),
  engineThreads: $('engine-threads'),
  engineReason: $('engine-reason'),
  modelDtype: $('model-dtype'),
  modelSize: $('model-size'),
  modelContext: $('model-context'),
  format: $<HTMLSelectElement>('format'),
  example: $<HTMLButtonElement>('example'),
  prompt: $<HTMLTextAreaElement>('prompt'),
  formatted: $('formatted'),
  formattedStop: $('formatted-stop'),
  maxNewTokens: $<HTMLInputElement>('max-new-tokens'),
  doSample: $<HTMLInputElement>('do-sample'),
  temperature: $<HTMLInputElement>('temperature'),
  topP: $<HTMLInputElement>('top-p'),
  topK: $<HTMLInputElement>('top-k'),
  seed: $<HTMLInputElement>('seed'),
  repetitionPenalty: $<HTMLInputElement>('repetition-penalty'),
  generate: $<HTMLButtonElement>('generate'),
  stop: $<HTMLButtonElement>('stop'),
  output: $('output'),
  stats: $('stats'),
}

/** The model card's sample prompts, one per format. */
const EXAMPLES: Record<Format, string> = {
  qa: 'Write a detailed analogy between mathematics and a lighthouse.',
  chat: "I don't know why, I'm struggling to maintain focus while studying. Any suggestions?",
  code: 'def print_prime(n):\n   """\n   Print all primes between 1 and n\n   """',
  none: 'Once upon a time',
}

let model: Model | null = null
let loading: AbortController | null = null
let current: Stream | null = null
let lastResult: GenerateResult | null = null
let lastError: unknown = null

function setState(state: State): void {
  ui.app.dataset.state = state
  const busy = state === 'loading' || state === 'generating'
  ui.load.disabled = state === 'generating'
  ui.load.textContent = state === 'loading' ? 'Cancel loading' : 'Load model'
  ui.generate.disabled = !model || busy
  ui.stop.disabled = state !== 'generating'
  ui.output.setAttribute('aria-busy', String(state === 'generating'))
}

function status(text: string, isError = false): void {
  ui.status.textContent = text
  ui.status.classList.toggle('error', isError)
}

const mib = (n: number) => `${(n / 1048576).toFixed(n < 10485760 ? 2 : 1)} MiB`

function describeError(err: unknown): string {
  if (err && typeof err === 'object') {
    const e = err as { code?: unknown; message?: unknown; name?: unknown }
    const msg = typeof e.message === 'string' ? e.message : String(err)
    return typeof e.code === 'string' ? `${e.code}: ${msg}` : msg
  }
  return String(err)
}

function isAbort(err: unknown): boolean {
  const e = err as { name?: unknown; code?: unknown } | null
  return !!e && (e.name === 'AbortError' || e.code === 'E_ABORTED')
}

// ---------------------------------------------------------------------------------------------
// Loading

function selectedSource(): { source: LoadSource; label: string } {
  const which = (document.querySelector('input[name="source"]:checked') as HTMLInputElement | null)?.value ?? 'default'
  if (which === 'url') {
    const url = ui.modelUrl.value.trim()
    if (!url) throw new Error('Enter the URL of a GGUF file, or a Hugging Face id hf:ORG/REPO/FILE.gguf.')
    // Hugging Face ids (hf:ORG/REPO/FILE.gguf) go to loadModel as they are: it resolves them to the
    // Hub's URL. A bare ORG/REPO is a relative URL to the SDK too (its error then suggests hf:).
    if (/^hf:/i.test(url) || /^[A-Za-z0-9][\w.-]*\/[A-Za-z0-9][\w.-]*$/.test(url)) return { source: url, label: url }
    return { source: new URL(url, location.href).href, label: url }
  }
  if (which === 'file') {
    const file = ui.modelFile.files?.[0]
    if (!file) throw new Error('Choose a GGUF file.')
    return { source: file, label: file.name }
  }
  return { source: defaultModelUrl(), label: 'the embedded default model' }
}

function readThreads(): number | undefined {
  const v = ui.threads.value.trim()
  if (!v) return undefined
  const n = Number(v)
  if (!Number.isInteger(n) || n < 1) throw new Error('Threads must be a whole number ≥ 1 (or blank).')
  return n
}

function showModel(m: Model | null): void {
  const info = m?.info as (Model['info'] & Record<string, unknown>) | undefined
  const runtime = info?.runtime as { build?: string; threads?: number; reason?: string } | undefined
  ui.engineBuild.textContent = runtime?.build ?? '–'
  ui.engineThreads.textContent = runtime?.threads !== undefined ? String(runtime.threads) : '–'
  ui.engineReason.textContent = runtime?.reason ?? '–'
  ui.modelDtype.textContent = info ? String(info.dtype) : '–'
  ui.modelSize.textContent = typeof info?.fileSizeBytes === 'number' ? mib(info.fileSizeBytes) : '–'
  ui.modelContext.textContent = info ? `${info.contextLength} tokens` : '–'
  if (info) {
    ui.maxNewTokens.max = String(info.contextLength)
    if (Number(ui.maxNewTokens.value) > info.contextLength) ui.maxNewTokens.value = String(info.contextLength)
  }
}

async function load(): Promise<void> {
  if (loading) {
    loading.abort()
    return
  }
  let source: LoadSource
  let label: string
  let threads: number | undefined
  try {
    ;({ source, label } = selectedSource())
    threads = readThreads()
  } catch (err) {
    status(describeError(err), true)
    return
  }
  if (model) {
    model.dispose()
    model = null
    showModel(null)
  }
  const controller = new AbortController()
  loading = controller
  lastError = null
  setState('loading')
  ui.progress.removeAttribute('value') // indeterminate until the first report
  status(`Loading ${label}…`)
  const options: LoadOptions = {
    signal: controller.signal,
    cache: ui.cache.checked,
    onProgress: (p) => {
      ui.progress.value = Math.max(0, Math.min(1, p.progress))
      if (p.phase === 'download') {
        const of = p.totalBytes ? ` of ${mib(p.totalBytes)}` : ''
        status(`Downloading ${label}: ${mib(p.loadedBytes ?? 0)}${of} (${Math.round(p.progress * 100)}%)`)
      } else if (p.phase === 'loading') status(`Preparing the weights (${Math.round(p.progress * 100)}%)…`)
      else if (p.phase === 'tokenizer') status('Reading the tokenizer…')
      else if ((p.phase as string) === 'cache-invalid') status(`The cached copy of ${label} is damaged: downloading it again…`)
    },
  }
  if (threads !== undefined) options.threads = threads
  const t0 = performance.now()
  try {
    model = await loadModel(source, options)
    ui.progress.value = 1
    showModel(model)
    const rt = (model.info as unknown as { runtime?: { build?: string; threads?: number } }).runtime
    status(`Loaded ${label} in ${((performance.now() - t0) / 1000).toFixed(2)} s (${rt?.build ?? 'wasm'}, ${rt?.threads ?? 1} thread${rt?.threads === 1 ? '' : 's'}).`)
    setState('ready')
  } catch (err) {
    lastError = err
    ui.progress.value = 0
    status(isAbort(err) ? 'Loading cancelled.' : `Could not load ${label}: ${describeError(err)}`, !isAbort(err))
    setState(isAbort(err) ? 'empty' : 'error')
  } finally {
    loading = null
    if (ui.app.dataset.state === 'loading') setState(model ? 'ready' : 'empty')
  }
}

// ---------------------------------------------------------------------------------------------
// Prompt and options

function updateFormatted(): void {
  const f = formatPrompt(ui.format.value as Format, ui.prompt.value)
  ui.formatted.textContent = f.prompt
  ui.formattedStop.textContent = f.stop.length ? `Stops at: ${f.stop.map((s) => JSON.stringify(s)).join(', ')}` : 'No stop strings.'
}

function num(input: HTMLInputElement, name: string, opt = false): number | undefined {
  const v = input.value.trim()
  if (v === '') {
    if (opt) return undefined
    throw new Error(`${name} is required.`)
  }
  const n = Number(v)
  if (!Number.isFinite(n)) throw new Error(`${name} must be a number.`)
  if (!input.checkValidity()) throw new Error(`${name}: ${input.validationMessage}`)
  return n
}

function readOptions(): GenerateOptions {
  const doSample = ui.doSample.checked
  const opts: Record<string, unknown> = {
    format: ui.format.value as Format,
    maxNewTokens: num(ui.maxNewTokens, 'Max new tokens'),
    doSample,
    repetitionPenalty: num(ui.repetitionPenalty, 'Repetition penalty'),
  }
  if (doSample) {
    opts.temperature = num(ui.temperature, 'Temperature')
    opts.topP = num(ui.topP, 'Top-p')
    opts.topK = num(ui.topK, 'Top-k')
    const seed = num(ui.seed, 'Seed', true)
    if (seed !== undefined) opts.seed = seed
  }
  return opts as GenerateOptions
}

function syncSampling(): void {
  for (const el of document.querySelectorAll<HTMLInputElement>('input.sampling')) el.disabled = !ui.doSample.checked
}

// ---------------------------------------------------------------------------------------------
// Generation

function showStats(r: GenerateResult, wallMs: number): void {
  const t = r.timings
  const parts = [
    `${r.usage.completionTokens} tokens`,
    `${t.tokensPerSecond.toFixed(1)} tokens/s`,
    `prompt ${r.usage.promptTokens} tokens in ${t.promptMs.toFixed(1)} ms`,
    `total ${(wallMs / 1000).toFixed(2)} s`,
    `finish: ${r.finishReason}${r.stopString ? ` (${JSON.stringify(r.stopString)})` : ''}`,
  ]
  ui.stats.textContent = parts.join(' · ')
  ui.stats.dataset.tokensPerSecond = String(t.tokensPerSecond)
  ui.stats.dataset.finishReason = r.finishReason
}

async function generate(): Promise<void> {
  if (!model || current) return
  let options: GenerateOptions
  try {
    options = readOptions()
  } catch (err) {
    status(describeError(err), true)
    return
  }
  const prompt = ui.prompt.value
  ui.output.textContent = ''
  ui.stats.textContent = ''
  delete ui.stats.dataset.tokensPerSecond
  delete ui.stats.dataset.finishReason
  lastResult = null
  lastError = null
  setState('generating')
  status('Generating…')
  const t0 = performance.now()
  let tokens = 0
  let firstTokenMs: number | null = null
  const stream = model.stream(prompt, options)
  current = stream
  try {
    for await (const chunk of stream) {
      if (chunk.text) ui.output.append(chunk.text)
      tokens += chunk.tokens.length
      if (firstTokenMs === null && chunk.tokens.length) firstTokenMs = performance.now() - t0
      const s = (performance.now() - t0 - (firstTokenMs ?? 0)) / 1000
      ui.stats.textContent = `${tokens} tokens${s > 0 && tokens > 1 ? ` · ${((tokens - 1) / s).toFixed(1)} tokens/s` : ''}…`
    }
    const r = await stream.result
    lastResult = r
    // After Stop, tokens already in flight are part of the result but were not streamed.
    ui.output.textContent = r.text
    showStats(r, performance.now() - t0)
    status(r.finishReason === 'abort' ? 'Stopped.' : 'Done.')
    setState(r.finishReason === 'abort' ? 'stopped' : 'done')
  } catch (err) {
    lastError = err
    if (isAbort(err)) {
      status('Stopped.')
      setState('stopped')
    } else {
      status(`Generation failed: ${describeError(err)}`, true)
      setState('error')
    }
  } finally {
    current = null
  }
}

function stop(): void {
  current?.cancel()
}

// ---------------------------------------------------------------------------------------------
// Wiring

ui.coi.textContent = globalThis.crossOriginIsolated ? 'yes (threads available)' : 'no (single-threaded)'
ui.coi.dataset.value = String(!!globalThis.crossOriginIsolated)
ui.load.addEventListener('click', () => void load())
ui.generate.addEventListener('click', () => void generate())
ui.stop.addEventListener('click', stop)
ui.format.addEventListener('change', updateFormatted)
ui.prompt.addEventListener('input', updateFormatted)
ui.example.addEventListener('click', () => {
  ui.prompt.value = EXAMPLES[ui.format.value as Format]
  updateFormatted()
})
ui.doSample.addEventListener('change', syncSampling)
ui.modelUrl.addEventListener('input', () => (($('source-url') as HTMLInputElement).checked = true))
ui.modelFile.addEventListener('change', () => (($('source-file') as HTMLInputElement).checked = true))
ui.prompt.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) void generate()
})
updateFormatted()
syncSampling()
setState('empty')

/** A small hook for tests and the console: the SDK as imported here, and the page's model. */
declare global {
  interface Window {
    phi2Demo: unknown
  }
}
window.phi2Demo = {
  sdk: { loadModel, defaultModelUrl, formatPrompt },
  loadModel,
  defaultModelUrl,
  formatPrompt,
  get model() {
    return model
  },
  get state() {
    return ui.app.dataset.state
  },
  get lastResult() {
    return lastResult
  },
  get lastError() {
    return lastError
  },
}
