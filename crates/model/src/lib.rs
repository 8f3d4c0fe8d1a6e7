//! Model stage: Llama-family architectures, checkpoint loading (safetensors, GGUF, hub cache)
//! and LoRA adapter injection, all differentiable on candle.

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod llama;
pub mod lora;
pub mod loss;
pub mod nn;
pub mod summary;
pub mod tiny;
pub mod weights;

pub use batch::{Batch, IGNORE_INDEX};
pub use checkpoint::backward;
pub use config::{Arch, ModelConfig, RopeScaling};
pub use error::{Error, Result};
pub use llama::CausalLm;
pub use lora::{Adapters, ParamCounts, inject};
pub mod gguf;
pub mod hub;
pub mod load;

pub use load::{LoadedModel, load, load_folder};
pub use summary::{ModelSummary, summarize};
