//! `base_model: org/name` resolves through the local Hugging Face cache (HF_HUB_CACHE), and a
//! model that is not cached is an error naming where it looked. One test in its own binary: it
//! sets process environment variables.

use candle_core::Device;
use runner_model::tiny::write_tiny_llama;
use runner_recipe::plan::{ModelPlan, SpecialTokens};

fn plan(base_model: &str, revision: Option<&str>) -> ModelPlan {
    ModelPlan {
        base_model: base_model.into(),
        config: None,
        tokenizer: None,
        model_type: None,
        tokenizer_type: None,
        revision: revision.map(str::to_string),
        special_tokens: SpecialTokens::default(),
        added_tokens: vec![],
    }
}

#[test]
fn hub_cache_layout_resolves() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--runner-test--tiny-llama");
    let commit = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let snap = repo.join("snapshots").join(commit);
    write_tiny_llama(&snap, 3).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    // SAFETY: this test binary has a single test; nothing else reads the environment meanwhile.
    unsafe { std::env::set_var("HF_HUB_CACHE", cache.path()) };

    let loaded = runner_model::load(&plan("runner-test/tiny-llama", None), &Device::Cpu).unwrap();
    assert_eq!(loaded.path, snap);
    assert_eq!(loaded.model.cfg.num_hidden_layers, 2);
    let by_commit = runner_model::load(&plan("runner-test/tiny-llama", Some(commit)), &Device::Cpu);
    assert!(by_commit.is_ok());

    let e = runner_model::load(&plan("runner-test/absent", None), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("models--runner-test--absent") && e.contains("huggingface-cli download"),
        "{e}"
    );
}
