//! Property-style tests: whatever a CLI (or a broken pipe, or a wrong CLI type) puts on stdout,
//! the parsers never panic, count what they cannot use, and end in a class.
//!
//! The inputs are generated deterministically (a fixed-seed xorshift generator) so that a failure
//! reproduces exactly; no extra dependency is needed.

mod support;

use kokino_cli::{ProcessExit, StreamEvent};
use kokino_core::{CliType, OutcomeClass};
use serde_json::Value;
use support::{
    assert_counters_match, assert_summaries_bounded, capture_files, cli_of, lines_of, read_capture,
    run_parser,
};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn exit(code: i32) -> ProcessExit {
    ProcessExit {
        code: Some(code),
        signal: None,
    }
}

fn check_run(cli: CliType, lines: &[&str], what: &str) -> kokino_cli::ParsedOutcome {
    let (events, outcome) = run_parser(cli, lines.iter().copied(), exit(0), "");
    assert!(outcome.class.is_some(), "{what}: no class");
    assert_counters_match(&events, &outcome, what);
    assert_summaries_bounded(&events, what);
    outcome
}

#[test]
fn random_garbage_never_panics_and_is_counted() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let alphabet: &[u8] = b"{}[]\":,.0123456789eE+-truefalsnl \\u\t\x00\xff\xc3\xa9abc";
    for cli in CliType::ALL {
        let mut lines = Vec::new();
        for _ in 0..2000 {
            let len = rng.below(300) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.below(4) == 0 {
                        rng.next() as u8
                    } else {
                        alphabet[rng.below(alphabet.len() as u64) as usize]
                    }
                })
                .collect();
            lines.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let outcome = check_run(*cli, &refs, &format!("garbage as {cli:?}"));
        assert!(outcome.malformed_lines > 1500, "{cli:?}: {outcome:?}");
        assert_ne!(outcome.class, Some(OutcomeClass::Success));
    }
}

#[test]
fn non_object_json_and_typeless_objects_are_malformed() {
    let lines = [
        "null",
        "true",
        "1",
        "-1.5e308",
        "\"a string\"",
        "[]",
        "[{\"type\":\"result\"}]",
        "{}",
        "{\"type\":5}",
        "{\"type\":null}",
        "{\"type\":[\"result\"]}",
    ];
    for cli in CliType::ALL {
        let outcome = check_run(*cli, &lines, &format!("non-objects as {cli:?}"));
        assert_eq!(outcome.malformed_lines, lines.len() as u64, "{cli:?}");
        assert_eq!(outcome.unknown_events, 0);
        assert_eq!(outcome.class, Some(OutcomeClass::CliError));
    }
}

#[test]
fn blank_lines_are_neither_events_nor_garbage() {
    for cli in CliType::ALL {
        let outcome = check_run(*cli, &["", "  ", "\r", "\t"], "blank");
        assert_eq!(outcome.malformed_lines, 0);
        assert_eq!(outcome.unknown_events, 0);
    }
}

#[test]
fn unknown_event_types_are_counted_and_ignored() {
    let lines = [
        r#"{"type":"brand_new_event","payload":{"x":1}}"#,
        r#"{"type":"","x":1}"#,
    ];
    for cli in CliType::ALL {
        let outcome = check_run(*cli, &lines, "unknown");
        assert_eq!(outcome.unknown_events, 2, "{cli:?}");
        assert_eq!(outcome.malformed_lines, 0);
    }
}

/// Every strict prefix of every capture line is a truncated JSON object: each one must be
/// reported as malformed, once, and the parser must keep going.
#[test]
fn truncated_capture_lines_are_counted_as_malformed() {
    for file in capture_files() {
        if !file.ends_with(".jsonl") {
            continue;
        }
        let cli = cli_of(&file);
        let text = read_capture(&file);
        for line in lines_of(&text) {
            // Long lines are cut at a stride so the test stays fast; every short prefix is tried.
            let boundaries: Vec<usize> = line
                .char_indices()
                .map(|(i, _)| i)
                .filter(|&i| i > 0)
                .enumerate()
                .filter(|(n, _)| *n < 64 || n % 37 == 0)
                .map(|(_, i)| i)
                .collect();
            let prefixes: Vec<&str> = boundaries.iter().filter_map(|&i| line.get(..i)).collect();
            let outcome = check_run(cli, &prefixes, &format!("prefixes of {file}"));
            let non_blank = prefixes.iter().filter(|p| !p.trim().is_empty()).count() as u64;
            assert_eq!(outcome.malformed_lines, non_blank, "{file}");
        }
    }
}

