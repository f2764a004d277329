//! `cargo xtask chaos`: kill and pause real brokers at random instants and count what the two
//! central promises forbid — a process of an execution alive 5 s after its broker died
//! (orphans), two runs of one agent at once (overlaps, from the fake agent's witness log and a
//! process monitor), an answered turn missing from the store (lost turns), and an agent whose
//! lock never comes free again (stuck locks).
//!
//! (a) One broker on SQLite: every round fires a few executes whose CLIs start grandchildren,
//! then `kill -9`s the broker at a random instant (every other round within the first 100 ms
//! after the requests, when the spawn is in flight), and restarts it either at once (the next
//! round's requests then race the dying CLIs) or after the orphan check.
//! (b) Two brokers on PostgreSQL with runs longer than the lease: every round kills one broker
//! or pauses it (SIGSTOP) for longer than a lease, then brings it back.
//!
//! The run stops by itself and fails when any count is not zero.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::harness::{release_dir, BenchDb, Broker, Client, World};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask chaos",
    about = "Kill and pause brokers at random instants"
)]
struct Args {
    /// Rounds of the single-broker part (a).
    #[arg(long, default_value_t = 100)]
    rounds: usize,
    /// Rounds of the two-broker PostgreSQL part (b); it needs KOKINO_TEST_DATABASE_URL.
    #[arg(long, default_value_t = 30)]
    cluster_rounds: usize,
    /// Use the binaries in this directory instead of building release binaries.
    #[arg(long)]
    bins: Option<PathBuf>,
    /// Seed of the random instants (default: from the clock); printed so a run can be repeated.
    #[arg(long)]
    seed: Option<u64>,
}

/// What a part found.
#[derive(Debug, Default)]
struct Tally {
    rounds: usize,
    executions: usize,
    answered: usize,
    orphans: usize,
    overlaps: usize,
    lost_turns: usize,
    stuck_locks: usize,
}

impl Tally {
    fn print(&self, part: &str) {
        println!(
            "{part}: {} rounds, {} executions ({} answered): {} orphans, {} overlapping runs, {} lost turns, {} stuck locks",
            self.rounds,
            self.executions,
            self.answered,
            self.orphans,
            self.overlaps,
            self.lost_turns,
            self.stuck_locks
        );
    }
    fn clean(&self) -> bool {
        self.orphans + self.overlaps + self.lost_turns + self.stuck_locks == 0
    }
}

pub fn run(args: Vec<String>) -> Result<()> {
    let args = Args::try_parse_from(std::iter::once("chaos".to_owned()).chain(args))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let bins = match &args.bins {
        Some(b) => {
            std::fs::canonicalize(b).with_context(|| format!("no directory {}", b.display()))?
        }
        None => {
            let root = crate::workspace_root();
            println!("==> building release binaries");
            let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .current_dir(&root)
                .args([
                    "build",
                    "--release",
                    "-p",
                    "kokino-broker",
                    "-p",
                    "kokino-fake-agent",
                ])
                .status()?;
            if !status.success() {
                bail!("release build failed");
            }
            release_dir(&root)?
        }
    };
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!("==> chaos, seed {seed}");
    let mut rng = Rng(seed | 1);
    let single = single_broker(&bins, args.rounds, &mut rng)?;
    single.print("(a) one broker, SQLite");
    let cluster = match std::env::var("KOKINO_TEST_DATABASE_URL") {
        Ok(url) if args.cluster_rounds > 0 => {
            let t = two_brokers(&bins, &url, args.cluster_rounds, &mut rng)?;
            t.print("(b) two brokers, PostgreSQL");
            Some(t)
        }
        _ => {
            println!("(b) two brokers, PostgreSQL: skipped (set KOKINO_TEST_DATABASE_URL)");
            None
        }
    };
    if !single.clean() || cluster.as_ref().is_some_and(|t| !t.clean()) {
        bail!("chaos found broken promises (seed {seed})");
    }
    Ok(())
}

/// A small xorshift generator: the instants only need to be spread, and repeatable by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const AGENTS: usize = 3;

fn agent_cwd(world: &World, i: usize) -> PathBuf {
    world.dir.join(format!("work-{i}"))
}

