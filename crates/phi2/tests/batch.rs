//! Continuous batching (`phi2::batch`): every sequence of a batch gets, bit for bit, the tokens
//! and log-probs it gets alone, with sequences joining and leaving mid-run, chunked prefill,
//! cancellation and a full context; the batch's limits and errors.

mod common;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use common::fixture;
use phi2::batch::{BatchConfig, BatchEvent, SeqId, TokenLogprobs};
use phi2::{Batch, FinishReason, GenerateOptions, Generation, KvType, Phi2, SamplingParams, Session};

/// Types whose matrices run on the engine's own kernels (batch-exact).
const EXACT: [&str; 4] = ["tiny-q8_0.gguf", "tiny-q4_0.gguf", "kq-q4_K.gguf", "kq-f16.gguf"];

fn load(name: &str) -> Arc<Phi2> {
    Arc::new(Phi2::load(&fixture(name)).unwrap())
}

fn alone(model: &Arc<Phi2>, prompt: &[u32], opts: &GenerateOptions) -> Generation {
    Session::new(model.clone()).generate(prompt, opts, &AtomicBool::new(false), |_| true).unwrap()
}

/// Log-probs of `tokens` generated after `prompt`, run alone one token per pass as a session
/// does, with the batch's definition (log-softmax over the tokenizer's ids in f64).
fn alone_logprobs(model: &Phi2, prompt: &[u32], tokens: &[u32], k: usize) -> Vec<TokenLogprobs> {
    let allowed = model.config.tokenizer_size;
    let mut cache = model.new_cache();
    let mut feed = prompt.to_vec();
    let mut out = Vec::new();
    for &t in tokens {
        let row = model.forward(&feed, &mut cache, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let row = &row[..allowed];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        let mut ids: Vec<u32> = (0..allowed as u32).collect();
        ids.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
        let top = ids[..k].iter().map(|&i| (i, (row[i as usize] as f64 - lse) as f32)).collect();
        out.push(TokenLogprobs { logprob: (row[t as usize] as f64 - lse) as f32, top });
        feed = vec![t];
    }
    out
}

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions { max_new_tokens: n, stop_on_eos: false, ..Default::default() }
}

fn sampled(n: usize, seed: u64) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: n,
        stop_on_eos: false,
        sampling: SamplingParams { do_sample: true, temperature: 0.8, top_k: 40, top_p: 0.95, repetition_penalty: 1.1, seed, ..Default::default() },
        ..Default::default()
    }
}

/// Everything a batch run reported per sequence.
#[derive(Default)]
struct Seen {
    tokens: HashMap<SeqId, Vec<u32>>,
    logprobs: HashMap<SeqId, Vec<TokenLogprobs>>,
    finished: HashMap<SeqId, Generation>,
}

impl Seen {
    fn take(&mut self, events: Vec<BatchEvent>) {
        for e in events {
            match e {
                BatchEvent::Token { seq, token, logprobs } => {
                    assert!(!self.finished.contains_key(&seq), "token after the end");
                    self.tokens.entry(seq).or_default().push(token);
                    if let Some(lp) = logprobs {
                        self.logprobs.entry(seq).or_default().push(lp);
                    }
                }
                BatchEvent::Finished { seq, generation } => {
                    assert_eq!(generation.tokens, self.tokens.get(&seq).cloned().unwrap_or_default(), "streamed = final");
                    assert!(self.finished.insert(seq, generation).is_none(), "finished twice");
                }
                BatchEvent::Failed { seq, error } => panic!("sequence {seq} failed: {error}"),
            }
        }
    }
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![464, 2068, 7586, 21831, 18045, 625, 198, 50284, 1169, 16931, 3290],
        vec![15496, 11, 616, 1438],
        vec![50256],
        (0..40).map(|i| 1000 + 37 * i).collect(),
        vec![4299, 751, 7, 64, 11, 275, 2599, 198, 50284, 7783, 257, 1343, 275, 198, 4299, 751],
        vec![818, 257, 1402, 995, 11],
    ]
}

/// How a batch run must match the runs alone.
#[derive(Clone, Copy)]
enum Match {
    /// Tokens and log-probs bit for bit.
    Exact,
    /// Greedy tokens equal; log-probs within this (chunked prefill: see the batch module docs).
    Close(f32),
}

