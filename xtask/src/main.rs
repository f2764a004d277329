//! Kokino's developer tasks, run as `cargo xtask <task>` (the alias is in `.cargo/config.toml`).
//!
//! Automation lives here, in Rust, rather than in shell scripts or CI YAML, so that "what CI
//! runs" is one command every developer can run locally. The architecture checks are not here:
//! they are ordinary tests (`xtask/tests/layering.rs`), so `cargo test --workspace` alone already
//! enforces them.

#![forbid(unsafe_code)]

mod bench;
mod chaos;
mod harness;
mod schemathesis;

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Kokino's developer tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Runs what CI runs: rustfmt, the workspace checks, clippy, the tests, cargo-deny.
    ///
    /// The steps run in order from the workspace root and the task stops at the first failure:
    /// `cargo fmt --all -- --check`, `cargo test -p xtask` (the layering, hygiene and document
    /// checks), `cargo clippy --workspace --all-targets -- -D warnings`,
    /// `cargo test --workspace` (which includes the layering test), and `cargo deny check` when
    /// cargo-deny is installed.
    Ci,
    /// Writes the OpenAPI document the code generates to docs/reference/openapi.json.
    Openapi,
    /// Fuzzes a real broker against its OpenAPI document with schemathesis (skipped, loudly,
    /// when schemathesis is not installed).
    Schemathesis,
    /// Runs the benchmarks.
    ///
    /// Everything after `bench`, `--help` included, is passed to the bench task unparsed, so the
    /// bench task owns its flags.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Kills and pauses real brokers at random instants and counts orphans, overlapping runs,
    /// lost turns and stuck locks (`cargo xtask chaos --help` for its flags).
    #[command(disable_help_flag = true)]
    Chaos {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Ci => ci(),
        Task::Openapi => openapi(),
        Task::Schemathesis => schemathesis::run(&workspace_root()),
        Task::Bench { args } => bench::run(args),
        Task::Chaos { args } => chaos::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line, which is what a CI log needs.
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn ci() -> anyhow::Result<()> {
    let steps: [&[&str]; 4] = [
        &["fmt", "--all", "--", "--check"],
        // The workspace checks (layering, hygiene: lints, unsafe, unused dependencies; documents
        // that name code) take seconds; running them before the long steps fails fast on them.
        // `cargo test --workspace` runs them again, which costs nothing once built.
        &["test", "-p", "xtask"],
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &["test", "--workspace"],
    ];
    for args in steps {
        cargo_step(args)?;
    }
    // After the tests: a broker that passes them is fuzzed against its own OpenAPI document.
    schemathesis::run(&workspace_root())?;

    // cargo-deny is a separate install. Skipping it with a visible note keeps `cargo xtask ci`
    // usable on a fresh machine, while CI (which installs it) still runs the check.
    if cargo_deny_installed() {
        // Duplicate versions, licenses and sources need nothing from the network.
        cargo_step(&["deny", "check", "bans", "licenses", "sources"])?;
        // The advisory check needs the RustSec database from GitHub. When it cannot be fetched
        // (an offline machine), say so loudly and go on; when it can, a known vulnerability
        // fails the run like any other step.
        if cargo_step(&["deny", "fetch", "db"]).is_ok() {
            cargo_step(&["deny", "--offline", "check", "advisories"])?;
        } else {
            println!(
                "warning: the RustSec advisory database could not be fetched, so \
                 `cargo deny check advisories` was SKIPPED"
            );
        }
    } else {
        println!(
            "note: cargo-deny is not installed, so `cargo deny check` was skipped \
             (install it with `cargo install --locked cargo-deny`)"
        );
    }
    println!("xtask ci: all steps passed");
    Ok(())
}

/// Writes docs/reference/openapi.json from the code (`kokino-http`'s `openapi` example).
fn openapi() -> anyhow::Result<()> {
    let out = cargo()
        .args(["run", "-q", "-p", "kokino-http", "--example", "openapi"])
        .stderr(Stdio::inherit())
        .output()
        .context("could not start `cargo run --example openapi`")?;
    if !out.status.success() {
        bail!("generating the OpenAPI document failed ({})", out.status);
    }
    let path = workspace_root().join("docs/reference/openapi.json");
    std::fs::write(&path, &out.stdout).with_context(|| format!("write {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Runs one `cargo` step from the workspace root, echoing it first so that a failure in the log
/// is easy to attribute.
fn cargo_step(args: &[&str]) -> anyhow::Result<()> {
    println!("==> cargo {}", args.join(" "));
    let status = cargo()
        .args(args)
        .status()
        .with_context(|| format!("could not start `cargo {}`", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn cargo_deny_installed() -> bool {
    cargo()
        .args(["deny", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `cargo` command rooted at the workspace. `$CARGO` is the cargo that started us (set by
/// `cargo run`), so a toolchain chosen with `cargo +nightly xtask` is used for every step.
fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

fn workspace_root() -> PathBuf {
    // xtask sits one level below the workspace root; the path is fixed at compile time, so the
    // tasks work from whatever directory `cargo xtask` is run in.
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}
