//! wasm32 SIMD128 kernels, following the scalar definition exactly: exact i32 block dots (four
//! blocks reduced at once by one tree), f32 scaling, block b accumulated in lane b % 8 (Q4_0,
//! Q8_0); for K-quants (Q4_K, Q5_K, Q6_K) exact i32 super-block sums, then the scalar twin's f32
//! operations in its order (see the K-quant section below). Weight types without a SIMD tile here
//! run the scalar twin (compiled with simd128, which LLVM vectorises where it can).
//!
//! The relaxed-SIMD build (`target_feature = "relaxed-simd"`, scripts/build-wasm.sh --only
//! relaxed) takes Q4_0, Q4_K, Q5_K and Q6_K's products with `i32x4.relaxed_dot_i8x16_i7x16_add`
//! on the bytes as they are (their values, 0..63, are valid i7 operands, so the result is exact on
//! every implementation): the same bits, 16 products per instruction instead of 8. Measured in
//! Chromium 156 (2560×2560, one token): Q4_0 0.71 -> 0.53 ms, Q4_K 0.78 -> 0.57, Q5_K 0.87 ->
//! 0.68, Q6_K 0.98 -> 0.73. (Node 20's V8, behind --experimental-wasm-relaxed-simd, computes this instruction
//! wrongly: it ignores the accumulator and doubles the dot product; Chromium is right.)
//! It takes them for one token too (decode): `bench/wasm-kernels.mjs --flavour relaxed` (Chromium,
//! one thread, 10240×2560) Q4_0 2.27 -> 1.64 ms, Q4_K 2.50 -> 1.96, Q5_K 2.50 -> 1.86, Q6_K 3.02
//! -> 2.26. (An earlier measurement of a whole decode step had found them slower; that step was
//! bound by the weight stream, which the touches below now keep ahead.)
//!
//! The one-token kernels touch the weight stream [`TOUCH_BYTES`] ahead, as the native ones
//! prefetch it: the biggest single factor in wasm decode on the Xeon where it was measured (see
//! there), and a loss on an AMD Zen 4; a model's load times both and keeps the faster
//! ([`TOUCH_AHEAD`]).
//!
//! What makes them fast in V8 (measured on Q4_0 decode, ~5x over a straightforward version):
//! the activations come pre-widened to i16 (`Activations::q16`), so a block costs four
//! `i32x4.dot_i16x8_s` and no per-token widening; the block scales are widened from f16 four at
//! a time with integer SIMD (no branchy per-block software conversion); no bounds checks and no
//! arrays in linear memory in the inner loop; and with several tokens each block's widened
//! weights serve two tokens. Since then: each Q4_0/Q8_0 tile is a wasm function of its own (V8
//! allocates its registers alone), the scales skip the infinity/NaN steps where the matrix has
//! none ([`f16x4_to_f32`]), and the whole pass runs on a pool thread ([`crate::model`]). Together
//! with the touches and relaxed dot products for one token, Chromium's Phi-2-shaped Q4_0 decode
//! went from 4.3 to 8.0 tok/s (2 threads, `phi2-bench --backend wasm`, bench/RESULTS.md).

use std::arch::wasm32::*;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use super::attention::KvElem;
use super::{reduce8, scalar, Activations, Knob, OutPtr, WeightRef};
use crate::dtype::DType;

pub(super) fn matmul_rows(w: &WeightRef, act: &Activations, rows: Range<usize>, out: OutPtr) {
    match w.dtype {
        DType::Q4_0 | DType::Q8_0 => {}
        DType::Q4K | DType::Q5K | DType::Q6K => return kquant_rows(w, act, rows, out),
        DType::F16 | DType::BF16 => return float_rows(w, act, rows, out),
        _ => return scalar::matmul_rows(w, act, rows, out),
    }
    assert!(act.q16.len() >= act.tokens * act.cols, "activations were not widened for SIMD128");
    // Only the relaxed-SIMD build has the i16 form (SIMD128's dots are i16 already).
    let d16 = cfg!(target_feature = "relaxed-simd") && DOT16.load(Ordering::Relaxed);
    for r in rows {
        let row = w.row(r);
        assert!(row.len() >= act.cols / 32 * if w.dtype == DType::Q8_0 { 34 } else { 18 });
        let touch = touch_base(w.data, row);
        let mut t0 = 0;
        while t0 < act.tokens {
            let c = if act.tokens - t0 >= 2 { 2 } else { 1 };
            // SAFETY: the row holds cols / 32 blocks and the activations tokens × cols values
            // (asserted above); every access below stays inside them.
            unsafe {
                match (w.dtype, c, w.finite_scales, d16) {
                    (DType::Q4_0, 2, true, false) => tile::<false, 2, true, false>(row, touch, act, t0, r, out),
                    (DType::Q4_0, 2, false, false) => tile::<false, 2, false, false>(row, touch, act, t0, r, out),
                    (DType::Q4_0, _, true, false) => tile::<false, 1, true, false>(row, touch, act, t0, r, out),
                    (DType::Q4_0, _, false, false) => tile::<false, 1, false, false>(row, touch, act, t0, r, out),
                    (DType::Q4_0, 2, true, true) => tile::<false, 2, true, true>(row, touch, act, t0, r, out),
                    (DType::Q4_0, 2, false, true) => tile::<false, 2, false, true>(row, touch, act, t0, r, out),
                    (DType::Q4_0, _, true, true) => tile::<false, 1, true, true>(row, touch, act, t0, r, out),
                    (DType::Q4_0, _, false, true) => tile::<false, 1, false, true>(row, touch, act, t0, r, out),
                    (_, 2, true, _) => tile::<true, 2, true, false>(row, touch, act, t0, r, out),
                    (_, 2, false, _) => tile::<true, 2, false, false>(row, touch, act, t0, r, out),
                    (_, _, true, _) => tile::<true, 1, true, false>(row, touch, act, t0, r, out),
                    (_, _, false, _) => tile::<true, 1, false, false>(row, touch, act, t0, r, out),
                }
            }
            t0 += c;
        }
    }
}

/// How far ahead of the weights being computed the one-token kernels touch the weight stream.
/// wasm has no prefetch instruction and its memory lies on 4 KB pages, where the hardware
/// prefetchers stop at every page; a load nobody waits for brings the line (and the page's
/// translation) in while the work before it goes on. Measured (Chromium 156, pkg-relaxed, 2
/// threads, Phi-2-shaped Q4_0 decode after a 16-token prompt, alternating builds, touches as
/// fast as the weights): no touches 4.2–4.5 tok/s; 1.5 KB ahead 5.9–6.1, 3 KB 6.0–6.2, 6 KB
/// 6.1–6.4, 12 KB 6.5–6.6, 32 KB 6.6, 64 KB no better. All of a row's touches in one burst
/// before it: slower (6.3 vs 6.7).
const TOUCH_BYTES: usize = 16384;

/// How much faster than the weights the touches run ahead (Q4_0, Q4_K, Q5_K; Q8_0 and Q6_K,
/// with more bytes per value, touch as fast as they go): a touch that misses holds up the
/// loads behind it, so misses that come in runs overlap better than misses spread thin (the
/// lines touched a second time hit). Measured (`bench/wasm-kernels.mjs --flavour relaxed
/// --tokens 1 --shape 102400x2560`, 147 MB of Q4_0 from memory, one thread): Q4_0 28.6 ms as
/// fast, 23.7 twice, 22.4 three times, 22.2 four times; Q4_K 25.1 → 22.5 and Q5_K 30.2 → 28.5
/// three times; Q8_0 38.6 → 40.7 and Q6_K 34.9 → 45.1 (slower). Whole decode (as above):
/// 6.6–6.7 → 6.9 tok/s. In Node 20's V8 (pkg-mt) too: Q4_0 34.8 → 30.4 ms.
const TOUCH_SPEED: usize = 3;

/// Where the one-token kernels of a row at `row` touch ahead (see [`TOUCH_BYTES`]): that far
/// past the row, when everything they touch ([`TOUCH_SPEED`] times the row's bytes) stays inside
/// the matrix `data`; None otherwise (the last rows of a matrix, small matrices).
/// Off when [`set_knob`] turned the touches off.
#[inline(always)]
fn touch_base(data: &[u8], row: &[u8]) -> Option<*const u8> {
    if !TOUCH_AHEAD.load(Ordering::Relaxed) {
        return None;
    }
    let room = data.as_ptr_range().end as usize - row.as_ptr() as usize;
    (room > TOUCH_BYTES + TOUCH_SPEED * row.len()).then(|| row.as_ptr().wrapping_add(TOUCH_BYTES))
}

/// Whether the one-token kernels touch the weight stream ahead ([`TOUCH_BYTES`]); on unless
/// [`set_knob`] said otherwise. What pays depends on the CPU under the JS engine, which wasm
/// cannot see, so [`super::calibrate_touch_ahead`] times both on the model's own weights at load.
/// Measured (`bench/browser-decode.mjs`, Chromium 156, 2 threads, Phi-2-shaped Q4_0, 32 tokens,
/// alternating builds): on the Xeon (AMX) of the TOUCH_BYTES notes, touches 6.6 tok/s against
/// 4.2–4.5 without; on an AMD EPYC (Zen 4), touches 4.5–5.4 against 6.3–7.3 without (there the
/// loads that wait on memory hold up the work behind them, and its prefetchers cross pages).
static TOUCH_AHEAD: AtomicBool = AtomicBool::new(true);

