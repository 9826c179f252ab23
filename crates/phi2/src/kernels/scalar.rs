//! The scalar twin: the definition every SIMD kernel must reproduce bit for bit (see the module
//! notes of [`super`]). Plain, obviously-correct code; one output element at a time.

use std::ops::Range;

use half::{bf16, f16};

use super::{f16_at, reduce8, scale_min_k4, Activations, OutPtr, WeightRef};
use crate::dtype::DType;

pub(crate) fn matmul_rows(w: &WeightRef, act: &Activations, rows: Range<usize>, out: OutPtr) {
    for r in rows {
        let row = w.row(r);
        for t in 0..act.tokens {
            out.set(t, r, dot(w.dtype, row, act, t));
        }
    }
}

/// One output element: weight row `row` (file bytes) · activation row `t`.
pub fn dot(dtype: DType, row: &[u8], act: &Activations, t: usize) -> f32 {
    match dtype {
        DType::Q4_0 => dot_q4_0(row, act, t),
        DType::Q8_0 => dot_q8_0(row, act, t),
        DType::Q4K => dot_q4_k(row, act, t),
        DType::Q5K => dot_q5_k(row, act, t),
        DType::Q6K => dot_q6_k(row, act, t),
        DType::F16 | DType::BF16 => finish_float([0f32; 8], row, &act.f[t * act.cols..(t + 1) * act.cols], 0, dtype == DType::BF16),
        other => unreachable!("no kernel for {other}"),
    }
}

/// Q4_0 (18 B / 32): `isum = Σ (q − 8) · x`.
fn dot_q4_0(row: &[u8], a: &Activations, t: usize) -> f32 {
    finish_q32::<false>([0f32; 8], row, a, t, 0)
}

/// Q4_0 / Q8_0 (`SIGNED`) blocks `from..` of `row` against token `t`, each added to lane b % 8,
/// then [`reduce8`]: the whole definition with `from` = 0 and empty lanes, or the end of a SIMD
/// kernel that did the blocks before `from` in the same lanes.
#[inline(always)]
pub(crate) fn finish_q32<const SIGNED: bool>(mut lanes: [f32; 8], row: &[u8], a: &Activations, t: usize, from: usize) -> f32 {
    for b in from..a.cols / 32 {
        lanes[b % 8] += if SIGNED { block_q8_0(row, a, t, b) } else { block_q4_0(row, a, t, b) };
    }
    reduce8(&lanes)
}

/// The f32 value of Q4_0 block `b` of `row` against token `t`.
#[inline(always)]
pub(crate) fn block_q4_0(row: &[u8], a: &Activations, t: usize, b: usize) -> f32 {
    let blk = &row[18 * b..18 * b + 18];
    let x = &a.q[t * a.cols + 32 * b..t * a.cols + 32 * b + 32];
    let mut isum = 0i32;
    for j in 0..16 {
        isum += ((blk[2 + j] & 0xF) as i32 - 8) * x[j] as i32;
        isum += ((blk[2 + j] >> 4) as i32 - 8) * x[j + 16] as i32;
    }
    let s = f16_at(blk, 0) * a.d[t * (a.cols / 32) + b];
    s * isum as f32
}

/// Q8_0 (34 B / 32): `isum = Σ q · x`.
fn dot_q8_0(row: &[u8], a: &Activations, t: usize) -> f32 {
    finish_q32::<true>([0f32; 8], row, a, t, 0)
}

/// The f32 value of Q8_0 block `b` of `row` against token `t`.
#[inline(always)]
pub(crate) fn block_q8_0(row: &[u8], a: &Activations, t: usize, b: usize) -> f32 {
    let blk = &row[34 * b..34 * b + 34];
    let x = &a.q[t * a.cols + 32 * b..t * a.cols + 32 * b + 32];
    let isum: i32 = (0..32).map(|j| (blk[2 + j] as i8) as i32 * x[j] as i32).sum();
    let s = f16_at(blk, 0) * a.d[t * (a.cols / 32) + b];
    s * isum as f32
}

/// Q4_K / Q5_K super-block value from its exact integer parts.
#[inline(always)]
fn k_value(d: f32, dmin: f32, dx: f32, isum: i32, msum: i32) -> f32 {
    let a = (d * dx) * isum as f32;
    let m = (dmin * dx) * msum as f32;
    a - m
}

