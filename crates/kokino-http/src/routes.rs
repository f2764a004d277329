//! Routes and handlers.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use kokino_core::{AgentId, AgentSpec, CliType, CommMode, Conversation, Turn};
use kokino_service::ExecuteRequest;
use kokino_store::EventFilter;
use serde::Deserialize;
use serde_json::{json, Value};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::extract::{AgentPath, JsonBody};
use crate::{access, middleware, sse, ApiError, AppState};

type ApiResult<T> = Result<T, ApiError>;

pub fn router(state: AppState) -> Router {
    let body_limit = state.body_limit;
    let router = Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics))
        .route("/agents/register", post(register))
        .route("/agents", get(list_agents))
        .route("/agents/sessions/status", get(sessions_status))
        .route("/agents/sessions/clear", post(clear_sessions))
        .route("/agents/processes/status", get(processes_status))
        .route("/agents/logs/status", get(logs_status))
        .route("/agents/{id}/logs", get(agent_logs))
        .route("/agents/circuits/status", get(circuits_status))
        .route("/agents/{id}/circuit/reset", post(reset_agent_circuit))
        .route(
            "/api/circuits/cli/{cli_type}/reset",
            post(reset_cli_circuit),
        )
        .route("/api/fallback/status", get(fallback_status))
        .route("/api/fallback/cli/disable", post(fallback_cli_disable))
        .route("/api/fallback/cli/enable", post(fallback_cli_enable))
        .route("/api/fallback/agent/force", post(fallback_agent_force_body))
        .route("/api/fallback/agent/clear", post(fallback_agent_clear_body))
        .route("/api/fallback/agent/{id}/force", post(fallback_agent_force))
        .route("/api/fallback/agent/{id}", delete(fallback_agent_clear))
        .route("/api/fallback/clear-all", post(fallback_clear_all))
        .route("/agents/{id}", get(get_agent).delete(delete_agent))
        .route("/agents/{id}/execute", post(execute))
        .route("/agents/{id}/execute/stream", post(execute_stream))
        .route("/agents/{id}/execute/cancel", post(cancel))
        .route("/agents/{id}/end-session", post(end_session))
        .route("/agents/{id}/conversation", get(current_conversation))
        .route("/agents/{id}/conversations", get(list_conversations))
        .route("/agents/{id}/conversation/turns/{turn_id}", get(get_turn))
        .route(
            "/conversations/{conversation_id}",
            get(get_conversation).delete(delete_conversation),
        )
        .route("/api/metrics/events", get(list_events))
        .route("/api/metrics/cleanup", post(cleanup_events))
        .route("/api/metrics/failures/by-cli", get(failures_by_cli))
        .route("/api/metrics/failures/by-agent", get(failures_by_agent))
        .route("/api/metrics/latency/by-agent", get(latency_by_agent))
        .route("/api/slo/status", get(slo_status))
        .route("/api/shadow-mode/metrics", get(shadow_metrics))
        .route("/api/shadow-mode/mismatches", get(shadow_mismatches))
        .route("/api/shadow-mode/failures", get(shadow_failures))
        .route("/api/shadow-mode/decision", get(shadow_decision))
        .route("/api/shadow-mode/disable-all", post(shadow_disable_all))
        .route("/api/health/environment", get(environment))
        .route("/api/health/cli-versions", get(cli_versions))
        .route("/api/integrity/check", get(integrity_check))
        .route("/api/integrity/stats", get(integrity_stats))
        .route("/api/integrity/cleanup", post(integrity_cleanup))
        // The live status page (`GET /`) and its data (`/api/status`, `/api/status/stream`).
        .merge(crate::status::routes())
        .route("/agents/{id}/move", post(crate::forward::move_agent))
        .route("/api/cluster", get(crate::forward::cluster))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Inside the request metric, so a panicking route is counted with its 500.
        .route_layer(tower_http::catch_panic::CatchPanicLayer::custom(
            middleware::panic_response,
        ))
        // Inside auth: only authenticated requests are forwarded to an agent's home.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::forward::forward,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::auth,
        ))
        .route_layer(axum::middleware::from_fn(middleware::track))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::guard,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
    // Outside everything else too, so a panic in a middleware or a fallback is answered as well.
    middleware::catch_panics(router).with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "method not allowed on this endpoint",
    )
}