/// Six requests with different prompts, budgets and samplers; three join at the start, the
/// others at later steps, so that prefills mix with decodes and sequences leave at different
/// steps. Each one's tokens and log-probs equal its run alone.
fn joins_and_leaves(name: &str, config: BatchConfig, want_match: Match) {
    joins_and_leaves_on(load(name), name, config, want_match)
}

/// [`joins_and_leaves`] on a loaded model.
fn joins_and_leaves_on(model: Arc<Phi2>, name: &str, config: BatchConfig, want_match: Match) {
    let prompts = prompts();
    let opts = [greedy(12), sampled(20, 7), greedy(5), sampled(9, 1234), greedy(25), sampled(1, 3)];
    let join_at = [0, 0, 0, 2, 3, 9];
    let k = 3;
    let mut batch = Batch::new(model.clone(), config).unwrap();
    let mut ids = vec![None; prompts.len()];
    let mut seen = Seen::default();
    let mut step = 0;
    while step < 200 && (ids.iter().any(Option::is_none) || !batch.is_empty()) {
        for (r, id) in ids.iter_mut().enumerate() {
            if id.is_none() && join_at[r] == step {
                *id = Some(batch.add(&prompts[r], &opts[r], Some(k)).unwrap());
            }
        }
        seen.take(batch.step().unwrap());
        step += 1;
    }
    assert!(batch.is_empty());
    for (r, id) in ids.iter().enumerate() {
        let id = id.unwrap();
        let want = alone(&model, &prompts[r], &opts[r]);
        let got = &seen.finished[&id];
        let lp = &seen.logprobs[&id];
        match want_match {
            Match::Exact => {
                assert_eq!(got.tokens, want.tokens, "{name}: request {r} tokens");
                assert_eq!(got.finish, want.finish, "{name}: request {r} finish");
                assert_eq!(lp, &alone_logprobs(&model, &prompts[r], &want.tokens, k), "{name}: request {r} log-probs");
            }
            Match::Close(tol) => {
                if !opts[r].sampling.do_sample {
                    assert_eq!(got.tokens, want.tokens, "{name}: request {r} tokens");
                }
                assert_eq!(got.tokens.len(), want.tokens.len(), "{name}: request {r} length");
                // Log-probs of the batch's own tokens, against one-pass prefill then one-token steps.
                let alone = alone_logprobs(&model, &prompts[r], &got.tokens, k);
                for (a, b) in lp.iter().zip(&alone) {
                    assert!((a.logprob - b.logprob).abs() <= tol, "{name}: request {r}: {} vs {}", a.logprob, b.logprob);
                }
            }
        }
    }
}

#[test]
fn each_sequence_equals_its_run_alone_with_joins_and_leaves() {
    for name in EXACT {
        joins_and_leaves(name, BatchConfig::default(), Match::Exact);
    }

}

#[test]
fn a_prompt_that_does_not_fit_the_step_waits_whole_and_stays_exact() {
    // 14 rows a step: the 11-token prompt takes 11, the 4-token one does not fit in the 3 left
    // and waits for the next step (it is not cut), the 1-token one fits.
    let model = load("tiny-q4_0.gguf");
    let prompts = prompts();
    let mut batch = Batch::new(model.clone(), BatchConfig { prefill_chunk: 64, step_tokens: 14, ..Default::default() }).unwrap();
    let ids: Vec<SeqId> = [0, 1, 2].iter().map(|&r| batch.add(&prompts[r], &greedy(6), Some(2)).unwrap()).collect();
    let mut seen = Seen::default();
    seen.take(batch.step().unwrap());
    assert!(seen.tokens.contains_key(&ids[0]) && seen.tokens.contains_key(&ids[2]));
    assert!(!seen.tokens.contains_key(&ids[1]), "the 4-token prompt waited");
    while !batch.is_empty() {
        seen.take(batch.step().unwrap());
    }
    for (r, id) in [0, 1, 2].into_iter().zip(ids) {
        let want = alone(&model, &prompts[r], &greedy(6));
        assert_eq!(seen.finished[&id].tokens, want.tokens);
        assert_eq!(seen.logprobs[&id], alone_logprobs(&model, &prompts[r], &want.tokens, 2));
    }
}

