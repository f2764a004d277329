//! Claude Code's session transcript as the completion signal.
//!
//! Interactive Claude Code appends every conversation entry to
//! `$HOME/.claude/projects/<cwd key>/<session id>.jsonl` (format:
//! `shared/captures/claude/claude-interactive-transcript.jsonl`) and ends each turn with a
//! `{"type":"system","subtype":"turn_duration"}` entry. That entry is the CLI's own statement
//! that the turn is over, so it beats any reading of the screen; the answer is the assistant text
//! in the same file. The file is followed with inotify (an event per write, no polling) from the
//! offset it had before the prompt was pasted, so earlier turns are never mistaken for this one.

use std::ffi::CString;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kokino_cli::StreamEvent;
use kokino_core::OutcomeClass;
use serde_json::Value;
use tokio::io::unix::AsyncFd;

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

/// Follows one transcript file: wakes on inotify events for its directory and returns the
/// complete lines appended since the last read.
pub(crate) struct Follower {
    path: PathBuf,
    inotify: AsyncFd<OwnedFd>,
    offset: u64,
    partial: Vec<u8>,
    /// Set while an over-long line is being skipped up to its newline.
    skipping: bool,
    max_line: usize,
}

impl Follower {
    /// Starts following `path` from its current end. The directory is created if missing (the
    /// CLI creates it on its first prompt anyway), because inotify can only watch what exists.
    /// The watch is in place before the offset is taken, so no write can fall between the two.
    pub fn new(path: PathBuf, max_line: usize) -> std::io::Result<Follower> {
        let dir = path
            .parent()
            .ok_or_else(|| std::io::Error::other("transcript path has no directory"))?;
        std::fs::create_dir_all(dir)?;
        // SAFETY: inotify_init1 has no preconditions; the fd is owned by OwnedFd from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let cdir = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        let mask = libc::IN_MODIFY | libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE;
        // SAFETY: a valid inotify fd and a NUL-terminated path.
        if unsafe { libc::inotify_add_watch(owned.as_raw_fd(), cdir.as_ptr(), mask) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open and
        // the same for the AsyncFd's whole life.
        let inotify = unsafe { AsyncFd::register(owned) }.map_err(std::io::Error::from)?;
        Ok(Follower {
            path,
            inotify,
            offset,
            partial: Vec::new(),
            skipping: false,
            max_line,
        })
    }

    /// Waits until something in the directory changed. Cancel-safe.
    pub async fn changed(&self) {
        let Ok(mut guard) = self.inotify.readable().await else {
            // The fd cannot fail to be pollable once registered; never spin if it somehow does.
            std::future::pending::<()>().await;
            return;
        };
        // Drain the queued events: their content does not matter, only that the file may have
        // grown, and `read_lines` finds out by how much.
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into a buffer we own from the inotify fd.
            let n = unsafe {
                libc::read(
                    self.inotify.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n <= 0 {
                break;
            }
        }
        guard.clear_ready();
    }

    /// The complete lines appended since the last call. A line still being written stays in the
    /// buffer until its newline arrives; a line longer than `max_line` is dropped.
    pub fn read_lines(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            // Replaced or truncated: start over from the top of the new file.
            self.offset = 0;
            self.partial.clear();
            self.skipping = false;
        }
        if len == self.offset || f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut fresh = Vec::new();
        let Ok(n) = f.take(len - self.offset).read_to_end(&mut fresh) else {
            return Vec::new();
        };
        self.offset += n as u64;
        let mut lines = Vec::new();
        for chunk in fresh.split_inclusive(|&b| b == b'\n') {
            let complete = chunk.last() == Some(&b'\n');
            if !self.skipping {
                self.partial.extend_from_slice(chunk);
            }
            if self.partial.len() > self.max_line {
                self.partial.clear();
                self.skipping = true;
            }
            if complete {
                if !self.skipping {
                    let line = std::mem::take(&mut self.partial);
                    lines.push(String::from_utf8_lossy(&line).trim_end().to_owned());
                }
                self.skipping = false;
            }
        }
        lines
    }
}

/// Reads the entries of one turn: our prompt, the assistant's messages, the end of the turn.
#[derive(Debug, Default)]
pub(crate) struct TurnTracker {
    /// Our prompt's `user` entry was seen.
    pub seen_prompt: bool,
    /// The `turn_duration` entry was seen after it.
    pub done: bool,
    /// The message id and text blocks of the latest assistant message with text.
    answer_id: Option<String>,
    answer: Vec<String>,
    /// `error` of a synthetic assistant message (`authentication_failed`, `rate_limit`, …).
    error: Option<String>,
    pub malformed: u64,
}

impl TurnTracker {
    /// Feeds one transcript line, appending what it meant to `out`.
    pub fn feed(&mut self, line: &str, out: &mut Vec<StreamEvent>) {
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
        match kind {
            "user" if !self.seen_prompt => {
                // The typed prompt is a user entry whose content is a plain string; tool results
                // and interruption notes are arrays, and meta entries are flagged.
                let typed = v
                    .get("message")
                    .and_then(|m| m.get("content"))
                    .is_some_and(Value::is_string);
                let meta = v.get("isMeta").and_then(Value::as_bool).unwrap_or(false);
                if typed && !meta {
                    self.seen_prompt = true;
                }
            }
            "assistant" if self.seen_prompt => {
                let msg = v.get("message");
                let id = msg
                    .and_then(|m| m.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let blocks = msg
                    .and_then(|m| m.get("content"))
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for b in &blocks {
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
            "system"
                if self.seen_prompt
                    && v.get("subtype").and_then(Value::as_str) == Some("turn_duration") =>
            {
                self.done = true;
                out.push(StreamEvent::Final);
            }
            _ => {}
        }
    }

    /// The answer text: the text blocks of the last assistant message that had text.
    pub fn answer(&self) -> String {
        self.answer.join("\n")
    }

    /// The outcome class of a finished turn and, for a failure, its message.
    pub fn verdict(&self) -> (OutcomeClass, Option<String>) {
        match self.error.as_deref() {
            None => (OutcomeClass::Success, None),
            Some(e) => {
                let class = match e {
                    "authentication_failed" | "oauth_org_not_allowed" => OutcomeClass::AuthError,
                    "rate_limit" => OutcomeClass::RateLimited,
                    _ => OutcomeClass::CliError,
                };
                let text = self.answer();
                (
                    class,
                    Some(if text.is_empty() { e.to_owned() } else { text }),
                )
            }
        }
    }
}

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

    /// The real capture drives the tracker to a finished turn with the real answer.
    #[test]
    fn reads_the_real_capture() {
        let dir = std::env::var("KOKINO_CAPTURES_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/captures")
            });
        let Ok(text) =
            std::fs::read_to_string(dir.join("claude/claude-interactive-transcript.jsonl"))
        else {
            eprintln!("capture not found; skipping");
            return;
        };
        let mut t = TurnTracker::default();
        let mut out = Vec::new();
        for line in text.lines() {
            t.feed(line, &mut out);
        }
        assert!(t.seen_prompt && t.done);
        assert_eq!(t.answer(), "FAKE_ANSWER: 4");
        assert_eq!(t.verdict().0, OutcomeClass::Success);
        assert_eq!(out.last(), Some(&StreamEvent::Final));
    }

