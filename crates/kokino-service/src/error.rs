//! What can go wrong in a service call, in the broker's own terms. How a transport presents it
//! (the HTTP status and `code`) is decided by the transport: `kokino-http` maps every variant.

use std::time::Duration;

use kokino_core::{CoreError, OutcomeClass};
use kokino_store::StoreError;
use thiserror::Error;

/// Every way a service call can fail. The message is what the operator reads; the fields are
/// what a client needs to act (retry later, fix a field, look at the CLI's stderr).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The request is malformed or names an invalid value.
    #[error("{message}")]
    InvalidInput {
        /// The request field at fault, in the API's camelCase, when one is.
        field: Option<&'static str>,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The prompt is larger than the broker accepts (`max_prompt_bytes`).
    #[error("prompt is {bytes} bytes; the limit is {limit} bytes")]
    PromptTooLarge {
        /// The prompt's size in bytes.
        bytes: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// No agent is registered under this id.
    #[error("agent {0} is not registered")]
    AgentNotFound(String),
    /// No such conversation (or not the agent's).
    #[error("conversation {0} not found")]
    ConversationNotFound(String),
    /// No such turn in the agent's conversations.
    #[error("turn {0} not found")]
    TurnNotFound(String),
    /// The agent's lock was not free within the wait the request allowed.
    #[error("timed out after {waited_ms} ms waiting for agent {agent_id}'s lock (another execution is running)")]
    LockTimeout {
        /// The agent waited for.
        agent_id: String,
        /// How long the request waited, in milliseconds.
        waited_ms: u64,
    },
    /// The execution was cancelled (cancel, end-session, delete or shutdown).
    #[error("execution of agent {agent_id} was cancelled")]
    Cancelled {
        /// The agent whose execution was cancelled.
        agent_id: String,
        /// The cancelled execution.
        execution_id: String,
    },
    /// The execution or inactivity timeout stopped the run.
    #[error(
        "execution of agent {agent_id} exceeded its timeout of {timeout_ms} ms and was stopped"
    )]
    Timeout {
        /// The agent whose execution timed out.
        agent_id: String,
        /// The stopped execution.
        execution_id: String,
        /// The timeout that fired, in milliseconds.
        timeout_ms: u64,
    },
    /// The CLI ran (or could not be started) and failed.
    #[error("{message}")]
    CliFailed {
        /// The agent whose CLI failed.
        agent_id: String,
        /// The failed execution.
        execution_id: String,
        /// The outcome class (`cli_error`, `auth_error`, `spawn_error`, `rate_limited`...).
        class: OutcomeClass,
        /// The CLI's exit code, when it exited.
        exit_code: Option<i32>,
        /// The signal that ended the CLI, when one did.
        signal: Option<i32>,
        /// The last lines of the CLI's stderr.
        stderr_tail: String,
        /// What went wrong, for the operator.
        message: String,
        /// Seconds until a rejected quota resets, when the CLI said (rate-limited runs).
        retry_after_secs: Option<u64>,
    },
    /// The request cannot be carried out in the current state (for example deleting a
    /// conversation while it runs, or forcing tmux on a host without tmux).
    #[error("{0}")]
    InvalidState(String),
    /// A write of a running execution was refused because this broker no longer holds the
    /// agent's lease (several brokers): nothing was stored and the request can be retried.
    #[error("{source}; this broker lost the agent while it ran, the result was not stored; retry the request")]
    LeaseLost {
        /// The store's refusal of the fenced write.
        source: StoreError,
    },
    /// A circuit breaker (the agent's or its CLI type's) refuses executions for now.
    #[error("{message}")]
    CircuitOpen {
        /// What is open and how to reset it.
        message: String,
        /// `agent` or `cli`.
        scope: String,
        /// The breaker's state (`open`, `half_open`).
        state: String,
        /// Time until the breaker's next probe, when known.
        retry_after: Option<Duration>,
    },
    /// The agent is parked until its provider's quota resets.
    #[error(
        "agent {agent_id} is rate limited by its CLI's provider until {until}; retry after that"
    )]
    RateLimited {
        /// The parked agent.
        agent_id: String,
        /// When the quota resets.
        until: chrono::DateTime<chrono::Utc>,
        /// Time until `until`.
        retry_after: Duration,
    },
    /// No mode can run the agent (its effective mode needs tmux and tmux is missing).
    #[error("{message}")]
    NoExecutionMode {
        /// Why, and what to do about it.
        message: String,
        /// When trying again may help, if known.
        retry_after: Option<Duration>,
    },
    /// Several machines: the agent's home broker is gone (its liveness expired) and this broker
    /// may not take the agent over, because the agent's `cwd` does not exist here and the agent
    /// is not declared portable. Trying again once the home is back may succeed.
    #[error(
        "agent {agent_id} lives on broker {home}, which is unavailable, and cannot run here: \
         {reason}; retry when {home} is back, or move the agent to a broker that has its files"
    )]
    AgentHomeUnavailable {
        /// The agent.
        agent_id: String,
        /// The home broker's instance id.
        home: String,
        /// The home broker's advertised address, when known.
        url: Option<String>,
        /// Why this broker cannot take the agent over.
        reason: String,
        /// When the home may be back (its liveness ttl).
        retry_after: Duration,
    },
    /// Several machines: this broker is no longer the agent's home (it moved, or another broker
    /// took it over while this one was gone). Nothing ran; the request can be sent again to any
    /// broker, which forwards it to the home.
    #[error(
        "agent {agent_id} now lives on broker {home}, not on this one; nothing ran, retry the \
         request"
    )]
    AgentMoved {
        /// The agent.
        agent_id: String,
        /// Its current home.
        home: String,
    },
    /// The store cannot be reached (connection refused or lost, pool exhausted, database busy).
    /// Trying again later may succeed.
    #[error("the store is unavailable: {0}")]
    StoreUnavailable(StoreError),
    /// The store answered but the operation failed (a corrupt row, a missing row, a violated
    /// constraint): a fault of the data or the broker, which retrying will not fix.
    #[error("the store failed: {0}")]
    Store(StoreError),
    /// The broker is shutting down and accepts no new executions.
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// A failure of the broker itself (not of the request, the CLI or the store).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// A shorthand for [`ServiceError::InvalidInput`].
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        ServiceError::InvalidInput {
            field: Some(field),
            message: message.into(),
        }
    }
}

