//! A validating GGUF (v2 and v3) reader.
//!
//! Layout (all integers little-endian), as specified in ggml's `docs/gguf.md`:
//!
//! ```text
//! magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//! kv_count × { key: gguf string | u32 value type | value }
//! tensor_count × { name: gguf string | u32 n_dims | n_dims × u64 ne | u32 ggml type | u64 offset }
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at `offset` bytes into this data section
//! ```
//!
//! A gguf string is a u64 byte length followed by that many UTF-8 bytes. `ne` lists dimensions
//! innermost first, so a PyTorch `[out, in]` weight is stored with `ne = [in, out]`; this reader
//! reverses it to the outermost-first order of [`TensorView::shape`].
//!
//! Every count, length and offset is checked against the bytes that remain before anything is
//! allocated, so a corrupt or hostile file yields an [`Error`] naming the file, never a panic or
//! an out-of-memory abort.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::dtype::{DType, TensorSource, TensorView};
use crate::error::{Error, Result};
use crate::storage::Bytes;

const FORMAT: &str = "GGUF";
const MAGIC: [u8; 4] = *b"GGUF";
/// Data-section alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: usize = 32;
const ALIGNMENT_KEY: &str = "general.alignment";
/// GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// How many arrays may nest inside each other in one metadata value.
const MAX_ARRAY_DEPTH: usize = 4;
/// The smallest encoded key/value: u64 key length (empty key), u32 value type, 1-byte value.
const MIN_KV_BYTES: usize = 8 + 4 + 1;
/// The smallest encoded tensor info: u64 name length (empty name), u32 n_dims, one u64 ne,
/// u32 ggml type, u64 offset.
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 8 + 4 + 8;

/// One metadata value. GGUF value type ids: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32,
/// 7 bool, 8 string, 9 array, 10 u64, 11 i64, 12 f64.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The GGUF name of this value's type (`u32`, `string`, `array`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }

    /// Type and, for numbers and bools, value: `i32 -5`, `string`, `array of 3 elements`.
    fn describe(&self) -> String {
        match self {
            MetaValue::U8(v) => format!("u8 {v}"),
            MetaValue::I8(v) => format!("i8 {v}"),
            MetaValue::U16(v) => format!("u16 {v}"),
            MetaValue::I16(v) => format!("i16 {v}"),
            MetaValue::U32(v) => format!("u32 {v}"),
            MetaValue::I32(v) => format!("i32 {v}"),
            MetaValue::U64(v) => format!("u64 {v}"),
            MetaValue::I64(v) => format!("i64 {v}"),
            MetaValue::F32(v) => format!("f32 {v}"),
            MetaValue::F64(v) => format!("f64 {v}"),
            MetaValue::Bool(v) => format!("bool {v}"),
            MetaValue::String(_) => "string".to_string(),
            MetaValue::Array(a) => format!("array of {} elements", a.len()),
        }
    }

    /// Any unsigned integer, or a signed one that is not negative.
    fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits in an i64.
    fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }
}

/// One tensor's description from the tensor-info table, validated against the file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// The raw ggml type id stored in the file.
    pub ggml_type: u32,
    /// `None` when the engine does not support `ggml_type`; [`TensorSource::tensor`] then errors.
    pub dtype: Option<DType>,
    /// Outermost first (the file's `ne` reversed).
    pub shape: Vec<usize>,
    /// Absolute byte offset of the tensor's data in the file.
    pub offset: usize,
    /// Byte length of the data (`dtype.byte_len(shape)`), checked to lie inside the file;
    /// `None` when `dtype` is `None` (the size of an unknown type is unknown).
    pub len: Option<usize>,
}

/// A parsed and validated GGUF file. Tensor data stays in the (usually memory-mapped) bytes.
pub struct GgufFile {
    path: PathBuf,
    /// Shared so that weights can keep using tensor data in place after the file is dropped.
    bytes: std::sync::Arc<Bytes>,
    /// Parsed from a prefix by [`GgufFile::parse_header`]: `bytes` is empty.
    header_only: bool,
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<GgufTensorInfo>,
    by_name: HashMap<String, usize>,
    data_offset: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

/// What [`GgufFile::parse_header`] makes of a prefix.
#[derive(Debug)]
pub enum HeaderParse {
    /// The header ends beyond the prefix: at least the file's first `at_least` bytes are needed.
    NeedMore { at_least: usize },
    /// The header, complete and valid.
    Parsed(GgufFile),
}

/// The tokenizer a GGUF file carries in its `tokenizer.ggml.*` metadata (llama.cpp's layout).
#[derive(Debug, Clone, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model` ("gpt2" for Phi-2).
    pub model: String,
    /// `tokenizer.ggml.pre` ("phi-2").
    pub pre: Option<String>,
    /// One string per id (byte-level BPE form).
    pub tokens: Vec<String>,
    /// 1 normal, 3 control, 4 user-defined, 5 unused (padding).
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl GgufVocab {
    /// `Ok(None)` when the file has no token list.
    pub fn read(g: &GgufFile) -> Result<Option<GgufVocab>> {
        let strings = |key: &str| -> Result<Vec<String>> {
            Ok(g.get_str_array(key)?.unwrap_or_default().into_iter().map(String::from).collect())
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            return Ok(None);
        }
        let id = |key: &str| -> Result<Option<u32>> { Ok(g.get_uint(key)?.and_then(|v| u32::try_from(v).ok())) };
        Ok(Some(GgufVocab {
            model: g.get_str("tokenizer.ggml.model")?.unwrap_or("gpt2").to_string(),
            pre: g.get_str("tokenizer.ggml.pre")?.map(String::from),
            token_types: g
                .get_int_array("tokenizer.ggml.token_type")?
                .unwrap_or_default()
                .into_iter()
                .map(|v| v.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
                .collect(),
            merges: strings("tokenizer.ggml.merges")?,
            tokens,
            bos_token_id: id("tokenizer.ggml.bos_token_id")?,
            eos_token_id: id("tokenizer.ggml.eos_token_id")?,
        }))
    }
}

impl GgufFile {
    /// Memory-maps `path` and parses it.
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_bytes(path, Bytes::map(path)?)
    }

    /// Parses `bytes`; `path` only names the file in errors.
    pub fn from_bytes(path: &Path, bytes: Bytes) -> Result<Self> {
        let parsed = match (Parser { path, bytes: &bytes, file_len: bytes.len(), pos: 0 }.parse()) {
            Ok(p) => p,
            Err(Stop::Bad(e)) => return Err(e),
            // Unreachable (the prefix is the whole file), but never a panic.
            Err(Stop::NeedMore(n)) => {
                return Err(Error::malformed(path, FORMAT, format!("truncated: {n} bytes needed, the file has {}", bytes.len())))
            }
        };
        Ok(Self::from_parsed(path, bytes, parsed, false))
    }

    /// Parses the header (magic, version, metadata, tensor infos) from the first bytes `prefix`
    /// of a GGUF file that is `file_len` bytes long, validating every count, length and tensor
    /// range against `file_len` exactly as [`GgufFile::from_bytes`] does against the whole file.
    ///
    /// Returns [`HeaderParse::NeedMore`] when `prefix` ends before the header does (with the
    /// prefix length the parse got stuck at: retrying with fewer bytes than that is pointless),
    /// and an error as soon as the bytes present show that the header is invalid. The resulting
    /// file is header-only: metadata and tensor infos, no tensor data ([`TensorSource::tensor`]
    /// reports that the data is not held).
    pub fn parse_header(path: &Path, prefix: &[u8], file_len: usize) -> Result<HeaderParse> {
        let prefix = prefix.get(..file_len).unwrap_or(prefix);
        match (Parser { path, bytes: prefix, file_len, pos: 0 }.parse()) {
            Ok(parsed) => Ok(HeaderParse::Parsed(Self::from_parsed(path, Bytes::Owned(Vec::new()), parsed, true))),
            Err(Stop::NeedMore(n)) => Ok(HeaderParse::NeedMore { at_least: n }),
            Err(Stop::Bad(e)) => Err(e),
        }
    }

    fn from_parsed(path: &Path, bytes: Bytes, parsed: Parsed, header_only: bool) -> Self {
        GgufFile {
            path: path.to_path_buf(),
            bytes: std::sync::Arc::new(bytes),
            header_only,
            version: parsed.version,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            by_name: parsed.by_name,
            data_offset: parsed.data_offset,
        }
    }

    /// Whether this came from [`GgufFile::parse_header`] (no tensor data held).
    pub fn is_header_only(&self) -> bool {
        self.header_only
    }

    /// The tensor info named `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index(name).and_then(|i| self.tensors.get(i))
    }

