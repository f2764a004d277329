//! One headless CLI run, from spawn to reap.

use std::collections::{BTreeMap, VecDeque};
use std::ops::ControlFlow;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use kokino_cli::{ParsedOutcome, ProcessExit, StreamEvent, StreamParser};
use kokino_core::{LineSink, OutcomeClass, OutputStream};
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::group::{group_alive, signal_group, terminate_group, Proc};
use crate::lines::{BoundedLines, Line};
use crate::procfs;

/// See [`HeadlessCommand::stdin_gate`]: `None` until decided, then whether to write the prompt.
pub type StdinGate = tokio::sync::watch::Receiver<Option<bool>>;

/// A fully resolved command: the executor adds nothing to it but the process group and pipes.
#[derive(Debug, Clone)]
pub struct HeadlessCommand {
    /// The CLI's binary (see [`crate::resolve_binary`]).
    pub program: PathBuf,
    /// The arguments after the binary (`kokino_cli::build_args`).
    pub args: Vec<String>,
    /// The complete child environment; the broker's own environment is not inherited beyond it.
    pub env: BTreeMap<String, String>,
    /// The working directory; the caller's when `None`.
    pub cwd: Option<PathBuf>,
    /// Written to the CLI's stdin, which is then closed. Prompts never go in argv.
    pub stdin: Vec<u8>,
    /// When set, `stdin` is written only once this says `Some(true)`: the CLI can start (load,
    /// resume its session) while the caller finishes what must come before the CLI acts on the
    /// prompt, such as storing it. `Some(false)`, or the sender dropped first, means the prompt
    /// is never written; the caller then stops the run (its cancellation token), and stdin stays
    /// open until the sender is dropped, so that the CLI never reads an empty prompt.
    pub stdin_gate: Option<StdinGate>,
    /// When set, the CLI runs under a supervisor that kills its whole group when the broker
    /// dies, however it dies (and, with a heartbeat deadline, when the broker stalls); see
    /// [`crate::supervisor`]. The broker always sets it; embedders may leave it out.
    pub supervisor: Option<crate::supervisor::SupervisorSpec>,
}

/// The watchdogs and ceilings of one run (behavior.md, "Cancellation, timeouts, process
/// supervision").
#[derive(Debug, Clone)]
pub struct Limits {
    /// The whole run's ceiling (outcome `timeout`).
    pub timeout: Duration,
    /// The longest silence on stdout (or in the pane) before the run is stopped.
    pub inactivity: Duration,
    /// How long a CLI may linger after its final event before it is stopped (the answer stands).
    pub post_result_grace: Duration,
    /// Between SIGTERM and SIGKILL to the process group.
    pub kill_grace: Duration,
    /// The resident memory of the whole process group above which the run is stopped
    /// (outcome `resource_limit`); `None` for no limit.
    pub max_memory_bytes: Option<u64>,
    /// How often the group's memory and CPU are sampled.
    pub memory_sample_every: Duration,
    /// The longest stdout line kept; longer lines are skipped, counted as malformed.
    pub max_line_bytes: usize,
    /// Stop the run at the CLI's first rate-limit signal (a stream event or a stderr line) and
    /// answer `rate_limited`, instead of holding the agent through the CLI's own retry loop
    /// (gemini retries a 429 for minutes). `false` lets the CLI retry on its own (an agent's
    /// `rateLimit: "cli"`). Headless runs only: the tmux executor reads no stderr.
    pub stop_on_rate_limit: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_millis(300_000),
            inactivity: Duration::from_millis(600_000),
            post_result_grace: Duration::from_millis(2_000),
            kill_grace: Duration::from_millis(5_000),
            max_memory_bytes: Some(2048 * 1024 * 1024),
            memory_sample_every: Duration::from_millis(1_000),
            // A 10 MB answer arrives as one JSON line of a little more than 10 MB; anything longer
            // than this ceiling is tool output we would only throw away after parsing.
            max_line_bytes: 32 * 1024 * 1024,
            stop_on_rate_limit: true,
        }
    }
}

