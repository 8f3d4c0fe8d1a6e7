//! SmolLM2-135M-Instruct from its Q4_1 GGUF: our dequantization, Q/K un-permutation and forward
//! give transformers' loss on the same dequantized weights.
//!
//! Needs the GGUF: run `scripts/fetch-smollm2.sh` (found at $RUNNER_SMOLLM2_GGUF, else
//! $RUNNER_MODEL_CACHE/ or .cache/models/). The expected
//! numbers in `fixtures/smollm2-gguf.json` come from `tools/model/make_smollm2_fixture.py`:
//!
//! ```python
//! tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
//! model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
//! ids = tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"]
//! loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss   # 2.343374...
//! ```

use candle_core::{DType, Device};
use runner_model::lora::{LoraSettings, ParamCounts, inject_settings};
use runner_model::{Batch, loss};
use runner_recipe::plan::{LoraInit, TargetModules};
use std::path::PathBuf;

fn gguf_path() -> PathBuf {
    if let Some(p) = std::env::var_os("RUNNER_SMOLLM2_GGUF") {
        return PathBuf::from(p);
    }
    let models = std::env::var_os("RUNNER_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models"));
    let p = models.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "SmolLM2 GGUF not found at {}: run scripts/fetch-smollm2.sh first (it honours \
         RUNNER_MODEL_CACHE), or set RUNNER_SMOLLM2_GGUF",
        p.display()
    );
    p
}

#[test]
fn smollm2_gguf_loss_matches_transformers() {
    let path = gguf_path();
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/smollm2-gguf.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let ids: Vec<u32> = fx["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let want = fx["loss"].as_f64().unwrap();

    let (mut model, info) = runner_model::gguf::load_gguf(&path, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.cfg.num_hidden_layers, 30);
    assert_eq!(
        (model.cfg.num_attention_heads, model.cfg.num_key_value_heads),
        (9, 3)
    );
    assert_eq!(model.cfg.vocab_size, 49152);
    assert!(model.cfg.tie_word_embeddings);
    assert_eq!(info.tokens.len(), 49152);
    assert!(
        info.chat_template
            .as_deref()
            .unwrap_or("")
            .contains("<|im_start|>")
    );

    let n = ids.len();
    let labels = ids.iter().map(|&x| x as i64).collect();
    let batch = Batch::from_attention_mask(1, n, ids, &vec![1; n], labels).unwrap();
    let out = loss::causal_lm_loss(&model, &batch, false, 16).unwrap();
    let got = out.loss.to_scalar::<f32>().unwrap() as f64;
    println!(
        "SmolLM2 GGUF loss {got} (transformers {want}), {} tokens",
        out.n_tokens
    );
    assert!(
        ((got - want) / want).abs() < 1e-4,
        "loss {got} vs transformers {want}"
    );

    // The last position's first logits, to localise a mismatch.
    let logits = model.logits(&batch, false).unwrap();
    let last: Vec<f32> = logits
        .get(0)
        .unwrap()
        .get(n - 1)
        .unwrap()
        .narrow(0, 0, 16)
        .unwrap()
        .to_vec1()
        .unwrap();
    for (i, (a, b)) in last
        .iter()
        .zip(fx["last_logits_head"].as_array().unwrap())
        .enumerate()
    {
        let b = b.as_f64().unwrap() as f32;
        assert!(
            (a - b).abs() <= 1e-3 * b.abs().max(1.0),
            "logit {i}: {a} vs {b}"
        );
    }

    // PEFT: get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    //       .print_trainable_parameters()
    let settings = LoraSettings {
        r: 16,
        alpha: 32.0,
        dropout: 0.0,
        scaling: 2.0,
        targets: TargetModules::AllLinear,
        init: LoraInit::Kaiming,
        use_dora: false,
    };
    let adapters = inject_settings(&mut model, &settings, 0).unwrap();
    assert_eq!(adapters.modules.len(), 30 * 7);
    assert_eq!(
        ParamCounts::of(&model, &adapters).to_string(),
        fx["peft_all_linear_r16"].as_str().unwrap()
    );
}

/// The dry-run summary reads only the GGUF header and agrees with PEFT's line.
#[test]
fn smollm2_summary_matches_peft() {
    use runner_recipe::plan::{AdapterKind, AdapterPlan, BaseQuant, ModelPlan, SpecialTokens};
    let path = gguf_path();
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/smollm2-gguf.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let model = ModelPlan {
        base_model: path.display().to_string(),
        config: None,
        tokenizer: None,
        model_type: None,
        tokenizer_type: None,
        revision: None,
        special_tokens: SpecialTokens::default(),
        added_tokens: vec![],
    };
    let adapter = AdapterPlan {
        kind: AdapterKind::Lora,
        base_quant: BaseQuant::None,
        init_from: None,
        r: 16,
        alpha: 32.0,
        dropout: 0.05,
        scaling: 2.0,
        targets: TargetModules::AllLinear,
        modules_to_save: vec![],
        use_dora: false,
        use_rslora: false,
        init: LoraInit::Kaiming,
        loraplus_lr_ratio: None,
        loraplus_lr_embedding: 1e-6,
    };
    let s = runner_model::summarize(&model, &adapter).unwrap();
    let text = s.to_string();
    println!("{text}");
    assert!(
        text.ends_with(fx["peft_all_linear_r16"].as_str().unwrap()),
        "{text}"
    );
    assert!(
        text.contains("q_proj ×30") && text.contains("down_proj ×30"),
        "{text}"
    );
}
