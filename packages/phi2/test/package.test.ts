// The installed-package experience: `npm pack` @x/phi2 + @x/phi2-native + the platform package,
// `npm install` the tarballs into an empty project (offline: zod and @huggingface/tokenizers come
// from the npm cache), then use it through `import`, `require`, the `phi2` bin, and tsc.
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { REPO_ROOT } from './helpers.js'

const tmp = mkdtempSync(join(tmpdir(), 'phi2-pkg-'))
const project = join(tmp, 'project')

/** The environment without npm's per-run variables (workspace filters, lifecycle info). */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) {
    const key = k.toLowerCase()
    if (key.startsWith('npm_') && !['npm_config_cache', 'npm_config_registry', 'npm_config_userconfig'].includes(key)) continue
    env[k] = v
  }
  return { ...env, NODE_LLAMA_CPP_SKIP_DOWNLOAD: 'true' }
}

function run(cmd: string, args: string[], cwd: string) {
  const r = spawnSync(cmd, args, { cwd, env: cleanEnv(), encoding: 'utf8', timeout: 120_000 })
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}):\n${r.stdout}\n${r.stderr}`)
  return r.stdout
}

beforeAll(() => {
  const tarballs = join(tmp, 'tarballs')
  mkdirSync(tarballs)
  mkdirSync(project)
  run('npm', ['pack', '--silent', '-w', '@x/phi2', '-w', '@x/phi2-native', '-w', '@x/phi2-native-linux-x64-gnu', '--pack-destination', tarballs], REPO_ROOT)
  const files = readdirSync(tarballs).map((f) => join(tarballs, f))
  expect(files).toHaveLength(3)
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'phi2-user', version: '1.0.0', private: true }))
  const install = ['install', '--no-audit', '--no-fund', '--loglevel=error', ...files]
  try {
    run('npm', [...install, '--offline'], project)
  } catch {
    run('npm', [...install, '--prefer-offline'], project)
  }
}, 180_000)

afterAll(() => rmSync(tmp, { recursive: true, force: true }))

const EXPECTED_TOKENS = [11, 198, 50280, 392, 262] // greedy after "Hello" on the default model (",\n        and the")

describe('installed package', () => {
  it('ships dist (Node and browser entries, workers, wasm builds), the bundled tokenizer and the default model', () => {
    const pkg = join(project, 'node_modules/@x/phi2')
    expect(readdirSync(join(pkg, 'dist')).sort()).toEqual(
      [
        'browser.d.ts',
        'browser.js',
        'cli.js',
        'index.cjs',
        'index.d.cts',
        'index.d.ts',
        'index.js',
        'phi2-tokenizer.json',
        'wasm',
        'wasm-worker.js',
        'wasm-worker.node.js',
      ].sort(),
    )
    for (const flavour of ['st', 'mt', 'relaxed']) {
      const files = readdirSync(join(pkg, 'dist/wasm', flavour))
      expect(files).toContain('phi2_wasm.js')
      expect(files).toContain('phi2_wasm_bg.wasm')
    }
    expect(readdirSync(join(pkg, 'models'))).toEqual(['default.gguf'])
  })

  it('resolves the "browser" export condition to dist/browser.js, with the browser API', async () => {
    const pkg = join(project, 'node_modules/@x/phi2')
    const manifest = JSON.parse(readFileSync(join(pkg, 'package.json'), 'utf8'))
    expect(Object.keys(manifest.exports['.'])[0]).toBe('browser')
    expect(manifest.exports['.'].browser).toEqual({ types: './dist/browser.d.ts', default: './dist/browser.js' })
    // Resolve the way a bundler does (conditions browser + import), then check the module's API.
    const out = run(
      process.execPath,
      [
        '--conditions=browser',
        '--input-type=module',
        '-e',
        `const m = await import('@x/phi2'); console.log(JSON.stringify({ keys: Object.keys(m).sort(), url: m.defaultModelUrl(), resolved: import.meta.resolve('@x/phi2') }))`,
      ],
      project,
    )
    const { keys, url, resolved } = JSON.parse(out) as { keys: string[]; url: string; resolved: string }
    expect(resolved.endsWith('/node_modules/@x/phi2/dist/browser.js')).toBe(true)
    for (const k of ['loadModel', 'defaultModelUrl', 'Phi2Model', 'Phi2Chat', 'GenerateOptionsSchema', 'LoadOptionsSchema', 'formatQA', 'Phi2Tokenizer', 'Phi2Error', 'Phi2ModelLoadError', 'Phi2EngineCrashedError']) {
      expect(keys).toContain(k)
    }
    for (const k of ['defaultModelPath', 'hasDefaultModel', 'bundledTokenizer']) expect(keys).not.toContain(k)
    expect(url.endsWith('/node_modules/@x/phi2/models/default.gguf')).toBe(true)
    const browserJs = readFileSync(join(pkg, 'dist/browser.js'), 'utf8')
    expect(browserJs).toContain(`new Worker(new URL("./wasm-worker.js", import.meta.url), { type: "module" })`)
    expect(browserJs).not.toMatch(/["']node:/)
    // In Node (no browser condition), backend 'cpu' is refused by the browser entry with a typed error.
    const refused = run(
      process.execPath,
      [
        '--conditions=browser',
        '--input-type=module',
        '-e',
        `const m = await import('@x/phi2'); try { await m.loadModel('http://127.0.0.1:9/x.gguf', { backend: 'cpu' }) } catch (e) { console.log(e.code) }`,
      ],
      project,
    )
    expect(refused.trim()).toBe('E_BACKEND_UNAVAILABLE')
  })

  it('works through import (ESM)', () => {
    writeFileSync(
      join(project, 'esm.mjs'),
      `import { loadModel, defaultModelPath } from '@x/phi2'
