//! SLOs and the failure/latency queries (behavior.md, SLOs; http-api.md, SLO and metrics
//! queries). The numbers come from set-based SQL in the store; this module only applies the
//! eligibility rules and the arithmetic, which is where the predecessor went wrong (it called
//! 60 % availability "compliant" and rounded small error budgets to zero).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use kokino_core::OutcomeClass;
use kokino_store::{OutcomeCount, Store, StoreError};
use serde::Serialize;

/// The targets; every one is a setting with the operations guide's default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SloTargets {
    /// Successes ÷ eligible requests.
    pub availability: f64,
    /// The availability window, in days.
    pub availability_window_days: i64,
    /// p95 of successful executions, in milliseconds.
    pub latency_p95_ms: u64,
    /// The latency (and resources) window, in hours.
    pub latency_window_hours: i64,
    /// Shadow output match rate.
    pub correctness: f64,
    /// Share of conversations without integrity issues.
    pub integrity: f64,
    /// Average peak memory of a CLI, in MiB.
    pub memory_mb: f64,
}

impl Default for SloTargets {
    fn default() -> Self {
        SloTargets {
            availability: 0.995,
            availability_window_days: 30,
            latency_p95_ms: 30_000,
            latency_window_hours: 24,
            correctness: 0.95,
            integrity: 1.0,
            memory_mb: 500.0,
        }
    }
}

/// Events that count as failed requests for availability although no execution ran.
pub const REJECTION_EVENTS: &[&str] = &["LOCK_TIMEOUT", "CIRCUIT_REJECTED"];

/// Error-budget burn rates over three windows (1 spends the budget exactly over the SLO window).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[non_exhaustive]
pub struct BurnRates {
    /// Over the last hour.
    #[serde(rename = "1h")]
    pub h1: f64,
    /// Over the last six hours.
    #[serde(rename = "6h")]
    pub h6: f64,
    /// Over the last three days.
    #[serde(rename = "3d")]
    pub d3: f64,
}

/// The availability SLO over its window.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Availability {
    /// Successes ÷ eligible requests; 1.0 when nothing was eligible.
    pub current: f64,
    /// The target.
    pub target: f64,
    /// The window, in days.
    pub window_days: i64,
    /// Whether the target is missed (never without eligible requests).
    pub breached: bool,
    /// Fraction of the window's error budget left: 1 = untouched, 0 = spent, below 0 = overspent.
    pub error_budget_remaining: f64,
    /// The budget itself, in failed requests: (1 − target) × eligible, never rounded.
    pub error_budget: f64,
    /// Requests that count (successes and failures).
    pub eligible: u64,
    /// Failed requests.
    pub failures: u64,
    /// How fast the budget is being spent.
    pub burn_rates: BurnRates,
}

/// The latency SLO of successful executions.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Latency {
    /// Median duration of successful executions, in milliseconds.
    pub p50_ms: u64,
    /// 95th percentile, in milliseconds.
    pub p95_ms: u64,
    /// 99th percentile, in milliseconds.
    pub p99_ms: u64,
    /// The p95 target.
    pub target_p95_ms: u64,
    /// The window, in hours.
    pub window_hours: i64,
    /// Whether p95 is at or above the target.
    pub breached: bool,
    /// Successful executions in the window.
    pub count: u64,
}

/// An SLO measured as a ratio against a target.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Ratio {
    /// `null` until there is data (no shadow comparisons yet, no integrity check yet).
    pub current: Option<f64>,
    /// The target.
    pub target: f64,
    /// Whether the current value is below the target.
    pub breached: bool,
}

/// The memory SLO.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Resources {
    /// Average peak memory of the CLIs in the window, in MiB (`null` without runs).
    #[serde(rename = "avgMemoryMB")]
    pub avg_memory_mb: Option<f64>,
    /// The target, in MiB.
    #[serde(rename = "targetMB")]
    pub target_mb: f64,
    /// Whether the average is at or above the target.
    pub breached: bool,
}

