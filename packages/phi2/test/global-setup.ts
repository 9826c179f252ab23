// Builds the package (dist/, bundled tokenizer, models/default.gguf) when it is missing or older
// than its sources, so that the tests always exercise the built package as users get it.
import { execFileSync } from 'node:child_process'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { join, resolve } from 'node:path'

const pkg = resolve(__dirname, '..')

function newest(dir: string): number {
  let t = 0
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs)
  }
  return t
}

export default function setup(): void {
  const outputs = ['dist/index.js', 'dist/index.cjs', 'dist/index.d.ts', 'dist/cli.js', 'dist/browser.js', 'dist/wasm-worker.js', 'dist/wasm-worker.node.js', 'dist/phi2-tokenizer.json', 'models/default.gguf']
  const built = outputs.every((f) => existsSync(join(pkg, f)))
  const sourcesTime = Math.max(newest(join(pkg, 'src')), newest(join(pkg, 'scripts')), statSync(join(pkg, 'package.json')).mtimeMs)
  const builtTime = built ? Math.min(...outputs.filter((f) => f.startsWith('dist/')).map((f) => statSync(join(pkg, f)).mtimeMs)) : 0
  if (!built || builtTime < sourcesTime) {
    execFileSync(process.execPath, [join(pkg, 'scripts/build.mjs')], { cwd: pkg, stdio: 'inherit' })
  }
}
