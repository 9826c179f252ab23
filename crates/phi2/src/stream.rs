//! Streamed GGUF loading: the file arrives in chunks (a download, a `ReadableStream`) and is never
//! held whole.
//!
//! - The header (magic, version, metadata, tensor infos) is parsed from the buffered prefix as soon
//!   as it is complete, by the same validating parser as [`GgufFile::from_bytes`], with every count,
//!   length and tensor range checked against the declared total length. Attempts are made when
//!   the prefix reaches the length the previous attempt got stuck at; past the first 4 KiB (where
//!   the fixed fields and counts are, so those errors surface at the very push that brings them),
//!   only once the prefix has also doubled since that attempt, so the parsing cost stays linear in
//!   the header size. A malformed header is reported by the push whose bytes let such an attempt
//!   see it, before the tensor data.
//! - Then the config is built ([`Phi2Config::from_gguf`]), the tensors the model takes are checked
//!   (present, supported dtype), the memory need is checked against the limit, and one buffer per
//!   needed tensor is reserved (`try_reserve_exact`: a refusal is [`Error::OutOfMemory`], never an
//!   abort). Pushed bytes go straight into those buffers by file offset; padding, tensors the model
//!   does not use and bytes after the last tensor are skipped.
//! - [`GgufStreamLoader::finish`] hands each buffer to the weight loader, which frees it right after
//!   converting it: peak memory is about one copy of the file plus its largest tensor.
//!
//! # Memory fit
//! With a `memory_limit` (the wasm binding passes [`WASM32_MEMORY_LIMIT`]), the need is counted as
//! `file bytes + max(largest tensor, KV cache at full context) + WORKING_MARGIN`, where the KV cache
//! is the keys and values of every layer at the context length (`2 · layers · ctx · hidden · b`,
//! b = 4 bytes for an f32 cache, 2 for f16 ([`GgufStreamLoader::with_kv_type`]), which a prompt
//! pass also reads through an f32 copy of one layer's keys and values: `+ 2 · ctx · hidden · 4`)
//! and the largest tensor is the transient extra copy while it is converted in `finish`. Before the
//! header is known only `file bytes + WORKING_MARGIN` is checked (in [`GgufStreamLoader::new`], so
//! a hopeless download fails before it starts); the full check runs once the header is parsed.

use std::borrow::Cow;
use std::cell::RefCell;
use std::path::{Path, PathBuf};

use candle_core::Device;
use sha2::{Digest, Sha256};

use crate::config::Phi2Config;
use crate::dtype::{TensorData, TensorSource, TensorView};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, GgufVocab, HeaderParse};
use crate::model::{KvType, Phi2};
use crate::weights::{Layout, Phi2Weights};

/// wasm32's address space: 4 GiB.
pub const WASM32_MEMORY_LIMIT: u64 = 4 << 30;

/// Memory counted on top of the weights and the KV cache: activations, logits and sampler
/// buffers of a prefill of a few hundred tokens, the parsed metadata (tokenizer) and, on wasm,
/// the engine's code, stack and allocator slack. 256 MiB.
pub const WORKING_MARGIN: u64 = 256 << 20;

/// Below this prefix length the header parse is retried as soon as the bytes it got stuck at
/// arrived (at most a few thousand small parses); beyond it, only when the prefix has doubled too.
const EXACT_RETRY_BELOW: usize = 4096;

const GB: f64 = 1e9;

/// Builds a Phi-2 model from a GGUF file pushed in chunks, in file order.
pub struct GgufStreamLoader {
    path: PathBuf,
    total: usize,
    memory_limit: Option<u64>,
    /// Caps the context length (and so the KV cache the fit check counts).
    context_limit: Option<usize>,
    /// What the model's KV cache will store (the fit check counts its bytes).
    kv_type: KvType,
    received: usize,
    hasher: Option<Sha256>,
    digest: Option<String>,
    state: State,
    /// Set by the first failed push; later calls report it.
    failed: Option<String>,
}

enum State {
    /// Buffering the prefix until the header parses; `next_try` is the prefix length at which
    /// to attempt the next parse.
    Header { buf: Vec<u8>, next_try: usize },
    /// Header parsed: filling the tensor buffers.
    Data(Box<Body>),
}

