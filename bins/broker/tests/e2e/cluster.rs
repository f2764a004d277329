//! Three brokers on one PostgreSQL: many agents, concurrent requests over all brokers, one
//! broker killed and one paused mid-run. The fake agent's own start/end log is the witness that
//! no agent ever ran twice at once. Needs `KOKINO_TEST_DATABASE_URL` (`.ci/run` sets it).

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

/// A fresh database on the test server, dropped at the end.
struct TestDb {
    admin: String,
    name: String,
    pub url: String,
}

impl TestDb {
    /// A fresh database on the server `KOKINO_TEST_DATABASE_URL` names; `None`, saying that
    /// the test is skipped, without it.
    fn from_env() -> Option<TestDb> {
        match std::env::var("KOKINO_TEST_DATABASE_URL") {
            Ok(base) => Some(TestDb::create(&base)),
            Err(_) => {
                eprintln!("skipped: KOKINO_TEST_DATABASE_URL is not set");
                None
            }
        }
    }

    fn create(base: &str) -> TestDb {
        let name = format!("kokino_cluster_{}", uuid_like());
        let status = Command::new("psql")
            .args([base, "-q", "-c", &format!("CREATE DATABASE {name}")])
            .status()
            .expect("psql");
        assert!(status.success(), "could not create the test database");
        let url = match base.rfind('/') {
            Some(i) => format!("{}/{name}", &base[..i]),
            None => panic!("unexpected URL {base}"),
        };
        TestDb {
            admin: base.to_owned(),
            name,
            url,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.admin,
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .status();
    }
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", nanos, std::process::id())
}

fn signal(b: &Broker, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(b.pid()), sig).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_brokers_never_run_one_agent_twice_through_a_kill_and_a_pause() {
    let Some(db) = TestDb::from_env() else {
        return;
    };
    let w = World::new();
    let cfg = w.path().join("cluster.toml");
    std::fs::write(&cfg, "[cluster]\nlease_ttl_ms = 1500\n[limits]\nkill_grace_ms = 300\n[doctor]\nenabled = false\n").unwrap();
    let mut brokers: Vec<Broker> = (0..3)
        .map(|i| {
            let data = w.path().join(format!("data-{i}"));
            w.start_with(
                &[
                    "--config",
                    &cfg.display().to_string(),
                    "--database-url",
                    &db.url,
                    "--data-dir",
                    &data.display().to_string(),
                    "--instance-id",
                    &format!("b{i}"),
                ],
                &[],
            )
        })
        .collect();
    let (_, health) = brokers[0].get("/health").await;
    assert_eq!(health["store"], "postgres", "{health}");

    // Six agents, each with its own working directory so the witness tells them apart.
    let agents: Vec<String> = (0..6).map(|i| format!("ag{i}")).collect();
    for a in &agents {
        let cwd = w.path().join(format!("cwd-{a}"));
        std::fs::create_dir_all(&cwd).unwrap();
        let (s, body) = brokers[0]
            .post(
                "/agents/register",
                json!({"agentId": a, "type": "codex", "binary": w.bin("codex"), "cwd": cwd}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
    }

    // 48 requests spread over the three brokers: every agent gets requests on every broker.
    let mut tasks = Vec::new();
    for n in 0..48 {
        let b = &brokers[n % 3];
        let agent = agents[n % 6].clone();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let url = format!("{}/agents/{agent}/execute", b.base);
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"prompt": format!("req {n} fake:sleep=0.2"), "lockTimeoutMs": 45000}))
                .send()
                .await;
            match r {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    (n, agent, Ok((status, body)))
                }
                Err(e) => (n, agent, Err(e.to_string())),
            }
        }));
    }
    // Mid-run: kill broker 1 outright, pause broker 2 for longer than a lease.
    tokio::time::sleep(Duration::from_millis(700)).await;
    brokers[1].kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&brokers[2], nix::sys::signal::Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(4000)).await;
    signal(&brokers[2], nix::sys::signal::Signal::SIGCONT);

    let mut answered = Vec::new();
    let mut clear_errors = 0;
    for t in tasks {
        let (n, agent, r) = t.await.unwrap();
        match r {
            Ok((200, body)) => answered.push((agent, body)),
            Ok((status, body)) => {
                // Every other answer is a clear error body with a code.
                assert!(
                    body["code"].is_string() && body["error"].is_string(),
                    "request {n}: {status} {body}"
                );
                clear_errors += 1;
            }
            // The killed broker's clients lose their connection: a transport error, not a
            // wrong answer.
            Err(e) => {
                assert!(
                    n % 3 == 1,
                    "request {n} to a live broker failed without an answer: {e}"
                );
                clear_errors += 1;
            }
        }
    }
    eprintln!("{} answered, {clear_errors} clear errors", answered.len());
    assert!(
        answered.len() >= 16,
        "most requests were answered ({} answered, {clear_errors} errors)",
        answered.len()
    );

    // The witness: per agent (working directory), runs never overlap.
    let lines = w.witness_lines();
    let mut ends: HashMap<i32, u128> = HashMap::new();
    for (kind, pid, t, _) in &lines {
        if kind == "end" {
            ends.insert(*pid, *t);
        }
    }
    let mut runs: HashMap<String, Vec<(u128, u128, i32)>> = HashMap::new();
    for (kind, pid, t, rest) in &lines {
        if kind == "start" {
            // `rest` is "<cwd> <personality>".
            let cwd = rest
                .rsplit_once(' ')
                .map(|(c, _)| c.to_owned())
                .unwrap_or_default();
            let end = ends.get(pid).copied().unwrap_or(u128::MAX);
            runs.entry(cwd).or_default().push((*t, end, *pid));
        }
    }
    let total_runs: usize = runs.values().map(Vec::len).sum();
    eprintln!("{total_runs} CLI runs witnessed over {} agents", runs.len());
    assert!(
        total_runs >= answered.len(),
        "every answer came from a witnessed run"
    );
    for (cwd, mut spans) in runs {
        spans.sort();
        for pair in spans.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "two runs of the agent in {cwd} overlapped: {:?} and {:?}",
                pair[0],
                pair[1]
            );
        }
    }

    // No lost turn: every answer's turn is stored, readable through a live broker.
    let survivor = &brokers[0];
    for (agent, body) in &answered {
        let turn = body["turnId"].as_str().unwrap();
        let (s, t) = survivor
            .get(&format!("/agents/{agent}/conversation/turns/{turn}"))
            .await;
        assert_eq!(s, 200, "the answered turn {turn} of {agent} is stored: {t}");
        assert_eq!(t["content"], body["content"]);
    }
    // The paused broker is usable again after it resumed.
    let (s, body) = brokers[2].execute("ag0", "after the pause").await;
    assert_eq!(s, 200, "{body}");
    for b in brokers.iter_mut() {
        if b.child.is_some() {
            let _ = tokio::task::block_in_place(|| b.stop());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakers_and_fallback_changed_on_one_broker_are_seen_by_the_others() {
    let Some(db) = TestDb::from_env() else {
        return;
    };
    let w = World::new();
    let cfg = w.path().join("cluster.toml");
    std::fs::write(&cfg, "[doctor]\nenabled = false\n").unwrap();
    let b: Vec<Broker> = (0..2)
        .map(|i| {
            let data = w.path().join(format!("data-{i}"));
            w.start_with(
                &[
                    "--config",
                    &cfg.display().to_string(),
                    "--database-url",
                    &db.url,
                    "--data-dir",
                    &data.display().to_string(),
                    "--instance-id",
                    &format!("s{i}"),
                ],
                &[("PATH", &w.path().join("bin").display().to_string())],
            )
        })
        .collect();
    let (s, _) = b[0]
        .post("/agents/register", json!({"agentId": "shared", "type": "codex", "binary": w.bin("codex"), "cwd": w.work()}))
        .await;
    assert_eq!(s, 200);
    b[0].post(
        "/api/fallback/cli/disable",
        json!({"cliType": "gemini", "reason": "seen everywhere"}),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(b[0].execute("shared", "fake:exit=1").await.0, 502);
    }
    let mut agreed = false;
    for _ in 0..100 {
        let (_, fb) = b[1].get("/api/fallback/status").await;
        let (_, circuits) = b[1].get("/agents/circuits/status").await;
        let open = circuits["circuits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["agentId"] == "shared" && c["state"] == "open");
        if fb["disabledCLIs"][0]["reason"] == "seen everywhere" && open {
            agreed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        agreed,
        "the second broker shows the first broker's override and open breaker"
    );
    // And it acts on them: the open breaker refuses there too (no tmux on this PATH).
    let (s, body) = b[1].execute("shared", "refused").await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["code"], "CIRCUIT_OPEN");
}

/// `owner|token` of an agent's lease row, as the database has it.
fn lease_row(db: &TestDb, agent: &str) -> String {
    let out = Command::new("psql")
        .args([
            &db.url,
            "-At",
            "-c",
            &format!("SELECT owner || '|' || token FROM agent_leases WHERE agent_id = '{agent}'"),
        ])
        .output()
        .expect("psql");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs of one agent queued on one broker hand its lease on, run to run, instead of giving it
/// back to the database and taking it again: one acquisition for the whole queue (the token
/// stays 1), and the lease goes back to the database once the queue is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_runs_on_one_broker_hand_the_lease_on() {
    let Some(db) = TestDb::from_env() else {
        return;
    };
    let w = World::new();
    let cfg = w.path().join("cluster.toml");
    std::fs::write(
        &cfg,
        "[cluster]\nlease_ttl_ms = 2000\n[doctor]\nenabled = false\n",
    )
    .unwrap();
    let b = std::sync::Arc::new(w.start_with(
        &[
            "--config",
            &cfg.display().to_string(),
            "--database-url",
            &db.url,
            "--instance-id",
            "solo",
        ],
        &[],
    ));
    w.register(&b, "h", "codex", json!({})).await;
    let runs: Vec<_> = (0..4)
        .map(|n| {
            let b = b.clone();
            tokio::spawn(async move { b.execute("h", &format!("q{n} fake:sleep=0.2")).await })
        })
        .collect();
    for run in runs {
        let (st, v) = run.await.unwrap();
        assert_eq!(st, 200, "{v}");
    }
    // The last run had nobody waiting: its lease goes back (owner '' once released).
    assert!(
        eventually(Duration::from_secs(3), || lease_row(&db, "h") == "|1").await,
        "one acquisition for four queued runs, released at the end: {}",
        lease_row(&db, "h")
    );
    // The next run acquires it afresh.
    let (st, v) = b.execute("h", "again").await;
    assert_eq!(st, 200, "{v}");
    assert!(
        eventually(Duration::from_secs(3), || lease_row(&db, "h") == "|2").await,
        "{}",
        lease_row(&db, "h")
    );
}
