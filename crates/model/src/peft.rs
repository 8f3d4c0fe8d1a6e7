//! The PEFT adapter format, both directions, in one place: `adapter_config.json` and
//! `adapter_model.safetensors` with PEFT's names (`base_model.model.<module>.lora_A.weight`,
//! no `.default`), loadable with `PeftModel.from_pretrained`; reading them back into injected
//! adapters; and the check that a saved adapter fits a recipe's adapter plan
//! (`lora_model_dir`). Training (checkpoints, the final adapter), export and evaluation all
//! go through this module.

use crate::error::{Error, Result, io_err};
use crate::lora::{Adapters, MODULES_TO_SAVE};
use runner_recipe::plan::{AdapterPlan, LoraInit, TargetModules};
use std::path::Path;

pub use crate::lora::PEFT_PREFIX;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// `adapter_config.json` as PEFT 0.21 writes it for a causal-LM LoRA.
pub fn adapter_config(
    plan: &AdapterPlan,
    adapters: &Adapters,
    base_model: &str,
) -> serde_json::Value {
    let target_modules = match &plan.targets {
        // PEFT stores a regex as given, and a list (or "all-linear", once resolved) as the set
        // of leaf names it matched.
        TargetModules::Regex(r) => serde_json::Value::String(r.clone()),
        TargetModules::Names(_) | TargetModules::AllLinear => {
            let mut leaves: Vec<&str> = adapters
                .modules
                .iter()
                .map(|m| m.rsplit('.').next().unwrap_or(m))
                .collect();
            leaves.sort_unstable();
            leaves.dedup();
            serde_json::json!(leaves)
        }
    };
    let init = match plan.init {
        LoraInit::Kaiming => serde_json::json!(true),
        LoraInit::Gaussian => serde_json::json!("gaussian"),
        LoraInit::Pissa { niter: None } => serde_json::json!("pissa"),
        LoraInit::Pissa { niter: Some(n) } => serde_json::json!(format!("pissa_niter_{n}")),
    };
    let modules_to_save = if plan.modules_to_save.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::json!(plan.modules_to_save)
    };
    serde_json::json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": init,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": plan.alpha,
        "lora_dropout": plan.dropout,
        "modules_to_save": modules_to_save,
        "peft_type": "LORA",
        "r": plan.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": target_modules,
        "task_type": "CAUSAL_LM",
        "use_dora": plan.use_dora,
        "use_rslora": plan.use_rslora,
    })
}

/// The adapter's tensors serialized as safetensors (f32, PEFT names).
pub fn adapter_weights(adapters: &Adapters) -> Result<Vec<u8>> {
    let mut tensors = Vec::with_capacity(adapters.params.len());
    for (name, var) in &adapters.params {
        let t = var.as_tensor().to_dtype(candle_core::DType::F32)?;
        tensors.push((name.clone(), t));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
        .map_err(|e| Error::Adapter(format!("serializing the adapter weights: {e}")))
}

/// Both adapter files as (file name, bytes), for writing into a folder or a checkpoint.
pub fn adapter_files(
    plan: &AdapterPlan,
    adapters: &Adapters,
    base_model: &str,
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let mut config =
        serde_json::to_vec_pretty(&adapter_config(plan, adapters, base_model)).unwrap_or_default();
    config.push(b'\n');
    Ok(vec![
        (WEIGHTS_FILE, adapter_weights(adapters)?),
        (CONFIG_FILE, config),
    ])
}

/// Writes the adapter into `dir`, each file under a temporary name first, then renamed.
pub fn save_adapter(
    dir: &Path,
    plan: &AdapterPlan,
    adapters: &Adapters,
    base_model: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    // A PiSSA adapter only works on its residual base; the saved adapter is converted to a
    // plain LoRA of the original base, as PEFT recommends (path_initial_model_for_weight_conversion),
    // so PEFT, `runner eval` and `runner merge` use it with the unmodified base model.
    let converted = adapters.pissa_as_lora()?;
    let (plan, adapters) = match &converted {
        Some(a) => (pissa_plan_as_lora(plan), a),
        None => (plan.clone(), adapters),
    };
    let mut staged = runner_io::atomic::Staged::default();
    for (name, bytes) in adapter_files(&plan, adapters, base_model)? {
        staged.write(&dir.join(name), &bytes).map_err(from_io)?;
    }
    staged.commit().map_err(from_io)
}

/// The adapter plan of a PiSSA adapter converted to LoRA: rank 2r, `init_lora_weights: true`
/// and `lora_alpha` doubled (× √2 under rsLoRA) so that the scaling stays the same, as PEFT's
/// `save_pretrained` writes it.
pub fn pissa_plan_as_lora(plan: &AdapterPlan) -> AdapterPlan {
    AdapterPlan {
        r: 2 * plan.r,
        alpha: if plan.use_rslora {
            plan.alpha * 2f64.sqrt()
        } else {
            plan.alpha * 2.0
        },
        init: LoraInit::Kaiming,
        ..plan.clone()
    }
}

/// What an `adapter_config.json` written by PEFT (or by us) says, reduced to what the model
/// stage needs to rebuild the adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: TargetModules,
    pub use_rslora: bool,
    pub use_dora: bool,
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub scaling: f64,
    pub init: LoraInit,
    pub base_model: Option<String>,
    /// `modules_to_save`: modules whose whole weight the adapter file holds.
    pub modules_to_save: Vec<String>,
}

