//! Time-based maintenance under tokio's paused clock: no real sleeps, hours pass in an instant.

use std::sync::Arc;
use std::time::Duration;

use kokino_core::clock::TokioClock;
use kokino_core::{AgentId, AgentSpec, CliType, CommMode};
use kokino_service::{Broker, ServiceConfig};
use kokino_store::{EventFilter, Store};

fn spec(id: &str) -> AgentSpec {
    AgentSpec {
        agent_id: AgentId::parse(id).unwrap(),
        cli_type: CliType::Codex,
        comm_mode: CommMode::Headless,
        cwd: None,
        model: None,
        role: None,
        system_prompt: None,
        timeout_ms: None,
        max_memory_mb: None,
        env: Default::default(),
        binary: None,
        extra_args: vec![],
        metadata: Default::default(),
        rate_limit: None,
    }
}

/// Moves tokio's clock forward by `by` in an instant, firing every timer due meanwhile, then
/// lets real time run again. The jobs under test do real IO on a SQLite file, which a paused
/// clock would race (tokio auto-advances while the database thread works), so time is paused
/// only for the jump itself.
async fn jump(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// Real-time polling for the effects of a job that was just triggered.
async fn until<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

#[tokio::test]
async fn the_hourly_sweep_ends_sessions_idle_for_more_than_a_day() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}/kokino.db", dir.path().display()))
        .await
        .unwrap();
    let cfg = ServiceConfig::with_data_dir(dir.path());
    let broker = Broker::start_with_clock(store.clone(), cfg, Arc::new(TokioClock::new()))
        .await
        .unwrap();
    let old = AgentId::parse("old").unwrap();
    store.upsert_agent(&spec("old")).await.unwrap();
    let conv = store
        .create_session(&old, CliType::Codex, None)
        .await
        .unwrap()
        .conversation_id;
    store
        .set_cli_session(&old, &conv, "thread-1")
        .await
        .unwrap();
    broker.spawn_maintenance();

    // Right now the session is active: a sweep keeps it.
    assert!(broker.sweep_stale_sessions().await.unwrap().is_empty());

    // 23 hours later: the hourly sweeps have run, and nothing is more than 24 h idle.
    jump(Duration::from_secs(23 * 3600)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(store.get_session(&old).await.unwrap().is_some());

    // Two more hours: the sweep at hour 24 or 25 ends it.
    jump(Duration::from_secs(2 * 3600)).await;
    assert!(
        until(|| async { store.get_session(&old).await.unwrap().is_none() }).await,
        "the hourly sweep ended the stale session"
    );
    let (conv, _) = store.get_conversation(&conv).await.unwrap().unwrap();
    assert_eq!(
        conv.session_id.as_deref(),
        Some("thread-1"),
        "the CLI session id stays in history"
    );
    assert_eq!(conv.status, "ended");

    let filter = EventFilter {
        event_type: Some("SESSION_ENDED".into()),
        ..Default::default()
    };
    assert!(until(|| async { store.list_events(&filter).await.unwrap().len() == 1 }).await);
    let events = store.list_events(&filter).await.unwrap();
    assert_eq!(events[0].metadata["reason"], "stale");
    broker.shutdown().await;
}
