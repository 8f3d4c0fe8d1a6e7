//! Issue 17, groups 1–4, end to end on the tiny smoke recipe: an output folder belongs to one
//! run, a partial run's adapter is refused until a checkpoint is named, resume is exact or
//! refused, temporaries of interrupted runs are cleaned, and SIGTERM is honoured in every
//! stage. The kill-at-every-operation suite is faults.rs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A scratch folder for one test: the run's output in `out`, prepared data beside it.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("runner-i17-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn out(&self) -> PathBuf {
        self.0.join("out")
    }
    /// The arguments of `runner run` on the smoke recipe (no evaluation set) with `sets` after
    /// the folder overrides, and `flags`.
    fn args(&self, sets: &[&str], flags: &[&str]) -> Vec<String> {
        let base = [
            format!("output_dir={}", self.out().display()),
            format!(
                "dataset_prepared_path={}",
                self.0.join("prepared").display()
            ),
            "eval_steps=".into(),
            "val_set_size=0".into(),
        ];
        let mut args: Vec<String> = vec!["run".into(), "recipes/tiny-smoke.yaml".into()];
        for s in base.iter().map(String::as_str).chain(sets.iter().copied()) {
            args.push("--set".into());
            args.push(s.into());
        }
        args.extend(flags.iter().map(|f| f.to_string()));
        args
    }
    fn run(&self, sets: &[&str], flags: &[&str]) -> Output {
        let args = self.args(sets, flags);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        runner(&args)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn status(dir: &Path) -> String {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
    m["status"].as_str().unwrap_or("absent").to_string()
}

/// Training records of metrics.jsonl as (step, loss bits).
fn losses(dir: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()?.to_bits())))
        .collect()
}

fn checkpoints(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    v.sort();
    v
}

/// Every runner temporary under `dir`.
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

#[test]
fn issue_17_group_1_an_output_folder_belongs_to_one_run() {
    let s = Scratch::new("g1");
    let out = s.out();
    let a = s.run(&["max_steps=6", "save_steps=2", "save_total_limit=2"], &[]);
    assert_eq!(a.status.code(), Some(0), "{}", stderr(&a));
    assert_eq!(status(&out), "complete");

    // Another run in the same folder is refused, naming what differs.
    let b = ["max_steps=4", "save_steps=1", "save_total_limit=2"];
    let r = s.run(&b, &[]);
    let err = stderr(&r);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("holds a complete run (6 steps)"), "{err}");
    assert!(err.contains("`train.max_steps`: 6 → 4"), "{err}");
    assert!(err.contains("--overwrite"), "{err}");
    // auto_resume does not take the old run's checkpoints for this one's.
    let mut b_auto = b.to_vec();
    b_auto.push("auto_resume_from_checkpoints=true");
    let r = s.run(&b_auto, &[]);
    let err = stderr(&r);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(
        err.contains("changes what is trained") && err.contains("`train.max_steps`: 6 → 4"),
        "{err}"
    );
    assert_eq!(losses(&out).last().map(|l| l.0), Some(6), "nothing changed");

    // --overwrite clears the folder: only the new run's checkpoints and records remain, and
    // its adapter is its own last step's.
    let r = s.run(&b, &["--overwrite"]);
    let err = stderr(&r);
    assert_eq!(r.status.code(), Some(0), "{err}");
    assert!(err.contains("--overwrite: clearing"), "{err}");
    assert_eq!(checkpoints(&out), ["checkpoint-3", "checkpoint-4"]);
    let steps: Vec<u64> = losses(&out).iter().map(|l| l.0).collect();
    assert_eq!(steps, [1, 4], "logging_steps 5: step 1 and the last");
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(out.join("checkpoint-4/adapter_model.safetensors")).unwrap()
    );
    assert_eq!(status(&out), "complete");
}

#[test]
fn issue_17_group_1_a_partial_adapter_is_refused_until_a_checkpoint_is_named() {
    let s = Scratch::new("g1p");
    let out = s.out();
    // The loss watchdog stops the run after its first step: a partial run, as Ctrl-C leaves.
    let r = s.run(
        &[
            "max_steps=6",
            "loss_watchdog_threshold=0.0001",
            "loss_watchdog_patience=1",
        ],
        &[],
    );
    assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
    assert_eq!(status(&out), "partial");
    let set_out = format!("output_dir={}", out.display());
    let ckpt = out.join("checkpoint-1");
    let ckpt_s = ckpt.display().to_string();
    let gguf = s.0.join("m.gguf").display().to_string();
    let out_s = out.display().to_string();
    let merged = s.0.join("merged").display().to_string();
    let refused: [Vec<&str>; 5] = [
        // The adapter generate finds in output_dir by itself, and the folder given explicitly.
        vec![
            "generate",
            "--set",
            &set_out,
            "--prompt",
            "1+1=",
            "--max-new-tokens",
            "2",
        ],
        vec![
            "generate",
            "--set",
            &set_out,
            "--prompt",
            "1",
            "--adapter",
            &out_s,
        ],
        vec!["export-gguf", "--set", &set_out, "-o", &gguf],
        vec!["eval", "--set", &set_out, "--adapter", &out_s, "--train"],
        vec![
            "merge",
            "--base",
            "builtin:tiny-llama",
            "--adapter",
            &out_s,
            "-o",
            &merged,
        ],
    ];
    for args in &refused {
        let r = runner(args);
        let err = stderr(&r);
        assert_eq!(r.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("stopped at step 1 (watchdog)")
                && err.contains(&format!("--adapter {ckpt_s}")),
            "{args:?}: {err}"
        );
    }
    assert!(!Path::new(&gguf).exists() && !Path::new(&merged).exists());
    // Naming the checkpoint is the way to use that state.
    let r = runner(&[
        "generate",
        "--set",
        &set_out,
        "--prompt",
        "1+1=",
        "--max-new-tokens",
        "2",
        "--adapter",
        &ckpt_s,
    ]);
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    assert!(stderr(&r).contains("checkpoint-1"), "{}", stderr(&r));
}

