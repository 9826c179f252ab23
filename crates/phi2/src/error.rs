//! One error type for the whole engine. Every variant names what was wrong and where
//! (file, tensor or key), and carries a stable machine-readable [`Error::code`] that the
//! Node and WASM bindings hand to JavaScript unchanged.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused to open, read or map a file.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// A model file's container (GGUF header, safetensors header, index.json, ...) is invalid.
    #[error("{}: malformed {format} file: {what}", path.display())]
    Malformed { path: PathBuf, format: &'static str, what: String },

    /// A tensor exists but its dtype, shape or byte range is not what the model needs.
    #[error("{}: tensor `{tensor}`: {what}", path.display())]
    Tensor { path: PathBuf, tensor: String, what: String },

    /// A tensor the architecture needs is absent.
    #[error("{}: missing tensor `{name}` (looked for {looked_for})", path.display())]
    MissingTensor { path: PathBuf, name: String, looked_for: String },

    /// A configuration value (config.json key or GGUF metadata key) is missing or invalid.
    #[error("{}: config `{key}`: {what}", path.display())]
    Config { path: PathBuf, key: String, what: String },

    /// A caller-supplied argument (sampling option, token id, prompt length, ...) is invalid.
    #[error("invalid argument `{name}`: {what}")]
    InvalidArgument { name: &'static str, what: String },

    /// The model (or the engine's memory for it) cannot fit in the memory available, e.g. wasm32's
    /// 4 GiB address space.
    #[error("{}: model too large: {what}", path.display())]
    ModelTooLarge { path: PathBuf, what: String },

    /// An allocation the caller asked for was refused (reported instead of aborting).
    #[error("out of memory: {what}")]
    OutOfMemory { what: String },

    /// The object is already doing something that must finish first (e.g. a step-wise generation).
    #[error("busy: {what}")]
    Busy { what: String },

    /// The caller cancelled a long operation (e.g. a conversion) before it completed.
    #[error("cancelled: {what}")]
    Cancelled { what: String },

    /// The backend asked for (e.g. CUDA) is not in this build or not usable on this machine.
    #[error("backend `{backend}` unavailable: {why}")]
    BackendUnavailable { backend: &'static str, why: String },

    /// The computation backend (candle) failed. This is an internal error, never bad input.
    #[error("backend error: {0}")]
    Backend(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A stable code for bindings: never changes meaning once published.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Io { .. } => "E_IO",
            Error::Malformed { .. } => "E_MALFORMED_FILE",
            Error::Tensor { .. } => "E_BAD_TENSOR",
            Error::MissingTensor { .. } => "E_MISSING_TENSOR",
            Error::Config { .. } => "E_BAD_CONFIG",
            Error::InvalidArgument { .. } => "E_INVALID_ARGUMENT",
            Error::ModelTooLarge { .. } => "E_MODEL_TOO_LARGE",
            Error::OutOfMemory { .. } => "E_OUT_OF_MEMORY",
            Error::Busy { .. } => "E_BUSY",
            Error::Cancelled { .. } => "E_CANCELLED",
            Error::BackendUnavailable { .. } => "E_BACKEND_UNAVAILABLE",
            Error::Backend(_) => "E_BACKEND",
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn malformed(path: &Path, format: &'static str, what: impl Into<String>) -> Self {
        Error::Malformed { path: path.to_path_buf(), format, what: what.into() }
    }

    pub(crate) fn tensor(path: &Path, tensor: &str, what: impl Into<String>) -> Self {
        Error::Tensor { path: path.to_path_buf(), tensor: tensor.to_string(), what: what.into() }
    }

    pub(crate) fn config(path: &Path, key: &str, what: impl Into<String>) -> Self {
        Error::Config { path: path.to_path_buf(), key: key.to_string(), what: what.into() }
    }

    pub(crate) fn invalid(name: &'static str, what: impl Into<String>) -> Self {
        Error::InvalidArgument { name, what: what.into() }
    }
}
