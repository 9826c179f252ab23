// Summaries (median and min–max over runs), the text table, Markdown, JSON and bench/RESULTS.md.
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { describeCpuId } from './cpu.mjs';

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const stat = (xs) => (xs.length ? { median: median(xs), min: Math.min(...xs), max: Math.max(...xs), n: xs.length } : null);

/**
 * Bytes per value of an engine's KV cache in a run with these options: @x/phi2's f32, or f16
 * with `kvCache: 'f16'` on cpu and wasm (on cuda that option rounds the values but keeps them
 * in f32 tensors); node-llama-cpp's default f16 (3.21.1: keys and values F16); HF transformers
 * fp16's. Null for an engine not known here.
 */
export function kvBytesPerValue(engineId, { backend, kvCache }) {
  if (engineId === 'phi2') return kvCache === 'f16' && backend !== 'cuda' ? 2 : 4;
  if (engineId === 'node-llama-cpp' || engineId === 'transformers') return 2;
  return null;
}

/**
 * Per-run metrics of one engine's run (native child or browser page). `kv`: the values the KV
 * cache holds per position and the engine's bytes per value, for the share that counts a decode
 * step's cache reads too.
 */
function runMetrics(r, bytesPerToken, bwGbPerS, fileBytes, kv) {
  const m = { load: r.loadMs / 1000 };
  if (r.bandwidthBeside > 0) m.bwBeside = r.bandwidthBeside;
  if (r.peakRssAfterLoad) m.rssLoad = r.peakRssAfterLoad / 1e9;
  if (r.peakRss) m.rss = r.peakRss / 1e9;
  if (r.peakRss && fileBytes) m.rssFile = r.peakRss / fileBytes;
  if (Number.isFinite(r.hugePageShare)) m.huge = 100 * r.hugePageShare;
  for (const p of r.prompts) {
    const P = p.promptTokens;
    m[`ttft@${P}`] = p.promptMs;
    m[`prefill@${P}`] = (P / p.promptMs) * 1000;
    if (p.generated >= 2 && p.generateMs > 0) {
      m[`decode@${P}`] = ((p.generated - 1) / p.generateMs) * 1000;
      if (bytesPerToken && bwGbPerS) m[`share@${P}`] = (100 * m[`decode@${P}`] * bytesPerToken) / (bwGbPerS * 1e9);
      if (bytesPerToken && r.bandwidthBeside > 0) m[`shareBeside@${P}`] = (100 * m[`decode@${P}`] * bytesPerToken) / (r.bandwidthBeside * 1e9);
      if (bytesPerToken && kv) {
        // The timed steps (generated − 1 of them) attend over P + 1 … P + generated − 1
        // positions: P + generated / 2 on average. Against the bandwidth beside the run where
        // there is one, else against the ceiling's (cuda: no probe beside the runs).
        const stepBytes = bytesPerToken + kv.values * kv.bytes * (P + p.generated / 2);
        if (r.bandwidthBeside > 0) m[`shareKvBeside@${P}`] = (100 * m[`decode@${P}`] * stepBytes) / (r.bandwidthBeside * 1e9);
        else if (bwGbPerS) m[`shareKv@${P}`] = (100 * m[`decode@${P}`] * stepBytes) / (bwGbPerS * 1e9);
      }
    }
  }
  return m;
}

export function summarize(engine, bytesPerToken, bwGbPerS, fileBytes, kvValues = null) {
  const ok = engine.runs.filter((r) => !r.error);
  const kv = kvValues > 0 && engine.kvBytes > 0 ? { values: kvValues, bytes: engine.kvBytes } : null;
  const per = ok.map((r) => runMetrics(r, bytesPerToken, bwGbPerS, fileBytes, kv));
  const keys = [...new Set(per.flatMap((m) => Object.keys(m)))];
  const s = {};
  for (const k of keys) s[k] = stat(per.map((m) => m[k]).filter((v) => Number.isFinite(v)));
  return {
    label: engine.label,
    runs: engine.runs.length,
    failed: engine.runs.length - ok.length,
    errors: [...new Set(engine.runs.filter((r) => r.error).map((r) => r.error))],
    loadStates: [...new Set(ok.map((r) => r.loadState).filter(Boolean))],
    generated: [...new Set(ok.flatMap((r) => r.prompts.map((p) => p.generated)))],
    eogTokens: ok.reduce((a, r) => a + r.prompts.reduce((b, p) => b + (p.eogTokens ?? 0), 0), 0),
    stats: s,
  };
}

