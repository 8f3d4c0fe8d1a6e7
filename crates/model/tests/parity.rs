//! Forward/backward parity with transformers + PEFT on tiny random models.
//!
//! The fixtures under `crates/model/fixtures/tiny-*` come from `tools/model/make_fixtures.py`
//! (torch 2.15, transformers 5.24, peft 0.21, f32, eager attention). In short, per model:
//!
//! ```python
//! model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")  # seeded, norms perturbed
//! peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **lora))
//! for n, p in peft_model.named_parameters():
//!     if "lora_B" in n: p.data.normal_(0.0, 0.1)            # non-zero B: informative gradients
//!     elif "lora_magnitude_vector" in n: p.mul_(1 + 0.1 * torch.randn_like(p))   # DoRA
//! # padded: 2 rows x 12, row 1 right-padded after 8 tokens, row 0's first 3 labels -100
//! out = peft_model(input_ids=ids, attention_mask=mask, labels=labels); out.loss.backward()
//! # packed: samples of 5, 4, 3 tokens run one by one; loss = sum of token CE / count
//! ```
//!
//! Tolerances (f32): logits max-abs error / max-abs value ≤ 1e-5; gradients ≤ 1e-4 relative.

use candle_core::{DType, Device, Tensor};
use runner_model::lora::{LoraSettings, ParamCounts, add_modules_to_save, inject_settings};
use runner_model::peft::load_adapter_file;
use runner_model::{Adapters, Batch, CausalLm, load_folder, loss};
use runner_recipe::plan::{LoraInit, TargetModules};
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn setup(name: &str) -> (CausalLm, Adapters) {
    let dir = fixture(name);
    let mut model = load_folder(&dir, DType::F32, &Device::Cpu).expect("load fixture model");
    let lora: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("lora.json")).unwrap()).unwrap();
    let targets = match &lora["target_modules"] {
        serde_json::Value::String(s) if s == "all-linear" => TargetModules::AllLinear,
        serde_json::Value::String(s) => TargetModules::Regex(s.clone()),
        serde_json::Value::Array(a) => {
            TargetModules::Names(a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        }
        other => panic!("bad target_modules {other}"),
    };
    let r = lora["r"].as_u64().unwrap() as usize;
    let alpha = lora["lora_alpha"].as_f64().unwrap();
    let scaling = if lora["use_rslora"].as_bool().unwrap() {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    };
    let s = LoraSettings {
        r,
        alpha,
        dropout: 0.0,
        scaling,
        targets,
        init: LoraInit::Kaiming,
        use_dora: lora["use_dora"].as_bool().unwrap_or(false),
    };
    let mut adapters = inject_settings(&mut model, &s, 0).expect("inject");
    let to_save: Vec<String> = lora["modules_to_save"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    add_modules_to_save(&mut model, &mut adapters, &to_save).expect("modules_to_save");
    load_adapter_file(&adapters, &dir.join("lora.safetensors")).expect("adapter weights");
    (model, adapters)
}

fn case(name: &str, case: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture(name).join(format!("{case}.safetensors")),
        &Device::Cpu,
    )
    .unwrap()
}

fn ints<T: TryFrom<i64>>(t: &Tensor) -> Vec<T>
where
    T::Error: std::fmt::Debug,
{
    t.flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| T::try_from(x).unwrap())
        .collect()
}

/// max |a - b| / max |b|
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let scale = b.abs().unwrap().max_all().unwrap();
    diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap().max(1e-30)
}

fn check(name: &str, case_name: &str) {
    check_with(name, case_name, false)
}

