//! `readBandwidth`: the machine's memory read bandwidth, for benchmarks (see `phi2::probe`); and
//! `profileSnapshot` / `profileReset` / `profileEnable`: where forward passes spend their time
//! (`phi2::profile`).

use napi::bindgen_prelude::*;
use napi_derive::napi;

use super::{coded, guarded};

/// Best-of-`passes` read bandwidth in GB/s of a `mib`-MiB buffer (2 MB pages where Linux gives
/// them) summed by `threads` threads of the engine's pool. Blocks the calling thread.
#[napi]
pub fn read_bandwidth(mib: u32, threads: u32, passes: u32) -> Result<f64> {
    if mib == 0 || threads == 0 || passes == 0 {
        return Err(coded("E_INVALID_ARGUMENT", format!("readBandwidth needs mib, threads and passes >= 1 (got {mib}, {threads}, {passes})")));
    }
    guarded("readBandwidth", || {
        phi2::probe::read_bandwidth((mib as usize) << 20, threads as usize, passes as usize)
            .map_err(|e| {
                let code = if e.kind() == std::io::ErrorKind::OutOfMemory { "E_OUT_OF_MEMORY" } else { "E_IO" };
                coded(code, format!("cannot allocate {mib} MiB for the bandwidth probe: {e}"))
            })
    })
}

/// One phase's totals of the engine's profile (`phi2::profile`): on when the process started with
/// `PHI2_PROFILE=1` (or after `profileEnable(true)`), for tools such as test/device/profile.mjs.
#[napi(object)]
pub struct NativeProfilePhase {
    /// `"decode"` (one-token passes) or `"batch"` (passes of several tokens).
    pub pass: String,
    /// embed, project, attend, dense, fc2, residual or head.
    pub phase: String,
    pub ms: f64,
    pub calls: f64,
    /// Passes of this kind so far and their tokens.
    pub passes: f64,
    pub tokens: f64,
}

/// The forward passes' time per phase since the process started or `profileReset()` (passes run
/// while profiling is off add nothing; what was recorded stays until `profileReset()`). The
/// devices are waited for at each phase's end, so profiled passes are slower.
#[napi]
pub fn profile_snapshot() -> Vec<NativeProfilePhase> {
    phi2::profile::snapshot()
        .into_iter()
        .map(|p| NativeProfilePhase { pass: p.pass.into(), phase: p.phase.into(), ms: p.ms, calls: p.calls as f64, passes: p.passes as f64, tokens: p.tokens as f64 })
        .collect()
}

/// Sets the profile's totals back to zero.
#[napi]
pub fn profile_reset() {
    phi2::profile::reset();
}

/// Turns the profile on or off for later passes; returns whether it is on.
#[napi]
pub fn profile_enable(on: bool) -> bool {
    phi2::profile::set_enabled(on);
    phi2::profile::enabled()
}
