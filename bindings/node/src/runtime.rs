//! What this build of the addon can run on: `addonBackends()` (the loader reads it to tell the CPU
//! addon from the CUDA one) and `cudaMemory(ordinal)` (device checks: memory must not grow over
//! load / dispose cycles) and `cudaCopyBandwidth` (the benchmark's GPU ceiling).

use napi::bindgen_prelude::*;
use napi_derive::napi;

use super::{engine_err, guarded};

#[napi(object)]
pub struct NativeBackends {
    /// Built with candle's CUDA device (the `cuda` feature).
    pub cuda: bool,
}

#[napi]
pub fn addon_backends() -> NativeBackends {
    NativeBackends { cuda: phi2::device::CUDA_BUILT }
}

#[napi(object)]
pub struct NativeDeviceMemory {
    pub free: f64,
    pub total: f64,
}

/// Free and total memory of CUDA device `ordinal`, in bytes (`E_BACKEND_UNAVAILABLE` without
/// CUDA).
#[napi]
pub fn cuda_memory(ordinal: u32) -> Result<NativeDeviceMemory> {
    guarded("cudaMemory", || {
        let (free, total) = phi2::device::cuda_memory(ordinal as usize).map_err(engine_err)?;
        Ok(NativeDeviceMemory { free: free as f64, total: total as f64 })
    })
}

/// The memory bandwidth of CUDA device `ordinal` in GB/s (bytes read + written by the best of
/// `passes` device copies of `mib` MiB; `E_BACKEND_UNAVAILABLE` without CUDA). Blocks the calling
/// thread.
#[napi]
pub fn cuda_copy_bandwidth(ordinal: u32, mib: u32, passes: u32) -> Result<f64> {
    guarded("cudaCopyBandwidth", || {
        phi2::device::cuda_copy_bandwidth(ordinal as usize, (mib as usize) << 20, passes as usize).map_err(engine_err)
    })
}
