//! What to write into a CLI's own configuration before its TUI starts, as pure merges of the
//! files' text: each adds what the CLI documents for "this folder is trusted", "onboarding is
//! done", "this API key is approved", and never changes a value that is already there.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

/// What the preparation of a CLI's configuration may use.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct SetupContext<'a> {
    /// The `HOME` the CLI runs with.
    pub home: &'a Path,
    /// The CLI's working directory, canonicalised (the CLIs key trust by the real path).
    pub cwd: &'a Path,
    /// The CLI's complete environment (Claude's API key is approved by its last characters).
    pub env: &'a BTreeMap<String, String>,
}

impl<'a> SetupContext<'a> {
    /// A context for a CLI running with `home` in `cwd` with `env`.
    pub fn new(home: &'a Path, cwd: &'a Path, env: &'a BTreeMap<String, String>) -> Self {
        SetupContext { home, cwd, env }
    }
}

/// Parses `existing` as a JSON object (an absent or empty file is an empty object).
pub(super) fn json_object(existing: Option<&str>) -> Result<Map<String, Value>, String> {
    match existing.map(str::trim) {
        None | Some("") => Ok(Map::new()),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err("it is not a JSON object".into()),
            Err(e) => Err(format!("it is not JSON: {e}")),
        },
    }
}

/// Sets `key` to `value` in `obj` unless the key is there already; says whether it changed.
pub(super) fn add_missing(obj: &mut Map<String, Value>, key: &str, value: Value) -> bool {
    if obj.contains_key(key) {
        return false;
    }
    obj.insert(key.to_owned(), value);
    true
}

/// The object at `key` in `obj`, created if missing; `None` when the key holds something else
/// (the operator's value, left alone).
pub(super) fn object_at<'m>(
    obj: &'m mut Map<String, Value>,
    key: &str,
) -> Option<&'m mut Map<String, Value>> {
    obj.entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
}

/// The merged object as the file's new text, or `None` when nothing changed.
pub(super) fn json_text(obj: Map<String, Value>, changed: bool) -> Option<String> {
    changed.then(|| {
        let mut s = serde_json::to_string_pretty(&Value::Object(obj)).unwrap_or_default();
        s.push('\n');
        s
    })
}
