//! The shapes the service answers with. They serialise to the API contract's camelCase so a
//! transport can send them as they are.

use chrono::{DateTime, Utc};
use kokino_cli::StreamEvent;
use kokino_core::{AgentRecord, CommMode, Usage};
use serde::{Deserialize, Serialize};

/// One execution request. Unknown fields are refused: a misspelt `timeoutMS` silently ignored
/// would be worse than an error naming it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecuteRequest {
    /// The prompt sent to the CLI.
    pub prompt: String,
    /// The execution timeout for this run, in milliseconds (default: the agent's, else the
    /// broker's).
    pub timeout_ms: Option<u64>,
    /// How long to wait for the agent's lock, in milliseconds (0: fail at once if busy).
    pub lock_timeout_ms: Option<u64>,
    /// Continue this conversation of the agent instead of its current one.
    pub conversation_id: Option<String>,
    /// Free-form metadata stored on the user turn (an object; anything else is ignored).
    pub metadata: Option<serde_json::Value>,
    /// Start a new CLI session seeded with the stored conversation instead of resuming the
    /// CLI's own session (what the broker also does by itself when the CLI cannot find its
    /// session): for an operator who knows the CLI's session is gone or damaged.
    #[serde(default)]
    pub rehydrate: bool,
}

/// Details of a successful execution.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ExecuteMetadata {
    /// The CLI session the answer belongs to.
    pub session_id: Option<String>,
    /// The CLI's exit code.
    pub exit_code: Option<i32>,
    /// The CLI type that answered.
    pub cli_type: String,
    /// How long the request waited for the agent's lock, in milliseconds.
    pub waited_ms: u64,
    /// The execution's id (also in the turns' metadata and the events).
    pub execution_id: String,
    /// The CLI could not resume its session (or the request asked for it), so this answer
    /// comes from a new CLI session seeded with the stored conversation.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rehydrated: bool,
}

/// The answer to a successful execution.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ExecuteResponse {
    /// The stored answer turn.
    pub turn_id: String,
    /// The conversation the turn belongs to.
    pub conversation_id: String,
    /// The CLI's answer.
    pub content: String,
    /// Always `true` (failures are errors).
    pub success: bool,
    /// How long the CLI ran, in milliseconds.
    pub duration_ms: u64,
    /// The CLI session to resume next time.
    pub session_id: Option<String>,
    /// The mode the execution ran in.
    pub mode: CommMode,
    /// Token usage, when the CLI reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Cost in USD, when the CLI reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Agentic turns the CLI took, when it reported them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_turns: Option<u32>,
    /// Details of the run.
    pub metadata: ExecuteMetadata,
}

/// Progress of one execute call, for streaming clients.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Waiting for the agent's lock behind `position` others (0: running next).
    Queued {
        /// Runs ahead of this one (the running one included).
        position: usize,
    },
    /// The CLI process started.
    Started {
        /// Its process id.
        pid: i32,
        /// The mode it runs in.
        mode: CommMode,
        /// The CLI session it resumes, if any.
        session_id: Option<String>,
    },
    /// An event of the CLI's output stream.
    Stream(StreamEvent),
}

/// An agent's current session.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SessionView {
    /// The conversation the session continues.
    pub conversation_id: String,
    /// The CLI session id, once the CLI has started it.
    pub session_id: Option<String>,
    /// Always `true` (an agent without a session has none).
    pub has_session: bool,
    /// When the session was created.
    pub created_at: DateTime<Utc>,
    /// When it was last used.
    pub last_activity_at: DateTime<Utc>,
}

/// An agent with what the broker knows about it now.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct AgentView {
    /// The registered agent.
    #[serde(flatten)]
    pub record: AgentRecord,
    /// Its current session; `null` when none.
    pub session: Option<SessionView>,
    /// The agent's circuit breaker; `null` until it has been used.
    pub circuit: Option<serde_json::Value>,
    /// Active fallback override; `null` when none.
    pub fallback: Option<serde_json::Value>,
    /// The mode the next execution would use; `null` when none can run (tmux missing).
    pub effective_mode: Option<CommMode>,
    /// Whether an execution of the agent runs now.
    pub executing: bool,
}

/// One agent's session, lock and running execution.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SessionStatus {
    /// The agent.
    pub agent_id: String,
    /// The CLI session id, when the agent has a session.
    pub session_id: Option<String>,
    /// Whether the agent has a session.
    pub has_session: bool,
    /// Whether the agent's lock is held.
    pub locked: bool,
    /// Whether an execution runs now.
    pub executing: bool,
    /// Epoch milliseconds, so that the operations guide's `jq` arithmetic works on it.
    pub execution_started_at: Option<i64>,
    /// Requests waiting for the lock.
    pub queue_length: usize,
    /// The running CLI's process id.
    pub pid: Option<i32>,
    /// The running execution's mode, else the agent's registered mode.
    pub mode: CommMode,
    /// When the session was last used.
    pub last_activity_at: Option<DateTime<Utc>>,
}

/// The result of a cancel.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CancelResult {
    /// Whether an execution was running (and is now being stopped).
    pub cancelled: bool,
    /// The agent.
    pub agent_id: String,
    /// The cancelled CLI's process id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The cancelled execution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
}

/// The result of ending a session.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EndSessionResult {
    /// Whether the agent had a session.
    pub ended: bool,
    /// The agent.
    pub agent_id: String,
    /// The CLI session that ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// The broker's health.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: &'static str,
    /// The broker's version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Registered agents.
    pub agents: usize,
    /// Executions running now.
    pub executing: usize,
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    /// This broker's id (changes at every start).
    pub instance_id: String,
    /// Why the broker is degraded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// The limits a running CLI is held to.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ProcessLimits {
    /// The memory limit of its process group.
    #[serde(rename = "maxMemoryMB")]
    pub max_memory_mb: u64,
    /// The execution timeout.
    pub timeout_ms: u64,
}

/// A live CLI process.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ProcessStatus {
    /// The agent it runs for.
    pub agent_id: String,
    /// The execution it runs.
    pub execution_id: String,
    /// Its process id.
    pub pid: i32,
    /// Its process group (the CLI leads its own).
    pub pgid: i32,
    /// The mode it runs in.
    pub mode: CommMode,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Milliseconds since it started.
    pub age_ms: i64,
    /// Live resident memory of the whole process group, from the latest sample.
    #[serde(rename = "memoryMB")]
    pub memory_mb: f64,
    /// CPU use of the group over the latest sampling interval, in percent of one core.
    pub cpu_percent: f64,
    /// The limits it is held to.
    pub limits: ProcessLimits,
}

/// The tail of an agent's log.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct AgentLogTail {
    /// The agent.
    pub agent_id: String,
    /// How many lines `content` has.
    pub lines: usize,
    /// The lines.
    pub content: String,
}
