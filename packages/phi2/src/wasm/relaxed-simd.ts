/**
 * Whether this JS engine runs WebAssembly relaxed SIMD correctly enough for the relaxed build
 * (pkg-relaxed: pkg-mt plus `+relaxed-simd`). Its quantized products use
 * `i32x4.relaxed_dot_i8x16_i7x16_add_s` with second operands in 0..127, where the instruction is
 * exact on every conforming implementation. Validation alone is not enough: Node 20's V8 (behind
 * --experimental-wasm-relaxed-simd) accepts the instruction and computes other numbers. So a tiny
 * module runs it once on inputs from memory (no constant folding) and all four lanes are checked.
 */

// (module (memory (export "m") 1)
//   (func (export "f")
//     (v128.store (i32.const 48)
//       (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load (i32.const 0)) (v128.load offset=16 (i32.const 0))
//         (v128.load offset=32 (i32.const 0))))))
// prettier-ignore
const MODULE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
  0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type section: () -> ()
  0x03, 0x02, 0x01, 0x00, // function section: f has type 0
  0x05, 0x03, 0x01, 0x00, 0x01, // memory section: one page
  0x07, 0x09, 0x02, 0x01, 0x6d, 0x02, 0x00, 0x01, 0x66, 0x00, 0x00, // exports "m" (memory 0), "f" (func 0)
  0x0a, 0x1f, 0x01, 0x1d, 0x00, // code section: one body of 29 bytes, no locals
  0x41, 0x30, // i32.const 48 (the store's address)
  0x41, 0x00, 0xfd, 0x00, 0x04, 0x00, // v128.load offset=0: a (i8x16)
  0x41, 0x00, 0xfd, 0x00, 0x04, 0x10, // v128.load offset=16: b (i7x16)
  0x41, 0x00, 0xfd, 0x00, 0x04, 0x20, // v128.load offset=32: c (i32x4)
  0xfd, 0x93, 0x02, // i32x4.relaxed_dot_i8x16_i7x16_add_s (0xfd 0x113)
  0xfd, 0x0b, 0x04, 0x00, // v128.store offset=0
  0x0b, // end
])

// Signed a over its whole range, b inside 0..127 (the operands the engine's kernels use).
const A = [-128, 127, -5, 3, 1, -1, 64, -64, 100, -100, 7, 0, -37, 55, 12, -9]
const B = [127, 100, 0, 64, 1, 2, 3, 4, 127, 127, 31, 63, 9, 0, 126, 5]
const C = [1000, -7, 123456, -99999]

/** `{ ok: true }` when relaxed SIMD validates and computes the expected lanes; else why not. */
export function relaxedSimdCheck(): { ok: boolean; reason: string } {
  if (typeof WebAssembly !== 'object' || !WebAssembly.validate(MODULE)) {
    return { ok: false, reason: 'relaxed SIMD not supported by this JS engine' }
  }
  try {
    const inst = new WebAssembly.Instance(new WebAssembly.Module(MODULE))
    const memory = inst.exports.m as WebAssembly.Memory
    const bytes = new Uint8Array(memory.buffer)
    bytes.set(new Uint8Array(Int8Array.from(A).buffer), 0)
    bytes.set(new Uint8Array(Int8Array.from(B).buffer), 16)
    bytes.set(new Uint8Array(Int32Array.from(C).buffer), 32)
    ;(inst.exports.f as () => void)()
    const got = new Int32Array(memory.buffer, 48, 4)
    for (let j = 0; j < 4; j++) {
      let want = C[j]!
      for (let k = 0; k < 4; k++) want += A[4 * j + k]! * B[4 * j + k]!
      if (got[j] !== want) {
        return { ok: false, reason: `relaxed SIMD validates but computes wrong results here (lane ${j}: ${got[j]}, expected ${want})` }
      }
    }
    return { ok: true, reason: 'relaxed SIMD' }
  } catch (err) {
    return { ok: false, reason: `relaxed SIMD self-test failed (${err instanceof Error ? err.message : String(err)})` }
  }
}
