//! ARCHITECTURE.md cannot drift from the code: every code name it writes in backticks must exist.
//!
//! A backticked token is read as one of these, and checked accordingly:
//!
//! * a file or directory path (`crates/kokino-exec/src/guard.rs`, `tests/common/`,
//!   `kokino-http/src/error.rs`): it must exist relative to the workspace root, `crates/`,
//!   `bins/`, or a member's directory or `src/`; a bare file name (`sse.rs`) must name some file
//!   of the workspace;
//! * a Rust path (`Broker::execute`, `kokino_cli::build_args`, `lock::AgentLocks`): its last
//!   segment must be defined somewhere in the workspace (`fn`, `struct`, `enum`, `trait`, `type`,
//!   `const`, `static`, `mod`, or an enum variant), and a `kokino_*` first segment must be a
//!   member; paths into `std`, `tokio`, `sqlx` and other external crates are not ours to check;
//! * a type-like name (`AgentId`, `ServiceError`): it must be defined as above;
//! * a snake_case name with an underscore (`run_headless`, `max_prompt_bytes`) or a
//!   SCREAMING_CASE name (`STORE_UNAVAILABLE`): it must appear as a whole word in the sources
//!   (functions, fields, error codes and variables are all spelled out somewhere);
//! * a crate or binary name (`kokino-broker`): it must be a member's package or binary name.
//!
//! Everything else is prose in code font and is not checked: commands and flags (anything with a
//! space or starting with `-`), HTTP routes (starting with `/` or a method), attributes, JSON, and
//! single lowercase words (`shadow`, `running`), which are too common to mean anything.
//! [`IGNORED`] lists the few names that are deliberately not in this workspace.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Names ARCHITECTURE.md mentions that are deliberately not in the workspace, with the reason.
const IGNORED: &[(&str, &str)] = &[
    (
        "cleanup-sessions.js",
        "the predecessor's script that kokino-cleanup replaces",
    ),
    (
        "rotate-logs.sh",
        "the predecessor's script that kokino-cleanup replaces",
    ),
];

/// First segments of Rust paths that belong to other crates.
const EXTERNAL_ROOTS: &[&str] = &[
    "std",
    "core",
    "alloc",
    "tokio",
    "tokio_util",
    "sqlx",
    "serde",
    "serde_json",
    "axum",
    "tower",
    "hyper",
    "tracing",
    "clap",
    "nix",
    "libc",
    "chrono",
    "reqwest",
    "metrics",
    "futures",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_owned()
}

/// Every file of the workspace outside `target/` and `.git/`.
fn all_files() -> &'static [PathBuf] {
    static FILES: OnceLock<Vec<PathBuf>> = OnceLock::new();
    FILES.get_or_init(|| {
        let mut out = Vec::new();
        let mut stack = vec![workspace_root()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name();
                if path.is_dir() {
                    if name != "target" && name != ".git" {
                        stack.push(path);
                    }
                } else {
                    out.push(path);
                }
            }
        }
        out.sort();
        out
    })
}

/// The text of every Rust, SQL and TOML file, for the "is it named anywhere" checks.
fn sources() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let mut text = String::new();
        for path in all_files() {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            // This file spells out made-up names to test that they are reported.
            if matches!(ext, "rs" | "sql" | "toml") && !path.ends_with(file!()) {
                text.push_str(&std::fs::read_to_string(path).unwrap_or_default());
                text.push('\n');
            }
        }
        text
    })
}

/// Member directories (`crates/kokino-core`, `bins/broker`, `xtask`).
fn member_dirs() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut dirs = vec![root.join("xtask")];
    for parent in ["crates", "bins"] {
        if let Ok(entries) = std::fs::read_dir(root.join(parent)) {
            dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    dirs
}

/// Package and binary names, read from the members' Cargo.toml (`name = "..."` lines).
fn package_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for dir in member_dirs() {
        let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        for line in manifest.lines() {
            if let Some(rest) = line.trim().strip_prefix("name = \"") {
                names.insert(rest.trim_end_matches('"').to_owned());
            }
        }
    }
    names
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

fn has_word(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(at, _)| {
        !text[..at].chars().next_back().is_some_and(ident)
            && !text[at + word.len()..].chars().next().is_some_and(ident)
    })
}

