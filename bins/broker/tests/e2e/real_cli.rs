//! The four **real** agent CLIs (claude, codex, gemini, droid from npm, pinned in
//! `tests/real-cli/package.json`) through a real broker, in headless mode, against the
//! project's provider stand-in (`kokino-provider-standin`) on loopback.
//!
//! The CLIs are looked up in `$KOKINO_REAL_CLI_DIR/node_modules/.bin` (default: `.real-clis` at
//! the workspace root), where `scripts/install-real-clis.sh` puts them; `.ci/run` installs them.
//! A CLI that is not installed is skipped with a loud message naming the install command.
//!
//! Each CLI runs every scenario, each on its own agent so that a parked or failed agent does not
//! colour the next scenario, and the test fails at the end with a table of every scenario: what
//! passed, what failed with the broker's answer, and the time through the broker beside the
//! same CLI run directly. Scenarios known to fail on the current broker say so in the table
//! (`known:`), and still fail the test: they are the acceptance criteria of issue 13.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{bin_dir, eventually, Broker, World};
use serde_json::{json, Value};

// ------------------------------------------------------------------------------------ set-up

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn real_cli_dir() -> PathBuf {
    match std::env::var_os("KOKINO_REAL_CLI_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => workspace_root().join(".real-clis"),
    }
}

/// The real CLI's launcher, or a loud skip message.
pub(crate) fn real_cli(name: &str) -> Option<PathBuf> {
    let path = real_cli_dir().join("node_modules/.bin").join(name);
    if path.exists() {
        return Some(path);
    }
    let msg = format!(
        "\n\n!!!! SKIPPED: real-CLI end-to-end test for `{name}`: {} not found.\n\
         !!!! Install the pinned real CLIs with:\n\
         !!!!     scripts/install-real-clis.sh && export KOKINO_REAL_CLI_DIR=$PWD/.real-clis\n\
         !!!! (needs npm; `.ci/run` does this on CI).\n",
        path.display()
    );
    // Written to the real stderr, not through `eprintln!`, which the test harness captures for
    // passing tests: a skip must be seen.
    let _ = std::io::stderr().write_all(msg.as_bytes());
    None
}

/// The stand-in, built on demand like the fake agent, on a free port, recording to a file.
pub(crate) struct Standin {
    child: Child,
    pub(crate) port: u16,
    record: PathBuf,
}

impl Standin {
    pub(crate) fn start(dir: &Path) -> Standin {
        let bin = bin_dir().join("kokino-provider-standin");
        if !bin.exists() {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-p", "kokino-provider-standin"])
                .status()
                .expect("cargo build");
            assert!(status.success(), "could not build kokino-provider-standin");
        }
        let record = dir.join("standin.jsonl");
        let mut child = Command::new(bin)
            .arg("--record")
            .arg(&record)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the stand-in");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("stand-in port");
        let port = line.trim().parse().expect("stand-in prints its port");
        Standin {
            child,
            port,
            record,
        }
    }

    /// Every recorded request.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Recorded model requests (not probes or token counts) whose body mentions `needle`.
    pub(crate) fn model_requests_with(&self, needle: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| {
                let p = r["path"].as_str().unwrap_or("");
                (p.ends_with("/v1/messages")
                    || p.ends_with(":streamGenerateContent")
                    || p.ends_with("/responses"))
                    && r["body"].to_string().contains(needle)
            })
            .collect()
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How one CLI is pointed at the stand-in: environment, files in its `HOME`, and the flags for
/// the direct runs that the broker's timings are compared with.
pub(crate) struct Setup {
    pub(crate) name: &'static str,
    pub(crate) binary: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) env: BTreeMap<String, String>,
    /// Extra arguments that let the CLI run a shell tool without asking.
    tool_args: Vec<&'static str>,
    /// Marks every process started for this CLI (the env is inherited by node wrappers and
    /// native children), so the test can find them in /proc.
    mark: String,
}