struct Body {
    header: GgufFile,
    /// With `context_length` capped by the context limit.
    config: Phi2Config,
    /// The file's own context length.
    trained_context: usize,
    /// One slot per tensor info; `Some` for the tensors the model takes (filled in file order).
    bufs: Vec<Option<Vec<u8>>>,
    /// Indices of the held tensors, sorted by offset.
    order: Vec<usize>,
    /// Every held tensor before `order[cursor]` is complete.
    cursor: usize,
}

impl Body {
    fn range(&self, i: usize) -> (usize, usize) {
        let info = &self.header.tensor_infos()[i];
        let len = info.len.unwrap_or(0);
        (info.offset, info.offset.saturating_add(len))
    }

    /// Copies the file bytes `chunk`, which start at file offset `at`, into the tensor buffers
    /// they belong to.
    fn write(&mut self, at: usize, chunk: &[u8]) {
        let end = at + chunk.len();
        while self.cursor < self.order.len() && self.range(self.order[self.cursor]).1 <= at {
            self.cursor += 1;
        }
        for k in self.cursor..self.order.len() {
            let i = self.order[k];
            let (start, stop) = self.range(i);
            if start >= end {
                break;
            }
            let (lo, hi) = (start.max(at), stop.min(end));
            if lo < hi {
                if let Some(buf) = self.bufs[i].as_mut() {
                    // Chunks arrive in file order, so this continues the tensor where it stopped;
                    // the capacity was reserved for exactly the tensor's length.
                    buf.extend_from_slice(&chunk[lo - at..hi - at]);
                }
            }
        }
    }
}

impl GgufStreamLoader {
    /// A loader for a GGUF file of `total_len` bytes, with no memory limit. `name` labels
    /// errors; `hash` makes [`GgufStreamLoader::sha256`] available.
    pub fn new(name: &str, total_len: u64, hash: bool) -> Result<Self> {
        Self::with_memory_limit(name, total_len, hash, None)
    }

    /// Like [`GgufStreamLoader::new`], refusing with [`Error::ModelTooLarge`] (`E_MODEL_TOO_LARGE`)
    /// a model that cannot fit in `memory_limit` bytes (see the module docs for the count): here
    /// from `total_len` alone, and again once the header is parsed.
    pub fn with_memory_limit(name: &str, total_len: u64, hash: bool, memory_limit: Option<u64>) -> Result<Self> {
        Self::with_limits(name, total_len, hash, memory_limit, None)
    }

    /// Like [`GgufStreamLoader::with_memory_limit`], and the model's context length is capped at
    /// `context_limit` tokens (≥ 1): generation stops there, and the fit check counts the KV cache
    /// for that many positions. This is how a model too large at its full context (phi-2 Q8_0 in
    /// wasm32) can still load; the E_MODEL_TOO_LARGE message says which cap would fit.
    pub fn with_limits(
        name: &str,
        total_len: u64,
        hash: bool,
        memory_limit: Option<u64>,
        context_limit: Option<usize>,
    ) -> Result<Self> {
        let path = PathBuf::from(name);
        if context_limit == Some(0) {
            return Err(Error::invalid("context_limit", "must be at least 1 token"));
        }
        if let Some(limit) = memory_limit {
            let need = total_len.saturating_add(WORKING_MARGIN);
            if need > limit {
                return Err(too_large(&path, total_len, need, limit, "before the KV cache"));
            }
        }
        let total = usize::try_from(total_len).map_err(|_| {
            too_large(&path, total_len, total_len, usize::MAX as u64, "more than this platform's address space")
        })?;
        Ok(GgufStreamLoader {
            path,
            total,
            memory_limit,
            context_limit,
            kv_type: KvType::F32,
            received: 0,
            hasher: hash.then(Sha256::new),
            digest: None,
            state: State::Header { buf: Vec::new(), next_try: 1 },
            failed: None,
        })
    }

    /// The model will keep its KV cache as `kind` ([`Phi2::with_kv_type`]), and the fit check
    /// counts that cache's bytes. Before the first push.
    pub fn with_kv_type(mut self, kind: KvType) -> Self {
        self.kv_type = kind;
        self
    }

    /// Bytes pushed so far.
    pub fn received(&self) -> u64 {
        self.received as u64
    }

