//! Where a model runs: the CPU (the engine's own kernels, [`crate::kernels`]) or an NVIDIA GPU
//! through candle's CUDA device (built with the `cuda` feature).
//!
//! On CUDA the same [`crate::Phi2`] runs the same file: matrices go to the device in their file
//! type (quantized ones stay quantized: candle's MMVQ/MMQ kernels; F16/BF16 through cuBLAS), the
//! KV cache lives on the device, attention takes its scores and softmax in f32. Only the token
//! embedding stays in the (mapped) file: a pass uploads its rows, and reads back the logits.

use candle_core::Device;

use crate::error::{Error, Result};

/// A backend a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    /// The NVIDIA GPU with this ordinal.
    Cuda(usize),
    /// The CPU running the GPU's code path: every matrix through candle's ops (no kernels of
    /// ours), KV cache as candle tensors, attention by candle's matmul and softmax. Slow; it is
    /// there so that the path CUDA runs is checked against the engine on machines without a GPU
    /// (tests/reference_path.rs).
    CpuReference,
}

impl Backend {
    /// `"cpu"`, `"cuda"` (= `"cuda:0"`) or `"cuda:N"`.
    pub fn parse(s: &str) -> Result<Backend> {
        match s {
            "cpu" => Ok(Backend::Cpu),
            "cuda" => Ok(Backend::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Backend::Cuda)
                .ok_or_else(|| Error::invalid("backend", format!("expected \"cpu\", \"cuda\" or \"cuda:N\", got {s:?}"))),
        }
    }

    /// The candle device for this backend. CUDA devices are made once per ordinal and process and
    /// shared by every model on them (one context, stream, cuBLAS handle and set of loaded kernel
    /// modules), so loading and disposing models does not pile up driver state.
    pub fn device(self) -> Result<Device> {
        match self {
            Backend::Cpu | Backend::CpuReference => Ok(Device::Cpu),
            Backend::Cuda(ordinal) => cuda::device(ordinal),
        }
    }
}

impl Backend {
    /// Whether the engine's own kernels run the products and attention (the CPU), rather than
    /// candle's ops.
    pub fn own_kernels(self) -> bool {
        self == Backend::Cpu
    }
}

/// Whether this build has the CUDA backend at all (the `cuda` feature).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// A device as users read it: `"cpu"`, `"cuda:0 (NVIDIA H200, compute 9.0)"`.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => cuda::describe(d),
        #[allow(unreachable_patterns)]
        other => format!("{other:?}"),
    }
}

/// Free and total memory of CUDA device `ordinal` in bytes, as the driver reports them.
pub fn cuda_memory(ordinal: usize) -> Result<(usize, usize)> {
    cuda::memory(ordinal)
}

/// The memory bandwidth of CUDA device `ordinal` in GB/s, counting bytes read and written: the
/// best of `passes` device-to-device copies of `bytes` (benchmarks: a batch-1 decode step reads
/// every weight once, so bytes per token over this is its ceiling; a copy reads and writes, and a
/// GPU sustains about the same rate either way).
pub fn cuda_copy_bandwidth(ordinal: usize, bytes: usize, passes: usize) -> Result<f64> {
    use candle_core::{DType, Tensor};
    let device = Backend::Cuda(ordinal).device()?;
    let n = (bytes / 4).max(1);
    let src = Tensor::ones(n, DType::F32, &device)?;
    let dst = Tensor::zeros(n, DType::F32, &device)?;
    let mut best = f64::INFINITY;
    for _ in 0..passes.max(1) {
        device.synchronize()?;
        let t = std::time::Instant::now();
        dst.slice_set(&src, 0, 0)?;
        device.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n * 4) as f64 / best / 1e9)
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use candle_core::{CudaDevice, Device};

    use crate::error::{Error, Result};

    fn unavailable(ordinal: usize, e: impl std::fmt::Display) -> Error {
        Error::BackendUnavailable { backend: "cuda", why: format!("CUDA device {ordinal}: {e}") }
    }

    pub(super) fn device(ordinal: usize) -> Result<Device> {
        static DEVICES: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();
        let mut devices = DEVICES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = devices.get(&ordinal) {
            return Ok(d.clone());
        }
        // cudarc panics on some driver failures rather than returning them; a panic must not
        // cross into JavaScript, and a missing device is an answer, not a crash.
        let made = std::panic::catch_unwind(|| Device::new_cuda(ordinal)).map_err(|p| {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            unavailable(ordinal, msg.unwrap_or_else(|| "the CUDA driver failed".into()))
        })?;
        let d = made.map_err(|e| match e {
            // The message alone: a backtrace of the loading thread says nothing to a user.
            candle_core::Error::WithBacktrace { inner, .. } => unavailable(ordinal, inner),
            e => unavailable(ordinal, e),
        })?;
        devices.insert(ordinal, d.clone());
        Ok(d)
    }

    pub(super) fn describe(d: &CudaDevice) -> String {
        let stream = d.cuda_stream();
        let ctx = stream.context();
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        match ctx.compute_capability() {
            Ok((major, minor)) => format!("cuda:{} ({name}, compute {major}.{minor})", ctx.ordinal()),
            Err(_) => format!("cuda:{} ({name})", ctx.ordinal()),
        }
    }

    pub(super) fn memory(ordinal: usize) -> Result<(usize, usize)> {
        match device(ordinal)? {
            Device::Cuda(d) => d.cuda_stream().context().mem_get_info().map_err(|e| unavailable(ordinal, e)),
            _ => unreachable!("device() makes CUDA devices"),
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use candle_core::Device;

    use crate::error::{Error, Result};

    fn not_built() -> Error {
        Error::BackendUnavailable {
            backend: "cuda",
            why: "this build of the engine has no CUDA backend (it was built without the `cuda` feature)".into(),
        }
    }

    pub(super) fn device(_ordinal: usize) -> Result<Device> {
        Err(not_built())
    }

    pub(super) fn memory(_ordinal: usize) -> Result<(usize, usize)> {
        Err(not_built())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backends() {
        assert_eq!(Backend::parse("cpu").unwrap(), Backend::Cpu);
        assert_eq!(Backend::parse("cuda").unwrap(), Backend::Cuda(0));
        assert_eq!(Backend::parse("cuda:3").unwrap(), Backend::Cuda(3));
        for bad in ["", "gpu", "cuda:", "cuda:x", "cuda:-1", "CPU"] {
            let e = Backend::parse(bad).unwrap_err();
            assert_eq!(e.code(), "E_INVALID_ARGUMENT", "{bad:?}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_typed_error() {
        let e = Backend::Cuda(0).device().unwrap_err();
        assert_eq!(e.code(), "E_BACKEND_UNAVAILABLE");
        assert!(e.to_string().contains("without the `cuda` feature"), "{e}");
        assert_eq!(cuda_memory(0).unwrap_err().code(), "E_BACKEND_UNAVAILABLE");
        assert_eq!(cuda_copy_bandwidth(0, 1 << 20, 1).unwrap_err().code(), "E_BACKEND_UNAVAILABLE");
    }
}
