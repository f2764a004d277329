//! Test harness: a real `kokino-broker` process on a free port, a real SQLite file in a temp
//! directory, and the real fake agent under the four CLI names.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const TYPES: [(&str, &str); 4] = [
    ("claude-code", "claude"),
    ("codex", "codex"),
    ("gemini", "gemini"),
    ("factory-droid", "droid"),
];

/// The directory of the workspace's built binaries (next to this test's `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// The fake agent binary, built on demand when only this package's tests were built.
pub fn fake_agent() -> PathBuf {
    let path = bin_dir().join("kokino-fake-agent");
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "kokino-fake-agent"])
            .status()
            .expect("cargo build");
        assert!(status.success(), "could not build kokino-fake-agent");
    }
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A temp world: data dir, a bin dir with the fake agent as claude/codex/gemini/droid, a fake
/// state dir and a witness log.
pub struct World {
    pub dir: tempfile::TempDir,
}

/// A broker that a test killed (every `Broker` is killed with SIGKILL when dropped) leaves its
/// private tmux server running, as a crashed broker does; the next broker on that data
/// directory would take it over, but a test's directory is deleted with the world. End every
/// tmux server whose socket is in this world, so that no test leaves processes behind.
impl Drop for World {
    fn drop(&mut self) {
        for socket in tmux_sockets(self.dir.path(), 4) {
            let _ = Command::new("tmux")
                .arg("-S")
                .arg(&socket)
                .arg("kill-server")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The tmux sockets (`tmux.sock`) under `dir`, at most `depth` directories down.
fn tmux_sockets(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() && depth > 0 => found.extend(tmux_sockets(&path, depth - 1)),
            Ok(_) if entry.file_name() == "tmux.sock" => found.push(path),
            _ => {}
        }
    }
    found
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        let fake = fake_agent();
        for (_, name) in TYPES {
            std::os::unix::fs::symlink(&fake, bin.join(name)).unwrap();
        }
        World { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn bin(&self, name: &str) -> String {
        self.path().join("bin").join(name).display().to_string()
    }
    pub fn work(&self) -> String {
        self.path().join("work").display().to_string()
    }
    pub fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }
    pub fn witness(&self) -> PathBuf {
        self.path().join("witness.log")
    }

    pub fn start(&self) -> Broker {
        self.start_with(&[], &[])
    }

    /// Starts the broker with extra flags and environment, and waits until `/health` answers.
    pub fn start_with(&self, args: &[&str], env: &[(&str, &str)]) -> Broker {
        let bind = format!("127.0.0.1:{}", free_port());
        self.start_at(&[], &bind, args, env)
    }

    /// Starts the broker listening on `bind`, through `wrapper` (a command that ends by running
    /// its arguments, such as `ip netns exec NS`; empty for none), and waits until it accepts
    /// connections.
    pub fn start_at(
        &self,
        wrapper: &[&str],
        bind: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Broker {
        let broker = bin_dir().join("kokino-broker");
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(&broker);
                cmd
            }
            None => Command::new(&broker),
        };
        cmd.arg("--bind").arg(bind);
        // A test that runs several brokers gives each its own data directory.
        if !args.contains(&"--data-dir") {
            cmd.arg("--data-dir").arg(self.data_dir());
        }
        // The operator decides which binaries agents may name: the tests allow the world's bin
        // directory (the fake agent under the four CLI names), unless a test sets its own list.
        if !args.contains(&"--allow-binary") {
            cmd.arg("--allow-binary").arg(self.path().join("bin"));
        }
        cmd.args(args)
            .env("KOKINO_FAKE_STATE", self.path().join("fake-state"))
            .env("KOKINO_FAKE_LOG", self.witness())
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.path().join("bin").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env_remove("KOKINO_CONFIG")
            .env_remove("KOKINO_TOKEN_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start kokino-broker");
        // Keep the broker's log for failure messages without blocking it on a full pipe.
        let log_path = self
            .path()
            .join(format!("broker-{}.log", bind.replace([':', '.'], "-")));
        let stderr = child.stderr.take().unwrap();
        let log_for_thread = log_path.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(log_for_thread).unwrap();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(f, "{line}");
            }
        });
        let base = format!("http://{bind}");
        let broker = Broker {
            child: Some(child),
            base,
            log: log_path,
            client: reqwest::Client::new(),
        };
        broker.wait_ready();
        broker
    }

    /// Registers `agent` of `cli_type` pointing at the fake agent, with extra fields.
    pub async fn register(&self, b: &Broker, agent: &str, cli_type: &str, extra: Value) -> Value {
        let name = TYPES.iter().find(|(t, _)| *t == cli_type).unwrap().1;
        let mut body = json!({
            "agentId": agent, "type": cli_type, "binary": self.bin(name), "cwd": self.work(),
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let (status, v) = b.post("/agents/register", body).await;
        assert_eq!(status, 200, "register failed: {v}");
        v
    }

    /// Witness log lines: (kind, pid, nanos, rest).
    pub fn witness_lines(&self) -> Vec<(String, i32, u128, String)> {
        let Ok(text) = std::fs::read_to_string(self.witness()) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|l| {
                let mut parts = l.splitn(4, ' ');
                Some((
                    parts.next()?.to_owned(),
                    parts.next()?.parse().ok()?,
                    parts.next()?.parse().ok()?,
                    parts.next().unwrap_or("").to_owned(),
                ))
            })
            .collect()
    }
}

