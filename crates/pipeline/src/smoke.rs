//! Smoke runs (issue 19): a shared recipe trained as written, in seconds, on a CPU, with
//! documented substitutions — a tiny random model of the same architecture family, the
//! recipe's tokenizer when it is on this machine (else a built-in one), the first rows of the
//! recipe's data (generated rows in its format when a hub dataset is not on this machine) and
//! a handful of steps. The substitutions are `--set` overrides on the recipe's own text, so the
//! recipe is validated again and `run.json` records them. Everything else runs for real
//! through [`crate::run_with`] and fails where the real run would; afterwards the adapter is
//! loaded back into the tiny model and `adapter_config.json` is checked against the recipe's
//! target modules.

use crate::error::bail;
use crate::error::{Context, Error, Result};
use runner_model::{Arch, ModelConfig};
use runner_recipe::Loaded;
use runner_recipe::plan::{
    AlpacaVariant, DatasetFormat, DatasetPlan, EvalSchedule, ModelPlan, Plan, SaveEvery,
    TargetModules,
};
use std::path::{Path, PathBuf};

/// Rows read from each dataset.
pub const ROWS: u64 = 32;
/// Optimizer steps.
pub const STEPS: u64 = 4;
/// `save_steps` / `eval_steps` larger than the run become this, so checkpoints and evaluation
/// happen inside it.
const EVERY: u64 = 2;

/// What a smoke run cannot tell, said after every one.
pub const NOT_CHECKED: &str = "not checked by a smoke run: the real model's memory and speed \
(`runner run RECIPE --dry-run --plan-device DEVICE` plans memory from config.json alone), \
its weights' numerics and the quality of training (random tiny model, a few steps), and the \
data past the rows read";

/// A recipe made ready for a smoke run.
pub struct Smoke {
    /// The recipe as the smoke run runs it: its own text, the user's overrides, then the
    /// substitutions as overrides.
    pub loaded: Loaded,
    /// Each substitution, one line, to say before the run.
    pub substitutions: Vec<String>,
    /// Holds the tiny model and generated rows, and the outputs unless `output_dir` was set on
    /// the command line (then it is `OUTPUT_DIR-smoke-model` and stays beside them).
    pub work_dir: PathBuf,
    /// The outputs are inside `work_dir`.
    pub temporary_outputs: bool,
}

/// What the smoke run checked after training, one line each.
pub struct Checked {
    pub lines: Vec<String>,
}

impl Smoke {
    /// Removes the work folder (the tiny model, generated rows, temporary outputs).
    pub fn clean_up(&self) -> std::io::Result<()> {
        std::fs::remove_dir_all(&self.work_dir)
    }
}

/// A YAML double-quoted scalar (JSON's string syntax is a subset of it).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Recipe keys naming model files that a smoke run substitutes, so a local path there that
/// does not exist (a model not fetched on this machine) is no error for it.
const MODEL_PATH_KEYS: [&str; 3] = ["base_model", "base_model_config", "tokenizer_config"];

/// The recipe as loaded for a smoke run: `result` is the ordinary load. When its only errors
/// are model paths that do not exist on this machine, the recipe is validated again with those
/// keys set aside, and the returned plan keeps the paths as written ([`prepare`] substitutes
/// them); any other error is the real run's, returned as is.
pub fn tolerate_absent_model(
    result: Result<Loaded, runner_recipe::LoadError>,
) -> Result<Loaded, runner_recipe::LoadError> {
    let Err(runner_recipe::LoadError::Invalid {
        sources,
        diagnostics,
    }) = &result
    else {
        return result;
    };
    let absent = |d: &runner_recipe::Diagnostic| {
        MODEL_PATH_KEYS.contains(&d.path.as_str()) && d.message.ends_with("does not exist")
    };
    if diagnostics.is_empty() || !diagnostics.iter().all(absent) {
        return result;
    }
    let mut overrides = sources.overrides.clone();
    let mut originals = Vec::new();
    for d in diagnostics {
        let Some(value) = written_value(&sources.text, &sources.overrides, &d.path) else {
            return result;
        };
        originals.push((d.path.clone(), value));
        overrides.push(match d.path.as_str() {
            "base_model" => "base_model=builtin:tiny-llama".to_string(),
            key => format!("{key}="),
        });
    }
    let mut loaded = runner_recipe::load_str(&sources.name, &sources.text, &overrides)?;
    for (key, value) in originals {
        let m = &mut loaded.plan.model;
        match key.as_str() {
            "base_model" => m.base_model = value,
            "base_model_config" => m.config = Some(value),
            _ => m.tokenizer = Some(value),
        }
    }
    loaded.sources.overrides = sources.overrides.clone();
    Ok(loaded)
}

