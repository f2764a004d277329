//! Cross-cutting request handling: bearer-token auth, per-route metrics, and panics.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kokino_service::telemetry;

use crate::{ApiError, AppState};

/// When a token is configured, every endpoint needs it except `/health` (liveness for load
/// balancers and supervisors; it reveals nothing), the status page's static files, and, when the
/// operator says so, `/metrics`.
/// Reads need it too: conversations, turns, event previews, agents' system prompts and logs all
/// hold prompts and answers.
pub async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = state.token.as_deref() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    // The OpenAPI document describes the API and holds no data; a client reads it to learn how
    // to authenticate, so it is public like the health check. The status page's static files
    // hold no data either; the page then asks for the token itself.
    let open = path == "/health"
        || path == "/openapi.json"
        || (path == "/metrics" && state.public_metrics)
        || crate::status::is_public_asset(path);
    if open {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "invalid bearer token",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "this endpoint needs `Authorization: Bearer <token>`",
        )
        .into_response(),
    }
}

/// Compares without an early exit, so response time does not reveal how much of a guess was
/// right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Requests by route template (bounded: never the raw path), method and status, with latency.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(telemetry::HTTP_REQUESTS_TOTAL,
        "route" => route.clone(), "method" => method.clone(), "status" => status)
    .increment(1);
    metrics::histogram!(telemetry::HTTP_REQUEST_DURATION, "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// Turns a panic in a handler (or a middleware inside this layer) into a 500 JSON error and a
/// count in `kokino_http_panics_total`, instead of a connection dropped without an answer. The
/// broker keeps serving: a panic unwinds only the request's own task.
pub fn catch_panics<S>(router: axum::Router<S>) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.layer(tower_http::catch_panic::CatchPanicLayer::custom(
        panic_response,
    ))
}

pub(crate) fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = what, "an HTTP handler panicked");
    metrics::counter!(telemetry::HTTP_PANICS_TOTAL).increment(1);
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL",
        "internal error: the request's handler failed unexpectedly (the broker is still running; \
         its log has the details)",
    )
    .with_details(serde_json::json!({"panic": true}))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compares_tokens() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
