//! Gemini CLI 0.61.0 `-o stream-json` (`shared/captures/gemini/*`).

use crate::cli::Output;
use crate::json::J;
use crate::obj;
use crate::run::{note_turn, Agent, Ctx};
use crate::state::CreateError;
use crate::sys;

pub const VERSION: &str = "0.61.0";
const DEFAULT_MODEL: &str = "gemini-2.5-pro";

/// Gemini's fixed exit codes (bundle `Fatal*Error` classes).
pub const EXIT_AUTH: i32 = 41;
pub const EXIT_INPUT: i32 = 42;

const NO_AUTH: &str = "Please set an Auth method in your ~/.gemini/settings.json or specify one of the following environment variables before running: GEMINI_API_KEY, GOOGLE_GENAI_USE_VERTEXAI, GOOGLE_GENAI_USE_GCA";

pub struct Gemini {
    ctx: Ctx,
    session_id: String,
    model: String,
    streamed: bool,
    answer: String,
    tool_calls: i64,
}

impl Gemini {
    /// Gemini checks its auth before anything else: a logged-out run prints only to stderr.
    pub fn prepare(ctx: Ctx) -> Result<Gemini, i32> {
        if ctx.logged_out {
            let home = std::env::var("HOME").unwrap_or_else(|_| "~".into());
            let msg = NO_AUTH.replace('~', &home);
            if ctx.opts.output == Output::Json {
                // gemini-no-auth.stderr.json: with `-o json` the error object goes to stderr.
                let v = serde_json::json!({
                    "session_id": uuid::Uuid::new_v4().to_string(),
                    "error": { "type": "Error", "message": msg, "code": EXIT_AUTH },
                });
                sys::err_line(&serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                // In stream-json and text modes the early auth failure is plain text on stderr.
                sys::err_line(&msg);
            }
            return Err(EXIT_AUTH);
        }
        let session_id = if ctx.opts.resume.is_some() || ctx.opts.resume_last {
            let found = match &ctx.opts.resume {
                Some(id) => ctx.store.load("gemini", &ctx.cwd, id),
                None => ctx.store.latest("gemini", &ctx.cwd),
            };
            match found {
                Some(s) => ctx.continue_session(s).id,
                // gemini-resume-unknown.stderr, and `--resume latest` with no session here.
                None => {
                    match &ctx.opts.resume {
                        Some(id) => sys::err_line(&format!(
                            "Error resuming session: Invalid session identifier \"{id}\".\n  Searched for sessions in {}.\n  Use --list-sessions to see available sessions, then use --resume {{number}}, --resume {{uuid}}, or --resume latest.",
                            ctx.store.dir_of("gemini", &ctx.cwd).display()
                        )),
                        None => sys::err_line("No previous sessions found for this project."),
                    }
                    return Err(EXIT_INPUT);
                }
            }
        } else {
            let id = ctx
                .opts
                .session_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let s = ctx.new_session("gemini", id.clone());
            match ctx.store.create(&s) {
                Ok(()) => note_turn(&s),
                Err(CreateError::Exists) => {
                    sys::err_line(&format!(
                        "Error starting session: Session ID {id} already exists"
                    ));
                    return Err(EXIT_INPUT);
                }
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
        Ok(Gemini {
            ctx,
            session_id,
            model,
            streamed: false,
            answer: String::new(),
            tool_calls: 0,
        })
    }

    fn stats(&self) -> J {
        let calls = 1 + self.tool_calls;
        let (input, output) = (10 * calls, 5 * calls);
        let per_model = obj! {
            "total_tokens" => input + output,
            "input_tokens" => input,
            "output_tokens" => output,
            "cached" => 0,
            "input" => input,
        };
        obj! {
            "total_tokens" => input + output,
            "input_tokens" => input,
            "output_tokens" => output,
            "cached" => 0,
            "input" => input,
            "duration_ms" => self.ctx.elapsed_ms(),
            "tool_calls" => self.tool_calls,
            "models" => J::Obj(vec![(self.model.clone().into(), per_model)]),
        }
    }

    fn message(&self, content: &str) -> J {
        obj! {
            "type" => "message",
            "timestamp" => sys::iso_now(),
            "role" => "assistant",
            "content" => content,
            "delta" => true,
        }
    }

    /// A fatal error: `result{status:"error"}` in stream mode, the text on stderr in every mode.
    fn error_result(&self, kind: &str, message: &str) {
        sys::err_line(message);
        match self.ctx.opts.output {
            Output::Stream => sys::event(&obj! {
                "type" => "result",
                "timestamp" => sys::iso_now(),
                "status" => "error",
                "error" => obj! { "type" => kind, "message" => message },
                "stats" => self.stats(),
            }),
            Output::Json => sys::event(&obj! {
                "session_id" => self.session_id.clone(),
                "error" => obj! { "type" => kind, "message" => message },
            }),
            Output::Text => {}
        }
    }
}

impl Agent for Gemini {
    fn init(&mut self) {
        self.ctx.ev(&obj! {
            "type" => "init",
            "timestamp" => sys::iso_now(),
            "session_id" => self.session_id.clone(),
            "model" => self.model.clone(),
        });
        self.ctx.ev(&obj! {
            "type" => "message",
            "timestamp" => sys::iso_now(),
            "role" => "user",
            "content" => self.ctx.prompt.trim(),
        });
    }

    fn auth_fail(&mut self) -> i32 {
        // Unreachable in practice: `prepare` already failed a logged-out run before `init`.
        sys::err_line(NO_AUTH);
        EXIT_AUTH
    }

    fn rate_limited(&mut self) -> i32 {
        // The real CLI retries a 429 for minutes with no further output (gemini-429-stuck-partial);
        // the fake reports the give-up at once as a fatal error result and exits 1.
        self.error_result(
            "Error",
            "[API Error: 429 Too Many Requests] Resource has been exhausted (e.g. check quota).",
        );
        1
    }

    fn rate_limit_retry(&mut self, attempt: u32) -> bool {
        // gemini-429-25s.stderr: one block per failed attempt, nothing on stdout.
        sys::err_line(&format!(
            "Attempt {attempt} failed with status 429. Retrying with backoff... _ApiError: {{\"error\":{{\"code\":429,\"message\":\"Resource has been exhausted (e.g. check quota).\",\"status\":\"RESOURCE_EXHAUSTED\"}}}}\n    at throwErrorIfNotOK (file:///kokino-fake-agent/gemini/bundle.js:1:1) {{\n  status: 429\n}}"
        ));
        true
    }

    fn earlier_turns(&self) -> usize {
        self.ctx.earlier_turns.get()
    }

    fn tool(&mut self) -> Option<i32> {
        let tool_id = format!("run_shell_command__run_shell_command_{}_0", sys::epoch_ms());
        self.ctx.ev(&obj! {
            "type" => "tool_use",
            "timestamp" => sys::iso_now(),
            "tool_name" => "run_shell_command",
            "tool_id" => tool_id.clone(),
            "parameters" => obj! { "command" => "echo hello-from-tool", "description" => "greet" },
        });
        self.ctx.ev(&obj! {
            "type" => "tool_result",
            "timestamp" => sys::iso_now(),
            "tool_id" => tool_id,
            "status" => "success",
            "output" => "hello-from-tool",
        });
        self.tool_calls += 1;
        None
    }

    fn stream_chunk(&mut self, _i: usize, _n: usize, chunk: &str) {
        // The answer is the concatenation of assistant deltas, so the chunks are the whole answer.
        self.streamed = true;
        self.answer.push_str(chunk);
        self.ctx.ev(&self.message(chunk));
    }

    fn answer(&mut self, text: &str) {
        if !self.streamed {
            self.answer = text.to_owned();
            self.ctx.ev(&self.message(text));
        }
    }

    fn finish(&mut self, text: &str) -> i32 {
        match self.ctx.opts.output {
            Output::Stream => sys::event(&obj! {
                "type" => "result",
                "timestamp" => sys::iso_now(),
                "status" => "success",
                "stats" => self.stats(),
            }),
            Output::Json => sys::event(&obj! {
                "session_id" => self.session_id.clone(),
                "response" => text,
                "stats" => obj! {},
            }),
            Output::Text => sys::raw(format!("{text}\n").as_bytes()),
        }
        0
    }

    fn fail(&mut self, code: i32) {
        self.error_result(
            "FatalError",
            &format!("Fake agent failure requested by fake:exit={code}"),
        );
    }

    fn interrupted(&mut self) -> Option<i32> {
        // gemini-sigINT.jsonl: SIGINT is ignored until the reply arrives, then the run succeeds.
        None
    }
}
