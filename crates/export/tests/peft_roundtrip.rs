//! PEFT → runner: adapters saved by `PeftModel.save_pretrained` load into runner and give
//! PEFT's logits; `adapter_config.json` reads back to the plan that produced it; and runner's
//! own adapter files read back the same way.
//!
//! ```python
//! peft_model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **spec))
//! for n, p in peft_model.named_parameters():
//!     if "lora_B" in n: p.normal_(0.0, 0.1)                        # non-zero B
//!     elif "lora_magnitude_vector" in n: p.mul_(1 + 0.1 * torch.randn_like(p))
//! peft_model.save_pretrained("adapter-<name>")
//! logits = peft_model(input_ids=ids).logits                        # ids: 2 x 9
//! ```
//!
//! Tolerance (f32): logits max-abs error / max-abs value ≤ 1e-5.

mod common;

use common::{fixed_rows, fixture, rel_err, tensors};
use runner_export::merge::{fixed_batch, load_with_adapter};
use runner_export::peft::{self, read_config};
use runner_recipe::plan::TargetModules;

fn names(v: &[&str]) -> TargetModules {
    TargetModules::Names(v.iter().map(|s| s.to_string()).collect())
}

#[test]
fn peft_config_reads_back_r_alpha_targets() {
    let c = read_config(&fixture("adapter-lora")).unwrap();
    assert_eq!(
        (c.r, c.alpha, c.use_rslora, c.use_dora),
        (4, 8.0, false, false)
    );
    assert_eq!(c.scaling, 2.0);
    // PEFT stores the target list as a set: compare sorted.
    let sorted = |t: &TargetModules| match t {
        TargetModules::Names(v) => {
            let mut v = v.clone();
            v.sort();
            v
        }
        other => panic!("expected a list, got {other:?}"),
    };
    assert_eq!(
        sorted(&c.targets),
        sorted(&names(&["q_proj", "v_proj", "o_proj", "down_proj"]))
    );

    let c = read_config(&fixture("adapter-rslora")).unwrap();
    assert_eq!((c.r, c.alpha, c.use_rslora), (4, 6.0, true));
    assert!((c.scaling - 3.0).abs() < 1e-12, "alpha/sqrt(r) = 6/2");
    let c = read_config(&fixture("adapter-dora")).unwrap();
    assert!(c.use_dora);
    let plan = c.adapter_plan(None);
    assert_eq!((plan.r, plan.alpha, plan.use_dora), (4, 8.0, true));
}

fn check_logits(adapter: &str) {
    let (model, _) = load_with_adapter(&fixture("base"), &fixture(adapter)).unwrap();
    let batch = fixed_batch(&fixed_rows()).unwrap();
    let ours = model.logits(&batch, false).unwrap();
    let name = adapter.trim_start_matches("adapter-");
    let want = &tensors(&fixture("logits.safetensors"))[&format!("logits.{name}")];
    let e = rel_err(&ours, want);
    println!("{adapter}: logits rel err {e:.2e}");
    assert!(e < 1e-5, "{adapter}: logits rel err {e}");
    // The adapter really changes the output (B is non-zero).
    let base = &tensors(&fixture("logits.safetensors"))["logits.base"];
    assert!(rel_err(&ours, base) > 1e-3);
}

#[test]
fn peft_lora_adapter_gives_peft_logits() {
    check_logits("adapter-lora");
}

#[test]
fn peft_rslora_adapter_gives_peft_logits() {
    check_logits("adapter-rslora");
}

#[test]
fn peft_dora_adapter_gives_peft_logits() {
    check_logits("adapter-dora");
}

/// `modules_to_save: [embed_tokens, lm_head]`: PEFT's saved copies replace the base modules.
#[test]
fn peft_modules_to_save_adapter_gives_peft_logits() {
    check_logits("adapter-save");
    let c = read_config(&fixture("adapter-save")).unwrap();
    assert_eq!(c.modules_to_save, ["embed_tokens", "lm_head"]);
    let (_, adapters) = load_with_adapter(&fixture("base"), &fixture("adapter-save")).unwrap();
    assert_eq!(adapters.modules_to_save, ["model.embed_tokens", "lm_head"]);
}

