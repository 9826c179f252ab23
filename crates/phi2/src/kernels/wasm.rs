//! wasm32 SIMD128 kernels, following the scalar definition exactly: exact i32 block dots (four
//! blocks reduced at once by one tree), f32 scaling, block b accumulated in lane b % 8. Weight types without a SIMD tile
//! here run the scalar twin (compiled with simd128, which LLVM vectorises where it can).

use std::arch::wasm32::*;
use std::ops::Range;

use super::{f16_at, reduce8, scalar, Activations, OutPtr, WeightRef};
use crate::dtype::DType;

pub(super) fn matmul_rows(w: &WeightRef, act: &Activations, rows: Range<usize>, out: OutPtr) {
    if !matches!(w.dtype, DType::Q4_0 | DType::Q8_0) {
        return scalar::matmul_rows(w, act, rows, out);
    }
    for r in rows {
        let row = w.row(r);
        for t in 0..act.tokens {
            let v = if w.dtype == DType::Q4_0 { dot_q32::<false>(row, act, t) } else { dot_q32::<true>(row, act, t) };
            out.set(t, r, v);
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

/// Σ over 16 lanes of a[i]·b[i] (i8 × i8, widened to i16) as i32x4 partial sums.
#[inline(always)]
fn dot16(a_lo: v128, a_hi: v128, x: v128) -> v128 {
    i32x4_add(
        i32x4_dot_i16x8(a_lo, i16x8_extend_low_i8x16(x)),
        i32x4_dot_i16x8(a_hi, i16x8_extend_high_i8x16(x)),
    )
}

/// The exact i32 partial sums (4 lanes) of block `b`'s dot product, Q4_0 without the −8·Σx.
#[inline(always)]
fn block_partials<const SIGNED: bool>(row: &[u8], a: &Activations, t: usize, b: usize) -> v128 {
    let bytes = if SIGNED { 34 } else { 18 };
    let blk = &row[b * bytes + 2..(b + 1) * bytes];
    let x = &a.q[t * a.cols + 32 * b..t * a.cols + 32 * b + 32];
    // SAFETY: `blk` holds 16 (Q4_0) or 32 (Q8_0) bytes and `x` 32; v128 loads need no alignment.
    unsafe {
        let (x0, x1) = (v128_load(x.as_ptr() as *const v128), v128_load(x.as_ptr().add(16) as *const v128));
        let (w0, w1) = if SIGNED {
            (v128_load(blk.as_ptr() as *const v128), v128_load(blk.as_ptr().add(16) as *const v128))
        } else {
            let q = v128_load(blk.as_ptr() as *const v128);
            let m = u8x16_splat(0x0F);
            (v128_and(q, m), v128_and(u8x16_shr(q, 4), m))
        };
        // Widened to i16 (Q4_0 nibbles are 0..15: zero- and sign-extension agree).
        i32x4_add(
            dot16(i16x8_extend_low_i8x16(w0), i16x8_extend_high_i8x16(w0), x0),
            dot16(i16x8_extend_low_i8x16(w1), i16x8_extend_high_i8x16(w1), x1),
        )
    }
}

/// One output element: blocks in lanes b % 8 (two f32x4: lanes 0..4 and 4..8), 4 blocks at a
/// time through one tree, then the fixed lane reduction.
fn dot_q32<const SIGNED: bool>(row: &[u8], a: &Activations, t: usize) -> f32 {
    let bytes = if SIGNED { 34 } else { 18 };
    let nb = a.cols / 32;
    let mut acc = [f32x4_splat(0.0); 2];
    let quads = nb / 4;
    for q in 0..quads {
        let b0 = 4 * q;
        let v: [v128; 4] = std::array::from_fn(|i| block_partials::<SIGNED>(row, a, t, b0 + i));
        let mut isum = tree4(&v);
        let bi = t * nb + b0;
        if !SIGNED {
            let sx = i32x4(a.s[bi], a.s[bi + 1], a.s[bi + 2], a.s[bi + 3]);
            isum = i32x4_sub(isum, i32x4_shl(sx, 3));
        }
        let s: [f32; 4] = std::array::from_fn(|i| f16_at(row, (b0 + i) * bytes) * a.d[bi + i]);
        let p = f32x4_mul(f32x4(s[0], s[1], s[2], s[3]), f32x4_convert_i32x4(isum));
        acc[q % 2] = f32x4_add(acc[q % 2], p);
    }
    let mut lanes = [0f32; 8];
    for (h, v) in acc.iter().enumerate() {
        lanes[4 * h] = f32x4_extract_lane::<0>(*v);
        lanes[4 * h + 1] = f32x4_extract_lane::<1>(*v);
        lanes[4 * h + 2] = f32x4_extract_lane::<2>(*v);
        lanes[4 * h + 3] = f32x4_extract_lane::<3>(*v);
    }
    for b in 4 * quads..nb {
        lanes[b % 8] += if SIGNED { scalar::block_q8_0(row, a, t, b) } else { scalar::block_q4_0(row, a, t, b) };
    }
    reduce8(&lanes)
}
