//! A typed async client for the Kokino broker's HTTP API.
//!
//! The request and response bodies are the server's own types (`kokino-api`), so a field the
//! broker adds or renames is a compile error here rather than a silent `null`. Errors are typed
//! by the API's closed set of codes ([`ErrorCode`]); the bearer token and a request id are sent
//! on every request when set; an execution can be followed live as Server-Sent Events
//! ([`Client::execute_stream`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), kokino_client::Error> {
//! use kokino_client::{Client, ExecuteRequest};
//! let client = Client::new("http://127.0.0.1:8787")?.with_token("secret");
//! let answer = client
//!     .execute("reviewer", &ExecuteRequest { prompt: "hello".into(), ..Default::default() })
//!     .await?;
//! println!("{}", answer.content);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod sse;

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub use kokino_api::*;
pub use kokino_core::{AgentRecord, CliType, CommMode, Conversation, Turn};
pub use sse::{ExecuteOutcome, ExecutionStream};

/// What can go wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker answered with an error body.
    #[error("HTTP {status}: {} ({})", body.error, body.code)]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error body, with its code.
        body: ErrorBody,
        /// The `Retry-After` header, when the broker sent one.
        retry_after: Option<Duration>,
    },
    /// The broker answered with a status and a body that is not an error body of this API
    /// (a proxy in between, or a server that is not a Kokino broker).
    #[error("HTTP {status}: unexpected answer: {snippet}")]
    Unexpected {
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        snippet: String,
    },
    /// The broker could not be reached, or the connection failed.
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// A success answer did not have the documented shape.
    #[error("the answer to {path} does not have the documented shape: {message}")]
    Decode {
        /// The request path.
        path: String,
        /// What serde said.
        message: String,
    },
    /// The base URL is not an `http://` or `https://` URL.
    #[error("invalid broker URL {0:?}")]
    InvalidUrl(String),
}

impl Error {
    /// The API error code, for an error the broker answered.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { body, .. } => Some(body.code),
            _ => None,
        }
    }

    /// The HTTP status, when the broker answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Unexpected { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client for one broker. Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    request_id: Option<String>,
}

