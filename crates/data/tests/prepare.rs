//! The whole stage on small generated datasets: every format from every source, the cache,
//! lengths, splits, packing, and bad input. Uses a tiny byte-level tokenizer written by the test.

use arrow_array::RecordBatch;
use runner_data::sample::IGNORE;
use runner_data::testing::write_tiny_tokenizer;
use runner_data::tokenizer::{TextTokenizer, TokenizerOverrides};
use runner_data::{DataError, PrepareOptions, prepare, prepare_with};
use runner_recipe::plan::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn tokenizer(dir: &Path, add_bos: bool) -> TextTokenizer {
    let d = dir.join(if add_bos { "tok-bos" } else { "tok" });
    write_tiny_tokenizer(&d, add_bos).unwrap();
    TextTokenizer::load(&d, &TokenizerOverrides::default()).unwrap()
}

fn plan(datasets: Vec<DatasetPlan>, prepared: &Path) -> DataPlan {
    DataPlan {
        datasets,
        test_datasets: vec![],
        prepared_path: prepared.to_path_buf(),
        val_set: ValSet::None,
        sequence_len: 512,
        excess_length_strategy: ExcessLength::Drop,
        sample_packing: false,
        eval_sample_packing: false,
        pad_to_sequence_len: false,
        train_on_inputs: false,
        chat_template: ChatTemplate::TokenizerDefault,
        default_system_message: None,
        shuffle_merged_datasets: false,
        processes: Some(2),
        seed: 42,
    }
}

fn ds(path: &Path, format: DatasetFormat) -> DatasetPlan {
    DatasetPlan {
        path: path.to_string_lossy().into(),
        split: "train".into(),
        data_files: vec![],
        ds_type: None,
        name: None,
        revision: None,
        format,
    }
}

fn sharegpt() -> DatasetFormat {
    DatasetFormat::ChatTemplate(ChatFormat {
        template: ChatTemplate::TokenizerDefault,
        field_messages: "conversations".into(),
        role_key: "from".into(),
        content_key: "value".into(),
        roles: vec![
            RoleMapping {
                role: "user".into(),
                aliases: vec!["human".into()],
            },
            RoleMapping {
                role: "assistant".into(),
                aliases: vec!["gpt".into()],
            },
        ],
        roles_to_train: vec!["assistant".into()],
        train_on_eos: TrainOnEos::Turn,
        drop_system_message: false,
        extras: Default::default(),
    })
}

fn custom() -> DatasetFormat {
    DatasetFormat::CustomAlpaca(CustomAlpaca {
        field_system: "system".into(),
        field_instruction: "q".into(),
        field_input: "ctx".into(),
        field_output: "a".into(),
        format: "Q: {instruction}\nC: {input}\nA: ".into(),
        no_input_format: "Q: {instruction}\nA: ".into(),
        system_format: "{system}\n".into(),
        system_prompt: "".into(),
    })
}

