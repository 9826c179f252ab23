//! aarch64 NEON kernels, with the `sdot` dot product (ARMv8.2 dotprod: Apple M-series, Graviton
//! 2+, Ampere, Cortex-A76+) where the CPU has it and plain NEON widening multiplies otherwise.
//! They follow the scalar definition exactly (see [`super`]):
//!
//! - Q4_0 / Q8_0: each block's integer dot product is exact (i32); four blocks are reduced at
//!   once by pairwise adds into one i32x4 of block sums, scaled in f32 (`d_w · d_x`, then times
//!   the sum, no fused multiply-add) and added to two f32x4 accumulators that hold lanes 0..4
//!   and 4..8 of the definition (block b in lane b % 8). A tail of blocks that does not fill a
//!   group of 8 is added lane by lane after them, then [`reduce8`].
//! - K-quants: exact i32 super-block sums, then the scalar twin's f32 operations in its order.
//! - F16 / BF16: the weights widened exactly to f32 (integer steps, as `half` converts them),
//!   elements 8k..8k+4 in one f32x4 and 8k+4..8k+8 in another (lane i % 8); a fused
//!   multiply-add is exact here (a product of two 16-bit floats fits f32), then [`reduce8`].
//!
//! Each output row is read once per tile of up to 4 tokens (its weights decoded once for all of
//! them); rows are split over the pool by the caller.
//!
//! The `sdot` instruction is written as inline assembly: its intrinsic (`vdotq_s32`) is not
//! stable Rust. Without dotprod, `smull` + `sadalp` give the same exact i32 sums of 16 products
//! (a product of two i8 fits i16).
//!
//! Checked here under qemu (scripts/test-aarch64.sh: parity with the scalar twin for both sets,
//! and the engine's golden tests); no ARM hardware was at hand to time them.

use std::arch::aarch64::*;
use std::arch::asm;
use std::ops::Range;

use super::attention::KvElem;
use super::{f16_at, reduce8, scalar, scale_min_k4, Activations, Family, OutPtr, WeightRef};
use crate::dtype::DType;

