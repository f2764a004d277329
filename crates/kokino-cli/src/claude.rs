//! Parser for `claude -p --output-format stream-json --verbose` (guides/peer-systems.md §3.1).
//!
//! The answer is `result.result` of the `result` line. Success is decided by `is_error`, never by
//! `subtype`: API and auth failures arrive as `subtype:"success"` with `is_error:true`, and error
//! subtypes carry `errors:[…]` and no `result`.

use kokino_core::{OutcomeClass, Usage};
use serde_json::{Map, Value};

use crate::common::{
    bound_error, get_str, get_u32, get_u64, looks_auth_failed, looks_rate_limited,
    missing_final_message, stderr_message, summarize_text, summarize_value, usage_from,
    whole_seconds, Common,
};
use crate::{ParsedOutcome, ProcessExit, StreamEvent, StreamParser};

/// Top-level types Claude Code prints or types in `sdk.d.ts`. They are understood or deliberately
/// ignored; anything else is counted as unknown.
const KNOWN_IGNORED_TYPES: &[&str] = &[
    "control_request",
    "control_response",
    "control_cancel_request",
    "keep_alive",
    "tool_progress",
    "auth_status",
    "prompt_suggestion",
    "streamlined_text",
    "streamlined_tool_use_summary",
];

/// The assistant `error` kinds (`SDKAssistantMessageError`) that mean the credentials are the
/// problem rather than the request.
const AUTH_ERROR_KINDS: &[&str] = &["authentication_failed"];

/// What Claude Code says, in `errors[]` and on stderr, when `--resume` names a session it does
/// not have (claude-resume-bad.jsonl, claude-resume-unknown-standin.jsonl).
const SESSION_NOT_FOUND: &str = "No conversation found with session ID";

/// The terminal `result` line of the latest turn, reduced to what classification needs.
#[derive(Debug, Default)]
struct FinalResult {
    is_error: bool,
    /// `result` when it is a string. Present on success and on API failures (with the error
    /// text); absent on error subtypes.
    result: Option<String>,
    /// `errors[]` joined, for error subtypes.
    errors: Option<String>,
    subtype: Option<String>,
    api_error_status: Option<u64>,
    /// The `error` kind of the synthetic assistant message that preceded this result, if any.
    assistant_error: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct ClaudeParser {
    common: Common,
    final_result: Option<FinalResult>,
    /// The `error` kind of the latest synthetic assistant message of the current turn.
    assistant_error: Option<String>,
    usage: Option<Usage>,
    cost_usd: Option<f64>,
    num_turns: Option<u32>,
    rate_limit_rejected: bool,
    resets_at: Option<i64>,
    /// The error of the latest `api_retry`, for the message of a run that never finished.
    last_retry_error: Option<String>,
}

impl StreamParser for ClaudeParser {
    fn feed_line(&mut self, line: &str, out: &mut Vec<StreamEvent>) {
        let Some((ev, ty)) = self.common.decode(line, out) else {
            return;
        };
        self.common.see_session(get_str(&ev, "session_id"), out);
        match ty.as_str() {
            "system" => self.on_system(&ev, out),
            "assistant" => self.on_assistant(&ev, out),
            "user" => on_user(&ev, out),
            "result" => self.on_result(&ev, out),
            "stream_event" => on_stream_event(&ev, out),
            "rate_limit_event" => self.on_rate_limit(&ev, out),
            t if KNOWN_IGNORED_TYPES.contains(&t) => {}
            t => self.common.unknown(out, t),
        }
    }

