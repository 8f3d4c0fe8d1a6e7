//! GGUF checkpoints (llama architecture): metadata → [`ModelConfig`], tensors dequantized to the
//! compute dtype under Hugging Face names, with llama.cpp's Q/K row permutation undone, and the
//! tokenizer / chat template metadata handed on for the data stage.

use crate::config::{Arch, ModelConfig, RopeScaling};
use crate::error::{Error, Result, io_err};
use crate::llama::CausalLm;
use crate::weights::{TensorSource, Weights};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Tokenizer and chat-template metadata of a GGUF file (`tokenizer.ggml.*`,
/// `tokenizer.chat_template`), for the data stage to rebuild the tokenizer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufInfo {
    pub path: PathBuf,
    pub architecture: String,
    /// `tokenizer.ggml.model`, e.g. `gpt2` (byte-level BPE) or `llama` (SentencePiece).
    pub tokenizer_model: Option<String>,
    pub tokenizer_pre: Option<String>,
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub scores: Vec<f32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub unk_token_id: Option<u32>,
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
    pub chat_template: Option<String>,
}

fn gguf_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Gguf {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads the GGUF header (metadata and tensor index) without the tensor data.
pub fn read_content(path: &Path) -> Result<Content> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    Content::read(&mut f).map_err(|e| gguf_err(path, e.to_string()))
}

fn meta_u(md: &HashMap<String, Value>, key: &str) -> Option<u64> {
    md.get(key).and_then(|v| match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    })
}

fn meta_f(md: &HashMap<String, Value>, key: &str) -> Option<f64> {
    md.get(key).and_then(|v| match v {
        Value::F32(x) => Some(*x as f64),
        Value::F64(x) => Some(*x),
        _ => meta_u(md, key).map(|x| x as f64),
    })
}

fn meta_s(md: &HashMap<String, Value>, key: &str) -> Option<String> {
    md.get(key).and_then(|v| v.to_string().ok().cloned())
}

fn meta_strings(md: &HashMap<String, Value>, key: &str) -> Vec<String> {
    match md.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.to_string().ok().cloned())
            .collect(),
        _ => Vec::new(),
    }
}

/// The model configuration a GGUF's metadata describes.
pub fn config_from_gguf(path: &Path, content: &Content) -> Result<ModelConfig> {
    let md = &content.metadata;
    let arch = meta_s(md, "general.architecture").unwrap_or_default();
    if arch != "llama" {
        return Err(Error::UnsupportedArchitecture {
            path: path.to_path_buf(),
            found: format!("GGUF general.architecture `{arch}`"),
            supported: vec!["llama (GGUF)"],
        });
    }
    let need = |key: &str| -> Result<usize> {
        meta_u(md, &format!("llama.{key}"))
            .map(|x| x as usize)
            .ok_or_else(|| gguf_err(path, format!("metadata `llama.{key}` is missing")))
    };
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    let kv_heads = meta_u(md, "llama.attention.head_count_kv")
        .map(|x| x as usize)
        .unwrap_or(heads);
    let n_layers = need("block_count")?;
    let embd = content
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| gguf_err(path, "tensor `token_embd.weight` is missing"))?;
    let vocab = meta_u(md, "llama.vocab_size")
        .map(|x| x as usize)
        .or_else(|| embd.shape.dims().first().copied())
        .unwrap_or(0);
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || vocab == 0 {
        return Err(gguf_err(
            path,
            format!("inconsistent metadata: {heads} heads, {kv_heads} kv heads, vocab {vocab}"),
        ));
    }
    let head_dim = meta_u(md, "llama.rope.dimension_count")
        .map(|x| x as usize)
        .unwrap_or(hidden / heads);
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(gguf_err(
            path,
            format!("head dimension {head_dim} must be even and positive"),
        ));
    }
    let ffn = need("feed_forward_length")?;
    crate::config::check_sizes([
        ("num_hidden_layers", n_layers),
        ("hidden_size", hidden),
        ("intermediate_size", ffn),
        ("vocab_size", vocab),
        ("num_attention_heads", heads),
        ("head_dim", head_dim),
    ])
    .map_err(|m| gguf_err(path, m))?;
    let rope_scaling = match meta_s(md, "llama.rope.scaling.type").as_deref() {
        None | Some("none") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear {
            factor: meta_f(md, "llama.rope.scaling.factor").unwrap_or(1.0),
        },
        Some(other) => {
            return Err(Error::UnsupportedConfig {
                path: path.to_path_buf(),
                key: "llama.rope.scaling.type".into(),
                value: other.into(),
                hint: "implemented: none, linear".into(),
            });
        }
    };
    Ok(ModelConfig {
        arch: Arch::Llama,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: need("feed_forward_length")?,
        num_hidden_layers: n_layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: meta_f(md, "llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_theta: meta_f(md, "llama.rope.freq_base").unwrap_or(10_000.0),
        rope_scaling,
        max_position_embeddings: meta_u(md, "llama.context_length").unwrap_or(2048) as usize,
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        qk_norm: false,
        sliding_window: vec![None; n_layers],
        bos_token_id: meta_u(md, "tokenizer.ggml.bos_token_id").map(|x| x as u32),
        eos_token_id: meta_u(md, "tokenizer.ggml.eos_token_id").map(|x| x as u32),
    })
}

