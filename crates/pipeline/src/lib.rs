//! runner's pipeline as a library: the stages as functions with typed inputs and outputs,
//! called in order from a validated [`Plan`](runner_recipe::Plan). Data flows one way:
//!
//! ```text
//! Plan ─▶ inputs::resolve_inputs ─▶ data::prepare_data ─▶ model::build_model ─▶ train ─▶ export
//!          (refusals, builtin        (tokenize, mask,      (load, grow vocab,     (runner_train)  (merged folder,
//!           model, tokenizer,         pack, cache;          inject adapters,                      GGUF)
//!           input hashes)             rank 0 first)         memory pre-flight)
//! ```
//!
//! [`run()`] chains them, times each stage (a `tracing` span per stage) and writes the run
//! manifest [`manifest::Manifest`] (`run.json`) into the output folder and every checkpoint.
//! Before anything is written, [`outdir`] decides what the run may do with its output folder
//! (refuse another run's, resume exactly, clear it under `--overwrite`).
//! [`reproduce`] reruns a run from its manifest and compares the adapters; it and `runner diff`
//! read manifests only. The CLI parses arguments, calls [`run()`] and prints.

use crate::error::bail;
use crate::error::{Error, Result};
pub mod data;
pub mod error;
pub mod export;
pub mod inputs;
pub mod manifest;
pub mod memory;
pub mod model;
pub mod outdir;
pub mod reproduce;
pub mod smoke;

use candle_core::Device;
use manifest::{Manifest, OutcomeRecord, PreparedRecord, RecipeRecord, RunStatus, StageTime};
use runner_recipe::Loaded;
use runner_train::dist::Communicator;
use runner_train::trainer::{Control, Inputs, Outcome, StopReason};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Instant, SystemTime};

/// Everything a run needs besides the recipe: where it runs and how it reports.
pub struct RunOptions<'a> {
    /// The recipe's name as given (recorded in `run.json`).
    pub recipe_label: &'a str,
    pub device: Device,
    /// The other ranks of a data-parallel job.
    pub comm: Option<Arc<dyn Communicator>>,
    /// Set by SIGINT/SIGTERM: the current step finishes, a checkpoint is saved, the run stops.
    pub stop: Arc<AtomicBool>,
    /// Draw a progress bar (a terminal).
    pub progress_bar: bool,
    /// Human-readable progress lines (data summary, parameter counts); rank 0's only.
    pub report: &'a dyn Fn(&str),
    /// `--overwrite`, `--allow-changed`: what the run may do with its output folder.
    pub folder: outdir::FolderFlags,
    /// `--skip-bad-rows`: skip (and count) rows that cannot be read instead of stopping.
    pub skip_bad_rows: bool,
}

/// What a run produced.
pub struct RunReport {
    pub outcome: Outcome,
    /// The manifest written (rank 0), or that would have been (other ranks).
    pub manifest: Manifest,
    /// Whether this process is the one that writes and reports (rank 0).
    pub writer: bool,
}

/// Times one stage inside a `tracing` span and records it.
fn stage<T>(stages: &mut Vec<StageTime>, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let span = tracing::info_span!("stage", name);
    let _entered = span.enter();
    runner_io::interrupt::set_stage(name);
    hold_for_tests(name);
    let start = Instant::now();
    tracing::info!("start");
    let out = f();
    let seconds = start.elapsed().as_secs_f64();
    tracing::info!(seconds, ok = out.is_ok(), "end");
    stages.push(StageTime {
        stage: name.to_string(),
        seconds,
    });
    out
}

