//! x86-64 AMX (Advanced Matrix Extensions: 2-D tile registers and the `tdpbusd` / `tdpbssd`
//! tile products) for Q4_0 / Q8_0 and K-quant weights against prompt batches, with an AVX-512
//! epilogue. (K-quants: see [`pack_kslab`] and [`rows_amx_k`]; their sub-block scales are
//! integers, so they fold into the weights and a super-block needs one epilogue, not one per
//! block.)
//!
//! One tile product (`tdpbssd`, signed × signed bytes) computes, for 16 weight rows × 16 tokens,
//! the exact integer dot products of one block of 32 values: `C[m][n] = Σ_k A[m][k] · B[k][n]`
//! in i32 (A: the weight block's integers, `q − 8` for Q4_0, `q` for Q8_0; B: the activation
//! block's bytes, "VNNI-packed" four at a time, built by [`super::Activations::prepare`]). The
//! epilogue then does exactly what the scalar definition does per block: `(d_w · d_x) · isum`
//! in f32 and the add to lane `b % 8`. The 8 lanes are
//! processed one after the other (blocks `l, l + 8, l + 16, …` for lane `l`: each lane still
//! accumulates in block order), so a lane's 16 × 16 accumulators stay in registers. Same bits
//! as the scalar twin, whatever the number of tokens.
//!
//! Where a Q4_0 / Q8_0 product's time goes (`kernel_bench --threads 2 --tokens 128 --types
//! q8_0`, 10240×2560, Sapphire Rapids-class Xeon: 7.6–7.8 ms), with parts of [`rows_amx`] left
//! out: 5.2–5.3 ms without the epilogue's arithmetic, 4.4–4.7 without the per-block tile stores
//! too, 4.0–4.3 with the tile products' loads gone as well, 2.3 with no tile work at all
//! (packing, lane reduction, output). The parts add up: the AVX-512 epilogue does not run while
//! the tile unit works, in any order tried (alternating builds, Q4_0 / Q8_0 ms): one pipeline
//! over all 8 lanes instead of one per lane 7.1–7.3 / 7.4–7.7 vs 6.6–6.8 / 7.2–7.4; the epilogue
//! before the next store 7.9–8.2 / 8.8–9.0 vs 6.5–7.0 / 7.2–7.7; a third result buffer, so that
//! the epilogue reads results stored two steps earlier, 6.6–7.6 / 7.6–8.8 vs 6.7–7.7 / 7.2–8.4.
//! What is left to win is the epilogue's own work (four vector operations per 16 outputs and
//! block, which the definition fixes) and the tile products' (each uses half the tile unit: a
//! Q8_0 / Q4_0 block has 32 values, a product takes 64).
//!
//! Linux only: a process must ask the kernel for the tile state (`arch_prctl`) before the first
//! tile instruction; [`available`] does that once.

use std::arch::asm;
use std::arch::x86_64::*;
use std::ops::Range;

use super::buffer::Aligned;
use super::x86::{K4, K5, K6};
use super::{Activations, OutPtr, WeightRef};
use crate::dtype::DType;

/// Tokens per tile (the N dimension) and weight rows per tile (M).
pub(crate) const TILE: usize = 16;

/// The smallest batch for which the activation tiles are prepared (for the AMX kernels and the
/// AVX512-VNNI K-quant kernel); which batches the tiles take is [`wins`]' crossover. The K-quant
/// kernel's 16 token lanes cost about the same from 7 tokens to 16, and from 7 it beats the
/// row kernels (10240×2560, 2 threads, AMX set, Q4_K / Q5_K / Q6_K, ms: the row kernel at 8
/// tokens 2.53 / 2.60 / 2.39, at 9 3.03 / 3.20 / 3.00; the tiles at 10 2.12 / 2.08 / 2.20).
pub(crate) const MIN_TOKENS: usize = 7;

/// Whether the tile kernels beat [`super::vnni512`]'s on a batch of `tokens` (which the AMX set
/// runs otherwise). A tile product costs as much half empty as full, and its per-block epilogue
/// goes through memory, so the 512-bit VNNI kernels win short batches. Measured
/// (`kernel_bench --threads 2 --tokens T`, 10240×2560, `PHI2_KERNELS=amx` against
/// `avx512-vnni`, Sapphire Rapids-class Xeon): Q4_0 / Q8_0, ms, since `vnni512` reads token
/// pairs prepared whole: at 24 tokens 2.57–2.60 / 2.36–2.50 vs 2.34–2.47 / 2.43–2.73, 32:
/// 2.65–2.77 / 3.07–3.08 vs 3.03–3.07 / 3.07–3.17, 48: 3.49–3.58 / 4.08–4.22 vs 4.41–4.42 /
/// 4.36–4.43; Q4_K, GMAC/s, at 32: 193 vs 216, 48: 244 vs 245, 64: 273 vs 240 (Q6_K alike).
pub(crate) fn wins(dtype: DType, tokens: usize) -> bool {
    tokens
        >= match dtype {
            DType::Q4_0 => 32,
            DType::Q8_0 => 40,
            _ => 48,
        }
}

