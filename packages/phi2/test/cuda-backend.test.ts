// The CUDA backend's loader on a machine without a usable GPU: `backend: 'cuda'` fails with a typed
// error naming what is missing, `'auto'` falls back to the CPU addon and says why in
// `info.runtime.reason`. Each case runs the CLI in its own process (the loader decides once per
// process), with the environment that makes the case: CUDA switched off, an addon path that does
// not exist, the CPU addon passed as the CUDA one, and a CUDA addon whose libcuda.so.1 is missing
// (an addon linked against a stub driver library that the loader cannot find at run time, as the
// real CUDA addon is on a machine without the NVIDIA driver).
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CLI, fixture } from './helpers.js'

const model = fixture('tiny-q8_0.gguf')
const tmp = mkdtempSync(join(tmpdir(), 'phi2-cuda-'))
afterAll(() => rmSync(tmp, { recursive: true, force: true }))

/** `phi2 info --json` with `backend` under `env` (on top of this process's, minus the CUDA switches). */
function info(backend: 'cuda' | 'auto', env: Record<string, string>) {
  const base = { ...process.env }
  delete base.PHI2_CUDA
  delete base.PHI2_CUDA_ADDON
  const r = spawnSync(process.execPath, [CLI, 'info', '--json', '--model', model, '--backend', backend], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...base, ...env },
  })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

/** Both answers for one environment: 'cuda' refuses with `reason`, 'auto' runs on the CPU saying it. */
function expectFallback(env: Record<string, string>, reason: RegExp) {
  const cuda = info('cuda', env)
  expect(cuda.code, cuda.stdout).toBe(1)
  expect(cuda.stderr).toMatch(/E_BACKEND_UNAVAILABLE/)
  expect(cuda.stderr).toMatch(reason)
  const auto = info('auto', env)
  expect(auto.code, auto.stderr).toBe(0)
  const out = JSON.parse(auto.stdout)
  expect(out).toMatchObject({ backend: 'cpu', runtime: { backend: 'cpu', build: 'native', device: 'cpu' } })
  expect(out.runtime.reason).toMatch(/^CUDA not used: /)
  expect(out.runtime.reason).toMatch(reason)
  expect(out.runtime.reason).toMatch(/native addon, \d+ threads/)
}

/** A `.node` file that needs libcuda.so.1, built against a stub placed where the loader will not look. */
let fakeCudaAddon = ''
beforeAll(() => {
  const stubDir = join(tmp, 'stub')
  mkdirSync(stubDir)
  writeFileSync(join(stubDir, 'cuda.c'), 'int cuInit(unsigned flags) { return flags ? 100 : 0; }\n')
  writeFileSync(join(tmp, 'addon.c'), 'int cuInit(unsigned flags);\nint phi2_fake_addon_init(void) { return cuInit(0); }\n')
  const cc = (args: string[]) => {
    const r = spawnSync('cc', args, { encoding: 'utf8' })
    if (r.status !== 0) throw new Error(`cc ${args.join(' ')} failed: ${r.stderr || r.error}`)
  }
  cc(['-shared', '-fPIC', '-Wl,-soname,libcuda.so.1', '-o', join(stubDir, 'libcuda.so'), join(stubDir, 'cuda.c')])
  fakeCudaAddon = join(tmp, 'phi2.linux-x64-gnu.node')
  cc(['-shared', '-fPIC', '-o', fakeCudaAddon, join(tmp, 'addon.c'), `-L${stubDir}`, '-Wl,--no-as-needed', '-lcuda'])
})

describe("backend 'cuda' without a usable GPU", () => {
  it('PHI2_CUDA=0 switches it off', () => {
    expectFallback({ PHI2_CUDA: '0' }, /CUDA is switched off \(PHI2_CUDA=0\)/)
  })

  it('an addon that is not there', () => {
    expectFallback({ PHI2_CUDA_ADDON: join(tmp, 'missing.node') }, /CUDA addon could not be loaded: .*missing\.node/)
  })

  it('the CPU addon passed as the CUDA one', () => {
    const require = createRequire(import.meta.url)
    const cpuAddon = join(dirname(require.resolve('@x/phi2-native-linux-x64-gnu/package.json')), 'phi2.linux-x64-gnu.node')
    expect(existsSync(cpuAddon)).toBe(true)
    expectFallback({ PHI2_CUDA_ADDON: cpuAddon }, /built without CUDA/)
  })

  it('a CUDA addon on a machine without the NVIDIA driver library', () => {
    expectFallback({ PHI2_CUDA_ADDON: fakeCudaAddon }, /CUDA addon could not be loaded: .*libcuda\.so\.1: cannot open shared object file/)
  })

  it('no driver, no addon: the default on this machine', () => {
    const driver = ['/dev/nvidiactl', '/dev/nvidia0', '/proc/driver/nvidia/version'].some((p) => existsSync(p))
    // On a machine with an NVIDIA driver this case is the loader trying the installed addon, which
    // the device checks (test/device) cover; here the answer is that there is no driver.
    if (!driver) expectFallback({}, /no NVIDIA driver found/)
  })
})
