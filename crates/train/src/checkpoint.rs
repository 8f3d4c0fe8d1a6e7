//! Checkpoint folders written atomically: everything goes into a temporary sibling folder,
//! each file and the folder are synced, then the folder is renamed to `checkpoint-{step}`.
//! A crash or `kill -9` mid-save leaves the previous checkpoints intact and no half folder
//! under a final name; leftovers are temporary folders that the next save removes. Old
//! checkpoints are deleted by renaming them aside first. Each checkpoint records the run it
//! belongs to (`run_id` in `trainer_state.json`), and "newest" and "oldest" are taken among one
//! run's checkpoints by step, never across runs by name.

use crate::error::TrainError;
use std::path::{Path, PathBuf};

const PREFIX: &str = "checkpoint-";
const TMP_PREFIX: &str = ".tmp-checkpoint-";
/// What [`runner_io::atomic::remove_dir`] renames a deleted checkpoint to first.
const TRASH_PREFIX: &str = ".checkpoint-";

/// Writes a checkpoint folder for `step` under `output_dir`; `files` are (name, bytes).
pub fn save(
    output_dir: &Path,
    step: u64,
    files: &[(&str, Vec<u8>)],
) -> Result<PathBuf, TrainError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io { path, source }
    };
    std::fs::create_dir_all(output_dir).map_err(io(output_dir))?;
    remove_leftovers(output_dir)?;
    let final_dir = output_dir.join(format!("{PREFIX}{step}"));
    let tmp = output_dir.join(format!("{TMP_PREFIX}{step}-{}", std::process::id()));
    runner_io::atomic::track_temporary(&tmp);
    runner_io::fault::op("mkdir", &tmp);
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    let written = (|| {
        for (name, bytes) in files {
            runner_io::atomic::write_synced(&tmp.join(name), bytes)?;
        }
        // Re-saving the same step (after a resume) replaces it.
        runner_io::atomic::publish_dir(&tmp, &final_dir, runner_io::atomic::Existing::Replace)
    })();
    runner_io::atomic::forget_temporary(&tmp);
    written.map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        TrainError::Io {
            path: e.path,
            source: e.source,
        }
    })?;
    Ok(final_dir)
}

