//! Process-level behaviour: signals, hanging, grandchildren, broken pipes and the witness log.

use std::io::{BufRead, BufReader, Read};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::*;

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to a child we spawned and have not reaped yet.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0);
}

/// Reads stdout lines until one satisfies `pred`, so signals are sent only once the agent is
/// demonstrably working (its handlers are installed before it prints anything).
fn read_until(reader: &mut impl BufRead, pred: impl Fn(&serde_json::Value) -> bool) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "stdout closed early: {lines:?}");
        let done = serde_json::from_str(&line)
            .map(|v| pred(&v))
            .unwrap_or(false);
        lines.push(line);
        if done {
            return lines;
        }
    }
}

/// Waits for exit with a deadline, so a regression fails the test instead of hanging it.
fn wait_for(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn is_init(v: &serde_json::Value) -> bool {
    v["subtype"] == "init" || v["type"] == "init" || v["type"] == "turn.started"
}

#[test]
fn hang_prints_init_then_sigterm_exits_143_without_a_result() {
    let sb = Sandbox::new();
    for agent in ["claude", "codex", "gemini", "droid"] {
        let mut child = sb.spawn(agent, &headless(agent), "fake:hang");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        read_until(&mut out, is_init);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            child.try_wait().unwrap().is_none(),
            "{agent} must still hang"
        );
        signal(&child, libc::SIGTERM);
        let status = wait_for(&mut child, Duration::from_secs(5)).expect("exits on SIGTERM");
        assert_eq!(status.code(), Some(143), "{agent}");
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        assert!(!rest.contains("\"result\""), "{agent}: {rest}");
    }
}

#[test]
fn ignore_term_survives_sigterm_but_not_sigkill() {
    let sb = Sandbox::new();
    let mut child = sb.spawn("claude", &headless("claude"), "fake:hang fake:ignore-term");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    read_until(&mut out, is_init);
    signal(&child, libc::SIGTERM);
    assert!(wait_for(&mut child, Duration::from_millis(300)).is_none());
    signal(&child, libc::SIGKILL);
    let status = wait_for(&mut child, Duration::from_secs(5)).expect("SIGKILL works");
    assert_eq!(status.code(), None);
}

#[test]
fn sigint_mid_turn_follows_each_cli() {
    let sb = Sandbox::new();

    // claude: an interrupted user line, an error_during_execution result, exit 0.
    let mut child = sb.spawn("claude", &headless("claude"), "fake:sleep=30 hi");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    read_until(&mut out, is_init);
    signal(&child, libc::SIGINT);
    let status = wait_for(&mut child, Duration::from_secs(5)).expect("exits on SIGINT");
    assert_eq!(status.code(), Some(0));
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let last: serde_json::Value = serde_json::from_str(rest.lines().last().unwrap()).unwrap();
    assert_eq!(last["subtype"], "error_during_execution");
    assert_eq!(last["terminal_reason"], "aborted_streaming");

    // codex exits 1 and droid 130, both without a terminal event.
    for (agent, code) in [("codex", 1), ("droid", 130)] {
        let mut child = sb.spawn(agent, &headless(agent), "fake:sleep=30 hi");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        read_until(&mut out, is_init);
        signal(&child, libc::SIGINT);
        let status = wait_for(&mut child, Duration::from_secs(5)).expect("exits on SIGINT");
        assert_eq!(status.code(), Some(code), "{agent}");
    }

    // gemini ignores SIGINT until the reply is there, then succeeds.
    let mut child = sb.spawn("gemini", &headless("gemini"), "fake:sleep=0.4 hi");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    read_until(&mut out, is_init);
    signal(&child, libc::SIGINT);
    let status = wait_for(&mut child, Duration::from_secs(5)).expect("finishes");
    assert_eq!(status.code(), Some(0));
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("\"status\":\"success\""));
}

#[test]
fn child_token_leaves_a_grandchild_in_the_same_process_group() {
    let sb = Sandbox::new();
    let run = sb.run("droid", &headless("droid"), "fake:child hi");
    assert_eq!(run.code, Some(0));
    let pid: i32 = run
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("fake-child-pid="))
        .expect("pid on stderr")
        .parse()
        .unwrap();
    // The agent has exited but the grandchild lives on.
    // SAFETY: signal 0 only checks that the process exists.
    assert_eq!(unsafe { libc::kill(pid, 0) }, 0, "grandchild alive");
    // It is in the agent's group (our own group here, since we did not start a new one).
    // SAFETY: getpgid/getpgrp only read process attributes.
    assert_eq!(unsafe { libc::getpgid(pid) }, unsafe { libc::getpgrp() });
    // SAFETY: killing the grandchild we just verified exists.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

#[test]
fn broken_pipe_ends_the_run_quietly() {
    let sb = Sandbox::new();
    let mut child = sb.spawn("claude", &headless("claude"), "fake:big=8MB");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    read_until(&mut out, is_init);
    drop(out);
    let status = wait_for(&mut child, Duration::from_secs(10)).expect("exits on EPIPE");
    assert_eq!(status.code(), Some(141));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn witness_log_records_start_and_end_of_each_run() {
    let sb = Sandbox::new();
    let log = sb.dir.path().join("witness.log");
    for agent in ["claude", "codex"] {
        let mut c = sb.cmd(agent, &headless(agent));
        c.env("KOKINO_FAKE_LOG", &log);
        let run = sb.run_cmd(c, "fake:sleep=0.05 hi");
        assert_eq!(run.code, Some(0));
    }
    // A run killed by SIGTERM still records its end (the handler writes it before exit 143).
    let mut c = sb.cmd("gemini", &headless("gemini"));
    c.env("KOKINO_FAKE_LOG", &log)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"fake:hang").unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    read_until(&mut out, is_init);
    signal(&child, libc::SIGTERM);
    assert_eq!(
        wait_for(&mut child, Duration::from_secs(5)).unwrap().code(),
        Some(143)
    );

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 6, "{text}");
    let cwd = sb.work.canonicalize().unwrap();
    let mut prev_end: u128 = 0;
    for (i, pair) in lines.chunks(2).enumerate() {
        let (start, end) = (&pair[0], &pair[1]);
        assert_eq!(start[0], "start");
        assert_eq!(end[0], "end");
        assert_eq!(start[1], end[1], "same pid");
        let t0: u128 = start[2].parse().unwrap();
        let t1: u128 = end[2].parse().unwrap();
        assert!(
            t0 <= t1 && prev_end <= t0,
            "runs are ordered and do not overlap"
        );
        prev_end = t1;
        // The cwd may contain spaces, so the personality is the last field.
        assert_eq!(*start.last().unwrap(), ["claude", "codex", "gemini"][i]);
        assert_eq!(start[3..start.len() - 1].join(" "), cwd.to_str().unwrap());
    }
}
