/**
 * Hugging Face Hub downloads into the standard Hugging Face cache, shared with Python's
 * `huggingface_hub` (and transformers, llama.cpp's `-hf`, ...). Node only.
 *
 * Layout (as `huggingface_hub` writes and reads it):
 * ```text
 * $HF_HUB_CACHE (default $HF_HOME/hub, default ~/.cache/huggingface/hub)
 * ├── models--ORG--REPO/
 * │   ├── blobs/<etag>                       file contents, named by the Hub's etag: the sha256 of an
 * │   │                                      LFS file, the git blob sha1 of a small one
 * │   ├── blobs/<etag>.incomplete            a download in progress (resumed with a Range request)
 * │   ├── snapshots/<commit>/<path>          relative symlinks to ../../blobs/<etag>
 * │   └── refs/<revision>                    the commit a branch / tag resolved to (no newline)
 * └── .locks/models--ORG--REPO/<etag>.lock   Python's lock files (filelock)
 * ```
 *
 * Hub HTTP behaviour used here: `HEAD {endpoint}/{repo}/resolve/{revision}/{path}` answers with
 * `X-Repo-Commit` (the commit the revision resolved to), `ETag` / `X-Linked-Etag` (the blob's id;
 * the linked one wins: for LFS files it is the sha256) and `Content-Length` / `X-Linked-Size`;
 * LFS files answer with a redirect to a CDN (not followed for the metadata; relative redirects,
 * e.g. a renamed repository, are). `GET /api/models/{repo}/revision/{revision}` lists a
 * repository's files (`siblings[].rfilename`) and its commit (`sha`). Errors carry `X-Error-Code`
 * (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`, `GatedRepo`).
 *
 * Environment: `HF_ENDPOINT`, `HF_TOKEN` (else the token file `huggingface-cli login` writes,
 * `$HF_TOKEN_PATH` or `$HF_HOME/token`), `HF_HUB_CACHE` / `HF_HOME`, `HF_HUB_OFFLINE=1` (cache only).
 *
 * Why not `@huggingface/hub` (npm): its `downloadFileToCacheDir` (checked in 2.x) names the
 * snapshot folder after the file's *last* commit instead of the commit the revision points to (so
 * Python does not find it under the revision), never writes `refs/<revision>`, restarts an
 * interrupted download from zero, does not verify the sha256, takes no lock, no AbortSignal and
 * reports no progress, and has no offline mode. Everything it would do here is the few requests
 * below, so this module implements the layout itself.
 *
 * Locking: a download holds `.locks/models--ORG--REPO/<etag>.lock.phi2` (created exclusively,
 * holding the owner's pid and host, refreshed while it runs); another process waits for it, then
 * finds the finished blob. A lock whose owner died (same host) or that was not refreshed for a
 * minute is taken over. Python's own lock is an flock() on `<etag>.lock`, which Node cannot take:
 * a Python and a Node download of the same file at the same moment are not serialised (the etag
 * check still rejects a blob they would corrupt).
 */
import { createHash, type Hash } from 'node:crypto'
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs'
import { copyFile, lstat, mkdir, open, readFile, readlink, rename, rm, stat, symlink, unlink, utimes, writeFile } from 'node:fs/promises'
import { homedir, hostname } from 'node:os'
import { dirname, join, relative } from 'node:path'
import { Phi2AbortError, Phi2ModelLoadError, Phi2OptionsError, abortErrorFrom, type Phi2ErrorCode } from '../errors.js'
import { DEFAULT_HUB_ENDPOINT, type HubRef, hubFileUrl } from '../hub.js'

/** Settings from the environment (read at each call). */
export interface HubEnv {
  endpoint: string
  token: string | null
  cacheDir: string
  offline: boolean
}

const truthy = (v: string | undefined) => v !== undefined && /^(1|on|yes|true)$/i.test(v.trim())

