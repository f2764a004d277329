//! Process supervision and per-agent logs, seen through the HTTP API.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn processes_status_shows_live_memory_and_the_memory_limit_kills() {
    let w = World::new();
    let cfg = w.path().join("k.toml");
    std::fs::write(
        &cfg,
        "[limits]\nmemory_sample_ms = 100\nkill_grace_ms = 500\n",
    )
    .unwrap();
    let b = w.start_with(&["--config", &cfg.display().to_string()], &[]);
    w.register(
        &b,
        "mem",
        "claude-code",
        json!({"maxMemoryMB": 150, "timeoutMs": 20000}),
    )
    .await;

    // 64 MB held for 2 s: under the limit, visible in processes/status.
    let run = {
        let client = b.client.clone();
        let url = format!("{}/agents/mem/execute", b.base);
        tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"prompt": "fake:mem=64MB fake:sleep=2 ok"}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    let mut seen = Value::Null;
    for _ in 0..150 {
        let (_, list) = b.get("/agents/processes/status").await;
        if let Some(p) = list.as_array().and_then(|l| l.first()) {
            if p["memoryMB"].as_f64().unwrap_or(0.0) >= 60.0 {
                seen = p.clone();
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen["agentId"], "mem", "{seen}");
    assert!(seen["pid"].as_i64().unwrap() > 0);
    assert_eq!(seen["pgid"], seen["pid"]);
    assert_eq!(seen["limits"]["maxMemoryMB"], 150);
    assert_eq!(seen["limits"]["timeoutMs"], 20000);
    assert!(seen["cpuPercent"].as_f64().is_some());
    let (status, body) = run.await.unwrap();
    assert_eq!(status, 200, "{body}");

    // 300 MB: over the limit, killed with its group, classified resource_limit.
    let (status, body) = b
        .execute("mem", "fake:mem=300MB fake:sleep=10 fake:child")
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["details"]["classification"], "resource_limit");
    assert!(body["error"].as_str().unwrap().contains("memory limit"));
    assert!(agent_processes(&w, &b).is_empty());
    let (_, list) = b.get("/agents/processes/status").await;
    assert_eq!(list, json!([]));
    assert_eq!(
        events(&b, "type=PROCESS_LIMIT_EXCEEDED&agentId=mem", 1)
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn every_cli_line_lands_in_the_agent_log_and_can_be_read_from_the_end() {
    let w = World::new();
    let b = w.start();
    w.register(&b, "logged", "codex", json!({})).await;
    for i in 0..3 {
        let (s, _) = b.execute("logged", &format!("run {i}")).await;
        assert_eq!(s, 200);
    }
    let (status, tail) = b.get("/agents/logged/logs?lines=2").await;
    assert_eq!(status, 200, "{tail}");
    assert_eq!(tail["lines"], 2);
    let content = tail["content"].as_str().unwrap();
    let lines: Vec<&str> = content.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" stdout ") && l.contains("turn.completed")),
        "the last run's final event is among the last lines: {content}"
    );
    let (_, all) = b.get("/agents/logged/logs").await;
    assert!(all["content"].as_str().unwrap().contains("echo: run 0"));
    assert!(
        all["content"].as_str().unwrap().contains(" stderr "),
        "stderr lines are logged too"
    );

    let path = w.data_dir().join("logs/logged.log");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (_, st) = b.get("/agents/logs/status").await;
    let entry = &st["logs"][0];
    assert_eq!(entry["agentId"], "logged");
    assert!(entry["sizeBytes"].as_u64().unwrap() > 0);
    assert_eq!(entry["rotatedFiles"], 0);

    for bad in ["0", "10001", "x", "-1"] {
        let (s, body) = b.get(&format!("/agents/logged/logs?lines={bad}")).await;
        assert_eq!(s, 400, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains("lines"));
    }
    let (s, _) = b.get("/agents/nobody/logs").await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn logs_need_the_token_when_one_is_set() {
    let w = World::new();
    let token = w.path().join("token");
    std::fs::write(&token, "t0k").unwrap();
    let b = w.start_with(&["--token-file", &token.display().to_string()], &[]);
    let (s, body) = b.get("/agents/x/logs").await;
    assert_eq!(s, 401, "{body}");
    let r = b
        .client
        .get(format!("{}/agents/x/logs", b.base))
        .bearer_auth("t0k")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "authorised, and the agent is unknown");
}

