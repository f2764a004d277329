//! The lease guard: a tiny watchdog process between the executor and a CLI, used when several
//! brokers share one database.
//!
//! A broker that owns an agent's lease must stop that agent's CLI before the lease can expire,
//! even if the broker itself cannot act — SIGSTOPped, swapped out, partitioned from the
//! database — because another broker will then take the lease and start the agent again. The
//! guard runs the CLI as its child, in the same process group, and kills the whole group when no
//! heartbeat (SIGUSR1 from the broker) arrived within its deadline. The broker sends a heartbeat
//! *before* each lease renewal, so the guard's deadline always falls before the lease's expiry
//! as the database computes it (see `docs/ops/SCALING.md`).
//!
//! The guard ignores SIGTERM, SIGINT and SIGHUP: a cancel signals the whole group, the CLI
//! handles it, and the guard then exits with the CLI's own status, which the executor reads as
//! the CLI's. SIGKILL to the group still ends both.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::Pid;

/// The first argument that makes a binary act as the guard (the broker binary checks for it
/// before parsing its own flags).
pub const GUARD_FLAG: &str = "--kokino-lease-guard";

/// How the executor starts a CLI under a guard.
#[derive(Debug, Clone)]
pub struct GuardSpec {
    /// A binary that runs [`run_guard`] when called with [`GUARD_FLAG`] (the broker itself).
    pub program: PathBuf,
    /// Kill the group when no heartbeat arrived for this long.
    pub deadline: Duration,
}

impl GuardSpec {
    /// The command line that runs `program args…` under this guard.
    pub fn wrap(&self, program: &std::path::Path, args: &[String]) -> (PathBuf, Vec<String>) {
        let mut out = vec![
            GUARD_FLAG.to_owned(),
            self.deadline.as_millis().to_string(),
            "--".to_owned(),
            program.display().to_string(),
        ];
        out.extend(args.iter().cloned());
        (self.program.clone(), out)
    }
}

/// Tells the guard leading process group `pid` that the broker is alive.
pub fn heartbeat(pid: i32) -> bool {
    signal::kill(Pid::from_raw(pid), Signal::SIGUSR1).is_ok()
}

static HEARTBEATS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_heartbeat(_: libc::c_int) {
    HEARTBEATS.fetch_add(1, Ordering::Relaxed);
}

/// The guard's main: `args` are what follows [`GUARD_FLAG`]: `<deadline_ms> -- <program>
/// <args…>`. Never returns.
pub fn run_guard(args: &[String]) -> ! {
    let usage = || -> ! {
        eprintln!("usage: {GUARD_FLAG} <deadline_ms> -- <program> [args…]");
        std::process::exit(2)
    };
    let deadline = match args.first().and_then(|d| d.parse::<u64>().ok()) {
        Some(ms) if ms > 0 => Duration::from_millis(ms),
        _ => usage(),
    };
    if args.get(1).map(String::as_str) != Some("--") || args.len() < 3 {
        usage();
    }
    // SAFETY: the handlers only touch an atomic, which is async-signal-safe.
    unsafe {
        let _ = signal::signal(Signal::SIGUSR1, SigHandler::Handler(on_heartbeat));
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            let _ = signal::signal(s, SigHandler::SigIgn);
        }
    }
    let mut cmd = Command::new(&args[2]);
    cmd.args(&args[3..]);
    // The CLI must not inherit the ignored signals: restore their defaults in the child.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
                libc::signal(s, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kokino lease guard: cannot start {}: {e}", args[2]);
            std::process::exit(127)
        }
    };
    let mut seen = HEARTBEATS.load(Ordering::Relaxed);
    let mut last = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                use std::os::unix::process::ExitStatusExt;
                let code = status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
                std::process::exit(code)
            }
            Ok(None) => {}
            Err(_) => std::process::exit(1),
        }
        let now = HEARTBEATS.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            last = Instant::now();
        }
        if last.elapsed() >= deadline {
            eprintln!(
                "kokino lease guard: no heartbeat from the broker for {} ms; stopping the CLI so that its lease can pass to another broker",
                deadline.as_millis()
            );
            // Our own group: the CLI, its tools, and this guard (which ignores SIGTERM). A
            // short SIGTERM grace lets the CLI end cleanly; it still ends well before the lease
            // expires (the deadline is two thirds of the lease, the grace a sixth at most).
            let group = nix::unistd::getpgrp();
            let _ = signal::killpg(group, Signal::SIGTERM);
            let grace = (deadline / 4).min(Duration::from_secs(2));
            let until = Instant::now() + grace;
            while Instant::now() < until {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = signal::killpg(group, Signal::SIGKILL);
            std::process::exit(137)
        }
        // A watchdog's tick: the deadline is seconds, so 20 ms of slack is nothing.
        std::thread::sleep(Duration::from_millis(20));
    }
}
