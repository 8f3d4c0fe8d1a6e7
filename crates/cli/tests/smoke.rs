//! Issue 19: `runner run RECIPE --smoke` on every shipped recipe, with the model, tokenizer and
//! hub data absent (substituted, said so) and present in a Hugging Face cache (used), and
//! failing with the real run's own error where the real run fails.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// A folder to run in, holding a copy of recipes/ (recipes name their data relative to the
/// folder runner runs in), an empty Hugging Face cache and runner's model cache.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        copy_dir(&root().join("recipes"), &dir.path().join("recipes"));
        std::fs::create_dir_all(dir.path().join("hub")).unwrap();
        Sandbox { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn hub(&self) -> PathBuf {
        self.path().join("hub")
    }

    fn runner(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(args)
            .current_dir(self.path())
            .env("NO_COLOR", "1")
            .env("HF_HUB_CACHE", self.hub())
            .env("HF_HUB_OFFLINE", "1")
            .env("RUNNER_MODEL_CACHE", self.path().join("models"))
            // A failed smoke run keeps its work folder: inside the sandbox, not in /tmp.
            .env("TMPDIR", self.path())
            .output()
            .expect("runner starts")
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn shipped_recipes() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join("recipes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    v.sort();
    v
}

/// Runs a smoke run that must pass; prints its time.
fn smoke_passes(sb: &Sandbox, recipe: &str, extra: &[&str]) -> String {
    let start = Instant::now();
    let mut args = vec!["run", recipe, "--smoke"];
    args.extend_from_slice(extra);
    let out = sb.runner(&args);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "{recipe} --smoke failed:\n{stdout}\n{stderr}"
    );
    eprintln!("{recipe} --smoke: {:.1} s", start.elapsed().as_secs_f64());
    for needed in [
        "smoke run of ",
        "checked: adapter_config.json names the recipe's target modules",
        "checked: the adapter loads back into the tiny model",
        "not checked by a smoke run: the real model's memory and speed",
        "smoke run passed",
    ] {
        assert!(
            stdout.contains(needed),
            "{recipe}: no `{needed}` in:\n{stdout}"
        );
    }
    // The data stage's own summary (stderr): 32 rows of each dataset were read.
    assert!(
        stderr.contains(": 32 rows from 1 file(s)"),
        "{recipe}:\n{stderr}"
    );
    stdout
}

const ALL_LINEAR: [&str; 7] = [
    "down_proj",
    "gate_proj",
    "k_proj",
    "o_proj",
    "q_proj",
    "up_proj",
    "v_proj",
];

/// Checks, apart from the smoke run's own check, that `out` holds an adapter naming `targets`
/// that loads into the tiny model run.json names.
fn adapter_loads_back(out: &Path, targets: &[&str]) {
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        config["target_modules"],
        serde_json::json!(targets),
        "{}",
        out.display()
    );
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let base = manifest["plan"]["model"]["base_model"].as_str().unwrap();
    let mut model = runner_model::load::load_folder(
        Path::new(base),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let saved = runner_model::peft::read_config(out).unwrap();
    let adapters =
        runner_model::inject(&mut model, &saved.adapter_plan(Some(out.to_path_buf())), 0).unwrap();
    let mut leaves: Vec<&str> = adapters
        .modules
        .iter()
        .map(|m| m.rsplit('.').next().unwrap())
        .collect();
    leaves.sort();
    leaves.dedup();
    assert_eq!(leaves, targets);
    assert_eq!(
        adapters.modules.len(),
        targets.len() * model.cfg.num_hidden_layers
    );
}

/// Every recipe under recipes/ smoke-trains with nothing downloaded: the model, tokenizer and
/// hub datasets are substituted and each substitution is said; the adapter loads back and
/// names the recipe's targets (every shipped recipe sets `lora_target_linear`).
#[test]
fn issue_19_every_shipped_recipe_smoke_trains() {
    let sb = Sandbox::new();
    let recipes = shipped_recipes();
    assert!(recipes.len() >= 4, "{recipes:?}");
    for name in &recipes {
        let recipe = format!("recipes/{name}");
        let text = std::fs::read_to_string(root().join(&recipe)).unwrap();
        let builtin = text.contains("base_model: builtin:");
        if name == "tiny-smoke.yaml" {
            // Without output_dir the outputs go to a temporary folder, removed afterwards.
            let stdout = smoke_passes(&sb, &recipe, &[]);
            let line = stdout.lines().find(|l| l.contains("outputs:")).unwrap();
            let tmp = line.split_whitespace().nth(1).unwrap();
            assert!(line.contains("removed after"), "{line}");
            assert!(!Path::new(tmp).exists(), "{tmp} was not removed");
            assert!(
                !sb.path().join("outputs/tiny-smoke").exists(),
                "the recipe's own output_dir was written"
            );
            continue;
        }
        let out = sb.path().join(format!("out-{name}"));
        let set_out = format!("output_dir={}", out.display());
        let stdout = smoke_passes(&sb, &recipe, &["--set", &set_out]);
        if !builtin {
            for said in [
                "config.json not on this machine",
                "not on this machine: runner's built-in byte-level tokenizer",
            ] {
                assert!(stdout.contains(said), "{name}: no `{said}` in:\n{stdout}");
            }
        }
        if text.contains("alpaca_2k_test") || text.contains("alpaca_messages_2k_test") {
            assert!(
                stdout.contains("is not on this machine: 32 generated rows in its format"),
                "{stdout}"
            );
        }
        adapter_loads_back(&out, &ALL_LINEAR);
    }
}

/// Writes a snapshot of `repo` (`models--…` or `datasets--…`) into the hub cache `hub` and
/// returns its folder.
fn snapshot(hub: &Path, folder: &str) -> PathBuf {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = hub.join(folder);
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    snap
}

/// The config.json of Llama-3-8B-Instruct (as published; only its text matters here).
const LLAMA3_CONFIG: &str = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "max_position_embeddings": 8192,
  "tie_word_embeddings": false, "hidden_act": "silu", "attention_bias": false,
  "bos_token_id": 128000, "eos_token_id": 128009, "torch_dtype": "bfloat16"}"#;

