//! Kokino's application layer.
//!
//! [`Broker`] is the execution path of behavior.md written once: validate, resolve the mode, wait
//! for the agent's lock, persist the user turn, run the executor, persist the answer and the
//! outcome in one transaction, record events and metrics, release, answer. The HTTP crate calls it
//! and knows nothing of processes or SQL; the executor and the store know nothing of each other.

#![forbid(unsafe_code)]
// `ServiceError::CliFailed` carries the CLI's stderr tail and exit details by value; an error is
// built at most once per request, so its size costs nothing worth an extra allocation.
#![allow(clippy::result_large_err)]

mod broker;
pub mod cluster;
mod config;
mod error;
pub mod integrity;
mod model;
mod resilience;
pub mod shadow;
pub mod slo;
pub mod telemetry;

pub use broker::Broker;
pub use config::ServiceConfig;
pub use error::ServiceError;
pub use model::*;
