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

/// With the model's config.json and tokenizer and the hub dataset in the cache, the smoke run
/// uses them: the tiny model follows the real config (Mistral's sliding window, its 32000-id
/// vocabulary), the tokenizer is the recipe's, and the first 32 rows of the real data train.
#[test]
fn issue_19_smoke_uses_the_recipes_config_tokenizer_and_data_when_present() {
    let sb = Sandbox::new();
    let hub = sb.hub();
    let model = snapshot(&hub, "models--mistralai--Mistral-7B-v0.1");
    let fixture = root().join("crates/cli/tests/fixtures/hub-config-only");
    let fixture_config =
        std::fs::read_dir(fixture.join("models--mistralai--Mistral-7B-v0.1/snapshots"))
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path()
            .join("config.json");
    std::fs::copy(&fixture_config, model.join("config.json")).unwrap();
    runner_data::testing::write_tiny_tokenizer(&model, true).unwrap();
    let data = snapshot(&hub, "datasets--mhenrichsen--alpaca_2k_test");
    let rows: String = (0..50)
        .map(|i| {
            serde_json::json!({
                "instruction": format!("Name the number after {i}."),
                "input": "",
                "output": format!("The number after {i} is {}.", i + 1),
            })
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(data.join("train.jsonl"), rows).unwrap();

    let out = sb.path().join("out");
    let set_out = format!("output_dir={}", out.display());
    let stdout = smoke_passes(&sb, "recipes/mistral-qlora.yaml", &["--set", &set_out]);
    let model_line = stdout.lines().find(|l| l.contains("model:")).unwrap();
    assert!(
        model_line.contains(&format!("from {}", model.join("config.json").display()))
            && model_line.contains("MistralForCausalLM")
            && model_line.contains("vocab 32000")
            && model_line.contains("sliding window 32")
            && model_line.contains("sliding window 4096 → 32"),
        "{model_line}"
    );
    assert!(
        stdout.contains(&format!("tokenizer: the recipe's ({}", model.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("datasets[0] mhenrichsen/alpaca_2k_test: its first 32 rows"),
        "{stdout}"
    );
    assert!(!stdout.contains("not on this machine"), "{stdout}");

    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let data_file = manifest["inputs"]["data"][0]["files"][0]["path"]
        .as_str()
        .unwrap();
    assert_eq!(Path::new(data_file), data.join("train.jsonl"));
    let tok_path = manifest["inputs"]["tokenizer"]["path"].as_str().unwrap();
    assert_eq!(Path::new(tok_path), model);
    assert_eq!(manifest["outcome"]["steps"], 4);
    // The QLoRA recipe's own settings are kept: NF4 base, r=32, its seven targets.
    assert_eq!(manifest["plan"]["adapter"]["base_quant"], "nf4");
    assert_eq!(manifest["plan"]["adapter"]["r"], 32);
    adapter_loads_back(&out, &ALL_LINEAR);
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
