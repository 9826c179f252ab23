//! x86-64 AVX-512: F16 / BF16 weights against batches of tokens (prompts, speculative drafts),
//! part of the AMX kernel set (every CPU with AMX has AVX-512F); and attention two query rows at
//! a time for batches ([`attention_rows2`], on any x86 kernel set when the CPU has AVX-512F).
//!
//! The definition ([`super::scalar`]) keeps 8 f32 lanes per output, element i in lane i % 8,
//! each lane a sequential sum of exact products (a 16-bit float times a rounded activation fits
//! f32 exactly, so a fused multiply-add gives the same bits as the scalar `+= w * x`), then the
//! fixed [`super::reduce8`]. One 512-bit register holds the 8 lanes of two outputs: a weight row
//! against a pair of tokens. The AVX2 tile widens 8 weights (two uops on the FMA ports) for every
//! 4 products of 8; here each row tile's weights are widened once into f32, then every token
//! pair reads them with a broadcast load, so the inner loop is loads and 16-lane FMAs only.
//!
//! Measured (`kernel_bench --threads 2 --types f16`, 10240 × 2560, this project's 2-core Xeon):
//! 128 tokens 81 → ~100 GMAC/s, 32 tokens 82 → ~93; at 8 tokens the AVX2 tile was faster, hence
//! [`MIN_TOKENS`]. A core's peak here is ~105 G lane-FMA/s (a loop of independent 512-bit
//! FMAs); this loop alone (4 loads, 6 broadcasts, 24 FMAs per group, on this layout and these
//! footprints, in C) reaches ~82, and the kernel on one thread 55–65 GMAC/s: the rest is the
//! widening (each row tile once per pass: ~10% of fc1's time) and the tile ends. Keeping a
//! tile's 6 rows in L1 by blocking the columns finely (64 groups, the sums kept between blocks)
//! was 4–6% slower, and asking for the next row tile's weights into L2 during this one's tiles
//! was 9% slower on fc2: neither is done. Kept (`kernel_bench --threads 2 --types f16 --tokens
//! 128`, alternating builds, GMAC/s): the widened rows on a cache line, the last rows of an
//! item (128 = 21 · 6 + 2) in one tile of their count instead of one-row tiles, and two groups
//! widened per 512-bit store: fc1 (10240 × 2560) 108–110 → 119–124, fc2 (2560 × 10240) 88–91
//! → 99–103; then wide rows in spans of columns ([`rows_float`]): fc2 92–101 → 108–119 (512
//! tokens 93–97 → 108–112), the others unchanged. A Phi-2-shaped F16 prompt of 128 tokens
//! (`generate` example, load included): 3.70–3.91 s → 3.45–3.59 s.

use std::arch::x86_64::*;
use std::ops::Range;

use super::attention::KvElem;
use super::{reduce8, Activations, OutPtr, WeightRef};
use crate::dtype::DType;

/// The smallest batch taken here (smaller ones: the AVX2 tiles, whose cost has no per-row-tile
/// widening to amortise).
pub(crate) const MIN_TOKENS: usize = 16;

/// Weight rows per tile and token pairs per tile: 6 × 4 accumulators of two outputs each.
const R: usize = 6;
const P: usize = 4;

/// Whether this product runs here: 16-bit float weights, a batch, and the pair layout
/// [`prepare`] made.
pub(crate) fn takes(w: &WeightRef, a: &Activations) -> bool {
    matches!(w.dtype, DType::F16 | DType::BF16) && a.tokens >= MIN_TOKENS && a.fp.len() == pairs_len(a.tokens, a.cols)
}

fn pairs_len(tokens: usize, cols: usize) -> usize {
    tokens.div_ceil(2) * pair_stride(cols)
}

/// Floats from one pair's activations to the next: 16 per full group, plus one cache line so
/// that the pairs a tile reads together do not share L1 sets (their starts would otherwise sit
/// a multiple of 4 KB apart for widths like 2560 and 10240).
fn pair_stride(cols: usize) -> usize {
    (cols / 8) * 16 + 16
}

