//! Threads for the multi-threaded build (`pkg-mt`): a rayon pool whose threads are JS workers
//! sharing this instance's memory. See CONTRACT.md for the start-up protocol.
//! (Stub: the single-threaded behaviour; the pool is filled in by the threads work.)

use wasm_bindgen::prelude::*;

/// Whether this build can run a thread pool (shared memory + atomics).
#[wasm_bindgen(js_name = threadsSupported)]
pub fn threads_supported() -> bool {
    false
}

/// Threads in the pool (0 before `threadPoolBuild`).
#[wasm_bindgen(js_name = threadPoolSize)]
pub fn thread_pool_size() -> u32 {
    0
}
