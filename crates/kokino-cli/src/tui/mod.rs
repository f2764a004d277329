//! What each CLI's interactive TUI looks like, as data and pure functions for the tmux executor.
//!
//! The tmux executor (`kokino_exec::tmux`) knows tmux: servers, panes, pastes, control mode,
//! following a file. Everything it needs to know about one CLI's TUI comes from a [`Tui`]: the
//! arguments that start it on a session, how to read its screen (is it ready for input, is it
//! showing a first-run screen, where is the answer), how to read a dead pane's last words, and,
//! where the CLI records its own session while it runs, how to read that record as the
//! completion signal ([`TranscriptParser`]). The four CLIs have one implementation each
//! ([`tui_for`]); an embedder can hand the executor its own.
//!
//! The screen patterns match `kokino-fake-agent`'s interactive mode (its README lists them) and
//! what is known of the real TUIs (guides/peer-systems.md §6.7: claude's input box, its `● `
//! answer prefix, the "trust this folder" screen). Screen scraping is the fallback: for Claude
//! Code the executor reads the answer from the session transcript instead.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use kokino_core::{CliType, OutcomeClass};

use crate::{SessionArg, StreamEvent};

mod claude;
mod codex;
mod droid;
mod gemini;

mod prepare;
mod screen;

pub use claude::{project_key, transcript_path, ClaudeTranscript, ClaudeTui};
pub use codex::{CodexRollout, CodexTui};
pub use droid::DroidTui;
pub use gemini::{GeminiChat, GeminiTui};
pub use prepare::SetupContext;
pub use screen::{choose_option, is_chrome_line, BlockedScreen};

/// One CLI's interactive TUI, as the tmux executor needs to know it.
///
/// Every method is a pure function of its arguments: the executor captures the screen and reads
/// the files, and asks the profile what they mean. Only [`Tui::cli`],
/// [`Tui::interactive_args`], [`Tui::is_prompt_line`] and [`Tui::prompt_output_suffix`] must be
/// written; the rest have defaults built on them that suit a TUI with a one-line prompt.
pub trait Tui: Send + Sync + fmt::Debug {
    /// The CLI type this profile describes (used in messages and logs).
    fn cli(&self) -> CliType;

    /// The arguments that start the TUI on a session. A new session takes only the model for
    /// every CLI but Claude Code, which lets the caller choose the new session's id.
    fn interactive_args(&self, session: SessionArg<'_>, model: Option<&str>) -> Vec<String>;

    /// Whether `line` is the CLI's empty input prompt, i.e. the CLI is waiting for input.
    /// `capture-pane` drops trailing spaces, so implementations should ignore them.
    fn is_prompt_line(&self, line: &str) -> bool;

    /// The bytes the CLI prints when it draws a fresh prompt. Output ending with them is the
    /// likely end of a turn, so the executor checks the screen sooner than after plain output.
    fn prompt_output_suffix(&self) -> &'static [u8];

    /// The prefix the TUI puts before the first line of an answer, stripped from the answer.
    fn answer_prefix(&self) -> Option<&'static str> {
        None
    }

