//! Recipes: the YAML a user writes, its validation, and the resolved [`plan::Plan`] the stages run.
//!
//! Loading goes in two stages: YAML text → a node tree that remembers line:column for every key
//! ([`yaml`]), then that tree → the typed flat recipe ([`raw::RawRecipe`], Axolotl's keys) →
//! the nested, defaults-filled [`plan::Plan`] ([`resolve`]). Every error is collected with its
//! recipe path and position ([`diag`]); nothing stops at the first one.

pub mod classify;
pub mod diag;
pub mod explain;
pub mod keys;
pub mod plan;
pub mod raw;
pub mod resolve;
pub mod schema;
pub mod validate;
pub mod yaml;

pub use diag::{Diagnostic, Sources};
pub use plan::Plan;
pub use validate::{LoadError, Loaded, load_bytes, load_path, load_str};

/// The runner version recorded in plans, caches and manifests.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
