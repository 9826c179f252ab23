//! A validating safetensors reader: one file ([`SafetensorsFile`]) or a sharded set
//! ([`SafetensorsModel`]).
//!
//! Layout (from the safetensors specification):
//!
//! ```text
//! u64 LE header length N | N bytes of UTF-8 JSON header | data section
//! ```
//!
//! The header is a JSON object mapping each tensor name to
//! `{"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}`, where the offsets are
//! relative to the start of the data section, plus an optional `"__metadata__"` object of
//! string → string. Sharded checkpoints add `model.safetensors.index.json`:
//! `{"metadata": {...}, "weight_map": {tensor name: shard file name}}`.
//!
//! Every length and offset is checked (with overflow-checked arithmetic) before use, so a
//! corrupt or hostile file yields an [`Error`] naming the file, never a panic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::dtype::{DType, TensorSource, TensorView};
use crate::error::{Error, Result};
use crate::storage::Bytes;

const FORMAT: &str = "safetensors";
const INDEX_FORMAT: &str = "safetensors index";
/// Headers larger than this are rejected outright (the reference implementation's limit).
const MAX_HEADER_LEN: usize = 100 * 1024 * 1024;
const METADATA_KEY: &str = "__metadata__";
/// The index of a sharded checkpoint, looked for inside a model directory.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The single-file checkpoint, looked for inside a model directory.
pub const SINGLE_FILE: &str = "model.safetensors";

/// A tensor's dtype string from the header.
#[derive(Debug, Clone, PartialEq)]
enum StDType {
    Supported(DType),
    /// Any other safetensors dtype (I64, U8, F64, F8_E4M3, ...): recorded, not readable.
    Unsupported(String),
}

impl StDType {
    fn parse(s: &str) -> StDType {
        match s {
            "F32" => StDType::Supported(DType::F32),
            "F16" => StDType::Supported(DType::F16),
            "BF16" => StDType::Supported(DType::BF16),
            other => StDType::Unsupported(other.to_string()),
        }
    }
}

/// One validated header entry; `begin..end` is relative to the data section.
#[derive(Debug)]
struct Entry {
    name: String,
    dtype: StDType,
    shape: Vec<usize>,
    begin: usize,
    end: usize,
}

/// One parsed and validated safetensors file. Tensor data stays in the (usually mapped) bytes.
pub struct SafetensorsFile {
    path: PathBuf,
    /// Shared so that weights can keep using tensor data in place after the file is dropped.
    bytes: std::sync::Arc<Bytes>,
    /// Byte offset of the data section: 8 + header length.
    data_start: usize,
    /// Sorted by data offset (file order), ties by name.
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

impl fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.entries.len())
            .field("data_start", &self.data_start)
            .finish()
    }
}

