// The public type declarations as a strict TypeScript user compiles against them: runs
// `tsc --noEmit -p test/types` over test/types/expectations.ts (which imports the built package
// by name; its `@ts-expect-error` lines must be errors and the rest must type-check).
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { PKG_DIR } from './helpers.js'

const tsc = createRequire(join(PKG_DIR, 'package.json')).resolve('typescript/bin/tsc')

describe('type declarations', () => {
  it('meet test/types/expectations.ts (using / await using, info.format, discriminated GenerateResult and LoadProgress)', () => {
    const r = spawnSync(process.execPath, [tsc, '--noEmit', '-p', join(PKG_DIR, 'test/types')], { cwd: PKG_DIR, encoding: 'utf8', timeout: 120_000 })
    expect(`${r.stdout}${r.stderr}`.trim()).toBe('')
    expect(r.status).toBe(0)
  })
})
