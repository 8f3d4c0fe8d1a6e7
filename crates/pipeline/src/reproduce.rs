//! Checking runs against their manifests: the inputs a recorded run read compared with what is
//! on disk now ([`input_differences`]), the recorded recipe reloaded for a rerun
//! ([`recorded_recipe`]), two adapters compared tensor by tensor ([`compare_adapters`]), loss
//! curves side by side ([`loss_curves`]), and what differs between two manifests ([`diff`]).

use crate::error::{Error, Result};
use crate::inputs::{FileId, InputIds};
use crate::manifest::Manifest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The recorded recipe (text and overrides) loaded again, with `output_dir` set to `out`.
pub fn recorded_recipe(m: &Manifest, out: &Path) -> Result<runner_recipe::Loaded> {
    let set_out = format!("output_dir={}", out.display());
    let mut overrides = m.recipe.overrides.clone();
    match overrides.iter_mut().find(|o| o.starts_with("output_dir=")) {
        Some(o) => *o = set_out,
        None => overrides.push(set_out),
    }
    runner_recipe::load_str(&m.recipe.name, &m.recipe.text, &overrides).map_err(|e| {
        Error::Refused(format!(
            "the recorded recipe no longer validates in this runner build:\n{}",
            e.render(false)
        ))
    })
}

/// A fresh folder for a rerun: `OUTPUT_DIR/reproduce-N`, N the first free number.
pub fn next_rerun_dir(output_dir: &Path) -> PathBuf {
    (1..)
        .map(|n| output_dir.join(format!("reproduce-{n}")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| output_dir.join("reproduce"))
}

/// Why `plan` (the recorded recipe reloaded) would not rerun the recorded run: differences in
/// the resolved plan (besides `output_dir`) and in every input's identity. Empty when the
/// rerun reads what the run read.
pub fn input_differences(m: &Manifest, plan: &runner_recipe::Plan) -> Result<Vec<String>> {
    let mut out = Vec::new();
    // A run records its plan with hub ids pinned to their commits: the reloaded recipe is
    // pinned the same way (a branch that moved since shows as a changed revision).
    let pinned = match crate::inputs::pin_hub(
        plan,
        crate::inputs::HubNeed::All,
        &runner_hub::Settings::from_env(),
        false,
    ) {
        Ok((p, _)) => p,
        Err(e) => {
            out.push(format!("the hub inputs cannot be resolved: {e:#}"));
            plan.clone()
        }
    };
    let plan = &pinned;
    let strip = |mut v: serde_json::Value| {
        if let Some(t) = v.get_mut("train").and_then(|t| t.as_object_mut()) {
            t.remove("output_dir");
        }
        v
    };
    let now = strip(serde_json::to_value(plan)?);
    let recorded = strip(m.plan.clone());
    for (key, a, b) in json_differences(&recorded, &now) {
        out.push(format!(
            "the plan resolves differently in this build: `{key}` was {a}, is now {b}"
        ));
    }
    let mut cache = runner_io::hash::HashCache::open(&runner_io::hash::HashCache::default_file());
    let ids = crate::inputs::materialized(&plan.model).and_then(|model_plan| {
        let tok = runner_data::load_tokenizer(&plan.model)?;
        crate::inputs::identify(plan, &model_plan, &tok, &mut cache)
    });
    let _ = cache.save();
    match ids {
        Ok(ids) => out.extend(id_differences(&m.inputs, &ids)),
        Err(e) => out.push(format!("the inputs cannot be read as recorded: {e:#}")),
    }
    Ok(out)
}

/// Differences between recorded and current input identities, one line each, naming the file.
pub fn id_differences(rec: &InputIds, now: &InputIds) -> Vec<String> {
    let mut out = Vec::new();
    if rec.model_source != now.model_source {
        out.push(format!(
            "base model: recorded {:?}, now {:?}",
            rec.model_source, now.model_source
        ));
    }
    // Model files by name inside the model folder (the cache folder may move).
    let by_name = |files: &[FileId]| -> Vec<FileId> {
        files
            .iter()
            .map(|f| FileId {
                path: f.path.file_name().map(PathBuf::from).unwrap_or_default(),
                ..f.clone()
            })
            .collect()
    };
    files_differences(
        "model file",
        &by_name(&rec.model_files),
        &by_name(&now.model_files),
        &mut out,
    );
    for (i, d) in rec.data.iter().enumerate() {
        match now.data.iter().find(|n| n.dataset == d.dataset) {
            Some(n) => files_differences("data file", &d.files, &n.files, &mut out),
            None => out.push(format!(
                "dataset {} (entry {i}) is no longer in the recipe",
                d.dataset
            )),
        }
    }
    if rec.tokenizer.fingerprint != now.tokenizer.fingerprint {
        out.push(format!(
            "tokenizer {}: fingerprint {} recorded, {} now",
            now.tokenizer.path.display(),
            short(&rec.tokenizer.fingerprint),
            short(&now.tokenizer.fingerprint)
        ));
    }
    if rec.chat_template != now.chat_template {
        out.push(format!(
            "chat template: recorded {:?}, now {:?}",
            rec.chat_template, now.chat_template
        ));
    }
    files_differences(
        "adapter file (lora_model_dir)",
        &rec.adapter_init,
        &now.adapter_init,
        &mut out,
    );
    out
}

fn short(h: &str) -> &str {
    &h[..h.len().min(16)]
}

fn files_differences(what: &str, rec: &[FileId], now: &[FileId], out: &mut Vec<String>) {
    for r in rec {
        match now.iter().find(|n| n.path == r.path) {
            None => out.push(format!("{what} {}: missing now", r.path.display())),
            Some(n) if n.blake3 != r.blake3 => out.push(format!(
                "{what} {} changed: blake3 {} ({} bytes) recorded, {} ({} bytes) now",
                r.path.display(),
                short(&r.blake3),
                r.size,
                short(&n.blake3),
                n.size
            )),
            Some(_) => {}
        }
    }
    for n in now {
        if !rec.iter().any(|r| r.path == n.path) {
            out.push(format!(
                "{what} {}: not in the recorded run",
                n.path.display()
            ));
        }
    }
}

/// How two adapter files compare.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterComparison {
    pub identical: bool,
    /// The largest absolute difference of any element and the tensor it is in (when not
    /// identical and the tensors line up).
    pub largest: Option<(String, f32)>,
    /// Tensors in one file only, or with different shapes.
    pub mismatched: Vec<String>,
}

