//! Pieces shared by the four parsers: line decoding, bounded summaries, the counters every parser
//! keeps, and the text heuristics used to classify a failure.
//!
//! Everything here works on `serde_json::Value` with checked accessors. The CLIs add fields and
//! event types from one release to the next, so strict structs would turn a harmless upgrade into
//! a parse failure; checked access also means no input can make us index out of bounds or unwrap
//! a missing value.

use std::io;

use kokino_core::{OutcomeClass, Usage};
use serde_json::{Map, Value};

use crate::{ParsedOutcome, ProcessExit, StreamEvent};

/// Longest tool summary we keep, in characters. Tool output can be megabytes; the stream only
/// needs enough to show what happened.
pub(crate) const SUMMARY_MAX_CHARS: usize = 200;

/// Longest error message we keep, in characters. Error messages are stored with the execution
/// and shown to clients, so they must stay bounded even when a CLI dumps a stack trace.
pub(crate) const ERROR_MAX_CHARS: usize = 2000;

/// How many bytes of JSON we serialise to build a summary of a structured tool input. A little
/// more than the summary itself, so that truncation happens on our side and on a char boundary.
const SUMMARY_JSON_BUDGET: usize = 4 * SUMMARY_MAX_CHARS;

/// Decodes one line into a JSON object.
///
/// Returns `Ok(None)` for a blank line: some CLIs print an empty line before exiting, and that is
/// neither an event nor garbage. Returns `Err(reason)` for anything that is not a JSON object.
/// The reason never contains the line itself, which could be huge or hold a secret.
pub(crate) fn decode_line(line: &str) -> Result<Option<Map<String, Value>>, String> {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(other) => Err(format!("expected a JSON object, got {}", json_kind(&other))),
        Err(err) => Err(format!("invalid JSON: {err}")),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The per-run bookkeeping every parser shares: what it has reported so far and how much of the
/// input it could not use.
#[derive(Debug, Default)]
pub(crate) struct Common {
    pub session_id: Option<String>,
    pub malformed_lines: u64,
    pub unknown_events: u64,
    /// The message of the first rate-limit signal of the run. A run the executor stopped there
    /// has no terminal event, and this is what its outcome says.
    pub rate_limit: Option<String>,
}

impl Common {
    /// Decodes a line and returns the object and its `type`. Malformed lines and objects without
    /// a string `type` are reported and counted here so that each parser only sees events.
    pub(crate) fn decode(
        &mut self,
        line: &str,
        out: &mut Vec<StreamEvent>,
    ) -> Option<(Map<String, Value>, String)> {
        match decode_line(line) {
            Ok(None) => None,
            Ok(Some(map)) => match map.get("type").and_then(Value::as_str) {
                Some(t) => {
                    let t = t.to_owned();
                    Some((map, t))
                }
                None => {
                    self.malformed(out, "JSON object without a string \"type\"".to_owned());
                    None
                }
            },
            Err(reason) => {
                self.malformed(out, reason);
                None
            }
        }
    }

    pub(crate) fn malformed(&mut self, out: &mut Vec<StreamEvent>, reason: String) {
        self.malformed_lines = self.malformed_lines.saturating_add(1);
        out.push(StreamEvent::Malformed { reason });
    }

    pub(crate) fn unknown(&mut self, out: &mut Vec<StreamEvent>, event_type: &str) {
        self.unknown_events = self.unknown_events.saturating_add(1);
        out.push(StreamEvent::Unknown {
            event_type: truncate_chars(event_type, SUMMARY_MAX_CHARS),
        });
    }

    /// Records a session id seen on any event. It is reported once, and again only if the CLI
    /// changes it, so the executor can store it as soon as it is known without being flooded.
    pub(crate) fn see_session(&mut self, id: Option<&str>, out: &mut Vec<StreamEvent>) {
        let Some(id) = id.map(str::trim).filter(|s| !s.is_empty()) else {
            return;
        };
        if self.session_id.as_deref() != Some(id) {
            self.session_id = Some(id.to_owned());
            out.push(StreamEvent::SessionId(id.to_owned()));
        }
    }

    /// Records a rate-limit signal and returns the event that reports it. Every signal is
    /// reported (a later one may carry a reset time); the first one's message is kept.
    pub(crate) fn rate_limited(
        &mut self,
        message: &str,
        resets_at: Option<i64>,
        retry_after_secs: Option<u64>,
    ) -> StreamEvent {
        if self.rate_limit.is_none() {
            self.rate_limit = Some(bound_error(message));
        }
        StreamEvent::RateLimited {
            resets_at,
            retry_after_secs,
        }
    }

    /// An outcome with the bookkeeping filled in; the parser adds the verdict.
    pub(crate) fn outcome(&self) -> ParsedOutcome {
        ParsedOutcome {
            session_id: self.session_id.clone(),
            malformed_lines: self.malformed_lines,
            unknown_events: self.unknown_events,
            ..ParsedOutcome::default()
        }
    }
}

/// Truncates to at most `max` characters, never splitting a character. A truncated string ends
/// in `…` (counted in `max`) so that readers can tell it was cut.
pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    if max == 0 {
        return String::new();
    }
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some(_) => {
            let keep = max - 1;
            let end = s.char_indices().nth(keep).map_or(s.len(), |(i, _)| i);
            let mut t = String::with_capacity(end + 3);
            t.push_str(&s[..end]);
            t.push('…');
            t
        }
    }
}

