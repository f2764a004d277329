//! Claude Code's TUI: its boxed prompt, its `● ` answer prefix, and its session transcript.
//!
//! Interactive Claude Code appends every conversation entry to
//! `$HOME/.claude/projects/<cwd key>/<session id>.jsonl` (format:
//! `captures/claude/claude-interactive-transcript.jsonl`) and ends each turn with a
//! `{"type":"system","subtype":"turn_duration"}` entry. That entry is the CLI's own statement
//! that the turn is over; the answer is the assistant text in the same file.
//!
//! The entries are not always in the order they happened: on the first prompt of a new session
//! Claude Code 2.1 writes the answer and `turn_duration` *before* the prompt's own `user` entry
//! (`captures/claude/claude-interactive-first-turn.jsonl`). So entries that arrive before the
//! prompt are kept, and those dated no earlier than the prompt count once it arrives.

use std::path::{Path, PathBuf};

use kokino_core::{CliType, OutcomeClass};
use serde_json::Value;

use super::prepare::{add_missing, json_object, json_text, object_at};
use super::{
    BlockedScreen, FirstRunScreen, SetupContext, TranscriptContext, TranscriptParser,
    TranscriptSource, Tui, TurnEnd, COMMON_FIRST_RUN_SCREENS,
};
use crate::{SessionArg, StreamEvent};

/// Claude Code's TUI.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClaudeTui;

impl Tui for ClaudeTui {
    fn cli(&self) -> CliType {
        CliType::ClaudeCode
    }

    fn interactive_args(&self, session: SessionArg<'_>, model: Option<&str>) -> Vec<String> {
        let mut args = match session {
            SessionArg::New { preassigned_id } => {
                vec!["--session-id".to_owned(), preassigned_id.to_owned()]
            }
            SessionArg::Resume { session_id } => {
                vec!["--resume".to_owned(), session_id.to_owned()]
            }
        };
        if let Some(m) = model {
            args.extend(["--model".to_owned(), m.to_owned()]);
        }
        args
    }

    /// Claude Code 2.x draws `❯` followed by a no-break space between two rules, and on a
    /// fresh session a suggestion as placeholder (`❯ Try "fix lint errors"`); older versions
    /// and the fake agent draw the input inside a box (`│ >      │`), whose right-hand border
    /// is ignored.
    fn is_prompt_line(&self, line: &str) -> bool {
        let t = line.trim();
        let inner = t.strip_suffix('│').map(str::trim_end).unwrap_or(t);
        if inner == "│ >" || inner == ">" || inner == "❯" {
            return true;
        }
        inner
            .strip_prefix('❯')
            .map(str::trim_start)
            .is_some_and(|rest| rest.starts_with("Try \""))
    }

