//! The store against a real PostgreSQL server: the shared conformance cases, the analytics and
//! integrity scenarios of the SQLite tests, plus what only PostgreSQL has.
//!
//! The server comes from `KOKINO_TEST_DATABASE_URL` (for example
//! `postgres://postgres@127.0.0.1:5432/test`); the role must be allowed to create databases.
//! Tests run in parallel, so each one gets a database of its own, created from that URL and
//! dropped when the test ends, panic or not. Without the variable every test says it was skipped
//! and passes, so a machine without PostgreSQL can still run the workspace's tests.

mod conformance;

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{Duration, Utc};
use kokino_core::{AgentId, AgentSpec, CliType, CommMode, NewExecution};
use kokino_store::{NewShadowResult, Store, StoreError};
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

const URL_VAR: &str = "KOKINO_TEST_DATABASE_URL";

/// Every test database's name starts with this, followed by its creation time in seconds.
const DB_PREFIX: &str = "kokino_test_";

/// Databases left behind by a test process that was killed (a guard cannot run then) are
/// dropped by later runs once they are this old; younger ones may belong to a run in progress.
const STALE_AFTER_SECS: u64 = 3600;

/// The server URL, or `None` after saying the test is skipped.
fn server_url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("skipped: {URL_VAR} is not set");
            None
        }
    }
}

/// `url` with its database replaced by `database` (the query string is kept).
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    format!("{}/{database}{query}", &base[..authority_end])
}

async fn admin_connection(url: &str) -> PgConnection {
    PgConnectOptions::from_str(url)
        .expect("a valid KOKINO_TEST_DATABASE_URL")
        .connect()
        .await
        .expect("the test PostgreSQL server answers")
}

/// A database that exists for one test. Dropping the guard drops the database, also when the
/// test panicked: the drop runs on its own thread with its own runtime, because `Drop` cannot
/// await and the test's runtime may be unwinding.
struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    async fn create(admin_url: &str) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let name = format!("{DB_PREFIX}{now}_{}", uuid::Uuid::new_v4().simple());
        let mut admin = admin_connection(admin_url).await;
        drop_stale_databases(&mut admin, now).await;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE (the test role needs CREATEDB)");
        admin.close().await.ok();
        Self {
            admin_url: admin_url.to_owned(),
            url: with_database(admin_url, &name),
            name,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the cleanup");
            runtime.block_on(async move {
                let mut admin = admin_connection(&admin_url).await;
                // FORCE ends the sessions the store's pool still holds; the pool belongs to the
                // test's runtime and may not have closed them yet.
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .expect("DROP DATABASE");
                admin.close().await.ok();
            });
        });
        if dropper.join().is_err() {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

/// Drops test databases older than [`STALE_AFTER_SECS`], whose test process must have died.
async fn drop_stale_databases(admin: &mut PgConnection, now: u64) {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE datname LIKE 'kokino\\_test\\_%'",
    )
    .fetch_all(&mut *admin)
    .await
    .unwrap_or_default();
    for name in names {
        let created = name
            .strip_prefix(DB_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|t| t + STALE_AFTER_SECS < now) {
            // Another run may drop it at the same moment; either way it is gone.
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut *admin)
                .await;
        }
    }
}

/// A store on a fresh database, or `None` (after saying so) when no server is configured.
async fn pg_store() -> Option<(Store, TestDatabase)> {
    let url = server_url()?;
    let db = TestDatabase::create(&url).await;
    let store = Store::open(&db.url).await.expect("open the store");
    Some((store, db))
}