/// Q4_K (144 B / 256): `isum = Σ_j sc_j · Σ q · x`, `msum = Σ_j m_j · Σ x` over 8 sub-blocks.
fn dot_q4_k(row: &[u8], a: &Activations, t: usize) -> f32 {
    let nb = a.cols / 256;
    let xq = &a.q[t * a.cols..(t + 1) * a.cols];
    let mut acc = 0f32;
    for (b, blk) in row.chunks_exact(144).enumerate() {
        let x = &xq[256 * b..256 * b + 256];
        let bs = &a.bsums[(t * nb + b) * 16..(t * nb + b) * 16 + 16];
        let (scales, qs) = (&blk[4..16], &blk[16..144]);
        let (mut isum, mut msum) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, scales);
            let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            let sh = 4 * (j % 2);
            let dot: i32 = (0..32).map(|l| ((q[l] >> sh) & 0xF) as i32 * x[32 * j + l] as i32).sum();
            isum += sc as i32 * dot;
            msum += m as i32 * (bs[2 * j] + bs[2 * j + 1]);
        }
        acc += k_value(f16_at(blk, 0), f16_at(blk, 2), a.d[b * a.tokens + t], isum, msum);
    }
    acc
}

/// Q5_K (176 B / 256): as Q4_K with a fifth bit per value in `qh`.
fn dot_q5_k(row: &[u8], a: &Activations, t: usize) -> f32 {
    let nb = a.cols / 256;
    let xq = &a.q[t * a.cols..(t + 1) * a.cols];
    let mut acc = 0f32;
    for (b, blk) in row.chunks_exact(176).enumerate() {
        let x = &xq[256 * b..256 * b + 256];
        let bs = &a.bsums[(t * nb + b) * 16..(t * nb + b) * 16 + 16];
        let (scales, qh, qs) = (&blk[4..16], &blk[16..48], &blk[48..176]);
        let (mut isum, mut msum) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, scales);
            let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            let sh = 4 * (j % 2);
            let dot: i32 = (0..32)
                .map(|l| ((((q[l] >> sh) & 0xF) | (((qh[l] >> j) & 1) << 4)) as i32) * x[32 * j + l] as i32)
                .sum();
            isum += sc as i32 * dot;
            msum += m as i32 * (bs[2 * j] + bs[2 * j + 1]);
        }
        acc += k_value(f16_at(blk, 0), f16_at(blk, 2), a.d[b * a.tokens + t], isum, msum);
    }
    acc
}

/// Q6_K (210 B / 256): `isum = Σ_j sc_j · Σ (q − 32) · x` over 16 sub-blocks of 16.
fn dot_q6_k(row: &[u8], a: &Activations, t: usize) -> f32 {
    let xq = &a.q[t * a.cols..(t + 1) * a.cols];
    let mut acc = 0f32;
    for (b, blk) in row.chunks_exact(210).enumerate() {
        let x = &xq[256 * b..256 * b + 256];
        let mut isum = 0i32;
        for e in 0..256 {
            let (n, k) = (e / 128, e % 128);
            let (grp, l) = (k / 32, k % 32);
            let ql = blk[64 * n + l + 32 * (grp % 2)];
            let lo = if grp < 2 { ql & 0xF } else { ql >> 4 };
            let hi = (blk[128 + 32 * n + l] >> (2 * grp)) & 3;
            let q = (lo | (hi << 4)) as i32 - 32;
            isum += (blk[192 + e / 16] as i8) as i32 * q * x[e] as i32;
        }
        acc += (f16_at(blk, 208) * a.d[b * a.tokens + t]) * isum as f32;
    }
    acc
}

/// F16 / BF16 (`bf`) rows: 8 lanes, element i in lane i % 8, then [`reduce8`]. Adds the products
/// of elements `from..` of weight row `row` and activations `x` to `lanes` and reduces them: the
/// whole definition with `from` = 0 and empty lanes, or the end of a SIMD kernel that did the
/// full groups of 8 before `from`.
pub(crate) fn finish_float(mut lanes: [f32; 8], row: &[u8], x: &[f32], from: usize, bf: bool) -> f32 {
    for i in from..x.len() {
        let bits = u16::from_le_bytes([row[2 * i], row[2 * i + 1]]);
        let w = if bf { bf16::from_bits(bits).to_f32() } else { f16::from_bits(bits).to_f32() };
        // The product of two 16-bit floats is exact in f32: mul-then-add equals a fused one.
        lanes[i % 8] += w * x[i];
    }
    reduce8(&lanes)
}
