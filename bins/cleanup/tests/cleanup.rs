//! The `kokino-cleanup` binary as an operator or a cron job runs it: on a real SQLite store in a
//! temp directory, on real log files written by `kokino-logs`, and through `--url` against a
//! real `kokino-broker` running the fake agent.
//!
//! The store stamps every write with the current time, so a "stale" session or an "old" event
//! is made by rewriting its timestamp with sqlx afterwards; old rotated logs get an old mtime
//! with `File::set_modified`.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use chrono::{SecondsFormat, Utc};
use kokino_core::{
    AgentId, AgentSpec, CliType, CommMode, LineSink, NewExecution, OutcomeClass, OutputStream, Role,
};
use kokino_logs::AgentLogs;
use kokino_store::{EventFilter, FinishExecution, NewEvent, NewTurn, Store};
use serde_json::{json, Value};

// ------------------------------------------------------------------------------------ helpers

struct World {
    dir: tempfile::TempDir,
    store: Store,
}

impl World {
    /// A data directory with a real, migrated store in it.
    async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&db_url(&dir.path().join("data")))
            .await
            .unwrap();
        World { dir, store }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn logs(&self) -> AgentLogs {
        AgentLogs::new(
            self.data().join("logs"),
            AgentLogs::DEFAULT_MAX_BYTES,
            AgentLogs::DEFAULT_RETENTION,
        )
    }

    /// An agent with a session; returns the session's conversation id.
    async fn agent_with_session(&self, name: &str) -> String {
        let spec: AgentSpec = serde_json::from_value(json!({
            "agentId": name, "type": "codex", "commMode": "headless", "cwd": "/tmp",
        }))
        .unwrap();
        self.store.upsert_agent(&spec).await.unwrap();
        self.store
            .create_session(&id(name), CliType::Codex, None)
            .await
            .unwrap()
            .conversation_id
    }

    /// Moves the agent's last activity `hours` into the past.
    async fn age_session(&self, name: &str, hours: i64) {
        let at = Utc::now() - chrono::Duration::hours(hours);
        sqlx::query("UPDATE sessions SET last_activity_at = ? WHERE agent_id = ?")
            .bind(at.to_rfc3339_opts(SecondsFormat::Millis, true))
            .bind(name)
            .execute(&self.pool().await)
            .await
            .unwrap();
    }

    async fn pool(&self) -> sqlx::SqlitePool {
        sqlx::SqlitePool::connect(&db_url(&self.data()))
            .await
            .unwrap()
    }

    async fn has_session(&self, name: &str) -> bool {
        self.store.get_session(&id(name)).await.unwrap().is_some()
    }

    /// Runs the binary with `--data-dir` and no stdin, in an environment without `KOKINO_*`.
    fn cleanup(&self, args: &[&str]) -> Output {
        let data = self.data();
        let mut all = vec!["--data-dir", data.to_str().unwrap()];
        all.extend_from_slice(args);
        run_cleanup(&all)
    }
}

fn db_url(data: &Path) -> String {
    format!("sqlite://{}", data.join("kokino.db").display())
}

fn id(s: &str) -> AgentId {
    AgentId::parse(s).unwrap()
}

