//! Command-line parsing for the four personalities.
//!
//! Each CLI has its own flag table because the same short flag means different things (`-c` is
//! `--continue` for claude but `--config k=v` for codex, `-s` is the session for droid). Unknown
//! flags are skipped without consuming the next argument: adapters may pass `extraArgs` we have
//! never heard of, and the prompt comes from stdin anyway, so a stray value is harmless.

use std::path::PathBuf;

/// Which CLI the fake agent imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Personality {
    Claude,
    Codex,
    Gemini,
    Droid,
}

impl Personality {
    pub fn name(self) -> &'static str {
        match self {
            Personality::Claude => "claude",
            Personality::Codex => "codex",
            Personality::Gemini => "gemini",
            Personality::Droid => "droid",
        }
    }

    /// Accepts the CLI names and the broker's agent type names (`claude-code`, `factory-droid`).
    pub fn from_type(s: &str) -> Option<Personality> {
        match s {
            "claude" | "claude-code" => Some(Personality::Claude),
            "codex" => Some(Personality::Codex),
            "gemini" | "gemini-cli" => Some(Personality::Gemini),
            "droid" | "factory-droid" => Some(Personality::Droid),
            _ => None,
        }
    }

    /// Derives the personality from the file name we were started as (`argv[0]`): the exact CLI
    /// name, or a name that ends in it (`fake-claude`, `my_codex`), ignoring any extension.
    pub fn from_argv0(argv0: &str) -> Option<Personality> {
        let base = argv0.rsplit('/').next().unwrap_or(argv0);
        let stem = base.split('.').next().unwrap_or(base);
        if let Some(p) = Personality::from_type(stem) {
            return Some(p);
        }
        [
            ("claude-code", Personality::Claude),
            ("factory-droid", Personality::Droid),
            ("claude", Personality::Claude),
            ("codex", Personality::Codex),
            ("gemini", Personality::Gemini),
            ("droid", Personality::Droid),
        ]
        .into_iter()
        .find(|(suffix, _)| stem.ends_with(suffix))
        .map(|(_, p)| p)
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// One JSON event per line (claude `stream-json`, codex `--json`, gemini/droid `-o stream-json`).
    Stream,
    /// A single JSON object at the end.
    Json,
    /// Only the answer text.
    Text,
}

/// What the invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A headless turn.
    Run,
    Version,
    /// `claude auth status` / `codex login status`.
    AuthStatus,
    Help,
    /// No headless flag: the interactive TUI, which this crate does not implement yet.
    Interactive,
    /// A usage error the real CLI would also refuse: message for stderr and exit code.
    Usage(String, i32),
}

/// Everything the personalities need from argv.
#[derive(Debug, Clone)]
pub struct Opts {
    pub command: Command,
    pub output: Output,
    pub verbose: bool,
    /// claude `--session-id`, gemini `--session-id`: the id of a new session.
    pub session_id: Option<String>,
    /// claude `--resume`, codex `resume <id>`, gemini `--resume`, droid `-s`.
    pub resume: Option<String>,
    /// claude `--continue`, codex `resume --last`.
    pub resume_last: bool,
    /// droid `--fork <id>`: a new session that starts with the history of `<id>`.
    pub fork: Option<String>,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub skip_permissions: bool,
    pub permission_mode: Option<String>,
    pub auto: Option<String>,
    pub reasoning_effort: Option<String>,
    /// codex `-o/--output-last-message <file>`.
    pub output_last_message: Option<PathBuf>,
    /// droid `-f <file>`: the prompt is read from this file.
    pub prompt_file: Option<PathBuf>,
    /// A prompt given on the command line (positional, or gemini `-p <text>`).
    pub prompt_arg: Option<String>,
    pub include_partial: bool,
}

impl Opts {
    fn new() -> Opts {
        Opts {
            command: Command::Run,
            output: Output::Text,
            verbose: false,
            session_id: None,
            resume: None,
            resume_last: false,
            fork: None,
            model: None,
            max_turns: None,
            skip_permissions: false,
            permission_mode: None,
            auto: None,
            reasoning_effort: None,
            output_last_message: None,
            prompt_file: None,
            prompt_arg: None,
            include_partial: false,
        }
    }
}

