//! What the stand-in reads from a request: the conversation it carries, reduced to user turns
//! and tool results, and the scenario the last user turn asks for.
//!
//! The three wire formats put the conversation in different places (`messages` for Anthropic,
//! `contents` for Gemini, `input` for OpenAI Responses); each is reduced to the same list of
//! [`Msg`] so that the scripting and the turn count work the same for every CLI.

use std::time::Duration;

use serde_json::Value;

/// One message of the conversation, as far as the stand-in cares.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// A turn typed by the user (the CLIs' own context blocks removed).
    User(String),
    /// The output of a tool the model asked for.
    ToolResult(String),
    /// Anything else: assistant turns, tool calls, reasoning.
    Other,
}

/// What the stand-in does with a request, from the tokens in the last user turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Scenario {
    /// Answer with text, spread over `over` (zero: at once).
    Answer { over: Duration },
    /// Ask for a shell tool call running `echo tool-ok`.
    Tool,
    /// Fail with this HTTP status; `retry_after` seconds for 429.
    Error {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Start the stream and never finish it.
    Hang,
}

/// The tokens a prompt can carry. Documented in the crate's `main.rs` and in
/// `docs/reference/real-clis.md`.
pub fn scenario_of(last_user: &str) -> Scenario {
    if let Some(v) = token(last_user, "RATE429") {
        return Scenario::Error {
            status: 429,
            retry_after: Some(v.and_then(|v| v.parse().ok()).unwrap_or(1)),
        };
    }
    for (name, status) in [
        ("AUTH401", 401),
        ("AUTH403", 403),
        ("ERR500", 500),
        ("ERR503", 503),
        ("OVER529", 529),
    ] {
        if token(last_user, name).is_some() {
            return Scenario::Error {
                status,
                retry_after: None,
            };
        }
    }
    if token(last_user, "HANG").is_some() {
        return Scenario::Hang;
    }
    if token(last_user, "USE_TOOL").is_some() {
        return Scenario::Tool;
    }
    if let Some(v) = token(last_user, "SLOW_STREAM") {
        let secs = v.and_then(|v| v.parse::<f64>().ok()).unwrap_or(5.0);
        return Scenario::Answer {
            over: Duration::from_secs_f64(secs.clamp(0.0, 3600.0)),
        };
    }
    Scenario::Answer {
        over: Duration::ZERO,
    }
}

/// `Some(None)` when `name` occurs as a word, `Some(Some(v))` for `name=v`.
fn token<'a>(text: &'a str, name: &str) -> Option<Option<&'a str>> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == '"')
        .find_map(|word| {
            let word = word.trim_matches(|c: char| c == '.' || c == ':' || c == '`');
            if word == name {
                Some(None)
            } else {
                word.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('='))
                    .map(Some)
            }
        })
}

/// Text blocks the CLIs add to user messages on their own (Claude's `<system-reminder>`,
/// Codex's `<environment_context>` and `<user_instructions>`, Gemini's start-up context) are not
/// user turns: a block counts only when it does not start with `<` and is not Gemini's
/// set-up message.
fn is_user_text(text: &str) -> bool {
    let t = text.trim_start();
    !t.is_empty()
        && !t.starts_with('<')
        && !t.starts_with("This is the Gemini CLI. We are setting up the context")
        && !t.starts_with("# AGENTS.md instructions")
}

