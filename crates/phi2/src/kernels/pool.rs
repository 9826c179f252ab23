//! The compute threads of the kernels: a persistent pool that splits each product into work
//! items (chunks of output rows) taken from an atomic counter, so a thread slowed by the host
//! takes fewer items. No thread is spawned and nothing is allocated per product.
//!
//! Native: `threads − 1` workers started on first use (the calling thread is the last one); a
//! worker spins briefly after each product (the next one usually follows within microseconds)
//! and then sleeps on a condition variable. A product started while another one runs (two
//! sessions generating at once) runs on its caller's thread alone. wasm32: the rayon pool of the
//! threaded build when [`crate::par`] is enabled, else the calling thread.

use std::sync::atomic::{AtomicUsize, Ordering};

static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets the number of compute threads (the caller's thread included) for later products; 0
/// restores the default (the machine's available parallelism).
pub fn set_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// The number of compute threads products use.
pub fn threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => default_threads(),
        n => n,
    }
}

fn default_threads() -> usize {
    #[cfg(target_arch = "wasm32")]
    {
        if crate::par::enabled() {
            rayon::current_num_threads()
        } else {
            1
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        // Asked once: on Linux it reads cgroup files, and `threads()` runs for every product.
        static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *N.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
    }
}

/// Runs `f(0) .. f(items − 1)`, each exactly once, on up to `threads` threads; returns when all
/// have run.
pub fn run(items: usize, threads: usize, f: &(dyn Fn(usize) + Sync)) {
    let threads = threads.min(items);
    if threads <= 1 {
        (0..items).for_each(f);
        return;
    }
    #[cfg(target_arch = "wasm32")]
    {
        use rayon::prelude::*;
        if crate::par::enabled() {
            crate::par::note_split();
            (0..items).into_par_iter().for_each(f);
        } else {
            (0..items).for_each(f);
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::par::note_split();
        native::run(items, threads, f);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
    use std::sync::{Condvar, Mutex, OnceLock};
    use std::time::{Duration, Instant};

    /// How long an idle worker spins before it sleeps.
    const SPIN: Duration = Duration::from_micros(50);

    /// One product in flight. Lives on the stack of [`run`], which does not return before every
    /// worker has let go of it (see `active`).
    struct Job<'a> {
        f: &'a (dyn Fn(usize) + Sync),
        items: usize,
        /// Workers allowed to join (the caller's thread excluded).
        seats: AtomicUsize,
        next: AtomicUsize,
        done: AtomicUsize,
        panicked: AtomicBool,
    }

    impl Job<'_> {
        /// Takes items until none is left.
        fn work(&self) {
            loop {
                let i = self.next.fetch_add(1, SeqCst);
                if i >= self.items {
                    return;
                }
                if catch_unwind(AssertUnwindSafe(|| (self.f)(i))).is_err() {
                    self.panicked.store(true, SeqCst);
                }
                self.done.fetch_add(1, SeqCst);
            }
        }
    }

    struct Pool {
        workers: usize,
        /// The job workers should join, or null.
        job: AtomicPtr<Job<'static>>,
        /// Bumped for every job, so sleeping or spinning workers notice it.
        generation: AtomicU64,
        /// Workers between "about to read `job`" and "done with it".
        active: AtomicUsize,
        /// Held for a whole product: one product at a time uses the workers.
        busy: Mutex<()>,
        sleep: Mutex<()>,
        wake: Condvar,
    }

    static POOL: OnceLock<Pool> = OnceLock::new();
    /// Workers started so far (the pool grows, never shrinks, up to what was asked).
    static STARTED: Mutex<usize> = Mutex::new(0);

    fn pool(workers: usize) -> &'static Pool {
        let p = POOL.get_or_init(|| Pool {
            workers: 64,
            job: AtomicPtr::new(std::ptr::null_mut()),
            generation: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            busy: Mutex::new(()),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
        while *started < workers.min(p.workers) {
            let spawned = std::thread::Builder::new().name(format!("phi2-kernel-{}", *started + 1)).spawn(move || worker(p));
            if spawned.is_err() {
                break;
            }
            *started += 1;
        }
        p
    }

    fn worker(p: &'static Pool) {
        let mut seen = p.generation.load(SeqCst);
        loop {
            // Wait for a new generation: spin a little, then sleep.
            let t0 = Instant::now();
            loop {
                let g = p.generation.load(SeqCst);
                if g != seen {
                    seen = g;
                    break;
                }
                if t0.elapsed() < SPIN {
                    std::hint::spin_loop();
                    continue;
                }
                let guard = p.sleep.lock().unwrap_or_else(|e| e.into_inner());
                if p.generation.load(SeqCst) == seen {
                    let _unused = p.wake.wait_timeout(guard, Duration::from_millis(100));
                }
            }
            p.active.fetch_add(1, SeqCst);
            let job = p.job.load(SeqCst);
            if !job.is_null() {
                // SAFETY: `run` keeps the job alive until `active` drops back to zero, and we
                // counted ourselves in before loading the pointer.
                let job = unsafe { &*job };
                // A worker beyond the requested thread count stays out.
                if job.seats.fetch_update(SeqCst, SeqCst, |s| s.checked_sub(1)).is_ok() {
                    job.work();
                }
            }
            p.active.fetch_sub(1, SeqCst);
        }
    }

    pub(super) fn run(items: usize, threads: usize, f: &(dyn Fn(usize) + Sync)) {
        let p = pool(threads - 1);
        let Ok(_busy) = p.busy.try_lock() else {
            // Another product holds the workers: this one runs on its own thread.
            (0..items).for_each(f);
            return;
        };
        let job = Job {
            f,
            items,
            seats: AtomicUsize::new(threads - 1),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        };
        // SAFETY (lifetime): the pointer is withdrawn and every worker has let go of it (active
        // == 0) before this function returns and `job` goes out of scope.
        let ptr = &job as *const Job<'_> as *mut Job<'static>;
        p.job.store(ptr, SeqCst);
        p.generation.fetch_add(1, SeqCst);
        {
            let _g = p.sleep.lock().unwrap_or_else(|e| e.into_inner());
            p.wake.notify_all();
        }
        job.work();
        while job.done.load(SeqCst) < items {
            std::hint::spin_loop();
        }
        p.job.store(std::ptr::null_mut(), SeqCst);
        while p.active.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
        if job.panicked.load(SeqCst) {
            panic!("a kernel panicked on a compute thread");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_item_runs_once_for_any_thread_count() {
        for threads in [1, 2, 3, 8] {
            for items in [0, 1, 2, 7, 100] {
                let hits: Vec<AtomicU64> = (0..items).map(|_| AtomicU64::new(0)).collect();
                run(items, threads, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "threads {threads} items {items}");
            }
        }
    }

    #[test]
    fn concurrent_products_from_several_threads_all_complete() {
        std::thread::scope(|s| {
            for k in 0..4 {
                s.spawn(move || {
                    for _ in 0..200 {
                        let sum = AtomicU64::new(0);
                        run(37, 2, &|i| {
                            sum.fetch_add(i as u64 + k, Ordering::Relaxed);
                        });
                        assert_eq!(sum.load(Ordering::Relaxed), (0..37).map(|i| i + k).sum::<u64>());
                    }
                });
            }
        });
    }

    #[test]
    fn a_panicking_item_panics_the_caller_not_the_pool() {
        let r = std::panic::catch_unwind(|| run(16, 2, &|i| assert!(i != 5, "boom")));
        assert!(r.is_err());
        // The pool still works afterwards.
        let n = AtomicU64::new(0);
        run(16, 2, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 16);
    }
}