impl Setup {
    pub(crate) fn new(name: &'static str, binary: PathBuf, dir: &Path, port: u16) -> Setup {
        let home = dir.join(format!("home-{name}"));
        let work = dir.join(format!("work-{name}"));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        // One mark per set-up, not per CLI: the headless and the tmux tests of one CLI run at
        // the same time, and each must count only its own processes.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mark = format!("{name}-{}-{n}", std::process::id());
        let mut env = BTreeMap::new();
        env.insert("HOME".into(), home.display().to_string());
        env.insert("KOKINO_REALCLI_MARK".into(), mark.clone());
        let base = format!("http://127.0.0.1:{port}");
        let tool_args: Vec<&'static str> = match name {
            "claude" => {
                env.insert("ANTHROPIC_BASE_URL".into(), base);
                env.insert("ANTHROPIC_API_KEY".into(), "sk-standin".into());
                env.insert(
                    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".into(),
                    "1".into(),
                );
                // Claude retries 429 and 401 ten times (about three minutes against the
                // stand-in's `retry-after: 1`); one retry keeps the retry signal in the stream
                // and the suite short.
                env.insert("CLAUDE_CODE_MAX_RETRIES".into(), "1".into());
                // `--dangerously-skip-permissions` is refused as root outside a sandbox.
                env.insert("IS_SANDBOX".into(), "1".into());
                vec!["--dangerously-skip-permissions"]
            }
            "codex" => {
                // The provider goes in config.toml rather than `-c` flags: the broker passes
                // extraArgs on the first turn, and `codex exec resume` must find it too.
                let dir = home.join(".codex");
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(
                    dir.join("config.toml"),
                    format!(
                        "model = \"gpt-fake\"\nmodel_provider = \"fake\"\n\n[model_providers.fake]\n\
                         name = \"fake\"\nbase_url = \"{base}/v1\"\nenv_key = \"FAKE_OPENAI_KEY\"\n\
                         wire_api = \"responses\"\nrequest_max_retries = 0\nstream_max_retries = 0\n"
                    ),
                )
                .unwrap();
                env.insert("FAKE_OPENAI_KEY".into(), "sk-standin".into());
                vec!["--dangerously-bypass-approvals-and-sandbox"]
            }
            "gemini" => {
                let dir = home.join(".gemini");
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(
                    dir.join("settings.json"),
                    r#"{"security":{"auth":{"selectedType":"gemini-api-key"}}}"#,
                )
                .unwrap();
                env.insert("GOOGLE_GEMINI_BASE_URL".into(), base);
                env.insert("GEMINI_API_KEY".into(), "standin".into());
                vec!["--yolo"]
            }
            _ => {
                let dir = home.join(".factory");
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(
                    dir.join("config.json"),
                    json!({"custom_models": [{"model_display_name": "Fake", "model": "claude-fake",
                        "base_url": base, "api_key": "sk-standin", "provider": "anthropic",
                        "max_tokens": 4096}]})
                    .to_string(),
                )
                .unwrap();
                vec!["--auto", "low"]
            }
        };
        Setup {
            name,
            binary,
            work,
            env,
            tool_args,
            mark,
        }
    }

    fn model(&self) -> Option<&'static str> {
        match self.name {
            "gemini" => Some("gemini-2.5-flash"),
            "factory-droid" | "droid" => Some("custom:claude-fake"),
            _ => None,
        }
    }

    /// The registration body of an agent of this CLI.
    pub(crate) fn agent(&self, tools: bool, extra: Value) -> Value {
        let mut body = json!({
            "binary": self.binary.display().to_string(),
            "cwd": self.work.display().to_string(),
            "env": self.env,
            "extraArgs": if tools { self.tool_args.clone() } else { Vec::new() },
        });
        if let Some(m) = self.model() {
            body["model"] = json!(m);
        }
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        body
    }

    /// Runs the CLI directly the way the broker does (prompt on stdin), for the timings.
    /// `resume` is the CLI's session id for a later turn. Returns (exit code, stdout, seconds).
    pub(crate) fn direct(
        &self,
        prompt: &str,
        tools: bool,
        resume: Option<&str>,
    ) -> (i32, String, f64) {
        let mut args: Vec<String> = Vec::new();
        match self.name {
            "claude" => {
                args.extend(
                    ["-p", "--output-format", "stream-json", "--verbose"].map(String::from),
                );
                match resume {
                    Some(id) => args.extend(["--resume".into(), id.to_owned()]),
                    None => args.extend(["--session-id".into(), uuid_v4()]),
                }
            }
            "codex" => {
                args.extend(["exec", "--json", "--skip-git-repo-check"].map(String::from));
                if let Some(id) = resume {
                    args.extend(["resume".into(), id.to_owned()]);
                }
            }
            "gemini" => {
                args.extend(
                    [
                        "-o",
                        "stream-json",
                        "--skip-trust",
                        "-m",
                        "gemini-2.5-flash",
                    ]
                    .map(String::from),
                );
                if let Some(id) = resume {
                    args.extend(["--resume".into(), id.to_owned()]);
                }
            }
            _ => {
                args.extend(
                    ["exec", "-o", "stream-json", "-m", "custom:claude-fake"].map(String::from),
                );
                if let Some(id) = resume {
                    args.extend(["--fork".into(), id.to_owned()]);
                }
            }
        }
        if tools {
            args.extend(self.tool_args.iter().map(|s| s.to_string()));
        }
        if self.name == "codex" {
            args.push("-".into());
        }
        let started = Instant::now();
        let mut child = Command::new(&self.binary)
            .args(&args)
            .envs(&self.env)
            .current_dir(&self.work)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the real CLI");
        let _ = child.stdin.take().unwrap().write_all(prompt.as_bytes());
        let out = child.wait_with_output().expect("real CLI output");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            started.elapsed().as_secs_f64(),
        )
    }

    /// Live (non-zombie) processes carrying this CLI's mark: the CLI, its node wrapper, its
    /// native child, its tools.
    pub(crate) fn processes(&self) -> Vec<(i32, String)> {
        let needle = format!("KOKINO_REALCLI_MARK={}", self.mark);
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            if !environ.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
                continue;
            }
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .is_some_and(|s| s == "Z");
            if zombie {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            out.push((pid, cmdline));
        }
        out
    }
}

