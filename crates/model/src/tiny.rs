//! Tiny random checkpoints in Hugging Face layout (config.json + model.safetensors) so tests and
//! CI smoke runs need no download.

use crate::config::{Arch, ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::path::Path;

/// A small configuration of the given architecture: 2 layers, hidden 64, 4 heads / 2 KV heads,
/// vocab 256.
pub fn tiny_config(arch: Arch) -> ModelConfig {
    let n_layers = 2;
    ModelConfig {
        arch,
        vocab_size: 256,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: n_layers,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 512,
        tie_word_embeddings: matches!(arch, Arch::Qwen3),
        qkv_bias: matches!(arch, Arch::Qwen2),
        o_bias: false,
        mlp_bias: false,
        qk_norm: matches!(arch, Arch::Qwen3),
        sliding_window: vec![None; n_layers],
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    }
}

/// Every tensor a checkpoint of `cfg` holds, with its shape, in Hugging Face names.
pub fn tensor_shapes(cfg: &ModelConfig) -> BTreeMap<String, Vec<usize>> {
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q, kv, d) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
        cfg.head_dim,
    );
    let mut m = BTreeMap::new();
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

/// Random weights for `cfg`: N(0, 0.02) for matrices and biases, norms around 1.
pub fn random_weights(cfg: &ModelConfig, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    use rand::Rng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = BTreeMap::new();
    for (name, shape) in tensor_shapes(cfg) {
        let n: usize = shape.iter().product();
        let vals: Vec<f32> = if name.ends_with("norm.weight") {
            (0..n)
                .map(|_| 1.0 + rng.random_range(-0.1f32..0.1))
                .collect()
        } else {
            // sum of uniforms: cheap, roughly normal, std 0.02
            (0..n)
                .map(|_| {
                    let s: f32 = (0..3).map(|_| rng.random_range(-1.0f32..1.0)).sum();
                    s * 0.02
                })
                .collect()
        };
        out.insert(name, Tensor::from_vec(vals, shape, &Device::Cpu)?);
    }
    Ok(out)
}

/// Writes `config.json` and `model.safetensors` of a random model into `dir` (created).
pub fn write_tiny(dir: &Path, cfg: &ModelConfig, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(crate::error::io_err(dir))?;
    let cfg_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&cfg.to_hf_json()).map_err(|e| Error::Config {
        path: cfg_path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&cfg_path, text).map_err(crate::error::io_err(&cfg_path))?;
    let weights = random_weights(cfg, seed)?;
    let st = dir.join("model.safetensors");
    candle_core::safetensors::save(&weights.into_iter().collect(), &st).map_err(|e| {
        Error::Safetensors {
            path: st.clone(),
            message: e.to_string(),
        }
    })?;
    Ok(())
}

/// A tiny random Llama in `dir`.
pub fn write_tiny_llama(dir: &Path, seed: u64) -> Result<ModelConfig> {
    let cfg = tiny_config(Arch::Llama);
    write_tiny(dir, &cfg, seed)?;
    Ok(cfg)
}

/// A tiny random Qwen3 (q/k norm, tied embeddings) in `dir`.
pub fn write_tiny_qwen3(dir: &Path, seed: u64) -> Result<ModelConfig> {
    let cfg = tiny_config(Arch::Qwen3);
    write_tiny(dir, &cfg, seed)?;
    Ok(cfg)
}
