//! Conversation integrity as the broker sees it: the store's set-based checks, plus executions
//! stuck `running` without a live process (only the broker knows what runs).

use std::time::Instant;

use chrono::{DateTime, Utc};
use kokino_store::IntegrityFinding;
use serde::Serialize;
use serde_json::json;

use crate::state::millis;
use crate::telemetry::{self, event};
use crate::{Broker, ServiceError};

/// The result of one integrity check.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct IntegrityReport {
    /// Whether no issue was found.
    pub passed: bool,
    /// When the check ran.
    pub checked_at: DateTime<Utc>,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// Conversations in the store.
    pub total_conversations: u64,
    /// Turns in the store.
    pub total_turns: u64,
    /// Turns whose conversation is gone.
    pub orphaned_turns: u64,
    /// Conversations with at least one issue.
    pub conversations_with_issues: u64,
    /// Every issue found.
    pub issues: Vec<IntegrityFinding>,
}

impl IntegrityReport {
    /// The integrity SLI: the share of conversations without issues (1.0 for an empty store).
    pub fn clean_ratio(&self) -> f64 {
        if self.total_conversations == 0 {
            return if self.passed { 1.0 } else { 0.0 };
        }
        1.0 - (self.conversations_with_issues.min(self.total_conversations) as f64
            / self.total_conversations as f64)
    }
}

/// Turns by role, over the whole store.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct TurnsByRole {
    /// The users' prompts.
    pub user: u64,
    /// The CLIs' answers.
    pub assistant: u64,
    /// The broker's notes (failures, interruptions).
    pub system: u64,
}

/// Counts over the stored conversations.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct IntegrityStats {
    /// Conversations in the store.
    pub total_conversations: u64,
    /// Turns in the store.
    pub total_turns: u64,
    /// Conversations per agent id.
    pub conversations_by_agent: std::collections::BTreeMap<String, u64>,
    /// Turns per role.
    pub turns_by_role: TurnsByRole,
    /// Turns ÷ conversations (0 without conversations).
    pub average_turns_per_conversation: f64,
}

/// What a cleanup did.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct IntegrityCleanup {
    /// Orphaned rows deleted.
    pub deleted: u64,
    /// Conversations renumbered plus stuck executions marked interrupted.
    pub repaired: u64,
    /// The same, in words.
    pub message: String,
}

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Runs every integrity check; records events for what it finds and keeps the result for
/// the integrity SLO.
pub(crate) async fn check(b: &Broker) -> Result<IntegrityReport> {
    let started = Instant::now();
    let store = &b.inner.store;
    let mut issues = store.integrity_findings().await?;
    for exec in crate::recovery::stuck_executions(b).await? {
        issues.push(IntegrityFinding {
            kind: "execution_stuck_running".into(),
            conversation_id: exec.conversation_id.clone(),
            turn_id: None,
            message: format!(
                "execution {} of agent {} is recorded as running but no process runs it",
                exec.execution_id, exec.agent_id
            ),
        });
    }
    let totals = store.integrity_totals().await?;
    let orphaned = issues.iter().filter(|i| i.kind == "orphaned_turn").count() as u64;
    let mut with_issues: Vec<String> = issues.iter().map(|i| i.conversation_id.clone()).collect();
    with_issues.sort_unstable();
    with_issues.dedup();
    let report = IntegrityReport {
        passed: issues.is_empty(),
        checked_at: b.inner.clock.now(),
        duration_ms: millis(started.elapsed()),
        total_conversations: totals.conversations,
        total_turns: totals.turns,
        orphaned_turns: orphaned,
        conversations_with_issues: with_issues.len() as u64,
        issues,
    };
    publish(b, &report, &with_issues);
    *b.inner.last_integrity.lock().expect("integrity cache") = Some(report.clean_ratio());
    Ok(report)
}

/// The events and the gauge of one check.
fn publish(b: &Broker, report: &IntegrityReport, with_issues: &[String]) {
    if report.orphaned_turns > 0 {
        let mut ev = event("ORPHAN_DETECTED", None, None);
        ev.success = Some(false);
        ev.metadata = json!({"orphanedTurns": report.orphaned_turns});
        b.inner.events.emit(ev);
    }
    // One event per affected conversation, bounded so a badly damaged store cannot flood
    // the event table.
    for conv in with_issues.iter().take(100) {
        let kinds: Vec<&str> = report
            .issues
            .iter()
            .filter(|i| i.conversation_id == *conv)
            .map(|i| i.kind.as_str())
            .collect();
        let mut ev = event("CONVERSATION_INTEGRITY_FAIL", None, None);
        ev.success = Some(false);
        ev.metadata = json!({"conversationId": conv, "issues": kinds});
        b.inner.events.emit(ev);
    }
    metrics::gauge!(telemetry::INTEGRITY_ISSUES).set(report.issues.len() as f64);
}

/// Counts over the stored conversations and turns.
pub(crate) async fn stats(b: &Broker) -> Result<IntegrityStats> {
    let t = b.inner.store.integrity_totals().await?;
    Ok(IntegrityStats {
        total_conversations: t.conversations,
        total_turns: t.turns,
        conversations_by_agent: t.conversations_by_agent.into_iter().collect(),
        turns_by_role: TurnsByRole {
            user: t.user_turns,
            assistant: t.assistant_turns,
            system: t.system_turns,
        },
        average_turns_per_conversation: if t.conversations == 0 {
            0.0
        } else {
            t.turns as f64 / t.conversations as f64
        },
    })
}

/// Repairs what is safe: deletes orphaned turns and dangling sessions, renumbers gapped
/// conversations, marks stuck executions `interrupted`. Role-order problems are reported by
/// the check but never rewritten: there is no safe way to guess the right order.
pub(crate) async fn cleanup(b: &Broker) -> Result<IntegrityCleanup> {
    let (deleted, renumbered) = b.inner.store.integrity_repair().await?;
    let mut interrupted = 0u64;
    for exec in crate::recovery::stuck_executions(b).await? {
        crate::recovery::mark_interrupted(b, &exec).await?;
        interrupted += 1;
    }
    let repaired = renumbered + interrupted;
    let message = format!(
        "deleted {deleted} orphaned rows, renumbered {renumbered} conversations, marked {interrupted} stuck executions interrupted"
    );
    tracing::info!("{message}");
    Ok(IntegrityCleanup {
        deleted,
        repaired,
        message,
    })
}
