//! `runner run`: validate → data → model → train → export, wiring the stage crates in order.

use anyhow::Context;
use candle_core::Device;
use runner_recipe::Loaded;
use runner_recipe::plan::{ModelPlan, Plan};
use runner_train::trainer::{Control, Inputs, StopReason};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The model plan with `builtin:NAME` replaced by the folder runner generates it into.
pub(crate) fn materialized(model: &ModelPlan) -> anyhow::Result<ModelPlan> {
    let Some(name) = model.base_model.strip_prefix("builtin:") else {
        return Ok(model.clone());
    };
    let dir = runner_model::tiny::builtin(name)
        .with_context(|| format!("generating the built-in model `{name}`"))?;
    Ok(ModelPlan {
        base_model: dir.display().to_string(),
        // The tokenizer of a built-in model is built in too.
        tokenizer: model.tokenizer.clone().or(Some(model.base_model.clone())),
        ..model.clone()
    })
}

/// `runner run --dry-run`: the model stage's summary, from the configuration only.
pub fn model_summary(plan: &Plan) -> anyhow::Result<String> {
    let model = materialized(&plan.model)?;
    let summary = runner_model::summarize(&model, &plan.adapter)?;
    Ok(summary.to_string())
}

/// Recipe values that validate (they are part of the recipe language) but that this build's
/// engine cannot run yet: refused before any work starts, each named. (The NF4 and int8 bases
/// are quantized by `runner_model::inject`.)
pub fn not_runnable_yet(plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(dir) = &plan.adapter.init_from {
        // `lora_model_dir`: the recipe's adapter shape must be the saved adapter's.
        match runner_export::peft::read_config(dir) {
            Err(e) => out.push(format!("`lora_model_dir`: {e}")),
            Ok(saved) => {
                let a = &plan.adapter;
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
                            "`{what}` is {recipe} in the recipe but {adapter} in {}/adapter_config.json; make them equal",
                            dir.display()
                        ));
                    }
                }
            }
        }
    }
    // `fp16` (no loss scaling yet): refused on every device.
    if let Err(e) = runner_model::precision::compute_precision(
        plan.train.precision,
        plan.train.tf32,
        runner_model::precision::DeviceKind::Cpu,
    ) {
        out.push(e);
    }
    // PiSSA's rank is checked against the model's shapes, from its configuration alone.
    if matches!(
        plan.adapter.init,
        runner_recipe::plan::LoraInit::Pissa { .. }
    ) && let Err(e) = model_summary(plan)
    {
        out.push(format!("{e:#}"));
    }
    out
}

pub fn run(
    loaded: &Loaded,
    recipe_label: &str,
    placement: &crate::launch::Placement,
) -> anyhow::Result<ExitCode> {
    match placement {
        crate::launch::Placement::Rank { info, .. } if info.world_size > 1 => {
            let rank = info.rank;
            run_here(loaded, recipe_label, placement).with_context(|| format!("rank {rank}"))
        }
        _ => run_here(loaded, recipe_label, placement),
    }
}

/// The device and, for a rank of a job, the communicator joining it to the others.
fn device_and_comm(
    placement: &crate::launch::Placement,
) -> anyhow::Result<(Device, Option<Arc<dyn runner_train::dist::Communicator>>)> {
    use crate::launch::Placement;
    match placement {
        Placement::Single { gpu } => Ok((runner_kernels::select_device(*gpu)?, None)),
        Placement::Launch { .. } => anyhow::bail!("internal: the launcher does not train"),
        Placement::Rank { info, gpu } => {
            let device = runner_kernels::select_device(*gpu)?;
            if info.world_size == 1 {
                return Ok((device, None));
            }
            let timeout = crate::launch::dist_timeout()?;
            let tcp = runner_train::dist::tcp::TcpComm::connect(info, timeout)?;
            if device.is_cpu() {
                return Ok((device, Some(Arc::new(tcp))));
            }
            #[cfg(feature = "cuda")]
            {
                use runner_train::dist::{nccl::NcclComm, watchdog::Watchdog};
                // A rank blocked inside NCCL cannot return an error: the watchdog reports the
                // stalled stage and ends the process, and the launcher stops the others.
                let dog = Watchdog::start(
                    info.rank,
                    timeout,
                    Box::new(|m| {
                        eprintln!("error: {m}");
                        std::process::exit(3);
                    }),
                );
                let nccl = NcclComm::new(&tcp, &device, dog)?;
                // NCCL's communicator stays on the training thread; the Arc is for `Control`,
                // which is Clone, not for sharing across threads.
                #[allow(clippy::arc_with_non_send_sync)]
                Ok((device, Some(Arc::new(nccl))))
            }
            #[cfg(not(feature = "cuda"))]
            {
                anyhow::bail!("internal: a GPU device in a build without CUDA")
            }
        }
    }
}

