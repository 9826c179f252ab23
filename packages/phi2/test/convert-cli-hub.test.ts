// convertModel() and `phi2 convert` on the fixture safetensors models (the engine's own convert
// tests check the bytes against llama.cpp; here: the SDK / CLI contract), and the CLI's Hub
// contract: `phi2 generate --model hf:ORG/REPO/FILE.gguf [--revision REV]` and `--model ORG/REPO`
// print the same JSON as with the local file, against the loopback Hub.
import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CONVERT_TYPES, type ConvertProgress, type Phi2Error, convertModel, loadModel } from '@x/phi2'
import { CLI, fixture } from './helpers.js'
// @ts-expect-error: a plain ES module without types
import { fixtureRepos, startHub } from './hub-server.mjs'

const tmp = mkdtempSync(join(tmpdir(), 'phi2-convert-'))
let hub: { endpoint: string; requests: unknown[]; close(): Promise<void> }
beforeAll(async () => {
  hub = await startHub(fixtureRepos(join(fixture('tiny'), '..')))
})
afterAll(async () => {
  await hub.close()
  rmSync(tmp, { recursive: true, force: true })
})

/** The CLI, run asynchronously (the loopback Hub lives in this process). */
function phi2(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, maxBuffer: 16 << 20, timeout: 120_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr })
    })
  })
}

async function greedy(source: string): Promise<number[]> {
  const m = await loadModel(source)
  try {
    return (await m.generate('The quick brown fox', { maxNewTokens: 8 })).tokens
  } finally {
    m.dispose()
  }
}

async function rejection(p: Promise<unknown>): Promise<Phi2Error> {
  try {
    await p
  } catch (err) {
    return err as Phi2Error
  }
  throw new Error('did not reject')
}

