//! The broker's settings: defaults, then the TOML config file, then `KOKINO_*` variables and
//! flags (clap reads both), later sources winning.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use kokino_core::{AgentSpec, CliType};
use kokino_service::ServiceConfig;
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(
    name = "kokino-broker",
    version,
    about = "Runs teams of AI coding-agent CLIs behind an HTTP API."
)]
pub struct Args {
    /// TOML config file (see docs/reference/config.md).
    #[arg(long, env = "KOKINO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on. A non-loopback address needs a token.
    #[arg(long, env = "KOKINO_BIND")]
    pub bind: Option<SocketAddr>,
    /// Directory for the database and agent logs (created on first start).
    #[arg(long, env = "KOKINO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL; default sqlite://<data-dir>/kokino.db.
    #[arg(long, env = "KOKINO_DATABASE_URL")]
    pub database_url: Option<String>,
    /// File holding the bearer token required on non-GET endpoints.
    #[arg(long, env = "KOKINO_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// This broker's stable id among brokers sharing one database (default: host name and data
    /// directory).
    #[arg(long, env = "KOKINO_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Where the other brokers reach this one, e.g. `http://10.0.0.11:5050` (several brokers on
    /// one PostgreSQL database). With it every agent has a home broker and requests are
    /// forwarded there; without it every broker serves every agent.
    #[arg(long, env = "KOKINO_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Broker log format.
    #[arg(long, env = "KOKINO_LOG_FORMAT", value_parser = ["human", "json"])]
    pub log_format: Option<String>,
    /// A binary, or a directory of binaries, an agent's `binary` may name (repeatable; the
    /// variable takes a comma-separated list). Replaces the config file's `allowed_binaries`.
    #[arg(
        long = "allow-binary",
        env = "KOKINO_ALLOW_BINARY",
        value_delimiter = ','
    )]
    pub allow_binary: Vec<String>,
    /// An extra `Host` name the broker answers to, `name` or `name:port` (repeatable). Replaces
    /// the config file's `http.allowed_hosts`.
    #[arg(
        long = "allowed-host",
        env = "KOKINO_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_host: Vec<String>,
    /// An extra browser `Origin` allowed to call the API, e.g. `https://dash.example.com`
    /// (repeatable). Replaces the config file's `http.allowed_origins`.
    #[arg(
        long = "allowed-origin",
        env = "KOKINO_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origin: Vec<String>,
    /// Serve `/metrics` without the token (for a Prometheus that has none).
    #[arg(long, env = "KOKINO_PUBLIC_METRICS")]
    pub public_metrics: bool,
    /// Time allowed for a request head to arrive once it has started, in milliseconds.
    #[arg(long, env = "KOKINO_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// Time a connection may stay open with no request and no traffic, in milliseconds.
    #[arg(long, env = "KOKINO_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Connections open at once; further ones wait to be accepted.
    #[arg(long, env = "KOKINO_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Threads of the async runtime that serves HTTP and drives executions (default: 1 with
    /// SQLite, 2 with PostgreSQL).
    #[arg(long, env = "KOKINO_WORKER_THREADS")]
    pub worker_threads: Option<u64>,
}

