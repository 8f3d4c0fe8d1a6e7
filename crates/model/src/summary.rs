//! What `runner run --dry-run` / `validate --explain` prints for the model stage: the
//! architecture, where adapters go, and PEFT's parameter line. Reads only the configuration
//! (config.json or GGUF metadata), never the weights, so it is instant even for large models.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::load::{Checkpoint, resolve};
use crate::lora::{LoraSettings, ParamCounts, select_targets};
use runner_recipe::plan::{AdapterPlan, ModelPlan};
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct ModelSummary {
    /// The folder or GGUF file `base_model` resolved to.
    pub path: PathBuf,
    pub gguf: bool,
    /// False for a folder holding only `config.json`: enough to plan (`--dry-run`), not to run.
    pub weights_present: bool,
    pub cfg: ModelConfig,
    pub settings: LoraSettings,
    /// Targeted module names, in model order.
    pub adapter_modules: Vec<String>,
    pub counts: ParamCounts,
}

/// Resolves `base_model`, reads its configuration and places the adapters on paper.
pub fn summarize(model: &ModelPlan, adapter: &AdapterPlan) -> Result<ModelSummary> {
    let rev = model.revision.as_deref();
    let (path, gguf, weights_present, cfg) = match resolve(&model.base_model, rev)? {
        Checkpoint::Gguf(f) => {
            let content = crate::gguf::read_content(&f)?;
            let cfg = crate::gguf::config_from_gguf(&f, &content)?;
            (f, true, true, cfg)
        }
        Checkpoint::Folder(d) => {
            let config = match &model.config {
                Some(c) => match resolve(c, rev)? {
                    Checkpoint::Folder(cd) => cd.join("config.json"),
                    Checkpoint::Gguf(f) => {
                        return Err(Error::Config {
                            path: f,
                            message: "base_model_config must be a folder with config.json".into(),
                        });
                    }
                },
                None => d.join("config.json"),
            };
            // A configuration-only snapshot still plans; pickle-only or broken folders do not.
            let weights_present = match crate::load::safetensors_files(&d) {
                Ok(_) => true,
                Err(Error::NoWeights { .. }) => false,
                Err(e) => return Err(e),
            };
            (d, false, weights_present, ModelConfig::from_file(&config)?)
        }
    };
    let settings = LoraSettings::from_plan(adapter)?;
    let (modules, trainable) = adapters_on_paper(&cfg, &settings)?;
    Ok(ModelSummary {
        path,
        gguf,
        weights_present,
        counts: ParamCounts {
            trainable,
            all: cfg.param_count() + trainable,
        },
        cfg,
        settings,
        adapter_modules: modules,
    })
}

/// The modules the settings target in a model of `cfg`, and their adapter parameter count.
///
/// A rank above the smaller side of a targeted layer is refused: `B·A` cannot have a higher
/// rank than `min(in, out)`, so the extra rank only costs memory (issue 17: `lora_r: 100000`
/// was accepted).
pub fn adapters_on_paper(cfg: &ModelConfig, s: &LoraSettings) -> Result<(Vec<String>, usize)> {
    let shapes = cfg.linear_shapes();
    let names: Vec<String> = shapes.iter().map(|(n, _, _)| n.clone()).collect();
    let selected = select_targets(&names, &s.targets)?;
    // A set: with many layers a list lookup per shape made this quadratic (issue 17).
    let chosen: std::collections::HashSet<&str> = selected.iter().map(String::as_str).collect();
    let targeted = || {
        shapes
            .iter()
            .filter(|(n, _, _)| chosen.contains(n.as_str()))
    };
    let smallest = targeted().min_by_key(|(_, i, o)| *i.min(o));
    if let Some((n, i, o)) = smallest
        && s.r > *i.min(o)
    {
        let pissa = matches!(s.init, runner_recipe::plan::LoraInit::Pissa { .. });
        return Err(crate::error::Error::Adapter(if pissa {
            format!(
                "peft_init_lora_weights: pissa takes the top lora_r = {} singular vectors of each \
                 target, but `{n}` is [{o}, {i}] and has only {} (lower lora_r to at most {})",
                s.r,
                i.min(o),
                i.min(o)
            )
        } else {
            format!(
                "lora_r {} is larger than the smaller side of `{n}` ([{o}, {i}]): an adapter of \
                 that layer cannot have a rank above {}, so the rest would only cost memory \
                 (lower lora_r to at most {})",
                s.r,
                i.min(o),
                i.min(o)
            )
        }));
    }
    let trainable = targeted()
        .map(|(_, i, o)| s.r * (i + o) + if s.use_dora { *o } else { 0 })
        .sum();
    Ok((selected, trainable))
}

impl std::fmt::Display for ModelSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.cfg;
        writeln!(
            f,
            "model: {} ({}) from {}",
            c.arch.hf_name(),
            if self.gguf {
                "GGUF, dequantized"
            } else {
                "safetensors"
            },
            self.path.display()
        )?;
        if !self.weights_present {
            writeln!(
                f,
                "  weights: none in {} (configuration only): enough for --dry-run, `runner run` \
                 needs them",
                self.path.display()
            )?;
        }
        writeln!(
            f,
            "  {} layers, hidden {}, {} heads / {} kv heads × {}, intermediate {}, vocab {}{}",
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.intermediate_size,
            c.vocab_size,
            if c.tie_word_embeddings {
                ", tied embeddings"
            } else {
                ""
            }
        )?;
        let mut leaves: Vec<(String, usize)> = Vec::new();
        for m in &self.adapter_modules {
            let leaf = m.rsplit('.').next().unwrap_or(m).to_string();
            match leaves.iter_mut().find(|(l, _)| *l == leaf) {
                Some((_, n)) => *n += 1,
                None => leaves.push((leaf, 1)),
            }
        }
        let s = &self.settings;
        writeln!(
            f,
            "adapter: LoRA r={} alpha={} scaling={} dropout={} on {} modules: {}",
            s.r,
            s.alpha,
            s.scaling,
            s.dropout,
            self.adapter_modules.len(),
            leaves
                .iter()
                .map(|(l, n)| format!("{l} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        write!(f, "{}", self.counts)
    }
}
