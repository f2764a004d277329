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
//! * **What the CLI looks like is not known here.** Every CLI-specific decision (the arguments,
//!   whether the screen shows the prompt or a first-run screen, where the answer is, what a dead
//!   pane's last words mean, where the CLI records its session) is asked of the request's
//!   [`Tui`] profile (`kokino_cli::tui`), so this module holds tmux mechanics only.
//! * **Completion, event-driven.** When the profile names a session record (Claude Code's
//!   transcript, for a known session id), the file is followed with inotify and the turn ends
//!   when the profile's [`kokino_cli::tui::TranscriptParser`] reads the end of the turn; the
//!   answer is read from the same file. Otherwise a control-mode client
//!   (`tmux -C attach`) pushes a notification for every burst of output; once the pane has been
//!   quiet for [`TmuxConfig::quiescence`] (or for the shorter [`TmuxConfig::prompt_settle`] when
//!   the output ended with the CLI's prompt), one `capture-pane` confirms that the prompt is back
//!   below the echoed prompt, and the answer is the text between the two.
//! * **Death.** The pane process is watched with a pidfd, so a CLI that exits is noticed at once
//!   (outcome `cli_error`, or `auth_error` / `rate_limited` when its last words say so).
//! * **Stopping.** Timeout, inactivity, memory limit and cancel send `C-c` (letting the CLI record
//!   the interruption), then SIGTERM, a grace period and SIGKILL to the pane's process group, and
//!   kill the session. The next run starts a fresh session, which the caller resumes with
//!   [`Tui::interactive_args`].
//!
//! [`TmuxExecutor::run_detailed`] also returns [`TmuxTimings`], from which a benchmark reads how
//! long after the CLI finished the executor noticed.

mod client;
mod control;
mod pane;
mod prepare;
mod process;
mod run;
mod transcript;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use kokino_cli::tui::Tui;
use kokino_cli::{ParsedOutcome, ProcessExit, StreamEvent};
use kokino_core::OutcomeClass;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::headless::{ExecEvent, Limits, RunResult};
use crate::procfs;
use crate::supervisor::SupervisorSpec;
pub use client::session_name;
use client::Tmux;
use control::ControlClient;
use pane::{parse_version, PaneInfo};
use run::{RunContext, Sources, Transcript, TurnRun};

/// Tuning of the tmux executor. The defaults suit the real CLIs; tests shorten some of them.
#[derive(Debug, Clone)]
pub struct TmuxConfig {
    /// Pane size. Wide enough that answers rarely wrap (wrapped lines are joined anyway).
    pub width: u16,
    /// Pane height; it only bounds the screen read while the session starts.
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
    /// The agent's id; it names the agent's tmux session ([`session_name`]).
    pub agent_id: String,
    /// What the CLI's TUI looks like (`kokino_cli::tui_for(cli)` for the four known CLIs).
    pub tui: Arc<dyn Tui>,
    /// The CLI's binary.
    pub program: PathBuf,
    /// Interactive arguments, used only when the session has to be started (see
    /// [`Tui::interactive_args`]); a reused session keeps the CLI it has.
    pub args: Vec<String>,
    /// The complete child environment (`kokino_cli::child_env`).
    pub env: BTreeMap<String, String>,
    /// The CLI's working directory.
    pub cwd: PathBuf,
    /// The prompt, pasted as it is (bracketed, so its newlines do not submit it early).
    pub prompt: String,
    /// The CLI's session id when the caller knows it before the run (the one given to Claude
    /// Code with `--session-id`/`--resume`). It is reported as the run's session id, and lets
    /// the profile find the CLI's session record, the completion signal; that also needs `HOME`
    /// in `env`.
    pub session_id: Option<String>,
}

/// Which signal ended the turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompletionSignal {
    /// The CLI's session record (Claude Code's transcript) showed the end of the turn.
    Transcript,
    /// The pane went quiet and showed the prompt again.
    PromptAfterQuiet,
}

/// When things happened during a run, measured from the start of [`TmuxExecutor::run_detailed`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
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
    /// Which signal ended the turn, when one did.
    pub signal: Option<CompletionSignal>,
}

/// A run's result and its timings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TmuxRun {
    /// The same result a headless run returns.
    pub result: RunResult,
    /// When the run's steps happened.
    pub timings: TmuxTimings,
}

