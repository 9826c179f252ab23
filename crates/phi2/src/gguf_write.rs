//! A streaming GGUF v3 writer: the header (metadata and tensor infos, with every tensor's offset
//! computed from its dtype and shape) is written first, then each tensor's data is pushed in any
//! number of pieces, in header order, so a converter never holds more than the piece it is writing.
//!
//! Layout as [`crate::gguf`] reads it: `GGUF`, u32 version 3, u64 tensor count, u64 kv count;
//! key/values; tensor infos (name, u32 n_dims, u64 ne[] innermost first, u32 ggml type, u64 offset
//! relative to the data section); zero padding to `general.alignment` (32); the data, each tensor
//! at a multiple of the alignment, zero padding between.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gguf::MetaValue;

/// The data alignment written (GGUF's default, so no `general.alignment` key is needed).
pub const ALIGNMENT: usize = 32;

/// One tensor to be written: name, dtype and shape (outermost first, PyTorch order).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorPlan {
    /// Bytes of data (`None` when the shape does not fit the dtype's blocks or overflows).
    pub fn byte_len(&self) -> Option<usize> {
        self.dtype.byte_len(&self.shape)
    }
}

/// The GGUF value-type id of `v` (also used by the reader's tests to write files).
pub(crate) fn type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Encodes a value without its type id. Array elements must share one type (checked).
fn put_value(buf: &mut Vec<u8>, key: &str, v: &MetaValue) -> Result<()> {
    match v {
        MetaValue::U8(x) => buf.push(*x),
        MetaValue::I8(x) => buf.push(*x as u8),
        MetaValue::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => buf.push(*x as u8),
        MetaValue::String(s) => put_str(buf, s),
        MetaValue::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Array(items) => {
            // An empty array's element type is irrelevant; u8 like gguf-py's writer.
            let ty = items.first().map_or(0, type_id);
            if let Some(bad) = items.iter().find(|i| type_id(i) != ty) {
                return Err(Error::invalid(
                    "metadata",
                    format!("`{key}`: GGUF arrays hold one element type; found {} among {}", bad.type_name(), items[0].type_name()),
                ));
            }
            buf.extend_from_slice(&ty.to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(buf, key, item)?;
            }
        }
    }
    Ok(())
}

/// The header bytes (through the padding before the data section) and every tensor's offset
/// relative to the data section.
pub fn encode_header(metadata: &[(String, MetaValue)], tensors: &[TensorPlan]) -> Result<(Vec<u8>, Vec<u64>)> {
    let mut buf = Vec::new();
    buf.extend_from_slice(b"GGUF");
    buf.extend_from_slice(&3u32.to_le_bytes());
    buf.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    buf.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    let mut seen = std::collections::HashSet::new();
    for (key, value) in metadata {
        if !seen.insert(key.as_str()) {
            return Err(Error::invalid("metadata", format!("duplicate key `{key}`")));
        }
        put_str(&mut buf, key);
        buf.extend_from_slice(&type_id(value).to_le_bytes());
        put_value(&mut buf, key, value)?;
    }
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut next = 0usize;
    let mut names = std::collections::HashSet::new();
    for t in tensors {
        if !names.insert(t.name.as_str()) {
            return Err(Error::invalid("tensors", format!("duplicate tensor `{}`", t.name)));
        }
        let len = t.byte_len().ok_or_else(|| {
            Error::invalid("tensors", format!("`{}`: {} shape {:?} is not a whole number of blocks", t.name, t.dtype, t.shape))
        })?;
        put_str(&mut buf, &t.name);
        buf.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            buf.extend_from_slice(&(d as u64).to_le_bytes());
        }
        buf.extend_from_slice(&t.dtype.ggml_id().to_le_bytes());
        buf.extend_from_slice(&(next as u64).to_le_bytes());
        offsets.push(next as u64);
        next = (next + len).next_multiple_of(ALIGNMENT);
    }
    buf.resize(buf.len().next_multiple_of(ALIGNMENT), 0);
    Ok((buf, offsets))
}

/// Writes one GGUF file: header at construction, then tensor data via [`GgufWriter::write`] in
/// header order; [`GgufWriter::finish`] checks that every byte was written.
pub struct GgufWriter<W: Write> {
    out: W,
    path: PathBuf,
    lens: Vec<usize>,
    /// The tensor being written and how many of its bytes are in.
    current: usize,
    written: usize,
    total: u64,
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header. `path` names the file in I/O errors.
    pub fn new(mut out: W, path: &Path, metadata: &[(String, MetaValue)], tensors: &[TensorPlan]) -> Result<Self> {
        let (header, _) = encode_header(metadata, tensors)?;
        out.write_all(&header).map_err(|e| Error::io(path, e))?;
        let lens = tensors.iter().map(|t| t.byte_len().unwrap_or(0)).collect();
        Ok(GgufWriter { out, path: path.to_path_buf(), lens, current: 0, written: 0, total: header.len() as u64 })
    }

    /// How many tensors are complete.
    pub fn tensors_done(&self) -> usize {
        self.current
    }