/// Whether the relaxed-SIMD build's Q4_0 products add the pairs of 8-bit products in i16
/// (`i16x8.relaxed_dot_i8x16_i7x16_s`, then `i32x4.extadd_pairwise_i16x8_s` per block) instead of
/// `i32x4.relaxed_dot_i8x16_i7x16_add`; off unless [`set_knob`] said otherwise. V8 compiles the
/// latter to one `vpdpbusd` where the CPU has AVX-VNNI and to three instructions where it has
/// not, the former to two `pmaddubsw`, a `paddw` and a `pmaddwd` per block either way; arm64's
/// `sdot` favours the latter. So [`super::calibrate_dot16`] times both at load. Measured
/// (`bench/wasm-kernels.mjs --flavour relaxed --touch off`, Chromium 156, one thread,
/// 10240×2560, AMD Zen 4, alternating builds): one token 2.55 / 2.20 → 2.01 / 1.87 ms; 16 tokens
/// 28.4 / 26.7 → 28.5 / 21.4 ms. Exact either way: nibbles (0..15) are valid i7 operands, and a
/// block's i16 lanes (four products, ≤ 4·15·128 = 7680) neither overflow nor saturate. The
/// K-quants take the same switch ([`tile_k`], [`q6k_chunk`]): their pairs of products in i16,
/// then times the sub-block scale by `i32x4.dot_i16x8_s`. Without AVX-VNNI that is, per 16
/// weights of Q6_K, one `pmaddubsw` and one `pmaddwd` against the i32 form's three instructions
/// and a `pmulld` (Q4_K / Q5_K per 32: two `pmaddubsw`, a `paddw`, a `pmaddwd` against six and a
/// `pmulld`). Measured (as above, one token, off → on): Q4_K 2.27–2.29 → 1.78–1.96 ms, Q5_K
/// 2.52–3.07 → 2.20–2.38, Q6_K 3.12–3.21 → 2.60–2.78. Where a model has Q4_0, the load times
/// the switch on Q4_0 only and the K-quants follow that choice.
static DOT16: AtomicBool = AtomicBool::new(false);

/// Sets a [`super::Knob`] for every thread; returns its previous setting. The products'
/// results depend on neither.
pub(super) fn set_knob(knob: super::Knob, on: bool) -> bool {
    flag(knob).swap(on, Ordering::Relaxed)
}

/// Where a [`super::Knob`]'s setting lives.
fn flag(knob: super::Knob) -> &'static AtomicBool {
    match knob {
        super::Knob::TouchAhead => &TOUCH_AHEAD,
        super::Knob::Dot16 => &DOT16,
    }
}

/// Loads a byte of each of the `N` 64-byte lines from `p` and drops them. (Volatile, so they
/// are kept.)
#[inline(always)]
unsafe fn touch<const N: usize>(p: *const u8) {
    for i in 0..N {
        let _ = std::ptr::read_volatile(p.add(64 * i));
    }
}

/// `v`, also stored (volatile) to a stack slot nobody reads: an anchor for V8's scheduler. TurboFan
/// (Node 20) hoists a loop body's loads above the work between them, so a tile's two quads had all
/// their weights and activations live at once, in 16 xmm registers: spills on every iteration.
/// A store is ordered with the loads, so a quad's result stored before the next quad's loads
/// keeps one quad live at a time. Measured (`bench/wasm-kernels.mjs --flavour mt`, Node 20, one
/// thread, builds without wasm-opt, AMD Zen 4): Q4_0 × 16 tokens, 10240×2560, 55 → 37 ms; one
/// token, 2560×2560 (in cache), 1.35 → 0.86 ms. Chromium 156 (Turboshaft): no change measured.
#[inline(always)]
fn anchor(v: v128) -> v128 {
    let mut slot = std::mem::MaybeUninit::<v128>::uninit();
    // SAFETY: a store to a local slot.
    unsafe { std::ptr::write_volatile(slot.as_mut_ptr(), v) };
    v
}

/// The 8 f32 lanes of the definition from their two halves.
#[inline(always)]
fn lanes8(lo: v128, hi: v128) -> [f32; 8] {
    [
        f32x4_extract_lane::<0>(lo),
        f32x4_extract_lane::<1>(lo),
        f32x4_extract_lane::<2>(lo),
        f32x4_extract_lane::<3>(lo),
        f32x4_extract_lane::<0>(hi),
        f32x4_extract_lane::<1>(hi),
        f32x4_extract_lane::<2>(hi),
        f32x4_extract_lane::<3>(hi),
    ]
}

/// Four i32x4 vectors → one i32x4 of their lane sums (exact).
#[inline(always)]
fn tree4(v: &[v128; 4]) -> v128 {
    let s01 = i32x4_add(i32x4_shuffle::<0, 4, 1, 5>(v[0], v[1]), i32x4_shuffle::<2, 6, 3, 7>(v[0], v[1]));
    let s23 = i32x4_add(i32x4_shuffle::<0, 4, 1, 5>(v[2], v[3]), i32x4_shuffle::<2, 6, 3, 7>(v[2], v[3]));
    i32x4_add(i32x4_shuffle::<0, 1, 4, 5>(s01, s23), i32x4_shuffle::<2, 3, 6, 7>(s01, s23))
}

/// The 32 weights of the block whose quants start at `q`, widened to i16 in the order of the
/// block's activations (Q4_0: the low nibbles of bytes 0..16 are values 0..16, the high ones
/// 16..32; unsigned 0..15, the −8 is applied to the sum).
#[inline(always)]
unsafe fn weights16<const SIGNED: bool>(q: *const u8) -> [v128; 4] {
    if SIGNED {
        let (w0, w1) = (v128_load(q as *const v128), v128_load(q.add(16) as *const v128));
        [i16x8_extend_low_i8x16(w0), i16x8_extend_high_i8x16(w0), i16x8_extend_low_i8x16(w1), i16x8_extend_high_i8x16(w1)]
    } else {
        let b = v128_load(q as *const v128);
        let (lo, hi) = (u16x8_extend_low_u8x16(b), u16x8_extend_high_u8x16(b));
        let m = u16x8_splat(0x0F);
        [v128_and(lo, m), v128_and(hi, m), u16x8_shr(lo, 4), u16x8_shr(hi, 4)]
    }
}

/// The exact i32 partial sums (4 lanes) of one block: widened weights · the token's 32
/// activations at `x` (i16).
#[inline(always)]
unsafe fn block_dot(w: &[v128; 4], x: *const i16) -> v128 {
    let x = x as *const v128;
    i32x4_add(
        i32x4_add(i32x4_dot_i16x8(w[0], v128_load(x)), i32x4_dot_i16x8(w[1], v128_load(x.add(1)))),
        i32x4_add(i32x4_dot_i16x8(w[2], v128_load(x.add(2))), i32x4_dot_i16x8(w[3], v128_load(x.add(3)))),
    )
}

/// f16 bits (the low 16 bits of each i32 lane) → f32, exactly as `half` converts them: finite
/// values (subnormals too) by moving exponent and mantissa into place and scaling by 2^112,
/// which is exact; infinities and NaNs (quieted) by setting the exponent. With `FINITE` (the
/// values are known finite, e.g. a matrix's block scales: [`WeightRef::finite_scales`]) the
/// infinity and NaN steps are left out. Measured (`bench/wasm-kernels.mjs --flavour relaxed`,
/// Q4_0 block scales, 10240×2560, one token): 1.64 → 1.36 ms.
#[inline(always)]
fn f16x4_to_f32<const FINITE: bool>(h: v128) -> v128 {
    let sign = i32x4_shl(v128_and(h, i32x4_splat(0x8000)), 16);
    let em = v128_and(h, i32x4_splat(0x7FFF));
    let moved = i32x4_shl(em, 13);
    let finite = f32x4_mul(moved, f32x4_splat(f32::from_bits(0x7780_0000))); // 2^112
    if FINITE {
        return v128_or(finite, sign);
    }
    let special = v128_or(
        v128_or(moved, i32x4_splat(0x7F80_0000)),
        v128_and(i32x4_gt(em, i32x4_splat(0x7C00)), i32x4_splat(0x0040_0000)),
    );
    v128_or(v128_bitselect(special, finite, i32x4_ge(em, i32x4_splat(0x7C00))), sign)
}

