//! The `fake:` prompt tokens and `KOKINO_FAKE_LOGGED_OUT`.

use std::time::{Duration, Instant};

use crate::common::*;

const AGENTS: [&str; 4] = ["claude", "codex", "gemini", "droid"];

#[test]
fn exit_token_prints_an_error_terminal_event_and_exits_with_the_code() {
    let sb = Sandbox::new();
    for agent in AGENTS {
        let run = sb.run(agent, &headless(agent), "boom fake:exit=7");
        assert_eq!(run.code, Some(7), "{agent}");
        let last = run.last();
        match agent {
            "claude" => {
                assert_eq!(last["type"], "result");
                assert_eq!(last["is_error"], true);
                assert_eq!(last["subtype"], "error_during_execution");
                assert!(last["errors"][0].as_str().unwrap().contains("fake:exit=7"));
            }
            "codex" => {
                assert_eq!(last["type"], "turn.failed");
                assert!(last["error"]["message"].is_string());
            }
            "gemini" => {
                assert_eq!(last["type"], "result");
                assert_eq!(last["status"], "error");
                assert!(last["error"]["message"].is_string());
            }
            "droid" => {
                assert_eq!(last["type"], "error");
                assert_eq!(last["source"], "cli");
            }
            _ => unreachable!(),
        }
        assert_eq!(
            answer(agent, &run.events()),
            None,
            "{agent}: no answer on failure"
        );
    }
}

fn check_auth_failure(agent: &str, run: &Run) {
    match agent {
        "claude" => {
            assert_eq!(run.code, Some(1));
            let ev = run.events();
            assert_eq!(ev[0]["subtype"], "init");
            assert_eq!(ev[1]["type"], "assistant");
            assert_eq!(ev[1]["error"], "authentication_failed");
            let r = ev.last().unwrap();
            assert_eq!(r["subtype"], "success");
            assert_eq!(r["is_error"], true);
            assert_eq!(r["result"], "Not logged in · Please run /login");
        }
        "codex" => {
            assert_eq!(run.code, Some(1));
            let last = run.last();
            assert_eq!(last["type"], "turn.failed");
            assert!(last["error"]["message"].as_str().unwrap().contains("401"));
        }
        "gemini" => {
            assert_eq!(run.code, Some(41));
            assert!(run.stdout.is_empty());
            assert!(
                run.stderr.contains("Please set an Auth method"),
                "{}",
                run.stderr
            );
        }
        "droid" => {
            assert_eq!(run.code, Some(1));
            let ev = run.events();
            assert_eq!(ev[0]["subtype"], "init");
            let last = ev.last().unwrap();
            assert_eq!(last["type"], "error");
            assert!(last["message"]
                .as_str()
                .unwrap()
                .contains("Authentication failed"));
        }
        _ => unreachable!(),
    }
}

#[test]
fn auth_token_and_logged_out_env_fail_like_the_cli() {
    let sb = Sandbox::new();
    for agent in AGENTS {
        let run = sb.run(agent, &headless(agent), "fake:auth hi");
        check_auth_failure(agent, &run);

        let mut c = sb.cmd(agent, &headless(agent));
        c.env("KOKINO_FAKE_LOGGED_OUT", "1");
        let run = sb.run_cmd(c, "hi");
        check_auth_failure(agent, &run);
    }
}

#[test]
fn gemini_json_mode_auth_error_is_a_json_object_on_stderr() {
    let sb = Sandbox::new();
    let run = sb.run("gemini", &["-o", "json"], "fake:auth");
    assert_eq!(run.code, Some(41));
    let err: serde_json::Value = serde_json::from_str(&run.stderr).unwrap();
    assert_eq!(err["error"]["code"], 41);
    assert!(err["session_id"].is_string());
}

