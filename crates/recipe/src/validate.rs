//! Loading a recipe: bytes → node tree → overrides applied → every key checked → typed
//! [`RawRecipe`] → resolved [`Plan`]. Every problem is collected, none stops the others.

use crate::diag::{Diagnostic, Sources};
use crate::keys;
use crate::plan::Plan;
use crate::raw::{self, RawDataset, RawRecipe};
use crate::resolve::{self, Explanation};
use crate::yaml::{self, Key, Node, Origin, Segment, Value};
use std::collections::HashMap;
use std::path::Path;

/// A recipe that passed validation.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub plan: Plan,
    pub raw: RawRecipe,
    pub explanation: Explanation,
    pub sources: Sources,
}

/// Why a recipe could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The input cannot be used as a recipe at all (missing, unreadable, not UTF-8 text).
    #[error("{}", .diagnostic.message)]
    Unusable {
        sources: Box<Sources>,
        diagnostic: Box<Diagnostic>,
    },
    /// The recipe was read and is wrong; every problem found is listed.
    #[error("the recipe has {} error(s)", .diagnostics.len())]
    Invalid {
        sources: Box<Sources>,
        diagnostics: Vec<Diagnostic>,
    },
}

impl LoadError {
    pub fn sources(&self) -> &Sources {
        match self {
            LoadError::Unusable { sources, .. } | LoadError::Invalid { sources, .. } => sources,
        }
    }

    pub fn diagnostics(&self) -> Vec<&Diagnostic> {
        match self {
            LoadError::Unusable { diagnostic, .. } => vec![diagnostic],
            LoadError::Invalid { diagnostics, .. } => diagnostics.iter().collect(),
        }
    }

    /// Renders every diagnostic, followed by a count.
    pub fn render(&self, color: bool) -> String {
        let mut out = String::new();
        for d in self.diagnostics() {
            out.push_str(&d.render(self.sources(), color));
            out.push('\n');
        }
        if let LoadError::Invalid { diagnostics, .. } = self {
            out.push_str(&format!(
                "{} error(s) in {}\n",
                diagnostics.len(),
                self.sources().name
            ));
        }
        out
    }
}

/// Reads and validates a recipe file, with `key=value` overrides applied on top.
pub fn load_path(path: &Path, overrides: &[String]) -> Result<Loaded, LoadError> {
    let name = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => load_bytes(&name, &bytes, overrides),
        Err(e) => {
            let help = if e.kind() == std::io::ErrorKind::NotFound {
                "check the path; recipes in this repository live under recipes/"
            } else {
                "check that the path is a readable file"
            };
            Err(unusable(
                &name,
                "",
                Diagnostic::new("", None, format!("cannot read recipe {name}: {e}")).help(help),
            ))
        }
    }
}

fn unusable(name: &str, text: &str, d: Diagnostic) -> LoadError {
    LoadError::Unusable {
        sources: Box::new(Sources {
            name: name.to_string(),
            text: text.to_string(),
            overrides: Vec::new(),
        }),
        diagnostic: Box::new(d),
    }
}

/// Validates recipe bytes (checks the encoding first).
pub fn load_bytes(name: &str, bytes: &[u8], overrides: &[String]) -> Result<Loaded, LoadError> {
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(unusable(
            name,
            "",
            Diagnostic::new("", None, "the recipe is UTF-16 encoded")
                .help("save the file as UTF-8 (YAML recipes are UTF-8 text)"),
        ));
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(text) => load_str(name, text, overrides),
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            let line = good.iter().filter(|&&b| b == b'\n').count() as u32 + 1;
            let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&good[line_start..]).chars().count() as u32 + 1;
            let text = String::from_utf8_lossy(bytes).into_owned();
            Err(unusable(
                name,
                &text,
                Diagnostic::new(
                    "",
                    Some(Origin::File { line, column }),
                    format!(
                        "the recipe is not valid UTF-8 (byte 0x{:02X} at offset {})",
                        bytes[e.valid_up_to()],
                        e.valid_up_to()
                    ),
                )
                .help("save the file as UTF-8"),
            ))
        }
    }
}