describe('convertModel (SDK)', () => {
  it('converts a fixture to Q8_0 and Q4_K_M with progress; the results load and follow the F32 model', async () => {
    expect(CONVERT_TYPES).toContain('Q4_K_M')
    const reference = await greedy(fixture('kq-f32.gguf'))
    for (const type of ['Q8_0', 'q4_k_m']) {
      const out = join(tmp, `kq.${type}.gguf`)
      const events: ConvertProgress[] = []
      const r = await convertModel(fixture('kq'), { type, out, threads: 2, onProgress: (p) => events.push(p) })
      expect(r.out).toBe(out)
      expect(r.type).toBe(type.toUpperCase())
      // llama-quantize's mix: the output head is Q6_K in the 4/5-bit types.
      expect(r.tensors.find((t) => t.name === 'output.weight')!.type).toBe(type === 'Q8_0' ? 'q8_0' : 'q6_K')
      expect(r.tensors.find((t) => t.name === 'blk.0.ffn_up.weight')!.type).toBe(type === 'Q8_0' ? 'q8_0' : 'q4_K')
      expect(events.at(-1)).toMatchObject({ phase: 'convert', progress: 1, loadedBytes: r.bytes, totalBytes: r.bytes })
      const m = await loadModel(out)
      expect(m.info.format).toBe('gguf')
      m.dispose()
      // Tiny random models: Q8_0 keeps the greedy tokens of F32; Q4_K_M at least the first one.
      const tokens = await greedy(out)
      if (type === 'Q8_0') expect(tokens).toEqual(reference)
      else expect(tokens[0]).toBe(reference[0])
    }
  })

  it('errors: bad type, missing source, out and cache both / neither; cancel leaves nothing', async () => {
    const bad = await rejection(convertModel(fixture('kq'), { type: 'Q3_K', out: join(tmp, 'x.gguf') }))
    expect(bad.code).toBe('E_INVALID_OPTION')
    expect(bad.message).toMatch(/Q4_K_M/)
    const missing = await rejection(convertModel(join(tmp, 'no-such-dir'), { type: 'F16', out: join(tmp, 'x.gguf') }))
    expect(missing.code).toBe('E_IO')
    expect((await rejection(convertModel(fixture('kq'), { type: 'F16' }))).code).toBe('E_INVALID_OPTION')
    expect((await rejection(convertModel(fixture('kq'), { type: 'F16', out: join(tmp, 'y.gguf'), cache: true }))).code).toBe('E_INVALID_OPTION')
    const gguf = await rejection(convertModel(fixture('kq-f32.gguf'), { type: 'F16', out: join(tmp, 'z.gguf') }))
    expect(gguf.code).toBe('E_INVALID_ARGUMENT')
    // Cancelled as soon as it starts, and after the first progress report: E_ABORTED, no file.
    const before = readdirSync(tmp)
    const ac = new AbortController()
    const started = convertModel(fixture('kq'), { type: 'Q4_0', out: join(tmp, 'cancelled.gguf'), signal: ac.signal })
    ac.abort()
    expect((await rejection(started)).code).toBe('E_ABORTED')
    const ac2 = new AbortController()
    const err = await rejection(
      convertModel(fixture('tiny'), { type: 'F32', out: join(tmp, 'cancelled2.gguf'), signal: ac2.signal, onProgress: () => ac2.abort() }),
    )
    expect(err.code).toBe('E_ABORTED')
    expect(err.name).toBe('AbortError')
    expect(readdirSync(tmp)).toEqual(before)
  })

  it('an onProgress that throws rejects convertModel with its error; the process lives on and no file is left', async () => {
    const before = readdirSync(tmp)
    const boom = new Error('progress callback failed')
    const err = await rejection(
      convertModel(fixture('tiny'), {
        type: 'F32',
        out: join(tmp, 'throws.gguf'),
        onProgress: () => {
          throw boom
        },
      }),
    )
    expect(err).toBe(boom)
    expect(readdirSync(tmp)).toEqual(before)
    // The addon still works after it.
    const ok = await convertModel(fixture('tiny'), { type: 'F16', out: join(tmp, 'after-throw.gguf') })
    expect(existsSync(ok.out)).toBe(true)
    rmSync(ok.out)
  })

  it('an abort after the last chunk leaves an existing output file as it was', async () => {
    const out = join(tmp, 'existing.gguf')
    writeFileSync(out, 'an older file the user keeps')
    const before = readdirSync(tmp)
    const ac = new AbortController()
    const err = await rejection(
      convertModel(fixture('tiny'), { type: 'F32', out, signal: ac.signal, onProgress: (p) => p.progress === 1 && ac.abort() }),
    )
    expect(err.code).toBe('E_ABORTED')
    expect(readFileSync(out, 'utf8')).toBe('an older file the user keeps')
    expect(readdirSync(tmp)).toEqual(before)
    // A completed conversion replaces it.
    const r = await convertModel(fixture('tiny'), { type: 'F32', out })
    expect(statSync(out).size).toBe(r.bytes)
    expect(readdirSync(tmp)).toEqual(before)
    rmSync(out)
  })
})

