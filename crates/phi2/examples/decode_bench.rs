//! Where a decode step's time goes: decode steps (`Phi2::forward` of one token, greedy) and
//! passes that only stream the same weights through the engine's kernels (every 2-D weight of
//! the GGUF file but the token embedding, one token, in file order, as `stream_bench`),
//! alternated in one process so both see the same memory bandwidth (it drifts from minute to
//! minute on shared machines).
//!
//! ```text
//! decode_bench --model PATH [--prompt-tokens 128] [--steps 32] [--threads 2] [--kv-cache f32|f16]
//! ```
//! Prints the median decode step, the median weight-streaming pass and their difference: the
//! time a step spends outside weight products (norms, rotary, KV cache, attention, residuals,
//! embedding, the thread pool's start and finish of each product); and both as shares of the
//! ceiling `phi2-bench` reports (read bandwidth from [`phi2::probe`], before and after, the
//! better of the two, over the bytes of every tensor but the token embedding).
use std::path::PathBuf;
use std::time::Instant;

use phi2::gguf::GgufFile;
use phi2::kernels::{self, Activations, Family, WeightRef};
use phi2::Phi2;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |k: &str, d: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1).cloned()).unwrap_or(d.to_string());
    let num = |k: &str, d: &str| opt(k, d).parse::<usize>().map_err(|_| format!("{k}: not a number"));
    let path = PathBuf::from(opt("--model", ""));
    let prompt_tokens = num("--prompt-tokens", "128")?;
    let steps = num("--steps", "32")?;
    let threads = num("--threads", "2")?;
    kernels::pool::set_threads(threads);

    let probe = || phi2::probe::read_bandwidth(1 << 30, threads, 5).map_err(|e| e.to_string());
    let bw_before = probe()?;
    let kv = phi2::KvType::parse(&opt("--kv-cache", "f32")).map_err(|e| e.to_string())?;
    let model = Phi2::load(&path).map_err(|e| e.to_string())?.with_kv_type(kv);
    let g = GgufFile::open(&path).map_err(|e| e.to_string())?;
    let map = phi2::storage::Bytes::map(&path).map_err(|e| e.to_string())?;
    let file: &[u8] = &map;
    let mut mats = Vec::new();
    for t in g.tensor_infos() {
        if t.shape.len() != 2 || t.name.starts_with("token_embd") {
            continue;
        }
        let (Some(dt), Some(len)) = (t.dtype, t.len) else { continue };
        let w = WeightRef::new(dt, t.shape[0], t.shape[1], &file[t.offset..t.offset + len]).ok_or("a matrix the kernels do not take")?;
        let fam = Family::of(dt).ok_or("a matrix the kernels do not take")?;
        let x: Vec<f32> = (0..w.cols).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 300.0).collect();
        let mut a = Activations::default();
        a.prepare(fam, &x, 1, w.cols);
        mats.push((w, a, vec![0f32; w.rows]));
    }

    let mut cache = model.new_cache();
    let prompt: Vec<u32> = (0..prompt_tokens).map(|i| (i * 7919 % 50000 + 100) as u32).collect();
    let logits = model.forward(&prompt, &mut cache, false).map_err(|e| e.to_string())?;
    let mut next = argmax(&logits.flatten_all().and_then(|l| l.to_vec1::<f32>()).map_err(|e| e.to_string())?);
    let (mut step_times, mut stream_times) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let t0 = Instant::now();
        for (w, a, out) in mats.iter_mut() {
            kernels::matmul(w, a, out, threads);
        }
        stream_times.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        let logits = model.forward(&[next], &mut cache, false).map_err(|e| e.to_string())?;
        next = argmax(&logits.flatten_all().and_then(|l| l.to_vec1::<f32>()).map_err(|e| e.to_string())?);
        step_times.push(t0.elapsed().as_secs_f64());
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] * 1e3
    };
    let (step, stream) = (med(&mut step_times), med(&mut stream_times));
    let bw = bw_before.max(probe()?);
    let bytes: usize = mats.iter().map(|(w, ..)| w.data.len()).sum();
    let step_bytes: usize = g.tensor_infos().iter().filter(|t| t.name != "token_embd.weight").filter_map(|t| t.len).sum();
    let share = |ms: f64| 100.0 * step_bytes as f64 / (ms * 1e-3) / (bw * 1e9);
    println!(
        "decode step {step:.1} ms ({:.2} tok/s, {:.1}% of ceiling), weights only {stream:.1} ms ({:.2} GB/s, {:.1}%), outside products {:.1} ms ({:.1}%); probe {bw:.2} GB/s",
        1e3 / step,
        share(step),
        bytes as f64 / stream / 1e6,
        share(stream),
        step - stream,
        100.0 * (step - stream) / step
    );
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) }).0 as u32
}
