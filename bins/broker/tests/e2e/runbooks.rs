//! Every command of the operator runbooks in `docs/ops/` runs, as written, against a real broker
//! set up in the situation the runbook is about.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

/// Runs every shell block of `doc` in order, in the world's directory (so `./data` is the
/// broker's data directory), with the workspace's binaries and the fake CLIs on `PATH`; returns
/// the outputs. A block that fails fails the test with its output.
fn run_all(w: &World, b: &Broker, doc: &str) -> Vec<String> {
    let text = std::fs::read_to_string(workspace_root().join(doc)).unwrap();
    let blocks = shell_blocks(&text);
    assert!(!blocks.is_empty(), "{doc} has no shell blocks");
    let path = format!(
        "{}:{}:{}",
        bin_dir().display(),
        w.path().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = [
        ("PATH", path),
        ("HOME", w.path().join("home").display().to_string()),
        (
            "KOKINO_FAKE_STATE",
            w.path().join("fake-state").display().to_string(),
        ),
        ("GEMINI_API_KEY", "test".to_owned()),
        ("FACTORY_API_KEY", "test".to_owned()),
    ];
    blocks
        .iter()
        .filter(|(marker, _)| {
            !marker
                .as_deref()
                .is_some_and(|m| m.contains("doc-test: skip"))
        })
        .map(|(_, body)| {
            let (ok, out, err) = run_doc_snippet_in(b, body, &[], &env, Some(w.path()));
            assert!(
                ok,
                "{doc}: this block failed:\n{body}\n--- stdout\n{out}\n--- stderr\n{err}"
            );
            out
        })
        .collect()
}

/// A broker whose CLIs (the fake ones, on its `PATH`) all pass the doctor: the runbooks show a
/// healthy system unless the test breaks something on purpose.
fn healthy_broker(w: &World, config: &str) -> Broker {
    let home = w.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let cfg = w.path().join("k.toml");
    std::fs::write(&cfg, config).unwrap();
    w.start_with(
        &["--config", &cfg.display().to_string()],
        &[
            ("HOME", home.to_str().unwrap()),
            ("GEMINI_API_KEY", "test"),
            ("FACTORY_API_KEY", "test"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_management_runbook_unsticks_a_stuck_agent() {
    let w = World::new();
    let b = healthy_broker(&w, "[limits]\nkill_grace_ms = 1000\n");
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

    let outputs = tokio::task::block_in_place(|| run_all(&w, &b, "docs/ops/SESSION-MANAGEMENT.md"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_analysis_runbook_reads_real_shadow_results() {
    let w = World::new();
    let b = healthy_broker(&w, "");
    // Some history first: a match, a mismatch, a headless failure.
    let (s, _) = b
        .post("/agents/register", json!({"agentId": "reviewer", "type": "claude-code", "commMode": "shadow", "cwd": w.work()}))
        .await;
    assert_eq!(s, 200);
    for p in [
        "same",
        "fake:mode-suffix differs",
        "fake:headless-fail fails",
    ] {
        assert_eq!(b.execute("reviewer", p).await.0, 200);
    }
    for _ in 0..300 {
        let (_, m) = b.get("/api/shadow-mode/metrics").await;
        if m["totalTests"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outputs =
        tokio::task::block_in_place(|| run_all(&w, &b, "docs/ops/SHADOW-MODE-ANALYSIS.md"));
    assert!(
        outputs
            .iter()
            .any(|o| o.contains("\"outputMatchRate\": 0.5")),
        "{outputs:#?}"
    );
    assert!(
        outputs.iter().any(|o| o.contains("--- headless")),
        "the mismatch pair is shown"
    );
    let (_, agent) = b.get("/agents/reviewer").await;
    assert_eq!(
        agent["commMode"], "headless",
        "the last block switched shadow agents to headless"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_playbooks_commands_work_as_written() {
    let w = World::new();
    let b = healthy_broker(&w, "");
    w.register(&b, "reviewer", "claude-code", json!({})).await;
    assert_eq!(b.execute("reviewer", "one").await.0, 200);
    assert_eq!(b.execute("reviewer", "fake:exit=2").await.0, 502);
    let outputs = tokio::task::block_in_place(|| run_all(&w, &b, "docs/ops/ALERT-PLAYBOOKS.md"));
    assert!(
        outputs.iter().any(|o| o.contains("\"forced\": true")),
        "{outputs:#?}"
    );
    let (_, fb) = b.get("/api/fallback/status").await;
    assert_eq!(
        fb,
        json!({"disabledCLIs": [], "forcedFallbacks": []}),
        "the recovery block leaves steady state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_troubleshooting_and_ops_index_commands_work_as_written() {
    let w = World::new();
    let b = healthy_broker(&w, "");
    w.register(&b, "reviewer", "codex", json!({})).await;
    assert_eq!(b.execute("reviewer", "one").await.0, 200);
    let outputs =
        tokio::task::block_in_place(|| run_all(&w, &b, "docs/ops/ENVIRONMENT-TROUBLESHOOTING.md"));
    assert!(
        outputs
            .iter()
            .any(|o| o.contains("would") || o.contains("nothing")),
        "the cleanup dry run said what it would do: {outputs:#?}"
    );
    tokio::task::block_in_place(|| run_all(&w, &b, "docs/ops/README.md"));
    tokio::task::block_in_place(|| run_all(&w, &b, "docs/SLO-TARGETS.md"));
}
