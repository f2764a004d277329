//! Short diagnostic commands: `claude --version`, `claude auth status`, `codex login status`.
//!
//! The environment doctor needs to run a CLI for a moment and read what it prints. Those runs
//! go through here rather than through `std::process` in the doctor, because this crate is the
//! only one allowed to start processes and because a probe needs the same care as a real run: a
//! CLI that hangs on `--version` (a wrapper waiting for a network, a `node` stuck on a lock file)
//! must not hang the doctor, and nothing it started may survive the probe.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::time::Instant;

/// How much of each stream a probe keeps. Status and version commands print a few lines; the
/// cap only matters for a misbehaving binary, whose output we must not hold without bound.
pub const PROBE_OUTPUT_LIMIT: usize = 64 * 1024;

/// After the probe's process exited (or was killed), how long we keep reading its pipes. A
/// process that left the group (a daemon that called `setsid`) can hold a pipe open forever;
/// what the probe itself wrote is already in the pipe and arrives at once.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// What a probe printed and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProbeOutput {
    /// The exit code, when the process exited on its own (not when a signal ended it).
    pub exit_code: Option<i32>,
    /// The signal that ended the process, if one did (SIGKILL after a timeout).
    pub signal: Option<i32>,
    /// Standard output, at most [`PROBE_OUTPUT_LIMIT`] bytes, decoded lossily.
    pub stdout: String,
    /// Standard error, at most [`PROBE_OUTPUT_LIMIT`] bytes, decoded lossily.
    pub stderr: String,
    /// Whether either stream was longer than the cap.
    pub truncated: bool,
    /// The process did not finish within the timeout and its group was killed.
    pub timed_out: bool,
    /// The process could not be started at all; the other fields are then empty.
    pub spawn_error: Option<String>,
    /// How long the probe ran.
    pub duration: Duration,
}

impl ProbeOutput {
    /// Started, finished in time, and exited with status 0.
    pub fn success(&self) -> bool {
        self.spawn_error.is_none() && !self.timed_out && self.exit_code == Some(0)
    }

    /// Both streams, stdout first, for commands whose answer may be on either (`codex login
    /// status` prints to stderr).
    pub fn combined(&self) -> String {
        match (self.stdout.trim().is_empty(), self.stderr.trim().is_empty()) {
            (false, false) => format!("{}\n{}", self.stdout.trim_end(), self.stderr.trim_end()),
            (false, true) => self.stdout.clone(),
            _ => self.stderr.clone(),
        }
    }
}

/// Kills the probe's process group if the probe future is dropped half-way (its caller timed
/// out or was cancelled), so that even then nothing is left running.
struct GroupGuard {
    pgid: i32,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            crate::group::signal_group(self.pgid, Signal::SIGKILL);
        }
    }
}

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

/// Reads a stream to its end, keeping the first `limit` bytes. It keeps reading (and dropping)
/// past the cap so that the process never blocks on a full pipe. The buffer is shared so that
/// whatever arrived is still available if the reader has to be abandoned.
async fn read_bounded(
    mut stream: impl AsyncRead + Unpin,
    into: Arc<Mutex<Captured>>,
    limit: usize,
) {
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut c = into.lock().unwrap_or_else(|e| e.into_inner());
                let room = limit.saturating_sub(c.bytes.len());
                if n > room {
                    c.truncated = true;
                }
                let keep = n.min(room);
                c.bytes.extend_from_slice(&chunk[..keep]);
            }
        }
    }
}

fn take(captured: &Arc<Mutex<Captured>>) -> (String, bool) {
    let c = captured.lock().unwrap_or_else(|e| e.into_inner());
    (String::from_utf8_lossy(&c.bytes).into_owned(), c.truncated)
}

fn spawn_message(program: &Path, e: &std::io::Error) -> String {
    match e.kind() {
        // ENOENT from execve also means "the interpreter on the #! line does not exist", which
        // is the usual way an npm-installed CLI breaks (no `node` on PATH).
        std::io::ErrorKind::NotFound => format!(
            "cannot start {}: the file or the interpreter named on its #! line was not found",
            program.display()
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "cannot start {}: permission denied (is it executable by this user?)",
            program.display()
        ),
        _ => format!("cannot start {}: {e}", program.display()),
    }
}