fn run_here(
    loaded: &Loaded,
    recipe_label: &str,
    placement: &crate::launch::Placement,
) -> anyhow::Result<ExitCode> {
    let plan = &loaded.plan;
    let speaks = placement.is_rank_zero();
    let missing = not_runnable_yet(plan);
    if !missing.is_empty() {
        for m in &missing {
            eprintln!("error: {m}");
        }
        anyhow::bail!(
            "{} recipe setting(s) cannot run in this build (nothing was started)",
            missing.len()
        );
    }

    // This process's device and, in a job, the other ranks.
    let (device, comm) = device_and_comm(placement)?;
    // Every op the plan runs must exist for this device and dtype: refused here, by name.
    let features = runner_model::ops::Features {
        dropout: plan.adapter.dropout > 0.0,
        quantized_base: plan.adapter.base_quant != runner_recipe::plan::BaseQuant::None,
    };
    // The compute dtype there (bf16/auto/fp16/tf32 decided per device, said when `auto` chose).
    let dtype = precision_on(plan, &device, speaks)?;
    if let Err(missing) = runner_model::ops::check_supported(
        runner_model::ops::DeviceKind::of(&device),
        dtype,
        features,
    ) {
        for m in &missing {
            eprintln!("error: {m}");
        }
        anyhow::bail!(
            "{} op(s) have no implementation for {dtype:?} on this device (nothing was started)",
            missing.len()
        );
    }

    // 1. data. In a job rank 0 prepares first and the others then read its cache, instead of
    // every rank tokenizing the same data and racing to write the same cache entry.
    let rank = comm.as_ref().map_or(0, |c| c.rank());
    let data_barrier = |c: &Arc<dyn runner_train::dist::Communicator>| {
        c.all_reduce_f64("data preparation (rank 0 first)", &mut [0.0])
    };
    if let Some(c) = comm.as_ref().filter(|_| rank != 0) {
        data_barrier(c)?;
    }
    let tok = runner_data::load_tokenizer(&plan.model)?;
    let data = runner_data::prepare(&plan.data, &tok)?;
    if let Some(c) = comm.as_ref().filter(|_| rank == 0) {
        data_barrier(c)?;
    }
    if speaks {
        eprintln!("{}", data.summary);
    }

    // 2. model + adapters, on this process's device, in the recipe's precision there; a step
    // that cannot fit is refused before the model loads (issue 12).
    let model_plan = materialized(&plan.model)?;
    step_fits(plan, &model_plan, &data, &device)?;
    // QLoRA bases are quantized tensor by tensor while loading.
    let loaded_model =
        runner_model::load::load_for_adapter(&model_plan, &plan.adapter, dtype, &device)?;
    let mut model = loaded_model.model;
    grow_vocabulary(&mut model, &tok, Some(&plan.adapter))?;
    model.gradient_checkpointing = plan.train.gradient_checkpointing;
    let adapters = runner_model::inject(&mut model, &plan.adapter, plan.train.seed)?;
    if speaks {
        eprintln!("{}", runner_model::lora::ParamCounts::of(&model, &adapters));
    }

    // 3. train (SIGINT/SIGTERM finish the step, save, and stop)
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                // A second signal: the user insists.
                std::process::exit(130);
            }
            eprintln!(
                "\nstopping after this step (saving a checkpoint); press Ctrl-C again to abort"
            );
        });
    }
    // The tokenizer beside the adapter, as Axolotl saves it: the vocabulary it was trained
    // with, added tokens included.
    tok.save_pretrained(&plan.train.output_dir)?;
    let inputs = Inputs {
        plan,
        recipe_text: &loaded.sources.text,
        model: &model,
        adapters: &adapters,
        data: &data,
        pad_id: tok.pad_id(),
    };
    let control = Control {
        stop,
        progress_bar: speaks && std::io::stderr().is_terminal(),
        quiet: !speaks,
        comm,
    };
    let outcome = runner_train::trainer::train(&inputs, &control)?;
    if !speaks {
        // Rank 0 reports the run and wrote its files.
        return Ok(match outcome.stop {
            StopReason::Finished | StopReason::EarlyStopping { .. } => ExitCode::SUCCESS,
            StopReason::Interrupted => ExitCode::from(130),
            _ => ExitCode::from(1),
        });
    }

    // 4. export: the trainer wrote the PEFT adapter, metrics.jsonl and loss.svg.
    let out = &plan.train.output_dir;
    // The same recipe and overrides, plus the checkpoint to continue from.
    let overrides: String = loaded
        .sources
        .overrides
        .iter()
        .filter(|o| !o.starts_with("resume_from_checkpoint="))
        .map(|o| format!(" --set '{o}'"))
        .collect();
    let resume_hint = |ckpt: &Option<PathBuf>| match ckpt {
        Some(c) => format!(
            "resume with: runner run {recipe_label}{overrides} --set resume_from_checkpoint={}",
            c.display()
        ),
        None => String::new(),
    };
    eprintln!(
        "{} steps in {:.1} s ({:.0} tokens/s{}; trained tokens: {:.1}% of positions)",
        outcome.steps,
        outcome.seconds,
        outcome.tokens_per_second,
        peak_rss_gb()
            .map(|g| format!(", peak RSS {g:.2} GB"))
            .unwrap_or_default(),
        100.0 * outcome.tokens_labelled as f64 / outcome.tokens_seen.max(1) as f64
    );
    match &outcome.stop {
        StopReason::Finished | StopReason::EarlyStopping { .. } => {
            if let StopReason::EarlyStopping { best_eval_loss } = outcome.stop {
                eprintln!("early stopping: best eval loss {best_eval_loss:.4}");
            }
            println!(
                "adapter: {}\nmetrics: {}\nchart:   {}",
                out.display(),
                out.join("metrics.jsonl").display(),
                out.join("loss.svg").display()
            );
            // `merge_adapter` / `export_gguf`: from the adapter just saved and the trained
            // model in memory.
            crate::export::after_training(plan, &tok, &model, &model_plan)
                .context("exporting after training (the adapter is saved)")?;
            Ok(ExitCode::SUCCESS)
        }
        StopReason::Interrupted => {
            eprintln!("interrupted; {}", resume_hint(&outcome.checkpoint));
            Ok(ExitCode::from(130))
        }
        StopReason::Watchdog { loss, threshold } => {
            eprintln!(
                "stopped by the loss watchdog: loss {loss:.4} stayed above loss_watchdog_threshold {threshold}; checkpoint saved. {}",
                resume_hint(&outcome.checkpoint)
            );
            Ok(ExitCode::from(1))
        }
        StopReason::NonFinite { what } => {
            eprintln!(
                "stopped: non-finite {what}; the last good state is saved. Lower learning_rate or set max_grad_norm, then {}",
                resume_hint(&outcome.checkpoint)
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// Refuses a micro-batch whose training step cannot fit in the memory of this process's device
/// (host memory available, or the GPU's free memory), before the model loads: the alternative
/// is the kernel or the CUDA allocator killing the run mid-step. See [`crate::plan`].
fn step_fits(
    plan: &Plan,
    model_plan: &ModelPlan,
    data: &runner_data::Prepared,
    device: &Device,
) -> anyhow::Result<()> {
    let gpu = match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => Some(gpu_id),
        _ => None,
    };
    let target = crate::plan::target(None, gpu)?;
    let summary = runner_model::summarize(model_plan, &plan.adapter)?;
    let (batch, row) = crate::plan::shape_of_data(plan, data);
    let estimate = crate::plan::estimate(
        plan,
        &summary.cfg,
        summary.counts.trainable,
        &target,
        batch,
        row,
    )?;
    match estimate.refusal(&target) {
        Some(message) => anyhow::bail!(message),
        None => Ok(()),
    }
}

/// Tokens the recipe adds (`tokens`, new `special_tokens`) need embedding and LM-head rows:
/// when the tokenizer has more ids than the embeddings have rows, the model grows as
/// transformers' `resize_token_embeddings` grows it (new rows at the mean; Axolotl does the
/// same). Under an adapter (`adapter` given) the new rows only train as trainable copies, so
/// `lora_modules_to_save` must hold both modules, as Axolotl requires (a new pad token alone
/// is exempt there too: its row is never trained).
fn grow_vocabulary(
    model: &mut runner_model::CausalLm,
    tok: &runner_data::tokenizer::TextTokenizer,
    adapter: Option<&runner_recipe::plan::AdapterPlan>,
) -> anyhow::Result<()> {
    let rows = model.cfg.vocab_size;
    let tokenizer_ids = tok.vocab_size();
    if tokenizer_ids <= rows {
        return Ok(());
    }
    let pad = tok.pad.as_ref().map(|p| p.id as usize);
    let trained_new = (rows..tokenizer_ids).any(|id| Some(id) != pad);
    if let (Some(a), true) = (adapter, trained_new) {
        let has = |m: &str| {
            a.modules_to_save
                .iter()
                .any(|s| s == m || s.ends_with(&format!(".{m}")))
        };
        if !(has("embed_tokens") && has("lm_head")) {
            anyhow::bail!(
                "the tokenizer has {tokenizer_ids} ids (tokens added by `tokens` or `special_tokens`) \
                 but the model's embeddings have {rows} rows: the new rows only train with \
                 `lora_modules_to_save: [embed_tokens, lm_head]` (Axolotl requires the same); add it \
                 (nothing was trained)"
            );
        }
    }
    model.resize_token_embeddings(tokenizer_ids)?;
    eprintln!(
        "vocabulary grown from {rows} to {tokenizer_ids} tokens (new rows at the mean embedding, \
         as transformers' resize_token_embeddings)"
    );
    Ok(())
}

/// The frozen weights' and activations' dtype for the recipe's `bf16` / `fp16` on `device`
/// (adapters, gradients and optimizer state stay f32); says what `bf16: auto` chose and what
/// `tf32` does here, and sets cuBLAS's TF32 switch on a GPU.
fn precision_on(plan: &Plan, device: &Device, speaks: bool) -> anyhow::Result<candle_core::DType> {
    use runner_model::precision::{DeviceKind, apply_tf32, compute_precision};
    let kind = if device.is_cuda() {
        DeviceKind::Cuda
    } else {
        DeviceKind::Cpu
    };
    let p = compute_precision(plan.train.precision, plan.train.tf32, kind)
        .map_err(anyhow::Error::msg)?;
    if speaks {
        for n in &p.notes {
            eprintln!("note: {n}");
        }
    }
    apply_tf32(plan.train.tf32, kind);
    Ok(p.dtype)
}

/// Peak resident memory of this process (Linux `VmHWM`), for the figures `runner run` prints.
fn peak_rss_gb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0 / 1024.0)
}

