//! Embedding the executor: run one agent CLI headless and print its answer.
//!
//! ```text
//! cargo run -p kokino-exec --example run_headless -- [--cli TYPE] [--binary PATH] [--cwd DIR]
//!     [--timeout-ms N] PROMPT...
//! ```
//!
//! `TYPE` is one of `claude-code` (the default), `codex`, `gemini`, `factory-droid`; the binary
//! defaults to the CLI's usual name on `PATH`. The answer goes to stdout, the session id to
//! stderr; a failed run prints the error on stderr and exits with status 1.
//!
//! Everything the broker does per run is here in a few calls: [`kokino_cli::build_args`] for the
//! command line, [`kokino_cli::child_env`] for the environment, [`kokino_cli::parser_for`] for
//! the CLI's output, and [`kokino_exec::run_headless`] for the process itself (its own process
//! group, the watchdogs, and nothing left running when it returns).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kokino_cli::{
    build_args, child_env, default_conflicting_vars, parser_for, EnvMap, InvocationRequest,
    SessionArg,
};
use kokino_core::{CliType, OutcomeClass};
use kokino_exec::{resolve_binary, run_headless, CancellationToken, HeadlessCommand, Limits};
use tokio::sync::mpsc;

/// The command line of this example.
struct Options {
    cli: CliType,
    binary: Option<String>,
    cwd: Option<PathBuf>,
    timeout: Duration,
    prompt: String,
}

fn parse_options() -> Result<Options, String> {
    let mut opts = Options {
        cli: CliType::ClaudeCode,
        binary: None,
        cwd: None,
        timeout: Duration::from_secs(300),
        prompt: String::new(),
    };
    let mut words = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--cli" => {
                let v = value("--cli")?;
                opts.cli = v.parse().map_err(|e| format!("--cli {v}: {e}"))?;
            }
            "--binary" => opts.binary = Some(value("--binary")?),
            "--cwd" => opts.cwd = Some(PathBuf::from(value("--cwd")?)),
            "--timeout-ms" => {
                let v = value("--timeout-ms")?;
                let ms = v
                    .parse()
                    .map_err(|_| format!("--timeout-ms {v}: not a number"))?;
                opts.timeout = Duration::from_millis(ms);
            }
            _ => words.push(arg),
        }
    }
    opts.prompt = words.join(" ");
    if opts.prompt.is_empty() {
        return Err(
            "usage: run_headless [--cli TYPE] [--binary PATH] [--cwd DIR] \
                    [--timeout-ms N] PROMPT..."
                .into(),
        );
    }
    Ok(opts)
}

/// A fresh random (version 4) UUID for Claude's `--session-id`; the other CLIs choose their own.
/// `RandomState` is seeded randomly per process, which is all the randomness this needs.
fn new_session_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let state = RandomState::new();
    let (hi, lo) = (state.hash_one(nanos), state.hash_one(!nanos));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xfff,
        0x8000 | ((lo >> 48) & 0x3fff),
        lo & 0xffff_ffff_ffff
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    let opts = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let binary = opts
        .binary
        .clone()
        .unwrap_or_else(|| opts.cli.default_binary().to_owned());
    let program = match resolve_binary(&binary, std::env::var_os("PATH").as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let session_id = new_session_id();
    let args = build_args(&InvocationRequest {
        cli: opts.cli,
        model: None,
        system_prompt_file: None,
        system_prompt: None,
        extra_args: &[],
        session: SessionArg::New {
            preassigned_id: &session_id,
        },
    });
    // The CLI gets this process's environment minus what would make it misbehave (an API key
    // that overrides its login, the marker of a nested run), exactly as the broker does.
    let conflicting: Vec<String> = default_conflicting_vars(opts.cli)
        .iter()
        .map(|v| (*v).to_owned())
        .collect();
    let env = child_env(opts.cli, std::env::vars(), &EnvMap::new(), &conflicting);
    let command = HeadlessCommand {
        program,
        args,
        env,
        cwd: opts.cwd,
        stdin: opts.prompt.into_bytes(),
        supervisor: None,
        stdin_gate: None,
    };
    let limits = Limits {
        timeout: opts.timeout,
        ..Limits::default()
    };
    // Progress events (pid, streamed text, samples) are not needed here; the receiver is kept
    // so that sending them never fails.
    let (events, _progress) = mpsc::unbounded_channel();
    let result = run_headless(
        command,
        parser_for(opts.cli),
        limits,
        CancellationToken::new(),
        events,
        None,
    )
    .await;
    if let Some(sid) = &result.parsed.session_id {
        eprintln!("session: {sid}");
    }
    match (result.outcome, result.parsed.answer.as_deref()) {
        (OutcomeClass::Success, Some(answer)) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        (outcome, _) => {
            let message = result.error_message().unwrap_or_default();
            eprintln!(
                "{} failed ({}): {message}",
                opts.cli.as_str(),
                outcome.as_str()
            );
            ExitCode::FAILURE
        }
    }
}
