//! Reference quantizers: f32 rows → ggml blocks, written to give the same bytes as ggml's C
//! reference implementation (`quantize_row_*_ref` in ggml-quants.c, which llama-quantize uses for
//! every type here when no importance matrix is given) and ggml's scalar f32 → f16 / bf16
//! conversions (ggml-impl.h).
//!
//! Exactness rules followed throughout:
//! - every float operation is an `f32` operation in the C source's order (`a*b + c` is two
//!   roundings: Rust never contracts into fused multiply-adds unless `mul_add` is called, and it
//!   is never called here);
//! - C's float → integer conversions are truncations toward zero (`as` in Rust, identical for the
//!   in-range values that occur), `roundf` rounds half away from zero (`f32::round`), and ggml's
//!   `nearest_int` is its bit trick (round half to even through the 1.5·2²³ magic number);
//! - integer → `uint8_t` stores keep the low 8 bits (`as u8`).
//!
//! [`quantize_rows`] is the one entry point: `n_per_row` must be a multiple of the type's block
//! size, and `out` exactly `DType::byte_len`. Rows are independent, so callers may split a tensor
//! into row ranges and quantize them on several threads with the same result.

use crate::dtype::DType;
use crate::error::{Error, Result};

/// `GROUP_MAX_EPS` in ggml-quants.c.
const GROUP_MAX_EPS: f32 = 1e-15;
const QK: usize = 32;
const QK_K: usize = 256;

/// ggml's `ggml_compute_fp32_to_fp16` (round to nearest even; NaN → 0x7E00 with the sign kept).
pub fn fp32_to_fp16_bits(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 0x1.0p+112f
    let scale_to_zero = f32::from_bits(0x0880_0000); // 0x1.0p-110f
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;
    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let mut bias = shl1_w & 0xFF00_0000;
    if bias < 0x7100_0000 {
        bias = 0x7100_0000;
    }
    base = f32::from_bits((bias >> 1) + 0x0780_0000) + base;
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    ((sign >> 16) | if shl1_w > 0xFF00_0000 { 0x7E00 } else { nonsign }) as u16
}

/// f16 bits → f32 (exact).
pub fn fp16_bits_to_fp32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// ggml's `ggml_compute_fp32_to_bf16` (round to nearest even; NaN forced quiet).
pub fn fp32_to_bf16_bits(f: f32) -> u16 {
    let i = f.to_bits();
    if (i & 0x7fff_ffff) > 0x7f80_0000 {
        return ((i >> 16) | 64) as u16;
    }
    (i.wrapping_add(0x7fff + ((i >> 16) & 1)) >> 16) as u16
}

/// C's float → int conversion as x86-64 executes it (`cvttss2si`): truncation toward zero, and
/// the "integer indefinite" `i32::MIN` for NaN and out-of-range values (Rust's `as` saturates
/// instead). Narrower C integer types then keep the low bits. This only matters for degenerate
/// blocks (e.g. subnormal weights, whose `1/d` overflows to infinity).
#[inline]
fn c_f32_to_i32(x: f32) -> i32 {
    if x.is_nan() || x >= 2147483648.0 || x < -2147483648.0 {
        i32::MIN
    } else {
        x as i32
    }
}

/// ggml-quants.c `nearest_int`: round half to even via the 1.5·2²³ magic number.
#[inline]
fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12582912.0f32;
    let i = val.to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

/// Quantizes `x` (`x.len() / n_per_row` rows) into `out` as `dtype`.
///
/// Float types convert element by element (F16 / BF16 with ggml's rounding). Errors when
/// `n_per_row` is not a multiple of the block size or the lengths disagree.
pub fn quantize_rows(dtype: DType, x: &[f32], n_per_row: usize, out: &mut [u8]) -> Result<()> {
    let bs = dtype.block_size();
    if n_per_row == 0 || !n_per_row.is_multiple_of(bs) || !x.len().is_multiple_of(n_per_row) {
        return Err(Error::invalid(
            "n_per_row",
            format!("{dtype} needs rows of a multiple of {bs} values; got {} values in rows of {n_per_row}", x.len()),
        ));
    }
    let need = x.len() / bs * dtype.type_size();
    if out.len() != need {
        return Err(Error::invalid("out", format!("{} values of {dtype} take {need} bytes, the buffer has {}", x.len(), out.len())));
    }
    let ts = dtype.type_size();
    match dtype {
        DType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&fp32_to_fp16_bits(*v).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&fp32_to_bf16_bits(*v).to_le_bytes());
            }
        }
        _ => {
            let f: fn(&[f32], &mut [u8]) = match dtype {
                DType::Q8_0 => block_q8_0,
                DType::Q4_0 => block_q4_0,
                DType::Q4_1 => block_q4_1,
                DType::Q5_0 => block_q5_0,
                DType::Q5_1 => block_q5_1,
                DType::Q4K => block_q4_k,
                DType::Q5K => block_q5_k,
                DType::Q6K => block_q6_k,
                DType::F32 | DType::F16 | DType::BF16 => unreachable!("handled above"),
            };
            for (xb, ob) in x.chunks_exact(bs).zip(out.chunks_exact_mut(ts)) {
                f(xb, ob);
            }
        }
    }
    Ok(())
}

