//! x86-64 AVX2 (+ FMA, F16C) kernels. Each computes a tile of `R` rows × `C` tokens (`R·C = 8`
//! output elements, one per f32 lane) and follows the scalar definition exactly: the integer
//! dot product of each block is reduced exactly to one i32 per output element (`tree8`), then
//! scaled and accumulated in f32 in block order. Tiles that do not fill up (row or token tails)
//! go to smaller tiles or to the scalar twin, which gives the same bits. (One-token F16 / BF16
//! takes tiles of 2 rows, [`rows_float_one`]: fewer weight streams at once.)

use std::arch::x86_64::*;
use std::ops::Range;

use super::attention::KvElem;
use super::{scalar, Activations, OutPtr, WeightRef};
use crate::dtype::DType;

pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// AVX-VNNI (`vpdpbusd` on 256-bit vectors): one instruction for the u8 × i8 products and their
/// sums in fours that AVX2 does with `vpmaddubsw` + `vpmaddwd`. Same i32 results (no
/// intermediate i16 saturation can occur for our value ranges), so the same bits.
pub(crate) fn vnni_available() -> bool {
    available() && is_x86_feature_detected!("avxvnni")
}

/// Which instructions the Q4_0 / Q8_0 row kernels take for the u8 × i8 products summed in fours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dot {
    /// AVX2: `vpmaddubsw` + `vpmaddwd`.
    Avx2,
    /// AVX-VNNI: `vpdpbusd` in its VEX encoding.
    AvxVnni,
    /// AVX512-VNNI + AVX512VL: the same `vpdpbusd` on 256-bit vectors in its EVEX encoding
    /// (Ice Lake and later Xeons, AMD Zen 4, which lack the VEX one).
    Evex,
}

/// `Dot` as a const generic.
const DOT_AVX2: u8 = 0;
const DOT_AVXVNNI: u8 = 1;
const DOT_EVEX: u8 = 2;

pub(super) fn matmul_rows(w: &WeightRef, act: &Activations, rows: Range<usize>, out: OutPtr, dot: Dot) {
    if matches!(w.dtype, DType::Q4_0 | DType::Q8_0) {
        // SAFETY: as below (`Dot::Evex`: `super::vnni512::available()` was checked).
        unsafe {
            match (w.dtype, dot) {
                (DType::Q4_0, Dot::Avx2) => rows_q32_avx2::<false>(w, act, rows, out),
                (DType::Q8_0, Dot::Avx2) => rows_q32_avx2::<true>(w, act, rows, out),
                (DType::Q4_0, Dot::AvxVnni) => rows_q32_vnni::<false>(w, act, rows, out),
                (DType::Q8_0, Dot::AvxVnni) => rows_q32_vnni::<true>(w, act, rows, out),
                (DType::Q4_0, Dot::Evex) => rows_q32_evex::<false>(w, act, rows, out),
                _ => rows_q32_evex::<true>(w, act, rows, out),
            }
        }
        return;
    }
    if act.tokens == 1 && matches!(w.dtype, DType::F16 | DType::BF16) {
        // SAFETY: as below.
        unsafe {
            if w.dtype == DType::BF16 {
                rows_float_one::<true>(w, act, rows, out)
            } else {
                rows_float_one::<false>(w, act, rows, out)
            }
        };
        return;
    }
    let vnni = dot == Dot::AvxVnni;
    let tokens = act.tokens;
    // Token tiles: 4 at a time, then 2, then 1; each over the rows in tiles of 8 / C.
    let mut t0 = 0;
    while t0 < tokens {
        let c = tile_width(tokens - t0);
        // SAFETY: `available()` (and `vnni_available()` for `vnni`) was checked when the kernel
        // set was chosen (`super::isa`, `super::matmul_with`).
        unsafe {
            match (c, vnni) {
                (4, false) => tiles::<2, 4>(w, act, rows.clone(), t0, out),
                (2, false) => tiles::<4, 2>(w, act, rows.clone(), t0, out),
                (_, false) => tiles::<8, 1>(w, act, rows.clone(), t0, out),
                (4, true) => tiles_vnni::<2, 4>(w, act, rows.clone(), t0, out),
                (2, true) => tiles_vnni::<4, 2>(w, act, rows.clone(), t0, out),
                (_, true) => tiles_vnni::<8, 1>(w, act, rows.clone(), t0, out),
            }
        }
        t0 += c;
    }
}

/// Tokens in the next token tile when `left` remain: 4, then 2, then 1.
#[inline(always)]
fn tile_width(left: usize) -> usize {
    match left {
        n if n >= 4 => 4,
        n if n >= 2 => 2,
        _ => 1,
    }
}

/// Rows `rows` × tokens `t0..t0 + C` in tiles of `R` rows; leftover rows go to the scalar twin.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tiles<const R: usize, const C: usize>(w: &WeightRef, act: &Activations, rows: Range<usize>, t0: usize, out: OutPtr) {
    tiles_impl::<R, C, false>(w, act, rows, t0, out)
}

/// [`tiles`] with AVX-VNNI products for Q4_0 / Q8_0.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn tiles_vnni<const R: usize, const C: usize>(w: &WeightRef, act: &Activations, rows: Range<usize>, t0: usize, out: OutPtr) {
    tiles_impl::<R, C, true>(w, act, rows, t0, out)
}