/// Whether this CPU and OS run the tile kernels: AMX-TILE + AMX-INT8, AVX-512F (and BW) for the
/// epilogue, AVX-VNNI and AVX512-VNNI for smaller batches, and the kernel's permission for the
/// tile state.
pub(crate) fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        if !(super::x86::vnni_available() && super::vnni512::available() && super::avx512::available() && is_x86_feature_detected!("avx512bw")) {
            return false;
        }
        // CPUID.(EAX=7, ECX=0):EDX bit 24 = AMX-TILE, bit 25 = AMX-INT8.
        let edx = __cpuid_count(7, 0).edx;
        if edx & (3 << 24) != 3 << 24 {
            return false;
        }
        request_tile_state()
    })
}

/// Linux: `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, once per process (it covers
/// every thread). Any other OS: no tiles.
fn request_tile_state() -> bool {
    #[cfg(target_os = "linux")]
    {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: a plain system call with integer arguments; it only changes which extended
        // states this process may use.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// Whether this product goes to the tiles (else to the AVX-VNNI kernels).
pub(crate) fn takes(w: &WeightRef, a: &Activations) -> bool {
    matches!(w.dtype, DType::Q4_0 | DType::Q8_0 | DType::Q4K | DType::Q5K | DType::Q6K)
        && a.tokens >= MIN_TOKENS
        && a.tb.len() == a.tokens.div_ceil(TILE) * (a.cols / 32) * 512
}

/// The activation tiles of [`Activations`] for `tokens` tokens (`q` and the scales already
/// made): per tile of 16 tokens and 32 values (block g), 512 bytes
/// `B[k][4n + i] = q[t0 + n][32g + 4k + i]` (two consecutive blocks are one 16-row tile of 64
/// values, as the K-quant kernel takes them); the activation scales per tile and block (Q8_0)
/// or super-block (Q8_K) `[..][n]`; for Q8_K also the sums of each 32 values (`bsums` in pairs) as i16, sub-blocks
/// 2jj and 2jj + 1 side by side for `vpmaddwd`: `[.., jj][2n + j % 2]` (|sum| ≤ 32 · 127 fits).
/// Zeros for padding tokens.
pub(crate) fn prepare(a: &mut Activations) {
    let (tokens, cols) = (a.tokens, a.cols);
    let nb = cols / 32;
    let tiles = tokens.div_ceil(TILE);
    let k_family = a.family == Some(super::Family::Q8K);
    let nsb = if k_family { cols / 256 } else { nb };
    // (Not zeroed: every value is written below, the padding tokens' as zeros.)
    a.tb.resize(tiles * nb * 512);
    a.td.resize(tiles * nsb * TILE);
    if k_family {
        a.tbs.resize(tiles * nsb * 8 * TILE);
        debug_assert!(a.bsums.iter().all(|&s| s.unsigned_abs() <= 16 * 128));
    }
    // Per tile of 16 tokens, over the pool: each writes only its tile's part of `tb`, `td` and
    // `tbs` (this scatter ran on the calling thread alone, ~1% of a 128-token prompt's samples,
    // while the other threads waited).
    let (q, d, bsums) = (&a.q, &a.d, &a.bsums);
    let tb = super::Shared(a.tb.as_mut_ptr());
    let td = super::Shared(a.td.as_mut_ptr());
    let tbs = super::Shared(if k_family { a.tbs.as_mut_ptr() } else { std::ptr::null_mut() });
    super::par_items(tiles, tokens * cols, &|tile| {
        // SAFETY: tile `tile`'s ranges of each buffer (sized above) are this item's alone.
        let (tb, td) = unsafe { (tb.slice(tile * nb * 512, nb * 512), td.slice(tile * nsb * TILE, nsb * TILE)) };
        let tbs = if k_family { unsafe { tbs.slice(tile * nsb * 8 * TILE, nsb * 8 * TILE) } } else { &mut [] };
        for t in tile * TILE..(tile + 1) * TILE {
            let n = t % TILE;
            let real = t < tokens;
            for b in 0..nb {
                let base = b * 512 + 4 * n;
                for k in 0..8 {
                    let dst = &mut tb[base + 64 * k..base + 64 * k + 4];
                    if real {
                        dst.copy_from_slice(&q[t * cols + 32 * b + 4 * k..t * cols + 32 * b + 4 * k + 4]);
                    } else {
                        dst.fill(0);
                    }
                }
            }
            for b in 0..nsb {
                if k_family {
                    td[b * TILE + n] = if real { d[b * tokens + t] } else { 0.0 };
                    for j in 0..8 {
                        let sum = if real { bsums[(t * nsb + b) * 16 + 2 * j] + bsums[(t * nsb + b) * 16 + 2 * j + 1] } else { 0 };
                        tbs[(b * 4 + j / 2) * 2 * TILE + 2 * n + j % 2] = sum as i16;
                    }
                } else {
                    td[b * TILE + n] = if real { d[t * nb + b] } else { 0.0 };
                }
            }
        }
    });
}

/// The tile configuration (palette 1): two sets of C (16 × 16 i32), A (16 rows × 32 bytes) and
/// B (8 rows × 64 bytes): tmm0-2 and tmm3-5.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = {
    let mut c = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
    c.colsb[0] = 64;
    c.rows[0] = 16;
    c.colsb[1] = 32;
    c.rows[1] = 16;
    c.colsb[2] = 64;
    c.rows[2] = 8;
    c.colsb[3] = 64;
    c.rows[3] = 16;
    c.colsb[4] = 32;
    c.rows[4] = 16;
    c.colsb[5] = 64;
    c.rows[5] = 8;
    c
};

#[repr(C, align(64))]
struct CTile([i32; 256]);

/// Per-thread buffers: one 16-row slab of weights as A tiles (per block: 16 rows × 32 bytes),
/// its scales `[b][row]`, and the 8 lanes' accumulators `[lane][row][token]`.
struct Slab {
    a: Aligned<u8>,
    dw: Vec<f32>,
    acc: Aligned<f32>,
    /// K-quants: mins of sub-blocks 2jj and 2jj + 1 as two i16 in one i32 `[b·4 + jj][row]`,
    /// dmin `[b][row]`.
    mins: Vec<i32>,
    dmin: Vec<f32>,
}

const EMPTY_SLAB: Slab = Slab { a: Aligned::new(), dw: Vec::new(), acc: Aligned::new(), mins: Vec::new(), dmin: Vec::new() };

thread_local! {
    static SLAB: std::cell::RefCell<Slab> = const { std::cell::RefCell::new(EMPTY_SLAB) };
}

pub(crate) fn matmul_rows(w: &WeightRef, a: &Activations, rows: Range<usize>, out: OutPtr) {
    debug_assert!(takes(w, a));
    // SAFETY: `available()` held when the kernel set was chosen (it is part of `Isa::Amx`).
    //
    // Q4_0 and Q8_0 take long batches in passes over the rows, repacking their slabs for each,
    // so that a pass's activation tiles (16 bytes per token and column) stay in L2: about 1 MB
    // of them, at least 128 tokens (Phi-2's fc2 at 512 tokens has 5 MB). Measured (generate
    // example, 512-token Phi-2-shaped prompt, alternating, 3 each): passes of 128 tokens, Q4_0
    // 4.56 -> 4.31 s; then (`kernel_bench --threads 2 --tokens 512`) ~1 MB rather than 128
    // tokens for 2560 columns: 392-405 -> 411-413 GMAC/s (10240×2560). Q8_0 measured slower in
    // passes (354 -> 329 GMAC/s on fc2's shape) until its slabs were packed in order (below);
    // since then (2026-12-03, `kernel_bench --threads 2 --types q8_0`, ms, one pass against
    // passes, 10240 × 2560 / 2560 × 10240): 256 tokens 10.6 / 12.4 against 10.6 / 12.1, 512
    // 22.0-22.2 / 31.5-31.6 against 21.4-21.7 / 25.6-25.8, 1024 56.9 / 60.7 against 46.6 /
    // 51.4. The K-quants (scales to fold again) run in one pass.
    //
    // Packing a slab goes block by block, each block's 16 rows in turn, so that the A tiles
    // are written in order (512 bytes per block). Row by row, each row's blocks went to 80
    // (fc2: 320) lines 512 bytes apart, and fc2's shape ran ~25% slower than fc1's. Measured
    // (2026-12-02, `kernel_bench --threads 2 --tokens 128|64`, alternating builds, ms, Q8_0 /
    // Q4_0): 10240 × 2560 at 128 tokens 6.2-6.3 / 5.7-5.8 -> 5.7-6.1 / 5.5-5.9, 2560 × 10240
    // 7.8-7.8 / 6.2-6.5 -> 5.9-6.1 / 5.7-5.9; at 64 tokens 2560 × 10240 5.07-5.09 / 3.66-3.67
    // -> 3.37-3.44 / 3.07-3.22. (The K-quant slabs are written 64 bytes per row and block:
    // the same order there measured the same.)
    //
    // Where a Q8_0 product's time went before that (2026-12-02, fc1's shape, 128 tokens, 2
    // threads, parts switched off in a temporary build, ms): all 9.1; without packing the slabs
    // 7.8 (fc2's shape: 9.9 -> 8.2); then without the epilogue's arithmetic 5.0; then without
    // the tile stores 4.0, i.e. ~61 cycles per `tdpbssd` with its
    // two tile loads, against its 16-cycle throughput. Feeding B from L1 instead of L2 did not
    // help, so that is the two tile sets' latency (tile registers are not renamed: a set's next
    // loads wait for its product). Tried, slower: reading C three steps after its store (three
    // C buffers), the epilogue before the next store and product, and (fc2) the next slab's
    // prefetch spread over every block or left out (it helps fc1: 8.2 against 9.0 without),
    // and packing the next slab a share per lane step while this one computes (two slab
    // buffers: fc2 Q8_0 8.4-8.9 against 8.9-9.2, but fc1 8.0-8.3 against 7.8-7.9, Q4_0 5-10%
    // slower on both). Since the ordered packing, also tried and not kept: tile loads of A
    // straight from a Q8_0 file's rows (no copy; stride = the row's bytes, 32 of every 34
    // bytes; fc1 6.8-8.3 against 6.2 ms), a gather for the 16 scales of a block (within 2%),
    // and the next slab's prefetch as one run of lines without the per-row arithmetic (the same
    // or 2-5% slower).
    //
    // Other tile schedules, measured as bare tile loops (one thread, the same products, ms):
    // this one's 6.2 without its stores, 7.4-7.8 with them; 2 x 2 blocking (two slabs x two
    // token tiles: each tile load feeds two products) 3.6-3.8 without stores but 7.0 with
    // them; one slab x two token tiles with two C pairs in turn 4.2-4.8 / 6.2-7.0. A
    // `tilestored` costs ~29 cycles here (the 2 x 2 loop's four per block), 3.4 ms of stores
    // for this product at the least, so a different schedule buys ~10% of the tile part and
    // would need twice the epilogue's accumulators (32 registers): not taken.
    let tiles = a.tokens.div_ceil(TILE);
    let block = if matches!(w.dtype, DType::Q4_0 | DType::Q8_0) { ((1 << 20) / (w.cols * TILE)).max(8) } else { tiles.max(1) };
    SLAB.with_borrow_mut(|slab| {
        let mut t0 = 0;
        while t0 < tiles {
            let ts = t0..(t0 + block).min(tiles);
            let rows = rows.clone();
            unsafe {
                match w.dtype {
                    DType::Q8_0 => rows_amx::<true>(w, a, rows, ts.clone(), out, slab),
                    DType::Q4_0 => rows_amx::<false>(w, a, rows, ts.clone(), out, slab),
                    DType::Q4K => rows_amx_k::<K4>(w, a, rows, out, slab),
                    DType::Q5K => rows_amx_k::<K5>(w, a, rows, out, slab),
                    _ => rows_amx_k::<K6>(w, a, rows, out, slab),
                }
            }
            t0 = ts.end;
        }
    });
}

/// Weight rows `r0 .. r0 + m` (m ≤ 16) into A tiles (Q4_0: nibbles minus 8 as bytes, values
/// 0..32 of the block in order; Q8_0: the bytes) and their scales; missing rows are zeros.
#[target_feature(enable = "avx2,f16c")]
unsafe fn pack_slab<const SIGNED: bool>(w: &WeightRef, r0: usize, m: usize, slab: &mut Slab) {
    let nb = w.cols / 32;
    let bytes = if SIGNED { 34 } else { 18 };
    if m < TILE {
        slab.a.fill(0);
        slab.dw.fill(0.0);
    }
    let mask = _mm_set1_epi8(0x0F);
    let eight = _mm_set1_epi8(8);
    // Rows r0 .. r0 + m lie one after the other in `w.data`.
    debug_assert!(r0 + m <= w.rows);
    let rb = w.row_bytes();
    let base = w.row(r0).as_ptr();
    for b in 0..nb {
        for mi in 0..m {
            let blk = base.add(mi * rb + b * bytes);
            let dst = slab.a.as_mut_ptr().add(b * 512 + mi * 32);
            if SIGNED {
                _mm256_storeu_si256(dst as *mut __m256i, _mm256_loadu_si256(blk.add(2) as *const __m256i));
            } else {
                let q = _mm_loadu_si128(blk.add(2) as *const __m128i);
                _mm_storeu_si128(dst as *mut __m128i, _mm_sub_epi8(_mm_and_si128(q, mask), eight));
                _mm_storeu_si128(dst.add(16) as *mut __m128i, _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), mask), eight));
            }
            // F16C in line (the `half` crate's conversion is a call per block).
            let h = (blk as *const u16).read_unaligned();
            slab.dw[b * TILE + mi] = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)));
        }
    }
}

