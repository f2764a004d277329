//! The SLO and metrics aggregates, on a real SQLite file with executions of known outcomes and
//! durations.

use chrono::{Duration, Utc};
use kokino_core::{AgentId, AgentSpec, CliType, CommMode, NewExecution, OutcomeClass, Role};
use kokino_store::{FinishExecution, NewEvent, NewTurn, Store};
use serde_json::json;

fn spec(id: &str, cli: CliType) -> AgentSpec {
    AgentSpec {
        agent_id: AgentId::parse(id).unwrap(),
        cli_type: cli,
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
    }
}

async fn run(
    store: &Store,
    agent: &str,
    cli: CliType,
    outcome: OutcomeClass,
    ms: i64,
    rss: f64,
    err: Option<&str>,
) {
    let id = AgentId::parse(agent).unwrap();
    let session = match store.get_session(&id).await.unwrap() {
        Some(s) => s,
        None => store.create_session(&id, cli, None).await.unwrap(),
    };
    let exec = uuid::Uuid::new_v4().to_string();
    store
        .begin_execution(&NewExecution {
            execution_id: exec.clone(),
            agent_id: id.clone(),
            conversation_id: session.conversation_id.clone(),
            cli_type: cli,
            mode: CommMode::Headless,
            user_turn_id: uuid::Uuid::new_v4().to_string(),
            prompt: "p".into(),
            turn_metadata: json!({}),
        })
        .await
        .unwrap();
    store
        .finish_execution(&FinishExecution {
            execution_id: exec,
            outcome,
            exit_code: Some(0),
            error_message: err.map(str::to_owned),
            duration_ms: ms,
            usage: None,
            cost_usd: None,
            num_turns: None,
            peak_rss_mb: Some(rss),
            cli_session_id: None,
            turn: Some(NewTurn {
                turn_id: uuid::Uuid::new_v4().to_string(),
                role: if outcome == OutcomeClass::Success {
                    Role::Assistant
                } else {
                    Role::System
                },
                content: "x".into(),
                metadata: json!({}),
            }),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn aggregates_match_the_executions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}/k.db", dir.path().display()))
        .await
        .unwrap();
    store
        .upsert_agent(&spec("a", CliType::Codex))
        .await
        .unwrap();
    store
        .upsert_agent(&spec("b", CliType::ClaudeCode))
        .await
        .unwrap();
    // Agent a: 100 successes of 1..=100 ms; agent b: 3 failures and 1 success.
    for ms in 1..=100 {
        run(
            &store,
            "a",
            CliType::Codex,
            OutcomeClass::Success,
            ms,
            10.0,
            None,
        )
        .await;
    }
    run(
        &store,
        "b",
        CliType::ClaudeCode,
        OutcomeClass::Timeout,
        5000,
        30.0,
        Some("execution timeout"),
    )
    .await;
    run(
        &store,
        "b",
        CliType::ClaudeCode,
        OutcomeClass::Timeout,
        5000,
        30.0,
        Some("execution timeout"),
    )
    .await;
    run(
        &store,
        "b",
        CliType::ClaudeCode,
        OutcomeClass::AuthError,
        10,
        30.0,
        Some("Not logged in"),
    )
    .await;
    run(
        &store,
        "b",
        CliType::ClaudeCode,
        OutcomeClass::Success,
        200,
        30.0,
        None,
    )
    .await;
    run(
        &store,
        "b",
        CliType::ClaudeCode,
        OutcomeClass::Cancelled,
        7,
        30.0,
        Some("cancelled"),
    )
    .await;

    let since = Utc::now() - Duration::hours(1);
    let counts = store.outcome_counts(since).await.unwrap();
    let n = |agent: &str, outcome: &str| {
        counts
            .iter()
            .find(|c| c.agent_id == agent && c.outcome == outcome)
            .map(|c| c.count)
            .unwrap_or(0)
    };
    assert_eq!(n("a", "success"), 100);
    assert_eq!(n("b", "timeout"), 2);
    assert_eq!(n("b", "auth_error"), 1);
    assert_eq!(n("b", "cancelled"), 1);
    assert!(store
        .outcome_counts(Utc::now() + Duration::hours(1))
        .await
        .unwrap()
        .is_empty());

    let overall = store
        .duration_stats(since, &["success"], false)
        .await
        .unwrap();
    assert_eq!(overall.len(), 1);
    let o = &overall[0];
    assert_eq!(o.count, 101);
    assert_eq!((o.p50_ms, o.p95_ms, o.p99_ms, o.max_ms), (51, 96, 100, 200));

    let by_agent = store
        .duration_stats(since, &["success"], true)
        .await
        .unwrap();
    let a = by_agent.iter().find(|s| s.agent_id == "a").unwrap();
    assert_eq!(
        (a.count, a.p50_ms, a.p95_ms, a.p99_ms, a.max_ms),
        (100, 50, 95, 99, 100)
    );
    assert!((a.avg_ms - 50.5).abs() < 1e-9);

    let rss = store.avg_peak_rss_mb(since).await.unwrap().unwrap();
    assert!((rss - (100.0 * 10.0 + 5.0 * 30.0) / 105.0).abs() < 1e-9);

    let reasons = store.top_failure_reasons(since, 3).await.unwrap();
    assert_eq!(
        reasons[0],
        (
            "claude-code".to_owned(),
            "timeout: execution timeout".to_owned(),
            2
        )
    );
    assert_eq!(reasons[1].1, "auth_error: Not logged in");
    assert!(
        reasons.iter().all(|r| !r.1.starts_with("cancelled")),
        "cancels are not failures"
    );

    let ev = |t: &str| NewEvent {
        event_type: t.into(),
        agent_id: None,
        cli_type: None,
        duration_ms: None,
        success: None,
        metadata: json!({}),
    };
    store
        .insert_events(&[
            ev("LOCK_TIMEOUT"),
            ev("LOCK_TIMEOUT"),
            ev("CIRCUIT_REJECTED"),
            ev("OTHER"),
        ])
        .await
        .unwrap();
    let mut ec = store
        .event_counts(&["LOCK_TIMEOUT", "CIRCUIT_REJECTED"], since)
        .await
        .unwrap();
    ec.sort();
    assert_eq!(
        ec,
        vec![
            ("CIRCUIT_REJECTED".to_owned(), 1),
            ("LOCK_TIMEOUT".to_owned(), 2)
        ]
    );
}
