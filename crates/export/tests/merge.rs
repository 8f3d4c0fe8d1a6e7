//! Merging against PEFT's `merge_and_unload()`, merged logits against base + adapter, and the
//! faults: mismatching adapters, truncated shards, an output folder that holds a model.
//!
//! ```python
//! merged = peft_model.merge_and_unload()      # after save_pretrained, see peft_roundtrip.rs
//! save_file(merged.state_dict(), "merged-<name>.safetensors")
//! ```
//!
//! Tolerances: merged weights max-abs error / max-abs value ≤ 1e-6 (f32); logits of the merged
//! model vs base + adapter ≤ 1e-5.

mod common;

use candle_core::{DType, Device};
use common::{fixed_rows, fixture, listing, rel_err, tensors};
use runner_export::ExportError;
use runner_export::merge::{max_logit_difference, merge_folder};
use std::path::Path;

fn merged_tensors(dir: &Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    let mut all = std::collections::HashMap::new();
    for f in runner_model::load::safetensors_files(dir).unwrap() {
        all.extend(tensors(&f));
    }
    all
}

fn check_against_peft(adapter: &str) {
    let out = tempfile::tempdir().unwrap();
    let out = out.path().join("merged");
    let report =
        merge_folder(&fixture("base"), &fixture(adapter), &out, DType::F32, false).unwrap();
    let name = adapter.trim_start_matches("adapter-");
    let want = tensors(&fixture(&format!("merged-{name}.safetensors")));
    let got = merged_tensors(&out);
    assert_eq!(got.len(), want.len(), "same tensor set");
    let mut worst = 0f32;
    for (n, w) in &want {
        let e = rel_err(&got[n], w);
        worst = worst.max(e);
        assert!(e < 1e-6, "{adapter}: {n}: rel err {e}");
    }
    println!("{adapter}: worst merged-weight rel err {worst:.2e}");
    assert!(!report.merged_modules.is_empty());
    assert_eq!(report.shards.len(), 2, "the base's two shards are kept");
}

#[test]
fn merge_lora_equals_peft_merge_and_unload() {
    check_against_peft("adapter-lora");
}

#[test]
fn merge_rslora_equals_peft_merge_and_unload() {
    check_against_peft("adapter-rslora");
}

#[test]
fn merge_dora_equals_peft_merge_and_unload() {
    check_against_peft("adapter-dora");
}

#[test]
fn merge_modules_to_save_equals_peft_merge_and_unload() {
    check_against_peft("adapter-save");
}

/// A trained copy of a tied embedding cannot be merged without untying: refused, named.
#[test]
fn merge_refuses_modules_to_save_on_a_tied_base() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    copy_base(&base);
    let cfg = base.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "\"tie_word_embeddings\": false",
            "\"tie_word_embeddings\": true",
        ),
    )
    .unwrap();
    let out = tmp.path().join("m");
    let e = merge_folder(&base, &fixture("adapter-save"), &out, DType::F32, false).unwrap_err();
    assert!(e.to_string().contains("ties lm_head"), "{e}");
    assert!(!out.exists(), "nothing written");
}

#[test]
fn merged_logits_equal_base_plus_adapter() {
    for adapter in ["adapter-lora", "adapter-dora", "adapter-save"] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("m");
        merge_folder(&fixture("base"), &fixture(adapter), &out, DType::F32, false).unwrap();
        let e =
            max_logit_difference(&fixture("base"), &fixture(adapter), &out, &fixed_rows()).unwrap();
        println!("{adapter}: merged vs base+adapter logits rel err {e:.2e}");
        assert!(e < 1e-5, "{adapter}: {e}");
    }
}

#[test]
fn merge_keeps_sharding_index_and_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    let report = merge_folder(
        &fixture("base"),
        &fixture("adapter-lora"),
        &out,
        DType::BF16,
        false,
    )
    .unwrap();
    assert_eq!(
        listing(&out),
        [
            "config.json",
            "generation_config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer_config.json",
        ]
    );
    // Same weight map; total_size is the bf16 size.
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let base_index = read(&fixture("base").join("model.safetensors.index.json"));
    let index = read(&out.join("model.safetensors.index.json"));
    assert_eq!(index["weight_map"], base_index["weight_map"]);
    let total: u64 = merged_tensors(&out)
        .values()
        .map(|t| (t.elem_count() * 2) as u64)
        .sum();
    assert_eq!(index["metadata"]["total_size"], serde_json::json!(total));
    for t in merged_tensors(&out).values() {
        assert_eq!(t.dtype(), DType::BF16);
    }
    assert_eq!(read(&out.join("config.json"))["dtype"], "bfloat16");
    assert_eq!(report.dtype, DType::BF16);
    // bf16 weights still give nearly the adapter's logits.
    let e = max_logit_difference(
        &fixture("base"),
        &fixture("adapter-lora"),
        &out,
        &fixed_rows(),
    )
    .unwrap();
    assert!(e < 2e-2, "bf16: {e}");

    // f16 also loads.
    let out16 = tmp.path().join("m16");
    merge_folder(
        &fixture("base"),
        &fixture("adapter-lora"),
        &out16,
        DType::F16,
        false,
    )
    .unwrap();
    assert!(
        merged_tensors(&out16)
            .values()
            .all(|t| t.dtype() == DType::F16)
    );
    assert!(
        merge_folder(
            &fixture("base"),
            &fixture("adapter-lora"),
            &tmp.path().join("x"),
            DType::U8,
            false
        )
        .is_err()
    );
}