/// `fp`: the rounded activations `f` by token pairs: for pair p (tokens 2p, 2p + 1) and full group
/// g of 8 columns, 16 values at `(p · G + g) · 16`: token 2p's 8, then token 2p + 1's (zeros past
/// the last token). Columns past the last full group stay in `f` only.
pub(crate) fn prepare(a: &mut Activations) {
    let (tokens, cols) = (a.tokens, a.cols);
    let groups = cols / 8;
    // (Not zeroed: every value a tile reads is written below, an odd last token's partner as
    // zeros; the line between pairs is never read.)
    a.fp.resize(pairs_len(tokens, cols));
    let stride = pair_stride(cols);
    let (f, fp) = (&a.f, super::Shared(a.fp.as_mut_ptr()));
    // Pairs over the pool (a 512-token prompt's are 5 MB).
    super::par_items(tokens.div_ceil(2), tokens * cols, &|p| {
        // SAFETY: pair p's stride of `fp` (sized above) is this item's alone.
        let fp = unsafe { fp.slice(p * stride, stride) };
        for h in 0..2 {
            let t = 2 * p + h;
            for g in 0..groups {
                let dst = &mut fp[g * 16 + 8 * h..g * 16 + 8 * h + 8];
                if t < tokens {
                    dst.copy_from_slice(&f[t * cols + 8 * g..t * cols + 8 * g + 8]);
                } else {
                    dst.fill(0.0);
                }
            }
        }
    });
}

// Per-thread buffers: the current row tile's weights widened to f32, on a cache line (a `Vec`'s
// 16-byte alignment split every other 32-byte weight load of the tiles across two lines), and
// the tiles' sums between spans of columns ([`rows_float`]).
thread_local! {
    static ROWS: std::cell::RefCell<(super::buffer::Aligned<f32>, Vec<Sums>)> = const { std::cell::RefCell::new((super::buffer::Aligned::new(), Vec::new())) };
}

/// A register tile's sums: `[row][pair]`.
type Sums = [[__m512; P]; R];

/// Whether this CPU runs [`matmul_rows`] (checked once; part of `amx::available`).
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("f16c") && is_x86_feature_detected!("fma")
}

/// Writes a block of up to 16 rows × 16 tokens: `y[mi]` holds row `r0 + mi` for tokens
/// `t0 .. t0 + 16` (one per lane); rows from `m` and tokens from `nt` are not written. The block
/// is transposed through an L1 scratch (a gather per token), so each token's `m` outputs go out
/// in one 64-byte (masked, usually unaligned) store. (Writing a row's 16 tokens one by one
/// touched 16 lines a full output width apart; for widths a multiple of 1024 floats, such as Phi-2's fc1 (10240), they all sit
/// in one L1 set, and those writes were a quarter of a 128-token Q4_0 product's time,
/// `kernel_bench --threads 1`. Four [`store_block4`] calls instead, four 16-byte stores per token
/// without the gathers, measured 4–10% slower on 10240×2560.)
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn store_block16(out: OutPtr, t0: usize, nt: usize, r0: usize, m: usize, y: &[__m512; 16]) {
    #[repr(C, align(64))]
    struct Block([f32; 256]);
    let mut s = Block([0.0; 256]);
    for (mi, v) in y.iter().enumerate() {
        _mm512_store_ps(s.0.as_mut_ptr().add(mi * 16), *v);
    }
    let idx = _mm512_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240);
    let mask: __mmask16 = if m >= 16 { 0xFFFF } else { (1u16 << m) - 1 };
    assert!(m <= 16 && r0 + m <= out.stride);
    for n in 0..nt.min(16) {
        let col = _mm512_i32gather_ps::<4>(_mm512_add_epi32(idx, _mm512_set1_epi32(n as i32)), s.0.as_ptr());
        let i = (t0 + n) * out.stride + r0;
        assert!(i + m <= out.len);
        // SAFETY: in bounds (checked); these (token, row) elements are this caller's alone.
        _mm512_mask_storeu_ps(out.ptr.add(i), mask, col);
    }
}

