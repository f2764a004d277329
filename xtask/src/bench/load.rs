//! The load figures of the performance issue: a burst fired at once with `/health` sampled
//! during it, memory with many agents registered and many executions in flight, and the CPU
//! time the broker spends per execution beside the CPU time of the process it runs.
//!
//! Each figure has its baseline measured in the same run: the burst beside the same CLI runs
//! spawned directly, `/health` under load beside `/health` idle, memory in flight beside memory
//! idle, the broker's CPU beside the CLI's own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{ms, percentile};
use crate::harness::{Broker, Client, Cpu, World};

/// The burst: agents × messages, the CLI answering after this many seconds.
const BURST_AGENTS: usize = 10;
const BURST_MESSAGES: usize = 10;
const BURST_CLI_SECS: f64 = 0.13;
/// `/health` is sampled this often during the burst.
const HEALTH_EVERY: Duration = Duration::from_millis(20);

/// (i) 10 agents × 10 messages fired at once at a CLI that answers in 0.13 s, with `/health`
/// sampled every 20 ms meanwhile. One agent runs one execution at a time, so the floor is ten
/// answers in a row: 1.3 s. The baseline is the same 100 runs spawned directly, ten in a row
/// on each of ten threads, and `/health` sampled while the broker is idle.
pub(super) fn burst(world: &World, broker: &Broker, tag: &str) -> Result<()> {
    println!(
        "\n== (i) burst{tag}: {BURST_AGENTS} agents × {BURST_MESSAGES} messages fired at once, \
         the CLI answering in {BURST_CLI_SECS} s; /health every {} ms",
        HEALTH_EVERY.as_millis()
    );
    let prompt = format!("fake:sleep={BURST_CLI_SECS} hello");
    for i in 0..BURST_AGENTS {
        world.register(broker, &format!("burst-{i}"))?;
        // One warm execution per agent: its session exists before the burst, as in a team
        // that has been working for a while.
        let (status, text) = Client::connect(&broker.addr)?.post(
            &format!("/agents/burst-{i}/execute"),
            r#"{"prompt":"warm up"}"#,
        )?;
        if status != 200 {
            bail!("warm-up failed: {status} {text}");
        }
    }

    let idle = sample_health(&broker.addr, || false, 50)?;

    // The baseline: the same runs spawned directly, each agent's ten in a row.
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..BURST_AGENTS)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    for _ in 0..BURST_MESSAGES {
                        world.direct_spawn_with(&prompt)?;
                    }
                    Ok(())
                })
            })
            .collect();
        join_all(handles)
    })?;
    let direct = started.elapsed();

    // The burst: every request on its own connection, released together.
    let n = BURST_AGENTS * BURST_MESSAGES;
    let gate = Arc::new(Barrier::new(n + 1));
    let body = serde_json::json!({ "prompt": prompt }).to_string();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let mut client = Client::connect(&broker.addr)?;
        let (gate, body) = (gate.clone(), body.clone());
        let path = format!("/agents/burst-{}/execute", i % BURST_AGENTS);
        handles.push(std::thread::spawn(move || -> Result<Instant> {
            gate.wait();
            let (status, text) = client.post(&path, &body)?;
            if status != 200 {
                bail!("burst execute failed: {status} {text}");
            }
            Ok(Instant::now())
        }));
    }
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, addr) = (done.clone(), broker.addr.clone());
        std::thread::spawn(move || {
            sample_health(&addr, || done.load(Ordering::Relaxed), usize::MAX)
        })
    };
    gate.wait();
    let started = Instant::now();
    let mut last = started;
    for h in handles {
        let finished = h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        last = last.max(finished);
    }
    let burst = last - started;
    done.store(true, Ordering::Relaxed);
    let during = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))??;

    let floor = BURST_CLI_SECS * BURST_MESSAGES as f64;
    println!("  floor (one agent's answers in a row)   {floor:7.2} s");
    println!(
        "  direct spawn, same runs               {:7.2} s",
        direct.as_secs_f64()
    );
    println!(
        "  through the broker                    {:7.2} s   (goal: ≤ 1.45 s)",
        burst.as_secs_f64()
    );
    println!(
        "  /health idle          median {:6.2} ms   p99 {:6.2} ms   ({} samples)",
        ms(percentile(&idle, 0.5)),
        ms(percentile(&idle, 0.99)),
        idle.len()
    );
    println!(
        "  /health during burst  median {:6.2} ms   p99 {:6.2} ms   ({} samples; goal: p99 ≤ 10 ms)",
        ms(percentile(&during, 0.5)),
        ms(percentile(&during, 0.99)),
        during.len()
    );
    Ok(())
}

