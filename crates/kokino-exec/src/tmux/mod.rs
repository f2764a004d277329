//! The tmux executor: each agent's CLI runs interactively in a tmux session of the broker's own
//! tmux server, and a prompt is a paste into that session.
//!
//! # Shape
//!
//! * **A private server.** Every tmux call uses `-S <socket_dir>/tmux.sock -f /dev/null`, so the
//!   broker never touches a user's tmux and no user configuration changes what it sees. The
//!   server starts with an empty environment, so a pane's environment is exactly the child
//!   environment given with `new-session -e` (plus `TERM`, `TMUX`, `TMUX_PANE`,
//!   `TERM_PROGRAM`, `TERM_PROGRAM_VERSION`, which tmux sets for any terminal program).
//! * **One session per agent** ([`session_name`]), started on first use with the CLI in the
//!   agent's cwd, reused by later runs, killed by [`TmuxExecutor::end_session`]. The session is
//!   created through `source-file -`, so environment values travel on the client's stdin and never
//!   appear in any process's argv. `remain-on-exit` keeps a dead CLI's pane (its last words and
//!   exit status) for the post-mortem.
//! * **Input.** `load-buffer -` (the prompt on the client's stdin, never in argv), `paste-buffer
//!   -p -d` (bracketed, so a multi-line prompt is not submitted line by line), then `Enter` once
//!   the CLI has echoed the paste; the submit is verified (the pane prints something) and `Enter`
//!   is sent a second time if it was not.
//! * **Completion, event-driven.** For Claude Code with a known session id, the session
//!   transcript is followed with inotify and the turn ends at its `system`/`turn_duration` entry;
//!   the answer is the assistant text of the same file. Otherwise a control-mode client
//!   (`tmux -C attach`) pushes a notification for every burst of output; once the pane has been
//!   quiet for [`TmuxConfig::quiescence`] (or for the shorter [`TmuxConfig::prompt_settle`] when
//!   the output ended with the CLI's prompt), one `capture-pane` confirms that the prompt is back
//!   below the echoed prompt, and the answer is the text between the two.
//! * **Death.** The pane process is watched with a pidfd, so a CLI that exits is noticed at once
//!   (outcome `cli_error`, or `auth_error` / `rate_limited` when its last words say so).
//! * **Stopping.** Timeout, inactivity, memory limit and cancel send `C-c` (letting the CLI record
//!   the interruption), then SIGTERM, a grace period and SIGKILL to the pane's process group, and
//!   kill the session. The next run starts a fresh session, which the caller resumes with
//!   [`interactive_args`].
//!
//! [`TmuxExecutor::run_detailed`] also returns [`TmuxTimings`], from which a benchmark reads how
//! long after the CLI finished the executor noticed.

mod client;
mod control;
mod process;
mod screen;
mod transcript;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use kokino_cli::{ParsedOutcome, ProcessExit, SessionArg, StreamEvent};
use kokino_core::{CliType, OutcomeClass};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::headless::{ExecEvent, Limits, RunResult, StopReason};
use crate::procfs;
pub use client::session_name;
use client::{escape_format, quote, Tmux};
use control::{ControlClient, ControlEvent};
pub use transcript::{project_key, transcript_path};

/// Tuning of the tmux executor. The defaults suit the real CLIs; tests shorten some of them.
#[derive(Debug, Clone)]
pub struct TmuxConfig {
    /// Pane size. Wide enough that answers rarely wrap (wrapped lines are joined anyway).
    pub width: u16,
    pub height: u16,
    /// Lines of scrollback kept per pane: the bound on an answer read from the screen.
    pub history_limit: u32,
    /// Quiet time after output before the screen is checked for the prompt.
    pub quiescence: Duration,
    /// Quiet time when the output ended with the CLI's prompt: the likely end of a turn, checked
    /// sooner so completion is noticed within tens of milliseconds.
    pub prompt_settle: Duration,
    /// How long a new session may take to show its prompt (first-run screens included) before
    /// the run fails with a description of what the pane shows.
    pub startup_timeout: Duration,
    /// How long to wait for the CLI to echo a paste before pressing Enter anyway.
    pub paste_echo_timeout: Duration,
    /// How long to wait for the CLI to react to Enter before pressing it a second time.
    pub submit_ack_timeout: Duration,
    /// After `C-c`, how long the CLI gets to record the interruption before its group is killed.
    pub interrupt_grace: Duration,
    /// Grace between SIGTERM and SIGKILL in [`TmuxExecutor::end_session`] and
    /// [`TmuxExecutor::kill_server`] (runs use [`Limits::kill_grace`]).
    pub end_grace: Duration,
    /// Ceiling for any one tmux client call, so a wedged server cannot hang a run.
    pub command_timeout: Duration,
}

