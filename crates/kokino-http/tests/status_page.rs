//! The status page's routes in-process: the real router over a real `Broker` on a temporary
//! SQLite file. Token and browser rules, the snapshot's shape, and the stream's first frames; the
//! page itself is driven in Chromium by the broker's end-to-end test `status_page.rs`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use futures::StreamExt;
use kokino_http::{AccessPolicy, AppState};
use kokino_service::{Broker, ServiceConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

const TOKEN: &str = "s3cret";

fn recorder() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("install the recorder")
    })
}

async fn app(token: Option<&str>) -> (tempfile::TempDir, Router, Broker) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kokino.db").display());
    let store = kokino_store::Store::open(&url).await.unwrap();
    let mut cfg = ServiceConfig::with_data_dir(dir.path());
    cfg.doctor_every = None;
    let broker = Broker::start(store, cfg).await.unwrap();
    let handle = recorder();
    let bind: SocketAddr = "127.0.0.1:5050".parse().unwrap();
    let state = AppState {
        broker: broker.clone(),
        metrics: Arc::new(move || handle.render()),
        token: token.map(Arc::from),
        public_metrics: false,
        access: Arc::new(AccessPolicy::new(bind, &[], &[])),
        body_limit: 1024 * 1024,
    };
    (dir, kokino_http::router(state), broker)
}

fn get(path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(header::HOST, "localhost:5050");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).unwrap()
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 16 * 1024 * 1024).await.unwrap();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

const BEARER: (&str, &str) = ("authorization", "Bearer s3cret");

#[tokio::test]
async fn the_page_is_public_its_data_needs_the_token() {
    let (_dir, app, _b) = app(Some(TOKEN)).await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/status/app.js", "text/javascript"),
        ("/status/app.css", "text/css"),
    ] {
        let (s, h, body) = send(&app, get(path, &[])).await;
        assert_eq!(s, StatusCode::OK, "{path}");
        assert!(h[header::CONTENT_TYPE].to_str().unwrap().starts_with(kind));
        assert!(!body.is_empty());
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
    let (_, h, html) = send(&app, get("/", &[])).await;
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert!(html.contains("<title>Kokino broker status</title>"));

    for path in ["/api/status", "/api/status/stream"] {
        let (s, _, body) = send(&app, get(path, &[])).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["code"],
            "UNAUTHORIZED"
        );
        let wrong = [("authorization", "Bearer nope")];
        assert_eq!(send(&app, get(path, &wrong)).await.0, 401, "{path}");
    }
    let (s, _, body) = send(&app, get("/api/status", &[BEARER])).await;
    assert_eq!(s, StatusCode::OK, "{body}");

    // Another site can neither load the page nor read its data; a rebound name is refused.
    let evil = [("origin", "http://evil.example"), BEARER];
    let (s, _, body) = send(&app, get("/", &evil)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, _, _) = send(&app, get("/api/status", &evil)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let rebound = Request::builder()
        .uri("/")
        .header(header::HOST, "evil.example:5050")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, rebound).await.0, StatusCode::FORBIDDEN);
    // The page's own requests carry its origin and pass.
    let own = [("origin", "http://127.0.0.1:5050"), BEARER];
    assert_eq!(send(&app, get("/api/status", &own)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_snapshot_joins_agents_sessions_breakers_and_fallback() {
    let (dir, app, b) = app(None).await;
    for (id, cli) in [("b-agent", "codex"), ("a-agent", "claude-code")] {
        let spec = kokino_http::agent_spec_from_json(
            json!({"agentId": id, "type": cli, "cwd": dir.path().display().to_string()}),
        )
        .unwrap();
        b.register_agent(spec).await.unwrap();
    }
    b.disable_cli("codex".parse().unwrap(), "codex is down for maintenance")
        .await
        .unwrap();
    let (s, _, body) = send(&app, get("/api/status", &[])).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let snap: Value = serde_json::from_str(&body).unwrap();
    let tmux = snap["broker"]["tmuxAvailable"].as_bool().unwrap();
    assert_eq!(snap["broker"]["instanceId"], b.instance_id());
    let agents = snap["agents"].as_array().unwrap();
    let ids: Vec<&str> = agents
        .iter()
        .map(|a| a["agentId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a-agent", "b-agent"], "sorted by id");
    let a = &agents[0];
    assert_eq!(a["type"], "claude-code");
    assert_eq!(a["effectiveMode"], "headless");
    assert_eq!(a["modeNote"], Value::Null);
    assert_eq!(a["execution"], Value::Null);
    assert_eq!(a["locked"], false);
    assert_eq!(a["circuit"], Value::Null, "no breaker before the first run");
    // The disabled CLI reroutes its agent to tmux (or to nothing, without tmux), with the reason.
    let codex = &agents[1];
    assert_eq!(
        codex["effectiveMode"],
        if tmux { json!("tmux") } else { Value::Null }
    );
    assert!(codex["modeNote"]
        .as_str()
        .unwrap()
        .contains("codex is down for maintenance"));
    assert_eq!(
        snap["fallback"]["disabledCLIs"][0]["reason"],
        "codex is down for maintenance"
    );
    for section in ["executions", "circuits", "events", "problems"] {
        assert!(snap[section].is_array(), "{section}: {snap}");
    }
    assert!(snap["slo"]["availability"]["target"].is_number(), "{snap}");
}

/// Reads SSE frames (`event` name, parsed data) from a streaming body.
struct Frames {
    body: axum::body::BodyDataStream,
    buf: String,
}

impl Frames {
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(n) = line.strip_prefix("event:") {
                        name = n.trim().to_owned();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if name.is_empty() {
                    continue; // a keep-alive comment
                }
                return (name, serde_json::from_str(&data).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("a frame within 10 s")
                .expect("the stream stays open")
                .unwrap();
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test]
async fn the_stream_sends_the_snapshot_then_only_what_changed() {
    let (dir, app, b) = app(None).await;
    let resp = app
        .clone()
        .oneshot(get("/api/status/stream", &[]))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut frames = Frames {
        body: resp.into_body().into_data_stream(),
        buf: String::new(),
    };
    let (name, snap) = frames.next().await;
    assert_eq!(name, "snapshot");
    assert_eq!(snap["agents"], json!([]));

    let spec = kokino_http::agent_spec_from_json(
        json!({"agentId": "late", "type": "gemini", "cwd": dir.path().display().to_string()}),
    )
    .unwrap();
    b.register_agent(spec).await.unwrap();
    // The new agent arrives as an upsert of its row alone; then a forced fallback changes the
    // fallback section (and the agent's row with it).
    let (name, diff) = frames.next().await;
    assert_eq!(name, "agents", "{diff}");
    assert_eq!(diff["remove"], json!([]));
    assert_eq!(diff["upsert"].as_array().unwrap().len(), 1);
    assert_eq!(diff["upsert"][0]["agentId"], "late");

    b.disable_cli("gemini".parse().unwrap(), "quota")
        .await
        .unwrap();
    let mut seen = std::collections::BTreeMap::new();
    while !(seen.contains_key("fallback") && seen.contains_key("agents")) {
        let (name, data) = frames.next().await;
        seen.insert(name, data);
    }
    assert_eq!(seen["fallback"]["disabledCLIs"][0]["cliType"], "gemini");
    assert!(seen["agents"]["upsert"][0]["modeNote"]
        .as_str()
        .unwrap()
        .contains("quota"));

    assert!(b.delete_agent("late", true).await.unwrap());
    loop {
        let (name, data) = frames.next().await;
        if name == "agents" {
            assert_eq!(data, json!({"upsert": [], "remove": ["late"]}));
            break;
        }
    }
}
