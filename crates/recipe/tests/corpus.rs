//! The bad-recipe corpus (issue 2): every file under tests/recipes/bad/ must produce exactly
//! the diagnostics recorded beside it in NAME.expected (exit code, then one line per error:
//! `file:line:col: message [recipe path]` and its help). Files under tests/recipes/good/ and recipes/ must
//! validate. Run with BLESS=1 to rewrite the .expected files after an intended change.

use runner_recipe::{LoadError, load_path};
use std::path::{Path, PathBuf};

/// Relative paths in recipes resolve from the current directory, as for users; the corpus is
/// written to be checked from the workspace root.
fn at_workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().expect("workspace root");
    std::env::set_current_dir(&root).expect("cd to workspace root");
    root
}

fn outcome(path: &Path) -> String {
    match load_path(path, &[]) {
        Ok(_) => "exit 0\n".to_string(),
        Err(e) => {
            let code = match e {
                LoadError::Invalid { .. } => 1,
                LoadError::Unusable { .. } => 2,
            };
            let mut out = format!("exit {code}\n");
            for d in e.diagnostics() {
                out.push_str(&d.short(e.sources()));
                out.push('\n');
                if let Some(help) = &d.help {
                    out.push_str(&format!("  help: {}\n", help.replace('\n', "\n        ")));
                }
            }
            out
        }
    }
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("corpus folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    files
}

#[test]
fn issue_2_bad_recipes_give_their_recorded_errors() {
    at_workspace_root();
    let files = yaml_files(Path::new("tests/recipes/bad"));
    assert!(files.len() >= 15, "corpus is incomplete: {files:?}");
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    for file in files {
        let got = outcome(&file);
        assert!(
            !got.starts_with("exit 0"),
            "{} validated but is in bad/",
            file.display()
        );
        let expected_path = file.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &got).expect("write expected");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            failures.push(format!(
                "{}\n--- expected\n{expected}--- got\n{got}",
                file.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn issue_2_every_error_has_a_position_when_it_is_about_a_line() {
    at_workspace_root();
    for file in yaml_files(Path::new("tests/recipes/bad")) {
        let text = std::fs::read_to_string(file.with_extension("expected")).unwrap_or_default();
        for line in text.lines().skip(1).filter(|l| !l.starts_with(' ')) {
            let about_a_key = line.ends_with(']');
            let missing = line.contains("missing required key")
                || line.contains("does not say how long")
                || line.contains("no target modules");
            if about_a_key && !missing {
                let loc = line.split(": ").next().unwrap_or("");
                assert!(
                    loc.matches(':').count() >= 2,
                    "{}: no line:column in `{line}`",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn good_and_shipped_recipes_validate() {
    at_workspace_root();
    let mut files = yaml_files(Path::new("tests/recipes/good"));
    files.extend(yaml_files(Path::new("recipes")));
    files.extend(yaml_files(Path::new("tests/recipes/axolotl")));
    for file in files {
        if let Err(e) = load_path(&file, &[]) {
            let hint = if e.render(false).contains(".cache/models") {
                "\n(fetch the model with scripts/fetch-smollm2.sh)"
            } else {
                ""
            };
            panic!(
                "{} does not validate:\n{}{hint}",
                file.display(),
                e.render(false)
            );
        }
    }
}

#[test]
fn axolotl_mistral_qlora_example_lists_its_substitutions() {
    at_workspace_root();
    let loaded = load_path(Path::new("tests/recipes/axolotl/mistral-qlora.yml"), &[])
        .expect("Axolotl's Mistral QLoRA example validates");
    let keys: Vec<&str> = loaded
        .plan
        .substitutions
        .iter()
        .map(|s| s.key.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "is_mistral_derived_model",
            "eval_table_max_new_tokens",
            "tokenizer_type",
            "optimizer",
            "flash_attention",
            "strict"
        ]
    );
}

#[test]
fn a_large_recipe_is_checked_completely() {
    // 2,000 datasets validate; 5,000 unknown keys are each reported, without a panic.
    let mut text = String::from(
        "base_model: builtin:tiny-llama\nadapter: lora\nlora_target_linear: true\nlearning_rate: 0.001\nmax_steps: 1\ndatasets:\n",
    );
    for i in 0..2000 {
        text.push_str(&format!("  - path: org/dataset-{i}\n    type: alpaca\n"));
    }
    let loaded = runner_recipe::load_str("large.yaml", &text, &[]).expect("valid");
    assert_eq!(loaded.plan.data.datasets.len(), 2000);
    for i in 0..5000 {
        text.push_str(&format!("unknown_key_{i}: {i}\n"));
    }
    let err = runner_recipe::load_str("large.yaml", &text, &[]).expect_err("invalid");
    assert_eq!(err.diagnostics().len(), 5000);
}

/// Issue 15: Axolotl 0.19.0's own examples (tests/recipes/axolotl/, copied unchanged) validate,
/// and each Axolotl key runner does not take literally is listed with what runs instead:
/// the Cut Cross Entropy plugin, LoRA kernels, FSDP, 4-bit AdamW, and `evals_per_epoch`
/// without an evaluation set (a warning, as in Axolotl, not an error).
#[test]
fn issue_15_axolotl_examples_validate_and_list_what_runs_instead() {
    at_workspace_root();
    let listed = |file: &str| -> Vec<String> {
        let loaded = load_path(&Path::new("tests/recipes/axolotl").join(file), &[])
            .unwrap_or_else(|e| panic!("{file} does not validate:\n{}", e.render(false)));
        loaded
            .plan
            .substitutions
            .iter()
            .map(|s| format!("{}: {}", s.key, s.asked))
            .collect()
    };
    let qwen3 = listed("qwen3-32b-qlora.yaml");
    for expected in [
        "plugins[0]: axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin",
        "lora_mlp_kernel: true",
        "optimizer: adamw_torch_4bit",
        "evals_per_epoch: 4",
    ] {
        assert!(
            qwen3.iter().any(|s| s == expected),
            "{expected} not in {qwen3:?}"
        );
    }
    let fsdp = listed("llama3-qlora-fsdp-70b.yaml");
    assert!(fsdp.iter().any(|s| s.starts_with("fsdp: ")), "{fsdp:?}");
    assert!(
        fsdp.iter().any(|s| s.starts_with("fsdp_config: ")),
        "{fsdp:?}"
    );
    let fused = listed("qwen3-8b-lora-fused-attn.yaml");
    assert!(
        fused.iter().any(|s| s == "fused_attn_kernel: true"),
        "{fused:?}"
    );
}