describe('phi2 convert (CLI)', () => {
  it('converts to a file (--json report) and into the phi2 cache (--cache), which --model NAME finds', async () => {
    const out = join(tmp, 'cli.q5_k_m.gguf')
    const r = await phi2(['convert', fixture('kq'), '--type', 'Q5_K_M', '--out', out, '--json', '--threads', '2'])
    expect(r.code, r.stderr).toBe(0)
    const report = JSON.parse(r.stdout)
    expect(report).toMatchObject({ out, type: 'Q5_K_M' })
    expect(r.stderr).toContain(`phi2: wrote ${out}`)
    const cacheRoot = join(tmp, 'phi2-cache')
    const c = await phi2(['convert', fixture('tiny'), '--type', 'q8_0', '--cache', '--quiet'], { PHI2_CACHE: cacheRoot })
    expect(c.code, c.stderr).toBe(0)
    expect(readdirSync(join(cacheRoot, 'models'))).toEqual(['tiny.Q8_0.gguf'])
    const g = await phi2(['generate', '--model', 'tiny.Q8_0.gguf', '--json', '--quiet', '--max-new-tokens', '4', 'Hi'], { PHI2_CACHE: cacheRoot })
    expect(g.code, g.stderr).toBe(0)
    const local = await phi2(['generate', '--model', fixture('tiny-q8_0.gguf'), '--json', '--quiet', '--max-new-tokens', '4', 'Hi'])
    expect(JSON.parse(g.stdout).tokens).toEqual(JSON.parse(local.stdout).tokens)
  })

  it('usage errors exit 2, engine errors exit 1 with the code', async () => {
    const noType = await phi2(['convert', fixture('kq'), '--out', join(tmp, 'a.gguf')])
    expect(noType.code).toBe(2)
    expect(noType.stderr).toMatch(/E_USAGE: --type is required/)
    const badType = await phi2(['convert', fixture('kq'), '--type', 'Q2_K', '--out', join(tmp, 'a.gguf')])
    expect(badType.code).toBe(2)
    expect(badType.stderr).toMatch(/--type "Q2_K": expected one of/)
    const missing = await phi2(['convert', join(tmp, 'nope'), '--type', 'F16', '--out', join(tmp, 'a.gguf')])
    expect(missing.code).toBe(1)
    expect(missing.stderr).toMatch(/^phi2: E_IO: .*nope/m)
    const help = await phi2(['convert', '--help'])
    expect(help.code).toBe(0)
    expect(help.stdout).toMatch(/Usage: phi2 convert SRC --type TYPE/)
    expect(existsSync(join(tmp, 'a.gguf'))).toBe(false)
  })

  it('converts a Hub repository id (downloaded into HF_HUB_CACHE first)', async () => {
    const hfCache = join(tmp, 'hf-convert')
    const out = join(tmp, 'from-hub.gguf')
    const r = await phi2(['convert', 'test-org/tiny', '--type', 'Q8_0', '--out', out, '--quiet'], { HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: hfCache })
    expect(r.code, r.stderr).toBe(0)
    expect(await greedy(out)).toEqual(await greedy(fixture('tiny-q8_0.gguf')))
    expect(existsSync(join(hfCache, 'models--test-org--tiny', 'refs', 'main'))).toBe(true)
  })
})

/** The CLI on a pseudo-terminal (util-linux `script`), stdout and stderr together. */
function phi2Tty(args: string[], env: Record<string, string> = {}): Promise<string> {
  const cmd = [process.execPath, CLI, ...args].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(' ')
  return new Promise((resolve, reject) => {
    execFile('script', ['-qec', cmd, '/dev/null'], { env: { ...process.env, ...env }, timeout: 120_000 }, (err, stdout) => {
      if (err) reject(new Error(`${cmd}: ${err.message}\n${stdout}`))
      else resolve(stdout)
    })
  })
}