/// Row `r` × tokens `t0 .. t0 + C`. Written so that LLVM keeps everything in locals (constant
/// indices only; a quad's four blocks spelled out). Each instance is a wasm function of its own,
/// so that V8 allocates its registers alone: inlined into its caller with the other kernels,
/// Node 20 ran the one-token Q4_0 product at 3.98 ms instead of 2.37 (`bench/wasm-kernels.mjs`,
/// one thread, 10240×2560).
#[inline(never)]
unsafe fn tile<const SIGNED: bool, const C: usize, const FINITE: bool, const D16: bool>(row: &[u8], touch: Option<*const u8>, a: &Activations, t0: usize, r: usize, out: OutPtr) {
    let bytes = if SIGNED { 34 } else { 18 };
    let quads = a.cols / 128;
    let base = row.as_ptr();
    // Lanes 0..4 (even quads) and 4..8 (odd quads) of each token.
    let mut lo = [f32x4_splat(0.0); C];
    let mut hi = [f32x4_splat(0.0); C];
    let mut q = 0;
    while q + 2 <= quads {
        if let (1, Some(p)) = (C, touch) {
            // 144 (Q4_0; touched three times as fast) or 272 (Q8_0) bytes of weights per step.
            if SIGNED {
                self::touch::<4>(p.add(4 * q * bytes));
            } else {
                self::touch::<6>(p.add(TOUCH_SPEED * 4 * q * bytes));
            }
        }
        quad::<SIGNED, C, FINITE, D16>(base, a, t0, 4 * q, &mut lo);
        quad::<SIGNED, C, FINITE, D16>(base, a, t0, 4 * q + 4, &mut hi);
        q += 2;
    }
    if q < quads {
        quad::<SIGNED, C, FINITE, D16>(base, a, t0, 4 * q, &mut lo);
    }
    for c in 0..C {
        let t = t0 + c;
        out.set(t, r, scalar::finish_q32::<SIGNED>(lanes8(lo[c], hi[c]), row, a, t, 4 * quads));
    }
}

/// One quad of blocks b0 .. b0 + 4 of the row at `base` onto `acc` (the f32 lanes of those
/// blocks) for tokens t0 .. t0 + C, each token's lanes [`anchor`]ed. A function, not a closure
/// in [`tile`]: rustc 1.96 left that closure out of line in some instances (the one-token Q4_0
/// tile among them), a call per quad with `acc` in linear memory.
#[inline(always)]
unsafe fn quad<const SIGNED: bool, const C: usize, const FINITE: bool, const D16: bool>(base: *const u8, a: &Activations, t0: usize, b0: usize, acc: &mut [v128; C]) {
    #[cfg(target_feature = "relaxed-simd")]
    if !SIGNED {
        return quad_q4_0_relaxed::<C, FINITE, D16>(base, a, t0, b0, acc);
    }
    let bytes = if SIGNED { 34 } else { 18 };
    let nb = a.cols / 32;
    let wa = weights16::<SIGNED>(base.add(b0 * bytes + 2));
    let wb = weights16::<SIGNED>(base.add((b0 + 1) * bytes + 2));
    let wc = weights16::<SIGNED>(base.add((b0 + 2) * bytes + 2));
    let wd = weights16::<SIGNED>(base.add((b0 + 3) * bytes + 2));
    let dw = f16x4_to_f32::<FINITE>(scales4(base, bytes, b0));
    for (c, acc_c) in acc.iter_mut().enumerate() {
        let t = t0 + c;
        let x = a.q16.as_ptr().add(t * a.cols + 32 * b0);
        let mut isum = tree4(&[block_dot(&wa, x), block_dot(&wb, x.add(32)), block_dot(&wc, x.add(64)), block_dot(&wd, x.add(96))]);
        let bi = t * nb + b0;
        if !SIGNED {
            isum = i32x4_sub(isum, i32x4_shl(v128_load(a.s.as_ptr().add(bi) as *const v128), 3));
        }
        let s = f32x4_mul(dw, v128_load(a.d.as_ptr().add(bi) as *const v128));
        *acc_c = anchor(f32x4_add(*acc_c, f32x4_mul(s, f32x4_convert_i32x4(isum))));
    }
}

/// The relaxed-SIMD build's Q4_0 quad (blocks b0 .. b0 + 4 of the row at `base`, tokens t0 ..
/// t0 + C): `i32x4.relaxed_dot_i8x16_i7x16_add` of the 8-bit activations with the unsigned
/// nibbles. Its result is implementation-defined only when the second operand has its top bit
/// set; nibbles (0..15) are valid i7 values, and a pair of products (|15·128|·2) fits i16 with no
/// saturation, so every implementation gives the exact sums, the same bits as SIMD128's i16 dots.
#[cfg(target_feature = "relaxed-simd")]
#[inline(always)]
unsafe fn quad_q4_0_relaxed<const C: usize, const FINITE: bool, const D16: bool>(base: *const u8, a: &Activations, t0: usize, b0: usize, acc: &mut [v128; C]) {
    let nb = a.cols / 32;
    let nib = |b: usize| {
        let v = v128_load(base.add(b * 18 + 2) as *const v128);
        let m = u8x16_splat(0x0F);
        [v128_and(v, m), v128_and(u16x8_shr(v, 4), m)]
    };
    let dot = |w: &[v128; 2], x: *const i8| {
        let x = x as *const v128;
        if D16 {
            // See [`DOT16`].
            let p = i16x8_add(i16x8_relaxed_dot_i8x16_i7x16(v128_load(x), w[0]), i16x8_relaxed_dot_i8x16_i7x16(v128_load(x.add(1)), w[1]));
            i32x4_extadd_pairwise_i16x8(p)
        } else {
            let lo = i32x4_relaxed_dot_i8x16_i7x16_add(v128_load(x), w[0], i32x4_splat(0));
            i32x4_relaxed_dot_i8x16_i7x16_add(v128_load(x.add(1)), w[1], lo)
        }
    };
    let (wa, wb, wc, wd) = (nib(b0), nib(b0 + 1), nib(b0 + 2), nib(b0 + 3));
    let dw = f16x4_to_f32::<FINITE>(scales4(base, 18, b0));
    for (c, acc_c) in acc.iter_mut().enumerate() {
        let t = t0 + c;
        let x = a.q.as_ptr().add(t * a.cols + 32 * b0);
        let isum = tree4(&[dot(&wa, x), dot(&wb, x.add(32)), dot(&wc, x.add(64)), dot(&wd, x.add(96))]);
        let bi = t * nb + b0;
        let isum = i32x4_sub(isum, i32x4_shl(v128_load(a.s.as_ptr().add(bi) as *const v128), 3));
        let s = f32x4_mul(dw, v128_load(a.d.as_ptr().add(bi) as *const v128));
        *acc_c = anchor(f32x4_add(*acc_c, f32x4_mul(s, f32x4_convert_i32x4(isum))));
    }
}

// ---- K-quants (Q4_K, Q5_K, Q6_K) against Q8_K activations ----
//
// Per super-block of 256 and token, the exact i32 `isum` (and Q4_K / Q5_K's `msum`) in SIMD, in
// any order (integer sums are exact), then the scalar twin's f32 operations on them, in the same
// order: `acc += (d·dx)·isum − (dmin·dx)·msum` (Q4_K, Q5_K) or `acc += (d·dx)·isum` (Q6_K).
//
// The 8-bit activations are widened to i16 by the loads themselves (`v128.load8x8_s`, one
// instruction, as fast as loading `Activations::q16` and half the bytes), so `prepare` needs no
// extra layout for them. Weights are unpacked once per row and super-block for the tile's tokens.
//
// i32 ranges (|x| ≤ 128 for Q8_K values, bsums |Σ16 x| ≤ 2048):
// - Q4_K / Q5_K: q ≤ 31, so an `i32x4.dot_i16x8_s` lane is ≤ 2·31·128 = 7936 and a sub-block's
//   lane (four dots, 8 products) ≤ 31744; times its 6-bit scale (≤ 63) ≤ 2.0e6; 8 sub-blocks
//   ≤ 1.6e7 per lane, 6.4e7 in all. `msum`: the 16 sums narrowed to i16 exactly (|s| ≤ 2048),
//   dotted with the 6-bit mins: ≤ 16·63·2048 = 2.1e6. Far inside i32 and i16 where it matters.
// - Q6_K: the weights are widened and multiplied by their sub-block's scale in i16 first:
//   |(q − 32)·sc| ≤ 32·128 = 4096 fits i16; a dot lane ≤ 2·4096·128 = 1.05e6, the block's
//   256 products ≤ 256·4096·128 = 1.3e8 < 2^31.

