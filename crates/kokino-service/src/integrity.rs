//! Conversation integrity as the broker sees it: the store's set-based checks, plus executions
//! stuck `running` without a live process (only the broker knows what runs).

use chrono::{DateTime, Utc};
use kokino_store::IntegrityFinding;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IntegrityReport {
    pub passed: bool,
    pub checked_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub total_conversations: u64,
    pub total_turns: u64,
    pub orphaned_turns: u64,
    pub conversations_with_issues: u64,
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

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TurnsByRole {
    pub user: u64,
    pub assistant: u64,
    pub system: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IntegrityStats {
    pub total_conversations: u64,
    pub total_turns: u64,
    pub conversations_by_agent: std::collections::BTreeMap<String, u64>,
    pub turns_by_role: TurnsByRole,
    pub average_turns_per_conversation: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IntegrityCleanup {
    pub deleted: u64,
    pub repaired: u64,
    pub message: String,
}