function metricRows(promptTokens, withShare, withRss) {
  const rows = [['load', 'load s', 'lower', 2]];
  for (const P of promptTokens) {
    rows.push([`ttft@${P}`, `time to first token, ${P}-token prompt, ms`, 'lower', 0]);
    rows.push([`prefill@${P}`, `prefill tok/s (${P} tokens)`, 'higher', 1]);
    rows.push([`decode@${P}`, `decode tok/s (after ${P})`, 'higher', 2]);
    if (withShare) {
      rows.push([`share@${P}`, `decode, % of bandwidth ceiling`, 'higher', 0]);
      rows.push([`shareKv@${P}`, `decode, % of bandwidth ceiling, weights + KV-cache reads`, 'higher', 0]);
      rows.push([`shareBeside@${P}`, `decode, % of the bandwidth beside its run`, 'higher', 0]);
      rows.push([`shareKvBeside@${P}`, `decode, % of the bandwidth beside its run, weights + KV-cache reads`, 'higher', 0]);
    }
  }
  if (withRss) {
    rows.push(['rssLoad', 'peak RSS when loaded, GB', 'lower', 2]);
    rows.push(['rss', 'peak RSS GB', 'lower', 2]);
    rows.push(['rssFile', 'peak RSS ÷ model file size', 'info', 2]);
  }
  rows.push(['huge', 'model file mapped on 2 MB pages, %', 'info', 0]);
  if (withShare) rows.push(['bwBeside', 'memory read bandwidth beside the run, GB/s', 'info', 1]);
  return rows;
}

const fmtStat = (s, d, spread) => (!s ? '—' : s.n > 1 && spread ? `${s.median.toFixed(d)} [${s.min.toFixed(d)}–${s.max.toFixed(d)}]` : s.median.toFixed(d));

/** A table: metric | ours | peers… | ratios (advantage of the first engine, >1 = better). */
function buildTable(summaries, promptTokens, withShare, withRss, spread) {
  const [ours, ...peers] = summaries;
  const head = ['metric', ...summaries.map((s) => s.label), ...peers.map((p) => `× vs ${p.label}`)];
  const body = [];
  for (const [key, label, better, d] of metricRows(promptTokens, withShare, withRss)) {
    if (summaries.every((s) => !s.stats[key])) continue;
    const cells = summaries.map((s) => fmtStat(s.stats[key], d, spread));
    const ratios = peers.map((p) => {
      const a = ours.stats[key]?.median;
      const b = p.stats[key]?.median;
      if (!(a > 0 && b > 0) || key.startsWith('share') || better === 'info') return '';
      return `${(better === 'higher' ? a / b : b / a).toFixed(2)}×`;
    });
    body.push([label, ...cells, ...ratios]);
  }
  return [head, ...body];
}

function textTable(rows) {
  const w = rows[0].map((_, c) => Math.max(...rows.map((r) => String(r[c]).length)));
  return rows
    .map((r, i) => {
      const line = r.map((cell, c) => (c === 0 ? String(cell).padEnd(w[c]) : String(cell).padStart(w[c]))).join('  ');
      return i === 0 ? `${line}\n${w.map((x) => '-'.repeat(x)).join('  ')}` : line;
    })
    .join('\n');
}

/** A Markdown table: `rows[0]` is the header; the first column left-aligned, the rest right. */
export function mdTable(rows) {
  const esc = (s) => String(s).replace(/\|/g, '\\|');
  return [
    `| ${rows[0].map(esc).join(' | ')} |`,
    `|${rows[0].map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`,
    ...rows.slice(1).map((r) => `| ${r.map(esc).join(' | ')} |`),
  ].join('\n');
}

export function analyse(report) {
  const bw = report.bandwidth?.gbPerS ?? null;
  const bpt = report.model.bytesPerToken;
  const native = report.engines.map((e) => summarize(e, bpt, bw, report.model.sizeBytes, report.model.kvValuesPerPosition));
  const browser = report.browser?.engines ? report.browser.engines.map((e) => summarize(e, bpt, null)) : null;
  return { native, browser };
}

