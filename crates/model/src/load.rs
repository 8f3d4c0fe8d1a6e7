//! Resolving `base_model` (a folder, a `.gguf` file, or a hub id in the local Hugging Face
//! cache) and building the model from it.

use crate::config::ModelConfig;
use crate::error::{Error, Result, io_err};
use crate::llama::CausalLm;
use crate::weights::{SafetensorsSource, StreamingQuantizer, TensorSource, Weights};
use candle_core::{DType, Device};
use runner_recipe::plan::{AdapterPlan, BaseQuant, LoraInit, ModelPlan};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A loaded base model and where it came from.
pub struct LoadedModel {
    pub model: CausalLm,
    /// The folder or file the weights were read from.
    pub path: PathBuf,
    /// The GGUF metadata (tokenizer, chat template) when loaded from a GGUF file.
    pub gguf: Option<crate::gguf::GgufInfo>,
}

/// Where the weights of `base_model` are.
#[derive(Debug, Clone, PartialEq)]
pub enum Checkpoint {
    /// A Hugging Face folder with `config.json` and safetensors.
    Folder(PathBuf),
    /// A single GGUF file.
    Gguf(PathBuf),
}

/// Resolves a `base_model` string: an existing path, else a hub id in the local cache.
pub fn resolve(base_model: &str, revision: Option<&str>) -> Result<Checkpoint> {
    let p = Path::new(base_model);
    if p.is_file() {
        return Ok(Checkpoint::Gguf(p.to_path_buf()));
    }
    if p.is_dir() {
        return Ok(Checkpoint::Folder(p.to_path_buf()));
    }
    if base_model.ends_with(".gguf") {
        return Err(Error::Io {
            path: p.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "GGUF file not found"),
        });
    }
    crate::hub::snapshot(base_model, revision).map(Checkpoint::Folder)
}

/// Loads the model a [`ModelPlan`] names, in f32 on `device`.
pub fn load(plan: &ModelPlan, device: &Device) -> Result<LoadedModel> {
    load_with(plan, DType::F32, device)
}

/// Loads the model a [`ModelPlan`] names, in `dtype` on `device`.
pub fn load_with(plan: &ModelPlan, dtype: DType, device: &Device) -> Result<LoadedModel> {
    load_streaming(plan, dtype, device, None)
}

/// Loads the base for training `adapter`: with `load_in_4bit` / `load_in_8bit` each decoder
/// projection is quantized as it is read and dropped before the next one
/// ([`StreamingQuantizer`]), so the peak while loading is the quantized model plus the largest
/// tensor, not the whole model in `dtype` (issue 12). PiSSA is the exception: it splits the
/// full-precision weight and the residual is what gets quantized, so that base loads whole and
/// [`crate::inject`] quantizes after the split.
pub fn load_for_adapter(
    plan: &ModelPlan,
    adapter: &AdapterPlan,
    dtype: DType,
    device: &Device,
) -> Result<LoadedModel> {
    let pissa = matches!(adapter.init, LoraInit::Pissa { .. });
    if adapter.base_quant == BaseQuant::None || pissa {
        return load_with(plan, dtype, device);
    }
    let quantizer = StreamingQuantizer::new(adapter.base_quant);
    let mut loaded = load_streaming(plan, dtype, device, Some(quantizer.clone()))?;
    attach(&quantizer, &mut loaded.model)?;
    Ok(loaded)
}

fn load_streaming(
    plan: &ModelPlan,
    dtype: DType,
    device: &Device,
    quantizer: Option<Arc<StreamingQuantizer>>,
) -> Result<LoadedModel> {
    match resolve(&plan.base_model, plan.revision.as_deref())? {
        Checkpoint::Folder(dir) => {
            let config = match &plan.config {
                Some(c) => match resolve(c, plan.revision.as_deref())? {
                    Checkpoint::Folder(d) => Some(d.join("config.json")),
                    Checkpoint::Gguf(f) => Some(f),
                },
                None => None,
            };
            let model = load_folder_with_config(&dir, config.as_deref(), dtype, device, quantizer)?;
            Ok(LoadedModel {
                model,
                path: dir,
                gguf: None,
            })
        }
        Checkpoint::Gguf(file) => {
            let (model, info) = crate::gguf::load_gguf_with(&file, dtype, device, quantizer)?;
            Ok(LoadedModel {
                model,
                path: file,
                gguf: Some(info),
            })
        }
    }
}

/// Loads a Hugging Face folder (`config.json` + safetensors).
pub fn load_folder(dir: &Path, dtype: DType, device: &Device) -> Result<CausalLm> {
    load_folder_with_config(dir, None, dtype, device, None)
}

