//! Parser for `codex exec --json` (guides/peer-systems.md §3.2).
//!
//! The answer is the text of the last completed `agent_message` item; the session id is
//! `thread.started.thread_id`. A top-level `error` event is not terminal (codex prints
//! "Reconnecting…" and goes on); only `turn.completed` and `turn.failed` end a turn.

use std::collections::HashSet;

use kokino_core::{OutcomeClass, Usage};
use serde_json::{Map, Value};

use crate::common::{
    bound_error, classify_text, get_str, looks_auth_failed, looks_rate_limited,
    missing_final_message, retry_after_from_text, summarize_text, summarize_value, usage_from,
    Common,
};
use crate::{ParsedOutcome, ProcessExit, StreamEvent, StreamParser};

/// How the turn ended, once a terminal event was read.
#[derive(Debug)]
enum Terminal {
    Completed,
    Failed(String),
}

/// What `codex exec resume <id>` prints on stderr for a thread it does not have
/// (codex-resume-unknown.stderr: `Error: thread/resume: thread/resume failed: no rollout found
/// for thread id <id> (code -32600)`), before exiting 1 with nothing on stdout.
const SESSION_NOT_FOUND: &str = "no rollout found for thread id";

#[derive(Debug, Default)]
pub(crate) struct CodexParser {
    common: Common,
    /// The last `agent_message` text: codex may send several (commentary, then the answer) and
    /// the last one is the answer. Only one is kept, so memory is bounded by the answer.
    answer: Option<String>,
    terminal: Option<Terminal>,
    usage: Option<Usage>,
    /// The latest `error` event message, for the message of a run that never finished.
    last_error: Option<String>,
    /// Ids of tool items whose start was reported, so that a completion without a start (codex
    /// may skip `item.started` for fast items) still reports the call. Entries are removed on
    /// completion, so the set only holds tools in flight.
    started_tools: HashSet<String>,
    /// stderr said the thread to resume does not exist.
    session_not_found: bool,
}

