//! The one error type of the data stage: every variant says what went wrong and where.

use std::path::PathBuf;

/// Where in the input a problem sits: a file and, when known, a 1-based row (or line) and a field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    pub file: PathBuf,
    /// 1-based: the line in JSONL and CSV files, the record in JSON arrays, Parquet and Arrow.
    pub row: Option<u64>,
    pub field: Option<String>,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(row) = self.row {
            write!(f, ", row {row}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ", field `{field}`")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{at}: malformed JSON: {message}")]
    Json { at: Location, message: String },
    #[error("{at}: the file is not valid UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 { at: Location, offset: usize },
    #[error("{at}: missing field; the row has {present}")]
    MissingField { at: Location, present: String },
    #[error("{at}: expected {expected}, found {found}")]
    WrongType {
        at: Location,
        expected: &'static str,
        found: String,
    },
    #[error("{at}: {message}")]
    BadRow { at: Location, message: String },
    #[error("{path}: cannot read as {format}: {message}")]
    Format {
        path: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("no training samples are left:\n  {reasons}")]
    NothingToTrain { reasons: String },
    #[error("dataset `{dataset}` has no rows (looked at: {looked})")]
    EmptyDataset { dataset: String, looked: String },
    #[error("dataset `{dataset}` not found; looked at: {looked}. {hint}")]
    NotFound {
        dataset: String,
        looked: String,
        hint: String,
    },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("chat template ({template}): {message}")]
    Template { template: String, message: String },
    #[error("{at}: chat template ({template}): {message}")]
    TemplateLimit {
        at: Location,
        template: String,
        message: String,
    },
    #[error("{at}: the chat template rejected the conversation: {message}")]
    TemplateRejected { at: Location, message: String },
    #[error(
        "{at}: sample has {len} tokens, more than sequence_len {max} (excess_length_strategy: raise)"
    )]
    TooLong {
        at: Location,
        len: usize,
        max: usize,
    },
    #[error("cache {path}: {message}")]
    Cache { path: PathBuf, message: String },
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Write {
            path: path.into(),
            source,
        }
    }
}
