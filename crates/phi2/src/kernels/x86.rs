//! x86-64 AVX2 (+ FMA, F16C) kernels. Each computes a tile of `R` rows × `C` tokens (`R·C = 8`
//! output elements, one per f32 lane) and follows the scalar definition exactly: the integer
//! dot product of each block is reduced exactly to one i32 per output element (`tree8`), then
//! scaled and accumulated in f32 in block order. Tiles that do not fill up (row or token tails)
//! go to smaller tiles or to the scalar twin, which gives the same bits.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{scalar, scale_min_k4, Activations, OutPtr, WeightRef};
use crate::dtype::DType;

pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

pub(super) fn matmul_rows(w: &WeightRef, act: &Activations, rows: Range<usize>, out: OutPtr) {
    let tokens = act.tokens;
    // Token tiles: 4 at a time, then 2, then 1; each over the rows in tiles of 8 / C.
    let mut t0 = 0;
    while t0 < tokens {
        let c = match tokens - t0 {
            n if n >= 4 => 4,
            n if n >= 2 => 2,
            _ => 1,
        };
        // SAFETY: `available()` was checked when the kernel set was chosen (`super::isa`).
        unsafe {
            match c {
                4 => tiles::<2, 4>(w, act, rows.clone(), t0, out),
                2 => tiles::<4, 2>(w, act, rows.clone(), t0, out),
                _ => tiles::<8, 1>(w, act, rows.clone(), t0, out),
            }
        }
        t0 += c;
    }
}

/// Rows `rows` × tokens `t0..t0 + C` in tiles of `R` rows; leftover rows go to the scalar twin.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tiles<const R: usize, const C: usize>(w: &WeightRef, act: &Activations, rows: Range<usize>, t0: usize, out: OutPtr) {
    let mut r0 = rows.start;
    while r0 + R <= rows.end {
        let acc = match w.dtype {
            DType::Q4_0 => tile_q32::<R, C, false>(w, act, r0, t0),
            DType::Q8_0 => tile_q32::<R, C, true>(w, act, r0, t0),
            DType::Q4K => tile_qk::<R, C, false>(w, act, r0, t0),
            DType::Q5K => tile_qk::<R, C, true>(w, act, r0, t0),
            DType::Q6K => tile_q6k::<R, C>(w, act, r0, t0),
            DType::F16 => tile_float::<R, C, false>(w, act, r0, t0),
            DType::BF16 => tile_float::<R, C, true>(w, act, r0, t0),
            other => unreachable!("no kernel for {other}"),
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

/// Eight i32x8 vectors → one i32x8 holding each vector's lane sum (exact).
#[inline(always)]
unsafe fn tree8(v: &[__m256i; 8]) -> __m256i {
    let h01 = _mm256_hadd_epi32(v[0], v[1]);
    let h23 = _mm256_hadd_epi32(v[2], v[3]);
    let h45 = _mm256_hadd_epi32(v[4], v[5]);
    let h67 = _mm256_hadd_epi32(v[6], v[7]);
    let a = _mm256_hadd_epi32(h01, h23); // [v0 v1 v2 v3 (lanes 0..4) | v0 v1 v2 v3 (lanes 4..8)]
    let b = _mm256_hadd_epi32(h45, h67);
    _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31))
}

/// Lane p = r·C + c holds `f(r)` (f16 bits, widened).
#[inline(always)]
unsafe fn per_row_f16<const R: usize, const C: usize>(f: impl Fn(usize) -> u16) -> __m256 {
    let mut h = [0u16; 8];
    for (p, v) in h.iter_mut().enumerate() {
        *v = f(p / C);
    }
    _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i))
}

/// Lane p = r·C + c holds `v[c]`.
#[inline(always)]
unsafe fn per_token_f32<const C: usize>(v: &[f32]) -> __m256 {
    let mut a = [0f32; 8];
    for (p, x) in a.iter_mut().enumerate() {
        *x = v[p % C];
    }
    _mm256_loadu_ps(a.as_ptr())
}

#[inline(always)]
unsafe fn per_token_i32<const C: usize>(v: &[i32]) -> __m256i {
    let mut a = [0i32; 8];
    for (p, x) in a.iter_mut().enumerate() {
        *x = v[p % C];
    }
    _mm256_loadu_si256(a.as_ptr() as *const __m256i)
}

#[inline(always)]
unsafe fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

#[inline(always)]
unsafe fn load32(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// 16 packed nibbles → 32 bytes 0..15: low nibbles first, then high ones (Q4_0 element order).
#[inline(always)]
unsafe fn unpack_q4_0(p: *const u8) -> __m256i {
    let q = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(0x0F);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m), _mm_and_si128(q, m))
}

