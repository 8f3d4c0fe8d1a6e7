//! The standard Hugging Face cache layout, shared with Python tools:
//!
//! ```text
//! {cache}/models--{org}--{name}/blobs/{etag}            file contents, named by sha256 (LFS) or git sha1
//!                              /snapshots/{commit}/{file} relative symlinks to ../../blobs/{etag}
//!                              /refs/{revision}          the commit a branch or tag pointed to
//! {cache}/datasets--{org}--{name}/...                   the same for datasets
//! {cache}/.locks/{repo folder}/{etag}.lock             one download of a blob at a time
//! ```

use crate::{Kind, Need};
use std::path::{Path, PathBuf};

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn hf_home() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(h) = env("HF_HOME") {
        return h;
    }
    if let Some(x) = env("XDG_CACHE_HOME") {
        return x.join("huggingface");
    }
    match env("HOME") {
        Some(h) => h.join(".cache").join("huggingface"),
        // No home: a folder beside the working directory rather than the filesystem root.
        None => PathBuf::from(".cache").join("huggingface"),
    }
}

/// The hub cache: `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`, else `{hf_home}/hub`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("HF_HUB_CACHE")
        .filter(|v| !v.is_empty())
        .or_else(|| std::env::var_os("HUGGINGFACE_HUB_CACHE").filter(|v| !v.is_empty()))
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home().join("hub"))
}

/// `{cache}/{kind}s--{org}--{name}`.
pub fn repo_dir(cache: &Path, kind: Kind, repo: &str) -> PathBuf {
    cache.join(format!("{}--{}", kind.plural(), repo.replace('/', "--")))
}

/// Whether `rev` is a full commit id (the snapshot folder's name).
pub fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit())
}

/// The commit `revision` (default `main`) names in the cache and its snapshot folder, if that
/// folder exists. A branch or tag is read from `refs/{revision}`; a commit is its own folder.
/// A dataset asked for at `main` whose snapshot is missing or has no data is also looked for
/// at `refs/convert/parquet`, where the Hub keeps its Parquet conversion.
pub fn find(
    cache: &Path,
    kind: Kind,
    repo: &str,
    revision: Option<&str>,
) -> Option<(String, PathBuf)> {
    let dir = repo_dir(cache, kind, repo);
    let at = |rev: &str| {
        let commit = if is_commit(rev) {
            rev.to_string()
        } else {
            std::fs::read_to_string(dir.join("refs").join(rev))
                .ok()?
                .trim()
                .to_string()
        };
        let snap = dir.join("snapshots").join(&commit);
        snap.is_dir().then_some((commit, snap))
    };
    let found = at(revision.unwrap_or("main"));
    if kind == Kind::Dataset
        && revision.is_none()
        && found
            .as_ref()
            .is_none_or(|(_, d)| !missing(kind, Need::ALL, d).is_empty())
        && let Some(converted) = at(PARQUET_BRANCH)
    {
        return Some(converted);
    }
    found
}

/// The Hub's branch of a dataset converted to Parquet.
pub const PARQUET_BRANCH: &str = "refs/convert/parquet";

/// What a snapshot folder lacks for `need` (empty when nothing), in words for messages.
pub fn missing(kind: Kind, need: Need, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    match kind {
        Kind::Dataset => {
            if !has_data_files(dir, 4) {
                out.push("its data files (.parquet/.jsonl/.json/.csv/.arrow)".into());
            }
        }
        Kind::Model => {
            if need.config && !dir.join("config.json").is_file() {
                out.push("config.json".into());
            }
            if need.tokenizer && !dir.join("tokenizer.json").is_file() {
                out.push("tokenizer.json".into());
            }
            if need.weights {
                out.extend(missing_weights(dir));
            }
        }
    }
    out
}

/// The safetensors files an index lists that are absent, or "the weights" when there are none.
fn missing_weights(dir: &Path) -> Vec<String> {
    let index = dir.join(crate::select::INDEX);
    if index.is_file() {
        return match crate::select::shards_of_index(&index) {
            Ok(shards) => shards
                .into_iter()
                .filter(|s| !dir.join(s).is_file())
                .collect(),
            Err(_) => vec![format!("a readable {}", crate::select::INDEX)],
        };
    }
    let any = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".safetensors") && e.path().is_file());
    if any {
        Vec::new()
    } else {
        vec!["the weights (*.safetensors)".into()]
    }
}

