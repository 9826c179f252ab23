//! Row-parallel matrix products for hosts without candle's own thread pool (the multi-threaded
//! wasm build, whose threads are JS workers running a rayon pool). Off unless a host enables it;
//! native builds keep candle's pool. Splitting by output rows leaves every output element the
//! same dot product, so results do not depend on the thread count.
//!
//! - Quantized weights (`Matrix::Quant`): each chunk of weight rows goes through candle's own
//!   quantized kernel (`k_quants::matmul`, the one `QMatMul::forward` runs on wasm) on the
//!   sub-slice of its blocks. Chunks start on multiples of 4 rows, so the kernel groups columns
//!   into the same quads (`vec_dot_4`) and tail (`vec_dot_2` / `vec_dot`) as the whole product:
//!   bit-identical to the serial path wherever that path is `k_quants::matmul` (always on wasm).
//! - Dense weights (`Matrix::Dense`): candle's matmul on a row-narrowed weight, activations
//!   rounded to the weight dtype first exactly as in `Linear::forward`; chunks concatenated.
//!
//! The products run on the *current* rayon pool (`rayon::current_num_threads`): the global pool
//! in the wasm build, a pool entered with `ThreadPool::install` in tests.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use candle_core::quantized::k_quants::{self, GgmlType};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Tensor};
use rayon::prelude::*;

use crate::weights::Matrix;

static ENABLED: AtomicBool = AtomicBool::new(false);
static SPLIT_PRODUCTS: AtomicU64 = AtomicU64::new(0);

/// Fewest weight rows per chunk: below this the fork/join costs more than the rows' work.
/// (A multiple of 4: see the module notes on quads.)
pub const MIN_CHUNK_ROWS: usize = 64;
/// Chunks per pool thread, so that a thread slowed by the host (shared CPUs, browser tabs) does
/// not hold up the whole product.
const CHUNKS_PER_THREAD: usize = 4;

/// Turns row parallelism on or off (process-wide). Only hosts whose candle has no thread pool of
/// its own should turn it on (the wasm threads build, once its rayon pool exists).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Release);
}

/// Whether row parallelism is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// How many products have been split over the pool since start-up (a diagnostic: proves the
/// pool is used), ours ([`crate::kernels::pool`]) included.
pub fn split_products() -> u64 {
    SPLIT_PRODUCTS.load(Ordering::Relaxed)
}

/// Counts one product split over more than one thread.
pub(crate) fn note_split() {
    SPLIT_PRODUCTS.fetch_add(1, Ordering::Relaxed);
}

/// Weight-row ranges for `n` rows over `threads` threads: at least [`MIN_CHUNK_ROWS`] rows each,
/// every start a multiple of 4, the last chunk ending at `n`. `None` when splitting cannot pay
/// off (one thread, or too few rows for two chunks).
pub fn row_chunks(n: usize, threads: usize) -> Option<Vec<Range<usize>>> {
    if threads < 2 || n < 2 * MIN_CHUNK_ROWS {
        return None;
    }
    let chunks = (threads * CHUNKS_PER_THREAD).min(n / MIN_CHUNK_ROWS).max(2);
    // Rows per chunk rounded up to a multiple of 4; the last chunk takes what is left.
    let per = n.div_ceil(chunks).div_ceil(4) * 4;
    let ranges: Vec<_> = (0..n).step_by(per).map(|s| s..(s + per).min(n)).collect();
    (ranges.len() >= 2).then_some(ranges)
}

/// `x · wᵀ` split over the current rayon pool, or `None` when row parallelism is off or the
/// product is too small to split (the caller then uses candle's product). `x`: `[.., in]` f32;
/// result `[.., out]` f32, like `Linear::forward` before its bias.
pub fn matmul(x: &Tensor, w: &Matrix) -> Option<candle_core::Result<Tensor>> {
    if !enabled() {
        return None;
    }
    matmul_on_pool(x, w)
}