/// Starts one block's tile product on tile set `SET` (0: tmm0-2, 1: tmm3-5): loads A and B,
/// C = A · B. [`tile_store`] writes C out later, so the product runs meanwhile.
#[inline(always)]
unsafe fn tile_dot<const SET: usize>(ap: *const u8, sa: usize, bp: *const i8) {
    macro_rules! run {
        ($op:literal, $c:literal, $a:literal, $b:literal) => {
            asm!(
                concat!("tileloadd ", $a, ", [{a} + {sa}*1]"),
                concat!("tileloadd ", $b, ", [{b} + {sb}*1]"),
                concat!("tilezero ", $c),
                concat!($op, " ", $c, ", ", $a, ", ", $b),
                a = in(reg) ap, sa = in(reg) sa, b = in(reg) bp, sb = in(reg) 64usize,
                options(nostack, readonly),
            )
        };
    }
    if SET == 0 {
        run!("tdpbssd", "tmm0", "tmm1", "tmm2")
    } else {
        run!("tdpbssd", "tmm3", "tmm4", "tmm5")
    }
}

/// C of tile set `SET` → `c` (16 × 16 i32, 64-byte rows).
#[inline(always)]
unsafe fn tile_store<const SET: usize>(c: *mut i32) {
    if SET == 0 {
        asm!("tilestored [{c} + {sc}*1], tmm0", c = in(reg) c, sc = in(reg) 64usize, options(nostack));
    } else {
        asm!("tilestored [{c} + {sc}*1], tmm3", c = in(reg) c, sc = in(reg) 64usize, options(nostack));
    }
}

