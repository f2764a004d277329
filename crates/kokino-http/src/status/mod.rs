//! The live status page: `GET /` and its two assets, `GET /api/status` (one snapshot) and
//! `GET /api/status/stream` (the snapshot, then what changed, as Server-Sent Events).
//!
//! The page is three files built into the binary (`assets/status/`): no CDN, no build step,
//! nothing fetched from the network at run time. The page and its assets are served without the
//! token, because a browser cannot attach `Authorization` to a navigation and the files hold no
//! data; everything the page shows comes from `/api/status*`, which need the token like every
//! other endpoint. The page asks for the token when it gets a 401, keeps it in `sessionStorage`
//! (gone when the tab closes) and sends it as `Authorization: Bearer` on its own requests, which
//! is also why it reads the stream with `fetch` rather than `EventSource` (which cannot send
//! headers).
//!
//! The stream is a periodic snapshot, diffed: every [`TICK`] the handler gathers the snapshot
//! again and sends only the sections whose JSON changed, and for agents only the rows that
//! changed. An idle broker therefore costs a viewer two small store reads per tick and sends
//! nothing but keep-alives; a busy one sends the rows of the agents that are running.

mod snapshot;

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::Stream;
use serde::Serialize;
use tokio::sync::mpsc;

use snapshot::{AgentRow, StatusSnapshot};

use crate::AppState;

/// How often the stream looks for changes.
const TICK: Duration = Duration::from_millis(500);
/// Every how many ticks the SLO status and the broker's health are recomputed.
const SLOW_EVERY: u32 = 20;

const INDEX_HTML: &str = include_str!("../../assets/status/index.html");
const APP_JS: &str = include_str!("../../assets/status/app.js");
const APP_CSS: &str = include_str!("../../assets/status/app.css");

/// The page's paths, which need no token (they are the same static files for everyone).
const PUBLIC_PATHS: [&str; 3] = ["/", "/status/app.js", "/status/app.css"];

/// Whether `path` is one of the page's static files, served without the token.
pub fn is_public_asset(path: &str) -> bool {
    PUBLIC_PATHS.contains(&path)
}

/// The page's routes, merged into the API router (under the same middleware).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/status/app.js", get(app_js))
        .route("/status/app.css", get(app_css))
        .route("/api/status", get(status))
        .route("/api/status/stream", get(stream))
}

/// The page may load scripts, styles and data from its own origin only, and may not be framed
/// (clickjacking of the operator buttons).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

async fn index() -> Response {
    let mut resp = asset("text/html; charset=utf-8", INDEX_HTML);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// `GET /api/status`: everything the page shows, once.
async fn status(State(s): State<AppState>) -> Json<StatusSnapshot> {
    let mut collector = snapshot::Collector::default();
    Json(collector.collect(&s.broker, true).await)
}

/// `GET /api/status/stream`: `snapshot` first, then `agents` (`{upsert, remove}`), `executions`,
/// `circuits`, `fallback`, `slo`, `events`, `broker` and `problems` whenever they change.
async fn stream(State(s): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // A small buffer: a viewer that does not read holds the producer, not the broker's memory.
    let (tx, rx) = mpsc::channel::<Event>(4);
    tokio::spawn(produce(s, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|ev| (Ok(ev), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// What was last sent, as JSON text, so that only changes go out.
#[derive(Default)]
struct Sent {
    agents: HashMap<String, String>,
    sections: HashMap<&'static str, String>,
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// Gathers and sends until the viewer leaves or the broker shuts down.
async fn produce(s: AppState, tx: mpsc::Sender<Event>) {
    let broker = &s.broker;
    let mut collector = snapshot::Collector::default();
    let mut sent = Sent::default();
    let first = collector.collect(broker, true).await;
    for row in &first.agents {
        sent.agents.insert(row.agent_id.clone(), json(row));
    }
    for (name, text) in sections(&first) {
        sent.sections.insert(name, text);
    }
    if tx
        .send(Event::default().event("snapshot").data(json(&first)))
        .await
        .is_err()
    {
        return;
    }
    drop(first);
    let mut ticks: u32 = 0;
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            // Nobody reads any more: stop gathering at once rather than at the next send.
            _ = tx.closed() => return,
        }
        if broker.is_shutting_down() {
            return;
        }
        ticks = ticks.wrapping_add(1);
        let snap = collector
            .collect(broker, ticks.is_multiple_of(SLOW_EVERY))
            .await;
        let mut out = Vec::new();
        if let Some(diff) = agents_diff(&mut sent.agents, &snap.agents) {
            out.push(Event::default().event("agents").data(diff));
        }
        for (name, text) in sections(&snap) {
            if sent.sections.get(name) != Some(&text) {
                out.push(Event::default().event(name).data(text.clone()));
                sent.sections.insert(name, text);
            }
        }
        for ev in out {
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    }
}

/// Every section but the agents, as JSON text.
fn sections(snap: &StatusSnapshot) -> [(&'static str, String); 7] {
    [
        ("broker", json(&snap.broker)),
        ("executions", json(&snap.executions)),
        ("circuits", json(&snap.circuits)),
        ("fallback", json(&snap.fallback)),
        ("slo", json(&snap.slo)),
        ("events", json(&snap.events)),
        ("problems", json(&snap.problems)),
    ]
}

/// `{"upsert": [rows that are new or changed], "remove": [ids gone]}`, or `None` when nothing
/// changed. Rows are sent as the JSON text already produced for the comparison.
fn agents_diff(sent: &mut HashMap<String, String>, rows: &[AgentRow]) -> Option<String> {
    let mut upsert = Vec::new();
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    for row in rows {
        seen.insert(row.agent_id.as_str());
        let text = json(row);
        if sent.get(&row.agent_id) != Some(&text) {
            sent.insert(row.agent_id.clone(), text.clone());
            upsert.push(text);
        }
    }
    let remove: Vec<String> = sent
        .keys()
        .filter(|id| !seen.contains(id.as_str()))
        .cloned()
        .collect();
    for id in &remove {
        sent.remove(id);
    }
    if upsert.is_empty() && remove.is_empty() {
        return None;
    }
    Some(format!(
        "{{\"upsert\":[{}],\"remove\":{}}}",
        upsert.join(","),
        json(&remove)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_assets_are_the_only_public_paths() {
        for p in ["/", "/status/app.js", "/status/app.css"] {
            assert!(is_public_asset(p), "{p}");
        }
        for p in [
            "/api/status",
            "/api/status/stream",
            "/index.html",
            "/status/",
        ] {
            assert!(!is_public_asset(p), "{p}");
        }
    }

    #[test]
    fn the_page_fetches_nothing_from_elsewhere() {
        // No CDN and no network at run time: every URL the page names is its own.
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("app.css", APP_CSS),
        ] {
            for scheme in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(scheme), "{name} names {scheme}");
            }
        }
        assert!(INDEX_HTML.contains("/status/app.js"));
        assert!(INDEX_HTML.contains("/status/app.css"));
        assert!(
            !APP_JS.contains("innerHTML"),
            "the page writes text, never markup"
        );
    }
}
