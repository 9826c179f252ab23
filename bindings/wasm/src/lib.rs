//! WebAssembly binding of the `phi2` engine (wasm32-unknown-unknown + SIMD128, wasm-bindgen).
//!
//! Same shape as the Node addon (`bindings/node/src/lib.rs`, contract `native.d.ts`), minus what
//! a single-threaded wasm instance cannot do:
//! - Everything is synchronous: `generate` runs on the calling thread (a Worker, later) and calls
//!   `onToken(null, id)` for every token before it returns.
//! - Models load from bytes (`Uint8Array`, Node `Buffer` or `ArrayBuffer`): there is no file system.
//!   `WasmModelLoader` takes them in chunks as they download (CONTRACT.md, "Loading").
//! - `WasmSession.begin` / `step` / `end` generate one token per call, so the caller's event loop
//!   runs between tokens.
//! - Cancellation: `WasmCancelToken.cancel()` from inside `onToken` (or `onToken` returning
//!   `false`) stops before the next token. (Cancelling from another thread needs shared memory.)
//! - Errors are JS `Error`s whose `code` property is the engine's stable code (`E_IO`, ...).
//! - Panics abort in wasm (the instance traps), so inputs are validated before they reach code
//!   that could panic; a re-entrant call (from `onToken`) is refused with `E_BUSY`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use js_sys::{Array, ArrayBuffer, Float32Array, Function, Object, Reflect, Uint8Array};
use phi2::gguf::GgufVocab;
use phi2::{GenerateOptions, GenerationParams, Generation, GgufStreamLoader, Phi2, Session};
use wasm_bindgen::prelude::*;

mod threads;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &str = r#"
/** Same fields as the Node addon's `NativeModelInfo`. */
export interface NativeModelInfo {
  architecture: string; format: string; dtype: string; vocabSize: number; tokenizerSize: number;
  hiddenSize: number; intermediateSize: number; numLayers: number; numHeads: number; headDim: number;
  rotaryDim: number; ropeTheta: number; layerNormEps: number; contextLength: number; eosTokenId: number | null;
  /** The file's context length; `contextLength` is this or the loader's `contextLength` cap. */
  trainedContextLength: number;
  /** What the KV cache stores: the loader's `kvCache`. */
  kvCache: 'f32' | 'f16';
  /**
   * wasm only: the load's timings of the kernel settings whose faster value depends on the CPU
   * (`touchAhead`: the one-token kernels touch the weights ahead; `dot16`: the relaxed build's i16
   * dots), the fastest of its passes with each on and off (ms), and what it kept; empty for small models.
   */
  calibration?: { knob: 'touchAhead' | 'dot16'; on: boolean; msOn: number; msOff: number }[];
}
export interface NativeGgufVocab {
  model: string; pre: string | null; tokens: string[]; tokenTypes: number[]; merges: string[];
  bosTokenId: number | null; eosTokenId: number | null;
}
/** Missing keys take the engine defaults (greedy, maxNewTokens 128, stopOnEos true). */
export interface NativeGenerateOptions {
  maxNewTokens: number; doSample: boolean; temperature: number; topK: number; topP: number; minP: number;
  repetitionPenalty: number; presencePenalty: number; frequencyPenalty: number;
  logitBiasIds: number[]; logitBiasValues: number[]; seed: number; stopOnEos: boolean;
  /** Prompt-lookup speculative decoding (engine defaults: ngram 3, maxDraft 8); null = off. */
  speculative: { ngram?: number; maxDraft?: number } | null;
}
export interface NativeGenerateResult {
  tokens: number[]; finishReason: 'eos' | 'length' | 'context' | 'abort'; promptTokens: number;
  promptTokensEvaluated: number; promptMs: number; generateMs: number;
  speculation: { passes: number; drafted: number; accepted: number };
}
"#;

/// A JS `Error` with `message` and a stable `code` property.
fn coded(code: &str, msg: impl std::fmt::Display) -> JsValue {
    let err = js_sys::Error::new(&msg.to_string());
    let _ = Reflect::set(&err, &JsValue::from_str("code"), &JsValue::from_str(code));
    err.into()
}

fn engine_err(e: phi2::Error) -> JsValue {
    coded(e.code(), e)
}

fn disposed(what: &str) -> JsValue {
    coded("E_DISPOSED", format!("this {what} was disposed; load the model again"))
}

