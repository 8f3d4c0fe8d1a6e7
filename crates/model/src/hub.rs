//! `base_model` as a hub id in the local Hugging Face cache, through `runner_hub` (the one
//! lookup every stage uses). Nothing is downloaded here: the pipeline's inputs stage downloads
//! and pins `revision` to the snapshot's commit before the model is loaded.

use crate::error::{Error, Result};
use std::path::PathBuf;

/// The hub cache root (`HF_HUB_CACHE`, `HF_HOME/hub`, `XDG_CACHE_HOME/huggingface/hub` or
/// `~/.cache/huggingface/hub`, as huggingface_hub reads them), as a one-element list.
pub fn cache_roots() -> Vec<PathBuf> {
    vec![runner_hub::cache::cache_dir()]
}

/// The snapshot folder of `repo_id` at `revision` (default `main`) in the local cache.
pub fn snapshot(repo_id: &str, revision: Option<&str>) -> Result<PathBuf> {
    snapshot_in(&cache_roots(), repo_id, revision)
}

/// As [`snapshot`], looking only in `roots`.
pub fn snapshot_in(roots: &[PathBuf], repo_id: &str, revision: Option<&str>) -> Result<PathBuf> {
    let mut looked = Vec::new();
    if runner_hub::is_repo_id(repo_id) {
        let kind = runner_hub::Kind::Model;
        for root in roots {
            if let Some((_, dir)) = runner_hub::cache::find(root, kind, repo_id, revision) {
                return Ok(dir);
            }
            looked.push(runner_hub::cache::repo_dir(root, kind, repo_id));
        }
    }
    Err(Error::NotCached {
        base_model: repo_id.to_string(),
        looked,
    })
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
