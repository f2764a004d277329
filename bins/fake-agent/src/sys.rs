//! Process plumbing: unbuffered line output, the witness log, signals and exiting.
//!
//! Everything here is written so that a reader of our stdout sees each event the moment it is
//! produced, and so that the witness log stays correct even when we die from SIGTERM.

use std::ffi::CString;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::json::J;

/// Set by the SIGINT handler; polled by [`wait`] so each personality can react the way its CLI does.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The witness log, opened with `O_APPEND`, or -1. Read from the SIGTERM handler, hence an atomic.
static WITNESS_FD: AtomicI32 = AtomicI32::new(-1);

/// Writes one event line and pushes it to the pipe immediately.
pub fn event(v: &J) {
    let mut line = v.to_line();
    line.push('\n');
    raw(line.as_bytes());
}

/// Writes bytes to stdout without any buffering, exiting quietly if the reader went away.
pub fn raw(bytes: &[u8]) {
    // Each line is handed over in one `write_all` followed by a flush, so a reader never has to
    // wait for a buffer to fill before it sees an event, even a 10 MB one.
    let mut out = io::stdout().lock();
    let res = out.write_all(bytes).and_then(|()| out.flush());
    if let Err(e) = res {
        if e.kind() == io::ErrorKind::BrokenPipe {
            // The reader closed the pipe (the broker gave up on us): nothing useful is left to do.
            exit(141);
        }
        exit(1);
    }
}

/// Writes a line to stderr; errors are ignored because stderr is purely diagnostic.
pub fn err_line(s: &str) {
    let mut e = io::stderr().lock();
    let _ = writeln!(e, "{s}");
    let _ = e.flush();
}

/// Nanoseconds since the Unix epoch using only async-signal-safe calls.
fn unix_nanos() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into the timespec we pass; it is async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    (ts.tv_sec as u128) * 1_000_000_000 + ts.tv_nsec as u128
}

/// Opens `$KOKINO_FAKE_LOG` (if set) and appends `start <pid> <unix_nanos> <cwd> <personality>`.
pub fn witness_start(personality: &str, cwd: &str) {
    let Some(path) = std::env::var_os("KOKINO_FAKE_LOG") else {
        return;
    };
    let Ok(cpath) = CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())) else {
        return;
    };
    // SAFETY: plain open(2) on a NUL-terminated path; the fd is owned by this process until exit.
    let fd = unsafe {
        libc::open(
            cpath.as_ptr(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
            0o644 as libc::c_uint,
        )
    };
    if fd < 0 {
        err_line("kokino-fake-agent: cannot open KOKINO_FAKE_LOG");
        return;
    }
    WITNESS_FD.store(fd, Ordering::SeqCst);
    let line = format!(
        "start {} {} {} {}\n",
        std::process::id(),
        unix_nanos(),
        cwd,
        personality
    );
    write_fd(fd, line.as_bytes());
}

/// One write(2) per line: with `O_APPEND` the kernel positions each write at the end atomically,
/// so concurrent fake agents never interleave inside a line.
fn write_fd(fd: i32, bytes: &[u8]) {
    // SAFETY: writing a valid buffer to a descriptor we opened.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}

/// Appends `end <pid> <unix_nanos>` and closes the log; formats without allocating because the
/// SIGTERM handler calls it. Interactive mode calls it at the end of every turn, so each turn is
/// one `start`/`end` pair and no descriptor accumulates over a long session.
pub fn witness_end() {
    let fd = WITNESS_FD.swap(-1, Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    let mut buf = [0u8; 80];
    let mut len = 0;
    let mut push = |bytes: &[u8]| {
        for &b in bytes {
            if len < buf.len() {
                buf[len] = b;
                len += 1;
            }
        }
    };
    push(b"end ");
    // SAFETY: getpid is always safe and async-signal-safe.
    push_decimal(&mut push, unsafe { libc::getpid() } as u128);
    push(b" ");
    push_decimal(&mut push, unix_nanos());
    push(b"\n");
    write_fd(fd, &buf[..len]);
    // SAFETY: closing the descriptor we opened and just took out of WITNESS_FD; close(2) is
    // async-signal-safe.
    unsafe { libc::close(fd) };
}

fn push_decimal(push: &mut impl FnMut(&[u8]), mut n: u128) {
    let mut digits = [0u8; 40];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    push(&digits[i..]);
}

/// Exits the process after recording the end of the run in the witness log.
pub fn exit(code: i32) -> ! {
    witness_end();
    std::process::exit(code)
}

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

extern "C" fn on_sigterm(_: libc::c_int) {
    // Real claude/codex/droid exit 143 on SIGTERM without printing a terminal event; doing the
    // same here, directly in the handler, works even when the main thread is blocked on a full pipe.
    witness_end();
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(143) };
}

extern "C" fn on_ignored(_: libc::c_int) {}

fn install(sig: libc::c_int, handler: extern "C" fn(libc::c_int)) {
    // SAFETY: installs a handler that only touches atomics and async-signal-safe calls.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// Installs our SIGINT/SIGTERM handling. With `ignore_term`, SIGTERM is caught and dropped: a
/// handler (rather than `SIG_IGN`) is used on purpose, because an ignored disposition would be
/// inherited by the `fake:child` grandchild across exec, while a handler is reset to default.
pub fn install_signals(ignore_term: bool) {
    install(libc::SIGINT, on_sigint);
    if ignore_term {
        install(libc::SIGTERM, on_ignored);
    } else {
        install(libc::SIGTERM, on_sigterm);
    }
}

/// Whether SIGINT arrived since the last call; clears the flag.
pub fn take_interrupt() -> bool {
    INTERRUPTED.swap(false, Ordering::SeqCst)
}

/// Sleeps for `d` (or forever for `None`), waking every few milliseconds to call `on_interrupt`
/// when SIGINT arrives. `on_interrupt` returns `Some(code)` to end the run.
pub fn wait(d: Option<Duration>, on_interrupt: &mut dyn FnMut() -> Option<i32>) -> Result<(), i32> {
    let start = Instant::now();
    loop {
        if take_interrupt() {
            if let Some(code) = on_interrupt() {
                return Err(code);
            }
        }
        let slice = match d {
            Some(total) => {
                let elapsed = start.elapsed();
                if elapsed >= total {
                    return Ok(());
                }
                (total - elapsed).min(Duration::from_millis(20))
            }
            None => Duration::from_millis(50),
        };
        std::thread::sleep(slice);
    }
}

/// Milliseconds since the Unix epoch, the timestamp format droid uses.
pub fn epoch_ms() -> i64 {
    (unix_nanos() / 1_000_000) as i64
}

/// ISO-8601 UTC with milliseconds, the timestamp format claude and gemini use.
pub fn iso_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Seconds since the Unix epoch.
pub fn epoch_s() -> i64 {
    (unix_nanos() / 1_000_000_000) as i64
}