/// Whether `name` is defined in the workspace's Rust sources: an item of that name, or an enum
/// variant or a macro-defined type (a line that starts with the name followed by `,`, `(`, ` {`
/// or ` =`).
fn is_defined(name: &str) -> bool {
    let text = sources();
    let items = [
        "fn", "struct", "enum", "trait", "type", "const", "static", "mod", "union",
    ];
    if items
        .iter()
        .any(|kw| has_word(text, &format!("{kw} {name}")))
    {
        return true;
    }
    // Types defined by a macro (`closed_set! { CliType, ... }`) still get an inherent `impl`.
    if has_word(text, &format!("impl {name}")) {
        return true;
    }
    text.lines().any(|line| {
        let t = line.trim_start();
        t.strip_prefix(name).is_some_and(|rest| {
            rest.starts_with(',')
                || rest.starts_with('(')
                || rest.starts_with(" {")
                || rest.starts_with(" =")
                || rest.is_empty()
        })
    })
}

/// Whether a file that implements `ty` (`impl Ty`, `impl<..> Ty`, `for Ty`) defines
/// `fn method` (or an associated `const`/`type` of that name, or a variant of an enum `ty`).
/// A type no file implements by name (macro-generated) is given the benefit of the doubt.
fn is_defined_on(ty: &str, method: &str) -> bool {
    let implementing: Vec<&String> = rust_sources()
        .iter()
        .filter(|text| {
            has_word(text, &format!("impl {ty}"))
                || has_word(text, &format!("for {ty}"))
                || text.contains(&format!("> {ty} {{"))
                || has_word(text, &format!("enum {ty}"))
        })
        .collect();
    if implementing.is_empty() {
        return true;
    }
    implementing.iter().any(|text| {
        ["fn", "const", "type"]
            .iter()
            .any(|kw| has_word(text, &format!("{kw} {method}")))
            || has_word(text, &format!("{ty}::{method}"))
    })
}

/// The text of each Rust file of the workspace (this file excepted, see [`sources`]).
fn rust_sources() -> &'static [String] {
    static TEXTS: OnceLock<Vec<String>> = OnceLock::new();
    TEXTS.get_or_init(|| {
        all_files()
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "rs") && !p.ends_with(file!()))
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    })
}

/// Whether a path-like token names an existing file or directory.
fn path_exists(token: &str) -> bool {
    let rel = token.trim_end_matches('/');
    if token.ends_with('/') {
        // A directory: relative to a base below, or the tail of some directory of the workspace.
        let tail = format!("/{rel}/");
        if all_files()
            .iter()
            .any(|f| f.to_string_lossy().contains(&tail))
        {
            return true;
        }
    } else if !rel.contains('/') {
        // A bare file name: some file of the workspace has it.
        return all_files()
            .iter()
            .any(|f| f.file_name().is_some_and(|n| n == rel));
    }
    let root = workspace_root();
    let mut bases = vec![root.clone(), root.join("crates"), root.join("bins")];
    for dir in member_dirs() {
        bases.push(dir.join("src"));
        bases.push(dir);
    }
    bases.iter().any(|base| base.join(rel).exists())
}

