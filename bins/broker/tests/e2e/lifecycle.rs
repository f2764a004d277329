//! The broker process itself: start-up settings, auth, graceful shutdown, crash recovery.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

fn broker_cmd(w: &World) -> Command {
    let mut cmd = Command::new(bin_dir().join("kokino-broker"));
    cmd.arg("--data-dir")
        .arg(w.data_dir())
        .env_remove("KOKINO_CONFIG")
        .env_remove("KOKINO_TOKEN_FILE")
        .env_remove("KOKINO_BIND")
        .stdin(Stdio::null());
    cmd
}

#[test]
fn a_non_loopback_bind_without_a_token_is_refused() {
    let w = World::new();
    let out = broker_cmd(&w)
        .args(["--bind", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without a token"), "{err}");
}

#[test]
fn bad_settings_are_named() {
    let w = World::new();
    let cfg = w.path().join("bad.toml");
    std::fs::write(&cfg, "[limits]\nexecution_timeout_ms = 0\n").unwrap();
    let out = broker_cmd(&w).arg("--config").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("execution_timeout_ms"));

    std::fs::write(&cfg, "bnid = \"127.0.0.1:1\"\n").unwrap();
    let out = broker_cmd(&w).arg("--config").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bnid"));

    let out = broker_cmd(&w)
        .args(["--token-file", "/no/such/token"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/token"));

    // The runtime's thread count is read before the runtime starts, and checked like the rest.
    std::fs::write(&cfg, "worker_threads = 0\n").unwrap();
    let out = broker_cmd(&w).arg("--config").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("worker_threads must be greater than 0"),
        "{err}"
    );
    let out = broker_cmd(&w)
        .args(["--worker-threads", "100000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at most 1024"), "{err}");
    let out = broker_cmd(&w)
        .args(["--worker-threads", "two"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--worker-threads"));
}

#[tokio::test]
async fn a_token_protects_every_non_get_endpoint() {
    let w = World::new();
    let token = w.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let b = w.start_with(&["--token-file", &token.display().to_string()], &[]);
    let (status, _) = b.get("/health").await;
    assert_eq!(status, 200, "reads stay open for dashboards");
    let (status, body) = b
        .post("/agents/register", json!({"agentId": "t", "type": "codex"}))
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["code"], "UNAUTHORIZED");
    let r = b
        .client
        .post(format!("{}/agents/register", b.base))
        .bearer_auth("wrong")
        .json(&json!({"agentId": "t", "type": "codex"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = b
        .client
        .post(format!("{}/agents/register", b.base))
        .bearer_auth("s3cret")
        .json(&json!({"agentId": "t", "type": "codex"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = b
        .client
        .get(format!("{}/health", b.base))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers().get("x-request-id").is_some(),
        "a request id is generated"
    );
    let r = b
        .client
        .get(format!("{}/health", b.base))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["x-request-id"],
        "abc-123",
        "and echoed when given"
    );
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn agents_and_binaries_can_come_from_the_config_file() {
    let w = World::new();
    let cfg = w.path().join("kokino.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[binaries]
codex = "{codex}"

[[agents]]
agentId = "from-config"
type = "codex"
cwd = "{work}"
systemPrompt = "you are terse"
"#,
            codex = w.bin("codex"),
            work = w.work()
        ),
    )
    .unwrap();
    let b = w.start_with(&["--config", &cfg.display().to_string()], &[]);
    let (status, agent) = b.get("/agents/from-config").await;
    assert_eq!(status, 200, "{agent}");
    let (status, resp) = b.execute("from-config", "configured").await;
    assert_eq!(status, 200, "{resp}");
    // Codex has no system-prompt flag: the first prompt carries it, the stored turn does not.
    assert_eq!(resp["content"], "echo: you are terse\n\nconfigured");
    let (_, conv) = b.get("/agents/from-config/conversation").await;
    assert_eq!(conv["turns"][0]["content"], "configured");
}

#[tokio::test]
async fn sigterm_stops_running_clis_and_records_them_cancelled() {
    let w = World::new();
    let mut b = w.start();
    w.register(&b, "long", "claude-code", json!({})).await;
    let run = {
        let client = b.client.clone();
        let url = format!("{}/agents/long/execute", b.base);
        tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"prompt": "fake:sleep=60 fake:child"}))
                .send()
                .await;
            r.map(|r| r.status().as_u16()).unwrap_or(0)
        })
    };
    assert!(eventually(Duration::from_secs(5), || !w.witness_lines().is_empty()).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = b.stop();
        (s, b)
    });
    let (exit, b) = status.await.unwrap();
    assert!(exit.success(), "graceful exit: {exit:?}");
    assert_eq!(
        run.await.unwrap(),
        409,
        "the caller learns its run was cancelled"
    );
    assert!(
        agent_processes(&w, &b).is_empty(),
        "no CLI outlived the broker"
    );

    let b2 = w.start();
    let (_, conv) = b2.get("/agents/long/conversation").await;
    let last = conv["turns"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "system");
    assert_eq!(last["metadata"]["outcome"], "cancelled", "{last}");
}

#[tokio::test]
async fn after_kill_9_the_next_start_cleans_up_and_resumes_the_session() {
    let w = World::new();
    let mut b = w.start();
    w.register(&b, "crash", "claude-code", json!({})).await;
    let (status, first) = b.execute("crash", "before the crash").await;
    assert_eq!(status, 200);
    let session = first["sessionId"].clone();
    let client = b.client.clone();
    let url = format!("{}/agents/crash/execute", b.base);
    let run = tokio::spawn(async move {
        let _ = client
            .post(url)
            .json(&json!({"prompt": "fake:sleep=60 fake:child during"}))
            .send()
            .await;
    });
    assert!(eventually(Duration::from_secs(5), || w.witness_lines().len() >= 3).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let orphans_before = agent_processes(&w, &b);
    assert!(!orphans_before.is_empty(), "the CLI is running");
    b.kill9();
    let _ = run.await;
    // The CLI and its grandchild do not survive the broker, even before any restart: their
    // supervisor sees its lifeline close and kills the whole group.
    assert!(
        eventually(Duration::from_secs(5), || agent_processes(&w, &b)
            .is_empty())
        .await,
        "the supervisor killed the process group of a broker that died"
    );

    let b2 = w.start();
    // The new broker's own environment probes (the fake agent's `--version`) may be running for
    // a moment at start-up; nothing of the previous life is.
    assert!(
        eventually(Duration::from_secs(5), || agent_processes(&w, &b2)
            .is_empty())
        .await
    );
    let (_, sessions) = b2.get("/agents/sessions/status").await;
    let s = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["agentId"] == "crash")
        .unwrap()
        .clone();
    assert_eq!(s["locked"], false);
    let (_, conv) = b2.get("/agents/crash/conversation").await;
    let roles: Vec<&str> = conv["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user", "system"], "{conv}");
    let last: &Value = conv["turns"].as_array().unwrap().last().unwrap();
    assert_eq!(last["metadata"]["outcome"], "interrupted");
    let (status, next) = b2.execute("crash", "after the crash").await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(
        next["sessionId"], session,
        "the same CLI session is resumed"
    );
    assert_eq!(events(&b2, "type=EXECUTION_INTERRUPTED", 1).await.len(), 1);
    // Nothing was left for the restarted broker to kill (see crash_safety.rs for the case where
    // the supervisor itself was killed too).
    let (_, orphans) = b2
        .get("/api/metrics/events?type=PROCESS_ORPHAN_KILLED")
        .await;
    assert_eq!(
        orphans["events"].as_array().map(Vec::len),
        Some(0),
        "{orphans}"
    );
}