    /// The position of the tensor named `name` in [`GgufFile::tensor_infos`].
    pub fn tensor_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// Every tensor, in file order.
    pub fn tensor_infos(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// Absolute byte offset of the data section (a multiple of the alignment).
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// Looks `key` up and converts it with `convert`; a value `convert` rejects is a
    /// [`Error::Config`] saying what was `expected` and what was found.
    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        convert: impl FnOnce(&'a MetaValue) -> Option<T>,
    ) -> Result<Option<T>> {
        let Some(value) = self.metadata.get(key) else { return Ok(None) };
        match convert(value) {
            Some(v) => Ok(Some(v)),
            None => Err(Error::config(&self.path, key, format!("expected {expected}, found {}", value.describe()))),
        }
    }

    /// Converts every element of the array at `key` with `convert`, naming the first element
    /// that does not convert.
    fn typed_array<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        convert: impl Fn(&'a MetaValue) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(value) = self.metadata.get(key) else { return Ok(None) };
        let MetaValue::Array(items) = value else {
            return Err(Error::config(&self.path, key, format!("expected {expected}, found {}", value.describe())));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let v = convert(item).ok_or_else(|| {
                Error::config(&self.path, key, format!("expected {expected}, found {} at index {i}", item.describe()))
            })?;
            out.push(v);
        }
        Ok(Some(out))
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", |v| match v {
            MetaValue::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// Any unsigned integer, or a signed integer that is not negative.
    pub fn get_uint(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "a non-negative integer", MetaValue::as_u64)
    }

    /// An f32, an f64 (rounded to f32) or any integer (converted to f32).
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        self.typed(key, "a number", |v| match *v {
            MetaValue::F32(x) => Some(x),
            MetaValue::F64(x) => Some(x as f32),
            _ => v.as_i64().map(|i| i as f32).or_else(|| v.as_u64().map(|u| u as f32)),
        })
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", |v| match *v {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        })
    }

    /// An array whose elements are all strings.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        self.typed_array(key, "an array of strings", |v| match v {
            MetaValue::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// An array whose elements are all integers that fit in an i64.
    pub fn get_int_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.typed_array(key, "an array of integers", MetaValue::as_i64)
    }
}

impl TensorSource for GgufFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn backing(&self, data: &[u8]) -> Option<(std::sync::Arc<Bytes>, usize)> {
        crate::storage::backing_of(&self.bytes, data)
    }

    fn tensor(&self, name: &str) -> Result<Option<TensorView<'_>>> {
        let Some(info) = self.tensor_info(name) else {
            return Ok(None);
        };
        if self.header_only {
            return Err(Error::tensor(&self.path, name, "tensor data is not held (header parsed from a prefix of the file)"));
        }
        let (Some(dtype), Some(len)) = (info.dtype, info.len) else {
            let supported: Vec<String> = DType::ALL.iter().map(|d| format!("{} ({})", d.name(), d.ggml_id())).collect();
            return Err(Error::tensor(
                &self.path,
                name,
                format!("unsupported ggml type id {} (supported: {})", info.ggml_type, supported.join(", ")),
            ));
        };
        // The range was checked against the file length while parsing; `get` keeps this
        // panic-free regardless.
        let data = info
            .offset
            .checked_add(len)
            .and_then(|end| self.bytes.get(info.offset..end))
            .ok_or_else(|| Error::tensor(&self.path, name, "data range lies outside the file"))?;
        Ok(Some(TensorView { dtype, shape: &info.shape, data }))
    }

    fn tensor_names(&self) -> Vec<&str> {
        self.tensors.iter().map(|t| t.name.as_str()).collect()
    }
}

/// What [`Parser::parse`] extracts from the bytes.
struct Parsed {
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<GgufTensorInfo>,
    by_name: HashMap<String, usize>,
    data_offset: usize,
}

/// Why [`Parser::parse`] stopped short of a header.
enum Stop {
    /// The prefix ends before the header does: the file's first `.0` bytes at least are needed.
    NeedMore(usize),
    /// The header is invalid (whatever bytes follow).
    Bad(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Bad(e)
    }
}

type PResult<T> = std::result::Result<T, Stop>;

