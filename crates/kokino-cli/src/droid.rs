//! Parser for `droid exec -o stream-json` (guides/peer-systems.md §3.4).
//!
//! The answer is `completion.finalText`; the session id comes with `system/init` (and every later
//! event). Failures are `error` events; with `source:"cli"` they are the CLI's own verdict, such
//! as "Authentication failed", after which the process exits without a `completion`. An API
//! failure comes as `source:"agent_loop"` (`429 {…rate_limit_error…}`, `401 {…}`) and is followed
//! by a generic `cli` "Exec failed"; the earlier, specific one is the run's error.

use kokino_core::{OutcomeClass, Usage};
use serde_json::{Map, Value};

use crate::common::{
    bound_error, classify_text, get_str, get_u32, missing_final_message, retry_after_from_text,
    summarize_text, summarize_value, usage_from, Common,
};
use crate::{ParsedOutcome, ProcessExit, RunContext, StreamEvent, StreamParser};

/// The `cli` error droid prints after any failure of its agent loop; it says nothing about why.
const GENERIC_FAILURE: &str = "Exec failed";

#[derive(Debug, Default)]
pub(crate) struct DroidParser {
    common: Common,
    ctx: RunContext,
    /// `Some` once a `completion` was read; the inner `None` means it had no `finalText`.
    completion: Option<Option<String>>,
    usage: Option<Usage>,
    num_turns: Option<u32>,
    /// The latest `error` event message that says what went wrong (not the generic one).
    error: Option<String>,
    /// The latest `error` event message of any kind.
    last_error: Option<String>,
    /// Whether anything at all came on stdout or stderr: droid reports a session it cannot
    /// resume only by exiting 1 without a word.
    saw_output: bool,
}

impl DroidParser {
    pub(crate) fn new(ctx: RunContext) -> DroidParser {
        DroidParser {
            ctx,
            ..DroidParser::default()
        }
    }
}

impl StreamParser for DroidParser {
    fn feed_line(&mut self, line: &str, out: &mut Vec<StreamEvent>) {
        self.saw_output |= !line.trim().is_empty();
        let Some((ev, ty)) = self.common.decode(line, out) else {
            return;
        };
        self.common.see_session(get_str(&ev, "session_id"), out);
        match ty.as_str() {
            "system" => {}
            "message" => {
                if get_str(&ev, "role") == Some("assistant") {
                    if let Some(text) = get_str(&ev, "text") {
                        out.push(StreamEvent::AssistantText {
                            text: text.to_owned(),
                            partial: false,
                        });
                    }
                }
            }
            "tool_call" => {
                let name = get_str(&ev, "toolName")
                    .or_else(|| get_str(&ev, "toolId"))
                    .unwrap_or("tool");
                out.push(StreamEvent::ToolUse {
                    name: summarize_text(name),
                    input_summary: ev
                        .get("parameters")
                        .map(summarize_value)
                        .unwrap_or_default(),
                });
            }
            "tool_result" => on_tool_result(&ev, out),
            "completion" => self.on_completion(&ev, out),
            "error" => self.on_error(&ev, out),
            t => self.common.unknown(out, t),
        }
    }

    fn stderr_line(&mut self, line: &str) -> Option<StreamEvent> {
        self.saw_output |= !line.trim().is_empty();
        None
    }

    fn finish(&mut self, exit: ProcessExit, stderr_tail: &str) -> ParsedOutcome {
        let mut o = self.common.outcome();
        o.usage = self.usage;
        o.num_turns = self.num_turns;
        // `droid exec -s <id>` without Factory's servers, and `--fork <unknown id>`, exit 1
        // with nothing on stdout or stderr (droid-resume-s-offline, droid-fork-unknown).
        o.session_not_found = self.ctx.resuming
            && exit.code == Some(1)
            && !self.saw_output
            && stderr_tail.trim().is_empty();
        match &self.completion {
            // A completion is final even if the npm shim then exits with a signal's code (130 on
            // SIGINT): the native binary finished the turn.
            Some(Some(text)) => {
                o.class = Some(OutcomeClass::Success);
                o.answer = Some(text.clone());
            }
            Some(None) => {
                o.class = Some(OutcomeClass::CliError);
                o.error_message = Some("completion without finalText".to_owned());
            }
            None => match self.error.as_ref().or(self.last_error.as_ref()) {
                Some(message) => {
                    o.class = Some(classify_text(message));
                    o.error_message = Some(message.clone());
                }
                None => {
                    o.class = Some(OutcomeClass::CliError);
                    o.error_message = Some(missing_final_message(exit, None, stderr_tail));
                }
            },
        }
        o
    }
}

