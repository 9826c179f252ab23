//! Our own matrix products for the hot path: `y = x · Wᵀ` with W in its file layout (quantized
//! blocks or 16-bit floats, used in place from the memory-mapped file), for one token (decode)
//! or many (prefill), split by output rows over a persistent thread pool.
//!
//! # One numerical definition for every ISA
//!
//! Each output element `y[t][r]` is defined by the scalar twin ([`scalar`]) and every SIMD kernel
//! computes exactly the same bits, whatever the tile shape, the number of tokens in the batch or
//! the thread count (so decode, prefill, batched and speculative passes agree bit for bit, and
//! so do native and wasm builds):
//!
//! - **Activations** are prepared once per product by [`Activations::prepare`] (scalar code on
//!   every ISA): for Q4_0 / Q8_0 weights, 8-bit blocks of 32 as ggml's `block_q8_0` (scale
//!   `d = amax / 127` rounded to f16; `q = round_ties_even(x · (127 / amax))`; the integer block
//!   sum is kept); for K-quants, ggml's `block_q8_K` (256 values, f32 scale `d = 1 / iscale` with
//!   `iscale = −127 / max`, `q = min(127, round_ties_even(iscale · x))`, sums per 16); for F16 /
//!   BF16 weights, the activation rounded to the weight's type (as ggml does).
//! - **Quantized weights**: per block, the integer dot product of weight and activation
//!   integers is exact (i32). Its f32 value for block b is
//!   `(d_w · d_x) · isum` (Q4_0, Q8_0, Q6_K) or `(d_w · d_x) · isum − (dmin_w · d_x) · msum`
//!   (Q4_K, Q5_K), each operation rounded to f32, no fused multiply-add.
//!   - Q4_0 / Q8_0 (blocks of 32): block b is added to lane `b % 8` of 8 f32 lanes (in block
//!     order), then the lanes are reduced as below. SIMD code keeps 8 consecutive blocks in the
//!     8 lanes of one vector, so no horizontal sum is needed per block.
//!   - K-quants (super-blocks of 256): added to one f32 accumulator in order.
//! - **F16 / BF16 weights**: products of two 16-bit floats are exact in f32, so a fused
//!   multiply-add equals a multiply then add; element i goes to lane `i % 8`, lanes accumulate
//!   in order, then `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`.
//!
//! The SIMD kernels vectorise across output elements (rows × tokens), never across the
//! accumulation, which is what makes the definition cheap to follow everywhere.

use std::ops::Range;

use half::{bf16, f16};

use crate::dtype::DType;

pub mod attention;
pub mod buffer;
pub mod pool;
pub mod scalar;
#[cfg(target_arch = "wasm32")]
mod wasm;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod vnni512;
#[cfg(target_arch = "x86_64")]
mod x86;

/// A weight matrix `[rows, cols]` in its file layout: row `r` is
/// `data[r * row_bytes .. (r + 1) * row_bytes]`.
#[derive(Debug, Clone, Copy)]
pub struct WeightRef<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
    /// Known: every block scale is a finite f16 (Q4_0, Q8_0; see [`scales_finite`]), so kernels
    /// may leave out their conversion of infinities and NaNs. False when not known.
    pub finite_scales: bool,
}

impl<'a> WeightRef<'a> {
    /// `None` unless our kernels take `dtype`, `cols` is a whole number of blocks and `data`
    /// holds exactly `rows` rows.
    pub fn new(dtype: DType, rows: usize, cols: usize, data: &'a [u8]) -> Option<Self> {
        let family = Family::of(dtype)?;
        if cols == 0 || !cols.is_multiple_of(family.block()) || dtype.byte_len(&[rows, cols]) != Some(data.len()) {
            return None;
        }
        Some(WeightRef { dtype, rows, cols, data, finite_scales: false })
    }

    pub fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_size() * self.dtype.type_size()
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }
}

/// Whether every block scale of Q4_0 or Q8_0 weights `data` (whole blocks) is a finite f16, as
/// in any working model: one pass over the scales. False for other types.
pub fn scales_finite(dtype: DType, data: &[u8]) -> bool {
    let bytes = match dtype {
        DType::Q4_0 => 18,
        DType::Q8_0 => 34,
        _ => return false,
    };
    data.len().is_multiple_of(bytes) && data.chunks_exact(bytes).all(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7C00 != 0x7C00)
}

/// How activations are prepared for a weight type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// 8-bit blocks of 32 (Q4_0, Q8_0 weights).
    Q8_0,
    /// 8-bit super-blocks of 256 with sums per 16 (Q4_K, Q5_K, Q6_K weights).
    Q8K,
    /// Rounded to f16 (F16 weights).
    F16,
    /// Rounded to bf16 (BF16 weights).
    BF16,
}

impl Family {
    /// The activation family for a weight type, or `None` when our kernels do not take it.
    pub fn of(dtype: DType) -> Option<Family> {
        Some(match dtype {
            DType::Q4_0 | DType::Q8_0 => Family::Q8_0,
            DType::Q4K | DType::Q5K | DType::Q6K => Family::Q8K,
            DType::F16 => Family::F16,
            DType::BF16 => Family::BF16,
            _ => return None,
        })
    }

    /// Values per activation block (columns must be a multiple of it).
    pub fn block(self) -> usize {
        match self {
            Family::Q8_0 => 32,
            Family::Q8K => 256,
            Family::F16 | Family::BF16 => 1,
        }
    }
}

/// Whether the model runs weights of `dtype` through [`matmul`]: every type with an activation
/// [`Family`], on every ISA (wasm32 included: SIMD128 kernels for all of them, so native and wasm
/// builds give the same bits for F16 and BF16 weights too).
pub fn supports(dtype: DType) -> bool {
    Family::of(dtype).is_some()
}