/// What is wrong with one backticked token, or `None` when it checks out or is not code.
fn problem(token: &str) -> Option<String> {
    let token = token.trim();
    if IGNORED.iter().any(|(name, _)| *name == token) {
        return None;
    }
    // Prose in code font: commands, flags, routes, attributes, JSON, globs, placeholders.
    if token.is_empty()
        || token.contains(char::is_whitespace)
        || token.starts_with(['-', '/', '#', '{', '$', '<'])
        || token.contains(['[', '*', '"', '='])
        || token.ends_with(':')
    {
        return None;
    }
    // Paths: crates/x/src/y.rs, tests/common/, sse.rs.
    let file_like = token.contains('/')
        || token.rsplit_once('.').is_some_and(|(stem, ext)| {
            is_ident(&stem.replace('-', "_"))
                && matches!(ext, "rs" | "md" | "sql" | "toml" | "sh" | "yml" | "json")
        });
    if file_like {
        if token.starts_with("shared/") {
            // The project's shared spec and captures live outside the repository.
            return None;
        }
        return (!path_exists(token)).then(|| format!("no file or directory `{token}`"));
    }
    // Rust paths and calls: strip a trailing call (`terminal()`, `router(AppState)`).
    let code = token.split('(').next().unwrap_or(token);
    if code.contains("::") {
        let segments: Vec<&str> = code.split("::").collect();
        if segments.iter().any(|s| !is_ident(s)) {
            return None;
        }
        let first = segments[0];
        if EXTERNAL_ROOTS.contains(&first) {
            return None;
        }
        if first.starts_with("kokino_") && !package_names().contains(&first.replace('_', "-")) {
            return Some(format!("`{token}`: no crate `{first}`"));
        }
        let last = segments[segments.len() - 1];
        if !is_defined(last) {
            return Some(format!("`{token}`: `{last}` is not defined"));
        }
        // `Type::method`: the method must be in a file that implements the type, so that a
        // method that moved to another type (or was removed) is caught even when some other
        // type still has a function of that name.
        if let [.., ty, method] = segments.as_slice() {
            if ty.starts_with(|c: char| c.is_ascii_uppercase()) && !is_defined_on(ty, method) {
                return Some(format!("`{token}`: no `fn {method}` in an `impl {ty}`"));
            }
        }
        return None;
    }
    if code.contains('-') {
        // kokino-broker, kokino-doctor-cli: package or binary names.
        if code.starts_with("kokino-") {
            return (!package_names().contains(code))
                .then(|| format!("`{token}`: no package or binary of that name"));
        }
        return None;
    }
    if !is_ident(code) {
        return None;
    }
    let upper = code.chars().next().is_some_and(|c| c.is_ascii_uppercase());
    let screaming = code.chars().all(|c| !c.is_ascii_lowercase());
    if upper && !screaming {
        return (!is_defined(code)).then(|| format!("`{token}` is not defined"));
    }
    if screaming || code.contains('_') {
        return (!has_word(sources(), code)).then(|| format!("`{token}` appears in no source"));
    }
    None
}

/// The backticked tokens of a Markdown text, outside fenced code blocks.
fn backticked(doc: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (index, line) in doc.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Double backticks (``` `` `a` `` ```) quote a backtick; drop them before splitting.
        let line = line.replace("``", "");
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 1 {
                out.push((index + 1, part.to_owned()));
            }
        }
    }
    out
}

#[test]
fn every_code_name_in_architecture_md_exists() {
    let path = workspace_root().join("ARCHITECTURE.md");
    let doc = std::fs::read_to_string(&path).expect("read ARCHITECTURE.md");
    let mut problems = String::new();
    for (line, token) in backticked(&doc) {
        if let Some(p) = problem(&token) {
            let _ = writeln!(problems, "ARCHITECTURE.md line {line}: {p}");
        }
    }
    assert!(
        problems.is_empty(),
        "ARCHITECTURE.md names code that does not exist; fix the document (or, for a name that \
         is deliberately not in the workspace, add it to IGNORED in xtask/tests/docs.rs):\n\
         {problems}"
    );
}

#[test]
fn the_token_rules_check_code_and_leave_prose_alone() {
    // Real names pass.
    for ok in [
        "Broker::execute",
        "kokino_core::lock::AgentLocks",
        "AgentId",
        "run_headless",
        "crates/kokino-core/src/breaker/registry.rs",
        "kokino-exec/src/supervisor.rs",
        "tests/layering.rs",
        "kokino-broker",
        "Comparator::terminal()",
        "router(AppState)",
    ] {
        assert_eq!(problem(ok), None, "{ok}");
    }
    // Prose in code font is not checked.
    for prose in [
        "cargo xtask ci",
        "--max-age",
        "GET /agents/{id}/logs",
        "#[cfg(test)]",
        "std::process::Command",
        "shadow",
        "shared/spec/behavior.md",
        "SHADOW_*",
    ] {
        assert_eq!(problem(prose), None, "{prose}");
    }
    // Stale names are caught.
    for stale in [
        "Broker::surely_no_such_method",
        // A function of that name exists, but on another type (`FallbackState`).
        "Broker::effective_mode",
        "NoSuchTypeAnywhere",
        "crates/kokino-core/src/no_such_file.rs",
        "no_such_function_anywhere",
        "kokino_nothing::x",
        "kokino-nothing",
    ] {
        assert!(problem(stale).is_some(), "{stale} should be reported");
    }
}