#[test]
fn merge_refuses_a_folder_holding_a_model_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    merge_folder(
        &fixture("base"),
        &fixture("adapter-lora"),
        &out,
        DType::F32,
        false,
    )
    .unwrap();
    let before = std::fs::read(out.join("model-00001-of-00002.safetensors")).unwrap();
    let e = merge_folder(
        &fixture("base"),
        &fixture("adapter-dora"),
        &out,
        DType::F32,
        false,
    )
    .unwrap_err();
    assert!(matches!(e, ExportError::OutputExists { .. }), "{e}");
    assert!(e.to_string().contains("--force"), "{e}");
    assert_eq!(
        std::fs::read(out.join("model-00001-of-00002.safetensors")).unwrap(),
        before
    );
    // A stale single-file model is removed when forced.
    std::fs::write(out.join("model.safetensors"), b"old").unwrap();
    merge_folder(
        &fixture("base"),
        &fixture("adapter-dora"),
        &out,
        DType::F32,
        true,
    )
    .unwrap();
    assert!(!out.join("model.safetensors").exists());
    let e = max_logit_difference(
        &fixture("base"),
        &fixture("adapter-dora"),
        &out,
        &fixed_rows(),
    )
    .unwrap();
    assert!(e < 1e-5);
    // Never into the base folder itself.
    let e = merge_folder(
        &fixture("base"),
        &fixture("adapter-lora"),
        &fixture("base"),
        DType::F32,
        true,
    )
    .unwrap_err();
    assert!(e.to_string().contains("base model's folder"), "{e}");
}

/// A copy of the base folder in a temp dir, for corrupting.
fn copy_base(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(fixture("base")).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn truncated_shard_is_refused_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    copy_base(&base);
    let shard = base.join("model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 100]).unwrap();
    let out = tmp.path().join("m");
    let e = merge_folder(&base, &fixture("adapter-lora"), &out, DType::F32, false).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ExportError::Corrupt { .. }), "{msg}");
    assert!(
        msg.contains("model-00002-of-00002.safetensors") && msg.contains("truncated"),
        "{msg}"
    );
    assert!(
        listing(&out).is_empty(),
        "nothing written: {:?}",
        listing(&out)
    );

    // A header cut short too.
    std::fs::write(&shard, &bytes[..20]).unwrap();
    let e = merge_folder(&base, &fixture("adapter-lora"), &out, DType::F32, false).unwrap_err();
    assert!(matches!(e, ExportError::Corrupt { .. }), "{e}");
    assert!(listing(&out).is_empty());
}

