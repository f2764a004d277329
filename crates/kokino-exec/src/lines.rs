//! A line reader with a ceiling.
//!
//! `BufReader::lines` grows its buffer to whatever the longest line is, so a CLI that prints one
//! 200 MB line of tool output would grow the broker by 200 MB. This reader keeps at most
//! `max_line` bytes of a line; the rest of an oversized line is read and thrown away as it
//! arrives, and the line is reported as [`Line::Oversized`] with its true length.

use tokio::io::{AsyncRead, AsyncReadExt};

pub(crate) enum Line {
    Text(String),
    Oversized(usize),
}

pub(crate) struct BoundedLines<R> {
    reader: R,
    buf: Vec<u8>,
    /// Bytes of `buf` already known to hold no newline.
    scanned: usize,
    max_line: usize,
    /// When set, the current line overflowed; count its bytes until the next newline.
    discarding: Option<usize>,
    eof: bool,
    scratch: Box<[u8; CHUNK]>,
}

const CHUNK: usize = 64 * 1024;

impl<R: AsyncRead + Unpin> BoundedLines<R> {
    pub(crate) fn new(reader: R, max_line: usize) -> Self {
        Self {
            reader,
            buf: Vec::with_capacity(CHUNK),
            scanned: 0,
            max_line,
            discarding: None,
            eof: false,
            scratch: Box::new([0; CHUNK]),
        }
    }

    /// The next line without its newline (and without a trailing `\r`), or `None` at end of
    /// stream. A final line without a newline is still returned. Cancel-safe: dropping the
    /// future loses no input.
    pub(crate) async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + pos;
                let rest = self.buf.split_off(end + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                self.scanned = 0;
                line.truncate(end);
                if let Some(dropped) = self.discarding.take() {
                    return Ok(Some(Line::Oversized(dropped + line.len())));
                }
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(Line::Text(into_string(line))));
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.max_line || self.discarding.is_some() {
                // Too long to keep: remember how much we dropped and free the memory.
                let dropped = self.buf.len();
                *self.discarding.get_or_insert(0) += dropped;
                self.buf.clear();
                self.buf.shrink_to(CHUNK);
                self.scanned = 0;
            }
            if self.eof {
                if let Some(dropped) = self.discarding.take() {
                    return Ok(Some(Line::Oversized(dropped)));
                }
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let line = std::mem::take(&mut self.buf);
                self.scanned = 0;
                return Ok(Some(Line::Text(into_string(line))));
            }
            // Read into scratch space and only then touch our state: `read` is cancel-safe, so
            // this whole method is, and it runs inside a `select!` that drops it often.
            let n = self.reader.read(&mut self.scratch[..]).await?;
            self.buf.extend_from_slice(&self.scratch[..n]);
            if n == 0 {
                self.eof = true;
            }
        }
    }
}

/// CLIs print UTF-8, but a tool may print anything; invalid bytes become U+FFFD instead of an
/// error so one bad byte never loses a line.
fn into_string(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(input: &[u8], max: usize) -> Vec<String> {
        let mut r = BoundedLines::new(input, max);
        let mut out = Vec::new();
        while let Some(l) = r.next_line().await.unwrap() {
            out.push(match l {
                Line::Text(s) => s,
                Line::Oversized(n) => format!("<oversized {n}>"),
            });
        }
        out
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_a_last_unterminated_line() {
        assert_eq!(collect(b"a\nb\r\n\nc", 100).await, vec!["a", "b", "", "c"]);
        assert!(collect(b"", 100).await.is_empty());
    }

    #[tokio::test]
    async fn drops_oversized_lines_but_keeps_the_following_ones() {
        let mut input = vec![b'x'; 300_000];
        input.extend_from_slice(b"\nafter\n");
        input.extend(vec![b'y'; 200_000]);
        let lines = collect(&input, 100_000).await;
        assert_eq!(
            lines,
            vec!["<oversized 300000>", "after", "<oversized 200000>"]
        );
    }

    #[tokio::test]
    async fn keeps_long_lines_under_the_ceiling_whole() {
        let mut input = vec![b'z'; 1_000_000];
        input.push(b'\n');
        let lines = collect(&input, 2_000_000).await;
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), 1_000_000);
    }

    #[tokio::test]
    async fn dropping_a_pending_read_loses_nothing() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut lines = BoundedLines::new(rx, 1024);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for i in 0..20 {
                tx.write_all(format!("line {i}\n").as_bytes())
                    .await
                    .unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        });
        let mut got = Vec::new();
        while got.len() < 20 {
            // A timer that often wins the race drops the read future half-way, as the
            // executor's select loop does.
            tokio::select! {
                l = lines.next_line() => match l.unwrap() {
                    Some(Line::Text(t)) => got.push(t),
                    other => panic!("unexpected {:?}", other.is_some()),
                },
                _ = tokio::time::sleep(std::time::Duration::from_micros(500)) => {}
            }
        }
        writer.await.unwrap();
        let want: Vec<String> = (0..20).map(|i| format!("line {i}")).collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn invalid_utf8_is_replaced_not_fatal() {
        assert_eq!(collect(b"a\xffb\n", 10).await, vec!["a\u{fffd}b"]);
    }
}
