//! Workspace hygiene, checked on every `cargo test --workspace` (and so by `cargo xtask ci`):
//!
//! * every member inherits the workspace lints (`[lints] workspace = true`);
//! * `unsafe` code is confined to the crates listed in [`UNSAFE_CRATES`], and every other crate
//!   root says `#![forbid(unsafe_code)]`;
//! * every declared dependency is used by the package's sources (the job cargo-machete does,
//!   without an install: a dependency nobody names only costs build time).
//!
//! Packages, their dependencies and their targets come from `cargo metadata --no-deps`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// The crates that may contain `unsafe` code, each with the reason. Everything else forbids it.
const UNSAFE_CRATES: &[(&str, &str)] = &[
    (
        "kokino-exec",
        "the process chokepoint: pidfd_open, inotify, sysconf and setsid/prctl in the guard have \
         no safe wrapper in the dependencies we allow",
    ),
    (
        "kokino-fake-agent",
        "it imitates a terminal CLI: termios raw mode, raw reads and writes on file descriptors",
    ),
];

/// Dependencies that are used without their name appearing in the sources, each with the reason.
/// Empty today; an entry is `("package", "dependency", "why")`.
const USED_WITHOUT_NAMING: &[(&str, &str, &str)] = &[];

#[derive(Debug)]
struct Package {
    name: String,
    dir: PathBuf,
    manifest: PathBuf,
    /// The source files of the lib and bin targets (the crate roots `#![forbid]` must be in).
    roots: Vec<PathBuf>,
    /// (crate name as the sources spell it, dependency name as Cargo.toml spells it, kind).
    deps: Vec<(String, String, String)>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_owned()
}

fn packages() -> &'static [Package] {
    static PACKAGES: OnceLock<Vec<Package>> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .arg("--manifest-path")
            .arg(workspace_root().join("Cargo.toml"))
            .output()
            .expect("cannot run `cargo metadata`");
        assert!(
            out.status.success(),
            "`cargo metadata` failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
        meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|p| {
                let manifest = PathBuf::from(p["manifest_path"].as_str().expect("manifest_path"));
                let roots = p["targets"]
                    .as_array()
                    .expect("targets")
                    .iter()
                    .filter(|t| {
                        t["kind"]
                            .as_array()
                            .is_some_and(|kinds| kinds.iter().any(|k| k == "lib" || k == "bin"))
                    })
                    .map(|t| PathBuf::from(t["src_path"].as_str().expect("src_path")))
                    .collect();
                let deps = p["dependencies"]
                    .as_array()
                    .expect("dependencies")
                    .iter()
                    .map(|d| {
                        let name = d["name"].as_str().expect("dependency name").to_owned();
                        let ident = d["rename"].as_str().unwrap_or(&name).replace('-', "_");
                        let kind = d["kind"].as_str().unwrap_or("normal").to_owned();
                        (ident, name, kind)
                    })
                    .collect();
                Package {
                    name: p["name"].as_str().expect("name").to_owned(),
                    dir: manifest.parent().expect("package dir").to_owned(),
                    manifest,
                    roots,
                    deps,
                }
            })
            .collect()
    })
}

/// Every `.rs` file of a package (sources, tests, benches, examples, build script), skipping
/// `target/` directories.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The code of a file without its plain `//` comments, so that a dependency mentioned only in a
/// remark does not count as used. Doc comments stay: their examples are compiled as doctests.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    strip_comments(&text)
}

