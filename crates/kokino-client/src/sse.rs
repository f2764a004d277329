//! Reading `POST /agents/{id}/execute/stream`'s Server-Sent Events into [`StreamEvent`]s.

use bytes::{Buf, BytesMut};
use futures::StreamExt;
use kokino_api::StreamEvent;

use crate::Error;

/// An execution followed live. [`ExecutionStream::next`] yields its events in order; the last
/// one is [`StreamEvent::Result`] or [`StreamEvent::Error`], after which it yields `None`.
pub struct ExecutionStream {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: BytesMut,
    event: String,
    data: String,
    done: bool,
}

impl std::fmt::Debug for ExecutionStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutionStream")
            .field("done", &self.done)
            .finish()
    }
}

impl ExecutionStream {
    pub(crate) fn new(resp: reqwest::Response) -> ExecutionStream {
        ExecutionStream {
            body: resp.bytes_stream().boxed(),
            buf: BytesMut::new(),
            event: String::new(),
            data: String::new(),
            done: false,
        }
    }

    /// The next event; `None` after the final one (or when the broker closed the stream).
    /// Events this client version does not know are skipped.
    pub async fn next(&mut self) -> Option<Result<StreamEvent, Error>> {
        while !self.done {
            // Complete lines first; more bytes only when none is buffered.
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.advance(pos + 1);
                if let Some(ev) = self.line(line.trim_end_matches('\r')) {
                    self.done = ev.is_final();
                    return Some(Ok(ev));
                }
                continue;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(Error::Transport(e)));
                }
                None => self.done = true,
            }
        }
        None
    }

    /// Collects the events up to the final one, and returns them with the result.
    pub async fn finish(mut self) -> Result<(Vec<StreamEvent>, ExecuteOutcome), Error> {
        let mut events = Vec::new();
        while let Some(ev) = self.next().await {
            match ev? {
                StreamEvent::Result(r) => return Ok((events, Ok(r))),
                StreamEvent::Error(e) => return Ok((events, Err(e))),
                other => events.push(other),
            }
        }
        Err(Error::Decode {
            path: "/execute/stream".into(),
            message: "the stream ended without a result or error event".into(),
        })
    }

    /// One line of the SSE wire format; a blank line dispatches the event gathered so far.
    fn line(&mut self, line: &str) -> Option<StreamEvent> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let data = std::mem::take(&mut self.data);
            if data.is_empty() {
                return None;
            }
            let name = if event.is_empty() { "message" } else { &event };
            return StreamEvent::from_sse(name, &data);
        }
        if line.starts_with(':') {
            return None; // A comment: the keep-alive.
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(value);
            }
            _ => {}
        }
        None
    }
}

/// How a streamed execution ended: the answer, or the error body of the `error` event.
pub type ExecuteOutcome = Result<kokino_api::ExecuteResponse, kokino_api::ErrorBody>;
