//! Kokino's wire types: the JSON bodies of the HTTP API (spec/http-api.md).
//!
//! The server answers with these types and the client (`kokino-client`) reads them back with the
//! same types, so the two cannot drift apart. Every type derives [`utoipa::ToSchema`], which is
//! where the OpenAPI document's schemas come from (`kokino-http`'s `openapi` module).
//!
//! This crate holds data only: no IO, no HTTP.

#![forbid(unsafe_code)]

pub mod model;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

pub use model::*;

/// The closed set of error codes the API answers with, in the `code` field of every error body.
///
/// A code names what went wrong independently of the HTTP status, so a client can act on it
/// (retry after a `LOCK_TIMEOUT`, register after an `AGENT_NOT_FOUND`) without parsing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// 400: a malformed body, query or path, or a value out of range (`details.field` names it).
    BadRequest,
    /// 401: the bearer token is missing or wrong.
    Unauthorized,
    /// 403: the `Host` header is not one the broker serves (DNS-rebinding defence).
    ForbiddenHost,
    /// 403: the `Origin` header is not an allowed one (cross-site defence).
    ForbiddenOrigin,
    /// 404: no such endpoint.
    NotFound,
    /// 405: the endpoint exists but not with this method.
    MethodNotAllowed,
    /// 404: no agent with this id.
    AgentNotFound,
    /// 404: no conversation with this id.
    ConversationNotFound,
    /// 404: no turn with this id in the agent's conversations.
    TurnNotFound,
    /// 409: the agent's lock was not free within the wait.
    LockTimeout,
    /// 409: the execution was cancelled.
    ExecutionCancelled,
    /// 409: the request conflicts with the agent's state (busy, lease lost): retry.
    Conflict,
    /// 413: the body or the prompt is larger than the configured limit.
    PayloadTooLarge,
    /// 502: the CLI failed (exit code, crash, parse failure; `details.classification` says which).
    CliFailed,
    /// 503: the provider rate-limited the CLI; see `Retry-After`.
    RateLimited,
    /// 503: the agent's or its CLI type's circuit breaker is open.
    CircuitOpen,
    /// 503: no mode can run the agent (tmux needed but missing).
    NoExecutionMode,
    /// 503: the store cannot be reached; see `Retry-After`.
    StoreUnavailable,
    /// 503: the broker is shutting down.
    ShuttingDown,
    /// 504: the execution timed out.
    ExecutionTimeout,
    /// 503: the agent's home broker is gone and the agent cannot run here (its `cwd` does not
    /// exist on this broker and it is not portable); see `Retry-After`.
    AgentHomeUnavailable,
    /// 409: the agent moved to another broker while the request waited; retry.
    AgentMoved,
    /// 500: the store answered but the operation failed.
    StoreError,
    /// 500: a bug in the broker.
    Internal,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::ForbiddenHost,
        ErrorCode::ForbiddenOrigin,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::AgentNotFound,
        ErrorCode::ConversationNotFound,
        ErrorCode::TurnNotFound,
        ErrorCode::LockTimeout,
        ErrorCode::ExecutionCancelled,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::CliFailed,
        ErrorCode::RateLimited,
        ErrorCode::CircuitOpen,
        ErrorCode::NoExecutionMode,
        ErrorCode::StoreUnavailable,
        ErrorCode::ShuttingDown,
        ErrorCode::ExecutionTimeout,
        ErrorCode::AgentHomeUnavailable,
        ErrorCode::AgentMoved,
        ErrorCode::StoreError,
        ErrorCode::Internal,
    ];

    /// The code as it appears on the wire (`LOCK_TIMEOUT`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::AgentHomeUnavailable => "AGENT_HOME_UNAVAILABLE",
            ErrorCode::AgentMoved => "AGENT_MOVED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::ForbiddenHost => "FORBIDDEN_HOST",
            ErrorCode::ForbiddenOrigin => "FORBIDDEN_ORIGIN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorCode::AgentNotFound => "AGENT_NOT_FOUND",
            ErrorCode::ConversationNotFound => "CONVERSATION_NOT_FOUND",
            ErrorCode::TurnNotFound => "TURN_NOT_FOUND",
            ErrorCode::LockTimeout => "LOCK_TIMEOUT",
            ErrorCode::ExecutionCancelled => "EXECUTION_CANCELLED",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::CliFailed => "CLI_FAILED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::CircuitOpen => "CIRCUIT_OPEN",
            ErrorCode::NoExecutionMode => "NO_EXECUTION_MODE",
            ErrorCode::StoreUnavailable => "STORE_UNAVAILABLE",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::ExecutionTimeout => "EXECUTION_TIMEOUT",
            ErrorCode::StoreError => "STORE_ERROR",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// The code for its wire spelling, `None` for a code this version does not know.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error answer, and the data of the stream's `error` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a human.
    pub error: String,
    /// What went wrong, for a program.
    pub code: ErrorCode,
    /// Facts about the failure (`field`, `agentId`, `executionId`, `classification`, ...); an
    /// empty object when there are none.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub details: Value,
}

