//! Parser for `gemini -o stream-json` (guides/peer-systems.md §3.3).
//!
//! The answer is the concatenation of the assistant `message` events (streamed as `delta:true`
//! chunks); `result` has no text and ends the turn. Early failures (auth above all) never reach
//! stdout: they are plain text, or with `-o json` a JSON object, on stderr, with a fixed exit code.

use kokino_core::{OutcomeClass, Usage};
use serde_json::{Map, Value};

use crate::common::{
    bound_error, classify_text, get_str, missing_final_message, retry_after_from_text,
    stderr_message, summarize_text, summarize_value, usage_from, Common,
};
use crate::{ParsedOutcome, ProcessExit, StreamEvent, StreamParser};

/// Gemini's fixed exit codes (bundle: `FatalAuthenticationError` 41, `FatalInputError` 42,
/// `FatalSandboxError` 44, `FatalConfigError` 52, `FatalTurnLimitedError` 53,
/// `FatalToolExecutionError` 54, `FatalUntrustedWorkspaceError` 55, `FatalCancellationError` 130).
pub(crate) const EXIT_AUTH: i32 = 41;

fn exit_code_meaning(code: i32) -> Option<&'static str> {
    Some(match code {
        EXIT_AUTH => "authentication failed",
        42 => "invalid input",
        44 => "sandbox error",
        52 => "configuration error",
        53 => "turn limit reached",
        54 => "tool execution error",
        55 => "untrusted workspace",
        130 => "cancelled",
        _ => return None,
    })
}

/// What gemini prints on stderr (exit 42) when `--resume` names a session it does not have, and
/// when `--resume latest` finds none (gemini-resume-unknown.stderr, docs/reference/real-clis.md).
const SESSION_NOT_FOUND: &[&str] = &["Invalid session identifier", "No previous sessions found"];

/// The start of the stderr line gemini prints for each failed API attempt it is about to retry
/// (gemini-429-25s.stderr: `Attempt 1 failed with status 429. Retrying with backoff...
/// _ApiError: {…RESOURCE_EXHAUSTED…}`); stdout stays silent meanwhile.
const ATTEMPT_PREFIX: &str = "Attempt ";
const ATTEMPT_FAILED: &str = " failed with status ";

