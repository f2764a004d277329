//! Shadow mode: the answers of its queries (http-api.md, Shadow mode) computed from the stored
//! results, the two legs of a shadow execution ([`legs`]), and the queries themselves
//! ([`reports`]).

pub(crate) mod legs;
pub(crate) mod reports;

use chrono::{DateTime, Utc};
use kokino_store::{ShadowResult, ShadowSummary};
use serde::Serialize;

/// Share of shadow runs in which each leg succeeded.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct SuccessRates {
    /// Share in which the tmux leg succeeded.
    pub tmux: f64,
    /// Share in which the headless leg succeeded.
    pub headless: f64,
}

/// Shadow runs by how their legs ended.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SummaryCounts {
    /// Both legs answered.
    pub both_succeeded: u64,
    /// Only the tmux leg answered.
    pub only_tmux_succeeded: u64,
    /// Only the headless leg answered.
    pub only_headless_succeeded: u64,
    /// Neither leg answered.
    pub both_failed: u64,
    /// Both answered and the answers matched.
    pub output_matched: u64,
    /// Both answered and the answers differed.
    pub output_mismatched: u64,
}

/// The shadow-mode metrics over a number of days.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShadowMetrics {
    /// The window, in days.
    pub days: u32,
    /// Shadow runs in the window.
    pub total_tests: u64,
    /// Success rate of each leg.
    pub success_rates: SuccessRates,
    /// Matched ÷ runs where both legs answered (`null` when there were none).
    pub output_match_rate: Option<f64>,
    /// Average headless − tmux latency in ms (negative: headless faster), `null` without data.
    pub avg_latency_delta: Option<f64>,
    /// Whether headless was faster on average.
    pub headless_faster: bool,
    /// Runs by how their legs ended.
    pub summary: SummaryCounts,
}

fn rate(n: u64, d: u64) -> f64 {
    if d == 0 {
        0.0
    } else {
        n as f64 / d as f64
    }
}

/// Matched ÷ compared answers (`None` before any comparison).
pub fn match_rate(s: &ShadowSummary) -> Option<f64> {
    let compared = s.matched + s.mismatched;
    (compared > 0).then(|| s.matched as f64 / compared as f64)
}

/// The shadow metrics of a summary over `days` days.
pub fn metrics(days: u32, s: &ShadowSummary) -> ShadowMetrics {
    ShadowMetrics {
        days,
        total_tests: s.total,
        success_rates: SuccessRates {
            tmux: rate(s.tmux_succeeded, s.total),
            headless: rate(s.headless_succeeded, s.total),
        },
        output_match_rate: match_rate(s),
        avg_latency_delta: s.avg_latency_delta_ms,
        headless_faster: s.avg_latency_delta_ms.is_some_and(|d| d < 0.0),
        summary: SummaryCounts {
            both_succeeded: s.both_succeeded,
            only_tmux_succeeded: s.only_tmux_succeeded,
            only_headless_succeeded: s.only_headless_succeeded,
            both_failed: s.both_failed,
            output_matched: s.matched,
            output_mismatched: s.mismatched,
        },
    }
}

/// A shadow run whose two answers differed.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Mismatch {
    /// The stored result's id.
    pub id: i64,
    /// The agent.
    pub agent_id: String,
    /// The execution.
    pub execution_id: String,
    /// Similarity of the two answers (0–1).
    pub similarity: Option<f64>,
    /// The tmux leg's answer.
    pub tmux_response: Option<String>,
    /// The headless leg's answer.
    pub headless_response: Option<String>,
    /// A diff of the two answers.
    pub diff: Option<String>,
    /// When the run was recorded.
    pub created_at: DateTime<Utc>,
}

impl From<ShadowResult> for Mismatch {
    fn from(r: ShadowResult) -> Self {
        Mismatch {
            id: r.id,
            agent_id: r.agent_id,
            execution_id: r.execution_id,
            similarity: r.similarity,
            tmux_response: r.tmux_response,
            headless_response: r.headless_response,
            diff: r.diff,
            created_at: r.created_at,
        }
    }
}

