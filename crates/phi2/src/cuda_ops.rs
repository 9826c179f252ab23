//! CUDA operations of our own, where candle's differ from the CPU's definition.
//!
//! - [`matmul_f32_out`]: `x · Wᵀ` for F16 / BF16 weights with the activation rounded to the
//!   weight's type (as on the CPU) but the output kept in f32. candle's 16-bit product writes
//!   16-bit outputs, which moves Phi-2's log-probs by ~1e-2 (measured on the CPU reference path,
//!   tests/reference_path.rs); cuBLAS's GemmEx with an f32 output and f32 accumulation does not.
//!
//! Built with the `cuda` feature only. Not yet run on a GPU (test/device checks it).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc;
use candle_core::cuda_backend::cudarc::cublas::sys;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use half::{bf16, f16};

/// `x · wᵀ` in f32: x `[T, K]` and w `[N, K]`, both F16 or both BF16, contiguous, on one CUDA
/// device → `[T, N]` f32.
pub fn matmul_f32_out(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2_no_bwd(w, &MatmulF32Out)
}

struct MatmulF32Out;

impl CustomOp2 for MatmulF32Out {
    fn name(&self) -> &'static str {
        "phi2-matmul-f32-out"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("phi2-matmul-f32-out runs on CUDA only")
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, ws: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        let (t, k) = xl.shape().dims2()?;
        let (n, k2) = wl.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("phi2-matmul-f32-out: x {:?} against w {:?}", xl.shape(), wl.shape());
        }
        let (Some(xo), Some(wo)) = (xl.contiguous_offsets(), wl.contiguous_offsets()) else {
            candle_core::bail!("phi2-matmul-f32-out: x and w must be contiguous");
        };
        let y = match (xs.dtype(), ws.dtype()) {
            (DType::F16, DType::F16) => gemm::<f16>(xs, xo, ws, wo, (t, n, k), sys::cudaDataType_t::CUDA_R_16F)?,
            (DType::BF16, DType::BF16) => gemm::<bf16>(xs, xo, ws, wo, (t, n, k), sys::cudaDataType_t::CUDA_R_16BF)?,
            (a, b) => candle_core::bail!("phi2-matmul-f32-out: {a:?} x against {b:?} w (F16 or BF16, the same)"),
        };
        Ok((y, Shape::from((t, n))))
    }
}

/// Row-major `y[T, N] = x[T, K] · w[N, K]ᵀ` is column-major `yᵀ = w' · xᵀ`, with w (column-major
/// `[K, N]`) transposed: m = N, n = T, k = K, every leading dimension the row length.
fn gemm<T: CudaDType + cudarc::driver::DeviceRepr>(
    xs: &CudaStorage,
    xo: (usize, usize),
    ws: &CudaStorage,
    wo: (usize, usize),
    (t, n, k): (usize, usize, usize),
    ty: sys::cudaDataType_t,
) -> Result<CudaStorage> {
    let dev = xs.device().clone();
    let x = xs.as_cuda_slice::<T>()?.slice(xo.0..xo.1);
    let w = ws.as_cuda_slice::<T>()?.slice(wo.0..wo.1);
    let mut y = dev.alloc_zeros::<f32>(t * n)?;
    let stream = dev.cuda_stream();
    let cublas = dev.cublas_handle();
    let (alpha, beta) = (1f32, 0f32);
    let int = |v: usize| i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("phi2-matmul-f32-out: dimension {v} too large")));
    {
        let (xp, _gx) = x.device_ptr(&stream);
        let (wp, _gw) = w.device_ptr(&stream);
        let (yp, _gy) = y.device_ptr_mut(&stream);
        // SAFETY: the pointers are this stream's device buffers of the sizes given (x: T·K, w: N·K
        // values of `ty`, y: T·N f32), alive until the guards drop after the call is enqueued.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *cublas.handle(),
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                int(n)?,
                int(t)?,
                int(k)?,
                &alpha as *const f32 as *const _,
                wp as *const _,
                ty,
                int(k)?,
                xp as *const _,
                ty,
                int(k)?,
                &beta as *const f32 as *const _,
                yp as *mut _,
                sys::cudaDataType_t::CUDA_R_32F,
                int(n)?,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| candle_core::Error::Msg(format!("phi2-matmul-f32-out: cuBLAS GemmEx: {e:?}")))?;
    }
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}
