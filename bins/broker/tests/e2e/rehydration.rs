//! Sessions are never a dead end (issue 13): when the CLI cannot resume its session, the broker
//! continues the conversation in a new CLI session seeded with the stored turns.

use serde_json::json;

use crate::common::*;

/// The CLI lost its session files (a cleanup period, a wiped `HOME`): the next execute still
/// answers, from a new CLI session that carries the earlier turns, and later executes resume
/// that new session.
#[tokio::test]
async fn a_lost_cli_session_is_rehydrated_from_the_stored_conversation() {
    for (cli, name) in [
        ("claude-code", "claude"),
        ("codex", "codex"),
        ("gemini", "gemini"),
    ] {
        let w = World::new();
        let b = w.start();
        let agent = format!("re-{name}");
        w.register(&b, &agent, cli, json!({})).await;
        let (s, first) = b.execute(&agent, "the secret word is PELICAN").await;
        assert_eq!(s, 200, "{cli}: {first}");
        let old = first["sessionId"].as_str().unwrap().to_owned();
        // The CLI forgets every session it had.
        std::fs::remove_dir_all(w.path().join("fake-state")).unwrap();
        let (s, second) = b.execute(&agent, "what was the secret word?").await;
        assert_eq!(s, 200, "{cli}: {second}");
        let content = second["content"].as_str().unwrap();
        assert!(
            content.contains("PELICAN"),
            "{cli}: the earlier turn reached the CLI: {content}"
        );
        assert!(
            content.contains("what was the secret word?"),
            "{cli}: {content}"
        );
        assert_eq!(second["metadata"]["rehydrated"], true, "{cli}: {second}");
        let new = second["sessionId"].as_str().unwrap().to_owned();
        assert_ne!(new, old, "{cli}: a new CLI session");
        let ev = events(&b, "type=SESSION_REHYDRATED", 1).await;
        assert_eq!(
            ev[0]["metadata"]["previousSessionId"],
            old.as_str(),
            "{cli}: {ev:?}"
        );
        assert_eq!(ev[0]["metadata"]["reason"], "session_not_found");
        // The next execute resumes the new session as usual.
        let (s, third) = b.execute(&agent, "fake:turns and now?").await;
        assert_eq!(s, 200, "{cli}: {third}");
        assert_eq!(
            third["sessionId"].as_str(),
            Some(new.as_str()),
            "{cli}: {third}"
        );
        assert!(
            third["metadata"].get("rehydrated").is_none(),
            "{cli}: {third}"
        );
        assert!(
            third["content"].as_str().unwrap().ends_with("turns=1"),
            "{cli}: {third}"
        );
        // The stored conversation says which answer came from a rehydrated session.
        let (_, conv) = b.get(&format!("/agents/{agent}/conversation")).await;
        let marked: Vec<_> = conv["turns"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["metadata"]["rehydratedFrom"] == old.as_str())
            .collect();
        assert_eq!(marked.len(), 1, "{cli}: {conv}");
    }
}

/// Droid continues a session with `--fork`, which works offline (no Factory login: a
/// bring-your-own-key model); `-s` would fail silently there.
#[tokio::test]
async fn droid_continues_its_session_offline_with_fork() {
    let w = World::new();
    let b = w.start_with(&[], &[("KOKINO_FAKE_DROID_OFFLINE", "1")]);
    w.register(&b, "dr", "factory-droid", json!({})).await;
    let (s, first) = b.execute("dr", "one").await;
    assert_eq!(s, 200, "{first}");
    let (s, second) = b.execute("dr", "fake:turns two").await;
    assert_eq!(s, 200, "{second}");
    assert!(
        second["content"].as_str().unwrap().ends_with("turns=1"),
        "{second}"
    );
    assert!(second["metadata"].get("rehydrated").is_none(), "{second}");
    assert_ne!(
        second["sessionId"], first["sessionId"],
        "a fork has a new id"
    );
    let (s, third) = b.execute("dr", "fake:turns three").await;
    assert_eq!(s, 200, "{third}");
    assert!(
        third["content"].as_str().unwrap().ends_with("turns=2"),
        "{third}"
    );
}

/// An operator can ask for a rehydrated session explicitly.
#[tokio::test]
async fn an_operator_can_ask_for_a_rehydrated_session() {
    let w = World::new();
    let b = w.start();
    w.register(&b, "op", "claude-code", json!({})).await;
    let (_, first) = b.execute("op", "remember ALBATROSS").await;
    let (s, second) = b
        .post(
            "/agents/op/execute",
            json!({"prompt": "fresh start please", "rehydrate": true}),
        )
        .await;
    assert_eq!(s, 200, "{second}");
    assert!(
        second["content"].as_str().unwrap().contains("ALBATROSS"),
        "{second}"
    );
    assert_ne!(second["sessionId"], first["sessionId"]);
    let ev = events(&b, "type=SESSION_REHYDRATED", 1).await;
    assert_eq!(ev[0]["metadata"]["reason"], "requested");
    let (s, bad) = b
        .post(
            "/agents/op/execute",
            json!({"prompt": "x", "rehydrate": "yes"}),
        )
        .await;
    assert_eq!(s, 400, "{bad}");
}
