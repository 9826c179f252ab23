//! The bytes behind a model file: a read-only memory map for files on disk, or an owned buffer
//! for data that is already in memory (WASM, tests, downloads).

use std::fs::File;
use std::io;
use std::ops::Deref;
use std::path::Path;

use crate::error::{Error, Result};

/// Immutable model bytes. Readers ([`crate::gguf::GgufFile`], [`crate::safetensors::SafetensorsFile`])
/// keep one of these alive and hand out tensor views that borrow from it.
pub enum Bytes {
    /// A read-only memory map of a file on disk.
    Mapped(memmap2::Mmap),
    /// Bytes owned in memory.
    Owned(Vec<u8>),
}

impl Bytes {
    /// Memory-maps the regular file at `path` read-only. An empty file becomes `Owned(vec![])`,
    /// because a zero-length mapping is an error on most platforms.
    pub fn map(path: &Path) -> Result<Bytes> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            let kind = if meta.is_dir() { "a directory" } else { "not a regular file" };
            let what = format!("expected a regular file, found {kind}");
            return Err(Error::io(path, io::Error::new(io::ErrorKind::InvalidInput, what)));
        }
        if meta.len() == 0 {
            return Ok(Bytes::Owned(Vec::new()));
        }
        // SAFETY: the map is read-only and we never hand out mutable access. Memory-mapping is
        // only sound while no one modifies or truncates the file for as long as the map lives
        // (a concurrent write would change bytes under live `&[u8]` borrows, a truncation would
        // fault on access). Model files are treated as immutable inputs: callers must not edit
        // or replace a file in place while a reader built from it is alive.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        advise_huge_pages(&mmap);
        Ok(Bytes::Mapped(mmap))
    }
}

/// Asks Linux to back the map with 2 MB pages where it can (`MADV_HUGEPAGE`; a hint, failure is
/// harmless). Decoding streams every weight once per token, and with 4 KB pages that is one TLB
/// entry and one page walk per 4 KB, and the hardware prefetchers stop at every 4 KB boundary.
/// When the file is read into the page cache through this map, the kernel then fills it with
/// 2 MB folios and maps them with one page-table entry each (the map is 2 MB aligned). Measured
/// on this project's machine, Phi-2-shaped weights, two threads (`stream_bench`): Q4_0 18.2 →
/// 25.4 GB/s, Q8_0 20.2 → 28.5 GB/s, i.e. a decode step ~30% shorter. A file whose pages are
/// already cached in small folios (e.g. just written) stays on small pages until it is evicted.
fn advise_huge_pages(map: &memmap2::Mmap) {
    #[cfg(target_os = "linux")]
    {
        let _ = map.advise(memmap2::Advice::HugePage);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = map;
}

/// `Some((file, offset))` when `data` lies inside the memory-mapped `file` (see
/// [`crate::TensorSource::backing`]).
pub fn backing_of(file: &std::sync::Arc<Bytes>, data: &[u8]) -> Option<(std::sync::Arc<Bytes>, usize)> {
    if !matches!(**file, Bytes::Mapped(_)) || data.is_empty() {
        return None;
    }
    let base = file.as_ptr() as usize;
    let start = (data.as_ptr() as usize).checked_sub(base)?;
    (start.checked_add(data.len())? <= file.len()).then(|| (file.clone(), start))
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes::Owned(v)
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Bytes::Mapped(_) => "Mapped",
            Bytes::Owned(_) => "Owned",
        };
        write!(f, "Bytes::{kind}({} bytes)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("phi2-storage-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn maps_file_contents() {
        let dir = temp_dir("map");
        let path = dir.join("a.bin");
        std::fs::write(&path, b"hello").unwrap();
        let bytes = Bytes::map(&path).unwrap();
        assert!(matches!(bytes, Bytes::Mapped(_)));
        assert_eq!(&*bytes, b"hello");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_file_is_owned_and_empty() {
        let dir = temp_dir("empty");
        let path = dir.join("empty.bin");
        std::fs::write(&path, b"").unwrap();
        let bytes = Bytes::map(&path).unwrap();
        assert!(matches!(bytes, Bytes::Owned(ref v) if v.is_empty()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_file_and_directory_are_io_errors_naming_the_path() {
        let dir = temp_dir("errs");
        let missing = dir.join("missing.bin");
        let err = Bytes::map(&missing).unwrap_err();
        assert_eq!(err.code(), "E_IO");
        assert!(err.to_string().contains("missing.bin"), "{err}");
        let err = Bytes::map(&dir).unwrap_err();
        assert_eq!(err.code(), "E_IO");
        assert!(err.to_string().contains("directory"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn owned_derefs_to_its_vec() {
        let bytes = Bytes::from(vec![1u8, 2, 3]);
        assert_eq!(&*bytes, &[1, 2, 3]);
        assert_eq!(format!("{bytes:?}"), "Bytes::Owned(3 bytes)");
    }
}
