//! Export stage: merged weights and GGUF. The PEFT adapter format itself lives in
//! `runner_model::peft` (training writes adapters too), re-exported here as [`peft`]; atomic
//! writes come from `runner_io`.

pub mod gguf;
pub mod merge;
mod st;

pub use runner_model::peft;

pub use gguf::{GgufReport, GgufTokenizer, GgufType, write_gguf};
pub use merge::{MergeReport, merge_folder};
pub use peft::{PeftConfig, read_config};

use std::path::PathBuf;

/// Errors of the export stage.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("serializing safetensors: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    /// An `adapter_config.json` that is invalid or asks for something not implemented.
    #[error("{path}: {message}")]
    AdapterConfig { path: PathBuf, message: String },
    /// A corrupt or truncated safetensors file (or index).
    #[error("{path}: {message} (the file is corrupt or truncated; re-download or re-save it)")]
    Corrupt { path: PathBuf, message: String },
    /// Adapter and base model do not fit together.
    #[error(
        "adapter tensor `{tensor}` does not match the base model: {message} \
         (was the adapter trained on a different base model?)"
    )]
    Mismatch { tensor: String, message: String },
    #[error("{path} already holds a model; choose an empty folder or pass --force to overwrite it")]
    OutputExists { path: PathBuf },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Model(#[from] runner_model::Error),
    #[error(transparent)]
    Write(#[from] runner_io::Error),
    #[error("tensor maths: {0}")]
    Candle(#[from] candle_core::Error),
}
