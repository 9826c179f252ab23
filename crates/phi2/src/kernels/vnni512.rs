//! x86-64 AVX-512 VNNI (`vpdpbusd` on 512-bit vectors) for quantized weights against batches
//! of tokens: prompts on CPUs that have AVX512-VNNI but no AMX tiles (Ice Lake and Cascade Lake
//! Xeons, AMD Zen 4 and Zen 5), and on AMX CPUs the batches below the tiles' crossover
//! (speculative drafts, a few served streams, short prompts). (Without it those CPUs ran the
//! AVX2 row kernel on prompts, one row against four tokens, re-reading every token's activations
//! for each row: a 512-token prompt streamed them from L3 ~2,500 times per matrix.)
//!
//! One 512-bit register holds the 8 block lanes of two outputs: one weight row against a token
//! pair (token A in the low 256 bits, token B in the high), as the AVX-512 F16 kernel does;
//! [`super::Activations`] lays the activations out by pairs (`qp`, `dp`, `sp`), so a pair's
//! step is one load. A register tile is [`R`] rows × up to [`P`] token pairs (as many as the
//! batch fills); per group of 8 blocks and per 4-byte step k, each row's regrouped weights are
//! broadcast once and each pair's activations loaded once. The exact integer block sums come
//! out of the `vpdpbusd` chains (no horizontal sums), then the definition's epilogue per block:
//! `(d_w · d_x) · isum` added to lane `b % 8`, in block order; the blocks past the last full
//! group and the lane reduction are the scalar twin's ([`super::scalar::finish_q32`]). Same
//! bits as every other kernel set, for any batch.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes: the activations are taken as unsigned
//! `x + 128` (their sign bit flipped when the pairs are laid out), the weights as signed (Q8_0's
//! values; Q4_0's nibbles 0..15 are non-negative bytes either way). Each chain starts at
//! `−128 · Σw` of its block (computed once per row tile) and, for Q4_0, `−8 · Σx` (the nibbles'
//! offset), so it ends at the exact `Σ x · w` (Q4_0: `Σ x · (q − 8)`) in i32.
//!
//! Blocking: the activations of a pass of tokens ([`pass_tokens`], sized to stay in L2 with the
//! row tile's weights) are reused by every row tile of a work item; a row tile's weights are
//! regrouped once per pass (by the AVX2 kernel's `transpose_q32`) and stay in L1.
//!
//! K-quant batches ([`matmul_rows_k`]) put 16 tokens in the lanes of a register instead, so that
//! no lane is ever reduced: see there.

use std::arch::x86_64::*;
use std::ops::Range;

use super::x86::{K4, K5, K6};
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
    matches!(w.dtype, DType::Q4_0 | DType::Q8_0) && a.tokens >= MIN_TOKENS && a.qp.len() == a.tokens.div_ceil(2) * (a.cols / 256) * 512
}

/// Tokens per pass: their activations (`cols` bytes each) take at most ~384 KB of L2, at least 8
/// and at most 128 tokens, an even number.
fn pass_tokens(cols: usize) -> usize {
    ((384 * 1024 / cols.max(1)).clamp(8, 128)) & !1
}

