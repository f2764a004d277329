//! One headless CLI run, from spawn to reap.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use kokino_cli::{ParsedOutcome, ProcessExit, StreamEvent, StreamParser};
use kokino_core::{LineSink, OutcomeClass, OutputStream};
use nix::sys::signal::Signal;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::group::{group_alive, signal_group, terminate_group};
use crate::lines::{BoundedLines, Line};
use crate::procfs;

/// A fully resolved command: the executor adds nothing to it but the process group and pipes.
#[derive(Debug, Clone)]
pub struct HeadlessCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The complete child environment; the broker's own environment is not inherited beyond it.
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    /// Written to the CLI's stdin, which is then closed. Prompts never go in argv.
    pub stdin: Vec<u8>,
    /// When set, the CLI runs under a supervisor that kills its whole group when the broker
    /// dies, however it dies (and, with a heartbeat deadline, when the broker stalls); see
    /// [`crate::supervisor`]. The broker always sets it; embedders may leave it out.
    pub supervisor: Option<crate::supervisor::SupervisorSpec>,
}

/// The watchdogs and ceilings of one run (behavior.md, "Cancellation, timeouts, process
/// supervision").
#[derive(Debug, Clone)]
pub struct Limits {
    pub timeout: Duration,
    pub inactivity: Duration,
    pub post_result_grace: Duration,
    pub kill_grace: Duration,
    pub max_memory_bytes: Option<u64>,
    pub memory_sample_every: Duration,
    pub max_line_bytes: usize,
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
        }
    }
}

/// Why the executor stopped the process itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Cancelled,
    Timeout,
    Inactivity,
    /// The final event was read but the CLI did not exit within the post-result grace. The answer
    /// stands.
    PostResultGrace,
    MemoryLimit {
        rss_bytes: u64,
    },
}

/// What happened during a run, as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    Started {
        /// The group leader: the supervisor when there is one, else the CLI. Recovery kills
        /// its group from this pid and start time.
        pid: i32,
        start_time: Option<i64>,
        /// The CLI itself, when it runs under a supervisor (found within a few milliseconds of
        /// the spawn); `None` when `pid` is the CLI.
        cli_pid: Option<i32>,
    },
    Stream(StreamEvent),
    /// A supervision sample of the whole process group, taken every `memory_sample_every`.
    Sample {
        rss_bytes: u64,
        cpu_percent: f64,
    },
}