const m = await loadModel(defaultModelPath())
const r = await m.generate('Hello', { maxNewTokens: 5 })
console.log(JSON.stringify({ tokens: r.tokens, ids: m.tokenize('Hello World'), tokenizer: m.info.tokenizer }))
m.dispose()
`,
    )
    const out = JSON.parse(run(process.execPath, ['esm.mjs'], project))
    expect(out).toEqual({ tokens: EXPECTED_TOKENS, ids: [15496, 2159], tokenizer: 'gguf' })
  })

  it('runs backend wasm from the installed package (worker script and engine shipped in dist/)', () => {
    writeFileSync(
      join(project, 'wasm.mjs'),
      `import { loadModel, defaultModelPath } from '@x/phi2'
const m = await loadModel(defaultModelPath(), { backend: 'wasm', threads: 1 })
const r = await m.generate('Hello', { maxNewTokens: 5 })
console.log(JSON.stringify({ tokens: r.tokens, runtime: m.info.runtime }))
m.dispose()
`,
    )
    const out = JSON.parse(run(process.execPath, ['wasm.mjs'], project))
    expect(out).toMatchObject({ tokens: EXPECTED_TOKENS, runtime: { backend: 'wasm', build: 'wasm-simd', threads: 1 } })
  })

  it('works through require (CJS), including the bundled tokenizer', () => {
    writeFileSync(
      join(project, 'cjs.cjs'),
      `const { loadModel, defaultModelPath, bundledTokenizer } = require('@x/phi2')
loadModel(defaultModelPath()).then(async (m) => {
  const r = await m.generate('Hello', { maxNewTokens: 5 })
  console.log(JSON.stringify({ tokens: r.tokens, bundled: bundledTokenizer().encode('\\n    the') }))
  m.dispose()
})
`,
    )
    const out = JSON.parse(run(process.execPath, ['cjs.cjs'], project))
    expect(out).toEqual({ tokens: EXPECTED_TOKENS, bundled: [198, 50284, 1169] })
  })

  it('works through the phi2 bin (npx phi2 generate --json)', () => {
    const out = JSON.parse(run('npx', ['--offline', 'phi2', 'generate', '--json', '--quiet', '--max-new-tokens', '5', 'Hello'], project))
    expect(out).toMatchObject({ tokens: EXPECTED_TOKENS, finishReason: 'length', usage: { promptTokens: 1, completionTokens: 5 } })
  })

  it('type-checks user code against the shipped .d.ts (ESM and CJS)', () => {
    writeFileSync(
      join(project, 'check.mts'),
      `import { loadModel, Phi2Error, Phi2OptionsError, formatQA, type GenerateOptions, type GenerateResult, type GenerateChunk } from '@x/phi2'