pub(super) fn dotprod_available() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// With `dot`, [`dotprod_available`] must hold (checked when the kernel set was chosen).
pub(super) fn matmul_rows(w: &WeightRef, act: &Activations, rows: Range<usize>, out: OutPtr, dot: bool) {
    // The kernels read these buffers unchecked: they must hold what `prepare` wrote for
    // `act.tokens` × `w.cols` (callers check the family and the columns).
    let (n, nb) = (act.tokens * act.cols, act.tokens * act.cols / Family::of(w.dtype).map_or(1, |f| f.block()));
    let sized = match Family::of(w.dtype) {
        Some(Family::Q8_0) => act.q.len() >= n && act.d.len() >= nb,
        Some(Family::Q8K) => act.q.len() >= n && act.d.len() >= nb && act.bsums.len() >= 16 * nb,
        Some(Family::F16 | Family::BF16) => act.f.len() >= n,
        None => false,
    };
    assert!(sized && rows.end <= w.rows, "neon: activations or rows out of range");
    // SAFETY: NEON is part of every aarch64 target; dotprod was checked for `dot` (above); the
    // buffers hold what the kernels read (asserted above).
    unsafe {
        if dot {
            rows_dotprod(w, act, rows, out)
        } else {
            rows_neon(w, act, rows, out)
        }
    }
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn rows_dotprod(w: &WeightRef, act: &Activations, rows: Range<usize>, out: OutPtr) {
    rows_impl::<true>(w, act, rows, out)
}

#[target_feature(enable = "neon")]
unsafe fn rows_neon(w: &WeightRef, act: &Activations, rows: Range<usize>, out: OutPtr) {
    rows_impl::<false>(w, act, rows, out)
}

#[inline(always)]
unsafe fn rows_impl<const DOT: bool>(w: &WeightRef, act: &Activations, rows: Range<usize>, out: OutPtr) {
    for r in rows {
        let row = w.row(r);
        let mut t0 = 0;
        while t0 < act.tokens {
            let c = match act.tokens - t0 {
                n if n >= 4 => 4,
                n if n >= 2 => 2,
                _ => 1,
            };
            match c {
                4 => tile::<4, DOT>(w.dtype, row, act, t0, r, out),
                2 => tile::<2, DOT>(w.dtype, row, act, t0, r, out),
                _ => tile::<1, DOT>(w.dtype, row, act, t0, r, out),
            }
            t0 += c;
        }
    }
}

/// Row `r` (bytes `row`) × tokens `t0 .. t0 + C`.
#[inline(always)]
unsafe fn tile<const C: usize, const DOT: bool>(dtype: DType, row: &[u8], a: &Activations, t0: usize, r: usize, out: OutPtr) {
    assert!(t0 + C <= a.tokens && row.len() == a.cols / dtype.block_size() * dtype.type_size());
    let y: [f32; C] = match dtype {
        DType::Q4_0 => row_q32::<C, DOT, false>(row, a, t0),
        DType::Q8_0 => row_q32::<C, DOT, true>(row, a, t0),
        DType::Q4K => row_qk::<C, DOT, false>(row, a, t0),
        DType::Q5K => row_qk::<C, DOT, true>(row, a, t0),
        DType::Q6K => row_q6k::<C, DOT>(row, a, t0),
        DType::F16 => row_float::<C, false>(row, a, t0),
        DType::BF16 => row_float::<C, true>(row, a, t0),
        other => unreachable!("no kernel for {other}"),
    };
    for (c, v) in y.into_iter().enumerate() {
        out.set(t0 + c, r, v);
    }
}

/// `acc + ` the products of the 16 i8 pairs of `a` and `b`, summed into i32 lanes (which
/// products go to which lane differs between the two ways; callers only use whole-vector sums).
#[inline(always)]
unsafe fn dot16<const DOT: bool>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    if DOT {
        sdot(acc, a, b)
    } else {
        let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let hi = vmull_high_s8(a, b);
        vpadalq_s16(vpadalq_s16(acc, lo), hi)
    }
}

/// `sdot acc.4s, a.16b, b.16b`: lane i of `acc` plus the four products of bytes 4i .. 4i + 4.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// The 8 f32 lanes of the definition from their two halves.
#[inline(always)]
unsafe fn lanes8(lo: float32x4_t, hi: float32x4_t) -> [f32; 8] {
    let mut lanes = [0f32; 8];
    vst1q_f32(lanes.as_mut_ptr(), lo);
    vst1q_f32(lanes.as_mut_ptr().add(4), hi);
    lanes
}

/// Four i32x4 vectors → the i32x4 of their lane sums (exact).
#[inline(always)]
unsafe fn sums4(v: [int32x4_t; 4]) -> int32x4_t {
    vpaddq_s32(vpaddq_s32(v[0], v[1]), vpaddq_s32(v[2], v[3]))
}

/// f16 bits (the low 16 bits of each u32 lane) → f32, exactly as `half` converts them: finite
/// values (subnormals too) by moving exponent and mantissa into place and scaling by 2^112,
/// which is exact; infinities and NaNs (quieted) by setting the exponent.
#[inline(always)]
unsafe fn f16x4_to_f32(h: uint32x4_t) -> float32x4_t {
    let sign = vshlq_n_u32::<16>(vandq_u32(h, vdupq_n_u32(0x8000)));
    let em = vandq_u32(h, vdupq_n_u32(0x7FFF));
    let moved = vshlq_n_u32::<13>(em);
    let finite = vreinterpretq_u32_f32(vmulq_f32(vreinterpretq_f32_u32(moved), vdupq_n_f32(f32::from_bits(0x7780_0000))));
    let quiet = vandq_u32(vcgtq_u32(em, vdupq_n_u32(0x7C00)), vdupq_n_u32(0x0040_0000));
    let special = vorrq_u32(vorrq_u32(moved, vdupq_n_u32(0x7F80_0000)), quiet);
    let v = vbslq_u32(vcgeq_u32(em, vdupq_n_u32(0x7C00)), special, finite);
    vreinterpretq_f32_u32(vorrq_u32(v, sign))
}

