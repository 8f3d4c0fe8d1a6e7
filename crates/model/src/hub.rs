//! The local Hugging Face hub cache: `models--{org}--{name}/snapshots/{commit}/`, with
//! `refs/{revision}` naming the commit. Nothing is downloaded here.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Candidate cache roots, in the order huggingface_hub uses them.
pub fn cache_roots() -> Vec<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = env("HF_HUB_CACHE").or_else(|| env("HUGGINGFACE_HUB_CACHE")) {
        return vec![p];
    }
    if let Some(h) = env("HF_HOME") {
        return vec![h.join("hub")];
    }
    if let Some(x) = env("XDG_CACHE_HOME") {
        return vec![x.join("huggingface").join("hub")];
    }
    env("HOME")
        .map(|h| vec![h.join(".cache").join("huggingface").join("hub")])
        .unwrap_or_default()
}

/// The snapshot folder of `repo_id` at `revision` (default `main`) in the local cache.
pub fn snapshot(repo_id: &str, revision: Option<&str>) -> Result<PathBuf> {
    snapshot_in(&cache_roots(), repo_id, revision)
}

/// As [`snapshot`], looking only in `roots`.
pub fn snapshot_in(roots: &[PathBuf], repo_id: &str, revision: Option<&str>) -> Result<PathBuf> {
    let mut looked = Vec::new();
    let valid_id = repo_id.split('/').count() == 2 && !repo_id.starts_with('/');
    if valid_id {
        let folder = format!("models--{}", repo_id.replace('/', "--"));
        let rev = revision.unwrap_or("main");
        for root in roots {
            let repo = root.join(&folder);
            if let Some(p) = find_snapshot(&repo, rev) {
                return Ok(p);
            }
            looked.push(repo);
        }
    }
    Err(Error::NotCached {
        base_model: repo_id.to_string(),
        looked,
    })
}

fn find_snapshot(repo: &Path, rev: &str) -> Option<PathBuf> {
    let is_commit = rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_commit {
        rev.to_string()
    } else {
        std::fs::read_to_string(repo.join("refs").join(rev))
            .ok()?
            .trim()
            .to_string()
    };
    let snap = repo.join("snapshots").join(commit);
    snap.is_dir().then_some(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ref_and_commit_and_reports_where_it_looked() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--org--tiny");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), format!("{commit}\n")).unwrap();
        let roots = vec![tmp.path().to_path_buf()];
        let p = snapshot_in(&roots, "org/tiny", None).unwrap();
        assert!(p.ends_with(commit));
        assert_eq!(snapshot_in(&roots, "org/tiny", Some(commit)).unwrap(), p);
        let e = snapshot_in(&roots, "org/other", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("models--org--other") && e.contains("huggingface-cli download"),
            "{e}"
        );
    }
}
