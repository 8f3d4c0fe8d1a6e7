//! Resolution: the typed flat recipe → the nested [`Plan`], with every default filled, every
//! cross-field rule checked, and a record of where each value came from (`--explain`).

use crate::diag::Diagnostic;
use crate::plan::*;
use crate::raw::*;
use crate::yaml::{self, Node, Origin};
use std::path::Path;

/// Where a Plan value came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Written in the recipe (or given with `--set`) under this key.
    Recipe { key: String, origin: Origin },
    /// runner's default.
    Default,
    /// Computed from other values; the text says how.
    Derived(String),
}

/// Provenance of Plan values, by Plan path (`adapter.r`, `data.datasets[0].format`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Explanation {
    pub entries: Vec<(String, Source)>,
}

impl Explanation {
    /// The source of the longest recorded prefix of `plan_path`.
    pub fn source_of(&self, plan_path: &str) -> Option<&Source> {
        self.entries
            .iter()
            .filter(|(p, _)| {
                plan_path == p
                    || plan_path.starts_with(&format!("{p}."))
                    || plan_path.starts_with(&format!("{p}["))
            })
            .max_by_key(|(p, _)| p.len())
            .map(|(_, s)| s)
    }
}

pub struct Resolved {
    pub plan: Option<Plan>,
    pub errors: Vec<Diagnostic>,
    pub explanation: Explanation,
}

/// Built-in tiny models runner generates itself, for smoke runs and CI (`base_model: builtin:NAME`).
pub const BUILTIN_MODELS: &[&str] = &["tiny-llama", "tiny-qwen3"];

pub(super) struct Resolver<'a> {
    tree: &'a Node,
    errors: Vec<Diagnostic>,
    explanation: Explanation,
    substitutions: Vec<Substitution>,
}