export function hubEnv(env: NodeJS.ProcessEnv = process.env): HubEnv {
  const hfHome = env.HF_HOME || join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'huggingface')
  let token = env.HF_TOKEN || env.HUGGING_FACE_HUB_TOKEN || null
  if (!token) {
    const path = env.HF_TOKEN_PATH || join(hfHome, 'token')
    try {
      token = readFileSync(path, 'utf8').trim() || null
    } catch {
      token = null
    }
  }
  return {
    endpoint: (env.HF_ENDPOINT || DEFAULT_HUB_ENDPOINT).replace(/\/+$/, ''),
    token,
    cacheDir: env.HF_HUB_CACHE || join(hfHome, 'hub'),
    offline: truthy(env.HF_HUB_OFFLINE),
  }
}

/** Whether `HF_HUB_DISABLE_PROGRESS_BARS` asks for no progress bars. */
export function progressBarsDisabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return truthy(env.HF_HUB_DISABLE_PROGRESS_BARS)
}

/** `models--ORG--REPO`. */
export function repoFolderName(repo: string): string {
  return `models--${repo.split('/').join('--')}`
}

const COMMIT = /^[0-9a-f]{40}$/

/** Bytes of a Hub download so far (all files of one load together). */
export interface HubProgress {
  /** The file being downloaded (`ORG/REPO/PATH`). */
  file: string
  loadedBytes: number
  totalBytes: number
}

export interface HubFetchOptions {
  revision?: string
  signal?: AbortSignal
  onProgress?: (p: HubProgress) => void
  env?: HubEnv
}

/** What a Hub id resolved to on disk. */
export interface HubResolved {
  /** A file (a `hf:ORG/REPO/PATH` id) or a snapshot directory (a repository id). */
  path: string
  commit: string
  /** Bytes downloaded by this call (0: everything came from the cache). */
  downloadedBytes: number
}

// ------------------------------------------------------------------------------------ errors

function hubError(code: Phi2ErrorCode, ref: HubRef, message: string, cause?: unknown): Phi2ModelLoadError {
  return new Phi2ModelLoadError(code, ref.id, `Could not load model ${JSON.stringify(ref.id)}: ${message}`, cause !== undefined ? { cause } : undefined)
}

function what(repo: string, file: string | null, revision: string): string {
  return file ? `file ${JSON.stringify(file)} of ${repo} (revision ${revision})` : `repository ${repo} (revision ${revision})`
}

function httpError(ref: HubRef, res: Response, file: string | null, revision: string): Phi2ModelLoadError {
  const code = res.headers.get('x-error-code') ?? ''
  const msg = res.headers.get('x-error-message')
  const detail = msg ? ` (${msg})` : ''
  const on = `${ref.repo}${file ? `/${file}` : ''}`
  if (code === 'GatedRepo' || (res.status === 403 && /gated/i.test(msg ?? ''))) {
    return hubError('E_HUB_GATED', ref, `${ref.repo} is a gated repository: accept its conditions on its Hub page and set HF_TOKEN to a token of that account (HTTP ${res.status} for ${on})${detail}`)
  }
  if (code === 'RepoNotFound') {
    return hubError('E_HUB_NOT_FOUND', ref, `repository ${ref.repo} not found on the Hub (or private: set HF_TOKEN) (HTTP ${res.status} for ${on})${detail}`)
  }
  if (code === 'RevisionNotFound') return hubError('E_HUB_NOT_FOUND', ref, `revision ${JSON.stringify(revision)} not found in ${ref.repo} (HTTP ${res.status})${detail}`)
  if (code === 'EntryNotFound') return hubError('E_HUB_NOT_FOUND', ref, `${what(ref.repo, file, revision)} not found (HTTP ${res.status})${detail}`)
  if (res.status === 401) {
    return hubError('E_HUB_AUTH', ref, `the Hub needs a token for ${on} (HTTP 401): set HF_TOKEN (private repository?)${detail}`)
  }
  if (res.status === 403) return hubError('E_HUB_GATED', ref, `access to ${on} is forbidden (HTTP 403): a gated or private repository; check HF_TOKEN${detail}`)
  if (res.status === 404) return hubError('E_HUB_NOT_FOUND', ref, `${what(ref.repo, file, revision)} not found (HTTP 404)${detail}`)
  return hubError('E_NETWORK', ref, `the Hub answered HTTP ${res.status} ${res.statusText} for ${on}${detail}`)
}

