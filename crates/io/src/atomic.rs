//! Atomic writes: every file runner writes goes to a temporary name beside its final one, is
//! synced to disk, then renamed over the final name; folders the same way (written as a
//! temporary sibling, then renamed). A crash or `kill -9` at any point leaves either the old
//! content or the new, never half of the new under a final name. Deletions and replacements
//! rename aside first ([`remove_dir`]), so a half-deleted folder never sits under a final
//! name; leftovers all match [`is_temporary`], and [`remove_temporaries`] clears them.

use crate::fault;
use crate::{Error, Result};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Temporaries this process has open (files and folders), removed by the signal handler
/// before it ends the process.
static LIVE: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// Records a temporary path (until [`forget_temporary`]) for [`remove_live_temporaries`].
pub fn track_temporary(path: &Path) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    live.get_or_insert_with(HashSet::new)
        .insert(path.to_path_buf());
}

pub fn forget_temporary(path: &Path) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(set) = live.as_mut() {
        set.remove(path);
    }
}

/// Removes every temporary this process has open (for a process about to end on a signal).
pub fn remove_live_temporaries() {
    let paths: Vec<PathBuf> = {
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        live.take()
            .map(|s| s.into_iter().collect())
            .unwrap_or_default()
    };
    for p in paths {
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Whether a file or folder name is one of runner's temporaries: `.{name}.tmp-…` (a file being
/// written), `.tmp-…` (a folder being written) or `.{name}.trash-…` (being deleted).
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && (name.contains(".tmp-") || name.contains(".trash-"))
}

/// Removes the temporaries that interrupted processes left under `dir` (recursively), and
/// returns them. Call it where no other process writes (a run's own output folder).
pub fn remove_temporaries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::at(&d)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(Error::at(&d))?;
            let path = entry.path();
            let is_dir = entry.file_type().map_err(Error::at(&path))?.is_dir();
            if is_temporary(&entry.file_name().to_string_lossy()) {
                if is_dir {
                    std::fs::remove_dir_all(&path).map_err(Error::at(&path))?;
                } else {
                    std::fs::remove_file(&path).map_err(Error::at(&path))?;
                }
                removed.push(path);
            } else if is_dir {
                stack.push(path);
            }
        }
    }
    removed.sort();
    Ok(removed)
}

/// Deletes a folder crash-safely: renamed aside to `.{name}.trash-{pid}` first, then removed,
/// so a kill midway leaves a temporary, never a half-deleted folder under its own name.
pub fn remove_dir(dir: &Path) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let aside = dir.with_file_name(format!(".{name}.trash-{}", std::process::id()));
    if aside.exists() {
        std::fs::remove_dir_all(&aside).map_err(Error::at(&aside))?;
    }
    fault::op("rename aside", dir);
    std::fs::rename(dir, &aside).map_err(Error::at(dir))?;
    fault::op("remove", &aside);
    std::fs::remove_dir_all(&aside).map_err(Error::at(&aside))
}

/// `.{name}.tmp-{pid}-{n}` beside `path`: unique per process and per call, so two threads (or
/// two processes) writing the same file never share a temporary.
pub fn temp_name(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Writes `bytes` to `path` atomically (temporary name, fsync, rename).
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut staged = Staged::default();
    staged.write(path, bytes)?;
    staged.commit()
}