#[inline(always)]
unsafe fn tiles_impl<const R: usize, const C: usize, const VNNI: bool>(
    w: &WeightRef,
    act: &Activations,
    rows: Range<usize>,
    t0: usize,
    out: OutPtr,
) {
    let mut r0 = rows.start;
    while r0 + R <= rows.end {
        let acc = match w.dtype {
            DType::Q4K => tile_qk::<R, C, false>(w, act, r0, t0),
            DType::Q5K => tile_qk::<R, C, true>(w, act, r0, t0),
            DType::Q6K => tile_q6k::<R, C>(w, act, r0, t0),
            DType::F16 => tile_float::<R, C, false>(w, act, r0, t0, false),
            DType::BF16 => tile_float::<R, C, true>(w, act, r0, t0, false),
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

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_q32_avx2<const SIGNED: bool>(w: &WeightRef, a: &Activations, rows: Range<usize>, out: OutPtr) {
    rows_q32::<SIGNED, DOT_AVX2>(w, a, rows, out)
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn rows_q32_vnni<const SIGNED: bool>(w: &WeightRef, a: &Activations, rows: Range<usize>, out: OutPtr) {
    rows_q32::<SIGNED, DOT_AVXVNNI>(w, a, rows, out)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn rows_q32_evex<const SIGNED: bool>(w: &WeightRef, a: &Activations, rows: Range<usize>, out: OutPtr) {
    rows_q32::<SIGNED, DOT_EVEX>(w, a, rows, out)
}

/// How far ahead (in bytes) the weight stream is prefetched. Measured with `stream_bench` on
/// Phi-2-shaped weights (2 MB pages, two threads): no prefetch costs ~25% (Q4_0 24.8 → 17.3
/// GB/s); too far ahead falls off a cliff (Q8_0 at 1.6 KB ahead 26.7 GB/s, 2.7 KB 21, 5.4 KB
/// 17.6; Q4_0 at 2.9 KB 24.2, 4.3 KB 17.7). About 1.5 KB suits both.
const PREFETCH_BYTES: usize = 1536;

/// How far ahead (in bytes) the one-token Q4_0 product also asks for the weight stream into
/// L2 (`prefetcht1`), so that [`PREFETCH_BYTES`]' requests into L1 find it there: those alone
/// are too close to cover the memory's latency, and they cannot go farther (above). Measured,
/// Phi-2-shaped Q4_0, two threads, alternating builds: `stream_bench` 24.5–24.7 GB/s without,
/// 25.7–25.9 at 4 KB, 26.0–26.1 at 8 KB; `decode_bench` (128-token prompt) steps 72.7–73.3 →
/// 70.1–71.5 ms at 8 KB. (2026-12-02, a day on which the Q8_0 and F16 streams below measured
/// slower than before: 2 KB 22.2-22.6, 4 KB 23.4-24.4, 6-12 KB 22.7-23.6.)
const PREFETCH_L2_BYTES: usize = 8192;

/// The same for one-token Q8_0. It measured no better on an earlier day (`stream_bench`
/// 23.8–25.6 GB/s without, 24.8–25.7 at 4 KB, 23.4–23.6 at 8 KB), but on 2026-12-02, when
/// streams without software prefetches measured slower than on earlier days: 20.2-20.9
/// without, 22.6-23.7 at 2 KB, 22.9-23.7 at 3 KB, 23.7 at 4 KB and 21.4-21.6 at 5-6 KB. 3 KB
/// sits in the middle of the plateau.
const PREFETCH_L2_BYTES_Q8_0: usize = 3072;

/// How far ahead (in bytes) one-token Q8_0 asks for its weights into L1, with the L2 requests
/// [`PREFETCH_L2_BYTES_Q8_0`] ahead ([`PREFETCH_BYTES`] was chosen without them). Measured,
/// `stream_bench` Phi-2-shaped Q8_0, two threads, 2026-12-03, alternating: 1536 B 26.5–26.8
/// GB/s, 1024 B 27.0–28.3, 768 B 27.3–28.0, 512 B 26.9–27.0, none 25.3–25.7 (one-token Q4_0,
/// the same way: 768 B to 2 KB within noise, 30.3–31.4). Then against the build before it,
/// alternating: 27.8–29.0 → 28.7–29.6 GB/s.
const PREFETCH_BYTES_Q8_0_ONE: usize = 1024;

/// The one-token kernels' requests for group `g` of a Q4_0 / Q8_0 `row`: into L1
/// [`PREFETCH_BYTES`] (Q8_0: [`PREFETCH_BYTES_Q8_0_ONE`]) ahead, as [`prefetch_group`] does,
/// and into L2 [`PREFETCH_L2_BYTES`] (Q8_0: [`PREFETCH_L2_BYTES_Q8_0`]) ahead, every line of
/// the group.
#[inline(always)]
pub(super) unsafe fn prefetch_group_one<const SIGNED: bool>(row: &[u8], g: usize) {
    let (bytes, l1, l2, lines) = if SIGNED { (34, PREFETCH_BYTES_Q8_0_ONE, PREFETCH_L2_BYTES_Q8_0, 5) } else { (18, PREFETCH_BYTES, PREFETCH_L2_BYTES, 3) };
    prefetch_group::<SIGNED>(row, g, l1 / bytes);
    let p = row.as_ptr().wrapping_add(8 * g * bytes + l2);
    for line in 0..lines {
        _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(64 * line) as *const i8);
    }
}

/// [`PREFETCH_BYTES`] in blocks of Q4_0 (18 bytes) or Q8_0 (34 bytes).
pub(super) const fn prefetch_blocks<const SIGNED: bool>() -> usize {
    PREFETCH_BYTES / if SIGNED { 34 } else { 18 }
}

/// Weights of one row regrouped for 8-block lanes (`transpose_q32`), reused across token tiles.
#[derive(Default)]
struct RowCache {
    /// Per group of 8 blocks: 8 weight vectors (k = 0..8), (Q8_0) their absolute values, and
    /// the 8 block scales as f32.
    w: Vec<__m256i>,
    aw: Vec<__m256i>,
    d: Vec<__m256>,
}

thread_local! {
    static ROW_CACHE: std::cell::RefCell<RowCache> = const { std::cell::RefCell::new(RowCache { w: Vec::new(), aw: Vec::new(), d: Vec::new() }) };
}

/// Asks for the weights `ahead` blocks past group `g` of `row` (they stream from memory once;
/// rows are contiguous, so this runs on into the next rows). A group is 144 (Q4_0) or 272
/// (Q8_0) bytes: every 64-byte line of it is touched.
#[inline(always)]
pub(super) unsafe fn prefetch_group<const SIGNED: bool>(row: &[u8], g: usize, ahead: usize) {
    let p = row.as_ptr().wrapping_add((8 * g + ahead) * if SIGNED { 34 } else { 18 });
    for line in 0..if ahead == 0 { 0 } else if SIGNED { 5 } else { 3 } {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * line) as *const i8);
    }
}

/// 4 dwords of each of 8 blocks (16 bytes at `p + j·stride`) → 4 vectors, vector k holding
/// dword k of block j in i32 lane j.
#[inline(always)]
unsafe fn transpose_8x4(p: *const u8, stride: usize) -> [__m256i; 4] {
    // (Written out: a closure would not inherit the caller's target features, so its
    // intrinsics would be calls.)
    let mut y = [_mm256_setzero_si256(); 4];
    for (j, yj) in y.iter_mut().enumerate() {
        let lo = _mm_loadu_si128(p.add(j * stride) as *const __m128i);
        let hi = _mm_loadu_si128(p.add((j + 4) * stride) as *const __m128i);
        *yj = _mm256_set_m128i(hi, lo);
    }
    let t0 = _mm256_unpacklo_epi32(y[0], y[1]);
    let t1 = _mm256_unpackhi_epi32(y[0], y[1]);
    let t2 = _mm256_unpacklo_epi32(y[2], y[3]);
    let t3 = _mm256_unpackhi_epi32(y[2], y[3]);
    [
        _mm256_unpacklo_epi64(t0, t2),
        _mm256_unpackhi_epi64(t0, t2),
        _mm256_unpacklo_epi64(t1, t3),
        _mm256_unpackhi_epi64(t1, t3),
    ]
}

/// The weights of blocks `8g .. 8g + 8` of `row` as 8 vectors matching `Activations::qt`
/// (vector k, lane j: values 4k..4k+4 of block 8g + j; Q4_0: unsigned nibbles 0..15, Q8_0: i8),
/// and their scales.
#[inline(always)]
pub(super) unsafe fn transpose_q32<const SIGNED: bool>(row: &[u8], g: usize) -> ([__m256i; 8], __m256) {
    let bytes = if SIGNED { 34 } else { 18 };
    let base = row.as_ptr().add(8 * g * bytes);
    let mut wk = [_mm256_setzero_si256(); 8];
    if SIGNED {
        let lo = transpose_8x4(base.add(2), bytes);
        let hi = transpose_8x4(base.add(18), bytes);
        wk[..4].copy_from_slice(&lo);
        wk[4..].copy_from_slice(&hi);
    } else {
        let m = _mm256_set1_epi8(0x0F);
        let q = transpose_8x4(base.add(2), bytes);
        for k in 0..4 {
            wk[k] = _mm256_and_si256(q[k], m);
            wk[k + 4] = _mm256_and_si256(_mm256_srli_epi16(q[k], 4), m);
        }
    }
    if SIGNED {
        let mut h = [0u16; 8];
        for (j, v) in h.iter_mut().enumerate() {
            *v = u16_at(row, (8 * g + j) * bytes);
        }
        return (wk, _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i)));
    }
    (wk, q4_0_scales(base))
}

