//! The training loop, top to bottom: setup (schedule, optimizer, resume) → steps (accumulate,
//! clip, update, log, evaluate, save) → final adapter, chart. Deterministic: the data order,
//! dropout masks and adapter initialisation all derive from `seed`, and a resumed run replays
//! the same schedule from the saved step.

use crate::checkpoint;
use crate::error::TrainError;
use crate::metrics::{MetricsLog, Record};
use crate::optim::{AdamW, Grads, ParamGroup, clip_coefficient};
use crate::schedule::{LrSchedule, StepPlan, Unit};
use candle_core::Tensor;
use runner_data::Prepared;
use runner_data::pack::{Batch as DataBatch, pad_batch, pad_packs};
use runner_model::{Adapters, Batch, CausalLm};
use runner_recipe::plan::{EvalSchedule, Plan, Resume, SaveEvery};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What the loop trains, on what.
pub struct Inputs<'a> {
    pub plan: &'a Plan,
    /// The recipe as written, saved into every checkpoint beside the resolved plan.
    pub recipe_text: &'a str,
    pub model: &'a CausalLm,
    pub adapters: &'a Adapters,
    pub data: &'a Prepared,
    pub pad_id: u32,
    /// Builds the run manifest (`run.json`) saved into every checkpoint, from the checkpoint's
    /// other files (name, bytes); the pipeline records in it what went into the run.
    pub checkpoint_manifest: Option<&'a CheckpointManifest>,
    /// The run this training belongs to, recorded in every checkpoint: `save_total_limit` and
    /// `auto_resume_from_checkpoints` consider this run's checkpoints only (`None`: every
    /// checkpoint in `output_dir`).
    pub run_id: Option<&'a str>,
}

/// See [`Inputs::checkpoint_manifest`].
pub type CheckpointManifest = dyn Fn(&[(&str, Vec<u8>)]) -> Vec<u8> + Sync;

/// How the loop reports and when it stops early.
#[derive(Clone, Default)]
pub struct Control {
    /// Set by SIGINT/SIGTERM: the current step finishes, a checkpoint is saved, the run stops.
    pub stop: Arc<AtomicBool>,
    /// Draw a progress bar (a terminal); otherwise plain log lines every `logging_steps`.
    pub progress_bar: bool,
    /// No output at all (tests).
    pub quiet: bool,
    /// Data parallelism across processes (`None`: this process trains alone). Each rank trains
    /// its share of every step; rank 0 alone logs and writes files.
    pub comm: Option<Arc<dyn crate::dist::Communicator>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    Finished,
    EarlyStopping { best_eval_loss: f64 },
    Interrupted,
    Watchdog { loss: f64, threshold: f64 },
    NonFinite { what: String },
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub stop: StopReason,
    /// Optimizer steps completed (including those of a resumed run).
    pub steps: u64,
    pub total_steps: u64,
    /// Mean training loss per optimizer step run in this process, in order.
    pub losses: Vec<(u64, f64)>,
    pub eval_losses: Vec<(u64, f64)>,
    /// The checkpoint saved when the run stopped early.
    pub checkpoint: Option<PathBuf>,
    pub tokens_per_second: f64,
    /// Positions trained in this process (every position of every batch) and how many of them
    /// had a label (the positions whose logits were computed).
    pub tokens_seen: u64,
    pub tokens_labelled: u64,
    pub seconds: f64,
}

/// The whole run's schedule ([`StepPlan`]: computed one epoch at a time). With `world`
/// data-parallel ranks a step has `world ×` the micro-batches (each rank trains its
/// [`crate::dist::shard`]): the same steps as one process accumulating `world ×` as many.
fn schedule(plan: &Plan, data: &Prepared, world: usize) -> Result<StepPlan, TrainError> {
    let t = &plan.train;
    let (units, packed) = match &data.train_packs {
        Some(packs) => (packs.len(), true),
        None => (data.train.len(), false),
    };
    StepPlan::new(
        units,
        packed,
        t.micro_batch_size,
        t.gradient_accumulation_steps.max(1) * world.max(1),
        t.max_steps,
        t.num_epochs,
        plan.data.seed,
    )
    .map_err(TrainError::Optimizer)
}

