#!/usr/bin/env node
// What prompt-lookup speculative decoding buys: the same greedy generations with and without
// `speculative`, through the public SDK, on three kinds of prompt. Two whose answer repeats the
// prompt (editing given code, summarising given text) and one whose answer does not (an
// explanation asked for in a sentence). Runs alternate (plain, speculative, plain, …); each
// prompt reports decode tokens/s both ways (medians), the speed-up, the acceptance rate, the
// tokens per verify pass, and whether the two outputs are the same tokens (they must be: greedy
// speculative decoding is exact; a difference makes the script exit 1).
//
//   node bench/speculative.mjs                          # the embedded default model (trained)
//   node bench/speculative.mjs --model phi-2.Q4_0.gguf  # real Phi-2
//   node bench/speculative.mjs --synthetic q4_0         # Phi-2's shapes, random weights
//
// What the numbers mean depends on the model. Acceptance is a property of trained weights: on
// the embedded default model (Phi-2's architecture, 14 M parameters, trained on Python's sources
// and docs) it is real, but that model is small, so a pass costs little and the speed-up shows
// mostly the per-token overheads saved. On random Phi-2-shaped weights the text is meaningless,
// but a verify pass costs what it costs on Phi-2, so there the speed-up at a given acceptance is
// the one Phi-2 would see. End-of-text is banned so every run generates --max-new-tokens tokens.
//
// --write-results adds or replaces this configuration's section of bench/RESULTS.md (the marker
// scheme of phi2-bench --write-results); RESULTS.md is written by tools only.
import path from 'node:path';
import { median, mdTable, writeSection } from './lib/report.mjs';
import { machineLine, resultsFile, runScript, scriptArgs } from './lib/script.mjs';
import { ensureSynthetic } from './lib/synthetic.mjs';
const EOS = 50256;

const HELP = `Usage: node bench/speculative.mjs [--model FILE | --synthetic q4_0|q8_0|q4_k_m|f16] [options]

  (no model)           the embedded default model of @x/phi2
  --max-new-tokens N   tokens generated per run (default 96)
  --runs N             runs of each mode per prompt, alternating (default 3)
  --ngram N            speculative n-gram length (default: the SDK's, 3)
  --max-draft N        most draft tokens per pass (default: the SDK's, 8)
  --threads N          engine threads (default: all cores)
  --write-results [F]  add/replace this configuration's section of bench/RESULTS.md (or F)
  --json               print the report as JSON
`;

// Written for this bench (not taken from any corpus the default model saw).
const PROMPTS = [
  {
    kind: 'edit given code',
    repeats: true,
    text: `Instruct: Rename the parameter \`items\` to \`values\` in this function and return it.
def average(items):
    """Return the arithmetic mean of a non-empty sequence of numbers."""
    total = 0
    count = 0
    for item in items:
        total += item
        count += 1
    if count == 0:
        raise ValueError("average() of an empty sequence")
    return total / count
Output:
def average(values):`,
  },
  {
    kind: 'summarise given text',
    repeats: true,
    text: `Instruct: Summarise the following text in two sentences.
A context manager is an object that defines what happens when a block of code is entered and
left. The with statement calls the manager's __enter__ method before the block runs and its
__exit__ method after it, even when the block raises an exception. Files, locks and database
connections are common context managers: the file is closed, the lock released and the
transaction committed or rolled back without the caller having to remember it.
Output:`,
  },
  {
    kind: 'non-repetitive (explain)',
    repeats: false,
    text: 'Instruct: Explain in a few sentences why a hash table lookup takes constant time on average.\nOutput:',
  },
];

/** Decode tokens/s of one result: tokens after the first over the decoding time. The first token
 * comes out of the prompt's pass in both modes, so it is not counted. */
function decodeRate(r) {
  return r.timings.generateMs > 0 ? ((r.tokens.length - 1) * 1000) / r.timings.generateMs : 0;
}

async function runPrompt(model, p, cfg) {
  const base = { maxNewTokens: cfg.maxNewTokens, temperature: 0, logitBias: { [EOS]: -Infinity } };
  const spec = { ...base, speculative: { ...(cfg.ngram ? { ngram: cfg.ngram } : {}), ...(cfg.maxDraft ? { maxDraft: cfg.maxDraft } : {}) } };
  // Warm-up of both paths (first-touch of buffers, page cache), not measured.
  await model.generate(p.text, { ...base, maxNewTokens: 4 });
  await model.generate(p.text, { ...spec, maxNewTokens: 4 });
  const plain = [];
  const specd = [];
  for (let i = 0; i < cfg.runs; i++) {
    plain.push(await model.generate(p.text, base));
    specd.push(await model.generate(p.text, spec));
  }
  const same = specd.every((r) => r.tokens.join() === plain[0].tokens.join()) && plain.every((r) => r.tokens.join() === plain[0].tokens.join());
  const s = specd[0].speculation ?? { passes: 0, drafted: 0, accepted: 0 };
  const plainRate = median(plain.map(decodeRate));
  const specRate = median(specd.map(decodeRate));
  return {
    kind: p.kind,
    repeats: p.repeats,
    promptTokens: plain[0].usage.promptTokens,
    generated: plain[0].tokens.length,
    sameTokens: same,
    plainTokensPerSecond: plainRate,
    speculativeTokensPerSecond: specRate,
    speedup: specRate / plainRate,
    passes: s.passes,
    drafted: s.drafted,
    accepted: s.accepted,
    acceptance: s.drafted ? s.accepted / s.drafted : 0,
    // What one verify pass yielded on average: its accepted draft tokens plus the model's own.
    // (Steps with no draft found run plainly and are not counted here.)
    tokensPerPass: s.passes ? (s.accepted + s.passes) / s.passes : 0,
    sample: plain[0].text.slice(0, 160),
  };
}

