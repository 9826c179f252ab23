//! The continuous-batching engine for Node (`phi2 serve`): a [`phi2::Batch`] on its own native
//! thread, fed through a channel. `submit` returns a request id at once; the request's tokens,
//! then its end (or its error), arrive in order through the request's own threadsafe function.
//! `cancel(id)` makes it leave the batch at the next step. The JS thread never waits on a
//! forward pass.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use phi2::batch::{BatchConfig, BatchEvent, SeqId};
use phi2::{Batch, GenerateOptions, GenerationParams, Phi2};

use crate::{coded, engine_err, guarded, take_model, NativeGenerateOptions, NativeModel};

/// `NativeGenerateOptions` as the engine's one parameters type (validated by `resolve`).
pub(crate) fn params_of(o: &NativeGenerateOptions) -> Result<GenerationParams> {
    if o.logit_bias_ids.len() != o.logit_bias_values.len() {
        return Err(coded("E_INVALID_ARGUMENT", "logitBiasIds and logitBiasValues differ in length"));
    }
    Ok(GenerationParams {
        max_new_tokens: Some(o.max_new_tokens as f64),
        do_sample: Some(o.do_sample),
        temperature: Some(o.temperature),
        top_k: Some(o.top_k as f64),
        top_p: Some(o.top_p),
        min_p: Some(o.min_p),
        repetition_penalty: Some(o.repetition_penalty),
        presence_penalty: Some(o.presence_penalty),
        frequency_penalty: Some(o.frequency_penalty),
        logit_bias: o.logit_bias_ids.iter().map(|&i| i as f64).zip(o.logit_bias_values.iter().copied()).collect(),
        seed: Some(o.seed),
        stop_on_eos: Some(o.stop_on_eos),
        speculative: o.speculative.as_ref().map(|s| (s.ngram.map(f64::from), s.max_draft.map(f64::from))),
    })
}

/// Limits of the batch engine (engine defaults when absent).
#[napi(object)]
pub struct NativeBatchConfig {
    /// Sequences decoded together; more requests wait in the engine's queue. Default 16.
    pub max_sequences: Option<u32>,
    /// Most prompt tokens of one request run per step. Default 256.
    pub prefill_chunk: Option<u32>,
    /// Most rows in one step's forward pass. Default 512.
    pub step_tokens: Option<u32>,
}

/// One thing that happened to a request: `kind` is `"token"` (`token`, and with log-probs
/// `logprob`, `topIds`, `topLogprobs`), `"done"` (`finishReason`, `promptTokens`,
/// `completionTokens`, `queueMs`, `generateMs`) or `"error"` (`error`: a coded message such as
/// `E_INVALID_ARGUMENT: …`). `"done"`/`"error"` come last, once.
#[napi(object)]
pub struct NativeBatchEvent {
    pub kind: String,
    pub token: Option<u32>,
    pub logprob: Option<f64>,
    pub top_ids: Option<Vec<u32>>,
    pub top_logprobs: Option<Vec<f64>>,
    pub finish_reason: Option<String>,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    /// From submit to the first step that ran the request.
    pub queue_ms: Option<f64>,
    /// From that step to the end.
    pub generate_ms: Option<f64>,
    pub error: Option<String>,
}

impl NativeBatchEvent {
    fn new(kind: &str) -> Self {
        NativeBatchEvent {
            kind: kind.into(),
            token: None,
            logprob: None,
            top_ids: None,
            top_logprobs: None,
            finish_reason: None,
            prompt_tokens: None,
            completion_tokens: None,
            queue_ms: None,
            generate_ms: None,
            error: None,
        }
    }

    fn error(e: &Error) -> Self {
        NativeBatchEvent { error: Some(e.reason.clone()), ..Self::new("error") }
    }
}

/// Counters shared with the JS side (read by `stats`).
#[napi(object)]
pub struct NativeBatchStats {
    /// Requests in the batch (prefilling or decoding).
    pub active: u32,
    /// Requests waiting for room in the batch.
    pub queued: u32,
    /// Sequences in the latest step.
    pub last_batch_size: u32,
    /// Forward passes run so far.
    pub steps: f64,
}

type EventFn = ThreadsafeFunction<NativeBatchEvent>;

struct Request {
    id: u64,
    tokens: Vec<u32>,
    opts: GenerateOptions,
    top_logprobs: Option<usize>,
    on_event: EventFn,
    submitted: Instant,
}

