//! End-to-end tests of the `runner` binary: exit codes, overrides, explain, schema, completions.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn runner(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .output()
        .expect("runner starts")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_exit_codes_are_0_valid_1_invalid_2_unusable() {
    assert_eq!(
        runner(&["validate", "recipes/tiny-smoke.yaml"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        runner(&["validate", "tests/recipes/bad/unknown-keys.yaml"])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        runner(&["validate", "tests/recipes/bad/non-utf8.yaml"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        runner(&["validate", "no/such/recipe.yaml"]).status.code(),
        Some(2)
    );
    assert_eq!(
        runner(&["validate", "--no-such-flag"]).status.code(),
        Some(2)
    );
}

#[test]
fn errors_show_path_position_source_line_and_help() {
    let out = runner(&["validate", "tests/recipes/bad/unknown-keys.yaml"]);
    let (_, err) = text(&out);
    assert!(err.contains("error: unknown key `lora_rr`"), "{err}");
    assert!(
        err.contains("tests/recipes/bad/unknown-keys.yaml:3:1 (lora_rr)"),
        "{err}"
    );
    assert!(err.contains("3 | lora_rr: 16"), "{err}");
    assert!(err.contains("help: did you mean `lora_r`?"), "{err}");
    assert!(err.contains("4 error(s)"), "{err}");
}

#[test]
fn overrides_are_typed_and_validated_like_file_values() {
    // --set and Axolotl's --key=value form both apply and both show in --explain.
    let out = runner(&[
        "validate",
        "recipes/tiny-smoke.yaml",
        "--explain",
        "--set",
        "lora_r=32",
        "--learning_rate=0.01",
        "--set",
        "datasets[0].train_on_eos=all",
    ]);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(stdout.contains("adapter.r = 32"), "{stdout}");
    assert!(stdout.contains("# --set lora_r=32"), "{stdout}");
    assert!(stdout.contains("train.learning_rate = 0.01"), "{stdout}");
    assert!(stdout.contains("train_on_eos = \"all\""), "{stdout}");

    let out = runner(&["validate", "recipes/tiny-smoke.yaml", "--lora_r=many"]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("--set lora_r=many:8"), "{err}");
    assert!(err.contains("expected a whole number"), "{err}");
}

#[test]
fn explain_names_the_source_of_every_value() {
    let out = runner(&["validate", "recipes/tiny-smoke.yaml", "--explain"]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("model.base_model = \"builtin:tiny-llama\"")
            && stdout.contains("base_model at recipes/tiny-smoke.yaml:8:13"),
        "{stdout}"
    );
    assert!(stdout.contains("train.optimizer.beta2 = 0.999"), "{stdout}");
    assert!(stdout.contains("# default"), "{stdout}");
    assert!(stdout.contains("adapter.scaling = 2.0"), "{stdout}");
    assert!(
        stdout.contains("# derived: lora_alpha / lora_r"),
        "{stdout}"
    );
    for line in stdout.lines() {
        assert!(line.contains("  # "), "value without a source: {line}");
    }
}

#[test]
fn validate_lists_substitutions() {
    let out = runner(&["validate", "recipes/mistral-qlora.yaml"]);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        stdout.contains("optimizer: adamw_bnb_8bit → AdamW"),
        "{stdout}"
    );
    assert!(stdout.contains("flash_attention: true →"), "{stdout}");
}

#[test]
fn run_without_a_recipe_plans_the_built_in_smoke_recipe() {
    let out = runner(&["run", "--dry-run"]);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(stdout.contains("1. data"), "{stdout}");
    assert!(stdout.contains("builtin:tiny-llama"), "{stdout}");
    assert!(stdout.contains("4. export"), "{stdout}");
}

#[test]
fn schema_command_prints_the_committed_schema() {
    let out = runner(&["schema"]);
    let committed =
        std::fs::read_to_string(root().join("schemas/recipe.schema.json")).expect("schema file");
    assert_eq!(String::from_utf8_lossy(&out.stdout), committed);
}

#[test]
fn completions_and_version() {
    let out = runner(&["completions", "bash"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("_runner"));
    let out = runner(&["--version"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("runner "));
}

#[test]
fn preprocess_reports_and_reuses_its_cache_and_inspect_shows_masks() {
    let tmp = std::env::temp_dir().join(format!("runner-cli-prep-{}", std::process::id()));
    let set = format!("dataset_prepared_path={}", tmp.display());
    let first = runner(&["preprocess", "recipes/tiny-smoke.yaml", "--set", &set]);
    let (stdout, err) = text(&first);
    assert_eq!(first.status.code(), Some(0), "{err}");
    assert!(stdout.contains("rows read 240"), "{stdout}");
    assert!(stdout.contains("packed into"), "{stdout}");
    let second = runner(&[
        "preprocess",
        "recipes/tiny-smoke.yaml",
        "--set",
        &set,
        "--json",
    ]);
    let (stdout, err) = text(&second);
    assert_eq!(second.status.code(), Some(0), "{err}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("json summary");
    assert_eq!(summary["reused_cache"], true);

    let out = runner(&[
        "inspect",
        "recipes/tiny-smoke.yaml",
        "-n",
        "1",
        "--set",
        &set,
    ]);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(stdout.contains("⟦"), "{stdout}");
    let _ = std::fs::remove_dir_all(tmp);
}

#[test]
fn issue_5_run_trains_the_built_in_smoke_recipe_end_to_end() {
    let tmp = std::env::temp_dir().join(format!("runner-cli-run-{}", std::process::id()));
    let out_dir = format!("output_dir={}", tmp.display());
    let prep = format!("dataset_prepared_path={}", tmp.join("prepared").display());
    let out = runner(&[
        "run",
        "--set",
        &out_dir,
        "--set",
        &prep,
        "--set",
        "max_steps=4",
        "--set",
        "eval_steps=2",
    ]);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("trainable params: "), "{err}");
    assert!(err.contains("step 4/4 loss"), "{err}");
    assert!(stdout.contains("adapter: "), "{stdout}");
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "metrics.jsonl",
        "loss.svg",
    ] {
        assert!(tmp.join(f).exists(), "{f} missing");
    }
    let _ = std::fs::remove_dir_all(tmp);
}

#[test]
fn issue_4_dry_run_prints_the_model_summary_with_peft_counts() {
    let out = runner(&["run", "--dry-run"]);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(stdout.contains("model: LlamaForCausalLM"), "{stdout}");
    assert!(stdout.contains("trainable params: "), "{stdout}");
    assert!(stdout.contains("|| trainable%: "), "{stdout}");
}

#[test]
fn issue_5_sigint_finishes_the_step_saves_and_prints_the_resume_command() {
    use std::io::{BufRead, BufReader};
    let tmp = std::env::temp_dir().join(format!("runner-cli-sigint-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args([
            "run",
            "recipes/tiny-smoke.yaml",
            "--set",
            &format!("output_dir={}", tmp.display()),
            "--set",
            &format!("dataset_prepared_path={}", tmp.join("prepared").display()),
            "--set",
            "max_steps=100000",
            "--set",
            "logging_steps=1",
        ])
        .current_dir(root())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("runner starts");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap_or(0) > 0 {
        seen.push_str(&line);
        if line.starts_with("step 2/") {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            break;
        }
        line.clear();
    }
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
    seen.push_str(&rest);
    let status = child.wait().expect("runner exits");
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(
        seen.contains("resume with: runner run recipes/tiny-smoke.yaml --set 'output_dir=")
            && seen.contains(
                "--set 'max_steps=100000' --set 'logging_steps=1' --set resume_from_checkpoint="
            ),
        "{seen}"
    );
    let ckpts: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
        .collect();
    assert_eq!(ckpts.len(), 1, "{seen}");
    let _ = std::fs::remove_dir_all(tmp);
}

#[test]
fn issue_6_merge_writes_a_model_matching_base_plus_adapter_and_refuses_to_overwrite() {
    let tmp = std::env::temp_dir().join(format!("runner-cli-merge-{}", std::process::id()));
    let out_dir = format!("output_dir={}", tmp.join("run").display());
    let prep = format!("dataset_prepared_path={}", tmp.join("prepared").display());
    let out = runner(&[
        "run",
        "--set",
        &out_dir,
        "--set",
        &prep,
        "--set",
        "max_steps=2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let adapter = tmp.join("run").display().to_string();
    let merged = tmp.join("merged").display().to_string();
    let args = [
        "merge",
        "--base",
        "builtin:tiny-llama",
        "--adapter",
        &adapter,
        "--out",
        &merged,
    ];
    let out = runner(&args);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(stdout.contains("merged 14 module(s)"), "{stdout}");
    let diff: f64 = stdout
        .rsplit("merged: ")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("a difference");
    assert!(diff < 1e-5, "{stdout}");
    // Into the NF4 round-tripped base (what a QLoRA adapter trains against), said so.
    let nf4_dir = tmp.join("merged-nf4").display().to_string();
    let out = runner(&[
        "merge",
        "--base",
        "builtin:tiny-llama",
        "--adapter",
        &adapter,
        "--out",
        &nf4_dir,
        "--dequantized-base",
        "nf4",
    ]);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        stdout.contains("merged into the NF4 round-tripped base"),
        "{stdout}"
    );
    let diff: f64 = stdout
        .rsplit("merged: ")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("a difference");
    assert!(diff < 1e-5, "{stdout}");
    // runner eval with the trained adapter reports a lower loss than the base alone.
    let loss_of = |out: &Output| -> f64 {
        let (stdout, err) = text(out);
        assert_eq!(out.status.code(), Some(0), "{err}");
        stdout
            .split("loss ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no loss in {stdout}"))
    };
    let base = loss_of(&runner(&["eval", "--set", &prep]));
    let tuned = loss_of(&runner(&["eval", "--set", &prep, "--adapter", &adapter]));
    assert!(tuned < base, "adapter {tuned} vs base {base}");

    // runner generate: base + adapter and the merged model pick the same greedy tokens; a
    // seed gives the same sample.
    let generate = |extra: &[&str]| -> String {
        let mut a = vec![
            "generate",
            "--set",
            &prep,
            "--user",
            "hi",
            "--max-new-tokens",
            "12",
        ];
        a.extend_from_slice(extra);
        let out = runner(&a);
        let (stdout, err) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(err.contains("ended by"), "{err}");
        stdout
    };
    let with_adapter = generate(&["--adapter", &adapter]);
    assert!(!with_adapter.trim().is_empty());
    assert_eq!(with_adapter, generate(&["--model", &merged]));
    // export-gguf: base + adapter merged into an f32 GGUF that reads back with the same logits
    // and generates the same greedy tokens; an existing file is refused without --force.
    let gguf = tmp.join("tiny.gguf").display().to_string();
    let export = [
        "export-gguf",
        "--set",
        &prep,
        "--adapter",
        &adapter,
        "-o",
        &gguf,
        "--type",
        "f32",
    ];
    let out = runner(&export);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(stdout.contains("14 adapted layer(s) merged"), "{stdout}");
    let diff: f64 = stdout
        .rsplit("read back: ")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("a difference");
    assert!(diff < 1e-5, "{stdout}");
    assert_eq!(with_adapter, generate(&["--model", &gguf]));
    let again = runner(&export);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again).1.contains("--force"), "{}", text(&again).1);
    // A GGUF base: merge writes a Hugging Face folder (with the tokenizer from the GGUF) that
    // generates what base + adapter generates.
    let base_gguf = tmp.join("base.gguf").display().to_string();
    let out = runner(&[
        "export-gguf",
        "--set",
        &prep,
        "--no-adapter",
        "-o",
        &base_gguf,
        "--type",
        "f32",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let from_gguf = tmp.join("merged-from-gguf").display().to_string();
    let out = runner(&[
        "merge",
        "--base",
        &base_gguf,
        "--adapter",
        &adapter,
        "--out",
        &from_gguf,
    ]);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(stdout.contains("merged 14 module(s)"), "{stdout}");
    assert!(tmp.join("merged-from-gguf/tokenizer.json").is_file());
    assert_eq!(with_adapter, generate(&["--model", &from_gguf]));
    let bad = runner(&[
        "export-gguf",
        "--set",
        &prep,
        "-o",
        "x.gguf",
        "--type",
        "q4_9",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad).1.contains("f32, f16, q8_0"), "{}", text(&bad).1);

    let sampled = [
        "--adapter",
        &adapter,
        "--temperature",
        "1.0",
        "--top-p",
        "0.9",
        "--seed",
        "5",
    ];
    assert_eq!(generate(&sampled), generate(&sampled));

    let again = runner(&args);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again).1.contains("--force"), "{}", text(&again).1);
    let _ = std::fs::remove_dir_all(tmp);
}

#[test]
fn issue_7_mistral_qlora_recipe_scaled_down_to_the_tiny_model_trains_with_an_nf4_base() {
    let tmp = std::env::temp_dir().join(format!("runner-cli-qlora-{}", std::process::id()));
    let sets = [
        "base_model=builtin:tiny-llama".to_string(),
        "model_type=".into(),
        "datasets[0].path=recipes/data/smoke-chat.jsonl".into(),
        "datasets[0].type=chat_template".into(),
        "datasets[0].chat_template=chatml".into(),
        "special_tokens=".into(),
        "sequence_len=256".into(),
        "max_steps=3".into(),
        "evals_per_epoch=".into(),
        // The recipe's watchdog (5.0) would stop a random tiny model at once.
        "loss_watchdog_threshold=".into(),
        "loss_watchdog_patience=".into(),
        format!("output_dir={}", tmp.display()),
        format!("dataset_prepared_path={}", tmp.join("prepared").display()),
    ];
    let mut args = vec!["run", "recipes/mistral-qlora.yaml"];
    for s in &sets {
        args.push("--set");
        args.push(s);
    }
    let out = runner(&args);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("step 3/3 loss"), "{err}");
    let cfg = std::fs::read_to_string(tmp.join("adapter_config.json")).expect("adapter written");
    assert!(cfg.contains("\"r\": 32"), "{cfg}");
    let _ = std::fs::remove_dir_all(tmp);
}

/// Issue 7: recipe tokens grow the vocabulary (mean rows), train through
/// `lora_modules_to_save`, and the output folder carries the tokenizer and the grown copies,
/// so `runner eval --adapter` uses the adapter again; without the modules to save the recipe
/// is refused as Axolotl refuses it.
#[test]
fn issue_7_new_tokens_resize_train_and_save_the_tokenizer() {
    let tmp = std::env::temp_dir().join(format!("runner-cli-tokens-{}", std::process::id()));
    let out_dir = format!("output_dir={}", tmp.display());
    let prep = format!("dataset_prepared_path={}", tmp.join("prepared").display());
    let base = [
        "--set",
        &out_dir,
        "--set",
        &prep,
        "--set",
        "tokens=[\"<|tool|>\"]",
        "--set",
        "max_steps=2",
    ];
    let mut args = vec!["run", "recipes/tiny-smoke.yaml"];
    args.extend(base);
    let refused = runner(&args);
    let (_, err) = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`lora_modules_to_save` not properly set when adding new tokens"),
        "{err}"
    );

    args.extend(["--set", "lora_modules_to_save=[embed_tokens, lm_head]"]);
    let out = runner(&args);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("vocabulary grown from 259 to 260"), "{err}");
    let tok = std::fs::read_to_string(tmp.join("tokenizer.json")).unwrap();
    assert!(
        tok.contains("<|tool|>"),
        "the saved tokenizer has the new token"
    );
    assert!(tmp.join("tokenizer_config.json").exists());
    let saved = candle_core::safetensors::load(
        tmp.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    for name in [
        "base_model.model.model.embed_tokens.weight",
        "base_model.model.lm_head.weight",
    ] {
        assert_eq!(saved[name].dims()[0], 260, "{name}");
    }
    let adapter = tmp.display().to_string();
    let mut eval_args = vec!["eval", "recipes/tiny-smoke.yaml", "--adapter", &adapter];
    eval_args.extend(&args[2..]);
    let ev = runner(&eval_args);
    let (stdout, err) = text(&ev);
    assert_eq!(ev.status.code(), Some(0), "{err}");
    assert!(stdout.contains("perplexity"), "{stdout}");
    let _ = std::fs::remove_dir_all(tmp);
}

