//! Causal attention of one sequence against its KV cache, with one numerical definition for every
//! ISA and every batch shape (like the matrix products, see [`super`]): query row i at absolute
//! position p = pos + i, head h, keys 0..=p:
//!
//! - `s_j = dot(q, k_j) · scale`, the dot accumulated in 8 lanes (element d in lane d % 8, in
//!   order, multiply then add) and reduced as [`super::reduce8`];
//! - `m = max_j s_j`, `e_j = exp(s_j − m)` with [`exp`] (fixed operations, no libm);
//! - `sum`: e_j added to lane j % 8 in order, then `reduce8`; `p_j = e_j / sum`;
//! - `y[d] = Σ_j p_j · v_j[d]` in j order (multiply then add).
//!
//! A row's result depends only on its own query, position and the cache, so a prompt gives the
//! same bits in one pass, in chunks, token by token (decode, speculative verification) or inside
//! a continuous batch, and native and wasm builds agree. Split over the pool by (head, row).
//!
//! The cache holds f32 keys and values, or f16 ones ([`KvElem`]): rounded to the nearest f16
//! when written, widened exactly when read, so the steps above run on the same f32 values in
//! every kernel and only what is stored differs.

use super::{pool, reduce8};

/// What a KV cache stores per value: `f32` as computed, or `half::f16`, rounded to the nearest
/// (ties to even) when written ([`KvElem::store`]) and widened exactly when read
/// ([`KvElem::load`]; every kernel widens the same way). An f16 cache takes half the memory, and a
/// decode step reads half the bytes of it. Sealed: the kernels read `HALF` types as f16 bits.
pub trait KvElem: super::buffer::ZeroBits + sealed::Sealed {
    /// f16 (else f32): the SIMD kernels widen their loads.
    const HALF: bool;
    fn store(x: f32) -> Self;
    fn load(self) -> f32;
}

mod sealed {
    /// Only f32 and half::f16 are cache elements.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
}

impl KvElem for f32 {
    const HALF: bool = false;
    #[inline(always)]
    fn store(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn load(self) -> f32 {
        self
    }
}

impl KvElem for half::f16 {
    const HALF: bool = true;
    #[inline(always)]
    fn store(x: f32) -> half::f16 {
        half::f16::from_f32(x)
    }
    #[inline(always)]
    fn load(self) -> f32 {
        self.to_f32()
    }
}

/// Shapes of one call: `heads × head_dim` values per row; the cache holds `cap` positions per
/// head (`[heads, cap, head_dim]`), the first `pos + tokens` of them valid.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub heads: usize,
    pub head_dim: usize,
    pub cap: usize,
    /// Position of the first query row (tokens already in the cache before this call).
    pub pos: usize,
    pub tokens: usize,
}

/// `out[i][h·hd + d]` (`[tokens, heads·head_dim]`) for queries `q` laid out `[heads, tokens,
/// head_dim]` and caches `k`, `v` laid out `[heads, cap, head_dim]`.
pub fn attention<T: KvElem>(q: &[f32], k: &[T], v: &[T], s: AttnShape, scale: f32, out: &mut [f32], threads: usize) {
    let AttnShape { heads, head_dim: hd, cap, pos, tokens } = s;
    assert!(pos + tokens <= cap, "attention: {} positions in a cache of {cap}", pos + tokens);
    assert!(q.len() >= heads * tokens * hd && k.len() >= heads * cap * hd && v.len() >= heads * cap * hd, "attention: short inputs");
    assert_eq!(out.len(), tokens * heads * hd, "attention: output size");
    if T::HALF && tokens >= WIDEN_FROM {
        return widened(q, k, v, s, scale, out, threads);
    }
    let o = super::OutPtr { ptr: out.as_mut_ptr(), len: out.len(), stride: heads * hd };
    let isa = super::isa();
    // Small products (decode at short context) stay on this thread.
    let work = heads * tokens * (pos + tokens) * hd;
    let threads = if work < 1 << 16 { 1 } else { threads };
    #[cfg(target_arch = "x86_64")]
    if tokens >= 2 && pairs_of_rows(isa, hd) {
        // Two rows of a head per item (AVX-512: one register holds both rows' lanes).
        let per_head = tokens.div_ceil(2);
        pool::run(heads * per_head, threads, &|item| {
            let (h, i) = (item / per_head, 2 * (item % per_head));
            let n = pos + i + 1;
            let qr = |i: usize| &q[(h * tokens + i) * hd..(h * tokens + i + 1) * hd];
            if i + 1 == tokens {
                let kh = &k[h * cap * hd..(h * cap + n) * hd];
                let vh = &v[h * cap * hd..(h * cap + n) * hd];
                // SAFETY: row i's slice of head h is this item's alone.
                row(isa, qr(i), kh, vh, scale, unsafe { o.token_cols(i, h * hd..(h + 1) * hd) });
                return;
            }
            let kh = &k[h * cap * hd..(h * cap + n + 1) * hd];
            let vh = &v[h * cap * hd..(h * cap + n + 1) * hd];
            // SAFETY: rows i and i + 1 of head h are this item's alone; the CPU runs AVX-512F
            // (`pairs_of_rows`).
            unsafe {
                let ya = o.token_cols(i, h * hd..(h + 1) * hd);
                let yb = o.token_cols(i + 1, h * hd..(h + 1) * hd);
                super::avx512::attention_rows2(qr(i), qr(i + 1), kh, vh, scale, ya, yb);
            }
        });
        return;
    }
    pool::run(heads * tokens, threads, &|item| {
        let (h, i) = (item / tokens, item % tokens);
        let n = pos + i + 1;
        let qr = &q[(h * tokens + i) * hd..(h * tokens + i + 1) * hd];
        let kh = &k[h * cap * hd..(h * cap + n) * hd];
        let vh = &v[h * cap * hd..(h * cap + n) * hd];
        // SAFETY: row i's slice of head h is this item's alone.
        let y = unsafe { &mut o.token_row(i)[h * hd..(h + 1) * hd] };
        row(isa, qr, kh, vh, scale, y);
    });
}

