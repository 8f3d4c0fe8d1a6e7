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

/// Random weights for `cfg`: N(0, 0.02) for matrices and biases, norms around 1.
pub fn random_weights(cfg: &ModelConfig, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    use rand::Rng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = BTreeMap::new();
    for (name, shape) in cfg.tensor_shapes() {
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

/// The sliding window of a smoke model whose real model slides: short enough that the rows of
/// a smoke run cross it, so the windowed attention path runs.
pub const SMOKE_WINDOW: usize = 32;

/// What a family looks like when only its name is known (no `config.json` in reach): Llama
/// plain, Mistral with Mistral-7B-v0.1's sliding window (4096) on every layer, Qwen2 with q/k/v
/// biases, Qwen3 with q/k norm and tied embeddings (as its small models).
pub fn family_defaults(arch: Arch) -> ModelConfig {
    let mut cfg = tiny_config(arch);
    if arch == Arch::Mistral {
        cfg.sliding_window = vec![Some(4096); cfg.num_hidden_layers];
    }
    cfg
}

/// A tiny configuration of the same family as `real`, for a smoke run (issue 19). Kept: the
/// architecture and every switch that changes the code path (q/k/v, o and MLP biases, q/k
/// norm, tied embeddings, RoPE theta and scaling, grouped-query attention, which layers use a
/// sliding window). Tiny: 2 layers, hidden 64, MLP 128, 4 heads of 16 (2 KV heads when the
/// real model groups queries), a sliding window of at most [`SMOKE_WINDOW`]. `vocab_size`,
/// `bos`, `eos` come from the tokenizer the smoke run uses. Also returns what changed beyond
/// the sizes, to say.
pub fn smoke_like(
    real: &ModelConfig,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
) -> (ModelConfig, Vec<String>) {
    let mut notes = Vec::new();
    let mut cfg = tiny_config(real.arch);
    cfg.vocab_size = vocab_size;
    cfg.bos_token_id = bos;
    cfg.eos_token_id = eos;
    cfg.tie_word_embeddings = real.tie_word_embeddings;
    cfg.qkv_bias = real.qkv_bias;
    cfg.o_bias = real.o_bias;
    cfg.mlp_bias = real.mlp_bias;
    cfg.qk_norm = real.qk_norm;
    cfg.rms_norm_eps = real.rms_norm_eps;
    cfg.rope_theta = real.rope_theta;
    cfg.max_position_embeddings = real
        .max_position_embeddings
        .max(cfg.max_position_embeddings);
    if real.num_key_value_heads == real.num_attention_heads {
        cfg.num_key_value_heads = cfg.num_attention_heads;
    }
    cfg.rope_scaling = match &real.rope_scaling {
        // Per-frequency factors are sized to the real head_dim.
        RopeScaling::Factors(_) => {
            notes.push(
                "RoPE frequency factors (sized to the real head_dim) dropped: plain RoPE".into(),
            );
            RopeScaling::None
        }
        other => other.clone(),
    };
    let windows: Vec<usize> = real.sliding_window.iter().flatten().copied().collect();
    if let Some(&w) = windows.iter().min() {
        let tiny_w = w.min(SMOKE_WINDOW);
        let all = windows.len() == real.sliding_window.len();
        // Mixed models (Qwen2's max_window_layers, layer_types) keep one full and one sliding
        // layer, in the real model's order.
        let first_slides = real.sliding_window.first().is_some_and(Option::is_some);
        cfg.sliding_window = (0..cfg.num_hidden_layers)
            .map(|i| (all || (i == 0) == first_slides).then_some(tiny_w))
            .collect();
        if tiny_w != w {
            notes.push(format!(
                "sliding window {w} → {tiny_w}, so the smoke rows cross it"
            ));
        }
    }
    (cfg, notes)
}

/// llama.cpp's row permutation of Q and K (the inverse of [`crate::gguf::unpermute_qk`]):
/// `w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).reshape(rows, cols)`.
pub fn permute_qk_llama_cpp(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    Ok(w.reshape((n_head, 2, rows / n_head / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// Writes the weights of a Llama `cfg` as an f32 GGUF the way llama.cpp's converter lays it out
/// (GGUF names, permuted Q/K, `llama.*` metadata), with a toy tokenizer vocabulary.
pub fn write_gguf(
    path: &Path,
    cfg: &ModelConfig,
    weights: &BTreeMap<String, Tensor>,
) -> Result<()> {
    use candle_core::quantized::gguf_file::Value;
    use candle_core::quantized::{GgmlDType, QTensor};
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    // llama.cpp's RoPE frequencies keep their name; every weight goes through the one table.
    let to_gguf = |hf: &str| match hf {
        "rope_freqs.weight" => Some(hf.to_string()),
        _ => runner_io::names::gguf_from_hf(hf),
    };
    for (name, t) in weights {
        let Some(g) = to_gguf(name) else {
            return Err(Error::Adapter(format!("no GGUF name for {name}")));
        };
        let t = if name.ends_with("q_proj.weight") {
            permute_qk_llama_cpp(t, cfg.num_attention_heads)?
        } else if name.ends_with("k_proj.weight") {
            permute_qk_llama_cpp(t, cfg.num_key_value_heads)?
        } else {
            t.clone()
        };
        tensors.push((g, QTensor::quantize(&t, GgmlDType::F32)?));
    }
    let u = |x: usize| Value::U32(x as u32);
    let tokens: Vec<Value> = (0..cfg.vocab_size)
        .map(|i| Value::String(format!("<t{i}>")))
        .collect();
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", u(cfg.num_hidden_layers)),
        ("llama.context_length", u(cfg.max_position_embeddings)),
        ("llama.embedding_length", u(cfg.hidden_size)),
        ("llama.feed_forward_length", u(cfg.intermediate_size)),
        ("llama.attention.head_count", u(cfg.num_attention_heads)),
        ("llama.attention.head_count_kv", u(cfg.num_key_value_heads)),
        ("llama.rope.dimension_count", u(cfg.head_dim)),
        ("llama.rope.freq_base", Value::F32(cfg.rope_theta as f32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens)),
        ("tokenizer.ggml.bos_token_id", u(1)),
        ("tokenizer.ggml.eos_token_id", u(2)),
    ];
    let mut f = std::fs::File::create(path).map_err(crate::error::io_err(path))?;
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    candle_core::quantized::gguf_file::write(&mut f, &meta_refs, &tensor_refs).map_err(|e| {
        Error::Gguf {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })?;
    Ok(())
}

/// The built-in models runner generates itself (`base_model: builtin:NAME`), sized for the
/// data stage's built-in byte-level tokenizer (259 ids; BOS 1, EOS 2).
pub const BUILTIN: &[&str] = &["tiny-llama", "tiny-qwen3"];

/// The configuration of a built-in model.
pub fn builtin_config(name: &str) -> Result<ModelConfig> {
    let arch = match name {
        "tiny-llama" => Arch::Llama,
        "tiny-qwen3" => Arch::Qwen3,
        _ => {
            return Err(Error::UnknownBuiltin {
                name: name.to_string(),
                known: BUILTIN.to_vec(),
            });
        }
    };
    let mut cfg = tiny_config(arch);
    cfg.vocab_size = 259;
    cfg.max_position_embeddings = 4096;
    cfg.bos_token_id = Some(1);
    cfg.eos_token_id = Some(2);
    Ok(cfg)
}

/// The folder holding built-in model `name` (config.json + model.safetensors), written on first
/// use under `$RUNNER_MODEL_CACHE/builtin/` (else `.cache/models/builtin/`), always with the
/// same weights (fixed seed, so every machine gets the same model). Written to a temporary
/// folder and renamed, so a crash never leaves half a model; a folder whose config differs
/// (an older runner's) is rewritten.
pub fn builtin(name: &str) -> Result<std::path::PathBuf> {
    let cfg = builtin_config(name)?;
    let root = std::env::var_os("RUNNER_MODEL_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(".cache/models"));
    let dir = root.join("builtin").join(name);
    let config_path = dir.join("config.json");
    let up_to_date = std::fs::read_to_string(&config_path)
        .ok()
        .and_then(|text| ModelConfig::from_json_str(&text, &config_path).ok())
        .is_some_and(|c| c == cfg)
        && dir.join("model.safetensors").is_file();
    if !up_to_date {
        // Write beside, then rename: a concurrent or interrupted run never sees half a model.
        let tmp = root
            .join("builtin")
            .join(format!(".{name}.tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        write_tiny(&tmp, &cfg, 0x7153_5eed)?;
        let _ = std::fs::remove_dir_all(&dir);
        // Another process may have generated it since: the same bytes, keep theirs.
        if let Err(e) =
            runner_io::atomic::publish_dir(&tmp, &dir, runner_io::atomic::Existing::Keep)
            && !dir.join("model.safetensors").is_file()
        {
            return Err(crate::error::io_err(e.path)(e.source));
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips(cfg: &ModelConfig) {
        let path = Path::new("config.json");
        let back = ModelConfig::from_json_str(&cfg.to_hf_json().to_string(), path).unwrap();
        assert_eq!(&back, cfg, "{:?} through config.json", cfg.arch);
    }

    #[test]
    fn smoke_like_keeps_the_family_switches_and_shrinks_the_window() {
        // Mistral-7B-v0.1: a 4096 window on every layer.
        let (c, notes) = smoke_like(&family_defaults(Arch::Mistral), 300, Some(1), Some(2));
        assert_eq!(c.arch, Arch::Mistral);
        assert_eq!(c.sliding_window, vec![Some(SMOKE_WINDOW); 2]);
        assert!(notes.iter().any(|n| n.contains("4096 → 32")), "{notes:?}");
        assert_eq!(
            (c.vocab_size, c.bos_token_id, c.eos_token_id),
            (300, Some(1), Some(2))
        );
        round_trips(&c);

        // Qwen2: q/k/v biases; sliding only from max_window_layers on: one full, one sliding.
        let mut q2 = tiny_config(Arch::Qwen2);
        q2.num_hidden_layers = 4;
        q2.sliding_window = vec![None, None, Some(8), Some(8)];
        q2.rope_theta = 1_000_000.0;
        let (c, notes) = smoke_like(&q2, 300, None, Some(2));
        assert!(c.qkv_bias && !c.qk_norm);
        assert_eq!(c.sliding_window, vec![None, Some(8)]);
        assert!(notes.is_empty(), "a window under 32 is kept: {notes:?}");
        assert_eq!(c.rope_theta, 1_000_000.0);
        round_trips(&c);

        // Qwen3: q/k norm and tied embeddings; Llama: plain, MHA kept as MHA, llama3 RoPE kept.
        let (c, _) = smoke_like(&family_defaults(Arch::Qwen3), 300, None, None);
        assert!(c.qk_norm && c.tie_word_embeddings && !c.qkv_bias);
        round_trips(&c);
        let mut llama = tiny_config(Arch::Llama);
        llama.num_key_value_heads = llama.num_attention_heads;
        llama.rope_scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let (c, _) = smoke_like(&llama, 300, None, None);
        assert_eq!(c.num_key_value_heads, c.num_attention_heads);
        assert_eq!(c.rope_scaling, llama.rope_scaling);
        assert!(c.sliding_window.iter().all(Option::is_none));
        round_trips(&c);
    }
}
