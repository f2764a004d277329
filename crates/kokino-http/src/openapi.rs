//! The OpenAPI 3.1 document of the HTTP API, generated from the code.
//!
//! Schemas come from the wire types themselves (`#[derive(utoipa::ToSchema)]` next to their
//! `Serialize`/`Deserialize`, which utoipa reads, renames included), so a field added to a type
//! is in the document at the next build. The operations are the table [`OPERATIONS`]: one row
//! per method and path of [`crate::router`], with its parameters, body, answer and the statuses
//! it can answer; a test checks the table against the router's registrations, so a route cannot
//! be added without its documentation.
//!
//! The document is served at `GET /openapi.json` without the token: it describes the API and
//! holds no data, and a client needs it to learn how to authenticate.

use serde_json::{json, Map, Value};
use utoipa::OpenApi;

/// A query parameter: name, schema, description.
type Param = (&'static str, fn() -> Value, &'static str);

/// One operation of the API.
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub id: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    pub query: &'static [Param],
    /// The request body's component schema, `None` for no body. Bodies whose fields are all
    /// optional accept an empty body (read as `{}`).
    pub body: Option<(&'static str, bool)>,
    /// The success status and its body: a component name, `"text"`, `"sse"` or `""` for none.
    pub ok: (u16, &'static str),
    /// The error statuses besides those every operation can answer (401, 403, 500).
    pub errors: &'static [u16],
}

fn int(min: u64, max: u64) -> Value {
    json!({"type": "integer", "minimum": min, "maximum": max})
}
fn hours_param() -> Value {
    int(1, 2160)
}
fn limit_1000() -> Value {
    int(1, 1000)
}
fn limit_10000() -> Value {
    int(1, 10_000)
}
fn days_3650() -> Value {
    int(1, 3650)
}
fn days_retention() -> Value {
    int(1, 36_500)
}
fn string() -> Value {
    json!({"type": "string"})
}
fn boolean_word() -> Value {
    json!({"type": "string", "enum": ["true", "false", "1", "0"]})
}
fn leg() -> Value {
    json!({"type": "string", "enum": ["headless", "tmux"]})
}
fn cli_or_all() -> Value {
    json!({"type": "string", "enum": ["claude-code", "codex", "gemini", "factory-droid", "all"]})
}
fn cli() -> Value {
    json!({"$ref": "#/components/schemas/CliType"})
}
fn comm_mode() -> Value {
    json!({"$ref": "#/components/schemas/CommMode"})
}
fn since() -> Value {
    json!({"type": "string", "description": "RFC 3339 time or epoch milliseconds"})
}

const HOURS_24: &[Param] = &[("hours", hours_param, "Window in hours (default 24).")];
const HOURS_1: &[Param] = &[("hours", hours_param, "Window in hours (default 1).")];
const NONE: &[Param] = &[];

macro_rules! op {
    ($m:literal $p:literal, $id:literal, $tag:literal, $sum:literal,
     query: $q:expr, body: $b:expr, ok: $ok:expr, errors: $e:expr) => {
        Operation {
            method: $m,
            path: $p,
            id: $id,
            tag: $tag,
            summary: $sum,
            query: $q,
            body: $b,
            ok: $ok,
            errors: $e,
        }
    };
}

/// Every operation of the API, in the order of `docs/reference/api.md`.
pub const OPERATIONS: &[Operation] = &[
    op!("get" "/health", "health", "service", "The broker's health (503 when degraded; never needs the token).",
        query: NONE, body: None, ok: (200, "Health"), errors: &[503]),
    op!("get" "/metrics", "metrics", "service", "Prometheus metrics, text exposition format.",
        query: NONE, body: None, ok: (200, "text"), errors: &[]),
    op!("get" "/openapi.json", "openapi", "service", "This document (never needs the token).",
        query: NONE, body: None, ok: (200, "object"), errors: &[]),
    op!("get" "/", "statusPage", "status", "The live status page (HTML; never needs the token, its data does).",
        query: NONE, body: None, ok: (200, "html"), errors: &[]),
    op!("get" "/status/app.js", "statusPageScript", "status", "The status page's script.",
        query: NONE, body: None, ok: (200, "js"), errors: &[]),
    op!("get" "/status/app.css", "statusPageStyle", "status", "The status page's style sheet.",
        query: NONE, body: None, ok: (200, "css"), errors: &[]),
    op!("get" "/api/status", "status", "status", "One snapshot of what the status page shows: broker, agents, latest executions, breakers, fallback, SLOs, events.",
        query: NONE, body: None, ok: (200, "object"), errors: &[]),
    op!("get" "/api/status/stream", "statusStream", "status", "The status snapshot, then what changed, as Server-Sent Events.",
        query: NONE, body: None, ok: (200, "status-sse"), errors: &[]),
    op!("post" "/agents/register", "registerAgent", "agents", "Register or update an agent.",
        query: NONE, body: Some(("RegisterRequest", true)), ok: (200, "AgentRecord"), errors: &[400, 413, 503]),
    op!("get" "/agents", "listAgents", "agents", "List agents, optionally by type and mode.",
        query: &[("type", cli, "Only agents of this CLI type."), ("commMode", comm_mode, "Only agents registered with this mode.")],
        body: None, ok: (200, "AgentRecord[]"), errors: &[400, 503]),
    op!("get" "/agents/{id}", "getAgent", "agents", "One agent with its session, breaker, fallback and effective mode.",
        query: NONE, body: None, ok: (200, "AgentView"), errors: &[400, 404, 503]),
    op!("delete" "/agents/{id}", "deleteAgent", "agents", "Delete an agent (`purge` also deletes its conversations).",
        query: &[("purge", boolean_word, "Also delete the agent's conversations and turns.")],
        body: None, ok: (204, ""), errors: &[400, 404, 409, 503]),
    op!("post" "/agents/{id}/execute", "execute", "execution", "Send a prompt and wait for the answer.",
        query: NONE, body: Some(("ExecuteRequest", true)), ok: (200, "ExecuteResponse"), errors: &[400, 404, 409, 413, 502, 503, 504]),
    op!("post" "/agents/{id}/execute/stream", "executeStream", "execution", "Send a prompt and follow the run as Server-Sent Events (see `StreamEvent`); the last event is `result` or `error`.",
        query: NONE, body: Some(("ExecuteRequest", true)), ok: (200, "sse"), errors: &[400, 413]),
    op!("post" "/agents/{id}/execute/cancel", "cancel", "execution", "Cancel the agent's running execution.",
        query: NONE, body: None, ok: (200, "CancelResult"), errors: &[400, 503]),
    op!("post" "/agents/{id}/move", "moveAgent", "cluster", "Several brokers: move the agent to another broker (body `{to, endSession?}`).",
        query: NONE, body: Some(("MoveBody", true)), ok: (200, "object"), errors: &[400, 404, 409, 503]),
    op!("get" "/api/cluster", "cluster", "cluster", "Several brokers: the brokers, their liveness and the agents' homes (409 when the broker runs without homes).",
        query: NONE, body: None, ok: (200, "object"), errors: &[409, 503]),
    op!("post" "/agents/{id}/end-session", "endSession", "sessions", "End the agent's session (cancels a running execution first).",
        query: NONE, body: None, ok: (200, "EndSessionResult"), errors: &[400, 404, 409, 503]),
    op!("get" "/agents/sessions/status", "sessionsStatus", "sessions", "Every agent's session, lock and running execution.",
        query: NONE, body: None, ok: (200, "SessionStatus[]"), errors: &[503]),
    op!("post" "/agents/sessions/clear", "clearSessions", "sessions", "End every idle session.",
        query: NONE, body: None, ok: (200, "SessionsCleared"), errors: &[503]),
    op!("get" "/agents/processes/status", "processesStatus", "processes", "The live CLI processes with memory and CPU.",
        query: NONE, body: None, ok: (200, "ProcessStatus[]"), errors: &[]),
    op!("get" "/agents/logs/status", "logsStatus", "logs", "Every agent log file's size and rotations.",
        query: NONE, body: None, ok: (200, "LogsStatus"), errors: &[]),
    op!("get" "/agents/{id}/logs", "agentLogs", "logs", "The tail of an agent's log.",
        query: &[("lines", limit_10000, "How many lines (default 100).")],
        body: None, ok: (200, "AgentLogTail"), errors: &[400, 404, 503]),
    op!("get" "/agents/circuits/status", "circuitsStatus", "breakers", "Every circuit breaker.",
        query: NONE, body: None, ok: (200, "CircuitsStatus"), errors: &[]),
    op!("post" "/agents/{id}/circuit/reset", "resetAgentCircuit", "breakers", "Close an agent's breaker.",
        query: NONE, body: None, ok: (200, "CircuitReset"), errors: &[400, 404, 503]),
    op!("post" "/api/circuits/cli/{cliType}/reset", "resetCliCircuit", "breakers", "Close a CLI type's breaker.",
        query: NONE, body: None, ok: (200, "CircuitReset"), errors: &[400, 503]),
    op!("get" "/api/fallback/status", "fallbackStatus", "fallback", "Disabled CLI types and forced agents, with their reasons.",
        query: NONE, body: None, ok: (200, "FallbackStatus"), errors: &[]),
    op!("post" "/api/fallback/cli/disable", "disableCli", "fallback", "Disable a CLI type for headless runs (its agents run in tmux).",
        query: NONE, body: Some(("CliBody", true)), ok: (200, "CliDisabled"), errors: &[400, 413, 503]),
    op!("post" "/api/fallback/cli/enable", "enableCli", "fallback", "Enable a CLI type for headless runs again.",
        query: NONE, body: Some(("CliBody", true)), ok: (200, "CliEnabled"), errors: &[400, 413, 503]),
    op!("post" "/api/fallback/agent/force", "forceAgentBody", "fallback", "Force an agent to tmux (agent in the body).",
        query: NONE, body: Some(("AgentReasonBody", true)), ok: (200, "AgentForced"), errors: &[400, 404, 413, 503]),
    op!("post" "/api/fallback/agent/clear", "clearAgentBody", "fallback", "Clear an agent's override (agent in the body).",
        query: NONE, body: Some(("AgentBody", true)), ok: (200, "AgentFallbackCleared"), errors: &[400, 404, 413, 503]),
    op!("post" "/api/fallback/agent/{id}/force", "forceAgent", "fallback", "Force an agent to tmux.",
        query: NONE, body: Some(("ReasonBody", false)), ok: (200, "AgentForced"), errors: &[400, 404, 413, 503]),
    op!("delete" "/api/fallback/agent/{id}", "clearAgent", "fallback", "Clear an agent's override.",
        query: NONE, body: None, ok: (200, "AgentFallbackCleared"), errors: &[400, 404, 503]),
    op!("post" "/api/fallback/clear-all", "clearAllFallbacks", "fallback", "Clear every override.",
        query: NONE, body: None, ok: (200, "FallbacksCleared"), errors: &[503]),
    op!("get" "/agents/{id}/conversation", "currentConversation", "conversations", "The agent's current conversation with its turns.",
        query: NONE, body: None, ok: (200, "ConversationDetail"), errors: &[400, 404, 503]),
    op!("get" "/agents/{id}/conversations", "listConversations", "conversations", "The agent's conversations.",
        query: NONE, body: None, ok: (200, "Conversation[]"), errors: &[400, 404, 503]),
    op!("get" "/agents/{id}/conversation/turns/{turnId}", "getTurn", "conversations", "One turn of the agent's conversations.",
        query: NONE, body: None, ok: (200, "Turn"), errors: &[400, 404, 503]),
    op!("get" "/conversations/{conversationId}", "getConversation", "conversations", "A conversation with its turns.",
        query: NONE, body: None, ok: (200, "ConversationDetail"), errors: &[400, 404, 503]),
    op!("delete" "/conversations/{conversationId}", "deleteConversation", "conversations", "Delete a conversation and its turns.",
        query: NONE, body: None, ok: (204, ""), errors: &[400, 404, 409, 503]),
    op!("get" "/api/metrics/events", "listEvents", "telemetry", "Telemetry events, newest first.",
        query: &[("type", string, "Only events of this type."), ("agentId", string, "Only events of this agent."),
                 ("since", since, "Only events at or after this time."), ("limit", limit_10000, "At most this many (default 100).")],
        body: None, ok: (200, "EventsList"), errors: &[400, 503]),
    op!("post" "/api/metrics/cleanup", "cleanupEvents", "telemetry", "Delete events older than the retention (`days` wins over the body).",
        query: &[("days", days_retention, "Retention in days (default 90).")],
        body: Some(("RetentionBody", false)), ok: (200, "EventsDeleted"), errors: &[400, 413, 503]),
    op!("get" "/api/metrics/failures/by-cli", "failuresByCli", "telemetry", "Failures per CLI type.",
        query: HOURS_24, body: None, ok: (200, "CliFailures[]"), errors: &[400, 503]),
    op!("get" "/api/metrics/failures/by-agent", "failuresByAgent", "telemetry", "Failures per agent.",
        query: HOURS_24, body: None, ok: (200, "AgentFailures[]"), errors: &[400, 503]),
    op!("get" "/api/metrics/latency/by-agent", "latencyByAgent", "telemetry", "Latency percentiles per agent.",
        query: HOURS_1, body: None, ok: (200, "AgentLatency[]"), errors: &[400, 503]),
    op!("get" "/api/slo/status", "sloStatus", "telemetry", "Service level objectives and their status.",
        query: NONE, body: None, ok: (200, "SloStatus"), errors: &[503]),
    op!("get" "/api/shadow-mode/metrics", "shadowMetrics", "shadow", "Shadow-mode comparison metrics.",
        query: &[("days", days_3650, "Window in days (default 30).")], body: None, ok: (200, "ShadowMetrics"), errors: &[400, 503]),
    op!("get" "/api/shadow-mode/mismatches", "shadowMismatches", "shadow", "The latest answers that differed.",
        query: &[("limit", limit_1000, "At most this many (default 20).")], body: None, ok: (200, "Mismatch[]"), errors: &[400, 503]),
    op!("get" "/api/shadow-mode/failures", "shadowFailures", "shadow", "The latest failures of one leg.",
        query: &[("limit", limit_1000, "At most this many (default 20)."), ("mode", leg, "The leg (default headless).")],
        body: None, ok: (200, "ShadowResult[]"), errors: &[400, 503]),
    op!("get" "/api/shadow-mode/decision", "shadowDecision", "shadow", "Whether the headless leg is good enough to switch.",
        query: NONE, body: None, ok: (200, "Decision"), errors: &[503]),
    op!("post" "/api/shadow-mode/disable-all", "shadowDisableAll", "shadow", "Move every shadow agent to one mode.",
        query: NONE, body: Some(("DisableAllBody", false)), ok: (200, "ShadowDisabled"), errors: &[400, 413, 503]),
    op!("get" "/api/health/environment", "environment", "health", "The host's environment for the CLIs (503 when a check failed).",
        query: &[("cli", cli_or_all, "One CLI type, or all (default).")], body: None, ok: (200, "EnvironmentAnswer"), errors: &[400, 503]),
    op!("get" "/api/health/cli-versions", "cliVersions", "health", "The CLI versions seen over time.",
        query: NONE, body: None, ok: (200, "CliVersions"), errors: &[503]),
    op!("get" "/api/integrity/check", "integrityCheck", "integrity", "Check the store's consistency (503 when it is not).",
        query: NONE, body: None, ok: (200, "IntegrityReport"), errors: &[503]),
    op!("get" "/api/integrity/stats", "integrityStats", "integrity", "Row counts of the store.",
        query: NONE, body: None, ok: (200, "IntegrityStats"), errors: &[503]),
    op!("post" "/api/integrity/cleanup", "integrityCleanup", "integrity", "Repair what the check finds.",
        query: NONE, body: None, ok: (200, "IntegrityCleanup"), errors: &[503]),
];

/// Schema-only shapes of answers that the handlers build in place: they document what the
/// handlers send and are checked against it by the schema fuzzing in CI.
mod shapes {
    #![allow(dead_code)]
    use utoipa::ToSchema;

    /// `GET /agents/logs/status`.
    #[derive(ToSchema)]
    pub struct LogsStatus {
        logs: Vec<kokino_service::LogStatus>,
    }

    /// `GET /agents/circuits/status`.
    #[derive(ToSchema)]
    pub struct CircuitsStatus {
        circuits: Vec<kokino_core::breaker::CircuitStatus>,
    }

    /// `GET /api/metrics/events`.
    #[derive(ToSchema)]
    pub struct EventsList {
        events: Vec<kokino_store::Event>,
    }

    /// `GET /api/health/cli-versions`.
    #[derive(ToSchema)]
    pub struct CliVersions {
        versions: Vec<kokino_store::CliVersionRow>,
    }

    /// `GET /api/health/environment`: the whole report, or one CLI type's with `?cli=`.
    #[derive(ToSchema, serde::Serialize)]
    #[serde(untagged)]
    pub enum EnvironmentAnswer {
        All(kokino_service::EnvironmentReport),
        One(kokino_service::CliReport),
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Kokino broker API",
        description = "Runs AI coding-agent CLIs headless on behalf of HTTP clients. Every error is `{error, code, details}` with `code` from `ErrorCode`.",
        license(name = "MIT OR Apache-2.0"),
    ),
    components(schemas(
        kokino_api::ErrorBody,
        kokino_api::ErrorCode,
        kokino_api::StreamEvent,
        kokino_api::RegisterRequest,
        kokino_api::SessionsCleared,
        kokino_api::CircuitReset,
        kokino_api::CliDisabled,
        kokino_api::CliEnabled,
        kokino_api::AgentForced,
        kokino_api::AgentFallbackCleared,
        kokino_api::FallbacksCleared,
        kokino_api::ShadowDisabled,
        kokino_api::EventsDeleted,
        kokino_api::ExecuteRequest,
        kokino_api::ExecuteResponse,
        kokino_api::AgentView,
        kokino_api::SessionStatus,
        kokino_api::CancelResult,
        kokino_api::EndSessionResult,
        kokino_api::Health,
        kokino_api::ProcessStatus,
        kokino_api::AgentLogTail,
        kokino_core::AgentRecord,
        kokino_core::Conversation,
        kokino_core::Turn,
        kokino_core::CliType,
        kokino_core::CommMode,
        kokino_core::fallback::FallbackStatus,
        kokino_service::slo::CliFailures,
        kokino_service::slo::AgentFailures,
        kokino_service::slo::AgentLatency,
        kokino_service::slo::SloStatus,
        kokino_service::shadow::ShadowMetrics,
        kokino_service::shadow::Mismatch,
        kokino_service::shadow::Decision,
        kokino_store::ShadowResult,
        kokino_service::integrity::IntegrityReport,
        kokino_service::integrity::IntegrityStats,
        kokino_service::integrity::IntegrityCleanup,
        crate::routes::CliBody,
        crate::forward::MoveBody,
        crate::routes::ReasonBody,
        crate::routes::AgentReasonBody,
        crate::routes::AgentBody,
        crate::routes::DisableAllBody,
        crate::routes::RetentionBody,
        shapes::LogsStatus,
        shapes::CircuitsStatus,
        shapes::EventsList,
        shapes::CliVersions,
        kokino_api::ConversationDetail,
        shapes::EnvironmentAnswer,
    ))
)]
struct Components;