/// Rows `rows` × all tokens for Q4_K / Q5_K / Q6_K weights.
/// F16 / BF16 rows (the scalar twin's `dot_float`): the weights widened exactly to f32 (BF16 by a
/// shift, F16 by [`f16x4_to_f32`], as `half` converts them), elements 8k..8k+4 in one f32x4 and
/// 8k+4..8k+8 in another (lane i % 8), multiply then add (the product of two 16-bit floats is
/// exact in f32), the columns past the last 8 lane by lane, then [`reduce8`]. Each row's weights
/// are widened once for up to 4 tokens.
fn float_rows(w: &WeightRef, act: &Activations, rows: Range<usize>, out: OutPtr) {
    assert!(act.f.len() >= act.tokens * act.cols && rows.end <= w.rows, "float_rows: activations or rows out of range");
    let bf = w.dtype == DType::BF16;
    for r in rows {
        let row = w.row(r);
        let mut t0 = 0;
        while t0 < act.tokens {
            let c = match act.tokens - t0 {
                n if n >= 4 => 4,
                n if n >= 2 => 2,
                _ => 1,
            };
            // SAFETY: the row holds `cols` 16-bit values and the activations tokens × cols f32
            // (asserted above); every load below stays inside them.
            let y: &[f32] = unsafe {
                match (bf, c) {
                    (true, 4) => &float_tile::<true, 4>(row, act, t0),
                    (true, 2) => &float_tile::<true, 2>(row, act, t0),
                    (true, _) => &float_tile::<true, 1>(row, act, t0),
                    (false, 4) => &float_tile::<false, 4>(row, act, t0),
                    (false, 2) => &float_tile::<false, 2>(row, act, t0),
                    (false, _) => &float_tile::<false, 1>(row, act, t0),
                }
            };
            for (i, &v) in y.iter().enumerate() {
                out.set(t0 + i, r, v);
            }
            t0 += c;
        }
    }
}

/// One F16 / BF16 row × tokens `t0 .. t0 + C` (see [`float_rows`]).
#[inline(always)]
unsafe fn float_tile<const BF: bool, const C: usize>(row: &[u8], a: &Activations, t0: usize) -> [f32; C] {
    let n = a.cols;
    let full = n / 8;
    let mut acc = [[f32x4_splat(0.0); 2]; C];
    let wp = row.as_ptr();
    for k in 0..full {
        let h = v128_load(wp.add(16 * k) as *const v128);
        let (lo, hi) = (u32x4_extend_low_u16x8(h), u32x4_extend_high_u16x8(h));
        let (w0, w1) = if BF { (i32x4_shl(lo, 16), i32x4_shl(hi, 16)) } else { (f16x4_to_f32::<false>(lo), f16x4_to_f32::<false>(hi)) };
        for (c, acc_c) in acc.iter_mut().enumerate() {
            let x = a.f.as_ptr().add((t0 + c) * n + 8 * k);
            acc_c[0] = f32x4_add(acc_c[0], f32x4_mul(w0, v128_load(x as *const v128)));
            acc_c[1] = f32x4_add(acc_c[1], f32x4_mul(w1, v128_load(x.add(4) as *const v128)));
        }
    }
    let mut y = [0f32; C];
    for (c, acc_c) in acc.iter().enumerate() {
        let x = &a.f[(t0 + c) * n..(t0 + c + 1) * n];
        y[c] = scalar::finish_float(lanes8(acc_c[0], acc_c[1]), row, x, 8 * full, BF);
    }
    y
}

fn kquant_rows(w: &WeightRef, act: &Activations, rows: Range<usize>, out: OutPtr) {
    let nb = act.cols / 256;
    assert!(act.q.len() >= act.tokens * act.cols);
    assert!(act.bsums.len() >= act.tokens * nb * 16 && act.d.len() >= act.tokens * nb);
    // As for Q4_0 ([`DOT16`]).
    let d16 = cfg!(target_feature = "relaxed-simd") && DOT16.load(Ordering::Relaxed);
    for r in rows {
        let row = w.row(r);
        assert!(row.len() >= nb * w.dtype.type_size());
        let touch = touch_base(w.data, row);
        let mut t0 = 0;
        while t0 < act.tokens {
            // Two-token tiles pay for Q4_K and Q6_K (measured; -6% and -20% per token), and for
            // Q5_K in the relaxed build (16 tokens, 10240×2560, Chromium: ~30 → 18.8 ms; its
            // Q4_K_M prompt 13.3 → 15.8 tok/s), not in SIMD128's (+17%: its widened weights and
            // accumulators no longer fit V8's registers).
            let c = if act.tokens - t0 >= 2 && (w.dtype != DType::Q5K || cfg!(target_feature = "relaxed-simd")) { 2 } else { 1 };
            // SAFETY: the row holds nb super-blocks, the activations tokens × cols values, their
            // sums and scales (asserted above); every access below stays inside them.
            let acc = unsafe {
                if d16 {
                    ktile::<true>(w.dtype, c, row, touch, act, t0)
                } else {
                    ktile::<false>(w.dtype, c, row, touch, act, t0)
                }
            };
            for (i, &v) in acc.iter().enumerate().take(c) {
                out.set(t0 + i, r, v);
            }
            t0 += c;
        }
    }
}

/// One K-quant tile of `c` (1 or 2) tokens of `dtype` (Q4_K, Q5_K or Q6_K), padded to two.
///
/// # Safety
/// As [`tile_k`] / [`tile_q6k`]: `row` holds the super-blocks and `a` the tokens they read.
#[inline(always)]
unsafe fn ktile<const D16: bool>(dtype: DType, c: usize, row: &[u8], touch: Option<*const u8>, a: &Activations, t0: usize) -> [f32; 2] {
    match (dtype, c) {
        (DType::Q4K, 2) => tile_k::<false, 2, D16>(row, touch, a, t0),
        (DType::Q4K, _) => pad(tile_k::<false, 1, D16>(row, touch, a, t0)),
        (DType::Q5K, 2) => tile_k::<true, 2, D16>(row, touch, a, t0),
        (DType::Q5K, _) => pad(tile_k::<true, 1, D16>(row, touch, a, t0)),
        (_, 2) => tile_q6k::<2, D16>(row, touch, a, t0),
        _ => pad(tile_q6k::<1, D16>(row, touch, a, t0)),
    }
}

#[inline(always)]
fn pad(v: [f32; 1]) -> [f32; 2] {
    [v[0], 0.0]
}

/// The lane sums of `v[0..C]` and `m[0..C]` (exact): lane 2c = Σ v[c], lane 2c + 1 = Σ m[c].
#[inline(always)]
fn sums<const C: usize>(v: &[v128; C], m: &[v128; C]) -> v128 {
    let z = i32x4_splat(0);
    if C == 2 {
        tree4(&[v[0], m[0], v[1], m[1]])
    } else {
        tree4(&[v[0], m[0], z, z])
    }
}

/// The f16 scales (first two bytes) of blocks b0 .. b0 + 4 of `bytes` each from `base`, one per
/// i32 lane (zero-extended): four 16-bit lane loads and one widening, where four scalar loads
/// and an `i32x4` made of them took more instructions in V8's code (a move from a general
/// register per lane). Measured
/// (`bench/wasm-kernels.mjs --touch off`, one thread, 10240×2560, AMD Zen 4, alternating builds):
/// Chromium 156, relaxed, Q4_0 one token 1.47–1.63 → 1.32–1.41 ms, 16 tokens 18.5–19.0 →
/// 17.4–17.9, Q8_0 one token 1.87–1.96 → 1.72–1.77; Node 20, pkg-mt, Q4_0 2.56–2.58 → 2.37–2.38,
/// Q8_0 2.52–2.57 → 2.19–2.22.
#[inline(always)]
unsafe fn scales4(base: *const u8, bytes: usize, b0: usize) -> v128 {
    let p = |k: usize| base.add((b0 + k) * bytes) as *const u16;
    let v = v128_load16_lane::<0>(i32x4_splat(0), p(0));
    let v = v128_load16_lane::<1>(v, p(1));
    let v = v128_load16_lane::<2>(v, p(2));
    let v = v128_load16_lane::<3>(v, p(3));
    u32x4_extend_low_u16x8(v)
}

/// f16 bits at `p` (little-endian) as i32.
#[inline(always)]
unsafe fn h16(p: *const u8) -> i32 {
    u16::from_le_bytes([*p, *p.add(1)]) as i32
}

/// Token `t`'s 8-bit activations from value `i` of its row.
#[inline(always)]
unsafe fn x8(a: &Activations, t: usize, i: usize) -> *const i8 {
    a.q.as_ptr().add(t * a.cols + i)
}

/// 8 activations at `p`, widened to i16 by the load itself (`v128.load8x8_s`, one instruction).
#[inline(always)]
unsafe fn ld8(p: *const i8) -> v128 {
    i16x8_load_extend_i8x8(p)
}

/// The exact i32 partial sums (4 lanes) of widened weights `w` · the 32 activations at `x`.
#[inline(always)]
unsafe fn dot32(w: &[v128; 4], x: *const i8) -> v128 {
    i32x4_add(
        i32x4_add(i32x4_dot_i16x8(w[0], ld8(x)), i32x4_dot_i16x8(w[1], ld8(x.add(8)))),
        i32x4_add(i32x4_dot_i16x8(w[2], ld8(x.add(16))), i32x4_dot_i16x8(w[3], ld8(x.add(24)))),
    )
}