/// The f16 scales of the 8 Q4_0 blocks at `base` as f32: one gather of the 8 dwords that start
/// the blocks (scale in the low half), narrowed and widened by F16C. Eight scalar loads into a
/// stack array instead cost eight shuffles on the port the transposes already saturate (and a
/// store-forwarding stall): measured, one thread, T = 1: 21.7 → 25.8 GB/s, and a Phi-2-shaped
/// decode step 87 → 80 ms. (Q8_0, whose transposes are twice as long, measured ~4% slower with
/// the gather, so it keeps the scalar loads. Widening with integer ops instead of F16C was 4x
/// slower: f16 subnormals become f32 subnormals, which take microcode assists.)
#[inline(always)]
unsafe fn q4_0_scales(base: *const u8) -> __m256 {
    let idx = _mm256_setr_epi32(0, 18, 36, 54, 72, 90, 108, 126);
    let d = _mm256_and_si256(_mm256_i32gather_epi32::<1>(base as *const i32, idx), _mm256_set1_epi32(0xFFFF));
    // [d0..d3, d0..d3 | d4..d7, d4..d7] as u16 → lanes 0..8 of the low 128 bits.
    let packed = _mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi32(d, d));
    _mm256_cvtph_ps(_mm256_castsi256_si128(packed))
}

/// Q4_0 (`SIGNED = false`: unsigned nibbles, then minus 8·Σx per block) and Q8_0 (`SIGNED`: the
/// sign trick |w| · sign(x, w), exact since x ∈ [−127, 127]) for `rows` × every token: groups
/// of 8 blocks in the 8 lanes (block b in lane b % 8, as the definition has it), no horizontal
/// sums until the end of a row. With several tokens each row's regrouped weights are made once
/// (`RowCache`) and reused by every token tile ([`token_tile`]).
#[inline(always)]
unsafe fn rows_q32<const SIGNED: bool, const DOT: u8>(w: &WeightRef, a: &Activations, rows: Range<usize>, out: OutPtr) {
    let nb = w.cols / 32;
    let groups = nb / 8;
    let tokens = a.tokens;
    if tokens == 1 {
        // One token: the regrouped weights are used once, straight from registers (measured: ~10%
        // less compute than writing and re-reading them, ~1% faster decode).
        for r in rows {
            let row = w.row(r);
            let mut acc = _mm256_setzero_ps();
            for g in 0..groups {
                prefetch_group_one::<SIGNED>(row, g);
                let (wk, dw) = transpose_q32::<SIGNED>(row, g);
                acc = group_dot::<SIGNED, DOT>(&wk, dw, a, 0, g, acc);
            }
            finish_row::<SIGNED>(row, a, 0, r, acc, out);
        }
        return;
    }
    // Taken out of the thread-local (and put back) so that the work below is not inside a
    // closure, which would not inherit this function's target features.
    let mut cache = ROW_CACHE.take();
    cache.w.resize(groups * 8, _mm256_setzero_si256());
    cache.aw.resize(if SIGNED { groups * 8 } else { 0 }, _mm256_setzero_si256());
    cache.d.resize(groups, _mm256_setzero_ps());
    for r in rows {
        let row = w.row(r);
        for g in 0..groups {
            prefetch_group::<SIGNED>(row, g, prefetch_blocks::<SIGNED>());
            let (wk, dw) = transpose_q32::<SIGNED>(row, g);
            cache.w[8 * g..8 * g + 8].copy_from_slice(&wk);
            if SIGNED {
                // |w| once per row, for every token; w's signs go onto the activations.
                for (k, v) in wk.iter().enumerate() {
                    cache.aw[8 * g + k] = _mm256_sign_epi8(*v, *v);
                }
            }
            cache.d[g] = dw;
        }
        let mut t0 = 0;
        while t0 < tokens {
            let c = tile_width(tokens - t0);
            match c {
                4 => token_tile::<SIGNED, DOT, 4>(row, &cache, a, t0, r, out),
                2 => token_tile::<SIGNED, DOT, 2>(row, &cache, a, t0, r, out),
                _ => token_tile::<SIGNED, DOT, 1>(row, &cache, a, t0, r, out),
            }
            t0 += c;
        }
    }
    ROW_CACHE.set(cache);
}

/// The products of vector `u` (u8) and `s` (i8) summed in fours onto `acc`.
#[inline(always)]
unsafe fn dot4<const DOT: u8>(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    if DOT == DOT_AVXVNNI {
        _mm256_dpbusd_avx_epi32(acc, u, s)
    } else if DOT == DOT_EVEX {
        _mm256_dpbusd_epi32(acc, u, s)
    } else {
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
    }
}

/// The integer block sums of group `g` for token `t` (8 blocks in the 8 lanes) scaled onto
/// `acc`: `acc + (dw · dx) · isum`. `wk` as `transpose_q32` gives it (Q8_0: signed weights).
#[inline(always)]
unsafe fn group_dot<const SIGNED: bool, const DOT: u8>(wk: &[__m256i; 8], dw: __m256, a: &Activations, t: usize, g: usize, acc: __m256) -> __m256 {
    let groups = a.cols / 256;
    let xp = a.qt.as_ptr().add((t * groups + g) * 256) as *const __m256i;
    // Four independent i32 accumulators (k % 4): one chain of eight dependent `vpdpbusd`s would
    // be latency-bound (measured: two chains are slower). Integer sums: the same result.
    let mut part = [_mm256_setzero_si256(); 4];
    for (k, &wv) in wk.iter().enumerate() {
        let x = _mm256_loadu_si256(xp.add(k));
        part[k % 4] = if SIGNED { dot4::<DOT>(part[k % 4], _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(x, wv)) } else { dot4::<DOT>(part[k % 4], wv, x) };
    }
    let isum = _mm256_add_epi32(_mm256_add_epi32(part[0], part[1]), _mm256_add_epi32(part[2], part[3]));
    scale_group::<SIGNED>(isum, dw, a, t, g, acc)
}