// ---------------------------------------------------------------- service

/// `GET /openapi.json`: built once, served as it is.
async fn openapi_json() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = DOC.get_or_init(crate::openapi::document_text).clone();
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

async fn health(State(s): State<AppState>) -> Response {
    let h = s.broker.health().await;
    let status = if h.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(h)).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    // The store's reachability is measured per scrape, so `kokino_store_up` is as fresh as the
    // rest of the exposition (the store-outage alert reads it).
    s.broker.record_store_up().await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        (s.metrics)(),
    )
        .into_response()
}

// ---------------------------------------------------------------- agents

/// `POST /agents/register`; the type is shared with the client (`kokino-api`).
use kokino_api::RegisterRequest as RegisterBody;

fn legacy_string(
    meta: &serde_json::Map<String, Value>,
    key: &'static str,
) -> ApiResult<Option<String>> {
    match meta.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(
            Some(&format!("metadata.{key}")),
            format!("metadata.{key} must be a string"),
        )),
    }
}

/// The register body as the domain's agent spec, every field checked.
fn register_spec(this: RegisterBody) -> ApiResult<AgentSpec> {
    let metadata = this.metadata.unwrap_or_default();
    let agent_id = AgentId::parse(&this.agent_id)
        .map_err(|e| ApiError::bad_request(Some("agentId"), e.to_string()))?;
    let cli_type: CliType = this
        .cli_type
        .parse()
        .map_err(|e: kokino_core::CoreError| ApiError::bad_request(Some("type"), e.to_string()))?;
    let comm_mode = match this.comm_mode.or(legacy_string(&metadata, "commMode")?) {
        None => CommMode::Headless,
        Some(m) => m.parse().map_err(|e: kokino_core::CoreError| {
            ApiError::bad_request(Some("commMode"), e.to_string())
        })?,
    };
    if let Some(b) = &this.binary {
        if b.is_empty() || b.contains('\0') {
            return Err(ApiError::bad_request(
                Some("binary"),
                "binary must be a non-empty command name or path",
            ));
        }
    }
    if let Some(t) = this.timeout_ms {
        in_range(t, "timeoutMs", 1, MAX_WAIT_MS)?;
    }
    if let Some(m) = this.max_memory_mb {
        in_range(m, "maxMemoryMB", 1, MAX_MEMORY_MB)?;
    }
    Ok(AgentSpec {
        agent_id,
        cli_type,
        comm_mode,
        cwd: this.cwd.or(legacy_string(&metadata, "cwd")?),
        model: this.model,
        role: this.role.or(legacy_string(&metadata, "role")?),
        system_prompt: this
            .system_prompt
            .or(legacy_string(&metadata, "systemPrompt")?),
        timeout_ms: this.timeout_ms,
        max_memory_mb: this.max_memory_mb,
        env: this.env.unwrap_or_default(),
        binary: this.binary,
        extra_args: this.extra_args.unwrap_or_default(),
        metadata,
        rate_limit: this.rate_limit,
    })
}

