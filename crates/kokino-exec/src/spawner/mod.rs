//! The spawner: one long-lived process per broker that starts every headless CLI as its own
//! child, so that no CLI outlives the broker, without a supervisor process per execution.
//!
//! A per-execution supervisor ([`crate::supervisor`]) gives that guarantee too, but it is one
//! more `exec` and exit per execution: on a small VM about 1.5–2 ms of CPU, more than a quick
//! CLI itself spends. The spawner keeps the supervisor's rules and pays for them once:
//!
//! * **Lifeline.** The broker talks to it over a `SOCK_SEQPACKET` socket pair whose broker end
//!   only the broker holds; when the broker dies, however it dies, the spawner reads end of file
//!   and ends every CLI's group and every descendant of its own (SIGTERM, a short grace,
//!   SIGKILL). With a heartbeat deadline (several brokers on one database) a missed heartbeat
//!   does the same, so a stalled broker's CLIs end before its leases pass on.
//! * **No CLI unknown to both.** The spawner starts a CLI only when asked, writes its claim
//!   file right after, and every CLI carries [`crate::supervisor::MARK_VAR`] naming the spawner
//!   and the broker's run directory: if broker and spawner die together, the next broker kills
//!   what the claims and the marks name, as it does for supervisors.
//! * **Daemons.** The spawner is a child subreaper: what a CLI starts and orphans comes to it.
//!   Each CLI also carries [`RUN_VAR`] (the spawner and the run), so when a CLI exits the spawner
//!   ends the rest of its group and the orphans marked with its run, and only then reports the
//!   exit: a run still never ends while a process of it lives.
//!
//! The broker signals a CLI's group itself (cancel, timeouts), as it does any group, and learns
//! of the exit from the spawner. If the spawner dies, its runs end as if their CLI had been
//! killed: the broker ends their groups and the processes marked with the dead spawner, and the
//! next execution starts a new spawner. A request the socket cannot carry (an environment of
//! hundreds of kilobytes), or a spawner that cannot be started, falls back to a supervisor for
//! that execution.

mod server;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::socket::{
    recv, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

pub use server::{run_spawner, SPAWNER_FLAG};

/// The variable every CLI started by a spawner carries: `<spawner pid>:<run id>`. Inherited by
/// what the CLI starts, it tells the spawner which run an adopted orphan belongs to.
pub const RUN_VAR: &str = "KOKINO_SPAWNED";

/// How a broker starts its spawner: the program (one that runs [`run_spawner`] when called with
/// [`SPAWNER_FLAG`]) and its options.
pub struct Spawner {
    program: PathBuf,
    options: Vec<String>,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
}

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawner")
            .field("program", &self.program)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Why a CLI was not started through the spawner.
#[derive(Debug)]
pub(crate) enum SpawnError {
    /// The spawner cannot take this request (not running, cannot be started, the request is too
    /// large): start the CLI some other way.
    Unavailable(String),
    /// The spawner tried and the CLI could not be started: a spawn error of the run.
    Failed {
        /// The operating system's error number.
        errno: i32,
        /// What the spawner said.
        message: String,
    },
}

/// A CLI the spawner started, and the broker's ends of its stdin, stdout and stderr.
pub(crate) struct Spawned {
    pub(crate) cli: Remote,
    pub(crate) stdin: pipe::Sender,
    pub(crate) stdout: pipe::Receiver,
    pub(crate) stderr: pipe::Receiver,
}

impl Spawner {
    /// A spawner run by `program`, with claim files in `claims`, the mark's scope `scope`, an
    /// optional heartbeat deadline, and `grace` for what a CLI leaves behind. It starts with the
    /// first CLI.
    pub(crate) fn new(
        program: PathBuf,
        claims: Option<&Path>,
        scope: Option<&str>,
        heartbeat: Option<std::time::Duration>,
        grace: std::time::Duration,
    ) -> Spawner {
        let mut options = vec!["--grace-ms".to_owned(), grace.as_millis().to_string()];
        if let Some(hb) = heartbeat {
            options.extend(["--heartbeat-ms".to_owned(), hb.as_millis().to_string()]);
        }
        if let Some(dir) = claims {
            options.extend(["--claims".to_owned(), dir.display().to_string()]);
        }
        if let Some(scope) = scope {
            options.extend(["--scope".to_owned(), scope.to_owned()]);
        }
        Spawner {
            program,
            options,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// Starts the spawner now rather than with the first CLI, so the first execution does not
    /// wait for it. Returns its pid.
    pub async fn start(&self) -> Result<i32, String> {
        Ok(self.connection().await?.pid)
    }

    async fn connection(&self) -> Result<Arc<Conn>, String> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.gone()) {
            return Ok(c.clone());
        }
        let conn = self.launch()?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    fn launch(&self) -> Result<Arc<Conn>, String> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(|e| format!("cannot create the spawner's socket: {e}"))?;
        // The spawner's end blocks (it polls); ours does not (tokio reads it). Only the
        // spawner's end is inheritable, and only until the spawn below: the broker's end never
        // is, so the broker's death alone closes it.
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let fd = theirs.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            libc::fcntl(fd, libc::F_SETFD, 0);
        }
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.arg(SPAWNER_FLAG)
            .arg("--socket-fd")
            .arg(theirs.as_raw_fd().to_string())
            .args(&self.options)
            // It needs nothing of the broker's environment (each request carries the CLI's
            // whole environment), and must not hold its secrets (a token, a database URL).
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            // What it says (a broker gone, a heartbeat missed) goes where the broker's own
            // messages go.
            .stderr(std::process::Stdio::inherit())
            // Its own group, so a Ctrl-C meant for the broker does not reach it.
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the spawner {}: {e}", self.program.display()))?;
        drop(theirs);
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        // SAFETY: `ours` is an owned socket that lives exactly as long as the `AsyncFd`, which
        // nothing else registers or closes.
        let fd = unsafe { AsyncFd::register(ours) }
            .map_err(|e| format!("cannot watch the spawner's socket: {}", e.into_parts().1))?;
        let conn = Arc::new(Conn {
            fd,
            pid,
            next: AtomicU64::new(1),
            state: Mutex::new(ConnState::default()),
        });
        tokio::spawn(read_loop(conn.clone(), child));
        tracing::debug!(pid, "started the spawner");
        Ok(conn)
    }

