//! The Phi-2 forward pass, the one model for every file format.
//!
//! Per block (HF `PhiDecoderLayer`): one LayerNorm feeding attention and MLP in parallel,
//! `x = x + dense(attn(ln(x))) + fc2(gelu_new(fc1(ln(x))))`. Attention applies NeoX rotary to the
//! first `rotary_dim` dims of each head, scales by 1/√head_dim and takes the softmax in f32 (phi-2
//! overflows in f16 attention, so scores never leave f32). After the last block: final LayerNorm
//! and lm_head, both with bias.

use std::path::Path;

use candle_core::{Device, Tensor, D};

use crate::config::Phi2Config;
use crate::detmath;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::safetensors::SafetensorsModel;
use crate::kernels;
use crate::kernels::attention::KvElem;
use crate::profile::{self, Phase};
use crate::sampler::exp_nonpositive;
use crate::weights::{with_f32, Layout, Phi2Weights, Qkv};

/// What a loaded model reports about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// `"gguf"` or `"safetensors"`.
    pub format: &'static str,
    /// The dtype of the bulk of the matrices (`f32`, `q4_K`, ...).
    pub dtype: DType,
    /// The context length in the file; `config.context_length` is this or a loader's cap.
    pub trained_context_length: usize,
    /// Where it runs: `"cpu"`, `"cuda:0 (NVIDIA H200, compute 9.0)"` ([`crate::device::describe`]).
    pub device: String,
}

/// A loaded model: config + weights. Immutable and shareable across threads; each generation
/// keeps its own [`KvCache`].
#[derive(Debug)]
pub struct Phi2 {
    pub config: Phi2Config,
    pub info: ModelInfo,
    weights: Phi2Weights,
    device: Device,
    /// The engine's kernels run the products and attention (the CPU); else candle's ops (a GPU,
    /// or [`crate::Backend::CpuReference`]).
    own_kernels: bool,
    /// What the KV caches it makes store ([`Phi2::with_kv_type`]).
    kv_type: KvType,
    /// The cache of a finished generation, for the next one ([`Phi2::new_cache`]).
    spare: std::sync::Mutex<Option<KvCache>>,
}

/// What a model's KV caches store ([`Phi2::with_kv_type`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvType {
    /// Keys and values in f32, as computed (the default).
    #[default]
    F32,
    /// Keys and values rounded to f16 (nearest, ties to even) when written: on the CPU half the
    /// memory, and half the bytes each decode step reads from the cache (a GPU keeps the rounded
    /// values in f32 tensors: the same numbers, no memory saved). Attention still computes in f32 on
    /// the widened values ([`kernels::attention::KvElem`]), so the results differ from an f32
    /// cache only by that rounding, and stay the same bits on every ISA and for any split of a
    /// prompt into passes.
    F16,
}

impl KvType {
    /// `"f32"` or `"f16"`.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }

    /// `"f32"` or `"f16"`; anything else is `E_INVALID_ARGUMENT`.
    pub fn parse(s: &str) -> Result<KvType> {
        match s {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            _ => Err(Error::invalid("kvCache", format!("expected \"f32\" or \"f16\", got {s:?}"))),
        }
    }

    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
}

/// Keys and values of every layer for the positions seen so far (the default: no layers, a
/// placeholder).
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    len: usize,
}

/// One sequence's share of [`Phi2::forward_batch`]: its new tokens and its cache.
#[derive(Debug)]
pub struct BatchItem<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    /// Logits for every token of `tokens` (else for the last one only).
    pub all_logits: bool,
}

/// One layer's keys and values, of which the first `len` positions are valid; on the CPU the
/// whole context is reserved at once where memory can be reserved unused (Linux, see
/// [`HostKv::reserve`]), else (and on devices) capacity grows by [`KV_CHUNK`] positions. On the CPU they live in `host` (written in place by
/// [`Phi2::attend`]), on other devices in `k` and `v`, `[1, heads, capacity, head_dim]` each.
#[derive(Debug, Default)]
struct LayerKv {
    k: Option<Tensor>,
    v: Option<Tensor>,
    host: KvHost,
    len: usize,
}

impl LayerKv {
    fn new(kind: KvType) -> LayerKv {
        LayerKv { host: KvHost::new(kind), ..LayerKv::default() }
    }
}

/// A layer's cache on the CPU in the model's [`KvType`].
#[derive(Debug)]
enum KvHost {
    F32(HostKv<f32>),
    F16(HostKv<half::f16>),
}

impl Default for KvHost {
    fn default() -> Self {
        KvHost::F32(HostKv::default())
    }
}

impl KvHost {
    fn new(kind: KvType) -> KvHost {
        match kind {
            KvType::F32 => KvHost::F32(HostKv::default()),
            KvType::F16 => KvHost::F16(HostKv::default()),
        }
    }

    fn kind(&self) -> KvType {
        match self {
            KvHost::F32(_) => KvType::F32,
            KvHost::F16(_) => KvType::F16,
        }
    }

    fn cap(&self) -> usize {
        match self {
            KvHost::F32(h) => h.cap,
            KvHost::F16(h) => h.cap,
        }
    }

    fn written(&self) -> usize {
        match self {
            KvHost::F32(h) => h.written,
            KvHost::F16(h) => h.written,
        }
    }

    /// Whether its buffers hold `heads × cap × hd` values each.
    fn shaped(&self, heads: usize, hd: usize) -> bool {
        match self {
            KvHost::F32(h) => h.shaped(heads, hd),
            KvHost::F16(h) => h.shaped(heads, hd),
        }
    }
}

/// A layer's cache on the CPU: keys and values `[heads, cap, head_dim]` (f32 or f16), the layout the
/// attention kernel reads ([`kernels::attention`]). Owned buffers rather than candle tensors, so
/// that a step writes its new rows straight into place (a candle `slice_set` needs the rows
/// rotated, transposed and made contiguous first: three tensors per step and layer). Positions
/// not yet written stay out of memory ([`kernels::buffer`]). On 4 KB pages: on 2 MB pages
/// attention read them ~10% faster (6.2% → 5.4% of the weight products' time), but the first
/// touch of fresh 2 MB pages cost ~90 ms per new cache (the kernel clears them; 9.5% of a
/// 128-token prompt), more than a short generation gains back.
#[derive(Debug, Default)]
struct HostKv<T: kernels::attention::KvElem> {
    k: kernels::buffer::Zeroed<T>,
    v: kernels::buffer::Zeroed<T>,
    cap: usize,
    /// The most positions written since the buffers were made: those whose memory is resident.
    written: usize,
}

