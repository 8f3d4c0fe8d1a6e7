//! `config.json` of a Llama-family checkpoint: parsed, checked, resolved into [`ModelConfig`].
//!
//! Real configs carry many informational fields (`torch_dtype`, `transformers_version`, ...); those
//! are ignored. Fields that change the maths and that we do not implement are errors.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The architectures we implement, as Hugging Face names them in `architectures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Arch {
    pub const SUPPORTED: [&'static str; 4] = [
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
    ];

    pub fn hf_name(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }

    fn from_hf(name: &str) -> Option<Arch> {
        match name {
            "LlamaForCausalLM" => Some(Arch::Llama),
            "MistralForCausalLM" => Some(Arch::Mistral),
            "Qwen2ForCausalLM" => Some(Arch::Qwen2),
            "Qwen3ForCausalLM" => Some(Arch::Qwen3),
            _ => None,
        }
    }

    fn from_model_type(name: &str) -> Option<Arch> {
        match name {
            "llama" => Some(Arch::Llama),
            "mistral" => Some(Arch::Mistral),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            _ => None,
        }
    }
}

/// How RoPE frequencies are scaled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum RopeScaling {
    None,
    /// `linear`: positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// `llama3`: Llama 3.1's frequency-dependent interpolation.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Per-frequency divisors (a GGUF's `rope_freqs.weight`, llama.cpp's form of `llama3`):
    /// `inv_freq[i] / factors[i]`.
    Factors(Vec<f32>),
}

/// A resolved Llama-family configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2 always; Llama/Mistral with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama `attention_bias`).
    pub o_bias: bool,
    /// Bias on the MLP projections (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// Per-head RMSNorm on q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Sliding-window attention size for each layer (None = full attention).
    pub sliding_window: Vec<Option<usize>>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

/// The raw JSON: only the fields that matter; everything else is informational.
#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default)]
    rms_norm_eps: Option<f64>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    /// transformers 5 folds `rope_theta` and `rope_scaling` into this.
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    max_window_layers: Option<usize>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    eos_token_id: Option<serde_json::Value>,
}

fn first_id(v: &Option<serde_json::Value>) -> Option<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| x as u32),
        Some(serde_json::Value::Array(a)) => a.first().and_then(|x| x.as_u64()).map(|x| x as u32),
        _ => None,
    }
}

