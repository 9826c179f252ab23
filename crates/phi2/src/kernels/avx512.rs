//! x86-64 AVX-512: F16 / BF16 weights against batches of tokens (prompts, speculative drafts),
//! part of the AMX kernel set (every CPU with AMX has AVX-512F).
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
//! [`MIN_TOKENS`]. That is about 40% of the two cores' 16-lane FMA peak; the limit was not found
//! (not L2: blocking the columns so a pass's activations stayed in L2 was slower).

use std::arch::x86_64::*;
use std::ops::Range;

use super::{reduce8, Activations, OutPtr, WeightRef};
use crate::dtype::DType;

/// The smallest batch taken here (smaller ones: the AVX2 tiles, whose cost has no per-row-tile
/// widening to amortise).
pub(crate) const MIN_TOKENS: usize = 16;

/// Weight rows per tile and token pairs per tile: 6 × 4 accumulators of two outputs each.
const R: usize = 6;
const P: usize = 4;

/// Token pairs per pass over the rows: bounds the accumulators a thread keeps between row
/// tiles (`[row][pair]`, 64 bytes each: 512 KB for a 128-row chunk).
const PB: usize = 64;

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
    super::resize(&mut a.fp, pairs_len(tokens, cols));
    for t in 0..tokens {
        let (p, h) = (t / 2, t % 2);
        for g in 0..groups {
            let dst = p * pair_stride(cols) + g * 16 + 8 * h;
            a.fp[dst..dst + 8].copy_from_slice(&a.f[t * cols + 8 * g..t * cols + 8 * g + 8]);
        }
    }
}

/// Per-thread buffers: the current row tile's weights widened to f32 (`[row][column of the
/// pass]`) and the chunk's accumulators (`[row][pair]`, 16 lanes each).
#[derive(Default)]
struct Bufs {
    w: Vec<f32>,
    acc: Vec<f32>,
}

thread_local! {
    static BUFS: std::cell::RefCell<Bufs> = std::cell::RefCell::new(Bufs::default());
}

/// Whether this CPU runs [`matmul_rows`] (checked once; part of `amx::available`).
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("f16c") && is_x86_feature_detected!("fma")
}

pub(crate) fn matmul_rows(w: &WeightRef, a: &Activations, rows: Range<usize>, out: OutPtr) {
    debug_assert!(takes(w, a));
    let mut bufs = BUFS.with(|b| std::mem::take(&mut *b.borrow_mut()));
    // SAFETY: `available()` held when the kernel set was chosen (`amx::available` requires it).
    unsafe {
        if w.dtype == DType::BF16 {
            rows_float::<true>(w, a, rows, out, &mut bufs);
        } else {
            rows_float::<false>(w, a, rows, out, &mut bufs);
        }
    }
    BUFS.with(|b| *b.borrow_mut() = bufs);
}

#[target_feature(enable = "avx512f,avx2,f16c,fma")]
unsafe fn rows_float<const BF: bool>(w: &WeightRef, a: &Activations, rows: Range<usize>, out: OutPtr, bufs: &mut Bufs) {
    let groups = w.cols / 8;
    let npairs = a.tokens.div_ceil(2);
    let nrows = rows.len();
    bufs.w.resize(R * (8 * groups + 16), 0.0);
    for pb0 in (0..npairs).step_by(PB) {
        let pn = PB.min(npairs - pb0);
        super::resize(&mut bufs.acc, nrows * pn * 16);
        let mut r0 = rows.start;
        while r0 < rows.end {
            let m = (rows.end - r0).min(R);
            widen_rows::<BF>(w, r0, m, &mut bufs.w);
            let pass = Pass { a, pb0, pn, acc: bufs.acc.as_mut_ptr(), wbuf: bufs.w.as_ptr() };
            if m == R {
                pass.pairs::<R>(r0 - rows.start, 0);
            } else {
                for r in 0..m {
                    pass.pairs::<1>(r0 + r - rows.start, r);
                }
            }
            r0 += m;
        }
        finish(w, a, rows.clone(), pb0, pn, &bufs.acc, out);
    }
}