pub struct Broker {
    pub child: Option<Child>,
    pub base: String,
    pub log: PathBuf,
    pub client: reqwest::Client,
}

impl Broker {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("{}/health", self.base);
        loop {
            if let Ok(s) = std::net::TcpStream::connect(
                url.trim_start_matches("http://")
                    .trim_end_matches("/health"),
            ) {
                drop(s);
                return;
            }
            if Instant::now() > deadline {
                panic!("broker did not start: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_raw(path, body.to_string()).await
    }

    pub async fn post_raw(&self, path: &str, body: String) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .delete(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn execute(&self, agent: &str, prompt: &str) -> (u16, Value) {
        self.post(
            &format!("/agents/{agent}/execute"),
            json!({ "prompt": prompt }),
        )
        .await
    }

    /// SIGTERM and wait (graceful shutdown).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        child.wait().unwrap()
    }

    /// SIGKILL: the broker dies without any chance to clean up.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Pids of live (non-zombie) processes started for this world: every fake agent and every
/// grandchild it starts inherits `KOKINO_FAKE_LOG=<this world's witness>` from the broker. The
/// broker itself has it too, so it is excluded.
pub fn agent_processes(w: &World, b: &Broker) -> Vec<i32> {
    let needle = format!("KOKINO_FAKE_LOG={}", w.witness().display());
    let broker = b.child.as_ref().map(|c| c.id() as i32);
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if Some(pid) == broker {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|s| s == "Z");
        let mine = environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes());
        if !zombie && mine {
            out.push(pid);
        }
    }
    out
}

/// Waits (real time: real processes) until `f` holds, up to `timeout`.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    f()
}

