//! The HTTP calls to the Hub, as `huggingface_hub` makes them (`file_download.py`):
//!
//! - `GET {endpoint}/api/{models|datasets}/{repo}/revision/{rev}`: the commit a revision
//!   points to and the repo's file list;
//! - `HEAD {endpoint}/{datasets/}{repo}/resolve/{commit}/{file}` without following redirects
//!   other than relative ones (a renamed repo): `X-Repo-Commit`, the blob's id in
//!   `X-Linked-Etag` (an LFS file's sha256) or `ETag` (a git blob's sha1), its size in
//!   `X-Linked-Size` or `Content-Length`, and in `Location` the CDN address to fetch from;
//! - `GET` of that address into `blobs/{etag}.incomplete`, continued with `Range` after an
//!   interruption (in this call, or a later run), checked for size and hash, then renamed to
//!   `blobs/{etag}` and linked from `snapshots/{commit}/{file}`.
//!
//! Errors follow the Hub's `X-Error-Code` header (`GatedRepo`, `RepoNotFound`,
//! `RevisionNotFound`, `EntryNotFound`). The token goes to the Hub's own host only, never to
//! the CDN a download is redirected to.

use crate::{Error, Kind, Request, Result, Settings, Snapshot, cache, select};
use sha2::Digest;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How many times one file's download is continued after the connection drops.
const ATTEMPTS: usize = 5;

pub struct Client<'a> {
    settings: &'a Settings,
    /// Follows no redirect: metadata calls read the redirect itself.
    meta: ureq::Agent,
    /// Follows redirects (to the CDN), without the `Authorization` header.
    fetch: ureq::Agent,
}

/// What a `HEAD` on a file says.
struct FileMeta {
    kind: Kind,
    commit: String,
    etag: String,
    size: u64,
    /// Where the bytes are (the CDN, or the resolve URL itself).
    location: String,
}

fn agent(max_redirects: u32) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(max_redirects)
        .max_redirects_will_error(false)
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .user_agent(concat!(
            "runner/",
            env!("CARGO_PKG_VERSION"),
            "; hf_hub/rust"
        ))
        .build()
        .into()
}

/// `quote(s, safe="")` (for a revision such as `refs/convert/parquet`); with `keep_slash`,
/// `quote(s)` (for a file path).
fn quote(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string())
}

