//! The environment doctor through the broker: `/api/health/environment`, CLI versions, and the
//! automatic CLI disable it drives.

use crate::common::*;
use serde_json::json;

#[tokio::test]
async fn the_doctor_passes_with_the_fake_clis_and_records_their_versions() {
    let w = World::new();
    let b = w.start();
    w.register(&b, "c1", "claude-code", json!({})).await;
    let (status, report) = b
        .get("/api/health/environment?cli=claude-code&fresh=true")
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["cliType"], "claude-code");
    assert_eq!(report["passed"], true);
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["binary", "environment", "auth", "disk", "dryrun"]);
    assert!(report["checkedAt"].is_string());
    assert!(report["durationMs"].is_u64());

    let (_, versions) = b.get("/api/health/cli-versions").await;
    let claude = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["cliType"] == "claude-code")
        .unwrap()
        .clone();
    assert!(
        claude["version"].as_str().unwrap().contains("Claude Code"),
        "{claude}"
    );
    assert_eq!(claude["agents"], json!(["c1"]));
    assert!(claude["firstSeenAt"].is_string() && claude["lastSeenAt"].is_string());

    let (s, body) = b.get("/api/health/environment?cli=claude").await;
    assert_eq!(s, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("claude-code"));
}

#[tokio::test]
async fn a_failing_auth_check_is_a_503_with_the_fix_but_never_disables_the_cli() {
    let w = World::new();
    // claude is logged out; gemini and droid have no credentials in this HOME.
    let home = w.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let b = w.start_with(
        &[],
        &[
            ("KOKINO_FAKE_LOGGED_OUT", "1"),
            ("HOME", home.to_str().unwrap()),
        ],
    );
    // A headless claude agent that uses the default binary (found on PATH): the doctor's
    // verdict about claude-code concerns it.
    let (s, _) = b
        .post(
            "/agents/register",
            json!({"agentId": "uses-default", "type": "claude-code", "cwd": w.work()}),
        )
        .await;
    assert_eq!(s, 200);
    // A run after the registration (the start-up run's cached report predates the agent).
    let (status, report) = b.get("/api/health/environment?fresh=true").await;
    assert_eq!(status, 503, "{report}");
    assert_eq!(report["overall"], false);
    let claude = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cliType"] == "claude-code")
        .unwrap()
        .clone();
    assert_eq!(claude["passed"], false);
    let auth = claude["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "auth")
        .unwrap()
        .clone();
    assert_eq!(auth["passed"], false);
    assert!(
        auth["message"].as_str().unwrap().contains("login"),
        "the message says what to do: {auth}"
    );

    // The doctor judges credentials from outside the CLI and can be wrong: an auth verdict is
    // soft and never disables a CLI type (observed failures are the breakers' business).
    assert_eq!(auth["certainty"], "soft", "{auth}");
    let (_, fb) = b.get("/api/fallback/status").await;
    let disabled = fb["disabledCLIs"].as_array().unwrap();
    assert!(
        disabled.iter().all(|d| d["cliType"] != "claude-code"),
        "an auth verdict disabled claude-code: {fb}"
    );
    assert!(!events(&b, "type=ENV_CHECK_FAILED", 1).await.is_empty());
    let (_, metrics) = b.get_text("/metrics").await;
    assert!(
        metrics.contains("kokino_env_check_failing{cli=\"claude-code\"} 1"),
        "{metrics}"
    );
}

/// "Not logged in" from `claude auth status` is not the truth for an agent that carries its
/// own API key: the doctor judges the CLI type with its agents' environments.
#[tokio::test]
async fn an_agent_with_its_own_api_key_makes_a_logged_out_cli_pass() {
    let w = World::new();
    let home = w.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let b = w.start_with(
        &[],
        &[
            ("KOKINO_FAKE_LOGGED_OUT", "1"),
            ("HOME", home.to_str().unwrap()),
        ],
    );
    let (s, body) = b
        .post(
            "/agents/register",
            json!({"agentId": "keyed", "type": "claude-code", "cwd": w.work(),
                   "env": {"ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (status, report) = b
        .get("/api/health/environment?cli=claude-code&fresh=true")
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["passed"], true, "{report}");
    let (_, fb) = b.get("/api/fallback/status").await;
    assert!(fb["disabledCLIs"].as_array().unwrap().is_empty(), "{fb}");
}

/// A hard fact, the binary missing for a CLI type an agent uses, does disable the type (its
/// agents go to tmux until the binary is back).
#[tokio::test]
async fn a_missing_binary_of_a_used_cli_disables_it() {
    let w = World::new();
    let b = w.start_with(&[], &[("PATH", "/usr/bin:/bin")]);
    let (s, body) = b
        .post(
            "/agents/register",
            json!({"agentId": "no-binary", "type": "gemini", "cwd": w.work()}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (status, report) = b.get("/api/health/environment?cli=gemini&fresh=true").await;
    assert_eq!(status, 503, "{report}");
    let (_, fb) = b.get("/api/fallback/status").await;
    let entry = fb["disabledCLIs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["cliType"] == "gemini")
        .cloned()
        .unwrap_or_else(|| panic!("gemini disabled: {fb}"));
    assert_eq!(entry["auto"], true);
    assert!(
        entry["reason"].as_str().unwrap().contains("binary"),
        "{entry}"
    );
}

#[tokio::test]
async fn a_missing_binary_names_the_install_command() {
    let w = World::new();
    let b = w.start_with(&[], &[("PATH", "/usr/bin:/bin")]);
    let (status, report) = b.get("/api/health/environment?cli=factory-droid").await;
    assert_eq!(status, 503, "{report}");
    let binary = &report["checks"][0];
    assert_eq!(binary["name"], "binary");
    assert_eq!(binary["passed"], false);
    assert!(
        binary["message"].as_str().unwrap().contains("curl"),
        "{binary}"
    );
}

/// The sum of `kokino_env_checks_total` over its labels: one more per check of each doctor run.
async fn checks_run(b: &Broker) -> f64 {
    let (_, text) = b.get_text("/metrics").await;
    text.lines()
        .filter(|l| l.starts_with("kokino_env_checks_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn fifty_at_once(b: &Broker, query: &str) -> Vec<(u16, serde_json::Value)> {
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (client, url) = (
            b.client.clone(),
            format!("{}/api/health/environment{query}", b.base),
        );
        tasks.push(tokio::spawn(async move {
            let r = client.get(url).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Requests cannot multiply probe processes (issue 12, item 8): 50 concurrent calls share the
/// cached report and start no run; 50 concurrent `fresh` calls share at most two runs (one
/// under way, and the next for those who asked before it started).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_calls_share_the_cached_report_and_fresh_ones_one_flight() {
    let w = World::new();
    let b = w.start();
    let before = checks_run(&b).await;
    let (s, lone) = b.get("/api/health/environment?fresh=true").await;
    // 503 is an answer too (gemini and droid have no credentials here).
    assert!(s == 200 || s == 503, "{lone}");
    let one_run = checks_run(&b).await - before;
    assert!(one_run >= 4.0, "a run checks every CLI type: {one_run}");

    let before = checks_run(&b).await;
    let answers = fifty_at_once(&b, "").await;
    assert_eq!(
        checks_run(&b).await - before,
        0.0,
        "cached calls start no run"
    );
    assert!(answers
        .iter()
        .all(|(st, r)| *st == s && r["checkedAt"] == lone["checkedAt"]));

    let before = checks_run(&b).await;
    let answers = fifty_at_once(&b, "?fresh=true").await;
    let ran = checks_run(&b).await - before;
    assert!(
        ran >= one_run && ran <= 2.0 * one_run,
        "50 fresh calls ran {ran} checks; one run is {one_run}"
    );
    let mut stamps: Vec<String> = answers
        .iter()
        .map(|(_, r)| r["checkedAt"].to_string())
        .collect();
    stamps.sort();
    stamps.dedup();
    assert!(stamps.len() <= 2, "{stamps:?}");
    assert!(!stamps.contains(&lone["checkedAt"].to_string()));
}