#[derive(Debug, Clone)]
pub struct RunResult {
    pub outcome: OutcomeClass,
    pub parsed: ParsedOutcome,
    pub exit: ProcessExit,
    pub stop: Option<StopReason>,
    pub stderr_tail: String,
    pub duration: Duration,
    pub peak_rss_bytes: u64,
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
    mut parser: Box<dyn StreamParser>,
    limits: Limits,
    cancel: CancellationToken,
    events: mpsc::UnboundedSender<ExecEvent>,
    mut log: Option<Box<dyn LineSink>>,
) -> RunResult {
    let started = Instant::now();
    let spawn_failure = |message: String| RunResult {
        outcome: OutcomeClass::SpawnError,
        parsed: ParsedOutcome::default(),
        exit: ProcessExit::default(),
        stop: None,
        stderr_tail: String::new(),
        duration: started.elapsed(),
        peak_rss_bytes: 0,
        pid: None,
        spawn_error: Some(message),
    };
    let not_found = || match &cmd.cwd {
        Some(cwd) if !cwd.is_dir() => format!("working directory {} does not exist", cwd.display()),
        _ => format!("binary {} not found", cmd.program.display()),
    };
    // Under a supervisor the spawn that can fail is the supervisor's own, so the two failures a
    // caller can fix (a missing binary, a missing working directory) are looked for first.
    if cmd.supervisor.is_some()
        && (cmd.cwd.as_ref().is_some_and(|c| !c.is_dir()) || !cmd.program.is_file())
    {
        return spawn_failure(not_found());
    }
    let lifeline = match &cmd.supervisor {
        Some(_) => match crate::supervisor::Lifeline::new() {
            Ok(l) => Some(l),
            Err(e) => {
                return spawn_failure(format!("cannot create the supervisor's lifeline: {e}"))
            }
        },
        None => None,
    };
    let claim = cmd.supervisor.as_ref().and_then(|s| s.new_claim_path());
    let (program, args) = match &cmd.supervisor {
        Some(s) => s.wrap(&cmd.program, &cmd.args, true, claim.as_deref()),
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
    if let Some(l) = &lifeline {
        let fd = l.read_fd();
        // SAFETY: the hook only duplicates a file descriptor (async-signal-safe).
        unsafe {
            command.pre_exec(move || crate::supervisor::install_lifeline(fd));
        }
    }
    let spawned = command.spawn();
    // The supervisor has its copy of the read end; ours must not keep the pipe readable.
    let _lifeline_write = lifeline.map(|l| l._write);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let message = if e.kind() == std::io::ErrorKind::NotFound {
                not_found()
            } else {
                format!("cannot start {}: {e}", program.display())
            };
            return spawn_failure(message);
        }
    };
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let pgid = pid;
    let mut guard = GroupGuard { pgid, armed: true };
    let start_time = procfs::start_time(pid);
    let cli_pid = match &cmd.supervisor {
        Some(_) => find_child(pid).await,
        None => None,
    };
    let _ = events.send(ExecEvent::Started {
        pid,
        start_time,
        cli_pid,
    });

    // The prompt goes in from its own task: a large prompt must not deadlock against a CLI that
    // writes before it has read everything.
    if let Some(mut stdin) = child.stdin.take() {
        let input = cmd.stdin;
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        });
    }
    let (stderr_tx, mut stderr_rx) = mpsc::channel::<String>(64);
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(async move {
            let mut lines = BoundedLines::new(stderr, 64 * 1024);
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
    let mut stdout = child
        .stdout
        .take()
        .map(|s| BoundedLines::new(s, limits.max_line_bytes));

    let deadline = started + limits.timeout;
    let mut last_activity = Instant::now();
    // The first sample comes one period after the start: a run that ends sooner gets one cheap
    // sample of its leader when the final event arrives instead of a procfs scan at spawn.
    let mut mem_tick = tokio::time::interval_at(
        Instant::now() + limits.memory_sample_every,
        limits.memory_sample_every,
    );
    mem_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut peak_rss = 0u64;
    let mut last_cpu: Option<(u64, Instant)> = None;
    let mut stderr_tail: VecDeque<String> = VecDeque::new();
    let mut stderr_tail_len = 0usize;
    let mut stop: Option<StopReason> = None;
    let mut final_seen = false;
    let mut child_status: Option<ExitStatus> = None;
    let mut drain_deadline = Instant::now();
    let mut parsed_events = Vec::new();
    let mut oversized_lines = 0u64;

    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => { stop = Some(StopReason::Cancelled); break; }
            _ = sleep_until(deadline) => { stop = Some(StopReason::Timeout); break; }
            _ = sleep_until(last_activity + limits.inactivity) => {
                stop = Some(StopReason::Inactivity);
                break;
            }
            _ = mem_tick.tick() => {
                let rss = procfs::group_rss_bytes(pgid);
                peak_rss = peak_rss.max(rss);
                let ticks = procfs::group_cpu_ticks(pgid);
                let now = Instant::now();
                let cpu_percent = match last_cpu {
                    Some((t, at)) if now > at => {
                        let secs = ticks.saturating_sub(t) as f64 / procfs::ticks_per_second();
                        100.0 * secs / (now - at).as_secs_f64()
                    }
                    _ => 0.0,
                };
                last_cpu = Some((ticks, now));
                let _ = events.send(ExecEvent::Sample { rss_bytes: rss, cpu_percent });
                if limits.max_memory_bytes.is_some_and(|max| rss > max) {
                    stop = Some(StopReason::MemoryLimit { rss_bytes: rss });
                    break;
                }
            }
            status = child.wait(), if child_status.is_none() => {
                child_status = Some(status.unwrap_or_else(|_| ExitStatus::from_raw(0)));
                drain_deadline = Instant::now() + DRAIN_AFTER_EXIT;
                if stdout.is_none() { break; }
            }
            _ = sleep_until(drain_deadline), if child_status.is_some() => break,
            line = next_stdout(&mut stdout), if stdout.is_some() => {
                last_activity = Instant::now();
                if child_status.is_some() {
                    drain_deadline = last_activity + DRAIN_AFTER_EXIT;
                }
                match line {
                    Some(Line::Text(text)) => {
                        // Short runs end before the first periodic sample: read the leader's
                        // memory (one small procfs file) on its first line, while it surely
                        // lives, so every execution records a peak.
                        if peak_rss == 0 {
                            peak_rss = procfs::rss_bytes(pid).unwrap_or(0);
                        }
                        if let Some(log) = log.as_mut() {
                            log.line(OutputStream::Stdout, &text);
                        }
                        parser.feed_line(&text, &mut parsed_events);
                        for ev in parsed_events.drain(..) {
                            final_seen |= ev == StreamEvent::Final;
                            let _ = events.send(ExecEvent::Stream(ev));
                        }
                        if final_seen {
                            peak_rss = peak_rss.max(procfs::rss_bytes(pid).unwrap_or(0));
                            break;
                        }
                    }
                    Some(Line::Oversized(n)) => {
                        if let Some(log) = log.as_mut() {
                            log.line(OutputStream::Stdout, &format!("<line of {n} bytes dropped: over the line limit>"));
                        }
                        oversized_lines += 1;
                        tracing::warn!(pid, bytes = n, "dropped an oversized output line");
                        let _ = events.send(ExecEvent::Stream(StreamEvent::Malformed {
                            reason: format!("line of {n} bytes exceeds the line limit"),
                        }));
                    }
                    None => {
                        stdout = None;
                        if child_status.is_some() { break; }
                    }
                }
            }
            Some(line) = stderr_rx.recv() => {
                last_activity = Instant::now();
                if let Some(log) = log.as_mut() {
                    log.line(OutputStream::Stderr, &line);
                }
                stderr_tail_len += line.len() + 1;
                stderr_tail.push_back(line);
                while stderr_tail_len > STDERR_TAIL_BYTES && stderr_tail.len() > 1 {
                    if let Some(old) = stderr_tail.pop_front() {
                        stderr_tail_len -= old.len() + 1;
                    }
                }
            }
        }
    }

    // The run's verdict is reached; now make sure the CLI and its group are gone.
    let status = match child_status {
        Some(s) => Some(s),
        None if stop.is_some() => terminate_group(pgid, Some(&mut child), limits.kill_grace).await,
        None => {
            // Final event read: the answer stands. Keep draining stdout so a chatty CLI cannot
            // block on a full pipe, and give it the post-result grace to exit on its own.
            if let Some(mut rest) = stdout.take() {
                tokio::spawn(async move { while let Ok(Some(_)) = rest.next_line().await {} });
            }
            match tokio::time::timeout(limits.post_result_grace, child.wait()).await {
                Ok(s) => s.ok(),
                Err(_) => {
                    stop = Some(StopReason::PostResultGrace);
                    terminate_group(pgid, Some(&mut child), limits.kill_grace).await
                }
            }
        }
    };
    // Grandchildren that outlived the CLI (a background tool, an MCP server) go with it.
    if group_alive(pgid) {
        terminate_group(pgid, None, limits.kill_grace).await;
    }
    guard.armed = false;
    drop(guard);
    // The group is empty: the claim has nothing left to protect.
    if let Some(c) = &claim {
        let _ = std::fs::remove_file(c);
    }

    // Whatever stderr the CLI wrote before exiting is already in the pipe.
    while let Ok(Some(line)) =
        tokio::time::timeout(Duration::from_millis(50), stderr_rx.recv()).await
    {
        if let Some(log) = log.as_mut() {
            log.line(OutputStream::Stderr, &line);
        }
        stderr_tail.push_back(line);
    }
    let mut tail = stderr_tail.into_iter().collect::<Vec<_>>().join("\n");
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
    // The supervisor could not start the CLI (a race with the checks above: the binary was
    // removed, or is not executable): a spawn error, like a direct spawn's.
    if cmd.supervisor.is_some() && exit.code == Some(127) {
        if let Some(line) = tail
            .lines()
            .find(|l| l.starts_with("kokino supervisor: cannot start"))
        {
            let mut r = spawn_failure(line.trim_start_matches("kokino supervisor: ").to_owned());
            r.pid = Some(pid);
            return r;
        }
    }
    let mut parsed = parser.finish(exit, &tail);
    parsed.malformed_lines += oversized_lines;
    let outcome = match stop {
        Some(StopReason::Cancelled) => OutcomeClass::Cancelled,
        Some(StopReason::Timeout) | Some(StopReason::Inactivity) => OutcomeClass::Timeout,
        Some(StopReason::MemoryLimit { .. }) => OutcomeClass::ResourceLimit,
        Some(StopReason::PostResultGrace) | None => parsed.class.unwrap_or(OutcomeClass::CliError),
    };
    RunResult {
        outcome,
        parsed,
        exit,
        stop,
        stderr_tail: tail,
        duration: started.elapsed(),
        peak_rss_bytes: peak_rss,
        pid: Some(pid),
        spawn_error: None,
    }
}

/// The supervisor's child (the CLI), which it starts right after writing its claim: a few
/// milliseconds at most. `None` if it has not appeared within 200 ms (or already exited).
async fn find_child(supervisor: i32) -> Option<i32> {
    let path = format!("/proc/{supervisor}/task/{supervisor}/children");
    let until = Instant::now() + Duration::from_millis(200);
    loop {
        let found = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()));
        if found.is_some() || Instant::now() >= until {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn next_stdout<R: tokio::io::AsyncRead + Unpin>(
    lines: &mut Option<BoundedLines<R>>,
) -> Option<Line> {
    match lines {
        Some(l) => l.next_line().await.ok().flatten(),
        None => std::future::pending().await,
    }
}
