//! The four **real** agent CLIs in **tmux mode** through a real broker: their interactive TUIs
//! in the broker's own tmux server, pointed at the provider stand-in on loopback (set-up shared
//! with `real_cli.rs`; install the CLIs with `scripts/install-real-clis.sh`).
//!
//! Per CLI: an answer, a second prompt in the same session, a restart of the broker between two
//! prompts (the conversation carried by the CLI's session id), a shadow execution whose two legs
//! must agree, cancel and timeout (no process left), and end-session. Droid's TUI cannot run
//! without a Factory account, so its scenario is the broker saying so in seconds with
//! `auth_error` and the screen's words.
//!
//! Each answer's completion latency is measured from outside: a watcher polls the pane every
//! 5 ms for the answer's text and the broker's HTTP answer is timed against that moment. The
//! table goes to stderr on green runs too; `cargo xtask bench` prints the same figures.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{eventually, require_tmux, Broker, World};
use crate::real_cli::{execute_on, real_cli, short, Setup, Standin};
use serde_json::{json, Value};

/// Polls the agent's pane until `needle` is on it, and notes when.
struct PaneWatch {
    seen: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PaneWatch {
    fn start(socket: PathBuf, agent: &str, needle: String) -> PaneWatch {
        let seen = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let prefix = format!("kokino-{agent}-");
        let (s2, st2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st2.load(Ordering::Relaxed) {
                let sessions = Command::new("tmux")
                    .arg("-S")
                    .arg(&socket)
                    .args(["list-sessions", "-F", "#{session_name}"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                if let Some(name) = sessions.lines().find(|l| l.starts_with(&prefix)) {
                    let pane = Command::new("tmux")
                        .arg("-S")
                        .arg(&socket)
                        .args(["capture-pane", "-p", "-J", "-t", &format!("={name}:")])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default();
                    // The answer line, not the echo of the prompt that asked for it.
                    if pane
                        .lines()
                        .any(|l| l.contains(&needle) && !l.contains("earlier user turns?"))
                    {
                        *s2.lock().unwrap() = Some(Instant::now());
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        PaneWatch {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// When the answer appeared on the pane, if it did.
    fn finish(mut self) -> Option<Instant> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *self.seen.lock().unwrap()
    }
}

struct Row {
    scenario: &'static str,
    seconds: f64,
    latency_ms: Option<f64>,
    failure: Option<String>,
}

struct Table {
    cli: &'static str,
    rows: Vec<Row>,
    /// The second (warm) tmux prompt's time minus the same prompt's headless time.
    tmux_minus_headless: Option<f64>,
}

impl Table {
    fn add(
        &mut self,
        scenario: &'static str,
        seconds: f64,
        latency_ms: Option<f64>,
        checks: Vec<(bool, String)>,
    ) {
        let failed: Vec<String> = checks
            .into_iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, w)| w)
            .collect();
        self.rows.push(Row {
            scenario,
            seconds,
            latency_ms,
            failure: (!failed.is_empty()).then(|| failed.join("; ")),
        });
    }

    fn finish(self) {
        let mut s = format!(
            "\nreal CLI `{}` in tmux mode through the broker:\n",
            self.cli
        );
        s.push_str(&format!(
            "  {:<14} {:>8} {:>14}  result\n",
            "scenario", "s", "visible→answer"
        ));
        let mut lat: Vec<f64> = self.rows.iter().filter_map(|r| r.latency_ms).collect();
        for r in &self.rows {
            let l = r
                .latency_ms
                .map(|l| format!("{l:.0} ms"))
                .unwrap_or_else(|| "-".into());
            let res = match &r.failure {
                None => "PASS".to_owned(),
                Some(f) => format!("FAIL: {f}"),
            };
            s.push_str(&format!(
                "  {:<14} {:>8.2} {:>14}  {res}\n",
                r.scenario, r.seconds, l
            ));
        }
        lat.sort_by(f64::total_cmp);
        if !lat.is_empty() {
            s.push_str(&format!(
                "  completion latency (answer visible → broker answer): median {:.0} ms over {} answers\n",
                lat[lat.len() / 2],
                lat.len()
            ));
        }
        if let Some(d) = self.tmux_minus_headless {
            s.push_str(&format!(
                "  tmux − headless end to end (warm prompt): {:+.0} ms\n",
                d * 1000.0
            ));
        }
        let _ = std::io::stderr().write_all(s.as_bytes());
        let failed: Vec<&str> = self
            .rows
            .iter()
            .filter(|r| r.failure.is_some())
            .map(|r| r.scenario)
            .collect();
        assert!(
            failed.is_empty(),
            "real TUI `{}`: scenarios failed: {failed:?}{s}",
            self.cli
        );
    }
}

/// The last 40 lines of the broker's log that are not HTTP access lines, on stderr under
/// `label`: the broker's own account of a failed scenario, past the harness's capture.
fn print_log_tail(b: &Broker, label: &str) {
    let log = b.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains("http")).collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    let _ = std::io::stderr().write_all(format!("{label}:\n{tail}\n").as_bytes());
}

/// One execute, timed, with the moment its answer appeared on the pane.
async fn ask(
    b: &Broker,
    socket: &Path,
    agent: &str,
    prompt: &str,
    expect: &str,
) -> (u16, Value, f64, Option<f64>) {
    let watch = PaneWatch::start(socket.to_path_buf(), agent, expect.to_owned());
    // Bounded well below the default so a stuck scenario cannot hold the suite for minutes.
    let body = json!({"prompt": prompt, "timeoutMs": 60000});
    let (st, _, v, secs) =
        execute_on(b.client.clone(), b.base.clone(), agent.to_owned(), body).await;
    let answered = Instant::now();
    let seen = watch.finish();
    let latency = seen.map(|t| answered.saturating_duration_since(t).as_secs_f64() * 1000.0);
    (st, v, secs, latency)
}

async fn run_tui(cli_type: &'static str, name: &'static str) {
    require_tmux();
    let Some(binary) = real_cli(name) else {
        return;
    };
    let _slot = crate::real_cli::REAL_CLI_SLOTS
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let w = World::new();
    let standin = Standin::start(w.path());
    let s = Setup::new(name, binary, w.path(), standin.port);
    // The operator allows the real CLIs' directory (`allowed_binaries`).
    let allow = s.binary.parent().unwrap().display().to_string();
    let start = || w.start_with(&["--allow-binary", &allow], &[]);
    let mut b = start();
    let socket = w.data_dir().join("tmux").join("tmux.sock");
    let mut t = Table {
        cli: name,
        rows: Vec::new(),
        tmux_minus_headless: None,
    };

    if name == "droid" {
        w.register(
            &b,
            "tui",
            cli_type,
            s.agent(false, json!({"commMode": "tmux"})),
        )
        .await;
        let started = Instant::now();
        let (st, v, _, _) = ask(&b, &socket, "tui", "what is 2+2", "FAKE_ANSWER").await;
        let secs = started.elapsed().as_secs_f64();
        let msg = v["error"]
            .as_str()
            .or(v["message"].as_str())
            .unwrap_or("")
            .to_owned()
            + &v.to_string();
        t.add(
            "login",
            secs,
            None,
            vec![
                (st == 502, format!("status {st}: {}", short(&v))),
                (
                    v["details"]["classification"] == "auth_error",
                    format!("classification: {}", short(&v)),
                ),
                (
                    msg.contains("Please login with your Factory account"),
                    format!("the screen's words are missing: {}", short(&v)),
                ),
                (secs < 15.0, format!("took {secs:.1} s")),
            ],
        );
        let gone = eventually(Duration::from_secs(10), || s.processes().is_empty()).await;
        t.add(
            "no-process",
            0.0,
            None,
            vec![(gone, format!("left: {:?}", s.processes()))],
        );
        drop(b);
        t.finish();
        return;
    }

    // 1. Answer, 2. a second prompt in the same session.
    w.register(
        &b,
        "tui",
        cli_type,
        s.agent(false, json!({"commMode": "tmux"})),
    )
    .await;
    let (st, v, secs, lat) = ask(
        &b,
        &socket,
        "tui",
        "what is 2+2",
        "FAKE_ANSWER: 0 earlier user turns",
    )
    .await;
    let content = v["content"].as_str().unwrap_or("").to_owned();
    t.add(
        "answer",
        secs,
        lat,
        vec![
            (st == 200, format!("status {st}: {}", short(&v))),
            (
                content == "FAKE_ANSWER: 0 earlier user turns",
                format!("content {content:?}"),
            ),
            (v["mode"] == "tmux", format!("mode {}", v["mode"])),
        ],
    );
    let (st, v, secs, lat) = ask(
        &b,
        &socket,
        "tui",
        "and the second question",
        "FAKE_ANSWER: 1 earlier user turns",
    )
    .await;
    let content = v["content"].as_str().unwrap_or("").to_owned();
    t.add(
        "second",
        secs,
        lat,
        vec![
            (st == 200, format!("status {st}: {}", short(&v))),
            (
                content == "FAKE_ANSWER: 1 earlier user turns",
                format!("content {content:?}"),
            ),
        ],
    );

    // The same warm prompt headless, for tmux − headless end to end.
    w.register(
        &b,
        "plain",
        cli_type,
        s.agent(false, json!({"commMode": "headless"})),
    )
    .await;
    let _ = execute_on(
        b.client.clone(),
        b.base.clone(),
        "plain".into(),
        json!({"prompt": "what is 2+2"}),
    )
    .await;
    let (st, _, v, head_secs) = execute_on(
        b.client.clone(),
        b.base.clone(),
        "plain".into(),
        json!({"prompt": "and the second question"}),
    )
    .await;
    t.add(
        "headless",
        head_secs,
        None,
        vec![(st == 200, format!("status {st}: {}", short(&v)))],
    );
    t.tmux_minus_headless = Some(t.rows[1].seconds - head_secs);

    // 3. A restart of the broker: the TUI is gone with the old broker's tmux server; the next
    // prompt starts it again on the CLI's session.
    if t.rows.iter().any(|r| r.failure.is_some()) {
        print_log_tail(&b, "first broker's log");
    }
    b.stop();
    let gone_after_stop = eventually(Duration::from_secs(10), || s.processes().is_empty()).await;
    b = start();
    let (st, v, secs, lat) = ask(
        &b,
        &socket,
        "tui",
        "a third question",
        "FAKE_ANSWER: 2 earlier user turns",
    )
    .await;
    let content = v["content"].as_str().unwrap_or("").to_owned();
    t.add(
        "restart",
        secs,
        lat,
        vec![
            (
                gone_after_stop,
                "the TUI outlived the broker's shutdown".into(),
            ),
            (st == 200, format!("status {st}: {}", short(&v))),
            (
                content == "FAKE_ANSWER: 2 earlier user turns",
                format!("content {content:?}"),
            ),
        ],
    );

    if content != "FAKE_ANSWER: 2 earlier user turns" {
        print_log_tail(&b, "restarted broker's log");
    }

    // 4. End-session: the TUI and its tmux session go.
    let (st, v) = b.post("/agents/tui/end-session", json!({})).await;
    let gone = eventually(Duration::from_secs(10), || s.processes().is_empty()).await;
    t.add(
        "end-session",
        0.0,
        None,
        vec![
            (st == 200, format!("status {st}: {}", short(&v))),
            (gone, format!("left: {:?}", s.processes())),
        ],
    );

    // 5. Shadow: the tmux leg and the headless leg agree once the pane's decorations are gone.
    w.register(
        &b,
        "shadow",
        cli_type,
        s.agent(false, json!({"commMode": "shadow"})),
    )
    .await;
    let (st, v, secs, _) = ask(&b, &socket, "shadow", "what is 2+2", "FAKE_ANSWER").await;
    // The comparison is stored once both legs have ended, which may be after the answer.
    let mut metrics = Value::Null;
    for _ in 0..100 {
        metrics = b.get("/api/shadow-mode/metrics?days=30").await.1;
        if metrics["totalTests"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.add(
        "shadow",
        secs,
        None,
        vec![
            (st == 200, format!("status {st}: {}", short(&v))),
            (
                metrics["summary"]["bothSucceeded"] == 1,
                format!("metrics: {}", short(&metrics)),
            ),
            (
                metrics["summary"]["outputMatched"] == 1,
                format!("the legs' answers differ: {}", short(&metrics)),
            ),
        ],
    );

    // The shadow agent's TUI stays for its next prompt; end it so that the process checks
    // below see only the scenario's own TUI.
    let (st, v) = b.post("/agents/shadow/end-session", json!({})).await;
    let gone = eventually(Duration::from_secs(10), || s.processes().is_empty()).await;
    t.add(
        "shadow-end",
        0.0,
        None,
        vec![
            (st == 200, format!("status {st}: {}", short(&v))),
            (gone, format!("left: {:?}", s.processes())),
        ],
    );

    // 6. Cancel: nothing of the CLI is left.
    w.register(
        &b,
        "hanger",
        cli_type,
        s.agent(false, json!({"commMode": "tmux"})),
    )
    .await;
    let task = tokio::spawn(execute_on(
        b.client.clone(),
        b.base.clone(),
        "hanger".into(),
        json!({"prompt": "HANG now"}),
    ));
    let hanging = eventually(Duration::from_secs(60), || {
        !standin.model_requests_with("HANG now").is_empty()
    })
    .await;
    let started = Instant::now();
    let (cst, cv) = b.post("/agents/hanger/execute/cancel", json!({})).await;
    let (st, _, v, _) = task.await.unwrap();
    let gone = eventually(Duration::from_secs(15), || s.processes().is_empty()).await;
    t.add(
        "cancel",
        started.elapsed().as_secs_f64(),
        None,
        vec![
            (hanging, "the TUI never reached the provider".into()),
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

    // 7. Timeout: 504 and nothing left.
    let (st, _, v, secs) = execute_on(
        b.client.clone(),
        b.base.clone(),
        "hanger".into(),
        json!({"prompt": "HANG again", "timeoutMs": 20000}),
    )
    .await;
    let gone = eventually(Duration::from_secs(15), || s.processes().is_empty()).await;
    t.add(
        "timeout",
        secs,
        None,
        vec![
            (st == 504, format!("status {st}: {}", short(&v))),
            (gone, format!("processes left: {:?}", s.processes())),
        ],
    );

    if t.rows.iter().any(|r| r.failure.is_some()) {
        // The broker's own account of the failed runs, past the harness's capture.
        print_log_tail(&b, "broker log tail");
    }
    drop(b);
    t.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn real_tui_claude() {
    run_tui("claude-code", "claude").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn real_tui_codex() {
    run_tui("codex", "codex").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn real_tui_gemini() {
    run_tui("gemini", "gemini").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn real_tui_droid() {
    run_tui("factory-droid", "droid").await;
}
