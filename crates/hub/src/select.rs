//! Which files of a repo a run needs, from the Hub's file listing: for a model, `config.json`,
//! `generation_config.json`, the tokenizer files and the safetensors weights (the shards its
//! index names); for a dataset, its data files. Pickle weights are never chosen.

use crate::{Error, Need, Result};
use std::path::Path;

/// The index of sharded safetensors weights.
pub const INDEX: &str = "model.safetensors.index.json";

/// Tokenizer files `transformers` reads, fetched when the repo has them.
const TOKENIZER_FILES: [&str; 9] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
];

/// Weights in Python's pickle format: loading them can run code.
const PICKLE_EXTENSIONS: [&str; 5] = [".bin", ".pt", ".pth", ".ckpt", ".pkl"];

/// Data file extensions runner reads (`runner_data::source`).
const DATA_EXTENSIONS: [&str; 7] = [
    ".parquet", ".jsonl", ".ndjson", ".json", ".csv", ".arrow", ".feather",
];

/// Metadata JSON files that `datasets` and the Hub keep beside the data.
const DATA_METADATA: [&str; 4] = [
    "dataset_info.json",
    "dataset_infos.json",
    "dataset_dict.json",
    "state.json",
];

/// Whether a file name is a data file (not metadata).
pub fn is_data_file(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    let lower = base.to_ascii_lowercase();
    DATA_EXTENSIONS.iter().any(|e| lower.ends_with(e))
        && !DATA_METADATA.contains(&lower.as_str())
        && !base.starts_with('.')
}

/// The model files for `need` among `files` (the repo's listing, repo-relative names), in the
/// order to download them. The shards of an index are added once the index is read.
pub fn model_files(repo: &str, files: &[String], need: Need) -> Result<Vec<String>> {
    let top: Vec<&String> = files.iter().filter(|f| !f.contains('/')).collect();
    let has = |name: &str| top.iter().any(|f| f.as_str() == name);
    let safetensors: Vec<&String> = top
        .iter()
        .copied()
        .filter(|f| f.ends_with(".safetensors"))
        .collect();
    // Refused before anything is downloaded, even for a configuration-only need: the run that
    // follows could not load the weights.
    if safetensors.is_empty() {
        let pickles: Vec<String> = files
            .iter()
            .filter(|f| PICKLE_EXTENSIONS.iter().any(|e| f.ends_with(e)))
            .cloned()
            .collect();
        if !pickles.is_empty() {
            return Err(Error::PickleOnly {
                repo: repo.into(),
                files: pickles,
            });
        }
        let ggufs: Vec<&String> = files.iter().filter(|f| f.ends_with(".gguf")).collect();
        if !ggufs.is_empty() {
            return Err(Error::NoWeights {
                repo: repo.into(),
                message: format!(
                    "it holds GGUF files only ({}); download the one you want and set \
                     `base_model` to the .gguf file's path",
                    ggufs
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        return Err(Error::NoWeights {
            repo: repo.into(),
            message: "no .safetensors files (runner reads safetensors or GGUF)".into(),
        });
    }
    if need.config && !has("config.json") {
        return Err(Error::NoWeights {
            repo: repo.into(),
            message: "no config.json: it is not a transformers model repo".into(),
        });
    }
    let mut out = Vec::new();
    if need.config {
        out.push("config.json".to_string());
        if has("generation_config.json") {
            out.push("generation_config.json".into());
        }
    }
    // The tokenizer comes with the configuration: a dry run on a bare cache fetches what the
    // real run will tokenize with, from the same commit.
    if need.tokenizer || need.config {
        out.extend(
            TOKENIZER_FILES
                .iter()
                .filter(|f| has(f))
                .map(|f| f.to_string()),
        );
    }
    if need.weights {
        if has(INDEX) {
            out.push(INDEX.into());
        } else if has("model.safetensors") {
            out.push("model.safetensors".into());
        } else {
            out.extend(safetensors.iter().map(|s| s.to_string()));
        }
    }
    Ok(out)
}

/// The shard files a safetensors index names, sorted, once each.
pub fn shards_of_index(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(Error::at(index))?;
    let bad = |message: String| Error::Protocol {
        url: index.display().to_string(),
        message,
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut shards: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    shards.sort();
    shards.dedup();
    for s in &shards {
        if s.starts_with('/') || s.split('/').any(|c| c == "..") {
            return Err(bad(format!("shard name `{s}` leaves the snapshot")));
        }
    }
    Ok(shards)
}

/// The data files of a dataset listing: those `data_files` names or matches when given,
/// else every data file (under the configuration folder `name` when the repo has one).
pub fn dataset_files(files: &[String], data_files: &[String], name: Option<&str>) -> Vec<String> {
    let data: Vec<&String> = files.iter().filter(|f| is_data_file(f)).collect();
    if !data_files.is_empty() {
        let patterns: Vec<Option<glob::Pattern>> = data_files
            .iter()
            .map(|p| glob::Pattern::new(p.trim_start_matches("./")).ok())
            .collect();
        return files
            .iter()
            .filter(|f| {
                data_files.iter().zip(&patterns).any(|(d, p)| {
                    d.trim_start_matches("./") == f.as_str()
                        || p.as_ref().is_some_and(|p| p.matches(f))
                })
            })
            .cloned()
            .collect();
    }
    if let Some(name) = name {
        let prefix = format!("{name}/");
        let under: Vec<String> = data
            .iter()
            .filter(|f| f.starts_with(&prefix))
            .map(|f| f.to_string())
            .collect();
        if !under.is_empty() {
            return under;
        }
    }
    data.into_iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn model_needs_pick_config_tokenizer_and_safetensors_never_pickles() {
        let listing = names(&[
            ".gitattributes",
            "README.md",
            "config.json",
            "generation_config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            INDEX,
            "pytorch_model-00001-of-00002.bin",
            "pytorch_model.bin.index.json",
            "tokenizer.json",
            "tokenizer.model",
            "tokenizer_config.json",
            "original/consolidated.pth",
        ]);
        let all = model_files("o/m", &listing, Need::ALL).unwrap();
        assert_eq!(
            all,
            [
                "config.json",
                "generation_config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "tokenizer.model",
                INDEX
            ]
        );
        assert!(
            !all.iter()
                .any(|f| f.ends_with(".bin") || f.ends_with(".pth"))
        );
        let cfg = model_files("o/m", &listing, Need::CONFIG).unwrap();
        assert!(cfg.contains(&"tokenizer.json".to_string()) && !cfg.contains(&INDEX.to_string()));

        let pickle = names(&["config.json", "pytorch_model.bin", "tokenizer.json"]);
        let e = model_files("o/p", &pickle, Need::CONFIG)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pickle") && e.contains("pytorch_model.bin"),
            "{e}"
        );
    }

    #[test]
    fn dataset_files_honour_data_files_and_config_names() {
        let listing = names(&[
            "README.md",
            "data/train-00000-of-00001.parquet",
            "data/test-00000-of-00001.parquet",
            "small/train.jsonl",
            "dataset_info.json",
        ]);
        assert_eq!(dataset_files(&listing, &[], None).len(), 3);
        assert_eq!(
            dataset_files(&listing, &[], Some("small")),
            ["small/train.jsonl"]
        );
        assert_eq!(
            dataset_files(&listing, &names(&["data/train-*.parquet"]), None),
            ["data/train-00000-of-00001.parquet"]
        );
    }
}