/// `acc + (dw · dx) · (isum − [Q4_0] 8·Σx)` for the 8 blocks of group `g` of token `t`.
#[inline(always)]
pub(super) unsafe fn scale_group<const SIGNED: bool>(mut isum: __m256i, dw: __m256, a: &Activations, t: usize, g: usize, acc: __m256) -> __m256 {
    let bi = t * (a.cols / 32) + 8 * g;
    if !SIGNED {
        let sx = _mm256_loadu_si256(a.s.as_ptr().add(bi) as *const __m256i);
        isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(sx, 3));
    }
    let s = _mm256_mul_ps(dw, _mm256_loadu_ps(a.d.as_ptr().add(bi)));
    _mm256_add_ps(acc, _mm256_mul_ps(s, _mm256_cvtepi32_ps(isum)))
}

/// Row `r`'s lanes of token `t`: the blocks past the last full group (scalar definition, same
/// lanes), then the fixed lane reduction.
#[inline(always)]
pub(super) unsafe fn finish_row<const SIGNED: bool>(row: &[u8], a: &Activations, t: usize, r: usize, acc: __m256, out: OutPtr) {
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    out.set(t, r, scalar::finish_q32::<SIGNED>(lanes, row, a, t, 8 * (a.cols / 256)));
}

/// Row `r` × tokens `t0 .. t0 + C` from the row's regrouped weights. The weight vector is loaded
/// once per k for the C tokens, and each token keeps two i32 chains (k even / odd), so 2·C
/// independent `vpdpbusd` chains are in flight with few registers.
#[inline(always)]
unsafe fn token_tile<const SIGNED: bool, const DOT: u8, const C: usize>(
    row: &[u8],
    cache: &RowCache,
    a: &Activations,
    t0: usize,
    r: usize,
    out: OutPtr,
) {
    let groups = a.cols / 256;
    let mut acc = [_mm256_setzero_ps(); C];
    for g in 0..groups {
        let mut part = [[_mm256_setzero_si256(); 2]; C];
        let wp = cache.w.as_ptr().add(8 * g);
        for k in 0..8 {
            let wv = *wp.add(k);
            let uv = if SIGNED { *cache.aw.as_ptr().add(8 * g + k) } else { wv };
            for (c, p) in part.iter_mut().enumerate() {
                let x = _mm256_loadu_si256((a.qt.as_ptr().add(((t0 + c) * groups + g) * 256) as *const __m256i).add(k));
                let x = if SIGNED { _mm256_sign_epi8(x, wv) } else { x };
                p[k % 2] = dot4::<DOT>(p[k % 2], uv, x);
            }
        }
        for (c, acc_c) in acc.iter_mut().enumerate() {
            let isum = _mm256_add_epi32(part[c][0], part[c][1]);
            *acc_c = scale_group::<SIGNED>(isum, cache.d[g], a, t0 + c, g, *acc_c);
        }
    }
    for (c, acc_c) in acc.iter().enumerate() {
        finish_row::<SIGNED>(row, a, t0 + c, r, *acc_c, out);
    }
}

/// Eight i32x8 vectors → one i32x8 holding each vector's lane sum (exact).
#[inline(always)]
pub(super) unsafe fn tree8(v: &[__m256i; 8]) -> __m256i {
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
pub(super) unsafe fn per_row_f16<const R: usize, const C: usize>(f: impl Fn(usize) -> u16) -> __m256 {
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
pub(super) unsafe fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

#[inline(always)]
unsafe fn load32(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// The 16 partial sums of token `t`'s activation super-block `b` as i16 (each is at most
/// 16 · 127 in magnitude, so the narrowing is exact).
#[inline(always)]
unsafe fn bsums_i16(a: &Activations, t: usize, nb: usize, b: usize) -> __m256i {
    let p = a.bsums.as_ptr().add((t * nb + b) * 16) as *const __m256i;
    _mm256_permute4x64_epi64(_mm256_packs_epi32(_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1))), 0xD8)
}

/// Σx of each of the 8 sub-blocks of 32 of token `t`'s super-block `b` (i32, in order).
#[inline(always)]
pub(super) unsafe fn bsum_pairs(a: &Activations, t: usize, nb: usize, b: usize) -> __m256i {
    let p = a.bsums.as_ptr().add((t * nb + b) * 16) as *const __m256i;
    _mm256_permute4x64_epi64(_mm256_hadd_epi32(_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1))), 0xD8)
}

/// The K-quant weight types as the const generic parameter of the batch kernels (`amx`,
/// `vnni512`), which an enum cannot be on stable Rust.
pub(super) const K4: u8 = 4;
pub(super) const K5: u8 = 5;
pub(super) const K6: u8 = 6;

/// The weight type of K-quant kind `kind` ([`K4`], [`K5`], [`K6`]).
pub(super) const fn k_dtype(kind: u8) -> DType {
    match kind {
        K4 => DType::Q4K,
        K5 => DType::Q5K,
        _ => DType::Q6K,
    }
}

/// The 8 six-bit scales and 8 mins of a Q4_K / Q5_K super-block (its 12 scale bytes at `q`),
/// byte j of each result being sub-block j's ([`super::scale_min_k4`] for all j at once).
#[inline(always)]
pub(super) unsafe fn scales_mins_k4(q: *const u8) -> (u64, u64) {
    let u = |i: usize| u32::from_le_bytes([*q.add(4 * i), *q.add(4 * i + 1), *q.add(4 * i + 2), *q.add(4 * i + 3)]);
    let (u0, u1, u2) = (u(0), u(1), u(2));
    let sc_lo = u0 & 0x3F3F_3F3F;
    let m_lo = u1 & 0x3F3F_3F3F;
    let sc_hi = (u2 & 0x0F0F_0F0F) | (((u0 >> 6) & 0x0303_0303) << 4);
    let m_hi = ((u2 >> 4) & 0x0F0F_0F0F) | (((u1 >> 6) & 0x0303_0303) << 4);
    (sc_lo as u64 | (sc_hi as u64) << 32, m_lo as u64 | (m_hi as u64) << 32)
}

