//! Issue 17's fault-injection suite: a run is killed (`RUNNER_FAULT_AT=N`, see
//! `runner_io::fault`) just before each file-system operation of its checkpoint saves
//! (writing, publishing, rotating away an old one) and of its final export (adapter, chart,
//! run.json), in turn, and then run again with `auto_resume_from_checkpoints`. Every such run
//! must finish with the uninterrupted run's adapter, bit for bit, its folder marked complete,
//! metrics without a repeated step, and no temporary file left.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// Exit code of a process ended by the hook (`runner_io::fault::EXIT_CODE`).
const FAULT_EXIT: i32 = 86;

fn run(out: &Path, prepared: &Path, fault_at: Option<u64>, extra: &[String]) -> Output {
    // Three steps, a checkpoint after step 1 and step 2 (rotating step 1's away), then the
    // final adapter: every kind of operation a save and an export make.
    let mut sets = vec![
        format!("output_dir={}", out.display()),
        format!("dataset_prepared_path={}", prepared.display()),
        "max_steps=3".into(),
        "save_steps=2".into(),
        "save_first_step=true".into(),
        "save_total_limit=1".into(),
        "eval_steps=".into(),
        "val_set_size=0".into(),
        "logging_steps=1".into(),
        "auto_resume_from_checkpoints=true".into(),
    ];
    sets.extend(extra.iter().cloned());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runner"));
    cmd.args(["run", "recipes/tiny-smoke.yaml"])
        .current_dir(root())
        .env("NO_COLOR", "1")
        .env_remove("RUNNER_FAULT_AT");
    for s in &sets {
        cmd.args(["--set", s]);
    }
    if let Some(n) = fault_at {
        cmd.env("RUNNER_FAULT_AT", n.to_string());
    }
    cmd.output().expect("runner starts")
}

fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && (name.contains(".tmp-") || name.contains(".trash-")) {
                out.push(e.path());
            } else if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Kills the run `run(out, …, Some(n), kill_sets)` at operation `n` (after `setup(out)`), then
/// resumes it with `auto_resume` and checks the result against `adapter`. Returns the line
/// naming the operation killed, or `None` when `n` is past the last one.
fn kill_and_resume(
    out: &Path,
    prepared: &Path,
    n: u64,
    kill_sets: &[String],
    adapter: &[u8],
) -> Option<String> {
    let first = run(out, prepared, Some(n), kill_sets);
    let err = String::from_utf8_lossy(&first.stderr).into_owned();
    match first.status.code() {
        Some(0) => {
            // N is past the last operation: the run finished untouched.
            assert!(!err.contains("fault injection"), "{err}");
            return None;
        }
        Some(FAULT_EXIT) => {}
        other => panic!("kill {n}: exit {other:?}\n{err}"),
    }
    let ended_before = err
        .lines()
        .find(|l| l.starts_with("fault injection"))
        .unwrap_or_default()
        .to_string();
    let second = run(out, prepared, None, &[]);
    let err2 = String::from_utf8_lossy(&second.stderr);
    assert_eq!(
        second.status.code(),
        Some(0),
        "resume after `{ended_before}`:\n{err2}"
    );
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        adapter,
        "resume after `{ended_before}`: the adapter differs from the uninterrupted run's"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(manifest["status"], "complete", "after `{ended_before}`");
    assert_eq!(
        temporaries(out),
        Vec::<PathBuf>::new(),
        "after `{ended_before}`"
    );
    let steps: Vec<u64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["step"].as_u64())
        .collect();
    assert_eq!(steps, [1, 2, 3], "after `{ended_before}`");
    Some(ended_before)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn issue_17_kill_at_every_file_system_operation_of_a_save_and_the_export_then_resume() {
    let tmp = std::env::temp_dir().join(format!("runner-i17-faults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let prepared = tmp.join("prepared");
    let reference = tmp.join("reference");
    let r = run(&reference, &prepared, None, &["save_total_limit=2".into()]);
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let adapter = std::fs::read(reference.join("adapter_model.safetensors")).unwrap();

    // 1. A fresh run: the saves of steps 1 and 2 (with the rotation of step 1's), the export.
    let mut killed = 0u64;
    for n in 1u64.. {
        assert!(n < 200, "the hook never let the run finish");
        let out = tmp.join(format!("fresh-{n}"));
        match kill_and_resume(&out, &prepared, n, &[], &adapter) {
            Some(_) => killed += 1,
            None => break,
        }
        let _ = std::fs::remove_dir_all(&out);
    }
    // 2. A run resumed from step 1 in its finished folder: it saves step 2 again, replacing
    // that checkpoint (renamed aside, the new one renamed in, the old one removed).
    let from = |out: &Path| {
        vec![
            format!(
                "resume_from_checkpoint={}",
                out.join("checkpoint-1").display()
            ),
            "save_total_limit=2".into(),
            "auto_resume_from_checkpoints=".into(),
        ]
    };
    let mut replacing = 0u64;
    for n in 1u64.. {
        assert!(n < 200, "the hook never let the run finish");
        let out = tmp.join(format!("replace-{n}"));
        copy_dir(&reference, &out);
        match kill_and_resume(&out, &prepared, n, &from(&out), &adapter) {
            // The export's operations were covered above.
            Some(line) if line.contains("checkpoint") => replacing += 1,
            _ => break,
        }
        let _ = std::fs::remove_dir_all(&out);
    }
    eprintln!("{killed} + {replacing} runs killed, each resumed to the reference adapter");
    // Two checkpoint saves (one with a rotation) and the export: well over 20 operations;
    // a replacing save: more than 10.
    assert!(killed >= 20, "only {killed} operations were interrupted");
    assert!(
        replacing >= 10,
        "only {replacing} operations were interrupted"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
