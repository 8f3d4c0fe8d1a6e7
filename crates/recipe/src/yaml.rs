//! The raw stage: YAML text → a tree of nodes that remembers where every key and value came from.
//!
//! serde-saphyr does the parsing (anchors, aliases and merge keys included); we read into our own
//! [`Node`] tree rather than straight into the recipe types so that every error can be reported,
//! not just the first, and every error can point at the line and column it is about.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

/// Where a node came from: the recipe file or one of the command-line overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The recipe file, 1-based line and column.
    File { line: u32, column: u32 },
    /// The n-th `--set` override (0-based), 1-based column within its value text.
    Override { index: usize, column: u32 },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub origin: Origin,
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// A short name of the node's kind for messages ("a string", "a list", ...).
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "empty",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The value as JSON for typed deserialization. Non-finite floats become strings so that
    /// the typed stage rejects them with a normal type error.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or_else(|| J::String(f.to_string())),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => {
                let mut map = serde_json::Map::new();
                for (k, v) in entries {
                    map.insert(k.name.clone(), v.to_json());
                }
                J::Object(map)
            }
        }
    }

    /// Follows a path of segments (`datasets`, `1`, `type`) as far as it exists and returns the
    /// deepest node reached and, when the last segment names a key, that key's own origin.
    pub fn locate(&self, path: &[Segment]) -> Origin {
        let mut node = self;
        let mut origin = self.origin;
        for seg in path {
            match (seg, &node.value) {
                (Segment::Key(name), Value::Map(entries)) => {
                    match entries.iter().rev().find(|(k, _)| &k.name == name) {
                        Some((k, v)) => {
                            // Point at the value when it exists, at the key otherwise.
                            origin = if v.is_null() { k.origin } else { v.origin };
                            node = v;
                        }
                        None => return origin,
                    }
                }
                (Segment::Index(i), Value::Seq(items)) => match items.get(*i) {
                    Some(v) => {
                        origin = v.origin;
                        node = v;
                    }
                    None => return origin,
                },
                _ => return origin,
            }
        }
        origin
    }

    /// The origin of a key itself (for "unknown key" errors), falling back to [`Node::locate`].
    pub fn locate_key(&self, path: &[Segment]) -> Origin {
        if let Some((last, parent)) = path.split_last() {
            let mut node = self;
            for seg in parent {
                match (seg, &node.value) {
                    (Segment::Key(name), Value::Map(entries)) => {
                        match entries.iter().rev().find(|(k, _)| &k.name == name) {
                            Some((_, v)) => node = v,
                            None => return self.locate(path),
                        }
                    }
                    (Segment::Index(i), Value::Seq(items)) => match items.get(*i) {
                        Some(v) => node = v,
                        None => return self.locate(path),
                    },
                    _ => return self.locate(path),
                }
            }
            if let (Segment::Key(name), Value::Map(entries)) = (last, &node.value)
                && let Some((k, _)) = entries.iter().rev().find(|(k, _)| &k.name == name)
            {
                return k.origin;
            }
        }
        self.locate(path)
    }
}

/// One step of a recipe path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// Renders a path the way users write it: `datasets[1].type`.
pub fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => {
                out.push_str(&format!("[{i}]"));
            }
        }
    }
    out
}

/// Parses `datasets[1].type` (or `datasets.1.type`) into segments. Returns None when malformed.
pub fn parse_path(text: &str) -> Option<Vec<Segment>> {
    let mut out = Vec::new();
    for part in text.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() && out.is_empty() {
            return None;
        }
        if !name.is_empty() {
            match name.parse::<usize>() {
                Ok(i) if !out.is_empty() => out.push(Segment::Index(i)),
                _ => {
                    if !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        return None;
                    }
                    out.push(Segment::Key(name.to_string()))
                }
            }
        }
        while !rest.is_empty() {
            let close = rest.find(']')?;
            let idx: usize = rest[1..close].parse().ok()?;
            out.push(Segment::Index(idx));
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return None;
            }
        }
    }
    if out.is_empty() { None } else { Some(out) }
}

