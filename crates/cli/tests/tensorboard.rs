//! `use_tensorboard: true` end to end (issue 15, item 4): a run writes one TensorBoard event
//! file under `output_dir/runs/` holding an event per metrics.jsonl line, with valid TFRecord
//! checksums.

use runner_train::tensorboard::masked_crc32c;
use std::path::Path;
use std::process::Command;

#[test]
fn issue_15_use_tensorboard_writes_an_event_per_metrics_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tmp = tempfile::tempdir().expect("temp dir");
    let out_dir = format!("output_dir={}", tmp.path().join("run").display());
    let prep = format!(
        "dataset_prepared_path={}",
        tmp.path().join("prepared").display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["run", "--set", &out_dir, "--set", &prep])
        .args(["--set", "max_steps=2", "--set", "eval_steps=2"])
        .args(["--set", "use_tensorboard=true"])
        .current_dir(&root)
        .env("NO_COLOR", "1")
        .output()
        .expect("runner starts");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = tmp.path().join("run");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl");
    let events: Vec<_> = std::fs::read_dir(run.join("runs"))
        .expect("runs/")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].to_string_lossy().contains("tfevents"));
    let bytes = std::fs::read(&events[0]).expect("event file");
    let (mut at, mut frames) = (0, 0);
    while at < bytes.len() {
        let len_bytes = &bytes[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        let crc = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
        assert_eq!(crc(&bytes[at + 8..at + 12]), masked_crc32c(len_bytes));
        let data = &bytes[at + 12..at + 12 + len];
        assert_eq!(
            crc(&bytes[at + 12 + len..at + 16 + len]),
            masked_crc32c(data)
        );
        at += 16 + len;
        frames += 1;
    }
    assert_eq!(at, bytes.len(), "a cut record");
    // the file-version event, then one per metrics line (training steps 1 and 2, an eval)
    assert_eq!(frames, 1 + metrics.lines().count(), "{metrics}");
    assert_eq!(metrics.lines().count(), 3, "{metrics}");
}
