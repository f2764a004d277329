//! The broker's shared state: what every feature module reads and updates. Nothing here has
//! behaviour beyond lookups in its own tables.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kokino_core::clock::SharedClock;
use kokino_core::lock::AgentLocks;
use kokino_core::{AgentId, CommMode};
use kokino_exec::{CancellationToken, TmuxExecutor};
use kokino_logs::AgentLogs;
use kokino_store::Store;
use tokio_util::task::TaskTracker;

use crate::resilience::Resilience;
use crate::telemetry::EventSink;
use crate::{ServiceConfig, ServiceError};

/// What the broker knows about an execution while it runs.
#[derive(Debug, Clone)]
pub(crate) struct Running {
    /// The lock guard's token: a stale entry of an earlier run is never updated or removed.
    pub token: u64,
    pub execution_id: String,
    pub cancel: CancellationToken,
    pub pid: Option<i32>,
    /// The process that takes this run's heartbeats (its supervisor, or the broker's spawner).
    pub watchdog: Option<i32>,
    pub started_at: DateTime<Utc>,
    pub mode: CommMode,
    pub rss_bytes: u64,
    pub cpu_percent: f64,
    pub max_memory_mb: u64,
    pub timeout_ms: u64,
}

/// Everything a [`crate::Broker`] shares between its clones.
pub(crate) struct Inner {
    pub store: Store,
    pub cfg: ServiceConfig,
    pub locks: AgentLocks,
    pub running: Mutex<HashMap<AgentId, Running>>,
    /// Binaries resolved on the broker's PATH. Lookups happen once per distinct name, not per
    /// execution (cli-adapters.md, Binary lookup); failures are not cached, so installing a
    /// missing CLI needs no restart.
    pub binaries: Mutex<HashMap<String, PathBuf>>,
    pub events: EventSink,
    pub tasks: TaskTracker,
    pub shutting_down: AtomicBool,
    pub queued: AtomicI64,
    pub started: Instant,
    pub instance_id: String,
    pub logs: AgentLogs,
    pub clock: SharedClock,
    /// Cancelled at shutdown; periodic jobs watch it.
    pub stop: CancellationToken,
    /// The tmux executor, when tmux (3.0 or later) is installed.
    pub tmux: Option<TmuxExecutor>,
    /// The supervisor every headless CLI runs under, built once (see
    /// `ServiceConfig::supervisor`).
    pub supervisor: Option<kokino_exec::supervisor::SupervisorSpec>,
    /// The clean ratio of the latest integrity check, for the integrity SLO.
    pub last_integrity: Mutex<Option<f64>>,
    /// The environment doctor's latest report and its single flight.
    pub(crate) env_cache: crate::environment::EnvCache,
    pub resilience: Resilience,
    /// The secondary leg's CLI session per shadow agent (separate from the primary's).
    pub shadow_sessions: Mutex<HashMap<AgentId, String>>,
    /// Cluster mode: database notifications that wake lease waiters.
    pub wakeups: Option<crate::cluster::Wakeups>,
    /// Cluster mode: leases kept for the agents' next runs here.
    pub parked_leases: std::sync::Arc<crate::cluster::ParkedLeases>,
    /// Cluster mode with an advertised address: agents' home brokers.
    pub homes: Option<crate::homes::Homes>,
}

impl Inner {
    /// The running table. A poisoned lock means a panic while it was held; the table itself is
    /// still consistent (every update is a single insert, remove or field write).
    pub fn running_table(&self) -> MutexGuard<'_, HashMap<AgentId, Running>> {
        self.running.lock().expect("running table")
    }

    /// The agent's running execution, if any.
    pub fn running(&self, id: &AgentId) -> Option<Running> {
        self.running_table().get(id).cloned()
    }

    /// Updates the agent's running entry, but only if it still belongs to the run holding
    /// `token` (a newer run may have replaced it).
    pub fn update_running(&self, id: &AgentId, token: u64, f: impl FnOnce(&mut Running)) {
        if let Some(r) = self.running_table().get_mut(id) {
            if r.token == token {
                f(r);
            }
        }
    }

    /// Whether tmux can run agents on this host.
    pub fn tmux_available(&self) -> bool {
        self.tmux.is_some()
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl Inner {
    /// The state of a starting broker: breakers and overrides restored from the store, the
    /// event writer started, tmux detected.
    pub async fn open(
        store: Store,
        cfg: ServiceConfig,
        clock: SharedClock,
    ) -> Result<Self, ServiceError> {
        if cfg.supervisor().is_some() {
            kokino_exec::supervisor::prepare_run_dir(&cfg.run_dir()).map_err(|e| {
                ServiceError::Internal(format!(
                    "cannot create the run directory {}: {e}",
                    cfg.run_dir().display()
                ))
            })?;
        }
        let (events, _writer) = EventSink::spawn(store.clone());
        let resilience = Resilience::load(store.clone(), events.clone(), clock.clone()).await?;
        let logs = AgentLogs::new(cfg.logs_dir(), cfg.log_max_bytes, cfg.log_retention);
        let tmux = detect_tmux(&cfg).await;
        let stop = CancellationToken::new();
        let (wakeups, homes) = crate::homes::Homes::new(cfg.cluster.as_ref(), &store, &stop);
        // Headless CLIs are started by one spawner shared by the whole broker (a supervisor
        // process per execution costs more CPU than a quick CLI); it starts now, so the first
        // execution does not wait for it.
        let supervisor = cfg.supervisor().map(|s| s.shared());
        if let Some(s) = &supervisor {
            if let Some(pid) = s.start_spawner().await {
                tracing::debug!(pid, "spawner started");
            }
        }
        Ok(Inner {
            wakeups,
            homes,
            parked_leases: std::sync::Arc::default(),
            store,
            cfg,
            locks: AgentLocks::new(),
            running: Mutex::new(HashMap::new()),
            binaries: Mutex::new(HashMap::new()),
            events,
            tasks: TaskTracker::new(),
            shutting_down: AtomicBool::new(false),
            queued: AtomicI64::new(0),
            started: Instant::now(),
            instance_id: uuid::Uuid::new_v4().to_string(),
            logs,
            clock,
            stop,
            supervisor,
            tmux,
            last_integrity: Mutex::new(None),
            env_cache: Default::default(),
            resilience,
            shadow_sessions: Mutex::new(HashMap::new()),
        })
    }
}

/// The tmux executor, when a tmux of 3.0 or later is on the PATH.
async fn detect_tmux(cfg: &ServiceConfig) -> Option<TmuxExecutor> {
    let path = std::env::var_os("PATH");
    let Ok(binary) = kokino_exec::resolve_binary(&cfg.tmux_binary, path.as_deref()) else {
        tracing::info!("tmux not found; tmux and shadow modes are off");
        return None;
    };
    // Each pane's CLI runs under a supervisor that watches this process, so that a broker
    // killed with SIGKILL leaves no CLI running in its tmux server.
    let exec =
        TmuxExecutor::new(binary, cfg.data_dir.join("tmux")).with_supervisor(cfg.supervisor());
    if !exec.available() {
        tracing::warn!("tmux is older than 3.0 or does not answer; tmux and shadow modes are off");
        return None;
    }
    // A previous life's tmux server holds CLIs nobody tracks any more: stop it. Claude sessions
    // are resumed by id in a new tmux session on their next run.
    exec.kill_server().await;
    Some(exec)
}
