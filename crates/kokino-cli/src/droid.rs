//! Parser for `droid exec -o stream-json` (guides/peer-systems.md §3.4).
//!
//! The answer is `completion.finalText`; the session id comes with `system/init` (and every later
//! event). Failures are `error` events; with `source:"cli"` they are the CLI's own verdict, such
//! as "Authentication failed", after which the process exits without a `completion`.

use kokino_core::{OutcomeClass, Usage};
use serde_json::{Map, Value};

use crate::common::{
    bound_error, classify_text, get_str, get_u32, missing_final_message, summarize_text,
    summarize_value, usage_from, Common,
};
use crate::{ParsedOutcome, ProcessExit, StreamEvent, StreamParser};

#[derive(Debug, Default)]
pub(crate) struct DroidParser {
    common: Common,
    /// `Some` once a `completion` was read; the inner `None` means it had no `finalText`.
    completion: Option<Option<String>>,
    usage: Option<Usage>,
    num_turns: Option<u32>,
    /// The latest `error` event message.
    error: Option<String>,
}

impl StreamParser for DroidParser {
    fn feed_line(&mut self, line: &str, out: &mut Vec<StreamEvent>) {
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
            "error" => {
                // Not treated as terminal: the stream has no documented guarantee that nothing
                // follows, and the process exits right after the fatal ones anyway.
                let message = get_str(&ev, "message").unwrap_or("error event without a message");
                self.error = Some(bound_error(message));
            }
            t => self.common.unknown(out, t),
        }
    }

    fn finish(&mut self, exit: ProcessExit, stderr_tail: &str) -> ParsedOutcome {
        let mut o = self.common.outcome();
        o.usage = self.usage;
        o.num_turns = self.num_turns;
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
            None => match &self.error {
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
        assert!(out.is_empty());
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