/// `GET /health` every [`HEALTH_EVERY`] until `stop` says so or `max` samples; the latencies,
/// sorted. The first sample is taken at once.
fn sample_health(addr: &str, stop: impl Fn() -> bool, max: usize) -> Result<Vec<Duration>> {
    let mut client = Client::connect(addr)?;
    let mut times = Vec::new();
    let mut next = Instant::now();
    while !stop() && times.len() < max {
        let t = Instant::now();
        let (status, text) = client.get("/health")?;
        times.push(t.elapsed());
        if status != 200 {
            bail!("/health answered {status}: {text}");
        }
        next += HEALTH_EVERY;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    times.sort();
    Ok(times)
}

/// (c) The broker's memory with 1,000 agents registered and 100 executions in flight, beside
/// its memory idle (before any agent of this figure is registered).
pub(super) fn memory(world: &World, broker: &Broker, tag: &str) -> Result<()> {
    const AGENTS: usize = 1000;
    const IN_FLIGHT: usize = 100;
    println!(
        "\n== (c) broker memory{tag}: {AGENTS} agents registered, {IN_FLIGHT} executions in flight"
    );
    let idle = broker.rss_mb();
    for i in 0..AGENTS {
        world.register(broker, &format!("mem-{i}"))?;
    }
    let registered = broker.rss_mb();
    let body = r#"{"prompt":"fake:sleep=4 hello"}"#;
    let handles: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let addr = broker.addr.clone();
            std::thread::spawn(move || -> Result<()> {
                let (status, text) =
                    Client::connect(&addr)?.post(&format!("/agents/mem-{i}/execute"), body)?;
                if status != 200 {
                    bail!("execute failed: {status} {text}");
                }
                Ok(())
            })
        })
        .collect();
    // Sampled once every execution is running, as `/health` counts them.
    let mut client = Client::connect(&broker.addr)?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut executing = 0;
    while Instant::now() < deadline {
        let (_, text) = client.get("/health")?;
        executing = serde_json::from_str::<serde_json::Value>(&text)?["executing"]
            .as_u64()
            .unwrap_or(0) as usize;
        if executing >= IN_FLIGHT {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (in_flight, supervisors) = (broker.rss_mb(), broker.children_rss_mb());
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    }
    println!("  RSS idle                           {idle:7.1} MB");
    println!("  RSS with {AGENTS} agents registered     {registered:7.1} MB");
    println!("  RSS with {executing} executions in flight   {in_flight:7.1} MB   (goal: ≤ 64 MB)");
    println!(
        "  (beside it, its spawner and the {executing} CLIs' supervisors, if any, hold {supervisors:.1} MB together; the broker's peak so far {:.1} MB)",
        broker.peak_rss_mb()
    );
    Ok(())
}

/// Runs `executions` spread over `agents` by `clients` keep-alive clients; returns executions
/// per second.
pub(super) fn through_broker(
    addrs: &[String],
    prefix: &str,
    executions: usize,
    agents: usize,
    clients: usize,
) -> Result<f64> {
    let next = Arc::new(Mutex::new(0usize));
    let t = Instant::now();
    let mut handles = Vec::new();
    for c in 0..clients {
        let next = next.clone();
        let addr = addrs[c % addrs.len()].clone();
        let prefix = prefix.to_owned();
        handles.push(std::thread::spawn(move || -> Result<()> {
            let mut client = Client::connect(&addr)?;
            loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    if *n >= executions {
                        return Ok(());
                    }
                    *n += 1;
                    *n - 1
                };
                let (status, text) = client.post(
                    &format!("/agents/{prefix}-{}/execute", i % agents),
                    r#"{"prompt":"hello"}"#,
                )?;
                if status != 200 {
                    bail!("execute failed: {status} {text}");
                }
            }
        }));
    }
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    }
    Ok(executions as f64 / t.elapsed().as_secs_f64())
}

/// Spawns the fake agent `executions` times directly with `clients` threads; returns executions
/// per second.
pub(super) fn direct(world: &World, executions: usize, clients: usize) -> Result<f64> {
    let next = Mutex::new(0usize);
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        {
                            let mut n = next.lock().unwrap();
                            if *n >= executions {
                                return Ok(());
                            }
                            *n += 1;
                        }
                        world.direct_spawn()?;
                    }
                })
            })
            .collect();
        join_all(handles)
    })?;
    Ok(executions as f64 / started.elapsed().as_secs_f64())
}

/// Prints the CPU time per execution: the broker's own, its spawner's (the process that starts
/// the CLIs), its supervisors' (what the broker's reaped children used beyond the CLIs
/// themselves, when CLIs run under a supervisor each), beside the CLI's own CPU time measured on
/// the direct spawns and through the broker (the spawner's reaped children).
pub(super) fn cpu_per_execution(
    broker: Cpu,
    spawner: Cpu,
    executions: usize,
    direct: Cpu,
    direct_runs: usize,
) {
    let per = |s: f64, n: usize| s * 1000.0 / n.max(1) as f64;
    let cli = per(direct.children, direct_runs);
    let own = per(broker.own, executions);
    let spawner_own = per(spawner.own, executions);
    let cli_spawned = per(spawner.children, executions);
    println!("\n== (b2) CPU time per execution (user + system, from /proc)");
    println!("  the CLI itself (fake agent, direct spawns)   {cli:6.2} ms");
    println!("  the CLI itself, started by the spawner       {cli_spawned:6.2} ms");
    println!(
        "  the broker process                           {own:6.2} ms   (goal: less than the CLI)"
    );
    println!("  its spawner process                          {spawner_own:6.2} ms");
    if broker.children > 0.0 {
        // CLIs that did not go through the spawner ran under a supervisor each.
        let supervisor = per(broker.children, executions) - cli;
        println!("  supervisors (beyond their CLIs)              {supervisor:6.2} ms");
    }
}

/// Waits for every thread of a scope and returns the first error any of them gave.
fn join_all(handles: Vec<std::thread::ScopedJoinHandle<'_, Result<()>>>) -> Result<()> {
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
    }
    Ok(())
}
