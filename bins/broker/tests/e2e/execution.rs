//! End-to-end: a real broker process, real SQLite, the real fake agent for all four CLI types.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn every_cli_type_answers_and_resumes_its_session() {
    let w = World::new();
    let b = w.start();
    for (cli_type, name) in TYPES {
        let agent = format!("agent-{name}");
        w.register(&b, &agent, cli_type, json!({})).await;
        let (s1, first) = b.execute(&agent, "hello there").await;
        assert_eq!(s1, 200, "{cli_type}: {first}");
        assert_eq!(first["content"], "echo: hello there");
        assert_eq!(first["success"], true);
        assert_eq!(first["mode"], "headless");
        assert_eq!(first["metadata"]["cliType"], cli_type);
        let session = first["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("{cli_type}: no session id in {first}"))
            .to_owned();
        assert!(
            first["usage"]["inputTokens"].as_u64().unwrap() > 0,
            "{cli_type}: usage kept"
        );

        let (s2, second) = b.execute(&agent, "and again").await;
        assert_eq!(s2, 200, "{cli_type}: {second}");
        assert_eq!(second["content"], "echo: and again");
        if cli_type == "factory-droid" {
            // Droid continues a session with `--fork`, which works without Factory's servers
            // and carries the history into a new session id (recorded for the next run).
            assert_ne!(second["sessionId"], session.as_str(), "{cli_type}");
            let (_, sessions) = b.get("/agents/sessions/status").await;
            let stored = sessions
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["agentId"] == agent.as_str())
                .unwrap()["sessionId"]
                .clone();
            assert_eq!(
                stored, second["sessionId"],
                "{cli_type}: the fork's id is recorded"
            );
        } else {
            assert_eq!(
                second["sessionId"],
                session.as_str(),
                "{cli_type}: the second run resumes the CLI session"
            );
        }
        assert_eq!(second["conversationId"], first["conversationId"]);

        let (_, conv) = b.get(&format!("/agents/{agent}/conversation")).await;
        let turns = conv["turns"].as_array().unwrap();
        let roles: Vec<&str> = turns.iter().map(|t| t["role"].as_str().unwrap()).collect();
        assert_eq!(
            roles,
            ["user", "assistant", "user", "assistant"],
            "{cli_type}"
        );
        let seqs: Vec<i64> = turns.iter().map(|t| t["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert_eq!(turns[3]["content"], "echo: and again");
        assert_eq!(conv["sessionId"], second["sessionId"], "{cli_type}");
    }
    // The fake agent itself remembers the resumed sessions: resuming an unknown id would have
    // failed the second run of each type.
}

#[tokio::test]
async fn the_readme_tour_works() {
    let w = World::new();
    let b = w.start();
    w.register(
        &b,
        "tour",
        "claude-code",
        json!({"systemPrompt": "be brief"}),
    )
    .await;
    let (_, one) = b.execute("tour", "What is 2+2?").await;
    let (_, two) = b.execute("tour", "And 3+3?").await;
    assert_eq!(one["sessionId"], two["sessionId"]);
    let (status, agent) = b.get("/agents/tour").await;
    assert_eq!(status, 200);
    assert_eq!(agent["session"]["sessionId"], one["sessionId"]);
    assert_eq!(agent["effectiveMode"], "headless");
    assert!(agent.get("env").is_none(), "env values are never shown");
}

#[tokio::test]
async fn a_ten_megabyte_answer_is_returned_and_stored_whole() {
    let w = World::new();
    let b = w.start();
    w.register(&b, "big", "claude-code", json!({})).await;
    let (status, resp) = b.execute("big", "fake:big=10MB").await;
    assert_eq!(status, 200, "{}", b.log_text());
    let content = resp["content"].as_str().unwrap();
    assert_eq!(content.len(), 10 * 1024 * 1024);
    let (_, turn) = b
        .get(&format!(
            "/agents/big/conversation/turns/{}",
            resp["turnId"].as_str().unwrap()
        ))
        .await;
    assert_eq!(turn["content"].as_str().unwrap().len(), 10 * 1024 * 1024);
}

fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn two_hundred_megabytes_of_tool_output_do_not_grow_the_broker() {
    let w = World::new();
    let b = w.start();
    for (cli_type, name) in [("gemini", "gemini"), ("claude-code", "claude")] {
        let agent = format!("flood-{name}");
        w.register(&b, &agent, cli_type, json!({})).await;
        // Warm up allocator and connection pools so the measurement sees only the flood.
        b.execute(&agent, "warm up").await;
        let before = rss_kb(b.pid());
        let (status, resp) = b.execute(&agent, "fake:flood=200MB done").await;
        assert_eq!(status, 200, "{resp}");
        assert_eq!(resp["content"], "echo: done");
        let after = rss_kb(b.pid());
        let grown_mb = after.saturating_sub(before) / 1024;
        assert!(
            grown_mb < 64,
            "{cli_type}: broker RSS grew by {grown_mb} MB reading 200 MB of output"
        );
    }
}

#[tokio::test]
async fn runs_of_one_agent_never_overlap_and_different_agents_run_in_parallel() {
    let w = World::new();
    let b = w.start();
    for agent in ["solo", "other"] {
        w.register(&b, agent, "codex", json!({})).await;
    }
    let mut tasks = Vec::new();
    for i in 0..8 {
        for agent in ["solo", "other"] {
            let client = b.client.clone();
            let url = format!("{}/agents/{agent}/execute", b.base);
            tasks.push(tokio::spawn(async move {
                let r = client
                    .post(url)
                    .json(&json!({"prompt": format!("n{i} fake:sleep=0.05")}))
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            }));
        }
    }
    let mut answers = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        answers.push(body["content"].as_str().unwrap().to_owned());
    }
    assert_eq!(answers.len(), 16, "every request got exactly one answer");

    // The fake agent's own log is the witness: per agent (cwd is shared, so tell them apart by
    // the conversation), intervals never overlap. Map pids to agents through the stored turns.
    let witness = w.witness_lines();
    let starts: Vec<_> = witness.iter().filter(|l| l.0 == "start").collect();
    assert_eq!(starts.len(), 16);
    let mut intervals = std::collections::HashMap::new();
    for (kind, pid, nanos, _) in &witness {
        let e = intervals.entry(*pid).or_insert((0u128, 0u128));
        if kind == "start" {
            e.0 = *nanos
        } else {
            e.1 = *nanos
        }
    }
    // Which agent each pid served comes from the execution events (written asynchronously, so
    // waited for).
    let started = events(&b, "type=PROCESS_STARTED&limit=100", 16).await;
    let mut by_agent: std::collections::HashMap<String, Vec<(u128, u128)>> = Default::default();
    for ev in &started {
        let pid = ev["metadata"]["pid"].as_i64().unwrap() as i32;
        let agent = ev["agentId"].as_str().unwrap().to_owned();
        by_agent.entry(agent).or_default().push(intervals[&pid]);
    }
    let mut cross_overlap = false;
    for (agent, runs) in &by_agent {
        let mut runs = runs.clone();
        runs.sort();
        assert_eq!(runs.len(), 8, "{agent}");
        for pair in runs.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{agent}: two runs overlapped: {pair:?}"
            );
        }
    }
    for a in &by_agent["solo"] {
        for o in &by_agent["other"] {
            cross_overlap |= a.0 < o.1 && o.0 < a.1;
        }
    }
    assert!(
        cross_overlap,
        "runs of different agents should overlap in time"
    );
}