/// [`store_block16`] for 4 rows: `y[r]` holds row `r0 + r` for tokens `t0 .. t0 + 16`; the
/// rows from `m` and the tokens from `nt` are not written. Transposed in registers (4 × 4 within
/// each 128-bit lane), one 16-byte store per token.
#[target_feature(enable = "avx512f,avx512vl")]
pub(crate) unsafe fn store_block4(out: OutPtr, t0: usize, nt: usize, r0: usize, m: usize, y: &[__m512; 4]) {
    let (t0v, t1v) = (_mm512_unpacklo_ps(y[0], y[1]), _mm512_unpackhi_ps(y[0], y[1]));
    let (t2v, t3v) = (_mm512_unpacklo_ps(y[2], y[3]), _mm512_unpackhi_ps(y[2], y[3]));
    let (a, b) = (_mm512_castps_pd(t0v), _mm512_castps_pd(t2v));
    let (c, d) = (_mm512_castps_pd(t1v), _mm512_castps_pd(t3v));
    // u[i] lane q holds token 4q + i's 4 rows.
    let u = [
        _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
        _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
        _mm512_castpd_ps(_mm512_unpacklo_pd(c, d)),
        _mm512_castpd_ps(_mm512_unpackhi_pd(c, d)),
    ];
    let mask: __mmask8 = if m >= 4 { 0xF } else { (1u8 << m) - 1 };
    assert!(m <= 4 && r0 + m <= out.stride);
    for n in 0..nt.min(16) {
        let v = match n / 4 {
            0 => _mm512_castps512_ps128(u[n % 4]),
            1 => _mm512_extractf32x4_ps::<1>(u[n % 4]),
            2 => _mm512_extractf32x4_ps::<2>(u[n % 4]),
            _ => _mm512_extractf32x4_ps::<3>(u[n % 4]),
        };
        let i = (t0 + n) * out.stride + r0;
        assert!(i + m <= out.len);
        // SAFETY: in bounds (checked); these (token, row) elements are this caller's alone.
        _mm_mask_storeu_ps(out.ptr.add(i), mask, v);
    }
}

pub(crate) fn matmul_rows(w: &WeightRef, a: &Activations, rows: Range<usize>, out: OutPtr) {
    debug_assert!(takes(w, a));
    // SAFETY: `available()` held when the kernel set was chosen (`amx::available` requires it).
    ROWS.with_borrow_mut(|(buf, sums)| unsafe {
        if w.dtype == DType::BF16 {
            rows_float::<true>(w, a, rows, out, buf, sums);
        } else {
            rows_float::<false>(w, a, rows, out, buf, sums);
        }
    });
}

#[target_feature(enable = "avx512f,avx2,f16c,fma")]
unsafe fn rows_float<const BF: bool>(w: &WeightRef, a: &Activations, rows: Range<usize>, out: OutPtr, buf: &mut super::buffer::Aligned<f32>, sums: &mut Vec<Sums>) {
    // Token pairs per pass over the rows: a pass's activations (`X_BLOCK` bytes, at least 16
    // pairs so that widening a wide row tile is shared by enough tokens) stay in L2 while every
    // row tile of the item goes by, instead of streaming each row tile's whole batch from L3.
    // Measured (`kernel_bench --threads 2 --types f16 [--shape 2560x10240]`, GMAC/s): 512
    // tokens 72 -> 144 (10240 x 2560) and 73 -> 117 (2560 x 10240); 128 tokens unchanged
    // (~150) and 103 -> 117.
    //
    // Rows wider than [`SPAN_GROUPS`] (Phi-2's fc2, 10240 columns) go through a pass in spans
    // of columns: each span's activations are what stays in L2, so a pass takes as many pairs as
    // at 2560 columns, and each row tile is widened once per pass, a span at a time (at 10240
    // columns a pass was 16 pairs, so every row tile was widened four times for 128 tokens).
    // The tiles' sums wait in `sums` from one span to the next; each lane still adds its
    // columns in order: same bits.
    let groups = w.cols / 8;
    let span_groups = if groups > SPAN_GROUPS + SPAN_GROUPS / 2 { SPAN_GROUPS } else { groups };
    let spans = if span_groups == 0 { 1 } else { groups.div_ceil(span_groups) };
    let span_cols = if spans == 1 { w.cols } else { 8 * span_groups };
    let wrow = 8 * span_groups + 16;
    // (Not zeroed: a tile reads only the groups `widen_rows` wrote.)
    buf.resize(R * wrow);
    let npairs = a.tokens.div_ceil(2);
    let block = (X_BLOCK / (8 * span_cols.max(1))).max(16) / P * P;
    let row_tiles = rows.len().div_ceil(R);
    let mut p0 = 0;
    while p0 < npairs {
        let p1 = (p0 + block).min(npairs);
        let tiles = tiles_of(p1 - p0);
        if spans > 1 && sums.len() < row_tiles * tiles {
            sums.resize(row_tiles * tiles, [[_mm512_setzero_ps(); P]; R]);
        }
        for s in 0..spans {
            let span = Span { groups: s * span_groups..((s + 1) * span_groups).min(groups), first: s == 0, last: s + 1 == spans, wrow };
            let mut r0 = rows.start;
            for t in 0..row_tiles {
                let m = (rows.end - r0).min(R);
                widen_rows::<BF>(w, r0, m, &span, buf);
                // (Unused when there is one span: every tile starts and ends in registers.)
                let sums = if spans > 1 { &mut sums[t * tiles..(t + 1) * tiles] } else { &mut [] };
                // (The last tile of an item of 128 rows has 2.)
                match m {
                    R => pairs::<R>(w, a, r0, buf, p0..p1, &span, sums, out),
                    5 => pairs::<5>(w, a, r0, buf, p0..p1, &span, sums, out),
                    4 => pairs::<4>(w, a, r0, buf, p0..p1, &span, sums, out),
                    3 => pairs::<3>(w, a, r0, buf, p0..p1, &span, sums, out),
                    2 => pairs::<2>(w, a, r0, buf, p0..p1, &span, sums, out),
                    _ => pairs::<1>(w, a, r0, buf, p0..p1, &span, sums, out),
                }
                r0 += m;
            }
        }
        p0 = p1;
    }
}

