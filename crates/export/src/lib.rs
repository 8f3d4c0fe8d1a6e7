//! Export stage: PEFT adapter files, merged weights, GGUF and the run manifest.

pub mod peft;

/// Errors of the export stage.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("serializing safetensors: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
}