#[tokio::test]
async fn end_session_and_delete_agent() {
    let w = World::new();
    let b = w.start();
    w.register(&b, "e", "gemini", json!({})).await;
    let (_, first) = b.execute("e", "one").await;
    let (s, ended) = b.post("/agents/e/end-session", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(ended["ended"], true);
    assert_eq!(ended["sessionId"], first["sessionId"]);
    let (_, second) = b.execute("e", "two").await;
    assert_ne!(second["sessionId"], first["sessionId"], "a new CLI session");
    assert_ne!(second["conversationId"], first["conversationId"]);
    let (_, convs) = b.get("/agents/e/conversations").await;
    assert_eq!(convs.as_array().unwrap().len(), 2);
    assert_eq!(
        convs[0]["conversationId"], second["conversationId"],
        "newest first"
    );

    let (s, cleared) = b.post("/agents/sessions/clear", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(cleared["ended"], 1);

    let (s, _) = b.delete("/agents/e").await;
    assert_eq!(s, 204);
    let (s, _) = b.get("/agents/e").await;
    assert_eq!(s, 404);
    let (s, conv) = b
        .get(&format!(
            "/conversations/{}",
            first["conversationId"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 200, "history is kept without purge: {conv}");
    let (s, _) = b
        .delete(&format!(
            "/conversations/{}",
            first["conversationId"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 204);
    let (s, body) = b
        .get(&format!(
            "/conversations/{}",
            first["conversationId"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 404);
    assert_eq!(body["code"], "CONVERSATION_NOT_FOUND");
}
