//! Streamed GGUF loading (`GgufStreamLoader`) against `Phi2::load` on the same files, its errors,
//! and step-wise generation (`Session::begin` / `step` / `end`) against `Session::generate`.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use common::fixture;
use phi2::stream::{WASM32_MEMORY_LIMIT, WORKING_MARGIN};
use phi2::{FinishReason, GenerateOptions, GgufStreamLoader, KvType, Phi2, SamplingParams, Session};

const PROMPT: [u32; 11] = [464, 2068, 7586, 21831, 18045, 625, 198, 50284, 1169, 16931, 3290];
const FIXTURES: [&str; 6] = ["tiny-f32.gguf", "tiny-f16.gguf", "tiny-q4_0.gguf", "tiny-q8_0.gguf", "kq-q4_K.gguf", "kq-mix.gguf"];

/// splitmix64: a small seeded generator for chunk sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// 1..=max, log-uniform (as many tiny chunks as huge ones).
    fn chunk(&mut self, max: usize) -> usize {
        let bits = 64 - (max as u64).leading_zeros() as u64;
        let cap = 1u64 << (self.next() % (bits + 1));
        (1 + self.next() % cap).min(max as u64) as usize
    }
}

/// Pushes `bytes` in seeded random chunk sizes (from 1 byte up to the whole file).
fn push_random(loader: &mut GgufStreamLoader, bytes: &[u8], seed: u64) {
    let mut rng = Rng(seed);
    let mut at = 0;
    while at < bytes.len() {
        let n = rng.chunk(bytes.len() - at);
        loader.push(&bytes[at..at + n]).unwrap();
        at += n;
        assert_eq!(loader.received(), at as u64);
    }
}

fn stream_load(name: &str, seed: u64) -> Phi2 {
    let bytes = std::fs::read(fixture(name)).unwrap();
    let mut loader = GgufStreamLoader::new(name, bytes.len() as u64, false).unwrap();
    push_random(&mut loader, &bytes, seed);
    assert!(loader.header_parsed());
    assert_eq!(loader.sha256(), None, "no hash was asked for");
    let (model, vocab) = loader.finish().unwrap();
    let vocab = vocab.expect("the fixtures carry a tokenizer");
    assert_eq!(vocab.tokens[464], "The");
    model
}

fn tokens_of(model: &Arc<Phi2>, opts: &GenerateOptions) -> Vec<u32> {
    Session::new(model.clone()).generate(&PROMPT, opts, &AtomicBool::new(false), |_| true).unwrap().tokens
}

#[test]
fn streamed_loads_are_bit_identical_to_file_loads() {
    for (k, name) in FIXTURES.iter().enumerate() {
        let reference = Arc::new(Phi2::load(&fixture(name)).unwrap());
        let expected = reference.logprobs(&PROMPT).unwrap();
        for seed in [k as u64, 100 + k as u64] {
            let streamed = Arc::new(stream_load(name, seed));
            assert_eq!(streamed.info, reference.info, "{name}");
            assert_eq!(streamed.config, reference.config, "{name}");
            let got = streamed.logprobs(&PROMPT).unwrap();
            assert_eq!(got.len(), expected.len());
            let same = got.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{name} seed {seed}: log-probs differ from Phi2::load");
            let opts = GenerateOptions { max_new_tokens: 6, stop_on_eos: false, ..Default::default() };
            assert_eq!(tokens_of(&streamed, &opts), tokens_of(&reference, &opts), "{name}");
        }
    }
}