/// Q4_K (`Q5 = false`) / Q5_K: row × tokens `t0 .. t0 + C`; `D16`: the relaxed-SIMD build's
/// dots in i16 ([`DOT16`]).
#[inline(always)]
unsafe fn tile_k<const Q5: bool, const C: usize, const D16: bool>(row: &[u8], touch: Option<*const u8>, a: &Activations, t0: usize) -> [f32; C] {
    const K1: u32 = 0x3F3F_3F3F;
    const K2: u32 = 0x0F0F_0F0F;
    const K3: u32 = 0x0303_0303;
    let bytes = if Q5 { 176 } else { 144 };
    let qs_off = if Q5 { 48 } else { 16 };
    let nb = a.cols / 256;
    let mut acc = [0f32; C];
    for b in 0..nb {
        let blk = row.as_ptr().add(b * bytes);
        if let (1, Some(p)) = (C, touch) {
            // 144 (Q4_K) or 176 (Q5_K) bytes per super-block, touched three times as fast.
            if Q5 {
                self::touch::<8>(p.add(TOUCH_SPEED * b * bytes));
            } else {
                self::touch::<6>(p.add(TOUCH_SPEED * b * bytes));
            }
        }
        // The 8 six-bit scales and mins (`scale_min_k4`, four at a time as ggml unpacks them):
        // scales 0..4 in `sc0`'s bytes, 4..8 in `sc1`'s; mins likewise in `m0`, `m1`.
        let u = |i: usize| (blk.add(4 + 4 * i) as *const u32).read_unaligned();
        let (u0, u1, u2) = (u(0), u(1), u(2));
        let sc0 = u0 & K1;
        let sc1 = (u2 & K2) | (((u0 >> 6) & K3) << 4);
        let m0 = u1 & K1;
        let m1 = ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4);
        let scv = |j: u32| (if j < 4 { sc0 >> (8 * j) } else { sc1 >> (8 * (j - 4)) } & 0xFF) as i32;
        let sc = |j: u32| i32x4_splat(scv(j));
        // Mins widened to i16, each twice: [m0, m0, m1, m1, m2, m2, m3, m3] and m4 .. m7, against
        // the 16 sums of 16 (sub-block j is sums 2j and 2j + 1).
        let mins = u16x8_extend_low_u8x16(u32x4(m0, m1, 0, 0));
        let mins_a = i16x8_shuffle::<0, 0, 1, 1, 2, 2, 3, 3>(mins, mins);
        let mins_b = i16x8_shuffle::<4, 4, 5, 5, 6, 6, 7, 7>(mins, mins);
        let dd = f16x4_to_f32::<false>(i32x4(h16(blk), h16(blk.add(2)), 0, 0));
        let (d, dmin) = (f32x4_extract_lane::<0>(dd), f32x4_extract_lane::<1>(dd));

        let mut vi = [i32x4_splat(0); C];
        let mut vm = [i32x4_splat(0); C];
        for c in 0..C {
            let bs = a.bsums.as_ptr().add(((t0 + c) * nb + b) * 16) as *const v128;
            let s01 = i16x8_narrow_i32x4(v128_load(bs), v128_load(bs.add(1)));
            let s23 = i16x8_narrow_i32x4(v128_load(bs.add(2)), v128_load(bs.add(3)));
            vm[c] = i32x4_add(i32x4_dot_i16x8(mins_a, s01), i32x4_dot_i16x8(mins_b, s23));
        }
        // Q5_K's fifth bits: bit j of qh[l] (l = 0..32) is value l's of sub-block j.
        let qh = if Q5 {
            [v128_load(blk.add(16) as *const v128), v128_load(blk.add(32) as *const v128)]
        } else {
            [i32x4_splat(0); 2]
        };
        // Sub-blocks 2jj (low nibbles of qs[32jj..32jj + 32]) and 2jj + 1 (high nibbles).
        let pair = |jj: u32, vi: &mut [v128; C]| {
            let q = blk.add(qs_off + 32 * jj as usize);
            let (b0, b1) = (v128_load(q as *const v128), v128_load(q.add(16) as *const v128));
            #[cfg(target_feature = "relaxed-simd")]
            {
                // The relaxed-SIMD build: the 5-bit (4-bit) values stay bytes, valid i7 operands
                // of `i32x4.relaxed_dot_i8x16_i7x16_add` (exact: a pair of products, ≤ 2·31·128,
                // fits i16 unsaturated), against the 8-bit activations as they are.
                let (m4, m10) = (u8x16_splat(0x0F), u8x16_splat(0x10));
                let bit = |h: v128, j: u32| v128_and(if j <= 4 { u16x8_shl(h, 4 - j) } else { u16x8_shr(h, j - 4) }, m10);
                let (mut l0, mut l1) = (v128_and(b0, m4), v128_and(b1, m4));
                let (mut h0, mut h1) = (v128_and(u16x8_shr(b0, 4), m4), v128_and(u16x8_shr(b1, 4), m4));
                if Q5 {
                    l0 = v128_or(l0, bit(qh[0], 2 * jj));
                    l1 = v128_or(l1, bit(qh[1], 2 * jj));
                    h0 = v128_or(h0, bit(qh[0], 2 * jj + 1));
                    h1 = v128_or(h1, bit(qh[1], 2 * jj + 1));
                }
                if D16 {
                    // [`DOT16`]'s form: each i16 lane adds two products of each of the two
                    // activation vectors (≤ 4·31·128 = 15872: no overflow, no saturation), then
                    // `i32x4.dot_i16x8_s` adds lane pairs times the scale: the i32 form's lanes.
                    let (s_lo, s_hi) = (i16x8_splat(scv(2 * jj) as i16), i16x8_splat(scv(2 * jj + 1) as i16));
                    for (c, v) in vi.iter_mut().enumerate() {
                        let x = x8(a, t0 + c, 256 * b + 64 * jj as usize) as *const v128;
                        let dl = i16x8_add(i16x8_relaxed_dot_i8x16_i7x16(v128_load(x), l0), i16x8_relaxed_dot_i8x16_i7x16(v128_load(x.add(1)), l1));
                        let dh = i16x8_add(i16x8_relaxed_dot_i8x16_i7x16(v128_load(x.add(2)), h0), i16x8_relaxed_dot_i8x16_i7x16(v128_load(x.add(3)), h1));
                        *v = i32x4_add(*v, i32x4_add(i32x4_dot_i16x8(dl, s_lo), i32x4_dot_i16x8(dh, s_hi)));
                    }
                    return;
                }
                let (s_lo, s_hi) = (sc(2 * jj), sc(2 * jj + 1));
                for (c, v) in vi.iter_mut().enumerate() {
                    let x = x8(a, t0 + c, 256 * b + 64 * jj as usize) as *const v128;
                    let z = i32x4_splat(0);
                    let dl = i32x4_relaxed_dot_i8x16_i7x16_add(v128_load(x.add(1)), l1, i32x4_relaxed_dot_i8x16_i7x16_add(v128_load(x), l0, z));
                    let dh = i32x4_relaxed_dot_i8x16_i7x16_add(v128_load(x.add(3)), h1, i32x4_relaxed_dot_i8x16_i7x16_add(v128_load(x.add(2)), h0, z));
                    *v = i32x4_add(*v, i32x4_add(i32x4_mul(dl, s_lo), i32x4_mul(dh, s_hi)));
                }
                return;
            }
            #[allow(unreachable_code)]
            let (lo, hi) = if Q5 {
                // On bytes (u16 shifts are exact there once masked): bit j of qh to bit 4.
                let (m4, m10) = (u8x16_splat(0x0F), u8x16_splat(0x10));
                let bit = |h: v128, j: u32| v128_and(if j <= 4 { u16x8_shl(h, 4 - j) } else { u16x8_shr(h, j - 4) }, m10);
                let l0 = v128_or(v128_and(b0, m4), bit(qh[0], 2 * jj));
                let l1 = v128_or(v128_and(b1, m4), bit(qh[1], 2 * jj));
                let h0 = v128_or(v128_and(u16x8_shr(b0, 4), m4), bit(qh[0], 2 * jj + 1));
                let h1 = v128_or(v128_and(u16x8_shr(b1, 4), m4), bit(qh[1], 2 * jj + 1));
                (
                    [u16x8_extend_low_u8x16(l0), u16x8_extend_high_u8x16(l0), u16x8_extend_low_u8x16(l1), u16x8_extend_high_u8x16(l1)],
                    [u16x8_extend_low_u8x16(h0), u16x8_extend_high_u8x16(h0), u16x8_extend_low_u8x16(h1), u16x8_extend_high_u8x16(h1)],
                )
            } else {
                // Widened first (u16 shifts are native): values l = 0..8, 8..16, 16..24, 24..32.
                let w = [u16x8_extend_low_u8x16(b0), u16x8_extend_high_u8x16(b0), u16x8_extend_low_u8x16(b1), u16x8_extend_high_u8x16(b1)];
                let m4 = u16x8_splat(0x0F);
                (
                    [v128_and(w[0], m4), v128_and(w[1], m4), v128_and(w[2], m4), v128_and(w[3], m4)],
                    [u16x8_shr(w[0], 4), u16x8_shr(w[1], 4), u16x8_shr(w[2], 4), u16x8_shr(w[3], 4)],
                )
            };
            let (s_lo, s_hi) = (sc(2 * jj), sc(2 * jj + 1));
            for (c, v) in vi.iter_mut().enumerate() {
                let x = x8(a, t0 + c, 256 * b + 64 * jj as usize);
                let p = i32x4_add(i32x4_mul(dot32(&lo, x), s_lo), i32x4_mul(dot32(&hi, x.add(32)), s_hi));
                *v = i32x4_add(*v, p);
            }
        };
        pair(0, &mut vi);
        pair(1, &mut vi);
        pair(2, &mut vi);
        pair(3, &mut vi);

        let s = sums::<C>(&vi, &vm);
        let lanes = [i32x4_extract_lane::<0>(s), i32x4_extract_lane::<1>(s), i32x4_extract_lane::<2>(s), i32x4_extract_lane::<3>(s)];
        for c in 0..C {
            let (isum, msum) = (lanes[2 * c], lanes[2 * c + 1]);
            let dx = *a.d.get_unchecked(b * a.tokens + t0 + c);
            // `scalar::k_value`, operation for operation.
            acc[c] += (d * dx) * isum as f32 - (dmin * dx) * msum as f32;
        }
    }
    acc
}

