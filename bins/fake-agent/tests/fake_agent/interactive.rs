//! Interactive (TUI) mode, driven through a real terminal: each test runs the fake agent in a
//! session of its own tmux server (`-S` in the test's tempdir, `-f /dev/null`), pastes with
//! bracketed paste, presses keys and reads the screen, as the broker's tmux executor does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

const TMUX: &str = "/usr/bin/tmux";
const SID: &str = "0d6c1c55-8a52-4f0e-9d56-3b1c0a9f7e21";

/// A tmux server private to one test.
struct Term {
    sb: Sandbox,
    socket: PathBuf,
}

impl Term {
    fn new() -> Option<Term> {
        if !Path::new(TMUX).exists() {
            eprintln!("tmux not installed; skipping");
            return None;
        }
        let sb = Sandbox::new();
        let socket = sb.dir.path().join("tmux.sock");
        Some(Term { sb, socket })
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new(TMUX)
            .arg("-u")
            .arg("-S")
            .arg(&self.socket)
            .arg("-f")
            .arg("/dev/null")
            .args(args)
            .env_clear()
            .output()
            .expect("run tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `name` (a CLI symlink) with `args` in session `s`, with `env` on top of the
    /// sandbox environment.
    fn start(&self, s: &str, name: &str, args: &[&str], env: &[(&str, &str)]) {
        let program = self.sb.bin.join(name);
        let mut cmd: Vec<String> = Vec::new();
        cmd.extend(["new-session", "-d", "-s", s, "-x", "160", "-y", "40"].map(String::from));
        cmd.extend(["-c".into(), self.sb.work.to_string_lossy().into_owned()]);
        let mut vars = vec![
            (
                "HOME".to_owned(),
                self.sb.home.to_string_lossy().into_owned(),
            ),
            (
                "KOKINO_FAKE_STATE".to_owned(),
                self.sb.state.to_string_lossy().into_owned(),
            ),
            (
                "KOKINO_FAKE_LOG".to_owned(),
                self.log().to_string_lossy().into_owned(),
            ),
            ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
        ];
        vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        for (k, v) in vars {
            cmd.push("-e".into());
            cmd.push(format!("{k}={v}"));
        }
        cmd.push("--".into());
        // A shell in front prints the exit status and keeps the pane, so a test can read how
        // the fake agent ended. It ignores SIGINT itself (the fake installs its own handler), or
        // a Ctrl-C meant for the fake would end the shell once the fake exits.
        cmd.extend(
            [
                "/bin/sh",
                "-c",
                "trap '' INT; \"$0\" \"$@\"; echo \"[exited $?]\"; sleep 100",
            ]
            .map(String::from),
        );
        cmd.push(program.to_string_lossy().into_owned());
        cmd.extend(args.iter().map(|a| (*a).to_owned()));
        let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let _ = Command::new(TMUX)
            .arg("-S")
            .arg(&self.socket)
            .arg("-f")
            .arg("/dev/null")
            .arg("start-server")
            .arg(";")
            .args(&refs)
            .env_clear()
            .status();
    }

    fn log(&self) -> PathBuf {
        self.sb.dir.path().join("witness.log")
    }

    fn screen(&self, s: &str) -> String {
        self.tmux(&[
            "capture-pane",
            "-p",
            "-J",
            "-t",
            &format!("={s}:"),
            "-S",
            "-",
        ])
    }

    /// Waits (bounded) until the screen satisfies `pred`; returns the screen.
    fn wait_screen(&self, s: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let screen = self.screen(s);
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The screen ends with the personality's empty prompt line.
    /// Waits for the empty prompt: `prompt` alone on the last line, or followed by the
    /// placeholder the real Codex and Gemini TUIs show there.
    fn wait_prompt(&self, s: &str, prompt: &str) -> String {
        self.wait_screen(s, "the prompt", |scr| {
            let last = scr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::trim);
            last.is_some_and(|l| {
                l == prompt
                    || l.strip_prefix(prompt).is_some_and(|rest| {
                        let rest = rest.trim();
                        rest == "Ask Codex to do anything"
                            || rest == "Type your message or @path/to/file"
                    })
            })
        })
    }

    fn paste(&self, s: &str, text: &str) {
        let mut child = Command::new(TMUX)
            .arg("-S")
            .arg(&self.socket)
            .args([
                "load-buffer",
                "-b",
                "p",
                "-",
                ";",
                "paste-buffer",
                "-p",
                "-d",
                "-b",
                "p",
                "-t",
            ])
            .arg(format!("={s}:"))
            .env_clear()
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        child.wait().unwrap();
    }

    fn keys(&self, s: &str, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t"];
        let target = format!("={s}:");
        args.push(&target);
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// Waits for the fake agent to exit and returns its exit status, which the wrapping shell
    /// prints (tmux's own `#{pane_dead_status}` was seen to stay empty now and then).
    fn wait_exit(&self, s: &str) -> String {
        let screen = self.wait_screen(s, "the exit", |scr| scr.contains("[exited "));
        let at = screen.rfind("[exited ").unwrap() + "[exited ".len();
        screen[at..].split(']').next().unwrap().to_owned()
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        self.tmux(&["kill-server"]);
    }
}

fn transcript(t: &Term) -> Vec<Value> {
    let key: String = std::fs::canonicalize(&t.sb.work)
        .unwrap()
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let path =
        t.sb.home
            .join(".claude/projects")
            .join(key)
            .join(format!("{SID}.jsonl"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("transcript line is JSON"))
        .collect()
}

#[test]
fn every_personality_draws_its_prompt_and_answers_a_paste() {
    let Some(t) = Term::new() else { return };
    // The empty prompt line as it is drawn: Codex and Gemini show their real placeholders.
    for (name, prompt, empty, answer_line) in [
        ("claude", "│ >", "│ >", "● echo: hello world"),
        (
            "codex",
            "›",
            "› Ask Codex to do anything",
            "echo: hello world",
        ),
        (
            "gemini",
            ">",
            ">   Type your message or @path/to/file",
            "echo: hello world",
        ),
        ("droid", ">", ">", "echo: hello world"),
    ] {
        t.start(name, name, &[], &[]);
        t.wait_prompt(name, prompt);
        // A bracketed multi-line paste is one input; only Enter submits it.
        t.paste(name, "hello\nworld fake:sleep=0.1");
        t.wait_screen(name, "the echo", |s| s.contains("world fake:sleep=0.1"));
        assert!(
            !t.screen(name).contains("echo: hello"),
            "{name}: submitted before Enter"
        );
        t.keys(name, &["Enter"]);
        let screen = t.wait_screen(name, "the answer", |s| s.contains("echo: hello"));
        let screen = if screen.trim_end().ends_with(empty) {
            screen
        } else {
            t.wait_prompt(name, prompt)
        };
        let lines: Vec<&str> = screen.lines().map(str::trim_end).collect();
        let at = lines
            .iter()
            .position(|l| {
                l.starts_with(answer_line.split(':').next().unwrap()) && l.contains("echo: hello")
            })
            .unwrap_or_else(|| panic!("{name}: no answer line in\n{screen}"));
        assert_eq!(
            lines[at],
            answer_line.replace("hello world", "hello"),
            "{name}"
        );
        assert_eq!(lines[at + 1], "world", "{name}");
        assert_eq!(lines[at + 2].trim(), empty, "{name}");
        // Enter on an empty prompt does nothing.
        t.keys(name, &["Enter"]);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(t.screen(name).matches("echo: hello").count(), 1);
    }
}

#[test]
fn claude_writes_the_session_transcript() {
    let Some(t) = Term::new() else { return };
    t.start(
        "c",
        "claude",
        &["--session-id", SID, "--model", "claude-sonnet-4-5"],
        &[],
    );
    t.wait_prompt("c", "│ >");
    t.paste("c", "what is 2+2 fake:tool");
    t.keys("c", &["Enter"]);
    t.wait_screen("c", "the answer", |s| s.contains("● echo: what is 2+2"));
    t.wait_prompt("c", "│ >");
    let entries = transcript(&t);
    let kinds: Vec<String> = entries
        .iter()
        .map(|e| {
            format!(
                "{}{}",
                e["type"].as_str().unwrap_or(""),
                e["subtype"]
                    .as_str()
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    // The first prompt of a new session is written after the turn's end, as Claude Code 2.1
    // does (`claude-interactive-first-turn.jsonl`).
    assert_eq!(
        kinds,
        [
            "mode",
            "permission-mode",
            "assistant",
            "user",
            "assistant",
            "system/turn_duration",
            "file-history-snapshot",
            "user",
        ]
    );
    let user = &entries[7];
    assert_eq!(user["message"]["content"], "what is 2+2 fake:tool");
    assert_eq!(user["sessionId"], SID);
    assert!(user["timestamp"].as_str() <= entries[2]["timestamp"].as_str());
    assert_eq!(entries[2]["message"]["content"][0]["type"], "tool_use");
    assert_eq!(entries[2]["parentUuid"], user["uuid"]);
    let answer = &entries[4];
    assert_eq!(answer["message"]["content"][0]["text"], "echo: what is 2+2");
    assert_eq!(answer["message"]["model"], "claude-sonnet-4-5");
    assert_eq!(answer["parentUuid"], entries[3]["uuid"]);
    assert_eq!(entries[5]["parentUuid"], answer["uuid"]);
    assert!(entries[5]["durationMs"].as_i64().is_some());

    // A second turn appends; the session state knows both prompts, so it can be resumed.
    t.paste("c", "again");
    t.keys("c", &["Enter"]);
    t.wait_screen("c", "the second answer", |s| s.contains("● echo: again"));
    t.wait_prompt("c", "│ >");
    // Later turns are written in order.
    let entries = transcript(&t);
    assert_eq!(
        entries.last().unwrap()["subtype"],
        "turn_duration",
        "{entries:?}"
    );
    let mut resume = headless("claude");
    resume.extend(["--resume", SID]);
    let run = t.sb.run("claude", &resume, "third");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("turn 3"), "{}", run.stderr);
}

#[test]
fn claude_session_errors_end_the_tui_like_the_real_one() {
    let Some(t) = Term::new() else { return };
    t.start("bad", "claude", &["--resume", SID], &[]);
    assert_eq!(t.wait_exit("bad"), "1");
    assert!(t
        .screen("bad")
        .contains("No conversation found with session ID"));
    t.start("one", "claude", &["--session-id", SID], &[]);
    t.wait_prompt("one", "│ >");
    t.start("two", "claude", &["--session-id", SID], &[]);
    assert_eq!(t.wait_exit("two"), "1");
    assert!(t.screen("two").contains("is already in use"));
}

#[test]
fn trust_screen_needs_an_answer() {
    let Some(t) = Term::new() else { return };
    let first_run = [("KOKINO_FAKE_FIRST_RUN", "1")];
    t.start("yes", "claude", &[], &first_run);
    t.wait_screen("yes", "the trust screen", |s| {
        s.contains("Is this a project you created or one you trust?")
            && s.contains("❯ 1. Yes, I trust this folder")
            && s.contains("2. No, exit")
    });
    // Pasted text is not an answer; Enter (the default, "Yes") is.
    t.keys("yes", &["Enter"]);
    t.wait_prompt("yes", "│ >");

    t.start("one", "claude", &[], &first_run);
    t.wait_screen("one", "the trust screen", |s| s.contains("one you trust"));
    t.keys("one", &["1"]);
    t.wait_prompt("one", "│ >");

    t.start("no", "claude", &[], &first_run);
    t.wait_screen("no", "the trust screen", |s| s.contains("one you trust"));
    t.keys("no", &["2"]);
    assert_eq!(t.wait_exit("no"), "1");

    // Down moves the cursor onto "No, exit" (redrawn in place), and Enter takes it.
    t.start("down", "claude", &[], &first_run);
    t.wait_screen("down", "the trust screen", |s| s.contains("one you trust"));
    t.keys("down", &["Down"]);
    t.wait_screen("down", "the cursor on No", |s| s.contains("❯ 2. No, exit"));
    assert!(!t.screen("down").contains("❯ 1."));
    t.keys("down", &["Enter"]);
    assert_eq!(t.wait_exit("down"), "1");
}

/// The real TUIs' other first-run screens: Codex's and Gemini's trust questions, Claude's
/// API-key question (whose cursor starts on "No"), Droid's Factory login (which never lets go).
#[test]
fn the_real_first_run_screens_are_imitated() {
    let Some(t) = Term::new() else { return };
    t.start("codex", "codex", &[], &[("KOKINO_FAKE_FIRST_RUN", "trust")]);
    t.wait_screen("codex", "codex's trust screen", |s| {
        s.contains("Trust this folder?") && s.contains("› 1. Trust and continue")
    });
    t.keys("codex", &["Enter"]);
    t.wait_prompt("codex", "›");

    t.start(
        "gemini",
        "gemini",
        &[],
        &[("KOKINO_FAKE_FIRST_RUN", "trust")],
    );
    t.wait_screen("gemini", "gemini's trust screen", |s| {
        s.contains("Do you trust the files in this folder?") && s.contains("● 1. Trust folder")
    });
    t.keys("gemini", &["Enter"]);
    t.wait_prompt("gemini", ">");

    let key = [("KOKINO_FAKE_FIRST_RUN", "apikey")];
    t.start("keyyes", "claude", &[], &key);
    t.wait_screen("keyyes", "the API-key question", |s| {
        s.contains("Do you want to use this API key?") && s.contains("❯ 2. No (recommended)")
    });
    t.keys("keyyes", &["Up"]);
    t.wait_screen("keyyes", "the cursor on Yes", |s| s.contains("❯ 1. Yes"));
    t.keys("keyyes", &["Enter"]);
    t.wait_prompt("keyyes", "│ >");
    t.paste("keyyes", "hello");
    t.keys("keyyes", &["Enter"]);
    t.wait_screen("keyyes", "the answer", |s| s.contains("echo: hello"));

    // A bare Enter takes "No": the TUI then has no credentials.
    t.start("keyno", "claude", &[], &key);
    t.wait_screen("keyno", "the API-key question", |s| {
        s.contains("this API key?")
    });
    t.keys("keyno", &["Enter"]);
    t.wait_prompt("keyno", "│ >");
    t.paste("keyno", "hello");
    t.keys("keyno", &["Enter"]);
    t.wait_screen("keyno", "the login error", |s| s.contains("Not logged in"));

    t.start("droid", "droid", &[], &[("KOKINO_FAKE_FIRST_RUN", "login")]);
    t.wait_screen("droid", "the login screen", |s| {
        s.contains("Please login with your Factory account to continue.") && s.contains("> Login")
    });
    t.keys("droid", &["Enter"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(t
        .screen("droid")
        .contains("Please login with your Factory account"));
}

#[test]
fn tokens_and_the_witness_log_work_per_turn() {
    let Some(t) = Term::new() else { return };
    t.start("g", "gemini", &[], &[]);
    t.wait_prompt("g", ">");
    for word in ["one", "two"] {
        t.paste("g", &format!("{word} fake:sleep=0.05"));
        t.keys("g", &["Enter"]);
        t.wait_screen("g", "the answer", |s| s.contains(&format!("echo: {word}")));
        t.wait_prompt("g", ">");
    }
    let log = std::fs::read_to_string(t.log()).unwrap();
    let kinds: Vec<&str> = log.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(kinds, ["start", "end", "start", "end"], "{log}");

    // Ctrl-C interrupts a hanging turn and returns to the prompt.
    t.paste("g", "fake:hang");
    t.keys("g", &["Enter"]);
    t.wait_screen("g", "the turn to start", |_| {
        std::fs::read_to_string(t.log()).unwrap().lines().count() == 5
    });
    t.keys("g", &["C-c"]);
    t.wait_screen("g", "the interruption", |s| s.contains("Interrupted."));
    t.wait_prompt("g", ">");

    // fake:exit=N ends the process with N.
    t.paste("g", "fake:exit=7");
    t.keys("g", &["Enter"]);
    assert_eq!(t.wait_exit("g"), "7");
    assert!(t
        .screen("g")
        .contains("Fake agent failure requested by fake:exit=7"));
    let log = std::fs::read_to_string(t.log()).unwrap();
    assert!(log.lines().last().unwrap().starts_with("end "), "{log}");
}