/// Issue 7: PiSSA trains from the split base and saves a plain LoRA of the original base
/// (rank 2r, `init_lora_weights: true`) that `runner eval --adapter` uses on the unmodified
/// base; a rank above a target's smallest side is refused before any work.
#[test]
fn issue_7_pissa_runs_and_saves_a_lora_of_the_original_base() {
    let tmp = std::env::temp_dir().join(format!("runner-cli-pissa-{}", std::process::id()));
    let out_dir = format!("output_dir={}", tmp.display());
    let prep = format!("dataset_prepared_path={}", tmp.join("prepared").display());
    let sets = [
        "--set",
        &out_dir,
        "--set",
        &prep,
        "--set",
        "peft_init_lora_weights=pissa_niter_2",
        "--set",
        "max_steps=2",
    ];
    let mut args = vec!["run", "recipes/tiny-smoke.yaml"];
    args.extend(sets);
    let too_big = [args.clone(), vec!["--set", "lora_r=100"]].concat();
    let refused = runner(&too_big);
    let (_, err) = text(&refused);
    assert_ne!(refused.status.code(), Some(0), "{err}");
    assert!(err.contains("pissa") && err.contains("lora_r"), "{err}");
    assert!(!tmp.join("adapter_model.safetensors").exists());

    let out = runner(&args);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["r"], 16);
    assert_eq!(cfg["lora_alpha"], 32.0);
    assert_eq!(cfg["init_lora_weights"], true);
    let adapter = tmp.display().to_string();
    let mut eval_args = vec!["eval", "recipes/tiny-smoke.yaml", "--adapter", &adapter];
    eval_args.extend(&args[2..]);
    let ev = runner(&eval_args);
    let (stdout, err) = text(&ev);
    assert_eq!(ev.status.code(), Some(0), "{err}");
    assert!(stdout.contains("perplexity"), "{stdout}");
    let _ = std::fs::remove_dir_all(tmp);
}