/// A hub model snapshot holding `config` and a small tokenizer (no weights: a smoke run
/// never reads them).
fn hub_model(sb: &Sandbox, repo: &str, config: &str) -> PathBuf {
    let dir = snapshot(&sb.hub(), &format!("models--{}", repo.replace('/', "--")));
    std::fs::write(dir.join("config.json"), config).unwrap();
    runner_data::testing::write_tiny_tokenizer(&dir, true).unwrap();
    dir
}

/// A hub dataset snapshot with 50 rows made by `row(i)` in `file`.
fn hub_dataset(sb: &Sandbox, repo: &str, file: &str, row: impl Fn(usize) -> Value) -> PathBuf {
    let dir = snapshot(&sb.hub(), &format!("datasets--{}", repo.replace('/', "--")));
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let rows: String = (0..50).map(|i| row(i).to_string() + "\n").collect();
    std::fs::write(&path, rows).unwrap();
    path
}

/// Runs `recipe --smoke` keeping its outputs and checks that it used the model's config, the
/// tokenizer and the data file given, and read 32 rows of it.
fn smoke_uses(sb: &Sandbox, recipe: &str, config: &Path, tokenizer: &Path, data: &Path) -> Value {
    let out = sb.path().join("out");
    let set_out = format!("output_dir={}", out.display());
    let stdout = smoke_passes(sb, recipe, &["--set", &set_out]);
    let model_line = stdout.lines().find(|l| l.contains("model:")).unwrap();
    assert!(
        model_line.contains(&format!("(from {}):", config.display())),
        "{model_line}"
    );
    assert!(
        stdout.contains(&format!("tokenizer: the recipe's ({}", tokenizer.display())),
        "{stdout}"
    );
    assert!(stdout.contains("its first 32 rows"), "{stdout}");
    assert!(!stdout.contains("not on this machine"), "{stdout}");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let data_file = &manifest["inputs"]["data"][0]["files"][0]["path"];
    assert_eq!(Path::new(data_file.as_str().unwrap()), data);
    let tok_path = manifest["inputs"]["tokenizer"]["path"].as_str().unwrap();
    assert_eq!(Path::new(tok_path), tokenizer);
    assert_eq!(manifest["outcome"]["steps"], 4);
    adapter_loads_back(&out, &ALL_LINEAR);
    let tiny = manifest["plan"]["model"]["base_model"].as_str().unwrap();
    let tiny: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(tiny).join("config.json")).unwrap(),
    )
    .unwrap();
    eprintln!("{recipe}: tiny config {tiny}");
    assert_eq!(
        manifest["plan"]["data"]["datasets"][0]["path"],
        data_path_of(recipe)
    );
    tiny
}

