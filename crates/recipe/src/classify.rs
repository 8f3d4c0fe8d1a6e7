//! Answers the Axolotl keys that are not recipe fields (issue 15), on the node tree before it
//! is typed: Axolotl's aliases become the field they name, and every key with a verdict in
//! [`crate::keys`] is either listed (a substitution, or a key with no effect) or refused by
//! name, then taken out of the tree, so that typing sees only recipe fields and true unknowns.
//! The same is done inside dataset entries, their `type:` mappings and `special_tokens`, and
//! for each `plugins:` entry.

use crate::diag::Diagnostic;
use crate::keys::{self, Verdict};
use crate::plan::Substitution;
use crate::raw::{RawCustomFormat, RawDataset, RawSpecialTokens};
use crate::yaml::{Key, Node, Value};
use std::collections::BTreeSet;

/// Applies the classification to the top level of `tree` and to the nested mappings Axolotl
/// defines; returns what runner lists (in recipe order) and adds refusals to `errors`.
pub fn apply(tree: &mut Node, errors: &mut Vec<Diagnostic>) -> Vec<Substitution> {
    let mut notes = Vec::new();
    let Value::Map(entries) = &mut tree.value else {
        return notes;
    };
    let fields: BTreeSet<String> = crate::raw::field_names().into_iter().collect();
    rename_aliases(entries, errors);
    let dataset_fields = properties(schemars::schema_for!(RawDataset));
    let custom_fields = properties(schemars::schema_for!(RawCustomFormat));
    let special_fields = properties(schemars::schema_for!(RawSpecialTokens));
    let mut keep = Vec::with_capacity(entries.len());
    for (key, mut value) in std::mem::take(entries) {
        let name = key.name.clone();
        if name.starts_with("x-") || fields.contains(&name) {
            match (name.as_str(), &mut value.value) {
                ("datasets" | "test_datasets", Value::Seq(items)) => {
                    for (i, item) in items.iter_mut().enumerate() {
                        let at = format!("{name}[{i}]");
                        nested(
                            item,
                            &at,
                            &dataset_fields,
                            keys::dataset_key,
                            &mut notes,
                            errors,
                        );
                        if let Value::Map(e) = &mut item.value
                            && let Some((_, ty)) = e.iter_mut().find(|(k, _)| k.name == "type")
                        {
                            let at = format!("{at}.type");
                            nested(
                                ty,
                                &at,
                                &custom_fields,
                                keys::dataset_type_key,
                                &mut notes,
                                errors,
                            );
                        }
                    }
                }
                ("special_tokens", _) => nested(
                    &mut value,
                    "special_tokens",
                    &special_fields,
                    keys::special_tokens_key,
                    &mut notes,
                    errors,
                ),
                _ => {}
            }
            keep.push((key, value));
        } else if name == "plugins" {
            plugins(&key, &value, &mut notes, errors);
        } else if let Some(verdict) = keys::config_key(&name) {
            answer(&name, &key, &value, verdict, &mut notes, errors);
        } else {
            keep.push((key, value)); // an unknown key: typing reports it with a suggestion
        }
    }
    *entries = keep;
    notes
}

/// Rewrites Axolotl's aliases (`model_revision`, ...) to the recipe field they stand for.
fn rename_aliases(entries: &mut [(Key, Node)], errors: &mut Vec<Diagnostic>) {
    let present: BTreeSet<String> = entries.iter().map(|(k, _)| k.name.clone()).collect();
    for (key, _) in entries.iter_mut() {
        if let Some(field) = keys::alias(&key.name) {
            if present.contains(field) {
                errors.push(
                    Diagnostic::new(
                        key.name.clone(),
                        Some(key.origin),
                        format!("`{}` and `{field}` are the same key in Axolotl", key.name),
                    )
                    .help(format!("keep only `{field}`")),
                );
            }
            key.name = field.to_string();
        }
    }
}

