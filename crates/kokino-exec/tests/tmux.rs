//! The tmux executor against real tmux and the real fake agent, in its interactive mode.
//!
//! Every test has its own tmux server (a socket in its own tempdir), its own HOME and fake-agent
//! state, and kills its server at the end, so nothing touches a user's tmux or another test.

#![cfg(feature = "tmux")]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

mod support;

use kokino_cli::StreamEvent;
use kokino_core::{CliType, OutcomeClass};
use kokino_exec::tmux::{CompletionSignal, TmuxConfig, TmuxRun};
use kokino_exec::{procfs, CancellationToken, ExecEvent, Limits, TmuxExecutor, TmuxRequest};
use support::fake_agent;
use tokio::sync::mpsc;

/// The tmux binary on `PATH`, looked up once.
fn tmux() -> Option<&'static Path> {
    static TMUX: OnceLock<Option<PathBuf>> = OnceLock::new();
    TMUX.get_or_init(|| {
        kokino_exec::resolve_binary("tmux", std::env::var_os("PATH").as_deref()).ok()
    })
    .as_deref()
}

/// Whether tmux is on `PATH`; when it is not, says loudly which test is skipped and how to
/// install tmux, so a missing tmux never looks like a pass.
fn tmux_available() -> bool {
    if tmux().is_some() {
        return true;
    }
    // Written to stderr directly rather than with `eprintln!`, which the test harness captures
    // and shows only for failing tests: a skip must be visible in an ordinary `cargo test` run.
    let thread = std::thread::current();
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {}: tmux is not on PATH. Install it (Debian/Ubuntu: `apt-get install -y tmux`) \
         to run the tmux executor tests.",
        thread.name().unwrap_or("a tmux test")
    );
    false
}

fn tmux_bin() -> &'static Path {
    tmux().expect("tmux_available() was checked first")
}

/// One test's world: fake CLIs on a private PATH, a HOME, a working directory, a tmux server.
struct World {
    dir: tempfile::TempDir,
    exec: TmuxExecutor,
}

impl World {
    fn new() -> World {
        Self::with_config(TmuxConfig {
            startup_timeout: Duration::from_secs(10),
            ..TmuxConfig::default()
        })
    }

    fn with_config(config: TmuxConfig) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["bin", "home", "work", "state"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        for name in ["claude", "codex", "gemini", "droid"] {
            std::os::unix::fs::symlink(fake_agent(), dir.path().join("bin").join(name)).unwrap();
        }
        let exec =
            TmuxExecutor::new(tmux_bin().into(), dir.path().join("tmux")).with_config(config);
        World { dir, exec }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn request(&self, cli: CliType, agent: &str, prompt: &str) -> TmuxRequest {
        let name = cli.default_binary();
        let mut env = BTreeMap::new();
        env.insert(
            "HOME".into(),
            self.path("home").to_string_lossy().into_owned(),
        );
        env.insert("PATH".into(), "/usr/bin:/bin".into());
        env.insert(
            "KOKINO_FAKE_STATE".into(),
            self.path("state").to_string_lossy().into_owned(),
        );
        env.insert(
            "KOKINO_FAKE_LOG".into(),
            self.path("witness.log").to_string_lossy().into_owned(),
        );
        TmuxRequest {
            agent_id: agent.into(),
            tui: kokino_cli::tui_for(cli),
            program: self.path("bin").join(name),
            args: Vec::new(),
            env,
            cwd: self.path("work"),
            prompt: prompt.into(),
            session_id: None,
        }
    }

    /// A claude request whose session id enables the transcript signal.
    fn claude(&self, agent: &str, session: &str, prompt: &str) -> TmuxRequest {
        let mut r = self.request(CliType::ClaudeCode, agent, prompt);
        r.args = vec!["--session-id".into(), session.into()];
        r.session_id = Some(session.into());
        r
    }

    async fn run(&self, req: TmuxRequest) -> (TmuxRun, Vec<ExecEvent>) {
        self.run_with(req, limits(), CancellationToken::new()).await
    }

    async fn run_with(
        &self,
        req: TmuxRequest,
        limits: Limits,
        cancel: CancellationToken,
    ) -> (TmuxRun, Vec<ExecEvent>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let run = self.exec.run_detailed(req, limits, cancel, tx).await;
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        (run, events)
    }

    /// The `end` timestamps of the witness log, in order.
    fn turn_ends(&self) -> Vec<u128> {
        std::fs::read_to_string(self.path("witness.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("end "))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect()
    }

    /// Milliseconds from the fake agent's last `end` (its turn was complete on screen and in
    /// the transcript) to the executor noticing.
    fn detection_latency_ms(&self, run: &TmuxRun) -> f64 {
        let end = *self
            .turn_ends()
            .last()
            .expect("a finished turn in the witness log");
        let seen = run
            .timings
            .completed_at
            .expect("completion time")
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        (seen as f64 - end as f64) / 1e6
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // A failed test must not leave its server behind; the tests' own cleanup is async.
        let _ = std::process::Command::new(tmux_bin())
            .arg("-S")
            .arg(self.exec.socket_path())
            .arg("kill-server")
            .env_clear()
            .output();
    }
}

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(20),
        kill_grace: Duration::from_secs(1),
        ..Limits::default()
    }
}

fn answer(run: &TmuxRun) -> &str {
    run.result.parsed.answer.as_deref().unwrap_or("<no answer>")
}

fn assert_success(run: &TmuxRun) {
    assert_eq!(
        run.result.outcome,
        OutcomeClass::Success,
        "error: {:?}\nscreen:\n{}",
        run.result.error_message(),
        run.result.stderr_tail
    );
}

fn group_alive(pgid: i32) -> bool {
    procfs::group_members(pgid).into_iter().any(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rfind(')')
                    .and_then(|i| s[i + 1..].split_whitespace().next())
                    .is_some_and(|st| st != "Z" && st != "X")
            })
            .unwrap_or(false)
    })
}