/// Asks for super-block `b` of the `R` rows after this tile's (`bytes` per super-block): the
/// next tile reads them, so by then they are in cache. A tile reads its rows as `R` interleaved
/// streams, which the hardware prefetchers follow poorly (measured on Q6_K/Q4_K decode: ~2x
/// from this, two threads streaming from memory).
#[inline(always)]
pub(super) unsafe fn prefetch_next_tile<const R: usize>(w: &WeightRef, r0: usize, b: usize, bytes: usize) {
    let row_bytes = w.row_bytes();
    let base = w.data.as_ptr().wrapping_add((r0 + R) * row_bytes + b * bytes);
    let end = w.data.as_ptr().wrapping_add(w.data.len());
    for r in 0..R {
        let p = base.wrapping_add(r * row_bytes);
        let mut off = 0;
        while off < bytes + 63 {
            let q = p.wrapping_add(off.min(bytes - 1));
            if q < end {
                _mm_prefetch::<_MM_HINT_T0>(q as *const i8);
            }
            off += 64;
        }
    }
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
        prefetch_next_tile::<R>(w, r0, b, bytes);
        let mut v = [_mm256_setzero_si256(); 8];
        // msum per output: lane j of mv[k] holds m_j · (Σx of sub-block j), reduced by a tree.
        let mut mv = [_mm256_setzero_si256(); 8];
        let mut pairs = [_mm256_setzero_si256(); C];
        for (c, pc) in pairs.iter_mut().enumerate() {
            *pc = bsum_pairs(a, t0 + c, nb, b);
        }
        for r in 0..R {
            let blk = &rows[r][b * bytes..(b + 1) * bytes];
            let (scales, mins) = scales_mins_k4(blk.as_ptr().add(4));
            let m32 = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(mins as i64));
            for c in 0..C {
                mv[r * C + c] = _mm256_mullo_epi32(m32, pairs[c]);
            }
            let sc = |j: usize| ((scales >> (8 * j)) & 0xFF) as i16;
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
                let s_lo = _mm256_set1_epi16(sc(2 * jj));
                let s_hi = _mm256_set1_epi16(sc(2 * jj + 1));
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
        let mv = _mm256_mul_ps(_mm256_mul_ps(dmin, dx), _mm256_cvtepi32_ps(tree8(&mv)));
        acc = _mm256_add_ps(acc, _mm256_sub_ps(av, mv));
    }
    let mut outv = [0f32; 8];
    _mm256_storeu_ps(outv.as_mut_ptr(), acc);
    outv
}

/// The unsigned 6-bit values (q + 32, 0..63) of half `n` of the Q6_K super-block at `blk`, as 4
/// vectors of 32: vector g holds values `128n + 32g .. +32` (low nibbles from `ql`, two high
/// bits from `qh`).
#[inline(always)]
pub(super) unsafe fn q6k_groups(blk: *const u8, n: usize) -> [__m256i; 4] {
    let (m4, m2) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x03));
    let ql0 = load32(blk.add(64 * n));
    let ql1 = load32(blk.add(64 * n + 32));
    let qh = load32(blk.add(128 + 32 * n));
    // (No closure for the high bits: it would not inherit the caller's target features.)
    [
        _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4)),
        _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4)),
    ]
}

/// Q6_K: unsigned 6-bit values (q + 32) against x, scaled per 16 with the signed scales, minus
/// 32 · Σ_j sc_j · Σx after the tree.
#[inline(always)]
unsafe fn tile_q6k<const R: usize, const C: usize>(w: &WeightRef, a: &Activations, r0: usize, t0: usize) -> [f32; 8] {
    let nb = w.cols / 256;
    let rows: [&[u8]; R] = std::array::from_fn(|r| w.row(r0 + r));
    let mut acc = _mm256_setzero_ps();
    for b in 0..nb {
        prefetch_next_tile::<R>(w, r0, b, 210);
        let mut v = [_mm256_setzero_si256(); 8];
        let mut bs16 = [_mm256_setzero_si256(); C];
        for (c, bc) in bs16.iter_mut().enumerate() {
            *bc = bsums_i16(a, t0 + c, nb, b);
        }
        for r in 0..R {
            let blk = &rows[r][b * 210..(b + 1) * 210];
            let sc8 = _mm_loadu_si128(blk.as_ptr().add(192) as *const __m128i);
            // The −32 of every value: v −= 32 · Σ_j sc_j · Σx_j (lane-wise; the tree sums it).
            let sc16 = _mm256_cvtepi8_epi16(sc8);
            for c in 0..C {
                let k = r * C + c;
                v[k] = _mm256_sub_epi32(v[k], _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs16[c]), 5));
            }
            for n in 0..2 {
                let groups = q6k_groups(blk.as_ptr(), n);
                for (g, q) in groups.iter().enumerate() {
                    // Elements 128n + 32g .. +32: sub-blocks j and j + 1 (16 values each).
                    let j = 8 * n + 2 * g;
                    // Scale j in the low 128 bits, j + 1 in the high ones (i16).
                    let pick = _mm_set_epi64x(0x0101_0101_0101_0101 * (j as i64 + 1), 0x0101_0101_0101_0101 * j as i64);
                    let s = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, pick));
                    for c in 0..C {
                        let xp = a.q.as_ptr().add((t0 + c) * a.cols + 256 * b + 128 * n + 32 * g) as *const u8;
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(*q, load32(xp)), s);
                        let k = r * C + c;
                        v[k] = _mm256_add_epi32(v[k], p);
                    }
                }
            }
        }
        let isum = tree8(&v);
        let dx = per_token_f32::<C>(&a.d[b * a.tokens + t0..b * a.tokens + t0 + C]);
        let d = per_row_f16::<R, C>(|r| u16_at(rows[r], b * 210 + 208));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(isum)));
    }
    let mut outv = [0f32; 8];
    _mm256_storeu_ps(outv.as_mut_ptr(), acc);
    outv
}

/// How far ahead of its reads the one-token F16 / BF16 product asks for each row into L2.
const FLOAT_PREFETCH_L2_BYTES: usize = 2048;

/// F16 / BF16 weights against one token (decode): two rows at a time ([`tile_float`] with
/// `R = 2`, `C = 1`: two 8-lane chains, each the definition's sums of one row), each row
/// prefetched into L2 [`FLOAT_PREFETCH_L2_BYTES`] ahead. The 8-row tiles the batches take read
/// 8 interleaved streams and have no prefetches; one row alone is one chain of dependent adds.
/// Measured (`stream_bench`, Phi-2-shaped F16, 2 threads, 2026-12-02, a day on which weight
/// streams without software prefetches measured slower than on earlier days): 8-row tiles
/// 17.8-18.1 GB/s; 2 rows without prefetches 18.2, with L2 prefetches at 2 KB 21.5-21.9 (4 KB
/// 21.5-21.7; 2 KB without running on into the next rows 20.4-20.7; with L1 prefetches 128 B
/// to 1 KB ahead as well, no better); 4 and 8 rows with them 19.8-20.8. A multiply and an add
/// instead of the FMA (the products are exact: the same bits) measured the same.
///
/// Tried and not kept, on the AMD EPYC VM of 2026-12-04, x86 family not recorded (where the AVX512-VNNI set is
/// chosen; this AVX2 kernel serves it too): 4 or 8 rows at a time. Each row's sum is one chain
/// of dependent FMAs (the definition fixes its order), so two rows cap a core at ~35 GB/s of F16 weights from cache (`kernel_bench --threads
/// 1 --tokens 1 --types f16 --shape 192x2560`: 34–38 GB/s). `stream_bench` (Phi-2-shaped F16,
/// 2 threads, rounds alternating 2 / 4 / 8 rows, median ms): while the VM's probe read ~60 GB/s,
/// 2 rows 123–138, 4 rows 94–101, 8 rows 89–104; while it read 40–47 GB/s, as it mostly does,
/// 2 rows 132–140, 4 rows 132–160, 8 rows 139–153. More rows win only where two cores can
/// stream more than ~70 GB/s. Also not kept, on an AMD EPYC of x86 family 26 (Zen 5, 2-cycle
/// vector adds), 2026-12-04: a multiply and an add instead of the FMA (the same bits), alone or
/// with 4 rows. From cache they are faster (`kernel_bench --threads 1 --tokens 1 --types f16
/// --shape 192x2560`: FMA 31–33 GB/s, multiply + add 41–49, 4 rows 49–55, both 55–61); from
/// memory, modes alternating pass by pass in one process (`stream_bench`, Phi-2-shaped F16, 2
/// threads, probe 35–47 GB/s, median ms), they are slower in 3 of 4 rounds, by 3–6%: FMA 144 / 160 /
/// 142 / 133, multiply + add 150 / 154 / 146 / 138, 4 rows 152 / 158 / 150 / 139 (presumably two uops per group instead
/// of one leave fewer weight loads in flight within the same reorder window). Nor two rows in one
/// 512-bit register (row A's 8 lanes low, row B's high; the same bits, one FMA per group for
/// both): the same from cache (`--shape 384x1280`: 33–34 against 35–36 GB/s), from memory 2% faster
/// on average, faster in 3 of 5 rounds (`stream_bench` as above, median ms against the FMA's: 135 / 135 / 142 / 140 / 143
/// against 140 / 138 / 140 / 148 / 143), and 4 or 8 rows so (two or four registers) slower
/// there (145, 149): too small and too uncertain a gain for a second kernel (and its BF16 twin)
/// measured on one CPU.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_float_one<const BF: bool>(w: &WeightRef, act: &Activations, rows: Range<usize>, out: OutPtr) {
    let mut r0 = rows.start;
    while r0 + 2 <= rows.end {
        let acc = tile_float::<2, 1, BF>(w, act, r0, 0, true);
        out.set(0, r0, acc[0]);
        out.set(0, r0 + 1, acc[1]);
        r0 += 2;
    }
    if r0 < rows.end {
        out.set(0, r0, tile_float::<1, 1, BF>(w, act, r0, 0, true)[0]);
    }
}