fn data_batch(units: &[Unit], data: &Prepared, plan: &Plan, pad_id: u32) -> DataBatch {
    let seq = plan.data.sequence_len;
    if let Some(packs) = &data.train_packs {
        let chosen: Vec<_> = units
            .iter()
            .filter_map(|u| match u {
                Unit::Pack(i) => packs.get(*i),
                Unit::Sample(_) => None,
            })
            .collect();
        return pad_packs(&chosen, &data.train, pad_id, Some(seq));
    }
    let chosen: Vec<_> = units
        .iter()
        .filter_map(|u| match u {
            Unit::Sample(i) => data.train.get(*i),
            Unit::Pack(_) => None,
        })
        .collect();
    pad_batch(
        &chosen,
        pad_id,
        plan.data.pad_to_sequence_len.then_some(seq),
    )
}

/// The data stage's padded rows as the model's batch: sample boundaries from `seq_lens`.
pub fn model_batch(b: &DataBatch) -> Result<Batch, TrainError> {
    let rows = b.input_ids.len();
    let width = b.input_ids.first().map_or(0, Vec::len);
    let input_ids: Vec<u32> = b.input_ids.iter().flatten().copied().collect();
    let labels: Vec<i64> = b.labels.iter().flatten().map(|&l| l as i64).collect();
    let cu: Vec<Vec<usize>> = b
        .seq_lens
        .iter()
        .map(|lens| {
            let mut acc = vec![0usize];
            for &l in lens {
                acc.push(acc.last().copied().unwrap_or(0) + l as usize);
            }
            acc
        })
        .collect();
    Batch::packed(rows, width, input_ids, &cu, labels).map_err(model_err)
}

fn model_err(e: runner_model::Error) -> TrainError {
    TrainError::Model(e.to_string())
}

/// Optimizer groups as PEFT's `create_loraplus_optimizer` makes them when `loraplus_lr_ratio`
/// is set (B matrices and 1-D adapter parameters at `lr · ratio`), else one group.
pub fn param_groups(plan: &Plan, adapters: &Adapters) -> Vec<ParamGroup> {
    let wd = plan.train.optimizer.weight_decay;
    match plan.adapter.loraplus_lr_ratio {
        None => vec![ParamGroup {
            params: adapters.params.clone(),
            lr_scale: 1.0,
            weight_decay: wd,
        }],
        Some(ratio) => {
            let (fast, slow): (Vec<_>, Vec<_>) = adapters
                .params
                .iter()
                .cloned()
                .partition(|(name, var)| name.contains(".lora_B.") || var.rank() == 1);
            vec![
                ParamGroup {
                    params: slow,
                    lr_scale: 1.0,
                    weight_decay: wd,
                },
                ParamGroup {
                    params: fast,
                    lr_scale: ratio,
                    weight_decay: wd,
                },
            ]
        }
    }
}

/// Mean token loss over the evaluation set (no gradients, no dropout).
pub fn evaluate(inp: &Inputs) -> Result<Option<f64>, TrainError> {
    evaluate_on_ranks(inp, None, "eval")
}

/// [`evaluate`] with the batches shared among the ranks of `comm` (batch `i` on rank
/// `i mod world`) and the sums reduced: every rank gets the same value.
fn evaluate_on_ranks(
    inp: &Inputs,
    comm: Option<&dyn crate::dist::Communicator>,
    stage: &str,
) -> Result<Option<f64>, TrainError> {
    if inp.data.eval.is_empty() {
        return Ok(None);
    }
    let (rank, world) = comm.map_or((0, 1), |c| (c.rank(), c.world_size()));
    let (mut sum, mut n) = (0f64, 0usize);
    for (i, b) in inp
        .data
        .eval_batches(inp.plan.train.eval_batch_size, inp.pad_id, &inp.plan.data)
        .enumerate()
    {
        if i % world != rank {
            continue;
        }
        let batch = model_batch(&b)?;
        let out = runner_model::loss::causal_lm_loss(
            inp.model,
            &batch,
            false,
            runner_model::loss::DEFAULT_CHUNK,
        )
        .map_err(model_err)?;
        sum += out
            .loss_sum
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        n += out.n_tokens;
    }
    if let Some(c) = comm {
        let mut v = [sum, n as f64];
        c.all_reduce_f64(stage, &mut v).map_err(dist_err)?;
        (sum, n) = (v[0], v[1] as usize);
    }
    Ok((n > 0).then(|| sum / n as f64))
}

