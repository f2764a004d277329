//! The spawner process: started once per broker, it starts every headless CLI as its own child
//! and makes sure none outlives the broker (see the module above for the why).
//!
//! It is single-threaded and blocks in `poll` on two descriptors: the socket to the broker (a
//! request, or its end of file: the broker is gone) and a self-pipe its SIGCHLD handler writes
//! to (a child exited). Heartbeats (SIGUSR1) are counted by a handler, and the deadlines (the
//! heartbeat's, the grace of a run's leftovers) are checked on every wake-up, which comes at
//! least every [`TICK`] while something is pending.

use std::collections::{HashMap, VecDeque};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::unistd::Pid;

use super::wire;
use super::RUN_VAR;
use crate::procfs;
use crate::supervisor::{
    become_subreaper, cloexec_inherited, heartbeats, mark, say_as, signal_each, watchdog_signals,
    write_claim_in_place, MARK_VAR,
};

/// Writes to stderr (the broker's) without ever panicking: a broker killed with SIGKILL no
/// longer reads it, and that is exactly when the spawner must act.
fn say(message: std::fmt::Arguments<'_>) {
    say_as("spawner", message);
}

/// The flag that makes a binary the spawner (the broker and `kokino-supervisor` check for it).
pub const SPAWNER_FLAG: &str = "--kokino-spawner";

/// How often deadlines are checked while a run's leftovers are ending or a heartbeat is due.
const TICK: Duration = Duration::from_millis(10);

/// The write end of the self-pipe, for the SIGCHLD handler.
static CHILD_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_child(_: libc::c_int) {
    let fd = CHILD_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; a full pipe (EAGAIN) already says enough.
        unsafe {
            libc::write(fd, b"c".as_ptr().cast(), 1);
        }
    }
}

#[derive(Debug)]
struct Options {
    socket: RawFd,
    heartbeat: Option<Duration>,
    grace: Duration,
    claims: Option<PathBuf>,
    scope: Option<String>,
}

fn parse(args: &[String]) -> Option<Options> {
    let mut o = Options {
        socket: -1,
        heartbeat: None,
        grace: Duration::from_secs(5),
        claims: None,
        scope: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--socket-fd" => o.socket = it.next()?.parse().ok()?,
            "--heartbeat-ms" => {
                let ms = it.next()?.parse::<u64>().ok().filter(|ms| *ms > 0)?;
                o.heartbeat = Some(Duration::from_millis(ms));
            }
            "--grace-ms" => o.grace = Duration::from_millis(it.next()?.parse().ok()?),
            "--claims" => o.claims = Some(PathBuf::from(it.next()?)),
            "--scope" => o.scope = Some(it.next()?.clone()),
            _ => return None,
        }
    }
    (o.socket >= 0).then_some(o)
}

/// One CLI the spawner started.
#[derive(Debug)]
struct Run {
    id: u64,
    pid: i32,
    /// The claim slot naming this run's group (see [`ClaimSlots`]).
    claim: Option<u32>,
    /// The raw wait status, once the CLI exited.
    status: Option<i32>,
    /// When what the CLI left behind gets SIGKILL; set when its leftovers got SIGTERM.
    kill_at: Option<Instant>,
    /// Set once SIGKILL went out: after this, the run is reported even if something lingers.
    give_up_at: Option<Instant>,
    /// The broker asked for no grace.
    hurry: bool,
}

struct Spawner {
    opts: Options,
    me: i32,
    /// The value of [`MARK_VAR`] every CLI gets.
    mark: String,
    /// The broker, for the claim files.
    owner: Option<(i32, i64)>,
    runs: HashMap<i32, Run>,
    claims: ClaimSlots,
    /// Replies not yet taken by the socket. Sends never block: a stalled broker (SIGSTOP, a
    /// full socket) must not stop the spawner from noticing exits, end of file or a missed
    /// heartbeat.
    outbox: VecDeque<Vec<u8>>,
    seen_heartbeats: u64,
    last_heartbeat: Instant,
}

/// The claim files of this spawner's runs, reused: a run takes a free slot (or a new one) and
/// gives it back when it ends.
#[derive(Default)]
struct ClaimSlots {
    free: Vec<u32>,
    /// Slots handed out so far, all named `<spawner pid>-slot<n>.claim` for `n` below it.
    next: u32,
}

