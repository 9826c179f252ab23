// The wasm backend's worker threads start whatever flags the host Node process was started with
// (issue 8): a Worker inherits process.execArgv by default, and refuses main-thread-only flags
// such as --input-type (`node --input-type=module -e "..."` ended in E_ENGINE_CRASHED).
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { workerExecArgv } from '../src/node/worker-exec-argv.js'
import { PKG_DIR, fixture } from './helpers.js'

const MT_BUILT = !readFileSync(join(PKG_DIR, 'dist/wasm/mt/phi2_wasm.js'), 'utf8').includes('__phi2_missing')

describe('wasm workers and the host execArgv', () => {
  it('keeps only per-thread diagnostics, and never a flag\'s value taken for a flag', () => {
    expect(workerExecArgv(['--input-type=module', '-e', 'code'])).toEqual([])
    expect(workerExecArgv(['--input-type', 'module', '--eval', '--no-warnings'])).toEqual([])
    expect(workerExecArgv(['--inspect=127.0.0.1:0', '--inspect-brk', '--import', 'data:text/javascript,', '-r', 'x.cjs', '--test', '--watch'])).toEqual([])
    expect(workerExecArgv(['--max-old-space-size=4096', '--stack-size', '2000', '--expose-gc'])).toEqual([])
    expect(workerExecArgv(['--enable-source-maps', '--no-warnings', '--unhandled-rejections=strict', '--trace-uncaught', '-p', '1'])).toEqual([
      '--enable-source-maps',
      '--no-warnings',
      '--unhandled-rejections=strict',
      '--trace-uncaught',
    ])
    expect(workerExecArgv(['--unhandled-rejections', 'warn'])).toEqual(['--unhandled-rejections', 'warn'])
  })

  it('loads and generates with backend wasm from `node --input-type=module -e` (and other host flags)', () => {
    const model = fixture('tiny-q8_0.gguf')
    const script = (threads: number) => `
      import { loadModel } from '@x/phi2'
      const m = await loadModel(${JSON.stringify(model)}, { backend: 'wasm', threads: ${threads} })
      const r = await m.generate('Hello', { maxNewTokens: 4 })
      console.log(JSON.stringify({ tokens: r.tokens, build: m.info.runtime.build }))
      m.dispose()
    `
    const cpu = spawnSync(process.execPath, ['--input-type=module', '-e', script(1).replace(", backend: 'wasm'", '')], { cwd: PKG_DIR, encoding: 'utf8', timeout: 60_000 })
    expect(cpu.status, cpu.stderr).toBe(0)
    const expected = JSON.parse(cpu.stdout).tokens
    const hosts: string[][] = [
      ['--input-type=module', '-e'],
      ['--no-warnings', '--input-type', 'module', '--eval'],
      ['--enable-source-maps', '--import', 'data:text/javascript,globalThis.x=1', '--input-type=module', '-e'],
    ]
    for (const threads of MT_BUILT ? [1, 2] : [1]) {
      for (const flags of hosts) {
        const r = spawnSync(process.execPath, [...flags, script(threads)], { cwd: PKG_DIR, encoding: 'utf8', timeout: 60_000 })
        expect(r.stderr, `${flags.join(' ')} threads ${threads}`).not.toMatch(/E_ENGINE_CRASHED/)
        expect(r.status, `${flags.join(' ')} threads ${threads}: ${r.stderr}`).toBe(0)
        const out = JSON.parse(r.stdout)
        expect(out.tokens).toEqual(expected)
        expect(out.build).toBe(threads > 1 ? 'wasm-simd-threads' : 'wasm-simd')
      }
    }
  })
})
