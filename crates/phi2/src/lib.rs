//! `phi2`: Microsoft Phi-2 (and any Phi-architecture model) on candle-core.
//!
//! - [`Phi2::load`] reads HF safetensors (single or sharded, F32/F16/BF16), the legacy `phi-msft`
//!   layout, or GGUF (F32/F16/BF16 and Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K).
//! - [`GgufStreamLoader`] builds a model from a GGUF file pushed in chunks (downloads, WASM): the
//!   header is checked as soon as it arrives, tensor data goes straight into per-tensor buffers.
//! - [`Session::generate`] prefills, decodes with a KV cache and samples with [`Sampler`];
//!   [`Session::begin`] / [`Session::step`] / [`Session::end`] do the same one token per call.
//! - Every failure is an [`Error`] with a stable code; no input makes the engine panic.

pub mod batch;
pub mod config;
pub mod convert;
pub(crate) mod detmath;
#[cfg(feature = "cuda")]
pub mod cuda_ops;
pub mod device;
pub mod dtype;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod gguf_write;
pub mod kernels;
pub mod model;
pub mod par;
pub mod params;
#[cfg(not(target_arch = "wasm32"))]
pub mod probe;
pub mod profile;
pub mod quant;
pub mod quantize;
pub mod safetensors;
pub mod sampler;
pub mod storage;
pub mod stream;
pub mod weights;

pub use batch::{Batch, BatchConfig, BatchEvent, SeqId, TokenLogprobs};
pub use config::Phi2Config;
pub use device::Backend;
pub use dtype::{DType, TensorData, TensorSource, TensorView};
pub use error::{Error, Result};
pub use generate::{FinishReason, GenerateOptions, Generation, Session};
pub use model::{BatchItem, KvCache, KvType, ModelInfo, Phi2};
pub use params::GenerationParams;
pub use sampler::{Sampler, SamplingParams};
pub use stream::GgufStreamLoader;