fn put_f16(out: &mut [u8], at: usize, v: f32) -> f32 {
    let h = fp32_to_fp16_bits(v);
    out[at..at + 2].copy_from_slice(&h.to_le_bytes());
    fp16_bits_to_fp32(h)
}

/// `quantize_row_q8_0_ref`, one block.
fn block_q8_0(x: &[f32], y: &mut [u8]) {
    let mut amax = 0.0f32;
    for &v in x {
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    for j in 0..QK {
        let x0 = x[j] * id;
        y[2 + j] = c_f32_to_i32(x0.round()) as u8;
    }
}

/// The element of largest magnitude (the first one on ties), as q4_0 / q5_0 pick it.
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// `quantize_row_q4_0_ref`, one block.
fn block_q4_0(x: &[f32], y: &mut [u8]) {
    let max = signed_absmax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    for j in 0..QK / 2 {
        let x0 = x[j] * id;
        let x1 = x[QK / 2 + j] * id;
        let xi0 = (c_f32_to_i32(x0 + 8.5) as i8).min(15) as u8;
        let xi1 = (c_f32_to_i32(x1 + 8.5) as i8).min(15) as u8;
        y[2 + j] = xi0 | (xi1 << 4);
    }
}

/// `quantize_row_q4_1_ref`, one block.
fn block_q4_1(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    put_f16(y, 2, min);
    for j in 0..QK / 2 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[QK / 2 + j] - min) * id;
        let xi0 = (c_f32_to_i32(x0 + 0.5) as i8).min(15) as u8;
        let xi1 = (c_f32_to_i32(x1 + 0.5) as i8).min(15) as u8;
        y[4 + j] = xi0 | (xi1 << 4);
    }
}

/// `quantize_row_q5_0_ref`, one block.
fn block_q5_0(x: &[f32], y: &mut [u8]) {
    let max = signed_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    let mut qh: u32 = 0;
    for j in 0..QK / 2 {
        let x0 = x[j] * id;
        let x1 = x[QK / 2 + j] * id;
        let xi0 = (c_f32_to_i32(x0 + 16.5) as i8).min(31) as u8;
        let xi1 = (c_f32_to_i32(x1 + 16.5) as i8).min(31) as u8;
        y[6 + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (((xi0 & 0x10) as u32) >> 4) << j;
        qh |= (((xi1 & 0x10) as u32) >> 4) << (j + QK / 2);
    }
    y[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// `quantize_row_q5_1_ref`, one block.
fn block_q5_1(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    put_f16(y, 2, min);
    let mut qh: u32 = 0;
    for j in 0..QK / 2 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[QK / 2 + j] - min) * id;
        let xi0 = c_f32_to_i32(x0 + 0.5) as u8;
        let xi1 = c_f32_to_i32(x1 + 0.5) as u8;
        y[8 + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (((xi0 & 0x10) as u32) >> 4) << j;
        qh |= (((xi1 & 0x10) as u32) >> 4) << (j + QK / 2);
    }
    y[4..8].copy_from_slice(&qh.to_le_bytes());
}

/// `make_qkx2_quants`: scale and (negated) min of one sub-block with `nmax + 1` levels, searching
/// `nstep + 1` candidate scales for the smallest weighted error. Returns `(scale, the_min)`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let nmax_f = nmax as f32;
    let mut iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = l.clamp(0, nmax) as u8;
        let diff = scale * l_out[i] as f32 + min - x[i];
        let diff = diff * diff;
        best_error += weights[i] * diff;
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax_f) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                let diff = diff * diff;
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `get_scale_min_k4`.
fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The shared part of `quantize_row_q4_K_ref` / `quantize_row_q5_K_ref`: per-sub-block scales
/// and mins, packed 6-bit scales (`y[4..16]`), d and dmin (`y[0..4]`), and the levels `L`.
fn k_scales_and_levels(x: &[f32], y: &mut [u8], nmax: i32, rmin: f32, rdelta: f32, nstep: i32, l: &mut [u8; QK_K]) {
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(nmax, xs, &weights, &mut l[32 * j..32 * j + 32], &mut laux, rmin, rdelta, nstep);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sc = &mut y[4..16];
    sc.fill(0);
    for j in 0..QK_K / 32 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    let d = put_f16(y, 0, max_scale / 63.0);
    let dmin = put_f16(y, 2, max_min / 63.0);
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, &y[4..16]);
        let dd = d * sc as f32;
        if dd == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / dd);
            l[32 * j + ii] = q.clamp(0, nmax) as u8;
        }
    }
}

