//! Attention of one decode row over Phi-2-shaped KV caches (32 layers × 32 heads × head_dim 80,
//! synthetic values), the call a decode step makes once per layer ([`phi2::kernels::attention`]):
//!   cargo run --release -p phi2 --example attention_bench -- [--positions 144] [--threads 2]
//!       [--kv-cache f32|f16] [--hot] [--chunked]
//! Each pass runs the 32 layers' calls in order, so their caches (94 MB in f32 at 144 positions)
//! come from memory as in a decode step; `--hot` runs layer 0's 32 times, from the caches.
//! `--chunked`: caches of the positions rounded up to 256 (the layout where the whole context
//! is not reserved) instead of 2048.
//! Prints the median and best of 30 passes and the cache bytes read per second.
//! A development tool: the numbers users see come from `phi2-bench`.
use std::time::Instant;

use phi2::kernels::attention::{attention, AttnShape, KvElem};
use phi2::kernels::{self, buffer::Zeroed};

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |k: &str, d: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1).cloned()).unwrap_or(d.to_string());
    let num = |k: &str, d: &str| opt(k, d).parse::<usize>().map_err(|_| format!("{k}: not a number"));
    let positions = num("--positions", "144")?.max(1);
    let threads = num("--threads", "2")?;
    let hot = args.iter().any(|a| a == "--hot");
    let chunked = args.iter().any(|a| a == "--chunked");
    match opt("--kv-cache", "f32").as_str() {
        "f32" => run::<f32>(positions, threads, hot, chunked),
        "f16" => run::<half::f16>(positions, threads, hot, chunked),
        other => Err(format!("--kv-cache must be f32 or f16, got {other}")),
    }
}

fn run<T: KvElem>(positions: usize, threads: usize, hot: bool, chunked: bool) -> Result<(), String> {
    kernels::pool::set_threads(threads);
    let (layers, heads, hd) = (32usize, 32usize, 80usize);
    // [heads, cap, head_dim] per layer on lazily zeroed pages, as `Phi2`'s caches: the whole
    // context of 2048 positions reserved where that can be done unused (Linux), else grown by
    // 256 positions.
    let cap = if !chunked && Zeroed::<T>::lazy(1).is_some() { 2048.max(positions) } else { positions.next_multiple_of(256) };
    let buffer = || Zeroed::<T>::lazy(heads * cap * hd).unwrap_or_else(|| Zeroed::<T>::zeroed(heads * cap * hd));
    let value = |l: usize, h: usize, p: usize, d: usize| ((h * 31 + p * 7 + d * 3 + l) % 97) as f32 / 97.0 - 0.5;
    let caches: Vec<(Zeroed<T>, Zeroed<T>)> = (0..layers)
        .map(|l| {
            let (mut k, mut v) = (buffer(), buffer());
            for h in 0..heads {
                for p in 0..positions {
                    for d in 0..hd {
                        k[(h * cap + p) * hd + d] = T::store(value(l, h, p, d));
                        v[(h * cap + p) * hd + d] = T::store(-value(l, h, p, d));
                    }
                }
            }
            (k, v)
        })
        .collect();
    let q: Vec<f32> = (0..heads * hd).map(|i| ((i * 13) % 89) as f32 / 89.0 - 0.5).collect();
    let mut y = vec![0f32; heads * hd];
    let shape = AttnShape { heads, head_dim: hd, cap, pos: positions - 1, tokens: 1 };
    let scale = 1.0 / (hd as f32).sqrt();
    let mut times = Vec::new();
    for _ in 0..30 {
        let t0 = Instant::now();
        for l in 0..layers {
            let (k, v) = &caches[if hot { 0 } else { l }];
            attention(&q, k, v, shape, scale, &mut y, threads);
        }
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let bytes = (layers * 2 * heads * positions * hd * size_of::<T>()) as f64;
    println!(
        "{positions} positions ({cap} reserved), {} cache, {threads} thread(s){}: median {:.2} ms, best {:.2} ms per 32 layers ({:.1} GB/s of cache at the median); y[0] = {}",
        if T::HALF { "f16" } else { "f32" },
        if hot { ", hot" } else { "" },
        times[times.len() / 2],
        times[0],
        bytes / times[times.len() / 2] / 1e6,
        y[0]
    );
    Ok(())
}
