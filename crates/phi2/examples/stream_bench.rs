//! Weight streaming of a decode step, kernels only: every 2-D weight of a GGUF file (the token
//! embedding excepted) times one token, in file order, as the model reads them.
//!
//! ```text
//! stream_bench --model PATH [--threads 2] [--iters 10] [--copy]
//! ```
//! Prints the median time and weight bandwidth, and (Linux) the share of the file mapped with
//! 2 MB pages. `--copy` runs on heap copies of the weights instead of the memory map (to tell
//! the page cache's mapping from the kernels).
use std::path::PathBuf;
use std::time::Instant;

use phi2::gguf::GgufFile;
use phi2::kernels::{self, Activations, Family, WeightRef};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |k: &str, d: &str| args.iter().position(|a| a == k).map(|i| args[i + 1].clone()).unwrap_or(d.to_string());
    let path = PathBuf::from(opt("--model", ""));
    let threads: usize = opt("--threads", "2").parse().unwrap();
    let iters: usize = opt("--iters", "10").parse().unwrap();
    let copy = args.iter().any(|a| a == "--copy");
    let g = GgufFile::open(&path).expect("open");
    // The engine's map (with its 2 MB page advice).
    let map = phi2::storage::Bytes::map(&path).expect("map");
    let file: &[u8] = &map;
    let mut mats = Vec::new();
    for t in g.tensor_infos() {
        if t.shape.len() != 2 || t.name.starts_with("token_embd") {
            continue;
        }
        let Some(dt) = t.dtype else { continue };
        let data = &file[t.offset..t.offset + t.len.unwrap()];
        mats.push((dt, t.shape[0], t.shape[1], if copy { data.to_vec() } else { Vec::new() }, data));
    }
    let bytes: usize = mats.iter().map(|m| m.4.len()).sum();
    let mut acts = std::collections::HashMap::new();
    let mut outs = Vec::new();
    for (dt, rows, cols, _, _) in &mats {
        let fam = Family::of(*dt).unwrap();
        acts.entry((format!("{fam:?}"), *cols)).or_insert_with(|| {
            let x: Vec<f32> = (0..*cols).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 300.0).collect();
            let mut a = Activations::default();
            a.prepare(fam, &x, 1, *cols);
            a
        });
        outs.push(vec![0f32; *rows]);
    }
    let mut times = Vec::new();
    for _ in 0..iters {
        let t0 = Instant::now();
        for (i, (dt, rows, cols, owned, data)) in mats.iter().enumerate() {
            let d: &[u8] = if copy { owned } else { data };
            let w = WeightRef::new(*dt, *rows, *cols, d).unwrap();
            kernels::matmul(&w, &acts[&(format!("{:?}", Family::of(*dt).unwrap()), *cols)], &mut outs[i], threads);
        }
        times.push(t0.elapsed().as_secs_f64());
    }
    // Linux: how much of the file is mapped with 2 MB page-table entries.
    if let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps_rollup") {
        let kb = |key: &str| smaps.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()).unwrap_or(0.0);
        println!("file pages mapped as 2 MB pages: {:.0}%", 100.0 * kb("FilePmdMapped:") * 1024.0 / map.len() as f64);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = times[times.len() / 2];
    let gbs = bytes as f64 / med / 1e9;
    println!("{} matrices, {:.2} GB: median {:.1} ms, {:.2} GB/s ({})", mats.len(), bytes as f64 / 1e9, med * 1e3, gbs, if copy { "heap copy" } else { "mmap" });
    // The ceiling phi2-bench divides by: the engine's read-bandwidth probe, same threads.
    if let Ok(probe) = phi2::probe::read_bandwidth(1 << 30, threads, 5) {
        println!("read-bandwidth probe: {probe:.2} GB/s; the products stream at {:.0}% of it", 100.0 * gbs / probe);
    }
}
