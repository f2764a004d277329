//! Factory Droid 0.225.2 `exec -o stream-json` (`shared/captures/droid/*`).

use crate::cli::Output;
use crate::json::{strs, J};
use crate::obj;
use crate::run::{note_turn, Agent, Ctx};
use crate::state::CreateError;
use crate::sys;

pub const VERSION: &str = "0.225.2";
const DEFAULT_MODEL: &str = "gpt-5.6-sol";

const TOOLS: &[&str] = &[
    "Read",
    "LS",
    "Execute",
    "Edit",
    "ApplyPatch",
    "Grep",
    "Glob",
    "Create",
    "ExitSpecMode",
    "AskUser",
    "WebSearch",
    "TodoWrite",
    "FetchUrl",
    "GenerateDroid",
    "Script",
    "WaitForScript",
    "TaskOutput",
    "TaskStop",
    "ToolSearch",
    "Skill",
    "Task",
];

pub struct Droid {
    ctx: Ctx,
    session_id: String,
    model: String,
    tool_calls: i64,
    streamed: bool,
}

impl Droid {
    /// Resolves `-s <id>` or `--fork <id>`, or starts a new session.
    ///
    /// The real droid answers a session it cannot continue by exiting 1 with nothing on stdout
    /// or stderr: `-s <unknown>`, `--fork <unknown>`, and even `-s <known>` without a Factory
    /// login, since `-s` fetches the session from Factory's servers (droid-resume-s-offline,
    /// droid-fork-unknown). `KOKINO_FAKE_DROID_OFFLINE=1` imitates that last case; `--fork`
    /// works offline and carries the history into a new session id (droid-fork.jsonl).
    pub fn prepare(ctx: Ctx) -> Result<Droid, i32> {
        let session_id = if let Some(id) = ctx.opts.fork.clone() {
            let Some(old) = ctx.store.load("droid", &ctx.cwd, &id) else {
                return Err(1);
            };
            let mut s = ctx.new_session("droid", uuid::Uuid::new_v4().to_string());
            ctx.earlier_turns.set(old.turns.len());
            s.turns.splice(0..0, old.turns);
            match ctx.store.create(&s) {
                Ok(()) => note_turn(&s),
                Err(CreateError::Exists) => {}
                Err(CreateError::Io(e)) => {
                    sys::err_line(&format!("kokino-fake-agent: cannot record session: {e}"));
                }
            }
            s.id
        } else if let Some(id) = ctx.opts.resume.clone() {
            if crate::env_flag("KOKINO_FAKE_DROID_OFFLINE") {
                return Err(1);
            }
            match ctx.store.load("droid", &ctx.cwd, &id) {
                Some(s) => ctx.continue_session(s).id,
                None => return Err(1),
            }
        } else {
            let id = uuid::Uuid::new_v4().to_string();
            let s = ctx.new_session("droid", id.clone());
            match ctx.store.create(&s) {
                Ok(()) => note_turn(&s),
                Err(CreateError::Exists) => {}
                Err(CreateError::Io(e)) => {
                    sys::err_line(&format!("kokino-fake-agent: cannot record session: {e}"));
                }
            }
            id
        };
        let model = ctx
            .opts
            .model
            .clone()
            .unwrap_or_else(|| DEFAULT_MODEL.to_owned());
        Ok(Droid {
            ctx,
            session_id,
            model,
            tool_calls: 0,
            streamed: false,
        })
    }

    /// An `error` event (source `cli`), which ends the run; plain text on stderr in other modes.
    fn error(&self, msg: &str) {
        match self.ctx.opts.output {
            Output::Stream => sys::event(&error_event(msg, &self.session_id)),
            Output::Json => sys::event(&obj! {
                "type" => "result",
                "subtype" => "failure",
                "is_error" => true,
                "duration_ms" => self.ctx.elapsed_ms(),
                "num_turns" => 1 + self.tool_calls,
                "result" => msg,
                "session_id" => self.session_id.clone(),
            }),
            Output::Text => sys::err_line(&format!("Error during droid execution: {msg}")),
        }
    }

    fn usage(&self) -> J {
        let calls = 1 + self.tool_calls;
        obj! {
            "input_tokens" => 11 * calls,
            "output_tokens" => 7 * calls,
            "cache_read_input_tokens" => 0,
            "cache_creation_input_tokens" => 0,
            "factory_credits" => 0,
            "ttft_ms" => 10,
        }
    }
}