impl<T: kernels::attention::KvElem> HostKv<T> {
    fn shaped(&self, heads: usize, hd: usize) -> bool {
        self.k.len() == heads * self.cap * hd && self.v.len() == heads * self.cap * hd
    }

    /// Makes room for `need` positions of `heads × hd` values, keeping the first `keep`, for
    /// positions up to `need` about to be written.
    ///
    /// Where memory can be reserved without being used ([`kernels::buffer::Zeroed::lazy`]:
    /// Linux, unless it counts reservations in full), the first call reserves the whole context (`max_len` positions), so the cache
    /// never moves: growing it by [`KV_CHUNK`] positions copied every position so far into new
    /// memory and faulted that in, all inside one decode step. Measured (`decode_bench
    /// --prompt-tokens 512`, Phi-2-shaped Q4_0, f32 cache, AMD EPYC): the step that crossed
    /// 512 positions took 312 ms against a median of 71, and phi2-bench's decode after a
    /// 512-token prompt counts it. Elsewhere (wasm's memory, which only grows) it still grows
    /// by chunks.
    fn reserve(&mut self, need: usize, keep: usize, heads: usize, hd: usize, max_len: usize) {
        if need > self.cap {
            let chunked = need.div_ceil(KV_CHUNK).saturating_mul(KV_CHUNK).min(max_len.max(need));
            let whole = max_len.max(need);
            let lazy = if self.cap == 0 && whole > chunked {
                kernels::buffer::Zeroed::<T>::lazy(heads * whole * hd).zip(kernels::buffer::Zeroed::<T>::lazy(heads * whole * hd))
            } else {
                None
            };
            if let Some((k, v)) = lazy {
                (self.k, self.v, self.cap, self.written) = (k, v, whole, 0);
            } else {
                self.grow(chunked, keep, heads, hd);
            }
        }
        self.written = self.written.max(need);
    }

    /// New buffers of `cap` positions, with each head's first `keep` positions copied over.
    fn grow(&mut self, cap: usize, keep: usize, heads: usize, hd: usize) {
        let old_cap = self.cap;
        assert!(keep <= old_cap.min(cap), "KV cache: keeping {keep} of {old_cap} positions in {cap}");
        let grow = |old: &[T]| {
            let mut buf = kernels::buffer::Zeroed::<T>::zeroed(heads * cap * hd);
            if old_cap > 0 {
                for h in 0..heads {
                    buf[h * cap * hd..(h * cap + keep) * hd].copy_from_slice(&old[h * old_cap * hd..(h * old_cap + keep) * hd]);
                }
            }
            buf
        };
        (self.k, self.v) = (grow(&self.k), grow(&self.v));
        self.cap = cap;
        // A heap buffer (`Zeroed::zeroed` below 64 KB, or off Linux) is written in full.
        self.written = if matches!(self.k, kernels::buffer::Zeroed::Heap(_)) { cap } else { keep };
    }
}

impl LayerKv {
    /// Appends `[1, heads, t, head_dim]` keys and values; returns all valid ones so far.
    fn append(&mut self, k: &Tensor, v: &Tensor, max_len: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let cap = self.k.as_ref().map_or(0, |c| c.dim(2).unwrap_or(0));
        if self.len + t > cap {
            let new_cap = (self.len + t).div_ceil(KV_CHUNK).saturating_mul(KV_CHUNK).min(max_len.max(self.len + t));
            let grow = |old: &Option<Tensor>, x: &Tensor| -> candle_core::Result<Tensor> {
                let mut shape = x.dims().to_vec();
                shape[2] = new_cap;
                let buf = Tensor::zeros(shape, x.dtype(), x.device())?;
                if let Some(old) = old {
                    if self.len > 0 {
                        buf.slice_set(&old.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                    }
                }
                Ok(buf)
            };
            self.k = Some(grow(&self.k, k)?);
            self.v = Some(grow(&self.v, v)?);
        }
        let (kc, vc) = (self.k.as_ref().expect("allocated above"), self.v.as_ref().expect("allocated above"));
        kc.slice_set(k, 2, self.len)?;
        vc.slice_set(v, 2, self.len)?;
        self.len += t;
        Ok((kc.narrow(2, 0, self.len)?, vc.narrow(2, 0, self.len)?))
    }
}

impl KvCache {
    /// Forgets every position from `len` on (a rejected speculative draft, an edited history);
    /// the memory is kept for reuse. No-op when `len >= self.len()`.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.len = len;
            self.layers.iter_mut().for_each(|l| l.len = len);
        }
    }

    /// Tokens already in the cache (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position and frees the memory.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = LayerKv::new(l.host.kind()));
        self.len = 0;
    }

    /// Forgets every position, keeping the memory: every layer's length too (a pass that failed
    /// part-way may have advanced some layers without the cache's own length).
    pub fn rewind(&mut self) {
        self.len = 0;
        self.layers.iter_mut().for_each(|l| l.len = 0);
    }

    /// Whether this cache has the shape of a model of `layers` layers, `heads` heads of `hd`
    /// values (for the memory it holds), and stores `kind`.
    fn fits(&self, layers: usize, heads: usize, hd: usize, kind: KvType) -> bool {
        self.layers.len() == layers
            && self.layers.iter().all(|l| {
                let host = l.host.kind() == kind && l.host.shaped(heads, hd);
                let dev = |t: &Option<Tensor>| t.as_ref().is_none_or(|t| matches!(t.dims(), [1, h, _, d] if *h == heads && *d == hd));
                host && dev(&l.k) && dev(&l.v)
            })
    }

    /// Whether a model with `heads` heads of `hd` values can read this cache: its buffers of that
    /// shape, and every layer's positions stored where that model reads them, in the host
    /// buffers on the engine's kernels (`own_kernels`), in the tensors otherwise. A cache filled
    /// on the other path holds its positions in the other place.
    fn readable_by(&self, heads: usize, hd: usize, own_kernels: bool) -> bool {
        self.layers.iter().all(|l| {
            let dev = |t: &Option<Tensor>| t.as_ref().is_none_or(|t| matches!(t.dims(), [1, h, _, d] if *h == heads && *d == hd));
            let host = l.host.cap() == 0 || l.host.shaped(heads, hd);
            let stored = if own_kernels { l.host.cap() } else { l.k.as_ref().map_or(0, |k| k.dim(2).unwrap_or(0)) };
            host && dev(&l.k) && dev(&l.v) && l.len <= stored
        })
    }

    /// Positions the cache has memory for (0 for a new cache).
    pub fn capacity(&self) -> usize {
        self.layers.first().map_or(0, |l| l.host.cap().max(l.k.as_ref().map_or(0, |k| k.dim(2).unwrap_or(0))))
    }

    /// Positions whose memory is in use: written since the memory was made (on the CPU, where
    /// the rest of a reservation is not resident), or the whole reservation (device tensors).
    pub fn resident(&self) -> usize {
        self.layers.first().map_or(0, |l| l.host.written().max(l.k.as_ref().map_or(0, |k| k.dim(2).unwrap_or(0))))
    }
}

