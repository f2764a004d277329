//! Interactive (TUI) mode, for the broker's tmux executor.
//!
//! The real CLIs draw a full-screen TUI; the fake draws a line-oriented imitation that keeps what
//! an automation has to deal with: a recognisable prompt line per CLI, raw mode with bracketed
//! paste, Enter to submit, a busy period honouring the `fake:` tokens, the answer, and a new
//! prompt line. As `claude` it also writes the session transcript
//! (`$HOME/.claude/projects/<cwd key>/<session>.jsonl`) in the real format, because the broker
//! prefers the transcript's `system`/`turn_duration` entry over anything on the screen.
//!
//! The exact prompt patterns and screens are documented in the README; the executor matches them.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cli::{Opts, Personality};
use crate::json::J;
use crate::obj;
use crate::run::{flood, hold_memory, split_chunks};
use crate::state::{cwd_key, CreateError, Session, Store, Turn};
use crate::sys;
use crate::tokens::Script;
use crate::tty::{self, Key, KeyReader};

/// The prompt line each personality draws when it is ready for input (the trailing space
/// included; `tmux capture-pane` drops it, so the executor compares trimmed lines).
pub fn prompt_line(p: Personality) -> &'static str {
    match p {
        Personality::Claude => "│ > ",
        Personality::Codex => "› ",
        Personality::Gemini | Personality::Droid => "> ",
    }
}

/// The placeholder the real TUI shows in its empty input line (Codex 0.169, Gemini CLI 0.61);
/// the first key typed or pasted replaces it.
pub fn placeholder(p: Personality) -> Option<&'static str> {
    match p {
        Personality::Codex => Some("Ask Codex to do anything"),
        Personality::Gemini => Some("  Type your message or @path/to/file"),
        _ => None,
    }
}

/// The question of the trust screen each real TUI shows in a folder it has not been told to
/// trust, and its options in order (the first one trusts, and is where the cursor starts).
fn trust_screen_text(p: Personality, cwd: &str) -> (String, &'static [&'static str]) {
    match p {
        Personality::Claude => (
            format!(
                "────────────────────────────────────────────────────────────\n \
                 Accessing workspace:\n\n {cwd}\n\n \
                 Quick safety check: Is this a project you created or one you trust? (Like your own \
                 code, a well-known open source project, or work from your team). If not, take a \
                 moment to review what's in this folder first.\n\n \
                 Claude Code'll be able to read, edit, and execute files here.\n\n"
            ),
            &["Yes, I trust this folder", "No, exit"],
        ),
        Personality::Codex => (
            format!(
                "  Folder access\n  {cwd}\n\n  Trust this folder? Codex can read, edit, and run files \
                 here, subject to your permission settings.\n\n"
            ),
            &["Trust and continue", "Back to Agent Command Center"],
        ),
        Personality::Gemini => (
            " ╭──────────────────────────────────────────────────────────╮\n \
             │ Do you trust the files in this folder?\n \
             │\n"
                .to_owned(),
            &["Trust folder (work)", "Trust parent folder", "Don't trust"],
        ),
        // Droid has no trust screen; it asks for a Factory login instead.
        Personality::Droid => (String::new(), &[]),
    }
}

/// The glyph the real TUI puts before the selected option of a menu.
fn menu_glyph(p: Personality) -> &'static str {
    match p {
        Personality::Claude => "❯",
        Personality::Codex => "›",
        Personality::Gemini => "●",
        Personality::Droid => ">",
    }
}

/// Prefix of the answer line. The real claude marks assistant text with `● `.
fn answer_prefix(p: Personality) -> &'static str {
    match p {
        Personality::Claude => "● ",
        _ => "",
    }
}

