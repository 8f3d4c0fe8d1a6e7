//! GGUF export: written by `write_gguf`, read back by runner's own GGUF loader (which undoes
//! llama.cpp's Q/K permutation) and by the data stage's GGUF tokenizer. The Python `gguf`
//! package check is tools/export/check_gguf.py (run by hand; the tests need no Python).
//!
//! Tolerances, logits of the exported model vs base + adapter in memory, relative to the
//! largest |logit|: f32 ≤ 1e-5 (the same numbers), f16 ≤ 2e-3, q8_0 ≤ 5e-2 (8-bit blocks of
//! 32 with an f16 scale, embeddings included; measured f32 3–5e-7, f16 0.6–1.1e-3, q8_0
//! 1.5–2.5e-2 on this tiny random model, whose logits are small).

mod common;

use candle_core::{DType, Device};
use common::fixture;
use runner_export::ExportError;
use runner_export::gguf::{GgufTokenizer, GgufType, SpecialIds, max_logit_difference, write_gguf};

/// A byte-level BPE tokenizer.json with `n` single-character tokens (bytes `!`..), for the
/// 64-token fixture model.
fn toy_tokenizer(n: usize) -> GgufTokenizer {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| (char::from(b'!' + i as u8).to_string(), serde_json::json!(i)))
        .collect();
    let json = serde_json::json!({
        "added_tokens": [{"id": 1, "content": "\"", "special": true}],
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
        "model": {"type": "BPE", "vocab": vocab, "merges": []},
    });
    GgufTokenizer::from_tokenizer_json(
        &json.to_string(),
        &SpecialIds {
            bos: Some(1),
            eos: Some(2),
            pad: Some(0),
            add_bos: false,
        },
        std::path::Path::new("toy"),
    )
    .unwrap()
}

fn rows() -> Vec<Vec<u32>> {
    common::fixed_rows()
}

#[test]
fn exported_gguf_loads_back_with_the_same_logits() {
    let tmp = tempfile::tempdir().unwrap();
    // `save`: LoRA plus trained copies of embed_tokens and lm_head (lora_modules_to_save).
    for adapter in ["lora", "rslora", "dora", "save"] {
        let (model, _) = runner_export::merge::load_with_adapter(
            &fixture("base"),
            &fixture(&format!("adapter-{adapter}")),
        )
        .unwrap();
        for (ty, tol) in [
            (GgufType::F32, 1e-5),
            (GgufType::F16, 2e-3),
            (GgufType::Q8_0, 5e-2),
        ] {
            let out = tmp.path().join(format!("{adapter}-{}.gguf", ty.name()));
            let report = write_gguf(&model, &toy_tokenizer(64), "tiny", &out, ty, false).unwrap();
            assert!(report.merged_modules > 0);
            // ffn_down's rows hold intermediate_size = 48 values: no whole q8_0 blocks of 32.
            let expect_f16: Vec<String> = match ty {
                GgufType::Q8_0 => (0..2).map(|i| format!("blk.{i}.ffn_down.weight")).collect(),
                _ => vec![],
            };
            assert_eq!(report.kept_f16, expect_f16);
            let diff = max_logit_difference(&model, &out, &rows()).unwrap();
            if adapter == "save" && ty == GgufType::F32 {
                // The trained copies are what the GGUF holds, not the base's tensors.
                let (back, _) =
                    runner_model::gguf::load_gguf(&out, DType::F32, &Device::Cpu).unwrap();
                let base =
                    runner_model::load_folder(&fixture("base"), DType::F32, &Device::Cpu).unwrap();
                assert!(common::rel_err(&back.embed_tokens, &model.embed_tokens) < 1e-6);
                assert!(common::rel_err(&back.embed_tokens, &base.embed_tokens) > 1e-3);
                assert!(common::rel_err(&back.lm_head.weight, &base.lm_head.weight) > 1e-3);
            }
            eprintln!("{adapter} {}: {diff:.3e}", ty.name());
            assert!(diff <= tol, "{adapter} {}: {diff:e} > {tol:e}", ty.name());
            if ty != GgufType::F32 {
                assert!(diff > 0.0, "{} should not be lossless", ty.name());
            }
        }
    }
    // Nothing but the finished files: no temporary left behind.
    let names = common::listing(tmp.path());
    assert!(
        names
            .iter()
            .all(|n| n.ends_with(".gguf") && !n.starts_with('.')),
        "{names:?}"
    );
}

