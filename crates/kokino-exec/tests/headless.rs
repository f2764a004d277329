//! The headless executor against real fake-agent processes: the early stop at a CLI's first
//! rate-limit signal (issue 13, item 5), the CLI's own retries when that is asked for, and the
//! "session not found" signal of a resume that cannot continue (item 4).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kokino_cli::{parser_for, parser_for_run, RunContext, StreamEvent};
use kokino_core::{CliType, OutcomeClass};
use kokino_exec::{
    procfs, run_headless, CancellationToken, ExecEvent, HeadlessCommand, Limits, RunResult,
    StopReason,
};
use tokio::sync::mpsc;

/// A private world: the fake agent under a CLI's name, its own HOME and session state.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        for name in ["claude", "codex", "gemini", "droid"] {
            std::os::unix::fs::symlink(support::fake_agent(), dir.path().join("bin").join(name))
                .unwrap();
        }
        World { dir }
    }

    fn command(&self, name: &str, args: &[&str], prompt: &str) -> HeadlessCommand {
        let home = self.dir.path();
        let env: BTreeMap<String, String> = [
            ("HOME", home.to_string_lossy().into_owned()),
            ("PATH", "/usr/bin:/bin".to_owned()),
            (
                "KOKINO_FAKE_STATE",
                home.join("state").to_string_lossy().into_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        HeadlessCommand {
            program: home.join("bin").join(name),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env,
            cwd: Some(home.to_path_buf()),
            stdin: prompt.as_bytes().to_vec(),
            supervisor: None,
            stdin_gate: None,
        }
    }
}

fn args(cli: CliType) -> &'static [&'static str] {
    match cli {
        CliType::ClaudeCode => &["-p", "--output-format", "stream-json", "--verbose"],
        CliType::Codex => &["exec", "--json", "--skip-git-repo-check", "-"],
        CliType::Gemini => &["-o", "stream-json", "--skip-trust"],
        CliType::FactoryDroid => &["exec", "-o", "stream-json"],
    }
}

fn name(cli: CliType) -> &'static str {
    match cli {
        CliType::ClaudeCode => "claude",
        CliType::Codex => "codex",
        CliType::Gemini => "gemini",
        CliType::FactoryDroid => "droid",
    }
}

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(30),
        kill_grace: Duration::from_secs(1),
        ..Limits::default()
    }
}

/// Runs one command to its end and returns the result and every event.
async fn run(
    cmd: HeadlessCommand,
    parser: Box<dyn kokino_cli::StreamParser>,
    limits: Limits,
) -> (RunResult, Vec<ExecEvent>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let result = run_headless(cmd, parser, limits, CancellationToken::new(), tx, None).await;
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (result, events)
}

/// The grandchild `fake:child` started, from the `fake-child-pid=<pid>` stderr line.
fn grandchild(result: &RunResult) -> i32 {
    result
        .stderr_tail
        .lines()
        .find_map(|l| l.strip_prefix("fake-child-pid="))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no fake-child-pid in {:?}", result.stderr_tail))
}

fn assert_group_gone(result: &RunResult) {
    let pid = result.pid.expect("pid");
    let alive: Vec<i32> = procfs::group_members(pid)
        .into_iter()
        .filter(|p| procfs::is_live(*p))
        .collect();
    assert!(alive.is_empty(), "group {pid} still has {alive:?}");
}

fn epoch_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Every CLI that reports a 429 while it retries is stopped at the first report, its whole
/// group (a grandchild included) killed, and the run answers `rate_limited` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_rate_limit_signal_stops_the_run_and_kills_the_group() {
    let w = World::new();
    for (cli, message) in [
        // stderr only: stdout is silent after `init` while gemini retries.
        (
            CliType::Gemini,
            "Attempt 1 failed with status 429. Retrying with backoff...",
        ),
        (
            CliType::ClaudeCode,
            "API rate limit: rate_limit (HTTP 429), the CLI was retrying (attempt 1)",
        ),
        (
            CliType::Codex,
            "Reconnecting... 1/5 (exceeded retry limit, last status: 429 Too Many Requests)",
        ),
    ] {
        let cmd = w.command(name(cli), args(cli), "fake:ratelimit=retry fake:child hi");
        let started = Instant::now();
        let (result, events) = run(cmd, parser_for(cli), limits()).await;
        let took = started.elapsed();
        eprintln!("{cli:?}: rate_limited after {took:?}");
        assert_eq!(
            result.outcome,
            OutcomeClass::RateLimited,
            "{cli:?}: {result:?}"
        );
        assert_eq!(result.stop, Some(StopReason::RateLimited), "{cli:?}");
        assert_eq!(
            result.parsed.class,
            Some(OutcomeClass::RateLimited),
            "{cli:?}"
        );
        let error = result.error_message().unwrap_or_default();
        assert!(error.starts_with(message), "{cli:?}: {error:?}");
        // The fake retries once a second forever; the run ended at the first attempt, within
        // the kill escalation (SIGTERM is honoured at once here).
        assert!(took < Duration::from_secs(4), "{cli:?}: took {took:?}");
        let signals = events
            .iter()
            .filter(|e| matches!(e, ExecEvent::Stream(StreamEvent::RateLimited { .. })))
            .count();
        assert_eq!(signals, 1, "{cli:?}: stopped at the first signal");
        let child = grandchild(&result);
        assert!(
            !procfs::is_live(child),
            "{cli:?}: grandchild {child} survived"
        );
        assert_group_gone(&result);
    }
}

