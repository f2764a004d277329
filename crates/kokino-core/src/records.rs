//! The records the store keeps and the HTTP layer shows.
//!
//! They are plain data; field names serialise to the camelCase of the HTTP contract so that the
//! HTTP crate can answer with them directly.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{AgentId, CliType, CommMode, OutcomeClass, Usage};

/// What a caller registers; the store adds timestamps to make an [`AgentRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    pub agent_id: AgentId,
    #[serde(rename = "type")]
    pub cli_type: CliType,
    pub comm_mode: CommMode,
    pub cwd: Option<String>,
    pub model: Option<String>,
    pub role: Option<String>,
    pub system_prompt: Option<String>,
    pub timeout_ms: Option<u64>,
    #[serde(rename = "maxMemoryMB")]
    pub max_memory_mb: Option<u64>,
    /// Never serialised: values are often credentials, and the agent record is shown to anyone
    /// who can `GET /agents`.
    #[serde(default, skip_serializing)]
    pub env: BTreeMap<String, String>,
    pub binary: Option<String>,
    #[serde(default)]
    pub extra_args: Vec<String>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Who handles a rate limit (`rateLimit`): absent or `stop`, the broker stops the run at the
    /// first rate-limit signal and answers `RATE_LIMITED`; `cli`, the CLI retries on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitPolicy>,
}

/// Who handles a rate limit the CLI runs into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitPolicy {
    /// The broker stops the run at the first signal (the default): the agent is parked and the
    /// client gets `RATE_LIMITED` with `Retry-After` in seconds, not after the CLI's own retries.
    Stop,
    /// The CLI retries on its own; the run ends when the CLI gives up or succeeds.
    Cli,
}

impl RateLimitPolicy {
    /// The stored and serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimitPolicy::Stop => "stop",
            RateLimitPolicy::Cli => "cli",
        }
    }
}

impl std::str::FromStr for RateLimitPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stop" => Ok(RateLimitPolicy::Stop),
            "cli" => Ok(RateLimitPolicy::Cli),
            other => Err(format!(
                "rateLimit must be \"stop\" or \"cli\", not {other:?}"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentRecord {
    #[serde(flatten)]
    pub spec: AgentSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The CLI session an agent is attached to. `cli_session_id` is `None` until the CLI reported
/// its id (or, for Claude, until we chose one for `--session-id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    pub agent_id: AgentId,
    pub conversation_id: String,
    pub cli_session_id: Option<String>,
    /// True once a run of this session reached the CLI far enough that the CLI knows the session,
    /// so the next run must resume rather than create.
    pub cli_session_started: bool,
    pub created_at: DateTime<Utc>,
    pub last_activity_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionState {
    Running,
    Finished,
}

/// What is written before the process starts.
#[derive(Debug, Clone, PartialEq)]
pub struct NewExecution {
    pub execution_id: String,
    pub agent_id: AgentId,
    pub conversation_id: String,
    pub cli_type: CliType,
    pub mode: CommMode,
    pub user_turn_id: String,
    pub prompt: String,
    pub turn_metadata: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionRecord {
    pub execution_id: String,
    pub agent_id: AgentId,
    pub conversation_id: String,
    pub cli_type: CliType,
    pub mode: CommMode,
    pub state: ExecutionState,
    pub outcome: Option<OutcomeClass>,
    pub pid: Option<i64>,
    /// Process start time (clock ticks since boot, from procfs) so that a recorded pid is never
    /// confused with a later process that reused it.
    pub pid_start_time: Option<i64>,
    pub cli_session_id: Option<String>,
    pub exit_code: Option<i64>,
    pub error_message: Option<String>,
    pub duration_ms: Option<i64>,
    pub usage: Option<Usage>,
    pub cost_usd: Option<f64>,
    pub num_turns: Option<i64>,
    pub peak_rss_mb: Option<f64>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    System,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "system" => Some(Role::System),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Turn {
    pub turn_id: String,
    pub conversation_id: String,
    pub seq: i64,
    pub role: Role,
    pub content: String,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    pub conversation_id: String,
    pub agent_id: AgentId,
    pub cli_type: CliType,
    pub session_id: Option<String>,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