fn invalid(msg: impl std::fmt::Display) -> JsValue {
    coded("E_INVALID_ARGUMENT", msg)
}

fn set(obj: &Object, key: &str, value: impl Into<JsValue>) {
    let _ = Reflect::set(obj, &JsValue::from_str(key), &value.into());
}

fn opt_u32(v: Option<u32>) -> JsValue {
    v.map(JsValue::from).unwrap_or(JsValue::NULL)
}

#[wasm_bindgen(start)]
fn start() {
    #[cfg(feature = "panic-hook")]
    console_error_panic_hook::set_once();
}

/// Installs a panic hook that prints Rust panic messages with `console.error` (only in builds
/// with the `panic-hook` feature; otherwise a no-op). Returns whether it is available.
#[wasm_bindgen(js_name = panicHook)]
pub fn panic_hook() -> bool {
    cfg!(feature = "panic-hook")
}

fn bytes_view(bytes: &JsValue) -> Result<Uint8Array, JsValue> {
    if bytes.is_instance_of::<Uint8Array>() {
        Ok(bytes.clone().unchecked_into())
    } else if bytes.is_instance_of::<ArrayBuffer>() {
        Ok(Uint8Array::new(bytes))
    } else {
        Err(invalid("model bytes must be a Uint8Array, Buffer or ArrayBuffer"))
    }
}

/// Shared by a model and its sessions: `dispose()` empties it for all of them.
type ModelSlot = Rc<RefCell<Option<Arc<Phi2>>>>;

fn take_model(slot: &ModelSlot) -> Result<Arc<Phi2>, JsValue> {
    slot.borrow().clone().ok_or_else(|| disposed("model"))
}

/// One per generate call; `cancel()` stops generation before the next token.
#[wasm_bindgen]
pub struct WasmCancelToken {
    flag: Cell<bool>,
}

#[wasm_bindgen]
impl WasmCancelToken {
    #[wasm_bindgen(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> WasmCancelToken {
        WasmCancelToken { flag: Cell::new(false) }
    }

    pub fn cancel(&self) {
        self.flag.set(true);
    }

    #[wasm_bindgen(getter)]
    pub fn cancelled(&self) -> bool {
        self.flag.get()
    }
}

#[wasm_bindgen]
pub struct WasmModel {
    slot: ModelSlot,
    /// Read from the parsed header at load time; an error is reported by `ggufVocab()`.
    vocab: Result<Option<GgufVocab>, (&'static str, String)>,
    /// What the load's timing of the kernel settings measured and kept (`info.calibration`).
    calibrations: Vec<phi2::kernels::Calibration>,
}

#[wasm_bindgen]
impl WasmModel {
    /// Loads a GGUF model from its bytes; `name` only labels errors. A one-shot
    /// `WasmModelLoader`: the bytes are copied into wasm memory piecewise, straight into the
    /// per-tensor buffers (the caller may drop its copy afterwards). `kvCache` as the loader's.
    pub fn load(
        #[wasm_bindgen(unchecked_param_type = "Uint8Array | ArrayBuffer")] bytes: JsValue,
        name: Option<String>,
        #[wasm_bindgen(js_name = kvCache)] kv_cache: Option<String>,
    ) -> Result<WasmModel, JsValue> {
        let view = bytes_view(&bytes)?;
        let name = name.unwrap_or_else(|| "model.gguf".into());
        let kv = phi2::KvType::parse(kv_cache.as_deref().unwrap_or("f32")).map_err(engine_err)?;
        let mut loader = WasmModelLoader::create(&name, view.length() as u64, false, None, kv)?;
        loader.push_view(&view)?;
        loader.finish()
    }

