//! Node-API addon over the `phi2` engine (napi-rs). The TypeScript SDK (`@x/phi2`) is its only
//! consumer; the contract is `native.d.ts`.
//!
//! - Model loading and log-probs run on libuv's pool (`AsyncTask`); each generation on its own thread.
//! - Tokens stream back through a threadsafe function as they are produced.
//! - Cancellation: a `NativeCancelToken` per call, polled by the engine before every token.
//! - Errors cross as JS errors whose message starts with a stable code (`E_IO: …`); the package's
//!   `lib.js` moves that prefix into `error.code`. A Rust panic is caught and becomes `E_INTERNAL`:
//!   none ever unwinds into Node.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use phi2::gguf::{GgufFile, GgufVocab};
use phi2::{Phi2, Session};

mod batch;
mod convert;
mod probe;
mod runtime;

/// A JS error carrying a stable code as the message prefix.
fn coded(code: &str, msg: impl std::fmt::Display) -> Error {
    Error::new(Status::GenericFailure, format!("{code}: {msg}"))
}

fn engine_err(e: phi2::Error) -> Error {
    coded(e.code(), e)
}

/// Runs `f`, turning a panic into an `E_INTERNAL` error instead of unwinding into Node.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(coded("E_INTERNAL", format!("{what} failed unexpectedly: {msg} (please report this)")))
        }
    }
}

fn disposed(what: &str) -> Error {
    coded("E_DISPOSED", format!("this {what} was disposed; load the model again"))
}

/// Holds the model until `dispose()`; in-flight work keeps its own `Arc` and finishes first.
type ModelSlot = Arc<RwLock<Option<Arc<Phi2>>>>;

fn take_model(slot: &ModelSlot) -> Result<Arc<Phi2>> {
    slot.read().map_err(|_| coded("E_INTERNAL", "model lock poisoned"))?.clone().ok_or_else(|| disposed("model"))
}

#[napi(object)]
pub struct NativeModelInfo {
    pub architecture: String,
    pub format: String,
    pub dtype: String,
    pub vocab_size: u32,
    pub tokenizer_size: u32,
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub num_layers: u32,
    pub num_heads: u32,
    pub head_dim: u32,
    pub rotary_dim: u32,
    pub rope_theta: f64,
    pub layer_norm_eps: f64,
    pub context_length: u32,
    pub eos_token_id: Option<u32>,
    /// Where it runs: `"cpu"` or `"cuda:0 (NVIDIA H200, compute 9.0)"`.
    pub device: String,
    /// What its KV cache stores: `"f32"` or `"f16"`.
    pub kv_cache: String,
}

#[napi(object)]
pub struct NativeGgufVocab {
    pub model: String,
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

#[napi(object)]
pub struct NativeGenerateOptions {
    pub max_new_tokens: u32,
    pub do_sample: bool,
    pub temperature: f64,
    pub top_k: u32,
    pub top_p: f64,
    pub min_p: f64,
    pub repetition_penalty: f64,
    pub presence_penalty: f64,
    pub frequency_penalty: f64,
    pub logit_bias_ids: Vec<u32>,
    pub logit_bias_values: Vec<f64>,
    pub seed: f64,
    pub stop_on_eos: bool,
    /// Prompt-lookup speculative decoding; absent / null = off.
    pub speculative: Option<NativeSpeculative>,
}

/// Prompt-lookup speculative decoding settings (engine defaults: ngram 3, maxDraft 8).
#[napi(object)]
pub struct NativeSpeculative {
    /// N-gram length looked up in prompt + output, 1..=16.
    pub ngram: Option<u32>,
    /// Most draft tokens per verify pass, 1..=64.
    pub max_draft: Option<u32>,
}

/// What speculative decoding did (all zero when off, or not used for this model's type).
#[napi(object)]
pub struct NativeSpeculationStats {
    pub passes: u32,
    pub drafted: u32,
    pub accepted: u32,
}

#[napi(object)]
pub struct NativeGenerateResult {
    pub tokens: Vec<u32>,
    pub finish_reason: String,
    pub prompt_tokens: u32,
    pub prompt_tokens_evaluated: u32,
    pub prompt_ms: f64,
    pub generate_ms: f64,
    pub speculation: NativeSpeculationStats,
}

/// One per generate/logprobs call; `cancel()` stops native work before the next token.
#[napi]
pub struct NativeCancelToken {
    flag: Arc<AtomicBool>,
}

#[napi]
impl NativeCancelToken {
    #[napi(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        NativeCancelToken { flag: Arc::new(AtomicBool::new(false)) }
    }