async fn register(
    State(s): State<AppState>,
    JsonBody(mut body): JsonBody<RegisterBody>,
) -> ApiResult<Json<kokino_core::AgentRecord>> {
    let (home, portable) = (body.home.take(), body.portable.take());
    let spec = register_spec(body)?;
    Ok(Json(
        s.broker.register_agent_at(spec, home, portable).await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentFilter {
    #[serde(rename = "type")]
    cli_type: Option<String>,
    comm_mode: Option<String>,
}

async fn list_agents(
    State(s): State<AppState>,
    query: Result<Query<AgentFilter>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<kokino_core::AgentRecord>>> {
    let Query(f) = query.map_err(|e| ApiError::bad_request(None, e.body_text()))?;
    let cli_type = f
        .cli_type
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<CliType>())
        .transpose()
        .map_err(|e| ApiError::bad_request(Some("type"), e.to_string()))?;
    let comm_mode = f
        .comm_mode
        .filter(|m| !m.is_empty())
        .map(|m| m.parse::<CommMode>())
        .transpose()
        .map_err(|e| ApiError::bad_request(Some("commMode"), e.to_string()))?;
    Ok(Json(s.broker.list_agents(cli_type, comm_mode).await?))
}

async fn get_agent(State(s): State<AppState>, AgentPath(id): AgentPath) -> ApiResult<Response> {
    Ok(Json(s.broker.get_agent(id.as_str()).await?).into_response())
}

#[derive(Debug, Deserialize)]
struct PurgeQuery {
    purge: Option<String>,
}

async fn delete_agent(
    State(s): State<AppState>,
    AgentPath(id): AgentPath,
    query: Result<Query<PurgeQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<StatusCode> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(None, e.body_text()))?;
    let purge = match q.purge.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                Some("purge"),
                format!("purge must be true or false, not {other:?}"),
            ))
        }
    };
    if s.broker.delete_agent(id.as_str(), purge).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(kokino_service::ServiceError::AgentNotFound(id.to_string()).into())
    }
}

// ---------------------------------------------------------------- execution

async fn execute(
    State(s): State<AppState>,
    AgentPath(id): AgentPath,
    JsonBody(req): JsonBody<ExecuteRequest>,
) -> ApiResult<Response> {
    check_execute(&req)?;
    let resp = s.broker.execute(id.as_str(), req, None).await?;
    Ok(Json(resp).into_response())
}

async fn execute_stream(
    State(s): State<AppState>,
    AgentPath(id): AgentPath,
    JsonBody(req): JsonBody<ExecuteRequest>,
) -> Response {
    if let Err(e) = check_execute(&req) {
        return e.into_response();
    }
    sse::execute_stream(s, id.to_string(), req).into_response()
}

async fn cancel(State(s): State<AppState>, AgentPath(id): AgentPath) -> ApiResult<Response> {
    Ok(Json(s.broker.cancel(id.as_str())?).into_response())
}

async fn end_session(State(s): State<AppState>, AgentPath(id): AgentPath) -> ApiResult<Response> {
    Ok(Json(s.broker.end_session(id.as_str()).await?).into_response())
}

async fn sessions_status(State(s): State<AppState>) -> ApiResult<Response> {
    Ok(Json(s.broker.sessions_status().await?).into_response())
}

async fn clear_sessions(State(s): State<AppState>) -> ApiResult<Response> {
    let ended = s.broker.clear_sessions().await?;
    Ok(Json(json!({ "ended": ended })).into_response())
}

async fn processes_status(State(s): State<AppState>) -> Json<Vec<kokino_service::ProcessStatus>> {
    Json(s.broker.processes_status())
}

#[derive(Debug, Deserialize)]
struct LinesQuery {
    lines: Option<String>,
}

async fn agent_logs(
    State(s): State<AppState>,
    AgentPath(id): AgentPath,
    query: Result<Query<LinesQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(None, e.body_text()))?;
    let lines = bounded(q.lines.as_deref(), "lines", 100, 10_000)?;
    Ok(Json(s.broker.agent_logs(id.as_str(), lines as usize).await?).into_response())
}

async fn logs_status(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let logs = s.broker.logs().clone();
    let status = tokio::task::spawn_blocking(move || logs.status())
        .await
        .map_err(|e| kokino_service::ServiceError::Internal(e.to_string()))?
        .map_err(|e| kokino_service::ServiceError::Internal(e.to_string()))?;
    Ok(Json(json!({ "logs": status })))
}

// ---------------------------------------------------------------- breakers and fallback

async fn circuits_status(State(s): State<AppState>) -> Json<Value> {
    Json(json!({ "circuits": s.broker.circuits_status() }))
}

