//! tmux mode through the broker: real tmux (a server private to the broker's data directory),
//! the fake agent's interactive mode.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

fn home(w: &World) -> String {
    let h = w.path().join("home");
    std::fs::create_dir_all(&h).unwrap();
    h.display().to_string()
}

#[tokio::test]
async fn every_cli_type_answers_through_tmux_and_keeps_its_session() {
    require_tmux();
    let w = World::new();
    let b = w.start();
    for (cli_type, name) in TYPES {
        let agent = format!("tmux-{name}");
        w.register(
            &b,
            &agent,
            cli_type,
            json!({"commMode": "tmux", "env": {"HOME": home(&w)}}),
        )
        .await;
        let (s, first) = b.execute(&agent, "hello from tmux").await;
        assert_eq!(s, 200, "{cli_type}: {first}\n{}", b.log_text());
        assert_eq!(first["content"], "echo: hello from tmux", "{cli_type}");
        assert_eq!(first["mode"], "tmux");
        let (s, second) = b.execute(&agent, "second turn").await;
        assert_eq!(s, 200, "{cli_type}: {second}");
        assert_eq!(second["content"], "echo: second turn");
        if cli_type == "claude-code" {
            assert!(first["sessionId"].is_string());
            assert_eq!(first["sessionId"], second["sessionId"]);
        }
        let (_, conv) = b.get(&format!("/agents/{agent}/conversation")).await;
        assert_eq!(conv["turns"].as_array().unwrap().len(), 4);
    }
    // One tmux session per agent, on the broker's own socket.
    let socket = w.data_dir().join("tmux").join("tmux.sock");
    let out = std::process::Command::new("tmux")
        .arg("-S")
        .arg(&socket)
        .args(["list-sessions", "-F", "#{session_name}"])
        .output()
        .unwrap();
    let sessions = String::from_utf8_lossy(&out.stdout);
    assert_eq!(sessions.lines().count(), 4, "{sessions}");
}

#[tokio::test]
async fn tmux_runs_time_out_cancel_and_end_like_headless_ones() {
    require_tmux();
    let w = World::new();
    let cfg = w.path().join("k.toml");
    std::fs::write(&cfg, "[limits]\nkill_grace_ms = 500\n").unwrap();
    let b = w.start_with(&["--config", &cfg.display().to_string()], &[]);
    w.register(
        &b,
        "t",
        "codex",
        json!({"commMode": "tmux", "env": {"HOME": home(&w)}}),
    )
    .await;
    let (s, body) = b
        .post(
            "/agents/t/execute",
            json!({"prompt": "fake:hang", "timeoutMs": 1500}),
        )
        .await;
    assert_eq!(s, 504, "{body}");
    let run = {
        let client = b.client.clone();
        let url = format!("{}/agents/t/execute", b.base);
        tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"prompt": "fake:sleep=30 long"}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    let mut cancelled = Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, c) = b.post("/agents/t/execute/cancel", json!({})).await;
        if c["cancelled"] == true {
            cancelled = c;
            break;
        }
    }
    assert_eq!(cancelled["cancelled"], true);
    let (s, body) = run.await.unwrap();
    assert_eq!(s, 409, "{body}");
    let (s, body) = b.execute("t", "after cancel").await;
    assert_eq!(s, 200, "{body}");
    let (s, ended) = b.post("/agents/t/end-session", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(ended["ended"], true);
    let mut b = b;
    tokio::task::spawn_blocking(move || {
        b.stop();
    })
    .await
    .unwrap();
    assert!(
        agent_processes_of_world(&w).is_empty(),
        "no CLI survives the broker"
    );
}

#[tokio::test]
async fn a_tmux_agent_without_tmux_gets_a_clear_503() {
    let w = World::new();
    // A PATH without tmux: only the fake agents.
    let b = w.start_with(
        &[],
        &[("PATH", &format!("{}", w.path().join("bin").display()))],
    );
    w.register(&b, "no-tmux", "codex", json!({"commMode": "tmux"}))
        .await;
    let (s, body) = b.execute("no-tmux", "hi").await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["code"], "NO_EXECUTION_MODE");
    assert!(body["error"].as_str().unwrap().contains("tmux"));
}

/// Processes of this world once the broker is gone (no broker pid to exclude).
fn agent_processes_of_world(w: &World) -> Vec<i32> {
    let needle = format!("KOKINO_FAKE_LOG={}", w.witness().display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                == Some("Z");
            !zombie && env.split(|b| *b == 0).any(|v| v == needle.as_bytes())
        })
        .collect()
}

/// Many tmux agents at once (issue 12, item 9): sessions start and end concurrently on one tmux
/// server, and no run may fail because the server exited when its last session closed while
/// another run was starting. 16 agents × 4 executions, each agent's session ended after every
/// second turn so that sessions keep starting and closing; every answer must be a 200. The
/// long version (1,000 executions) is `cargo xtask chaos --tmux`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_tmux_agents_at_once_get_no_spurious_failure() {
    require_tmux();
    let w = World::new();
    let b = w.start();
    let agents: Vec<String> = (0..16).map(|i| format!("many-{i}")).collect();
    for (i, agent) in agents.iter().enumerate() {
        let (cli_type, _) = TYPES[i % TYPES.len()];
        w.register(
            &b,
            agent,
            cli_type,
            json!({"commMode": "tmux", "env": {"HOME": home(&w)}}),
        )
        .await;
    }
    let mut tasks = Vec::new();
    for agent in agents {
        let (client, base) = (b.client.clone(), b.base.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for turn in 0..4 {
                let r = client
                    .post(format!("{base}/agents/{agent}/execute"))
                    .json(&json!({"prompt": format!("turn {turn} of {agent}")}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                if status != 200 || body["content"] != format!("echo: turn {turn} of {agent}") {
                    failures.push(format!("{agent} turn {turn}: {status} {body}"));
                }
                if turn % 2 == 1 {
                    let r = client
                        .post(format!("{base}/agents/{agent}/end-session"))
                        .json(&json!({}))
                        .send()
                        .await
                        .unwrap();
                    if r.status() != 200 {
                        failures.push(format!("{agent} end-session: {}", r.status()));
                    }
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} of 64 executions failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        b.log_text()
    );
}

/// The pane's program is the supervisor, which ends the way the CLI ended: the CLI's exit
/// status still reaches the executor and the answer.
#[tokio::test]
async fn a_tmux_cli_exit_status_passes_through_its_supervisor() {
    require_tmux();
    let w = World::new();
    let b = w.start();
    w.register(
        &b,
        "x",
        "codex",
        json!({"commMode": "tmux", "env": {"HOME": home(&w)}}),
    )
    .await;
    let (s, body) = b.execute("x", "fake:exit=3 bye").await;
    assert_eq!(s, 502, "{body}");
    assert_eq!(body["details"]["exitCode"], 3, "{body}");
    // The session was cleared after the exit; the next run starts a new one.
    let (s, ok) = b.execute("x", "again").await;
    assert_eq!(s, 200, "{ok}");
}