fn check_with(name: &str, case_name: &str, gradient_checkpointing: bool) {
    let (mut model, adapters) = setup(name);
    model.gradient_checkpointing = gradient_checkpointing;
    let c = case(name, case_name);
    let ids: Vec<u32> = ints(&c["input_ids"]);
    let labels: Vec<i64> = ints(&c["labels"]);
    let (b, t) = c["input_ids"].dims2().unwrap();
    let (batch, valid): (Batch, Vec<bool>) = if case_name == "padded" {
        let mask: Vec<u8> = ints(&c["attention_mask"]);
        let valid = mask.iter().map(|&m| m == 1).collect();
        (
            Batch::from_attention_mask(b, t, ids, &mask, labels).unwrap(),
            valid,
        )
    } else {
        let cu: Vec<usize> = ints(&c["cu_seqlens"]);
        let n = *cu.last().unwrap();
        let valid = (0..t).map(|i| i < n).collect();
        (Batch::packed(b, t, ids, &[cu], labels).unwrap(), valid)
    };

    // Logits at real tokens.
    let logits = model.logits(&batch, false).unwrap();
    let v = logits.dim(2).unwrap();
    let flat = logits.reshape((b * t, v)).unwrap();
    let keep: Vec<u32> = (0..b * t).filter(|&i| valid[i]).map(|i| i as u32).collect();
    let keep = Tensor::from_slice(&keep, keep.len(), &Device::Cpu).unwrap();
    let ours = flat.index_select(&keep, 0).unwrap();
    let want_all = &c["logits"];
    let want = if case_name == "padded" {
        want_all
            .reshape((b * t, v))
            .unwrap()
            .index_select(&keep, 0)
            .unwrap()
    } else {
        want_all.squeeze(0).unwrap()
    };
    let e = rel_err(&ours, &want);
    println!("{name}/{case_name}: logits rel err {e:.2e}");
    assert!(e < 1e-5, "{name}/{case_name}: logits rel err {e}");

    // Loss, chunked (chunk 5 so several chunks run) and whole, both equal to transformers'.
    let out = loss::causal_lm_loss(&model, &batch, true, 5).unwrap();
    let want_loss = c["loss"].to_vec1::<f32>().unwrap()[0];
    let got = out.loss.to_scalar::<f32>().unwrap();
    let reference = loss::reference_loss(&logits, &batch)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    println!("{name}/{case_name}: loss {got} (transformers {want_loss}, unchunked {reference})");
    assert!(
        ((got - want_loss) / want_loss).abs() < 1e-5,
        "{got} vs {want_loss}"
    );
    assert!(((reference - want_loss) / want_loss).abs() < 1e-5);

    // Gradients of every adapter matrix (and module-to-save copy).
    let grads = runner_model::backward(&out.loss, &model).unwrap();
    let mut worst = 0f32;
    for (pname, var) in &adapters.params {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient reached {pname}"));
        let want = &c[&format!("grad.{pname}")];
        let e = rel_err(g, want);
        worst = worst.max(e);
        assert!(e < 1e-4, "{name}/{case_name}: {pname} grad rel err {e}");
    }
    println!(
        "{name}/{case_name}: {} adapter grads, worst rel err {worst:.2e}",
        adapters.params.len()
    );
    // The frozen base gets no gradient at all (not even a discarded one).
    for lin in model.linears() {
        if !lin.weight.is_variable() {
            assert!(
                grads.get(&lin.weight).is_none(),
                "{} got a gradient",
                lin.name
            );
        }
    }
    if !model.embed_tokens.is_variable() {
        assert!(grads.get(&model.embed_tokens).is_none());
    }
    // Every adapter tensor PEFT trains is one of ours, and vice versa.
    let n_fixture = c.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(n_fixture, adapters.params.len());
}

#[test]
fn llama_padded() {
    check("tiny-llama", "padded");
}

#[test]
fn llama_packed() {
    check("tiny-llama", "packed");
}

#[test]
fn qwen3_padded() {
    check("tiny-qwen3", "padded");
}

#[test]
fn qwen3_packed() {
    check("tiny-qwen3", "packed");
}

#[test]
fn mistral_sliding_window_padded() {
    check("tiny-mistral", "padded");
}

#[test]
fn mistral_sliding_window_packed() {
    check("tiny-mistral", "packed");
}

#[test]
fn llama_dora_attention_bias_padded() {
    check("tiny-llama-dora", "padded");
}

#[test]
fn llama_dora_attention_bias_packed() {
    check("tiny-llama-dora", "packed");
}

#[test]
fn qwen2_bias_regex_targets_padded() {
    check("tiny-qwen2", "padded");
}

#[test]
fn qwen2_bias_regex_targets_packed() {
    check("tiny-qwen2", "packed");
}

#[test]
fn qwen2_sliding_window_layers_padded() {
    check("tiny-qwen2-window", "padded");
}

#[test]
fn qwen2_sliding_window_layers_packed() {
    check("tiny-qwen2-window", "packed");
}

#[test]
fn modules_to_save_untied_padded() {
    check("tiny-llama-save", "padded");
}

#[test]
fn modules_to_save_untied_packed_gradient_checkpointing() {
    check_with("tiny-llama-save", "packed", true);
}

#[test]
fn modules_to_save_tied_embeddings_padded() {
    check("tiny-llama-tied-save", "padded");
}

#[test]
fn modules_to_save_tied_embeddings_packed_gradient_checkpointing() {
    check_with("tiny-llama-tied-save", "packed", true);
}

/// PEFT's default on a tied model: the trained copy feeds the input embeddings only; the LM
/// head keeps the frozen original (the tie is broken, as PEFT warns).
#[test]
fn modules_to_save_breaks_the_tie_as_peft_does() {
    let (model, adapters) = setup("tiny-llama-tied-save");
    assert!(model.cfg.tie_word_embeddings);
    assert!(model.embed_tokens.is_variable());
    assert!(!model.lm_head.weight.is_variable());
    assert_eq!(adapters.modules_to_save, ["model.embed_tokens"]);
    let diff = (&model.embed_tokens - &model.lm_head.weight)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff > 0.0, "the copy was loaded from the adapter file");
}