fn user_msg(texts: Vec<String>) -> Msg {
    let texts: Vec<String> = texts.into_iter().filter(|t| is_user_text(t)).collect();
    if texts.is_empty() {
        Msg::Other
    } else {
        Msg::User(texts.join("\n"))
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                _ => i
                    .get("text")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| i.to_string()),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Anthropic Messages: `messages[]` with `content` a string or blocks; tool results are
/// `tool_result` blocks inside user messages.
pub fn anthropic(body: &Value) -> Vec<Msg> {
    let mut out = Vec::new();
    for m in body["messages"].as_array().into_iter().flatten() {
        let role = m["role"].as_str().unwrap_or("");
        if role != "user" {
            out.push(Msg::Other);
            continue;
        }
        match &m["content"] {
            Value::String(s) => out.push(user_msg(vec![s.clone()])),
            Value::Array(blocks) => {
                let mut texts = Vec::new();
                for b in blocks {
                    match b["type"].as_str() {
                        Some("tool_result") => out.push(Msg::ToolResult(text_of(&b["content"]))),
                        Some("text") => texts.push(b["text"].as_str().unwrap_or("").to_owned()),
                        _ => {}
                    }
                }
                if !texts.is_empty() {
                    out.push(user_msg(texts));
                }
            }
            _ => out.push(Msg::Other),
        }
    }
    out
}

/// Gemini: `contents[]` of `{role, parts[]}`; tool results are `functionResponse` parts.
pub fn gemini(body: &Value) -> Vec<Msg> {
    let mut out = Vec::new();
    for c in body["contents"].as_array().into_iter().flatten() {
        if c["role"].as_str() != Some("user") {
            out.push(Msg::Other);
            continue;
        }
        let mut texts = Vec::new();
        for p in c["parts"].as_array().into_iter().flatten() {
            if let Some(t) = p["text"].as_str() {
                texts.push(t.to_owned());
            } else if let Some(r) = p.get("functionResponse") {
                out.push(Msg::ToolResult(r["response"].to_string()));
            }
        }
        if !texts.is_empty() {
            out.push(user_msg(texts));
        }
    }
    out
}

/// OpenAI Responses: `input` is a string or items; messages have a `role`, tool results are
/// `function_call_output` (or `custom_tool_call_output`, `local_shell_call_output`) items.
pub fn openai(body: &Value) -> Vec<Msg> {
    let input = &body["input"];
    if let Some(s) = input.as_str() {
        return vec![user_msg(vec![s.to_owned()])];
    }
    let mut out = Vec::new();
    for item in input.as_array().into_iter().flatten() {
        let kind = item["type"].as_str().unwrap_or("message");
        if kind.ends_with("_output") {
            out.push(Msg::ToolResult(text_of(&item["output"])));
        } else if kind == "message" && item["role"].as_str() == Some("user") {
            out.push(user_msg(vec![text_of(&item["content"])]));
        } else {
            out.push(Msg::Other);
        }
    }
    out
}

/// What the stand-in answers with: the scenario of the last user turn, or, when the
/// conversation ends with a tool result, a plain answer that says what the tool printed.
pub struct Reading {
    pub scenario: Scenario,
    /// User turns before the last one: the proof that a resumed session sent its history.
    pub earlier_user_turns: usize,
    /// `Some(output)` when the request ends with a tool result.
    pub after_tool: Option<String>,
}

pub fn read(msgs: &[Msg]) -> Reading {
    let users: Vec<&str> = msgs
        .iter()
        .filter_map(|m| match m {
            Msg::User(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let earlier_user_turns = users.len().saturating_sub(1);
    let last_relevant = msgs.iter().rev().find(|m| !matches!(m, Msg::Other));
    match last_relevant {
        Some(Msg::ToolResult(out)) => Reading {
            scenario: Scenario::Answer {
                over: Duration::ZERO,
            },
            earlier_user_turns,
            after_tool: Some(out.clone()),
        },
        _ => Reading {
            scenario: users
                .last()
                .map(|t| scenario_of(t))
                .unwrap_or(Scenario::Answer {
                    over: Duration::ZERO,
                }),
            earlier_user_turns,
            after_tool: None,
        },
    }
}

/// The answer text. Tests look for `FAKE_ANSWER: <n> earlier user turns` and, after a tool,
/// `after tool: tool-ok`.
pub fn answer_text(r: &Reading) -> String {
    let mut s = format!("FAKE_ANSWER: {} earlier user turns", r.earlier_user_turns);
    if let Some(out) = &r.after_tool {
        if out.contains("tool-ok") {
            s.push_str(", after tool: tool-ok");
        } else {
            s.push_str(", after tool: no tool-ok in the tool result");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tokens_are_words_with_optional_values() {
        assert_eq!(
            scenario_of("please RATE429=7 now"),
            Scenario::Error {
                status: 429,
                retry_after: Some(7)
            }
        );
        assert_eq!(
            scenario_of("SLOW_STREAM=2.5"),
            Scenario::Answer {
                over: Duration::from_millis(2500)
            }
        );
        assert_eq!(scenario_of("USE_TOOL please"), Scenario::Tool);
        assert_eq!(
            scenario_of("RATE4290"),
            Scenario::Answer {
                over: Duration::ZERO
            }
        );
    }

    #[test]
    fn counts_user_turns_without_cli_context_blocks() {
        let body = json!({"messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>x</system-reminder>"},
                {"type": "text", "text": "first"}]},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "second USE_TOOL"},
        ]});
        let r = read(&anthropic(&body));
        assert_eq!(r.earlier_user_turns, 1);
        assert_eq!(r.scenario, Scenario::Tool);
    }

    #[test]
    fn a_tool_result_at_the_end_is_answered_not_rescripted() {
        let body = json!({"input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context>x</environment_context>"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "USE_TOOL"}]},
            {"type": "function_call", "name": "shell", "arguments": "{}", "call_id": "c"},
            {"type": "function_call_output", "call_id": "c", "output": "tool-ok\n"},
        ]});
        let r = read(&openai(&body));
        assert_eq!(r.earlier_user_turns, 0);
        assert_eq!(
            answer_text(&r),
            "FAKE_ANSWER: 0 earlier user turns, after tool: tool-ok"
        );
    }
}