async fn reset_agent_circuit(
    State(s): State<AppState>,
    AgentPath(id): AgentPath,
) -> ApiResult<Json<Value>> {
    let previous = s.broker.reset_agent_circuit(id.as_str()).await?;
    Ok(Json(
        json!({"reset": true, "agentId": id, "previousState": previous}),
    ))
}

fn parse_cli(raw: &str, field: &str) -> ApiResult<CliType> {
    raw.parse()
        .map_err(|e: kokino_core::CoreError| ApiError::bad_request(Some(field), e.to_string()))
}

async fn reset_cli_circuit(
    State(s): State<AppState>,
    Path(cli_type): Path<String>,
) -> ApiResult<Json<Value>> {
    let cli = parse_cli(&cli_type, "cliType")?;
    let previous = s.broker.reset_cli_circuit(cli).await?;
    Ok(Json(
        json!({"reset": true, "cliType": cli, "previousState": previous}),
    ))
}

async fn fallback_status(State(s): State<AppState>) -> Json<kokino_core::fallback::FallbackStatus> {
    Json(s.broker.fallback_status())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct CliBody {
    #[schema(value_type = kokino_core::CliType)]
    cli_type: String,
    reason: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ReasonBody {
    reason: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct AgentReasonBody {
    #[schema(value_type = kokino_core::AgentId)]
    agent_id: String,
    reason: Option<String>,
}

/// A reason is what the next operator reads in `GET /api/fallback/status`; an empty one says
/// nothing, so a default names who set it.
fn reason_or_default(reason: Option<String>) -> String {
    reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "set by an operator (no reason given)".into())
}

async fn fallback_cli_disable(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<CliBody>,
) -> ApiResult<Json<Value>> {
    let cli = parse_cli(&body.cli_type, "cliType")?;
    s.broker
        .disable_cli(cli, &reason_or_default(body.reason))
        .await?;
    Ok(Json(json!({"disabled": true, "cliType": cli})))
}

async fn fallback_cli_enable(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<CliBody>,
) -> ApiResult<Json<Value>> {
    let cli = parse_cli(&body.cli_type, "cliType")?;
    let was = s.broker.enable_cli(cli).await?;
    Ok(Json(
        json!({"enabled": true, "cliType": cli, "wasDisabled": was}),
    ))
}

async fn fallback_agent_force(
    State(s): State<AppState>,
    AgentPath(id): AgentPath,
    JsonBody(body): JsonBody<ReasonBody>,
) -> ApiResult<Json<Value>> {
    s.broker
        .force_agent(id.as_str(), &reason_or_default(body.reason))
        .await?;
    Ok(Json(json!({"forced": true, "agentId": id})))
}

async fn fallback_agent_force_body(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<AgentReasonBody>,
) -> ApiResult<Json<Value>> {
    let id = AgentId::parse(&body.agent_id)
        .map_err(|e| ApiError::bad_request(Some("agentId"), e.to_string()))?;
    s.broker
        .force_agent(id.as_str(), &reason_or_default(body.reason))
        .await?;
    Ok(Json(json!({"forced": true, "agentId": id})))
}

async fn fallback_agent_clear(
    State(s): State<AppState>,
    AgentPath(id): AgentPath,
) -> ApiResult<Json<Value>> {
    let cleared = s.broker.clear_agent_fallback(id.as_str()).await?;
    Ok(Json(json!({"cleared": cleared, "agentId": id})))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct AgentBody {
    #[schema(value_type = kokino_core::AgentId)]
    agent_id: String,
}

async fn fallback_agent_clear_body(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<AgentBody>,
) -> ApiResult<Json<Value>> {
    let id = AgentId::parse(&body.agent_id)
        .map_err(|e| ApiError::bad_request(Some("agentId"), e.to_string()))?;
    let cleared = s.broker.clear_agent_fallback(id.as_str()).await?;
    Ok(Json(json!({"cleared": cleared, "agentId": id})))
}

async fn fallback_clear_all(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let n = s.broker.clear_all_fallbacks().await?;
    Ok(Json(json!({ "cleared": n })))
}

// ---------------------------------------------------------------- conversations

fn conversation_body(conv: Conversation, turns: Vec<Turn>) -> Value {
    let mut body = serde_json::to_value(conv).unwrap_or_default();
    body["turns"] = serde_json::to_value(turns).unwrap_or_default();
    body
}

async fn current_conversation(
    State(s): State<AppState>,
    AgentPath(id): AgentPath,
) -> ApiResult<Json<Value>> {
    let (conv, turns) = s.broker.current_conversation(id.as_str()).await?;
    Ok(Json(conversation_body(conv, turns)))
}

async fn list_conversations(
    State(s): State<AppState>,
    AgentPath(id): AgentPath,
) -> ApiResult<Json<Vec<Conversation>>> {
    Ok(Json(s.broker.conversations(id.as_str()).await?))
}

async fn get_conversation(
    State(s): State<AppState>,
    Path(conversation_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (conv, turns) = s.broker.conversation(&conversation_id).await?;
    Ok(Json(conversation_body(conv, turns)))
}

async fn get_turn(
    State(s): State<AppState>,
    AgentPath(id): AgentPath,
    Path((_, turn_id)): Path<(String, String)>,
) -> ApiResult<Json<Turn>> {
    Ok(Json(s.broker.turn(id.as_str(), &turn_id).await?))
}

async fn delete_conversation(
    State(s): State<AppState>,
    Path(conversation_id): Path<String>,
) -> ApiResult<StatusCode> {
    s.broker.delete_conversation(&conversation_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- events

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventsQuery {
    #[serde(rename = "type")]
    event_type: Option<String>,
    agent_id: Option<String>,
    since: Option<String>,
    limit: Option<String>,
}

async fn list_events(
    State(s): State<AppState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(None, e.body_text()))?;
    let since = match q.since.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(raw) => Some(parse_since(raw).ok_or_else(|| {
            ApiError::bad_request(
                Some("since"),
                format!("since must be an RFC 3339 time or epoch milliseconds, not {raw:?}"),
            )
        })?),
    };
    let limit = bounded(q.limit.as_deref(), "limit", 100, 10_000)?;
    let events = s
        .broker
        .store()
        .list_events(&EventFilter {
            event_type: q.event_type.filter(|t| !t.is_empty()),
            agent_id: q.agent_id.filter(|a| !a.is_empty()),
            since,
            limit,
        })
        .await
        .map_err(kokino_service::ServiceError::from)?;
    Ok(Json(json!({ "events": events })))
}

#[derive(Debug, Deserialize)]
struct HoursQuery {
    hours: Option<String>,
}

/// `?hours=N`, 1 to 2160 (90 days), with a per-endpoint default.
fn hours(
    query: Result<Query<HoursQuery>, axum::extract::rejection::QueryRejection>,
    default: u32,
) -> ApiResult<u32> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(None, e.body_text()))?;
    bounded(q.hours.as_deref(), "hours", default, 2160)
}

type HoursParam = Result<Query<HoursQuery>, axum::extract::rejection::QueryRejection>;

async fn failures_by_cli(State(s): State<AppState>, q: HoursParam) -> ApiResult<Response> {
    Ok(Json(s.broker.failures_by_cli(hours(q, 24)?).await?).into_response())
}

async fn failures_by_agent(State(s): State<AppState>, q: HoursParam) -> ApiResult<Response> {
    Ok(Json(s.broker.failures_by_agent(hours(q, 24)?).await?).into_response())
}

async fn latency_by_agent(State(s): State<AppState>, q: HoursParam) -> ApiResult<Response> {
    Ok(Json(s.broker.latency_by_agent(hours(q, 1)?).await?).into_response())
}

/// 200 when clean, 503 when not (so a load balancer or `curl -f` notices).
async fn integrity_check(State(s): State<AppState>) -> ApiResult<Response> {
    let report = s.broker.integrity_check().await?;
    let status = if report.passed {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(report)).into_response())
}

async fn integrity_stats(State(s): State<AppState>) -> ApiResult<Response> {
    Ok(Json(s.broker.integrity_stats().await?).into_response())
}

async fn integrity_cleanup(State(s): State<AppState>) -> ApiResult<Response> {
    Ok(Json(s.broker.integrity_cleanup().await?).into_response())
}

#[derive(Deserialize)]
struct EnvironmentQuery {
    cli: Option<String>,
    /// `true` asks for a run that starts after the request instead of the cached report.
    #[serde(default)]
    fresh: bool,
}

/// `?cli=T` answers one CLI type's report, without it all four; 503 when anything failed.
/// The report is the cached one (at most 10 s old; concurrent callers share one run), or with
/// `?fresh=true` a new run. With a token configured only token holders get here at all; either
/// way runs are one at a time, so no number of callers can start more than one set of probe
/// processes at once.
async fn environment(
    State(s): State<AppState>,
    query: Result<Query<EnvironmentQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(None, e.body_text()))?;
    let cli = match q.cli.as_deref().filter(|c| !c.is_empty() && *c != "all") {
        Some(raw) => Some(parse_cli(raw, "cli")?),
        None => None,
    };
    let freshness = if q.fresh {
        kokino_service::Freshness::Fresh
    } else {
        kokino_service::Freshness::Cached
    };
    let report = s.broker.environment(cli, freshness).await;
    let status = if report.overall {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = match (cli, report.results.first()) {
        (Some(_), Some(one)) => serde_json::to_value(one),
        _ => serde_json::to_value(&report),
    }
    .map_err(|e| kokino_service::ServiceError::Internal(e.to_string()))?;
    Ok((status, Json(body)).into_response())
}

async fn cli_versions(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "versions": s.broker.cli_versions().await? })))
}

