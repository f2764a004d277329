//! The supervisor: a tiny process between the broker and a CLI, which makes sure that no process
//! of an execution outlives the broker that started it. Every CLI in a tmux pane runs under one;
//! headless CLIs are started by the broker's shared spawner instead ([`crate::spawner`], which
//! keeps the same rules once per broker), and get a supervisor of their own only when the
//! spawner cannot take them.
//!
//! The broker cannot promise that on its own: `kill -9` of the broker at the wrong instant
//! (after the CLI started, before its pid reached the database) leaves a CLI nobody knows about,
//! and a broker that is SIGSTOPped or partitioned from a shared database cannot stop its CLIs
//! before its lease passes to another broker. So each CLI runs as the child of a supervisor, in
//! the supervisor's process group, and the supervisor kills that whole group when
//!
//! * its **lifeline** closes: the broker holds the write end of a pipe whose read end the
//!   supervisor inherits (`--lifeline-fd`); the kernel closes it when the broker dies, however
//!   it dies;
//! * its **parent** is gone: for tmux panes, whose programs are started by the tmux server and
//!   cannot inherit a pipe, the supervisor watches the broker's pid and start time instead;
//! * no **heartbeat** (SIGUSR1 from the broker) arrived within its deadline (cluster mode: the
//!   heartbeat precedes each lease renewal, so the deadline falls before the lease expires).
//!
//! Before it starts the CLI, the supervisor writes a **claim file** (its group and the broker
//! that owns it) into the broker's run directory, and only then checks that the broker is still
//! alive. Either the broker's next life finds the claim at start-up and kills what is left of
//! the group ([`reap_leftovers`]), or the supervisor sees the dead broker and never starts the
//! CLI: there is no instant at which a CLI can exist unknown to both.
//!
//! The supervisor ignores SIGTERM, SIGINT and SIGHUP: a cancel signals the whole group, the CLI
//! handles it, and the supervisor then ends with the CLI's own status (re-raising the CLI's
//! signal), which the executor reads as the CLI's. It never panics on a closed stderr: a broker
//! killed with SIGKILL no longer reads the pipe, and that is exactly when the supervisor must act.
//!
//! Some CLIs start helpers that leave the group on purpose: Codex's TUI starts
//! `codex app-server --managed-daemon`, which double-forks and calls `setsid`. A group kill
//! cannot reach such a process, so the supervisor is also a **child subreaper**
//! (`PR_SET_CHILD_SUBREAPER`): whatever the CLI starts and orphans is re-parented to the
//! supervisor instead of init, and when the CLI ends (or is stopped) the supervisor ends every
//! live descendant of its own as well as its group, and reaps the orphans it adopted. For the
//! one case the supervisor cannot cover, its own death by SIGKILL, the CLI's environment
//! carries [`MARK_VAR`] naming the supervisor (pid and start time) and its broker's run
//! directory, which every descendant inherits: after a forced stop the executor kills what is
//! marked with that supervisor ([`kill_orphans_of`]), and at start-up [`reap_leftovers`] kills
//! what is marked with its run directory and a supervisor that is gone ([`kill_orphans`]). A
//! broker never touches another broker's processes, nor a live supervisor's.
//!
//! The CLI's exit is noticed the moment it happens: a thread blocked in `waitpid` reaps every
//! child (the CLI and adopted orphans alike) and hands the CLI's status to the main loop, which
//! waits on it with a timeout that is also the watchdogs' tick.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::Pid;

use crate::procfs;

/// The first argument that makes a binary act as the supervisor (the broker binary checks for it
/// before parsing its own flags).
pub const SUPERVISE_FLAG: &str = "--kokino-supervise";

/// The older spelling, `--kokino-lease-guard <deadline_ms> -- <program> <args…>`: a supervisor
/// with only a heartbeat deadline. Still accepted.
pub const GUARD_FLAG: &str = "--kokino-lease-guard";

/// The variable the supervisor adds to its CLI's environment: `<supervisor pid>:<its start
/// time>:<the broker's run directory>` (the last part empty without one). Every process the CLI
/// starts inherits it (unless it clears its environment), so a process that escaped the group can
/// still be traced to its supervisor, and to its broker, once the supervisor is gone.
pub const MARK_VAR: &str = "KOKINO_SUPERVISOR";

/// The watchdogs' tick: the deadlines they check are seconds, so this much slack is nothing,
/// and the CLI's exit does not wait for it.
const TICK: Duration = Duration::from_millis(20);

