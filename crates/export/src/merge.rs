//! Merging a PEFT LoRA/DoRA adapter into its base model, shard by shard:
//! `W' = W + s·B·A`, DoRA `W' = m · (W + s·B·A) / ||W + s·B·A||_row`; a `modules_to_save`
//! copy (embeddings, LM head) replaces the base tensor, as PEFT's `merge_and_unload` does.
//!
//! Streaming: one base tensor at a time is read, merged, converted and appended to its output
//! shard (whose header is known up front), so memory is a few times the largest tensor plus
//! the adapter, whatever the model's size. Everything is checked
//! (adapter config, tensor names and shapes, shard headers) before the first byte is written,
//! and every output file goes to a temporary name that is renamed only when all are written.

use crate::ExportError;
use crate::st::{self, Staged};
use candle_core::{DType, Device, Tensor};
use runner_model::peft::{self, PeftConfig};
use runner_recipe::plan::BaseQuant;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use runner_model::peft::PEFT_PREFIX;
const INDEX_FILE: &str = "model.safetensors.index.json";

/// Files copied unchanged from the base folder (besides `config.json`, which gets the new dtype).
const COPIED: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
];

/// What [`merge_folder`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeReport {
    pub out_dir: PathBuf,
    pub dtype: DType,
    /// Adapted modules merged, in name order (e.g. `model.layers.0.self_attn.q_proj`).
    /// The base the update was added to: as stored, or NF4/int8 round-tripped
    /// ([`merge_folder_into`]).
    pub base: BaseQuant,
    pub merged_modules: Vec<String>,
    pub use_dora: bool,
    pub scaling: f64,
    /// Weight files written (shards), and the other files copied.
    pub shards: Vec<String>,
    pub copied: Vec<String>,
    pub tensors: usize,
    pub bytes_written: u64,
    /// The largest output tensor: the merge holds about three of these (read, merged,
    /// converted) plus the adapter in memory, whatever the model's size.
    pub largest_tensor_bytes: u64,
}

/// One adapted linear layer of the adapter file.
pub(crate) struct ModuleAdapter {
    pub(crate) a: Tensor,
    pub(crate) b: Tensor,
    pub(crate) magnitude: Option<Tensor>,
}

/// Merges the PEFT adapter in `adapter_dir` into the Hugging Face model folder `base_dir`
/// and writes the merged model to `out_dir` in `dtype` (f32, bf16 or f16), keeping the base's
/// sharding and index. Refuses an `out_dir` that already holds a model unless `force`.
pub fn merge_folder(
    base_dir: &Path,
    adapter_dir: &Path,
    out_dir: &Path,
    dtype: DType,
    force: bool,
) -> Result<MergeReport, ExportError> {
    merge_folder_into(
        base_dir,
        adapter_dir,
        out_dir,
        dtype,
        force,
        BaseQuant::None,
    )
}