/// Full groups of 8 columns per span of [`rows_float`] (rows up to 1.5 times as wide are one
/// span): Phi-2's hidden width.
const SPAN_GROUPS: usize = 320;

/// The full groups a tile runs in one go, and whether they start its sums (else they continue
/// from its `Sums`) and end them (else they go back there).
struct Span {
    groups: Range<usize>,
    first: bool,
    last: bool,
    /// Floats from one widened row to the next in the buffer.
    wrow: usize,
}

/// The register tiles of `n` token pairs ([`pairs`]): `P` pairs each, then 2 and 1.
fn tiles_of(n: usize) -> usize {
    n / P + usize::from(n % P >= 2) + n % 2
}

/// Bytes of activations (f32) per pass of [`rows_float`] over its rows.
const X_BLOCK: usize = 768 << 10;

/// The groups `span.groups` of rows `r0 .. r0 + m` as f32 into `buf[r · span.wrow ..]` (a
/// cache line between rows, against L1 set conflicts as in [`pair_stride`]).
#[inline(always)]
unsafe fn widen_rows<const BF: bool>(w: &WeightRef, r0: usize, m: usize, span: &Span, buf: &mut [f32]) {
    let (g0, n) = (span.groups.start, span.groups.len());
    for r in 0..m {
        let src = w.row(r0 + r).as_ptr().add(16 * g0);
        let dst = buf.as_mut_ptr().add(r * span.wrow);
        // Two groups per 512-bit store (half the stores of one group at a time: the widening
        // is ~10-20% of a product's time).
        for g in (0..n - n % 2).step_by(2) {
            let raw = _mm256_loadu_si256(src.add(16 * g) as *const __m256i);
            let v = if BF { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw))) } else { _mm512_cvtph_ps(raw) };
            _mm512_storeu_ps(dst.add(8 * g), v);
        }
        if n % 2 == 1 {
            let g = n - 1;
            let raw = _mm_loadu_si128(src.add(16 * g) as *const __m128i);
            let v = if BF { _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16)) } else { _mm256_cvtph_ps(raw) };
            _mm256_storeu_ps(dst.add(8 * g), v);
        }
    }
}

/// Rows `r0 .. r0 + RR` (widened in `buf`) against the token pairs `ps`, `P` at a time, over
/// `span`; tile i's sums in `sums[i]` between spans.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pairs<const RR: usize>(w: &WeightRef, a: &Activations, r0: usize, buf: &[f32], ps: Range<usize>, span: &Span, sums: &mut [Sums], out: OutPtr) {
    let npairs = ps.end;
    let mut p = ps.start;
    let mut i = 0;
    while p < npairs {
        let sum = sums.get_mut(i);
        p += match npairs - p {
            n if n >= P => {
                tile::<RR, P>(w, a, r0, buf, p, span, sum, out);
                P
            }
            n if n >= 2 => {
                tile::<RR, 2>(w, a, r0, buf, p, span, sum, out);
                2
            }
            _ => {
                tile::<RR, 1>(w, a, r0, buf, p, span, sum, out);
                1
            }
        };
        i += 1;
    }
}

