//! The parsers against the real CLIs' output in `shared/captures/` (see its README).
//!
//! Each capture is fed line by line, exactly as it is, with the exit code the README index gives
//! for it, through `kokino_cli::parser_for` — the same entry point the executor uses. Every file
//! of the folder must have a case below (`every_capture_file_has_a_case`), so a new capture cannot
//! be skipped silently.

mod support;

use std::collections::BTreeMap;

use kokino_cli::{ParsedOutcome, ProcessExit, RunContext, StreamEvent};
use kokino_core::{OutcomeClass, Usage};
use support::{
    assert_counters_match, assert_summaries_bounded, capture_files, captures_dir, cli_of, lines_of,
    read_capture, run_parser, run_parser_with_stderr,
};

/// How a capture file is used.
enum Kind {
    /// A JSON-lines stream from stdout: fed line by line.
    Stream,
    /// The file is what the CLI printed on stderr; stdout was empty.
    StderrOnly,
    /// Not a stream this crate parses; the reason is part of the test's record.
    Skipped(&'static str),
    /// The stderr of another capture's run (`x.stderr` next to `x.jsonl` or `x.stdout`): it is
    /// read by that capture's case, which must name it.
    StderrOf(&'static str),
}

struct Case {
    file: &'static str,
    kind: Kind,
    class: Option<OutcomeClass>,
    answer: Option<&'static str>,
    session: Option<&'static str>,
    usage: Option<Usage>,
    cost_usd: Option<f64>,
    num_turns: Option<u32>,
    /// A substring of the error message (failures only).
    message: Option<&'static str>,
    /// How many `Final` events the stream must contain.
    finals: usize,
    /// Further checks on the events.
    check: Option<fn(&[StreamEvent])>,
    /// Whether a successful run also streamed its answer as assistant text.
    answer_streamed: bool,
    /// The capture of the same run's stderr, fed line by line and as the tail.
    stderr: Option<&'static str>,
    /// The run resumed a session (the parser is told so).
    resuming: bool,
    /// The outcome must say the session to resume was not found.
    session_not_found: bool,
    /// How many `RateLimited` events the run must report (stdout and stderr together).
    rate_limited_events: usize,
}

const fn usage(input: u64, output: u64, cache_read: u64, cache_creation: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: cache_read,
        cache_creation_tokens: cache_creation,
    }
}

impl Case {
    const fn stream(file: &'static str, class: OutcomeClass) -> Case {
        Case {
            file,
            kind: Kind::Stream,
            class: Some(class),
            answer: None,
            session: None,
            usage: None,
            cost_usd: None,
            num_turns: None,
            message: None,
            finals: 1,
            check: None,
            answer_streamed: true,
            stderr: None,
            resuming: false,
            session_not_found: false,
            rate_limited_events: 0,
        }
    }
    const fn stderr_of(file: &'static str, stream: &'static str) -> Case {
        let mut c = Case::skipped(file, "");
        c.kind = Kind::StderrOf(stream);
        c
    }
    const fn with_stderr(mut self, file: &'static str) -> Case {
        self.stderr = Some(file);
        self
    }
    const fn resuming(mut self) -> Case {
        self.resuming = true;
        self
    }
    const fn session_not_found(mut self) -> Case {
        self.session_not_found = true;
        self
    }
    const fn rate_limited(mut self, n: usize) -> Case {
        self.rate_limited_events = n;
        self
    }
    const fn skipped(file: &'static str, reason: &'static str) -> Case {
        let mut c = Case::stream(file, OutcomeClass::CliError);
        c.kind = Kind::Skipped(reason);
        c.class = None;
        c
    }
    const fn answer(mut self, a: &'static str) -> Case {
        self.answer = Some(a);
        self
    }
    const fn session(mut self, s: &'static str) -> Case {
        self.session = Some(s);
        self
    }
    const fn usage(mut self, u: Usage) -> Case {
        self.usage = Some(u);
        self
    }
    const fn cost(mut self, c: f64) -> Case {
        self.cost_usd = Some(c);
        self
    }
    const fn turns(mut self, n: u32) -> Case {
        self.num_turns = Some(n);
        self
    }
    const fn message(mut self, m: &'static str) -> Case {
        self.message = Some(m);
        self
    }
    const fn finals(mut self, n: usize) -> Case {
        self.finals = n;
        self
    }
    const fn answer_not_streamed(mut self) -> Case {
        self.answer_streamed = false;
        self
    }
    const fn check(mut self, f: fn(&[StreamEvent])) -> Case {
        self.check = Some(f);
        self
    }
}

use OutcomeClass::{AuthError, CliError, RateLimited, Success};

fn cases() -> Vec<Case> {
    vec![
        // ---- claude ----
        Case::stream("claude/claude-success.jsonl", Success)
            .answer("FAKE_ANSWER: 4")
            .session("fa2eda35-0418-4dc9-a6d4-bf7a447fc5bd")
            .usage(usage(11, 7, 0, 0))
            .cost(0.00023)
            .turns(1),
        Case::stream("claude/claude-tool.jsonl", Success)
            .answer("FAKE_ANSWER: 4")
            .session("d26811b7-f39d-46a5-930b-dc7c29f7ec24")
            .usage(usage(22, 14, 0, 0))
            .cost(0.00046)
            .turns(2)
            .check(|ev| {
                assert_tool_use(ev, "Bash", "echo hello-from-tool");
                assert_tool_result(ev, false, "hello-from-tool");
            }),
        Case::stream("claude/claude-tool-denied.jsonl", Success)
            .answer("FAKE_ANSWER: 4")
            .session("70757e19-b437-49be-a034-5721b6ccfe15")
            .usage(usage(22, 14, 0, 0))
            .turns(2)
            .check(|ev| {
                assert_tool_use(ev, "Bash", "touch /var/fakeapi/denied-marker");
                assert_tool_result(
                    ev,
                    true,
                    "touch in '/var/fakeapi/denied-marker' was blocked",
                );
            }),
        Case::stream("claude/claude-maxturns.jsonl", CliError)
            .session("fda8f850-b7c5-4058-b9f8-32cac5450a9f")
            .usage(usage(11, 7, 0, 0))
            .turns(2)
            .message("Reached maximum number of turns (1)"),
        Case::stream("claude/claude-sigINT.jsonl", CliError)
            .session("de972f29-6170-4581-8fac-77be70da0f11")
            .message("[ede_diagnostic] result_type=user"),
        Case::stream("claude/claude-sigTERM.jsonl", CliError)
            .session("0f7f73b3-91db-4f72-8a29-f08d95d1757c")
            .message("missing final event (exit code 143)")
            .finals(0),
        // Each `api_retry` of a 429 is a rate-limit signal; the first one's delay (1 s, the
        // stand-in's `retry-after`) is the retry-after.
        Case::stream("claude/claude-RATE429.jsonl", RateLimited)
            .session("8a94d095-5377-4f05-b123-b55c5de079ba")
            .message("API Error: Request rejected (429)")
            .usage(usage(0, 0, 0, 0))
            .rate_limited(2)
            .check(|ev| {
                assert_eq!(
                    rate_limits(ev).first(),
                    Some(&(None, Some(1))),
                    "first signal: {ev:?}"
                );
                assert_eq!(
                    retries(ev),
                    vec![
                        (Some(1), "rate_limit (HTTP 429)".to_owned()),
                        (Some(2), "rate_limit (HTTP 429)".to_owned())
                    ]
                );
                // The synthetic error message is not the model speaking.
                assert!(assistant_texts(ev).is_empty());
            }),
        Case::stream("claude/claude-AUTH401.jsonl", AuthError)
            .session("9d0af3ce-b202-48cd-8a5e-0b9df187141e")
            .message("Failed to authenticate. API Error: 401")
            .check(|ev| assert_eq!(retries(ev).len(), 2)),
        Case::stream("claude/claude-OVER529.jsonl", CliError)
            .session("d48b0560-29b8-4fcb-86fa-4a111d33ce59")
            .message("API Error: 529 fake overloaded_error")
            .check(|ev| {
                assert_eq!(
                    retries(ev).first().map(|r| r.1.as_str()),
                    Some("overloaded (HTTP 529)")
                );
            }),
        Case::stream("claude/claude-network-down.jsonl", CliError)
            .session("7e2c8cab-14d7-4adf-ac83-10b0e5f14c98")
            .message("API Error: Unable to connect to API (ConnectionRefused)")
            .check(|ev| {
                let r = retries(ev);
                assert_eq!(r.len(), 10);
                assert_eq!(r.last(), Some(&(Some(10), "unknown".to_owned())));
            }),
        Case::stream("claude/claude-not-logged-in.jsonl", AuthError)
            .session("4503dd12-8bb5-4de1-ad25-14b083a68bc2")
            .message("Not logged in · Please run /login"),
        Case::stream("claude/claude-resume-bad.jsonl", CliError)
            .session("00000000-0000-4000-8000-000000000000")
            .message("No conversation found with session ID: 00000000-0000-4000-8000-000000000000")
            .turns(0)
            .resuming()
            .session_not_found(),
        // ---- claude, 2026-12-04 ----
        // A 401 is retried like a 429 (ten times, 182 s) but is not a rate limit.
        Case::stream("claude/claude-401-retried.jsonl", AuthError)
            .session("197e3f36-da7d-435b-bdbc-a744b65c07c1")
            .message("Invalid API key · Fix external API key")
            .turns(1)
            .check(|ev| {
                let r = retries(ev);
                assert_eq!(r.len(), 10);
                assert_eq!(
                    r.first(),
                    Some(&(Some(1), "authentication_failed (HTTP 401)".to_owned()))
                );
            }),
        Case::stream("claude/claude-resume-unknown-standin.jsonl", CliError)
            .session("3f1c1d1e-0000-4000-8000-000000000000")
            .message("No conversation found with session ID: 3f1c1d1e-0000-4000-8000-000000000000")
            .turns(0)
            .resuming()
            .session_not_found(),
        Case::stream("claude/claude-partial.jsonl", Success)
            .answer("FAKE_ANSWER: 4")
            .session("b9acb0cc-55cc-4e2e-af63-32c4f4d694d6")
            .usage(usage(11, 7, 0, 0))
            .check(|ev| {
                assert!(ev.contains(&StreamEvent::AssistantText {
                    text: "FAKE_ANSWER: 4".into(),
                    partial: true
                }));
                assert!(ev.contains(&StreamEvent::AssistantText {
                    text: "FAKE_ANSWER: 4".into(),
                    partial: false
                }));
            }),
        Case::stream("claude/claude-streamin.jsonl", Success)
            .answer("FAKE_ANSWER: 4")
            .session("0182c865-da12-450a-adca-116cf07a37c1")
            .usage(usage(11, 7, 0, 0))
            // The second result reports the session's running cost.
            .cost(0.00046)
            .finals(2),
        // `--output-format json` prints the lone `result` object on one line, which is also a
        // valid one-line stream; parsing it checks that the result handling needs nothing else.
        Case::stream("claude/claude-json.json", Success)
            .answer("FAKE_ANSWER: 4")
            .session("e33c3db5-1269-4a51-961b-861153405b08")
            .usage(usage(11, 7, 0, 0))
            .turns(1)
            .answer_not_streamed(),
        Case::skipped(
            "claude/claude-interactive-transcript.jsonl",
            "the interactive TUI's session transcript (tmux mode), not headless stdout; \
             tests/tui.rs reads it with `tui::ClaudeTranscript`",
        ),
        Case::skipped(
            "claude/claude-interactive-first-turn.jsonl",
            "the interactive TUI's session transcript of a new session's first prompt, written \
             out of order (tmux mode); tests/tui.rs reads it with `tui::ClaudeTranscript`",
        ),
        Case::skipped(
            "claude/tui-fresh-home.txt",
            "pane text of an interactive TUI (tmux mode), not headless stdout; tests/tui.rs reads it with the `tui` profiles",
        ),
        Case::skipped(
            "claude/tui-trust.txt",
            "pane text of an interactive TUI (tmux mode), not headless stdout; tests/tui.rs reads it with the `tui` profiles",
        ),
        Case::skipped(
            "claude/tui-apikey.txt",
            "pane text of an interactive TUI (tmux mode), not headless stdout; tests/tui.rs reads it with the `tui` profiles",
        ),
        Case::skipped(
            "claude/tui-ready.txt",
            "pane text of an interactive TUI (tmux mode), not headless stdout; tests/tui.rs reads it with the `tui` profiles",
        ),
        Case::skipped(
            "claude/tui-answer.txt",
            "pane text of an interactive TUI (tmux mode), not headless stdout; tests/tui.rs reads it with the `tui` profiles",
        ),
        Case::skipped(
            "codex/tui-ready.txt",
            "pane text of an interactive TUI (tmux mode), not headless stdout; tests/tui.rs reads it with the `tui` profiles",
        ),
        Case::skipped(
            "codex/tui-trust.txt",
            "pane text of an interactive TUI (tmux mode), not headless stdout; tests/tui.rs reads it with the `tui` profiles",
        ),
        Case::skipped(
            "codex/tui-two-turns.txt",
            "pane text of an interactive TUI (tmux mode), not headless stdout; tests/tui.rs reads it with the `tui` profiles",
        ),
        Case::skipped(
            "codex/tui-rollout.jsonl",
            "an interactive TUI's session record (tmux mode), not headless stdout; tests/tui.rs reads it",
        ),
        Case::skipped(
            "gemini/tui-trust.txt",
            "pane text of an interactive TUI (tmux mode), not headless stdout; tests/tui.rs reads it with the `tui` profiles",
        ),
        Case::skipped(
            "gemini/tui-ready.txt",
            "pane text of an interactive TUI (tmux mode), not headless stdout; tests/tui.rs reads it with the `tui` profiles",
        ),
        Case::skipped(
            "gemini/tui-two-turns.txt",
            "pane text of an interactive TUI (tmux mode), not headless stdout; tests/tui.rs reads it with the `tui` profiles",
        ),
        Case::skipped(
            "gemini/tui-chat.jsonl",
            "an interactive TUI's session record (tmux mode), not headless stdout; tests/tui.rs reads it",
        ),
        Case::skipped(
            "droid/tui-login.txt",
            "pane text of an interactive TUI (tmux mode), not headless stdout; tests/tui.rs reads it with the `tui` profiles",
        ),
        Case::skipped(
            "droid/tui-invalid-factory-key.txt",
            "pane text of an interactive TUI (tmux mode), not headless stdout; tests/tui.rs reads it with the `tui` profiles",
        ),
        // ---- codex ----
        Case::stream("codex/codex-success.jsonl", Success)
            .answer("FAKE_CODEX_ANSWER: 4")
            .session("01a2142c-9442-7e70-a2fb-2211ab5c9a3c")
            .usage(usage(10, 5, 0, 0)),
        Case::stream("codex/codex-tool.jsonl", Success)
            .answer("FAKE_CODEX_ANSWER: 4")
            .session("01a2142c-f151-76c0-aa22-de0892b49219")
            .usage(usage(20, 10, 0, 0))
            .check(|ev| {
                assert_tool_use(
                    ev,
                    "command_execution",
                    "/bin/bash -lc 'echo hello-from-tool'",
                );
                assert_tool_result(ev, false, "hello-from-tool");
                // Started and completed: one call, one result.
                assert_eq!(count(ev, |e| matches!(e, StreamEvent::ToolUse { .. })), 1);
                assert_eq!(
                    count(ev, |e| matches!(e, StreamEvent::ToolResult { .. })),
                    1
                );
            }),
        Case::stream("codex/codex-429.jsonl", RateLimited)
            .session("01a2142d-0c19-7643-a764-4417c982e026")
            .message("exceeded retry limit, last status: 429 Too Many Requests")
            // "Reconnecting... 1/1 (… 429 …)" and the give-up `error` before `turn.failed`.
            .rate_limited(2)
            .check(|ev| {
                let r = retries(ev);
                assert_eq!(r.len(), 2);
                assert_eq!(r.first().and_then(|r| r.0), Some(1));
            }),
        Case::stream("codex/codex-sigINT.jsonl", CliError)
            .session("01a2142c-b1dc-7052-a5d8-9ffbe7a86f13")
            .message("missing final event (exit code 1)")
            .finals(0),
        // ---- codex, 2026-12-04 ----
        Case::stream("codex/codex-resume.jsonl", Success)
            .answer("FAKE_ANSWER: 1 earlier user turns")
            .session("01a242ea-cdfb-7b71-aa67-a90d7970278b")
            .usage(usage(20, 24, 0, 0))
            .resuming(),
        Case::stream("codex/codex-401.jsonl", AuthError)
            .session("01a242ea-e32b-7cd3-bb29-1492641b41ba")
            .message("unexpected status 401 Unauthorized: Incorrect API key provided (stand-in)"),
        Case::stream("codex/codex-429-noretry.jsonl", RateLimited)
            .session("01a242ea-e057-7e90-a43f-5080db6f36ee")
            .message("exceeded retry limit, last status: 429 Too Many Requests")
            .rate_limited(1),
        Case::stream("codex/codex-resume-unknown.stdout", CliError)
            .with_stderr("codex/codex-resume-unknown.stderr")
            .message("no rollout found for thread id 3f1c1d1e-0000-4000-8000-000000000000")
            .finals(0)
            .resuming()
            .session_not_found(),
        Case::stderr_of(
            "codex/codex-resume-unknown.stderr",
            "codex/codex-resume-unknown.stdout",
        ),
        // ---- gemini ----
        Case::stream("gemini/gemini-success.jsonl", Success)
            .answer("FAKE_GEMINI_ANSWER: 4")
            .session("beeaaf76-ab70-4d24-a96e-1095b42a4494")
            .usage(usage(10, 5, 0, 0)),
        Case::stream("gemini/gemini-tool.jsonl", Success)
            .answer("FAKE_GEMINI_ANSWER: 4")
            .session("6619a922-b99c-41bb-9f22-5544d36603a3")
            .usage(usage(20, 10, 0, 0))
            .check(|ev| {
                assert_tool_use(ev, "run_shell_command", "echo hello-from-tool");
                assert_tool_result(ev, false, "hello-from-tool");
            }),
        Case::stream("gemini/gemini-tool-noyolo.jsonl", Success)
            .answer("FAKE_GEMINI_ANSWER: 4")
            .session("5621c650-6035-4b91-9c16-f82303a8cdaa")
            .usage(usage(20, 10, 0, 0))
            .check(|ev| assert_tool_result(ev, true, "Tool \"run_shell_command\" not found")),
        Case::skipped(
            "gemini/gemini-json.json",
            "`-o json` prints one pretty-printed object over many lines, not a JSON-lines stream",
        ),
        Case::stream("gemini/gemini-resume.jsonl", Success)
            .answer("FAKE_GEMINI_ANSWER: 4")
            .session("96ca3023-953b-491a-8c00-76275ef79e30")
            .usage(usage(10, 5, 0, 0)),
        Case::stream("gemini/gemini-sigINT.jsonl", Success)
            .answer("FAKE_GEMINI_ANSWER: 4")
            .session("f9b7be93-29e0-4804-89b7-662bbed79e2d")
            .usage(usage(10, 5, 0, 0)),
        // Captured without its stderr: nothing says why it was stuck.
        Case::stream("gemini/gemini-429-stuck-partial.jsonl", CliError)
            .session("529098ff-932c-44c6-9518-c04e4a34c713")
            .message("missing final event (exit code 124)")
            .finals(0),
        // ---- gemini, 2026-12-04 ----
        Case::stream("gemini/gemini-401.jsonl", AuthError)
            .with_stderr("gemini/gemini-401.stderr")
            .session("2def4a56-0278-4842-9a8f-95751bccb6f5")
            .message("API key not valid. Please pass a valid API key. (stand-in)"),
        Case::stderr_of("gemini/gemini-401.stderr", "gemini/gemini-401.jsonl"),
        // The same run as gemini-429-stuck-partial, with its stderr: three failed attempts in
        // 25 s, each a rate-limit signal; the first one's text is the message.
        Case::stream("gemini/gemini-429-25s.jsonl", RateLimited)
            .with_stderr("gemini/gemini-429-25s.stderr")
            .session("8551735e-0d3a-48f2-8ef8-9e259ee10931")
            .message("Attempt 1 failed with status 429. Retrying with backoff...")
            .finals(0)
            .rate_limited(3),
        Case::stderr_of("gemini/gemini-429-25s.stderr", "gemini/gemini-429-25s.jsonl"),
        Case::stream("gemini/gemini-resume-unknown.stdout", CliError)
            .with_stderr("gemini/gemini-resume-unknown.stderr")
            .message("invalid input (exit code 42): Error resuming session: Invalid session identifier \"3f1c1d1e-0000-4000-8000-000000000000\"")
            .finals(0)
            .resuming()
            .session_not_found(),
        Case::stderr_of(
            "gemini/gemini-resume-unknown.stderr",
            "gemini/gemini-resume-unknown.stdout",
        ),
        {
            let mut c = Case::stream("gemini/gemini-no-auth.stderr.json", AuthError)
                .message("Please set an Auth method")
                .finals(0);
            c.kind = Kind::StderrOnly;
            c
        },
        // ---- droid ----
        Case::stream("droid/droid-success.jsonl", Success)
            .answer("FAKE_ANSWER: 4")
            .session("d679908b-bfc6-46a5-9e61-738dccfb53b8")
            .usage(usage(11, 7, 0, 0))
            .turns(1),
        Case::stream("droid/droid-tool.jsonl", Success)
            .answer("FAKE_ANSWER: 4")
            .session("5b4d880e-cec1-44f4-b105-e3e3b571bb77")
            .usage(usage(22, 14, 0, 0))
            .turns(2)
            .check(|ev| {
                assert_tool_use(ev, "Execute", "echo hello-from-tool");
                assert_tool_result(ev, true, "Error: Execute call rejected");
            }),
        Case::skipped(
            "droid/droid-json.json",
            "`-o json` prints a Claude-like `result` object; headless runs use stream-json",
        ),
        Case::stream("droid/droid-sigINT.jsonl", Success)
            .answer("FAKE_ANSWER: 4")
            .session("fcec1058-8296-479f-bc6c-e6600ae547be")
            .usage(usage(11, 7, 0, 0))
            .turns(1),
        Case::stream("droid/droid-not-logged-in.jsonl", AuthError)
            .session("0fcd33f2-9887-4ff2-8dc7-06aa9f717d0b")
            .message("Error: Authentication failed.")
            .finals(0),
        // ---- droid, 2026-12-04 ----
        // The agent loop's error, not the generic `cli` "Exec failed" after it, is the verdict.
        Case::stream("droid/droid-401.jsonl", AuthError)
            .session("a55617e5-5b5d-47f5-9a6d-6971bdf03d98")
            .message("401 {\"error\":{\"message\":\"invalid x-api-key (stand-in)\",\"type\":\"authentication_error\"}")
            .finals(0),
        Case::stream("droid/droid-429.jsonl", RateLimited)
            .session("f9281a2d-956d-49d1-bb11-a0c294dc3215")
            .message("429 {\"error\":{\"message\":\"Number of requests has exceeded your rate limit (stand-in)\"")
            .finals(0)
            .rate_limited(1),
        Case::stream("droid/droid-fork.jsonl", Success)
            .answer("FAKE_ANSWER: 1 earlier user turns")
            .session("29ed2cd9-0192-4a13-bf41-fb5fa560ddbd")
            .usage(usage(10, 12, 0, 0))
            .turns(2)
            .resuming(),
        Case::stream("droid/droid-fork-unknown.stdout", CliError)
            .message("missing final event (exit code 1)")
            .finals(0)
            .resuming()
            .session_not_found(),
        Case::stream("droid/droid-resume-s-offline.stdout", CliError)
            .with_stderr("droid/droid-resume-s-offline.stderr")
            .message("missing final event (exit code 1)")
            .finals(0)
            .resuming()
            .session_not_found(),
        Case::stderr_of(
            "droid/droid-resume-s-offline.stderr",
            "droid/droid-resume-s-offline.stdout",
        ),
    ]
}

fn count(ev: &[StreamEvent], f: impl Fn(&StreamEvent) -> bool) -> usize {
    ev.iter().filter(|e| f(e)).count()
}

fn retries(ev: &[StreamEvent]) -> Vec<(Option<u32>, String)> {
    ev.iter()
        .filter_map(|e| match e {
            StreamEvent::Retry { attempt, error } => Some((*attempt, error.clone())),
            _ => None,
        })
        .collect()
}

/// The `(resets_at, retry_after_secs)` of every `RateLimited` event.
fn rate_limits(ev: &[StreamEvent]) -> Vec<(Option<i64>, Option<u64>)> {
    ev.iter()
        .filter_map(|e| match e {
            StreamEvent::RateLimited {
                resets_at,
                retry_after_secs,
            } => Some((*resets_at, *retry_after_secs)),
            _ => None,
        })
        .collect()
}

fn assistant_texts(ev: &[StreamEvent]) -> Vec<String> {
    ev.iter()
        .filter_map(|e| match e {
            StreamEvent::AssistantText {
                text,
                partial: false,
            } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn assert_tool_use(ev: &[StreamEvent], name: &str, input_prefix: &str) {
    assert!(
        ev.iter().any(|e| matches!(e,
            StreamEvent::ToolUse { name: n, input_summary } if n == name && input_summary.starts_with(input_prefix))),
        "no ToolUse {name} {input_prefix:?} in {ev:?}"
    );
}

fn assert_tool_result(ev: &[StreamEvent], is_error: bool, summary_prefix: &str) {
    assert!(
        ev.iter().any(|e| matches!(e,
            StreamEvent::ToolResult { is_error: err, summary } if *err == is_error && summary.starts_with(summary_prefix))),
        "no ToolResult is_error={is_error} {summary_prefix:?} in {ev:?}"
    );
}

/// Exit codes from the README index: `| file | command | exit |`. `n/a` (not a process run)
/// gives `None`; bold markers are ignored.
fn readme_exit_codes() -> BTreeMap<String, Option<i32>> {
    let readme = std::fs::read_to_string(captures_dir().join("README.md"))
        .expect("captures README.md (the index of exit codes) must exist");
    let mut codes = BTreeMap::new();
    for line in readme.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let (Some(file), Some(exit)) = (cells.first(), cells.last()) else {
            continue;
        };
        if !file.contains('/') || cells.len() < 3 {
            continue;
        }
        let exit = exit.trim_matches('*').trim();
        // `gemini/x.jsonl / .stderr`: one run, two files (its stdout and its stderr).
        let mut names = file.split(" / ").map(str::trim);
        let first = names.next().unwrap_or_default().to_owned();
        let stem = first
            .rsplit_once('.')
            .map_or(first.as_str(), |(stem, _)| stem)
            .to_owned();
        let files: Vec<String> = std::iter::once(first.clone())
            .chain(names.map(|ext| format!("{stem}{ext}")))
            .collect();
        let code = if exit == "n/a" {
            None
        } else {
            Some(
                exit.parse::<i32>()
                    .unwrap_or_else(|_| panic!("README exit code {exit:?} for {file}")),
            )
        };
        for f in files {
            codes.insert(f, code);
        }
    }
    assert!(!codes.is_empty(), "no index rows found in captures README");
    codes
}

fn exit_for(file: &str, codes: &BTreeMap<String, Option<i32>>) -> ProcessExit {
    let code = codes
        .get(file)
        .unwrap_or_else(|| panic!("{file} is not in the captures README index"));
    ProcessExit {
        code: *code,
        signal: None,
    }
}

#[test]
fn every_capture_file_has_a_case_and_an_index_row() {
    let files = capture_files();
    assert!(
        files.len() >= 30,
        "expected the full set of captures, found {}",
        files.len()
    );
    let cases = cases();
    let covered: Vec<&str> = cases.iter().map(|c| c.file).collect();
    let codes = readme_exit_codes();
    for f in &files {
        assert!(
            covered.contains(&f.as_str()),
            "capture {f} has no case in tests/captures.rs: add one (or an explicit skip with a reason)"
        );
        assert!(
            codes.contains_key(f),
            "capture {f} is not in the README index"
        );
    }
    for c in &cases {
        assert!(
            files.iter().any(|f| f == c.file),
            "case {} names a file that does not exist",
            c.file
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in &cases {
        assert!(seen.insert(c.file), "duplicate case for {}", c.file);
    }
}

#[test]
fn every_capture_parses_to_its_expected_outcome() {
    let codes = readme_exit_codes();
    let mut checked = 0;
    for case in cases() {
        let cli = cli_of(case.file);
        let text = read_capture(case.file);
        let ctx = RunContext {
            resuming: case.resuming,
        };
        let (events, outcome): (Vec<StreamEvent>, ParsedOutcome) = match case.kind {
            Kind::Skipped(reason) => {
                assert!(!reason.is_empty(), "{}: a skip needs a reason", case.file);
                continue;
            }
            Kind::StderrOf(stream) => {
                assert!(
                    cases()
                        .iter()
                        .any(|c| c.file == stream && c.stderr == Some(case.file)),
                    "{}: the case of {stream} must read it as its stderr",
                    case.file
                );
                continue;
            }
            Kind::Stream => {
                let stderr = case.stderr.map(read_capture).unwrap_or_default();
                run_parser_with_stderr(
                    cli,
                    ctx,
                    lines_of(&text),
                    &stderr,
                    exit_for(case.file, &codes),
                )
            }
            Kind::StderrOnly => run_parser(cli, [], exit_for(case.file, &codes), &text),
        };
        let what = case.file;
        assert_eq!(outcome.class, case.class, "{what}: class ({outcome:?})");
        assert_eq!(outcome.answer.as_deref(), case.answer, "{what}: answer");
        assert_eq!(
            outcome.session_not_found, case.session_not_found,
            "{what}: session not found"
        );
        assert_eq!(
            rate_limits(&events).len(),
            case.rate_limited_events,
            "{what}: RateLimited events {events:?}"
        );
        assert_eq!(
            outcome.session_id.as_deref(),
            case.session,
            "{what}: session id"
        );
        if case.usage.is_some() {
            assert_eq!(outcome.usage, case.usage, "{what}: usage");
        }
        if let Some(cost) = case.cost_usd {
            let got = outcome.cost_usd.unwrap_or(f64::NAN);
            assert!((got - cost).abs() < 1e-12, "{what}: cost {got} != {cost}");
        }
        if case.num_turns.is_some() {
            assert_eq!(outcome.num_turns, case.num_turns, "{what}: num_turns");
        }
        match (case.class, case.message) {
            (Some(Success), _) => {
                assert_eq!(outcome.error_message, None, "{what}: success has no error");
                // The answer was also streamed: Gemini as the concatenation of its chunks, the
                // others as a complete block.
                let answer = outcome.answer.clone().unwrap_or_default();
                let streamed: String = events
                    .iter()
                    .filter_map(|e| match e {
                        StreamEvent::AssistantText { text, partial }
                            if !partial || cli == kokino_core::CliType::Gemini =>
                        {
                            Some(text.as_str())
                        }
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join(if cli == kokino_core::CliType::Gemini {
                        ""
                    } else {
                        "\n"
                    });
                if case.answer_streamed {
                    assert!(streamed.contains(&answer), "{what}: answer not streamed");
                }
            }
            (_, Some(m)) => {
                let got = outcome.error_message.clone().unwrap_or_default();
                assert!(got.contains(m), "{what}: error message {got:?} lacks {m:?}");
            }
            (_, None) => panic!("{what}: failure cases must name the expected message"),
        }
        // Real captures contain only known events and well-formed lines.
        assert_eq!(outcome.malformed_lines, 0, "{what}: malformed lines");
        assert_eq!(
            outcome.unknown_events, 0,
            "{what}: unknown events {events:?}"
        );
        assert_counters_match(&events, &outcome, what);
        assert_summaries_bounded(&events, what);
        assert_eq!(
            count(&events, |e| matches!(e, StreamEvent::Final)),
            case.finals,
            "{what}: Final events"
        );
        // The session id is reported once, as soon as it is seen.
        let ids: Vec<&StreamEvent> = events
            .iter()
            .filter(|e| matches!(e, StreamEvent::SessionId(_)))
            .collect();
        match case.session {
            Some(s) => assert_eq!(ids, vec![&StreamEvent::SessionId(s.to_owned())], "{what}"),
            None => assert!(ids.is_empty(), "{what}: unexpected session id"),
        }
        if let Some(check) = case.check {
            check(&events);
        }
        checked += 1;
    }
    assert!(checked >= 41, "only {checked} captures were checked");
}

/// The session id must be known before the turn ends (the executor stores it at once), so it has
/// to come from the first event that carries it, not from the terminal one.
#[test]
fn session_id_is_reported_on_the_first_line_that_has_it() {
    for file in [
        "claude/claude-success.jsonl",
        "codex/codex-success.jsonl",
        "gemini/gemini-success.jsonl",
        "droid/droid-success.jsonl",
    ] {
        let text = read_capture(file);
        let first = lines_of(&text)
            .into_iter()
            .next()
            .expect("non-empty capture");
        let (events, _) = run_parser(cli_of(file), [first], ProcessExit::default(), "");
        assert!(
            matches!(events.first(), Some(StreamEvent::SessionId(_))),
            "{file}: {events:?}"
        );
    }
}

/// Every capture, even the skipped ones, goes through every parser without a panic, and the
/// counters agree with the events. A broker misconfigured with the wrong CLI type must degrade
/// to a `cli_error`, not crash.
#[test]
fn every_capture_through_every_parser_never_panics() {
    for file in capture_files() {
        let text = read_capture(&file);
        for cli in kokino_core::CliType::ALL {
            let (events, outcome) =
                run_parser(*cli, lines_of(&text), ProcessExit::default(), &text);
            let what = format!("{file} as {cli:?}");
            assert!(outcome.class.is_some(), "{what}: no class");
            assert_counters_match(&events, &outcome, &what);
            assert_summaries_bounded(&events, &what);
        }
    }
}

/// The repository's copy of the captures holds the shared folder unchanged (plus the captures
/// recorded since, with their index rows). Where the shared
/// folder is not present (a clone elsewhere), there is nothing to compare against.
#[test]
fn vendored_captures_match_the_shared_ones() {
    let shared = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/captures"
    ));
    if !shared.is_dir() {
        eprintln!(
            "note: {} not present; the vendored copy is used as is",
            shared.display()
        );
        return;
    }
    let vendored = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/captures"));
    let mut compared = 0;
    for cli in ["claude", "codex", "gemini", "droid"] {
        for entry in std::fs::read_dir(shared.join(cli)).unwrap().flatten() {
            let name = entry.file_name();
            let original = std::fs::read(entry.path()).unwrap();
            let copy = std::fs::read(vendored.join(cli).join(&name)).unwrap_or_else(|_| {
                panic!(
                    "{cli}/{} is missing from tests/captures",
                    name.to_string_lossy()
                )
            });
            assert_eq!(
                original,
                copy,
                "{cli}/{} differs from the shared capture",
                name.to_string_lossy()
            );
            compared += 1;
        }
    }
    // The vendored index extends the shared one with the captures recorded since (new rows,
    // new notes): every line of the shared index is still there, in the same order.
    let shared_index = std::fs::read_to_string(shared.join("README.md")).unwrap();
    let vendored_index = std::fs::read_to_string(vendored.join("README.md")).unwrap();
    let mut rest = vendored_index.lines();
    for line in shared_index.lines() {
        assert!(
            rest.any(|l| l == line),
            "a line of the shared captures index is missing or out of order in the vendored one: {line:?}"
        );
    }
    assert!(compared >= 30);
}
