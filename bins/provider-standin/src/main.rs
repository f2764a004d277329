//! `kokino-provider-standin`: a loopback stand-in for the model providers of the four real
//! agent CLIs, so that the real CLIs can run in tests on a machine with no route to any
//! provider.
//!
//! It serves, on `127.0.0.1`:
//! * Anthropic Messages, `POST /v1/messages` (SSE, or JSON when `"stream"` is not true) and
//!   `POST /v1/messages/count_tokens` — Claude Code, and Droid with a BYOK `anthropic` model;
//! * Gemini, `POST /v1beta/models/{m}:streamGenerateContent?alt=sse` (SSE),
//!   `…:generateContent` and `…:countTokens` — Gemini CLI;
//! * OpenAI Responses, `POST /v1/responses` (SSE) and `GET /v1/models` — Codex.
//!
//! What it does is scripted by words in the last user turn of the conversation:
//!
//! | word | effect |
//! |---|---|
//! | `USE_TOOL` | a shell tool call running `echo tool-ok`; the follow-up request (ending with the tool result) gets the answer, with `after tool: tool-ok` |
//! | `RATE429` / `RATE429=N` | HTTP 429 with `retry-after: N` (default 1) and the provider's rate-limit body |
//! | `AUTH401`, `AUTH403` | HTTP 401 / 403 with the provider's auth error body |
//! | `ERR500`, `ERR503`, `OVER529` | HTTP 500 / 503 / 529 |
//! | `SLOW_STREAM` / `SLOW_STREAM=S` | the answer streamed in ten pieces over S seconds (default 5) |
//! | `HANG` | the stream starts and never ends |
//!
//! Otherwise the answer is `FAKE_ANSWER: <n> earlier user turns`, where n counts the user turns
//! the request carried before the last one: a resumed session proves that its history reached
//! the provider. Every request is appended to a JSON-lines file (`--record FILE` or
//! `KOKINO_STANDIN_RECORD`) as `{seq, method, path, query, userAgent, body, reply}`.
//!
//! The port (`--port`, default 0: any free port) is printed alone on the first line of stdout
//! once the server listens.

#![forbid(unsafe_code)]

mod conversation;
mod wire;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use serde_json::{json, Value};

use conversation::{Reading, Scenario};

#[derive(Parser)]
#[command(
    name = "kokino-provider-standin",
    about = "Loopback stand-in for the Anthropic, Gemini and OpenAI Responses APIs, scripted by words in the prompt"
)]
struct Args {
    /// Port on 127.0.0.1; 0 picks a free one. The port is printed on stdout.
    #[arg(long, env = "KOKINO_STANDIN_PORT", default_value_t = 0)]
    port: u16,
    /// Append every request to this JSON-lines file.
    #[arg(long, env = "KOKINO_STANDIN_RECORD")]
    record: Option<PathBuf>,
}

struct Standin {
    record: Option<Mutex<File>>,
    seq: AtomicU64,
}