    /// Bytes written so far (header and padding included).
    pub fn bytes_written(&self) -> u64 {
        self.total
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::io(&self.path, e)
    }

    /// Appends `data` to the current tensor, moving on (with padding) when it is complete.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let Some(&len) = self.lens.get(self.current) else {
                return Err(Error::invalid("data", format!("{} bytes beyond the last tensor", data.len())));
            };
            let n = (len - self.written).min(data.len());
            self.out.write_all(&data[..n]).map_err(|e| self.io(e))?;
            self.written += n;
            self.total += n as u64;
            data = &data[n..];
            self.complete_if_full()?;
        }
        Ok(())
    }

    fn complete_if_full(&mut self) -> Result<()> {
        while self.lens.get(self.current).is_some_and(|&len| self.written == len) {
            // Every tensor is padded to the alignment, the last one too (as ggml's writer does).
            let pad = len_pad(self.lens[self.current]);
            self.out.write_all(&[0u8; ALIGNMENT][..pad]).map_err(|e| self.io(e))?;
            self.total += pad as u64;
            self.current += 1;
            self.written = 0;
        }
        Ok(())
    }

    /// Checks that every tensor is complete and returns the sink.
    pub fn finish(mut self) -> Result<W> {
        self.complete_if_full()?;
        if self.current < self.lens.len() {
            return Err(Error::invalid(
                "data",
                format!("tensor {} of {} has {} of its {} bytes", self.current, self.lens.len(), self.written, self.lens[self.current]),
            ));
        }
        self.out.flush().map_err(|e| self.io(e))?;
        Ok(self.out)
    }
}

fn len_pad(len: usize) -> usize {
    len.next_multiple_of(ALIGNMENT) - len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::TensorSource;
    use crate::gguf::GgufFile;
    use crate::storage::Bytes;

    #[test]
    fn round_trips_through_the_reader_in_pieces() {
        let meta = vec![
            ("general.architecture".to_string(), MetaValue::String("phi2".into())),
            ("a.u32".to_string(), MetaValue::U32(7)),
            ("a.f32".to_string(), MetaValue::F32(1e-5)),
            ("a.bool".to_string(), MetaValue::Bool(true)),
            ("a.strs".to_string(), MetaValue::Array(vec![MetaValue::String("x".into()), MetaValue::String("yz".into())])),
            ("a.ints".to_string(), MetaValue::Array(vec![MetaValue::I32(-1), MetaValue::I32(5)])),
            ("a.empty".to_string(), MetaValue::Array(vec![])),
        ];
        let tensors = vec![
            TensorPlan { name: "w".into(), dtype: DType::F32, shape: vec![3, 5] },
            TensorPlan { name: "q".into(), dtype: DType::Q8_0, shape: vec![2, 32] },
            TensorPlan { name: "b".into(), dtype: DType::F16, shape: vec![3] },
        ];
        let data: Vec<Vec<u8>> = tensors.iter().map(|t| (0..t.byte_len().unwrap()).map(|i| (i * 7 + 1) as u8).collect()).collect();
        let mut w = GgufWriter::new(Vec::new(), Path::new("mem.gguf"), &meta, &tensors).unwrap();
        for d in &data {
            for piece in d.chunks(5) {
                w.write(piece).unwrap();
            }
        }
        let bytes = w.finish().unwrap();
        let g = GgufFile::from_bytes(Path::new("mem.gguf"), Bytes::from(bytes)).unwrap();
        assert_eq!(g.version(), 3);
        for (k, v) in &meta {
            assert_eq!(g.metadata().get(k), Some(v), "{k}");
        }
        for (t, d) in tensors.iter().zip(&data) {
            let v = g.tensor(&t.name).unwrap().unwrap();
            assert_eq!((v.dtype, v.shape, v.data), (t.dtype, &t.shape[..], &d[..]), "{}", t.name);
            assert_eq!(g.tensor_info(&t.name).unwrap().offset % ALIGNMENT, 0);
        }
    }

    #[test]
    fn refuses_short_long_and_mixed_writes() {
        let tensors = vec![TensorPlan { name: "w".into(), dtype: DType::F32, shape: vec![2] }];
        let mut w = GgufWriter::new(Vec::new(), Path::new("m"), &[], &tensors).unwrap();
        w.write(&[0; 4]).unwrap();
        assert!(w.finish().unwrap_err().to_string().contains("has 4 of its 8 bytes"));
        let mut w = GgufWriter::new(Vec::new(), Path::new("m"), &[], &tensors).unwrap();
        assert!(w.write(&[0; 9]).unwrap_err().to_string().contains("beyond the last tensor"));
        let mixed = MetaValue::Array(vec![MetaValue::U32(1), MetaValue::I32(1)]);
        assert!(encode_header(&[("k".into(), mixed)], &[]).is_err());
        let bad = vec![TensorPlan { name: "q".into(), dtype: DType::Q4_0, shape: vec![2, 33] }];
        assert!(encode_header(&[], &bad).unwrap_err().to_string().contains("whole number of blocks"));
    }
}