/// Replaces one field at a time of every capture event with a value of another JSON type (and
/// drops it), to show that no accessor assumes a type: the parsers use checked access only.
#[test]
fn fields_of_unexpected_types_never_panic() {
    let replacements = [
        Value::Null,
        Value::Bool(true),
        serde_json::json!(-1),
        serde_json::json!(1.5e300),
        serde_json::json!(u64::MAX),
        serde_json::json!("s"),
        serde_json::json!([]),
        serde_json::json!([1, "x", null]),
        serde_json::json!({}),
    ];
    for file in capture_files() {
        if !file.ends_with(".jsonl") {
            continue;
        }
        let cli = cli_of(&file);
        let text = read_capture(&file);
        let originals: Vec<Value> = lines_of(&text)
            .into_iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        for (idx, original) in originals.iter().enumerate() {
            let mut paths = Vec::new();
            collect_paths(original, &mut Vec::new(), &mut paths, 0);
            for path in &paths {
                let mut mutated_lines = Vec::new();
                for r in replacements.iter().map(Some).chain([None]) {
                    let mut v = original.clone();
                    mutate(&mut v, path, r);
                    mutated_lines.push(v.to_string());
                }
                // Feed the mutated line in the context of the real stream, then finish.
                let mut lines: Vec<String> = originals.iter().map(Value::to_string).collect();
                for m in mutated_lines {
                    lines[idx] = m;
                    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
                    check_run(cli, &refs, &format!("{file} line {idx} path {path:?}"));
                }
            }
        }
    }
}

/// Object keys down to depth 4 (array elements by index for the first few), skipping the long
/// static lists (`tools`, `slash_commands`, …) whose elements the parsers never read.
fn collect_paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>, depth: usize) {
    if depth >= 5 {
        return;
    }
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                prefix.push(k.clone());
                out.push(prefix.clone());
                if !matches!(
                    k.as_str(),
                    "tools" | "slash_commands" | "skills" | "agents" | "plugins" | "mcp_servers"
                ) {
                    collect_paths(child, prefix, out, depth + 1);
                }
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate().take(3) {
                prefix.push(i.to_string());
                out.push(prefix.clone());
                collect_paths(child, prefix, out, depth + 1);
                prefix.pop();
            }
        }
        _ => {}
    }
}

/// Sets (or with `None` removes) the value at `path`.
fn mutate(v: &mut Value, path: &[String], replacement: Option<&Value>) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for p in parents {
        cur = match cur {
            Value::Object(m) => match m.get_mut(p) {
                Some(c) => c,
                None => return,
            },
            Value::Array(a) => match p.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(c) => c,
                None => return,
            },
            _ => return,
        };
    }
    match (cur, replacement) {
        (Value::Object(m), Some(r)) => {
            m.insert(last.clone(), r.clone());
        }
        (Value::Object(m), None) => {
            m.remove(last);
        }
        (Value::Array(a), r) => {
            if let Some(i) = last.parse::<usize>().ok().filter(|i| *i < a.len()) {
                match r {
                    Some(r) => a[i] = r.clone(),
                    None => {
                        a.remove(i);
                    }
                }
            }
        }
        _ => {}
    }
}

