/**
 * Prometheus text exposition (version 0.0.4) for `GET /metrics`: counters, gauges and
 * histograms kept in memory, no dependency.
 */

type Labels = Record<string, string>

function labelText(labels: Labels): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`)
  return parts.length ? `{${parts.join(',')}}` : ''
}

class Counter {
  readonly values = new Map<string, { labels: Labels; value: number }>()
  constructor(
    readonly name: string,
    readonly help: string,
  ) {}

  inc(labels: Labels = {}, by = 1): void {
    const key = labelText(labels)
    const v = this.values.get(key)
    if (v) v.value += by
    else this.values.set(key, { labels, value: by })
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`]
    if (this.values.size === 0) lines.push(`${this.name} 0`)
    for (const { labels, value } of this.values.values()) lines.push(`${this.name}${labelText(labels)} ${value}`)
    return lines.join('\n')
  }
}

class Histogram {
  readonly counts: number[]
  sum = 0
  count = 0
  constructor(
    readonly name: string,
    readonly help: string,
    readonly buckets: readonly number[],
  ) {
    this.counts = buckets.map(() => 0)
  }

  observe(v: number): void {
    this.sum += v
    this.count++
    this.buckets.forEach((b, i) => {
      if (v <= b) this.counts[i]!++
    })
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`]
    this.buckets.forEach((b, i) => lines.push(`${this.name}_bucket{le="${b}"} ${this.counts[i]}`))
    lines.push(`${this.name}_bucket{le="+Inf"} ${this.count}`, `${this.name}_sum ${this.sum}`, `${this.name}_count ${this.count}`)
    return lines.join('\n')
  }
}

const SECONDS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]

/** Everything `/metrics` reports. Gauges are read at render time. */
export class ServerMetrics {
  readonly requests = new Counter('phi2_requests_total', 'HTTP requests by route and status code')
  readonly promptTokens = new Counter('phi2_prompt_tokens_total', 'Prompt tokens of finished generations')
  readonly completionTokens = new Counter('phi2_completion_tokens_total', 'Tokens generated')
  readonly rejected = new Counter('phi2_rejected_total', 'Requests refused because the queue was full (429)')
  readonly latency = new Histogram('phi2_request_duration_seconds', 'Time from request to the end of its generation', SECONDS)
  readonly firstToken = new Histogram('phi2_time_to_first_token_seconds', 'Time from request to its first token', SECONDS)
  readonly queueWait = new Histogram('phi2_queue_wait_seconds', 'Time a generation waited before joining the batch', SECONDS)

  render(gauges: { queueDepth: number; active: number; batchSize: number; steps: number; ready: boolean }): string {
    const gauge = (name: string, help: string, v: number) => `# HELP ${name} ${help}\n# TYPE ${name} gauge\n${name} ${v}`
    return (
      [
        this.requests.render(),
        this.promptTokens.render(),
        this.completionTokens.render(),
        this.rejected.render(),
        gauge('phi2_queue_depth', 'Generations waiting for room in the batch', gauges.queueDepth),
        gauge('phi2_active_sequences', 'Generations in the batch now', gauges.active),
        gauge('phi2_batch_size', 'Sequences in the latest forward pass', gauges.batchSize),
        `# HELP phi2_batch_steps_total Forward passes of the batch engine\n# TYPE phi2_batch_steps_total counter\nphi2_batch_steps_total ${gauges.steps}`,
        gauge('phi2_ready', '1 once the model is loaded', gauges.ready ? 1 : 0),
        this.latency.render(),
        this.firstToken.render(),
        this.queueWait.render(),
      ].join('\n') + '\n'
    )
  }
}
