// The main job's driver: tokenizes the model card's three sample prompts (QA, chat, code) with the
// Phi-2 (CodeGen) tokenizer, runs the engine's `generate` example with the card's sampling
// parameters, and prints prompt + completion.
//
// The tokenizer here is GPT-2 byte-level BPE (npm gpt-3-encoder) plus Phi-2's 38 added whitespace
// tokens, which split the text before BPE: runs of 2..31 spaces are ids 50288 - n, runs of 2..9
// tabs are ids 50296 - n (leftmost-longest match, as HF tokenizers does). Good enough for the demo;
// the SDK uses HF tokenizer.json.
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const require = createRequire(import.meta.url);
const { encode, decode } = require('gpt-3-encoder');
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export function tokenize(text) {
  const ids = [];
  const re = / {2,31}|\t{2,9}/g;
  let last = 0;
  for (const m of text.matchAll(re)) {
    if (m.index > last) ids.push(...encode(text.slice(last, m.index)));
    ids.push(m[0][0] === ' ' ? 50288 - m[0].length : 50296 - m[0].length);
    last = m.index + m[0].length;
  }
  if (last < text.length) ids.push(...encode(text.slice(last)));
  return ids;
}

export function detokenize(ids) {
  let out = '';
  let run = [];
  const flush = () => { if (run.length) out += decode(run); run = []; };
  for (const id of ids) {
    if (id >= 50257 && id <= 50286) { flush(); out += ' '.repeat(50288 - id); }
    else if (id >= 50287 && id <= 50294) { flush(); out += '\t'.repeat(50296 - id); }
    else if (id < 50257) run.push(id);
  }
  flush();
  return out;
}

const SAMPLES = [
  { name: 'QA', prompt: 'Instruct: What is a fermi paradox?\nOutput:', topP: 0.1, temperature: 0.1 },
  { name: 'chat', prompt: 'Alice: What is a fermi paradox?', topP: 0.9, temperature: 0.6 },
  { name: 'code', prompt: 'def is_prime(', topP: 0.9, temperature: 0.6 },
];

function main() {
  const args = process.argv.slice(2);
  const model = args[args.indexOf('--model') + 1];
  const maxNew = Number(process.env.PHI2_MAX_NEW_TOKENS ?? 40);
  const bin = path.join(root, 'target/release/examples/generate');
  console.log(`model: ${model}`);
  for (const s of SAMPLES) {
    const ids = tokenize(s.prompt);
    const t0 = performance.now();
    const out = execFileSync(bin, ['--model', model, '--tokens', ids.join(','), '--max-new-tokens', String(maxNew),
      '--temperature', String(s.temperature), '--top-p', String(s.topP), '--seed', '42'], { encoding: 'utf8' });
    const ms = performance.now() - t0;
    const { tokens } = JSON.parse(out);
    console.log(`\n--- ${s.name} (${ids.length} prompt tokens, ${tokens.length} generated, ${ms.toFixed(0)} ms incl. load)`);
    console.log(s.prompt + detokenize(tokens));
  }
}

if (import.meta.url === `file://${process.argv[1]}`) main();