/// Prefetches the next slab's weight rows into L2 a few lines at a time while this slab
/// computes, so that packing it does not wait on memory line by line (the weights stream from
/// DRAM once per prompt pass; measured, packing was ~17% of a 128-token Q4_0 prompt's samples,
/// mostly waiting on those reads).
struct SlabPrefetch {
    base: *const u8,
    end: *const u8,
    row_bytes: usize,
    per_row: usize,
    lines: usize,
    next: usize,
    per_call: usize,
}

impl SlabPrefetch {
    /// Rows `r0 .. r1` of `w`, spread over `calls` calls of [`Self::step`].
    fn new(w: &WeightRef, r0: usize, r1: usize, calls: usize) -> Self {
        let row_bytes = w.row_bytes();
        // A row not starting on a line covers one line more than its length needs.
        let per_row = row_bytes.div_ceil(64) + 1;
        let lines = r1.saturating_sub(r0) * per_row;
        let base = w.data.as_ptr().wrapping_add(r0.min(w.rows) * row_bytes);
        let end = w.data.as_ptr().wrapping_add(w.data.len());
        SlabPrefetch { base, end, row_bytes, per_row, lines, next: 0, per_call: lines.div_ceil(calls.max(1)) }
    }

    #[inline(always)]
    unsafe fn step(&mut self) {
        let stop = (self.next + self.per_call).min(self.lines);
        while self.next < stop {
            let (r, k) = (self.next / self.per_row, self.next % self.per_row);
            let p = self.base.wrapping_add(r * self.row_bytes + (64 * k).min(self.row_bytes - 1));
            if p < self.end {
                _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
            }
            self.next += 1;
        }
    }
}

