//! wasm32 SIMD128 kernels, following the scalar definition exactly: exact i32 block dots (four
//! blocks reduced at once by one tree), f32 scaling, block b accumulated in lane b % 8. Weight
//! types without a SIMD tile here run the scalar twin (compiled with simd128, which LLVM
//! vectorises where it can).
//!
//! What makes them fast in V8 (measured on Q4_0 decode, ~5x over a straightforward version):
//! the activations come pre-widened to i16 (`Activations::q16`), so a block costs four
//! `i32x4.dot_i16x8_s` and no per-token widening; the block scales are widened from f16 four at
//! a time with integer SIMD (no branchy per-block software conversion); no bounds checks and no
//! arrays in linear memory in the inner loop; and with several tokens each block's widened
//! weights serve two tokens.

use std::arch::wasm32::*;
use std::ops::Range;

use super::{reduce8, scalar, Activations, OutPtr, WeightRef};
use crate::dtype::DType;

pub(super) fn matmul_rows(w: &WeightRef, act: &Activations, rows: Range<usize>, out: OutPtr) {
    if !matches!(w.dtype, DType::Q4_0 | DType::Q8_0) {
        return scalar::matmul_rows(w, act, rows, out);
    }
    assert!(act.q16.len() >= act.tokens * act.cols, "activations were not widened for SIMD128");
    for r in rows {
        let row = w.row(r);
        assert!(row.len() >= act.cols / 32 * if w.dtype == DType::Q8_0 { 34 } else { 18 });
        let mut t0 = 0;
        while t0 < act.tokens {
            let c = if act.tokens - t0 >= 2 { 2 } else { 1 };
            // SAFETY: the row holds cols / 32 blocks and the activations tokens × cols values
            // (asserted above); every access below stays inside them.
            unsafe {
                match (w.dtype, c) {
                    (DType::Q4_0, 2) => tile::<false, 2>(row, act, t0, r, out),
                    (DType::Q4_0, _) => tile::<false, 1>(row, act, t0, r, out),
                    (_, 2) => tile::<true, 2>(row, act, t0, r, out),
                    _ => tile::<true, 1>(row, act, t0, r, out),
                }
            }
            t0 += c;
        }
    }
}

/// Four i32x4 vectors → one i32x4 of their lane sums (exact).
#[inline(always)]
fn tree4(v: &[v128; 4]) -> v128 {
    let s01 = i32x4_add(i32x4_shuffle::<0, 4, 1, 5>(v[0], v[1]), i32x4_shuffle::<2, 6, 3, 7>(v[0], v[1]));
    let s23 = i32x4_add(i32x4_shuffle::<0, 4, 1, 5>(v[2], v[3]), i32x4_shuffle::<2, 6, 3, 7>(v[2], v[3]));
    i32x4_add(i32x4_shuffle::<0, 1, 4, 5>(s01, s23), i32x4_shuffle::<2, 3, 6, 7>(s01, s23))
}

/// The 32 weights of the block whose quants start at `q`, widened to i16 in the order of the
/// block's activations (Q4_0: the low nibbles of bytes 0..16 are values 0..16, the high ones
/// 16..32; unsigned 0..15, the −8 is applied to the sum).
#[inline(always)]
unsafe fn weights16<const SIGNED: bool>(q: *const u8) -> [v128; 4] {
    if SIGNED {
        let (w0, w1) = (v128_load(q as *const v128), v128_load(q.add(16) as *const v128));
        [i16x8_extend_low_i8x16(w0), i16x8_extend_high_i8x16(w0), i16x8_extend_low_i8x16(w1), i16x8_extend_high_i8x16(w1)]
    } else {
        let b = v128_load(q as *const v128);
        let (lo, hi) = (u16x8_extend_low_u8x16(b), u16x8_extend_high_u8x16(b));
        let m = u16x8_splat(0x0F);
        [v128_and(lo, m), v128_and(hi, m), u16x8_shr(lo, 4), u16x8_shr(hi, 4)]
    }
}

/// The exact i32 partial sums (4 lanes) of one block: widened weights · the token's 32
/// activations at `x` (i16).
#[inline(always)]
unsafe fn block_dot(w: &[v128; 4], x: *const i16) -> v128 {
    let x = x as *const v128;
    i32x4_add(
        i32x4_add(i32x4_dot_i16x8(w[0], v128_load(x)), i32x4_dot_i16x8(w[1], v128_load(x.add(1)))),
        i32x4_add(i32x4_dot_i16x8(w[2], v128_load(x.add(2))), i32x4_dot_i16x8(w[3], v128_load(x.add(3)))),
    )
}