fn dist_err(e: crate::dist::DistError) -> TrainError {
    TrainError::Distributed(e.to_string())
}

/// Everything a checkpoint holds besides the adapter: optimizer moments, the position in the
/// schedule, the evaluation history, the plan and the recipe.
fn checkpoint_files(
    inp: &Inputs,
    opt: &AdamW,
    state: &LoopState,
) -> Result<Vec<(&'static str, Vec<u8>)>, TrainError> {
    let mut files = runner_model::peft::adapter_files(
        &inp.plan.adapter,
        inp.adapters,
        &inp.plan.model.base_model,
    )
    .map_err(|e| TrainError::Model(e.to_string()))?;
    let (tensors, steps) = opt.state();
    // Sorted, so that identical runs write byte-identical checkpoints (run.json hashes them).
    let steps: std::collections::BTreeMap<String, u64> = steps.into_iter().collect();
    let mut sorted: Vec<(String, Tensor)> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let optimizer = safetensors::serialize(sorted.iter().map(|(n, t)| (n.as_str(), t)), None)
        .map_err(|e| TrainError::Optimizer(e.to_string()))?;
    files.push(("optimizer.safetensors", optimizer));
    let trainer_state = serde_json::json!({
        "runner_version": runner_recipe::VERSION,
        "global_step": state.step,
        "epoch": state.epoch,
        "seed": inp.plan.train.seed,
        "optimizer_steps": steps,
        "best_eval_loss": state.best_eval,
        "evals_without_improvement": state.evals_without_improvement,
        "watchdog_strikes": state.watchdog_strikes,
        // The logged loss is a mean since the last log line: a resumed run continues it.
        "loss_window_sum": state.window_sum,
        "loss_window_count": state.window_count,
        "run_id": inp.run_id,
    });
    files.push((
        "trainer_state.json",
        serde_json::to_vec_pretty(&trainer_state).unwrap_or_default(),
    ));
    files.push((
        "plan.json",
        serde_json::to_vec_pretty(inp.plan).unwrap_or_default(),
    ));
    files.push(("recipe.yaml", inp.recipe_text.as_bytes().to_vec()));
    if let Some(manifest) = inp.checkpoint_manifest {
        let bytes = manifest(&files);
        files.push(("run.json", bytes));
    }
    Ok(files)
}

#[derive(Debug, Clone, Default)]
struct LoopState {
    step: u64,
    epoch: f64,
    best_eval: Option<f64>,
    evals_without_improvement: u64,
    watchdog_strikes: u64,
    /// Loss sum and count since the last log line.
    window_sum: f64,
    window_count: u64,
}