impl DroidParser {
    /// An `error` event. Not treated as terminal: the stream has no documented guarantee that
    /// nothing follows, and the process exits right after the fatal ones anyway.
    fn on_error(&mut self, ev: &Map<String, Value>, out: &mut Vec<StreamEvent>) {
        let message =
            bound_error(get_str(ev, "message").unwrap_or("error event without a message"));
        self.last_error = Some(message.clone());
        if message == GENERIC_FAILURE {
            return;
        }
        // droid-429.jsonl: the agent loop's 429 comes after droid's own silent retries, just
        // before it gives up; reporting it lets the executor stop without waiting for the rest.
        if classify_text(&message) == OutcomeClass::RateLimited {
            let retry_after = retry_after_from_text(&message);
            out.push(self.common.rate_limited(&message, None, retry_after));
        }
        self.error = Some(message);
    }

    fn on_completion(&mut self, ev: &Map<String, Value>, out: &mut Vec<StreamEvent>) {
        self.completion = Some(get_str(ev, "finalText").map(str::to_owned));
        if let Some(u) = usage_from(
            ev.get("usage"),
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ) {
            self.usage = Some(u);
        }
        if let Some(n) = get_u32(ev.get("numTurns")) {
            self.num_turns = Some(n);
        }
        out.push(StreamEvent::Final);
    }
}

fn on_tool_result(ev: &Map<String, Value>, out: &mut Vec<StreamEvent>) {
    let is_error = ev.get("isError").and_then(Value::as_bool).unwrap_or(false);
    let error_message = ev
        .get("error")
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str);
    let summary = match error_message {
        Some(m) => summarize_text(m),
        None => ev
            .get("value")
            .or_else(|| ev.get("output"))
            .or_else(|| ev.get("result"))
            .map(summarize_value)
            .unwrap_or_default(),
    };
    out.push(StreamEvent::ToolResult { is_error, summary });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_error_event_is_rate_limited() {
        let mut p = DroidParser::default();
        let mut out = Vec::new();
        p.feed_line(
            r#"{"type":"error","source":"model","message":"429 Too Many Requests"}"#,
            &mut out,
        );
        let o = p.finish(ProcessExit::default(), "");
        assert_eq!(o.class, Some(OutcomeClass::RateLimited));
        assert_eq!(
            out,
            vec![StreamEvent::RateLimited {
                resets_at: None,
                retry_after_secs: None
            }]
        );
    }

    #[test]
    fn the_specific_error_wins_over_the_generic_exec_failed() {
        let mut p = DroidParser::default();
        let mut out = Vec::new();
        p.feed_line(
            r#"{"type":"error","source":"agent_loop","message":"401 {\"error\":{\"type\":\"authentication_error\"}}"}"#,
            &mut out,
        );
        p.feed_line(
            r#"{"type":"error","source":"cli","message":"Exec failed"}"#,
            &mut out,
        );
        let o = p.finish(
            ProcessExit {
                code: Some(1),
                signal: None,
            },
            "",
        );
        assert_eq!(o.class, Some(OutcomeClass::AuthError));
        assert!(o.error_message.unwrap().starts_with("401 "));
        assert!(out.is_empty());

        // Alone, the generic error is still the message.
        let mut p = DroidParser::default();
        p.feed_line(
            r#"{"type":"error","source":"cli","message":"Exec failed"}"#,
            &mut out,
        );
        let o = p.finish(
            ProcessExit {
                code: Some(1),
                signal: None,
            },
            "",
        );
        assert_eq!(o.class, Some(OutcomeClass::CliError));
        assert_eq!(o.error_message.as_deref(), Some("Exec failed"));
    }

    #[test]
    fn a_silent_exit_1_is_session_not_found_only_when_resuming() {
        let exit1 = ProcessExit {
            code: Some(1),
            signal: None,
        };
        let resuming = RunContext { resuming: true };
        assert!(
            DroidParser::new(resuming)
                .finish(exit1, "")
                .session_not_found
        );
        assert!(!DroidParser::default().finish(exit1, "").session_not_found);
        let mut p = DroidParser::new(resuming);
        assert_eq!(p.stderr_line("Error: something"), None);
        assert!(!p.finish(exit1, "").session_not_found);
        let mut p = DroidParser::new(resuming);
        p.feed_line(
            r#"{"type":"system","subtype":"init","session_id":"s"}"#,
            &mut Vec::new(),
        );
        assert!(!p.finish(exit1, "").session_not_found);
        let exit2 = ProcessExit {
            code: Some(2),
            signal: None,
        };
        assert!(
            !DroidParser::new(resuming)
                .finish(exit2, "")
                .session_not_found
        );
    }

    #[test]
    fn completion_without_final_text_is_cli_error() {
        let mut p = DroidParser::default();
        let mut out = Vec::new();
        p.feed_line(r#"{"type":"completion","numTurns":1}"#, &mut out);
        assert_eq!(out, vec![StreamEvent::Final]);
        let o = p.finish(ProcessExit::default(), "");
        assert_eq!(o.class, Some(OutcomeClass::CliError));
        assert_eq!(o.num_turns, Some(1));
    }
}
