//! Several machines: requests for an agent are served by its home broker.
//!
//! A middleware inside the auth layer asks the service where each agent-scoped request belongs
//! (`Broker::route`) and, when the home is another broker, streams the request there unchanged
//! and its answer back (the SSE stream of `execute/stream` included), authenticated with the
//! cluster's shared token and marked with [`FORWARDED_BY`] so that the home serves it itself.
//! Status endpoints that describe live processes gather every live broker's facts, so they
//! answer the same from every broker.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kokino_service::homes::Route;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::extract::{AgentPath, JsonBody};
use crate::{ApiError, AppState};

/// Marks a request one broker forwarded to another, naming the sender; the receiver serves it
/// itself (no second hop), and status endpoints answer with only their own facts.
pub const FORWARDED_BY: &str = "x-kokino-forwarded-by";

/// How long a peer may take to answer a status question before it is left out.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// How long connecting to a home may take: a home that accepts no connection is unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Headers that belong to one connection and are not forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
];

fn client() -> &'static Client<HttpConnector, Body> {
    static CLIENT: OnceLock<Client<HttpConnector, Body>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new()).build(connector)
    })
}

/// The agent a request is about, and whether it may take the agent over when its home is dead
/// (executions only: the other requests are served here from the database then).
fn agent_of<'a>(method: &Method, path: &'a str) -> Option<(&'a str, bool)> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segs.as_slice()) {
        ("POST", ["agents", id, "execute"]) | ("POST", ["agents", id, "execute", "stream"]) => {
            Some((id, true))
        }
        ("POST", ["agents", id, "execute", "cancel"])
        | ("POST", ["agents", id, "end-session"])
        | ("POST", ["agents", id, "move"])
        | ("GET", ["agents", id, "logs"])
        | ("GET", ["agents", id])
        | ("DELETE", ["agents", id]) => Some((id, false)),
        _ => None,
    }
}

/// The middleware.
pub(crate) async fn forward(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if s.broker.home_instance().is_none() || req.headers().contains_key(FORWARDED_BY) {
        return next.run(req).await;
    }
    let path = req.uri().path().to_owned();
    if req.method() == Method::GET && path == "/agents/processes/status" {
        return gather_processes(&s, next.run(req).await).await;
    }
    if req.method() == Method::GET && path == "/agents/sessions/status" {
        return gather_sessions(&s, next.run(req).await).await;
    }
    let Some((agent, failover)) = agent_of(req.method(), &path) else {
        return next.run(req).await;
    };
    match s.broker.route(agent, failover).await {
        Ok(Route::Local) => next.run(req).await,
        Ok(Route::Remote { instance_id, url }) => proxy(&s, req, &instance_id, &url).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The request as it goes to `url`: same method, path, query, headers and body, with the
/// cluster's token and the forwarding mark.
fn outgoing(s: &AppState, req: Request, url: &str) -> Result<Request, String> {
    let (parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri: Uri = format!("{}{pq}", url.trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("the home's address {url:?} is not a valid URL: {e}"))?;
    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    mark(s, &mut out);
    Ok(out)
}

/// The forwarding mark and the cluster's shared token (brokers authenticate to each other with
/// the token every client uses).
fn mark(s: &AppState, req: &mut Request) {
    let me = s.broker.home_instance().unwrap_or_default();
    if let Ok(v) = HeaderValue::from_str(me) {
        req.headers_mut().insert(FORWARDED_BY, v);
    }
    if let Some(token) = &s.token {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
            req.headers_mut().insert(header::AUTHORIZATION, v);
        }
    }
}

async fn proxy(s: &AppState, req: Request, home: &str, url: &str) -> Response {
    let out = match outgoing(s, req, url) {
        Ok(out) => out,
        Err(message) => {
            return ApiError::new(StatusCode::BAD_GATEWAY, "FORWARD_FAILED", message)
                .into_response()
        }
    };
    match client().request(out).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            for name in HOP_BY_HOP {
                parts.headers.remove(*name);
            }
            Response::from_parts(parts, Body::new(body))
        }
        // Not connected: the home never saw the request, so it certainly did not run.
        Err(e) if e.is_connect() => {
            let mut err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "AGENT_HOME_UNAVAILABLE",
                format!(
                    "the agent's home broker {home} at {url} cannot be reached: {e}; retry later"
                ),
            )
            .with_details(json!({"home": home, "homeUrl": url}));
            err.retry_after = Some(Duration::from_secs(1));
            err.into_response()
        }
        Err(e) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "FORWARD_FAILED",
            format!(
                "the agent's home broker {home} at {url} did not answer ({e}); the request may \
                 have run there: read the conversation before retrying"
            ),
        )
        .with_details(json!({"home": home, "homeUrl": url}))
        .into_response(),
    }
}