/// Claude's first `api_retry` of a 429 carries the delay it chose (the provider's
/// `retry-after`); the executor dates it, and the service's retry-after comes from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_delay_of_the_signal_becomes_the_reset_time() {
    let w = World::new();
    let before = epoch_now();
    let cmd = w.command(
        "claude",
        args(CliType::ClaudeCode),
        "fake:ratelimit=retry hi",
    );
    let (result, _) = run(cmd, parser_for(CliType::ClaudeCode), limits()).await;
    assert_eq!(result.outcome, OutcomeClass::RateLimited);
    let resets = result.parsed.rate_limit_resets_at.expect("a reset time");
    assert!(
        (before + 1..=epoch_now() + 1).contains(&resets),
        "{resets} vs {before}"
    );
}

/// Droid reports its 429 only when it gives up: the `agent_loop` error is the verdict and the
/// message, not the generic `Exec failed` that follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn droids_agent_loop_429_is_rate_limited_with_its_message() {
    let w = World::new();
    for stop_on_rate_limit in [true, false] {
        let cmd = w.command("droid", args(CliType::FactoryDroid), "fake:ratelimit hi");
        let lim = Limits {
            stop_on_rate_limit,
            ..limits()
        };
        let (result, _) = run(cmd, parser_for(CliType::FactoryDroid), lim).await;
        assert_eq!(result.outcome, OutcomeClass::RateLimited, "{result:?}");
        let error = result.error_message().unwrap_or_default();
        assert!(
            error.starts_with("429 {\"error\":{\"message\":\"Number of requests has exceeded"),
            "{error:?}"
        );
        assert_group_gone(&result);
    }
}

/// With `stop_on_rate_limit: false` (an agent's `rateLimit: "cli"`) the CLI keeps retrying on
/// its own: here until the run's timeout, with every attempt on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_early_stop_the_cli_retries_on_its_own() {
    let w = World::new();
    let cmd = w.command("gemini", args(CliType::Gemini), "fake:ratelimit=retry hi");
    let lim = Limits {
        timeout: Duration::from_millis(3500),
        stop_on_rate_limit: false,
        ..limits()
    };
    let started = Instant::now();
    let (result, events) = run(cmd, parser_for(CliType::Gemini), lim).await;
    assert!(started.elapsed() >= Duration::from_millis(3500));
    assert_eq!(result.outcome, OutcomeClass::Timeout, "{result:?}");
    assert_eq!(result.stop, Some(StopReason::Timeout));
    let signals = events
        .iter()
        .filter(|e| matches!(e, ExecEvent::Stream(StreamEvent::RateLimited { .. })))
        .count();
    assert!(signals >= 3, "every attempt is reported: {signals}");
    assert!(result
        .stderr_tail
        .contains("Attempt 3 failed with status 429"));
    assert_group_gone(&result);
}

/// A resume the CLI cannot continue is marked for the broker to rehydrate the session: droid's
/// silent exit 1 (known only because the parser is told the run resumes), codex's `no rollout
/// found` on stderr, gemini's `Invalid session identifier`, claude's `No conversation found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_of_an_unknown_session_is_reported_as_session_not_found() {
    let w = World::new();
    let unknown = "3f1c1d1e-0000-4000-8000-000000000000";
    let resuming = RunContext { resuming: true };
    let cases: [(CliType, Vec<&str>); 4] = [
        (
            CliType::ClaudeCode,
            [args(CliType::ClaudeCode), &["--resume", unknown]].concat(),
        ),
        (
            CliType::Codex,
            vec![
                "exec",
                "--json",
                "--skip-git-repo-check",
                "resume",
                unknown,
                "-",
            ],
        ),
        (
            CliType::Gemini,
            [args(CliType::Gemini), &["--resume", unknown]].concat(),
        ),
        (
            CliType::FactoryDroid,
            [args(CliType::FactoryDroid), &["-s", unknown]].concat(),
        ),
    ];
    for (cli, argv) in cases {
        let cmd = w.command(name(cli), &argv, "hello");
        let (result, _) = run(cmd, parser_for_run(cli, resuming), limits()).await;
        assert_eq!(
            result.outcome,
            OutcomeClass::CliError,
            "{cli:?}: {result:?}"
        );
        assert!(result.parsed.session_not_found, "{cli:?}: {result:?}");
    }
    // The same silent exit of droid in a run that did not resume says nothing of the kind.
    let cmd = w.command(
        "droid",
        &[args(CliType::FactoryDroid), &["-s", unknown]].concat(),
        "hello",
    );
    let (result, _) = run(cmd, parser_for(CliType::FactoryDroid), limits()).await;
    assert!(!result.parsed.session_not_found);
}
