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
pub struct SloTargets {
    pub availability: f64,
    pub availability_window_days: i64,
    pub latency_p95_ms: u64,
    pub latency_window_hours: i64,
    pub correctness: f64,
    pub integrity: f64,
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

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BurnRates {
    #[serde(rename = "1h")]
    pub h1: f64,
    #[serde(rename = "6h")]
    pub h6: f64,
    #[serde(rename = "3d")]
    pub d3: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Availability {
    /// Successes ÷ eligible requests; 1.0 when nothing was eligible.
    pub current: f64,
    pub target: f64,
    pub window_days: i64,
    pub breached: bool,
    /// Fraction of the window's error budget left: 1 = untouched, 0 = spent, below 0 = overspent.
    pub error_budget_remaining: f64,
    /// The budget itself, in failed requests: (1 − target) × eligible, never rounded.
    pub error_budget: f64,
    pub eligible: u64,
    pub failures: u64,
    pub burn_rates: BurnRates,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
    pub target_p95_ms: u64,
    pub window_hours: i64,
    pub breached: bool,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Ratio {
    /// `null` until there is data (no shadow comparisons yet, no integrity check yet).
    pub current: Option<f64>,
    pub target: f64,
    pub breached: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(rename = "avgMemoryMB")]
    pub avg_memory_mb: Option<f64>,
    #[serde(rename = "targetMB")]
    pub target_mb: f64,
    pub breached: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SloStatus {
    pub availability: Availability,
    pub latency: Latency,
    pub correctness: Ratio,
    pub integrity: Ratio,
    pub resources: Resources,
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

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CliFailures {
    pub cli_type: String,
    pub failures: u64,
    pub total: u64,
    pub failure_rate: f64,
    pub top_reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentFailures {
    pub agent_id: String,
    pub cli_type: String,
    pub failures: u64,
    pub total: u64,
    pub failure_rate: f64,
    pub last_failure_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentLatency {
    pub agent_id: String,
    pub count: u64,
    pub avg_ms: f64,
    pub p50_ms: u64,
    pub p95_ms: u64,
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
