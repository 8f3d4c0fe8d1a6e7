//! The training loop end to end on the tiny random Llama and the smoke chat data (issue 5):
//! determinism, exact resume, accumulation normalisation, stopping rules, output files.

use candle_core::{DType, Device};
use runner_recipe::Plan;
use runner_train::trainer::{Control, Inputs, Outcome, StopReason, train};
use std::path::{Path, PathBuf};

const RECIPE: &str = "
base_model: builtin:tiny-llama
datasets:
  - path: RECIPES/data/smoke-chat.jsonl
    type: chat_template
    chat_template: chatml
val_set_size: 0.1
sequence_len: 128
sample_packing: true
adapter: lora
lora_r: 4
lora_alpha: 8
lora_dropout: 0.1
lora_target_linear: true
micro_batch_size: 2
gradient_accumulation_steps: 2
max_steps: 6
learning_rate: 0.01
warmup_steps: 1
logging_steps: 1
seed: 7
";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn plan(out: &Path, overrides: &[&str]) -> (Plan, String) {
    let text = RECIPE.replace("RECIPES", &root().join("recipes").display().to_string());
    let mut sets: Vec<String> = vec![
        format!("output_dir={}", out.display()),
        format!("dataset_prepared_path={}", out.join("prepared").display()),
    ];
    sets.extend(overrides.iter().map(|s| s.to_string()));
    let loaded = runner_recipe::load_str("loop.yaml", &text, &sets)
        .unwrap_or_else(|e| panic!("{}", e.render(false)));
    (loaded.plan, text)
}

fn run(plan: &Plan, text: &str, model_dir: &Path) -> Outcome {
    run_in(plan, text, model_dir, DType::F32)
}

/// As [`run`] with the frozen base (and so the activations) in `dtype`.
fn run_in(plan: &Plan, text: &str, model_dir: &Path, dtype: DType) -> Outcome {
    let tok = runner_data::load_tokenizer(&plan.model).expect("tokenizer");
    let data = runner_data::prepare(&plan.data, &tok).expect("data");
    let mut model = runner_model::load_folder(model_dir, dtype, &Device::Cpu).expect("tiny model");
    model.gradient_checkpointing = plan.train.gradient_checkpointing;
    let adapters =
        runner_model::inject(&mut model, &plan.adapter, plan.train.seed).expect("adapters");
    let inputs = Inputs {
        plan,
        recipe_text: text,
        model: &model,
        adapters: &adapters,
        data: &data,
        pad_id: tok.pad_id(),
        checkpoint_manifest: None,
        run_id: None,
    };
    train(
        &inputs,
        &Control {
            quiet: true,
            ..Default::default()
        },
    )
    .expect("training runs")
}

fn tiny_model(dir: &Path) -> PathBuf {
    let model_dir = dir.join("tiny-llama");
    runner_model::tiny::write_tiny_llama(&model_dir, 0).expect("tiny model");
    model_dir
}

#[test]
fn issue_5_same_seed_same_loss_curve_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tiny_model(tmp.path());
    let (p1, text) = plan(&tmp.path().join("a"), &[]);
    let (p2, _) = plan(&tmp.path().join("b"), &[]);
    let a = run(&p1, &text, &model_dir);
    let b = run(&p2, &text, &model_dir);
    assert_eq!(a.stop, StopReason::Finished);
    assert_eq!(a.losses.len(), 6);
    let bits = |o: &Outcome| {
        o.losses
            .iter()
            .map(|(_, l)| l.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&a), bits(&b));
    // A different seed changes the curve (data order, dropout, init).
    let (p3, _) = plan(&tmp.path().join("c"), &["seed=8"]);
    assert_ne!(bits(&a), bits(&run(&p3, &text, &model_dir)));
}

#[test]
fn issue_5_resumed_run_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tiny_model(tmp.path());
    let (full, text) = plan(&tmp.path().join("full"), &["save_steps=3"]);
    let whole = run(&full, &text, &model_dir);
    let ckpt = full.train.output_dir.join("checkpoint-3");
    assert!(ckpt.join("adapter_model.safetensors").exists());
    assert!(ckpt.join("optimizer.safetensors").exists());
    let (resumed, _) = plan(
        &tmp.path().join("resumed"),
        &[&format!("resume_from_checkpoint={}", ckpt.display())],
    );
    let rest = run(&resumed, &text, &model_dir);
    assert_eq!(rest.losses.first().map(|l| l.0), Some(4));
    let tail: Vec<u64> = whole.losses[3..].iter().map(|(_, l)| l.to_bits()).collect();
    let again: Vec<u64> = rest.losses.iter().map(|(_, l)| l.to_bits()).collect();
    assert_eq!(tail, again, "a resumed run must give the same losses");
}