/// Runs one conformance case per test, each on its own database.
macro_rules! conformance {
    ($($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let Some((store, _db)) = pg_store().await else { return };
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

// ---- what only PostgreSQL has ----

#[tokio::test]
async fn kind_and_pragmas() {
    let Some((store, _db)) = pg_store().await else {
        return;
    };
    assert_eq!(store.kind(), "postgres");
    assert!(matches!(
        store.sqlite_pragma("journal_mode").await,
        Err(StoreError::Unsupported(_))
    ));
}

#[tokio::test]
async fn both_url_schemes_open_and_reopen_keeps_data() {
    let Some(url) = server_url() else { return };
    let db = TestDatabase::create(&url).await;
    let alpha = AgentId::parse("alpha").unwrap();
    let (agent, turn, conversation_id) = {
        let store = Store::open(&db.url).await.unwrap();
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
        (agent, turn, session.conversation_id)
    };

    // The other scheme, on the same database: the migrations are not applied twice.
    let other = db.url.replacen("postgres://", "postgresql://", 1);
    assert_ne!(other, db.url, "the test URL uses the postgres:// scheme");
    let store = Store::open(&other).await.unwrap();
    assert_eq!(store.get_agent(&alpha).await.unwrap().unwrap(), agent);
    let (_, turns) = store
        .get_conversation(&conversation_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(turns, vec![turn]);
    assert_eq!(store.running_executions().await.unwrap().len(), 1);
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    // Port 1 on the loopback refuses connections at once; no server is needed for this test.
    let err = Store::open("postgres://kokino@127.0.0.1:1/kokino")
        .await
        .unwrap_err();
    match &err {
        StoreError::Unavailable(message) => assert!(message.contains("127.0.0.1:1"), "{message}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let err = Store::open("postgres://secret-user:secret-password@127.0.0.1:1/kokino")
        .await
        .unwrap_err();
    assert!(
        !err.to_string().contains("secret-password"),
        "the password never appears in an error: {err}"
    );
}

/// Writes through a separate connection, bypassing the store, to plant bad rows.
async fn raw_execute(url: &str, sql: &str) {
    let mut conn = admin_connection(url).await;
    sqlx::query(sql).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn undecodable_rows_are_reported_as_corrupt() {
    let Some((store, db)) = pg_store().await else {
        return;
    };
    store
        .upsert_agent(&conformance::spec("alpha"))
        .await
        .unwrap();
    raw_execute(
        &db.url,
        "UPDATE agents SET type = 'claude' WHERE agent_id = 'alpha'",
    )
    .await;
    let alpha = AgentId::parse("alpha").unwrap();
    match store.get_agent(&alpha).await.unwrap_err() {
        StoreError::Corrupt { table, message } => {
            assert_eq!(table, "agents");
            assert!(message.contains("type"), "{message}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // Valid JSON of the wrong shape is corrupt too: the database only guarantees JSON.
    raw_execute(
        &db.url,
        "UPDATE agents SET type = 'codex', env = '[1, 2]' WHERE agent_id = 'alpha'",
    )
    .await;
    assert!(matches!(
        store.list_agents().await,
        Err(StoreError::Corrupt {
            table: "agents",
            ..
        })
    ));

    raw_execute(
        &db.url,
        "INSERT INTO conversations VALUES \
         ('c1', 'alpha', 'claude', NULL, 'active', now(), now())",
    )
    .await;
    assert!(matches!(
        store.get_conversation("c1").await,
        Err(StoreError::Corrupt {
            table: "conversations",
            ..
        })
    ));

    // Invalid JSON cannot even be planted: the JSONB column checks it on write.
    let mut conn = admin_connection(&db.url).await;
    let planted =
        sqlx::query("INSERT INTO circuit_states VALUES ('agent', 'a', '{not json', now())")
            .execute(&mut conn)
            .await;
    assert!(planted.is_err());
}

#[tokio::test]
async fn cli_versions_round_trip() {
    let Some((store, _db)) = pg_store().await else {
        return;
    };
    store
        .record_cli_version("codex", "1.0.0", &["a".into()])
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store
        .record_cli_version("codex", "1.1.0", &["a".into(), "b".into()])
        .await
        .unwrap();
    store
        .record_cli_version("claude-code", "2.0.0", &[])
        .await
        .unwrap();
    let first = store.list_cli_versions().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store
        .record_cli_version("codex", "1.0.0", &["c".into()])
        .await
        .unwrap();
    let rows = store.list_cli_versions().await.unwrap();
    let summary: Vec<(&str, &str, Vec<String>)> = rows
        .iter()
        .map(|r| (r.cli_type.as_str(), r.version.as_str(), r.agents.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("claude-code", "2.0.0", vec![]),
            ("codex", "1.0.0", vec!["c".to_owned()]),
            ("codex", "1.1.0", vec!["a".to_owned(), "b".to_owned()]),
        ],
        "by CLI type, most recently seen first"
    );
    let before = first.iter().find(|r| r.version == "1.0.0").unwrap();
    let after = rows.iter().find(|r| r.version == "1.0.0").unwrap();
    assert_eq!(
        after.first_seen_at, before.first_seen_at,
        "first seen is kept"
    );
    assert!(after.last_seen_at > before.last_seen_at);
}

#[tokio::test]
async fn shadow_results_and_summary() {
    let Some((store, _db)) = pg_store().await else {
        return;
    };
    let since = Utc::now() - Duration::minutes(1);
    let empty = store.shadow_summary(since).await.unwrap();
    assert_eq!(empty.total, 0);
    assert_eq!(empty.avg_latency_delta_ms, None);
    assert_eq!(empty.first_at, None);

    let result = |tmux: bool, headless: bool, tmux_ms: i64, headless_ms: i64| NewShadowResult {
        agent_id: "alpha".into(),
        execution_id: uuid::Uuid::new_v4().to_string(),
        primary_mode: "tmux".into(),
        tmux_success: tmux,
        headless_success: headless,
        tmux_response: tmux.then(|| "answer".into()),
        headless_response: headless.then(|| "answer".into()),
        tmux_error: (!tmux).then(|| "tmux failed".into()),
        headless_error: (!headless).then(|| "headless failed".into()),
        tmux_latency_ms: tmux_ms,
        headless_latency_ms: headless_ms,
        similarity: (tmux && headless).then_some(0.5),
        matched: (tmux && headless).then_some(tmux_ms == 100),
        diff: None,
    };
    let matched = store
        .insert_shadow_result(&result(true, true, 100, 50))
        .await
        .unwrap();
    let mismatched = store
        .insert_shadow_result(&result(true, true, 200, 300))
        .await
        .unwrap();
    let headless_failed = store
        .insert_shadow_result(&result(true, false, 10, 10))
        .await
        .unwrap();
    store
        .insert_shadow_result(&result(false, false, 10, 10))
        .await
        .unwrap();
    assert!(matched < mismatched && mismatched < headless_failed);

    let s = store.shadow_summary(since).await.unwrap();
    assert_eq!(
        (
            s.total,
            s.tmux_succeeded,
            s.headless_succeeded,
            s.both_succeeded,
            s.only_tmux_succeeded,
            s.only_headless_succeeded,
            s.both_failed,
            s.matched,
            s.mismatched,
            s.headless_faster
        ),
        (4, 3, 2, 2, 1, 0, 1, 1, 1, 1)
    );
    assert_eq!(s.avg_latency_delta_ms, Some(25.0));
    assert!(s.first_at.is_some());

    let mismatches = store.shadow_mismatches(10).await.unwrap();
    assert_eq!(
        mismatches.iter().map(|r| r.id).collect::<Vec<_>>(),
        [mismatched]
    );
    assert_eq!(mismatches[0].matched, Some(false));
    assert_eq!(mismatches[0].similarity, Some(0.5));
    let failures = store.shadow_failures("headless", 1).await.unwrap();
    assert_eq!(failures.len(), 1, "the limit applies");
    assert!(!failures[0].headless_success);
    assert_eq!(store.shadow_failures("tmux", 10).await.unwrap().len(), 1);
}

// ---- the integrity scenario of tests/integrity.rs ----

async fn conversation_with_turns(store: &Store, agent: &str, turns: usize) -> String {
    let id = AgentId::parse(agent).unwrap();
    store
        .upsert_agent(&AgentSpec {
            cli_type: CliType::Codex,
            ..conformance::spec(agent)
        })
        .await
        .unwrap();
    let s = store
        .create_session(&id, CliType::Codex, None)
        .await
        .unwrap();
    for _ in 0..turns {
        store
            .begin_execution(&NewExecution {
                execution_id: uuid::Uuid::new_v4().to_string(),
                agent_id: id.clone(),
                conversation_id: s.conversation_id.clone(),
                cli_type: CliType::Codex,
                mode: CommMode::Headless,
                user_turn_id: uuid::Uuid::new_v4().to_string(),
                prompt: "p".into(),
                turn_metadata: json!({}),
            })
            .await
            .unwrap();
    }
    s.conversation_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn injected_problems_are_found_and_the_safe_ones_repaired() {
    let Some((store, db)) = pg_store().await else {
        return;
    };
    let clean = conversation_with_turns(&store, "clean", 2).await;
    let gapped = conversation_with_turns(&store, "gapped", 3).await;
    let wrong_first = conversation_with_turns(&store, "wrongfirst", 1).await;
    assert!(
        store.integrity_findings().await.unwrap().is_empty(),
        "a fresh store is clean"
    );

    // Corrupt it behind the store's back. Foreign keys are triggers in PostgreSQL; the replica
    // role skips them for this session only, the way a restore tool or a hand edit would.
    let mut conn = admin_connection(&db.url).await;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut conn)
        .await
        .unwrap();
    for sql in [
        "INSERT INTO turns (turn_id, conversation_id, seq, role, content, metadata, created_at) \
         VALUES ('orphan-1', 'no-such-conversation', 1, 'user', 'x', '{}', now())"
            .to_owned(),
        format!("DELETE FROM turns WHERE conversation_id = '{gapped}' AND seq = 2"),
        format!("UPDATE turns SET role = 'assistant' WHERE conversation_id = '{wrong_first}'"),
        format!(
            "INSERT INTO turns (turn_id, conversation_id, seq, role, content, metadata, created_at) \
             VALUES ('dup-a', '{wrong_first}', 2, 'assistant', 'x', '{{}}', now())"
        ),
        "UPDATE sessions SET conversation_id = 'gone' WHERE agent_id = 'clean'".to_owned(),
    ] {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();

    let findings = store.integrity_findings().await.unwrap();
    let kinds: Vec<(&str, &str)> = findings
        .iter()
        .map(|f| (f.kind.as_str(), f.conversation_id.as_str()))
        .collect();
    for expected in [
        ("orphaned_turn", "no-such-conversation"),
        ("sequence_gap", gapped.as_str()),
        ("first_turn_not_user", wrong_first.as_str()),
        ("assistant_without_user", wrong_first.as_str()),
        ("session_without_conversation", "gone"),
    ] {
        assert!(kinds.contains(&expected), "{expected:?} in {kinds:?}");
    }
    assert!(
        !kinds.iter().any(|(_, c)| *c == clean),
        "the clean conversation has no issue"
    );

    let (deleted, repaired) = store.integrity_repair().await.unwrap();
    assert_eq!(deleted, 2, "the orphaned turn and the dangling session");
    assert_eq!(repaired, 1, "the gapped conversation was renumbered");
    let after = store.integrity_findings().await.unwrap();
    let kinds: Vec<&str> = after.iter().map(|f| f.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["first_turn_not_user", "assistant_without_user"],
        "role problems are reported, never rewritten"
    );
    let (_, turns) = store.get_conversation(&gapped).await.unwrap().unwrap();
    let seqs: Vec<i64> = turns.iter().map(|t| t.seq).collect();
    assert_eq!(seqs, [1, 2]);

    let totals = store.integrity_totals().await.unwrap();
    assert_eq!(totals.conversations, 3);
    assert_eq!(totals.turns, 2 + 2 + 2);
    assert_eq!(totals.user_turns, 2 + 2);
    assert_eq!(totals.assistant_turns, 2);
    assert_eq!(
        totals.conversations_by_agent,
        vec![
            ("clean".to_owned(), 1),
            ("gapped".to_owned(), 1),
            ("wrongfirst".to_owned(), 1)
        ]
    );
}

/// Appends to one conversation from many tasks at once, with sessions being switched and
/// recreated meanwhile: the lock order keeps PostgreSQL from ever aborting a transaction as a
/// deadlock victim, and the sequence stays contiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_appends_and_session_changes_never_deadlock() {
    let Some((store, _db)) = pg_store().await else {
        return;
    };
    let alpha = AgentId::parse("alpha").unwrap();
    store
        .upsert_agent(&conformance::spec("alpha"))
        .await
        .unwrap();
    let conv = store
        .create_session(&alpha, CliType::ClaudeCode, None)
        .await
        .unwrap()
        .conversation_id;
    let mut handles = Vec::new();
    for task in 0..40 {
        let store = store.clone();
        let conv = conv.clone();
        let alpha = alpha.clone();
        handles.push(tokio::spawn(async move {
            match task % 4 {
                0 => {
                    store
                        .create_session(&alpha, CliType::ClaudeCode, None)
                        .await?;
                }
                1 => {
                    store.switch_session(&alpha, &conv).await?;
                }
                2 => {
                    store.set_cli_session(&alpha, &conv, "cli").await?;
                }
                _ => {}
            }
            let new = conformance::new_execution("alpha", &conv, "p");
            store.begin_execution(&new).await?;
            store
                .finish_execution(&conformance::finish(&new.execution_id, "a"))
                .await?;
            store.end_session(&alpha).await?;
            Ok::<_, StoreError>(())
        }));
    }
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
    let (_, turns) = store.get_conversation(&conv).await.unwrap().unwrap();
    let seqs: Vec<i64> = turns.iter().map(|t| t.seq).collect();
    assert_eq!(seqs, (1..=80).collect::<Vec<i64>>());
    // Interleaved runs legitimately put two answers in a row (the broker's agent lock prevents
    // that in production), but the numbering itself must be clean.
    let findings = store.integrity_findings().await.unwrap();
    assert!(
        findings.iter().all(|f| !f.kind.starts_with("sequence")),
        "{findings:?}"
    );
}

#[test]
fn database_names_replace_only_the_path() {
    assert_eq!(
        with_database("postgres://u@h:5432/test", "x"),
        "postgres://u@h:5432/x"
    );
    assert_eq!(
        with_database("postgresql://u:p@h/test?sslmode=disable", "x"),
        "postgresql://u:p@h/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
}

/// A release wakes waiting brokers: `NOTIFY kokino_lease_released` with the agent id, sent in
/// the release's own transaction; a stale release sends nothing.
#[tokio::test]
async fn lease_release_notifies_listeners() {
    let Some((store, db)) = pg_store().await else {
        return;
    };
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener
        .listen(kokino_store::LEASE_RELEASED_CHANNEL)
        .await
        .unwrap();
    let wait = std::time::Duration::from_secs(5);
    let lease = store
        .acquire_lease("alpha", "broker-a", wait)
        .await
        .unwrap()
        .unwrap();

    assert!(!store
        .release_lease("alpha", "broker-b", lease.token)
        .await
        .unwrap());
    assert!(store
        .release_lease("alpha", "broker-a", lease.token)
        .await
        .unwrap());
    let note = tokio::time::timeout(wait, listener.recv())
        .await
        .expect("a notification within 5 s")
        .unwrap();
    assert_eq!(note.channel(), "kokino_lease_released");
    // The first notification is the real release's: the stale one sent nothing before it.
    assert_eq!(note.payload(), "alpha");

    // Releasing again is stale: no second notification.
    assert!(!store
        .release_lease("alpha", "broker-a", lease.token)
        .await
        .unwrap());
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(300), listener.recv()).await;
    assert!(quiet.is_err(), "unexpected notification: {quiet:?}");
    listener.unlisten_all().await.ok();
}

/// Waiting brokers hear home changes and lease releases through `Store::listen`, only once the
/// change committed, and a failed take-over announces nothing.
#[tokio::test]
async fn listen_hears_home_changes_and_releases() {
    let Some((store, _db)) = pg_store().await else {
        return;
    };
    let mut notes = store
        .listen(&[
            kokino_store::HOME_CHANGED_CHANNEL,
            kokino_store::LEASE_RELEASED_CHANNEL,
        ])
        .await
        .unwrap()
        .expect("PostgreSQL listens");
    let wait = std::time::Duration::from_secs(5);
    store
        .heartbeat_broker("b1", "http://b1", wait)
        .await
        .unwrap();
    store.set_home("alpha", "b1", None).await.unwrap();
    assert_eq!(
        next(&mut notes, wait).await,
        kokino_store::Notice::Message {
            channel: "kokino_home_changed".into(),
            payload: "alpha".into()
        }
    );
    // b1 is alive: the take-over fails and says nothing; the release after it is the next notice.
    assert!(!store.take_over_home("alpha", "b1", "b2").await.unwrap());
    let lease = store
        .acquire_lease("alpha", "b1", wait)
        .await
        .unwrap()
        .unwrap();
    store
        .release_lease("alpha", "b1", lease.token)
        .await
        .unwrap();
    assert_eq!(
        next(&mut notes, wait).await,
        kokino_store::Notice::Message {
            channel: "kokino_lease_released".into(),
            payload: "alpha".into()
        }
    );
}

async fn next(
    notes: &mut kokino_store::Notifications,
    wait: std::time::Duration,
) -> kokino_store::Notice {
    tokio::time::timeout(wait, notes.recv())
        .await
        .expect("a notice within the wait")
        .unwrap()
}

/// The pools check a connection (a ping) only when it was idle for over a second. Connections
/// that the server dropped (a restart, an administrator's `pg_terminate_backend`) while they sat
/// idle are found and replaced before anyone gets them: reads and writes go on without an error.
#[tokio::test]
async fn connections_the_server_dropped_while_idle_are_replaced() {
    let Some((store, db)) = pg_store().await else {
        return;
    };
    store
        .upsert_agent(&conformance::spec("agent-1"))
        .await
        .unwrap();
    store.ping().await.unwrap();
    let mut admin = admin_connection(&db.admin_url).await;
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db.name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!ended.is_empty(), "the store held no connection to end");
    admin.close().await.ok();
    // The server really dropped them; they are found the next time they are lent after being
    // idle past the check's threshold (sqlx measures idleness with the real clock).
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    store.ping().await.unwrap();
    let agent = AgentId::parse("agent-1").unwrap();
    store
        .create_session(&agent, CliType::ClaudeCode, None)
        .await
        .unwrap();
    assert!(store.get_agent(&agent).await.unwrap().is_some());
}