/// Activations of `tokens` rows of `cols` values, prepared for one [`Family`]. Reused across
/// products (buffers only grow), so steady-state decoding allocates nothing here.
///
/// Layouts (b = block, t = token, B = blocks per row):
/// - `q[t * cols + i]`: 8-bit values, token-major.
/// - Q8_0: `d[t * B + b]`, the block scale (the f16 scale widened); `s[t * B + b]`, the block's
///   integer sum; `qt`, the same values as `q` regrouped for 8-block SIMD lanes: for every full
///   group g of 8 blocks and k in 0..8, 32 bytes whose 4-byte lane j holds values `4k .. 4k + 4`
///   of block `8g + j` (at `((t * G + g) * 8 + k) * 32`, G = B / 8 full groups). `qp` and `dp`,
///   for `vnni512`'s token pairs: pair p (tokens 2p and 2p + 1; the last token stands in for a
///   missing second one) has `qt`'s 32 bytes of both tokens side by side, as unsigned bytes
///   `x + 128` (`qp[((p * G + g) * 8 + k) * 64 + 32 * h + ..]`, h = which token of the pair),
///   and the 8 block scales and `−8 ·` block sums of both (`dp[(p * G + g) * 16 + 8 * h + j]`,
///   `sp` alike).
/// - Q8K: `d[b * tokens + t]`, block-major so a tile's tokens are contiguous;
///   `bsums[(t * B + b) * 16 + k]`, sums of each 16 values.
/// - `f[t * cols + i]`: F16/BF16: the rounded activation as f32.
#[derive(Debug, Default)]
pub struct Activations {
    pub family: Option<Family>,
    pub tokens: usize,
    pub cols: usize,
    pub q: buffer::Aligned<i8>,
    pub d: buffer::Aligned<f32>,
    pub s: buffer::Aligned<i32>,
    pub bsums: buffer::Aligned<i32>,
    pub qt: buffer::Aligned<i8>,
    /// Q8_0 batches of 2+ tokens for the AVX512-VNNI kernels (sets AVX512-VNNI and AMX, the
    /// latter below its tile crossover): the token-pair layouts above; empty otherwise.
    pub qp: buffer::Aligned<u8>,
    pub dp: buffer::Aligned<f32>,
    pub sp: buffer::Aligned<i32>,
    /// wasm32: `q` widened to i16 (same layout), for SIMD128's i16 dot products.
    pub q16: buffer::Aligned<i16>,
    /// The activation tiles, their scales and (Q8_K) pair sums (see `amx::prepare`), for the
    /// batches that read them: with the AMX set, Q8_0-family batches a Q4_0 or Q8_0 tile kernel
    /// takes (`amx::wins`); with the AMX or AVX512-VNNI set, Q8_K batches of at least
    /// `amx::MIN_TOKENS` (`vnni512`'s K-quant kernel, and AMX's from its crossover). Empty
    /// otherwise.
    pub tb: buffer::Aligned<i8>,
    pub td: buffer::Aligned<f32>,
    pub tbs: buffer::Aligned<i16>,
    pub f: Vec<f32>,
    /// F16/BF16 batches when the kernel set in use is AVX512-VNNI or AMX (both run
    /// `avx512`'s float kernel): `f` by token pairs (see `avx512::prepare`); empty otherwise.
    pub fp: buffer::Aligned<f32>,
}

impl Activations {
    /// Prepares `x` (`[tokens, cols]` row-major f32) for weights of `family`, for the kernel set
    /// in use ([`isa`]).
    pub fn prepare(&mut self, family: Family, x: &[f32], tokens: usize, cols: usize) {
        self.prepare_for(isa(), family, x, tokens, cols);
    }

    /// [`Activations::prepare`] for kernel set `set` (the layouts only some sets read are built
    /// for those: [`matmul_with`] of another set takes the kernels these layouts allow).
    pub fn prepare_for(&mut self, set: Isa, family: Family, x: &[f32], tokens: usize, cols: usize) {
        let _ = set; // (read by the x86-64 layouts only)
        assert_eq!(x.len(), tokens * cols, "activations: {} values for {tokens} x {cols}", x.len());
        assert!(cols.is_multiple_of(family.block()), "activations: {cols} columns for blocks of {}", family.block());
        self.family = Some(family);
        self.tokens = tokens;
        self.cols = cols;
        match family {
            Family::Q8_0 => {
                let nb = cols / 32;
                let groups = nb / 8;
                self.q.resize(tokens * cols);
                self.d.resize(tokens * nb);
                self.s.resize(tokens * nb);
                // The SIMD layouts: `qt` for x86-64's 8-block lanes, `q16` for wasm32 (aarch64
                // reads `q` as it is).
                let wasm = cfg!(target_arch = "wasm32");
                let x86 = cfg!(target_arch = "x86_64");
                self.qt.resize(if x86 { tokens * groups * 256 } else { 0 });
                self.q16.resize(if wasm { tokens * cols } else { 0 });
                let (q, d, s) = (Shared(self.q.as_mut_ptr()), Shared(self.d.as_mut_ptr()), Shared(self.s.as_mut_ptr()));
                let (qt, q16) = (Shared(self.qt.as_mut_ptr()), Shared(self.q16.as_mut_ptr()));
                par_tokens(tokens, cols, &|t| {
                    // SAFETY: token t's ranges of each buffer (sized above) are this item's alone.
                    let (q, d, s) = unsafe { (q.slice(t * cols, cols), d.slice(t * nb, nb), s.slice(t * nb, nb)) };
                    quantize_row_q8_0(&x[t * cols..(t + 1) * cols], q, d, s);
                    if wasm {
                        // SAFETY: as above.
                        let q16 = unsafe { q16.slice(t * cols, cols) };
                        for (w, &v) in q16.iter_mut().zip(q.iter()) {
                            *w = v as i16;
                        }
                        return;
                    }
                    if !x86 {
                        return;
                    }
                    // SAFETY: as above.
                    let qt = unsafe { qt.slice(t * groups * 256, groups * 256) };
                    for g in 0..groups {
                        for k in 0..8 {
                            for j in 0..8 {
                                let src = 32 * (8 * g + j) + 4 * k;
                                let dst = (g * 8 + k) * 32 + 4 * j;
                                qt[dst..dst + 4].copy_from_slice(&q[src..src + 4]);
                            }
                        }
                    }
                });
                self.qp.clear();
                self.dp.clear();
                self.sp.clear();
                #[cfg(target_arch = "x86_64")]
                if tokens >= vnni512::MIN_TOKENS
                    && (set == Isa::Avx512Vnni || set == Isa::Amx && !(amx::wins(DType::Q4_0, tokens) && amx::wins(DType::Q8_0, tokens)))
                {
                    self.prepare_pairs();
                }
                self.tb.clear();
                // The activation tiles, for the AMX set only (not when a lesser one was chosen),
                // and only for batches that a Q4_0 or Q8_0 tile kernel takes.
                #[cfg(target_arch = "x86_64")]
                if set == Isa::Amx && (amx::wins(DType::Q4_0, tokens) || amx::wins(DType::Q8_0, tokens)) {
                    amx::prepare(self);
                }
            }
            Family::Q8K => {
                let nb = cols / 256;
                self.q.resize(tokens * cols);
                self.d.resize(tokens * nb);
                self.bsums.resize(tokens * nb * 16);
                let mut dt = vec![0f32; tokens * nb];
                let (q, d, bsums) = (Shared(self.q.as_mut_ptr()), Shared(dt.as_mut_ptr()), Shared(self.bsums.as_mut_ptr()));
                par_tokens(tokens, cols, &|t| {
                    // SAFETY: token t's ranges of each buffer (sized above) are this item's alone.
                    let (q, d, bs) = unsafe { (q.slice(t * cols, cols), d.slice(t * nb, nb), bsums.slice(t * nb * 16, nb * 16)) };
                    for b in 0..nb {
                        d[b] = quantize_block_q8_k(&x[t * cols + 256 * b..t * cols + 256 * b + 256], &mut q[256 * b..256 * b + 256], &mut bs[16 * b..16 * b + 16]);
                    }
                });
                // Block-major scales (a tile's tokens contiguous).
                for t in 0..tokens {
                    for b in 0..nb {
                        self.d[b * tokens + t] = dt[t * nb + b];
                    }
                }
                self.tb.clear();
                // The activation tiles: for AMX, and for the AVX-512 VNNI K-quant kernel (both
                // sets run it).
                #[cfg(target_arch = "x86_64")]
                if tokens >= amx::MIN_TOKENS && matches!(set, Isa::Amx | Isa::Avx512Vnni) {
                    amx::prepare(self);
                }
            }
            Family::F16 => {
                self.f.clear();
                // The same bits either way: `half` rounds with F16C's instruction where the CPU
                // has it, one value per call (a prompt's activations, on the calling thread
                // while the others wait: ~2% of an F16 prompt's samples).
                #[cfg(target_arch = "x86_64")]
                let f16c = x86::available();
                #[cfg(not(target_arch = "x86_64"))]
                let f16c = false;
                if !f16c {
                    self.f.extend(x.iter().map(|&v| f16::from_f32(v).to_f32()));
                }
                #[cfg(target_arch = "x86_64")]
                if f16c {
                    self.f.reserve(x.len());
                    // Token rows over the pool (a 512-token prompt's rows are 5 MB).
                    let dst = Shared(self.f.spare_capacity_mut().as_mut_ptr());
                    par_items(tokens, x.len(), &|t| {
                        // SAFETY: the CPU has AVX and F16C (`available`); row t of the spare
                        // capacity (`x.len()` = tokens · cols reserved) is this item's alone,
                        // and `round_f16` writes every value of it.
                        unsafe { x86::round_f16(&x[t * cols..(t + 1) * cols], dst.slice(t * cols, cols)) };
                    });
                    // SAFETY: every row was written above.
                    unsafe { self.f.set_len(x.len()) };
                }
            }
            Family::BF16 => {
                self.f.clear();
                self.f.extend(x.iter().map(|&v| bf16::from_f32(v).to_f32()));
            }
        }
        self.fp.clear();
        #[cfg(target_arch = "x86_64")]
        if matches!(family, Family::F16 | Family::BF16) && tokens >= avx512::MIN_TOKENS && matches!(set, Isa::Amx | Isa::Avx512Vnni) && avx512::available() {
            avx512::prepare(self);
        }
    }
}

