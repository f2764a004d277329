//! Codex's TUI: a `›` prompt (with a placeholder such as `› Ask Codex to do anything` while
//! empty), its folder-trust question, and its session rollout file as the completion signal.
//!
//! Interactive Codex appends every event of a session to
//! `$HOME/.codex/sessions/YYYY/MM/DD/rollout-<start time>-<thread id>.jsonl` (dated by the
//! session's start, local time; created at the first prompt) and ends each turn with an
//! `event_msg` of type `task_complete` carrying `last_agent_message`
//! (`captures/codex/tui-rollout.jsonl`).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Local, Utc};
use kokino_core::{CliType, OutcomeClass};
use serde_json::Value;

use super::{
    short_model_flag, FirstRunScreen, SetupContext, TranscriptContext, TranscriptParser,
    TranscriptSource, Tui, TurnEnd, COMMON_FIRST_RUN_SCREENS,
};
use crate::{SessionArg, StreamEvent};

/// Codex's TUI.
#[derive(Debug, Clone, Copy, Default)]
pub struct CodexTui;

/// The placeholders Codex 0.169 shows in its empty input line.
const PLACEHOLDERS: [&str; 3] = [
    "Ask Codex to do anything",
    "Ask a follow-up question",
    "Write a prompt or slash command",
];

const CODEX_FIRST_RUN_SCREENS: &[FirstRunScreen] = &[
    FirstRunScreen::choose(
        "codex trust this folder",
        "Trust this folder?",
        "Trust and continue",
    ),
    COMMON_FIRST_RUN_SCREENS[1],
];

impl Tui for CodexTui {
    fn cli(&self) -> CliType {
        CliType::Codex
    }

    /// `codex [-m MODEL] [resume ID]`: the model is an option of the TUI itself, so it goes
    /// before the `resume` subcommand.
    fn interactive_args(&self, session: SessionArg<'_>, model: Option<&str>) -> Vec<String> {
        let mut args = Vec::new();
        short_model_flag(&mut args, model);
        if let SessionArg::Resume { session_id } = session {
            args.extend(["resume".to_owned(), session_id.to_owned()]);
        }
        args
    }

    fn is_prompt_line(&self, line: &str) -> bool {
        let t = line.trim();
        match t.strip_prefix('›') {
            Some(rest) => {
                let rest = rest.trim();
                rest.is_empty() || PLACEHOLDERS.iter().any(|p| rest.starts_with(p))
            }
            None => false,
        }
    }

    fn prompt_output_suffix(&self) -> &'static [u8] {
        "› ".as_bytes()
    }

    fn answer_prefix(&self) -> Option<&'static str> {
        Some("• ")
    }

    fn first_run_screens(&self) -> &'static [FirstRunScreen] {
        CODEX_FIRST_RUN_SCREENS
    }

    fn config_files(&self, ctx: &SetupContext<'_>) -> Vec<PathBuf> {
        vec![ctx.home.join(".codex").join("config.toml")]
    }

    /// `~/.codex/config.toml`: `[projects."<cwd>"] trust_level = "trusted"`, appended when the
    /// file has no table for the folder (one the operator wrote is left as it is).
    fn merge_config(
        &self,
        _path: &Path,
        existing: Option<&str>,
        ctx: &SetupContext<'_>,
    ) -> Result<Option<String>, String> {
        let cwd = ctx.cwd.to_string_lossy();
        let key = format!("\"{}\"", cwd.replace('\\', "\\\\").replace('"', "\\\""));
        let text = existing.unwrap_or("");
        let has_table = text.lines().any(|l| {
            let l = l.trim();
            l.strip_prefix("[projects.")
                .and_then(|r| r.strip_suffix(']'))
                .is_some_and(|k| k.trim() == key)
        });
        if has_table {
            return Ok(None);
        }
        let mut out = text.to_owned();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("\n[projects.{key}]\ntrust_level = \"trusted\"\n"));
        Ok(Some(out))
    }

    /// The day's rollout directory (local date, and the UTC one when it differs): a new
    /// session's file appears there at the first prompt, a session started today is appended.
    fn transcript(&self, ctx: &TranscriptContext<'_>) -> Option<TranscriptSource> {
        let base = ctx.home.join(".codex").join("sessions");
        let local: DateTime<Local> = ctx.now.into();
        let utc: DateTime<Utc> = ctx.now.into();
        let mut dirs = vec![base.join(local.format("%Y/%m/%d").to_string())];
        let u = base.join(utc.format("%Y/%m/%d").to_string());
        if !dirs.contains(&u) {
            dirs.push(u);
        }
        Some(TranscriptSource::in_dirs(
            dirs,
            Box::<CodexRollout>::default(),
        ))
    }
}

/// Reads one turn of a Codex rollout file.
#[derive(Debug, Default)]
pub struct CodexRollout {
    session_id: Option<String>,
    seen_prompt: bool,
    done: bool,
    answer: Option<String>,
    error: Option<String>,
    malformed: u64,
}

impl TranscriptParser for CodexRollout {
    fn feed_line(&mut self, line: &str, out: &mut Vec<StreamEvent>) {
        if line.trim().is_empty() {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            self.malformed += 1;
            out.push(StreamEvent::Malformed {
                reason: "rollout line is not JSON".into(),
            });
            return;
        };
        let payload = &v["payload"];
        let ptype = payload["type"].as_str().unwrap_or("");
        match v["type"].as_str().unwrap_or("") {
            "session_meta" => {
                if let Some(id) = payload["id"].as_str() {
                    self.session_id = Some(id.to_owned());
                    out.push(StreamEvent::SessionId(id.to_owned()));
                }
            }
            "response_item" if ptype == "message" => {
                let role = payload["role"].as_str().unwrap_or("");
                let text: Vec<&str> = payload["content"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["text"].as_str())
                    .collect();
                let text = text.join("\n");
                if role == "user" && !text.trim_start().starts_with('<') {
                    self.seen_prompt = true;
                } else if role == "assistant" && self.seen_prompt && !text.is_empty() {
                    out.push(StreamEvent::AssistantText {
                        text: text.clone(),
                        partial: false,
                    });
                    self.answer = Some(text);
                }
            }
            "response_item" if ptype == "function_call" && self.seen_prompt => {
                out.push(StreamEvent::ToolUse {
                    name: payload["name"].as_str().unwrap_or("").to_owned(),
                    input_summary: payload["arguments"]
                        .as_str()
                        .unwrap_or("")
                        .chars()
                        .take(200)
                        .collect(),
                });
            }
            "event_msg" if self.seen_prompt => match ptype {
                "error" | "stream_error" => {
                    self.error = payload["message"].as_str().map(str::to_owned);
                }
                "task_complete" | "turn_aborted" => {
                    if let Some(m) = payload["last_agent_message"].as_str() {
                        self.answer = Some(m.to_owned());
                    }
                    if ptype == "turn_aborted" && self.error.is_none() {
                        self.error = Some("the turn was aborted".into());
                    }
                    self.done = true;
                    out.push(StreamEvent::Final);
                }
                _ => {}
            },
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
        let answer = self.answer.clone().unwrap_or_default();
        let (class, error) = match (&self.error, answer.is_empty()) {
            (Some(e), true) => (
                super::classify_exit_screen(e).unwrap_or(OutcomeClass::CliError),
                Some(e.clone()),
            ),
            _ => (OutcomeClass::Success, None),
        };
        Some(TurnEnd {
            class,
            answer,
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