function renderMarkdown(report) {
  const header = ['prompt', 'prompt tokens', 'generated', 'plain decode tok/s', 'speculative decode tok/s', 'speed-up', 'drafted / accepted', 'acceptance', 'tokens per verify pass', 'same tokens'];
  const rows = report.prompts.map((p) => [
    p.kind, p.promptTokens, p.generated, p.plainTokensPerSecond.toFixed(2), p.speculativeTokensPerSecond.toFixed(2),
    `**${p.speedup.toFixed(2)}×**`, `${p.drafted} / ${p.accepted}`, `${(100 * p.acceptance).toFixed(0)}%`,
    p.tokensPerPass ? p.tokensPerPass.toFixed(2) : '–', p.sameTokens ? 'yes' : '**NO**',
  ]);
  return mdTable([header, ...rows]);
}

async function main() {
  const { values, fail, posInt } = scriptArgs('speculative', HELP, {
    'max-new-tokens': { type: 'string' },
    runs: { type: 'string' },
    ngram: { type: 'string' },
    'max-draft': { type: 'string' },
  });
  if (values.model && values.synthetic) fail('give --model FILE or --synthetic TYPE, not both');
  const cfg = {
    maxNewTokens: posInt('max-new-tokens', 96),
    runs: posInt('runs', 3),
    ngram: posInt('ngram', null),
    maxDraft: posInt('max-draft', null),
    threads: posInt('threads', null),
  };
  const sdk = await import('@x/phi2');
  let file;
  let label;
  let name;
  if (values.synthetic) {
    file = ensureSynthetic({ type: values.synthetic }).file;
    label = `Phi-2-shaped ${values.synthetic} (random weights)`;
    name = `synthetic-${values.synthetic}`;
  } else if (values.model) {
    file = path.resolve(values.model);
    label = name = path.basename(file);
  } else {
    if (!sdk.hasDefaultModel()) fail('the embedded default model is not in this @x/phi2 package; pass --model FILE');
    file = sdk.defaultModelPath();
    label = 'the embedded default model (Phi-2 architecture, 14 M parameters, trained; not Phi-2)';
    name = 'default-model';
  }
  const model = await sdk.loadModel(file, cfg.threads ? { threads: cfg.threads } : {});
  const report = {
    date: new Date().toISOString(),
    command: `node bench/speculative.mjs ${process.argv.slice(2).join(' ')}`.trim(),
    machine: machineLine(),
    model: { name, label, dtype: model.info.dtype },
    threads: model.info.runtime?.threads ?? cfg.threads,
    runs: cfg.runs,
    maxNewTokens: cfg.maxNewTokens,
    prompts: [],
  };
  let code = 0;
  try {
    for (const p of PROMPTS) {
      const r = await runPrompt(model, p, cfg);
      report.prompts.push(r);
      process.stderr.write(`speculative: ${p.kind}: ${r.plainTokensPerSecond.toFixed(2)} → ${r.speculativeTokensPerSecond.toFixed(2)} tok/s (${r.speedup.toFixed(2)}×), ${r.accepted}/${r.drafted} accepted${r.sameTokens ? '' : ', OUTPUTS DIFFER'}\n`);
      if (!r.sameTokens) code = 1;
    }
  } finally {
    await model.dispose();
  }
  if (values.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  else process.stdout.write(`${renderMarkdown(report)}\n`);
  const out = resultsFile(values);
  if (out) {
    const key = `speculative ${name} threads-${report.threads ?? 'all'} g${cfg.maxNewTokens}`;
    writeSection(out, key, [
      `## Prompt-lookup speculative decoding: ${label}, cpu, ${report.threads ?? 'all'} threads`,
      '',
      `- date: ${report.date}`,
      `- command: \`${report.command}\``,
      `- machine: ${report.machine}`,
      `- greedy, end-of-text banned, ${cfg.maxNewTokens} tokens per run; plain and speculative runs alternate, ${cfg.runs} of each per prompt, medians; decode tok/s counts the tokens after the first over the decoding time`,
      '',
      renderMarkdown(report),
    ].join('\n'));
    process.stderr.write(`speculative: wrote ${out}\n`);
  }
  return code;
}

runScript('speculative', main);
