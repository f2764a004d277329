//! Backend-independent store behaviour.
//!
//! Every case takes a freshly opened, empty [`Store`] and checks one part of the contract through
//! the public API only, so the same cases can run against every backend: each backend's test
//! file builds a store and calls these functions from its own `#[tokio::test]`s.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::Utc;
use kokino_core::breaker::{Breaker, BreakerConfig, BreakerSnapshot};
use kokino_core::{
    AgentId, AgentSpec, CliType, CommMode, ExecutionState, NewExecution, OutcomeClass, Role, Usage,
};
use kokino_store::{
    EventFilter, FallbackRow, FinishExecution, NewEvent, NewTurn, Store, StoreError,
};
use serde_json::json;

// ---- helpers ----

pub fn agent_id(s: &str) -> AgentId {
    AgentId::parse(s).expect("valid agent id")
}

pub fn spec(id: &str) -> AgentSpec {
    AgentSpec {
        agent_id: agent_id(id),
        cli_type: CliType::ClaudeCode,
        comm_mode: CommMode::Headless,
        cwd: None,
        model: None,
        role: None,
        system_prompt: None,
        timeout_ms: None,
        max_memory_mb: None,
        env: BTreeMap::new(),
        binary: None,
        extra_args: Vec::new(),
        metadata: serde_json::Map::new(),
        rate_limit: None,
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn new_execution(agent: &str, conversation_id: &str, prompt: &str) -> NewExecution {
    NewExecution {
        execution_id: new_id(),
        agent_id: agent_id(agent),
        conversation_id: conversation_id.to_owned(),
        cli_type: CliType::ClaudeCode,
        mode: CommMode::Headless,
        user_turn_id: new_id(),
        prompt: prompt.to_owned(),
        turn_metadata: json!({ "source": "test" }),
    }
}

pub fn finish(execution_id: &str, content: &str) -> FinishExecution {
    FinishExecution {
        execution_id: execution_id.to_owned(),
        outcome: OutcomeClass::Success,
        exit_code: Some(0),
        error_message: None,
        duration_ms: 1234,
        usage: Some(Usage {
            input_tokens: 10,
            output_tokens: 20,
            cache_read_tokens: 30,
            cache_creation_tokens: 40,
        }),
        cost_usd: Some(0.25),
        num_turns: Some(2),
        peak_rss_mb: Some(87.5),
        cli_session_id: Some("cli-session-1".into()),
        turn: Some(NewTurn {
            turn_id: new_id(),
            role: Role::Assistant,
            content: content.to_owned(),
            metadata: json!({ "exitCode": 0 }),
        }),
    }
}

/// Registers an agent and opens a session for it; returns the conversation id.
async fn agent_with_session(store: &Store, id: &str) -> String {
    store.upsert_agent(&spec(id)).await.unwrap();
    store
        .create_session(&agent_id(id), CliType::ClaudeCode, None)
        .await
        .unwrap()
        .conversation_id
}

/// Timestamps are kept to the millisecond; pausing a little longer guarantees that two writes
/// get distinguishable times.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

// ---- cases ----

pub async fn ping_answers(store: &Store) {
    store.ping().await.unwrap();
}

pub async fn agent_upsert_is_idempotent(store: &Store) {
    let first = store.upsert_agent(&spec("alpha")).await.unwrap();
    assert_eq!(first.created_at, first.updated_at);
    tick().await;

    let mut changed = spec("alpha");
    changed.model = Some("opus".into());
    let second = store.upsert_agent(&changed).await.unwrap();
    assert_eq!(second.created_at, first.created_at, "created_at is kept");
    assert!(second.updated_at > first.updated_at);
    assert_eq!(second.spec.model.as_deref(), Some("opus"));

    let again = store.upsert_agent(&changed).await.unwrap();
    assert_eq!(again.created_at, first.created_at);
    assert_eq!(again.spec, second.spec);

    let read = store.get_agent(&agent_id("alpha")).await.unwrap().unwrap();
    assert_eq!(read, again, "the returned record equals the stored one");
    assert_eq!(store.list_agents().await.unwrap().len(), 1);
}

pub async fn agent_record_round_trips(store: &Store) {
    let mut full = spec("full-agent");
    full.cli_type = CliType::FactoryDroid;
    full.comm_mode = CommMode::Tmux;
    full.cwd = Some("/srv/work".into());
    full.model = Some("m1".into());
    full.role = Some("reviewer".into());
    full.system_prompt = Some("Be brief.\nReally.".into());
    full.timeout_ms = Some(600_000);
    full.max_memory_mb = Some(2048);
    full.env = BTreeMap::from([("A".into(), "1".into()), ("B".into(), "x y".into())]);
    full.binary = Some("/usr/local/bin/droid".into());
    full.extra_args = vec!["--flag".into(), "value with space".into()];
    full.metadata = json!({ "team": "core", "n": 3, "nested": { "ok": true } })
        .as_object()
        .unwrap()
        .clone();
    let written = store.upsert_agent(&full).await.unwrap();
    assert_eq!(written.spec, full);
    store.upsert_agent(&spec("b-agent")).await.unwrap();
    store.upsert_agent(&spec("a-agent")).await.unwrap();

    let read = store
        .get_agent(&agent_id("full-agent"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, written);
    let ids: Vec<String> = store
        .list_agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.spec.agent_id.to_string())
        .collect();
    assert_eq!(ids, ["a-agent", "b-agent", "full-agent"], "ordered by id");
    assert!(store
        .get_agent(&agent_id("nobody"))
        .await
        .unwrap()
        .is_none());
}

pub async fn session_lifecycle(store: &Store) {
    let alpha = agent_id("alpha");
    store.upsert_agent(&spec("alpha")).await.unwrap();
    store.upsert_agent(&spec("beta")).await.unwrap();
    assert!(store.get_session(&alpha).await.unwrap().is_none());

    // A new session carries the preassigned CLI session id but is not started yet.
    let first = store
        .create_session(&alpha, CliType::ClaudeCode, Some("pre-1"))
        .await
        .unwrap();
    assert_eq!(first.cli_session_id.as_deref(), Some("pre-1"));
    assert!(!first.cli_session_started);
    assert_eq!(store.get_session(&alpha).await.unwrap().unwrap(), first);
    let (conv, turns) = store
        .get_conversation(&first.conversation_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conv.agent_id, alpha);
    assert_eq!(conv.cli_type, CliType::ClaudeCode);
    assert_eq!(conv.status, "active");
    assert!(turns.is_empty());

    // The CLI confirms its session id: session and conversation both record it.
    store
        .set_cli_session(&alpha, &first.conversation_id, "cli-1")
        .await
        .unwrap();
    let started = store.get_session(&alpha).await.unwrap().unwrap();
    assert_eq!(started.cli_session_id.as_deref(), Some("cli-1"));
    assert!(started.cli_session_started);
    let (conv, _) = store
        .get_conversation(&first.conversation_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conv.session_id.as_deref(), Some("cli-1"));

    // A second session replaces the first, whose conversation ends.
    tick().await;
    let second = store
        .create_session(&alpha, CliType::ClaudeCode, None)
        .await
        .unwrap();
    assert_ne!(second.conversation_id, first.conversation_id);
    assert_eq!(second.cli_session_id, None);
    assert!(!second.cli_session_started);
    let (old, _) = store
        .get_conversation(&first.conversation_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.status, "ended");
    assert_eq!(
        old.session_id.as_deref(),
        Some("cli-1"),
        "history keeps the CLI id"
    );
    assert_eq!(store.list_sessions().await.unwrap(), vec![second.clone()]);

    // Switching back resumes the first conversation's CLI session.
    let switched = store
        .switch_session(&alpha, &first.conversation_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(switched.conversation_id, first.conversation_id);
    assert_eq!(switched.cli_session_id.as_deref(), Some("cli-1"));
    assert!(switched.cli_session_started);
    let (reactivated, _) = store
        .get_conversation(&first.conversation_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reactivated.status, "active");
    let (left, _) = store
        .get_conversation(&second.conversation_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(left.status, "ended");

    // Switching to a conversation that never had a CLI session does not claim one.
    let unstarted = store
        .switch_session(&alpha, &second.conversation_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(unstarted.cli_session_id, None);
    assert!(!unstarted.cli_session_started);

    // Another agent's conversation, or an unknown one, is refused.
    assert!(store
        .switch_session(&agent_id("beta"), &first.conversation_id)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .switch_session(&alpha, "no-such-conversation")
        .await
        .unwrap()
        .is_none());
    assert!(store
        .get_session(&agent_id("beta"))
        .await
        .unwrap()
        .is_none());

    // set_cli_session for a conversation the session no longer points at leaves the session.
    store
        .set_cli_session(&alpha, &first.conversation_id, "cli-2")
        .await
        .unwrap();
    let current = store.get_session(&alpha).await.unwrap().unwrap();
    assert_eq!(current.conversation_id, second.conversation_id);
    assert_eq!(current.cli_session_id, None);

    // Ending removes the session row and ends the conversation.
    let ended = store.end_session(&alpha).await.unwrap().unwrap();
    assert_eq!(ended, current);
    assert!(store.get_session(&alpha).await.unwrap().is_none());
    let (conv, _) = store
        .get_conversation(&second.conversation_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conv.status, "ended");
    assert!(store.end_session(&alpha).await.unwrap().is_none());
    assert!(store.list_sessions().await.unwrap().is_empty());
}

pub async fn session_requires_known_agent(store: &Store) {
    let err = store
        .create_session(&agent_id("ghost"), CliType::Codex, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Constraint(_)), "{err:?}");
    assert!(store.list_sessions().await.unwrap().is_empty());
    assert!(store
        .list_conversations(&agent_id("ghost"))
        .await
        .unwrap()
        .is_empty());
}

pub async fn execution_begin_and_finish(store: &Store) {
    let conv = agent_with_session(store, "alpha").await;
    let before = store
        .get_session(&agent_id("alpha"))
        .await
        .unwrap()
        .unwrap();
    tick().await;

    let new = new_execution("alpha", &conv, "hello");
    let user = store.begin_execution(&new).await.unwrap();
    assert_eq!(user.seq, 1);
    assert_eq!(user.role, Role::User);
    assert_eq!(user.content, "hello");
    assert_eq!(user.turn_id, new.user_turn_id);
    assert_eq!(user.metadata, new.turn_metadata);

    let running = store
        .get_execution(&new.execution_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(running.state, ExecutionState::Running);
    assert_eq!(running.outcome, None);
    assert_eq!(running.finished_at, None);
    assert_eq!(running.usage, None);
    assert_eq!(running.conversation_id, conv);
    assert_eq!(running.agent_id, agent_id("alpha"));
    let listed = store.running_executions().await.unwrap();
    assert_eq!(listed, vec![running.clone()]);

    store
        .set_execution_process(&new.execution_id, 4242, Some(987_654))
        .await
        .unwrap();
    let with_pid = store
        .get_execution(&new.execution_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(with_pid.pid, Some(4242));
    assert_eq!(with_pid.pid_start_time, Some(987_654));

    let session = store
        .get_session(&agent_id("alpha"))
        .await
        .unwrap()
        .unwrap();
    assert!(session.last_activity_at > before.last_activity_at);
    tick().await;

    let fin = finish(&new.execution_id, "hi there");
    let result = store.finish_execution(&fin).await.unwrap().unwrap();
    assert_eq!(result.seq, 2);
    assert_eq!(result.role, Role::Assistant);
    assert_eq!(result.content, "hi there");

    let done = store
        .get_execution(&new.execution_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.state, ExecutionState::Finished);
    assert_eq!(done.outcome, Some(OutcomeClass::Success));
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(done.duration_ms, Some(1234));
    assert_eq!(done.usage, fin.usage);
    assert_eq!(done.cost_usd, Some(0.25));
    assert_eq!(done.num_turns, Some(2));
    assert_eq!(done.peak_rss_mb, Some(87.5));
    assert_eq!(done.cli_session_id.as_deref(), Some("cli-session-1"));
    assert_eq!(done.pid, Some(4242), "finishing keeps the recorded pid");
    assert!(done.finished_at.unwrap() >= done.started_at);
    assert!(store.running_executions().await.unwrap().is_empty());

    let (conversation, turns) = store.get_conversation(&conv).await.unwrap().unwrap();
    assert_eq!(turns, vec![user, result]);
    assert!(conversation.updated_at > conversation.created_at);
    let after = store
        .get_session(&agent_id("alpha"))
        .await
        .unwrap()
        .unwrap();
    assert!(after.last_activity_at > session.last_activity_at);
}

pub async fn failed_execution_records_system_turn(store: &Store) {
    let conv = agent_with_session(store, "alpha").await;
    let new = new_execution("alpha", &conv, "do it");
    store.begin_execution(&new).await.unwrap();
    let fin = FinishExecution {
        execution_id: new.execution_id.clone(),
        outcome: OutcomeClass::Timeout,
        exit_code: None,
        error_message: Some("timed out after 1000 ms".into()),
        duration_ms: 1000,
        usage: None,
        cost_usd: None,
        num_turns: None,
        peak_rss_mb: None,
        cli_session_id: None,
        turn: Some(NewTurn {
            turn_id: new_id(),
            role: Role::System,
            content: "The run timed out.".into(),
            metadata: json!({ "outcome": "timeout" }),
        }),
    };
    let turn = store.finish_execution(&fin).await.unwrap().unwrap();
    assert_eq!((turn.seq, turn.role), (2, Role::System));
    let done = store
        .get_execution(&new.execution_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.outcome, Some(OutcomeClass::Timeout));
    assert_eq!(
        done.error_message.as_deref(),
        Some("timed out after 1000 ms")
    );
    assert_eq!(done.usage, None);
    assert_eq!(done.exit_code, None);
    assert_eq!(done.cli_session_id, None);
}

pub async fn finish_of_unknown_execution_writes_nothing(store: &Store) {
    let conv = agent_with_session(store, "alpha").await;
    let err = store
        .finish_execution(&finish("no-such-execution", "lost"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::ExecutionNotFound(id) if id == "no-such-execution"),
        "{err:?}"
    );
    let err = store
        .set_execution_process("no-such-execution", 1, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ExecutionNotFound(_)), "{err:?}");
    let (_, turns) = store.get_conversation(&conv).await.unwrap().unwrap();
    assert!(turns.is_empty());
}

pub async fn begin_on_unknown_conversation_writes_nothing(store: &Store) {
    store.upsert_agent(&spec("alpha")).await.unwrap();
    let new = new_execution("alpha", "no-such-conversation", "hello");
    assert!(store.begin_execution(&new).await.is_err());
    assert!(store
        .get_execution(&new.execution_id)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .get_turn(&agent_id("alpha"), &new.user_turn_id)
        .await
        .unwrap()
        .is_none());
}

pub async fn duplicate_execution_id_rolls_back_the_user_turn(store: &Store) {
    let conv = agent_with_session(store, "alpha").await;
    let first = new_execution("alpha", &conv, "one");
    store.begin_execution(&first).await.unwrap();
    let mut clash = new_execution("alpha", &conv, "two");
    clash.execution_id = first.execution_id.clone();
    assert!(store.begin_execution(&clash).await.is_err());
    let (_, turns) = store.get_conversation(&conv).await.unwrap().unwrap();
    assert_eq!(turns.len(), 1, "the user turn is not left behind");
    assert_eq!(turns[0].content, "one");
}

/// 50 concurrent begin/finish pairs spread over 10 conversations: every turn lands, and every
/// conversation's sequence numbers are exactly 1..=n.
pub async fn concurrent_executions_keep_sequences_contiguous(store: &Store) {
    const CONVERSATIONS: usize = 10;
    const TASKS: usize = 50;
    let mut conversations = Vec::new();
    for i in 0..CONVERSATIONS {
        conversations.push(agent_with_session(store, &format!("agent-{i}")).await);
    }

    let mut handles = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        let agent = format!("agent-{}", task % CONVERSATIONS);
        let conv = conversations[task % CONVERSATIONS].clone();
        handles.push(tokio::spawn(async move {
            let new = new_execution(&agent, &conv, &format!("prompt {task}"));
            store.begin_execution(&new).await?;
            store
                .finish_execution(&finish(&new.execution_id, &format!("answer {task}")))
                .await?;
            Ok::<_, StoreError>(new.execution_id)
        }));
    }
    let mut execution_ids = Vec::new();
    for handle in handles {
        execution_ids.push(
            handle
                .await
                .expect("task panicked")
                .expect("store write failed"),
        );
    }

    let per_conversation = 2 * TASKS / CONVERSATIONS;
    for conv in &conversations {
        let (_, turns) = store.get_conversation(conv).await.unwrap().unwrap();
        let seqs: Vec<i64> = turns.iter().map(|t| t.seq).collect();
        let expected: Vec<i64> = (1..=per_conversation as i64).collect();
        assert_eq!(seqs, expected, "conversation {conv}");
        let users = turns.iter().filter(|t| t.role == Role::User).count();
        assert_eq!(users, per_conversation / 2);
    }
    for id in &execution_ids {
        let exec = store.get_execution(id).await.unwrap().unwrap();
        assert_eq!(exec.state, ExecutionState::Finished);
    }
    assert!(store.running_executions().await.unwrap().is_empty());
}

/// Writes that fail, fired at the same moment as writes that succeed (on SQLite they share a
/// group commit): each failure is its caller's answer alone, nothing of it is written, and
/// every good write lands.
pub async fn failed_writes_do_not_take_concurrent_ones_down(store: &Store) {
    const GOOD: usize = 40;
    let conv = agent_with_session(store, "alpha").await;
    let taken = new_execution("alpha", &conv, "first");
    store.begin_execution(&taken).await.unwrap();
    let mut handles = Vec::new();
    for i in 0..GOOD + 20 {
        let store = store.clone();
        let conv = conv.clone();
        let taken = taken.execution_id.clone();
        handles.push(tokio::spawn(async move {
            let mut new = new_execution("alpha", &conv, &format!("prompt {i}"));
            if i >= GOOD && i % 2 == 0 {
                // A conversation that does not exist.
                new.conversation_id = "no-such-conversation".into();
            } else if i >= GOOD {
                // An execution id that is already taken.
                new.execution_id = taken;
            }
            let begun = store.begin_execution(&new).await;
            let finished = match &begun {
                Ok(_) => Some(
                    store
                        .finish_execution(&finish(&new.execution_id, &format!("answer {i}")))
                        .await,
                ),
                Err(_) => None,
            };
            (i, begun.is_ok(), finished.map(|f| f.is_ok()))
        }));
    }
    for handle in handles {
        let (i, begun, finished) = handle.await.expect("task panicked");
        if i < GOOD {
            assert!(begun, "good write {i} failed");
            assert_eq!(finished, Some(true), "good finish {i} failed");
        } else {
            assert!(!begun, "bad write {i} succeeded");
        }
    }
    let (_, turns) = store.get_conversation(&conv).await.unwrap().unwrap();
    assert_eq!(
        turns.len(),
        1 + 2 * GOOD,
        "only the good writes' turns are there"
    );
    let seqs: Vec<i64> = turns.iter().map(|t| t.seq).collect();
    assert_eq!(seqs, (1..=turns.len() as i64).collect::<Vec<_>>());
    assert_eq!(store.running_executions().await.unwrap().len(), 1);
}

pub async fn turns_are_visible_only_to_their_agent(store: &Store) {
    let conv = agent_with_session(store, "alpha").await;
    store.upsert_agent(&spec("beta")).await.unwrap();
    let new = new_execution("alpha", &conv, "secret");
    let turn = store.begin_execution(&new).await.unwrap();
    let found = store
        .get_turn(&agent_id("alpha"), &turn.turn_id)
        .await
        .unwrap();
    assert_eq!(found, Some(turn.clone()));
    assert!(store
        .get_turn(&agent_id("beta"), &turn.turn_id)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .get_turn(&agent_id("alpha"), "no-such-turn")
        .await
        .unwrap()
        .is_none());
}

pub async fn conversations_list_newest_first(store: &Store) {
    store.upsert_agent(&spec("alpha")).await.unwrap();
    store.upsert_agent(&spec("beta")).await.unwrap();
    let mut created = Vec::new();
    for _ in 0..3 {
        let s = store
            .create_session(&agent_id("alpha"), CliType::Gemini, None)
            .await
            .unwrap();
        created.push(s.conversation_id);
        tick().await;
    }
    store
        .create_session(&agent_id("beta"), CliType::Codex, None)
        .await
        .unwrap();
    let listed: Vec<String> = store
        .list_conversations(&agent_id("alpha"))
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.conversation_id)
        .collect();
    created.reverse();
    assert_eq!(listed, created);
    let statuses: Vec<String> = store
        .list_conversations(&agent_id("alpha"))
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(statuses, ["active", "ended", "ended"]);
}

pub async fn delete_conversation_cascades(store: &Store) {
    let conv = agent_with_session(store, "alpha").await;
    let new = new_execution("alpha", &conv, "hello");
    let turn = store.begin_execution(&new).await.unwrap();
    store
        .finish_execution(&finish(&new.execution_id, "bye"))
        .await
        .unwrap();

    assert!(store.delete_conversation(&conv).await.unwrap());
    assert!(store.get_conversation(&conv).await.unwrap().is_none());
    assert!(store
        .get_execution(&new.execution_id)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .get_turn(&agent_id("alpha"), &turn.turn_id)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .get_session(&agent_id("alpha"))
        .await
        .unwrap()
        .is_none());
    assert!(store.get_agent(&agent_id("alpha")).await.unwrap().is_some());
    assert!(!store.delete_conversation(&conv).await.unwrap());
}

pub async fn delete_agent_without_purge_keeps_history(store: &Store) {
    let conv = agent_with_session(store, "alpha").await;
    let new = new_execution("alpha", &conv, "hello");
    store.begin_execution(&new).await.unwrap();
    store
        .finish_execution(&finish(&new.execution_id, "bye"))
        .await
        .unwrap();

    assert!(store.delete_agent(&agent_id("alpha"), false).await.unwrap());
    assert!(store.get_agent(&agent_id("alpha")).await.unwrap().is_none());
    assert!(store
        .get_session(&agent_id("alpha"))
        .await
        .unwrap()
        .is_none());
    let (conversation, turns) = store.get_conversation(&conv).await.unwrap().unwrap();
    assert_eq!(conversation.status, "ended");
    assert_eq!(turns.len(), 2);
    assert!(store
        .get_execution(&new.execution_id)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        store
            .list_conversations(&agent_id("alpha"))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(!store.delete_agent(&agent_id("alpha"), false).await.unwrap());
}

pub async fn delete_agent_with_purge_removes_history(store: &Store) {
    let conv = agent_with_session(store, "alpha").await;
    let other = agent_with_session(store, "beta").await;
    let new = new_execution("alpha", &conv, "hello");
    store.begin_execution(&new).await.unwrap();
    let kept = new_execution("beta", &other, "hello");
    store.begin_execution(&kept).await.unwrap();
    // An older, ended conversation of the agent goes too.
    store
        .create_session(&agent_id("alpha"), CliType::ClaudeCode, None)
        .await
        .unwrap();

    assert!(store.delete_agent(&agent_id("alpha"), true).await.unwrap());
    assert!(store.get_agent(&agent_id("alpha")).await.unwrap().is_none());
    assert!(store
        .list_conversations(&agent_id("alpha"))
        .await
        .unwrap()
        .is_empty());
    assert!(store.get_conversation(&conv).await.unwrap().is_none());
    assert!(store
        .get_execution(&new.execution_id)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .get_session(&agent_id("alpha"))
        .await
        .unwrap()
        .is_none());

    // Another agent's data is untouched.
    assert!(store
        .get_session(&agent_id("beta"))
        .await
        .unwrap()
        .is_some());
    assert!(store
        .get_execution(&kept.execution_id)
        .await
        .unwrap()
        .is_some());
    assert_eq!(store.running_executions().await.unwrap().len(), 1);
    assert!(!store.delete_agent(&agent_id("alpha"), true).await.unwrap());
}

pub async fn idle_sessions_are_swept(store: &Store) {
    let idle_conv = agent_with_session(store, "idle").await;
    tick().await;
    let cutoff = Utc::now();
    tick().await;
    let busy_conv = agent_with_session(store, "busy").await;

    let ended = store.end_sessions_idle_since(cutoff).await.unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].agent_id, agent_id("idle"));
    assert_eq!(ended[0].conversation_id, idle_conv);
    assert!(store
        .get_session(&agent_id("idle"))
        .await
        .unwrap()
        .is_none());
    let (conv, _) = store.get_conversation(&idle_conv).await.unwrap().unwrap();
    assert_eq!(conv.status, "ended");

    let busy = store.get_session(&agent_id("busy")).await.unwrap().unwrap();
    assert_eq!(busy.conversation_id, busy_conv);
    assert!(store
        .end_sessions_idle_since(cutoff)
        .await
        .unwrap()
        .is_empty());

    // Activity (an execution) keeps a session alive past a cutoff taken before it.
    tick().await;
    let cutoff = Utc::now();
    tick().await;
    store
        .begin_execution(&new_execution("busy", &busy_conv, "still here"))
        .await
        .unwrap();
    assert!(store
        .end_sessions_idle_since(cutoff)
        .await
        .unwrap()
        .is_empty());
}

pub async fn events_filter_and_order(store: &Store) {
    let event = |t: &str, agent: Option<&str>, success: Option<bool>| NewEvent {
        event_type: t.to_owned(),
        agent_id: agent.map(str::to_owned),
        cli_type: Some("codex".into()),
        duration_ms: Some(12),
        success,
        metadata: json!({ "k": t }),
    };
    let first = store
        .insert_event(&event("EXECUTION_STARTED", Some("alpha"), None))
        .await
        .unwrap();
    tick().await;
    let since = Utc::now();
    let second = store
        .insert_event(&event("EXECUTION_COMPLETED", Some("alpha"), Some(true)))
        .await
        .unwrap();
    let third = store
        .insert_event(&event("EXECUTION_STARTED", Some("beta"), Some(false)))
        .await
        .unwrap();
    let fourth = store
        .insert_event(&event("CIRCUIT_OPENED", None, None))
        .await
        .unwrap();
    assert!(first < second && second < third && third < fourth);

    let ids =
        |events: Vec<kokino_store::Event>| events.into_iter().map(|e| e.id).collect::<Vec<_>>();

    let all = store.list_events(&EventFilter::default()).await.unwrap();
    assert_eq!(
        ids(all.clone()),
        [fourth, third, second, first],
        "newest first"
    );
    let completed = all.iter().find(|e| e.id == second).unwrap();
    assert_eq!(completed.event_type, "EXECUTION_COMPLETED");
    assert_eq!(completed.agent_id.as_deref(), Some("alpha"));
    assert_eq!(completed.cli_type.as_deref(), Some("codex"));
    assert_eq!(completed.duration_ms, Some(12));
    assert_eq!(completed.success, Some(true));
    assert_eq!(completed.metadata, json!({ "k": "EXECUTION_COMPLETED" }));
    assert_eq!(all.iter().find(|e| e.id == fourth).unwrap().agent_id, None);

    let by_type = EventFilter {
        event_type: Some("EXECUTION_STARTED".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_events(&by_type).await.unwrap()),
        [third, first]
    );

    let by_agent = EventFilter {
        agent_id: Some("alpha".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_events(&by_agent).await.unwrap()),
        [second, first]
    );

    let recent = EventFilter {
        since: Some(since),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_events(&recent).await.unwrap()),
        [fourth, third, second]
    );

    let combined = EventFilter {
        event_type: Some("EXECUTION_STARTED".into()),
        agent_id: Some("beta".into()),
        since: Some(since),
        limit: 0,
    };
    assert_eq!(ids(store.list_events(&combined).await.unwrap()), [third]);

    let limited = EventFilter {
        limit: 2,
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_events(&limited).await.unwrap()),
        [fourth, third]
    );
}

