use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kokino_core::OutcomeClass;
use kokino_service::ServiceError;
use serde_json::{json, Value};

/// An error as the client sees it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: json!({}),
            retry_after: None,
        }
    }

    pub fn bad_request(field: Option<&str>, message: impl Into<String>) -> Self {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message);
        if let Some(f) = field {
            e.details = json!({ "field": f });
        }
        e
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// The JSON body, shared by plain responses and the SSE `error` event.
    pub fn body(&self) -> Value {
        json!({"error": self.message, "code": self.code, "details": self.details})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let message = e.to_string();
        match e {
            ServiceError::InvalidInput { field, .. } => ApiError::bad_request(field, message),
            ServiceError::PromptTooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", message)
            }
            ServiceError::AgentNotFound(id) => {
                ApiError::new(StatusCode::NOT_FOUND, "AGENT_NOT_FOUND", message)
                    .with_details(json!({"agentId": id}))
            }
            ServiceError::ConversationNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "CONVERSATION_NOT_FOUND", message)
            }
            ServiceError::TurnNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "TURN_NOT_FOUND", message)
            }
            ServiceError::LockTimeout {
                agent_id,
                waited_ms,
            } => ApiError::new(StatusCode::CONFLICT, "LOCK_TIMEOUT", message)
                .with_details(json!({"agentId": agent_id, "waitedMs": waited_ms})),
            ServiceError::Cancelled {
                agent_id,
                execution_id,
            } => ApiError::new(StatusCode::CONFLICT, "EXECUTION_CANCELLED", message)
                .with_details(json!({"agentId": agent_id, "executionId": execution_id})),
            ServiceError::Timeout {
                agent_id,
                execution_id,
                timeout_ms,
            } => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "EXECUTION_TIMEOUT", message)
                .with_details(json!({
                    "agentId": agent_id, "executionId": execution_id, "timeoutMs": timeout_ms,
                    "classification": "timeout",
                })),
            ServiceError::CliFailed {
                agent_id,
                execution_id,
                class,
                exit_code,
                signal,
                stderr_tail,
                retry_after_secs,
                ..
            } => {
                let details = json!({
                    "agentId": agent_id, "executionId": execution_id,
                    "classification": class.as_str(), "exitCode": exit_code,
                    "signal": signal, "stderrTail": stderr_tail,
                });
                if class == OutcomeClass::RateLimited {
                    let mut e =
                        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "RATE_LIMITED", message)
                            .with_details(details);
                    e.retry_after = Some(Duration::from_secs(retry_after_secs.unwrap_or(60)));
                    e
                } else {
                    ApiError::new(StatusCode::BAD_GATEWAY, "CLI_FAILED", message)
                        .with_details(details)
                }
            }
            ServiceError::NoExecutionMode { retry_after, .. } => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "NO_EXECUTION_MODE",
                    message,
                );
                e.retry_after = retry_after;
                e
            }
            ServiceError::StoreUnavailable(_) => {
                tracing::error!(error = %message, "store error");
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "STORE_UNAVAILABLE",
                    message,
                );
                e.retry_after = Some(Duration::from_secs(5));
                e
            }
            ServiceError::ShuttingDown => {
                let mut e =
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "SHUTTING_DOWN", message);
                e.retry_after = Some(Duration::from_secs(5));
                e
            }
            // Both are refusals the caller can act on (cancel first, retry): 409, one code.
            ServiceError::InvalidState(_) | ServiceError::LeaseLost { .. } => {
                ApiError::new(StatusCode::CONFLICT, "CONFLICT", message)
            }
            // The store answered but the operation failed (corrupt or missing row, violated
            // constraint): not an outage, so no 503 and no Retry-After.
            ServiceError::Store(_) => {
                tracing::error!(error = %message, "store error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "STORE_ERROR", message)
            }
            ServiceError::CircuitOpen {
                scope,
                state,
                retry_after,
                ..
            } => {
                // Where to look and how to reset are the HTTP API's paths, so they are added here.
                let message = format!(
                    "{message} (see GET /agents/circuits/status; POST /agents/{{id}}/circuit/reset resets it)"
                );
                let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "CIRCUIT_OPEN", message)
                    .with_details(json!({"scope": scope, "state": state}));
                e.retry_after = retry_after;
                e
            }
            ServiceError::RateLimited {
                agent_id,
                until,
                retry_after,
            } => {
                let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "RATE_LIMITED", message)
                    .with_details(json!({"agentId": agent_id, "until": until}));
                e.retry_after = Some(retry_after);
                e
            }
            ServiceError::AgentHomeUnavailable {
                agent_id,
                home,
                url,
                retry_after,
                ..
            } => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "AGENT_HOME_UNAVAILABLE",
                    message,
                )
                .with_details(json!({"agentId": agent_id, "home": home, "homeUrl": url}));
                e.retry_after = Some(retry_after);
                e
            }
            ServiceError::AgentMoved { agent_id, home } => {
                ApiError::new(StatusCode::CONFLICT, "AGENT_MOVED", message)
                    .with_details(json!({"agentId": agent_id, "home": home}))
            }
            // `ServiceError::Internal`; and since `ServiceError` is non-exhaustive, any variant
            // added later is a 500 until it is mapped here.
            _ => {
                tracing::error!(error = %message, "internal error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kokino_store::StoreError;

    fn api(e: impl Into<ServiceError>) -> ApiError {
        ApiError::from(e.into())
    }

    #[test]
    fn a_store_outage_is_503_store_unavailable_with_retry_after() {
        let e = api(StoreError::Unavailable("connection refused".into()));
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE")
        );
        assert_eq!(e.retry_after, Some(Duration::from_secs(5)));
    }

    #[test]
    fn a_store_failure_that_is_not_an_outage_is_a_500_without_retry_after() {
        let corrupt = api(StoreError::Corrupt {
            table: "turns",
            message: "unknown role".into(),
        });
        assert_eq!(
            (corrupt.status, corrupt.code),
            (StatusCode::INTERNAL_SERVER_ERROR, "STORE_ERROR")
        );
        assert_eq!(corrupt.retry_after, None);
        let missing = api(StoreError::ExecutionNotFound("e1".into()));
        assert_eq!(missing.code, "STORE_ERROR");
    }

    #[test]
    fn a_lost_lease_is_a_409_conflict_saying_to_retry() {
        let e = api(StoreError::StaleLease {
            agent_id: "a".into(),
            token: 7,
        });
        assert_eq!((e.status, e.code), (StatusCode::CONFLICT, "CONFLICT"));
        assert!(e.message.ends_with("retry the request"), "{}", e.message);
    }

    #[test]
    fn domain_errors_keep_their_codes() {
        let invalid = api(ServiceError::InvalidInput {
            field: Some("prompt"),
            message: "prompt must be a non-empty string".into(),
        });
        assert_eq!(
            (invalid.status, invalid.code),
            (StatusCode::BAD_REQUEST, "BAD_REQUEST")
        );
        assert_eq!(invalid.details["field"], "prompt");
        let large = api(ServiceError::PromptTooLarge {
            bytes: 10,
            limit: 5,
        });
        assert_eq!(
            (large.status, large.code),
            (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
        );
        assert_eq!(large.message, "prompt is 10 bytes; the limit is 5 bytes");
        let state = api(ServiceError::InvalidState("busy".into()));
        assert_eq!(
            (state.status, state.code),
            (StatusCode::CONFLICT, "CONFLICT")
        );
        let open = api(ServiceError::CircuitOpen {
            message:
                "the agent circuit breaker for a is open; requests are refused until it recovers"
                    .into(),
            scope: "agent".into(),
            state: "open".into(),
            retry_after: None,
        });
        assert_eq!(open.code, "CIRCUIT_OPEN");
        assert!(open.message.ends_with(
            "(see GET /agents/circuits/status; POST /agents/{id}/circuit/reset resets it)"
        ));
    }
}