/// `name`'s bytes rewritten so that the tensor data lies in the reverse of the tensor-info order
/// (offsets patched in place in the infos), with a block of junk after the last tensor.
fn reversed_layout(name: &str) -> Vec<u8> {
    let bytes = std::fs::read(fixture(name)).unwrap();
    let g = phi2::gguf::GgufFile::from_bytes(std::path::Path::new(name), bytes.clone().into()).unwrap();
    let align = 32;
    let data_offset = g.data_offset();
    let mut out = bytes[..data_offset].to_vec();
    let infos = g.tensor_infos();
    let mut rel = 0usize;
    let mut data = Vec::new();
    for info in infos.iter().rev() {
        let len = info.len.unwrap();
        // The info's offset field: after the name, n_dims, ne[..] and the type id.
        let mut key = (info.name.len() as u64).to_le_bytes().to_vec();
        key.extend_from_slice(info.name.as_bytes());
        let at = out[..data_offset].windows(key.len()).rposition(|w| w == key.as_slice()).unwrap();
        let field = at + key.len() + 4 + 8 * info.shape.len() + 4;
        let old = u64::from_le_bytes(out[field..field + 8].try_into().unwrap());
        assert_eq!(old as usize + data_offset, info.offset, "{}", info.name);
        out[field..field + 8].copy_from_slice(&(rel as u64).to_le_bytes());
        data.resize(rel, 0xAB); // padding between tensors
        data.extend_from_slice(&bytes[info.offset..info.offset + len]);
        rel = data.len().next_multiple_of(align);
    }
    out.extend_from_slice(&data);
    out.extend_from_slice(&[0xCD; 1000]); // bytes after the last tensor are ignored
    out
}

#[test]
fn tensors_in_any_offset_order_and_trailing_bytes() {
    for name in ["tiny-q8_0.gguf", "kq-mix.gguf"] {
        let expected = Phi2::load(&fixture(name)).unwrap().logprobs(&PROMPT).unwrap();
        let bytes = reversed_layout(name);
        let first = phi2::gguf::GgufFile::from_bytes(std::path::Path::new(name), bytes.clone().into()).unwrap();
        let offsets: Vec<usize> = first.tensor_infos().iter().map(|t| t.offset).collect();
        assert!(offsets.windows(2).all(|w| w[0] > w[1]), "{name}: data not reversed");
        let mut loader = GgufStreamLoader::new(name, bytes.len() as u64, false).unwrap();
        push_random(&mut loader, &bytes, 5);
        let got = loader.finish().unwrap().0.logprobs(&PROMPT).unwrap();
        assert!(got.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}");
        assert_eq!(Phi2::load_gguf_bytes(name, bytes).unwrap().logprobs(&PROMPT).unwrap(), expected);
    }
}

#[test]
fn one_push_and_load_gguf_bytes_work_too() {
    let name = "tiny-q4_0.gguf";
    let bytes = std::fs::read(fixture(name)).unwrap();
    let reference = Phi2::load(&fixture(name)).unwrap().logprobs(&PROMPT).unwrap();
    let mut loader = GgufStreamLoader::new(name, bytes.len() as u64, true).unwrap();
    loader.push(&bytes).unwrap();
    assert_eq!(loader.finish().unwrap().0.logprobs(&PROMPT).unwrap(), reference);
    let m = Phi2::load_gguf_bytes(name, bytes).unwrap();
    assert_eq!(m.logprobs(&PROMPT).unwrap(), reference);
}

#[test]
fn sha256_is_the_files_and_only_when_complete() {
    let path = fixture("tiny-q8_0.gguf");
    let out = std::process::Command::new("sha256sum").arg(&path).output().expect("sha256sum (coreutils)");
    let expected = String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string();
    assert_eq!(expected.len(), 64);
    let bytes = std::fs::read(&path).unwrap();
    let mut loader = GgufStreamLoader::new("tiny-q8_0.gguf", bytes.len() as u64, true).unwrap();
    let (head, tail) = bytes.split_at(bytes.len() - 10);
    push_random(&mut loader, head, 9);
    assert_eq!(loader.sha256(), None, "not complete yet");
    loader.push(tail).unwrap();
    assert_eq!(loader.sha256().as_deref(), Some(expected.as_str()));
    loader.finish().unwrap();
}

#[test]
fn truncated_stream_fails_at_finish() {
    let bytes = std::fs::read(fixture("tiny-q8_0.gguf")).unwrap();
    let mut loader = GgufStreamLoader::new("cut.gguf", bytes.len() as u64, false).unwrap();
    push_random(&mut loader, &bytes[..bytes.len() - 100], 3);
    assert!(loader.header_parsed());
    let err = loader.finish().err().expect("a truncated stream must not load");
    assert_eq!(err.code(), "E_MALFORMED_FILE");
    let msg = err.to_string();
    for needle in ["cut.gguf", &format!("{} of the declared {} bytes", bytes.len() - 100, bytes.len())] {
        assert!(msg.contains(needle), "{msg}");
    }
    // Nothing at all arrived.
    let err = GgufStreamLoader::new("none.gguf", 1000, false).unwrap().finish().err().unwrap();
    assert_eq!(err.code(), "E_MALFORMED_FILE");
}