impl ClaimSlots {
    fn take(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }
}

fn claim_path(dir: &Path, me: i32, slot: u32) -> PathBuf {
    dir.join(format!("{me}-slot{slot}.claim"))
}

/// The spawner's main: `args` is what follows [`SPAWNER_FLAG`]. Never returns.
pub fn run_spawner(args: &[String]) -> ! {
    let Some(opts) = parse(args) else {
        say(format_args!(
            "usage: {SPAWNER_FLAG} --socket-fd N [--heartbeat-ms MS] [--grace-ms MS] [--claims DIR] [--scope DIR]"
        ));
        std::process::exit(2)
    };
    let (child_read, child_write) =
        match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK) {
            Ok(p) => p,
            Err(e) => {
                say(format_args!("cannot create the spawner's pipe: {e}"));
                std::process::exit(1)
            }
        };
    CHILD_PIPE.store(child_write.as_raw_fd(), Ordering::Relaxed);
    // The supervisor's rules: heartbeats counted, the CLIs' signals outlived (only the broker's
    // death, or a missed heartbeat, may end the runs), and no CLI inherits anything of ours
    // beyond the three descriptors it is given: not the socket to the broker (a CLI holding it
    // could write requests), nor the self-pipe. Orphans of the CLIs' descendants come here.
    watchdog_signals();
    // SAFETY: the handler only calls write(2), which is async-signal-safe.
    unsafe {
        let _ = signal::signal(Signal::SIGCHLD, SigHandler::Handler(on_child));
    }
    cloexec_inherited(Some(opts.socket));
    become_subreaper("spawner");
    let me = std::process::id() as i32;
    let start = procfs::start_time(me).unwrap_or(0);
    let ppid = nix::unistd::getppid().as_raw();
    let mut s = Spawner {
        mark: mark(me, start, opts.scope.as_deref()),
        owner: procfs::start_time(ppid).map(|t| (ppid, t)),
        opts,
        me,
        runs: HashMap::new(),
        claims: ClaimSlots::default(),
        outbox: VecDeque::new(),
        seen_heartbeats: 0,
        last_heartbeat: Instant::now(),
    };
    // SAFETY: the descriptor was passed to us by number, for us alone.
    let socket = unsafe { OwnedFd::from_raw_fd(s.opts.socket) };
    let mut buf = vec![0u8; wire::MAX_MESSAGE];
    loop {
        let timeout = s.poll_timeout();
        let mut fds = [
            libc::pollfd {
                fd: socket.as_raw_fd(),
                events: if s.outbox.is_empty() {
                    libc::POLLIN
                } else {
                    libc::POLLIN | libc::POLLOUT
                },
                revents: 0,
            },
            libc::pollfd {
                fd: child_read.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if n > 0 && fds[1].revents != 0 {
            drain(&child_read);
        }
        // Children first: a CLI that exited before the broker's next request is settled in
        // the order things happened.
        s.reap();
        if n > 0 && fds[0].revents & !libc::POLLOUT != 0 {
            match receive(&socket, &mut buf) {
                Received::Message(len, fds) => s.handle(&buf[..len], fds),
                Received::Nothing => {}
                Received::Closed => s.shutdown("the broker is gone (its socket closed)"),
            }
        }
        s.settle();
        s.flush(&socket);
        s.check_heartbeat();
    }
}

/// What one read of the socket gave.
enum Received {
    Message(usize, Vec<OwnedFd>),
    Nothing,
    Closed,
}

fn receive(socket: &OwnedFd, buf: &mut [u8]) -> Received {
    let mut cmsg = nix::cmsg_space!([RawFd; 3]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = match recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(m) => m,
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return Received::Nothing,
        Err(_) => return Received::Closed,
    };
    let mut fds = Vec::new();
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors for us.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Received::Closed;
    }
    if msg.flags.contains(MsgFlags::MSG_TRUNC) {
        // Cannot happen with the broker's own limit; answered as a malformed request.
        return Received::Message(0, fds);
    }
    Received::Message(msg.bytes, fds)
}

