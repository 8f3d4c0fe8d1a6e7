//! Dataset stage: reads the recipe's `datasets`, renders prompts and chat templates, tokenizes,
//! masks, packs and caches.

pub mod error;
pub mod gguf;
pub mod template;
pub mod tokenizer;

pub use error::{DataError, Location, Result};
pub mod cache;
pub mod chat;
pub mod formats;
pub mod pack;
pub mod prepare;
pub mod sample;
pub mod source;
pub mod testing;

pub use prepare::{PrepareOptions, Prepared, Summary, load_tokenizer, prepare, prepare_with};
pub mod inspect;