/// From this many query rows on, an f16 cache is widened to f32 once per call ([`widened`]) and
/// the rows read that: a prompt's rows read every key and value many times, and widening them at
/// each read cost more than the memory it saves (measured, Phi-2-shaped Q4_0, phi2-bench, 2
/// threads: prefill of 1024 tokens 119.4 tok/s with an f32 cache, 105.1 with an f16 one read
/// directly). Decode steps and speculative verification passes (up to 9 rows), which read the
/// cache from memory once or a few times, read the f16 values directly. The same bits either way:
/// widening is exact.
const WIDEN_FROM: usize = 16;

thread_local! {
    /// [`widened`]'s f32 keys and values, kept from one layer's call to the next within a pass
    /// (2 · heads · positions · head_dim values: 42 MB for Phi-2 at 2048 positions) and freed at
    /// its end ([`PassScratch`]).
    static WIDE: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

thread_local! {
    /// A row's scores (one per key: at most the context length; 2n + 1 for the two rows of
    /// [`super::avx512::attention_rows2`]), kept by each thread from row to row: the pool's workers
    /// live as long as the process, so a row allocates nothing once its thread has seen the
    /// longest context (8 KB for one row at Phi-2's 2048 positions, ~16 KB for two).
    static SCORES: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `len` zeros from this thread's score scratch; give it back with [`keep_scores`].
pub(super) fn take_scores(len: usize) -> Vec<f32> {
    let mut s = SCORES.take();
    s.clear();
    s.resize(len, 0.0);
    s
}

/// Returns the scratch [`take_scores`] lent, for the thread's next row.
pub(super) fn keep_scores(s: Vec<f32>) {
    SCORES.set(s);
}

/// Held by a forward pass over its layers: dropping it frees this thread's [`widened`] scratch,
/// at the end of the layers or on any early return.
pub struct PassScratch;

impl Drop for PassScratch {
    fn drop(&mut self) {
        WIDE.take();
    }
}

/// [`attention`] of an f16 cache through f32 copies of its first `pos + tokens` positions.
fn widened<T: KvElem>(q: &[f32], k: &[T], v: &[T], s: AttnShape, scale: f32, out: &mut [f32], threads: usize) {
    let AttnShape { heads, head_dim: hd, cap, pos, tokens } = s;
    let n = pos + tokens;
    let (mut kw, mut vw) = WIDE.take();
    kw.resize(heads * n * hd, 0.0);
    vw.resize(heads * n * hd, 0.0);
    let (kd, vd) = (super::Shared(kw.as_mut_ptr()), super::Shared(vw.as_mut_ptr()));
    let isa = super::isa();
    pool::run(heads, threads, &|h| {
        // SAFETY: head h's rows of the copies (sized above) are this item's alone.
        let (kh, vh) = unsafe { (kd.slice(h * n * hd, n * hd), vd.slice(h * n * hd, n * hd)) };
        widen(isa, &k[h * cap * hd..(h * cap + n) * hd], kh);
        widen(isa, &v[h * cap * hd..(h * cap + n) * hd], vh);
    });
    attention::<f32>(q, &kw, &vw, AttnShape { cap: n, ..s }, scale, out, threads);
    WIDE.set((kw, vw));
}

/// `src` as f32 into `dst` (f16: exactly, as [`KvElem::load`]; SIMD where the kernel set has it).
fn widen<T: KvElem>(isa: super::Isa, src: &[T], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen: lengths");
    if T::HALF {
        // SAFETY: T is half::f16 (`HALF`), two bytes of f16 bits like u16.
        let bits = unsafe { std::slice::from_raw_parts(src.as_ptr() as *const u16, src.len()) };
        #[cfg(target_arch = "x86_64")]
        if x86_set(isa) {
            // SAFETY: every x86 kernel set includes AVX2 and F16C (checked when it was chosen).
            unsafe { super::x86::widen_f16(bits, dst) };
            return;
        }
        #[cfg(target_arch = "wasm32")]
        if isa == super::Isa::Simd128 {
            super::wasm::widen_f16(bits, dst);
            return;
        }
        #[cfg(target_arch = "aarch64")]
        if matches!(isa, super::Isa::Neon | super::Isa::NeonDot) {
            super::neon::widen_f16(bits, dst);
            return;
        }
    }
    let _ = isa;
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.load();
    }
}

/// Whether `isa` is one of the x86 kernel sets (each includes AVX2, FMA and F16C: checked when it
/// was chosen).
#[cfg(target_arch = "x86_64")]
fn x86_set(isa: super::Isa) -> bool {
    matches!(isa, super::Isa::Avx2 | super::Isa::AvxVnni | super::Isa::Avx512Vnni | super::Isa::Amx)
}

/// Whether batches run two rows at a time ([`super::avx512::attention_rows2`]): an x86 kernel
/// set on a CPU with AVX-512F, and a head size it takes. Same bits either way.
#[cfg(target_arch = "x86_64")]
fn pairs_of_rows(isa: super::Isa, head_dim: usize) -> bool {
    x86_set(isa) && super::avx512::rows2_fit(head_dim) && super::avx512::available()
}

fn row<T: KvElem>(isa: super::Isa, q: &[f32], k: &[T], v: &[T], scale: f32, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86_set(isa) {
        // SAFETY: every x86 kernel set includes AVX2 (checked when it was chosen).
        unsafe { super::x86::attention_row(q, k, v, scale, y) };
        return;
    }
    #[cfg(target_arch = "wasm32")]
    if isa == super::Isa::Simd128 {
        super::wasm::attention_row(q, k, v, scale, y);
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if matches!(isa, super::Isa::Neon | super::Isa::NeonDot) {
        super::neon::attention_row(q, k, v, scale, y);
        return;
    }
    let _ = isa;
    row_scalar(q, k, v, scale, y);
}

/// The definition, one value at a time.
pub fn row_scalar<T: KvElem>(q: &[f32], k: &[T], v: &[T], scale: f32, y: &mut [f32]) {
    let hd = q.len();
    let n = k.len() / hd;
    let mut e = take_scores(n);
    for (j, ej) in e.iter_mut().enumerate() {
        let mut lanes = [0f32; 8];
        for (d, (&a, &b)) in q.iter().zip(&k[j * hd..(j + 1) * hd]).enumerate() {
            lanes[d % 8] += a * b.load();
        }
        *ej = reduce8(&lanes) * scale;
    }
    let sum = exp_scores(&mut e);
    y.fill(0.0);
    for (j, &ej) in e.iter().enumerate() {
        let p = ej / sum;
        for (yd, &vd) in y.iter_mut().zip(&v[j * hd..(j + 1) * hd]) {
            *yd += p * vd.load();
        }
    }
    keep_scores(e);
}

/// The softmax numerators of one row's scores, in place, and their sum: `m = max_j s_j`,
/// `e_j = exp(s_j − m)`, the sum in lanes j % 8 then [`reduce8`] (the definition's steps; the
/// wasm and NEON rows use it as it is, x86 has an AVX2 twin).
pub(crate) fn exp_scores(scores: &mut [f32]) -> f32 {
    let m = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut lanes = [0f32; 8];
    for (j, s) in scores.iter_mut().enumerate() {
        *s = exp(*s - m);
        lanes[j % 8] += *s;
    }
    reduce8(&lanes)
}

/// e^x for x ≤ 0 (attention's `s − max`): x clamped at −87; `n = round(x·log2 e)`,
/// `r = (x − n·ln2_hi) − n·ln2_lo` (Cody–Waite; n·ln2_hi is exact), Cephes' degree-5 polynomial
/// `e^r ≈ ((P(r)·r²) + r) + 1`, times 2ⁿ built from the exponent bits. Each step one rounded
/// f32 operation, no fused multiply-add: the same bits on every ISA. About 1 ulp.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    use exp_c::*;
    let x = x.max(LOW);
    let n = super::round_ties_even(x * LOG2E);
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = P[0];
    for &c in &P[1..] {
        p = p * r + c;
    }
    let e = (p * (r * r) + r) + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// The constants of [`exp`] (the SIMD twin uses the same).
#[allow(clippy::excessive_precision)]
pub(crate) mod exp_c {
    pub const LOW: f32 = -87.0;
    pub const LOG2E: f32 = 1.44269504088896341;
    pub const LN2_HI: f32 = 0.693359375;
    pub const LN2_LO: f32 = -2.12194440e-4;
    /// Highest power first.
    pub const P: [f32; 6] = [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1];
}
