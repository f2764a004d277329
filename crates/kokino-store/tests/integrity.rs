//! Integrity problems injected into a real SQLite store (with foreign keys off, the way a bad
//! tool or a hand edit would write them) are found, and the safe ones are repaired.

use kokino_core::{AgentId, AgentSpec, CliType, CommMode, NewExecution};
use kokino_store::Store;
use serde_json::json;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

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

async fn conversation_with_turns(store: &Store, agent: &str, turns: usize) -> String {
    let id = AgentId::parse(agent).unwrap();
    store.upsert_agent(&spec(agent)).await.unwrap();
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

#[tokio::test]
async fn injected_problems_are_found_and_the_safe_ones_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let store = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let clean = conversation_with_turns(&store, "clean", 2).await;
    let gapped = conversation_with_turns(&store, "gapped", 3).await;
    let wrong_first = conversation_with_turns(&store, "wrongfirst", 1).await;
    assert!(
        store.integrity_findings().await.unwrap().is_empty(),
        "a fresh store is clean"
    );

    // Corrupt it behind the store's back, foreign keys off.
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .foreign_keys(false)
        .connect()
        .await
        .unwrap();
    for sql in [
        "INSERT INTO turns (turn_id, conversation_id, seq, role, content, metadata, created_at) \
         VALUES ('orphan-1', 'no-such-conversation', 1, 'user', 'x', '{}', '2026-01-01T00:00:00.000Z')",
        &format!("DELETE FROM turns WHERE conversation_id = '{gapped}' AND seq = 2"),
        &format!("UPDATE turns SET role = 'assistant' WHERE conversation_id = '{wrong_first}'"),
        &format!("INSERT INTO turns (turn_id, conversation_id, seq, role, content, metadata, created_at) \
         VALUES ('dup-a', '{wrong_first}', 2, 'assistant', 'x', '{{}}', '2026-01-01T00:00:00.000Z')"),
        "UPDATE sessions SET conversation_id = 'gone' WHERE agent_id = 'clean'",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();

    let findings = store.integrity_findings().await.unwrap();
    let kinds: Vec<(&str, &str)> = findings
        .iter()
        .map(|f| (f.kind.as_str(), f.conversation_id.as_str()))
        .collect();
    assert!(
        kinds.contains(&("orphaned_turn", "no-such-conversation")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("sequence_gap", gapped.as_str())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("first_turn_not_user", wrong_first.as_str())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("assistant_without_user", wrong_first.as_str())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("session_without_conversation", "gone")),
        "{kinds:?}"
    );
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
    assert_eq!(totals.conversations_by_agent.len(), 3);
}