const opts: GenerateOptions = { maxNewTokens: 8, doSample: true, temperature: 0.7, topK: 40, topP: 0.9, stop: ['\\n'], logitBias: { 50256: -Infinity }, seed: 1, format: 'qa' }
export async function main(): Promise<void> {
  await using model = await loadModel('x.gguf', { threads: 2, backend: 'auto', onProgress: (p) => console.log(p.phase, p.progress) })
  const r: GenerateResult = await model.generate(formatQA('Why?').prompt, opts)
  const reason: 'stop' | 'length' | 'eos' | 'abort' = r.finishReason
  const stream = model.stream([1, 2, 3], { signal: AbortSignal.timeout(1000) })
  for await (const c of stream) { const chunk: GenerateChunk = c; console.log(chunk.text, chunk.tokens.length, chunk.finishReason) }
  const lp: Float32Array = await model.logprobs([1, 2])
  const reply = await model.createChat({ userName: 'A', botName: 'B' }).send('hi', { maxNewTokens: 3 })
  console.log(reason, lp.length, reply.usage.promptTokensEvaluated, model.info.vocabSize, (await stream.result).text)
}
main().catch((e: unknown) => { if (e instanceof Phi2OptionsError) console.log(e.path); else if (e instanceof Phi2Error) console.log(e.code) })
// @ts-expect-error temperature must be a number
export const bad: GenerateOptions = { temperature: 'hot' }
`,
    )
    writeFileSync(join(project, 'check.cts'), `import phi2 = require('@x/phi2')\nexport const p: Promise<phi2.Phi2Model> = phi2.loadModel('x.gguf')\n`)
    writeFileSync(
      join(project, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          lib: ['ES2022', 'ESNext.Disposable'],
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          strict: true,
          noEmit: true,
          types: ['node'],
          typeRoots: [join(REPO_ROOT, 'node_modules/@types')],
        },
        files: ['check.mts', 'check.cts'],
      }),
    )
    const tsc = join(REPO_ROOT, 'node_modules/typescript/bin/tsc')
    execFileSync(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: project, env: cleanEnv(), encoding: 'utf8' })

    // A bundled web app: the "browser" condition's declarations (dist/browser.d.ts).
    writeFileSync(
      join(project, 'web.ts'),
      `import { loadModel, defaultModelUrl, type LoadProgress, type ModelRuntime, type ModelSource } from '@x/phi2'
export async function main(file: File): Promise<string> {
  const src: ModelSource = file
  const m = await loadModel(src, { backend: 'wasm', threads: 2, cache: false, onProgress: (p: LoadProgress) => console.log(p.phase, p.loadedBytes, p.totalBytes) })
  const m2 = await loadModel(defaultModelUrl(), { signal: new AbortController().signal })
  const rt: ModelRuntime = m.info.runtime
  const build: 'native' | 'native-cuda' | 'wasm-simd' | 'wasm-simd-threads' = rt.build
  for await (const c of m2.stream('Hi', { maxNewTokens: 4 })) console.log(c.text)
  m.dispose()
  return build + rt.reason + String(m2.info.fromCache)
}
// @ts-expect-error the browser entry has no Node-only helpers
export { defaultModelPath } from '@x/phi2'
`,
    )
    writeFileSync(
      join(project, 'tsconfig.web.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          lib: ['ES2022', 'DOM', 'ESNext.Disposable', 'DOM.AsyncIterable'],
          module: 'ESNext',
          moduleResolution: 'bundler',
          customConditions: ['browser'],
          strict: true,
          noEmit: true,
          types: [],
          skipLibCheck: false,
        },
        files: ['web.ts'],
      }),
    )
    execFileSync(process.execPath, [tsc, '-p', 'tsconfig.web.json'], { cwd: project, env: cleanEnv(), encoding: 'utf8' })
  })
})