impl Standin {
    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn record(&self, entry: Value) {
        if let Some(f) = &self.record {
            let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
            // A test reads the file while the server runs: one write per line, no buffering.
            let _ = f.write_all(format!("{entry}\n").as_bytes());
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let record = match &args.record {
        Some(p) => Some(Mutex::new(
            OpenOptions::new().create(true).append(true).open(p)?,
        )),
        None => None,
    };
    let state = Arc::new(Standin {
        record,
        seq: AtomicU64::new(0),
    });
    let app = axum::Router::new().fallback(handle).with_state(state);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    let port = listener.local_addr()?.port();
    println!("{port}");
    std::io::stdout().flush()?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// Which API a request is for, from its path.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Api {
    Anthropic,
    Gemini,
    OpenAi,
}

async fn handle(
    State(st): State<Arc<Standin>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seq = st.next();
    let path = uri.path().to_owned();
    let body_json: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let (reply, response) = route(seq, &method, &path, &body_json);
    st.record(json!({
        "seq": seq,
        "timeMs": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        "method": method.as_str(),
        "path": path,
        "query": uri.query(),
        "userAgent": headers.get("user-agent").and_then(|v| v.to_str().ok()),
        "body": body_json,
        "reply": reply,
    }));
    response
}

/// Decides the reply; returns a short description of it for the record, and the response.
fn route(seq: u64, method: &Method, path: &str, body: &Value) -> (String, Response) {
    let model = body["model"]
        .as_str()
        .unwrap_or("stand-in-model")
        .to_owned();
    // Claude Code probes the base URL with `HEAD /` before its first request.
    if *method == Method::HEAD {
        return ("reachable".into(), StatusCode::OK.into_response());
    }
    if *method == Method::GET {
        return if path.ends_with("/v1/models") {
            (
                "model list".into(),
                json_response(
                    StatusCode::OK,
                    json!({"object": "list", "data": [{"id": "gpt-fake", "object": "model", "owned_by": "stand-in"}], "models": []}),
                ),
            )
        } else if path.ends_with("/v1beta/models") {
            (
                "model list".into(),
                json_response(StatusCode::OK, json!({"models": []})),
            )
        } else {
            not_found(path)
        };
    }
    if path.ends_with("/v1/messages/count_tokens") {
        return (
            "count tokens".into(),
            json_response(StatusCode::OK, json!({"input_tokens": 10})),
        );
    }
    if path.ends_with(":countTokens") {
        return (
            "count tokens".into(),
            json_response(StatusCode::OK, json!({"totalTokens": 10})),
        );
    }
    let (api, msgs, stream) = if path.ends_with("/v1/messages") {
        (
            Api::Anthropic,
            conversation::anthropic(body),
            body["stream"] == true,
        )
    } else if path.ends_with(":streamGenerateContent") {
        (Api::Gemini, conversation::gemini(body), true)
    } else if path.ends_with(":generateContent") {
        (Api::Gemini, conversation::gemini(body), false)
    } else if path.ends_with("/responses") {
        (
            Api::OpenAi,
            conversation::openai(body),
            body["stream"] != false,
        )
    } else {
        return not_found(path);
    };
    let reading = conversation::read(&msgs);
    let desc = format!("{:?}", reading.scenario);
    let resp = match reading.scenario {
        Scenario::Error {
            status,
            retry_after,
        } => error_response(api, status, retry_after),
        _ if !stream => plain(api, seq, &model, body, &reading),
        _ => streamed(api, seq, &model, body, &reading),
    };
    (desc, resp)
}

fn not_found(path: &str) -> (String, Response) {
    (
        "not found".into(),
        json_response(
            StatusCode::NOT_FOUND,
            json!({"error": {"message": format!("the stand-in does not serve {path}")}}),
        ),
    )
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn error_response(api: Api, status: u16, retry_after: Option<u64>) -> Response {
    let body = match api {
        Api::Anthropic => wire::anthropic::error(status),
        Api::Gemini => wire::gemini::error(status),
        Api::OpenAi => wire::openai::error(status),
    };
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_response(code, body);
    if let Some(s) = retry_after {
        if let Ok(v) = s.to_string().parse() {
            resp.headers_mut().insert("retry-after", v);
        }
    }
    resp
}

/// A non-streaming reply (the CLIs' side requests: titles, next-speaker checks, …).
fn plain(api: Api, seq: u64, model: &str, body: &Value, r: &Reading) -> Response {
    let text = conversation::answer_text(r);
    let tool = r.scenario == Scenario::Tool;
    let v = match api {
        Api::Anthropic => {
            let id = format!("msg_standin_{seq}");
            if tool {
                let (name, input) = wire::anthropic::tool_call(body);
                wire::anthropic::message(
                    &id,
                    model,
                    json!([{"type": "tool_use", "id": format!("toolu_standin_{seq}"), "name": name, "input": input}]),
                    "tool_use",
                )
            } else {
                wire::anthropic::message(
                    &id,
                    model,
                    json!([{"type": "text", "text": text}]),
                    "end_turn",
                )
            }
        }
        Api::Gemini => {
            // Gemini CLI asks for JSON (a next-speaker check, a routing decision) with
            // `responseMimeType`; a prose answer there would only make it log a parse error.
            let wants_json = body["generationConfig"]["responseMimeType"] == "application/json";
            let text = if wants_json {
                json!({"next_speaker": "user", "reasoning": "The stand-in always hands back to the user.",
                    "model_choice": "flash"})
                .to_string()
            } else {
                text
            };
            wire::gemini::candidate(json!([{"text": text}]), Some("STOP"), model)
        }
        Api::OpenAi => {
            let item = if tool {
                wire::openai::tool_item(body, &format!("call_standin_{seq}"))
            } else {
                wire::openai::message_item(&format!("msg_standin_{seq}"), &text)
            };
            wire::openai::response(
                &format!("resp_standin_{seq}"),
                model,
                "completed",
                json!([item]),
            )
        }
    };
    json_response(StatusCode::OK, v)
}

/// One step of a streamed reply.
enum Step {
    Frame(String),
    Sleep(Duration),
    /// Keep the connection open without another byte until the client goes away.
    Hang,
}

fn streamed(api: Api, seq: u64, model: &str, body: &Value, r: &Reading) -> Response {
    let text = conversation::answer_text(r);
    let (pieces, pause) = match r.scenario {
        Scenario::Answer { over } if !over.is_zero() => (chunks10(&text), over / 10),
        _ => (vec![text.clone()], Duration::ZERO),
    };
    let mut steps = Vec::new();
    let text_steps = |steps: &mut Vec<Step>, frame: &dyn Fn(&str) -> String| {
        for p in &pieces {
            if !pause.is_zero() {
                steps.push(Step::Sleep(pause));
            }
            steps.push(Step::Frame(frame(p)));
        }
    };
    match api {
        Api::Anthropic => {
            use wire::anthropic as a;
            steps.push(Step::Frame(a::message_start(
                &format!("msg_standin_{seq}"),
                model,
            )));
            match r.scenario {
                Scenario::Hang => steps.push(Step::Hang),
                Scenario::Tool => {
                    let (name, input) = a::tool_call(body);
                    for f in a::tool_frames(&format!("toolu_standin_{seq}"), &name, &input) {
                        steps.push(Step::Frame(f));
                    }
                    steps.extend(a::end("tool_use").into_iter().map(Step::Frame));
                }
                _ => {
                    steps.push(Step::Frame(a::text_block_start()));
                    text_steps(&mut steps, &|p| a::text_delta(p));
                    steps.extend(a::end("end_turn").into_iter().map(Step::Frame));
                }
            }
        }
        Api::Gemini => {
            use wire::gemini as g;
            match r.scenario {
                Scenario::Hang => steps.push(Step::Hang),
                Scenario::Tool => {
                    let (name, args) = g::tool_call(body);
                    steps.push(Step::Frame(wire::sse(
                        None,
                        &g::candidate(
                            json!([{"functionCall": {"name": name, "args": args}}]),
                            Some("STOP"),
                            model,
                        ),
                    )));
                }
                _ => {
                    let last = pieces.len().saturating_sub(1);
                    for (i, p) in pieces.iter().enumerate() {
                        if !pause.is_zero() {
                            steps.push(Step::Sleep(pause));
                        }
                        let finish = (i == last).then_some("STOP");
                        steps.push(Step::Frame(wire::sse(
                            None,
                            &g::candidate(json!([{"text": p}]), finish, model),
                        )));
                    }
                }
            }
        }
        Api::OpenAi => {
            use wire::openai as o;
            let resp_id = format!("resp_standin_{seq}");
            steps.push(Step::Frame(wire::sse(
                Some("response.created"),
                &json!({"type": "response.created", "response": o::response(&resp_id, model, "in_progress", json!([]))}),
            )));
            let item = match r.scenario {
                Scenario::Hang => {
                    steps.push(Step::Hang);
                    Value::Null
                }
                Scenario::Tool => o::tool_item(body, &format!("call_standin_{seq}")),
                _ => {
                    let msg_id = format!("msg_standin_{seq}");
                    steps.push(Step::Frame(wire::sse(
                        Some("response.output_item.added"),
                        &json!({"type": "response.output_item.added", "output_index": 0,
                            "item": {"type": "message", "id": msg_id, "role": "assistant", "status": "in_progress", "content": []}}),
                    )));
                    text_steps(&mut steps, &|p| {
                        wire::sse(
                            Some("response.output_text.delta"),
                            &json!({"type": "response.output_text.delta", "item_id": msg_id,
                                "output_index": 0, "content_index": 0, "delta": p}),
                        )
                    });
                    o::message_item(&msg_id, &text)
                }
            };
            if !item.is_null() {
                steps.push(Step::Frame(wire::sse(
                    Some("response.output_item.done"),
                    &json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
                )));
                steps.push(Step::Frame(wire::sse(
                    Some("response.completed"),
                    &json!({"type": "response.completed", "response": o::response(&resp_id, model, "completed", json!([item]))}),
                )));
            }
        }
    }
    sse_response(steps)
}

fn chunks10(text: &str) -> Vec<String> {
    wire::chunks(text, 10)
}

/// Plays the steps into the response body from a task, so sleeps and a hang do not hold the
/// handler; the task ends when the client goes away.
fn sse_response(steps: Vec<Step>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        for step in steps {
            match step {
                Step::Frame(f) => {
                    if tx.send(Ok(Bytes::from(f))).await.is_err() {
                        return;
                    }
                }
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::Hang => {
                    tx.closed().await;
                    return;
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