/// Q4_0 (`SIGNED = false`: unsigned nibbles, minus 8·Σx after the tree) and Q8_0 (`SIGNED`:
/// i8 weights through the sign trick, |w| · sign(x, w), exact since x ∈ [−127, 127]).
#[inline(always)]
unsafe fn tile_q32<const R: usize, const C: usize, const SIGNED: bool>(
    w: &WeightRef,
    a: &Activations,
    r0: usize,
    t0: usize,
) -> [f32; 8] {
    let bytes = if SIGNED { 34 } else { 18 };
    let nb = w.cols / 32;
    let rows: [&[u8]; R] = std::array::from_fn(|r| w.row(r0 + r));
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    for b in 0..nb {
        let xs: [__m256i; C] = std::array::from_fn(|c| load32(a.q.as_ptr().add((t0 + c) * a.cols + 32 * b) as *const u8));
        let mut v = [_mm256_setzero_si256(); 8];
        for r in 0..R {
            let blk = rows[r].as_ptr().add(b * bytes + 2);
            if SIGNED {
                let wq = load32(blk);
                let aw = _mm256_sign_epi8(wq, wq);
                for c in 0..C {
                    let p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xs[c], wq));
                    v[r * C + c] = _mm256_madd_epi16(p, ones);
                }
            } else {
                let wq = unpack_q4_0(blk);
                for c in 0..C {
                    v[r * C + c] = _mm256_madd_epi16(_mm256_maddubs_epi16(wq, xs[c]), ones);
                }
            }
        }
        let mut isum = tree8(&v);
        let ds = &a.d[b * a.tokens + t0..b * a.tokens + t0 + C];
        if !SIGNED {
            let sx = per_token_i32::<C>(&a.s[b * a.tokens + t0..b * a.tokens + t0 + C]);
            isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(sx, 3));
        }
        let dw = per_row_f16::<R, C>(|r| u16_at(rows[r], b * bytes));
        let s = _mm256_mul_ps(dw, per_token_f32::<C>(ds));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(s, _mm256_cvtepi32_ps(isum)));
    }
    let mut outv = [0f32; 8];
    _mm256_storeu_ps(outv.as_mut_ptr(), acc);
    outv
}

/// Q4_K (`Q5 = false`) and Q5_K (`Q5`): per super-block, `Σ_j sc_j · Σ q·x` in i32 lanes, the
/// tree, then `(d·dx)·isum − (dmin·dx)·msum` with msum from the activation sums.
#[inline(always)]
unsafe fn tile_qk<const R: usize, const C: usize, const Q5: bool>(
    w: &WeightRef,
    a: &Activations,
    r0: usize,
    t0: usize,
) -> [f32; 8] {
    let bytes = if Q5 { 176 } else { 144 };
    let qs_off = if Q5 { 48 } else { 16 };
    let nb = w.cols / 256;
    let rows: [&[u8]; R] = std::array::from_fn(|r| w.row(r0 + r));
    let m4 = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    let mut acc = _mm256_setzero_ps();
    for b in 0..nb {
        let mut v = [_mm256_setzero_si256(); 8];
        let mut msum = [0i32; 8];
        for r in 0..R {
            let blk = &rows[r][b * bytes..(b + 1) * bytes];
            let scales = &blk[4..16];
            let sm: [(u8, u8); 8] = std::array::from_fn(|j| scale_min_k4(j, scales));
            for c in 0..C {
                let t = t0 + c;
                let bs = &a.bsums[(t * nb + b) * 16..(t * nb + b) * 16 + 16];
                msum[r * C + c] = (0..8).map(|j| sm[j].1 as i32 * (bs[2 * j] + bs[2 * j + 1])).sum();
            }
            let qh = if Q5 { load32(blk.as_ptr().add(16)) } else { _mm256_setzero_si256() };
            for jj in 0..4 {
                let q = load32(blk.as_ptr().add(qs_off + 32 * jj));
                let mut lo = _mm256_and_si256(q, m4);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                if Q5 {
                    let sh_lo = _mm_cvtsi32_si128(2 * jj as i32);
                    let sh_hi = _mm_cvtsi32_si128(2 * jj as i32 + 1);
                    let blo = _mm256_and_si256(_mm256_srl_epi16(qh, sh_lo), one);
                    let bhi = _mm256_and_si256(_mm256_srl_epi16(qh, sh_hi), one);
                    lo = _mm256_or_si256(lo, _mm256_slli_epi16(blo, 4));
                    hi = _mm256_or_si256(hi, _mm256_slli_epi16(bhi, 4));
                }
                let s_lo = _mm256_set1_epi16(sm[2 * jj].0 as i16);
                let s_hi = _mm256_set1_epi16(sm[2 * jj + 1].0 as i16);
                for c in 0..C {
                    let xp = a.q.as_ptr().add((t0 + c) * a.cols + 256 * b + 64 * jj) as *const u8;
                    let p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load32(xp)), s_lo);
                    let p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load32(xp.add(32))), s_hi);
                    let k = r * C + c;
                    v[k] = _mm256_add_epi32(v[k], _mm256_add_epi32(p_lo, p_hi));
                }
            }
        }
        let isum = tree8(&v);
        let dx = per_token_f32::<C>(&a.d[b * a.tokens + t0..b * a.tokens + t0 + C]);
        let d = per_row_f16::<R, C>(|r| u16_at(rows[r], b * bytes));
        let dmin = per_row_f16::<R, C>(|r| u16_at(rows[r], b * bytes + 2));
        let av = _mm256_mul_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(isum));
        let mv = _mm256_mul_ps(_mm256_mul_ps(dmin, dx), _mm256_cvtepi32_ps(_mm256_loadu_si256(msum.as_ptr() as *const __m256i)));
        acc = _mm256_add_ps(acc, _mm256_sub_ps(av, mv));
    }
    let mut outv = [0f32; 8];
    _mm256_storeu_ps(outv.as_mut_ptr(), acc);
    outv
}