/// Validates recipe text.
pub fn load_str(name: &str, text: &str, overrides: &[String]) -> Result<Loaded, LoadError> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let sources = Sources {
        name: name.to_string(),
        text: text.to_string(),
        overrides: overrides.to_vec(),
    };
    let invalid = |diagnostics: Vec<Diagnostic>| LoadError::Invalid {
        sources: Box::new(sources.clone()),
        diagnostics,
    };

    let mut tree = match yaml::parse(text) {
        Ok(tree) => tree,
        Err(e) => return Err(invalid(syntax_diagnostics(text, e))),
    };
    if tree.is_null() {
        tree = Node {
            value: Value::Map(Vec::new()),
            origin: Origin::File { line: 1, column: 1 },
        };
    }
    if tree.as_map().is_none() {
        return Err(invalid(vec![
            Diagnostic::new(
                "",
                Some(tree.origin),
                format!(
                    "a recipe is a mapping of keys to values, found {}",
                    tree.kind()
                ),
            )
            .help("write one `key: value` per line, e.g. `base_model: HuggingFaceTB/SmolLM2-135M`"),
        ]));
    }

    if tree
        .as_map()
        .is_some_and(|m| m.iter().all(|(_, v)| v.is_null()))
        && overrides.is_empty()
    {
        return Err(invalid(vec![
            Diagnostic::new("", None, "the recipe is empty").help(
                "a recipe needs at least base_model, adapter, lora_target_linear (or lora_target_modules), datasets, learning_rate and num_epochs (or max_steps); see recipes/tiny-smoke.yaml",
            ),
        ]));
    }
    let mut errors = Vec::new();
    for (index, text) in overrides.iter().enumerate() {
        if let Err(d) = apply_override(&mut tree, index, text) {
            errors.push(d);
        }
    }
    duplicate_keys(&tree, &mut Vec::new(), &mut errors);
    // Axolotl keys that are not recipe fields are answered by name and taken out (issue 15).
    let inert = crate::classify::apply(&mut tree, &mut errors);
    let raw = typed_keys(&tree, &mut errors);

    let mut resolved = resolve::resolve(&raw, &tree);
    if let Some(plan) = &mut resolved.plan {
        plan.substitutions.splice(0..0, inert);
    }
    errors.extend(resolved.errors);
    if tree
        .as_map()
        .is_some_and(|m| m.iter().all(|(_, v)| v.is_null()))
        && errors.is_empty()
    {
        errors.push(Diagnostic::new("", None, "the recipe is empty"));
    }
    if !errors.is_empty() {
        sort_by_position(&mut errors);
        return Err(invalid(errors));
    }
    match resolved.plan {
        Some(plan) => Ok(Loaded {
            plan,
            raw,
            explanation: resolved.explanation,
            sources,
        }),
        None => Err(invalid(vec![Diagnostic::new(
            "",
            None,
            "internal: the recipe could not be resolved although no error was reported",
        )])),
    }
}

fn sort_by_position(errors: &mut [Diagnostic]) {
    errors.sort_by_key(|d| match d.origin {
        Some(Origin::File { line, column }) => (0, line as usize, column as usize),
        Some(Origin::Override { index, column }) => (1, index, column as usize),
        None => (2, 0, 0),
    });
}

fn syntax_diagnostics(text: &str, e: yaml::SyntaxError) -> Vec<Diagnostic> {
    // YAML forbids tabs in indentation; say so plainly rather than as a parser error.
    let tabs: Vec<Diagnostic> = text
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let indent: String = line.chars().take_while(|c| c.is_whitespace()).collect();
            indent.find('\t').map(|pos| {
                Diagnostic::new(
                    "",
                    Some(Origin::File {
                        line: i as u32 + 1,
                        column: indent[..pos].chars().count() as u32 + 1,
                    }),
                    "tab character in indentation",
                )
                .help("YAML indentation must use spaces; replace the tab with spaces")
            })
        })
        .collect();
    if !tabs.is_empty() {
        return tabs;
    }
    let message = if ["budget", "depth", "recursion"]
        .iter()
        .any(|w| e.message.contains(w))
    {
        format!(
            "the recipe is nested too deeply or is too large: {}",
            e.message
        )
    } else {
        format!("YAML syntax error: {}", e.message)
    };
    let help = if message.starts_with("the recipe is nested") {
        "recipes are flat; no value needs more than a few levels of nesting"
    } else {
        "fix the YAML syntax at or before this position (indentation, colons, quotes, unclosed [ or {)"
    };
    vec![Diagnostic::new("", e.origin, message).help(help)]
}