/// A test hook: with `RUNNER_TEST_HOLD_STAGE=NAME` the stage NAME waits (up to a minute)
/// before it starts, so that a test can signal the process inside it.
fn hold_for_tests(name: &str) {
    if std::env::var("RUNNER_TEST_HOLD_STAGE").is_ok_and(|v| v == name) {
        eprintln!("holding in stage {name} (RUNNER_TEST_HOLD_STAGE)");
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

/// Runs the whole pipeline for `loaded` (a validated recipe): resolve inputs, prepare data,
/// build the model, train, and (when training finished) export; writes `run.json`.
pub fn run(loaded: &Loaded, opts: RunOptions) -> Result<RunReport> {
    run_with(loaded, opts, runner_data::PrepareOptions::default())
}

/// [`run()`] with data-preparation options: a smoke run ([`smoke`]) reads a few rows.
pub fn run_with(
    loaded: &Loaded,
    opts: RunOptions,
    data_options: runner_data::PrepareOptions,
) -> Result<RunReport> {
    let started = SystemTime::now();
    let rank = opts.comm.as_ref().map_or(0, |c| c.rank());
    let writer = rank == 0;
    let report = |s: &str| {
        if writer {
            (opts.report)(s)
        }
    };
    let mut stages = Vec::new();

    // The compute dtype on this device (refusing an op the engine lacks there), said once.
    let precision = model::compute_dtype(&loaded.plan, &opts.device)?;
    for n in &precision.notes {
        report(&format!("note: {n}"));
    }

    // 1. inputs: hub ids resolved once (downloaded when the cache lacks them) and pinned to
    // their commits, so every later stage reads the same snapshots and run.json records the
    // commits; then refusals, the built-in model, the tokenizer, every input's hash.
    let (pinned, pins, resolved) = stage(&mut stages, "resolve_inputs", || {
        let mut settings = runner_hub::Settings::from_env();
        settings.progress = writer && opts.progress_bar;
        let (pinned, pins) = inputs::pin_hub(&loaded.plan, inputs::HubNeed::All, &settings, false)?;
        let mut cache =
            runner_io::hash::HashCache::open(&runner_io::hash::HashCache::default_file());
        let r = inputs::resolve_inputs(&pinned, &mut cache)?;
        // Only a cache: a read-only folder costs a re-hash next time, not the run.
        if let Err(e) = cache.save() {
            tracing::warn!("the file-hash cache was not saved: {e}");
        }
        Ok((pinned, pins, r))
    })?;
    for p in pins.iter().filter(|p| !p.snapshot.downloaded.is_empty()) {
        report(&p.downloaded_line());
    }
    let plan = &pinned;
    let tok = &resolved.tokenizer;

    // The output folder: whose it is, where training continues from. Every rank decides from
    // the same files before rank 0 changes any.
    let claimed = (|| -> Result<(Option<std::fs::File>, outdir::Claim)> {
        let lock = match writer {
            true => Some(outdir::lock(&plan.train.output_dir)?),
            false => None,
        };
        Ok((lock, outdir::claim(plan, &resolved.ids, opts.folder)?))
    })();
    if let Some(c) = &opts.comm {
        // Every rank stops when one refuses, instead of waiting for it at the next collective.
        let mut refused = [claimed.is_err() as u8 as f64];
        c.all_reduce_f64("output folder check", &mut refused)
            .map_err(|e| Error::Refused(format!("{e}")))?;
        if refused[0] > 0.0 && claimed.is_ok() {
            bail!("another rank refused the output folder (rank 0 says why)");
        }
    }
    let (_lock, claim) = claimed?;
    for n in &claim.notes {
        report(&format!("note: {n}"));
    }
    if let Some(dir) = &plan.adapter.init_from {
        outdir::check_adapter(dir)?;
    }
    if writer {
        let removed = outdir::prepare(plan, &claim)?;
        if !removed.is_empty() {
            report(&format!(
                "note: removed {} temporary file(s) left by an interrupted run in {}",
                removed.len(),
                plan.train.output_dir.display()
            ));
        }
    }
    // The trainer continues from the checkpoint decided here.
    let mut train_plan = plan.clone();
    train_plan.train.resume = match &claim.resume {
        Some(d) => runner_recipe::plan::Resume::From(d.clone()),
        None => runner_recipe::plan::Resume::Fresh,
    };

    // 2. data
    let data = stage(&mut stages, "prepare_data", || {
        let options = runner_data::PrepareOptions {
            skip_bad_rows: opts.skip_bad_rows,
            ..data_options
        };
        data::prepare_data_with(&plan.data, tok, opts.comm.as_ref(), options)
    })?;
    report(&data.summary.to_string());

    // 3. model + adapters
    let built = stage(&mut stages, "build_model", || {
        model::build_model(
            plan,
            &resolved.model_plan,
            tok,
            &data,
            &opts.device,
            precision.dtype,
        )
    })?;
    report(&runner_model::lora::ParamCounts::of(&built.model, &built.adapters).to_string());

    let mut manifest = Manifest {
        format: manifest::FORMAT.to_string(),
        runner: manifest::Build::current(),
        recipe: RecipeRecord {
            name: opts.recipe_label.to_string(),
            text: loaded.sources.text.clone(),
            blake3: runner_io::hash::bytes(loaded.sources.text.as_bytes()),
            overrides: loaded.sources.overrides.clone(),
        },
        plan: serde_json::to_value(plan)?,
        working_dir: std::env::current_dir()?,
        inputs: resolved.ids.clone(),
        prepared_data: Some(PreparedRecord {
            cache_key: data.summary.cache_key.clone(),
            reused_cache: data.summary.reused_cache,
            skip_bad_rows: opts.skip_bad_rows,
        }),
        seed: plan.train.seed,
        world_size: opts.comm.as_ref().map_or(1, |c| c.world_size()),
        device: format!("{:?}", opts.device.location()),
        gpu: manifest::gpu_model(&opts.device),
        dtype: format!("{:?}", built.model.dtype()),
        threads: manifest::threads(),
        stages: Vec::new(),
        outcome: None,
        files: Vec::new(),
        status: Some(RunStatus::Running),
        run_id: Some(claim.run_id.clone()),
    };

    // 4. train. The tokenizer goes beside the adapter, as Axolotl saves it: the vocabulary it
    // was trained with, added tokens included.
    let out_dir = &plan.train.output_dir;
    if writer {
        // First: until it is rewritten at the end, nothing in the folder is final.
        std::fs::create_dir_all(out_dir)?;
        manifest.write(out_dir)?;
        tok.save_pretrained(out_dir)?;
    }
    let checkpoint_manifest = {
        let mut m = manifest.clone();
        m.stages = stages.clone();
        move |files: &[(&str, Vec<u8>)]| m.for_checkpoint(files)
    };
    let train_inputs = Inputs {
        plan: &train_plan,
        recipe_text: &loaded.sources.text,
        model: &built.model,
        adapters: &built.adapters,
        data: &data,
        pad_id: tok.pad_id(),
        checkpoint_manifest: Some(&checkpoint_manifest),
        run_id: Some(&claim.run_id),
    };
    let control = Control {
        stop: opts.stop.clone(),
        progress_bar: writer && opts.progress_bar,
        quiet: !writer,
        comm: opts.comm.clone(),
    };
    let outcome = stage(&mut stages, "train", || {
        Ok(runner_train::trainer::train(&train_inputs, &control)?)
    })?;
    manifest.outcome = Some(OutcomeRecord {
        stop: stop_name(&outcome.stop).to_string(),
        steps: outcome.steps,
        final_loss: outcome.losses.last().map(|(_, l)| *l),
        final_eval_loss: outcome.eval_losses.last().map(|(_, l)| *l),
        tokens_per_second: outcome.tokens_per_second,
        seconds: outcome.seconds,
    });
    if !writer {
        manifest.stages = stages;
        return Ok(RunReport {
            outcome,
            manifest,
            writer,
        });
    }

    // 5. export: `merge_adapter` / `export_gguf`, from the adapter just saved and the trained
    // model in memory.
    let finished = matches!(
        outcome.stop,
        StopReason::Finished | StopReason::EarlyStopping { .. }
    );
    let exported = if finished {
        stage(&mut stages, "export", || {
            export::after_training(plan, tok, &built.model, &resolved.model_plan)
                .map_err(|e| e.context("exporting after training (the adapter is saved)"))
        })
    } else {
        Ok(())
    };

    // The manifest records the run as it ended, even when the export failed.
    manifest.stages = stages;
    let since = started - std::time::Duration::from_secs(2);
    manifest.files = manifest::written_files(out_dir, since)?;
    manifest.status = Some(if finished {
        RunStatus::Complete
    } else {
        RunStatus::Partial
    });
    // Last: the marker that the folder's adapter is the run's result.
    let _faults = runner_io::fault::scope();
    manifest.write(out_dir)?;
    exported?;
    Ok(RunReport {
        outcome,
        manifest,
        writer,
    })
}

/// The manifest's name for how training stopped.
pub fn stop_name(stop: &StopReason) -> &'static str {
    match stop {
        StopReason::Finished => "finished",
        StopReason::EarlyStopping { .. } => "early_stopping",
        StopReason::Interrupted => "interrupted",
        StopReason::Watchdog { .. } => "watchdog",
        StopReason::NonFinite { .. } => "non_finite",
    }
}