/// The Hugging Face name of a GGUF tensor (llama layout), or None for tensors we do not use:
/// the one table in `runner_io::names`.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    runner_io::names::hf_from_gguf(gguf_name)
}

/// Undoes llama.cpp's Q/K row permutation (its RoPE pairs adjacent rows, transformers pairs
/// halves): `w.reshape(n_head, rows/n_head/2, 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
pub fn unpermute_qk(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    Ok(w.reshape((n_head, rows / n_head / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// Loads a llama GGUF: dequantized tensors in `dtype`, Hugging Face names and layout.
pub fn load_gguf(path: &Path, dtype: DType, device: &Device) -> Result<(CausalLm, GgufInfo)> {
    load_gguf_with(path, dtype, device, None)
}

/// As [`load_gguf`]; with a quantizer the decoder projections are dequantized one at a time and
/// quantized as they load ([`crate::weights::StreamingQuantizer`]; attach it afterwards).
pub fn load_gguf_with(
    path: &Path,
    dtype: DType,
    device: &Device,
    quantizer: Option<Arc<crate::weights::StreamingQuantizer>>,
) -> Result<(CausalLm, GgufInfo)> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let content = Content::read(&mut f).map_err(|e| gguf_err(path, e.to_string()))?;
    let mut cfg = config_from_gguf(path, &content)?;
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        // Llama 3.1-style GGUFs carry the rope scaling as per-frequency divisors.
        let q = content
            .tensor(&mut f, "rope_freqs.weight", &Device::Cpu)
            .map_err(|e| gguf_err(path, format!("tensor `rope_freqs.weight`: {e}")))?;
        let factors: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .and_then(|t| t.flatten_all()?.to_vec1())
            .map_err(|e| gguf_err(path, format!("tensor `rope_freqs.weight`: {e}")))?;
        if factors.len() != cfg.head_dim / 2 {
            return Err(gguf_err(
                path,
                format!(
                    "rope_freqs.weight has {} entries, expected head_dim/2 = {}",
                    factors.len(),
                    cfg.head_dim / 2
                ),
            ));
        }
        cfg.rope_scaling = RopeScaling::Factors(factors);
    }
    let mut names = HashMap::new();
    for (name, info) in &content.tensor_infos {
        let Some(hf) = hf_name(name) else {
            if name == "rope_freqs.weight" {
                continue;
            }
            return Err(gguf_err(
                path,
                format!("tensor `{name}` has no place in a llama model (unsupported GGUF layout)"),
            ));
        };
        names.insert(hf, (name.clone(), info.shape.dims().to_vec()));
    }
    let source = GgufSource {
        path: path.to_path_buf(),
        heads: (cfg.num_attention_heads, cfg.num_key_value_heads),
        names,
        file: std::sync::Mutex::new(f),
        content,
    };
    let source = Arc::new(source);
    let mut weights = Weights::new(source.clone(), dtype, device.clone());
    if let Some(q) = quantizer {
        weights = weights.with_quantizer(q);
    }
    let model = CausalLm::load(&weights, &cfg)?;
    let content = &source.content;
    let md = &content.metadata;
    let info = GgufInfo {
        path: path.to_path_buf(),
        architecture: meta_s(md, "general.architecture").unwrap_or_default(),
        tokenizer_model: meta_s(md, "tokenizer.ggml.model"),
        tokenizer_pre: meta_s(md, "tokenizer.ggml.pre"),
        tokens: meta_strings(md, "tokenizer.ggml.tokens"),
        token_types: match md.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.to_i32().ok()).collect(),
            _ => Vec::new(),
        },
        merges: meta_strings(md, "tokenizer.ggml.merges"),
        scores: match md.get("tokenizer.ggml.scores") {
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.to_f32().ok()).collect(),
            _ => Vec::new(),
        },
        bos_token_id: meta_u(md, "tokenizer.ggml.bos_token_id").map(|x| x as u32),
        eos_token_id: meta_u(md, "tokenizer.ggml.eos_token_id").map(|x| x as u32),
        pad_token_id: meta_u(md, "tokenizer.ggml.padding_token_id").map(|x| x as u32),
        unk_token_id: meta_u(md, "tokenizer.ggml.unknown_token_id").map(|x| x as u32),
        add_bos_token: md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok()),
        add_eos_token: md
            .get("tokenizer.ggml.add_eos_token")
            .and_then(|v| v.to_bool().ok()),
        chat_template: meta_s(md, "tokenizer.chat_template"),
    };
    Ok((model, info))
}

