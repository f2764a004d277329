//! `POST /agents/{id}/execute/stream`: the execute call as Server-Sent Events.
//!
//! The execution runs in its own task and reports progress through a channel; this module only
//! turns that channel into SSE frames. If the client goes away the stream is dropped, but the
//! execution task is not: it finishes and stores its result as usual.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use kokino_cli::StreamEvent;
use kokino_service::{ExecuteRequest, Progress};
use serde_json::json;
use tokio::sync::mpsc;

use crate::{ApiError, AppState};

enum Frame {
    Progress(Progress),
    Done(Result<serde_json::Value, ApiError>),
}

pub fn execute_stream(
    state: AppState,
    agent_id: String,
    req: ExecuteRequest,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel::<Progress>();
    let (frame_tx, frame_rx) = mpsc::unbounded_channel::<Frame>();
    let forward = frame_tx.clone();
    tokio::spawn(async move {
        while let Some(p) = progress_rx.recv().await {
            if forward.send(Frame::Progress(p)).is_err() {
                // The client left; keep draining so the execution never blocks on us.
                while progress_rx.recv().await.is_some() {}
                return;
            }
        }
    });
    tokio::spawn(async move {
        let result = state
            .broker
            .execute(&agent_id, req, Some(progress_tx))
            .await
            .map(|r| serde_json::to_value(r).unwrap_or_default())
            .map_err(ApiError::from);
        let _ = frame_tx.send(Frame::Done(result));
    });

    let stream = futures::stream::unfold((frame_rx, false), |(mut rx, done)| async move {
        if done {
            return None;
        }
        loop {
            let frame = rx.recv().await?;
            let (event, last) = match frame {
                Frame::Done(Ok(body)) => (Event::default().event("result").json_data(body), true),
                Frame::Done(Err(e)) => (Event::default().event("error").json_data(e.body()), true),
                Frame::Progress(p) => match progress_event(p) {
                    Some(ev) => (ev, false),
                    None => continue,
                },
            };
            let event = event.unwrap_or_else(|_| Event::default().event("error").data("{}"));
            return Some((Ok(event), (rx, last)));
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn progress_event(p: Progress) -> Option<Result<Event, axum::Error>> {
    let (name, data) = match p {
        Progress::Queued { position } => ("queued", json!({"position": position})),
        Progress::Started {
            pid,
            mode,
            session_id,
        } => (
            "started",
            json!({"pid": pid, "mode": mode, "sessionId": session_id}),
        ),
        Progress::Stream(StreamEvent::AssistantText { text, partial }) => {
            ("assistant", json!({"text": text, "partial": partial}))
        }
        Progress::Stream(StreamEvent::ToolUse {
            name,
            input_summary,
        }) => ("tool", json!({"name": name, "input": input_summary})),
        Progress::Stream(StreamEvent::ToolResult { is_error, summary }) => (
            "tool_result",
            json!({"isError": is_error, "summary": summary}),
        ),
        Progress::Stream(StreamEvent::Retry { attempt, error }) => {
            ("retry", json!({"attempt": attempt, "error": error}))
        }
        Progress::Stream(_) => return None,
    };
    Some(Event::default().event(name).json_data(data))
}
