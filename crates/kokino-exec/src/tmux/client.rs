//! Invoking the `tmux` client against the broker's private server, and the small amount of tmux
//! syntax the executor has to produce (session names, the command language's quoting).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// A tmux client bound to one server socket.
#[derive(Debug, Clone)]
pub(crate) struct Tmux {
    pub bin: PathBuf,
    pub socket: PathBuf,
    pub timeout: Duration,
}

/// Why a tmux client call failed.
#[derive(Debug, Clone)]
pub(crate) enum TmuxError {
    /// The client could not be started at all (binary missing, fork failure).
    Spawn(String),
    /// The client ran and exited non-zero; its stderr.
    Failed(String),
    /// The client did not finish within the per-command timeout (a wedged server).
    TimedOut,
}

impl TmuxError {
    /// Whether the client found no server, or lost it mid-call: the failures of a server that
    /// was exiting when the client reached it, after which a new client starts a new server.
    pub fn is_server_gone(&self) -> bool {
        match self {
            TmuxError::Failed(e) => {
                e.contains("server exited unexpectedly")
                    || e.contains("no server running")
                    || e.contains("lost server")
                    || e.contains("error connecting to")
            }
            TmuxError::Spawn(_) | TmuxError::TimedOut => false,
        }
    }
}

impl std::fmt::Display for TmuxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TmuxError::Spawn(e) => write!(f, "cannot run tmux: {e}"),
            TmuxError::Failed(e) => write!(f, "tmux: {}", e.trim()),
            TmuxError::TimedOut => write!(f, "tmux did not answer in time"),
        }
    }
}

impl Tmux {
    /// A client command with the options every call needs.
    ///
    /// * `-S socket`: the broker's own server, never the user's (`-L` would put it in the user's
    ///   tmux directory, where a user's `tmux kill-server` could reach it).
    /// * `-f /dev/null`: no user configuration, so key bindings, hooks and a different
    ///   `default-command` cannot change what the executor sees.
    /// * `-u`: UTF-8 output whatever the locale, because the prompt glyphs of the CLIs
    ///   (`│`, `›`, `●`) are not ASCII and the client runs with an empty environment.
    /// * an empty environment: the first client starts the server, and the server's global
    ///   environment is copied from that client; keeping it empty means a pane gets exactly the
    ///   child environment given with `new-session -e`, plus the few variables tmux itself sets.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("-u")
            .arg("-S")
            .arg(&self.socket)
            .arg("-f")
            .arg("/dev/null")
            .env_clear()
            .kill_on_drop(true);
        c
    }

    /// Runs one client call and returns its stdout.
    pub async fn run(&self, args: &[&str]) -> Result<String, TmuxError> {
        self.run_with_stdin(args, None).await
    }

    /// Runs one client call with `input` on its stdin (for `load-buffer -` and `source-file -`,
    /// which keep prompts and environment values out of every process's argv).
    pub async fn run_with_stdin(
        &self,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<String, TmuxError> {
        let mut cmd = self.command();
        cmd.args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| TmuxError::Spawn(e.to_string()))?;
        let writer = match (input, child.stdin.take()) {
            (Some(bytes), Some(mut stdin)) => {
                let bytes = bytes.to_vec();
                // From its own task, so a large prompt cannot deadlock against a client that
                // writes before it has read all of its input.
                Some(tokio::spawn(async move {
                    let _ = stdin.write_all(&bytes).await;
                    let _ = stdin.shutdown().await;
                }))
            }
            _ => None,
        };
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(TmuxError::Spawn(e.to_string())),
            Err(_) => return Err(TmuxError::TimedOut),
        };
        if let Some(w) = writer {
            let _ = w.await;
        }
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(TmuxError::Failed(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    }

    /// The socket path, for messages.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

/// The tmux session name for an agent.
///
/// Agent ids match `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`, but tmux gives `.` and `:` a meaning
/// in targets (`session:window.pane`), so both become `_`; that mapping can make two ids
/// collide (`a.b` and `a_b`), which the hash of the original id prevents.
pub fn session_name(agent_id: &str) -> String {
    let safe: String = agent_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("kokino-{safe}-{:08x}", fnv1a(agent_id.as_bytes()) as u32)
}

/// FNV-1a, 64 bits: tiny, stable across releases and platforms, good enough to tell ids apart.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Quotes one word for tmux's command language (`source-file`): inside single quotes nothing is
/// special (no `$`, `~`, `#{}` or escapes), and a single quote is written as `'\''`, as in sh.
pub fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// Escapes `#` for options tmux expands as formats (`new-session -c`), so a directory named
/// `a#{b}` is not read as a format.
pub fn escape_format(s: &str) -> String {
    s.replace('#', "##")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_and_distinct() {
        let a = session_name("agent.one");
        let b = session_name("agent_one");
        assert!(a.starts_with("kokino-agent_one-"));
        assert_ne!(a, b);
        assert!(!a.contains('.') && !a.contains(':'));
        assert_eq!(a, session_name("agent.one"));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(escape_format("/x/#{y}"), "/x/##{y}");
    }
}
