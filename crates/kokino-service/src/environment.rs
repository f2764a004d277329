//! The environment doctor as the broker runs it: checks per CLI type, their events and metrics,
//! the CLI versions seen, and the automatic CLI disable/enable of fallback.

use kokino_core::{AgentRecord, CliType};
use kokino_doctor::{CliReport, DoctorConfig, EnvironmentReport};
use serde_json::json;

use crate::telemetry::{self, event};
use crate::{Broker, ServiceError};

/// The doctor's settings, from the broker's config and the process environment.
fn doctor_config(b: &Broker) -> DoctorConfig {
    let cfg = &b.inner.cfg;
    let mut d = DoctorConfig::from_process_env(&cfg.data_dir);
    for cli in CliType::ALL {
        d.binaries.insert(*cli, cfg.binary_for(*cli).to_owned());
        d.conflicting_vars.insert(*cli, cfg.conflicting_for(*cli));
    }
    d.check_timeout = cfg.doctor_check_timeout;
    d.disk_warn_pct = cfg.disk_warn_pct;
    d.disk_fail_pct = cfg.disk_fail_pct;
    d
}

/// Runs the doctor for the given CLI types (all when `None`): records the versions seen,
/// the `ENV_*` events and metrics, and feeds the automatic CLI disable/enable of fallback.
/// Binary lookups are refreshed, as they are on every doctor run.
pub(crate) async fn check(b: &Broker, cli: Option<CliType>) -> EnvironmentReport {
    let clis: Vec<CliType> = match cli {
        Some(c) => vec![c],
        None => CliType::ALL.to_vec(),
    };
    b.inner.binaries.lock().expect("binary cache").clear();
    let agents = b.inner.store.list_agents().await.unwrap_or_default();
    let results = run_checks(doctor_config(b), &clis, &agents).await;
    for r in &results {
        publish(b, r);
        record_version(b, r, &agents).await;
        apply_verdict(b, r, &agents).await;
    }
    EnvironmentReport::from_results(b.inner.clock.now(), results)
}

/// How many of a CLI type's agents the doctor checks with their own environment and
/// arguments: enough to find one the CLI works for, without multiplying probes by the fleet.
const AGENTS_CHECKED_PER_CLI: usize = 3;

/// The CLI types are checked concurrently: each check has its own timeout, so the whole
/// report takes about as long as the slowest CLI, not the sum. Results keep `clis`' order.
///
/// Credentials belong to agents, not to the broker (an agent's `env` carries its API key, its
/// extra args a custom provider), so a CLI type with registered agents is judged the way the
/// CLI really runs: with those agents' environments and arguments, and the best verdict among
/// them stands for the type. A type nobody uses is judged in the broker's own environment.
async fn run_checks(cfg: DoctorConfig, clis: &[CliType], agents: &[AgentRecord]) -> Vec<CliReport> {
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in clis.iter().enumerate() {
        let (cfg, c) = (cfg.clone(), *c);
        let contexts: Vec<kokino_doctor::AgentContext> = agents
            .iter()
            .filter(|a| a.spec.cli_type == c)
            .take(AGENTS_CHECKED_PER_CLI)
            .map(|a| kokino_doctor::AgentContext::from_spec(&a.spec))
            .collect();
        set.spawn(async move {
            if contexts.is_empty() {
                return (i, kokino_doctor::check_cli(&cfg, c).await);
            }
            let mut best: Option<CliReport> = None;
            for ctx in &contexts {
                let r = kokino_doctor::check_agent(&cfg, c, ctx).await;
                let better = match &best {
                    None => true,
                    Some(b) => rank(&r) > rank(b),
                };
                if better {
                    best = Some(r);
                }
                if best.as_ref().is_some_and(|b| b.passed) {
                    break;
                }
            }
            (i, best.expect("at least one agent context"))
        });
    }
    let mut indexed = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok(r) = joined {
            indexed.push(r);
        }
    }
    indexed.sort_by_key(|(i, _)| *i);
    indexed.into_iter().map(|(_, r)| r).collect()
}

/// The metrics and `ENV_*` events of one CLI type's report.
fn publish(b: &Broker, r: &CliReport) {
    let cli = r.cli_type;
    for check in &r.checks {
        let result = if check.passed { "pass" } else { "fail" };
        metrics::counter!(telemetry::ENV_CHECKS_TOTAL,
            "cli" => cli.as_str(), "check" => check.name.as_str(), "result" => result)
        .increment(1);
    }
    metrics::gauge!(telemetry::ENV_CHECK_FAILING, "cli" => cli.as_str()).set(if r.passed {
        0.0
    } else {
        1.0
    });
    for kind in r.event_types() {
        let mut ev = event(kind, None, Some(cli.as_str()));
        ev.success = Some(r.passed);
        ev.duration_ms = Some(r.duration_ms as i64);
        ev.metadata = json!({
            "failed": r.checks.iter().filter(|c| !c.passed).map(|c| json!({"check": c.name.as_str(), "message": c.message})).collect::<Vec<_>>(),
            "warnings": r.warnings, "version": r.version,
        });
        b.inner.events.emit(ev);
    }
}

/// Stores the CLI version seen, with the agents that use it.
async fn record_version(b: &Broker, r: &CliReport, agents: &[AgentRecord]) {
    let Some(version) = &r.version else { return };
    let cli = r.cli_type;
    let using: Vec<String> = agents
        .iter()
        .filter(|a| a.spec.cli_type == cli)
        .map(|a| a.spec.agent_id.to_string())
        .collect();
    if let Err(e) = b
        .inner
        .store
        .record_cli_version(cli.as_str(), version, &using)
        .await
    {
        tracing::warn!(error = %e, "could not record a CLI version");
    }
}

/// Orders verdicts: a pass, then a soft failure (auth, dry run: the doctor cannot be sure),
/// then a hard one (the binary is missing).
fn rank(r: &CliReport) -> u8 {
    match (r.passed, r.disables_cli()) {
        (true, _) => 2,
        (false, false) => 1,
        (false, true) => 0,
    }
}

/// Disables a CLI type whose doctor verdict is a hard fact (its binary is missing or not
/// executable), or re-enables one it disabled when that fact is gone. An auth or dry-run
/// verdict never disables a CLI type: the doctor judges credentials from outside the CLI and
/// can be wrong, while a disabled type reroutes every agent of it to tmux. Observed failures
/// of real executions are the breakers' business. Only CLI types some
/// headless agent uses are disabled automatically: disabling an uninstalled CLI nobody runs
/// would only put noise in the fallback status.
async fn apply_verdict(b: &Broker, r: &CliReport, agents: &[AgentRecord]) {
    let cli = r.cli_type;
    let used = agents
        .iter()
        .any(|a| a.spec.cli_type == cli && a.spec.binary.is_none());
    let disable = r.disables_cli();
    if !used && disable {
        return;
    }
    let reason = r
        .disabling_check()
        .map(|c| {
            format!(
                "environment doctor: {} check failed: {}",
                c.name.as_str(),
                c.message
            )
        })
        .unwrap_or_else(|| "environment doctor: the CLI's binary is present".into());
    b.inner
        .resilience
        .doctor_verdict(cli, !disable, &reason)
        .await;
}

/// The CLI versions the doctor has seen.
pub(crate) async fn cli_versions(
    b: &Broker,
) -> Result<Vec<kokino_store::CliVersionRow>, ServiceError> {
    Ok(b.inner.store.list_cli_versions().await?)
}
