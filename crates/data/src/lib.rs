//! Dataset stage: reads the recipe's `datasets`, renders prompts and chat templates, tokenizes,
//! masks, packs and caches.

pub mod error;
pub mod gguf;
pub mod template;
pub mod tokenizer;

pub use error::{DataError, Location, Result};
pub mod chat;
pub mod formats;
pub mod pack;
pub mod sample;
pub mod source;
pub mod testing;