pub async fn event_limit_defaults_and_caps(store: &Store) {
    for i in 0..120 {
        store
            .insert_event(&NewEvent {
                event_type: "LOCK_ACQUIRED".into(),
                agent_id: None,
                cli_type: None,
                duration_ms: None,
                success: None,
                metadata: json!({ "waitedMs": i }),
            })
            .await
            .unwrap();
    }
    let default = store.list_events(&EventFilter::default()).await.unwrap();
    assert_eq!(default.len(), 100);
    // Same-millisecond events still come back newest first, by id.
    assert!(default.windows(2).all(|w| w[0].id > w[1].id));
    let huge = EventFilter {
        limit: u32::MAX,
        ..Default::default()
    };
    assert_eq!(store.list_events(&huge).await.unwrap().len(), 120);
}

/// Quick consistency check over a mix of operations: the map of conversation → turn count seen
/// through `get_conversation` matches what was written.
pub async fn conversations_are_independent(store: &Store) {
    let a = agent_with_session(store, "alpha").await;
    let b = agent_with_session(store, "beta").await;
    let mut expected: HashMap<String, i64> = HashMap::new();
    for (i, conv) in [&a, &b, &a, &a, &b].into_iter().enumerate() {
        let agent = if conv == &a { "alpha" } else { "beta" };
        let new = new_execution(agent, conv, &format!("p{i}"));
        let turn = store.begin_execution(&new).await.unwrap();
        let count = expected.entry(conv.clone()).or_default();
        *count += 1;
        assert_eq!(turn.seq, *count);
        let result = store
            .finish_execution(&finish(&new.execution_id, "ok"))
            .await
            .unwrap()
            .unwrap();
        *count += 1;
        assert_eq!(result.seq, *count);
    }
    for (conv, count) in expected {
        let (_, turns) = store.get_conversation(&conv).await.unwrap().unwrap();
        assert_eq!(turns.len() as i64, count);
    }
}

