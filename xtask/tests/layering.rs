//! The architecture, checked: the crate graph and the sources against the `layering` block of
//! `ARCHITECTURE.md`.
//!
//! The rules are not written here. They are parsed from the fenced ```` ```layering ```` block in
//! `ARCHITECTURE.md`, so the document a developer reads and the check CI runs are the same text
//! and cannot drift apart. The block's grammar is described in `ARCHITECTURE.md` itself; in short:
//!
//! * `CRATE -> DEP DEP ...` (or `-> (none)`): the only workspace crates CRATE may depend on.
//! * `forbid CRATE: EXT EXT ...`: external crates CRATE must not depend on.
//! * `forbid-src CRATE: PATH PATH ...`: paths CRATE's `src/` must not name.
//! * `confine PATH to CRATE CRATE ...`: the only crates whose `src/` may name PATH.
//!
//! Dependencies are read from `cargo metadata --no-deps`; only normal and build dependencies
//! count, because tests may use whatever helps them (a test can open the database with sqlx to
//! look at a row). Sources are read as the compiler would see them in a non-test build: comments,
//! string contents and `#[cfg(test)]` items are dropped, and grouped imports are flattened, so
//! `use std::process::{Command, Stdio};` counts as naming `std::process::Command` while a comment
//! that says "we never use `std::process::Command` here" does not.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

// ---------------------------------------------------------------------------------- the rules

/// The parsed `layering` block.
#[derive(Debug, Default)]
struct Rules {
    /// Crate → the workspace crates it may depend on.
    layers: BTreeMap<String, BTreeSet<String>>,
    /// Crate → external crates it must not depend on.
    forbid: BTreeMap<String, BTreeSet<String>>,
    /// Crate → paths its sources must not name.
    forbid_src: BTreeMap<String, Vec<String>>,
    /// Path → the only crates whose sources may name it.
    confine: Vec<(String, BTreeSet<String>)>,
}

impl Rules {
    /// Every crate name the block mentions, with the line kind that mentions it, so that a
    /// renamed or deleted crate leaves no stale rule behind.
    fn mentioned_crates(&self) -> BTreeMap<String, &'static str> {
        let mut out = BTreeMap::new();
        for (krate, deps) in &self.layers {
            out.insert(krate.clone(), "a `->` line");
            for dep in deps {
                out.entry(dep.clone())
                    .or_insert("the right side of a `->` line");
            }
        }
        for krate in self.forbid.keys() {
            out.entry(krate.clone()).or_insert("a `forbid` line");
        }
        for krate in self.forbid_src.keys() {
            out.entry(krate.clone()).or_insert("a `forbid-src` line");
        }
        for (_, crates) in &self.confine {
            for krate in crates {
                out.entry(krate.clone()).or_insert("a `confine` line");
            }
        }
        out
    }
}

