use thiserror::Error;

/// What can go wrong before any check runs. The checks themselves never return errors: a
/// failure is a verdict in the report, with a message for the operator.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DoctorError {
    #[error("invalid doctor setting {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("unknown CLI type {0:?} (expected claude-code, codex, gemini, factory-droid or all)")]
    UnknownCliType(String),
}