impl SafetensorsFile {
    /// Memory-maps `path` and parses it.
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_bytes(path, Bytes::map(path)?)
    }

    /// Parses `bytes`; `path` only names the file in errors.
    pub fn from_bytes(path: &Path, bytes: Bytes) -> Result<Self> {
        let err = |what: String| Error::malformed(path, FORMAT, what);
        let Some((len_prefix, rest)) = bytes.split_first_chunk::<8>() else {
            return Err(err(format!(
                "the file is {} bytes long, too short for the 8-byte little-endian header length",
                bytes.len()
            )));
        };
        let header_len = u64::from_le_bytes(*len_prefix);
        let cap = rest.len().min(MAX_HEADER_LEN);
        let Some((header, data)) =
            usize::try_from(header_len).ok().filter(|&n| n <= cap).and_then(|n| rest.split_at_checked(n))
        else {
            return Err(err(format!(
                "header length {header_len} (bytes 0..8) is larger than the {} bytes after it (or the {MAX_HEADER_LEN}-byte limit)",
                rest.len()
            )));
        };
        let data_start = 8 + header.len(); // <= bytes.len(), cannot overflow
        let header = std::str::from_utf8(header)
            .map_err(|e| err(format!("header (bytes 8..{data_start}) is not valid UTF-8: {e}")))?;
        let Entries(raw) = serde_json::from_str(header).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => err(format!("header is not a JSON object: {e}")),
            _ => err(format!("header (bytes 8..{data_start}) is not valid JSON: {e}")),
        })?;

        let mut seen = HashSet::with_capacity(raw.len());
        let mut entries = Vec::with_capacity(raw.len());
        let mut metadata = BTreeMap::new();
        for (name, value) in raw {
            if !seen.insert(name.clone()) {
                return Err(err(format!("duplicate key `{name}` in the header")));
            }
            if name == METADATA_KEY {
                metadata = parse_metadata(&value).map_err(err)?;
            } else {
                entries.push(parse_entry(name, &value, data.len()).map_err(err)?);
            }
        }
        entries.sort_by(|a, b| (a.begin, &a.name).cmp(&(b.begin, &b.name)));
        check_no_overlap(&entries).map_err(err)?;
        let by_name = entries.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect();
        Ok(SafetensorsFile { path: path.to_path_buf(), bytes: std::sync::Arc::new(bytes), data_start, entries, by_name, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header's `__metadata__` map (empty when absent).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
}

impl TensorSource for SafetensorsFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn backing(&self, data: &[u8]) -> Option<(std::sync::Arc<Bytes>, usize)> {
        crate::storage::backing_of(&self.bytes, data)
    }

    fn tensor(&self, name: &str) -> Result<Option<TensorView<'_>>> {
        let Some(entry) = self.by_name.get(name).and_then(|&i| self.entries.get(i)) else {
            return Ok(None);
        };
        let dtype = match &entry.dtype {
            StDType::Supported(dtype) => *dtype,
            StDType::Unsupported(s) => {
                let what = format!("unsupported safetensors dtype {s} (supported: F32, F16, BF16)");
                return Err(Error::tensor(&self.path, name, what));
            }
        };
        // The range was checked against the data section while parsing; `get` keeps this
        // panic-free regardless.
        let data = self
            .bytes
            .get(self.data_start..)
            .and_then(|d| d.get(entry.begin..entry.end))
            .ok_or_else(|| Error::tensor(&self.path, name, "data range lies outside the file"))?;
        Ok(Some(TensorView { dtype, shape: &entry.shape, data }))
    }

    /// In data order (the order the tensors are laid out in the file).
    fn tensor_names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }
}

/// The header's top-level object as `(key, value)` pairs in document order, keeping
/// duplicates so they can be reported (a plain map would silently keep the last one).
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(pair) = map.next_entry::<String, Value>()? {
                    out.push(pair);
                }
                Ok(Entries(out))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// A short description of a JSON value's kind for error messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `__metadata__`: an object whose values are all strings.
fn parse_metadata(value: &Value) -> std::result::Result<BTreeMap<String, String>, String> {
    let Value::Object(map) = value else {
        return Err(format!("`{METADATA_KEY}` must be an object of strings, found {}", kind(value)));
    };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            _ => Err(format!("`{METADATA_KEY}` key `{k}` must be a string, found {}", kind(v))),
        })
        .collect()
}

/// A JSON value as text for error messages, cut to a readable length.
fn snippet(v: &Value) -> String {
    const MAX: usize = 80;
    let text = v.to_string();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// A JSON number that is a non-negative integer fitting in usize.
fn as_usize(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|n| usize::try_from(n).ok())
}

/// Refuses entries whose `data_offsets` overlap (two tensors reading the same bytes), as the
/// safetensors library does. `entries` are sorted by begin; empty tensors overlap nothing.
fn check_no_overlap(entries: &[Entry]) -> std::result::Result<(), String> {
    let mut last: Option<&Entry> = None;
    for e in entries.iter().filter(|e| e.end > e.begin) {
        if let Some(prev) = last {
            if e.begin < prev.end {
                return Err(format!(
                    "tensors `{}` (data_offsets [{}, {}]) and `{}` (data_offsets [{}, {}]) overlap",
                    prev.name, prev.begin, prev.end, e.name, e.begin, e.end
                ));
            }
        }
        if last.is_none_or(|p| e.end > p.end) {
            last = Some(e);
        }
    }
    Ok(())
}

