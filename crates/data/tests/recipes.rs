//! `preprocess` and `inspect` on the shipped recipes that use local data: tiny-smoke (builtin
//! tokenizer, ChatML) and smollm2-lora (the SmolLM2 GGUF's own tokenizer and template; needs
//! scripts/fetch-smollm2.sh). Its own test binary: it runs from the workspace root, where the
//! recipes' relative paths point.

use runner_data::inspect::{InspectOptions, render};
use runner_data::testing::{smollm2_gguf, workspace_root};
use runner_data::{PrepareOptions, load_tokenizer, prepare_with};

#[test]
fn shipped_recipes_preprocess_and_inspect() {
    std::env::set_current_dir(workspace_root()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for recipe in ["recipes/tiny-smoke.yaml", "recipes/smollm2-lora.yaml"] {
        let mut loaded = runner_recipe::load_path(recipe.as_ref(), &[])
            .unwrap_or_else(|e| panic!("{recipe}: {}", e.render(false)));
        if recipe.contains("smollm2") {
            let gguf = smollm2_gguf().unwrap_or_else(|e| panic!("{e}"));
            loaded.plan.model.base_model = gguf.to_string_lossy().into();
        }
        loaded.plan.data.prepared_path = tmp.path().to_path_buf();
        let tok = load_tokenizer(&loaded.plan.model).unwrap();
        let first = prepare_with(&loaded.plan.data, &tok, PrepareOptions::default()).unwrap();
        let s = &first.summary;
        assert_eq!(s.rows_read, 240, "{recipe}");
        assert!(
            s.train_samples > 200 && s.eval_samples == 12,
            "{recipe}: {s}"
        );
        assert!(
            s.trained_fraction() > 0.1 && s.trained_fraction() < 0.7,
            "{recipe}: {s}"
        );
        assert!(s.packing_efficiency.unwrap() > 0.8, "{recipe}: {s}");
        let again = prepare_with(&loaded.plan.data, &tok, PrepareOptions::default()).unwrap();
        assert!(again.summary.reused_cache, "{recipe}");
        assert_eq!(again.train, first.train);
        let shown = render(&tok, &first.train, InspectOptions::default());
        assert!(
            shown.contains("⟦") && shown.contains("<|im_start|>assistant\n⟦"),
            "{recipe}: {shown}"
        );
    }
}
