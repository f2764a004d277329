//! The supervisor: a tiny process between the broker and every CLI it starts, which makes sure
//! that no process of an execution outlives the broker that started it.
//!
//! The broker cannot promise that on its own: `kill -9` of the broker at the wrong instant
//! (after the CLI started, before its pid reached the database) leaves a CLI nobody knows about,
//! and a broker that is SIGSTOPped or partitioned from a shared database cannot stop its CLIs
//! before its lease passes to another broker. So each CLI runs as the child of a supervisor, in
//! the supervisor's process group, and the supervisor kills that whole group when
//!
//! * its **lifeline** closes: the broker holds the write end of a pipe whose read end is the
//!   supervisor's fd 3; the kernel closes it when the broker dies, however it dies;
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

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// The file descriptor on which the supervisor finds the read end of its lifeline.
pub const LIFELINE_FD: RawFd = 3;

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
}

impl SupervisorSpec {
    /// A supervisor run by `program`, with claims in `run_dir`, without a heartbeat deadline.
    pub fn new(program: impl Into<PathBuf>, run_dir: Option<PathBuf>) -> Self {
        SupervisorSpec {
            program: program.into(),
            run_dir,
            heartbeat: None,
            grace: Duration::from_secs(5),
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

    /// The command line that runs `program args…` under this supervisor. `lifeline` says
    /// whether the caller passes a lifeline on fd 3 (headless runs) or the supervisor must watch
    /// this process instead (tmux panes); `claim` names the claim file, if any.
    pub fn wrap(
        &self,
        program: &Path,
        args: &[String],
        lifeline: bool,
        claim: Option<&Path>,
    ) -> (PathBuf, Vec<String>) {
        let mut out = vec![SUPERVISE_FLAG.to_owned()];
        if lifeline {
            out.extend(["--lifeline-fd".to_owned(), LIFELINE_FD.to_string()]);
        } else {
            let me = std::process::id() as i32;
            let start = procfs::start_time(me).unwrap_or(0);
            out.extend(["--parent".to_owned(), format!("{me}:{start}")]);
        }
        if let Some(hb) = self.heartbeat {
            out.extend(["--heartbeat-ms".to_owned(), hb.as_millis().to_string()]);
        }
        out.extend(["--grace-ms".to_owned(), self.grace.as_millis().to_string()]);
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
    /// The read end, for the child (moved to fd 3 between fork and exec).
    pub(crate) read: OwnedFd,
    /// The write end; dropping it tells the supervisor the run is over.
    pub(crate) _write: OwnedFd,
}

impl Lifeline {
    /// Both ends close on exec, so no other child of the broker inherits either; the read end is
    /// duplicated onto fd 3 (which clears the flag) only in the supervisor's own fork.
    pub fn new() -> std::io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        Ok(Lifeline {
            read,
            _write: write,
        })
    }

    /// The raw read end, for the pre-exec hook.
    pub(crate) fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Closes our copy of the read end once the supervisor has its own, keeping the write end.
    pub(crate) fn into_write_end(self) -> OwnedFd {
        self._write
    }
}

/// Between fork and exec of the supervisor: puts the lifeline's read end on fd 3 without the
/// close-on-exec flag. Only async-signal-safe calls.
pub(crate) fn install_lifeline(read: RawFd) -> std::io::Result<()> {
    // SAFETY: dup2 and fcntl are async-signal-safe and touch only file descriptors.
    unsafe {
        if read == LIFELINE_FD {
            if libc::fcntl(read, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        } else if libc::dup2(read, LIFELINE_FD) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Tells the supervisor leading process group `pid` that the broker is alive.
pub fn heartbeat(pid: i32) -> bool {
    signal::kill(Pid::from_raw(pid), Signal::SIGUSR1).is_ok()
}

static HEARTBEATS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_heartbeat(_: libc::c_int) {
    HEARTBEATS.fetch_add(1, Ordering::Relaxed);
}

/// What the supervisor watches, from its command line.
#[derive(Debug, Default)]
struct Options {
    lifeline: Option<RawFd>,
    parent: Option<(i32, i64)>,
    heartbeat: Option<Duration>,
    grace: Option<Duration>,
    claim: Option<PathBuf>,
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
    let _ = writeln!(std::io::stderr(), "kokino supervisor: {message}");
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
            "usage: {SUPERVISE_FLAG} [--lifeline-fd N] [--parent PID:START] [--heartbeat-ms MS] [--claim PATH] -- <program> [args…]  |  {GUARD_FLAG} <deadline_ms> -- <program> [args…]"
        ));
        std::process::exit(2)
    };
    // SAFETY: the handler only touches an atomic, which is async-signal-safe; ignoring a
    // signal is always safe.
    unsafe {
        let _ = signal::signal(Signal::SIGUSR1, SigHandler::Handler(on_heartbeat));
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGPIPE,
        ] {
            let _ = signal::signal(s, SigHandler::SigIgn);
        }
    }
    if let Some(fd) = opts.lifeline {
        // The CLI must not hold the lifeline: only the broker's death may close it.
        // SAFETY: sets a flag on a descriptor we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
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
    let mut cmd = Command::new(&opts.program[0]);
    cmd.args(&opts.program[1..]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            for s in [
                libc::SIGTERM,
                libc::SIGINT,
                libc::SIGHUP,
                libc::SIGUSR1,
                libc::SIGPIPE,
            ] {
                libc::signal(s, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            say(format_args!("cannot start {}: {e}", opts.program[0]));
            remove_claim(opts.claim.as_deref());
            std::process::exit(127)
        }
    };
    let mut seen = HEARTBEATS.load(Ordering::Relaxed);
    let mut last = Instant::now();
    let mut ticks: u32 = 0;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                // What the CLI started (tools, MCP servers) goes with it, before this
                // supervisor ends: once it has ended, a broker that dies would leave them
                // to nobody.
                let grace = opts.grace.unwrap_or(Duration::from_secs(5));
                end_leftovers(group, grace, &opts);
                exit_like(status)
            }
            Ok(None) => {}
            Err(_) => std::process::exit(1),
        }
        let now = HEARTBEATS.load(Ordering::Relaxed);
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
            kill_own_group(&mut child, group, grace);
        }
        ticks = ticks.wrapping_add(1);
        // A watchdog's tick: the deadlines are seconds, so 20 ms of slack is nothing.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM to our own group (the CLI, its tools, and this supervisor, which ignores it), a
/// grace, then SIGKILL to the group, which ends the supervisor too.
fn kill_own_group(child: &mut std::process::Child, group: i32, grace: Duration) -> ! {
    let _ = signal::killpg(Pid::from_raw(group), Signal::SIGTERM);
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if matches!(child.try_wait(), Ok(Some(_))) && !others_alive(group) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = signal::killpg(Pid::from_raw(group), Signal::SIGKILL);
    std::process::exit(137)
}

/// After the CLI exited: SIGTERM to what is left of the group, up to `grace` (cut short when the
/// broker goes away), then SIGKILL to each remaining member by pid (a SIGKILL to the group would
/// end this supervisor before it could report the CLI's status), until none is left.
fn end_leftovers(group: i32, grace: Duration, opts: &Options) {
    if !others_alive(group) {
        return;
    }
    let _ = signal::killpg(Pid::from_raw(group), Signal::SIGTERM);
    let until = Instant::now() + grace;
    while others_alive(group) && Instant::now() < until {
        if opts.lifeline.is_some_and(lifeline_closed) || parent_gone(opts.parent) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let me = std::process::id() as i32;
    let hard = Instant::now() + Duration::from_secs(2);
    while others_alive(group) && Instant::now() < hard {
        for pid in procfs::group_members(group) {
            if pid != me {
                let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the group has live members besides this supervisor.
fn others_alive(group: i32) -> bool {
    let me = std::process::id() as i32;
    procfs::group_members(group)
        .into_iter()
        .any(|p| p != me && procfs::is_live(p))
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
    let (owner_pid, owner_start) = owner
        .or_else(|| {
            let ppid = nix::unistd::getppid().as_raw();
            procfs::start_time(ppid).map(|s| (ppid, s))
        })
        .unwrap_or((0, 0));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{group} {start} {owner_pid} {owner_start}\n"))?;
    std::fs::rename(&tmp, path)
}

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
    /// The process group the claim named.
    pub pgid: i32,
    /// Whether a live process of it was killed.
    pub killed: bool,
}

/// Reads the claim files in `run_dir` whose broker is gone, kills what is left of their groups
/// ([`procfs::kill_recorded_group`]'s rule), waits until those groups are empty (at most a few
/// seconds), and removes the claims. Claims of a broker that is still alive (another broker
/// sharing the directory) are left alone.
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
        let killed = procfs::kill_recorded_group(pgid, start);
        wait_group_gone(pgid, Duration::from_secs(5));
        let _ = std::fs::remove_file(&path);
        found.push(Leftover { pgid, killed });
    }
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
    fn claims_round_trip() {
        assert_eq!(parse_claim("10 20 30 40\n"), Some((10, 20, 30, 40)));
        assert_eq!(parse_claim("10 20"), None);
    }
}