function isAbort(err: unknown, signal: AbortSignal | undefined): boolean {
  return Boolean(signal?.aborted) || (err instanceof Error && err.name === 'AbortError')
}

function networkError(ref: HubRef, err: unknown, doing: string): Phi2ModelLoadError {
  const cause = (err as { cause?: { message?: string; code?: string } }).cause
  const why = cause?.code ?? cause?.message ?? (err as Error).message
  return hubError('E_NETWORK', ref, `${doing}: ${why} (check the connection or HF_ENDPOINT; with HF_HUB_OFFLINE=1 only the cache is used)`, err)
}

function fsError(ref: HubRef, err: unknown, file: string, doing: string): Phi2ModelLoadError {
  const code = (err as NodeJS.ErrnoException).code
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return hubError('E_DISK_FULL', ref, `no space left on the device while ${doing} ${ref.repo}/${file} (free some space or point HF_HUB_CACHE elsewhere)`, err)
  }
  return hubError('E_IO', ref, `${doing} ${ref.repo}/${file}: ${(err as Error).message}`, err)
}

// --------------------------------------------------------------------------------------- HTTP

function headers(env: HubEnv, extra: Record<string, string> = {}): Record<string, string> {
  return {
    'user-agent': 'phi2-js (@x/phi2)',
    'accept-encoding': 'identity',
    ...(env.token ? { authorization: `Bearer ${env.token}` } : {}),
    ...extra,
  }
}

/**
 * `fetch` with redirects followed by hand: requests to the Hub's origin carry the token, others
 * (the CDN) do not; `followCrossOrigin: false` stops at a redirect to another origin.
 */
async function hubFetch(
  url: string,
  init: { method: 'GET' | 'HEAD'; env: HubEnv; headers?: Record<string, string>; signal?: AbortSignal },
  followCrossOrigin: boolean,
): Promise<{ res: Response; url: string }> {
  let current = url
  // The token goes to the Hub's own origin only (HF_ENDPOINT), never to a CDN.
  const origin = new URL(init.env.endpoint).origin
  for (let i = 0; i < 10; i++) {
    const sameOrigin = new URL(current).origin === origin
    const h = sameOrigin ? headers(init.env, init.headers) : { ...headers({ ...init.env, token: null }, init.headers) }
    const res = await fetch(current, { method: init.method, headers: h, redirect: 'manual', signal: init.signal })
    const loc = res.headers.get('location')
    if (res.status >= 300 && res.status < 400 && loc) {
      const next = new URL(loc, current).href
      if (!followCrossOrigin && new URL(next).origin !== new URL(current).origin) return { res, url: next }
      await res.body?.cancel()
      current = next
      continue
    }
    return { res, url: current }
  }
  throw new TypeError(`too many redirects from ${url}`)
}

interface FileMeta {
  commit: string
  etag: string
  size: number
  /** Where to GET the bytes (the CDN location of an LFS file, else the resolve URL). */
  url: string
}

