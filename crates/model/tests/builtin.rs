//! `base_model: builtin:NAME`: the built-in tiny models. Its own test binary: it sets
//! RUNNER_MODEL_CACHE.

use candle_core::Device;

/// `base_model: builtin:tiny-llama`: generated once under RUNNER_MODEL_CACHE, loadable, with the
/// built-in tokenizer's vocabulary (259 ids).
#[test]
fn builtin_models_are_generated_and_reused() {
    let cache = tempfile::tempdir().unwrap();
    // SAFETY: the only test of this binary; nothing else reads the environment meanwhile.
    unsafe { std::env::set_var("RUNNER_MODEL_CACHE", cache.path()) };
    for name in runner_model::tiny::BUILTIN {
        let dir = runner_model::tiny::builtin(name).unwrap();
        let m = runner_model::load_folder(&dir, candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(m.cfg.vocab_size, 259);
        let before = std::fs::read(dir.join("model.safetensors")).unwrap();
        let again = runner_model::tiny::builtin(name).unwrap();
        assert_eq!(again, dir);
        assert_eq!(
            std::fs::read(dir.join("model.safetensors")).unwrap(),
            before
        );
    }
    let e = runner_model::tiny::builtin("gpt-5")
        .unwrap_err()
        .to_string();
    assert!(e.contains("tiny-llama"), "{e}");
}
