//! Generation behaviour: sampling determinism, padding ids, stop rules, cancellation, sessions.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::fixture;
use phi2::{FinishReason, GenerateOptions, Phi2, SamplingParams, Session};

const PROMPT: [u32; 11] = [464, 2068, 7586, 21831, 18045, 625, 198, 50284, 1169, 16931, 3290];

fn model() -> Arc<Phi2> {
    Arc::new(Phi2::load(&fixture("tiny-q8_0.gguf")).unwrap())
}

fn run(model: &Arc<Phi2>, prompt: &[u32], opts: &GenerateOptions) -> phi2::Generation {
    Session::new(model.clone()).generate(prompt, opts, &AtomicBool::new(false), |_| true).unwrap()
}

fn sampled(seed: u64) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: 12,
        sampling: SamplingParams { do_sample: true, temperature: 1.0, top_p: 0.95, seed, ..Default::default() },
        stop_on_eos: false,
        speculative: None,
    }
}

#[test]
fn same_seed_same_tokens_different_seed_different_tokens() {
    let m = model();
    let a = run(&m, &PROMPT, &sampled(7));
    let b = run(&m, &PROMPT, &sampled(7));
    let c = run(&m, &PROMPT, &sampled(8));
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.tokens.len(), 12);
    assert_ne!(a.tokens, c.tokens);
    assert_eq!(a.finish, FinishReason::Length);
}

#[test]
fn do_sample_false_is_greedy_whatever_the_temperature() {
    let m = model();
    let greedy = run(&m, &PROMPT, &GenerateOptions { max_new_tokens: 6, ..Default::default() });
    let mut opts = sampled(3);
    opts.max_new_tokens = 6;
    opts.sampling.do_sample = false;
    opts.sampling.temperature = 1.7;
    assert_eq!(run(&m, &PROMPT, &opts).tokens, greedy.tokens);
}

#[test]
fn padding_rows_are_never_produced() {
    let m = model();
    assert_eq!(m.config.vocab_size, 51200);
    assert_eq!(m.config.tokenizer_size, 50295);
    // Push every padding id far above everything else: greedy and sampling must still skip them.
    let bias: Vec<(u32, f32)> = (50295..51200).map(|id| (id, 1000.0)).collect();
    for do_sample in [false, true] {
        let mut opts = sampled(1);
        opts.sampling.do_sample = do_sample;
        opts.sampling.logit_bias = bias.clone();
        let g = run(&m, &PROMPT, &opts);
        assert!(g.tokens.iter().all(|&t| t < 50295), "{:?}", g.tokens);
    }
}

#[test]
fn stops_on_eos_and_keeps_it() {
    let m = model();
    let mut opts = GenerateOptions { max_new_tokens: 10, ..Default::default() };
    opts.sampling.logit_bias = vec![(50256, 1000.0)];
    let g = run(&m, &PROMPT, &opts);
    assert_eq!(g.tokens, vec![50256]);
    assert_eq!(g.finish, FinishReason::Eos);
    opts.stop_on_eos = false;
    opts.max_new_tokens = 3;
    let g = run(&m, &PROMPT, &opts);
    assert_eq!(g.tokens, vec![50256; 3]);
    assert_eq!(g.finish, FinishReason::Length);
}

#[test]
fn cancellation_flag_stops_within_one_token() {
    let m = model();
    let opts = GenerateOptions { max_new_tokens: 50, stop_on_eos: false, ..Default::default() };
    // Set before the start: nothing is generated.
    let cancel = AtomicBool::new(true);
    let g = Session::new(m.clone()).generate(&PROMPT, &opts, &cancel, |_| true).unwrap();
    assert_eq!((g.tokens.len(), g.finish), (0, FinishReason::Cancelled));

    // Set from another thread while generating: the loop sees it before the next forward pass.
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let (m2, c2, opts2) = (m.clone(), cancel.clone(), opts.clone());
    let worker = std::thread::spawn(move || {
        let mut n = 0;
        Session::new(m2)
            .generate(&PROMPT, &opts2, &c2, |_| {
                n += 1;
                tx.send(n).unwrap();
                // Give the other thread time to set the flag before we go on.
                std::thread::sleep(std::time::Duration::from_millis(20));
                true
            })
            .unwrap()
    });
    assert_eq!(rx.recv().unwrap(), 1);
    cancel.store(true, Ordering::Relaxed);
    let g = worker.join().unwrap();
    assert_eq!(g.finish, FinishReason::Cancelled);
    // Normally 1; 2 only if this thread was descheduled for the whole 20 ms.
    assert!(g.tokens.len() <= 2, "stopped after {} tokens", g.tokens.len());

    // The token callback can stop too.
    let g = Session::new(m.clone()).generate(&PROMPT, &opts, &AtomicBool::new(false), |_| false).unwrap();
    assert_eq!((g.tokens.len(), g.finish), (1, FinishReason::Cancelled));
}