/// How the executor starts a CLI under a supervisor.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SupervisorSpec {
    /// A binary that runs [`run_supervisor`] when called with [`SUPERVISE_FLAG`] (the broker
    /// itself).
    pub program: PathBuf,
    /// Where claim files go (one per running CLI); [`reap_leftovers`] reads them at start-up.
    /// `None` runs without claims (the lifeline alone).
    pub run_dir: Option<PathBuf>,
    /// Kill the group when no heartbeat arrived for this long (several brokers on one
    /// database); `None` for a single broker.
    pub heartbeat: Option<Duration>,
    /// How long what the CLI leaves behind when it exits (tools, MCP servers) gets between
    /// SIGTERM and SIGKILL.
    pub grace: Duration,
    /// `run_dir`, canonical, for the CLI's [`MARK_VAR`] (`--scope`).
    scope: Option<String>,
    /// One spawner shared by every headless run of this spec, instead of a supervisor per run
    /// (see [`crate::spawner`]); set by [`SupervisorSpec::shared`]. tmux panes ignore it.
    pub(crate) spawner: Option<std::sync::Arc<crate::spawner::Spawner>>,
}

impl SupervisorSpec {
    /// A supervisor run by `program`, with claims in `run_dir`, without a heartbeat deadline.
    pub fn new(program: impl Into<PathBuf>, run_dir: Option<PathBuf>) -> Self {
        // Canonical, so that a broker started with another spelling of the same data directory
        // still recognises its previous life's marks; resolved here, once, not per CLI.
        let scope = run_dir.as_ref().map(|dir| {
            std::fs::canonicalize(dir)
                .unwrap_or_else(|_| dir.clone())
                .display()
                .to_string()
        });
        SupervisorSpec {
            program: program.into(),
            scope,
            run_dir,
            heartbeat: None,
            grace: Duration::from_secs(5),
            spawner: None,
        }
    }

    /// The same spec, with headless runs started by one spawner process shared by every clone
    /// of it (started with the first run, or by [`SupervisorSpec::start_spawner`]) rather than
    /// under a supervisor each. Call it last: the spawner takes the grace and heartbeat set so
    /// far.
    pub fn shared(mut self) -> Self {
        self.spawner = Some(std::sync::Arc::new(crate::spawner::Spawner::new(
            self.program.clone(),
            self.run_dir.as_deref(),
            self.scope.as_deref(),
            self.heartbeat,
            self.grace,
        )));
        self
    }

    /// Starts the shared spawner now, so that the first execution does not wait for it;
    /// returns its pid (`None` without one, or when it cannot start: runs then fall back to a
    /// supervisor each).
    pub async fn start_spawner(&self) -> Option<i32> {
        let spawner = self.spawner.as_ref()?;
        match spawner.start().await {
            Ok(pid) => Some(pid),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the spawner; each CLI gets a supervisor of its own");
                None
            }
        }
    }

    /// The same supervisor with another grace for the CLI's leftovers.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The same supervisor with a heartbeat deadline.
    pub fn with_heartbeat(mut self, deadline: Option<Duration>) -> Self {
        self.heartbeat = deadline;
        self
    }

    /// The command line that runs `program args…` under this supervisor. `lifeline` is the
    /// descriptor on which the supervisor inherits the read end of its lifeline (headless runs,
    /// see [`Lifeline::inheritable_read_fd`]); without one the supervisor watches this process
    /// instead (tmux panes). `claim` names the claim file, if any.
    pub fn wrap(
        &self,
        program: &Path,
        args: &[String],
        lifeline: Option<RawFd>,
        claim: Option<&Path>,
    ) -> (PathBuf, Vec<String>) {
        let mut out = vec![SUPERVISE_FLAG.to_owned()];
        if let Some(fd) = lifeline {
            out.extend(["--lifeline-fd".to_owned(), fd.to_string()]);
        } else {
            let me = std::process::id() as i32;
            let start = procfs::start_time(me).unwrap_or(0);
            out.extend(["--parent".to_owned(), format!("{me}:{start}")]);
        }
        if let Some(hb) = self.heartbeat {
            out.extend(["--heartbeat-ms".to_owned(), hb.as_millis().to_string()]);
        }
        out.extend(["--grace-ms".to_owned(), self.grace.as_millis().to_string()]);
        if let Some(scope) = &self.scope {
            out.extend(["--scope".to_owned(), scope.clone()]);
        }
        if let Some(claim) = claim {
            out.extend(["--claim".to_owned(), claim.display().to_string()]);
        }
        out.push("--".to_owned());
        out.push(program.display().to_string());
        out.extend(args.iter().cloned());
        (self.program.clone(), out)
    }

    /// A fresh claim file path in the run directory, if there is one.
    pub fn new_claim_path(&self) -> Option<PathBuf> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = self.run_dir.as_ref()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Some(dir.join(format!("{}-{n}.claim", std::process::id())))
    }
}