fn uuid_v4() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("a uuid from the kernel")
        .trim()
        .to_owned()
}

/// The CLI session id in a direct run's stream.
fn session_of(name: &str, stdout: &str) -> Option<String> {
    let key = if name == "codex" {
        "thread_id"
    } else {
        "session_id"
    };
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| v[key].as_str().map(str::to_owned))
}

// --------------------------------------------------------------------------------- reporting

struct Outcome {
    scenario: &'static str,
    /// None: passed; Some(why): failed.
    failure: Option<String>,
    /// Marked when the failure is a defect named in issue 13 that the parsers do not fix yet.
    known: Option<&'static str>,
    broker_s: f64,
    direct_s: Option<f64>,
}

#[derive(Default)]
struct Report {
    cli: String,
    rows: Vec<Outcome>,
}

impl Report {
    fn add(
        &mut self,
        scenario: &'static str,
        broker_s: f64,
        direct_s: Option<f64>,
        known: Option<&'static str>,
        checks: Vec<(bool, String)>,
    ) {
        let failed: Vec<String> = checks
            .into_iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, why)| why)
            .collect();
        self.rows.push(Outcome {
            scenario,
            failure: (!failed.is_empty()).then(|| failed.join("; ")),
            known: if failed.is_empty() { None } else { known },
            broker_s,
            direct_s,
        });
    }

    fn table(&self) -> String {
        let mut s = format!(
            "\nreal CLI `{}` through the broker (headless) vs run directly:\n",
            self.cli
        );
        s.push_str(&format!(
            "  {:<14} {:>9} {:>9}  result\n",
            "scenario", "broker s", "direct s"
        ));
        for r in &self.rows {
            let direct = r
                .direct_s
                .map(|d| format!("{d:.2}"))
                .unwrap_or_else(|| "-".into());
            let result = match (&r.failure, r.known) {
                (None, _) => "PASS".to_owned(),
                (Some(f), Some(k)) => format!("FAIL (known: {k}): {f}"),
                (Some(f), None) => format!("FAIL: {f}"),
            };
            s.push_str(&format!(
                "  {:<14} {:>9.2} {:>9}  {result}\n",
                r.scenario, r.broker_s, direct
            ));
        }
        s
    }

    fn finish(self) {
        let table = self.table();
        // Past the harness's capture (see `real_cli`): the timings are wanted on green runs too.
        let _ = std::io::stderr().write_all(table.as_bytes());
        let failed: Vec<&str> = self
            .rows
            .iter()
            .filter(|r| r.failure.is_some())
            .map(|r| r.scenario)
            .collect();
        assert!(
            failed.is_empty(),
            "real CLI `{}`: scenarios failed: {failed:?}{table}",
            self.cli
        );
    }
}

/// A JSON value for a report line, cut to 600 characters (never inside a character).
pub(crate) fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 600 {
        format!("{}…", s.chars().take(600).collect::<String>())
    } else {
        s
    }
}

async fn execute_timed(b: &Broker, agent: &str, body: Value) -> (u16, Option<String>, Value, f64) {
    execute_on(b.client.clone(), b.base.clone(), agent.to_owned(), body).await
}

