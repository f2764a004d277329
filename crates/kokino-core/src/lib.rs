//! Kokino's core domain.
//!
//! Everything here is pure: validated identifiers, the closed sets the HTTP API accepts (CLI
//! types, communication modes), the outcome classes every other part reads, the records the store
//! keeps, and the per-agent FIFO lock. No file, process, socket or database is touched from this
//! crate, which is what lets the other crates depend on it freely (see `ARCHITECTURE.md`).

mod error;
mod ids;
pub mod lock;
mod outcome;
mod records;

pub use error::CoreError;
pub use ids::{AgentId, CliType, CommMode};
pub use outcome::{OutcomeClass, Usage};
pub use records::{
    AgentRecord, AgentSpec, Conversation, ExecutionRecord, ExecutionState, NewExecution, Role,
    SessionRecord, Turn,
};
