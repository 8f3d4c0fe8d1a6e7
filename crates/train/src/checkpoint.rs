//! Checkpoint folders written atomically: everything goes into a temporary sibling folder,
//! each file and the folder are synced, then the folder is renamed to `checkpoint-{step}`.
//! A crash or `kill -9` mid-save leaves the previous checkpoints intact and no half folder
//! under a final name; leftovers are temporary folders that the next save removes.

use crate::error::TrainError;
use std::path::{Path, PathBuf};

const PREFIX: &str = "checkpoint-";
const TMP_PREFIX: &str = ".tmp-checkpoint-";

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
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    let written = (|| {
        for (name, bytes) in files {
            runner_io::atomic::write_synced(&tmp.join(name), bytes)?;
        }
        // Re-saving the same step (after a resume) replaces it.
        runner_io::atomic::publish_dir(&tmp, &final_dir, runner_io::atomic::Existing::Replace)
    })();
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
            .is_some_and(|n| n.starts_with(TMP_PREFIX))
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

/// Complete checkpoints under `output_dir`, oldest first, as (step, folder).
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

/// The newest complete checkpoint, for `auto_resume_from_checkpoints`.
pub fn latest(output_dir: &Path) -> Result<Option<PathBuf>, TrainError> {
    Ok(list(output_dir)?.pop().map(|(_, p)| p))
}

/// Removes the oldest checkpoints beyond `limit` (`save_total_limit`).
pub fn rotate(output_dir: &Path, limit: Option<u64>) -> Result<Vec<PathBuf>, TrainError> {
    let Some(limit) = limit else {
        return Ok(Vec::new());
    };
    let all = list(output_dir)?;
    let excess = all.len().saturating_sub(limit as usize);
    let mut removed = Vec::new();
    for (_, dir) in all.into_iter().take(excess) {
        std::fs::remove_dir_all(&dir).map_err(|source| TrainError::Io {
            path: dir.clone(),
            source,
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
            latest(dir.path()).unwrap().unwrap(),
            dir.path().join("checkpoint-30")
        );
        let removed = rotate(dir.path(), Some(2)).unwrap();
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
}