fn drain(fd: &OwnedFd) {
    let mut b = [0u8; 64];
    // SAFETY: reads into a local buffer from a non-blocking pipe we own.
    while unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) } > 0 {}
}

impl Spawner {
    /// Forever when nothing is pending; a tick while a run's leftovers end or a heartbeat
    /// deadline runs.
    fn poll_timeout(&self) -> libc::c_int {
        let pending = self.runs.values().any(|r| r.status.is_some());
        let watching = self.opts.heartbeat.is_some() && !self.runs.is_empty();
        if pending || watching {
            TICK.as_millis() as libc::c_int
        } else {
            -1
        }
    }

    /// Queues a reply to the broker.
    fn send(&mut self, tag: u8, fields: &[&[u8]]) {
        self.outbox.push_back(wire::encode(tag, fields));
    }

    /// Sends what the socket takes now, without blocking.
    fn flush(&mut self, socket: &OwnedFd) {
        while let Some(msg) = self.outbox.front() {
            match sendmsg::<()>(
                socket.as_raw_fd(),
                &[IoSlice::new(msg)],
                &[] as &[ControlMessage<'_>],
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(_) => {
                    self.outbox.pop_front();
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return,
                // The broker is gone; its end of file comes next.
                Err(_) => {
                    self.outbox.clear();
                    return;
                }
            }
        }
    }

    fn handle(&mut self, msg: &[u8], fds: Vec<OwnedFd>) {
        let Some((tag, fields)) = wire::decode(msg) else {
            say(format_args!("ignored a malformed request"));
            return;
        };
        let Some(id) = wire::number::<u64>(fields.first()) else {
            say(format_args!("ignored a request without an id"));
            return;
        };
        match tag {
            wire::SPAWN => match self.spawn(id, &fields[1..], fds) {
                Ok(pid) => {
                    let start = procfs::start_time(pid).unwrap_or(0);
                    let run = self.runs.get_mut(&pid).expect("just inserted");
                    if let Some(dir) = &self.opts.claims {
                        let slot = self.claims.take();
                        let path = claim_path(dir, self.me, slot);
                        match write_claim_in_place(&path, pid, start, self.owner) {
                            Ok(()) => run.claim = Some(slot),
                            Err(e) => {
                                self.claims.free.push(slot);
                                say(format_args!("cannot write claim {}: {e}", path.display()))
                            }
                        }
                    }
                    self.send(
                        wire::STARTED,
                        &[
                            id.to_string().as_bytes(),
                            pid.to_string().as_bytes(),
                            start.to_string().as_bytes(),
                        ],
                    );
                }
                Err((errno, message)) => self.send(
                    wire::FAILED,
                    &[
                        id.to_string().as_bytes(),
                        errno.to_string().as_bytes(),
                        message.as_bytes(),
                    ],
                ),
            },
            wire::KILL => {
                if let Some(run) = self.runs.values_mut().find(|r| r.id == id) {
                    run.hurry = true;
                    let _ = signal::killpg(Pid::from_raw(run.pid), Signal::SIGKILL);
                    if run.status.is_some() {
                        run.kill_at = Some(Instant::now());
                    }
                }
            }
            other => say(format_args!("ignored a request tagged {other}")),
        }
    }

    /// Starts one CLI in a process group of its own, with the three descriptors as its stdin,
    /// stdout and stderr.
    fn spawn(&mut self, id: u64, f: &[&[u8]], fds: Vec<OwnedFd>) -> Result<i32, (i32, String)> {
        use std::os::unix::ffi::OsStrExt;
        let os = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_owned();
        let bad = |what: &str| (libc::EINVAL, format!("malformed spawn request: {what}"));
        let [stdin, stdout, stderr]: [OwnedFd; 3] = fds
            .try_into()
            .map_err(|_| bad("it needs three descriptors"))?;
        let (program, cwd, argc) = match f {
            [p, c, n, ..] => (*p, *c, wire::number::<usize>(Some(n))),
            _ => return Err(bad("too few fields")),
        };
        let argc = argc.ok_or_else(|| bad("the argument count"))?;
        let args = f.get(3..3 + argc).ok_or_else(|| bad("the arguments"))?;
        let mut cmd = Command::new(os(program));
        cmd.args(args.iter().map(|a| os(a)))
            .env_clear()
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .process_group(0);
        for kv in &f[3 + argc..] {
            if let Some(eq) = kv.iter().position(|b| *b == b'=') {
                cmd.env(os(&kv[..eq]), os(&kv[eq + 1..]));
            }
        }
        cmd.env(MARK_VAR, &self.mark)
            .env(RUN_VAR, format!("{}:{id}", self.me));
        if !cwd.is_empty() {
            cmd.current_dir(os(cwd));
        }
        // `Command` uses posix_spawn here (no hook between fork and exec). The `Child` is only
        // dropped, never waited for: SIGCHLD and `reap` take care of every child.
        let child = cmd.spawn().map_err(|e| {
            (
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("cannot start {}: {e}", String::from_utf8_lossy(program)),
            )
        })?;
        let pid = child.id() as i32;
        drop(child);
        // Whoever has been asking for spawns is alive.
        self.last_heartbeat = Instant::now();
        self.runs.insert(
            pid,
            Run {
                id,
                pid,
                claim: None,
                status: None,
                kill_at: None,
                give_up_at: None,
                hurry: false,
            },
        );
        Ok(pid)
    }

    /// Reaps every child that exited: a CLI's status is kept for [`Spawner::settle`]; adopted
    /// orphans only needed reaping.
    fn reap(&mut self) {
        loop {
            let mut raw = 0;
            // SAFETY: waitpid writes the status into a local integer.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            if let Some(run) = self.runs.get_mut(&pid) {
                if run.status.is_none() {
                    run.status = Some(raw);
                }
            }
        }
    }

    /// The live processes (not zombies) that a run left behind: its group, and the orphans it
    /// left that came to us (marked with its id, or unmarked when no CLI is running at all).
    fn leftovers(&self, run: &Run) -> Vec<i32> {
        let mut left = Vec::new();
        // One system call in the common case: the group is gone.
        if signal::killpg(Pid::from_raw(run.pid), None).is_ok() {
            left.extend(
                procfs::group_members(run.pid)
                    .into_iter()
                    .filter(|p| procfs::is_live(*p)),
            );
        }
        let adopted = self.adopted();
        if !adopted.is_empty() {
            let mine = format!("{}:{}", self.me, run.id);
            let any_running = self.runs.values().any(|r| r.status.is_none());
            for pid in adopted {
                let owner = procfs::env_var(pid, RUN_VAR);
                let ours = match &owner {
                    Some(o) => *o == mine,
                    // It cleared its environment: nobody can say whose it is until no CLI runs.
                    None => !any_running,
                };
                if ours && procfs::is_live(pid) && !left.contains(&pid) {
                    left.push(pid);
                }
            }
        }
        left
    }

    /// Our children that are not CLIs we started: orphans re-parented to us.
    fn adopted(&self) -> Vec<i32> {
        let path = format!("/proc/{0}/task/{0}/children", self.me);
        let Ok(text) = std::fs::read_to_string(path) else {
            return Vec::new();
        };
        text.split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter(|p| !self.runs.contains_key(p))
            .collect()
    }

    /// Moves every exited run on: reported at once when it left nothing; else its leftovers get
    /// SIGTERM, then SIGKILL after the grace, and the run is reported when they are gone.
    fn settle(&mut self) {
        let exited: Vec<i32> = self
            .runs
            .values()
            .filter(|r| r.status.is_some())
            .map(|r| r.pid)
            .collect();
        let now = Instant::now();
        for pid in exited {
            let left = self.leftovers(&self.runs[&pid]);
            let run = self.runs.get_mut(&pid).expect("listed above");
            if !left.is_empty() {
                match (run.kill_at, run.give_up_at) {
                    (None, _) => {
                        let _ = signal::killpg(Pid::from_raw(run.pid), Signal::SIGTERM);
                        signal_each(&left, Signal::SIGTERM);
                        let grace = if run.hurry {
                            Duration::ZERO
                        } else {
                            self.opts.grace
                        };
                        run.kill_at = Some(now + grace);
                        continue;
                    }
                    (Some(at), None) if now >= at => {
                        let _ = signal::killpg(Pid::from_raw(run.pid), Signal::SIGKILL);
                        signal_each(&left, Signal::SIGKILL);
                        run.give_up_at = Some(now + Duration::from_secs(2));
                        continue;
                    }
                    (Some(_), Some(until)) if now < until => {
                        signal_each(&left, Signal::SIGKILL);
                        continue;
                    }
                    (Some(_), None) => continue,
                    (Some(_), Some(_)) => {
                        say(format_args!(
                            "processes of pid {pid}'s run did not die after SIGKILL: {left:?}"
                        ));
                    }
                }
            }
            let run = self.runs.remove(&pid).expect("listed above");
            if let (Some(slot), Some(dir)) = (run.claim, &self.opts.claims) {
                // Blanked, not removed: the next run writes its claim into the same file,
                // which spares the file system an inode created and deleted per run (ext4
                // scans its recently deleted inodes on every creation). A blank claim names no
                // group, and recovery removes it like any claim it cannot read.
                let path = claim_path(dir, self.me, slot);
                match write_claim_in_place(&path, 0, 0, self.owner) {
                    Ok(()) => self.claims.free.push(slot),
                    Err(_) => {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            self.send(
                wire::EXITED,
                &[
                    run.id.to_string().as_bytes(),
                    run.status.unwrap_or(0).to_string().as_bytes(),
                ],
            );
        }
    }

    fn check_heartbeat(&mut self) {
        let Some(deadline) = self.opts.heartbeat else {
            return;
        };
        let now = heartbeats();
        if now != self.seen_heartbeats || self.runs.is_empty() {
            self.seen_heartbeats = now;
            self.last_heartbeat = Instant::now();
            return;
        }
        if self.last_heartbeat.elapsed() >= deadline {
            self.shutdown(&format!(
                "no heartbeat from the broker for {} ms; stopping its CLIs so that their leases can pass to another broker",
                deadline.as_millis()
            ));
        }
    }

    /// The broker is gone or stalled: every run's group and every descendant of ours gets
    /// SIGTERM, a short grace, then SIGKILL; then the spawner ends.
    fn shutdown(&mut self, why: &str) -> ! {
        // A broker that stopped cleanly ended its runs first: nothing to say then.
        if !self.runs.is_empty() || !self.adopted().is_empty() {
            say(format_args!("{why}"));
        }
        let grace = self
            .opts
            .heartbeat
            .map(|d| d / 4)
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(2));
        let groups: Vec<i32> = self.runs.keys().copied().collect();
        let everything = |me: i32| -> Vec<i32> {
            let mut all: Vec<i32> = Vec::new();
            for &g in &groups {
                for p in procfs::group_and_descendants(g, me) {
                    if !all.contains(&p) {
                        all.push(p);
                    }
                }
            }
            if groups.is_empty() {
                all = procfs::group_and_descendants(0, me);
            }
            all
        };
        for &g in &groups {
            let _ = signal::killpg(Pid::from_raw(g), Signal::SIGTERM);
        }
        signal_each(&everything(self.me), Signal::SIGTERM);
        let until = Instant::now() + grace;
        while Instant::now() < until {
            self.reap();
            if everything(self.me).is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let hard = Instant::now() + Duration::from_secs(2);
        loop {
            self.reap();
            let left = everything(self.me);
            if left.is_empty() || Instant::now() >= hard {
                break;
            }
            for &g in &groups {
                let _ = signal::killpg(Pid::from_raw(g), Signal::SIGKILL);
            }
            signal_each(&left, Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(dir) = &self.opts.claims {
            for slot in 0..self.claims.next {
                let _ = std::fs::remove_file(claim_path(dir, self.me, slot));
            }
        }
        std::process::exit(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_its_options() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let o = parse(&s(&[
            "--socket-fd",
            "5",
            "--heartbeat-ms",
            "900",
            "--claims",
            "/r",
        ]))
        .unwrap();
        assert_eq!(o.socket, 5);
        assert_eq!(o.heartbeat, Some(Duration::from_millis(900)));
        assert_eq!(o.claims.as_deref(), Some(std::path::Path::new("/r")));
        assert!(parse(&s(&["--heartbeat-ms", "9"])).is_none());
        assert!(parse(&s(&["--socket-fd", "5", "--bogus"])).is_none());
    }
}
