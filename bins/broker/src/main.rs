//! `kokino-broker`: composes the store, the service and the HTTP API into the service operators
//! run. Everything interesting lives in the library crates; this file only wires them.

#![forbid(unsafe_code)]

mod config;
#[cfg(test)]
mod config_reference;
mod private_files;

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use kokino_service::telemetry;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tracing_subscriber::EnvFilter;

fn main() {
    // The same binary is the supervisor that watches each CLI and kills its group when this
    // broker dies or stalls (see kokino_exec::supervisor); that role must start before anything
    // else.
    let argv: Vec<String> = std::env::args().collect();
    if let Some(flag) = argv.get(1).map(String::as_str).filter(|f| {
        *f == kokino_exec::supervisor::SUPERVISE_FLAG || *f == kokino_exec::supervisor::GUARD_FLAG
    }) {
        kokino_exec::supervisor::run_supervisor(flag, &argv[2..]);
    }
    // And the spawner that starts every headless CLI (kokino_exec::spawner).
    if argv.get(1).map(String::as_str) == Some(kokino_exec::spawner::SPAWNER_FLAG) {
        kokino_exec::spawner::run_spawner(&argv[2..]);
    }
    // The settings come first: they say how many threads the runtime gets.
    let settings = match config::load(config::Args::parse()) {
        Ok(settings) => settings,
        Err(e) => fail(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.worker_threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kokino-broker: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(settings)) {
        fail(&e);
    }
}

fn fail(e: &anyhow::Error) -> ! {
    eprintln!("kokino-broker: {e:#}");
    std::process::exit(1);
}

async fn run(settings: config::Settings) -> Result<()> {
    init_logging(settings.json_logs);

    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(telemetry::EXECUTION_DURATION.into()),
            telemetry::EXECUTION_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(telemetry::LOCK_WAIT.into()),
            telemetry::LOCK_WAIT_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(telemetry::HTTP_REQUEST_DURATION.into()),
            &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0],
        )?
        .set_buckets_for_metric(
            Matcher::Full(telemetry::PROCESS_PEAK_RSS.into()),
            &[16e6, 64e6, 128e6, 256e6, 512e6, 1024e6, 2048e6, 4096e6],
        )?
        .set_buckets_for_metric(
            Matcher::Full(telemetry::SHADOW_SIMILARITY.into()),
            &[0.5, 0.8, 0.9, 0.95, 0.99, 1.0],
        )?
        .set_buckets_for_metric(
            Matcher::Full(telemetry::SHADOW_LATENCY_DELTA.into()),
            &[
                -30.0, -10.0, -5.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
            ],
        )?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    telemetry::describe_metrics();
    telemetry::zero_counters();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });

    private_files::private_dir(&settings.service.data_dir)?;
    private_files::private_database(&settings.database_url)?;
    let store = kokino_store::Store::open(&settings.database_url)
        .await
        .with_context(|| format!("cannot open the store at {}", settings.database_url))?;
    let mut service_cfg = settings.service.clone();
    let supervisor = supervisor_program()?;
    tracing::debug!(program = %supervisor.display(), "supervisor under each CLI");
    service_cfg.supervisor_program = Some(supervisor.clone());
    if store.kind() == "postgres" {
        // A shared database may have other brokers: leases, fencing and lease guards.
        service_cfg.cluster = Some(kokino_service::cluster::ClusterConfig {
            instance_id: settings.instance_id.clone(),
            lease_ttl: settings.lease_ttl,
            guard_program: supervisor,
            advertise_url: settings.advertise_url.clone(),
        });
        tracing::info!(instance = %settings.instance_id, "cluster mode: agents are leased through the database");
    }
    let broker = kokino_service::Broker::start(store, service_cfg).await?;
    broker.spawn_maintenance();
    for spec in settings.agents {
        let id = spec.agent_id.clone();
        broker
            .register_agent(spec)
            .await
            .with_context(|| format!("cannot register agent {id} from the config file"))?;
    }

    let listener = tokio::net::TcpListener::bind(settings.bind)
        .await
        .with_context(|| format!("cannot listen on {}", settings.bind))?;
    // Forwarding peers address this broker by its advertised host.
    let mut allowed_hosts = settings.allowed_hosts.clone();
    allowed_hosts.extend(
        settings
            .advertise_url
            .as_deref()
            .and_then(config::advertised_host),
    );
    let state = kokino_http::AppState {
        broker: broker.clone(),
        metrics: Arc::new(move || handle.render()),
        token: settings.token.map(Arc::from),
        public_metrics: settings.public_metrics,
        access: Arc::new(kokino_http::AccessPolicy::new(
            listener.local_addr()?,
            &allowed_hosts,
            &settings.allowed_origins,
        )),
        body_limit: settings.body_limit,
    };
    let app = kokino_http::router(state);
    tracing::info!(
        addr = %listener.local_addr()?,
        store = broker.store().kind(),
        data_dir = %settings.service.data_dir.display(),
        "kokino-broker listening"
    );

    // On SIGTERM/SIGINT: stop accepting, cancel running CLIs (they are recorded as cancelled and
    // their callers get 409), and wait for them, so no CLI is orphaned.
    let stopping = broker.clone();
    let shutdown = async move {
        wait_for_signal().await;
        tracing::info!("shutting down: stopping running executions");
        stopping.shutdown().await;
    };
    kokino_http::serve(listener, app, settings.serve, shutdown).await;
    broker.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_env("KOKINO_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: a log file, a pipe or journald would otherwise
    // store the escape sequences as text. NO_COLOR (https://no-color.org) turns it off anywhere.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The program that supervises each CLI: `kokino-supervisor` next to this binary when it is
/// there and was built with it (not older than this binary, so that a stale copy left by an
/// earlier build is never used), otherwise this binary itself, which plays the same role.
fn supervisor_program() -> Result<std::path::PathBuf> {
    let me = std::env::current_exe().context("cannot find the broker's own binary")?;
    let sibling = me.with_file_name("kokino-supervisor");
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let usable = match (modified(&sibling), modified(&me)) {
        (Some(s), Some(m)) => s >= m.checked_sub(Duration::from_secs(60)).unwrap_or(m),
        _ => false,
    };
    Ok(if usable { sibling } else { me })
}
