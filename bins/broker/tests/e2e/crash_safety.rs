//! No process of an execution outlives a broker killed at any instant, and recovery kills what
//! is left of a recorded group even when its leader is gone (issue 12, items 1–3).

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::json;

/// `kill -9` of the broker at instants from right after the execute request (before, during and
/// after the spawn) to well into the run: within a few seconds no process of the execution is
/// left, with no restart at all. The CLI starts a grandchild, so the whole group must go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_at_any_instant_leaves_no_process_behind() {
    let mut survivors = Vec::new();
    // Instants in milliseconds after the request was sent; 0–30 ms lands before or during the
    // spawn on this machine, the rest while the CLI and its grandchild run.
    for (round, delay_ms) in [0u64, 5, 10, 20, 35, 60, 100, 150].into_iter().enumerate() {
        let w = World::new();
        let mut b = w.start();
        w.register(&b, "a", "claude-code", json!({})).await;
        let url = format!("{}/agents/a/execute", b.base);
        let client = reqwest::Client::new();
        let request = tokio::spawn(async move {
            let _ = client
                .post(url)
                .json(&json!({"prompt": "fake:child fake:sleep=30"}))
                .send()
                .await;
        });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        b.kill9();
        let _ = request.await;
        let clean = eventually(Duration::from_secs(5), || {
            agent_processes(&w, &b).is_empty()
        })
        .await;
        if !clean {
            let left = agent_processes(&w, &b);
            kill_all(&left);
            survivors.push((round, delay_ms, left));
        }
    }
    assert!(
        survivors.is_empty(),
        "processes outlived a killed broker by 5 s (round, delay ms, pids): {survivors:?}"
    );
}

/// The group's leader (the CLI), its spawner and the broker all die, leaving the CLI's
/// grandchild in a group whose leader is gone. The next broker kills it at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_kills_a_group_whose_leader_is_gone() {
    let w = World::new();
    let mut b = w.start();
    w.register(&b, "a", "claude-code", json!({})).await;
    let url = format!("{}/agents/a/execute", b.base);
    let client = reqwest::Client::new();
    let request = tokio::spawn(async move {
        let _ = client
            .post(url)
            .json(&json!({"prompt": "fake:child fake:sleep=60"}))
            .send()
            .await;
    });
    // Wait until the execution's pid is stored: that is what recovery works from.
    let mut leader = None;
    for _ in 0..200 {
        let (_, v) = b.get("/agents/processes/status").await;
        if let Some(pid) = v[0]["pid"].as_i64() {
            leader = Some(pid as i32);
        }
        if leader.is_some() && agent_processes(&w, &b).len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader = leader.expect("the execution's process is listed");
    // The spawner and the leader, with the broker, before the rest can notice anything.
    let spawner = watchdog_pid(&b, 1).await;
    kill_supervisor_and_broker(&mut b, &[spawner, leader]);
    let _ = request.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = agent_processes(&w, &b);
    assert!(
        !left.is_empty(),
        "the scenario needs members of the group to outlive their leader"
    );
    let b2 = w.start();
    assert_none_left(
        &w,
        &b2,
        Duration::from_secs(5),
        "recovery left the group's members alive",
    )
    .await;
    let (_, all) = b2.get("/api/metrics/events?limit=50").await;
    assert!(
        !events(&b2, "type=PROCESS_ORPHAN_KILLED", 1)
            .await
            .is_empty(),
        "no PROCESS_ORPHAN_KILLED event; events: {all}\nlog: {}",
        b2.log_text()
    );
    let (status, v) = b2.get("/agents/processes/status").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v.as_array().map(Vec::len), Some(0), "{v}");
}

/// The lease guard of cluster mode whose broker was SIGKILLed: its stderr pipe has no reader.
/// It must still kill its CLI when the heartbeats stop (it used to panic on the write and exit,
/// leaving the CLI running).
#[test]
fn the_lease_guard_kills_its_cli_even_when_its_stderr_is_closed() {
    use std::os::unix::process::CommandExt;
    let mut guard = Command::new(bin_dir().join("kokino-broker"))
        .args(["--kokino-lease-guard", "1000", "--", "sleep", "30"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = guard.id() as i32;
    std::thread::sleep(Duration::from_millis(300));
    drop(guard.stderr.take());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let group_alive = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                return false;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let mut f = rest.split_whitespace();
            let state = f.next().unwrap_or("");
            let pgrp = f.nth(1).and_then(|p| p.parse::<i32>().ok());
            state != "Z" && pgrp == Some(pgid) && pid != pgid
        })
    };
    while group_alive() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let alive = group_alive();
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let status = guard.wait().unwrap();
    assert!(
        !alive,
        "sleep outlived its guard's deadline (guard exit: {status:?})"
    );
    assert_ne!(status.code(), Some(101), "the guard panicked");
}

/// A tmux-mode run whose broker is killed with SIGKILL: the tmux server is not the broker's
/// child and lives on, but the CLI in its pane runs under a supervisor that watches the broker,
/// so within a few seconds no process of the execution is left (the CLI and its grandchild).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_during_a_tmux_run_leaves_no_cli_behind() {
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
    let url = format!("{}/agents/t/execute", b.base);
    let client = reqwest::Client::new();
    let request = tokio::spawn(async move {
        let _ = client
            .post(url)
            .json(&json!({"prompt": "fake:child fake:sleep=60"}))
            .send()
            .await;
    });
    // Wait until the CLI and its grandchild run in the pane (both carry the world's witness
    // variable, and so does the supervisor between them).
    let running = eventually(Duration::from_secs(20), || {
        agent_processes(&w, &b).len() >= 2
    })
    .await;
    assert!(
        running,
        "the tmux run never started its grandchild: {:?}\n{}",
        agent_processes(&w, &b),
        b.log_text()
    );
    b.kill9();
    let _ = request.await;
    let clean = eventually(Duration::from_secs(5), || {
        agent_processes(&w, &b).is_empty()
    })
    .await;
    let left = agent_processes(&w, &b);
    kill_all(&left);
    // The orphaned tmux server itself is no process of the execution; stop it here (the next
    // broker would).
    let _ = Command::new("tmux")
        .arg("-S")
        .arg(w.data_dir().join("tmux").join("tmux.sock"))
        .arg("kill-server")
        .status();
    assert!(
        clean,
        "processes of the tmux run outlived the broker by 5 s: {left:?}"
    );
}