#[test]
fn issue_6_run_merges_and_writes_gguf_when_the_recipe_asks() {
    let tmp = std::env::temp_dir().join(format!("runner-cli-export-{}", std::process::id()));
    let out_dir = tmp.join("run");
    let sets = [
        format!("output_dir={}", out_dir.display()),
        format!("dataset_prepared_path={}", tmp.join("prepared").display()),
        "max_steps=2".into(),
        "merge_adapter=true".into(),
        "merged_dtype=f16".into(),
        "export_gguf=[f32, q8_0]".into(),
    ];
    let mut args = vec!["run"];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    let out = runner(&args);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(stdout.contains("merged model (F16)"), "{stdout}");
    assert!(stdout.contains("GGUF f32, GGUF q8_0"), "{stdout}");
    assert!(stdout.contains("into the stored base"), "{stdout}");
    for f in [
        "merged/model.safetensors",
        "merged/config.json",
        "tiny-llama-f32.gguf",
        "tiny-llama-q8_0.gguf",
    ] {
        assert!(out_dir.join(f).is_file(), "{f} missing; {stdout}");
    }
    let config = std::fs::read_to_string(out_dir.join("merged/config.json")).unwrap();
    assert!(config.contains("float16"), "{config}");
    // No temporary files left beside them.
    let names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");

    // A GGUF base (written here from the built-in model): merged in memory into a folder with
    // config.json and the tokenizer.
    let base_gguf = tmp.join("base.gguf").display().to_string();
    let out = runner(&[
        "export-gguf",
        "--no-adapter",
        "-o",
        &base_gguf,
        "--type",
        "f32",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let gguf_run = tmp.join("gguf-run");
    let sets = [
        format!("base_model={base_gguf}"),
        format!("output_dir={}", gguf_run.display()),
        format!("dataset_prepared_path={}", tmp.join("prepared").display()),
        "max_steps=2".into(),
        "merge_adapter=true".into(),
    ];
    let mut args = vec!["run"];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    let out = runner(&args);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(stdout.contains("from the GGUF base"), "{stdout}");
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(gguf_run.join("merged").join(f).is_file(), "{f}; {stdout}");
    }

    // Bad values are validation errors that list the choices.
    let bad = runner(&["validate", "--set", "export_gguf=[q8_0, q4_k]"]);
    assert_eq!(bad.status.code(), Some(1));
    let (_, err) = text(&bad);
    assert!(
        err.contains("export_gguf[1]") && err.contains("f32, f16, q8_0"),
        "{err}"
    );
    let bad = runner(&["validate", "--set", "merged_dtype=bf16"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad).1.contains("merge_adapter: true"),
        "{}",
        text(&bad).1
    );
    let _ = std::fs::remove_dir_all(tmp);
}

/// The hub cache fixture holding only Mistral-7B's config.json (see its README).
fn config_only_hub() -> PathBuf {
    root().join("crates/cli/tests/fixtures/hub-config-only")
}

/// The `estimated peak` figure (GB) a dry-run printed.
fn estimated_peak(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("estimated peak"))
        .unwrap_or_else(|| panic!("no estimate in: {stdout}"));
    line.split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unreadable estimate: {line}"))
}