#[test]
fn bytes_past_the_total_are_refused() {
    let bytes = std::fs::read(fixture("tiny-q4_0.gguf")).unwrap();
    let mut loader = GgufStreamLoader::new("x.gguf", bytes.len() as u64, false).unwrap();
    let mut long = bytes.clone();
    long.push(0);
    let err = loader.push(&long).unwrap_err();
    assert_eq!(err.code(), "E_INVALID_ARGUMENT");
    assert_eq!(loader.received(), 0, "a refused chunk is not taken");
    loader.push(&bytes).unwrap();
    let err = loader.push(&[0]).unwrap_err();
    assert_eq!(err.code(), "E_INVALID_ARGUMENT");
    assert!(err.to_string().contains("declared total"), "{err}");
    // The refused bytes did not disturb the stream.
    loader.finish().unwrap();
}

/// Pushes `bytes` one byte at a time until a push fails; returns the error and how many bytes
/// had been accepted before it.
fn first_failure(bytes: &[u8]) -> (phi2::Error, usize) {
    let mut loader = GgufStreamLoader::new("bad.gguf", bytes.len() as u64, false).unwrap();
    for (i, b) in bytes.iter().enumerate() {
        if let Err(e) = loader.push(std::slice::from_ref(b)) {
            // A failed loader keeps failing.
            assert!(loader.push(&[0]).is_err());
            return (e, i);
        }
    }
    panic!("no push failed");
}

#[test]
fn a_bad_header_fails_during_the_push_that_reveals_it() {
    let bytes = std::fs::read(fixture("tiny-q8_0.gguf")).unwrap();

    let mut bad = bytes.clone();
    bad[0] = b'X';
    let (e, at) = first_failure(&bad);
    assert_eq!(e.code(), "E_MALFORMED_FILE");
    assert!(e.to_string().contains("bad magic"), "{e}");
    assert!(at < 4, "bad magic seen only after {at} bytes");

    // kv_count (bytes 16..24) far beyond what the file could hold.
    let mut bad = bytes.clone();
    bad[16..24].copy_from_slice(&(u64::MAX / 3).to_le_bytes());
    let (e, at) = first_failure(&bad);
    assert_eq!(e.code(), "E_MALFORMED_FILE");
    assert!(e.to_string().contains("kv_count"), "{e}");
    assert!(at < 24, "absurd kv_count seen only after {at} bytes");

    // The first metadata key's length (bytes 24..32) beyond the file: seen from its 8 bytes.
    let mut bad = bytes.clone();
    bad[24..32].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    let (e, at) = first_failure(&bad);
    assert_eq!(e.code(), "E_MALFORMED_FILE");
    assert!(at < 32, "bad key length seen only after {at} bytes");

    // A model that is not phi2: refused when the header completes, long before the data.
    let mut loader = GgufStreamLoader::new("x.gguf", bytes.len() as u64, false).unwrap();
    let key = b"general.architecture";
    let pos = bytes.windows(key.len()).position(|w| w == key).unwrap();
    let mut bad = bytes.clone();
    // The value is a gguf string "phi2": 4-byte type, 8-byte length, then the text.
    let text = pos + key.len() + 4 + 8;
    assert_eq!(&bad[text..text + 4], b"phi2");
    bad[text..text + 4].copy_from_slice(b"phi3");
    let mut failed_at = None;
    for (i, c) in bad.chunks(4096).enumerate() {
        if let Err(e) = loader.push(c) {
            assert_eq!(e.code(), "E_BAD_CONFIG", "{e}");
            failed_at = Some(i * 4096);
            break;
        }
    }
    let at = failed_at.expect("the wrong architecture must be refused");
    assert!(at < bytes.len() / 2, "refused only at byte {at} of {}", bytes.len());
}