    fn finish(&mut self, exit: ProcessExit, stderr_tail: &str) -> ParsedOutcome {
        let mut o = self.common.outcome();
        o.usage = self.usage;
        o.cost_usd = self.cost_usd;
        o.num_turns = self.num_turns;
        o.rate_limit_resets_at = self.resets_at;

        let Some(fin) = &self.final_result else {
            // A rate limit explains a run that stopped early better than "no result line": it
            // parks the agent until the reset instead of counting as a failure. This is also
            // how a run the executor stopped at its first rate-limit signal ends.
            if let Some(message) = &self.common.rate_limit {
                o.class = Some(OutcomeClass::RateLimited);
                o.error_message = Some(message.clone());
            } else {
                o.class = Some(OutcomeClass::CliError);
                o.error_message = Some(missing_final_message(
                    exit,
                    self.last_retry_error.as_deref(),
                    stderr_tail,
                ));
            }
            return o;
        };

        if !fin.is_error {
            if let Some(answer) = &fin.result {
                o.class = Some(OutcomeClass::Success);
                o.answer = Some(answer.clone());
                return o;
            }
        }

        let message = fin
            .result
            .clone()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| fin.errors.clone())
            .or_else(|| stderr_message(stderr_tail))
            .unwrap_or_else(|| match &fin.subtype {
                Some(s) => format!("error result ({s}) without a message"),
                None => "error result without a message".to_owned(),
            });
        o.class = Some(classify(fin, &message, self.rate_limit_rejected));
        o.session_not_found = message.contains(SESSION_NOT_FOUND);
        o.error_message = Some(bound_error(&message));
        o
    }
}

/// Structured signals first (status code, the synthetic message's error kind), the text last:
/// "Not logged in" comes with no status at all.
fn classify(fin: &FinalResult, message: &str, rate_limit_rejected: bool) -> OutcomeClass {
    let kind = fin.assistant_error.as_deref();
    if fin.api_error_status == Some(401)
        || kind.is_some_and(|k| AUTH_ERROR_KINDS.contains(&k))
        || looks_auth_failed(message)
    {
        OutcomeClass::AuthError
    } else if fin.api_error_status == Some(429)
        || kind == Some("rate_limit")
        || rate_limit_rejected
        || looks_rate_limited(message)
    {
        OutcomeClass::RateLimited
    } else {
        OutcomeClass::CliError
    }
}

impl ClaudeParser {
    fn on_system(&mut self, ev: &Map<String, Value>, out: &mut Vec<StreamEvent>) {
        match get_str(ev, "subtype") {
            Some("init") => {
                // A new turn (several in `--input-format stream-json` mode) starts clean.
                self.assistant_error = None;
            }
            Some("api_retry") => {
                let kind = get_str(ev, "error").unwrap_or("unknown");
                let error = match get_u64(ev.get("error_status")) {
                    Some(status) => format!("{kind} (HTTP {status})"),
                    None => kind.to_owned(),
                };
                let error = summarize_text(&error);
                let attempt = get_u32(ev.get("attempt"));
                self.last_retry_error = Some(error.clone());
                out.push(StreamEvent::Retry {
                    attempt,
                    error: error.clone(),
                });
                let status = get_u64(ev.get("error_status"));
                if status == Some(429) || kind == "rate_limit" {
                    // A 429 the CLI is about to retry (ten times by default, over minutes). The
                    // delay it chose follows the provider's `retry-after` when there is one,
                    // which makes it the best guess of when to try again.
                    let retry_after = ev
                        .get("retry_delay_ms")
                        .and_then(Value::as_f64)
                        .and_then(|ms| whole_seconds(ms / 1000.0));
                    let message = match attempt {
                        Some(n) => {
                            format!("API rate limit: {error}, the CLI was retrying (attempt {n})")
                        }
                        None => format!("API rate limit: {error}, the CLI was retrying"),
                    };
                    out.push(self.common.rate_limited(&message, None, retry_after));
                }
            }
            // `status`, `compact_boundary`, task and hook progress, … carry nothing the broker
            // needs; the type itself is known, so they are not counted as unknown.
            _ => {}
        }
    }