fn has_data_files(dir: &Path, depth: usize) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            depth > 0
                && !e.file_name().to_string_lossy().starts_with('.')
                && has_data_files(&p, depth - 1)
        } else {
            crate::select::is_data_file(&e.file_name().to_string_lossy())
        }
    })
}

/// Records that `revision` pointed at `commit` (`refs/{revision}`), as `huggingface_hub` does;
/// a commit needs no ref.
pub fn write_ref(repo_dir: &Path, revision: &str, commit: &str) -> crate::Result<()> {
    if is_commit(revision) {
        return Ok(());
    }
    let path = repo_dir.join("refs").join(revision);
    if std::fs::read_to_string(&path).is_ok_and(|c| c.trim() == commit) {
        return Ok(());
    }
    let parent = path.parent().unwrap_or(repo_dir);
    std::fs::create_dir_all(parent).map_err(crate::Error::at(parent))?;
    // Written beside and renamed: a reader never sees a half-written commit id.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, commit).map_err(crate::Error::at(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(crate::Error::at(&path))
}

/// Puts `snapshots/{commit}/{file}` in place as a relative link to `blob` (a copy where links
/// cannot be made). An existing entry is left alone.
pub fn link(snapshot: &Path, file: &str, blob: &Path) -> crate::Result<()> {
    let dest = snapshot.join(file);
    if dest.exists() {
        return Ok(());
    }
    let parent = dest.parent().unwrap_or(snapshot);
    std::fs::create_dir_all(parent).map_err(crate::Error::at(parent))?;
    #[cfg(unix)]
    {
        // `snapshots/{commit}/a/b` → `../../../blobs/{etag}`: one `..` per folder below the repo.
        let depth = file.split('/').count() + 1;
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(blob.file_name().unwrap_or_default());
        // Another process may have made the same link meanwhile: that is as good.
        if std::os::unix::fs::symlink(&target, &dest).is_ok() || dest.exists() {
            return Ok(());
        }
    }
    let tmp = dest.with_extension(format!("tmp{}", std::process::id()));
    std::fs::copy(blob, &tmp).map_err(crate::Error::at(&tmp))?;
    std::fs::rename(&tmp, &dest).map_err(crate::Error::at(&dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_by_ref_and_commit_and_prefers_parquet_branch_for_empty_datasets() {
        let tmp = tempfile::tempdir().unwrap();
        let c = "0123456789abcdef0123456789abcdef01234567";
        let repo = repo_dir(tmp.path(), Kind::Model, "org/tiny");
        std::fs::create_dir_all(repo.join("snapshots").join(c)).unwrap();
        write_ref(&repo, "main", c).unwrap();
        let (commit, dir) = find(tmp.path(), Kind::Model, "org/tiny", None).unwrap();
        assert_eq!(commit, c);
        assert!(dir.ends_with(c));
        assert!(find(tmp.path(), Kind::Model, "org/tiny", Some(c)).is_some());
        assert!(find(tmp.path(), Kind::Model, "org/tiny", Some("v2")).is_none());
        assert_eq!(
            missing(Kind::Model, Need::ALL, &dir),
            [
                "config.json",
                "tokenizer.json",
                "the weights (*.safetensors)"
            ]
        );

        let d = "1111111111111111111111111111111111111111";
        let repo = repo_dir(tmp.path(), Kind::Dataset, "org/data");
        std::fs::create_dir_all(repo.join("snapshots").join(c)).unwrap();
        std::fs::write(repo.join("snapshots").join(c).join("README.md"), "x").unwrap();
        write_ref(&repo, "main", c).unwrap();
        let conv = repo.join("snapshots").join(d).join("default/train");
        std::fs::create_dir_all(&conv).unwrap();
        std::fs::write(conv.join("0000.parquet"), "x").unwrap();
        write_ref(&repo, PARQUET_BRANCH, d).unwrap();
        let (commit, _) = find(tmp.path(), Kind::Dataset, "org/data", None).unwrap();
        assert_eq!(commit, d, "main has no data: the Parquet conversion");
    }
}