pub async fn event_retention_deletes_only_older_events(store: &Store) {
    let ev = |t: &str| NewEvent {
        event_type: t.to_owned(),
        agent_id: None,
        cli_type: None,
        duration_ms: None,
        success: None,
        metadata: json!({}),
    };
    store.insert_events(&[ev("A"), ev("B")]).await.unwrap();
    let past = chrono::Utc::now() - chrono::Duration::days(1);
    assert_eq!(store.count_events_before(past).await.unwrap(), 0);
    assert_eq!(store.delete_events_before(past).await.unwrap(), 0);
    let future = chrono::Utc::now() + chrono::Duration::seconds(5);
    assert_eq!(store.count_events_before(future).await.unwrap(), 2);
    assert_eq!(store.delete_events_before(future).await.unwrap(), 2);
    let left = store.list_events(&EventFilter::default()).await.unwrap();
    assert!(left.is_empty());
}

// ---- breakers and fallback ----

/// A time with millisecond precision, so it survives the store's truncation unchanged.
fn ms_time(offset_secs: i64) -> chrono::DateTime<Utc> {
    let now = Utc::now() + chrono::Duration::seconds(offset_secs);
    chrono::DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap()
}

pub async fn circuits_round_trip_and_upsert(store: &Store) {
    assert!(store.load_circuits().await.unwrap().is_empty());

    // A real breaker snapshot, as the service will store it; its times keep full precision
    // because the store treats the snapshot as opaque JSON.
    let mut breaker = Breaker::new(BreakerConfig::default());
    let now = Utc::now();
    for _ in 0..5 {
        breaker.record(OutcomeClass::CliError, Some("exit 1"), None, now, 0.5);
    }
    let snapshot = serde_json::to_value(breaker.snapshot()).unwrap();
    store
        .save_circuit("agent", "alpha", &snapshot)
        .await
        .unwrap();
    let closed = serde_json::to_value(Breaker::new(BreakerConfig::default()).snapshot()).unwrap();
    store.save_circuit("cli", "codex", &closed).await.unwrap();
    store
        .save_circuit("agent", "beta", &json!({"state": "closed"}))
        .await
        .unwrap();

    let rows = store.load_circuits().await.unwrap();
    assert_eq!(
        rows,
        vec![
            ("agent".to_owned(), "alpha".to_owned(), snapshot.clone()),
            (
                "agent".to_owned(),
                "beta".to_owned(),
                json!({"state": "closed"})
            ),
            ("cli".to_owned(), "codex".to_owned(), closed.clone()),
        ]
    );
    let back: BreakerSnapshot = serde_json::from_value(rows[0].2.clone()).unwrap();
    assert_eq!(back, breaker.snapshot());

    // Saving again replaces the row instead of adding one.
    store.save_circuit("agent", "alpha", &closed).await.unwrap();
    let rows = store.load_circuits().await.unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].2, closed);
}