/// [`merge_folder`] into the base as a QLoRA adapter saw it during training: with `base` NF4
/// (or int8), every decoder projection weight (`q/k/v/o_proj`, `gate/up/down_proj`, the layers
/// `load_in_4bit` quantizes) is quantized and dequantized exactly as the training forward did
/// (bitsandbytes' layout, `runner_model::quant`) before the update is added; the other tensors
/// are merged as stored. [`BaseQuant::None`] merges into the stored base.
pub fn merge_folder_into(
    base_dir: &Path,
    adapter_dir: &Path,
    out_dir: &Path,
    dtype: DType,
    force: bool,
    base: BaseQuant,
) -> Result<MergeReport, ExportError> {
    if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(ExportError::Invalid(format!(
            "merged dtype {dtype:?} is not supported; use f32, bf16 or f16"
        )));
    }
    check_out_dir(base_dir, out_dir, force)?;
    let cfg = peft::read_config(adapter_dir)?;
    let (adapter, copies) = read_adapter(adapter_dir, &cfg)?;

    // Every base shard's header, checked; then every adapter tensor against the base.
    let files = runner_model::load::safetensors_files(base_dir)?;
    let mut where_is: HashMap<String, (usize, st::TensorInfo)> = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        for (name, info) in st::read_header(f)? {
            where_is.insert(name, (i, info));
        }
    }
    for (module, m) in &adapter {
        let tensor = |suffix: &str| format!("{PEFT_PREFIX}{module}.{suffix}");
        let weight = format!("{module}.weight");
        let Some((_, info)) = where_is.get(&weight) else {
            return Err(ExportError::Mismatch {
                tensor: tensor("lora_A.weight"),
                message: format!("the base model has no tensor `{weight}`"),
            });
        };
        let [out, inp] = info.shape[..] else {
            return Err(ExportError::Mismatch {
                tensor: tensor("lora_A.weight"),
                message: format!("`{weight}` has shape {:?}, not a matrix", info.shape),
            });
        };
        if m.a.dims() != [cfg.r, inp] {
            return Err(ExportError::Mismatch {
                tensor: tensor("lora_A.weight"),
                message: format!(
                    "shape {:?}, expected [{}, {inp}] (r, in_features of `{weight}` {:?})",
                    m.a.dims(),
                    cfg.r,
                    info.shape
                ),
            });
        }
        if m.b.dims() != [out, cfg.r] {
            return Err(ExportError::Mismatch {
                tensor: tensor("lora_B.weight"),
                message: format!(
                    "shape {:?}, expected [{out}, {}] (out_features of `{weight}` {:?}, r)",
                    m.b.dims(),
                    cfg.r,
                    info.shape
                ),
            });
        }
        if let Some(mag) = &m.magnitude
            && mag.dims() != [out]
        {
            return Err(ExportError::Mismatch {
                tensor: tensor("lora_magnitude_vector"),
                message: format!("shape {:?}, expected [{out}]", mag.dims()),
            });
        }
    }

    let new_vocab = check_copies(base_dir, &copies, &where_is)?;

    std::fs::create_dir_all(out_dir).map_err(|source| ExportError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut staged = Staged::default();
    let mut report = MergeReport {
        out_dir: out_dir.to_path_buf(),
        dtype,
        base,
        merged_modules: adapter.keys().cloned().collect(),
        use_dora: cfg.use_dora,
        scaling: cfg.scaling,
        shards: Vec::new(),
        copied: Vec::new(),
        tensors: 0,
        bytes_written: 0,
        largest_tensor_bytes: 0,
    };
    // One tensor at a time: read it, merge it, convert it, append it to the output shard,
    // whose header is known up front from the base shard's header.
    let mut total_size = 0u64;
    for f in &files {
        let header = st::read_header(f)?;
        let entries: Vec<(String, String, Vec<usize>, u64)> = header
            .iter()
            .map(|(name, info)| {
                let shape = copies
                    .get(name)
                    .map_or_else(|| info.shape.clone(), |c| c.dims().to_vec());
                let (dt, bytes) = match float_dtype(&info.dtype) {
                    Some(_) => (
                        safetensors_dtype(dtype).to_string(),
                        (shape.iter().product::<usize>() * dtype.size_in_bytes()) as u64,
                    ),
                    None => (info.dtype.clone(), info.end - info.start),
                };
                (name.clone(), dt, shape, bytes)
            })
            .collect();
        let file_name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (mut w, tmp) = staged.create(&out_dir.join(&file_name))?;
        let io = |source| ExportError::Io {
            path: tmp.clone(),
            source,
        };
        let head = st::header(&entries);
        w.write_all(&head).map_err(io)?;
        let mut written = head.len() as u64;
        let mut input = std::fs::File::open(f).map_err(|source| ExportError::Io {
            path: f.clone(),
            source,
        })?;
        for (name, info) in &header {
            let raw = st::read_bytes(&mut input, f, info)?;
            let bytes = match float_dtype(&info.dtype) {
                None => raw,
                Some(src_dtype) => {
                    let t = Tensor::from_raw_buffer(&raw, src_dtype, &info.shape, &Device::Cpu)?;
                    drop(raw);
                    let module = name.strip_suffix(".weight");
                    let t = if base != BaseQuant::None && is_projection(name) {
                        round_trip(&t, base)?
                    } else {
                        t
                    };
                    let t = match (copies.get(name), module.and_then(|m| adapter.get(m))) {
                        (Some(copy), _) => copy.clone(),
                        (None, Some(m)) => merge_weight(&t, m, cfg.scaling)?,
                        (None, None) => t,
                    };
                    safetensors::View::data(&t.to_dtype(dtype)?).into_owned()
                }
            };
            w.write_all(&bytes).map_err(io)?;
            written += bytes.len() as u64;
            total_size += bytes.len() as u64;
            report.largest_tensor_bytes = report.largest_tensor_bytes.max(bytes.len() as u64);
        }
        w.sync_all().map_err(io)?;
        report.tensors += header.len();
        report.bytes_written += written;
        report.shards.push(file_name);
    }

    let index = base_dir.join(INDEX_FILE);
    if index.exists() {
        let mut v = read_json(&index)?;
        if let Some(obj) = v.as_object_mut() {
            let meta = obj
                .entry("metadata")
                .or_insert_with(|| serde_json::json!({}));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert("total_size".into(), serde_json::json!(total_size));
            }
        }
        stage_json(&mut staged, &out_dir.join(INDEX_FILE), &v)?;
        report.copied.push(INDEX_FILE.into());
    }
    let config = base_dir.join("config.json");
    if config.exists() {
        let mut v = read_json(&config)?;
        if let Some(obj) = v.as_object_mut() {
            let name = match dtype {
                DType::BF16 => "bfloat16",
                DType::F16 => "float16",
                _ => "float32",
            };
            for key in ["dtype", "torch_dtype"] {
                if obj.contains_key(key) {
                    obj.insert(key.into(), serde_json::json!(name));
                }
            }
            if let Some(v) = new_vocab {
                // Tokens were added when the adapter was trained (its copies have more rows).
                obj.insert("vocab_size".into(), serde_json::json!(v));
            }
        }
        stage_json(&mut staged, &out_dir.join("config.json"), &v)?;
        report.copied.push("config.json".into());
    }
    // An adapter folder that carries its tokenizer (runner and Axolotl save it there, with
    // the tokens the recipe added) gives all the tokenizer files; else the base's are copied.
    let tokenizer_dir = if adapter_dir.join("tokenizer.json").is_file() {
        adapter_dir
    } else {
        base_dir
    };
    for name in COPIED {
        let from = if *name == "generation_config.json" {
            base_dir
        } else {
            tokenizer_dir
        };
        let src = from.join(name);
        if src.exists() {
            let bytes = std::fs::read(&src).map_err(|source| ExportError::Io {
                path: src.clone(),
                source,
            })?;
            staged.write(&out_dir.join(name), &bytes)?;
            report.copied.push((*name).into());
        }
    }

    // With `force`, weight files of an earlier model that this one does not overwrite would
    // be picked up beside it: remove them first.
    let finals: Vec<PathBuf> = staged.finals().map(Path::to_path_buf).collect();
    if let Ok(entries) = std::fs::read_dir(out_dir) {
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let weights = name.ends_with(".safetensors") || name == INDEX_FILE;
            if weights && !name.starts_with('.') && !finals.contains(&p) {
                std::fs::remove_file(&p).map_err(|source| ExportError::Io { path: p, source })?;
            }
        }
    }
    staged.commit()?;
    Ok(report)
}