    /// The declared total length.
    pub fn total(&self) -> u64 {
        self.total as u64
    }

    pub fn header_parsed(&self) -> bool {
        matches!(self.state, State::Data(_))
    }

    /// The parsed header (metadata and tensor infos), once [`GgufStreamLoader::header_parsed`].
    pub fn header(&self) -> Option<&GgufFile> {
        match &self.state {
            State::Data(b) => Some(&b.header),
            State::Header { .. } => None,
        }
    }

    /// Lowercase hex SHA-256 of all the bytes, once all `total_len` arrived (only with `hash`).
    pub fn sha256(&self) -> Option<String> {
        self.digest.clone()
    }

    /// Appends the next `chunk` of the file (any size). Errors: bytes beyond the declared total
    /// (`E_INVALID_ARGUMENT`, nothing of the chunk is taken), an invalid header
    /// (`E_MALFORMED_FILE`, `E_BAD_CONFIG`, `E_MISSING_TENSOR`, `E_BAD_TENSOR`) as soon as it is
    /// detected, `E_MODEL_TOO_LARGE`, `E_OUT_OF_MEMORY`. After an error other than the first kind,
    /// the loader only reports that it failed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<()> {
        if let Some(msg) = &self.failed {
            return Err(Error::invalid("chunk", format!("this loader already failed: {msg}")));
        }
        let end = match self.received.checked_add(chunk.len()) {
            Some(end) if end <= self.total => end,
            _ => {
                return Err(Error::invalid(
                    "chunk",
                    format!(
                        "{}: {} more bytes would exceed the declared total of {} bytes ({} received so far)",
                        self.path.display(),
                        chunk.len(),
                        self.total,
                        self.received
                    ),
                ))
            }
        };
        if chunk.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.accept(chunk) {
            self.failed = Some(e.to_string());
            return Err(e);
        }
        self.received = end;
        if let Some(h) = &mut self.hasher {
            h.update(chunk);
            if end == self.total {
                if let Some(h) = self.hasher.take() {
                    self.digest = Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect());
                }
            }
        }
        Ok(())
    }

    fn accept(&mut self, chunk: &[u8]) -> Result<()> {
        let at = self.received;
        let limits = self.limits();
        let body = match &mut self.state {
            State::Data(body) => {
                body.write(at, chunk);
                return Ok(());
            }
            State::Header { buf, next_try } => {
                match header_step(&self.path, self.total, limits, buf, next_try, chunk)? {
                    Some(body) => body,
                    None => return Ok(()),
                }
            }
        };
        self.state = State::Data(body);
        Ok(())
    }
}

/// Feeds `chunk` to the header buffer, parsing whenever the buffer reaches `next_try` bytes. Only
/// bytes up to a parse attempt are buffered: once the header parses, the rest of `chunk` goes
/// straight to the tensor buffers (a whole file pushed at once is not copied twice). Returns the
/// body, with every byte so far written, once the header is parsed.
fn header_step(
    path: &Path,
    total: usize,
    limits: Limits,
    buf: &mut Vec<u8>,
    next_try: &mut usize,
    chunk: &[u8],
) -> Result<Option<Box<Body>>> {
    let mut rest = chunk;
    while !rest.is_empty() {
        let take = next_try.saturating_sub(buf.len()).clamp(1, rest.len());
        buf.try_reserve(take).map_err(|_| Error::OutOfMemory {
            what: format!("cannot grow the GGUF header buffer of {} to {} bytes", path.display(), buf.len() + take),
        })?;
        buf.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        if buf.len() < *next_try && buf.len() < total {
            continue; // `rest` is empty here
        }
        match GgufFile::parse_header(path, buf, total)? {
            HeaderParse::NeedMore { at_least } => {
                *next_try =
                    if buf.len() < EXACT_RETRY_BELOW { at_least } else { at_least.max(buf.len().saturating_mul(2)) };
            }
            HeaderParse::Parsed(header) => {
                let prefix = std::mem::take(buf);
                let mut body = start_body(path, total, limits, header)?;
                body.write(0, &prefix);
                body.write(prefix.len(), rest);
                return Ok(Some(body));
            }
        }
    }
    Ok(None)
}

