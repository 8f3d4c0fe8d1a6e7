//! `runner run` and `runner eval`: the process around the pipeline (device, ranks, signals)
//! and what is printed; the stages themselves run in `runner_pipeline`.

use anyhow::Context;
use candle_core::Device;
use runner_recipe::Loaded;
use runner_train::trainer::{Inputs, StopReason};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

pub fn run(
    loaded: &Loaded,
    recipe_label: &str,
    placement: &crate::launch::Placement,
    folder: runner_pipeline::outdir::FolderFlags,
    skip_bad_rows: bool,
) -> anyhow::Result<ExitCode> {
    match placement {
        crate::launch::Placement::Rank { info, .. } if info.world_size > 1 => {
            let rank = info.rank;
            run_here(loaded, recipe_label, placement, folder, skip_bad_rows)
                .with_context(|| format!("rank {rank}"))
        }
        _ => run_here(loaded, recipe_label, placement, folder, skip_bad_rows),
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
    folder: runner_pipeline::outdir::FolderFlags,
    skip_bad_rows: bool,
) -> anyhow::Result<ExitCode> {
    let plan = &loaded.plan;
    // Refused before a device or a job is set up (the pipeline checks again, as a library).
    let missing = runner_pipeline::inputs::not_runnable_yet(plan);
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

    // SIGINT/SIGTERM during training finish the step, save, and stop (main.rs's handler).
    let stop = runner_io::interrupt::stop_flag();
    let print = |s: &str| eprintln!("{s}");
    let report = runner_pipeline::run(
        loaded,
        runner_pipeline::RunOptions {
            recipe_label,
            device,
            comm,
            stop,
            progress_bar: std::io::stderr().is_terminal(),
            report: &print,
            folder,
            skip_bad_rows,
        },
    )?;
    let outcome = &report.outcome;
    if !report.writer {
        // Rank 0 reports the run and wrote its files.
        return Ok(match outcome.stop {
            StopReason::Finished | StopReason::EarlyStopping { .. } => ExitCode::SUCCESS,
            StopReason::Interrupted => ExitCode::from(130),
            _ => ExitCode::from(1),
        });
    }

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
                "adapter: {}\nmetrics: {}\nchart:   {}\nrun:     {}",
                out.display(),
                out.join("metrics.jsonl").display(),
                out.join("loss.svg").display(),
                out.join(runner_pipeline::manifest::FILE).display()
            );
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

/// `runner run RECIPE --smoke`: the prepared smoke run on the CPU, then its checks and what it
/// cannot check. The work folder is removed when the run passes and kept (and named) when not.
pub fn smoke(
    smoke: &runner_pipeline::smoke::Smoke,
    folder: runner_pipeline::outdir::FolderFlags,
    skip_bad_rows: bool,
) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let print = |s: &str| eprintln!("{s}");
    let result = runner_pipeline::smoke::run(
        smoke,
        runner_pipeline::RunOptions {
            recipe_label: &smoke.loaded.sources.name,
            device: Device::Cpu,
            comm: None,
            // SIGINT/SIGTERM stop it as they stop a run (main.rs's handler).
            stop: runner_io::interrupt::stop_flag(),
            progress_bar: false,
            report: &print,
            folder,
            skip_bad_rows,
        },
    );
    let kept = || format!("its files are kept in {}", smoke.work_dir.display());
    // The error itself is printed as the real run prints it.
    let (report, checked) =
        result.inspect_err(|_| eprintln!("the smoke run failed; {}", kept()))?;
    let outcome = &report.outcome;
    if !matches!(
        outcome.stop,
        StopReason::Finished | StopReason::EarlyStopping { .. }
    ) {
        eprintln!(
            "the smoke run stopped early ({}); {}",
            runner_pipeline::stop_name(&outcome.stop),
            kept()
        );
        return Ok(ExitCode::from(1));
    }
    for line in &checked.lines {
        println!("checked: {line}");
    }
    println!("{}", runner_pipeline::smoke::NOT_CHECKED);
    if smoke.temporary_outputs {
        if let Err(e) = smoke.clean_up() {
            eprintln!("note: {} not removed: {e}", smoke.work_dir.display());
        }
    } else {
        // The outputs were asked for: the tiny model they were trained on stays beside them
        // (run.json names it), so they can be loaded, merged or generated from.
        println!(
            "adapter: {}\ntiny model: {}",
            smoke.loaded.plan.train.output_dir.display(),
            smoke.loaded.plan.model.base_model
        );
    }
    println!(
        "smoke run passed: {} steps in {:.1} s",
        outcome.steps,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
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
    if let Some(dir) = adapter.as_ref().or(plan.adapter.init_from.as_ref()) {
        runner_pipeline::outdir::check_adapter(dir)?;
    }
    if let Some(dir) = adapter {
        let saved = runner_model::peft::read_config(&dir)?;
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
    let model_plan = runner_pipeline::inputs::materialized(&plan.model)?;
    let mut model = runner_model::load(&model_plan, &Device::Cpu)?.model;
    runner_pipeline::model::grow_vocabulary(&mut model, &tok, None)?;
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
        checkpoint_manifest: None,
        run_id: None,
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