#[derive(Debug, Deserialize)]
struct ShadowQuery {
    days: Option<String>,
    limit: Option<String>,
    mode: Option<String>,
}

type ShadowParam = Result<Query<ShadowQuery>, axum::extract::rejection::QueryRejection>;

/// Longest event retention a cleanup accepts (100 years).
const MAX_RETENTION_DAYS: u64 = 36_500;
/// Longest execution or lock wait a request may ask for (7 days): far beyond any real run, and
/// far below where adding it to a clock would overflow.
const MAX_WAIT_MS: u64 = 7 * 24 * 3600 * 1000;
/// Largest memory limit an agent may ask for (1 TiB), so that its byte count cannot overflow.
const MAX_MEMORY_MB: u64 = 1024 * 1024;

/// A number from a JSON body (or the config file), checked like [`bounded`] checks a query.
fn in_range(value: u64, field: &str, min: u64, max: u64) -> ApiResult<u64> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::bad_request(
            Some(field),
            format!("{field} must be a whole number from {min} to {max}, not {value}"),
        ))
    }
}

/// The numbers of an execute body: a run time of 1 ms to 7 days, a lock wait of 0 (fail at once
/// when busy) to 7 days.
fn check_execute(req: &ExecuteRequest) -> ApiResult<()> {
    if let Some(t) = req.timeout_ms {
        in_range(t, "timeoutMs", 1, MAX_WAIT_MS)?;
    }
    if let Some(t) = req.lock_timeout_ms {
        in_range(t, "lockTimeoutMs", 0, MAX_WAIT_MS)?;
    }
    Ok(())
}