/// One row tile's weights regrouped for the block lanes: per group g and step k, the R rows'
/// 32-byte vectors `w[(g · 8 + k) · R + r]` (`transpose_q32`'s layout: Q8_0's signed values,
/// Q4_0's nibbles 0..15); per group the rows' scales `d[g · R + r]` and their part of the chains'
/// start, `−128 · Σw` per block, `c[g · R + r]`.
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
    // SAFETY: `available()` held when the kernel set was chosen (it is `Isa::Avx512Vnni`'s test,
    // and `amx::available()`, `Isa::Amx`'s, requires it).
    TILE.with_borrow_mut(|tile| unsafe {
        if w.dtype == DType::Q8_0 {
            rows_q32::<true>(w, a, rows, out, tile);
        } else {
            rows_q32::<false>(w, a, rows, out, tile);
        }
    });
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn rows_q32<const SIGNED: bool>(w: &WeightRef, a: &Activations, rows: Range<usize>, out: OutPtr, tile: &mut Tile) {
    let groups = w.cols / 256;
    tile.w.resize(groups * 8 * R, _mm256_setzero_si256());
    tile.d.resize(groups * R, _mm256_setzero_ps());
    tile.c.resize(groups * R, _mm256_setzero_si256());
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
                // As many token pairs as the tokens fill: a short batch (a speculative draft,
                // a few served streams) computes no stand-in pairs.
                match n.div_ceil(2) {
                    1 => tile_rows::<SIGNED, 1>(w, a, tile, r0, m, t, n, out),
                    2 => tile_rows::<SIGNED, 2>(w, a, tile, r0, m, t, n, out),
                    3 => tile_rows::<SIGNED, 3>(w, a, tile, r0, m, t, n, out),
                    _ => tile_rows::<SIGNED, P>(w, a, tile, r0, m, t, n, out),
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
                sum = _mm256_dpbusd_epi32(sum, ones, *v);
            }
            *tile.d.get_unchecked_mut(g * R + r) = dw;
            *tile.c.get_unchecked_mut(g * R + r) = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<7>(sum));
        }
    }
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
    let mut ta = [0usize; PP];
    let mut tb = [0usize; PP];
    for p in 0..PP {
        ta[p] = t0 + (2 * p).min(n - 1);
        tb[p] = t0 + (2 * p + 1).min(n - 1);
    }
    // Token pairs are aligned (passes and full chunks are even): pair p of the tile is the
    // layout's pair t0 / 2 + p.
    debug_assert!(t0 % 2 == 0);
    let pair0 = t0 / 2;
    let mut acc = [[_mm512_setzero_ps(); PP]; R];
    for g in 0..groups {
        let mut dx = [_mm512_setzero_ps(); PP];
        let mut xp = [std::ptr::null::<__m512i>(); PP];
        let mut sx = [_mm512_setzero_si512(); PP];
        for p in 0..PP {
            let at = (pair0 + p) * groups + g;
            dx[p] = _mm512_loadu_ps(a.dp.as_ptr().add(at * 16));
            xp[p] = a.qp.as_ptr().add(at * 512) as *const __m512i;
            if !SIGNED {
                sx[p] = _mm512_loadu_si512(a.sp.as_ptr().add(at * 16) as *const __m512i);
            }
        }
        let mut isum = [[_mm512_setzero_si512(); PP]; R];
        for (r, row) in isum.iter_mut().enumerate() {
            let c = bcast_i(tile.c.as_ptr().add(g * R + r));
            for (p, v) in row.iter_mut().enumerate() {
                *v = if SIGNED { c } else { _mm512_add_epi32(c, sx[p]) };
            }
        }
        let wp = tile.w.as_ptr().add(g * 8 * R);
        for k in 0..8 {
            let mut x = [_mm512_setzero_si512(); PP];
            for p in 0..PP {
                x[p] = _mm512_loadu_si512(xp[p].add(k));
            }
            for (r, row) in isum.iter_mut().enumerate() {
                let wv = bcast_i(wp.add(k * R + r));
                for (p, v) in row.iter_mut().enumerate() {
                    *v = _mm512_dpbusd_epi32(*v, x[p], wv);
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

/// K-quant row tile: rows per tile.
const KR: usize = 4;

/// Whether this K-quant batch runs here ([`matmul_rows_k`]): Q4_K, Q5_K, Q6_K against the
/// activation tiles that `amx::prepare` made (batches of `amx::MIN_TOKENS` or more).
pub(crate) fn takes_k(w: &WeightRef, a: &Activations) -> bool {
    matches!(w.dtype, DType::Q4K | DType::Q5K | DType::Q6K)
        && a.tokens >= super::amx::MIN_TOKENS
        && a.tb.len() == a.tokens.div_ceil(TT) * (a.cols / 32) * 512
}

/// Tokens per activation tile (`amx::prepare`'s layout: per tile and block of 32 values, 8 steps
/// of 4 values × 16 tokens, 64 bytes each).
const TT: usize = 16;

/// A K-quant row tile unpacked for the token-lane kernel: per row r and super-block b, the 256
/// weights as i8 (Q4_K/Q5_K: q, 0..31; Q6_K: q − 32) at `q[(r · nsb + b) · 8 ..]` (32 per vector,
/// in value order); the sub-block scales as i32 `sc[(r · nsb + b) · 16 + j]`; (Q4_K/Q5_K) the
/// mins of sub-blocks 2jj and 2jj + 1 as two i16 in one i32 `mp[(r · nsb + b) · 4 + jj]`; d, dmin;
/// and `c = 128 · Σ_j sc_j · Σ w` over the sub-block's weights (the chains' start is −c).
struct KTile {
    q: Vec<__m256i>,
    sc: Vec<i32>,
    mp: Vec<i32>,
    d: Vec<f32>,
    dmin: Vec<f32>,
    c: Vec<i32>,
}

const EMPTY_KTILE: KTile = KTile { q: Vec::new(), sc: Vec::new(), mp: Vec::new(), d: Vec::new(), dmin: Vec::new(), c: Vec::new() };

thread_local! {
    static KTILE: std::cell::RefCell<KTile> = const { std::cell::RefCell::new(EMPTY_KTILE) };
}


/// Q4_K, Q5_K and Q6_K batches with tokens in the lanes: one register holds one weight row
/// against 16 tokens (the activation tiles of `amx::prepare`, taken as unsigned `x + 128`), so
/// each output's exact super-block sums build up in its own i32 lane and nothing is reduced
/// across lanes. Per sub-block, `vpdpbusd` with the row's 4 weights broadcast gives the 16
/// tokens' `Σ (x + 128) · w`, times the sub-block scale (`vpmulld`) onto `isum`, whose chain
/// starts at `−128 · Σ_j sc_j · Σ w` (made once per row tile): exactly `Σ_j sc_j · Σ w · x`.
/// The mins' `Σ_j m_j · Σx_j` comes from `vpdpwssd` on the tiles' i16 pair sums. Then the
/// scalar twin's epilogue per super-block, `(d·dx)·isum − (dmin·dx)·msum` (Q6_K: `(d·dx)·isum`),
/// added in super-block order: the same bits.
pub(crate) fn matmul_rows_k(w: &WeightRef, a: &Activations, rows: Range<usize>, out: OutPtr) {
    debug_assert!(takes_k(w, a));
    // SAFETY: `available()` held when the kernel set was chosen (it is `Isa::Avx512Vnni`'s test,
    // and `amx::available()`, `Isa::Amx`'s, requires it).
    KTILE.with_borrow_mut(|tile| unsafe {
        match w.dtype {
            DType::Q4K => rows_k::<K4>(w, a, rows, out, tile),
            DType::Q5K => rows_k::<K5>(w, a, rows, out, tile),
            _ => rows_k::<K6>(w, a, rows, out, tile),
        }
    });
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn rows_k<const KIND: u8>(w: &WeightRef, a: &Activations, rows: Range<usize>, out: OutPtr, tile: &mut KTile) {
    let nsb = w.cols / 256;
    tile.q.resize(KR * nsb * 8, _mm256_setzero_si256());
    tile.sc.resize(KR * nsb * 16, 0);
    tile.mp.resize(KR * nsb * 4, 0);
    tile.d.resize(KR * nsb, 0.0);
    tile.dmin.resize(KR * nsb, 0.0);
    tile.c.resize(KR * nsb, 0);
    let tiles = a.tokens.div_ceil(TT);
    let per_pass = (pass_tokens(w.cols) / TT).max(1);
    let mut p0 = 0;
    while p0 < tiles {
        let p1 = (p0 + per_pass).min(tiles);
        let mut r0 = rows.start;
        while r0 < rows.end {
            let m = (rows.end - r0).min(KR);
            for r in 0..KR {
                regroup_k::<KIND>(w, r0 + if r < m { r } else { 0 }, r, tile);
            }
            for tt in p0..p1 {
                tile_k::<KIND>(a, tile, r0, m, tt, nsb, out);
            }
            r0 += m;
        }
        p0 = p1;
    }
}

/// Row `row` of `w` into slot `r` of `tile`.
#[inline(always)]
unsafe fn regroup_k<const KIND: u8>(w: &WeightRef, row: usize, r: usize, tile: &mut KTile) {
    let nsb = w.cols / 256;
    let bytes = x86::k_dtype(KIND).type_size();
    let data = w.row(row);
    let m4 = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    let x32 = _mm256_set1_epi8(32);
    let u128 = _mm256_set1_epi8(-128);
    let zero = _mm256_setzero_si256();
    for b in 0..nsb {
        let blk = data.as_ptr().add(b * bytes);
        let at = r * nsb + b;
        let qv = tile.q.as_mut_ptr().add(at * 8);
        let mut corr = _mm256_setzero_si256();
        if KIND == K6 {
            *tile.d.get_unchecked_mut(at) = super::f16_at(&data[b * bytes..], 208);
            let sc8 = _mm_loadu_si128(blk.add(192) as *const __m128i);
            for j in 0..16 {
                *tile.sc.get_unchecked_mut(at * 16 + j) = *blk.add(192 + j) as i8 as i32;
            }
            for n in 0..2 {
                let groups = x86::q6k_groups(blk, n);
                for (g, q) in groups.iter().enumerate() {
                    let v = _mm256_sub_epi8(*q, x32);
                    *qv.add(4 * n + g) = v;
                    // Sub-blocks j, j + 1 (16 values each): scale j in lanes 0..4, j + 1 in 4..8.
                    let j = 8 * n + 2 * g;
                    let pick = _mm_set_epi64x(0, (0x0101_0101 * (j as i64 + 1)) << 32 | 0x0101_0101 * j as i64);
                    let s = _mm256_cvtepi8_epi32(_mm_shuffle_epi8(sc8, pick));
                    corr = _mm256_add_epi32(corr, _mm256_mullo_epi32(_mm256_dpbusd_epi32(zero, u128, v), s));
                }
            }
        } else {
            *tile.d.get_unchecked_mut(at) = super::f16_at(&data[b * bytes..], 0);
            *tile.dmin.get_unchecked_mut(at) = super::f16_at(&data[b * bytes..], 2);
            let (scales, mins) = x86::scales_mins_k4(blk.add(4));
            for j in 0..8 {
                *tile.sc.get_unchecked_mut(at * 16 + j) = ((scales >> (8 * j)) & 0xFF) as i32;
            }
            for jj in 0..4 {
                let (m0, m1) = ((mins >> (16 * jj)) & 0xFF, (mins >> (16 * jj + 8)) & 0xFF);
                *tile.mp.get_unchecked_mut(at * 4 + jj) = (m0 | m1 << 16) as i32;
            }
            let qs_off = if KIND == K5 { 48 } else { 16 };
            let qh = if KIND == K5 { _mm256_loadu_si256(blk.add(16) as *const __m256i) } else { zero };
            for jj in 0..4 {
                let q = _mm256_loadu_si256(blk.add(qs_off + 32 * jj) as *const __m256i);
                let mut lo = _mm256_and_si256(q, m4);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                if KIND == K5 {
                    let blo = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * jj as i32)), one);
                    let bhi = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * jj as i32 + 1)), one);
                    lo = _mm256_or_si256(lo, _mm256_slli_epi16(blo, 4));
                    hi = _mm256_or_si256(hi, _mm256_slli_epi16(bhi, 4));
                }
                *qv.add(2 * jj) = lo;
                *qv.add(2 * jj + 1) = hi;
                let (s0, s1) = (((scales >> (16 * jj)) & 0xFF) as i32, ((scales >> (16 * jj + 8)) & 0xFF) as i32);
                corr = _mm256_add_epi32(corr, _mm256_mullo_epi32(_mm256_dpbusd_epi32(zero, u128, lo), _mm256_set1_epi32(s0)));
                corr = _mm256_add_epi32(corr, _mm256_mullo_epi32(_mm256_dpbusd_epi32(zero, u128, hi), _mm256_set1_epi32(s1)));
            }
        }
        let h = _mm_add_epi32(_mm256_castsi256_si128(corr), _mm256_extracti128_si256::<1>(corr));
        let h = _mm_add_epi32(h, _mm_shuffle_epi32::<0b01_00_11_10>(h));
        let h = _mm_add_epi32(h, _mm_shuffle_epi32::<0b10_11_00_01>(h));
        *tile.c.get_unchecked_mut(at) = _mm_cvtsi128_si32(h);
    }
}