/// Owned arguments, so an execution can run in a task while the test watches /proc.
pub(crate) async fn execute_on(
    client: reqwest::Client,
    base: String,
    agent: String,
    body: Value,
) -> (u16, Option<String>, Value, f64) {
    let started = Instant::now();
    let r = client
        .post(format!("{base}/agents/{agent}/execute"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, retry, v, started.elapsed().as_secs_f64())
}

// --------------------------------------------------------------------------------- scenarios

/// The real CLIs are heavy (node, a native binary, their TUIs): at most two of their tests run
/// at once, so that on a 2-core machine their start-up times stay within the timeouts the tests
/// hold them to, whatever else the suite runs beside them.
pub(crate) static REAL_CLI_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

async fn run_cli(cli_type: &'static str, name: &'static str) {
    let Some(binary) = real_cli(name) else {
        return;
    };
    let _slot = REAL_CLI_SLOTS
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let w = World::new();
    let standin = Standin::start(w.path());
    let s = Setup::new(name, binary, w.path(), standin.port);
    // The operator allows the real CLIs' directory (agents name their binary there).
    let allowed = real_cli_dir().join("node_modules/.bin");
    let b = w.start_with(&["--allow-binary", &allowed.display().to_string()], &[]);
    let mut report = Report {
        cli: name.to_owned(),
        ..Report::default()
    };
    let reg = |agent: &str, tools: bool, extra: Value| {
        let body = s.agent(tools, extra);
        let w = &w;
        let b = &b;
        let agent = agent.to_owned();
        async move { w.register(b, &agent, cli_type, body).await }
    };

    // 1. Answer.
    reg("talker", false, json!({})).await;
    let (st, _, v, t) = execute_timed(&b, "talker", json!({"prompt": "what is 2+2"})).await;
    let (dcode, dout, dt) = s.direct("what is 2+2", false, None);
    let content = v["content"].as_str().unwrap_or("");
    report.add(
        "answer",
        t,
        Some(dt),
        None,
        vec![
            (st == 200, format!("status {st}: {}", short(&v))),
            (
                content.contains("FAKE_ANSWER: 0 earlier user turns"),
                format!("content {content:?}"),
            ),
            (dcode == 0, format!("direct run exit {dcode}")),
        ],
    );

    // 2. Resume: the second turn carries the first one to the provider.
    let (st, _, v, t) =
        execute_timed(&b, "talker", json!({"prompt": "and the second question"})).await;
    let direct_resume =
        session_of(name, &dout).map(|id| s.direct("and the second question", false, Some(&id)));
    let content = v["content"].as_str().unwrap_or("");
    let carried = standin
        .model_requests_with("and the second question")
        .iter()
        .any(|r| r["body"].to_string().contains("what is 2+2"));
    // Droid continues with `--fork <id>` (offline), not `-s <id>` (needs Factory's servers).
    report.add(
        "resume",
        t,
        direct_resume.as_ref().map(|d| d.2),
        None,
        vec![
            (st == 200, format!("status {st}: {}", short(&v))),
            (
                content.contains("FAKE_ANSWER: 1 earlier user turns"),
                format!("content {content:?}"),
            ),
            (
                carried,
                "the provider did not receive the first turn with the second".into(),
            ),
            (
                direct_resume.as_ref().is_some_and(|d| d.0 == 0),
                format!("direct resume {:?}", direct_resume.as_ref().map(|d| d.0)),
            ),
        ],
    );

    // 3. Tool use with the CLI's permission flags.
    reg("tooler", true, json!({})).await;
    let (st, _, v, t) = execute_timed(&b, "tooler", json!({"prompt": "USE_TOOL please"})).await;
    let (_, _, dt) = s.direct("USE_TOOL please", true, None);
    let content = v["content"].as_str().unwrap_or("");
    report.add(
        "tool",
        t,
        Some(dt),
        None,
        vec![
            (st == 200, format!("status {st}: {}", short(&v))),
            (
                content.contains("after tool: tool-ok"),
                format!("content {content:?}"),
            ),
        ],
    );

    // 4. Prompt and system prompt never in any argv: scan /proc while a slow stream runs.
    let secret_sys = format!("SYSTEM-SECRET-{}", uuid_v4());
    let secret_prompt = format!("PROMPT-SECRET-{}", uuid_v4());
    reg(
        "secretive",
        false,
        json!({"systemPrompt": format!("Be brief. {secret_sys}")}),
    )
    .await;
    let task = tokio::spawn(execute_on(
        b.client.clone(),
        b.base.clone(),
        "secretive".into(),
        json!({"prompt": format!("{secret_prompt} SLOW_STREAM=3")}),
    ));
    let mut seen = 0usize;
    let mut leaks = BTreeMap::new();
    while !task.is_finished() {
        for (pid, cmd) in s.processes() {
            seen += 1;
            if cmd.contains(&secret_sys) || cmd.contains(&secret_prompt) {
                leaks.insert(pid, cmd);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (st, _, v, t) = task.await.unwrap();
    let sys_reached = !standin.model_requests_with(&secret_sys).is_empty();
    // Claude reads the system prompt from a private file (`--append-system-prompt-file`).
    report.add(
        "argv",
        t,
        None,
        None,
        vec![
            (st == 200, format!("status {st}: {}", short(&v))),
            (seen > 0, "no CLI process seen during the run".into()),
            (leaks.is_empty(), format!("secrets in argv: {leaks:?}")),
        ],
    );
    report.add(
        "system-prompt",
        0.0,
        None,
        None,
        vec![(
            sys_reached,
            "the system prompt never reached the provider".into(),
        )],
    );

    // 5. Cancel: no process left (node wrappers and native children included).
    reg("hanger", false, json!({})).await;
    let task = tokio::spawn(execute_on(
        b.client.clone(),
        b.base.clone(),
        "hanger".into(),
        json!({"prompt": "HANG now"}),
    ));
    let hanging = eventually(Duration::from_secs(30), || {
        !standin.model_requests_with("HANG now").is_empty()
    })
    .await;
    let before = s.processes();
    let started = Instant::now();
    let (cst, cv) = b.post("/agents/hanger/execute/cancel", json!({})).await;
    let (st, _, v, _) = task.await.unwrap();
    let gone = eventually(Duration::from_secs(15), || s.processes().is_empty()).await;
    let t = started.elapsed().as_secs_f64();
    report.add(
        "cancel",
        t,
        None,
        None,
        vec![
            (hanging, "the CLI never reached the provider".into()),
            (
                !before.is_empty(),
                "no CLI process before the cancel".into(),
            ),
            (
                cst == 200 && cv["cancelled"] == true,
                format!("cancel answered {cst}: {}", short(&cv)),
            ),
            (
                st == 409 && v["code"] == "EXECUTION_CANCELLED",
                format!("execute answered {st}: {}", short(&v)),
            ),
            (gone, format!("processes left: {:?}", s.processes())),
        ],
    );

    // 6. 401 from the provider: `auth_error`.
    reg("badkey", false, json!({})).await;
    let (st, _, v, t) = execute_timed(&b, "badkey", json!({"prompt": "AUTH401 please"})).await;
    let (_, _, dt) = s.direct("AUTH401 please", false, None);
    // Droid prints `agent_loop` "401 … authentication_error" and then `Exec failed`; the
    // earlier, specific error wins.
    report.add(
        "401",
        t,
        Some(dt),
        None,
        vec![
            (st == 502, format!("status {st}: {}", short(&v))),
            (
                v["details"]["classification"] == "auth_error",
                format!(
                    "classification {}: {}",
                    v["details"]["classification"],
                    short(&v)
                ),
            ),
        ],
    );

    // 7. 429 from the provider: 503 RATE_LIMITED with Retry-After. Claude, Codex and Gemini
    // signal the first 429 at once (an `api_retry` event, an `error` event, `Attempt 1 failed
    // with status 429` on stderr) and the broker stops the run there. Droid retries in silence
    // (nothing on stdout or stderr) for about 88 s before its `agent_loop` 429 error, so its
    // run must be allowed that long; the answer is then RATE_LIMITED, not a CLI error.
    reg("limited", false, json!({})).await;
    let timeout_ms = if name == "droid" { 150_000 } else { 30_000 };
    let (st, retry, v, t) = execute_timed(
        &b,
        "limited",
        json!({"prompt": "RATE429 please", "timeoutMs": timeout_ms}),
    )
    .await;
    // Direct runs of Gemini and Droid would hold the suite for minutes: not timed.
    let dt = matches!(name, "claude" | "codex").then(|| s.direct("RATE429 please", false, None).2);
    let known = None;
    report.add(
        "429",
        t,
        dt,
        known,
        vec![
            (
                st == 503 && v["code"] == "RATE_LIMITED",
                format!("status {st}: {}", short(&v)),
            ),
            (retry.is_some(), "no Retry-After header".into()),
        ],
    );

    drop(b);
    report.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn real_claude() {
    run_cli("claude-code", "claude").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn real_codex() {
    run_cli("codex", "codex").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn real_gemini() {
    run_cli("gemini", "gemini").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn real_droid() {
    run_cli("factory-droid", "droid").await;
}
