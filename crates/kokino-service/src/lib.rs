//! Kokino's application layer.
//!
//! [`Broker`] is the execution path of behavior.md written once: validate, resolve the mode, wait
//! for the agent's lock, persist the user turn, run the executor, persist the answer and the
//! outcome in one transaction, record events and metrics, release, answer. A transport (the HTTP
//! crate) calls it and knows nothing of processes or SQL; the executor and the store know
//! nothing of each other.
//!
//! `Broker` is a facade: each of its methods is a short call into the module that owns the
//! concern — `execution` (admission, lock, runners, outcome), `sessions`, `conversations`,
//! `agents`, `supervision`, `resilience` (breakers and fallback), [`shadow`], `environment`,
//! [`integrity`], [`slo`], `maintenance`, `recovery`, `health`, `shutdown` — over the shared
//! state in `state`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// `ServiceError::CliFailed` carries the CLI's stderr tail and exit details by value; an error is
// built at most once per request, so its size costs nothing worth an extra allocation.
#![allow(clippy::result_large_err)]

mod agents;
mod broker;
pub mod cluster;
mod config;
mod conversations;
mod environment;
mod error;
mod execution;
mod health;
pub mod homes;
pub mod integrity;
mod maintenance;
mod model;
mod recovery;
mod resilience;
mod sessions;
pub mod shadow;
mod shutdown;
pub mod slo;
mod state;
mod supervision;
pub mod telemetry;

pub use broker::Broker;
pub use config::ServiceConfig;
pub use environment::Freshness;
pub use error::ServiceError;
pub use model::*;

/// Report types the API answers with, re-exported so that the HTTP layer can name them (for its
/// OpenAPI document) without depending on the crates that produce them.
pub use kokino_doctor::{CliReport, EnvironmentReport};
pub use kokino_logs::LogStatus;