/// Validates one tensor entry against a data section of `data_len` bytes.
fn parse_entry(name: String, value: &Value, data_len: usize) -> std::result::Result<Entry, String> {
    let t = format!("tensor `{name}`");
    let Value::Object(obj) = value else {
        return Err(format!("{t}: expected an object with dtype, shape and data_offsets, found {}", kind(value)));
    };
    let field = |key: &str| obj.get(key).ok_or_else(|| format!("{t}: missing `{key}`"));

    let dtype = match field("dtype")? {
        Value::String(s) => StDType::parse(s),
        other => return Err(format!("{t}: `dtype` must be a string, found {}", kind(other))),
    };
    let shape_value = field("shape")?;
    let shape = match shape_value {
        Value::Array(dims) => dims.iter().map(as_usize).collect::<Option<Vec<usize>>>(),
        _ => None,
    };
    let Some(shape) = shape else {
        return Err(format!("{t}: `shape` must be an array of non-negative integers, found {}", snippet(shape_value)));
    };
    let offsets_value = field("data_offsets")?;
    let offsets = match offsets_value {
        Value::Array(pair) => match pair.as_slice() {
            [b, e] => as_usize(b).zip(as_usize(e)),
            _ => None,
        },
        _ => None,
    };
    let Some((begin, end)) = offsets else {
        return Err(format!(
            "{t}: `data_offsets` must be [begin, end] with non-negative integers, found {}",
            snippet(offsets_value)
        ));
    };
    if end < begin {
        return Err(format!("{t}: data_offsets [{begin}, {end}] are reversed (end < begin)"));
    }
    if end > data_len {
        return Err(format!("{t}: data_offsets [{begin}, {end}] extend beyond the data section ({data_len} bytes)"));
    }
    if let StDType::Supported(dt) = dtype {
        let expected =
            dt.byte_len(&shape).ok_or_else(|| format!("{t}: byte size of {dt} shape {shape:?} overflows"))?;
        if end - begin != expected {
            return Err(format!(
                "{t}: data_offsets [{begin}, {end}] span {} bytes, but {dt} shape {shape:?} needs {expected}",
                end - begin
            ));
        }
    }
    Ok(Entry { name, dtype, shape, begin, end })
}

/// A model's weights in safetensors form: one file, or the shards of a sharded checkpoint.
pub struct SafetensorsModel {
    path: PathBuf,
    files: Vec<SafetensorsFile>,
    /// Tensor names in order (shard by shard, each in file order), with their file index.
    order: Vec<(String, usize)>,
    by_name: HashMap<String, usize>,
}

impl fmt::Debug for SafetensorsModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsModel")
            .field("path", &self.path)
            .field("files", &self.files)
            .field("tensors", &self.order.len())
            .finish()
    }
}