impl PeftConfig {
    /// The adapter plan that rebuilds this adapter; `init_from` is the adapter folder whose
    /// weights `runner_model::inject` then loads.
    pub fn adapter_plan(&self, init_from: Option<std::path::PathBuf>) -> AdapterPlan {
        AdapterPlan {
            kind: runner_recipe::plan::AdapterKind::Lora,
            base_quant: runner_recipe::plan::BaseQuant::None,
            init_from,
            r: self.r,
            alpha: self.alpha,
            dropout: self.dropout,
            scaling: self.scaling,
            targets: self.targets.clone(),
            modules_to_save: self.modules_to_save.clone(),
            use_dora: self.use_dora,
            use_rslora: self.use_rslora,
            init: self.init,
            loraplus_lr_ratio: None,
            loraplus_lr_embedding: 1e-6,
        }
    }
}

/// Reads `adapter_config.json` (a folder holding it, or the file itself). Fields PEFT writes
/// that change what the adapter computes and that we do not implement are refused by name.
pub fn read_config(path: &Path) -> Result<PeftConfig> {
    let file = if path.is_dir() {
        path.join(CONFIG_FILE)
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(io_err(&file))?;
    let err = |message: String| Error::AdapterConfig {
        path: file.clone(),
        message,
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(format!("invalid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| err("expected a JSON object".into()))?;
    let get = |k: &str| obj.get(k).unwrap_or(&serde_json::Value::Null);

    match get("peft_type").as_str() {
        Some("LORA") => {}
        Some(other) => {
            return Err(err(format!(
                "peft_type {other:?} is not supported (only \"LORA\")"
            )));
        }
        None => return Err(err("no `peft_type` (is this a PEFT adapter?)".into())),
    }
    match get("task_type") {
        serde_json::Value::Null => {}
        serde_json::Value::String(s) if s == "CAUSAL_LM" => {}
        other => {
            return Err(err(format!(
                "task_type {other} is not supported (only \"CAUSAL_LM\")"
            )));
        }
    }
    // Fields whose non-default value changes the adapter's maths or the base weights.
    let is_default = |v: &serde_json::Value| match v {
        serde_json::Value::Null | serde_json::Value::Bool(false) => true,
        serde_json::Value::Object(m) => m.is_empty(),
        serde_json::Value::Array(a) => a.is_empty(),
        _ => false,
    };
    for key in [
        "fan_in_fan_out",
        "rank_pattern",
        "alpha_pattern",
        "layers_to_transform",
        "layers_pattern",
        "exclude_modules",
        "layer_replication",
        "use_qalora",
        "lora_bias",
        "target_parameters",
        "trainable_token_indices",
        "use_bdlora",
        "alora_invocation_tokens",
        "megatron_config",
        "loftq_config",
        "eva_config",
        "corda_config",
        "arrow_config",
        "kasa_config",
        "lora_ga_config",
        "monteclora_config",
        "velora_config",
    ] {
        let value = get(key);
        if !is_default(value) {
            return Err(err(format!(
                "`{key}: {value}` is not supported; re-train without it or merge the adapter \
                 with PEFT first"
            )));
        }
    }
    match get("bias") {
        serde_json::Value::Null => {}
        serde_json::Value::String(s) if s == "none" => {}
        other => {
            return Err(err(format!(
                "`bias: {other}` is not supported (only \"none\")"
            )));
        }
    }
    let init = match get("init_lora_weights") {
        serde_json::Value::Null | serde_json::Value::Bool(_) => LoraInit::Kaiming,
        serde_json::Value::String(s) if s == "gaussian" => LoraInit::Gaussian,
        // PiSSA, OLoRA, LoftQ, ... change the base weights as well as the adapter.
        other => {
            return Err(err(format!(
                "`init_lora_weights: {other}` changes the base weights and is not supported; \
                 convert the adapter to plain LoRA with PEFT first"
            )));
        }
    };
    let r = get("r").as_u64().filter(|&r| r > 0).ok_or_else(|| {
        err(format!(
            "`r` must be a positive integer, found {}",
            get("r")
        ))
    })? as usize;
    let alpha = get("lora_alpha").as_f64().ok_or_else(|| {
        err(format!(
            "`lora_alpha` must be a number, found {}",
            get("lora_alpha")
        ))
    })?;
    let dropout = get("lora_dropout").as_f64().unwrap_or(0.0);
    let use_rslora = get("use_rslora").as_bool().unwrap_or(false);
    let use_dora = get("use_dora").as_bool().unwrap_or(false);
    let targets = match get("target_modules") {
        serde_json::Value::String(s) if s == "all-linear" => TargetModules::AllLinear,
        serde_json::Value::String(s) => TargetModules::Regex(s.clone()),
        serde_json::Value::Array(a) => {
            let mut names = Vec::with_capacity(a.len());
            for x in a {
                names.push(
                    x.as_str()
                        .ok_or_else(|| err(format!("`target_modules` entry {x} is not a string")))?
                        .to_string(),
                );
            }
            if names.is_empty() {
                return Err(err("`target_modules` is empty".into()));
            }
            TargetModules::Names(names)
        }
        other => {
            return Err(err(format!(
                "`target_modules` must be a list or a regex string, found {other}"
            )));
        }
    };
    let modules_to_save = match get("modules_to_save") {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::Array(a) => {
            let mut names = Vec::with_capacity(a.len());
            for x in a {
                let name = x
                    .as_str()
                    .ok_or_else(|| err(format!("`modules_to_save` entry {x} is not a string")))?;
                if !MODULES_TO_SAVE
                    .iter()
                    .any(|m| *m == name || m.ends_with(&format!(".{name}")))
                {
                    return Err(err(format!(
                        "`modules_to_save` entry `{name}` is not supported (only embed_tokens \
                         and lm_head can be trained fully)"
                    )));
                }
                names.push(name.to_string());
            }
            names
        }
        other => {
            return Err(err(format!(
                "`modules_to_save` must be a list of module names, found {other}"
            )));
        }
    };
    let scaling = if use_rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    };
    Ok(PeftConfig {
        r,
        alpha,
        dropout,
        targets,
        use_rslora,
        use_dora,
        scaling,
        init,
        base_model: get("base_model_name_or_path").as_str().map(str::to_string),
        modules_to_save,
    })
}

fn from_io(e: runner_io::Error) -> Error {
    Error::Io {
        path: e.path,
        source: e.source,
    }
}

/// The vocabulary rows of the embedding / LM-head copies in a saved adapter file, if any.
pub(crate) fn saved_vocab_rows(file: &Path) -> Result<Option<usize>> {
    if !file.exists() {
        return Ok(None); // reported by `load_adapter_weights`
    }
    use crate::weights::TensorSource;
    let src = crate::weights::SafetensorsSource::open(&[file.to_path_buf()])?;
    Ok(MODULES_TO_SAVE
        .iter()
        .filter_map(|m| src.shape_of(&format!("{PEFT_PREFIX}{m}.weight")))
        .filter_map(|shape| shape.first().copied())
        .max())
}

/// Loads `adapter_model.safetensors` (PEFT names, no `.default`) into the injected adapters.
pub fn load_adapter_weights(adapters: &Adapters, dir: &Path) -> Result<()> {
    let file = dir.join(WEIGHTS_FILE);
    if !file.exists() {
        return Err(Error::Adapter(format!(
            "{}: no adapter_model.safetensors (a PEFT adapter folder is expected)",
            dir.display()
        )));
    }
    load_adapter_file(adapters, &file)
}

/// Loads adapter weights from one safetensors file with PEFT names.
pub fn load_adapter_file(adapters: &Adapters, file: &Path) -> Result<()> {
    let file = file.to_path_buf();
    let src = crate::weights::SafetensorsSource::open(std::slice::from_ref(&file))?;
    use crate::weights::TensorSource;
    for (name, var) in &adapters.params {
        let found = src.shape_of(name).ok_or_else(|| Error::MissingTensor {
            source_name: file.display().to_string(),
            name: name.clone(),
        })?;
        if found != var.dims() {
            return Err(Error::ShapeMismatch {
                source_name: file.display().to_string(),
                name: name.clone(),
                expected: var.dims().to_vec(),
                found,
            });
        }
        let t = src.load(name, var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

/// Why the adapter saved in `dir` cannot continue under `plan` (`lora_model_dir`): each
/// setting that shapes the adapter must be the saved one. Empty when they agree.
pub fn incompatibilities(plan: &AdapterPlan, dir: &Path) -> Vec<String> {
    let saved = match read_config(dir) {
        Ok(saved) => saved,
        Err(e) => return vec![format!("`lora_model_dir`: {e}")],
    };
    let a = plan;
    let mut out = Vec::new();
    for (what, recipe, adapter) in [
        ("lora_r", a.r.to_string(), saved.r.to_string()),
        ("lora_alpha", a.alpha.to_string(), saved.alpha.to_string()),
        (
            "peft_use_dora",
            a.use_dora.to_string(),
            saved.use_dora.to_string(),
        ),
        (
            "peft_use_rslora",
            a.use_rslora.to_string(),
            saved.use_rslora.to_string(),
        ),
        (
            "lora_modules_to_save",
            format!("{:?}", a.modules_to_save),
            format!("{:?}", saved.modules_to_save),
        ),
    ] {
        if recipe != adapter {
            out.push(format!(
                "`{what}` is {recipe} in the recipe but {adapter} in {}/{CONFIG_FILE}; make them equal",
                dir.display()
            ));
        }
    }
    out
}