function describe(report) {
  const m = report.machine;
  const o = report.options;
  const lines = [];
  lines.push(`machine: ${m.cpu}${m.cpuId ? ` (${describeCpuId(m.cpuId)})` : ''}, ${m.cores} cores, ${(m.ramBytes / 2 ** 30).toFixed(1)} GiB RAM, ${m.os}, Node ${m.node}${m.gitCommit ? `, checkout ${m.gitCommit}` : ''}`);
  if (report.bandwidth) {
    lines.push(`memory read bandwidth: ${report.bandwidth.gbPerS.toFixed(2)} GB/s with ${report.bandwidth.threads} thread(s)${report.bandwidth.allCoresGbPerS ? `, ${report.bandwidth.allCoresGbPerS.toFixed(2)} GB/s with all ${m.cores} cores` : ''} (${report.bandwidth.method})`);
  }
  const md = report.model;
  lines.push(`model: ${md.name}${md.synthetic ? ` (synthetic random weights, Phi-2 shapes, ${md.synthetic})` : ''}, ${md.sizeBytes ? `${(md.sizeBytes / 1e9).toFixed(2)} GB` : 'directory'}${md.types ? `, ${md.types}` : ''}${md.bytesPerToken ? `; ${(md.bytesPerToken / 1e9).toFixed(3)} GB of weights read per decode step` : ''}${md.kvValuesPerPosition ? `; KV cache per position: ${md.kvValuesPerPosition} numbers (keys + values, all layers)` : ''}`);
  if (report.bandwidth && md.bytesPerToken) lines.push(`decode ceiling at this bandwidth: ${((report.bandwidth.gbPerS * 1e9) / md.bytesPerToken).toFixed(2)} tok/s (bandwidth / weight bytes per step; KV-cache reads not counted)`);
  lines.push(`runs: ${o.runs} per engine, alternating, one process each; ${o.threads} threads; prompt ${o.promptTokens.join(', ')} tokens (ids, greedy), ${o.genTokens} generated tokens; load ${o.load}${o.warmup ? '; one short warm-up generation after each load' : ''}`);
  if (o.kvCache === 'f16') lines.push('KV cache: f16 for @x/phi2 (loadModel kvCache); node-llama-cpp keeps its default, f16');
  return lines;
}

const NOTES = [
  'load: loadModel() until it resolves (node-llama-cpp: loadModel + createContext); "warm" / "cold" = share of the file in the page cache before the run (fincore).',
  'time to first token = prefill: the engine\'s own clock from the call to the first sampled token (@x/phi2: timings.promptMs; node-llama-cpp: the first token out of evaluate(); wllama: timings.prompt_ms); prefill tok/s = prompt tokens / that time (includes one greedy sampling).',
  'decode tok/s = (generated − 1) / time from the first to the last token (each step: one forward pass of one token + sampling); end-of-text banned for @x/phi2 (logitBias), yielded and continued through for node-llama-cpp, ignore_eos for wllama, so every engine runs the same number of steps.',
  'peak RSS: getrusage maxRSS of the run\'s own process (Node and the SDK included), when the model is loaded (loadModel() resolved; node-llama-cpp: after createContext) and over the whole run (load + every generation: KV cache and activations too); ÷ model file size: the whole run\'s. The file is mapped, so its pages count once they are read. × columns: advantage of @x/phi2 (>1 = @x/phi2 faster or smaller).',
  'bandwidth beside the run: the read-bandwidth probe of the header again just before and just after each run, the better of the two; "% of the bandwidth beside its run" divides that run\'s decode by it (the header\'s ceiling is one measurement before all runs, and shared machines drift over minutes).',
  'weights + KV-cache reads: a decode step also reads the cached keys and values of every position so far; this share is (weight bytes + those cache bytes per step) × decode tok/s ÷ the bandwidth beside the run (cuda: the ceiling\'s). Cache bytes per step = numbers per position (the header\'s) × positions (the prompt plus half the generated tokens, on average over the timed steps) × the engine\'s bytes per number: 4 for @x/phi2\'s default f32 cache, 2 with --kv-cache f16 on cpu and wasm, 2 for node-llama-cpp\'s and HF transformers\' f16 caches. (An engine that reads padding or masked positions of its cache too reads more than this counts.)',
  'model file mapped on 2 MB pages (Linux): FilePmdMapped of the model file\'s mappings in the run\'s process (/proc/self/smaps) over the file size, after the generations. Weights stream faster from 2 MB pages; the page cache has them where the file was read in large pieces (--load warm evicts the file and reads it back in 8 MB reads, so both engines start from the same state), not where it was written or faulted in small pieces.',
];