/// A lifeline: the broker's end stays open for as long as the run is supervised.
#[derive(Debug)]
pub struct Lifeline {
    /// The read end, for the supervisor (made inheritable just before it is started).
    pub(crate) read: OwnedFd,
    /// The write end; dropping it tells the supervisor the run is over.
    pub(crate) _write: OwnedFd,
}

impl Lifeline {
    /// Both ends are created close-on-exec; the write end stays so for its whole life, so no
    /// child of the broker ever holds it (see [`Lifeline::inheritable_read_fd`]).
    pub fn new() -> std::io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        Ok(Lifeline {
            read,
            _write: write,
        })
    }

    /// Makes the read end inheritable and returns its number, for the supervisor's
    /// `--lifeline-fd`. No hook runs between fork and exec, so the broker can start the
    /// supervisor with `posix_spawn` (no copy of the broker's page tables per execution).
    ///
    /// Until the spawn has happened and this `Lifeline` is turned into its write end, a child
    /// another thread starts meanwhile may inherit this read end too. That is harmless: only
    /// write ends keep a pipe open, and the write end is never inheritable; a supervisor marks
    /// every descriptor it inherited beyond its own lifeline close-on-exec, so no CLI keeps one.
    pub(crate) fn inheritable_read_fd(&self) -> std::io::Result<RawFd> {
        let fd = self.read.as_raw_fd();
        // SAFETY: clears the close-on-exec flag of a descriptor we own.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    }

    /// Closes our copy of the read end once the supervisor has its own, keeping the write end.
    pub(crate) fn into_write_end(self) -> OwnedFd {
        self._write
    }
}

/// Tells the supervisor leading process group `pid` that the broker is alive.
pub fn heartbeat(pid: i32) -> bool {
    signal::kill(Pid::from_raw(pid), Signal::SIGUSR1).is_ok()
}

static HEARTBEATS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_heartbeat(_: libc::c_int) {
    HEARTBEATS.fetch_add(1, Ordering::Relaxed);
}

/// A watchdog's answer to the signals meant for its CLIs: none (see [`watchdog_signals`]).
extern "C" fn survive(_: libc::c_int) {}

/// The heartbeats (SIGUSR1) this process has received so far.
pub(crate) fn heartbeats() -> u64 {
    HEARTBEATS.load(Ordering::Relaxed)
}

/// The signal rules of both watchdogs, the supervisor and the spawner: SIGUSR1 counts a
/// heartbeat, and SIGTERM, SIGINT, SIGHUP and SIGPIPE are outlived. They are caught with a
/// handler that does nothing, rather than ignored, because an exec resets caught signals to
/// their defaults but keeps ignored ones ignored. So a CLI starts with the default actions and
/// no hook has to run between fork and exec, which lets it be started with `posix_spawn`.
pub(crate) fn watchdog_signals() {
    // SAFETY: the handlers only touch an atomic or nothing, which is async-signal-safe.
    unsafe {
        let _ = signal::signal(Signal::SIGUSR1, SigHandler::Handler(on_heartbeat));
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGPIPE,
        ] {
            let _ = signal::signal(s, SigHandler::Handler(survive));
        }
    }
}

/// Marks every descriptor this process inherited beyond stdin, stdout and stderr close-on-exec,
/// so that no CLI it starts holds one (a lifeline, the socket to the broker). On a kernel before
/// 5.11, which has no `close_range`, at least `own`.
pub(crate) fn cloexec_inherited(own: Option<RawFd>) {
    // SAFETY: sets the close-on-exec flag of descriptors; touches no memory.
    unsafe {
        if libc::close_range(
            3,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
        ) != 0
        {
            if let Some(fd) = own {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
}

/// Makes this process a child subreaper: orphans of its descendants come to it rather than to
/// init, so that none can escape by daemonizing. Says so when the kernel refuses (the group
/// kill and the marks still apply then). Returns whether it is one.
pub(crate) fn become_subreaper(who: &str) -> bool {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and changes only us.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        say_as(
            who,
            format_args!(
                "cannot become a child subreaper: {}",
                std::io::Error::last_os_error()
            ),
        );
        return false;
    }
    true
}

/// What the supervisor watches, from its command line.
#[derive(Debug, Default)]
struct Options {
    lifeline: Option<RawFd>,
    parent: Option<(i32, i64)>,
    heartbeat: Option<Duration>,
    grace: Option<Duration>,
    claim: Option<PathBuf>,
    /// The broker's run directory, for the mark.
    scope: Option<String>,
    program: Vec<String>,
}

fn parse_options(flag: &str, args: &[String]) -> Option<Options> {
    let mut o = Options::default();
    if flag == GUARD_FLAG {
        // `<deadline_ms> -- <program> <args…>`
        let ms = args.first()?.parse::<u64>().ok().filter(|ms| *ms > 0)?;
        o.heartbeat = Some(Duration::from_millis(ms));
        if args.get(1).map(String::as_str) != Some("--") || args.len() < 3 {
            return None;
        }
        o.program = args[2..].to_vec();
        return Some(o);
    }
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--lifeline-fd" => o.lifeline = Some(it.next()?.parse().ok()?),
            "--parent" => {
                let (pid, start) = it.next()?.split_once(':')?;
                o.parent = Some((pid.parse().ok()?, start.parse().ok()?));
            }
            "--heartbeat-ms" => {
                let ms = it.next()?.parse::<u64>().ok().filter(|ms| *ms > 0)?;
                o.heartbeat = Some(Duration::from_millis(ms));
            }
            "--claim" => o.claim = Some(PathBuf::from(it.next()?)),
            "--scope" => o.scope = Some(it.next()?.clone()),
            "--grace-ms" => o.grace = Some(Duration::from_millis(it.next()?.parse().ok()?)),
            "--" => {
                o.program = it.cloned().collect();
                break;
            }
            _ => return None,
        }
    }
    if o.program.is_empty() {
        return None;
    }
    Some(o)
}

