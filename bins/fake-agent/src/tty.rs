//! The terminal side of interactive mode: raw mode and a key reader that understands bracketed
//! paste.
//!
//! The real TUIs (Ink for claude, ratatui for codex) put the terminal in raw mode and enable
//! bracketed paste, so a multi-line paste arrives as one block instead of being submitted line by
//! line. The broker's tmux executor relies on exactly that (`paste-buffer -p` only brackets a
//! paste when the application asked for it), so the fake does the same.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Enables bracketed paste (`ESC[?2004h`); its counterpart disables it again.
pub const BRACKETED_PASTE_ON: &[u8] = b"\x1b[?2004h";
pub const BRACKETED_PASTE_OFF: &[u8] = b"\x1b[?2004l";

/// One thing the user did at the keyboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// Ordinary typed bytes (possibly part of a UTF-8 character), echoed as they come.
    Text(Vec<u8>),
    /// A bracketed paste, with CR, LF and CRLF all turned into `\n`.
    Paste(String),
    Enter,
    Backspace,
    /// The arrow keys that move a menu's cursor (`ESC [ A`, `ESC [ B`).
    Up,
    Down,
    /// Ctrl-D: end of input, as a shell treats it on an empty line.
    EndOfInput,
    /// Any other escape sequence or control byte; ignored by the prompt.
    Other,
}

/// Whether [`RawMode`] changed the terminal, so `restore` (also called on exit paths that never
/// unwind) only touches a terminal we changed.
static RAW_ACTIVE: AtomicBool = AtomicBool::new(false);
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Raw mode on stdin: no line editing, no echo, CR not translated, so that Enter arrives as `\r`
/// and a paste arrives byte for byte. ISIG stays on on purpose: Ctrl-C then raises SIGINT, which
/// the turn's wait loop already handles the way each CLI reacts to an interrupt.
pub fn enter_raw_mode() {
    // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a termios we own.
    unsafe {
        if libc::isatty(0) != 1 {
            return;
        }
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) != 0 {
            return;
        }
        if let Ok(mut saved) = SAVED.lock() {
            *saved = Some(t);
        }
        t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::IEXTEN);
        t.c_iflag &= !(libc::ICRNL | libc::INLCR | libc::IXON);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        if libc::tcsetattr(0, libc::TCSANOW, &t) == 0 {
            RAW_ACTIVE.store(true, Ordering::SeqCst);
        }
    }
}

/// Puts the terminal back the way we found it.
pub fn restore() {
    if RAW_ACTIVE.swap(false, Ordering::SeqCst) {
        if let Some(t) = SAVED.lock().ok().and_then(|s| *s) {
            // SAFETY: tcsetattr on fd 0 with the settings tcgetattr gave us.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

/// Reads keys from a byte source (stdin in production, a slice in tests).
pub struct KeyReader<R: FnMut() -> Option<u8>> {
    next_byte: R,
}

impl<R: FnMut() -> Option<u8>> KeyReader<R> {
    pub fn new(next_byte: R) -> Self {
        KeyReader { next_byte }
    }

    /// The next key, or `None` at end of input.
    pub fn next_key(&mut self) -> Option<Key> {
        let b = (self.next_byte)()?;
        Some(match b {
            b'\r' | b'\n' => Key::Enter,
            0x7f | 0x08 => Key::Backspace,
            0x04 => Key::EndOfInput,
            0x1b => self.escape(),
            b if b < 0x20 => Key::Other,
            b => Key::Text(vec![b]),
        })
    }

    /// After ESC: a CSI sequence (`ESC [ params final`). `ESC[200~` opens a bracketed paste.
    fn escape(&mut self) -> Key {
        let Some(b'[') = (self.next_byte)() else {
            return Key::Other;
        };
        let mut params = Vec::new();
        loop {
            let Some(b) = (self.next_byte)() else {
                return Key::Other;
            };
            if (0x40..=0x7e).contains(&b) {
                params.push(b);
                break;
            }
            params.push(b);
        }
        match params.as_slice() {
            b"200~" => self.paste(),
            b"A" => Key::Up,
            b"B" => Key::Down,
            _ => Key::Other,
        }
    }

    /// Collects a paste up to `ESC[201~`.
    fn paste(&mut self) -> Key {
        const END: &[u8] = b"\x1b[201~";
        let mut bytes: Vec<u8> = Vec::new();
        while let Some(b) = (self.next_byte)() {
            bytes.push(b);
            if bytes.ends_with(END) {
                bytes.truncate(bytes.len() - END.len());
                break;
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Key::Paste(text.replace("\r\n", "\n").replace('\r', "\n"))
    }
}

/// One byte from stdin, retrying on EINTR (a SIGINT at the prompt must not end the session).
pub fn read_stdin_byte() -> Option<u8> {
    let mut b = 0u8;
    loop {
        // SAFETY: reading one byte into a valid buffer.
        let n = unsafe { libc::read(0, (&mut b as *mut u8).cast(), 1) };
        if n == 1 {
            return Some(b);
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(input: &[u8]) -> Vec<Key> {
        let mut it = input.iter().copied();
        let mut r = KeyReader::new(move || it.next());
        std::iter::from_fn(|| r.next_key()).collect()
    }

    #[test]
    fn paste_and_enter() {
        let k = keys(b"a\x1b[200~one\r\ntwo\rthree\x1b[201~\r");
        assert_eq!(
            k,
            vec![
                Key::Text(b"a".to_vec()),
                Key::Paste("one\ntwo\nthree".into()),
                Key::Enter
            ]
        );
    }

    #[test]
    fn other_sequences_are_ignored() {
        let k = keys(b"\x1b[C\x7f\x04");
        assert_eq!(k, vec![Key::Other, Key::Backspace, Key::EndOfInput]);
    }

    #[test]
    fn arrows_up_and_down_are_keys() {
        let k = keys(b"\x1b[A\x1b[B");
        assert_eq!(k, vec![Key::Up, Key::Down]);
    }
}