/// `W/"abc"` → `abc`, as `_normalize_etag`.
fn normalize_etag(e: &str) -> String {
    e.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

impl<'a> Client<'a> {
    pub fn new(settings: &'a Settings) -> Client<'a> {
        Client {
            settings,
            meta: agent(0),
            fetch: agent(10),
        }
    }

    fn network(&self, repo: &str, e: impl std::fmt::Display) -> Error {
        Error::Network {
            endpoint: self.settings.endpoint.clone(),
            repo: repo.to_string(),
            message: e.to_string(),
        }
    }

    /// A request with the token when it goes to the Hub's own host.
    fn call(
        &self,
        agent: &ureq::Agent,
        method: &str,
        url: &str,
        range: Option<u64>,
    ) -> std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(url)
            .header("Accept-Encoding", "identity");
        if let Some(token) = &self.settings.token
            && url.starts_with(&self.settings.endpoint)
        {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        if let Some(from) = range {
            req = req.header("Range", format!("bytes={from}-"));
        }
        let req = req.body(()).map_err(ureq::Error::Http)?;
        agent.run(req)
    }

    /// The Hub's error for a 4xx/5xx answer, by its `X-Error-Code`.
    fn status_error(
        &self,
        kind: Kind,
        repo: &str,
        revision: &str,
        url: &str,
        resp: &ureq::http::Response<ureq::Body>,
    ) -> Error {
        let status = resp.status().as_u16();
        let code = header(resp, "x-error-code").unwrap_or_default();
        let message = header(resp, "x-error-message").unwrap_or_default();
        let with_token = self.settings.token.is_some();
        match code.as_str() {
            "GatedRepo" => Error::Gated {
                kind,
                repo: repo.into(),
                status,
                url: url.into(),
                with_token,
            },
            "RevisionNotFound" => Error::RevisionNotFound {
                kind,
                repo: repo.into(),
                revision: revision.into(),
            },
            // 401 without a token, 404 with one: a private repo reads as a missing one.
            "RepoNotFound" => Error::RepoNotFound {
                kind,
                repo: repo.into(),
                endpoint: self.settings.endpoint.clone(),
                with_token,
            },
            // 401 without a token, 403 when the token lacks access.
            _ if status == 401 || status == 403 => Error::Gated {
                kind,
                repo: repo.into(),
                status,
                url: url.into(),
                with_token,
            },
            _ => Error::Http {
                status,
                url: url.into(),
                message,
            },
        }
    }

    /// The commit `revision` points to and the repo's files.
    fn repo_info(&self, kind: Kind, repo: &str, revision: &str) -> Result<(String, Vec<String>)> {
        let url = format!(
            "{}/api/{}/{repo}/revision/{}",
            self.settings.endpoint,
            kind.plural(),
            quote(revision, false)
        );
        let mut resp = self
            .call(&self.fetch, "GET", &url, None)
            .map_err(|e| self.network(repo, e))?;
        if !resp.status().is_success() {
            return Err(self.status_error(kind, repo, revision, &url, &resp));
        }
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| self.network(repo, e))?;
        let bad = |message: String| Error::Protocol {
            url: url.clone(),
            message,
        };
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let sha = v
            .get("sha")
            .and_then(|s| s.as_str())
            .filter(|s| cache::is_commit(s))
            .ok_or_else(|| bad("no commit `sha`".into()))?
            .to_string();
        let files = v
            .get("siblings")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no `siblings` list".into()))?
            .iter()
            .filter_map(|f| f.get("rfilename").and_then(|n| n.as_str()))
            // A name that would leave the snapshot folder is never written.
            .filter(|n| !n.starts_with('/') && !n.split('/').any(|c| c == ".." || c.is_empty()))
            .map(str::to_string)
            .collect();
        Ok((sha, files))
    }

    /// `HEAD` on a file at `commit`, following relative redirects only.
    fn file_meta(&self, kind: Kind, repo: &str, commit: &str, file: &str) -> Result<FileMeta> {
        let mut url = format!(
            "{}/{}{repo}/resolve/{commit}/{}",
            self.settings.endpoint,
            kind.url_prefix(),
            quote(file, true)
        );
        for _ in 0..10 {
            let resp = self
                .call(&self.meta, "HEAD", &url, None)
                .map_err(|e| self.network(repo, e))?;
            let status = resp.status().as_u16();
            if status >= 400 {
                return Err(self.status_error(kind, repo, commit, &url, &resp));
            }
            let location = header(&resp, "location");
            if (300..400).contains(&status)
                && let Some(loc) = &location
                && loc.starts_with('/')
            {
                url = format!("{}{loc}", self.settings.endpoint);
                continue;
            }
            let bad = |message: &str| Error::Protocol {
                url: url.clone(),
                message: message.into(),
            };
            let commit = header(&resp, "x-repo-commit").ok_or_else(|| {
                bad("no X-Repo-Commit header: is HF_ENDPOINT a Hugging Face Hub?")
            })?;
            let etag = header(&resp, "x-linked-etag")
                .or_else(|| header(&resp, "etag"))
                .map(|e| normalize_etag(&e))
                .filter(|e| !e.is_empty() && !e.contains(['/', '\\', '.']))
                .ok_or_else(|| bad("no usable ETag"))?;
            let redirected = (300..400).contains(&status);
            let size = header(&resp, "x-linked-size")
                .or_else(|| {
                    (!redirected)
                        .then(|| header(&resp, "content-length"))
                        .flatten()
                })
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| bad("no size (X-Linked-Size or Content-Length)"))?;
            let location = match location {
                Some(l) if redirected => l,
                _ => url.clone(),
            };
            return Ok(FileMeta {
                kind,
                commit,
                etag,
                size,
                location,
            });
        }
        Err(Error::Protocol {
            url,
            message: "too many redirects".into(),
        })
    }

    /// Downloads what `req` needs into the cache and returns its snapshot.
    pub fn download(&self, req: &Request) -> Result<Snapshot> {
        let s = self.settings;
        let revision = req.revision.unwrap_or("main");
        let repo_dir = cache::repo_dir(&s.cache, req.kind, req.repo);
        let (mut commit, listing) = self.repo_info(req.kind, req.repo, revision)?;
        let mut pinned_rev = revision.to_string();
        let mut wanted = match req.kind {
            Kind::Model => select::model_files(req.repo, &listing, req.need)?,
            Kind::Dataset => select::dataset_files(&listing, req.data_files, req.name),
        };
        if req.kind == Kind::Dataset && wanted.is_empty() && req.revision.is_none() {
            // Script or archive datasets: the Hub's own Parquet conversion.
            let (c, files) = self.repo_info(req.kind, req.repo, cache::PARQUET_BRANCH)?;
            commit = c;
            wanted = select::dataset_files(&files, req.data_files, req.name);
            pinned_rev = cache::PARQUET_BRANCH.into();
        }
        if req.kind == Kind::Dataset && wanted.is_empty() {
            return Err(Error::NoDataFiles {
                repo: req.repo.into(),
                revision: revision.into(),
            });
        }
        let snapshot = repo_dir.join("snapshots").join(&commit);
        let mut placed: Vec<(String, PathBuf)> = Vec::new();
        let mut downloaded = Vec::new();
        let mut bytes = 0;
        let mut i = 0;
        while i < wanted.len() {
            let file = wanted[i].clone();
            i += 1;
            let blob = if snapshot.join(&file).is_file() {
                snapshot.join(&file)
            } else {
                let meta = self.file_meta(req.kind, req.repo, &commit, &file)?;
                if meta.commit != commit {
                    return Err(Error::Protocol {
                        url: meta.location,
                        message: format!(
                            "asked for commit {commit}, the Hub answered for {}",
                            meta.commit
                        ),
                    });
                }
                let blob = repo_dir.join("blobs").join(&meta.etag);
                if !blob.is_file() {
                    self.fetch_blob(req.repo, &file, &meta, &blob, &repo_dir)?;
                    downloaded.push(file.clone());
                    bytes += meta.size;
                }
                blob
            };
            if file == select::INDEX && req.need.weights {
                wanted.extend(select::shards_of_index(&blob)?);
            }
            placed.push((file, blob));
        }
        // Links are made once every file is here: a snapshot this call leaves is complete
        // for its need, never half of one.
        for (file, blob) in &placed {
            if blob.starts_with(repo_dir.join("blobs")) {
                cache::link(&snapshot, file, blob)?;
            }
        }
        std::fs::create_dir_all(&snapshot).map_err(Error::at(&snapshot))?;
        cache::write_ref(&repo_dir, &pinned_rev, &commit)?;
        Ok(Snapshot {
            kind: req.kind,
            repo: req.repo.into(),
            revision: pinned_rev,
            commit,
            dir: snapshot,
            downloaded,
            bytes,
        })
    }

    /// Downloads one blob: into `{blob}.incomplete` (continuing what an earlier attempt left),
    /// checked, then renamed to `blob`. One process at a time per blob (a lock file, as
    /// `huggingface_hub` keeps under `.locks`).
    fn fetch_blob(
        &self,
        repo: &str,
        file: &str,
        meta: &FileMeta,
        blob: &Path,
        repo_dir: &Path,
    ) -> Result<()> {
        let blobs = repo_dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(Error::at(&blobs))?;
        let locks = self
            .settings
            .cache
            .join(".locks")
            .join(repo_dir.file_name().unwrap_or_default());
        std::fs::create_dir_all(&locks).map_err(Error::at(&locks))?;
        let lock_path = locks.join(format!("{}.lock", meta.etag));
        let lock = std::fs::File::create(&lock_path).map_err(Error::at(&lock_path))?;
        lock.lock().map_err(Error::at(&lock_path))?;
        if blob.is_file() {
            // Another process finished it while this one waited.
            return Ok(());
        }
        let part = blobs.join(format!("{}.incomplete", meta.etag));
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&part)
            .map_err(Error::at(&part))?;
        let bar = self.progress_bar(file, meta.size);
        let mut last_error = String::new();
        for _ in 0..ATTEMPTS {
            let have = out.metadata().map_err(Error::at(&part))?.len();
            if have > meta.size {
                out.set_len(0).map_err(Error::at(&part))?;
                continue;
            }
            if have == meta.size {
                break;
            }
            bar.set_position(have);
            match self.fetch_range(repo, meta, have, &mut out, &part, &bar) {
                Ok(()) => {}
                Err(FetchError::Fatal(e)) => {
                    bar.abandon();
                    return Err(e);
                }
                Err(FetchError::Retry(m)) => last_error = m,
            }
        }
        bar.finish_and_clear();
        let have = out.metadata().map_err(Error::at(&part))?.len();
        if have < meta.size {
            // Kept: the next run continues from here.
            return Err(self.network(
                repo,
                format!(
                    "`{file}` stopped at {have} of {} bytes after {ATTEMPTS} attempts ({last_error}); \
                     run again to continue the download",
                    meta.size
                ),
            ));
        }
        if let Err(e) = verify(repo, file, meta, &part) {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
        drop(out);
        std::fs::rename(&part, blob).map_err(Error::at(blob))
    }

    /// One `GET` from byte `from`, appended to `out`.
    fn fetch_range(
        &self,
        repo: &str,
        meta: &FileMeta,
        from: u64,
        out: &mut std::fs::File,
        part: &Path,
        bar: &indicatif::ProgressBar,
    ) -> Result<(), FetchError> {
        let resp = self
            .call(
                &self.fetch,
                "GET",
                &meta.location,
                (from > 0).then_some(from),
            )
            .map_err(|e| FetchError::Retry(e.to_string()))?;
        let status = resp.status().as_u16();
        match status {
            206 => {}
            200 if from > 0 => {
                // The server ignored the range: start over rather than append a second copy.
                out.set_len(0)
                    .map_err(|e| FetchError::Fatal(Error::at(part)(e)))?;
                bar.set_position(0);
            }
            200 => {}
            408 | 429 | 500..=599 => return Err(FetchError::Retry(format!("HTTP {status}"))),
            _ => {
                return Err(FetchError::Fatal(self.status_error(
                    meta.kind,
                    repo,
                    &meta.commit,
                    &meta.location,
                    &resp,
                )));
            }
        }
        out.seek(std::io::SeekFrom::End(0))
            .map_err(|e| FetchError::Fatal(Error::at(part)(e)))?;
        let mut body = resp.into_body().into_with_config().limit(u64::MAX).reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match body.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    out.write_all(&buf[..n])
                        .map_err(|e| FetchError::Fatal(Error::at(part)(e)))?;
                    bar.inc(n as u64);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FetchError::Retry(e.to_string())),
            }
        }
    }

    fn progress_bar(&self, file: &str, size: u64) -> indicatif::ProgressBar {
        if !self.settings.progress {
            return indicatif::ProgressBar::hidden();
        }
        // indicatif draws nothing when stderr is not a terminal.
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(size),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:30!} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        ) {
            bar.set_style(style);
        }
        bar.set_message(file.to_string());
        bar
    }
}