/// Q6_K: row × tokens `t0 .. t0 + C`; `D16` as in [`tile_k`].
#[inline(always)]
unsafe fn tile_q6k<const C: usize, const D16: bool>(row: &[u8], touch: Option<*const u8>, a: &Activations, t0: usize) -> [f32; C] {
    let nb = a.cols / 256;
    let mut acc = [0f32; C];
    for b in 0..nb {
        let blk = row.as_ptr().add(b * 210);
        if let (1, Some(p)) = (C, touch) {
            self::touch::<3>(p.add(b * 210));
        }
        // The 16 scales widened to i16: sub-blocks 0..8 and 8..16.
        let scv = v128_load(blk.add(192) as *const v128);
        let sc = [i16x8_extend_low_i8x16(scv), i16x8_extend_high_i8x16(scv)];
        let d = f32x4_extract_lane::<0>(f16x4_to_f32::<false>(i32x4(h16(blk.add(208)), 0, 0, 0)));
        // Two accumulators per token (shorter add chains).
        let mut v0 = [i32x4_splat(0); C];
        let mut v1 = [i32x4_splat(0); C];
        // The relaxed-SIMD chunks take q (0..63) as it is: −32 · Σ_j sc_j · bsums_j here.
        #[cfg(target_feature = "relaxed-simd")]
        {
            for c in 0..C {
                let bs = a.bsums.as_ptr().add(((t0 + c) * (a.cols / 256) + b) * 16) as *const v128;
                let s01 = i16x8_narrow_i32x4(v128_load(bs), v128_load(bs.add(1)));
                let s23 = i16x8_narrow_i32x4(v128_load(bs.add(2)), v128_load(bs.add(3)));
                let corr = i32x4_add(i32x4_dot_i16x8(sc[0], s01), i32x4_dot_i16x8(sc[1], s23));
                v1[c] = i32x4_sub(v1[c], i32x4_shl(corr, 5));
            }
        }
        q6k_chunk::<C, 0, 0, D16>(blk, sc[0], a, t0, 256 * b, &mut v0, &mut v1);
        q6k_chunk::<C, 0, 1, D16>(blk, sc[0], a, t0, 256 * b, &mut v0, &mut v1);
        q6k_chunk::<C, 1, 0, D16>(blk, sc[1], a, t0, 256 * b, &mut v0, &mut v1);
        q6k_chunk::<C, 1, 1, D16>(blk, sc[1], a, t0, 256 * b, &mut v0, &mut v1);

        let s = sums::<C>(&v0, &v1);
        for c in 0..C {
            let isum = if c == 0 {
                i32x4_extract_lane::<0>(s).wrapping_add(i32x4_extract_lane::<1>(s))
            } else {
                i32x4_extract_lane::<2>(s).wrapping_add(i32x4_extract_lane::<3>(s))
            };
            let dx = *a.d.get_unchecked(b * a.tokens + t0 + c);
            acc[c] += (d * dx) * isum as f32;
        }
    }
    acc
}

/// i16 lane `K` of `v` in every lane.
#[inline(always)]
fn dup16<const K: usize>(v: v128) -> v128 {
    i16x8_shuffle::<K, K, K, K, K, K, K, K>(v, v)
}

/// One Q6_K chunk: values `128N + 32g + 16LH + (0..16)` for g = 0..4, which are sub-blocks
/// `8N + 2g + LH` (scales: lanes `2g + LH` of `sc`, the half N of the 16 scales). Their low 4
/// bits: g 0 / 1 the low nibbles of `ql[64N + 16LH ..]` / `ql[64N + 32 + 16LH ..]`, g 2 / 3 the
/// high ones; their top 2 bits: bits 2g, 2g + 1 of `qh[128 + 32N + 16LH ..]`. Unpacked 16 at a
/// time on bytes (u16 shifts are exact there once masked), then `(q − 32)·sc` in i16.
#[inline(always)]
unsafe fn q6k_chunk<const C: usize, const N: usize, const LH: usize, const D16: bool>(
    blk: *const u8,
    sc: v128,
    a: &Activations,
    t0: usize,
    i0: usize,
    v0: &mut [v128; C],
    v1: &mut [v128; C],
) {
    let ql0 = v128_load(blk.add(64 * N + 16 * LH) as *const v128);
    let ql1 = v128_load(blk.add(64 * N + 32 + 16 * LH) as *const v128);
    let qh = v128_load(blk.add(128 + 32 * N + 16 * LH) as *const v128);
    #[cfg(target_feature = "relaxed-simd")]
    {
        // The relaxed-SIMD build: q (0..63, a valid i7 operand; a pair of products ≤ 2·63·128
        // fits i16 unsaturated) · the 8-bit activations per 16 by one
        // `i32x4.relaxed_dot_i8x16_i7x16_add`, times the sub-block's scale in i32; the −32 is
        // taken off in `tile_q6k`. |Σ| ≤ 256·63·128·128 < 2^31.
        let _ = sc;
        let (m4, m30) = (u8x16_splat(0x0F), u8x16_splat(0x30));
        let q = [
            v128_or(v128_and(ql0, m4), v128_and(u16x8_shl(qh, 4), m30)),
            v128_or(v128_and(ql1, m4), v128_and(u16x8_shl(qh, 2), m30)),
            v128_or(v128_and(u16x8_shr(ql0, 4), m4), v128_and(qh, m30)),
            v128_or(v128_and(u16x8_shr(ql1, 4), m4), v128_and(u16x8_shr(qh, 2), m30)),
        ];
        if D16 {
            // [`DOT16`]'s form: pairs of products in i16 (≤ 2·63·128 = 16128), then times the
            // scale by `i32x4.dot_i16x8_s` (|Σ| ≤ 4·63·128·128): the same lanes.
            let s = |g: usize| i16x8_splat(*blk.add(192 + 8 * N + 2 * g + LH) as i8 as i16);
            let s = [s(0), s(1), s(2), s(3)];
            for c in 0..C {
                let x = x8(a, t0 + c, i0 + 128 * N + 16 * LH) as *const v128;
                let d = |g: usize| i32x4_dot_i16x8(i16x8_relaxed_dot_i8x16_i7x16(v128_load(x.add(2 * g)), q[g]), s[g]);
                v0[c] = i32x4_add(v0[c], i32x4_add(d(0), d(1)));
                v1[c] = i32x4_add(v1[c], i32x4_add(d(2), d(3)));
            }
            return;
        }
        let s = |g: usize| i32x4_splat(*blk.add(192 + 8 * N + 2 * g + LH) as i8 as i32);
        let s = [s(0), s(1), s(2), s(3)];
        let z = i32x4_splat(0);
        for c in 0..C {
            let x = x8(a, t0 + c, i0 + 128 * N + 16 * LH) as *const v128;
            let d = |g: usize| i32x4_mul(i32x4_relaxed_dot_i8x16_i7x16_add(v128_load(x.add(2 * g)), q[g], z), s[g]);
            v0[c] = i32x4_add(v0[c], i32x4_add(d(0), d(1)));
            v1[c] = i32x4_add(v1[c], i32x4_add(d(2), d(3)));
        }
        return;
    }
    #[allow(unreachable_code)]
    let (m4, m30, k32) = (u8x16_splat(0x0F), u8x16_splat(0x30), i8x16_splat(32));
    let q = [
        i8x16_sub(v128_or(v128_and(ql0, m4), v128_and(u16x8_shl(qh, 4), m30)), k32),
        i8x16_sub(v128_or(v128_and(ql1, m4), v128_and(u16x8_shl(qh, 2), m30)), k32),
        i8x16_sub(v128_or(v128_and(u16x8_shr(ql0, 4), m4), v128_and(qh, m30)), k32),
        i8x16_sub(v128_or(v128_and(u16x8_shr(ql1, 4), m4), v128_and(u16x8_shr(qh, 2), m30)), k32),
    ];
    let s = if LH == 0 {
        [dup16::<0>(sc), dup16::<2>(sc), dup16::<4>(sc), dup16::<6>(sc)]
    } else {
        [dup16::<1>(sc), dup16::<3>(sc), dup16::<5>(sc), dup16::<7>(sc)]
    };
    for half in 0..2 {
        let w = if half == 0 {
            [
                i16x8_mul(i16x8_extend_low_i8x16(q[0]), s[0]),
                i16x8_mul(i16x8_extend_low_i8x16(q[1]), s[1]),
                i16x8_mul(i16x8_extend_low_i8x16(q[2]), s[2]),
                i16x8_mul(i16x8_extend_low_i8x16(q[3]), s[3]),
            ]
        } else {
            [
                i16x8_mul(i16x8_extend_high_i8x16(q[0]), s[0]),
                i16x8_mul(i16x8_extend_high_i8x16(q[1]), s[1]),
                i16x8_mul(i16x8_extend_high_i8x16(q[2]), s[2]),
                i16x8_mul(i16x8_extend_high_i8x16(q[3]), s[3]),
            ]
        };
        for c in 0..C {
            // Group g's values are 32g further on (4 vectors of 8).
            let x = x8(a, t0 + c, i0 + 128 * N + 16 * LH + 8 * half);
            let p01 = i32x4_add(i32x4_dot_i16x8(w[0], ld8(x)), i32x4_dot_i16x8(w[1], ld8(x.add(32))));
            let p23 = i32x4_add(i32x4_dot_i16x8(w[2], ld8(x.add(64))), i32x4_dot_i16x8(w[3], ld8(x.add(96))));
            v0[c] = i32x4_add(v0[c], p01);
            v1[c] = i32x4_add(v1[c], p23);
        }
    }
}

