//! Kokino's core domain.
//!
//! Everything here is pure: validated identifiers, the closed sets the HTTP API accepts (CLI
//! types, communication modes), the outcome classes every other part reads, the records the store
//! keeps, and the per-agent FIFO lock. No file, process, socket or database is touched from this
//! crate, which is what lets the other crates depend on it freely (see `ARCHITECTURE.md`).

#![forbid(unsafe_code)]

pub mod breaker;
pub mod clock;
mod error;
pub mod exec_policy;
pub mod fallback;
mod ids;
pub mod lock;
mod outcome;
mod records;

/// Which output stream of a CLI a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// Receives every line a CLI prints, as it prints it (the per-agent log). Defined here so the
/// executor can feed it without knowing where the lines go.
pub trait LineSink: Send {
    fn line(&mut self, stream: OutputStream, line: &str);
}

pub use error::CoreError;
pub use ids::{AgentId, CliType, CommMode};
pub use outcome::{OutcomeClass, Usage};
pub use records::{
    AgentRecord, AgentSpec, Conversation, ExecutionRecord, ExecutionState, NewExecution,
    RateLimitPolicy, Role, SessionRecord, Turn,
};