#[test]
fn models_that_cannot_fit_are_refused_early() {
    // 5.6 GB (phi-2 F16) cannot fit in wasm32 memory: refused before any byte.
    let err = GgufStreamLoader::with_memory_limit("phi-2.F16.gguf", 5_600_000_000, false, Some(WASM32_MEMORY_LIMIT))
        .err()
        .expect("too large");
    assert_eq!(err.code(), "E_MODEL_TOO_LARGE");
    let msg = err.to_string();
    for needle in ["phi-2.F16.gguf", "5600000000", &WASM32_MEMORY_LIMIT.to_string(), "4 GiB", "Q4_0", "Q4_K", "Q8_0"] {
        assert!(msg.contains(needle), "missing {needle:?} in {msg}");
    }
    // A 1.6 GB Q4 passes this first check.
    GgufStreamLoader::with_memory_limit("phi-2.Q4_0.gguf", 1_600_000_000, false, Some(WASM32_MEMORY_LIMIT)).unwrap();

    // The file alone fits, but not with the KV cache at full context: refused once the header
    // is parsed, before the tensor data arrived.
    let bytes = std::fs::read(fixture("tiny-q8_0.gguf")).unwrap();
    let limit = bytes.len() as u64 + WORKING_MARGIN + 1;
    let mut loader = GgufStreamLoader::with_memory_limit("tiny.gguf", bytes.len() as u64, false, Some(limit)).unwrap();
    let mut failed = None;
    for c in bytes.chunks(1 << 16) {
        if let Err(e) = loader.push(c) {
            failed = Some(e);
            break;
        }
    }
    let err = failed.expect("must not fit");
    assert_eq!(err.code(), "E_MODEL_TOO_LARGE");
    assert!(err.to_string().contains("KV cache"), "{err}");
    assert!(loader.received() < bytes.len() as u64 / 2, "refused only after {} bytes", loader.received());
    // With room for the KV cache it loads.
    let roomy = bytes.len() as u64 + WORKING_MARGIN + (64 << 20);
    let mut loader = GgufStreamLoader::with_memory_limit("tiny.gguf", bytes.len() as u64, false, Some(roomy)).unwrap();
    loader.push(&bytes).unwrap();
    loader.finish().unwrap();
}

// ---- step-wise generation ----

fn q8() -> Arc<Phi2> {
    Arc::new(Phi2::load(&fixture("tiny-q8_0.gguf")).unwrap())
}

/// begin, step until None, end.
fn stepped(s: &mut Session, prompt: &[u32], opts: &GenerateOptions) -> phi2::Generation {
    s.begin(prompt, opts).unwrap();
    let mut seen = Vec::new();
    while let Some(t) = s.step().unwrap() {
        seen.push(t);
    }
    assert_eq!(s.step().unwrap(), None, "stays done");
    let g = s.end().unwrap();
    assert_eq!(g.tokens, seen);
    g
}

#[test]
fn step_wise_generation_equals_generate() {
    let m = q8();
    let greedy = GenerateOptions { max_new_tokens: 9, stop_on_eos: false, ..Default::default() };
    let sampled = GenerateOptions {
        max_new_tokens: 12,
        sampling: SamplingParams { do_sample: true, temperature: 0.9, top_k: 40, top_p: 0.95, seed: 1234, ..Default::default() },
        stop_on_eos: true,
        speculative: None,
    };
    for opts in [&greedy, &sampled] {
        let whole = Session::new(m.clone()).generate(&PROMPT, opts, &AtomicBool::new(false), |_| true).unwrap();
        let steps = stepped(&mut Session::new(m.clone()), &PROMPT, opts);
        assert_eq!(steps, whole);
    }
    let g = stepped(&mut Session::new(m.clone()), &PROMPT, &greedy);
    assert_eq!((g.tokens.len(), g.finish, g.prompt_tokens_evaluated), (9, FinishReason::Length, PROMPT.len()));

    // EOS: bias the EOS token up so that it comes first.
    let eos = m.config.eos_token_id.unwrap();
    let mut opts = greedy.clone();
    opts.stop_on_eos = true;
    opts.sampling.logit_bias = vec![(eos, 100.0)];
    let g = stepped(&mut Session::new(m.clone()), &PROMPT, &opts);
    assert_eq!((g.tokens.as_slice(), g.finish), (&[eos][..], FinishReason::Eos));

    // max_new_tokens 0: nothing runs.
    let mut s = Session::new(m.clone());
    let g = stepped(&mut s, &PROMPT, &GenerateOptions { max_new_tokens: 0, ..Default::default() });
    assert_eq!((g.tokens.len(), g.finish), (0, FinishReason::Length));
    assert!(s.history().is_empty());
}

