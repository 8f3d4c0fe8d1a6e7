//! The pipeline's one error type: each stage's own error passed through unchanged, and the
//! pipeline's own refusals and failed file operations, with what the pipeline was doing.

use std::fmt::Display;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Data(#[from] runner_data::DataError),
    #[error(transparent)]
    Model(#[from] runner_model::Error),
    #[error(transparent)]
    Train(#[from] runner_train::TrainError),
    #[error(transparent)]
    Dist(#[from] runner_train::dist::DistError),
    #[error(transparent)]
    Export(#[from] runner_export::ExportError),
    #[error(transparent)]
    Kernels(#[from] runner_kernels::KernelError),
    #[error(transparent)]
    Io(#[from] runner_io::Error),
    #[error(transparent)]
    Hub(#[from] runner_hub::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    File(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A refusal or failed check of the pipeline's own; the message names what, where and the
    /// fix.
    #[error("{0}")]
    Refused(String),
    /// `source`, met while doing `context` (printed as "context: source" by the CLI, which
    /// walks the chain).
    #[error("{context}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// This error, met while doing `context`.
    pub fn context(self, context: impl Display) -> Error {
        Error::Context {
            context: context.to_string(),
            source: Box::new(self),
        }
    }
}

/// `.with_context(..)` on any result whose error converts into [`Error`].
pub(crate) trait Context<T> {
    fn with_context<D: Display>(self, f: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn with_context<D: Display>(self, f: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.into().context(f()))
    }
}

/// Returns a [`Error::Refused`] built like `format!`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::Refused(format!($($arg)*)))
    };
}
pub(crate) use bail;