fn schema_ref(name: &str) -> Value {
    match name.strip_suffix("[]") {
        Some(item) => {
            json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}})
        }
        None => json!({"$ref": format!("#/components/schemas/{name}")}),
    }
}

/// The operations whose 503 carries their report (something failed) rather than an error body.
fn report_on_503(op: &Operation) -> Option<&'static str> {
    matches!(
        op.path,
        "/health" | "/api/health/environment" | "/api/integrity/check"
    )
    .then_some(op.ok.1)
}

fn error_response(status: u16) -> Value {
    let description = match status {
        400 => "The request is malformed or a value is out of range (`BAD_REQUEST`, `details.field`).",
        401 => "The bearer token is missing or wrong (`UNAUTHORIZED`).",
        403 => "The `Host` or `Origin` header is not allowed (`FORBIDDEN_HOST`, `FORBIDDEN_ORIGIN`).",
        404 => "No such agent, conversation or turn (`AGENT_NOT_FOUND`, `CONVERSATION_NOT_FOUND`, `TURN_NOT_FOUND`).",
        405 => "The method is not allowed on this path (`METHOD_NOT_ALLOWED`).",
        409 => "Conflict with the agent's state (`LOCK_TIMEOUT`, `EXECUTION_CANCELLED`, `CONFLICT`).",
        413 => "The body or the prompt is too large (`PAYLOAD_TOO_LARGE`).",
        500 => "A failure in the broker (`STORE_ERROR`, `INTERNAL`).",
        502 => "The CLI failed (`CLI_FAILED`).",
        503 => "Unavailable for now (`RATE_LIMITED`, `CIRCUIT_OPEN`, `NO_EXECUTION_MODE`, `STORE_UNAVAILABLE`, `SHUTTING_DOWN`); see `Retry-After`.",
        504 => "The execution timed out (`EXECUTION_TIMEOUT`).",
        _ => "An error.",
    };
    let mut resp = json!({
        "description": description,
        "headers": {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    });
    if status == 503 {
        resp["headers"]["Retry-After"] = json!({"$ref": "#/components/headers/Retry-After"});
    }
    resp
}

fn success_response(op: &Operation) -> Value {
    let (status, body) = op.ok;
    let mut resp = json!({
        "description": if status == 204 { "Done; no body." } else { "Success." },
        "headers": {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}},
    });
    let content = match body {
        "" => return resp,
        "text" => json!({"text/plain": {"schema": {"type": "string"}}}),
        "html" => json!({"text/html": {"schema": {"type": "string"}}}),
        "js" => json!({"text/javascript": {"schema": {"type": "string"}}}),
        "css" => json!({"text/css": {"schema": {"type": "string"}}}),
        "status-sse" => json!({"text/event-stream": {"schema": {
            "type": "string",
            "description": "Server-Sent Events: `snapshot` first (the `GET /api/status` body), then only what changed (`agents` upserts and removals, whole sections), every 500 ms; the stream lasts until the client or the broker goes away.",
        }}}),
        "sse" => json!({"text/event-stream": {"schema": {
            "type": "object",
            "description": "One Server-Sent Event: its name and its JSON data are one `StreamEvent` (the name is the `event` tag, the data the other fields).",
            "properties": {
                "event": {"type": "string", "enum": ["queued", "started", "assistant", "tool", "tool_result", "retry", "result", "error"]},
                "data": {"type": "string", "contentMediaType": "application/json"},
            },
        }}}),
        "object" => json!({"application/json": {"schema": {"type": "object"}}}),
        name => json!({"application/json": {"schema": schema_ref(name)}}),
    };
    resp["content"] = content;
    resp
}