/// LoRA+ groups of the trainable copies as PEFT's `create_loraplus_optimizer` makes them
/// (the copies sit in group A, at `lr`), from the fixture's `loraplus.json`.
#[test]
fn modules_to_save_loraplus_groups_match_peft() {
    for name in ["tiny-llama-save", "tiny-llama-tied-save"] {
        let (_, adapters) = setup(name);
        let want: HashMap<String, f64> = serde_json::from_str(
            &std::fs::read_to_string(fixture(name).join("loraplus.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(want.len(), adapters.params.len(), "{name}");
        for (pname, _) in &adapters.params {
            assert_eq!(
                Adapters::loraplus_multiplier(pname, Some(16.0)),
                want[pname],
                "{name}: {pname}"
            );
        }
    }
}

#[test]
fn modules_to_save_refuses_other_modules_and_a_lora_lm_head() {
    let mut model = load_folder(&fixture("tiny-llama"), DType::F32, &Device::Cpu).unwrap();
    let s = LoraSettings {
        r: 2,
        alpha: 4.0,
        dropout: 0.0,
        scaling: 2.0,
        targets: TargetModules::Names(vec!["lm_head".into()]),
        init: LoraInit::Kaiming,
        use_dora: false,
    };
    let mut adapters = inject_settings(&mut model, &s, 0).unwrap();
    let e = add_modules_to_save(&mut model, &mut adapters, &["norm".into()]).unwrap_err();
    assert!(e.to_string().contains("`norm`"), "{e}");
    assert!(e.to_string().contains("embed_tokens"), "{e}");
    let e = add_modules_to_save(&mut model, &mut adapters, &["lm_head".into()]).unwrap_err();
    assert!(e.to_string().contains("LoRA target"), "{e}");
}

/// `peft_model.print_trainable_parameters()` for each fixture, written by the script.
#[test]
fn trainable_parameters_line_matches_peft() {
    for name in [
        "tiny-llama",
        "tiny-qwen3",
        "tiny-mistral",
        "tiny-llama-dora",
        "tiny-qwen2",
        "tiny-qwen2-window",
        "tiny-llama-save",
        "tiny-llama-tied-save",
    ] {
        let (model, adapters) = setup(name);
        let want = std::fs::read_to_string(fixture(name).join("trainable.txt")).unwrap();
        // The dry-run count from the config alone equals the loaded model's.
        assert_eq!(model.cfg.param_count(), model.base_param_count(), "{name}");
        // The dry-run summary's count of adapter parameters equals the injected one.
        let lora: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(name).join("lora.json")).unwrap(),
        )
        .unwrap();
        let dora = lora["use_dora"].as_bool().unwrap_or(false);
        let on_paper: usize = model
            .cfg
            .linear_shapes()
            .iter()
            .filter(|(n, _, _)| adapters.modules.contains(n))
            .map(|(_, i, o)| adapters.r * (i + o) + if dora { *o } else { 0 })
            .sum::<usize>()
            + model.cfg.hidden_size * model.cfg.vocab_size * adapters.modules_to_save.len();
        assert_eq!(
            on_paper,
            ParamCounts::of(&model, &adapters).trainable,
            "{name}"
        );
        assert_eq!(
            ParamCounts::of(&model, &adapters).to_string(),
            want.trim(),
            "{name}"
        );
    }
}

/// bf16 compute (norms, softmax and the loss upcast to f32 as transformers does) stays close to
/// the f32 reference and still trains the adapters.
#[test]
fn llama_bf16_close_to_f32_reference() {
    let dir = fixture("tiny-llama");
    let mut model = load_folder(&dir, DType::BF16, &Device::Cpu).unwrap();
    let s = LoraSettings {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        scaling: 2.0,
        targets: TargetModules::AllLinear,
        init: LoraInit::Kaiming,
        use_dora: false,
    };
    let adapters = inject_settings(&mut model, &s, 0).unwrap();
    load_adapter_file(&adapters, &dir.join("lora.safetensors")).unwrap();
    let c = case("tiny-llama", "padded");
    let (b, t) = c["input_ids"].dims2().unwrap();
    let mask: Vec<u8> = ints(&c["attention_mask"]);
    let batch =
        Batch::from_attention_mask(b, t, ints(&c["input_ids"]), &mask, ints(&c["labels"])).unwrap();
    let out = loss::causal_lm_loss(&model, &batch, true, 5).unwrap();
    let got = out.loss.to_scalar::<f32>().unwrap();
    let want = c["loss"].to_vec1::<f32>().unwrap()[0];
    assert!(
        ((got - want) / want).abs() < 1e-2,
        "bf16 loss {got} vs f32 {want}"
    );
    let grads = out.loss.backward().unwrap();
    for (name, var) in &adapters.params {
        let g = grads
            .get(var.as_tensor())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let e = rel_err(&g, &c[&format!("grad.{name}")]);
        assert!(e < 0.1, "{name}: bf16 grad rel err {e}");
    }
}
