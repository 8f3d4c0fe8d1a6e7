//! Issue 15: `base_model` and dataset `path` as hub ids, end to end through the `runner` binary
//! against a Hub on the loopback interface (crates/hub/tests/fixture): `run --dry-run` on a
//! bare cache downloads the configuration and tokenizer, offline it names what to fetch,
//! `runner fetch` downloads everything and prints the commits, and a run reads the tokenizer
//! and the weights from the one snapshot it pins.

#[path = "../../hub/tests/fixture/mod.rs"]
mod fixture;

use fixture::{File, Hub, Repo, State, file};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MISTRAL_COMMIT: &str = "7231864981174d9bee8c7687c24c8344414eae6b";
const DATA_COMMIT: &str = "3d2aa8d4b9c4d9a4c2a6b1c4e3f2a1b0c9d8e7f6";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `runner ARGS` in the repository root with the Hub settings given and no others.
fn runner(args: &[&str], cache: &Path, endpoint: &str, offline: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runner"));
    cmd.args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .env("HF_HUB_CACHE", cache)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_TOKEN_PATH", cache.join("no-token"))
        .env_remove("HF_TOKEN")
        .env_remove("HUGGING_FACE_HUB_TOKEN")
        .env_remove("TRANSFORMERS_OFFLINE");
    if offline {
        cmd.env("HF_HUB_OFFLINE", "1");
    } else {
        cmd.env_remove("HF_HUB_OFFLINE");
    }
    cmd.output().expect("runner starts")
}