/// The 32 weights of a Q4_0 / Q8_0 block whose quants start at `q`, as two i8x16 in the order
/// of the block's activations (Q4_0: low nibbles are values 0..16, high ones 16..32, minus 8).
#[inline(always)]
unsafe fn block_weights<const SIGNED: bool>(q: *const u8) -> [int8x16_t; 2] {
    if SIGNED {
        [vld1q_s8(q as *const i8), vld1q_s8(q.add(16) as *const i8)]
    } else {
        let b = vld1q_u8(q);
        let eight = vdupq_n_s8(8);
        [
            vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0F))), eight),
            vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(b)), eight),
        ]
    }
}

/// Q4_0 / Q8_0 (`SIGNED`) row × C tokens.
#[inline(always)]
unsafe fn row_q32<const C: usize, const DOT: bool, const SIGNED: bool>(row: &[u8], a: &Activations, t0: usize) -> [f32; C] {
    let bytes = if SIGNED { 34 } else { 18 };
    let nb = a.cols / 32;
    let groups = nb / 8;
    let base = row.as_ptr();
    let zero = vdupq_n_f32(0.0);
    // acc[c][0]: lanes 0..4, acc[c][1]: lanes 4..8.
    let mut acc = [[zero; 2]; C];
    for g in 0..groups {
        for (half, b0) in [(0, 8 * g), (1, 8 * g + 4)] {
            let p = base.add(b0 * bytes);
            let w = [
                block_weights::<SIGNED>(p.add(2)),
                block_weights::<SIGNED>(p.add(bytes + 2)),
                block_weights::<SIGNED>(p.add(2 * bytes + 2)),
                block_weights::<SIGNED>(p.add(3 * bytes + 2)),
            ];
            let h = |k: usize| u16::from_le_bytes([*p.add(k * bytes), *p.add(k * bytes + 1)]) as u32;
            let dw = f16x4_to_f32(vld1q_u32([h(0), h(1), h(2), h(3)].as_ptr()));
            for (c, acc_c) in acc.iter_mut().enumerate() {
                let t = t0 + c;
                let x = a.q.as_ptr().add(t * a.cols + 32 * b0);
                let zi = vdupq_n_s32(0);
                let mut v = [zi; 4];
                for (k, vk) in v.iter_mut().enumerate() {
                    let xk = x.add(32 * k);
                    *vk = dot16::<DOT>(dot16::<DOT>(zi, w[k][0], vld1q_s8(xk)), w[k][1], vld1q_s8(xk.add(16)));
                }
                let isum = sums4(v);
                let s = vmulq_f32(dw, vld1q_f32(a.d.as_ptr().add(t * nb + b0)));
                acc_c[half] = vaddq_f32(acc_c[half], vmulq_f32(s, vcvtq_f32_s32(isum)));
            }
        }
    }
    let mut y = [0f32; C];
    for (c, acc_c) in acc.iter().enumerate() {
        y[c] = scalar::finish_q32::<SIGNED>(lanes8(acc_c[0], acc_c[1]), row, a, t0 + c, 8 * groups);
    }
    y
}

/// Σ_j m_j · (bsums[2j] + bsums[2j + 1]) over the 8 sub-blocks (exact).
#[inline(always)]
unsafe fn min_sum(bs: *const i32, m: &[i32; 8]) -> i32 {
    let lo = vpaddq_s32(vld1q_s32(bs), vld1q_s32(bs.add(4)));
    let hi = vpaddq_s32(vld1q_s32(bs.add(8)), vld1q_s32(bs.add(12)));
    vaddvq_s32(vaddq_s32(vmulq_s32(lo, vld1q_s32(m.as_ptr())), vmulq_s32(hi, vld1q_s32(m.as_ptr().add(4)))))
}

