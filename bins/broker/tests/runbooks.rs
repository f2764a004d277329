//! Every command of the operator runbooks in `docs/ops/` runs, as written, against a real broker
//! set up in the situation the runbook is about.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Runs every shell block of `doc` in order; returns the outputs. A block that fails fails the
/// test with its output.
fn run_all(b: &Broker, doc: &str) -> Vec<String> {
    let text = std::fs::read_to_string(workspace_root().join(doc)).unwrap();
    let blocks = shell_blocks(&text);
    assert!(!blocks.is_empty(), "{doc} has no shell blocks");
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    blocks
        .iter()
        .filter(|(marker, _)| {
            !marker
                .as_deref()
                .is_some_and(|m| m.contains("doc-test: skip"))
        })
        .map(|(_, body)| {
            let (ok, out, err) = run_doc_snippet(b, body, &[("$PATH", path.clone())]);
            assert!(
                ok,
                "{doc}: this block failed:\n{body}\n--- stdout\n{out}\n--- stderr\n{err}"
            );
            out
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_management_runbook_unsticks_a_stuck_agent() {
    let w = World::new();
    let cfg = w.path().join("k.toml");
    std::fs::write(&cfg, "[limits]\nkill_grace_ms = 1000\n").unwrap();
    let b = w.start_with(&["--config", &cfg.display().to_string()], &[]);
    w.register(&b, "reviewer", "claude-code", json!({})).await;
    let (s, _) = b.execute("reviewer", "a first answer").await;
    assert_eq!(s, 200);
    // The reviewer gets stuck: a CLI that never answers and ignores SIGTERM.
    let stuck = {
        let client = b.client.clone();
        let url = format!("{}/agents/reviewer/execute", b.base);
        tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"prompt": "fake:hang fake:ignore-term"}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    assert!(eventually(Duration::from_secs(5), || w.witness_lines().len() >= 3).await);

    let outputs = tokio::task::block_in_place(|| run_all(&b, "docs/ops/SESSION-MANAGEMENT.md"));
    let (status, body) = stuck.await.unwrap();
    assert_eq!(
        status, 409,
        "the stuck caller learned it was cancelled: {body}"
    );
    assert_eq!(body["code"], "EXECUTION_CANCELLED");
    assert!(
        outputs.iter().any(|o| o.contains("executing: false")),
        "the runbook's check saw the agent stop: {outputs:#?}"
    );
    assert!(agent_processes(&w, &b).is_empty());
    let (_, sessions) = b.get("/agents/sessions/status").await;
    assert!(sessions
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["hasSession"] == false && s["executing"] == false));
    let (s, after) = b.execute("reviewer", "fresh start").await;
    assert_eq!(s, 200, "{after}");
}