fn strip_comments(text: &str) -> String {
    text.lines()
        .filter(|line| {
            let t = line.trim_start();
            !t.starts_with("//") || t.starts_with("///") || t.starts_with("//!")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether `code` names the crate `ident` as Rust code does: `ident::…`, `use ident…` or
/// `extern crate ident`. A bare word (a variable called `tempfile`) does not count.
fn names_crate(code: &str, ident: &str) -> bool {
    code.match_indices(ident).any(|(at, _)| {
        let before = &code[..at];
        if before.chars().next_back().is_some_and(is_ident_char) {
            return false;
        }
        let after = &code[at + ident.len()..];
        if after.chars().next().is_some_and(is_ident_char) {
            return false;
        }
        // `::ident::…` is an absolute path to the crate; `foo::ident::…` is a module of another
        // path and does not count.
        let before_trimmed = before.trim_end();
        let absolute = before_trimmed.ends_with("::")
            && !before_trimmed[..before_trimmed.len() - 2]
                .chars()
                .next_back()
                .is_some_and(is_ident_char);
        if before_trimmed.ends_with("::") && !absolute {
            return false;
        }
        after.trim_start().starts_with("::")
            || before_trimmed.ends_with("use")
            || before_trimmed.ends_with("extern crate")
    })
}

#[test]
fn every_member_inherits_the_workspace_lints() {
    let mut problems = String::new();
    for pkg in packages() {
        let manifest = std::fs::read_to_string(&pkg.manifest).expect("read Cargo.toml");
        let inherits = manifest
            .split("\n[")
            .any(|section| section.starts_with("lints]") && section.contains("workspace = true"));
        if !inherits {
            let _ = writeln!(
                problems,
                "{}: add `[lints]\\nworkspace = true` to {}",
                pkg.name,
                pkg.manifest.display()
            );
        }
    }
    assert!(problems.is_empty(), "{problems}");
}

#[test]
fn unsafe_code_is_confined_to_the_crates_that_need_it() {
    let allowed: BTreeSet<&str> = UNSAFE_CRATES.iter().map(|(name, _)| *name).collect();
    let names: BTreeSet<&str> = packages().iter().map(|p| p.name.as_str()).collect();
    let mut problems = String::new();
    for stale in allowed.difference(&names) {
        let _ = writeln!(
            problems,
            "UNSAFE_CRATES names `{stale}`, which is no member"
        );
    }
    for pkg in packages() {
        if allowed.contains(pkg.name.as_str()) {
            // The allowance must still be needed, or it only weakens the rule.
            let src = pkg.dir.join("src");
            let uses_unsafe = rust_files(&src)
                .iter()
                .any(|f| names_keyword(&code_of(f), "unsafe"));
            if !uses_unsafe {
                let _ = writeln!(
                    problems,
                    "{} has no `unsafe` left: remove it from UNSAFE_CRATES and forbid unsafe code",
                    pkg.name
                );
            }
            continue;
        }
        for root in &pkg.roots {
            let code = code_of(root);
            if !code.contains("#![forbid(unsafe_code)]") {
                let _ = writeln!(
                    problems,
                    "{}: {} lacks `#![forbid(unsafe_code)]` (only {:?} may use unsafe)",
                    pkg.name,
                    root.display(),
                    allowed
                );
            }
        }
    }
    assert!(problems.is_empty(), "{problems}");
}

/// Whether `word` appears in `code` as a whole word.
fn names_keyword(code: &str, word: &str) -> bool {
    code.match_indices(word).any(|(at, _)| {
        !code[..at].chars().next_back().is_some_and(is_ident_char)
            && !code[at + word.len()..]
                .chars()
                .next()
                .is_some_and(is_ident_char)
    })
}

#[test]
fn every_dependency_is_used() {
    let mut problems = String::new();
    for pkg in packages() {
        let files = rust_files(&pkg.dir);
        let code: Vec<String> = files.iter().map(|f| code_of(f)).collect();
        for (ident, name, kind) in &pkg.deps {
            let excused = USED_WITHOUT_NAMING
                .iter()
                .any(|(p, d, _)| *p == pkg.name && d == name);
            if excused {
                continue;
            }
            if !code.iter().any(|c| names_crate(c, ident)) {
                let _ = writeln!(
                    problems,
                    "{}: {kind} dependency `{name}` is never named in its sources; remove it from \
                     {} (or list it in USED_WITHOUT_NAMING with the reason)",
                    pkg.name,
                    pkg.manifest.display()
                );
            }
        }
    }
    assert!(problems.is_empty(), "{problems}");
}

#[test]
fn the_crate_name_matcher_reads_code_as_code() {
    assert!(names_crate("use tokio::time;", "tokio"));
    assert!(names_crate("#[tokio::test]\nasync fn t() {}", "tokio"));
    assert!(names_crate("use tempfile;", "tempfile"));
    assert!(names_crate(
        "let x = ::serde_json::json!({});",
        "serde_json"
    ));
    assert!(names_crate("extern crate libc;", "libc"));
    assert!(names_crate(
        "let v = serde_json :: to_string(&x);",
        "serde_json"
    ));
    assert!(!names_crate("let tempfile = 3;", "tempfile"));
    assert!(!names_crate("use crate::nix::signal;", "nix"));
    assert!(!names_crate("use my_tokio::x;", "tokio"));
    assert!(!names_crate("fn f() -> tokio_util::X {}", "tokio"));
    assert!(!strip_comments("// we used to call futures::join here").contains("futures::"));
}
