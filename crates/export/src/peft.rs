//! PEFT adapter files: `adapter_config.json` and `adapter_model.safetensors` with PEFT's names
//! (`base_model.model.<module>.lora_A.weight`, no `.default`), loadable with
//! `PeftModel.from_pretrained`.

use crate::ExportError;
use runner_model::Adapters;
use runner_recipe::plan::{AdapterPlan, LoraInit, TargetModules};
use std::path::Path;

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
pub fn adapter_weights(adapters: &Adapters) -> Result<Vec<u8>, ExportError> {
    let mut tensors = Vec::with_capacity(adapters.params.len());
    for (name, var) in &adapters.params {
        let t = var
            .as_tensor()
            .to_dtype(candle_core::DType::F32)
            .map_err(|e| ExportError::Io {
                path: name.into(),
                source: std::io::Error::other(e.to_string()),
            })?;
        tensors.push((name.clone(), t));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    Ok(safetensors::serialize(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(meta),
    )?)
}

/// Both adapter files as (file name, bytes), for writing into a folder or a checkpoint.
pub fn adapter_files(
    plan: &AdapterPlan,
    adapters: &Adapters,
    base_model: &str,
) -> Result<Vec<(&'static str, Vec<u8>)>, ExportError> {
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
) -> Result<(), ExportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for (name, bytes) in adapter_files(plan, adapters, base_model)? {
        write_atomically(&dir.join(name), &bytes).map_err(io(&dir.join(name)))?;
    }
    Ok(())
}

/// Writes to `.{name}.tmp-{pid}` beside the target, syncs, then renames over it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
