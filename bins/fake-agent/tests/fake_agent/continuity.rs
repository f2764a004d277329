//! Session continuity and the real CLIs' answers to a session they cannot continue, and the
//! rate-limit retry loop (`fake:ratelimit=retry`) that lets a caller stop at the first signal.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;

const AGENTS: [&str; 4] = ["claude", "codex", "gemini", "droid"];

/// The arguments that resume `sid` (spec/cli-adapters.md, later-turns column).
fn resume_args(agent: &str, sid: &str) -> Vec<String> {
    let mut args: Vec<String> = match agent {
        "codex" => [
            "exec",
            "--json",
            "--skip-git-repo-check",
            "resume",
            sid,
            "-",
        ]
        .map(String::from)
        .to_vec(),
        _ => headless(agent).into_iter().map(String::from).collect(),
    };
    match agent {
        "claude" | "gemini" => args.extend(["--resume".to_owned(), sid.to_owned()]),
        "droid" => args.extend(["-s".to_owned(), sid.to_owned()]),
        _ => {}
    }
    args
}

fn run_with(sb: &Sandbox, agent: &str, args: &[String], prompt: &str) -> Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sb.run(agent, &args, prompt)
}

#[test]
fn turns_token_reports_the_earlier_user_turns_of_the_session() {
    let sb = Sandbox::new();
    for agent in AGENTS {
        let run = sb.run(agent, &headless(agent), "first fake:turns");
        assert_eq!(run.code, Some(0), "{agent}: {}", run.stderr);
        let events = run.events();
        assert_eq!(
            answer(agent, &events).as_deref(),
            Some("echo: first turns=0"),
            "{agent}"
        );
        let sid = session_id(agent, &events);
        for (n, prompt) in [(1, "second"), (2, "third")] {
            let run = run_with(
                &sb,
                agent,
                &resume_args(agent, &sid),
                &format!("{prompt} fake:turns"),
            );
            assert_eq!(run.code, Some(0), "{agent}: {}", run.stderr);
            let events = run.events();
            assert_eq!(session_id(agent, &events), sid, "{agent}");
            assert_eq!(
                answer(agent, &events),
                Some(format!("echo: {prompt} turns={n}")),
                "{agent}"
            );
        }
        // Without the token the answer is the plain echo, whatever the session holds.
        let run = run_with(&sb, agent, &resume_args(agent, &sid), "fourth");
        assert_eq!(
            answer(agent, &run.events()).as_deref(),
            Some("echo: fourth")
        );
    }
}

#[test]
fn droid_fork_continues_a_session_under_a_new_id_with_its_history() {
    let sb = Sandbox::new();
    let run = sb.run("droid", &headless("droid"), "first");
    let sid = session_id("droid", &run.events());
    let run = run_with(&sb, "droid", &resume_args("droid", &sid), "second");
    assert_eq!(run.code, Some(0), "{}", run.stderr);

    let mut args = headless("droid");
    args.extend(["--fork", &sid]);
    let run = sb.run("droid", &args, "third fake:turns");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let forked = session_id("droid", &run.events());
    assert_ne!(forked, sid, "a fork is a new session");
    assert_eq!(
        answer("droid", &run.events()).as_deref(),
        Some("echo: third turns=2")
    );
    // The fork is a session of its own: resuming it sees the three turns.
    let run = run_with(&sb, "droid", &resume_args("droid", &forked), "x fake:turns");
    assert_eq!(
        answer("droid", &run.events()).as_deref(),
        Some("echo: x turns=3")
    );
}

/// droid-resume-s-offline / droid-fork-unknown: exit 1, nothing on stdout or stderr.
#[test]
fn droid_fails_silently_on_a_session_it_cannot_continue() {
    let sb = Sandbox::new();
    let run = sb.run("droid", &headless("droid"), "first");
    let sid = session_id("droid", &run.events());

    let unknown = "9d0af3ce-b202-48cd-8a5e-0b9df187141e";
    let mut fork_unknown = headless("droid");
    fork_unknown.extend(["--fork", unknown]);
    for (what, run) in [
        (
            "-s unknown",
            run_with(&sb, "droid", &resume_args("droid", unknown), "x"),
        ),
        ("--fork unknown", sb.run("droid", &fork_unknown, "x")),
        ("-s known, offline", {
            let args = resume_args("droid", &sid);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut c = sb.cmd("droid", &args);
            c.env("KOKINO_FAKE_DROID_OFFLINE", "1");
            sb.run_cmd(c, "x")
        }),
    ] {
        assert_eq!(run.code, Some(1), "{what}");
        assert_eq!(run.stdout, "", "{what}");
        assert_eq!(run.stderr, "", "{what}");
    }
    // Offline, --fork still works (it needs no server).
    let mut args = headless("droid");
    args.extend(["--fork", &sid]);
    let mut c = sb.cmd("droid", &args);
    c.env("KOKINO_FAKE_DROID_OFFLINE", "1");
    let run = sb.run_cmd(c, "y fake:turns");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        answer("droid", &run.events()).as_deref(),
        Some("echo: y turns=1")
    );
}