/// Q6_K: unsigned 6-bit values (q + 32) against x, scaled per 16 with the signed scales, minus
/// 32 · Σ_j sc_j · Σx after the tree.
#[inline(always)]
unsafe fn tile_q6k<const R: usize, const C: usize>(w: &WeightRef, a: &Activations, r0: usize, t0: usize) -> [f32; 8] {
    let nb = w.cols / 256;
    let rows: [&[u8]; R] = std::array::from_fn(|r| w.row(r0 + r));
    let m4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(0x03);
    let mut acc = _mm256_setzero_ps();
    for b in 0..nb {
        let mut v = [_mm256_setzero_si256(); 8];
        let mut corr = [0i32; 8];
        for r in 0..R {
            let blk = &rows[r][b * 210..(b + 1) * 210];
            let sc: [i16; 16] = std::array::from_fn(|j| blk[192 + j] as i8 as i16);
            for c in 0..C {
                let t = t0 + c;
                let bs = &a.bsums[(t * nb + b) * 16..(t * nb + b) * 16 + 16];
                corr[r * C + c] = 32 * (0..16).map(|j| sc[j] as i32 * bs[j]).sum::<i32>();
            }
            for n in 0..2 {
                let ql0 = load32(blk.as_ptr().add(64 * n));
                let ql1 = load32(blk.as_ptr().add(64 * n + 32));
                let qh = load32(blk.as_ptr().add(128 + 32 * n));
                let groups = [
                    _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4)),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, m4),
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4),
                    ),
                ];
                for (g, q) in groups.iter().enumerate() {
                    // Elements 128n + 32g .. +32: sub-blocks j and j + 1 (16 values each).
                    let j = 8 * n + 2 * g;
                    let s = _mm256_set_m128i(_mm_set1_epi16(sc[j + 1]), _mm_set1_epi16(sc[j]));
                    for c in 0..C {
                        let xp = a.q.as_ptr().add((t0 + c) * a.cols + 256 * b + 128 * n + 32 * g) as *const u8;
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(*q, load32(xp)), s);
                        let k = r * C + c;
                        v[k] = _mm256_add_epi32(v[k], p);
                    }
                }
            }
        }
        let isum = _mm256_sub_epi32(tree8(&v), _mm256_loadu_si256(corr.as_ptr() as *const __m256i));
        let dx = per_token_f32::<C>(&a.d[b * a.tokens + t0..b * a.tokens + t0 + C]);
        let d = per_row_f16::<R, C>(|r| u16_at(rows[r], b * 210 + 208));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(isum)));
    }
    let mut outv = [0f32; 8];
    _mm256_storeu_ps(outv.as_mut_ptr(), acc);
    outv
}

/// F16 (`BF = false`) / BF16 weights against rounded activations: 8 lanes per output element
/// (element i in lane i % 8), exact products, then the fixed lane reduction.
#[inline(always)]
unsafe fn tile_float<const R: usize, const C: usize, const BF: bool>(
    w: &WeightRef,
    a: &Activations,
    r0: usize,
    t0: usize,
) -> [f32; 8] {
    let rows: [*const u8; R] = std::array::from_fn(|r| w.row(r0 + r).as_ptr());
    let xs: [*const f32; C] = std::array::from_fn(|c| a.f.as_ptr().add((t0 + c) * a.cols));
    let mut acc = [_mm256_setzero_ps(); 8];
    let groups = w.cols / 8;
    for g in 0..groups {
        let x: [__m256; C] = std::array::from_fn(|c| _mm256_loadu_ps(xs[c].add(8 * g)));
        for r in 0..R {
            let raw = _mm_loadu_si128(rows[r].add(16 * g) as *const __m128i);
            let wv = if BF {
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16))
            } else {
                _mm256_cvtph_ps(raw)
            };
            for c in 0..C {
                acc[r * C + c] = _mm256_fmadd_ps(wv, x[c], acc[r * C + c]);
            }
        }
    }
    let mut outv = [0f32; 8];
    let tail = groups * 8..w.cols;
    for (p, o) in outv.iter_mut().enumerate().take(R * C) {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc[p]);
        let (r, c) = (p / C, p % C);
        for i in tail.clone() {
            let b = std::slice::from_raw_parts(rows[r].add(2 * i), 2);
            let wv = if BF { half::bf16::from_le_bytes([b[0], b[1]]).to_f32() } else { half::f16::from_le_bytes([b[0], b[1]]).to_f32() };
            lanes[i % 8] += wv * *xs[c].add(i);
        }
        *o = super::reduce8(&lanes);
    }
    outv
}
