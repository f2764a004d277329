//! Shadow mode through the broker: both legs run, the tmux leg answers, the comparison is
//! stored and reported.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

async fn wait_for_tests(b: &Broker, n: u64) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        let (_, m) = b.get("/api/shadow-mode/metrics?days=30").await;
        if m["totalTests"].as_u64() == Some(n) {
            return m;
        }
        last = m;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("shadow results did not reach {n}: {last}");
}

#[tokio::test]
async fn both_legs_run_and_their_comparison_is_stored() {
    let w = World::new();
    let b = w.start();
    let home = w.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    w.register(
        &b,
        "sh",
        "claude-code",
        json!({"commMode": "shadow", "env": {"HOME": home}}),
    )
    .await;

    let (s, r) = b.execute("sh", "same answer").await;
    assert_eq!(s, 200, "{r}\n{}", b.log_text());
    assert_eq!(r["mode"], "shadow");
    assert_eq!(r["content"], "echo: same answer");
    let m = wait_for_tests(&b, 1).await;
    assert_eq!(m["summary"]["bothSucceeded"], 1, "{m}");
    assert_eq!(m["summary"]["outputMatched"], 1);
    assert_eq!(m["outputMatchRate"], 1.0);

    // Slightly different answers: a mismatch with its similarity and diff.
    let (s, r) = b.execute("sh", "fake:mode-suffix differing").await;
    assert_eq!(s, 200);
    assert_eq!(
        r["content"], "echo: differing (interactive)",
        "the tmux leg answers"
    );
    let m = wait_for_tests(&b, 2).await;
    assert_eq!(m["summary"]["outputMismatched"], 1, "{m}");
    let (_, mism) = b.get("/api/shadow-mode/mismatches?limit=10").await;
    let first = &mism[0];
    assert_eq!(first["agentId"], "sh");
    assert!(
        first["similarity"].as_f64().unwrap() > 0.5 && first["similarity"].as_f64().unwrap() < 1.0,
        "{first}"
    );
    assert!(
        first["diff"].as_str().unwrap().contains("headless"),
        "{first}"
    );
    assert_eq!(first["headlessResponse"], "echo: differing (headless)");

    // The headless leg fails, the tmux leg answers: the caller is served, the failure recorded.
    let (s, r) = b.execute("sh", "fake:headless-fail still served").await;
    assert_eq!(s, 200, "{r}");
    let m = wait_for_tests(&b, 3).await;
    assert_eq!(m["summary"]["onlyTmuxSucceeded"], 1, "{m}");
    let (_, failures) = b
        .get("/api/shadow-mode/failures?mode=headless&limit=5")
        .await;
    assert_eq!(failures.as_array().unwrap().len(), 1);
    assert!(failures[0]["headlessError"].is_string());
    assert_eq!(events(&b, "type=SHADOW_HEADLESS_FAILURE", 1).await.len(), 1);
    assert_eq!(events(&b, "type=SHADOW_MISMATCH", 1).await.len(), 1);
    assert_eq!(events(&b, "type=SHADOW_SUCCESS", 1).await.len(), 1);

    // The conversation holds only the primary's turns.
    let (_, conv) = b.get("/agents/sh/conversation").await;
    assert_eq!(conv["turns"].as_array().unwrap().len(), 6);

    let (_, decision) = b.get("/api/shadow-mode/decision").await;
    assert_eq!(decision["ready"], false);
    assert_eq!(decision["criteria"]["shadowDuration"]["met"], false);
    assert_eq!(decision["criteria"]["outputMatchRate"]["target"], 0.95);
    assert!(decision["recommendation"]
        .as_str()
        .unwrap()
        .contains("30 days"));
    let (_, slo) = b.get("/api/slo/status").await;
    assert_eq!(slo["correctness"]["current"], 0.5, "{slo}");

    let (s, body) = b
        .post("/api/shadow-mode/disable-all", json!({"to": "pty"}))
        .await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = b.post("/api/shadow-mode/disable-all", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(body, json!({"changed": 1}));
    let (_, agent) = b.get("/agents/sh").await;
    assert_eq!(agent["commMode"], "headless");
    let (_, metrics) = b.get_text("/metrics").await;
    assert!(
        metrics.contains("kokino_shadow_results_total{verdict=\"matched\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn runs_of_a_shadow_agent_never_overlap() {
    let w = World::new();
    let b = w.start();
    let home = w.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    w.register(
        &b,
        "sx",
        "codex",
        json!({"commMode": "shadow", "env": {"HOME": home}}),
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..3 {
        let client = b.client.clone();
        let url = format!("{}/agents/sx/execute", b.base);
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"prompt": format!("p{i}")}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    wait_for_tests(&b, 3).await;
    // Pair each start with its end by pid; the secondary of one run must end before the next
    // run's primary starts (the lock is held until both legs are done).
    let lines = w.witness_lines();
    let mut spans: Vec<(u128, u128)> = Vec::new();
    for (kind, pid, t, _) in &lines {
        if kind == "start" {
            let end = lines
                .iter()
                .find(|(k, p, e, _)| k == "end" && p == pid && e >= t)
                .map(|l| l.2)
                .unwrap_or(u128::MAX);
            spans.push((*t, end));
        }
    }
    spans.sort();
    assert_eq!(spans.len(), 6, "two legs per run: {lines:?}");
    // Group in pairs of legs: each pair's earliest start must come after the previous pair's
    // latest end.
    for pair in spans.chunks(2).collect::<Vec<_>>().windows(2) {
        let prev_end = pair[0].iter().map(|s| s.1).max().unwrap();
        let next_start = pair[1].iter().map(|s| s.0).min().unwrap();
        assert!(prev_end <= next_start, "runs overlapped: {spans:?}");
    }
}
