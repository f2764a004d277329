//! The environment doctor (behavior.md, "Environment doctor"): five checks per CLI type that
//! answer "will the broker be able to run this CLI, and if not, what should the operator do?"
//!
//! - `binary`: the executor's own lookup finds an executable file.
//! - `environment`: the exact child environment the executor builds has a usable `HOME` and
//!   `PATH` (including the script interpreter a `#!` line needs), the conflicting credentials
//!   are removed (reported as warnings), and the Claude nesting marker does not leak.
//! - `auth`: judged the way the CLI will really run, from the credentials the CLI will see
//!   (API keys and tokens in the child environment, custom providers, Gemini's settings, Droid's
//!   bring-your-own-key models) together with the CLI's own offline status (`claude auth
//!   status`, `codex login status`), which knows nothing about some of them.
//! - `disk`: used space on the data directory's file system (warn ≥ 85 %, fail ≥ 95 %).
//! - `dryrun`: `<cli> --version`, whose first line is recorded as the version.
//!
//! The checks can be run for the broker's own environment ([`check_cli`]) or for one agent
//! ([`check_agent`]): its `env`, `HOME`, model, extra arguments and binary, as the executor
//! will use them.
//!
//! ## Verdicts
//!
//! A check passes, passes with a warning, or fails. A verdict the doctor cannot be sure of is a
//! warning, not a failure: a status command that says "not logged in" while the CLI will get an
//! API key, a custom provider or a BYOK model; a CLI without a status command and no credentials
//! in sight (they may live where the doctor cannot look). A failure carries a [`Certainty`]:
//! only a hard fact (the binary is missing or not executable) is [`Certainty::Hard`] and
//! [`CliReport::disables_cli`]; everything else is soft and must never disable a CLI type
//! automatically. Auth verdicts, per CLI:
//!
//! | CLI | pass | warning | soft failure |
//! |---|---|---|---|
//! | claude | `auth status` says logged in; or it does not, but the CLI gets `ANTHROPIC_API_KEY`, `ANTHROPIC_AUTH_TOKEN`, `CLAUDE_CODE_OAUTH_TOKEN` or Bedrock/Vertex/Foundry (warning: unconfirmed) | `auth status` timed out or said nothing, with credentials in sight | logged out and no credential in sight |
//! | codex | `login status` exit 0; `CODEX_API_KEY`; a custom provider whose `env_key` is set, or which needs no key | only `OPENAI_API_KEY`; a provider the doctor cannot find | the default provider with no login and no key; a custom provider whose `env_key` is unset |
//! | gemini | the auth method gemini will pick (settings, else its variables) has what it needs | anything else (gemini has no status command) | never |
//! | droid | `FACTORY_API_KEY`, a login file, or a `custom:` model the config declares | anything else (droid has no status command) | never |
//!
//! Every check has its own timeout and every process it starts is killed with its group when
//! the time is up, so a call to [`check_cli`] returns within about the longest probe timeout
//! ([`DoctorConfig::probe_timeout`]) plus the check timeout whatever the host does. No secret
//! value is ever put in a message.

#![forbid(unsafe_code)]

mod agent;
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

pub use agent::AgentContext;
pub use config::{default_probe_timeout, parse_cli_selection, DoctorConfig};
pub use error::DoctorError;
pub use report::{Certainty, Check, CheckName, CliReport, EnvironmentReport};

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
    agent_environment(cfg, cli, &AgentContext::default())
}

/// The environment the executor gives `cli`'s process for `agent`: the broker's environment
/// without the conflicting variables, the agent's `env` over it, and the agent's `HOME`.
pub fn agent_environment(cfg: &DoctorConfig, cli: CliType, agent: &AgentContext) -> EnvMap {
    let mut env =
        kokino_cli::child_env(cli, cfg.base_env.clone(), &agent.env, &cfg.conflicting(cli));
    if let Some(home) = &agent.home {
        env.insert("HOME".to_owned(), home.display().to_string());
    }
    env
}

/// Runs the five checks for one CLI type, for an agent without settings of its own.
pub async fn check_cli(cfg: &DoctorConfig, cli: CliType) -> CliReport {
    check_agent(cfg, cli, &AgentContext::default()).await
}

/// Runs the five checks for one CLI type the way `agent`'s runs will start it: with its
/// environment, `HOME`, model, extra arguments and binary. The binary lookup and the
/// environment come first (the others need their results); auth, disk and the dry run then run
/// concurrently.
pub async fn check_agent(cfg: &DoctorConfig, cli: CliType, agent: &AgentContext) -> CliReport {
    let started = Instant::now();
    let checked_at = Utc::now();
    let binary_name = agent
        .binary
        .clone()
        .unwrap_or_else(|| cfg.binary(cli).to_owned());
    let (binary, resolved) = checks::binary(cfg, cli, &binary_name);
    let child = agent_environment(cfg, cli, agent);
    let environment =
        checks::environment(cfg, cli, &binary_name, resolved.as_deref(), &child, agent).await;
    let args = agent.auth_args(cli);
    let (auth, disk, (dryrun, version)) = tokio::join!(
        auth::auth(cfg, cli, resolved.as_deref(), &child, &args),
        disk::disk(cfg),
        checks::dryrun(cfg, cli, &binary_name, resolved.as_deref(), &child),
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
        agent_id: agent.agent_id.clone(),
    };
    for c in &report.checks {
        tracing::debug!(cli = %cli, check = %c.name, passed = c.passed, message = %c.message, "doctor check");
    }
    if report.passed {
        tracing::info!(cli = %cli, warnings = report.warnings.len(), version = ?report.version, "environment check passed");
    } else {
        tracing::warn!(cli = %cli, agent = ?report.agent_id, failed = ?report.failed_checks(),
            disables = report.disables_cli(), "environment check failed");
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