/// Writes text to the terminal with every `\n` as `\r\n`: in raw mode the terminal may not do
/// that translation, and a bare `\n` would leave the cursor in the middle of the next line.
fn out(text: &str) {
    sys::raw(text.replace('\n', "\r\n").as_bytes());
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Leaves interactive mode: terminal restored, bracketed paste off, witness closed.
fn leave(code: i32) -> ! {
    sys::raw(tty::BRACKETED_PASTE_OFF);
    tty::restore();
    sys::exit(code)
}

/// Runs the TUI until the user exits (`/exit`, Ctrl-D on an empty line, end of input) or a
/// `fake:exit=N` token ends the process.
pub fn run(personality: Personality, opts: Opts, env_logged_out: bool) -> i32 {
    sys::install_signals(false);
    let cwd = std::env::current_dir()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| ".".into());
    let transcript = if personality == Personality::Claude {
        match ClaudeTranscript::open(&opts, &cwd) {
            Ok(t) => Some(t),
            Err(code) => return code,
        }
    } else {
        None
    };
    let mut tui = Tui {
        personality,
        cwd,
        env_logged_out,
        transcript,
        earlier_prompts: 0,
    };

    tty::enter_raw_mode();
    sys::raw(tty::BRACKETED_PASTE_ON);
    let mut keys = KeyReader::new(tty::read_stdin_byte);
    let screens = first_run_requested();
    if screens.iter().any(|s| s == "login") && personality == Personality::Droid {
        tui.login_screen(&mut keys);
    }
    if screens.iter().any(|s| s == "1" || s == "trust")
        && personality != Personality::Droid
        && !tui.trust_screen(&mut keys)
    {
        out("\n");
        leave(1);
    }
    if screens.iter().any(|s| s == "apikey") && personality == Personality::Claude {
        tui.api_key_screen(&mut keys);
    }
    tui.banner();
    loop {
        out(prompt_line(personality));
        if let Some(p) = placeholder(personality) {
            // Drawn after the glyph, with the cursor put back before it: the first key erases it.
            sys::raw(p.as_bytes());
            out(&format!("\r{}", prompt_line(personality)));
        }
        let Some(prompt) = read_submission(&mut keys) else {
            out("\n");
            leave(0);
        };
        out("\n");
        let trimmed = prompt.trim();
        if trimmed == "/exit" || trimmed == "/quit" {
            leave(0);
        }
        if let Some(code) = tui.turn(&prompt) {
            leave(code);
        }
    }
}

/// `KOKINO_FAKE_FIRST_RUN=trust,apikey,login` (or `1` for `trust`): the first-run screens to
/// show before the prompt, as the real TUIs do with a fresh configuration: the trust screen
/// (claude, codex, gemini), Claude's API-key question, Droid's Factory login.
fn first_run_requested() -> Vec<String> {
    match std::env::var("KOKINO_FAKE_FIRST_RUN") {
        Ok(v) if !v.is_empty() && v != "0" => v.split(',').map(|s| s.trim().to_owned()).collect(),
        _ => Vec::new(),
    }
}

/// Draws a numbered menu with the cursor on option `selected` (0-based).
fn draw_menu(p: Personality, options: &[&str], selected: usize) {
    for (i, o) in options.iter().enumerate() {
        let mark = if i == selected { menu_glyph(p) } else { " " };
        out(&format!(" {mark} {}. {o}\n", i + 1));
    }
}

/// Redraws a menu in place: the cursor is below its hint line (a blank line and the hint
/// follow the options), as the real TUIs redraw theirs.
fn redraw_menu(p: Personality, options: &[&str], selected: usize) {
    sys::raw(format!("\x1b[{}A\r", options.len() + 2).as_bytes());
    draw_menu(p, options, selected);
    out("\n  Enter to confirm · Esc to cancel\n");
}

/// Waits for a menu answer: the arrows move the cursor (the menu is redrawn below), a digit
/// chooses its option, Enter the one under the cursor. `None` at end of input.
fn read_menu<R: FnMut() -> Option<u8>>(
    p: Personality,
    keys: &mut KeyReader<R>,
    options: &[&str],
    mut selected: usize,
) -> Option<usize> {
    loop {
        match keys.next_key() {
            Some(Key::Enter) => return Some(selected),
            Some(Key::Up) if selected > 0 => {
                selected -= 1;
                redraw_menu(p, options, selected);
            }
            Some(Key::Down) if selected + 1 < options.len() => {
                selected += 1;
                redraw_menu(p, options, selected);
            }
            Some(Key::Text(b)) if b.len() == 1 && b[0].is_ascii_digit() => {
                let n = usize::from(b[0] - b'0');
                if (1..=options.len()).contains(&n) {
                    return Some(n - 1);
                }
            }
            None | Some(Key::EndOfInput) => return None,
            Some(_) => {}
        }
    }
}