impl Default for TmuxConfig {
    fn default() -> Self {
        TmuxConfig {
            width: 200,
            height: 50,
            history_limit: 100_000,
            quiescence: Duration::from_millis(300),
            prompt_settle: Duration::from_millis(30),
            startup_timeout: Duration::from_secs(30),
            paste_echo_timeout: Duration::from_millis(500),
            submit_ack_timeout: Duration::from_millis(1500),
            interrupt_grace: Duration::from_millis(500),
            end_grace: Duration::from_secs(2),
            command_timeout: Duration::from_secs(10),
        }
    }
}

/// One prompt for one agent.
#[derive(Debug, Clone)]
pub struct TmuxRequest {
    pub agent_id: String,
    pub cli: CliType,
    pub program: PathBuf,
    /// Interactive arguments, used only when the session has to be started (see
    /// [`interactive_args`]); a reused session keeps the CLI it has.
    pub args: Vec<String>,
    /// The complete child environment (`kokino_cli::child_env`).
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub prompt: String,
    /// Claude Code's session id (the one given with `--session-id`/`--resume`): enables the
    /// transcript as the completion signal. Needs `HOME` in `env`.
    pub claude_session_id: Option<String>,
}

/// The arguments that start a CLI's TUI on a given session. Only Claude Code lets the caller
/// choose a new session's id; for the others a new session takes no argument.
pub fn interactive_args(cli: CliType, session: SessionArg<'_>, model: Option<&str>) -> Vec<String> {
    let mut args = Vec::new();
    match cli {
        CliType::ClaudeCode => {
            match session {
                SessionArg::New { preassigned_id } => {
                    args.extend(["--session-id".to_owned(), preassigned_id.to_owned()])
                }
                SessionArg::Resume { session_id } => {
                    args.extend(["--resume".to_owned(), session_id.to_owned()])
                }
            }
            if let Some(m) = model {
                args.extend(["--model".to_owned(), m.to_owned()]);
            }
        }
        CliType::Codex => {
            if let Some(m) = model {
                args.extend(["-m".to_owned(), m.to_owned()]);
            }
            if let SessionArg::Resume { session_id } = session {
                args.extend(["resume".to_owned(), session_id.to_owned()]);
            }
        }
        CliType::Gemini => {
            if let Some(m) = model {
                args.extend(["-m".to_owned(), m.to_owned()]);
            }
            if let SessionArg::Resume { session_id } = session {
                args.extend(["--resume".to_owned(), session_id.to_owned()]);
            }
        }
        CliType::FactoryDroid => {
            if let Some(m) = model {
                args.extend(["-m".to_owned(), m.to_owned()]);
            }
        }
    }
    args
}

/// Which signal ended the turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionSignal {
    /// Claude Code's transcript got its `turn_duration` entry.
    Transcript,
    /// The pane went quiet and showed the prompt again.
    PromptAfterQuiet,
}

/// When things happened during a run, measured from the start of [`TmuxExecutor::run_detailed`].
#[derive(Debug, Clone, Default)]
pub struct TmuxTimings {
    /// A new session was started for this run (rather than reused).
    pub session_created: bool,
    /// First-run screens that were recognised and answered.
    pub first_run_screens: Vec<&'static str>,
    /// The CLI showed its prompt and the paste went in.
    pub ready_after: Option<Duration>,
    /// The first Enter was sent.
    pub submitted_after: Option<Duration>,
    /// Enter had to be sent a second time.
    pub submit_retried: bool,
    /// The completion signal was observed.
    pub completed_after: Option<Duration>,
    /// Wall-clock time of that observation, to compare with the CLI's own clock (the fake
    /// agent's witness log) when measuring detection latency.
    pub completed_at: Option<SystemTime>,
    pub signal: Option<CompletionSignal>,
}

/// A run's result and its timings.
#[derive(Debug, Clone)]
pub struct TmuxRun {
    pub result: RunResult,
    pub timings: TmuxTimings,
}

/// Runs agent CLIs in tmux sessions of one private tmux server.
#[derive(Debug)]
pub struct TmuxExecutor {
    tmux: Tmux,
    socket_dir: PathBuf,
    config: TmuxConfig,
    available: OnceLock<bool>,
}

/// What a pane is, as tmux reports it.
#[derive(Debug, Clone)]
struct PaneInfo {
    id: String,
    pid: i32,
    dead: bool,
    dead_status: Option<i32>,
}

/// How the wait for the turn ended.
enum End {
    Answer {
        class: OutcomeClass,
        answer: String,
        error: Option<String>,
        signal: CompletionSignal,
    },
    /// The CLI exited (or the session vanished), with its `(code, signal)` when known.
    Died(Option<(Option<i32>, Option<i32>)>),
    Stop(StopReason),
    /// The pane cannot be used: an unknown screen, or tmux failing mid-run.
    Unusable(String),
}

