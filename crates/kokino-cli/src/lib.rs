//! The four agent CLIs as data: their command lines, the environment they get, and parsers for
//! their JSON-lines output.
//!
//! This crate does no IO. The executor feeds it lines it read from a real process and asks it
//! what they mean; the parser tests feed it the captures of the real CLIs. Keeping both behind
//! the same functions is what makes the captures a test of production code.
//!
//! The interactive side lives in [`tui`]: for each CLI, the arguments that start its TUI, how to
//! read its screen, and how to read the session record it writes while it runs. The tmux
//! executor does the IO and asks these functions what it saw.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use kokino_core::{CliType, OutcomeClass, Usage};

mod claude;
mod codex;
mod common;
mod droid;
mod env;
mod gemini;
mod invocation;
mod rehydrate;
pub mod tui;

pub use env::{
    child_env, default_conflicting_vars, ENTRYPOINT_VALUE, ENTRYPOINT_VAR, NESTING_MARKER_VAR,
    PROTECTED_VARS,
};
pub use invocation::{build_args, first_prompt_with_system, system_prompt_in_args};
pub use rehydrate::{
    rehydration_prompt, PastTurn, REHYDRATION_MAX_BYTES, REHYDRATION_TURN_MAX_BYTES,
};
pub use tui::{interactive_args, tui_for, Tui};

/// Whether the next run creates the CLI session or resumes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionArg<'a> {
    /// First run of a session. `preassigned_id` is the id the broker chose for CLIs that take one
    /// (`claude --session-id`); the other CLIs ignore it and report their own id.
    New {
        /// The id the broker chose for the new session (ignored by CLIs that choose their own).
        preassigned_id: &'a str,
    },
    /// A later run: resume the CLI's own session id.
    Resume {
        /// The CLI's own id of the session to resume.
        session_id: &'a str,
    },
}

/// What the executor needs to build one headless command line (binary excluded).
#[derive(Debug, Clone, Copy)]
pub struct InvocationRequest<'a> {
    /// Which CLI to invoke.
    pub cli: CliType,
    /// The model, when the agent names one (else the CLI's default).
    pub model: Option<&'a str>,
    /// The agent's system prompt. It never goes in argv (every local user can read
    /// `/proc/*/cmdline`): Claude reads it from [`InvocationRequest::system_prompt_file`], the
    /// other CLIs get it at the head of the first prompt ([`first_prompt_with_system`]).
    pub system_prompt: Option<&'a str>,
    /// A file holding the system prompt, for the CLIs that read one (Claude's
    /// `--append-system-prompt-file`). The caller writes it (mode 0600) before the run.
    pub system_prompt_file: Option<&'a str>,
    /// The agent's extra arguments, appended where the CLI accepts options.
    pub extra_args: &'a [String],
    /// Whether this run creates or resumes the CLI session.
    pub session: SessionArg<'a>,
}

/// Whether the broker chooses the session id of a new session itself (Claude) or learns it from
/// the CLI's first event (the others).
pub fn preassigns_session_id(cli: CliType) -> bool {
    matches!(cli, CliType::ClaudeCode)
}

/// Something a line of CLI output meant, in the broker's vocabulary. The executor turns these into
/// stored state (the session id, as soon as it is seen) and into streaming events.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StreamEvent {
    /// The CLI's own session id (Claude/Gemini/Droid `session_id`, Codex `thread_id`).
    SessionId(String),
    /// A block of assistant text. `partial` marks streaming deltas.
    AssistantText {
        /// The text.
        text: String,
        /// A streaming delta rather than a complete block.
        partial: bool,
    },
    /// A tool call: name and a short (≤ 200 chars) summary of its input.
    ToolUse {
        /// The tool's name (`Bash`, `Read`, …).
        name: String,
        /// The start of the tool's input, at most 200 characters.
        input_summary: String,
    },
    /// A tool result: a short (≤ 200 chars) summary; never the whole output.
    ToolResult {
        /// The tool reported a failure.
        is_error: bool,
        /// The start of the result, at most 200 characters.
        summary: String,
    },
    /// The CLI is retrying an API call (Claude `system/api_retry`, Codex "Reconnecting…").
    Retry {
        /// Which attempt this is, when the CLI says.
        attempt: Option<u32>,
        /// The error that caused the retry.
        error: String,
    },
    /// The CLI reported a rate limit (a rejected quota, an HTTP 429 it is retrying, or one it
    /// gave up on). By default the executor stops the run at the first one, so that the agent
    /// is not held through the CLI's own retry loop.
    RateLimited {
        /// When the quota resets, in epoch seconds, when the CLI said.
        resets_at: Option<i64>,
        /// How long to wait before trying again, in seconds from the moment the line was read,
        /// when the signal carries it (a provider's `retryDelay`, "try again in 20s", the delay
        /// the CLI chose for its next attempt). The parser has no clock; the executor turns it
        /// into a reset time.
        retry_after_secs: Option<u64>,
    },
    /// The terminal event of the turn was read: the answer is final even if the process lingers.
    Final,
    /// A line that was not valid JSON (or not an object). Counted, never fatal.
    Malformed {
        /// Why the line could not be read.
        reason: String,
    },
    /// A well-formed event of a type this parser does not know. Kept, ignored.
    Unknown {
        /// The event's `type` field.
        event_type: String,
    },
}