/// Every SLO at one instant.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SloStatus {
    /// The availability SLO.
    pub availability: Availability,
    /// The latency SLO.
    pub latency: Latency,
    /// The correctness SLO (shadow match rate).
    pub correctness: Ratio,
    /// The integrity SLO (latest integrity check).
    pub integrity: Ratio,
    /// The memory SLO.
    pub resources: Resources,
    /// When the status was computed.
    pub checked_at: DateTime<Utc>,
}

/// Successes and failures in the availability sense.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Tally {
    successes: u64,
    failures: u64,
}

impl Tally {
    fn eligible(&self) -> u64 {
        self.successes + self.failures
    }
    fn ratio(&self) -> f64 {
        if self.eligible() == 0 {
            1.0
        } else {
            self.successes as f64 / self.eligible() as f64
        }
    }
}

fn tally(counts: &[OutcomeCount], rejections: u64) -> Tally {
    let mut t = Tally {
        successes: 0,
        failures: rejections,
    };
    for c in counts {
        match c.outcome.parse::<OutcomeClass>() {
            Ok(OutcomeClass::Success) => t.successes += c.count,
            Ok(class) if class.is_slo_eligible() => t.failures += c.count,
            _ => {}
        }
    }
    t
}

async fn tally_since(store: &Store, since: DateTime<Utc>) -> Result<Tally, StoreError> {
    let counts = store.outcome_counts(since).await?;
    let rejections = store
        .event_counts(REJECTION_EVENTS, since)
        .await?
        .iter()
        .map(|(_, n)| n)
        .sum();
    Ok(tally(&counts, rejections))
}

/// Burn rate: the observed error rate over the budgeted one. 1 spends the budget exactly over
/// the SLO window; 14.4 spends a 30-day budget in about two days.
fn burn_rate(t: Tally, target: f64) -> f64 {
    if t.eligible() == 0 || target >= 1.0 {
        return 0.0;
    }
    (t.failures as f64 / t.eligible() as f64) / (1.0 - target)
}

/// Every SLO at `now`, from the store's counts and the given correctness and integrity ratios.
pub async fn slo_status(
    store: &Store,
    targets: &SloTargets,
    now: DateTime<Utc>,
    correctness: Option<f64>,
    integrity: Option<f64>,
) -> Result<SloStatus, StoreError> {
    let window = tally_since(
        store,
        now - Duration::days(targets.availability_window_days),
    )
    .await?;
    let h1 = tally_since(store, now - Duration::hours(1)).await?;
    let h6 = tally_since(store, now - Duration::hours(6)).await?;
    let d3 = tally_since(store, now - Duration::days(3)).await?;
    let budget = (1.0 - targets.availability) * window.eligible() as f64;
    let remaining = if budget > 0.0 {
        1.0 - window.failures as f64 / budget
    } else {
        1.0
    };
    let current = window.ratio();
    let availability = Availability {
        current,
        target: targets.availability,
        window_days: targets.availability_window_days,
        breached: window.eligible() > 0 && current < targets.availability,
        error_budget_remaining: remaining,
        error_budget: budget,
        eligible: window.eligible(),
        failures: window.failures,
        burn_rates: BurnRates {
            h1: burn_rate(h1, targets.availability),
            h6: burn_rate(h6, targets.availability),
            d3: burn_rate(d3, targets.availability),
        },
    };

    let lat = store
        .duration_stats(
            now - Duration::hours(targets.latency_window_hours),
            &["success"],
            false,
        )
        .await?
        .into_iter()
        .next();
    let latency = match lat {
        Some(s) => Latency {
            p50_ms: s.p50_ms,
            p95_ms: s.p95_ms,
            p99_ms: s.p99_ms,
            target_p95_ms: targets.latency_p95_ms,
            window_hours: targets.latency_window_hours,
            breached: s.p95_ms >= targets.latency_p95_ms,
            count: s.count,
        },
        None => Latency {
            p50_ms: 0,
            p95_ms: 0,
            p99_ms: 0,
            target_p95_ms: targets.latency_p95_ms,
            window_hours: targets.latency_window_hours,
            breached: false,
            count: 0,
        },
    };
    let avg_mb = store
        .avg_peak_rss_mb(now - Duration::hours(targets.latency_window_hours))
        .await?;
    Ok(SloStatus {
        availability,
        latency,
        correctness: Ratio {
            current: correctness,
            target: targets.correctness,
            breached: correctness.is_some_and(|c| c < targets.correctness),
        },
        integrity: Ratio {
            current: integrity,
            target: targets.integrity,
            breached: integrity.is_some_and(|c| c < targets.integrity),
        },
        resources: Resources {
            avg_memory_mb: avg_mb,
            target_mb: targets.memory_mb,
            breached: avg_mb.is_some_and(|m| m >= targets.memory_mb),
        },
        checked_at: now,
    })
}

