// The CPU behind a benchmark run, beyond the model string os.cpus() gives: every results writer
// (phi2-bench's machine line, section heading and key; bench/serve-load.mjs and
// bench/speculative.mjs's machine line) names it the same way.
import { readFileSync } from 'node:fs';

/**
 * What names a CPU beyond its model string, from Linux's /proc/cpuinfo text (first processor):
 * x86 vendor, family, model and stepping, or the Arm implementer and part; and the instruction
 * set extensions the engine's kernels (and V8's wasm code) choose between. Null when the text has
 * none of those. Cloud VMs often report a bare "AMD EPYC" or "Intel(R) Xeon(R) Processor" for
 * different generations (this project's "AMD EPYC" VMs had no AVX-VNNI on one day and were x86
 * family 26, Zen 5, with it on another), and speed differs between them.
 */
export function parseCpuinfo(text) {
  const first = String(text ?? '').split(/\n\s*\n/)[0];
  const field = (name) => {
    const m = first.match(new RegExp(`^${name}[ \\t]*:[ \\t]*(.*)$`, 'm'));
    return m ? m[1].trim() : null;
  };
  const family = field('cpu family');
  const model = field('model');
  const implementer = field('CPU implementer');
  const part = field('CPU part');
  const flags = new Set((field('flags') ?? field('Features') ?? '').split(/\s+/).filter(Boolean));
  const isa = CPU_FEATURES.filter((f) => flags.has(f));
  if (family !== null && /^\d+$/.test(family) && model !== null && /^\d+$/.test(model)) {
    const stepping = field('stepping');
    return { arch: 'x86', vendor: field('vendor_id'), family: Number(family), model: Number(model), stepping: stepping !== null && /^\d+$/.test(stepping) ? Number(stepping) : null, isa };
  }
  if (implementer && part) return { arch: 'arm', implementer, part, isa };
  return null;
}

/** The extensions worth naming (x86 /proc/cpuinfo flags, Arm Features), in this order. */
const CPU_FEATURES = ['avx2', 'fma', 'f16c', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'avx512_fp16', 'avx_vnni', 'amx_int8', 'amx_bf16', 'asimd', 'asimddp', 'i8mm', 'sve'];

/**
 * `cpuId` in words: "x86 family 26 model 2 stepping 1; avx2 fma … avx_vnni"; with `short`, the
 * generation alone ("family 26 model 2"), as section headings name it.
 */
export function describeCpuId(id, { short = false } = {}) {
  if (!id) return null;
  if (short) return id.arch === 'x86' ? `family ${id.family} model ${id.model}` : `implementer ${id.implementer} part ${id.part}`;
  const what = id.arch === 'x86' ? `x86 family ${id.family} model ${id.model}${id.stepping !== null ? ` stepping ${id.stepping}` : ''}` : `Arm implementer ${id.implementer} part ${id.part}`;
  return id.isa.length ? `${what}; ${id.isa.join(' ')}` : what;
}

/** This machine's [`parseCpuinfo`] (Linux), or null where /proc/cpuinfo cannot be read. */
export function readCpuId() {
  try {
    return parseCpuinfo(readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {
    return null;
  }
}