export function renderText(report, { markdown = false } = {}) {
  const { native, browser } = analyse(report);
  const o = report.options;
  const out = [];
  const withShare = !!(report.bandwidth && report.model.bytesPerToken);
  const h = (s) => (markdown ? `**${s}**` : s);
  if (markdown) out.push(...describe(report).map((l) => `- ${l}`));
  else out.push(...describe(report));
  out.push('');
  out.push(h(`Node, backend ${o.backend}, ${o.threads} threads — median${o.runs > 1 ? ' [min–max]' : ''} of ${o.runs} run(s):`));
  out.push('');
  const rows = buildTable(native, o.promptTokens, withShare, true, true);
  out.push(markdown ? mdTable(rows) : textTable(rows));
  if (browser) {
    out.push('');
    out.push(h(`Headless Chromium, cross-origin isolated, ${o.threads} threads (same page setup for both):`));
    out.push('');
    const b = buildTable(browser, o.promptTokens, false, false, true);
    out.push(markdown ? mdTable(b) : textTable(b));
    const llama = native.find((s) => s.label === 'node-llama-cpp');
    if (llama) {
      const P = o.promptTokens[0];
      const ours = browser[0].stats[`decode@${P}`]?.median;
      const ll = llama.stats[`decode@${P}`]?.median;
      if (ours && ll) out.push('', `${browser[0].label} decode vs native node-llama-cpp: ${(ours / ll).toFixed(2)}×`);
    }
    // What each of our page runs chose at load (threads, build, the kernel settings timed there).
    const reasons = (report.browser.engines[0]?.runs ?? []).map((r, i) => (r.runtime?.reason ? `run ${i + 1}: ${r.runtime.reason}` : null)).filter(Boolean);
    if (reasons.length) out.push('', `${browser[0].label} runtime by run: ${reasons.join('; ')}`);
  } else if (report.browser?.error) {
    out.push('', `wllama comparison failed: ${report.browser.error}`);
  }
  const problems = [];
  for (const s of [...native, ...(browser ?? [])]) {
    if (s.failed) problems.push(`${s.label}: ${s.failed} of ${s.runs} runs failed: ${s.errors.join('; ')}`);
    const want = o.genTokens;
    if (s.generated.some((g) => g !== want)) problems.push(`${s.label}: generated ${s.generated.join('/')} tokens, not always ${want}`);
    if (s.eogTokens) problems.push(`${s.label}: end-of-text came up ${s.eogTokens} time(s) (generation went on)`);
  }
  if (problems.length) out.push('', ...problems.map((p) => (markdown ? `- ${p}` : `! ${p}`)));
  out.push('');
  // The note on the beside-run bandwidth only where a run has one (not with --no-bandwidth, cuda).
  const beside = native.some((s) => s.stats.bwBeside);
  const withKv = native.some((s) => o.promptTokens.some((P) => s.stats[`shareKvBeside@${P}`] || s.stats[`shareKv@${P}`]));
  const notes = NOTES.filter((n) => (beside || !n.startsWith('bandwidth beside the run')) && (withKv || !n.startsWith('weights + KV-cache reads')));
  out.push(...notes.map((n) => (markdown ? `- ${n}` : `  ${n}`)));
  return out.join('\n');
}

export function printReport(report, format) {
  if (format === 'json') {
    const { native, browser } = analyse(report);
    process.stdout.write(`${JSON.stringify({ ...report, summary: { native, browser } }, null, 2)}\n`);
  } else {
    process.stdout.write(`${renderText(report, { markdown: format === 'markdown' })}\n`);
  }
}

const HEADER_START = '# phi2-bench results\n\nWritten by `phi2-bench --write-results`';