fn path_parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let schema = match name {
                "id" => json!({"$ref": "#/components/schemas/AgentId"}),
                "cliType" => json!({"$ref": "#/components/schemas/CliType"}),
                _ => json!({"type": "string", "minLength": 1}),
            };
            json!({"name": name, "in": "path", "required": true, "schema": schema})
        })
        .collect()
}

fn operation(op: &Operation) -> Value {
    let mut params = path_parameters(op.path);
    params.extend(op.query.iter().map(|(name, schema, description)| {
        json!({"name": name, "in": "query", "required": false, "schema": schema(), "description": description})
    }));
    params.push(json!({"$ref": "#/components/parameters/X-Request-Id"}));
    let mut responses = Map::new();
    responses.insert(op.ok.0.to_string(), success_response(op));
    let public = matches!(op.path, "/health" | "/openapi.json");
    let mut statuses: Vec<u16> = op.errors.to_vec();
    statuses.extend([403, 500]);
    if !public {
        statuses.push(401);
    }
    statuses.sort_unstable();
    statuses.dedup();
    for status in statuses {
        let mut resp = error_response(status);
        if let (503, Some(report)) = (status, report_on_503(op)) {
            resp["description"] = json!("The report, with something failed; or an error body.");
            resp["content"]["application/json"]["schema"] = json!({"oneOf": [
                schema_ref(report), {"$ref": "#/components/schemas/ErrorBody"},
            ]});
        }
        responses.insert(status.to_string(), resp);
    }
    let mut value = json!({
        "operationId": op.id,
        "tags": [op.tag],
        "summary": op.summary,
        "parameters": params,
        "responses": responses,
    });
    if public {
        value["security"] = json!([]);
    }
    if let Some((schema, required)) = op.body {
        value["requestBody"] = json!({
            "required": required,
            "content": {"application/json": {"schema": schema_ref(schema)}},
        });
    }
    value
}