    /// The trust question of Claude Code 2.x ("Quick safety check") and its API-key question,
    /// whose default is "No (recommended)": both answered by choosing the option explicitly.
    fn first_run_screens(&self) -> &'static [FirstRunScreen] {
        CLAUDE_FIRST_RUN_SCREENS
    }

    fn blocked_screens(&self) -> &'static [BlockedScreen] {
        CLAUDE_BLOCKED
    }

    fn config_files(&self, ctx: &SetupContext<'_>) -> Vec<PathBuf> {
        vec![ctx.home.join(".claude.json")]
    }

    /// `~/.claude.json`: `hasCompletedOnboarding`, `projects[cwd].hasTrustDialogAccepted`, and
    /// the agent's `ANTHROPIC_API_KEY` (its last 20 characters, as Claude Code records it) in
    /// `customApiKeyResponses.approved` unless the operator rejected it.
    fn merge_config(
        &self,
        _path: &Path,
        existing: Option<&str>,
        ctx: &SetupContext<'_>,
    ) -> Result<Option<String>, String> {
        let mut root = json_object(existing)?;
        let mut changed = add_missing(&mut root, "hasCompletedOnboarding", Value::Bool(true));
        if let Some(projects) = object_at(&mut root, "projects") {
            let before = projects.len();
            if let Some(project) = object_at(projects, &ctx.cwd.to_string_lossy()) {
                changed |= add_missing(project, "hasTrustDialogAccepted", Value::Bool(true));
            }
            changed |= projects.len() != before;
        }
        if let Some(key) = ctx.env.get("ANTHROPIC_API_KEY").filter(|k| !k.is_empty()) {
            let chars: Vec<char> = key.chars().collect();
            let tail: String = chars[chars.len().saturating_sub(20)..].iter().collect();
            let before = root.contains_key("customApiKeyResponses");
            if let Some(responses) = object_at(&mut root, "customApiKeyResponses") {
                let listed = |name: &str, r: &serde_json::Map<String, Value>| {
                    r.get(name)
                        .and_then(Value::as_array)
                        .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(tail.as_str())))
                };
                if !listed("approved", responses) && !listed("rejected", responses) {
                    changed |= add_missing(responses, "rejected", Value::Array(Vec::new()));
                    if let Some(approved) = responses
                        .entry("approved")
                        .or_insert_with(|| Value::Array(Vec::new()))
                        .as_array_mut()
                    {
                        approved.push(Value::String(tail.clone()));
                        changed = true;
                    }
                }
                changed |= !before;
            }
        }
        Ok(json_text(root, changed))
    }

    fn prompt_output_suffix(&self) -> &'static [u8] {
        "│ > ".as_bytes()
    }

    fn answer_prefix(&self) -> Option<&'static str> {
        Some("● ")
    }

    /// The transcript needs the session id, which the broker chooses for a new Claude session
    /// (`--session-id`) and knows for a resumed one.
    fn transcript(&self, ctx: &TranscriptContext<'_>) -> Option<TranscriptSource> {
        let sid = ctx.session_id.filter(|s| !s.is_empty())?;
        Some(TranscriptSource::new(
            transcript_path(ctx.home, ctx.cwd, sid),
            Box::<ClaudeTranscript>::default(),
        ))
    }
}

/// Claude Code's first-run screens, then the common ones.
const CLAUDE_FIRST_RUN_SCREENS: &[FirstRunScreen] = &[
    FirstRunScreen::choose(
        "claude trust this folder",
        "Is this a project you created or one you trust?",
        "Yes, I trust this folder",
    ),
    FirstRunScreen::choose(
        "claude use this API key",
        "Do you want to use this API key?",
        "Yes",
    ),
    COMMON_FIRST_RUN_SCREENS[0],
    COMMON_FIRST_RUN_SCREENS[1],
];