/// Writes to stderr without ever panicking: when the broker was killed nobody reads the pipe,
/// and a failed write must not stop the supervisor from doing its job.
fn say(message: std::fmt::Arguments<'_>) {
    say_as("supervisor", message);
}

/// [`say`] for either watchdog (`who`: `supervisor` or `spawner`).
pub(crate) fn say_as(who: &str, message: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "kokino {who}: {message}");
}

/// Whether the lifeline's write end has closed (or the pipe is otherwise unusable).
fn lifeline_closed(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    // Nothing is ever written to the lifeline: readable means end of file.
    n != 0
        && (n < 0
            || p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0)
}

fn parent_gone(parent: Option<(i32, i64)>) -> bool {
    parent.is_some_and(|(pid, start)| !procfs::is_same_process(pid, start) || !procfs::is_live(pid))
}

/// The supervisor's main: `flag` is [`SUPERVISE_FLAG`] or [`GUARD_FLAG`] and `args` what
/// follows it. Never returns.
pub fn run_supervisor(flag: &str, args: &[String]) -> ! {
    let Some(opts) = parse_options(flag, args) else {
        say(format_args!(
            "usage: {SUPERVISE_FLAG} [--lifeline-fd N] [--parent PID:START] [--heartbeat-ms MS] [--claim PATH] [--scope DIR] -- <program> [args…]  |  {GUARD_FLAG} <deadline_ms> -- <program> [args…]"
        ));
        std::process::exit(2)
    };
    // The supervisor outlives the signals meant for its CLI, and no descriptor it inherited
    // beyond stdin, stdout and stderr goes on to the CLI: not its lifeline (only the broker's
    // death may close it), nor a lifeline of another execution that a concurrent spawn let it
    // inherit.
    watchdog_signals();
    cloexec_inherited(opts.lifeline);
    let group = nix::unistd::getpgrp().as_raw();
    if let Some(claim) = &opts.claim {
        if let Err(e) = write_claim(claim, group, opts.parent) {
            say(format_args!("cannot write claim {}: {e}", claim.display()));
        }
    }
    // The claim is on disk: if the broker is already gone, its next life may have missed it,
    // so the CLI must not start at all.
    if opts.lifeline.is_some_and(lifeline_closed) || parent_gone(opts.parent) {
        remove_claim(opts.claim.as_deref());
        say(format_args!(
            "the broker is gone; not starting {}",
            opts.program[0]
        ));
        std::process::exit(137)
    }
    SUBREAPER.store(become_subreaper("supervisor"), Ordering::Relaxed);
    let me = std::process::id() as i32;
    let mut cmd = Command::new(&opts.program[0]);
    cmd.args(&opts.program[1..]);
    let start = procfs::start_time(me).unwrap_or(0);
    cmd.env(MARK_VAR, mark(me, start, opts.scope.as_deref()));
    let cli = match cmd.spawn() {
        // The reaper waits for the CLI by pid from now on; `Child` must never wait for it too.
        Ok(c) => c.id() as i32,
        Err(e) => {
            say(format_args!("cannot start {}: {e}", opts.program[0]));
            remove_claim(opts.claim.as_deref());
            std::process::exit(127)
        }
    };
    let mut reaper = Reaper::start(cli);
    let mut seen = heartbeats();
    let mut last = Instant::now();
    let mut ticks: u32 = 0;
    loop {
        if let Some(status) = reaper.wait(TICK) {
            // What the CLI started (tools, MCP servers, daemons) goes with it, before this
            // supervisor ends: once it has ended, a broker that dies would leave them to nobody.
            let grace = opts.grace.unwrap_or(Duration::from_secs(5));
            end_leftovers(group, grace, &opts);
            if opts.parent.is_some() {
                // In a tmux pane (the only place that watches its parent) this process's exit
                // is what tmux sees as the pane's death. The CLI's last words (a login screen,
                // an error) may still be in the terminal for tmux to read; a moment's pause
                // keeps a busy tmux from marking the pane dead before they are on its screen,
                // where the executor reads why the CLI stopped.
                std::thread::sleep(Duration::from_millis(20));
            }
            exit_like(status)
        }
        let now = heartbeats();
        if now != seen {
            seen = now;
            last = Instant::now();
        }
        let why = if opts.lifeline.is_some_and(lifeline_closed) {
            Some("the broker is gone (its lifeline closed)".to_owned())
        } else if ticks.is_multiple_of(5) && parent_gone(opts.parent) {
            Some("the broker is gone (its process ended)".to_owned())
        } else {
            opts.heartbeat.filter(|d| last.elapsed() >= *d).map(|d| {
                format!(
                    "no heartbeat from the broker for {} ms; stopping the CLI so that its lease can pass to another broker",
                    d.as_millis()
                )
            })
        };
        if let Some(why) = why {
            say(format_args!("{why}"));
            // A short SIGTERM grace lets the CLI end cleanly; with a heartbeat it still ends
            // well before the lease expires (the deadline is two thirds of the lease, the grace
            // a sixth at most).
            let grace = opts
                .heartbeat
                .map(|d| d / 4)
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(2));
            kill_own_group(&mut reaper, group, grace);
        }
        ticks = ticks.wrapping_add(1);
    }
}