/// Compares two `adapter_model.safetensors` files: byte for byte, and otherwise tensor by
/// tensor (largest absolute difference).
pub fn compare_adapters(a: &Path, b: &Path) -> Result<AdapterComparison> {
    let (ba, bb) = (std::fs::read(a)?, std::fs::read(b)?);
    if ba == bb {
        return Ok(AdapterComparison {
            identical: true,
            largest: None,
            mismatched: Vec::new(),
        });
    }
    let cpu = candle_core::Device::Cpu;
    let ta = candle_core::safetensors::load_buffer(&ba, &cpu)?;
    let tb = candle_core::safetensors::load_buffer(&bb, &cpu)?;
    let mut largest: Option<(String, f32)> = None;
    let mut mismatched = Vec::new();
    let names: std::collections::BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
    for name in names {
        match (ta.get(name), tb.get(name)) {
            (Some(x), Some(y)) if x.dims() == y.dims() => {
                let d = (x.to_dtype(candle_core::DType::F32)?
                    - y.to_dtype(candle_core::DType::F32)?)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
                if largest.as_ref().is_none_or(|(_, l)| d > *l) {
                    largest = Some((name.clone(), d));
                }
            }
            _ => mismatched.push(name.clone()),
        }
    }
    Ok(AdapterComparison {
        identical: false,
        largest,
        mismatched,
    })
}

/// One step of two loss curves: (step, loss of the first run, loss of the second).
pub type LossRow = (u64, Option<f64>, Option<f64>);

/// Training loss per step of two runs, side by side (steps in either).
pub fn loss_curves(a: &Path, b: &Path) -> Result<Vec<LossRow>> {
    let read = |dir: &Path| -> Result<BTreeMap<u64, f64>> {
        let records = runner_train::metrics::read(&dir.join("metrics.jsonl"))?;
        Ok(records
            .into_iter()
            .filter_map(|r| r.loss.map(|l| (r.step, l)))
            .collect())
    };
    let (la, lb) = (read(a)?, read(b)?);
    let steps: std::collections::BTreeSet<u64> = la.keys().chain(lb.keys()).copied().collect();
    Ok(steps
        .into_iter()
        .map(|s| (s, la.get(&s).copied(), lb.get(&s).copied()))
        .collect())
}