const SID: &str = "6b0e2a9e-0f1d-4c1e-9f55-0b8f3c1d2e4a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_personality_answers_and_reuses_its_session() {
    if !tmux_available() {
        return;
    }
    let w = World::new();
    let cases = [
        (CliType::Codex, CompletionSignal::PromptAfterQuiet),
        (CliType::Gemini, CompletionSignal::PromptAfterQuiet),
        (CliType::FactoryDroid, CompletionSignal::PromptAfterQuiet),
        (CliType::ClaudeCode, CompletionSignal::Transcript),
    ];
    for (cli, signal) in cases {
        let agent = format!("agent.{}", cli.as_str());
        let req = |prompt: &str| match cli {
            CliType::ClaudeCode => w.claude(&agent, SID, prompt),
            _ => w.request(cli, &agent, prompt),
        };
        let (first, events) = w.run(req("hello fake:sleep=0.2")).await;
        assert_success(&first);
        assert_eq!(answer(&first), "echo: hello", "{cli:?}");
        assert!(first.timings.session_created);
        assert_eq!(first.timings.signal, Some(signal), "{cli:?}");
        assert!(events.contains(&ExecEvent::Stream(StreamEvent::Final)));
        let latency = w.detection_latency_ms(&first);
        eprintln!("{cli:?}: completion noticed {latency:.1} ms after the CLI finished (first run)");

        let (second, _) = w.run(req("again fake:sleep=0.1")).await;
        assert_success(&second);
        assert_eq!(answer(&second), "echo: again");
        assert!(!second.timings.session_created, "the session is reused");
        assert_eq!(second.result.pid, first.result.pid, "same CLI process");
        let latency = w.detection_latency_ms(&second);
        eprintln!(
            "{cli:?}: completion noticed {latency:.1} ms after the CLI finished (second run)"
        );
        assert!(latency < 1000.0, "{cli:?}: {latency} ms");
    }
    w.exec.kill_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_line_prompts_are_one_turn() {
    if !tmux_available() {
        return;
    }
    let w = World::new();
    let (run, _) = w
        .run(w.request(CliType::Codex, "multi", "line one\nline two\r\nline three"))
        .await;
    assert_success(&run);
    assert_eq!(answer(&run), "echo: line one\nline two\nline three");
    let (run, _) = w
        .run(w.claude("multi-claude", SID, "first line\nsecond line"))
        .await;
    assert_success(&run);
    assert_eq!(answer(&run), "echo: first line\nsecond line");
    w.exec.kill_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_completion_comes_from_the_transcript() {
    if !tmux_available() {
        return;
    }
    let w = World::new();
    let (run, events) = w
        .run(w.claude("claude-t", SID, "fake:sleep=0.5 fake:tool what is 2+2"))
        .await;
    assert_success(&run);
    assert_eq!(answer(&run), "echo: what is 2+2");
    assert_eq!(run.timings.signal, Some(CompletionSignal::Transcript));
    assert_eq!(run.result.parsed.session_id.as_deref(), Some(SID));
    assert!(events.contains(&ExecEvent::Stream(StreamEvent::SessionId(SID.into()))));
    assert!(events.iter().any(|e| matches!(
        e,
        ExecEvent::Stream(StreamEvent::ToolUse { name, .. }) if name == "Bash"
    )));
    let transcript = kokino_cli::tui::transcript_path(
        &w.path("home"),
        &std::fs::canonicalize(w.path("work")).unwrap(),
        SID,
    );
    let text = std::fs::read_to_string(&transcript).expect("transcript written");
    assert!(text.contains("\"subtype\":\"turn_duration\""));

    // A truncated line in the transcript is skipped, not fatal.
    let (run, _) = w
        .run(w.claude("claude-t", SID, "fake:malformed fine"))
        .await;
    assert_success(&run);
    assert_eq!(answer(&run), "echo: fine");
    assert_eq!(run.result.parsed.malformed_lines, 1);

    // An API failure recorded in the transcript keeps its class.
    let (run, _) = w.run(w.claude("claude-t", SID, "fake:auth hi")).await;
    assert_eq!(run.result.outcome, OutcomeClass::AuthError);
    w.exec.kill_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_stops_the_cli_and_its_session() {
    if !tmux_available() {
        return;
    }
    let w = World::new();
    let lim = Limits {
        timeout: Duration::from_millis(1500),
        ..limits()
    };
    let (run, _) = w
        .run_with(
            w.request(CliType::Codex, "slow", "fake:hang"),
            lim,
            CancellationToken::new(),
        )
        .await;
    assert_eq!(run.result.outcome, OutcomeClass::Timeout);
    let pid = run.result.pid.expect("pane pid");
    assert!(!group_alive(pid), "the CLI's group is gone");
    assert!(!w.exec.has_session("slow").await, "the session is gone");
    w.exec.kill_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_leaves_no_process() {
    if !tmux_available() {
        return;
    }
    let w = World::new();
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let req = w.claude("cancel-me", SID, "fake:hang fake:child fake:ignore-term");
    let lim = Limits {
        kill_grace: Duration::from_millis(500),
        ..limits()
    };
    let exec = &w.exec;
    let run = exec.run_detailed(req, lim, cancel.clone(), tx);
    let canceller = async {
        let mut pid = None;
        while let Some(e) = rx.recv().await {
            if let ExecEvent::Started { pid: p, .. } = e {
                pid = Some(p);
                break;
            }
        }
        let pid = pid.expect("started");
        // Cancel once the grandchild exists, i.e. the turn is really under way.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while procfs::group_members(pid).len() < 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let members = procfs::group_members(pid);
        cancel.cancel();
        (pid, members)
    };
    let (run, (pid, members)) = tokio::join!(run, canceller);
    assert_eq!(run.result.outcome, OutcomeClass::Cancelled);
    assert!(
        members.len() >= 2,
        "the grandchild was running: {members:?}"
    );
    assert!(
        !group_alive(pid),
        "nothing of the group survives: {:?}",
        procfs::group_members(pid)
    );
    assert!(!w.exec.has_session("cancel-me").await);
    w.exec.kill_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_that_exits_is_noticed_at_once() {
    if !tmux_available() {
        return;
    }
    let w = World::new();
    let (run, _) = w
        .run(w.request(CliType::Gemini, "dies", "fake:sleep=0.2 fake:exit=3"))
        .await;
    assert_eq!(run.result.outcome, OutcomeClass::CliError);
    assert_eq!(run.result.exit.code, Some(3));
    let msg = run.result.error_message().unwrap_or_default();
    assert!(msg.contains("fake:exit=3"), "{msg}");
    // The run ends when the CLI does, not at a timeout.
    assert!(
        run.result.duration < Duration::from_secs(5),
        "{:?}",
        run.result.duration
    );
    assert!(!w.exec.has_session("dies").await);

    // A dead CLI's login message becomes an auth error.
    let (run, _) = w
        .run(w.request(CliType::FactoryDroid, "noauth", "fake:auth hi"))
        .await;
    assert_eq!(
        run.result.outcome,
        OutcomeClass::AuthError,
        "{:?}\n{}",
        run.result.error_message(),
        run.result.stderr_tail
    );

    // The next run starts a fresh session.
    let (run, _) = w.run(w.request(CliType::Gemini, "dies", "back")).await;
    assert_success(&run);
    assert!(run.timings.session_created);
    w.exec.kill_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trust_screen_is_answered() {
    if !tmux_available() {
        return;
    }
    let w = World::new();
    let mut req = w.claude("trusting", SID, "hi there");
    req.env.insert("KOKINO_FAKE_FIRST_RUN".into(), "1".into());
    let (run, _) = w.run(req).await;
    assert_success(&run);
    assert_eq!(answer(&run), "echo: hi there");
    assert_eq!(
        run.timings.first_run_screens,
        vec!["claude trust this folder"]
    );
    w.exec.kill_server().await;
}

/// Claude's API-key question starts on "No (recommended)": the executor moves onto "Yes"
/// before pressing Enter, so the key is used and the turn is answered (with "No" the fake, like
/// the real TUI, has no credentials and answers "Not logged in").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_question_is_answered_yes_explicitly() {
    if !tmux_available() {
        return;
    }
    let w = World::new();
    let mut req = w.claude("keyed", SID, "hi there");
    req.env
        .insert("KOKINO_FAKE_FIRST_RUN".into(), "trust,apikey".into());
    let (run, _) = w.run(req).await;
    assert_success(&run);
    assert_eq!(answer(&run), "echo: hi there");
    assert_eq!(
        run.timings.first_run_screens,
        vec!["claude trust this folder", "claude use this API key"]
    );
    w.exec.kill_server().await;
}

/// Codex's and Gemini's trust questions, and their prompts with placeholder text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_and_gemini_trust_screens_and_placeholders() {
    if !tmux_available() {
        return;
    }
    let w = World::new();
    for (cli, screen) in [
        (CliType::Codex, "codex trust this folder"),
        (CliType::Gemini, "trust this folder"),
    ] {
        let mut req = w.request(cli, cli.as_str(), "hello there");
        req.env
            .insert("KOKINO_FAKE_FIRST_RUN".into(), "trust".into());
        let (run, _) = w.run(req).await;
        assert_success(&run);
        assert_eq!(answer(&run), "echo: hello there", "{cli:?}");
        assert_eq!(run.timings.first_run_screens, vec![screen], "{cli:?}");
        // The second prompt reuses the session, whose prompt shows the placeholder again.
        let (run, _) = w.run(w.request(cli, cli.as_str(), "again")).await;
        assert_success(&run);
        assert_eq!(answer(&run), "echo: again", "{cli:?}");
        assert!(!run.timings.session_created);
    }
    w.exec.kill_server().await;
}

/// Droid's login screen (the built-in profile) fails the run at once with `auth_error` and the
/// screen's words, and leaves no process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn droids_login_screen_is_an_auth_error_in_seconds() {
    if !tmux_available() {
        return;
    }
    let w = World::new();
    let mut req = w.request(CliType::FactoryDroid, "droid", "hello");
    req.env
        .insert("KOKINO_FAKE_FIRST_RUN".into(), "login".into());
    let started = std::time::Instant::now();
    let (run, _) = w.run(req).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(run.result.outcome, OutcomeClass::AuthError);
    let msg = run.result.error_message().unwrap_or_default();
    assert!(msg.contains("Factory account"), "{msg}");
    assert!(
        msg.contains("Please login with your Factory account to continue."),
        "{msg}"
    );
    assert!(!group_alive(run.result.pid.unwrap()));
    w.exec.kill_server().await;
}

/// Before a new session starts, the CLI's own configuration is prepared (merged, not
/// overwritten): Claude's onboarding, folder trust and API-key approval; Codex's and Gemini's
/// folder trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clis_configuration_is_prepared_and_merged() {
    if !tmux_available() {
        return;
    }
    let w = World::new();
    let home = w.path("home");
    std::fs::write(home.join(".claude.json"), r#"{"theme":"light"}"#).unwrap();
    std::fs::create_dir_all(home.join(".codex")).unwrap();
    std::fs::write(home.join(".codex/config.toml"), "model = \"m\"\n").unwrap();
    let mut req = w.claude("prep", SID, "hi");
    req.env.insert(
        "ANTHROPIC_API_KEY".into(),
        "sk-0123456789abcdefghijXYZ".into(),
    );
    let (run, _) = w.run(req).await;
    assert_success(&run);
    let cwd = std::fs::canonicalize(w.path("work")).unwrap();
    let cwd = cwd.to_string_lossy();
    let claude: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.join(".claude.json")).unwrap()).unwrap();
    assert_eq!(claude["theme"], "light");
    assert_eq!(claude["hasCompletedOnboarding"], true);
    assert_eq!(
        claude["projects"][cwd.as_ref()]["hasTrustDialogAccepted"],
        true
    );
    assert_eq!(
        claude["customApiKeyResponses"]["approved"][0], "3456789abcdefghijXYZ",
        "the key's last 20 characters, as Claude Code records an approval"
    );
    let (run, _) = w.run(w.request(CliType::Codex, "prep-codex", "hi")).await;
    assert_success(&run);
    let toml = std::fs::read_to_string(home.join(".codex/config.toml")).unwrap();
    assert!(toml.starts_with("model = \"m\"\n"), "{toml}");
    assert!(
        toml.contains(&format!("[projects.\"{cwd}\"]\ntrust_level = \"trusted\"")),
        "{toml}"
    );
    let (run, _) = w.run(w.request(CliType::Gemini, "prep-gemini", "hi")).await;
    assert_success(&run);
    let trusted = std::fs::read_to_string(home.join(".gemini/trustedFolders.json")).unwrap();
    assert!(trusted.contains("TRUST_FOLDER"), "{trusted}");
    w.exec.kill_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_screen_is_a_clear_error() {
    if !tmux_available() {
        return;
    }
    let w = World::with_config(TmuxConfig {
        startup_timeout: Duration::from_millis(1500),
        ..TmuxConfig::default()
    });
    let mut req = w.request(CliType::Codex, "weird", "hello");
    req.program = "/bin/sh".into();
    req.args = vec![
        "-c".into(),
        "echo 'Choose your destiny [y/N]'; sleep 100".into(),
    ];
    let (run, _) = w.run(req).await;
    assert_eq!(run.result.outcome, OutcomeClass::CliError);
    let msg = run.result.error_message().unwrap_or_default();
    assert!(msg.contains("never showed the codex prompt"), "{msg}");
    assert!(msg.contains("Choose your destiny"), "{msg}");
    assert!(!group_alive(run.result.pid.unwrap()));
    w.exec.kill_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pane_gets_exactly_the_child_environment() {
    if !tmux_available() {
        return;
    }
    let w = World::new();
    let mut req = w.request(CliType::Codex, "env", "hi");
    let secret = "it's a $HOME #{pane_id} \"quoted\"\nsecond line";
    req.env.insert("KOKINO_TEST_SECRET".into(), secret.into());
    let dump = w.path("env.txt");
    // A shell in front of the fake agent records the environment it was given, then becomes it.
    req.args = vec![
        "-c".into(),
        format!("env -0 > '{}'; exec \"$0\"", dump.display()),
        req.program.to_string_lossy().into_owned(),
    ];
    req.program = "/bin/sh".into();
    let (run, _) = w.run(req.clone()).await;
    assert_success(&run);
    let text = std::fs::read_to_string(&dump).unwrap();
    let vars: BTreeMap<&str, &str> = text
        .split('\0')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    assert_eq!(vars.get("KOKINO_TEST_SECRET"), Some(&secret));
    for (k, v) in &req.env {
        assert_eq!(vars.get(k.as_str()), Some(&v.as_str()), "{k}");
    }
    // Only what we gave, and what tmux and sh set for any terminal program.
    let allowed = [
        "TERM",
        "SHELL",
        "TMUX",
        "TMUX_PANE",
        "TERM_PROGRAM",
        "TERM_PROGRAM_VERSION",
        "PWD",
        "SHLVL",
        "OLDPWD",
        "_",
    ];
    for k in vars.keys() {
        assert!(
            req.env.contains_key(*k) || allowed.contains(k),
            "unexpected variable {k}"
        );
    }
    w.exec.kill_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_session_and_kill_server_leave_nothing() {
    if !tmux_available() {
        return;
    }
    let w = World::new();
    let (a, _) = w.run(w.request(CliType::Codex, "a", "one")).await;
    let (b, _) = w.run(w.request(CliType::Gemini, "b", "two")).await;
    assert_success(&a);
    assert_success(&b);
    w.exec.end_session("a").await;
    assert!(!w.exec.has_session("a").await);
    assert!(!group_alive(a.result.pid.unwrap()));
    assert!(w.exec.has_session("b").await);
    w.exec.kill_server().await;
    assert!(!group_alive(b.result.pid.unwrap()));
    assert!(!w.exec.socket_path().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_binary_and_cwd_are_spawn_errors() {
    let w = World::new();
    let mut req = w.request(CliType::Codex, "nobin", "hi");
    req.program = w.path("bin/nope");
    let (run, _) = w.run(req).await;
    assert_eq!(run.result.outcome, OutcomeClass::SpawnError);
    let mut req = w.request(CliType::Codex, "nocwd", "hi");
    req.cwd = w.path("missing");
    let (run, _) = w.run(req).await;
    assert_eq!(run.result.outcome, OutcomeClass::SpawnError);
    assert!(run
        .result
        .error_message()
        .unwrap()
        .contains("does not exist"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_run_side_by_side_on_one_server() {
    if !tmux_available() {
        return;
    }
    let w = World::new();
    let agents: Vec<(CliType, String)> = (0..6)
        .map(|i| {
            let cli = [CliType::Codex, CliType::Gemini, CliType::FactoryDroid][i % 3];
            (cli, format!("side-{i}"))
        })
        .collect();
    for round in 0..3 {
        let runs = agents.iter().map(|(cli, agent)| {
            let req = w.request(
                *cli,
                agent,
                &format!("{agent} round {round} fake:sleep=0.1"),
            );
            w.run(req)
        });
        let results = futures_join_all(runs).await;
        for ((_, agent), (run, _)) in agents.iter().zip(results) {
            assert_success(&run);
            assert_eq!(answer(&run), format!("echo: {agent} round {round}"));
        }
    }
    w.exec.kill_server().await;
}

/// Runs the futures concurrently on this task and collects their outputs in order.
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|v| v.expect("ready")).collect()
}

/// A profile of an embedder's own: the executor takes any `Tui` as a trait object. This one
/// recognises a login screen as blocking, so the run fails at once with `auth_error` and the
/// screen's words, long before the startup timeout, and leaves no process.
#[derive(Debug)]
struct LoginScreenTui;

impl kokino_cli::Tui for LoginScreenTui {
    fn cli(&self) -> CliType {
        CliType::FactoryDroid
    }
    fn interactive_args(
        &self,
        _session: kokino_cli::SessionArg<'_>,
        _model: Option<&str>,
    ) -> Vec<String> {
        Vec::new()
    }
    fn is_prompt_line(&self, line: &str) -> bool {
        line.trim() == ">"
    }
    fn prompt_output_suffix(&self) -> &'static [u8] {
        b"> "
    }
    fn read_startup_screen(&self, screen: &str) -> kokino_cli::tui::StartupScreen {
        if screen.contains("Please login") {
            kokino_cli::tui::StartupScreen::Blocked {
                class: OutcomeClass::AuthError,
                reason: "it asks for a login".into(),
            }
        } else {
            kokino_cli::tui::StartupScreen::NotYet
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_screen_fails_fast_with_its_class() {
    if !tmux_available() {
        return;
    }
    let w = World::new();
    let mut req = w.request(CliType::FactoryDroid, "login", "hello");
    req.tui = std::sync::Arc::new(LoginScreenTui);
    req.program = "/bin/sh".into();
    req.args = vec![
        "-c".into(),
        "echo 'Please login with your Factory account to continue.'; sleep 100".into(),
    ];
    let (run, _) = w.run(req).await;
    assert_eq!(run.result.outcome, OutcomeClass::AuthError);
    let msg = run.result.error_message().unwrap_or_default();
    assert!(msg.contains("it asks for a login"), "{msg}");
    assert!(
        msg.contains("Please login with your Factory account"),
        "{msg}"
    );
    // The startup timeout is 10 s here; a blocking screen must not wait for it.
    assert!(
        run.result.duration < Duration::from_secs(5),
        "{:?}",
        run.result.duration
    );
    assert!(!group_alive(run.result.pid.unwrap()));
    assert!(!w.exec.has_session("login").await);
    w.exec.kill_server().await;
}