#[test]
fn issue_5_loss_is_normalised_over_the_whole_step() {
    // 1 × 4 accumulation and 4 × 1 batches see the same tokens in one step: same loss and
    // (up to float summation order) the same update.
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tiny_model(tmp.path());
    let common = [
        "max_steps=1",
        "sample_packing=false",
        "lora_dropout=0",
        "shuffle_merged_datasets=false",
    ];
    let mut a_set = common.to_vec();
    a_set.extend(["micro_batch_size=1", "gradient_accumulation_steps=4"]);
    let mut b_set = common.to_vec();
    b_set.extend(["micro_batch_size=4", "gradient_accumulation_steps=1"]);
    let (pa, text) = plan(&tmp.path().join("a"), &a_set);
    let (pb, _) = plan(&tmp.path().join("b"), &b_set);
    let a = run(&pa, &text, &model_dir);
    let b = run(&pb, &text, &model_dir);
    let (la, lb) = (a.losses[0].1, b.losses[0].1);
    assert!((la - lb).abs() < 1e-5 * la.abs(), "{la} vs {lb}");
}

#[test]
fn issue_5_writes_metrics_chart_and_a_peft_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tiny_model(tmp.path());
    let (p, text) = plan(&tmp.path().join("out"), &["eval_steps=3"]);
    let out = run(&p, &text, &model_dir);
    assert_eq!(out.eval_losses.len(), 2);
    let dir = &p.train.output_dir;
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"loss\"")).count(),
        6
    );
    assert_eq!(
        metrics.lines().filter(|l| l.contains("eval_loss")).count(),
        2
    );
    assert!(
        std::fs::read_to_string(dir.join("loss.svg"))
            .unwrap()
            .contains("<svg")
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    let weights =
        candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    assert!(weights.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    assert_eq!(weights.len(), 2 * 7 * 2);
}

#[test]
fn issue_5_watchdog_and_early_stopping_stop_with_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tiny_model(tmp.path());
    let (p, text) = plan(
        &tmp.path().join("w"),
        &["loss_watchdog_threshold=0.001", "loss_watchdog_patience=2"],
    );
    let out = run(&p, &text, &model_dir);
    assert!(
        matches!(out.stop, StopReason::Watchdog { .. }),
        "{:?}",
        out.stop
    );
    assert_eq!(out.steps, 2);
    assert!(out.checkpoint.unwrap().join("trainer_state.json").exists());

    // With a learning rate of ~0 the eval loss cannot improve: patience 1 stops at the 2nd eval.
    let (p, text) = plan(
        &tmp.path().join("e"),
        &[
            "learning_rate=1e-30",
            "eval_steps=1",
            "early_stopping_patience=1",
        ],
    );
    let out = run(&p, &text, &model_dir);
    assert!(
        matches!(out.stop, StopReason::EarlyStopping { .. }),
        "{:?}",
        out.stop
    );
    assert_eq!(out.steps, 2);
}

#[test]
fn issue_5_a_non_finite_loss_stops_with_the_last_good_state_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tiny_model(tmp.path());
    let (p, text) = plan(&tmp.path().join("nan"), &[]);
    let tok = runner_data::load_tokenizer(&p.model).expect("tokenizer");
    let data = runner_data::prepare(&p.data, &tok).expect("data");
    let mut model = runner_model::load_folder(&model_dir, DType::F32, &Device::Cpu).unwrap();
    let adapters = runner_model::inject(&mut model, &p.adapter, p.train.seed).unwrap();
    // Poison one B matrix: the very first loss is NaN.
    let (_, b) = adapters
        .params
        .iter()
        .find(|(n, _)| n.contains("lora_B"))
        .unwrap();
    b.set(&(b.as_tensor().ones_like().unwrap() * f64::NAN).unwrap())
        .unwrap();
    let inputs = Inputs {
        plan: &p,
        recipe_text: &text,
        model: &model,
        adapters: &adapters,
        data: &data,
        pad_id: tok.pad_id(),
        checkpoint_manifest: None,
        run_id: None,
    };
    let control = Control {
        quiet: true,
        ..Default::default()
    };
    let out = train(&inputs, &control).unwrap();
    assert!(
        matches!(out.stop, StopReason::NonFinite { .. }),
        "{:?}",
        out.stop
    );
    assert_eq!(out.steps, 0);
    let ckpt = out.checkpoint.unwrap();
    assert!(ckpt.ends_with("checkpoint-0"));
    assert!(ckpt.join("adapter_model.safetensors").exists());
    // No final adapter is written from a poisoned state.
    assert!(
        !p.train
            .output_dir
            .join("adapter_model.safetensors")
            .exists()
    );
}