/// Events are written by a background writer, off the execute path; wait until `want` of them
/// matching `query` are visible (or time out and return what there is).
pub async fn events(b: &Broker, query: &str, want: usize) -> Vec<Value> {
    let mut last = Vec::new();
    for _ in 0..200 {
        let (_, v) = b.get(&format!("/api/metrics/events?{query}")).await;
        last = v["events"].as_array().cloned().unwrap_or_default();
        if last.len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    last
}

/// The shell blocks (```sh or ```bash) of a markdown file, in order, each with the HTML comment
/// that precedes it, if any (`<!-- doc-test: skip -->` marks a block not meant to be run).
pub fn shell_blocks(markdown: &str) -> Vec<(Option<String>, String)> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines().peekable();
    let mut last_comment: Option<String> = None;
    while let Some(line) = lines.next() {
        let t = line.trim();
        if t.starts_with("<!--") {
            last_comment = Some(t.to_owned());
            continue;
        }
        if t == "```sh" || t == "```bash" {
            let mut body = String::new();
            for l in lines.by_ref() {
                if l.trim() == "```" {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            blocks.push((last_comment.take(), body));
        } else if !t.is_empty() {
            last_comment = None;
        }
    }
    blocks
}

/// Runs a documented shell snippet against a test broker, the way an operator would type it:
/// `localhost:5050` becomes the test broker's address and `cargo …` lines (building, starting
/// the broker) are left out because the test already did that. Returns (success, stdout, stderr).
pub fn run_doc_snippet(
    b: &Broker,
    snippet: &str,
    replacements: &[(&str, String)],
) -> (bool, String, String) {
    run_doc_snippet_in(b, snippet, replacements, &[], None)
}

/// [`run_doc_snippet`] with extra environment variables and a working directory for the shell.
pub fn run_doc_snippet_in(
    b: &Broker,
    snippet: &str,
    replacements: &[(&str, String)],
    env: &[(&str, String)],
    cwd: Option<&Path>,
) -> (bool, String, String) {
    let addr = b.base.trim_start_matches("http://").to_owned();
    let mut script = String::from("set -euo pipefail\n");
    for line in snippet.lines() {
        if line.trim_start().starts_with("cargo ") {
            continue;
        }
        let mut l = line
            .replace("http://localhost:5050", &format!("http://{addr}"))
            .replace("localhost:5050", &addr);
        for (from, to) in replacements {
            l = l.replace(from, to);
        }
        script.push_str(&l);
        script.push('\n');
    }
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c").arg(&script);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().expect("bash");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The workspace root (two levels above this package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Fails the calling test with instructions when `tmux` is not on `PATH`. The tmux-mode tests
/// never skip: a machine without tmux would otherwise report them as passed without having run
/// them, and the broker finds tmux on `PATH` exactly as this check does.
pub fn require_tmux() {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let candidate = dir.join("tmux");
            candidate.is_file()
                && std::fs::metadata(&candidate).is_ok_and(|m| {
                    std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
        })
    });
    assert!(
        found,
        "TMUX NOT FOUND on PATH: this test runs the broker's tmux mode and needs tmux \
         (install it, e.g. `apt-get install tmux`); it is not skipped"
    );
}

/// SIGKILL to each of `pids` (what a test found left over, so that it does not outlive the test).
pub fn kill_all(pids: &[i32]) {
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Asserts that no process of the world is left within `within`, killing what is.
pub async fn assert_none_left(w: &World, b: &Broker, within: Duration, what: &str) {
    let clean = eventually(within, || agent_processes(w, b).is_empty()).await;
    let left = agent_processes(w, b);
    kill_all(&left);
    assert!(clean, "{what}: processes left: {left:?}\n{}", b.log_text());
}

/// A watchdog (the spawner of headless CLIs, or a pane's supervisor) and its broker dying at
/// the same instant: the broker is stopped first, so that it cannot notice the watchdog's death
/// and end the group itself, then `pids` (the watchdog, and whatever else the scenario kills
/// with it) and the broker are killed with SIGKILL.
pub fn kill_supervisor_and_broker(b: &mut Broker, pids: &[i32]) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.pid()),
        nix::sys::signal::Signal::SIGSTOP,
    );
    kill_all(pids);
    b.kill9();
}

/// The processes that watched the broker's first `want` executions for it (`supervisorPid` of
/// their `PROCESS_STARTED` events, oldest first): the spawner for a headless run, the pane's
/// supervisor in tmux. Waits until that many events are stored.
pub async fn watchdog_pids(b: &Broker, want: usize) -> Vec<i32> {
    let mut started = events(b, "type=PROCESS_STARTED", want).await;
    assert!(started.len() >= want, "{started:?}");
    started.sort_by_key(|e| e["id"].as_i64());
    started
        .iter()
        .map(|e| {
            e["metadata"]["supervisorPid"]
                .as_i64()
                .unwrap_or_else(|| panic!("a PROCESS_STARTED event names no watchdog: {e}"))
                as i32
        })
        .collect()
}

/// The watchdog of the broker's latest execution, when it has started `count` in all.
pub async fn watchdog_pid(b: &Broker, count: usize) -> i32 {
    *watchdog_pids(b, count).await.last().expect("at least one")
}
