//! Model stage: Llama-family architectures, checkpoint loading (safetensors, GGUF, hub cache)
//! and LoRA/DoRA adapter injection, all differentiable on candle and checked against
//! transformers + PEFT. The PEFT adapter format (both directions, and the check of a saved
//! adapter against a plan) is [`peft`], used by training and export alike.
//!
//! ```no_run
//! # fn demo(plan: &runner_recipe::plan::Plan, batch: &runner_model::Batch) -> runner_model::Result<()> {
//! use candle_core::Device;
//! // What `--dry-run` prints: reads only config.json / the GGUF header.
//! println!("{}", runner_model::summarize(&plan.model, &plan.adapter)?);
//! // Load the frozen base, put adapters where PEFT would, train.
//! let mut loaded = runner_model::load(&plan.model, &Device::Cpu)?;
//! let adapters = runner_model::inject(&mut loaded.model, &plan.adapter, plan.train.seed)?;
//! loaded.model.gradient_checkpointing = plan.train.gradient_checkpointing;
//! let out = runner_model::loss::causal_lm_loss(&loaded.model, batch, true, runner_model::loss::DEFAULT_CHUNK)?;
//! let grads = runner_model::backward(&out.loss, &loaded.model)?;
//! for (peft_name, var) in &adapters.params {
//!     let _g = grads.get(var.as_tensor()); // optimizer step on `var`
//!     let _ = peft_name; // `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`
//! }
//! println!("{}", runner_model::ParamCounts::of(&loaded.model, &adapters));
//! # Ok(()) }
//! ```

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod hub;
pub mod llama;
pub mod load;
pub mod lora;
pub mod loss;
pub mod memory;
pub mod nn;
pub mod ops;
pub mod peft;
pub mod pissa;
pub mod precision;
pub mod quant;
pub mod summary;
pub mod tiny;
pub mod weights;

pub use batch::{Batch, IGNORE_INDEX};
pub use config::{Arch, ModelConfig, RopeScaling};
pub use error::{Error, Result};
pub use generate::{GenerateOptions, KvCache, Sampler, Sampling, generate};
pub use llama::{CausalLm, backward, quantize_frozen};
pub use load::{LoadedModel, inject, load, load_folder};
pub use lora::{Adapters, ParamCounts};
pub use quant::QuantSummary;
pub use summary::{ModelSummary, summarize};