/// Creates `path` and writes `bytes`, synced to disk, without a rename: for files inside a
/// temporary folder that [`publish_dir`] renames as a whole.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(Error::at(parent))?;
    }
    fault::op("create", path);
    let file = std::fs::File::create(path).map_err(Error::at(path))?;
    let mut w = std::io::BufWriter::new(file);
    w.write_all(bytes).map_err(Error::at(path))?;
    let file = w.into_inner().map_err(|e| Error {
        path: path.to_path_buf(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(Error::at(path))
}

/// Syncs a folder so that renames inside it are durable (not every platform can open one).
pub fn sync_dir(dir: &Path) -> Result<()> {
    if let Ok(f) = std::fs::File::open(dir) {
        fault::op("sync", dir);
        f.sync_all().map_err(Error::at(dir))?;
    }
    Ok(())
}

/// What [`publish_dir`] does when the final folder already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Put the new one in its place (a re-saved checkpoint); the old one is renamed aside
    /// first and deleted after, so a kill leaves one of the two under the name, or neither.
    Replace,
    /// Keep it and drop the new one (a content-addressed cache entry another process finished
    /// first: the same content).
    Keep,
}

/// Renames the finished temporary folder `tmp` (its files written with [`write_synced`]) to
/// `dir`. Returns whether `tmp` became `dir` (false when [`Existing::Keep`] kept an existing
/// one). On failure the temporary folder is removed.
pub fn publish_dir(tmp: &Path, dir: &Path, existing: Existing) -> Result<bool> {
    let result = (|| {
        sync_dir(tmp)?;
        if dir.exists() {
            match existing {
                Existing::Keep => {
                    let _ = std::fs::remove_dir_all(tmp);
                    return Ok(false);
                }
                Existing::Replace => {
                    let name = dir
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let aside = dir.with_file_name(format!(".{name}.trash-{}", std::process::id()));
                    track_temporary(&aside);
                    fault::op("rename aside", dir);
                    std::fs::rename(dir, &aside).map_err(Error::at(dir))?;
                    fault::op("rename", dir);
                    if let Err(e) = std::fs::rename(tmp, dir) {
                        // Put the old one back: a failed replacement changes nothing.
                        let _ = std::fs::rename(&aside, dir);
                        forget_temporary(&aside);
                        return Err(Error::at(dir)(e));
                    }
                    fault::op("remove", &aside);
                    std::fs::remove_dir_all(&aside).map_err(Error::at(&aside))?;
                    forget_temporary(&aside);
                    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                        sync_dir(parent)?;
                    }
                    return Ok(true);
                }
            }
        }
        fault::op("rename", dir);
        std::fs::rename(tmp, dir).map_err(Error::at(dir))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(true)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(tmp);
    }
    result
}

/// Temporary files written beside their final names, renamed together at the end and removed
/// if anything fails first (or the value is dropped uncommitted): no half-written file is ever
/// left under a final name.
#[derive(Default)]
pub struct Staged {
    files: Vec<(PathBuf, PathBuf)>,
    committed: bool,
}

impl Staged {
    /// Writes `bytes` to a temporary name for `path` (synced to disk).
    pub fn write(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        let (mut f, tmp) = self.create(path)?;
        f.write_all(bytes).map_err(Error::at(&tmp))?;
        f.sync_all().map_err(Error::at(&tmp))
    }

    /// Creates the temporary file for `path`, for writing in pieces; call
    /// `std::fs::File::sync_all` before [`Staged::commit`].
    pub fn create(&mut self, path: &Path) -> Result<(std::fs::File, PathBuf)> {
        let tmp = temp_name(path);
        self.files.push((tmp.clone(), path.to_path_buf()));
        track_temporary(&tmp);
        fault::op("create", &tmp);
        let f = std::fs::File::create(&tmp).map_err(Error::at(&tmp))?;
        Ok((f, tmp))
    }

    /// The final names, in the order written.
    pub fn finals(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(_, f)| f.as_path())
    }

    /// Renames every temporary file to its final name.
    pub fn commit(mut self) -> Result<()> {
        for (tmp, path) in &self.files {
            fault::op("rename", path);
            std::fs::rename(tmp, path).map_err(Error::at(path))?;
            forget_temporary(tmp);
        }
        self.committed = true;
        let mut parents: Vec<&Path> = self.files.iter().filter_map(|(_, p)| p.parent()).collect();
        parents.dedup();
        for p in parents.into_iter().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(p)?;
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            for (tmp, _) in &self.files {
                let _ = std::fs::remove_file(tmp);
                forget_temporary(tmp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_replaces_the_file_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        write(&p, b"old").unwrap();
        write(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(listing(d.path()), ["a.json"]);
    }

    #[test]
    fn an_uncommitted_stage_leaves_the_old_content() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("w.bin");
        write(&p, b"old").unwrap();
        {
            let mut s = Staged::default();
            s.write(&p, b"half").unwrap();
            assert_eq!(
                listing(d.path()).len(),
                2,
                "the temporary exists while staged"
            );
        }
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(listing(d.path()), ["w.bin"]);
    }

    #[test]
    fn a_write_into_a_missing_folder_fails_with_the_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("no/such/x");
        let e = write(&p, b"x").unwrap_err();
        assert!(e.path.to_string_lossy().contains("no/such"), "{e}");
    }

    #[test]
    fn publish_dir_replaces_or_keeps() {
        let d = tempfile::tempdir().unwrap();
        let fin = d.path().join("entry");
        for (content, existing, became) in [
            ("one", Existing::Keep, true),
            ("two", Existing::Keep, false),
            ("three", Existing::Replace, true),
        ] {
            let tmp = d.path().join(".tmp-entry");
            write_synced(&tmp.join("f"), content.as_bytes()).unwrap();
            assert_eq!(publish_dir(&tmp, &fin, existing).unwrap(), became);
            assert!(!tmp.exists());
        }
        assert_eq!(std::fs::read(fin.join("f")).unwrap(), b"three");
    }
}