/// `RR` rows × token pairs `p0 .. p0 + PP` over the span's full groups in registers (from
/// zeros, or from `sum`); at the span that ends the sums, per output the columns past the full
/// groups (the scalar definition, same lanes) and the lane reduction; else back into `sum`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const RR: usize, const PP: usize>(w: &WeightRef, a: &Activations, r0: usize, buf: &[f32], p0: usize, span: &Span, sum: Option<&mut Sums>, out: OutPtr) {
    let cols = w.cols;
    let groups = cols / 8;
    let stride = pair_stride(cols);
    let xp = a.fp.as_ptr().add(p0 * stride);
    let wrow = span.wrow;
    let g0 = span.groups.start;
    let wp = buf.as_ptr();
    let mut acc = [[_mm512_setzero_ps(); PP]; RR];
    if !span.first {
        let sum = sum.as_deref().expect("a span past the first keeps its sums");
        for (r, acc_r) in acc.iter_mut().enumerate() {
            acc_r.copy_from_slice(&sum[r][..PP]);
        }
    }
    for g in span.groups.clone() {
        // (A loop, not a closure: closures do not inherit the target features.)
        let mut x = [_mm512_setzero_ps(); PP];
        for (q, xq) in x.iter_mut().enumerate() {
            *xq = _mm512_loadu_ps(xp.add(q * stride + g * 16));
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // The row's 8 values in both halves (a broadcast load: no shuffle).
            let wv = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd(wp.add(r * wrow + (g - g0) * 8) as *const f64)));
            for (q, acc_rq) in acc_r.iter_mut().enumerate() {
                *acc_rq = _mm512_fmadd_ps(wv, x[q], *acc_rq);
            }
        }
    }
    if !span.last {
        let sum = sum.expect("a span before the last keeps its sums");
        for (r, acc_r) in acc.iter().enumerate() {
            sum[r][..PP].copy_from_slice(acc_r);
        }
        return;
    }
    if 8 * groups == cols {
        // No columns past the groups: [`reduce8`] in registers for both tokens of a pair at
        // once ([`reduce8x2`], as attention does). Measured (`kernel_bench --types f16 --tokens 128`): one
        // thread, 600×512, 51 -> 99 GMAC/s; two threads, 10240×2560, 108 -> 112 (512 tokens
        // 112 -> 120), 2560×10240 93 -> 96.
        for (r, acc_r) in acc.iter().enumerate() {
            for (q, v) in acc_r.iter().enumerate() {
                let y = reduce8x2(*v);
                let t = 2 * (p0 + q);
                out.set(t, r0 + r, _mm512_cvtss_f32(y));
                if t + 1 < a.tokens {
                    out.set(t + 1, r0 + r, _mm_cvtss_f32(_mm512_extractf32x4_ps::<2>(y)));
                }
            }
        }
        return;
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let row = w.row(r0 + r);
        for (q, acc_rq) in acc_r.iter().enumerate() {
            let mut v = [0f32; 16];
            _mm512_storeu_ps(v.as_mut_ptr(), *acc_rq);
            for h in 0..2 {
                let t = 2 * (p0 + q) + h;
                if t >= a.tokens {
                    break;
                }
                let mut lanes: [f32; 8] = v[8 * h..8 * h + 8].try_into().unwrap();
                let x = &a.f[t * cols..(t + 1) * cols];
                for i in 8 * groups..cols {
                    let b = [row[2 * i], row[2 * i + 1]];
                    let wv = if w.dtype == DType::BF16 { half::bf16::from_le_bytes(b).to_f32() } else { half::f16::from_le_bytes(b).to_f32() };
                    lanes[i % 8] += wv * x[i];
                }
                out.set(t, r0 + r, reduce8(&lanes));
            }
        }
    }
}