/// Mistral-7B-v0.1 as the Hub lists it: its real config.json, a tokenizer, two (tiny) shards
/// with their index, and the pickle copies that must never be fetched.
fn mistral() -> Repo {
    let snaps = root().join(
        "crates/cli/tests/fixtures/hub-config-only/models--mistralai--Mistral-7B-v0.1/snapshots",
    );
    let snap = std::fs::read_dir(snaps)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let config = std::fs::read(snap.join("config.json")).unwrap();
    let index = br#"{"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#;
    Repo {
        kind: "models",
        id: "mistralai/Mistral-7B-v0.1".into(),
        revisions: vec![(
            "main".into(),
            MISTRAL_COMMIT.into(),
            vec![
                file("config.json", &config, false),
                file("generation_config.json", b"{}", false),
                file("tokenizer.json", br#"{"version":"1.0"}"#, false),
                file("tokenizer_config.json", b"{}", false),
                file("tokenizer.model", &[7u8; 5000], true),
                file("model.safetensors.index.json", index, false),
                file("model-00001-of-00002.safetensors", &[1u8; 40_000], true),
                file("model-00002-of-00002.safetensors", &[2u8; 30_000], true),
                file("pytorch_model-00001-of-00002.bin", &[3u8; 100], true),
                file("pytorch_model.bin.index.json", b"{}", false),
            ],
        )],
        gated: false,
    }
}

fn alpaca() -> Repo {
    Repo {
        kind: "datasets",
        id: "mhenrichsen/alpaca_2k_test".into(),
        revisions: vec![(
            "main".into(),
            DATA_COMMIT.into(),
            vec![
                file("README.md", b"# alpaca", false),
                file(
                    "data/train-00000-of-00001.jsonl",
                    b"{\"instruction\":\"Say hi\",\"input\":\"\",\"output\":\"hi\"}\n",
                    true,
                ),
            ],
        )],
        gated: false,
    }
}

#[test]
fn issue_15_dry_run_on_a_bare_cache_downloads_config_and_tokenizer() {
    let hub = Hub::start(State {
        repos: vec![mistral(), alpaca()],
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let args = [
        "run",
        "recipes/mistral-qlora.yaml",
        "--dry-run",
        "--plan-device",
        "h200",
    ];
    let out = runner(&args, cache.path(), &hub.url, false);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{err}");
    assert!(stdout.contains("model: MistralForCausalLM"), "{stdout}");
    assert!(
        err.contains("downloaded mistralai/Mistral-7B-v0.1"),
        "{err}"
    );
    let snap = cache
        .path()
        .join("models--mistralai--Mistral-7B-v0.1/snapshots")
        .join(MISTRAL_COMMIT);
    for f in ["config.json", "tokenizer.json", "tokenizer.model"] {
        assert!(snap.join(f).is_file(), "{f}");
    }
    // Configuration only: no weights, no pickles, no data.
    let log = hub.log();
    assert!(
        !log.iter()
            .any(|l| l.contains("safetensors") || l.contains(".bin") || l.contains("datasets")),
        "{log:?}"
    );

    // The second dry run reads the cache: no request.
    let n = hub.log().len();
    let out = runner(&args, cache.path(), &hub.url, false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    assert_eq!(hub.log().len(), n);
}

#[test]
fn issue_15_offline_or_unreachable_says_what_to_fetch_and_how() {
    let cache = tempfile::tempdir().unwrap();
    let args = ["run", "recipes/mistral-qlora.yaml", "--dry-run"];
    let out = runner(&args, cache.path(), "http://127.0.0.1:9", true);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for part in [
        "base_model",
        "mistralai/Mistral-7B-v0.1",
        "HF_HUB_OFFLINE",
        "models--mistralai--Mistral-7B-v0.1",
        "runner fetch RECIPE",
        "huggingface-cli download mistralai/Mistral-7B-v0.1",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }

    // No Hub listening (port 9 on the loopback: discard, nothing there).
    let out = runner(&args, cache.path(), "http://127.0.0.1:9", false);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("could not reach the Hub at http://127.0.0.1:9")
            && err.contains("runner fetch RECIPE")
            && err.contains("HF_HUB_OFFLINE=1"),
        "{err}"
    );
}

#[test]
fn issue_15_fetch_downloads_everything_and_prints_the_commits() {
    let hub = Hub::start(State {
        repos: vec![mistral(), alpaca()],
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let out = runner(
        &["fetch", "recipes/mistral-qlora.yaml"],
        cache.path(),
        &hub.url,
        false,
    );
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{err}");
    assert!(
        stdout.contains(&format!(
            "mistralai/Mistral-7B-v0.1 @ main = {MISTRAL_COMMIT}"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "mhenrichsen/alpaca_2k_test @ main = {DATA_COMMIT}"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("revision_of_model: {MISTRAL_COMMIT}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("datasets[0].revision: {DATA_COMMIT}")),
        "{stdout}"
    );
    let snap = cache
        .path()
        .join("models--mistralai--Mistral-7B-v0.1/snapshots")
        .join(MISTRAL_COMMIT);
    assert!(snap.join("model-00002-of-00002.safetensors").is_file());
    assert!(!snap.join("pytorch_model-00001-of-00002.bin").exists());
    let data = cache
        .path()
        .join("datasets--mhenrichsen--alpaca_2k_test/snapshots")
        .join(DATA_COMMIT)
        .join("data/train-00000-of-00001.jsonl");
    assert!(data.is_file());

    // Then on a machine without network: the dry run reads the cache.
    let out = runner(
        &[
            "run",
            "recipes/mistral-qlora.yaml",
            "--dry-run",
            "--plan-device",
            "h200",
        ],
        cache.path(),
        "http://127.0.0.1:9",
        true,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
}

/// A real run from a hub id: the built-in tiny Llama's files served by the fixture Hub; the
/// tokenizer and the weights come from the one snapshot the run pins, and run.json says which.
#[test]
fn issue_15_a_run_reads_tokenizer_and_weights_from_one_pinned_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("model");
    let cfg = runner_model::tiny::builtin_config("tiny-llama").unwrap();
    runner_model::tiny::write_tiny(&model_dir, &cfg, 7).unwrap();
    runner_data::tokenizer::TextTokenizer::builtin("tiny-llama")
        .unwrap()
        .save_pretrained(&model_dir)
        .unwrap();
    let mut files: Vec<File> = Vec::new();
    for e in std::fs::read_dir(&model_dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let lfs = name.ends_with(".safetensors");
        files.push(file(&name, &std::fs::read(&p).unwrap(), lfs));
    }
    let commit = "abcdefabcdefabcdefabcdefabcdefabcdefabcd";
    let hub = Hub::start(State {
        repos: vec![Repo {
            kind: "models",
            id: "acme/tiny-llama".into(),
            revisions: vec![("main".into(), commit.into(), files)],
            gated: false,
        }],
        ..Default::default()
    });
    let cache = tmp.path().join("hub");
    let out_dir = tmp.path().join("out");
    let sets = [
        "base_model=acme/tiny-llama".to_string(),
        "max_steps=2".into(),
        format!("output_dir={}", out_dir.display()),
        format!(
            "dataset_prepared_path={}",
            tmp.path().join("prepared").display()
        ),
    ];
    let mut args = vec!["run", "recipes/tiny-smoke.yaml"];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    let out = runner(&args, &cache, &hub.url, false);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("downloaded acme/tiny-llama"), "{err}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("run.json")).unwrap()).unwrap();
    let snap = cache
        .join("models--acme--tiny-llama/snapshots")
        .join(commit);
    assert_eq!(m["plan"]["model"]["revision"], commit, "pinned in the plan");
    assert_eq!(m["inputs"]["model_source"]["commit"], commit);
    let tok = m["inputs"]["tokenizer"]["path"].as_str().unwrap();
    assert!(
        Path::new(tok).starts_with(&snap),
        "the tokenizer from the same snapshot: {tok}"
    );
    let model_files: Vec<&str> = m["inputs"]["model_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        model_files
            .iter()
            .any(|p| Path::new(p) == snap.join("model.safetensors")),
        "{model_files:?}"
    );
}

/// The environment as `huggingface_hub` reads it: `HF_TOKEN` opens a gated repo, `HF_HOME`
/// places the cache at `HF_HOME/hub`, and `revision_of_model` picks the revision.
#[test]
fn issue_15_hf_token_hf_home_and_revision_of_model_are_honoured() {
    let mut repo = mistral();
    repo.gated = true;
    let (_, _, files) = repo.revisions.remove(0);
    repo.revisions = vec![("v2".into(), MISTRAL_COMMIT.into(), files)];
    let hub = Hub::start(State {
        repos: vec![repo],
        token: Some("hf_fixture_token".into()),
        ..Default::default()
    });
    let home = tempfile::tempdir().unwrap();
    let run = |token: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_runner"));
        cmd.args([
            "run",
            "recipes/mistral-qlora.yaml",
            "--dry-run",
            "--plan-device",
            "h200",
            "--set",
            "revision_of_model=v2",
        ])
        .current_dir(root())
        .env("HF_HOME", home.path())
        .env("HF_ENDPOINT", &hub.url)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HUGGINGFACE_HUB_CACHE")
        .env_remove("HF_TOKEN_PATH")
        .env_remove("HUGGING_FACE_HUB_TOKEN")
        .env_remove("HF_HUB_OFFLINE");
        match token {
            Some(t) => cmd.env("HF_TOKEN", t),
            None => cmd.env_remove("HF_TOKEN"),
        };
        cmd.output().expect("runner starts")
    };
    let out = run(None);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("gated") && err.contains("HF_TOKEN") && err.contains("huggingface-cli login"),
        "{err}"
    );
    let out = run(Some("hf_fixture_token"));
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{err}");
    let repo_dir = home.path().join("hub/models--mistralai--Mistral-7B-v0.1");
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/v2")).unwrap(),
        MISTRAL_COMMIT
    );
    assert!(
        repo_dir
            .join("snapshots")
            .join(MISTRAL_COMMIT)
            .join("config.json")
            .is_file()
    );
}

/// Issue 19: a smoke run that can reach the Hub downloads the recipe's own config.json and
/// tokenizer (never the weights or the data) and trains the tiny model with them; offline it
/// says so and substitutes (crates/cli/tests/smoke.rs).
#[test]
fn issue_19_smoke_downloads_the_recipes_config_and_tokenizer() {
    let tok = tempfile::tempdir().unwrap();
    runner_data::testing::write_tiny_tokenizer(tok.path(), true).unwrap();
    let mut repo = mistral();
    let files = &mut repo.revisions[0].2;
    files.retain(|f| !f.name.starts_with("tokenizer"));
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        files.push(file(
            name,
            &std::fs::read(tok.path().join(name)).unwrap(),
            false,
        ));
    }
    let hub = Hub::start(State {
        repos: vec![repo],
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let set_out = format!("output_dir={}", cache.path().join("out").display());
    let args = [
        "run",
        "recipes/mistral-qlora.yaml",
        "--smoke",
        "--set",
        &set_out,
    ];
    let out = runner(&args, cache.path(), &hub.url, false);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{err}");
    let snap = cache
        .path()
        .join("models--mistralai--Mistral-7B-v0.1/snapshots")
        .join(MISTRAL_COMMIT);
    assert!(
        stdout.contains(&format!("tokenizer: the recipe's ({}", snap.display())),
        "{stdout}"
    );
    assert!(!stdout.contains("not fetched"), "{stdout}");
    let log = hub.log();
    assert!(log.iter().any(|l| l.contains("config.json")), "{log:?}");
    assert!(
        !log.iter()
            .any(|l| l.contains("safetensors") || l.contains(".bin") || l.contains("datasets")),
        "{log:?}"
    );
}