/// (name, format, rows, flat enough for CSV)
fn cases() -> Vec<(&'static str, DatasetFormat, Vec<Value>, bool)> {
    vec![
        (
            "alpaca",
            DatasetFormat::Alpaca(AlpacaVariant::Alpaca),
            vec![
                json!({"instruction": "Say hi", "input": "", "output": "hi there"}),
                json!({"instruction": "Add", "input": "2 and 3", "output": "5"}),
            ],
            true,
        ),
        (
            "custom",
            custom(),
            vec![
                json!({"q": "Why?", "ctx": "", "a": "Because."}),
                json!({"q": "Who?", "ctx": "story", "a": "Me."}),
            ],
            true,
        ),
        (
            "chat",
            sharegpt(),
            vec![
                json!({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}),
                json!({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
                    {"from": "human", "value": "c"}, {"from": "gpt", "value": "d"}]}),
            ],
            false,
        ),
        (
            "completion",
            DatasetFormat::Completion {
                field: "text".into(),
            },
            vec![
                json!({"text": "the cat sat"}),
                json!({"text": "in the hat"}),
            ],
            true,
        ),
        (
            "input_output",
            DatasetFormat::InputOutput,
            vec![
                json!({"segments": [{"text": "Q: hi\n", "label": false}, {"text": "A: hello", "label": true}]}),
            ],
            false,
        ),
        (
            "pretokenized",
            DatasetFormat::Pretokenized,
            vec![
                json!({"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}),
                json!({"input_ids": [8, 9]}),
            ],
            false,
        ),
    ]
}

fn record_batch(rows: &[Value]) -> RecordBatch {
    let schema =
        arrow_json::reader::infer_json_schema_from_iterator(rows.iter().map(|r| Ok(r.clone())))
            .unwrap();
    let mut dec = arrow_json::ReaderBuilder::new(Arc::new(schema))
        .build_decoder()
        .unwrap();
    dec.serialize(rows).unwrap();
    dec.flush().unwrap().unwrap()
}

/// Writes rows in every source format this case allows; returns the paths.
fn write_sources(dir: &Path, name: &str, rows: &[Value], csv_ok: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let jsonl = dir.join(format!("{name}.jsonl"));
    std::fs::write(
        &jsonl,
        rows.iter()
            .map(|r| r.to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    out.push(jsonl);
    let json = dir.join(format!("{name}.json"));
    std::fs::write(&json, Value::Array(rows.to_vec()).to_string()).unwrap();
    out.push(json);
    let batch = record_batch(rows);
    let pq = dir.join(format!("{name}.parquet"));
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&pq).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    out.push(pq);
    let af = dir.join(format!("{name}.file.arrow"));
    let mut w = arrow_ipc::writer::FileWriter::try_new(
        std::fs::File::create(&af).unwrap(),
        &batch.schema(),
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    out.push(af);
    let as_ = dir.join(format!("{name}.stream.arrow"));
    let mut w = arrow_ipc::writer::StreamWriter::try_new(
        std::fs::File::create(&as_).unwrap(),
        &batch.schema(),
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    out.push(as_);
    if csv_ok {
        let csv = dir.join(format!("{name}.csv"));
        let mut w = csv::Writer::from_path(&csv).unwrap();
        let keys: Vec<String> = rows[0].as_object().unwrap().keys().cloned().collect();
        w.write_record(&keys).unwrap();
        for r in rows {
            w.write_record(keys.iter().map(|k| r[k].as_str().unwrap()))
                .unwrap();
        }
        w.flush().unwrap();
        out.push(csv);
    }
    out
}

#[test]
fn every_format_loads_from_every_source() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer(tmp.path(), false);
    for (name, format, rows, csv_ok) in cases() {
        let mut reference = None;
        for src in write_sources(tmp.path(), name, &rows, csv_ok) {
            let p = plan(vec![ds(&src, format.clone())], &tmp.path().join("prepared"));
            let out = prepare_with(
                &p,
                &tok,
                PrepareOptions {
                    no_write: true,
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{name} from {}: {e}", src.display()));
            assert_eq!(out.train.len(), rows.len(), "{name} from {}", src.display());
            match &reference {
                None => reference = Some(out.train),
                Some(r) => assert_eq!(
                    &out.train,
                    r,
                    "{name} from {} differs from JSONL",
                    src.display()
                ),
            }
        }
    }
}

fn decode(tok: &TextTokenizer, ids: &[u32]) -> String {
    ids.iter().map(|&i| tok.decode_one(i)).collect()
}

fn trained_text(tok: &TextTokenizer, s: &runner_data::sample::Sample) -> String {
    let ids: Vec<u32> = s
        .labels
        .iter()
        .filter(|&&l| l != IGNORE)
        .map(|&l| l as u32)
        .collect();
    decode(tok, &ids)
}

#[test]
fn formats_mask_what_axolotl_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer(tmp.path(), true);
    let prepared = tmp.path().join("prepared");
    let run = |name: &str, format: DatasetFormat, rows: &[Value]| {
        let f = tmp.path().join(format!("{name}.jsonl"));
        std::fs::write(
            &f,
            rows.iter()
                .map(|r| r.to_string() + "\n")
                .collect::<String>(),
        )
        .unwrap();
        prepare(&plan(vec![ds(&f, format)], &prepared), &tok)
            .unwrap()
            .train
    };
    let all = cases();
    // Alpaca: BOS + prompt masked, response + EOS trained.
    let s = &run("alpaca", all[0].1.clone(), &all[0].2[..1])[0];
    assert_eq!(s.input_ids[0], 2, "BOS first");
    assert!(decode(&tok, &s.input_ids).ends_with("### Response:\nhi there<|im_end|>"));
    assert_eq!(trained_text(&tok, s), "hi there<|im_end|>");
    // ShareGPT through roles: both assistant turns and their <|im_end|>, nothing else.
    let s = &run("chat", all[2].1.clone(), &all[2].2[1..])[0];
    assert_eq!(trained_text(&tok, s), "b<|im_end|>d<|im_end|>");
    assert_eq!(
        decode(&tok, &s.input_ids),
        "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\nd<|im_end|>\n"
    );
    // Completion: everything, BOS included, EOS appended.
    let s = &run("completion", all[3].1.clone(), &all[3].2[..1])[0];
    assert_eq!(trained_text(&tok, s), "<s>the cat sat<|im_end|>");
    // input_output: per-segment labels, no special tokens.
    let s = &run("io", all[4].1.clone(), &all[4].2)[0];
    assert_eq!(decode(&tok, &s.input_ids), "Q: hi\nA: hello");
    assert_eq!(trained_text(&tok, s), "A: hello");
    // Pre-tokenized: labels as given, defaulting to the ids.
    let out = run("pre", all[5].1.clone(), &all[5].2);
    assert_eq!(out[0].labels, vec![IGNORE, 6, 7]);
    assert_eq!(out[1].labels, vec![8, 9]);
}

#[test]
fn cache_is_reused_and_rebuilt_when_anything_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer(tmp.path(), false);
    let prepared = tmp.path().join("prepared");
    let f = tmp.path().join("d.jsonl");
    std::fs::write(&f, "{\"text\": \"one\"}\n{\"text\": \"two\"}\n").unwrap();
    let p = plan(
        vec![ds(
            &f,
            DatasetFormat::Completion {
                field: "text".into(),
            },
        )],
        &prepared,
    );
    let a = prepare(&p, &tok).unwrap();
    assert!(!a.summary.reused_cache);
    let b = prepare(&p, &tok).unwrap();
    assert!(b.summary.reused_cache);
    assert_eq!(a.summary.cache_key, b.summary.cache_key);
    assert_eq!(a.train, b.train);
    assert!(
        b.summary
            .to_string()
            .contains(&format!("reused cache {}", a.summary.cache_key))
    );
    // A damaged entry is prepared again, not trusted.
    let entry = prepared.join(&a.summary.cache_key).join("train.arrow");
    let bytes = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &bytes[..bytes.len() / 2]).unwrap();
    let r = prepare(&p, &tok).unwrap();
    assert!(!r.summary.reused_cache);
    assert_eq!(r.train, a.train);
    assert!(prepare(&p, &tok).unwrap().summary.reused_cache);
    // Input bytes change → new key.
    std::fs::write(&f, "{\"text\": \"one\"}\n{\"text\": \"three\"}\n").unwrap();
    let c = prepare(&p, &tok).unwrap();
    assert!(!c.summary.reused_cache);
    assert_ne!(c.summary.cache_key, a.summary.cache_key);
    // A setting changes → new key.
    let mut p2 = p.clone();
    p2.sequence_len = 100;
    let d = prepare(&p2, &tok).unwrap();
    assert!(!d.summary.reused_cache);
    // The tokenizer changes → new key.
    let tok2 = TextTokenizer::load(
        &tmp.path().join("tok"),
        &TokenizerOverrides {
            added_tokens: vec!["<extra>".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let e = prepare(&p, &tok2).unwrap();
    assert!(!e.summary.reused_cache);
    assert_ne!(e.summary.cache_key, c.summary.cache_key);
    // No temporary folders are left.
    for entry in std::fs::read_dir(&prepared).unwrap().flatten() {
        assert!(
            !entry.file_name().to_string_lossy().starts_with(".tmp"),
            "{:?}",
            entry.file_name()
        );
    }
}

#[test]
fn excess_length_strategies() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer(tmp.path(), false);
    let f = tmp.path().join("d.jsonl");
    std::fs::write(
        &f,
        "{\"text\": \"short\"}\n{\"text\": \"this one is far too long for the limit\"}\n",
    )
    .unwrap();
    let mut p = plan(
        vec![ds(
            &f,
            DatasetFormat::Completion {
                field: "text".into(),
            },
        )],
        &tmp.path().join("p"),
    );
    p.sequence_len = 10;
    let out = prepare(&p, &tok).unwrap();
    assert_eq!(out.train.len(), 1);
    assert_eq!(out.summary.rows_dropped_too_long, 1);
    p.excess_length_strategy = ExcessLength::Truncate;
    let out = prepare(&p, &tok).unwrap();
    assert_eq!(out.train.len(), 2);
    assert_eq!(out.summary.rows_truncated, 1);
    assert!(out.train.iter().all(|s| s.len() <= 10));
    p.excess_length_strategy = ExcessLength::Raise;
    let err = prepare(&p, &tok).unwrap_err();
    assert!(matches!(err, DataError::TooLong { .. }), "{err}");
    assert!(err.to_string().contains("d.jsonl, row 2"), "{err}");
}

#[test]
fn val_split_is_deterministic_and_packing_keeps_boundaries() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer(tmp.path(), false);
    let f = tmp.path().join("d.jsonl");
    let rows: String = (0..100)
        .map(|i| format!("{{\"text\": \"row number {i} {}\"}}\n", "x".repeat(i % 17)))
        .collect();
    std::fs::write(&f, rows).unwrap();
    let mut p = plan(
        vec![ds(
            &f,
            DatasetFormat::Completion {
                field: "text".into(),
            },
        )],
        &tmp.path().join("p"),
    );
    p.val_set = ValSet::Fraction(0.1);
    p.shuffle_merged_datasets = true;
    p.sample_packing = true;
    p.sequence_len = 64;
    let a = prepare_with(
        &p,
        &tok,
        PrepareOptions {
            no_write: true,
            ..Default::default()
        },
    )
    .unwrap();
    let b = prepare_with(
        &p,
        &tok,
        PrepareOptions {
            no_write: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(a.eval.len(), 10);
    assert_eq!(a.train.len(), 90);
    assert_eq!(a.eval, b.eval);
    assert_eq!(a.train, b.train);
    p.seed = 7;
    let c = prepare_with(
        &p,
        &tok,
        PrepareOptions {
            no_write: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_ne!(a.eval, c.eval);
    let packs = a.train_packs.as_ref().unwrap();
    let total: usize = packs.iter().map(|p| p.seq_lens.len()).sum();
    assert_eq!(total, 90);
    for pk in packs {
        assert!(pk.len() <= 64);
        let (_, _, position_ids) = pk.row(&a.train);
        let mut pos = 0;
        for &l in &pk.seq_lens {
            assert_eq!(position_ids[pos], 0);
            assert_eq!(position_ids[pos + l as usize - 1], l - 1);
            pos += l as usize;
        }
    }
    // Batches: packs padded to sequence_len, boundaries carried.
    let batches: Vec<_> = a.train_batches(4, tok.pad_id(), &p).collect();
    assert_eq!(batches.len(), packs.len().div_ceil(4));
    assert!(
        batches
            .iter()
            .all(|b| b.input_ids.iter().all(|r| r.len() == 64))
    );
    assert_eq!(batches[0].seq_lens[0], packs[0].seq_lens);
    assert!(a.summary.packing_efficiency.unwrap() > 0.8);
}

#[test]
fn hf_folder_layout_picks_the_split() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer(tmp.path(), false);
    let root = tmp.path().join("ds");
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(
        root.join("data/train-00000-of-00001.jsonl"),
        "{\"text\": \"a\"}\n{\"text\": \"b\"}\n",
    )
    .unwrap();
    std::fs::write(
        root.join("data/test-00000-of-00001.jsonl"),
        "{\"text\": \"c\"}\n",
    )
    .unwrap();
    let mut d = ds(
        &root,
        DatasetFormat::Completion {
            field: "text".into(),
        },
    );
    let p = plan(vec![d.clone()], &tmp.path().join("p"));
    assert_eq!(prepare(&p, &tok).unwrap().train.len(), 2);
    d.split = "test".into();
    let p = plan(vec![d.clone()], &tmp.path().join("p"));
    assert_eq!(prepare(&p, &tok).unwrap().train.len(), 1);
    d.split = "validation".into();
    let err = prepare(&plan(vec![d], &tmp.path().join("p")), &tok).unwrap_err();
    assert!(
        err.to_string().contains("none for split `validation`"),
        "{err}"
    );
    // `data_files`, relative to the folder, globs allowed.
    let mut d = ds(
        &root,
        DatasetFormat::Completion {
            field: "text".into(),
        },
    );
    d.data_files = vec!["data/test-*.jsonl".into()];
    assert_eq!(
        prepare(&plan(vec![d.clone()], &tmp.path().join("p")), &tok)
            .unwrap()
            .train
            .len(),
        1
    );
    d.data_files = vec!["data/nope.jsonl".into()];
    let err = prepare(&plan(vec![d], &tmp.path().join("p")), &tok).unwrap_err();
    assert!(err.to_string().contains("nope.jsonl"), "{err}");
    // A glob.
    let g = ds(
        &root.join("data/*.jsonl"),
        DatasetFormat::Completion {
            field: "text".into(),
        },
    );
    assert_eq!(
        prepare(&plan(vec![g], &tmp.path().join("p")), &tok)
            .unwrap()
            .train
            .len(),
        3
    );
}

fn err_of(tmp: &Path, file: &str, bytes: &[u8], format: DatasetFormat) -> String {
    let tok = tokenizer(tmp, false);
    let f = tmp.join(file);
    std::fs::write(&f, bytes).unwrap();
    let p = plan(vec![ds(&f, format)], &tmp.join("p"));
    let e = prepare(&p, &tok).unwrap_err().to_string();
    // No cache entry may exist after a failure.
    if tmp.join("p").is_dir() {
        assert_eq!(
            std::fs::read_dir(tmp.join("p")).unwrap().count(),
            0,
            "cache left behind after: {e}"
        );
    }
    e
}

#[test]
fn bad_input_names_file_row_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let completion = || DatasetFormat::Completion {
        field: "text".into(),
    };
    let e = err_of(
        t,
        "a.jsonl",
        b"{\"text\": \"ok\"}\n{\"text\": \"broken\"\n",
        completion(),
    );
    assert!(
        e.contains("a.jsonl, row 2") && e.contains("malformed JSON"),
        "{e}"
    );
    let e = err_of(
        t,
        "b.jsonl",
        b"{\"text\": \"ok\"}\n{\"body\": \"x\"}\n",
        completion(),
    );
    assert!(
        e.contains("b.jsonl, row 2, field `text`")
            && e.contains("missing field")
            && e.contains("`body`"),
        "{e}"
    );
    let e = err_of(t, "c.jsonl", b"{\"text\": 5}\n", completion());
    assert!(
        e.contains("c.jsonl, row 1, field `text`")
            && e.contains("expected a string, found a number"),
        "{e}"
    );
    let e = err_of(t, "d.jsonl", b"", completion());
    assert!(e.contains("has no rows"), "{e}");
    let e = err_of(t, "e.jsonl", b"{\"conversations\": []}\n", sharegpt());
    assert!(
        e.contains("e.jsonl, row 1, field `conversations`") && e.contains("no messages"),
        "{e}"
    );
    let e = err_of(
        t,
        "f.jsonl",
        b"{\"text\": \"ok\"}\n{\"text\": \"\xff\xfe\"}\n",
        completion(),
    );
    assert!(
        e.contains("f.jsonl, row 2") && e.contains("not valid UTF-8"),
        "{e}"
    );
    let e = err_of(
        t,
        "g.jsonl",
        b"{\"conversations\": [{\"from\": \"human\", \"value\": 3}]}\n",
        sharegpt(),
    );
    assert!(
        e.contains("field `conversations[0].value`") && e.contains("expected a string"),
        "{e}"
    );
    // A role the template rejects.
    let gemma = match sharegpt() {
        DatasetFormat::ChatTemplate(mut c) => {
            c.template = ChatTemplate::Named(NamedTemplate::Gemma);
            DatasetFormat::ChatTemplate(c)
        }
        _ => unreachable!(),
    };
    let e = err_of(
        t,
        "h.jsonl",
        b"{\"conversations\": [{\"from\": \"system\", \"value\": \"s\"}, {\"from\": \"human\", \"value\": \"q\"}]}\n",
        gemma,
    );
    assert!(
        e.contains("h.jsonl, row 1") && e.contains("System role not supported"),
        "{e}"
    );
    // A truncated Parquet file.
    let rows = vec![json!({"text": "hello"}); 50];
    let paths = write_sources(t, "pq", &rows, false);
    let bytes = std::fs::read(&paths[2]).unwrap();
    let e = err_of(t, "trunc.parquet", &bytes[..bytes.len() / 2], completion());
    assert!(e.contains("trunc.parquet") && e.contains("Parquet"), "{e}");
}

#[test]
fn bad_rows_can_be_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer(tmp.path(), false);
    let f = tmp.path().join("mixed.jsonl");
    std::fs::write(
        &f,
        b"{\"text\": \"ok\"}\n{\"text\": \"broken\"\n{\"body\": 1}\n\xff\n{\"text\": \"fine\"}\n",
    )
    .unwrap();
    let p = plan(
        vec![ds(
            &f,
            DatasetFormat::Completion {
                field: "text".into(),
            },
        )],
        &tmp.path().join("p"),
    );
    let opts = PrepareOptions {
        skip_bad_rows: true,
        no_write: true,
        ..Default::default()
    };
    let out = prepare_with(&p, &tok, opts).unwrap();
    assert_eq!(out.train.len(), 2);
    assert_eq!(out.summary.rows_read, 5);
    assert_eq!(out.summary.rows_skipped_bad, 3);
    let text = out.summary.to_string();
    assert!(
        text.contains("skipped 3 bad rows") && text.contains("mixed.jsonl, row 2"),
        "{text}"
    );
}

#[test]
fn issue_17_group_7_an_empty_training_set_says_why_per_cause_with_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer(tmp.path(), false);
    let completion = || DatasetFormat::Completion {
        field: "text".into(),
    };
    let skip = PrepareOptions {
        skip_bad_rows: true,
        no_write: true,
        ..Default::default()
    };
    // Binary rows skipped by --skip-bad-rows.
    let bin = tmp.path().join("bin.jsonl");
    std::fs::write(&bin, b"\xff\xfe\x00\x01\n\x80\x81\n").unwrap();
    let p = plan(vec![ds(&bin, completion())], &tmp.path().join("p"));
    let e = prepare_with(&p, &tok, skip).unwrap_err().to_string();
    assert!(
        e.contains("no training samples are left")
            && e.contains("2 rows read: 2 skipped as unreadable by --skip-bad-rows")
            && e.contains("not valid UTF-8"),
        "{e}"
    );
    // Rows longer than sequence_len, dropped.
    let long = tmp.path().join("long.jsonl");
    std::fs::write(
        &long,
        format!("{{\"text\": \"{}\"}}\n", "word ".repeat(200)),
    )
    .unwrap();
    let mut p = plan(vec![ds(&long, completion())], &tmp.path().join("p"));
    p.sequence_len = 16;
    let e = prepare_with(&p, &tok, skip).unwrap_err().to_string();
    assert!(
        e.contains("1 dropped as longer than sequence_len 16"),
        "{e}"
    );
    // Every sample taken by the evaluation split.
    let one = tmp.path().join("one.jsonl");
    std::fs::write(&one, "{\"text\": \"a\"}\n").unwrap();
    let mut p = plan(vec![ds(&one, completion())], &tmp.path().join("p"));
    p.val_set = ValSet::Fraction(0.5);
    let e = prepare_with(&p, &tok, skip).unwrap_err().to_string();
    assert!(
        e.contains("1 kept") && e.contains("went to the evaluation set"),
        "{e}"
    );
}

/// Group 5: a template that arrives inside a downloaded tokenizer is held to the same limits.
#[test]
fn issue_17_group_5_a_tokenizer_template_that_never_ends_stops_with_the_row() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tok-loop");
    write_tiny_tokenizer(&dir, false).unwrap();
    let config = json!({
        "bos_token": "<s>", "eos_token": "<|im_end|>",
        "chat_template": "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let tok = TextTokenizer::load(&dir, &TokenizerOverrides::default()).unwrap();
    let f = tmp.path().join("c.jsonl");
    std::fs::write(
        &f,
        "{\"conversations\": [{\"from\": \"human\", \"value\": \"hi\"}, {\"from\": \"gpt\", \"value\": \"yo\"}]}\n",
    )
    .unwrap();
    let p = plan(vec![ds(&f, sharegpt())], &tmp.path().join("p"));
    let started = std::time::Instant::now();
    // Not skippable: the template, not the row, is at fault.
    let opts = PrepareOptions {
        skip_bad_rows: true,
        no_write: true,
        ..Default::default()
    };
    let e = prepare_with(&p, &tok, opts).unwrap_err().to_string();
    assert!(
        e.contains("c.jsonl, row 1") && e.contains("the chat template exceeded its limit"),
        "{e}"
    );
    assert!(started.elapsed().as_secs_f64() < 10.0);
}

#[test]
fn issue_17_group_7_ragged_csv_rows_are_skippable_row_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer(tmp.path(), false);
    let f = tmp.path().join("r.csv");
    std::fs::write(&f, "text\nfirst\nsecond, with a comma\nthird\n").unwrap();
    let p = plan(
        vec![ds(
            &f,
            DatasetFormat::Completion {
                field: "text".into(),
            },
        )],
        &tmp.path().join("p"),
    );
    let mut opts = PrepareOptions {
        no_write: true,
        ..Default::default()
    };
    let e = prepare_with(&p, &tok, opts).unwrap_err().to_string();
    assert!(
        e.contains("r.csv, row 3") && e.contains("the row has 2 fields, the header 1"),
        "{e}"
    );
    opts.skip_bad_rows = true;
    let out = prepare_with(&p, &tok, opts).unwrap();
    assert_eq!(out.train.len(), 2);
    assert_eq!(out.summary.rows_skipped_bad, 1);
}

#[test]
fn issue_17_group_6_a_row_past_the_size_limit_is_refused_before_parsing() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer(tmp.path(), false);
    let f = tmp.path().join("big.jsonl");
    let big = format!("{{\"text\": \"{}\"}}", "x".repeat(3 << 20));
    std::fs::write(
        &f,
        format!("{{\"text\": \"ok\"}}\n{big}\n{{\"text\": \"fine\"}}\n"),
    )
    .unwrap();
    let p = plan(
        vec![ds(
            &f,
            DatasetFormat::Completion {
                field: "text".into(),
            },
        )],
        &tmp.path().join("p"),
    );
    let mut opts = PrepareOptions {
        no_write: true,
        ..Default::default()
    };
    let e = prepare_with(&p, &tok, opts).unwrap_err().to_string();
    assert!(
        e.contains("big.jsonl, row 2")
            && e.contains(&format!("the row is {} bytes", big.len() + 1))
            && e.contains("more than the 1048576 runner reads in one row"),
        "{e}"
    );
    opts.skip_bad_rows = true;
    let out = prepare_with(&p, &tok, opts).unwrap();
    assert_eq!(out.train.len(), 2);
    assert_eq!(out.summary.rows_read, 3);
}

#[test]
fn test_datasets_are_the_eval_set() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer(tmp.path(), false);
    let train = tmp.path().join("train.jsonl");
    let test = tmp.path().join("test.jsonl");
    std::fs::write(
        &train,
        "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": \"c\"}\n",
    )
    .unwrap();
    std::fs::write(&test, "{\"text\": \"z\"}\n").unwrap();
    let completion = || DatasetFormat::Completion {
        field: "text".into(),
    };
    let mut p = plan(vec![ds(&train, completion())], &tmp.path().join("p"));
    p.test_datasets = vec![ds(&test, completion())];
    let out = prepare(&p, &tok).unwrap();
    assert_eq!(out.train.len(), 3);
    assert_eq!(out.eval.len(), 1);
    assert_eq!(decode(&tok, &out.eval[0].input_ids), "z<|im_end|>");
    // Eval comes back from the cache too.
    let again = prepare(&p, &tok).unwrap();
    assert!(again.summary.reused_cache);
    assert_eq!(again.eval, out.eval);
    let batches: Vec<_> = out.eval_batches(8, tok.pad_id(), &p).collect();
    assert_eq!(batches.len(), 1);
}

#[test]
fn datasets_of_different_formats_merge() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer(tmp.path(), false);
    let all = cases();
    let mut datasets = Vec::new();
    let mut rows = 0;
    for (name, format, r, _) in &all {
        let f = tmp.path().join(format!("{name}.jsonl"));
        std::fs::write(
            &f,
            r.iter().map(|x| x.to_string() + "\n").collect::<String>(),
        )
        .unwrap();
        datasets.push(ds(&f, format.clone()));
        rows += r.len();
    }
    let mut p = plan(datasets, &tmp.path().join("p"));
    p.shuffle_merged_datasets = true;
    let out = prepare(&p, &tok).unwrap();
    assert_eq!(out.train.len(), rows);
    assert_eq!(out.summary.datasets.len(), all.len());
    assert_eq!(out.summary.rows_read as usize, rows);
    // Shuffled, but the same multiset of samples as without shuffling.
    p.shuffle_merged_datasets = false;
    let ordered = prepare(&p, &tok).unwrap();
    assert_ne!(out.summary.cache_key, ordered.summary.cache_key);
    let mut a = out.train.clone();
    let mut b = ordered.train.clone();
    a.sort_by(|x, y| x.input_ids.cmp(&y.input_ids));
    b.sort_by(|x, y| x.input_ids.cmp(&y.input_ids));
    assert_eq!(a, b);
}
