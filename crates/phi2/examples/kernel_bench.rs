//! Kernel micro-benchmark on Phi-2-sized matrices (random weights):
//!   cargo run --release -p phi2 --example kernel_bench -- [--threads N] [--tokens T] [--types q4_0,q8_0,...]
//!       [--shape ROWSxCOLS]
//! Prints weight-read bandwidth for T = 1 (decode) and multiply-accumulates per second for the
//! prompt batch. With `--threads 1` the time is the thread's CPU time (steady on a busy machine).
//! A development tool: the numbers users see come from `phi2-bench`.
use std::time::Instant;

use phi2::kernels::{self, Activations, Family, WeightRef};
use phi2::DType;

/// Nanoseconds this thread has run on a CPU (Linux `/proc/thread-self/schedstat`), so that
/// `--threads 1` numbers hold on a busy machine; 0 where unavailable.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |k: &str, d: &str| args.iter().position(|a| a == k).map(|i| args[i + 1].clone()).unwrap_or(d.to_string());
    let threads: usize = opt("--threads", "2").parse().unwrap();
    let tokens: usize = opt("--tokens", "128").parse().unwrap();
    let types = opt("--types", "q4_0,q8_0,q4_K,q5_K,q6_K,f16,bf16");
    // `--shape ROWSxCOLS` (default Phi-2's fc1, 10240x2560; its fc2 is 2560x10240).
    let shape = opt("--shape", "10240x2560");
    let (rows, cols) = shape.split_once('x').and_then(|(r, c)| Some((r.parse::<usize>().ok()?, c.parse::<usize>().ok()?))).expect("--shape ROWSxCOLS");
    eprintln!("kernels: {}, threads {threads}, matrix [{rows}, {cols}]", kernels::isa().name());
    for name in types.split(',') {
        let dtype = DType::from_name(name).expect("type");
        let len = dtype.byte_len(&[rows, cols]).unwrap();
        let mut s = 0x1234_5678_9abc_def0u64;
        let mut data: Vec<u8> = (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8 & 0x3F
            })
            .collect();
        // 16-bit floats: normal numbers of moderate size (no inf/NaN, no subnormals).
        if !dtype.is_quantized() {
            for i in (1..data.len()).step_by(2) {
                data[i] = (data[i] & 0x83) | if dtype == DType::BF16 { 0x3C } else { 0x30 };
            }
        }
        let mats: usize = opt("--mats", "1").parse().unwrap();
        // Several copies (offset by one byte pattern) so that T=1 streams from memory, not cache.
        let copies: Vec<Vec<u8>> = (1..mats).map(|i| data.iter().map(|&b| b ^ (i as u8 & 0x01)).collect()).collect();
        let w = WeightRef::new(dtype, rows, cols, &data).unwrap();
        let ws: Vec<WeightRef> = std::iter::once(w).chain(copies.iter().map(|c| WeightRef::new(dtype, rows, cols, c).unwrap())).collect();
        let fam = Family::of(dtype).unwrap();
        if args.iter().any(|a| a == "--read") {
            // Plain read of the same bytes (sum of u64 words): what this process can stream.
            let t0 = Instant::now();
            let mut sink = 0u64;
            for i in 0..40 {
                let d = ws[i % ws.len()].data;
                sink = sink.wrapping_add(d.chunks_exact(8).fold(0u64, |s, c| s.wrapping_add(u64::from_le_bytes(c.try_into().unwrap()))));
            }
            let dt = t0.elapsed().as_secs_f64() / 40.0;
            println!("{name:6} read   {:7.3} ms  {:6.2} GB/s ({sink})", dt * 1e3, len as f64 / dt / 1e9);
        }
        for t in [1, tokens] {
            let x: Vec<f32> = (0..t * cols).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 300.0).collect();
            let mut a = Activations::default();
            a.prepare(fam, &x, t, cols);
            let mut out = vec![0f32; t * rows];
            kernels::matmul(&w, &a, &mut out, threads);
            let iters: usize = opt("--iters", if t == 1 { "40" } else { "3" }).parse().unwrap();
            let (t0, c0) = (Instant::now(), cpu_ns());
            for i in 0..iters {
                kernels::matmul(&ws[i % ws.len()], &a, &mut out, threads);
            }
            let mut dt = t0.elapsed().as_secs_f64() / iters as f64;
            // One thread: the time it was on a CPU, not the wall clock (others may be running).
            if threads == 1 && c0 > 0 {
                dt = (cpu_ns() - c0) as f64 * 1e-9 / iters as f64;
            }
            if t == 1 {
                println!("{name:6} T=1    {:7.3} ms  {:6.2} GB/s", dt * 1e3, len as f64 / dt / 1e9);
            } else {
                println!("{name:6} T={t:<4} {:7.3} ms  {:6.2} GMAC/s  ({:.1} us/token)", dt * 1e3, (rows * cols * t) as f64 / dt / 1e9, dt * 1e6 / t as f64);
            }
        }
    }
}