/// A bounds-checked little-endian cursor over a prefix `bytes` of a file of `file_len` bytes
/// (the whole file when `bytes.len() == file_len`). Counts, lengths and offsets are validated
/// against `file_len`; reading past the prefix but inside the file is [`Stop::NeedMore`].
/// `pos <= bytes.len()` always holds.
struct Parser<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    file_len: usize,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, what: impl Into<String>) -> Stop {
        Stop::Bad(Error::malformed(self.path, FORMAT, what))
    }

    /// Bytes of the *file* after `pos` (the prefix held may end sooner).
    fn remaining(&self) -> usize {
        self.file_len.saturating_sub(self.pos)
    }

    /// `n` bytes at `pos` are not in the prefix: more bytes are needed when the file has them,
    /// otherwise the file is truncated.
    fn truncated(&self, n: usize, what: &str) -> Stop {
        if let Some(end) = self.pos.checked_add(n).filter(|&end| end <= self.file_len) {
            return Stop::NeedMore(end);
        }
        self.err(format!(
            "truncated: expected {n} bytes of {what} at byte offset {}, found only {} before the end of the file",
            self.pos,
            self.remaining()
        ))
    }

    /// The next `n` bytes, or a truncation error saying what they were for.
    fn take(&mut self, n: usize, what: &str) -> PResult<&'a [u8]> {
        let slice = self.pos.checked_add(n).and_then(|end| self.bytes.get(self.pos..end));
        let slice = slice.ok_or_else(|| self.truncated(n, what))?;
        self.pos += n;
        Ok(slice)
    }

    /// The next `N` bytes as an array (for `from_le_bytes`).
    fn array<const N: usize>(&mut self, what: &str) -> PResult<[u8; N]> {
        let chunk = self.bytes.get(self.pos..).and_then(|rest| rest.first_chunk::<N>());
        let chunk = *chunk.ok_or_else(|| self.truncated(N, what))?;
        self.pos += N;
        Ok(chunk)
    }

    fn u32(&mut self, what: &str) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> PResult<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Reads a u64 count of items that each occupy at least `min_item_bytes` and rejects it
    /// unless that many items fit in the rest of the file.
    fn count(&mut self, min_item_bytes: usize, what: &str) -> PResult<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let limit = self.remaining() / min_item_bytes;
        match usize::try_from(n) {
            Ok(n) if n <= limit => Ok(n),
            _ => Err(self.err(format!(
                "{what} {n} at byte offset {at} is impossible: each needs at least {min_item_bytes} bytes, \
                 and only {} bytes remain (room for at most {limit})",
                self.remaining()
            ))),
        }
    }

    /// A gguf string: u64 byte length, then that many bytes of UTF-8.
    fn string(&mut self, what: &str) -> PResult<String> {
        let at = self.pos;
        let len = self.u64(what)?;
        let len = match usize::try_from(len) {
            Ok(len) if len <= self.remaining() => len,
            _ => {
                return Err(self.err(format!(
                    "{what}: string length {len} at byte offset {at} exceeds the {} bytes left in the file",
                    self.remaining()
                )))
            }
        };
        let start = self.pos;
        let raw = self.take(len, what)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(self.err(format!("{what}: invalid UTF-8 in the string at byte offset {start}: {e}"))),
        }
    }

    fn unknown_type(&self, ty: u32, at: usize, what: &str) -> Stop {
        self.err(format!("{what}: unknown value type {ty} at byte offset {at} (expected 0..=12)"))
    }

    /// The fewest bytes a value of type `ty` occupies, or `None` for an unknown type.
    fn min_value_bytes(ty: u32) -> Option<usize> {
        Some(match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 => 8,     // u64 length of an empty string
            9 => 4 + 8, // element type and count of an empty array
            10..=12 => 8,
            _ => return None,
        })
    }

    /// One value of type `ty`; `depth` counts the arrays it is nested in.
    fn value(&mut self, ty: u32, depth: usize, what: &str) -> PResult<MetaValue> {
        let at = self.pos;
        Ok(match ty {
            0 => MetaValue::U8(u8::from_le_bytes(self.array(what)?)),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetaValue::U32(self.u32(what)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)? {
                [0] => MetaValue::Bool(false),
                [1] => MetaValue::Bool(true),
                [b] => return Err(self.err(format!("{what}: bool at byte offset {at} must be 0 or 1, found {b}"))),
            },
            8 => MetaValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(
                        self.err(format!("{what}: arrays nested more than {MAX_ARRAY_DEPTH} deep at byte offset {at}"))
                    );
                }
                let elem_at = self.pos;
                let elem_ty = self.u32(what)?;
                let min = Self::min_value_bytes(elem_ty)
                    .ok_or_else(|| self.unknown_type(elem_ty, elem_at, &format!("{what}: array element type")))?;
                let n = self.count(min, &format!("{what}: array element count"))?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_ty, depth + 1, what)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(what)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            _ => return Err(self.unknown_type(ty, at, what)),
        })
    }

    fn parse(mut self) -> PResult<Parsed> {
        if self.file_len == 0 {
            return Err(self.err("the file is empty: expected a GGUF header starting with the magic `GGUF`"));
        }
        let magic: [u8; 4] = self.array("magic")?;
        if magic != MAGIC {
            return Err(self.err(format!(
                "bad magic at byte offset 0: expected `GGUF` (47 47 55 46), found {:02x?} ({:?})",
                magic,
                String::from_utf8_lossy(&magic)
            )));
        }
        let version = self.u32("version")?;
        match version {
            2 | 3 => {}
            v if matches!(v.swap_bytes(), 2 | 3) => {
                return Err(self.err(format!(
                    "big-endian GGUF (version {} byte-swapped) is not supported; expected little-endian version 2 or 3",
                    v.swap_bytes()
                )))
            }
            v => return Err(self.err(format!("unsupported GGUF version {v} at byte offset 4 (supported: 2, 3)"))),
        }
        let tensor_count = self.count(MIN_TENSOR_INFO_BYTES, "tensor_count")?;
        let kv_count = self.count(MIN_KV_BYTES, "kv_count")?;

        let mut metadata = BTreeMap::new();
        for i in 0..kv_count {
            let key = self.string(&format!("key of metadata entry {i}"))?;
            let what = format!("metadata key `{key}`");
            let ty = self.u32(&format!("value type of {what}"))?;
            let value = self.value(ty, 0, &what)?;
            if metadata.insert(key, value).is_some() {
                return Err(self.err(format!("duplicate {what} (entry {i})")));
            }
        }
        let alignment = alignment(&metadata).map_err(|what| self.err(what))?;

        let mut tensors = Vec::with_capacity(tensor_count);
        let mut rel_offsets = Vec::with_capacity(tensor_count);
        let mut by_name = HashMap::with_capacity(tensor_count);
        for i in 0..tensor_count {
            let name = self.string(&format!("name of tensor info {i}"))?;
            let (info, rel) = self.tensor_info(name)?;
            if let Some(first) = by_name.insert(info.name.clone(), i) {
                return Err(self.err(format!("duplicate tensor name `{}` (tensor infos {first} and {i})", info.name)));
            }
            tensors.push(info);
            rel_offsets.push(rel);
        }

        // The data section starts at the first multiple of the alignment after the infos.
        let data_offset = self
            .pos
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| self.err(format!("data section offset overflows with alignment {alignment}")))?;
        for (info, rel) in tensors.iter_mut().zip(rel_offsets) {
            info.offset = self.place(info, rel, data_offset, alignment)?;
        }
        check_no_overlap(&tensors).map_err(|what| self.err(what))?;
        check_vocab_covers_embedding(&metadata, &tensors).map_err(|what| self.err(what))?;
        Ok(Parsed { version, metadata, tensors, by_name, data_offset })
    }

    /// Reads the rest of one tensor info after its name; returns it with its data-relative
    /// offset (`offset` is filled in by [`Parser::place`]).
    fn tensor_info(&mut self, name: String) -> PResult<(GgufTensorInfo, u64)> {
        let what = format!("tensor `{name}`");
        let at = self.pos;
        let n_dims = self.u32(&format!("n_dims of {what}"))?;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(self.err(format!("{what}: n_dims at byte offset {at} must be 1..={MAX_DIMS}, found {n_dims}")));
        }
        let mut ne = Vec::with_capacity(MAX_DIMS as usize);
        for d in 0..n_dims {
            let at = self.pos;
            let dim = self.u64(&format!("ne[{d}] of {what}"))?;
            // ggml stores ne as int64_t.
            match usize::try_from(dim) {
                Ok(dim) if i64::try_from(dim).is_ok() => ne.push(dim),
                _ => {
                    return Err(self.err(format!(
                        "{what}: ne[{d}] = {dim} at byte offset {at} is too large (ggml dimensions are int64)"
                    )))
                }
            }
        }
        if ne.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).is_none() {
            return Err(self.err(format!("{what}: element count of ne {ne:?} overflows")));
        }
        let ggml_type = self.u32(&format!("ggml type of {what}"))?;
        let rel = self.u64(&format!("data offset of {what}"))?;
        ne.reverse();
        let shape = ne;

        let dtype = DType::from_ggml_id(ggml_type);
        let len = match dtype {
            Some(dt) => {
                let inner = shape.last().copied().unwrap_or(1);
                if !inner.is_multiple_of(dt.block_size()) {
                    return Err(self.err(format!(
                        "{what}: innermost dimension {inner} is not a multiple of the {dt} block size {}",
                        dt.block_size()
                    )));
                }
                let len = dt
                    .byte_len(&shape)
                    .ok_or_else(|| self.err(format!("{what}: byte size of {dt} shape {shape:?} overflows")))?;
                Some(len)
            }
            None => None,
        };
        Ok((GgufTensorInfo { name, ggml_type, dtype, shape, offset: 0, len }, rel))
    }

    /// Checks a tensor's data-relative offset `rel` and returns its absolute offset.
    fn place(&self, info: &GgufTensorInfo, rel: u64, data_offset: usize, alignment: usize) -> PResult<usize> {
        let name = &info.name;
        let file_len = self.file_len;
        if !rel.is_multiple_of(alignment as u64) {
            return Err(
                self.err(format!("tensor `{name}`: data offset {rel} is not a multiple of the alignment {alignment}"))
            );
        }
        let start = usize::try_from(rel).ok().and_then(|r| data_offset.checked_add(r));
        let end = start.and_then(|s| s.checked_add(info.len.unwrap_or(0)));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => Ok(start),
            _ => Err(self.err(format!(
                "tensor `{name}`: data at offset {rel} of the data section (which starts at byte {data_offset}), {}, \
                 extends beyond the end of the file ({file_len} bytes)",
                info.len.map_or("of unknown size".to_string(), |l| format!("{l} bytes long"))
            ))),
        }
    }
}

