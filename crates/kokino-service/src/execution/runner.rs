//! One leg of an execution: from an agent, a mode and a session to a command for the headless
//! or the tmux executor, and the dispatch to that executor.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kokino_cli::interactive_args;
use kokino_cli::{build_args, child_env, InvocationRequest, SessionArg};
use kokino_core::{AgentRecord, CliType, CommMode, OutcomeClass};
use kokino_exec::{
    run_headless, CancellationToken, ExecEvent, HeadlessCommand, Limits, RunResult, TmuxRequest,
};
use tokio::sync::mpsc;

use crate::Broker;

/// SIGHUP's number on Linux (the service does not link libc for one constant).
const SIGHUP: i32 = 1;

/// How one leg of an execution runs.
pub(crate) enum Runner {
    /// A headless run, with what its parser must know of it (a resume or a new session).
    Headless(HeadlessCommand, Limits, kokino_cli::RunContext),
    Tmux(TmuxRequest, Limits),
}

impl Runner {
    pub(crate) fn limits(&self) -> &Limits {
        match self {
            Runner::Headless(_, l, _) | Runner::Tmux(_, l) => l,
        }
    }
}

/// Why a leg could not be built: its message becomes the `spawn_error` outcome's.
#[derive(Debug)]
pub(crate) struct CannotStart(pub String);

/// What one leg needs to start.
pub(crate) struct Leg<'a> {
    pub agent: &'a AgentRecord,
    pub mode: CommMode,
    pub session: SessionArg<'a>,
    pub prompt: String,
    pub timeout: Duration,
    /// Holds the prompt back until the execution is stored (headless runs only; see
    /// `run::run`).
    pub gate: Option<kokino_exec::StdinGate>,
}

/// Finds the agent's CLI binary on the broker's PATH, caching successful lookups.
async fn resolve_binary(b: &Broker, agent: &AgentRecord) -> Result<PathBuf, CannotStart> {
    // Checked again at every run, so an agent stored before a configuration change cannot run a
    // binary the configuration no longer allows.
    b.inner
        .cfg
        .check_agent(&agent.spec)
        .map_err(|e| CannotStart(e.to_string()))?;
    let name = agent
        .spec
        .binary
        .clone()
        .unwrap_or_else(|| b.inner.cfg.binary_for(agent.spec.cli_type).to_owned());
    if let Some(p) = b.inner.binaries.lock().expect("binary cache").get(&name) {
        return Ok(p.clone());
    }
    let path_var = std::env::var_os("PATH");
    match kokino_exec::resolve_binary(&name, path_var.as_deref()) {
        Ok(p) => {
            b.inner
                .binaries
                .lock()
                .expect("binary cache")
                .insert(name, p.clone());
            Ok(p)
        }
        Err(e) => Err(CannotStart(format!(
            "{e}; install the {} CLI or set its binary in the broker config or the agent's `binary`",
            agent.spec.cli_type
        ))),
    }
}

/// Everything one leg needs to start: the resolved binary, its arguments for the mode, the
/// child environment, the limits.
pub(crate) async fn build(b: &Broker, leg: Leg<'_>) -> Result<Runner, CannotStart> {
    let cfg = &b.inner.cfg;
    let agent = leg.agent;
    let cli = agent.spec.cli_type;
    let program = resolve_binary(b, agent).await?;
    let env = child_env(
        cli,
        std::env::vars(),
        &agent.spec.env,
        &cfg.conflicting_for(cli),
    );
    let limits = Limits {
        timeout: leg.timeout,
        inactivity: cfg.inactivity_timeout,
        post_result_grace: cfg.post_result_grace,
        kill_grace: cfg.kill_grace,
        max_memory_bytes: Some(agent.spec.max_memory_mb.unwrap_or(cfg.max_memory_mb) * 1024 * 1024),
        memory_sample_every: cfg.memory_sample_every,
        max_line_bytes: cfg.max_line_bytes,
        stop_on_rate_limit: agent.spec.rate_limit != Some(kokino_core::RateLimitPolicy::Cli),
    };
    let prompt_file = system_prompt_file(b, agent)?;
    let prompt_file = prompt_file
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    if leg.mode == CommMode::Tmux {
        let req = tmux_request(leg, program, env, prompt_file.as_deref());
        return Ok(Runner::Tmux(req, limits));
    }
    let args = build_args(&InvocationRequest {
        cli,
        model: agent.spec.model.as_deref(),
        system_prompt: agent.spec.system_prompt.as_deref(),
        system_prompt_file: prompt_file.as_deref(),
        extra_args: &agent.spec.extra_args,
        session: leg.session,
    });
    let cmd = HeadlessCommand {
        program,
        args,
        env,
        cwd: agent.spec.cwd.as_ref().map(PathBuf::from),
        stdin: leg.prompt.into_bytes(),
        supervisor: b.inner.supervisor.clone(),
        stdin_gate: leg.gate,
    };
    Ok(Runner::Headless(
        cmd,
        limits,
        kokino_cli::RunContext::for_session(leg.session),
    ))
}

