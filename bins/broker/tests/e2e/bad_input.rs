//! Bad input gets a clear error and loses nothing: no process, no held lock, no half-written
//! conversation.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str, mentions: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["code"], want_code, "{body}");
    let msg = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("error is a string: {body}"));
    assert!(
        msg.to_lowercase().contains(&mentions.to_lowercase()),
        "message {msg:?} should mention {mentions:?}"
    );
}

#[tokio::test]
async fn register_rejects_what_it_cannot_run() {
    let w = World::new();
    let b = w.start();
    let cases: Vec<(Value, &str)> = vec![
        (json!({"agentId": "a", "type": "claude"}), "type"),
        (
            json!({"agentId": "a", "type": "codex", "commMode": "pty"}),
            "commMode",
        ),
        (
            json!({"agentId": "a", "type": "codex", "metadata": {"commMode": "pty"}}),
            "commMode",
        ),
        (json!({"agentId": "a/b", "type": "codex"}), "agent id"),
        (json!({"agentId": "../etc", "type": "codex"}), "agent id"),
        (json!({"agentId": "a;rm -rf", "type": "codex"}), "agent id"),
        (json!({"agentId": "a\u{7}b", "type": "codex"}), "agent id"),
        (
            json!({"agentId": "x".repeat(129), "type": "codex"}),
            "agent id",
        ),
        (json!({"agentId": 5, "type": "codex"}), "agentId"),
        (json!({"type": "codex"}), "agentId"),
        (
            json!({"agentId": "a", "type": "codex", "timeoutMs": "soon"}),
            "timeoutMs",
        ),
        (
            json!({"agentId": "a", "type": "codex", "timeoutMs": 0}),
            "timeoutMs",
        ),
        (
            json!({"agentId": "a", "type": "codex", "cwd": "/no/such/dir"}),
            "cwd",
        ),
        (
            json!({"agentId": "a", "type": "codex", "comMode": "tmux"}),
            "comMode",
        ),
        (
            json!({"agentId": "a", "type": "codex", "env": {"A": 1}}),
            "env",
        ),
    ];
    for (body, mentions) in cases {
        let (status, resp) = b.post("/agents/register", body.clone()).await;
        assert_error(status, &resp, 400, "BAD_REQUEST", mentions);
    }
    let (_, agents) = b.get("/agents").await;
    assert_eq!(agents, json!([]), "nothing was registered");
}

#[tokio::test]
async fn the_old_metadata_form_still_registers() {
    let w = World::new();
    let b = w.start();
    let (status, rec) = b
        .post(
            "/agents/register",
            json!({"agentId": "legacy", "type": "claude-code",
                   "metadata": {"commMode": "headless", "cwd": w.work(), "role": "reviewer", "systemPrompt": "be nice"}}),
        )
        .await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["cwd"], w.work());
    assert_eq!(rec["role"], "reviewer");
    assert_eq!(rec["systemPrompt"], "be nice");
    assert_eq!(rec["commMode"], "headless");
    // Registering again is an idempotent upsert that keeps createdAt.
    let (_, again) = b
        .post(
            "/agents/register",
            json!({"agentId": "legacy", "type": "claude-code", "role": "writer"}),
        )
        .await;
    assert_eq!(again["createdAt"], rec["createdAt"]);
    assert_eq!(again["role"], "writer");
    let (_, list) = b.get("/agents?type=claude-code").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, list) = b.get("/agents?type=codex").await;
    assert_eq!(list, json!([]));
    let (status, resp) = b.get("/agents?commMode=pty").await;
    assert_error(status, &resp, 400, "BAD_REQUEST", "commMode");
}