#[test]
fn context_is_never_exceeded() {
    let m = Arc::new(Phi2::load(&fixture("odd-q8_0.gguf")).unwrap());
    let ctx = m.config.context_length;
    assert_eq!(ctx, 64);
    let prompt: Vec<u32> = (0..60).map(|i| 1000 + i).collect();
    let opts = GenerateOptions { max_new_tokens: 50, stop_on_eos: false, ..Default::default() };
    let g = run(&m, &prompt, &opts);
    assert_eq!(g.finish, FinishReason::ContextFull);
    assert_eq!(prompt.len() + g.tokens.len(), ctx);
    let full: Vec<u32> = (0..64).collect();
    let err = Session::new(m.clone()).generate(&full, &opts, &AtomicBool::new(false), |_| true).unwrap_err();
    assert_eq!(err.code(), "E_INVALID_ARGUMENT");
    assert!(err.to_string().contains("context length 64"), "{err}");
}

#[test]
fn bad_prompts_are_typed_errors() {
    let m = model();
    let opts = GenerateOptions::default();
    let never = AtomicBool::new(false);
    let e = Session::new(m.clone()).generate(&[], &opts, &never, |_| true).unwrap_err();
    assert!(e.to_string().contains("prompt"), "{e}");
    let e = Session::new(m.clone()).generate(&[1, 51200], &opts, &never, |_| true).unwrap_err();
    assert!(e.to_string().contains("51200"), "{e}");
    let mut bad = GenerateOptions::default();
    bad.sampling.top_p = f32::NAN;
    bad.sampling.do_sample = true;
    let e = Session::new(m.clone()).generate(&PROMPT, &bad, &never, |_| true).unwrap_err();
    assert!(e.to_string().contains("top_p"), "{e}");
    assert!(m.logprobs(&[]).is_err());
}

#[test]
fn a_session_reuses_its_cache_for_a_continued_conversation() {
    let m = model();
    let opts = GenerateOptions { max_new_tokens: 4, stop_on_eos: false, ..Default::default() };
    let never = AtomicBool::new(false);
    let mut s = Session::new(m.clone());
    let first = s.generate(&PROMPT, &opts, &never, |_| true).unwrap();
    assert_eq!(first.prompt_tokens_evaluated, PROMPT.len());
    // Next turn: everything so far + 3 new tokens. Only the unseen tokens are evaluated.
    let mut turn2: Vec<u32> = PROMPT.iter().chain(&first.tokens).copied().collect();
    turn2.extend([198, 464, 2068]);
    let cached = s.generate(&turn2, &opts, &never, |_| true).unwrap();
    // The last generated token was sampled but never run through the model: it and the 3 new ones.
    assert_eq!(cached.prompt_tokens_evaluated, 1 + 3);
    let fresh = run(&m, &turn2, &opts);
    assert_eq!(cached.tokens, fresh.tokens);
    // A prompt that does not extend the history starts over.
    let other = s.generate(&[1, 2, 3], &opts, &never, |_| true).unwrap();
    assert_eq!(other.prompt_tokens_evaluated, 3);
    assert_eq!(other.tokens, run(&m, &[1, 2, 3], &opts).tokens);
}

#[test]
fn a_finished_sessions_cache_serves_the_next_one_with_the_same_bits() {
    let m = model();
    let fresh = m.new_cache();
    assert_eq!(fresh.capacity(), 0);
    // A longer conversation leaves its keys and values behind in the cache it gives back.
    let long: Vec<u32> = (0..40).map(|i| 300 + 17 * i).collect();
    let mut s = Session::new(m.clone());
    s.generate(&long, &GenerateOptions { max_new_tokens: 3, stop_on_eos: false, ..Default::default() }, &AtomicBool::new(false), |_| true).unwrap();
    drop(s);
    let mut reused = m.new_cache();
    assert!(reused.capacity() >= 43 && reused.is_empty(), "the session's cache came back");
    // The next one (a shorter prompt, then single tokens) gives the logits of a new cache, bit for bit.
    let mut new = fresh;
    let steps: [&[u32]; 4] = [&PROMPT, &[13], &[464], &[2068]];
    for tokens in steps {
        let a = m.forward(tokens, &mut reused, true).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = m.forward(tokens, &mut new, true).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }
    // Given back, it serves the next one again; one is kept at a time.
    let cap = reused.capacity();
    m.recycle_cache(reused);
    m.recycle_cache(new);
    assert_eq!(m.new_cache().capacity(), cap);
    assert_eq!(m.new_cache().capacity(), 0);
}

