//! Shared I/O for every stage, in one leaf crate (it depends on no other workspace crate):
//!
//! - [`atomic`]: the one way runner writes files and folders — a temporary name beside the
//!   final one, synced, then renamed — so a crash never leaves half a file under a final name.
//! - [`gguf`]: the metadata key/values of a GGUF file (its tensors are not read).
//! - [`hash`]: blake3 content hashes of files, remembered by (path, size, mtime) so that large
//!   model files are hashed once, not on every start.
//! - [`interrupt`]: the process's stop request (SIGINT/SIGTERM) and whether the running stage
//!   can honour it at a safe point.
//! - [`fault`]: the fault-injection hook the crash tests use (`RUNNER_FAULT_AT`).
//! - [`names`]: the single table between llama.cpp's GGUF tensor names and Hugging Face's.
//! - [`safetensors`]: safetensors headers, read and checked without the data, and written.

pub mod atomic;
pub mod fault;
pub mod gguf;
pub mod hash;
pub mod interrupt;
pub mod names;
pub mod safetensors;

use std::path::PathBuf;

/// An I/O failure and the path it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct Error {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl Error {
    /// A closure for `map_err` that attaches `path`.
    pub fn at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