    #[wasm_bindgen(getter, unchecked_return_type = "NativeModelInfo")]
    pub fn info(&self) -> Result<Object, JsValue> {
        let m = take_model(&self.slot)?;
        let c = &m.config;
        let o = Object::new();
        set(&o, "architecture", "phi2");
        set(&o, "format", m.info.format);
        set(&o, "dtype", m.info.dtype.name());
        set(&o, "vocabSize", c.vocab_size as u32);
        set(&o, "tokenizerSize", c.tokenizer_size as u32);
        set(&o, "hiddenSize", c.hidden_size as u32);
        set(&o, "intermediateSize", c.intermediate_size as u32);
        set(&o, "numLayers", c.num_layers as u32);
        set(&o, "numHeads", c.num_heads as u32);
        set(&o, "headDim", c.head_dim() as u32);
        set(&o, "rotaryDim", c.rotary_dim as u32);
        set(&o, "ropeTheta", c.rope_theta as f64);
        set(&o, "layerNormEps", c.layer_norm_eps);
        set(&o, "contextLength", c.context_length as u32);
        set(&o, "trainedContextLength", m.info.trained_context_length as u32);
        set(&o, "eosTokenId", opt_u32(c.eos_token_id));
        set(&o, "kvCache", m.kv_type().name());
        let timed = Array::new();
        for t in &self.calibrations {
            let c = Object::new();
            set(&c, "knob", match t.knob {
                phi2::kernels::Knob::TouchAhead => "touchAhead",
                phi2::kernels::Knob::Dot16 => "dot16",
            });
            set(&c, "on", t.on);
            set(&c, "msOn", t.ms_on);
            set(&c, "msOff", t.ms_off);
            timed.push(&c);
        }
        set(&o, "calibration", timed);
        Ok(o)
    }

    /// The tokenizer stored in the GGUF metadata (`{ model, pre, tokens, tokenTypes, merges,
    /// bosTokenId, eosTokenId }`), or null when the file has none.
    #[wasm_bindgen(js_name = ggufVocab, unchecked_return_type = "NativeGgufVocab | null")]
    pub fn gguf_vocab(&self) -> Result<JsValue, JsValue> {
        take_model(&self.slot)?;
        let v = match &self.vocab {
            Err((code, msg)) => return Err(coded(code, msg)),
            Ok(None) => return Ok(JsValue::NULL),
            Ok(Some(v)) => v,
        };
        let strings = |xs: &[String]| xs.iter().map(|s| JsValue::from_str(s)).collect::<Array>();
        let o = Object::new();
        set(&o, "model", v.model.as_str());
        set(&o, "pre", v.pre.as_deref().map(JsValue::from_str).unwrap_or(JsValue::NULL));
        set(&o, "tokens", strings(&v.tokens));
        set(&o, "tokenTypes", v.token_types.iter().map(|&t| JsValue::from(t)).collect::<Array>());
        set(&o, "merges", strings(&v.merges));
        set(&o, "bosTokenId", opt_u32(v.bos_token_id));
        set(&o, "eosTokenId", opt_u32(v.eos_token_id));
        Ok(o.into())
    }

    #[wasm_bindgen(js_name = createSession)]
    pub fn create_session(&self) -> Result<WasmSession, JsValue> {
        let m = take_model(&self.slot)?;
        Ok(WasmSession { model: self.slot.clone(), session: RefCell::new(Some(Session::new(m))), stepping: Cell::new(None) })
    }

    /// log-softmax rows, tokens.length × vocabSize, row-major, run from an empty context.
    pub fn logprobs(
        &self,
        tokens: Vec<u32>,
        #[wasm_bindgen(unchecked_param_type = "WasmCancelToken | null | undefined")] cancel: JsValue,
    ) -> Result<Float32Array, JsValue> {
        let model = take_model(&self.slot)?;
        if cancelled(&cancel)? {
            return Err(coded("E_ABORTED", "cancelled before it started"));
        }
        let rows = model.logprobs(&tokens).map_err(engine_err)?;
        Ok(Float32Array::from(&rows[..]))
    }

    /// Releases the weights; later calls (on this model and its sessions) throw E_DISPOSED.
    pub fn dispose(&self) {
        if let Ok(mut slot) = self.slot.try_borrow_mut() {
            slot.take();
        }
    }