fn parse_rules(doc: &str) -> Result<Rules, String> {
    let mut lines = doc.lines().enumerate();
    let start = lines
        .by_ref()
        .find(|(_, l)| l.trim() == "```layering")
        .ok_or("ARCHITECTURE.md has no ```layering block")?;
    let mut rules = Rules::default();
    let mut closed = false;
    for (index, raw) in lines {
        let line_no = index + 1;
        let line = raw.trim();
        if line.starts_with("```") {
            closed = true;
            break;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |what: &str| format!("ARCHITECTURE.md line {line_no}: {what}: `{line}`");
        let words = |s: &str| -> Vec<String> { s.split_whitespace().map(str::to_owned).collect() };

        if let Some(rest) = line.strip_prefix("forbid-src ") {
            let (krate, paths) = rest.split_once(':').ok_or_else(|| err("expected `:`"))?;
            let paths = words(paths);
            if paths.is_empty() {
                return Err(err("a `forbid-src` line needs at least one path"));
            }
            if rules
                .forbid_src
                .insert(krate.trim().to_owned(), paths)
                .is_some()
            {
                return Err(err("second `forbid-src` line for this crate"));
            }
        } else if let Some(rest) = line.strip_prefix("forbid ") {
            let (krate, deps) = rest.split_once(':').ok_or_else(|| err("expected `:`"))?;
            let deps: BTreeSet<String> = words(deps).into_iter().collect();
            if deps.is_empty() {
                return Err(err("a `forbid` line needs at least one crate"));
            }
            if rules.forbid.insert(krate.trim().to_owned(), deps).is_some() {
                return Err(err("second `forbid` line for this crate"));
            }
        } else if let Some(rest) = line.strip_prefix("confine ") {
            let (path, crates) = rest
                .split_once(" to ")
                .ok_or_else(|| err("expected `confine PATH to CRATE ...`"))?;
            let crates: BTreeSet<String> = words(crates).into_iter().collect();
            if crates.is_empty() {
                return Err(err("a `confine` line needs at least one crate"));
            }
            rules.confine.push((path.trim().to_owned(), crates));
        } else if let Some((krate, deps)) = line.split_once("->") {
            let deps = deps.trim();
            let deps: BTreeSet<String> = if deps == "(none)" {
                BTreeSet::new()
            } else if deps.is_empty() {
                return Err(err(
                    "write `(none)` for a crate with no internal dependencies",
                ));
            } else {
                words(deps).into_iter().collect()
            };
            if rules.layers.insert(krate.trim().to_owned(), deps).is_some() {
                return Err(err("second `->` line for this crate"));
            }
        } else {
            return Err(err(
                "not a rule (expected `->`, `forbid`, `forbid-src` or `confine`)",
            ));
        }
    }
    if !closed {
        return Err(format!(
            "ARCHITECTURE.md line {}: the ```layering block is never closed",
            start.0 + 1
        ));
    }
    Ok(rules)
}

// ---------------------------------------------------------------------------------- the workspace

#[derive(Debug)]
struct Package {
    name: String,
    dir: PathBuf,
    /// Normal and build dependencies (dev-dependencies are left out on purpose).
    deps: BTreeSet<String>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_owned()
}

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let path = workspace_root().join("ARCHITECTURE.md");
        let doc = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        parse_rules(&doc).unwrap_or_else(|e| panic!("{e}"))
    })
}

fn packages() -> &'static [Package] {
    static PACKAGES: OnceLock<Vec<Package>> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        // `$CARGO` is the cargo running this test, so the metadata comes from the same toolchain.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = workspace_root().join("Cargo.toml");
        let out = Command::new(cargo)
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--manifest-path",
            ])
            .arg(&manifest)
            .output()
            .expect("cannot run `cargo metadata`");
        assert!(
            out.status.success(),
            "`cargo metadata` failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
        let members: BTreeSet<&str> = meta["workspace_members"]
            .as_array()
            .expect("workspace_members")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .filter(|p| p["id"].as_str().is_some_and(|id| members.contains(id)))
            .map(|p| {
                let manifest = PathBuf::from(p["manifest_path"].as_str().expect("manifest_path"));
                Package {
                    name: p["name"].as_str().expect("name").to_owned(),
                    dir: manifest.parent().expect("manifest dir").to_owned(),
                    deps: p["dependencies"]
                        .as_array()
                        .expect("dependencies")
                        .iter()
                        .filter(|d| d["kind"].as_str() != Some("dev"))
                        .map(|d| d["name"].as_str().expect("dependency name").to_owned())
                        .collect(),
                }
            })
            .collect()
    })
}

fn package_names() -> BTreeSet<String> {
    packages().iter().map(|p| p.name.clone()).collect()
}

// ---------------------------------------------------------------------------------- graph checks