/// Why the executor stopped the process itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The caller's cancellation token fired.
    Cancelled,
    /// [`Limits::timeout`] passed.
    Timeout,
    /// Nothing was heard from the CLI for [`Limits::inactivity`].
    Inactivity,
    /// The final event was read but the CLI did not exit within the post-result grace. The answer
    /// stands.
    PostResultGrace,
    /// The process group's resident memory went over [`Limits::max_memory_bytes`].
    MemoryLimit {
        /// The resident memory that was measured.
        rss_bytes: u64,
    },
    /// The CLI reported a rate limit and [`Limits::stop_on_rate_limit`] is set: the outcome is
    /// `rate_limited`, not a failure.
    RateLimited,
}

/// What happened during a run, as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    /// The CLI's process is running.
    Started {
        /// The pid that leads the process group: the supervisor when there is one, else the
        /// CLI. Recovery kills the group from this pid and its start time.
        pid: i32,
        /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22), so that a
        /// later life can tell the same process from a reused pid.
        start_time: Option<i64>,
        /// The CLI itself when it runs under a supervisor (found within a few milliseconds of
        /// the spawn); `None` when `pid` is the CLI.
        cli_pid: Option<i32>,
        /// The process that watches the group for the broker and takes its heartbeats: the
        /// supervisor (then `pid`), or the spawner shared by the broker's runs. `None` for a
        /// CLI started without supervision.
        watchdog: Option<i32>,
    },
    /// Something the CLI's output meant, as its parser read it.
    Stream(StreamEvent),
    /// A supervision sample of the whole process group, taken every `memory_sample_every`.
    Sample {
        /// The group's resident memory.
        rss_bytes: u64,
        /// The group's CPU use since the previous sample, in percent of one core.
        cpu_percent: f64,
    },
}

/// How one run ended.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The run's outcome class: the parser's verdict, or the executor's when it stopped the run.
    pub outcome: OutcomeClass,
    /// What the parser made of the CLI's output (answer, session id, usage, error).
    pub parsed: ParsedOutcome,
    /// How the process ended.
    pub exit: ProcessExit,
    /// Why the executor stopped the process, when it did.
    pub stop: Option<StopReason>,
    /// The end of the CLI's stderr (in tmux mode, the pane's last lines).
    pub stderr_tail: String,
    /// From the start of the run to the end.
    pub duration: Duration,
    /// The highest resident memory of the process group that was sampled.
    pub peak_rss_bytes: u64,
    /// The CLI's pid, when it started.
    pub pid: Option<i32>,
    /// Set when the process could not be started at all.
    pub spawn_error: Option<String>,
}

impl RunResult {
    /// The best one-line description of a failure, for the `system` turn and the error body.
    pub fn error_message(&self) -> Option<String> {
        if let Some(e) = &self.spawn_error {
            return Some(e.clone());
        }
        match self.stop {
            Some(StopReason::Cancelled) => return Some("execution cancelled".into()),
            Some(StopReason::Timeout) => return Some("execution timeout".into()),
            Some(StopReason::Inactivity) => {
                return Some("no output from the CLI within the inactivity timeout".into())
            }
            Some(StopReason::MemoryLimit { rss_bytes }) => {
                return Some(format!(
                    "process group exceeded its memory limit ({} MB resident)",
                    rss_bytes / (1024 * 1024)
                ))
            }
            // The parser's words for the signal when it has them (`Attempt 1 failed with status
            // 429 …`); a parser that saw the signal always does.
            Some(StopReason::RateLimited) => {
                return Some(
                    self.parsed
                        .error_message
                        .clone()
                        .filter(|_| self.parsed.class == Some(OutcomeClass::RateLimited))
                        .unwrap_or_else(|| {
                            "the CLI reported a rate limit; stopped before its own retries".into()
                        }),
                )
            }
            _ => {}
        }
        if self.outcome == OutcomeClass::Success {
            return None;
        }
        self.parsed.error_message.clone().or_else(|| {
            Some(format!(
                "CLI failed (exit code {:?}, signal {:?})",
                self.exit.code, self.exit.signal
            ))
        })
    }
}

