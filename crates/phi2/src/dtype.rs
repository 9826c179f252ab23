//! Weight element types the engine reads, with their ggml block geometry.
//!
//! Byte layouts follow ggml-common.h: quantized types store blocks of `block_size()` weights in
//! `type_size()` bytes (Q8_0: f16 d + i8 q[32] = 34 B; Q4_0: f16 d + u8 qs[16] = 18 B; K-quants use
//! 256-weight super-blocks: Q4_K 144 B, Q5_K 176 B, Q6_K 210 B).

use candle_core::quantized::GgmlDType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4K,
    Q5K,
    Q6K,
}

impl DType {
    pub const ALL: [DType; 11] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
    ];

    /// Weights per block (1 for plain floats).
    pub const fn block_size(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 => 32,
            DType::Q4K | DType::Q5K | DType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q5_0 => 22,
            DType::Q5_1 => 24,
            DType::Q4K => 144,
            DType::Q5K => 176,
            DType::Q6K => 210,
        }
    }

    pub const fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes needed for a row-major tensor of `shape` (outermost first), or None when the
    /// element count overflows or the innermost dimension is not a whole number of blocks.
    pub fn byte_len(self, shape: &[usize]) -> Option<usize> {
        let inner = *shape.last().unwrap_or(&1);
        if !inner.is_multiple_of(self.block_size()) {
            return None;
        }
        let elems = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
        (elems / self.block_size()).checked_mul(self.type_size())
    }

    /// The ggml type id used in GGUF tensor infos.
    pub fn from_ggml_id(id: u32) -> Option<DType> {
        Some(match id {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::Q4_0,
            3 => DType::Q4_1,
            6 => DType::Q5_0,
            7 => DType::Q5_1,
            8 => DType::Q8_0,
            12 => DType::Q4K,
            13 => DType::Q5K,
            14 => DType::Q6K,
            30 => DType::BF16,
            _ => return None,
        })
    }

    pub fn ggml_id(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q5_0 => 6,
            DType::Q5_1 => 7,
            DType::Q8_0 => 8,
            DType::Q4K => 12,
            DType::Q5K => 13,
            DType::Q6K => 14,
            DType::BF16 => 30,
        }
    }

    /// Names as ggml prints them (`q4_K`, `bf16`, ...), also accepted by [`DType::from_name`].
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q5_0 => "q5_0",
            DType::Q5_1 => "q5_1",
            DType::Q4K => "q4_K",
            DType::Q5K => "q5_K",
            DType::Q6K => "q6_K",
        }
    }

    pub fn from_name(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name().eq_ignore_ascii_case(s))
    }

    pub fn to_ggml(self) -> GgmlDType {
        match self {
            DType::F32 => GgmlDType::F32,
            DType::F16 => GgmlDType::F16,
            DType::BF16 => GgmlDType::BF16,
            DType::Q8_0 => GgmlDType::Q8_0,
            DType::Q4_0 => GgmlDType::Q4_0,
            DType::Q4_1 => GgmlDType::Q4_1,
            DType::Q5_0 => GgmlDType::Q5_0,
            DType::Q5_1 => GgmlDType::Q5_1,
            DType::Q4K => GgmlDType::Q4K,
            DType::Q5K => GgmlDType::Q5K,
            DType::Q6K => GgmlDType::Q6K,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A borrowed, validated view of one tensor in a model file: dtype, shape (outermost first,
/// PyTorch order: a `[out, in]` weight has `shape == [out, in]`) and exactly
/// `dtype.byte_len(shape)` bytes of little-endian data.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub dtype: DType,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

/// One tensor handed over by [`TensorSource::take`]: its bytes borrowed from a file (memory map)
/// or owned, so that the caller frees them as soon as it has converted them.
#[derive(Debug, Clone)]
pub struct TensorData<'a> {
    pub dtype: DType,
    pub shape: &'a [usize],
    pub data: std::borrow::Cow<'a, [u8]>,
}

impl<'a> From<TensorView<'a>> for TensorData<'a> {
    fn from(v: TensorView<'a>) -> Self {
        TensorData { dtype: v.dtype, shape: v.shape, data: std::borrow::Cow::Borrowed(v.data) }
    }
}

/// Anything that hands out named tensors: a GGUF file, one safetensors file, or a sharded set.
pub trait TensorSource {
    /// The file (or directory) errors should name.
    fn path(&self) -> &std::path::Path;
    /// `Ok(None)` when no tensor has that name; `Err` when it exists but cannot be used
    /// (e.g. an unsupported dtype), naming the file and tensor.
    fn tensor(&self, name: &str) -> crate::Result<Option<TensorView<'_>>>;
    /// Every tensor name, in file order.
    fn tensor_names(&self) -> Vec<&str>;
    /// The tensor for building weights: like [`TensorSource::tensor`], but a source that owns
    /// per-tensor buffers (the streamed GGUF loader) hands the buffer over, and a second `take`
    /// of the same name then finds nothing. Borrows from the file by default. The weight loader
    /// takes each tensor exactly once.
    fn take(&self, name: &str) -> crate::Result<Option<TensorData<'_>>> {
        Ok(self.tensor(name)?.map(TensorData::from))
    }

    /// When `data` (a slice this source handed out) lies in a memory-mapped file: that file's
    /// shared bytes and the offset of `data` in them, so weights can be used in place instead
    /// of copied. `None` for owned buffers.
    fn backing(&self, _data: &[u8]) -> Option<(std::sync::Arc<crate::storage::Bytes>, usize)> {
        None
    }
}