impl StreamParser for CodexParser {
    fn feed_line(&mut self, line: &str, out: &mut Vec<StreamEvent>) {
        let Some((ev, ty)) = self.common.decode(line, out) else {
            return;
        };
        match ty.as_str() {
            "thread.started" => self.common.see_session(get_str(&ev, "thread_id"), out),
            "turn.started" => {}
            "turn.completed" => {
                if let Some(u) = usage_from(
                    ev.get("usage"),
                    "input_tokens",
                    "output_tokens",
                    "cached_input_tokens",
                    "cache_write_input_tokens",
                ) {
                    self.usage = Some(u);
                }
                self.terminal = Some(Terminal::Completed);
                out.push(StreamEvent::Final);
            }
            "turn.failed" => {
                let message = ev
                    .get("error")
                    .and_then(|e| e.get("message"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| self.last_error.clone())
                    .unwrap_or_else(|| "turn failed without a message".to_owned());
                self.terminal = Some(Terminal::Failed(message));
                out.push(StreamEvent::Final);
            }
            "error" => {
                let message = get_str(&ev, "message").unwrap_or("error").to_owned();
                out.push(StreamEvent::Retry {
                    attempt: reconnect_attempt(&message),
                    error: summarize_text(&message),
                });
                self.last_error = Some(bound_error(&message));
                // "Reconnecting... 1/5 (… 429 Too Many Requests)" and "exceeded retry limit,
                // last status: 429": codex retries a 429 on its own (four times by default)
                // before the turn fails. A rejected key is not a rate limit, whatever else the
                // text says.
                if looks_rate_limited(&message) && !looks_auth_failed(&message) {
                    let retry_after = retry_after_from_text(&message);
                    out.push(self.common.rate_limited(&message, None, retry_after));
                }
            }
            "item.started" => self.on_item(&ev, false, out),
            "item.completed" => self.on_item(&ev, true, out),
            "item.updated" | "item.plan.delta" | "request_user_input" => {}
            t => self.common.unknown(out, t),
        }
    }

    fn stderr_line(&mut self, line: &str) -> Option<StreamEvent> {
        self.session_not_found |= line.contains(SESSION_NOT_FOUND);
        None
    }

    fn finish(&mut self, exit: ProcessExit, stderr_tail: &str) -> ParsedOutcome {
        let mut o = self.common.outcome();
        o.usage = self.usage;
        o.session_not_found = self.terminal.is_none()
            && (self.session_not_found || stderr_tail.contains(SESSION_NOT_FOUND));
        match &self.terminal {
            Some(Terminal::Completed) => match &self.answer {
                Some(answer) => {
                    o.class = Some(OutcomeClass::Success);
                    o.answer = Some(answer.clone());
                }
                None => {
                    o.class = Some(OutcomeClass::CliError);
                    o.error_message = Some("turn completed without an agent message".to_owned());
                }
            },
            Some(Terminal::Failed(message)) => {
                o.class = Some(classify_text(message));
                o.error_message = Some(bound_error(message));
            }
            // Stopped at a 429 it was retrying (or it gave up before `turn.failed`).
            None if self.common.rate_limit.is_some() => {
                o.class = Some(OutcomeClass::RateLimited);
                o.error_message = self.common.rate_limit.clone();
            }
            None => {
                o.class = Some(OutcomeClass::CliError);
                o.error_message = Some(missing_final_message(
                    exit,
                    self.last_error.as_deref(),
                    stderr_tail,
                ));
            }
        }
        o
    }
}

impl CodexParser {
    fn on_item(&mut self, ev: &Map<String, Value>, completed: bool, out: &mut Vec<StreamEvent>) {
        let Some(item) = ev.get("item").and_then(Value::as_object) else {
            return;
        };
        let id = get_str(item, "id").unwrap_or("").to_owned();
        match get_str(item, "type") {
            Some("agent_message") if completed => {
                if let Some(text) = get_str(item, "text") {
                    out.push(StreamEvent::AssistantText {
                        text: text.to_owned(),
                        partial: false,
                    });
                    self.answer = Some(text.to_owned());
                }
            }
            Some("command_execution") => {
                let input = get_str(item, "command").map(summarize_text);
                self.tool(out, &id, completed, "command_execution", input, || {
                    let exit_code = item.get("exit_code").and_then(Value::as_i64);
                    let status = get_str(item, "status");
                    let is_error = exit_code.is_some_and(|c| c != 0)
                        || matches!(status, Some("failed") | Some("declined"));
                    let summary = get_str(item, "aggregated_output")
                        .map(summarize_text)
                        .unwrap_or_default();
                    (is_error, summary)
                });
            }
            Some("mcp_tool_call") => {
                let name = match (get_str(item, "server"), get_str(item, "tool")) {
                    (Some(s), Some(t)) => format!("{s}.{t}"),
                    (None, Some(t)) => t.to_owned(),
                    _ => "mcp_tool_call".to_owned(),
                };
                let input = item.get("arguments").map(summarize_value);
                self.tool(out, &id, completed, &name, input, || {
                    let error = item.get("error").filter(|e| !e.is_null());
                    let is_error = error.is_some() || get_str(item, "status") == Some("failed");
                    let summary = error
                        .or_else(|| item.get("result"))
                        .map(summarize_value)
                        .unwrap_or_default();
                    (is_error, summary)
                });
            }
            Some("file_change") => {
                let input = item
                    .get("changes")
                    .and_then(Value::as_array)
                    .map(|changes| {
                        let paths: Vec<&str> = changes
                            .iter()
                            .filter_map(|c| c.get("path").and_then(Value::as_str))
                            .take(10)
                            .collect();
                        summarize_text(&paths.join(", "))
                    });
                self.tool(out, &id, completed, "file_change", input, || {
                    let status = get_str(item, "status").unwrap_or("");
                    (status == "failed", summarize_text(status))
                });
            }
            Some("web_search") => {
                let input = get_str(item, "query").map(summarize_text);
                self.tool(out, &id, completed, "web_search", input, || {
                    (false, String::new())
                });
            }
            // `reasoning`, `plan`, `todo_list` and warning items (`error`, e.g. "Model metadata
            // … not found") are not part of the broker's stream; the warning is not a failure.
            _ => {}
        }
    }

