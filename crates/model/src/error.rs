//! The model stage's error type: every variant names the file, tensor or module at fault.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: invalid config.json: {message}")]
    Config { path: PathBuf, message: String },

    #[error(
        "{path}: architecture `{found}` is not supported; supported architectures: {}",
        supported.join(", ")
    )]
    UnsupportedArchitecture {
        path: PathBuf,
        found: String,
        supported: Vec<&'static str>,
    },

    #[error("{path}: `{key}: {value}` is not supported ({hint})")]
    UnsupportedConfig {
        path: PathBuf,
        key: String,
        value: String,
        hint: String,
    },

    #[error(
        "{path} holds only pickle checkpoints ({files}); runner never unpickles (a pickle can run \
         arbitrary code). Convert it to safetensors first, e.g. in Python: \
         `AutoModelForCausalLM.from_pretrained(path).save_pretrained(out, safe_serialization=True)`"
    )]
    PickleOnly { path: PathBuf, files: String },

    #[error(
        "{path}: no weights found (expected model.safetensors, model.safetensors.index.json or a .gguf file)"
    )]
    NoWeights { path: PathBuf },

    #[error("{path}: cannot read safetensors: {message}")]
    Safetensors { path: PathBuf, message: String },

    #[error("{path}: cannot read GGUF: {message}")]
    Gguf { path: PathBuf, message: String },

    #[error("{source_name}: {message}")]
    Weights {
        source_name: String,
        message: String,
    },

    #[error("{source_name}: missing tensor `{name}`")]
    MissingTensor { source_name: String, name: String },

    #[error(
        "{source_name}: {} tensor(s) that the config's model has no place for, e.g. {} \
         (does config.json describe this checkpoint? check num_hidden_layers and the architecture)",
        names.len(),
        names.iter().take(3).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    )]
    UnexpectedTensors {
        source_name: String,
        names: Vec<String>,
    },

    #[error("{source_name}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        source_name: String,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error(
        "`{base_model}` is not a local path and is not in the Hugging Face cache (looked in {}). \
         `runner run` and `runner fetch RECIPE` download it; or `huggingface-cli download {base_model}`, \
         or set HF_HUB_CACHE / HF_HOME to where it is",
        looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotCached {
        base_model: String,
        looked: Vec<PathBuf>,
    },

    #[error("unknown built-in model `{name}`; built-in models: {}", known.join(", "))]
    UnknownBuiltin {
        name: String,
        known: Vec<&'static str>,
    },

    #[error("lora target module `{target}` matches no linear layer of the model{hint}")]
    TargetNotFound { target: String, hint: String },

    #[error("lora target regex `{pattern}` is invalid: {message}")]
    BadTargetRegex { pattern: String, message: String },

    /// An `adapter_config.json` that is invalid or asks for something not implemented.
    #[error("{path}: {message}")]
    AdapterConfig { path: PathBuf, message: String },

    #[error("adapter: {0}")]
    Adapter(String),

    #[error("batch: {0}")]
    Batch(String),

    #[error("tensor op failed in {context}: {source}")]
    Candle {
        context: String,
        #[source]
        source: candle_core::Error,
    },
}

impl From<candle_core::Error> for Error {
    fn from(source: candle_core::Error) -> Self {
        Error::Candle {
            context: "model".to_string(),
            source,
        }
    }
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
