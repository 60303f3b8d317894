//! Typed errors. Every error reaches the user as one line that names what failed
//! (a file, a tensor, a config field).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `config.json` field is missing or invalid.
    #[error("config {path}: field `{field}`: {msg}")]
    Config { path: PathBuf, field: String, msg: String },

    /// A `config.json` that cannot be read or is not a JSON object.
    #[error("config {path}: {msg}")]
    ConfigFile { path: PathBuf, msg: String },

    /// A checkpoint file is missing, truncated or malformed.
    #[error("checkpoint file {path}: {msg} (the download may be incomplete)")]
    CheckpointFile { path: PathBuf, msg: String },

    /// A tensor is missing or has the wrong dtype or shape.
    #[error("checkpoint tensor `{name}`: {msg} (the download may be incomplete)")]
    CheckpointTensor { name: String, msg: String },

    #[error("{context}: {source}")]
    Io { context: String, #[source] source: std::io::Error },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A file the converter writes (or re-reads to verify) is wrong or cannot be written.
    #[error("output {path}: {msg}")]
    OutputFile { path: PathBuf, msg: String },

    /// A converted tensor does not match its source within the target format's error bound.
    #[error("verify {path}: tensor `{name}`: {msg}")]
    Verify { path: PathBuf, name: String, msg: String },

    /// `--quantization` names a format other than the one the checkpoint holds.
    #[error("--quantization {flag} but {dir} holds {found} ({declared}){hint}")]
    QuantizationMismatch { flag: String, dir: PathBuf, found: String, declared: String, hint: String },

    /// A kernel that exists only as architecture-specific code (an sm_90a cubin) was asked of a
    /// stream that does not load that code.
    #[error("kernel `{kernel}` needs the {targets} cubin on a GPU of that architecture (this stream: {stream})")]
    KernelUnavailable { kernel: &'static str, targets: String, stream: String },

    /// A device backend (CUDA, HIP) call failed.
    #[error("{backend}: {msg}")]
    Backend { backend: &'static str, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}