/// A decoder projection weight, the tensors `load_in_4bit` / `load_in_8bit` quantize.
fn is_projection(name: &str) -> bool {
    name.starts_with("model.layers.")
        && runner_io::names::PROJECTIONS
            .iter()
            .any(|p| name.ends_with(&format!(".{}.weight", p.module)))
}

/// `w` quantized to `kind` and back, in f32: the weight a QLoRA forward computed with.
fn round_trip(w: &Tensor, kind: BaseQuant) -> Result<Tensor, ExportError> {
    let (rows, cols) = w.dims2()?;
    let values: Vec<f32> = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    match runner_model::quant::QuantWeight::quantize(&values, rows, cols, kind) {
        Some(q) => Ok(q.to_tensor(DType::F32, &Device::Cpu)?),
        None => Ok(w.clone()),
    }
}

/// The candle dtype of a float safetensors dtype; other tensors are copied byte for byte.
fn float_dtype(st_dtype: &str) -> Option<DType> {
    match st_dtype {
        "F32" => Some(DType::F32),
        "F16" => Some(DType::F16),
        "BF16" => Some(DType::BF16),
        _ => None,
    }
}

fn safetensors_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        _ => "F32",
    }
}

/// `W + s·B·A`, or DoRA's `m · (W + s·B·A) / ||W + s·B·A||_row`, computed in f32.
pub(crate) fn merge_weight(
    w: &Tensor,
    m: &ModuleAdapter,
    scaling: f64,
) -> Result<Tensor, ExportError> {
    let w = w.to_dtype(DType::F32)?;
    let delta = (m.b.matmul(&m.a)? * scaling)?;
    let merged = (w + delta)?;
    Ok(match &m.magnitude {
        None => merged,
        Some(mag) => {
            // (out, in) → per-row L2 norm (out, 1)
            let norm = merged.sqr()?.sum_keepdim(1)?.sqrt()?;
            let factor = mag.unsqueeze(1)?.broadcast_div(&norm)?;
            merged.broadcast_mul(&factor)?
        }
    })
}