/// Reads keys until Enter on a non-empty input, echoing what was typed or pasted. Returns `None`
/// at end of input or Ctrl-D on an empty line. Enter on an empty input does nothing, as in the
/// real TUIs, so a repeated Enter from an automation never submits an empty turn.
fn read_submission<R: FnMut() -> Option<u8>>(keys: &mut KeyReader<R>) -> Option<String> {
    let mut input: Vec<u8> = Vec::new();
    loop {
        let key = keys.next_key()?;
        if input.is_empty() && matches!(key, Key::Text(_) | Key::Paste(_)) {
            // Erase a placeholder drawn after the prompt glyph.
            sys::raw(b"\x1b[K");
        }
        match key {
            Key::Text(bytes) => {
                sys::raw(&bytes);
                input.extend_from_slice(&bytes);
            }
            Key::Paste(text) => {
                out(&text);
                input.extend_from_slice(text.as_bytes());
            }
            Key::Backspace => {
                // Remove one whole UTF-8 character: continuation bytes, then the lead byte.
                while input.last().is_some_and(|b| b & 0xC0 == 0x80) {
                    input.pop();
                }
                if input.pop().is_some() {
                    sys::raw(b"\x08 \x08");
                }
            }
            Key::Enter => {
                let text = String::from_utf8_lossy(&input).into_owned();
                if !text.trim().is_empty() {
                    return Some(text);
                }
            }
            Key::EndOfInput if input.is_empty() => return None,
            Key::EndOfInput | Key::Other | Key::Up | Key::Down => {}
        }
    }
}

struct Tui {
    personality: Personality,
    cwd: String,
    env_logged_out: bool,
    transcript: Option<ClaudeTranscript>,
    /// Prompts submitted in this process before the current one.
    earlier_prompts: usize,
}

impl Tui {
    /// How many user turns the conversation held before the current one: claude's from its
    /// session record (which a resumed session brings along), the others' from this process,
    /// which is where their TUIs keep the conversation.
    fn earlier_turns(&self) -> usize {
        match &self.transcript {
            Some(t) => t.session.turns.len().saturating_sub(1),
            None => self.earlier_prompts.saturating_sub(1),
        }
    }

    fn banner(&self) {
        let text = match self.personality {
            Personality::Claude => format!(
                "✻ Welcome to Claude Code {} (kokino-fake-agent)\n  cwd: {}\n\n",
                crate::claude::VERSION,
                self.cwd
            ),
            Personality::Codex => format!(
                ">_ OpenAI Codex (v{}, kokino-fake-agent)\n  directory: {}\n\n",
                crate::codex::VERSION,
                self.cwd
            ),
            Personality::Gemini => format!(
                "Gemini CLI {} (kokino-fake-agent)\n\n",
                crate::gemini::VERSION
            ),
            Personality::Droid => format!(
                "Factory Droid {} (kokino-fake-agent)\n\n",
                crate::droid::VERSION
            ),
        };
        out(&text);
    }

    /// The first-run trust screen in the real TUI's wording. The first option (under the
    /// cursor at the start) trusts the folder; any other exits.
    fn trust_screen<R: FnMut() -> Option<u8>>(&self, keys: &mut KeyReader<R>) -> bool {
        let (text, options) = trust_screen_text(self.personality, &self.cwd);
        out(&text);
        draw_menu(self.personality, options, 0);
        out("\n  Enter to confirm · Esc to cancel\n");
        if read_menu(self.personality, keys, options, 0) != Some(0) {
            return false;
        }
        // The real TUI redraws the whole screen once the folder is trusted.
        sys::raw(b"\x1b[2J\x1b[H");
        true
    }