#[tokio::test]
async fn event_retention_deletes_old_events_on_request() {
    let w = World::new();
    let b = w.start();
    w.register(&b, "r", "codex", json!({})).await;
    b.execute("r", "one").await;
    assert!(!events(&b, "agentId=r", 3).await.is_empty());
    let (s, body) = b.post("/api/metrics/cleanup?days=90", json!({})).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body,
        json!({"deleted": 0, "retentionDays": 90}),
        "recent events stay"
    );
    let (s, body) = b
        .post("/api/metrics/cleanup", json!({"retentionDays": 30}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(body["retentionDays"], 30);
    for bad in ["0", "x", "-3"] {
        let (s, body) = b
            .post(&format!("/api/metrics/cleanup?days={bad}"), json!({}))
            .await;
        assert_eq!(s, 400, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains("days"));
    }
}

/// Each headless CLI is started by a spawner run by `kokino-supervisor` when that small binary
/// sits next to the broker (both come from one build), and by the broker binary itself when it
/// does not.
#[tokio::test(flavor = "multi_thread")]
async fn the_small_supervisor_is_used_when_it_is_next_to_the_broker() {
    let exe_name = |pid: i32| {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        Some(exe.file_name()?.to_string_lossy().into_owned())
    };
    let parent_of = |pid: i32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat[stat.rfind(')')? + 1..]
            .split_whitespace()
            .nth(1)?
            .parse::<i32>()
            .ok()
    };
    for alone in [false, true] {
        let w = World::new();
        let copy = w.path().join("alone");
        std::fs::create_dir_all(&copy).unwrap();
        // Run a copy of the broker from a directory of its own: no supervisor next to it.
        let script = format!(
            "cp \"$0\" {dir}/ && exec {dir}/kokino-broker \"$@\"",
            dir = copy.display()
        );
        let wrapper: Vec<&str> = if alone {
            vec!["sh", "-c", &script]
        } else {
            Vec::new()
        };
        let bind = format!("127.0.0.1:{}", crate::common::free_port());
        let b = std::sync::Arc::new(w.start_at(&wrapper, &bind, &[], &[]));
        w.register(&b, "s", "claude-code", json!({})).await;
        let run = {
            let b = b.clone();
            tokio::spawn(async move { b.execute("s", "fake:sleep=1.5 hi").await })
        };
        // The execution's CLI (not a start-up probe of the same binary), and the program and
        // command line of its parent.
        let started = events(&b, "type=PROCESS_STARTED", 1).await;
        let cli = started
            .first()
            .and_then(|e| e["metadata"]["pid"].as_i64())
            .expect("the execution's process is named") as i32;
        let mut parent = None;
        let seen = eventually(Duration::from_secs(10), || {
            parent = parent_of(cli).map(|pp| {
                let cmdline = std::fs::read(format!("/proc/{pp}/cmdline")).unwrap_or_default();
                (
                    exe_name(pp),
                    String::from_utf8_lossy(&cmdline).replace('\0', " "),
                )
            });
            parent.is_some()
        })
        .await;
        assert!(seen, "the CLI never ran");
        let (name, cmdline) = parent.unwrap();
        let want = if alone {
            "kokino-broker"
        } else {
            "kokino-supervisor"
        };
        assert_eq!(name.as_deref(), Some(want), "alone={alone}: {cmdline}");
        assert!(
            cmdline.contains("--kokino-spawner"),
            "alone={alone}: {cmdline}"
        );
        assert_eq!(run.await.unwrap().0, 200);
    }
}

/// The spawner that starts headless CLIs is killed with SIGKILL while a CLI runs: the run ends
/// as a killed CLI, the broker ends the CLI's group (nobody else would), and the next execution
/// starts a new spawner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_spawner_ends_its_run_and_the_next_execution_gets_a_new_one() {
    let w = World::new();
    let cfg = w.path().join("k.toml");
    std::fs::write(&cfg, "[limits]\nkill_grace_ms = 500\n").unwrap();
    let b = std::sync::Arc::new(w.start_with(&["--config", &cfg.display().to_string()], &[]));
    w.register(&b, "s", "claude-code", json!({})).await;
    let (st, v) = b.execute("s", "warm up").await;
    assert_eq!(st, 200, "{v}");
    let first = watchdog_pid(&b, 1).await;
    let run = {
        let b = b.clone();
        tokio::spawn(async move { b.execute("s", "fake:child fake:sleep=60").await })
    };
    // The CLI and its child.
    assert!(
        eventually(Duration::from_secs(10), || agent_processes(&w, &b).len()
            >= 2)
        .await
    );
    kill_all(&[first]);
    let (st, body) = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the run ends once its spawner is gone")
        .unwrap();
    assert_eq!(st, 502, "{body}");
    assert_eq!(body["details"]["classification"], "cli_error", "{body}");
    assert_none_left(&w, &b, Duration::from_secs(5), "after the spawner died").await;

    let (st, v) = b.execute("s", "again").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["content"], "echo: again");
    let second = watchdog_pid(&b, 3).await;
    assert_ne!(second, first, "a new spawner started the CLI");
}