/// Q4_K / Q5_K (`FIVE`) row × C tokens.
#[inline(always)]
unsafe fn row_qk<const C: usize, const DOT: bool, const FIVE: bool>(row: &[u8], a: &Activations, t0: usize) -> [f32; C] {
    let bytes = if FIVE { 176 } else { 144 };
    let nb = a.cols / 256;
    let mut y = [0f32; C];
    for b in 0..nb {
        let blk = &row[bytes * b..bytes * (b + 1)];
        let (mut sc, mut m) = ([0i32; 8], [0i32; 8]);
        for j in 0..8 {
            let (s, mn) = scale_min_k4(j, &blk[4..16]);
            (sc[j], m[j]) = (s as i32, mn as i32);
        }
        let qs = blk.as_ptr().add(if FIVE { 48 } else { 16 });
        let qh = if FIVE { [vld1q_u8(blk.as_ptr().add(16)), vld1q_u8(blk.as_ptr().add(32))] } else { [vdupq_n_u8(0); 2] };
        let mut isum = [vdupq_n_s32(0); C];
        for pair in 0..4 {
            let q = [vld1q_u8(qs.add(32 * pair)), vld1q_u8(qs.add(32 * pair + 16))];
            for odd in 0..2 {
                let j = 2 * pair + odd;
                let w: [int8x16_t; 2] = std::array::from_fn(|i| {
                    let nib = if odd == 0 { vandq_u8(q[i], vdupq_n_u8(0x0F)) } else { vshrq_n_u8::<4>(q[i]) };
                    let v = if FIVE {
                        // The fifth bit of value l is bit j of qh[l].
                        vorrq_u8(nib, vandq_u8(vtstq_u8(qh[i], vdupq_n_u8(1 << j)), vdupq_n_u8(0x10)))
                    } else {
                        nib
                    };
                    vreinterpretq_s8_u8(v)
                });
                for (c, isum_c) in isum.iter_mut().enumerate() {
                    let x = a.q.as_ptr().add((t0 + c) * a.cols + 256 * b + 32 * j);
                    let d = dot16::<DOT>(dot16::<DOT>(vdupq_n_s32(0), w[0], vld1q_s8(x)), w[1], vld1q_s8(x.add(16)));
                    *isum_c = vmlaq_n_s32(*isum_c, d, sc[j]);
                }
            }
        }
        let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
        for (c, y_c) in y.iter_mut().enumerate() {
            let t = t0 + c;
            let msum = min_sum(a.bsums.as_ptr().add((t * nb + b) * 16), &m);
            let dx = a.d[b * a.tokens + t];
            // The scalar twin's `k_value`, operation for operation.
            let v = (d * dx) * vaddvq_s32(isum[c]) as f32;
            let mv = (dmin * dx) * msum as f32;
            *y_c += v - mv;
        }
    }
    y
}