/// The dataset path a shipped recipe names.
fn data_path_of(recipe: &str) -> &'static str {
    match recipe {
        "recipes/mistral-qlora.yaml" => "mhenrichsen/alpaca_2k_test",
        "recipes/llama3-lora.yaml" => "fozziethebeat/alpaca_messages_2k_test",
        _ => "recipes/data/smoke-chat.jsonl",
    }
}

/// Mistral with its config.json, tokenizer and hub dataset in the cache: the tiny model
/// follows the real config (Mistral, its sliding window shrunk, its 32000-id vocabulary), the
/// QLoRA settings are the recipe's, and the first 32 rows of the real data train.
#[test]
fn issue_19_mistral_smoke_uses_the_config_tokenizer_and_data_when_present() {
    let sb = Sandbox::new();
    let fixture = root().join("crates/cli/tests/fixtures/hub-config-only");
    let snapshots = fixture.join("models--mistralai--Mistral-7B-v0.1/snapshots");
    let config_file = std::fs::read_dir(snapshots)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path()
        .join("config.json");
    let model = hub_model(
        &sb,
        "mistralai/Mistral-7B-v0.1",
        &std::fs::read_to_string(config_file).unwrap(),
    );
    let data = hub_dataset(&sb, "mhenrichsen/alpaca_2k_test", "train.jsonl", |i| {
        serde_json::json!({
            "instruction": format!("Name the number after {i}."),
            "input": "",
            "output": format!("The number after {i} is {}.", i + 1),
        })
    });
    let tiny = smoke_uses(
        &sb,
        "recipes/mistral-qlora.yaml",
        &model.join("config.json"),
        &model.join("tokenizer.json"),
        &data,
    );
    assert_eq!(tiny["architectures"][0], "MistralForCausalLM");
    assert_eq!(tiny["vocab_size"], 32000);
    assert_eq!(tiny["sliding_window"], 32);
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(sb.path().join("out/run.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["plan"]["adapter"]["base_quant"], "nf4");
    assert_eq!(manifest["plan"]["adapter"]["r"], 32);
}

/// Llama 3 with its config.json, tokenizer and hub dataset (a `messages` chat set in a `data/`
/// folder) in the cache.
#[test]
fn issue_19_llama3_smoke_uses_the_config_tokenizer_and_data_when_present() {
    let sb = Sandbox::new();
    let model = hub_model(&sb, "NousResearch/Meta-Llama-3-8B-Instruct", LLAMA3_CONFIG);
    let data = hub_dataset(
        &sb,
        "fozziethebeat/alpaca_messages_2k_test",
        "data/train-00000-of-00001.jsonl",
        |i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("Name the number after {i}.")},
                {"role": "assistant", "content": format!("The number after {i} is {}.", i + 1)},
            ]})
        },
    );
    let tiny = smoke_uses(
        &sb,
        "recipes/llama3-lora.yaml",
        &model.join("config.json"),
        &model.join("tokenizer.json"),
        &data,
    );
    assert_eq!(tiny["architectures"][0], "LlamaForCausalLM");
    assert_eq!(tiny["vocab_size"], 128256);
    assert_eq!(tiny["rope_theta"], 500000.0);
}