/// Leaves of two JSON values that differ: (path, a, b), `absent` for a missing leaf.
pub fn json_differences(
    a: &serde_json::Value,
    b: &serde_json::Value,
) -> Vec<(String, String, String)> {
    let (fa, fb) = (flatten(a), flatten(b));
    let keys: std::collections::BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
    let show = |v: Option<&serde_json::Value>| v.map_or("absent".to_string(), |v| v.to_string());
    keys.into_iter()
        .filter(|k| fa.get(*k) != fb.get(*k))
        .map(|k| (k.clone(), show(fa.get(k)), show(fb.get(k))))
        .collect()
}

fn flatten(v: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    fn go(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
        match v {
            serde_json::Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    go(&p, x, out);
                }
            }
            serde_json::Value::Array(a) if !a.is_empty() => {
                for (i, x) in a.iter().enumerate() {
                    go(&format!("{prefix}[{i}]"), x, out);
                }
            }
            _ => {
                out.insert(prefix.to_string(), v.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    go("", v, &mut out);
    out
}

/// What differs between two runs, by section: `runner` (version, build), `recipe` (hash and
/// overrides), `plan` (every resolved key), `inputs` (identities and hashes), `run` (seed,
/// world size, device, dtype, threads, prepared-data key), `outcome` (metrics) and `files`
/// (hashes of what each wrote). Stage timings and the recipe text itself are left out (the
/// plan and the recipe hash cover it).
pub fn diff(a: &Manifest, b: &Manifest) -> Result<Vec<(String, String, String, String)>> {
    let sections = |m: &Manifest| -> Result<Vec<(&'static str, serde_json::Value)>> {
        let files: BTreeMap<String, &String> = m
            .files
            .iter()
            .map(|f| (f.path.display().to_string(), &f.blake3))
            .collect();
        Ok(vec![
            ("runner", serde_json::to_value(&m.runner)?),
            (
                "recipe",
                serde_json::json!({"name": m.recipe.name, "blake3": m.recipe.blake3,
                                   "overrides": m.recipe.overrides}),
            ),
            ("plan", m.plan.clone()),
            ("inputs", serde_json::to_value(&m.inputs)?),
            (
                "run",
                serde_json::json!({"status": m.status(), "seed": m.seed, "world_size": m.world_size, "device": m.device, "gpu": m.gpu,
                                   "dtype": m.dtype, "threads": m.threads,
                                   "prepared_data_key": m.prepared_data.as_ref().map(|p| &p.cache_key)}),
            ),
            ("outcome", serde_json::to_value(&m.outcome)?),
            ("files", serde_json::to_value(files)?),
        ])
    };
    let (sa, sb) = (sections(a)?, sections(b)?);
    let mut out = Vec::new();
    for ((name, va), (_, vb)) in sa.iter().zip(&sb) {
        for (k, x, y) in json_differences(va, vb) {
            out.push((name.to_string(), k, x, y));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_differences_name_every_changed_leaf() {
        let a = serde_json::json!({"train": {"lr": 0.1, "steps": 3}, "d": [1, 2], "x": null});
        let b = serde_json::json!({"train": {"lr": 0.2, "steps": 3}, "d": [1], "y": true});
        let d = json_differences(&a, &b);
        let keys: Vec<&str> = d.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(keys, ["d[1]", "train.lr", "x", "y"]);
        assert_eq!(d[1], ("train.lr".into(), "0.1".into(), "0.2".into()));
        assert_eq!(d[0].2, "absent");
    }

    #[test]
    fn a_changed_data_file_is_named() {
        let f = |p: &str, h: &str| FileId {
            path: p.into(),
            size: 3,
            blake3: h.into(),
        };
        let ids = |h: &str| InputIds {
            base_model: "m".into(),
            model_source: crate::inputs::ModelSource::Builtin { name: "m".into() },
            model_files: vec![f("/a/model.safetensors", "aa")],
            data: vec![crate::inputs::DataInput {
                dataset: "d.jsonl".into(),
                files: vec![f("d.jsonl", h)],
            }],
            tokenizer: crate::inputs::TokenizerId {
                path: "t".into(),
                fingerprint: "ff".into(),
            },
            chat_template: None,
            adapter_init: Vec::new(),
        };
        assert!(id_differences(&ids("11"), &ids("11")).is_empty());
        let d = id_differences(&ids("11"), &ids("22"));
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].starts_with("data file d.jsonl changed"), "{d:?}");
        // The model folder may move (another cache root): files compare by name.
        let mut moved = ids("11");
        moved.model_files[0].path = "/b/model.safetensors".into();
        assert!(id_differences(&ids("11"), &moved).is_empty());
    }
}
