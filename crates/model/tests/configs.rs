//! Real `config.json` files (as published on the Hub, trimmed of nothing) parse, resolve the
//! fields that change the maths, and give the parameter counts transformers reports.

use runner_model::{Arch, ModelConfig, RopeScaling};
use std::path::PathBuf;

fn cfg(name: &str) -> ModelConfig {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/configs")
        .join(format!("{name}.json"));
    ModelConfig::from_file(&p).unwrap()
}

#[test]
fn llama_3_1() {
    let c = cfg("llama-3.1-8b");
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        (32, 8, 128)
    );
    assert!(matches!(
        c.rope_scaling,
        RopeScaling::Llama3 { factor: 8.0, .. }
    ));
    assert_eq!(c.param_count(), 8_030_261_248); // Meta-Llama-3.1-8B
}

#[test]
fn mistral_sliding_window() {
    let c = cfg("mistral-7b-v0.1");
    assert_eq!(c.arch, Arch::Mistral);
    assert!(c.sliding_window.iter().all(|w| *w == Some(4096)));
    assert_eq!(c.param_count(), 7_241_732_096); // Mistral-7B-v0.1
}

#[test]
fn qwen2_5_bias_and_no_window() {
    let c = cfg("qwen2.5-0.5b-instruct");
    assert_eq!(c.arch, Arch::Qwen2);
    assert!(c.qkv_bias && !c.o_bias && c.tie_word_embeddings);
    assert!(c.sliding_window.iter().all(Option::is_none)); // use_sliding_window: false
    assert_eq!(c.param_count(), 494_032_768); // Qwen2.5-0.5B
}

#[test]
fn qwen3_qk_norm() {
    let c = cfg("qwen3-0.6b");
    assert_eq!(c.arch, Arch::Qwen3);
    assert!(c.qk_norm && !c.qkv_bias);
    assert_eq!(c.head_dim, 128);
    assert_eq!(c.param_count(), 596_049_920); // Qwen3-0.6B
}

#[test]
fn tinyllama_and_smollm2() {
    let t = cfg("tinyllama-1.1b-chat");
    assert_eq!(t.param_count(), 1_100_048_384); // TinyLlama-1.1B
    let s = cfg("smollm2-135m-instruct");
    assert_eq!(s.param_count(), 134_515_008); // SmolLM2-135M
    assert_eq!(s.rope_theta, 100_000.0);
}
