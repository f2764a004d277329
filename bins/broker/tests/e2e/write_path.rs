//! The write path under load (SQLite): executions that finish together share commits, nothing
//! they wrote is lost, and the read-only endpoints operators poll never wait behind a writer.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::{Connection, SqliteConnection};

use crate::common::{assert_none_left, World};

/// A counter's value in the Prometheus text exposition, 0 when absent.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// 48 executions fired at once over 8 agents: all answer 200, every conversation holds its
/// turns in order with no gap, and the store's counters show that commits were shared.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_executions_share_commits_and_lose_nothing() {
    const AGENTS: usize = 8;
    const PER_AGENT: usize = 6;
    let w = World::new();
    let b = Arc::new(w.start());
    for i in 0..AGENTS {
        w.register(&b, &format!("gc-{i}"), "claude-code", json!({}))
            .await;
    }
    let (_, before) = b.get_text("/metrics").await;
    let mut handles = Vec::new();
    for n in 0..AGENTS * PER_AGENT {
        let b = b.clone();
        handles.push(tokio::spawn(async move {
            b.execute(
                &format!("gc-{}", n % AGENTS),
                &format!("fake:sleep=0.05 prompt {n}"),
            )
            .await
        }));
    }
    for h in handles {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    for i in 0..AGENTS {
        let (_, conv) = b.get(&format!("/agents/gc-{i}/conversation")).await;
        let turns = conv["turns"].as_array().unwrap();
        let seqs: Vec<i64> = turns.iter().map(|t| t["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, (1..=2 * PER_AGENT as i64).collect::<Vec<_>>());
        let answers = turns.iter().filter(|t| t["role"] == "assistant").count();
        assert_eq!(answers, PER_AGENT, "gc-{i}: every answer is stored");
    }
    let (_, after) = b.get_text("/metrics").await;
    let writes = counter(&after, "kokino_store_grouped_writes_total")
        - counter(&before, "kokino_store_grouped_writes_total");
    let commits = counter(&after, "kokino_store_group_commits_total")
        - counter(&before, "kokino_store_group_commits_total");
    // Each execution writes at least its begin and its finish.
    assert!(
        writes >= (2 * AGENTS * PER_AGENT) as f64,
        "grouped writes {writes}"
    );
    assert!(
        commits < writes,
        "{writes} writes in {commits} commits: none was shared"
    );
}

/// Another connection holds SQLite's write lock: `/health`, `/metrics` and the status page's
/// snapshot still answer at once (they read through reader connections, never the writer),
/// while an execution waits for the lock and completes once it is released.
#[tokio::test(flavor = "multi_thread")]
async fn read_endpoints_never_wait_behind_the_writer() {
    let w = World::new();
    let b = Arc::new(w.start());
    w.register(&b, "writer", "claude-code", json!({})).await;
    let (status, _) = b.execute("writer", "first").await;
    assert_eq!(status, 200);

    let url = format!("sqlite://{}", w.data_dir().join("kokino.db").display());
    let mut blocker = SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();

    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.execute("writer", "second").await })
    };
    // The execution is queued behind the lock: it has not answered (its begin cannot commit).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the execution did not wait for the write lock"
    );

    for path in ["/health", "/metrics", "/api/status"] {
        let (status, body) = b.get_text(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(
            !waiting.is_finished(),
            "{path} answered only after the writer was free"
        );
    }
    let (_, health) = b.get("/health").await;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["agents"], 1);

    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["content"], Value::from("echo: second"));
}

/// A plain headless run starts its CLI while its user turn is being stored, and the CLI gets
/// its prompt only once that write has committed. When the write fails, the caller gets the
/// store's error, the CLI (already started) is stopped without ever reading the prompt, nothing
/// of the execution is recorded, and the agent runs again at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_user_turn_write_stops_the_started_cli_before_it_reads_the_prompt() {
    let w = World::new();
    let b = w.start();
    w.register(&b, "gated", "claude-code", json!({})).await;
    let (status, v) = b.execute("gated", "first").await;
    assert_eq!(status, 200, "{v}");

    // Every user turn that says "refuse-me" fails to insert, inside the broker's own write.
    let url = format!("sqlite://{}", w.data_dir().join("kokino.db").display());
    let mut db = SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_turn BEFORE INSERT ON turns WHEN NEW.content LIKE '%refuse-me%' \
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    )
    .execute(&mut db)
    .await
    .unwrap();

    let starts = || {
        w.witness_lines()
            .iter()
            .filter(|(kind, ..)| kind == "start")
            .count()
    };
    let started_before = starts();
    // The write waits behind another writer for half a second: long enough for a CLI that had
    // its prompt to answer (and record its turn) before the write fails.
    let mut blocker = SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let b = Arc::new(b);
    let refused = {
        let b = b.clone();
        tokio::spawn(async move { b.execute("gated", "refuse-me").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!refused.is_finished(), "the write did not wait");
    assert_eq!(starts(), started_before + 1, "the CLI starts meanwhile");
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    let (status, v) = refused.await.unwrap();
    assert_eq!(status, 500, "{v}");
    assert_eq!(v["code"], "STORE_ERROR", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("injected failure"),
        "{v}"
    );
    // The CLI had started (its start overlaps the write), and is gone.
    assert_eq!(starts(), started_before + 1);
    assert_none_left(&w, &b, Duration::from_secs(5), "after the refusal").await;

    // Had the stopped CLI read its prompt, its session would hold one more user turn.
    let (status, v) = b.execute("gated", "fake:turns after").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["content"], "echo: after turns=1", "{v}");
    let executions: Vec<(String, String)> =
        sqlx::query_as("SELECT state, COALESCE(outcome, '') FROM executions ORDER BY started_at")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(
        executions,
        vec![
            ("finished".to_owned(), "success".to_owned()),
            ("finished".to_owned(), "success".to_owned())
        ]
    );
    let refused: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM turns WHERE content LIKE '%refuse-me%'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(refused, 0);
}