#[test]
fn issue_17_group_2_resume_is_exact_or_refused() {
    let s = Scratch::new("g2");
    let out = s.out();
    let sets = ["max_steps=6", "save_steps=3", "logging_steps=2"];
    let r = s.run(&sets, &[]);
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    let whole = losses(&out);
    let adapter = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let resume = format!(
        "resume_from_checkpoint={}",
        out.join("checkpoint-3").display()
    );

    // A change to what is trained is refused, each difference named.
    for (change, named) in [
        ("max_steps=8", "`train.max_steps`: 6 → 8"),
        ("learning_rate=0.5", "`train.learning_rate`: 0.005 → 0.5"),
        ("sequence_len=128", "`data.sequence_len`: 256 → 128"),
        ("lora_r=4", "`adapter.r`: 8 → 4"),
    ] {
        let mut changed = sets.to_vec();
        changed.extend([change, resume.as_str()]);
        let r = s.run(&changed, &[]);
        let err = stderr(&r);
        assert_eq!(r.status.code(), Some(1), "{change}: {err}");
        assert!(
            err.contains(named) && err.contains("--allow-changed"),
            "{change}: {err}"
        );
    }

    // The same recipe resumes from step 3 (the window of the step-4 log line spans steps 3
    // and 4): the same records, none twice, and the same adapter.
    let mut same = sets.to_vec();
    same.push(&resume);
    let r = s.run(&same, &[]);
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    assert_eq!(losses(&out), whole, "metrics continue bit for bit");
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        adapter
    );

    // --allow-changed continues with the new values, saying so.
    let mut changed = sets.to_vec();
    changed.extend(["max_steps=8", resume.as_str()]);
    let r = s.run(&changed, &["--allow-changed"]);
    let err = stderr(&r);
    assert_eq!(r.status.code(), Some(0), "{err}");
    assert!(
        err.contains("--allow-changed: resuming") && err.contains("`train.max_steps`: 6 → 8"),
        "{err}"
    );
    let steps: Vec<u64> = losses(&out).iter().map(|l| l.0).collect();
    assert_eq!(steps, [1, 2, 4, 6, 8]);

    // Even so, a checkpoint past the new schedule's end is not passed off as its result.
    let mut shorter = sets.to_vec();
    shorter.extend(["max_steps=2", resume.as_str()]);
    let r = s.run(&shorter, &["--allow-changed"]);
    let err = stderr(&r);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(
        err.contains("past the 2 steps of this run's schedule"),
        "{err}"
    );
}

#[test]
fn issue_17_group_3_a_run_removes_what_interrupted_runs_left() {
    let s = Scratch::new("g3");
    let out = s.out();
    let sets = [
        "max_steps=4",
        "save_steps=2",
        "auto_resume_from_checkpoints=true",
    ];
    let r = s.run(&sets, &[]);
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    let adapter = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    // What kills leave: a temporary of the final export, a checkpoint being written, one
    // being deleted, and a file of a merged folder being written.
    std::fs::write(out.join(".adapter_model.safetensors.tmp-999999-0"), b"half").unwrap();
    std::fs::create_dir_all(out.join(".tmp-checkpoint-6-999999")).unwrap();
    std::fs::create_dir_all(out.join(".checkpoint-2.trash-999999")).unwrap();
    std::fs::create_dir_all(out.join("merged")).unwrap();
    std::fs::write(out.join("merged/.model.safetensors.tmp-999999-3"), b"x").unwrap();
    let r = s.run(&sets, &[]);
    let err = stderr(&r);
    assert_eq!(r.status.code(), Some(0), "{err}");
    assert!(err.contains("removed 4 temporary file(s)"), "{err}");
    assert_eq!(temporaries(&out), Vec::<PathBuf>::new());
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        adapter
    );
}

#[test]
fn issue_17_group_4_sigterm_is_honoured_in_every_stage() {
    for stage in ["prepare_data", "build_model", "export"] {
        let s = Scratch::new(&format!("g4-{stage}"));
        let out = s.out();
        let sets = ["max_steps=2", "auto_resume_from_checkpoints=true"];
        let mut child = Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(s.args(&sets, &[]))
            .current_dir(root())
            .env("RUNNER_TEST_HOLD_STAGE", stage)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("runner starts");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        let mut line = String::new();
        while err.read_line(&mut line).unwrap_or(0) > 0 {
            seen.push_str(&line);
            if line.starts_with("holding in stage") {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                break;
            }
            line.clear();
        }
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut rest);
        seen.push_str(&rest);
        let code = child.wait().unwrap().code();
        assert_eq!(code, Some(130), "{stage}: {seen}");
        assert!(
            seen.contains(&format!("interrupted during {stage}: stopped now")),
            "{stage}: {seen}"
        );
        if out.exists() {
            assert_eq!(temporaries(&out), Vec::<PathBuf>::new(), "{stage}");
        }
        if stage == "export" {
            // Trained but not exported: not complete, and the next run finishes it.
            assert_eq!(status(&out), "running");
            let r = s.run(&sets, &[]);
            assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
            assert_eq!(status(&out), "complete");
        } else {
            assert!(
                !out.join("run.json").exists(),
                "{stage}: nothing written yet"
            );
        }
    }
}
