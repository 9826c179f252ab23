//! x86-64 AVX-512 VNNI (`vpdpbusd` on 512-bit vectors) for Q4_0 / Q8_0 weights against batches
//! of tokens, for CPUs that have AVX512-VNNI but no AMX tiles: Ice Lake and Cascade Lake Xeons,
//! AMD Zen 4 and Zen 5. (Without it those CPUs ran the AVX2 row kernel on prompts, one row against
//! four tokens, re-reading every token's activations for each row: a 512-token prompt streamed
//! them from L3 ~2,500 times per matrix.)
//!
//! One 512-bit register holds the 8 block lanes of two outputs: one weight row against a token
//! pair (token A in the low 256 bits, token B in the high), as the AVX-512 F16 kernel does. A
//! register tile is [`R`] rows × [`P`] token pairs; per group of 8 blocks and per 4-byte step k,
//! each row's regrouped weights are broadcast once and each pair's activations loaded once. The
//! exact integer block sums come out of the `vpdpbusd` chains (no horizontal sums), then the
//! definition's epilogue per block: `(d_w · d_x) · isum` added to lane `b % 8`, in block order;
//! the blocks past the last full group and the lane reduction are the scalar twin's
//! ([`super::scalar::finish_q32`]). Same bits as every other kernel set, for any batch.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes. Q4_0 weights are unsigned nibbles (0..15)
//! against the signed activations, and each chain starts at `−8 · Σx` of its block (the nibbles'
//! offset). Q8_0 weights are signed, so the activations are taken as unsigned `x + 128` (an XOR
//! of the sign bit) and each chain starts at `−128 · Σw`, computed once per row. Both are exact in
//! i32.
//!
//! Blocking: the activations of a pass of tokens ([`pass_tokens`], sized to stay in L2 with the
//! row tile's weights) are reused by every row tile of a work item; a row tile's weights are
//! regrouped once per pass (by the AVX2 kernel's `transpose_q32`) and stay in L1.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{scalar, x86, Activations, OutPtr, WeightRef};
use crate::dtype::DType;

/// Weight rows per register tile.
const R: usize = 3;
/// Token pairs per register tile.
const P: usize = 4;

/// The smallest batch taken here; one token goes to the 256-bit row kernel.
pub(crate) const MIN_TOKENS: usize = 2;

/// Whether this CPU runs the kernels here (and the EVEX `vpdpbusd` of the x86 row kernels):
/// AVX2 + FMA + F16C, AVX-512 F, BW, VL and VNNI.
pub(crate) fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        x86::available()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    })
}

/// Whether this product runs here.
pub(crate) fn takes(w: &WeightRef, a: &Activations) -> bool {
    matches!(w.dtype, DType::Q4_0 | DType::Q8_0) && a.tokens >= MIN_TOKENS && a.qt.len() == a.tokens * (a.cols / 256) * 256
}

/// Tokens per pass: their activations (`cols` bytes each) take at most ~384 KB of L2, at least 8
/// and at most 128 tokens, an even number.
fn pass_tokens(cols: usize) -> usize {
    ((384 * 1024 / cols.max(1)).clamp(8, 128)) & !1
}

/// One row tile's weights regrouped for the block lanes: per group g and step k, the R rows'
/// 32-byte vectors `w[(g · 8 + k) · R + r]` (`transpose_q32`'s layout); per group the rows'
/// scales `d[g · R + r]` and (Q8_0) the chains' start `−128 · Σw` per block, `c[g · R + r]`.
struct Tile {
    w: Vec<__m256i>,
    d: Vec<__m256>,
    c: Vec<__m256i>,
}

thread_local! {
    static TILE: std::cell::RefCell<Tile> = const { std::cell::RefCell::new(Tile { w: Vec::new(), d: Vec::new(), c: Vec::new() }) };
}

