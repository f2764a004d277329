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
    let results = run_checks(doctor_config(b), &clis).await;
    let agents = b.inner.store.list_agents().await.unwrap_or_default();
    for r in &results {
        publish(b, r);
        record_version(b, r, &agents).await;
        apply_verdict(b, r, &agents).await;
    }
    EnvironmentReport::from_results(b.inner.clock.now(), results)
}

/// The CLI types are checked concurrently: each check has its own timeout, so the whole
/// report takes about as long as the slowest CLI, not the sum. Results keep `clis`' order.
async fn run_checks(cfg: DoctorConfig, clis: &[CliType]) -> Vec<CliReport> {
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in clis.iter().enumerate() {
        let (cfg, c) = (cfg.clone(), *c);
        set.spawn(async move { (i, kokino_doctor::check_cli(&cfg, c).await) });
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

/// Disables a failing CLI type (or re-enables a passing one) in fallback. Only CLI types some
/// headless agent uses are disabled automatically: disabling an uninstalled CLI nobody runs
/// would only put noise in the fallback status.
async fn apply_verdict(b: &Broker, r: &CliReport, agents: &[AgentRecord]) {
    let cli = r.cli_type;
    let used = agents
        .iter()
        .any(|a| a.spec.cli_type == cli && a.spec.binary.is_none());
    if !(used || r.passed) {
        return;
    }
    let reason = r
        .checks
        .iter()
        .find(|c| !c.passed)
        .map(|c| {
            format!(
                "environment doctor: {} check failed: {}",
                c.name.as_str(),
                c.message
            )
        })
        .unwrap_or_else(|| "environment doctor passed".into());
    b.inner
        .resilience
        .doctor_verdict(cli, r.passed, &reason)
        .await;
}

/// The CLI versions the doctor has seen.
pub(crate) async fn cli_versions(
    b: &Broker,
) -> Result<Vec<kokino_store::CliVersionRow>, ServiceError> {
    Ok(b.inner.store.list_cli_versions().await?)
}
