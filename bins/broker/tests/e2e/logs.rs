//! Logs fit their destination: a broker whose stderr is a file (a log file, journald) writes no
//! terminal colour codes there, in either format.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

/// Starts the broker with stderr going straight to a file, makes it log a request and a shutdown,
/// and returns the file's bytes.
async fn broker_log(w: &World, format: &str) -> Vec<u8> {
    let port = free_port();
    let log = w.path().join(format!("stderr-{format}.log"));
    let child = Command::new(bin_dir().join("kokino-broker"))
        .arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(w.path().join(format!("data-{format}")))
        .args(["--log-format", format])
        .env_remove("KOKINO_CONFIG")
        .env_remove("KOKINO_TOKEN_FILE")
        .env_remove("NO_COLOR")
        .env("KOKINO_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start kokino-broker");
    let mut b = Broker {
        child: Some(child),
        base: format!("http://127.0.0.1:{port}"),
        log: log.clone(),
        client: reqwest::Client::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while b
        .client
        .get(format!("{}/health", b.base))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "broker did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An unknown agent: a request that is logged without running anything.
    let (status, _) = b.get("/agents/nobody").await;
    assert_eq!(status, 404);
    assert!(b.stop().success());
    std::fs::read(&log).unwrap()
}

#[tokio::test]
async fn a_log_file_gets_no_ansi_escape_codes() {
    let w = World::new();

    let human = broker_log(&w, "human").await;
    let text = String::from_utf8_lossy(&human);
    assert!(text.contains("INFO"), "the human log has entries: {text}");
    assert!(
        !human.contains(&0x1b),
        "the human log written to a file contains ESC bytes: {:?}",
        text.chars().take(300).collect::<String>()
    );

    // The JSON format is unchanged: one object per line, and no escape codes either.
    let json = broker_log(&w, "json").await;
    assert!(!json.contains(&0x1b), "the JSON log contains ESC bytes");
    let text = String::from_utf8(json).unwrap();
    assert!(!text.trim().is_empty(), "the JSON log has entries");
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
}