    #[napi]
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }

    #[napi(getter)]
    pub fn cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

fn flag_of(cancel: Option<&NativeCancelToken>) -> Arc<AtomicBool> {
    cancel.map(|c| c.flag.clone()).unwrap_or_default()
}

#[napi]
pub struct NativeModel {
    slot: ModelSlot,
    path: PathBuf,
}

pub struct LoadTask {
    path: PathBuf,
    backend: String,
    kv_cache: String,
}

impl Task for LoadTask {
    type Output = Phi2;
    type JsValue = NativeModel;

    fn compute(&mut self) -> Result<Phi2> {
        guarded("loading the model", || {
            let backend = phi2::Backend::parse(&self.backend).map_err(engine_err)?;
            let kv = phi2::KvType::parse(&self.kv_cache).map_err(engine_err)?;
            Ok(Phi2::load_on(&self.path, backend).map_err(engine_err)?.with_kv_type(kv))
        })
    }

    fn resolve(&mut self, _env: Env, model: Phi2) -> Result<NativeModel> {
        Ok(NativeModel { slot: Arc::new(RwLock::new(Some(Arc::new(model)))), path: self.path.clone() })
    }
}

pub struct LogprobsTask {
    model: Arc<Phi2>,
    tokens: Vec<u32>,
    cancel: Arc<AtomicBool>,
}

impl Task for LogprobsTask {
    type Output = Vec<f32>;
    type JsValue = Float32Array;

    fn compute(&mut self) -> Result<Vec<f32>> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(coded("E_ABORTED", "cancelled before it started"));
        }
        guarded("computing log-probs", || self.model.logprobs(&self.tokens).map_err(engine_err))
    }

    fn resolve(&mut self, _env: Env, rows: Vec<f32>) -> Result<Float32Array> {
        Ok(Float32Array::new(rows))
    }
}

#[napi]
impl NativeModel {
    /// Loads off the JS thread. `threads` sets the process-wide compute threads of the engine's
    /// kernels (the latest load's value wins). `backend`: `"cpu"` (default), `"cuda"` or
    /// `"cuda:N"` (only the CUDA build has it; others answer `E_BACKEND_UNAVAILABLE`).
    /// `kvCache`: `"f32"` (default) or `"f16"` (`E_INVALID_ARGUMENT` otherwise).
    #[napi(ts_return_type = "Promise<NativeModel>")]
    pub fn load(path: String, threads: Option<u32>, backend: Option<String>, kv_cache: Option<String>) -> AsyncTask<LoadTask> {
        if let Some(n) = threads.filter(|&n| n > 0) {
            phi2::kernels::pool::set_threads(n as usize);
        }
        AsyncTask::new(LoadTask {
            path: PathBuf::from(path),
            backend: backend.unwrap_or_else(|| "cpu".into()),
            kv_cache: kv_cache.unwrap_or_else(|| "f32".into()),
        })
    }

    #[napi(getter)]
    pub fn info(&self) -> Result<NativeModelInfo> {
        let m = take_model(&self.slot)?;
        let c = &m.config;
        Ok(NativeModelInfo {
            architecture: "phi2".into(),
            format: m.info.format.into(),
            dtype: m.info.dtype.name().into(),
            vocab_size: c.vocab_size as u32,
            tokenizer_size: c.tokenizer_size as u32,
            hidden_size: c.hidden_size as u32,
            intermediate_size: c.intermediate_size as u32,
            num_layers: c.num_layers as u32,
            num_heads: c.num_heads as u32,
            head_dim: c.head_dim() as u32,
            rotary_dim: c.rotary_dim as u32,
            rope_theta: c.rope_theta as f64,
            layer_norm_eps: c.layer_norm_eps,
            context_length: c.context_length as u32,
            eos_token_id: c.eos_token_id,
            device: m.info.device.clone(),
            kv_cache: m.kv_type().name().into(),
        })
    }