    /// Starts `program args…` with exactly `env`, in `cwd`, in a process group of its own.
    pub(crate) async fn spawn(
        &self,
        program: &Path,
        args: &[String],
        env: &BTreeMap<String, String>,
        cwd: Option<&Path>,
    ) -> Result<Spawned, SpawnError> {
        let conn = self.connection().await.map_err(SpawnError::Unavailable)?;
        let id = conn.next.fetch_add(1, Ordering::Relaxed);
        let pipe = |what: &str| {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| {
                SpawnError::Unavailable(format!("cannot create the CLI's {what}: {e}"))
            })
        };
        let (stdin_r, stdin_w) = pipe("stdin")?;
        let (stdout_r, stdout_w) = pipe("stdout")?;
        let (stderr_r, stderr_w) = pipe("stderr")?;
        let argc = args.len().to_string();
        let env: Vec<Vec<u8>> = env
            .iter()
            .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
            .collect();
        let id_text = id.to_string();
        let mut fields: Vec<&[u8]> = vec![
            id_text.as_bytes(),
            program.as_os_str().as_bytes(),
            cwd.map_or(&b""[..], |c| c.as_os_str().as_bytes()),
            argc.as_bytes(),
        ];
        fields.extend(args.iter().map(|a| a.as_bytes()));
        fields.extend(env.iter().map(Vec::as_slice));
        let msg = wire::encode(wire::SPAWN, &fields);
        if msg.len() > wire::MAX_MESSAGE {
            return Err(SpawnError::Unavailable(format!(
                "a spawn request of {} bytes is over the spawner's limit",
                msg.len()
            )));
        }
        let (started_tx, started_rx) = oneshot::channel();
        let (exit_tx, exit_rx) = oneshot::channel();
        {
            let mut st = conn.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.gone {
                return Err(SpawnError::Unavailable("the spawner is gone".into()));
            }
            st.spawns.insert(id, started_tx);
            st.exits.insert(id, exit_tx);
        }
        let fds = [
            stdin_r.as_raw_fd(),
            stdout_w.as_raw_fd(),
            stderr_w.as_raw_fd(),
        ];
        if let Err(e) = conn.send(&msg, &fds).await {
            conn.forget(id);
            return Err(SpawnError::Unavailable(format!(
                "cannot send the spawner a request: {e}"
            )));
        }
        // The spawner has its own copies now; ours would keep the CLI's stdout open forever.
        drop((stdin_r, stdout_w, stderr_w));
        let (pid, start) = match started_rx.await {
            Ok(Reply::Started(pid, start)) => (pid, start),
            Ok(Reply::Failed(errno, message)) => return Err(SpawnError::Failed { errno, message }),
            Err(_) => {
                return Err(SpawnError::Unavailable(
                    "the spawner ended before it answered".into(),
                ))
            }
        };
        let opened = |e: std::io::Error| {
            SpawnError::Unavailable(format!("cannot watch the CLI's pipes: {e}"))
        };
        let stdin = pipe::Sender::from_owned_fd(stdin_w).map_err(opened)?;
        let stdout = pipe::Receiver::from_owned_fd(stdout_r).map_err(opened)?;
        let stderr = pipe::Receiver::from_owned_fd(stderr_r).map_err(opened)?;
        Ok(Spawned {
            cli: Remote {
                pid,
                start,
                id,
                conn,
                exit: Some(exit_rx),
                status: None,
            },
            stdin,
            stdout,
            stderr,
        })
    }
}

/// A CLI started by the spawner: the broker waits for its exit through the spawner.
pub(crate) struct Remote {
    /// The CLI's pid, which is also its process group.
    pub(crate) pid: i32,
    /// Its start time (clock ticks since boot).
    pub(crate) start: i64,
    id: u64,
    conn: Arc<Conn>,
    exit: Option<oneshot::Receiver<i32>>,
    /// The outcome, once known: the status, or `None` when the spawner ended first.
    status: Option<Option<ExitStatus>>,
}