const HEADER = `${HEADER_START}, \`bench/serve-load.mjs\` and \`bench/speculative.mjs\`
(\`--write-results\`), never by hand. Every number in a section comes from the one run it names.
phi2-bench keeps one section per configuration (model, backend, threads, peers, prompt and
generation sizes) and CPU, and a new run of the same configuration on the same CPU replaces its
section; the other two writers key theirs by configuration only. The CPU is its model string and,
where Linux tells it, its x86 family and model (or Arm implementer and part), since cloud VMs give
one model string, such as "AMD EPYC", to several generations; the machine line also lists the
instruction set extensions the CPU reports (a hypervisor may hide some, which the key does not
tell apart). Sections whose heading names no family or model come from an older phi2-bench, and
no new run replaces them.
`;

/**
 * The CPU as one word of a section key: its model string ("Intel(R) Xeon(R) Processor" →
 * "intel-xeon-processor", "AMD EPYC" → "amd-epyc"), then, where known (`./cpu.mjs`), x86
 * family and model ("amd-epyc-f26m2") or Arm implementer and part ("…-0x41p0xd0c"), so that a
 * run on another generation behind the same model string gets its own section instead of
 * replacing that one's.
 */
export function cpuTag(cpu, id) {
  const slug = String(cpu ?? '').toLowerCase().replace(/\((r|tm)\)/g, '').replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '') || 'unknown-cpu';
  if (id?.arch === 'x86') return `${slug}-f${id.family}m${id.model}`;
  if (id?.arch === 'arm') return `${slug}-${id.implementer}p${id.part}`.toLowerCase();
  return slug;
}

export function resultsKey(report) {
  const o = report.options;
  const kv = o.kvCache && o.kvCache !== 'f32' ? [`kv-${o.kvCache}`] : [];
  return [report.model.synthetic ? `synthetic-${report.model.synthetic}` : report.model.name, o.backend, ...kv, `t${o.threads}`, `p${o.promptTokens.join('+')}`, `g${o.genTokens}`, ...o.compare, `on-${cpuTag(report.machine?.cpu, report.machine?.cpuId)}`].join(' ');
}

export function writeResults(report, file) {
  const key = resultsKey(report);
  const m = report.model;
  const section = [
    `## ${m.synthetic ? `Phi-2-shaped ${m.synthetic} (random weights)` : m.name}, ${report.options.backend}${report.options.kvCache === 'f16' ? ', f16 KV cache' : ''}, ${report.options.threads} threads${report.options.compare.length ? `, vs ${report.options.compare.join(' and ')}` : ''}, on ${report.machine?.cpu ?? 'an unknown CPU'}${report.machine?.cpuId ? ` (${describeCpuId(report.machine.cpuId, { short: true })})` : ''}`,
    '',
    `- date: ${report.date}`,
    `- command: \`${report.command}\``,
    `- versions: ${Object.entries(report.versions).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(', ')}; ${report.tool}`,
    renderText(report, { markdown: true }),
  ].join('\n');
  writeSection(file, key, section);
}

/**
 * Puts `body` into the results file as the section named `key` (between `<!-- phi2-bench:KEY -->`
 * markers): replaces that section if present, appends it otherwise; the file is replaced
 * atomically. Every results writer (phi2-bench, bench/serve-load.mjs, bench/speculative.mjs) goes
 * through here.
 */
export function writeSection(file, key, body) {
  const startTag = `<!-- phi2-bench:${key} -->`;
  const endTag = `<!-- /phi2-bench:${key} -->`;
  const section = `${startTag}\n${body}\n${endTag}`;
  let text = existsSync(file) ? readFileSync(file, 'utf8') : HEADER;
  // A header this tool wrote (all before the first section) becomes its current one; any other
  // text before the first section is the user's and stays.
  const first = text.indexOf('<!-- phi2-bench:');
  if (text.startsWith(HEADER_START) && first >= 0) text = `${HEADER}\n${text.slice(first)}`;
  const start = text.indexOf(startTag);
  const end = text.indexOf(endTag);
  if (start >= 0 && end > start) text = text.slice(0, start) + section + text.slice(end + endTag.length);
  else text = `${text.trimEnd()}\n\n${section}\n`;
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, text);
  renameSync(tmp, file);
}
