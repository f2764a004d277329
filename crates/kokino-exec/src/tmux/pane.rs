//! tmux mechanics on one pane: starting the session, reading its state and its screen, pasting,
//! pressing keys, and destroying it with its process group. Nothing here knows which CLI runs in
//! the pane.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::client::{self, escape_format, quote};
use super::process;
use super::{TmuxExecutor, TmuxRequest};

/// What a pane is, as tmux reports it.
#[derive(Debug, Clone)]
pub(super) struct PaneInfo {
    pub id: String,
    pub pid: i32,
    pub dead: bool,
    pub dead_status: Option<i32>,
}

static BUFFER_SEQ: AtomicU64 = AtomicU64::new(0);

/// Unix sockets have a short path limit (108 bytes on Linux, including the NUL).
const MAX_SOCKET_PATH: usize = 100;

/// How many times a session start is tried when the server went away under it.
const START_ATTEMPTS: u32 = 4;

impl TmuxExecutor {
    /// Checks what can be checked before tmux is involved, with the same messages as headless.
    pub(super) fn preflight(&self, req: &TmuxRequest) -> Result<(), String> {
        if !self.available() {
            return Err(format!(
                "tmux ({}) is not available or older than 3.0",
                self.tmux.bin.display()
            ));
        }
        if !req.cwd.is_dir() {
            return Err(format!(
                "working directory {} does not exist",
                req.cwd.display()
            ));
        }
        let program = req.program.to_string_lossy();
        if program.contains('/') && !is_executable(&req.program) {
            return Err(format!("binary {program} not found"));
        }
        let socket_len = self.tmux.socket().as_os_str().len();
        if socket_len > MAX_SOCKET_PATH {
            return Err(format!(
                "tmux socket path {} is too long ({socket_len} bytes; unix sockets allow about {MAX_SOCKET_PATH})",
                self.tmux.socket().display()
            ));
        }
        create_private_dir(&self.socket_dir)
            .map_err(|e| format!("cannot create {}: {e}", self.socket_dir.display()))
    }

