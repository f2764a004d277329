//! The shape of one headless turn, shared by all personalities.
//!
//! The order of steps is the same for every CLI (start, optional tool call, "thinking", answer,
//! terminal event); only the lines printed at each step differ, and those live in the
//! personality modules behind the [`Agent`] trait.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::cli::{Opts, Output};
use crate::state::{Session, Store, Turn};
use crate::sys;
use crate::tokens::{ChildKind, Script};

/// What every personality gets to work with.
pub struct Ctx {
    pub opts: Opts,
    /// The prompt exactly as received (tokens included), as the real CLIs echo it back.
    pub prompt: String,
    pub cwd: String,
    pub store: Store,
    pub started: Instant,
    pub logged_out: bool,
    /// How many user turns the session held before this run's (`fake:turns`); set when a
    /// session is resumed or forked.
    pub earlier_turns: Cell<usize>,
}

impl Ctx {
    pub fn stream(&self) -> bool {
        self.opts.output == Output::Stream
    }

    pub fn elapsed_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Prints an event line, but only in streaming mode; the other modes print once at the end.
    pub fn ev(&self, v: &crate::json::J) {
        if self.stream() {
            sys::event(v);
        }
    }

    /// A new session record containing this run's prompt as its first turn.
    pub fn new_session(&self, personality: &str, id: String) -> Session {
        let now = sys::epoch_ms();
        Session {
            id,
            personality: personality.to_owned(),
            cwd: self.cwd.clone(),
            created_ms: now,
            updated_ms: now,
            turns: vec![self.turn()],
        }
    }

    pub fn turn(&self) -> Turn {
        Turn {
            prompt: self.prompt.clone(),
            at_ms: sys::epoch_ms(),
            pid: std::process::id(),
        }
    }

    /// Appends this run's prompt to a resumed session and saves it.
    pub fn continue_session(&self, mut s: Session) -> Session {
        self.earlier_turns.set(s.turns.len());
        s.turns.push(self.turn());
        s.updated_ms = sys::epoch_ms();
        if let Err(e) = self.store.save(&s) {
            sys::err_line(&format!("kokino-fake-agent: cannot save session: {e}"));
        }
        note_turn(&s);
        s
    }
}

/// Tells stderr which turn of which session this is: a harmless place for tests (and humans) to
/// see that a resumed session really remembered its history, without touching the answer.
pub fn note_turn(s: &Session) {
    sys::err_line(&format!(
        "kokino-fake-agent: session {} turn {}",
        s.id,
        s.turns.len()
    ));
}

/// The lines one CLI prints at each step of a turn. Methods that end the turn return its exit code.
pub trait Agent {
    /// The first lines of a run (session announcement, echo of the user prompt).
    fn init(&mut self);
    /// The CLI's "not logged in" failure, printed after `init`.
    fn auth_fail(&mut self) -> i32;
    /// The CLI's HTTP 429 failure.
    fn rate_limited(&mut self) -> i32;
    /// One failed attempt of the CLI's own retry loop after a 429 (`fake:ratelimit=retry`),
    /// printed the way the CLI reports it. `false` when the CLI retries silently and only
    /// reports its give-up (droid).
    fn rate_limit_retry(&mut self, attempt: u32) -> bool;
    /// How many user turns the session held before this run's.
    fn earlier_turns(&self) -> usize;
    /// A shell tool call and its result; `Some(code)` ends the turn (claude `--max-turns 1`).
    fn tool(&mut self) -> Option<i32>;
    /// Partial answer `i` of `n` (`fake:stream`); the chunks concatenate to the full answer.
    fn stream_chunk(&mut self, i: usize, n: usize, chunk: &str);
    /// The assistant's answer message.
    fn answer(&mut self, text: &str);
    /// The terminal success event.
    fn finish(&mut self, text: &str) -> i32;
    /// An error terminal event for `fake:exit=N`; the caller exits with `code`.
    fn fail(&mut self, code: i32);
    /// SIGINT arrived while working: `Some(code)` ends the run after printing what the CLI prints.
    fn interrupted(&mut self) -> Option<i32>;
}

/// Between two attempts of `fake:ratelimit=retry`.
const RETRY_EVERY: Duration = Duration::from_secs(1);

fn pause(agent: &mut dyn Agent, d: Option<Duration>) -> Result<(), i32> {
    sys::wait(d, &mut || agent.interrupted())
}

/// Runs the scripted turn and returns the exit code.
pub fn turn(agent: &mut dyn Agent, s: &Script, logged_out: bool) -> i32 {
    match turn_inner(agent, s, logged_out) {
        Ok(code) | Err(code) => code,
    }
}