/// See [`Phi2::pass_tables`].
struct PassTables {
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
}

/// KV cache rows are reserved in chunks of this many positions (grown up to the context length)
/// where the whole context is not reserved at once ([`HostKv::reserve`]).
const KV_CHUNK: usize = 256;

/// The most positions a cache kept for the next generation may hold ([`Phi2::recycle_cache`]).
const SPARE_POSITIONS: usize = KV_CHUNK;

/// Whether a finished generation's `cache` (of the model's shape) replaces the model's `spare`
/// one: it has memory in use, for no more than [`SPARE_POSITIONS`] positions, and for more than
/// the spare ([`KvCache::resident`]).
fn keeps(spare: Option<&KvCache>, cache: &KvCache) -> bool {
    let room = cache.resident();
    room > 0 && room <= SPARE_POSITIONS && spare.is_none_or(|s| s.resident() < room)
}

impl Phi2 {
    /// Loads a `.gguf` file, a `.safetensors` file (config.json beside it), or a directory with
    /// config.json and safetensors (one file or shards with `model.safetensors.index.json`).
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_on(path, crate::Backend::Cpu)
    }

    /// [`Phi2::load`] onto `backend`: the CPU, or a CUDA device (weights and KV cache on the
    /// device, [`crate::device`]); a build without the `cuda` feature answers
    /// `E_BACKEND_UNAVAILABLE`.
    pub fn load_on(path: &Path, backend: crate::Backend) -> Result<Self> {
        pin_cpu_kernels();
        let device = backend.device()?;
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let is_gguf = meta.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if is_gguf || (meta.is_file() && has_gguf_magic(path)) {
            let g = GgufFile::open(path)?;
            let config = Phi2Config::from_gguf(&g)?;
            let weights = Phi2Weights::load_for(&g, Layout::Gguf, &config, &device, backend.own_kernels())?;
            return Self::from_parts(config, weights, "gguf", device, backend.own_kernels());
        }
        let dir = if meta.is_dir() { path } else { path.parent().unwrap_or(Path::new(".")) };
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config = Phi2Config::from_hf_json(&config_path, &text)?;
        let st = SafetensorsModel::open(path)?;
        let layout = Layout::detect(&st)?;
        let weights = Phi2Weights::load_for(&st, layout, &config, &device, backend.own_kernels())?;
        Self::from_parts(config, weights, "safetensors", device, backend.own_kernels())
    }

    /// Loads a GGUF model held in memory (browsers and WASM have no file system). `name` only
    /// labels errors. Goes through [`crate::stream::GgufStreamLoader`] (one push): `bytes` is
    /// freed before the weights are built.
    pub fn load_gguf_bytes(name: &str, bytes: Vec<u8>) -> Result<Self> {
        let mut loader = crate::stream::GgufStreamLoader::new(name, bytes.len() as u64, false)?;
        loader.push(&bytes)?;
        drop(bytes);
        Ok(loader.finish_parts()?.0)
    }

    /// `own_kernels`: the engine's kernels run the products and attention (the CPU only; the
    /// weights must have been loaded for them, [`Phi2Weights::load_for`]).
    pub(crate) fn from_parts(config: Phi2Config, weights: Phi2Weights, format: &'static str, device: Device, own_kernels: bool) -> Result<Self> {
        let info = ModelInfo {
            format,
            dtype: weights.dtype,
            trained_context_length: config.context_length,
            device: crate::device::describe(&device),
        };
        let own_kernels = own_kernels && device.is_cpu();
        Ok(Phi2 { config, info, weights, device, own_kernels, kv_type: KvType::F32, spare: std::sync::Mutex::new(None) })
    }

    /// This model with KV caches of `kind` (default [`KvType::F32`]) from now on: the caches
    /// [`Phi2::new_cache`] makes store it. Set it right after loading.
    pub fn with_kv_type(mut self, kind: KvType) -> Self {
        self.kv_type = kind;
        *self.spare.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        self
    }

    /// What this model's KV caches store.
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// NeoX rotary tables `[t, rotary_dim / 2]` for positions `pos..pos + t`, as HF computes
    /// them: inv_freq_i = theta^(-2i/rot), angle = pos · inv_freq_i (f32). Made per call (t·rot/2
    /// values) rather than for the whole context, so a config's context length costs no memory.
    /// The power, cosine and sine are [`detmath`]'s (f64, rounded to f32), not the platform
    /// libm's, so x86-64, aarch64 and wasm32 builds get the same tables bit for bit.
    fn rotary_tables(&self, pos: usize, t: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let rot = self.config.rotary_dim;
        let half = rot / 2;
        let ln_theta = detmath::ln(self.config.rope_theta as f64);
        // theta^(-e) = e^(-e · ln theta) (theta > 1), or 1 / e^(e · ln theta) (theta < 1; validated > 0).
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let e = (2 * i) as f64 / rot as f64;
                (if ln_theta >= 0.0 { exp_nonpositive(-e * ln_theta) } else { 1.0 / exp_nonpositive(e * ln_theta) }) as f32
            })
            .collect();
        let (mut cos, mut sin) = (Vec::with_capacity(t * half), Vec::with_capacity(t * half));
        for p in pos..pos + t {
            for f in &inv_freq {
                let angle = p as f32 * f;
                let (s, c) = detmath::sin_cos(angle as f64);
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        Ok((Tensor::from_vec(cos, (t, half), &self.device)?, Tensor::from_vec(sin, (t, half), &self.device)?))
    }

    /// What every layer of one pass over positions `pos..pos + t` shares: the rotary tables and,
    /// on candle's attention (a GPU) with several tokens, the causal mask `[t, pos + t]` (row i
    /// sees positions `..= pos + i`), made and uploaded once per pass rather than per layer.
    fn pass_tables(&self, pos: usize, t: usize) -> candle_core::Result<PassTables> {
        let (cos, sin) = self.rotary_tables(pos, t)?;
        let mask = if self.own_kernels || t == 1 {
            None
        } else {
            let len = pos + t;
            let m: Vec<f32> =
                (0..t).flat_map(|i| (0..len).map(move |j| if j <= pos + i { 0.0 } else { f32::NEG_INFINITY })).collect();
            Some(Tensor::from_vec(m, (t, len), &self.device)?)
        };
        Ok(PassTables { cos, sin, mask })
    }

    /// An empty cache for a new generation: the one a finished generation gave back
    /// ([`Phi2::recycle_cache`]) when there is one, its memory already mapped and written (the
    /// first touch of a new cache's pages, which the kernel zeroes, was ~4% of a 128-token
    /// prompt's samples), else a new one.
    pub fn new_cache(&self) -> KvCache {
        if let Some(mut cache) = self.spare.lock().ok().and_then(|mut s| s.take()) {
            cache.rewind();
            return cache;
        }
        KvCache { layers: (0..self.config.num_layers).map(|_| LayerKv::new(self.kv_type)).collect(), len: 0 }
    }

    /// Takes back the cache of a finished generation for the next [`Phi2::new_cache`]. One is
    /// kept, of at most [`SPARE_POSITIONS`] positions (so an idle model holds at most that much
    /// cache memory: on the CPU the pages of ≤ 256 positions, ~170 MB of f32 keys and values for
    /// Phi-2, within a reservation of its whole context where that is made; on a GPU the whole
    /// reservation), a longer
    /// cache is freed, and so is one of another model's shape; dropping the model frees it.
    pub fn recycle_cache(&self, cache: KvCache) {
        let cfg = &self.config;
        if !cache.fits(cfg.num_layers, cfg.num_heads, cfg.head_dim(), self.kv_type) {
            return;
        }
        if let Ok(mut spare) = self.spare.lock() {
            if keeps(spare.as_ref(), &cache) {
                *spare = Some(cache);
            }
        }
    }

    /// Runs `tokens` at positions `cache.len()..`, appending to the cache, and returns f32 logits:
    /// `[tokens.len(), vocab]` when `all_logits`, else `[1, vocab]` for the last token only.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, all_logits: bool) -> Result<Tensor> {
        // The threaded wasm build: the whole pass runs on a thread of the rayon pool, which then
        // computes a share of every product itself and hands the rest to the others, instead of
        // this (the engine's) thread waking the pool and sleeping for each of a pass's ~130
        // products. Measured in Chromium (Phi-2-shaped Q4_0, 2 threads, decode after a 16-token
        // prompt, alternating builds): 7.02–7.11 → 7.40 tok/s.
        #[cfg(target_arch = "wasm32")]
        if crate::par::enabled() && rayon::current_thread_index().is_none() {
            return rayon::scope(|_| self.forward_here(tokens, cache, all_logits));
        }
        self.forward_here(tokens, cache, all_logits)
    }

    /// [`Phi2::forward`] on the calling thread.
    fn forward_here(&self, tokens: &[u32], cache: &mut KvCache, all_logits: bool) -> Result<Tensor> {
        let (t, pos) = (tokens.len(), cache.len);
        self.check_pass(tokens, cache)?;
        let prof = profile::Pass::start(t, &self.device);
        let (mut x, tables, mut h) = profile::time(prof, Phase::Embed, || -> candle_core::Result<_> {
            let x = self.weights.embed.forward(tokens, &self.device)?; // [T, H]
            let tables = self.pass_tables(pos, t)?;
            let h = match self.weights.layers.first() {
                Some(l) => l.norm.forward(&x)?,
                None => x.clone(),
            };
            Ok((x, tables, h))
        })?;
        let layers = &self.weights.layers;
        let scratch = kernels::attention::PassScratch;
        for (i, (layer, kv)) in layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            let (q, k, v, up) = profile::time(prof, Phase::Project, || self.project(layer, &h))?;
            // Attention and `fc2` do not depend on each other (Phi-2's parallel block). Tried and
            // not kept (2026-12-03, AMD EPYC Zen 4, Phi-2-shaped Q4_0, f32 cache, 2 threads): a
            // decode step's 32 heads as work items spread among fc2's in one pool split, so that
            // one thread waits on the KV cache while the other streams weights. Alternating
            // steps in one process (`decode_bench`), median ms with / without: 128 positions
            // 56.2 / 54.4, 59.2 / 59.3, 59.7 / 59.9; 512 positions 76.0 / 75.6, 74.1 / 76.1,
            // 74.8 / 75.7. The memory system gave no more to the two streams together.
            // Nor (2026-12-04, AMD EPYC Zen 5, the same model, 128–248 positions, steps alternating
            // in `decode_bench`) did asking for the layer's keys and values (prefetcht0, t1 or
            // t2, spread over the work items of its q/k/v + fc1 product, or over their last
            // half) before attention reads them: attention 4.0 / 4.4 → 2.3–3.3 ms a step, the
            // step no faster (median 29.5 → 31.0–32.0 ms, 41.3 → 41.9–42.7): its bytes, cache
            // included (1.53 GB of weights, 84–160 MB of cache), already streamed at 86–91% of
            // the probe's 63 GB/s. Nor a one-row AVX-512 attention kernel
            // (two keys per register for the scores, 16 values per register for the sum; the
            // same bits): `attention_bench --positions 144` hot 0.84–0.98 against 0.87–0.99 ms,
            // from memory 3.62–3.86 against 3.69–3.78.
            let y = profile::time(prof, Phase::Attend, || self.attend(&q, &k, &v, kv, &tables))?;
            let attn = profile::time(prof, Phase::Dense, || layer.dense.forward(&y))?;
            let mlp = profile::time(prof, Phase::Fc2, || layer.fc2.forward(&up))?;
            (x, h) = profile::time(prof, Phase::Residual, || self.residual(&x, &attn, &mlp, layers.get(i + 1)))?;
        }
        cache.len += t;
        drop(scratch);
        Ok(profile::time(prof, Phase::Head, || {
            let x = if all_logits { x } else { x.narrow(0, t - 1, 1)? };
            let x = self.weights.final_norm.forward(&x)?;
            self.weights.lm_head.forward(&x)
        })?)
    }

    /// The checks of one pass: a cache of this model's layers, at least one token, every id in
    /// the vocabulary, and room for them after the cached positions.
    fn check_pass(&self, tokens: &[u32], cache: &KvCache) -> Result<()> {
        let pos = cache.len;
        if cache.layers.len() != self.config.num_layers {
            return Err(Error::invalid("cache", format!("a cache of {} layers for a model of {}: not this model's cache", cache.layers.len(), self.config.num_layers)));
        }
        let cfg = &self.config;
        if !cache.readable_by(cfg.num_heads, cfg.head_dim(), self.own_kernels) {
            let path = if self.own_kernels { "the engine's kernels" } else { "candle's tensor path" };
            let why = format!("a cache of another shape, or filled by a model on another path than {path}: not this model's cache");
            return Err(Error::invalid("cache", why));
        }
        if tokens.is_empty() {
            return Err(Error::invalid("tokens", "at least one token is needed"));
        }
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= cfg.vocab_size) {
            return Err(Error::invalid("tokens", format!("token id {bad} is out of range for vocabulary size {}", cfg.vocab_size)));
        }
        if pos + tokens.len() > cfg.context_length {
            return Err(Error::invalid(
                "tokens",
                format!("{} tokens after {pos} cached exceed the context length {}", tokens.len(), cfg.context_length),
            ));
        }
        Ok(())
    }

    /// One forward pass over several sequences (continuous batching, [`crate::batch`]): the
    /// tokens of every item are stacked so that each weight matrix is read once for all of them,
    /// and attention runs per item against its own cache. Returns each item's f32 logits, as
    /// [`Phi2::forward`] would (`[t, vocab]` when `all_logits`, else `[1, vocab]`).
    ///
    /// On the engine's own kernels every row is computed as in a forward pass of that item
    /// alone (the products treat rows independently; norms, rotary and attention are per row or
    /// per item), so the logits are the same bits. An invalid item fails the whole pass before
    /// any cache is touched.
    pub fn forward_batch(&self, items: &mut [BatchItem<'_>]) -> Result<Vec<Tensor>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        for it in items.iter() {
            self.check_pass(it.tokens, it.cache)?;
        }
        let ids: Vec<u32> = items.iter().flat_map(|it| it.tokens.iter().copied()).collect();
        let prof = profile::Pass::start(ids.len(), &self.device);
        let (mut x, parts, mut h) = profile::time(prof, Phase::Embed, || -> candle_core::Result<_> {
            let x = self.weights.embed.forward(&ids, &self.device)?; // [ΣT, H]
            // Per item: (first row, rows, its pass tables).
            let mut parts = Vec::with_capacity(items.len());
            let mut row = 0;
            for it in items.iter() {
                let (t, pos) = (it.tokens.len(), it.cache.len);
                parts.push((row, t, self.pass_tables(pos, t)?));
                row += t;
            }
            let h = match self.weights.layers.first() {
                Some(l) => l.norm.forward(&x)?,
                None => x.clone(),
            };
            Ok((x, parts, h))
        })?;
        let layers = &self.weights.layers;
        let scratch = kernels::attention::PassScratch;
        for (l, layer) in layers.iter().enumerate() {
            let (q, k, v, up) = profile::time(prof, Phase::Project, || self.project(layer, &h))?;
            let y = profile::time(prof, Phase::Attend, || -> candle_core::Result<Tensor> {
                let mut ys = Vec::with_capacity(items.len());
                for (it, (row, t, tables)) in items.iter_mut().zip(&parts) {
                    let rows = |z: &Tensor| z.narrow(0, *row, *t);
                    ys.push(self.attend(&rows(&q)?, &rows(&k)?, &rows(&v)?, &mut it.cache.layers[l], tables)?);
                }
                Ok(if ys.len() == 1 { ys.pop().expect("one item") } else { Tensor::cat(&ys, 0)? })
            })?;
            let attn = profile::time(prof, Phase::Dense, || layer.dense.forward(&y))?;
            let mlp = profile::time(prof, Phase::Fc2, || layer.fc2.forward(&up))?;
            (x, h) = profile::time(prof, Phase::Residual, || self.residual(&x, &attn, &mlp, layers.get(l + 1)))?;
        }
        drop(scratch);
        // The rows whose logits are wanted, through the final norm and lm_head together.
        let mut keep = Vec::with_capacity(items.len());
        for (it, (row, t, ..)) in items.iter_mut().zip(&parts) {
            it.cache.len += t;
            keep.push(if it.all_logits { (*row, *t) } else { (row + t - 1, 1) });
        }
        let logits = profile::time(prof, Phase::Head, || -> candle_core::Result<Tensor> {
            let picked: Vec<Tensor> = keep.iter().map(|&(r, n)| x.narrow(0, r, n)).collect::<candle_core::Result<_>>()?;
            let x = if picked.len() == 1 { picked[0].clone() } else { Tensor::cat(&picked, 0)? };
            let x = self.weights.final_norm.forward(&x)?;
            self.weights.lm_head.forward(&x)
        })?;
        let mut out = Vec::with_capacity(items.len());
        let mut at = 0;
        for &(_, n) in &keep {
            out.push(logits.narrow(0, at, n)?);
            at += n;
        }
        Ok(out)
    }

    /// The end of a block: `x + attn + mlp`, and the `next` block's LayerNorm of it (its input
    /// h) in the same pass ([`crate::weights::residual`]); after the last block h is unused.
    fn residual(
        &self,
        x: &Tensor,
        attn: &Tensor,
        mlp: &Tensor,
        next: Option<&crate::weights::Phi2Layer>,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (x, h) = crate::weights::residual(x, attn, mlp, next.map(|l| &l.norm))?;
        Ok((x.clone(), h.unwrap_or(x)))
    }

    /// The projections of the layer input h `[T, H]` (Phi-2's attention and MLP read the same
    /// h): q, k, v `[T, H]` and the MLP's `gelu_new(fc1(h))` `[T, I]`, computed by one product
    /// over all their weights where the engine's kernels take them ([`Linear::forward_many`]).
    fn project(&self, layer: &crate::weights::Phi2Layer, h: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor, Tensor)> {
        let hidden = self.config.hidden_size;
        Ok(match &layer.qkv {
            Qkv::Fused(l) => {
                let [qkv, up]: [Tensor; 2] = crate::weights::Linear::forward_many(&[(l, false), (&layer.fc1, true)], h)?
                    .try_into()
                    .expect("two outputs");
                (qkv.narrow(1, 0, hidden)?, qkv.narrow(1, hidden, hidden)?, qkv.narrow(1, 2 * hidden, hidden)?, up)
            }
            Qkv::Split([lq, lk, lv]) => {
                let [q, k, v, up]: [Tensor; 4] =
                    crate::weights::Linear::forward_many(&[(lq, false), (lk, false), (lv, false), (&layer.fc1, true)], h)?
                        .try_into()
                        .expect("four outputs");
                (q, k, v, up)
            }
        })
    }

    /// Attention of one sequence before `dense`: q, k, v `[T, H]` of its new positions (k, v
    /// appended to its cache) → `[T, H]`.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        kv: &mut LayerKv,
        tables: &PassTables,
    ) -> candle_core::Result<Tensor> {
        let (cos, sin) = (&tables.cos, &tables.sin);
        if self.own_kernels {
            return self.attend_cpu(q, k, v, kv, cos, sin);
        }
        let cfg = &self.config;
        let (t, _) = q.dims2()?;
        let (nh, hd) = (cfg.num_heads, cfg.head_dim());
        // [T, H] → [1, heads, T, head_dim]
        let heads = |x: &Tensor| x.reshape((1, t, nh, hd))?.transpose(1, 2)?.contiguous();
        let (q, k, v) = (heads(q)?, heads(k)?, heads(v)?);
        let (q, k) = (self.rotary(&q, cos, sin)?, self.rotary(&k, cos, sin)?);
        // An f16 cache: the values it would hold (kept in f32 here, the same numbers).
        let round = |x: Tensor| match kv.host.kind() {
            KvType::F32 => Ok(x),
            KvType::F16 => x.to_dtype(candle_core::DType::F16)?.to_dtype(candle_core::DType::F32),
        };
        let (k, v) = (round(k)?, round(v)?);
        kv.append(&k, &v, cfg.context_length)?;
        self.attend_on_device(&q, kv, t, tables.mask.as_ref())
    }

    /// [`Phi2::attend`] on the CPU, on plain f32 buffers: one pass over the new rows puts q
    /// (rotated) into the `[heads, T, head_dim]` layout of the attention kernel and k (rotated)
    /// and v straight into the cache, then the engine's attention ([`kernels::attention`]),
    /// causal by construction (row i sees positions ..= pos + i): each row's bits do not depend
    /// on how the prompt was split into passes or batched with other sequences, nor on the ISA.
    /// The rotation is candle's `rope` (NeoX halves) operation for operation, so the bits are
    /// those of the tensor path.
    fn attend_cpu(&self, q: &Tensor, k: &Tensor, v: &Tensor, kv: &mut LayerKv, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        let pos = kv.len;
        let y = match &mut kv.host {
            KvHost::F32(host) => self.attend_host(q, k, v, host, pos, cos, sin)?,
            KvHost::F16(host) => self.attend_host(q, k, v, host, pos, cos, sin)?,
        };
        kv.len += q.dim(0)?;
        Ok(y)
    }

    /// [`Phi2::attend_cpu`] with a cache of `T` holding `pos` positions.
    #[allow(clippy::too_many_arguments)]
    fn attend_host<T: KvElem>(&self, q: &Tensor, k: &Tensor, v: &Tensor, host: &mut HostKv<T>, pos: usize, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        let cfg = &self.config;
        let (t, hidden) = q.dims2()?;
        let (nh, hd, rot) = (cfg.num_heads, cfg.head_dim(), cfg.rotary_dim);
        // The items below write through raw pointers: the cache must be this model's shape. A
        // cache made by another model fails here, before `reserve` would copy from its buffers.
        let foreign = |h: &HostKv<T>| format!("KV cache of {} values for {nh} heads × {} positions × {hd}: not this model's cache", h.k.len(), h.cap);
        if host.cap > 0 && !host.shaped(nh, hd) {
            candle_core::bail!("{}", foreign(host));
        }
        host.reserve(pos + t, pos, nh, hd, cfg.context_length);
        let cap = host.cap;
        if !host.shaped(nh, hd) || pos + t > cap {
            candle_core::bail!("{}", foreign(host));
        }
        let mut qh = vec![0f32; nh * t * hd];
        // Per head over the pool for prompts (a new cache's pages are first touched here).
        let (qd, kd, vd) = (kernels::Shared(qh.as_mut_ptr()), kernels::Shared(host.k.as_mut_ptr()), kernels::Shared(host.v.as_mut_ptr()));
        with_rows(q, |qs, qst| {
            with_rows(k, |ks, kst| {
                with_rows(v, |vs, vst| {
                    with_f32(cos, |cs| {
                        with_f32(sin, |sn| {
                            let half = rot / 2;
                            kernels::par_items(nh, nh * t * hd, &|h| {
                                // SAFETY: head h's rows of `qh` and its new positions in the
                                // caches (`reserve`d above) are this item's alone.
                                let (qd, kd, vd) = unsafe { (qd.slice(h * t * hd, t * hd), kd.slice((h * cap + pos) * hd, t * hd), vd.slice((h * cap + pos) * hd, t * hd)) };
                                let src = h * hd..(h + 1) * hd;
                                for i in 0..t {
                                    let (c, s) = (&cs[i * half..(i + 1) * half], &sn[i * half..(i + 1) * half]);
                                    let dst = i * hd..(i + 1) * hd;
                                    rotate(&qs[i * qst..][src.clone()], &mut qd[dst.clone()], c, s);
                                    rotate(&ks[i * kst..][src.clone()], &mut kd[dst.clone()], c, s);
                                    store(&vs[i * vst..][src.clone()], &mut vd[dst]);
                                }
                            })
                        })
                    })
                })
            })
        })?????;
        let shape = kernels::attention::AttnShape { heads: nh, head_dim: hd, cap, pos, tokens: t };
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        let mut y = vec![0f32; t * hidden];
        kernels::attention::attention(&qh, &host.k, &host.v, shape, scale, &mut y, kernels::pool::threads());
        Tensor::from_vec(y, (t, hidden), q.device())
    }

    /// Attention with candle's ops (a GPU, or the CPU reference path), after the rotated keys and values were appended:
    /// q `[1, heads, T, head_dim]` against the `kv.len` cached positions → `[T, H]`. Scores and
    /// softmax in f32; row i sees positions `..= kv.len - T + i`.
    fn attend_on_device(&self, q: &Tensor, kv: &LayerKv, t: usize, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (hd, len) = (self.config.head_dim(), kv.len);
        let k = kv.k.as_ref().expect("appended above").narrow(2, 0, len)?;
        let v = kv.v.as_ref().expect("appended above").narrow(2, 0, len)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut scores = (q.matmul(&k.t()?)? * scale)?; // [1, heads, T, len]
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let p = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = p.matmul(&v)?; // [1, heads, T, head_dim]
        y.transpose(1, 2)?.reshape((t, self.config.hidden_size))
    }

    /// NeoX rotary on the first `rotary_dim` dims of each head; the rest pass through.
    fn rotary(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        let rot = self.config.rotary_dim;
        let hd = self.config.head_dim();
        if rot == 0 {
            return Ok(x.clone());
        }
        let rotated = candle_nn::rotary_emb::rope(&x.narrow(D::Minus1, 0, rot)?.contiguous()?, cos, sin)?;
        if rot == hd {
            return Ok(rotated);
        }
        Tensor::cat(&[&rotated, &x.narrow(D::Minus1, rot, hd - rot)?], D::Minus1)?.contiguous()
    }

    /// Log-softmax rows `[T, vocab]` (f32) for the logits of every position of `tokens`, run
    /// from an empty context: row i scores token i+1.
    pub fn logprobs(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut cache = self.new_cache();
        let logits = self.forward(tokens, &mut cache, true)?;
        let n = logits.dim(D::Minus1)?;
        // [`detmath`]'s log-softmax (f64, no libm): the same bits on every platform.
        Ok(detmath::log_softmax_rows(&logits.flatten_all()?.to_vec1::<f32>()?, n))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Times the wasm kernels' settings whose faster value depends on the CPU ([`kernels::Knob`])
    /// on this model's MLP matrices (fc1 and fc2 of every layer, in order: most of a decode
    /// step's weight reads) and keeps the faster of each for every later product: the i16 dots
    /// on one-token products of one matrix's first rows ([`kernels::calibrate_dot16`]), then the touches ahead
    /// on one-token passes of 96 MB ([`kernels::calibrate_touch_ahead`]). Empty when those
    /// matrices are not our kernels' (each knob also skips what it cannot time: small models keep
    /// the defaults). `now_ms`: a clock in milliseconds.
    #[cfg(target_arch = "wasm32")]
    pub fn calibrate_kernels(&self, now_ms: &dyn Fn() -> f64) -> Vec<kernels::Calibration> {
        use crate::weights::Matrix;
        let mut mats = Vec::new();
        for layer in &self.weights.layers {
            for l in [&layer.fc1, &layer.fc2] {
                match &l.weight {
                    Matrix::Packed(p) => mats.push(p.weight_ref()),
                    _ => return Vec::new(),
                }
            }
        }
        [kernels::calibrate_dot16(&mats, now_ms), kernels::calibrate_touch_ahead(&mats, 96 << 20, now_ms)].into_iter().flatten().collect()
    }
}

