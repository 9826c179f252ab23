//! Threads for the multi-threaded build (`pkg-mt`, cargo feature `threads`, built with
//! `+atomics,+bulk-memory` and a shared imported memory): a rayon global pool whose threads are
//! JS workers sharing this instance's memory. See CONTRACT.md for the start-up protocol:
//!
//! 1. the engine thread instantiates the module; its `memory` export is the shared memory;
//! 2. each of `n` thread workers calls `initSync({ module, memory })` and then `threadWorkerRun()`,
//!    which takes one rayon `ThreadBuilder` from a queue and runs it (blocks for ever);
//! 3. the engine thread calls `threadPoolBuild(n)`: rayon's `spawn_handler` queues the `n`
//!    builders, and the call returns once every worker has started its thread.
//!
//! After a pool of 2 or more threads exists, `phi2::par` splits matrix products by output rows
//! over it (each output element stays the same dot product, so results do not change).
//! The single-threaded build (`pkg`) exports the same functions: `threadsSupported()` is false
//! there and `threadPoolBuild` / `threadWorkerRun` throw `E_BACKEND`.

use wasm_bindgen::prelude::*;

use crate::{coded, invalid};

/// Most threads a pool may have (browsers cap workers well below this anyway).
const MAX_THREADS: u32 = 64;

/// Whether this build can run a thread pool (shared memory + atomics).
#[wasm_bindgen(js_name = threadsSupported)]
pub fn threads_supported() -> bool {
    pool::SUPPORTED
}

/// Threads in the pool (0 before `threadPoolBuild`).
#[wasm_bindgen(js_name = threadPoolSize)]
pub fn thread_pool_size() -> u32 {
    pool::size()
}

/// How many matrix products have been split over the pool so far (0 in `pkg`, or before the pool
/// has 2+ threads). A diagnostic: shows that the pool is really used.
#[wasm_bindgen(js_name = threadSplitProducts)]
pub fn thread_split_products() -> f64 {
    phi2::par::split_products() as f64
}

/// Called once on the engine thread after `n` thread workers were started (each calls
/// `threadWorkerRun()`); returns when all `n` pool threads run (so it blocks until `n` workers
/// have called `threadWorkerRun()`). `n`: a number, an integer in 1..=64.
/// Errors: `E_INVALID_ARGUMENT` (n), `E_BACKEND` (single-threaded build, or a pool already built).
#[wasm_bindgen(js_name = threadPoolBuild)]
pub fn thread_pool_build(#[wasm_bindgen(unchecked_param_type = "number")] n: JsValue) -> Result<(), JsValue> {
    if !pool::SUPPORTED {
        return Err(coded("E_BACKEND", "this is the single-threaded build (pkg); threads need pkg-mt"));
    }
    // A JsValue, not f64: wasm-bindgen would coerce "2" or true to a number, and building a pool
    // nobody asked for blocks this thread until that many workers arrive.
    let n = match n.as_f64() {
        Some(n) if n.is_finite() && n.fract() == 0.0 && n >= 1.0 && n <= MAX_THREADS as f64 => n,
        _ => return Err(invalid(format!("thread count must be an integer in 1..={MAX_THREADS}, got {n:?}"))),
    };
    pool::build(n as usize).map_err(|e| coded("E_BACKEND", e))
}

/// Called in each thread worker after `initSync({ module, memory })`: runs one pool thread and
/// never returns while the pool lives (blocks in `Atomics.wait` until `threadPoolBuild` hands it
/// a thread; never call it on a page's main thread). `E_BACKEND` in the single-threaded build.
#[wasm_bindgen(js_name = threadWorkerRun)]
pub fn thread_worker_run() -> Result<(), JsValue> {
    if !pool::SUPPORTED {
        return Err(coded("E_BACKEND", "this is the single-threaded build (pkg); threads need pkg-mt"));
    }
    pool::worker_run().map_err(|e| coded("E_BACKEND", e))
}

#[cfg(feature = "threads")]
mod pool {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Condvar, Mutex};

    use rayon::ThreadBuilder;

    /// Blocking (`memory.atomic.wait`) needs the atomics target feature: without it std's
    /// mutexes and condvars cannot wait, so the feature alone does not make a threads build.
    pub const SUPPORTED: bool = cfg!(any(target_feature = "atomics", not(target_arch = "wasm32")));

    /// Rayon threads waiting for a worker. A Mutex + Condvar (what rayon itself sleeps on), not
    /// std's mpsc channel: a worker parked in `Receiver::recv` before the first `send` was never
    /// woken in the wasm build (Node 20; workers that arrived after the send ran fine).
    static QUEUE: Mutex<VecDeque<ThreadBuilder>> = Mutex::new(VecDeque::new());
    static QUEUED: Condvar = Condvar::new();

    /// 0: none; u32::MAX: being built; else the size.
    static STATE: AtomicU32 = AtomicU32::new(0);
    const BUILDING: u32 = u32::MAX;

    pub fn size() -> u32 {
        match STATE.load(Ordering::Acquire) {
            BUILDING => 0,
            n => n,
        }
    }

    pub fn build(n: usize) -> Result<(), String> {
        if let Err(s) = STATE.compare_exchange(0, BUILDING, Ordering::AcqRel, Ordering::Acquire) {
            return Err(if s == BUILDING {
                "the thread pool is being built".to_string()
            } else {
                format!("the thread pool is already built ({s} threads); threadPoolBuild may be called once")
            });
        }
        let built = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("phi2-wasm-{i}"))
            .spawn_handler(|thread| {
                QUEUE.lock().map_err(|_| std::io::Error::other("the thread queue is poisoned"))?.push_back(thread);
                QUEUED.notify_all();
                Ok(())
            })
            .build_global();
        match built {
            Ok(()) => {
                STATE.store(n as u32, Ordering::Release);
                phi2::par::enable(n >= 2);
                Ok(())
            }
            Err(e) => {
                // rayon's global pool can be set once: a failed (or earlier implicit) global pool
                // leaves it set, so say so rather than let the caller retry for ever.
                STATE.store(0, Ordering::Release);
                Err(format!("cannot build the rayon thread pool: {e}"))
            }
        }
    }

    pub fn worker_run() -> Result<(), String> {
        let thread = {
            let poisoned = |_| "the thread queue is poisoned".to_string();
            let mut queue = QUEUE.lock().map_err(poisoned)?;
            loop {
                if let Some(t) = queue.pop_front() {
                    break t;
                }
                queue = QUEUED.wait(queue).map_err(poisoned)?;
            }
        };
        thread.run();
        Ok(())
    }
}

#[cfg(not(feature = "threads"))]
mod pool {
    pub const SUPPORTED: bool = false;

    pub fn size() -> u32 {
        0
    }

    pub fn build(_n: usize) -> Result<(), String> {
        Err("this is the single-threaded build (pkg)".into())
    }

    pub fn worker_run() -> Result<(), String> {
        Err("this is the single-threaded build (pkg)".into())
    }
}