#[target_feature(enable = "avx512f,avx2,f16c")]
unsafe fn rows_amx<const SIGNED: bool>(w: &WeightRef, a: &Activations, rows: Range<usize>, tiles: Range<usize>, out: OutPtr, slab: &mut Slab) {
    let nb = w.cols / 32;
    slab.a.resize(nb * 512);
    slab.dw.resize(nb * TILE, 0.0);
    slab.acc.resize(8 * TILE * TILE);
    let mut c = [CTile([0; 256]), CTile([0; 256])];
    asm!("ldtilecfg [{0}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly));
    let mut r0 = rows.start;
    while r0 < rows.end {
        let m = (rows.end - r0).min(TILE);
        pack_slab::<SIGNED>(w, r0, m, slab);
        let mut pf = SlabPrefetch::new(w, r0 + m, (r0 + m + TILE).min(rows.end), tiles.len() * 8);
        for tile in tiles.clone() {
            for l in 0..8 {
                pf.step();
                let mut acc = [_mm512_setzero_ps(); TILE];
                // Lane l takes blocks l, l + 8, …: `cnt` of them. Two tile sets in turn: while
                // the epilogue reads block j's results (stored one step earlier), the product
                // of block j + 2 runs and block j + 1's is written out.
                let cnt = if l < nb { (nb - l).div_ceil(8) } else { 0 };
                let ta = |j: usize| slab.a.as_ptr().add((l + 8 * j) * 512);
                let tb = |j: usize| a.tb.as_ptr().add((tile * nb + l + 8 * j) * 512);
                if cnt > 0 {
                    tile_dot::<0>(ta(0), 32, tb(0));
                    tile_store::<0>(c[0].0.as_mut_ptr());
                }
                if cnt > 1 {
                    tile_dot::<1>(ta(1), 32, tb(1));
                }
                for j in 0..cnt {
                    if j + 1 < cnt {
                        if j % 2 == 0 {
                            tile_store::<1>(c[1].0.as_mut_ptr());
                        } else {
                            tile_store::<0>(c[0].0.as_mut_ptr());
                        }
                    }
                    if j + 2 < cnt {
                        if j % 2 == 0 {
                            tile_dot::<0>(ta(j + 2), 32, tb(j + 2));
                        } else {
                            tile_dot::<1>(ta(j + 2), 32, tb(j + 2));
                        }
                    }
                    let b = l + 8 * j;
                    let dx = _mm512_loadu_ps(a.td.as_ptr().add((tile * nb + b) * TILE));
                    let cb = c[j % 2].0.as_ptr();
                    for (mi, acc_m) in acc.iter_mut().enumerate() {
                        let isum = _mm512_load_si512(cb.add(mi * TILE) as *const __m512i);
                        let s = _mm512_mul_ps(_mm512_set1_ps(*slab.dw.get_unchecked(b * TILE + mi)), dx);
                        *acc_m = _mm512_add_ps(*acc_m, _mm512_mul_ps(s, _mm512_cvtepi32_ps(isum)));
                    }
                }
                for (mi, acc_m) in acc.iter().enumerate() {
                    _mm512_storeu_ps(slab.acc.as_mut_ptr().add((l * TILE + mi) * TILE), *acc_m);
                }
            }
            // The fixed lane reduction ([`super::reduce8`]: the same adds in the same order) for
            // the 16 tokens of a row at once (measured: ~7% off a 128-token Q4_0 product against
            // one output at a time).
            let t0 = tile * TILE;
            let mut ys = [_mm512_setzero_ps(); TILE];
            for (mi, y) in ys.iter_mut().enumerate().take(m) {
                // (No closures: they would not inherit the target features, and the adds would
                // be calls.)
                let mut l = [_mm512_setzero_ps(); 8];
                for (k, lk) in l.iter_mut().enumerate() {
                    *lk = _mm512_loadu_ps(slab.acc.as_ptr().add((k * TILE + mi) * TILE));
                }
                let h = [_mm512_add_ps(l[0], l[4]), _mm512_add_ps(l[1], l[5]), _mm512_add_ps(l[2], l[6]), _mm512_add_ps(l[3], l[7])];
                *y = _mm512_add_ps(_mm512_add_ps(h[0], h[2]), _mm512_add_ps(h[1], h[3]));
            }
            super::avx512::store_block16(out, t0, TILE.min(a.tokens - t0), r0, m, &ys);
        }
        r0 += m;
    }
    asm!("tilerelease", options(nostack, nomem));
}


/// K-quant rows `r0 .. r0 + m` into A tiles with the sub-block scales folded in: each value's
/// `p = sc_j · q` (Q4_K: q, Q5_K: q with its fifth bit, Q6_K: q − 32; |p| ≤ 4096) split as
/// `p = 64 · hi + lo` with `lo = p & 63`, `hi = p >> 6` (both fit i8), so that one super-block's
/// integer sum `isum = Σ_j sc_j · Σ_k q·x = 64 · Σ hi·x + Σ lo·x` comes out of two tile
/// accumulators over its 256 values, exactly. Layout: per super-block b, part (0: hi, 1: lo) and
/// chunk c of 64 values, 16 rows × 64 bytes at `((b · 2 + part) · 4 + c) · 1024`. Also d (and
/// dmin, and the mins two per i32) per row; missing rows are zeros.
#[target_feature(enable = "avx2,f16c")]
unsafe fn pack_kslab<const KIND: u8>(w: &WeightRef, r0: usize, m: usize, slab: &mut Slab) {
    let nsb = w.cols / 256;
    let bytes = super::x86::k_dtype(KIND).type_size();
    if m < TILE {
        slab.a.fill(0);
        slab.dw.fill(0.0);
        slab.dmin.fill(0.0);
        slab.mins.fill(0);
    }
    let m4 = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    let three = _mm256_set1_epi8(3);
    let x32 = _mm256_set1_epi8(32);
    let abase = slab.a.as_mut_ptr();
    for mi in 0..m {
        let row = w.row(r0 + mi);
        for b in 0..nsb {
            let blk = &row[b * bytes..(b + 1) * bytes];
            // Values e .. e + 16 (one 128-bit register of i8) times the scale `sc`, split.
            let put = |e: usize, q: __m128i, sc: i16| {
                let p = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(q), _mm256_set1_epi16(sc));
                let hi = _mm256_srai_epi16::<6>(p);
                let lo = _mm256_and_si256(p, _mm256_set1_epi16(63));
                let pack = |v: __m256i| _mm_packs_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
                let at = |part: usize| abase.add(((b * 2 + part) * 4 + e / 64) * 1024 + mi * 64 + e % 64);
                _mm_storeu_si128(at(0) as *mut __m128i, pack(hi));
                _mm_storeu_si128(at(1) as *mut __m128i, pack(lo));
            };
            if KIND == K6 {
                slab.dw[b * TILE + mi] = super::f16_at(blk, 208);
                for n in 0..2 {
                    let qh = load32(blk.as_ptr().add(128 + 32 * n));
                    for grp in 0..4 {
                        let ql = load32(blk.as_ptr().add(64 * n + 32 * (grp % 2)));
                        let lo = if grp < 2 { _mm256_and_si256(ql, m4) } else { _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4) };
                        let hi = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * grp as i32)), three);
                        let q = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), x32);
                        let s = 8 * n + 2 * grp;
                        put(16 * s, _mm256_castsi256_si128(q), blk[192 + s] as i8 as i16);
                        put(16 * s + 16, _mm256_extracti128_si256::<1>(q), blk[192 + s + 1] as i8 as i16);
                    }
                }
            } else {
                slab.dw[b * TILE + mi] = super::f16_at(blk, 0);
                slab.dmin[b * TILE + mi] = super::f16_at(blk, 2);
                let qs_off = if KIND == K5 { 48 } else { 16 };
                let qh = if KIND == K5 { load32(blk.as_ptr().add(16)) } else { _mm256_setzero_si256() };
                for j in 0..8 {
                    let (sc, mn) = super::scale_min_k4(j, &blk[4..16]);
                    let pair = &mut slab.mins[(b * 4 + j / 2) * TILE + mi];
                    *pair = if j % 2 == 0 { mn as i32 } else { *pair | (mn as i32) << 16 };
                    let q = load32(blk.as_ptr().add(qs_off + 32 * (j / 2)));
                    let mut v = if j % 2 == 0 { _mm256_and_si256(q, m4) } else { _mm256_and_si256(_mm256_srli_epi16(q, 4), m4) };
                    if KIND == K5 {
                        let bit = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(j as i32)), one);
                        v = _mm256_or_si256(v, _mm256_slli_epi16(bit, 4));
                    }
                    put(32 * j, _mm256_castsi256_si128(v), sc as i16);
                    put(32 * j + 16, _mm256_extracti128_si256::<1>(v), sc as i16);
                }
            }
        }
    }
}