/// One head's `x` (`head_dim` values) into `y` with NeoX rotary on its first `2 · c.len()`
/// values (angle cosines `c`, sines `s`) and the rest copied: the operations of candle's `rope`
/// (`x1·cos − x2·sin`, `x1·sin + x2·cos`, each product rounded, no fused multiply-add).
#[inline]
fn rotate<T: KvElem>(x: &[f32], y: &mut [T], c: &[f32], s: &[f32]) {
    let half = c.len();
    for d in 0..half {
        let (x1, x2) = (x[d], x[d + half]);
        y[d] = T::store(x1 * c[d] - x2 * s[d]);
        y[d + half] = T::store(x1 * s[d] + x2 * c[d]);
    }
    store(&x[2 * half..], &mut y[2 * half..]);
}

/// `x` into `y` as the cache stores it ([`KvElem::store`]).
fn store<T: KvElem>(x: &[f32], y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = T::store(x);
    }
}

/// Runs `f(values, row_stride)` on an f32 CPU matrix `[T, n]` whose rows are contiguous but may
/// lie apart (a column range of a wider matrix, as q, k and v are of the fused projection): row
/// i is `values[i * row_stride..][..n]`. Other layouts are copied first.
fn with_rows<R>(x: &Tensor, f: impl FnOnce(&[f32], usize) -> R) -> candle_core::Result<R> {
    let (t, n) = x.dims2()?;
    {
        let (storage, layout) = x.storage_and_layout();
        let (stride, start) = (layout.stride(), layout.start_offset());
        if let candle_core::Storage::Cpu(cpu) = &*storage {
            let data = cpu.as_slice::<f32>()?;
            let row_stride = if t <= 1 { n } else { stride[0] };
            let end = start + t.saturating_sub(1) * row_stride + n;
            if t > 0 && (stride[1] == 1 || n <= 1) && end <= data.len() {
                return Ok(f(&data[start..end], row_stride));
            }
        }
    }
    Ok(f(&x.flatten_all()?.to_vec1::<f32>()?, n))
}