/// Failures of one CLI type in a window.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CliFailures {
    /// The CLI type.
    pub cli_type: String,
    /// Failed executions.
    pub failures: u64,
    /// Eligible executions.
    pub total: u64,
    /// Failures ÷ total.
    pub failure_rate: f64,
    /// The most frequent failure messages, with their counts.
    pub top_reasons: Vec<String>,
}

/// Failures of one agent in a window.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct AgentFailures {
    /// The agent.
    pub agent_id: String,
    /// Its CLI type.
    pub cli_type: String,
    /// Failed executions.
    pub failures: u64,
    /// Eligible executions.
    pub total: u64,
    /// Failures ÷ total.
    pub failure_rate: f64,
    /// When the latest failure ended.
    pub last_failure_at: Option<DateTime<Utc>>,
}

/// Durations of one agent's executions in a window.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct AgentLatency {
    /// The agent.
    pub agent_id: String,
    /// Executions measured.
    pub count: u64,
    /// Average duration, in milliseconds.
    pub avg_ms: f64,
    /// Median duration, in milliseconds.
    pub p50_ms: u64,
    /// 95th percentile, in milliseconds.
    pub p95_ms: u64,
    /// Longest, in milliseconds.
    pub max_ms: u64,
}

fn rate(f: u64, t: u64) -> f64 {
    if t == 0 {
        0.0
    } else {
        f as f64 / t as f64
    }
}

/// Failures and totals use the availability rules: cancelled, rate-limited and interrupted
/// runs are neither.
pub async fn failures_by_cli(
    store: &Store,
    since: DateTime<Utc>,
) -> Result<Vec<CliFailures>, StoreError> {
    let mut by: BTreeMap<String, Tally> = BTreeMap::new();
    for c in store.outcome_counts(since).await? {
        let t = by.entry(c.cli_type.clone()).or_default();
        let one = tally(std::slice::from_ref(&c), 0);
        t.successes += one.successes;
        t.failures += one.failures;
    }
    let mut reasons: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (cli, reason, n) in store.top_failure_reasons(since, 3).await? {
        reasons
            .entry(cli)
            .or_default()
            .push(format!("{reason} ({n})"));
    }
    let mut out: Vec<CliFailures> = by
        .into_iter()
        .map(|(cli, t)| CliFailures {
            top_reasons: reasons.remove(&cli).unwrap_or_default(),
            cli_type: cli,
            failures: t.failures,
            total: t.eligible(),
            failure_rate: rate(t.failures, t.eligible()),
        })
        .collect();
    out.sort_by(|a, b| {
        b.failures
            .cmp(&a.failures)
            .then(a.cli_type.cmp(&b.cli_type))
    });
    Ok(out)
}

