//! Request extractors with errors that name the problem.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use kokino_core::AgentId;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// A JSON body. Oversize → 413, malformed → 400 with the position, wrong type or unknown field
/// → 400 naming the field (via `serde_path_to_error`). An empty body counts as `{}` so that
/// bodiless POSTs to endpoints with only optional fields work.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PAYLOAD_TOO_LARGE",
                    "request body is larger than the configured limit",
                )
            } else {
                ApiError::bad_request(None, format!("cannot read the request body: {rejection}"))
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(None, format!("malformed JSON body: {inner}"))
        } else if path == "." || path.is_empty() {
            ApiError::bad_request(None, format!("invalid request body: {inner}"))
        } else {
            ApiError::bad_request(Some(&path), format!("invalid field `{path}`: {inner}"))
        }
    })
}

/// The `{id}` path segment, validated before anything touches a process, file or tmux name.
pub struct AgentPath(pub AgentId);

impl<S: Send + Sync> FromRequestParts<S> for AgentPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(params) =
            axum::extract::Path::<Vec<(String, String)>>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::bad_request(None, format!("invalid path: {e}")))?;
        let raw = params
            .iter()
            .find(|(k, _)| k == "id" || k == "agentId")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        AgentId::parse(raw)
            .map(AgentPath)
            .map_err(|e| ApiError::bad_request(Some("agentId"), e.to_string()))
    }
}