/// Whether this supervisor became a child subreaper.
static SUBREAPER: AtomicBool = AtomicBool::new(false);

fn subreaper() -> bool {
    SUBREAPER.load(Ordering::Relaxed)
}

/// `<pid>:<start time>:<scope>`, the value of [`MARK_VAR`].
pub(crate) fn mark(pid: i32, start: i64, scope: Option<&str>) -> String {
    format!("{pid}:{start}:{}", scope.unwrap_or(""))
}

/// Reaps the supervisor's children: the CLI, and the orphans a child subreaper adopts (which
/// would otherwise stay zombies for as long as the supervisor lives).
enum Reaper {
    /// A thread blocked in `waitpid(-1)` sends the CLI's status the moment it exits.
    Thread(std::sync::mpsc::Receiver<std::process::ExitStatus>),
    /// No thread could be started: reap without blocking on each tick instead.
    Poll { cli: i32 },
}

impl Reaper {
    fn start(cli: i32) -> Reaper {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || loop {
                match reap_one(0) {
                    Reaped::Child(pid, status) if pid == cli => {
                        let _ = tx.send(status);
                    }
                    Reaped::Child(..) | Reaped::Interrupted => {}
                    // Nothing to wait for (the CLI is reaped and no orphan is left, until one is
                    // adopted): wait a little rather than spin.
                    Reaped::NoChild | Reaped::Nothing => std::thread::sleep(TICK),
                }
            });
        match spawned {
            Ok(_) => Reaper::Thread(rx),
            Err(e) => {
                say(format_args!(
                    "cannot start the reaper thread ({e}); polling instead"
                ));
                Reaper::Poll { cli }
            }
        }
    }

    /// The CLI's exit status if it exits within `timeout`; `None` once it has been returned.
    fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        match self {
            Reaper::Thread(rx) => match rx.recv_timeout(timeout) {
                Ok(status) => Some(status),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                // The thread cannot end, but if it somehow did, never spin.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(timeout);
                    None
                }
            },
            Reaper::Poll { cli } => {
                loop {
                    match reap_one(libc::WNOHANG) {
                        Reaped::Child(pid, status) if pid == *cli => return Some(status),
                        Reaped::Child(..) | Reaped::Interrupted => {}
                        Reaped::NoChild | Reaped::Nothing => break,
                    }
                }
                std::thread::sleep(timeout);
                None
            }
        }
    }
}

/// What one `waitpid(-1)` gave.
enum Reaped {
    Child(i32, std::process::ExitStatus),
    /// A signal (a heartbeat) interrupted the wait.
    Interrupted,
    /// No child at all.
    NoChild,
    /// `WNOHANG` and no child has exited.
    Nothing,
}

fn reap_one(flags: libc::c_int) -> Reaped {
    use std::os::unix::process::ExitStatusExt;
    let mut raw = 0;
    // SAFETY: waitpid writes the status into a local integer.
    let pid = unsafe { libc::waitpid(-1, &mut raw, flags) };
    if pid > 0 {
        return Reaped::Child(pid, std::process::ExitStatus::from_raw(raw));
    }
    if pid == 0 {
        return Reaped::Nothing;
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EINTR) => Reaped::Interrupted,
        _ => Reaped::NoChild,
    }
}