#[test]
fn another_models_cache_is_a_typed_error() {
    let models: Vec<Arc<Phi2>> = ["tiny-q8_0.gguf", "odd-q8_0.gguf", "kq-q8_0.gguf"].iter().map(|f| Arc::new(Phi2::load(&fixture(f)).unwrap())).collect();
    let mut pairs = 0;
    for a in &models {
        for b in &models {
            let (ca, cb) = (&a.config, &b.config);
            if (ca.num_layers, ca.num_heads, ca.head_dim()) == (cb.num_layers, cb.num_heads, cb.head_dim()) {
                continue;
            }
            pairs += 1;
            let mut foreign = b.new_cache();
            b.forward(&[1, 2, 3], &mut foreign, false).unwrap();
            let err = a.forward(&[1, 2], &mut foreign, false).unwrap_err().to_string();
            assert!(err.contains("not this model's cache"), "{err}");
            // And it is not kept for the next generation.
            a.recycle_cache(foreign);
            assert_eq!(a.new_cache().capacity(), 0);
        }
    }
    assert!(pairs >= 2, "the fixtures differ in shape");
}

#[test]
fn a_cache_filled_on_another_backend_is_a_typed_error() {
    // The same model on candle's reference path keeps its positions in tensors, the engine's
    // kernels in host buffers: a cache filled on one path is refused by the other, in either
    // direction, not read as zeros, and left as it was.
    let path = fixture("tiny-q8_0.gguf");
    let (ours, reference) = (Phi2::load(&path).unwrap(), Phi2::load_on(&path, phi2::Backend::CpuReference).unwrap());
    for (filler, reader) in [(&reference, &ours), (&ours, &reference)] {
        let mut cache = filler.new_cache();
        filler.forward(&[1, 2, 3], &mut cache, false).unwrap();
        let err = reader.forward(&[4], &mut cache, false).unwrap_err().to_string();
        assert!(err.contains("not this model's cache"), "{err}");
        assert_eq!(cache.len(), 3, "the refused pass left the cache as it was");
        // Its own model still reads it: the next step equals a one-pass forward of all four.
        let next = filler.forward(&[4], &mut cache, false).unwrap();
        let whole = filler.forward(&[1, 2, 3, 4], &mut filler.new_cache(), false).unwrap();
        let diff = (next - whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "max |Δ logit| {diff}");
    }
}

#[test]
fn incremental_decoding_matches_one_batch_forward() {
    // The KV-cache path (prefill + one token at a time) must equal scoring the whole sequence.
    let m = Arc::new(Phi2::load(&fixture("odd-f32.gguf")).unwrap());
    let g = run(&m, &PROMPT, &GenerateOptions { max_new_tokens: 6, stop_on_eos: false, ..Default::default() });
    let all: Vec<u32> = PROMPT.iter().chain(&g.tokens).copied().collect();
    let lp = m.logprobs(&all).unwrap();
    let v = m.config.vocab_size;
    for (i, &tok) in g.tokens.iter().enumerate() {
        let row = &lp[(PROMPT.len() - 1 + i) * v..(PROMPT.len() + i) * v];
        let best = (0..m.config.tokenizer_size).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        assert_eq!(best as u32, tok, "step {i}");
    }
}

#[test]
fn a_gguf_in_memory_loads_like_the_file() {
    let path = fixture("tiny-q4_0.gguf");
    let from_file = Arc::new(Phi2::load(&path).unwrap());
    let from_bytes = Arc::new(Phi2::load_gguf_bytes("tiny-q4_0.gguf", std::fs::read(&path).unwrap()).unwrap());
    let opts = GenerateOptions { max_new_tokens: 6, ..Default::default() };
    assert_eq!(run(&from_file, &PROMPT, &opts).tokens, run(&from_bytes, &PROMPT, &opts).tokens);
    let e = Phi2::load_gguf_bytes("upload.gguf", b"GGUF\x03\x00\x00\x00".to_vec()).unwrap_err();
    assert!(e.to_string().contains("upload.gguf"), "{e}");
}