/// The file Claude reads the agent's system prompt from (`--append-system-prompt-file`), so
/// that the text never appears in argv, where every local user could read it in
/// `/proc/*/cmdline`. Written (mode 0600, in a 0700 directory of the data directory) whenever a
/// leg is built, so it always holds the agent's current system prompt. `None` for the other CLIs
/// (their first prompt carries it) and for agents without one.
fn system_prompt_file(b: &Broker, agent: &AgentRecord) -> Result<Option<PathBuf>, CannotStart> {
    let cli = agent.spec.cli_type;
    let Some(text) = agent.spec.system_prompt.as_deref() else {
        return Ok(None);
    };
    if !kokino_cli::system_prompt_in_args(cli) || text.trim().is_empty() {
        return Ok(None);
    }
    let dir = b.inner.cfg.data_dir.join("prompts");
    let path = dir.join(format!("{}.system.md", agent.spec.agent_id));
    write_private(&dir, &path, text.as_bytes()).map_err(|e| {
        CannotStart(format!(
            "cannot write the system prompt file {}: {e}",
            path.display()
        ))
    })?;
    Ok(Some(path))
}

/// Writes `bytes` to `path` atomically, readable only by the broker's user.
fn write_private(
    dir: &std::path::Path,
    path: &std::path::Path,
    bytes: &[u8],
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = path.with_extension(format!("tmp{}", uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Variables that make the CLIs' TUIs (ink-based, `is-ci` style checks) believe they run
/// without a terminal.
const INTERACTIVE_CONFUSING_VARS: &[&str] = &[
    "CI",
    "CONTINUOUS_INTEGRATION",
    "BUILD_NUMBER",
    "RUN_ID",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "BUILDKITE",
    "TEAMCITY_VERSION",
    "JENKINS_URL",
];

/// The interactive command line of a tmux leg.
fn tmux_request(
    leg: Leg<'_>,
    program: PathBuf,
    env: BTreeMap<String, String>,
    system_prompt_file: Option<&str>,
) -> TmuxRequest {
    let agent = leg.agent;
    let mut env = env;
    // A TUI that sees a CI variable in its environment (the broker itself may run under CI or
    // a service manager that sets one) decides it is not interactive and exits: Gemini says
    // "No input provided via stdin", Droid draws nothing. Only the agent may set them.
    for var in INTERACTIVE_CONFUSING_VARS {
        if !agent.spec.env.contains_key(*var) {
            env.remove(*var);
        }
    }
    let (cli, session) = (agent.spec.cli_type, leg.session);
    let mut args = interactive_args(cli, session, agent.spec.model.as_deref());
    if let (CliType::ClaudeCode, Some(file), SessionArg::New { .. }) =
        (cli, system_prompt_file, session)
    {
        args.extend(["--append-system-prompt-file".to_owned(), file.to_owned()]);
    }
    args.extend(agent.spec.extra_args.iter().cloned());
    // Claude Code takes the new session's id from the broker; the other CLIs name theirs in
    // their session record, which the executor reports, and are resumed by it.
    let session_id = match session {
        SessionArg::New { preassigned_id } => {
            (cli == CliType::ClaudeCode).then(|| preassigned_id.to_owned())
        }
        SessionArg::Resume { session_id } => Some(session_id.to_owned()),
    };
    let cwd = agent
        .spec
        .cwd
        .as_ref()
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"));
    TmuxRequest {
        agent_id: agent.spec.agent_id.to_string(),
        tui: kokino_cli::tui_for(cli),
        program,
        args,
        env,
        cwd,
        prompt: leg.prompt,
        session_id,
    }
}

/// Where a leg's executor sends its events, and whether a headless CLI's lines go to the
/// agent's log (the secondary leg of a shadow run is not logged: the primary's log is the
/// agent's).
pub(crate) struct Output {
    pub events: mpsc::UnboundedSender<ExecEvent>,
    pub log: bool,
}

/// Runs one leg with its executor.
pub(crate) async fn run(
    b: &Broker,
    agent: &AgentRecord,
    runner: Runner,
    cancel: CancellationToken,
    out: Output,
) -> RunResult {
    let (id, cli) = (&agent.spec.agent_id, agent.spec.cli_type);
    match runner {
        Runner::Headless(cmd, limits, ctx) => {
            let log = out
                .log
                .then(|| Box::new(b.inner.logs.writer(id)) as Box<dyn kokino_core::LineSink>);
            let parser = kokino_cli::parser_for_run(cli, ctx);
            run_headless(cmd, parser, limits, cancel, out.events, log).await
        }
        Runner::Tmux(req, limits) => {
            let Some(tmux) = &b.inner.tmux else {
                return spawn_error_result("tmux is not available".into());
            };
            let tx = out.events;
            let first = tmux
                .run(req.clone(), limits.clone(), cancel.clone(), tx.clone())
                .await;
            // A pane killed by SIGHUP before any answer means the tmux server or session
            // went away under the CLI (tmux itself crashed, or an operator killed it), not
            // that the CLI failed: run it once more in a new session rather than fail.
            let hung_up = first.exit.signal == Some(SIGHUP)
                && first.parsed.answer.is_none()
                && !cancel.is_cancelled();
            if hung_up {
                tracing::warn!(agent = %id, "the tmux pane was hung up before answering; retrying once in a new session");
                tmux.run(req, limits, cancel, tx).await
            } else {
                first
            }
        }
    }
}

/// The result of a run that could not start at all.
pub(crate) fn spawn_error_result(message: String) -> RunResult {
    RunResult {
        outcome: OutcomeClass::SpawnError,
        parsed: Default::default(),
        exit: Default::default(),
        stop: None,
        stderr_tail: String::new(),
        duration: Duration::ZERO,
        peak_rss_bytes: 0,
        pid: None,
        spawn_error: Some(message),
    }
}