/// Sets up candle's CPU side once per process:
///
/// - **Threads.** The heavy products run on our own kernels' pool ([`crate::kernels::pool`]);
///   what is left to candle per token is small (norms, attention scores, residual adds), and its
///   own spinning worker pool would only compete with ours for the cores (measured on 2 cores:
///   decode 2.5× slower with both pools). So candle runs single-threaded unless the user sets
///   `CANDLE_NUM_THREADS`.
/// - **Kernel level.** On x86 CPUs with AVX-512 VNNI, candle 0.11 routes Q8_0 matmuls through repacked kernels that
/// round activations differently from every other path (AVX2, WASM SIMD128, ggml): measured on
/// our fixtures, Q8_0 log-probs then move ~0.2 away from llama.cpp and from our own WASM build.
/// Pinning candle's x86 level to AVX2 (its `MISTRALRS_FORCE_AVX2` switch, read once on first use)
/// keeps one numerical behaviour on every machine, so the same seed gives the same tokens
/// everywhere. A user who sets the variable keeps their choice.
/// (x86-64 only: elsewhere the variable means nothing, and wasm32 has no environment to set.)
pub(crate) fn pin_cpu_kernels() {
    #[cfg(target_arch = "x86_64")]
    static ONCE: std::sync::Once = std::sync::Once::new();
    #[cfg(target_arch = "x86_64")]
    ONCE.call_once(|| {
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
        if std::env::var_os("MISTRALRS_FORCE_AVX2").is_none() && std::env::var_os("MISTRALRS_FORCE_AVXVNNI").is_none() {
            std::env::set_var("MISTRALRS_FORCE_AVX2", "1");
        }
    });
}

