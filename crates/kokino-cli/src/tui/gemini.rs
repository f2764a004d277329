//! Gemini CLI's TUI: a `>` prompt (with `  Type your message or @path/to/file` as placeholder
//! while empty), its folder-trust question, and its chat recording as the completion signal.
//!
//! Interactive Gemini CLI records each session in
//! `$HOME/.gemini/tmp/<project name>/chats/session-<start>-<id prefix>.jsonl`, where the project
//! name is the one `~/.gemini/projects.json` gives the working directory
//! (`captures/gemini/tui-chat.jsonl`): a header with the `sessionId`, then one entry per
//! message; the model's answer is a `gemini` entry whose `content` is the text.

use std::path::{Path, PathBuf};

use kokino_core::{CliType, OutcomeClass};
use serde_json::Value;

use super::prepare::{add_missing, json_object, json_text, object_at};
use super::{
    short_model_flag, FirstRunScreen, SetupContext, TranscriptContext, TranscriptParser,
    TranscriptSource, Tui, TurnEnd,
};
use crate::{SessionArg, StreamEvent};

/// Gemini CLI's TUI.
#[derive(Debug, Clone, Copy, Default)]
pub struct GeminiTui;

/// How Gemini CLI 0.61's empty input line starts after its glyph: `Type your message or
/// @path/to/file`, `Type your shell command`, the vim mode's `Press 'i' for INSERT mode.`.
const PLACEHOLDERS: [&str; 2] = ["Type your ", "Press 'i' for INSERT mode"];

impl Tui for GeminiTui {
    /// Gemini CLI 0.61 draws its input box before it replays a resumed session, and a paste
    /// that arrives in between is dropped; the replay is done once an answer (`✦`) is drawn.
    /// A resumed session always has one: a Gemini session is only recorded once it answered.
    fn resumed_history_shown(&self, screen: &str) -> bool {
        screen.lines().any(|l| l.trim_start().starts_with('✦'))
    }

    fn cli(&self) -> CliType {
        CliType::Gemini
    }

    /// `gemini [-m MODEL] [--resume ID]`.
    fn interactive_args(&self, session: SessionArg<'_>, model: Option<&str>) -> Vec<String> {
        let mut args = Vec::new();
        short_model_flag(&mut args, model);
        if let SessionArg::Resume { session_id } = session {
            args.extend(["--resume".to_owned(), session_id.to_owned()]);
        }
        args
    }

    /// `>` (`!` in shell mode, `*` with YOLO on), empty or with a placeholder.
    fn is_prompt_line(&self, line: &str) -> bool {
        let t = line.trim().trim_matches('│').trim();
        match t.strip_prefix(['>', '!', '*']) {
            Some(rest) => {
                let rest = rest.trim();
                rest.is_empty() || PLACEHOLDERS.iter().any(|p| rest.starts_with(p))
            }
            None => false,
        }
    }

    fn prompt_output_suffix(&self) -> &'static [u8] {
        b"> "
    }

    fn answer_prefix(&self) -> Option<&'static str> {
        Some("✦ ")
    }

    fn first_run_screens(&self) -> &'static [FirstRunScreen] {
        super::COMMON_FIRST_RUN_SCREENS
    }

    fn config_files(&self, ctx: &SetupContext<'_>) -> Vec<PathBuf> {
        let dir = ctx.home.join(".gemini");
        vec![dir.join("trustedFolders.json"), dir.join("projects.json")]
    }

    /// `~/.gemini/trustedFolders.json`: the folder as `TRUST_FOLDER`; `~/.gemini/projects.json`:
    /// a project name for the folder (its base name, made unique), so the chat recording's
    /// directory is known before the TUI starts. Entries already there are kept.
    fn merge_config(
        &self,
        path: &Path,
        existing: Option<&str>,
        ctx: &SetupContext<'_>,
    ) -> Result<Option<String>, String> {
        let cwd = ctx.cwd.to_string_lossy().into_owned();
        let mut root = json_object(existing)?;
        let changed = if path.ends_with("trustedFolders.json") {
            add_missing(&mut root, &cwd, Value::String("TRUST_FOLDER".into()))
        } else {
            let Some(projects) = object_at(&mut root, "projects") else {
                return Ok(None);
            };
            if projects.contains_key(&cwd) {
                false
            } else {
                let base = ctx
                    .cwd
                    .file_name()
                    .map(|n| n.to_string_lossy().to_lowercase())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "root".into());
                let taken = |n: &str| projects.values().any(|v| v.as_str() == Some(n));
                let mut name = base.clone();
                let mut i = 1;
                while taken(&name) {
                    name = format!("{base}-{i}");
                    i += 1;
                }
                projects.insert(cwd, Value::String(name));
                true
            }
        };
        Ok(json_text(root, changed))
    }

    fn transcript(&self, ctx: &TranscriptContext<'_>) -> Option<TranscriptSource> {
        let dir = ctx.home.join(".gemini");
        let projects = ctx.read(&dir.join("projects.json"))?;
        let v: Value = serde_json::from_str(&projects).ok()?;
        let name = v["projects"][ctx.cwd.to_string_lossy().as_ref()].as_str()?;
        if name.is_empty() || name.contains('/') || name == ".." {
            return None;
        }
        let chats = dir.join("tmp").join(name).join("chats");
        Some(TranscriptSource::in_dirs(
            vec![chats],
            Box::new(GeminiChat::since(ctx.now)),
        ))
    }
}