impl Resolver<'_> {
    /// The origin of a key when it is set (non-empty) in the recipe.
    pub(super) fn origin(&self, key: &str) -> Option<Origin> {
        let path = yaml::parse_path(key)?;
        let mut node = self.tree;
        for seg in &path {
            node = match (seg, &node.value) {
                (yaml::Segment::Key(k), yaml::Value::Map(entries)) => {
                    &entries.iter().rev().find(|(e, _)| &e.name == k)?.1
                }
                (yaml::Segment::Index(i), yaml::Value::Seq(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        if node.is_null() {
            None
        } else {
            Some(node.origin)
        }
    }

    /// Reports a problem with `key`: at its value when set, at its entry when a dataset key
    /// is missing, or at no line for a missing top-level key.
    pub(super) fn error(&mut self, key: &str, message: impl Into<String>, help: impl Into<String>) {
        let origin = self.origin(key).or_else(|| {
            let path = yaml::parse_path(key)?;
            if path.len() < 2 {
                return None;
            }
            let parent = yaml::render_path(&path[..path.len() - 1]);
            self.origin(&parent)
        });
        self.errors
            .push(Diagnostic::new(key, origin, message).help(help));
    }

    /// Records that `plan_path` comes from recipe `key` when set there, else from the default.
    pub(super) fn from(&mut self, plan_path: &str, key: &str) {
        let source = match self.origin(key) {
            Some(origin) => Source::Recipe {
                key: key.to_string(),
                origin,
            },
            None => Source::Default,
        };
        self.explanation
            .entries
            .push((plan_path.to_string(), source));
    }

    pub(super) fn derived(&mut self, plan_path: &str, how: impl Into<String>) {
        self.explanation
            .entries
            .push((plan_path.to_string(), Source::Derived(how.into())));
    }

    pub(super) fn substitute(
        &mut self,
        key: &str,
        asked: impl Into<String>,
        runs: impl Into<String>,
    ) {
        self.substitutions.push(Substitution {
            key: key.to_string(),
            asked: asked.into(),
            runs: runs.into(),
        });
    }

    /// Checks a numeric range; `what` completes "must be ...".
    pub(super) fn check<T: PartialOrd + Copy + std::fmt::Display>(
        &mut self,
        key: &str,
        value: Option<T>,
        ok: impl Fn(T) -> bool,
        what: &str,
    ) {
        if let Some(v) = value
            && !ok(v)
        {
            self.error(
                key,
                format!("`{key}` must be {what}, got {v}"),
                format!("set `{key}` to a value that is {what}"),
            );
        }
    }

    /// A path that must exist on this machine.
    pub(super) fn local_path_exists(&mut self, key: &str, path: &str, what: &str) {
        if !Path::new(path).exists() {
            self.error(
                key,
                format!("{what} `{path}` does not exist"),
                if path.ends_with("SmolLM2-135M-Instruct.Q4_1.gguf") {
                    "fetch it with scripts/fetch-smollm2.sh (relative paths are resolved from the directory runner runs in)".to_string()
                } else {
                    "check the path (relative paths are resolved from the directory runner runs in)".to_string()
                },
            );
        }
    }

    /// A model or dataset location: a local path must exist; a hub id (`org/name`) is looked up
    /// later in the local Hugging Face cache.
    pub(super) fn model_or_dataset_location(&mut self, key: &str, value: &str, what: &str) {
        if Path::new(value).exists() || looks_like_hub_id(value) || is_glob(value) {
            return;
        }
        self.local_path_exists(key, value, what);
    }
}

fn looks_like_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    let ok_part = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match parts.as_slice() {
        [name] => ok_part(name) && !name.contains('.'),
        [org, name] => ok_part(org) && ok_part(name) && !s.ends_with(".gguf"),
        _ => false,
    }
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

mod data;
pub mod limits;
mod model;
mod train;

use data::resolve_data;
use model::resolve_model_and_adapter;
use train::resolve_train;

pub fn resolve(raw: &RawRecipe, tree: &Node) -> Resolved {
    let mut r = Resolver {
        tree,
        errors: Vec::new(),
        explanation: Explanation::default(),
        substitutions: Vec::new(),
    };
    let (model, adapter) = resolve_model_and_adapter(&mut r, raw);
    let data = resolve_data(&mut r, raw);
    let has_eval = data
        .as_ref()
        .is_some_and(|d| d.val_set != ValSet::None || !d.test_datasets.is_empty());
    let train = resolve_train(&mut r, raw, has_eval);
    let export = resolve_export(&mut r, raw);
    limits::check(&mut r, raw);
    limits::check_target_regex(&mut r, adapter.as_ref().map(|a| &a.targets));
    let plan = match (model, adapter, data, train) {
        (Some(model), Some(adapter), Some(data), Some(train)) if r.errors.is_empty() => {
            Some(Plan {
                model,
                adapter,
                data,
                train,
                export,
                substitutions: r.substitutions.clone(),
            })
        }
        _ => None,
    };
    Resolved {
        plan,
        errors: r.errors,
        explanation: r.explanation,
    }
}

/// runner's own export keys (`merge_adapter`, `merged_dtype`, `export_gguf`).
fn resolve_export(r: &mut Resolver, raw: &RawRecipe) -> ExportPlan {
    let merge_adapter = raw.merge_adapter.unwrap_or(false);
    r.from("export.merge_adapter", "merge_adapter");
    r.from("export.merged_dtype", "merged_dtype");
    r.from("export.gguf", "export_gguf");
    let merged_dtype = match raw.merged_dtype {
        None => MergedDtype::F32,
        Some(d) => {
            if !merge_adapter {
                r.error(
                    "merged_dtype",
                    "`merged_dtype` is set but nothing is merged",
                    "set `merge_adapter: true`, or remove `merged_dtype`",
                );
            }
            match d {
                MergedDtypeName::F32 => MergedDtype::F32,
                MergedDtypeName::Bf16 => MergedDtype::Bf16,
                MergedDtypeName::F16 => MergedDtype::F16,
            }
        }
    };
    let names: Vec<String> = match &raw.export_gguf {
        None => Vec::new(),
        Some(StringOrList::One(s)) => vec![s.clone()],
        Some(StringOrList::Many(v)) => v.clone(),
    };
    let mut gguf = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let key = match &raw.export_gguf {
            Some(StringOrList::Many(_)) => format!("export_gguf[{i}]"),
            _ => "export_gguf".to_string(),
        };
        match GgufQuant::ALL
            .into_iter()
            .find(|q| q.as_str().eq_ignore_ascii_case(name))
        {
            Some(q) if gguf.contains(&q) => {
                r.error(
                    &key,
                    format!("GGUF type `{name}` is listed twice"),
                    "list each type once",
                );
            }
            Some(q) => gguf.push(q),
            None => r.error(
                &key,
                format!("unknown GGUF type `{name}`"),
                "valid values: f32, f16, q8_0",
            ),
        }
    }
    ExportPlan {
        merge_adapter,
        merged_dtype,
        gguf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_local_paths_are_told_apart() {
        assert!(looks_like_hub_id("mistralai/Mistral-7B-v0.1"));
        assert!(looks_like_hub_id("tatsu-lab/alpaca"));
        assert!(!looks_like_hub_id("./models/x"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("models/x/y"));
        assert!(!looks_like_hub_id("data.jsonl"));
        assert!(!looks_like_hub_id("dir/model.gguf"));
    }
}