#[test]
fn ratelimit_token() {
    let sb = Sandbox::new();
    for agent in AGENTS {
        let run = sb.run(agent, &headless(agent), "fake:ratelimit hi");
        assert_eq!(run.code, Some(1), "{agent}");
        let ev = run.events();
        let last = ev.last().unwrap();
        match agent {
            "claude" => {
                assert_eq!(last["api_error_status"], 429);
                assert_eq!(last["is_error"], true);
                let retries = ev.iter().filter(|e| e["subtype"] == "api_retry").count();
                assert_eq!(retries, 2);
                let rl = ev.iter().find(|e| e["type"] == "rate_limit_event").unwrap();
                assert_eq!(rl["rate_limit_info"]["status"], "rejected");
                let resets = rl["rate_limit_info"]["resetsAt"].as_i64().unwrap();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64;
                assert!((now + 50..=now + 70).contains(&resets), "{resets} vs {now}");
                let synthetic = ev.iter().find(|e| e["type"] == "assistant").unwrap();
                assert_eq!(synthetic["error"], "rate_limit");
            }
            "codex" => {
                assert_eq!(last["type"], "turn.failed");
                assert!(last["error"]["message"].as_str().unwrap().contains("429"));
            }
            "gemini" => {
                assert_eq!(last["status"], "error");
                assert!(run.stderr.contains("429"));
            }
            "droid" => {
                // droid-429.jsonl: the agent loop's 429, then the generic give-up.
                assert_eq!(last["type"], "error");
                assert_eq!(last["message"], "Exec failed");
                let cause = &ev[ev.len() - 2];
                assert_eq!(cause["source"], "agent_loop");
                assert!(cause["message"].as_str().unwrap().contains("429"));
            }
            _ => unreachable!(),
        }
    }
}

#[test]
fn malformed_token_mixes_bad_lines_but_succeeds() {
    let sb = Sandbox::new();
    for agent in AGENTS {
        let run = sb.run(agent, &headless(agent), "fake:malformed hi");
        assert_eq!(run.code, Some(0), "{agent}");
        let bad: Vec<&str> = run
            .stdout
            .lines()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_err())
            .collect();
        assert_eq!(bad.len(), 2, "{agent}: {bad:?}");
        assert!(
            bad.iter().any(|l| l.starts_with('{')),
            "a truncated JSON line"
        );
        assert!(bad.iter().any(|l| !l.starts_with('{')), "a non-JSON line");
        assert_eq!(
            answer(agent, &run.json_lines()).as_deref(),
            Some("echo: hi")
        );
    }
}

#[test]
fn noresult_token_exits_zero_without_the_terminal_event() {
    let sb = Sandbox::new();
    for (agent, terminal) in [
        ("claude", "result"),
        ("codex", "turn.completed"),
        ("gemini", "result"),
        ("droid", "completion"),
    ] {
        let run = sb.run(agent, &headless(agent), "fake:noresult hi");
        assert_eq!(run.code, Some(0), "{agent}");
        assert!(run.of_type(terminal).is_empty(), "{agent}");
        assert!(!run.events().is_empty());
    }
}

#[test]
fn big_token_answers_exactly_that_many_bytes_on_one_line() {
    let sb = Sandbox::new();
    for agent in AGENTS {
        let run = sb.run(agent, &headless(agent), "fake:big=1MB");
        assert_eq!(run.code, Some(0), "{agent}");
        let a = answer(agent, &run.events()).unwrap();
        assert_eq!(a.len(), 1024 * 1024, "{agent}");
        assert!(a.bytes().all(|b| b == b'x'));
    }
    let run = sb.run("codex", &headless("codex"), "fake:big=123");
    assert_eq!(answer("codex", &run.events()).unwrap().len(), 123);
}

#[test]
fn tool_token_emits_the_cli_tool_events() {
    let sb = Sandbox::new();

    let run = sb.run("claude", &headless("claude"), "fake:tool hi");
    let ev = run.events();
    let tool_use = &ev[1]["message"]["content"][0];
    assert_eq!(tool_use["type"], "tool_use");
    assert_eq!(tool_use["name"], "Bash");
    let result = &ev[2]["message"]["content"][0];
    assert_eq!(ev[2]["type"], "user");
    assert_eq!(result["type"], "tool_result");
    assert_eq!(result["tool_use_id"], tool_use["id"]);
    assert_eq!(run.last()["num_turns"], 2);
    assert_eq!(answer("claude", &ev).as_deref(), Some("echo: hi"));

    let run = sb.run("codex", &headless("codex"), "fake:tool hi");
    let items: Vec<_> = run
        .events()
        .into_iter()
        .filter(|e| e["item"]["type"] == "command_execution")
        .collect();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["type"], "item.started");
    assert_eq!(items[1]["item"]["status"], "completed");
    assert_eq!(items[1]["item"]["exit_code"], 0);

    let run = sb.run("gemini", &headless("gemini"), "fake:tool hi");
    let uses = run.of_type("tool_use");
    let results = run.of_type("tool_result");
    assert_eq!(uses[0]["tool_id"], results[0]["tool_id"]);
    assert_eq!(results[0]["status"], "success");
    assert_eq!(run.last()["stats"]["tool_calls"], 1);

    let run = sb.run("droid", &headless("droid"), "fake:tool hi");
    let calls = run.of_type("tool_call");
    let results = run.of_type("tool_result");
    assert_eq!(calls[0]["id"], results[0]["id"]);
    assert_eq!(results[0]["isError"], false);
    assert_eq!(run.last()["numTurns"], 2);
}