/// F16 (`BF = false`) / BF16 weights against rounded activations: 8 lanes per output element
/// (element i in lane i % 8), exact products, then the fixed lane reduction.
#[inline(always)]
unsafe fn tile_float<const R: usize, const C: usize, const BF: bool>(
    w: &WeightRef,
    a: &Activations,
    r0: usize,
    t0: usize,
    prefetch: bool,
) -> [f32; 8] {
    let rows: [*const u8; R] = std::array::from_fn(|r| w.row(r0 + r).as_ptr());
    let xs: [*const f32; C] = std::array::from_fn(|c| a.f.as_ptr().add((t0 + c) * a.cols));
    let mut acc = [_mm256_setzero_ps(); 8];
    let groups = w.cols / 8;
    let rb = w.row_bytes();
    for g in 0..groups {
        if prefetch && g % 4 == 0 {
            // One token ([`rows_float_one`]): each row's next line into L2 ahead of its reads,
            // past a row's end the next tile's row (rows are contiguous: the next tile's row r
            // starts `R` rows after this one's).
            for row in rows {
                let o = 16 * g + FLOAT_PREFETCH_L2_BYTES;
                let o = if o >= rb { o + (R - 1) * rb } else { o };
                _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(o) as *const i8);
            }
        }
        let mut x = [_mm256_setzero_ps(); C];
        for (c, xc) in x.iter_mut().enumerate() {
            *xc = _mm256_loadu_ps(xs[c].add(8 * g));
        }
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

/// [`super::bias_act_row`]: 8 values at a time, the same operations as the scalar
/// [`super::gelu_new`] / [`super::tanh`] in the same order (so the same bits); the tail scalar.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn bias_act_row(y: &mut [f32], bias: &[f32], gelu: bool) {
    use super::gelu_c::*;
    let n = y.len().min(bias.len());
    let main = n - n % 8;
    let one = _mm256_set1_ps(1.0);
    for i in (0..main).step_by(8) {
        let yp = y.as_mut_ptr().add(i);
        let mut v = _mm256_add_ps(_mm256_loadu_ps(yp), _mm256_loadu_ps(bias.as_ptr().add(i)));
        if gelu {
            let inner = _mm256_add_ps(one, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(COEF), v), v));
            let u = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(SQRT_2_OVER_PI), v), inner);
            // max then min, as `f32::max(..).min(..)` (no NaNs reach here from finite inputs).
            let x = _mm256_min_ps(_mm256_max_ps(u, _mm256_set1_ps(-CLAMP)), _mm256_set1_ps(CLAMP));
            let x2 = _mm256_mul_ps(x, x);
            let mut p = _mm256_set1_ps(A[0]);
            for &a in &A[1..] {
                p = _mm256_add_ps(_mm256_mul_ps(p, x2), _mm256_set1_ps(a));
            }
            let p = _mm256_mul_ps(p, x);
            let mut q = _mm256_set1_ps(B[0]);
            for &b in &B[1..] {
                q = _mm256_add_ps(_mm256_mul_ps(q, x2), _mm256_set1_ps(b));
            }
            let t = _mm256_div_ps(p, q);
            v = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5), v), _mm256_add_ps(one, t));
        }
        _mm256_storeu_ps(yp, v);
    }
    for i in main..n {
        let s = y[i] + bias[i];
        y[i] = if gelu { super::gelu_new(s) } else { s };
    }
}