impl Activations {
    /// `qp` and `dp` (Q8_0 family, x86-64) from `qt` and `d`.
    #[cfg(target_arch = "x86_64")]
    fn prepare_pairs(&mut self) {
        let (tokens, nb) = (self.tokens, self.cols / 32);
        let groups = nb / 8;
        let pairs = tokens.div_ceil(2);
        // (Not zeroed: every value is written below.)
        self.qp.resize(pairs * groups * 512);
        self.dp.resize(pairs * groups * 16);
        self.sp.resize(pairs * groups * 16);
        let (qp, dp, sp) = (Shared(self.qp.as_mut_ptr()), Shared(self.dp.as_mut_ptr()), Shared(self.sp.as_mut_ptr()));
        let (qt, d, s) = (&self.qt[..], &self.d[..], &self.s[..]);
        par_tokens(pairs, 2 * self.cols, &|p| {
            // SAFETY: pair p's ranges of each buffer (sized above) are this item's alone.
            let (qp, dp, sp) = unsafe { (qp.slice(p * groups * 512, groups * 512), dp.slice(p * groups * 16, groups * 16), sp.slice(p * groups * 16, groups * 16)) };
            for h in 0..2 {
                let t = (2 * p + h).min(tokens - 1);
                for g in 0..groups {
                    for k in 0..8 {
                        let src = &qt[((t * groups + g) * 8 + k) * 32..][..32];
                        let dst = &mut qp[(g * 8 + k) * 64 + 32 * h..][..32];
                        for (o, &v) in dst.iter_mut().zip(src) {
                            *o = (v as u8) ^ 0x80;
                        }
                    }
                    dp[g * 16 + 8 * h..g * 16 + 8 * h + 8].copy_from_slice(&d[t * nb + 8 * g..t * nb + 8 * g + 8]);
                    for j in 0..8 {
                        sp[g * 16 + 8 * h + j] = -8 * s[t * nb + 8 * g + j];
                    }
                }
            }
        });
    }
}

/// A buffer's base pointer shared by the items of one [`par_tokens`] call, each of which takes
/// a disjoint range of it.
#[derive(Clone, Copy)]
pub(crate) struct Shared<T>(pub(crate) *mut T);
// SAFETY: items only form slices of disjoint ranges (see `slice`'s contract).
unsafe impl<T> Sync for Shared<T> {}
unsafe impl<T> Send for Shared<T> {}

impl<T> Shared<T> {
    /// # Safety
    /// `start + len` within the buffer, and no other live slice overlaps this one.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

/// Runs `f(t)` for every token, over the pool when the batch is large enough to pay for it.
pub(crate) fn par_tokens(tokens: usize, cols: usize, f: &(dyn Fn(usize) + Sync)) {
    par_items(tokens, tokens * cols, f);
}

/// Runs `f(i)` for `items` items that together touch `values` activation values, over the pool
/// when there are several items and enough values to pay for waking it.
pub(crate) fn par_items(items: usize, values: usize, f: &(dyn Fn(usize) + Sync)) {
    let threads = if items > 1 && values >= 16384 { pool::threads() } else { 1 };
    pool::run(items, threads, f);
}

/// Round to nearest, ties to even, for |v| < 2²² (all our callers: |v| ≤ 128), as ggml's
/// `nearest_int`: adding 1.5·2²³ leaves no fraction bits, so the addition itself rounds (IEEE
/// round-to-nearest-even), on every ISA and without SSE4.1's `roundss` (a libm call otherwise).
#[inline(always)]
pub fn round_ties_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// ggml's `block_q8_0` for 32 values: returns the scale (f16-rounded, widened) and the sum of
/// the 8-bit values.
pub fn quantize_block_q8_0(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = f16::from_f32(amax / 127.0).to_f32();
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (qi, &v) in q.iter_mut().zip(x) {
        // |v · id| ≤ 127 (up to rounding of id, which rounding cannot push past 127.5).
        let r = round_ties_even(v * id).clamp(-127.0, 127.0) as i8;
        *qi = r;
        sum += r as i32;
    }
    (d, sum)
}

/// [`quantize_block_q8_0`] for each block of 32 of `x` into `q`, with the scales into `d` and
/// the sums into `s`: on x86-64 with AVX2 eight values at a time (the same results, tested).
pub fn quantize_row_q8_0(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: AVX2 is present (checked just now).
        unsafe { x86::quantize_row_q8_0(x, q, d, s) };
        return;
    }
    for b in 0..x.len() / 32 {
        (d[b], s[b]) = quantize_block_q8_0(&x[32 * b..32 * b + 32], &mut q[32 * b..32 * b + 32]);
    }
}

