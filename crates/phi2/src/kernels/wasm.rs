//! wasm32 SIMD128 kernels: tiles of `R` rows × `C` tokens (`R·C = 4`, one output element per
//! f32 lane), following the scalar definition exactly (exact i32 block dots reduced per output
//! element, then f32 scaling and accumulation in block order). Weight types without a SIMD tile
//! here run the scalar twin (compiled with simd128, which LLVM vectorises where it can).

use std::arch::wasm32::*;
use std::ops::Range;

use super::{f16_at, scalar, Activations, OutPtr, WeightRef};
use crate::dtype::DType;

pub(super) fn matmul_rows(w: &WeightRef, act: &Activations, rows: Range<usize>, out: OutPtr) {
    if !matches!(w.dtype, DType::Q4_0 | DType::Q8_0) {
        return scalar::matmul_rows(w, act, rows, out);
    }
    let mut t0 = 0;
    while t0 < act.tokens {
        let c = if act.tokens - t0 >= 2 { 2 } else { 1 };
        match c {
            2 => tiles::<2, 2>(w, act, rows.clone(), t0, out),
            _ => tiles::<4, 1>(w, act, rows.clone(), t0, out),
        }
        t0 += c;
    }
}

fn tiles<const R: usize, const C: usize>(w: &WeightRef, act: &Activations, rows: Range<usize>, t0: usize, out: OutPtr) {
    let mut r0 = rows.start;
    while r0 + R <= rows.end {
        let acc = match w.dtype {
            DType::Q4_0 => tile_q32::<R, C, false>(w, act, r0, t0),
            _ => tile_q32::<R, C, true>(w, act, r0, t0),
        };
        for (p, v) in acc.iter().enumerate() {
            out.set(t0 + p % C, r0 + p / C, *v);
        }
        r0 += R;
    }
    for r in r0..rows.end {
        for t in t0..t0 + C {
            out.set(t, r, scalar::dot(w.dtype, w.row(r), act, t));
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

#[inline(always)]
fn tile_q32<const R: usize, const C: usize, const SIGNED: bool>(w: &WeightRef, a: &Activations, r0: usize, t0: usize) -> [f32; 4] {
    let bytes = if SIGNED { 34 } else { 18 };
    let nb = w.cols / 32;
    let rows: [&[u8]; R] = std::array::from_fn(|r| w.row(r0 + r));
    let mut acc = f32x4_splat(0.0);
    for b in 0..nb {
        // SAFETY: each activation row holds `cols` values; block b's 32 bytes are in bounds.
        let xs: [[v128; 2]; C] = std::array::from_fn(|c| unsafe {
            let p = a.q.as_ptr().add((t0 + c) * a.cols + 32 * b) as *const v128;
            [v128_load(p), v128_load(p.add(1))]
        });
        let mut v = [i32x4_splat(0); 4];
        for r in 0..R {
            let blk = &rows[r][b * bytes + 2..(b + 1) * bytes];
            // SAFETY: `blk` holds the block's 16 (Q4_0) or 32 (Q8_0) weight bytes.
            let (w0, w1) = unsafe {
                if SIGNED {
                    (v128_load(blk.as_ptr() as *const v128), v128_load(blk.as_ptr().add(16) as *const v128))
                } else {
                    let q = v128_load(blk.as_ptr() as *const v128);
                    let m = u8x16_splat(0x0F);
                    (v128_and(q, m), v128_and(u8x16_shr(q, 4), m))
                }
            };
            // Weights widened to i16 (Q4_0 nibbles are 0..15: zero- and sign-extension agree).
            let (w0l, w0h) = (i16x8_extend_low_i8x16(w0), i16x8_extend_high_i8x16(w0));
            let (w1l, w1h) = (i16x8_extend_low_i8x16(w1), i16x8_extend_high_i8x16(w1));
            for c in 0..C {
                v[r * C + c] = i32x4_add(dot16(w0l, w0h, xs[c][0]), dot16(w1l, w1h, xs[c][1]));
            }
        }
        let mut isum = tree4(&v);
        if !SIGNED {
            let sx: [i32; 4] = std::array::from_fn(|p| a.s[b * a.tokens + t0 + p % C]);
            isum = i32x4_sub(isum, i32x4_shl(i32x4(sx[0], sx[1], sx[2], sx[3]), 3));
        }
        let s: [f32; 4] = std::array::from_fn(|p| f16_at(rows[p / C], b * bytes) * a.d[b * a.tokens + t0 + p % C]);
        let sv = f32x4(s[0], s[1], s[2], s[3]);
        acc = f32x4_add(acc, f32x4_mul(sv, f32x4_convert_i32x4(isum)));
    }
    [f32x4_extract_lane::<0>(acc), f32x4_extract_lane::<1>(acc), f32x4_extract_lane::<2>(acc), f32x4_extract_lane::<3>(acc)]
}