/// Checks the `modules_to_save` copies (keyed by the base tensor they replace) against the
/// base: the base must hold the tensor under that name (a tied LM head has none: the merged
/// model would have to untie it, which we refuse rather than change the architecture), with
/// the same columns; more rows mean tokens were added, and then every vocabulary-sized tensor
/// must be replaced with the same row count. Returns the new vocabulary size, if it changed.
fn check_copies(
    base_dir: &Path,
    copies: &BTreeMap<String, Tensor>,
    where_is: &HashMap<String, (usize, st::TensorInfo)>,
) -> Result<Option<usize>, ExportError> {
    if copies.is_empty() {
        return Ok(None);
    }
    let tied = read_json(&base_dir.join("config.json"))
        .ok()
        .and_then(|v| v["tie_word_embeddings"].as_bool())
        .unwrap_or(false);
    let mut rows = BTreeMap::new();
    for (name, copy) in copies {
        let peft_name = format!("{PEFT_PREFIX}{name}");
        if tied {
            return Err(ExportError::Mismatch {
                tensor: peft_name,
                message: "the base model ties lm_head to embed_tokens, and a trained copy of one \
                          of them cannot be merged without untying them (PEFT warns of the same, \
                          huggingface/peft#2777); use the adapter with its base model instead"
                    .into(),
            });
        }
        let Some((_, info)) = where_is.get(name) else {
            return Err(ExportError::Mismatch {
                tensor: peft_name,
                message: format!("the base model has no tensor `{name}`"),
            });
        };
        let (r, c) = copy.dims2()?;
        if info.shape.len() != 2 || info.shape[1] != c || info.shape[0] > r {
            return Err(ExportError::Mismatch {
                tensor: peft_name,
                message: format!(
                    "shape {:?}, expected [{}, {}] (or more rows, for added tokens) as `{name}`",
                    copy.dims(),
                    info.shape.first().copied().unwrap_or(0),
                    info.shape.get(1).copied().unwrap_or(0),
                ),
            });
        }
        rows.insert(name.clone(), (info.shape[0], r));
    }
    let grown: Vec<&(usize, usize)> = rows.values().filter(|(b, r)| b != r).collect();
    let Some(&&(_, new_rows)) = grown.first() else {
        return Ok(None);
    };
    for name in ["model.embed_tokens.weight", "lm_head.weight"] {
        if where_is.contains_key(name) && rows.get(name).map(|&(_, r)| r) != Some(new_rows) {
            return Err(ExportError::Mismatch {
                tensor: format!("{PEFT_PREFIX}{name}"),
                message: format!(
                    "the adapter grows the vocabulary to {new_rows} tokens but does not hold \
                     `{name}` with {new_rows} rows (train with lora_modules_to_save: \
                     [embed_tokens, lm_head])"
                ),
            });
        }
    }
    Ok(Some(new_rows))
}

/// LoRA/DoRA tensors by module, and `modules_to_save` copies by the base tensor they
/// replace; all f32.
type AdapterTensors = (BTreeMap<String, ModuleAdapter>, BTreeMap<String, Tensor>);

