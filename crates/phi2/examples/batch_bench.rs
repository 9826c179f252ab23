//! Decode-step cost of a continuous batch, engine only (no server, no JS):
//!
//! ```text
//! batch_bench --model PATH [--streams 1,8] [--prompt-tokens 16] [--steps 16]
//! ```
//! For each stream count B: B sequences with distinct `prompt-tokens`-token prompts join one
//! [`Batch`]; once all are decoding, `steps` steps are timed. Prints, per B, the median step
//! time, the aggregate decode tokens/s and its ratio to B = 1 (when 1 is in the list).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use phi2::batch::{Batch, BatchConfig, BatchEvent};
use phi2::{GenerateOptions, Phi2, SamplingParams};

fn main() -> Result<(), String> {
    let mut model = None;
    let mut streams = vec![1usize, 8];
    let mut prompt_tokens = 16usize;
    let mut steps = 16usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("{flag}: cannot parse {s:?}"))
        };
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(v)),
            "--streams" => streams = v.split(',').map(num).collect::<Result<_, _>>()?,
            "--prompt-tokens" => prompt_tokens = num(&v)?,
            "--steps" => steps = num(&v)?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let model =
        Arc::new(Phi2::load(&model.ok_or("--model is required")?).map_err(|e| e.to_string())?);
    let opts = GenerateOptions {
        max_new_tokens: steps + 2,
        sampling: SamplingParams::default(),
        stop_on_eos: false,
        speculative: None,
    };
    let mut one = None;
    for &b in &streams {
        let mut batch = Batch::new(
            model.clone(),
            BatchConfig {
                max_sequences: b.max(1),
                ..BatchConfig::default()
            },
        )
        .map_err(|e| e.to_string())?;
        for s in 0..b {
            let prompt: Vec<u32> = (0..prompt_tokens)
                .map(|i| (1000 + 37 * s + 11 * i) as u32 % 50000)
                .collect();
            batch.add(&prompt, &opts, None).map_err(|e| e.to_string())?;
        }
        // Prefill until every sequence has its first token.
        let mut started = std::collections::HashSet::new();
        while started.len() < b {
            for e in batch.step().map_err(|e| e.to_string())? {
                if let BatchEvent::Token { seq, .. } = e {
                    started.insert(seq);
                }
            }
        }
        let mut times = Vec::with_capacity(steps);
        for _ in 0..steps {
            let t = Instant::now();
            let events = batch.step().map_err(|e| e.to_string())?;
            times.push(t.elapsed().as_secs_f64());
            let tokens = events
                .iter()
                .filter(|e| matches!(e, BatchEvent::Token { .. }))
                .count();
            if tokens != b {
                return Err(format!("step produced {tokens} tokens, expected {b}"));
            }
        }
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        let tps = b as f64 / med;
        let base = *one.get_or_insert(if b == 1 { tps } else { f64::NAN });
        println!(
            "streams {b:>2}  step {:>8.1} ms  aggregate {tps:>6.2} tok/s  vs 1 stream {:.2}x",
            med * 1e3,
            tps / base
        );
    }
    Ok(())
}