    /// The first-run screens this TUI may show before its first prompt, each with the option
    /// (or the keys) that answers it.
    fn first_run_screens(&self) -> &'static [FirstRunScreen] {
        COMMON_FIRST_RUN_SCREENS
    }

    /// Screens the CLI cannot get past without a person (a login screen): the run fails at once
    /// with the screen's words instead of waiting for the startup timeout.
    fn blocked_screens(&self) -> &'static [BlockedScreen] {
        &[]
    }

    /// Whether `line` is the TUI's own furniture (borders, hints, status lines, timing notes)
    /// rather than answer text, when it sits around the answer on the screen.
    fn is_chrome_line(&self, line: &str) -> bool {
        is_chrome_line(line)
    }

    /// The CLI configuration files to prepare before the TUI starts (onboarding done, the
    /// agent's folder trusted, the agent's API key approved), so that no first-run screen needs
    /// answering. The executor reads each file, asks [`Tui::merge_config`] for its new text and
    /// writes it back; nothing here touches a file.
    fn config_files(&self, ctx: &SetupContext<'_>) -> Vec<PathBuf> {
        let _ = ctx;
        Vec::new()
    }

    /// The new text of the configuration file `path` (one of [`Tui::config_files`]), given its
    /// current text (`None` when it does not exist). `Ok(None)` leaves it as it is; `Err` says
    /// why it cannot be merged (it is not the format the CLI writes), and the file is left too.
    /// Merging only adds: a value the operator set is never changed.
    fn merge_config(
        &self,
        path: &Path,
        existing: Option<&str>,
        ctx: &SetupContext<'_>,
    ) -> Result<Option<String>, String> {
        let _ = (path, existing, ctx);
        Ok(None)
    }

    /// The index of the prompt line if the screen shows the CLI waiting for input: a prompt
    /// line among the last few non-blank lines (below it may be footers such as claude's
    /// "? for shortcuts" or a box's bottom border).
    fn find_prompt(&self, lines: &[String]) -> Option<usize> {
        lines
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, l)| !l.trim().is_empty())
            .take(PROMPT_SEARCH_LINES)
            .find(|(_, l)| self.is_prompt_line(l))
            .map(|(i, _)| i)
    }

    /// Whether a TUI started on a resumed session has drawn the restored conversation. Some
    /// draw their prompt first and the history after it, and what is typed in between is lost
    /// (Gemini CLI); the executor waits for this before it types. Most need no wait.
    fn resumed_history_shown(&self, _screen: &str) -> bool {
        true
    }

    /// What a screen shown while the session starts means: the prompt (ready for input), a
    /// first-run screen to answer, a screen that blocks the CLI for good, or nothing yet.
    fn read_startup_screen(&self, screen: &str) -> StartupScreen {
        let lines: Vec<String> = screen.lines().map(str::to_owned).collect();
        // The prompt at the bottom wins: an answered question can stay drawn above it (Gemini
        // leaves its trust dialog on the screen when it restarts to apply the trust).
        if self.find_prompt(&lines).is_some() {
            return StartupScreen::Ready;
        }
        if let Some(b) = self
            .blocked_screens()
            .iter()
            .find(|b| screen.contains(b.marker))
        {
            return StartupScreen::Blocked {
                class: b.class,
                reason: b.reason.to_owned(),
            };
        }
        if let Some(s) = self
            .first_run_screens()
            .iter()
            .find(|s| screen.contains(s.marker))
        {
            return screen::answer(s, &lines);
        }
        match screen::unknown_menu(&lines) {
            Some(reason) => StartupScreen::Blocked {
                class: OutcomeClass::CliError,
                reason,
            },
            None => StartupScreen::NotYet,
        }
    }

    /// Extracts the answer from the pane text captured from a little above the line where the
    /// prompt was pasted.
    ///
    /// The echo of `prompt` is the last line above the new prompt line that starts with the
    /// prompt's first line (after the TUI's prompt glyph); `capture-pane -J` joins wrapped lines,
    /// so one prompt line is one captured line. Without a recognisable echo the capture is taken
    /// to start at it. The answer runs from below the echo to the new prompt line, without the
    /// TUI's furniture around it ([`Tui::is_chrome_line`]) or its answer prefix. Returns `None`
    /// while no new prompt has appeared below the echo: the CLI is still working.
    fn extract_answer(&self, lines: &[String], prompt: &str) -> Option<String> {
        let prompt_at = self.find_prompt(lines)?;
        let echo_lines = echo_lines(prompt);
        let first: String = prompt
            .split('\n')
            .next()
            .unwrap_or("")
            .trim()
            .chars()
            .take(40)
            .collect();
        let echo_at = (!first.is_empty())
            .then(|| {
                lines[..prompt_at]
                    .iter()
                    .rposition(|l| echo_starts_with(l, &first))
            })
            .flatten();
        let body_from = match echo_at {
            Some(i) => i + echo_lines,
            None => echo_lines,
        };
        if prompt_at < body_from {
            return None;
        }
        let mut body: Vec<&str> = lines[body_from..prompt_at]
            .iter()
            .map(|l| l.trim_end())
            .collect();
        while body
            .first()
            .is_some_and(|l| l.trim().is_empty() || self.is_chrome_line(l))
        {
            body.remove(0);
        }
        while body
            .last()
            .is_some_and(|l| l.trim().is_empty() || self.is_chrome_line(l))
        {
            body.pop();
        }
        if let (Some(prefix), Some(first)) = (self.answer_prefix(), body.first_mut()) {
            if let Some(rest) = first.trim_start().strip_prefix(prefix) {
                *first = rest;
            }
        }
        Some(body.join("\n"))
    }

    /// Whether the input line at the bottom of the screen still holds `prompt`: the TUI took
    /// the paste but not the Enter (Gemini CLI drops an Enter that follows a paste too closely).
    fn input_holds(&self, lines: &[String], prompt: &str) -> bool {
        let first: String = prompt
            .split('\n')
            .next()
            .unwrap_or("")
            .trim()
            .chars()
            .take(40)
            .collect();
        !first.is_empty()
            && self.find_prompt(lines).is_none()
            && lines
                .iter()
                .rev()
                .filter(|l| !l.trim().is_empty())
                .take(PROMPT_SEARCH_LINES)
                .any(|l| echo_starts_with(l, &first))
    }

    /// The outcome class a dead pane's last words show, when they name one: the CLIs' own auth
    /// and quota messages (the same ones their headless modes print). `None` means an ordinary
    /// CLI error.
    fn classify_exit_screen(&self, screen: &str) -> Option<OutcomeClass> {
        classify_exit_screen(screen)
    }

    /// Where the CLI records the session while the TUI runs, and how to read that record as the
    /// completion signal. `None` when the CLI keeps no such record, or when it cannot be found
    /// from `ctx` (the executor then reads the answer from the screen).
    fn transcript(&self, ctx: &TranscriptContext<'_>) -> Option<TranscriptSource> {
        let _ = ctx;
        None
    }
}