/// The full groups of rows `r0 .. r0 + m` as f32 into `buf[r · (cols + 16) ..]` (a cache line
/// between rows, against L1 set conflicts as in [`pair_stride`]).
#[inline(always)]
unsafe fn widen_rows<const BF: bool>(w: &WeightRef, r0: usize, m: usize, buf: &mut [f32]) {
    let groups = w.cols / 8;
    for r in 0..m {
        let src = w.row(r0 + r).as_ptr();
        let dst = buf.as_mut_ptr().add(r * (8 * groups + 16));
        for g in 0..groups {
            let raw = _mm_loadu_si128(src.add(16 * g) as *const __m128i);
            let v = if BF { _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16)) } else { _mm256_cvtph_ps(raw) };
            _mm256_storeu_ps(dst.add(8 * g), v);
        }
    }
}

/// One pass over the rows for token pairs `pb0 .. pb0 + pn`.
struct Pass<'a> {
    a: &'a Activations,
    pb0: usize,
    pn: usize,
    /// The accumulators, `[row of the chunk][pair of the pass]` × 16.
    acc: *mut f32,
    /// The widened rows of the current tile.
    wbuf: *const f32,
}

impl Pass<'_> {
    /// Rows `ri .. ri + RR` of the chunk (tile rows `wr ..` of `wbuf`) against the pass's pairs,
    /// `P` at a time.
    #[inline(always)]
    unsafe fn pairs<const RR: usize>(&self, ri: usize, wr: usize) {
        let mut p = 0;
        while p < self.pn {
            p += match self.pn - p {
                n if n >= P => {
                    self.tile::<RR, P>(ri, wr, p);
                    P
                }
                n if n >= 2 => {
                    self.tile::<RR, 2>(ri, wr, p);
                    2
                }
                _ => {
                    self.tile::<RR, 1>(ri, wr, p);
                    1
                }
            };
        }
    }

    /// `RR` rows × `PP` pairs over every full group, into their accumulators.
    #[inline(always)]
    unsafe fn tile<const RR: usize, const PP: usize>(&self, ri: usize, wr: usize, p: usize) {
        let accp = |r: usize, q: usize| self.acc.add(((ri + r) * self.pn + p + q) * 16);
        let mut acc = [[_mm512_setzero_ps(); PP]; RR];
        let stride = pair_stride(self.a.cols);
        let groups = self.a.cols / 8;
        let xp = self.a.fp.as_ptr().add((self.pb0 + p) * stride);
        let wrow = 8 * groups + 16;
        let wp = self.wbuf.add(wr * wrow);
        for g in 0..groups {
            let x: [__m512; PP] = std::array::from_fn(|q| _mm512_loadu_ps(xp.add(q * stride + g * 16)));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                // The row's 8 values in both halves (a broadcast load: no shuffle).
                let wv = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd(wp.add(r * wrow + g * 8) as *const f64)));
                for (q, acc_rq) in acc_r.iter_mut().enumerate() {
                    *acc_rq = _mm512_fmadd_ps(wv, x[q], *acc_rq);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (q, acc_rq) in acc_r.iter().enumerate() {
                _mm512_storeu_ps(accp(r, q), *acc_rq);
            }
        }
    }
}

/// Per output of the pass's pairs: its lanes, the columns past the last full group (the scalar
/// definition, same lanes), the lane reduction.
unsafe fn finish(w: &WeightRef, a: &Activations, rows: Range<usize>, pb0: usize, pn: usize, acc: &[f32], out: OutPtr) {
    let cols = w.cols;
    let full = cols / 8 * 8;
    for (ri, r) in rows.enumerate() {
        let row = w.row(r);
        for q in 0..pn {
            for h in 0..2 {
                let t = 2 * (pb0 + q) + h;
                if t >= a.tokens {
                    break;
                }
                let base = (ri * pn + q) * 16 + 8 * h;
                let mut lanes: [f32; 8] = acc[base..base + 8].try_into().unwrap();
                let x = &a.f[t * cols..(t + 1) * cols];
                for i in full..cols {
                    let b = [row[2 * i], row[2 * i + 1]];
                    let wv = if w.dtype == DType::BF16 { half::bf16::from_le_bytes(b).to_f32() } else { half::f16::from_le_bytes(b).to_f32() };
                    lanes[i % 8] += wv * x[i];
                }
                out.set(t, r, reduce8(&lanes));
            }
        }
    }
}