/// [`super::attention::row_scalar`] with 8-wide vectors: the dot products' 8 lanes are one
/// vector (10 steps for head_dim 80), the exponentials 8 scores at a time with the same
/// operations as [`super::attention::exp`], the sum in lanes j % 8, the weighted sum of values
/// 8 dimensions at a time in j order. Tails (head_dim or scores not a multiple of 8) take the
/// scalar steps of the same lanes, so the bits are the scalar twin's. f16 keys and values are
/// widened by F16C, exactly as `half` widens them.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn attention_row<T: KvElem>(q: &[f32], k: &[T], v: &[T], scale: f32, y: &mut [f32]) {
    let hd = q.len();
    let n = k.len() / hd;
    assert!(v.len() >= n * hd && y.len() == hd, "attention_row: shapes");
    let hd8 = hd - hd % 8;
    let mut scores = super::attention::take_scores(n.next_multiple_of(8));
    // Eight keys at a time: eight independent chains (one key's chain of adds alone is bound by
    // the add latency), and each query vector loaded once for the eight. Per key the same
    // operations in the same order as one at a time.
    let n8k = n - n % 8;
    for j0 in (0..n8k).step_by(8) {
        prefetch_span(k, (j0 + 8) * hd + ATTN_PREFETCH / size_of::<T>(), 8 * hd);
        let mut acc = [_mm256_setzero_ps(); 8];
        for d in (0..hd8).step_by(8) {
            let qv = _mm256_loadu_ps(q.as_ptr().add(d));
            for (u, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_ps(*a, _mm256_mul_ps(qv, kv8(k.as_ptr().add((j0 + u) * hd + d))));
            }
        }
        for (u, a) in acc.iter().enumerate() {
            scores[j0 + u] = key_score(q, k, j0 + u, *a, scale);
        }
    }
    for j in n8k..n {
        let kj = k.as_ptr().add(j * hd);
        let mut acc = _mm256_setzero_ps();
        for d in (0..hd8).step_by(8) {
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(q.as_ptr().add(d)), kv8(kj.add(d))));
        }
        scores[j] = key_score(q, k, j, acc, scale);
    }
    let total = exp_scores(&mut scores[..n]);
    // p_j = e_j / sum for every key up front (the same division, eight at a time).
    let tv = _mm256_set1_ps(total);
    let n8 = n - n % 8;
    for j in (0..n8).step_by(8) {
        _mm256_storeu_ps(scores.as_mut_ptr().add(j), _mm256_div_ps(_mm256_loadu_ps(scores.as_ptr().add(j)), tv));
    }
    for e in &mut scores[n8..n] {
        *e /= total;
    }
    // y = Σ_j p_j · v_j in groups of at most 12 vectors of dimensions (accumulators that stay
    // in AVX2's 16 registers over all keys; a run-time count of them had kept them in memory, a
    // load and a store per vector and key), the dimensions past the vectors one at a time.
    let vecs = hd8 / 8;
    let mut c0 = 0;
    while c0 < vecs {
        let c = (vecs - c0).min(12);
        macro_rules! weigh {
            ($($n:literal)*) => {
                match c {
                    $($n => weigh_values::<T, $n>(&scores[..n], v, hd, 8 * c0, y),)*
                    _ => unreachable!("1 to 12 vectors"),
                }
            };
        }
        weigh!(1 2 3 4 5 6 7 8 9 10 11 12);
        c0 += c;
    }
    for d in hd8..hd {
        y[d] = 0.0;
        for (j, &p) in scores[..n].iter().enumerate() {
            y[d] += p * (*v.as_ptr().add(j * hd + d)).load();
        }
    }
    super::attention::keep_scores(scores);
}

/// Dimensions `d0 .. d0 + 8·C` of `y = Σ_j p_j · v_j[d]` (keys `0..p.len()`), in j order,
/// multiply then add (the definition's steps), in C registers.
///
/// # Safety
/// The CPU has AVX2 and F16C (callers: [`attention_row`]).
#[inline(always)]
unsafe fn weigh_values<T: KvElem, const C: usize>(p: &[f32], v: &[T], hd: usize, d0: usize, y: &mut [f32]) {
    assert!(d0 + 8 * C <= hd && y.len() == hd && v.len() >= p.len() * hd, "weigh_values: shapes");
    let mut accs = [_mm256_setzero_ps(); C];
    for (j, &pj) in p.iter().enumerate() {
        if d0 == 0 {
            prefetch_span(v, (j + 1) * hd + ATTN_PREFETCH / size_of::<T>(), hd);
        }
        let pv = _mm256_set1_ps(pj);
        let vj = v.as_ptr().add(j * hd + d0);
        for (c, acc) in accs.iter_mut().enumerate() {
            *acc = _mm256_add_ps(*acc, _mm256_mul_ps(pv, kv8(vj.add(8 * c))));
        }
    }
    for (c, acc) in accs.iter().enumerate() {
        _mm256_storeu_ps(y.as_mut_ptr().add(d0 + 8 * c), *acc);
    }
}

/// Each of `x` rounded to the nearest f16 (ties to even) and widened back, into `y` (as many):
/// F16C's conversions, the instructions `half` uses one value at a time, eight at a time.
#[target_feature(enable = "avx,f16c")]
pub(super) unsafe fn round_f16(x: &[f32], y: &mut [std::mem::MaybeUninit<f32>]) {
    assert_eq!(x.len(), y.len(), "round_f16: lengths");
    let n8 = x.len() - x.len() % 8;
    for i in (0..n8).step_by(8) {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(x.as_ptr().add(i)));
        _mm256_storeu_ps(y.as_mut_ptr().add(i).cast::<f32>(), _mm256_cvtph_ps(h));
    }
    for i in n8..x.len() {
        y[i].write(half::f16::from_f32(x[i]).to_f32());
    }
}

/// f16 bits → f32 (F16C, exactly as `half` widens them), eight at a time.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn widen_f16(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let n8 = n - n % 8;
    for i in (0..n8).step_by(8) {
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i) as *const __m128i)));
    }
    for i in n8..n {
        dst[i] = half::f16::from_bits(src[i]).to_f32();
    }
}

/// Eight keys' or values' elements at `p` as f32 (f16: widened by F16C, exact).
#[inline(always)]
pub(super) unsafe fn kv8<T: KvElem>(p: *const T) -> __m256 {
    if T::HALF {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    } else {
        _mm256_loadu_ps(p as *const f32)
    }
}

/// The softmax numerators and their sum for one row's scores, in place: `m = max`, `e_j =
/// exp(s_j − m)` eight at a time with [`super::attention::exp`]'s operations, the sum in lanes
/// j % 8 then [`super::reduce8`] (the definition's steps; returns the sum).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn exp_scores(scores: &mut [f32]) -> f32 {
    use super::attention::exp_c::*;
    let n = scores.len();
    let m = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    // Constants as vectors up front (a closure would not inherit the target features: calls).
    let (mv, low, log2e, hi, lo, one) = (_mm256_set1_ps(m), _mm256_set1_ps(LOW), _mm256_set1_ps(LOG2E), _mm256_set1_ps(LN2_HI), _mm256_set1_ps(LN2_LO), _mm256_set1_ps(1.0));
    let pc: [__m256; 6] = [_mm256_set1_ps(P[0]), _mm256_set1_ps(P[1]), _mm256_set1_ps(P[2]), _mm256_set1_ps(P[3]), _mm256_set1_ps(P[4]), _mm256_set1_ps(P[5])];
    let magic = _mm256_set1_ps(12_582_912.0);
    let mut sum = _mm256_setzero_ps();
    let n8 = n - n % 8;
    for j in (0..n8).step_by(8) {
        let x = _mm256_max_ps(_mm256_sub_ps(_mm256_loadu_ps(scores.as_ptr().add(j)), mv), low);
        let nn = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(x, log2e), magic), magic);
        let r = _mm256_sub_ps(_mm256_sub_ps(x, _mm256_mul_ps(nn, hi)), _mm256_mul_ps(nn, lo));
        let mut p = pc[0];
        for &cf in &pc[1..] {
            p = _mm256_add_ps(_mm256_mul_ps(p, r), cf);
        }
        let e = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r), one);
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(nn), _mm256_set1_epi32(127)), 23));
        let e = _mm256_mul_ps(e, pow2);
        _mm256_storeu_ps(scores.as_mut_ptr().add(j), e);
        sum = _mm256_add_ps(sum, e);
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    for j in n8..n {
        scores[j] = super::attention::exp(scores[j] - m);
        lanes[j % 8] += scores[j];
    }
    super::reduce8(&lanes)
}