/// The config file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct FileConfig {
    pub bind: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub log_format: Option<String>,
    pub body_limit_bytes: Option<usize>,
    pub max_prompt_bytes: Option<usize>,
    /// Threads of the async runtime (see [`Settings::worker_threads`]).
    pub worker_threads: Option<u64>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub maintenance: Maintenance,
    #[serde(default)]
    pub doctor: Doctor,
    #[serde(default)]
    pub cluster: Cluster,
    /// Binary per CLI type, e.g. `claude-code = "/opt/claude/bin/claude"`.
    #[serde(default)]
    pub binaries: BTreeMap<String, String>,
    /// Variables removed from a CLI's environment unless the agent sets them.
    #[serde(default)]
    pub conflicting_env: BTreeMap<String, Vec<String>>,
    /// Binaries or directories an agent's `binary` may name (absolute paths).
    #[serde(default)]
    pub allowed_binaries: Vec<String>,
    #[serde(default)]
    pub http: Http,
    /// Agents registered (upserted) at start, written like the register body.
    #[serde(default)]
    pub agents: Vec<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Limits {
    pub execution_timeout_ms: Option<u64>,
    pub lock_wait_ms: Option<u64>,
    pub inactivity_timeout_ms: Option<u64>,
    pub post_result_grace_ms: Option<u64>,
    pub kill_grace_ms: Option<u64>,
    pub max_memory_mb: Option<u64>,
    pub memory_sample_ms: Option<u64>,
    pub max_line_bytes: Option<usize>,
    pub event_prompt_preview: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Maintenance {
    pub stale_session_after_ms: Option<u64>,
    pub stale_sweep_every_ms: Option<u64>,
    pub log_max_bytes: Option<u64>,
    pub log_retention_days: Option<u64>,
    pub log_prune_every_ms: Option<u64>,
    pub event_retention_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Doctor {
    /// `false` turns the periodic doctor (and the automatic CLI disable/enable) off.
    pub enabled: Option<bool>,
    pub every_ms: Option<u64>,
    pub check_timeout_ms: Option<u64>,
    pub disk_warn_pct: Option<f64>,
    pub disk_fail_pct: Option<f64>,
}

/// The HTTP server: who may call it and how long connections may linger.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Http {
    /// Extra `Host` names (`name` or `name:port`) besides the bind address and loopback names.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Extra browser origins (`https://dash.example.com`) besides the broker's own.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Serve `/metrics` without the token.
    pub public_metrics: Option<bool>,
    pub header_read_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Cluster {
    pub instance_id: Option<String>,
    /// Where the other brokers reach this one (agents get home brokers).
    pub advertise_url: Option<String>,
    /// How long an agent's lease lives without renewal (renewed every quarter of it).
    pub lease_ttl_ms: Option<u64>,
}

/// Everything the broker needs to start, resolved.
#[derive(Debug)]
pub struct Settings {
    pub bind: SocketAddr,
    pub database_url: String,
    pub token: Option<String>,
    pub json_logs: bool,
    pub body_limit: usize,
    pub service: ServiceConfig,
    pub agents: Vec<AgentSpec>,
    pub instance_id: String,
    pub advertise_url: Option<String>,
    pub lease_ttl: Duration,
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub public_metrics: bool,
    pub serve: kokino_http::ServeConfig,
    /// Threads of the async runtime. By default one with SQLite and two with PostgreSQL. The
    /// broker mostly waits (on CLIs, the disk, sockets), and every thread more adds wake-ups
    /// between threads that cost CPU the CLIs need: on two cores, two threads spent a quarter
    /// more broker CPU per execution than one with SQLite, whose driver runs each connection on
    /// a thread of its own anyway. PostgreSQL's driver does its work on the runtime's threads,
    /// and there a second thread answered half a millisecond sooner per execution.
    pub worker_threads: usize,
}

pub fn load(args: Args) -> Result<Settings> {
    let file = match &args.config {
        Some(path) => read_file(path)?,
        None => FileConfig::default(),
    };
    let bind = args
        .bind
        .or(file.bind)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5050)));
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("./data"));
    let database_url = args
        .database_url
        .or(file.database_url)
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("kokino.db").display()));
    let token = match args.token_file.or(file.token_file) {
        Some(path) => {
            let raw = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?;
            let token = raw.trim().to_owned();
            if token.is_empty() {
                bail!("the token file {} is empty", path.display());
            }
            Some(token)
        }
        None => None,
    };
    if !bind.ip().is_loopback() && token.is_none() {
        bail!(
            "refusing to listen on {bind} without a token: a non-loopback address exposes agent \
             execution to the network. Set --token-file (or KOKINO_TOKEN_FILE), or bind to 127.0.0.1"
        );
    }
    let log_format = args.log_format.or(file.log_format);
    let json_logs = match log_format.as_deref() {
        None | Some("human") => false,
        Some("json") => true,
        Some(other) => bail!("log_format must be \"human\" or \"json\", not {other:?}"),
    };

    let mut service = ServiceConfig::with_data_dir(&data_dir);
    let l = &file.limits;
    let ms = Duration::from_millis;
    if let Some(v) = l.execution_timeout_ms {
        service.execution_timeout = ms(positive("limits.execution_timeout_ms", v)?);
    }
    if let Some(v) = l.lock_wait_ms {
        service.lock_wait = ms(v);
    }
    if let Some(v) = l.inactivity_timeout_ms {
        service.inactivity_timeout = ms(positive("limits.inactivity_timeout_ms", v)?);
    }
    if let Some(v) = l.post_result_grace_ms {
        service.post_result_grace = ms(v);
    }
    if let Some(v) = l.kill_grace_ms {
        service.kill_grace = ms(v);
    }
    if let Some(v) = l.max_memory_mb {
        service.max_memory_mb = positive("limits.max_memory_mb", v)?;
    }
    if let Some(v) = l.memory_sample_ms {
        service.memory_sample_every = ms(positive("limits.memory_sample_ms", v)?);
    }
    if let Some(v) = l.max_line_bytes {
        service.max_line_bytes = v.max(64 * 1024);
    }
    if let Some(v) = l.event_prompt_preview {
        service.event_prompt_preview = v;
    }
    let m = &file.maintenance;
    if let Some(v) = m.stale_session_after_ms {
        service.stale_session_after = ms(positive("maintenance.stale_session_after_ms", v)?);
    }
    if let Some(v) = m.stale_sweep_every_ms {
        service.stale_sweep_every = ms(positive("maintenance.stale_sweep_every_ms", v)?);
    }
    if let Some(v) = m.log_max_bytes {
        service.log_max_bytes = positive("maintenance.log_max_bytes", v)?;
    }
    if let Some(v) = m.log_retention_days {
        service.log_retention =
            Duration::from_secs(86_400 * positive("maintenance.log_retention_days", v)?);
    }
    if let Some(v) = m.log_prune_every_ms {
        service.log_prune_every = ms(positive("maintenance.log_prune_every_ms", v)?);
    }
    if let Some(v) = m.event_retention_days {
        service.event_retention_days =
            positive("maintenance.event_retention_days", u64::from(v))? as u32;
    }
    let d = &file.doctor;
    if let Some(v) = d.every_ms {
        service.doctor_every = Some(ms(positive("doctor.every_ms", v)?));
    }
    if d.enabled == Some(false) {
        service.doctor_every = None;
    }
    if let Some(v) = d.check_timeout_ms {
        service.doctor_check_timeout = ms(positive("doctor.check_timeout_ms", v)?);
    }
    for (name, v, slot) in [
        (
            "doctor.disk_warn_pct",
            d.disk_warn_pct,
            &mut service.disk_warn_pct,
        ),
        (
            "doctor.disk_fail_pct",
            d.disk_fail_pct,
            &mut service.disk_fail_pct,
        ),
    ] {
        if let Some(v) = v {
            if !(0.0..=100.0).contains(&v) {
                bail!("{name} must be between 0 and 100, not {v}");
            }
            *slot = v;
        }
    }
    let body_limit = file.body_limit_bytes.unwrap_or(1024 * 1024);
    service.max_prompt_bytes = file.max_prompt_bytes.unwrap_or(body_limit);
    for (cli, binary) in file.binaries {
        service.binaries.insert(cli_type(&cli, "binaries")?, binary);
    }
    for (cli, vars) in file.conflicting_env {
        service
            .conflicting_vars
            .insert(cli_type(&cli, "conflicting_env")?, vars);
    }
    let allowed = if args.allow_binary.is_empty() {
        file.allowed_binaries
    } else {
        args.allow_binary
    };
    service.allowed_binaries = kokino_core::exec_policy::BinaryAllowlist::new(&allowed)
        .map_err(|e| anyhow::anyhow!("allowed_binaries: {e}"))?;
    let h = file.http;
    let mut serve = kokino_http::ServeConfig::default();
    if let Some(v) = args.header_read_timeout_ms.or(h.header_read_timeout_ms) {
        serve.header_read_timeout = ms(positive("http.header_read_timeout_ms", v)?);
    }
    if let Some(v) = args.idle_timeout_ms.or(h.idle_timeout_ms) {
        serve.idle_timeout = ms(positive("http.idle_timeout_ms", v)?);
    }
    if let Some(v) = args.max_connections.or(h.max_connections) {
        serve.max_connections = positive("http.max_connections", v as u64)? as usize;
    }
    let allowed_hosts = if args.allowed_host.is_empty() {
        h.allowed_hosts
    } else {
        args.allowed_host
    };
    let allowed_origins = if args.allowed_origin.is_empty() {
        h.allowed_origins
    } else {
        args.allowed_origin
    };
    let public_metrics = args.public_metrics || h.public_metrics.unwrap_or(false);
    let mut agents = Vec::new();
    for (i, agent) in file.agents.into_iter().enumerate() {
        let json = serde_json::to_value(agent)?;
        let spec = kokino_http::agent_spec_from_json(json)
            .map_err(|e| anyhow::anyhow!("agents[{i}] in the config file: {e}"))?;
        agents.push(spec);
    }
    let instance_id = match args.instance_id.or(file.cluster.instance_id.clone()) {
        Some(id) if !id.trim().is_empty() => id,
        Some(_) => bail!("instance_id must not be empty"),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".into());
            let dir = std::path::absolute(&data_dir).unwrap_or_else(|_| data_dir.clone());
            format!("{host}:{}", dir.display())
        }
    };
    let advertise_url = match args.advertise_url.or(file.cluster.advertise_url.clone()) {
        Some(url) => Some(advertise(&url)?),
        None => None,
    };
    let lease_ttl = Duration::from_millis(match file.cluster.lease_ttl_ms {
        Some(v) if v >= 400 => v,
        Some(v) => bail!("cluster.lease_ttl_ms must be at least 400, not {v}"),
        None => 15_000,
    });
    let worker_threads = match args.worker_threads.or(file.worker_threads) {
        None if is_postgres(&database_url) => 2,
        None => 1,
        Some(n) if n > MAX_WORKER_THREADS => {
            bail!("worker_threads is {n}; at most {MAX_WORKER_THREADS} threads are allowed")
        }
        Some(n) => positive("worker_threads", n)? as usize,
    };
    Ok(Settings {
        worker_threads,
        allowed_hosts,
        allowed_origins,
        public_metrics,
        serve,
        instance_id,
        advertise_url,
        lease_ttl,
        bind,
        database_url,
        token,
        json_logs,
        body_limit,
        service,
        agents,
    })
}