#[tokio::test]
async fn execute_rejects_bad_requests_before_anything_runs() {
    let w = World::new();
    let b = w.start();
    w.register(&b, "a", "claude-code", json!({})).await;
    let cases: Vec<(String, u16, &str, &str)> = vec![
        (r#"{"prompt": 42}"#.into(), 400, "BAD_REQUEST", "prompt"),
        (r#"{}"#.into(), 400, "BAD_REQUEST", "prompt"),
        (r#"{"prompt": "   "}"#.into(), 400, "BAD_REQUEST", "prompt"),
        (
            r#"{"prompt": "x", "timeoutMs": "1s"}"#.into(),
            400,
            "BAD_REQUEST",
            "timeoutMs",
        ),
        (
            r#"{"prompt": "x", "lockTimeoutMs": -1}"#.into(),
            400,
            "BAD_REQUEST",
            "lockTimeoutMs",
        ),
        (
            r#"{"prompt": "x", "promt": "typo"}"#.into(),
            400,
            "BAD_REQUEST",
            "promt",
        ),
        (
            r#"{"prompt": "x""#.into(),
            400,
            "BAD_REQUEST",
            "malformed JSON",
        ),
        (r#"not json"#.into(), 400, "BAD_REQUEST", "malformed JSON"),
        (r#"[1,2]"#.into(), 400, "BAD_REQUEST", "invalid"),
    ];
    for (body, status, code, mentions) in cases {
        let (s, resp) = b.post_raw("/agents/a/execute", body).await;
        assert_error(s, &resp, status, code, mentions);
    }
    // An oversize body is refused before it is read whole; the server then closes the
    // connection, so this request gets a client of its own rather than a pooled connection.
    let once = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let r = once
        .post(format!("{}/agents/a/execute", b.base))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"prompt": "{}"}}"#,
            "x".repeat(2 * 1024 * 1024)
        ))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let resp: Value = r.json().await.unwrap();
    assert_error(status, &resp, 413, "PAYLOAD_TOO_LARGE", "limit");
    let (s, resp) = b.execute("nobody", "hi").await;
    assert_error(s, &resp, 404, "AGENT_NOT_FOUND", "nobody");
    for bad in ["a%2Fb", "a%3Brm", "-x", "a%0Ab", &"x".repeat(129)] {
        let (s, resp) = b.execute(bad, "hi").await;
        assert_error(s, &resp, 400, "BAD_REQUEST", "agent id");
    }
    assert!(w.witness_lines().is_empty(), "no process was started");
    let (_, convs) = b.get("/agents/a/conversations").await;
    assert_eq!(convs, json!([]), "nothing was written");
    let (s, resp) = b.get("/no/such/endpoint").await;
    assert_error(s, &resp, 404, "NOT_FOUND", "endpoint");
}

/// After a failed run: the lock is free, no process of the run is alive, and the conversation
/// holds the user turn and a system turn describing the failure.
async fn assert_clean_after_failure(w: &World, b: &Broker, agent: &str) {
    let left = agent_processes(w, b);
    assert!(
        left.is_empty(),
        "processes outlived their execution: {left:?}"
    );
    let (_, sessions) = b.get("/agents/sessions/status").await;
    let s = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["agentId"] == agent)
        .unwrap()
        .clone();
    assert_eq!(s["locked"], false, "{s}");
    assert_eq!(s["executing"], false);
    let (_, conv) = b.get(&format!("/agents/{agent}/conversation")).await;
    let turns = conv["turns"].as_array().unwrap();
    let last_two: Vec<&str> = turns[turns.len() - 2..]
        .iter()
        .map(|t| t["role"].as_str().unwrap())
        .collect();
    assert_eq!(last_two, ["user", "system"], "{conv}");
}