/// Reads one turn of a Gemini CLI chat recording.
#[derive(Debug, Default)]
pub struct GeminiChat {
    /// Messages dated before this (RFC 3339, UTC, milliseconds, as Gemini writes them) belong
    /// to earlier turns: a resumed session's record repeats its history, and a record that is
    /// new to the follower is read from its start.
    not_before: Option<String>,
    session_id: Option<String>,
    seen_prompt: bool,
    done: bool,
    answer: String,
    error: Option<String>,
    malformed: u64,
}

impl GeminiChat {
    /// A reader for the turn that starts at `now`: messages dated earlier are ignored. The
    /// Unix epoch (a context without a time) ignores none.
    pub fn since(now: std::time::SystemTime) -> GeminiChat {
        let at = chrono::DateTime::<chrono::Utc>::from(now);
        GeminiChat {
            not_before: Some(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            ..GeminiChat::default()
        }
    }

    /// Whether a message dated `timestamp` is older than this turn.
    fn earlier(&self, v: &Value) -> bool {
        match (&self.not_before, v["timestamp"].as_str()) {
            (Some(from), Some(at)) => at < from.as_str(),
            _ => false,
        }
    }
}

impl TranscriptParser for GeminiChat {
    fn feed_line(&mut self, line: &str, out: &mut Vec<StreamEvent>) {
        if line.trim().is_empty() {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            self.malformed += 1;
            out.push(StreamEvent::Malformed {
                reason: "chat recording line is not JSON".into(),
            });
            return;
        };
        if let Some(id) = v["sessionId"].as_str() {
            self.session_id = Some(id.to_owned());
            out.push(StreamEvent::SessionId(id.to_owned()));
            return;
        }
        match v["type"].as_str().unwrap_or("") {
            // History repeated by a resumed session: an earlier turn's prompt is not ours.
            "user" if self.earlier(&v) => {}
            "user" => {
                let text: String = v["content"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["text"].as_str())
                    .collect();
                if !text.trim_start().starts_with('<') && !text.is_empty() {
                    self.seen_prompt = true;
                }
            }
            "gemini" if self.seen_prompt => {
                let calls = v["toolCalls"].as_array().map_or(0, Vec::len);
                for c in v["toolCalls"].as_array().into_iter().flatten() {
                    out.push(StreamEvent::ToolUse {
                        name: c["name"].as_str().unwrap_or("").to_owned(),
                        input_summary: c["args"].to_string().chars().take(200).collect(),
                    });
                }
                let text = v["content"].as_str().unwrap_or("");
                if !text.is_empty() {
                    out.push(StreamEvent::AssistantText {
                        text: text.to_owned(),
                        partial: false,
                    });
                    self.answer = text.to_owned();
                }
                if calls == 0 && !text.is_empty() {
                    self.done = true;
                    out.push(StreamEvent::Final);
                }
            }
            "error" if self.seen_prompt => {
                self.error = Some(v["content"].as_str().unwrap_or("error").to_owned());
                self.done = true;
                out.push(StreamEvent::Final);
            }
            _ => {}
        }
    }

    fn prompt_seen(&self) -> bool {
        self.seen_prompt
    }

    fn turn_end(&self) -> Option<TurnEnd> {
        if !self.done {
            return None;
        }
        let (class, error) = match &self.error {
            Some(e) => (
                super::classify_exit_screen(e).unwrap_or(OutcomeClass::CliError),
                Some(e.clone()),
            ),
            None => (OutcomeClass::Success, None),
        };
        Some(TurnEnd {
            class,
            answer: self.answer.clone(),
            error,
        })
    }

    fn session_id(&self) -> Option<String> {
        self.session_id.clone()
    }

    fn malformed_lines(&self) -> u64 {
        self.malformed
    }
}