    fn on_assistant(&mut self, ev: &Map<String, Value>, out: &mut Vec<StreamEvent>) {
        if let Some(kind) = get_str(ev, "error") {
            // A synthetic message: its text is the CLI's error, not something the model said, so
            // it is kept for classification and not streamed as assistant text.
            self.assistant_error = Some(kind.to_owned());
            return;
        }
        let Some(blocks) = ev
            .get("message")
            .and_then(|m| m.get("content"))
            .and_then(Value::as_array)
        else {
            return;
        };
        for block in blocks {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => {
                    if let Some(text) = block.get("text").and_then(Value::as_str) {
                        out.push(StreamEvent::AssistantText {
                            text: text.to_owned(),
                            partial: false,
                        });
                    }
                }
                Some("tool_use") | Some("server_tool_use") | Some("mcp_tool_use") => {
                    let name = block
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("tool")
                        .to_owned();
                    out.push(StreamEvent::ToolUse {
                        name: summarize_text(&name),
                        input_summary: block.get("input").map(summarize_value).unwrap_or_default(),
                    });
                }
                // Thinking blocks and anything newer are not part of the broker's stream.
                _ => {}
            }
        }
    }

    fn on_result(&mut self, ev: &Map<String, Value>, out: &mut Vec<StreamEvent>) {
        let subtype = get_str(ev, "subtype").map(str::to_owned);
        // `is_error` is authoritative; only if a future version dropped it would the subtype be
        // the next best signal.
        let is_error = ev
            .get("is_error")
            .and_then(Value::as_bool)
            .unwrap_or_else(|| subtype.as_deref() != Some("success"));
        let errors = ev.get("errors").and_then(Value::as_array).and_then(|errs| {
            let joined: Vec<&str> = errs.iter().filter_map(Value::as_str).collect();
            (!joined.is_empty()).then(|| joined.join("; "))
        });
        self.final_result = Some(FinalResult {
            is_error,
            result: get_str(ev, "result").map(str::to_owned),
            errors,
            subtype,
            api_error_status: get_u64(ev.get("api_error_status")),
            assistant_error: self.assistant_error.take(),
        });
        if let Some(u) = usage_from(
            ev.get("usage"),
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ) {
            self.usage = Some(u);
        }
        if let Some(c) = ev
            .get("total_cost_usd")
            .and_then(Value::as_f64)
            .filter(|c| c.is_finite())
        {
            self.cost_usd = Some(c);
        }
        if let Some(n) = get_u32(ev.get("num_turns")) {
            self.num_turns = Some(n);
        }
        out.push(StreamEvent::Final);
    }

    fn on_rate_limit(&mut self, ev: &Map<String, Value>, out: &mut Vec<StreamEvent>) {
        let Some(info) = ev.get("rate_limit_info") else {
            return;
        };
        // `allowed` and `allowed_warning` are informational; only `rejected` stops requests.
        if info.get("status").and_then(Value::as_str) != Some("rejected") {
            return;
        }
        let resets_at = info.get("resetsAt").and_then(epoch_seconds);
        self.rate_limit_rejected = true;
        if resets_at.is_some() {
            self.resets_at = resets_at;
        }
        let event =
            self.common
                .rate_limited("rate limit rejected (rate_limit_event)", resets_at, None);
        out.push(event);
    }
}

/// `resetsAt` is epoch seconds in `sdk.d.ts`. Milliseconds (a value past year 33658 in seconds)
/// and RFC 3339 strings are accepted too, in case a version changes the unit.
fn epoch_seconds(v: &Value) -> Option<i64> {
    const MILLIS_THRESHOLD: f64 = 1e12;
    if let Some(s) = v.as_str() {
        return chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp());
    }
    let f = v.as_f64()?;
    if !f.is_finite() || f <= 0.0 {
        return None;
    }
    let secs = if f >= MILLIS_THRESHOLD { f / 1000.0 } else { f };
    // Saturating conversion; the check above keeps it positive.
    Some(secs as i64)
}

/// Tool results come back as `user` messages. Only a summary is kept: tool output can be huge
/// and the broker must not hold it.
fn on_user(ev: &Map<String, Value>, out: &mut Vec<StreamEvent>) {
    let Some(blocks) = ev
        .get("message")
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
    else {
        return;
    };
    for block in blocks {
        if block.get("type").and_then(Value::as_str) != Some("tool_result") {
            continue;
        }
        let is_error = block
            .get("is_error")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let summary = match block.get("content") {
            Some(Value::Array(parts)) => parts
                .iter()
                .find_map(|p| p.get("text").and_then(Value::as_str))
                .map(summarize_text)
                .unwrap_or_default(),
            Some(other) => summarize_value(other),
            None => String::new(),
        };
        out.push(StreamEvent::ToolResult { is_error, summary });
    }
}