const STDERR_TAIL_BYTES: usize = 8 * 1024;
/// After the CLI exits, how long stdout may stay silent before we stop reading it. A grandchild
/// that inherited the pipe can keep it open forever; what the CLI itself wrote is already
/// buffered and arrives at once.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// Kills the process group if the run is abandoned half-way (the future dropped), so that even
/// a caller's bug cannot orphan a CLI.
struct GroupGuard {
    pgid: i32,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            signal_group(self.pgid, Signal::SIGKILL);
        }
    }
}

/// Runs one CLI to completion, within the limits, and says how it ended. Never panics on what
/// the CLI does, and never returns while a process of its group is still alive (short of the
/// kernel refusing SIGKILL).
pub async fn run_headless(
    cmd: HeadlessCommand,
    parser: Box<dyn StreamParser>,
    limits: Limits,
    cancel: CancellationToken,
    events: mpsc::UnboundedSender<ExecEvent>,
    log: Option<Box<dyn LineSink>>,
) -> RunResult {
    let started = Instant::now();
    let Spawned {
        mut child,
        io,
        pid,
        start_time,
        watchdog,
        claim,
        _lifeline,
    } = match spawn(&cmd).await {
        Ok(c) => c,
        Err(message) => return spawn_failure(started, message),
    };
    let mut guard = GroupGuard {
        pgid: pid,
        armed: true,
    };
    // The prompt goes in first (once its gate opens, if it has one): the pipe holds it until the
    // CLI reads it, so the CLI never waits for the broker's bookkeeping below.
    let mut pipes = Pipes::take(io, cmd.stdin, cmd.stdin_gate, limits.max_line_bytes);
    let start_time = start_time.or_else(|| procfs::start_time(pid));
    // Under a supervisor of its own (not the shared spawner), the group's leader is that
    // supervisor and the CLI is its child, found by looking.
    let own_supervisor = matches!(child, Proc::Local(_)) && watchdog.is_some();
    let cli_pid = if own_supervisor {
        find_child(pid).await
    } else {
        None
    };
    let _ = events.send(ExecEvent::Started {
        pid,
        start_time,
        cli_pid,
        watchdog,
    });
    let mut run = HeadlessRun {
        parser,
        limits: &limits,
        events: &events,
        log,
        pid,
        started,
        last_activity: Instant::now(),
        peak_rss: 0,
        last_cpu: None,
        stderr_tail: VecDeque::new(),
        stderr_tail_len: 0,
        stop: None,
        final_seen: false,
        child_status: None,
        drain_deadline: Instant::now(),
        oversized_lines: 0,
        retry_resets_at: None,
        watchdog_lost: false,
    };
    run.supervise(&mut child, &mut pipes, &cancel).await;
    let status = run
        .reap(&mut child, &mut pipes, watchdog.unwrap_or(pid))
        .await;
    guard.armed = false;
    drop(guard);
    // The group is empty: the claim has nothing left to protect.
    if let Some(c) = &claim {
        let _ = std::fs::remove_file(c);
    }
    run.finish(status, &mut pipes.stderr, own_supervisor).await
}

/// The broker's ends of a CLI's stdin, stdout and stderr.
struct Io {
    stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
}

/// A started CLI (or its supervisor) and what keeps the supervision in place.
struct Spawned {
    child: Proc,
    io: Io,
    /// The group's leader: the supervisor, or the CLI.
    pid: i32,
    /// The leader's start time, when the spawn already knows it.
    start_time: Option<i64>,
    /// See [`ExecEvent::Started`].
    watchdog: Option<i32>,
    /// The supervisor's claim file, removed once the group is gone.
    claim: Option<PathBuf>,
    /// The broker's end of the lifeline: it must stay open for as long as the run lasts.
    _lifeline: Option<std::os::fd::OwnedFd>,
}