    /// Claude Code's question about an API key found in the environment. Its cursor starts on
    /// "No (recommended)"; choosing it leaves the TUI without credentials, as in the real one.
    fn api_key_screen<R: FnMut() -> Option<u8>>(&mut self, keys: &mut KeyReader<R>) {
        let options: &[&str] = &["Yes", "No (recommended)"];
        out("  Detected a custom API key in your environment\n\n  ANTHROPIC_API_KEY: sk-ant-...standin\n\n  Do you want to use this API key?\n\n");
        draw_menu(self.personality, options, 1);
        out("\n  Enter to confirm · Esc to cancel\n");
        match read_menu(self.personality, keys, options, 1) {
            Some(0) => {}
            Some(_) => self.env_logged_out = true,
            None => leave(1),
        }
        sys::raw(b"\x1b[2J\x1b[H");
    }

    /// Droid's login screen without a Factory account: it never goes away by itself; `Exit`
    /// (the second option) or end of input leaves.
    fn login_screen<R: FnMut() -> Option<u8>>(&self, keys: &mut KeyReader<R>) {
        out(
            "\n│ Welcome to Factory CLI\n\nPlease login with your Factory account to continue.\n\n",
        );
        out("> Login\n  Exit\n");
        loop {
            match keys.next_key() {
                Some(Key::Down) | None | Some(Key::EndOfInput) => leave(1),
                Some(_) => {}
            }
        }
    }

    /// One submitted prompt. Returns `Some(code)` when the process must exit.
    fn turn(&mut self, prompt: &str) -> Option<i32> {
        sys::witness_start(self.personality.name(), &self.cwd);
        // A Ctrl-C pressed at the idle prompt must not abort this turn.
        let _ = sys::take_interrupt();
        let started = Instant::now();
        self.earlier_prompts += 1;
        let script = Script::parse(prompt);
        for w in &script.warnings {
            out(&format!(
                "kokino-fake-agent: ignoring unknown or malformed token {w}\n"
            ));
        }
        if script.ignore_term {
            sys::install_signals(true);
        }
        if let Some(t) = &mut self.transcript {
            t.user(prompt);
        }
        if let Some(kind) = script.child {
            crate::run::spawn_grandchild(kind);
        }
        let _ballast = script.mem.map(hold_memory);
        let code = self.work(&script, started);
        sys::witness_end();
        code
    }

    /// The scripted part of a turn, in the same order as headless mode.
    fn work(&mut self, s: &Script, started: Instant) -> Option<i32> {
        let p = self.personality;
        if self.env_logged_out || s.auth {
            return self.api_failure(p, auth_text(p), "authentication_failed", started);
        }
        if s.hang && self.pause(None).is_err() {
            return None;
        }
        if let Some(total) = s.flood {
            // Tool output scrolling past, as a TUI shows a chatty command.
            flood(total);
            out("\n");
        }
        if s.tool {
            self.tool();
        }
        let answer = s.answer_in(true, self.earlier_turns());
        let streaming = s
            .stream
            .filter(|n| *n > 0 && !s.ratelimit && s.exit.is_none());
        match streaming {
            Some(n) => {
                out(answer_prefix(p));
                let step = s.sleep / u32::try_from(n).unwrap_or(u32::MAX);
                for chunk in split_chunks(&answer, n) {
                    if self.pause(Some(step)).is_err() {
                        return None;
                    }
                    out(chunk);
                }
                out("\n");
            }
            None => {
                if self.pause(Some(s.sleep)).is_err() {
                    return None;
                }
            }
        }
        if s.ratelimit {
            return self.api_failure(p, ratelimit_text(p), "rate_limit", started);
        }
        if let Some(code) = s.exit {
            out(&format!(
                "Error: Fake agent failure requested by fake:exit={code}\n"
            ));
            return Some(code);
        }
        if streaming.is_none() {
            out(&format!("{}{answer}\n", answer_prefix(p)));
        }
        if let Some(t) = &mut self.transcript {
            if s.malformed {
                // A line cut off mid-object, as a reader sees while a writer is mid-write.
                t.raw("{\"type\":\"assistant\",\"message\":{\"id\":\"msg_truncated\",\"content\":[{\"type\":\"te\n");
            }
            t.assistant(&answer, None);
            if !s.noresult {
                t.turn_duration(started);
            }
        }
        None
    }