pub async fn circuit_delete(store: &Store) {
    let snapshot = json!({"state": "open", "consecutiveFailures": 5, "openForMs": 60000});
    store
        .save_circuit("agent", "alpha", &snapshot)
        .await
        .unwrap();
    store.save_circuit("cli", "alpha", &snapshot).await.unwrap();
    assert!(!store.delete_circuit("agent", "nobody").await.unwrap());
    assert!(store.delete_circuit("agent", "alpha").await.unwrap());
    assert!(!store.delete_circuit("agent", "alpha").await.unwrap());
    // Scope is part of the key: the CLI row with the same key stays.
    let rows = store.load_circuits().await.unwrap();
    assert_eq!(rows, vec![("cli".to_owned(), "alpha".to_owned(), snapshot)]);
}

pub async fn circuit_rejects_unknown_scope(store: &Store) {
    let err = store
        .save_circuit("mode", "headless", &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Constraint(_)), "{err:?}");
    assert!(store.load_circuits().await.unwrap().is_empty());
}

pub async fn fallbacks_round_trip_and_upsert(store: &Store) {
    assert!(store.load_fallbacks().await.unwrap().is_empty());
    let t1 = ms_time(-60);
    let t2 = ms_time(0);
    store
        .put_fallback("cli", "codex", "doctor: auth failed", t1, true)
        .await
        .unwrap();
    store
        .put_fallback("agent", "alpha", "operator", t1, false)
        .await
        .unwrap();
    // The same key under the other kind is a different override.
    store
        .put_fallback("agent", "codex", "odd but valid", t2, false)
        .await
        .unwrap();
    let rows = store.load_fallbacks().await.unwrap();
    let row = |kind: &str, key: &str, reason: &str, since, auto| FallbackRow {
        kind: kind.to_owned(),
        key: key.to_owned(),
        reason: reason.to_owned(),
        since,
        auto,
    };
    assert_eq!(
        rows,
        vec![
            row("agent", "alpha", "operator", t1, false),
            row("agent", "codex", "odd but valid", t2, false),
            row("cli", "codex", "doctor: auth failed", t1, true),
        ]
    );

    // An operator's entry over the automatic one replaces it (reason, time and flag).
    store
        .put_fallback("cli", "codex", "operator", t2, false)
        .await
        .unwrap();
    let rows = store.load_fallbacks().await.unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2], row("cli", "codex", "operator", t2, false));

    // Sub-millisecond precision is dropped, as for every stored time.
    let precise = t2 + chrono::Duration::microseconds(1234);
    store
        .put_fallback("agent", "alpha", "operator", precise, false)
        .await
        .unwrap();
    let rows = store.load_fallbacks().await.unwrap();
    assert_eq!(rows[0].since, t2 + chrono::Duration::milliseconds(1));
}