/// Reports every repeated key, at every depth, pointing at the repeat and naming the first.
fn duplicate_keys(node: &Node, path: &mut Vec<Segment>, errors: &mut Vec<Diagnostic>) {
    match &node.value {
        Value::Map(entries) => {
            let mut first: HashMap<&str, &Key> = HashMap::new();
            for (k, v) in entries {
                path.push(Segment::Key(k.name.clone()));
                if let Some(prev) = first.get(k.name.as_str()) {
                    let at = match prev.origin {
                        Origin::File { line, column } => format!("line {line}:{column}"),
                        Origin::Override { index, .. } => format!("override #{}", index + 1),
                    };
                    errors.push(
                        Diagnostic::new(
                            yaml::render_path(path),
                            Some(k.origin),
                            format!("duplicate key `{}` (first given at {at})", k.name),
                        )
                        .help("keep one of them; YAML keys must be unique"),
                    );
                } else {
                    first.insert(&k.name, k);
                }
                duplicate_keys(v, path, errors);
                path.pop();
            }
        }
        Value::Seq(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(Segment::Index(i));
                duplicate_keys(v, path, errors);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Checks every top-level key on its own, so that one bad key does not hide the others, and
/// assembles the typed recipe from the keys that passed.
fn typed_keys(tree: &Node, errors: &mut Vec<Diagnostic>) -> RawRecipe {
    let known = raw::field_names();
    let mut good = serde_json::Map::new();
    let mut datasets: Vec<(String, Vec<RawDataset>)> = Vec::new();
    for (key, value) in tree.as_map().unwrap_or_default() {
        let path = vec![Segment::Key(key.name.clone())];
        if key.name.starts_with("x-") {
            continue; // extension keys hold YAML anchors (as in docker compose); not recipe keys
        }
        if known.contains(&key.name) {
            if value.is_null() {
                continue; // empty = unset
            }
            if let (true, Value::Seq(items)) = (
                key.name == "datasets" || key.name == "test_datasets",
                &value.value,
            ) {
                // Entry by entry, so that one bad dataset does not hide the others' errors.
                let entries: Vec<RawDataset> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let one = serde_json::json!({ key.name.clone(): [item.to_json()] });
                        match serde_path_to_error::deserialize::<_, RawRecipe>(one) {
                            Ok(r) => r
                                .datasets
                                .or(r.test_datasets)
                                .and_then(|mut v| v.pop())
                                .unwrap_or_default(),
                            Err(e) => {
                                let mut d = serde_diagnostic(tree, e);
                                // The entry was checked alone, as index 0: restore its index.
                                let wrong = format!("{}[0]", key.name);
                                let right = format!("{}[{i}]", key.name);
                                if d.path.starts_with(&wrong) {
                                    d.path = d.path.replacen(&wrong, &right, 1);
                                    d.origin = yaml::parse_path(&d.path)
                                        .map(|p| {
                                            if d.message.starts_with("unknown key") {
                                                tree.locate_key(&p)
                                            } else {
                                                tree.locate(&p)
                                            }
                                        })
                                        .or(d.origin);
                                }
                                errors.push(d);
                                RawDataset {
                                    invalid: true,
                                    ..Default::default()
                                }
                            }
                        }
                    })
                    .collect();
                datasets.push((key.name.clone(), entries));
                continue;
            }
            let one = serde_json::json!({ key.name.clone(): value.to_json() });
            match serde_path_to_error::deserialize::<_, RawRecipe>(one) {
                Ok(_) => {
                    good.insert(key.name.clone(), value.to_json());
                }
                Err(e) => errors.push(serde_diagnostic(tree, e)),
            }
        } else {
            let candidates = known
                .iter()
                .map(String::as_str)
                .chain(keys::all_known().map(|k| -> &str { k }));
            let help = match keys::did_you_mean(&key.name, candidates) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "remove it; `runner schema` lists every key".to_string(),
            };
            errors.push(
                Diagnostic::new(
                    yaml::render_path(&path),
                    Some(key.origin),
                    format!("unknown key `{}`", key.name),
                )
                .help(help),
            );
        }
    }
    // Each key deserialized alone, so together they cannot fail.
    let mut raw: RawRecipe =
        serde_json::from_value(serde_json::Value::Object(good)).unwrap_or_default();
    for (key, entries) in datasets {
        if key == "datasets" {
            raw.datasets = Some(entries);
        } else {
            raw.test_datasets = Some(entries);
        }
    }
    raw
}

