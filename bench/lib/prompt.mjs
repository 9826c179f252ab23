// The benchmark prompt: the first N Phi-2 (GPT-2 BPE) tokens of a fixed English text, repeated as
// needed. Engines that take token ids get exactly these ids; engines that only take a string
// (wllama) get their decoded text, and the tool checks how many tokens the engine saw.
import { createRequire } from 'node:module';

const TEXT = `The history of computing is a story of abstraction. Early machines were programmed by
rewiring panels and setting switches; later, stored programs let the same hardware run any
sequence of instructions kept in memory. Assemblers replaced numeric opcodes with names, compilers
replaced machine instructions with expressions, and operating systems hid the details of disks,
terminals and memory behind files and processes. Each layer made programmers more productive and
each layer cost some speed, which the next generation of hardware usually paid back. Today a
language model answers questions by predicting one token after another: it reads the prompt once,
keeps what it computed for every position, and then produces each new token from that cache. `;

let encoder = null;
function gpt2() {
  if (!encoder) encoder = createRequire(import.meta.url)('gpt-3-encoder');
  return encoder;
}

/** Exactly `n` token ids. */
export function promptIds(n) {
  const { encode } = gpt2();
  const one = encode(TEXT);
  const ids = [];
  while (ids.length < n) ids.push(...one);
  return ids.slice(0, n);
}

/** The text of `promptIds(n)` (for engines that take strings). */
export function promptText(n) {
  return gpt2().decode(promptIds(n));
}