#[test]
fn chunked_prefill_equals_one_pass_prefill() {
    // Chunks of 3 prompt tokens and at most 8 rows a step: the 40-token prompt takes many
    // steps, interleaved with the others' decoding. The engine's attention computes each row
    // the same way whatever the pass (kernels::attention), so this is bit for bit too.
    for name in EXACT {
        joins_and_leaves(name, BatchConfig { prefill_chunk: 3, step_tokens: 8, ..Default::default() }, Match::Exact);
    }
}

#[test]
fn an_f16_cache_is_exact_across_batches_and_passes_and_close_to_f32() {
    // |Δ log-prob| allowed against an f32 cache: F16 weights take the activations as they are
    // (measured 2.9e-3); quantized ones round them to 8 bits, and on these tiny random models a
    // last-bit change can cross a rounding step (measured 0.041 on tiny-q8_0, 0.059 on kq-q4_K).
    for (name, tol) in [("tiny-q8_0.gguf", 0.15), ("kq-q4_K.gguf", 0.15), ("kq-f16.gguf", 1e-2)] {
        let model = Arc::new(Phi2::load(&fixture(name)).unwrap().with_kv_type(KvType::F16));
        assert_eq!(model.kv_type(), KvType::F16);
        // Every row's bits do not depend on the pass it ran in (batched, chunked, one token).
        joins_and_leaves_on(model.clone(), name, BatchConfig::default(), Match::Exact);
        joins_and_leaves_on(model.clone(), name, BatchConfig { prefill_chunk: 3, step_tokens: 8, ..Default::default() }, Match::Exact);
        // Against an f32 cache, log-probs of the same tokens differ by the rounding of the keys
        // and values only: a little, and not nothing.
        let f32_model = load(name);
        let prompt = &prompts()[4];
        let tokens = alone(&f32_model, prompt, &greedy(24)).tokens;
        let (a, b) = (alone_logprobs(&f32_model, prompt, &tokens, 1), alone_logprobs(&model, prompt, &tokens, 1));
        let worst = a.iter().zip(&b).map(|(a, b)| (a.logprob - b.logprob).abs()).fold(0f32, f32::max);
        eprintln!("{name}: f16 vs f32 cache, max |Δ log-prob| {worst:.2e}");
        assert!(worst > 0.0 && worst < tol, "{name}: f16 vs f32 cache, max |Δ log-prob| {worst}");
        // A recycled cache (the model keeps the last one: `model` has run many) gives the same bits
        // as a new model's new cache.
        let fresh = Arc::new(Phi2::load(&fixture(name)).unwrap().with_kv_type(KvType::F16));
        let again = alone(&model, prompt, &greedy(24));
        assert_eq!(again.tokens, alone(&fresh, prompt, &greedy(24)).tokens);
        let fresh = Phi2::load(&fixture(name)).unwrap().with_kv_type(KvType::F16);
        assert_eq!(alone_logprobs(&model, prompt, &again.tokens, 1), alone_logprobs(&fresh, prompt, &again.tokens, 1));
    }
}

#[test]
fn candle_product_types_keep_greedy_tokens_close() {
    // F32 matrices go through candle's gemm, whose rounding depends on the row count: log-probs
    // agree within float tolerance (the tokens may differ only where candidates nearly tie).
    let model = load("tiny-f32.gguf");
    let prompts = prompts();
    let mut batch = Batch::new(model.clone(), BatchConfig::default()).unwrap();
    let ids: Vec<SeqId> = prompts.iter().map(|p| batch.add(p, &greedy(8), Some(1)).unwrap()).collect();
    let mut seen = Seen::default();
    while !batch.is_empty() {
        seen.take(batch.step().unwrap());
    }
    for (p, id) in prompts.iter().zip(ids) {
        let tokens = &seen.finished[&id].tokens;
        let want = alone_logprobs(&model, p, tokens, 1);
        for (a, b) in seen.logprobs[&id].iter().zip(&want) {
            assert!((a.logprob - b.logprob).abs() < 1e-3, "{} vs {}", a.logprob, b.logprob);
        }
    }
}