pub(crate) fn matmul_rows(w: &WeightRef, a: &Activations, rows: Range<usize>, out: OutPtr) {
    debug_assert!(takes(w, a));
    // Out of the thread-local and back, so the work is not inside a closure (which would not
    // inherit the target features).
    let mut tile = TILE.with(|t| std::mem::replace(&mut *t.borrow_mut(), Tile { w: Vec::new(), d: Vec::new(), c: Vec::new() }));
    // SAFETY: `available()` held when the kernel set was chosen (it is `Isa::Avx512Vnni`'s test).
    unsafe {
        if w.dtype == DType::Q8_0 {
            rows_q32::<true>(w, a, rows, out, &mut tile);
        } else {
            rows_q32::<false>(w, a, rows, out, &mut tile);
        }
    }
    TILE.with(|t| *t.borrow_mut() = tile);
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn rows_q32<const SIGNED: bool>(w: &WeightRef, a: &Activations, rows: Range<usize>, out: OutPtr, tile: &mut Tile) {
    let groups = w.cols / 256;
    tile.w.resize(groups * 8 * R, _mm256_setzero_si256());
    tile.d.resize(groups * R, _mm256_setzero_ps());
    tile.c.resize(if SIGNED { groups * R } else { 0 }, _mm256_setzero_si256());
    let pass = pass_tokens(w.cols);
    let mut p0 = 0;
    while p0 < a.tokens {
        let p1 = (p0 + pass).min(a.tokens);
        let mut r0 = rows.start;
        while r0 < rows.end {
            let m = (rows.end - r0).min(R);
            regroup::<SIGNED>(w, r0, m, tile);
            let mut t = p0;
            while t < p1 {
                let n = (p1 - t).min(2 * P);
                if n > 2 {
                    tile_rows::<SIGNED, P>(w, a, tile, r0, m, t, n, out);
                } else {
                    tile_rows::<SIGNED, 1>(w, a, tile, r0, m, t, n, out);
                }
                t += n;
            }
            r0 += m;
        }
        p0 = p1;
    }
}

/// Rows `r0 .. r0 + m` (m ≤ R) into `tile`; the rows past m repeat row r0 (computed, never
/// written out).
#[inline(always)]
unsafe fn regroup<const SIGNED: bool>(w: &WeightRef, r0: usize, m: usize, tile: &mut Tile) {
    let groups = w.cols / 256;
    let ones = _mm256_set1_epi8(1);
    for r in 0..R {
        let row = w.row(r0 + if r < m { r } else { 0 });
        for g in 0..groups {
            x86::prefetch_group::<SIGNED>(row, g, x86::prefetch_blocks::<SIGNED>());
            let (wk, dw) = x86::transpose_q32::<SIGNED>(row, g);
            let mut sum = _mm256_setzero_si256();
            for (k, v) in wk.iter().enumerate() {
                *tile.w.get_unchecked_mut((g * 8 + k) * R + r) = *v;
                if SIGNED {
                    sum = _mm256_dpbusd_epi32(sum, ones, *v);
                }
            }
            *tile.d.get_unchecked_mut(g * R + r) = dw;
            if SIGNED {
                *tile.c.get_unchecked_mut(g * R + r) = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<7>(sum));
            }
        }
    }
}

/// `lo` in the low 256 bits, `hi` in the high.
#[inline(always)]
unsafe fn pair_i(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

#[inline(always)]
unsafe fn pair_f(lo: __m256, hi: __m256) -> __m512 {
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi)))
}

/// The 256 bits at `p` in both halves.
#[inline(always)]
unsafe fn bcast_i(p: *const __m256i) -> __m512i {
    _mm512_broadcast_i64x4(_mm256_loadu_si256(p))
}