/// Where the run is.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for the prompt, answering first-run screens.
    Starting,
    /// The paste was sent; waiting for its echo before pressing Enter.
    Pasted,
    /// Enter was sent; waiting for the CLI to react.
    Submitted { retried: bool },
    /// The CLI is working on the prompt.
    Working,
}

static BUFFER_SEQ: AtomicU64 = AtomicU64::new(0);

/// Unix sockets have a short path limit (108 bytes on Linux, including the NUL).
const MAX_SOCKET_PATH: usize = 100;

impl TmuxExecutor {
    /// An executor using `tmux_binary` with its server socket at `<socket_dir>/tmux.sock`. The
    /// directory is created (mode 0700) on first use.
    pub fn new(tmux_binary: PathBuf, socket_dir: PathBuf) -> Self {
        let config = TmuxConfig::default();
        TmuxExecutor {
            tmux: Tmux {
                bin: tmux_binary,
                socket: socket_dir.join("tmux.sock"),
                timeout: config.command_timeout,
            },
            socket_dir,
            config,
            available: OnceLock::new(),
        }
    }

    pub fn with_config(mut self, config: TmuxConfig) -> Self {
        self.tmux.timeout = config.command_timeout;
        self.config = config;
        self
    }

    pub fn config(&self) -> &TmuxConfig {
        &self.config
    }

    /// The server's socket (`tmux -S <this>` reaches the broker's sessions by hand).
    pub fn socket_path(&self) -> &Path {
        self.tmux.socket()
    }

