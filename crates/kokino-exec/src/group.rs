//! Stopping a process group: the one escalation every executor uses (headless runs, tmux panes,
//! probes' leftovers).

use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::time::{sleep, Instant};

use crate::procfs;

/// Signals a whole group. ESRCH (no such group) is the normal case once everything exited.
/// Groups 0 and 1 are never signalled: 0 would be our own group, 1 init's.
pub(crate) fn signal_group(pgid: i32, signal: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), signal);
    }
}

/// Whether the group has a live (non-zombie) member. A zombie cannot be killed and holds no
/// resources, and in a container whose init does not reap, orphaned zombies would otherwise look
/// alive forever.
pub(crate) fn group_alive(pgid: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // The common case, a group that is gone entirely, is one system call; only a group that
    // still has members (perhaps just zombies) needs the procfs scan.
    if killpg(Pid::from_raw(pgid), None).is_err() {
        return false;
    }
    procfs::group_members(pgid).into_iter().any(procfs::is_live)
}

/// SIGTERM to the whole group, up to `grace` for the leader (`child`, when it is ours to reap)
/// and everything it started to exit, then SIGKILL and reap. Returns once no member is alive, or
/// a bounded time after SIGKILL if the kernel has not finished with them, with the leader's exit
/// status if it was reaped here.
///
/// `watchdog` is the process that watches the group for the broker (its supervisor, which
/// leads it, or the spawner): what is marked with it is swept once it is gone.
pub(crate) async fn terminate_group(
    pgid: i32,
    child: Option<&mut Proc>,
    grace: Duration,
    watchdog: i32,
) -> Option<ExitStatus> {
    signal_group(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    let mut status = None;
    if let Some(child) = child {
        match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(s) => status = s.ok(),
            Err(_) => {
                signal_group(pgid, Signal::SIGKILL);
                child.hurry().await;
                status = child.wait().await.ok();
            }
        }
    }
    // Members that are not our children send no notification when they exit; this escalation
    // is rare, so a modest procfs poll is the simple and reliable way to watch it.
    while group_alive(pgid) {
        if Instant::now() >= deadline {
            signal_group(pgid, Signal::SIGKILL);
            let hard = Instant::now() + Duration::from_secs(2);
            while group_alive(pgid) && Instant::now() < hard {
                sleep(Duration::from_millis(10)).await;
            }
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    sweep_orphans(watchdog).await;
    status
}

/// A process a run waits for: a child of the broker (a supervisor, or a CLI started directly),
/// or a CLI the spawner started, whose exit the spawner reports.
pub(crate) enum Proc {
    /// The broker's own child.
    Local(Child),
    /// The spawner's child.
    Remote(crate::spawner::Remote),
}

impl Proc {
    /// Waits for its exit (for a spawner's CLI: until it and its leftovers are gone).
    pub(crate) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            Proc::Local(c) => c.wait().await,
            Proc::Remote(r) => r.wait().await,
        }
    }

    /// A SIGKILL went to the group: a spawner ends the run's leftovers now rather than after
    /// its grace.
    pub(crate) async fn hurry(&self) {
        if let Proc::Remote(r) = self {
            r.kill_now().await;
        }
    }
}

/// Kills what a supervised CLI started outside its group when its watchdog (the supervisor
/// leading the group, or the spawner) did not live to do it ([`crate::supervisor::kill_orphans_of`]): the SIGKILL
/// above ends a supervisor that was still ending the CLI's daemonized helpers. Run after every
/// forced stop, which is rare, so the scan of `/proc` costs the happy path nothing.
pub(crate) async fn sweep_orphans(watchdog: i32) {
    let killed = tokio::task::spawn_blocking(move || crate::supervisor::kill_orphans_of(watchdog))
        .await
        .unwrap_or_default();
    if !killed.is_empty() {
        tracing::warn!(pids = ?killed, "killed processes that outlived their supervisor");
    }
}