/// `general.alignment`: an integer that is a nonzero power of two; 32 when absent.
fn alignment(metadata: &BTreeMap<String, MetaValue>) -> std::result::Result<usize, String> {
    let Some(value) = metadata.get(ALIGNMENT_KEY) else { return Ok(DEFAULT_ALIGNMENT) };
    let Some(a) = value.as_u64() else {
        return Err(format!("`{ALIGNMENT_KEY}` must be a u32, found {}", value.describe()));
    };
    match usize::try_from(a) {
        Ok(a) if a.is_power_of_two() => Ok(a),
        _ => Err(format!("`{ALIGNMENT_KEY}` must be a nonzero power of two, found {a}")),
    }
}

/// Refuses tensors whose data ranges overlap (one byte read as two tensors: a corrupt or crafted
/// file; llama.cpp's reader refuses any tensor not at its expected offset). Tensors of unknown
/// type (size unknown) and empty tensors cannot overlap anything.
fn check_no_overlap(tensors: &[GgufTensorInfo]) -> std::result::Result<(), String> {
    let mut ranges: Vec<(usize, usize, &str)> = tensors
        .iter()
        .filter_map(|t| t.len.filter(|&l| l > 0).map(|l| (t.offset, t.offset.saturating_add(l), t.name.as_str())))
        .collect();
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        let ((a0, a1, a), (b0, b1, b)) = (w[0], w[1]);
        if b0 < a1 {
            return Err(format!(
                "the data of tensors `{a}` (bytes {a0}..{a1}) and `{b}` (bytes {b0}..{b1}) overlap"
            ));
        }
    }
    Ok(())
}

