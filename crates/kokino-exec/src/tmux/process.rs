//! The pane's process: noticing that it died, and stopping it with everything it started.
//!
//! tmux starts the pane's program in a new session (`setsid`), so the pane pid leads a process
//! group holding the CLI, its tools and their children, exactly like the group `run_headless`
//! creates; stopping it is the same SIGTERM, grace, SIGKILL sequence.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::sleep;

use crate::procfs;

/// Resolves when `pid` has exited.
///
/// The pane process is tmux's child, not ours, so we cannot wait for it; a pidfd
/// (`pidfd_open(2)`, Linux ≥ 5.3) becomes readable the moment it exits, which gives an
/// immediate, event-driven signal. Where pidfds are unavailable, `/proc` is checked every 50 ms.
pub(crate) async fn wait_exit(pid: i32) {
    if pid <= 0 {
        return std::future::pending().await;
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        // SAFETY: the descriptor was just created and is owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open and
        // the same for the AsyncFd's whole life.
        if let Ok(afd) = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) } {
            let _ = afd.readable().await;
            return;
        }
    }
    while procfs::is_live(pid) {
        sleep(Duration::from_millis(50)).await;
    }
}

/// The exit status of `pid` while it is a zombie (exited, not yet reaped by tmux), from field 52
/// of `/proc/<pid>/stat` (`exit_code`, in `waitpid` form, Linux ≥ 3.5): `(code, signal)`.
///
/// tmux's `#{pane_dead_status}` would say the same, but only once tmux has reaped the process,
/// which under load was seen to lag indefinitely (the zombie stayed, the status never came), and
/// tmux 3.3 reports no signal at all. Reading it at the moment the pidfd fires avoids both.
pub(crate) fn zombie_exit(pid: i32) -> Option<(Option<i32>, Option<i32>)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // fields[0] is field 3 (state), so field 52 is fields[49].
    if fields.first() != Some(&"Z") {
        return None;
    }
    let raw: i32 = fields.get(49)?.parse().ok()?;
    let signal = raw & 0x7f;
    Some(if signal == 0 {
        (Some((raw >> 8) & 0xff), None)
    } else {
        (None, Some(signal))
    })
}

/// SIGTERM, `grace`, SIGKILL to the pane's whole group (the shared escalation; the pane process
/// is tmux's child, so there is no leader of ours to reap). A pane whose group is already empty
/// may still have left a daemonized helper behind, if its supervisor was killed with the CLI:
/// that is swept either way.
pub(crate) async fn terminate_group(pgid: i32, grace: Duration) {
    if crate::group::group_alive(pgid) {
        crate::group::terminate_group(pgid, None, grace, pgid).await;
    } else {
        crate::group::sweep_orphans(pgid).await;
    }
}