#[test]
fn every_workspace_crate_is_in_the_layering_table() {
    let rules = rules();
    let names = package_names();
    let mut problems = String::new();
    for name in &names {
        if !rules.layers.contains_key(name) {
            let _ = writeln!(
                problems,
                "workspace crate `{name}` is not in the layering table: add a line \
                 `{name} -> ...` (and `forbid` lines if it has boundaries) to the ```layering \
                 block of ARCHITECTURE.md, and describe the crate in its code map"
            );
        }
    }
    for (name, where_) in rules.mentioned_crates() {
        if !names.contains(&name) {
            let _ = writeln!(
                problems,
                "ARCHITECTURE.md names `{name}` in {where_}, but the workspace has no such \
                 crate: fix or remove the stale rule"
            );
        }
    }
    assert!(problems.is_empty(), "\n{problems}");
}

#[test]
fn internal_dependencies_follow_the_layering_table() {
    let rules = rules();
    let names = package_names();
    let mut problems = String::new();
    for pkg in packages() {
        // A crate missing from the table is reported by its own test; here it may depend on
        // nothing, so its edges are listed too.
        let allowed = rules.layers.get(&pkg.name);
        for dep in pkg.deps.iter().filter(|d| names.contains(*d)) {
            if !allowed.is_some_and(|a| a.contains(dep)) {
                let _ = writeln!(
                    problems,
                    "`{}` depends on `{dep}`, which the layering table in ARCHITECTURE.md does \
                     not allow; move the code to the right layer, or change the table (and say \
                     why in ARCHITECTURE.md)",
                    pkg.name
                );
            }
        }
    }
    assert!(problems.is_empty(), "\n{problems}");
}

#[test]
fn forbidden_external_dependencies_are_absent() {
    let rules = rules();
    let mut problems = String::new();
    for pkg in packages() {
        let Some(forbidden) = rules.forbid.get(&pkg.name) else {
            continue;
        };
        for dep in pkg.deps.intersection(forbidden) {
            let _ = writeln!(
                problems,
                "`{}` depends on `{dep}`, which ARCHITECTURE.md forbids for it",
                pkg.name
            );
        }
    }
    assert!(problems.is_empty(), "\n{problems}");
}

#[test]
fn prose_table_matches_the_layering_block() {
    let path = workspace_root().join("ARCHITECTURE.md");
    let doc = std::fs::read_to_string(&path).expect("ARCHITECTURE.md");
    let table = parse_prose_table(&doc).unwrap_or_else(|e| panic!("{e}"));
    let rules = rules();
    let mut problems = String::new();
    for (krate, deps) in &table {
        match rules.layers.get(krate) {
            None => {
                let _ = writeln!(problems, "the Layering table has a row for `{krate}`, the ```layering block has no `->` line");
            }
            Some(allowed) if allowed != deps => {
                let _ = writeln!(
                    problems,
                    "`{krate}`: the Layering table says it may depend on {deps:?}, the ```layering block says {allowed:?}"
                );
            }
            Some(_) => {}
        }
    }
    for krate in rules.layers.keys().filter(|k| !table.contains_key(*k)) {
        let _ = writeln!(
            problems,
            "`{krate}` has a `->` line but no row in the Layering table"
        );
    }
    assert!(
        problems.is_empty(),
        "\nARCHITECTURE.md disagrees with itself:\n{problems}"
    );
}

/// The "May depend on" column of the table in the `## Layering` section: rows whose first cell
/// is a crate name in backticks; the second cell lists crate names in backticks, or `(none)`.
fn parse_prose_table(doc: &str) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Layering"))
        .ok_or("ARCHITECTURE.md has no `## Layering` section")?;
    let backticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let mut table = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(name), Some(deps)) = (cells.get(1), cells.get(2)) else {
            return Err(format!(
                "ARCHITECTURE.md: malformed Layering table row: `{line}`"
            ));
        };
        let name = backticked(name)
            .into_iter()
            .next()
            .ok_or_else(|| format!("ARCHITECTURE.md: no crate name in row `{line}`"))?;
        let deps: BTreeSet<String> = backticked(deps).into_iter().collect();
        if table.insert(name.clone(), deps).is_some() {
            return Err(format!(
                "ARCHITECTURE.md: two Layering table rows for `{name}`"
            ));
        }
    }
    Ok(table)
}