/// How the process ended, as far as the parser needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcessExit {
    /// The exit code, when the process exited by itself.
    pub code: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
}

/// The parser's verdict on a finished run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedOutcome {
    /// One of `Success`, `CliError`, `AuthError`, `RateLimited`. Timeouts, cancels and resource
    /// kills are decided by the executor, which knows why it stopped the process.
    pub class: Option<OutcomeClass>,
    /// The final answer text.
    pub answer: Option<String>,
    /// The CLI's session id, as the stream reported it.
    pub session_id: Option<String>,
    /// Token usage, when the CLI reported it.
    pub usage: Option<Usage>,
    /// The run's cost in US dollars, when the CLI reported it.
    pub cost_usd: Option<f64>,
    /// How many agentic turns the CLI took, when it said.
    pub num_turns: Option<u32>,
    /// The CLI's own error message when the run failed.
    pub error_message: Option<String>,
    /// Epoch seconds at which a rejected quota resets, when the CLI said.
    pub rate_limit_resets_at: Option<i64>,
    /// Lines that were not valid JSON objects.
    pub malformed_lines: u64,
    /// Well-formed events of types the parser does not know.
    pub unknown_events: u64,
    /// The CLI could not find the session it was asked to resume (claude `No conversation found
    /// with session ID`, codex `no rollout found for thread id`, gemini `Invalid session
    /// identifier` / `No previous sessions found`, droid: a resume that exited 1 without a word).
    /// The broker can then start a new session seeded with the stored conversation.
    pub session_not_found: bool,
}

/// What a parser may need to know about the run it reads, beyond the lines themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunContext {
    /// The run continues an existing CLI session (claude `--resume`, codex `exec resume`, gemini
    /// `--resume`, droid `-s` or `--fork`). Droid reports an unknown or unreachable session only
    /// by exiting 1 with no output at all, which means something only for such a run.
    pub resuming: bool,
}

impl RunContext {
    /// The context of a run started with this session argument.
    pub fn for_session(session: SessionArg<'_>) -> RunContext {
        RunContext {
            resuming: matches!(session, SessionArg::Resume { .. }),
        }
    }
}

/// Incremental parser of one CLI's stdout. Memory use is bounded by the answer, never by tool
/// output: tool results are summarised and dropped as they pass.
pub trait StreamParser: Send {
    /// Parses one line (without its newline) and appends what it meant to `out`.
    fn feed_line(&mut self, line: &str, out: &mut Vec<StreamEvent>);
    /// Reads one line of the CLI's stderr (without its newline), as it arrives. Some signals
    /// are only there (gemini's `Attempt 1 failed with status 429`, codex's `no rollout found`),
    /// and the early ones matter before the run ends. Returns what the line meant, if anything.
    fn stderr_line(&mut self, line: &str) -> Option<StreamEvent> {
        let _ = line;
        None
    }
    /// Called once after the process ended (or was stopped after the final event), with the
    /// tail of its stderr, to decide the outcome.
    fn finish(&mut self, exit: ProcessExit, stderr_tail: &str) -> ParsedOutcome;
}

/// A fresh parser for one run of `cli` in headless mode that starts a new session. Use
/// [`parser_for_run`] for a resumed one.
pub fn parser_for(cli: CliType) -> Box<dyn StreamParser> {
    parser_for_run(cli, RunContext::default())
}

/// A fresh parser for one run of `cli` in headless mode, knowing how the run was started.
pub fn parser_for_run(cli: CliType, ctx: RunContext) -> Box<dyn StreamParser> {
    match cli {
        CliType::ClaudeCode => Box::new(claude::ClaudeParser::default()),
        CliType::Codex => Box::new(codex::CodexParser::default()),
        CliType::Gemini => Box::new(gemini::GeminiParser::default()),
        CliType::FactoryDroid => Box::new(droid::DroidParser::new(ctx)),
    }
}

/// Agent settings that shape the child environment.
pub type EnvMap = BTreeMap<String, String>;