/// Runs `program args…` with exactly `env` (nothing else is inherited), stdin from
/// `/dev/null`, in its own process group, and returns what it printed.
///
/// Never takes much longer than `timeout`: when the time is up the whole group is killed with
/// SIGKILL and reaped. Anything the process left running in its group when it exited is killed
/// too, because a probe must leave nothing behind.
pub async fn run_probe(
    program: &Path,
    args: &[&str],
    env: &BTreeMap<String, String>,
    cwd: Option<&Path>,
    timeout: Duration,
) -> ProbeOutput {
    let started = Instant::now();
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            return ProbeOutput {
                spawn_error: Some(spawn_message(program, &e)),
                duration: started.elapsed(),
                ..ProbeOutput::default()
            }
        }
    };
    // `id()` is only `None` after the child has been reaped, which cannot have happened yet.
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    let mut guard = GroupGuard {
        pgid,
        armed: pgid > 0,
    };

    let out_buf = Arc::new(Mutex::new(Captured::default()));
    let err_buf = Arc::new(Mutex::new(Captured::default()));
    let mut readers = Vec::new();
    if let Some(s) = child.stdout.take() {
        readers.push(tokio::spawn(read_bounded(
            s,
            out_buf.clone(),
            PROBE_OUTPUT_LIMIT,
        )));
    }
    if let Some(s) = child.stderr.take() {
        readers.push(tokio::spawn(read_bounded(
            s,
            err_buf.clone(),
            PROBE_OUTPUT_LIMIT,
        )));
    }

    let (status, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => (status.ok(), false),
        Err(_) => {
            if pgid > 0 {
                crate::group::signal_group(pgid, Signal::SIGKILL);
            }
            (child.wait().await.ok(), true)
        }
    };
    // The process is reaped; leftovers of its group (a forked helper) go now. The group id
    // stays reserved while any member lives, so this cannot reach an unrelated process group;
    // ESRCH is the normal answer.
    if pgid > 0 {
        crate::group::signal_group(pgid, Signal::SIGKILL);
    }
    guard.armed = false;

    let drain_deadline = Instant::now() + DRAIN_AFTER_EXIT;
    for mut reader in readers {
        if tokio::time::timeout_at(drain_deadline, &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
    }
    let (stdout, t1) = take(&out_buf);
    let (stderr, t2) = take(&err_buf);
    ProbeOutput {
        exit_code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        stdout,
        stderr,
        truncated: t1 || t2,
        timed_out,
        spawn_error: None,
        duration: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn env() -> BTreeMap<String, String> {
        let mut e = BTreeMap::new();
        e.insert("PATH".into(), "/usr/bin:/bin".into());
        e
    }

    fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn alive(pid: i32) -> bool {
        crate::procfs::is_live(pid)
    }

    #[tokio::test]
    async fn captures_both_streams_the_exit_code_and_only_the_given_environment() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(
            dir.path(),
            "s",
            "echo out \"$1\" \"${KOKINO_PROBE_TEST_SECRET:-unset}\" \"$PROBE_VAR\"; echo err >&2; exit 3",
        );
        std::env::set_var("KOKINO_PROBE_TEST_SECRET", "leaked");
        let mut e = env();
        e.insert("PROBE_VAR".into(), "given".into());
        let out = run_probe(&p, &["arg"], &e, None, Duration::from_secs(5)).await;
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(out.stdout, "out arg unset given\n");
        assert_eq!(out.stderr, "err\n");
        assert!(!out.timed_out && !out.success());
        assert_eq!(out.combined(), "out arg unset given\nerr");
    }

    #[tokio::test]
    async fn a_hanging_probe_is_killed_with_its_whole_group_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let p = script(
            dir.path(),
            "hang",
            &format!("sleep 100 & echo $$ $! > {}; sleep 100", pids.display()),
        );
        let start = std::time::Instant::now();
        let out = run_probe(&p, &[], &env(), None, Duration::from_millis(300)).await;
        assert!(out.timed_out);
        assert_eq!(out.signal, Some(libc::SIGKILL));
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        let text = std::fs::read_to_string(&pids).unwrap();
        for pid in text.split_whitespace() {
            let pid: i32 = pid.parse().unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while alive(pid) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(!alive(pid), "process {pid} survived the probe");
        }
    }

    #[tokio::test]
    async fn leftovers_of_a_probe_that_exited_are_killed_and_do_not_hold_it_up() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // The background sleep keeps stdout open after the script exits.
        let p = script(
            dir.path(),
            "fork",
            &format!("sleep 100 & echo $! > {}; echo done", pids.display()),
        );
        let start = std::time::Instant::now();
        let out = run_probe(&p, &[], &env(), None, Duration::from_secs(10)).await;
        assert!(start.elapsed() < Duration::from_secs(3));
        assert_eq!(out.exit_code, Some(0));
        assert_eq!(out.stdout, "done\n");
        let pid: i32 = std::fs::read_to_string(&pids)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(pid));
    }

    #[tokio::test]
    async fn output_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(dir.path(), "big", "head -c 1000000 /dev/zero | tr '\\0' x");
        let out = run_probe(&p, &[], &env(), None, Duration::from_secs(10)).await;
        assert_eq!(out.exit_code, Some(0));
        assert_eq!(out.stdout.len(), PROBE_OUTPUT_LIMIT);
        assert!(out.truncated);
    }

    #[tokio::test]
    async fn a_missing_binary_or_interpreter_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let out = run_probe(
            &dir.path().join("nope"),
            &[],
            &env(),
            None,
            Duration::from_secs(1),
        )
        .await;
        assert!(out.spawn_error.unwrap().contains("not found"));

        let p = dir.path().join("node-script");
        std::fs::write(&p, "#!/nonexistent/node\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = run_probe(&p, &[], &env(), None, Duration::from_secs(1)).await;
        assert!(out.spawn_error.unwrap().contains("interpreter"));
    }
}