/// SIGTERM to our own group (the CLI, its tools, and this supervisor, which ignores it) and to
/// every descendant that left it, a grace, then SIGKILL to all of them and to the group, which
/// ends the supervisor too.
fn kill_own_group(reaper: &mut Reaper, group: i32, grace: Duration) -> ! {
    let me = std::process::id() as i32;
    let _ = signal::killpg(Pid::from_raw(group), Signal::SIGTERM);
    signal_each(&procfs::group_and_descendants(group, me), Signal::SIGTERM);
    let until = Instant::now() + grace;
    let mut cli_done = false;
    while Instant::now() < until {
        if cli_done {
            std::thread::sleep(Duration::from_millis(10));
        } else {
            cli_done = reaper.wait(Duration::from_millis(10)).is_some();
        }
        if cli_done && procfs::group_and_descendants(group, me).is_empty() {
            break;
        }
    }
    // Those outside the group first: the group's SIGKILL ends this supervisor, and with it the
    // only process that can find them.
    kill_descendants(group, me);
    let _ = signal::killpg(Pid::from_raw(group), Signal::SIGKILL);
    std::process::exit(137)
}

pub(crate) fn signal_each(pids: &[i32], sig: Signal) {
    for &pid in pids {
        let _ = signal::kill(Pid::from_raw(pid), sig);
    }
}

/// SIGKILL to every live member of the group and descendant of `me` (but `me`), again until
/// none is left (one may fork while the others die), for at most two seconds.
fn kill_descendants(group: i32, me: i32) {
    let hard = Instant::now() + Duration::from_secs(2);
    loop {
        let left = procfs::group_and_descendants(group, me);
        if left.is_empty() || Instant::now() >= hard {
            return;
        }
        signal_each(&left, Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// After the CLI exited: SIGTERM to what is left of the group and of our descendants, up to
/// `grace` (cut short when the broker goes away), then SIGKILL to each remaining one by pid (a
/// SIGKILL to the group would end this supervisor before it could report the CLI's status),
/// until none is left.
fn end_leftovers(group: i32, grace: Duration, opts: &Options) {
    let me = std::process::id() as i32;
    // The common case, a CLI that left nothing behind, costs a few small reads: as a child
    // subreaper with no child left, nothing of the CLI's can be alive (orphans come to us).
    // Only when something is left is every process scanned (a few milliseconds of CPU on a busy
    // host, once per execution otherwise).
    if subreaper() && !procfs::has_children(me) {
        return;
    }
    let left = procfs::group_and_descendants(group, me);
    if left.is_empty() {
        return;
    }
    let _ = signal::killpg(Pid::from_raw(group), Signal::SIGTERM);
    signal_each(&left, Signal::SIGTERM);
    let until = Instant::now() + grace;
    while !procfs::group_and_descendants(group, me).is_empty() && Instant::now() < until {
        if opts.lifeline.is_some_and(lifeline_closed) || parent_gone(opts.parent) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_descendants(group, me);
}

/// Ends the supervisor the way the CLI ended: same exit code, or the same signal.
fn exit_like(status: std::process::ExitStatus) -> ! {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        std::process::exit(code)
    }
    let sig = status.signal().unwrap_or(libc::SIGKILL);
    // SAFETY: restores the default action of one signal and sends it to ourselves.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::kill(libc::getpid(), sig);
    }
    std::process::exit(128 + sig)
}

fn write_claim(path: &Path, group: i32, owner: Option<(i32, i64)>) -> std::io::Result<()> {
    let start = procfs::start_time(group).unwrap_or(0);
    let owner = owner.or_else(|| {
        let ppid = nix::unistd::getppid().as_raw();
        procfs::start_time(ppid).map(|s| (ppid, s))
    });
    write_claim_file(path, group, start, owner)
}

/// Writes a claim: the group `group` led by a process that started at `start`, owned by the
/// broker `owner` (pid and start time). Written whole or not at all (a rename).
pub(crate) fn write_claim_file(
    path: &Path,
    group: i32,
    start: i64,
    owner: Option<(i32, i64)>,
) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{}\n", claim_record(group, start, owner)))?;
    std::fs::rename(&tmp, path)
}

/// A claim's text, newline excluded: what [`parse_claim`] reads.
fn claim_record(group: i32, start: i64, owner: Option<(i32, i64)>) -> String {
    let (owner_pid, owner_start) = owner.unwrap_or((0, 0));
    format!("{group} {start} {owner_pid} {owner_start}")
}

/// Writes a claim (see [`write_claim_file`]) over the one already in the file at `path`, or
/// creates it: one write of a fixed-width record at its start, which a crash of the writer
/// cannot leave half done, so no rename is needed. A `group` of 0 blanks the claim: it names no
/// group, and [`reap_leftovers`] removes it.
pub(crate) fn write_claim_in_place(
    path: &Path,
    group: i32,
    start: i64,
    owner: Option<(i32, i64)>,
) -> std::io::Result<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    // Every record has this width, so that a shorter one leaves nothing of a longer one behind
    // (the widest, two pids of 11 characters and two start times of 20 with their three
    // spaces, takes 65).
    let record = format!(
        "{:<width$}\n",
        claim_record(group, start, owner),
        width = CLAIM_WIDTH
    );
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    file.write_all_at(record.as_bytes(), 0)
}

