// Cache interoperability with Python's huggingface_hub, from the committed output of
// scripts/hub_interop.py (run by hand in a venv with huggingface_hub; it downloads the same ids
// from the same loopback Hub with Python and with @x/phi2 and checks each side uses the other's
// files). Here, without Python: what @x/phi2 writes must be exactly the layout huggingface_hub
// wrote, and a cache built in that layout (from its committed entries) must load offline.
import { createHash } from 'node:crypto'
import { lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, relative } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadModel } from '@x/phi2'
import { REPO_ROOT, fixture } from './helpers.js'
// @ts-expect-error: a plain ES module without types
import { fixtureRepos, startHub } from './hub-server.mjs'

interface Interop {
  ok: boolean
  huggingface_hub: string
  python_layout: string[]
  node_layout: string[]
  python_scan_cache_dir_on_node_cache: { repo_id: string; revisions: { commit: string; refs: string[]; files: string[] }[] }[]
}
const committed = JSON.parse(readFileSync(join(REPO_ROOT, 'scripts/hub_interop.out.json'), 'utf8')) as Interop
const IDS: { source: string; revision?: string }[] = [
  { source: 'hf:test-org/tiny-gguf/tiny.Q8_0.gguf' },
  { source: 'hf:test-org/tiny-gguf/tiny.Q8_0.gguf', revision: 'v1' },
  { source: 'test-org/tiny' },
]

function blobKind(path: string, name: string): string {
  const data = readFileSync(path)
  if (name.length === 64 && createHash('sha256').update(data).digest('hex') === name) return 'sha256'
  if (name.length === 40 && createHash('sha1').update(`blob ${data.length}\0`).update(data).digest('hex') === name) return 'git-sha1'
  return 'unverified'
}

/** The normalisation of scripts/hub_interop.py's layout(). */
function layout(cache: string): string[] {
  const out: string[] = []
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name)
      const rel = relative(cache, p)
      const parts = rel.split('/')
      if (parts[0] === '.locks' || (parts.length >= 3 && parts[1] === 'trees')) continue
      if (e.isDirectory()) walk(p)
      else if (e.isSymbolicLink()) {
        const target = readlinkSync(p)
        const name = target.split('/').pop()!
        out.push(`L ${rel} -> ${target.slice(0, target.lastIndexOf('/'))}/<${blobKind(realpathSync(p), name)}>`)
      } else if (parts.length >= 3 && parts[1] === 'blobs') out.push(`B ${parts[0]}/blobs/<${blobKind(p, parts[2]!)}>`)
      else if (rel === 'CACHEDIR.TAG') out.push(`F ${rel} = ${readFileSync(p, 'utf8').split('\n')[0]!.trim()}`)
      else out.push(`F ${rel} = ${readFileSync(p, 'utf8')}`)
    }
  }
  walk(cache)
  // Python's sorted() order: by code point.
  return out.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
}

let hub: { endpoint: string; requests: unknown[]; close(): Promise<void> }
const tmp = mkdtempSync(join(tmpdir(), 'phi2-interop-'))
const saved = { ...process.env }
beforeAll(async () => {
  hub = await startHub(fixtureRepos(join(fixture('tiny'), '..')))
  process.env.HF_ENDPOINT = hub.endpoint
  process.env.HF_HOME = join(tmp, 'home')
  delete process.env.HF_TOKEN
})
afterAll(async () => {
  await hub.close()
  for (const k of ['HF_ENDPOINT', 'HF_HUB_CACHE', 'HF_HUB_OFFLINE', 'HF_HOME']) {
    if (saved[k] === undefined) delete process.env[k]
    else process.env[k] = saved[k]
  }
  rmSync(tmp, { recursive: true, force: true })
})

async function tokens(source: string, revision?: string): Promise<number[]> {
  const m = await loadModel(source, revision ? { revision } : {})
  try {
    return (await m.generate('Hello', { maxNewTokens: 4 })).tokens
  } finally {
    m.dispose()
  }
}