#[test]
fn ending_early_is_an_abort_and_the_cache_is_reused() {
    let m = q8();
    let opts = GenerateOptions { max_new_tokens: 8, stop_on_eos: false, ..Default::default() };
    let full = Session::new(m.clone()).generate(&PROMPT, &opts, &AtomicBool::new(false), |_| true).unwrap();

    let mut s = Session::new(m.clone());
    s.begin(&PROMPT, &opts).unwrap();
    let a = s.step().unwrap().unwrap();
    let b = s.step().unwrap().unwrap();
    let g = s.end().unwrap();
    assert_eq!(g.tokens, vec![a, b]);
    assert_eq!(&g.tokens[..], &full.tokens[..2]);
    assert_eq!(g.finish, FinishReason::Cancelled);
    assert_eq!(g.finish.as_str(), "abort");

    // Ended before any step: abort, nothing generated.
    let mut s2 = Session::new(m.clone());
    s2.begin(&PROMPT, &opts).unwrap();
    let g = s2.end().unwrap();
    assert_eq!((g.tokens.len(), g.finish), (0, FinishReason::Cancelled));

    // The last token returned was final: end reports why, not an abort.
    let mut s3 = Session::new(m.clone());
    s3.begin(&PROMPT, &GenerateOptions { max_new_tokens: 1, ..opts.clone() }).unwrap();
    s3.step().unwrap().unwrap();
    assert_eq!(s3.end().unwrap().finish, FinishReason::Length);

    // The next turn reuses the cache of the aborted one (prompt + a evaluated; b was not run).
    let next: Vec<u32> = PROMPT.iter().copied().chain([a, b, 198]).collect();
    let g2 = stepped(&mut s, &next, &GenerateOptions { max_new_tokens: 4, ..opts.clone() });
    assert_eq!(g2.prompt_tokens_evaluated, 2, "only b and 198 are new");
    let fresh = Session::new(m.clone()).generate(&next, &GenerateOptions { max_new_tokens: 4, ..opts }, &AtomicBool::new(false), |_| true);
    assert_eq!(g2.tokens, fresh.unwrap().tokens);
}

#[test]
fn step_wise_misuse_is_an_error_not_a_panic() {
    let m = q8();
    let mut s = Session::new(m.clone());
    assert_eq!(s.step().unwrap_err().code(), "E_INVALID_ARGUMENT");
    assert_eq!(s.end().unwrap_err().code(), "E_INVALID_ARGUMENT");
    assert_eq!(s.begin(&[], &GenerateOptions::default()).unwrap_err().code(), "E_INVALID_ARGUMENT");
    assert!(!s.is_running());
    s.begin(&PROMPT, &GenerateOptions::default()).unwrap();
    assert_eq!(s.begin(&PROMPT, &GenerateOptions::default()).unwrap_err().code(), "E_BUSY");
    let e = s.generate(&PROMPT, &GenerateOptions::default(), &AtomicBool::new(false), |_| true).unwrap_err();
    assert_eq!(e.code(), "E_BUSY");
    s.end().unwrap();
    // reset() drops a generation in progress.
    s.begin(&PROMPT, &GenerateOptions::default()).unwrap();
    s.reset();
    assert!(!s.is_running());
    s.begin(&PROMPT, &GenerateOptions { max_new_tokens: 1, ..Default::default() }).unwrap();
    assert!(s.step().unwrap().is_some());
    s.end().unwrap();
}

/// `bytes` (a GGUF) with its `phi2.context_length` set to `ctx` (u32 or u64 metadata value).
fn with_context_length(mut bytes: Vec<u8>, ctx: u64) -> Vec<u8> {
    let key = b"phi2.context_length";
    let at = bytes.windows(key.len()).position(|w| w == key).expect("context_length key") + key.len();
    let ty = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    match ty {
        4 => bytes[at + 4..at + 8].copy_from_slice(&(ctx as u32).to_le_bytes()),
        10 => bytes[at + 4..at + 12].copy_from_slice(&ctx.to_le_bytes()),
        t => panic!("unexpected metadata type {t} for phi2.context_length"),
    }
    bytes
}

