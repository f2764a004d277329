//! The shapes the service answers with. They serialise to the HTTP contract's camelCase so the
//! HTTP layer can send them as they are.

use chrono::{DateTime, Utc};
use kokino_cli::StreamEvent;
use kokino_core::{AgentRecord, CommMode, Usage};
use serde::{Deserialize, Serialize};

/// The body of `POST /agents/{id}/execute`. Unknown fields are refused: a misspelt
/// `timeoutMS` silently ignored would be worse than a 400.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecuteRequest {
    pub prompt: String,
    pub timeout_ms: Option<u64>,
    pub lock_timeout_ms: Option<u64>,
    pub conversation_id: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteMetadata {
    pub session_id: Option<String>,
    pub exit_code: Option<i32>,
    pub cli_type: String,
    pub waited_ms: u64,
    pub execution_id: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteResponse {
    pub turn_id: String,
    pub conversation_id: String,
    pub content: String,
    pub success: bool,
    pub duration_ms: u64,
    pub session_id: Option<String>,
    pub mode: CommMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_turns: Option<u32>,
    pub metadata: ExecuteMetadata,
}

/// Progress of one execute call, for streaming clients.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    Queued {
        position: usize,
    },
    Started {
        pid: i32,
        mode: CommMode,
        session_id: Option<String>,
    },
    Stream(StreamEvent),
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    pub conversation_id: String,
    pub session_id: Option<String>,
    pub has_session: bool,
    pub created_at: DateTime<Utc>,
    pub last_activity_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    #[serde(flatten)]
    pub record: AgentRecord,
    pub session: Option<SessionView>,
    /// The agent's circuit breaker; `null` until it has been used.
    pub circuit: Option<serde_json::Value>,
    /// Active fallback override; `null` when none.
    pub fallback: Option<serde_json::Value>,
    /// The mode the next execution would use; `null` when none can run (tmux missing).
    pub effective_mode: Option<CommMode>,
    pub executing: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    pub agent_id: String,
    pub session_id: Option<String>,
    pub has_session: bool,
    pub locked: bool,
    pub executing: bool,
    /// Epoch milliseconds, so that the operations guide's `jq` arithmetic works on it.
    pub execution_started_at: Option<i64>,
    pub queue_length: usize,
    pub pid: Option<i32>,
    pub mode: CommMode,
    pub last_activity_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelResult {
    pub cancelled: bool,
    pub agent_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndSessionResult {
    pub ended: bool,
    pub agent_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
    pub uptime_seconds: u64,
    pub agents: usize,
    pub executing: usize,
    pub store: &'static str,
    pub instance_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessLimits {
    #[serde(rename = "maxMemoryMB")]
    pub max_memory_mb: u64,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessStatus {
    pub agent_id: String,
    pub execution_id: String,
    pub pid: i32,
    pub pgid: i32,
    pub mode: CommMode,
    pub started_at: DateTime<Utc>,
    pub age_ms: i64,
    /// Live resident memory of the whole process group, from the latest sample.
    #[serde(rename = "memoryMB")]
    pub memory_mb: f64,
    /// CPU use of the group over the latest sampling interval, in percent of one core.
    pub cpu_percent: f64,
    pub limits: ProcessLimits,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentLogTail {
    pub agent_id: String,
    pub lines: usize,
    pub content: String,
}
