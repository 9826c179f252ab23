// The wasm backend's choice between the threaded builds (issue 8): pkg-relaxed (mt plus relaxed
// SIMD) only where the JS engine validates `i32x4.relaxed_dot_i8x16_i7x16_add_s` AND a self-test
// running it returns the exact lanes; mt otherwise. Node 20 does not validate relaxed SIMD; behind
// --experimental-wasm-relaxed-simd its V8 validates it but computes other numbers, so the self-test
// must keep mt there too. Node 22+ validates it and passes: relaxed there (scripts/test.sh runs this
// file on Node 22 too). (Chromium picks relaxed: test/browser/parity.test.mjs.) The package's
// dist/ (the worker, dist/wasm/*) runs here: `npm run build -w @x/phi2` first.
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { loadModel } from '@x/phi2'
import { describe, expect, it } from 'vitest'
import { relaxedSimdCheck } from '../src/wasm/relaxed-simd.js'
import { PKG_DIR, fixture } from './helpers.js'

const MT_BUILT = !readFileSync(join(PKG_DIR, 'dist/wasm/mt/phi2_wasm.js'), 'utf8').includes('__phi2_missing')
const RELAXED_BUILT = !readFileSync(join(PKG_DIR, 'dist/wasm/relaxed/phi2_wasm.js'), 'utf8').includes('__phi2_missing')
const NODE_MAJOR = Number(process.versions.node.split('.')[0])

describe.runIf(MT_BUILT && RELAXED_BUILT)('wasm relaxed-SIMD build choice in this Node', () => {
  it('threads > 1 run relaxed exactly when the self-test passes here, with the same tokens as st', async () => {
    const file = fixture('kq-q6_K.gguf')
    const st = await loadModel(file, { backend: 'wasm', threads: 1 })
    const mt = await loadModel(file, { backend: 'wasm', threads: 2 })
    try {
      expect(st.info.runtime.flavour).toBe('st')
      expect(mt.info.runtime.flavour).toBe(relaxedSimdCheck().ok ? 'relaxed' : 'mt')
      const opts = { maxNewTokens: 8 }
      expect((await mt.generate('Hello', opts)).tokens).toEqual((await st.generate('Hello', opts)).tokens)
    } finally {
      st.dispose()
      mt.dispose()
    }
  })
})

describe.runIf(MT_BUILT && RELAXED_BUILT && NODE_MAJOR >= 22 && (process.arch === 'x64' || process.arch === 'arm64'))('wasm relaxed-SIMD build choice in Node 22+', () => {
  it('relaxed SIMD validates and passes the self-test; threads > 1 run the relaxed build, with the same tokens as st', async () => {
    expect(relaxedSimdCheck()).toMatchObject({ ok: true })
    const file = fixture('tiny-q4_0.gguf')
    const st = await loadModel(file, { backend: 'wasm', threads: 1 })
    const relaxed = await loadModel(file, { backend: 'wasm', threads: 2 })
    try {
      expect(relaxed.info.runtime).toMatchObject({ build: 'wasm-simd-threads', flavour: 'relaxed' })
      expect(relaxed.info.runtime.reason).toMatch(/threads, relaxed SIMD(,|$)/)
      const opts = { maxNewTokens: 8 }
      expect((await relaxed.generate('Hello', opts)).tokens).toEqual((await st.generate('Hello', opts)).tokens)
    } finally {
      st.dispose()
      relaxed.dispose()
    }
  })
})

describe.runIf(MT_BUILT && NODE_MAJOR === 20)('wasm relaxed-SIMD build choice in Node 20', () => {
  it('Node 20 without flags: relaxed SIMD does not validate', () => {
    expect(relaxedSimdCheck()).toEqual({ ok: false, reason: 'relaxed SIMD not supported by this JS engine' })
  })

  it('threads > 1 run the mt flavour, with and without --experimental-wasm-relaxed-simd (self-test fails there)', () => {
    const script = `
      import { loadModel } from '@x/phi2'
      const m = await loadModel(${JSON.stringify(fixture('tiny-q4_0.gguf'))}, { backend: 'wasm', threads: 2 })
      const r = await m.generate('Hello', { maxNewTokens: 4 })
      console.log(JSON.stringify({ tokens: r.tokens, runtime: m.info.runtime }))
      m.dispose()
    `
    const run = (flags: string[]) => {
      const r = spawnSync(process.execPath, [...flags, '--input-type=module', '-e', script], { cwd: PKG_DIR, encoding: 'utf8', timeout: 60_000 })
      expect(r.status, r.stderr).toBe(0)
      return JSON.parse(r.stdout) as { tokens: number[]; runtime: { build: string; flavour: string; reason: string } }
    }
    const plain = run([])
    expect(plain.runtime).toMatchObject({ build: 'wasm-simd-threads', flavour: 'mt' })
    expect(plain.runtime.reason).toMatch(/SIMD128 build \(relaxed SIMD not supported by this JS engine\)/)
    const flagged = run(['--experimental-wasm-relaxed-simd'])
    expect(flagged.runtime).toMatchObject({ build: 'wasm-simd-threads', flavour: 'mt' })
    expect(flagged.runtime.reason).toMatch(/relaxed SIMD validates but computes wrong results here/)
    expect(flagged.tokens).toEqual(plain.tokens)
  })
})