/// A whole-number query parameter from 1 to `max`; absent or empty means `default`. Every
/// numeric parameter of the API goes through here, so they all fail the same way.
fn bounded(raw: Option<&str>, field: &str, default: u32, max: u32) -> ApiResult<u32> {
    match raw.filter(|r| !r.is_empty()) {
        None => Ok(default),
        Some(r) => r
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    Some(field),
                    format!("{field} must be a whole number from 1 to {max}, not {r:?}"),
                )
            }),
    }
}

async fn shadow_metrics(State(s): State<AppState>, q: ShadowParam) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(None, e.body_text()))?;
    let days = bounded(q.days.as_deref(), "days", 30, 3650)?;
    Ok(Json(s.broker.shadow_metrics(days).await?).into_response())
}

async fn shadow_mismatches(State(s): State<AppState>, q: ShadowParam) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(None, e.body_text()))?;
    let limit = bounded(q.limit.as_deref(), "limit", 20, 1000)?;
    Ok(Json(s.broker.shadow_mismatches(limit).await?).into_response())
}

async fn shadow_failures(State(s): State<AppState>, q: ShadowParam) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(None, e.body_text()))?;
    let limit = bounded(q.limit.as_deref(), "limit", 20, 1000)?;
    let leg = match q.mode.as_deref().unwrap_or("headless") {
        "headless" => CommMode::Headless,
        "tmux" => CommMode::Tmux,
        other => {
            return Err(ApiError::bad_request(
                Some("mode"),
                format!("mode must be headless or tmux, not {other:?}"),
            ))
        }
    };
    Ok(Json(s.broker.shadow_failures(leg, limit).await?).into_response())
}

