//! `readBandwidth`: the machine's memory read bandwidth, for benchmarks (see `phi2::probe`).

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
