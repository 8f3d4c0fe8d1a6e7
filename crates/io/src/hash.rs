//! Content hashes (blake3, hex) of bytes and files, and a cache that remembers a file's hash
//! by (path, size, mtime, ctime) so that multi-gigabyte model files are hashed once per change,
//! not on every start.
//!
//! The cache trusts the file system's metadata: a file rewritten with the same size inside the
//! same mtime *and* ctime tick would keep its old hash. ctime cannot be set back by `touch`, so
//! this takes a write within one timestamp tick of the previous one; data files, which are
//! small and where the bar is "one changed byte is noticed", are hashed without the cache.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The blake3 hash of `bytes`, as 64 hex digits.
pub fn bytes(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// The blake3 hash of a file's content, read in 1 MiB pieces.
pub fn file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(Error::at(path))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(Error::at(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// What the cache compares before trusting a remembered hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Stamp {
    fn of(path: &Path) -> Result<Stamp> {
        let md = std::fs::metadata(path).map_err(Error::at(path))?;
        let ns = |t: std::io::Result<std::time::SystemTime>| {
            t.ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i64)
        };
        #[cfg(unix)]
        let ctime_ns = {
            use std::os::unix::fs::MetadataExt;
            md.ctime() * 1_000_000_000 + md.ctime_nsec()
        };
        #[cfg(not(unix))]
        let ctime_ns = 0;
        Ok(Stamp {
            size: md.len(),
            mtime_ns: ns(md.modified()),
            ctime_ns,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    stamp: Stamp,
    blake3: String,
}

/// File hashes remembered in a JSON file, keyed by absolute path.
#[derive(Debug)]
pub struct HashCache {
    file: PathBuf,
    entries: BTreeMap<PathBuf, Entry>,
    dirty: bool,
    /// How many files were hashed (not answered from the cache), for the tests and the log.
    pub hashed: usize,
}

impl HashCache {
    /// The default cache file: `$RUNNER_HASH_CACHE`, else `.cache/runner/file-hashes.json`.
    pub fn default_file() -> PathBuf {
        std::env::var_os("RUNNER_HASH_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".cache/runner/file-hashes.json"))
    }

    /// Opens the cache at `file`; a missing or unreadable cache starts empty (it is only a
    /// cache: the worst case is hashing again).
    pub fn open(file: &Path) -> HashCache {
        let entries = std::fs::read(file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        HashCache {
            file: file.to_path_buf(),
            entries,
            dirty: false,
            hashed: 0,
        }
    }

    /// The hash of `path`, from the cache when its size, mtime and ctime are unchanged.
    pub fn hash(&mut self, path: &Path) -> Result<String> {
        let abs = std::path::absolute(path).map_err(Error::at(path))?;
        let stamp = Stamp::of(&abs)?;
        if let Some(e) = self.entries.get(&abs).filter(|e| e.stamp == stamp) {
            return Ok(e.blake3.clone());
        }
        let blake3 = file(&abs)?;
        self.hashed += 1;
        // The file may have changed while it was read: remember only a stable answer.
        if Stamp::of(&abs)? == stamp {
            self.entries.insert(
                abs,
                Entry {
                    stamp,
                    blake3: blake3.clone(),
                },
            );
            self.dirty = true;
        }
        Ok(blake3)
    }

    /// Writes the cache back (atomically) when it learnt something.
    pub fn save(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        if let Some(parent) = self.file.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(Error::at(parent))?;
        }
        let json = serde_json::to_vec_pretty(&self.entries).unwrap_or_default();
        crate::atomic::write(&self.file, &json)?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_hash_is_blake3_of_the_content() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        // Larger than one read buffer, so the pieces are joined correctly.
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&p, &content).unwrap();
        assert_eq!(file(&p).unwrap(), blake3::hash(&content).to_hex().as_str());
        // The published test vector for the empty input.
        assert_eq!(
            bytes(b""),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn the_cache_answers_unchanged_files_and_rehashes_changed_ones() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("model.bin");
        let cache_file = d.path().join("cache/hashes.json");
        std::fs::write(&p, b"weights v1").unwrap();
        let mut c = HashCache::open(&cache_file);
        let h1 = c.hash(&p).unwrap();
        c.save().unwrap();
        assert_eq!(c.hashed, 1);

        let mut c = HashCache::open(&cache_file);
        assert_eq!(c.hash(&p).unwrap(), h1);
        assert_eq!(c.hashed, 0, "an unchanged file is answered from the cache");

        // Same size, new content: the stamp (ctime at least) moves, the hash is recomputed.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, b"weights v2").unwrap();
        let h2 = c.hash(&p).unwrap();
        assert_eq!(c.hashed, 1);
        assert_ne!(h1, h2);
        assert_eq!(h2, bytes(b"weights v2"));
    }
}