/// `POST /agents/register`. Strict about unknown fields (a misspelt field silently ignored is
/// worse than a 400), but reads `metadata.commMode`, `metadata.cwd`, `metadata.role` and
/// `metadata.systemPrompt` for the predecessor's clients when the top-level field is absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegisterRequest {
    /// The agent's id.
    #[schema(value_type = kokino_core::AgentId)]
    pub agent_id: String,
    /// The CLI type.
    #[serde(rename = "type")]
    #[schema(value_type = kokino_core::CliType)]
    pub cli_type: String,
    /// `headless` (default), `tmux` or `shadow`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<kokino_core::CommMode>)]
    pub comm_mode: Option<String>,
    /// The working directory the CLI runs in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// The model passed to the CLI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A free-form role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// A system prompt passed to the CLI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// The agent's execution timeout, in milliseconds (1 ms to 7 days).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The memory limit of the agent's process group, in MiB (1 to 1048576).
    #[serde(rename = "maxMemoryMB", skip_serializing_if = "Option::is_none")]
    pub max_memory_mb: Option<u64>,
    /// Extra environment variables for the CLI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<std::collections::BTreeMap<String, String>>,
    /// The CLI's binary, when not the default name on `PATH`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    /// Extra arguments for the CLI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_args: Option<Vec<String>>,
    /// Free-form metadata, stored with the agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, Value>>,
    /// What to do when the provider rate-limits the CLI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<kokino_core::RateLimitPolicy>,
    /// Several brokers: the instance id of the broker that runs the agent (default: its home so
    /// far, else the receiving broker).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    /// Several brokers: whether another broker may take the agent over where its `cwd` does not
    /// exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portable: Option<bool>,
}

/// A conversation with its turns: `GET /agents/{id}/conversation` and
/// `GET /conversations/{conversationId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConversationDetail {
    /// The conversation.
    #[serde(flatten)]
    pub conversation: kokino_core::Conversation,
    /// Its turns, oldest first.
    pub turns: Vec<kokino_core::Turn>,
}

/// `POST /agents/sessions/clear`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionsCleared {
    /// How many sessions were ended.
    pub ended: usize,
}

/// `POST /agents/{id}/circuit/reset` and `POST /api/circuits/cli/{cliType}/reset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitReset {
    /// Always `true`.
    pub reset: bool,
    /// The agent, for an agent's breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The CLI type, for a CLI type's breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cli_type: Option<String>,
    /// The breaker's state before the reset (`closed`, `open`, `half_open`).
    pub previous_state: String,
}

/// `POST /api/fallback/cli/disable`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CliDisabled {
    /// Always `true`.
    pub disabled: bool,
    /// The CLI type now disabled for headless runs.
    pub cli_type: String,
}

/// `POST /api/fallback/cli/enable`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CliEnabled {
    /// Always `true`.
    pub enabled: bool,
    /// The CLI type.
    pub cli_type: String,
    /// Whether it was disabled.
    pub was_disabled: bool,
}

/// `POST /api/fallback/agent/force` and `POST /api/fallback/agent/{id}/force`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentForced {
    /// Always `true`.
    pub forced: bool,
    /// The agent now forced to tmux.
    pub agent_id: String,
}

