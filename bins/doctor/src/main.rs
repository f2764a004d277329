//! `kokino-doctor`: can this host run the agent CLIs the way the broker runs them, and is a
//! running broker healthy? Exit 0 when all is good, 1 when something failed, 2 when the doctor
//! could not run (bad flags or config, broker unreachable). See README.md for a CI step.

#![forbid(unsafe_code)]

mod local;
mod output;
mod remote;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "kokino-doctor",
    version,
    about = "Checks that this host can run the agent CLIs (binary, environment, auth, disk, \
             dry run), or with --url diagnoses a running Kokino broker.",
    after_help = "Exit codes: 0 all good, 1 something failed, 2 the doctor could not run."
)]
pub struct Args {
    /// CLI type to check: claude-code, codex, gemini, factory-droid, or all.
    #[arg(long, default_value = "all")]
    pub cli: String,
    /// Diagnose the broker at this URL (e.g. http://127.0.0.1:5050) instead of this host.
    #[arg(long)]
    pub url: Option<String>,
    /// The broker's TOML config file; its data_dir, [binaries] and [conflicting_env] are used.
    #[arg(long, env = "KOKINO_CONFIG")]
    pub config: Option<PathBuf>,
    /// The broker's data directory (for the disk check); default ./data.
    #[arg(long, env = "KOKINO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// File holding the broker's bearer token (--url mode).
    #[arg(long, env = "KOKINO_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Timeout of each check, the runs of the CLI (`--version`, status commands) included.
    /// Without it, file checks get 5 000 ms and the CLI runs their per-CLI defaults (claude
    /// 15 s, codex 10 s, gemini 30 s, droid 10 s), measured on the real CLIs under load.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: Option<u64>,
    /// Used-space percentage at which the disk check warns (default 85).
    #[arg(long)]
    pub disk_warn_pct: Option<f64>,
    /// Used-space percentage at which the disk check fails (default 95).
    #[arg(long)]
    pub disk_fail_pct: Option<f64>,
    /// Timeout of each HTTP request in --url mode (the environment endpoint runs checks).
    #[arg(long, default_value_t = 30_000)]
    pub http_timeout_ms: u64,
    /// Count warnings as failures (exit 1).
    #[arg(long)]
    pub strict: bool,
}

async fn run(args: Args) -> Result<bool> {
    let clis = kokino_doctor::parse_cli_selection(&args.cli)?;
    let file = match &args.config {
        Some(path) => local::read_broker_file(path)?,
        None => local::BrokerFile::default(),
    };
    match &args.url {
        Some(url) => {
            let token = match args.token_file.as_ref().or(file.token_file.as_ref()) {
                Some(path) => {
                    let raw = std::fs::read_to_string(path).with_context(|| {
                        format!("cannot read the token file {}", path.display())
                    })?;
                    let token = raw.trim().to_owned();
                    anyhow::ensure!(
                        !token.is_empty(),
                        "the token file {} is empty",
                        path.display()
                    );
                    Some(token)
                }
                None => None,
            };
            remote::run(&args, url, &clis, token).await
        }
        None => local::run(&args, &clis, &file).await,
    }
}

fn main() {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kokino-doctor: cannot start: {e}");
            std::process::exit(2);
        }
    };
    let code = match runtime.block_on(run(args)) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("kokino-doctor: {e:#}");
            2
        }
    };
    let _ = std::io::stdout().flush();
    // Exit without dropping the runtime: a check abandoned on a hung mount still holds a
    // blocking thread, and dropping the runtime would wait for it.
    std::process::exit(code);
}