#[derive(Clone, Copy)]
struct Limits {
    memory: Option<u64>,
    context: Option<usize>,
    kv: KvType,
}

/// Config, tensor checks, fit check and buffer reservations for a parsed header.
fn start_body(path: &Path, total: usize, limits: Limits, header: GgufFile) -> Result<Box<Body>> {
    let mut config = Phi2Config::from_gguf(&header)?;
    let trained_context = config.context_length;
    if let Some(c) = limits.context {
        config.context_length = config.context_length.min(c);
    }
    let needed = Layout::Gguf.required_tensors(&config, &header);
    let infos = header.tensor_infos();
    let mut held = Vec::with_capacity(needed.len());
    let mut largest = 0usize;
    for name in &needed {
        let Some(info) = header.tensor_info(name) else {
            return Err(Error::MissingTensor { path: path.to_path_buf(), name: name.clone(), looked_for: name.clone() });
        };
        let Some(len) = info.len else {
            // The same "unsupported ggml type" error as GgufFile::tensor.
            return Err(header.tensor(name).err().unwrap_or_else(|| Error::tensor(path, name, "unsupported ggml type")));
        };
        largest = largest.max(len);
        if let Some(i) = header.tensor_index(name) {
            held.push(i);
        }
    }
    if let Some(limit) = limits.memory {
        // Keys and values for every layer, per position; an f16 cache also an f32 copy of one
        // layer's, which a prompt pass reads it through (kernels::attention::widened).
        let layer_per_token = 2u64.saturating_mul(config.hidden_size as u64);
        let mut kv_per_token = layer_per_token.saturating_mul(config.num_layers as u64).saturating_mul(limits.kv.bytes() as u64);
        if limits.kv == KvType::F16 {
            kv_per_token = kv_per_token.saturating_add(layer_per_token.saturating_mul(4));
        }
        let kv = kv_per_token.saturating_mul(config.context_length as u64);
        let need = (total as u64).saturating_add(kv.max(largest as u64)).saturating_add(WORKING_MARGIN);
        if need > limit {
            let mut detail = format!(
                "with the {} KV cache at a context of {} tokens: {:.2} GB",
                limits.kv.name(),
                config.context_length,
                kv as f64 / GB
            );
            // The largest context (a multiple of 256) that would fit, if a useful one does.
            let room = limit.saturating_sub((total as u64).saturating_add(WORKING_MARGIN));
            let fits = if room >= largest as u64 && kv_per_token > 0 { (room / kv_per_token) / 256 * 256 } else { 0 };
            if fits >= 256 && (fits as usize) < config.context_length {
                detail.push_str(&format!(
                    "; it fits with a context of at most {fits} tokens: load it with contextLength {fits} or less"
                ));
            }
            return Err(too_large(path, total as u64, need, limit, &detail));
        }
    }
    let mut bufs: Vec<Option<Vec<u8>>> = vec![None; infos.len()];
    for &i in &held {
        let info = &infos[i];
        let len = info.len.unwrap_or(0);
        let mut v = Vec::new();
        v.try_reserve_exact(len).map_err(|_| Error::OutOfMemory {
            what: format!("cannot allocate {len} bytes for tensor `{}` of {}", info.name, path.display()),
        })?;
        bufs[i] = Some(v);
    }
    held.sort_by_key(|&i| infos[i].offset);
    Ok(Box::new(Body { header, config, trained_context, bufs, order: held, cursor: 0 }))
}

impl GgufStreamLoader {
    fn limits(&self) -> Limits {
        Limits { memory: self.memory_limit, context: self.context_limit, kv: self.kv_type }
    }

    /// Builds the model (and reads the tokenizer from the metadata). `E_MALFORMED_FILE` when
    /// fewer than the declared bytes arrived. Each tensor buffer is freed right after it is
    /// converted. A malformed tokenizer in the metadata is an error here; see
    /// [`GgufStreamLoader::finish_parts`] to get the model regardless.
    pub fn finish(self) -> Result<(Phi2, Option<GgufVocab>)> {
        let (model, vocab) = self.finish_parts()?;
        Ok((model, vocab?))
    }

