// A loopback stand-in for the Hugging Face Hub's download endpoints, for the Hub tests (and for
// scripts/hub_interop.py, which points Python's huggingface_hub at it). It behaves as the Hub
// does for what clients use:
//   HEAD/GET /{org}/{repo}/resolve/{revision}/{path}
//       X-Repo-Commit: the commit the revision resolves to; small ("git") files: 200, ETag = the
//       git blob sha1; LFS files: 302 to the CDN server (another origin) with X-Linked-Etag = the
//       sha256 and X-Linked-Size; errors with X-Error-Code (RepoNotFound as 401, RevisionNotFound /
//       EntryNotFound as 404, GatedRepo as 403).
//   GET  /api/models/{org}/{repo}[/revision/{revision}]  {id, sha, siblings: [{rfilename}]}
//   GET  /api/models/{org}/{repo}/tree/{revision}         [{type, path, oid, size, lfs?}] (one page)
//   GET  (CDN) /cdn/{org}/{repo}/{sha256}   Range requests (206 + Content-Range), optional faults.
//   A renamed repository answers 307 with a relative Location to its new name.
// Faults per file: `dropOnce` (the first GET sends half of the body, then the connection is cut),
// `corrupt` (the bytes served differ from the etag), `slow` (64 KiB per 5 ms), `barrier: N` (the
// first GET's body waits until N HEAD requests for the file arrived), `etag` (sent instead of the sha256). Repos can require a token or be gated.
//
// Standalone (for scripts/hub_interop.py): node hub-server.mjs FIXTURES_DIR → prints
// {"endpoint": ..., "repos": ...} on stdout, serves until killed.
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

export const COMMIT_MAIN = '0123456789abcdef0123456789abcdef01234567'
export const COMMIT_V1 = 'fedcba9876543210fedcba9876543210fedcba98'
export const TOKEN = 'hf_loopback_secret'

const sha256 = (b) => createHash('sha256').update(b).digest('hex')
const gitSha1 = (b) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex')

/** The repositories served, built from the fixture files (deterministic: fixed commits). */
export function fixtureRepos(fixtures) {
  const gguf = readFileSync(join(fixtures, 'tiny-q8_0.gguf'))
  const gguf4 = readFileSync(join(fixtures, 'tiny-q4_0.gguf'))
  const config = readFileSync(join(fixtures, 'tiny/config.json'))
  const weights = readFileSync(join(fixtures, 'tiny/model.safetensors'))
  const readme = Buffer.from('# tiny\nA random-weight Phi-2-architecture test model.\n')
  const ggufRepo = (extra = {}) => ({
    revisions: { main: COMMIT_MAIN, v1: COMMIT_V1 },
    commits: {
      [COMMIT_MAIN]: { 'tiny.Q8_0.gguf': { data: gguf, lfs: true, ...extra }, 'README.md': { data: readme } },
      [COMMIT_V1]: { 'tiny.Q8_0.gguf': { data: gguf4, lfs: true }, 'README.md': { data: readme } },
    },
  })
  return {
    'test-org/tiny-gguf': ggufRepo(),
    'test-org/tiny': {
      revisions: { main: COMMIT_MAIN },
      commits: {
        [COMMIT_MAIN]: {
          'config.json': { data: config },
          'model.safetensors': { data: weights, lfs: true },
          'README.md': { data: readme },
          'onnx/model.onnx': { data: Buffer.from('not downloaded') },
        },
      },
    },
    'test-org/private-gguf': { ...ggufRepo(), token: TOKEN },
    'test-org/gated-gguf': { ...ggufRepo(), gated: true },
    'test-org/flaky-gguf': ggufRepo({ dropOnce: true }),
    'test-org/corrupt-gguf': ggufRepo({ corrupt: true }),
    'test-org/slow-gguf': ggufRepo({ slow: true }),
    'test-org/barrier-gguf': ggufRepo({ barrier: 2 }),
  }
}

