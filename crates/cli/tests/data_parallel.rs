//! Data parallelism on the CPU, end to end through the binary: two ranks (started by
//! `--processes 2`, or by hand with torchrun's variables) train the tiny smoke recipe with the
//! same loss curve, gradient norms and evaluation losses as one process accumulating twice as
//! many micro-batches per step (within f32 summation-order tolerance), and only rank 0 writes.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn runner(args: &[String], env: &[(&str, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
    c.args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .env("RUNNER_DIST_TIMEOUT", "120");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn check(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The smoke recipe for 4 steps with `accum` micro-batches of 2 per rank and step.
fn args(out_dir: &Path, prepared: &Path, accum: usize, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["run", "recipes/tiny-smoke.yaml"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for kv in [
        format!("output_dir={}", out_dir.display()),
        format!("dataset_prepared_path={}", prepared.display()),
        "max_steps=4".into(),
        "micro_batch_size=2".into(),
        format!("gradient_accumulation_steps={accum}"),
        "logging_steps=1".into(),
        "eval_steps=2".into(),
        "save_steps=100".into(),
    ] {
        a.push("--set".into());
        a.push(kv);
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// (step, loss, grad_norm) per logged step.
type TrainCurve = Vec<(u64, f64, f64)>;

/// The training and evaluation (step, eval_loss) curves from metrics.jsonl.
fn curves(dir: &Path) -> (TrainCurve, Vec<(u64, f64)>) {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics.jsonl");
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let step = v["step"].as_u64().unwrap();
        if let Some(l) = v["loss"].as_f64() {
            train.push((step, l, v["grad_norm"].as_f64().unwrap()));
        }
        if let Some(e) = v["eval_loss"].as_f64() {
            eval.push((step, e));
        }
    }
    (train, eval)
}

fn assert_close(what: &str, a: f64, b: f64) {
    assert!(
        (a - b).abs() <= 1e-5 * a.abs().max(1.0),
        "{what}: {a} (one process) vs {b} (two ranks)"
    );
}

#[test]
fn two_ranks_train_like_one_process_with_the_same_global_batch() {
    let tmp = std::env::temp_dir().join(format!("runner-dp-{}", std::process::id()));
    let prepared = tmp.join("prepared");
    let (one, two, manual) = (tmp.join("one"), tmp.join("two"), tmp.join("manual"));

    check(
        &runner(&args(&one, &prepared, 2, &[]), &[])
            .output()
            .unwrap(),
    );
    let launched = runner(&args(&two, &prepared, 1, &["--processes", "2"]), &[])
        .output()
        .unwrap();
    check(&launched);
    let err = String::from_utf8_lossy(&launched.stderr);
    // Rank 0 alone reports: one summary line, not two.
    assert_eq!(err.matches("step 4/4 loss").count(), 1, "{err}");

    // The same binary under a torchrun-style launcher: the variables set by hand.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ranks: Vec<_> = (0..2)
        .map(|r| {
            runner(
                &args(&manual, &prepared, 1, &[]),
                &[
                    ("RANK", r.to_string()),
                    ("WORLD_SIZE", "2".into()),
                    ("LOCAL_RANK", r.to_string()),
                    ("MASTER_ADDR", "127.0.0.1".into()),
                    ("MASTER_PORT", port.to_string()),
                ],
            )
            .spawn()
            .unwrap()
        })
        .collect();
    for r in ranks {
        check(&r.wait_with_output().unwrap());
    }

    let (train1, eval1) = curves(&one);
    for dir in [&two, &manual] {
        let (train2, eval2) = curves(dir);
        assert_eq!(train1.len(), 4);
        assert_eq!(train1.len(), train2.len(), "{}", dir.display());
        for ((s1, l1, g1), (s2, l2, g2)) in train1.iter().zip(&train2) {
            assert_eq!(s1, s2);
            assert_close(&format!("step {s1} loss"), *l1, *l2);
            assert_close(&format!("step {s1} grad_norm"), *g1, *g2);
        }
        assert_eq!(eval1.len(), 2);
        assert_eq!(eval1.len(), eval2.len());
        for ((s1, e1), (_, e2)) in eval1.iter().zip(&eval2) {
            assert_close(&format!("step {s1} eval loss"), *e1, *e2);
        }
        assert!(dir.join("adapter_model.safetensors").exists());
    }
    let _ = std::fs::remove_dir_all(tmp);
}

/// Issue 12: with `lora_dropout > 0` two ranks draw exactly the masks one process draws (they
/// are keyed by the micro-batch's index within the step, not by the rank), so the curves agree
/// as closely as without dropout.
#[test]
fn issue_12_two_ranks_with_dropout_train_like_one_process() {
    let tmp = std::env::temp_dir().join(format!("runner-dp-drop-{}", std::process::id()));
    let prepared = tmp.join("prepared");
    let (one, two) = (tmp.join("one"), tmp.join("two"));
    let drop = ["--set", "lora_dropout=0.2"];
    check(
        &runner(&args(&one, &prepared, 2, &drop), &[])
            .output()
            .unwrap(),
    );
    let mut extra = drop.to_vec();
    extra.extend(["--processes", "2"]);
    check(
        &runner(&args(&two, &prepared, 1, &extra), &[])
            .output()
            .unwrap(),
    );
    let ((train1, _), (train2, _)) = (curves(&one), curves(&two));
    assert_eq!(train1.len(), 4);
    assert_eq!(train1.len(), train2.len());
    for ((s1, l1, g1), (_, l2, g2)) in train1.iter().zip(&train2) {
        assert_close(&format!("step {s1} loss"), *l1, *l2);
        assert_close(&format!("step {s1} grad_norm"), *g1, *g2);
    }
    let _ = std::fs::remove_dir_all(tmp);
}

/// Without the `cuda` feature, `--gpus` is refused before any work, saying how to get a GPU
/// build. (With it, a machine without a driver is covered by runner-kernels' device tests.)
#[cfg(not(feature = "cuda"))]
#[test]
fn gpus_without_a_cuda_build_is_a_clear_error() {
    let out = runner(&["run".into(), "--gpus".into(), "1".into()], &[])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("built without CUDA") && err.contains("--features cuda"),
        "{err}"
    );
}
