//! What this machine's memory can stream: the read bandwidth that bounds decoding at batch 1
//! (every weight is read once per token), measured the way the engine reads weights: a buffer
//! far larger than any cache, backed by 2 MB pages where Linux gives them (as [`crate::storage`]
//! asks for model files), summed by the kernels' thread pool.

use std::time::Instant;

use crate::kernels::pool;

/// Best-of-`passes` read bandwidth in GB/s (10⁹ bytes per second) of a `bytes`-byte buffer
/// summed by `threads` threads. The buffer is written first, so every page is really allocated.
/// Refuses (`OutOfMemory`) a buffer larger than half the memory available now: filling an
/// anonymous map that the kernel overcommitted would end in the OOM killer, not in an error.
pub fn read_bandwidth(bytes: usize, threads: usize, passes: usize) -> std::io::Result<f64> {
    const SLICE: usize = 4 << 20;
    let bytes = bytes.max(SLICE) / SLICE * SLICE;
    if let Some(avail) = available_memory() {
        if bytes as u64 > avail / 2 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                format!("a {} MiB buffer is more than half the {} MiB of memory available", bytes >> 20, avail >> 20),
            ));
        }
    }
    let mut map = memmap2::MmapMut::map_anon(bytes)?;
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    map.fill(1);
    let words: &[u64] = {
        // SAFETY: the map is page aligned and `bytes` is a multiple of 8; u64 has no invalid bits.
        unsafe { std::slice::from_raw_parts(map.as_ptr() as *const u64, bytes / 8) }
    };
    let slices = bytes / SLICE;
    let sums: Vec<std::sync::atomic::AtomicU64> = (0..slices).map(|_| Default::default()).collect();
    let mut best = 0f64;
    for _ in 0..passes.max(1) {
        let t0 = Instant::now();
        pool::run(slices, threads.max(1), &|i| {
            let s = &words[i * SLICE / 8..(i + 1) * SLICE / 8];
            // Four independent sums: the compiler vectorises them; one would be latency-bound.
            let mut acc = [0u64; 4];
            for c in s.chunks_exact(4) {
                for k in 0..4 {
                    acc[k] = acc[k].wrapping_add(c[k]);
                }
            }
            let total = acc.iter().fold(0u64, |a, &b| a.wrapping_add(b));
            sums[i].store(std::hint::black_box(total), std::sync::atomic::Ordering::Relaxed);
        });
        best = best.max(bytes as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    // Every word is 0x0101…01: a check that the sums were really computed.
    let expect = (SLICE as u64 / 8).wrapping_mul(0x0101_0101_0101_0101);
    debug_assert!(sums.iter().all(|s| s.load(std::sync::atomic::Ordering::Relaxed) == expect));
    Ok(best)
}

/// Linux's `MemAvailable` in bytes (`None` elsewhere or when unreadable).
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn measures_a_positive_bandwidth() {
        let gbs = super::read_bandwidth(8 << 20, 2, 2).unwrap();
        assert!(gbs.is_finite() && gbs > 0.0, "{gbs}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn refuses_a_buffer_larger_than_the_memory_available() {
        let avail = super::available_memory().expect("Linux has MemAvailable");
        let e = super::read_bandwidth(avail as usize, 1, 1).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::OutOfMemory);
        assert!(e.to_string().contains("memory available"), "{e}");
    }
}
