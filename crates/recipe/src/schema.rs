//! The recipe's JSON Schema, generated from [`crate::raw::RawRecipe`] for editors
//! (`# yaml-language-server: $schema=...`). Refused Axolotl keys are listed too, typed `null`,
//! so that an editor flags a value on them with the reason.

use crate::keys;
use crate::raw::RawRecipe;

pub const SCHEMA_ID: &str =
    "https://raw.githubusercontent.com/runner-ft/runner/main/schemas/recipe.schema.json";

/// The schema as a JSON value.
pub fn recipe_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(RawRecipe);
    let mut value = schema.to_value();
    if let Some(obj) = value.as_object_mut() {
        obj.insert("$id".into(), SCHEMA_ID.into());
        if let Some(props) = obj.get_mut("properties").and_then(|p| p.as_object_mut()) {
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