/// A flag known to one CLI: its spellings and whether it takes a value.
struct Flag {
    names: &'static [&'static str],
    value: bool,
    key: &'static str,
}

const fn f(names: &'static [&'static str], value: bool, key: &'static str) -> Flag {
    Flag { names, value, key }
}

const CLAUDE_FLAGS: &[Flag] = &[
    f(&["-p", "--print"], false, "print"),
    f(&["--verbose"], false, "verbose"),
    f(&["-v", "--version"], false, "version"),
    f(&["-h", "--help"], false, "help"),
    f(&["--output-format"], true, "output"),
    f(&["--input-format"], true, "ignore"),
    f(&["--session-id"], true, "session-id"),
    f(&["-r", "--resume"], true, "resume"),
    f(&["-c", "--continue"], false, "continue"),
    f(&["--model"], true, "model"),
    f(&["--fallback-model"], true, "ignore"),
    f(&["--append-system-prompt"], true, "ignore"),
    f(&["--append-system-prompt-file"], true, "ignore"),
    f(&["--system-prompt"], true, "ignore"),
    f(&["--system-prompt-file"], true, "ignore"),
    f(&["--max-turns"], true, "max-turns"),
    f(&["--max-budget-usd"], true, "ignore"),
    f(
        &["--dangerously-skip-permissions"],
        false,
        "skip-permissions",
    ),
    f(&["--permission-mode"], true, "permission-mode"),
    f(&["--include-partial-messages"], false, "partial"),
    f(&["--allowedTools", "--allowed-tools"], true, "ignore"),
    f(&["--disallowedTools", "--disallowed-tools"], true, "ignore"),
    f(&["--mcp-config"], true, "ignore"),
    f(&["--settings"], true, "ignore"),
    f(&["--add-dir"], true, "ignore"),
    f(&["--agents"], true, "ignore"),
    f(&["--setting-sources"], true, "ignore"),
];

const CODEX_FLAGS: &[Flag] = &[
    f(&["--json"], false, "json"),
    f(&["-V", "--version"], false, "version"),
    f(&["-h", "--help"], false, "help"),
    f(&["-m", "--model"], true, "model"),
    f(&["-c", "--config"], true, "config"),
    f(&["-s", "--sandbox"], true, "ignore"),
    f(&["-C", "--cd"], true, "ignore"),
    f(&["-p", "--profile"], true, "ignore"),
    f(&["-i", "--image"], true, "ignore"),
    f(&["--color"], true, "ignore"),
    f(&["--output-schema"], true, "ignore"),
    f(&["--add-dir"], true, "ignore"),
    f(&["-o", "--output-last-message"], true, "last-message"),
    f(&["--last"], false, "last"),
];

const GEMINI_FLAGS: &[Flag] = &[
    f(&["-v", "--version"], false, "version"),
    f(&["-h", "--help"], false, "help"),
    f(&["-o", "--output-format"], true, "output"),
    f(&["-m", "--model"], true, "model"),
    f(&["-p", "--prompt"], true, "prompt"),
    f(&["-r", "--resume"], true, "resume"),
    f(&["--session-id"], true, "session-id"),
    f(&["--approval-mode"], true, "permission-mode"),
    f(&["-y", "--yolo"], false, "skip-permissions"),
    f(&["--include-directories"], true, "ignore"),
    f(&["-e", "--extensions"], true, "ignore"),
    f(&["--allowed-tools"], true, "ignore"),
    f(&["--allowed-mcp-server-names"], true, "ignore"),
];

const DROID_FLAGS: &[Flag] = &[
    f(&["-v", "--version"], false, "version"),
    f(&["-h", "--help"], false, "help"),
    f(&["-o", "--output-format"], true, "output"),
    f(&["--input-format"], true, "ignore"),
    f(&["--auto"], true, "auto"),
    f(&["-m", "--model"], true, "model"),
    f(&["-s", "--session-id"], true, "resume"),
    f(&["-r", "--reasoning-effort"], true, "reasoning"),
    f(&["--skip-permissions-unsafe"], false, "skip-permissions"),
    f(&["-f", "--file"], true, "file"),
    f(&["--cwd"], true, "ignore"),
    f(&["--fork"], true, "fork"),
    f(&["--spec-model"], true, "ignore"),
];