impl ModelConfig {
    /// Reads and resolves `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io_err(path))?;
        Self::from_json_str(&text, path)
    }

    /// Parses a `config.json` text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::resolve(raw, path)
    }

    fn resolve(raw: RawConfig, path: &Path) -> Result<Self> {
        let unsupported = |key: &str, value: String, hint: &str| Error::UnsupportedConfig {
            path: path.to_path_buf(),
            key: key.to_string(),
            value,
            hint: hint.to_string(),
        };
        let arch = match (&raw.architectures, &raw.model_type) {
            (Some(archs), _) if !archs.is_empty() => {
                let name = &archs[0];
                Arch::from_hf(name).ok_or_else(|| Error::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    found: name.clone(),
                    supported: Arch::SUPPORTED.to_vec(),
                })?
            }
            (_, Some(mt)) => {
                Arch::from_model_type(mt).ok_or_else(|| Error::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    found: format!("model_type {mt}"),
                    supported: Arch::SUPPORTED.to_vec(),
                })?
            }
            _ => {
                return Err(Error::Config {
                    path: path.to_path_buf(),
                    message: "neither `architectures` nor `model_type` is set".to_string(),
                });
            }
        };
        let act = raw.hidden_act.clone().unwrap_or_else(|| "silu".to_string());
        if act != "silu" && act != "swish" {
            return Err(unsupported(
                "hidden_act",
                act,
                "only `silu` (SwiGLU) is implemented",
            ));
        }
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(Error::Config {
                path: path.to_path_buf(),
                message: format!(
                    "num_attention_heads ({heads}) must be a positive multiple of num_key_value_heads ({kv_heads})"
                ),
            });
        }
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(Error::Config {
                path: path.to_path_buf(),
                message: format!("head_dim {head_dim} must be even and positive"),
            });
        }

        check_sizes([
            ("num_hidden_layers", raw.num_hidden_layers),
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("vocab_size", raw.vocab_size),
            ("num_attention_heads", heads),
            ("head_dim", head_dim),
        ])
        .map_err(|message| Error::Config {
            path: path.to_path_buf(),
            message,
        })?;

        // RoPE: `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5).
        let mut rope_theta = raw.rope_theta;
        let mut scaling_value = raw.rope_scaling.clone();
        if let Some(serde_json::Value::Object(params)) = &raw.rope_parameters {
            if rope_theta.is_none() {
                rope_theta = params.get("rope_theta").and_then(|v| v.as_f64());
            }
            if scaling_value.is_none() {
                scaling_value = Some(serde_json::Value::Object(params.clone()));
            }
        }
        let rope_scaling = parse_rope_scaling(scaling_value.as_ref(), path)?;

        let n_layers = raw.num_hidden_layers;
        let sliding_window = match arch {
            Arch::Mistral => match &raw.layer_types {
                Some(types) => window_from_types(types, raw.sliding_window, n_layers, path)?,
                None => vec![raw.sliding_window; n_layers],
            },
            Arch::Qwen2 | Arch::Qwen3 => {
                let window = if raw.use_sliding_window.unwrap_or(false) {
                    raw.sliding_window
                } else {
                    None
                };
                match (&raw.layer_types, window) {
                    (Some(types), Some(_)) => window_from_types(types, window, n_layers, path)?,
                    _ => {
                        let from = raw.max_window_layers.unwrap_or(n_layers);
                        (0..n_layers)
                            .map(|i| if i >= from { window } else { None })
                            .collect()
                    }
                }
            }
            Arch::Llama => vec![None; n_layers],
        };
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match arch {
            Arch::Qwen2 => (true, false),
            Arch::Llama => (attention_bias, attention_bias),
            Arch::Qwen3 => (attention_bias, attention_bias),
            Arch::Mistral => (false, false),
        };
        let default_theta = match arch {
            Arch::Qwen2 | Arch::Qwen3 => 1_000_000.0,
            _ => 10_000.0,
        };
        let default_eps = match arch {
            Arch::Llama => 1e-6,
            Arch::Mistral | Arch::Qwen2 | Arch::Qwen3 => 1e-6,
        };
        Ok(ModelConfig {
            arch,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: n_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(default_eps),
            rope_theta: rope_theta.unwrap_or(default_theta),
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: arch == Arch::Llama && raw.mlp_bias.unwrap_or(false),
            qk_norm: arch == Arch::Qwen3,
            sliding_window,
            bos_token_id: first_id(&raw.bos_token_id),
            eos_token_id: first_id(&raw.eos_token_id),
        })
    }

    /// Every tensor a checkpoint of `cfg` holds, with its shape, in Hugging Face names.
    pub fn tensor_shapes(&self) -> std::collections::BTreeMap<String, Vec<usize>> {
        let cfg = self;
        let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (q, kv, d) = (
            cfg.num_attention_heads * cfg.head_dim,
            cfg.num_key_value_heads * cfg.head_dim,
            cfg.head_dim,
        );
        let mut m = std::collections::BTreeMap::new();
        m.insert("model.embed_tokens.weight".to_string(), vec![v, h]);
        m.insert("model.norm.weight".to_string(), vec![h]);
        if !cfg.tie_word_embeddings {
            m.insert("lm_head.weight".to_string(), vec![v, h]);
        }
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let mut put = |k: &str, s: Vec<usize>| m.insert(format!("{p}.{k}"), s);
            put("input_layernorm.weight", vec![h]);
            put("post_attention_layernorm.weight", vec![h]);
            put("self_attn.q_proj.weight", vec![q, h]);
            put("self_attn.k_proj.weight", vec![kv, h]);
            put("self_attn.v_proj.weight", vec![kv, h]);
            put("self_attn.o_proj.weight", vec![h, q]);
            if cfg.qkv_bias {
                put("self_attn.q_proj.bias", vec![q]);
                put("self_attn.k_proj.bias", vec![kv]);
                put("self_attn.v_proj.bias", vec![kv]);
            }
            if cfg.o_bias {
                put("self_attn.o_proj.bias", vec![h]);
            }
            if cfg.qk_norm {
                put("self_attn.q_norm.weight", vec![d]);
                put("self_attn.k_norm.weight", vec![d]);
            }
            put("mlp.gate_proj.weight", vec![i, h]);
            put("mlp.up_proj.weight", vec![i, h]);
            put("mlp.down_proj.weight", vec![h, i]);
            if cfg.mlp_bias {
                put("mlp.gate_proj.bias", vec![i]);
                put("mlp.up_proj.bias", vec![i]);
                put("mlp.down_proj.bias", vec![h]);
            }
        }
        m
    }

    /// `(module name, in, out)` of every linear layer, in module order, `lm_head` last.
    pub fn linear_shapes(&self) -> Vec<(String, usize, usize)> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let mut v = Vec::new();
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            // (in, out) in the order of `runner_io::names::PROJECTIONS`.
            let dims = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)];
            for (proj, (din, dout)) in runner_io::names::PROJECTIONS.iter().zip(dims) {
                v.push((format!("{p}.{}", proj.module), din, dout));
            }
        }
        v.push(("lm_head".to_string(), h, self.vocab_size));
        v
    }

    /// Base parameters, tied embeddings counted once (what `model.parameters()` counts).
    pub fn param_count(&self) -> usize {
        self.tensor_shapes()
            .values()
            .map(|s| s.iter().product::<usize>())
            .sum()
    }

    /// Number of query heads per key/value head.
    pub fn gqa_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// The `config.json` transformers would read for this configuration.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let rope_scaling = match &self.rope_scaling {
            RopeScaling::None | RopeScaling::Factors(_) => serde_json::Value::Null,
            RopeScaling::Linear { factor } => {
                serde_json::json!({"rope_type": "linear", "factor": factor})
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => serde_json::json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": *original_max_position_embeddings as u64,
            }),
        };
        let window = self.sliding_window.iter().flatten().next().copied();
        let rope_scaling = match &self.rope_scaling {
            // No config.json form: transformers derives these from `llama3` parameters.
            RopeScaling::Factors(_) => serde_json::Value::Null,
            _ => rope_scaling,
        };
        let mut v = serde_json::json!({
            "architectures": [self.arch.hf_name()],
            "model_type": self.arch.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": self.qkv_bias,
            "mlp_bias": self.mlp_bias,
            "sliding_window": window,
            "torch_dtype": "float32",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        });
        if let (Some(obj), true) = (v.as_object_mut(), window.is_some()) {
            obj.insert("use_sliding_window".into(), serde_json::Value::Bool(true));
            let types: Vec<&str> = self
                .sliding_window
                .iter()
                .map(|w| match w {
                    Some(_) => "sliding_attention",
                    None => "full_attention",
                })
                .collect();
            obj.insert("layer_types".into(), serde_json::json!(types));
        }
        v
    }
}

