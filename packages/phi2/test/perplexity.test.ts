// model.perplexity() and `phi2 perplexity`: the windows of llama.cpp's perplexity tool, option
// errors, and on the trained default model (scripts/train) the held-out perplexity of every GGUF
// type, ours against llama.cpp's (node-llama-cpp, same files, same token ids: within 0.5%) and
// PyTorch's (scripts/train/golden.py: F32 within 1e-4 in nll). Writes the table of the README's
// "Held-out perplexity" section to FIXTURES/trained/perplexity-table.md and prints it.
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type PerplexityResult, Phi2Error, loadModel, perplexityWindows } from '../src/index.js'
import { measurePerplexity, type PerplexityHost } from '../src/perplexity.js'
import { CLI, FIXTURES, REPO_ROOT, fixture } from './helpers.js'

const tmp = mkdtempSync(join(tmpdir(), 'phi2-ppl-'))
afterAll(() => rmSync(tmp, { recursive: true, force: true }))

function phi2(args: string[], input?: string) {
  const r = spawnSync(process.execPath, [CLI, ...args], { input: input ?? '', encoding: 'utf8', timeout: 120_000 })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

/** A fake model with 8 ids and a known next-token distribution at every window position. */
function fakeHost(contextLength = 64): PerplexityHost & { calls: number[][] } {
  const V = 8
  const calls: number[][] = []
  return {
    calls,
    info: { contextLength, vocabSize: V },
    tokenize: (text: string) => [...text].map((c) => c.charCodeAt(0) % V),
    async logprobs(tokens: readonly number[]) {
      calls.push([...tokens])
      // Row k: probability of id t proportional to (t + 1 + k % 3): a distinct, known distribution per position.
      const rows = new Float32Array(tokens.length * V)
      for (let k = 0; k < tokens.length; k++) {
        let z = 0
        for (let t = 0; t < V; t++) z += t + 1 + (k % 3)
        for (let t = 0; t < V; t++) rows[k * V + t] = Math.log((t + 1 + (k % 3)) / z)
      }
      return rows
    },
  }
}

describe('perplexity windows (llama.cpp perplexity tool)', () => {
  it('default: floor(N / n_ctx) side-by-side windows, n_ctx - 1 - floor(n_ctx / 2) tokens scored in each', () => {
    expect(perplexityWindows(1000, 256, null)).toEqual([0, 256, 512].map((start) => ({ start, firstScored: 129 })))
    expect(perplexityWindows(255, 256, null)).toEqual([])
    expect(perplexityWindows(7, 7, null)).toEqual([{ start: 0, firstScored: 4 }]) // scores positions 4, 5, 6
  })

  it('stride S: ceil((N - n_ctx) / S) windows every S tokens, the last S tokens of each scored', () => {
    expect(perplexityWindows(1000, 256, 128)).toEqual([0, 128, 256, 384, 512, 640].map((start) => ({ start, firstScored: 128 })))
    expect(perplexityWindows(256, 256, 10)).toEqual([])
    expect(perplexityWindows(257, 256, 10)).toEqual([{ start: 0, firstScored: 246 }])
  })

  it('scores exactly those positions with the log-prob of the token that follows', async () => {
    const host = fakeHost()
    const ids = Array.from({ length: 30 }, (_, i) => (i * 5) % 8)
    const r = await measurePerplexity(host, ids, { contextLength: 10 })
    expect(host.calls).toEqual([ids.slice(0, 10), ids.slice(10, 20), ids.slice(20, 30)])
    let want = 0
    for (const s of [0, 10, 20]) {
      for (let k = 6; k < 10; k++) {
        const z = 36 + 8 * ((k - 1) % 3)
        want -= Math.fround(Math.log((ids[s + k]! + 1 + ((k - 1) % 3)) / z))
      }
    }
    expect(r).toMatchObject({ tokens: 12, windows: 3, textTokens: 30, contextLength: 10, stride: null })
    expect(r.nll).toBeCloseTo(want / 12, 6)
    expect(r.perplexity).toBeCloseTo(Math.exp(want / 12), 5)
    expect(r.nllStdError).toBeGreaterThan(0)
    const progress: number[] = []
    const s = await measurePerplexity(fakeHost(), ids, { contextLength: 10, stride: 3, onProgress: (p) => progress.push(p.window) })
    expect(s).toMatchObject({ tokens: 7 * 3, windows: 7, stride: 3 })
    expect(progress).toEqual([1, 2, 3, 4, 5, 6, 7])
  })

  it('rejects bad options with typed errors naming them', async () => {
    const host = fakeHost(64)
    const text = 'x'.repeat(200)
    const err = async (p: Promise<unknown>) => (await p.then(() => null, (e: unknown) => e)) as Phi2Error & { path?: string }
    expect(await err(measurePerplexity(host, text, { contextLength: 65 }))).toMatchObject({ code: 'E_INVALID_OPTION', path: 'contextLength' })
    expect(await err(measurePerplexity(host, text, { contextLength: 1 }))).toMatchObject({ code: 'E_INVALID_OPTION', path: 'contextLength' })
    expect(await err(measurePerplexity(host, text, { contextLength: 32, stride: 32 }))).toMatchObject({ code: 'E_INVALID_OPTION', path: 'stride' })
    expect(await err(measurePerplexity(host, 'short', { contextLength: 32 }))).toMatchObject({ code: 'E_INVALID_OPTION', path: 'text' })
    expect(await err(measurePerplexity(host, text, { window: 3 } as never))).toMatchObject({ code: 'E_INVALID_OPTION', path: 'window' })
    const ac = new AbortController()
    ac.abort()
    expect(await err(measurePerplexity(host, text, { contextLength: 32, signal: ac.signal }))).toMatchObject({ code: 'E_ABORTED' })
  })
})

interface TrainedFx {
  hf: string
  gguf: Record<string, string>
  dir: string
}
interface Golden {
  ids: number[]
  contextLength: number
  pytorchPerplexity: Record<string, { nll: number; perplexity: number; tokens: number }>
  pytorchPerplexityWholeHeldout: { nll: number; perplexity: number; tokens: number; textTokens: number }
}

describe('the trained default model: held-out perplexity, ours vs llama.cpp vs PyTorch', () => {
  const TYPES = ['F32', 'F16', 'Q8_0', 'Q4_0', 'Q4_K_M'] as const
  let fx: TrainedFx
  let golden: Golden
  let text: string
  const ours: Record<string, PerplexityResult> = {}

  beforeAll(async () => {
    const mod = (await import(pathToFileURL(join(REPO_ROOT, 'test/trained/fixtures.mjs')).href)) as {
      trainedFixtures(dir: string): TrainedFx
      trainedGolden(): Golden
    }
    fx = mod.trainedFixtures(FIXTURES)
    golden = mod.trainedGolden()
    text = readFileSync(join(REPO_ROOT, 'test/golden/default-model/heldout.txt'), 'utf8')
  }, 120_000)

  it('the SDK tokenizes the held-out text to the ids PyTorch scored', async () => {
    const m = await loadModel(fx.gguf.Q8_0!)
    try {
      expect(m.tokenize(text)).toEqual(golden.ids)
    } finally {
      m.dispose()
    }
  })

  it('F32 safetensors and GGUF: perplexity equals PyTorch\'s (nll within 1e-4)', async () => {
    for (const src of [fx.hf, fx.gguf.F32!]) {
      const m = await loadModel(src)
      try {
        const r = await m.perplexity(text, { contextLength: golden.contextLength })
        expect(r.tokens).toBe(golden.pytorchPerplexity.F32!.tokens)
        expect(Math.abs(r.nll - golden.pytorchPerplexity.F32!.nll), src).toBeLessThan(1e-4)
      } finally {
        m.dispose()
      }
    }
  })

  it('every GGUF type: ours within 0.5% of llama.cpp\'s on the same file; the table', { timeout: 300_000 }, async () => {
    const idsFile = join(tmp, 'ids.json')
    writeFileSync(idsFile, JSON.stringify(golden.ids))
    const rows: string[] = []
    const llama: Record<string, { nll: number; perplexity: number; tokens: number }> = {}
    for (const t of TYPES) {
      const file = fx.gguf[t]!
      const m = await loadModel(file)
      try {
        ours[t] = await m.perplexity(golden.ids, { contextLength: golden.contextLength })
      } finally {
        m.dispose()
      }
      const r = spawnSync(process.execPath, [join(REPO_ROOT, 'test/oracle/llama-perplexity.mjs'), '--model', file, '--ids', idsFile, '--context', String(golden.contextLength)], {
        encoding: 'utf8',
        maxBuffer: 64 << 20,
        env: { ...process.env, NODE_LLAMA_CPP_SKIP_DOWNLOAD: 'true' },
      })
      expect(r.status, r.stderr).toBe(0)
      llama[t] = JSON.parse(r.stdout.trim().split('\n').pop()!)
      expect(llama[t]!.tokens).toBe(ours[t]!.tokens)
      const rel = Math.abs(ours[t]!.perplexity / llama[t]!.perplexity - 1)
      expect(rel, `${t}: ours ${ours[t]!.perplexity} vs llama.cpp ${llama[t]!.perplexity}`).toBeLessThan(0.005)
    }
    const f32 = ours.F32!.perplexity
    const pct = (x: number) => `${x >= 0 ? '+' : ''}${(x * 100).toFixed(2)}%`
    const mb = (f: string) => (statSync(f).size / 1e6).toFixed(1)
    rows.push(
      `Held-out excerpt test/golden/default-model/heldout.txt: ${golden.ids.length} tokens, ${ours.F32!.windows} windows of ${golden.contextLength}, ${ours.F32!.tokens} tokens scored (llama.cpp's perplexity-tool windows).`,
      '',
      '| file | MB | ours | llama.cpp | PyTorch (weights dequantized to F32) | ours vs F32 | ours vs llama.cpp |',
      '|---|---:|---:|---:|---:|---:|---:|',
    )
    for (const t of TYPES) {
      const o = ours[t]!.perplexity
      const pt = golden.pytorchPerplexity[t]?.perplexity
      rows.push(
        `| ${t} | ${mb(fx.gguf[t]!)} | ${o.toFixed(4)} | ${llama[t]!.perplexity.toFixed(4)} | ${pt === undefined ? 'n/a' : pt.toFixed(4)} | ${t === 'F32' ? '—' : pct(o / f32 - 1)} | ${pct(o / llama[t]!.perplexity - 1)} |`,
      )
    }
    const table = `${rows.join('\n')}\n`
    writeFileSync(join(fx.dir, 'perplexity-table.md'), table)
    console.log(`\n${table}`)
    // Q8_0 costs a fraction of a percent.
    expect(Math.abs(ours.Q8_0!.perplexity / f32 - 1)).toBeLessThan(0.005)
  })

  it('phi2 perplexity --json equals the SDK; the plain output and usage errors', () => {
    const file = join(tmp, 'heldout.txt')
    writeFileSync(file, text)
    const r = phi2(['perplexity', '--model', fx.gguf.Q8_0!, '--file', file, '--context', String(golden.contextLength), '--json'])
    expect(r.code, r.stderr).toBe(0)
    const j = JSON.parse(r.stdout)
    expect(j).toMatchObject({ tokens: ours.Q8_0!.tokens, windows: ours.Q8_0!.windows, contextLength: golden.contextLength, stride: null })
    expect(j.nll).toBeCloseTo(ours.Q8_0!.nll, 10)
    expect(r.stderr).not.toMatch(/\[#+/) // no progress bar when stderr is not a terminal
    const plain = phi2(['perplexity', '--model', fx.gguf.Q8_0!, '--file', file, '--context', '256', '--stride', '64', '--quiet'])
    expect(plain.code, plain.stderr).toBe(0)
    expect(plain.stdout).toMatch(/^perplexity: \d+\.\d{4} \+\/- \d+\.\d{5} {2}\(nll \d+\.\d+, \d+ tokens scored in \d+ windows of 256, stride 64; text \d+ tokens\)\n$/)
    expect(plain.stderr).toBe('')
    expect(phi2(['perplexity', '--help']).stdout).toMatch(/^Usage: phi2 perplexity/)
    expect(phi2(['help', 'perplexity']).stdout).toMatch(/--ppl-stride/)
    expect(phi2(['--help']).stdout).toMatch(/perplexity --file F/)
    const bad = phi2(['perplexity', '--model', fx.gguf.Q8_0!, '--file', file, '--context', 'abc'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toMatch(/^phi2: E_USAGE: --context expects an integer/)
    const big = phi2(['perplexity', '--model', fx.gguf.Q8_0!, '--file', file, '--stride', '512', '--context', '256'])
    expect(big.code).toBe(2)
    expect(big.stderr).toMatch(/E_INVALID_OPTION: .*stride.*\(flag --stride\)/)
    const missing = phi2(['perplexity', '--model', fx.gguf.Q8_0!, '--file', join(tmp, 'nope.txt')])
    expect(missing.code).toBe(1)
    expect(missing.stderr).toMatch(/^phi2: E_IO: cannot read --file/)
    expect(phi2(['perplexity', '--frobnicate']).code).toBe(2)
    // --kv-cache f16: the same measurement on an f16 cache, a hair away from the f32 one.
    const half = phi2(['perplexity', '--model', fx.gguf.Q8_0!, '--file', file, '--context', String(golden.contextLength), '--kv-cache', 'f16', '--json'])
    expect(half.code, half.stderr).toBe(0)
    const h = JSON.parse(half.stdout)
    expect(h.tokens).toBe(j.tokens)
    expect(h.nll).not.toBe(j.nll)
    expect(Math.abs(h.perplexity / j.perplexity - 1)).toBeLessThan(0.002)
    const badKv = phi2(['perplexity', '--model', fx.gguf.Q8_0!, '--file', file, '--kv-cache', 'f8'])
    expect(badKv.code).toBe(2)
    expect(badKv.stderr).toMatch(/E_INVALID_OPTION: .*kvCache.*\(flag --kv-cache\)/)
  })

  it('the random-weight fixtures still load for perplexity (any Phi model)', async () => {
    const m = await loadModel(fixture('tiny-q8_0.gguf'))
    try {
      const r = await m.perplexity(golden.ids.slice(0, 128), { contextLength: 64 })
      expect(r).toMatchObject({ windows: 2, tokens: 2 * 31 })
      expect(Number.isFinite(r.perplexity)).toBe(true)
    } finally {
      m.dispose()
    }
  })
})