/// How many non-blank lines at the bottom of the screen may follow the prompt line.
const PROMPT_SEARCH_LINES: usize = 6;

/// The first-run screens every CLI's TUI is checked for. The trust question is answered by
/// choosing its "trust" option explicitly, wherever the cursor starts.
pub const COMMON_FIRST_RUN_SCREENS: &[FirstRunScreen] = &[
    FirstRunScreen::choose(
        "trust this folder",
        "Do you trust the files in this folder?",
        "Trust folder",
    ),
    FirstRunScreen::new(
        "press Enter to continue",
        "Press Enter to continue",
        &["Enter"],
    ),
];

/// A screen a TUI shows before its first prompt, which the executor knows how to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FirstRunScreen {
    /// A short name for logs and timings (`"trust this folder"`).
    pub name: &'static str,
    /// Text that appears on the screen when it is shown.
    pub marker: &'static str,
    /// Keys for `tmux send-keys`, in order, that answer it (when no option is chosen).
    pub keys: &'static [&'static str],
    /// The text of the numbered option to choose: the cursor is moved onto it and Enter
    /// pressed, so a wrong default (Claude's API-key question defaults to "No") is never taken.
    pub option: Option<&'static str>,
}

impl FirstRunScreen {
    /// A screen recognised by `marker` and answered with `keys`.
    pub const fn new(
        name: &'static str,
        marker: &'static str,
        keys: &'static [&'static str],
    ) -> Self {
        FirstRunScreen {
            name,
            marker,
            keys,
            option: None,
        }
    }

    /// A menu recognised by `marker`, answered by choosing the option whose text contains
    /// `option`.
    pub const fn choose(name: &'static str, marker: &'static str, option: &'static str) -> Self {
        FirstRunScreen {
            name,
            marker,
            keys: &[],
            option: Some(option),
        }
    }
}

/// The keys that answer a first-run screen shown right now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScreenAnswer {
    /// The screen's name ([`FirstRunScreen::name`]).
    pub name: &'static str,
    /// Keys for `tmux send-keys`, in order.
    pub keys: Vec<String>,
}

/// What a screen shown while a session starts means.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartupScreen {
    /// The CLI shows its empty prompt: the prompt can be pasted.
    Ready,
    /// A first-run screen, and the keys that answer it as it is shown.
    FirstRun(ScreenAnswer),
    /// A screen the CLI cannot get past without a person (a login screen, say): the run fails
    /// at once with `class` and `reason` instead of waiting for the startup timeout.
    Blocked {
        /// The outcome class of the failed run (`AuthError` for a login screen).
        class: OutcomeClass,
        /// What the screen says, for the error message.
        reason: String,
    },
    /// Nothing recognisable yet (the TUI is still drawing).
    NotYet,
}

/// Reads a file's text for a profile (`None` when it cannot be read).
pub type FileReader<'a> = dyn Fn(&Path) -> Option<String> + 'a;

/// What a [`Tui`] may use to find the CLI's session record.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct TranscriptContext<'a> {
    /// The `HOME` the CLI runs with.
    pub home: &'a Path,
    /// The CLI's working directory, canonicalised (CLIs key their records by the real path).
    pub cwd: &'a Path,
    /// The CLI's session id, when the caller knows it before the run.
    pub session_id: Option<&'a str>,
    /// The time of the run (Codex files its records by date).
    pub now: SystemTime,
    /// A CLI configuration file's text, read for the profile (Gemini names its record's
    /// directory in `~/.gemini/projects.json`).
    pub read: Option<&'a FileReader<'a>>,
}