/// One parsed argument.
enum Arg {
    Flag(&'static str, Option<String>),
    Pos(String),
}

fn tokenize(args: &[String], table: &[Flag]) -> Vec<Arg> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "-" || !a.starts_with('-') {
            out.push(Arg::Pos(a.clone()));
            continue;
        }
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (a.as_str(), None),
        };
        let Some(flag) = table.iter().find(|fl| fl.names.contains(&name)) else {
            // Unknown flag: skip it alone (see the module comment for why).
            continue;
        };
        let value = if flag.value {
            match inline {
                Some(v) => Some(v),
                None if i < args.len() => {
                    i += 1;
                    Some(args[i - 1].clone())
                }
                None => None,
            }
        } else {
            None
        };
        out.push(Arg::Flag(flag.key, value));
    }
    out
}

fn output_of(s: &str) -> Option<Output> {
    match s {
        "stream-json" => Some(Output::Stream),
        "json" => Some(Output::Json),
        "text" => Some(Output::Text),
        _ => None,
    }
}

/// Parses the arguments after argv[0] (and after `--as TYPE` has been removed).
pub fn parse(p: Personality, args: &[String]) -> Opts {
    let table = match p {
        Personality::Claude => CLAUDE_FLAGS,
        Personality::Codex => CODEX_FLAGS,
        Personality::Gemini => GEMINI_FLAGS,
        Personality::Droid => DROID_FLAGS,
    };
    let mut o = Opts::new();
    let mut print = false;
    let mut positionals = Vec::new();
    for arg in tokenize(args, table) {
        match arg {
            Arg::Pos(s) => positionals.push(s),
            Arg::Flag(key, v) => apply(&mut o, p, key, v, &mut print),
        }
    }
    if matches!(
        o.command,
        Command::Version | Command::Help | Command::Usage(..)
    ) {
        return o;
    }
    let mut pos = positionals.into_iter().peekable();
    match p {
        Personality::Claude => {
            if pos.peek().map(String::as_str) == Some("auth") {
                pos.next();
                o.command = match pos.next().as_deref() {
                    Some("status") => Command::AuthStatus,
                    _ => Command::Usage("error: unknown auth command".into(), 1),
                };
                return o;
            }
            if !print {
                o.command = Command::Interactive;
                return o;
            }
            if o.output == Output::Stream && !o.verbose {
                o.command = Command::Usage(
                    "Error: When using --print, --output-format=stream-json requires --verbose"
                        .into(),
                    1,
                );
                return o;
            }
            if let Some(id) = &o.session_id {
                if uuid::Uuid::parse_str(id).is_err() {
                    o.command = Command::Usage(
                        "Error: Invalid session ID. Must be a valid UUID.".into(),
                        1,
                    );
                    return o;
                }
            }
        }
        Personality::Codex | Personality::Droid => {
            let sub = pos.next();
            match (p, sub.as_deref()) {
                (Personality::Codex, Some("login")) => {
                    o.command = match pos.next().as_deref() {
                        Some("status") => Command::AuthStatus,
                        _ => Command::Usage("error: unsupported login command".into(), 2),
                    };
                    return o;
                }
                (_, Some("exec") | Some("e")) => {}
                _ => {
                    o.command = Command::Interactive;
                    return o;
                }
            }
            if p == Personality::Codex && pos.peek().map(String::as_str) == Some("resume") {
                pos.next();
                if !o.resume_last {
                    match pos.next() {
                        Some(id) if id != "-" => o.resume = Some(id),
                        _ => {
                            o.command = Command::Usage(
                                "error: the following required arguments were not provided:\n  <SESSION_ID>"
                                    .into(),
                                2,
                            );
                            return o;
                        }
                    }
                }
            }
        }
        Personality::Gemini => {}
    }
    let rest: Vec<String> = pos.filter(|s| s != "-").collect();
    if !rest.is_empty() && o.prompt_arg.is_none() {
        o.prompt_arg = Some(rest.join(" "));
    }
    o
}