/// The width of a claim written in place, newline excluded.
const CLAIM_WIDTH: usize = 95;

fn remove_claim(path: Option<&Path>) {
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
}

/// Creates the run directory (mode 0700: claim files say which processes the broker may kill).
pub fn prepare_run_dir(run_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(run_dir)
}

/// What [`reap_leftovers`] found of a previous life.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leftover {
    /// The process group the claim named, or the pid of a marked orphan.
    pub pgid: i32,
    /// Whether a live process of it was killed.
    pub killed: bool,
    /// A process found by its [`MARK_VAR`] (its supervisor gone), not by a claim.
    pub orphan: bool,
}

/// Kills every process that carries [`MARK_VAR`] with the run directory `scope` and a
/// supervisor that is no longer alive (gone, a zombie, or its pid now someone else's), and
/// returns their pids. Such a process can only be something a CLI started that outlived a
/// supervisor killed with SIGKILL: a live supervisor ends its descendants itself. Processes of
/// other users, whose environment we may not read, are never touched, nor is this process.
///
/// Blocking: one read of `/proc/<pid>/environ` per process, repeated (see [`kill_marked`]).
pub fn kill_orphans(scope: &Path) -> Vec<i32> {
    let scope = std::fs::canonicalize(scope)
        .unwrap_or_else(|_| scope.to_path_buf())
        .display()
        .to_string();
    kill_marked(|sup, s| s == scope && !supervisor_alive(sup))
}

/// Kills every process marked with the supervisor `pid` once that supervisor is no longer alive:
/// what its CLI started outside the group when the executor's SIGKILL to the group ended the
/// supervisor before it could end them. Does nothing while the supervisor lives.
pub fn kill_orphans_of(pid: i32) -> Vec<i32> {
    kill_marked(|sup, _| sup.0 == pid && !supervisor_alive(sup))
}

fn supervisor_alive((pid, start): (i32, i64)) -> bool {
    procfs::is_live(pid) && procfs::is_same_process(pid, start)
}