/// The messages of docs/reference/real-clis.md ("resume unknown session").
#[test]
fn resume_of_an_unknown_session_fails_with_each_clis_own_message() {
    let sb = Sandbox::new();
    let unknown = "3f1c1d1e-0000-4000-8000-000000000000";

    let run = run_with(&sb, "claude", &resume_args("claude", unknown), "x");
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.last()["errors"][0],
        format!("No conversation found with session ID: {unknown}")
    );

    let run = run_with(&sb, "codex", &resume_args("codex", unknown), "x");
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.contains(&format!(
            "Error: thread/resume: thread/resume failed: no rollout found for thread id {unknown} (code -32600)"
        )),
        "{}",
        run.stderr
    );

    let run = run_with(&sb, "gemini", &resume_args("gemini", unknown), "x");
    assert_eq!(run.code, Some(42));
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.starts_with(&format!(
            "Error resuming session: Invalid session identifier \"{unknown}\".\n  Searched for sessions in "
        )),
        "{}",
        run.stderr
    );

    let mut args = headless("gemini");
    args.extend(["--resume", "latest"]);
    let run = sb.run("gemini", &args, "x");
    assert_eq!(run.code, Some(42));
    assert_eq!(run.stdout, "");
    assert_eq!(run.stderr, "No previous sessions found for this project.\n");
}

/// Starts `agent` with `fake:ratelimit=retry`, collects what it prints for `watch`, then kills
/// it: the run must still be going (the CLI keeps retrying).
fn retrying(agent: &str, watch: Duration) -> (String, String) {
    let sb = Sandbox::new();
    let mut child = sb.spawn(agent, &headless(agent), "fake:ratelimit=retry hi");
    let (tx, rx) = mpsc::channel::<(bool, String)>();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send((false, line));
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send((true, line));
        }
    });
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let end = Instant::now() + watch;
    while let Ok((is_err, line)) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        let target = if is_err { &mut stderr } else { &mut stdout };
        target.push_str(&line);
        target.push('\n');
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "{agent}: still retrying after {watch:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    (stdout, stderr)
}

#[test]
fn ratelimit_retry_reports_each_attempt_and_never_gives_up() {
    let watch = Duration::from_millis(2500);
    let (_, stderr) = retrying("gemini", watch);
    let attempts: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("Attempt "))
        .collect();
    assert!(attempts.len() >= 2, "{stderr}");
    assert!(attempts[0].starts_with("Attempt 1 failed with status 429. Retrying with backoff..."));
    assert!(attempts[1].starts_with("Attempt 2 failed with status 429."));

    let (stdout, _) = retrying("claude", watch);
    let retries: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["subtype"] == "api_retry")
        .collect();
    assert!(retries.len() >= 2, "{stdout}");
    assert_eq!(retries[0]["attempt"], 1);
    assert_eq!(retries[0]["error_status"], 429);
    assert!(!stdout.contains("\"type\":\"result\""));

    let (stdout, _) = retrying("codex", watch);
    assert!(
        stdout.contains(
            "Reconnecting... 1/5 (exceeded retry limit, last status: 429 Too Many Requests)"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("turn.failed"));
}

/// Droid retries silently and only reports its give-up, as in droid-429.jsonl.
#[test]
fn droid_ratelimit_is_the_agent_loop_error_then_exec_failed() {
    let sb = Sandbox::new();
    for prompt in ["fake:ratelimit hi", "fake:ratelimit=retry hi"] {
        let run = sb.run("droid", &headless("droid"), prompt);
        assert_eq!(run.code, Some(1));
        let errors = run.of_type("error");
        assert_eq!(errors.len(), 2, "{}", run.stdout);
        assert_eq!(errors[0]["source"], "agent_loop");
        assert!(errors[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("429 {\"error\":{\"message\":\"Number of requests has exceeded your rate limit\",\"type\":\"rate_limit_error\"}"));
        assert_eq!(errors[1]["source"], "cli");
        assert_eq!(errors[1]["message"], "Exec failed");
    }
}