fn run_cleanup(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kokino-cleanup"))
        .args(args)
        .env_remove("KOKINO_CONFIG")
        .env_remove("KOKINO_DATA_DIR")
        .env_remove("KOKINO_DATABASE_URL")
        .env_remove("KOKINO_TOKEN_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("run kokino-cleanup")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn both(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

fn event(kind: &str) -> NewEvent {
    NewEvent {
        event_type: kind.into(),
        agent_id: None,
        cli_type: None,
        duration_ms: None,
        success: None,
        metadata: Value::Null,
    }
}

/// Inserts `old` events dated ten days ago and `recent` events dated now.
async fn events(w: &World, old: usize, recent: usize) {
    let ten_days_ago =
        (Utc::now() - chrono::Duration::days(10)).to_rfc3339_opts(SecondsFormat::Millis, true);
    let pool = w.pool().await;
    for _ in 0..old {
        let id = w.store.insert_event(&event("OLD_EVENT")).await.unwrap();
        sqlx::query("UPDATE events SET at = ? WHERE id = ?")
            .bind(&ten_days_ago)
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
    }
    for _ in 0..recent {
        w.store.insert_event(&event("RECENT_EVENT")).await.unwrap();
    }
}

async fn event_types(w: &World) -> Vec<String> {
    let mut types: Vec<String> = w
        .store
        .list_events(&EventFilter {
            limit: 1000,
            ..EventFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    types.sort();
    types
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits (bounded) until no rotated log is still being compressed.
fn wait_compressed(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while files_in(dir)
        .iter()
        .any(|n| n.contains(".log.") && !n.ends_with(".gz"))
    {
        assert!(Instant::now() < deadline, "compression did not finish");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A log for `agent` with one line, plus an old rotated (compressed) log from 30 days ago.
fn old_and_current_logs(w: &World, agent: &str) -> PathBuf {
    let logs = w.logs();
    logs.writer(&id(agent))
        .line(OutputStream::Stdout, "an old line");
    let rotated = logs.rotate_all(true).unwrap().rotated;
    assert_eq!(rotated.len(), 1);
    wait_compressed(logs.dir());
    let old = PathBuf::from(&rotated[0]);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(30 * 86_400))
        .unwrap();
    logs.writer(&id(agent))
        .line(OutputStream::Stdout, "a fresh line");
    old
}

fn gunzip(path: &Path) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text
}

// ------------------------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_says_what_it_would_do_and_changes_nothing() {
    let w = World::new().await;
    w.agent_with_session("stale1").await;
    w.agent_with_session("fresh1").await;
    w.age_session("stale1", 30).await;
    events(&w, 2, 1).await;
    let old_log = old_and_current_logs(&w, "stale1");
    let logs_before = files_in(&w.data().join("logs"));

    // No --yes and no terminal: a dry run needs neither.
    let o = w.cleanup(&["--dry-run", "--logs", "--metrics-days", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let out = stdout(&o);
    assert!(
        out.contains("would end session  agent=stale1 idle=30h0m conversation="),
        "{out}"
    );
    assert!(
        !out.contains("agent=fresh1"),
        "a fresh session is not listed: {out}"
    );
    assert!(
        out.contains("would delete 2 events older than 1 days"),
        "{out}"
    );
    assert!(out.contains("would rotate log  agent=stale1"), "{out}");
    assert!(
        out.contains(&format!("would delete old log  path={}", old_log.display())),
        "{out}"
    );
    assert!(
        out.contains(
            "dry run: would end 1 session, kept 1 recent, would delete 2 events, would rotate \
             1 log, would delete 1 old log file; nothing was changed"
        ),
        "{out}"
    );

    assert!(w.has_session("stale1").await);
    assert!(w.has_session("fresh1").await);
    assert_eq!(event_types(&w).await.len(), 3);
    assert_eq!(files_in(&w.data().join("logs")), logs_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn yes_ends_stale_sessions_keeps_fresh_ones_and_keeps_the_history() {
    let w = World::new().await;
    let conversation = w.agent_with_session("old-agent").await;
    w.agent_with_session("busy-day").await;
    // A finished exchange, so that there is history to keep.
    let exec = NewExecution {
        execution_id: "exec-1".into(),
        agent_id: id("old-agent"),
        conversation_id: conversation.clone(),
        cli_type: CliType::Codex,
        mode: CommMode::Headless,
        user_turn_id: "turn-1".into(),
        prompt: "hello".into(),
        turn_metadata: json!({}),
    };
    w.store.begin_execution(&exec).await.unwrap();
    w.store
        .finish_execution(&FinishExecution {
            execution_id: "exec-1".into(),
            outcome: OutcomeClass::Success,
            exit_code: Some(0),
            error_message: None,
            duration_ms: 5,
            usage: None,
            cost_usd: None,
            num_turns: None,
            peak_rss_mb: None,
            cli_session_id: Some("cli-abc".into()),
            turn: Some(NewTurn {
                turn_id: "turn-2".into(),
                role: Role::Assistant,
                content: "hi there".into(),
                metadata: json!({}),
            }),
        })
        .await
        .unwrap();
    w.age_session("old-agent", 48).await;

    let o = w.cleanup(&["--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&format!(
            "ended session  agent=old-agent idle=2d0h conversation={conversation}"
        )),
        "{out}"
    );
    assert!(
        !out.contains("would"),
        "--yes shows actions, not a plan: {out}"
    );
    assert!(out.contains("ended 1 session, kept 1 recent"), "{out}");

    assert!(!w.has_session("old-agent").await);
    assert!(w.has_session("busy-day").await);
    let (conv, turns) = w
        .store
        .get_conversation(&conversation)
        .await
        .unwrap()
        .expect("the conversation is kept");
    assert_eq!(conv.status, "ended");
    assert_eq!(turns.len(), 2, "the turns are kept");
    assert!(
        event_types(&w).await.contains(&"SESSION_ENDED".to_owned()),
        "the ended session is recorded like the broker records it"
    );

    // A second run finds nothing to do, and says so.
    let again = w.cleanup(&["--yes"]);
    assert_eq!(again.status.code(), Some(0), "{}", both(&again));
    assert!(stdout(&again).contains("nothing to do"), "{}", both(&again));
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_limits_the_cleanup_to_that_agent() {
    let w = World::new().await;
    w.agent_with_session("a1").await;
    w.agent_with_session("a2").await;

    let o = w.cleanup(&["--agent", "a2", "--max-age", "0s", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        stdout(&o).contains("ended session  agent=a2"),
        "{}",
        both(&o)
    );
    assert!(!stdout(&o).contains("agent=a1"), "{}", both(&o));
    assert!(w.has_session("a1").await);
    assert!(!w.has_session("a2").await);

    let bad = w.cleanup(&["--agent", "no/such agent", "--yes"]);
    assert_eq!(bad.status.code(), Some(2), "{}", both(&bad));
    assert!(stderr(&bad).contains("invalid agent id"), "{}", both(&bad));

    let ghost = w.cleanup(&["--agent", "ghost", "--max-age", "0s", "--yes"]);
    assert_eq!(ghost.status.code(), Some(1), "{}", both(&ghost));
    assert!(
        stderr(&ghost).contains("there is no agent ghost"),
        "{}",
        both(&ghost)
    );
    assert!(w.has_session("a1").await, "a typo ends nothing else");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_executing_agent_keeps_its_session() {
    let w = World::new().await;
    let conversation = w.agent_with_session("runner").await;
    w.store
        .begin_execution(&NewExecution {
            execution_id: "exec-running".into(),
            agent_id: id("runner"),
            conversation_id: conversation,
            cli_type: CliType::Codex,
            mode: CommMode::Headless,
            user_turn_id: "turn-1".into(),
            prompt: "long job".into(),
            turn_metadata: json!({}),
        })
        .await
        .unwrap();
    w.age_session("runner", 30).await;

    let o = w.cleanup(&["--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        stdout(&o).contains("skip session  agent=runner idle=30h0m"),
        "{}",
        both(&o)
    );
    assert!(stdout(&o).contains("reason=executing"), "{}", both(&o));
    assert!(stdout(&o).contains("skipped 1 executing"), "{}", both(&o));
    assert!(w.has_session("runner").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_terminal_and_without_yes_it_refuses() {
    let w = World::new().await;
    w.agent_with_session("a1").await;
    let o = w.cleanup(&["--max-age", "0s"]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(stderr(&o).contains("pass --yes"), "{}", both(&o));
    assert!(stdout(&o).is_empty(), "{}", both(&o));
    assert!(w.has_session("a1").await);
}

/// Runs the binary with a pseudo-terminal as stdin, typing `answer` into it.
fn cleanup_on_a_terminal(w: &World, args: &[&str], answer: &str) -> Output {
    use std::io::Write;
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors into the two out-parameters; the null
    // pointers ask for no name and default terminal settings.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let data = w.data();
    let child = Command::new(env!("CARGO_BIN_EXE_kokino-cleanup"))
        .arg("--data-dir")
        .arg(&data)
        .args(args)
        .env_remove("KOKINO_CONFIG")
        .env_remove("KOKINO_DATA_DIR")
        .env_remove("KOKINO_DATABASE_URL")
        .env_remove("KOKINO_TOKEN_FILE")
        .stdin(Stdio::from(slave))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The terminal buffers the line until the program reads it, so typing before the question
    // is asked is what a fast operator does anyway.
    std::fs::File::from(master)
        .write_all(format!("{answer}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_terminal_it_shows_the_plan_and_asks() {
    let w = World::new().await;
    w.agent_with_session("asked").await;
    w.age_session("asked", 30).await;

    let no = cleanup_on_a_terminal(&w, &[], "n");
    assert_eq!(no.status.code(), Some(1), "{}", both(&no));
    assert!(
        stdout(&no).contains("would end session  agent=asked"),
        "{}",
        both(&no)
    );
    assert!(
        stderr(&no).contains("would end 1 session. Proceed? [y/N]"),
        "{}",
        both(&no)
    );
    assert!(
        stdout(&no).contains("cancelled: nothing was changed"),
        "{}",
        both(&no)
    );
    assert!(w.has_session("asked").await);

    let yes = cleanup_on_a_terminal(&w, &[], "yes");
    assert_eq!(yes.status.code(), Some(0), "{}", both(&yes));
    assert!(
        stdout(&yes).contains("ended session  agent=asked"),
        "{}",
        both(&yes)
    );
    assert!(!w.has_session("asked").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_days_deletes_only_events_older_than_the_cutoff() {
    let w = World::new().await;
    events(&w, 3, 2).await;

    let zero = w.cleanup(&["--metrics-days", "0", "--yes"]);
    assert_eq!(zero.status.code(), Some(2), "{}", both(&zero));
    assert!(stderr(&zero).contains("at least 1"), "{}", both(&zero));

    let o = w.cleanup(&["--metrics-days", "1", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        stdout(&o).contains("deleted 3 events older than 1 days"),
        "{}",
        both(&o)
    );
    assert!(
        stdout(&o).contains("ended 0 sessions, deleted 3 events"),
        "{}",
        both(&o)
    );
    assert_eq!(event_types(&w).await, ["RECENT_EVENT", "RECENT_EVENT"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_are_rotated_now_and_old_rotations_pruned() {
    let w = World::new().await;
    let logs_dir = w.data().join("logs");
    let old = old_and_current_logs(&w, "writer");

    // The broker's config file: its retention keeps a 30-day-old file, and keys this tool does
    // not know (or the broker added later) are ignored.
    let config = w.dir.path().join("kokino.toml");
    std::fs::write(
        &config,
        format!(
            "bind = \"127.0.0.1:5050\"\nfuture_key = true\ndata_dir = {:?}\n\n\
             [limits]\nexecution_timeout_ms = 1000\n\n\
             [maintenance]\nlog_retention_days = 40\nstale_sweep_every_ms = 5\n",
            w.data().display().to_string()
        ),
    )
    .unwrap();
    let kept = run_cleanup(&["--config", config.to_str().unwrap(), "--logs", "--dry-run"]);
    assert_eq!(kept.status.code(), Some(0), "{}", both(&kept));
    assert!(
        !stdout(&kept).contains("would delete old log"),
        "{}",
        both(&kept)
    );
    assert!(
        stdout(&kept).contains("would rotate 1 log"),
        "{}",
        both(&kept)
    );

    let o = w.cleanup(&["--logs", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&format!("deleted old log  path={}", old.display())),
        "{out}"
    );
    assert!(out.contains("rotated log  path="), "{out}");
    assert!(
        out.contains("ended 0 sessions, rotated 1 log, deleted 1 old log file"),
        "{out}"
    );

    // The old file is gone, the current log is rotated, and its compression finished before
    // the process exited: one complete .gz holding the fresh line, nothing uncompressed.
    let files = files_in(&logs_dir);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].starts_with("writer.log.") && files[0].ends_with(".gz"));
    assert!(gunzip(&logs_dir.join(&files[0])).contains("a fresh line"));
}

#[test]
fn a_bad_max_age_is_refused_naming_the_value() {
    for (value, shown) in [("24x", "24x"), ("24", "\"24\""), ("1.5h", "1.5h")] {
        let o = run_cleanup(&["--max-age", value, "--dry-run"]);
        assert_eq!(o.status.code(), Some(2), "{value}: {}", both(&o));
        assert!(stderr(&o).contains(shown), "{value}: {}", both(&o));
    }
}

#[test]
fn a_missing_database_is_refused_and_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("typo");
    let o = run_cleanup(&["--data-dir", data.to_str().unwrap(), "--yes"]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        stderr(&o).contains("there is no database at"),
        "{}",
        both(&o)
    );
    assert!(!data.exists(), "cleanup must not create a database");
}

#[test]
fn an_unreachable_broker_is_exit_2() {
    let o = run_cleanup(&["--url", "http://127.0.0.1:1", "--yes"]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        stderr(&o).contains("cannot reach the broker"),
        "{}",
        both(&o)
    );
}

#[test]
fn logs_through_url_need_the_data_dir() {
    let o = run_cleanup(&["--url", "http://127.0.0.1:1", "--logs", "--yes"]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        stderr(&o).contains("--logs cannot work through --url"),
        "{}",
        both(&o)
    );
    assert!(stderr(&o).contains("--data-dir"), "{}", both(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn long_runs_report_progress_on_stderr() {
    let w = World::new().await;
    for i in 0..120 {
        w.agent_with_session(&format!("agent{i:03}")).await;
    }
    let o = w.cleanup(&["--max-age", "0s", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let err = stderr(&o);
    assert!(err.contains("progress 50/120 sessions, 50 ended"), "{err}");
    assert!(
        err.contains("progress 100/120 sessions, 100 ended"),
        "{err}"
    );
    assert!(
        !stdout(&o).contains("progress"),
        "progress stays off stdout"
    );
    assert!(stdout(&o).contains("ended 120 sessions"), "{}", both(&o));
    assert!(w.store.list_sessions().await.unwrap().is_empty());
}

// ------------------------------------------------------------------ against a real broker

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// A workspace binary, brought up to date once per test run. `cargo test -p kokino-cleanup`
/// does not build the broker, and a binary merely present in the target directory can be older
/// than the sources (missing an endpoint this tool calls); cargo's own freshness check is cheap.
fn workspace_bin(package: &str, name: &str) -> PathBuf {
    static BUILT: OnceLock<std::sync::Mutex<Vec<String>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|p| p == package) {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", package])
            .status()
            .expect("cargo build");
        assert!(status.success(), "could not build {package}");
        built.push(package.to_owned());
    }
    target_dir().join(name)
}

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

fn start_broker(dir: &Path) -> Broker {
    let bin = workspace_bin("kokino-broker", "kokino-broker");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.join("broker-data"))
        // The test registers the fake agent by path; the broker runs only allowed binaries.
        .arg("--allow-binary")
        .arg(dir.join("codex"))
        .env_remove("KOKINO_CONFIG")
        .env_remove("KOKINO_TOKEN_FILE")
        .env_remove("KOKINO_DATABASE_URL")
        .env("KOKINO_FAKE_STATE", dir.join("fake-state"))
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
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the broker did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    broker
}

#[tokio::test(flavor = "multi_thread")]
async fn through_url_it_ends_the_session_the_broker_shows() {
    let dir = tempfile::tempdir().unwrap();
    let fake = workspace_bin("kokino-fake-agent", "kokino-fake-agent");
    let codex = dir.path().join("codex");
    std::os::unix::fs::symlink(&fake, &codex).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let broker = start_broker(dir.path());
    let http = reqwest::Client::new();

    let register = http
        .post(format!("{}/agents/register", broker.url))
        .json(&json!({
            "agentId": "x", "type": "codex", "binary": codex, "cwd": work,
        }))
        .send()
        .await
        .unwrap();
    assert!(
        register.status().is_success(),
        "{:?}",
        register.text().await
    );
    let exec = http
        .post(format!("{}/agents/x/execute", broker.url))
        .json(&json!({"prompt": "say hi"}))
        .send()
        .await
        .unwrap();
    assert!(exec.status().is_success(), "{:?}", exec.text().await);
    let status = |http: reqwest::Client, url: String| async move {
        let rows: Value = http
            .get(format!("{url}/agents/sessions/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["agentId"] == "x")
            .cloned()
            .unwrap()
    };
    let before = status(http.clone(), broker.url.clone()).await;
    assert_eq!(before["hasSession"], true, "{before}");

    let dry = run_cleanup(&[
        "--url",
        &broker.url,
        "--max-age",
        "0s",
        "--metrics-days",
        "1",
        "--dry-run",
    ]);
    assert_eq!(dry.status.code(), Some(0), "{}", both(&dry));
    assert!(
        stdout(&dry).contains("would end session  agent=x"),
        "{}",
        both(&dry)
    );
    assert!(
        stdout(&dry).contains("count not available through --url"),
        "{}",
        both(&dry)
    );
    assert_eq!(
        status(http.clone(), broker.url.clone()).await["hasSession"],
        true
    );

    let o = run_cleanup(&[
        "--url",
        &broker.url,
        "--max-age",
        "0s",
        "--metrics-days",
        "1",
        "--yes",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        stdout(&o).contains("ended session  agent=x"),
        "{}",
        both(&o)
    );
    assert!(
        stdout(&o).contains("ended 1 session, deleted 0 events"),
        "{}",
        both(&o)
    );
    let after = status(http.clone(), broker.url.clone()).await;
    assert_eq!(after["hasSession"], false, "{after}");

    // The broker's conversation history survives the end of the session.
    let conversations: Value = http
        .get(format!("{}/agents/x/conversations", broker.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        conversations.to_string().contains("ended"),
        "{conversations}"
    );
}