/// Runs agent CLIs in tmux sessions of one private tmux server.
#[derive(Debug)]
pub struct TmuxExecutor {
    tmux: Tmux,
    socket_dir: PathBuf,
    config: TmuxConfig,
    available: OnceLock<bool>,
    /// When set, each pane's program runs under a supervisor that watches this process, so a
    /// broker killed with SIGKILL leaves no CLI behind in its tmux server.
    supervisor: Option<SupervisorSpec>,
    /// Held by the one caller that may start the server (see [`TmuxExecutor::ensure_server`]).
    server_start: tokio::sync::Mutex<()>,
    /// Whether this executor started (or found) a server that keeps running when empty.
    server_up: AtomicBool,
    /// Held while a session is created or killed and while a control-mode client attaches.
    ///
    /// tmux 3.3a's server crashes (SIGSEGV, taking every session with it) when control-mode
    /// clients attach while other sessions are being created: with 16 concurrent
    /// `new-session` + `-C attach` pairs on one server it died in most rounds, and never once
    /// these steps were done one at a time. Each step takes milliseconds, so serializing them
    /// costs little even with many agents starting at once.
    structure: tokio::sync::Mutex<()>,
}

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
            supervisor: None,
            server_start: tokio::sync::Mutex::new(()),
            server_up: AtomicBool::new(false),
            structure: tokio::sync::Mutex::new(()),
        }
    }

    /// The same executor with each pane's program started under `supervisor` (`None`: the
    /// program runs directly in the pane).
    ///
    /// Panes are started by the tmux server, which cannot hand them a pipe of ours, so the
    /// supervisor watches this process's pid and start time instead of a lifeline (within about
    /// 100 ms of its death it kills the pane's group). No claim file is written: a claim could
    /// only name a supervisor whose broker had already died, which that supervisor sees itself
    /// before it starts the CLI, and the next broker stops the old tmux server anyway. No
    /// heartbeat deadline either: a session outlives its runs and idles between them, when no
    /// heartbeat comes, and a deadline would kill every idle CLI.
    pub fn with_supervisor(mut self, supervisor: Option<SupervisorSpec>) -> Self {
        self.supervisor = supervisor.map(|s| s.with_heartbeat(None));
        self
    }

    /// The same executor with `config` instead of the defaults.
    pub fn with_config(mut self, config: TmuxConfig) -> Self {
        self.tmux.timeout = config.command_timeout;
        self.config = config;
        self
    }

    /// The executor's tuning.
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
        self.server_up.store(false, Ordering::SeqCst);
    }

    /// Makes sure the private server runs and stays up when its last session closes.
    ///
    /// Only this call ever starts the server, and one caller at a time: when several tmux
    /// clients find no server at once, each may start its own (tmux's start-up lock does not
    /// cover every interleaving), the last one's socket wins, and sessions created on the
    /// others vanish with their server. And the server is told `exit-empty off` in the very
    /// command that starts it, before any session exists: otherwise it exits whenever its last
    /// session is killed, and a run starting at that moment talks to a dying server ("server
    /// exited unexpectedly", "no server running").
    async fn ensure_server(&self) -> Result<(), client::TmuxError> {
        if self.server_up.load(Ordering::SeqCst) {
            return Ok(());
        }
        let _one = self.server_start.lock().await;
        if self.server_up.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.tmux
            .run(&["start-server", ";", "set-option", "-s", "exit-empty", "off"])
            .await?;
        self.server_up.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The server this executor relied on is gone (killed by hand, or crashed): the next
    /// [`TmuxExecutor::ensure_server`] starts a new one.
    fn server_lost(&self) {
        self.server_up.store(false, Ordering::SeqCst);
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

    /// Runs one prompt and returns the result with its timings.
    pub async fn run_detailed(
        &self,
        req: TmuxRequest,
        limits: Limits,
        cancel: CancellationToken,
        events: mpsc::UnboundedSender<ExecEvent>,
    ) -> TmuxRun {
        let started = Instant::now();
        let mut timings = TmuxTimings::default();
        let name = session_name(&req.agent_id);
        let pane = match self.open_session(&name, &req, &limits, &mut timings).await {
            Ok(pane) => pane,
            Err(msg) => return spawn_failure(started, msg, timings),
        };
        // Under a supervisor the pane pid is the supervisor's; the CLI is its one child.
        let cli_pid = match &self.supervisor {
            Some(_) => crate::headless::find_child(pane.pid).await,
            None => None,
        };
        let _ = events.send(ExecEvent::Started {
            pid: pane.pid,
            start_time: procfs::start_time(pane.pid),
            cli_pid,
            watchdog: self.supervisor.as_ref().map(|_| pane.pid),
        });
        if let Some(sid) = &req.session_id {
            let _ = events.send(ExecEvent::Stream(StreamEvent::SessionId(sid.clone())));
        }
        let control = {
            let _one = self.structure.lock().await;
            match ControlClient::attach(&self.tmux, &name, &pane.id) {
                Ok(mut c) => {
                    c.wait_attached(Duration::from_secs(2)).await;
                    c
                }
                Err(e) => {
                    let msg = format!("cannot attach a tmux control-mode client: {e}");
                    return spawn_failure(started, msg, timings);
                }
            }
        };
        let mut mem_tick = tokio::time::interval(limits.memory_sample_every);
        mem_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut sources = Sources {
            control,
            death: Box::pin(process::wait_exit(pane.pid)),
            mem_tick,
            transcript: Transcript::open(&req, limits.max_line_bytes),
            cancel,
        };
        let ctx = RunContext {
            exec: self,
            req: &req,
            limits: &limits,
            events: &events,
        };
        let mut run = TurnRun::new(ctx, name, pane, started, timings);
        let end = run.wait(&mut sources).await;
        run.finish(end, sources).await
    }

    /// The agent's live pane: the existing session's, or a new session's (a dead pane left by a
    /// CLI that died between runs is cleared first).
    async fn open_session(
        &self,
        name: &str,
        req: &TmuxRequest,
        limits: &Limits,
        timings: &mut TmuxTimings,
    ) -> Result<PaneInfo, String> {
        self.preflight(req)?;
        let mut pane = self.pane_info(name).await;
        if let Some(p) = pane.as_ref().filter(|p| p.dead) {
            self.destroy(name, Some(p), limits.kill_grace).await;
            pane = None;
        }
        if pane.is_none() {
            prepare::prepare_config(req);
            self.create_session(name, req)
                .await
                .map_err(|e| format!("cannot start the tmux session: {e}"))?;
            timings.session_created = true;
            pane = self.pane_info(name).await;
        }
        pane.ok_or_else(|| "the tmux session vanished right after it was started".to_owned())
    }
}

/// The result of a run that never reached a CLI: a spawn error, like headless.
fn spawn_failure(started: Instant, msg: String, timings: TmuxTimings) -> TmuxRun {
    let outcome = OutcomeClass::SpawnError;
    TmuxRun {
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
    }
}
