//! Dataset stage: reads the recipe's `datasets`, renders prompts and chat templates, tokenizes,
//! masks, packs and caches.
//!
//! The whole stage is one call:
//!
//! ```no_run
//! # fn run(plan: &runner_recipe::plan::Plan) -> runner_data::Result<()> {
//! // A .gguf file, a folder with tokenizer.json, or `builtin:<name>`.
//! let tok = runner_data::load_tokenizer(&plan.model)?;
//! // From the cache when its key matches, else prepared and cached.
//! let prepared = runner_data::prepare(&plan.data, &tok)?;
//! // `runner preprocess`:
//! println!("{}", prepared.summary);
//! // `runner inspect`:
//! print!("{}", runner_data::inspect::render(&tok, &prepared.train, Default::default()));
//! // What the engine consumes:
//! let batches = prepared.train_batches(4, tok.pad_id(), &plan.data);
//! # let _ = batches;
//! # Ok(())
//! # }
//! ```
//!
//! Modules, in pipeline order: [`source`] (files and rows), [`formats`] and [`chat`] (rows to
//! ids and labels), [`template`] (Jinja like transformers, with byte provenance),
//! [`tokenizer`] (tokenizer.json or GGUF), [`pack`] (packing and padding), [`cache`]
//! (content-addressed Arrow IPC), [`mod@prepare`] (the driver and its summary), [`inspect`].

pub mod cache;
pub mod chat;
pub mod conversation;
mod encode;
pub mod error;
pub mod formats;
/// GGUF metadata (the one reader, in `runner_io`).
pub use runner_io::gguf;
pub mod inspect;
mod jinja_fns;
pub mod pack;
pub mod prepare;
pub mod sample;
pub mod source;
pub mod template;
#[doc(hidden)]
pub mod testing;
pub mod tokenizer;

pub use error::{DataError, Location, Result};
pub use prepare::{
    PrepareOptions, Prepared, Summary, load_tokenizer, prepare, prepare_with, preprocess,
};
