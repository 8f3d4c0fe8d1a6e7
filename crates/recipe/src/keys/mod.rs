//! Axolotl's keys and values that runner knows but does not take as recipe fields, and what it
//! does with each: runs an equivalent, accepts it as having no effect, or refuses it by name
//! (never "unknown key" for a real Axolotl key). Empty values count as unset and pass.

mod axolotl;

pub use axolotl::{ALIASES, CONFIG, DATASET, DATASET_TYPE, LEGACY, PLUGINS, SPECIAL_TOKENS};

/// What runner does with an Axolotl key that is not one of its recipe fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted with any value: runner runs the stated equivalent (listed by `runner validate`).
    Substituted(&'static str),
    /// Accepted with any value: no effect on what runner computes (listed, with why).
    Inert(&'static str),
    /// Refused when set to anything but empty or `false`, with why and what to do.
    Refused(&'static str),
    /// Accepted silently with one of these values (what runner does anyway), else refused.
    Only(&'static [&'static str], &'static str),
}

impl Verdict {
    pub fn text(self) -> &'static str {
        match self {
            Verdict::Substituted(t) | Verdict::Inert(t) | Verdict::Refused(t) => t,
            Verdict::Only(_, t) => t,
        }
    }
}

fn find(table: &'static [(&'static str, Verdict)], key: &str) -> Option<Verdict> {
    table.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// The verdict on a top-level key that is not a recipe field: Axolotl's schema keys, keys of
/// older releases, and the keys Axolotl's plugins add.
pub fn config_key(key: &str) -> Option<Verdict> {
    find(CONFIG, key)
        .or_else(|| find(LEGACY, key))
        .or_else(|| plugin_key(key))
}

pub fn dataset_key(key: &str) -> Option<Verdict> {
    find(DATASET, key)
}

pub fn dataset_type_key(key: &str) -> Option<Verdict> {
    find(DATASET_TYPE, key)
}

pub fn special_tokens_key(key: &str) -> Option<Verdict> {
    find(SPECIAL_TOKENS, key)
}

/// The recipe field an Axolotl alias stands for.
pub fn alias(key: &str) -> Option<&'static str> {
    ALIASES.iter().find(|(a, _)| *a == key).map(|(_, f)| *f)
}

/// The verdict on one `plugins:` entry; a name that is none of Axolotl's plugins is refused.
pub fn plugin(name: &str) -> Verdict {
    find(PLUGINS, name).unwrap_or(Verdict::Refused(
        "runner cannot load Axolotl plugins (Python); only Axolotl's Cut Cross Entropy and Liger plugins are accepted, as runner's own equivalents",
    ))
}

/// A key one of Axolotl's plugins adds (`liger_rope`, `cut_cross_entropy`, `kd_alpha`, ...).
pub fn plugin_key(key: &str) -> Option<Verdict> {
    let (_, plugin) = axolotl::PLUGIN_KEYS
        .iter()
        .find(|(prefix, _)| key.starts_with(prefix))?;
    Some(match (*plugin, key) {
        ("liger", "liger_use_token_scaling") => {
            Verdict::Refused("token-scaled cross-entropy changes the loss and is not supported")
        }
        ("liger", "liger_cross_entropy" | "liger_fused_linear_cross_entropy")
        | ("cut_cross_entropy", _) => Verdict::Substituted(
            "runner's chunked cross-entropy over labelled positions (always on, never the full logits tensor): the same loss",
        ),
        ("liger", _) => Verdict::Substituted(
            "runner's own fused ops (RMSNorm, RoPE, SwiGLU, the LoRA linear): the same result",
        ),
        (name, _) => Verdict::Refused(match name {
            "kernels" => {
                "a key of Axolotl's kernels plugin (mixture-of-experts and quantized-expert kernels), which runner does not have"
            }
            "swanlab" => {
                "a key of Axolotl's SwanLab plugin; SwanLab logging is not built in (runner writes metrics.jsonl and loss.svg in output_dir)"
            }
            "lm_eval" => {
                "a key of Axolotl's lm-eval plugin, which runner does not have; run lm-evaluation-harness on the saved adapter"
            }
            _ => {
                "a key of one of Axolotl's plugins, which runner does not have (only the Cut Cross Entropy and Liger plugins have equivalents)"
            }
        }),
    })
}

/// Axolotl's keys at the pinned release, one `scope<TAB>key<TAB>type<TAB>default<TAB>class`
/// line each (`tools/recipe/axolotl_keys.py` writes it; the first line names the version).
pub const PINNED: &str = include_str!("../../data/axolotl-keys.tsv");

/// (scope, key) of every pinned Axolotl key; scopes: `config`, `dataset`, `dataset_type`,
/// `pretraining_dataset`, `special_tokens`, `plugin`, `plugin_args`.
pub fn pinned() -> impl Iterator<Item = (&'static str, &'static str)> {
    PINNED
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut cols = l.split('\t');
            Some((cols.next()?, cols.next()?))
        })
}

