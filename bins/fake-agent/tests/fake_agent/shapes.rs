//! The fake agent's lines must carry the same field names and JSON types as the real CLIs'
//! (`shared/captures/`), and the basic success flow of each personality must look right.

use crate::common::*;
use serde_json::Value;

/// Identifies "the same kind of line" across a capture and our output.
fn signature(v: &Value) -> String {
    let ty = v["type"].as_str().unwrap_or("<none>").to_owned();
    let mut sig = ty.clone();
    let mut add = |part: &Value| {
        if let Some(s) = part.as_str() {
            sig.push('/');
            sig.push_str(s);
        } else if let Some(b) = part.as_bool() {
            sig.push_str(if b { "/true" } else { "/false" });
        }
    };
    add(&v["subtype"]);
    match ty.as_str() {
        "stream_event" => add(&v["event"]["type"]),
        "user" => add(&v["message"]["content"][0]["type"]),
        "message" => add(&v["role"]),
        "result" => {
            add(&v["is_error"]);
            add(&v["status"]);
        }
        "tool_result" => add(&v["isError"]),
        t if t.starts_with("item.") => add(&v["item"]["type"]),
        _ => {}
    }
    sig
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every key of `want` must exist in `got` with the same JSON type (when `want` is not null),
/// recursively; array elements are compared pairwise when they are objects of the same `type`.
fn check_keys(want: &Value, got: &Value, path: &str, errors: &mut Vec<String>) {
    match (want, got) {
        // Maps keyed by model name: the names differ by setup, the per-model records must not.
        (Value::Object(w), Value::Object(g))
            if path.ends_with(".models") || path.ends_with(".modelUsage") =>
        {
            if let (Some(wv), Some(gv)) = (w.values().next(), g.values().next()) {
                check_keys(wv, gv, &format!("{path}.*"), errors);
            }
        }
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let p = format!("{path}.{k}");
                match g.get(k) {
                    None => errors.push(format!("missing {p}")),
                    Some(gv) => {
                        if !wv.is_null() && kind(wv) != kind(gv) {
                            errors.push(format!(
                                "{p}: capture has {}, fake has {}",
                                kind(wv),
                                kind(gv)
                            ));
                        } else {
                            check_keys(wv, gv, &p, errors);
                        }
                    }
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            for (i, (wv, gv)) in w.iter().zip(g.iter()).enumerate() {
                if wv.is_object() && gv.is_object() && wv.get("type") == gv.get("type") {
                    check_keys(wv, gv, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

/// Compares our events against a capture file: every kind of line in the capture must appear in
/// our output (except `ignore`d ones), with at least the capture's fields.
fn compare_with_capture(file: &str, ours: &[Value], ignore: &[&str]) {
    let dir = captures_dir();
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    let mut errors = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let want: Value = serde_json::from_str(line).unwrap();
        let sig = signature(&want);
        if ignore.contains(&sig.as_str()) {
            continue;
        }
        match ours.iter().find(|v| signature(v) == sig) {
            None => errors.push(format!("no line like {sig}")),
            Some(got) => check_keys(&want, got, &sig, &mut errors),
        }
    }
    assert!(errors.is_empty(), "{file}:\n  {}", errors.join("\n  "));
}

struct Case {
    capture: &'static str,
    agent: &'static str,
    args: Vec<&'static str>,
    prompt: &'static str,
    code: i32,
    ignore: Vec<&'static str>,
}

fn case(capture: &'static str, agent: &'static str, prompt: &'static str, code: i32) -> Case {
    Case {
        capture,
        agent,
        args: headless(agent),
        prompt,
        code,
        ignore: vec![],
    }
}

fn codex_fake_model() -> Vec<&'static str> {
    vec![
        "exec",
        "--json",
        "--skip-git-repo-check",
        "-m",
        "gpt-fake",
        "-",
    ]
}

#[test]
fn lines_match_real_captures() {
    let mut cases = vec![
        case("claude/claude-success.jsonl", "claude", "what is 2+2", 0),
        case("claude/claude-tool.jsonl", "claude", "fake:tool go", 0),
        case(
            "claude/claude-RATE429.jsonl",
            "claude",
            "fake:ratelimit go",
            1,
        ),
        case(
            "claude/claude-not-logged-in.jsonl",
            "claude",
            "fake:auth go",
            1,
        ),
        case("codex/codex-success.jsonl", "codex", "what is 2+2", 0),
        case("codex/codex-tool.jsonl", "codex", "fake:tool go", 0),
        case("codex/codex-429.jsonl", "codex", "fake:ratelimit go", 1),
        case("gemini/gemini-success.jsonl", "gemini", "what is 2+2", 0),
        case("gemini/gemini-tool.jsonl", "gemini", "fake:tool go", 0),
        case(
            "gemini/gemini-429-stuck-partial.jsonl",
            "gemini",
            "fake:ratelimit",
            1,
        ),
        case("droid/droid-success.jsonl", "droid", "what is 2+2", 0),
        case(
            "droid/droid-not-logged-in.jsonl",
            "droid",
            "fake:auth go",
            1,
        ),
        case("droid/droid-429.jsonl", "droid", "fake:ratelimit go", 1),
    ];
    let mut c = case("claude/claude-maxturns.jsonl", "claude", "fake:tool go", 1);
    c.args.extend(["--max-turns", "1"]);
    cases.push(c);
    let mut c = case(
        "claude/claude-partial.jsonl",
        "claude",
        "fake:stream=1 go",
        0,
    );
    c.args.push("--include-partial-messages");
    // `system/status` is only printed by the real CLI while a request is in flight.
    c.ignore.push("system/status");
    cases.push(c);
    let mut c = case("claude/claude-resume-bad.jsonl", "claude", "go", 1);
    c.args
        .extend(["--resume", "00000000-0000-4000-8000-000000000000"]);
    cases.push(c);
    let mut c = case("droid/droid-tool.jsonl", "droid", "fake:tool go", 0);
    // The capture's tool failed (`isError:true`); the fake's tool succeeds.
    c.ignore.push("tool_result/true");
    cases.push(c);
    for c in &mut cases {
        if c.agent == "codex" {
            c.args = codex_fake_model();
        }
    }

    let sb = Sandbox::new();
    for c in &cases {
        let run = sb.run(c.agent, &c.args, c.prompt);
        assert_eq!(
            run.code,
            Some(c.code),
            "{}: stderr {}",
            c.capture,
            run.stderr
        );
        compare_with_capture(c.capture, &run.events(), &c.ignore);
    }
}

#[test]
fn claude_success_flow() {
    let sb = Sandbox::new();
    let sid = "3f1e1a52-1a43-4d43-9a7e-0c8a1a6c2a11";
    let mut args = headless("claude");
    args.extend([
        "--session-id",
        sid,
        "--model",
        "claude-test",
        "--append-system-prompt",
        "be brief",
    ]);
    let run = sb.run("claude", &args, "  hello there\n");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let ev = run.events();
    assert_eq!(ev[0]["type"], "system");
    assert_eq!(ev[0]["subtype"], "init");
    assert_eq!(ev[0]["session_id"], sid);
    assert_eq!(ev[0]["model"], "claude-test");
    assert_eq!(
        ev[0]["cwd"],
        sb.work.canonicalize().unwrap().to_str().unwrap()
    );
    let assistant = &ev[1];
    assert_eq!(assistant["type"], "assistant");
    assert_eq!(assistant["message"]["content"][0]["type"], "text");
    assert_eq!(
        assistant["message"]["content"][0]["text"],
        "echo: hello there"
    );
    assert!(assistant["message"]["usage"]["input_tokens"].is_number());
    let r = ev.last().unwrap();
    assert_eq!(r["type"], "result");
    assert_eq!(r["subtype"], "success");
    assert_eq!(r["is_error"], false);
    assert_eq!(r["result"], "echo: hello there");
    assert_eq!(r["session_id"], sid);
    assert_eq!(r["num_turns"], 1);
    assert!(r["total_cost_usd"].is_number());
    assert!(r["usage"]["output_tokens"].is_number());
    assert_eq!(ev.len(), 3);
}

#[test]
fn every_personality_echoes_and_ends_with_its_terminal_event() {
    let sb = Sandbox::new();
    for (agent, terminal) in [
        ("claude", "result"),
        ("codex", "turn.completed"),
        ("gemini", "result"),
        ("droid", "completion"),
    ] {
        let run = sb.run(
            agent,
            &headless(agent),
            "fake:sleep=0.01 say  hi fake:tool\n",
        );
        assert_eq!(run.code, Some(0), "{agent}: {}", run.stderr);
        let ev = run.events();
        assert_eq!(ev.last().unwrap()["type"], terminal, "{agent}");
        assert_eq!(
            answer(agent, &ev).as_deref(),
            Some("echo: say  hi"),
            "{agent}"
        );
        assert!(!session_id(agent, &ev).is_empty());
    }
}

#[test]
fn non_stream_output_modes_print_the_answer() {
    let sb = Sandbox::new();
    let run = sb.run("claude", &["-p"], "plain");
    assert_eq!(run.stdout, "echo: plain\n");
    let run = sb.run("claude", &["-p", "--output-format", "json"], "obj");
    assert_eq!(run.events().len(), 1);
    assert_eq!(run.last()["result"], "echo: obj");
    let run = sb.run("codex", &["exec", "--skip-git-repo-check", "-"], "plain");
    assert_eq!(run.stdout, "echo: plain\n");
    let run = sb.run("gemini", &["-o", "json"], "obj");
    assert_eq!(run.last()["response"], "echo: obj");
    let run = sb.run("droid", &["exec", "-o", "json"], "obj");
    assert_eq!(run.last()["result"], "echo: obj");
}

#[test]
fn claude_stream_json_requires_verbose() {
    let sb = Sandbox::new();
    let run = sb.run("claude", &["-p", "--output-format", "stream-json"], "x");
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("requires --verbose"), "{}", run.stderr);
    assert!(run.stdout.is_empty());
}

#[test]
fn unknown_flags_are_ignored() {
    let sb = Sandbox::new();
    let mut args = headless("claude");
    args.extend([
        "--strange-flag",
        "--another=1",
        "--dangerously-skip-permissions",
        "--max-turns",
        "5",
    ]);
    let run = sb.run("claude", &args, "still works");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.events()[0]["permissionMode"], "bypassPermissions");
    assert_eq!(
        answer("claude", &run.events()).as_deref(),
        Some("echo: still works")
    );

    let run = sb.run(
        "codex",
        &[
            "exec",
            "--json",
            "--skip-git-repo-check",
            "-c",
            "a=b",
            "--weird",
            "-",
        ],
        "ok",
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(answer("codex", &run.events()).as_deref(), Some("echo: ok"));
}

#[test]
fn personality_from_as_flag_and_name_suffix() {
    let sb = Sandbox::new();
    let mut args = vec!["--as", "claude-code"];
    args.extend(headless("claude"));
    let run = sb.run(BIN, &args, "as flag");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.events()[0]["claude_code_version"], "2.1.197");

    let mut args = vec!["--as=factory-droid"];
    args.extend(headless("droid"));
    let run = sb.run(BIN, &args, "as flag");
    assert_eq!(run.last()["type"], "completion");

    std::os::unix::fs::symlink(BIN, sb.bin.join("my-gemini")).unwrap();
    let run = sb.run("my-gemini", &headless("gemini"), "suffix");
    assert_eq!(run.events()[0]["type"], "init");

    let run = sb.run(BIN, &[], "who am i");
    assert_eq!(run.code, Some(2));
}

#[test]
fn empty_prompt_is_refused_like_the_real_clis() {
    let sb = Sandbox::new();
    for (agent, code) in [("claude", 1), ("codex", 1), ("gemini", 42), ("droid", 1)] {
        let run = sb.run(agent, &headless(agent), "  \n");
        assert_eq!(run.code, Some(code), "{agent}");
        assert!(run.stdout.is_empty(), "{agent}");
    }
}

#[test]
fn version_lines() {
    let sb = Sandbox::new();
    for (agent, flag, want) in [
        ("claude", "--version", "2.1.197 (Claude Code)\n"),
        ("claude", "-v", "2.1.197 (Claude Code)\n"),
        ("codex", "--version", "codex-cli 0.169.0\n"),
        ("gemini", "--version", "0.61.0\n"),
        ("droid", "--version", "0.225.2\n"),
    ] {
        let run = sb.run(agent, &[flag], "");
        assert_eq!(run.code, Some(0));
        assert_eq!(run.stdout, want, "{agent}");
    }
}

#[test]
fn auth_status_commands() {
    let sb = Sandbox::new();
    let run = sb.run("claude", &["auth", "status"], "");
    assert_eq!(run.code, Some(0));
    assert_eq!(run.last()["loggedIn"], true);
    assert_eq!(run.last()["authMethod"], "claude.ai");

    let run = sb.run("codex", &["login", "status"], "");
    assert_eq!(run.code, Some(0));
    assert!(run.stderr.contains("Logged in using ChatGPT"));

    let mut c = sb.cmd("claude", &["auth", "status"]);
    c.env("KOKINO_FAKE_LOGGED_OUT", "1");
    let run = sb.run_cmd(c, "");
    assert_eq!(run.code, Some(1));
    assert_eq!(run.last()["loggedIn"], false);

    let mut c = sb.cmd("codex", &["login", "status"]);
    c.env("KOKINO_FAKE_LOGGED_OUT", "1");
    let run = sb.run_cmd(c, "");
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("Not logged in"));
}
