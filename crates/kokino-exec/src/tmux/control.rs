//! A tmux control-mode client (`tmux -C attach`) as an event source.
//!
//! In control mode tmux reports everything a pane prints as `%output %<pane> <data>` lines, with
//! bytes below 0x20 and the backslash escaped as `\ooo` octal. That gives the executor a push
//! notification for every burst of output, so quiescence is measured with timers at millisecond
//! precision instead of by polling the screen. Only the fact of output and a short tail are kept:
//! the screen itself is read with `capture-pane` when a decision needs it.

use std::process::Stdio;

use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use super::client::Tmux;
use crate::lines::{BoundedLines, Line};

/// What the control client saw.
#[derive(Debug)]
pub(crate) enum ControlEvent {
    /// The pane printed something; `tail` is the end of the decoded bytes (at most
    /// [`TAIL_BYTES`]).
    Output { tail: Vec<u8> },
    /// The client is attached: notifications flow from here on.
    Attached,
    /// The client was detached: the session was destroyed or the server went away.
    Exit,
}

/// How much of each output burst is passed on: enough to see whether it ended with a prompt.
pub(crate) const TAIL_BYTES: usize = 256;

/// A running control-mode client. Dropping it kills the client (not the session).
pub(crate) struct ControlClient {
    _child: Child,
    /// Held open: a control client detaches when its stdin closes.
    _stdin: Option<ChildStdin>,
    pub events: mpsc::Receiver<ControlEvent>,
    /// Fires with the client's first line (or its end): from then on the server has finished
    /// attaching it.
    ready: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl ControlClient {
    /// Attaches to the session (`=name`, exact match) and follows the output of `pane_id`.
    pub fn attach(tmux: &Tmux, session: &str, pane_id: &str) -> std::io::Result<ControlClient> {
        let mut child = tmux
            .command()
            .arg("-C")
            .arg("attach-session")
            .arg("-t")
            .arg(format!("={session}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel(1024);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let pane = pane_id.to_owned();
        if let Some(stdout) = stdout {
            tokio::spawn(async move {
                let mut ready = Some(ready_tx);
                // A line is one notification; tmux splits large output into many of them, so a
                // modest ceiling only ever drops a pathological line, never the signal itself.
                let mut lines = BoundedLines::new(stdout, 1024 * 1024);
                loop {
                    let next = lines.next_line().await;
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                    let event = match next {
                        Ok(Some(Line::Text(line))) => parse_line(&line, &pane),
                        Ok(Some(Line::Oversized(_))) => {
                            Some(ControlEvent::Output { tail: Vec::new() })
                        }
                        Ok(None) | Err(_) => Some(ControlEvent::Exit),
                    };
                    let Some(event) = event else { continue };
                    let exit = matches!(event, ControlEvent::Exit);
                    if tx.send(event).await.is_err() || exit {
                        break;
                    }
                }
            });
        }
        Ok(ControlClient {
            _child: child,
            _stdin: stdin,
            events: rx,
            ready: Some(ready_rx),
        })
    }

    /// Detaches (closing the client's stdin) and waits, at most `limit`, for the client to be
    /// gone, so that the caller can keep the server's other structural changes away from the
    /// detach (see `TmuxExecutor::structure`); a client that does not go is killed.
    pub async fn close(mut self, limit: std::time::Duration) {
        drop(self._stdin.take());
        if tokio::time::timeout(limit, self._child.wait())
            .await
            .is_err()
        {
            let _ = self._child.kill().await;
        }
    }

    /// Waits (at most `limit`) until the server has answered the attach.
    pub async fn wait_attached(&mut self, limit: std::time::Duration) {
        if let Some(r) = self.ready.take() {
            let _ = tokio::time::timeout(limit, r).await;
        }
    }
}

/// Interprets one line of control-mode output.
fn parse_line(line: &str, pane: &str) -> Option<ControlEvent> {
    if let Some(rest) = line.strip_prefix("%output ") {
        let (id, data) = rest.split_once(' ').unwrap_or((rest, ""));
        if id != pane {
            return None;
        }
        let decoded = unescape(data);
        let start = decoded.len().saturating_sub(TAIL_BYTES);
        return Some(ControlEvent::Output {
            tail: decoded[start..].to_vec(),
        });
    }
    if line.starts_with("%session-changed ") {
        return Some(ControlEvent::Attached);
    }
    if line == "%exit" || line.starts_with("%exit ") {
        return Some(ControlEvent::Exit);
    }
    None
}

/// Decodes control-mode escaping: `\ooo` (three octal digits) is one byte, the rest is literal.
pub(crate) fn unescape(data: &str) -> Vec<u8> {
    let b = data.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (u32::from(b[i + 1] - b'0') << 6)
                | (u32::from(b[i + 2] - b'0') << 3)
                | u32::from(b[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("a\\015\\012b\\134"), b"a\r\nb\\".to_vec());
        assert_eq!(unescape("\\01"), b"\\01".to_vec());
    }

    #[test]
    fn filters_by_pane() {
        assert!(matches!(
            parse_line("%output %1 hi", "%1"),
            Some(ControlEvent::Output { .. })
        ));
        assert!(parse_line("%output %2 hi", "%1").is_none());
        assert!(matches!(
            parse_line("%exit", "%1"),
            Some(ControlEvent::Exit)
        ));
        assert!(matches!(
            parse_line("%session-changed $0 x", "%1"),
            Some(ControlEvent::Attached)
        ));
        assert!(parse_line("%window-renamed @0 x", "%1").is_none());
    }
}