/// Turns a serde error at a path into a diagnostic that points into the recipe.
fn serde_diagnostic(tree: &Node, e: serde_path_to_error::Error<serde_json::Error>) -> Diagnostic {
    let mut path: Vec<Segment> =
        e.path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
                serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
                serde_path_to_error::Segment::Enum { .. }
                | serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
    let inner = e.into_inner().to_string();
    let inner = inner
        .split(" at line ")
        .next()
        .unwrap_or(&inner)
        .to_string();

    if let Some(field) = between(&inner, "unknown field `", "`") {
        if path.last() != Some(&Segment::Key(field.to_string())) {
            path.push(Segment::Key(field.to_string()));
        }
        let names = raw::dataset_field_names();
        let expected = expected_list(&inner);
        let candidates: Vec<&str> = if expected.is_empty() {
            names.iter().map(String::as_str).collect()
        } else {
            expected.clone()
        };
        let help = match keys::did_you_mean(field, candidates.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("valid keys here: {}", candidates.join(", ")),
        };
        return Diagnostic::new(
            yaml::render_path(&path),
            Some(tree.locate_key(&path)),
            format!("unknown key `{field}`"),
        )
        .help(help);
    }
    let rendered = yaml::render_path(&path);
    let origin = Some(tree.locate(&path));
    let key_name = path
        .iter()
        .rev()
        .find_map(|s| match s {
            Segment::Key(k) => Some(k.as_str()),
            Segment::Index(_) => None,
        })
        .unwrap_or("");
    if let Some(value) = between(&inner, "unknown variant `", "`") {
        let expected = expected_list(&inner);
        if let Some(why) = keys::refused_value(key_name, value) {
            return Diagnostic::new(
                rendered,
                origin,
                format!("`{key_name}: {value}` is not supported"),
            )
            .help(format!("{why}; valid values: {}", expected.join(", ")));
        }
        let help = match keys::did_you_mean(value, expected.iter().copied()) {
            Some(s) => format!("did you mean `{s}`? valid values: {}", expected.join(", ")),
            None => format!("valid values: {}", expected.join(", ")),
        };
        return Diagnostic::new(
            rendered,
            origin,
            format!("unknown value `{value}` for `{key_name}`"),
        )
        .help(help);
    }
    let message = friendly_type_message(&inner);
    let nested = path.iter().any(|s| matches!(s, Segment::Index(_)));
    let help = match crate::schema::describe(key_name, nested)
        .or_else(|| crate::schema::describe(key_name, false))
    {
        Some(text) => format!("`{key_name}`: {text}"),
        None => format!("see the description of `{key_name}` in `runner schema`"),
    };
    Diagnostic::new(rendered, origin, format!("`{key_name}`: {message}")).help(help)
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let i = text.find(start)? + start.len();
    let j = text[i..].find(end)?;
    Some(&text[i..i + j])
}

/// The names listed after "expected one of" / "expected" in a serde message.
fn expected_list(message: &str) -> Vec<&str> {
    let Some(i) = message.find("expected") else {
        return Vec::new();
    };
    message[i..].split('`').skip(1).step_by(2).collect()
}