/// The adapter's tensors grouped by module, in f32; names that are neither LoRA/DoRA tensors
/// nor copies of a module the config lists in `modules_to_save` are refused.
fn read_adapter(dir: &Path, cfg: &PeftConfig) -> Result<AdapterTensors, ExportError> {
    let file = dir.join(peft::WEIGHTS_FILE);
    if !file.exists() {
        return Err(ExportError::AdapterConfig {
            path: file,
            message: "missing (a PEFT adapter folder holds adapter_model.safetensors)".into(),
        });
    }
    let tensors = st::load(&file)?;
    let mut parts: BTreeMap<String, [Option<Tensor>; 3]> = BTreeMap::new();
    let mut copies = BTreeMap::new();
    let saved_module = |m: &str| {
        cfg.modules_to_save
            .iter()
            .any(|w| m == w || m.ends_with(&format!(".{w}")))
    };
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let t = tensors[name].to_dtype(DType::F32)?;
        let rest = name.strip_prefix(PEFT_PREFIX);
        let (module, slot) = match rest {
            Some(r) => {
                if let Some(m) = r.strip_suffix(".lora_A.weight") {
                    (m, 0)
                } else if let Some(m) = r.strip_suffix(".lora_B.weight") {
                    (m, 1)
                } else if let Some(m) = r.strip_suffix(".lora_magnitude_vector") {
                    (m, 2)
                } else {
                    (r, 3)
                }
            }
            None => ("", 3),
        };
        if slot == 3 {
            if let Some(m) = module.strip_suffix(".weight")
                && saved_module(m)
            {
                copies.insert(module.to_string(), t);
                continue;
            }
            return Err(ExportError::Mismatch {
                tensor: name.clone(),
                message: "not a LoRA tensor (`lora_A.weight`, `lora_B.weight` or \
                          `lora_magnitude_vector` under `base_model.model.`) nor the copy of \
                          a module adapter_config.json lists in `modules_to_save`"
                    .into(),
            });
        }
        parts.entry(module.to_string()).or_default()[slot] = Some(t);
    }
    let mut out = BTreeMap::new();
    for (module, [a, b, mag]) in parts {
        let missing = |what: &str| ExportError::Mismatch {
            tensor: format!("{PEFT_PREFIX}{module}.{what}"),
            message: "missing from the adapter file".into(),
        };
        let a = a.ok_or_else(|| missing("lora_A.weight"))?;
        let b = b.ok_or_else(|| missing("lora_B.weight"))?;
        if cfg.use_dora && mag.is_none() {
            return Err(missing("lora_magnitude_vector"));
        }
        if !cfg.use_dora && mag.is_some() {
            return Err(ExportError::Mismatch {
                tensor: format!("{PEFT_PREFIX}{module}.lora_magnitude_vector"),
                message: "a DoRA magnitude, but adapter_config.json has use_dora: false".into(),
            });
        }
        out.insert(
            module,
            ModuleAdapter {
                a,
                b,
                magnitude: mag,
            },
        );
    }
    if out.is_empty() && copies.is_empty() {
        return Err(ExportError::AdapterConfig {
            path: file,
            message: "holds no LoRA tensors".into(),
        });
    }
    Ok((out, copies))
}

/// Refuses to merge into the base folder itself, or over a model unless `force`.
fn check_out_dir(base_dir: &Path, out_dir: &Path, force: bool) -> Result<(), ExportError> {
    if !out_dir.exists() {
        return Ok(());
    }
    let same = match (base_dir.canonicalize(), out_dir.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(ExportError::Invalid(format!(
            "the output folder {} is the base model's folder; choose another",
            out_dir.display()
        )));
    }
    let entries = std::fs::read_dir(out_dir).map_err(|source| ExportError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let holds_model = entries.flatten().any(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        n == "config.json" || n == INDEX_FILE || n.ends_with(".safetensors")
    });
    if holds_model && !force {
        return Err(ExportError::OutputExists {
            path: out_dir.to_path_buf(),
        });
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<serde_json::Value, ExportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ExportError::Corrupt {
        path: path.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    })
}

fn stage_json(staged: &mut Staged, path: &Path, v: &serde_json::Value) -> Result<(), ExportError> {
    let mut bytes = serde_json::to_vec_pretty(v).unwrap_or_default();
    bytes.push(b'\n');
    Ok(staged.write(path, &bytes)?)
}