/// `runner eval`: mean token loss and perplexity of base (+ adapter) on the prepared data.
pub fn eval(loaded: &Loaded, adapter: Option<PathBuf>, on_train: bool) -> anyhow::Result<ExitCode> {
    let mut plan = loaded.plan.clone();
    if let Some(dir) = adapter {
        let saved = runner_export::peft::read_config(&dir)?;
        plan.adapter = saved.adapter_plan(Some(dir));
    }
    let tok = runner_data::load_tokenizer(&plan.model)?;
    let mut data = runner_data::prepare(&plan.data, &tok)?;
    if on_train {
        data.eval = std::mem::take(&mut data.train);
        data.eval_packs = data.train_packs.take();
    }
    if data.eval.is_empty() {
        anyhow::bail!(
            "there is nothing to evaluate: the recipe has no evaluation set (set val_set_size or test_datasets, or pass --train)"
        );
    }
    let model_plan = materialized(&plan.model)?;
    let mut model = runner_model::load(&model_plan, &Device::Cpu)?.model;
    grow_vocabulary(&mut model, &tok, None)?;
    let adapters = match &plan.adapter.init_from {
        Some(_) => runner_model::inject(&mut model, &plan.adapter, plan.train.seed)?,
        None => runner_model::Adapters {
            modules: Vec::new(),
            params: Vec::new(),
            r: 0,
            scaling: 0.0,
            modules_to_save: Vec::new(),
            pissa_initial: Vec::new(),
        },
    };
    let inputs = Inputs {
        plan: &plan,
        recipe_text: &loaded.sources.text,
        model: &model,
        adapters: &adapters,
        data: &data,
        pad_id: tok.pad_id(),
    };
    let loss = runner_train::trainer::evaluate(&inputs)?
        .ok_or_else(|| anyhow::anyhow!("the evaluation set has no trained tokens"))?;
    println!(
        "{} samples, loss {loss:.4}, perplexity {:.3}{}",
        data.eval.len(),
        loss.exp(),
        match &plan.adapter.init_from {
            Some(d) => format!(" (adapter {})", d.display()),
            None => " (base model, no adapter)".into(),
        }
    );
    Ok(ExitCode::SUCCESS)
}