    #[wasm_bindgen(getter)]
    pub fn disposed(&self) -> bool {
        self.slot.try_borrow().map(|s| s.is_none()).unwrap_or(false)
    }
}

/// The memory a model may need in this build: wasm32's 4 GiB address space, no limit natively.
const MEMORY_LIMIT: Option<u64> =
    if cfg!(target_arch = "wasm32") { Some(phi2::stream::WASM32_MEMORY_LIMIT) } else { None };

/// JS bytes are copied into wasm memory in windows of this many bytes (a scratch buffer), so a
/// whole-file push never needs a second file-sized buffer in wasm memory.
const PUSH_WINDOW: u32 = 1 << 20;

/// Streamed load of a GGUF file: `new WasmModelLoader(name, totalBytes, hash)`, `push(chunk)` in
/// file order (any sizes), `finish()` → `WasmModel`. The header is parsed (and a bad or too large
/// model refused) as soon as enough bytes arrived; tensor data goes straight into per-tensor
/// buffers, each freed as it is converted at `finish()` (peak ≈ the file + its largest tensor).
#[wasm_bindgen]
pub struct WasmModelLoader {
    inner: GgufStreamLoader,
    scratch: Vec<u8>,
}

impl WasmModelLoader {
    fn create(name: &str, total: u64, hash: bool, context: Option<usize>, kv: phi2::KvType) -> Result<WasmModelLoader, JsValue> {
        let inner = GgufStreamLoader::with_limits(name, total, hash, MEMORY_LIMIT, context).map_err(engine_err)?.with_kv_type(kv);
        Ok(WasmModelLoader { inner, scratch: Vec::new() })
    }

    fn push_view(&mut self, view: &Uint8Array) -> Result<(), JsValue> {
        let len = view.length();
        let (received, total) = (self.inner.received(), self.inner.total());
        if received + len as u64 > total {
            return Err(invalid(format!(
                "{len} more bytes would exceed the declared total of {total} bytes ({received} received so far)"
            )));
        }
        let window = len.min(PUSH_WINDOW) as usize;
        if self.scratch.len() < window {
            self.scratch.try_reserve_exact(window - self.scratch.len()).map_err(|_| {
                coded("E_OUT_OF_MEMORY", format!("cannot allocate a {window}-byte copy buffer in wasm memory"))
            })?;
            self.scratch.resize(window, 0);
        }
        let mut at = 0u32;
        while at < len {
            let n = (len - at).min(PUSH_WINDOW);
            let buf = &mut self.scratch[..n as usize];
            view.subarray(at, at + n).copy_to(buf);
            self.inner.push(buf).map_err(engine_err)?;
            at += n;
        }
        Ok(())
    }
}

#[wasm_bindgen]
impl WasmModelLoader {
    /// `totalBytes`: the file's exact length. `hash`: compute `sha256()` over the pushed bytes.
    /// `kvCache`: `"f32"` (default) or `"f16"`, what the model's KV cache stores (the memory
    /// check counts it). Throws E_MODEL_TOO_LARGE when the file cannot fit in wasm32 memory with
    /// the engine's needs.
    #[wasm_bindgen(constructor)]
    pub fn new(
        name: String,
        #[wasm_bindgen(js_name = totalBytes)] total_bytes: f64,
        hash: bool,
        #[wasm_bindgen(js_name = contextLength)] context_length: Option<f64>,
        #[wasm_bindgen(js_name = kvCache)] kv_cache: Option<String>,
    ) -> Result<WasmModelLoader, JsValue> {
        if !(total_bytes.is_finite() && total_bytes >= 0.0 && total_bytes.fract() == 0.0 && total_bytes <= 9_007_199_254_740_992.0) {
            return Err(invalid(format!("totalBytes must be a non-negative integer, got {total_bytes}")));
        }
        let context = match context_length {
            None => None,
            Some(c) if c.is_finite() && c >= 1.0 && c.fract() == 0.0 && c <= u32::MAX as f64 => Some(c as usize),
            Some(c) => return Err(invalid(format!("contextLength must be an integer ≥ 1, got {c}"))),
        };
        let kv = phi2::KvType::parse(kv_cache.as_deref().unwrap_or("f32")).map_err(engine_err)?;
        Self::create(&name, total_bytes as u64, hash, context, kv)
    }

    /// The next bytes of the file (Uint8Array, Buffer or ArrayBuffer). Throws on a bad header (as
    /// soon as it is detected), a model too large for wasm memory, and bytes past totalBytes
    /// (E_INVALID_ARGUMENT; nothing of that chunk is taken).
    pub fn push(&mut self, #[wasm_bindgen(unchecked_param_type = "Uint8Array | ArrayBuffer")] chunk: JsValue) -> Result<(), JsValue> {
        let view = bytes_view(&chunk)?;
        self.push_view(&view)
    }

    /// Bytes pushed so far.
    #[wasm_bindgen(getter)]
    pub fn received(&self) -> f64 {
        self.inner.received() as f64
    }