    #[test]
    fn synthetic_errors_classify() {
        let mut t = TurnTracker::default();
        let mut out = Vec::new();
        t.feed(
            r#"{"type":"user","message":{"role":"user","content":"hi"}}"#,
            &mut out,
        );
        t.feed(r#"{"type":"assistant","error":"authentication_failed","message":{"id":"m","content":[{"type":"text","text":"Not logged in"}]}}"#, &mut out);
        t.feed(
            r#"{"type":"assistant","message":{"id":"m","content":[{"type":"te"#,
            &mut out,
        );
        t.feed(r#"{"type":"system","subtype":"turn_duration"}"#, &mut out);
        assert!(t.done);
        assert_eq!(t.malformed, 1);
        assert_eq!(
            t.verdict(),
            (OutcomeClass::AuthError, Some("Not logged in".into()))
        );
    }

    #[tokio::test]
    async fn follower_returns_only_complete_new_lines() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p").join("s.jsonl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "old\n").unwrap();
        let mut f = Follower::new(path.clone(), 10).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"one\ntw").unwrap();
        assert_eq!(f.read_lines(), vec!["one"]);
        file.write_all(b"o\nthis line is too long\nthree\n")
            .unwrap();
        assert_eq!(f.read_lines(), vec!["two", "three"]);
    }
}