pub async fn fallback_delete_and_clear(store: &Store) {
    let t = ms_time(0);
    assert_eq!(store.clear_fallbacks().await.unwrap(), 0);
    store
        .put_fallback("cli", "gemini", "x", t, false)
        .await
        .unwrap();
    store
        .put_fallback("agent", "a", "y", t, true)
        .await
        .unwrap();
    store
        .put_fallback("agent", "b", "z", t, false)
        .await
        .unwrap();
    assert!(store.delete_fallback("agent", "a").await.unwrap());
    assert!(!store.delete_fallback("agent", "a").await.unwrap());
    assert!(!store.delete_fallback("cli", "b").await.unwrap());
    assert_eq!(store.load_fallbacks().await.unwrap().len(), 2);
    assert_eq!(store.clear_fallbacks().await.unwrap(), 2);
    assert!(store.load_fallbacks().await.unwrap().is_empty());
    assert_eq!(store.clear_fallbacks().await.unwrap(), 0);
}

pub async fn fallback_rejects_unknown_kind(store: &Store) {
    let err = store
        .put_fallback("mode", "tmux", "x", ms_time(0), false)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Constraint(_)), "{err:?}");
    assert!(store.load_fallbacks().await.unwrap().is_empty());
}

// ---- leases ----
//
// Lease expiry is judged by the database's clock, so these cases sleep in real time: a 200 ms
// lease and a 300 ms pause leave 100 ms of margin on either side.