#[tokio::test]
async fn a_waiter_gives_up_with_lock_timeout_and_the_agent_stays_usable() {
    let w = World::new();
    let b = w.start();
    w.register(&b, "busy", "claude-code", json!({})).await;
    let long = {
        let client = b.client.clone();
        let url = format!("{}/agents/busy/execute", b.base);
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"prompt": "fake:sleep=1.5 slow"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    assert!(eventually(Duration::from_secs(5), || !w.witness_lines().is_empty()).await);
    let (status, body) = b
        .post(
            "/agents/busy/execute",
            json!({"prompt": "impatient", "lockTimeoutMs": 100}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "LOCK_TIMEOUT");
    assert!(body["error"].as_str().unwrap().contains("busy"));
    let (_, sessions) = b.get("/agents/sessions/status").await;
    let busy = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["agentId"] == "busy")
        .unwrap()
        .clone();
    assert_eq!(busy["locked"], true);
    assert_eq!(busy["executing"], true);
    assert!(busy["executionStartedAt"].as_i64().unwrap() > 1_700_000_000_000);
    assert_eq!(long.await.unwrap(), 200);
    let (status, _) = b.execute("busy", "now free").await;
    assert_eq!(status, 200);
    let timeouts = events(&b, "type=LOCK_TIMEOUT&agentId=busy", 1).await;
    assert_eq!(timeouts.len(), 1, "{timeouts:?}");
}

#[tokio::test]
async fn the_session_id_is_persisted_as_soon_as_the_cli_reports_it() {
    let w = World::new();
    let b = w.start();
    w.register(&b, "early", "gemini", json!({})).await;
    let run = {
        let client = b.client.clone();
        let url = format!("{}/agents/early/execute", b.base);
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"prompt": "fake:sleep=1.5 x"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    // While the CLI is still working, the session already knows the CLI's id.
    let mut seen = Value::Null;
    for _ in 0..100 {
        let (_, agent) = b.get("/agents/early").await;
        seen = agent["session"]["sessionId"].clone();
        if seen.is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen.is_string(), "session id not persisted during the run");
    assert_eq!(run.await.unwrap(), 200);
}

#[tokio::test]
async fn metrics_count_executions_by_outcome() {
    let w = World::new();
    let b = w.start();
    w.register(&b, "m", "codex", json!({})).await;
    b.execute("m", "ok").await;
    b.execute("m", "fake:exit=3").await;
    let (status, text) = b.get_text("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains(
            r#"kokino_executions_total{cli="codex",mode="headless",outcome="success"} 1"#
        ),
        "{text}"
    );
    assert!(text
        .contains(r#"kokino_executions_total{cli="codex",mode="headless",outcome="cli_error"} 1"#));
    assert!(text.contains("kokino_execution_duration_seconds_bucket"));
    assert!(text.contains("kokino_lock_wait_seconds_bucket"));
    assert!(text.contains("kokino_http_requests_total"));
}

#[tokio::test]
async fn streaming_sends_progress_then_the_result() {
    let w = World::new();
    let b = w.start();
    w.register(&b, "s", "claude-code", json!({})).await;
    let r = b
        .client
        .post(format!("{}/agents/s/execute/stream", b.base))
        .json(&json!({"prompt": "fake:tool fake:stream=3 fake:sleep=0.1 streamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let body = r.text().await.unwrap();
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events.first(), Some(&"queued"), "{body}");
    assert!(events.contains(&"started"), "{body}");
    assert!(events.contains(&"tool"), "{body}");
    assert!(events.contains(&"tool_result"), "{body}");
    assert!(events.contains(&"assistant"), "{body}");
    assert_eq!(events.last(), Some(&"result"), "{body}");
    assert!(body.contains("echo: streamed"));
}

#[tokio::test]
async fn a_streaming_client_that_disconnects_does_not_cancel_the_run() {
    let w = World::new();
    let b = w.start();
    w.register(&b, "gone", "factory-droid", json!({})).await;
    {
        let mut r = b
            .client
            .post(format!("{}/agents/gone/execute/stream", b.base))
            .json(&json!({"prompt": "fake:sleep=0.8 still stored"}))
            .send()
            .await
            .unwrap();
        // Read the first frame, then hang up.
        let _ = r.chunk().await;
    }
    let stored = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(w.witness())
            .map(|t| t.contains("end "))
            .unwrap_or(false)
    })
    .await;
    assert!(stored);
    let mut last = Value::Null;
    for _ in 0..100 {
        let (_, conv) = b.get("/agents/gone/conversation").await;
        last = conv["turns"]
            .as_array()
            .and_then(|t| t.last().cloned())
            .unwrap_or_default();
        if last["role"] == "assistant" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last["content"], "echo: still stored");
}

/// Counter samples of a Prometheus exposition: `name{labels}` → value.
fn counters(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            (name.ends_with("_total") || name.ends_with("_count") || name.ends_with("_bucket"))
                .then(|| Some((series.to_owned(), value.parse().ok()?)))
                .flatten()
        })
        .collect()
}

#[tokio::test]
async fn counters_only_grow() {
    let w = World::new();
    let b = w.start();
    w.register(&b, "mono", "codex", json!({})).await;
    let mut previous = counters(&b.get_text("/metrics").await.1);
    assert!(!previous.is_empty(), "counters exist from the start");
    for round in 0..4 {
        b.execute("mono", &format!("ok {round}")).await;
        b.execute("mono", "fake:exit=2").await;
        b.execute("nobody", "404").await;
        let now = counters(&b.get_text("/metrics").await.1);
        for (series, before) in &previous {
            let after = now
                .get(series)
                .unwrap_or_else(|| panic!("{series} disappeared"));
            assert!(after >= before, "{series} went from {before} to {after}");
        }
        assert!(
            now.values().sum::<f64>() > previous.values().sum::<f64>(),
            "something was counted"
        );
        previous = now;
    }
}
