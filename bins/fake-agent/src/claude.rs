//! Claude Code 2.1.197 `-p --output-format stream-json --verbose`
//! (`shared/captures/claude/*.jsonl`).

use crate::cli::Output;
use crate::json::{strs, J};
use crate::obj;
use crate::run::{note_turn, Agent, Ctx};
use crate::state::CreateError;
use crate::sys;

pub const VERSION: &str = "2.1.197";
const DEFAULT_MODEL: &str = "claude-opus-4-8[1m]";

const TOOLS: &[&str] = &[
    "Task",
    "Bash",
    "CronCreate",
    "CronDelete",
    "CronList",
    "Edit",
    "EnterWorktree",
    "ExitWorktree",
    "NotebookEdit",
    "Read",
    "ReportFindings",
    "ScheduleWakeup",
    "SendMessage",
    "Skill",
    "TaskCreate",
    "TaskGet",
    "TaskList",
    "TaskOutput",
    "TaskStop",
    "TaskUpdate",
    "WebFetch",
    "WebSearch",
    "Workflow",
    "Write",
];
const SKILLS: &[&str] = &[
    "deep-research",
    "update-config",
    "verify",
    "debug",
    "code-review",
    "simplify",
    "batch",
    "fewer-permission-prompts",
    "loop",
    "claude-api",
    "run",
    "run-skill-generator",
];
const BUILTIN_COMMANDS: &[&str] = &[
    "clear",
    "compact",
    "config",
    "context",
    "heapdump",
    "init",
    "reload-skills",
    "review",
    "security-review",
    "usage",
    "insights",
    "goal",
    "team-onboarding",
];
const AGENTS: &[&str] = &[
    "claude",
    "Explore",
    "general-purpose",
    "Plan",
    "statusline-setup",
];

/// `claude auth status`: JSON on stdout, exit 1 when logged out (verified on the real CLI).
pub fn auth_status(logged_out: bool) -> i32 {
    if logged_out {
        sys::raw(b"{\"loggedIn\":false,\"authMethod\":\"none\",\"apiProvider\":\"firstParty\"}\n");
        1
    } else {
        sys::raw(
            b"{\"loggedIn\":true,\"authMethod\":\"claude.ai\",\"apiProvider\":\"firstParty\",\"email\":\"fake-agent@example.invalid\",\"subscriptionType\":\"max\"}\n",
        );
        0
    }
}