#[test]
fn a_context_cap_lets_a_model_fit_that_does_not_at_its_full_context() {
    // tiny: 2 layers × hidden 64 → an f32 KV cache of 1 KiB per position. At a context of 2^20
    // positions that is 1 GiB; the limit leaves room for about 300 MiB of it.
    let bytes = with_context_length(std::fs::read(fixture("tiny-q8_0.gguf")).unwrap(), 1 << 20);
    let total = bytes.len() as u64;
    let limit = total + WORKING_MARGIN + (300 << 20);
    let mut loader = GgufStreamLoader::with_limits("long.gguf", total, false, Some(limit), None).unwrap();
    let err = loader.push(&bytes).err().expect("the full context cannot fit");
    assert_eq!(err.code(), "E_MODEL_TOO_LARGE");
    let msg = err.to_string();
    // 300 MiB / 1 KiB = 307200 positions, a multiple of 256.
    assert!(msg.contains("context of at most 307200 tokens") && msg.contains("contextLength 307200"), "{msg}");

    let mut loader = GgufStreamLoader::with_limits("long.gguf", total, false, Some(limit), Some(307_200)).unwrap();
    push_random(&mut loader, &bytes, 7);
    let (model, _) = loader.finish().unwrap();
    assert_eq!(model.config.context_length, 307_200);
    assert_eq!(model.info.trained_context_length, 1 << 20);

    // The cap is the context the engine enforces: a 10-token cap ends generation at 10 positions.
    let (capped, _) = {
        let mut l = GgufStreamLoader::with_limits("long.gguf", total, false, None, Some(10)).unwrap();
        l.push(&bytes).unwrap();
        l.finish().unwrap()
    };
    let mut s = Session::new(Arc::new(capped));
    let opts = GenerateOptions { max_new_tokens: 100, stop_on_eos: false, ..GenerateOptions::default() };
    let out = s.generate(&[464, 2068, 7586], &opts, &AtomicBool::new(false), |_| true).unwrap();
    assert_eq!(out.finish, FinishReason::ContextFull);
    assert_eq!(3 + out.tokens.len(), 10);

    assert_eq!(GgufStreamLoader::with_limits("x.gguf", total, false, None, Some(0)).err().unwrap().code(), "E_INVALID_ARGUMENT");
}

#[test]
fn an_f16_cache_counts_its_bytes_in_the_fit_check() {
    // tiny (2 layers × hidden 64) at a context of 2^19 positions: an f32 cache of 512 MiB; an f16
    // one of 256 MiB plus the f32 copy of one layer a prompt pass reads it through (256 MiB). The
    // limit leaves room for 300 MiB: neither fits; capped at 2^18 positions, the f16 one does,
    // and the model then makes f16 caches.
    let bytes = with_context_length(std::fs::read(fixture("tiny-q8_0.gguf")).unwrap(), 1 << 19);
    let total = bytes.len() as u64;
    let limit = total + WORKING_MARGIN + (300 << 20);
    for (kv, what) in [(KvType::F32, "with the f32 KV cache at a context of 524288 tokens: 0.54 GB"), (KvType::F16, "with the f16 KV cache at a context of 524288 tokens: 0.54 GB")] {
        let mut loader = GgufStreamLoader::with_limits("long.gguf", total, false, Some(limit), None).unwrap().with_kv_type(kv);
        let err = loader.push(&bytes).err().expect("cannot fit");
        assert_eq!(err.code(), "E_MODEL_TOO_LARGE");
        assert!(err.to_string().contains(what), "{err}");
    }
    let mut loader = GgufStreamLoader::with_limits("long.gguf", total, false, Some(limit), Some(1 << 18)).unwrap().with_kv_type(KvType::F16);
    push_random(&mut loader, &bytes, 3);
    let (model, _) = loader.finish().unwrap();
    assert_eq!((model.kv_type(), model.config.context_length), (KvType::F16, 1 << 18));
}