#[test]
fn layering_table_has_no_cycles() {
    // Cargo rejects cyclic dependencies anyway, but a cyclic *table* would be a confusing
    // document: it would allow edges that can never all exist.
    fn visit<'a>(
        krate: &'a str,
        layers: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Result<(), String> {
        if let Some(at) = path.iter().position(|c| *c == krate) {
            let mut cycle = path[at..].to_vec();
            cycle.push(krate);
            return Err(format!(
                "the layering table has a cycle: {}",
                cycle.join(" -> ")
            ));
        }
        if !done.insert(krate) {
            return Ok(());
        }
        path.push(krate);
        for dep in layers.get(krate).into_iter().flatten() {
            visit(dep, layers, path, done)?;
        }
        path.pop();
        Ok(())
    }
    let layers = &rules().layers;
    let mut done = BTreeSet::new();
    for krate in layers.keys() {
        if let Err(e) = visit(krate, layers, &mut Vec::new(), &mut done) {
            panic!("{e}");
        }
    }
}

// ---------------------------------------------------------------------------------- source checks

#[test]
fn confined_paths_appear_only_in_their_crates() {
    let rules = rules();
    let mut problems = String::new();
    for pkg in packages() {
        let sources = crate_sources(&pkg.dir);
        for (path, allowed) in &rules.confine {
            if allowed.contains(&pkg.name) {
                continue;
            }
            for (file, code) in &sources {
                for line in lines_naming(code, path) {
                    let _ = writeln!(
                        problems,
                        "{}:{line}: `{}` names `{path}`, which ARCHITECTURE.md confines to {}",
                        file.display(),
                        pkg.name,
                        allowed.iter().cloned().collect::<Vec<_>>().join(", ")
                    );
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{problems}");
}

#[test]
fn forbidden_paths_are_absent_from_sources() {
    let rules = rules();
    let mut problems = String::new();
    for pkg in packages() {
        let Some(paths) = rules.forbid_src.get(&pkg.name) else {
            continue;
        };
        for (file, code) in crate_sources(&pkg.dir) {
            for path in paths {
                for line in lines_naming(&code, path) {
                    let _ = writeln!(
                        problems,
                        "{}:{line}: `{}` names `{path}`, which ARCHITECTURE.md forbids in it",
                        file.display(),
                        pkg.name
                    );
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{problems}");
}

/// The non-test code of every `.rs` file under `dir/src`, prepared by [`code_of`]. Files that are
/// test modules (declared `#[cfg(test)] mod name;`) are left out.
fn crate_sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    collect_rs_files(&dir.join("src"), &mut files);
    files.sort();
    let mut prepared = Vec::new();
    let mut test_paths: Vec<PathBuf> = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let (code, test_mods) = code_of(&text);
        let dir = module_dir(file);
        for name in test_mods {
            test_paths.push(dir.join(format!("{name}.rs")));
            test_paths.push(dir.join(name));
        }
        prepared.push((file.clone(), code));
    }
    prepared.retain(|(file, _)| !test_paths.iter().any(|t| file.starts_with(t)));
    prepared
}

fn collect_rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The directory where a file's child modules live: `src/` for `lib.rs`, `main.rs` and
/// `mod.rs`, `src/foo/` for `src/foo.rs`.
fn module_dir(file: &Path) -> PathBuf {
    let parent = file.parent().expect("a file has a parent");
    match file.file_name().and_then(|n| n.to_str()) {
        Some("lib.rs" | "main.rs" | "mod.rs") => parent.to_owned(),
        _ => parent.join(file.file_stem().expect("a file has a stem")),
    }
}

// ---------------------------------------------------------------------------------- the scanner

/// Prepares Rust source for path matching and returns it with the names of the test modules
/// it declares as separate files.
///
/// Comments are dropped and literal contents blanked (a message or a comment that mentions a
/// path is not a use of it); `#[cfg(test)]` items are dropped (tests may spawn processes or open
/// databases); every `use` tree is rewritten as its flat paths. Line breaks are kept everywhere,
/// so line numbers in the result are the file's.
fn code_of(source: &str) -> (String, Vec<String>) {
    let code = strip_comments_and_literals(source);
    let (code, test_mods) = strip_cfg_test_items(&code);
    (flatten_use_trees(&code), test_mods)
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn strip_comments_and_literals(src: &str) -> String {
    let s: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    // Copies the line breaks of `s[from..to]`, so that removed text keeps its line count.
    let keep_newlines = |out: &mut String, from: usize, to: usize| {
        out.extend(s[from..to.min(s.len())].iter().filter(|c| **c == '\n'));
    };
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let start = i;
            let mut depth = 0;
            while i < s.len() {
                if s[i] == '/' && s.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if s[i] == '*' && s.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
            keep_newlines(&mut out, start, i);
        } else if let Some((open, hashes)) = raw_string_start(&s, i) {
            let start = i;
            let mut j = i + open;
            while j < s.len() {
                if s[j] == '"' && (1..=hashes).all(|k| s.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
            out.push_str("\"\"");
            keep_newlines(&mut out, start, i);
        } else if c == '"' {
            let start = i;
            i += 1;
            while i < s.len() && s[i] != '"' {
                i += if s[i] == '\\' { 2 } else { 1 };
            }
            i += 1; // the closing quote
            out.push_str("\"\"");
            keep_newlines(&mut out, start, i);
        } else if c == '\'' && next == Some('\\') {
            // An escaped char literal: `'\n'`, `'\''`, `'\u{1F600}'`.
            let mut j = i + 3;
            while j < s.len() && s[j] != '\'' {
                j += 1;
            }
            i = j + 1;
            out.push_str("' '");
        } else if c == '\'' && s.get(i + 2) == Some(&'\'') {
            // A plain char literal such as `'{'`; anything else after a quote is a lifetime.
            i += 3;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// When a raw string (`r"…"`, `r#"…"#`, `br"…"`) starts at `i`: the length of its opening
/// (through the quote) and its number of `#`. Anything else starting with `r` is an identifier,
/// including raw identifiers such as `r#type`.
fn raw_string_start(s: &[char], i: usize) -> Option<(usize, usize)> {
    if i > 0 && is_ident_char(s[i - 1]) {
        return None;
    }
    let mut j = match (s.get(i), s.get(i + 1)) {
        (Some('r'), _) => i + 1,
        (Some('b'), Some('r')) => i + 2,
        _ => return None,
    };
    let hashes_from = j;
    while s.get(j) == Some(&'#') {
        j += 1;
    }
    (s.get(j) == Some(&'"')).then_some((j + 1 - i, j - hashes_from))
}

/// Drops every item that carries `#[cfg(test)]` and returns the names of test modules declared
/// as separate files (`#[cfg(test)] mod tests;`). Expects comments and literals already gone,
/// which makes brace matching reliable.
fn strip_cfg_test_items(code: &str) -> (String, Vec<String>) {
    const ATTR: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut test_mods = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(ATTR) {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let end = item_end(item, ATTR.len());
        let removed = &item[..end];
        // `mod name;` (possibly `pub mod`) names a file that is test code as a whole.
        let words: Vec<&str> = removed[ATTR.len()..]
            .split(|c: char| c.is_whitespace() || c == ';')
            .filter(|w| !w.is_empty())
            .collect();
        if removed.ends_with(';') {
            if let Some(pos) = words.iter().position(|w| *w == "mod") {
                if let Some(name) = words.get(pos + 1) {
                    test_mods.push((*name).to_owned());
                }
            }
        }
        out.extend(removed.chars().filter(|c| *c == '\n'));
        rest = &item[end..];
    }
    out.push_str(rest);
    (out, test_mods)
}

/// The end (exclusive) of the item that starts at `from` in `text`: through its closing brace,
/// or through its `;` when it has no body. An unbalanced item runs to the end of the text.
fn item_end(text: &str, from: usize) -> usize {
    let mut depth = 0usize;
    let mut brackets = 0usize;
    for (offset, c) in text[from..].char_indices() {
        let at = from + offset;
        match c {
            // Further attributes on the same item (`#[cfg(test)] #[allow(...)] mod tests`).
            '[' => brackets += 1,
            ']' => brackets = brackets.saturating_sub(1),
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return at + 1;
                }
            }
            ';' if depth == 0 && brackets == 0 => return at + 1,
            _ => {}
        }
    }
    text.len()
}

/// Rewrites each `use` declaration as the flat list of paths it imports, on the line where it
/// starts (its other lines stay, empty): `use std::{fs, process::{self, Command}};` becomes
/// `use std::fs; use std::process; use std::process::Command;`.
fn flatten_use_trees(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = find_word(rest, "use") {
        let Some(semi) = rest[at..].find(';') else {
            break;
        };
        out.push_str(&rest[..at]);
        let tree = &rest[at + 3..at + semi];
        let mut paths = Vec::new();
        let tokens = use_tokens(tree);
        parse_use_tree(&tokens, &mut 0, &mut Vec::new(), &mut paths);
        for path in &paths {
            let _ = write!(out, "use {path}; ");
        }
        out.extend(tree.chars().filter(|c| *c == '\n'));
        rest = &rest[at + semi + 1..];
    }
    out.push_str(rest);
    out
}

fn use_tokens(tree: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut chars = tree.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' | '}' | ',' | '*' => tokens.push(c.to_string()),
            ':' if chars.peek() == Some(&':') => {
                chars.next();
                tokens.push("::".into());
            }
            c if is_ident_char(c) || c == '#' => {
                let mut word = String::from(c);
                while let Some(&n) = chars.peek() {
                    if !(is_ident_char(n) || n == '#') {
                        break;
                    }
                    word.push(n);
                    chars.next();
                }
                tokens.push(word);
            }
            _ => {}
        }
    }
    tokens
}

fn parse_use_tree(
    tokens: &[String],
    pos: &mut usize,
    prefix: &mut Vec<String>,
    out: &mut Vec<String>,
) {
    let depth = prefix.len();
    while let Some(tok) = tokens.get(*pos) {
        *pos += 1;
        match tok.as_str() {
            // A path separator only joins segments; the segment after it is read next.
            "::" => {}
            "{" => {
                while let Some(next) = tokens.get(*pos) {
                    match next.as_str() {
                        "}" => {
                            *pos += 1;
                            break;
                        }
                        "," => *pos += 1,
                        _ => parse_use_tree(tokens, pos, prefix, out),
                    }
                }
                break;
            }
            "*" => {
                out.push(prefix.join("::"));
                break;
            }
            "self" => {
                out.push(prefix.join("::"));
                break;
            }
            _ => {
                prefix.push(tok.clone());
                if tokens.get(*pos).map(String::as_str) != Some("::") {
                    out.push(prefix.join("::"));
                    // Skip an `as name` rename: the path imported is the original one.
                    if tokens.get(*pos).map(String::as_str) == Some("as") {
                        *pos += 2;
                    }
                    break;
                }
            }
        }
    }
    prefix.truncate(depth);
}

/// Byte offset of the first occurrence of `word` that stands alone as a word.
fn find_word(text: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = text[from..].find(word) {
        let at = from + found;
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        if !before.is_some_and(is_ident_char) && !after.is_some_and(is_ident_char) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// The (1-based) lines of `code` that name `path`. The path must not be glued to an identifier
/// on its left (`mysqlx::` is not `sqlx::`) nor, when it ends in an identifier, on its right
/// (`tokio::processes` is not `tokio::process`). A path ending in `::` matches any continuation.
fn lines_naming(code: &str, path: &str) -> Vec<usize> {
    let check_right = path.chars().next_back().is_some_and(is_ident_char);
    let mut lines = Vec::new();
    for (index, line) in code.lines().enumerate() {
        let mut from = 0;
        while let Some(found) = line[from..].find(path) {
            let at = from + found;
            let before = line[..at].chars().next_back();
            let after = line[at + path.len()..].chars().next();
            let glued_left = before.is_some_and(is_ident_char);
            let glued_right = check_right && after.is_some_and(is_ident_char);
            if !glued_left && !glued_right {
                lines.push(index + 1);
                break;
            }
            from = at + path.len();
        }
    }
    lines
}

// ---------------------------------------------------------------------------------- scanner tests

#[test]
fn scanner_sees_grouped_and_renamed_imports() {
    let src = "use std::{fs, process::{self, Command as Cmd, Stdio}};\nuse tokio::process::*;\n";
    let (code, _) = code_of(src);
    assert_eq!(lines_naming(&code, "std::process::Command"), [1]);
    assert_eq!(lines_naming(&code, "process::Command"), [1]);
    assert_eq!(lines_naming(&code, "std::fs"), [1]);
    assert_eq!(lines_naming(&code, "tokio::process"), [2]);
    assert!(lines_naming(&code, "std::net").is_empty());
}

#[test]
fn scanner_ignores_comments_strings_and_tests() {
    let src = r##"//! We never use `std::process::Command` here.
/* nor sqlx::query, /* even nested */ */
fn f() -> &'static str {
    let _ = '{';
    let _ = '\'';
    let _ = r#"sqlx::query("x")"#;
    "tokio::process in a message"
}
#[cfg(test)]
mod tests {
    use std::process::Command;
    fn g() { let _ = Command::new("sh"); }
}
#[cfg(test)]
#[path = "other.rs"]
mod helpers;
fn h() { sqlx::query("after the tests"); }
"##;
    let (code, test_mods) = code_of(src);
    assert!(lines_naming(&code, "process::Command").is_empty(), "{code}");
    assert!(lines_naming(&code, "tokio::process").is_empty(), "{code}");
    assert_eq!(lines_naming(&code, "sqlx::"), [17], "{code}");
    assert_eq!(test_mods, ["helpers"]);
    assert_eq!(code.lines().count(), src.lines().count());
}

#[test]
fn scanner_respects_identifier_boundaries() {
    let (code, _) = code_of("let a = mysqlx::x(); let b = tokio::processes::y();\n");
    assert!(lines_naming(&code, "sqlx::").is_empty());
    assert!(lines_naming(&code, "tokio::process").is_empty());
    let (code, _) = code_of("let a = sqlx::x();\n");
    assert_eq!(lines_naming(&code, "sqlx::"), [1]);
}

#[test]
fn rules_parser_rejects_what_it_does_not_understand() {
    let doc = "```layering\na -> (none)\nb -> a\nforbid a: x y\nforbid-src a: std::fs\n\
               confine sqlx:: to b\n```\n";
    let rules = parse_rules(doc).expect("valid block");
    assert_eq!(rules.layers["b"], BTreeSet::from(["a".to_owned()]));
    assert!(rules.layers["a"].is_empty());
    assert_eq!(rules.forbid_src["a"], ["std::fs"]);
    assert_eq!(rules.confine[0].0, "sqlx::");

    for bad in [
        "```layering\na -> \n```\n",
        "```layering\na -> (none)\na -> b\n```\n",
        "```layering\nwhatever\n```\n",
        "```layering\na -> (none)\n",
        "no block at all\n",
    ] {
        assert!(parse_rules(bad).is_err(), "accepted: {bad:?}");
    }
}
