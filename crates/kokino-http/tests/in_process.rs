//! The HTTP layer in-process: the real router over a real `Broker` on a temporary SQLite file,
//! called with `tower::ServiceExt::oneshot` (no socket, no process). Routing, validation,
//! authentication and the cross-site checks live here; what needs real processes (executions,
//! signals, connections) stays in the broker's end-to-end tests.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use kokino_http::{AccessPolicy, AppState};
use kokino_service::{Broker, ServiceConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

const BIND: &str = "127.0.0.1:5050";

/// One Prometheus recorder for the whole test binary (a recorder is process-global).
fn recorder() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("install the recorder")
    })
}

struct Harness {
    _dir: tempfile::TempDir,
    app: Router,
    broker: Broker,
}

#[derive(Default)]
struct Options {
    token: Option<&'static str>,
    public_metrics: bool,
    allowed_binaries: Vec<String>,
    origins: Vec<String>,
}

async fn harness(opts: Options) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kokino.db").display());
    let store = kokino_store::Store::open(&url).await.unwrap();
    let mut cfg = ServiceConfig::with_data_dir(dir.path());
    // The doctor would start real CLI probes; these tests are about HTTP only.
    cfg.doctor_every = None;
    cfg.allowed_binaries =
        kokino_core::exec_policy::BinaryAllowlist::new(&opts.allowed_binaries).unwrap();
    let broker = Broker::start(store, cfg).await.unwrap();
    let handle = recorder();
    let bind: SocketAddr = BIND.parse().unwrap();
    let state = AppState {
        broker: broker.clone(),
        metrics: Arc::new(move || handle.render()),
        token: opts.token.map(Arc::from),
        public_metrics: opts.public_metrics,
        access: Arc::new(AccessPolicy::new(bind, &[], &opts.origins)),
        body_limit: 1024 * 1024,
    };
    Harness {
        _dir: dir,
        app: kokino_http::router(state),
        broker,
    }
}

/// A request as curl would send it to `localhost:5050`, plus `headers`.
fn request(
    method: Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "localhost:5050");
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body).unwrap()
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 * 1024 * 1024)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

