//! Codex CLI 0.169.0 `exec --json` (`shared/captures/codex/*.jsonl`).

use crate::cli::Output;
use crate::json::J;
use crate::obj;
use crate::run::{note_turn, Agent, Ctx};
use crate::state::CreateError;
use crate::sys;

pub const VERSION: &str = "0.169.0";

/// `codex login status`: the real CLI prints this on stderr, exit 1 when logged out.
pub fn login_status(logged_out: bool) -> i32 {
    if logged_out {
        sys::err_line("Not logged in");
        1
    } else {
        sys::err_line("Logged in using ChatGPT");
        0
    }
}

pub struct Codex {
    ctx: Ctx,
    thread_id: String,
    next_item: u32,
    streaming_item: Option<String>,
    streamed_text: String,
    tool_calls: i64,
}

impl Codex {
    /// Finds the thread for `resume <id>` / `resume --last`, or starts a new one.
    pub fn prepare(ctx: Ctx) -> Result<Codex, i32> {
        let thread_id = if ctx.opts.resume.is_some() || ctx.opts.resume_last {
            let found = match &ctx.opts.resume {
                Some(id) => ctx.store.load("codex", &ctx.cwd, id),
                None => ctx.store.latest("codex", &ctx.cwd),
            };
            match found {
                Some(s) => ctx.continue_session(s).id,
                None => {
                    let id = ctx.opts.resume.clone().unwrap_or_default();
                    // codex-resume-unknown.stderr (the real one adds a backtrace).
                    sys::err_line(&format!(
                        "Error: thread/resume: thread/resume failed: no rollout found for thread id {id} (code -32600)"
                    ));
                    return Err(1);
                }
            }
        } else {
            let id = uuid::Uuid::now_v7().to_string();
            let s = ctx.new_session("codex", id.clone());
            match ctx.store.create(&s) {
                Ok(()) => note_turn(&s),
                Err(CreateError::Exists) => {}
                Err(CreateError::Io(e)) => {
                    sys::err_line(&format!("kokino-fake-agent: cannot record session: {e}"));
                }
            }
            id
        };
        Ok(Codex {
            ctx,
            thread_id,
            next_item: 0,
            streaming_item: None,
            streamed_text: String::new(),
            tool_calls: 0,
        })
    }

    fn item_id(&mut self) -> String {
        let id = format!("item_{}", self.next_item);
        self.next_item += 1;
        id
    }

    fn error_event(&self, message: &str) {
        self.ctx
            .ev(&obj! { "type" => "error", "message" => message });
    }

    /// `turn.failed`, the terminal failure event; without `--json` the message goes to stderr.
    fn turn_failed(&self, message: &str) {
        if self.ctx.stream() {
            sys::event(&obj! { "type" => "turn.failed", "error" => obj! { "message" => message } });
        } else {
            sys::err_line(&format!("ERROR: {message}"));
        }
    }
}

impl Agent for Codex {
    fn init(&mut self) {
        self.ctx
            .ev(&obj! { "type" => "thread.started", "thread_id" => self.thread_id.clone() });
        // The captures show this non-fatal item for models codex has no metadata for; emitting it
        // for such names keeps parsers honest about `item.completed` items that are not answers.
        if let Some(model) = self.ctx.opts.model.clone().filter(|m| m.contains("fake")) {
            let id = self.item_id();
            self.ctx.ev(&obj! {
                "type" => "item.completed",
                "item" => obj! {
                    "id" => id,
                    "type" => "error",
                    "message" => format!("Model metadata for `{model}` not found. Defaulting to fallback metadata; this can degrade performance and cause issues."),
                },
            });
        }
        self.ctx.ev(&obj! { "type" => "turn.started" });
    }

    fn auth_fail(&mut self) -> i32 {
        // The real CLI retries forever without credentials; the fake fails fast with the 401 the
        // API would return, so tests do not have to wait for a timeout.
        let msg = "unexpected status 401 Unauthorized: Missing bearer or basic authentication in header, url: https://api.openai.com/v1/responses";
        self.error_event(&format!("Reconnecting... 1/1 ({msg})"));
        self.error_event(msg);
        self.turn_failed(msg);
        1
    }

