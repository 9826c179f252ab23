/**
 * A one-line progress bar on stderr for the CLI (Hub downloads, `phi2 convert`): drawn only when
 * stderr is a TTY (and, for Hub downloads, `HF_HUB_DISABLE_PROGRESS_BARS` is not set); redrawn at
 * most every 100 ms; `done()` ends the line.
 */

function human(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB']
  let i = 0
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000
    i++
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`
}

export interface ProgressBar {
  update(label: string, done: number, total: number): void
  done(): void
}

export function progressBar(enabled: boolean, stream: NodeJS.WriteStream = process.stderr): ProgressBar {
  const on = enabled && Boolean(stream.isTTY)
  let last = 0
  let drawn = false
  const t0 = performance.now()
  let lastArgs: [string, number, number] | null = null
  const draw = (label: string, done: number, total: number) => {
    const width = Math.max(10, Math.min(30, (stream.columns ?? 80) - 60))
    const frac = total > 0 ? Math.min(1, done / total) : 1
    const fill = Math.round(frac * width)
    const secs = (performance.now() - t0) / 1000
    const rate = secs > 0 ? `${human(done / secs)}/s` : ''
    const name = label.length > 32 ? `…${label.slice(-31)}` : label
    stream.write(`\r\x1b[K${name} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}% ${human(done)}/${human(total)} ${rate}`)
    drawn = true
  }
  return {
    update(label, done, total) {
      if (!on) return
      lastArgs = [label, done, total]
      const now = performance.now()
      if (now - last < 100 && done < total) return
      last = now
      draw(label, done, total)
    },
    done() {
      if (!on) return
      if (lastArgs) draw(...lastArgs)
      if (drawn) stream.write('\n')
      drawn = false
    },
  }
}