enum Command {
    Submit(Box<Request>),
    Cancel(u64),
    Shutdown,
}

#[derive(Default)]
struct Shared {
    active: AtomicU32,
    queued: AtomicU32,
    last_batch: AtomicU32,
    steps: AtomicU64,
}

/// A batch engine over one model (module docs). Dispose it (or let it be collected) to stop its
/// thread; requests still in it then end with `E_DISPOSED`.
#[napi]
pub struct NativeBatchEngine {
    tx: Sender<Command>,
    next_id: AtomicU64,
    vocab: usize,
    shared: Arc<Shared>,
}

fn send(f: &EventFn, e: NativeBatchEvent) {
    f.call(Ok(e), ThreadsafeFunctionCallMode::NonBlocking);
}

/// A request in the batch: its callback and timing.
struct Live {
    id: u64,
    on_event: EventFn,
    prompt_tokens: usize,
    submitted: Instant,
    started: Instant,
}

fn worker(mut batch: Batch, rx: Receiver<Command>, shared: Arc<Shared>) {
    let mut waiting: VecDeque<Box<Request>> = VecDeque::new();
    let mut live: HashMap<SeqId, Live> = HashMap::new();
    let mut by_request: HashMap<u64, SeqId> = HashMap::new();
    let mut shutdown = false;
    loop {
        // Take every command; block only when there is nothing to run.
        let mut next = if batch.is_empty() && waiting.is_empty() && !shutdown {
            match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => return,
            }
        } else {
            rx.try_recv().ok()
        };
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Submit(r) if shutdown => send(&r.on_event, NativeBatchEvent::error(&disposed())),
                Command::Submit(r) => waiting.push_back(r),
                Command::Cancel(id) => {
                    if let Some(seq) = by_request.get(&id) {
                        batch.cancel(*seq);
                    } else if let Some(at) = waiting.iter().position(|r| r.id == id) {
                        let r = waiting.remove(at).expect("found above");
                        let ms = r.submitted.elapsed().as_secs_f64() * 1e3;
                        send(
                            &r.on_event,
                            NativeBatchEvent {
                                finish_reason: Some("abort".into()),
                                prompt_tokens: Some(r.tokens.len() as u32),
                                completion_tokens: Some(0),
                                queue_ms: Some(ms),
                                generate_ms: Some(0.0),
                                ..NativeBatchEvent::new("done")
                            },
                        );
                    }
                }
                Command::Shutdown => {
                    shutdown = true;
                    for r in waiting.drain(..) {
                        send(&r.on_event, NativeBatchEvent::error(&disposed()));
                    }
                    for seq in live.keys() {
                        batch.cancel(*seq);
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        if shutdown && batch.is_empty() {
            return;
        }
        while batch.has_room() && !shutdown {
            let Some(r) = waiting.pop_front() else { break };
            match batch.add(&r.tokens, &r.opts, r.top_logprobs) {
                Ok(seq) => {
                    by_request.insert(r.id, seq);
                    live.insert(
                        seq,
                        Live { id: r.id, on_event: r.on_event, prompt_tokens: r.tokens.len(), submitted: r.submitted, started: Instant::now() },
                    );
                }
                Err(e) => send(&r.on_event, NativeBatchEvent::error(&engine_err(e))),
            }
        }
        shared.active.store(batch.len() as u32, Ordering::Relaxed);
        shared.queued.store(waiting.len() as u32, Ordering::Relaxed);
        if batch.is_empty() {
            continue;
        }
        shared.last_batch.store(batch.len() as u32, Ordering::Relaxed);
        let events = match guarded("a batch step", || batch.step().map_err(engine_err)) {
            Ok(ev) => ev,
            Err(e) => {
                // Unreachable in practice (step turns failures into per-sequence events); if
                // it happens, end everything rather than loop on it.
                for (_, l) in live.drain() {
                    send(&l.on_event, NativeBatchEvent::error(&e));
                }
                batch = match Batch::new(batch.model().clone(), *batch.config()) {
                    Ok(b) => b,
                    Err(_) => return,
                };
                by_request.clear();
                continue;
            }
        };
        shared.steps.fetch_add(1, Ordering::Relaxed);
        for ev in events {
            match ev {
                BatchEvent::Token { seq, token, logprobs } => {
                    if let Some(l) = live.get(&seq) {
                        let mut e = NativeBatchEvent { token: Some(token), ..NativeBatchEvent::new("token") };
                        if let Some(lp) = logprobs {
                            e.logprob = Some(lp.logprob as f64);
                            e.top_ids = Some(lp.top.iter().map(|t| t.0).collect());
                            e.top_logprobs = Some(lp.top.iter().map(|t| t.1 as f64).collect());
                        }
                        send(&l.on_event, e);
                    }
                }
                BatchEvent::Finished { seq, generation } => {
                    if let Some(l) = live.remove(&seq) {
                        by_request.remove(&l.id);
                        send(
                            &l.on_event,
                            NativeBatchEvent {
                                finish_reason: Some(generation.finish.as_str().into()),
                                prompt_tokens: Some(l.prompt_tokens as u32),
                                completion_tokens: Some(generation.tokens.len() as u32),
                                queue_ms: Some((l.started - l.submitted).as_secs_f64() * 1e3),
                                generate_ms: Some(l.started.elapsed().as_secs_f64() * 1e3),
                                ..NativeBatchEvent::new("done")
                            },
                        );
                    }
                }
                BatchEvent::Failed { seq, error } => {
                    if let Some(l) = live.remove(&seq) {
                        by_request.remove(&l.id);
                        send(&l.on_event, NativeBatchEvent::error(&engine_err(error)));
                    }
                }
            }
        }
        shared.active.store(batch.len() as u32, Ordering::Relaxed);
    }
}

fn disposed() -> Error {
    coded("E_DISPOSED", "the batch engine was disposed")
}

#[napi]
impl NativeBatchEngine {
    /// Starts a batch engine (and its thread) over `model`.
    #[napi(factory)]
    pub fn create(model: &NativeModel, config: Option<NativeBatchConfig>) -> Result<Self> {
        let m: Arc<Phi2> = take_model(&model.slot)?;
        let d = BatchConfig::default();
        let config = match config {
            None => d,
            Some(c) => BatchConfig {
                max_sequences: c.max_sequences.map_or(d.max_sequences, |v| v as usize),
                prefill_chunk: c.prefill_chunk.map_or(d.prefill_chunk, |v| v as usize),
                step_tokens: c.step_tokens.map_or(d.step_tokens, |v| v as usize),
            },
        };
        let vocab = m.config.vocab_size;
        let batch = Batch::new(m, config).map_err(engine_err)?;
        let (tx, rx) = channel();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::Builder::new()
            .name("phi2-batch".into())
            .spawn(move || worker(batch, rx, s))
            .map_err(|e| coded("E_INTERNAL", format!("cannot start the batch thread: {e}")))?;
        Ok(NativeBatchEngine { tx, next_id: AtomicU64::new(1), vocab, shared })
    }

    /// Queues a generation after `tokens`; returns its id. Options are validated here (a bad
    /// one throws `E_INVALID_ARGUMENT`); prompt problems arrive as an `"error"` event.
    /// `topLogprobs`: absent = no log-probs, n = the token's log-prob and n alternatives (<= 20).
    #[napi]
    pub fn submit(
        &self,
        tokens: Vec<u32>,
        options: NativeGenerateOptions,
        top_logprobs: Option<u32>,
        on_event: ThreadsafeFunction<NativeBatchEvent>,
    ) -> Result<f64> {
        let opts = params_of(&options)?.resolve(self.vocab).map_err(engine_err)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let r = Request { id, tokens, opts, top_logprobs: top_logprobs.map(|n| n as usize), on_event, submitted: Instant::now() };
        self.tx.send(Command::Submit(Box::new(r))).map_err(|_| disposed())?;
        Ok(id as f64)
    }

    /// Stops request `id` at the next step (its `"done"` event says `"abort"`). No-op for an
    /// unknown or finished id.
    #[napi]
    pub fn cancel(&self, id: f64) {
        let _ = self.tx.send(Command::Cancel(id as u64));
    }

    #[napi]
    pub fn stats(&self) -> NativeBatchStats {
        let s = &self.shared;
        NativeBatchStats {
            active: s.active.load(Ordering::Relaxed),
            queued: s.queued.load(Ordering::Relaxed),
            last_batch_size: s.last_batch.load(Ordering::Relaxed),
            steps: s.steps.load(Ordering::Relaxed) as f64,
        }
    }

    /// Ends the engine: queued requests and those in the batch end with `E_DISPOSED` / abort.
    #[napi]
    pub fn dispose(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }
}

impl Drop for NativeBatchEngine {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Shutdown);
    }
}