async fn shadow_decision(State(s): State<AppState>) -> ApiResult<Response> {
    Ok(Json(s.broker.shadow_decision().await?).into_response())
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DisableAllBody {
    #[schema(value_type = Option<String>, pattern = "^(headless|tmux)$")]
    to: Option<String>,
}

async fn shadow_disable_all(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<DisableAllBody>,
) -> ApiResult<Json<Value>> {
    let to = match body.to.as_deref().unwrap_or("headless") {
        "headless" => CommMode::Headless,
        "tmux" => CommMode::Tmux,
        other => {
            return Err(ApiError::bad_request(
                Some("to"),
                format!("to must be headless or tmux, not {other:?}"),
            ))
        }
    };
    let changed = s.broker.shadow_disable_all(to).await?;
    Ok(Json(json!({ "changed": changed })))
}

async fn slo_status(State(s): State<AppState>) -> ApiResult<Response> {
    Ok(Json(s.broker.slo_status().await?).into_response())
}

#[derive(Debug, Deserialize)]
struct DaysQuery {
    days: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RetentionBody {
    retention_days: Option<u32>,
}

/// `POST /api/metrics/cleanup?days=90` (or body `{"retentionDays": 90}`; the query wins).
async fn cleanup_events(
    State(s): State<AppState>,
    query: Result<Query<DaysQuery>, axum::extract::rejection::QueryRejection>,
    JsonBody(body): JsonBody<RetentionBody>,
) -> ApiResult<Json<Value>> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(None, e.body_text()))?;
    // Both forms are range-checked: an unchecked body value once overflowed the date
    // arithmetic and dropped the connection.
    let default = match body.retention_days {
        Some(d) => in_range(u64::from(d), "retentionDays", 1, MAX_RETENTION_DAYS)? as u32,
        None => 90,
    };
    let days = bounded(
        q.days.as_deref(),
        "days",
        default,
        MAX_RETENTION_DAYS as u32,
    )?;
    let deleted = s.broker.cleanup_events(days).await?;
    Ok(Json(json!({ "deleted": deleted, "retentionDays": days })))
}

fn parse_since(raw: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Ok(ms) = raw.parse::<i64>() {
        return chrono::DateTime::from_timestamp_millis(ms);
    }
    chrono::DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Parses an agent definition written like the register body (camelCase keys, legacy
/// `metadata.*` fields accepted). The broker uses it for agents declared in its config file, so
/// that a config file and `POST /agents/register` accept exactly the same thing.
pub fn agent_spec_from_json(value: Value) -> Result<AgentSpec, String> {
    let body: RegisterBody =
        crate::extract::parse_json(value.to_string().as_bytes()).map_err(|e| e.message)?;
    register_spec(body).map_err(|e| e.message)
}