const SHORT_TTL: Duration = Duration::from_millis(200);
const PAST_SHORT_TTL: Duration = Duration::from_millis(300);
const LONG_TTL: Duration = Duration::from_secs(30);

async fn turn_count(store: &Store, conversation_id: &str) -> usize {
    let (_, turns) = store
        .get_conversation(conversation_id)
        .await
        .unwrap()
        .unwrap();
    turns.len()
}

pub async fn lease_acquire_renew_release_cycle(store: &Store) {
    assert_eq!(store.lease_holder("alpha").await.unwrap(), None);
    let before = Utc::now();
    let first = store
        .acquire_lease("alpha", "broker-a", LONG_TTL)
        .await
        .unwrap()
        .expect("a free lease is granted");
    assert_eq!(
        (first.agent_id.as_str(), first.owner.as_str(), first.token),
        ("alpha", "broker-a", 1)
    );
    assert_eq!(first.taken_over_from, None);
    // The database's clock runs on this machine in the tests, so this bound holds here.
    assert!(first.expires_at > before + chrono::Duration::seconds(25));
    assert_eq!(
        store.lease_holder("alpha").await.unwrap(),
        Some(first.clone())
    );
    assert!(store
        .lease_is_current("alpha", "broker-a", 1)
        .await
        .unwrap());
    assert!(!store
        .lease_is_current("alpha", "broker-b", 1)
        .await
        .unwrap());
    assert!(!store.lease_is_current("beta", "broker-a", 1).await.unwrap());

    tick().await;
    assert!(store
        .renew_lease("alpha", "broker-a", 1, LONG_TTL)
        .await
        .unwrap());
    let renewed = store.lease_holder("alpha").await.unwrap().unwrap();
    assert_eq!(renewed.token, 1, "renewing keeps the token");
    assert!(renewed.expires_at > first.expires_at);
    assert!(!store
        .renew_lease("alpha", "broker-b", 1, LONG_TTL)
        .await
        .unwrap());
    assert!(!store
        .renew_lease("alpha", "broker-a", 2, LONG_TTL)
        .await
        .unwrap());

    // Acquiring one's own lease again is a new acquisition: a new token, the old one is stale.
    let again = store
        .acquire_lease("alpha", "broker-a", LONG_TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.token, again.taken_over_from.as_deref()), (2, None));
    assert!(!store
        .lease_is_current("alpha", "broker-a", 1)
        .await
        .unwrap());
    assert!(!store
        .renew_lease("alpha", "broker-a", 1, LONG_TTL)
        .await
        .unwrap());
    assert!(!store.release_lease("alpha", "broker-a", 1).await.unwrap());
    assert!(store
        .lease_is_current("alpha", "broker-a", 2)
        .await
        .unwrap());

    assert!(!store.release_lease("alpha", "broker-b", 2).await.unwrap());
    assert!(store.release_lease("alpha", "broker-a", 2).await.unwrap());
    assert_eq!(store.lease_holder("alpha").await.unwrap(), None);
    assert!(!store
        .lease_is_current("alpha", "broker-a", 2)
        .await
        .unwrap());
    assert!(
        !store.release_lease("alpha", "broker-a", 2).await.unwrap(),
        "a second release does nothing"
    );
    assert!(
        !store
            .renew_lease("alpha", "broker-a", 2, LONG_TTL)
            .await
            .unwrap(),
        "a released lease is not revived"
    );

    // The token keeps counting across release and re-acquisition.
    let third = store
        .acquire_lease("alpha", "broker-a", LONG_TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((third.token, third.taken_over_from.as_deref()), (3, None));
    assert!(store.release_lease("alpha", "broker-a", 3).await.unwrap());
    // Another broker taking a released lease takes nothing over: the release was clean (only
    // an expired, unreleased lease is a takeover, whose runs need cleaning up).
    let other = store
        .acquire_lease("alpha", "broker-b", LONG_TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((other.token, other.taken_over_from.as_deref()), (4, None));
    // Leases are per agent.
    let beta = store
        .acquire_lease("beta", "broker-a", LONG_TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(beta.token, 1);
}

pub async fn lease_is_exclusive_until_it_expires(store: &Store) {
    let first = store
        .acquire_lease("alpha", "broker-a", SHORT_TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .acquire_lease("alpha", "broker-b", LONG_TTL)
            .await
            .unwrap(),
        None,
        "an unexpired lease of another owner is not granted"
    );
    let holder = store.lease_holder("alpha").await.unwrap().unwrap();
    assert_eq!((holder.owner.as_str(), holder.token), ("broker-a", 1));

    tokio::time::sleep(PAST_SHORT_TTL).await;
    assert_eq!(store.lease_holder("alpha").await.unwrap(), None);
    assert!(!store
        .lease_is_current("alpha", "broker-a", first.token)
        .await
        .unwrap());
    assert!(
        !store
            .renew_lease("alpha", "broker-a", first.token, LONG_TTL)
            .await
            .unwrap(),
        "an expired lease is not revived, even before anyone takes it"
    );

    let second = store
        .acquire_lease("alpha", "broker-b", LONG_TTL)
        .await
        .unwrap()
        .expect("an expired lease is granted to another owner");
    assert!(second.token > first.token);
    assert_eq!(second.taken_over_from.as_deref(), Some("broker-a"));
    assert_eq!(
        store.lease_holder("alpha").await.unwrap().unwrap().owner,
        "broker-b"
    );

    // The old holder's late calls change nothing.
    assert!(!store
        .renew_lease("alpha", "broker-a", first.token, LONG_TTL)
        .await
        .unwrap());
    assert!(!store
        .release_lease("alpha", "broker-a", first.token)
        .await
        .unwrap());
    assert_eq!(
        store
            .acquire_lease("alpha", "broker-a", LONG_TTL)
            .await
            .unwrap(),
        None
    );
    let holder = store.lease_holder("alpha").await.unwrap().unwrap();
    assert_eq!(
        (holder.owner.as_str(), holder.token),
        ("broker-b", second.token)
    );
}

pub async fn stale_lease_holder_cannot_write(store: &Store) {
    let conv = agent_with_session(store, "alpha").await;
    let a = store
        .acquire_lease("alpha", "broker-a", SHORT_TTL)
        .await
        .unwrap()
        .unwrap();

    // While the lease is live, fenced writes go through like the plain ones.
    let running = new_execution("alpha", &conv, "first");
    let user = store
        .begin_execution_fenced(&running, "broker-a", a.token)
        .await
        .unwrap();
    assert_eq!((user.seq, user.role), (1, Role::User));
    // The fenced write records the lease's owner as the execution's broker, in the same write.
    assert_eq!(
        store
            .running_executions_of("broker-a")
            .await
            .unwrap()
            .iter()
            .map(|r| r.execution_id.as_str())
            .collect::<Vec<_>>(),
        [running.execution_id.as_str()]
    );
    // A token that was never issued is refused at once, live lease or not.
    let err = store
        .begin_execution_fenced(&new_execution("alpha", &conv, "x"), "broker-a", a.token + 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StaleLease { .. }), "{err:?}");
    assert_eq!(turn_count(store, &conv).await, 1);

    tokio::time::sleep(PAST_SHORT_TTL).await;
    let b = store
        .acquire_lease("alpha", "broker-b", LONG_TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.taken_over_from.as_deref(), Some("broker-a"));

    // broker-a wakes up from its stall and tries to carry on.
    let late = new_execution("alpha", &conv, "second");
    let err = store
        .begin_execution_fenced(&late, "broker-a", a.token)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::StaleLease { agent_id, token } if agent_id == "alpha" && *token == a.token),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("alpha") && message.contains(&a.token.to_string()),
        "{message}"
    );
    assert_eq!(
        turn_count(store, &conv).await,
        1,
        "no user turn was written"
    );
    assert!(store
        .get_execution(&late.execution_id)
        .await
        .unwrap()
        .is_none());

    let err = store
        .finish_execution_fenced(
            &finish(&running.execution_id, "too late"),
            "alpha",
            "broker-a",
            a.token,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StaleLease { .. }), "{err:?}");
    assert_eq!(
        turn_count(store, &conv).await,
        1,
        "no result turn was written"
    );
    let still = store
        .get_execution(&running.execution_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(still.state, ExecutionState::Running);
    assert_eq!(still.outcome, None);

    // The new holder finds the execution the old one left running, and may close it.
    let foreign = store
        .foreign_running_executions("alpha", "broker-b")
        .await
        .unwrap();
    assert_eq!(foreign, vec![still]);
    let mut interrupted = finish(&running.execution_id, "interrupted");
    interrupted.outcome = OutcomeClass::Interrupted;
    let turn = store
        .finish_execution_fenced(&interrupted, "alpha", "broker-b", b.token)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(turn.seq, 2);
    assert!(store
        .foreign_running_executions("alpha", "broker-b")
        .await
        .unwrap()
        .is_empty());

    // A lease fences only its own agent's executions.
    let beta_conv = agent_with_session(store, "beta").await;
    let beta_run = new_execution("beta", &beta_conv, "b");
    store.begin_execution(&beta_run).await.unwrap();
    let err = store
        .finish_execution_fenced(
            &finish(&beta_run.execution_id, "x"),
            "alpha",
            "broker-b",
            b.token,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unsupported(_)), "{err:?}");
    assert_eq!(turn_count(store, &beta_conv).await, 1);

    // No lease at all fences everything.
    let err = store
        .begin_execution_fenced(&new_execution("beta", &beta_conv, "c"), "broker-b", 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StaleLease { .. }), "{err:?}");
    assert_eq!(turn_count(store, &beta_conv).await, 1);
}