/// Rows `r0 .. r0 + m` of the tile × the 16 tokens of activation tile `tt`.
#[inline(always)]
unsafe fn tile_k<const KIND: u8>(a: &Activations, tile: &KTile, r0: usize, m: usize, tt: usize, nsb: usize, out: OutPtr) {
    let nb = a.cols / 32;
    let sign = _mm512_set1_epi8(-128);
    // Sub-blocks per super-block and 4-value steps per sub-block.
    let (subs, steps) = if KIND == K6 { (16, 4) } else { (8, 8) };
    let mut acc = [_mm512_setzero_ps(); KR];
    for b in 0..nsb {
        let xb = a.tb.as_ptr().add((tt * nb + 8 * b) * 512) as *const __m512i;
        let mut isum = [_mm512_setzero_si512(); KR];
        for (r, v) in isum.iter_mut().enumerate() {
            *v = _mm512_set1_epi32(-*tile.c.get_unchecked(r * nsb + b));
        }
        for j in 0..subs {
            let mut part = [_mm512_setzero_si512(); KR];
            for k in 0..steps {
                let s = j * steps + k;
                let x = _mm512_xor_si512(_mm512_loadu_si512(xb.add(s)), sign);
                for (r, p) in part.iter_mut().enumerate() {
                    let wq = (tile.q.as_ptr().add((r * nsb + b) * 8) as *const i32).add(s).read_unaligned();
                    *p = _mm512_dpbusd_epi32(*p, x, _mm512_set1_epi32(wq));
                }
            }
            for (r, v) in isum.iter_mut().enumerate() {
                *v = _mm512_add_epi32(*v, _mm512_mullo_epi32(part[r], _mm512_set1_epi32(*tile.sc.get_unchecked((r * nsb + b) * 16 + j))));
            }
        }
        let dx = _mm512_loadu_ps(a.td.as_ptr().add((tt * nsb + b) * TT));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let at = r * nsb + b;
            let av = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(*tile.d.get_unchecked(at)), dx), _mm512_cvtepi32_ps(isum[r]));
            if KIND == K6 {
                *acc_r = _mm512_add_ps(*acc_r, av);
            } else {
                let mut ms = _mm512_setzero_si512();
                for jj in 0..4 {
                    let bs = _mm512_loadu_si512(a.tbs.as_ptr().add(((tt * nsb + b) * 4 + jj) * 2 * TT) as *const __m512i);
                    ms = _mm512_dpwssd_epi32(ms, bs, _mm512_set1_epi32(*tile.mp.get_unchecked(at * 4 + jj)));
                }
                let mv = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(*tile.dmin.get_unchecked(at)), dx), _mm512_cvtepi32_ps(ms));
                *acc_r = _mm512_add_ps(*acc_r, _mm512_sub_ps(av, mv));
            }
        }
    }
    let t0 = tt * TT;
    super::avx512::store_block4(out, t0, TT.min(a.tokens - t0), r0, m, &acc);
}