    fn rate_limited(&mut self) -> i32 {
        let msg = "exceeded retry limit, last status: 429 Too Many Requests";
        self.error_event(&format!("Reconnecting... 1/1 ({msg})"));
        self.error_event(msg);
        self.turn_failed(msg);
        1
    }

    fn rate_limit_retry(&mut self, attempt: u32) -> bool {
        // codex-429.jsonl's wording, with the default five stream retries.
        self.error_event(&format!(
            "Reconnecting... {attempt}/5 (exceeded retry limit, last status: 429 Too Many Requests)"
        ));
        true
    }

    fn earlier_turns(&self) -> usize {
        self.ctx.earlier_turns.get()
    }

    fn tool(&mut self) -> Option<i32> {
        let id = self.item_id();
        let command = "/bin/bash -lc 'echo hello-from-tool'";
        self.ctx.ev(&obj! {
            "type" => "item.started",
            "item" => obj! {
                "id" => id.clone(),
                "type" => "command_execution",
                "command" => command,
                "aggregated_output" => "",
                "exit_code" => J::Null,
                "status" => "in_progress",
            },
        });
        self.ctx.ev(&obj! {
            "type" => "item.completed",
            "item" => obj! {
                "id" => id,
                "type" => "command_execution",
                "command" => command,
                "aggregated_output" => "hello-from-tool\n",
                "exit_code" => 0,
                "status" => "completed",
            },
        });
        self.tool_calls += 1;
        None
    }

    fn stream_chunk(&mut self, _i: usize, _n: usize, chunk: &str) {
        // Partial agent messages are `item.updated` events carrying the text so far; only the
        // final `item.completed` is the answer.
        let id = match &self.streaming_item {
            Some(id) => id.clone(),
            None => {
                let id = self.item_id();
                self.ctx.ev(&obj! {
                    "type" => "item.started",
                    "item" => obj! { "id" => id.clone(), "type" => "agent_message", "text" => "" },
                });
                self.streaming_item = Some(id.clone());
                id
            }
        };
        self.streamed_text.push_str(chunk);
        self.ctx.ev(&obj! {
            "type" => "item.updated",
            "item" => obj! { "id" => id, "type" => "agent_message", "text" => self.streamed_text.clone() },
        });
    }

    fn answer(&mut self, text: &str) {
        let id = match self.streaming_item.take() {
            Some(id) => id,
            None => self.item_id(),
        };
        match self.ctx.opts.output {
            Output::Stream => sys::event(&obj! {
                "type" => "item.completed",
                "item" => obj! { "id" => id, "type" => "agent_message", "text" => text },
            }),
            _ => sys::raw(format!("{text}\n").as_bytes()),
        }
        if let Some(path) = &self.ctx.opts.output_last_message {
            if let Err(e) = std::fs::write(path, text) {
                sys::err_line(&format!("Failed to write last message file {path:?}: {e}"));
            }
        }
    }

    fn finish(&mut self, _text: &str) -> i32 {
        let calls = 1 + self.tool_calls;
        self.ctx.ev(&obj! {
            "type" => "turn.completed",
            "usage" => obj! {
                "input_tokens" => 10 * calls,
                "cached_input_tokens" => 0,
                "cache_write_input_tokens" => 0,
                "output_tokens" => 5 * calls,
                "reasoning_output_tokens" => 0,
            },
        });
        0
    }

    fn fail(&mut self, code: i32) {
        let msg = format!("Fake agent failure requested by fake:exit={code}");
        self.error_event(&msg);
        self.turn_failed(&msg);
    }

    fn interrupted(&mut self) -> Option<i32> {
        // codex-sigINT.jsonl: the stream just stops after `turn.started`, exit 1.
        Some(1)
    }
}