/// SmolLM2 with its GGUF where the recipe names it (scripts/fetch-smollm2.sh fetches it): the
/// tiny model follows the GGUF's configuration (Llama, tied embeddings, 49152 ids) and the
/// tokenizer and chat template are the GGUF's.
#[test]
fn issue_19_smollm2_smoke_uses_the_gguf_when_present() {
    let sb = Sandbox::new();
    let gguf = runner_data::testing::smollm2_gguf().unwrap_or_else(|e| panic!("{e}"));
    let at = sb
        .path()
        .join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&gguf, &at).unwrap();
    let rel = Path::new(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let tiny = smoke_uses(
        &sb,
        "recipes/smollm2-lora.yaml",
        rel,
        rel,
        Path::new("recipes/data/smoke-chat.jsonl"),
    );
    assert_eq!(tiny["vocab_size"], 49152);
    assert_eq!(tiny["tie_word_embeddings"], true);
}

/// The text of the last `error:` line a run printed.
fn error_line(out: &Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(
        !out.status.success(),
        "expected a failure:\n{stdout}\n{stderr}"
    );
    stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"))
        .to_string()
}

/// A dataset field the format cannot read fails the smoke run with the real run's error.
#[test]
fn issue_19_broken_dataset_field_fails_the_smoke_run_as_the_real_run() {
    let sb = Sandbox::new();
    let broken = ["--set", "datasets[0].field_messages=conversations"];
    let real =
        error_line(&sb.runner(&[&["run", "recipes/tiny-smoke.yaml"][..], &broken[..]].concat()));
    let smoke = error_line(
        &sb.runner(
            &[
                &["run", "recipes/tiny-smoke.yaml", "--smoke"][..],
                &broken[..],
            ]
            .concat(),
        ),
    );
    assert!(real.contains("conversations"), "{real}");
    assert_eq!(smoke, real);
}

/// A target module that matches nothing fails the smoke run with the real run's error.
#[test]
fn issue_19_target_module_matching_nothing_fails_the_smoke_run_as_the_real_run() {
    let sb = Sandbox::new();
    let broken = [
        "--set",
        "lora_target_linear=false",
        "--set",
        "lora_target_modules=[q_proj, qkv_proj]",
    ];
    let real =
        error_line(&sb.runner(&[&["run", "recipes/tiny-smoke.yaml"][..], &broken[..]].concat()));
    let smoke = error_line(
        &sb.runner(
            &[
                &["run", "recipes/tiny-smoke.yaml", "--smoke"][..],
                &broken[..],
            ]
            .concat(),
        ),
    );
    assert!(real.contains("qkv_proj"), "{real}");
    assert_eq!(smoke, real);
}

/// An export type the architecture cannot take (a GGUF of a Qwen3) fails the smoke run with the
/// real run's error, after the same training.
#[test]
fn issue_19_export_the_architecture_cannot_take_fails_the_smoke_run_as_the_real_run() {
    let args = [
        "--set",
        "base_model=builtin:tiny-qwen3",
        "--set",
        "export_gguf=f16",
        "--set",
        "max_steps=2",
        // Relative, so both runs name the same file.
        "--set",
        "output_dir=out",
    ];
    let real = error_line(
        &Sandbox::new().runner(&[&["run", "recipes/tiny-smoke.yaml"][..], &args[..]].concat()),
    );
    let smoke = error_line(
        &Sandbox::new().runner(
            &[
                &["run", "recipes/tiny-smoke.yaml", "--smoke"][..],
                &args[..],
            ]
            .concat(),
        ),
    );
    assert!(real.contains("Qwen3"), "{real}");
    assert_eq!(smoke, real);
}