/// The directory name Claude Code uses for a project: every character that is not an ASCII
/// letter or digit becomes `-` (`/home/u/my.proj` → `-home-u-my-proj`).
pub fn project_key(cwd: &Path) -> String {
    cwd.to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// `<home>/.claude/projects/<cwd key>/<session id>.jsonl`.
pub fn transcript_path(home: &Path, cwd: &Path, session_id: &str) -> PathBuf {
    home.join(".claude")
        .join("projects")
        .join(project_key(cwd))
        .join(format!("{session_id}.jsonl"))
}

/// Reads the entries of one turn of a Claude Code transcript: our prompt, the assistant's
/// messages, the end of the turn.
#[derive(Debug, Default)]
pub struct ClaudeTranscript {
    /// Our prompt's `user` entry was seen.
    seen_prompt: bool,
    /// Assistant and `turn_duration` entries read before the prompt's entry, at most
    /// [`EARLY_ENTRIES`]: they are this turn's if dated no earlier than the prompt.
    early: Vec<serde_json::Map<String, Value>>,
    /// The `turn_duration` entry was seen after it.
    done: bool,
    /// The message id and text blocks of the latest assistant message with text.
    answer_id: Option<String>,
    answer: Vec<String>,
    /// `error` of a synthetic assistant message (`authentication_failed`, `rate_limit`, …).
    error: Option<String>,
    malformed: u64,
}

impl ClaudeTranscript {
    /// The text blocks of an assistant entry become the answer (of the latest message with
    /// text) and streaming events; tool calls become events.
    fn assistant(&mut self, v: &serde_json::Map<String, Value>, out: &mut Vec<StreamEvent>) {
        let msg = v.get("message");
        let id = msg
            .and_then(|m| m.get("id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let blocks = msg
            .and_then(|m| m.get("content"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for b in blocks {
            match b.get("type").and_then(Value::as_str) {
                Some("text") => {
                    let text = b.get("text").and_then(Value::as_str).unwrap_or("");
                    if self.answer_id != id || self.answer_id.is_none() {
                        self.answer.clear();
                        self.answer_id = id.clone();
                    }
                    self.answer.push(text.to_owned());
                    out.push(StreamEvent::AssistantText {
                        text: text.to_owned(),
                        partial: false,
                    });
                }
                Some("tool_use") => {
                    let name = b.get("name").and_then(Value::as_str).unwrap_or("");
                    let input = b.get("input").map(Value::to_string).unwrap_or_default();
                    out.push(StreamEvent::ToolUse {
                        name: name.to_owned(),
                        input_summary: input.chars().take(200).collect(),
                    });
                }
                _ => {}
            }
        }
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            self.error = Some(e.to_owned());
        }
    }
}

/// How many entries before the prompt's are kept: a first turn writes two or three (its answer,
/// perhaps a tool call, `turn_duration`); the bound only keeps a surprise from growing memory.
const EARLY_ENTRIES: usize = 64;

/// An entry's `timestamp` (ISO 8601 in UTC with milliseconds, as JavaScript's `toISOString`
/// writes it, so that two of them compare as strings).
fn timestamp(v: &serde_json::Map<String, Value>) -> Option<&str> {
    v.get("timestamp").and_then(Value::as_str)
}

fn is_turn_duration(v: &serde_json::Map<String, Value>) -> bool {
    v.get("type").and_then(Value::as_str) == Some("system")
        && v.get("subtype").and_then(Value::as_str) == Some("turn_duration")
}

impl ClaudeTranscript {
    /// An entry that counts for this turn: the answer's text and tool calls, or its end.
    fn turn_entry(&mut self, v: &serde_json::Map<String, Value>, out: &mut Vec<StreamEvent>) {
        if is_turn_duration(v) {
            self.done = true;
            out.push(StreamEvent::Final);
        } else {
            self.assistant(v, out);
        }
    }

    /// The prompt's entry arrived: the entries written before it that are dated no earlier
    /// count, in the order they were written. The follower reads only what was written after
    /// the paste, so an undated entry is this turn's too; a dated earlier one is a previous
    /// turn's that the CLI wrote late, and must not end this one.
    fn prompt_arrived(&mut self, v: &serde_json::Map<String, Value>, out: &mut Vec<StreamEvent>) {
        self.seen_prompt = true;
        let prompt_at = timestamp(v).map(str::to_owned);
        for entry in std::mem::take(&mut self.early) {
            let ours = match (timestamp(&entry), prompt_at.as_deref()) {
                (Some(at), Some(prompt)) => at >= prompt,
                _ => true,
            };
            if ours {
                self.turn_entry(&entry, out);
            }
        }
    }
}

impl TranscriptParser for ClaudeTranscript {
    fn feed_line(&mut self, line: &str, out: &mut Vec<StreamEvent>) {
        if line.trim().is_empty() {
            return;
        }
        let Ok(Value::Object(v)) = serde_json::from_str::<Value>(line) else {
            // The CLI was cut off mid-write, or wrote something new; neither ends the turn.
            self.malformed += 1;
            out.push(StreamEvent::Malformed {
                reason: "transcript line is not a JSON object".into(),
            });
            return;
        };
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
        if kind == "user" {
            // The typed prompt is a user entry whose content is a plain string; tool results
            // and interruption notes are arrays, and meta entries are flagged.
            let typed = v
                .get("message")
                .and_then(|m| m.get("content"))
                .is_some_and(Value::is_string);
            let meta = v.get("isMeta").and_then(Value::as_bool).unwrap_or(false);
            if typed && !meta && !self.seen_prompt {
                self.prompt_arrived(&v, out);
            }
        } else if kind == "assistant" || is_turn_duration(&v) {
            if self.seen_prompt {
                self.turn_entry(&v, out);
            } else if self.early.len() < EARLY_ENTRIES {
                self.early.push(v);
            }
        }
    }

    fn prompt_seen(&self) -> bool {
        self.seen_prompt
    }

    fn turn_end(&self) -> Option<TurnEnd> {
        if !self.done {
            return None;
        }
        let answer = self.answer.join("\n");
        let (class, error) = match self.error.as_deref() {
            None => (OutcomeClass::Success, None),
            Some(e) => {
                let class = match e {
                    "authentication_failed" | "oauth_org_not_allowed" => OutcomeClass::AuthError,
                    "rate_limit" => OutcomeClass::RateLimited,
                    _ => OutcomeClass::CliError,
                };
                let message = if answer.is_empty() {
                    e.to_owned()
                } else {
                    answer.clone()
                };
                (class, Some(message))
            }
        };
        Some(TurnEnd {
            class,
            answer,
            error,
        })
    }

    fn malformed_lines(&self) -> u64 {
        self.malformed
    }
}

/// The screens that stop this TUI for good.
const CLAUDE_BLOCKED: &[BlockedScreen] = &[BlockedScreen::new(
    "Select login method",
    OutcomeClass::AuthError,
    "Claude Code asks for a login (set ANTHROPIC_API_KEY in the agent's env, or log in as the broker's user)",
)];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_key_matches_claude() {
        assert_eq!(
            project_key(Path::new("/home/user/project")),
            "-home-user-project"
        );
        assert_eq!(project_key(Path::new("/a/b.c d")), "-a-b-c-d");
    }

    #[test]
    fn transcript_needs_a_session_id() {
        let home = Path::new("/h");
        let cwd = Path::new("/w/p");
        assert!(ClaudeTui
            .transcript(&TranscriptContext::new(home, cwd, None))
            .is_none());
        let src = ClaudeTui
            .transcript(&TranscriptContext::new(home, cwd, Some("s1")))
            .expect("a transcript");
        assert_eq!(src.path, Path::new("/h/.claude/projects/-w-p/s1.jsonl"));
    }

    #[test]
    fn synthetic_errors_classify() {
        let mut t = ClaudeTranscript::default();
        let mut out = Vec::new();
        t.feed_line(
            r#"{"type":"user","message":{"role":"user","content":"hi"}}"#,
            &mut out,
        );
        assert!(t.prompt_seen());
        t.feed_line(r#"{"type":"assistant","error":"authentication_failed","message":{"id":"m","content":[{"type":"text","text":"Not logged in"}]}}"#, &mut out);
        t.feed_line(
            r#"{"type":"assistant","message":{"id":"m","content":[{"type":"te"#,
            &mut out,
        );
        assert_eq!(t.turn_end(), None);
        t.feed_line(r#"{"type":"system","subtype":"turn_duration"}"#, &mut out);
        assert_eq!(t.malformed_lines(), 1);
        let end = t.turn_end().expect("the turn ended");
        assert_eq!(end.class, OutcomeClass::AuthError);
        assert_eq!(end.error.as_deref(), Some("Not logged in"));
    }

    #[test]
    fn entries_before_the_prompt_are_not_this_turn() {
        let mut t = ClaudeTranscript::default();
        let mut out = Vec::new();
        // An earlier turn's end, and a meta user entry, do not start or end this one.
        t.feed_line(r#"{"type":"system","subtype":"turn_duration"}"#, &mut out);
        t.feed_line(
            r#"{"type":"user","isMeta":true,"message":{"content":"caveat"}}"#,
            &mut out,
        );
        assert!(!t.prompt_seen());
        assert_eq!(t.turn_end(), None);
        assert!(out.is_empty());
    }
}
