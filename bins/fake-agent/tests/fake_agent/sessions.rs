//! Session reuse and resume behave like the real CLIs, and state survives between runs.

use crate::common::*;

const SID: &str = "6b0e2a9e-0f1d-4c1e-9f55-0b8f3c1d2e4a";

#[test]
fn claude_session_id_reuse_fails_and_resume_continues() {
    let sb = Sandbox::new();
    let mut first = headless("claude");
    first.extend(["--session-id", SID]);
    let run = sb.run("claude", &first, "first");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("turn 1"), "{}", run.stderr);

    let run = sb.run("claude", &first, "again");
    assert_eq!(run.code, Some(1));
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr
            .contains(&format!("Session ID {SID} is already in use")),
        "{}",
        run.stderr
    );

    let mut resume = headless("claude");
    resume.extend(["--resume", SID]);
    let run = sb.run("claude", &resume, "second");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(session_id("claude", &run.events()), SID);
    assert_eq!(
        answer("claude", &run.events()).as_deref(),
        Some("echo: second")
    );
    assert!(run.stderr.contains("turn 2"), "{}", run.stderr);

    let run = sb.run("claude", &resume, "third");
    assert!(run.stderr.contains("turn 3"), "{}", run.stderr);

    // The session file remembers every prompt.
    let dir = sb.state.join("claude");
    let project = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let file = project.join(format!("{SID}.json"));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let prompts: Vec<&str> = saved["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["prompt"].as_str().unwrap())
        .collect();
    assert_eq!(prompts, ["first", "second", "third"]);
}

#[test]
fn claude_resume_unknown_or_other_cwd_gives_lone_error_result() {
    let sb = Sandbox::new();
    let mut first = headless("claude");
    first.extend(["--session-id", SID]);
    assert_eq!(sb.run("claude", &first, "x").code, Some(0));

    let mut resume = headless("claude");
    resume.extend(["--resume", "00000000-0000-4000-8000-000000000000"]);
    let run = sb.run("claude", &resume, "x");
    assert_eq!(run.code, Some(1));
    let ev = run.events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["type"], "result");
    assert_eq!(ev[0]["subtype"], "error_during_execution");
    assert_eq!(ev[0]["is_error"], true);
    assert_eq!(ev[0]["num_turns"], 0);
    assert!(ev[0].get("result").is_none());
    assert_eq!(
        ev[0]["errors"][0],
        "No conversation found with session ID: 00000000-0000-4000-8000-000000000000"
    );
    assert!(run.stderr.contains("No conversation found"));

    // Sessions are per cwd: the same id from another directory is unknown.
    let other = sb.dir.path().join("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    let mut resume = headless("claude");
    resume.extend(["--resume", SID]);
    let mut c = sb.cmd("claude", &resume);
    c.current_dir(&other);
    let run = sb.run_cmd(c, "x");
    assert_eq!(run.code, Some(1));
    assert_eq!(run.last()["subtype"], "error_during_execution");
}

#[test]
fn claude_rejects_a_non_uuid_session_id() {
    let sb = Sandbox::new();
    let mut args = headless("claude");
    args.extend(["--session-id", "not-a-uuid"]);
    let run = sb.run("claude", &args, "x");
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("Invalid session ID"));
}

#[test]
fn codex_resume() {
    let sb = Sandbox::new();
    let run = sb.run("codex", &headless("codex"), "first");
    assert_eq!(run.code, Some(0));
    let thread = session_id("codex", &run.events());

    let args = [
        "exec",
        "--json",
        "--skip-git-repo-check",
        "resume",
        &thread,
        "-",
    ];
    let run = sb.run("codex", &args, "second");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(session_id("codex", &run.events()), thread);
    assert_eq!(
        answer("codex", &run.events()).as_deref(),
        Some("echo: second")
    );
    assert!(run.stderr.contains("turn 2"));

    let args = [
        "exec",
        "--json",
        "--skip-git-repo-check",
        "resume",
        "0199-nope",
        "-",
    ];
    let run = sb.run("codex", &args, "x");
    assert_eq!(run.code, Some(1));
    assert!(run.stdout.is_empty());
    assert!(run.stderr.contains("no rollout found"), "{}", run.stderr);
}

#[test]
fn gemini_resume() {
    let sb = Sandbox::new();
    let run = sb.run("gemini", &headless("gemini"), "first");
    let sid = session_id("gemini", &run.events());

    let mut args = headless("gemini");
    args.extend(["--resume", &sid]);
    let run = sb.run("gemini", &args, "second");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(session_id("gemini", &run.events()), sid);
    assert!(run.stderr.contains("turn 2"));

    let mut args = headless("gemini");
    args.extend(["--resume", "latest"]);
    let run = sb.run("gemini", &args, "third");
    assert_eq!(session_id("gemini", &run.events()), sid);
    assert!(run.stderr.contains("turn 3"));

    let mut args = headless("gemini");
    args.extend(["--resume", "11111111-2222-4333-8444-555555555555"]);
    let run = sb.run("gemini", &args, "x");
    assert_eq!(run.code, Some(42));
    assert!(run.stdout.is_empty());
    assert!(run.stderr.contains("Error resuming session"));
}

#[test]
fn droid_resume() {
    let sb = Sandbox::new();
    let run = sb.run("droid", &headless("droid"), "first");
    let sid = session_id("droid", &run.events());

    let mut args = headless("droid");
    args.extend(["-s", &sid]);
    let run = sb.run("droid", &args, "second");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(session_id("droid", &run.events()), sid);
    assert_eq!(
        answer("droid", &run.events()).as_deref(),
        Some("echo: second")
    );

    // Like the real droid (droid-resume-s-offline, droid-fork-unknown): exit 1 without a word.
    let mut args = headless("droid");
    args.extend(["-s", "unknown-session"]);
    let run = sb.run("droid", &args, "x");
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "");
    assert_eq!(run.stderr, "");
}

#[test]
fn concurrent_new_sessions_with_one_id_let_exactly_one_win() {
    let sb = Sandbox::new();
    let mut args = headless("claude");
    args.extend(["--session-id", SID]);
    let children: Vec<_> = (0..6).map(|_| sb.spawn("claude", &args, "race")).collect();
    let codes: Vec<i32> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap().status.code().unwrap())
        .collect();
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 1).count(), 5, "{codes:?}");
}