fn origin_of(loc: serde_saphyr::Location) -> Origin {
    Origin::File {
        line: loc.line() as u32,
        column: loc.column() as u32,
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(d)?;
        Ok(Node {
            value: spanned.value,
            origin: origin_of(spanned.referenced),
        })
    }
}

/// A mapping key: any scalar, kept as its text.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<KeyText, E> {
                Ok(KeyText(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText(String::new()))
            }
        }
        // As text: YAML 1.1 readers would turn a key like `y` or `on` into a boolean.
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Value, D2::Error> {
                Value::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
                Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
                Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
                Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
                Ok(Value::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Node>()? {
                    items.push(item);
                }
                Ok(Value::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
                    let value = map.next_value::<Node>()?;
                    entries.push((
                        Key {
                            name: key.value.0,
                            origin: origin_of(key.referenced),
                        },
                        value,
                    ));
                }
                Ok(Value::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// A YAML syntax problem, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub message: String,
    pub origin: Option<Origin>,
}

/// Parses YAML text into a node tree. Duplicate keys are kept (the validator reports them with
/// both locations); nesting depth and size are bounded so hostile input cannot exhaust memory.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = 64;
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
        budget: Some(budget),
    };
    serde_saphyr::from_str_with_options::<Node>(text, options).map_err(|e| {
        let origin = e.location().map(origin_of);
        SyntaxError {
            message: first_line(&e.to_string()),
            origin,
        }
    })
}

/// serde-saphyr's messages carry a rendered snippet after the first line; we render our own.
fn first_line(message: &str) -> String {
    let mut line = message.lines().next().unwrap_or(message).trim();
    // Drop a leading "error: line X column Y: " that we show in our own format.
    if let Some(rest) = line.strip_prefix("error: ") {
        line = rest;
    }
    if line.starts_with("line ")
        && let Some(i) = line.find(": ")
    {
        line = &line[i + 2..];
    }
    // Drop a trailing " at line X column Y" that we show in our own format.
    match line.find(" at line ") {
        Some(i) => line[..i].to_string(),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(node: &Node) -> (u32, u32) {
        match node.origin {
            Origin::File { line, column } => (line, column),
            Origin::Override { .. } => (0, 0),
        }
    }

    #[test]
    fn keeps_positions_of_nested_values() {
        let n = parse("a: 1\nlist:\n  - x: true\n    y: [1, 2]\n").unwrap();
        let m = n.as_map().unwrap();
        assert_eq!(m[0].0.name, "a");
        assert_eq!(at(&m[0].1), (1, 4));
        let Value::Seq(items) = &m[1].1.value else {
            panic!("not a seq")
        };
        let inner = items[0].as_map().unwrap();
        assert_eq!(inner[0].0.origin, Origin::File { line: 3, column: 5 });
        assert_eq!(at(&inner[1].1), (4, 8));
    }

    #[test]
    fn empty_values_are_null() {
        let n = parse("a:\nb: ~\nc: null\n").unwrap();
        assert!(n.as_map().unwrap().iter().all(|(_, v)| v.is_null()));
    }

    #[test]
    fn duplicate_keys_are_kept() {
        let n = parse("a: 1\na: 2\n").unwrap();
        assert_eq!(n.as_map().unwrap().len(), 2);
    }

    #[test]
    fn anchors_aliases_and_merge_keys_resolve() {
        let n = parse("base: &b\n  x: 1\n  y: 2\nother:\n  <<: *b\n  y: 3\ncopy: *b\n").unwrap();
        let j = n.to_json();
        assert_eq!(j["other"]["x"], 1);
        assert_eq!(j["other"]["y"], 3);
        assert_eq!(j["copy"]["y"], 2);
    }

    #[test]
    fn paths_round_trip() {
        let p = parse_path("datasets[1].type").unwrap();
        assert_eq!(
            p,
            vec![
                Segment::Key("datasets".into()),
                Segment::Index(1),
                Segment::Key("type".into())
            ]
        );
        assert_eq!(render_path(&p), "datasets[1].type");
        assert_eq!(parse_path("datasets.0.path").unwrap()[1], Segment::Index(0));
        assert!(parse_path("").is_none());
        assert!(parse_path("a[x]").is_none());
    }
}
