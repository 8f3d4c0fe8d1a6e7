//! Fuzzing the recipe loader (issue 2): arbitrary bytes, recipe-shaped YAML and mutations of
//! the shipped recipes must never panic, and every position reported must be inside the input.
//! Runs a few hundred cases per property in the normal test suite; raise PROPTEST_CASES for a
//! longer session.

use proptest::prelude::*;
use runner_recipe::yaml::Origin;
use runner_recipe::{LoadError, load_bytes};

fn check_positions(text: &[u8], result: Result<runner_recipe::Loaded, LoadError>) {
    if let Err(e) = result {
        let lines = text.split(|&b| b == b'\n').count() as u32 + 1;
        for d in e.diagnostics() {
            if let Some(Origin::File { line, .. }) = d.origin {
                assert!(
                    line >= 1 && line <= lines,
                    "line {line} outside input: {d:?}"
                );
            }
            // Rendering must not panic either.
            let _ = d.render(e.sources(), true);
        }
    }
}

const KEYS: &[&str] = &[
    "base_model",
    "adapter",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "lora_target_linear",
    "datasets",
    "test_datasets",
    "path",
    "type",
    "learning_rate",
    "num_epochs",
    "max_steps",
    "warmup_steps",
    "warmup_ratio",
    "sequence_len",
    "val_set_size",
    "bf16",
    "optimizer",
    "lr_scheduler",
    "special_tokens",
    "roles",
    "chat_template",
    "wandb_project",
    "deepspeed",
    "lora_rr",
    "<<",
    "x-anchor",
    "",
    "0",
    "true",
];

const VALUES: &[&str] = &[
    "",
    "~",
    "null",
    "true",
    "no",
    "0",
    "-1",
    "1.5e-4",
    ".nan",
    "-.inf",
    "16",
    "99999999999999999999999",
    "lora",
    "qlora",
    "alpaca",
    "chat_template",
    "\"quoted: value\"",
    "'single'",
    "[a, b]",
    "{x: 1}",
    "[",
    "{",
    "&a value",
    "*a",
    "*missing",
    "!!str 5",
    "|\n  block",
    ">-\n  folded",
    "- item",
    "builtin:tiny-llama",
    "recipes/data/smoke-chat.jsonl",
    "\t",
    "é ü 漢字",
];

fn recipe_like() -> impl Strategy<Value = String> {
    let line = (0usize..4, 0..KEYS.len(), 0..VALUES.len(), any::<bool>()).prop_map(
        |(indent, k, v, dash)| {
            format!(
                "{}{}{}: {}",
                "  ".repeat(indent),
                if dash { "- " } else { "" },
                KEYS[k],
                VALUES[v]
            )
        },
    );
    proptest::collection::vec(line, 0..40).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        check_positions(&bytes, load_bytes("fuzz.yaml", &bytes, &[]));
    }

    #[test]
    fn recipe_shaped_yaml_never_panics(text in recipe_like()) {
        check_positions(text.as_bytes(), load_bytes("fuzz.yaml", text.as_bytes(), &[]));
    }

    #[test]
    fn overrides_never_panic(key in 0..KEYS.len(), value in 0..VALUES.len(), idx in 0usize..4) {
        let text = include_str!("../../../recipes/tiny-smoke.yaml");
        let overrides = vec![
            format!("{}={}", KEYS[key], VALUES[value]),
            format!("datasets[{idx}].{}={}", KEYS[key], VALUES[value]),
        ];
        let _ = load_bytes("tiny-smoke.yaml", text.as_bytes(), &overrides)
            .map_err(|e| e.render(false));
    }

    #[test]
    fn mutated_shipped_recipes_never_panic(
        pos in 0usize..2000,
        cut in 0usize..30,
        insert in proptest::collection::vec(any::<u8>(), 0..8),
        which in 0usize..3,
    ) {
        let sources = [
            include_str!("../../../recipes/tiny-smoke.yaml"),
            include_str!("../../../recipes/mistral-qlora.yaml"),
            include_str!("../../../recipes/llama3-lora.yaml"),
        ];
        let mut bytes = sources[which].as_bytes().to_vec();
        let at = pos.min(bytes.len());
        let end = (at + cut).min(bytes.len());
        bytes.splice(at..end, insert);
        check_positions(&bytes, load_bytes("mutated.yaml", &bytes, &[]));
    }
}