/// f16 bits (the low 16 bits of each i32 lane) → f32, exactly as `half` converts them: finite
/// values (subnormals too) by moving exponent and mantissa into place and scaling by 2^112,
/// which is exact; infinities and NaNs (quieted) by setting the exponent.
#[inline(always)]
fn f16x4_to_f32(h: v128) -> v128 {
    let sign = i32x4_shl(v128_and(h, i32x4_splat(0x8000)), 16);
    let em = v128_and(h, i32x4_splat(0x7FFF));
    let moved = i32x4_shl(em, 13);
    let finite = f32x4_mul(moved, f32x4_splat(f32::from_bits(0x7780_0000))); // 2^112
    let special = v128_or(
        v128_or(moved, i32x4_splat(0x7F80_0000)),
        v128_and(i32x4_gt(em, i32x4_splat(0x7C00)), i32x4_splat(0x0040_0000)),
    );
    v128_or(v128_bitselect(special, finite, i32x4_ge(em, i32x4_splat(0x7C00))), sign)
}

/// Row `r` × tokens `t0 .. t0 + C`. Written so that LLVM keeps everything in locals (constant
/// indices only; a quad's four blocks spelled out).
#[inline(always)]
unsafe fn tile<const SIGNED: bool, const C: usize>(row: &[u8], a: &Activations, t0: usize, r: usize, out: OutPtr) {
    let bytes = if SIGNED { 34 } else { 18 };
    let nb = a.cols / 32;
    let quads = nb / 4;
    let base = row.as_ptr();
    let h = |b: usize| u16::from_le_bytes([*base.add(b * bytes), *base.add(b * bytes + 1)]) as i32;
    // One quad of blocks b0 .. b0 + 4 onto `acc` (the f32 lanes of those blocks) for every token.
    let quad = |b0: usize, acc: &mut [v128; C]| {
        let wa = weights16::<SIGNED>(base.add(b0 * bytes + 2));
        let wb = weights16::<SIGNED>(base.add((b0 + 1) * bytes + 2));
        let wc = weights16::<SIGNED>(base.add((b0 + 2) * bytes + 2));
        let wd = weights16::<SIGNED>(base.add((b0 + 3) * bytes + 2));
        let dw = f16x4_to_f32(i32x4(h(b0), h(b0 + 1), h(b0 + 2), h(b0 + 3)));
        for (c, acc_c) in acc.iter_mut().enumerate() {
            let t = t0 + c;
            let x = a.q16.as_ptr().add(t * a.cols + 32 * b0);
            let mut isum = tree4(&[block_dot(&wa, x), block_dot(&wb, x.add(32)), block_dot(&wc, x.add(64)), block_dot(&wd, x.add(96))]);
            let bi = t * nb + b0;
            if !SIGNED {
                isum = i32x4_sub(isum, i32x4_shl(v128_load(a.s.as_ptr().add(bi) as *const v128), 3));
            }
            let s = f32x4_mul(dw, v128_load(a.d.as_ptr().add(bi) as *const v128));
            *acc_c = f32x4_add(*acc_c, f32x4_mul(s, f32x4_convert_i32x4(isum)));
        }
    };
    // Lanes 0..4 (even quads) and 4..8 (odd quads) of each token.
    let mut lo = [f32x4_splat(0.0); C];
    let mut hi = [f32x4_splat(0.0); C];
    let mut q = 0;
    while q + 2 <= quads {
        quad(4 * q, &mut lo);
        quad(4 * q + 4, &mut hi);
        q += 2;
    }
    if q < quads {
        quad(4 * q, &mut lo);
    }
    for c in 0..C {
        let t = t0 + c;
        let mut lanes = [0f32; 8];
        for (hh, v) in [lo[c], hi[c]].iter().enumerate() {
            lanes[4 * hh] = f32x4_extract_lane::<0>(*v);
            lanes[4 * hh + 1] = f32x4_extract_lane::<1>(*v);
            lanes[4 * hh + 2] = f32x4_extract_lane::<2>(*v);
            lanes[4 * hh + 3] = f32x4_extract_lane::<3>(*v);
        }
        for b in 4 * quads..nb {
            lanes[b % 8] += if SIGNED { scalar::block_q8_0(row, a, t, b) } else { scalar::block_q4_0(row, a, t, b) };
        }
        out.set(t, r, reduce8(&lanes));
    }
}