/// Loads the base model of `base_dir` with the PEFT adapter of `adapter_dir` applied, in f32.
pub fn load_with_adapter(
    base_dir: &Path,
    adapter_dir: &Path,
) -> Result<(runner_model::CausalLm, runner_model::Adapters), ExportError> {
    load_with_adapter_on(base_dir, adapter_dir, BaseQuant::None)
}

/// [`load_with_adapter`] with the base quantized as `base` (QLoRA: NF4), as training ran it.
pub fn load_with_adapter_on(
    base_dir: &Path,
    adapter_dir: &Path,
    base: BaseQuant,
) -> Result<(runner_model::CausalLm, runner_model::Adapters), ExportError> {
    let cfg = peft::read_config(adapter_dir)?;
    let mut model = runner_model::load_folder(base_dir, DType::F32, &Device::Cpu)?;
    let mut plan = cfg.adapter_plan(Some(adapter_dir.to_path_buf()));
    plan.base_quant = base;
    let adapters = runner_model::inject(&mut model, &plan, 0)?;
    Ok((model, adapters))
}

/// After a merge: the largest |difference| between the logits of base + adapter and those of
/// the merged model on `rows` of token ids (all the same length), relative to the largest
/// |logit|.
pub fn max_logit_difference(
    base_dir: &Path,
    adapter_dir: &Path,
    merged_dir: &Path,
    rows: &[Vec<u32>],
) -> Result<f32, ExportError> {
    max_logit_difference_on(base_dir, adapter_dir, merged_dir, rows, BaseQuant::None)
}

/// [`max_logit_difference`] against base + adapter with the base quantized as `base` (compare
/// a [`merge_folder_into`] merge with what training computed).
pub fn max_logit_difference_on(
    base_dir: &Path,
    adapter_dir: &Path,
    merged_dir: &Path,
    rows: &[Vec<u32>],
    base: BaseQuant,
) -> Result<f32, ExportError> {
    let (with_adapter, _) = load_with_adapter_on(base_dir, adapter_dir, base)?;
    let merged = runner_model::load_folder(merged_dir, DType::F32, &Device::Cpu)?;
    let batch = fixed_batch(rows)?;
    let a = with_adapter.logits(&batch, false)?;
    let b = merged.logits(&batch, false)?.to_dtype(DType::F32)?;
    let diff = (&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = a.abs()?.max_all()?.to_scalar::<f32>()?;
    Ok(diff / scale.max(1e-30))
}

/// A batch of unpadded rows of equal length, all tokens attended to.
pub fn fixed_batch(rows: &[Vec<u32>]) -> Result<runner_model::Batch, ExportError> {
    let t = rows.first().map(Vec::len).unwrap_or(0);
    if t == 0 || rows.iter().any(|r| r.len() != t) {
        return Err(ExportError::Invalid(
            "token rows must be non-empty and of equal length".into(),
        ));
    }
    let ids: Vec<u32> = rows.concat();
    let mask = vec![1u8; ids.len()];
    let labels = ids.iter().map(|&i| i64::from(i)).collect();
    Ok(runner_model::Batch::from_attention_mask(
        rows.len(),
        t,
        ids,
        &mask,
        labels,
    )?)
}

/// What [`write_model_folder`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderReport {
    pub tensors: usize,
    pub bytes_written: u64,
    /// Adapted layers whose update was merged into the written weight.
    pub merged_modules: usize,
}