fn load_folder_with_config(
    dir: &Path,
    config: Option<&Path>,
    dtype: DType,
    device: &Device,
    quantizer: Option<Arc<StreamingQuantizer>>,
) -> Result<CausalLm> {
    let files = safetensors_files(dir)?;
    let config_path = config
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join("config.json"));
    if !config_path.exists() {
        return Err(Error::Config {
            path: config_path,
            message: "config.json not found".into(),
        });
    }
    let cfg = ModelConfig::from_file(&config_path)?;
    let source: Arc<dyn TensorSource> = Arc::new(SafetensorsSource::open(&files)?);
    let mut weights = Weights::new(source, dtype, device.clone());
    if let Some(q) = quantizer {
        weights = weights.with_quantizer(q);
    }
    CausalLm::load(&weights, &cfg)
}

/// The safetensors files of a folder: `model.safetensors`, or the shards listed by
/// `model.safetensors.index.json`. Pickle-only folders are refused.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Safetensors {
            path: index.clone(),
            message: format!("invalid index: {e}"),
        })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Safetensors {
                path: index.clone(),
                message: "no `weight_map` object".into(),
            })?;
        let mut shards: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
        shards.sort();
        shards.dedup();
        let files: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        for f in &files {
            if !f.exists() {
                return Err(Error::Safetensors {
                    path: f.clone(),
                    message: format!("shard listed in {} is missing", index.display()),
                });
            }
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    let mut pickles = Vec::new();
    let mut others = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".bin") || name.ends_with(".pt") || name.ends_with(".pth") {
            pickles.push(name);
        } else if name.ends_with(".safetensors") {
            others.push(e.path());
        }
    }
    if others.len() == 1 {
        return Ok(others);
    }
    if !pickles.is_empty() {
        pickles.sort();
        return Err(Error::PickleOnly {
            path: dir.to_path_buf(),
            files: pickles.join(", "),
        });
    }
    Err(Error::NoWeights {
        path: dir.to_path_buf(),
    })
}

/// Gives every weight `quantizer` quantized while loading to its layer; errors if one has no
/// layer (a name mismatch that would leave a NaN placeholder in the model).
fn attach(
    quantizer: &StreamingQuantizer,
    model: &mut CausalLm,
) -> Result<crate::quant::QuantSummary> {
    let mut sum = crate::quant::QuantSummary::default();
    for lin in model.linears_mut() {
        if let Some(q) = quantizer.take(&format!("{}.weight", lin.name)) {
            let (rows, cols) = q.dims();
            sum.layers += 1;
            sum.params += rows * cols;
            sum.bytes += q.nbytes();
            lin.quant = Some(q);
        }
    }
    if let Some(name) = quantizer.leftover() {
        return Err(Error::Adapter(format!(
            "internal: quantized `{name}` while loading but no layer took it"
        )));
    }
    Ok(sum)
}

/// Injects the adapters the plan describes; with `lora_model_dir` the weights come from that
/// PEFT adapter. With `load_in_4bit` / `load_in_8bit` (`plan.base_quant`) the frozen decoder
/// weights are quantized first ([`crate::quantize_frozen`]). `lora_modules_to_save`
/// become trainable copies ([`crate::lora::add_modules_to_save`]); a saved adapter whose embedding copy has
/// more rows than the model (tokens added when it was trained) grows the vocabulary first.
pub fn inject(
    model: &mut CausalLm,
    plan: &AdapterPlan,
    seed: u64,
) -> Result<crate::lora::Adapters> {
    let s = crate::lora::LoraSettings::from_plan(plan)?;
    if let Some(dir) = &plan.init_from {
        let rows = crate::peft::saved_vocab_rows(&dir.join(crate::peft::WEIGHTS_FILE))?;
        if let Some(rows) = rows.filter(|&r| r > model.cfg.vocab_size) {
            model.resize_token_embeddings(rows)?;
        }
    }
    // PiSSA splits the full-precision weight; the residual is what gets quantized (QLoRA).
    let pissa = matches!(s.init, LoraInit::Pissa { .. });
    if !pissa {
        crate::llama::quantize_frozen(model, plan.base_quant)?;
    }
    let mut adapters = crate::lora::inject_settings(model, &s, seed)?;
    if pissa {
        crate::llama::quantize_frozen(model, plan.base_quant)?;
    }
    crate::lora::add_modules_to_save(model, &mut adapters, &plan.modules_to_save)?;
    if let Some(dir) = &plan.init_from {
        crate::peft::load_adapter_weights(&adapters, dir)?;
    }
    Ok(adapters)
}