fn remove_leftovers(output_dir: &Path) -> Result<(), TrainError> {
    for entry in read_dir(output_dir)? {
        if entry
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(TMP_PREFIX) || n.starts_with(TRASH_PREFIX))
        {
            let _ = std::fs::remove_dir_all(&entry);
        }
    }
    Ok(())
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.filter_map(|e| e.ok().map(|e| e.path())).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(TrainError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Complete checkpoints under `output_dir`, by step, as (step, folder): all of them, whatever
/// run they belong to (see [`list_run`]).
pub fn list(output_dir: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    let mut found: Vec<(u64, PathBuf)> = read_dir(output_dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| {
            let step = p
                .file_name()?
                .to_str()?
                .strip_prefix(PREFIX)?
                .parse()
                .ok()?;
            Some((step, p))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// The run a checkpoint belongs to (`run_id` in its `trainer_state.json`; `None` for one
/// written before runs were recorded, or unreadable).
pub fn run_of(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("trainer_state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("run_id")?.as_str().map(str::to_string)
}

/// The checkpoints of run `run_id`, oldest step first (`None`: every checkpoint).
pub fn list_run(
    output_dir: &Path,
    run_id: Option<&str>,
) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    let all = list(output_dir)?;
    Ok(match run_id {
        None => all,
        Some(id) => all
            .into_iter()
            .filter(|(_, p)| run_of(p).as_deref() == Some(id))
            .collect(),
    })
}

/// The newest checkpoint of run `run_id`, for `auto_resume_from_checkpoints`.
pub fn latest(output_dir: &Path, run_id: Option<&str>) -> Result<Option<PathBuf>, TrainError> {
    Ok(list_run(output_dir, run_id)?.pop().map(|(_, p)| p))
}

/// Removes the oldest checkpoints of run `run_id` beyond `limit` (`save_total_limit`), each
/// renamed aside before it is deleted; another run's checkpoints are never touched.
pub fn rotate(
    output_dir: &Path,
    limit: Option<u64>,
    run_id: Option<&str>,
) -> Result<Vec<PathBuf>, TrainError> {
    let Some(limit) = limit else {
        return Ok(Vec::new());
    };
    let all = list_run(output_dir, run_id)?;
    let excess = all.len().saturating_sub(limit as usize);
    let mut removed = Vec::new();
    for (_, dir) in all.into_iter().take(excess) {
        runner_io::atomic::remove_dir(&dir).map_err(|e| TrainError::Io {
            path: e.path,
            source: e.source,
        })?;
        removed.push(dir);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_lists_rotates_and_ignores_half_written_folders() {
        let dir = tempfile::tempdir().unwrap();
        for step in [10, 20, 30] {
            save(
                dir.path(),
                step,
                &[("state.json", b"{}".to_vec()), ("sub/a.bin", vec![1, 2])],
            )
            .unwrap();
        }
        // A save killed midway leaves only a temporary folder, which is never listed.
        std::fs::create_dir(dir.path().join(".tmp-checkpoint-40-999")).unwrap();
        assert_eq!(
            latest(dir.path(), None).unwrap().unwrap(),
            dir.path().join("checkpoint-30")
        );
        let removed = rotate(dir.path(), Some(2), None).unwrap();
        assert_eq!(removed, vec![dir.path().join("checkpoint-10")]);
        let steps: Vec<u64> = list(dir.path()).unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, [20, 30]);
        assert_eq!(
            std::fs::read(dir.path().join("checkpoint-30/sub/a.bin")).unwrap(),
            [1, 2]
        );
        // The next save clears the leftover.
        save(dir.path(), 40, &[("state.json", b"{}".to_vec())]).unwrap();
        assert!(!dir.path().join(".tmp-checkpoint-40-999").exists());
    }

    fn state(run: &str) -> (&'static str, Vec<u8>) {
        (
            "trainer_state.json",
            format!("{{\"run_id\": \"{run}\"}}").into_bytes(),
        )
    }

    #[test]
    fn issue_17_group_1_checkpoints_are_ordered_within_their_run_only() {
        // An old run's higher-numbered checkpoints are neither the newest nor rotated for a
        // new run in the same folder.
        let dir = tempfile::tempdir().unwrap();
        for step in [20, 30, 40] {
            save(dir.path(), step, &[state("old")]).unwrap();
        }
        for step in [2, 4, 6] {
            save(dir.path(), step, &[state("new")]).unwrap();
            rotate(dir.path(), Some(2), Some("new")).unwrap();
        }
        let new: Vec<u64> = list_run(dir.path(), Some("new"))
            .unwrap()
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(new, [4, 6]);
        assert_eq!(
            latest(dir.path(), Some("new")).unwrap().unwrap(),
            dir.path().join("checkpoint-6")
        );
        assert_eq!(list_run(dir.path(), Some("old")).unwrap().len(), 3);
        assert_eq!(
            run_of(&dir.path().join("checkpoint-40")).as_deref(),
            Some("old")
        );
    }

    #[test]
    fn issue_17_group_3_deleting_and_replacing_rename_aside_first() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), 1, &[state("r"), ("a.bin", vec![1])]).unwrap();
        // Re-saving a step replaces it as a whole.
        save(dir.path(), 1, &[state("r"), ("b.bin", vec![2])]).unwrap();
        let c1 = dir.path().join("checkpoint-1");
        assert!(!c1.join("a.bin").exists() && c1.join("b.bin").exists());
        // A deletion killed between the rename and the removal leaves a temporary, never a
        // half-deleted checkpoint under its final name; the next save clears it.
        let aside = dir.path().join(".checkpoint-1.trash-999");
        std::fs::rename(&c1, &aside).unwrap();
        assert!(latest(dir.path(), Some("r")).unwrap().is_none());
        save(dir.path(), 2, &[state("r")]).unwrap();
        assert!(!aside.exists());
        save(dir.path(), 3, &[state("r")]).unwrap();
        rotate(dir.path(), Some(1), Some("r")).unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["checkpoint-3"]);
    }
}