/// 20 brokers race for one free lease: exactly one wins. Then, once that lease expired, 20 other
/// brokers race to take it over: again exactly one wins, and it names the previous owner.
pub async fn concurrent_acquisitions_have_one_winner(store: &Store) {
    const BROKERS: usize = 20;
    async fn race(store: &Store, prefix: &str, ttl: Duration) -> Vec<kokino_store::Lease> {
        let handles: Vec<_> = (0..BROKERS)
            .map(|i| {
                let store = store.clone();
                let owner = format!("{prefix}-{i}");
                tokio::spawn(async move { store.acquire_lease("alpha", &owner, ttl).await })
            })
            .collect();
        let mut won = Vec::new();
        for handle in handles {
            if let Some(lease) = handle.await.unwrap().unwrap() {
                won.push(lease);
            }
        }
        won
    }

    let won = race(store, "broker", SHORT_TTL).await;
    assert_eq!(won.len(), 1, "{won:?}");
    let winner = &won[0];
    assert_eq!((winner.token, winner.taken_over_from.as_deref()), (1, None));
    assert_eq!(
        store.lease_holder("alpha").await.unwrap().as_ref(),
        Some(winner)
    );

    tokio::time::sleep(PAST_SHORT_TTL).await;
    let won = race(store, "successor", LONG_TTL).await;
    assert_eq!(won.len(), 1, "{won:?}");
    assert_eq!(won[0].token, 2);
    assert_eq!(
        won[0].taken_over_from.as_deref(),
        Some(winner.owner.as_str())
    );
    assert_eq!(
        store.lease_holder("alpha").await.unwrap().unwrap().owner,
        won[0].owner
    );
}

pub async fn running_executions_filter_by_instance(store: &Store) {
    let alpha = agent_with_session(store, "alpha").await;
    let beta = agent_with_session(store, "beta").await;
    let mut ids = Vec::new();
    for (agent, conv, instance) in [
        ("alpha", &alpha, Some("i-1")),
        ("alpha", &alpha, Some("i-2")),
        ("alpha", &alpha, None),
        ("beta", &beta, Some("i-1")),
        ("alpha", &alpha, Some("i-1")),
    ] {
        let new = new_execution(agent, conv, "p");
        store.begin_execution(&new).await.unwrap();
        if let Some(instance) = instance {
            store
                .set_execution_instance(&new.execution_id, instance)
                .await
                .unwrap();
        }
        ids.push(new.execution_id);
        tick().await;
    }
    // The last one finished: only running executions count.
    store
        .finish_execution(&finish(&ids[4], "done"))
        .await
        .unwrap();

    let ids_of = |records: Vec<kokino_core::ExecutionRecord>| {
        records
            .into_iter()
            .map(|r| r.execution_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids_of(store.running_executions_of("i-1").await.unwrap()),
        vec![ids[0].clone(), ids[3].clone()]
    );
    assert_eq!(
        ids_of(store.running_executions_of("i-2").await.unwrap()),
        vec![ids[1].clone()]
    );
    assert!(store.running_executions_of("i-3").await.unwrap().is_empty());

    // Foreign to i-1: alpha's runs by another instance or by none recorded.
    assert_eq!(
        ids_of(
            store
                .foreign_running_executions("alpha", "i-1")
                .await
                .unwrap()
        ),
        vec![ids[1].clone(), ids[2].clone()]
    );
    assert_eq!(
        ids_of(
            store
                .foreign_running_executions("alpha", "i-2")
                .await
                .unwrap()
        ),
        vec![ids[0].clone(), ids[2].clone()]
    );
    assert!(store
        .foreign_running_executions("beta", "i-1")
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .foreign_running_executions("gamma", "i-1")
        .await
        .unwrap()
        .is_empty());

    let err = store
        .set_execution_instance("no-such-execution", "i-1")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ExecutionNotFound(_)), "{err:?}");
}

// ---- analytics: the SLO and metrics aggregates ----

fn spec_of(id: &str, cli: CliType) -> AgentSpec {
    AgentSpec {
        cli_type: cli,
        ..spec(id)
    }
}