/// Restores adapter, optimizer and loop state from a checkpoint folder.
fn resume_from(dir: &Path, inp: &Inputs, opt: &mut AdamW) -> Result<LoopState, TrainError> {
    let bad = |message: String| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message,
    };
    runner_model::peft::load_adapter_weights(inp.adapters, dir).map_err(|e| bad(e.to_string()))?;
    let dev = inp.model.device();
    let tensors = candle_core::safetensors::load(dir.join("optimizer.safetensors"), dev)
        .map_err(|e| bad(format!("optimizer.safetensors: {e}")))?;
    let text = std::fs::read_to_string(dir.join("trainer_state.json"))
        .map_err(|e| bad(format!("trainer_state.json: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("trainer_state.json: {e}")))?;
    let steps: std::collections::HashMap<String, u64> =
        serde_json::from_value(v["optimizer_steps"].clone())
            .map_err(|e| bad(format!("trainer_state.json optimizer_steps: {e}")))?;
    opt.load_state(&tensors, &steps)?;
    Ok(LoopState {
        step: v["global_step"]
            .as_u64()
            .ok_or_else(|| bad("trainer_state.json has no global_step".into()))?,
        epoch: v["epoch"].as_f64().unwrap_or(0.0),
        best_eval: v["best_eval_loss"].as_f64(),
        evals_without_improvement: v["evals_without_improvement"].as_u64().unwrap_or(0),
        watchdog_strikes: v["watchdog_strikes"].as_u64().unwrap_or(0),
        window_sum: v["loss_window_sum"].as_f64().unwrap_or(0.0),
        window_count: v["loss_window_count"].as_u64().unwrap_or(0),
    })
}

/// Every adapter's dropout stream restarts per step from (seed, step), so a resumed run draws
/// the same masks as an uninterrupted one.
fn due(step: u64, total: u64, steps_per_epoch: u64, every: Option<EveryN>) -> bool {
    match every {
        None => false,
        Some(EveryN::Steps(n)) => n > 0 && step.is_multiple_of(n),
        Some(EveryN::PerEpoch(n)) => {
            // n evenly spaced points per epoch, the last at the epoch's end.
            let spe = steps_per_epoch.max(1);
            let within = (step - 1) % spe + 1;
            let n = n.min(spe).max(1);
            (1..=n).any(|k| within == (k * spe).div_ceil(n)) || step == total
        }
    }
}

#[derive(Clone, Copy)]
enum EveryN {
    Steps(u64),
    PerEpoch(u64),
}

/// Runs the loop. The final adapter is written to `output_dir` on every stop except a
/// non-finite loss (whose last good state is the saved checkpoint instead).
pub fn train(inp: &Inputs, control: &Control) -> Result<Outcome, TrainError> {
    let started = Instant::now();
    let plan = inp.plan;
    let t = &plan.train;
    let out_dir = t.output_dir.clone();
    let comm = control.comm.as_deref();
    let (rank, world) = comm.map_or((0, 1), |c| (c.rank(), c.world_size()));
    // Rank 0 writes every file (metrics, checkpoints, the adapter); the others only train.
    let writer = rank == 0;
    let mut work = schedule(plan, inp.data, world)?;
    let total = work.total();
    if let (Some(note), true, false) = (work.note(), writer, control.quiet) {
        eprintln!("{note}");
    }
    if total == 0 {
        return Err(TrainError::Optimizer(
            "there is nothing to train: the prepared training set is empty".into(),
        ));
    }
    let steps_per_epoch = work.steps_per_epoch();
    let sched = LrSchedule::new(t.learning_rate, &t.scheduler, total);
    let mut opt = AdamW::new(param_groups(plan, inp.adapters), &t.optimizer)?;

    // --- resume -------------------------------------------------------------------------
    let resume_dir = match &t.resume {
        Resume::Fresh => None,
        Resume::From(dir) => Some(dir.clone()),
        Resume::Latest => checkpoint::latest(&out_dir, inp.run_id)?,
    };
    let mut state = match &resume_dir {
        Some(dir) => resume_from(dir, inp, &mut opt)?,
        None => LoopState::default(),
    };
    if state.step > total {
        // Its adapter would be saved as this run's result without a step of this schedule.
        return Err(TrainError::Checkpoint {
            path: resume_dir.unwrap_or_default(),
            message: format!(
                "it is at step {}, past the {total} steps of this run's schedule; resume from an earlier checkpoint or start a new run",
                state.step
            ),
        });
    }
    if let (false, Some(dir)) = (control.quiet, &resume_dir) {
        eprintln!("resuming from {} at step {}", dir.display(), state.step);
    }

    let mut log = if writer {
        Some(MetricsLog::open_at(&out_dir, state.step)?)
    } else {
        None
    };
    let mut tensorboard = match (writer, t.tensorboard) {
        (true, true) => Some(crate::tensorboard::EventWriter::open(&out_dir)?),
        _ => None,
    };
    let eval_every = match t.eval {
        EvalSchedule::Never => None,
        EvalSchedule::Steps(n) => Some(EveryN::Steps(n)),
        EvalSchedule::PerEpoch(n) => Some(EveryN::PerEpoch(n)),
    };
    let save_every = match t.save.every {
        SaveEvery::End => None,
        SaveEvery::Steps(n) => Some(EveryN::Steps(n)),
        SaveEvery::PerEpoch(n) => Some(EveryN::PerEpoch(n)),
    };
    let bar = (control.progress_bar && !control.quiet).then(|| {
        let pb = indicatif::ProgressBar::new(total);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb.set_position(state.step);
        pb
    });

    let mut grads = Grads::new();
    let mut losses = Vec::new();
    let mut eval_losses = Vec::new();
    let mut tokens_seen = 0u64;
    let mut tokens_labelled = 0u64;
    let mut stop = StopReason::Finished;
    let mut stop_checkpoint = None;
    let loop_start = Instant::now();

    // A stop request (SIGINT/SIGTERM) waits for the end of the step inside the loop.
    let graceful = runner_io::interrupt::graceful();
    while state.step < total {
        let work_k = &work.step(state.step);
        let step_no = state.step + 1; // 1-based, as logged and saved
        let mine = crate::dist::shard(work_k.micro_batches.len(), rank, world);
        let first_micro = mine.start as u64;
        let batches: Vec<Batch> = work_k.micro_batches[mine]
            .iter()
            .map(|units| model_batch(&data_batch(units, inp.data, plan, inp.pad_id)))
            .collect::<Result<_, _>>()?;
        let mut n_tokens = 0usize;
        for b in &batches {
            n_tokens += b.targets().map_err(model_err)?.len();
        }
        let mut step_tokens = batches
            .iter()
            .map(|b| (b.batch_size * b.seq_len) as u64)
            .sum::<u64>();
        if let Some(c) = comm {
            // Every rank scales by the trained tokens of the whole step, across ranks.
            let mut v = [n_tokens as f64, step_tokens as f64];
            c.all_reduce_f64(&format!("step {step_no}: token counts"), &mut v)
                .map_err(dist_err)?;
            (n_tokens, step_tokens) = (v[0] as usize, v[1] as u64);
        }
        // The step's loss is the mean over all its trained tokens: each micro-batch contributes
        // its token-loss sum divided by the step's token count.
        let mut loss_sum = 0f64;
        grads.clear();
        for (i, b) in batches.iter().enumerate() {
            // Dropout masks keyed by the micro-batch's index within the whole step: a rank
            // draws exactly the masks one process would for the same micro-batch.
            inp.model
                .set_dropout_position(state.step, first_micro + i as u64);
            let out = runner_model::loss::causal_lm_loss(
                inp.model,
                b,
                true,
                runner_model::loss::DEFAULT_CHUNK,
            )
            .map_err(model_err)?;
            if out.n_tokens == 0 {
                continue;
            }
            let scaled = (&out.loss_sum / n_tokens.max(1) as f64)?;
            let store = runner_model::backward(&scaled, inp.model).map_err(model_err)?;
            grads.accumulate(&store, opt.groups())?;
            loss_sum += out
                .loss_sum
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
        let mut stop_requested = control.stop.load(Ordering::SeqCst);
        if let Some(c) = comm {
            // Only adapter gradients travel; every rank then applies the same update.
            let mut extra = [loss_sum, stop_requested as u8 as f64];
            crate::dist::all_reduce_grads(
                c,
                &mut grads,
                opt.groups(),
                &mut extra,
                &format!("step {step_no}"),
                crate::dist::BUCKET_BYTES,
            )
            .map_err(dist_err)?;
            loss_sum = extra[0];
            stop_requested = extra[1] > 0.0;
        }
        let step_loss = loss_sum / n_tokens.max(1) as f64;
        let norm = grads.global_norm()?;
        if !step_loss.is_finite() || !norm.is_finite() {
            let what = if step_loss.is_finite() {
                format!("gradient norm {norm} at step {step_no}")
            } else {
                format!("loss {step_loss} at step {step_no}")
            };
            // The parameters are still those of the last good step: save them.
            if writer {
                let files = checkpoint_files(inp, &opt, &state)?;
                let _faults = runner_io::fault::scope();
                stop_checkpoint = Some(checkpoint::save(&out_dir, state.step, &files)?);
            }
            stop = StopReason::NonFinite { what };
            break;
        }
        let lr = sched.lr(state.step);
        opt.step(&grads, lr, clip_coefficient(norm, t.max_grad_norm))?;
        state.step = step_no;
        state.epoch = work_k.epoch;
        tokens_labelled += n_tokens as u64;
        tokens_seen += step_tokens;
        losses.push((step_no, step_loss));
        state.window_sum += step_loss;
        state.window_count += 1;
        let tps = tokens_seen as f64 / loop_start.elapsed().as_secs_f64().max(1e-9);

        if step_no == 1 || step_no.is_multiple_of(t.logging_steps.max(1)) || step_no == total {
            let mean = state.window_sum / state.window_count.max(1) as f64;
            (state.window_sum, state.window_count) = (0.0, 0);
            let record = Record {
                step: step_no,
                epoch: state.epoch,
                loss: Some(mean),
                learning_rate: Some(lr),
                grad_norm: Some(norm),
                tokens_per_second: Some(tps),
                ..Default::default()
            };
            if let Some(log) = &mut log {
                log.write(&record)?;
            }
            if let Some(tb) = &mut tensorboard {
                tb.write(&record)?;
            }
            let line = format!(
                "step {step_no}/{total} loss {mean:.4} lr {lr:.3e} grad_norm {norm:.3} {tps:.0} tok/s"
            );
            match &bar {
                Some(pb) => pb.set_message(format!("loss {mean:.4} lr {lr:.2e} {tps:.0} tok/s")),
                None if !control.quiet => eprintln!("{line}"),
                None => {}
            }
        }
        if let Some(pb) = &bar {
            pb.set_position(step_no);
        }

        if let Some(w) = &t.loss_watchdog {
            if step_loss > w.threshold {
                state.watchdog_strikes += 1;
            } else {
                state.watchdog_strikes = 0;
            }
            if state.watchdog_strikes >= w.patience {
                stop = StopReason::Watchdog {
                    loss: step_loss,
                    threshold: w.threshold,
                };
            }
        }

        if due(step_no, total, steps_per_epoch, eval_every)
            && let Some(eval_loss) =
                evaluate_on_ranks(inp, comm, &format!("step {step_no}: evaluation"))?
        {
            eval_losses.push((step_no, eval_loss));
            let record = Record {
                step: step_no,
                epoch: state.epoch,
                eval_loss: Some(eval_loss),
                eval_perplexity: Some(eval_loss.exp()),
                ..Default::default()
            };
            if let Some(log) = &mut log {
                log.write(&record)?;
            }
            if let Some(tb) = &mut tensorboard {
                tb.write(&record)?;
            }
            if !control.quiet && bar.is_none() {
                eprintln!(
                    "step {step_no}: eval loss {eval_loss:.4} perplexity {:.3}",
                    eval_loss.exp()
                );
            }
            if state.best_eval.is_none_or(|b| eval_loss < b) {
                state.best_eval = Some(eval_loss);
                state.evals_without_improvement = 0;
            } else {
                state.evals_without_improvement += 1;
                if let Some(p) = t.early_stopping_patience
                    && state.evals_without_improvement >= p
                {
                    stop = StopReason::EarlyStopping {
                        best_eval_loss: state.best_eval.unwrap_or(eval_loss),
                    };
                }
            }
        }

        if stop_requested && stop == StopReason::Finished {
            stop = StopReason::Interrupted;
        }
        let early = stop != StopReason::Finished;
        let scheduled = due(step_no, total, steps_per_epoch, save_every)
            || (t.save.save_first_step && step_no == 1);
        if (scheduled || early) && writer {
            let files = checkpoint_files(inp, &opt, &state)?;
            let _faults = runner_io::fault::scope();
            let dir = checkpoint::save(&out_dir, step_no, &files)?;
            checkpoint::rotate(&out_dir, t.save.total_limit, inp.run_id)?;
            if early {
                stop_checkpoint = Some(dir);
            }
        }
        if early {
            break;
        }
    }
    drop(graceful);
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }

    let _faults = runner_io::fault::scope();
    if writer && !matches!(stop, StopReason::NonFinite { .. }) {
        runner_model::peft::save_adapter(
            &out_dir,
            &plan.adapter,
            inp.adapters,
            &plan.model.base_model,
        )
        .map_err(|e| TrainError::Model(e.to_string()))?;
    }
    if let Some(log) = &log {
        let records = crate::metrics::read(log.path())?;
        let chart = crate::metrics::chart_svg(
            &records,
            &format!("{} — {}", plan.model.base_model, out_dir.display()),
        );
        runner_io::atomic::write(&out_dir.join("loss.svg"), chart.as_bytes()).map_err(|e| {
            TrainError::Io {
                path: e.path,
                source: e.source,
            }
        })?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Outcome {
        stop,
        steps: state.step,
        total_steps: total,
        losses,
        eval_losses,
        checkpoint: stop_checkpoint,
        tokens_per_second: tokens_seen as f64 / loop_start.elapsed().as_secs_f64().max(1e-9),
        tokens_seen,
        tokens_labelled,
        seconds,
    })
}