fn has_gguf_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}

#[cfg(test)]
mod tests {
    use super::{keeps, HostKv, KvCache, KvHost, KvType, LayerKv, KV_CHUNK, SPARE_POSITIONS};

    #[test]
    fn a_rewound_cache_forgets_every_layers_positions() {
        // A pass that failed part-way: some layers advanced, the cache's own length not.
        let mut c = cache(3, 8);
        c.layers[0].len = 5;
        c.layers[1].len = 5;
        c.truncate(0);
        assert_eq!(c.layers[0].len, 5, "truncate(0) of an empty cache is a no-op");
        c.rewind();
        assert!(c.layers.iter().all(|l| l.len == 0) && c.capacity() == 8);
    }

    #[test]
    fn only_a_cache_of_the_models_shape_fits() {
        let mut c = cache(2, 4);
        for l in c.layers.iter_mut() {
            l.host = KvHost::F32(HostKv { k: crate::kernels::buffer::F32Buffer::zeroed(3 * 4 * 5), v: crate::kernels::buffer::F32Buffer::zeroed(3 * 4 * 5), cap: 4, written: 4 });
        }
        assert!(c.fits(2, 3, 5, KvType::F32));
        assert!(!c.fits(2, 4, 5, KvType::F32) && !c.fits(2, 3, 4, KvType::F32) && !c.fits(3, 3, 5, KvType::F32));
        assert!(!c.fits(2, 3, 5, KvType::F16), "an f32 cache is not an f16 one");
        c.clear();
        assert!(c.layers.iter().all(|l| l.host.kind() == KvType::F32));
        let mut h = cache(2, 0);
        h.layers.iter_mut().for_each(|l| *l = LayerKv::new(KvType::F16));
        h.clear();
        assert!(h.fits(2, 3, 5, KvType::F16) && h.layers.iter().all(|l| l.host.kind() == KvType::F16), "clear keeps the cache's type");
    }

