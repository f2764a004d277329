//! `cargo xtask bench`: the figures the issues ask for, each measured beside a baseline in the
//! same run on the same machine.
//!
//! Everything runs against release builds of the real binaries: the broker on a temporary data
//! directory, the fake agent as every CLI. The HTTP client is a few lines of blocking HTTP/1.1
//! over keep-alive sockets, so that the client costs as little as possible and xtask stays free
//! of an async runtime.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::harness::{build_release, BenchDb, Broker, Client, Cpu, World, OWN_URL};

mod load;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask bench", about = "Kokino's benchmarks")]
struct Args {
    /// Sequential executions for the overhead figure.
    #[arg(long, default_value_t = 300)]
    overhead_runs: usize,
    /// Executions in the throughput run.
    #[arg(long, default_value_t = 800)]
    throughput_runs: usize,
    /// Agents in the throughput run.
    #[arg(long, default_value_t = 50)]
    agents: usize,
    /// Concurrent clients in the throughput run.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Executions per mode in the tmux-vs-headless run.
    #[arg(long, default_value_t = 40)]
    tmux_runs: usize,
    /// Run only the several-machines figures (g, h), which need PostgreSQL.
    #[arg(long)]
    only_homes: bool,
    /// Run only the load figures (a, b, b2, c, i), on SQLite and, with a database URL, on
    /// PostgreSQL.
    #[arg(long)]
    only_load: bool,
}

/// The performance issue's figures on one broker: overhead, throughput and CPU per execution,
/// the burst with `/health` during it, and memory with many agents.
fn load_figures(world: &World, broker: &Broker, args: &Args, tag: &str) -> Result<()> {
    overhead(world, broker, args.overhead_runs, tag)?;
    throughput(world, broker, args, tag)?;
    load::burst(world, broker, tag)?;
    load::memory(world, broker, tag)?;
    Ok(())
}