#[inline(always)]
unsafe fn load32(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// The tile configuration of [`rows_amx_k`]: tmm0-1 and tmm2-3 two sets of the hi and lo
/// accumulators (16 × 16 i32), tmm4-5 the hi and lo A tiles, tmm6 the B tile (16 rows × 64
/// bytes each: 64 values of the dot products at a time).
const CONFIG_K: TileConfig = {
    let mut c = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
    let mut i = 0;
    while i < 7 {
        c.colsb[i] = 64;
        c.rows[i] = 16;
        i += 1;
    }
    c
};

/// One super-block's products on accumulator set `SET`: `C_hi = Σ_c A_hi[c] · B[c]`, `C_lo`
/// likewise, over its 4 chunks of 64 values (`a` the hi chunks, `a + 4096` the lo ones; `b`
/// the activation tile of its first 64 values, 1024 bytes per chunk). The accumulators stay in
/// their tile registers from one `asm!` block to the next.
#[inline(always)]
unsafe fn ksb_dots<const SET: usize>(a: *const u8, b: *const i8) {
    macro_rules! run {
        ($h:literal, $l:literal) => {{
            asm!(concat!("tilezero ", $h), concat!("tilezero ", $l), options(nostack, nomem));
            for c in 0..4 {
                asm!(
                    "tileloadd tmm6, [{b} + {s}*1]",
                    "tileloadd tmm4, [{a} + {s}*1]",
                    "tileloadd tmm5, [{a} + {s}*1 + 4096]",
                    concat!("tdpbssd ", $h, ", tmm4, tmm6"),
                    concat!("tdpbssd ", $l, ", tmm5, tmm6"),
                    a = in(reg) a.add(1024 * c), b = in(reg) b.add(1024 * c), s = in(reg) 64usize,
                    options(nostack, readonly),
                )
            }
        }};
    }
    if SET == 0 {
        run!("tmm0", "tmm1")
    } else {
        run!("tmm2", "tmm3")
    }
}

/// The hi and lo accumulators of set `SET` → `c[0..256]` and `c[256..512]`.
#[inline(always)]
unsafe fn ksb_store<const SET: usize>(c: *mut i32) {
    if SET == 0 {
        asm!("tilestored [{c} + {s}*1], tmm0", "tilestored [{c} + {s}*1 + 1024], tmm1", c = in(reg) c, s = in(reg) 64usize, options(nostack));
    } else {
        asm!("tilestored [{c} + {s}*1], tmm2", "tilestored [{c} + {s}*1 + 1024], tmm3", c = in(reg) c, s = in(reg) 64usize, options(nostack));
    }
}

/// Q4_K / Q5_K / Q6_K rows against the activation tiles: per super-block, `isum = 64 · C_hi +
/// C_lo` (see [`pack_kslab`]; the same integer as the scalar twin's `Σ_j sc_j · Σ q·x`), then
/// (Q4_K / Q5_K) `msum = Σ_j m_j · (pair sums)` and `acc += (d·dx)·isum − (dmin·dx)·msum`,
/// (Q6_K) `acc += (d·dx)·isum`: the scalar twin's operations, in super-block order. While one
/// super-block's epilogue runs, the next one's products run on the other accumulator set.
#[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
unsafe fn rows_amx_k<const KIND: u8>(w: &WeightRef, a: &Activations, rows: Range<usize>, out: OutPtr, slab: &mut Slab) {
    let nsb = w.cols / 256;
    let nb32 = w.cols / 32;
    let tiles = a.tokens.div_ceil(TILE);
    slab.a.resize(nsb * 8 * 1024);
    slab.dw.resize(nsb * TILE, 0.0);
    slab.dmin.resize(nsb * TILE, 0.0);
    slab.mins.resize(nsb * 4 * TILE, 0);
    let mut c = [CTile([0; 256]), CTile([0; 256]), CTile([0; 256]), CTile([0; 256])];
    asm!("ldtilecfg [{0}]", in(reg) &CONFIG_K as *const TileConfig, options(nostack, readonly));
    let mut r0 = rows.start;
    while r0 < rows.end {
        let m = (rows.end - r0).min(TILE);
        pack_kslab::<KIND>(w, r0, m, slab);
        let mut pf = SlabPrefetch::new(w, r0 + m, (r0 + m + TILE).min(rows.end), tiles);
        for tile in 0..tiles {
            pf.step();
            let ta = |b: usize| slab.a.as_ptr().add(b * 8 * 1024);
            let tb = |b: usize| a.tb.as_ptr().add((tile * nb32 + 8 * b) * 512);
            let mut acc = [_mm512_setzero_ps(); TILE];
            ksb_dots::<0>(ta(0), tb(0));
            for b in 0..nsb {
                // Super-block b's accumulators out (set b % 2), b + 1's products started.
                let cb = c[2 * (b % 2)].0.as_mut_ptr();
                if b % 2 == 0 {
                    ksb_store::<0>(cb);
                } else {
                    ksb_store::<1>(cb);
                }
                if b + 1 < nsb {
                    if b % 2 == 0 {
                        ksb_dots::<1>(ta(b + 1), tb(b + 1));
                    } else {
                        ksb_dots::<0>(ta(b + 1), tb(b + 1));
                    }
                }
                let (hi, lo) = (cb as *const i32, (cb as *const i32).add(256));
                let dx = _mm512_loadu_ps(a.td.as_ptr().add((tile * nsb + b) * TILE));
                let mut ps = [_mm512_setzero_si512(); 4];
                if KIND != K6 {
                    for (jj, pj) in ps.iter_mut().enumerate() {
                        *pj = _mm512_loadu_si512(a.tbs.as_ptr().add(((tile * nsb + b) * 4 + jj) * 2 * TILE) as *const __m512i);
                    }
                }
                for (mi, acc_m) in acc.iter_mut().enumerate() {
                    let h = _mm512_loadu_si512(hi.add(mi * TILE) as *const __m512i);
                    let l = _mm512_loadu_si512(lo.add(mi * TILE) as *const __m512i);
                    let is = _mm512_add_epi32(_mm512_slli_epi32::<6>(h), l);
                    let d = _mm512_set1_ps(*slab.dw.get_unchecked(b * TILE + mi));
                    let av = _mm512_mul_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(is));
                    if KIND == K6 {
                        *acc_m = _mm512_add_ps(*acc_m, av);
                    } else {
                        // msum = Σ_j m_j · (pair sum j), exact in i32: two sub-blocks per
                        // `vpmaddwd` (6-bit mins times sums within i16).
                        let mut msum = _mm512_setzero_si512();
                        for (jj, p) in ps.iter().enumerate() {
                            let mn = _mm512_set1_epi32(*slab.mins.get_unchecked((b * 4 + jj) * TILE + mi));
                            msum = _mm512_add_epi32(msum, _mm512_madd_epi16(mn, *p));
                        }
                        let dmin = _mm512_set1_ps(*slab.dmin.get_unchecked(b * TILE + mi));
                        let mv = _mm512_mul_ps(_mm512_mul_ps(dmin, dx), _mm512_cvtepi32_ps(msum));
                        *acc_m = _mm512_add_ps(*acc_m, _mm512_sub_ps(av, mv));
                    }
                }
            }
            let t0 = tile * TILE;
            super::avx512::store_block16(out, t0, TILE.min(a.tokens - t0), r0, m, &acc);
        }
        r0 += m;
    }
    asm!("tilerelease", options(nostack, nomem));
}
