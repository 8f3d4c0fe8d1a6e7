//! The training section: duration, optimizer, schedule, precision, evaluation, checkpoints.

use super::Resolver;
use crate::plan::*;
use crate::raw::*;
use std::path::PathBuf;

pub(super) fn resolve_train(
    r: &mut Resolver,
    raw: &RawRecipe,
    has_eval: bool,
) -> Option<TrainPlan> {
    let positive = |v: u64| v >= 1;
    for (key, value) in [
        ("micro_batch_size", raw.micro_batch_size),
        ("eval_batch_size", raw.eval_batch_size),
        (
            "gradient_accumulation_steps",
            raw.gradient_accumulation_steps,
        ),
        ("max_steps", raw.max_steps),
        ("logging_steps", raw.logging_steps),
        ("eval_steps", raw.eval_steps),
        ("save_steps", raw.save_steps),
        ("saves_per_epoch", raw.saves_per_epoch),
        ("save_total_limit", raw.save_total_limit),
        ("early_stopping_patience", raw.early_stopping_patience),
        ("loss_watchdog_patience", raw.loss_watchdog_patience),
    ] {
        r.check(key, value, positive, "at least 1");
    }
    r.check("num_epochs", raw.num_epochs, |v| v > 0.0, "greater than 0");
    r.check(
        "learning_rate",
        raw.learning_rate,
        |v| v > 0.0,
        "greater than 0",
    );
    r.check(
        "warmup_ratio",
        raw.warmup_ratio,
        |v| (0.0..1.0).contains(&v),
        "in [0, 1)",
    );
    r.check(
        "cosine_min_lr_ratio",
        raw.cosine_min_lr_ratio,
        |v| (0.0..=1.0).contains(&v),
        "in [0, 1]",
    );
    r.check("weight_decay", raw.weight_decay, |v| v >= 0.0, "at least 0");
    r.check(
        "adam_beta1",
        raw.adam_beta1,
        |v| (0.0..1.0).contains(&v),
        "in [0, 1)",
    );
    r.check(
        "adam_beta2",
        raw.adam_beta2,
        |v| (0.0..1.0).contains(&v),
        "in [0, 1)",
    );
    r.check(
        "adam_epsilon",
        raw.adam_epsilon,
        |v| v > 0.0,
        "greater than 0",
    );
    r.check(
        "max_grad_norm",
        raw.max_grad_norm,
        |v| v >= 0.0,
        "at least 0",
    );
    r.check(
        "loss_watchdog_threshold",
        raw.loss_watchdog_threshold,
        |v| v > 0.0,
        "greater than 0",
    );

    if r.origin("num_epochs").is_none() && r.origin("max_steps").is_none() {
        r.error(
            "num_epochs",
            "the recipe does not say how long to train",
            "set `num_epochs` (e.g. 1) or `max_steps`",
        );
    }
    let learning_rate = match raw.learning_rate {
        Some(lr) => lr,
        None if r.origin("learning_rate").is_some() => 0.0, // present but invalid: reported
        None => {
            r.error(
                "learning_rate",
                "missing required key `learning_rate`",
                "add e.g. `learning_rate: 0.0002` (a common LoRA rate)",
            );
            0.0
        }
    };
    if raw.warmup_steps.is_some() && raw.warmup_ratio.is_some() {
        r.error(
            "warmup_ratio",
            "`warmup_steps` and `warmup_ratio` are exclusive",
            "keep one of them",
        );
    }
    let kind = match raw.lr_scheduler {
        None | Some(SchedulerName::Cosine) => SchedulerKind::Cosine,
        Some(SchedulerName::Linear) => SchedulerKind::Linear,
        Some(SchedulerName::Constant) => SchedulerKind::Constant,
        Some(SchedulerName::ConstantWithWarmup) => SchedulerKind::ConstantWithWarmup,
    };
    let warmup = match (raw.warmup_steps, raw.warmup_ratio) {
        (Some(s), _) => Warmup::Steps(s),
        (None, Some(f)) => Warmup::Ratio(f),
        (None, None) => Warmup::Steps(0),
    };
    if kind == SchedulerKind::Constant && warmup != Warmup::Steps(0) {
        let key = if raw.warmup_steps.is_some() {
            "warmup_steps"
        } else {
            "warmup_ratio"
        };
        r.error(
            key,
            "`lr_scheduler: constant` has no warmup",
            "use `lr_scheduler: constant_with_warmup`, or remove the warmup",
        );
    }
    if raw.cosine_min_lr_ratio.is_some() && kind != SchedulerKind::Cosine {
        r.error(
            "cosine_min_lr_ratio",
            "`cosine_min_lr_ratio` applies only to `lr_scheduler: cosine`",
            "remove it or use the cosine schedule",
        );
    }

    let optimizer = raw.optimizer.unwrap_or(OptimizerName::AdamwTorch);
    match optimizer {
        OptimizerName::AdamwTorch | OptimizerName::AdamwTorchFused => {}
        OptimizerName::AdamwHf => r.substitute(
            "optimizer",
            "adamw_hf",
            "AdamW (torch.optim.AdamW's update, which transformers' removed AdamW class matched)",
        ),
        other => r.substitute(
            "optimizer",
            other.as_str(),
            "AdamW with f32 state: only adapter parameters have optimizer state, so quantized (8-bit, 4-bit, FP8) or paged state would save little memory",
        ),
    }

    let precision = match (raw.bf16, raw.fp16) {
        (Some(BoolOrAuto::Bool(true)), Some(true)) | (Some(BoolOrAuto::Auto(_)), Some(true)) => {
            r.error("fp16", "`bf16` and `fp16` are both enabled", "choose one");
            Precision::F32
        }
        (Some(BoolOrAuto::Bool(true)), _) => Precision::Bf16,
        (Some(BoolOrAuto::Auto(_)), _) => Precision::Auto,
        (_, Some(true)) => Precision::F16,
        _ => Precision::F32,
    };

    let gradient_checkpointing = match &raw.gradient_checkpointing {
        None => false,
        Some(BoolOrString::Bool(b)) => *b,
        Some(BoolOrString::Name(n)) if n == "unsloth" || n == "offload" => {
            r.substitute(
                "gradient_checkpointing",
                n.clone(),
                "recompute per decoder layer (activations are not offloaded to host memory)",
            );
            true
        }
        Some(BoolOrString::Name(n)) => {
            r.error(
                "gradient_checkpointing",
                format!("unknown gradient checkpointing mode `{n}`"),
                "use true, false, unsloth or offload",
            );
            false
        }
    };
    if let Some(kwargs) = &raw.gradient_checkpointing_kwargs {
        for k in kwargs.keys() {
            if k == "use_reentrant" {
                r.substitute(
                    "gradient_checkpointing_kwargs.use_reentrant",
                    kwargs[k].to_string(),
                    "no effect: runner's recompute has a single (non-reentrant) form",
                );
            } else {
                r.error(
                    &format!("gradient_checkpointing_kwargs.{k}"),
                    format!("gradient checkpointing option `{k}` is not supported"),
                    "only `use_reentrant` is accepted",
                );
            }
        }
    }
    if raw.flash_attention == Some(true) {
        r.substitute(
            "flash_attention",
            "true",
            "runner's own memory-efficient attention (the same result, computed without the full attention matrix on GPU)",
        );
    }
    if raw.sdp_attention == Some(true) {
        r.substitute(
            "sdp_attention",
            "true",
            "runner's own attention (the same result)",
        );
    }
    if let Some(a) = raw.attn_implementation
        && a != AttnName::Eager
    {
        r.substitute(
            "attn_implementation",
            a.as_str(),
            "runner's own attention (the same result)",
        );
    }
    if raw.strict == Some(false) {
        r.substitute(
            "strict",
            "false",
            "strict validation: runner always rejects unknown and unsupported keys",
        );
    }

    if raw.eval_steps.is_some() && raw.evals_per_epoch.is_some_and(|n| n > 0) {
        r.error(
            "evals_per_epoch",
            "`eval_steps` and `evals_per_epoch` are exclusive",
            "keep one of them",
        );
    }
    if raw.save_steps.is_some() && raw.saves_per_epoch.is_some() {
        r.error(
            "saves_per_epoch",
            "`save_steps` and `saves_per_epoch` are exclusive",
            "keep one of them",
        );
    }
    let eval = match (raw.eval_steps, raw.evals_per_epoch) {
        (Some(s), _) => EvalSchedule::Steps(s),
        (None, Some(0)) => EvalSchedule::Never, // Axolotl's `evals_per_epoch: 0`: no evaluation
        (None, Some(n)) if has_eval => EvalSchedule::PerEpoch(n),
        (None, None) if has_eval => EvalSchedule::PerEpoch(1),
        (None, _) => EvalSchedule::Never,
    };
    // As Axolotl does, `evals_per_epoch` without an evaluation set is a warning, not an error
    // (issue 15): training is the same, there is just nothing to evaluate.
    if let Some(n) = raw.evals_per_epoch
        && (n == 0 || !has_eval)
    {
        r.substitute(
            "evals_per_epoch",
            n.to_string(),
            if n == 0 {
                "no evaluation (0 evaluations per epoch)"
            } else {
                "no evaluation: the recipe has no evaluation set (val_set_size 0 or unset, no test_datasets); set one to evaluate"
            },
        );
    }
    if !has_eval {
        for key in ["eval_steps", "early_stopping_patience"] {
            if r.origin(key).is_some() {
                r.error(
                    key,
                    format!("`{key}` needs an evaluation set"),
                    "set `val_set_size` (e.g. 0.05) or `test_datasets`",
                );
            }
        }
    }
    let save_every = match (raw.save_steps, raw.saves_per_epoch) {
        (Some(s), _) => SaveEvery::Steps(s),
        (None, Some(n)) => SaveEvery::PerEpoch(n),
        (None, None) => SaveEvery::PerEpoch(1),
    };
    if raw.loss_watchdog_patience.is_some() && raw.loss_watchdog_threshold.is_none() {
        r.error(
            "loss_watchdog_patience",
            "`loss_watchdog_patience` without `loss_watchdog_threshold`",
            "add `loss_watchdog_threshold` (e.g. 5.0) or remove the patience",
        );
    }
    let resume = match (
        &raw.resume_from_checkpoint,
        raw.auto_resume_from_checkpoints,
    ) {
        (Some(_), Some(true)) => {
            r.error(
                "auto_resume_from_checkpoints",
                "`resume_from_checkpoint` and `auto_resume_from_checkpoints` are both set",
                "keep one: a fixed checkpoint, or the newest in output_dir",
            );
            Resume::Fresh
        }
        (Some(p), _) => {
            r.local_path_exists("resume_from_checkpoint", p, "checkpoint");
            Resume::From(PathBuf::from(p))
        }
        (None, Some(true)) => Resume::Latest,
        _ => Resume::Fresh,
    };

    let micro_batch_size = raw.micro_batch_size.unwrap_or(1) as usize;
    for (plan, key) in [
        ("train.micro_batch_size", "micro_batch_size"),
        (
            "train.gradient_accumulation_steps",
            "gradient_accumulation_steps",
        ),
        ("train.num_epochs", "num_epochs"),
        ("train.max_steps", "max_steps"),
        ("train.learning_rate", "learning_rate"),
        ("train.optimizer", "optimizer"),
        ("train.optimizer.beta1", "adam_beta1"),
        ("train.optimizer.beta2", "adam_beta2"),
        ("train.optimizer.epsilon", "adam_epsilon"),
        ("train.optimizer.weight_decay", "weight_decay"),
        ("train.scheduler.kind", "lr_scheduler"),
        (
            "train.scheduler.warmup",
            if raw.warmup_ratio.is_some() {
                "warmup_ratio"
            } else {
                "warmup_steps"
            },
        ),
        ("train.scheduler.cosine_min_lr_ratio", "cosine_min_lr_ratio"),
        ("train.max_grad_norm", "max_grad_norm"),
        (
            "train.precision",
            if raw.fp16 == Some(true) {
                "fp16"
            } else {
                "bf16"
            },
        ),
        ("train.tf32", "tf32"),
        ("train.gradient_checkpointing", "gradient_checkpointing"),
        ("train.logging_steps", "logging_steps"),
        ("train.save.total_limit", "save_total_limit"),
        ("train.save.save_first_step", "save_first_step"),
        ("train.output_dir", "output_dir"),
        ("train.seed", "seed"),
        ("train.early_stopping_patience", "early_stopping_patience"),
        ("train.loss_watchdog", "loss_watchdog_threshold"),
        ("train.loss_watchdog.patience", "loss_watchdog_patience"),
        ("train.tensorboard", "use_tensorboard"),
    ] {
        r.from(plan, key);
    }
    match raw.eval_batch_size {
        Some(_) => r.from("train.eval_batch_size", "eval_batch_size"),
        None => r.derived("train.eval_batch_size", "same as micro_batch_size"),
    }
    match (raw.eval_steps, raw.evals_per_epoch) {
        (Some(_), _) => r.from("train.eval", "eval_steps"),
        (None, Some(_)) => r.from("train.eval", "evals_per_epoch"),
        (None, None) if has_eval => {
            r.derived("train.eval", "once per epoch: an evaluation set exists")
        }
        (None, None) => r.derived("train.eval", "no evaluation set"),
    }
    match (raw.save_steps, raw.saves_per_epoch) {
        (Some(_), _) => r.from("train.save.every", "save_steps"),
        (None, Some(_)) => r.from("train.save.every", "saves_per_epoch"),
        (None, None) => r.from("train.save.every", "saves_per_epoch"),
    }
    r.from(
        "train.resume",
        if raw.resume_from_checkpoint.is_some() {
            "resume_from_checkpoint"
        } else {
            "auto_resume_from_checkpoints"
        },
    );

    Some(TrainPlan {
        micro_batch_size,
        eval_batch_size: raw.eval_batch_size.map_or(micro_batch_size, |b| b as usize),
        gradient_accumulation_steps: raw.gradient_accumulation_steps.unwrap_or(1) as usize,
        num_epochs: raw.num_epochs.unwrap_or(1.0),
        max_steps: raw.max_steps,
        learning_rate,
        optimizer: Optimizer {
            beta1: raw.adam_beta1.unwrap_or(0.9),
            beta2: raw.adam_beta2.unwrap_or(0.999),
            epsilon: raw.adam_epsilon.unwrap_or(1e-8),
            weight_decay: raw.weight_decay.unwrap_or(0.0),
        },
        scheduler: Scheduler {
            kind,
            warmup,
            cosine_min_lr_ratio: raw.cosine_min_lr_ratio,
        },
        max_grad_norm: match raw.max_grad_norm {
            Some(0.0) => None,
            Some(v) => Some(v),
            None => Some(1.0),
        },
        precision,
        tf32: raw.tf32.unwrap_or(false),
        gradient_checkpointing,
        logging_steps: raw.logging_steps.unwrap_or(1),
        eval,
        save: SaveSchedule {
            every: save_every,
            total_limit: raw.save_total_limit,
            save_first_step: raw.save_first_step.unwrap_or(false),
        },
        output_dir: PathBuf::from(
            raw.output_dir
                .clone()
                .unwrap_or_else(|| "./outputs/out".into()),
        ),
        resume,
        seed: raw.seed.unwrap_or(42),
        early_stopping_patience: raw.early_stopping_patience,
        loss_watchdog: raw.loss_watchdog_threshold.map(|threshold| LossWatchdog {
            threshold,
            patience: raw.loss_watchdog_patience.unwrap_or(3),
        }),
        tensorboard: raw.use_tensorboard.unwrap_or(false),
    })
}