fn apply(o: &mut Opts, p: Personality, key: &str, v: Option<String>, print: &mut bool) {
    match key {
        "print" => *print = true,
        "verbose" => o.verbose = true,
        "version" => o.command = Command::Version,
        "help" => o.command = Command::Help,
        "json" => o.output = Output::Stream,
        "output" => match v.as_deref().and_then(output_of) {
            Some(out) => o.output = out,
            None => {
                let msg = match p {
                    Personality::Claude => format!(
                        "Error: Invalid output format \"{}\". Must be one of: text, json, stream-json",
                        v.unwrap_or_default()
                    ),
                    _ => format!("Invalid output format: {}", v.unwrap_or_default()),
                };
                o.command = Command::Usage(msg, if p == Personality::Gemini { 42 } else { 1 });
            }
        },
        "session-id" => o.session_id = v,
        "resume" => match (p, v.as_deref()) {
            (Personality::Gemini, Some("latest")) => o.resume_last = true,
            _ => o.resume = v,
        },
        "continue" | "last" => o.resume_last = true,
        "fork" => o.fork = v,
        "model" => o.model = v,
        "config" => {
            // `-c model=...` is how the captures pointed codex at a model; honour it for `model`.
            if let Some((k, val)) = v.as_deref().and_then(|s| s.split_once('=')) {
                if k.trim() == "model" {
                    o.model = Some(val.trim().trim_matches('"').to_owned());
                }
            }
        }
        "max-turns" => o.max_turns = v.and_then(|s| s.parse().ok()),
        "skip-permissions" => o.skip_permissions = true,
        "permission-mode" => o.permission_mode = v,
        "partial" => o.include_partial = true,
        "auto" => o.auto = v,
        "reasoning" => o.reasoning_effort = v,
        "last-message" => o.output_last_message = v.map(PathBuf::from),
        "file" => o.prompt_file = v.map(PathBuf::from),
        "prompt" => o.prompt_arg = v,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn argv0_names() {
        assert_eq!(
            Personality::from_argv0("/x/y/claude"),
            Some(Personality::Claude)
        );
        assert_eq!(
            Personality::from_argv0("fake-codex"),
            Some(Personality::Codex)
        );
        assert_eq!(
            Personality::from_argv0("factory-droid"),
            Some(Personality::Droid)
        );
        assert_eq!(Personality::from_argv0("kokino-fake-agent"), None);
    }

    #[test]
    fn claude_flags() {
        let o = parse(
            Personality::Claude,
            &args("-p --output-format stream-json --verbose --session-id 3f1e1a52-1a43-4d43-9a7e-0c8a1a6c2a11 --model opus --unknown --max-turns 3"),
        );
        assert_eq!(o.command, Command::Run);
        assert_eq!(o.output, Output::Stream);
        assert_eq!(o.model.as_deref(), Some("opus"));
        assert_eq!(o.max_turns, Some(3));
        let o = parse(Personality::Claude, &args("-p --output-format=stream-json"));
        assert!(matches!(o.command, Command::Usage(_, 1)));
        let o = parse(Personality::Claude, &args("auth status"));
        assert_eq!(o.command, Command::AuthStatus);
    }

    #[test]
    fn codex_resume() {
        let o = parse(
            Personality::Codex,
            &args("exec --json --skip-git-repo-check -c model=\"gpt-x\" resume abc -"),
        );
        assert_eq!(o.command, Command::Run);
        assert_eq!(o.resume.as_deref(), Some("abc"));
        assert_eq!(o.model.as_deref(), Some("gpt-x"));
        assert_eq!(o.prompt_arg, None);
        let o = parse(Personality::Codex, &args("login status"));
        assert_eq!(o.command, Command::AuthStatus);
    }

    #[test]
    fn gemini_and_droid() {
        let o = parse(
            Personality::Gemini,
            &args("-o stream-json --skip-trust -m m1 --resume latest"),
        );
        assert!(o.resume_last);
        assert_eq!(o.output, Output::Stream);
        let o = parse(
            Personality::Droid,
            &args("exec -o stream-json --auto low -s sid"),
        );
        assert_eq!(o.resume.as_deref(), Some("sid"));
        assert_eq!(o.auto.as_deref(), Some("low"));
        let o = parse(Personality::Droid, &args("-o stream-json"));
        assert_eq!(o.command, Command::Interactive);
    }
}