    /// Waits like headless mode; Ctrl-C (SIGINT) ends the turn and returns to the prompt.
    fn pause(&mut self, d: Option<Duration>) -> Result<(), ()> {
        let personality = self.personality;
        let transcript = &mut self.transcript;
        sys::wait(d, &mut || {
            match personality {
                Personality::Claude => out("  ⎿  Interrupted · What should Claude do instead?\n"),
                _ => out("Interrupted.\n"),
            }
            if let Some(t) = transcript.as_mut() {
                t.interrupted();
            }
            Some(0)
        })
        .map_err(|_| ())
    }

    fn tool(&mut self) {
        match self.personality {
            Personality::Claude => out("● Bash(echo hello-from-tool)\n  ⎿  hello-from-tool\n\n"),
            _ => out("$ echo hello-from-tool\nhello-from-tool\n\n"),
        }
        if let Some(t) = &mut self.transcript {
            t.tool();
        }
    }

    /// An API failure (auth, 429). Claude shows it, records it in the transcript as the real
    /// CLI does (a synthetic assistant message with `error`) and stays at the prompt; the other
    /// CLIs print the error and exit 1, which the broker sees as a dead pane.
    fn api_failure(
        &mut self,
        p: Personality,
        text: &str,
        error: &str,
        started: Instant,
    ) -> Option<i32> {
        out(&format!("{}{text}\n", answer_prefix(p)));
        match &mut self.transcript {
            Some(t) => {
                t.assistant(text, Some(error));
                t.turn_duration(started);
                None
            }
            None => Some(1),
        }
    }
}

fn auth_text(p: Personality) -> &'static str {
    match p {
        Personality::Claude => "Not logged in · Please run /login",
        Personality::Codex => "■ unexpected status 401 Unauthorized: Missing bearer or basic authentication in header",
        Personality::Gemini => "Please set an Auth method in your ~/.gemini/settings.json or specify one of the following environment variables before running: GEMINI_API_KEY, GOOGLE_GENAI_USE_VERTEXAI, GOOGLE_GENAI_USE_GCA",
        Personality::Droid => "Error: Authentication failed. Please log in using /login or set a valid FACTORY_API_KEY environment variable.",
    }
}

fn ratelimit_text(p: Personality) -> &'static str {
    match p {
        Personality::Claude => "API Error: Request rejected (429) · This request would exceed your account's rate limit. Please try again later.",
        Personality::Codex => "■ exceeded retry limit, last status: 429 Too Many Requests",
        Personality::Gemini => "[API Error: 429 Too Many Requests] Resource has been exhausted (e.g. check quota).",
        Personality::Droid => "Error: 429 Too Many Requests: rate limit exceeded. Please try again later.",
    }
}

/// The claude session transcript, `$HOME/.claude/projects/<cwd key>/<session id>.jsonl`, in the
/// format of `shared/captures/claude/claude-interactive-transcript.jsonl`. Every entry is one
/// line handed to the kernel in one `write(2)` on an `O_APPEND` file, so a reader following the
/// file sees whole lines (or, at worst, a line still missing its end, which it must skip).
struct ClaudeTranscript {
    file: Option<File>,
    session: Session,
    store: Store,
    cwd: String,
    model: String,
    parent: Option<String>,
    messages: u32,
    wrote_header: bool,
    /// A session this process created (`--session-id`), not a resumed one.
    new_session: bool,
    /// Whether entries are being held back rather than written.
    holding: bool,
    /// Entries held back until the end of the turn.
    held: Vec<String>,
}