/// Whether a one-token product runs here ([`rows_q4_0_one`], [`rows_qk_one`], [`rows_q6k_one`]).
pub(crate) fn takes_one(w: &WeightRef, a: &Activations) -> bool {
    matches!(w.dtype, DType::Q4_0 | DType::Q4K | DType::Q5K | DType::Q6K) && a.tokens == 1
}

/// Q4_K / Q5_K weights against one token (decode), one row at a time in file order (one weight
/// stream per thread, prefetched ~1.5 KB ahead as the Q4_0 kernels do; the AVX2 tiles read 8 rows
/// as interleaved streams, which streamed ~20% slower here). Per 64 values (sub-blocks 2jj and
/// 2jj + 1), one `vpdpbusd` gives 16 lanes of four products (8 lanes per sub-block) and one
/// `vpdpwssd` adds them times their sub-block's scale (each lane's sum fits i16: |Σ| ≤ 4 · 31 ·
/// 128, and its high half is the sign, which meets a zero scale half). Per super-block the exact
/// `isum = Σ_j sc_j · Σ q·x` and `msum = Σ_j m_j · Σx_j`, then the scalar twin's
/// `(d·dx)·isum − (dmin·dx)·msum`, added in super-block order. The two sums are reduced side by
/// side and the epilogue's f32 operations run in the lanes of one vector (d and dmin widened by
/// one `vcvtph2ps`): per super-block ~80 instructions instead of ~110 (two reductions, and
/// `half`'s conversion with its run-time feature test). Measured on an AMD EPYC (Zen 4),
/// alternating builds: `kernel_bench --threads 2 --tokens 1` (fc1, in cache) Q4_K 0.74–0.85 →
/// 0.56–0.61 ms, Q5_K 0.82–0.91 → 0.49–0.67; `stream_bench` Phi-2-shaped Q4_K_M 62.6–76.0 →
/// 48.2–59.5 ms (22.5–27.3 → 28.7–35.5 GB/s).
pub(crate) fn matmul_rows_one(w: &WeightRef, a: &Activations, rows: Range<usize>, out: OutPtr) {
    debug_assert!(takes_one(w, a));
    // SAFETY: `available()` held when the kernel set was chosen (it is `Isa::Avx512Vnni`'s test,
    // and `amx::available()`, `Isa::Amx`'s, requires it).
    unsafe {
        match w.dtype {
            DType::Q4_0 => rows_q4_0_one(w, a, rows, out),
            DType::Q4K => rows_qk_one::<false>(w, a, rows, out),
            DType::Q5K => rows_qk_one::<true>(w, a, rows, out),
            _ => rows_q6k_one(w, a, rows, out),
        }
    }
}