/// Every key name the classification knows, for "did you mean".
pub fn all_known() -> impl Iterator<Item = &'static str> {
    CONFIG
        .iter()
        .chain(LEGACY)
        .map(|(k, _)| *k)
        .chain(ALIASES.iter().map(|(a, _)| *a))
}

/// Axolotl dataset `type`s runner does not implement, with the equivalent to use.
pub const REFUSED_DATASET_TYPES: &[(&str, &str)] = &[
    (
        "sharegpt",
        "removed in Axolotl too: use `type: chat_template` with `field_messages: conversations`, `message_property_mappings: {role: from, content: value}` and `roles: {user: [human], assistant: [gpt], system: [system]}`",
    ),
    ("oasst", "convert to messages and use `type: chat_template`"),
    ("llama2_chat", "use `type: chat_template`"),
    ("pygmalion", "use `type: chat_template`"),
    (
        "metharme",
        "use `type: chat_template` or a custom alpaca-like `type:` mapping",
    ),
    ("context_qa", "use a custom alpaca-like `type:` mapping"),
    ("explainchoice", "use a custom alpaca-like `type:` mapping"),
    ("jeopardy", "use a custom alpaca-like `type:` mapping"),
    ("gpteacher", "use a custom alpaca-like `type:` mapping"),
    ("reflection", "use a custom alpaca-like `type:` mapping"),
    ("summarizetldr", "use a custom alpaca-like `type:` mapping"),
    (
        "stepwise_supervised",
        "process supervision is not supported",
    ),
    ("bradley_terry", "reward-model training is not supported"),
];

/// The dataset `type` names runner implements.
pub const DATASET_TYPES: &[&str] = &[
    "alpaca",
    "alpaca_chat",
    "alpaca_chat.load_qa",
    "alpaca_chat.load_concise",
    "alpaca_w_system.load_open_orca",
    "chat_template",
    "completion",
    "input_output",
];

/// Axolotl values of enumerated keys that runner knows but does not implement.
pub const REFUSED_VALUES: &[(&str, &str, &str)] = &[
    ("optimizer", "sgd", "only AdamW is implemented"),
    ("optimizer", "adafactor", "only AdamW is implemented"),
    ("optimizer", "lion_8bit", "only AdamW is implemented"),
    ("optimizer", "paged_lion_8bit", "only AdamW is implemented"),
    (
        "optimizer",
        "schedule_free_adamw",
        "only AdamW is implemented",
    ),
    ("optimizer", "muon", "only AdamW is implemented"),
    ("optimizer", "adopt_adamw", "only AdamW is implemented"),
    ("optimizer", "came_pytorch", "only AdamW is implemented"),
    ("optimizer", "galore_adamw", "only AdamW is implemented"),
    ("lr_scheduler", "one_cycle", "use cosine or linear"),
    ("lr_scheduler", "rex", "use cosine or linear"),
    ("lr_scheduler", "polynomial", "use cosine or linear"),
    ("lr_scheduler", "inverse_sqrt", "use cosine or linear"),
    ("lr_scheduler", "cosine_with_restarts", "use cosine"),
    (
        "lr_scheduler",
        "cosine_with_min_lr",
        "use cosine with cosine_min_lr_ratio",
    ),
    (
        "lr_scheduler",
        "reduce_lr_on_plateau",
        "use cosine or linear",
    ),
    (
        "lr_scheduler",
        "warmup_stable_decay",
        "use cosine or linear",
    ),
    (
        "attn_implementation",
        "sage",
        "SageAttention quantizes attention and changes the result; runner's attention is exact (use sdpa)",
    ),
    (
        "attn_implementation",
        "fp8",
        "FP8 attention changes the result; runner's attention is exact (use sdpa)",
    ),
];

pub fn refused_dataset_type(name: &str) -> Option<&'static str> {
    REFUSED_DATASET_TYPES
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, why)| *why)
}

pub fn refused_value(key: &str, value: &str) -> Option<&'static str> {
    REFUSED_VALUES
        .iter()
        .find(|(k, v, _)| *k == key && *v == value)
        .map(|(_, _, why)| *why)
}