/// A GGUF file read one tensor at a time: each [`TensorSource::load`] reads, dequantizes and
/// un-permutes (Q/K) one tensor, so the file is never held dequantized as a whole.
struct GgufSource {
    path: PathBuf,
    content: Content,
    file: std::sync::Mutex<std::fs::File>,
    /// Hugging Face name → (GGUF name, shape).
    names: HashMap<String, (String, Vec<usize>)>,
    /// (attention heads, key/value heads), for un-permuting Q and K.
    heads: (usize, usize),
}

impl TensorSource for GgufSource {
    fn source_name(&self) -> String {
        self.path.display().to_string()
    }
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.names.get(name).map(|(_, s)| s.clone())
    }
    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let (gguf_name, _) = self.names.get(name).ok_or_else(|| Error::MissingTensor {
            source_name: self.source_name(),
            name: name.to_string(),
        })?;
        let bad =
            |e: candle_core::Error| gguf_err(&self.path, format!("tensor `{gguf_name}`: {e}"));
        let q = {
            let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
            self.content
                .tensor(&mut *f, gguf_name, &Device::Cpu)
                .map_err(bad)?
        };
        let mut t = q.dequantize(&Device::Cpu).map_err(bad)?;
        drop(q);
        if name.ends_with("q_proj.weight") {
            t = unpermute_qk(&t, self.heads.0)?;
        } else if name.ends_with("k_proj.weight") {
            t = unpermute_qk(&t, self.heads.1)?;
        }
        Ok(t.to_device(device)?)
    }
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.names.keys().cloned().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map() {
        assert_eq!(
            hf_name("blk.3.attn_q.weight").as_deref(),
            Some("model.layers.3.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).reshape(rows, cols)
        let (n_head, rows, cols) = (2usize, 8usize, 3usize);
        let w = Tensor::arange(0f32, (rows * cols) as f32, &Device::Cpu)
            .unwrap()
            .reshape((rows, cols))
            .unwrap();
        let permuted = w
            .reshape((n_head, 2, rows / n_head / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, cols))
            .unwrap();
        let back = unpermute_qk(&permuted, n_head).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    }
}