/// Q4_0 weights against one token (decode): the 256-bit row kernel's arithmetic (x86's
/// `rows_q32`: group of 8 blocks in the 8 lanes, the same `vpdpbusd` sums and epilogue) with its
/// integer half on 512-bit vectors. A group's 8 blocks are loaded as two registers of four
/// (16 bytes each) and one `vpermt2d` per two 4-byte steps k puts dword k of block j in lane
/// 8·(k % 2) + j, so the nibbles take 4 `vpdpbusd` instead of 8 and 2 permutes replace the 8
/// unpacks; the two halves' exact i32 sums are added before the 8-lane epilogue. The 8 scales
/// come out of the group's first 128 bytes by one `vpermt2w` (the 256-bit kernel gathers them).
/// Measured against that kernel on Phi-2's fc1, one thread, weights in cache: 0.66 → 0.60 ms.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn rows_q4_0_one(w: &WeightRef, a: &Activations, rows: Range<usize>, out: OutPtr) {
    let groups = w.cols / 256;
    let m4 = _mm512_set1_epi8(0x0F);
    // Lane l takes dword k = k0 + l / 8 of block j = l % 8: blocks 0..4 are in the first
    // register (dword 4j + k), blocks 4..8 in the second (index 16 + 4(j − 4) + k).
    let pick = |k0: i32| {
        let mut idx = [0i32; 16];
        for (l, v) in idx.iter_mut().enumerate() {
            let (k, j) = (k0 + l as i32 / 8, l as i32 % 8);
            *v = if j < 4 { 4 * j + k } else { 16 + 4 * (j - 4) + k };
        }
        _mm512_loadu_si512(idx.as_ptr() as *const __m512i)
    };
    let (pick01, pick23) = (pick(0), pick(2));
    // Block j's f16 scale is 16-bit word 9j of the group's first 128 bytes.
    let dpick = _mm512_setr_epi32(9 << 16, (27 << 16) | 18, (45 << 16) | 36, (63 << 16) | 54, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    let xq = a.qt.as_ptr();
    for r in rows {
        let row = w.row(r);
        let mut acc = _mm256_setzero_ps();
        for g in 0..groups {
            x86::prefetch_group_one::<false>(row, g);
            let b = row.as_ptr().add(144 * g);
            let q = |j: usize| _mm_loadu_si128(b.add(2 + 18 * j) as *const __m128i);
            let lo = _mm512_inserti32x4::<3>(_mm512_inserti32x4::<2>(_mm512_inserti32x4::<1>(_mm512_castsi128_si512(q(0)), q(1)), q(2)), q(3));
            let hi = _mm512_inserti32x4::<3>(_mm512_inserti32x4::<2>(_mm512_inserti32x4::<1>(_mm512_castsi128_si512(q(4)), q(5)), q(6)), q(7));
            let q01 = _mm512_permutex2var_epi32(lo, pick01, hi);
            let q23 = _mm512_permutex2var_epi32(lo, pick23, hi);
            // qt's group g: 4-byte step k of the 8 blocks at 32k, so steps (0, 1), (2, 3),
            // (4, 5) (high nibbles of 0, 1) and (6, 7) are one 64-byte load each.
            let x = xq.add(256 * g) as *const __m512i;
            let s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(q01, m4), _mm512_loadu_si512(x));
            let s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(q23, m4), _mm512_loadu_si512(x.add(1)));
            let s0 = _mm512_dpbusd_epi32(s0, _mm512_and_si512(_mm512_srli_epi16::<4>(q01), m4), _mm512_loadu_si512(x.add(2)));
            let s1 = _mm512_dpbusd_epi32(s1, _mm512_and_si512(_mm512_srli_epi16::<4>(q23), m4), _mm512_loadu_si512(x.add(3)));
            let s = _mm512_add_epi32(s0, s1);
            let isum = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64::<1>(s));
            let d = _mm512_permutex2var_epi16(_mm512_loadu_si512(b as *const __m512i), dpick, _mm512_loadu_si512(b.add(64) as *const __m512i));
            acc = x86::scale_group::<false>(isum, _mm256_cvtph_ps(_mm512_castsi512_si128(d)), a, 0, g, acc);
        }
        x86::finish_row::<false>(row, a, 0, r, acc, out);
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn rows_qk_one<const Q5: bool>(w: &WeightRef, a: &Activations, rows: Range<usize>, out: OutPtr) {
    let bytes = if Q5 { 176 } else { 144 };
    let qs_off = if Q5 { 48 } else { 16 };
    let nb = w.cols / 256;
    let m4 = _mm512_set1_epi8(0x0F);
    let one = _mm512_set1_epi8(1);
    // The low nibbles in the low half, the high ones in the high half: one variable shift of a
    // broadcast (the blend of a shifted copy compiled to two more instructions).
    let nib = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(4));
    let mut pick = [_mm512_setzero_si512(); 4];
    let mut shift = [_mm512_setzero_si512(); 4];
    for jj in 0..4 {
        pick[jj] = _mm512_inserti64x4::<1>(_mm512_set1_epi32(2 * jj as i32), _mm256_set1_epi32(2 * jj as i32 + 1));
        shift[jj] = _mm512_inserti64x4::<1>(_mm512_set1_epi16(2 * jj as i16), _mm256_set1_epi16(2 * jj as i16 + 1));
    }
    let x = a.q.as_ptr() as *const __m512i;
    for r in rows.clone() {
        let rp = w.row(r).as_ptr();
        let mut acc = 0f32;
        for b in 0..nb {
            let blk = rp.add(b * bytes);
            // The weight stream, ~1.5 KB ahead (rows are contiguous, so this runs on into the
            // next row; one line per 64 bytes of this super-block).
            for l in 0..bytes.div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(1536 + 64 * l) as *const i8);
            }
            let (scales, mins) = x86::scales_mins_k4(blk.add(4));
            let pairs = x86::bsum_pairs(a, 0, nb, b);
            let mv = _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(mins as i64)), pairs);
            let sc = _mm512_cvtepu8_epi32(_mm_cvtsi64_si128(scales as i64));
            let qh = if Q5 { bcast_i(blk.add(16) as *const __m256i) } else { _mm512_setzero_si512() };
            let mut s = _mm512_setzero_si512();
            for jj in 0..4 {
                let q = bcast_i(blk.add(qs_off + 32 * jj) as *const __m256i);
                let mut v = _mm512_and_si512(_mm512_srlv_epi16(q, nib), m4);
                if Q5 {
                    let hb = _mm512_and_si512(_mm512_srlv_epi16(qh, shift[jj]), one);
                    v = _mm512_or_si512(v, _mm512_slli_epi16::<4>(hb));
                }
                let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v, _mm512_loadu_si512(x.add(4 * b + jj)));
                s = _mm512_dpwssd_epi32(s, p, _mm512_permutexvar_epi32(pick[jj], sc));
            }
            // isum and msum side by side: lanes [isum, msum, isum, msum], then the scalar twin's
            // (d·dx)·isum − (dmin·dx)·msum with d and dmin widened together (the same f32
            // operations, lane by lane).
            let s8 = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64::<1>(s));
            let h = _mm256_hadd_epi32(s8, mv);
            let h = _mm256_hadd_epi32(h, h);
            let sums = _mm256_cvtepi32_ps(_mm256_add_epi32(h, _mm256_permute2x128_si256::<0x01>(h, h)));
            let dd = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
            let v = _mm_mul_ps(_mm_mul_ps(dd, _mm_set1_ps(*a.d.get_unchecked(b))), _mm256_castps256_ps128(sums));
            acc += _mm_cvtss_f32(v) - _mm_cvtss_f32(_mm_movehdup_ps(v));
        }
        out.set(0, r, acc);
    }
}