fn assert_error(status: StatusCode, body: &Value, want: u16, code: &str) {
    assert_eq!(status.as_u16(), want, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert!(body["details"].is_object(), "{body}");
}

async fn agents(h: &Harness) -> Value {
    let (s, v) = call(&h.app, request(Method::GET, "/agents", None, &[])).await;
    assert_eq!(s, 200, "{v}");
    v
}

#[tokio::test]
async fn routing_answers_json_for_unknown_paths_and_methods() {
    let h = harness(Options::default()).await;
    let (s, v) = call(&h.app, request(Method::GET, "/nope", None, &[])).await;
    assert_error(s, &v, 404, "NOT_FOUND");
    let (s, v) = call(&h.app, request(Method::DELETE, "/health", None, &[])).await;
    assert_error(s, &v, 405, "METHOD_NOT_ALLOWED");
    let (s, v) = call(&h.app, request(Method::GET, "/health", None, &[])).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(&h.app, request(Method::GET, "/agents/bad%20id", None, &[])).await;
    assert_error(s, &v, 400, "BAD_REQUEST");
    assert_eq!(v["details"]["field"], "agentId");
}

#[tokio::test]
async fn register_validates_before_storing_anything() {
    let h = harness(Options::default()).await;
    let cwd = h._dir.path().display().to_string();
    let cases = [
        (json!({"agentId": "a", "type": "vim"}), "type"),
        (
            json!({"agentId": "a", "type": "codex", "timeoutMs": 0}),
            "timeoutMs",
        ),
        (
            json!({"agentId": "a", "type": "codex", "timeoutMs": u64::MAX}),
            "timeoutMs",
        ),
        (
            json!({"agentId": "a", "type": "codex", "maxMemoryMB": u64::MAX}),
            "maxMemoryMB",
        ),
        (
            json!({"agentId": "a", "type": "codex", "cwd": "/no/such/dir"}),
            "cwd",
        ),
        (
            json!({"agentId": "a", "type": "codex", "extra": 1}),
            "extra",
        ),
    ];
    for (body, field) in cases {
        let (s, v) = call(
            &h.app,
            request(Method::POST, "/agents/register", Some(body.clone()), &[]),
        )
        .await;
        assert_error(s, &v, 400, "BAD_REQUEST");
        assert!(
            v["details"]["field"] == field || v["error"].as_str().unwrap().contains(field),
            "{body} → {v}"
        );
    }
    let (s, v) = call(
        &h.app,
        request(
            Method::POST,
            "/agents/register",
            Some(json!({"agentId": "ok", "type": "codex", "cwd": cwd})),
            &[],
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(agents(&h).await.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn only_the_operator_decides_what_runs() {
    let allowed = tempfile::tempdir().unwrap();
    let allowed_dir = allowed.path().display().to_string();
    let h = harness(Options {
        allowed_binaries: vec![allowed_dir.clone()],
        ..Options::default()
    })
    .await;
    // The attack of issue 12: any page could make the broker run a shell.
    for binary in [
        "/bin/sh",
        "sh",
        "../bin/sh",
        &format!("{allowed_dir}/../../bin/sh"),
        &format!("{allowed_dir}-evil/claude"),
    ] {
        let (s, v) = call(
            &h.app,
            request(
                Method::POST,
                "/agents/register",
                Some(json!({"agentId": "x", "type": "codex", "binary": binary})),
                &[],
            ),
        )
        .await;
        assert_error(s, &v, 400, "BAD_REQUEST");
        assert_eq!(v["details"]["field"], "binary", "{binary}: {v}");
    }
    // Loader and interpreter hooks in `env`.
    for var in [
        "LD_PRELOAD",
        "DYLD_INSERT_LIBRARIES",
        "NODE_OPTIONS",
        "BASH_ENV",
        "ENV",
        "PYTHONPATH",
    ] {
        let (s, v) = call(
            &h.app,
            request(
                Method::POST,
                "/agents/register",
                Some(json!({"agentId": "x", "type": "codex", "env": {var: "/tmp/evil.so"}})),
                &[],
            ),
        )
        .await;
        assert_error(s, &v, 400, "BAD_REQUEST");
        assert_eq!(v["details"]["field"], "env", "{var}: {v}");
        assert!(v["error"].as_str().unwrap().contains(var), "{v}");
    }
    assert_eq!(agents(&h).await, json!([]), "nothing was registered");
    // What the operator allowed, the CLI type's own name, and ordinary variables are fine.
    for (id, binary) in [
        ("listed", format!("{allowed_dir}/codex")),
        ("default-name", "codex".to_owned()),
    ] {
        let (s, v) = call(
            &h.app,
            request(
                Method::POST,
                "/agents/register",
                Some(json!({"agentId": id, "type": "codex", "binary": binary,
                            "env": {"HOME": "/tmp", "OPENAI_API_KEY": "k"}})),
                &[],
            ),
        )
        .await;
        assert_eq!(s, 200, "{id}: {v}");
    }
}

#[tokio::test]
async fn numbers_are_range_checked_in_every_form() {
    let h = harness(Options::default()).await;
    // Regression: this body once overflowed the date arithmetic and the handler panicked,
    // dropping the connection.
    let (s, v) = call(
        &h.app,
        request(
            Method::POST,
            "/api/metrics/cleanup",
            Some(json!({"retentionDays": 100_000_000})),
            &[],
        ),
    )
    .await;
    assert_error(s, &v, 400, "BAD_REQUEST");
    assert_eq!(v["details"]["field"], "retentionDays");
    for body in [json!({"retentionDays": 0}), json!({"retentionDays": -1})] {
        let (s, v) = call(
            &h.app,
            request(Method::POST, "/api/metrics/cleanup", Some(body), &[]),
        )
        .await;
        assert_error(s, &v, 400, "BAD_REQUEST");
    }
    let (s, v) = call(
        &h.app,
        request(
            Method::POST,
            "/api/metrics/cleanup?days=100000000",
            Some(json!({})),
            &[],
        ),
    )
    .await;
    assert_error(s, &v, 400, "BAD_REQUEST");
    assert_eq!(v["details"]["field"], "days");
    let (s, v) = call(
        &h.app,
        request(
            Method::POST,
            "/api/metrics/cleanup",
            Some(json!({"retentionDays": 36500})),
            &[],
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["retentionDays"], 36500);

    // Execute bodies (plain and streaming), before the agent is even looked up.
    for path in ["/agents/a/execute", "/agents/a/execute/stream"] {
        for (body, field) in [
            (json!({"prompt": "p", "timeoutMs": u64::MAX}), "timeoutMs"),
            (
                json!({"prompt": "p", "lockTimeoutMs": u64::MAX}),
                "lockTimeoutMs",
            ),
        ] {
            let (s, v) = call(&h.app, request(Method::POST, path, Some(body), &[])).await;
            assert_error(s, &v, 400, "BAD_REQUEST");
            assert_eq!(v["details"]["field"], field, "{path}: {v}");
        }
    }
    // Query parameters.
    for path in [
        "/api/metrics/events?limit=0",
        "/api/metrics/events?limit=99999999999",
        "/api/metrics/events?since=99999999999999999",
        "/api/metrics/failures/by-cli?hours=100000",
        "/api/shadow-mode/metrics?days=-1",
        "/api/shadow-mode/mismatches?limit=1001",
        "/agents/a/logs?lines=0",
    ] {
        let (s, v) = call(&h.app, request(Method::GET, path, None, &[])).await;
        assert_error(s, &v, 400, "BAD_REQUEST");
    }
}

#[tokio::test]
async fn cross_site_requests_are_refused() {
    let h = harness(Options {
        origins: vec!["https://dash.example.com".into()],
        ..Options::default()
    })
    .await;
    let body = json!({"agentId": "x", "type": "codex"}).to_string();
    // A page on another origin posting a `text/plain` body (no CORS preflight).
    let req = Request::builder()
        .method(Method::POST)
        .uri("/agents/register")
        .header(header::HOST, "127.0.0.1:5050")
        .header(header::ORIGIN, "http://evil.example")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(body.clone()))
        .unwrap();
    let (s, v) = call(&h.app, req).await;
    assert_error(s, &v, 403, "FORBIDDEN_ORIGIN");
    // DNS rebinding: the page's own name in `Host`.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/agents/register")
        .header(header::HOST, "evil.example")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body.clone()))
        .unwrap();
    let (s, v) = call(&h.app, req).await;
    assert_error(s, &v, 403, "FORBIDDEN_HOST");
    for headers in [
        &[("origin", "null")][..],
        &[("origin", "http://localhost:3000")][..],
        &[("sec-fetch-site", "cross-site")][..],
    ] {
        let (s, v) = call(
            &h.app,
            request(Method::GET, "/api/health/environment", None, headers),
        )
        .await;
        assert_error(s, &v, 403, "FORBIDDEN_ORIGIN");
    }
    assert_eq!(agents(&h).await, json!([]), "nothing was registered");
    // curl (no Origin, a loopback Host), the broker's own origin and a configured one pass.
    for headers in [
        &[][..],
        &[("origin", "http://localhost:5050")][..],
        &[
            ("origin", "http://127.0.0.1:5050"),
            ("sec-fetch-site", "same-origin"),
        ][..],
        &[("origin", "https://dash.example.com")][..],
    ] {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/agents/register")
            .header(header::HOST, "127.0.0.1:5050");
        let req = headers
            .iter()
            .fold(req, |r, (k, v)| r.header(*k, *v))
            .body(Body::from(body.clone()))
            .unwrap();
        let (s, v) = call(&h.app, req).await;
        assert_eq!(s, 200, "{headers:?}: {v}");
    }
}

#[tokio::test]
async fn a_token_guards_every_read_but_health() {
    let h = harness(Options {
        token: Some("s3cret"),
        ..Options::default()
    })
    .await;
    for path in [
        "/agents",
        "/agents/a",
        "/agents/a/conversation",
        "/agents/a/conversations",
        "/agents/a/conversation/turns/t",
        "/conversations/c",
        "/api/metrics/events",
        "/agents/a/logs",
        "/agents/sessions/status",
        "/api/health/environment",
        "/metrics",
    ] {
        let (s, v) = call(&h.app, request(Method::GET, path, None, &[])).await;
        assert_error(s, &v, 401, "UNAUTHORIZED");
        let (s, v) = call(
            &h.app,
            request(Method::GET, path, None, &[("authorization", "Bearer nope")]),
        )
        .await;
        assert_error(s, &v, 401, "UNAUTHORIZED");
    }
    let (s, _) = call(&h.app, request(Method::GET, "/health", None, &[])).await;
    assert_eq!(s, 200);
    let (s, v) = call(
        &h.app,
        request(
            Method::GET,
            "/agents",
            None,
            &[("authorization", "Bearer s3cret")],
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");

    let open = harness(Options {
        token: Some("s3cret"),
        public_metrics: true,
        ..Options::default()
    })
    .await;
    let (s, _) = call(&open.app, request(Method::GET, "/metrics", None, &[])).await;
    assert_eq!(s, 200, "--public-metrics opens /metrics");
    let (s, _) = call(&open.app, request(Method::GET, "/agents", None, &[])).await;
    assert_eq!(s, 401, "and nothing else");
}

#[tokio::test]
async fn a_panicking_handler_answers_500_json_and_is_counted() {
    let handle = recorder();
    let app: Router = kokino_http::catch_panics(
        Router::new().route("/boom", get(|| async { panic!("boom") as &str })),
    );
    let before = panics(&handle.render());
    let (s, v) = call(&app, request(Method::GET, "/boom", None, &[])).await;
    assert_error(s, &v, 500, "INTERNAL");
    assert!(
        panics(&handle.render()) >= before + 1.0,
        "{}",
        handle.render()
    );
    // The real router carries the same layer: a broker route still answers afterwards.
    let h = harness(Options::default()).await;
    let (s, _) = call(&h.app, request(Method::GET, "/health", None, &[])).await;
    assert_eq!(s, 200);
    drop(h.broker);
}

fn panics(text: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with("kokino_http_panics_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
