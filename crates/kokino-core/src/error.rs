use thiserror::Error;

/// Errors raised by the domain itself: always about input the caller gave us.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    #[error("invalid agent id {0:?}: it must match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}$")]
    InvalidAgentId(String),
    #[error("unknown CLI type {0:?}: expected one of claude-code, codex, gemini, factory-droid")]
    UnknownCliType(String),
    #[error("unknown commMode {0:?}: expected one of headless, tmux, shadow")]
    UnknownCommMode(String),
    #[error("unknown outcome class {0:?}")]
    UnknownOutcome(String),
    #[error("timed out after {waited_ms} ms waiting for the lock of agent {agent_id}")]
    LockTimeout { agent_id: String, waited_ms: u64 },
    #[error(
        "binary {0:?} is not allowed: only the CLI type's own binary (its configured name, or that \
         name found on the broker's PATH) and what the operator lists in `allowed_binaries` \
         (--allow-binary) may run"
    )]
    BinaryNotAllowed(String),
    #[error("env variable {name:?} may not be set by an agent: it {reason}")]
    EnvNotAllowed { name: String, reason: String },
    #[error("allowed binary {0:?} must be an absolute path without `..`")]
    InvalidAllowlistEntry(String),
}