fn register_agents(world: &World, broker: &Broker) -> Result<()> {
    for i in 0..AGENTS {
        let cwd = agent_cwd(world, i);
        std::fs::create_dir_all(&cwd)?;
        let body = serde_json::json!({
            "agentId": format!("c{i}"), "type": "claude-code",
            "binary": world.claude(), "cwd": cwd,
        });
        let (status, text) =
            Client::connect(&broker.addr)?.post("/agents/register", &body.to_string())?;
        if status != 200 {
            bail!("register c{i}: {status} {text}");
        }
    }
    Ok(())
}

/// One execute in its own thread; the answer (if any) comes back through the handle.
type Pending = std::thread::JoinHandle<Option<(String, u16, serde_json::Value)>>;

fn fire(addr: &str, agent: String, prompt: String) -> Pending {
    let addr = addr.to_owned();
    std::thread::spawn(move || {
        let body = serde_json::json!({"prompt": prompt, "lockTimeoutMs": 30000}).to_string();
        let (status, text) = Client::connect(&addr)
            .ok()?
            .post(&format!("/agents/{agent}/execute"), &body)
            .ok()?;
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Some((agent, status, v))
    })
}

fn collect(
    pending: Vec<Pending>,
    answers: &mut Vec<(String, serde_json::Value)>,
    tally: &mut Tally,
) {
    for p in pending {
        tally.executions += 1;
        if let Ok(Some((agent, 200, v))) = p.join() {
            tally.answered += 1;
            answers.push((agent, v));
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

fn kill9(broker: Broker) {
    let mut broker = broker;
    let _ = broker.child.kill();
    let _ = broker.child.wait();
}

/// (a) One broker on SQLite, killed every round.
fn single_broker(bins: &Path, rounds: usize, rng: &mut Rng) -> Result<Tally> {
    let world = World::named(bins, "chaos")?;
    let monitor = Monitor::start(&world);
    let mut tally = Tally {
        rounds,
        ..Tally::default()
    };
    let mut answers = Vec::new();
    let mut broker = Some(world.start_broker()?);
    register_agents(&world, broker.as_ref().context("broker")?)?;
    for round in 0..rounds {
        let b = match broker.take() {
            Some(b) => b,
            None => world.start_broker()?,
        };
        let mut pending = Vec::new();
        for k in 0..=(rng.below(3) as usize) {
            let secs = 0.1 + rng.below(900) as f64 / 1000.0;
            let agent = format!("c{}", rng.below(AGENTS as u64));
            pending.push(fire(
                &b.addr,
                agent,
                format!("fake:child fake:sleep={secs:.3} round {round}.{k}"),
            ));
        }
        let delay = if round % 2 == 0 {
            rng.below(100)
        } else {
            100 + rng.below(1100)
        };
        std::thread::sleep(Duration::from_millis(delay));
        monitor.watch_kill();
        kill9(b);
        collect(pending, &mut answers, &mut tally);
        if rng.below(2) == 0 {
            broker = Some(world.start_broker()?);
        } else {
            monitor.settle();
        }
    }
    let b = match broker.take() {
        Some(b) => b,
        None => world.start_broker()?,
    };
    monitor.settle();
    finish(&world, &[&b], &answers, &monitor, &mut tally)?;
    Ok(tally)
}

/// (b) Two brokers on one PostgreSQL database; runs last longer than a lease.
fn two_brokers(bins: &Path, admin_url: &str, rounds: usize, rng: &mut Rng) -> Result<Tally> {
    let db = BenchDb::create(admin_url)?;
    let world = World::named(bins, "chaos-cluster")?;
    let monitor = Monitor::start(&world);
    let cfg = world.dir.join("cluster.toml");
    std::fs::write(
        &cfg,
        "[cluster]\nlease_ttl_ms = 1500\n[limits]\nkill_grace_ms = 300\n[doctor]\nenabled = false\n",
    )?;
    let flags = |i: usize| -> Vec<String> {
        vec![
            "--config".into(),
            cfg.display().to_string(),
            "--database-url".into(),
            db.url.clone(),
            "--data-dir".into(),
            world.dir.join(format!("data-{i}")).display().to_string(),
            "--instance-id".into(),
            format!("chaos-{i}"),
        ]
    };
    let mut brokers = vec![
        world.start_broker_with(&flags(0))?,
        world.start_broker_with(&flags(1))?,
    ];
    register_agents(&world, &brokers[0])?;
    let mut tally = Tally {
        rounds,
        ..Tally::default()
    };
    let mut answers = Vec::new();
    for round in 0..rounds {
        let mut pending = Vec::new();
        for k in 0..4 {
            let b = &brokers[rng.below(2) as usize];
            let agent = format!("c{}", rng.below(AGENTS as u64));
            pending.push(fire(
                &b.addr,
                agent,
                format!("fake:child fake:sleep=2.5 round {round}.{k}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(100 + rng.below(1400)));
        let victim = rng.below(2) as usize;
        if rng.below(2) == 0 {
            monitor.watch_kill();
            let dead = brokers.remove(victim);
            kill9(dead);
            brokers.insert(victim, world.start_broker_with(&flags(victim))?);
        } else {
            // Paused for longer than a lease: its supervisors must stop its CLIs before another
            // broker may take the agents over.
            let pid = brokers[victim].child.id();
            signal(pid, "-STOP");
            std::thread::sleep(Duration::from_millis(2500));
            signal(pid, "-CONT");
        }
        collect(pending, &mut answers, &mut tally);
    }
    monitor.settle();
    let refs: Vec<&Broker> = brokers.iter().collect();
    finish(&world, &refs, &answers, &monitor, &mut tally)?;
    drop(brokers);
    drop(db);
    Ok(tally)
}

/// The checks after the last round: orphans and overlaps from the monitor and the witness log,
/// lost turns and stuck locks through a live broker.
fn finish(
    world: &World,
    brokers: &[&Broker],
    answers: &[(String, serde_json::Value)],
    monitor: &Monitor,
    tally: &mut Tally,
) -> Result<()> {
    let b = brokers[0];
    for (agent, body) in answers {
        let turn = body["turnId"].as_str().unwrap_or("");
        let (status, text) =
            Client::connect(&b.addr)?.get(&format!("/agents/{agent}/conversation/turns/{turn}"))?;
        let stored: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if status != 200 || stored["content"] != body["content"] {
            eprintln!("lost turn {turn} of {agent}: {status} {text}");
            tally.lost_turns += 1;
        }
    }
    for i in 0..AGENTS {
        let body = r#"{"prompt":"after the chaos","lockTimeoutMs":30000}"#;
        let (status, text) =
            Client::connect(&b.addr)?.post(&format!("/agents/c{i}/execute"), body)?;
        if status != 200 {
            eprintln!("agent c{i} is stuck: {status} {text}");
            tally.stuck_locks += 1;
        }
    }
    tally.orphans = monitor.orphans();
    tally.overlaps = overlaps(world, monitor);
    Ok(())
}

/// Runs of one agent (one working directory) that overlapped: from the witness log's start and
/// end lines, with the monitor's last sighting standing in for the end of a CLI that was
/// SIGKILLed (it writes no end line).
fn overlaps(world: &World, monitor: &Monitor) -> usize {
    let text = std::fs::read_to_string(world.dir.join("witness.log")).unwrap_or_default();
    let mut ends: HashMap<i32, u128> = HashMap::new();
    let mut starts = Vec::new();
    for line in text.lines() {
        let mut p = line.splitn(4, ' ');
        let (Some(kind), Some(pid), Some(t)) = (p.next(), p.next(), p.next()) else {
            continue;
        };
        let (Ok(pid), Ok(t)) = (pid.parse::<i32>(), t.parse::<u128>()) else {
            continue;
        };
        let rest = p.next().unwrap_or("");
        match kind {
            "start" => {
                let cwd = rest
                    .rsplit_once(' ')
                    .map(|(c, _)| c.to_owned())
                    .unwrap_or_default();
                starts.push((cwd, pid, t));
            }
            "end" => {
                ends.insert(pid, t);
            }
            _ => {}
        }
    }
    let last_seen = monitor.last_seen();
    let mut runs: HashMap<String, Vec<(u128, u128, i32)>> = HashMap::new();
    for (cwd, pid, t) in starts {
        let end = ends
            .get(&pid)
            .copied()
            .or_else(|| last_seen.get(&pid).map(|s| s + MONITOR_TICK.as_nanos()))
            .unwrap_or(t);
        runs.entry(cwd).or_default().push((t, end, pid));
    }
    let mut n = 0;
    for (cwd, mut spans) in runs {
        spans.sort();
        for pair in spans.windows(2) {
            if pair[0].1 > pair[1].0 {
                eprintln!(
                    "two runs of the agent in {cwd} overlapped: {:?} and {:?}",
                    pair[0], pair[1]
                );
                n += 1;
            }
        }
    }
    n
}

const MONITOR_TICK: Duration = Duration::from_millis(10);

/// Watches every fake-agent process of the world (the CLIs and their grandchildren) from
/// `/proc`, remembering when each was last seen alive, and turns each broker kill into an
/// orphan check 5 s later.
struct Monitor {
    state: Arc<Mutex<MonitorState>>,
    needle: String,
}

#[derive(Default)]
struct MonitorState {
    /// Live fake-agent pids at the last scan.
    alive: HashSet<i32>,
    /// Unix nanoseconds of the last scan that saw each pid.
    last_seen: HashMap<i32, u128>,
    /// (deadline, pids alive at the kill): any of them still alive at the deadline is an orphan.
    checks: Vec<(Instant, HashSet<i32>)>,
    orphans: HashSet<i32>,
    stop: bool,
}

impl Monitor {
    fn start(world: &World) -> Monitor {
        let needle = format!(
            "KOKINO_FAKE_LOG={}",
            world.dir.join("witness.log").display()
        );
        let state = Arc::new(Mutex::new(MonitorState::default()));
        let s = state.clone();
        let n = needle.clone();
        std::thread::spawn(move || loop {
            let alive = scan(&n);
            let now = now_ns();
            let mut st = s.lock().expect("monitor");
            if st.stop {
                return;
            }
            for pid in &alive {
                st.last_seen.insert(*pid, now);
            }
            let due: Vec<_> = st
                .checks
                .iter()
                .filter(|(d, _)| Instant::now() >= *d)
                .cloned()
                .collect();
            st.checks.retain(|(d, _)| Instant::now() < *d);
            for (_, pids) in due {
                for pid in pids.intersection(&alive) {
                    eprintln!("orphan: pid {pid} outlived its broker by 5 s");
                    st.orphans.insert(*pid);
                    signal(*pid as u32, "-KILL");
                }
            }
            st.alive = alive;
            drop(st);
            std::thread::sleep(MONITOR_TICK);
        });
        Monitor { state, needle }
    }

    /// A broker is about to die: whatever is alive now must be gone within 5 s.
    fn watch_kill(&self) {
        // A fresh scan, so that a CLI spawned a moment ago is included.
        let alive = scan(&self.needle);
        let mut st = self.state.lock().expect("monitor");
        st.checks
            .push((Instant::now() + Duration::from_secs(5), alive));
    }

    /// Waits until every pending orphan check has run.
    fn settle(&self) {
        loop {
            if self.state.lock().expect("monitor").checks.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn orphans(&self) -> usize {
        self.state.lock().expect("monitor").orphans.len()
    }

    fn last_seen(&self) -> HashMap<i32, u128> {
        self.state.lock().expect("monitor").last_seen.clone()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Ok(mut st) = self.state.lock() {
            st.stop = true;
        }
    }
}

/// Live fake-agent processes carrying this world's witness variable.
fn scan(needle: &str) -> HashSet<i32> {
    let mut out = HashSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let is_fake = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .and_then(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().starts_with("kokino-fake-agent"))
            })
            .unwrap_or(false);
        if !is_fake {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|s| s == "Z" || s == "X");
        let mine = std::fs::read(format!("/proc/{pid}/environ"))
            .map(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
            .unwrap_or(false);
        if mine && !zombie {
            out.insert(pid);
        }
    }
    out
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