/// The supervisor's child (the CLI), which it starts right after writing its claim: a few
/// milliseconds at most. `None` if it has not appeared within 200 ms, or if it has already come
/// and gone: a CLI that answers at once can exit before it is ever seen, since the prompt is
/// written before this search. The supervisor starts its reaper thread right after the CLI, so
/// a supervisor with a second thread and no child has already reaped its CLI, and one that has
/// ended did too; waiting for either would only add the full 200 ms to that execution.
pub(crate) async fn find_child(supervisor: i32) -> Option<i32> {
    let children = format!("/proc/{supervisor}/task/{supervisor}/children");
    let until = Instant::now() + Duration::from_millis(200);
    loop {
        let found = std::fs::read_to_string(&children)
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()));
        if found.is_some() || Instant::now() >= until {
            return found;
        }
        // Gone, a zombie (it ended before this search), or past its CLI's start.
        if procfs::live_thread_count(supervisor).is_none_or(|n| n > 1) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Starts the CLI (through the shared spawner, or under its supervisor, when there is one) in
/// its own process group, or says why it could not be started.
async fn spawn(cmd: &HeadlessCommand) -> Result<Spawned, String> {
    let not_found = || match &cmd.cwd {
        Some(cwd) if !cwd.is_dir() => format!("working directory {} does not exist", cwd.display()),
        _ => format!("binary {} not found", cmd.program.display()),
    };
    // Under a supervisor the spawn that can fail is the supervisor's own, so the two failures a
    // caller can fix (a missing binary, a missing working directory) are looked for first.
    if cmd.supervisor.is_some()
        && (cmd.cwd.as_ref().is_some_and(|c| !c.is_dir()) || !cmd.program.is_file())
    {
        return Err(not_found());
    }
    if let Some(spawner) = cmd.supervisor.as_ref().and_then(|s| s.spawner.as_ref()) {
        use crate::spawner::SpawnError;
        match spawner
            .spawn(&cmd.program, &cmd.args, &cmd.env, cmd.cwd.as_deref())
            .await
        {
            Ok(s) => {
                return Ok(Spawned {
                    pid: s.cli.pid,
                    start_time: Some(s.cli.start),
                    watchdog: Some(s.cli.watchdog()),
                    child: Proc::Remote(s.cli),
                    io: Io {
                        stdin: Some(Box::new(s.stdin)),
                        stdout: Some(Box::new(s.stdout)),
                        stderr: Some(Box::new(s.stderr)),
                    },
                    claim: None,
                    _lifeline: None,
                })
            }
            Err(SpawnError::Failed { errno, .. }) if errno == libc::ENOENT => {
                return Err(not_found())
            }
            Err(SpawnError::Failed { message, .. }) => return Err(message),
            // This run gets a supervisor of its own instead.
            Err(SpawnError::Unavailable(why)) => {
                tracing::warn!(%why, "the spawner cannot start this CLI; starting it under a supervisor")
            }
        }
    }
    let lifeline = match &cmd.supervisor {
        Some(_) => Some(
            crate::supervisor::Lifeline::new()
                .map_err(|e| format!("cannot create the supervisor's lifeline: {e}"))?,
        ),
        None => None,
    };
    let claim = cmd.supervisor.as_ref().and_then(|s| s.new_claim_path());
    let lifeline_fd = lifeline
        .as_ref()
        .map(|l| l.inheritable_read_fd())
        .transpose()
        .map_err(|e| format!("cannot pass the supervisor its lifeline: {e}"))?;
    let (program, args) = match &cmd.supervisor {
        Some(s) => s.wrap(&cmd.program, &cmd.args, lifeline_fd, claim.as_deref()),
        None => (cmd.program.clone(), cmd.args.clone()),
    };
    let mut command = Command::new(&program);
    command
        .args(&args)
        .env_clear()
        .envs(&cmd.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that one signal reaches the CLI, its tools and its MCP
        // servers, and so that a Ctrl-C in the broker's terminal does not reach the CLI directly.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &cmd.cwd {
        command.current_dir(cwd);
    }
    let mut child = command.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            not_found()
        } else {
            format!("cannot start {}: {e}", cmd.program.display())
        }
    })?;
    let io = Io {
        stdin: child
            .stdin
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncWrite + Send + Unpin>),
        stdout: child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
        stderr: child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
    };
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    Ok(Spawned {
        child: Proc::Local(child),
        io,
        pid,
        start_time: None,
        watchdog: cmd.supervisor.as_ref().map(|_| pid),
        claim,
        // Only the write end stays with us; the supervisor has its own copy of the read end.
        _lifeline: lifeline.map(crate::supervisor::Lifeline::into_write_end),
    })
}

