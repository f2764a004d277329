//! `kokino-fake-agent`: behaves like the claude, codex, gemini and droid CLIs (headless, and in
//! interactive mode for tmux, see `interactive.rs`),
//! printing their real event shapes (see `shared/captures/`) so that every broker test can run
//! real processes without network access or accounts. Behaviour is scripted by `fake:` tokens in
//! the prompt; see `shared/spec/cli-adapters.md` and the README next to this crate.

mod claude;
mod cli;
mod codex;
mod droid;
mod gemini;
mod interactive;
mod json;
mod run;
mod state;
mod sys;
mod tokens;
mod tty;

use std::io::{IsTerminal, Read};
use std::time::{Duration, Instant};

use cli::{Command, Personality};
use run::Ctx;

const USAGE: &str = "kokino-fake-agent: a stand-in for the claude, codex, gemini and droid CLIs.
Run it through a symlink named claude/codex/gemini/droid, or pass --as TYPE
(claude|claude-code|codex|gemini|droid|factory-droid). The prompt is read from stdin;
fake:NAME[=VALUE] tokens in it script the behaviour (sleep, exit, auth, ratelimit, hang,
ignore-term, child, malformed, noresult, big, mem, tool, stream, turns).";

fn main() {
    let mut args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let argv0 = if args.is_empty() {
        String::new()
    } else {
        args.remove(0)
    };

    // The middle process of `fake:child=daemon`.
    if args.first().map(String::as_str) == Some("--fake-daemon") {
        let secs = args.get(1).map(String::as_str).unwrap_or("1000");
        std::process::exit(run::daemonize(secs));
    }
    // The `fake:child` grandchild: just outlive our parent unless the whole group is killed.
    if args.first().map(String::as_str) == Some("--fake-grandchild") {
        let secs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
        std::thread::sleep(Duration::from_secs(secs));
        return;
    }

    let Some(personality) = take_personality(&mut args, &argv0) else {
        sys::err_line(USAGE);
        std::process::exit(2);
    };
    let mut opts = cli::parse(personality, &args);
    // Gemini has no subcommand for its TUI: like the real CLI, it is interactive when stdin is a
    // terminal and no prompt was given on the command line.
    if personality == Personality::Gemini
        && opts.command == Command::Run
        && opts.prompt_arg.is_none()
        && std::io::stdin().is_terminal()
    {
        opts.command = Command::Interactive;
    }
    let logged_out = env_flag("KOKINO_FAKE_LOGGED_OUT");

    match &opts.command {
        Command::Version => {
            let line = match personality {
                Personality::Claude => format!("{} (Claude Code)", claude::VERSION),
                Personality::Codex => format!("codex-cli {}", codex::VERSION),
                Personality::Gemini => gemini::VERSION.to_owned(),
                Personality::Droid => droid::VERSION.to_owned(),
            };
            sys::raw(format!("{line}\n").as_bytes());
            std::process::exit(0);
        }
        Command::Help => {
            sys::raw(format!("{USAGE}\n").as_bytes());
            std::process::exit(0);
        }
        Command::AuthStatus => {
            let code = match personality {
                Personality::Claude => claude::auth_status(logged_out),
                _ => codex::login_status(logged_out),
            };
            std::process::exit(code);
        }
        Command::Interactive => {
            let code = interactive::run(personality, opts.clone(), logged_out);
            sys::exit(code);
        }
        Command::Usage(msg, code) => {
            sys::err_line(msg);
            std::process::exit(*code);
        }
        Command::Run => {}
    }

    let code = headless(personality, opts, logged_out);
    sys::exit(code);
}

/// Removes `--as TYPE` / `--as=TYPE` from the arguments; falls back to the name we were run as.
fn take_personality(args: &mut Vec<String>, argv0: &str) -> Option<Personality> {
    if let Some(i) = args
        .iter()
        .position(|a| a == "--as" || a.starts_with("--as="))
    {
        let value = if let Some(v) = args[i].strip_prefix("--as=") {
            let v = v.to_owned();
            args.remove(i);
            v
        } else {
            args.remove(i);
            if i < args.len() {
                args.remove(i)
            } else {
                String::new()
            }
        };
        return Personality::from_type(&value);
    }
    Personality::from_argv0(argv0)
}

/// A boolean environment switch: set, non-empty and not `0`/`false`.
fn env_flag(name: &str) -> bool {
    match std::env::var(name) {
        Ok(v) => !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"),
        Err(_) => false,
    }
}

/// One headless turn; returns the exit code.
fn headless(personality: Personality, opts: cli::Opts, env_logged_out: bool) -> i32 {
    let started = Instant::now();
    // Installed before we block on stdin so that a SIGTERM at any point gives the CLI's exit 143.
    sys::install_signals(false);
    let cwd = std::env::current_dir()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| ".".into());
    sys::witness_start(personality.name(), &cwd);

    let prompt = match read_prompt(&opts) {
        Ok(p) => p,
        Err(e) => {
            sys::err_line(&format!("Error: {e}"));
            return 1;
        }
    };
    if prompt.trim().is_empty() {
        let (msg, code) = match personality {
            Personality::Claude => ("Error: Input must be provided either through stdin or as a prompt argument when using --print", 1),
            Personality::Codex => ("No prompt provided via stdin.", 1),
            Personality::Gemini => ("No input provided via stdin. Input can be provided by piping data into gemini or using the --prompt option.", gemini::EXIT_INPUT),
            Personality::Droid => ("Error: No prompt provided. Pass a prompt argument, -f <file>, or pipe it on stdin.", 1),
        };
        sys::err_line(msg);
        return code;
    }

    let script = tokens::Script::parse(&prompt);
    for w in &script.warnings {
        sys::err_line(&format!(
            "kokino-fake-agent: ignoring unknown or malformed token {w}"
        ));
    }
    if script.ignore_term {
        sys::install_signals(true);
    }
    let logged_out = env_logged_out || script.auth;
    let ctx = Ctx {
        opts,
        prompt,
        cwd,
        store: state::Store::from_env(),
        started,
        logged_out,
        earlier_turns: std::cell::Cell::new(0),
    };

    let prepared: Result<Box<dyn run::Agent>, i32> = match personality {
        Personality::Claude => claude::Claude::prepare(ctx).map(|a| Box::new(a) as _),
        Personality::Codex => codex::Codex::prepare(ctx).map(|a| Box::new(a) as _),
        Personality::Gemini => gemini::Gemini::prepare(ctx).map(|a| Box::new(a) as _),
        Personality::Droid => droid::Droid::prepare(ctx).map(|a| Box::new(a) as _),
    };
    match prepared {
        Ok(mut agent) => run::turn(agent.as_mut(), &script, logged_out),
        Err(code) => code,
    }
}

/// The prompt: droid `-f <file>`, else all of stdin, else the prompt given on the command line.
fn read_prompt(opts: &cli::Opts) -> std::io::Result<String> {
    if let Some(path) = &opts.prompt_file {
        return Ok(String::from_utf8_lossy(&std::fs::read(path)?).into_owned());
    }
    let mut stdin_text = String::new();
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut bytes = Vec::new();
        stdin.lock().read_to_end(&mut bytes)?;
        stdin_text = String::from_utf8_lossy(&bytes).into_owned();
    }
    if stdin_text.trim().is_empty() {
        if let Some(arg) = &opts.prompt_arg {
            return Ok(arg.clone());
        }
    }
    Ok(stdin_text)
}