/// Keeps the last `max` characters (stderr tails: the end is where the error is).
pub(crate) fn tail_chars(s: &str, max: usize) -> String {
    let count = s.chars().count();
    if count <= max {
        return s.to_owned();
    }
    if max == 0 {
        return String::new();
    }
    let skip = count - (max - 1);
    let start = s.char_indices().nth(skip).map_or(s.len(), |(i, _)| i);
    let mut t = String::with_capacity(s.len() - start + 3);
    t.push('…');
    t.push_str(&s[start..]);
    t
}

/// Collapses whitespace runs (newlines included) to single spaces so a summary stays one line.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(SUMMARY_JSON_BUDGET));
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
        if out.len() > SUMMARY_JSON_BUDGET {
            break;
        }
    }
    out
}

/// A one-line summary of at most [`SUMMARY_MAX_CHARS`] characters of some text.
pub(crate) fn summarize_text(s: &str) -> String {
    // Only the head of a long text can end up in the summary; slicing first keeps `one_line`
    // from walking megabytes of tool output.
    let head_end = s
        .char_indices()
        .nth(SUMMARY_JSON_BUDGET)
        .map_or(s.len(), |(i, _)| i);
    truncate_chars(&one_line(&s[..head_end]), SUMMARY_MAX_CHARS)
}

/// A one-line summary of a tool input or result given as JSON. The most telling field is used
/// when there is one (a shell command, a file path, a query); otherwise a compact JSON prefix.
pub(crate) fn summarize_value(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => summarize_text(s),
        Value::Object(map) => {
            for key in [
                "command",
                "cmd",
                "file_path",
                "path",
                "pattern",
                "query",
                "url",
                "prompt",
                "description",
            ] {
                if let Some(s) = map.get(key).and_then(Value::as_str) {
                    return summarize_text(s);
                }
            }
            summarize_text(&bounded_json(v))
        }
        other => summarize_text(&bounded_json(other)),
    }
}

