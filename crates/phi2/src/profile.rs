//! Where a forward pass's time goes, phase by phase: opt-in, for finding what to make faster on a
//! backend (the CUDA device above all, where issue 12's own kernels are to go where this shows
//! they matter). On when the process starts with `PHI2_PROFILE=1`; off otherwise, and then a
//! pass costs one relaxed atomic load (in [`Pass::start`]) and each phase a test of its `None`.
//!
//! Each phase of [`crate::Phi2::forward`] (and of a batch pass) is timed on the host's clock
//! after waiting for the device ([`candle_core::Device::synchronize`]: a no-op on the CPU), so a
//! GPU's asynchronous work is counted in the phase that queued it. The waits themselves cost
//! something on a GPU (tens of microseconds each, 5 per layer and 3 per pass), so a profiled pass is slower
//! than an unprofiled one; the shares between phases are what to read. Totals are per kind of
//! pass: one-token passes (decode) and passes of several tokens (prompts, speculative
//! verification, batches), and per process ([`snapshot`], [`reset`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use candle_core::Device;

/// How many [`Phase`]s there are.
const N_PHASES: usize = 7;

/// The phases of a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Token embedding, the rotary tables and the first LayerNorm.
    Embed,
    /// q, k, v and fc1 (with its GELU): the products of the layer input.
    Project,
    /// Rotary embedding, the KV cache's new rows, attention.
    Attend,
    /// The attention output's product.
    Dense,
    /// The MLP's down product.
    Fc2,
    /// The residual sum and the next layer's LayerNorm.
    Residual,
    /// The final LayerNorm and the vocabulary product.
    Head,
}

impl Phase {
    pub const ALL: [Phase; N_PHASES] = [Phase::Embed, Phase::Project, Phase::Attend, Phase::Dense, Phase::Fc2, Phase::Residual, Phase::Head];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Embed => "embed",
            Phase::Project => "project",
            Phase::Attend => "attend",
            Phase::Dense => "dense",
            Phase::Fc2 => "fc2",
            Phase::Residual => "residual",
            Phase::Head => "head",
        }
    }
}

/// Nanoseconds and calls per (kind of pass, phase); kind 0: one-token passes, 1: the others.
static NANOS: [[AtomicU64; N_PHASES]; 2] = [const { [const { AtomicU64::new(0) }; N_PHASES] }; 2];
static CALLS: [[AtomicU64; N_PHASES]; 2] = [const { [const { AtomicU64::new(0) }; N_PHASES] }; 2];
/// Passes per kind, and their tokens.
static PASSES: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
static TOKENS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

/// Whether passes are profiled (`PHI2_PROFILE=1` when first asked); [`set_enabled`] overrides.
pub fn enabled() -> bool {
    static FROM_ENV: std::sync::Once = std::sync::Once::new();
    FROM_ENV.call_once(|| {
        if std::env::var("PHI2_PROFILE").is_ok_and(|v| v == "1") {
            ENABLED.store(true, Relaxed);
        }
    });
    ENABLED.load(Relaxed)
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns profiling on or off for later passes (tools and tests; users set `PHI2_PROFILE=1`).
pub fn set_enabled(on: bool) {
    enabled();
    ENABLED.store(on, Relaxed);
}

/// One profiled forward pass: `None` when profiling is off.
#[derive(Debug, Clone, Copy)]
pub struct Pass<'a> {
    kind: usize,
    device: &'a Device,
}

impl<'a> Pass<'a> {
    /// A pass of `tokens` tokens on `device` (waits for the device's earlier work first).
    pub fn start(tokens: usize, device: &'a Device) -> Option<Pass<'a>> {
        // wasm32 has no clock in std (`Instant::now` panics there): never profiled.
        if cfg!(target_arch = "wasm32") || !enabled() {
            return None;
        }
        let _ = device.synchronize();
        let kind = usize::from(tokens != 1);
        PASSES[kind].fetch_add(1, Relaxed);
        TOKENS[kind].fetch_add(tokens as u64, Relaxed);
        Some(Pass { kind, device })
    }
}

/// Runs `f` as `phase` of `pass`: timed until the device has finished what it queued.
#[inline]
pub fn time<R>(pass: Option<Pass<'_>>, phase: Phase, f: impl FnOnce() -> R) -> R {
    let Some(p) = pass else { return f() };
    let t0 = Instant::now();
    let r = f();
    let _ = p.device.synchronize();
    let i = phase as usize;
    NANOS[p.kind][i].fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
    CALLS[p.kind][i].fetch_add(1, Relaxed);
    r
}

/// One row of [`snapshot`].
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseTotal {
    /// `"decode"` (one-token passes) or `"batch"` (passes of several tokens).
    pub pass: &'static str,
    pub phase: &'static str,
    pub ms: f64,
    pub calls: u64,
    /// Passes of this kind and their tokens, repeated on each of its rows.
    pub passes: u64,
    pub tokens: u64,
}

/// The totals since the process started or [`reset`], phases with no call left out.
pub fn snapshot() -> Vec<PhaseTotal> {
    let mut out = Vec::new();
    for (kind, pass) in ["decode", "batch"].into_iter().enumerate() {
        for phase in Phase::ALL {
            let i = phase as usize;
            let calls = CALLS[kind][i].load(Relaxed);
            if calls > 0 {
                let ms = NANOS[kind][i].load(Relaxed) as f64 / 1e6;
                out.push(PhaseTotal { pass, phase: phase.name(), ms, calls, passes: PASSES[kind].load(Relaxed), tokens: TOKENS[kind].load(Relaxed) });
            }
        }
    }
    out
}

/// Sets every total back to zero.
pub fn reset() {
    for kind in 0..2 {
        for i in 0..N_PHASES {
            NANOS[kind][i].store(0, Relaxed);
            CALLS[kind][i].store(0, Relaxed);
        }
        PASSES[kind].store(0, Relaxed);
        TOKENS[kind].store(0, Relaxed);
    }
}
