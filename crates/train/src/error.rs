//! Errors of the training stage.

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("model: {0}")]
    Model(String),
    #[error("optimizer: {0}")]
    Optimizer(String),
    #[error("data parallelism: {0}")]
    Distributed(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        path: std::path::PathBuf,
        message: String,
    },
}
