//! The store against real SQLite files: the shared conformance cases, plus what only SQLite has
//! (the file, its directory, pragmas, URL forms).

mod conformance;

use std::path::Path;

use kokino_core::{AgentId, CliType, ExecutionState};
use kokino_store::{Store, StoreError};
use sqlx::Connection;
use tempfile::TempDir;

/// A store on a fresh database file; the directory lives as long as the returned guard.
async fn sqlite_store() -> (Store, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kokino.db").display());
    (Store::open(&url).await.unwrap(), dir)
}

/// Runs one conformance case per test, each on its own database.
macro_rules! conformance {
    ($($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let (store, _dir) = sqlite_store().await;
                conformance::$case(&store).await;
            }
        )+
    };
}

conformance!(
    ping_answers,
    agent_upsert_is_idempotent,
    agent_record_round_trips,
    session_lifecycle,
    session_requires_known_agent,
    execution_begin_and_finish,
    failed_execution_records_system_turn,
    finish_of_unknown_execution_writes_nothing,
    begin_on_unknown_conversation_writes_nothing,
    duplicate_execution_id_rolls_back_the_user_turn,
    concurrent_executions_keep_sequences_contiguous,
    failed_writes_do_not_take_concurrent_ones_down,
    turns_are_visible_only_to_their_agent,
    conversations_list_newest_first,
    delete_conversation_cascades,
    delete_agent_without_purge_keeps_history,
    delete_agent_with_purge_removes_history,
    idle_sessions_are_swept,
    events_filter_and_order,
    event_limit_defaults_and_caps,
    conversations_are_independent,
    event_retention_deletes_only_older_events,
    circuits_round_trip_and_upsert,
    circuit_delete,
    circuit_rejects_unknown_scope,
    fallbacks_round_trip_and_upsert,
    fallback_delete_and_clear,
    fallback_rejects_unknown_kind,
    lease_acquire_renew_release_cycle,
    lease_is_exclusive_until_it_expires,
    stale_lease_holder_cannot_write,
    brokers_announce_and_expire,
    homes_are_set_claimed_and_moved,
    home_is_taken_over_only_from_a_dead_broker,
    concurrent_acquisitions_have_one_winner,
    running_executions_filter_by_instance,
    analytics_aggregates_match_the_executions,
);

#[tokio::test]
async fn open_creates_directory_file_and_pragmas() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("nested").join("kokino.db");
    assert!(!db.parent().unwrap().exists());
    let store = Store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    assert!(db.is_file());
    assert_eq!(store.kind(), "sqlite");

    // Read through the store's own pooled connections: synchronous and foreign_keys are
    // per-connection settings, so only the store's connections can prove them.
    assert_eq!(store.sqlite_pragma("journal_mode").await.unwrap(), "wal");
    assert_eq!(store.sqlite_pragma("synchronous").await.unwrap(), "2");
    assert_eq!(store.sqlite_pragma("foreign_keys").await.unwrap(), "1");
    assert_eq!(store.sqlite_pragma("busy_timeout").await.unwrap(), "5000");
    // Statement journals stay in memory (2 is MEMORY): see `SqliteDb::open`.
    assert_eq!(store.sqlite_pragma("temp_store").await.unwrap(), "2");
    assert!(matches!(
        store.sqlite_pragma("writable_schema").await,
        Err(StoreError::Unsupported(_))
    ));

    // Several reads at once, so the pool opens more connections; all carry the settings.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.sqlite_pragma("foreign_keys").await })
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.await.unwrap().unwrap(), "1");
    }
}