    /// Whether the tmux binary runs and is at least 3.0 (`new-session -e` needs it). Checked
    /// once and remembered.
    pub fn available(&self) -> bool {
        *self.available.get_or_init(|| {
            std::process::Command::new(&self.tmux.bin)
                .arg("-V")
                .env_clear()
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| parse_version(&String::from_utf8_lossy(&o.stdout)))
                .is_some_and(|v| v >= (3, 0))
        })
    }

    /// Whether the agent has a session (alive or with a dead pane).
    pub async fn has_session(&self, agent_id: &str) -> bool {
        self.pane_info(&session_name(agent_id)).await.is_some()
    }

    /// Ends the agent's session: the pane's whole process group (SIGTERM, grace, SIGKILL), then
    /// the session itself. Nothing happens if there is none.
    pub async fn end_session(&self, agent_id: &str) {
        let name = session_name(agent_id);
        let pane = self.pane_info(&name).await;
        self.destroy(&name, pane.as_ref(), self.config.end_grace)
            .await;
    }

    /// Ends every session and the server, and removes the socket.
    pub async fn kill_server(&self) {
        if let Ok(out) = self
            .tmux
            .run(&["list-panes", "-a", "-F", "#{pane_pid}"])
            .await
        {
            let grace = self.config.end_grace;
            let tasks: Vec<_> = out
                .lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
                .map(|pid| tokio::spawn(process::terminate_group(pid, grace)))
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        }
        let _ = self.tmux.run(&["kill-server"]).await;
        let _ = std::fs::remove_file(self.tmux.socket());
    }

    /// Runs one prompt and returns the same result type as `run_headless`.
    pub async fn run(
        &self,
        req: TmuxRequest,
        limits: Limits,
        cancel: CancellationToken,
        events: mpsc::UnboundedSender<ExecEvent>,
    ) -> RunResult {
        self.run_detailed(req, limits, cancel, events).await.result
    }

    /// [`run`](Self::run), with the timings of the run's phases.
    pub async fn run_detailed(
        &self,
        req: TmuxRequest,
        limits: Limits,
        cancel: CancellationToken,
        events: mpsc::UnboundedSender<ExecEvent>,
    ) -> TmuxRun {
        let started = Instant::now();
        let mut timings = TmuxTimings::default();
        let fail = |outcome: OutcomeClass, msg: String, timings: TmuxTimings| TmuxRun {
            result: RunResult {
                outcome,
                parsed: ParsedOutcome {
                    class: Some(outcome),
                    error_message: Some(msg.clone()),
                    ..ParsedOutcome::default()
                },
                exit: ProcessExit::default(),
                stop: None,
                stderr_tail: String::new(),
                duration: started.elapsed(),
                peak_rss_bytes: 0,
                pid: None,
                spawn_error: Some(msg),
            },
            timings,
        };

        if let Err(msg) = self.preflight(&req) {
            return fail(OutcomeClass::SpawnError, msg, timings);
        }
        let name = session_name(&req.agent_id);
        let mut pane = self.pane_info(&name).await;
        if let Some(p) = pane.as_ref().filter(|p| p.dead) {
            // A CLI that died between runs leaves a dead pane; start afresh.
            self.destroy(&name, Some(p), limits.kill_grace).await;
            pane = None;
        }
        if pane.is_none() {
            if let Err(e) = self.create_session(&name, &req).await {
                return fail(
                    OutcomeClass::SpawnError,
                    format!("cannot start the tmux session: {e}"),
                    timings,
                );
            }
            timings.session_created = true;
            pane = self.pane_info(&name).await;
        }
        let Some(pane) = pane else {
            return fail(
                OutcomeClass::SpawnError,
                "the tmux session vanished right after it was started".into(),
                timings,
            );
        };
        let _ = events.send(ExecEvent::Started {
            pid: pane.pid,
            start_time: procfs::start_time(pane.pid),
            cli_pid: None,
        });
        if let Some(sid) = &req.claude_session_id {
            let _ = events.send(ExecEvent::Stream(StreamEvent::SessionId(sid.clone())));
        }

        let mut control = match ControlClient::attach(&self.tmux, &name, &pane.id) {
            Ok(c) => c,
            Err(e) => {
                return fail(
                    OutcomeClass::SpawnError,
                    format!("cannot attach a tmux control-mode client: {e}"),
                    timings,
                )
            }
        };
        let mut follower = self.follower(&req, limits.max_line_bytes);
        let mut tracker = transcript::TurnTracker::default();
        let death = process::wait_exit(pane.pid);
        tokio::pin!(death);

        let cli = req.cli;
        let cfg = &self.config;
        let prompt = req.prompt.replace("\r\n", "\n");
        let echo_lines = screen::echo_lines(&prompt);
        let deadline = started + limits.timeout;
        let startup_deadline = started + cfg.startup_timeout;
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let mut mem_tick = tokio::time::interval(limits.memory_sample_every);
        mem_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut peak_rss = 0u64;
        let mut last_activity = Instant::now();
        let mut tail: Vec<u8> = Vec::new();
        let mut phase = Phase::Starting;
        let mut phase_deadline: Option<Instant> = None;
        // The first screen check waits for the control client to be attached, so that no output
        // can fall between the check and the start of the notifications.
        let mut check_at: Option<Instant> = None;
        let mut attached = false;
        let attach_deadline = Instant::now() + Duration::from_secs(2);
        let mut start_line: i64 = 0;
        let mut parsed_events = Vec::new();

        let end = loop {
            let check_deadline = check_at.unwrap_or(far);
            let phase_dl = phase_deadline.unwrap_or(far);
            let inactivity_at = last_activity + limits.inactivity;
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break End::Stop(StopReason::Cancelled),
                _ = sleep_until(deadline) => break End::Stop(StopReason::Timeout),
                _ = sleep_until(inactivity_at) => break End::Stop(StopReason::Inactivity),
                _ = &mut death => break End::Died(process::zombie_exit(pane.pid)),
                _ = mem_tick.tick() => {
                    let rss = procfs::group_rss_bytes(pane.pid);
                    peak_rss = peak_rss.max(rss);
                    if limits.max_memory_bytes.is_some_and(|max| rss > max) {
                        break End::Stop(StopReason::MemoryLimit { rss_bytes: rss });
                    }
                }
                ev = control.events.recv() => match ev {
                    Some(ControlEvent::Attached) => {
                        if !attached {
                            attached = true;
                            check_at = Some(Instant::now());
                        }
                    }
                    Some(ControlEvent::Output { tail: t }) => {
                        let now = Instant::now();
                        last_activity = now;
                        tail.extend_from_slice(&t);
                        if tail.len() > control::TAIL_BYTES {
                            tail.drain(..tail.len() - control::TAIL_BYTES);
                        }
                        match phase {
                            Phase::Pasted => {
                                // The CLI has the paste; now submit it.
                                if let Err(e) = self.send_keys(&pane.id, &["Enter"]).await {
                                    break End::Unusable(e);
                                }
                                timings.submitted_after = Some(started.elapsed());
                                phase = Phase::Submitted { retried: false };
                                phase_deadline = Some(now + cfg.submit_ack_timeout);
                            }
                            Phase::Submitted { .. } => {
                                phase = Phase::Working;
                                phase_deadline = None;
                                check_at = Some(now + self.settle(cli, &tail));
                            }
                            Phase::Starting | Phase::Working => {
                                if attached {
                                    check_at = Some(now + self.settle(cli, &tail));
                                }
                            }
                        }
                    }
                    Some(ControlEvent::Exit) | None => break End::Died(None),
                },
                _ = follower_changed(&follower) => {
                    last_activity = Instant::now();
                    if let Some(f) = follower.as_mut() {
                        for line in f.read_lines() {
                            tracker.feed(&line, &mut parsed_events);
                        }
                    }
                    for ev in parsed_events.drain(..) {
                        let _ = events.send(ExecEvent::Stream(ev));
                    }
                    if tracker.seen_prompt && matches!(phase, Phase::Submitted { .. }) {
                        phase = Phase::Working;
                        phase_deadline = None;
                    }
                    if tracker.done {
                        let (class, error) = tracker.verdict();
                        break End::Answer {
                            class,
                            answer: tracker.answer(),
                            error,
                            signal: CompletionSignal::Transcript,
                        };
                    }
                }
                _ = sleep_until(attach_deadline), if !attached => {
                    // No attach notification: check anyway rather than wait for the deadline.
                    attached = true;
                    check_at = Some(Instant::now());
                }
                _ = sleep_until(check_deadline), if check_at.is_some() => {
                    check_at = None;
                    match phase {
                        Phase::Starting => {
                            let text = match self.capture(&pane.id, None).await {
                                Ok(t) => t,
                                Err(e) => break End::Unusable(e),
                            };
                            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
                            if screen::find_prompt(cli, &lines).is_some() {
                                timings.ready_after = Some(started.elapsed());
                                match self.paste(&pane.id, &prompt).await {
                                    Ok(line) => start_line = line,
                                    Err(e) => break End::Unusable(e),
                                }
                                phase = Phase::Pasted;
                                phase_deadline = Some(Instant::now() + cfg.paste_echo_timeout);
                            } else if let Some(s) = screen::first_run_screen(&text) {
                                if timings.first_run_screens.len() >= 5 {
                                    break End::Unusable(format!(
                                        "the first-run screen \"{}\" did not go away after it was answered",
                                        s.name
                                    ));
                                }
                                tracing::info!(session = %name, screen = s.name, "answering a first-run screen");
                                timings.first_run_screens.push(s.name);
                                if let Err(e) = self.send_keys(&pane.id, s.keys).await {
                                    break End::Unusable(e);
                                }
                                check_at = Some(Instant::now() + cfg.quiescence);
                            } else if Instant::now() >= startup_deadline {
                                break End::Unusable(format!(
                                    "the pane never showed the {} prompt within {} ms; it shows: {}",
                                    cli.as_str(),
                                    cfg.startup_timeout.as_millis(),
                                    last_lines(&text, 5)
                                ));
                            } else {
                                // Output reschedules the check; this only guards against a
                                // screen that changed while no notification could reach us.
                                check_at = Some((Instant::now() + Duration::from_secs(1)).min(startup_deadline));
                            }
                        }
                        Phase::Working if follower.is_none() => {
                            let text = match self.capture(&pane.id, Some(start_line)).await {
                                Ok(t) => t,
                                Err(e) => break End::Unusable(e),
                            };
                            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
                            if let Some(answer) = screen::extract_answer(cli, &lines, echo_lines) {
                                break End::Answer {
                                    class: OutcomeClass::Success,
                                    answer,
                                    error: None,
                                    signal: CompletionSignal::PromptAfterQuiet,
                                };
                            }
                        }
                        _ => {}
                    }
                }
                _ = sleep_until(phase_dl), if phase_deadline.is_some() => {
                    phase_deadline = None;
                    let now = Instant::now();
                    match phase {
                        Phase::Pasted => {
                            // No echo (a CLI that shows pastes lazily): submit anyway.
                            if let Err(e) = self.send_keys(&pane.id, &["Enter"]).await {
                                break End::Unusable(e);
                            }
                            timings.submitted_after = Some(started.elapsed());
                            phase = Phase::Submitted { retried: false };
                            phase_deadline = Some(now + cfg.submit_ack_timeout);
                        }
                        Phase::Submitted { retried: false } => {
                            tracing::warn!(session = %name, "no reaction to Enter; pressing it again");
                            if let Err(e) = self.send_keys(&pane.id, &["Enter"]).await {
                                break End::Unusable(e);
                            }
                            timings.submit_retried = true;
                            phase = Phase::Submitted { retried: true };
                            phase_deadline = Some(now + cfg.submit_ack_timeout);
                        }
                        Phase::Submitted { retried: true } => {
                            // Perhaps a silent CLI: keep waiting for the completion signal, which
                            // the timeouts bound.
                            tracing::warn!(session = %name, "no visible reaction to the submit");
                            phase = Phase::Working;
                            check_at = Some(now);
                        }
                        Phase::Starting | Phase::Working => {}
                    }
                }
            }
        };

        let mut exit = ProcessExit::default();
        let mut stderr_tail = String::new();
        let mut stop = None;
        let parsed;
        let outcome;
        match end {
            End::Answer {
                class,
                answer,
                error,
                signal,
            } => {
                timings.completed_after = Some(started.elapsed());
                timings.completed_at = Some(SystemTime::now());
                timings.signal = Some(signal);
                if signal == CompletionSignal::PromptAfterQuiet {
                    let _ = events.send(ExecEvent::Stream(StreamEvent::AssistantText {
                        text: answer.clone(),
                        partial: false,
                    }));
                    let _ = events.send(ExecEvent::Stream(StreamEvent::Final));
                }
                outcome = class;
                parsed = ParsedOutcome {
                    class: Some(class),
                    answer: Some(answer),
                    session_id: req.claude_session_id.clone(),
                    error_message: error,
                    malformed_lines: tracker.malformed,
                    ..ParsedOutcome::default()
                };
            }
            End::Died(known) => {
                let (status, text) = self.post_mortem(&name, &pane, known.is_some()).await;
                match known {
                    Some((code, signal)) => {
                        exit.code = code;
                        exit.signal = signal;
                    }
                    None => exit.code = status,
                }
                let status = exit.code;
                let class = screen::classify_failure(&text).unwrap_or(OutcomeClass::CliError);
                let status_text = status
                    .map(|s| format!(" with status {s}"))
                    .unwrap_or_default();
                let message = format!(
                    "the CLI exited inside tmux{status_text}: {}",
                    last_lines(&text, 3)
                );
                stderr_tail = last_lines(&text, 40);
                self.destroy(&name, Some(&pane), limits.kill_grace).await;
                outcome = class;
                parsed = ParsedOutcome {
                    class: Some(class),
                    session_id: req.claude_session_id.clone(),
                    error_message: Some(message),
                    malformed_lines: tracker.malformed,
                    ..ParsedOutcome::default()
                };
            }
            End::Stop(reason) => {
                stop = Some(reason);
                // Let the CLI see an ordinary interrupt first: Claude Code then records it in
                // the transcript, which keeps the resumed session coherent.
                let _ = self.send_keys(&pane.id, &["C-c"]).await;
                let grace_end = Instant::now() + cfg.interrupt_grace;
                loop {
                    tokio::select! {
                        _ = &mut death => break,
                        _ = sleep_until(grace_end) => break,
                        ev = control.events.recv() => {
                            if matches!(ev, None | Some(ControlEvent::Exit)) { break; }
                        }
                    }
                }
                if let Ok(text) = self.capture(&pane.id, None).await {
                    stderr_tail = last_lines(&text, 40);
                }
                self.destroy(&name, Some(&pane), limits.kill_grace).await;
                outcome = match reason {
                    StopReason::Cancelled => OutcomeClass::Cancelled,
                    StopReason::MemoryLimit { .. } => OutcomeClass::ResourceLimit,
                    _ => OutcomeClass::Timeout,
                };
                parsed = ParsedOutcome {
                    session_id: req.claude_session_id.clone(),
                    malformed_lines: tracker.malformed,
                    ..ParsedOutcome::default()
                };
            }
            End::Unusable(message) => {
                if let Ok(text) = self.capture(&pane.id, None).await {
                    stderr_tail = last_lines(&text, 40);
                }
                self.destroy(&name, Some(&pane), limits.kill_grace).await;
                outcome = OutcomeClass::CliError;
                parsed = ParsedOutcome {
                    class: Some(OutcomeClass::CliError),
                    error_message: Some(message),
                    ..ParsedOutcome::default()
                };
            }
        }
        drop(control);
        TmuxRun {
            result: RunResult {
                outcome,
                parsed,
                exit,
                stop,
                stderr_tail,
                duration: started.elapsed(),
                peak_rss_bytes: peak_rss,
                pid: Some(pane.pid),
                spawn_error: None,
            },
            timings,
        }
    }

    /// Checks what can be checked before tmux is involved, with the same messages as headless.
    fn preflight(&self, req: &TmuxRequest) -> Result<(), String> {
        if !self.available() {
            return Err(format!(
                "tmux ({}) is not available or older than 3.0",
                self.tmux.bin.display()
            ));
        }
        if !req.cwd.is_dir() {
            return Err(format!(
                "working directory {} does not exist",
                req.cwd.display()
            ));
        }
        let program = req.program.to_string_lossy();
        if program.contains('/') && !is_executable(&req.program) {
            return Err(format!("binary {program} not found"));
        }
        let socket_len = self.tmux.socket().as_os_str().len();
        if socket_len > MAX_SOCKET_PATH {
            return Err(format!(
                "tmux socket path {} is too long ({socket_len} bytes; unix sockets allow about {MAX_SOCKET_PATH})",
                self.tmux.socket().display()
            ));
        }
        create_private_dir(&self.socket_dir)
            .map_err(|e| format!("cannot create {}: {e}", self.socket_dir.display()))
    }

    /// Starts the session with the CLI. The commands go through `source-file -` so the
    /// environment (API keys included) is read from the client's stdin, never from an argv.
    async fn create_session(&self, name: &str, req: &TmuxRequest) -> Result<(), String> {
        let cfg = &self.config;
        let cwd = std::fs::canonicalize(&req.cwd).unwrap_or_else(|_| req.cwd.clone());
        // Server-wide options first, so they hold from the pane's first instant: a CLI that dies
        // at once must still leave its pane (remain-on-exit), and the answer may be long
        // (history-limit applies to panes created afterwards). The window keeps the size given
        // here because control-mode clients do not take part in sizing; `window-size manual`
        // would say so explicitly but crashes tmux 3.3a together with `new-session -x -y`.
        let mut script = format!(
            "set-option -g history-limit {}\nset-option -g remain-on-exit on\n\
             set-option -g status off\n",
            cfg.history_limit
        );
        let mut cmd = format!(
            "new-session -d -s {} -x {} -y {} -c {}",
            quote(name),
            cfg.width,
            cfg.height,
            quote(&escape_format(&cwd.to_string_lossy()))
        );
        for (k, v) in &req.env {
            if k.is_empty() || k.contains('=') {
                continue;
            }
            cmd.push_str(" -e ");
            cmd.push_str(&quote(&format!("{k}={v}")));
        }
        cmd.push_str(" --");
        let program = req.program.to_string_lossy().into_owned();
        let argv: Vec<String> = if req.args.is_empty() {
            // With a single argument tmux runs it through `sh -c`, which would split a path with
            // spaces; this form execs the program directly (keeping the pane pid) in all cases.
            vec!["/bin/sh".into(), "-c".into(), "exec \"$0\"".into(), program]
        } else {
            std::iter::once(program)
                .chain(req.args.iter().cloned())
                .collect()
        };
        for a in &argv {
            cmd.push(' ');
            cmd.push_str(&quote(a));
        }
        script.push_str(&cmd);
        script.push('\n');
        match self
            .tmux
            .run_with_stdin(
                &["start-server", ";", "source-file", "-"],
                Some(script.as_bytes()),
            )
            .await
        {
            Ok(_) => Ok(()),
            // Another caller started it first; it is the same agent's session.
            Err(client::TmuxError::Failed(e)) if e.contains("duplicate session") => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn pane_info(&self, name: &str) -> Option<PaneInfo> {
        let out = self
            .tmux
            .run(&[
                "display-message",
                "-p",
                "-t",
                &format!("={name}:"),
                "#{pane_id} #{pane_pid} #{pane_dead} #{pane_dead_status}",
            ])
            .await
            .ok()?;
        let f: Vec<&str> = out.split_whitespace().collect();
        // pane_dead_status is empty for a live pane, so the line has 3 or 4 fields.
        let (id, pid, dead) = (f.first()?, f.get(1)?, f.get(2)?);
        let dead = *dead == "1";
        let status = if f.len() >= 4 {
            f[3].parse().ok()
        } else {
            None
        };
        Some(PaneInfo {
            id: (*id).to_owned(),
            pid: pid.parse().ok()?,
            dead,
            dead_status: if dead { status } else { None },
        })
    }

    /// The screen (`from = None`) or everything from the absolute line `from` (history lines
    /// counted), with wrapped lines joined.
    async fn capture(&self, pane_id: &str, from: Option<i64>) -> Result<String, String> {
        let start = match from {
            None => None,
            Some(abs) => {
                let history = self
                    .tmux
                    .run(&["display-message", "-p", "-t", pane_id, "#{history_size}"])
                    .await
                    .map_err(|e| e.to_string())?
                    .trim()
                    .parse::<i64>()
                    .unwrap_or(0);
                let rel = abs - history;
                // If the line scrolled out of the history, take all that is left.
                Some(if rel < -history {
                    "-".to_owned()
                } else {
                    rel.to_string()
                })
            }
        };
        let mut args = vec!["capture-pane", "-p", "-J", "-t", pane_id];
        if let Some(s) = start.as_deref() {
            args.extend(["-S", s]);
        }
        self.tmux.run(&args).await.map_err(|e| e.to_string())
    }

    /// Pastes the prompt (bracketed) and returns the absolute line where its echo starts.
    async fn paste(&self, pane_id: &str, prompt: &str) -> Result<i64, String> {
        let out = self
            .tmux
            .run(&[
                "display-message",
                "-p",
                "-t",
                pane_id,
                "#{history_size} #{cursor_y}",
            ])
            .await
            .map_err(|e| e.to_string())?;
        let mut f = out
            .split_whitespace()
            .map(|s| s.parse::<i64>().unwrap_or(0));
        let line = f.next().unwrap_or(0) + f.next().unwrap_or(0);
        let buffer = format!(
            "kokino-{}-{}",
            std::process::id(),
            BUFFER_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        self.tmux
            .run_with_stdin(
                &[
                    "load-buffer",
                    "-b",
                    &buffer,
                    "-",
                    ";",
                    "paste-buffer",
                    "-p",
                    "-d",
                    "-b",
                    &buffer,
                    "-t",
                    pane_id,
                ],
                Some(prompt.as_bytes()),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(line)
    }

    async fn send_keys(&self, pane_id: &str, keys: &[&str]) -> Result<(), String> {
        let mut args = vec!["send-keys", "-t", pane_id];
        args.extend_from_slice(keys);
        self.tmux
            .run(&args)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The exit status and last screen of a pane whose process exited. tmux learns of the exit
    /// a moment after the kernel does: it marks the pane dead when the pty has drained (which is
    /// when the last output is on the screen), and records the status when it reaps the process,
    /// in either order. So wait, briefly and boundedly, for the pane to be dead, and for the
    /// status too unless the caller already has it (`status_known`). A CLI killed by a signal
    /// never gets a status from tmux 3.3, so a dead pane without one is only waited for briefly.
    async fn post_mortem(
        &self,
        name: &str,
        pane: &PaneInfo,
        status_known: bool,
    ) -> (Option<i32>, String) {
        let until = Instant::now() + Duration::from_secs(1);
        let mut dead_since: Option<Instant> = None;
        let mut status = None;
        while Instant::now() < until {
            match self.pane_info(name).await {
                Some(p) if p.dead && (status_known || p.dead_status.is_some()) => {
                    status = p.dead_status;
                    break;
                }
                Some(p) if p.dead => {
                    let since = *dead_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_millis(300) {
                        break;
                    }
                }
                Some(_) => {}
                None => break,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = self.capture(&pane.id, None).await.unwrap_or_default();
        (status, text)
    }

    /// Kills the pane's process group and the session.
    async fn destroy(&self, name: &str, pane: Option<&PaneInfo>, grace: Duration) {
        if let Some(p) = pane {
            process::terminate_group(p.pid, grace).await;
        }
        let _ = self
            .tmux
            .run(&["kill-session", "-t", &format!("={name}")])
            .await;
    }

    /// How long to wait for quiet after output: short when the output ended with the prompt.
    fn settle(&self, cli: CliType, tail: &[u8]) -> Duration {
        let suffix = screen::prompt_output_suffix(cli);
        if tail.ends_with(suffix) || tail.ends_with(trim_ascii_end(suffix)) {
            self.config.prompt_settle
        } else {
            self.config.quiescence
        }
    }

    /// The transcript follower for a Claude Code run with a session id and a HOME.
    fn follower(&self, req: &TmuxRequest, max_line: usize) -> Option<transcript::Follower> {
        if req.cli != CliType::ClaudeCode {
            return None;
        }
        let sid = req.claude_session_id.as_deref()?;
        let home = req.env.get("HOME").filter(|h| !h.is_empty())?;
        let cwd = std::fs::canonicalize(&req.cwd).unwrap_or_else(|_| req.cwd.clone());
        let path = transcript_path(Path::new(home), &cwd, sid);
        match transcript::Follower::new(path.clone(), max_line) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e,
                    "cannot follow the claude transcript; falling back to the screen");
                None
            }
        }
    }
}

async fn follower_changed(f: &Option<transcript::Follower>) {
    match f {
        Some(f) => f.changed().await,
        None => std::future::pending().await,
    }
}

fn trim_ascii_end(b: &[u8]) -> &[u8] {
    let mut end = b.len();
    while end > 0 && b[end - 1] == b' ' {
        end -= 1;
    }
    &b[..end]
}

/// The last `n` non-blank lines, joined with ` | ` for a one-line message or `\n` for a tail.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(n);
    let sep = if n <= 5 { " | " } else { "\n" };
    lines[start..].join(sep)
}

/// `tmux 3.3a` → (3, 3); `tmux next-3.4` → (3, 4).
fn parse_version(s: &str) -> Option<(u32, u32)> {
    let v = s.split_whitespace().nth(1)?;
    let v = v.trim_start_matches(|c: char| !c.is_ascii_digit());
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()
        .unwrap_or("0")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().unwrap_or(0)))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Creates the socket directory, readable by its owner only: anyone who can reach the socket
/// controls every agent's CLI. An existing directory is the caller's and is left as it is.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("tmux 3.3a"), Some((3, 3)));
        assert_eq!(parse_version("tmux next-3.5"), Some((3, 5)));
        assert_eq!(parse_version("tmux 2.9"), Some((2, 9)));
        assert_eq!(parse_version("nonsense"), None);
    }

    #[test]
    fn claude_args() {
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
    }
}