impl Remote {
    /// The spawner's pid: the process that watches this CLI for the broker.
    pub(crate) fn watchdog(&self) -> i32 {
        self.conn.pid
    }

    /// Waits until the CLI exited and what it left behind is gone. An error means the spawner
    /// ended first: the CLI may still be alive, and nobody reports on it any more.
    pub(crate) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        if self.status.is_none() {
            let got = match self.exit.as_mut() {
                Some(rx) => rx.await.ok().map(ExitStatus::from_raw),
                None => None,
            };
            self.exit = None;
            self.status = Some(got);
        }
        match self.status {
            Some(Some(s)) => Ok(s),
            _ => Err(std::io::Error::other("the spawner ended before the CLI")),
        }
    }

    /// Asks the spawner to SIGKILL what is left of this run at once, without the grace.
    pub(crate) async fn kill_now(&self) {
        let msg = wire::encode(wire::KILL, &[self.id.to_string().as_bytes()]);
        let _ = self.conn.send(&msg, &[]).await;
    }
}

enum Reply {
    Started(i32, i64),
    Failed(i32, String),
}

#[derive(Default)]
struct ConnState {
    gone: bool,
    spawns: HashMap<u64, oneshot::Sender<Reply>>,
    exits: HashMap<u64, oneshot::Sender<i32>>,
}

/// The broker's end of one spawner's socket.
struct Conn {
    fd: AsyncFd<OwnedFd>,
    pid: i32,
    next: AtomicU64,
    state: Mutex<ConnState>,
}

impl Conn {
    fn gone(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).gone
    }

    fn forget(&self, id: u64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.spawns.remove(&id);
        st.exits.remove(&id);
    }

    async fn send(&self, msg: &[u8], fds: &[i32]) -> std::io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            let sent = guard.try_io(|fd| {
                let cmsg = [ControlMessage::ScmRights(fds)];
                let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
                sendmsg::<()>(
                    fd.as_raw_fd(),
                    &[IoSlice::new(msg)],
                    cmsgs,
                    MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                    None,
                )
                .map_err(std::io::Error::from)
            });
            // `Err` is "would block": the readiness was cleared, wait for it again.
            if let Ok(r) = sent {
                return r.map(|_| ());
            }
        }
    }

    fn dispatch(&self, msg: &[u8]) {
        let Some((tag, fields)) = wire::decode(msg) else {
            tracing::warn!("the spawner sent a malformed message");
            return;
        };
        let Some(id) = wire::number::<u64>(fields.first()) else {
            return;
        };
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match tag {
            wire::STARTED => {
                let pid = wire::number(fields.get(1)).unwrap_or(0);
                let start = wire::number(fields.get(2)).unwrap_or(0);
                if let Some(tx) = st.spawns.remove(&id) {
                    let _ = tx.send(Reply::Started(pid, start));
                }
            }
            wire::FAILED => {
                let errno = wire::number(fields.get(1)).unwrap_or(libc::EIO);
                let message = fields
                    .get(2)
                    .map(|m| String::from_utf8_lossy(m).into_owned())
                    .unwrap_or_default();
                st.exits.remove(&id);
                if let Some(tx) = st.spawns.remove(&id) {
                    let _ = tx.send(Reply::Failed(errno, message));
                }
            }
            wire::EXITED => {
                let raw = wire::number(fields.get(1)).unwrap_or(0);
                if let Some(tx) = st.exits.remove(&id) {
                    let _ = tx.send(raw);
                }
            }
            other => tracing::warn!(tag = other, "the spawner sent an unknown message"),
        }
    }

    /// The spawner is gone: every waiting spawn and exit learns it (their senders drop).
    fn fail_all(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.gone = true;
        st.spawns.clear();
        st.exits.clear();
    }

    /// One message, if one is waiting: `Ok(None)` when none is, an error or end of file when the
    /// spawner is gone.
    fn try_recv(&self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        match recv(self.fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => Ok(Some(n)),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Reads the spawner's messages until it is gone, then fails what still waits on it and reaps
/// it.
async fn read_loop(conn: Arc<Conn>, mut child: tokio::process::Child) {
    let mut buf = vec![0u8; wire::MAX_MESSAGE];
    loop {
        tokio::select! {
            ready = conn.fd.readable() => {
                let Ok(mut guard) = ready else { break };
                match conn.try_recv(&mut buf) {
                    Ok(Some(n)) => conn.dispatch(&buf[..n]),
                    Ok(None) => guard.clear_ready(),
                    Err(_) => break,
                }
            }
            _ = child.wait() => {
                // What it sent before it ended is still in the socket.
                while let Ok(Some(n)) = conn.try_recv(&mut buf) {
                    conn.dispatch(&buf[..n]);
                }
                break;
            }
        }
    }
    conn.fail_all();
    tracing::warn!(pid = conn.pid, "the spawner ended; its runs are stopped");
    let _ = child.wait().await;
}