#[tokio::test]
async fn failing_clis_get_the_spec_status_and_leave_nothing_behind() {
    let w = World::new();
    // The operator allows the two odd binaries this test registers.
    let allowed = format!(
        "{},/nonexistent/claude,/bin/true",
        w.path().join("bin").display()
    );
    let b = w.start_with(&["--allow-binary", &allowed], &[]);
    // A binary that does not exist.
    w.register(
        &b,
        "missing",
        "claude-code",
        json!({"binary": "/nonexistent/claude"}),
    )
    .await;
    let (s, resp) = b.execute("missing", "hi").await;
    assert_error(s, &resp, 502, "CLI_FAILED", "not found");
    assert_eq!(resp["details"]["classification"], "spawn_error");
    assert_clean_after_failure(&w, &b, "missing").await;

    // A CLI that exits at once with an error.
    w.register(&b, "quits", "codex", json!({})).await;
    let (s, resp) = b.execute("quits", "fake:exit=3").await;
    assert_error(s, &resp, 502, "CLI_FAILED", "");
    assert_eq!(resp["details"]["exitCode"], 3);
    assert_eq!(resp["details"]["classification"], "cli_error");
    assert_clean_after_failure(&w, &b, "quits").await;

    // A CLI that prints nothing at all.
    w.register(&b, "silent", "gemini", json!({"binary": "/bin/true"}))
        .await;
    let (s, resp) = b.execute("silent", "hi").await;
    assert_error(s, &resp, 502, "CLI_FAILED", "");
    assert_clean_after_failure(&w, &b, "silent").await;

    // A CLI that exits 0 without its final event.
    w.register(&b, "noresult", "factory-droid", json!({})).await;
    let (s, resp) = b.execute("noresult", "fake:noresult").await;
    assert_error(s, &resp, 502, "CLI_FAILED", "");
    assert_clean_after_failure(&w, &b, "noresult").await;

    // Not logged in: an auth error, named as such.
    w.register(&b, "auth", "claude-code", json!({})).await;
    let (s, resp) = b.execute("auth", "fake:auth").await;
    assert_error(s, &resp, 502, "CLI_FAILED", "log");
    assert_eq!(resp["details"]["classification"], "auth_error");
    assert_clean_after_failure(&w, &b, "auth").await;

    // A 429: rate limited, with Retry-After.
    w.register(&b, "quota", "claude-code", json!({})).await;
    let r = b
        .client
        .post(format!("{}/agents/quota/execute", b.base))
        .json(&json!({"prompt": "fake:ratelimit"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=61).contains(&retry), "retry-after {retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMITED");
    assert_clean_after_failure(&w, &b, "quota").await;

    // Malformed lines among valid events are counted, never fatal.
    w.register(&b, "messy", "claude-code", json!({})).await;
    let (s, resp) = b.execute("messy", "fake:malformed tidy").await;
    assert_eq!(s, 200, "{resp}");
    assert_eq!(resp["content"], "echo: tidy");
    let ev = events(&b, "type=JSONL_PARSE_ERROR&agentId=messy", 1).await;
    assert_eq!(ev.len(), 1);
    assert!(
        ev[0]["metadata"]["lines"].as_u64().unwrap() >= 2,
        "{:?}",
        ev[0]
    );
}

#[tokio::test]
async fn a_cli_that_never_ends_is_killed_with_its_whole_group() {
    let w = World::new();
    let b = w.start_with(
        &[
            "--config",
            &write_config(&w, "[limits]\nkill_grace_ms = 500\n"),
        ],
        &[],
    );
    w.register(&b, "stuck", "claude-code", json!({})).await;
    // It ignores SIGTERM and has started a grandchild: both must be gone after the grace.
    let (s, resp) = b
        .post(
            "/agents/stuck/execute",
            json!({"prompt": "fake:hang fake:ignore-term fake:child", "timeoutMs": 300}),
        )
        .await;
    assert_error(s, &resp, 504, "EXECUTION_TIMEOUT", "timeout");
    assert_clean_after_failure(&w, &b, "stuck").await;
    let (s, resp) = b.execute("stuck", "alive again").await;
    assert_eq!(s, 200, "{resp}");
}

#[tokio::test]
async fn cancel_answers_at_once_and_the_caller_gets_409() {
    let w = World::new();
    let b = w.start_with(
        &[
            "--config",
            &write_config(&w, "[limits]\nkill_grace_ms = 400\n"),
        ],
        &[],
    );
    w.register(&b, "c", "codex", json!({})).await;
    let (s, none) = b.post("/agents/c/execute/cancel", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(none["cancelled"], false);
    let run = {
        let client = b.client.clone();
        let url = format!("{}/agents/c/execute", b.base);
        tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"prompt": "fake:hang fake:ignore-term fake:child"}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    assert!(eventually(Duration::from_secs(5), || !w.witness_lines().is_empty()).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, c) = b.post("/agents/c/execute/cancel", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(c["cancelled"], true, "{c}");
    assert!(c["pid"].as_i64().unwrap() > 0);
    let (status, body) = run.await.unwrap();
    assert_error(status, &body, 409, "EXECUTION_CANCELLED", "cancelled");
    assert_clean_after_failure(&w, &b, "c").await;
}

fn write_config(w: &World, text: &str) -> String {
    let path = w.path().join("kokino.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}
