// Hugging Face Hub sources against a loopback Hub (test/hub-server.mjs, pointed to with HF_ENDPOINT)
// and a temporary HF_HUB_CACHE: the cache layout huggingface_hub uses, revisions, resume after a
// dropped connection, etag verification, errors, offline mode, abort, concurrent loads.
import { createHash } from 'node:crypto'
import { existsSync, lstatSync, mkdirSync, mkdtempSync, symlinkSync, readFileSync, readdirSync, readlinkSync, realpathSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { type LoadProgress, Phi2Error, loadModel } from '@x/phi2'
import { browserHubUrl, parseHubId } from '../src/hub.js'
import { fixture } from './helpers.js'
// @ts-expect-error: a plain ES module without types
import { COMMIT_MAIN, COMMIT_V1, TOKEN, fixtureRepos, startHub } from './hub-server.mjs'

interface Hub {
  endpoint: string
  requests: { server: string; method: string; path: string; range: string | null; auth: string | null }[]
  close(): Promise<void>
}

let hub: Hub
let cache: string
const saved = { ...process.env }
const GGUF = 'hf:test-org/tiny-gguf/tiny.Q8_0.gguf'
const sha256 = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex')

beforeAll(async () => {
  hub = (await startHub(fixtureRepos(join(fixture('tiny'), '..')))) as Hub
})
afterAll(async () => {
  await hub.close()
})
beforeEach(() => {
  cache = mkdtempSync(join(tmpdir(), 'phi2-hf-cache-'))
  process.env.HF_ENDPOINT = hub.endpoint
  process.env.HF_HUB_CACHE = cache
  delete process.env.HF_TOKEN
  delete process.env.HF_HUB_OFFLINE
  process.env.HF_HOME = join(cache, 'no-home') // no token file
  hub.requests.length = 0
})
afterEach(() => {
  for (const k of ['HF_ENDPOINT', 'HF_HUB_CACHE', 'HF_TOKEN', 'HF_HUB_OFFLINE', 'HF_HOME']) {
    if (saved[k] === undefined) delete process.env[k]
    else process.env[k] = saved[k]
  }
  rmSync(cache, { recursive: true, force: true })
})

async function tokensOf(source: string, options: Parameters<typeof loadModel>[1] = {}) {
  const m = await loadModel(source, options)
  try {
    return { tokens: (await m.generate('Hello', { maxNewTokens: 6 })).tokens, source: m.info.source }
  } finally {
    m.dispose()
  }
}

async function loadError(source: string, options: Parameters<typeof loadModel>[1] = {}): Promise<Phi2Error> {
  try {
    ;(await loadModel(source, options)).dispose()
  } catch (err) {
    return err as Phi2Error
  }
  throw new Error(`loading ${source} did not fail`)
}

describe('Hub ids', () => {
  it('parses hf:ORG/REPO/PATH, hf:ORG/REPO and bare ORG/REPO, and builds resolve URLs', () => {
    expect(parseHubId('hf:TheBloke/phi-2-GGUF/phi-2.Q4_K_M.gguf', false)).toEqual({ repo: 'TheBloke/phi-2-GGUF', path: 'phi-2.Q4_K_M.gguf', id: 'hf:TheBloke/phi-2-GGUF/phi-2.Q4_K_M.gguf' })
    expect(parseHubId('hf:a/b/sub/dir/x.gguf', false)?.path).toBe('sub/dir/x.gguf')
    expect(parseHubId('microsoft/phi-2', true)).toEqual({ repo: 'microsoft/phi-2', path: null, id: 'microsoft/phi-2' })
    expect(parseHubId('microsoft/phi-2', false)).toBeNull()
    expect(parseHubId('models/phi-2.gguf', true)).toBeNull()
    expect(parseHubId('./a/b', true)).toBeNull()
    expect(() => parseHubId('hf:only-org', true)).toThrow(/hf:ORG\/REPO/)
    expect(() => parseHubId('hf:a/b/../x.gguf', true)).toThrow(/\.\./)
    expect(browserHubUrl('hf:TheBloke/phi-2-GGUF/phi-2.Q4_K_M.gguf', undefined)).toBe('https://huggingface.co/TheBloke/phi-2-GGUF/resolve/main/phi-2.Q4_K_M.gguf')
    expect(browserHubUrl('hf:a/b/x y.gguf', 'refs/pr/1')).toBe('https://huggingface.co/a/b/resolve/refs%2Fpr%2F1/x%20y.gguf')
    expect(browserHubUrl('https://example.com/a/b', undefined)).toBeNull()
    expect(browserHubUrl('models/x.gguf', undefined)).toBeNull()
    // Browsers: only hf: ids; a bare ORG/REPO or an extension-less relative path is a URL.
    expect(browserHubUrl('models/phi', undefined)).toBeNull()
    expect(browserHubUrl('microsoft/phi-2', undefined)).toBeNull()
    try {
      browserHubUrl('hf:microsoft/phi-2', undefined)
      throw new Error('no error')
    } catch (err) {
      expect((err as Phi2Error).code).toBe('E_UNSUPPORTED_FORMAT')
      expect((err as Error).message).toMatch(/safetensors.*GGUF/)
    }
  })
})

describe('loadModel from the Hub (loopback)', () => {
  it('hf:ORG/REPO/FILE.gguf: downloads once into the HF cache layout, with progress, then loads from the cache', async () => {
    const local = await tokensOf(fixture('tiny-q8_0.gguf'))
    const events: LoadProgress[] = []
    const first = await tokensOf(GGUF, { onProgress: (p) => events.push(p) })
    expect(first.tokens).toEqual(local.tokens)
    const root = join(cache, 'models--test-org--tiny-gguf')
    const etag = sha256(fixture('tiny-q8_0.gguf'))
    const pointer = join(root, 'snapshots', COMMIT_MAIN, 'tiny.Q8_0.gguf')
    expect(first.source).toBe(pointer)
    expect(lstatSync(pointer).isSymbolicLink()).toBe(true)
    expect(readlinkSync(pointer)).toBe(`../../blobs/${etag}`)
    expect(sha256(join(root, 'blobs', etag))).toBe(etag)
    expect(readFileSync(join(root, 'refs', 'main'), 'utf8')).toBe(COMMIT_MAIN)
    expect(readdirSync(join(root, 'blobs'))).toEqual([etag])
    const downloads = events.filter((p) => p.phase === 'download')
    expect(downloads.length).toBeGreaterThan(0)
    const last = downloads.at(-1)!
    expect(last).toMatchObject({ file: 'test-org/tiny-gguf/tiny.Q8_0.gguf', loadedBytes: statSync(pointer).size, totalBytes: statSync(pointer).size, progress: 1 })
    // The token never goes to the CDN (another origin); the file was fetched once.
    expect(hub.requests.filter((r) => r.server === 'cdn' && r.method === 'GET')).toHaveLength(1)

    hub.requests.length = 0
    const again = await tokensOf(GGUF)
    expect(again.tokens).toEqual(local.tokens)
    expect(hub.requests.filter((r) => r.method === 'GET')).toHaveLength(0)
    expect(hub.requests.filter((r) => r.method === 'HEAD')).toHaveLength(1)

    hub.requests.length = 0
    process.env.HF_HUB_OFFLINE = '1'
    expect((await tokensOf(GGUF)).tokens).toEqual(local.tokens)
    expect(hub.requests).toHaveLength(0)
  })

  it('revision: a tag and a commit id select other files; refs/<tag> records the commit', async () => {
    const q4 = await tokensOf(fixture('tiny-q4_0.gguf'))
    const byTag = await tokensOf(GGUF, { revision: 'v1' })
    expect(byTag.tokens).toEqual(q4.tokens)
    expect(byTag.source).toBe(join(cache, 'models--test-org--tiny-gguf', 'snapshots', COMMIT_V1, 'tiny.Q8_0.gguf'))
    expect(readFileSync(join(cache, 'models--test-org--tiny-gguf', 'refs', 'v1'), 'utf8')).toBe(COMMIT_V1)
    const byCommit = await tokensOf(GGUF, { revision: COMMIT_V1 })
    expect(byCommit.tokens).toEqual(q4.tokens)
    const err = await loadError(GGUF, { revision: 'no-such-branch' })
    expect(err.code).toBe('E_HUB_NOT_FOUND')
    expect(err.message).toMatch(/no-such-branch/)
  })

  it('ORG/REPO: config.json + safetensors (+ small git files verified by their git sha1) into one snapshot; same output as the local directory', async () => {
    const local = await tokensOf(fixture('tiny'))
    const events: LoadProgress[] = []
    const hubbed = await tokensOf('test-org/tiny', { onProgress: (p) => events.push(p) })
    expect(hubbed.tokens).toEqual(local.tokens)
    const snap = join(cache, 'models--test-org--tiny', 'snapshots', COMMIT_MAIN)
    expect(hubbed.source).toBe(snap)
    expect(readdirSync(snap).sort()).toEqual(['config.json', 'model.safetensors'])
    const config = readFileSync(fixture('tiny/config.json'))
    const gitSha = createHash('sha1').update(`blob ${config.length}\0`).update(config).digest('hex')
    expect(readlinkSync(join(snap, 'config.json'))).toBe(`../../blobs/${gitSha}`)
    expect(readlinkSync(join(snap, 'model.safetensors'))).toBe(`../../blobs/${sha256(fixture('tiny/model.safetensors'))}`)
    const last = events.filter((p) => p.phase === 'download').at(-1)!
    expect(last.totalBytes).toBe(config.length + statSync(fixture('tiny/model.safetensors')).size)
    expect(last.loadedBytes).toBe(last.totalBytes)
    // Offline: the cached snapshot, without a request.
    hub.requests.length = 0
    process.env.HF_HUB_OFFLINE = '1'
    expect((await tokensOf('test-org/tiny')).tokens).toEqual(local.tokens)
    expect(hub.requests).toHaveLength(0)
  })

  it('a connection dropped mid-file: E_NETWORK naming repo and file, .incomplete kept; the next load resumes with a Range request', async () => {
    const id = 'hf:test-org/flaky-gguf/tiny.Q8_0.gguf'
    const err = await loadError(id)
    expect(err.code).toBe('E_NETWORK')
    expect(err.message).toMatch(/test-org\/flaky-gguf\/tiny\.Q8_0\.gguf.*interrupted.*resume/)
    const blobs = join(cache, 'models--test-org--flaky-gguf', 'blobs')
    const partial = readdirSync(blobs).find((f) => f.endsWith('.incomplete'))!
    const size = statSync(join(blobs, partial)).size
    const total = statSync(fixture('tiny-q8_0.gguf')).size
    expect(size).toBeGreaterThan(0)
    expect(size).toBeLessThan(total)
    const ok = await tokensOf(id)
    expect(ok.tokens).toEqual((await tokensOf(fixture('tiny-q8_0.gguf'))).tokens)
    const gets = hub.requests.filter((r) => r.server === 'cdn' && r.method === 'GET')
    expect(gets.map((r) => r.range)).toEqual([null, `bytes=${size}-`])
    expect(readdirSync(blobs)).toEqual([sha256(fixture('tiny-q8_0.gguf'))])
  })

  it('a body that does not match its sha256 etag: E_INTEGRITY, nothing kept', async () => {
    const err = await loadError('hf:test-org/corrupt-gguf/tiny.Q8_0.gguf')
    expect(err.code).toBe('E_INTEGRITY')
    expect(err.message).toMatch(/test-org\/corrupt-gguf\/tiny\.Q8_0\.gguf does not match its etag/)
    const root = join(cache, 'models--test-org--corrupt-gguf')
    expect(existsSync(join(root, 'blobs')) ? readdirSync(join(root, 'blobs')) : []).toEqual([])
    expect(existsSync(join(root, 'snapshots'))).toBe(false)
  })

  it('an etag that is a path (..) is refused, nothing written outside blobs/', async () => {
    const repos = fixtureRepos(join(fixture('tiny'), '..')) as Record<string, { commits: Record<string, Record<string, { etag?: string }>> }>
    repos['test-org/tiny-gguf']!.commits[COMMIT_MAIN]!['tiny.Q8_0.gguf']!.etag = '..'
    const evil = (await startHub(repos)) as Hub
    try {
      process.env.HF_ENDPOINT = evil.endpoint
      const err = await loadError(GGUF)
      expect(err.code).toBe('E_NETWORK')
      expect(err.message).toMatch(/test-org\/tiny-gguf\/tiny\.Q8_0\.gguf.*ETag/)
      const root = join(cache, 'models--test-org--tiny-gguf')
      expect(existsSync(root) ? readdirSync(root) : []).not.toContain('blobs')
      expect(readdirSync(cache).filter((f) => f.endsWith('.incomplete'))).toEqual([])
    } finally {
      await evil.close()
    }
  })

  it('a full disk: E_DISK_FULL naming repository and file', async () => {
    // The partial download is a link to /dev/full, whose writes fail with ENOSPC.
    const blobs = join(cache, 'models--test-org--tiny-gguf', 'blobs')
    mkdirSync(blobs, { recursive: true })
    symlinkSync('/dev/full', join(blobs, `${sha256(fixture('tiny-q8_0.gguf'))}.incomplete`))
    const err = await loadError(GGUF)
    expect(err.code).toBe('E_DISK_FULL')
    expect(err.message).toMatch(/no space left.*test-org\/tiny-gguf\/tiny\.Q8_0\.gguf/)
  })

  it('401 / 403 gated / 404 errors name the repository and file; HF_TOKEN opens a private repository', async () => {
    const auth = await loadError('hf:test-org/private-gguf/tiny.Q8_0.gguf')
    expect(auth.code).toBe('E_HUB_AUTH')
    expect(auth.message).toMatch(/test-org\/private-gguf\/tiny\.Q8_0\.gguf.*HF_TOKEN/)
    process.env.HF_TOKEN = TOKEN
    hub.requests.length = 0
    await tokensOf('hf:test-org/private-gguf/tiny.Q8_0.gguf')
    expect(hub.requests.filter((r) => r.server === 'hub').every((r) => r.auth === `Bearer ${TOKEN}`)).toBe(true)
    expect(hub.requests.filter((r) => r.server === 'cdn').every((r) => r.auth === null)).toBe(true)
    delete process.env.HF_TOKEN
    const gated = await loadError('hf:test-org/gated-gguf/tiny.Q8_0.gguf')
    expect(gated.code).toBe('E_HUB_GATED')
    expect(gated.message).toMatch(/test-org\/gated-gguf.*gated/)
    const noFile = await loadError('hf:test-org/tiny-gguf/missing.gguf')
    expect(noFile.code).toBe('E_HUB_NOT_FOUND')
    expect(noFile.message).toMatch(/"missing\.gguf" of test-org\/tiny-gguf/)
    const noRepo = await loadError('hf:test-org/no-such-repo/x.gguf')
    expect(noRepo.code).toBe('E_HUB_NOT_FOUND')
    expect(noRepo.message).toMatch(/test-org\/no-such-repo/)
    const ggufRepo = await loadError('test-org/tiny-gguf')
    expect(ggufRepo.code).toBe('E_UNSUPPORTED_FORMAT')
    expect(ggufRepo.message).toContain('hf:test-org/tiny-gguf/tiny.Q8_0.gguf')
  })

  it('HF_HUB_OFFLINE=1 with nothing cached: E_NOT_CACHED naming what is missing, no request', async () => {
    process.env.HF_HUB_OFFLINE = '1'
    const err = await loadError(GGUF)
    expect(err.code).toBe('E_NOT_CACHED')
    expect(err.message).toMatch(/HF_HUB_OFFLINE.*refs\/main.*test-org\/tiny-gguf/)
    const repo = await loadError('test-org/tiny')
    expect(repo.code).toBe('E_NOT_CACHED')
    expect(hub.requests).toHaveLength(0)
  })

  it('the hubEndpoint option instead of HF_ENDPOINT; a bad one is an option error', async () => {
    delete process.env.HF_ENDPOINT
    expect((await tokensOf(GGUF, { hubEndpoint: hub.endpoint })).tokens).toEqual((await tokensOf(fixture('tiny-q8_0.gguf'))).tokens)
    const err = await loadError(GGUF, { hubEndpoint: 'ftp://example.com' })
    expect(err.code).toBe('E_INVALID_OPTION')
    expect((err as Phi2Error & { path: string }).path).toBe('hubEndpoint')
  })

  it('a relative redirect (renamed repository) is followed', async () => {
    const r = await tokensOf('hf:old-org/tiny-gguf/tiny.Q8_0.gguf')
    expect(r.tokens).toEqual((await tokensOf(fixture('tiny-q8_0.gguf'))).tokens)
  })

  it('abort mid-download: Phi2AbortError, the partial file kept for a resume, the lock released', async () => {
    const id = 'hf:test-org/slow-gguf/tiny.Q8_0.gguf'
    const ac = new AbortController()
    const err = await loadError(id, {
      signal: ac.signal,
      onProgress: (p) => {
        if (p.phase === 'download' && p.loadedBytes > 1 << 20) ac.abort()
      },
    })
    expect(err.code).toBe('E_ABORTED')
    const blobs = join(cache, 'models--test-org--slow-gguf', 'blobs')
    expect(readdirSync(blobs).some((f) => f.endsWith('.incomplete'))).toBe(true)
    expect(readdirSync(join(cache, '.locks', 'models--test-org--slow-gguf'))).toEqual([])
    await tokensOf(id)
    const ranges = hub.requests.filter((r) => r.server === 'cdn' && r.method === 'GET').map((r) => r.range)
    expect(ranges[0]).toBeNull()
    expect(ranges[1]).toMatch(/^bytes=\d+-$/)
  })

  it('two loads of the same file at once: one download (the lock), both load', async () => {
    const [a, b] = await Promise.all([tokensOf(GGUF), tokensOf(GGUF)])
    expect(a.tokens).toEqual(b.tokens)
    expect(hub.requests.filter((r) => r.server === 'cdn' && r.method === 'GET')).toHaveLength(1)
  })

  it("backend 'wasm': a GGUF id loads; a safetensors repository id is refused before downloading", async () => {
    const m = await loadModel(GGUF, { backend: 'wasm', threads: 1 })
    expect(m.info.runtime.backend).toBe('wasm')
    m.dispose()
    hub.requests.length = 0
    const err = await loadError('test-org/tiny', { backend: 'wasm' })
    expect(err.code).toBe('E_UNSUPPORTED_FORMAT')
    expect(err.message).toMatch(/GGUF/)
    expect(hub.requests).toHaveLength(0)
  })

  it('a local path that looks like ORG/REPO stays a local path', async () => {
    const cwd = process.cwd()
    process.chdir(join(fixture('tiny'), '..', '..'))
    try {
      const r = await tokensOf('gen/tiny')
      expect(realpathSync(r.source)).toBe(realpathSync(fixture('tiny')))
      expect(hub.requests).toHaveLength(0)
    } finally {
      process.chdir(cwd)
    }
  })
})