fn window_from_types(
    types: &[String],
    window: Option<usize>,
    n_layers: usize,
    path: &Path,
) -> Result<Vec<Option<usize>>> {
    if types.len() != n_layers {
        return Err(Error::Config {
            path: path.to_path_buf(),
            message: format!(
                "layer_types has {} entries, num_hidden_layers is {n_layers}",
                types.len()
            ),
        });
    }
    types
        .iter()
        .map(|t| match t.as_str() {
            "full_attention" => Ok(None),
            "sliding_attention" => Ok(window),
            other => Err(Error::UnsupportedConfig {
                path: path.to_path_buf(),
                key: "layer_types".into(),
                value: other.into(),
                hint: "expected full_attention or sliding_attention".into(),
            }),
        })
        .collect()
}

fn parse_rope_scaling(v: Option<&serde_json::Value>, path: &Path) -> Result<RopeScaling> {
    let Some(serde_json::Value::Object(m)) = v else {
        return Ok(RopeScaling::None);
    };
    let kind = m
        .get("rope_type")
        .or_else(|| m.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |key: &str| -> Result<f64> {
        m.get(key)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| Error::Config {
                path: path.to_path_buf(),
                message: format!("rope_scaling of type `{kind}` needs a numeric `{key}`"),
            })
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        other => Err(Error::UnsupportedConfig {
            path: path.to_path_buf(),
            key: "rope_scaling.rope_type".into(),
            value: other.into(),
            hint: "implemented: default, linear, llama3".into(),
        }),
    }
}