/// Serialises at most [`SUMMARY_JSON_BUDGET`] bytes of a value. A tool input can be a whole file
/// (the Write tool's `content`), and we only need its beginning.
fn bounded_json(v: &Value) -> String {
    struct Capped(Vec<u8>);
    impl io::Write for Capped {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let room = SUMMARY_JSON_BUDGET.saturating_sub(self.0.len());
            if room == 0 {
                // Failing the write stops the serializer early; what we have is enough.
                return Err(io::Error::other("summary budget reached"));
            }
            let n = room.min(buf.len());
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut w = Capped(Vec::new());
    // An error here only means the budget was reached; the prefix is what we want.
    let _ = serde_json::to_writer(&mut w, v);
    // The cut may fall inside a multi-byte character; lossy decoding turns that tail into a
    // replacement character instead of failing.
    String::from_utf8_lossy(&w.0).into_owned()
}

/// Reads a non-negative integer that a CLI may print as an integer or as a float.
pub(crate) fn get_u64(v: Option<&Value>) -> Option<u64> {
    let v = v?;
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    if f.is_finite() && f >= 0.0 {
        // Saturating float-to-int conversion; token counts never reach the limit anyway.
        Some(f as u64)
    } else {
        None
    }
}

pub(crate) fn get_u32(v: Option<&Value>) -> Option<u32> {
    get_u64(v).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

pub(crate) fn get_str<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

/// Builds a [`Usage`] from an object of token counts, given the field names this CLI uses.
/// Returns `None` when the object has none of them, so that "not reported" stays distinguishable
/// from "reported as zero".
pub(crate) fn usage_from(
    obj: Option<&Value>,
    input: &str,
    output: &str,
    cache_read: &str,
    cache_creation: &str,
) -> Option<Usage> {
    let obj = obj?.as_object()?;
    let field = |k: &str| get_u64(obj.get(k));
    let (i, o, r, c) = (
        field(input),
        field(output),
        field(cache_read),
        field(cache_creation),
    );
    if i.is_none() && o.is_none() && r.is_none() && c.is_none() {
        return None;
    }
    Some(Usage {
        input_tokens: i.unwrap_or(0),
        output_tokens: o.unwrap_or(0),
        cache_read_tokens: r.unwrap_or(0),
        cache_creation_tokens: c.unwrap_or(0),
    })
}

/// Whether `text` contains the HTTP status `code` as a number of its own (so "429" matches
/// "status: 429" but not "14290").
pub(crate) fn mentions_status(text: &str, code: &str) -> bool {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(pos) = text.get(from..).and_then(|t| t.find(code)) {
        let start = from + pos;
        let end = start + code.len();
        let digit_before = start > 0 && bytes.get(start - 1).is_some_and(u8::is_ascii_digit);
        let digit_after = bytes.get(end).is_some_and(u8::is_ascii_digit);
        if !digit_before && !digit_after {
            return true;
        }
        from = end;
    }
    false
}

/// Whether an error text describes a rejected quota. The phrases are the ones the CLIs and the
/// provider APIs use for HTTP 429 (Anthropic `rate_limit_error`, OpenAI "Too Many Requests" and
/// "usage limit", Google `RESOURCE_EXHAUSTED`).
pub(crate) fn looks_rate_limited(text: &str) -> bool {
    let lower = text.to_lowercase();
    mentions_status(text, "429")
        || [
            "too many requests",
            "rate limit",
            "rate_limit",
            "ratelimit",
            "quota",
            "resource_exhausted",
            "usage limit",
        ]
        .iter()
        .any(|p| lower.contains(p))
}

/// A retry delay named in an error text, in whole seconds (rounded up, at least 1): a Google
/// `RetryInfo` `"retryDelay": "27s"`, or the "try again in 1.5s" / "try again in 20 seconds" /
/// "retry after 30" phrasings of the OpenAI and Anthropic APIs.
pub(crate) fn retry_after_from_text(text: &str) -> Option<u64> {
    let lower = text.to_lowercase();
    for marker in ["retrydelay", "try again in", "retry after", "retry-after"] {
        let Some(pos) = lower.find(marker) else {
            continue;
        };
        let rest = &lower[pos + marker.len()..];
        // Skip the JSON punctuation and spaces between the name and its value.
        let rest = rest.trim_start_matches(['"', '\'', ':', ' ', '=']);
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let Ok(n) = rest[..num_len].parse::<f64>() else {
            continue;
        };
        let unit = rest[num_len..].trim_start();
        let secs = if unit.starts_with("ms") {
            n / 1000.0
        } else if unit.starts_with('m') && !unit.starts_with("ms") && marker != "retrydelay" {
            // "try again in 2m" / "2 minutes"; a Google delay is always in seconds.
            n * 60.0
        } else {
            n
        };
        return whole_seconds(secs);
    }
    None
}

/// Rounds a delay up to whole seconds, at least 1; `None` for nonsense.
pub(crate) fn whole_seconds(secs: f64) -> Option<u64> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    // Saturating float-to-int conversion; delays are far below the limit.
    Some((secs.ceil() as u64).max(1))
}

/// Whether an error text describes missing or rejected credentials.
pub(crate) fn looks_auth_failed(text: &str) -> bool {
    let lower = text.to_lowercase();
    mentions_status(text, "401")
        || [
            "unauthorized",
            "authentication failed",
            "authentication_failed",
            "authentication_error",
            "failed to authenticate",
            "not logged in",
            "invalid api key",
            "invalid_api_key",
        ]
        .iter()
        .any(|p| lower.contains(p))
}

/// Classifies a failure from its message alone, for CLIs whose failures carry no structured kind.
/// Auth is checked first: a rejected key must stop the agent, not park it until a reset that will
/// never help.
pub(crate) fn classify_text(text: &str) -> OutcomeClass {
    if looks_auth_failed(text) {
        OutcomeClass::AuthError
    } else if looks_rate_limited(text) {
        OutcomeClass::RateLimited
    } else {
        OutcomeClass::CliError
    }
}

/// The message for a run that ended without its terminal event: how the process ended, the last
/// error the CLI reported on its stream, and the end of its stderr.
pub(crate) fn missing_final_message(
    exit: ProcessExit,
    last_error: Option<&str>,
    stderr_tail: &str,
) -> String {
    let how = match (exit.code, exit.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => "exit status unknown".to_owned(),
    };
    let mut msg = format!("missing final event ({how})");
    if let Some(e) = last_error.map(str::trim).filter(|e| !e.is_empty()) {
        msg.push_str("; last error: ");
        msg.push_str(e);
    }
    let tail = stderr_tail.trim();
    if !tail.is_empty() {
        msg.push_str("; stderr: ");
        msg.push_str(tail);
    }
    bound_error(&msg)
}

/// Bounds an error message for storage: keeps the head of stream messages, which is where the
/// CLI's own words are.
pub(crate) fn bound_error(msg: &str) -> String {
    truncate_chars(msg.trim(), ERROR_MAX_CHARS)
}

/// The end of stderr, bounded, for use as an error message when nothing better exists.
pub(crate) fn stderr_message(stderr_tail: &str) -> Option<String> {
    let t = stderr_tail.trim();
    (!t.is_empty()).then(|| tail_chars(t, ERROR_MAX_CHARS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn truncation_respects_char_boundaries_and_the_limit() {
        let s = "é".repeat(500);
        let t = truncate_chars(&s, 200);
        assert_eq!(t.chars().count(), 200);
        assert!(t.ends_with('…'));
        assert_eq!(truncate_chars("short", 200), "short");
        assert_eq!(truncate_chars("abc", 0), "");
        let tail = tail_chars(&"ü".repeat(50), 10);
        assert_eq!(tail.chars().count(), 10);
        assert!(tail.starts_with('…'));
    }

    #[test]
    fn summaries_prefer_the_telling_field_and_stay_short() {
        assert_eq!(
            summarize_value(&json!({"command": "echo hi", "description": "x"})),
            "echo hi"
        );
        let big = json!({"content": "x".repeat(1_000_000)});
        let s = summarize_value(&big);
        assert!(s.chars().count() <= SUMMARY_MAX_CHARS);
        assert!(s.starts_with("{\"content\":\"xxx"));
        assert_eq!(summarize_text("a\n  b\tc"), "a b c");
        let multibyte = summarize_value(&json!(["€".repeat(10_000)]));
        assert!(multibyte.chars().count() <= SUMMARY_MAX_CHARS);
    }

    #[test]
    fn status_codes_match_only_as_whole_numbers() {
        assert!(mentions_status("last status: 429 Too Many Requests", "429"));
        assert!(mentions_status("(429)", "429"));
        assert!(!mentions_status("id 14290", "429"));
        assert!(!mentions_status("4291", "429"));
        assert!(mentions_status("4291 and 429", "429"));
    }

    #[test]
    fn classification_of_free_text() {
        assert_eq!(
            classify_text("exceeded retry limit, last status: 429 Too Many Requests"),
            OutcomeClass::RateLimited
        );
        assert_eq!(
            classify_text("unexpected status 401 Unauthorized"),
            OutcomeClass::AuthError
        );
        assert_eq!(classify_text("boom"), OutcomeClass::CliError);
    }

    #[test]
    fn retry_delays_are_read_from_error_texts() {
        assert_eq!(
            retry_after_from_text(
                r#"{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"27s"}"#
            ),
            Some(27)
        );
        assert_eq!(
            retry_after_from_text("Rate limit reached. Please try again in 1.5s."),
            Some(2)
        );
        assert_eq!(retry_after_from_text("try again in 250ms"), Some(1));
        assert_eq!(retry_after_from_text("Please try again in 2m."), Some(120));
        assert_eq!(retry_after_from_text("retry-after: 30"), Some(30));
        assert_eq!(retry_after_from_text("429 Too Many Requests"), None);
        assert_eq!(retry_after_from_text("try again in a while"), None);
    }

    #[test]
    fn decode_line_reports_kinds_without_echoing_input() {
        assert_eq!(decode_line("   "), Ok(None));
        assert!(decode_line("[1]").unwrap_err().contains("an array"));
        let err = decode_line("{\"secret\":\"hunter2").unwrap_err();
        assert!(!err.contains("hunter2"));
    }
}
