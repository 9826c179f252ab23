// The device machine (issue 12's CUDA checks) gets Node.js in a call of its own: the repository's
// tracked files travel with every call, and one call carries at most 64 MiB in all. Node.js
// compressed (test/device/pack.sh: Debian's node v20.20.2, stripped, xz -9) is 21.9 MB, so the
// tracked files must stay below what is left; a large file added to git would otherwise surface
// only in a session that was lent a GPU, as a refused call. Runs where git is (a clone).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const CALL_LIMIT = 64 * 1024 * 1024
// Node.js as pack.sh compresses it, with room for a newer release's growth.
const NODE_XZ = 23_000_000

let listed = null
try {
  listed = execFileSync('git', ['ls-files', '-z'], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
} catch (e) {
  listed = e // not a git checkout (a packed tarball): nothing travels to a device from it
}

test('the tracked files leave room for Node.js in one device call', { skip: listed instanceof Error && `no git checkout here: ${listed.message.split('\n')[0]}` }, () => {
  const files = listed.split('\0').filter(Boolean)
  assert.ok(files.length > 100, `git ls-files listed ${files.length} files`)
  let bytes = 0
  const sizes = []
  for (const f of files) {
    let size = 0
    try {
      size = statSync(join(root, f)).size
    } catch {
      continue // deleted in the working tree: it does not travel
    }
    bytes += size
    sizes.push([size, f])
  }
  sizes.sort((a, b) => b[0] - a[0])
  const largest = sizes.slice(0, 5).map(([s, f]) => `${f} ${(s / 1e6).toFixed(1)} MB`).join(', ')
  const mib = (n) => (n / 1048576).toFixed(2)
  assert.ok(
    bytes + NODE_XZ <= CALL_LIMIT,
    `tracked files ${mib(bytes)} MiB + Node.js ${mib(NODE_XZ)} MiB > 64 MiB a device call carries (largest: ${largest})`,
  )
})
