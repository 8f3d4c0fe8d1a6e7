//! The Hugging Face Hub for every stage, in one place: where the standard cache is
//! ([`cache`]), which files of a repo a run needs ([`select`]), and the few HTTP calls that
//! download them into that cache ([`client`]), so Python tools and runner share one copy.
//!
//! [`resolve`] is the one entry point: a repo id and revision become a snapshot folder with
//! the commit it is pinned to. A snapshot already in the cache with the needed files is used
//! as it is, without the network; otherwise the missing files are downloaded (unless
//! `HF_HUB_OFFLINE` is set, when the error names what is missing and how to fetch it).
//! Pickle weights (`.bin`, `.pt`, `.pth`) are never downloaded.

pub mod cache;
pub mod client;
pub mod select;

use std::path::{Path, PathBuf};

/// What went wrong looking up or downloading a repo.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "`{repo}` ({kind}) is not in the Hugging Face cache{}, and HF_HUB_OFFLINE is set: \
         missing {}. On a machine with network, run `runner fetch RECIPE` (or `{}`) with \
         HF_HUB_CACHE pointing at a cache you then copy here, or unset HF_HUB_OFFLINE",
        revision.as_deref().map(|r| format!(" at revision `{r}`")).unwrap_or_default(),
        missing.join(", "),
        cli_hint(*kind, repo, revision.as_deref())
    )]
    Offline {
        kind: Kind,
        repo: String,
        revision: Option<String>,
        missing: Vec<String>,
    },

    #[error(
        "`{repo}` ({kind}) is gated or private and {}: HTTP {status} from {url}. {}Accept its \
         conditions on the Hub page, then set HF_TOKEN (or run `huggingface-cli login`)",
        if *with_token { "the token given has no access to it" } else { "no token was given" },
        if *with_token { "Check that HF_TOKEN is a token of an account with access. " } else { "" }
    )]
    Gated {
        kind: Kind,
        repo: String,
        status: u16,
        url: String,
        with_token: bool,
    },

    #[error(
        "`{repo}` ({kind}) was not found on {endpoint}{}: check the id (models and datasets \
         are `org/name`; a local path must exist); a private repo needs HF_TOKEN (or \
         `huggingface-cli login`)",
        if *with_token { "" } else { " (no token was given)" }
    )]
    RepoNotFound {
        kind: Kind,
        repo: String,
        endpoint: String,
        with_token: bool,
    },

    #[error(
        "`{repo}` ({kind}) has no revision `{revision}` on the Hub: name a branch, tag or commit it has"
    )]
    RevisionNotFound {
        kind: Kind,
        repo: String,
        revision: String,
    },

    #[error(
        "`{repo}` has only pickle weights ({}); runner never downloads pickle files (loading \
         them can run code). Use a repo or revision with `.safetensors` weights (many have a \
         `refs/pr/N` \"Adding safetensors variant\" revision: set `revision`), or convert them \
         yourself and point `base_model` at the folder",
        files.join(", ")
    )]
    PickleOnly { repo: String, files: Vec<String> },

    #[error("`{repo}` has no weights runner can load: {message}")]
    NoWeights { repo: String, message: String },

    #[error(
        "`{repo}` (dataset) has no .parquet, .jsonl, .json, .csv or .arrow files at `{revision}` \
         nor in its `refs/convert/parquet` branch: point `path` at a local copy of the data"
    )]
    NoDataFiles { repo: String, revision: String },

    #[error(
        "could not reach the Hub at {endpoint} for `{repo}`: {message}. Check the network (or \
         HF_ENDPOINT); on a machine without network, run `runner fetch RECIPE` where there is \
         one and copy the cache (HF_HUB_CACHE), then set HF_HUB_OFFLINE=1"
    )]
    Network {
        endpoint: String,
        repo: String,
        message: String,
    },

    #[error("the Hub answered HTTP {status} for {url}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Http {
        status: u16,
        url: String,
        message: String,
    },

    #[error("the Hub's answer for {url} is not what runner expects: {message}")]
    Protocol { url: String, message: String },

    #[error(
        "`{file}` of `{repo}` downloaded with {what} {actual} but the Hub says {expected}; the \
         download was removed, nothing was placed in the cache. Run again; if it persists, \
         the server at HF_ENDPOINT serves damaged files"
    )]
    Corrupt {
        repo: String,
        file: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A closure for `map_err` that attaches `path`.
    pub fn at(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A model repo or a dataset repo: they live in separate namespaces on the Hub and in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Model,
    Dataset,
}

impl Kind {
    /// The plural the cache folders and API paths use (`models`, `datasets`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Model => "models",
            Kind::Dataset => "datasets",
        }
    }

    /// The prefix of file URLs (`/{prefix}{repo}/resolve/...`).
    fn url_prefix(self) -> &'static str {
        match self {
            Kind::Model => "",
            Kind::Dataset => "datasets/",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Model => "model",
            Kind::Dataset => "dataset",
        })
    }
}

/// The Python command that downloads the same thing, for messages.
fn cli_hint(kind: Kind, repo: &str, revision: Option<&str>) -> String {
    let mut s = String::from("huggingface-cli download ");
    if kind == Kind::Dataset {
        s.push_str("--repo-type dataset ");
    }
    s.push_str(repo);
    if let Some(r) = revision {
        s.push_str(&format!(" --revision {r}"));
    }
    if kind == Kind::Model {
        s.push_str(" --include '*.json' '*.safetensors' tokenizer.model");
    }
    s
}