/// Refuses a tokenizer that cannot decode every id the model can produce: embedding or output
/// rows beyond the `tokenizer.ggml.tokens` list (llama.cpp requires the row count to equal the
/// token count), or a `tokenizer.ggml.token_type` list of another length than the tokens (the
/// usable vocabulary is derived from it). Files without a token list are not concerned.
fn check_vocab_covers_embedding(
    metadata: &BTreeMap<String, MetaValue>,
    tensors: &[GgufTensorInfo],
) -> std::result::Result<(), String> {
    const TOKENS: &str = "tokenizer.ggml.tokens";
    const TYPES: &str = "tokenizer.ggml.token_type";
    let n_tokens = match metadata.get(TOKENS) {
        Some(MetaValue::Array(t)) if !t.is_empty() => t.len(),
        _ => return Ok(()),
    };
    if let Some(MetaValue::Array(types)) = metadata.get(TYPES) {
        if types.len() != n_tokens {
            return Err(format!("`{TYPES}` has {} entries but `{TOKENS}` has {n_tokens}: one type per token is required", types.len()));
        }
    }
    for name in ["token_embd.weight", "output.weight"] {
        let Some(rows) = tensors.iter().find(|t| t.name == name).and_then(|t| t.shape.first().copied()) else { continue };
        if rows > n_tokens {
            return Err(format!(
                "tensor `{name}` has {rows} vocabulary rows but `{TOKENS}` has only {n_tokens} tokens: \
                 the model could produce ids {n_tokens}..{rows} that the tokenizer cannot decode"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const F16_ID: u32 = 1;
    const Q8_0_ID: u32 = 8;
    const P: &str = "test.gguf";

    /// Little-endian byte writer for building test files.
    #[derive(Default)]
    struct W(Vec<u8>);

    impl W {
        fn u32(&mut self, v: u32) -> &mut Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn u64(&mut self, v: u64) -> &mut Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn bytes(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.u64(s.len() as u64).bytes(s.as_bytes())
        }
        fn header(&mut self, version: u32, tensors: u64, kvs: u64) -> &mut Self {
            self.bytes(b"GGUF").u32(version).u64(tensors).u64(kvs)
        }
        /// Type id then value. Arrays take their element type from the first element (u32 when empty).
        fn typed_value(&mut self, v: &MetaValue) -> &mut Self {
            self.u32(type_id(v));
            self.value(v)
        }
        fn value(&mut self, v: &MetaValue) -> &mut Self {
            match v {
                MetaValue::U8(x) => self.bytes(&x.to_le_bytes()),
                MetaValue::I8(x) => self.bytes(&x.to_le_bytes()),
                MetaValue::U16(x) => self.bytes(&x.to_le_bytes()),
                MetaValue::I16(x) => self.bytes(&x.to_le_bytes()),
                MetaValue::U32(x) => self.bytes(&x.to_le_bytes()),
                MetaValue::I32(x) => self.bytes(&x.to_le_bytes()),
                MetaValue::U64(x) => self.bytes(&x.to_le_bytes()),
                MetaValue::I64(x) => self.bytes(&x.to_le_bytes()),
                MetaValue::F32(x) => self.bytes(&x.to_le_bytes()),
                MetaValue::F64(x) => self.bytes(&x.to_le_bytes()),
                MetaValue::Bool(x) => self.bytes(&[u8::from(*x)]),
                MetaValue::String(s) => self.str(s),
                MetaValue::Array(items) => {
                    self.u32(items.first().map_or(4, type_id)).u64(items.len() as u64);
                    for item in items {
                        self.value(item);
                    }
                    self
                }
            }
        }
    }

    fn type_id(v: &MetaValue) -> u32 {
        crate::gguf_write::type_id(v)
    }

    struct T {
        name: &'static str,
        ne: Vec<u64>,
        ggml_type: u32,
        data: Vec<u8>,
    }

    fn t(name: &'static str, ne: &[u64], ggml_type: u32, data_len: usize, seed: u8) -> T {
        let data = (0..data_len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        T { name, ne: ne.to_vec(), ggml_type, data }
    }

    /// A complete GGUF file: tensors packed at `alignment` boundaries, no trailing padding.
    fn build(version: u32, kvs: &[(&str, MetaValue)], tensors: &[T], alignment: usize) -> Vec<u8> {
        let mut w = W::default();
        w.header(version, tensors.len() as u64, kvs.len() as u64);
        for (k, v) in kvs {
            w.str(k).typed_value(v);
        }
        let mut rel = 0usize;
        let mut placed = Vec::new();
        for t in tensors {
            rel = rel.next_multiple_of(alignment);
            w.str(t.name).u32(t.ne.len() as u32);
            for &d in &t.ne {
                w.u64(d);
            }
            w.u32(t.ggml_type).u64(rel as u64);
            placed.push(rel);
            rel += t.data.len();
        }
        let data_start = w.0.len().next_multiple_of(alignment);
        w.0.resize(data_start, 0);
        for (t, rel) in tensors.iter().zip(placed) {
            w.0.resize(data_start + rel, 0);
            w.bytes(&t.data);
        }
        w.0
    }

    fn all_value_kinds() -> Vec<(&'static str, MetaValue)> {
        vec![
            ("general.architecture", MetaValue::String("phi2".into())),
            ("t.u8", MetaValue::U8(200)),
            ("t.i8", MetaValue::I8(-100)),
            ("t.u16", MetaValue::U16(60000)),
            ("t.i16", MetaValue::I16(-30000)),
            ("t.u32", MetaValue::U32(4_000_000_000)),
            ("t.i32", MetaValue::I32(-2_000_000_000)),
            ("t.u64", MetaValue::U64(u64::MAX)),
            ("t.i64", MetaValue::I64(i64::MIN)),
            ("t.f32", MetaValue::F32(1.5e-5)),
            ("t.f64", MetaValue::F64(-2.25)),
            ("t.bool", MetaValue::Bool(true)),
            ("t.bool_false", MetaValue::Bool(false)),
            ("t.utf8", MetaValue::String("héllo ✓".into())),
            ("t.empty_str", MetaValue::String(String::new())),
            ("t.strs", MetaValue::Array(vec![MetaValue::String("a".into()), MetaValue::String("bc".into())])),
            ("t.ints", MetaValue::Array(vec![MetaValue::I32(-1), MetaValue::I32(5)])),
            ("t.empty_arr", MetaValue::Array(vec![])),
            (
                "t.nested",
                MetaValue::Array(vec![
                    MetaValue::Array(vec![MetaValue::U8(1), MetaValue::U8(2)]),
                    MetaValue::Array(vec![MetaValue::U8(3)]),
                ]),
            ),
        ]
    }

    fn sample_tensors() -> Vec<T> {
        vec![
            t("f32.weight", &[3, 2], 0, 2 * 3 * 4, 1), // PyTorch [2, 3]
            t("f16.bias", &[5], F16_ID, 5 * 2, 2),
            t("bf16.weight", &[2, 2, 2], 30, 8 * 2, 3),
            t("q8.weight", &[64, 2], Q8_0_ID, 2 * 2 * 34, 4), // two rows of two Q8_0 blocks
        ]
    }

    fn parse(bytes: Vec<u8>) -> Result<GgufFile> {
        GgufFile::from_bytes(Path::new(P), Bytes::from(bytes))
    }

    fn err_of(bytes: Vec<u8>) -> String {
        let err = parse(bytes).expect_err("expected a parse error");
        let msg = err.to_string();
        assert!(msg.contains(P), "error must name the file: {msg}");
        assert_eq!(err.code(), "E_MALFORMED_FILE", "{msg}");
        msg
    }

    fn assert_mentions(msg: &str, needles: &[&str]) {
        for n in needles {
            assert!(msg.contains(n), "expected `{n}` in: {msg}");
        }
    }

    #[test]
    fn v2_and_v3_round_trip_metadata_and_tensors() {
        for version in [2, 3] {
            let kvs = all_value_kinds();
            let tensors = sample_tensors();
            let bytes = build(version, &kvs, &tensors, DEFAULT_ALIGNMENT);
            let g = parse(bytes.clone()).unwrap();
            assert_eq!(g.version(), version);
            assert_eq!(g.metadata().len(), kvs.len());
            for (k, v) in &kvs {
                assert_eq!(g.metadata().get(*k), Some(v), "key {k}");
            }
            assert_eq!(g.tensor_names(), vec!["f32.weight", "f16.bias", "bf16.weight", "q8.weight"]);
            let expect: [(DType, &[usize]); 4] =
                [(DType::F32, &[2, 3]), (DType::F16, &[5]), (DType::BF16, &[2, 2, 2]), (DType::Q8_0, &[2, 64])];
            for ((t, (dtype, shape)), info) in tensors.iter().zip(expect).zip(g.tensor_infos()) {
                let view = g.tensor(t.name).unwrap().unwrap();
                assert_eq!(view.dtype, dtype, "{}", t.name);
                assert_eq!(view.shape, shape, "{}", t.name);
                assert_eq!(view.data, &t.data[..], "{}", t.name);
                assert_eq!(info.ggml_type, t.ggml_type);
                assert_eq!(info.len, Some(t.data.len()));
                assert_eq!(&bytes[info.offset..info.offset + t.data.len()], &t.data[..]);
                assert_eq!((info.offset - g.data_offset()) % DEFAULT_ALIGNMENT, 0);
            }
            assert_eq!(g.data_offset() % DEFAULT_ALIGNMENT, 0);
            assert!(g.tensor("absent").unwrap().is_none());
        }
    }

    #[test]
    fn open_reads_from_disk() {
        let dir = std::env::temp_dir().join(format!("phi2-gguf-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.gguf");
        std::fs::write(&path, build(3, &all_value_kinds(), &sample_tensors(), 32)).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.path(), path.as_path());
        assert_eq!(g.tensor("f16.bias").unwrap().unwrap().shape, &[5]);
        let err = GgufFile::open(&dir.join("missing.gguf")).unwrap_err();
        assert_eq!(err.code(), "E_IO");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn custom_alignment_is_honoured() {
        for align in [1u32, 8, 64, 256] {
            let kvs = [("general.alignment", MetaValue::U32(align))];
            let tensors = sample_tensors();
            let g = parse(build(3, &kvs, &tensors, align as usize)).unwrap();
            assert_eq!(g.data_offset() % align as usize, 0);
            for t in &tensors {
                assert_eq!(g.tensor(t.name).unwrap().unwrap().data, &t.data[..]);
            }
        }
        // Default alignment: the data section starts at the next multiple of 32.
        let small = build(3, &[], &[t("x", &[1], 0, 4, 0)], 32);
        let g = parse(small).unwrap();
        assert_eq!(g.data_offset(), 64); // header 24 + info (8+1+4+8+4+8 = 33) = 57 -> 64
    }

    #[test]
    fn offset_misaligned_for_default_alignment_is_rejected() {
        // Packed at 16-byte boundaries: valid with alignment 16, misaligned under the default 32.
        let tensors = [t("a", &[4], 0, 16, 0), t("b", &[4], 0, 16, 1)];
        let kvs = [("general.alignment", MetaValue::U32(16))];
        assert!(parse(build(3, &kvs, &tensors, 16)).is_ok());
        let msg = err_of(build(3, &[], &tensors, 16));
        assert_mentions(&msg, &["tensor `b`", "offset 16", "alignment 32"]);
    }

    #[test]
    fn bad_alignment_values_are_rejected() {
        for (value, needle) in [
            (MetaValue::U32(0), "found 0"),
            (MetaValue::U32(24), "found 24"),
            (MetaValue::U32(33), "found 33"),
            (MetaValue::I32(-32), "i32 -32"),
            (MetaValue::String("32".into()), "string"),
        ] {
            let msg = err_of(build(3, &[("general.alignment", value)], &[], 32));
            assert_mentions(&msg, &["general.alignment", needle]);
        }
    }

    #[test]
    fn empty_file_and_bad_magic_and_versions() {
        assert_mentions(&err_of(vec![]), &["empty"]);
        let mut bytes = build(3, &[], &[], 32);
        bytes[..4].copy_from_slice(b"GGML");
        assert_mentions(&err_of(bytes), &["magic", "GGML"]);
        for v in [0u32, 1, 4, 1000] {
            let msg = err_of(build(v, &[], &[], 32));
            assert_mentions(&msg, &["version", &v.to_string()]);
        }
        let msg = err_of(build(3u32.swap_bytes(), &[], &[], 32));
        assert_mentions(&msg, &["big-endian"]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = build(3, &all_value_kinds(), &sample_tensors(), 32);
        for len in 0..bytes.len() {
            assert!(parse(bytes[..len].to_vec()).is_err(), "prefix of {len} bytes parsed");
        }
        assert!(parse(bytes).is_ok());
    }

    #[test]
    fn absurd_counts_are_rejected_before_allocating() {
        // tensor_count
        let mut w = W::default();
        w.header(3, u64::MAX, 0);
        assert_mentions(&err_of(w.0), &["tensor_count", &u64::MAX.to_string()]);
        // just too large: 64 bytes follow the header, room for two 32-byte infos at most
        let mut w = W::default();
        w.header(3, 3, 0).bytes(&[0; 64]);
        assert_mentions(&err_of(w.0), &["tensor_count 3", "at most 2"]);

        // kv_count
        let mut w = W::default();
        w.header(3, 0, u64::MAX);
        assert_mentions(&err_of(w.0), &["kv_count", &u64::MAX.to_string()]);
        let mut w = W::default();
        w.header(3, 0, 2).str("k").typed_value(&MetaValue::U8(1)); // 14 bytes: room for one kv
        assert_mentions(&err_of(w.0), &["kv_count 2", "at most 1"]);

        // string length: key, then value
        let mut w = W::default();
        w.header(3, 0, 1).u64(u64::MAX).bytes(&[0; 16]);
        assert_mentions(&err_of(w.0), &["key of metadata entry 0", "string length"]);
        let mut w = W::default();
        w.header(3, 0, 1).str("k").u32(8).u64(5).bytes(b"abcd");
        assert_mentions(&err_of(w.0), &["metadata key `k`", "string length 5", "4 bytes left"]);

        // array count
        let mut w = W::default();
        w.header(3, 0, 1).str("arr").u32(9).u32(4).u64(u64::MAX).bytes(&[0; 8]);
        assert_mentions(&err_of(w.0), &["metadata key `arr`", "array element count"]);
        let mut w = W::default();
        w.header(3, 0, 1).str("arr").u32(9).u32(4).u64(3).bytes(&[0; 8]); // room for two u32s
        assert_mentions(&err_of(w.0), &["metadata key `arr`", "array element count 3", "at most 2"]);
        let mut w = W::default();
        w.header(3, 0, 1).str("arr").u32(9).u32(8).u64(2).str("only-one");
        assert_mentions(&err_of(w.0), &["metadata key `arr`"]);
    }

    #[test]
    fn bad_n_dims_and_dimensions() {
        for n_dims in [0u32, 5] {
            let mut w = W::default();
            w.header(3, 1, 0).str("w").u32(n_dims).bytes(&[0; 64]);
            assert_mentions(&err_of(w.0), &["tensor `w`", "n_dims", &format!("found {n_dims}")]);
        }
        // Product of dimensions overflows usize.
        let mut w = W::default();
        w.header(3, 1, 0).str("w").u32(2).u64(1 << 40).u64(1 << 40).u32(0).u64(0);
        assert_mentions(&err_of(w.0), &["tensor `w`", "overflows"]);
        // Element count fits, byte size does not.
        let big = (usize::MAX / 2 + 1) as u64;
        let mut w = W::default();
        w.header(3, 1, 0).str("w").u32(1).u64(big.min(i64::MAX as u64)).u32(0).u64(0);
        assert_mentions(&err_of(w.0), &["tensor `w`", "overflows"]);
        // A dimension beyond i64::MAX.
        let mut w = W::default();
        w.header(3, 1, 0).str("w").u32(1).u64(u64::MAX).u32(0).u64(0);
        assert_mentions(&err_of(w.0), &["tensor `w`", "ne[0]"]);
        // Quantized innermost dimension not a whole number of blocks.
        let msg = err_of(build(3, &[], &[t("q", &[33], Q8_0_ID, 34, 0)], 32));
        assert_mentions(&msg, &["tensor `q`", "block size 32"]);
    }

    #[test]
    fn tensor_data_beyond_end_of_file() {
        let mut bytes = build(3, &[], &[t("w", &[8], 0, 32, 0)], 32);
        bytes.truncate(bytes.len() - 1);
        assert_mentions(&err_of(bytes), &["tensor `w`", "beyond the end of the file"]);
        // A huge offset must not overflow.
        let mut w = W::default();
        w.header(3, 1, 0).str("w").u32(1).u64(1).u32(0).u64(u64::MAX - 31);
        assert_mentions(&err_of(w.0), &["tensor `w`", "beyond the end"]);
    }

    #[test]
    fn invalid_utf8_unknown_types_and_duplicates() {
        let mut w = W::default();
        w.header(3, 0, 1).u64(2).bytes(&[0xff, 0xfe]).u32(4).u32(1);
        assert_mentions(&err_of(w.0), &["key of metadata entry 0", "UTF-8"]);
        let mut w = W::default();
        w.header(3, 0, 1).str("name").u32(8).u64(1).bytes(&[0x80]);
        assert_mentions(&err_of(w.0), &["metadata key `name`", "UTF-8"]);

        let mut w = W::default();
        w.header(3, 0, 1).str("weird").u32(13).u32(0);
        assert_mentions(&err_of(w.0), &["metadata key `weird`", "unknown value type 13"]);
        let mut w = W::default();
        w.header(3, 0, 1).str("weird_arr").u32(9).u32(99).u64(0);
        assert_mentions(&err_of(w.0), &["weird_arr", "unknown value type 99"]);
        let mut w = W::default();
        w.header(3, 0, 1).str("b").u32(7).bytes(&[2]);
        assert_mentions(&err_of(w.0), &["metadata key `b`", "0 or 1", "found 2"]);

        let kvs = [("k", MetaValue::U8(1)), ("k", MetaValue::U8(2))];
        assert_mentions(&err_of(build(3, &kvs, &[], 32)), &["duplicate", "`k`"]);
        let tensors = [t("w", &[1], 0, 4, 0), t("w", &[1], 0, 4, 1)];
        assert_mentions(&err_of(build(3, &[], &tensors, 32)), &["duplicate tensor name `w`"]);
    }

    #[test]
    fn array_nesting_is_limited() {
        let mut v = MetaValue::U8(7);
        for _ in 0..MAX_ARRAY_DEPTH {
            v = MetaValue::Array(vec![v]);
        }
        let g = parse(build(3, &[("deep", v.clone())], &[], 32)).unwrap();
        assert_eq!(g.metadata().get("deep"), Some(&v));
        let too_deep = MetaValue::Array(vec![v]);
        assert_mentions(&err_of(build(3, &[("deep", too_deep)], &[], 32)), &["`deep`", "nested"]);
    }

    #[test]
    fn unknown_ggml_type_parses_but_tensor_errors() {
        let tensors = [t("odd", &[4], 99, 16, 0), t("q2k", &[256], 10, 84, 0), t("ok", &[1], 0, 4, 5)];
        let g = parse(build(3, &[], &tensors, 32)).unwrap();
        let info = &g.tensor_infos()[0];
        assert_eq!((info.ggml_type, info.dtype, info.len), (99, None, None));
        let err = g.tensor("odd").unwrap_err();
        assert_eq!(err.code(), "E_BAD_TENSOR");
        assert_mentions(&err.to_string(), &[P, "`odd`", "unsupported ggml type id 99", "f32 (0)", "q6_K (14)"]);
        assert_mentions(&g.tensor("q2k").unwrap_err().to_string(), &["unsupported ggml type id 10"]);
        assert_eq!(g.tensor("ok").unwrap().unwrap().data, &tensors[2].data[..]);
    }

    #[test]
    fn typed_getters_convert_and_report_mismatches() {
        let g = parse(build(3, &all_value_kinds(), &[], 32)).unwrap();
        assert_eq!(g.get_str("general.architecture").unwrap(), Some("phi2"));
        assert_eq!(g.get_str("missing").unwrap(), None);
        assert_eq!(g.get_uint("t.u8").unwrap(), Some(200));
        assert_eq!(g.get_uint("t.u64").unwrap(), Some(u64::MAX));
        assert_eq!(g.get_f32("t.f32").unwrap(), Some(1.5e-5));
        assert_eq!(g.get_f32("t.f64").unwrap(), Some(-2.25));
        assert_eq!(g.get_f32("t.i32").unwrap(), Some(-2_000_000_000.0));
        assert_eq!(g.get_f32("t.u64").unwrap(), Some(u64::MAX as f32));
        assert_eq!(g.get_bool("t.bool").unwrap(), Some(true));
        assert_eq!(g.get_str_array("t.strs").unwrap(), Some(vec!["a", "bc"]));
        assert_eq!(g.get_str_array("t.empty_arr").unwrap(), Some(vec![]));
        assert_eq!(g.get_int_array("t.ints").unwrap(), Some(vec![-1, 5]));

        let cases: [(Result<()>, &str, &str); 7] = [
            (g.get_str("t.u32").map(drop), "t.u32", "expected a string, found u32 4000000000"),
            (g.get_uint("t.i8").map(drop), "t.i8", "expected a non-negative integer, found i8 -100"),
            (g.get_uint("t.f32").map(drop), "t.f32", "found f32"),
            (g.get_f32("t.utf8").map(drop), "t.utf8", "expected a number, found string"),
            (g.get_bool("t.u8").map(drop), "t.u8", "expected a bool, found u8 200"),
            (g.get_str_array("t.ints").map(drop), "t.ints", "found i32 -1 at index 0"),
            (g.get_int_array("t.nested").map(drop), "t.nested", "found array of 2 elements at index 0"),
        ];
        for (result, key, needle) in cases {
            let err = result.unwrap_err();
            assert_eq!(err.code(), "E_BAD_CONFIG");
            assert_mentions(&err.to_string(), &[P, key, needle]);
        }
        let err = g.get_int_array("t.u64").unwrap_err();
        assert_mentions(&err.to_string(), &["t.u64", "expected an array of integers"]);
    }

    #[test]
    fn reads_files_written_by_candle() {
        use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
        use candle_core::{Device, Tensor};

        let w = Tensor::arange(0f32, 512.0, &Device::Cpu).unwrap().affine(0.01, -2.0).unwrap();
        let w = w.reshape((2, 256)).unwrap();
        let kinds = [(GgmlDType::F32, DType::F32), (GgmlDType::F16, DType::F16), (GgmlDType::Q8_0, DType::Q8_0)];
        let kinds = kinds.into_iter().chain([(GgmlDType::Q4_0, DType::Q4_0), (GgmlDType::Q4K, DType::Q4K)]);
        let qtensors: Vec<(String, QTensor, DType)> =
            kinds.map(|(g, d)| (format!("w.{d}"), QTensor::quantize(&w, g).unwrap(), d)).collect();
        let tokens = gguf_file::Value::Array(vec![gguf_file::Value::String("a".into()); 3]);
        let meta = [
            ("general.architecture", gguf_file::Value::String("phi2".into())),
            ("phi2.block_count", gguf_file::Value::U32(2)),
            ("phi2.attention.layer_norm_epsilon", gguf_file::Value::F32(1e-5)),
            ("tokenizer.ggml.tokens", tokens),
        ];
        let meta_refs: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
        let tensor_refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(n, q, _)| (n.as_str(), q)).collect();
        let mut out = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut out, &meta_refs, &tensor_refs).unwrap();
        let bytes = out.into_inner();

        let candle = gguf_file::Content::read(&mut std::io::Cursor::new(&bytes)).unwrap();
        let g = parse(bytes).unwrap();
        assert_eq!(g.version(), 2);
        assert_eq!(g.data_offset() as u64, candle.tensor_data_offset);
        assert_eq!(g.get_str("general.architecture").unwrap(), Some("phi2"));
        assert_eq!(g.get_uint("phi2.block_count").unwrap(), Some(2));
        assert_eq!(g.get_f32("phi2.attention.layer_norm_epsilon").unwrap(), Some(1e-5));
        assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap(), Some(vec!["a"; 3]));
        for (name, q, dtype) in &qtensors {
            let view = g.tensor(name).unwrap().unwrap();
            assert_eq!((view.dtype, view.shape), (*dtype, &[2usize, 256][..]), "{name}");
            assert_eq!(view.data, &q.data().unwrap()[..], "{name}");
            let info = g.tensor_infos().iter().find(|t| &t.name == name).unwrap();
            assert_eq!(info.offset as u64, candle.tensor_data_offset + candle.tensor_infos[name].offset);
        }
    }

    #[test]
    fn header_parses_from_a_prefix_checked_against_the_declared_length() {
        let bytes = build(3, &all_value_kinds(), &sample_tensors(), 32);
        let full = parse(bytes.clone()).unwrap();
        let path = Path::new(P);
        let mut first_parsed = None;
        for n in 0..=bytes.len() {
            match GgufFile::parse_header(path, &bytes[..n], bytes.len()).unwrap() {
                HeaderParse::NeedMore { at_least } => {
                    assert!(first_parsed.is_none(), "prefix {n}: NeedMore after a parse");
                    assert!(at_least > n && at_least <= bytes.len(), "prefix {n}: at_least {at_least}");
                }
                HeaderParse::Parsed(h) => {
                    first_parsed.get_or_insert(n);
                    assert!(h.is_header_only());
                    assert_eq!((h.metadata(), h.tensor_infos(), h.data_offset()), (full.metadata(), full.tensor_infos(), full.data_offset()));
                    let name = &full.tensor_infos()[0].name;
                    assert_mentions(&h.tensor(name).unwrap_err().to_string(), &["not held"]);
                }
            }
        }
        // The header is complete before the data section starts.
        assert!(first_parsed.unwrap() <= full.data_offset());

        // Tensor ranges are checked against the declared length, not the prefix.
        let header_end = full.data_offset();
        let err = GgufFile::parse_header(path, &bytes[..header_end], bytes.len() - 1).unwrap_err();
        assert_mentions(&err.to_string(), &["beyond the end of the file"]);
        // Counts too: a kv_count that the declared length cannot hold fails from 24 bytes.
        let mut w = W::default();
        w.header(3, 0, 1_000_000);
        let err = GgufFile::parse_header(path, &w.0, 1000).unwrap_err();
        assert_mentions(&err.to_string(), &["kv_count 1000000"]);
        // A prefix longer than the declared length is cut to it.
        assert!(GgufFile::parse_header(path, &bytes, 10).is_err());
    }

    #[test]
    fn fuzzed_files_never_panic() {
        let seeds = [
            build(3, &all_value_kinds(), &sample_tensors(), 32),
            build(2, &[("general.alignment", MetaValue::U32(16))], &sample_tensors(), 16),
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            state >> 33
        };
        let (mut parsed, mut rejected) = (0, 0);
        for iter in 0..4000 {
            let mut bytes = seeds[iter % seeds.len()].clone();
            for _ in 0..1 + next() % 4 {
                let i = next() as usize % bytes.len();
                bytes[i] = match next() % 4 {
                    0 => bytes[i] ^ (1 << (next() % 8)),
                    1 => 0xff,
                    2 => 0,
                    _ => next() as u8,
                };
            }
            if next() % 8 == 0 {
                bytes.truncate(next() as usize % bytes.len());
            }
            let outcome = std::panic::catch_unwind(|| {
                let Ok(g) = parse(bytes.clone()) else { return false };
                for name in g.tensor_names() {
                    let _ = g.tensor(name);
                }
                for key in g.metadata().keys() {
                    let _ = (g.get_str(key), g.get_uint(key), g.get_f32(key), g.get_bool(key));
                    let _ = (g.get_str_array(key), g.get_int_array(key));
                }
                true
            });
            match outcome {
                Ok(true) => parsed += 1,
                Ok(false) => rejected += 1,
                Err(_) => panic!("iteration {iter} panicked on input {bytes:02x?}"),
            }
        }
        // Both outcomes must occur, or the mutations are not exercising the parser.
        assert!(parsed > 100 && rejected > 100, "parsed {parsed}, rejected {rejected}");
    }

    /// A file whose tensors sit at the given data-relative offsets (f32, `ne` elements each).
    fn placed(kvs: &[(&str, MetaValue)], tensors: &[(&str, &[u64], u64)]) -> Vec<u8> {
        let mut w = W::default();
        w.header(3, tensors.len() as u64, kvs.len() as u64);
        for (k, v) in kvs {
            w.str(k).typed_value(v);
        }
        let mut end = 0u64;
        for (name, ne, rel) in tensors {
            w.str(name).u32(ne.len() as u32);
            for &d in ne.iter() {
                w.u64(d);
            }
            w.u32(0).u64(*rel);
            end = end.max(rel + 4 * ne.iter().product::<u64>());
        }
        let start = w.0.len().next_multiple_of(32);
        w.0.resize(start + end as usize, 7);
        w.0
    }

    #[test]
    fn overlapping_tensor_data_is_refused() {
        // 16 f32 each (64 bytes): b starts inside a.
        let msg = err_of(placed(&[], &[("a", &[16], 0), ("b", &[16], 32)]));
        assert_mentions(&msg, &["`a`", "`b`", "overlap"]);
        // The same range twice, listed in any order.
        let msg = err_of(placed(&[], &[("late", &[8], 64), ("x", &[16], 0), ("y", &[8], 0)]));
        assert_mentions(&msg, &["`x`", "`y`", "overlap"]);
        // One range inside another.
        assert_mentions(&err_of(placed(&[], &[("big", &[64], 0), ("inner", &[8], 96)])), &["`big`", "`inner`"]);
        // Adjacent and gapped tensors are fine; so is the streamed header parse of the same file.
        let ok = placed(&[], &[("a", &[16], 0), ("b", &[16], 64), ("c", &[8], 256)]);
        assert!(parse(ok.clone()).is_ok());
        assert!(matches!(GgufFile::parse_header(Path::new(P), &ok, ok.len()), Ok(HeaderParse::Parsed(_))));
        let bad = placed(&[], &[("a", &[16], 0), ("b", &[16], 32)]);
        let err = GgufFile::parse_header(Path::new(P), &bad, bad.len()).unwrap_err();
        assert_mentions(&err.to_string(), &["overlap"]);
    }

    #[test]
    fn vocabulary_must_cover_the_embedding_rows() {
        let tokens = |n: usize| ("tokenizer.ggml.tokens", MetaValue::Array(vec![MetaValue::String("t".into()); n]));
        let types = |n: usize| ("tokenizer.ggml.token_type", MetaValue::Array(vec![MetaValue::I32(1); n]));
        // token_embd [rows = 6, hidden = 2]: ne = [2, 6].
        let embd: (&str, &[u64], u64) = ("token_embd.weight", &[2, 6], 0);
        let output: (&str, &[u64], u64) = ("output.weight", &[2, 8], 64);
        assert!(parse(placed(&[tokens(6), types(6)], &[embd])).is_ok());
        // More tokens than rows: every id the model produces decodes.
        assert!(parse(placed(&[tokens(9)], &[embd])).is_ok());
        let msg = err_of(placed(&[tokens(5), types(5)], &[embd]));
        assert_mentions(&msg, &["`token_embd.weight`", "6 vocabulary rows", "`tokenizer.ggml.tokens`", "only 5 tokens", "5..6"]);
        let msg = err_of(placed(&[tokens(6)], &[embd, output]));
        assert_mentions(&msg, &["`output.weight`", "8 vocabulary rows", "only 6 tokens"]);
        let msg = err_of(placed(&[tokens(6), types(7)], &[embd]));
        assert_mentions(&msg, &["`tokenizer.ggml.token_type` has 7 entries", "`tokenizer.ggml.tokens` has 6"]);
        // No token list (the SDK brings its own tokenizer), or an empty one: not checked here.
        assert!(parse(placed(&[], &[embd])).is_ok());
        assert!(parse(placed(&[tokens(0)], &[embd])).is_ok());
    }
}