// ---- attention ----

/// One query row of attention ([`super::attention`]'s definition) with SIMD128: key j's dot in 8
/// lanes (dimension d in lane d % 8, in order, multiply then add) as two f32x4 accumulators,
/// four keys at a time; the weighted sum of the values four dimensions per vector, in key order.
/// The softmax steps are the scalar twin's. The same bits as [`super::attention::row_scalar`].
pub(super) fn attention_row<T: KvElem>(q: &[f32], k: &[T], v: &[T], scale: f32, y: &mut [f32]) {
    let hd = q.len();
    let n = k.len() / hd;
    assert!(k.len() >= n * hd && v.len() >= n * hd && y.len() == hd, "attention_row: shapes");
    let hd8 = hd - hd % 8;
    let mut scores = super::attention::take_scores(n);
    // Key j's score from its 8 lanes over the full groups of 8: the columns past them, the lane
    // reduction, the scale. (Every SIMD load below reads q[d..d + 8] and key j's values d..d + 8
    // with j < n and d + 8 <= hd8 <= hd: inside q and k, asserted above.)
    let lanes_of = |j: usize, lo: v128, hi: v128| -> f32 {
        let kj = &k[j * hd..(j + 1) * hd];
        let mut lanes = lanes8(lo, hi);
        for d in hd8..hd {
            lanes[d % 8] += q[d] * kj[d].load();
        }
        reduce8(&lanes) * scale
    };
    let (qp, kp) = (q.as_ptr(), k.as_ptr());
    /// Four f32 at `p`.
    unsafe fn ld(p: *const f32) -> v128 {
        v128_load(p as *const v128)
    }
    let n4 = n - n % 4;
    for j0 in (0..n4).step_by(4) {
        // Four keys: eight independent chains, each query vector loaded once for the four.
        let z = f32x4_splat(0.0);
        let (mut lo, mut hi) = ([z; 4], [z; 4]);
        for d in (0..hd8).step_by(8) {
            let (q0, q1) = unsafe { (ld(qp.add(d)), ld(qp.add(d + 4))) };
            for u in 0..4 {
                let kr = unsafe { kp.add((j0 + u) * hd + d) };
                unsafe {
                    lo[u] = f32x4_add(lo[u], f32x4_mul(q0, kv4(kr)));
                    hi[u] = f32x4_add(hi[u], f32x4_mul(q1, kv4(kr.add(4))));
                }
            }
        }
        for u in 0..4 {
            scores[j0 + u] = lanes_of(j0 + u, lo[u], hi[u]);
        }
    }
    for j in n4..n {
        let (mut lo, mut hi) = (f32x4_splat(0.0), f32x4_splat(0.0));
        for d in (0..hd8).step_by(8) {
            let kr = unsafe { kp.add(j * hd + d) };
            unsafe {
                lo = f32x4_add(lo, f32x4_mul(ld(qp.add(d)), kv4(kr)));
                hi = f32x4_add(hi, f32x4_mul(ld(qp.add(d + 4)), kv4(kr.add(4))));
            }
        }
        scores[j] = lanes_of(j, lo, hi);
    }
    let sum = super::attention::exp_scores(&mut scores);
    for e in scores.iter_mut() {
        *e /= sum;
    }
    // y = Σ_j p_j · v_j in j order, up to 10 vectors of dimensions at a time in accumulators
    // that stay in registers over all keys (V8 has 16 on x86-64; with y in memory each key
    // loaded and stored every vector of it), the dimensions past them one at a time.
    let vecs = hd / 4;
    let mut c0 = 0;
    while c0 < vecs {
        let c = (vecs - c0).min(10);
        macro_rules! weigh {
            ($($n:literal)*) => {
                match c {
                    $($n => weigh_values::<T, $n>(&scores, v, hd, 4 * c0, y),)*
                    _ => unreachable!("1 to 10 vectors"),
                }
            };
        }
        weigh!(1 2 3 4 5 6 7 8 9 10);
        c0 += c;
    }
    for d in 4 * vecs..hd {
        y[d] = 0.0;
        for (j, &p) in scores.iter().enumerate() {
            y[d] += p * v[j * hd + d].load();
        }
    }
    super::attention::keep_scores(scores);
}

/// Dimensions `d0 .. d0 + 4·C` of `y = Σ_j p_j · v_j` (p and the rows of v: keys 0..p.len()),
/// in j order, multiply then add (the definition's steps), in C registers.
#[inline(always)]
fn weigh_values<T: KvElem, const C: usize>(p: &[f32], v: &[T], hd: usize, d0: usize, y: &mut [f32]) {
    assert!(d0 + 4 * C <= hd && hd <= y.len() && v.len() >= p.len() * hd, "weigh_values: shapes");
    let mut accs = [f32x4_splat(0.0); C];
    let vp = v.as_ptr();
    for (j, &pj) in p.iter().enumerate() {
        let pv = f32x4_splat(pj);
        for (c, acc) in accs.iter_mut().enumerate() {
            // SAFETY: j < p.len() and d0 + 4c + 4 <= hd (asserted): inside row j of v.
            *acc = f32x4_add(*acc, f32x4_mul(pv, unsafe { kv4(vp.add(j * hd + d0 + 4 * c)) }));
        }
    }
    for (c, acc) in accs.iter().enumerate() {
        // SAFETY: d0 + 4c + 4 <= hd <= y.len() (asserted).
        unsafe { v128_store(y.as_mut_ptr().add(d0 + 4 * c) as *mut v128, *acc) };
    }
}

/// f16 bits → f32 ([`f16x4_to_f32`], exactly as `half` widens them), four at a time.
pub(super) fn widen_f16(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let n4 = n - n % 4;
    for i in (0..n4).step_by(4) {
        // SAFETY: i + 4 <= n, inside both slices.
        unsafe {
            let h = u32x4_extend_low_u16x8(v128_load64_zero(src.as_ptr().add(i) as *const u64));
            v128_store(dst.as_mut_ptr().add(i) as *mut v128, f16x4_to_f32::<false>(h));
        }
    }
    for i in n4..n {
        dst[i] = half::f16::from_bits(src[i]).to_f32();
    }
}

/// Four keys' or values' elements at `p` as f32x4 (f16: widened by [`f16x4_to_f32`], exact).
#[inline(always)]
unsafe fn kv4<T: KvElem>(p: *const T) -> v128 {
    if T::HALF {
        f16x4_to_f32::<false>(u32x4_extend_low_u16x8(v128_load64_zero(p as *const u64)))
    } else {
        v128_load(p as *const v128)
    }
}