fn turn_inner(agent: &mut dyn Agent, s: &Script, logged_out: bool) -> Result<i32, i32> {
    agent.init();
    if let Some(kind) = s.child {
        spawn_grandchild(kind);
    }
    // Held until the process exits; `std::process::exit` never frees it.
    let _ballast = s.mem.map(hold_memory);
    if logged_out {
        return Ok(agent.auth_fail());
    }
    if s.malformed {
        sys::raw(b"[fake-agent] a diagnostic line that is not JSON\n");
    }
    if s.hang {
        pause(agent, None)?;
    }
    if let Some(total) = s.flood {
        flood(total);
    }
    if s.tool {
        if let Some(code) = agent.tool() {
            return Ok(code);
        }
    }
    let answer = s.answer_in(false, agent.earlier_turns());
    let streaming = s
        .stream
        .filter(|n| *n > 0 && !s.ratelimit && s.exit.is_none());
    match streaming {
        Some(n) => {
            let step = s.sleep / u32::try_from(n).unwrap_or(u32::MAX);
            for (i, chunk) in split_chunks(&answer, n).iter().enumerate() {
                pause(agent, Some(step))?;
                agent.stream_chunk(i, n, chunk);
            }
        }
        None => pause(agent, Some(s.sleep))?,
    }
    if s.ratelimit_retry {
        // The real CLIs retry a 429 for minutes (gemini: ten attempts); the fake never gives up,
        // so only a caller that stops at the first signal (or a timeout) ends the run.
        let mut attempt = 1;
        while agent.rate_limit_retry(attempt) {
            pause(agent, Some(RETRY_EVERY))?;
            attempt = attempt.saturating_add(1);
        }
    }
    if s.ratelimit {
        return Ok(agent.rate_limited());
    }
    if let Some(code) = s.exit.or(s.headless_fail.then_some(1)) {
        agent.fail(code);
        return Ok(code);
    }
    if s.malformed {
        // A line cut off mid-object, as a reader sees when a writer dies mid-write.
        sys::raw(b"{\"type\":\"assistant\",\"message\":{\"id\":\"msg_truncated\",\"content\":[{\"type\":\"te\n");
    }
    agent.answer(&answer);
    if s.noresult {
        return Ok(0);
    }
    Ok(agent.finish(&answer))
}

/// Prints `total` bytes of tool output as `tool_result` lines of about 1 MiB. Gemini and droid
/// know the event type; claude and codex parsers see an unknown event, which must not fail a run
/// either.
pub fn flood(total: usize) {
    const LINE: usize = 1024 * 1024;
    let body = "x".repeat(LINE);
    let mut left = total;
    while left > 0 {
        let n = left.min(LINE);
        let line = format!(
            "{{\"type\":\"tool_result\",\"tool_id\":\"flood\",\"status\":\"success\",\"output\":\"{}\"}}\n",
            &body[..n]
        );
        sys::raw(line.as_bytes());
        left -= n;
    }
}

/// Splits `text` into `n` pieces on character boundaries (some may be empty for short texts).
pub fn split_chunks(text: &str, n: usize) -> Vec<&str> {
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()))
        .collect();
    let chars = bounds.len() - 1;
    (0..n)
        .map(|i| {
            let a = bounds[i * chars / n];
            let b = bounds[(i + 1) * chars / n];
            &text[a..b]
        })
        .collect()
}

/// Starts a grandchild that outlives us: in our process group unless the whole group is killed,
/// or as a daemon that left both our group and our session.
pub fn spawn_grandchild(kind: ChildKind) {
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().unwrap_or_else(|_| "kokino-fake-agent".into());
    let mut cmd = Command::new(exe);
    if kind == ChildKind::Daemon {
        cmd.arg("--fake-daemon");
    } else {
        cmd.arg("--fake-grandchild");
    }
    cmd.arg("1000").stdin(Stdio::null());
    if kind != ChildKind::Inherit {
        // By default the grandchild does not hold our pipes, so a reader still sees EOF when we
        // exit; `fake:child=inherit` keeps them open to imitate droid's orphaned native binary.
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    match cmd.spawn() {
        Ok(mut child) => {
            sys::err_line(&format!("fake-child-pid={}", child.id()));
            if kind == ChildKind::Daemon {
                // The intermediate process exits at once; reaping it is what orphans the daemon.
                let _ = child.wait();
            }
        }
        Err(e) => sys::err_line(&format!("kokino-fake-agent: cannot start grandchild: {e}")),
    }
}

/// `--fake-daemon S`: the middle of a double fork. It leaves our session (and so our process
/// group), starts the daemon (`--fake-grandchild S`) and exits, so that the daemon is orphaned.
pub fn daemonize(secs: &str) -> i32 {
    use std::process::{Command, Stdio};
    // SAFETY: setsid has no preconditions; it fails only for a group leader, which a process
    // started without `process_group` is not.
    unsafe { libc::setsid() };
    let exe = std::env::current_exe().unwrap_or_else(|_| "kokino-fake-agent".into());
    let started = Command::new(exe)
        .args(["--fake-grandchild", secs])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    i32::from(started.is_err())
}

/// Allocates `n` bytes and writes every page so they count as resident memory.
pub fn hold_memory(n: usize) -> Vec<u8> {
    // A zeroed allocation stays mapped to the shared zero page until written, so one write per
    // 4 KiB page is what makes the memory resident (and is much faster than filling every byte).
    let mut v = vec![0u8; n];
    for i in (0..n).step_by(4096) {
        v[i] = 0xA5;
    }
    std::hint::black_box(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::split_chunks;

    #[test]
    fn chunks_concatenate() {
        for n in 1..7 {
            let parts = split_chunks("echo: héllo wörld", n);
            assert_eq!(parts.len(), n);
            assert_eq!(parts.concat(), "echo: héllo wörld");
        }
        assert_eq!(split_chunks("ab", 4).concat(), "ab");
    }
}