#[test]
fn claude_max_turns_one_with_a_tool_is_error_max_turns() {
    let sb = Sandbox::new();
    let mut args = headless("claude");
    args.extend(["--max-turns", "1"]);
    let run = sb.run("claude", &args, "fake:tool hi");
    assert_eq!(run.code, Some(1));
    let r = run.last();
    assert_eq!(r["subtype"], "error_max_turns");
    assert_eq!(r["errors"][0], "Reached maximum number of turns (1)");
}

#[test]
fn stream_token_emits_partials_that_add_up_over_the_sleep() {
    let sb = Sandbox::new();
    for agent in AGENTS {
        let started = Instant::now();
        let run = sb.run(
            agent,
            &headless(agent),
            "fake:stream=4 fake:sleep=0.2 streamed text",
        );
        assert!(started.elapsed() >= Duration::from_millis(200), "{agent}");
        assert_eq!(run.code, Some(0), "{agent}");
        let ev = run.events();
        let partials: Vec<String> = match agent {
            "claude" => ev
                .iter()
                .filter(|e| {
                    e["type"] == "stream_event" && e["event"]["type"] == "content_block_delta"
                })
                .map(|e| e["event"]["delta"]["text"].as_str().unwrap().to_owned())
                .collect(),
            "codex" => {
                // item.updated carries the text so far; turn it back into deltas.
                let mut prev = String::new();
                ev.iter()
                    .filter(|e| e["type"] == "item.updated")
                    .map(|e| {
                        let now = e["item"]["text"].as_str().unwrap().to_owned();
                        let delta = now[prev.len()..].to_owned();
                        prev = now;
                        delta
                    })
                    .collect()
            }
            "gemini" | "droid" => {
                let key = if agent == "gemini" { "content" } else { "text" };
                ev.iter()
                    .filter(|e| e["type"] == "message" && e["role"] == "assistant")
                    .map(|e| e[key].as_str().unwrap().to_owned())
                    .collect()
            }
            _ => unreachable!(),
        };
        assert_eq!(partials.len(), 4, "{agent}");
        assert_eq!(partials.concat(), "echo: streamed text", "{agent}");
        assert_eq!(
            answer(agent, &ev).as_deref(),
            Some("echo: streamed text"),
            "{agent}"
        );
    }
}

#[test]
fn sleep_token_delays_the_answer() {
    let sb = Sandbox::new();
    let started = Instant::now();
    let run = sb.run("claude", &headless("claude"), "fake:sleep=0.25 zzz");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        answer("claude", &run.events()).as_deref(),
        Some("echo: zzz")
    );
}

#[test]
fn mem_token_holds_resident_memory() {
    let sb = Sandbox::new();
    let mut child = sb.spawn("codex", &headless("codex"), "fake:mem=32MB fake:sleep=5");
    let pid = child.id();
    // Poll VmRSS until the allocation shows up (or give up after a few seconds).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut rss_kb = 0;
    while Instant::now() < deadline {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            rss_kb = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            if rss_kb >= 32 * 1024 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(rss_kb >= 32 * 1024, "VmRSS was {rss_kb} kB");
}

#[test]
fn tokens_are_removed_from_the_echo() {
    let sb = Sandbox::new();
    let run = sb.run(
        "droid",
        &headless("droid"),
        "fake:sleep=0 first fake:unknown-thing line\nsecond line fake:tool",
    );
    assert_eq!(
        answer("droid", &run.events()).as_deref(),
        Some("echo: first line\nsecond line")
    );
    assert!(run.stderr.contains("fake:unknown-thing"));
}