    #[wasm_bindgen(getter, js_name = headerParsed)]
    pub fn header_parsed(&self) -> bool {
        self.inner.header_parsed()
    }

    /// Lowercase hex SHA-256 of all the bytes once `received === totalBytes` (with `hash` only),
    /// else null.
    #[wasm_bindgen(unchecked_return_type = "string | null")]
    pub fn sha256(&self) -> JsValue {
        self.inner.sha256().map(|h| JsValue::from_str(&h)).unwrap_or(JsValue::NULL)
    }

    /// Builds the model; consumes the loader. E_MALFORMED_FILE when fewer than totalBytes arrived.
    pub fn finish(self) -> Result<WasmModel, JsValue> {
        let (model, vocab) = self.inner.finish_parts().map_err(engine_err)?;
        // Kernel settings whose faster value depends on the CPU, which wasm cannot see: timed here
        // on the model's own weights (~0.3 s for Phi-2; nothing for small models).
        #[cfg(target_arch = "wasm32")]
        let calibrations = model.calibrate_kernels(&precise_now_ms);
        // (The crate's host build, for `cargo test --workspace`, has no wasm kernels to time.)
        #[cfg(not(target_arch = "wasm32"))]
        let calibrations = Vec::new();
        Ok(WasmModel {
            slot: Rc::new(RefCell::new(Some(Arc::new(model)))),
            vocab: vocab.map_err(|e| (e.code(), e.to_string())),
            calibrations,
        })
    }
}

/// Whether a cancel token (any object with a truthy `cancelled` property, normally a
/// `WasmCancelToken`; null/undefined = none) has been cancelled. Read through JS rather than
/// borrowed as `&WasmCancelToken` so that it may be optional. In a single-threaded instance JS only
/// runs inside `onToken`, so polling it after every callback is as prompt as a shared flag.
fn cancelled(cancel: &JsValue) -> Result<bool, JsValue> {
    if cancel.is_undefined() || cancel.is_null() {
        return Ok(false);
    }
    if !cancel.is_object() {
        return Err(invalid("cancel must be a WasmCancelToken, null or undefined"));
    }
    Ok(Reflect::get(cancel, &JsValue::from_str("cancelled"))?.is_truthy())
}

/// A conversation: its KV cache persists across `generate` calls (and `begin`/`step`/`end` runs).
#[wasm_bindgen]
pub struct WasmSession {
    model: ModelSlot,
    session: RefCell<Option<Session>>,
    /// The step-wise run's prompt length and clock (`begin` time, first token time).
    stepping: Cell<Option<StepClock>>,
}

#[derive(Clone, Copy)]
struct StepClock {
    prompt_tokens: usize,
    start: f64,
    first: Option<f64>,
}

/// `{ tokens, finishReason, promptTokens, promptTokensEvaluated, promptMs, generateMs }`.
fn result_object(out: &Generation, prompt_tokens: usize, start: f64, first: Option<f64>) -> Object {
    let end = now_ms();
    let first = first.unwrap_or(end);
    let o = Object::new();
    set(&o, "tokens", out.tokens.iter().map(|&t| JsValue::from(t)).collect::<Array>());
    set(&o, "finishReason", out.finish.as_str());
    set(&o, "promptTokens", prompt_tokens as u32);
    set(&o, "promptTokensEvaluated", out.prompt_tokens_evaluated as u32);
    set(&o, "promptMs", first - start);
    set(&o, "generateMs", end - first);
    let stats = Object::new();
    set(&stats, "passes", out.speculation.passes as u32);
    set(&stats, "drafted", out.speculation.drafted as u32);
    set(&stats, "accepted", out.speculation.accepted as u32);
    set(&o, "speculation", stats);
    o
}

fn get(o: &JsValue, key: &str) -> JsValue {
    Reflect::get(o, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

fn opt_num(o: &JsValue, key: &str) -> Result<Option<f64>, JsValue> {
    let v = get(o, key);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.as_f64().map(Some).ok_or_else(|| invalid(format!("option {key} must be a number")))
}

fn opt_bool(o: &JsValue, key: &str) -> Result<Option<bool>, JsValue> {
    let v = get(o, key);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.as_bool().map(Some).ok_or_else(|| invalid(format!("option {key} must be a boolean")))
}

fn num_array(o: &JsValue, key: &str) -> Result<Vec<f64>, JsValue> {
    let v = get(o, key);
    if v.is_undefined() || v.is_null() {
        return Ok(Vec::new());
    }
    if !(Array::is_array(&v) || v.is_instance_of::<Object>() && get(&v, "length").as_f64().is_some()) {
        return Err(invalid(format!("option {key} must be an array of numbers")));
    }
    Array::from(&v)
        .iter()
        .map(|x| x.as_f64().ok_or_else(|| invalid(format!("option {key} must be an array of numbers"))))
        .collect()
}

/// `NativeGenerateOptions` (camelCase keys) read into the engine's one parameters type
/// (`phi2::GenerationParams`, which applies the defaults and validates); missing keys take the
/// engine's defaults (greedy). `vocab` bounds logit-bias ids.
fn options_from(o: &JsValue, vocab: usize) -> Result<GenerateOptions, JsValue> {
    if o.is_undefined() || o.is_null() {
        return GenerationParams::default().resolve(vocab).map_err(engine_err);
    }
    if !o.is_object() {
        return Err(invalid("options must be an object"));
    }
    let ids = num_array(o, "logitBiasIds")?;
    let values = num_array(o, "logitBiasValues")?;
    if ids.len() != values.len() {
        return Err(invalid("logitBiasIds and logitBiasValues differ in length"));
    }
    let spec = get(o, "speculative");
    let speculative = if spec.is_undefined() || spec.is_null() {
        None
    } else if !spec.is_object() {
        return Err(invalid("option speculative must be an object { ngram, maxDraft } or null"));
    } else {
        Some((opt_num(&spec, "ngram")?, opt_num(&spec, "maxDraft")?))
    };
    GenerationParams {
        max_new_tokens: opt_num(o, "maxNewTokens")?,
        do_sample: opt_bool(o, "doSample")?,
        temperature: opt_num(o, "temperature")?,
        top_k: opt_num(o, "topK")?,
        top_p: opt_num(o, "topP")?,
        min_p: opt_num(o, "minP")?,
        repetition_penalty: opt_num(o, "repetitionPenalty")?,
        presence_penalty: opt_num(o, "presencePenalty")?,
        frequency_penalty: opt_num(o, "frequencyPenalty")?,
        logit_bias: ids.into_iter().zip(values).collect(),
        seed: opt_num(o, "seed")?,
        stop_on_eos: opt_bool(o, "stopOnEos")?,
        speculative,
    }
    .resolve(vocab)
    .map_err(engine_err)
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// `performance.now()` where the global scope has it (pages, workers, Node), else [`now_ms`]: the
/// load's timings of the kernels (`phi2::Phi2::calibrate_kernels`) compare passes of a few ms.
#[cfg(target_arch = "wasm32")]
fn precise_now_ms() -> f64 {
    let perf = Reflect::get(&js_sys::global(), &JsValue::from_str("performance")).ok().filter(|p| p.is_object());
    let now = perf.as_ref().and_then(|p| Reflect::get(p, &JsValue::from_str("now")).ok()).and_then(|f| f.dyn_into::<js_sys::Function>().ok());
    match (perf, now) {
        (Some(p), Some(f)) => f.call0(&p).ok().and_then(|v| v.as_f64()).unwrap_or_else(now_ms),
        _ => now_ms(),
    }
}

#[wasm_bindgen]
impl WasmSession {
    /// Generates after `tokens` (the whole conversation so far), synchronously. `onToken(null, id)`
    /// is called for each new token, in order; returning `false` stops (finish reason "abort"),
    /// and an exception thrown by it stops generation and is rethrown. Returns
    /// `{ tokens, finishReason, promptTokens, promptTokensEvaluated, promptMs, generateMs }`.
    #[wasm_bindgen(unchecked_return_type = "NativeGenerateResult")]
    pub fn generate(
        &self,
        tokens: Vec<u32>,
        #[wasm_bindgen(unchecked_param_type = "Partial<NativeGenerateOptions> | null | undefined")] options: JsValue,
        #[wasm_bindgen(js_name = onToken, unchecked_param_type = "((err: null, id: number) => boolean | void) | null | undefined")]
        on_token: Option<Function>,
        #[wasm_bindgen(unchecked_param_type = "WasmCancelToken | null | undefined")] cancel: JsValue,
    ) -> Result<Object, JsValue> {
        let vocab = take_model(&self.model)?.config.vocab_size;
        let opts = options_from(&options, vocab)?;
        let flag = AtomicBool::new(cancelled(&cancel)?);
        let mut guard = self
            .session
            .try_borrow_mut()
            .map_err(|_| coded("E_BUSY", "this session is already generating (called from onToken?)"))?;
        let session = guard.as_mut().ok_or_else(|| disposed("session"))?;
        let start = now_ms();
        let mut first_token_at = None;
        let mut thrown = None;
        let out = session
            .generate(&tokens, &opts, &flag, |id| {
                first_token_at.get_or_insert_with(now_ms);
                if let Some(f) = &on_token {
                    match f.call2(&JsValue::NULL, &JsValue::NULL, &JsValue::from(id)) {
                        Ok(r) if r.as_bool() == Some(false) => return false,
                        Ok(_) => {}
                        Err(e) => {
                            thrown = Some(e);
                            return false;
                        }
                    }
                }
                // The engine polls `flag` before the next forward pass.
                match cancelled(&cancel) {
                    Ok(c) => flag.store(c, Ordering::Relaxed),
                    Err(e) => {
                        thrown = Some(e);
                        return false;
                    }
                }
                true
            })
            .map_err(engine_err)?;
        if let Some(e) = thrown {
            return Err(e);
        }
        Ok(result_object(&out, tokens.len(), start, first_token_at))
    }

    /// Starts a step-wise generation after `tokens` (the whole conversation so far); no forward
    /// pass runs yet. E_BUSY when one is already running (until `end()`).
    pub fn begin(
        &self,
        tokens: Vec<u32>,
        #[wasm_bindgen(unchecked_param_type = "Partial<NativeGenerateOptions> | null | undefined")] options: JsValue,
    ) -> Result<(), JsValue> {
        let vocab = take_model(&self.model)?.config.vocab_size;
        let opts = options_from(&options, vocab)?;
        let mut guard = self.session.try_borrow_mut().map_err(|_| coded("E_BUSY", "this session is generating"))?;
        let session = guard.as_mut().ok_or_else(|| disposed("session"))?;
        let start = now_ms();
        session.begin(&tokens, &opts).map_err(engine_err)?;
        self.stepping.set(Some(StepClock { prompt_tokens: tokens.len(), start, first: None }));
        Ok(())
    }

    /// One forward pass (the first one runs the prompt): the next token, or undefined when the
    /// generation is over.
    pub fn step(&self) -> Result<Option<u32>, JsValue> {
        take_model(&self.model)?;
        let mut guard = self.session.try_borrow_mut().map_err(|_| coded("E_BUSY", "this session is generating"))?;
        let session = guard.as_mut().ok_or_else(|| disposed("session"))?;
        let next = session.step().map_err(engine_err)?;
        if let (Some(_), Some(mut clock)) = (next, self.stepping.get()) {
            clock.first.get_or_insert_with(now_ms);
            self.stepping.set(Some(clock));
        }
        Ok(next)
    }

    /// Ends the step-wise generation: the same object as `generate` (finishReason 'abort' when it
    /// could have gone on). The KV cache keeps what was evaluated.
    #[wasm_bindgen(unchecked_return_type = "NativeGenerateResult")]
    pub fn end(&self) -> Result<Object, JsValue> {
        let mut guard = self.session.try_borrow_mut().map_err(|_| coded("E_BUSY", "this session is generating"))?;
        let session = guard.as_mut().ok_or_else(|| disposed("session"))?;
        let out = session.end().map_err(engine_err)?;
        let clock = self.stepping.take().unwrap_or(StepClock { prompt_tokens: 0, start: now_ms(), first: None });
        Ok(result_object(&out, clock.prompt_tokens, clock.start, clock.first))
    }

    /// Forgets the KV cache (and a step-wise generation in progress).
    pub fn reset(&self) {
        if let Ok(mut s) = self.session.try_borrow_mut() {
            if let Some(s) = s.as_mut() {
                s.reset();
                self.stepping.set(None);
            }
        }
    }

    /// Frees the KV cache.
    pub fn dispose(&self) {
        if let Ok(mut s) = self.session.try_borrow_mut() {
            s.take();
        }
    }
}