/** Starts the Hub and CDN servers on 127.0.0.1; resolves with { endpoint, requests, close }. */
export async function startHub(repos, renamed = { 'old-org/tiny-gguf': 'test-org/tiny-gguf' }) {
  const requests = []
  const blobs = new Map() // `${repo}/${sha256}` → file
  for (const [id, repo] of Object.entries(repos)) {
    for (const files of Object.values(repo.commits)) {
      for (const f of Object.values(files)) {
        f.sha256 = sha256(f.data)
        f.gitSha1 = gitSha1(f.data)
        if (f.lfs) blobs.set(`${id}/${f.sha256}`, f)
      }
    }
  }
  const cdn = createServer((req, res) => {
    const url = new URL(req.url, 'http://x')
    requests.push({ server: 'cdn', method: req.method, path: url.pathname, range: req.headers.range ?? null, auth: req.headers.authorization ?? null })
    const m = /^\/cdn\/([^/]+\/[^/]+\/[0-9a-f]{64})$/.exec(url.pathname)
    const f = m && blobs.get(m[1])
    if (!f) {
      res.writeHead(404).end()
      return
    }
    let body = f.corrupt ? Buffer.from(f.data.map((b, i) => (i === 1000 ? b ^ 0xff : b))) : f.data
    let status = 200
    const headers = { 'content-type': 'application/octet-stream', 'accept-ranges': 'bytes' }
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '')
    if (range) {
      const start = Number(range[1])
      if (start >= body.length) {
        res.writeHead(416, { 'content-range': `bytes */${body.length}` }).end()
        return
      }
      headers['content-range'] = `bytes ${start}-${body.length - 1}/${body.length}`
      body = body.subarray(start)
      status = 206
    }
    headers['content-length'] = String(body.length)
    res.writeHead(status, headers)
    if (req.method === 'HEAD') {
      res.end()
      return
    }
    if (f.barrier && (f.heads ?? 0) < f.barrier && !f.waited) {
      // Held until `barrier` clients have asked for the file's metadata (then served normally):
      // two concurrent downloaders are certain to overlap.
      const t0 = Date.now()
      const wait = () => {
        if ((f.heads ?? 0) >= f.barrier || Date.now() - t0 > 20_000) {
          f.waited = true
          res.end(body)
        } else setTimeout(wait, 10)
      }
      wait()
      return
    }
    if (f.dropOnce && !f.dropped) {
      f.dropped = true
      res.write(body.subarray(0, body.length >> 1), () => setTimeout(() => res.socket.destroy(), 20))
      return
    }
    if (f.slow) {
      // 64 KiB every 5 ms: slow enough to abort in the middle.
      let off = 0
      const step = () => {
        if (res.destroyed) return
        if (off >= body.length) return void res.end()
        res.write(body.subarray(off, off + 65536))
        off += 65536
        setTimeout(step, 5)
      }
      step()
      return
    }
    res.end(body)
  })
  await new Promise((r) => cdn.listen(0, '127.0.0.1', r))
  const cdnBase = `http://127.0.0.1:${cdn.address().port}`

  const hub = createServer((req, res) => {
    const url = new URL(req.url, 'http://x')
    const path = decodeURIComponent(url.pathname)
    requests.push({ server: 'hub', method: req.method, path, range: req.headers.range ?? null, auth: req.headers.authorization ?? null })
    const fail = (status, code, message) => {
      res.writeHead(status, { 'x-error-code': code, 'x-error-message': message, 'content-type': 'application/json' })
      res.end(req.method === 'HEAD' ? undefined : JSON.stringify({ error: message }))
    }
    const tree = /^\/api\/models\/([^/]+\/[^/]+)\/tree\/([^/]+)$/.exec(path)
    let m = tree ?? /^\/api\/models\/([^/]+\/[^/]+)(?:\/revision\/(.+))?$/.exec(path)
    const resolveM = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path)
    const repoId = m ? m[1] : resolveM ? resolveM[1] : null
    if (!repoId) return fail(404, 'EntryNotFound', 'not found')
    if (renamed[repoId] && resolveM) {
      res.writeHead(307, { location: `/${renamed[repoId]}/resolve/${resolveM[2]}/${resolveM[3]}` }).end()
      return
    }
    const repo = repos[repoId]
    const authorized = repo && (!repo.token || req.headers.authorization === `Bearer ${repo.token}`)
    if (!repo || (repo.token && req.headers.authorization && !authorized)) return fail(401, 'RepoNotFound', 'Repository not found')
    if (!authorized) {
      res.writeHead(401, { 'x-error-message': 'Invalid credentials in Authorization header' }).end()
      return
    }
    if (repo.gated) return fail(403, 'GatedRepo', `Access to model ${repoId} is restricted and you are not in the authorized list.`)
    const revision = m ? (m[2] ?? 'main') : resolveM[2]
    const commit = repo.commits[revision] ? revision : repo.revisions[revision]
    if (!commit) return fail(404, 'RevisionNotFound', `Invalid rev id: ${revision}`)
    const files = repo.commits[commit]
    if (tree) {
      // The recursive file tree (huggingface_hub's snapshot_download lists files with it).
      const entries = []
      const dirs = new Set()
      for (const [p, f] of Object.entries(files)) {
        const parts = p.split('/')
        for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'))
        entries.push({ type: 'file', oid: f.gitSha1, size: f.data.length, path: p, ...(f.lfs ? { lfs: { oid: f.sha256, size: f.data.length, pointerSize: 134 } } : {}) })
      }
      for (const d of dirs) entries.push({ type: 'directory', oid: '0'.repeat(40), size: 0, path: d })
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify(entries))
      return
    }
    if (m) {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ id: repoId, sha: commit, siblings: Object.keys(files).map((rfilename) => ({ rfilename })) }))
      return
    }
    const f = files[resolveM[3]]
    if (!f) return fail(404, 'EntryNotFound', `${resolveM[3]} does not exist on "${revision}"`)
    if (req.method === 'HEAD') f.heads = (f.heads ?? 0) + 1
    const common = { 'x-repo-commit': commit, 'accept-ranges': 'bytes' }
    if (f.lfs) {
      res.writeHead(302, {
        ...common,
        location: `${cdnBase}/cdn/${repoId}/${f.sha256}`,
        'x-linked-etag': `"${f.etag ?? f.sha256}"`,
        'x-linked-size': String(f.data.length),
        etag: `"${f.gitSha1}"`,
        'content-length': '0',
      })
      res.end()
      return
    }
    res.writeHead(200, { ...common, etag: `"${f.gitSha1}"`, 'content-length': String(f.data.length), 'content-type': 'application/octet-stream' })
    res.end(req.method === 'HEAD' ? undefined : f.data)
  })
  await new Promise((r) => hub.listen(0, '127.0.0.1', r))
  const endpoint = `http://127.0.0.1:${hub.address().port}`
  return {
    endpoint,
    requests,
    close: () =>
      Promise.all([
        new Promise((r) => {
          hub.closeAllConnections?.()
          hub.close(r)
        }),
        new Promise((r) => {
          cdn.closeAllConnections?.()
          cdn.close(r)
        }),
      ]),
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const fixtures = process.argv[2]
  if (!fixtures) {
    process.stderr.write('usage: node hub-server.mjs FIXTURES_DIR\n')
    process.exit(2)
  }
  const repos = fixtureRepos(fixtures)
  const hub = await startHub(repos)
  process.stdout.write(`${JSON.stringify({ endpoint: hub.endpoint, commit: COMMIT_MAIN, repos: Object.keys(repos) })}\n`)
}
