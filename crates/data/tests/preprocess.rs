//! `runner preprocess`'s streaming path (issue 14): rows are encoded into a scratch file and the
//! cache written from it a record batch at a time. What it writes and reports must be what the
//! in-memory path gives, byte for byte.

use runner_data::cache::write_samples;
use runner_data::testing::write_tiny_tokenizer;
use runner_data::tokenizer::{TextTokenizer, TokenizerOverrides};
use runner_data::{PrepareOptions, Summary, prepare, prepare_with, preprocess};
use runner_recipe::plan::*;
use std::path::Path;

fn completion(path: &Path) -> DatasetPlan {
    DatasetPlan {
        path: path.to_string_lossy().into(),
        split: "train".into(),
        data_files: vec![],
        ds_type: None,
        name: None,
        revision: None,
        format: DatasetFormat::Completion {
            field: "text".into(),
        },
    }
}

fn comparable(s: &Summary) -> Summary {
    Summary {
        seconds: 0.0,
        reused_cache: false,
        ..s.clone()
    }
}

#[test]
fn issue_14_preprocess_streams_the_cache_the_in_memory_path_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let tokdir = tmp.path().join("tok");
    write_tiny_tokenizer(&tokdir, false).unwrap();
    let tok = TextTokenizer::load(&tokdir, &TokenizerOverrides::default()).unwrap();
    // Two datasets, lengths all different (crossing a record batch: cache.rs's spill test).
    let (a, b) = (tmp.path().join("a.jsonl"), tmp.path().join("b.jsonl"));
    let rows = |n: usize, tag: &str| -> String {
        (0..n)
            .map(|i| format!("{{\"text\": \"{tag} {i} {}\"}}\n", "x".repeat(i * 7 % 41)))
            .collect()
    };
    std::fs::write(&a, rows(500, "a")).unwrap();
    std::fs::write(&b, rows(300, "b")).unwrap();
    let p = DataPlan {
        datasets: vec![completion(&a), completion(&b)],
        test_datasets: vec![],
        prepared_path: tmp.path().join("prepared"),
        val_set: ValSet::Fraction(0.05),
        sequence_len: 64,
        excess_length_strategy: ExcessLength::Drop,
        sample_packing: true,
        eval_sample_packing: false,
        pad_to_sequence_len: false,
        train_on_inputs: false,
        chat_template: ChatTemplate::TokenizerDefault,
        default_system_message: None,
        shuffle_merged_datasets: true,
        processes: Some(2),
        seed: 42,
    };
    let in_memory = prepare_with(
        &p,
        &tok,
        PrepareOptions {
            no_write: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(in_memory.eval.len(), 40);

    let streamed = preprocess(&p, &tok, PrepareOptions::default()).unwrap();
    assert!(!streamed.reused_cache);
    assert_eq!(comparable(&streamed), comparable(&in_memory.summary));

    // The files are the bytes the in-memory samples make, and no scratch file is left.
    let reference = tmp.path().join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    write_samples(&reference.join("train.arrow"), &in_memory.train).unwrap();
    write_samples(&reference.join("eval.arrow"), &in_memory.eval).unwrap();
    for f in ["train.arrow", "eval.arrow"] {
        let got = std::fs::read(streamed.cache_dir.join(f)).unwrap();
        assert!(
            got == std::fs::read(reference.join(f)).unwrap(),
            "{f} differs"
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(&streamed.cache_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["eval.arrow", "summary.json", "train.arrow"]);

    // A second run reports the same from the cache without loading it.
    let again = preprocess(&p, &tok, PrepareOptions::default()).unwrap();
    assert!(again.reused_cache);
    assert_eq!(comparable(&again), comparable(&in_memory.summary));

    // Training reads the same samples back and packs them the same way.
    let loaded = prepare(&p, &tok).unwrap();
    assert!(loaded.summary.reused_cache);
    assert_eq!(loaded.train, in_memory.train);
    assert_eq!(loaded.eval, in_memory.eval);
    assert_eq!(loaded.train_packs, in_memory.train_packs);

    // Training on a cache miss goes through the same streaming writer.
    let forced = prepare_with(
        &p,
        &tok,
        PrepareOptions {
            force: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!forced.summary.reused_cache);
    assert_eq!(forced.train, in_memory.train);
    assert_eq!(forced.eval, in_memory.eval);
    assert_eq!(forced.train_packs, in_memory.train_packs);
    assert_eq!(comparable(&forced.summary), comparable(&in_memory.summary));
}
