//! The settings of the execution path. Every number here is one of behavior.md's defaults and can
//! be changed by the broker's config file, environment or flags.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kokino_core::CliType;

/// The broker's settings; [`ServiceConfig::with_data_dir`] gives the documented defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// Where logs, tmux sockets and (SQLite) the database live.
    pub data_dir: PathBuf,
    /// Binary per CLI type when the agent does not name one (default: the type's usual name).
    pub binaries: BTreeMap<CliType, String>,
    /// Binaries (files or directories) an agent's `binary` may name besides its CLI type's own;
    /// the operator's choice, never an HTTP client's (`kokino_core::exec_policy`).
    pub allowed_binaries: kokino_core::exec_policy::BinaryAllowlist,
    /// Variables removed from the child environment unless the agent sets them explicitly.
    pub conflicting_vars: BTreeMap<CliType, Vec<String>>,
    /// An execution's timeout when neither the request nor the agent sets one.
    pub execution_timeout: Duration,
    /// How long a request waits for the agent's lock when it does not say.
    pub lock_wait: Duration,
    /// A CLI silent for this long is stopped.
    pub inactivity_timeout: Duration,
    /// How long a CLI may keep running after its final result before it is stopped.
    pub post_result_grace: Duration,
    /// Between SIGTERM and SIGKILL when a CLI is stopped.
    pub kill_grace: Duration,
    /// A CLI's process-group memory limit when the agent does not set one, in MiB.
    pub max_memory_mb: u64,
    /// How often a running CLI's memory and CPU are sampled.
    pub memory_sample_every: Duration,
    /// Larger prompts are refused.
    pub max_prompt_bytes: usize,
    /// Longer output lines of a CLI are cut.
    pub max_line_bytes: usize,
    /// Whether `EXECUTION_STARTED` events carry the first 100 characters of the prompt.
    pub event_prompt_preview: bool,
    /// Agent logs rotate when they reach this size.
    pub log_max_bytes: u64,
    /// Rotated agent logs are deleted after this long.
    pub log_retention: Duration,
    /// Sessions idle for longer than this are ended by the sweep.
    pub stale_session_after: Duration,
    /// How often the stale-session sweep runs.
    pub stale_sweep_every: Duration,
    /// How often rotated logs are pruned (and old events deleted).
    pub log_prune_every: Duration,
    /// Events older than this many days are deleted by the daily job.
    pub event_retention_days: u32,
    /// The SLO targets.
    pub slo: crate::slo::SloTargets,
    /// The tmux binary for tmux and shadow modes.
    pub tmux_binary: String,
    /// Local hour (0–23) of the nightly integrity check.
    pub integrity_check_hour: u32,
    /// How often the environment doctor runs (it also runs at start); `None` turns the
    /// periodic run (and the automatic CLI disable/enable it drives) off.
    pub doctor_every: Option<Duration>,
    /// Timeout of each doctor check.
    pub doctor_check_timeout: Duration,
    /// Disk usage (percent) above which the doctor's `disk` check warns.
    pub disk_warn_pct: f64,
    /// Disk usage (percent) above which the doctor's `disk` check fails.
    pub disk_fail_pct: f64,
    /// Set when several brokers share the store (PostgreSQL): agent leases and lease guards.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// The binary that acts as every CLI's supervisor (`kokino-broker` itself, see
    /// `kokino_exec::supervisor`): it kills the CLI's whole group when the broker dies. `None`
    /// (embedders, in-process tests) runs CLIs without one; in cluster mode the lease guard
    /// program is used instead.
    pub supervisor_program: Option<PathBuf>,
}

impl ServiceConfig {
    /// The documented defaults, with data under `data_dir`.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        ServiceConfig {
            data_dir: data_dir.into(),
            binaries: BTreeMap::new(),
            allowed_binaries: Default::default(),
            conflicting_vars: BTreeMap::new(),
            execution_timeout: Duration::from_millis(300_000),
            lock_wait: Duration::from_millis(300_000),
            inactivity_timeout: Duration::from_millis(600_000),
            post_result_grace: Duration::from_millis(2_000),
            kill_grace: Duration::from_millis(5_000),
            max_memory_mb: 2048,
            memory_sample_every: Duration::from_millis(1_000),
            max_prompt_bytes: 1024 * 1024,
            max_line_bytes: 32 * 1024 * 1024,
            event_prompt_preview: true,
            log_max_bytes: 50 * 1024 * 1024,
            log_retention: Duration::from_secs(7 * 24 * 3600),
            stale_session_after: Duration::from_secs(24 * 3600),
            stale_sweep_every: Duration::from_secs(3600),
            log_prune_every: Duration::from_secs(24 * 3600),
            event_retention_days: 90,
            slo: Default::default(),
            tmux_binary: "tmux".into(),
            integrity_check_hour: 2,
            doctor_every: Some(Duration::from_secs(6 * 3600)),
            doctor_check_timeout: Duration::from_millis(5_000),
            disk_warn_pct: 85.0,
            disk_fail_pct: 95.0,
            cluster: None,
            supervisor_program: None,
        }
    }

    /// Where supervisors leave their claim files (see `kokino_exec::supervisor`).
    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }

    /// The supervisor every headless CLI and tmux pane runs under, if any.
    pub fn supervisor(&self) -> Option<kokino_exec::supervisor::SupervisorSpec> {
        let program = self
            .supervisor_program
            .clone()
            .or_else(|| self.cluster.as_ref().map(|c| c.guard_program.clone()))?;
        Some(
            kokino_exec::supervisor::SupervisorSpec::new(program, Some(self.run_dir()))
                .with_heartbeat(self.cluster.as_ref().map(|c| c.guard_deadline()))
                .with_grace(self.kill_grace),
        )
    }

    /// Where the agents' logs are written.
    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    /// The binary of a CLI type (configured, else the type's usual name).
    pub fn binary_for(&self, cli: CliType) -> &str {
        self.binaries
            .get(&cli)
            .map(String::as_str)
            .unwrap_or(cli.default_binary())
    }

    /// Whether the broker may run what `spec` asks for: its `binary` must be allowed by the
    /// configuration and its `env` must not set a loader or interpreter hook. Checked at register
    /// and again before every run, so an agent stored before a configuration change cannot run a
    /// binary the configuration no longer allows.
    pub fn check_agent(&self, spec: &kokino_core::AgentSpec) -> Result<(), kokino_core::CoreError> {
        kokino_core::exec_policy::check_env(spec.env.keys())?;
        let Some(binary) = spec.binary.as_deref() else {
            return Ok(());
        };
        let name = self.binary_for(spec.cli_type);
        // The common case (an allowed directory, or the type's own name) needs no PATH search,
        // which costs a few `stat`s on every execution.
        if self.allowed_binaries.check(binary, &[name]).is_ok() {
            return Ok(());
        }
        let path_var = std::env::var_os("PATH");
        let resolved = kokino_exec::resolve_binary(name, path_var.as_deref())
            .ok()
            .map(|p| p.display().to_string());
        let mut implicit = vec![name];
        implicit.extend(resolved.as_deref());
        self.allowed_binaries.check(binary, &implicit)
    }

    /// The variables removed from a CLI's child environment (configured, else the CLI's
    /// defaults).
    pub fn conflicting_for(&self, cli: CliType) -> Vec<String> {
        match self.conflicting_vars.get(&cli) {
            Some(v) => v.clone(),
            None => kokino_cli::default_conflicting_vars(cli)
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}
