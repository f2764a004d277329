//! The `kokino-doctor` binary as an operator and a CI job run it: exit codes, both formats,
//! the broker's config file, and `--url` against the real broker and against a stub that
//! answers with problems.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// A workspace binary, built once on demand when only this package's tests were built.
fn workspace_bin(package: &'static str, name: &'static str) -> PathBuf {
    static LOCK: OnceLock<std::sync::Mutex<()>> = OnceLock::new();
    let _one_build_at_a_time = LOCK
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

struct World {
    dir: tempfile::TempDir,
}

impl World {
    /// `bin/` with the fake agent under the names in `clis`, a HOME and a data dir.
    fn new(clis: &[&str]) -> World {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["bin", "home", "data", "state"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let fake = workspace_bin("kokino-fake-agent", "kokino-fake-agent");
        for name in clis {
            std::os::unix::fs::symlink(&fake, dir.path().join("bin").join(name)).unwrap();
        }
        World { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The doctor with a controlled environment: only what a broker's service unit would set.
    fn doctor(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kokino-doctor"));
        cmd.env_clear()
            .env("HOME", self.path().join("home"))
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", self.path().join("bin").display()),
            )
            .env("KOKINO_FAKE_STATE", self.path().join("state"))
            .arg("--data-dir")
            .arg(self.path().join("data"))
            // The host's disk may really be nearly full; these tests are not about that.
            .args(["--disk-warn-pct", "100", "--disk-fail-pct", "100"])
            .args(args)
            .stdin(Stdio::null());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.output().expect("run kokino-doctor")
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn exit_0_when_the_cli_is_installed_and_logged_in() {
    let w = World::new(&["claude", "codex"]);
    let o = w.doctor(&["--cli", "claude-code"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for check in ["binary", "environment", "auth", "disk", "dryrun"] {
        assert!(out.contains(&format!("  ✓ {check}")), "{}", text(&o));
    }
    assert!(out.contains("2.1.197 (Claude Code)"));
    assert!(out.contains("OK: 1 of 1 CLI type(s) passed"));
}

#[test]
fn exit_1_with_a_missing_binary_and_the_install_hint_in_the_output() {
    let w = World::new(&["claude"]);
    let o = w.doctor(&["--cli", "codex"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("✗ binary"), "{}", text(&o));
    assert!(out.contains("npm install -g @openai/codex"));
    assert!(out.contains("FAILED"));
    assert!(out.contains("a hard fact"), "{}", text(&o));
}

#[test]
fn exit_1_when_logged_out_and_warnings_only_fail_with_strict() {
    let w = World::new(&["claude"]);
    let o = w.doctor(&["--cli", "claude"], &[("KOKINO_FAKE_LOGGED_OUT", "1")]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("/login"));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("a hard fact"));

    let key = [("ANTHROPIC_API_KEY", "sk-ant-never-printed")];
    let o = w.doctor(&["--cli", "claude-code"], &key);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("! environment"), "{}", text(&o));
    assert!(out.contains("ANTHROPIC_API_KEY is set in the broker environment"));
    assert!(!out.contains("sk-ant-never-printed"));
    let o = w.doctor(&["--cli", "claude-code", "--strict"], &key);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn exit_2_when_the_doctor_cannot_run() {
    let w = World::new(&[]);
    for args in [
        &["--url", "http://127.0.0.1:1"][..],
        &["--cli", "bogus"],
        &["--format", "xml"],
        &["--config", "/nonexistent/kokino.toml"],
        &["--url", "ftp://127.0.0.1:5050"],
    ] {
        let o = w.doctor(args, &[]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(!o.stderr.is_empty());
    }
    let o = w.doctor(&["--url", "http://127.0.0.1:1"], &[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot reach the broker"));
}

#[test]
fn json_output_has_the_environment_report_shape() {
    let w = World::new(&["claude", "codex", "gemini", "droid"]);
    let o = w.doctor(
        &["--format", "json"],
        &[("FACTORY_API_KEY", "fk"), ("KOKINO_FAKE_LOGGED_OUT", "1")],
    );
    // Claude and codex are logged out with no key in sight, so the whole run fails.
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("stdout is one JSON document");
    assert_eq!(v["overall"], false);
    assert!(v["checkedAt"].is_string());
    let results = v["results"].as_array().unwrap();
    let types: Vec<&str> = results
        .iter()
        .map(|r| r["cliType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["claude-code", "codex", "gemini", "factory-droid"]);
    for r in results {
        let names: Vec<&str> = r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["binary", "environment", "auth", "disk", "dryrun"]);
        assert!(r["passed"].is_boolean() && r["durationMs"].is_u64());
        assert!(r["warnings"].is_array() && r["checkedAt"].is_string());
    }
    assert_eq!(results[0]["passed"], false);
    assert_eq!(results[0]["version"], "2.1.197 (Claude Code)");
    // A failed check says how sure it is; a logged-out CLI is a soft verdict.
    assert_eq!(results[0]["checks"][2]["passed"], false);
    assert_eq!(results[0]["checks"][2]["certainty"], "soft");
    assert!(results[0]["checks"][0].get("certainty").is_none());
    // Gemini has no credentials in this world and no status command: a warning, not a failure.
    assert_eq!(results[2]["passed"], true);
    assert_eq!(results[2]["checks"][2]["passed"], true);
    assert!(results[2]["checks"][2]["warning"]
        .as_str()
        .unwrap()
        .contains("GEMINI_API_KEY"));
    assert_eq!(results[3]["passed"], true);
}

#[test]
fn the_broker_config_file_supplies_binaries_conflicting_vars_and_the_data_dir() {
    let w = World::new(&[]);
    let opt = w.path().join("opt");
    std::fs::create_dir_all(&opt).unwrap();
    let fake = workspace_bin("kokino-fake-agent", "kokino-fake-agent");
    std::os::unix::fs::symlink(&fake, opt.join("fake-codex")).unwrap();
    let config = w.path().join("kokino.toml");
    std::fs::write(
        &config,
        format!(
            "bind = \"127.0.0.1:5050\"\ndata_dir = \"{}\"\n\n[limits]\nexecution_timeout_ms = \
             1000\n\n[binaries]\ncodex = \"{}\"\n\n[conflicting_env]\ncodex = [\"OPENAI_API_KEY\"]\n",
            w.path().join("data-from-config").display(),
            opt.join("fake-codex").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kokino-doctor"));
    let o = cmd
        .env_clear()
        .env("HOME", w.path().join("home"))
        .env("PATH", "/usr/bin:/bin")
        .env("KOKINO_FAKE_STATE", w.path().join("state"))
        .env("OPENAI_API_KEY", "sk-openai")
        .args(["--cli", "codex", "--format", "json", "--config"])
        .arg(&config)
        .args(["--disk-warn-pct", "100", "--disk-fail-pct", "100"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = &v["results"][0];
    assert!(r["checks"][0]["message"]
        .as_str()
        .unwrap()
        .contains("fake-codex"));
    assert!(r["checks"][3]["message"]
        .as_str()
        .unwrap()
        .contains("data-from-config"));
    assert!(r["warnings"][0]
        .as_str()
        .unwrap()
        .contains("OPENAI_API_KEY is set in the broker environment and is removed for codex"));

    std::fs::write(&config, "[binaries]\nclaude = \"/x\"\n").unwrap();
    let o = w.doctor(&["--config", config.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("[binaries]"));
}

// ------------------------------------------------------------------------------ --url mode

struct Broker {
    child: Child,
    url: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_broker(w: &World) -> Broker {
    let bin = workspace_bin("kokino-broker", "kokino-broker");
    let port = free_port();
    let child = Command::new(bin)
        .arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(w.path().join("broker-data"))
        .env_remove("KOKINO_CONFIG")
        .env_remove("KOKINO_TOKEN_FILE")
        .env_remove("KOKINO_DATABASE_URL")
        // Credentials for the two CLIs checked by variables, so the broker's own doctor passes.
        .env("GEMINI_API_KEY", "test")
        .env("FACTORY_API_KEY", "test")
        .env(
            "PATH",
            format!(
                "{}:{}",
                w.path().join("bin").display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kokino-broker");
    let broker = Broker {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            // The broker answers only to its own address as `Host` (DNS-rebinding defence).
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
fn url_mode_against_the_real_broker_reports_every_part() {
    let w = World::new(&["claude", "codex", "gemini", "droid"]);
    let broker = start_broker(&w);
    let o = w.doctor(&["--url", &broker.url, "--format", "json"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["mode"], "broker");
    assert_eq!(v["passed"], true);
    let checks = v["checks"].as_array().unwrap();
    let by_name = |n: &str| checks.iter().find(|c| c["name"] == n).cloned().unwrap();
    assert_eq!(by_name("health")["status"], "ok");
    assert!(by_name("health")["message"]
        .as_str()
        .unwrap()
        .contains("store sqlite"));
    for name in [
        "environment",
        "sessions",
        "circuits",
        "fallback",
        "slo",
        "integrity",
        "shadow",
    ] {
        // The real broker serves every part; skipping what a broker lacks is tested against a
        // stub server above.
        let c = by_name(name);
        assert_eq!(c["status"], "ok", "{name}: {c}");
    }

    let o = w.doctor(&["--url", &broker.url], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("✓ health"), "{out}");
    assert!(out.contains("✓ integrity"), "{out}");
}

/// A stub broker: answers each path with a fixed status and JSON body, one request per
/// connection.
fn stub(routes: Vec<(&'static str, u16, Value)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            loop {
                let mut l = String::new();
                if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let (status, body) = routes
                .iter()
                .find(|(p, _, _)| *p == path)
                .map(|(_, s, b)| (*s, b.to_string()))
                .unwrap_or((
                    404,
                    json!({"error":"no such endpoint","code":"NOT_FOUND"}).to_string(),
                ));
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[test]
fn url_mode_reports_what_a_troubled_broker_says() {
    // Built first: it may wait for another test's `cargo build`, which must not age the lock.
    let w = World::new(&[]);
    let now = chrono_now_ms();
    let failing_env = json!({
        "cliType": "claude-code", "passed": false,
        "checks": [
            {"name":"binary","passed":true,"message":"claude found at /usr/bin/claude"},
            {"name":"environment","passed":true,"message":"ok"},
            {"name":"auth","passed":false,"message":"claude is not logged in; run `claude` and type `/login`"},
            {"name":"disk","passed":true,"message":"10% used","warning":"w"},
            {"name":"dryrun","passed":true,"message":"ok"}
        ],
        "warnings": ["w"], "checkedAt": "2025-01-24T10:00:00Z", "durationMs": 40
    });
    let url = stub(vec![
        (
            "/health",
            200,
            json!({"status":"ok","version":"0.1.0","uptimeSeconds":5,"agents":2,"executing":1,"store":"sqlite","instanceId":"i"}),
        ),
        ("/api/health/environment?cli=claude-code", 503, failing_env),
        (
            "/agents/sessions/status",
            200,
            json!([{"agentId":"stuck-agent","locked":true,"executing":true,"executionStartedAt": now - 10 * 60_000}]),
        ),
        (
            "/agents/circuits/status",
            200,
            json!({"circuits":[{"scope":"agent","key":"stuck-agent","agentId":"stuck-agent","state":"open","consecutiveFailures":5,"lastFailureReason":"auth_error"}]}),
        ),
        (
            "/api/integrity/check",
            503,
            json!({"passed":false,"checkedAt":"t","durationMs":1,"totalConversations":4,"totalTurns":8,"orphanedTurns":2,"conversationsWithIssues":1,"issues":[]}),
        ),
    ]);
    let o = w.doctor(&["--url", &url, "--cli", "claude-code"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("✓ health"), "{out}");
    assert!(out.contains("✗ environment"), "{out}");
    assert!(
        out.contains("✗ auth          claude is not logged in"),
        "{out}"
    );
    assert!(out.contains("! sessions"), "{out}");
    assert!(out.contains("stuck-agent (10 min)"), "{out}");
    assert!(out.contains("/agents/<id>/execute/cancel"), "{out}");
    assert!(out.contains("✗ circuits"), "{out}");
    assert!(out.contains("✗ integrity"), "{out}");
    assert!(out.contains("- fallback"), "{out}");
    assert!(out.contains("- slo"), "{out}");
    assert!(out.contains("- shadow"), "{out}");

    let o = w.doctor(
        &["--url", &url, "--cli", "claude-code", "--format", "json"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["passed"], false);
    assert_eq!(v["environment"]["overall"], false);
    assert_eq!(v["environment"]["results"][0]["cliType"], "claude-code");
    let env = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "environment")
        .unwrap();
    assert_eq!(env["status"], "fail");
    assert_eq!(env["httpStatus"], 503);
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_hanging_cli_is_bounded_by_timeout_ms() {
    let w = World::new(&[]);
    let p = w.path().join("bin/gemini");
    std::fs::write(&p, "#!/bin/sh\nsleep 100\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    let started = Instant::now();
    let o = w.doctor(
        &["--cli", "gemini", "--timeout-ms", "300"],
        &[("GEMINI_API_KEY", "k")],
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("timed out after 300 ms"));
}