impl<'a> TranscriptContext<'a> {
    /// A context for a CLI running with `home` in `cwd` on `session_id`.
    pub fn new(home: &'a Path, cwd: &'a Path, session_id: Option<&'a str>) -> Self {
        TranscriptContext {
            home,
            cwd,
            session_id,
            now: SystemTime::UNIX_EPOCH,
            read: None,
        }
    }

    /// The same context at the time `now`, reading configuration files with `read`.
    pub fn with_files(
        mut self,
        now: SystemTime,
        read: &'a dyn Fn(&Path) -> Option<String>,
    ) -> Self {
        self.now = now;
        self.read = Some(read);
        self
    }

    fn read(&self, path: &Path) -> Option<String> {
        self.read.and_then(|r| r(path))
    }
}

impl fmt::Debug for TranscriptContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TranscriptContext")
            .field("home", &self.home)
            .field("cwd", &self.cwd)
            .field("session_id", &self.session_id)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// A session record to follow: its file and a fresh parser for the coming turn.
#[derive(Debug)]
#[non_exhaustive]
pub struct TranscriptSource {
    /// The file the CLI appends the session's entries to (JSON lines).
    pub path: PathBuf,
    /// Directories whose `.jsonl` files are all followed instead, each from where it was when
    /// the prompt was pasted (new files from their start): for CLIs that name the record's file
    /// only once the session has started (Codex, Gemini). Empty when `path` is the record.
    pub dirs: Vec<PathBuf>,
    /// Reads the lines appended from the moment before the prompt is pasted.
    pub parser: Box<dyn TranscriptParser>,
}

impl TranscriptSource {
    /// Follow `path` with `parser`.
    pub fn new(path: PathBuf, parser: Box<dyn TranscriptParser>) -> Self {
        TranscriptSource {
            path,
            dirs: Vec::new(),
            parser,
        }
    }

    /// Follow every `.jsonl` file in `dirs` with `parser`.
    pub fn in_dirs(dirs: Vec<PathBuf>, parser: Box<dyn TranscriptParser>) -> Self {
        TranscriptSource {
            path: dirs.first().cloned().unwrap_or_default(),
            dirs,
            parser,
        }
    }
}

/// Incremental reader of one turn of a CLI's session record, fed the lines appended after the
/// prompt was pasted. Its end-of-turn entry is the CLI's own statement that the turn is over,
/// so it beats any reading of the screen.
pub trait TranscriptParser: Send + fmt::Debug {
    /// Feeds one line (without its newline), appending what it meant to `out`.
    fn feed_line(&mut self, line: &str, out: &mut Vec<StreamEvent>);
    /// Whether the record shows the pasted prompt: the CLI has taken it.
    fn prompt_seen(&self) -> bool;
    /// The end of the turn, once the record has shown it.
    fn turn_end(&self) -> Option<TurnEnd>;
    /// The CLI's session id, when the record names it (a new Codex or Gemini session's first
    /// entry does): the broker stores it and resumes the session by it after a restart.
    fn session_id(&self) -> Option<String> {
        None
    }
    /// Lines that were not the JSON objects the record is made of.
    fn malformed_lines(&self) -> u64;
}

/// The verdict of a finished turn read from a session record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TurnEnd {
    /// `Success`, or the class of the error the CLI recorded.
    pub class: OutcomeClass,
    /// The answer text (for a failure, what the CLI said about it).
    pub answer: String,
    /// For a failure, the message that describes it.
    pub error: Option<String>,
}

/// The profile of `cli`'s TUI.
pub fn tui_for(cli: CliType) -> Arc<dyn Tui> {
    match cli {
        CliType::ClaudeCode => Arc::new(ClaudeTui),
        CliType::Codex => Arc::new(CodexTui),
        CliType::Gemini => Arc::new(GeminiTui),
        CliType::FactoryDroid => Arc::new(DroidTui),
    }
}

/// The arguments that start `cli`'s TUI on `session` (see [`Tui::interactive_args`]).
pub fn interactive_args(cli: CliType, session: SessionArg<'_>, model: Option<&str>) -> Vec<String> {
    tui_for(cli).interactive_args(session, model)
}

/// How many captured lines the echo of `prompt` takes: one per line of the prompt.
pub fn echo_lines(prompt: &str) -> usize {
    prompt.split('\n').count().max(1)
}

/// Whether `line` is the echo of a prompt starting with `first`: the prompt's text right after
/// a prompt glyph (`>`, `›`, `❯`, `*`, `!`, a box's `│`), or at the start of the line.
fn echo_starts_with(line: &str, first: &str) -> bool {
    let t = line.trim_start().trim_start_matches('│').trim_start();
    let t = t
        .strip_prefix(['>', '›', '❯', '*', '!'])
        .map(str::trim_start)
        .unwrap_or(t);
    t.starts_with(first)
}