/// `lora_modules_to_save` (issue 7): the trainable copies train (they move away from the base),
/// sit in the optimizer and LoRA+ group A as PEFT's `create_loraplus_optimizer` puts them, are
/// checkpointed and restored (a resumed run continues bit for bit), and end up in the adapter
/// file under PEFT's names.
#[test]
fn issue_7_modules_to_save_train_checkpoint_resume_and_save() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tiny_model(tmp.path());
    let sets = [
        "lora_modules_to_save=[embed_tokens, lm_head]",
        "save_steps=3",
        "gradient_checkpointing=true",
        "loraplus_lr_ratio=4",
    ];
    let (full, text) = plan(&tmp.path().join("full"), &sets);
    let whole = run(&full, &text, &model_dir);
    assert_eq!(whole.stop, StopReason::Finished);
    let names = [
        "base_model.model.model.embed_tokens.weight",
        "base_model.model.lm_head.weight",
    ];
    let base = runner_model::load_folder(&model_dir, DType::F32, &Device::Cpu).unwrap();
    let saved = candle_core::safetensors::load(
        full.train.output_dir.join("adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for (name, base_w) in names.iter().zip([&base.embed_tokens, &base.lm_head.weight]) {
        let moved = (&saved[*name] - base_w)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(moved > 1e-4, "{name} did not train ({moved})");
    }
    let ckpt = full.train.output_dir.join("checkpoint-3");
    let opt =
        candle_core::safetensors::load(ckpt.join("optimizer.safetensors"), &Device::Cpu).unwrap();
    for name in names {
        assert!(
            opt.keys().any(|k| k.contains(name)),
            "{name} has no optimizer state"
        );
    }
    let mut sets_resumed = sets.to_vec();
    let resume = format!("resume_from_checkpoint={}", ckpt.display());
    sets_resumed.push(&resume);
    let (resumed, _) = plan(&tmp.path().join("resumed"), &sets_resumed);
    let rest = run(&resumed, &text, &model_dir);
    let tail: Vec<u64> = whole.losses[3..].iter().map(|(_, l)| l.to_bits()).collect();
    let again: Vec<u64> = rest.losses.iter().map(|(_, l)| l.to_bits()).collect();
    assert_eq!(tail, again, "a resumed run must give the same losses");

    // LoRA+: the copies are 2-D and not lora_B, so group A (lr), as in PEFT.
    let mut model = runner_model::load_folder(&model_dir, DType::F32, &Device::Cpu).unwrap();
    let adapters = runner_model::inject(&mut model, &full.adapter, 0).unwrap();
    let groups = runner_train::trainer::param_groups(&full, &adapters);
    let scale_of = |n: &str| {
        groups
            .iter()
            .find(|g| g.params.iter().any(|(p, _)| p == n))
            .map(|g| g.lr_scale)
    };
    for name in names {
        assert_eq!(scale_of(name), Some(1.0), "{name}");
    }
}

/// Issue 12, the mixed-precision contract on the tiny model: with the base in bf16 (what
/// `bf16: true` loads) a run trains (the first optimizer step used to fail: bf16 moments against
/// f32 gradients), every optimizer tensor is f32, the adapter is saved in f32 (PEFT keeps
/// adapters f32 under a bf16 base, `autocast_adapter_dtype=True`, and saves them so; the
/// `lora_modules_to_save` copies live in the base's dtype with f32 masters in the optimizer
/// state, and are written upcast to f32 like every adapter tensor), and a resumed bf16 run
/// continues bit for bit.
#[test]
fn issue_12_bf16_run_trains_with_f32_adapters_and_optimizer_state() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tiny_model(tmp.path());
    let sets = [
        "bf16=true",
        "save_steps=3",
        "lora_modules_to_save=[embed_tokens]",
    ];
    let (full, text) = plan(&tmp.path().join("full"), &sets);
    let whole = run_in(&full, &text, &model_dir, DType::BF16);
    assert_eq!(whole.stop, StopReason::Finished);
    let first = whole.losses.first().unwrap().1;
    let last = whole.losses.last().unwrap().1;
    assert!(last.is_finite() && last < first, "{first} → {last}");

    let ckpt = full.train.output_dir.join("checkpoint-3");
    let opt =
        candle_core::safetensors::load(ckpt.join("optimizer.safetensors"), &Device::Cpu).unwrap();
    assert!(opt.keys().any(|k| k.ends_with("lora_A.weight.exp_avg_sq")));
    for (name, t) in &opt {
        assert_eq!(t.dtype(), DType::F32, "{name}");
    }
    let embed = "base_model.model.model.embed_tokens.weight";
    assert!(
        opt.contains_key(&format!("{embed}.master")),
        "no f32 master for the copy"
    );
    let saved = candle_core::safetensors::load(
        full.train.output_dir.join("adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for (name, t) in &saved {
        assert_eq!(t.dtype(), DType::F32, "{name}");
    }

    let mut sets_resumed = sets.to_vec();
    let resume = format!("resume_from_checkpoint={}", ckpt.display());
    sets_resumed.push(&resume);
    let (resumed, _) = plan(&tmp.path().join("resumed"), &sets_resumed);
    let rest = run_in(&resumed, &text, &model_dir, DType::BF16);
    let tail: Vec<u64> = whole.losses[3..].iter().map(|(_, l)| l.to_bits()).collect();
    let again: Vec<u64> = rest.losses.iter().map(|(_, l)| l.to_bits()).collect();
    assert_eq!(tail, again, "a resumed bf16 run must give the same losses");
}