/// Attention for two consecutive query rows of one head ([`super::attention::row_scalar`]'s
/// definition for each): row a sees keys `0..n`, row b keys `0..=n` (`k`, `v` hold `n + 1`
/// keys). One 512-bit register holds the 8 lanes of both rows (row a low, row b high), so each
/// 8-value chunk of a key or value is loaded once, as a broadcast, for the two queries, and the
/// lane reductions run on both rows at once. Every lane sees the scalar definition's operations
/// in its order, so the bits are those of one row at a time. `head_dim` must be a multiple of 8
/// and at most 128 ([`rows2_fit`]). f16 keys and values are widened by F16C (exact).
///
/// Measured on Phi-2-shaped Q4_0 (generate example, 2 threads, load included, alternating with
/// the one-row kernel): a 512-token prompt 5.1 → 4.66 s, 128 tokens 0.97 → 0.94 s; log-probs of a
/// 200-token prompt identical to the bit.
#[target_feature(enable = "avx512f,avx2,f16c")]
pub(super) unsafe fn attention_rows2<T: KvElem>(qa: &[f32], qb: &[f32], k: &[T], v: &[T], scale: f32, ya: &mut [f32], yb: &mut [f32]) {
    let hd = qa.len();
    let cn = hd / 8;
    debug_assert!(rows2_fit(hd) && qb.len() == hd && ya.len() == hd && yb.len() == hd);
    let n = k.len() / hd - 1;
    debug_assert!(v.len() >= (n + 1) * hd);
    // Both rows' query chunks, one register per chunk.
    let mut qp = [_mm512_setzero_ps(); 16];
    for (c, qc) in qp.iter_mut().enumerate().take(cn) {
        *qc = pair8(_mm256_loadu_ps(qa.as_ptr().add(8 * c)), _mm256_loadu_ps(qb.as_ptr().add(8 * c)));
    }
    let vs = _mm512_set1_ps(scale);
    let mut scratch = super::attention::take_scores(2 * n + 1);
    let (sa, sb) = scratch.split_at_mut(n);
    let n8 = n - n % 8;
    for j0 in (0..n8).step_by(8) {
        let mut acc = [_mm512_setzero_ps(); 8];
        for (c, qc) in qp.iter().enumerate().take(cn) {
            for (u, a) in acc.iter_mut().enumerate() {
                *a = _mm512_add_ps(*a, _mm512_mul_ps(*qc, bcast8::<T>(k.as_ptr().add((j0 + u) * hd + 8 * c))));
            }
        }
        for (u, a) in acc.iter().enumerate() {
            let z = _mm512_mul_ps(reduce8x2(*a), vs);
            sa[j0 + u] = _mm512_cvtss_f32(z);
            sb[j0 + u] = _mm_cvtss_f32(_mm512_extractf32x4_ps::<2>(z));
        }
    }
    // The last keys one at a time; key n counts for row b only.
    for j in n8..=n {
        let mut a = _mm512_setzero_ps();
        for (c, qc) in qp.iter().enumerate().take(cn) {
            a = _mm512_add_ps(a, _mm512_mul_ps(*qc, bcast8::<T>(k.as_ptr().add(j * hd + 8 * c))));
        }
        let z = _mm512_mul_ps(reduce8x2(a), vs);
        if j < n {
            sa[j] = _mm512_cvtss_f32(z);
        }
        sb[j] = _mm_cvtss_f32(_mm512_extractf32x4_ps::<2>(z));
    }
    let ta = super::x86::exp_scores(sa);
    let tb = super::x86::exp_scores(sb);
    for e in sa.iter_mut() {
        *e /= ta;
    }
    for e in sb.iter_mut() {
        *e /= tb;
    }
    let mut yacc = [_mm512_setzero_ps(); 16];
    for j in 0..n {
        let pp = _mm512_mask_broadcastss_ps(_mm512_set1_ps(sa[j]), 0xFF00, _mm_set_ss(sb[j]));
        let vj = v.as_ptr().add(j * hd);
        for (c, y) in yacc.iter_mut().enumerate().take(cn) {
            *y = _mm512_add_ps(*y, _mm512_mul_ps(pp, bcast8::<T>(vj.add(8 * c))));
        }
    }
    let pn = _mm256_set1_ps(sb[n]);
    let vn = v.as_ptr().add(n * hd);
    for (c, y) in yacc.iter().enumerate().take(cn) {
        _mm256_storeu_ps(ya.as_mut_ptr().add(8 * c), _mm512_castps512_ps256(*y));
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(*y)));
        _mm256_storeu_ps(yb.as_mut_ptr().add(8 * c), _mm256_add_ps(hi, _mm256_mul_ps(pn, super::x86::kv8(vn.add(8 * c)))));
    }
    super::attention::keep_scores(scratch);
}