fn spawn_failure(started: Instant, message: String) -> RunResult {
    RunResult {
        outcome: OutcomeClass::SpawnError,
        parsed: ParsedOutcome::default(),
        exit: ProcessExit::default(),
        stop: None,
        stderr_tail: String::new(),
        duration: started.elapsed(),
        peak_rss_bytes: 0,
        pid: None,
        spawn_error: Some(message),
    }
}

/// The child's output, as the run reads it.
struct Pipes {
    /// `None` once stdout reached its end.
    stdout: Option<BoundedLines<Box<dyn AsyncRead + Send + Unpin>>>,
    /// stderr lines, read by their own task so that stderr can never block stdout.
    stderr: mpsc::Receiver<String>,
}

impl Pipes {
    /// Takes the child's pipes: the prompt goes in from its own task (a large prompt must not
    /// deadlock against a CLI that writes before it has read everything), stderr is read by
    /// another, stdout by the run itself.
    fn take(io: Io, input: Vec<u8>, gate: Option<StdinGate>, max_line_bytes: usize) -> Pipes {
        if let Some(mut stdin) = io.stdin {
            tokio::spawn(async move {
                if let Some(gate) = gate {
                    if !gate_opens(gate).await {
                        return;
                    }
                }
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            });
        }
        let (stderr_tx, stderr) = mpsc::channel::<String>(64);
        if let Some(err) = io.stderr {
            tokio::spawn(async move {
                let mut lines = BoundedLines::new(err, 64 * 1024);
                while let Ok(Some(line)) = lines.next_line().await {
                    let text = match line {
                        Line::Text(t) => t,
                        Line::Oversized(n) => format!("<{n} bytes of stderr dropped>"),
                    };
                    if stderr_tx.send(text).await.is_err() {
                        break;
                    }
                }
            });
        }
        let stdout = io.stdout.map(|s| BoundedLines::new(s, max_line_bytes));
        Pipes { stdout, stderr }
    }
}

/// Waits for the gate's decision: `true` to write the prompt. On `false` it keeps waiting until
/// the sender is gone (the caller stops the run meanwhile), so that whoever holds stdin keeps it
/// open: a CLI must not take a closed, empty stdin for its prompt.
async fn gate_opens(mut gate: StdinGate) -> bool {
    let open = gate
        .wait_for(Option::is_some)
        .await
        .is_ok_and(|decided| *decided == Some(true));
    if !open {
        while gate.changed().await.is_ok() {}
    }
    open
}

/// Something that woke the supervising run.
enum Wake {
    Cancelled,
    Timeout,
    Inactive,
    Sample,
    Exited(std::io::Result<ExitStatus>),
    /// The CLI exited and stdout stayed silent for [`DRAIN_AFTER_EXIT`].
    Drained,
    Stdout(Option<Line>),
    Stderr(String),
}

/// The state of one headless run while the CLI runs.
struct HeadlessRun<'a> {
    parser: Box<dyn StreamParser>,
    limits: &'a Limits,
    events: &'a mpsc::UnboundedSender<ExecEvent>,
    log: Option<Box<dyn LineSink>>,
    /// The CLI's pid, which is also its process group.
    pid: i32,
    started: Instant,
    last_activity: Instant,
    peak_rss: u64,
    /// The group's CPU ticks at the previous sample, and when it was taken.
    last_cpu: Option<(u64, Instant)>,
    stderr_tail: VecDeque<String>,
    stderr_tail_len: usize,
    stop: Option<StopReason>,
    final_seen: bool,
    child_status: Option<ExitStatus>,
    drain_deadline: Instant,
    oversized_lines: u64,
    /// When to try again, in epoch seconds, from the first rate-limit signal that named a
    /// delay: the parser has no clock, so the executor dates the delay when the line arrives.
    retry_resets_at: Option<i64>,
    /// The spawner ended before it reported the CLI's exit.
    watchdog_lost: bool,
}