/// ggml's `block_q8_K` for 256 values: writes the 8-bit values and the 16 sums of 16, returns d.
/// AVX2 where present, with the bits of [`quantize_block_q8_k_scalar`].
pub fn quantize_block_q8_k(x: &[f32], q: &mut [i8], bsums: &mut [i32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: AVX2 is present (checked just now).
        return unsafe { x86::quantize_block_q8_k(x, q, bsums) };
    }
    quantize_block_q8_k_scalar(x, q, bsums)
}

/// [`quantize_block_q8_k`], one value at a time: the definition.
pub fn quantize_block_q8_k_scalar(x: &[f32], q: &mut [i8], bsums: &mut [i32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        q.fill(0);
        bsums.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = round_ties_even(iscale * v).clamp(-128.0, 127.0) as i8;
    }
    for (k, s) in bsums.iter_mut().enumerate() {
        *s = q[16 * k..16 * k + 16].iter().map(|&v| v as i32).sum();
    }
    1.0 / iscale
}

/// Which kernel set runs, chosen once at run time (wasm: at compile time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX2 + AVX-VNNI (`vpdpbusd`).
    AvxVnni,
    /// x86-64 AVX-512 with VNNI (Ice Lake and Cascade Lake Xeons, AMD Zen 4 and 5): 512-bit
    /// `vpdpbusd` tiles for Q4_0 / Q8_0 batches (`vnni512`), the EVEX `vpdpbusd` in the one-token
    /// Q4_0 / Q8_0 kernels, 512-bit tiles with tokens in the lanes for K-quant batches, 512-bit
    /// one-row K-quant kernels for one token, AVX-512 for F16 / BF16 batches; the AVX2 tiles for
    /// short K-quant batches (2 to 6 tokens).
    Avx512Vnni,
    /// x86-64 AVX-VNNI and AVX512-VNNI, plus AMX tiles (`tdpbusd` / `tdpbssd`, AVX-512
    /// epilogue) for quantized batches from their measured crossover (`amx::wins`: 32 / 40 / 48
    /// tokens; shorter Q4_0 / Q8_0 batches, K-quant batches from `amx::MIN_TOKENS` and
    /// one-token Q6_K run `vnni512`, shorter K-quant batches the AVX-VNNI row kernel), and
    /// AVX-512 for F16 / BF16 batches (`avx512::MIN_TOKENS`).
    Amx,
    /// wasm32 SIMD128.
    Simd128,
    /// aarch64 NEON (widening multiplies for the 8-bit products).
    Neon,
    /// aarch64 NEON with the dotprod extension (`sdot`).
    NeonDot,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avx-vnni",
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Amx => "amx",
            Isa::Simd128 => "simd128",
            Isa::Neon => "neon",
            Isa::NeonDot => "neon-dotprod",
        }
    }
}

/// The best kernel set this CPU runs. `PHI2_KERNELS=scalar|avx2|...` picks a lesser one this
/// CPU also runs (tests, debugging, benchmarks); the results are the same bits either way.
pub fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(not(target_arch = "wasm32"))]
        if let Ok(name) = std::env::var("PHI2_KERNELS") {
            if let Some(isa) = runnable().into_iter().find(|i| i.name() == name) {
                return isa;
            }
        }
        detect()
    })
}

/// Every kernel set this CPU runs, the scalar twin first.
pub fn runnable() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    #[cfg(target_arch = "x86_64")]
    {
        if x86::available() {
            v.push(Isa::Avx2);
        }
        if x86::vnni_available() {
            v.push(Isa::AvxVnni);
        }
        if vnni512::available() {
            v.push(Isa::Avx512Vnni);
        }
        if amx::available() {
            v.push(Isa::Amx);
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    v.push(Isa::Simd128);
    #[cfg(target_arch = "aarch64")]
    {
        v.push(Isa::Neon);
        if neon::dotprod_available() {
            v.push(Isa::NeonDot);
        }
    }
    v
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    if amx::available() {
        return Isa::Amx;
    }
    #[cfg(target_arch = "x86_64")]
    if vnni512::available() {
        return Isa::Avx512Vnni;
    }
    #[cfg(target_arch = "x86_64")]
    if x86::vnni_available() {
        return Isa::AvxVnni;
    }
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        return Isa::Avx2;
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return Isa::Simd128;
    #[cfg(target_arch = "aarch64")]
    return if neon::dotprod_available() { Isa::NeonDot } else { Isa::Neon };
    #[allow(unreachable_code)]
    Isa::Scalar
}

/// Output rows per work item handed to a thread (a multiple of every tile height). Long runs of
/// rows keep each thread's weight stream contiguous, which the prefetchers need: measured on
/// Phi-2-shaped Q4_0, two threads, going from 32 to 256 rows made a decode step ~15% faster
/// (99 → 84 ms); at the higher bandwidth of a quieter machine (33 GB/s read probe) the weights of
/// a decode step streamed at 25.3 GB/s in items of 256 rows, 26.9 at 512, 27.9 at 640, 27.3 at
/// 768, 23.9 at 2048 (`stream_bench`; Q4_K_M 14.4 → 14.9 GB/s from 256 to 640, Q8_0 the same).
/// 640 also splits every Phi-2 matrix into an even number of items (2560 rows: 4, 7680: 12,
/// 10240: 16, 51200: 80), so two threads finish a product together. Batches use 128 (finer
/// split, compute-bound).
///
/// Wider rows take proportionally fewer (a work item of a one-token product stays at most the
/// bytes of 640 rows of 2560 columns): a thread that takes the last item of a product makes the
/// other wait until it is done, and Phi-2's `fc2` (10240 columns) would otherwise end each layer
/// with several MB for one thread.
///
/// With more threads, a one-token product's items shrink so that each thread gets two (rows /
/// (2 · threads), in multiples of 32): on two threads every Phi-2 matrix keeps the sizes above
/// (its smallest, 2560 rows, splits into 4 items of 640 either way); on 16 cores a 2560-row
/// product is 27 items instead of 4.
fn chunk_rows(tokens: usize, cols: usize, rows: usize, threads: usize) -> usize {
    if tokens == 1 {
        let base = (640 * 2560 / cols.max(1)).clamp(32, 640) / 8 * 8;
        base.min(rows.div_ceil(2 * threads.max(1)).next_multiple_of(32))
    } else {
        128
    }
}

/// How one product's rows are cut into work items: items of [`chunk_rows`], except that when
/// `fine_tail` is set the last `threads` items' worth of rows is cut four times finer. The pool
/// hands items out in order and a product ends when its last item does, so the thread that
/// takes the last big item would otherwise leave the others waiting for up to its whole length
/// (a one-token item is ~1 MB of weights, ~90 µs at this machine's bandwidth; three products
/// per layer).
#[derive(Clone, Copy, Debug)]
struct Split {
    rows: usize,
    chunk: usize,
    /// Rows from here on are in items of `fine` rows.
    fine_from: usize,
    fine: usize,
}

impl Split {
    fn new(tokens: usize, cols: usize, rows: usize, threads: usize, fine_tail: bool) -> Split {
        Split::with_chunk(rows, chunk_rows(tokens, cols, rows, threads), threads, fine_tail)
    }

    fn with_chunk(rows: usize, chunk: usize, threads: usize, fine_tail: bool) -> Split {
        // Fine items of a multiple of 16 rows from a row that is one too (the AMX slab height: a
        // slab that straddles two items would be packed half empty in each; the row kernels
        // take any rows).
        let fine = (chunk / 4 / 16 * 16).max(16).min(chunk);
        let fine_from = if fine_tail && threads > 1 { rows.saturating_sub(threads * chunk) / 16 * 16 } else { rows };
        Split { rows, chunk, fine_from, fine }
    }

    fn items(&self) -> usize {
        self.fine_from.div_ceil(self.chunk) + (self.rows - self.fine_from).div_ceil(self.fine)
    }

    /// The rows of item `i` (< [`Self::items`]).
    fn range(&self, i: usize) -> Range<usize> {
        let big = self.fine_from.div_ceil(self.chunk);
        if i < big {
            i * self.chunk..((i + 1) * self.chunk).min(self.fine_from)
        } else {
            let start = self.fine_from + (i - big) * self.fine;
            start..(start + self.fine).min(self.rows)
        }
    }
}

/// A raw output pointer shared by the threads of one product; each writes disjoint elements.
/// A safety invariant of every kernel (`matmul_rows`): it writes every (token, row) of its rows
/// and reads none before writing it, since [`matmul_many`]'s outputs may start uninitialized.
/// The parity tests start outputs as NaN.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr {
    ptr: *mut f32,
    len: usize,
    /// Elements between consecutive tokens (the full output width).
    pub stride: usize,
}
// SAFETY: threads write disjoint (row, token) elements, and `matmul` waits for all of them
// before the borrow of the output ends.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The whole output row of token `t`.
    ///
    /// # Safety
    /// No other thread may touch this row while the slice lives.
    #[inline(always)]
    pub(crate) unsafe fn token_row(&self, t: usize) -> &mut [f32] {
        assert!((t + 1) * self.stride <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(t * self.stride), self.stride)
    }

    /// Elements `cols` of token `t`'s row.
    ///
    /// # Safety
    /// No other thread may touch these elements while the slice lives.
    #[inline(always)]
    pub(crate) unsafe fn token_cols(&self, t: usize, cols: Range<usize>) -> &mut [f32] {
        assert!(cols.start <= cols.end && cols.end <= self.stride && (t + 1) * self.stride <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(t * self.stride + cols.start), cols.len())
    }

    /// Writes `y[t][r]`.
    #[inline(always)]
    pub(crate) fn set(&self, t: usize, r: usize, v: f32) {
        let i = t * self.stride + r;
        assert!(i < self.len);
        // SAFETY: in bounds (checked); disjoint across threads (see the type's note).
        unsafe { *self.ptr.add(i) = v }
    }
}