pub fn run(args: Vec<String>) -> Result<()> {
    let args = Args::try_parse_from(std::iter::once("bench".to_owned()).chain(args))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let root = crate::workspace_root();
    let bins = build_release()?;
    let world = World::new(&bins)?;
    if args.only_homes {
        let url = std::env::var("KOKINO_BENCH_DATABASE_URL")
            .or_else(|_| std::env::var("KOKINO_TEST_DATABASE_URL"))
            .map_err(|_| anyhow::anyhow!("--only-homes needs KOKINO_BENCH_DATABASE_URL"))?;
        return homes(&world, &url, &args);
    }
    let pg_url = std::env::var("KOKINO_BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("KOKINO_TEST_DATABASE_URL"))
        .ok();
    let broker = world.start_broker()?;
    load_figures(&world, &broker, &args, "")?;
    if !args.only_load {
        tmux_vs_headless(&world, &broker, args.tmux_runs)?;
        real_tuis(&root)?;
        comparison(&root)?;
    }
    drop(broker);
    if let Some(url) = &pg_url {
        // The same figures with the store on PostgreSQL.
        let db = BenchDb::create(url)?;
        let broker = world.start_broker_with(&[
            "--data-dir".to_owned(),
            world.dir.join("data-pg").display().to_string(),
            "--database-url".to_owned(),
            db.url.clone(),
        ])?;
        load_figures(&world, &broker, &args, " (PostgreSQL)")?;
        drop(broker);
        drop(db);
    }
    if args.only_load {
        return Ok(());
    }
    match pg_url {
        Some(url) => {
            postgres_throughput(&world, &url, &args)?;
            homes(&world, &url, &args)?;
        }
        None => println!(
            "\n== (f) PostgreSQL: skipped (set KOKINO_BENCH_DATABASE_URL or KOKINO_TEST_DATABASE_URL)"
        ),
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Prints the median and 99th percentile of a baseline, of the runs measured beside it, and of
/// what those runs add to the baseline, with the goal for the last.
fn print_added(
    labels: [&str; 3],
    mut baseline: Vec<Duration>,
    mut measured: Vec<Duration>,
    goal: &str,
) {
    baseline.sort();
    measured.sort();
    let quantiles = |v: &[Duration]| (ms(percentile(v, 0.5)), ms(percentile(v, 0.99)));
    let (b50, b99) = quantiles(&baseline);
    let (m50, m99) = quantiles(&measured);
    let goal = format!("   (goal: {goal})");
    for (label, p50, p99, note) in [
        (labels[0], b50, b99, ""),
        (labels[1], m50, m99, ""),
        (labels[2], m50 - b50, m99 - b99, goal.as_str()),
    ] {
        println!("  {label:<21} median {p50:7.2} ms   p99 {p99:7.2} ms{note}");
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (a) Broker overhead per execution: HTTP execute time minus direct spawn time, at the median
/// and the 99th percentile, measured interleaved so that machine noise hits both alike.
fn overhead(world: &World, broker: &Broker, runs: usize, tag: &str) -> Result<()> {
    println!(
        "\n== (a) broker overhead per execution{tag} ({runs} runs, fake agent answering at once)"
    );
    world.register(broker, "overhead")?;
    let mut client = Client::connect(&broker.addr)?;
    let body = r#"{"prompt":"hello"}"#;
    for _ in 0..20 {
        client.post("/agents/overhead/execute", body)?;
        world.direct_spawn()?;
    }
    let mut via_http = Vec::with_capacity(runs);
    let mut direct = Vec::with_capacity(runs);
    let (cpu_before, spawner_before) = (broker.cpu(), broker.spawner_cpu());
    for _ in 0..runs {
        let t = Instant::now();
        let (status, text) = client.post("/agents/overhead/execute", body)?;
        via_http.push(t.elapsed());
        if status != 200 {
            bail!("execute failed: {status} {text}");
        }
        direct.push(world.direct_spawn()?);
    }
    // The direct spawns in between cost the broker nothing, so this is its CPU time for the
    // executions alone, with no concurrency to share wake-ups.
    let per = |seconds: f64| seconds * 1000.0 / runs.max(1) as f64;
    let broker_cpu = per(broker.cpu().since(cpu_before).own);
    let spawner_cpu = per(broker.spawner_cpu().since(spawner_before).own);
    print_added(
        ["direct spawn", "HTTP execute", "overhead"],
        direct,
        via_http,
        "≤ 1 ms median, ≤ 5 ms p99",
    );
    println!(
        "  CPU time per execution, one at a time: broker {broker_cpu:.2} ms, its spawner {spawner_cpu:.2} ms"
    );
    Ok(())
}

/// (b) Throughput over many agents with a few concurrent clients, beside spawning the fake agent
/// directly with the same concurrency; (b2) the CPU time of each, per execution.
fn throughput(world: &World, broker: &Broker, args: &Args, tag: &str) -> Result<()> {
    println!(
        "\n== (b) throughput{tag}: {} executions over {} agents, {} concurrent clients",
        args.throughput_runs, args.agents, args.clients
    );
    for i in 0..args.agents {
        world.register(broker, &format!("tp-{i}"))?;
    }
    let (before, spawner_before) = (broker.cpu(), broker.spawner_cpu());
    let addrs = [broker.addr.clone()];
    let broker_rate = load::through_broker(
        &addrs,
        "tp",
        args.throughput_runs,
        args.agents,
        args.clients,
    )?;
    let broker_cpu = broker.cpu().since(before);
    let spawner_cpu = broker.spawner_cpu().since(spawner_before);

    let before = Cpu::this_process();
    let direct_rate = load::direct(world, args.throughput_runs, args.clients)?;
    let direct_cpu = Cpu::this_process().since(before);
    println!("  direct spawn      {direct_rate:8.1} executions/s");
    println!("  through broker    {broker_rate:8.1} executions/s");
    println!(
        "  ratio             {:8.1} %   (goal: ≥ 80 %)",
        broker_rate / direct_rate * 100.0
    );
    load::cpu_per_execution(
        broker_cpu,
        spawner_cpu,
        args.throughput_runs,
        direct_cpu,
        args.throughput_runs,
    );
    Ok(())
}

/// (issue 4 a, b) tmux mode: the time from the fake agent finishing its answer (its witness
/// `end` line, written when the turn is done) to the broker's response, and the same prompt end
/// to end in tmux and in headless, for a transcript-driven CLI (claude) and a screen-driven one
/// (codex).
fn tmux_vs_headless(world: &World, broker: &Broker, runs: usize) -> Result<()> {
    println!("\n== (d) tmux mode ({runs} runs per mode and CLI)");
    for (cli_type, bin) in [("claude-code", "claude"), ("codex", "codex")] {
        let mut modes = Vec::new();
        for mode in ["headless", "tmux"] {
            let agent = format!("{mode}-{bin}");
            let body = serde_json::json!({
                "agentId": agent, "type": cli_type, "commMode": mode,
                "binary": world.dir.join("bin").join(bin), "cwd": world.dir.join("work"),
                "env": {"HOME": world.dir.join("home")},
            });
            let mut c = Client::connect(&broker.addr)?;
            let (status, text) = c.post("/agents/register", &body.to_string())?;
            if status != 200 {
                bail!("register {agent}: {status} {text}");
            }
            let path = format!("/agents/{agent}/execute");
            c.post(&path, r#"{"prompt":"warm up"}"#)?;
            let mut total = Vec::new();
            let mut after_end = Vec::new();
            for _ in 0..runs {
                let t = Instant::now();
                let (status, text) = c.post(&path, r#"{"prompt":"hello"}"#)?;
                let done_ns = now_ns();
                total.push(t.elapsed());
                if status != 200 {
                    bail!("{agent}: {status} {text}");
                }
                if mode == "tmux" {
                    if let Some(end) = last_witness_end(&world.dir.join("witness.log")) {
                        after_end.push(Duration::from_nanos(done_ns.saturating_sub(end) as u64));
                    }
                }
            }
            total.sort();
            after_end.sort();
            println!(
                "  {cli_type:<12} {mode:<8} end to end median {:7.1} ms  p95 {:7.1} ms",
                ms(percentile(&total, 0.5)),
                ms(percentile(&total, 0.95))
            );
            if !after_end.is_empty() {
                println!(
                    "  {cli_type:<12} tmux     completion noticed after the CLI finished: median {:6.1} ms  p95 {:6.1} ms   (goal ≤ 100 ms)",
                    ms(percentile(&after_end, 0.5)),
                    ms(percentile(&after_end, 0.95))
                );
            }
            modes.push(percentile(&total, 0.5));
        }
        println!(
            "  {cli_type:<12} tmux − headless median {:+7.1} ms   (goal ≤ +150 ms)",
            ms(modes[1]) - ms(modes[0])
        );
    }
    Ok(())
}

/// (issue 14) The real TUIs in tmux mode, when installed: runs the real-TUI end-to-end test and
/// prints its per-CLI tables (completion latency from the answer appearing on the pane to the
/// broker's answer, and tmux − headless end-to-end time of a warm prompt).
fn real_tuis(root: &Path) -> Result<()> {
    println!("\n== (d2) the real TUIs in tmux mode");
    let dir = std::env::var_os("KOKINO_REAL_CLI_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join(".real-clis"));
    if !dir.join("node_modules/.bin/claude").exists() {
        println!(
            "  skipped: the real CLIs are not installed in {} \
             (scripts/install-real-clis.sh && export KOKINO_REAL_CLI_DIR=$PWD/.real-clis)",
            dir.display()
        );
        return Ok(());
    }
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(root)
        .env("KOKINO_REAL_CLI_DIR", &dir)
        .args([
            "test",
            "-p",
            "kokino-broker",
            "--test",
            "e2e",
            "real_tui",
            "--",
            "--test-threads",
            "1",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let mut in_table = false;
    for line in text.lines() {
        if line.starts_with("real CLI ") {
            in_table = true;
        } else if !line.starts_with("  ") {
            in_table = false;
        }
        if in_table {
            println!("  {line}");
        }
    }
    if !out.status.success() {
        println!("  (some real-TUI scenarios failed; see the tables)");
    }
    Ok(())
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The time of the last `end` line of the fake agent's witness log.
fn last_witness_end(path: &Path) -> Option<u128> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find(|l| l.starts_with("end "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|t| t.parse().ok())
}

/// (issue 4 c) Comparison of two 1 MB answers differing in 1 % of lines, beside a plain O(n·m)
/// edit distance on 20 KB: the shadow crate's own benchmark, run in release.
fn comparison(root: &Path) -> Result<()> {
    println!("\n== (e) shadow comparison");
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(root)
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "kokino-shadow",
            "--example",
            "shadow_bench",
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "shadow_bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("  {line}");
    }
    println!("  (goal: shadow_compare_1mb_median_ms ≤ 50)");
    Ok(())
}

/// (issue 8) Throughput of the same load on one broker on SQLite, one broker on PostgreSQL and
/// two brokers sharing one PostgreSQL (requests alternate between them).
fn postgres_throughput(world: &World, admin_url: &str, args: &Args) -> Result<()> {
    println!(
        "\n== (f) throughput by store: {} executions over {} agents, {} clients",
        args.throughput_runs, args.agents, args.clients
    );
    let setups: [(&str, usize, bool); 3] = [
        ("1 broker, SQLite", 1, false),
        ("1 broker, PostgreSQL", 1, true),
        ("2 brokers, one PostgreSQL", 2, true),
    ];
    for (n, (label, brokers, pg)) in setups.into_iter().enumerate() {
        let db = if pg {
            Some(BenchDb::create(admin_url)?)
        } else {
            None
        };
        let mut started = Vec::new();
        for i in 0..brokers {
            let mut extra = vec![
                "--data-dir".to_owned(),
                world
                    .dir
                    .join(format!("data-f{n}-{i}"))
                    .display()
                    .to_string(),
                "--instance-id".to_owned(),
                format!("bench-{n}-{i}"),
            ];
            if let Some(db) = &db {
                extra.extend(["--database-url".to_owned(), db.url.clone()]);
            }
            started.push(world.start_broker_with(&extra)?);
        }
        for i in 0..args.agents {
            world.register(&started[0], &format!("pg-{i}"))?;
        }
        let addrs: Vec<String> = started.iter().map(|b| b.addr.clone()).collect();
        let rate = load::through_broker(
            &addrs,
            "pg",
            args.throughput_runs,
            args.agents,
            args.clients,
        )?;
        println!("  {label:<28} {rate:8.1} executions/s");
        drop(started);
    }
    println!("  (where the time goes: each execution is two durable transactions plus a lease");
    println!("   acquire/renew/release on PostgreSQL; two brokers share the same two cores here)");
    Ok(())
}

/// Brokers with homes (issue 15) on one PostgreSQL database, each announcing its own address.
fn home_brokers(world: &World, db: &BenchDb, tag: &str, n: usize) -> Result<Vec<Broker>> {
    (0..n)
        .map(|i| {
            world.start_broker_with(&[
                "--data-dir".to_owned(),
                world
                    .dir
                    .join(format!("data-{tag}-{i}"))
                    .display()
                    .to_string(),
                "--instance-id".to_owned(),
                format!("{tag}-{i}"),
                "--database-url".to_owned(),
                db.url.clone(),
                "--advertise-url".to_owned(),
                OWN_URL.to_owned(),
                // The fake agent under the CLI names, which agents name as their binary.
                "--allow-binary".to_owned(),
                world
                    .claude()
                    .parent()
                    .unwrap_or(&world.dir)
                    .display()
                    .to_string(),
            ])
        })
        .collect()
}

/// (issue 15) (g) A forwarded execute (sent to a broker that is not the agent's home) beside a
/// direct one, interleaved; (h) throughput of three brokers with homes beside one, the agents'
/// homes spread over the brokers and every client talking to one broker (so two thirds of the
/// requests are forwarded).
fn homes(world: &World, admin_url: &str, args: &Args) -> Result<()> {
    let runs = args.overhead_runs;
    println!("\n== (g) forwarded vs direct execute ({runs} runs each, two brokers with homes)");
    let db = BenchDb::create(admin_url)?;
    let brokers = home_brokers(world, &db, "g", 2)?;
    world.register(&brokers[0], "fwd")?;
    let mut direct = Client::connect(&brokers[0].addr)?;
    let mut forwarded = Client::connect(&brokers[1].addr)?;
    let body = r#"{"prompt":"hello"}"#;
    for _ in 0..20 {
        direct.post("/agents/fwd/execute", body)?;
        forwarded.post("/agents/fwd/execute", body)?;
    }
    let (mut d, mut f) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        for (client, times) in [(&mut direct, &mut d), (&mut forwarded, &mut f)] {
            let t = Instant::now();
            let (status, text) = client.post("/agents/fwd/execute", body)?;
            times.push(t.elapsed());
            if status != 200 {
                bail!("execute failed: {status} {text}");
            }
        }
    }
    print_added(
        ["direct (at the home)", "forwarded", "added by forwarding"],
        d,
        f,
        "≤ 2 ms median",
    );
    drop(brokers);
    drop(db);

    println!(
        "\n== (h) throughput with homes: {} executions over {} agents, {} clients",
        args.throughput_runs, args.agents, args.clients
    );
    for n in [1usize, 3] {
        let db = BenchDb::create(admin_url)?;
        let brokers = home_brokers(world, &db, &format!("h{n}"), n)?;
        for i in 0..args.agents {
            world.register(&brokers[i % n], &format!("home-{i}"))?;
        }
        let addrs: Vec<String> = brokers.iter().map(|b| b.addr.clone()).collect();
        let rate = load::through_broker(
            &addrs,
            "home",
            args.throughput_runs,
            args.agents,
            args.clients,
        )?;
        println!("  {n} broker(s) with homes      {rate:8.1} executions/s");
        drop(brokers);
        drop(db);
    }
    println!("  (all brokers share this machine's cores here, so three brokers cannot add CLI");
    println!("   capacity; on separate machines each brings its own)");
    Ok(())
}