/// The closest candidate by edit distance, when it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&lower, c), c))
        .filter(|(score, _)| *score >= 0.82)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        let keys = ["lora_r", "lora_alpha", "learning_rate", "micro_batch_size"];
        assert_eq!(did_you_mean("lora_rr", keys), Some("lora_r"));
        assert_eq!(did_you_mean("lerning_rate", keys), Some("learning_rate"));
        assert_eq!(
            did_you_mean("micro_batchsize", keys),
            Some("micro_batch_size")
        );
        assert_eq!(did_you_mean("zzz", keys), None);
    }

    #[test]
    fn tables_are_sorted_and_unique() {
        for table in [
            CONFIG,
            LEGACY,
            DATASET,
            DATASET_TYPE,
            SPECIAL_TOKENS,
            PLUGINS,
        ] {
            for pair in table.windows(2) {
                assert!(pair[0].0 < pair[1].0, "{} then {}", pair[0].0, pair[1].0);
            }
        }
    }

    /// Issue 15: every key of Axolotl's schema at the pinned release
    /// (crates/recipe/data/axolotl-keys.tsv, from tools/recipe/axolotl_keys.py) is a recipe
    /// field, an alias of one, or has a verdict here; and every key classified here is in that
    /// list (or, for older releases' keys, in LEGACY and not in it). After a version bump this
    /// lists what changed.
    #[test]
    fn issue_15_every_axolotl_key_is_classified() {
        use crate::raw::{RawCustomFormat, RawDataset, RawRecipe, RawSpecialTokens};
        use std::collections::BTreeSet;
        let version = PINNED.split_whitespace().nth(2).unwrap_or("?").to_string();
        let pinned: BTreeSet<(&str, &str)> = super::pinned().collect();
        let lines = PINNED.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(
            pinned.len(),
            lines,
            "malformed or repeated lines in axolotl-keys.tsv"
        );
        assert!(pinned.len() > 500, "the pinned list looks truncated");
        let props = |schema: schemars::Schema| -> BTreeSet<String> {
            schema
                .get("properties")
                .and_then(|p| p.as_object())
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default()
        };
        let recipe = props(schemars::schema_for!(RawRecipe));
        let dataset = props(schemars::schema_for!(RawDataset));
        let custom = props(schemars::schema_for!(RawCustomFormat));
        let special = props(schemars::schema_for!(RawSpecialTokens));
        let has = |scope: &str, key: &str| pinned.contains(&(scope, key));

        let mut problems = Vec::new();
        for &(scope, key) in &pinned {
            let known = match scope {
                "config" => {
                    recipe.contains(key)
                        || alias(key).is_some()
                        || CONFIG.iter().any(|(k, _)| *k == key)
                }
                "dataset" => key == "type" || dataset.contains(key) || dataset_key(key).is_some(),
                "dataset_type" => custom.contains(key) || dataset_type_key(key).is_some(),
                // the whole `pretraining_dataset` key is refused, so its fields are never read
                "pretraining_dataset" => {
                    matches!(config_key("pretraining_dataset"), Some(Verdict::Refused(_)))
                }
                "special_tokens" => special.contains(key) || special_tokens_key(key).is_some(),
                "plugin" => PLUGINS.iter().any(|(k, _)| *k == key),
                "plugin_args" => plugin_key(key).is_some(),
                other => panic!("unknown scope {other} in axolotl-keys.tsv"),
            };
            if !known {
                problems.push(format!("{scope} key `{key}` is not classified"));
            }
        }
        let mut stale = |scope: &str, keys: &mut dyn Iterator<Item = &'static str>| {
            for key in keys {
                if !has(scope, key) {
                    problems.push(format!(
                        "`{key}` is classified ({scope}) but is not in Axolotl {version}: move it to LEGACY or remove it"
                    ));
                }
            }
        };
        stale("config", &mut CONFIG.iter().map(|(k, _)| *k));
        stale("config", &mut ALIASES.iter().map(|(a, _)| *a));
        stale("dataset", &mut DATASET.iter().map(|(k, _)| *k));
        stale("dataset_type", &mut DATASET_TYPE.iter().map(|(k, _)| *k));
        stale(
            "special_tokens",
            &mut SPECIAL_TOKENS.iter().map(|(k, _)| *k),
        );
        stale("plugin", &mut PLUGINS.iter().map(|(k, _)| *k));
        for (prefix, _) in axolotl::PLUGIN_KEYS {
            if !pinned
                .iter()
                .any(|(s, k)| *s == "plugin_args" && k.starts_with(prefix))
            {
                problems.push(format!(
                    "plugin key prefix `{prefix}` matches no key of Axolotl {version}"
                ));
            }
        }
        for (key, _) in LEGACY {
            if has("config", key) || has("plugin_args", key) {
                problems.push(format!(
                    "`{key}` is in Axolotl {version}: move it from LEGACY to CONFIG"
                ));
            }
        }
        for (key, _) in CONFIG.iter().chain(LEGACY) {
            if recipe.contains(*key) {
                problems.push(format!("`{key}` is a recipe field and also classified"));
            }
        }
        for (alias, field) in ALIASES {
            if !recipe.contains(*field) {
                problems.push(format!(
                    "alias `{alias}` names `{field}`, which is not a recipe field"
                ));
            }
        }
        assert!(
            problems.is_empty(),
            "Axolotl {version} keys against runner's classification (crates/recipe/src/keys/axolotl.rs):\n  {}",
            problems.join("\n  ")
        );
    }
}