/// What runner writes for modules_to_save is what PEFT wrote: the same tensor names and the
/// same `modules_to_save` entry in adapter_config.json.
#[test]
fn runner_writes_modules_to_save_as_peft() {
    let (_, adapters) = load_with_adapter(&fixture("base"), &fixture("adapter-save")).unwrap();
    let c = read_config(&fixture("adapter-save")).unwrap();
    let plan = c.adapter_plan(None);
    let dir = tempfile::tempdir().unwrap();
    runner_export::peft::save_adapter(dir.path(), &plan, &adapters, "../base").unwrap();
    let ours = tensors(&dir.path().join("adapter_model.safetensors"));
    let peft = tensors(&fixture("adapter-save").join("adapter_model.safetensors"));
    let mut a: Vec<_> = ours.keys().collect();
    let mut b: Vec<_> = peft.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    for (n, t) in &peft {
        assert!(rel_err(&ours[n], t) == 0.0, "{n}");
    }
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        v["modules_to_save"],
        serde_json::json!(["embed_tokens", "lm_head"])
    );
}

/// runner's own writer round-trips through the reader and the loader.
#[test]
fn runner_adapter_files_read_back() {
    let (model, adapters) =
        load_with_adapter(&fixture("base"), &fixture("adapter-rslora")).unwrap();
    let cfg = read_config(&fixture("adapter-rslora")).unwrap();
    let plan = cfg.adapter_plan(None);
    let dir = tempfile::tempdir().unwrap();
    peft::save_adapter(dir.path(), &plan, &adapters, "../base").unwrap();
    let again = read_config(dir.path()).unwrap();
    assert_eq!((again.r, again.alpha, again.use_rslora), (4, 6.0, true));
    assert_eq!(again.scaling, cfg.scaling);
    let (model2, _) = load_with_adapter(&fixture("base"), dir.path()).unwrap();
    let batch = fixed_batch(&fixed_rows()).unwrap();
    let e = rel_err(
        &model2.logits(&batch, false).unwrap(),
        &model.logits(&batch, false).unwrap(),
    );
    assert!(e < 1e-6, "{e}");
}

fn config_with(key: &str, value: serde_json::Value) -> std::path::PathBuf {
    let text =
        std::fs::read_to_string(fixture("adapter-lora").join("adapter_config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v[key] = value;
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(dir.join("adapter_config.json"), v.to_string()).unwrap();
    dir
}

#[test]
fn unsupported_peft_fields_are_named() {
    for (key, value, needle) in [
        (
            "rank_pattern",
            serde_json::json!({"q_proj": 8}),
            "rank_pattern",
        ),
        (
            "modules_to_save",
            serde_json::json!(["norm"]),
            "modules_to_save",
        ),
        ("fan_in_fan_out", serde_json::json!(true), "fan_in_fan_out"),
        ("bias", serde_json::json!("all"), "bias"),
        ("peft_type", serde_json::json!("IA3"), "peft_type"),
        (
            "init_lora_weights",
            serde_json::json!("pissa"),
            "init_lora_weights",
        ),
        ("r", serde_json::json!(0), "`r`"),
    ] {
        let dir = config_with(key, value);
        let e = read_config(&dir).unwrap_err().to_string();
        assert!(e.contains(needle), "{key}: {e}");
        assert!(e.contains("adapter_config.json"), "{key}: {e}");
        let _ = std::fs::remove_dir_all(dir);
    }
    // A regex target and all-linear are supported.
    let dir = config_with("target_modules", serde_json::json!(r".*\.q_proj"));
    assert_eq!(
        read_config(&dir).unwrap().targets,
        TargetModules::Regex(r".*\.q_proj".into())
    );
    let _ = std::fs::remove_dir_all(dir);
}