describe('progress bars on a TTY', () => {
  it('convert and Hub downloads draw one on stderr; --quiet and HF_HUB_DISABLE_PROGRESS_BARS turn them off', async () => {
    const conv = await phi2Tty(['convert', fixture('tiny'), '--type', 'Q8_0', '--out', join(tmp, 'tty.gguf')])
    expect(conv).toMatch(/\r\x1b\[K.*\[#+\] 100%/)
    const quiet = await phi2Tty(['convert', fixture('tiny'), '--type', 'Q8_0', '--out', join(tmp, 'tty2.gguf'), '--quiet'])
    expect(quiet).not.toContain('\x1b[K')
    const hubArgs = ['generate', '--model', 'hf:test-org/tiny-gguf/tiny.Q8_0.gguf', '--json', '--max-new-tokens', '2', 'Hi']
    const env = { HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: join(tmp, 'hf-tty-1') }
    const download = await phi2Tty(hubArgs, env)
    expect(download).toMatch(/tiny-gguf\/tiny\.Q8_0\.gguf \[#+\] 100%/)
    const off = await phi2Tty(hubArgs, { HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: join(tmp, 'hf-tty-2'), HF_HUB_DISABLE_PROGRESS_BARS: '1' })
    expect(off).toContain('"finishReason":"length"')
    expect(off).not.toContain('\x1b[K')
  })

  it("the browser entry refuses a safetensors repository id (hf:ORG/REPO) with the 'use a GGUF' error", async () => {
    const r = await new Promise<string>((resolve) => {
      execFile(
        process.execPath,
        ['--conditions=browser', '--input-type=module', '-e', `const m = await import('@x/phi2'); try { await m.loadModel('hf:microsoft/phi-2') } catch (e) { console.log(e.code + ' ' + e.message) }`],
        { cwd: join(CLI, '..', '..') },
        (_err, stdout) => resolve(stdout),
      )
    })
    expect(r).toMatch(/^E_UNSUPPORTED_FORMAT .*microsoft\/phi-2.*GGUF/)
  })
})

describe('two processes fetching the same Hub file at once', () => {
  it('one download (the other waits for the lock, then uses the blob); both load', async () => {
    const env = { HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: join(tmp, 'hf-two') }
    const reqs = hub.requests as { server: string; method: string; path: string }[]
    reqs.length = 0
    // The loopback CDN holds the first body until both processes have asked for the metadata.
    const args = ['info', '--model', 'hf:test-org/barrier-gguf/tiny.Q8_0.gguf', '--json']
    const [a, b] = await Promise.all([phi2(args, env), phi2(args, env)])
    expect(a.code, a.stderr).toBe(0)
    expect(b.code, b.stderr).toBe(0)
    expect(JSON.parse(a.stdout).source).toBe(JSON.parse(b.stdout).source)
    expect(reqs.filter((r) => r.server === 'hub' && r.method === 'HEAD')).toHaveLength(2)
    expect(reqs.filter((r) => r.server === 'cdn' && r.method === 'GET')).toHaveLength(1)
  })
})

describe('phi2 generate --model <Hub id> (CLI contract)', () => {
  const strip = (s: string) => {
    const o = JSON.parse(s)
    delete o.timings
    return o
  }

  it('hf:ORG/REPO/FILE.gguf [--revision] and ORG/REPO print the same JSON as the local files', async () => {
    const env = { HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: join(tmp, 'hf-cli'), HF_HUB_DISABLE_PROGRESS_BARS: '1' }
    const args = ['--max-new-tokens', '6', '--json', 'The quick brown fox']
    const run = async (model: string, extra: string[] = []) => {
      const r = await phi2(['generate', '--model', model, ...extra, ...args], env)
      expect(r.code, r.stderr).toBe(0)
      return r
    }
    const hubbed = await run('hf:test-org/tiny-gguf/tiny.Q8_0.gguf')
    expect(hubbed.stderr).toMatch(/downloading hf:test-org\/tiny-gguf\/tiny\.Q8_0\.gguf/)
    expect(strip(hubbed.stdout)).toEqual(strip((await run(fixture('tiny-q8_0.gguf'))).stdout))
    const tagged = await run('hf:test-org/tiny-gguf/tiny.Q8_0.gguf', ['--revision', 'v1'])
    expect(strip(tagged.stdout)).toEqual(strip((await run(fixture('tiny-q4_0.gguf'))).stdout))
    expect(strip((await run('test-org/tiny')).stdout)).toEqual(strip((await run(fixture('tiny'))).stdout))
    // Offline, from the cache just filled.
    const offline = await phi2(['generate', '--model', 'hf:test-org/tiny-gguf/tiny.Q8_0.gguf', ...args], { ...env, HF_HUB_OFFLINE: '1' })
    expect(offline.code, offline.stderr).toBe(0)
    expect(strip(offline.stdout)).toEqual(strip(hubbed.stdout))
    const notFound = await phi2(['generate', '--model', 'hf:test-org/tiny-gguf/missing.gguf', ...args], env)
    expect(notFound.code).toBe(1)
    expect(notFound.stderr).toMatch(/^phi2: E_HUB_NOT_FOUND: .*"missing\.gguf" of test-org\/tiny-gguf/m)
  })
})