/// [`matmul`] without the enable switch (tests call it inside a pool of their own).
pub fn matmul_on_pool(x: &Tensor, w: &Matrix) -> Option<candle_core::Result<Tensor>> {
    if !x.device().is_cpu() {
        return None;
    }
    let threads = rayon::current_num_threads();
    let y = match w {
        Matrix::Quant(QMatMul::QTensor(q)) => {
            let (n, _) = q.shape().dims2().ok()?;
            let ranges = row_chunks(n, threads)?;
            quant(x, q, &ranges)
        }
        Matrix::Dense(wt) => {
            let (n, _) = wt.dims2().ok()?;
            let ranges = row_chunks(n, threads)?;
            Some(dense(x, wt, &ranges))
        }
        // Dequantized QMatMul forms (float ggml tensors, CANDLE_DEQUANTIZE_ALL): candle's path.
        Matrix::Quant(_) => None,
        // Our own kernels split their products themselves (`kernels::pool`).
        Matrix::Packed(_) => None,
    };
    if y.is_some() {
        SPLIT_PRODUCTS.fetch_add(1, Ordering::Relaxed);
    }
    y
}

/// Dense product per chunk of weight rows, as `Linear::forward` computes it for the whole matrix.
fn dense(x: &Tensor, w: &Tensor, ranges: &[Range<usize>]) -> candle_core::Result<Tensor> {
    let xd = if w.dtype() == DType::F32 { x.clone() } else { x.to_dtype(w.dtype())? };
    let parts = ranges
        .par_iter()
        .map(|r| {
            let y = xd.matmul(&w.narrow(0, r.start, r.len())?.t()?)?;
            if y.dtype() == DType::F32 {
                Ok(y)
            } else {
                y.to_dtype(DType::F32)
            }
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&parts, x.rank().saturating_sub(1))
}

/// Quantized product per chunk of weight rows through candle's `k_quants::matmul`. `None` (the
/// caller falls back to candle's product) for a type this does not cover or a layout it cannot
/// view as whole blocks.
fn quant(x: &Tensor, q: &QTensor, ranges: &[Range<usize>]) -> Option<candle_core::Result<Tensor>> {
    use k_quants::*;
    match q.dtype() {
        GgmlDType::Q4_0 => quant_typed::<BlockQ4_0>(x, q, ranges),
        GgmlDType::Q4_1 => quant_typed::<BlockQ4_1>(x, q, ranges),
        GgmlDType::Q5_0 => quant_typed::<BlockQ5_0>(x, q, ranges),
        GgmlDType::Q5_1 => quant_typed::<BlockQ5_1>(x, q, ranges),
        GgmlDType::Q8_0 => quant_typed::<BlockQ8_0>(x, q, ranges),
        GgmlDType::Q2K => quant_typed::<BlockQ2K>(x, q, ranges),
        GgmlDType::Q3K => quant_typed::<BlockQ3K>(x, q, ranges),
        GgmlDType::Q4K => quant_typed::<BlockQ4K>(x, q, ranges),
        GgmlDType::Q5K => quant_typed::<BlockQ5K>(x, q, ranges),
        GgmlDType::Q6K => quant_typed::<BlockQ6K>(x, q, ranges),
        _ => None,
    }
}

fn quant_typed<T: GgmlType>(x: &Tensor, q: &QTensor, ranges: &[Range<usize>]) -> Option<candle_core::Result<Tensor>> {
    let (n, k) = q.shape().dims2().ok()?;
    let dims = x.dims();
    // Everything `k_quants::matmul` asserts (it panics, and a panic aborts a wasm instance) is
    // checked here; anything unexpected goes to candle's own path, which reports errors.
    if T::BLCK_SIZE == 0 || T::BLCK_SIZE != T::VecDotType::BLCK_SIZE || k % T::BLCK_SIZE != 0 {
        return None;
    }
    if dims.last() != Some(&k) || x.dtype() != DType::F32 || ranges.last().map(|r| r.end) != Some(n) {
        return None;
    }
    let data = q.data().ok()?;
    let blocks = k / T::BLCK_SIZE;
    let size = std::mem::size_of::<T>();
    if data.len() != n * blocks * size || (data.as_ptr() as usize) % std::mem::align_of::<T>() != 0 {
        return None;
    }
    // SAFETY: CPU QTensor storage is a `Vec<T>` of exactly this type (checked: dtype, length,
    // alignment); ggml blocks are plain old data.
    let rhs: &[T] = unsafe { std::slice::from_raw_parts(data.as_ptr() as *const T, n * blocks) };
    Some((|| {
        let lhs = x.flatten_all()?.to_vec1::<f32>()?;
        let m = lhs.len() / k;
        let parts = ranges
            .par_iter()
            .map(|r| {
                let mut dst = vec![0f32; m * r.len()];
                k_quants::matmul((m, k, r.len()), &lhs, &rhs[r.start * blocks..r.end * blocks], &mut dst)?;
                Ok(dst)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut out = vec![0f32; m * n];
        for (r, part) in ranges.iter().zip(&parts) {
            for (row, src) in part.chunks_exact(r.len()).enumerate() {
                out[row * n + r.start..row * n + r.end].copy_from_slice(src);
            }
        }
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("checked: x has a last dim") = n;
        Tensor::from_vec(out, shape, x.device())
    })())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};

    /// Deterministic pseudo-random values in [-1, 1) (no RNG dependency, same on every host).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn tensor(rows: usize, cols: usize, seed: u64) -> Tensor {
        Tensor::from_vec(values(rows * cols, seed), (rows, cols), &Device::Cpu).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
    }

    fn on_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
    }

    fn par(x: &Tensor, w: &Matrix, threads: usize) -> Tensor {
        on_pool(threads, || matmul_on_pool(x, w).expect("split").unwrap())
    }

    /// The whole product through the same quantized kernel, serially.
    fn k_quants_whole(x: &Tensor, q: &QTensor) -> Vec<u32> {
        let (n, _) = q.shape().dims2().unwrap();
        // One "chunk": quant_typed's arithmetic without any split.
        let y = on_pool(1, || quant(x, q, &[0..n]).expect("covered type").unwrap());
        bits(&y)
    }

    const THREADS: [usize; 4] = [1, 2, 3, 7];

    #[test]
    fn chunks_cover_the_rows_on_quad_boundaries() {
        assert_eq!(row_chunks(1000, 1), None);
        assert_eq!(row_chunks(2 * MIN_CHUNK_ROWS - 1, 8), None);
        for n in [128, 129, 130, 131, 192, 256, 2560, 7680, 10240, 51200, 50257] {
            for t in [2, 3, 7, 16, 64] {
                let r = row_chunks(n, t).unwrap();
                assert!(r.len() >= 2 && r.len() <= t * CHUNKS_PER_THREAD, "{n} {t}: {r:?}");
                assert_eq!(r[0].start, 0);
                assert_eq!(r.last().unwrap().end, n);
                for w in r.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                for c in &r {
                    assert_eq!(c.start % 4, 0);
                    assert!(!c.is_empty());
                    assert!(c.len() >= MIN_CHUNK_ROWS || c.end == n, "{n} {t}: {r:?}");
                }
            }
        }
    }

    #[test]
    fn off_by_default_and_small_products_stay_serial() {
        // Nothing in this test binary enables it (tests call matmul_on_pool directly).
        assert!(matmul(&tensor(1, 64, 1), &Matrix::Dense(tensor(256, 64, 2))).is_none());
        let small = Matrix::Dense(tensor(100, 64, 3));
        assert!(on_pool(4, || matmul_on_pool(&tensor(1, 64, 1), &small)).is_none());
        assert!(on_pool(1, || matmul_on_pool(&tensor(1, 64, 1), &Matrix::Dense(tensor(4096, 64, 4)))).is_none());
    }

    #[test]
    fn quantized_products_are_bit_identical_across_thread_counts() {
        let types = [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ];
        // n not a multiple of 4 or of the chunk size: the tail columns are covered too.
        let (n, k) = (650, 512);
        for (i, dt) in types.into_iter().enumerate() {
            let q = std::sync::Arc::new(QTensor::quantize(&tensor(n, k, 10 + i as u64), dt).unwrap());
            let w = Matrix::Quant(QMatMul::from_arc(q.clone()).unwrap());
            for m in [1, 5] {
                let x = tensor(m, k, 100 + m as u64);
                let whole = k_quants_whole(&x, &q);
                for t in THREADS {
                    if t == 1 {
                        continue;
                    }
                    let y = par(&x, &w, t);
                    assert_eq!(y.dims(), &[m, n]);
                    assert!(bits(&y) == whole, "{dt:?} m={m} threads={t}: differs from the serial kernel");
                }
                // candle's own forward: the same kernel on wasm; on x86 it may take a repacked
                // kernel that rounds the activations differently, hence the tolerance (relative to
                // the row's magnitude, well below the quantization error of the weights).
                let serial = match &w {
                    Matrix::Quant(qm) => qm.forward(&x).unwrap(),
                    _ => unreachable!(),
                };
                let a = serial.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let scale = a.iter().fold(0f32, |s, v| s.max(v.abs()));
                let b: Vec<f32> = whole.iter().map(|&u| f32::from_bits(u)).collect();
                let d = a.iter().zip(&b).fold(0f32, |s, (a, b)| s.max((a - b).abs()));
                assert!(d <= 1e-2 * scale, "{dt:?} m={m}: |Δ| {d} vs candle forward (scale {scale})");
            }
        }
    }

    #[test]
    fn dense_products_match_candle_across_thread_counts() {
        let (n, k) = (650, 192);
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let w = tensor(n, k, 7).to_dtype(dt).unwrap();
            let m_ = Matrix::Dense(w.clone());
            for m in [1, 5] {
                let x = tensor(m, k, 200 + m as u64);
                // Linear::forward's serial product.
                let serial = if dt == DType::F32 {
                    x.matmul(&w.t().unwrap()).unwrap()
                } else {
                    x.to_dtype(dt).unwrap().matmul(&w.t().unwrap()).unwrap().to_dtype(DType::F32).unwrap()
                };
                let a = serial.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                // gemm picks its k-blocking from the product's shape, so a row-narrowed product
                // may sum in another order: not bit-identical in general. f32: the reassociation
                // bound γ_k·Σ|x·w| is ~5e-4 here, typical |Δ| ~1e-6; 1e-4 catches any real
                // error (a wrong row or column is off by ~1). f16/bf16 outputs are rounded to the
                // weight dtype by candle: one ulp at |y| < 16 is 2^-6 (f16) / 2^-4 (bf16), so a
                // last-bit difference in the f32 accumulator moves them by up to one such ulp.
                let tol = match dt {
                    DType::F32 => 1e-4,
                    DType::F16 => 1.6e-2,
                    _ => 6.3e-2,
                };
                for t in THREADS {
                    if t == 1 {
                        continue;
                    }
                    let y = par(&x, &m_, t);
                    assert_eq!(y.dims(), &[m, n]);
                    let b: Vec<f32> = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let exact = a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits());
                    let d = a.iter().zip(&b).fold(0f32, |s, (a, b)| s.max((a - b).abs()));
                    eprintln!("dense {dt:?} m={m} threads={t}: bit-identical to candle: {exact}, max |Δ| {d:e}");
                    assert!(d <= tol, "{dt:?} m={m} threads={t}: |Δ| {d} vs candle's serial product");
                }
            }
        }
    }

    #[test]
    fn three_dim_activations_and_fallbacks() {
        let q = std::sync::Arc::new(QTensor::quantize(&tensor(256, 64, 5), GgmlDType::Q8_0).unwrap());
        let w = Matrix::Quant(QMatMul::from_arc(q.clone()).unwrap());
        let x = tensor(3, 64, 6).reshape((1, 3, 64)).unwrap();
        let y = par(&x, &w, 3);
        assert_eq!(y.dims(), &[1, 3, 256]);
        let x2 = x.reshape((3, 64)).unwrap();
        assert_eq!(bits(&y), bits(&par(&x2, &w, 2)));
        // Mismatched inner size: not split (candle reports the error), never a panic.
        assert!(on_pool(2, || matmul_on_pool(&tensor(1, 32, 1), &w)).is_none());
    }
}
