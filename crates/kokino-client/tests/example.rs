//! Runs the `drive_agent` example against a real broker with the fake agent as the CLI, and a
//! few client calls the example does not make (token, request id, typed errors).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// A workspace binary, built once on demand when only this package's tests were built.
fn workspace_bin(package: &str, name: &str) -> PathBuf {
    static LOCK: OnceLock<std::sync::Mutex<()>> = OnceLock::new();
    let _one = LOCK
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let path = target_dir().join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", package])
            .status()
            .expect("cargo build");
        assert!(status.success(), "could not build {package}");
    }
    path
}

struct Broker {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
    fake: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker(token: Option<&str>) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("claude");
    std::os::unix::fs::symlink(
        workspace_bin("kokino-fake-agent", "kokino-fake-agent"),
        &fake,
    )
    .unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(workspace_bin("kokino-broker", "kokino-broker"));
    cmd.arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--allow-binary")
        .arg(&fake)
        .env_remove("KOKINO_CONFIG")
        .env_remove("KOKINO_TOKEN_FILE")
        .env_remove("KOKINO_DATABASE_URL")
        .env("KOKINO_FAKE_STATE", dir.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(t) = token {
        let file = dir.path().join("token");
        std::fs::write(&file, t).unwrap();
        cmd.arg("--token-file").arg(&file);
    }
    let child = cmd.spawn().expect("start kokino-broker");
    let broker = Broker {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
        fake,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let request = format!(
                "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            );
            let _ = s.write_all(request.as_bytes());
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                return broker;
            }
        }
        assert!(Instant::now() < deadline, "the broker did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_drive_agent_example_runs_against_a_real_broker() {
    let broker = start_broker(None);
    let example = target_dir().join("examples/drive_agent");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "-p",
            "kokino-client",
            "--example",
            "drive_agent",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let out = Command::new(example)
        .arg(&broker.url)
        .arg(&broker.fake)
        .env("KOKINO_FAKE_STATE", broker._dir.path().join("state"))
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("registered example (claude-code)"),
        "{stdout}"
    );
    assert!(stdout.contains("answer: "), "{stdout}");
    assert!(stdout.contains("event: started"), "{stdout}");
    assert!(stdout.contains("streamed answer: "), "{stdout}");
    assert!(stdout.contains("has 4 turns"), "{stdout}");
    assert!(stdout.contains("typed error: HTTP 404"), "{stdout}");
}

#[tokio::test]
async fn token_request_id_and_typed_errors() {
    use kokino_client::{Client, ErrorCode, ExecuteRequest, RegisterRequest};
    let broker = start_broker(Some("s3cret"));
    let anonymous = Client::new(&broker.url).unwrap();
    // The health check and the document are public; everything else needs the token.
    assert_eq!(anonymous.health().await.unwrap().status, "ok");
    let (status, doc) = anonymous.get_json("/openapi.json", &[]).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let err = anonymous.agents().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized));
    assert_eq!(err.status(), Some(401));

    let client = Client::new(&broker.url)
        .unwrap()
        .with_token("s3cret")
        .with_request_id("req-42");
    assert!(client.agents().await.unwrap().is_empty());
    let err = client
        .register(&RegisterRequest {
            agent_id: "bad id".into(),
            cli_type: "claude-code".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest));
    let Err(kokino_client::Error::Api { body, .. }) = client
        .execute(
            "ghost",
            &ExecuteRequest {
                prompt: "x".into(),
                ..Default::default()
            },
        )
        .await
    else {
        panic!("expected an API error");
    };
    assert_eq!(body.code, ErrorCode::AgentNotFound);
    assert_eq!(body.details["agentId"], "ghost");
    // The request id reaches the broker's events.
    client
        .register(&RegisterRequest {
            agent_id: "a1".into(),
            cli_type: "claude-code".into(),
            binary: Some(broker.fake.display().to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    let answer = client
        .execute(
            "a1",
            &ExecuteRequest {
                prompt: "hi".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(answer.success);

    // What goes on the wire: a listener in place of the broker sees both headers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
            head.push(byte[0]);
        }
        let body = r#"{"error":"nope","code":"SHUTTING_DOWN","details":{}}"#;
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 7\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(answer.as_bytes()).unwrap();
        String::from_utf8_lossy(&head).to_lowercase()
    });
    let spy = Client::new(&format!("http://{addr}"))
        .unwrap()
        .with_token("s3cret")
        .with_request_id("req-42");
    let err = spy.agents().await.unwrap_err();
    let head = seen.join().unwrap();
    assert!(head.contains("x-request-id: req-42"), "{head}");
    assert!(head.contains("authorization: bearer s3cret"), "{head}");
    assert_eq!(err.code(), Some(ErrorCode::ShuttingDown));
    let kokino_client::Error::Api { retry_after, .. } = err else {
        panic!("expected an API error")
    };
    assert_eq!(retry_after, Some(Duration::from_secs(7)));
}