pub struct Claude {
    ctx: Ctx,
    session_id: String,
    model: String,
    streamed: bool,
    msg_id: String,
    /// API round trips so far in this run (a tool call adds one), reported as `num_turns`.
    api_turns: u32,
    permission_denials: J,
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Claude {
    /// Resolves the session (`--session-id`, `--resume`, `--continue` or a fresh id) the way the
    /// real CLI does, printing its error and returning the exit code when that fails.
    pub fn prepare(ctx: Ctx) -> Result<Claude, i32> {
        let resume = if ctx.opts.resume_last {
            // `--continue` with no earlier session in this cwd starts a new one, like the real CLI.
            ctx.store.latest("claude", &ctx.cwd).map(|s| s.id)
        } else {
            ctx.opts.resume.clone()
        };
        let session_id = if let Some(id) = resume {
            match ctx.store.load("claude", &ctx.cwd, &id) {
                Some(s) => ctx.continue_session(s).id,
                None => {
                    let msg = format!("No conversation found with session ID: {id}");
                    sys::err_line(&msg);
                    if ctx.opts.output != Output::Text {
                        // The lone result line of claude-resume-bad.jsonl.
                        sys::event(&obj! {
                            "type" => "result",
                            "subtype" => "error_during_execution",
                            "duration_ms" => 0,
                            "duration_api_ms" => 0,
                            "is_error" => true,
                            "num_turns" => 0,
                            "stop_reason" => J::Null,
                            "session_id" => id,
                            "total_cost_usd" => 0,
                            "usage" => usage(0, 0),
                            "modelUsage" => obj! {},
                            "permission_denials" => J::Arr(vec![]),
                            "uuid" => uuid(),
                            "errors" => vec![msg],
                        });
                    }
                    return Err(1);
                }
            }
        } else {
            let id = ctx.opts.session_id.clone().unwrap_or_else(uuid);
            let s = ctx.new_session("claude", id.clone());
            match ctx.store.create(&s) {
                Ok(()) => note_turn(&s),
                Err(CreateError::Exists) => {
                    sys::err_line(&format!("Error: Session ID {id} is already in use."));
                    return Err(1);
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
        Ok(Claude {
            ctx,
            session_id,
            model,
            streamed: false,
            msg_id: new_msg_id(),
            api_turns: 1,
            permission_denials: J::Arr(vec![]),
        })
    }

    /// The model name inside `message.model`: the API model without the context-size suffix.
    fn api_model(&self) -> String {
        self.model
            .split('[')
            .next()
            .unwrap_or(&self.model)
            .to_owned()
    }

    fn permission_mode(&self) -> String {
        if self.ctx.opts.skip_permissions {
            "bypassPermissions".into()
        } else {
            self.ctx
                .opts
                .permission_mode
                .clone()
                .unwrap_or_else(|| "default".into())
        }
    }

    fn assistant(&self, content: J) -> J {
        obj! {
            "type" => "assistant",
            "message" => obj! {
                "id" => self.msg_id.clone(),
                "type" => "message",
                "role" => "assistant",
                "model" => self.api_model(),
                "content" => J::Arr(vec![content]),
                "stop_reason" => J::Null,
                "stop_sequence" => J::Null,
                "usage" => obj! {
                    "input_tokens" => 11,
                    "output_tokens" => 1,
                    "cache_creation_input_tokens" => 0,
                    "cache_read_input_tokens" => 0,
                },
                "context_management" => J::Null,
            },
            "parent_tool_use_id" => J::Null,
            "session_id" => self.session_id.clone(),
            "uuid" => uuid(),
        }
    }

    /// The `<synthetic>` assistant line the CLI prints for API and auth failures.
    fn synthetic(&self, text: &str, error: &str) -> J {
        obj! {
            "type" => "assistant",
            "message" => obj! {
                "id" => uuid(),
                "container" => J::Null,
                "model" => "<synthetic>",
                "role" => "assistant",
                "stop_details" => J::Null,
                "stop_reason" => "stop_sequence",
                "stop_sequence" => "",
                "type" => "message",
                "usage" => obj! {
                    "input_tokens" => 0,
                    "output_tokens" => 0,
                    "cache_creation_input_tokens" => 0,
                    "cache_read_input_tokens" => 0,
                    "server_tool_use" => obj! { "web_search_requests" => 0, "web_fetch_requests" => 0 },
                    "service_tier" => J::Null,
                    "cache_creation" => obj! { "ephemeral_1h_input_tokens" => 0, "ephemeral_5m_input_tokens" => 0 },
                    "inference_geo" => J::Null,
                    "iterations" => J::Null,
                    "speed" => J::Null,
                },
                "content" => J::Arr(vec![obj! { "type" => "text", "text" => text }]),
                "context_management" => J::Null,
            },
            "parent_tool_use_id" => J::Null,
            "session_id" => self.session_id.clone(),
            "uuid" => uuid(),
            "error" => error,
        }
    }

    fn api_retry(&self, attempt: u32, delay_ms: J, status: u32, error: &str) -> J {
        obj! {
            "type" => "system",
            "subtype" => "api_retry",
            "attempt" => attempt,
            "max_retries" => 2,
            "retry_delay_ms" => delay_ms,
            "error_status" => status,
            "error" => error,
            "session_id" => self.session_id.clone(),
            "uuid" => uuid(),
        }
    }

    fn stream_event(&self, event: J) -> J {
        obj! {
            "type" => "stream_event",
            "event" => event,
            "session_id" => self.session_id.clone(),
            "parent_tool_use_id" => J::Null,
            "uuid" => uuid(),
        }
    }

    /// The terminal `result` line. `result` is `Ok(text)` for the success shape (including API
    /// failures, which are `subtype:"success"` with `is_error:true`) and `Err((subtype, errors))`
    /// for the error subtypes, which carry `errors[]` and no `result`.
    #[allow(clippy::too_many_arguments)]
    fn result(
        &self,
        result: Result<&str, (&str, Vec<String>)>,
        is_error: bool,
        api_error_status: Option<u32>,
        stop_reason: Option<&str>,
        terminal_reason: Option<&str>,
        billed: bool,
    ) -> J {
        let (input, output) = if billed {
            (
                11 * i64::from(self.api_turns),
                7 * i64::from(self.api_turns),
            )
        } else {
            (0, 0)
        };
        let cost = if billed {
            0.00023 * f64::from(self.api_turns)
        } else {
            0.0
        };
        let model_usage = if billed {
            J::Obj(vec![(
                // Keyed by the init model name, `[1m]` suffix included, as the real CLI does.
                self.model.clone().into(),
                obj! {
                    "inputTokens" => input,
                    "outputTokens" => output,
                    "cacheReadInputTokens" => 0,
                    "cacheCreationInputTokens" => 0,
                    "webSearchRequests" => 0,
                    "costUSD" => cost,
                    "contextWindow" => 1_000_000,
                    "maxOutputTokens" => 64_000,
                },
            )])
        } else {
            obj! {}
        };
        let duration = self.ctx.elapsed_ms();
        let mut r = obj! { "type" => "result" };
        match &result {
            Ok(_) => {
                r.push("subtype", "success");
                r.push("is_error", is_error);
                r.push("api_error_status", api_error_status);
                r.push("duration_ms", duration);
                r.push("duration_api_ms", if billed { duration / 2 } else { 0 });
                if billed {
                    r.push("ttft_ms", duration * 3 / 4);
                    r.push("ttft_stream_ms", duration * 3 / 4);
                    r.push("time_to_request_ms", duration / 2);
                }
            }
            Err((subtype, _)) => {
                r.push("subtype", *subtype);
                r.push("duration_ms", duration);
                r.push("duration_api_ms", if billed { duration / 2 } else { 0 });
                r.push("is_error", is_error);
            }
        }
        r.push("num_turns", self.api_turns);
        if let Ok(text) = &result {
            r.push("result", *text);
        }
        r.push("stop_reason", stop_reason);
        r.push("session_id", self.session_id.clone());
        r.push("total_cost_usd", cost);
        r.push("usage", usage(input, output));
        r.push("modelUsage", model_usage);
        r.push("permission_denials", self.permission_denials.clone());
        if let Some(t) = terminal_reason {
            r.push("terminal_reason", t);
        }
        r.push("fast_mode_state", "off");
        r.push("uuid", uuid());
        if let Err((_, errors)) = result {
            r.push("errors", errors);
        }
        r
    }

    /// Prints the terminal result in whatever output mode was asked for.
    fn emit_result(&self, r: &J, text_for_text_mode: &str) {
        match self.ctx.opts.output {
            Output::Stream | Output::Json => sys::event(r),
            Output::Text => sys::raw(format!("{text_for_text_mode}\n").as_bytes()),
        }
    }

    fn error_result(&self, text: &str, error: &str, status: Option<u32>) -> i32 {
        self.ctx.ev(&self.synthetic(text, error));
        let r = self.result(
            Ok(text),
            true,
            status,
            Some("stop_sequence"),
            Some("completed"),
            false,
        );
        self.emit_result(&r, text);
        1
    }
}

fn new_msg_id() -> String {
    format!("msg_{}", &uuid::Uuid::new_v4().simple().to_string()[..24])
}

fn usage(input: i64, output: i64) -> J {
    obj! {
        "input_tokens" => input,
        "cache_creation_input_tokens" => 0,
        "cache_read_input_tokens" => 0,
        "output_tokens" => output,
        "server_tool_use" => obj! { "web_search_requests" => 0, "web_fetch_requests" => 0 },
        "service_tier" => "standard",
        "cache_creation" => obj! { "ephemeral_1h_input_tokens" => 0, "ephemeral_5m_input_tokens" => 0 },
        "inference_geo" => "",
        "iterations" => J::Arr(vec![]),
        "speed" => "standard",
    }
}

impl Agent for Claude {
    fn init(&mut self) {
        let key = crate::state::cwd_key(&self.ctx.cwd);
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        let mut commands: Vec<&str> = SKILLS.to_vec();
        commands.extend_from_slice(BUILTIN_COMMANDS);
        let init = obj! {
            "type" => "system",
            "subtype" => "init",
            "cwd" => self.ctx.cwd.clone(),
            "session_id" => self.session_id.clone(),
            "tools" => strs(TOOLS),
            "mcp_servers" => J::Arr(vec![]),
            "model" => self.model.clone(),
            "permissionMode" => self.permission_mode(),
            "slash_commands" => strs(&commands),
            "apiKeySource" => "none",
            "claude_code_version" => VERSION,
            "output_style" => "default",
            "agents" => strs(AGENTS),
            "skills" => strs(SKILLS),
            "plugins" => J::Arr(vec![]),
            "analytics_disabled" => false,
            "product_feedback_disabled" => false,
            "uuid" => uuid(),
            "memory_paths" => obj! { "auto" => format!("{home}/.claude/projects/{key}/memory/") },
            "fast_mode_state" => "off",
        };
        self.ctx.ev(&init);
    }

    fn auth_fail(&mut self) -> i32 {
        self.error_result(
            "Not logged in · Please run /login",
            "authentication_failed",
            None,
        )
    }

    fn rate_limited(&mut self) -> i32 {
        self.ctx
            .ev(&self.api_retry(1, J::Int(1000), 429, "rate_limit"));
        self.ctx
            .ev(&self.api_retry(2, J::Float(1034.548235860376), 429, "rate_limit"));
        // The quota signal the broker parks agents on: rejected, resetting a minute from now.
        self.ctx.ev(&obj! {
            "type" => "rate_limit_event",
            "rate_limit_info" => obj! {
                "status" => "rejected",
                "resetsAt" => sys::epoch_s() + 60,
                "rateLimitType" => "five_hour",
                "overageStatus" => "rejected",
                "overageDisabledReason" => "org_level_disabled",
                "isUsingOverage" => false,
            },
            "uuid" => uuid(),
            "session_id" => self.session_id.clone(),
        });
        self.error_result(
            "API Error: Request rejected (429) · This request would exceed your account's rate limit. Please try again later.",
            "rate_limit",
            Some(429),
        )
    }

    fn rate_limit_retry(&mut self, attempt: u32) -> bool {
        self.ctx
            .ev(&self.api_retry(attempt, J::Int(1000), 429, "rate_limit"));
        true
    }

    fn earlier_turns(&self) -> usize {
        self.ctx.earlier_turns.get()
    }

    fn tool(&mut self) -> Option<i32> {
        let tool_id = format!("toolu_{}", &uuid::Uuid::new_v4().simple().to_string()[..24]);
        let input =
            obj! { "command" => "echo hello-from-tool", "description" => "Print a greeting" };
        self.ctx.ev(&self.assistant(obj! {
            "type" => "tool_use",
            "id" => tool_id.clone(),
            "name" => "Bash",
            "input" => input,
        }));
        self.ctx.ev(&obj! {
            "type" => "user",
            "message" => obj! {
                "role" => "user",
                "content" => J::Arr(vec![obj! {
                    "tool_use_id" => tool_id,
                    "type" => "tool_result",
                    "content" => "hello-from-tool",
                    "is_error" => false,
                }]),
            },
            "parent_tool_use_id" => J::Null,
            "session_id" => self.session_id.clone(),
            "uuid" => uuid(),
            "timestamp" => sys::iso_now(),
            "tool_use_result" => obj! {
                "stdout" => "hello-from-tool",
                "stderr" => "",
                "interrupted" => false,
                "isImage" => false,
                "noOutputExpected" => false,
            },
        });
        self.api_turns += 1;
        self.msg_id = new_msg_id();
        match self.ctx.opts.max_turns {
            Some(max) if max < self.api_turns => {
                let msg = format!("Reached maximum number of turns ({max})");
                let r = self.result(
                    Err(("error_max_turns", vec![msg.clone()])),
                    true,
                    None,
                    Some("tool_use"),
                    Some("max_turns"),
                    true,
                );
                self.emit_result(&r, &msg);
                Some(1)
            }
            _ => None,
        }
    }

    fn stream_chunk(&mut self, i: usize, _n: usize, chunk: &str) {
        if i == 0 {
            self.streamed = true;
            let mut start = self.stream_event(obj! {
                "type" => "message_start",
                "message" => obj! {
                    "id" => self.msg_id.clone(),
                    "type" => "message",
                    "role" => "assistant",
                    "model" => self.api_model(),
                    "content" => J::Arr(vec![]),
                    "stop_reason" => J::Null,
                    "stop_sequence" => J::Null,
                    "usage" => obj! {
                        "input_tokens" => 11,
                        "output_tokens" => 1,
                        "cache_creation_input_tokens" => 0,
                        "cache_read_input_tokens" => 0,
                    },
                },
            });
            start.push("ttft_ms", self.ctx.elapsed_ms());
            self.ctx.ev(&start);
            self.ctx.ev(&self.stream_event(obj! {
                "type" => "content_block_start",
                "index" => 0,
                "content_block" => obj! { "type" => "text", "text" => "" },
            }));
        }
        self.ctx.ev(&self.stream_event(obj! {
            "type" => "content_block_delta",
            "index" => 0,
            "delta" => obj! { "type" => "text_delta", "text" => chunk },
        }));
    }

    fn answer(&mut self, text: &str) {
        self.ctx
            .ev(&self.assistant(obj! { "type" => "text", "text" => text }));
        if self.streamed {
            self.ctx
                .ev(&self.stream_event(obj! { "type" => "content_block_stop", "index" => 0 }));
            self.ctx.ev(&self.stream_event(obj! {
                "type" => "message_delta",
                "delta" => obj! { "stop_reason" => "end_turn", "stop_sequence" => J::Null },
                "usage" => obj! { "output_tokens" => 7 },
            }));
            self.ctx
                .ev(&self.stream_event(obj! { "type" => "message_stop" }));
        }
    }

    fn finish(&mut self, text: &str) -> i32 {
        let r = self.result(
            Ok(text),
            false,
            None,
            Some("end_turn"),
            Some("completed"),
            true,
        );
        self.emit_result(&r, text);
        0
    }

    fn fail(&mut self, code: i32) {
        let msg = format!("Fake agent failure requested by fake:exit={code}");
        sys::err_line(&msg);
        let r = self.result(
            Err(("error_during_execution", vec![msg.clone()])),
            true,
            None,
            None,
            None,
            false,
        );
        self.emit_result(&r, &msg);
    }

    fn interrupted(&mut self) -> Option<i32> {
        // claude-sigINT.jsonl: an interrupted user line, an error_during_execution result, exit 0.
        self.ctx.ev(&obj! {
            "type" => "user",
            "message" => obj! {
                "role" => "user",
                "content" => J::Arr(vec![obj! { "type" => "text", "text" => "[Request interrupted by user]" }]),
            },
            "parent_tool_use_id" => J::Null,
            "session_id" => self.session_id.clone(),
            "uuid" => uuid(),
            "timestamp" => sys::iso_now(),
        });
        self.api_turns += 1;
        let msg = "[ede_diagnostic] result_type=user last_content_type=n/a stop_reason=null";
        let r = self.result(
            Err(("error_during_execution", vec![msg.to_owned()])),
            true,
            None,
            None,
            Some("aborted_streaming"),
            false,
        );
        self.emit_result(&r, "[Request interrupted by user]");
        Some(0)
    }
}