impl ClaudeTranscript {
    /// Resolves the session the way the real interactive claude does: `--session-id` must be a
    /// new UUID, `--resume` must exist, `--continue` takes the latest session of this folder.
    fn open(opts: &Opts, cwd: &str) -> Result<ClaudeTranscript, i32> {
        let store = Store::from_env();
        let resume = if opts.resume_last {
            store.latest("claude", cwd).map(|s| s.id)
        } else {
            opts.resume.clone()
        };
        let new_session = resume.is_none();
        let session = match resume {
            Some(id) => match store.load("claude", cwd, &id) {
                Some(s) => s,
                None => {
                    sys::err_line(&format!("No conversation found with session ID: {id}"));
                    return Err(1);
                }
            },
            None => {
                let id = opts.session_id.clone().unwrap_or_else(uuid);
                if uuid::Uuid::parse_str(&id).is_err() {
                    sys::err_line("Error: Invalid session ID. Must be a valid UUID.");
                    return Err(1);
                }
                let now = sys::epoch_ms();
                let s = Session {
                    id: id.clone(),
                    personality: "claude".into(),
                    cwd: cwd.to_owned(),
                    created_ms: now,
                    updated_ms: now,
                    turns: Vec::new(),
                };
                match store.create(&s) {
                    Ok(()) => {}
                    Err(CreateError::Exists) => {
                        sys::err_line(&format!("Error: Session ID {id} is already in use."));
                        return Err(1);
                    }
                    Err(CreateError::Io(e)) => {
                        sys::err_line(&format!("kokino-fake-agent: cannot record session: {e}"));
                    }
                }
                s
            }
        };
        let model = opts
            .model
            .clone()
            .unwrap_or_else(|| "claude-opus-4-8".into());
        let path = transcript_path(cwd, &session.id);
        // The file is created lazily, like the real CLI, which writes nothing before the first
        // prompt; but the handle is opened here so a bad HOME shows up at start.
        let file = path.and_then(|p| {
            std::fs::create_dir_all(p.parent()?).ok()?;
            OpenOptions::new().create(true).append(true).open(p).ok()
        });
        if file.is_none() {
            sys::err_line(
                "kokino-fake-agent: cannot open the claude transcript; continuing without it",
            );
        }
        Ok(ClaudeTranscript {
            file,
            session,
            store,
            cwd: cwd.to_owned(),
            model: model.split('[').next().unwrap_or(&model).to_owned(),
            parent: None,
            messages: 0,
            wrote_header: false,
            new_session,
            holding: false,
            held: Vec::new(),
        })
    }

    fn raw(&mut self, line: &str) {
        if let Some(f) = &mut self.file {
            let _ = f.write_all(line.as_bytes());
        }
    }

    fn entry(&mut self, v: J) {
        let mut line = v.to_line();
        line.push('\n');
        if self.holding {
            self.held.push(line);
        } else {
            self.raw(&line);
        }
    }

    /// Writes the entries held back (the first prompt of a new session), after the turn's end.
    fn release_held(&mut self) {
        for line in std::mem::take(&mut self.held) {
            self.raw(&line);
        }
    }

    /// The fields every conversation entry ends with.
    fn common(&self, v: &mut J) {
        v.push("userType", "external");
        v.push("entrypoint", "cli");
        v.push("cwd", self.cwd.clone());
        v.push("sessionId", self.session.id.clone());
        v.push("version", crate::claude::VERSION);
        v.push("gitBranch", "HEAD");
    }

    fn user(&mut self, prompt: &str) {
        self.session.turns.push(Turn {
            prompt: prompt.to_owned(),
            at_ms: sys::epoch_ms(),
            pid: std::process::id(),
        });
        self.session.updated_ms = sys::epoch_ms();
        if let Err(e) = self.store.save(&self.session) {
            sys::err_line(&format!("kokino-fake-agent: cannot save session: {e}"));
        }
        // Claude Code 2.1 writes the first prompt of a new session *after* the turn's answer and
        // `turn_duration` (`claude-interactive-first-turn.jsonl`); so does the fake, always, so
        // that a reader depending on the order fails here rather than now and then.
        let hold = !self.wrote_header && self.new_session;
        if !self.wrote_header {
            self.wrote_header = true;
            let sid = self.session.id.clone();
            self.entry(obj! { "type" => "mode", "mode" => "normal", "sessionId" => sid.clone() });
            self.entry(obj! {
                "type" => "permission-mode",
                "permissionMode" => "default",
                "sessionId" => sid,
            });
        }
        let id = uuid();
        let now = sys::iso_now();
        self.holding = hold;
        self.entry(obj! {
            "type" => "file-history-snapshot",
            "messageId" => id.clone(),
            "snapshot" => obj! {
                "messageId" => id.clone(),
                "trackedFileBackups" => obj! {},
                "timestamp" => now.clone(),
            },
            "isSnapshotUpdate" => false,
        });
        let mut v = obj! {
            "parentUuid" => self.parent.clone(),
            "isSidechain" => false,
            "promptId" => uuid(),
            "type" => "user",
            "message" => obj! { "role" => "user", "content" => prompt },
            "uuid" => id.clone(),
            "timestamp" => now,
            "permissionMode" => "default",
            "origin" => obj! { "kind" => "human" },
            "promptSource" => "typed",
        };
        self.common(&mut v);
        self.entry(v);
        // Only the prompt's own entries are held; what the turn writes next goes out at once.
        self.holding = false;
        self.parent = Some(id);
        self.messages += 1;
    }

