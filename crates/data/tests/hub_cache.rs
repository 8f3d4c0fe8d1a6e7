//! A hub id resolves through the local Hugging Face cache; when absent, the error says where it
//! looked. Its own test binary because it sets HF_HUB_CACHE.

use runner_data::testing::write_tiny_tokenizer;
use runner_data::tokenizer::{TextTokenizer, TokenizerOverrides};
use runner_data::{PrepareOptions, prepare_with};
use runner_recipe::plan::*;

fn plan(path: &str, name: Option<&str>, prepared: &std::path::Path) -> DataPlan {
    DataPlan {
        datasets: vec![DatasetPlan {
            path: path.into(),
            split: "train".into(),
            data_files: vec![],
            ds_type: None,
            name: name.map(Into::into),
            revision: None,
            format: DatasetFormat::Completion {
                field: "text".into(),
            },
        }],
        test_datasets: vec![],
        prepared_path: prepared.to_path_buf(),
        val_set: ValSet::None,
        sequence_len: 64,
        excess_length_strategy: ExcessLength::Drop,
        sample_packing: false,
        eval_sample_packing: false,
        pad_to_sequence_len: false,
        train_on_inputs: false,
        chat_template: ChatTemplate::TokenizerDefault,
        default_system_message: None,
        shuffle_merged_datasets: false,
        processes: Some(1),
        seed: 1,
    }
}

#[test]
fn hub_ids_resolve_through_the_local_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let repo = cache.join("datasets--acme--tiny-text");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd\n").unwrap();
    let snap = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(snap.join("data")).unwrap();
    std::fs::create_dir_all(snap.join("small")).unwrap();
    std::fs::write(
        snap.join("data/train-00000-of-00001.jsonl"),
        "{\"text\": \"a\"}\n{\"text\": \"b\"}\n",
    )
    .unwrap();
    std::fs::write(snap.join("small/train.jsonl"), "{\"text\": \"c\"}\n").unwrap();
    // SAFETY: this test binary has a single test; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("HF_HUB_CACHE", &cache) };
    write_tiny_tokenizer(&tmp.path().join("tok"), false).unwrap();
    let tok = TextTokenizer::load(&tmp.path().join("tok"), &TokenizerOverrides::default()).unwrap();
    let opts = PrepareOptions {
        no_write: true,
        ..Default::default()
    };

    let out = prepare_with(&plan("acme/tiny-text", None, tmp.path()), &tok, opts).unwrap();
    assert_eq!(out.train.len(), 3, "no config name: every train file");
    let out = prepare_with(
        &plan("acme/tiny-text", Some("small"), tmp.path()),
        &tok,
        opts,
    )
    .unwrap();
    assert_eq!(out.train.len(), 1, "config `small`");

    let err = prepare_with(&plan("acme/missing", None, tmp.path()), &tok, opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("acme/missing") && err.contains("datasets--acme--missing"),
        "{err}"
    );
    assert!(err.contains("HF_HOME"), "{err}");
}