    /// Like [`GgufStreamLoader::finish`], with the tokenizer's own result (the model does not
    /// need it).
    pub fn finish_parts(self) -> Result<(Phi2, Result<Option<GgufVocab>>)> {
        if let Some(msg) = &self.failed {
            return Err(Error::invalid("loader", format!("this loader already failed: {msg}")));
        }
        if self.received < self.total {
            return Err(Error::malformed(
                &self.path,
                "GGUF",
                format!(
                    "truncated: {} of the declared {} bytes arrived ({} missing)",
                    self.received,
                    self.total,
                    self.total - self.received
                ),
            ));
        }
        let limits = self.limits();
        let body = match self.state {
            State::Data(body) => body,
            // Every byte arrived and the last push tried the header: only an empty file is left.
            State::Header { buf, .. } => match GgufFile::parse_header(&self.path, &buf, self.total)? {
                HeaderParse::Parsed(h) => {
                    let mut b = start_body(&self.path, self.total, limits, h)?;
                    b.write(0, &buf);
                    b
                }
                HeaderParse::NeedMore { at_least } => {
                    return Err(Error::malformed(&self.path, "GGUF", format!("truncated: {at_least} bytes needed")))
                }
            },
        };
        let Body { header, config, trained_context, bufs, .. } = *body;
        for (info, buf) in header.tensor_infos().iter().zip(&bufs) {
            if let Some(buf) = buf {
                if Some(buf.len()) != info.len {
                    return Err(Error::tensor(header.path(), &info.name, "incomplete data (internal error)"));
                }
            }
        }
        crate::model::pin_cpu_kernels();
        let device = Device::Cpu;
        let weights = {
            let src = Streamed { header: &header, bufs: RefCell::new(bufs) };
            Phi2Weights::load(&src, Layout::Gguf, &config, &device)?
        };
        let vocab = GgufVocab::read(&header);
        let own_kernels = device.is_cpu();
        let mut model = Phi2::from_parts(config, weights, "gguf", device, own_kernels)?.with_kv_type(limits.kv);
        model.info.trained_context_length = trained_context;
        Ok((model, vocab))
    }
}

fn too_large(path: &Path, file: u64, need: u64, limit: u64, detail: &str) -> Error {
    Error::ModelTooLarge {
        path: path.to_path_buf(),
        what: format!(
            "the file is {file} bytes ({:.2} GB) and the engine needs about {need} bytes ({:.2} GB) for it ({detail}), \
             more than the memory limit of {limit} bytes ({:.2} GB; wasm32 memory is 4 GiB at most). \
             Use a smaller quantization: a Q4_0 or Q4_K GGUF (phi-2 is about 1.6 GB in Q4 and fits; its Q8_0, 3.0 GB, \
             fits only with a context of at most 1536 tokens instead of 2048; F16 is 5.6 GB)",
            file as f64 / GB,
            need as f64 / GB,
            limit as f64 / GB
        ),
    }
}

/// The filled buffers as a [`TensorSource`] whose `take` hands each buffer over (once).
struct Streamed<'a> {
    header: &'a GgufFile,
    bufs: RefCell<Vec<Option<Vec<u8>>>>,
}

impl TensorSource for Streamed<'_> {
    fn path(&self) -> &Path {
        self.header.path()
    }

    /// Streamed data is only handed over by [`TensorSource::take`]; this reports what the header
    /// knows (absent, unsupported type) and otherwise that the data cannot be borrowed.
    fn tensor(&self, name: &str) -> Result<Option<TensorView<'_>>> {
        self.header.tensor(name)
    }

    fn tensor_names(&self) -> Vec<&str> {
        self.header.tensor_names()
    }

    fn take(&self, name: &str) -> Result<Option<TensorData<'_>>> {
        let Some(i) = self.header.tensor_index(name) else { return Ok(None) };
        let info = &self.header.tensor_infos()[i];
        let Some(dtype) = info.dtype else { return self.header.tensor(name).map(|_| None) };
        let buf = self.bufs.borrow_mut().get_mut(i).and_then(Option::take);
        match buf {
            Some(data) => Ok(Some(TensorData { dtype, shape: &info.shape, data: Cow::Owned(data) })),
            None => Err(Error::tensor(self.path(), name, "data already handed over or not held (internal error)")),
        }
    }
}