/// Issue 12: `--dry-run` on recipes/mistral-qlora.yaml with only the model's config.json
/// present plans one H200 at ≤ 20 GB, from the hub cache or from a folder given by `--set`.
#[test]
fn issue_12_dry_run_plans_mistral_qlora_on_one_h200_from_config_json_alone() {
    let hub = config_only_hub();
    let snapshot = std::fs::read_dir(hub.join("models--mistralai--Mistral-7B-v0.1/snapshots"))
        .expect("fixture")
        .next()
        .expect("one snapshot")
        .expect("entry")
        .path();
    let set_base = format!("base_model={}", snapshot.display());
    for extra in [vec![], vec!["--set", set_base.as_str()]] {
        let mut args = vec![
            "run",
            "recipes/mistral-qlora.yaml",
            "--dry-run",
            "--plan-device",
            "h200",
        ];
        args.extend(extra.iter().copied());
        let out = Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(&args)
            .current_dir(root())
            .env("NO_COLOR", "1")
            .env("HF_HUB_CACHE", &hub)
            .output()
            .expect("runner starts");
        let (stdout, err) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}\n{stdout}\n{err}");
        assert!(stdout.contains("model: MistralForCausalLM"), "{stdout}");
        assert!(stdout.contains("configuration only"), "{stdout}");
        assert!(
            stdout.contains("memory plan for NVIDIA H200 (141 GB): BF16"),
            "{stdout}"
        );
        assert!(
            stdout.contains("NF4 base, micro_batch_size 2 × 8192"),
            "{stdout}"
        );
        for part in [
            "weights",
            "adapters + optimizer",
            "activations",
            "workspace",
        ] {
            assert!(stdout.contains(part), "{part}: {stdout}");
        }
        let peak = estimated_peak(&stdout);
        assert!((15.0..=20.0).contains(&peak), "{peak} GB\n{stdout}");
    }

    // A GPU too small for it: refused with the figures and the fixes (exit 1).
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args([
            "run",
            "recipes/mistral-qlora.yaml",
            "--dry-run",
            "--plan-device",
            "cuda:16",
        ])
        .current_dir(root())
        .env("HF_HUB_CACHE", &hub)
        .output()
        .expect("runner starts");
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("16.0 GB is available"), "{err}");
    assert!(err.contains("lower `micro_batch_size`"), "{err}");
}

/// Without CUDA in the build, `--dry-run --gpus 1` cannot ask a GPU its memory: it says how
/// to name the GPU to plan for.
#[cfg(not(feature = "cuda"))]
#[test]
fn issue_12_dry_run_for_a_gpu_without_cuda_points_to_plan_device() {
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args([
            "run",
            "recipes/mistral-qlora.yaml",
            "--dry-run",
            "--gpus",
            "1",
        ])
        .current_dir(root())
        .env("HF_HUB_CACHE", config_only_hub())
        .output()
        .expect("runner starts");
    let (_, err) = text(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("--plan-device"), "{err}");
}
