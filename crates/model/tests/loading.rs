//! Loading checkpoints (single file, sharded, hub-cache layout, GGUF) and refusing bad ones with
//! errors that name the file, tensor or module.

use candle_core::{DType, Device, Tensor};
use runner_model::lora::{LoraSettings, inject_settings};
use runner_model::tiny::{random_weights, tiny_config, write_gguf, write_tiny, write_tiny_llama};
use runner_model::{Arch, Batch, CausalLm, Error, load_folder, loss};
use runner_recipe::plan::{LoraInit, TargetModules};
use std::collections::HashMap;
use std::path::Path;

fn batch() -> Batch {
    let ids: Vec<u32> = vec![5, 9, 17, 33, 2, 101, 7, 8, 200, 3, 0, 0];
    let mask = [1u8, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0];
    let labels = ids
        .iter()
        .zip(mask)
        .map(|(&i, m)| if m == 1 { i as i64 } else { -100 })
        .collect();
    Batch::from_attention_mask(2, 6, ids, &mask, labels).unwrap()
}

fn logits(m: &CausalLm) -> Vec<f32> {
    m.logits(&batch(), false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn lora(r: usize, targets: TargetModules) -> LoraSettings {
    LoraSettings {
        r,
        alpha: 2.0 * r as f64,
        dropout: 0.0,
        scaling: 2.0,
        targets,
        init: LoraInit::Kaiming,
        use_dora: false,
    }
}

#[test]
fn tiny_llama_trains_only_adapters() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_llama(tmp.path(), 7).unwrap();
    let mut m = load_folder(tmp.path(), DType::F32, &Device::Cpu).unwrap();
    let before = logits(&m);
    let ad = inject_settings(&mut m, &lora(4, TargetModules::AllLinear), 1).unwrap();
    assert_eq!(ad.modules.len(), 2 * 7);
    assert_eq!(
        ad.params[0].0,
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    );
    // B = 0: the adapted model computes exactly the base model.
    assert_eq!(max_abs_diff(&before, &logits(&m)), 0.0);
    let out = loss::causal_lm_loss(&m, &batch(), true, 3).unwrap();
    let grads = out.loss.backward().unwrap();
    for (name, var) in &ad.params {
        let g = grads.get(var.as_tensor()).expect(name);
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // With B = 0, A gets no gradient on the first step and B does (as in PEFT).
        if name.contains("lora_A") {
            assert_eq!(norm, 0.0, "{name}");
        } else {
            assert!(norm > 0.0, "{name}");
        }
    }
    for lin in m.linears() {
        assert!(grads.get(&lin.weight).is_none(), "{}", lin.name);
    }
}

#[test]
fn initialisation_is_seeded_and_kaiming_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_llama(tmp.path(), 7).unwrap();
    let get = |seed, init| {
        let mut m = load_folder(tmp.path(), DType::F32, &Device::Cpu).unwrap();
        let mut s = lora(8, TargetModules::Names(vec!["q_proj".into()]));
        s.init = init;
        let ad = inject_settings(&mut m, &s, seed).unwrap();
        ad.params[0]
            .1
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let a1 = get(3, LoraInit::Kaiming);
    assert_eq!(a1, get(3, LoraInit::Kaiming));
    assert_ne!(a1, get(4, LoraInit::Kaiming));
    let bound = 1.0 / (64f32).sqrt(); // kaiming_uniform_(a=sqrt(5)) on fan_in 64
    assert!(a1.iter().all(|x| x.abs() <= bound));
    assert!(a1.iter().any(|x| x.abs() > 0.9 * bound));
    let g = get(3, LoraInit::Gaussian);
    let std = (g.iter().map(|x| x * x).sum::<f32>() / g.len() as f32).sqrt();
    assert!(
        (std - 1.0 / 8.0).abs() < 0.02,
        "gaussian std {std}, PEFT uses 1/r"
    ); // N(0, 1/r)
}

#[test]
fn dropout_changes_training_forward_only() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_llama(tmp.path(), 7).unwrap();
    let mut m = load_folder(tmp.path(), DType::F32, &Device::Cpu).unwrap();
    let mut s = lora(4, TargetModules::AllLinear);
    s.dropout = 0.5;
    let ad = inject_settings(&mut m, &s, 1).unwrap();
    for (name, v) in &ad.params {
        if name.contains("lora_B") {
            v.set(&Tensor::ones(v.shape(), DType::F32, &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    let eval1 = loss::causal_lm_loss(&m, &batch(), false, 8)
        .unwrap()
        .loss
        .to_scalar::<f32>()
        .unwrap();
    let eval2 = loss::causal_lm_loss(&m, &batch(), false, 8)
        .unwrap()
        .loss
        .to_scalar::<f32>()
        .unwrap();
    let train = loss::causal_lm_loss(&m, &batch(), true, 8)
        .unwrap()
        .loss
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(eval1, eval2);
    assert_ne!(eval1, train);
}

#[test]
fn sharded_checkpoint_equals_single_file() {
    let cfg = tiny_config(Arch::Llama);
    let single = tempfile::tempdir().unwrap();
    write_tiny(single.path(), &cfg, 11).unwrap();
    let sharded = tempfile::tempdir().unwrap();
    std::fs::copy(
        single.path().join("config.json"),
        sharded.path().join("config.json"),
    )
    .unwrap();
    let w = random_weights(&cfg, 11).unwrap();
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut map = serde_json::Map::new();
    for (i, (k, v)) in w.into_iter().enumerate() {
        let file = if i % 2 == 0 {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        map.insert(k.clone(), file.into());
        if i % 2 == 0 {
            a.insert(k, v)
        } else {
            b.insert(k, v)
        };
    }
    candle_core::safetensors::save(&a, sharded.path().join("model-00001-of-00002.safetensors"))
        .unwrap();
    candle_core::safetensors::save(&b, sharded.path().join("model-00002-of-00002.safetensors"))
        .unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        sharded.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let m1 = load_folder(single.path(), DType::F32, &Device::Cpu).unwrap();
    let m2 = load_folder(sharded.path(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(logits(&m1), logits(&m2));

    // A shard listed in the index but absent is named.
    std::fs::remove_file(sharded.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_folder(sharded.path(), DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}

#[test]
fn gguf_with_llama_cpp_layout_equals_safetensors() {
    let cfg = tiny_config(Arch::Llama);
    let dir = tempfile::tempdir().unwrap();
    write_tiny(dir.path(), &cfg, 5).unwrap();
    let weights = random_weights(&cfg, 5).unwrap();
    let gguf = dir.path().join("tiny.gguf");
    write_gguf(&gguf, &cfg, &weights).unwrap();
    let (g, info) = runner_model::gguf::load_gguf(&gguf, DType::F32, &Device::Cpu).unwrap();
    let s = load_folder(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let d = max_abs_diff(&logits(&g), &logits(&s));
    assert!(d < 1e-5, "GGUF vs safetensors logits differ by {d}");
    assert_eq!(info.tokens.len(), cfg.vocab_size);
    assert_eq!(info.bos_token_id, Some(1));

    // Truncated GGUF: a clear error naming the file.
    let bytes = std::fs::read(&gguf).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = runner_model::gguf::load_gguf(&cut, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("cut.gguf"), "{e}");
}

fn load_err(dir: &Path) -> String {
    match load_folder(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_and_mismatched_tensors_are_named() {
    let cfg = tiny_config(Arch::Llama);
    let dir = tempfile::tempdir().unwrap();
    write_tiny(dir.path(), &cfg, 1).unwrap();
    let mut w = random_weights(&cfg, 1).unwrap();
    w.remove("model.layers.1.mlp.up_proj.weight");
    let st = dir.path().join("model.safetensors");
    candle_core::safetensors::save(&w.clone().into_iter().collect(), &st).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("missing tensor `model.layers.1.mlp.up_proj.weight`"),
        "{e}"
    );

    let mut cfg2 = cfg.clone();
    cfg2.intermediate_size = 100;
    write_tiny(dir.path(), &cfg, 1).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        cfg2.to_hf_json().to_string(),
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight")
            && e.contains("[128, 64]")
            && e.contains("[100, 64]"),
        "{e}"
    );
}

#[test]
fn truncated_safetensors_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(dir.path(), 1).unwrap();
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() - 1000]).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn pickle_only_folder_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"\x80\x02").unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("pytorch_model.bin")
            && e.contains("never unpickles")
            && e.contains("safe_serialization"),
        "{e}"
    );
}

#[test]
fn unknown_target_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(dir.path(), 1).unwrap();
    let mut m = load_folder(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let e = inject_settings(
        &mut m,
        &lora(
            4,
            TargetModules::Names(vec!["q_proj".into(), "c_attn".into()]),
        ),
        0,
    )
    .err()
    .unwrap();
    assert!(
        matches!(&e, Error::TargetNotFound { target, .. } if target == "c_attn"),
        "{e}"
    );
    assert!(e.to_string().contains("q_proj"), "{e}");
}

#[test]
fn unsupported_config_values_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(dir.path(), 1).unwrap();
    let path = dir.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    std::fs::write(&path, v.to_string()).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("yarn") && e.contains("llama3"), "{e}");
    v["rope_scaling"] = serde_json::Value::Null;
    v["architectures"] = serde_json::json!(["GemmaForCausalLM"]);
    std::fs::write(&path, v.to_string()).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("GemmaForCausalLM") && e.contains("MistralForCausalLM"),
        "{e}"
    );
}

#[test]
fn tensors_the_config_has_no_place_for_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(Arch::Llama);
    write_tiny(dir.path(), &cfg, 1).unwrap();
    // config says 1 layer, the checkpoint has 2
    let mut small = cfg.clone();
    small.num_hidden_layers = 1;
    small.sliding_window = vec![None];
    std::fs::write(
        dir.path().join("config.json"),
        small.to_hf_json().to_string(),
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("model.layers.1.") && e.contains("num_hidden_layers"),
        "{e}"
    );
}

/// Llama 3.1 GGUFs carry `rope_freqs.weight` (per-frequency divisors) instead of a `llama3`
/// rope_scaling block; both must give the same model.
#[test]
fn gguf_rope_freqs_equal_llama3_scaling() {
    use runner_model::RopeScaling;
    use runner_model::nn::Rope;
    let mut cfg = tiny_config(Arch::Llama);
    cfg.rope_scaling = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 4.0,
    };
    let dir = tempfile::tempdir().unwrap();
    write_tiny(dir.path(), &cfg, 9).unwrap();
    let plain = Rope::new(&tiny_config(Arch::Llama)).inv_freq;
    let scaled = Rope::new(&cfg).inv_freq;
    assert_ne!(plain, scaled);
    let factors: Vec<f32> = plain.iter().zip(&scaled).map(|(p, s)| p / s).collect();
    let mut weights = random_weights(&cfg, 9).unwrap();
    let n = factors.len();
    weights.insert(
        "rope_freqs.weight".into(),
        Tensor::from_vec(factors, n, &Device::Cpu).unwrap(),
    );
    let gguf = dir.path().join("llama31.gguf");
    let mut gcfg = cfg.clone();
    gcfg.rope_scaling = RopeScaling::None;
    write_gguf(&gguf, &gcfg, &weights).unwrap();
    let (g, _) = runner_model::gguf::load_gguf(&gguf, DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(g.cfg.rope_scaling, RopeScaling::Factors(_)));
    let s = load_folder(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let d = max_abs_diff(&logits(&g), &logits(&s));
    assert!(d < 1e-5, "{d}");
}

/// `lora_model_dir`: adapters start from a saved PEFT adapter (names without `.default`).
#[test]
fn adapter_plan_with_init_from_loads_peft_weights() {
    use runner_recipe::plan::{AdapterKind, AdapterPlan, BaseQuant};
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(dir.path(), 2).unwrap();
    let adapter_dir = dir.path().join("adapter");
    std::fs::create_dir_all(&adapter_dir).unwrap();
    let mut saved = HashMap::new();
    for l in 0..2 {
        let p = format!("base_model.model.model.layers.{l}.self_attn.v_proj");
        saved.insert(
            format!("{p}.lora_A.weight"),
            Tensor::full(0.5f32, (4, 64), &Device::Cpu).unwrap(),
        );
        saved.insert(
            format!("{p}.lora_B.weight"),
            Tensor::full(0.25f32, (32, 4), &Device::Cpu).unwrap(),
        );
    }
    candle_core::safetensors::save(&saved, adapter_dir.join("adapter_model.safetensors")).unwrap();
    let mut plan = AdapterPlan {
        kind: AdapterKind::Lora,
        base_quant: BaseQuant::None,
        init_from: Some(adapter_dir.clone()),
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        scaling: 2.0,
        targets: TargetModules::Names(vec!["v_proj".into()]),
        modules_to_save: vec![],
        use_dora: false,
        use_rslora: false,
        init: LoraInit::Kaiming,
        loraplus_lr_ratio: None,
        loraplus_lr_embedding: 1e-6,
    };
    let mut m = load_folder(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let ad = runner_model::inject(&mut m, &plan, 0).unwrap();
    for (name, v) in &ad.params {
        let want = if name.contains("lora_A") { 0.5 } else { 0.25 };
        let vals: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert!(vals.iter().all(|&x| x == want), "{name}");
    }
    // Asking for modules the saved adapter lacks names the missing tensor.
    plan.targets = TargetModules::Names(vec!["v_proj".into(), "q_proj".into()]);
    let mut m = load_folder(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let e = runner_model::inject(&mut m, &plan, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("self_attn.q_proj.lora_A.weight"), "{e}");
    // A module to save that the saved adapter lacks names the missing copy.
    plan.targets = TargetModules::Names(vec!["v_proj".into()]);
    plan.modules_to_save = vec!["embed_tokens".into()];
    let mut m = load_folder(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let e = runner_model::inject(&mut m, &plan, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("base_model.model.model.embed_tokens.weight"),
        "{e}"
    );
}

#[test]
fn added_tokens_grow_the_vocabulary_with_mean_rows() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(dir.path(), 4).unwrap();
    let mut m = load_folder(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let before = logits(&m);
    m.resize_token_embeddings(260).unwrap();
    assert_eq!(m.embed_tokens.dims(), &[260, 64]);
    assert_eq!(m.lm_head.weight.dims(), &[260, 64]);
    let mean: Vec<f32> = m
        .embed_tokens
        .narrow(0, 0, 256)
        .unwrap()
        .mean(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    let row: Vec<f32> = m.embed_tokens.get(259).unwrap().to_vec1().unwrap();
    assert!(max_abs_diff(&mean, &row) < 1e-6);
    // Old tokens' logits are unchanged; the new columns are appended.
    let after = m.logits(&batch(), false).unwrap();
    let old = after
        .narrow(2, 0, 256)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(old, before);
    assert!(m.resize_token_embeddings(10).is_err());
}