/// `y[t][r] = Σ_i x[t][i] · W[r][i]` for every token `t` and row `r`, written into `out`
/// (`[tokens, w.rows]`, row-major). `act` must have been prepared for `w`'s family with
/// `w.cols` columns. Split by rows over [`pool`] (at most `threads` threads).
pub fn matmul(w: &WeightRef, act: &Activations, out: &mut [f32], threads: usize) {
    assert_eq!(act.family, Family::of(w.dtype), "activations prepared for another weight type");
    assert_eq!(act.cols, w.cols, "activations have {} columns, the weights {}", act.cols, w.cols);
    assert_eq!(out.len(), act.tokens * w.rows, "output size");
    let o = OutPtr { ptr: out.as_mut_ptr(), len: out.len(), stride: w.rows };
    let isa = isa();
    let split = Split::new(act.tokens, act.cols, w.rows, threads, true);
    pool::run(split.items(), threads, &|i| {
        matmul_rows(isa, w, act, split.range(i), o);
    });
}

/// One product of [`matmul_many`]: `out = x · wᵀ` (`[tokens, w.rows]`), then, when `bias` is
/// given, [`bias_act`]'s `+ bias` and `gelu_new` on it.
pub struct Product<'a> {
    pub w: WeightRef<'a>,
    /// Written in full, never read before it is written: it may start uninitialized (a new
    /// vector's spare capacity), so the engine does not zero megabytes per product first.
    pub out: &'a mut [std::mem::MaybeUninit<f32>],
    /// `[w.rows]`.
    pub bias: Option<&'a [f32]>,
    pub gelu: bool,
}

/// Several products of the same activations at once (weights with the same columns and
/// activation family, e.g. a layer's q, k, v and MLP up projections): one split over the pool
/// for all of them, so the threads start and finish once. Each output as [`matmul`]'s, then
/// biased (and GELU'd) as [`bias_act`] would: each work item finishes its own rows while they
/// are in cache, on whichever thread computed them, instead of a pass over the whole output on
/// the calling thread afterwards (an element-wise step, so the same bits).
pub fn matmul_many(parts: &mut [Product], act: &Activations, threads: usize) {
    let rows = parts.iter().map(|p| p.w.rows).min().unwrap_or(1);
    let chunk = chunk_rows(act.tokens, act.cols, rows, threads);
    // Work items before each part (fixed-size array: no allocation for up to 8 parts).
    let mut starts = [0usize; 9];
    assert!(parts.len() < starts.len(), "matmul_many: at most {} products", starts.len() - 1);
    let mut outs: [Option<(WeightRef, OutPtr, Option<&[f32]>, bool, Split)>; 8] = [None; 8];
    let mut total = 0;
    let last = parts.len().saturating_sub(1);
    for (i, p) in parts.iter_mut().enumerate() {
        let w = &p.w;
        assert_eq!(act.family, Family::of(w.dtype), "activations prepared for another weight type");
        assert_eq!(act.cols, w.cols, "activations have {} columns, the weights {}", act.cols, w.cols);
        assert_eq!(p.out.len(), act.tokens * w.rows, "output size");
        if let Some(b) = p.bias {
            assert_eq!(b.len(), w.rows, "bias size");
        }
        // The pool takes items in order: only the last part's end is the product's.
        let split = Split::with_chunk(w.rows, chunk, threads, i == last);
        starts[i] = total;
        total += split.items();
        // (Every element is written by `matmul_rows` before `bias_act_row` reads it.)
        outs[i] = Some((*w, OutPtr { ptr: p.out.as_mut_ptr().cast::<f32>(), len: p.out.len(), stride: w.rows }, p.bias, p.gelu, split));
    }
    let n = parts.len();
    starts[n] = total;
    let isa = isa();
    pool::run(total, threads, &|i| {
        let p = starts[..=n].partition_point(|&s| s <= i) - 1;
        let (w, o, bias, gelu, split) = outs[p].expect("set above");
        let rows = split.range(i - starts[p]);
        matmul_rows(isa, &w, act, rows.clone(), o);
        if let Some(bias) = bias {
            for t in 0..act.tokens {
                // Two tokens ahead: a token's rows sit a full output width after the last
                // token's, often in the same L1 sets (for Phi-2's widths), so they come back from
                // L2; waiting on those loads was ~40% of this pass's samples.
                if t + 2 < act.tokens {
                    prefetch(o.ptr.wrapping_add((t + 2) * o.stride + rows.start), rows.len());
                }
                // SAFETY: these rows of every token are this item's alone.
                let y = unsafe { o.token_cols(t, rows.clone()) };
                bias_act_row(isa, y, &bias[rows.clone()], gelu);
            }
        }
    });
}