/// The status of an `Attempt N failed with status S` line.
fn failed_attempt_status(line: &str) -> Option<u16> {
    let rest = line.trim_start().strip_prefix(ATTEMPT_PREFIX)?;
    let digits = rest.find(|c: char| !c.is_ascii_digit())?;
    if digits == 0 {
        return None;
    }
    let rest = rest[digits..].strip_prefix(ATTEMPT_FAILED)?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn mentions_session_not_found(text: &str) -> bool {
    SESSION_NOT_FOUND.iter().any(|m| text.contains(m))
}

/// The `result` event, reduced to what classification needs.
#[derive(Debug)]
struct FinalResult {
    success: bool,
    error_message: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct GeminiParser {
    common: Common,
    /// Concatenated assistant text. Bounded by the answer itself, which the broker returns anyway.
    answer: String,
    saw_assistant_message: bool,
    final_result: Option<FinalResult>,
    usage: Option<Usage>,
    /// The latest `error` event (severity warning or error): not terminal by itself.
    last_error: Option<String>,
    /// stderr said the session to resume does not exist.
    session_not_found: bool,
}

impl StreamParser for GeminiParser {
    fn feed_line(&mut self, line: &str, out: &mut Vec<StreamEvent>) {
        let Some((ev, ty)) = self.common.decode(line, out) else {
            return;
        };
        match ty.as_str() {
            "init" => self.common.see_session(get_str(&ev, "session_id"), out),
            "message" => self.on_message(&ev, out),
            "tool_use" => {
                let name = get_str(&ev, "tool_name").unwrap_or("tool");
                out.push(StreamEvent::ToolUse {
                    name: summarize_text(name),
                    input_summary: ev
                        .get("parameters")
                        .map(summarize_value)
                        .unwrap_or_default(),
                });
            }
            "tool_result" => {
                let is_error = get_str(&ev, "status") == Some("error");
                let error_message = ev
                    .get("error")
                    .and_then(|e| e.get("message"))
                    .and_then(Value::as_str);
                let summary = match (is_error, error_message) {
                    (true, Some(m)) => summarize_text(m),
                    _ => ev.get("output").map(summarize_value).unwrap_or_default(),
                };
                out.push(StreamEvent::ToolResult { is_error, summary });
            }
            "error" => {
                // Gemini reports warnings (loop detection, …) this way and goes on; a fatal error
                // is followed by a `result` with `status:"error"` or by a fixed exit code.
                if let Some(m) = get_str(&ev, "message") {
                    self.last_error = Some(bound_error(m));
                }
            }
            "result" => self.on_result(&ev, out),
            t => self.common.unknown(out, t),
        }
    }

    fn stderr_line(&mut self, line: &str) -> Option<StreamEvent> {
        self.session_not_found |= mentions_session_not_found(line);
        if failed_attempt_status(line) != Some(429) {
            return None;
        }
        // Gemini retries a 429 ten times over minutes; this line comes within a second. The
        // API error after it may name a delay (`RetryInfo.retryDelay`).
        let retry_after = retry_after_from_text(line);
        Some(self.common.rate_limited(line.trim(), None, retry_after))
    }

    fn finish(&mut self, exit: ProcessExit, stderr_tail: &str) -> ParsedOutcome {
        let mut o = self.common.outcome();
        o.usage = self.usage;
        o.session_not_found = self.final_result.is_none()
            && (self.session_not_found || mentions_session_not_found(stderr_tail));
        if let Some(fin) = &self.final_result {
            if fin.success {
                if self.saw_assistant_message {
                    o.class = Some(OutcomeClass::Success);
                    o.answer = Some(self.answer.clone());
                } else {
                    o.class = Some(OutcomeClass::CliError);
                    o.error_message = Some("turn finished without an assistant message".into());
                }
                return o;
            }
            let message = fin
                .error_message
                .clone()
                .or_else(|| self.last_error.clone())
                .or_else(|| stderr_error_message(stderr_tail))
                .unwrap_or_else(|| "error result without a message".to_owned());
            o.class = Some(classify(exit, &message));
            o.error_message = Some(bound_error(&message));
            return o;
        }

        // No `result` after a 429 it was retrying: stopped by the executor at the first attempt,
        // or killed by a timeout in the middle of its retries.
        if let Some(message) = &self.common.rate_limit {
            o.class = Some(OutcomeClass::RateLimited);
            o.error_message = Some(message.clone());
            return o;
        }

        // No `result`: a fixed exit code still says what happened, and stderr says the rest.
        if let Some(meaning) = exit.code.and_then(exit_code_meaning) {
            let code = exit.code.unwrap_or_default();
            let detail = stderr_error_message(stderr_tail).or_else(|| self.last_error.clone());
            let message = match detail {
                Some(d) => format!("{meaning} (exit code {code}): {d}"),
                None => format!("{meaning} (exit code {code})"),
            };
            o.class = Some(classify(exit, &message));
            o.error_message = Some(bound_error(&message));
            return o;
        }
        o.class = Some(OutcomeClass::CliError);
        o.error_message = Some(missing_final_message(
            exit,
            self.last_error.as_deref(),
            stderr_tail,
        ));
        o
    }
}

/// Exit 41 is Gemini's own verdict on auth and beats any text; otherwise the message decides.
fn classify(exit: ProcessExit, message: &str) -> OutcomeClass {
    if exit.code == Some(EXIT_AUTH) {
        OutcomeClass::AuthError
    } else {
        classify_text(message)
    }
}

/// The error text from stderr. With `-o json` Gemini prints `{session_id, error{type, message,
/// code}}` there (pretty-printed over several lines), otherwise plain text; stderr may also hold
/// other diagnostics before the JSON, so the object is looked for from its last top-level `{`.
fn stderr_error_message(stderr_tail: &str) -> Option<String> {
    let t = stderr_tail.trim();
    if t.is_empty() {
        return None;
    }
    let candidates = t
        .match_indices('{')
        .map(|(i, _)| i)
        .filter(|&i| i == 0 || t.get(..i).is_some_and(|before| before.ends_with('\n')));
    for start in candidates {
        let Some(slice) = t.get(start..) else {
            continue;
        };
        if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(slice) {
            let msg = obj
                .get("error")
                .and_then(|e| e.get("message").or(Some(e)))
                .and_then(Value::as_str)
                .or_else(|| obj.get("message").and_then(Value::as_str));
            if let Some(m) = msg {
                return Some(m.to_owned());
            }
        }
    }
    stderr_message(t)
}

impl GeminiParser {
    fn on_message(&mut self, ev: &Map<String, Value>, out: &mut Vec<StreamEvent>) {
        if get_str(ev, "role") != Some("assistant") {
            return;
        }
        let Some(text) = get_str(ev, "content") else {
            return;
        };
        self.saw_assistant_message = true;
        self.answer.push_str(text);
        let partial = ev.get("delta").and_then(Value::as_bool).unwrap_or(false);
        out.push(StreamEvent::AssistantText {
            text: text.to_owned(),
            partial,
        });
    }

    fn on_result(&mut self, ev: &Map<String, Value>, out: &mut Vec<StreamEvent>) {
        let success = get_str(ev, "status") == Some("success");
        let error_message = ev
            .get("error")
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        self.final_result = Some(FinalResult {
            success,
            error_message,
        });
        // `input_tokens` is the prompt including cached tokens; `cached` is the cached part.
        if let Some(u) = usage_from(
            ev.get("stats"),
            "input_tokens",
            "output_tokens",
            "cached",
            "cache_creation_tokens",
        ) {
            self.usage = Some(u);
        }
        out.push(StreamEvent::Final);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32) -> ProcessExit {
        ProcessExit {
            code: Some(code),
            signal: None,
        }
    }

    #[test]
    fn plain_text_auth_failure_on_stderr_with_exit_41() {
        let mut p = GeminiParser::default();
        let o = p.finish(
            exit(41),
            "Please set an Auth method in your settings.json\n",
        );
        assert_eq!(o.class, Some(OutcomeClass::AuthError));
        assert!(o
            .error_message
            .unwrap()
            .contains("Please set an Auth method"));
    }

    #[test]
    fn json_on_stderr_after_other_diagnostics() {
        let tail = "[WARN] something\n{\n  \"error\": {\"type\": \"Error\", \"message\": \"bad input\", \"code\": 42}\n}\n";
        assert_eq!(stderr_error_message(tail).as_deref(), Some("bad input"));
        let mut p = GeminiParser::default();
        let o = p.finish(exit(42), tail);
        assert_eq!(o.class, Some(OutcomeClass::CliError));
        assert_eq!(
            o.error_message.as_deref(),
            Some("invalid input (exit code 42): bad input")
        );
    }

    #[test]
    fn error_result_with_quota_message_is_rate_limited() {
        let mut p = GeminiParser::default();
        let mut out = Vec::new();
        p.feed_line(
            r#"{"type":"result","status":"error","error":{"type":"ApiError","message":"[429] RESOURCE_EXHAUSTED quota exceeded"}}"#,
            &mut out,
        );
        let o = p.finish(exit(1), "");
        assert_eq!(o.class, Some(OutcomeClass::RateLimited));
    }

    #[test]
    fn failed_attempt_lines_are_read() {
        assert_eq!(
            failed_attempt_status("Attempt 1 failed with status 429. Retrying with backoff... x"),
            Some(429)
        );
        assert_eq!(
            failed_attempt_status("Attempt 10 failed with status 503. Retrying"),
            Some(503)
        );
        assert_eq!(
            failed_attempt_status("Attempt x failed with status 429"),
            None
        );
        assert_eq!(failed_attempt_status("  status: 429"), None);
        let mut p = GeminiParser::default();
        assert_eq!(
            p.stderr_line("Attempt 2 failed with status 503. Retrying"),
            None
        );
        assert_eq!(
            p.stderr_line(r#"Attempt 1 failed with status 429. Retrying with backoff... _ApiError: {"error":{"code":429,"details":[{"retryDelay":"27s"}]}}"#),
            Some(StreamEvent::RateLimited {
                resets_at: None,
                retry_after_secs: Some(27)
            })
        );
        let o = p.finish(exit(143), "");
        assert_eq!(o.class, Some(OutcomeClass::RateLimited));
        assert!(o
            .error_message
            .unwrap()
            .starts_with("Attempt 1 failed with status 429"));
    }

    #[test]
    fn deltas_are_concatenated() {
        let mut p = GeminiParser::default();
        let mut out = Vec::new();
        for l in [
            r#"{"type":"message","role":"assistant","content":"Hel","delta":true}"#,
            r#"{"type":"message","role":"assistant","content":"lo","delta":true}"#,
            r#"{"type":"result","status":"success","stats":{}}"#,
        ] {
            p.feed_line(l, &mut out);
        }
        let o = p.finish(exit(0), "");
        assert_eq!(o.answer.as_deref(), Some("Hello"));
        assert_eq!(o.usage, None);
    }
}