/// Writes a model held in memory (e.g. loaded from a GGUF base, adapters injected) as a
/// Hugging Face folder: `model.safetensors` with every adapter merged (`W + s·B·A`, DoRA
/// rescaled; `lora_modules_to_save` copies as trained), `config.json`, and `extra` files
/// (tokenizer) — all staged and renamed together. For bases that are not safetensors folders;
/// [`merge_folder`] streams those instead.
pub fn write_model_folder(
    model: &runner_model::CausalLm,
    extra: &[(String, Vec<u8>)],
    out_dir: &Path,
    dtype: DType,
    force: bool,
) -> Result<FolderReport, ExportError> {
    use runner_model::config::RopeScaling;
    if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(ExportError::Invalid(format!(
            "merged dtype {dtype:?} is not supported; use f32, bf16 or f16"
        )));
    }
    if matches!(model.cfg.rope_scaling, RopeScaling::Factors(_)) {
        return Err(ExportError::Invalid(
            "this model's RoPE scaling comes as per-frequency factors (a GGUF's rope_freqs), \
             which config.json cannot express; export it with export-gguf instead"
                .into(),
        ));
    }
    check_out_dir(Path::new(""), out_dir, force)?;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut merged_modules = 0;
    let mut put = |name: String, t: Tensor| -> Result<(), ExportError> {
        tensors.push((name, t.to_dtype(dtype)?.contiguous()?));
        Ok(())
    };
    put(
        "model.embed_tokens.weight".into(),
        model.embed_tokens.clone(),
    )?;
    for (i, layer) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        put(
            format!("{p}.input_layernorm.weight"),
            layer.input_layernorm.weight.clone(),
        )?;
        put(
            format!("{p}.post_attention_layernorm.weight"),
            layer.post_attention_layernorm.weight.clone(),
        )?;
        let a = &layer.self_attn;
        for (n, norm) in [("q_norm", &a.q_norm), ("k_norm", &a.k_norm)] {
            if let Some(norm) = norm {
                put(format!("{p}.self_attn.{n}.weight"), norm.weight.clone())?;
            }
        }
        for (proj, lin) in runner_io::names::PROJECTIONS
            .iter()
            .zip(layer.projections())
        {
            let n = proj.module;
            merged_modules += usize::from(lin.lora.is_some());
            put(format!("{p}.{n}.weight"), merged_weight(lin)?)?;
            if let Some(b) = &lin.bias {
                put(format!("{p}.{n}.bias"), b.clone())?;
            }
        }
    }
    put("model.norm.weight".into(), model.norm.weight.clone())?;
    let tied = model.lm_head.lora.is_none() && model.lm_head.weight.id() == model.embed_tokens.id();
    if !tied {
        merged_modules += usize::from(model.lm_head.lora.is_some());
        put("lm_head.weight".into(), merged_weight(&model.lm_head)?)?;
    }
    let mut cfg = model.cfg.clone();
    cfg.tie_word_embeddings = tied;
    let mut config = cfg.to_hf_json();
    if let Some(obj) = config.as_object_mut() {
        let name = match dtype {
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            _ => "float32",
        };
        obj.insert("torch_dtype".into(), serde_json::json!(name));
    }
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None)?;
    std::fs::create_dir_all(out_dir).map_err(|source| ExportError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut staged = Staged::default();
    staged.write(&out_dir.join("model.safetensors"), &bytes)?;
    stage_json(&mut staged, &out_dir.join("config.json"), &config)?;
    for (name, content) in extra {
        staged.write(&out_dir.join(name), content)?;
    }
    // With `force`, an earlier model's other shards would be read beside this one.
    if let Ok(entries) = std::fs::read_dir(out_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let weights = name.ends_with(".safetensors") || name == INDEX_FILE;
            if weights && !name.starts_with('.') && name != "model.safetensors" {
                let p = e.path();
                std::fs::remove_file(&p).map_err(|source| ExportError::Io { path: p, source })?;
            }
        }
    }
    staged.commit()?;
    Ok(FolderReport {
        tensors: tensors.len(),
        bytes_written: bytes.len() as u64,
        merged_modules,
    })
}

/// The weight a linear layer computes with: its (dequantized) frozen weight with an injected
/// LoRA/DoRA adapter merged in (`W + s·B·A`, DoRA rescaled per row), in f32.
pub fn merged_weight(lin: &runner_model::nn::Linear) -> Result<Tensor, ExportError> {
    let w = lin.dense_weight()?.to_dtype(DType::F32)?;
    match &lin.lora {
        None => Ok(w),
        Some(l) => {
            let m = ModuleAdapter {
                a: l.a.as_tensor().to_dtype(DType::F32)?,
                b: l.b.as_tensor().to_dtype(DType::F32)?,
                magnitude: match &l.magnitude {
                    Some(m) => Some(m.as_tensor().to_dtype(DType::F32)?),
                    None => None,
                },
            };
            merge_weight(&w, &m, l.scale)
        }
    }
}