    /// Reports a tool item: the call when it starts (or at completion if its start was never
    /// seen), the result summary when it completes.
    fn tool(
        &mut self,
        out: &mut Vec<StreamEvent>,
        id: &str,
        completed: bool,
        name: &str,
        input_summary: Option<String>,
        result: impl FnOnce() -> (bool, String),
    ) {
        let already_started = !id.is_empty() && self.started_tools.contains(id);
        if !already_started {
            out.push(StreamEvent::ToolUse {
                name: summarize_text(name),
                input_summary: input_summary.unwrap_or_default(),
            });
        }
        if completed {
            self.started_tools.remove(id);
            let (is_error, summary) = result();
            out.push(StreamEvent::ToolResult { is_error, summary });
        } else if !id.is_empty() {
            self.started_tools.insert(id.to_owned());
        }
    }
}

/// "Reconnecting... 2/5 (…)" → 2. Other error messages carry no attempt number.
fn reconnect_attempt(message: &str) -> Option<u32> {
    let rest = message.strip_prefix("Reconnecting")?;
    let rest = rest.trim_start_matches(['.', ' ', '…']);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &[&str]) -> (Vec<StreamEvent>, ParsedOutcome) {
        let mut p = CodexParser::default();
        let mut out = Vec::new();
        for l in lines {
            p.feed_line(l, &mut out);
        }
        (out, p.finish(ProcessExit::default(), ""))
    }

    #[test]
    fn reconnect_attempts_are_parsed() {
        assert_eq!(reconnect_attempt("Reconnecting... 2/5 (x)"), Some(2));
        assert_eq!(
            reconnect_attempt("Reconnecting... waiting for network"),
            None
        );
        assert_eq!(reconnect_attempt("exceeded retry limit"), None);
    }

    #[test]
    fn last_agent_message_wins_and_unauthorized_is_auth() {
        let (_, o) = run(&[
            r#"{"type":"thread.started","thread_id":"t"}"#,
            r#"{"type":"item.completed","item":{"id":"a","type":"agent_message","text":"first"}}"#,
            r#"{"type":"item.completed","item":{"id":"b","type":"agent_message","text":"second"}}"#,
            r#"{"type":"turn.completed","usage":{"input_tokens":1,"cached_input_tokens":2,"output_tokens":3}}"#,
        ]);
        assert_eq!(o.answer.as_deref(), Some("second"));
        assert_eq!(o.usage.map(|u| u.cache_read_tokens), Some(2));

        let (_, o) = run(&[
            r#"{"type":"turn.failed","error":{"message":"unexpected status 401 Unauthorized: invalid key"}}"#,
        ]);
        assert_eq!(o.class, Some(OutcomeClass::AuthError));
    }

    #[test]
    fn completion_without_start_still_reports_the_call_once() {
        let (events, _) = run(&[
            r#"{"type":"item.completed","item":{"id":"x","type":"command_execution","command":"false","aggregated_output":"","exit_code":1,"status":"failed"}}"#,
        ]);
        assert!(matches!(events.first(), Some(StreamEvent::ToolUse { .. })));
        assert!(matches!(
            events.get(1),
            Some(StreamEvent::ToolResult { is_error: true, .. })
        ));
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn completed_turn_without_agent_message_is_cli_error() {
        let (_, o) = run(&[r#"{"type":"turn.completed","usage":{}}"#]);
        assert_eq!(o.class, Some(OutcomeClass::CliError));
        assert_eq!(o.usage, None);
    }
}