/// `POST /api/fallback/agent/clear` and `DELETE /api/fallback/agent/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentFallbackCleared {
    /// Whether the agent had an override.
    pub cleared: bool,
    /// The agent.
    pub agent_id: String,
}

/// `POST /api/fallback/clear-all`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FallbacksCleared {
    /// How many overrides were removed.
    pub cleared: usize,
}

/// `POST /api/shadow-mode/disable-all`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShadowDisabled {
    /// How many agents left shadow mode.
    pub changed: usize,
}

/// `POST /api/metrics/cleanup`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventsDeleted {
    /// How many events were deleted.
    pub deleted: u64,
    /// The retention applied, in days.
    pub retention_days: u32,
}

/// The events of `POST /agents/{id}/execute/stream`, one per Server-Sent Event; the SSE event
/// name is the variant's `event` tag and its data the remaining fields, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
// One `result` per stream: boxing it would cost every reader a deref for nothing.
#[allow(clippy::large_enum_variant)]
pub enum StreamEvent {
    /// Waiting for the agent's lock behind `position` others.
    Queued {
        /// Runs ahead of this one.
        position: usize,
    },
    /// The CLI process started.
    #[serde(rename_all = "camelCase")]
    Started {
        /// Its process id.
        pid: i32,
        /// The mode it runs in.
        mode: kokino_core::CommMode,
        /// The CLI session it resumes, if any.
        session_id: Option<String>,
    },
    /// Text of the answer.
    Assistant {
        /// The text.
        text: String,
        /// Whether it is a fragment of a longer message.
        partial: bool,
    },
    /// The CLI called a tool.
    Tool {
        /// The tool.
        name: String,
        /// A summary of its input.
        input: String,
    },
    /// A tool answered.
    #[serde(rename_all = "camelCase")]
    ToolResult {
        /// Whether the tool failed.
        is_error: bool,
        /// A summary of its output.
        summary: String,
    },
    /// The CLI retries a provider call.
    Retry {
        /// The attempt number.
        attempt: u32,
        /// Why.
        error: String,
    },
    /// The execution succeeded; the last event.
    Result(ExecuteResponse),
    /// The execution failed; the last event.
    Error(ErrorBody),
}

impl StreamEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            StreamEvent::Queued { .. } => "queued",
            StreamEvent::Started { .. } => "started",
            StreamEvent::Assistant { .. } => "assistant",
            StreamEvent::Tool { .. } => "tool",
            StreamEvent::ToolResult { .. } => "tool_result",
            StreamEvent::Retry { .. } => "retry",
            StreamEvent::Result(_) => "result",
            StreamEvent::Error(_) => "error",
        }
    }

    /// Reads one SSE event from its name and JSON data; `None` for an event this version does
    /// not know (a newer broker may add some) or data of the wrong shape.
    pub fn from_sse(name: &str, data: &str) -> Option<StreamEvent> {
        let mut value: Value = serde_json::from_str(data).ok()?;
        let obj = value.as_object_mut()?;
        obj.insert("event".to_owned(), Value::String(name.to_owned()));
        serde_json::from_value(value).ok()
    }

    /// Whether this is the last event of a stream.
    pub fn is_final(&self) -> bool {
        matches!(self, StreamEvent::Result(_) | StreamEvent::Error(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_wire_spelling() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, code.as_str());
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("NOPE"), None);
    }

    #[test]
    fn stream_events_read_from_their_sse_name_and_data() {
        let e = StreamEvent::from_sse("tool_result", r#"{"isError":true,"summary":"x"}"#);
        assert_eq!(
            e,
            Some(StreamEvent::ToolResult {
                is_error: true,
                summary: "x".into()
            })
        );
        let err = StreamEvent::from_sse(
            "error",
            r#"{"error":"busy","code":"LOCK_TIMEOUT","details":{}}"#,
        )
        .unwrap();
        assert!(err.is_final());
        assert_eq!(err.name(), "error");
        assert_eq!(StreamEvent::from_sse("future", "{}"), None);
    }
}