/// Whether [`attention_rows2`] takes rows of `head_dim` values.
pub(super) fn rows2_fit(head_dim: usize) -> bool {
    head_dim > 0 && head_dim.is_multiple_of(8) && head_dim <= 128
}

/// `lo` in the low 256 bits, `hi` in the high.
#[inline(always)]
unsafe fn pair8(lo: __m256, hi: __m256) -> __m512 {
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi)))
}

/// The 8 floats at `p` in both halves (a broadcast load).
#[inline(always)]
unsafe fn bcast8<T: KvElem>(p: *const T) -> __m512 {
    if T::HALF {
        return _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(super::x86::kv8(p))));
    }
    _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd(p as *const f64)))
}

/// [`super::reduce8`] of each 256-bit half, in lanes 0 and 8: `((l0+l4)+(l2+l6)) +
/// ((l1+l5)+(l3+l7))` (the same adds; each is commutative, so the swapped operands of the
/// shuffles give the same bits).
#[inline(always)]
unsafe fn reduce8x2(a: __m512) -> __m512 {
    let x = _mm512_add_ps(a, _mm512_shuffle_f32x4::<0b10_11_00_01>(a, a));
    let y = _mm512_add_ps(x, _mm512_permute_ps::<0b01_00_11_10>(x));
    _mm512_add_ps(y, _mm512_permute_ps::<0b10_11_00_01>(y))
}

/// [`super::x86::bias_act_row`] sixteen values at a time (the same operations per value, so the
/// same bits); the last values (fewer than 16) go to the 8-wide version.
#[target_feature(enable = "avx512f,avx2")]
pub(super) unsafe fn bias_act_row(y: &mut [f32], bias: &[f32], gelu: bool) {
    use super::gelu_c::*;
    let n = y.len().min(bias.len());
    let main = n - n % 16;
    // Constants as vectors up front (written out: a closure would not inherit the features).
    let (one, half, coef, s2p) = (_mm512_set1_ps(1.0), _mm512_set1_ps(0.5), _mm512_set1_ps(COEF), _mm512_set1_ps(SQRT_2_OVER_PI));
    let (lo, hi) = (_mm512_set1_ps(-CLAMP), _mm512_set1_ps(CLAMP));
    let mut a = [_mm512_setzero_ps(); 7];
    for (v, &k) in a.iter_mut().zip(&A) {
        *v = _mm512_set1_ps(k);
    }
    let mut b = [_mm512_setzero_ps(); 4];
    for (v, &k) in b.iter_mut().zip(&B) {
        *v = _mm512_set1_ps(k);
    }
    for i in (0..main).step_by(16) {
        let yp = y.as_mut_ptr().add(i);
        let mut v = _mm512_add_ps(_mm512_loadu_ps(yp), _mm512_loadu_ps(bias.as_ptr().add(i)));
        if gelu {
            let inner = _mm512_add_ps(one, _mm512_mul_ps(_mm512_mul_ps(coef, v), v));
            let u = _mm512_mul_ps(_mm512_mul_ps(s2p, v), inner);
            // max then min, as `f32::max(..).min(..)` (the second operand on NaN, as there).
            let x = _mm512_min_ps(_mm512_max_ps(u, lo), hi);
            let x2 = _mm512_mul_ps(x, x);
            let mut p = a[0];
            for &ak in &a[1..] {
                p = _mm512_add_ps(_mm512_mul_ps(p, x2), ak);
            }
            let p = _mm512_mul_ps(p, x);
            let mut q = b[0];
            for &bk in &b[1..] {
                q = _mm512_add_ps(_mm512_mul_ps(q, x2), bk);
            }
            let t = _mm512_div_ps(p, q);
            v = _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, t));
        }
        _mm512_storeu_ps(yp, v);
    }
    super::x86::bias_act_row(&mut y[main..n], &bias[main..n], gelu);
}