/// Classifies the keys of one nested mapping (a dataset entry, its `type:`, `special_tokens`)
/// that are not fields of the runner type it becomes.
fn nested(
    node: &mut Node,
    at: &str,
    fields: &BTreeSet<String>,
    verdict_of: fn(&str) -> Option<Verdict>,
    notes: &mut Vec<Substitution>,
    errors: &mut Vec<Diagnostic>,
) {
    let Value::Map(entries) = &mut node.value else {
        return;
    };
    entries.retain(|(key, value)| {
        if fields.contains(&key.name) {
            return true;
        }
        match verdict_of(&key.name) {
            Some(verdict) => {
                let path = format!("{at}.{}", key.name);
                answer(&path, key, value, verdict, notes, errors);
                false
            }
            None => true,
        }
    });
}

/// Lists or refuses one classified key (`path` is its recipe path). Empty values are unset.
fn answer(
    path: &str,
    key: &Key,
    value: &Node,
    verdict: Verdict,
    notes: &mut Vec<Substitution>,
    errors: &mut Vec<Diagnostic>,
) {
    if value.is_null() {
        return;
    }
    let asked = render(value);
    match verdict {
        Verdict::Substituted(runs) | Verdict::Inert(runs) => notes.push(Substitution {
            key: path.to_string(),
            asked,
            runs: runs.to_string(),
        }),
        // `false` asks for the feature to be off, which is what runner does.
        Verdict::Refused(why) if value.value != Value::Bool(false) => errors.push(
            Diagnostic::new(
                path.to_string(),
                Some(key.origin),
                format!("`{}` is an Axolotl key runner does not support", key.name),
            )
            .help(why.to_string()),
        ),
        Verdict::Refused(_) => {}
        Verdict::Only(ok, _) if ok.contains(&asked.as_str()) => {}
        Verdict::Only(ok, why) => errors.push(
            Diagnostic::new(
                path.to_string(),
                Some(value.origin),
                format!("`{}: {asked}` is not supported", key.name),
            )
            .help(format!("{why} (accepted: {})", ok.join(", "))),
        ),
    }
}

/// `plugins:` entries: Axolotl's Cut Cross Entropy and Liger plugins are substituted, any
/// other plugin is refused by name.
fn plugins(key: &Key, value: &Node, notes: &mut Vec<Substitution>, errors: &mut Vec<Diagnostic>) {
    let items = match &value.value {
        Value::Null => return,
        Value::Seq(items) => items,
        _ => {
            errors.push(
                Diagnostic::new(
                    "plugins",
                    Some(value.origin),
                    "`plugins`: expected a list of plugin names",
                )
                .help("e.g. `plugins: [axolotl.integrations.liger.LigerPlugin]`"),
            );
            return;
        }
    };
    for (i, item) in items.iter().enumerate() {
        let path = format!("{}[{i}]", key.name);
        let Value::Str(name) = &item.value else {
            errors.push(
                Diagnostic::new(path, Some(item.origin), "`plugins`: expected a plugin name")
                    .help("write the plugin's dotted class name"),
            );
            continue;
        };
        match keys::plugin(name) {
            Verdict::Substituted(runs) | Verdict::Inert(runs) => notes.push(Substitution {
                key: path,
                asked: name.clone(),
                runs: runs.to_string(),
            }),
            verdict => errors.push(
                Diagnostic::new(
                    path,
                    Some(item.origin),
                    format!("plugin `{name}` is not supported"),
                )
                .help(verdict.text().to_string()),
            ),
        }
    }
}

fn render(value: &Node) -> String {
    match &value.value {
        Value::Str(s) => s.clone(),
        _ => value.to_json().to_string(),
    }
}