/// One finished execution of the given outcome, duration and peak memory.
async fn run_with_outcome(
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

pub async fn analytics_aggregates_match_the_executions(store: &Store) {
    let store = store.clone();
    store
        .upsert_agent(&spec_of("a", CliType::Codex))
        .await
        .unwrap();
    store
        .upsert_agent(&spec_of("b", CliType::ClaudeCode))
        .await
        .unwrap();
    // Agent a: 100 successes of 1..=100 ms; agent b: 3 failures, 1 success and 1 cancel.
    for ms in 1..=100 {
        run_with_outcome(
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
    let b = |outcome, ms, err| (outcome, ms, err);
    for (outcome, ms, err) in [
        b(OutcomeClass::Timeout, 5000, Some("execution timeout")),
        b(OutcomeClass::Timeout, 5000, Some("execution timeout")),
        b(OutcomeClass::AuthError, 10, Some("Not logged in")),
        b(OutcomeClass::Success, 200, None),
        b(OutcomeClass::Cancelled, 7, Some("cancelled")),
    ] {
        run_with_outcome(&store, "b", CliType::ClaudeCode, outcome, ms, 30.0, err).await;
    }

    let since = Utc::now() - chrono::Duration::hours(1);
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
    assert!(counts.iter().all(|c| c.last_at.is_some()));
    assert!(store
        .outcome_counts(Utc::now() + chrono::Duration::hours(1))
        .await
        .unwrap()
        .is_empty());

    let overall = store
        .duration_stats(since, &["success"], false)
        .await
        .unwrap();
    assert_eq!(overall.len(), 1);
    let o = &overall[0];
    assert_eq!(o.agent_id, "");
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
    assert!(store
        .duration_stats(since, &[], true)
        .await
        .unwrap()
        .is_empty());

    let rss = store.avg_peak_rss_mb(since).await.unwrap().unwrap();
    assert!((rss - (100.0 * 10.0 + 5.0 * 30.0) / 105.0).abs() < 1e-9);
    assert_eq!(
        store
            .avg_peak_rss_mb(Utc::now() + chrono::Duration::hours(1))
            .await
            .unwrap(),
        None
    );

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
    assert_eq!(store.top_failure_reasons(since, 1).await.unwrap().len(), 1);

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
    assert!(store.event_counts(&[], since).await.unwrap().is_empty());
}

// ---- brokers and homes ----
//
// Liveness is judged by the database's clock like the leases, with the same margins.

pub async fn brokers_announce_and_expire(store: &Store) {
    assert!(store.brokers().await.unwrap().is_empty());
    store
        .heartbeat_broker("b1", "http://10.0.0.1:5050", LONG_TTL)
        .await
        .unwrap();
    store
        .heartbeat_broker("b2", "http://10.0.0.2:5050", SHORT_TTL)
        .await
        .unwrap();
    let brokers = store.brokers().await.unwrap();
    assert_eq!(brokers.len(), 2);
    assert_eq!(
        (
            brokers[0].instance_id.as_str(),
            brokers[0].url.as_str(),
            brokers[0].alive
        ),
        ("b1", "http://10.0.0.1:5050", true)
    );
    assert!(brokers[1].alive);
    tokio::time::sleep(PAST_SHORT_TTL).await;
    let brokers = store.brokers().await.unwrap();
    assert!(brokers[0].alive, "the long ttl still runs");
    assert!(
        !brokers[1].alive,
        "b2 stopped announcing itself and expired"
    );
    // A heartbeat revives it, with a new address if it changed.
    store
        .heartbeat_broker("b2", "http://10.0.0.9:5050", LONG_TTL)
        .await
        .unwrap();
    let b2 = store.brokers().await.unwrap().remove(1);
    assert!(b2.alive);
    assert_eq!(b2.url, "http://10.0.0.9:5050");
    // A clean stop expires it at once; expiring again changes nothing.
    assert!(store.expire_broker("b2").await.unwrap());
    assert!(!store.expire_broker("b2").await.unwrap());
    assert!(!store.brokers().await.unwrap()[1].alive);
}

pub async fn homes_are_set_claimed_and_moved(store: &Store) {
    store
        .heartbeat_broker("b1", "http://b1", LONG_TTL)
        .await
        .unwrap();
    assert_eq!(store.home("alpha").await.unwrap(), None);
    // Claiming gives a home only when there is none.
    let claimed = store.claim_home("alpha", "b1").await.unwrap();
    assert_eq!(
        (
            claimed.instance_id.as_str(),
            claimed.generation,
            claimed.portable
        ),
        ("b1", 1, false)
    );
    assert_eq!(claimed.url.as_deref(), Some("http://b1"));
    assert!(claimed.alive);
    let again = store.claim_home("alpha", "b2").await.unwrap();
    assert_eq!(again, claimed, "a claim never moves an existing home");

    // Setting is a change every time; `None` keeps the portability declared before.
    let portable = store.set_home("alpha", "b1", Some(true)).await.unwrap();
    assert_eq!((portable.generation, portable.portable), (2, true));
    let moved = store.set_home("alpha", "b2", None).await.unwrap();
    assert_eq!(
        (moved.instance_id.as_str(), moved.generation, moved.portable),
        ("b2", 3, true)
    );
    // b2 never announced itself: no address, not alive.
    assert_eq!((moved.url, moved.alive), (None, false));
    let fresh = store.set_home("beta", "b1", None).await.unwrap();
    assert_eq!((fresh.generation, fresh.portable), (1, false));
    let all: Vec<String> = store
        .homes()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.agent_id)
        .collect();
    assert_eq!(all, ["alpha", "beta"]);
    assert!(store.forget_home("beta").await.unwrap());
    assert!(!store.forget_home("beta").await.unwrap());
    assert_eq!(store.home("beta").await.unwrap(), None);
}

pub async fn home_is_taken_over_only_from_a_dead_broker(store: &Store) {
    store
        .heartbeat_broker("b1", "http://b1", SHORT_TTL)
        .await
        .unwrap();
    store
        .heartbeat_broker("b2", "http://b2", LONG_TTL)
        .await
        .unwrap();
    store.set_home("alpha", "b1", None).await.unwrap();
    assert!(
        !store.take_over_home("alpha", "b1", "b2").await.unwrap(),
        "b1 is alive: its agents stay"
    );
    tokio::time::sleep(PAST_SHORT_TTL).await;
    assert!(
        !store.take_over_home("alpha", "b3", "b2").await.unwrap(),
        "the home is not b3's"
    );
    assert!(store.take_over_home("alpha", "b1", "b2").await.unwrap());
    let home = store.home("alpha").await.unwrap().unwrap();
    assert_eq!((home.instance_id.as_str(), home.generation), ("b2", 2));
    assert!(
        !store.take_over_home("alpha", "b1", "b3").await.unwrap(),
        "a second taker finds the home moved already"
    );
    // A broker that never announced itself counts as dead.
    store.set_home("beta", "ghost", None).await.unwrap();
    assert!(store.take_over_home("beta", "ghost", "b2").await.unwrap());
    // Of racing takers exactly one wins.
    store.set_home("gamma", "b1", None).await.unwrap();
    let races = (0..8).map(|i| {
        let store = store.clone();
        async move {
            store
                .take_over_home("gamma", "b1", &format!("t{i}"))
                .await
                .unwrap()
        }
    });
    let won = futures_join(races).await;
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
}

async fn futures_join<F: std::future::Future<Output = bool> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<bool> {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