enum FetchError {
    /// The connection dropped or the server had a transient failure: continue from here.
    Retry(String),
    Fatal(Error),
}

/// Size, then the hash the etag is: a 64-hex etag is the LFS oid (sha256 of the content), a
/// 40-hex one a git blob id (sha1 of `blob {size}\0` + content).
fn verify(repo: &str, file: &str, meta: &FileMeta, part: &Path) -> Result<()> {
    let corrupt = |what, expected: String, actual: String| Error::Corrupt {
        repo: repo.into(),
        file: file.into(),
        what,
        expected,
        actual,
    };
    let size = std::fs::metadata(part).map_err(Error::at(part))?.len();
    if size != meta.size {
        return Err(corrupt("size", meta.size.to_string(), size.to_string()));
    }
    let hex = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
    let etag = meta.etag.to_ascii_lowercase();
    let mut f = std::fs::File::open(part).map_err(Error::at(part))?;
    let mut buf = vec![0u8; 1 << 20];
    if etag.len() == 64 && hex(&etag) {
        let mut h = sha2::Sha256::new();
        loop {
            let n = f.read(&mut buf).map_err(Error::at(part))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let actual: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if actual != etag {
            return Err(corrupt("sha256", etag, actual));
        }
    } else if etag.len() == 40 && hex(&etag) {
        let mut h = sha1_smol::Sha1::new();
        h.update(format!("blob {size}\0").as_bytes());
        loop {
            let n = f.read(&mut buf).map_err(Error::at(part))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let actual = h.digest().to_string();
        if actual != etag {
            return Err(corrupt("git blob sha1", etag, actual));
        }
    } else {
        return Err(corrupt(
            "an ETag that is no hash;",
            "a sha256 or git sha1".into(),
            meta.etag.clone(),
        ));
    }
    Ok(())
}