describe('Hugging Face cache interoperability (scripts/hub_interop.py output)', () => {
  it('fixture check: the committed scripts/hub_interop.py run reports success (identical layouts, each side used the other\'s files)', () => {
    // This only checks the committed file is a passing run; the next test compares it with what
    // @x/phi2 writes now.
    expect(committed.ok).toBe(true)
    expect(committed.node_layout).toEqual(committed.python_layout)
    expect(committed.python_scan_cache_dir_on_node_cache.map((r) => r.repo_id)).toEqual(['test-org/tiny', 'test-org/tiny-gguf'])
  })

  it("@x/phi2 writes now exactly what the committed run saw (huggingface_hub's layout, and what its scan_cache_dir found)", async () => {
    const cache = join(tmp, 'ours')
    process.env.HF_HUB_CACHE = cache
    delete process.env.HF_HUB_OFFLINE
    for (const { source, revision } of IDS) await tokens(source, revision)
    const live = layout(cache)
    // Blobs by sha256 / git sha1, relative snapshot links, refs: the layout Python wrote ...
    expect(live).toEqual(committed.python_layout)
    // ... and the layout of the @x/phi2 cache that Python's scan_cache_dir read in that run.
    expect(live).toEqual(committed.node_layout)
    // Every revision, ref and file that scan found is in the cache written now.
    for (const repo of committed.python_scan_cache_dir_on_node_cache) {
      const folder = `models--${repo.repo_id.replace('/', '--')}`
      for (const rev of repo.revisions) {
        for (const f of rev.files) expect(live.some((l) => l.startsWith(`L ${folder}/snapshots/${rev.commit}/${f} -> `))).toBe(true)
        for (const r of rev.refs) expect(live).toContain(`F ${folder}/refs/${r} = ${rev.commit}`)
      }
    }
  })

  it("a cache in huggingface_hub's layout (rebuilt from its committed entries) loads offline, without a request", async () => {
    const cache = join(tmp, 'python-layout')
    const repos = fixtureRepos(join(fixture('tiny'), '..')) as Record<string, { commits: Record<string, Record<string, { data: Buffer }>> }>
    for (const line of committed.python_layout) {
      const link = /^L (models--([^/]+)--([^/]+))\/snapshots\/([0-9a-f]{40})\/(.+) -> (.+)\/<(sha256|git-sha1)>$/.exec(line)
      const ref = /^F (models--[^/]+--[^/]+\/refs\/.+) = ([0-9a-f]{40})$/.exec(line)
      if (link) {
        const [, folder, org, name, commit, file, targetDir, kind] = link
        const data = repos[`${org}/${name}`]!.commits[commit!]![file!]!.data
        const etag = kind === 'sha256' ? createHash('sha256').update(data).digest('hex') : createHash('sha1').update(`blob ${data.length}\0`).update(data).digest('hex')
        const pointer = join(cache, folder!, 'snapshots', commit!, file!)
        mkdirSync(dirname(pointer), { recursive: true })
        mkdirSync(join(cache, folder!, 'blobs'), { recursive: true })
        writeFileSync(join(cache, folder!, 'blobs', etag), data)
        symlinkSync(`${targetDir}/${etag}`, pointer)
        expect(lstatSync(pointer).isSymbolicLink()).toBe(true)
      } else if (ref) {
        mkdirSync(dirname(join(cache, ref[1]!)), { recursive: true })
        writeFileSync(join(cache, ref[1]!), ref[2]!)
      }
    }
    expect(layout(cache)).toEqual(committed.python_layout.filter((l) => !l.startsWith('F CACHEDIR.TAG')))
    process.env.HF_HUB_CACHE = cache
    process.env.HF_HUB_OFFLINE = '1'
    hub.requests.length = 0
    expect(await tokens(IDS[0]!.source)).toEqual(await tokens(fixture('tiny-q8_0.gguf')))
    expect(await tokens(IDS[1]!.source, 'v1')).toEqual(await tokens(fixture('tiny-q4_0.gguf')))
    expect(await tokens('test-org/tiny')).toEqual(await tokens(fixture('tiny')))
    expect(hub.requests).toHaveLength(0)
  })
})