/// `quantize_row_q4_K_ref`, one super-block: f16 d, f16 dmin, scales[12], qs[128].
fn block_q4_k(x: &[f32], y: &mut [u8]) {
    let mut l = [0u8; QK_K];
    k_scales_and_levels(x, y, 15, -1.0, 0.1, 20, &mut l);
    let q = &mut y[16..144];
    for (c, j) in (0..QK_K).step_by(64).enumerate() {
        for i in 0..32 {
            q[32 * c + i] = l[j + i] | (l[j + i + 32] << 4);
        }
    }
}

/// `quantize_row_q5_K_ref`, one super-block: f16 d, f16 dmin, scales[12], qh[32], qs[128].
fn block_q5_k(x: &[f32], y: &mut [u8]) {
    let mut l = [0u8; QK_K];
    k_scales_and_levels(x, y, 31, -0.5, 0.1, 15, &mut l);
    let (qh, ql) = y[16..176].split_at_mut(32);
    qh.fill(0);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (c, n) in (0..QK_K).step_by(64).enumerate() {
        for j in 0..32 {
            let mut l1 = l[n + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[32 * c + j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

/// `make_qx_quants` with `rmse_type == 1` and no importance weights (the only form the Q6_K
/// reference uses): levels `L[i] + nmax` in `0..2·nmax`; returns the scale.
fn make_qx_quants_rmse1(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let n = x.len();
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let mut iscale = -nmax_f / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = x[i] * x[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax_f + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
            let w = v * v;
            let lf = l as f32;
            sumlx += w * v * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]);
                l_out[i] = (nmax + l.clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `quantize_row_q6_K_ref`, one super-block: ql[128], qh[64], i8 scales[16], f16 d.
fn block_q6_k(x: &[f32], y: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ib in 0..QK_K / 16 {
        let scale = make_qx_quants_rmse1(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
        scales[ib] = scale;
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        put_f16(y, 208, 0.0);
        return;
    }
    let iscale = -128.0f32 / max_scale;
    let d = put_f16(y, 208, 1.0 / iscale);
    for ib in 0..QK_K / 16 {
        y[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    for j in 0..QK_K / 16 {
        let dd = d * (y[192 + j] as i8) as f32;
        if dd == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / dd).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }
    let (ql, rest) = y.split_at_mut(128);
    let qh = &mut rest[..64];
    let lu = |i: usize| l[i] as u8;
    for (c, j) in (0..QK_K).step_by(128).enumerate() {
        let (ql, qh) = (&mut ql[64 * c..64 * c + 64], &mut qh[32 * c..32 * c + 32]);
        for i in 0..32 {
            let q1 = lu(j + i) & 0xF;
            let q2 = lu(j + i + 32) & 0xF;
            let q3 = lu(j + i + 64) & 0xF;
            let q4 = lu(j + i + 96) & 0xF;
            ql[i] = q1 | (q3 << 4);
            ql[i + 32] = q2 | (q4 << 4);
            qh[i] = (lu(j + i) >> 4) | ((lu(j + i + 32) >> 4) << 2) | ((lu(j + i + 64) >> 4) << 4) | ((lu(j + i + 96) >> 4) << 6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!([0.5, 1.5, 2.5, -0.5, -1.5, 2.49, -2.51].map(nearest_int), [0, 2, 2, 0, -2, 2, -3]);
    }

    #[test]
    fn fp16_conversion_matches_round_to_nearest_even() {
        let mut s = 0x1234_5678u32;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let f = f32::from_bits(s);
            if f.is_nan() {
                assert_eq!(fp32_to_fp16_bits(f) & 0x7fff, 0x7E00);
                continue;
            }
            assert_eq!(fp32_to_fp16_bits(f), half::f16::from_f32(f).to_bits(), "{f:e}");
            assert_eq!(fp32_to_bf16_bits(f), half::bf16::from_f32(f).to_bits(), "{f:e}");
        }
        assert_eq!(fp16_bits_to_fp32(fp32_to_fp16_bits(1.0 + 1.0 / 4096.0)), 1.0);
    }
}