/// The tile's rows × tokens `t0 .. t0 + n` (n ≤ 2·PP; pair p is tokens t0 + 2p and t0 + 2p + 1,
/// the last token standing in for missing ones, whose results are not written).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_rows<const SIGNED: bool, const PP: usize>(
    w: &WeightRef,
    a: &Activations,
    tile: &Tile,
    r0: usize,
    m: usize,
    t0: usize,
    n: usize,
    out: OutPtr,
) {
    let groups = a.cols / 256;
    let nb = a.cols / 32;
    let mut ta = [0usize; PP];
    let mut tb = [0usize; PP];
    for p in 0..PP {
        ta[p] = t0 + (2 * p).min(n - 1);
        tb[p] = t0 + (2 * p + 1).min(n - 1);
    }
    let sign = _mm512_set1_epi8(-128);
    let mut acc = [[_mm512_setzero_ps(); PP]; R];
    for g in 0..groups {
        let mut dx = [_mm512_setzero_ps(); PP];
        let mut start = [_mm512_setzero_si512(); PP];
        let mut xa = [std::ptr::null::<__m256i>(); PP];
        let mut xb = [std::ptr::null::<__m256i>(); PP];
        for p in 0..PP {
            let (ia, ib) = (ta[p] * nb + 8 * g, tb[p] * nb + 8 * g);
            dx[p] = pair_f(_mm256_loadu_ps(a.d.as_ptr().add(ia)), _mm256_loadu_ps(a.d.as_ptr().add(ib)));
            if !SIGNED {
                let s = pair_i(_mm256_loadu_si256(a.s.as_ptr().add(ia) as *const __m256i), _mm256_loadu_si256(a.s.as_ptr().add(ib) as *const __m256i));
                start[p] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<3>(s));
            }
            xa[p] = a.qt.as_ptr().add((ta[p] * groups + g) * 256) as *const __m256i;
            xb[p] = a.qt.as_ptr().add((tb[p] * groups + g) * 256) as *const __m256i;
        }
        let mut isum = [[_mm512_setzero_si512(); PP]; R];
        for (r, row) in isum.iter_mut().enumerate() {
            for (p, v) in row.iter_mut().enumerate() {
                *v = if SIGNED { bcast_i(tile.c.as_ptr().add(g * R + r)) } else { start[p] };
            }
        }
        let wp = tile.w.as_ptr().add(g * 8 * R);
        for k in 0..8 {
            let mut x = [_mm512_setzero_si512(); PP];
            for p in 0..PP {
                x[p] = pair_i(_mm256_loadu_si256(xa[p].add(k)), _mm256_loadu_si256(xb[p].add(k)));
                if SIGNED {
                    x[p] = _mm512_xor_si512(x[p], sign);
                }
            }
            for (r, row) in isum.iter_mut().enumerate() {
                let wv = bcast_i(wp.add(k * R + r));
                for (p, v) in row.iter_mut().enumerate() {
                    *v = if SIGNED { _mm512_dpbusd_epi32(*v, x[p], wv) } else { _mm512_dpbusd_epi32(*v, wv, x[p]) };
                }
            }
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let dw = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(*tile.d.as_ptr().add(g * R + r))));
            for (p, v) in row.iter_mut().enumerate() {
                let s = _mm512_mul_ps(dw, dx[p]);
                *v = _mm512_add_ps(*v, _mm512_mul_ps(s, _mm512_cvtepi32_ps(isum[r][p])));
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(m) {
        let wrow = w.row(r0 + r);
        for (p, v) in row.iter().enumerate() {
            let mut lanes = [0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), *v);
            let (lo, hi) = (2 * p, 2 * p + 1);
            if lo < n {
                let l: [f32; 8] = lanes[..8].try_into().expect("8 lanes");
                out.set(ta[p], r0 + r, scalar::finish_q32::<SIGNED>(l, wrow, a, ta[p], 8 * groups));
            }
            if hi < n {
                let l: [f32; 8] = lanes[8..].try_into().expect("8 lanes");
                out.set(tb[p], r0 + r, scalar::finish_q32::<SIGNED>(l, wrow, a, tb[p], 8 * groups));
            }
        }
    }
}