impl Client {
    /// A client for the broker at `base_url` (`http://127.0.0.1:8787`), with a 5 s connect
    /// timeout and no overall timeout (an execution takes as long as it takes).
    pub fn new(base_url: &str) -> Result<Client, Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Client::with_http(base_url, http)
    }

    /// A client using a configured `reqwest::Client` (timeouts, proxies).
    pub fn with_http(base_url: &str, http: reqwest::Client) -> Result<Client, Error> {
        let base = base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::InvalidUrl(base_url.to_owned()));
        }
        Ok(Client {
            http,
            base: base.to_owned(),
            token: None,
            request_id: None,
        })
    }

    /// Sends `Authorization: Bearer <token>` on every request.
    pub fn with_token(mut self, token: impl Into<String>) -> Client {
        self.token = Some(token.into());
        self
    }

    /// Sends `X-Request-Id: <id>` on every request, so the broker's logs and events of this
    /// client's calls carry the caller's id.
    pub fn with_request_id(mut self, id: impl Into<String>) -> Client {
        self.request_id = Some(id.into());
        self
    }

    /// The broker's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(id) = &self.request_id {
            req = req.header("x-request-id", id);
        }
        req
    }

    /// Sends a request and returns the status and body of any answer that is not an error
    /// status, or the typed error.
    async fn send(&self, req: RequestBuilder) -> Result<(StatusCode, bytes::Bytes), Error> {
        let resp = req.send().await?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp.bytes().await?;
        if status.is_success() {
            return Ok((status, body));
        }
        Err(error_from(status, &body, retry_after))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, Error> {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        let (_, bytes) = self.send(req).await?;
        decode(path, &bytes)
    }

    /// GETs `path` and reads the body as `T` for a success status or one of `also_ok` (the
    /// health, environment and integrity endpoints answer 503 with a report to read).
    pub async fn get_with<T: DeserializeOwned>(
        &self,
        path: &str,
        also_ok: &[u16],
    ) -> Result<(u16, T), Error> {
        let resp = self.request(Method::GET, path).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if status.is_success() || also_ok.contains(&status.as_u16()) {
            // An error body on an "also ok" status is still an error (a 503 STORE_UNAVAILABLE
            // instead of a report).
            if let Ok(err) = serde_json::from_slice::<ErrorBody>(&body) {
                if !status.is_success() {
                    return Err(Error::Api {
                        status: status.as_u16(),
                        body: err,
                        retry_after: None,
                    });
                }
            }
            return Ok((status.as_u16(), decode(path, &body)?));
        }
        Err(error_from(status, &body, None))
    }

    /// `GET /health`; a degraded broker (503) is an answer, not an error.
    pub async fn health(&self) -> Result<Health, Error> {
        Ok(self.get_with("/health", &[503]).await?.1)
    }

    /// `POST /agents/register`.
    pub async fn register(&self, req: &RegisterRequest) -> Result<AgentRecord, Error> {
        self.call(Method::POST, "/agents/register", Some(req)).await
    }

    /// `GET /agents`.
    pub async fn agents(&self) -> Result<Vec<AgentRecord>, Error> {
        self.call(Method::GET, "/agents", None::<&()>).await
    }

    /// `GET /agents/{id}`.
    pub async fn agent(&self, id: &str) -> Result<AgentView, Error> {
        self.call(Method::GET, &format!("/agents/{id}"), None::<&()>)
            .await
    }

    /// `DELETE /agents/{id}` (`purge` also deletes its conversations).
    pub async fn delete_agent(&self, id: &str, purge: bool) -> Result<(), Error> {
        let req = self.request(Method::DELETE, &format!("/agents/{id}?purge={purge}"));
        self.send(req).await.map(|_| ())
    }

    /// `POST /agents/{id}/execute`: runs a prompt and waits for the answer.
    pub async fn execute(&self, id: &str, req: &ExecuteRequest) -> Result<ExecuteResponse, Error> {
        self.call(Method::POST, &format!("/agents/{id}/execute"), Some(req))
            .await
    }

    /// `POST /agents/{id}/execute/stream`: runs a prompt and follows it event by event.
    pub async fn execute_stream(
        &self,
        id: &str,
        req: &ExecuteRequest,
    ) -> Result<ExecutionStream, Error> {
        let resp = self
            .request(Method::POST, &format!("/agents/{id}/execute/stream"))
            .json(req)
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await?;
            return Err(error_from(status, &body, None));
        }
        Ok(ExecutionStream::new(resp))
    }

    /// `POST /agents/{id}/execute/cancel`.
    pub async fn cancel(&self, id: &str) -> Result<CancelResult, Error> {
        self.call(
            Method::POST,
            &format!("/agents/{id}/execute/cancel"),
            None::<&()>,
        )
        .await
    }

    /// `POST /agents/{id}/end-session`.
    pub async fn end_session(&self, id: &str) -> Result<EndSessionResult, Error> {
        self.call(
            Method::POST,
            &format!("/agents/{id}/end-session"),
            None::<&()>,
        )
        .await
    }

    /// `GET /agents/sessions/status`.
    pub async fn sessions_status(&self) -> Result<Vec<SessionStatus>, Error> {
        self.call(Method::GET, "/agents/sessions/status", None::<&()>)
            .await
    }

    /// `GET /agents/processes/status`.
    pub async fn processes_status(&self) -> Result<Vec<ProcessStatus>, Error> {
        self.call(Method::GET, "/agents/processes/status", None::<&()>)
            .await
    }

    /// `GET /agents/{id}/conversation`: the current conversation with its turns.
    pub async fn conversation(&self, id: &str) -> Result<ConversationDetail, Error> {
        self.call(
            Method::GET,
            &format!("/agents/{id}/conversation"),
            None::<&()>,
        )
        .await
    }

    /// `GET /agents/{id}/conversations`.
    pub async fn conversations(&self, id: &str) -> Result<Vec<Conversation>, Error> {
        self.call(
            Method::GET,
            &format!("/agents/{id}/conversations"),
            None::<&()>,
        )
        .await
    }

    /// `POST /agents/{id}/circuit/reset`.
    pub async fn reset_agent_circuit(&self, id: &str) -> Result<CircuitReset, Error> {
        self.call(
            Method::POST,
            &format!("/agents/{id}/circuit/reset"),
            None::<&()>,
        )
        .await
    }

    /// `POST /api/metrics/cleanup?days=N`.
    pub async fn cleanup_events(&self, days: u32) -> Result<EventsDeleted, Error> {
        self.call(
            Method::POST,
            &format!("/api/metrics/cleanup?days={days}"),
            None::<&()>,
        )
        .await
    }

    /// Any GET answered with JSON, for the endpoints without a typed method here; the answer is
    /// the status (a success, or one of `also_ok`) and the body.
    pub async fn get_json(&self, path: &str, also_ok: &[u16]) -> Result<(u16, Value), Error> {
        self.get_with(path, also_ok).await
    }
}

fn decode<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T, Error> {
    // A bodiless success (204) reads as `null`, which `()` and `Option` accept.
    let bytes: &[u8] = if bytes.is_empty() { b"null" } else { bytes };
    serde_json::from_slice(bytes).map_err(|e| Error::Decode {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn error_from(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(body) => Error::Api {
            status: status.as_u16(),
            body,
            retry_after,
        },
        Err(_) => Error::Unexpected {
            status: status.as_u16(),
            snippet: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        },
    }
}
