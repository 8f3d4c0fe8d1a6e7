//! `runner validate --explain`: the resolved Plan, one value per line, each with where it came
//! from (a recipe line, an override, a default, or a rule).

use crate::diag::Sources;
use crate::plan::Plan;
use crate::resolve::{Explanation, Source};
use crate::yaml::Origin;

/// One line per Plan value: `path = value    # source`.
pub fn render(plan: &Plan, explanation: &Explanation, sources: &Sources) -> String {
    let value = serde_json::to_value(plan).unwrap_or_default();
    let mut leaves = Vec::new();
    flatten("", &value, &mut leaves);
    let width = leaves
        .iter()
        .map(|(p, v)| p.len() + v.len() + 3)
        .max()
        .unwrap_or(0)
        .min(90);
    let mut out = String::new();
    for (path, value) in leaves {
        let line = format!("{path} = {value}");
        let source = match explanation.source_of(&path) {
            Some(Source::Recipe { key, origin }) => match origin {
                Origin::File { line, column } => {
                    format!("{key} at {}:{line}:{column}", sources.name)
                }
                Origin::Override { index, .. } => {
                    format!("--set {}", sources.override_text(*index))
                }
            },
            Some(Source::Default) => "default".to_string(),
            Some(Source::Derived(how)) => format!("derived: {how}"),
            None if path.starts_with("substitutions") => "substitution".to_string(),
            None => "default".to_string(),
        };
        out.push_str(&format!("{line:width$}  # {source}\n"));
    }
    out
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    use serde_json::Value as J;
    match value {
        J::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, v, out);
            }
        }
        J::Array(items) if items.iter().any(|i| i.is_object()) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}