/// Asks for the cache lines of `len` values from `p` ahead of their use (x86-64; nothing
/// elsewhere). A prefetch never faults, whatever the address.
#[inline(always)]
fn prefetch<T>(p: *const T, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for i in (0..len * size_of::<T>()).step_by(64) {
        // SAFETY: see above; SSE is part of x86-64.
        #[allow(unused_unsafe)]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((p as *const i8).wrapping_add(i))
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// The rows `rows` of [`matmul`] on the calling thread, with the given kernel set.
pub(crate) fn matmul_rows(isa: Isa, w: &WeightRef, act: &Activations, rows: Range<usize>, out: OutPtr) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::matmul_rows(w, act, rows, out, x86::Dot::Avx2),
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni => x86::matmul_rows(w, act, rows, out, x86::Dot::AvxVnni),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if vnni512::takes(w, act) => vnni512::matmul_rows(w, act, rows, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if avx512::takes(w, act) => avx512::matmul_rows(w, act, rows, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if vnni512::takes_k(w, act) => vnni512::matmul_rows_k(w, act, rows, out),
        #[cfg(target_arch = "x86_64")]
        // One-token Q4_0 takes the 512-bit row kernel here too, measured on an AMD EPYC (Zen 4)
        // against the 256-bit one (`kernel_bench --types q4_0 --tokens 1`, ms, alternating):
        // 2560x2560 one thread, weights in cache, 0.23-0.26 -> 0.16; 10240x2560 two threads
        // 0.37-0.41 -> 0.31; `stream_bench` Phi-2-shaped Q4_0 46.8-48.9 -> 46.0-47.4 ms (bound
        // by the memory there).
        Isa::Avx512Vnni if vnni512::takes_one(w, act) => vnni512::matmul_rows_one(w, act, rows, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => x86::matmul_rows(w, act, rows, out, x86::Dot::Evex),
        #[cfg(target_arch = "x86_64")]
        Isa::Amx if amx::takes(w, act) && amx::wins(w.dtype, act.tokens) => amx::matmul_rows(w, act, rows, out),
        // Shorter batches: the AVX512-VNNI kernels where they were measured faster (Q4_0 / Q8_0
        // from 2 tokens, with as many token pairs per tile as the batch fills: 10240×2560,
        // 2 threads, ms against the AVX-VNNI row kernel, Q4_0 / Q8_0 at 2 tokens 0.50 / 0.68
        // vs 0.57 / 0.84, at 3 0.64 / 0.90 vs 1.03 / 1.48, at 7 1.09 / 1.35 vs 1.55 / 2.0; the
        // one-token Q6_K row kernel: 38 against 32 GB/s, while Q4_K / Q5_K stream faster from
        // the AVX-VNNI tiles here, 28 against 24 GB/s; one-token Q4_0 takes the 512-bit row
        // kernel, 8% less compute than the 256-bit one, `stream_bench` 2 threads 23.5-24.1 ->
        // 24.2-25.1 GB/s).
        #[cfg(target_arch = "x86_64")]
        Isa::Amx if vnni512::takes(w, act) && act.tokens >= 2 => vnni512::matmul_rows(w, act, rows, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Amx if avx512::takes(w, act) => avx512::matmul_rows(w, act, rows, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Amx if vnni512::takes_k(w, act) => vnni512::matmul_rows_k(w, act, rows, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Amx if vnni512::takes_one(w, act) && matches!(w.dtype, DType::Q6K | DType::Q4_0) => vnni512::matmul_rows_one(w, act, rows, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Amx => x86::matmul_rows(w, act, rows, out, x86::Dot::AvxVnni),
        #[cfg(target_arch = "wasm32")]
        Isa::Simd128 => wasm::matmul_rows(w, act, rows, out),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => neon::matmul_rows(w, act, rows, out, false),
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDot => neon::matmul_rows(w, act, rows, out, true),
        _ => scalar::matmul_rows(w, act, rows, out),
    }
}

/// [`matmul`] on one thread with a chosen kernel set (parity tests). `None` when this CPU cannot
/// run `isa`.
pub fn matmul_with(isa: Isa, w: &WeightRef, act: &Activations, out: &mut [f32]) -> Option<()> {
    if !runnable().contains(&isa) {
        return None;
    }
    assert_eq!(act.family, Family::of(w.dtype), "activations prepared for another weight type");
    assert_eq!(act.cols, w.cols, "activations have {} columns, the weights {}", act.cols, w.cols);
    assert_eq!(out.len(), act.tokens * w.rows, "output size");
    let o = OutPtr { ptr: out.as_mut_ptr(), len: out.len(), stride: w.rows };
    matmul_rows(isa, w, act, 0..w.rows, o);
    Some(())
}

/// A wasm kernel setting whose faster value depends on the CPU under the JS engine, which wasm
/// cannot see: timed at load on the model's own weights ([`calibrate_touch_ahead`],
/// [`calibrate_dot16`]). Neither changes any result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knob {
    /// The one-token kernels touch the weight stream ahead of use (`wasm::TOUCH_AHEAD`). Default on.
    TouchAhead,
    /// The relaxed-SIMD build's Q4_0 products add the 8-bit products' pairs in i16
    /// (`i16x8.relaxed_dot_i8x16_i7x16_s`) before widening them, instead of
    /// `i32x4.relaxed_dot_i8x16_i7x16_add` (`wasm::DOT16`). Default off.
    Dot16,
}

impl Knob {
    /// The setting a load starts from (and keeps unless the other is clearly faster).
    pub fn default_on(self) -> bool {
        self == Knob::TouchAhead
    }
}

/// What a calibration measured: its fastest pass with `knob` on and with it off, and which it kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    pub knob: Knob,
    pub on: bool,
    pub ms_on: f64,
    pub ms_off: f64,
}

/// Which setting a calibration keeps: the one that is not the default only when its fastest pass
/// took at most 90% of the default's, so that the default stays unless clearly beaten.
pub fn keep_on(knob: Knob, ms_on: f64, ms_off: f64) -> bool {
    if knob.default_on() {
        !(ms_off <= 0.9 * ms_on)
    } else {
        ms_on <= 0.9 * ms_off
    }
}

/// The order of a calibration's timed passes (on, off, off, on, ...): any drift over the passes
/// weighs on both settings alike; the fastest of each setting's six counts (work from elsewhere
/// on the machine only ever slows a pass down).
#[cfg(target_arch = "wasm32")]
const PASSES: [bool; 12] = [true, false, false, true, true, false, false, true, true, false, false, true];

/// Times `pass` with `knob` on and off ([`PASSES`], after two untimed passes with each: the JS
/// engine compiles a kernel when it first runs, and optimises it in the background after a while),
/// keeps the faster ([`keep_on`]) for every later product and says what it measured.
#[cfg(target_arch = "wasm32")]
fn time_knob(knob: Knob, pass: &mut dyn FnMut(), now_ms: &dyn Fn() -> f64) -> Calibration {
    for on in [!knob.default_on(), knob.default_on(), !knob.default_on(), knob.default_on()] {
        wasm::set_knob(knob, on);
        pass();
    }
    let mut ms = [f64::INFINITY; 2];
    for on in PASSES {
        wasm::set_knob(knob, on);
        let t0 = now_ms();
        pass();
        ms[on as usize] = ms[on as usize].min(now_ms() - t0);
    }
    let on = keep_on(knob, ms[1], ms[0]);
    wasm::set_knob(knob, on);
    Calibration { knob, on, ms_on: ms[1], ms_off: ms[0] }
}

/// `x` of `tokens` rows of `cols` (a fixed pattern) prepared for `w`'s family.
#[cfg(target_arch = "wasm32")]
fn calibration_activations(w: &WeightRef, tokens: usize) -> Activations {
    let x: Vec<f32> = (0..tokens * w.cols).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 250.0).collect();
    let mut a = Activations::default();
    a.prepare(Family::of(w.dtype).expect("kernel-ready weights"), &x, tokens, w.cols);
    a
}

/// [`Knob::TouchAhead`] timed on one-token products over `mats` (a model's largest matrices, in
/// their order). Each pass reads at least `pass_bytes` of weights, going on through `mats` (round
/// and round), so that it reads from memory as a decode step does when `mats` is much larger
/// than the caches. `None` (and nothing changed) when `mats` holds less than twice `pass_bytes`.
/// Products as decode runs them: one token, split over [`pool`]'s threads.
#[cfg(target_arch = "wasm32")]
pub fn calibrate_touch_ahead(mats: &[WeightRef], pass_bytes: usize, now_ms: &dyn Fn() -> f64) -> Option<Calibration> {
    let total: usize = mats.iter().map(|w| w.data.len()).sum();
    if mats.is_empty() || pass_bytes == 0 || total < 2 * pass_bytes {
        return None;
    }
    let threads = pool::threads();
    let mut acts: Vec<(Option<Family>, usize, Activations)> = Vec::new();
    let mut out = Vec::new();
    let mut next = 0;
    let mut pass = || {
        let mut bytes = 0;
        while bytes < pass_bytes {
            let w = &mats[next % mats.len()];
            next += 1;
            let family = Family::of(w.dtype);
            let i = match acts.iter().position(|(f, c, _)| *f == family && *c == w.cols) {
                Some(i) => i,
                None => {
                    acts.push((family, w.cols, calibration_activations(w, 1)));
                    acts.len() - 1
                }
            };
            out.resize(w.rows, 0f32);
            matmul(w, &acts[i].2, &mut out, threads);
            bytes += w.data.len();
        }
    };
    Some(time_knob(Knob::TouchAhead, &mut pass, now_ms))
}

/// [`Knob::Dot16`] timed on one-token products of the first 2560 rows (3.7 MB, in the caches:
/// bound by the arithmetic, as the wasm kernels are on CPUs where they are slow) of the first
/// Q4_0 matrix of `mats` (else of its first K-quant one), 10 per pass, on the calling thread (split over two threads, each
/// product's hand-offs blurred the difference: fastest passes 9.5 against 10.5 ms, where one
/// thread's kernel bench measures 0.48 against 0.78 ms per product). Measured (Chromium 156,
/// AMD Zen 4, Phi-2-shaped Q4_0): 16-token products of a whole 14.7 MB matrix showed the gain less
/// clearly (53.5 / 71.1 ms, then 53.8 / 59.6: under the 10% bar) than whole prompts and decode
/// did (`bench/browser-decode.mjs`, builds with the form fixed, alternating: 16-token prompt
/// 1763–2033 → 1439–1500 ms, decode 5.73–6.22 → 6.85–7.01 tok/s). `None` (nothing changed)
/// outside the relaxed-SIMD build, without a Q4_0 or K-quant matrix (the K-quants' products take
/// the same switch; a model without Q4_0 is timed on its first K-quant one), or when those rows
/// are under 1 MB (small models: passes too short to time, and their speed matters little).
#[cfg(target_arch = "wasm32")]
pub fn calibrate_dot16(mats: &[WeightRef], now_ms: &dyn Fn() -> f64) -> Option<Calibration> {
    if !cfg!(target_feature = "relaxed-simd") {
        return None;
    }
    // Q4_0 where the model has it, else a K-quant matrix (the switch covers both).
    let w = mats.iter().find(|w| w.dtype == DType::Q4_0).or_else(|| mats.iter().find(|w| matches!(w.dtype, DType::Q4K | DType::Q5K | DType::Q6K)))?;
    let rows = w.rows.min(2560);
    let w = WeightRef { rows, data: &w.data[..rows * w.row_bytes()], ..*w };
    if w.data.len() < 1 << 20 {
        return None;
    }
    let a = calibration_activations(&w, 1);
    let mut out = vec![0f32; rows];
    let mut pass = || {
        for _ in 0..10 {
            matmul(&w, &a, &mut out, 1);
        }
    };
    Some(time_knob(Knob::Dot16, &mut pass, now_ms))
}

/// `y[t][r] += bias[r]`, then `y = gelu_new(y)` when `gelu` ([`gelu_new`]: the same bits on
/// every ISA), split over the pool by tokens.
pub fn bias_act(y: &mut [f32], bias: &[f32], gelu: bool, threads: usize) {
    let n = bias.len();
    assert!(n > 0 && y.len().is_multiple_of(n), "bias_act: {} values for rows of {n}", y.len());
    let tokens = y.len() / n;
    let o = OutPtr { ptr: y.as_mut_ptr(), len: y.len(), stride: n };
    // Small outputs (decode's projections) are not worth waking a thread for.
    let threads = if y.len() < 16384 { 1 } else { threads };
    let isa = isa();
    pool::run(tokens, threads, &|t| {
        // SAFETY: token t's row is this item's alone (disjoint tokens).
        bias_act_row(isa, unsafe { o.token_row(t) }, bias, gelu);
    });
}

/// One row of [`bias_act`] with the given kernel set.
pub(crate) fn bias_act_row(isa: Isa, y: &mut [f32], bias: &[f32], gelu: bool) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Amx | Isa::Avx512Vnni => {
            // SAFETY: these kernel sets include AVX-512F (checked when they were chosen).
            unsafe { avx512::bias_act_row(y, bias, gelu) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::AvxVnni => {
            // SAFETY: every x86 kernel set includes AVX2 (checked when it was chosen).
            unsafe { x86::bias_act_row(y, bias, gelu) }
        }
        _ => {
            for (v, &b) in y.iter_mut().zip(bias) {
                let s = *v + b;
                *v = if gelu { gelu_new(s) } else { s };
            }
        }
    }
}

/// `gelu_new(x) = 0.5·x·(1 + tanh(√(2/π)·x·(1 + 0.044715·x²)))` (HF's tanh approximation of
/// GELU, Phi-2's activation), evaluated as written, left to right, each operation rounded to
/// f32, with [`tanh`] below: a fixed sequence of IEEE operations, so every ISA (and the wasm
/// build) computes the same bits, unlike a libm `tanhf`, which differs between C libraries.
#[inline(always)]
pub fn gelu_new(v: f32) -> f32 {
    (0.5 * v) * (1.0 + tanh((gelu_c::SQRT_2_OVER_PI * v) * (1.0 + (gelu_c::COEF * v) * v)))
}

/// tanh(x) for f32: the odd rational minimax approximation `x·P(x²) / Q(x²)` (degrees 13 / 6)
/// that Eigen, XLA and ONNX Runtime's MLAS use, with x clamped to ±7.905311 (where f32 tanh is
/// ±1). Horner steps are a multiply then an add (no fused multiply-add), then one division.
/// A few ulp from the exact tanh.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    use gelu_c::*;
    let x = x.max(-CLAMP).min(CLAMP);
    let x2 = x * x;
    let mut p = A[0];
    for &a in &A[1..] {
        p = p * x2 + a;
    }
    let p = p * x;
    let mut q = B[0];
    for &b in &B[1..] {
        q = q * x2 + b;
    }
    p / q
}

/// The constants of [`gelu_new`] and [`tanh`] (the SIMD twins use the same).
#[allow(clippy::excessive_precision)]
pub(crate) mod gelu_c {
    pub const SQRT_2_OVER_PI: f32 = 0.79788456080286535587989211986876373;
    pub const COEF: f32 = 0.044715;
    pub const CLAMP: f32 = 7.90531110763549805;
    /// Numerator, highest power first: α13, α11, …, α1.
    pub const A: [f32; 7] = [
        -2.76076847742355e-16,
        2.00018790482477e-13,
        -8.60467152213735e-11,
        5.12229709037114e-08,
        1.48572235717979e-05,
        6.37261928875436e-04,
        4.89352455891786e-03,
    ];
    /// Denominator, highest power first: β6, β4, β2, β0.
    pub const B: [f32; 4] = [1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03];
}

#[cfg(test)]
mod tests {
    #[test]
    fn activations_of_f16_weights_are_rounded_as_half_rounds_them() {
        // Every f32 class: ties to even at f16's precision, f16 subnormals and underflow, the
        // overflow to infinity, infinities, NaNs (quiet and signalling, with payloads), and a
        // sweep of bit patterns; 8-wide and tail paths (lengths not a multiple of 8).
        let mut x: Vec<f32> = vec![
            0.0, -0.0, 1.0, 1.0 + f32::EPSILON, 1.000_488_3, 1.000_976_6, 1.001_464_8, 65504.0, 65519.0, 65520.0, 1e10, -1e10,
            6.0e-8, 5.9e-8, 2.9e-8, 3.0e-8, 1.0e-8, -6.1e-5, 6.1e-5, f32::MIN_POSITIVE, 1e-40, f32::INFINITY, f32::NEG_INFINITY,
            f32::NAN, -f32::NAN, f32::from_bits(0x7F80_0001), f32::from_bits(0xFFC1_2345), f32::from_bits(0x7FBF_FFFF),
        ];
        x.extend((0..40_000u32).map(|i| f32::from_bits(i.wrapping_mul(0x9E37_79B9))));
        let want: Vec<u32> = x.iter().map(|&v| half::f16::from_f32(v).to_f32().to_bits()).collect();
        // (tokens, columns): one row, and rows split over the pool (5 · 8003 values).
        for (tokens, cols) in [(1, x.len()), (1, x.len() - 3), (1, 7), (1, 0), (5, 8003)] {
            let n = tokens * cols;
            let mut a = super::Activations::default();
            a.prepare_for(super::isa(), super::Family::F16, &x[..n], tokens, cols);
            let got: Vec<u32> = a.f.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want[..n], "{tokens} x {cols} values");
        }
    }

    #[test]
    fn work_items_of_phi2_products_on_two_threads_keep_their_measured_sizes() {
        use super::chunk_rows;
        // (columns, rows) of Phi-2's products: q/k/v, out, fc1, fc2, the output head.
        for (cols, rows, want) in [(2560, 7680, 640), (2560, 2560, 640), (2560, 10240, 640), (10240, 2560, 160), (2560, 51200, 640)] {
            assert_eq!(chunk_rows(1, cols, rows, 2), want, "{rows}x{cols}");
            assert_eq!(chunk_rows(1, cols, rows, 1), want, "{rows}x{cols}, one thread");
        }
        assert_eq!(chunk_rows(1, 2560, 2560, 16), 96);
        assert_eq!(chunk_rows(1, 2560, 7, 64), 32);
        assert_eq!(chunk_rows(128, 2560, 2560, 16), 128);
    }

    #[test]
    fn work_items_cover_every_row_once_with_a_finer_tail() {
        use super::Split;
        for (tokens, cols, rows, threads) in [(1, 2560, 7680, 2), (1, 10240, 2560, 2), (128, 2560, 10240, 2), (1, 2560, 7, 2), (1, 2560, 1000, 3), (5, 64, 33, 4), (1, 2560, 2560, 1)] {
            for fine_tail in [false, true] {
                let s = Split::new(tokens, cols, rows, threads, fine_tail);
                let mut next = 0;
                for i in 0..s.items() {
                    let r = s.range(i);
                    assert_eq!(r.start, next, "{s:?}: item {i}");
                    assert!(r.end > r.start && r.len() <= s.chunk, "{s:?}: item {i} {r:?}");
                    next = r.end;
                }
                assert_eq!(next, rows, "{s:?}");
            }
        }
        // Phi-2's q/k/v on two threads: 10 items of 640 rows, then the last 1280 rows as 8 of 160.
        let s = Split::new(1, 2560, 7680, 2, true);
        assert_eq!((s.items(), s.range(9), s.range(10), s.range(17)), (18, 5760..6400, 6400..6560, 7520..7680));
        // Fine items start on a multiple of 16 rows.
        let s = Split::new(128, 2560, 300, 2, true);
        assert_eq!((s.range(0), s.range(1), s.range(2)), (0..32, 32..64, 64..96));
        let s = Split::new(128, 2560, 1000, 2, true);
        assert!((0..s.items()).all(|i| s.range(i).start % 16 == 0), "{s:?}");
    }
}

/// f16 bits at `b[i..i + 2]` as f32.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K / Q5_K super-block.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The f32 lane reduction of the float kernels: `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`.
#[inline(always)]
pub(crate) fn reduce8(l: &[f32; 8]) -> f32 {
    let h = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    (h[0] + h[2]) + (h[1] + h[3])
}
