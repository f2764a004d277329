//! Circuit breakers, rate-limit parking and fallback through a real broker.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

fn starts(w: &World) -> usize {
    w.witness_lines().iter().filter(|l| l.0 == "start").count()
}

fn no_tmux_path(w: &World) -> String {
    w.path().join("bin").display().to_string()
}

#[tokio::test]
async fn five_failures_open_the_breaker_and_the_sixth_request_spawns_nothing() {
    let w = World::new();
    let b = w.start_with(&[], &[("PATH", &no_tmux_path(&w))]);
    w.register(&b, "flaky", "codex", json!({})).await;
    for _ in 0..5 {
        let (s, _) = b.execute("flaky", "fake:exit=1").await;
        assert_eq!(s, 502);
    }
    assert_eq!(starts(&w), 5);
    let r = b
        .client
        .post(format!("{}/agents/flaky/execute", b.base))
        .json(&json!({"prompt": "would work now"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((50..=60).contains(&retry), "retry-after {retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "CIRCUIT_OPEN");
    assert_eq!(
        starts(&w),
        5,
        "nothing was spawned for the rejected request"
    );

    let (_, st) = b.get("/agents/circuits/status").await;
    let agent = st["circuits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["scope"] == "agent")
        .unwrap()
        .clone();
    assert_eq!(agent["state"], "open");
    assert_eq!(agent["agentId"], "flaky");
    assert_eq!(agent["consecutiveFailures"], 5);
    assert!(agent["retryAt"].is_string());
    assert!(agent["lastFailureReason"].is_string());
    // One agent's CLI errors do not open the CLI-scope breaker.
    assert!(st["circuits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["scope"] != "cli" || c["state"] == "closed"));

    let (s, reset) = b.post("/agents/flaky/circuit/reset", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(
        reset,
        json!({"reset": true, "agentId": "flaky", "previousState": "open"})
    );
    let (s, body) = b.execute("flaky", "works again").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        events(&b, "type=CIRCUIT_OPENED&agentId=flaky", 1)
            .await
            .len(),
        1
    );
    assert_eq!(
        events(&b, "type=CIRCUIT_REJECTED&agentId=flaky", 1)
            .await
            .len(),
        1
    );
    assert_eq!(
        events(&b, "type=CIRCUIT_RESET&agentId=flaky", 1)
            .await
            .len(),
        1
    );
    let (_, metrics) = b.get_text("/metrics").await;
    assert!(
        metrics.contains("kokino_circuit_transitions_total{scope=\"agent\",to=\"open\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("kokino_circuit_rejections_total{scope=\"agent\"} 1"));
}

#[tokio::test]
async fn an_opened_breaker_reroutes_the_agent_to_tmux_when_it_can() {
    require_tmux();
    let w = World::new();
    let b = w.start();
    let home = w.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    w.register(&b, "reroute", "claude-code", json!({"env": {"HOME": home}}))
        .await;
    for _ in 0..5 {
        assert_eq!(b.execute("reroute", "fake:exit=1").await.0, 502);
    }
    let (_, fb) = b.get("/api/fallback/status").await;
    let forced = &fb["forcedFallbacks"][0];
    assert_eq!(forced["agentId"], "reroute");
    assert_eq!(forced["auto"], true, "{fb}");
    assert!(forced["reason"]
        .as_str()
        .unwrap()
        .contains("circuit breaker"));
    let (s, resp) = b.execute("reroute", "served anyway").await;
    assert_eq!(s, 200, "{resp}");
    assert_eq!(
        resp["mode"], "tmux",
        "the request was rerouted, not refused"
    );
    let (_, agent) = b.get("/agents/reroute").await;
    assert_eq!(agent["effectiveMode"], "tmux");
    assert_eq!(agent["circuit"]["state"], "open");
    assert_eq!(agent["fallback"]["auto"], true);
    // A manual reset closes the breaker, which clears the automatic entry: headless again.
    b.post("/agents/reroute/circuit/reset", json!({})).await;
    let (_, fb) = b.get("/api/fallback/status").await;
    assert_eq!(fb["forcedFallbacks"], json!([]));
    let (s, resp) = b.execute("reroute", "back to headless").await;
    assert_eq!(s, 200);
    assert_eq!(resp["mode"], "headless");
}

#[tokio::test]
async fn a_disabled_cli_runs_through_tmux_and_returns_to_headless_with_no_request_lost() {
    let w = World::new();
    let b = w.start();
    let home = w.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    for i in 0..3 {
        w.register(
            &b,
            &format!("g{i}"),
            "gemini",
            json!({"env": {"HOME": home}}),
        )
        .await;
    }
    let (s, body) = b
        .post(
            "/api/fallback/cli/disable",
            json!({"cliType": "gemini", "reason": "auth issue"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body, json!({"disabled": true, "cliType": "gemini"}));

    // Requests in flight while the CLI is disabled and then enabled again all get an answer.
    let mut tasks = Vec::new();
    for n in 0..9 {
        let client = b.client.clone();
        let url = format!("{}/agents/g{}/execute", b.base, n % 3);
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"prompt": format!("request {n}")}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
        if n == 5 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (s, body) = b
                .post("/api/fallback/cli/enable", json!({"cliType": "gemini"}))
                .await;
            assert_eq!(s, 200);
            assert_eq!(body["wasDisabled"], true);
        }
    }
    let mut modes = Vec::new();
    for (n, t) in tasks.into_iter().enumerate() {
        let (s, body) = t.await.unwrap();
        assert_eq!(s, 200, "request {n}: {body}");
        assert_eq!(body["content"], format!("echo: request {n}"));
        modes.push(body["mode"].as_str().unwrap().to_owned());
    }
    assert!(modes.iter().any(|m| m == "tmux"), "{modes:?}");
    let (s, after) = b.execute("g0", "after enable").await;
    assert_eq!(s, 200);
    assert_eq!(after["mode"], "headless");
    assert_eq!(events(&b, "type=FALLBACK_CLI_DISABLED", 1).await.len(), 1);
    assert_eq!(events(&b, "type=FALLBACK_CLI_ENABLED", 1).await.len(), 1);
}

#[tokio::test]
async fn fallback_endpoints_validate_and_accept_both_forms() {
    let w = World::new();
    let b = w.start();
    w.register(&b, "f", "codex", json!({})).await;
    let (s, body) = b
        .post("/api/fallback/cli/disable", json!({"cliType": "claude"}))
        .await;
    assert_eq!(s, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("claude-code"));
    let (s, _) = b.post("/api/fallback/cli/disable", json!({})).await;
    assert_eq!(s, 400);
    let (s, body) = b
        .post("/api/fallback/agent/f/force", json!({"reason": "testing"}))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body, json!({"forced": true, "agentId": "f"}));
    let (s, body) = b
        .post(
            "/api/fallback/agent/force",
            json!({"agentId": "f", "reason": "again"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, _) = b.post("/api/fallback/agent/nobody/force", json!({})).await;
    assert_eq!(s, 404);
    let (_, fb) = b.get("/api/fallback/status").await;
    assert_eq!(fb["forcedFallbacks"][0]["reason"], "again");
    assert_eq!(fb["forcedFallbacks"][0]["auto"], false);
    let (s, body) = b
        .post("/api/fallback/agent/clear", json!({"agentId": "f"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(body, json!({"cleared": true, "agentId": "f"}));
    let (s, body) = b.delete("/api/fallback/agent/f").await;
    assert_eq!(s, 200);
    assert_eq!(body["cleared"], false);
    b.post(
        "/api/fallback/cli/disable",
        json!({"cliType": "codex", "reason": "x"}),
    )
    .await;
    b.post("/api/fallback/agent/f/force", json!({})).await;
    let (_, body) = b.post("/api/fallback/clear-all", json!({})).await;
    assert_eq!(body, json!({"cleared": 2}));
    let (_, fb) = b.get("/api/fallback/status").await;
    assert_eq!(fb, json!({"disabledCLIs": [], "forcedFallbacks": []}));
    let (s, body) = b.post("/api/circuits/cli/codex/reset", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(body["previousState"], "closed");
    let (s, _) = b.post("/api/circuits/cli/claude/reset", json!({})).await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn a_rate_limit_parks_the_agent_without_tripping_the_breaker() {
    let w = World::new();
    let b = w.start();
    w.register(&b, "quota", "claude-code", json!({})).await;
    assert_eq!(b.execute("quota", "fake:ratelimit").await.0, 503);
    let before = starts(&w);
    let r = b
        .client
        .post(format!("{}/agents/quota/execute", b.base))
        .json(&json!({"prompt": "again"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMITED");
    assert_eq!(starts(&w), before, "a parked agent spawns nothing");
    let (_, st) = b.get("/agents/circuits/status").await;
    let agent = st["circuits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["scope"] == "agent")
        .cloned()
        .unwrap_or(json!({}));
    assert_eq!(
        agent["consecutiveFailures"].as_u64().unwrap_or(0),
        0,
        "rate limits are not failures"
    );
}

#[tokio::test]
async fn breaker_and_fallback_state_survive_a_restart() {
    let w = World::new();
    let mut b = w.start_with(&[], &[("PATH", &no_tmux_path(&w))]);
    w.register(&b, "keep", "codex", json!({})).await;
    for _ in 0..5 {
        b.execute("keep", "fake:exit=1").await;
    }
    b.post(
        "/api/fallback/cli/disable",
        json!({"cliType": "factory-droid", "reason": "kept"}),
    )
    .await;
    let b = tokio::task::spawn_blocking(move || {
        b.stop();
        b
    })
    .await
    .unwrap();
    drop(b);
    let b = w.start_with(&[], &[("PATH", &no_tmux_path(&w))]);
    let (_, st) = b.get("/agents/circuits/status").await;
    let agent = st["circuits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["scope"] == "agent")
        .unwrap()
        .clone();
    assert_eq!(agent["state"], "open", "{st}");
    let (s, _) = b.execute("keep", "still refused").await;
    assert_eq!(s, 503);
    let (_, fb) = b.get("/api/fallback/status").await;
    assert_eq!(fb["disabledCLIs"][0]["cliType"], "factory-droid");
    assert_eq!(fb["disabledCLIs"][0]["reason"], "kept");
}