    /// A cache of `layers` layers with room for `cap` positions (bookkeeping only, no memory).
    fn cache(layers: usize, cap: usize) -> KvCache {
        let mut c = KvCache { layers: (0..layers).map(|_| LayerKv::default()).collect(), len: 0 };
        c.layers.iter_mut().for_each(|l| l.host = KvHost::F32(HostKv { cap, written: cap, ..HostKv::default() }));
        c
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_cache_reserves_its_whole_context_once_and_never_moves() {
        // Phi-2's heads: 32 × 80 values per position, a context of 2048.
        let (heads, hd, max_len) = (32, 80, 2048);
        let mut h = HostKv::<f32>::default();
        h.reserve(5, 0, heads, hd, max_len);
        if crate::kernels::buffer::strict_overcommit() {
            // This host counts reservations in full: the cache takes what it uses, by chunks.
            assert_eq!((h.cap, h.written), (KV_CHUNK, 5));
            return;
        }
        assert_eq!((h.cap, h.written), (max_len, 5));
        assert!(h.shaped(heads, hd));
        h.k[(3 * max_len + 4) * hd + 7] = 1.5;
        let at = h.k.as_ptr();
        h.reserve(700, 5, heads, hd, max_len);
        assert_eq!((h.cap, h.written, h.k.as_ptr()), (max_len, 700, at), "no new memory past 256 positions");
        assert_eq!(h.k[(3 * max_len + 4) * hd + 7], 1.5);
        let mut c = cache(1, 0);
        c.layers[0].host = KvHost::F32(h);
        assert_eq!((c.capacity(), c.resident()), (max_len, 700));
        assert!(!keeps(None, &c), "700 positions in use: freed, not kept");
    }

    #[test]
    fn a_small_cache_keeps_its_positions_when_it_grows() {
        // 2 heads × 4 values: 1 KB per 256 positions, on the heap (below the maps' 64 KB) or
        // reserved whole (Linux); either way the positions written stay.
        let mut h = HostKv::<f32>::default();
        h.reserve(3, 0, 2, 4, 1000);
        h.k[(h.cap + 2) * 4 + 1] = 2.5;
        h.reserve(300, 3, 2, 4, 1000);
        assert!(h.cap >= 300 && h.written >= 300 && h.shaped(2, 4));
        assert_eq!(h.k[(h.cap + 2) * 4 + 1], 2.5);
    }

    #[test]
    fn growing_by_chunks_keeps_every_heads_positions() {
        // The path of wasm and of hosts that refuse the whole-context map: new buffers, each
        // head's positions copied from its old place (h · old_cap) to its new one (h · cap).
        // Phi-2's head shape, so that the buffers are maps (from 64 KB) as well as heap.
        for (heads, hd) in [(32, 80), (2, 4)] {
            let mut h = HostKv::<f32>::default();
            h.grow(KV_CHUNK, 0, heads, hd);
            assert!(h.shaped(heads, hd) && h.cap == KV_CHUNK);
            let mark = |head: usize, p: usize, d: usize| (head * 1000 + p) as f32 + d as f32 / 100.0;
            let pos = KV_CHUNK - 3;
            for head in 0..heads {
                // Past the positions kept: written, but not to be copied.
                h.k[(head * KV_CHUNK + pos) * hd..(head + 1) * KV_CHUNK * hd].fill(7.0);
                h.v[(head * KV_CHUNK + pos) * hd..(head + 1) * KV_CHUNK * hd].fill(7.0);
                for p in 0..pos {
                    for d in 0..hd {
                        h.k[(head * KV_CHUNK + p) * hd + d] = mark(head, p, d);
                        h.v[(head * KV_CHUNK + p) * hd + d] = -mark(head, p, d);
                    }
                }
            }
            h.reserve(KV_CHUNK + 1, pos, heads, hd, 2048);
            let cap = h.cap;
            assert!(cap > KV_CHUNK && h.shaped(heads, hd) && h.written >= KV_CHUNK + 1);
            for head in 0..heads {
                for p in 0..pos {
                    for d in 0..hd {
                        assert_eq!(h.k[(head * cap + p) * hd + d], mark(head, p, d), "key of head {head}, position {p}");
                        assert_eq!(h.v[(head * cap + p) * hd + d], -mark(head, p, d), "value of head {head}, position {p}");
                    }
                }
                for buf in [&h.k, &h.v] {
                    assert!(buf[(head * cap + pos) * hd..(head * cap + cap) * hd].iter().all(|&x| x == 0.0), "head {head}: positions past those kept are zero");
                }
            }
        }
    }

    #[test]
    fn the_model_keeps_one_short_cache_for_the_next_generation() {
        assert!(keeps(None, &cache(4, 256)));
        assert!(keeps(Some(&cache(4, 128)), &cache(4, 256)), "the roomier one");
        assert!(!keeps(Some(&cache(4, 256)), &cache(4, 128)));
        assert!(!keeps(None, &cache(4, 0)), "nothing to keep");
        assert!(!keeps(None, &cache(4, SPARE_POSITIONS + 1)), "too long: freed");
    }

    #[test]
    fn model_is_shareable_across_threads() {
        fn is_send_sync<T: Send + Sync>() {}
        is_send_sync::<super::Phi2>();
    }
}
