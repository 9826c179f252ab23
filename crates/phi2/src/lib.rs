//! `phi2`: Microsoft Phi-2 (and any Phi-architecture model) on candle-core.

pub mod dtype;
pub mod error;
pub mod gguf;
pub mod safetensors;
pub mod sampler;

pub use dtype::{DType, TensorSource, TensorView};
pub use error::{Error, Result};