    /// Starts the session with the CLI. The commands go through `source-file -` so the
    /// environment (API keys included) is read from the client's stdin, never from an argv.
    pub(super) async fn create_session(&self, name: &str, req: &TmuxRequest) -> Result<(), String> {
        let cfg = &self.config;
        let cwd = std::fs::canonicalize(&req.cwd).unwrap_or_else(|_| req.cwd.clone());
        // Server-wide options first, so they hold from the pane's first instant: a CLI that dies
        // at once must still leave its pane (remain-on-exit), and the answer may be long
        // (history-limit applies to panes created afterwards). The window keeps the size given
        // here because control-mode clients do not take part in sizing; `window-size manual`
        // would say so explicitly but crashes tmux 3.3a together with `new-session -x -y`.
        let mut script = format!(
            "set-option -g history-limit {}\nset-option -g remain-on-exit on\n\
             set-option -g status off\n",
            cfg.history_limit
        );
        let mut cmd = format!(
            "new-session -d -s {} -x {} -y {} -c {}",
            quote(name),
            cfg.width,
            cfg.height,
            quote(&escape_format(&cwd.to_string_lossy()))
        );
        for (k, v) in &req.env {
            if k.is_empty() || k.contains('=') {
                continue;
            }
            cmd.push_str(" -e ");
            cmd.push_str(&quote(&format!("{k}={v}")));
        }
        cmd.push_str(" --");
        let program = req.program.to_string_lossy().into_owned();
        let argv: Vec<String> = if let Some(sup) = &self.supervisor {
            // The supervisor execs nothing through a shell, so a path with spaces is safe, and
            // the pane pid is the supervisor's, which leads the group the CLI runs in.
            let (prog, args) = sup.wrap(&req.program, &req.args, None, None);
            std::iter::once(prog.to_string_lossy().into_owned())
                .chain(args)
                .collect()
        } else if req.args.is_empty() {
            // With a single argument tmux runs it through `sh -c`, which would split a path with
            // spaces; this form execs the program directly (keeping the pane pid) in all cases.
            vec!["/bin/sh".into(), "-c".into(), "exec \"$0\"".into(), program]
        } else {
            std::iter::once(program)
                .chain(req.args.iter().cloned())
                .collect()
        };
        for a in &argv {
            cmd.push(' ');
            cmd.push_str(&quote(a));
        }
        script.push_str(&cmd);
        script.push('\n');
        let mut attempt = 1;
        loop {
            // `source-file` does not start a server (only `ensure_server` does, one caller at a
            // time), so a server that went away is noticed here rather than raced for.
            let result = match self.ensure_server().await {
                Ok(()) => {
                    let _one = self.structure.lock().await;
                    self.tmux
                        .run_with_stdin(&["source-file", "-"], Some(script.as_bytes()))
                        .await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(_) => return Ok(()),
                // Another caller started it first; it is the same agent's session.
                Err(client::TmuxError::Failed(e)) if e.contains("duplicate session") => {
                    return Ok(())
                }
                // The server went away (killed by hand, or crashed) between two calls: start a
                // new one and try again. Each retry is logged with its reason, and the last
                // reason is returned.
                Err(e) if attempt < START_ATTEMPTS && e.is_server_gone() => {
                    tracing::warn!(session = %name, attempt, error = %e,
                        "the tmux server was gone when the session was being started; starting it again");
                    self.server_lost();
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) if attempt > 1 => {
                    return Err(format!("{e} (after {attempt} attempts)"));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    pub(super) async fn pane_info(&self, name: &str) -> Option<PaneInfo> {
        let out = self
            .tmux
            .run(&[
                "display-message",
                "-p",
                "-t",
                &format!("={name}:"),
                "#{pane_id} #{pane_pid} #{pane_dead} #{pane_dead_status}",
            ])
            .await
            .ok()?;
        let f: Vec<&str> = out.split_whitespace().collect();
        // pane_dead_status is empty for a live pane, so the line has 3 or 4 fields.
        let (id, pid, dead) = (f.first()?, f.get(1)?, f.get(2)?);
        let dead = *dead == "1";
        let status = if f.len() >= 4 {
            f[3].parse().ok()
        } else {
            None
        };
        Some(PaneInfo {
            id: (*id).to_owned(),
            pid: pid.parse().ok()?,
            dead,
            dead_status: if dead { status } else { None },
        })
    }

    /// The screen (`from = None`) or everything from the absolute line `from` (history lines
    /// counted), with wrapped lines joined.
    pub(super) async fn capture(&self, pane_id: &str, from: Option<i64>) -> Result<String, String> {
        let start = match from {
            None => None,
            Some(abs) => {
                let history = self
                    .tmux
                    .run(&["display-message", "-p", "-t", pane_id, "#{history_size}"])
                    .await
                    .map_err(|e| e.to_string())?
                    .trim()
                    .parse::<i64>()
                    .unwrap_or(0);
                let rel = abs - history;
                // If the line scrolled out of the history, take all that is left.
                Some(if rel < -history {
                    "-".to_owned()
                } else {
                    rel.to_string()
                })
            }
        };
        let mut args = vec!["capture-pane", "-p", "-J", "-t", pane_id];
        if let Some(s) = start.as_deref() {
            args.extend(["-S", s]);
        }
        self.tmux.run(&args).await.map_err(|e| e.to_string())
    }

    /// Pastes the prompt (bracketed) and returns the absolute line where its echo starts.
    pub(super) async fn paste(&self, pane_id: &str, prompt: &str) -> Result<i64, String> {
        let out = self
            .tmux
            .run(&[
                "display-message",
                "-p",
                "-t",
                pane_id,
                "#{history_size} #{cursor_y}",
            ])
            .await
            .map_err(|e| e.to_string())?;
        let mut f = out
            .split_whitespace()
            .map(|s| s.parse::<i64>().unwrap_or(0));
        let line = f.next().unwrap_or(0) + f.next().unwrap_or(0);
        let buffer = format!(
            "kokino-{}-{}",
            std::process::id(),
            BUFFER_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        self.tmux
            .run_with_stdin(
                &[
                    "load-buffer",
                    "-b",
                    &buffer,
                    "-",
                    ";",
                    "paste-buffer",
                    "-p",
                    "-d",
                    "-b",
                    &buffer,
                    "-t",
                    pane_id,
                ],
                Some(prompt.as_bytes()),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(line)
    }

    pub(super) async fn send_keys(&self, pane_id: &str, keys: &[&str]) -> Result<(), String> {
        let mut args = vec!["send-keys", "-t", pane_id];
        args.extend_from_slice(keys);
        self.tmux
            .run(&args)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The exit status and last screen of a pane whose process exited. tmux learns of the exit
    /// a moment after the kernel does: it marks the pane dead when the pty has drained (which is
    /// when the last output is on the screen), and records the status when it reaps the process,
    /// in either order. So wait, briefly and boundedly, for the pane to be dead, and for the
    /// status too unless the caller already has it (`status_known`). A CLI killed by a signal
    /// never gets a status from tmux 3.3, so a dead pane without one is only waited for briefly.
    pub(super) async fn post_mortem(
        &self,
        name: &str,
        pane: &PaneInfo,
        status_known: bool,
    ) -> (Option<i32>, String) {
        let until = Instant::now() + Duration::from_secs(1);
        let mut dead_since: Option<Instant> = None;
        let mut status = None;
        while Instant::now() < until {
            match self.pane_info(name).await {
                Some(p) if p.dead && (status_known || p.dead_status.is_some()) => {
                    status = p.dead_status;
                    break;
                }
                Some(p) if p.dead => {
                    let since = *dead_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_millis(300) {
                        break;
                    }
                }
                Some(_) => {}
                None => break,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = self.capture(&pane.id, None).await.unwrap_or_default();
        (status, text)
    }

    /// Kills the pane's process group and the session.
    pub(super) async fn destroy(&self, name: &str, pane: Option<&PaneInfo>, grace: Duration) {
        if let Some(p) = pane {
            process::terminate_group(p.pid, grace).await;
        }
        let _one = self.structure.lock().await;
        let _ = self
            .tmux
            .run(&["kill-session", "-t", &format!("={name}")])
            .await;
    }
}

/// The last `n` non-blank lines, joined with ` | ` for a one-line message or `\n` for a tail.
pub(super) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(n);
    let sep = if n <= 5 { " | " } else { "\n" };
    lines[start..].join(sep)
}

/// `tmux 3.3a` → (3, 3); `tmux next-3.4` → (3, 4).
pub(super) fn parse_version(s: &str) -> Option<(u32, u32)> {
    let v = s.split_whitespace().nth(1)?;
    let v = v.trim_start_matches(|c: char| !c.is_ascii_digit());
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()
        .unwrap_or("0")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().unwrap_or(0)))
}

pub(super) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Creates the socket directory, readable by its owner only: anyone who can reach the socket
/// controls every agent's CLI. An existing directory is the caller's and is left as it is.
pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("tmux 3.3a"), Some((3, 3)));
        assert_eq!(parse_version("tmux next-3.5"), Some((3, 5)));
        assert_eq!(parse_version("tmux 2.9"), Some((2, 9)));
        assert_eq!(parse_version("nonsense"), None);
    }
}