impl SafetensorsModel {
    /// Opens `path`:
    /// - a `*.index.json` file: the sharded checkpoint it describes (shards beside it);
    /// - any other file: that single safetensors file;
    /// - a directory: its `model.safetensors.index.json` if present, else `model.safetensors`,
    ///   else its only `*.safetensors` file.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_file() {
            let is_index = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".index.json"));
            let dir = path.parent().unwrap_or(Path::new("."));
            return if is_index { Self::from_index(path, path, dir) } else { Self::single(path, path) };
        }
        let index = path.join(INDEX_FILE);
        if index.is_file() {
            return Self::from_index(path, &index, path);
        }
        let single = path.join(SINGLE_FILE);
        if single.is_file() {
            return Self::single(path, &single);
        }
        let mut found = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
            let file = entry.map_err(|e| Error::io(path, e))?.path();
            if file.extension().is_some_and(|e| e == "safetensors") && file.is_file() {
                found.push(file);
            }
        }
        match found.as_slice() {
            [only] => Self::single(path, only),
            _ => {
                found.sort();
                let names: Vec<String> =
                    found.iter().filter_map(|f| f.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
                Err(Error::malformed(
                    path,
                    FORMAT,
                    format!(
                        "looked for {INDEX_FILE}, {SINGLE_FILE} or exactly one *.safetensors file in this directory; \
                         found {} *.safetensors files {names:?}",
                        found.len()
                    ),
                ))
            }
        }
    }

    fn single(path: &Path, file: &Path) -> Result<Self> {
        let file = SafetensorsFile::open(file)?;
        let order: Vec<(String, usize)> = file.tensor_names().into_iter().map(|n| (n.to_string(), 0)).collect();
        let by_name = order.iter().map(|(n, i)| (n.clone(), *i)).collect();
        Ok(SafetensorsModel { path: path.to_path_buf(), files: vec![file], order, by_name })
    }

    /// Opens the shards listed by the index at `index_path`, each once, from `dir`, and
    /// checks that every shard holds the tensors the `weight_map` assigns to it.
    fn from_index(path: &Path, index_path: &Path, dir: &Path) -> Result<Self> {
        let err = |what: String| Error::malformed(index_path, INDEX_FORMAT, what);
        let bytes = Bytes::map(index_path)?;
        let index: Value = serde_json::from_slice(&bytes).map_err(|e| err(format!("not valid JSON: {e}")))?;
        let Value::Object(index) = index else {
            return Err(err(format!("expected a JSON object, found {}", kind(&index))));
        };
        let weight_map = match index.get("weight_map") {
            Some(Value::Object(m)) if !m.is_empty() => m,
            Some(other) => {
                return Err(err(format!("`weight_map` must be a non-empty object, found {}", snippet(other))))
            }
            None => return Err(err("missing `weight_map`".to_string())),
        };
        // shard file name -> tensors assigned to it; BTreeMap orders shards by name.
        let mut shards: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
        for (tensor, shard) in weight_map {
            let Value::String(shard) = shard else {
                return Err(err(format!("weight_map[`{tensor}`] must be a shard file name, found {}", kind(shard))));
            };
            if !is_plain_file_name(shard) {
                return Err(err(format!(
                    "weight_map[`{tensor}`] = `{shard}`: a shard must be a plain file name inside {} \
                     (no `..`, path separators or absolute paths)",
                    dir.display()
                )));
            }
            shards.entry(shard.as_str()).or_default().insert(tensor.as_str());
        }

        let mut files = Vec::with_capacity(shards.len());
        let mut order = Vec::with_capacity(weight_map.len());
        for (file_index, (shard, tensors)) in shards.into_iter().enumerate() {
            let shard_path = dir.join(shard);
            if !shard_path.is_file() {
                let mut listed: Vec<&str> = tensors.into_iter().collect();
                listed.sort_unstable();
                return Err(err(format!(
                    "shard `{shard}` (holding tensor `{}`) does not exist in {}",
                    listed.first().copied().unwrap_or_default(),
                    dir.display()
                )));
            }
            let file = SafetensorsFile::open(&shard_path)?;
            if let Some(missing) =
                weight_map.keys().find(|t| tensors.contains(t.as_str()) && !file.by_name.contains_key(*t))
            {
                return Err(err(format!(
                    "weight_map assigns tensor `{missing}` to shard `{shard}`, but that shard has no such tensor"
                )));
            }
            // Keep the shard's own (file) order for the tensors assigned to it.
            order.extend(
                file.entries
                    .iter()
                    .filter(|e| tensors.contains(&e.name.as_str()))
                    .map(|e| (e.name.clone(), file_index)),
            );
            files.push(file);
        }
        let by_name = order.iter().map(|(n, i)| (n.clone(), *i)).collect();
        Ok(SafetensorsModel { path: path.to_path_buf(), files, order, by_name })
    }

    /// The path that was opened (file or directory).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The files behind this model: one, or each shard once (ordered by file name).
    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }
}

/// A shard name from an index must name a file directly inside the index's directory.
fn is_plain_file_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(components.next(), Some(Component::Normal(_)))
        && components.next().is_none()
        && !name.contains(['/', '\\'])
}

impl TensorSource for SafetensorsModel {
    fn path(&self) -> &Path {
        &self.path
    }

    fn backing(&self, data: &[u8]) -> Option<(std::sync::Arc<Bytes>, usize)> {
        self.files.iter().find_map(|f| f.backing(data))
    }

