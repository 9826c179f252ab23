// Reads a GGUF header (metadata skipped, tensor infos kept) to know how many bytes of weights one
// decode step reads, and the file's tensor types. Reads only the header, in growing chunks.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

// ggml type → [elements per block, bytes per block]
const BLOCK = {
  0: ['F32', 1, 4], 1: ['F16', 1, 2], 2: ['Q4_0', 32, 18], 3: ['Q4_1', 32, 20], 6: ['Q5_0', 32, 22], 7: ['Q5_1', 32, 24],
  8: ['Q8_0', 32, 34], 9: ['Q8_1', 32, 36], 10: ['Q2_K', 256, 84], 11: ['Q3_K', 256, 110], 12: ['Q4_K', 256, 144],
  13: ['Q5_K', 256, 176], 14: ['Q6_K', 256, 210], 15: ['Q8_K', 256, 292], 30: ['BF16', 1, 2],
};

export function readGgufInfo(file) {
  const fd = openSync(file, 'r');
  try {
    const size = fstatSync(fd).size;
    let buf = Buffer.alloc(0);
    const need = (end) => {
      if (end <= buf.length) return;
      if (end > size) throw new Error(`${file}: truncated GGUF header`);
      const n = Math.min(size, Math.max(end, buf.length * 2, 1 << 20));
      const next = Buffer.alloc(n);
      buf.copy(next);
      readSync(fd, next, buf.length, n - buf.length, buf.length);
      buf = next;
    };
    let at = 0;
    const u32 = () => (need(at + 4), (at += 4), buf.readUInt32LE(at - 4));
    const u64 = () => (need(at + 8), (at += 8), Number(buf.readBigUInt64LE(at - 8)));
    const str = () => {
      const n = u64();
      need(at + n);
      at += n;
      return buf.toString('utf8', at - n, at);
    };
    const SIZES = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
    const skip = (type) => {
      if (type === 8) return void str();
      if (type === 9) {
        const et = u32();
        const n = u64();
        if (et === 8 || et === 9) for (let i = 0; i < n; i++) skip(et);
        else { need(at + n * SIZES[et]); at += n * SIZES[et]; }
        return;
      }
      if (!(type in SIZES)) throw new Error(`${file}: unknown GGUF value type ${type}`);
      need(at + SIZES[type]);
      at += SIZES[type];
    };
    if (u32() !== 0x46554747) throw new Error(`${file} is not a GGUF file`);
    const version = u32();
    const nTensors = u64();
    const nKv = u64();
    let architecture = null;
    for (let i = 0; i < nKv; i++) {
      const key = str();
      const type = u32();
      if (key === 'general.architecture' && type === 8) architecture = str();
      else skip(type);
    }
    const tensors = [];
    for (let i = 0; i < nTensors; i++) {
      const name = str();
      const nd = u32();
      const ne = [];
      for (let d = 0; d < nd; d++) ne.push(u64());
      const type = u32();
      u64(); // offset
      const b = BLOCK[type];
      const n = ne.reduce((a, x) => a * x, 1);
      tensors.push({ name, ne, type: b ? b[0] : `type${type}`, bytes: b ? (n / b[1]) * b[2] : null });
    }
    return { version, architecture, size, tensors };
  } finally {
    closeSync(fd);
  }
}

/** Weight bytes one decode step reads (every tensor but the token embedding, of which one row). */
export function decodeBytesPerToken(info) {
  let sum = 0;
  for (const t of info.tensors) {
    if (t.bytes === null) return null;
    if (t.name !== 'token_embd.weight') sum += t.bytes;
  }
  return sum;
}

/**
 * Numbers the KV cache holds per position, over all layers (keys and values: their widths × the
 * layers), or null where the file does not tell. Per layer: the rows of `attn_k` and `attn_v`, or
 * of a fused `attn_qkv` less the query's (as many as its input width, the hidden size: true of
 * Phi-2). Layers are the `blk.N.` indices up to the highest; one with neither form gives null.
 */
export function kvValuesPerPosition(info) {
  const byName = new Map(info.tensors.map((t) => [t.name, t]));
  let layers = 0;
  for (const t of info.tensors) {
    const m = /^blk\.(\d+)\./.exec(t.name);
    if (m) layers = Math.max(layers, Number(m[1]) + 1);
  }
  let sum = 0;
  for (let l = 0; l < layers; l++) {
    const k = byName.get(`blk.${l}.attn_k.weight`);
    const v = byName.get(`blk.${l}.attn_v.weight`);
    const qkv = byName.get(`blk.${l}.attn_qkv.weight`);
    if (k && v) sum += k.ne[1] + v.ne[1];
    else if (qkv && qkv.ne[1] > qkv.ne[0]) sum += qkv.ne[1] - qkv.ne[0];
    else return null;
  }
  return sum > 0 ? sum : null;
}

/** "Q4_K ×97, Q5_K ×32, Q6_K ×17, F32 ×..." for the 2-D tensors. */
export function typeSummary(info) {
  const c = {};
  for (const t of info.tensors) if (t.ne.length >= 2) c[t.type] = (c[t.type] ?? 0) + 1;
  return Object.entries(c).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}×${v}`).join(' ');
}