    fn message(&mut self, content: J, error: Option<&str>) {
        let id = uuid();
        let model = if error.is_some() {
            "<synthetic>".to_owned()
        } else {
            self.model.clone()
        };
        let mut v = obj! {
            "parentUuid" => self.parent.clone(),
            "isSidechain" => false,
            "message" => obj! {
                "id" => format!("msg_fake_{}", sys::epoch_ms()),
                "type" => "message",
                "role" => "assistant",
                "model" => model,
                "content" => J::Arr(vec![content]),
                "stop_reason" => "end_turn",
                "stop_sequence" => J::Null,
                "usage" => obj! {
                    "input_tokens" => 11,
                    "cache_creation_input_tokens" => 0,
                    "cache_read_input_tokens" => 0,
                    "output_tokens" => 7,
                },
            },
            "type" => "assistant",
            "uuid" => id.clone(),
            "timestamp" => sys::iso_now(),
        };
        if let Some(e) = error {
            v.push("error", e);
            v.push("isApiErrorMessage", true);
        }
        self.common(&mut v);
        self.entry(v);
        self.parent = Some(id);
        self.messages += 1;
    }

    fn assistant(&mut self, text: &str, error: Option<&str>) {
        self.message(obj! { "type" => "text", "text" => text }, error);
    }

    fn tool(&mut self) {
        let tool_id = format!("toolu_{}", &uuid::Uuid::new_v4().simple().to_string()[..24]);
        self.message(
            obj! {
                "type" => "tool_use",
                "id" => tool_id.clone(),
                "name" => "Bash",
                "input" => obj! { "command" => "echo hello-from-tool", "description" => "Print a greeting" },
            },
            None,
        );
        let id = uuid();
        let mut v = obj! {
            "parentUuid" => self.parent.clone(),
            "isSidechain" => false,
            "type" => "user",
            "message" => obj! {
                "role" => "user",
                "content" => J::Arr(vec![obj! {
                    "tool_use_id" => tool_id,
                    "type" => "tool_result",
                    "content" => "hello-from-tool",
                    "is_error" => false,
                }]),
            },
            "uuid" => id.clone(),
            "timestamp" => sys::iso_now(),
        };
        self.common(&mut v);
        self.entry(v);
        self.parent = Some(id);
        self.messages += 1;
    }

    fn interrupted(&mut self) {
        let id = uuid();
        let mut v = obj! {
            "parentUuid" => self.parent.clone(),
            "isSidechain" => false,
            "type" => "user",
            "message" => obj! {
                "role" => "user",
                "content" => J::Arr(vec![obj! { "type" => "text", "text" => "[Request interrupted by user]" }]),
            },
            "uuid" => id.clone(),
            "timestamp" => sys::iso_now(),
        };
        self.common(&mut v);
        self.entry(v);
        self.parent = Some(id);
        self.release_held();
    }

    /// The end-of-turn marker the broker waits for.
    fn turn_duration(&mut self, started: Instant) {
        let id = uuid();
        let mut v = obj! {
            "parentUuid" => self.parent.clone(),
            "isSidechain" => false,
            "type" => "system",
            "subtype" => "turn_duration",
            "durationMs" => i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
            "messageCount" => self.messages,
            "timestamp" => sys::iso_now(),
            "uuid" => id.clone(),
            "isMeta" => false,
        };
        self.common(&mut v);
        self.entry(v);
        self.parent = Some(id);
        self.release_held();
    }
}

/// `$HOME/.claude/projects/<cwd key>/<session id>.jsonl`; `None` without a HOME.
pub fn transcript_path(cwd: &str, session_id: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(
        PathBuf::from(home)
            .join(".claude")
            .join("projects")
            .join(cwd_key(cwd))
            .join(format!("{session_id}.jsonl")),
    )
}
