//! The Hub protocol against a Hub on the loopback interface (`fixture`): downloads land in the
//! standard cache layout, gated repos need a token, interrupted downloads continue, damaged
//! files never get their final name, offline mode names what is missing.

mod fixture;

use fixture::{File, Hub, Repo, State, file, git_sha1, sha256};
use runner_hub::{Kind, Need, Request, Settings};
use std::path::Path;

const C1: &str = "1111111111111111111111111111111111111111";
const C2: &str = "2222222222222222222222222222222222222222";

/// Bytes that look like a shard: large enough to be cut mid-way.
fn shard(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn model_files() -> Vec<File> {
    let index = r#"{"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#;
    vec![
        file(".gitattributes", b"*.safetensors filter=lfs", false),
        file("README.md", b"# tiny", false),
        file("config.json", br#"{"model_type":"llama"}"#, false),
        file("tokenizer.json", br#"{"version":"1.0"}"#, false),
        file("tokenizer_config.json", br#"{}"#, false),
        file("model.safetensors.index.json", index.as_bytes(), false),
        file("model-00001-of-00002.safetensors", &shard(1, 300_000), true),
        file("model-00002-of-00002.safetensors", &shard(2, 200_000), true),
        file("pytorch_model.bin", &shard(3, 1000), true),
    ]
}

fn model(id: &str, gated: bool) -> Repo {
    Repo {
        kind: "models",
        id: id.into(),
        revisions: vec![("main".into(), C1.into(), model_files())],
        gated,
    }
}

fn settings(hub: &Hub, cache: &Path) -> Settings {
    Settings {
        cache: cache.to_path_buf(),
        endpoint: hub.url.clone(),
        token: None,
        offline: false,
        progress: false,
    }
}

fn req(kind: Kind, repo: &str, need: Need) -> Request<'_> {
    Request {
        kind,
        repo,
        revision: None,
        need,
        data_files: &[],
        name: None,
        refresh: false,
    }
}

#[test]
fn issue_15_a_model_downloads_into_the_hugging_face_cache_layout() {
    let hub = Hub::start(State {
        repos: vec![model("org/tiny", false)],
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(&hub, tmp.path());

    // The configuration and tokenizer first (a dry run), then the weights.
    let cfg = runner_hub::resolve(&s, &req(Kind::Model, "org/tiny", Need::CONFIG)).unwrap();
    assert_eq!(cfg.commit, C1);
    assert!(cfg.dir.join("tokenizer.json").is_file());
    assert!(!cfg.dir.join("model.safetensors.index.json").exists());
    let snap = runner_hub::resolve(&s, &req(Kind::Model, "org/tiny", Need::ALL)).unwrap();
    let repo = tmp.path().join("models--org--tiny");
    assert_eq!(snap.dir, repo.join("snapshots").join(C1));
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), C1);
    assert_eq!(
        snap.downloaded,
        [
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"
        ]
    );
    // Blobs are named by the LFS sha256 or the git blob sha1; snapshot entries link to them.
    let s1 = shard(1, 300_000);
    let link = std::fs::read_link(snap.dir.join("model-00001-of-00002.safetensors")).unwrap();
    assert_eq!(link, Path::new("../../blobs").join(sha256(&s1)));
    assert_eq!(
        std::fs::read(snap.dir.join("model-00001-of-00002.safetensors")).unwrap(),
        s1
    );
    let cfg_blob = repo
        .join("blobs")
        .join(git_sha1(br#"{"model_type":"llama"}"#));
    assert!(cfg_blob.is_file());
    // Never a pickle, never README or .gitattributes.
    let log = hub.log();
    assert!(
        !log.iter()
            .any(|l| l.contains(".bin") || l.contains("README")),
        "{log:?}"
    );
    assert!(!snap.dir.join("pytorch_model.bin").exists());
    let no_incomplete = std::fs::read_dir(repo.join("blobs")).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".incomplete")
    });
    assert!(no_incomplete);

    // Complete in the cache: no request at all the second time.
    let before = hub.log().len();
    let again = runner_hub::resolve(&s, &req(Kind::Model, "org/tiny", Need::ALL)).unwrap();
    assert_eq!(again.dir, snap.dir);
    assert!(again.downloaded.is_empty());
    assert_eq!(hub.log().len(), before);
}

#[test]
fn issue_15_a_gated_repo_without_a_token_names_hf_token_and_login() {
    let hub = Hub::start(State {
        repos: vec![model("org/gated", true)],
        token: Some("hf_good".into()),
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings(&hub, tmp.path());
    let e = runner_hub::resolve(&s, &req(Kind::Model, "org/gated", Need::CONFIG))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gated") && e.contains("HF_TOKEN") && e.contains("huggingface-cli login"),
        "{e}"
    );
    assert!(e.contains("no token was given") && e.contains("401"), "{e}");
    assert!(!tmp.path().join("models--org--gated/snapshots").exists());

    s.token = Some("hf_wrong".into());
    let e = runner_hub::resolve(&s, &req(Kind::Model, "org/gated", Need::CONFIG))
        .unwrap_err()
        .to_string();
    assert!(e.contains("403") && e.contains("has no access"), "{e}");

    s.token = Some("hf_good".into());
    let snap = runner_hub::resolve(&s, &req(Kind::Model, "org/gated", Need::CONFIG)).unwrap();
    assert!(snap.dir.join("config.json").is_file());

    let e = runner_hub::resolve(&s, &req(Kind::Model, "org/absent", Need::CONFIG))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not found") && e.contains("org/absent"), "{e}");
}

#[test]
fn issue_15_an_interrupted_download_resumes_with_a_range_request() {
    let name = "model-00001-of-00002.safetensors";
    let hub = Hub::start(State {
        repos: vec![model("org/tiny", false)],
        drop_after: Some((name.into(), 100_000)),
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(&hub, tmp.path());
    let snap = runner_hub::resolve(&s, &req(Kind::Model, "org/tiny", Need::ALL)).unwrap();
    assert_eq!(
        std::fs::read(snap.dir.join(name)).unwrap(),
        shard(1, 300_000)
    );
    let sha = sha256(&shard(1, 300_000));
    let gets: Vec<String> = hub
        .log()
        .into_iter()
        .filter(|l| l.starts_with("GET") && l.contains(&sha))
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(gets[1].ends_with("bytes=100000-"), "{gets:?}");

    // A partial file left by an earlier run is continued, not restarted.
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(&hub, tmp.path());
    let blobs = tmp.path().join("models--org--tiny/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(
        blobs.join(format!("{sha}.incomplete")),
        &shard(1, 300_000)[..123_456],
    )
    .unwrap();
    let snap = runner_hub::resolve(&s, &req(Kind::Model, "org/tiny", Need::ALL)).unwrap();
    assert_eq!(
        std::fs::read(snap.dir.join(name)).unwrap(),
        shard(1, 300_000)
    );
    let log = hub.log();
    assert!(
        log.iter()
            .any(|l| l.contains(&sha) && l.ends_with("bytes=123456-")),
        "{log:?}"
    );
}

#[test]
fn issue_15_a_corrupt_file_is_detected_and_never_placed() {
    let name = "model-00002-of-00002.safetensors";
    let hub = Hub::start(State {
        repos: vec![model("org/tiny", false)],
        corrupt: vec![name.into()],
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(&hub, tmp.path());
    let e = runner_hub::resolve(&s, &req(Kind::Model, "org/tiny", Need::ALL))
        .unwrap_err()
        .to_string();
    let sha = sha256(&shard(2, 200_000));
    assert!(
        e.contains(name) && e.contains("sha256") && e.contains(&sha),
        "{e}"
    );
    let blobs = tmp.path().join("models--org--tiny/blobs");
    assert!(!blobs.join(&sha).exists());
    assert!(!blobs.join(format!("{sha}.incomplete")).exists());
    // No snapshot entry for the weights: the snapshot is not half-made.
    assert!(
        !tmp.path()
            .join("models--org--tiny/snapshots")
            .join(C1)
            .join(name)
            .exists()
    );
}

#[test]
fn issue_15_offline_mode_names_what_is_missing() {
    let hub = Hub::start(State {
        repos: vec![model("org/tiny", false)],
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings(&hub, tmp.path());
    s.offline = true;
    let e = runner_hub::resolve(&s, &req(Kind::Model, "org/tiny", Need::ALL))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("HF_HUB_OFFLINE")
            && e.contains("org/tiny")
            && e.contains("models--org--tiny")
            && e.contains("runner fetch")
            && e.contains("huggingface-cli download org/tiny"),
        "{e}"
    );
    assert!(hub.log().is_empty(), "offline: no request");

    // With the configuration only in the cache: the weights are what is missing.
    s.offline = false;
    runner_hub::resolve(&s, &req(Kind::Model, "org/tiny", Need::CONFIG)).unwrap();
    s.offline = true;
    let ok = runner_hub::resolve(&s, &req(Kind::Model, "org/tiny", Need::CONFIG)).unwrap();
    assert_eq!(ok.commit, C1);
    let e = runner_hub::resolve(&s, &req(Kind::Model, "org/tiny", Need::ALL))
        .unwrap_err()
        .to_string();
    // The index was not fetched with the configuration: the shards are not known by name.
    assert!(e.contains("missing the weights (*.safetensors)"), "{e}");
}

#[test]
fn issue_15_datasets_download_their_data_or_the_parquet_branch() {
    let hub = Hub::start(State {
        repos: vec![
            Repo {
                kind: "datasets",
                id: "org/rows".into(),
                revisions: vec![(
                    "main".into(),
                    C1.into(),
                    vec![
                        file("README.md", b"# rows", false),
                        file("data/train.jsonl", b"{\"text\":\"a\"}\n", true),
                        file("dataset_info.json", b"{}", false),
                    ],
                )],
                gated: false,
            },
            Repo {
                kind: "datasets",
                id: "org/scripted".into(),
                revisions: vec![
                    (
                        "main".into(),
                        C1.into(),
                        vec![file("scripted.py", b"x", false)],
                    ),
                    (
                        "refs/convert/parquet".into(),
                        C2.into(),
                        vec![file("default/train/0000.parquet", b"PAR1", true)],
                    ),
                ],
                gated: false,
            },
        ],
        renamed: [("old/rows".to_string(), "org/rows".to_string())].into(),
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(&hub, tmp.path());
    let rows = runner_hub::resolve(&s, &req(Kind::Dataset, "org/rows", Need::ALL)).unwrap();
    assert_eq!(rows.downloaded, ["data/train.jsonl"]);
    assert_eq!(
        std::fs::read_link(rows.dir.join("data/train.jsonl")).unwrap(),
        Path::new("../../../blobs").join(sha256(b"{\"text\":\"a\"}\n"))
    );
    assert!(rows.dir.starts_with(tmp.path().join("datasets--org--rows")));
    assert!(
        hub.log()
            .iter()
            .any(|l| l.starts_with("HEAD /datasets/org/rows/resolve/"))
    );

    let conv = runner_hub::resolve(&s, &req(Kind::Dataset, "org/scripted", Need::ALL)).unwrap();
    assert_eq!(conv.commit, C2);
    assert_eq!(conv.revision, "refs/convert/parquet");
    assert!(conv.dir.join("default/train/0000.parquet").is_file());
    let refs = tmp
        .path()
        .join("datasets--org--scripted/refs/refs/convert/parquet");
    assert_eq!(std::fs::read_to_string(refs).unwrap(), C2);
    // And found again in the cache without the network.
    let n = hub.log().len();
    let again = runner_hub::resolve(&s, &req(Kind::Dataset, "org/scripted", Need::ALL)).unwrap();
    assert_eq!((again.commit.as_str(), hub.log().len()), (C2, n));

    // A renamed repo's relative redirect is followed for files.
    let tmp2 = tempfile::tempdir().unwrap();
    let s2 = settings(&hub, tmp2.path());
    let e = runner_hub::resolve(&s2, &req(Kind::Dataset, "old/rows", Need::ALL));
    // The listing API of a renamed repo redirects too; the client follows it.
    let snap = e.unwrap();
    assert!(snap.dir.join("data/train.jsonl").is_file());
}

#[test]
fn issue_15_pickle_only_models_are_refused_before_any_download() {
    let hub = Hub::start(State {
        repos: vec![Repo {
            kind: "models",
            id: "org/pickled".into(),
            revisions: vec![(
                "main".into(),
                C1.into(),
                vec![
                    file("config.json", b"{}", false),
                    file("pytorch_model.bin", b"\x80\x02", true),
                ],
            )],
            gated: false,
        }],
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(&hub, tmp.path());
    let e = runner_hub::resolve(&s, &req(Kind::Model, "org/pickled", Need::CONFIG))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pickle") && e.contains("pytorch_model.bin") && e.contains("safetensors"),
        "{e}"
    );
    assert!(
        !hub.log().iter().any(|l| l.contains("/resolve/")),
        "{:?}",
        hub.log()
    );
}