/// Q6_K weights against one token, one row at a time like [`rows_qk_one`]: per 64 values one
/// `vpdpbusd` of the unsigned 6-bit values (q, 0..63) gives 16 lanes of four products (4 lanes
/// per sub-block of 16), one `vpdpwssd` adds them times their signed sub-block scale (|Σ| ≤
/// 4 · 63 · 128 fits i16; the scale's high half is cleared), then the super-block's
/// `isum = Σ − 32 · Σ_j sc_j · Σx_j` (exact) and the scalar twin's `(d · dx) · isum`. Its
/// weights asked for into L2 4 KB ahead as well (as one-token Q4_0 / Q8_0 do) measured the
/// same (`stream_bench` Phi-2-shaped Q4_K_M, 2026-12-03, alternating: 21.8–22.0 GB/s against
/// 21.1–22.1 without).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn rows_q6k_one(w: &WeightRef, a: &Activations, rows: Range<usize>, out: OutPtr) {
    let nb = w.cols / 256;
    let m4 = _mm512_set1_epi8(0x0F);
    let lo16 = _mm512_set1_epi32(0xFFFF);
    // Chunk (n, c) of 64 values: lane l's sub-block is 8n + 4c + l / 4.
    let mut pick = [_mm512_setzero_si512(); 4];
    for (k, p) in pick.iter_mut().enumerate() {
        let mut idx = [0i32; 16];
        for (l, v) in idx.iter_mut().enumerate() {
            *v = (4 * k + l / 4) as i32;
        }
        *p = _mm512_loadu_si512(idx.as_ptr() as *const __m512i);
    }
    // The two high bits of each value straight into bits 4..6 of its byte: c = 0 shifts its
    // halves' bits 0..2 and 2..4 left by 4 and 2, c = 1 its bits 4..6 (in place) and 6..8 right by
    // 2 (16-bit shifts, left by at most 4 or right by at most 2: no kept bit crosses a byte).
    let left = _mm512_inserti64x4::<1>(_mm512_set1_epi16(4), _mm256_set1_epi16(2));
    let right = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(2));
    let m30 = _mm512_set1_epi8(0x30);
    let x = a.q.as_ptr() as *const __m512i;
    for r in rows {
        let rp = w.row(r).as_ptr();
        let mut acc = 0f32;
        for b in 0..nb {
            let blk = rp.add(b * 210);
            for l in 0..4 {
                _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(1536 + 64 * l) as *const i8);
            }
            let sc = _mm512_cvtepi8_epi32(_mm_loadu_si128(blk.add(192) as *const __m128i));
            let scl = _mm512_and_si512(sc, lo16);
            let mut s = _mm512_setzero_si512();
            for n in 0..2 {
                let l = _mm512_loadu_si512(blk.add(64 * n) as *const __m512i);
                let h = bcast_i(blk.add(128 + 32 * n) as *const __m256i);
                for c in 0..2 {
                    let low = if c == 0 { _mm512_and_si512(l, m4) } else { _mm512_and_si512(_mm512_srli_epi16::<4>(l), m4) };
                    let high = _mm512_and_si512(if c == 0 { _mm512_sllv_epi16(h, left) } else { _mm512_srlv_epi16(h, right) }, m30);
                    let q = _mm512_or_si512(low, high);
                    let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, _mm512_loadu_si512(x.add(4 * b + 2 * n + c)));
                    s = _mm512_dpwssd_epi32(s, p, _mm512_permutexvar_epi32(pick[2 * n + c], scl));
                }
            }
            // The −32 of every value lane by lane, then one reduction (integer sums: exact).
            let bs = _mm512_loadu_si512(a.bsums.as_ptr().add(b * 16) as *const __m512i);
            let isum = _mm512_reduce_add_epi32(_mm512_sub_epi32(s, _mm512_slli_epi32::<5>(_mm512_mullo_epi32(sc, bs))));
            let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((blk.add(208) as *const u16).read_unaligned() as i32)));
            acc += (d * *a.d.get_unchecked(b)) * isum as f32;
        }
        out.set(0, r, acc);
    }
}