#[test]
fn cancel_leaves_at_the_next_step_and_the_others_go_on() {
    let model = load("tiny-q8_0.gguf");
    let prompts = prompts();
    let mut batch = Batch::new(model.clone(), BatchConfig::default()).unwrap();
    let a = batch.add(&prompts[0], &greedy(30), None).unwrap();
    let b = batch.add(&prompts[1], &greedy(30), None).unwrap();
    let mut seen = Seen::default();
    for _ in 0..4 {
        seen.take(batch.step().unwrap());
    }
    assert!(batch.cancel(a));
    seen.take(batch.step().unwrap());
    let g = &seen.finished[&a];
    assert_eq!((g.finish, g.tokens.len()), (FinishReason::Cancelled, 4));
    assert_eq!(g.tokens, alone(&model, &prompts[0], &greedy(4)).tokens);
    assert!(!batch.cancel(a), "no longer in the batch");
    while !batch.is_empty() {
        seen.take(batch.step().unwrap());
    }
    assert_eq!(seen.finished[&b].tokens, alone(&model, &prompts[1], &greedy(30)).tokens);
    // Cancelled before its first step: no tokens.
    let c = batch.add(&prompts[2], &greedy(5), None).unwrap();
    batch.cancel(c);
    seen.take(batch.step().unwrap());
    assert_eq!((seen.finished[&c].finish, seen.finished[&c].tokens.len()), (FinishReason::Cancelled, 0));
}

#[test]
fn context_end_eos_and_zero_budget_stop_as_alone() {
    let model = load("tiny-q4_0.gguf");
    let ctx = model.config.context_length;
    let long: Vec<u32> = (0..ctx as u32 - 5).map(|i| 300 + i).collect();
    // EOS: a huge bias makes the second token EOS (after one token sampled normally).
    let mut eos = GenerateOptions { max_new_tokens: 10, ..Default::default() };
    eos.sampling.logit_bias = vec![(50256, 1e4)];
    let cases = [(long.clone(), greedy(50)), (prompts()[0].clone(), eos), (prompts()[1].clone(), greedy(0))];
    let mut batch = Batch::new(model.clone(), BatchConfig::default()).unwrap();
    let ids: Vec<SeqId> = cases.iter().map(|(p, o)| batch.add(p, o, None).unwrap()).collect();
    let mut seen = Seen::default();
    while !batch.is_empty() {
        seen.take(batch.step().unwrap());
    }
    for ((p, o), id) in cases.iter().zip(ids) {
        let want = alone(&model, p, o);
        let got = &seen.finished[&id];
        assert_eq!((&got.tokens, got.finish), (&want.tokens, want.finish));
    }
    assert_eq!(seen.finished[&0].finish, FinishReason::ContextFull);
    assert_eq!(seen.finished[&1].finish, FinishReason::Eos);
    assert_eq!(seen.finished[&2].finish, FinishReason::Length);
}

#[test]
fn limits_and_bad_requests_are_typed_errors() {
    let model = load("tiny-q8_0.gguf");
    let mut batch = Batch::new(model.clone(), BatchConfig { max_sequences: 2, ..Default::default() }).unwrap();
    let code = |r: phi2::Result<SeqId>| r.unwrap_err().code();
    assert_eq!(code(batch.add(&[], &greedy(3), None)), "E_INVALID_ARGUMENT");
    assert_eq!(code(batch.add(&[60000], &greedy(3), None)), "E_INVALID_ARGUMENT");
    assert_eq!(code(batch.add(&vec![1; model.config.context_length], &greedy(3), None)), "E_INVALID_ARGUMENT");
    assert_eq!(code(batch.add(&[1], &greedy(3), Some(21))), "E_INVALID_ARGUMENT");
    let mut bad = greedy(3);
    bad.sampling.top_p = 2.0;
    assert_eq!(code(batch.add(&[1], &bad, None)), "E_INVALID_ARGUMENT");
    batch.add(&[1], &greedy(3), None).unwrap();
    batch.add(&[2], &greedy(3), None).unwrap();
    assert_eq!(code(batch.add(&[3], &greedy(3), None)), "E_BUSY");
    assert!(Batch::new(model, BatchConfig { step_tokens: 0, ..Default::default() }).is_err());
}
