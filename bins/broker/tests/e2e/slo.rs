//! SLO figures from real executions with known outcomes.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn availability_budget_burn_and_latency_follow_the_eligibility_rules() {
    let w = World::new();
    let cfg = w.path().join("k.toml");
    std::fs::write(&cfg, "[limits]\nkill_grace_ms = 300\n").unwrap();
    let b = w.start_with(&["--config", &cfg.display().to_string()], &[]);
    w.register(&b, "s", "codex", json!({})).await;

    // 16 quick successes and 2 slow ones.
    for i in 0..16 {
        assert_eq!(b.execute("s", &format!("quick {i}")).await.0, 200);
    }
    for _ in 0..2 {
        assert_eq!(b.execute("s", "fake:sleep=0.6 slow").await.0, 200);
    }
    // Failures: a CLI error, a timeout, and a lock timeout (no execution, still a failure).
    assert_eq!(b.execute("s", "fake:exit=3").await.0, 502);
    let (s, _) = b
        .post(
            "/agents/s/execute",
            json!({"prompt": "fake:hang", "timeoutMs": 200}),
        )
        .await;
    assert_eq!(s, 504);
    let holder = {
        let client = b.client.clone();
        let url = format!("{}/agents/s/execute", b.base);
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"prompt": "fake:sleep=1 hold"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, _) = b
        .post(
            "/agents/s/execute",
            json!({"prompt": "x", "lockTimeoutMs": 50}),
        )
        .await;
    assert_eq!(s, 409);
    assert_eq!(holder.await.unwrap(), 200, "the holder is a 19th success");
    // Not eligible: a rate-limited run and a cancelled one.
    // (On another agent: a rate limit parks its agent, which would refuse the next request.)
    w.register(&b, "s2", "codex", json!({})).await;
    assert_eq!(b.execute("s2", "fake:ratelimit").await.0, 503);
    let cancelled = {
        let client = b.client.clone();
        let url = format!("{}/agents/s/execute", b.base);
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"prompt": "fake:sleep=5 c"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.post("/agents/s/execute/cancel", json!({})).await;
    assert_eq!(cancelled.await.unwrap(), 409);

    // The lock-timeout event is written asynchronously; wait until it is visible.
    assert_eq!(events(&b, "type=LOCK_TIMEOUT", 1).await.len(), 1);
    let (status, slo) = b.get("/api/slo/status").await;
    assert_eq!(status, 200, "{slo}");
    let a = &slo["availability"];
    // 19 successes, 3 failures (cli_error, timeout, lock timeout) = 22 eligible.
    assert_eq!(a["eligible"], 22, "{slo}");
    assert_eq!(a["failures"], 3);
    let current = a["current"].as_f64().unwrap();
    assert!((current - 19.0 / 22.0).abs() < 1e-9, "{current}");
    assert_eq!(a["breached"], true, "86 % is not 99.5 %");
    let budget = a["errorBudget"].as_f64().unwrap();
    assert!(
        (budget - 0.005 * 22.0).abs() < 1e-9,
        "the budget is not rounded to zero: {budget}"
    );
    let remaining = a["errorBudgetRemaining"].as_f64().unwrap();
    assert!(
        (remaining - (1.0 - 3.0 / (0.005 * 22.0))).abs() < 1e-9,
        "{remaining}"
    );
    let burn = a["burnRates"]["1h"].as_f64().unwrap();
    assert!((burn - (3.0 / 22.0) / 0.005).abs() < 1e-9, "{burn}");
    assert_eq!(a["burnRates"]["6h"], a["burnRates"]["1h"]);
    assert_eq!(a["target"], 0.995);
    assert_eq!(a["windowDays"], 30);

    let l = &slo["latency"];
    assert_eq!(l["count"], 19);
    // Nearest rank over 19 successes: p50 is the 10th fastest (quick), p95 the 19th (a slow
    // one, at least 600 ms or the 1 s holder).
    assert!(l["p50Ms"].as_u64().unwrap() < 600, "{l}");
    assert!(l["p95Ms"].as_u64().unwrap() >= 600, "{l}");
    assert_eq!(l["targetP95Ms"], 30000);
    assert_eq!(l["breached"], false);
    assert_eq!(
        slo["correctness"]["current"],
        Value::Null,
        "no shadow data yet"
    );
    assert!(slo["resources"]["avgMemoryMB"].as_f64().unwrap() > 0.0);

    let (_, by_cli) = b.get("/api/metrics/failures/by-cli?hours=24").await;
    assert_eq!(by_cli[0]["cliType"], "codex");
    assert_eq!(
        by_cli[0]["failures"], 2,
        "executions only: the lock timeout ran nothing"
    );
    assert_eq!(by_cli[0]["total"], 21);
    let reasons = by_cli[0]["topReasons"].as_array().unwrap();
    assert!(
        reasons
            .iter()
            .any(|r| r.as_str().unwrap().starts_with("timeout")),
        "{reasons:?}"
    );
    let (_, by_agent) = b.get("/api/metrics/failures/by-agent").await;
    assert_eq!(by_agent[0]["agentId"], "s");
    assert!(by_agent[0]["lastFailureAt"].is_string());
    let (_, lat) = b.get("/api/metrics/latency/by-agent?hours=1").await;
    assert_eq!(lat[0]["agentId"], "s");
    assert!(lat[0]["maxMs"].as_u64().unwrap() >= 600);
    let (s, body) = b.get("/api/metrics/latency/by-agent?hours=0").await;
    assert_eq!(s, 400, "{body}");
}

#[tokio::test]
async fn an_idle_broker_reports_a_full_budget() {
    let w = World::new();
    let b = w.start();
    let (status, slo) = b.get("/api/slo/status").await;
    assert_eq!(status, 200);
    assert_eq!(slo["availability"]["current"], 1.0);
    assert_eq!(slo["availability"]["errorBudgetRemaining"], 1.0);
    assert_eq!(slo["availability"]["breached"], false);
    assert_eq!(slo["latency"]["count"], 0);
}
