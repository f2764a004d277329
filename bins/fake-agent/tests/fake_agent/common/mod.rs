//! Helpers shared by the integration tests: a sandbox with claude/codex/gemini/droid symlinks
//! to the built binary, its own state directory and HOME, and a runner that captures output.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_kokino-fake-agent");

/// A throw-away world for one test: nothing leaks into the real HOME or between tests.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
    pub state: PathBuf,
    pub work: PathBuf,
    pub home: PathBuf,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        let state = dir.path().join("state");
        let work = dir.path().join("work dir");
        let home = dir.path().join("home");
        for d in [&bin, &state, &work, &home] {
            std::fs::create_dir_all(d).unwrap();
        }
        for name in ["claude", "codex", "gemini", "droid"] {
            std::os::unix::fs::symlink(BIN, bin.join(name)).unwrap();
        }
        Sandbox {
            dir,
            bin,
            state,
            work,
            home,
        }
    }

    /// A command for `name` (a symlink, or a path to the binary), with the sandbox environment.
    pub fn cmd(&self, name: &str, args: &[&str]) -> Command {
        let program = if name.contains('/') {
            PathBuf::from(name)
        } else {
            self.bin.join(name)
        };
        let mut c = Command::new(program);
        c.args(args)
            .current_dir(&self.work)
            .env("HOME", &self.home)
            .env("KOKINO_FAKE_STATE", &self.state)
            .env_remove("KOKINO_FAKE_LOGGED_OUT")
            .env_remove("KOKINO_FAKE_LOG");
        c
    }

    /// Runs to completion with `prompt` on stdin.
    pub fn run(&self, name: &str, args: &[&str], prompt: &str) -> Run {
        self.run_cmd(self.cmd(name, args), prompt)
    }

    pub fn run_cmd(&self, mut c: Command, prompt: &str) -> Run {
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fake agent");
        feed(&mut child, prompt);
        let out = child.wait_with_output().expect("wait");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts with `prompt` on stdin (then closed) and stdout/stderr piped, without waiting.
    pub fn spawn(&self, name: &str, args: &[&str], prompt: &str) -> Child {
        let mut child = self
            .cmd(name, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fake agent");
        feed(&mut child, prompt);
        child
    }
}

fn feed(child: &mut Child, prompt: &str) {
    let mut stdin = child.stdin.take().expect("stdin");
    // A run that fails on its arguments exits without reading stdin; the write then meets a
    // closed pipe, which is not the test's concern (it checks the exit code and stderr).
    if let Err(e) = stdin.write_all(prompt.as_bytes()) {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "write prompt: {e}"
        );
    }
}

/// The standard headless arguments of each CLI (spec/cli-adapters.md, first-turn column).
pub fn headless(name: &str) -> Vec<&'static str> {
    match name {
        "claude" => vec!["-p", "--output-format", "stream-json", "--verbose"],
        "codex" => vec!["exec", "--json", "--skip-git-repo-check", "-"],
        "gemini" => vec!["-o", "stream-json", "--skip-trust"],
        "droid" => vec!["exec", "-o", "stream-json"],
        _ => unreachable!(),
    }
}

/// The result of one finished run.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Every stdout line parsed as JSON; panics on a line that is not JSON.
    pub fn events(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {l}\nstderr: {}", self.stderr))
            })
            .collect()
    }

    /// Lines that parse as JSON, skipping the others (for `fake:malformed`).
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn last(&self) -> Value {
        self.events().pop().expect("at least one event")
    }

    pub fn of_type(&self, ty: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["type"] == ty)
            .collect()
    }
}

/// The answer as the broker extracts it, per spec/cli-adapters.md.
pub fn answer(name: &str, events: &[Value]) -> Option<String> {
    match name {
        "claude" => events
            .iter()
            .rev()
            .find(|e| e["type"] == "result")
            .and_then(|e| e["result"].as_str().map(str::to_owned)),
        "codex" => events
            .iter()
            .rev()
            .find(|e| e["type"] == "item.completed" && e["item"]["type"] == "agent_message")
            .and_then(|e| e["item"]["text"].as_str().map(str::to_owned)),
        "gemini" => {
            let parts: Vec<&str> = events
                .iter()
                .filter(|e| e["type"] == "message" && e["role"] == "assistant")
                .filter_map(|e| e["content"].as_str())
                .collect();
            (!parts.is_empty()).then(|| parts.concat())
        }
        "droid" => events
            .iter()
            .rev()
            .find(|e| e["type"] == "completion")
            .and_then(|e| e["finalText"].as_str().map(str::to_owned)),
        _ => None,
    }
}

/// The session id as the broker reads it from the first events.
pub fn session_id(name: &str, events: &[Value]) -> String {
    let v = match name {
        "codex" => events
            .iter()
            .find(|e| e["type"] == "thread.started")
            .map(|e| &e["thread_id"]),
        "gemini" => events
            .iter()
            .find(|e| e["type"] == "init")
            .map(|e| &e["session_id"]),
        _ => events
            .iter()
            .find(|e| e["type"] == "system" && e["subtype"] == "init")
            .map(|e| &e["session_id"]),
    };
    v.and_then(Value::as_str).expect("session id").to_owned()
}

/// The real-CLI captures: `KOKINO_CAPTURES_DIR` when set, else the copy vendored in the
/// repository next to the parser tests. A missing folder fails the test: comparing against no
/// capture would pass without checking anything.
pub fn captures_dir() -> PathBuf {
    let dir = match std::env::var_os("KOKINO_CAPTURES_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates/kokino-cli/tests/captures")
        }
    };
    assert!(
        dir.is_dir(),
        "captures folder not found at {} (set KOKINO_CAPTURES_DIR to the folder holding \
         claude/, codex/, gemini/ and droid/)",
        dir.display()
    );
    dir
}