/// A CLI started by the spawner gets its prompt through a pipe once its user turn is stored. A
/// prompt of several pipes' worth (a pipe holds 64 KiB), which the CLI must read while the
/// broker still writes, arrives whole and in order, and so does one that fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_larger_than_the_pipe_reach_the_cli_whole() {
    let w = World::new();
    let b = w.start();
    w.register(&b, "p", "claude-code", json!({})).await;
    let long: String = (0..40_000).map(|i| format!("{i:05} ")).collect();
    assert!(long.len() > 3 * 64 * 1024, "{}", long.len());
    for prompt in [long.as_str(), "short"] {
        let (st, v) = b.execute("p", prompt).await;
        assert_eq!(st, 200, "{v}");
        let content = v["content"].as_str().unwrap();
        assert_eq!(content.len(), "echo: ".len() + prompt.trim().len());
        assert_eq!(content, format!("echo: {}", prompt.trim()));
    }
    let started = events(&b, "type=PROCESS_STARTED&limit=1", 1).await;
    // The spawner started it: the CLI leads its own group.
    assert_eq!(
        started[0]["metadata"]["pid"],
        started[0]["metadata"]["pgid"]
    );
    assert_none_left(&w, &b, Duration::from_secs(2), "after the answers").await;
}

/// A request too large for the spawner's socket (an environment of hundreds of kilobytes) is
/// not refused: that CLI runs under a supervisor of its own, which the broker starts itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_too_large_for_the_spawner_runs_under_a_supervisor_of_its_own() {
    let w = World::new();
    let b = w.start();
    // Four variables of 60 KB: each under the kernel's limit for one string (128 KB), the
    // whole over the spawner's message limit.
    let big = "x".repeat(60 * 1024);
    let env: serde_json::Map<String, Value> = (0..4)
        .map(|i| (format!("KOKINO_BIG_{i}"), Value::from(big.clone())))
        .collect();
    w.register(&b, "big", "claude-code", json!({ "env": env }))
        .await;
    let (st, v) = b.execute("big", "hello").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["content"], "echo: hello");
    let started = events(&b, "type=PROCESS_STARTED&limit=1", 1).await;
    let meta = &started[0]["metadata"];
    // Under a supervisor, the supervisor leads the group and is the watchdog; the CLI is its
    // child.
    assert_eq!(meta["supervisorPid"], meta["pgid"], "{meta}");
    assert_ne!(meta["pid"], meta["pgid"], "{meta}");
    assert_none_left(&w, &b, Duration::from_secs(2), "after the answer").await;
}

/// The spawner's claim files are reused: each run writes its claim over a free one instead of
/// creating a file (and the file system an inode) per run. After runs one at a time, one blank
/// claim is left; two at once need two; while a run lasts its claim names its group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_files_are_reused_from_run_to_run() {
    let w = World::new();
    let b = std::sync::Arc::new(w.start());
    w.register(&b, "a", "claude-code", json!({})).await;
    w.register(&b, "b", "claude-code", json!({})).await;
    let run_dir = w.data_dir().join("run");
    let claims = || {
        let mut found: Vec<(String, String)> = std::fs::read_dir(&run_dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "claim"))
            .map(|e| {
                let text = std::fs::read_to_string(e.path()).unwrap();
                (e.file_name().to_string_lossy().into_owned(), text)
            })
            .collect();
        found.sort();
        found
    };
    let blank = |text: &str| text.split_whitespace().next() == Some("0");
    for n in 0..5 {
        let (st, v) = b.execute("a", &format!("hello {n}")).await;
        assert_eq!(st, 200, "{v}");
    }
    let after_one_at_a_time = claims();
    assert_eq!(after_one_at_a_time.len(), 1, "{after_one_at_a_time:?}");
    assert!(blank(&after_one_at_a_time[0].1), "{after_one_at_a_time:?}");

    let runs: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|agent| {
            let b = b.clone();
            tokio::spawn(async move { b.execute(agent, "fake:sleep=1 hi").await })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || claims()
            .iter()
            .filter(|(_, text)| !blank(text))
            .count()
            == 2)
        .await,
        "two running CLIs, two claims naming their groups: {:?}",
        claims()
    );
    for run in runs {
        let (st, v) = run.await.unwrap();
        assert_eq!(st, 200, "{v}");
    }
    let after = claims();
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.iter().all(|(_, text)| blank(text)), "{after:?}");
}