/// SIGKILL to every live process whose mark `(supervisor, scope)` satisfies `chosen`, in passes
/// until one finds nothing (a marked process may fork while its siblings die), for at most two
/// seconds. Returns the pids signalled.
fn kill_marked(chosen: impl Fn((i32, i64), &str) -> bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut killed = Vec::new();
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let found = marked(me, &chosen);
        if found.is_empty() || Instant::now() >= until {
            return killed;
        }
        for pid in found {
            if signal::kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() && !killed.contains(&pid) {
                killed.push(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The live processes (but `me`) whose mark satisfies `chosen`.
fn marked(me: i32, chosen: &impl Fn((i32, i64), &str) -> bool) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let Some(value) = procfs::env_var(pid, MARK_VAR) else {
                return false;
            };
            let Some((sup, start, scope)) = parse_mark(&value) else {
                return false;
            };
            sup != pid && chosen((sup, start), scope) && procfs::is_live(pid)
        })
        .collect()
}

fn parse_mark(value: &str) -> Option<(i32, i64, &str)> {
    let mut it = value.splitn(3, ':');
    Some((
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?,
    ))
}

/// Reads the claim files in `run_dir` whose broker is gone, kills what is left of their groups
/// ([`procfs::kill_recorded_group`]'s rule), waits until those groups are empty (at most a few
/// seconds), and removes the claims. Claims of a broker that is still alive (another broker
/// sharing the directory) are left alone. Then kills the marked processes whose supervisor is
/// gone ([`kill_orphans`]).
pub fn reap_leftovers(run_dir: &Path) -> Vec<Leftover> {
    let Ok(dir) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("claim") {
            // A half-written claim (`.tmp`) was never renamed: its supervisor died before it
            // could start anything, or is about to see its dead broker and start nothing.
            if path.extension().and_then(|e| e.to_str()) == Some("tmp") {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        let Some((pgid, start, owner_pid, owner_start)) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| parse_claim(&s))
        else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        if owner_pid != me && owner_pid > 1 && procfs::is_same_process(owner_pid, owner_start) {
            continue;
        }
        if pgid == 0 {
            // A blanked claim (a spawner's free slot): there is nothing to kill.
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let killed = procfs::kill_recorded_group(pgid, start);
        wait_group_gone(pgid, Duration::from_secs(5));
        let _ = std::fs::remove_file(&path);
        found.push(Leftover {
            pgid,
            killed,
            orphan: false,
        });
    }
    // What escaped the groups (a daemonized helper of a CLI whose supervisor was killed with
    // SIGKILL) is found by its mark; this covers tmux panes too, which write no claims.
    found.extend(kill_orphans(run_dir).into_iter().map(|pid| Leftover {
        pgid: pid,
        killed: true,
        orphan: true,
    }));
    found
}

fn parse_claim(s: &str) -> Option<(i32, i64, i32, i64)> {
    let mut it = s.split_whitespace();
    Some((
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    ))
}

/// Polls until the group has no live member, or `limit` passed (blocking; start-up only).
pub fn wait_group_gone(pgid: i32, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        let alive = pgid > 1 && procfs::group_members(pgid).into_iter().any(procfs::is_live);
        if !alive {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_spellings() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let o = parse_options(GUARD_FLAG, &s(&["1000", "--", "sleep", "3"])).unwrap();
        assert_eq!(o.heartbeat, Some(Duration::from_secs(1)));
        assert_eq!(o.program, s(&["sleep", "3"]));
        let o = parse_options(
            SUPERVISE_FLAG,
            &s(&[
                "--lifeline-fd",
                "3",
                "--parent",
                "12:34",
                "--claim",
                "/x/y.claim",
                "--",
                "a",
            ]),
        )
        .unwrap();
        assert_eq!(o.lifeline, Some(3));
        assert_eq!(o.parent, Some((12, 34)));
        assert_eq!(o.claim.as_deref(), Some(Path::new("/x/y.claim")));
        assert!(parse_options(SUPERVISE_FLAG, &s(&["--bogus", "--", "a"])).is_none());
        assert!(parse_options(SUPERVISE_FLAG, &s(&["--"])).is_none());
        assert!(parse_options(GUARD_FLAG, &s(&["0", "--", "a"])).is_none());
    }

    #[test]
    fn marks_round_trip() {
        assert_eq!(
            parse_mark(&mark(12, 345, Some("/d/run:x"))),
            Some((12, 345, "/d/run:x"))
        );
        assert_eq!(parse_mark(&mark(12, 345, None)), Some((12, 345, "")));
        assert_eq!(parse_mark("12:3"), None);
        assert_eq!(parse_mark("x:1:"), None);
    }

    #[test]
    fn claims_round_trip() {
        assert_eq!(parse_claim("10 20 30 40\n"), Some((10, 20, 30, 40)));
        assert_eq!(parse_claim("10 20"), None);
    }

    /// A claim written in place over a longer one reads as the new one alone, and the widest
    /// record fits.
    #[test]
    fn claims_written_in_place_leave_nothing_of_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1-slot0.claim");
        let widest = (i32::MIN, i64::MIN, i32::MIN, i64::MIN);
        write_claim_in_place(&path, widest.0, widest.1, Some((widest.2, widest.3))).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), CLAIM_WIDTH + 1, "{text:?}");
        assert_eq!(parse_claim(&text), Some(widest));
        write_claim_in_place(&path, 12, 34, Some((5, 6))).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(parse_claim(&text), Some((12, 34, 5, 6)));
        write_claim_in_place(&path, 0, 0, None).unwrap();
        assert_eq!(
            parse_claim(&std::fs::read_to_string(&path).unwrap()),
            Some((0, 0, 0, 0))
        );
    }

    /// A blanked claim (a free slot) names nothing to kill: recovery removes it when its broker
    /// is gone, and leaves it to a broker that still lives.
    #[test]
    fn blank_claims_are_removed_without_killing_anything() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("1-slot0.claim");
        // An owner that cannot exist: pid 2^22 + 1 is above the kernel's largest.
        write_claim_in_place(&gone, 0, 0, Some((4_194_305, 1))).unwrap();
        // A live owner that is not this process: its parent.
        let parent = nix::unistd::getppid().as_raw();
        let start = procfs::start_time(parent).unwrap();
        let live = dir.path().join("2-slot0.claim");
        write_claim_in_place(&live, 0, 0, Some((parent, start))).unwrap();
        assert_eq!(reap_leftovers(dir.path()), Vec::new());
        assert!(!gone.exists(), "the dead broker's blank claim is removed");
        assert!(live.exists(), "a live broker's slot is left to it");
    }
}
