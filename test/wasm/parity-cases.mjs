// The cases of the wasm kernels' bit-for-bit checks against the scalar twin, shared by test/wasm
// (the SIMD128 build in Node) and test/browser/kernels.test.mjs (the relaxed-SIMD build in
// Chromium, which imports this file into the page). Plain exports of the module run them:
// `phi2_simd128_parity(type, rows, cols, tokens, seed)` and
// `phi2_simd128_attention_parity(headDim, keys, seed)` return how many outputs differ in their bits.

// Products: odd row counts, one to many blocks, Phi-2's 2560 columns; 1..5 and 8 tokens
// (one-token kernels, two-token tiles and their tails). The one-token kernels touch the weights
// ahead where more than 16 kB of the matrix follows a row: K's 70 × 2560 and Q's 41 × 2560 have
// such rows (phi2_simd128_parity runs them with the touches on and off).
const K = [[1, 256], [7, 512], [33, 768], [70, 2560]];
const Q = [[1, 32], [9, 96], [13, 352], [17, 1600], [5, 2560], [41, 2560]];
// 16-bit floats: columns with and without a tail past the last 8.
const F = [[1, 8], [7, 13], [9, 64], [3, 37], [5, 2560]];
const TYPES = [['Q4_0', 2, Q], ['Q8_0', 8, Q], ['Q4_K', 12, K], ['Q5_K', 13, K], ['Q6_K', 14, K], ['F16', 1, F], ['BF16', 30, F]];

export const KERNEL_CASES = [];
let seed = 1;
for (const [name, id, shapes] of TYPES) {
  for (const [rows, cols] of shapes) {
    for (const tokens of [1, 2, 3, 5, 8]) KERNEL_CASES.push({ name, id, rows, cols, tokens, seed: seed++ });
  }
}

// Attention: head sizes with and without tails of 8 and 4 (Phi-2's 80 among them), 1 to 100 keys
// (the four-key groups and their tails).
export const ATTENTION_CASES = [];
for (const headDim of [1, 3, 4, 7, 8, 9, 16, 63, 80, 81, 128]) {
  for (const keys of [1, 2, 3, 4, 5, 8, 17, 100]) ATTENTION_CASES.push({ headDim, keys, seed: headDim * 1000 + keys });
}

/** Every case through a module's `exports`: the cases whose outputs differ, and how many outputs were compared. */
export function runParity(exports) {
  const failures = [];
  let outputs = 0;
  for (const c of KERNEL_CASES) {
    const bad = exports.phi2_simd128_parity(c.id, c.rows, c.cols, c.tokens, c.seed);
    if (bad !== 0) failures.push(`${c.name} ${c.rows}x${c.cols}, ${c.tokens} tokens: ${bad} outputs differ`);
    outputs += c.rows * c.tokens;
  }
  for (const c of ATTENTION_CASES) {
    const bad = exports.phi2_simd128_attention_parity(c.headDim, c.keys, c.seed);
    if (bad !== 0) failures.push(`attention head_dim ${c.headDim}, ${c.keys} keys: ${bad} outputs differ`);
  }
  return { failures, outputs };
}