#[test]
fn huge_lines_never_panic_and_big_answers_survive() {
    let garbage = "x".repeat(8 * 1024 * 1024);
    let deep = "[".repeat(100_000);
    let big_answer = "A".repeat(5 * 1024 * 1024);
    let big_tool_output = "o".repeat(5 * 1024 * 1024);
    for cli in CliType::ALL {
        let outcome = check_run(*cli, &[&garbage, &deep], &format!("huge as {cli:?}"));
        assert_eq!(outcome.malformed_lines, 2);
    }

    let claude = [
        format!(
            r#"{{"type":"user","message":{{"content":[{{"type":"tool_result","content":"{big_tool_output}","is_error":false}}]}}}}"#
        ),
        format!(
            r#"{{"type":"result","subtype":"success","is_error":false,"result":"{big_answer}","session_id":"s"}}"#
        ),
    ];
    let codex = [
        format!(
            r#"{{"type":"item.completed","item":{{"id":"1","type":"command_execution","command":"cat big","aggregated_output":"{big_tool_output}","exit_code":0,"status":"completed"}}}}"#
        ),
        format!(
            r#"{{"type":"item.completed","item":{{"id":"2","type":"agent_message","text":"{big_answer}"}}}}"#
        ),
        r#"{"type":"turn.completed","usage":{}}"#.to_owned(),
    ];
    let gemini = [
        format!(
            r#"{{"type":"tool_result","tool_id":"t","status":"success","output":"{big_tool_output}"}}"#
        ),
        format!(r#"{{"type":"message","role":"assistant","content":"{big_answer}","delta":true}}"#),
        r#"{"type":"result","status":"success","stats":{}}"#.to_owned(),
    ];
    let droid = [
        format!(r#"{{"type":"tool_result","id":"t","isError":false,"value":"{big_tool_output}"}}"#),
        format!(r#"{{"type":"completion","finalText":"{big_answer}"}}"#),
    ];
    for (cli, lines) in [
        (CliType::ClaudeCode, &claude[..]),
        (CliType::Codex, &codex[..]),
        (CliType::Gemini, &gemini[..]),
        (CliType::FactoryDroid, &droid[..]),
    ] {
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let (events, outcome) = run_parser(cli, refs.iter().copied(), exit(0), "");
        assert_eq!(outcome.class, Some(OutcomeClass::Success), "{cli:?}");
        assert_eq!(
            outcome.answer.as_deref().map(str::len),
            Some(big_answer.len())
        );
        assert_summaries_bounded(&events, &format!("big tool output as {cli:?}"));
        assert!(
            events
                .iter()
                .any(|e| matches!(e, StreamEvent::ToolResult { summary, .. } if summary.starts_with("ooo"))),
            "{cli:?}: tool result summarised"
        );
    }
}

#[test]
fn finish_without_any_input_is_a_cli_error_with_the_stderr_tail() {
    for cli in CliType::ALL {
        let (_, o) = run_parser(
            *cli,
            [],
            ProcessExit {
                code: None,
                signal: Some(9),
            },
            "fatal: something broke\n",
        );
        assert_eq!(o.class, Some(OutcomeClass::CliError), "{cli:?}");
        let msg = o.error_message.unwrap_or_default();
        assert!(
            msg.contains("missing final event (signal 9)"),
            "{cli:?}: {msg}"
        );
        assert!(msg.contains("fatal: something broke"), "{cli:?}: {msg}");
    }
    // A huge stderr tail is bounded in the message.
    let (_, o) = run_parser(CliType::Codex, [], exit(1), &"e".repeat(1_000_000));
    assert!(o.error_message.unwrap_or_default().chars().count() <= 2000);
}

#[test]
fn exit_zero_without_a_final_event_is_not_success() {
    for (cli, first_line) in [
        (
            CliType::ClaudeCode,
            r#"{"type":"system","subtype":"init","session_id":"s"}"#,
        ),
        (
            CliType::Codex,
            r#"{"type":"thread.started","thread_id":"s"}"#,
        ),
        (CliType::Gemini, r#"{"type":"init","session_id":"s"}"#),
        (
            CliType::FactoryDroid,
            r#"{"type":"system","subtype":"init","session_id":"s"}"#,
        ),
    ] {
        let (_, o) = run_parser(cli, [first_line], exit(0), "");
        assert_eq!(o.class, Some(OutcomeClass::CliError), "{cli:?}");
        assert_eq!(o.session_id.as_deref(), Some("s"));
        assert_eq!(
            o.error_message.as_deref(),
            Some("missing final event (exit code 0)")
        );
    }
}
