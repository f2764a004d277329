//! A CLI's helper that daemonizes (double fork and `setsid`, like the `codex app-server
//! --managed-daemon` that Codex's TUI starts) leaves the CLI's process group and session, so a
//! group kill cannot reach it. The spawner (headless) and the pane's supervisor (tmux) are child
//! subreapers, so the daemon is re-parented to them and ended with the execution; when the
//! watchdog itself is killed, the daemon carries its mark and the next broker kills it at
//! start-up.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

/// The session id of `pid` (field 6 of `/proc/<pid>/stat`).
fn session_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// Waits until the world has a process in a session of its own (the daemon) besides the others,
/// and returns the processes, so a test knows its scenario really has an escaped daemon.
async fn wait_for_daemon(w: &World, b: &Broker, at_least: usize) -> Vec<i32> {
    let mut procs = Vec::new();
    for _ in 0..400 {
        procs = agent_processes(w, b);
        let mut sessions: Vec<i32> = procs.iter().filter_map(|p| session_of(*p)).collect();
        sessions.sort_unstable();
        sessions.dedup();
        if procs.len() >= at_least && sessions.len() >= 2 {
            return procs;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "the CLI never started its daemon: {procs:?}\n{}",
        b.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_goes_when_its_headless_execution_ends_or_is_cancelled() {
    let w = World::new();
    let b = w.start();
    w.register(&b, "a", "claude-code", json!({})).await;

    // The answer: by the time it arrives, the spawner has ended the daemon.
    let (st, v) = b.execute("a", "fake:child=daemon hello").await;
    assert_eq!(st, 200, "{v}");
    assert_none_left(&w, &b, Duration::from_secs(2), "after the answer").await;

    // Cancel.
    let url = format!("{}/agents/a/execute", b.base);
    let client = reqwest::Client::new();
    let request = tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"prompt": "fake:child=daemon fake:hang"}))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    // The CLI and the daemon (the spawner does not carry the world's environment).
    wait_for_daemon(&w, &b, 2).await;
    let (st, v) = b.post("/agents/a/execute/cancel", json!({})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(request.await.unwrap().ok(), Some(409));
    assert_none_left(&w, &b, Duration::from_secs(5), "after the cancel").await;
}

/// The spawner is killed with SIGKILL together with its broker: nobody is left to end the
/// daemon, which init adopted. The next broker finds it by the mark the spawner set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_kills_a_daemon_whose_supervisor_was_killed() {
    let w = World::new();
    let mut b = w.start();
    w.register(&b, "a", "claude-code", json!({})).await;
    let url = format!("{}/agents/a/execute", b.base);
    let client = reqwest::Client::new();
    let request = tokio::spawn(async move {
        let _ = client
            .post(url)
            .json(&json!({"prompt": "fake:child=daemon fake:sleep=60"}))
            .send()
            .await;
    });
    wait_for_daemon(&w, &b, 2).await;
    let spawner = watchdog_pid(&b, 1).await;
    kill_supervisor_and_broker(&mut b, &[spawner]);
    let _ = request.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = agent_processes(&w, &b);
    assert!(
        left.len() >= 2,
        "the scenario needs the CLI and its daemon to outlive their spawner: {left:?}\n{}",
        b.log_text()
    );
    let b2 = w.start();
    assert_none_left(&w, &b2, Duration::from_secs(5), "after the restart").await;
    // Two at least: the CLI's group (found by its claim) and the daemon (found by its mark),
    // which may be written in separate batches.
    let killed = events(&b2, "type=PROCESS_ORPHAN_KILLED", 2).await;
    assert!(
        killed.iter().any(|e| e["metadata"]["source"] == "mark"),
        "{killed:?}"
    );
}

/// In a tmux pane the daemon lives as long as the session (the TUI is still running), and goes
/// with a cancel, with end-session, and with a broker killed with SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_goes_with_its_tmux_session() {
    require_tmux();
    let w = World::new();
    let mut b = w.start();
    let home = w.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    w.register(
        &b,
        "t",
        "codex",
        json!({"commMode": "tmux", "env": {"HOME": home.display().to_string()}}),
    )
    .await;

    // End-session.
    let (st, v) = b.execute("t", "fake:child=daemon hello").await;
    assert_eq!(st, 200, "{v}");
    wait_for_daemon(&w, &b, 3).await;
    let (st, v) = b.post("/agents/t/end-session", json!({})).await;
    assert_eq!(st, 200, "{v}");
    assert_none_left(&w, &b, Duration::from_secs(5), "after end-session").await;

    // Cancel.
    let url = format!("{}/agents/t/execute", b.base);
    let client = reqwest::Client::new();
    let request = tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"prompt": "fake:child=daemon fake:hang"}))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    wait_for_daemon(&w, &b, 3).await;
    let (st, v) = b.post("/agents/t/execute/cancel", json!({})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(request.await.unwrap().ok(), Some(409));
    assert_none_left(&w, &b, Duration::from_secs(10), "after the cancel").await;

    // The broker dies: the pane's supervisor sees it and ends its descendants too.
    let (st, v) = b.execute("t", "fake:child=daemon hello").await;
    assert_eq!(st, 200, "{v}");
    wait_for_daemon(&w, &b, 3).await;
    b.kill9();
    let clean = eventually(Duration::from_secs(5), || {
        agent_processes(&w, &b).is_empty()
    })
    .await;
    let left = agent_processes(&w, &b);
    kill_all(&left);
    let _ = std::process::Command::new("tmux")
        .arg("-S")
        .arg(w.data_dir().join("tmux").join("tmux.sock"))
        .arg("kill-server")
        .status();
    assert!(
        clean,
        "after the broker was killed: processes left: {left:?}"
    );
}