/// The document, as JSON (OpenAPI 3.1).
pub fn document() -> Value {
    let mut doc = serde_json::to_value(Components::openapi()).unwrap_or_default();
    doc["openapi"] = json!("3.1.0");
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    let mut paths = Map::new();
    for op in OPERATIONS {
        let item = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        item[op.method] = operation(op);
    }
    doc["paths"] = Value::Object(paths);
    let components = &mut doc["components"];
    components["schemas"]["AgentId"] =
        serde_json::to_value(<kokino_core::AgentId as utoipa::PartialSchema>::schema())
            .unwrap_or_default();
    components["securitySchemes"] = json!({
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "Needed on every endpoint but `/health` and `/openapi.json` (and `/metrics` with `public_metrics`) when the broker has a token."}
    });
    components["headers"] = json!({
        "X-Request-Id": {"description": "The request's id: the client's own when it sent one, else a new UUID.", "schema": {"type": "string"}},
        "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 1}},
    });
    components["parameters"] = json!({
        "X-Request-Id": {"name": "X-Request-Id", "in": "header", "required": false,
                         "description": "An id for the request, echoed in the answer and the logs.",
                         "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,128}$"}},
    });
    doc["security"] = json!([{"bearer": []}]);
    doc
}

/// The document as committed in `docs/reference/openapi.json` (pretty, with a final newline).
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The routes `routes.rs` registers, as (method, path) with the `{param}` names the
    /// document uses. Parsed from the source, because axum cannot list a router's routes.
    fn registered_routes() -> Vec<(String, String)> {
        // The status page registers its routes in its own module.
        let src = concat!(include_str!("routes.rs"), include_str!("status/mod.rs"));
        let mut out = Vec::new();
        let mut rest = src;
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            let start = rest.find('"').unwrap() + 1;
            let end = start + rest[start..].find('"').unwrap();
            let path = rest[start..end].to_owned();
            let close = rest.find("\n        .").unwrap_or(rest.len());
            let call = &rest[end..close];
            for method in ["get", "post", "delete", "put", "patch"] {
                for prefix in [
                    format!(" {method}("),
                    format!(".{method}("),
                    format!("\n{method}("),
                ] {
                    if call.contains(&prefix)
                        || call
                            .trim_start_matches([',', ' ', '\n'])
                            .starts_with(&format!("{method}("))
                    {
                        out.push((method.to_owned(), path.clone()));
                        break;
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn every_registered_route_is_documented_and_nothing_else() {
        let routes = registered_routes();
        assert!(routes.len() > 40, "{routes:?}");
        let rename = |p: &str| {
            p.replace("{cli_type}", "{cliType}")
                .replace("{turn_id}", "{turnId}")
                .replace("{conversation_id}", "{conversationId}")
        };
        let mut documented: Vec<(String, String)> = OPERATIONS
            .iter()
            .map(|o| (o.method.to_owned(), o.path.to_owned()))
            .collect();
        documented.sort();
        let registered: Vec<(String, String)> =
            routes.iter().map(|(m, p)| (m.clone(), rename(p))).collect();
        let mut registered = registered;
        registered.sort();
        assert_eq!(registered, documented);
        let doc = document();
        for op in OPERATIONS {
            assert!(
                doc["paths"][op.path][op.method].is_object(),
                "{} {}",
                op.method,
                op.path
            );
        }
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("\"$ref\":\"#/components/") {
            rest = &rest[i + "\"$ref\":\"#/components/".len()..];
            let end = rest.find('"').unwrap();
            let mut target = &doc["components"];
            for part in rest[..end].split('/') {
                target = &target[part];
            }
            assert!(!target.is_null(), "dangling $ref {}", &rest[..end]);
        }
    }

    #[test]
    fn the_error_codes_are_the_closed_set_the_handlers_use() {
        let doc = document();
        let listed: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        // Every code literal the crate passes to `ApiError::new` (or `forbidden`) is listed.
        for src in [
            include_str!("error.rs"),
            include_str!("routes.rs"),
            include_str!("access.rs"),
            include_str!("middleware.rs"),
            include_str!("extract.rs"),
        ] {
            for (i, _) in src.match_indices("StatusCode::") {
                let tail = &src[i..];
                let Some(comma) = tail.find(',') else {
                    continue;
                };
                let after = tail[comma + 1..].trim_start();
                if let Some(lit) = after.strip_prefix('"') {
                    let code = &lit[..lit.find('"').unwrap()];
                    if code.chars().all(|c| c.is_ascii_uppercase() || c == '_') && code.len() > 2 {
                        assert!(listed.contains(&code), "{code} is not in ErrorCode");
                    }
                }
            }
        }
        for code in [
            "FORBIDDEN_HOST",
            "FORBIDDEN_ORIGIN",
            "UNAUTHORIZED",
            "LOCK_TIMEOUT",
        ] {
            assert!(listed.contains(&code), "{code}");
        }
    }
}

#[cfg(test)]
mod committed {
    #[test]
    fn the_committed_document_is_the_generated_one() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/reference/openapi.json"
        );
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == super::document_text(),
            "docs/reference/openapi.json differs from the document the code generates: run `cargo xtask openapi` and commit the result"
        );
    }
}
