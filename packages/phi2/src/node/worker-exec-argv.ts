/**
 * The `execArgv` of the SDK's wasm engine workers (worker_threads). A Worker inherits the host's
 * `process.execArgv` unless given its own, and refuses to start on flags that only make sense for
 * a process's main thread: `--input-type` (with `-e`), `--inspect*`, `--test`, `--watch`, ... The
 * engine worker needs none of the host's flags (it imports only its own files and `node:`
 * modules; V8 flags are process-wide anyway), so it keeps only a few per-thread diagnostics that
 * every worker accepts and that change no behaviour the engine relies on.
 */

/** Flags copied to the workers when the host has them (exact, or as `--flag=value`). */
const KEEP = new Set([
  '--enable-source-maps',
  '--no-warnings',
  '--no-deprecation',
  '--trace-warnings',
  '--trace-deprecation',
  '--trace-uncaught',
  '--pending-deprecation',
  '--unhandled-rejections',
])

/** Options whose value may be the next argument (`--import x`): that argument is not a flag. */
const TAKES_VALUE = new Set([
  '-e',
  '--eval',
  '-p',
  '--print',
  '-r',
  '--require',
  '--import',
  '--loader',
  '--experimental-loader',
  '--input-type',
  '-C',
  '--conditions',
  '--inspect-port',
  '--debug-port',
  '--title',
  '--env-file',
  '--redirect-warnings',
  '--unhandled-rejections',
  '--stack-trace-limit',
  '--max-old-space-size',
  '--max-semi-space-size',
  '--stack-size',
  '--disable-warning',
  '--watch-path',
  '--test-name-pattern',
  '--test-reporter',
  '--test-reporter-destination',
  '--test-concurrency',
  '--experimental-policy',
  '--diagnostic-dir',
  '--report-dir',
  '--report-directory',
  '--report-filename',
  '--report-signal',
  '--icu-data-dir',
  '--openssl-config',
  '--tls-cipher-list',
  '--dns-result-order',
  '--heapsnapshot-signal',
  '--secure-heap',
  '--secure-heap-min',
  '--cpu-prof-dir',
  '--cpu-prof-name',
  '--heap-prof-dir',
  '--heap-prof-name',
])

/** The host's `execArgv` reduced to what an engine worker can and should take. */
export function workerExecArgv(hostExecArgv: readonly string[]): string[] {
  const out: string[] = []
  for (let i = 0; i < hostExecArgv.length; i++) {
    const arg = hostExecArgv[i]!
    const eq = arg.indexOf('=')
    const name = eq === -1 ? arg : arg.slice(0, eq)
    const takesNext = eq === -1 && TAKES_VALUE.has(name) && i + 1 < hostExecArgv.length
    if (KEEP.has(name)) {
      out.push(arg)
      if (takesNext) out.push(hostExecArgv[i + 1]!)
    }
    if (takesNext) i++
  }
  return out
}