/// Attention parity check for the wasm tests, a plain export like [`phi2_simd128_parity`]: one
/// head of `head_dim` values, `keys` positions of random queries, keys and values from `seed`,
/// through the scalar twin and [`attention_row`], with the keys and values as they are (an f32
/// cache) and rounded to f16 (an f16 cache). Returns how many outputs differ in their bits
/// (-1 for an empty shape).
#[no_mangle]
pub extern "C" fn phi2_simd128_attention_parity(head_dim: u32, keys: u32, seed: u32) -> i32 {
    let (hd, n) = (head_dim as usize, keys as usize);
    if hd == 0 || n == 0 {
        return -1;
    }
    let mut s = 0x2545_F491_4F6C_DD1Du64 ^ ((seed as u64) << 1 | 1);
    let mut unit = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        ((s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let q: Vec<f32> = (0..hd).map(|_| 3.0 * unit()).collect();
    let k: Vec<f32> = (0..n * hd).map(|_| 3.0 * unit()).collect();
    let v: Vec<f32> = (0..n * hd).map(|_| unit()).collect();
    let scale = 1.0 / (hd as f32).sqrt();
    let (mut ys, mut yv) = (vec![0f32; hd], vec![0f32; hd]);
    super::attention::row_scalar(&q, &k, &v, scale, &mut ys);
    attention_row(&q, &k, &v, scale, &mut yv);
    let mut bad = ys.iter().zip(&yv).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    let half = |x: &[f32]| x.iter().map(|&x| half::f16::from_f32(x)).collect::<Vec<_>>();
    let (kh, vh) = (half(&k), half(&v));
    super::attention::row_scalar(&q, &kh, &vh, scale, &mut ys);
    attention_row(&q, &kh, &vh, scale, &mut yv);
    bad += ys.iter().zip(&yv).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    bad as i32
}

// ---- parity self-check ----

/// Kernel parity check for the wasm tests (test/wasm/wasm.test.mjs), exported from the module as
/// a plain wasm function (no wasm-bindgen glue; `initSync` returns the instance's exports): random
/// weights of GGML type `ggml_type` (every quant value and 6/8-bit scale possible; sane f16
/// scales) of shape `[rows, cols]` and `tokens` rows of random activations, all from `seed`,
/// through the scalar twin and through SIMD128 ([`super::matmul_with`], one thread), the latter
/// with the matrix's scales known finite and not ([`WeightRef::finite_scales`]), with and without
/// the touches ahead and the i16 dots ([`set_knob`]). Returns the
/// number of output elements whose bits differ (in either), or -1 when SIMD128 does not take the
/// type (or the shape is not whole blocks).
#[no_mangle]
pub extern "C" fn phi2_simd128_parity(ggml_type: u32, rows: u32, cols: u32, tokens: u32, seed: u32) -> i32 {
    use super::{matmul_with, Isa};
    let Some((w, a)) = random_case(ggml_type, rows as usize, cols as usize, tokens as usize, seed) else { return -1 };
    let w = w.weights();
    let mut ys = vec![0f32; a.tokens * w.rows];
    if matmul_with(Isa::Scalar, &w, &a, &mut ys).is_none() {
        return -1;
    }
    let mut bad = 0;
    let (touch, d16) = (set_knob(Knob::TouchAhead, true), set_knob(Knob::Dot16, false));
    for (finite_scales, touch_ahead, dot16) in [(false, true, false), (true, true, false), (true, false, false), (true, true, true), (false, false, true)] {
        set_knob(Knob::TouchAhead, touch_ahead);
        set_knob(Knob::Dot16, dot16);
        let mut yv = vec![0f32; a.tokens * w.rows];
        if matmul_with(Isa::Simd128, &WeightRef { finite_scales, ..w }, &a, &mut yv).is_none() {
            bad = -1;
            break;
        }
        bad += ys.iter().zip(&yv).filter(|(p, q)| p.to_bits() != q.to_bits()).count() as i32;
    }
    set_knob(Knob::TouchAhead, touch);
    set_knob(Knob::Dot16, d16);
    bad
}

/// Sets a [`Knob`] ([`set_knob`]; `knob` 0: the touches ahead, 1: the i16 dots; `on` 0 off, else
/// on), for `bench/wasm-kernels.mjs` and the tests; returns the previous setting (0 or 1), or -1
/// for another `knob`.
#[no_mangle]
pub extern "C" fn phi2_set_knob(knob: u32, on: u32) -> i32 {
    match knob_of(knob) {
        Some(k) => set_knob(k, on != 0) as i32,
        None => -1,
    }
}

fn knob_of(id: u32) -> Option<Knob> {
    match id {
        0 => Some(Knob::TouchAhead),
        1 => Some(Knob::Dot16),
        _ => None,
    }
}

/// A check of a calibration's bookkeeping ([`super::calibrate_touch_ahead`] for `knob` 0,
/// [`super::calibrate_dot16`] for 1), a plain export for the tests: three random Q4_0 matrices of
/// 800 × 2560 (1.15 MB each, past the i16-dot timing's 1 MB floor; touches: passes of 100 kB)
/// and a clock that moves `ms_on` per pass with the knob on and `ms_off` with it off. Returns 1
/// when it kept the knob on, 0 off (the setting then in force and the times must agree, else -2),
/// -1 when it did not calibrate (the i16 dots outside the relaxed-SIMD build). Leaves the setting
/// as it found it.
#[no_mangle]
pub extern "C" fn phi2_calibration_check(knob: u32, ms_on: f64, ms_off: f64) -> i32 {
    let Some(knob) = knob_of(knob) else { return -1 };
    let cases: Vec<_> = (0..3).filter_map(|seed| random_case(2, 800, 2560, 1, seed)).map(|(w, _)| w).collect();
    let mats: Vec<WeightRef> = cases.iter().map(|c| c.weights()).collect();
    let flag = flag(knob);
    let clock = std::cell::Cell::new(0f64);
    let now = || {
        clock.set(clock.get() + if flag.load(Ordering::Relaxed) { ms_on } else { ms_off });
        clock.get()
    };
    let before = set_knob(knob, knob.default_on());
    let got = match knob {
        Knob::TouchAhead => super::calibrate_touch_ahead(&mats, 100_000, &now),
        Knob::Dot16 => super::calibrate_dot16(&mats, &now),
    };
    let kept = set_knob(knob, before);
    match got {
        None => -1,
        Some(c) if c.on != kept || c.knob != knob || c.ms_on != ms_on || c.ms_off != ms_off => -2,
        Some(c) => c.on as i32,
    }
}

/// Kernel timing for `bench/wasm-kernels.mjs`, a plain export like [`phi2_simd128_parity`]: the
/// same random case, then `iters` products through SIMD128 on one thread. Returns the sum of the
/// last product's outputs (so that none of the work can be left out), NaN when the case is not
/// one SIMD128 takes. The caller times a call with `iters = 0` (the case alone) and one with more.
#[no_mangle]
pub extern "C" fn phi2_simd128_bench(ggml_type: u32, rows: u32, cols: u32, tokens: u32, iters: u32) -> f32 {
    use super::{matmul_with, Isa};
    let Some((w, a)) = random_case(ggml_type, rows as usize, cols as usize, tokens as usize, 1) else { return f32::NAN };
    let w = w.weights();
    // As a model's matrices are ([`crate::weights::Packed`]).
    let w = WeightRef { finite_scales: super::scales_finite(w.dtype, w.data), ..w };
    let mut y = vec![0f32; a.tokens * w.rows];
    for _ in 0..iters {
        if matmul_with(Isa::Simd128, &w, &a, &mut y).is_none() {
            return f32::NAN;
        }
    }
    y.iter().sum()
}

/// A random weight matrix as bytes, for [`RandomCase::weights`].
struct RandomCase {
    dtype: DType,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl RandomCase {
    fn weights(&self) -> WeightRef<'_> {
        WeightRef::new(self.dtype, self.rows, self.cols, &self.data).expect("random_case checked the shape")
    }
}

/// Random weights of GGML type `ggml_type` (every quant value and 6/8-bit scale possible; sane f16
/// scales) of shape `[rows, cols]` and `tokens` rows of random activations, all from `seed`; None
/// when SIMD128 does not take the type or the shape is not whole blocks.
fn random_case(ggml_type: u32, rows: usize, cols: usize, tokens: usize, seed: u32) -> Option<(RandomCase, Activations)> {
    use super::{supports, Family};
    let dtype = DType::from_ggml_id(ggml_type)?;
    let family = Family::of(dtype)?;
    if !supports(dtype) || rows == 0 || tokens == 0 || cols == 0 || cols % family.block() != 0 {
        return None;
    }
    // xorshift64*.
    let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ seed as u64;
    let mut next = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut data: Vec<u8> = (0..dtype.byte_len(&[rows, cols]).unwrap_or(0)).map(|_| (next() >> 56) as u8).collect();
    let mut unit = || ((next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
    let f16 = |v: f32| half::f16::from_f32(v).to_le_bytes();
    for blk in data.chunks_exact_mut(dtype.type_size()) {
        let (d, dmin) = (f16(0.001 + 0.02 * unit().abs()), f16(0.001 + 0.01 * unit().abs()));
        match dtype {
            // Finite weights of either sign (random bytes would include infinities and NaNs).
            DType::F16 => blk.copy_from_slice(&f16(unit() * 0.5)),
            DType::BF16 => blk.copy_from_slice(&half::bf16::from_f32(unit() * 0.5).to_le_bytes()),
            DType::Q6K => blk[208..210].copy_from_slice(&d),
            DType::Q4K | DType::Q5K => {
                blk[0..2].copy_from_slice(&d);
                blk[2..4].copy_from_slice(&dmin);
            }
            _ => blk[0..2].copy_from_slice(&d),
        }
    }
    WeightRef::new(dtype, rows, cols, &data)?;
    let x: Vec<f32> = (0..tokens * cols).map(|_| unit() * 3.0).collect();
    let mut a = Activations::default();
    a.prepare(family, &x, tokens, cols);
    Some((RandomCase { dtype, rows, cols, data }, a))
}