/// The one place where a store failure is classified: a stale lease means this broker lost
/// the agent, an outage is worth retrying, anything else is a fault that retrying will not fix.
impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::StaleLease { .. } => ServiceError::LeaseLost { source: e },
            e if store_is_unavailable(&e) => ServiceError::StoreUnavailable(e),
            e => ServiceError::Store(e),
        }
    }
}

/// Whether a store error means "the database cannot be reached or cannot serve right now"
/// (a retryable 503), as the store itself classifies its driver's failures; everything else (a
/// corrupt or missing row, a violated constraint, a failed migration) is a fault that retrying
/// will not fix.
fn store_is_unavailable(e: &StoreError) -> bool {
    e.is_unavailable()
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
            CoreError::InvalidAgentId(_) => ServiceError::invalid("agentId", e.to_string()),
            CoreError::UnknownCliType(_) => ServiceError::invalid("type", e.to_string()),
            CoreError::UnknownCommMode(_) => ServiceError::invalid("commMode", e.to_string()),
            CoreError::BinaryNotAllowed(_) => ServiceError::invalid("binary", e.to_string()),
            CoreError::EnvNotAllowed { .. } => ServiceError::invalid("env", e.to_string()),
            CoreError::UnknownOutcome(_) | CoreError::InvalidAllowlistEntry(_) => {
                ServiceError::InvalidInput {
                    field: None,
                    message: e.to_string(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_outage_is_reported_as_store_unavailable() {
        let unavailable = ServiceError::from(StoreError::Unavailable("refused".into()));
        assert!(matches!(unavailable, ServiceError::StoreUnavailable(_)));
        let corrupt = ServiceError::from(StoreError::Corrupt {
            table: "turns",
            message: "bad role".into(),
        });
        assert!(matches!(corrupt, ServiceError::Store(_)));
        let unsupported = ServiceError::from(StoreError::Unsupported("no leases".into()));
        assert!(matches!(unsupported, ServiceError::Store(_)));
        let gone = ServiceError::from(StoreError::ExecutionNotFound("e1".into()));
        assert!(matches!(gone, ServiceError::Store(_)));
    }

    #[test]
    fn a_stale_lease_is_a_lost_lease_with_the_retry_hint() {
        let e = ServiceError::from(StoreError::StaleLease {
            agent_id: "a".into(),
            token: 3,
        });
        assert!(matches!(e, ServiceError::LeaseLost { .. }));
        assert!(e.to_string().ends_with(
            "this broker lost the agent while it ran, the result was not stored; retry the request"
        ));
    }
}
