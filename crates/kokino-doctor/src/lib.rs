//! The environment doctor (behavior.md, "Environment doctor"): five checks per CLI type that
//! answer "will the broker be able to run this CLI, and if not, what should the operator do?"
//!
//! - `binary`: the executor's own lookup finds an executable file.
//! - `environment`: the exact child environment the executor builds has a usable `HOME` and
//!   `PATH` (including the script interpreter a `#!` line needs), the conflicting credentials
//!   are removed (reported as warnings), and the Claude nesting marker does not leak.
//! - `auth`: the CLI's own offline status (`claude auth status`, `codex login status`), or the
//!   credential variables and files of Gemini and Droid, under the child's `HOME`.
//! - `disk`: used space on the data directory's file system (warn ≥ 85 %, fail ≥ 95 %).
//! - `dryrun`: `<cli> --version`, whose first line is recorded as the version.
//!
//! Every check has its own timeout and every process it starts is killed with its group when
//! the time is up, so a call to [`check_cli`] returns within about twice the check timeout
//! whatever the host does. No secret value is ever put in a message.

#![forbid(unsafe_code)]

mod auth;
mod checks;
mod config;
mod disk;
mod error;
pub mod hints;
mod report;

use std::time::{Duration, Instant};

use chrono::Utc;
use kokino_cli::EnvMap;
use kokino_core::CliType;

pub use config::{parse_cli_selection, DoctorConfig};
pub use error::DoctorError;
pub use report::{Check, CheckName, CliReport, EnvironmentReport};

/// Runs blocking file-system work on a blocking thread and gives up after `timeout`. A hung
/// network mount can block `stat` forever; the thread is then abandoned, but the doctor answers.
pub(crate) async fn blocking<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(v)) => Some(v),
        _ => None,
    }
}

/// The environment the executor gives `cli`'s process, for an agent without its own `env`.
pub fn child_environment(cfg: &DoctorConfig, cli: CliType) -> EnvMap {
    kokino_cli::child_env(
        cli,
        cfg.base_env.clone(),
        &EnvMap::new(),
        &cfg.conflicting(cli),
    )
}

/// Runs the five checks for one CLI type. The binary lookup and the environment come first
/// (the others need their results); auth, disk and the dry run then run concurrently.
pub async fn check_cli(cfg: &DoctorConfig, cli: CliType) -> CliReport {
    let started = Instant::now();
    let checked_at = Utc::now();
    let (binary, resolved) = checks::binary(cfg, cli);
    let child = child_environment(cfg, cli);
    let environment = checks::environment(cfg, cli, resolved.as_deref(), &child).await;
    let (auth, disk, (dryrun, version)) = tokio::join!(
        auth::auth(cfg, cli, resolved.as_deref(), &child),
        disk::disk(cfg),
        checks::dryrun(cfg, cli, resolved.as_deref(), &child),
    );
    let checks = vec![binary, environment, auth, disk, dryrun];
    let warnings: Vec<String> = checks
        .iter()
        .flat_map(|c| c.warning_list.iter().cloned())
        .collect();
    let passed = checks.iter().all(|c| c.passed);
    let report = CliReport {
        cli_type: cli,
        passed,
        checks,
        warnings,
        checked_at,
        duration_ms: started.elapsed().as_millis() as u64,
        version,
    };
    for c in &report.checks {
        tracing::debug!(cli = %cli, check = %c.name, passed = c.passed, message = %c.message, "doctor check");
    }
    if report.passed {
        tracing::info!(cli = %cli, warnings = report.warnings.len(), version = ?report.version, "environment check passed");
    } else {
        tracing::warn!(cli = %cli, failed = ?report.failed_checks(), "environment check failed");
    }
    report
}

/// Checks several CLI types concurrently (each is bounded by its own timeouts).
pub async fn check_many(cfg: &DoctorConfig, clis: &[CliType]) -> EnvironmentReport {
    let checked_at = Utc::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, cli) in clis.iter().copied().enumerate() {
        let cfg = cfg.clone();
        set.spawn(async move { (i, check_cli(&cfg, cli).await) });
    }
    let mut results: Vec<(usize, CliReport)> = Vec::with_capacity(clis.len());
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(r) => results.push(r),
            // A panic in a check is a bug; it is re-raised rather than reported as a pass.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("a doctor check was cancelled: {e}"),
        }
    }
    results.sort_by_key(|(i, _)| *i);
    EnvironmentReport::from_results(checked_at, results.into_iter().map(|(_, r)| r).collect())
}

/// Checks all four CLI types (`GET /api/health/environment`).
pub async fn check_all(cfg: &DoctorConfig) -> EnvironmentReport {
    check_many(cfg, CliType::ALL).await
}