/// Failures per agent since `since`, most failures first (same rules as [`failures_by_cli`]).
pub async fn failures_by_agent(
    store: &Store,
    since: DateTime<Utc>,
) -> Result<Vec<AgentFailures>, StoreError> {
    // (agent, cli) → (tally, time of the latest failure)
    type ByAgent = BTreeMap<(String, String), (Tally, Option<DateTime<Utc>>)>;
    let mut by: ByAgent = BTreeMap::new();
    for c in store.outcome_counts(since).await? {
        let e = by
            .entry((c.agent_id.clone(), c.cli_type.clone()))
            .or_default();
        let one = tally(std::slice::from_ref(&c), 0);
        e.0.successes += one.successes;
        e.0.failures += one.failures;
        if one.failures > 0 {
            e.1 = e.1.max(c.last_at);
        }
    }
    let mut out: Vec<AgentFailures> = by
        .into_iter()
        .map(|((agent, cli), (t, last))| AgentFailures {
            agent_id: agent,
            cli_type: cli,
            failures: t.failures,
            total: t.eligible(),
            failure_rate: rate(t.failures, t.eligible()),
            last_failure_at: last,
        })
        .collect();
    out.sort_by(|a, b| {
        b.failures
            .cmp(&a.failures)
            .then(a.agent_id.cmp(&b.agent_id))
    });
    Ok(out)
}

/// Latency per agent over every run that ended on its own (cancelled and interrupted runs say
/// nothing about the agent's speed), slowest first.
pub async fn latency_by_agent(
    store: &Store,
    since: DateTime<Utc>,
) -> Result<Vec<AgentLatency>, StoreError> {
    let outcomes: Vec<&str> = OutcomeClass::ALL
        .iter()
        .filter(|o| !matches!(o, OutcomeClass::Cancelled | OutcomeClass::Interrupted))
        .map(|o| o.as_str())
        .collect();
    let mut out: Vec<AgentLatency> = store
        .duration_stats(since, &outcomes, true)
        .await?
        .into_iter()
        .map(|s| AgentLatency {
            agent_id: s.agent_id,
            count: s.count,
            avg_ms: s.avg_ms,
            p50_ms: s.p50_ms,
            p95_ms: s.p95_ms,
            max_ms: s.max_ms,
        })
        .collect();
    out.sort_by(|a, b| b.p95_ms.cmp(&a.p95_ms).then(a.agent_id.cmp(&b.agent_id)));
    Ok(out)
}

/// The broker's SLO status now: correctness from the shadow comparisons of the availability
/// window, integrity from the latest integrity check.
pub(crate) async fn status(b: &crate::Broker) -> Result<SloStatus, crate::ServiceError> {
    let inner = &b.inner;
    let now = inner.clock.now();
    let integrity = *inner.last_integrity.lock().expect("integrity cache");
    let window = Duration::days(inner.cfg.slo.availability_window_days);
    let shadow = inner.store.shadow_summary(now - window).await?;
    let correctness = crate::shadow::match_rate(&shadow);
    Ok(slo_status(&inner.store, &inner.cfg.slo, now, correctness, integrity).await?)
}

/// The start of a query window of `hours` hours ending now (on the broker's clock).
pub(crate) fn hours_ago(b: &crate::Broker, hours: u32) -> DateTime<Utc> {
    b.inner.clock.now() - Duration::hours(i64::from(hours))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oc(outcome: &str, n: u64) -> OutcomeCount {
        OutcomeCount {
            cli_type: "codex".into(),
            agent_id: "a".into(),
            outcome: outcome.into(),
            count: n,
            last_at: None,
        }
    }

    #[test]
    fn eligibility_follows_the_spec() {
        let t = tally(
            &[
                oc("success", 90),
                oc("cli_error", 3),
                oc("timeout", 2),
                oc("cancelled", 50),
                oc("rate_limited", 7),
                oc("interrupted", 4),
            ],
            5,
        );
        assert_eq!(
            t,
            Tally {
                successes: 90,
                failures: 10
            }
        );
        assert!((t.ratio() - 0.9).abs() < 1e-12);
    }

    #[test]
    fn burn_rate_is_error_rate_over_budget_rate() {
        let t = Tally {
            successes: 986,
            failures: 14,
        };
        assert!((burn_rate(t, 0.995) - 2.8).abs() < 1e-9);
        assert_eq!(burn_rate(Tally::default(), 0.995), 0.0);
    }
}
