// Prints what the native addon computes on the fixture models: greedy and seeded-sampled tokens
// and the bits of the log-probs of a prompt and its continuation (as a SHA-256 of the f32
// bytes). addon.test.mjs runs it with the host's addon and, under qemu, with the linux-arm64
// addon (NEON kernels, with and without dotprod) and requires the same output.
// Usage: node digest.mjs OUT_DIR MODEL... (the addon: NAPI_RS_NATIVE_LIBRARY_PATH, or this
// platform's). Writes OUT_DIR/digest.json and each model's log-probs as OUT_DIR/<model>.f32.
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

// PROMPT: 11 tokens, so the batched products run tiles of 4, 4, 2 and 1 tokens.
import { PROMPT, root } from '../engine/helpers.mjs';

const { NativeModel } = createRequire(path.join(root, 'package.json'))('@x/phi2-native');
const base = { maxNewTokens: 8, doSample: false, temperature: 1, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1,
  presencePenalty: 0, frequencyPenalty: 0, logitBiasIds: [], logitBiasValues: [], seed: 0, stopOnEos: false };

const out = {};
const [dir, ...models] = process.argv.slice(2);
for (const file of models) {
  const m = await NativeModel.load(file);
  const greedy = (await m.createSession().generate(PROMPT, base, () => {})).tokens;
  const sampled = (await m.createSession().generate(PROMPT, { ...base, doSample: true, temperature: 0.9, topP: 0.95, seed: 7 }, () => {})).tokens;
  const lp = await m.logprobs([...PROMPT, ...greedy]);
  const bytes = Buffer.from(lp.buffer, lp.byteOffset, lp.byteLength);
  writeFileSync(path.join(dir, `${path.basename(file)}.f32`), bytes);
  out[path.basename(file)] = { greedy, sampled, logprobs: createHash('sha256').update(bytes).digest('hex'), values: lp.length };
  m.dispose();
}
writeFileSync(path.join(dir, 'digest.json'), JSON.stringify({ arch: process.arch, models: out }, null, 1) + '\n');