#[tokio::test]
async fn accepts_every_url_form() {
    let dir = tempfile::tempdir().unwrap();
    let forms = [
        format!("sqlite://{}", dir.path().join("a/one.db").display()),
        format!("sqlite:{}", dir.path().join("b/two.db").display()),
        dir.path().join("c/three.db").display().to_string(),
        format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("d/four.db").display()
        ),
    ];
    for url in &forms {
        let store = Store::open(url).await.unwrap();
        store.ping().await.unwrap();
    }
    for file in ["a/one.db", "b/two.db", "c/three.db", "d/four.db"] {
        assert!(dir.path().join(file).is_file(), "{file}");
    }
    assert!(matches!(
        Store::open("sqlite::memory:").await,
        Err(StoreError::Unsupported(_))
    ));
    // A PostgreSQL URL goes to the PostgreSQL backend; nothing listens on port 1.
    assert!(matches!(
        Store::open("postgres://127.0.0.1:1/kokino").await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn unusable_data_directory_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let err = Store::open(&format!(
        "sqlite://{}/kokino.db",
        blocker.join("sub").display()
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::DataDir { .. }), "{err:?}");
}

#[tokio::test]
async fn reopen_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kokino.db").display());
    let alpha = AgentId::parse("alpha").unwrap();
    let (agent, session, turn) = {
        let store = Store::open(&url).await.unwrap();
        let agent = store
            .upsert_agent(&conformance::spec("alpha"))
            .await
            .unwrap();
        let session = store
            .create_session(&alpha, CliType::ClaudeCode, Some("pre"))
            .await
            .unwrap();
        let turn = store
            .begin_execution(&conformance::new_execution(
                "alpha",
                &session.conversation_id,
                "persist me",
            ))
            .await
            .unwrap();
        (agent, session, turn)
    };

    // Opening again applies no migration twice and finds everything.
    let store = Store::open(&url).await.unwrap();
    assert_eq!(store.get_agent(&alpha).await.unwrap().unwrap(), agent);
    let reread = store.get_session(&alpha).await.unwrap().unwrap();
    assert_eq!(reread.conversation_id, session.conversation_id);
    let (_, turns) = store
        .get_conversation(&session.conversation_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(turns, vec![turn]);
    assert_eq!(store.running_executions().await.unwrap().len(), 1);
}

/// Writes through a separate connection, bypassing the store, to plant bad rows.
async fn raw_execute(db: &Path, sql: &str) {
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query(sql).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn undecodable_rows_are_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kokino.db");
    let store = Store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    store
        .upsert_agent(&conformance::spec("alpha"))
        .await
        .unwrap();
    raw_execute(
        &db,
        "UPDATE agents SET type = 'claude' WHERE agent_id = 'alpha'",
    )
    .await;

    let alpha = AgentId::parse("alpha").unwrap();
    let err = store.get_agent(&alpha).await.unwrap_err();
    match &err {
        StoreError::Corrupt { table, message } => {
            assert_eq!(*table, "agents");
            assert!(message.contains("type"), "{message}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        store.list_agents().await,
        Err(StoreError::Corrupt {
            table: "agents",
            ..
        })
    ));

    raw_execute(
        &db,
        "INSERT INTO conversations VALUES \
         ('c1', 'alpha', 'codex', NULL, 'active', 'yesterday', '2025-01-01T00:00:00.000Z')",
    )
    .await;
    assert!(matches!(
        store.get_conversation("c1").await,
        Err(StoreError::Corrupt {
            table: "conversations",
            ..
        })
    ));
}

#[tokio::test]
async fn breakers_and_fallbacks_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kokino.db").display());
    let since = chrono::DateTime::from_timestamp_millis(1_738_324_800_123).unwrap();
    let snapshot = serde_json::json!({"state": "forced_open", "consecutiveFailures": 0,
                                      "openForMs": 60000, "manualReason": "maintenance"});
    {
        let store = Store::open(&url).await.unwrap();
        store
            .save_circuit("cli", "gemini", &snapshot)
            .await
            .unwrap();
        store
            .put_fallback("agent", "alpha", "circuit opened", since, true)
            .await
            .unwrap();
    }
    let store = Store::open(&url).await.unwrap();
    assert_eq!(
        store.load_circuits().await.unwrap(),
        vec![("cli".to_owned(), "gemini".to_owned(), snapshot)]
    );
    let rows = store.load_fallbacks().await.unwrap();
    assert_eq!(
        rows,
        vec![kokino_store::FallbackRow {
            kind: "agent".into(),
            key: "alpha".into(),
            reason: "circuit opened".into(),
            since,
            auto: true,
        }]
    );
}

#[tokio::test]
async fn undecodable_fallback_rows_are_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kokino.db");
    let store = Store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    raw_execute(
        &db,
        "INSERT INTO fallback_overrides VALUES ('cli', 'codex', 'x', 'yesterday', 1)",
    )
    .await;
    assert!(matches!(
        store.load_fallbacks().await,
        Err(StoreError::Corrupt {
            table: "fallback_overrides",
            ..
        })
    ));
    // Invalid JSON cannot even be planted: the table checks it on write.
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let planted = sqlx::query(
        "INSERT INTO circuit_states VALUES ('agent', 'a', '{not json', '2025-01-01T00:00:00.000Z')",
    )
    .execute(&mut conn)
    .await;
    assert!(planted.is_err());
}