fn error_event(msg: &str, session_id: &str) -> J {
    obj! {
        "type" => "error",
        "source" => "cli",
        "message" => msg,
        "timestamp" => sys::epoch_ms(),
        "session_id" => session_id,
    }
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Agent for Droid {
    fn init(&mut self) {
        let effort = self.ctx.opts.reasoning_effort.clone().unwrap_or_else(|| {
            if self.model.starts_with("custom:") {
                "none".into()
            } else {
                "medium".into()
            }
        });
        self.ctx.ev(&obj! {
            "type" => "system",
            "subtype" => "init",
            "cwd" => self.ctx.cwd.clone(),
            "session_id" => self.session_id.clone(),
            "tools" => strs(TOOLS),
            "model" => self.model.clone(),
            "reasoning_effort" => effort,
        });
        self.ctx.ev(&obj! {
            "type" => "message",
            "role" => "user",
            "id" => uuid(),
            "text" => self.ctx.prompt.trim(),
            "timestamp" => sys::epoch_ms(),
            "session_id" => self.session_id.clone(),
        });
    }

    fn auth_fail(&mut self) -> i32 {
        self.error("Error: Authentication failed. Please log in using /login or set a valid FACTORY_API_KEY environment variable.");
        1
    }

    fn rate_limited(&mut self) -> i32 {
        // droid-429.jsonl: the agent loop's error, then the generic one, after silent retries.
        let cause = r#"429 {"error":{"message":"Number of requests has exceeded your rate limit","type":"rate_limit_error"},"type":"error"}"#;
        if self.ctx.stream() {
            sys::event(&obj! {
                "type" => "error",
                "source" => "agent_loop",
                "message" => cause,
                "timestamp" => sys::epoch_ms(),
                "session_id" => self.session_id.clone(),
            });
            self.error("Exec failed");
        } else {
            self.error(cause);
        }
        1
    }

    fn rate_limit_retry(&mut self, _attempt: u32) -> bool {
        // Droid retries silently and reports only its give-up.
        false
    }

    fn earlier_turns(&self) -> usize {
        self.ctx.earlier_turns.get()
    }

    fn tool(&mut self) -> Option<i32> {
        let id = format!("toolu_{}", &uuid::Uuid::new_v4().simple().to_string()[..24]);
        self.ctx.ev(&obj! {
            "type" => "tool_call",
            "id" => id.clone(),
            "messageId" => uuid(),
            "toolId" => "Execute",
            "toolName" => "Execute",
            "parameters" => obj! {
                "command" => "echo hello-from-tool",
                "description" => "Print a greeting",
                "riskLevelReason" => "Prints a fixed string.",
                "riskLevel" => "low",
            },
            "timestamp" => sys::epoch_ms(),
            "session_id" => self.session_id.clone(),
        });
        // The capture only shows a failing tool (`isError:true` + `error`); a successful result
        // carries its output in `value` instead.
        self.ctx.ev(&obj! {
            "type" => "tool_result",
            "id" => id,
            "messageId" => uuid(),
            "toolId" => "Execute",
            "isError" => false,
            "value" => "hello-from-tool\n",
            "timestamp" => sys::epoch_ms(),
            "session_id" => self.session_id.clone(),
        });
        self.tool_calls += 1;
        None
    }

    fn stream_chunk(&mut self, _i: usize, _n: usize, chunk: &str) {
        // Droid has no delta event; partial progress shows up as assistant messages, and the
        // answer is only `completion.finalText`.
        self.streamed = true;
        self.ctx.ev(&obj! {
            "type" => "message",
            "role" => "assistant",
            "id" => uuid(),
            "text" => chunk,
            "timestamp" => sys::epoch_ms(),
            "session_id" => self.session_id.clone(),
        });
    }

    fn answer(&mut self, text: &str) {
        if self.streamed {
            return;
        }
        self.ctx.ev(&obj! {
            "type" => "message",
            "role" => "assistant",
            "id" => uuid(),
            "text" => text,
            "timestamp" => sys::epoch_ms(),
            "session_id" => self.session_id.clone(),
        });
    }

    fn finish(&mut self, text: &str) -> i32 {
        match self.ctx.opts.output {
            Output::Stream => sys::event(&obj! {
                "type" => "completion",
                "finalText" => text,
                "numTurns" => 1 + self.tool_calls,
                "durationMs" => self.ctx.elapsed_ms(),
                "session_id" => self.session_id.clone(),
                "timestamp" => sys::epoch_ms(),
                "usage" => self.usage(),
            }),
            Output::Json => sys::event(&obj! {
                "type" => "result",
                "subtype" => "success",
                "is_error" => false,
                "duration_ms" => self.ctx.elapsed_ms(),
                "num_turns" => 1 + self.tool_calls,
                "result" => text,
                "session_id" => self.session_id.clone(),
                "usage" => self.usage(),
            }),
            Output::Text => sys::raw(format!("{text}\n").as_bytes()),
        }
        0
    }

    fn fail(&mut self, code: i32) {
        self.error(&format!(
            "Error: Fake agent failure requested by fake:exit={code}"
        ));
    }

    fn interrupted(&mut self) -> Option<i32> {
        // droid-sigINT.jsonl: the launcher exits 130 at once without a terminal event.
        Some(130)
    }
}