    /// The tokenizer stored in a GGUF file's metadata, or null for safetensors models.
    #[napi]
    pub fn gguf_vocab(&self) -> Result<Option<NativeGgufVocab>> {
        let m = take_model(&self.slot)?;
        if m.info.format != "gguf" {
            return Ok(None);
        }
        guarded("reading the GGUF tokenizer", || {
            let g = GgufFile::open(&self.path).map_err(engine_err)?;
            Ok(GgufVocab::read(&g).map_err(engine_err)?.map(|v| NativeGgufVocab {
                model: v.model,
                pre: v.pre,
                tokens: v.tokens,
                token_types: v.token_types,
                merges: v.merges,
                bos_token_id: v.bos_token_id,
                eos_token_id: v.eos_token_id,
            }))
        })
    }

    #[napi]
    pub fn create_session(&self) -> Result<NativeSession> {
        let m = take_model(&self.slot)?;
        Ok(NativeSession { model: self.slot.clone(), session: Arc::new(Mutex::new(Some(Session::new(m)))) })
    }

    /// log-softmax rows, tokens.length × vocabSize, row-major, run from an empty context.
    #[napi(ts_return_type = "Promise<Float32Array>")]
    pub fn logprobs(&self, tokens: Vec<u32>, cancel: Option<&NativeCancelToken>) -> Result<AsyncTask<LogprobsTask>> {
        let model = take_model(&self.slot)?;
        Ok(AsyncTask::new(LogprobsTask { model, tokens, cancel: flag_of(cancel) }))
    }

    /// Releases the weights once in-flight work finishes; later calls throw E_DISPOSED.
    #[napi]
    pub fn dispose(&self) {
        if let Ok(mut slot) = self.slot.write() {
            slot.take();
        }
    }

    #[napi(getter)]
    pub fn disposed(&self) -> bool {
        self.slot.read().map(|s| s.is_none()).unwrap_or(true)
    }
}

/// A conversation: its KV cache persists across `generate` calls. Calls on one session are
/// serialised by its mutex; separate sessions run in parallel.
#[napi]
pub struct NativeSession {
    model: ModelSlot,
    session: Arc<Mutex<Option<Session>>>,
}

pub struct GenerateTask {
    model: ModelSlot,
    session: Arc<Mutex<Option<Session>>>,
    tokens: Vec<u32>,
    /// Validated when the generation starts (bad values reject the promise).
    params: phi2::GenerationParams,
    vocab: usize,
    cancel: Arc<AtomicBool>,
    on_token: Arc<ThreadsafeFunction<u32>>,
}