/// A crude reading of a dead pane's last words: the auth and quota messages the four CLIs print.
pub fn classify_exit_screen(screen: &str) -> Option<OutcomeClass> {
    let s = screen.to_ascii_lowercase();
    let auth = [
        "not logged in",
        "please run /login",
        "authentication failed",
        "401 unauthorized",
        "please set an auth method",
    ];
    let quota = ["429", "rate limit", "too many requests"];
    if auth.iter().any(|m| s.contains(m)) {
        Some(OutcomeClass::AuthError)
    } else if quota.iter().any(|m| s.contains(m)) {
        Some(OutcomeClass::RateLimited)
    } else {
        None
    }
}

/// The model flag and value, which Codex, Gemini and Droid spell `-m`.
fn short_model_flag(args: &mut Vec<String>, model: Option<&str>) {
    if let Some(m) = model {
        args.extend(["-m".to_owned(), m.to_owned()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn prompts() {
        let claude = tui_for(CliType::ClaudeCode);
        assert!(claude.is_prompt_line("│ > "));
        assert!(claude.is_prompt_line("│ >                    │"));
        assert!(!claude.is_prompt_line("│ > hello"));
        assert!(tui_for(CliType::Codex).is_prompt_line("›"));
        let gemini = tui_for(CliType::Gemini);
        assert!(gemini.is_prompt_line("> "));
        assert!(!gemini.is_prompt_line(">_ OpenAI Codex"));
    }

    #[test]
    fn extracts_between_echo_and_prompt() {
        let claude = tui_for(CliType::ClaudeCode);
        let screen = v(&["│ > hi", "there", "● echo: hi", "there", "│ >", "", ""]);
        assert_eq!(
            claude.extract_answer(&screen, "hi\nthere").as_deref(),
            Some("echo: hi\nthere")
        );
        let working = v(&["│ > hi", "there", "", ""]);
        assert_eq!(claude.extract_answer(&working, "hi\nthere"), None);
        let codex = v(&["› a", "echo: a", "›"]);
        assert_eq!(
            tui_for(CliType::Codex)
                .extract_answer(&codex, "a")
                .as_deref(),
            Some("echo: a")
        );
    }

    #[test]
    fn startup_screens() {
        let claude = tui_for(CliType::ClaudeCode);
        match claude.read_startup_screen(
            "│ Do you trust the files in this folder?\n❯ 1. No\n  2. Trust folder",
        ) {
            StartupScreen::FirstRun(s) => {
                assert_eq!(s.name, "trust this folder");
                assert_eq!(s.keys, ["Down", "Enter"]);
            }
            other => panic!("not a first-run screen: {other:?}"),
        }
        assert_eq!(claude.read_startup_screen("│ >"), StartupScreen::Ready);
        assert_eq!(
            claude.read_startup_screen("Welcome to Claude Code"),
            StartupScreen::NotYet
        );
    }

    #[test]
    fn interactive_args_per_cli() {
        let a = interactive_args(
            CliType::ClaudeCode,
            SessionArg::New {
                preassigned_id: "s1",
            },
            Some("m"),
        );
        assert_eq!(a, ["--session-id", "s1", "--model", "m"]);
        let a = interactive_args(CliType::Codex, SessionArg::Resume { session_id: "t" }, None);
        assert_eq!(a, ["resume", "t"]);
        let a = interactive_args(
            CliType::Gemini,
            SessionArg::Resume { session_id: "g" },
            Some("x"),
        );
        assert_eq!(a, ["-m", "x", "--resume", "g"]);
        let a = interactive_args(
            CliType::FactoryDroid,
            SessionArg::New { preassigned_id: "" },
            Some("x"),
        );
        assert_eq!(a, ["-m", "x"]);
    }

    #[test]
    fn exit_screens() {
        assert_eq!(
            classify_exit_screen("Error: Not logged in. Please run /login"),
            Some(OutcomeClass::AuthError)
        );
        assert_eq!(
            classify_exit_screen("HTTP 429 Too Many Requests"),
            Some(OutcomeClass::RateLimited)
        );
        assert_eq!(classify_exit_screen("panic: boom"), None);
    }

    #[test]
    fn echo_counts_prompt_lines() {
        assert_eq!(echo_lines("one"), 1);
        assert_eq!(echo_lines("one\ntwo"), 2);
        assert_eq!(echo_lines(""), 1);
    }
}
