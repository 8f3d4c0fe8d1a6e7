//! The recipe's JSON Schema, generated from [`crate::raw::RawRecipe`] for editors
//! (`# yaml-language-server: $schema=...`). Axolotl's other keys are listed too, with what runner
//! does about each; refused ones typed `null`, so that an editor flags a value with the reason.

use crate::keys;
use crate::raw::RawRecipe;

/// The schema as a JSON value.
pub fn recipe_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(RawRecipe);
    let mut value = schema.to_value();
    if let Some(obj) = value.as_object_mut() {
        // `x-` keys hold YAML anchors for reuse; they are not recipe keys.
        obj.insert(
            "patternProperties".into(),
            serde_json::json!({ "^x-": { "description": "Extension key holding YAML anchors; not read by runner." } }),
        );
        if let Some(props) = obj.get_mut("properties").and_then(|p| p.as_object_mut()) {
            // Axolotl's keys that are not recipe fields (issue 15), each with what runner does.
            for (key, verdict) in keys::CONFIG.iter().chain(keys::LEGACY) {
                let entry = match verdict {
                    keys::Verdict::Substituted(runs) => serde_json::json!({
                        "description": format!("Axolotl key; runner runs an equivalent: {runs}."),
                    }),
                    keys::Verdict::Inert(what) => serde_json::json!({
                        "description": format!("Axolotl key accepted with {what}."),
                    }),
                    keys::Verdict::Refused(why) => serde_json::json!({
                        "type": "null",
                        "description": format!("Axolotl key not supported by runner: {why}. Leave it empty or remove it."),
                    }),
                    keys::Verdict::Only(ok, why) => {
                        let mut values = vec![serde_json::Value::Null];
                        values.extend(ok.iter().map(|v| {
                            serde_json::from_str(v).unwrap_or_else(|_| serde_json::json!(v))
                        }));
                        serde_json::json!({
                            "enum": values,
                            "description": format!("Axolotl key; only what runner does is accepted: {why}."),
                        })
                    }
                };
                props.insert((*key).to_string(), entry);
            }
            for (_, key) in keys::pinned().filter(|(scope, _)| *scope == "plugin_args") {
                if let Some(verdict) = keys::plugin_key(key) {
                    let entry = match verdict {
                        keys::Verdict::Refused(why) => serde_json::json!({
                            "type": "null",
                            "description": format!("Axolotl plugin key not supported by runner: {why}. Leave it empty or remove it."),
                        }),
                        other => serde_json::json!({
                            "description": format!("Axolotl plugin key; runner runs an equivalent: {}.", other.text()),
                        }),
                    };
                    props.insert(key.to_string(), entry);
                }
            }
            for (alias, field) in keys::ALIASES {
                props.insert(
                    (*alias).to_string(),
                    serde_json::json!({ "description": format!("Axolotl's other spelling of `{field}`.") }),
                );
            }
        }
    }
    value
}

/// The schema as pretty JSON with a trailing newline, exactly as committed in `schemas/`.
pub fn recipe_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&recipe_schema()).unwrap_or_default();
    text.push('\n');
    text
}

/// The description of a recipe key (`nested`: a dataset entry's key), for error help.
pub fn describe(key: &str, nested: bool) -> Option<String> {
    static SCHEMA: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    let schema = SCHEMA.get_or_init(recipe_schema);
    let props = if nested {
        schema.pointer("/$defs/RawDataset/properties")?
    } else {
        schema.get("properties")?
    };
    props
        .get(key)?
        .get("description")?
        .as_str()
        .map(|s| s.replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed schema must equal the one generated from the types.
    /// Regenerate with `cargo run -- schema -o schemas/recipe.schema.json`.
    #[test]
    fn committed_schema_matches_the_types() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../schemas/recipe.schema.json"
        );
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == recipe_schema_text(),
            "schemas/recipe.schema.json is out of date: run `cargo run -- schema -o schemas/recipe.schema.json`"
        );
    }

    #[test]
    fn refused_keys_are_in_the_schema_as_null() {
        let schema = recipe_schema();
        assert_eq!(schema["properties"]["deepspeed"]["type"], "null");
        assert!(schema["properties"]["lora_r"]["description"].is_string());
    }

    #[test]
    fn keys_are_described() {
        assert!(describe("lora_r", false).unwrap().contains("rank"));
        assert!(
            describe("field_messages", true)
                .unwrap()
                .contains("messages")
        );
    }
}