#[test]
fn truncated_adapter_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    let src = fixture("adapter-lora");
    std::fs::copy(
        src.join("adapter_config.json"),
        adapter.join("adapter_config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        adapter.join("adapter_model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let out = tmp.path().join("m");
    let e = merge_folder(&fixture("base"), &adapter, &out, DType::F32, false).unwrap_err();
    assert!(e.to_string().contains("adapter_model.safetensors"), "{e}");
    assert!(listing(&out).is_empty());
}

/// Rewrites the adapter's tensors through `edit` into a new adapter folder.
fn edited_adapter(
    to: &Path,
    edit: impl Fn(&mut std::collections::HashMap<String, candle_core::Tensor>),
) {
    std::fs::create_dir_all(to).unwrap();
    let src = fixture("adapter-lora");
    std::fs::copy(
        src.join("adapter_config.json"),
        to.join("adapter_config.json"),
    )
    .unwrap();
    let mut t = tensors(&src.join("adapter_model.safetensors"));
    edit(&mut t);
    candle_core::safetensors::save(&t, to.join("adapter_model.safetensors")).unwrap();
}

#[test]
fn mismatching_adapter_names_the_first_bad_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    let b = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight";

    // Wrong in_features on A.
    let bad = tmp.path().join("shape");
    edited_adapter(&bad, |t| {
        t.insert(
            a.into(),
            candle_core::Tensor::zeros((4, 40), DType::F32, &candle_core::Device::Cpu).unwrap(),
        );
    });
    let out = tmp.path().join("m");
    let e = merge_folder(&fixture("base"), &bad, &out, DType::F32, false).unwrap_err();
    assert!(
        matches!(e, ExportError::Mismatch { ref tensor, .. } if tensor == a),
        "{e}"
    );
    assert!(e.to_string().contains("[4, 40]"), "{e}");
    assert!(listing(&out).is_empty());

    // Wrong out_features on B.
    let bad = tmp.path().join("shape-b");
    edited_adapter(&bad, |t| {
        t.insert(
            b.into(),
            candle_core::Tensor::zeros((7, 4), DType::F32, &candle_core::Device::Cpu).unwrap(),
        );
    });
    let e = merge_folder(&fixture("base"), &bad, &out, DType::F32, false).unwrap_err();
    assert!(
        matches!(e, ExportError::Mismatch { ref tensor, .. } if tensor == b),
        "{e}"
    );

    // A module the base does not have (e.g. an adapter for a deeper model).
    let bad = tmp.path().join("name");
    edited_adapter(&bad, |t| {
        let x = t[a].clone();
        let y = t["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].clone();
        t.insert(
            "base_model.model.model.layers.5.self_attn.q_proj.lora_A.weight".into(),
            x,
        );
        t.insert(
            "base_model.model.model.layers.5.self_attn.q_proj.lora_B.weight".into(),
            y,
        );
    });
    let e = merge_folder(&fixture("base"), &bad, &out, DType::F32, false).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("layers.5.self_attn.q_proj.lora_A.weight"),
        "{msg}"
    );
    assert!(
        msg.contains("no tensor `model.layers.5.self_attn.q_proj.weight`"),
        "{msg}"
    );

    // Half a pair.
    let bad = tmp.path().join("half");
    edited_adapter(&bad, |t| {
        t.remove(b);
    });
    let e = merge_folder(&fixture("base"), &bad, &out, DType::F32, false).unwrap_err();
    assert!(
        e.to_string().contains(b) && e.to_string().contains("missing"),
        "{e}"
    );

    // Not a LoRA tensor.
    let bad = tmp.path().join("extra");
    edited_adapter(&bad, |t| {
        let x = t[a].clone();
        t.insert("base_model.model.lm_head.weight".into(), x);
    });
    let e = merge_folder(&fixture("base"), &bad, &out, DType::F32, false).unwrap_err();
    assert!(
        e.to_string().contains("base_model.model.lm_head.weight"),
        "{e}"
    );
    assert!(listing(&out).is_empty());
}

#[test]
fn merge_into_the_nf4_round_tripped_base_equals_what_qlora_trained_against() {
    use runner_export::merge::{max_logit_difference_on, merge_folder_into};
    use runner_recipe::plan::BaseQuant;
    let tmp = tempfile::tempdir().unwrap();
    for kind in [BaseQuant::Nf4, BaseQuant::Int8] {
        let out = tmp.path().join(format!("{kind:?}"));
        let report = merge_folder_into(
            &fixture("base"),
            &fixture("adapter-lora"),
            &out,
            DType::F32,
            false,
            kind,
        )
        .unwrap();
        assert_eq!(report.base, kind);
        // Equal to base (quantized as training ran it) + adapter ...
        let on_quantized = max_logit_difference_on(
            &fixture("base"),
            &fixture("adapter-lora"),
            &out,
            &fixed_rows(),
            kind,
        )
        .unwrap();
        assert!(on_quantized < 1e-5, "{kind:?}: {on_quantized:e}");
        // ... and not to the stored base + adapter: the round trip changed the weights.
        let on_stored = max_logit_difference(
            &fixture("base"),
            &fixture("adapter-lora"),
            &out,
            &fixed_rows(),
        )
        .unwrap();
        assert!(on_stored > 1e-4, "{kind:?}: {on_stored:e}");
        // Norms and embeddings are merged as stored; projections are not.
        let merged = merged_tensors(&out);
        let base = runner_model::load_folder(&fixture("base"), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            merged["model.embed_tokens.weight"]
                .to_vec2::<f32>()
                .unwrap(),
            base.embed_tokens.to_vec2::<f32>().unwrap()
        );
        let k = &merged["model.layers.0.self_attn.k_proj.weight"]; // not adapted, but quantized
        assert!(rel_err(k, &base.layers[0].self_attn.k_proj.weight) > 1e-4);
    }
}