    fn tensor(&self, name: &str) -> Result<Option<TensorView<'_>>> {
        match self.by_name.get(name).and_then(|&i| self.files.get(i)) {
            Some(file) => file.tensor(name),
            None => Ok(None),
        }
    }

    fn tensor_names(&self) -> Vec<&str> {
        self.order.iter().map(|(n, _)| n.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "test.safetensors";

    /// A test tensor: JSON dtype, shape, and data bytes.
    fn t(name: &str, dtype: &str, shape: &[usize], data_len: usize) -> (String, String, Vec<usize>, Vec<u8>) {
        let data = (0..data_len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(name.len() as u8)).collect();
        (name.to_string(), dtype.to_string(), shape.to_vec(), data)
    }

    /// Packs tensors back to back and writes a header describing them.
    fn build(tensors: &[(String, String, Vec<usize>, Vec<u8>)], metadata: Option<&[(&str, &str)]>) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        if let Some(md) = metadata {
            let md: serde_json::Map<String, Value> =
                md.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect();
            header.insert(METADATA_KEY.into(), Value::Object(md));
        }
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let begin = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
            );
        }
        raw(&serde_json::to_string(&header).unwrap(), &data)
    }

    /// A file with the given header text and data bytes.
    fn raw(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn parse(bytes: Vec<u8>) -> Result<SafetensorsFile> {
        SafetensorsFile::from_bytes(Path::new(P), Bytes::from(bytes))
    }

    fn err_of(bytes: Vec<u8>) -> String {
        let err = parse(bytes).expect_err("expected a parse error");
        assert_eq!(err.code(), "E_MALFORMED_FILE", "{err}");
        let msg = err.to_string();
        assert!(msg.contains(P), "error must name the file: {msg}");
        msg
    }

    fn assert_mentions(msg: &str, needles: &[&str]) {
        for n in needles {
            assert!(msg.contains(n), "expected `{n}` in: {msg}");
        }
    }

    fn sample() -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
        vec![
            t("w.f32", "F32", &[2, 3], 24),
            t("b.f16", "F16", &[5], 10),
            t("e.bf16", "BF16", &[2, 2, 1], 8),
            t("scalar", "F32", &[], 4),
            t("ids", "I64", &[3], 24),
        ]
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("phi2-st-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn valid_file_round_trips() {
        let tensors = sample();
        let f = parse(build(&tensors, Some(&[("format", "pt")]))).unwrap();
        assert_eq!(f.metadata().get("format").map(String::as_str), Some("pt"));
        assert_eq!(f.tensor_names(), vec!["w.f32", "b.f16", "e.bf16", "scalar", "ids"]);
        for (name, dtype, shape, data) in &tensors[..4] {
            let v = f.tensor(name).unwrap().unwrap();
            assert_eq!(v.dtype.name(), dtype.to_lowercase());
            assert_eq!(v.shape, &shape[..]);
            assert_eq!(v.data, &data[..]);
        }
        assert!(f.tensor("absent").unwrap().is_none());
        let err = f.tensor("ids").unwrap_err();
        assert_eq!(err.code(), "E_BAD_TENSOR");
        assert_mentions(&err.to_string(), &[P, "`ids`", "unsupported safetensors dtype I64"]);
    }

    #[test]
    fn header_length_and_json_errors() {
        assert_mentions(&err_of(vec![]), &["0 bytes", "header length"]);
        assert_mentions(&err_of(vec![1, 0, 0]), &["3 bytes"]);
        let mut bytes = build(&sample(), None);
        let too_long = bytes.len() as u64 - 7;
        bytes[..8].copy_from_slice(&too_long.to_le_bytes());
        assert_mentions(&err_of(bytes), &["header length"]);
        assert_mentions(&err_of(u64::MAX.to_le_bytes().to_vec()), &["header length 18446744073709551615"]);
        assert_mentions(&err_of(raw("{\"a\": ", &[])), &["not valid JSON"]);
        assert_mentions(&err_of(raw("", &[])), &["not valid JSON"]);
        let mut bad_utf8 = 2u64.to_le_bytes().to_vec();
        bad_utf8.extend_from_slice(&[0xff, 0xfe]);
        assert_mentions(&err_of(bad_utf8), &["UTF-8"]);
        assert_mentions(&err_of(raw("[1, 2]", &[])), &["not a JSON object"]);
        assert_mentions(&err_of(raw("\"x\"", &[])), &["not a JSON object"]);
        // Trailing spaces (allowed padding) are fine; an empty object is an empty file.
        assert!(parse(raw("{}   ", &[])).unwrap().tensor_names().is_empty());
    }

    #[test]
    fn entry_field_errors() {
        let cases: &[(&str, &[&str])] = &[
            (r#"{"w": 5}"#, &["tensor `w`", "found a number"]),
            (r#"{"w": {"shape": [1], "data_offsets": [0, 4]}}"#, &["tensor `w`", "missing `dtype`"]),
            (r#"{"w": {"dtype": "F32", "data_offsets": [0, 4]}}"#, &["tensor `w`", "missing `shape`"]),
            (r#"{"w": {"dtype": "F32", "shape": [1]}}"#, &["tensor `w`", "missing `data_offsets`"]),
            (r#"{"w": {"dtype": 1, "shape": [1], "data_offsets": [0, 4]}}"#, &["`dtype` must be a string"]),
            (r#"{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}"#, &["`shape`", "[-1]"]),
            (r#"{"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}"#, &["`shape`", "1.5"]),
            (r#"{"w": {"dtype": "F32", "shape": 4, "data_offsets": [0, 4]}}"#, &["`shape`"]),
            (r#"{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}"#, &["`data_offsets`", "[0]"]),
            (r#"{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, -4]}}"#, &["`data_offsets`"]),
            (r#"{"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}"#, &["tensor `w`", "reversed"]),
            (
                r#"{"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#,
                &["tensor `w`", "beyond the data section (4 bytes)"],
            ),
            (
                r#"{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}"#,
                &["tensor `w`", "span 4 bytes", "needs 8"],
            ),
            (
                r#"{"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}}"#,
                &["tensor `w`", "overflows"],
            ),
            (r#"{"__metadata__": {"a": 1}}"#, &["__metadata__", "`a`", "found a number"]),
            (r#"{"__metadata__": []}"#, &["__metadata__", "found an array"]),
            (
                r#"{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}"#,
                &["duplicate key `w`"],
            ),
        ];
        for (header, needles) in cases {
            assert_mentions(&err_of(raw(header, &[0; 4])), needles);
        }
        let too_long = raw(r#"{"w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 8]}}"#, &[0; 8]);
        assert_mentions(&err_of(too_long), &["tensor `w`", "span 8 bytes", "f16 shape [2] needs 4"]);
        // An unsupported dtype parses; only reading it fails.
        let f = parse(raw(r#"{"x": {"dtype": "F8_E4M3", "shape": [3], "data_offsets": [0, 3]}}"#, &[0; 4])).unwrap();
        assert_mentions(&f.tensor("x").unwrap_err().to_string(), &["`x`", "unsupported safetensors dtype F8_E4M3"]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = build(&sample(), Some(&[("format", "pt")]));
        for len in 0..bytes.len() {
            assert!(parse(bytes[..len].to_vec()).is_err(), "prefix of {len} bytes parsed");
        }
        assert!(parse(bytes).is_ok());
    }

    #[test]
    fn reads_files_written_by_candle() {
        use candle_core::{Device, Tensor};

        let dir = TempDir::new("candle");
        let base = Tensor::arange(0f32, 24.0, &Device::Cpu).unwrap().affine(0.25, -3.0).unwrap();
        let base = base.reshape((2, 3, 4)).unwrap();
        let values: Vec<f32> = base.flatten_all().unwrap().to_vec1().unwrap();
        let mut tensors = HashMap::new();
        for (name, dtype) in [
            ("a.f32", candle_core::DType::F32),
            ("b.f16", candle_core::DType::F16),
            ("c.bf16", candle_core::DType::BF16),
            ("d.i64", candle_core::DType::I64),
        ] {
            tensors.insert(name, base.to_dtype(dtype).unwrap());
        }
        let path = dir.0.join("candle.safetensors");
        candle_core::safetensors::save(&tensors, &path).unwrap();

        let f = SafetensorsFile::open(&path).unwrap();
        assert_eq!(f.tensor_names().len(), 4);
        let decode = |name: &str| -> Vec<f32> {
            let v = f.tensor(name).unwrap().unwrap();
            assert_eq!(v.shape, &[2, 3, 4], "{name}");
            match v.dtype {
                DType::F32 => v.data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
                DType::F16 => v.data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                DType::BF16 => {
                    v.data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
                }
                other => panic!("unexpected dtype {other}"),
            }
        };
        // The values are multiples of 0.25 within ±3: exact in every float type.
        for name in ["a.f32", "b.f16", "c.bf16"] {
            assert_eq!(decode(name), values, "{name}");
        }
        assert_mentions(&f.tensor("d.i64").unwrap_err().to_string(), &["unsupported safetensors dtype I64"]);
    }

    #[test]
    fn fuzzed_files_never_panic() {
        let seed = build(&sample(), Some(&[("format", "pt")]));
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            state >> 33
        };
        let (mut parsed, mut rejected) = (0, 0);
        for iter in 0..4000 {
            let mut bytes = seed.clone();
            for _ in 0..1 + next() % 4 {
                let i = next() as usize % bytes.len();
                bytes[i] = match next() % 4 {
                    0 => bytes[i] ^ (1 << (next() % 8)),
                    1 => b"0123456789[]{}\",:-"[next() as usize % 18],
                    2 => 0xff,
                    _ => next() as u8,
                };
            }
            let outcome = std::panic::catch_unwind(|| {
                let Ok(f) = parse(bytes.clone()) else { return false };
                for name in f.tensor_names() {
                    let _ = f.tensor(name);
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

    #[test]
    fn model_opens_single_file_and_directory() {
        let dir = TempDir::new("single");
        let tensors = sample();
        let file = dir.write("weights.safetensors", &build(&tensors, None));
        let m = SafetensorsModel::open(&file).unwrap();
        assert_eq!(m.tensor_names(), vec!["w.f32", "b.f16", "e.bf16", "scalar", "ids"]);
        assert_eq!(m.tensor("b.f16").unwrap().unwrap().data, &tensors[1].3[..]);
        // The only *.safetensors file in a directory.
        let m = SafetensorsModel::open(&dir.0).unwrap();
        assert_eq!(m.path(), dir.0.as_path());
        assert_eq!(m.files().len(), 1);
        // Two candidates and no model.safetensors: ambiguous.
        dir.write("other.safetensors", &build(&tensors[..1], None));
        let err = SafetensorsModel::open(&dir.0).unwrap_err().to_string();
        assert_mentions(&err, &[INDEX_FILE, SINGLE_FILE, "found 2", "other.safetensors"]);
        // model.safetensors wins.
        dir.write(SINGLE_FILE, &build(&tensors[..2], None));
        assert_eq!(SafetensorsModel::open(&dir.0).unwrap().tensor_names(), vec!["w.f32", "b.f16"]);
        // Nothing at all.
        let empty = TempDir::new("none");
        assert_mentions(&SafetensorsModel::open(&empty.0).unwrap_err().to_string(), &["found 0"]);
        assert_eq!(SafetensorsModel::open(&empty.0.join("nope")).unwrap_err().code(), "E_IO");
    }

    fn index(map: &[(&str, &str)]) -> Vec<u8> {
        let weight_map: serde_json::Map<String, Value> =
            map.iter().map(|(t, s)| (t.to_string(), Value::String(s.to_string()))).collect();
        serde_json::to_vec(&serde_json::json!({"metadata": {"total_size": 1}, "weight_map": weight_map})).unwrap()
    }

    fn two_shards(dir: &TempDir) -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
        let tensors = sample();
        dir.write("model-00001-of-00002.safetensors", &build(&tensors[..2], None));
        dir.write("model-00002-of-00002.safetensors", &build(&tensors[2..4], None));
        tensors
    }

    #[test]
    fn sharded_model_opens_each_shard_once() {
        let dir = TempDir::new("sharded");
        let tensors = two_shards(&dir);
        let idx = index(&[
            ("w.f32", "model-00001-of-00002.safetensors"),
            ("b.f16", "model-00001-of-00002.safetensors"),
            ("e.bf16", "model-00002-of-00002.safetensors"),
            ("scalar", "model-00002-of-00002.safetensors"),
        ]);
        let index_path = dir.write(INDEX_FILE, &idx);
        for m in [SafetensorsModel::open(&dir.0).unwrap(), SafetensorsModel::open(&index_path).unwrap()] {
            assert_eq!(m.files().len(), 2);
            assert_eq!(m.tensor_names(), vec!["w.f32", "b.f16", "e.bf16", "scalar"]);
            for (name, _, shape, data) in &tensors[..4] {
                let v = m.tensor(name).unwrap().unwrap();
                assert_eq!((v.shape, v.data), (&shape[..], &data[..]), "{name}");
            }
            assert!(m.tensor("ids").unwrap().is_none());
        }
    }

    #[test]
    fn sharded_model_errors() {
        let dir = TempDir::new("shard-errs");
        two_shards(&dir);
        let one = "model-00001-of-00002.safetensors";
        let cases: Vec<(Vec<u8>, Vec<&str>)> = vec![
            (index(&[("w.f32", "missing.safetensors")]), vec!["`missing.safetensors`", "does not exist", "w.f32"]),
            (index(&[("w.f32", "../x.safetensors")]), vec!["`../x.safetensors`", "plain file name"]),
            (index(&[("w.f32", "/etc/passwd")]), vec!["`/etc/passwd`", "plain file name"]),
            (index(&[("w.f32", "sub/x.safetensors")]), vec!["plain file name"]),
            (index(&[("w.f32", "..")]), vec!["plain file name"]),
            (index(&[("w.f32", "")]), vec!["plain file name"]),
            (index(&[("e.bf16", one)]), vec!["tensor `e.bf16`", one, "no such tensor"]),
            (b"{\"weight_map\": {\"w.f32\": 3}}".to_vec(), vec!["weight_map[`w.f32`]", "found a number"]),
            (b"{\"metadata\": {}}".to_vec(), vec!["missing `weight_map`"]),
            (b"{\"weight_map\": {}}".to_vec(), vec!["non-empty"]),
            (b"[]".to_vec(), vec!["expected a JSON object"]),
            (b"{".to_vec(), vec!["not valid JSON"]),
        ];
        for (idx, needles) in cases {
            dir.write(INDEX_FILE, &idx);
            let err = SafetensorsModel::open(&dir.0).unwrap_err();
            assert_eq!(err.code(), "E_MALFORMED_FILE", "{err}");
            let msg = err.to_string();
            assert_mentions(&msg, &[INDEX_FILE]);
            assert_mentions(&msg, &needles);
        }
        // A corrupt shard reports the shard itself.
        dir.write("bad.safetensors", b"\x05\0\0\0\0\0\0\0{oops");
        dir.write(INDEX_FILE, &index(&[("w.f32", "bad.safetensors")]));
        assert_mentions(
            &SafetensorsModel::open(&dir.0).unwrap_err().to_string(),
            &["bad.safetensors", "not valid JSON"],
        );
    }

    #[test]
    fn overlapping_data_offsets_are_refused() {
        let entry = |name: &str, dtype: &str, shape: &str, b: usize, e: usize| {
            format!(r#""{name}": {{"dtype": "{dtype}", "shape": {shape}, "data_offsets": [{b}, {e}]}}"#)
        };
        let file = |entries: &[String], len: usize| raw(&format!("{{{}}}", entries.join(", ")), &vec![0; len]);
        // b starts inside a.
        let msg = err_of(file(&[entry("a", "F32", "[4]", 0, 16), entry("b", "F32", "[4]", 8, 24)], 24));
        assert_mentions(&msg, &["`a`", "`b`", "[0, 16]", "[8, 24]", "overlap"]);
        // Identical ranges, and one range inside another (listed first or last).
        assert_mentions(&err_of(file(&[entry("x", "F16", "[4]", 0, 8), entry("y", "BF16", "[4]", 0, 8)], 8)), &["`x`", "`y`"]);
        let msg = err_of(file(&[entry("inner", "F32", "[1]", 4, 8), entry("outer", "F32", "[4]", 0, 16), entry("z", "F32", "[1]", 16, 20)], 20));
        assert_mentions(&msg, &["`inner`", "`outer`", "overlap"]);
        let msg = err_of(file(&[entry("big", "F32", "[8]", 0, 32), entry("mid", "F32", "[1]", 8, 12), entry("end", "F32", "[1]", 28, 32)], 32));
        assert_mentions(&msg, &["`big`", "overlap"]);
        // Adjacent, gapped and empty tensors are fine.
        assert!(parse(file(&[entry("a", "F32", "[2]", 0, 8), entry("b", "F32", "[2]", 8, 16), entry("c", "F32", "[1]", 20, 24)], 24)).is_ok());
        assert!(parse(file(&[entry("a", "F32", "[2]", 0, 8), entry("e", "F32", "[0]", 4, 4)], 8)).is_ok());
    }
}