function normalizeEtag(v: string | null): string | null {
  if (!v) return null
  return v.replace(/^W\//, '').replace(/^"|"$/g, '')
}

async function fileMeta(ref: HubRef, file: string, revision: string, env: HubEnv, signal: AbortSignal | undefined): Promise<FileMeta> {
  const url = hubFileUrl(env.endpoint, ref.repo, revision, file)
  let r: { res: Response; url: string }
  try {
    r = await hubFetch(url, { method: 'HEAD', env, signal }, false)
  } catch (err) {
    if (isAbort(err, signal)) throw abortErrorFrom(signal)
    throw networkError(ref, err, `cannot reach the Hub at ${env.endpoint} for ${ref.repo}/${file}`)
  }
  const { res } = r
  if (!(res.ok || (res.status >= 300 && res.status < 400))) throw httpError(ref, res, file, revision)
  const commit = res.headers.get('x-repo-commit')
  const etag = normalizeEtag(res.headers.get('x-linked-etag') ?? res.headers.get('etag'))
  const size = Number(res.headers.get('x-linked-size') ?? res.headers.get('content-length'))
  if (!commit || !COMMIT.test(commit) || !etag || !isSafeEtag(etag) || !Number.isSafeInteger(size) || size < 0) {
    throw hubError(
      'E_NETWORK',
      ref,
      `the server at ${env.endpoint} did not send the Hub's file metadata for ${ref.repo}/${file} (X-Repo-Commit, ETag / X-Linked-Etag, size): is HF_ENDPOINT a Hugging Face Hub?`,
    )
  }
  return { commit, etag, size, url: r.url === url ? url : r.url }
}

/**
 * An etag names a file in blobs/: only a plain name (letters, digits, `.`, `_`, `-`; starting with
 * a letter or digit; no `..`; not one of our own suffixes) can be used, never a path.
 */
function isSafeEtag(etag: string): boolean {
  return etag.length <= 256 && /^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(etag) && !etag.includes('..') && !/\.(incomplete|lock|phi2)$/.test(etag)
}

// -------------------------------------------------------------------------------- cache files

function storage(env: HubEnv, repo: string): string {
  return join(env.cacheDir, repoFolderName(repo))
}

/** The commit `revision` points to in the cache (a commit id is itself), or null. */
function cachedCommit(env: HubEnv, repo: string, revision: string): string | null {
  if (COMMIT.test(revision)) return revision
  try {
    const c = readFileSync(join(storage(env, repo), 'refs', revision), 'utf8').trim()
    return COMMIT.test(c) ? c : null
  } catch {
    return null
  }
}

/** A file of `repo` at `revision` in the cache (its snapshot path, which resolves), or null. */
export function cachedFile(repo: string, revision: string, file: string, env: HubEnv = hubEnv()): string | null {
  const commit = cachedCommit(env, repo, revision)
  if (!commit) return null
  const p = join(storage(env, repo), 'snapshots', commit, file)
  try {
    return statSync(p).isFile() ? p : null
  } catch {
    return null
  }
}

async function writeRef(env: HubEnv, repo: string, revision: string, commit: string): Promise<void> {
  if (revision === commit) return
  const p = join(storage(env, repo), 'refs', revision)
  try {
    if ((await readFile(p, 'utf8')) === commit) return
  } catch {}
  await mkdir(dirname(p), { recursive: true })
  const tmp = `${p}.${process.pid}.tmp`
  await writeFile(tmp, commit)
  await rename(tmp, p)
}

/** `CACHEDIR.TAG` at the cache's root (the cachedir.tag convention; huggingface_hub writes one too). */
async function tagCacheDir(env: HubEnv): Promise<void> {
  const p = join(env.cacheDir, 'CACHEDIR.TAG')
  if (existsSync(p)) return
  await mkdir(env.cacheDir, { recursive: true })
  await writeFile(
    p,
    'Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag created by @x/phi2 (Hugging Face Hub cache).\n# For information about cache directory tags, see https://bford.info/cachedir/\n',
    { flag: 'wx' },
  ).catch(() => {})
}

/** snapshots/<commit>/<file> → ../../blobs/<etag> (relative, as huggingface_hub makes it). */
async function linkSnapshot(env: HubEnv, repo: string, commit: string, file: string, etag: string): Promise<string> {
  const root = storage(env, repo)
  const pointer = join(root, 'snapshots', commit, file)
  const blob = join(root, 'blobs', etag)
  const target = relative(dirname(pointer), blob)
  try {
    if ((await lstat(pointer)).isSymbolicLink() && (await readlink(pointer)) === target) return pointer
    await unlink(pointer)
  } catch {}
  await mkdir(dirname(pointer), { recursive: true })
  try {
    await symlink(target, pointer)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return pointer
    // File systems without symlinks: a copy, as huggingface_hub does there.
    await copyFile(blob, pointer)
  }
  return pointer
}

// ------------------------------------------------------------------------------------ locking

async function acquireLock(lockPath: string, signal: AbortSignal | undefined): Promise<() => Promise<void>> {
  await mkdir(dirname(lockPath), { recursive: true })
  const me = JSON.stringify({ pid: process.pid, host: hostname() })
  for (;;) {
    if (signal?.aborted) throw abortErrorFrom(signal)
    try {
      const fh = await open(lockPath, 'wx')
      await fh.writeFile(me)
      await fh.close()
      const timer = setInterval(() => {
        const now = new Date()
        utimes(lockPath, now, now).catch(() => {})
      }, 10_000)
      timer.unref()
      return async () => {
        clearInterval(timer)
        await rm(lockPath, { force: true })
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    }
    if (await lockIsStale(lockPath)) {
      await rm(lockPath, { force: true })
      continue
    }
    await new Promise((r) => setTimeout(r, 100))
  }
}

async function lockIsStale(lockPath: string): Promise<boolean> {
  try {
    const [text, st] = await Promise.all([readFile(lockPath, 'utf8'), stat(lockPath)])
    if (Date.now() - st.mtimeMs > 60_000) return true
    const owner = JSON.parse(text) as { pid?: number; host?: string }
    if (owner.host === hostname() && typeof owner.pid === 'number' && owner.pid !== process.pid) {
      try {
        process.kill(owner.pid, 0)
        return false
      } catch (err) {
        return (err as NodeJS.ErrnoException).code === 'ESRCH'
      }
    }
    return false
  } catch {
    // Being written right now (empty), or already gone.
    return false
  }
}

// ----------------------------------------------------------------------------------- download

function hasherFor(etag: string, size: number): { hash: Hash; expect: string } | null {
  if (/^[0-9a-f]{64}$/.test(etag)) return { hash: createHash('sha256'), expect: etag }
  if (/^[0-9a-f]{40}$/.test(etag)) {
    // A git blob id: sha1("blob <size>\0" + contents).
    const hash = createHash('sha1')
    hash.update(`blob ${size}\0`)
    return { hash, expect: etag }
  }
  return null
}

/**
 * Downloads `meta` into blobs/<etag> (through blobs/<etag>.incomplete, resumed from its size),
 * verifying size and hash. The caller holds the lock.
 */
async function downloadBlob(
  ref: HubRef,
  file: string,
  meta: FileMeta,
  env: HubEnv,
  signal: AbortSignal | undefined,
  onBytes: (n: number) => void,
): Promise<void> {
  const blob = join(storage(env, ref.repo), 'blobs', meta.etag)
  const partial = `${blob}.incomplete`
  await mkdir(dirname(blob), { recursive: true })
  let start = 0
  try {
    start = (await stat(partial)).size
  } catch {}
  if (start > meta.size) {
    await rm(partial, { force: true })
    start = 0
  }
  const verify = hasherFor(meta.etag, meta.size)
  if (start > 0 && verify) {
    // Re-hashing a large partial file takes a while: the signal is honoured between chunks.
    if (signal?.aborted) throw abortErrorFrom(signal)
    for await (const chunk of createReadStream(partial)) {
      if (signal?.aborted) throw abortErrorFrom(signal)
      verify.hash.update(chunk as Buffer)
    }
  }
  onBytes(start)
  let res: Response | null = null
  if (start < meta.size || meta.size === 0) {
    try {
      const range = start > 0 ? { range: `bytes=${start}-` } : undefined
      res = (await hubFetch(meta.url, { method: 'GET', env, headers: range, signal }, true)).res
    } catch (err) {
      if (isAbort(err, signal)) throw abortErrorFrom(signal)
      throw networkError(ref, err, `cannot download ${ref.repo}/${file}`)
    }
    if (start > 0 && res.status === 200) {
      // The server ignored the Range: start over.
      onBytes(-start)
      start = 0
      if (verify) {
        const fresh = hasherFor(meta.etag, meta.size)!
        verify.hash = fresh.hash
      }
      await rm(partial, { force: true })
    } else if (start > 0 && res.status === 416) {
      await res.body?.cancel()
      res = null
    } else if (!res.ok) {
      await res.body?.cancel()
      throw httpError(ref, res, file, meta.commit)
    } else if (start > 0 && !(res.headers.get('content-range') ?? '').startsWith(`bytes ${start}-`)) {
      await res.body?.cancel()
      throw hubError('E_NETWORK', ref, `the server answered a resumed download of ${ref.repo}/${file} with the wrong range (${res.headers.get('content-range')})`)
    }
  }
  let written = start
  if (res?.body) {
    let fh
    try {
      fh = await open(partial, start > 0 ? 'a' : 'w')
    } catch (err) {
      await res.body.cancel()
      throw fsError(ref, err, file, 'writing')
    }
    // The bytes go to disk in 8 MB pieces at 8 MB-aligned offsets (see `StagedWriter`).
    const out = new StagedWriter(fh, start)
    try {
      const reader = res.body.getReader()
      for (;;) {
        let chunk: ReadableStreamReadResult<Uint8Array>
        try {
          chunk = await reader.read()
        } catch (err) {
          if (isAbort(err, signal)) throw abortErrorFrom(signal)
          throw hubError(
            'E_NETWORK',
            ref,
            `the download of ${ref.repo}/${file} was interrupted after ${written} of ${meta.size} bytes (${(err as Error).message}); load it again to resume`,
            err,
          )
        }
        if (chunk.done) break
        if (written + chunk.value.byteLength > meta.size) {
          await reader.cancel()
          await fh.close()
          await rm(partial, { force: true })
          throw hubError('E_INTEGRITY', ref, `${ref.repo}/${file}: the server sent more than the ${meta.size} bytes the Hub announced (download deleted)`)
        }
        try {
          await out.write(chunk.value)
        } catch (err) {
          await reader.cancel().catch(() => {})
          throw fsError(ref, err, file, 'writing')
        }
        verify?.hash.update(chunk.value)
        written += chunk.value.byteLength
        onBytes(chunk.value.byteLength)
      }
      await out.flush()
    } catch (err) {
      // What arrived before the failure stays in the partial file, for the next resume.
      await out.flush().catch(() => {})
      throw err
    } finally {
      await fh.close().catch(() => {})
    }
  }
  if (written !== meta.size) {
    throw hubError(
      'E_NETWORK',
      ref,
      `the download of ${ref.repo}/${file} ended after ${written} of ${meta.size} bytes; load it again to resume`,
    )
  }
  if (verify) {
    const got = verify.hash.digest('hex')
    if (got !== verify.expect) {
      await rm(partial, { force: true })
      throw hubError(
        'E_INTEGRITY',
        ref,
        `${ref.repo}/${file} does not match its etag: expected ${verify.expect.length === 64 ? 'sha256' : 'git sha1'} ${verify.expect}, got ${got} (the download was deleted; load it again)`,
      )
    }
  }
  try {
    await rename(partial, blob)
  } catch (err) {
    throw fsError(ref, err, file, 'saving')
  }
}

/**
 * Writes a download in 8 MB pieces that start at 8 MB-aligned file offsets (the first piece of a
 * resumed download ends at the next boundary). Linux then caches the new file in 2 MB folios,
 * which the engine's memory map uses as 2 MB pages: decoding streams every weight once per token,
 * and from a page cache of small folios (what network-sized writes leave) it measured ~30%
 * slower on Phi-2-shaped weights.
 */
class StagedWriter {
  static readonly PIECE = 8 << 20
  private readonly buf = Buffer.alloc(StagedWriter.PIECE)
  private staged = 0
  private limit: number

  constructor(
    private readonly fh: import('node:fs/promises').FileHandle,
    offset: number,
  ) {
    this.limit = StagedWriter.PIECE - (offset % StagedWriter.PIECE)
  }

  async write(bytes: Uint8Array): Promise<void> {
    for (let off = 0; off < bytes.byteLength; ) {
      const n = Math.min(this.limit - this.staged, bytes.byteLength - off)
      this.buf.set(bytes.subarray(off, off + n), this.staged)
      this.staged += n
      off += n
      if (this.staged === this.limit) await this.flush()
    }
  }

  /** Writes what is staged (appending: the file is open for writing at its end). */
  async flush(): Promise<void> {
    let off = 0
    while (off < this.staged) off += (await this.fh.write(this.buf, off, this.staged - off)).bytesWritten
    this.staged = 0
    this.limit = StagedWriter.PIECE
  }
}

/** One file into the cache; returns its snapshot path. `onBytes` gets byte deltas. */
async function fetchFile(
  ref: HubRef,
  file: string,
  meta: FileMeta,
  env: HubEnv,
  signal: AbortSignal | undefined,
  onBytes: (n: number) => void,
): Promise<string> {
  const root = storage(env, ref.repo)
  const pointer = join(root, 'snapshots', meta.commit, file)
  const blob = join(root, 'blobs', meta.etag)
  if (existsSync(pointer) && existsSync(blob)) return pointer
  await tagCacheDir(env)
  if (!existsSync(blob)) {
    const lockPath = join(env.cacheDir, '.locks', repoFolderName(ref.repo), `${meta.etag}.lock.phi2`)
    let release: () => Promise<void>
    try {
      release = await acquireLock(lockPath, signal)
    } catch (err) {
      if (err instanceof Phi2AbortError) throw err
      throw fsError(ref, err, file, 'locking')
    }
    try {
      // Another process may have finished it while this one waited.
      if (!existsSync(blob)) await downloadBlob(ref, file, meta, env, signal, onBytes)
    } finally {
      await release()
    }
  }
  try {
    return await linkSnapshot(env, ref.repo, meta.commit, file, meta.etag)
  } catch (err) {
    throw fsError(ref, err, file, 'linking')
  }
}

// -------------------------------------------------------------------------------- public API

/** The files of a model repository that a load needs (top level only). */
export function modelRepoFiles(siblings: readonly string[]): string[] {
  const keep = (f: string) =>
    !f.includes('/') &&
    (/\.safetensors$/.test(f) ||
      /\.safetensors\.index\.json$/.test(f) ||
      ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'special_tokens_map.json'].includes(f))
  return siblings.filter(keep).sort()
}

function offlineMissing(ref: HubRef, revision: string, missing: string, env: HubEnv): Phi2ModelLoadError {
  return hubError(
    'E_NOT_CACHED',
    ref,
    `HF_HUB_OFFLINE is set and ${missing} of ${ref.repo} (revision ${revision}) is not in the Hugging Face cache at ${env.cacheDir}; ` +
      'download it once without HF_HUB_OFFLINE (or with huggingface-cli download)',
  )
}

/** A repository snapshot in the cache with config.json and every weight shard, or why not. */
function cachedRepo(ref: HubRef, revision: string, env: HubEnv): { path: string; commit: string } | { missing: string } {
  const commit = cachedCommit(env, ref.repo, revision)
  if (!commit) return { missing: `refs/${revision} (the revision's commit)` }
  const dir = join(storage(env, ref.repo), 'snapshots', commit)
  const need = ['config.json']
  const indexPath = join(dir, 'model.safetensors.index.json')
  if (existsSync(indexPath)) {
    try {
      const idx = JSON.parse(readFileSync(indexPath, 'utf8')) as { weight_map?: Record<string, string> }
      need.push(...new Set(Object.values(idx.weight_map ?? {})))
    } catch {
      return { missing: 'a readable model.safetensors.index.json' }
    }
  } else need.push('model.safetensors')
  for (const f of need) if (!existsSync(join(dir, f))) return { missing: f }
  return { path: dir, commit }
}

/**
 * Resolves a Hub id to a local path, downloading what is missing into the Hugging Face cache:
 * the file of `hf:ORG/REPO/PATH`, or the snapshot directory of a model repository.
 */
export async function fetchFromHub(ref: HubRef, options: HubFetchOptions = {}): Promise<HubResolved> {
  const env = options.env ?? hubEnv()
  const revision = options.revision ?? 'main'
  const signal = options.signal
  if (revision.length === 0 || revision.split('/').some((s) => s === '' || s === '.' || s === '..')) {
    throw new Phi2OptionsError('revision', `loadModel: revision ${JSON.stringify(revision)} is not a valid branch, tag or commit`)
  }
  if (signal?.aborted) throw abortErrorFrom(signal)

  if (ref.path !== null) {
    const file = ref.path
    const fromCache = () => {
      const p = cachedFile(ref.repo, revision, file, env)
      return p ? { path: p, commit: cachedCommit(env, ref.repo, revision)!, downloadedBytes: 0 } : null
    }
    if (env.offline) {
      const hit = fromCache()
      if (hit) return hit
      throw offlineMissing(ref, revision, cachedCommit(env, ref.repo, revision) ? `file ${JSON.stringify(file)}` : `refs/${revision} (the revision's commit)`, env)
    }
    let meta: FileMeta
    try {
      meta = await fileMeta(ref, file, revision, env, signal)
    } catch (err) {
      // The Hub cannot be reached: the cached copy, as huggingface_hub does.
      const hit = (err as Phi2ModelLoadError).code === 'E_NETWORK' ? fromCache() : null
      if (hit) return hit
      throw err
    }
    let loaded = 0
    const name = `${ref.repo}/${file}`
    const path = await fetchFile(ref, file, meta, env, signal, (n) => {
      loaded += n
      options.onProgress?.({ file: name, loadedBytes: loaded, totalBytes: meta.size })
    })
    await writeRef(env, ref.repo, revision, meta.commit)
    return { path, commit: meta.commit, downloadedBytes: loaded }
  }

  // A whole model repository.
  if (env.offline) {
    const hit = cachedRepo(ref, revision, env)
    if ('path' in hit) return { ...hit, downloadedBytes: 0 }
    throw offlineMissing(ref, revision, hit.missing, env)
  }
  const apiUrl = `${env.endpoint}/api/models/${ref.repo.split('/').map(encodeURIComponent).join('/')}/revision/${encodeURIComponent(revision)}`
  let listing: { sha?: unknown; siblings?: { rfilename?: unknown }[] }
  try {
    const { res } = await hubFetch(apiUrl, { method: 'GET', env, signal, headers: { accept: 'application/json' } }, true)
    if (!res.ok) throw httpError(ref, res, null, revision)
    listing = (await res.json()) as typeof listing
  } catch (err) {
    if (err instanceof Phi2ModelLoadError) {
      if (err.code === 'E_NETWORK') {
        const hit = cachedRepo(ref, revision, env)
        if ('path' in hit) return { ...hit, downloadedBytes: 0 }
      }
      throw err
    }
    if (isAbort(err, signal)) throw abortErrorFrom(signal)
    const hit = cachedRepo(ref, revision, env)
    if ('path' in hit) return { ...hit, downloadedBytes: 0 }
    throw networkError(ref, err, `cannot list ${ref.repo} on the Hub at ${env.endpoint}`)
  }
  const commit = typeof listing.sha === 'string' && COMMIT.test(listing.sha) ? listing.sha : null
  const siblings = (listing.siblings ?? []).map((s) => s.rfilename).filter((s): s is string => typeof s === 'string')
  if (!commit) throw hubError('E_NETWORK', ref, `the Hub's listing of ${ref.repo} has no commit (sha)`)
  const files = modelRepoFiles(siblings)
  if (!files.some((f) => f.endsWith('.safetensors')) || !files.includes('config.json')) {
    const ggufs = siblings.filter((f) => f.endsWith('.gguf'))
    throw hubError(
      'E_UNSUPPORTED_FORMAT',
      ref,
      `${ref.repo} has no config.json + safetensors weights at the top level` +
        (ggufs.length ? `; it has GGUF files: load one as hf:${ref.repo}/${ggufs[0]} (${ggufs.length} in all: ${ggufs.slice(0, 6).join(', ')}${ggufs.length > 6 ? ', ...' : ''})` : ''),
    )
  }
  // Every file's metadata first (pinned to the listing's commit), for the size still to fetch.
  const metas: FileMeta[] = []
  for (const f of files) metas.push(await fileMeta(ref, f, commit, env, signal))
  const root = storage(env, ref.repo)
  const total = metas.reduce((s, m, i) => (existsSync(join(root, 'snapshots', commit, files[i]!)) && existsSync(join(root, 'blobs', m.etag)) ? s : s + m.size), 0)
  let loaded = 0
  for (let i = 0; i < files.length; i++) {
    const meta = { ...metas[i]!, commit }
    const name = `${ref.repo}/${files[i]}`
    await fetchFile(ref, files[i]!, meta, env, signal, (n) => {
      loaded += n
      options.onProgress?.({ file: name, loadedBytes: loaded, totalBytes: total })
    })
  }
  await writeRef(env, ref.repo, revision, commit)
  return { path: join(storage(env, ref.repo), 'snapshots', commit), commit, downloadedBytes: loaded }
}
