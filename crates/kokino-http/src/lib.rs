//! Kokino's HTTP API (spec/http-api.md): the only crate that knows HTTP.
//!
//! Handlers are thin: parse and validate the request into service types, call the
//! [`kokino_service::Broker`], and turn the answer or the [`ApiError`] into JSON. Every error
//! has the same shape — `{"error": "...", "code": "UPPER_SNAKE", "details": {...}}` — and no
//! client mistake ever becomes a 500.

#![forbid(unsafe_code)]

mod access;
mod error;
mod extract;
mod forward;
mod middleware;
pub mod openapi;
mod routes;
mod serve;
mod sse;
mod status;

use std::sync::Arc;

pub use access::AccessPolicy;
pub use error::ApiError;
pub use forward::FORWARDED_BY;
pub use middleware::catch_panics;
pub use routes::{agent_spec_from_json, router};
pub use serve::{serve, ServeConfig};

/// Renders the Prometheus exposition text. The binary installs the recorder and passes its
/// render function here, so this crate does not own global metric state.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub broker: kokino_service::Broker,
    pub metrics: MetricsRender,
    /// Bearer token required on every endpoint but `/health` (and `/metrics` when
    /// `public_metrics`) when set.
    pub token: Option<Arc<str>>,
    /// Whether `/metrics` stays readable without the token (for a Prometheus without it).
    pub public_metrics: bool,
    /// Which `Host` and `Origin` headers are accepted (cross-site and DNS-rebinding defence).
    pub access: Arc<AccessPolicy>,
    pub body_limit: usize,
}