/// How far ahead of its reads attention prefetches the cache's keys and values (bytes). A decode
/// step reads the whole KV cache from memory (the weights streamed since the last step have
/// evicted it), one head's keys, then its values, each a run of a few tens of KB that the
/// hardware prefetchers pick up late. Measured on Phi-2-shaped Q4_0 at 128–160 positions, two
/// threads (`decode_bench` under `perf`): attention's time 5.4% → 5.0% of the weight products'.
/// Tried and not kept (no faster, 2026-12-02): 1, 4 and 8 KB; a second distance into L2
/// (`prefetcht1`, 8 KB); a thread's heads read as one stream (runs of heads per work item, each
/// head's reads asking for the next head's keys and values across the seam). In a cold-cache
/// probe (32 heads × 250 positions of f32, the caches evicted between calls) attention read
/// 10–12 GB/s on two threads and 7–12 on one, where a plain sum over the same rows read ~13 on
/// one: short runs on 4 KB pages are most of it (on 2 MB pages ~10% more, see the cache's note
/// in `model.rs`). On the AMD EPYC VM of 2026-12-04 (family not recorded; `attention_bench --threads 2`, f32, 2048
/// reserved) attention read its cache at 39–42 GB/s, the probe's bandwidth there; asking for the
/// values' lines along with the keys' (both streams in flight during the key pass) was slower,
/// alternating binaries: 128 positions 2.01–2.11 → 2.19–2.60 ms, 512 positions 8.27–8.60 →
/// 9.67–10.08 ms.
const ATTN_PREFETCH: usize = 2048;

/// Prefetches the lines of `x[from..from + len]` that lie inside `x`.
#[inline(always)]
unsafe fn prefetch_span<T>(x: &[T], from: usize, len: usize) {
    let end = (from + len).min(x.len());
    super::prefetch(x.as_ptr().wrapping_add(from), end.saturating_sub(from));
}

/// Key j's score from its 8 lanes of `q · k_j` over the full groups (`acc`): the columns past
/// them, the lane reduction, the scale (the scalar definition's operations, in order).
#[inline(always)]
unsafe fn key_score<T: KvElem>(q: &[f32], k: &[T], j: usize, acc: __m256, scale: f32) -> f32 {
    let hd = q.len();
    let kj = k.as_ptr().add(j * hd);
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    for d in hd - hd % 8..hd {
        lanes[d % 8] += q[d] * (*kj.add(d)).load();
    }
    super::reduce8(&lanes) * scale
}

/// [`super::quantize_block_q8_0`] for every block of a row (`x.len()` a multiple of 32), eight
/// values per instruction and the same results: the absolute maximum ignores NaNs as `f32::max`
/// does, the scale and its inverse are the scalar code's, each value is rounded by the same
/// magic-number addition, clamped, and NaNs become 0 as `as i8` makes them.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn quantize_row_q8_0(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [i32]) {
    let nb = x.len() / 32;
    assert!(q.len() >= 32 * nb && d.len() >= nb && s.len() >= nb);
    let sign = _mm256_set1_ps(-0.0);
    let magic = _mm256_set1_ps(12_582_912.0);
    let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for b in 0..nb {
        let xp = x.as_ptr().add(32 * b);
        let mut v = [_mm256_setzero_ps(); 4];
        for (k, vk) in v.iter_mut().enumerate() {
            *vk = _mm256_loadu_ps(xp.add(8 * k));
        }
        // max(|v|, m): MAXPS returns its second operand when either is NaN, so NaNs are skipped.
        let mut m = _mm256_setzero_ps();
        for vk in &v {
            m = _mm256_max_ps(_mm256_andnot_ps(sign, *vk), m);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        let amax = lanes.iter().fold(0f32, |a, &l| a.max(l));
        d[b] = half::f16::from_f32(amax / 127.0).to_f32();
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let mut c = [_mm256_setzero_si256(); 4];
        for (ck, vk) in c.iter_mut().zip(&v) {
            let r = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(*vk, id), magic), magic);
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(r, r);
            let r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
            *ck = _mm256_andnot_si256(_mm256_castps_si256(nan), _mm256_cvtps_epi32(r));
        }
        let sum = _mm256_add_epi32(_mm256_add_epi32(c[0], c[1]), _mm256_add_epi32(c[2], c[3]));
        let mut sl = [0i32; 8];
        _mm256_storeu_si256(sl.as_mut_ptr() as *mut __m256i, sum);
        s[b] = sl.iter().sum();
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
        _mm256_storeu_si256(q.as_mut_ptr().add(32 * b) as *mut __m256i, _mm256_permutevar8x32_epi32(packed, order));
    }
}

/// [`super::quantize_block_q8_k`] (256 values) eight at a time, with the same results: the first
/// value of the largest magnitude gives the scale (NaNs skipped, as the scalar `>` skips them),
/// each value is rounded by the magic-number addition (ties to even, as `round_ties_even`),
/// clamped to [−128, 127], and NaNs become 0 as `as i8` makes them; the sums of 16 in i32.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn quantize_block_q8_k(x: &[f32], q: &mut [i8], bsums: &mut [i32]) -> f32 {
    assert!(x.len() == 256 && q.len() >= 256 && bsums.len() >= 16);
    let sign = _mm256_set1_ps(-0.0);
    let xp = x.as_ptr();
    // max(|v|, m): MAXPS returns its second operand when either is NaN, so NaNs are skipped.
    let mut m = _mm256_setzero_ps();
    for k in 0..32 {
        m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(xp.add(8 * k))), m);
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), m);
    let amax = lanes.iter().fold(0f32, |a, &l| a.max(l));
    if amax == 0.0 {
        q[..256].fill(0);
        bsums[..16].fill(0);
        return 0.0;
    }
    // The first value whose magnitude is the maximum (the scalar loop keeps the first).
    let am = _mm256_set1_ps(amax);
    let mut first = 0;
    for k in 0..32 {
        let eq = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(sign, _mm256_loadu_ps(xp.add(8 * k))), am));
        if eq != 0 {
            first = 8 * k + eq.trailing_zeros() as usize;
            break;
        }
    }
    let iscale = -127.0 / x[first];
    let is = _mm256_set1_ps(iscale);
    let magic = _mm256_set1_ps(12_582_912.0);
    let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for g in 0..8 {
        let mut c = [_mm256_setzero_si256(); 4];
        for (k, ck) in c.iter_mut().enumerate() {
            let v = _mm256_loadu_ps(xp.add(32 * g + 8 * k));
            let r = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(is, v), magic), magic);
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(r, r);
            let r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
            *ck = _mm256_andnot_si256(_mm256_castps_si256(nan), _mm256_cvtps_epi32(r));
        }
        for h in 0..2 {
            let s = _mm256_add_epi32(c[2 * h], c[2 * h + 1]);
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            bsums[2 * g + h] = _mm_cvtsi128_si32(s);
        }
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
        _mm256_storeu_si256(q.as_mut_ptr().add(32 * g) as *mut __m256i, _mm256_permutevar8x32_epi32(packed, order));
    }
    1.0 / iscale
}
