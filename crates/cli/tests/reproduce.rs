//! Issue 18: `runner run` writes run.json (output folder and checkpoints); `runner reproduce`
//! reruns from it into a new folder and gets a bit-identical adapter, and refuses, naming the
//! file, when one byte of the data changed; `runner diff` names what differs.

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

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("run.json")).expect("run.json")).unwrap()
}

#[test]
fn issue_18_reproduce_is_bit_identical_and_refuses_changed_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.jsonl");
    std::fs::copy(root().join("recipes/data/smoke-chat.jsonl"), &data).unwrap();
    let run_dir = tmp.path().join("run");
    let sets = [
        format!("output_dir={}", run_dir.display()),
        format!(
            "dataset_prepared_path={}",
            tmp.path().join("prep").display()
        ),
        format!("datasets[0].path={}", data.display()),
        "max_steps=3".into(),
        "save_steps=2".into(),
        "eval_steps=2".into(),
    ];
    let mut args = vec!["run", "recipes/tiny-smoke.yaml"];
    for s in &sets {
        args.extend(["--set", s]);
    }
    let out = runner(&args);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(stdout.contains("run.json"), "{stdout}");

    // The manifest: the data file's hash (computed here independently), every stage timed,
    // the adapter's hash among the files written, and one in the checkpoint too.
    let m = manifest(&run_dir);
    let recorded = &m["inputs"]["data"][0]["files"][0];
    assert_eq!(
        recorded["blake3"].as_str().unwrap(),
        blake3::hash(&std::fs::read(&data).unwrap())
            .to_hex()
            .as_str()
    );
    let stages: Vec<&str> = m["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        [
            "resolve_inputs",
            "prepare_data",
            "build_model",
            "train",
            "export"
        ]
    );
    let adapter_bytes = std::fs::read(run_dir.join("adapter_model.safetensors")).unwrap();
    let adapter = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "adapter_model.safetensors")
        .expect("the adapter is listed");
    assert_eq!(
        adapter["blake3"].as_str().unwrap(),
        blake3::hash(&adapter_bytes).to_hex().as_str()
    );
    assert_eq!(
        m["recipe"]["text"].as_str().unwrap(),
        std::fs::read_to_string(root().join("recipes/tiny-smoke.yaml")).unwrap()
    );
    assert!(!m["runner"]["git_commit"].as_str().unwrap().is_empty());
    assert_eq!(m["inputs"]["model_source"]["kind"], "builtin");
    let ckpt = manifest(&run_dir.join("checkpoint-2"));
    assert_eq!(ckpt["inputs"], m["inputs"]);
    assert!(
        ckpt["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "optimizer.safetensors"),
        "{ckpt}"
    );

    // Reproduce: a new folder, a bit-identical adapter.
    let out = runner(&["reproduce", run_dir.to_str().unwrap()]);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(stdout.contains("bit-identical"), "{stdout}\n{err}");
    let rerun = run_dir.join("reproduce-1");
    assert_eq!(
        std::fs::read(rerun.join("adapter_model.safetensors")).unwrap(),
        adapter_bytes
    );
    // The original is untouched.
    assert_eq!(
        std::fs::read(run_dir.join("adapter_model.safetensors")).unwrap(),
        adapter_bytes
    );

    // Diff: the output folder differs, the inputs and the adapter do not.
    let out = runner(&["diff", run_dir.to_str().unwrap(), rerun.to_str().unwrap()]);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(stdout.contains("train.output_dir"), "{stdout}");
    assert!(!stdout.contains("inputs:"), "{stdout}");
    assert!(!stdout.contains("adapter_model.safetensors"), "{stdout}");

    // One changed byte in the data: refused, the file named, nothing run.
    let mut bytes = std::fs::read(&data).unwrap();
    let i = bytes.iter().position(|b| b.is_ascii_digit()).unwrap();
    bytes[i] = if bytes[i] == b'9' { b'8' } else { bytes[i] + 1 };
    std::fs::write(&data, &bytes).unwrap();
    let out = runner(&["reproduce", run_dir.to_str().unwrap()]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("data file {} changed", data.display())),
        "{err}"
    );
    assert!(err.contains("refusing to reproduce"), "{err}");
    assert!(!run_dir.join("reproduce-2").exists());
}

/// Issue 17: a run made with `--skip-bad-rows` records it, and `reproduce` skips the same rows
/// (without it the rerun would stop at the first bad row).
#[test]
fn issue_17_reproduce_skips_the_bad_rows_the_run_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.jsonl");
    let mut rows = std::fs::read_to_string(root().join("recipes/data/smoke-chat.jsonl")).unwrap();
    rows.push_str("{this line is not JSON\n");
    std::fs::write(&data, rows).unwrap();
    let run_dir = tmp.path().join("run");
    let sets = [
        format!("output_dir={}", run_dir.display()),
        format!(
            "dataset_prepared_path={}",
            tmp.path().join("prep").display()
        ),
        format!("datasets[0].path={}", data.display()),
        "max_steps=2".into(),
    ];
    let mut args = vec!["run", "recipes/tiny-smoke.yaml", "--skip-bad-rows"];
    for s in &sets {
        args.extend(["--set", s]);
    }
    let out = runner(&args);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(manifest(&run_dir)["prepared_data"]["skip_bad_rows"], true);

    let out = runner(&["reproduce", run_dir.to_str().unwrap()]);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{err}");
    assert!(stdout.contains("bit-identical"), "{stdout}\n{err}");
}