/// Q6_K row × C tokens.
#[inline(always)]
unsafe fn row_q6k<const C: usize, const DOT: bool>(row: &[u8], a: &Activations, t0: usize) -> [f32; C] {
    let nb = a.cols / 256;
    let mut y = [0f32; C];
    for b in 0..nb {
        let blk = row.as_ptr().add(210 * b);
        let mut isum = [vdupq_n_s32(0); C];
        for n in 0..2 {
            let ql = blk.add(64 * n);
            let qh = [vld1q_u8(blk.add(128 + 32 * n)), vld1q_u8(blk.add(128 + 32 * n + 16))];
            for grp in 0..4 {
                for i in 0..2 {
                    // Values e = 128n + 32grp + 16i + (0..16): sub-block e / 16, one scale.
                    let lq = vld1q_u8(ql.add(32 * (grp % 2) + 16 * i));
                    let lo = if grp < 2 { vandq_u8(lq, vdupq_n_u8(0x0F)) } else { vshrq_n_u8::<4>(lq) };
                    let hi = vandq_u8(vshlq_u8(qh[i], vdupq_n_s8(-2 * grp as i8)), vdupq_n_u8(3));
                    let q = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, vshlq_n_u8::<4>(hi))), vdupq_n_s8(32));
                    let e = 128 * n + 32 * grp + 16 * i;
                    let scale = *blk.add(192 + e / 16) as i8 as i32;
                    for (c, isum_c) in isum.iter_mut().enumerate() {
                        let x = a.q.as_ptr().add((t0 + c) * a.cols + 256 * b + e);
                        *isum_c = vmlaq_n_s32(*isum_c, dot16::<DOT>(vdupq_n_s32(0), q, vld1q_s8(x)), scale);
                    }
                }
            }
        }
        let d = f16_at(std::slice::from_raw_parts(blk, 210), 208);
        for (c, y_c) in y.iter_mut().enumerate() {
            let t = t0 + c;
            *y_c += (d * a.d[b * a.tokens + t]) * vaddvq_s32(isum[c]) as f32;
        }
    }
    y
}

/// F16 / BF16 (`BF`) row × C tokens.
#[inline(always)]
unsafe fn row_float<const C: usize, const BF: bool>(row: &[u8], a: &Activations, t0: usize) -> [f32; C] {
    let n = a.cols;
    let full = n / 8;
    let zero = vdupq_n_f32(0.0);
    let mut acc = [[zero; 2]; C];
    let wp = row.as_ptr() as *const u16;
    for k in 0..full {
        let h = vld1q_u16(wp.add(8 * k));
        let (w0, w1) = if BF {
            (vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))), vreinterpretq_f32_u32(vshll_high_n_u16::<16>(h)))
        } else {
            (f16x4_to_f32(vmovl_u16(vget_low_u16(h))), f16x4_to_f32(vmovl_high_u16(h)))
        };
        for (c, acc_c) in acc.iter_mut().enumerate() {
            let x = a.f.as_ptr().add((t0 + c) * n + 8 * k);
            // Exact products: the fused multiply-add equals the definition's multiply then add.
            acc_c[0] = vfmaq_f32(acc_c[0], w0, vld1q_f32(x));
            acc_c[1] = vfmaq_f32(acc_c[1], w1, vld1q_f32(x.add(4)));
        }
    }
    let mut y = [0f32; C];
    for (c, acc_c) in acc.iter().enumerate() {
        let x = &a.f[(t0 + c) * n..(t0 + c + 1) * n];
        y[c] = scalar::finish_float(lanes8(acc_c[0], acc_c[1]), row, x, 8 * full, BF);
    }
    y
}

