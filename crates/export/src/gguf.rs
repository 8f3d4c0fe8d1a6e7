//! GGUF export of a (merged) Llama-architecture model for llama.cpp and Ollama: tensors under
//! llama.cpp's names with its Q/K row permutation, `llama.*` hyper-parameters, and the
//! tokenizer (tokens, token types, merges, scores, special-token ids) and chat template in the
//! metadata. Written with candle's GGUF writer and quantizer (`candle_core::quantized`), to a
//! temporary name renamed when complete.

use crate::ExportError;
use crate::st::Staged;
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};
use runner_model::config::{Arch, RopeScaling};
use runner_model::{CausalLm, ModelConfig};
use std::path::{Path, PathBuf};

/// The tensor types a GGUF can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufType {
    F32,
    F16,
    Q8_0,
}

impl GgufType {
    pub const ALL: [GgufType; 3] = [GgufType::F32, GgufType::F16, GgufType::Q8_0];

    pub fn name(self) -> &'static str {
        match self {
            GgufType::F32 => "f32",
            GgufType::F16 => "f16",
            GgufType::Q8_0 => "q8_0",
        }
    }

    /// Parses `f32`, `f16` or `q8_0` (case-insensitive); the error lists the choices.
    pub fn parse(s: &str) -> Result<Self, ExportError> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                ExportError::Invalid(format!(
                    "GGUF type `{s}` is not supported; choose one of: f32, f16, q8_0"
                ))
            })
    }

    fn ggml(self) -> GgmlDType {
        match self {
            GgufType::F32 => GgmlDType::F32,
            GgufType::F16 => GgmlDType::F16,
            GgufType::Q8_0 => GgmlDType::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_ALL_F32`, `MOSTLY_F16`, `MOSTLY_Q8_0`).
    fn file_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Q8_0 => 7,
        }
    }
}

/// The tokenizer metadata of a GGUF (`tokenizer.ggml.*`, `tokenizer.chat_template`).
#[derive(Debug, Clone, Default)]
pub struct GgufTokenizer {
    pub entries: Vec<(String, Value)>,
}

impl GgufTokenizer {
    /// Every `tokenizer.*` key of an existing GGUF (the base a model was trained from), as is:
    /// llama.cpp reads them exactly as it wrote them.
    pub fn from_gguf(path: &Path) -> Result<Self, ExportError> {
        let content = runner_model::gguf::read_content(path)?;
        let mut entries: Vec<(String, Value)> = content
            .metadata
            .into_iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { entries })
    }

    /// Converts a Hugging Face `tokenizer.json` (byte-level BPE: GPT-2, Llama 3, Qwen, SmolLM)
    /// as llama.cpp's converter does: `tokenizer.ggml.model = gpt2`, the vocabulary in id order
    /// as spelled in the file, token types (1 normal, 3 control = special added tokens,
    /// 4 user-defined = other added tokens), the merges, and the special-token ids.
    pub fn from_tokenizer_json(
        json: &str,
        special: &SpecialIds,
        origin: &Path,
    ) -> Result<Self, ExportError> {
        let bad = |m: String| ExportError::Invalid(format!("{}: {m}", origin.display()));
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| bad(format!("tokenizer JSON: {e}")))?;
        let model = &v["model"];
        if model["type"].as_str() != Some("BPE") {
            return Err(bad(format!(
                "tokenizer model `{}` cannot be written to GGUF yet (only byte-level BPE)",
                model["type"].as_str().unwrap_or("?")
            )));
        }
        if model["byte_fallback"].as_bool() == Some(true) {
            return Err(bad(
                "a SentencePiece-style BPE tokenizer (byte_fallback) cannot be converted to GGUF \
                 yet; export from the base model's GGUF instead"
                    .into(),
            ));
        }
        let byte_level = |p: &serde_json::Value| -> bool {
            p["type"] == "ByteLevel"
                || p["pretokenizers"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["type"] == "ByteLevel"))
        };
        if !byte_level(&v["pre_tokenizer"]) {
            return Err(bad(
                "not a byte-level BPE tokenizer (no ByteLevel pre-tokenizer)".into(),
            ));
        }
        let mut tokens: Vec<Option<String>> = Vec::new();
        let mut put = |id: usize, t: &str| {
            if tokens.len() <= id {
                tokens.resize(id + 1, None);
            }
            tokens[id] = Some(t.to_string());
        };
        let vocab = model["vocab"]
            .as_object()
            .ok_or_else(|| bad("tokenizer model has no `vocab` object".into()))?;
        for (t, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| bad(format!("vocab entry `{t}` has no integer id")))?;
            put(id as usize, t);
        }
        let mut types: Vec<i32> = Vec::new();
        let mut added: Vec<(usize, bool)> = Vec::new();
        for a in v["added_tokens"].as_array().into_iter().flatten() {
            let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) else {
                return Err(bad("an added token without `id`/`content`".into()));
            };
            put(id as usize, content);
            added.push((id as usize, a["special"].as_bool().unwrap_or(false)));
        }
        let mut names = Vec::with_capacity(tokens.len());
        for (id, t) in tokens.into_iter().enumerate() {
            // llama.cpp fills holes in the id range with padding tokens.
            names.push(t.unwrap_or_else(|| format!("[PAD{id}]")));
            types.push(1);
        }
        for (id, special) in added {
            types[id] = if special { 3 } else { 4 };
        }
        let merges: Vec<String> = model["merges"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| match m {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Array(p) if p.len() == 2 => {
                    Some(format!("{} {}", p[0].as_str()?, p[1].as_str()?))
                }
                _ => None,
            })
            .collect();
        let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
        let mut entries = vec![
            (
                "tokenizer.ggml.model".to_string(),
                Value::String("gpt2".into()),
            ),
            // llama.cpp picks its pre-tokenizer regex by this name; "default" is its
            // documented fallback when the converter cannot identify the tokenizer.
            (
                "tokenizer.ggml.pre".to_string(),
                Value::String("default".into()),
            ),
            ("tokenizer.ggml.tokens".to_string(), strings(names)),
            (
                "tokenizer.ggml.token_type".to_string(),
                Value::Array(types.into_iter().map(Value::I32).collect()),
            ),
            ("tokenizer.ggml.merges".to_string(), strings(merges)),
        ];
        special.push_to(&mut entries);
        Ok(Self { entries })
    }

    /// Sets (or replaces) `tokenizer.chat_template`.
    pub fn set_chat_template(&mut self, template: &str) {
        self.entries.retain(|(k, _)| k != "tokenizer.chat_template");
        self.entries.push((
            "tokenizer.chat_template".into(),
            Value::String(template.to_string()),
        ));
    }

    /// Number of tokens in `tokenizer.ggml.tokens`.
    pub fn vocab_len(&self) -> usize {
        self.entries
            .iter()
            .find(|(k, _)| k == "tokenizer.ggml.tokens")
            .and_then(|(_, v)| match v {
                Value::Array(a) => Some(a.len()),
                _ => None,
            })
            .unwrap_or(0)
    }
}

/// Special-token ids and BOS/EOS policy written with a converted tokenizer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
}

impl SpecialIds {
    fn push_to(&self, entries: &mut Vec<(String, Value)>) {
        for (key, id) in [
            ("tokenizer.ggml.bos_token_id", self.bos),
            ("tokenizer.ggml.eos_token_id", self.eos),
            ("tokenizer.ggml.padding_token_id", self.pad),
        ] {
            if let Some(id) = id {
                entries.push((key.into(), Value::U32(id)));
            }
        }
        entries.push((
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(self.add_bos),
        ));
        entries.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)));
    }
}

/// What [`write_gguf`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufReport {
    pub path: PathBuf,
    pub ty: GgufType,
    pub tensors: usize,
    pub bytes: u64,
    /// Matrices whose rows do not split into q8_0 blocks of 32, written in f16 instead (as
    /// llama.cpp's quantizer does).
    pub kept_f16: Vec<String>,
    /// Adapted layers whose LoRA/DoRA update was merged into the written weight.
    pub merged_modules: usize,
}

/// llama.cpp's row permutation of Q and K: `w.reshape(n_head, 2, rows/n_head/2, cols)
/// .swapaxes(1, 2).reshape(rows, cols)` (the inverse of the one the GGUF loader undoes).
pub fn permute_qk(w: &Tensor, n_head: usize) -> Result<Tensor, ExportError> {
    Ok(runner_model::tiny::permute_qk_llama_cpp(w, n_head)?)
}

fn check_arch(cfg: &ModelConfig) -> Result<(), ExportError> {
    let unsupported = |what: &str| {
        Err(ExportError::Invalid(format!(
            "GGUF export writes the llama architecture; this model has {what}, which it cannot \
             express"
        )))
    };
    match cfg.arch {
        Arch::Llama | Arch::Mistral => {}
        other => return unsupported(&format!("architecture {other:?}")),
    }
    if cfg.qkv_bias || cfg.o_bias || cfg.mlp_bias {
        return unsupported("projection biases");
    }
    if cfg.qk_norm {
        return unsupported("q/k norms");
    }
    if cfg.sliding_window.iter().any(Option::is_some) {
        return unsupported("a sliding attention window");
    }
    Ok(())
}

/// Writes `model` (adapters merged on the fly) with `tokenizer` as a llama GGUF at `out` in
/// `ty` (norms always f32). Refuses an existing `out` unless `force`.
pub fn write_gguf(
    model: &CausalLm,
    tokenizer: &GgufTokenizer,
    name: &str,
    out: &Path,
    ty: GgufType,
    force: bool,
) -> Result<GgufReport, ExportError> {
    let cfg = &model.cfg;
    check_arch(cfg)?;
    if out.exists() && !force {
        return Err(ExportError::OutputExists {
            path: out.to_path_buf(),
        });
    }
    if out.is_dir() {
        return Err(ExportError::Invalid(format!(
            "{} is a folder; give the GGUF file's path",
            out.display()
        )));
    }
    let n_tokens = tokenizer.vocab_len();
    if n_tokens != cfg.vocab_size {
        return Err(ExportError::Invalid(format!(
            "the tokenizer has {n_tokens} tokens but the model's vocabulary is {}; llama.cpp \
             needs them equal (was the tokenizer of another model given?)",
            cfg.vocab_size
        )));
    }
    let mut report = GgufReport {
        path: out.to_path_buf(),
        ty,
        tensors: 0,
        bytes: 0,
        kept_f16: Vec::new(),
        merged_modules: 0,
    };
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut add = |gguf: String, t: Tensor, quantize: bool, report: &mut GgufReport| {
        let t = t.to_dtype(DType::F32)?.contiguous()?;
        let mut dt = if quantize { ty.ggml() } else { GgmlDType::F32 };
        if dt == GgmlDType::Q8_0 && !t.dim(candle_core::D::Minus1)?.is_multiple_of(32) {
            dt = GgmlDType::F16;
            report.kept_f16.push(gguf.clone());
        }
        let q = QTensor::quantize(&t, dt)?;
        report.bytes += q.storage_size_in_bytes() as u64;
        tensors.push((gguf, q));
        Ok::<(), ExportError>(())
    };
    // Every name goes through the one GGUF <-> Hugging Face table.
    let g = |hf: String| {
        runner_io::names::gguf_from_hf(&hf)
            .ok_or_else(|| ExportError::Invalid(format!("internal: no GGUF name for {hf}")))
    };
    add(
        g("model.embed_tokens.weight".into())?,
        model.embed_tokens.clone(),
        true,
        &mut report,
    )?;
    for (i, layer) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        add(
            g(format!("{p}.input_layernorm.weight"))?,
            layer.input_layernorm.weight.clone(),
            false,
            &mut report,
        )?;
        for (proj, lin) in runner_io::names::PROJECTIONS
            .iter()
            .zip(layer.projections())
        {
            report.merged_modules += usize::from(lin.lora.is_some());
            let mut w = crate::merge::merged_weight(lin)?;
            if proj.leaf == "q_proj" {
                w = permute_qk(&w, cfg.num_attention_heads)?;
            } else if proj.leaf == "k_proj" {
                w = permute_qk(&w, cfg.num_key_value_heads)?;
            }
            add(
                g(format!("{p}.{}.weight", proj.module))?,
                w,
                true,
                &mut report,
            )?;
        }
        add(
            g(format!("{p}.post_attention_layernorm.weight"))?,
            layer.post_attention_layernorm.weight.clone(),
            false,
            &mut report,
        )?;
    }
    add(
        g("model.norm.weight".into())?,
        model.norm.weight.clone(),
        false,
        &mut report,
    )?;
    // Tied when the LM head is the embedding tensor itself; a trained copy of either
    // (`lora_modules_to_save`) unties them.
    let tied = model.lm_head.lora.is_none() && model.lm_head.weight.id() == model.embed_tokens.id();
    if !tied {
        report.merged_modules += usize::from(model.lm_head.lora.is_some());
        add(
            g("lm_head.weight".into())?,
            crate::merge::merged_weight(&model.lm_head)?,
            true,
            &mut report,
        )?;
    }
    let mut meta: Vec<(String, Value)> = Vec::new();
    let u = |x: usize| Value::U32(x as u32);
    let mut put = |k: &str, v: Value| meta.push((k.to_string(), v));
    put("general.architecture", Value::String("llama".into()));
    put("general.name", Value::String(name.to_string()));
    put("general.file_type", Value::U32(ty.file_type()));
    if ty == GgufType::Q8_0 {
        put("general.quantization_version", Value::U32(2));
    }
    put("llama.vocab_size", u(cfg.vocab_size));
    put("llama.context_length", u(cfg.max_position_embeddings));
    put("llama.embedding_length", u(cfg.hidden_size));
    put("llama.block_count", u(cfg.num_hidden_layers));
    put("llama.feed_forward_length", u(cfg.intermediate_size));
    put("llama.attention.head_count", u(cfg.num_attention_heads));
    put("llama.attention.head_count_kv", u(cfg.num_key_value_heads));
    put("llama.attention.key_length", u(cfg.head_dim));
    put("llama.attention.value_length", u(cfg.head_dim));
    put("llama.rope.dimension_count", u(cfg.head_dim));
    put("llama.rope.freq_base", Value::F32(cfg.rope_theta as f32));
    put(
        "llama.attention.layer_norm_rms_epsilon",
        Value::F32(cfg.rms_norm_eps as f32),
    );
    match &cfg.rope_scaling {
        RopeScaling::None => {}
        &RopeScaling::Linear { factor } => {
            put("llama.rope.scaling.type", Value::String("linear".into()));
            put("llama.rope.scaling.factor", Value::F32(factor as f32));
        }
        RopeScaling::Factors(_) | RopeScaling::Llama3 { .. } => {
            // llama.cpp takes Llama 3.1-style scaling as per-frequency divisors.
            let plain = runner_model::nn::Rope::new(&ModelConfig {
                rope_scaling: RopeScaling::None,
                ..cfg.clone()
            });
            let factors: Vec<f32> = plain
                .inv_freq
                .iter()
                .zip(&model.rope.inv_freq)
                .map(|(p, s)| p / s)
                .collect();
            let n = factors.len();
            let t = Tensor::from_vec(factors, n, &candle_core::Device::Cpu)?;
            tensors.push((
                "rope_freqs.weight".into(),
                QTensor::quantize(&t, GgmlDType::F32)?,
            ));
        }
    }
    meta.extend(tokenizer.entries.iter().cloned());
    report.tensors = tensors.len();

    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| ExportError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let mut staged = Staged::default();
    let (mut f, tmp) = staged.create(out)?;
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    {
        let mut w = std::io::BufWriter::new(&mut f);
        candle_core::quantized::gguf_file::write(&mut w, &meta_refs, &tensor_refs).map_err(
            |e| ExportError::Io {
                path: tmp.clone(),
                source: std::io::Error::other(e.to_string()),
            },
        )?;
        std::io::Write::flush(&mut w).map_err(|source| ExportError::Io {
            path: tmp.clone(),
            source,
        })?;
    }
    f.sync_all().map_err(|source| ExportError::Io {
        path: tmp.clone(),
        source,
    })?;
    drop(f);
    staged.commit()?;
    Ok(report)
}

/// The largest |difference| between the logits of `model` and of the GGUF at `path` loaded
/// back through runner's GGUF loader, on `rows` of token ids, relative to the largest |logit|.
pub fn max_logit_difference(
    model: &CausalLm,
    path: &Path,
    rows: &[Vec<u32>],
) -> Result<f32, ExportError> {
    let (back, _) = runner_model::gguf::load_gguf(path, DType::F32, &candle_core::Device::Cpu)?;
    let batch = crate::merge::fixed_batch(rows)?;
    let a = model.logits(&batch, false)?.to_dtype(DType::F32)?;
    let b = back.logits(&batch, false)?;
    let diff = (&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = a.abs()?.max_all()?.to_scalar::<f32>()?;
    Ok(diff / scale.max(1e-30))
}