/// Group commit: executions written at the same moment share commits (one fsync for several),
/// and every one of them is on disk when its call returns, as a second store on the same file
/// reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_share_commits() {
    const AGENTS: usize = 8;
    const PER_AGENT: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kokino.db").display());
    let store = Store::open(&url).await.unwrap();
    let conversations = agents_with_sessions(&store, AGENTS).await;
    let before = store.group_commit_stats().unwrap();
    let mut handles = Vec::new();
    for (agent, conv) in conversations.clone() {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for n in 0..PER_AGENT {
                let new = conformance::new_execution(agent.as_str(), &conv, &format!("prompt {n}"));
                store.begin_execution(&new).await.unwrap();
                store
                    .finish_execution(&conformance::finish(&new.execution_id, "answer"))
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let after = store.group_commit_stats().unwrap();
    let (writes, commits) = (after.writes - before.writes, after.commits - before.commits);
    assert_eq!(writes, (2 * AGENTS * PER_AGENT) as u64);
    assert!(
        commits < writes,
        "{writes} concurrent writes took {commits} commits: none was shared"
    );
    // What the calls returned is on disk: another store on the same file sees all of it.
    let other = Store::open(&url).await.unwrap();
    for (_, conv) in &conversations {
        let (_, turns) = other.get_conversation(conv).await.unwrap().unwrap();
        assert_eq!(turns.len(), 2 * PER_AGENT);
    }
}

/// `n` agents, `agent-0`…, each with a session: their ids and conversations.
async fn agents_with_sessions(store: &Store, n: usize) -> Vec<(AgentId, String)> {
    let mut conversations = Vec::new();
    for i in 0..n {
        let id = format!("agent-{i}");
        store.upsert_agent(&conformance::spec(&id)).await.unwrap();
        let agent = AgentId::parse(&id).unwrap();
        let session = store
            .create_session(&agent, CliType::ClaudeCode, None)
            .await
            .unwrap();
        conversations.push((agent, session.conversation_id));
    }
    conversations
}

async fn execution_state(store: &Store, execution_id: &str) -> ExecutionState {
    let execution = store.get_execution(execution_id).await.unwrap().unwrap();
    execution.state
}

/// A finish alone in its group goes as one query with its own `BEGIN … COMMIT`. When a statement
/// in it fails, nothing of it stays written (not the touches of the session and conversation
/// that ran before the failing insert), the caller hears the error, and the writer goes on.
#[tokio::test]
async fn a_lone_finish_that_fails_writes_nothing_and_the_writer_goes_on() {
    let (store, _dir) = sqlite_store().await;
    store
        .upsert_agent(&conformance::spec("agent-1"))
        .await
        .unwrap();
    let agent = AgentId::parse("agent-1").unwrap();
    let session = store
        .create_session(&agent, CliType::ClaudeCode, None)
        .await
        .unwrap();
    let conv = session.conversation_id;
    let new = conformance::new_execution("agent-1", &conv, "hello");
    store.begin_execution(&new).await.unwrap();
    let before = store.get_conversation(&conv).await.unwrap().unwrap();
    let session_before = store.get_session(&agent).await.unwrap();

    // The answer's turn id collides with the user turn's: the last statement fails.
    let mut clash = conformance::finish(&new.execution_id, "answer");
    clash.turn.as_mut().unwrap().turn_id = new.user_turn_id.clone();
    let err = store.finish_execution(&clash).await.unwrap_err();
    assert!(!err.is_unavailable(), "a constraint, not an outage: {err}");
    assert_eq!(
        format!(
            "{:?}",
            store.get_conversation(&conv).await.unwrap().unwrap()
        ),
        format!("{before:?}"),
        "the failed finish left something written"
    );
    assert_eq!(
        format!("{:?}", store.get_session(&agent).await.unwrap()),
        format!("{session_before:?}")
    );
    assert_eq!(
        execution_state(&store, &new.execution_id).await,
        ExecutionState::Running
    );

    // The next write works, on the same store.
    let turn = store
        .finish_execution(&conformance::finish(&new.execution_id, "answer"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(turn.seq, 2);
    assert_eq!(
        execution_state(&store, &new.execution_id).await,
        ExecutionState::Finished
    );
    let (_, turns) = store.get_conversation(&conv).await.unwrap().unwrap();
    assert_eq!(turns.len(), 2);
}

/// Every kind of write on the execute path, from many executions at once, some of them failing:
/// each caller gets its own answer, whatever group its write fell into. The user turn and the
/// answer get their own numbers, a process id is recorded or "not found" for an execution that
/// does not exist, and a write whose statement fails fails alone while the others are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_grouped_write_gets_its_own_answer_when_others_fail() {
    const AGENTS: usize = 6;
    const PER_AGENT: usize = 10;
    let (store, _dir) = sqlite_store().await;
    let conversations = agents_with_sessions(&store, AGENTS).await;
    let before = store.group_commit_stats().unwrap();
    let mut handles = Vec::new();
    for (agent, conv) in conversations.clone() {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            // The writes that succeeded, each of which must be counted once.
            let mut written = 0;
            for n in 0..PER_AGENT {
                let new = conformance::new_execution(agent.as_str(), &conv, &format!("p{n}"));
                // Started together, as the execute path does: the process id and telemetry
                // are lazy and join whatever urgent write comes next.
                let cli_session = format!("cli-{agent}");
                let event = kokino_store::NewEvent {
                    event_type: "GROUP_TEST".into(),
                    agent_id: Some(agent.to_string()),
                    cli_type: None,
                    duration_ms: Some(n as i64),
                    success: Some(true),
                    metadata: serde_json::json!({}),
                };
                let (user_turn, pid, missing, session, events) = tokio::join!(
                    store.begin_execution(&new),
                    async {
                        tokio::task::yield_now().await;
                        store
                            .set_execution_process(&new.execution_id, 1000 + n as i64, Some(7))
                            .await
                    },
                    store.set_execution_process("no-such-execution", 1, None),
                    store.set_cli_session(&agent, &conv, &cli_session),
                    store.insert_events(std::slice::from_ref(&event)),
                );
                let user_turn = user_turn.unwrap();
                assert_eq!(
                    user_turn.seq,
                    2 * n as i64 + 1,
                    "{agent}: the user turn's number"
                );
                // The pid may have been written before the begin in its own group: "not
                // found" then, as for any unknown execution; after it, recorded.
                let pid_recorded = pid.is_ok();
                let e = missing.unwrap_err();
                assert!(e.to_string().contains("no-such-execution"), "{e}");
                session.unwrap();
                events.unwrap();
                // An answer whose turn id collides with the user turn's fails, alone.
                let mut clash = conformance::finish(&new.execution_id, "answer");
                clash.turn.as_mut().unwrap().turn_id = new.user_turn_id.clone();
                let good = conformance::finish(&new.execution_id, "answer");
                let (clash, answer) = tokio::join!(
                    store.finish_execution(&clash),
                    store.finish_execution(&good),
                );
                assert!(clash.is_err(), "{agent}: the clashing finish failed");
                let answer = answer.unwrap().expect("the answer's turn");
                assert_eq!(answer.seq, 2 * n as i64 + 2, "{agent}: the answer's number");
                if pid_recorded {
                    let e = store
                        .get_execution(&new.execution_id)
                        .await
                        .unwrap()
                        .unwrap();
                    assert_eq!(e.pid, Some(1000 + n as i64));
                }
                // The begin, the session id, the events, the answer, and the pid if recorded.
                written += 4 + u64::from(pid_recorded);
            }
            written
        }));
    }
    let mut written = 0;
    for h in handles {
        written += h.await.unwrap();
    }
    // Every write that succeeded was committed once, in a group or on its own after its group
    // failed, and no failed write was counted.
    let after = store.group_commit_stats().unwrap();
    assert_eq!(
        after.writes - before.writes,
        written,
        "{before:?} → {after:?}"
    );
    for (agent, conv) in &conversations {
        let (_, turns) = store.get_conversation(conv).await.unwrap().unwrap();
        assert_eq!(turns.len(), 2 * PER_AGENT, "{agent}");
        let seqs: Vec<i64> = turns.iter().map(|t| t.seq).collect();
        assert_eq!(seqs, (1..=2 * PER_AGENT as i64).collect::<Vec<_>>());
        let session = store.get_session(agent).await.unwrap().unwrap();
        assert_eq!(session.cli_session_id, Some(format!("cli-{agent}")));
        let events = store
            .list_events(&kokino_store::EventFilter {
                event_type: Some("GROUP_TEST".into()),
                agent_id: Some(agent.to_string()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(events.len(), PER_AGENT, "{agent}");
    }
}

/// With fewer indexes on `executions` (written on every begin and finish), every query that reads
/// executions by state or by finish time is still a search of an index, never a scan of the
/// table. The finish-time indexes hold finished executions only, which `finished_at >= $1`
/// implies; the planner may prefer the state index where it cannot tell which is narrower.
#[tokio::test]
async fn execution_queries_search_an_index() {
    let (store, dir) = sqlite_store().await;
    drop(store);
    let url = format!("sqlite://{}", dir.path().join("kokino.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let queries = [
        "SELECT cli_type, agent_id, outcome, COUNT(*) FROM executions \
         WHERE state = 'finished' AND finished_at >= ?1 AND outcome IS NOT NULL \
         GROUP BY cli_type, agent_id, outcome",
        "SELECT cli_type, duration_ms FROM executions \
         WHERE duration_ms IS NOT NULL AND finished_at >= ?1 AND cli_type = 'codex'",
        "SELECT finished_at FROM executions WHERE finished_at >= ?1 ORDER BY finished_at",
        "SELECT * FROM executions WHERE state = 'running' ORDER BY started_at",
        "SELECT * FROM executions WHERE state = 'running' AND instance_id = ?1",
    ];
    for query in queries {
        let rows = sqlx::query(&format!("EXPLAIN QUERY PLAN {query}"))
            .bind("2025-01-01T00:00:00.000Z")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        let plan: Vec<String> = rows
            .iter()
            .map(|r| sqlx::Row::get::<String, _>(r, "detail"))
            .collect();
        let plan = plan.join("; ");
        assert!(!plan.contains("SCAN executions"), "{query}: {plan}");
        assert!(plan.contains("SEARCH executions USING"), "{query}: {plan}");
    }
}

/// The group writer keeps the writer connection while its writes keep coming, but another
/// writer that asks for it gets it at the next batch: registrations and session changes (which
/// run through sqlx's writer pool) are not starved by a stream of execution writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_writers_get_the_writer_while_grouped_writes_keep_coming() {
    let (store, _dir) = sqlite_store().await;
    let conversations = agents_with_sessions(&store, 1).await;
    let (agent, conv) = conversations[0].clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streamed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Several streams of grouped writes, so that there is always a write queued.
    let mut streams = Vec::new();
    for s in 0..4 {
        let (store, stop, streamed) = (store.clone(), stop.clone(), streamed.clone());
        let (agent, conv) = (agent.clone(), conv.clone());
        streams.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store
                    .set_cli_session(&agent, &conv, &format!("cli-{s}-{n}"))
                    .await
                    .unwrap();
                streamed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    // Let the streams get going, then write through the writer pool, again and again, while
    // they run.
    while streamed.load(std::sync::atomic::Ordering::Relaxed) < 50 {
        tokio::task::yield_now().await;
    }
    for i in 0..20 {
        // Bounded, so that a writer that never gives the connection back fails the test
        // instead of hanging it.
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            store
                .upsert_agent(&conformance::spec(&format!("late-{i}")))
                .await
                .unwrap();
            store
                .end_session(&AgentId::parse(&format!("late-{i}")).unwrap())
                .await
                .unwrap()
        })
        .await
        .expect("the writer pool's user got the connection");
        assert!(ended.is_none(), "the new agent had no session");
        // The grouped writes went on meanwhile: the writer pool's users took turns with them
        // rather than waiting for the streams to end (which they never do on their own).
        assert!(!streams.iter().any(|s| s.is_finished()), "a stream failed");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in streams {
        s.await.unwrap();
    }
    assert_eq!(store.list_agents().await.unwrap().len(), 21);
}

/// Reader connections kept between statements never take the whole reader pool: with more
/// concurrent reads than the pool has connections, every read completes, and a read
/// transaction (which borrows from the pool itself) still gets a connection afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kept_reader_connections_leave_the_pool_room() {
    let (store, _dir) = sqlite_store().await;
    let conversations = agents_with_sessions(&store, 3).await;
    for round in 0..3 {
        let reads: Vec<_> = (0..40)
            .map(|i| {
                let store = store.clone();
                let (agent, _) = conversations[i % conversations.len()].clone();
                tokio::spawn(async move { store.get_agent(&agent).await })
            })
            .collect();
        for read in reads {
            assert!(read.await.unwrap().unwrap().is_some(), "round {round}");
        }
        // A read transaction per conversation, several at once.
        let snapshots: Vec<_> = conversations
            .iter()
            .map(|(_, conv)| {
                let (store, conv) = (store.clone(), conv.clone());
                tokio::spawn(async move { store.get_conversation(&conv).await })
            })
            .collect();
        for snapshot in snapshots {
            let found = tokio::time::timeout(std::time::Duration::from_secs(10), snapshot)
                .await
                .expect("a read transaction got a connection")
                .unwrap()
                .unwrap();
            assert!(found.is_some());
        }
    }
}