impl HeadlessRun<'_> {
    /// Watches the CLI until its final event, its exit (and the drain of its stdout), or a
    /// reason to stop it.
    async fn supervise(&mut self, child: &mut Proc, pipes: &mut Pipes, cancel: &CancellationToken) {
        // The first sample comes one period after the start: a run that ends sooner gets one
        // cheap sample of its leader when the final event arrives instead of a procfs scan at
        // spawn.
        let every = self.limits.memory_sample_every;
        let mut mem_tick = tokio::time::interval_at(Instant::now() + every, every);
        mem_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let deadline = self.started + self.limits.timeout;
        loop {
            let wake = tokio::select! {
                biased;
                _ = cancel.cancelled() => Wake::Cancelled,
                _ = sleep_until(deadline) => Wake::Timeout,
                _ = sleep_until(self.last_activity + self.limits.inactivity) => Wake::Inactive,
                _ = mem_tick.tick() => Wake::Sample,
                status = child.wait(), if self.child_status.is_none() => Wake::Exited(status),
                _ = sleep_until(self.drain_deadline), if self.child_status.is_some() => Wake::Drained,
                line = next_stdout(&mut pipes.stdout), if pipes.stdout.is_some() => Wake::Stdout(line),
                Some(line) = pipes.stderr.recv() => Wake::Stderr(line),
            };
            let flow = match wake {
                Wake::Cancelled => self.stop_for(StopReason::Cancelled),
                Wake::Timeout => self.stop_for(StopReason::Timeout),
                Wake::Inactive => self.stop_for(StopReason::Inactivity),
                Wake::Sample => self.on_sample(),
                Wake::Exited(status) => self.on_exit(status, pipes.stdout.is_some()),
                Wake::Drained => ControlFlow::Break(()),
                Wake::Stdout(line) => self.on_stdout(line, pipes),
                Wake::Stderr(line) => {
                    self.last_activity = Instant::now();
                    self.on_stderr(line)
                }
            };
            if flow.is_break() {
                return;
            }
        }
    }

    fn stop_for(&mut self, reason: StopReason) -> ControlFlow<()> {
        self.stop = Some(reason);
        ControlFlow::Break(())
    }

    /// A supervision sample of the whole group; over the memory limit, the run stops.
    fn on_sample(&mut self) -> ControlFlow<()> {
        let rss = procfs::group_rss_bytes(self.pid);
        self.peak_rss = self.peak_rss.max(rss);
        let ticks = procfs::group_cpu_ticks(self.pid);
        let now = Instant::now();
        let cpu_percent = match self.last_cpu {
            Some((t, at)) if now > at => {
                let secs = ticks.saturating_sub(t) as f64 / procfs::ticks_per_second();
                100.0 * secs / (now - at).as_secs_f64()
            }
            _ => 0.0,
        };
        self.last_cpu = Some((ticks, now));
        let _ = self.events.send(ExecEvent::Sample {
            rss_bytes: rss,
            cpu_percent,
        });
        match self.limits.max_memory_bytes {
            Some(max) if rss > max => self.stop_for(StopReason::MemoryLimit { rss_bytes: rss }),
            _ => ControlFlow::Continue(()),
        }
    }

    /// The CLI exited: what it wrote is already in the pipe, so stdout gets a short drain.
    fn on_exit(
        &mut self,
        status: std::io::Result<ExitStatus>,
        stdout_open: bool,
    ) -> ControlFlow<()> {
        // An error here is a spawner that ended before its CLI: the CLI may still run, so it
        // counts as killed, and `reap` ends what is left of its group and of its daemons.
        self.watchdog_lost |= status.is_err();
        self.child_status = Some(status.unwrap_or_else(|_| ExitStatus::from_raw(libc::SIGKILL)));
        self.drain_deadline = Instant::now() + DRAIN_AFTER_EXIT;
        if stdout_open {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    }

    /// A stdout line goes through the parser; its final event ends the supervision.
    fn on_stdout(&mut self, line: Option<Line>, pipes: &mut Pipes) -> ControlFlow<()> {
        self.last_activity = Instant::now();
        if self.child_status.is_some() {
            self.drain_deadline = self.last_activity + DRAIN_AFTER_EXIT;
        }
        match line {
            Some(Line::Text(text)) => return self.on_stdout_text(&text),
            Some(Line::Oversized(n)) => {
                self.log_line(
                    OutputStream::Stdout,
                    &format!("<line of {n} bytes dropped: over the line limit>"),
                );
                self.oversized_lines += 1;
                tracing::warn!(
                    pid = self.pid,
                    bytes = n,
                    "dropped an oversized output line"
                );
                let _ = self.events.send(ExecEvent::Stream(StreamEvent::Malformed {
                    reason: format!("line of {n} bytes exceeds the line limit"),
                }));
            }
            None => {
                pipes.stdout = None;
                if self.child_status.is_some() {
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn on_stdout_text(&mut self, text: &str) -> ControlFlow<()> {
        // Short runs end before the first periodic sample: read the leader's memory (one small
        // procfs file) on its first line, while it surely lives, so every execution records a
        // peak.
        if self.peak_rss == 0 {
            self.peak_rss = procfs::rss_bytes(self.pid).unwrap_or(0);
        }
        self.log_line(OutputStream::Stdout, text);
        let mut parsed = Vec::new();
        self.parser.feed_line(text, &mut parsed);
        let mut rate_limited = false;
        for ev in parsed {
            self.final_seen |= ev == StreamEvent::Final;
            rate_limited |= self.forward(ev);
        }
        if self.final_seen {
            self.peak_rss = self.peak_rss.max(procfs::rss_bytes(self.pid).unwrap_or(0));
            return ControlFlow::Break(());
        }
        self.rate_limit_stop(rate_limited)
    }

    /// Sends a parser event on; returns whether it was a rate-limit signal.
    fn forward(&mut self, ev: StreamEvent) -> bool {
        let rate_limited = match &ev {
            StreamEvent::RateLimited {
                retry_after_secs, ..
            } => {
                if self.retry_resets_at.is_none() {
                    self.retry_resets_at = retry_after_secs.map(|secs| {
                        epoch_now().saturating_add(i64::try_from(secs).unwrap_or(i64::MAX))
                    });
                }
                true
            }
            _ => false,
        };
        let _ = self.events.send(ExecEvent::Stream(ev));
        rate_limited
    }

    /// Stops the run at a rate-limit signal unless the CLI is to retry on its own. A final
    /// event read with it wins (the caller checks that first): the CLI already gave its verdict.
    fn rate_limit_stop(&mut self, rate_limited: bool) -> ControlFlow<()> {
        if rate_limited && self.limits.stop_on_rate_limit {
            tracing::info!(
                pid = self.pid,
                "the CLI reported a rate limit; stopping it before its own retries"
            );
            return self.stop_for(StopReason::RateLimited);
        }
        ControlFlow::Continue(())
    }

    /// A stderr line: the parser reads it (some signals are only there), and the last
    /// [`STDERR_TAIL_BYTES`] are kept.
    fn on_stderr(&mut self, line: String) -> ControlFlow<()> {
        let rate_limited = match self.parser.stderr_line(&line) {
            Some(ev) => self.forward(ev),
            None => false,
        };
        self.keep_stderr(line);
        self.rate_limit_stop(rate_limited)
    }

    /// Keeps the last [`STDERR_TAIL_BYTES`] of stderr (and logs every line).
    fn keep_stderr(&mut self, line: String) {
        self.log_line(OutputStream::Stderr, &line);
        self.stderr_tail_len += line.len() + 1;
        self.stderr_tail.push_back(line);
        while self.stderr_tail_len > STDERR_TAIL_BYTES && self.stderr_tail.len() > 1 {
            if let Some(old) = self.stderr_tail.pop_front() {
                self.stderr_tail_len -= old.len() + 1;
            }
        }
    }

    fn log_line(&mut self, stream: OutputStream, line: &str) {
        if let Some(log) = self.log.as_mut() {
            log.line(stream, line);
        }
    }

    /// The run's verdict is reached; now make sure the CLI and its group are gone, and return
    /// the CLI's exit status when there is one.
    async fn reap(
        &mut self,
        child: &mut Proc,
        pipes: &mut Pipes,
        watchdog: i32,
    ) -> Option<ExitStatus> {
        let pgid = self.pid;
        let kill_grace = self.limits.kill_grace;
        let status = match self.child_status {
            Some(s) => Some(s),
            None if self.stop.is_some() => {
                terminate_group(pgid, Some(child), kill_grace, watchdog).await
            }
            None => {
                // Final event read: the answer stands. Keep draining stdout so a chatty CLI
                // cannot block on a full pipe, and give it the post-result grace to exit.
                if let Some(mut rest) = pipes.stdout.take() {
                    tokio::spawn(async move { while let Ok(Some(_)) = rest.next_line().await {} });
                }
                match tokio::time::timeout(self.limits.post_result_grace, child.wait()).await {
                    Ok(s) => s.ok(),
                    Err(_) => {
                        self.stop = Some(StopReason::PostResultGrace);
                        terminate_group(pgid, Some(child), kill_grace, watchdog).await
                    }
                }
            }
        };
        // Grandchildren that outlived the CLI (a background tool, an MCP server) go with it.
        if group_alive(pgid) {
            terminate_group(pgid, None, kill_grace, watchdog).await;
        } else if self.watchdog_lost {
            crate::group::sweep_orphans(watchdog).await;
        }
        status
    }

    /// The parser's verdict and the executor's, once the group is gone.
    async fn finish(
        mut self,
        status: Option<ExitStatus>,
        stderr: &mut mpsc::Receiver<String>,
        supervised: bool,
    ) -> RunResult {
        // Whatever stderr the CLI wrote before exiting is already in the pipe.
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_millis(50), stderr.recv()).await
        {
            // The parser reads these too (codex says `no rollout found` as it exits); the run
            // is over, so a rate-limit signal here changes nothing but the events.
            if let Some(ev) = self.parser.stderr_line(&line) {
                self.forward(ev);
            }
            self.log_line(OutputStream::Stderr, &line);
            self.stderr_tail.push_back(line);
        }
        let mut tail = std::mem::take(&mut self.stderr_tail)
            .into_iter()
            .collect::<Vec<_>>()
            .join("\n");
        if tail.len() > STDERR_TAIL_BYTES {
            let mut cut = tail.len() - STDERR_TAIL_BYTES;
            while !tail.is_char_boundary(cut) {
                cut += 1;
            }
            tail.drain(..cut);
        }
        let exit = ProcessExit {
            code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
        };
        // The supervisor could not start the CLI (a race with the checks before the spawn: the
        // binary was removed, or is not executable): a spawn error, like a direct spawn's.
        if supervised && exit.code == Some(127) {
            let prefix = "kokino supervisor: cannot start";
            if let Some(line) = tail.lines().find(|l| l.starts_with(prefix)) {
                let message = line.trim_start_matches("kokino supervisor: ").to_owned();
                let mut r = spawn_failure(self.started, message);
                r.pid = Some(self.pid);
                return r;
            }
        }
        let mut parsed = self.parser.finish(exit, &tail);
        parsed.malformed_lines += self.oversized_lines;
        if parsed.rate_limit_resets_at.is_none() {
            parsed.rate_limit_resets_at = self.retry_resets_at;
        }
        let outcome = match self.stop {
            Some(StopReason::Cancelled) => OutcomeClass::Cancelled,
            Some(StopReason::Timeout) | Some(StopReason::Inactivity) => OutcomeClass::Timeout,
            Some(StopReason::MemoryLimit { .. }) => OutcomeClass::ResourceLimit,
            Some(StopReason::RateLimited) => OutcomeClass::RateLimited,
            Some(StopReason::PostResultGrace) | None => {
                parsed.class.unwrap_or(OutcomeClass::CliError)
            }
        };
        RunResult {
            outcome,
            parsed,
            exit,
            stop: self.stop,
            stderr_tail: tail,
            duration: self.started.elapsed(),
            peak_rss_bytes: self.peak_rss,
            pid: Some(self.pid),
            spawn_error: None,
        }
    }
}

/// Now, in seconds since the Unix epoch.
fn epoch_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

async fn next_stdout<R: tokio::io::AsyncRead + Unpin>(
    lines: &mut Option<BoundedLines<R>>,
) -> Option<Line> {
    match lines {
        Some(l) => l.next_line().await.ok().flatten(),
        None => std::future::pending().await,
    }
}
