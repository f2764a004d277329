//! Kokino's HTTP API (spec/http-api.md): the only crate that knows HTTP.
//!
//! Handlers are thin: parse and validate the request into service types, call the
//! [`kokino_service::Broker`], and turn the answer or the [`ApiError`] into JSON. Every error
//! has the same shape — `{"error": "...", "code": "UPPER_SNAKE", "details": {...}}` — and no
//! client mistake ever becomes a 500.

#![forbid(unsafe_code)]

mod error;
mod extract;
mod middleware;
mod routes;
mod sse;

use std::sync::Arc;

pub use error::ApiError;
pub use routes::{agent_spec_from_json, router};

/// Renders the Prometheus exposition text. The binary installs the recorder and passes its
/// render function here, so this crate does not own global metric state.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub broker: kokino_service::Broker,
    pub metrics: MetricsRender,
    /// Bearer token required on non-GET endpoints (and on `/agents/*/logs`) when set.
    pub token: Option<Arc<str>>,
    pub body_limit: usize,
}
