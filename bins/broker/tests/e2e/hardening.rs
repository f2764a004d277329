//! What a hostile client, a hostile web page or another local user can do to a real broker
//! process: private files, the execution policy, cross-site requests, slow and idle connections.


use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn the_data_directory_and_database_files_are_private() {
    let w = World::new();
    // An existing, world-readable data directory is narrowed too.
    std::fs::create_dir_all(w.data_dir()).unwrap();
    std::fs::set_permissions(w.data_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let b = w.start();
    w.register(
        &b,
        "p",
        "codex",
        json!({"env": {"OPENAI_API_KEY": "sk-secret"}}),
    )
    .await;
    let (s, v) = b.execute("p", "hello").await;
    assert_eq!(s, 200, "{v}");
    let dir = w.data_dir();
    assert_eq!(mode(&dir), 0o700, "data directory");
    for file in ["kokino.db", "kokino.db-wal", "kokino.db-shm"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
}

#[tokio::test]
async fn a_config_declared_agent_obeys_the_same_policy() {
    let w = World::new();
    let cfg = w.path().join("kokino.toml");
    std::fs::write(
        &cfg,
        "[[agents]]\nagentId = \"sh\"\ntype = \"codex\"\nbinary = \"/bin/sh\"\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(bin_dir().join("kokino-broker"))
        .args(["--bind", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(w.data_dir())
        .arg("--config")
        .arg(&cfg)
        .env_remove("KOKINO_ALLOW_BINARY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A broker that accepted the agent would run on: give it a few seconds, then stop it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/bin/sh") && err.contains("not allowed"),
        "{err}"
    );
}

#[tokio::test]
async fn a_web_page_cannot_register_a_shell() {
    let w = World::new();
    let b = w.start();
    let port = b.base.rsplit(':').next().unwrap().to_owned();
    // The page's request as the browser sends it: form body, foreign Origin.
    let r = b
        .client
        .post(format!("{}/agents/register", b.base))
        .header("origin", "http://evil.example")
        .header("content-type", "text/plain")
        .body(json!({"agentId": "x", "type": "codex", "binary": "/bin/sh", "cwd": "/"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // DNS rebinding: same socket, the attacker's name in Host.
    let r = b
        .client
        .get(format!("{}/agents", b.base))
        .header("host", format!("evil.example:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Even without the browser checks, the shell is not the operator's choice.
    let (s, v) = b
        .post(
            "/agents/register",
            json!({"agentId": "x", "type": "codex", "binary": "/bin/sh", "cwd": "/"}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["details"]["field"], "binary");
    let (s, v) = b
        .post(
            "/agents/register",
            json!({"agentId": "x", "type": "codex", "env": {"LD_PRELOAD": "/tmp/x.so"}}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["details"]["field"], "env");
    let (_, agents) = b.get("/agents").await;
    assert_eq!(agents, json!([]));
}

/// Reads until the server closes the connection; returns how long that took, or `None` if it
/// was still open after `limit`.
fn time_to_close(mut s: TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

#[tokio::test]
async fn half_sent_and_idle_connections_are_closed() {
    let w = World::new();
    let b = w.start_with(
        &[
            "--header-read-timeout-ms",
            "300",
            "--idle-timeout-ms",
            "600",
        ],
        &[],
    );
    let addr = b.base.trim_start_matches("http://").to_owned();
    // Half a request head: the headers never end.
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ").as_bytes())
        .unwrap();
    let closed = time_to_close(half, Duration::from_secs(5));
    assert!(
        closed.is_some_and(|d| d < Duration::from_secs(3)),
        "{closed:?}"
    );
    // A connection that says nothing at all.
    let silent = TcpStream::connect(&addr).unwrap();
    let closed = time_to_close(silent, Duration::from_secs(5));
    assert!(
        closed.is_some_and(|d| d < Duration::from_secs(3)),
        "{closed:?}"
    );
    // An idle keep-alive connection after a complete request.
    let mut kept = TcpStream::connect(&addr).unwrap();
    kept.write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let closed = time_to_close(kept, Duration::from_secs(5));
    assert!(
        closed.is_some_and(|d| d < Duration::from_secs(3)),
        "{closed:?}"
    );
    // The broker serves on.
    let (s, _) = b.get("/health").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn idle_connections_beyond_the_limit_do_not_break_executions() {
    let w = World::new();
    // Long timeouts: only the connection limit (and its eviction of idle connections) is at work.
    let b = w.start_with(
        &[
            "--max-connections",
            "8",
            "--idle-timeout-ms",
            "60000",
            "--header-read-timeout-ms",
            "60000",
        ],
        &[],
    );
    w.register(&b, "busy", "codex", json!({})).await;
    w.register(&b, "later", "claude-code", json!({})).await;
    let addr = b.base.trim_start_matches("http://").to_owned();
    let running = {
        let client = b.client.clone();
        let url = format!("{}/agents/busy/execute", b.base);
        tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"prompt": "fake:sleep=2 slow one"}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Five times the limit of connections that say nothing.
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A new client still gets through, well before any idle timeout.
    let started = Instant::now();
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/agents/later/execute", b.base))
        .json(&json!({"prompt": "fresh"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let (status, body) = running.await.unwrap();
    assert_eq!(status, 200, "the running execution was not harmed: {body}");
    assert!(body.contains("slow one"), "{body}");
    drop(idle);
    let (s, _) = b.get("/health").await;
    assert_eq!(s, 200);
}