impl GenerateTask {
    /// Runs on the generation's own thread.
    fn run(&mut self) -> Result<NativeGenerateResult> {
        guarded("generating", || {
            let mut guard = self.session.lock().unwrap_or_else(|p| p.into_inner());
            // The model may have been disposed while this call waited in the queue.
            take_model(&self.model)?;
            let session = guard.as_mut().ok_or_else(|| disposed("session"))?;
            let opts = self.params.resolve(self.vocab).map_err(engine_err)?;
            let start = Instant::now();
            let mut first_token_at = None;
            let on_token = self.on_token.clone();
            // Tokens queued to JS, and tokens whose JS callback has returned: the promise must not
            // settle before every callback ran (async-work completion and the threadsafe function
            // are separate queues on the JS thread, with no order between them).
            let mut queued = 0usize;
            let delivered = Arc::new(AtomicUsize::new(0));
            let out = session
                .generate(&self.tokens, &opts, &self.cancel, |id| {
                    first_token_at.get_or_insert_with(Instant::now);
                    let delivered = delivered.clone();
                    // NonBlocking: the queue is unbounded, tokens are never dropped or reordered.
                    let status = on_token.call_with_return_value(
                        Ok(id),
                        ThreadsafeFunctionCallMode::NonBlocking,
                        move |_, _| {
                            delivered.fetch_add(1, Ordering::AcqRel);
                            Ok(())
                        },
                    );
                    queued += (status == Status::Ok) as usize;
                    status == Status::Ok
                })
                .map_err(engine_err)?;
            let end = Instant::now();
            // Bounded: if the JS side stops draining (environment teardown), give up waiting.
            let mut last = (delivered.load(Ordering::Acquire), Instant::now());
            while last.0 < queued && last.1.elapsed() < std::time::Duration::from_secs(10) {
                std::thread::sleep(std::time::Duration::from_micros(200));
                let now = delivered.load(Ordering::Acquire);
                if now != last.0 {
                    last = (now, Instant::now());
                }
            }
            let first = first_token_at.unwrap_or(end);
            Ok(NativeGenerateResult {
                prompt_tokens: self.tokens.len() as u32,
                prompt_tokens_evaluated: out.prompt_tokens_evaluated as u32,
                prompt_ms: (first - start).as_secs_f64() * 1e3,
                generate_ms: (end - first).as_secs_f64() * 1e3,
                finish_reason: out.finish.as_str().into(),
                speculation: NativeSpeculationStats {
                    passes: out.speculation.passes as u32,
                    drafted: out.speculation.drafted as u32,
                    accepted: out.speculation.accepted as u32,
                },
                tokens: out.tokens,
            })
        })
    }

}

/// The options as the engine's one parameters type (`phi2::GenerationParams`). Structural
/// problems (logit-bias lengths) and a bad seed throw at once; the sampling values are checked
/// by `resolve` when the generation starts, rejecting its promise.
fn params_from(o: &NativeGenerateOptions, vocab: usize) -> Result<phi2::GenerationParams> {
    let params = batch::params_of(o)?;
    phi2::GenerationParams { seed: params.seed, ..Default::default() }.resolve(vocab).map_err(engine_err)?;
    Ok(params)
}

#[napi]
impl NativeSession {
    /// Generates after `tokens` (the whole conversation so far). `onToken(err, id)` is called for
    /// each new token, in order, before the promise resolves.
    ///
    /// Each call runs on its own native thread rather than on libuv's small shared pool, so long
    /// generations never starve the process's file system and DNS work.
    #[napi(ts_return_type = "Promise<NativeGenerateResult>")]
    pub fn generate<'env>(
        &self,
        env: &'env Env,
        tokens: Vec<u32>,
        options: NativeGenerateOptions,
        on_token: ThreadsafeFunction<u32>,
        cancel: Option<&NativeCancelToken>,
    ) -> Result<Object<'env>> {
        let vocab = take_model(&self.model)?.config.vocab_size;
        let mut task = GenerateTask {
            model: self.model.clone(),
            session: self.session.clone(),
            tokens,
            params: params_from(&options, vocab)?,
            vocab,
            cancel: flag_of(cancel),
            on_token: Arc::new(on_token),
        };
        let (deferred, promise) = env.create_deferred::<NativeGenerateResult, _>()?;
        std::thread::Builder::new()
            .name("phi2-generate".into())
            .spawn(move || match task.run() {
                Ok(out) => deferred.resolve(move |_| Ok(out)),
                Err(e) => deferred.reject(e),
            })
            .map_err(|e| coded("E_INTERNAL", format!("cannot start a generation thread: {e}")))?;
        Ok(promise)
    }

    /// Forgets the KV cache.
    #[napi]
    pub fn reset(&self) {
        if let Ok(mut s) = self.session.try_lock() {
            if let Some(s) = s.as_mut() {
                s.reset();
            }
        }
    }

    /// Frees the KV cache (after any generation in flight).
    #[napi]
    pub fn dispose(&self) {
        let session = self.session.clone();
        // Don't block the JS thread behind a running generation: drop it on a helper thread.
        std::thread::spawn(move || {
            if let Ok(mut s) = session.lock() {
                s.take();
            }
        });
    }
}