/// Which files of a model repo a caller needs. Dataset repos always need their data files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// `config.json` (and `generation_config.json` when the repo has one).
    pub config: bool,
    /// The tokenizer files; `tokenizer.json` must be in the cache for the need to be met.
    pub tokenizer: bool,
    /// The safetensors weights (and their index).
    pub weights: bool,
}

impl Need {
    /// Everything a run reads.
    pub const ALL: Need = Need {
        config: true,
        tokenizer: true,
        weights: true,
    };
    /// What `runner run --dry-run` reads: the configuration (the tokenizer is fetched along
    /// when a download happens anyway, but a cache holding `config.json` alone is enough).
    pub const CONFIG: Need = Need {
        config: true,
        tokenizer: false,
        weights: false,
    };
    /// A tokenizer alone (`tokenizer_config` naming another repo).
    pub const TOKENIZER: Need = Need {
        config: false,
        tokenizer: true,
        weights: false,
    };
}

/// One repo to resolve.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub kind: Kind,
    pub repo: &'a str,
    /// A branch, tag or commit; `main` when `None`.
    pub revision: Option<&'a str>,
    pub need: Need,
    /// For datasets: the `data_files` entries (file names or globs) to download instead of
    /// every data file.
    pub data_files: &'a [String],
    /// For datasets: the configuration (`name`), whose folder is downloaded alone when the
    /// repo has one.
    pub name: Option<&'a str>,
    /// Ask the Hub even when the cache already has what is needed (`runner fetch`), so a branch
    /// moves to its newest commit.
    pub refresh: bool,
}

/// Where a repo resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub kind: Kind,
    pub repo: String,
    /// The revision that was asked for (`main` when none was).
    pub revision: String,
    /// The commit the snapshot is pinned to.
    pub commit: String,
    /// `{cache}/{kind}s--{org}--{name}/snapshots/{commit}`.
    pub dir: PathBuf,
    /// The files downloaded by this call (repo-relative names) and their bytes.
    pub downloaded: Vec<String>,
    pub bytes: u64,
}

/// Where the cache is, where the Hub is, and how to talk to it: read from the environment as
/// `huggingface_hub` reads it.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cache: PathBuf,
    /// `HF_ENDPOINT`, default `https://huggingface.co`, without a trailing `/`.
    pub endpoint: String,
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is true: never touch the network.
    pub offline: bool,
    /// Draw download progress bars (on a terminal only).
    pub progress: bool,
}

impl Settings {
    pub fn from_env() -> Settings {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let truthy = |k: &str| {
            var(k).is_some_and(|v| {
                matches!(
                    v.trim().to_ascii_uppercase().as_str(),
                    "1" | "ON" | "YES" | "TRUE"
                )
            })
        };
        Settings {
            cache: cache::cache_dir(),
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            token: token_from_env(),
            offline: truthy("HF_HUB_OFFLINE") || truthy("TRANSFORMERS_OFFLINE"),
            progress: true,
        }
    }
}

/// The token as `huggingface_hub` finds it: `HF_TOKEN`, `HUGGING_FACE_HUB_TOKEN`, then the file
/// `huggingface-cli login` writes (`HF_TOKEN_PATH`, default `$HF_HOME/token`).
fn token_from_env() -> Option<String> {
    let clean = |s: String| Some(s.trim().to_string()).filter(|t| !t.is_empty());
    if let Some(t) = std::env::var("HF_TOKEN")
        .ok()
        .or_else(|| std::env::var("HUGGING_FACE_HUB_TOKEN").ok())
        .and_then(clean)
    {
        return Some(t);
    }
    let path = std::env::var_os("HF_TOKEN_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| cache::hf_home().join("token"));
    std::fs::read_to_string(path).ok().and_then(clean)
}

/// Whether `s` reads as a hub repo id (`org/name`), not a path.
pub fn is_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && !s.starts_with('.')
        && !s.ends_with(".gguf")
        && parts.iter().all(|p| {
            !p.is_empty()
                && p != &"."
                && p != &".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// The snapshot of `req.repo`: the cached one when it has what `req.need` asks for (no
/// network), else downloaded into the cache. See the crate documentation.
pub fn resolve(settings: &Settings, req: &Request) -> Result<Snapshot> {
    let rev = req.revision.unwrap_or("main");
    let local = cache::find(&settings.cache, req.kind, req.repo, req.revision);
    if let Some((commit, dir)) = &local {
        let missing = cache::missing(req.kind, req.need, dir);
        if missing.is_empty() && (!req.refresh || settings.offline) {
            return Ok(Snapshot {
                kind: req.kind,
                repo: req.repo.to_string(),
                revision: rev.to_string(),
                commit: commit.clone(),
                dir: dir.clone(),
                downloaded: Vec::new(),
                bytes: 0,
            });
        }
    }
    if settings.offline {
        let missing = match &local {
            Some((_, dir)) => cache::missing(req.kind, req.need, dir),
            None => vec![format!(
                "the whole repo (no snapshot in {})",
                cache::repo_dir(&settings.cache, req.kind, req.repo).display()
            )],
        };
        return Err(Error::Offline {
            kind: req.kind,
            repo: req.repo.to_string(),
            revision: req.revision.map(str::to_string),
            missing,
        });
    }
    client::Client::new(settings).download(req)
}
