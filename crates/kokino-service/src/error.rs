use std::time::Duration;

use kokino_core::{CoreError, OutcomeClass};
use kokino_store::StoreError;
use thiserror::Error;

/// Every way a service call can fail. The HTTP layer maps each variant to one status and code;
/// the message is what the operator reads.
#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("{message}")]
    BadRequest {
        field: Option<&'static str>,
        message: String,
    },
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("agent {0} is not registered")]
    AgentNotFound(String),
    #[error("conversation {0} not found")]
    ConversationNotFound(String),
    #[error("turn {0} not found")]
    TurnNotFound(String),
    #[error("timed out after {waited_ms} ms waiting for agent {agent_id}'s lock (another execution is running)")]
    LockTimeout { agent_id: String, waited_ms: u64 },
    #[error("execution of agent {agent_id} was cancelled")]
    Cancelled {
        agent_id: String,
        execution_id: String,
    },
    #[error(
        "execution of agent {agent_id} exceeded its timeout of {timeout_ms} ms and was stopped"
    )]
    Timeout {
        agent_id: String,
        execution_id: String,
        timeout_ms: u64,
    },
    #[error("{message}")]
    CliFailed {
        agent_id: String,
        execution_id: String,
        class: OutcomeClass,
        exit_code: Option<i32>,
        signal: Option<i32>,
        stderr_tail: String,
        message: String,
        /// Seconds until a rejected quota resets, when the CLI said (rate-limited runs).
        retry_after_secs: Option<u64>,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    CircuitOpen {
        message: String,
        scope: String,
        state: String,
        retry_after: Option<Duration>,
    },
    #[error(
        "agent {agent_id} is rate limited by its CLI's provider until {until}; retry after that"
    )]
    RateLimited {
        agent_id: String,
        until: chrono::DateTime<chrono::Utc>,
        retry_after: Duration,
    },
    #[error("{message}")]
    NoExecutionMode {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("the store is unavailable: {0}")]
    StoreUnavailable(#[from] StoreError),
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// A failure of the broker itself (not of the request, the CLI or the store).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<CoreError> for ServiceError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::LockTimeout {
                agent_id,
                waited_ms,
            } => ServiceError::LockTimeout {
                agent_id,
                waited_ms,
            },
            CoreError::InvalidAgentId(_) => ServiceError::BadRequest {
                field: Some("agentId"),
                message: e.to_string(),
            },
            CoreError::UnknownCliType(_) => ServiceError::BadRequest {
                field: Some("type"),
                message: e.to_string(),
            },
            CoreError::UnknownCommMode(_) => ServiceError::BadRequest {
                field: Some("commMode"),
                message: e.to_string(),
            },
            CoreError::UnknownOutcome(_) | CoreError::InvalidAllowlistEntry(_) => {
                ServiceError::BadRequest {
                    field: None,
                    message: e.to_string(),
                }
            }
            CoreError::BinaryNotAllowed(_) => ServiceError::BadRequest {
                field: Some("binary"),
                message: e.to_string(),
            },
            CoreError::EnvNotAllowed { .. } => ServiceError::BadRequest {
                field: Some("env"),
                message: e.to_string(),
            },
        }
    }
}
