//! Issue 18: the pipeline runs as a library, without the CLI: the tiny smoke recipe through
//! every stage, its manifest, and a second run from the manifest's recipe giving the same
//! adapter bytes.

use runner_pipeline::manifest::Manifest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(loaded: &runner_recipe::Loaded) -> runner_pipeline::RunReport {
    let quiet = |_: &str| {};
    runner_pipeline::run(
        loaded,
        runner_pipeline::RunOptions {
            recipe_label: "recipes/tiny-smoke.yaml",
            device: candle_core::Device::Cpu,
            comm: None,
            stop: Arc::new(AtomicBool::new(false)),
            progress_bar: false,
            report: &quiet,
            folder: Default::default(),
            skip_bad_rows: false,
        },
    )
    .expect("the pipeline runs")
}

#[test]
fn issue_18_the_pipeline_runs_without_the_cli_and_records_its_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    // SAFETY: the only test in this binary; set before any thread reads the environment.
    unsafe {
        std::env::set_var("RUNNER_MODEL_CACHE", tmp.path().join("models"));
        std::env::set_var("RUNNER_HASH_CACHE", tmp.path().join("hashes.json"));
    }
    let data = root().join("recipes/data/smoke-chat.jsonl");
    let text = std::fs::read_to_string(root().join("recipes/tiny-smoke.yaml")).unwrap();
    let overrides = vec![
        format!("output_dir={}", tmp.path().join("a").display()),
        format!(
            "dataset_prepared_path={}",
            tmp.path().join("prep").display()
        ),
        format!("datasets[0].path={}", data.display()),
        "max_steps=2".to_string(),
        "save_steps=10".to_string(),
        "eval_steps=10".to_string(),
    ];
    let loaded = runner_recipe::load_str("recipes/tiny-smoke.yaml", &text, &overrides).unwrap();
    let report = run(&loaded);
    assert!(report.writer);
    assert_eq!(report.outcome.steps, 2);

    let m = Manifest::read(&tmp.path().join("a")).unwrap();
    // Compared as JSON text: serde_json's f64 parsing may differ from the written value in the
    // last bit (tokens/s), so both sides go through the same write and read.
    let roundtrip: Manifest =
        serde_json::from_str(&serde_json::to_string(&report.manifest).unwrap()).unwrap();
    assert_eq!(m, roundtrip, "run.json is the manifest returned");
    assert_eq!(m.inputs.data.len(), 1);
    let f = &m.inputs.data[0].files[0];
    assert_eq!(f.path, data);
    assert_eq!(
        f.blake3,
        blake3::hash(&std::fs::read(&data).unwrap())
            .to_hex()
            .as_str()
    );
    assert_eq!(m.inputs.tokenizer.path, Path::new("builtin:tiny-llama"));
    // The built-in model's files, each hashed.
    let model_files: Vec<String> = m
        .inputs
        .model_files
        .iter()
        .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(model_files, ["config.json", "model.safetensors"]);
    assert!(
        m.inputs.chat_template.is_some(),
        "the smoke recipe trains with chatml"
    );
    assert_eq!(
        m.prepared_data.as_ref().unwrap().cache_key.len(),
        32,
        "the prepared-data cache key"
    );
    assert_eq!((m.seed, m.world_size, m.device.as_str()), (42, 1, "Cpu"));

    // The recorded recipe, rerun into another folder, reads the same inputs and writes the
    // same adapter bytes.
    let again = runner_pipeline::reproduce::recorded_recipe(&m, &tmp.path().join("b")).unwrap();
    assert!(
        runner_pipeline::reproduce::input_differences(&m, &again.plan)
            .unwrap()
            .is_empty()
    );
    let report_b = run(&again);
    let cmp = runner_pipeline::reproduce::compare_adapters(
        &tmp.path().join("a/adapter_model.safetensors"),
        &tmp.path().join("b/adapter_model.safetensors"),
    )
    .unwrap();
    assert!(cmp.identical, "{cmp:?}");
    assert_eq!(report_b.manifest.inputs, m.inputs);
    // The diff names the output folder, timings, and the files that record them; not the
    // inputs, the plan's other keys or the adapter.
    let d = runner_pipeline::reproduce::diff(&m, &report_b.manifest).unwrap();
    assert!(
        d.iter().any(|(_, k, _, _)| k == "train.output_dir"),
        "{d:?}"
    );
    for (s, k, _, _) in &d {
        let timing = s == "outcome" && (k == "seconds" || k == "tokens_per_second");
        let logs = s == "files" && (k == "metrics.jsonl" || k == "loss.svg");
        let out = k == "train.output_dir" || (s == "recipe" && k == "overrides[0]");
        assert!(timing || logs || out, "{s} {k}");
    }
}