#[test]
fn exported_gguf_carries_the_tokenizer_and_chat_template() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = runner_model::tiny::builtin_config("tiny-llama").unwrap();
    runner_model::tiny::write_tiny(&tmp.path().join("m"), &cfg, 5).unwrap();
    let model = runner_model::load_folder(&tmp.path().join("m"), DType::F32, &Device::Cpu).unwrap();
    let tok = runner_data::tokenizer::TextTokenizer::builtin("tiny-llama").unwrap();
    let mut gt = GgufTokenizer::from_tokenizer_json(
        &tok.to_json().unwrap(),
        &SpecialIds {
            bos: tok.bos.as_ref().map(|t| t.id),
            eos: tok.eos.as_ref().map(|t| t.id),
            pad: tok.pad.as_ref().map(|t| t.id),
            add_bos: tok.add_bos,
        },
        &tok.path,
    )
    .unwrap();
    let template = tok.chat_template(None).unwrap().to_string();
    gt.set_chat_template(&template);
    let out = tmp.path().join("tiny.gguf");
    write_gguf(&model, &gt, "tiny", &out, GgufType::F32, false).unwrap();

    let back = runner_data::tokenizer::TextTokenizer::load(&out, &Default::default()).unwrap();
    for text in ["Hello, world! ü €", "<|im_start|>user\nhi<|im_end|>\n"] {
        assert_eq!(
            back.encode_with_offsets(text).unwrap().ids,
            tok.encode_with_offsets(text).unwrap().ids,
            "{text:?}"
        );
    }
    assert_eq!(back.bos, tok.bos);
    assert_eq!(back.eos, tok.eos);
    assert_eq!(back.chat_template(None), Some(template.as_str()));
    let (m, info) = runner_model::gguf::load_gguf(&out, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(info.token_types[1], 3, "special tokens are control tokens");
    assert_eq!(m.cfg.vocab_size, 259);
    assert!(max_logit_difference(&model, &out, &[vec![5, 9, 200, 3]]).unwrap() <= 1e-5);

    // Passing the tokenizer metadata of an existing GGUF through keeps it as it was.
    let again = GgufTokenizer::from_gguf(&out).unwrap();
    assert_eq!(again.vocab_len(), 259);
    let out2 = tmp.path().join("again.gguf");
    write_gguf(&model, &again, "tiny", &out2, GgufType::Q8_0, false).unwrap();
    let back2 = runner_data::tokenizer::TextTokenizer::load(&out2, &Default::default()).unwrap();
    assert_eq!(back2.chat_template(None), Some(template.as_str()));
}

#[test]
fn existing_output_is_refused_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let model = runner_model::load_folder(&fixture("base"), DType::F32, &Device::Cpu).unwrap();
    let out = tmp.path().join("m.gguf");
    std::fs::write(&out, b"precious").unwrap();
    let e = write_gguf(&model, &toy_tokenizer(64), "t", &out, GgufType::F32, false).unwrap_err();
    assert!(matches!(e, ExportError::OutputExists { .. }), "{e}");
    assert!(e.to_string().contains("--force"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    write_gguf(&model, &toy_tokenizer(64), "t", &out, GgufType::F32, true).unwrap();
    assert!(runner_model::gguf::load_gguf(&out, DType::F32, &Device::Cpu).is_ok());
}

#[test]
fn bad_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = runner_model::load_folder(&fixture("base"), DType::F32, &Device::Cpu).unwrap();
    // A tokenizer of another size.
    let e = write_gguf(
        &model,
        &toy_tokenizer(60),
        "t",
        &tmp.path().join("a.gguf"),
        GgufType::F32,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("60 tokens") && e.contains("64"), "{e}");
    assert!(!tmp.path().join("a.gguf").exists());
    // Unknown type names list the choices.
    let e = GgufType::parse("q4_k").unwrap_err().to_string();
    assert!(e.contains("f32, f16, q8_0"), "{e}");
    assert_eq!(GgufType::parse("Q8_0").unwrap(), GgufType::Q8_0);
    // A truncated GGUF names the file and the tensor.
    let out = tmp.path().join("t.gguf");
    write_gguf(&model, &toy_tokenizer(64), "t", &out, GgufType::F32, false).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    std::fs::write(&out, &bytes[..bytes.len() - 1000]).unwrap();
    let e = runner_model::gguf::load_gguf(&out, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("t.gguf") && e.contains("tensor"), "{e}");
    std::fs::write(&out, &bytes[..100]).unwrap();
    let e = runner_model::gguf::load_gguf(&out, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("t.gguf"), "{e}");
}

#[test]
fn a_gguf_base_with_an_adapter_merges_into_a_hugging_face_folder() {
    // The fixture base as an f32 GGUF (a GGUF base, as SmolLM2's), the LoRA adapter injected,
    // merged and written as a folder: its weights equal PEFT's merge_and_unload.
    let tmp = tempfile::tempdir().unwrap();
    let base = runner_model::load_folder(&fixture("base"), DType::F32, &Device::Cpu).unwrap();
    let gguf = tmp.path().join("base.gguf");
    write_gguf(
        &base,
        &toy_tokenizer(64),
        "base",
        &gguf,
        GgufType::F32,
        false,
    )
    .unwrap();
    let (mut model, _) = runner_model::gguf::load_gguf(&gguf, DType::F32, &Device::Cpu).unwrap();
    let cfg = runner_export::peft::read_config(&fixture("adapter-lora")).unwrap();
    runner_model::inject(
        &mut model,
        &cfg.adapter_plan(Some(fixture("adapter-lora"))),
        0,
    )
    .unwrap();
    let out = tmp.path().join("merged");
    let extra = vec![("tokenizer_config.json".to_string(), b"{}".to_vec())];
    let report =
        runner_export::merge::write_model_folder(&model, &extra, &out, DType::F32, false).unwrap();
    assert_eq!(report.merged_modules, 8);
    let merged = common::tensors(&out.join("model.safetensors"));
    let peft = common::tensors(&fixture("merged-lora.safetensors"));
    for (name, want) in &peft {
        let err = common::rel_err(&merged[name], want);
        assert!(err < 1e-5, "{name}: {err:e}");
    }
    assert_eq!(merged.len(), peft.len());
    assert!(out.join("tokenizer_config.json").is_file());
    let back = runner_model::load_folder(&out, DType::F32, &Device::Cpu).unwrap();
    let batch = runner_export::merge::fixed_batch(&rows()).unwrap();
    let err = common::rel_err(
        &back.logits(&batch, false).unwrap(),
        &model.logits(&batch, false).unwrap(),
    );
    assert!(err < 1e-5, "{err:e}");
    // An existing model is refused without force.
    let e =
        runner_export::merge::write_model_folder(&model, &[], &out, DType::F32, false).unwrap_err();
    assert!(matches!(e, ExportError::OutputExists { .. }), "{e}");
}