/// Sizes past these are no model that exists (the largest public ones have ~130 layers,
/// hidden 16384, vocab 256k): refusing them keeps planning and loading bounded (issue 17:
/// `num_hidden_layers: 1000000` once took time quadratic in the layer count in `--dry-run`).
pub(crate) fn check_sizes(sizes: [(&str, usize); 6]) -> std::result::Result<(), String> {
    const MAX: [(&str, usize); 6] = [
        ("num_hidden_layers", 4096),
        ("hidden_size", 1 << 17),
        ("intermediate_size", 1 << 19),
        ("vocab_size", 1 << 23),
        ("num_attention_heads", 4096),
        ("head_dim", 4096),
    ];
    for (key, value) in sizes {
        let max = MAX
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(usize::MAX, |m| m.1);
        if value == 0 || value > max {
            return Err(format!(
                "{key} is {value}; runner accepts 1 to {max} (no real model is larger): check the \
                 configuration"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ModelConfig> {
        ModelConfig::from_json_str(s, Path::new("config.json"))
    }

    const BASE: &str = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 2, "num_attention_heads": 2"#;

    #[test]
    fn issue_17_group_6_absurd_sizes_are_refused_at_once() {
        let started = std::time::Instant::now();
        let e = parse(
            r#"{"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 1000000, "num_attention_heads": 2}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("num_hidden_layers is 1000000; runner accepts 1 to 4096"),
            "{e}"
        );
        assert!(started.elapsed().as_secs_f64() < 1.0);
        let e = parse(
            r#"{"model_type": "llama", "vocab_size": 0, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("vocab_size is 0"), "{e}");
    }

    #[test]
    fn unsupported_architecture_lists_supported() {
        let e = parse(&format!(
            r#"{{"architectures": ["GPT2LMHeadModel"], {BASE}}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("GPT2LMHeadModel") && e.contains("Qwen3ForCausalLM"),
            "{e}"
        );
    }

    #[test]
    fn unsupported_act_and_rope() {
        let e = parse(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], "hidden_act": "gelu", {BASE}}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("hidden_act") && e.contains("gelu"), "{e}");
        let e = parse(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], "rope_scaling": {{"type": "yarn", "factor": 4}}, {BASE}}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("yarn"), "{e}");
    }

    #[test]
    fn hf_json_round_trips() {
        for arch in [Arch::Llama, Arch::Mistral, Arch::Qwen2, Arch::Qwen3] {
            let mut cfg = crate::tiny::tiny_config(arch);
            if arch != Arch::Llama {
                cfg.sliding_window = vec![None, Some(3)];
            }
            if arch == Arch::Llama {
                cfg.rope_scaling = RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 16.0,
                };
            }
            let back = parse(&cfg.to_hf_json().to_string()).unwrap();
            assert_eq!(back, cfg, "{arch:?}");
        }
    }

    #[test]
    fn informational_fields_are_fine() {
        let c = parse(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16", "foo": 1,
            "rope_scaling": {{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}, {BASE}}}"#
        ))
        .unwrap();
        assert_eq!(c.head_dim, 4);
        assert_eq!(c.num_key_value_heads, 2);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { .. }));
    }
}
