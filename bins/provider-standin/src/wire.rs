//! The three providers' wire formats: SSE frames for an answer or a tool call, and error bodies.
//! Shapes follow what the real CLIs accept (checked by running them against this server; see
//! `docs/reference/real-clis.md`).

use serde_json::{json, Value};

/// The command every scripted tool call runs; tests look for its output.
pub const TOOL_COMMAND: &str = "echo tool-ok";

/// One SSE frame, with an `event:` line when the format names its events.
pub fn sse(event: Option<&str>, data: &Value) -> String {
    match event {
        Some(e) => format!("event: {e}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

/// The pieces an answer is streamed in: about ten, so a slow stream has something to spread.
pub fn chunks(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let size = chars.len().div_ceil(n.max(1)).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

fn tool_names(tools: &Value, key: &str) -> Vec<String> {
    tools
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t[key].as_str().map(str::to_owned))
        .collect()
}

// ------------------------------------------------------------------------------------ Anthropic

pub mod anthropic {
    use super::*;

    /// The shell tool and its input: Claude Code's `Bash`, Droid's `Execute` (which rejects a
    /// call without `riskLevel` and `riskLevelReason`), else any tool taking a `command`.
    pub fn tool_call(body: &Value) -> (String, Value) {
        let names = tool_names(&body["tools"], "name");
        if names.iter().any(|n| n == "Bash") {
            return (
                "Bash".into(),
                json!({"command": TOOL_COMMAND, "description": "Print tool-ok"}),
            );
        }
        if names.iter().any(|n| n == "Execute") {
            return (
                "Execute".into(),
                json!({"command": TOOL_COMMAND, "riskLevelReason": "It only prints a word.", "riskLevel": "low"}),
            );
        }
        let any = body["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["input_schema"]["properties"].get("command").is_some())
            .and_then(|t| t["name"].as_str())
            .unwrap_or("Bash")
            .to_owned();
        (any, json!({"command": TOOL_COMMAND}))
    }

    pub fn message_start(id: &str, model: &str) -> String {
        sse(
            Some("message_start"),
            &json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 10, "output_tokens": 1}}}),
        )
    }

    pub fn text_block_start() -> String {
        sse(
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        )
    }

    pub fn text_delta(text: &str) -> String {
        sse(
            Some("content_block_delta"),
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        )
    }

    pub fn tool_frames(id: &str, name: &str, input: &Value) -> Vec<String> {
        vec![
            sse(
                Some("content_block_start"),
                &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
            ),
            sse(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": input.to_string()}}),
            ),
        ]
    }

    pub fn end(stop_reason: &str) -> Vec<String> {
        vec![
            sse(
                Some("content_block_stop"),
                &json!({"type": "content_block_stop", "index": 0}),
            ),
            sse(
                Some("message_delta"),
                &json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": 12}}),
            ),
            sse(Some("message_stop"), &json!({"type": "message_stop"})),
        ]
    }

    /// The non-streaming reply (`"stream": false`), used by the CLIs for side requests.
    pub fn message(id: &str, model: &str, content: Value, stop_reason: &str) -> Value {
        json!({"id": id, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 12}})
    }

    pub fn error(status: u16) -> Value {
        let (kind, message) = match status {
            429 => (
                "rate_limit_error",
                "Number of requests has exceeded your rate limit (stand-in)",
            ),
            401 => ("authentication_error", "invalid x-api-key (stand-in)"),
            403 => (
                "permission_error",
                "Your API key does not have permission to use the specified resource (stand-in)",
            ),
            529 => ("overloaded_error", "Overloaded (stand-in)"),
            _ => ("api_error", "Internal server error (stand-in)"),
        };
        json!({"type": "error", "error": {"type": kind, "message": message}})
    }
}

// --------------------------------------------------------------------------------------- Gemini

pub mod gemini {
    use super::*;

    /// Gemini CLI's shell tool is `run_shell_command`.
    pub fn tool_call(body: &Value) -> (String, Value) {
        let names: Vec<String> = body["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|t| tool_names(&t["functionDeclarations"], "name"))
            .collect();
        let name = if names.is_empty() || names.iter().any(|n| n == "run_shell_command") {
            "run_shell_command".to_owned()
        } else {
            names[0].clone()
        };
        (name, json!({"command": TOOL_COMMAND}))
    }

    pub fn candidate(parts: Value, finish: Option<&str>, model: &str) -> Value {
        let mut cand = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if let Some(f) = finish {
            cand["finishReason"] = json!(f);
        }
        json!({"candidates": [cand],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 12, "totalTokenCount": 22},
            "modelVersion": model})
    }

    pub fn error(status: u16) -> Value {
        let (code, message) = match status {
            429 => (
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota). (stand-in)",
            ),
            401 => (
                "UNAUTHENTICATED",
                "API key not valid. Please pass a valid API key. (stand-in)",
            ),
            403 => (
                "PERMISSION_DENIED",
                "Permission denied on resource (stand-in)",
            ),
            503 => (
                "UNAVAILABLE",
                "The model is overloaded. Please try again later. (stand-in)",
            ),
            _ => ("INTERNAL", "An internal error has occurred. (stand-in)"),
        };
        json!({"error": {"code": status, "message": message, "status": code}})
    }
}

// --------------------------------------------------------------------------- OpenAI Responses

pub mod openai {
    use super::*;

    /// Codex's shell tool: `shell` takes an argv, `shell_command` and `exec_command` a string.
    /// Returns the output item for the call.
    pub fn tool_item(body: &Value, call_id: &str) -> Value {
        let tools = &body["tools"];
        let names = tool_names(tools, "name");
        let has = |n: &str| names.iter().any(|x| x == n);
        let (name, args) = if has("shell") {
            (
                "shell",
                json!({"command": ["bash", "-lc", TOOL_COMMAND], "timeout_ms": 10000}),
            )
        } else if has("shell_command") {
            ("shell_command", json!({"command": TOOL_COMMAND}))
        } else if has("exec_command") {
            ("exec_command", json!({"cmd": TOOL_COMMAND}))
        } else if tools
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["type"] == "local_shell")
        {
            return json!({"type": "local_shell_call", "id": format!("lsh_{call_id}"), "call_id": call_id,
                "status": "completed",
                "action": {"type": "exec", "command": ["bash", "-lc", TOOL_COMMAND]}});
        } else {
            ("shell", json!({"command": ["bash", "-lc", TOOL_COMMAND]}))
        };
        json!({"type": "function_call", "id": format!("fc_{call_id}"), "call_id": call_id,
            "name": name, "arguments": args.to_string(), "status": "completed"})
    }

    pub fn response(id: &str, model: &str, status: &str, output: Value) -> Value {
        json!({"id": id, "object": "response", "created_at": 0, "status": status, "model": model,
            "output": output,
            "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 12, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 22}})
    }

    pub fn message_item(id: &str, text: &str) -> Value {
        json!({"type": "message", "id": id, "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]})
    }

    pub fn error(status: u16) -> Value {
        let (kind, code, message) = match status {
            429 => (
                "requests",
                "rate_limit_exceeded",
                "Rate limit reached for requests (stand-in)",
            ),
            401 => (
                "invalid_request_error",
                "invalid_api_key",
                "Incorrect API key provided (stand-in)",
            ),
            403 => (
                "invalid_request_error",
                "unsupported_country_region_territory",
                "Forbidden (stand-in)",
            ),
            _ => (
                "server_error",
                "server_error",
                "The server had an error while processing your request (stand-in)",
            ),
        };
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
    }
}