/// One attention row ([`super::attention`]'s definition, the same bits as `row_scalar`): query
/// `q` (`head_dim` values) against the `n` keys and values in `k`, `v`, into `y`. Each key's
/// 8 lanes are two f32x4 (multiply then add, as defined), four keys at a time so each query
/// vector is loaded once for the four; the values four dimensions per vector.
pub(super) fn attention_row<T: KvElem>(q: &[f32], k: &[T], v: &[T], scale: f32, y: &mut [f32]) {
    let hd = q.len();
    let n = k.len() / hd;
    assert!(k.len() >= n * hd && v.len() >= n * hd && y.len() == hd, "attention_row: shapes");
    let hd8 = hd - hd % 8;
    let mut scores = super::attention::take_scores(n);
    // Key j's score from its 8 lanes over the full groups of 8: the columns past them, the lane
    // reduction, the scale.
    let lanes_of = |j: usize, lo: float32x4_t, hi: float32x4_t| -> f32 {
        let kj = &k[j * hd..(j + 1) * hd];
        // SAFETY: NEON is part of every aarch64 target.
        let mut lanes = unsafe { lanes8(lo, hi) };
        for d in hd8..hd {
            lanes[d % 8] += q[d] * kj[d].load();
        }
        reduce8(&lanes) * scale
    };
    let (qp, kp) = (q.as_ptr(), k.as_ptr());
    // SAFETY (every load below): it reads q[d..d + 8] and key j's values d..d + 8 with j < n and
    // d + 8 <= hd8 <= hd, inside q and k (asserted above).
    let n4 = n - n % 4;
    for j0 in (0..n4).step_by(4) {
        let z = unsafe { vdupq_n_f32(0.0) };
        let (mut lo, mut hi) = ([z; 4], [z; 4]);
        for d in (0..hd8).step_by(8) {
            unsafe {
                let (q0, q1) = (vld1q_f32(qp.add(d)), vld1q_f32(qp.add(d + 4)));
                for u in 0..4 {
                    let kr = kp.add((j0 + u) * hd + d);
                    lo[u] = vaddq_f32(lo[u], vmulq_f32(q0, kv4(kr)));
                    hi[u] = vaddq_f32(hi[u], vmulq_f32(q1, kv4(kr.add(4))));
                }
            }
        }
        for u in 0..4 {
            scores[j0 + u] = lanes_of(j0 + u, lo[u], hi[u]);
        }
    }
    for j in n4..n {
        let (mut lo, mut hi) = unsafe { (vdupq_n_f32(0.0), vdupq_n_f32(0.0)) };
        for d in (0..hd8).step_by(8) {
            unsafe {
                let kr = kp.add(j * hd + d);
                lo = vaddq_f32(lo, vmulq_f32(vld1q_f32(qp.add(d)), kv4(kr)));
                hi = vaddq_f32(hi, vmulq_f32(vld1q_f32(qp.add(d + 4)), kv4(kr.add(4))));
            }
        }
        scores[j] = lanes_of(j, lo, hi);
    }
    let sum = super::attention::exp_scores(&mut scores);
    y.fill(0.0);
    let hd4 = hd - hd % 4;
    for (j, &ej) in scores.iter().enumerate() {
        let p = ej / sum;
        let vj = &v[j * hd..(j + 1) * hd];
        // SAFETY: d + 4 <= hd4 <= hd = y.len() = vj.len().
        unsafe {
            let pv = vdupq_n_f32(p);
            for d in (0..hd4).step_by(4) {
                let yp = y.as_mut_ptr().add(d);
                vst1q_f32(yp, vaddq_f32(vld1q_f32(yp), vmulq_f32(pv, kv4(vj.as_ptr().add(d)))));
            }
        }
        for d in hd4..hd {
            y[d] += p * vj[d].load();
        }
    }
    super::attention::keep_scores(scores);
}

/// f16 bits → f32 ([`f16x4_to_f32`], exactly as `half` widens them), four at a time.
pub(super) fn widen_f16(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let n4 = n - n % 4;
    for i in (0..n4).step_by(4) {
        // SAFETY: i + 4 <= n, inside both slices; NEON is part of every aarch64 target.
        unsafe { vst1q_f32(dst.as_mut_ptr().add(i), f16x4_to_f32(vmovl_u16(vld1_u16(src.as_ptr().add(i))))) };
    }
    for i in n4..n {
        dst[i] = half::f16::from_bits(src[i]).to_f32();
    }
}

/// Four keys' or values' elements at `p` as f32 (f16: widened by [`f16x4_to_f32`], exact).
#[inline(always)]
unsafe fn kv4<T: KvElem>(p: *const T) -> float32x4_t {
    if T::HALF {
        f16x4_to_f32(vmovl_u16(vld1_u16(p as *const u16)))
    } else {
        vld1q_f32(p as *const f32)
    }
}
