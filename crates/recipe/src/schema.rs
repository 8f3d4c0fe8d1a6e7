//! The recipe's JSON Schema, generated from [`crate::raw::RawRecipe`] for editors
//! (`# yaml-language-server: $schema=...`). Refused Axolotl keys are listed too, typed `null`,
//! so that an editor flags a value on them with the reason.

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
            for (key, what) in keys::INERT {
                props.insert(
                    (*key).to_string(),
                    serde_json::json!({
                        "description": format!("Axolotl key accepted with no effect: {what}."),
                    }),
                );
            }
            for (key, why) in keys::REFUSED {
                props.insert(
                    (*key).to_string(),
                    serde_json::json!({
                        "type": "null",
                        "description": format!("Axolotl key not supported by runner: {why}. Leave it empty or remove it."),
                    }),
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