/// One peer's answer to a status question, or `None` (it is left out, with a warning).
async fn ask_peer(s: &AppState, url: &str, path: &str) -> Option<Value> {
    let mut req = Request::new(Body::empty());
    *req.uri_mut() = format!("{}{path}", url.trim_end_matches('/'))
        .parse()
        .ok()?;
    mark(s, &mut req);
    let answer = async {
        let resp = client().request(req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let bytes = axum::body::to_bytes(Body::new(resp.into_body()), 16 * 1024 * 1024)
            .await
            .ok()?;
        serde_json::from_slice::<Value>(&bytes).ok()
    };
    let got = tokio::time::timeout(PEER_STATUS_TIMEOUT, answer)
        .await
        .ok()
        .flatten();
    if got.is_none() {
        tracing::warn!(peer = %url, path, "a broker did not answer a status question; its facts are left out");
    }
    got
}

async fn local_json(resp: Response) -> Result<Value, Response> {
    if !resp.status().is_success() {
        return Err(resp);
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024 * 1024)
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string())
                .into_response()
        })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()).into_response()
    })
}

async fn peers_answers(s: &AppState, path: &str) -> Vec<Value> {
    let peers = s.broker.peers().await.unwrap_or_default();
    let asks = peers.iter().map(|(_, url)| ask_peer(s, url, path));
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Every live broker's processes: each runs its own agents' CLIs.
async fn gather_processes(s: &AppState, local: Response) -> Response {
    let mut all = match local_json(local).await {
        Ok(Value::Array(items)) => items,
        Ok(other) => return Json(other).into_response(),
        Err(resp) => return resp,
    };
    for answer in peers_answers(s, "/agents/processes/status").await {
        if let Value::Array(items) = answer {
            all.extend(items);
        }
    }
    all.sort_by(|a, b| a["agentId"].as_str().cmp(&b["agentId"].as_str()));
    Json(Value::Array(all)).into_response()
}

/// Every agent's session status, with the live facts (executing, lock, queue, pid) of the broker
/// that runs it: the database facts are the same everywhere, the live ones are the home's.
async fn gather_sessions(s: &AppState, local: Response) -> Response {
    let mut all = match local_json(local).await {
        Ok(Value::Array(items)) => items,
        Ok(other) => return Json(other).into_response(),
        Err(resp) => return resp,
    };
    for answer in peers_answers(s, "/agents/sessions/status").await {
        let Value::Array(items) = answer else {
            continue;
        };
        for theirs in items {
            let busy = theirs["executing"] == true
                || theirs["locked"] == true
                || theirs["queueLength"].as_u64().unwrap_or(0) > 0;
            if !busy {
                continue;
            }
            if let Some(mine) = all.iter_mut().find(|m| m["agentId"] == theirs["agentId"]) {
                *mine = theirs;
            }
        }
    }
    Json(Value::Array(all)).into_response()
}

/// `POST /agents/{id}/move {"to": "<instance id>", "endSession": false}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct MoveBody {
    /// The instance id of the broker that becomes the agent's home.
    to: String,
    /// End the agent's session first (default: keep it; the new home rehydrates it).
    end_session: Option<bool>,
}

pub(crate) async fn move_agent(
    State(s): State<AppState>,
    AgentPath(id): AgentPath,
    JsonBody(body): JsonBody<MoveBody>,
) -> Result<Response, ApiError> {
    if body.to.trim().is_empty() {
        return Err(ApiError::bad_request(
            Some("to"),
            "to must name a broker's instance id",
        ));
    }
    let moved = s
        .broker
        .move_agent(id.as_str(), &body.to, body.end_session.unwrap_or(false))
        .await?;
    Ok(Json(moved).into_response())
}

/// `GET /api/cluster`: the brokers and the agents' homes.
pub(crate) async fn cluster(State(s): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(s.broker.cluster_view().await?).into_response())
}