fn properties(schema: schemars::Schema) -> BTreeSet<String> {
    schema
        .get("properties")
        .and_then(|p| p.as_object())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use crate::load_str;

    const BASE: &str = "base_model: builtin:tiny-llama\nadapter: lora\nlora_target_linear: true\nlearning_rate: 0.001\nmax_steps: 1\ndatasets:\n  - path: org/data\n    type: alpaca\n";

    fn notes(extra: &str) -> Vec<(String, String)> {
        let loaded = load_str("t.yaml", &format!("{BASE}{extra}"), &[])
            .unwrap_or_else(|e| panic!("{}", e.render(false)));
        loaded
            .plan
            .substitutions
            .iter()
            .map(|s| (s.key.clone(), s.asked.clone()))
            .collect()
    }

    fn errors(extra: &str) -> Vec<String> {
        match load_str("t.yaml", &format!("{BASE}{extra}"), &[]) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .diagnostics()
                .iter()
                .map(|d| format!("{}: {}", d.path, d.message))
                .collect(),
        }
    }

    #[test]
    fn issue_15_speed_up_plugins_are_substituted_and_others_refused_by_name() {
        let got = notes(
            "plugins:\n  - axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin\n  - axolotl.integrations.liger.LigerPlugin\nliger_rms_norm: true\ncut_cross_entropy: true\n",
        );
        assert_eq!(
            got.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            [
                "plugins[0]",
                "plugins[1]",
                "liger_rms_norm",
                "cut_cross_entropy"
            ]
        );
        let errs = errors("plugins:\n  - axolotl.integrations.kd.KDPlugin\n  - my.own.Plugin\n");
        assert_eq!(
            errs,
            [
                "plugins[0]: plugin `axolotl.integrations.kd.KDPlugin` is not supported",
                "plugins[1]: plugin `my.own.Plugin` is not supported"
            ]
        );
    }

    #[test]
    fn issue_15_real_axolotl_keys_are_answered_by_name_never_unknown() {
        // inert and substituted keys are listed; refused ones name the key
        let got =
            notes("hub_model_id: me/model\nlora_mlp_kernel: true\nremove_unused_columns: false\n");
        assert_eq!(got.len(), 3, "{got:?}");
        let errs = errors("processor_type: AutoProcessor\nstreaming: true\nmin_sample_len: 10\n");
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs.iter()
                .all(|e| e.contains("an Axolotl key runner does not support"))
        );
        // `false` and empty mean off, which is what runner does
        assert!(errors("streaming: false\nmin_sample_len:\n").is_empty());
        // values runner does anyway pass; others are refused with the reason
        assert!(errors("tensor_parallel_size: 1\nsave_safetensors: true\n").is_empty());
        assert_eq!(
            errors("mean_resizing_embeddings: false\n"),
            ["mean_resizing_embeddings: `mean_resizing_embeddings: false` is not supported"]
        );
        // a typo is still unknown, with a suggestion
        assert_eq!(
            errors("lora_mlp_kernal: true\n"),
            ["lora_mlp_kernal: unknown key `lora_mlp_kernal`"]
        );
    }

    #[test]
    fn issue_15_dataset_and_nested_axolotl_keys_are_answered() {
        let errs = errors(
            "test_datasets:\n  - path: org/eval\n    type: alpaca\n    input_transform: x\n    shards: 4\nspecial_tokens:\n  additional_special_tokens: ['<x>']\n",
        );
        assert_eq!(
            errs,
            [
                "test_datasets[0].input_transform: `input_transform` is an Axolotl key runner does not support",
                "test_datasets[0].shards: `shards` is an Axolotl key runner does not support",
                "special_tokens.additional_special_tokens: `additional_special_tokens` is an Axolotl key runner does not support",
            ]
        );
        let got = notes(
            "test_datasets:\n  - path: org/eval\n    type: alpaca\n    preprocess_shards: 2\n",
        );
        assert!(
            got.contains(&("test_datasets[0].preprocess_shards".into(), "2".into())),
            "{got:?}"
        );
    }

    #[test]
    fn issue_15_aliases_become_the_field() {
        let loaded = load_str(
            "t.yaml",
            &format!("{BASE}model_revision: abc123\ndataset_num_proc: 3\n"),
            &[],
        )
        .unwrap_or_else(|e| panic!("{}", e.render(false)));
        assert_eq!(loaded.raw.revision_of_model.as_deref(), Some("abc123"));
        assert_eq!(loaded.raw.dataset_processes, Some(3));
        assert_eq!(
            errors("model_revision: a\nrevision_of_model: b\n"),
            [
                "model_revision: `model_revision` and `revision_of_model` are the same key in Axolotl"
            ]
        );
    }
}