/// An advertised address: `http://host:port` with nothing after it, so that a request path can
/// be appended. TLS between brokers is a proxy's job (see docs/ops/SCALING.md).
fn advertise(url: &str) -> Result<String> {
    let url = url.trim().trim_end_matches('/');
    let Some(authority) = url.strip_prefix("http://") else {
        bail!("advertise_url must start with http:// (got {url:?})");
    };
    if authority.is_empty() || authority.contains('/') {
        bail!("advertise_url must be http://host:port with no path (got {url:?})");
    }
    Ok(url.to_owned())
}

/// The `Host` of an advertised address, which the broker must accept from forwarding peers.
pub fn advertised_host(url: &str) -> Option<String> {
    url.strip_prefix("http://").map(str::to_owned)
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn cli_type(s: &str, section: &str) -> Result<CliType> {
    s.parse()
        .map_err(|e| anyhow::anyhow!("[{section}] in the config file: {e}"))
}

/// Whether the URL names a PostgreSQL database (the store's test, see `Store::open`).
fn is_postgres(database_url: &str) -> bool {
    database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")
}

/// More async threads than this is a typo, not a tuning.
const MAX_WORKER_THREADS: u64 = 1024;

fn positive(name: &str, v: u64) -> Result<u64> {
    if v == 0 {
        bail!("{name} must be greater than 0");
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings> {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().display().to_string();
        let argv = ["kokino-broker", "--data-dir", &data]
            .into_iter()
            .chain(args.iter().copied());
        load(Args::try_parse_from(argv)?)
    }

    /// One runtime thread with SQLite, whose driver has threads of its own; two with
    /// PostgreSQL, whose driver works on the runtime's; and what the operator says otherwise.
    #[test]
    fn the_runtime_gets_one_thread_with_sqlite_and_two_with_postgres() {
        assert_eq!(settings(&[]).unwrap().worker_threads, 1);
        let pg = ["--database-url", "postgres://kokino@db.example/kokino"];
        assert_eq!(settings(&pg).unwrap().worker_threads, 2);
        let pg4 = [pg[0], pg[1], "--worker-threads", "4"];
        assert_eq!(settings(&pg4).unwrap().worker_threads, 4);
        let e = settings(&["--worker-threads", "0"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("worker_threads must be greater than 0"),
            "{e}"
        );
    }
}