/// One criterion of the switch-to-headless decision.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Criterion {
    /// Whether the criterion is met.
    pub met: bool,
    /// Days of data (duration criterion).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days: Option<f64>,
    /// The measured value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<f64>,
    /// The value to reach.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
    /// Average headless − tmux latency in ms (latency criterion).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avg_delta: Option<f64>,
    /// The measured rate (corruption criterion).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
}

/// The criteria of the switch-to-headless decision.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Criteria {
    /// At least 30 days of shadow data.
    pub shadow_duration: Criterion,
    /// Headless success of at least 99.5 %.
    pub headless_success_rate: Criterion,
    /// Output match of at least 95 %.
    pub output_match_rate: Criterion,
    /// Headless faster than tmux on average.
    pub latency_improvement: Criterion,
    /// Integrity failures per conversation below 0.001.
    pub data_corruption: Criterion,
}

/// Whether shadow agents are ready to switch to headless, and why (not).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Whether every criterion is met.
    pub ready: bool,
    /// Each criterion.
    pub criteria: Criteria,
    /// What to do, in words.
    pub recommendation: String,
}

/// The go/no-go for switching shadow agents to headless (behavior.md: ≥ 30 days of data,
/// headless success ≥ 0.995, match ≥ 0.95, average latency delta < 0, corruption < 0.001).
pub fn decision(s: &ShadowSummary, now: DateTime<Utc>, corruption_rate: f64) -> Decision {
    let days = s
        .first_at
        .map(|f| (now - f).num_seconds().max(0) as f64 / 86_400.0)
        .unwrap_or(0.0);
    let headless = (s.total > 0).then(|| rate(s.headless_succeeded, s.total));
    let matched = match_rate(s);
    let c = Criteria {
        shadow_duration: Criterion {
            met: days >= 30.0,
            days: Some((days * 10.0).round() / 10.0),
            actual: None,
            target: Some(30.0),
            avg_delta: None,
            rate: None,
        },
        headless_success_rate: Criterion {
            met: headless.is_some_and(|h| h >= 0.995),
            days: None,
            actual: headless,
            target: Some(0.995),
            avg_delta: None,
            rate: None,
        },
        output_match_rate: Criterion {
            met: matched.is_some_and(|m| m >= 0.95),
            days: None,
            actual: matched,
            target: Some(0.95),
            avg_delta: None,
            rate: None,
        },
        latency_improvement: Criterion {
            met: s.avg_latency_delta_ms.is_some_and(|d| d < 0.0),
            days: None,
            actual: None,
            target: None,
            avg_delta: s.avg_latency_delta_ms,
            rate: None,
        },
        data_corruption: Criterion {
            met: corruption_rate < 0.001,
            days: None,
            actual: None,
            target: Some(0.001),
            avg_delta: None,
            rate: Some(corruption_rate),
        },
    };
    let mut missing = Vec::new();
    if !c.shadow_duration.met {
        missing.push(format!("{:.1} of 30 days of shadow data", days));
    }
    if !c.headless_success_rate.met {
        missing.push(match headless {
            Some(h) => format!("headless success {:.2} % < 99.5 %", h * 100.0),
            None => "no shadow executions yet".into(),
        });
    }
    if !c.output_match_rate.met {
        missing.push(match matched {
            Some(m) => format!("output match {:.2} % < 95 %", m * 100.0),
            None => "no compared answers yet".into(),
        });
    }
    if !c.latency_improvement.met {
        missing.push("headless is not faster than tmux on average".into());
    }
    if !c.data_corruption.met {
        missing.push(format!(
            "integrity failures per conversation {corruption_rate:.4} ≥ 0.001"
        ));
    }
    let ready = missing.is_empty();
    Decision {
        ready,
        criteria: c,
        recommendation: if ready {
            "Ready: switch shadow agents to headless (POST /api/shadow-mode/disable-all {\"to\":\"headless\"}).".into()
        } else {
            format!("Keep shadow mode: {}.", missing.join("; "))
        },
    }
}