/// A top-level string key as the recipe sets it: its last `--set key=value`, else the file.
fn written_value(text: &str, overrides: &[String], key: &str) -> Option<String> {
    if let Some(v) = overrides
        .iter()
        .rev()
        .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
    {
        let v = v.trim();
        return Some(serde_json::from_str::<String>(v).unwrap_or_else(|_| v.to_string()));
    }
    let tree = runner_recipe::yaml::parse(text).ok()?;
    tree.as_map()?
        .iter()
        .rev()
        .find(|(k, _)| k.name == key)
        .and_then(|(_, node)| match &node.value {
            runner_recipe::yaml::Value::Str(s) => Some(s.clone()),
            _ => None,
        })
}

/// Prepares the smoke run of `loaded` (validated as written): writes the tiny model and any
/// generated rows into a new work folder and reloads the recipe with the substitutions.
pub fn prepare(loaded: &Loaded) -> Result<Smoke> {
    let plan = &loaded.plan;
    let user_output = loaded
        .sources
        .overrides
        .iter()
        .any(|o| o.starts_with("output_dir="));
    let work_dir = work_folder(user_output.then_some(plan.train.output_dir.as_path()))?;
    let mut subs = Vec::new();
    let mut sets: Vec<String> = Vec::new();

    // The tokenizer first: the tiny model's vocabulary and BOS/EOS follow it.
    let tok_src = plan
        .model
        .tokenizer
        .clone()
        .unwrap_or_else(|| plan.model.base_model.clone());
    let base_only = |tokenizer: &str| ModelPlan {
        tokenizer: Some(tokenizer.to_string()),
        // The recipe's `tokens` are new to the real vocabulary too: left out of the size.
        added_tokens: Vec::new(),
        ..plan.model.clone()
    };
    let real_tok = is_local(&tok_src, plan.model.revision.as_deref());
    // Named so that files named after the model (`export_gguf`'s) get the real run's names.
    let stem = crate::export::model_name(plan);
    let model_dir = work_dir.join("model").join(format!("{stem}.tiny"));
    let builtin_tok = tok_src.strip_prefix("builtin:");
    let (tok, tok_note) = if real_tok && builtin_tok.is_none() {
        let tok = runner_data::load_tokenizer(&ModelPlan {
            special_tokens: Default::default(),
            ..base_only(&tok_src)
        })?;
        let note = format!(
            "the recipe's ({}, {} ids)",
            tok.path.display(),
            tok.vocab_size()
        );
        sets.push(format!("tokenizer_config={}", quoted(&tok_src)));
        (tok, note)
    } else {
        // Saved beside the tiny model, which is where the run then finds it.
        runner_data::tokenizer::TextTokenizer::builtin(builtin_tok.unwrap_or("smoke"))?
            .save_pretrained(&model_dir)?;
        if plan.model.tokenizer.is_some() {
            sets.push("tokenizer_config=".into());
        }
        // The recipe's special tokens exist in its real tokenizer: they are counted in.
        let tok = runner_data::load_tokenizer(&ModelPlan {
            base_model: model_dir.display().to_string(),
            ..base_only(&model_dir.display().to_string())
        })?;
        let note = match builtin_tok {
            Some(_) => format!("the recipe's ({tok_src}, {} ids)", tok.vocab_size()),
            None => format!(
                "{tok_src} is not on this machine: runner's built-in byte-level tokenizer ({} \
                 ids with the recipe's special tokens; ChatML is its own chat template), and \
                 the vocabulary sized to it",
                tok.vocab_size()
            ),
        };
        (tok, note)
    };

    // The model: the real config when it is here, else the family's defaults.
    let (real, found) = real_config(&plan.model)?;
    let (family, family_note) = match real {
        Some(cfg) => (cfg, format!("from {found}")),
        None => {
            let (arch, how) = guess_arch(&plan.model);
            (
                runner_model::tiny::family_defaults(arch),
                format!("config.json not on this machine; family {how}"),
            )
        }
    };
    let vocab = if real_tok && found != "none" {
        family.vocab_size.max(tok.vocab_size())
    } else {
        tok.vocab_size()
    };
    let (cfg, notes) = runner_model::tiny::smoke_like(
        &family,
        vocab,
        tok.bos.as_ref().map(|t| t.id),
        tok.eos.as_ref().map(|t| t.id),
    );
    runner_model::tiny::write_tiny(&model_dir, &cfg, plan.train.seed)?;
    sets.push(format!(
        "base_model={}",
        quoted(&model_dir.display().to_string())
    ));
    if plan.model.config.is_some() {
        sets.push("base_model_config=".into());
    }
    let mut features = Vec::new();
    if cfg.num_key_value_heads < cfg.num_attention_heads {
        features.push("grouped-query attention".to_string());
    }
    if cfg.qkv_bias {
        features.push("q/k/v biases".into());
    }
    if cfg.qk_norm {
        features.push("q/k norm".into());
    }
    if cfg.tie_word_embeddings {
        features.push("tied embeddings".into());
    }
    if let Some(w) = cfg.sliding_window.iter().flatten().next() {
        features.push(format!("sliding window {w}"));
    }
    subs.push(format!(
        "model:     {} → a tiny random {} ({family_note}): {} layers, hidden {}, {} heads / {} KV \
         heads, vocab {}{}{}",
        plan.model.base_model,
        cfg.arch.hf_name(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.vocab_size,
        features
            .iter()
            .map(|f| format!(", {f}"))
            .collect::<String>(),
        notes.iter().map(|n| format!("; {n}")).collect::<String>()
    ));
    subs.push(format!("tokenizer: {tok_note}"));

    // The adapter: same settings, the rank capped to the tiny model's narrowest target.
    let a = &plan.adapter;
    let names: Vec<String> = cfg.linear_shapes().iter().map(|l| l.0.clone()).collect();
    if let Ok(selected) = runner_model::lora::select_targets(&names, &a.targets) {
        let cap = cfg
            .linear_shapes()
            .iter()
            .filter(|l| selected.contains(&l.0))
            .map(|l| l.1.min(l.2))
            .min()
            .unwrap_or(a.r);
        if a.r > cap {
            sets.push(format!("lora_r={cap}"));
            subs.push(format!(
                "adapter:   lora_r {} → {cap} (the tiny model's narrowest targeted layer); \
                 lora_alpha, targets, quantization, DoRA, rsLoRA and init kept",
                a.r
            ));
        }
    }
    if let Some(dir) = &a.init_from {
        // Its shapes are the real model's: checked against the recipe as the real run checks,
        // then not loaded.
        let missing = runner_model::peft::incompatibilities(a, dir);
        if !missing.is_empty() {
            bail!(
                "{} recipe setting(s) cannot run in this build (nothing was started):\n  {}",
                missing.len(),
                missing.join("\n  ")
            );
        }
        sets.push("lora_model_dir=".into());
        subs.push(format!(
            "adapter:   lora_model_dir {} not loaded (its shapes are the real model's): a fresh \
             adapter",
            dir.display()
        ));
    }

    // The data: the first rows of each dataset; generated rows for a hub dataset not here.
    for (list, key) in [
        (&plan.data.datasets, "datasets"),
        (&plan.data.test_datasets, "test_datasets"),
    ] {
        for (i, ds) in list.iter().enumerate() {
            match runner_data::source::resolve(ds) {
                Ok(_) => subs.push(format!(
                    "data:      {key}[{i}] {}: its first {ROWS} rows, through the recipe's format",
                    ds.path
                )),
                Err(runner_data::DataError::NotFound { .. }) if is_hub_id(&ds.path) => {
                    let file = work_dir.join(format!("{key}-{i}.jsonl"));
                    let rows = generated_rows(ds, &tok);
                    runner_io::atomic::write(&file, rows.as_bytes())?;
                    let at = format!("{key}[{i}]");
                    sets.push(format!("{at}.path={}", quoted(&file.display().to_string())));
                    for (set, field) in [
                        (!ds.data_files.is_empty(), "data_files"),
                        (ds.name.is_some(), "name"),
                        (ds.ds_type.is_some(), "ds_type"),
                        (ds.revision.is_some(), "revision"),
                    ] {
                        if set {
                            sets.push(format!("{at}.{field}="));
                        }
                    }
                    subs.push(format!(
                        "data:      {at} {} is not on this machine: {ROWS} generated rows in its \
                         format and field mapping ({})",
                        ds.path,
                        file.display()
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    // Training: a handful of steps, checkpoints and evaluation inside them.
    let t = &plan.train;
    let steps = t.max_steps.map_or(STEPS, |s| s.min(STEPS));
    sets.push(format!("max_steps={steps}"));
    let mut train_note = format!("max_steps {steps}");
    // An epoch of the smoke data is a step or two, so "per epoch" would mean every step.
    match t.save.every {
        SaveEvery::Steps(n) if n > EVERY => {
            sets.push(format!("save_steps={EVERY}"));
            train_note.push_str(&format!(", save_steps {n} → {EVERY}"));
        }
        SaveEvery::PerEpoch(n) => {
            sets.push("saves_per_epoch=".into());
            sets.push(format!("save_steps={EVERY}"));
            train_note.push_str(&format!(", saves_per_epoch {n} → save_steps {EVERY}"));
        }
        _ => {}
    }
    match t.eval {
        EvalSchedule::Steps(n) if n > EVERY => {
            sets.push(format!("eval_steps={EVERY}"));
            train_note.push_str(&format!(", eval_steps {n} → {EVERY}"));
        }
        EvalSchedule::PerEpoch(n) => {
            sets.push("evals_per_epoch=".into());
            sets.push(format!("eval_steps={EVERY}"));
            train_note.push_str(&format!(", evals_per_epoch {n} → eval_steps {EVERY}"));
        }
        _ => {}
    }
    if let Some(w) = &t.loss_watchdog {
        // A random model's loss is about ln(vocab) by construction.
        sets.push("loss_watchdog_threshold=".into());
        sets.push("loss_watchdog_patience=".into());
        train_note.push_str(&format!(
            ", loss watchdog off (threshold {}: a random model starts near ln(vocab) = {:.1})",
            w.threshold,
            (cfg.vocab_size as f64).ln()
        ));
    }
    if !matches!(t.resume, runner_recipe::plan::Resume::Fresh) {
        sets.push("resume_from_checkpoint=".into());
        sets.push("auto_resume_from_checkpoints=".into());
        train_note.push_str(", no resuming (checkpoints of the real model)");
    }
    subs.push(format!("training:  {train_note}, on the CPU"));

    if user_output {
        subs.push(format!(
            "outputs:   {} (output_dir given; the tiny model and generated rows beside it, in {})",
            t.output_dir.display(),
            work_dir.display()
        ));
    } else {
        let out = work_dir.join("output");
        sets.push(format!("output_dir={}", quoted(&out.display().to_string())));
        subs.push(format!(
            "outputs:   {} (removed after a smoke run that passes; `--set output_dir=DIR` keeps \
             them)",
            out.display()
        ));
    }

    let mut overrides = loaded.sources.overrides.clone();
    overrides.extend(sets);
    let smoke = runner_recipe::load_str(&loaded.sources.name, &loaded.sources.text, &overrides)
        .map_err(|e| {
            Error::Refused(format!(
                "the smoke run's substitutions do not validate:\n{}",
                e.render(false)
            ))
        })?;
    Ok(Smoke {
        loaded: smoke,
        substitutions: subs,
        work_dir,
        temporary_outputs: !user_output,
    })
}

/// Marks a folder as a smoke run's work folder, which a later smoke run may replace.
const WORK_MARK: &str = ".runner-smoke";

/// A new work folder: `OUTPUT_DIR-smoke-model` beside outputs the user asked to keep (replacing
/// an earlier smoke run's, never anything else), else a fresh folder under the system's
/// temporary folder.
fn work_folder(kept_output: Option<&Path>) -> Result<PathBuf> {
    let beside = kept_output.and_then(|out| {
        let name = out.file_name()?.to_string_lossy().into_owned();
        Some(out.with_file_name(format!("{name}-smoke-model")))
    });
    let dir = match beside {
        Some(dir) => {
            if dir.join(WORK_MARK).is_file() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("replacing the smoke folder {}", dir.display()))?;
            } else if dir.exists() {
                bail!(
                    "{} exists and is not a smoke run's folder: move it, or choose another \
                     output_dir",
                    dir.display()
                );
            }
            dir
        }
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            std::env::temp_dir().join(format!("runner-smoke-{}-{nanos:09}", std::process::id()))
        }
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the smoke run's folder {}", dir.display()))?;
    runner_io::atomic::write(&dir.join(WORK_MARK), b"runner --smoke work folder\n")?;
    Ok(dir)
}

/// Runs the prepared smoke run: the whole pipeline on the first [`ROWS`] rows of each dataset,
/// then [`check_outputs`] when training finished.
pub fn run(smoke: &Smoke, opts: crate::RunOptions) -> Result<(crate::RunReport, Checked)> {
    let data_options = runner_data::PrepareOptions {
        max_rows: Some(ROWS),
        ..Default::default()
    };
    let report = crate::run_with(&smoke.loaded, opts, data_options)?;
    let finished = matches!(
        report.outcome.stop,
        runner_train::trainer::StopReason::Finished
            | runner_train::trainer::StopReason::EarlyStopping { .. }
    );
    let checked = if finished && report.writer {
        check_outputs(&smoke.loaded.plan)?
    } else {
        Checked { lines: Vec::new() }
    };
    Ok((report, checked))
}

/// After the run: `adapter_config.json` names the recipe's target modules, and the adapter
/// loads back into the (tiny) base it was trained on.
pub fn check_outputs(plan: &Plan) -> Result<Checked> {
    let out = &plan.train.output_dir;
    let mut lines = Vec::new();
    let config_file = out.join(runner_model::peft::CONFIG_FILE);
    let text = std::fs::read_to_string(&config_file)
        .with_context(|| format!("reading {}", config_file.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", config_file.display()))?;
    let written = &json["target_modules"];
    let leaf = |s: &str| s.rsplit('.').next().unwrap_or(s).to_string();
    let expected = match &plan.adapter.targets {
        TargetModules::Regex(r) => serde_json::json!(r),
        TargetModules::AllLinear => {
            let mut v: Vec<&str> = runner_io::names::PROJECTIONS
                .iter()
                .map(|p| p.leaf)
                .collect();
            v.sort_unstable();
            serde_json::json!(v)
        }
        TargetModules::Names(list) => {
            let mut v: Vec<String> = list.iter().map(|s| leaf(s)).collect();
            v.sort_unstable();
            v.dedup();
            serde_json::json!(v)
        }
    };
    if *written != expected {
        bail!(
            "smoke check failed: {} has target_modules {written}, the recipe targets {expected}",
            config_file.display()
        );
    }
    lines.push(format!(
        "adapter_config.json names the recipe's target modules: {written}"
    ));

    // Load it back as `runner generate` / `runner eval` would.
    let tok = runner_data::load_tokenizer(&plan.model)?;
    let mut model = runner_model::load(&plan.model, &candle_core::Device::Cpu)?.model;
    crate::model::grow_vocabulary(&mut model, &tok, None)?;
    let saved = runner_model::peft::read_config(out)?;
    let adapters = runner_model::inject(
        &mut model,
        &saved.adapter_plan(Some(out.clone())),
        plan.train.seed,
    )
    .with_context(|| format!("smoke check failed: loading {} back", out.display()))?;
    let mut zero_b = 0;
    for (name, var) in &adapters.params {
        if name.contains("lora_B") && var.as_tensor().abs()?.max_all()?.to_scalar::<f32>()? == 0.0 {
            zero_b += 1;
        }
    }
    if zero_b == adapters.modules.len() && !adapters.modules.is_empty() {
        bail!(
            "smoke check failed: every lora_B in {} is zero: training did not reach the adapters",
            out.display()
        );
    }
    lines.push(format!(
        "the adapter loads back into the tiny model: {} module(s), {} tensors, r={}",
        adapters.modules.len(),
        adapters.params.len(),
        saved.r
    ));
    Ok(Checked { lines })
}

/// Whether a model or tokenizer source is on this machine: `builtin:`, an existing path, or a
/// hub id in the local Hugging Face cache (nothing is downloaded).
fn is_local(src: &str, revision: Option<&str>) -> bool {
    src.starts_with("builtin:")
        || Path::new(src).exists()
        || (is_hub_id(src) && runner_model::hub::snapshot(src, revision).is_ok())
}

/// `org/name`, not an existing path.
fn is_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && !Path::new(s).exists()
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// The real model's configuration when it is on this machine (`base_model_config`, else
/// `base_model`: a folder's config.json, a GGUF's metadata, the hub cache), and where it came
/// from (`none` when absent). A configuration that is here but unreadable fails as it would in
/// the real run.
fn real_config(model: &ModelPlan) -> Result<(Option<ModelConfig>, String)> {
    if let Some(name) = model.base_model.strip_prefix("builtin:") {
        return Ok((
            Some(runner_model::tiny::builtin_config(name)?),
            format!("the built-in {name}"),
        ));
    }
    let src = model.config.as_deref().unwrap_or(&model.base_model);
    if !is_local(src, model.revision.as_deref()) {
        return Ok((None, "none".into()));
    }
    match runner_model::load::resolve(src, model.revision.as_deref())? {
        runner_model::load::Checkpoint::Folder(dir) => {
            let file = dir.join("config.json");
            let cfg = ModelConfig::from_file(&file)?;
            Ok((Some(cfg), file.display().to_string()))
        }
        runner_model::load::Checkpoint::Gguf(file) => {
            let content = runner_model::gguf::read_content(&file)?;
            let cfg = runner_model::gguf::config_from_gguf(&file, &content)?;
            Ok((Some(cfg), file.display().to_string()))
        }
    }
}

/// The family from `model_type`, else from the model's name; Llama when neither tells.
fn guess_arch(model: &ModelPlan) -> (Arch, String) {
    let from = |s: &str| {
        let s = s.to_ascii_lowercase();
        if s.contains("qwen3") {
            Some(Arch::Qwen3)
        } else if s.contains("qwen") {
            Some(Arch::Qwen2)
        } else if s.contains("mistral") {
            Some(Arch::Mistral)
        } else if s.contains("llama") || s.contains("smollm") {
            Some(Arch::Llama)
        } else {
            None
        }
    };
    if let Some(a) = model.model_type.as_deref().and_then(from) {
        return (
            a,
            format!(
                "from model_type {}",
                model.model_type.as_deref().unwrap_or("")
            ),
        );
    }
    match from(&model.base_model) {
        Some(a) => (a, format!("from the name {}", model.base_model)),
        None => (
            Arch::Llama,
            "unknown (neither model_type nor the name tells): Llama".into(),
        ),
    }
}

/// [`ROWS`] rows of arithmetic in the dataset's format and field mapping, as JSON Lines.
fn generated_rows(ds: &DatasetPlan, tok: &runner_data::tokenizer::TextTokenizer) -> String {
    use serde_json::{Value, json};
    let mut out = String::new();
    for i in 0..ROWS {
        let (a, b) = (i % 7 + 2, i / 7 + 3);
        let question = format!("What is {a} plus {b}?");
        let answer = format!("{a} plus {b} is {}.", a + b);
        let row: Value = match &ds.format {
            DatasetFormat::Alpaca(AlpacaVariant::AlpacaChatQa) => {
                json!({"question": question, "answer": answer})
            }
            DatasetFormat::Alpaca(AlpacaVariant::AlpacaWithSystemOpenOrca) => json!({
                "system_prompt": "You add numbers.", "question": question, "response": answer
            }),
            DatasetFormat::Alpaca(_) => {
                json!({"instruction": "Add the two numbers.", "input": question, "output": answer})
            }
            DatasetFormat::CustomAlpaca(c) => {
                let mut m = serde_json::Map::new();
                m.insert(c.field_instruction.clone(), json!("Add the two numbers."));
                m.insert(c.field_input.clone(), json!(question));
                m.insert(c.field_output.clone(), json!(answer));
                Value::Object(m)
            }
            DatasetFormat::ChatTemplate(f) => {
                // The dataset's own role names: the first alias the recipe maps to each role.
                let role = |r: &str| {
                    f.roles
                        .iter()
                        .find(|m| m.role == r)
                        .and_then(|m| m.aliases.first().cloned())
                        .unwrap_or_else(|| r.to_string())
                };
                let msg = |r: &str, text: &str| {
                    let mut m = serde_json::Map::new();
                    m.insert(f.role_key.clone(), json!(role(r)));
                    m.insert(f.content_key.clone(), json!(text));
                    Value::Object(m)
                };
                let mut m = serde_json::Map::new();
                m.insert(
                    f.field_messages.clone(),
                    json!([msg("user", &question), msg("assistant", &answer)]),
                );
                Value::Object(m)
            }
            DatasetFormat::Completion { field } => {
                let mut m = serde_json::Map::new();
                m.insert(field.clone(), json!(format!("{question} {answer}")));
                Value::Object(m)
            }
            DatasetFormat::InputOutput => json!({"segments": [
                {"text": format!("{question}\n"), "label": false},
                {"text": answer, "label": true},
            ]}),
            DatasetFormat::Pretokenized => {
                let ids: Vec<u32> = tok
                    .encode_prompt(&format!("{question} {answer}"), false)
                    .unwrap_or_default();
                json!({"input_ids": ids, "labels": ids})
            }
        };
        out.push_str(&row.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_org_slash_name_and_not_paths() {
        assert!(is_hub_id("mhenrichsen/alpaca_2k_test"));
        assert!(is_hub_id("mistralai/Mistral-7B-v0.1"));
        assert!(!is_hub_id("src/lib.rs"), "an existing path");
        assert!(!is_hub_id("a/b/c.jsonl"));
        assert!(!is_hub_id("./x"));
    }

    #[test]
    fn arch_guess_prefers_model_type_then_the_name() {
        let loaded = runner_recipe::load_str(
            "r.yaml",
            "base_model: Qwen/Qwen3-0.6B\nmodel_type: AutoModelForCausalLM\n\
             datasets:\n  - path: org/data\n    type: alpaca\nadapter: lora\n\
             lora_target_linear: true\nnum_epochs: 1\nlearning_rate: 0.0002\n",
            &[],
        )
        .unwrap();
        assert_eq!(guess_arch(&loaded.plan.model).0, Arch::Qwen3);
        let mut m = loaded.plan.model.clone();
        m.model_type = Some("MistralForCausalLM".into());
        assert_eq!(guess_arch(&m).0, Arch::Mistral);
        m.model_type = None;
        m.base_model = "org/unknown".into();
        let (a, how) = guess_arch(&m);
        assert_eq!(a, Arch::Llama);
        assert!(how.contains("unknown"), "{how}");
    }

    #[test]
    fn the_work_folder_beside_kept_outputs_replaces_only_a_smoke_runs_own() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let dir = work_folder(Some(&out)).unwrap();
        assert_eq!(dir, tmp.path().join("out-smoke-model"));
        std::fs::write(dir.join("old"), "x").unwrap();
        let again = work_folder(Some(&out)).unwrap();
        assert!(
            !again.join("old").exists(),
            "an earlier smoke folder is replaced"
        );
        std::fs::remove_file(again.join(WORK_MARK)).unwrap();
        let e = work_folder(Some(&out)).unwrap_err().to_string();
        assert!(e.contains("is not a smoke run's folder"), "{e}");
        let temp = work_folder(None).unwrap();
        assert!(temp.starts_with(std::env::temp_dir()) && temp.join(WORK_MARK).is_file());
        std::fs::remove_dir_all(temp).unwrap();
    }

    #[test]
    fn an_absent_model_path_is_set_aside_and_kept_as_written() {
        let text = concat!(
            "base_model: .cache/models/none.gguf\n",
            "datasets:\n  - path: org/data\n    type: alpaca\n",
            "adapter: lora\nlora_target_linear: true\nnum_epochs: 1\nlearning_rate: 0.0002\n"
        );
        let plain = runner_recipe::load_str("r.yaml", text, &[]);
        assert!(plain.is_err(), "the real run refuses a missing base model");
        let l = tolerate_absent_model(plain).unwrap();
        assert_eq!(l.plan.model.base_model, ".cache/models/none.gguf");
        assert!(l.sources.overrides.is_empty());
        // An override wins over the file; any other error stays an error.
        let set = vec!["base_model=\"gone/x.gguf\"".to_string()];
        let l = tolerate_absent_model(runner_recipe::load_str("r.yaml", text, &set)).unwrap();
        assert_eq!(l.plan.model.base_model, "gone/x.gguf");
        let bad = vec!["lora_r=0".to_string()];
        assert!(tolerate_absent_model(runner_recipe::load_str("r.yaml", text, &bad)).is_err());
    }
}