/// Rewrites serde's Rust-flavoured wording ("expected u64") into recipe terms.
fn friendly_type_message(message: &str) -> String {
    let mut m = message.to_string();
    for (from, to) in [
        ("expected u64", "expected a whole number ≥ 0"),
        ("expected u32", "expected a whole number ≥ 0"),
        ("expected usize", "expected a whole number ≥ 0"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected a list"),
        ("expected a map", "expected a mapping"),
        (
            "expected struct RawDataset",
            "expected a dataset mapping (`path:`, `type:`, ...)",
        ),
        (
            "expected struct RawSpecialTokens",
            "expected a mapping of special tokens",
        ),
        (
            "expected struct RawCustomFormat",
            "expected a mapping of custom format fields",
        ),
        ("invalid type: map", "invalid type: mapping"),
        ("invalid type: sequence", "invalid type: list"),
        ("floating point", "number"),
    ] {
        m = m.replace(from, to);
    }
    m
}

/// Applies `key=value` (value parsed as YAML) onto the tree. Creates missing mappings on the
/// way; list indices must exist or be the next index.
fn apply_override(tree: &mut Node, index: usize, text: &str) -> Result<(), Diagnostic> {
    let at = |column: u32| Some(Origin::Override { index, column });
    let Some(eq) = text.find('=') else {
        return Err(
            Diagnostic::new("", at(1), format!("override `{text}` has no `=`"))
                .help("write overrides as key=value, e.g. --set lora_r=32"),
        );
    };
    let (key_text, value_text) = (&text[..eq], &text[eq + 1..]);
    let Some(path) = yaml::parse_path(key_text.trim()) else {
        return Err(
            Diagnostic::new("", at(1), format!("`{key_text}` is not a recipe path")).help(
                "use a key such as `lora_r`, `datasets[0].path` or `special_tokens.pad_token`",
            ),
        );
    };
    let value_column = key_text.chars().count() as u32 + 2;
    let mut value = if value_text.trim().is_empty() {
        Node {
            value: Value::Null,
            origin: Origin::Override {
                index,
                column: value_column,
            },
        }
    } else {
        yaml::parse(value_text).map_err(|e| {
            Diagnostic::new(
                key_text,
                at(value_column),
                format!("the value of override `{key_text}` is not valid YAML: {}", e.message),
            )
            .help("quote strings that contain YAML punctuation, e.g. --set 'format=\"[INST] {instruction}\"'")
        })?
    };
    shift_origins(&mut value, index, value_column);

    let mut node = tree;
    let key_origin = Origin::Override { index, column: 1 };
    for (i, seg) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        match seg {
            Segment::Key(name) => {
                if node.is_null() {
                    node.value = Value::Map(Vec::new());
                }
                let Value::Map(entries) = &mut node.value else {
                    return Err(Diagnostic::new(
                        key_text,
                        at(1),
                        format!("`{}` is not a mapping", yaml::render_path(&path[..i])),
                    ));
                };
                let pos = match entries.iter().rposition(|(k, _)| &k.name == name) {
                    Some(p) => p,
                    None => {
                        entries.push((
                            Key {
                                name: name.clone(),
                                origin: key_origin,
                            },
                            Node {
                                value: Value::Null,
                                origin: key_origin,
                            },
                        ));
                        entries.len() - 1
                    }
                };
                if last {
                    entries[pos].1 = value;
                    return Ok(());
                }
                node = &mut entries[pos].1;
            }
            Segment::Index(ix) => {
                if node.is_null() {
                    node.value = Value::Seq(Vec::new());
                }
                let Value::Seq(items) = &mut node.value else {
                    return Err(Diagnostic::new(
                        key_text,
                        at(1),
                        format!("`{}` is not a list", yaml::render_path(&path[..i])),
                    ));
                };
                if *ix > items.len() {
                    return Err(Diagnostic::new(
                        key_text,
                        at(1),
                        format!(
                            "`{}` has {} entries; index {ix} is out of range",
                            yaml::render_path(&path[..i]),
                            items.len()
                        ),
                    )
                    .help(format!("use an index from 0 to {}", items.len())));
                }
                if *ix == items.len() {
                    items.push(Node {
                        value: Value::Map(Vec::new()),
                        origin: key_origin,
                    });
                }
                if last {
                    items[*ix] = value;
                    return Ok(());
                }
                node = &mut items[*ix];
            }
        }
    }
    Ok(())
}

fn shift_origins(node: &mut Node, index: usize, base: u32) {
    let shift = |o: &mut Origin| {
        if let Origin::File { line, column } = *o {
            // Override values are one line; a multi-line value keeps the line's column.
            let _ = line;
            *o = Origin::Override {
                index,
                column: base + column - 1,
            };
        }
    };
    shift(&mut node.origin);
    match &mut node.value {
        Value::Seq(items) => items.iter_mut().for_each(|n| shift_origins(n, index, base)),
        Value::Map(entries) => {
            for (k, v) in entries {
                shift(&mut k.origin);
                shift_origins(v, index, base);
            }
        }
        _ => {}
    }
}