/// `--include-partial-messages` frames: raw Anthropic SSE events. Text deltas are streamed; the
/// rest (message start/stop, tool input deltas, thinking) is ignored because the complete
/// `assistant` line follows anyway.
fn on_stream_event(ev: &Map<String, Value>, out: &mut Vec<StreamEvent>) {
    let Some(inner) = ev.get("event") else {
        return;
    };
    if inner.get("type").and_then(Value::as_str) != Some("content_block_delta") {
        return;
    }
    let Some(delta) = inner.get("delta") else {
        return;
    };
    if delta.get("type").and_then(Value::as_str) == Some("text_delta") {
        if let Some(text) = delta.get("text").and_then(Value::as_str) {
            out.push(StreamEvent::AssistantText {
                text: text.to_owned(),
                partial: true,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &[&str], exit: i32) -> (Vec<StreamEvent>, ParsedOutcome) {
        let mut p = ClaudeParser::default();
        let mut out = Vec::new();
        for l in lines {
            p.feed_line(l, &mut out);
        }
        let o = p.finish(
            ProcessExit {
                code: Some(exit),
                signal: None,
            },
            "",
        );
        (out, o)
    }

    #[test]
    fn rejected_rate_limit_event_carries_the_reset_time() {
        let (events, o) = run(
            &[
                r#"{"type":"system","subtype":"init","session_id":"s1"}"#,
                r#"{"type":"rate_limit_event","rate_limit_info":{"status":"allowed_warning","resetsAt":1795640000},"session_id":"s1"}"#,
                r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1795641234,"rateLimitType":"five_hour"},"session_id":"s1"}"#,
                r#"{"type":"result","subtype":"success","is_error":true,"result":"Claude AI usage limit reached|1795641234","session_id":"s1"}"#,
            ],
            1,
        );
        assert!(events.contains(&StreamEvent::RateLimited {
            resets_at: Some(1_795_641_234),
            retry_after_secs: None,
        }));
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, StreamEvent::RateLimited { .. }))
                .count(),
            1
        );
        assert_eq!(o.class, Some(OutcomeClass::RateLimited));
        assert_eq!(o.rate_limit_resets_at, Some(1_795_641_234));
        assert_eq!(o.unknown_events, 0);
    }

    #[test]
    fn rejected_rate_limit_without_result_is_rate_limited() {
        let (_, o) = run(
            &[
                r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1795641234000}}"#,
            ],
            1,
        );
        assert_eq!(o.class, Some(OutcomeClass::RateLimited));
        assert_eq!(o.rate_limit_resets_at, Some(1_795_641_234));
    }

    #[test]
    fn success_with_is_error_false_but_error_subtype_is_still_decided_by_is_error() {
        let (_, o) = run(
            &[
                r#"{"type":"result","subtype":"error_during_execution","is_error":false,"result":"ok","session_id":"s"}"#,
            ],
            0,
        );
        assert_eq!(o.class, Some(OutcomeClass::Success));
        assert_eq!(o.answer.as_deref(), Some("ok"));
    }

    #[test]
    fn success_without_a_result_string_is_not_success() {
        let (_, o) = run(
            &[r#"{"type":"result","subtype":"success","is_error":false,"session_id":"s"}"#],
            0,
        );
        assert_eq!(o.class, Some(OutcomeClass::CliError));
    }

    #[test]
    fn partial_text_deltas_stream_and_other_frames_are_ignored() {
        let (events, _) = run(
            &[
                r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"He"}}}"#,
                r#"{"type":"stream_event","event":{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{"}}}"#,
                r#"{"type":"stream_event","event":{"type":"message_stop"}}"#,
            ],
            0,
        );
        assert_eq!(
            events,
            vec![StreamEvent::AssistantText {
                text: "He".into(),
                partial: true
            }]
        );
    }

    #[test]
    fn tool_result_content_as_blocks_is_summarised() {
        let long = "y".repeat(10_000);
        let line = format!(
            r#"{{"type":"user","message":{{"content":[{{"type":"tool_result","is_error":true,"content":[{{"type":"text","text":"{long}"}}]}}]}}}}"#
        );
        let (events, _) = run(&[&line], 0);
        match events.as_slice() {
            [StreamEvent::ToolResult { is_error, summary }] => {
                assert!(*is_error);
                assert!(summary.chars().count() <= 200);
            }
            other => panic!("unexpected events {other:?}"),
        }
    }
}
