//! The execution path and the agent/session operations around it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kokino_cli::interactive_args;
use kokino_cli::{
    build_args, child_env, first_prompt_with_system, parser_for, InvocationRequest, SessionArg,
    StreamEvent,
};
use kokino_core::breaker::{ExecutionPermit, Scope};
use kokino_core::clock::{SharedClock, SystemClock};
use kokino_core::fallback::{FallbackStatus, ModeOrigin, Target};
use kokino_core::lock::{AgentLocks, LockGuard};
use kokino_core::{
    AgentId, AgentRecord, AgentSpec, CliType, CommMode, Conversation, NewExecution, OutcomeClass,
    Role, SessionRecord, Turn,
};
use kokino_exec::{
    run_headless, CancellationToken, ExecEvent, HeadlessCommand, Limits, RunResult, StopReason,
    TmuxExecutor, TmuxRequest,
};
use kokino_logs::AgentLogs;
use kokino_store::{FinishExecution, NewTurn, Store};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::model::*;
use crate::resilience::Resilience;
use crate::telemetry::{self, event, EventSink};
use crate::{ServiceConfig, ServiceError};

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// What the broker knows about an execution while it runs.
#[derive(Debug, Clone)]
struct Running {
    token: u64,
    execution_id: String,
    cancel: CancellationToken,
    pid: Option<i32>,
    started_at: DateTime<Utc>,
    mode: CommMode,
    rss_bytes: u64,
    cpu_percent: f64,
    max_memory_mb: u64,
    timeout_ms: u64,
}

struct Inner {
    store: Store,
    cfg: ServiceConfig,
    locks: AgentLocks,
    running: Mutex<HashMap<AgentId, Running>>,
    /// Binaries resolved on the broker's PATH. Lookups happen once per distinct name, not per
    /// execution (cli-adapters.md, Binary lookup); failures are not cached, so installing a
    /// missing CLI needs no restart.
    binaries: Mutex<HashMap<String, PathBuf>>,
    events: EventSink,
    tasks: TaskTracker,
    shutting_down: AtomicBool,
    queued: AtomicI64,
    started: Instant,
    instance_id: String,
    logs: AgentLogs,
    clock: SharedClock,
    /// Cancelled at shutdown; periodic jobs watch it.
    stop: CancellationToken,
    /// The tmux executor, when tmux (3.0 or later) is installed.
    tmux: Option<TmuxExecutor>,
    /// The clean ratio of the latest integrity check, for the integrity SLO.
    last_integrity: Mutex<Option<f64>>,
    resilience: Resilience,
    /// The secondary leg's CLI session per shadow agent (separate from the primary's).
    shadow_sessions: Mutex<HashMap<AgentId, String>>,
}

/// The broker's application service. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl Broker {
    /// Starts the service on an open store: recovers what a previous life left running, then
    /// starts the event writer.
    pub async fn start(store: Store, cfg: ServiceConfig) -> Result<Self> {
        Self::start_with_clock(store, cfg, Arc::new(SystemClock)).await
    }

    /// As [`Broker::start`], with the clock that time-based maintenance reads (tests pass a
    /// clock that follows tokio's paused time).
    pub async fn start_with_clock(
        store: Store,
        cfg: ServiceConfig,
        clock: SharedClock,
    ) -> Result<Self> {
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
        let tmux = match kokino_exec::resolve_binary(
            &cfg.tmux_binary,
            std::env::var_os("PATH").as_deref(),
        ) {
            Ok(path) => {
                let exec = TmuxExecutor::new(path, cfg.data_dir.join("tmux"));
                if exec.available() {
                    // A previous life's tmux server holds CLIs nobody tracks any more: stop it.
                    // Claude sessions are resumed by id in a new tmux session on their next run.
                    exec.kill_server().await;
                    Some(exec)
                } else {
                    tracing::warn!(
                        "tmux is older than 3.0 or does not answer; tmux and shadow modes are off"
                    );
                    None
                }
            }
            Err(_) => {
                tracing::info!("tmux not found; tmux and shadow modes are off");
                None
            }
        };
        let broker = Broker {
            inner: Arc::new(Inner {
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
                stop: CancellationToken::new(),
                tmux,
                last_integrity: Mutex::new(None),
                resilience,
                shadow_sessions: Mutex::new(HashMap::new()),
            }),
        };
        broker.recover_interrupted().await?;
        Ok(broker)
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.inner.cfg
    }

    /// Executions still `running` in the store belong to a previous life that died. Their
    /// process groups are killed (only if pid *and* start time still match) and they are
    /// recorded as `interrupted`; their locks were in memory and are free by construction.
    async fn recover_interrupted(&self) -> Result<()> {
        let store = &self.inner.store;
        // With several brokers on one database, only this broker's own runs are its to clean
        // up (the others' are ended by their brokers, or taken over when their leases expire).
        let running = match &self.inner.cfg.cluster {
            Some(c) => store.running_executions_of(&c.instance_id).await?,
            None => store.running_executions().await?,
        };
        // First the claims of supervisors whose broker died: they cover the instant between a
        // spawn and the pid reaching the store, which the rows below cannot.
        let run_dir = self.inner.cfg.run_dir();
        let leftovers =
            tokio::task::spawn_blocking(move || kokino_exec::supervisor::reap_leftovers(&run_dir))
                .await
                .unwrap_or_default();
        for l in leftovers.iter().filter(|l| l.killed) {
            tracing::warn!(
                pgid = l.pgid,
                "killed a CLI group left over by a previous broker"
            );
            let mut e = event("PROCESS_ORPHAN_KILLED", None, None);
            e.metadata = json!({"pid": l.pgid, "source": "claim"});
            self.inner.events.emit(e);
        }
        for exec in running {
            if let (Some(pid), Some(start)) = (exec.pid, exec.pid_start_time) {
                if kokino_exec::procfs::kill_recorded_group(pid as i32, start) {
                    tracing::warn!(pid, agent = %exec.agent_id, "killed a CLI left over by a previous broker");
                    let mut e = event(
                        "PROCESS_ORPHAN_KILLED",
                        Some(exec.agent_id.as_str()),
                        Some(exec.cli_type.as_str()),
                    );
                    e.metadata = json!({"pid": pid, "executionId": exec.execution_id});
                    self.inner.events.emit(e);
                }
            }
            self.mark_interrupted(&exec).await?;
        }
        Ok(())
    }

    /// Records an execution that no process will finish as `interrupted`, with a `system`
    /// turn saying so (not counted by breakers or SLOs).
    async fn mark_interrupted(&self, exec: &kokino_core::ExecutionRecord) -> Result<()> {
        let store = &self.inner.store;
        store
            .finish_execution(&interrupted_finish(
                exec,
                "interrupted: the broker stopped while this execution was running".into(),
                json!({}),
            ))
            .await?;
        let mut e = event(
            "EXECUTION_INTERRUPTED",
            Some(exec.agent_id.as_str()),
            Some(exec.cli_type.as_str()),
        );
        e.success = Some(false);
        e.metadata = json!({"executionId": exec.execution_id});
        self.inner.events.emit(e);
        metrics::counter!(telemetry::EXECUTIONS_TOTAL,
            "cli" => exec.cli_type.as_str(), "mode" => exec.mode.as_str(), "outcome" => "interrupted")
        .increment(1);
        Ok(())
    }

    // ------------------------------------------------------------------ agents

    /// Registers (or updates) an agent. The working directory must exist: finding out at the
    /// first execute would be later and more confusing.
    pub async fn register_agent(&self, spec: AgentSpec) -> Result<AgentRecord> {
        self.inner.cfg.check_agent(&spec)?;
        if let Some(cwd) = &spec.cwd {
            if !std::path::Path::new(cwd).is_dir() {
                return Err(ServiceError::BadRequest {
                    field: Some("cwd"),
                    message: format!("cwd {cwd:?} does not exist or is not a directory"),
                });
            }
        }
        for (field, value) in [
            ("timeoutMs", spec.timeout_ms),
            ("maxMemoryMB", spec.max_memory_mb),
        ] {
            if value == Some(0) {
                return Err(ServiceError::BadRequest {
                    field: Some(field),
                    message: format!("{field} must be greater than 0"),
                });
            }
        }
        if let Some(key) = spec
            .env
            .keys()
            .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return Err(ServiceError::BadRequest {
                field: Some("env"),
                message: format!("env key {key:?} is not a valid environment variable name"),
            });
        }
        if spec.env.values().any(|v| v.contains('\0')) {
            return Err(ServiceError::BadRequest {
                field: Some("env"),
                message: "env values must not contain NUL bytes".into(),
            });
        }
        let record = self.inner.store.upsert_agent(&spec).await?;
        Ok(record)
    }

    pub async fn list_agents(
        &self,
        cli_type: Option<CliType>,
        comm_mode: Option<CommMode>,
    ) -> Result<Vec<AgentRecord>> {
        let mut agents = self.inner.store.list_agents().await?;
        agents.retain(|a| {
            cli_type.is_none_or(|t| a.spec.cli_type == t)
                && comm_mode.is_none_or(|m| a.spec.comm_mode == m)
        });
        Ok(agents)
    }

    async fn agent(&self, id: &AgentId) -> Result<AgentRecord> {
        self.inner
            .store
            .get_agent(id)
            .await?
            .ok_or_else(|| ServiceError::AgentNotFound(id.to_string()))
    }

    pub async fn get_agent(&self, agent_id: &str) -> Result<AgentView> {
        let id = AgentId::parse(agent_id)?;
        let record = self.agent(&id).await?;
        let session = self.inner.store.get_session(&id).await?.map(session_view);
        let res = &self.inner.resilience;
        let cli = record.spec.cli_type;
        let tmux = self.inner.tmux.is_some();
        let effective_mode = res
            .with_fallback(|f| f.effective_mode(&id, cli, record.spec.comm_mode, tmux))
            .map(|e| Some(e.mode))
            .unwrap_or(None);
        let circuit = res
            .circuits()
            .into_iter()
            .find(|c| c.agent_id.as_ref() == Some(&id))
            .and_then(|c| serde_json::to_value(c).ok());
        let executing = self.running(&id).is_some();
        Ok(AgentView {
            fallback: res.agent_override(&id, cli),
            record,
            session,
            circuit,
            effective_mode,
            executing,
        })
    }

    /// Cancels a running execution, ends the session, and deletes the agent (with `purge`, its
    /// conversations too). Returns whether the agent existed.
    pub async fn delete_agent(&self, agent_id: &str, purge: bool) -> Result<bool> {
        let id = AgentId::parse(agent_id)?;
        self.cancel_and_wait(&id).await;
        if let Some(tmux) = &self.inner.tmux {
            tmux.end_session(id.as_str()).await;
        }
        self.inner.store.end_session(&id).await?;
        let existed = self.inner.store.delete_agent(&id, purge).await?;
        self.inner.locks.forget(&id);
        self.inner.resilience.forget_agent(&id).await;
        if purge {
            if let Err(e) = self.inner.logs.remove(&id) {
                tracing::warn!(error = %e, agent = %id, "could not delete the agent's logs");
            }
        }
        Ok(existed)
    }

    // ------------------------------------------------------------------ execution

    fn running(&self, id: &AgentId) -> Option<Running> {
        self.inner
            .running
            .lock()
            .expect("running table")
            .get(id)
            .cloned()
    }

    /// The mode an execution of this agent will use. Only headless runs exist in this build;
    /// an agent registered for tmux or shadow gets a clear 503 instead of a wrong run.
    /// Decides how an execution runs, before it waits for the lock: parked agents and open
    /// breakers are refused here (503), fallback reroutes to tmux, and a headless run gets a
    /// breaker permit whose outcome is recorded when the run ends (see `resilience.rs`).
    fn admit(&self, agent: &AgentRecord) -> Result<(CommMode, Option<ExecutionPermit>)> {
        let id = &agent.spec.agent_id;
        let cli = agent.spec.cli_type;
        let res = &self.inner.resilience;
        let now = self.inner.clock.now();
        if let Some(until) = res.parking.parked_until(id, now) {
            metrics::counter!(telemetry::RATE_LIMITED_TOTAL, "cli" => cli.as_str()).increment(1);
            return Err(ServiceError::RateLimited {
                agent_id: id.to_string(),
                until,
                retry_after: (until - now).to_std().unwrap_or(Duration::from_secs(1)),
            });
        }
        let tmux = self.inner.tmux.is_some();
        let eff = res
            .with_fallback(|f| f.effective_mode(id, cli, agent.spec.comm_mode, tmux))
            .map_err(|e| ServiceError::NoExecutionMode {
                message: e.reason,
                retry_after: None,
            })?;
        let auto_forced = eff.origin == ModeOrigin::AgentForced
            && res.with_fallback(|f| f.get(&Target::Agent(id.clone())).is_some_and(|o| o.auto));
        if eff.mode != CommMode::Headless && !auto_forced {
            return Ok((eff.mode, None));
        }
        let admittance = res.breakers.admit(id, cli);
        if !admittance.transitions.is_empty() {
            let (res2, transitions) = (self.clone(), admittance.transitions);
            tokio::spawn(async move {
                res2.inner.resilience.publish(transitions, tmux).await;
            });
        }
        match admittance.decision {
            // An agent moved to tmux by its own breaker goes back to headless only as the
            // breaker's probe; meanwhile it keeps running in tmux.
            Ok(permit) if auto_forced => {
                if permit.is_probe() {
                    Ok((CommMode::Headless, Some(permit)))
                } else {
                    Ok((CommMode::Tmux, None))
                }
            }
            Err(_) if auto_forced => Ok((CommMode::Tmux, None)),
            Ok(permit) => Ok((CommMode::Headless, Some(permit))),
            Err(rejection) => {
                metrics::counter!(telemetry::CIRCUIT_REJECTIONS_TOTAL, "scope" => rejection.scope.kind())
                    .increment(1);
                let mut ev = event("CIRCUIT_REJECTED", Some(id.as_str()), Some(cli.as_str()));
                ev.success = Some(false);
                ev.metadata = json!({
                    "scope": rejection.scope.kind(), "key": rejection.scope.key(),
                    "state": rejection.state.as_str(), "retryAt": rejection.retry_at,
                });
                self.inner.events.emit(ev);
                let retry_after = rejection
                    .retry_at
                    .map(|t| (t - now).to_std().unwrap_or(Duration::from_secs(1)));
                Err(ServiceError::CircuitOpen {
                    message: format!(
                        "the {} circuit breaker for {} is {}{}; requests are refused until it recovers ({})",
                        rejection.scope.kind(),
                        rejection.scope.key(),
                        rejection.state.as_str().replace('_', " "),
                        rejection.retry_at.map(|t| format!(" until {}", t.to_rfc3339())).unwrap_or_default(),
                        "see GET /agents/circuits/status; POST /agents/{id}/circuit/reset resets it"
                    ),
                    scope: rejection.scope.kind().to_owned(),
                    state: rejection.state.as_str().to_owned(),
                    retry_after,
                })
            }
        }
    }

    /// Runs one prompt on an agent and answers with the CLI's answer. `progress`, when given,
    /// receives queue, start and stream events as they happen (for streaming clients).
    pub async fn execute(
        &self,
        agent_id: &str,
        req: ExecuteRequest,
        progress: Option<mpsc::UnboundedSender<Progress>>,
    ) -> Result<ExecuteResponse> {
        let id = AgentId::parse(agent_id)?;
        if req.prompt.trim().is_empty() {
            return Err(ServiceError::BadRequest {
                field: Some("prompt"),
                message: "prompt must be a non-empty string".into(),
            });
        }
        if req.prompt.len() > self.inner.cfg.max_prompt_bytes {
            return Err(ServiceError::PayloadTooLarge(format!(
                "prompt is {} bytes; the limit is {} bytes",
                req.prompt.len(),
                self.inner.cfg.max_prompt_bytes
            )));
        }
        // A zero lock wait is meaningful ("fail at once if busy"); a zero run time is not.
        if req.timeout_ms == Some(0) {
            return Err(ServiceError::BadRequest {
                field: Some("timeoutMs"),
                message: "timeoutMs must be greater than 0".into(),
            });
        }
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(ServiceError::ShuttingDown);
        }
        let agent = self.agent(&id).await?;
        let cli = agent.spec.cli_type;
        let (mode, permit) = self.admit(&agent)?;
        let wait = req
            .lock_timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.inner.cfg.lock_wait);

        if let Some(p) = &progress {
            let st = self.inner.locks.status(&id);
            let _ = p.send(Progress::Queued {
                position: st.queue_length + usize::from(st.locked),
            });
        }
        let depth = self.inner.queued.fetch_add(1, Ordering::AcqRel) + 1;
        metrics::gauge!(telemetry::QUEUE_DEPTH).set(depth as f64);
        let acquired = self.inner.locks.acquire(&id, wait).await;
        let depth = self.inner.queued.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!(telemetry::QUEUE_DEPTH).set(depth as f64);
        let guard = match acquired {
            Ok(g) => g,
            Err(e) => {
                metrics::counter!(telemetry::LOCK_TIMEOUTS_TOTAL, "cli" => cli.as_str())
                    .increment(1);
                let mut ev = event("LOCK_TIMEOUT", Some(id.as_str()), Some(cli.as_str()));
                ev.success = Some(false);
                ev.duration_ms = Some(millis(wait) as i64);
                self.inner.events.emit(ev);
                return Err(e.into());
            }
        };
        metrics::histogram!(telemetry::LOCK_WAIT, "cli" => cli.as_str())
            .record(guard.waited().as_secs_f64());
        let mut ev = event("LOCK_ACQUIRED", Some(id.as_str()), Some(cli.as_str()));
        ev.metadata = json!({"waitedMs": millis(guard.waited())});
        self.inner.events.emit(ev);

        // Several brokers: the agent's lease in the database is the cross-broker lock. Waiting
        // for it shares the request's lock timeout.
        let lease = match &self.inner.cfg.cluster {
            None => None,
            Some(c) => {
                let deadline = tokio::time::Instant::now() + wait.saturating_sub(guard.waited());
                match crate::cluster::acquire(&self.inner.store, id.as_str(), c, deadline).await? {
                    Some((hold, lease)) => {
                        if let Some(previous) =
                            lease.taken_over_from.filter(|p| p != &c.instance_id)
                        {
                            self.take_over(&id, &previous, &hold).await;
                        }
                        Some(hold)
                    }
                    None => {
                        metrics::counter!(telemetry::LOCK_TIMEOUTS_TOTAL, "cli" => cli.as_str())
                            .increment(1);
                        let mut ev = event("LOCK_TIMEOUT", Some(id.as_str()), Some(cli.as_str()));
                        ev.success = Some(false);
                        ev.metadata = json!({"heldBy": "another broker"});
                        self.inner.events.emit(ev);
                        return Err(ServiceError::LockTimeout {
                            agent_id: id.to_string(),
                            waited_ms: millis(wait),
                        });
                    }
                }
            }
        };

        // From here on the run belongs to its own task: a caller that disconnects does not stop
        // it, and its result is stored whatever happens to the request.
        let (tx, rx) = oneshot::channel();
        let this = self.clone();
        self.inner.tasks.spawn(async move {
            let result = this
                .run_locked(agent, mode, req, guard, lease, permit, progress)
                .await;
            let _ = tx.send(result);
        });
        rx.await.unwrap_or(Err(ServiceError::ShuttingDown))
    }

    async fn resolve_binary(&self, agent: &AgentRecord) -> Result<PathBuf, String> {
        self.inner
            .cfg
            .check_agent(&agent.spec)
            .map_err(|e| e.to_string())?;
        let name = agent
            .spec
            .binary
            .clone()
            .unwrap_or_else(|| self.inner.cfg.binary_for(agent.spec.cli_type).to_owned());
        if let Some(p) = self.inner.binaries.lock().expect("binary cache").get(&name) {
            return Ok(p.clone());
        }
        let path_var = std::env::var_os("PATH");
        match kokino_exec::resolve_binary(&name, path_var.as_deref()) {
            Ok(p) => {
                self.inner
                    .binaries
                    .lock()
                    .expect("binary cache")
                    .insert(name, p.clone());
                Ok(p)
            }
            Err(e) => Err(format!(
                "{e}; install the {} CLI or set its binary in the broker config or the agent's `binary`",
                agent.spec.cli_type
            )),
        }
    }

    /// Everything one leg needs to start: the resolved binary, its arguments for the mode, the
    /// child environment, the limits. An `Err` is a message for a `spawn_error` outcome.
    async fn build_runner(
        &self,
        agent: &AgentRecord,
        mode: CommMode,
        session: SessionArg<'_>,
        prompt: String,
        timeout: Duration,
    ) -> Result<Runner, String> {
        let cfg = &self.inner.cfg;
        let cli = agent.spec.cli_type;
        let program = self.resolve_binary(agent).await?;
        let env = child_env(
            cli,
            std::env::vars(),
            &agent.spec.env,
            &cfg.conflicting_for(cli),
        );
        let limits = Limits {
            timeout,
            inactivity: cfg.inactivity_timeout,
            post_result_grace: cfg.post_result_grace,
            kill_grace: cfg.kill_grace,
            max_memory_bytes: Some(
                agent.spec.max_memory_mb.unwrap_or(cfg.max_memory_mb) * 1024 * 1024,
            ),
            memory_sample_every: cfg.memory_sample_every,
            max_line_bytes: cfg.max_line_bytes,
        };
        if mode == CommMode::Tmux {
            let mut args = interactive_args(cli, session, agent.spec.model.as_deref());
            if let (CliType::ClaudeCode, Some(sp), SessionArg::New { .. }) =
                (cli, agent.spec.system_prompt.as_deref(), session)
            {
                args.extend(["--append-system-prompt".to_owned(), sp.to_owned()]);
            }
            args.extend(agent.spec.extra_args.iter().cloned());
            let claude_session_id = (cli == CliType::ClaudeCode).then(|| match session {
                SessionArg::New { preassigned_id } => preassigned_id.to_owned(),
                SessionArg::Resume { session_id } => session_id.to_owned(),
            });
            let cwd = agent
                .spec
                .cwd
                .as_ref()
                .map(PathBuf::from)
                .or_else(|| std::env::current_dir().ok())
                .unwrap_or_else(|| PathBuf::from("/"));
            return Ok(Runner::Tmux(
                TmuxRequest {
                    agent_id: agent.spec.agent_id.to_string(),
                    tui: kokino_cli::tui_for(cli),
                    program,
                    args,
                    env,
                    cwd,
                    prompt,
                    session_id: claude_session_id,
                },
                limits,
            ));
        }
        let args = build_args(&InvocationRequest {
            cli,
            model: agent.spec.model.as_deref(),
            system_prompt: agent.spec.system_prompt.as_deref(),
            extra_args: &agent.spec.extra_args,
            session,
        });
        Ok(Runner::Headless(
            HeadlessCommand {
                program,
                args,
                env,
                cwd: agent.spec.cwd.as_ref().map(PathBuf::from),
                stdin: prompt.into_bytes(),
                supervisor: self.inner.cfg.supervisor(),
            },
            limits,
        ))
    }

    /// The execution proper, with the lock held.
    #[allow(clippy::too_many_arguments)]
    async fn run_locked(
        &self,
        agent: AgentRecord,
        mode: CommMode,
        req: ExecuteRequest,
        guard: LockGuard,
        lease: Option<crate::cluster::LeaseHold>,
        permit: Option<ExecutionPermit>,
        progress: Option<mpsc::UnboundedSender<Progress>>,
    ) -> Result<ExecuteResponse> {
        let store = &self.inner.store;
        let cfg = &self.inner.cfg;
        let id = agent.spec.agent_id.clone();
        let cli = agent.spec.cli_type;
        let waited_ms = millis(guard.waited());

        let session = match &req.conversation_id {
            Some(conv) => store
                .switch_session(&id, conv)
                .await?
                .ok_or_else(|| ServiceError::ConversationNotFound(conv.clone()))?,
            None => match store.get_session(&id).await? {
                Some(s) => s,
                None => {
                    let preassigned = kokino_cli::preassigns_session_id(cli)
                        .then(|| uuid::Uuid::new_v4().to_string());
                    let s = store
                        .create_session(&id, cli, preassigned.as_deref())
                        .await?;
                    let mut ev = event("SESSION_CREATED", Some(id.as_str()), Some(cli.as_str()));
                    ev.metadata = json!({"conversationId": s.conversation_id});
                    self.inner.events.emit(ev);
                    s
                }
            },
        };
        let resume_id = session
            .cli_session_id
            .clone()
            .filter(|_| session.cli_session_started);
        // A new CLI session gets a fresh id every time it is attempted: if an earlier attempt
        // got far enough for the CLI to register the id but not far enough for us to see it,
        // reusing it would fail with "already in use".
        let fresh_id = uuid::Uuid::new_v4().to_string();
        let session_arg = match &resume_id {
            Some(sid) => {
                let mut ev = event("SESSION_RESUMED", Some(id.as_str()), Some(cli.as_str()));
                ev.metadata = json!({"sessionId": sid, "conversationId": session.conversation_id});
                self.inner.events.emit(ev);
                SessionArg::Resume { session_id: sid }
            }
            None => SessionArg::New {
                preassigned_id: &fresh_id,
            },
        };
        let cli_prompt = if resume_id.is_some() {
            req.prompt.clone()
        } else {
            first_prompt_with_system(cli, agent.spec.system_prompt.as_deref(), &req.prompt)
        };

        let phase = Instant::now();
        let execution_id = uuid::Uuid::new_v4().to_string();
        let mut user_meta = req
            .metadata
            .clone()
            .filter(|m| m.is_object())
            .unwrap_or_else(|| json!({}));
        user_meta["executionId"] = json!(execution_id);
        let new_execution = NewExecution {
            execution_id: execution_id.clone(),
            agent_id: id.clone(),
            conversation_id: session.conversation_id.clone(),
            cli_type: cli,
            mode,
            user_turn_id: uuid::Uuid::new_v4().to_string(),
            prompt: req.prompt.clone(),
            turn_metadata: user_meta,
        };
        match &lease {
            Some(l) => {
                store
                    .begin_execution_fenced(&new_execution, &l.owner, l.token)
                    .await
                    .map_err(lease_error)?;
                store
                    .set_execution_instance(&execution_id, &l.owner)
                    .await?;
            }
            None => {
                store.begin_execution(&new_execution).await?;
            }
        }

        let timeout = Duration::from_millis(
            req.timeout_ms
                .or(agent.spec.timeout_ms)
                .unwrap_or(millis(cfg.execution_timeout)),
        );
        let mut start_ev = event("EXECUTION_STARTED", Some(id.as_str()), Some(cli.as_str()));
        start_ev.metadata = json!({
            "executionId": execution_id,
            "mode": mode.as_str(),
            "resume": resume_id.is_some(),
        });
        if cfg.event_prompt_preview {
            start_ev.metadata["promptPreview"] =
                json!(req.prompt.chars().take(100).collect::<String>());
        }
        self.inner.events.emit(start_ev);

        let persisted_user_turn = phase.elapsed();
        // In shadow mode the primary leg answers and is stored like any run; the secondary runs
        // beside it with its own CLI session and only feeds the comparison.
        let (primary_mode, secondary_mode) = match mode {
            CommMode::Shadow => {
                let p = shadow_primary(&agent);
                (
                    p,
                    Some(if p == CommMode::Tmux {
                        CommMode::Headless
                    } else {
                        CommMode::Tmux
                    }),
                )
            }
            other => (other, None),
        };
        let cancel = CancellationToken::new();
        let renewal = match (&lease, &self.inner.cfg.cluster) {
            (Some(l), Some(c)) => {
                let (this, agent_key) = (self.clone(), id.clone());
                Some(crate::cluster::spawn_renewal(
                    self.inner.store.clone(),
                    c.clone(),
                    id.to_string(),
                    l.token,
                    cancel.clone(),
                    move || this.running(&agent_key).and_then(|r| r.pid),
                ))
            }
            _ => None,
        };
        let secondary = match secondary_mode {
            Some(sm) => Some(
                self.start_secondary(&agent, sm, &req.prompt, timeout, cancel.clone())
                    .await,
            ),
            None => None,
        };
        let runner = self
            .build_runner(&agent, primary_mode, session_arg, cli_prompt, timeout)
            .await;
        let result = match runner {
            Err(message) => spawn_error_result(message),
            Ok(runner) => {
                self.run_process(
                    &agent,
                    mode,
                    &session,
                    &execution_id,
                    guard.token(),
                    runner,
                    cancel,
                    progress,
                )
                .await
            }
        };
        let primary_result = secondary.as_ref().map(|_| result.clone());

        let ran = phase.elapsed();
        let answer = self
            .finish(
                &agent,
                mode,
                &session,
                &execution_id,
                waited_ms,
                timeout,
                result,
                permit,
                lease.as_ref().map(|l| (l.owner.as_str(), l.token)),
            )
            .await;
        // Where the time of an execution goes, for `cargo xtask bench` and for operators
        // chasing latency (KOKINO_LOG=kokino_service=debug).
        tracing::debug!(
            agent = %id,
            user_turn_ms = persisted_user_turn.as_secs_f64() * 1e3,
            run_ms = (ran - persisted_user_turn).as_secs_f64() * 1e3,
            finish_ms = (phase.elapsed() - ran).as_secs_f64() * 1e3,
            "execution phases"
        );
        if let (Some((sm, task)), Some(primary)) = (secondary, primary_result) {
            let renewal = renewal;
            let lease = lease;
            // The caller has its answer; the lock stays held until the secondary leg ends
            // (bounded by its own timeout), so that no other run of the agent overlaps it.
            let this = self.clone();
            let execution_id = execution_id.clone();
            self.inner.tasks.spawn(async move {
                let secondary = task
                    .await
                    .unwrap_or_else(|_| spawn_error_result("the secondary leg panicked".into()));
                this.record_shadow(
                    &agent,
                    &execution_id,
                    primary_mode,
                    &primary,
                    sm,
                    &secondary,
                )
                .await;
                if let Some(r) = renewal {
                    r.abort();
                }
                if let Some(l) = lease {
                    l.release().await;
                }
                drop(guard);
            });
            return answer;
        }
        if let Some(r) = renewal {
            r.abort();
        }
        if let Some(l) = lease {
            l.release().await;
        }
        answer
        // Otherwise `guard` drops here, after the outcome is stored: the next waiter sees a
        // finished run.
    }

    /// This broker took an agent's lease over from `previous`, whose lease had expired (it died
    /// or stalled): its unfinished executions of the agent are marked `interrupted`. Nothing is
    /// killed — those processes belong to another broker (its lease guard stops them).
    async fn take_over(&self, id: &AgentId, previous: &str, hold: &crate::cluster::LeaseHold) {
        tracing::warn!(agent = %id, %previous, "took over an expired lease");
        let foreign = match self
            .inner
            .store
            .foreign_running_executions(id.as_str(), &hold.owner)
            .await
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "could not list the previous owner's executions");
                return;
            }
        };
        for exec in foreign {
            let message = format!(
                "interrupted: broker {previous} stopped renewing the agent's lease while this execution ran"
            );
            let fin = interrupted_finish(&exec, message, json!({"previousOwner": previous}));
            if let Err(e) = self
                .inner
                .store
                .finish_execution_fenced(&fin, id.as_str(), &hold.owner, hold.token)
                .await
            {
                tracing::warn!(error = %e, "could not mark a taken-over execution interrupted");
                continue;
            }
            let mut ev = event(
                "EXECUTION_INTERRUPTED",
                Some(id.as_str()),
                Some(exec.cli_type.as_str()),
            );
            ev.success = Some(false);
            ev.metadata = json!({"executionId": exec.execution_id, "previousOwner": previous});
            self.inner.events.emit(ev);
        }
    }

    /// Starts the secondary leg of a shadow execution in its own task. It uses its own CLI
    /// session (remembered in memory; a restart starts a new one) and shares the primary's
    /// cancel token, so a cancel stops both legs.
    async fn start_secondary(
        &self,
        agent: &AgentRecord,
        mode: CommMode,
        prompt: &str,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> (CommMode, tokio::task::JoinHandle<RunResult>) {
        let id = agent.spec.agent_id.clone();
        let cli = agent.spec.cli_type;
        let known = self
            .inner
            .shadow_sessions
            .lock()
            .expect("shadow sessions")
            .get(&id)
            .cloned();
        let fresh = uuid::Uuid::new_v4().to_string();
        let (arg, prompt) = match &known {
            Some(sid) => (SessionArg::Resume { session_id: sid }, prompt.to_owned()),
            None => (
                SessionArg::New {
                    preassigned_id: &fresh,
                },
                first_prompt_with_system(cli, agent.spec.system_prompt.as_deref(), prompt),
            ),
        };
        let runner = self.build_runner(agent, mode, arg, prompt, timeout).await;
        let this = self.clone();
        let task = tokio::spawn(async move {
            let runner = match runner {
                Ok(r) => r,
                Err(message) => return spawn_error_result(message),
            };
            let (tx, mut rx) = mpsc::unbounded_channel();
            let run = this.run_runner(&id, cli, runner, cancel, tx, false);
            let sessions = async {
                while let Some(ev) = rx.recv().await {
                    if let ExecEvent::Stream(StreamEvent::SessionId(sid)) = ev {
                        this.inner
                            .shadow_sessions
                            .lock()
                            .expect("shadow sessions")
                            .insert(id.clone(), sid);
                    }
                }
            };
            let (result, ()) = tokio::join!(run, sessions);
            if result.outcome != OutcomeClass::Success {
                // A failed secondary session is not resumed: the next run starts a new one.
                this.inner
                    .shadow_sessions
                    .lock()
                    .expect("shadow sessions")
                    .remove(&id);
            }
            result
        });
        (mode, task)
    }

    /// Compares the two legs, stores the result, and publishes events and metrics.
    async fn record_shadow(
        &self,
        agent: &AgentRecord,
        execution_id: &str,
        primary_mode: CommMode,
        primary: &RunResult,
        _secondary_mode: CommMode,
        secondary: &RunResult,
    ) {
        let (tmux, headless) = if primary_mode == CommMode::Tmux {
            (primary, secondary)
        } else {
            (secondary, primary)
        };
        let ok = |r: &RunResult| r.outcome == OutcomeClass::Success;
        let answer = |r: &RunResult| r.parsed.answer.clone().unwrap_or_default();
        let comparison = if ok(tmux) && ok(headless) {
            let (a, b) = (answer(headless), answer(tmux));
            // A 1 MB comparison takes milliseconds of CPU: keep it off the async workers.
            tokio::task::spawn_blocking(move || {
                kokino_shadow::Comparator::terminal().compare(&a, &b)
            })
            .await
            .ok()
        } else {
            None
        };
        let latency = |r: &RunResult| millis(r.duration) as i64;
        let bounded = |s: String| truncate_utf8(s, SHADOW_ANSWER_MAX);
        let row = kokino_store::NewShadowResult {
            agent_id: agent.spec.agent_id.to_string(),
            execution_id: execution_id.to_owned(),
            primary_mode: primary_mode.as_str().to_owned(),
            tmux_success: ok(tmux),
            headless_success: ok(headless),
            tmux_response: tmux.parsed.answer.clone().map(bounded),
            headless_response: headless.parsed.answer.clone().map(bounded),
            tmux_error: (!ok(tmux)).then(|| tmux.error_message().unwrap_or_default()),
            headless_error: (!ok(headless)).then(|| headless.error_message().unwrap_or_default()),
            tmux_latency_ms: latency(tmux),
            headless_latency_ms: latency(headless),
            similarity: comparison.as_ref().map(|c| c.similarity),
            matched: comparison.as_ref().map(|c| c.matched),
            diff: comparison
                .as_ref()
                .map(|c| c.diff.clone())
                .filter(|d| !d.is_empty()),
        };
        if let Err(e) = self.inner.store.insert_shadow_result(&row).await {
            tracing::warn!(error = %e, "could not store a shadow result");
        }
        let verdict = match (
            ok(tmux),
            ok(headless),
            comparison.as_ref().map(|c| c.matched),
        ) {
            (true, true, Some(true)) => "matched",
            (true, true, _) => "mismatched",
            (true, false, _) => "headless_failed",
            (false, true, _) => "tmux_failed",
            (false, false, _) => "both_failed",
        };
        metrics::counter!(telemetry::SHADOW_RESULTS_TOTAL, "verdict" => verdict).increment(1);
        if let Some(c) = &comparison {
            metrics::histogram!(telemetry::SHADOW_SIMILARITY).record(c.similarity);
            metrics::histogram!(telemetry::SHADOW_LATENCY_DELTA)
                .record((row.headless_latency_ms - row.tmux_latency_ms) as f64 / 1000.0);
        }
        let legs = (
            kokino_shadow::Leg {
                outcome: headless.outcome,
                latency_ms: row.headless_latency_ms.max(0) as u64,
            },
            kokino_shadow::Leg {
                outcome: tmux.outcome,
                latency_ms: row.tmux_latency_ms.max(0) as u64,
            },
        );
        for kind in kokino_shadow::shadow_events(legs.0, legs.1, comparison.as_ref()) {
            let mut ev = event(
                kind.as_str(),
                Some(agent.spec.agent_id.as_str()),
                Some(agent.spec.cli_type.as_str()),
            );
            ev.success = Some(matches!(kind, kokino_shadow::ShadowEvent::ShadowSuccess));
            ev.metadata = json!({
                "executionId": execution_id, "similarity": row.similarity,
                "tmuxLatencyMs": row.tmux_latency_ms, "headlessLatencyMs": row.headless_latency_ms,
                "tmuxError": row.tmux_error, "headlessError": row.headless_error,
            });
            self.inner.events.emit(ev);
        }
    }

    /// Runs the process, keeping the running table, the stored session id and the streaming
    /// client up to date while it runs.
    #[allow(clippy::too_many_arguments)]
    async fn run_process(
        &self,
        agent: &AgentRecord,
        mode: CommMode,
        session: &SessionRecord,
        execution_id: &str,
        token: u64,
        runner: Runner,
        cancel: CancellationToken,
        progress: Option<mpsc::UnboundedSender<Progress>>,
    ) -> RunResult {
        let limits = runner.limits().clone();
        let id = &agent.spec.agent_id;
        let cli = agent.spec.cli_type;
        self.inner.running.lock().expect("running table").insert(
            id.clone(),
            Running {
                token,
                execution_id: execution_id.to_owned(),
                cancel: cancel.clone(),
                pid: None,
                started_at: Utc::now(),
                mode,
                rss_bytes: 0,
                cpu_percent: 0.0,
                max_memory_mb: limits.max_memory_bytes.unwrap_or(0) / (1024 * 1024),
                timeout_ms: millis(limits.timeout),
            },
        );
        metrics::gauge!(telemetry::RUNNING_PROCESSES, "cli" => cli.as_str(), "mode" => mode.as_str())
            .increment(1.0);

        let (tx, mut rx) = mpsc::unbounded_channel();
        let run = self.run_runner(id, cli, runner, cancel, tx, true);
        let consume = async {
            let mut known_session = session
                .cli_session_id
                .clone()
                .filter(|_| session.cli_session_started);
            let mut malformed = 0u64;
            while let Some(ev) = rx.recv().await {
                match ev {
                    ExecEvent::Started {
                        pid,
                        start_time,
                        cli_pid,
                    } => {
                        if let Some(r) = self
                            .inner
                            .running
                            .lock()
                            .expect("running table")
                            .get_mut(id)
                        {
                            if r.token == token {
                                r.pid = Some(pid);
                            }
                        }
                        if let Err(e) = self
                            .inner
                            .store
                            .set_execution_process(execution_id, pid as i64, start_time)
                            .await
                        {
                            tracing::warn!(error = %e, "could not record the process of an execution");
                        }
                        let mut ev =
                            event("PROCESS_STARTED", Some(id.as_str()), Some(cli.as_str()));
                        // `pid` is the CLI's own (what an operator looks for in `ps`); `pgid` its
                        // group, led by the supervisor.
                        ev.metadata = json!({"pid": cli_pid.unwrap_or(pid), "pgid": pid, "executionId": execution_id});
                        self.inner.events.emit(ev);
                        if let Some(p) = &progress {
                            let _ = p.send(Progress::Started {
                                pid,
                                mode,
                                session_id: known_session.clone(),
                            });
                        }
                    }
                    ExecEvent::Sample {
                        rss_bytes,
                        cpu_percent,
                    } => {
                        if let Some(r) = self
                            .inner
                            .running
                            .lock()
                            .expect("running table")
                            .get_mut(id)
                        {
                            if r.token == token {
                                r.rss_bytes = rss_bytes;
                                r.cpu_percent = cpu_percent;
                            }
                        }
                    }
                    ExecEvent::Stream(StreamEvent::SessionId(sid)) => {
                        if known_session.as_deref() != Some(sid.as_str()) {
                            // Persisted the moment it is seen, so that a broker that dies now
                            // still resumes this CLI session next time.
                            if let Err(e) = self
                                .inner
                                .store
                                .set_cli_session(id, &session.conversation_id, &sid)
                                .await
                            {
                                tracing::warn!(error = %e, "could not record the CLI session id");
                            }
                            known_session = Some(sid);
                        }
                    }
                    ExecEvent::Stream(ev) => {
                        if let StreamEvent::Malformed { reason } = &ev {
                            malformed += 1;
                            tracing::debug!(agent = %id, %reason, "malformed CLI output line");
                        }
                        if let Some(p) = &progress {
                            let _ = p.send(Progress::Stream(ev));
                        }
                    }
                }
            }
            malformed
        };
        let (result, malformed) = tokio::join!(run, consume);
        if malformed > 0 {
            metrics::counter!(telemetry::JSONL_PARSE_ERRORS_TOTAL, "cli" => cli.as_str())
                .increment(malformed);
            let mut ev = event("JSONL_PARSE_ERROR", Some(id.as_str()), Some(cli.as_str()));
            ev.metadata = json!({"executionId": execution_id, "lines": malformed});
            self.inner.events.emit(ev);
        }
        {
            let mut running = self.inner.running.lock().expect("running table");
            if running.get(id).is_some_and(|r| r.token == token) {
                running.remove(id);
            }
        }
        metrics::gauge!(telemetry::RUNNING_PROCESSES, "cli" => cli.as_str(), "mode" => mode.as_str())
            .decrement(1.0);
        result
    }

    /// Runs one leg with its executor. `log` sends a headless CLI's lines to the agent's log
    /// (the secondary leg of a shadow run is not logged: the primary's log is the agent's).
    async fn run_runner(
        &self,
        id: &AgentId,
        cli: CliType,
        runner: Runner,
        cancel: CancellationToken,
        tx: mpsc::UnboundedSender<ExecEvent>,
        log: bool,
    ) -> RunResult {
        match runner {
            Runner::Headless(cmd, limits) => {
                let log = log.then(|| {
                    Box::new(self.inner.logs.writer(id)) as Box<dyn kokino_core::LineSink>
                });
                run_headless(cmd, parser_for(cli), limits, cancel, tx, log).await
            }
            Runner::Tmux(req, limits) => {
                let Some(tmux) = &self.inner.tmux else {
                    return spawn_error_result("tmux is not available".into());
                };
                let first = tmux
                    .run(req.clone(), limits.clone(), cancel.clone(), tx.clone())
                    .await;
                // A pane killed by SIGHUP before any answer means the tmux server or session
                // went away under the CLI (tmux itself crashed, or an operator killed it), not
                // that the CLI failed: run it once more in a new session rather than fail.
                let hung_up = first.exit.signal == Some(SIGHUP)
                    && first.parsed.answer.is_none()
                    && !cancel.is_cancelled();
                if hung_up {
                    tracing::warn!(agent = %id, "the tmux pane was hung up before answering; retrying once in a new session");
                    tmux.run(req, limits, cancel, tx).await
                } else {
                    first
                }
            }
        }
    }

    /// Stores the outcome (answer or failure turn, in one transaction), records telemetry, and
    /// turns the run into the caller's answer.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        agent: &AgentRecord,
        mode: CommMode,
        session: &SessionRecord,
        execution_id: &str,
        waited_ms: u64,
        timeout: Duration,
        result: RunResult,
        permit: Option<ExecutionPermit>,
        fence: Option<(&str, i64)>,
    ) -> Result<ExecuteResponse> {
        let id = &agent.spec.agent_id;
        let cli = agent.spec.cli_type;
        let outcome = result.outcome;
        let resilience = &self.inner.resilience;
        if let Some(permit) = permit {
            let reason = result.error_message();
            let transitions = resilience
                .breakers
                .finish(permit, outcome, reason.as_deref());
            resilience
                .publish(transitions, self.inner.tmux.is_some())
                .await;
        }
        if outcome == OutcomeClass::RateLimited {
            // Park the agent until the provider's reset time (a minute when it did not say):
            // a rate limit is not a failure, but hammering a quota that is spent helps nobody.
            let until = result
                .parsed
                .rate_limit_resets_at
                .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
                .filter(|t| *t > Utc::now())
                .unwrap_or_else(|| Utc::now() + chrono::Duration::seconds(60));
            resilience.parking.park(id, until);
        }
        let success = outcome == OutcomeClass::Success;
        let error_message = result.error_message();
        let session_id = result.parsed.session_id.clone().or_else(|| {
            session
                .cli_session_id
                .clone()
                .filter(|_| session.cli_session_started)
        });
        let duration_ms = millis(result.duration);
        let turn_meta = json!({
            "executionId": execution_id,
            "cliType": cli.as_str(),
            "mode": mode.as_str(),
            "outcome": outcome.as_str(),
            "exitCode": result.exit.code,
            "durationMs": duration_ms,
            "sessionId": session_id,
            "usage": result.parsed.usage,
            "costUsd": result.parsed.cost_usd,
            "numTurns": result.parsed.num_turns,
        });
        let (role, content) = if success {
            (
                Role::Assistant,
                result.parsed.answer.clone().unwrap_or_default(),
            )
        } else {
            (
                Role::System,
                format!(
                    "{}: {}",
                    outcome.as_str(),
                    error_message.clone().unwrap_or_default()
                ),
            )
        };
        let finished = FinishExecution {
            execution_id: execution_id.to_owned(),
            outcome,
            exit_code: result.exit.code.map(i64::from),
            error_message: error_message.clone(),
            duration_ms: duration_ms as i64,
            usage: result.parsed.usage,
            cost_usd: result.parsed.cost_usd,
            num_turns: result.parsed.num_turns.map(i64::from),
            peak_rss_mb: Some(result.peak_rss_bytes as f64 / (1024.0 * 1024.0)),
            cli_session_id: session_id.clone(),
            turn: Some(NewTurn {
                turn_id: uuid::Uuid::new_v4().to_string(),
                role,
                content,
                metadata: turn_meta,
            }),
        };
        let turn = match fence {
            Some((owner, token)) => self
                .inner
                .store
                .finish_execution_fenced(&finished, id.as_str(), owner, token)
                .await
                .map_err(lease_error)?,
            None => self.inner.store.finish_execution(&finished).await?,
        };

        metrics::counter!(telemetry::EXECUTIONS_TOTAL,
            "cli" => cli.as_str(), "mode" => mode.as_str(), "outcome" => outcome.as_str())
        .increment(1);
        metrics::histogram!(telemetry::EXECUTION_DURATION,
            "cli" => cli.as_str(), "mode" => mode.as_str(), "outcome" => outcome.as_str())
        .record(result.duration.as_secs_f64());
        if result.peak_rss_bytes > 0 {
            metrics::histogram!(telemetry::PROCESS_PEAK_RSS, "cli" => cli.as_str())
                .record(result.peak_rss_bytes as f64);
        }
        if let Some(pid) = result.pid {
            let mut ev = event("PROCESS_EXITED", Some(id.as_str()), Some(cli.as_str()));
            ev.metadata = json!({
                "pid": pid, "exitCode": result.exit.code, "signal": result.exit.signal,
                "peakRssBytes": result.peak_rss_bytes, "executionId": execution_id,
            });
            self.inner.events.emit(ev);
        }
        if let Some(StopReason::MemoryLimit { rss_bytes }) = result.stop {
            let mut ev = event(
                "PROCESS_LIMIT_EXCEEDED",
                Some(id.as_str()),
                Some(cli.as_str()),
            );
            ev.metadata = json!({"rssBytes": rss_bytes, "executionId": execution_id});
            self.inner.events.emit(ev);
        }
        let event_type = match outcome {
            OutcomeClass::Success => "EXECUTION_COMPLETED",
            OutcomeClass::Timeout => "EXECUTION_TIMEOUT",
            OutcomeClass::Cancelled => "EXECUTION_CANCELLED",
            OutcomeClass::RateLimited => "RATE_LIMITED",
            _ => "EXECUTION_FAILED",
        };
        let mut ev = event(event_type, Some(id.as_str()), Some(cli.as_str()));
        ev.success = Some(success);
        ev.duration_ms = Some(duration_ms as i64);
        ev.metadata = json!({
            "executionId": execution_id, "outcome": outcome.as_str(), "mode": mode.as_str(),
            "exitCode": result.exit.code, "error": error_message,
        });
        self.inner.events.emit(ev);

        let turn = turn.unwrap_or_else(|| Turn {
            turn_id: String::new(),
            conversation_id: session.conversation_id.clone(),
            seq: 0,
            role: Role::System,
            content: String::new(),
            metadata: json!({}),
            created_at: Utc::now(),
        });
        match outcome {
            OutcomeClass::Success => Ok(ExecuteResponse {
                turn_id: turn.turn_id,
                conversation_id: session.conversation_id.clone(),
                content: result.parsed.answer.unwrap_or_default(),
                success: true,
                duration_ms,
                session_id: session_id.clone(),
                mode,
                usage: result.parsed.usage,
                cost_usd: result.parsed.cost_usd,
                num_turns: result.parsed.num_turns,
                metadata: ExecuteMetadata {
                    session_id,
                    exit_code: result.exit.code,
                    cli_type: cli.as_str().to_owned(),
                    waited_ms,
                    execution_id: execution_id.to_owned(),
                },
            }),
            OutcomeClass::Cancelled => Err(ServiceError::Cancelled {
                agent_id: id.to_string(),
                execution_id: execution_id.to_owned(),
            }),
            OutcomeClass::Timeout => Err(ServiceError::Timeout {
                agent_id: id.to_string(),
                execution_id: execution_id.to_owned(),
                timeout_ms: match result.stop {
                    Some(StopReason::Inactivity) => millis(self.inner.cfg.inactivity_timeout),
                    _ => millis(timeout),
                },
            }),
            class => Err(ServiceError::CliFailed {
                agent_id: id.to_string(),
                execution_id: execution_id.to_owned(),
                class,
                exit_code: result.exit.code,
                signal: result.exit.signal,
                stderr_tail: result.stderr_tail,
                message: error_message.unwrap_or_else(|| format!("the CLI failed ({class})")),
                retry_after_secs: result
                    .parsed
                    .rate_limit_resets_at
                    .map(|at| (at - Utc::now().timestamp()).max(1) as u64),
            }),
        }
    }

    /// Cancels the agent's running execution, if any. Returns at once; the signal escalation
    /// continues in the execution's own task.
    pub fn cancel(&self, agent_id: &str) -> Result<CancelResult> {
        let id = AgentId::parse(agent_id)?;
        Ok(match self.running(&id) {
            Some(r) => {
                r.cancel.cancel();
                CancelResult {
                    cancelled: true,
                    agent_id: id.to_string(),
                    pid: r.pid,
                    execution_id: Some(r.execution_id),
                }
            }
            None => CancelResult {
                cancelled: false,
                agent_id: id.to_string(),
                pid: None,
                execution_id: None,
            },
        })
    }

    /// Cancels and waits until the agent's lock is free again (bounded by the kill escalation).
    async fn cancel_and_wait(&self, id: &AgentId) {
        if let Some(r) = self.running(id) {
            r.cancel.cancel();
            let wait = self.inner.cfg.kill_grace + Duration::from_secs(5);
            // Taking the lock proves the cancelled run has finished and stored its outcome.
            let _ = self.inner.locks.acquire(id, wait).await;
        }
    }

    /// Cancels what runs and forgets the CLI session: the next execute starts a new one.
    pub async fn end_session(&self, agent_id: &str) -> Result<EndSessionResult> {
        let id = AgentId::parse(agent_id)?;
        let agent = self.agent(&id).await?;
        self.cancel_and_wait(&id).await;
        if let Some(tmux) = &self.inner.tmux {
            tmux.end_session(id.as_str()).await;
        }
        let ended = self.inner.store.end_session(&id).await?;
        if let Some(s) = &ended {
            let mut ev = event(
                "SESSION_ENDED",
                Some(id.as_str()),
                Some(agent.spec.cli_type.as_str()),
            );
            ev.metadata =
                json!({"sessionId": s.cli_session_id, "conversationId": s.conversation_id});
            self.inner.events.emit(ev);
        }
        Ok(EndSessionResult {
            ended: ended.is_some(),
            agent_id: id.to_string(),
            session_id: ended.and_then(|s| s.cli_session_id),
        })
    }

    /// End-session for every agent that has a session or a running execution.
    pub async fn clear_sessions(&self) -> Result<usize> {
        let mut ended = 0;
        for agent in self.inner.store.list_agents().await? {
            let r = self.end_session(agent.spec.agent_id.as_str()).await?;
            ended += usize::from(r.ended);
        }
        Ok(ended)
    }

    pub async fn sessions_status(&self) -> Result<Vec<SessionStatus>> {
        let agents = self.inner.store.list_agents().await?;
        let sessions: HashMap<AgentId, SessionRecord> = self
            .inner
            .store
            .list_sessions()
            .await?
            .into_iter()
            .map(|s| (s.agent_id.clone(), s))
            .collect();
        Ok(agents
            .into_iter()
            .map(|a| {
                let id = &a.spec.agent_id;
                let lock = self.inner.locks.status(id);
                let running = self.running(id);
                let session = sessions.get(id);
                SessionStatus {
                    agent_id: id.to_string(),
                    session_id: session.and_then(|s| s.cli_session_id.clone()),
                    has_session: session.is_some(),
                    locked: lock.locked,
                    executing: running.is_some(),
                    execution_started_at: running.as_ref().map(|r| r.started_at.timestamp_millis()),
                    queue_length: lock.queue_length,
                    pid: running.as_ref().and_then(|r| r.pid),
                    mode: running.as_ref().map(|r| r.mode).unwrap_or(a.spec.comm_mode),
                    last_activity_at: session.map(|s| s.last_activity_at),
                }
            })
            .collect())
    }

    // ------------------------------------------------------------------ conversations

    /// The agent's current conversation (its session's), else its newest one.
    pub async fn current_conversation(&self, agent_id: &str) -> Result<(Conversation, Vec<Turn>)> {
        let id = AgentId::parse(agent_id)?;
        self.agent(&id).await?;
        let store = &self.inner.store;
        let conv_id = match store.get_session(&id).await? {
            Some(s) => Some(s.conversation_id),
            None => store
                .list_conversations(&id)
                .await?
                .into_iter()
                .next()
                .map(|c| c.conversation_id),
        };
        let conv_id = conv_id.ok_or_else(|| {
            ServiceError::ConversationNotFound(format!("(none yet for agent {id})"))
        })?;
        self.conversation(&conv_id).await
    }

    pub async fn conversations(&self, agent_id: &str) -> Result<Vec<Conversation>> {
        let id = AgentId::parse(agent_id)?;
        self.agent(&id).await?;
        Ok(self.inner.store.list_conversations(&id).await?)
    }

    pub async fn conversation(&self, conversation_id: &str) -> Result<(Conversation, Vec<Turn>)> {
        self.inner
            .store
            .get_conversation(conversation_id)
            .await?
            .ok_or_else(|| ServiceError::ConversationNotFound(conversation_id.to_owned()))
    }

    pub async fn turn(&self, agent_id: &str, turn_id: &str) -> Result<Turn> {
        let id = AgentId::parse(agent_id)?;
        self.agent(&id).await?;
        self.inner
            .store
            .get_turn(&id, turn_id)
            .await?
            .ok_or_else(|| ServiceError::TurnNotFound(turn_id.to_owned()))
    }

    /// Deletes a conversation. Refused while an execution of it is running: deleting the rows
    /// under a live run would lose its answer.
    pub async fn delete_conversation(&self, conversation_id: &str) -> Result<()> {
        let (conv, _) = self.conversation(conversation_id).await?;
        if let Some(r) = self.running(&conv.agent_id) {
            if let Some(exec) = self.inner.store.get_execution(&r.execution_id).await? {
                if exec.conversation_id == conversation_id {
                    return Err(ServiceError::Conflict(format!(
                        "conversation {conversation_id} has a running execution; cancel it first"
                    )));
                }
            }
        }
        self.inner
            .store
            .delete_conversation(conversation_id)
            .await?;
        Ok(())
    }

    // ------------------------------------------------------------------ service

    // ------------------------------------------------------------------ supervision and logs

    /// Live processes with their latest memory and CPU sample.
    pub fn processes_status(&self) -> Vec<ProcessStatus> {
        let now = Utc::now();
        let running = self.inner.running.lock().expect("running table");
        let mut out: Vec<ProcessStatus> = running
            .iter()
            .filter_map(|(id, r)| {
                let pid = r.pid?;
                Some(ProcessStatus {
                    agent_id: id.to_string(),
                    execution_id: r.execution_id.clone(),
                    pid,
                    // Every CLI leads its own process group.
                    pgid: pid,
                    mode: r.mode,
                    started_at: r.started_at,
                    age_ms: (now - r.started_at).num_milliseconds().max(0),
                    memory_mb: r.rss_bytes as f64 / (1024.0 * 1024.0),
                    cpu_percent: r.cpu_percent,
                    limits: ProcessLimits {
                        max_memory_mb: r.max_memory_mb,
                        timeout_ms: r.timeout_ms,
                    },
                })
            })
            .collect();
        out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        out
    }

    pub async fn agent_logs(&self, agent_id: &str, lines: usize) -> Result<AgentLogTail> {
        let id = AgentId::parse(agent_id)?;
        self.agent(&id).await?;
        let logs = self.inner.logs.clone();
        let tail_id = id.clone();
        let content = tokio::task::spawn_blocking(move || logs.tail(&tail_id, lines))
            .await
            .map_err(|e| ServiceError::Internal(format!("log reader failed: {e}")))?
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok(AgentLogTail {
            agent_id: id.to_string(),
            lines: if content.is_empty() {
                0
            } else {
                content.lines().count()
            },
            content,
        })
    }

    pub fn logs(&self) -> &AgentLogs {
        &self.inner.logs
    }

    /// Ends sessions idle for longer than `stale_session_after` (the CLI session id stays in the
    /// conversation's history). Agents that are executing right now are left alone.
    pub async fn sweep_stale_sessions(&self) -> Result<Vec<SessionRecord>> {
        let cutoff = self.inner.clock.now()
            - chrono::Duration::from_std(self.inner.cfg.stale_session_after).unwrap_or_default();
        let busy: Vec<AgentId> = self
            .inner
            .running
            .lock()
            .expect("running table")
            .keys()
            .cloned()
            .collect();
        let mut ended = Vec::new();
        for s in self.inner.store.list_sessions().await? {
            if s.last_activity_at >= cutoff || busy.contains(&s.agent_id) {
                continue;
            }
            if let Some(e) = self.inner.store.end_session(&s.agent_id).await? {
                let mut ev = event("SESSION_ENDED", Some(s.agent_id.as_str()), None);
                ev.metadata = json!({
                    "sessionId": e.cli_session_id, "conversationId": e.conversation_id,
                    "reason": "stale", "lastActivityAt": e.last_activity_at,
                });
                self.inner.events.emit(ev);
                ended.push(e);
            }
        }
        if !ended.is_empty() {
            tracing::info!(count = ended.len(), "ended stale sessions");
        }
        Ok(ended)
    }

    // ------------------------------------------------------------------ breakers and fallback

    pub fn circuits_status(&self) -> Vec<kokino_core::breaker::CircuitStatus> {
        self.inner.resilience.circuits()
    }

    /// Resets the agent's breaker; returns its previous state.
    pub async fn reset_agent_circuit(&self, agent_id: &str) -> Result<String> {
        let id = AgentId::parse(agent_id)?;
        self.agent(&id).await?;
        Ok(self
            .inner
            .resilience
            .reset(&Scope::Agent(id), self.inner.tmux.is_some())
            .await)
    }

    pub async fn reset_cli_circuit(&self, cli: CliType) -> Result<String> {
        Ok(self
            .inner
            .resilience
            .reset(&Scope::Cli(cli), self.inner.tmux.is_some())
            .await)
    }

    pub fn fallback_status(&self) -> FallbackStatus {
        self.inner.resilience.fallback_status()
    }

    pub async fn disable_cli(&self, cli: CliType, reason: &str) -> Result<()> {
        self.inner.resilience.disable_cli(cli, reason).await
    }

    pub async fn enable_cli(&self, cli: CliType) -> Result<bool> {
        self.inner.resilience.enable_cli(cli).await
    }

    /// Forces an agent to run through tmux. Refused when it could not run there: a fallback
    /// that turns every request into a 503 is worse than none.
    pub async fn force_agent(&self, agent_id: &str, reason: &str) -> Result<()> {
        let id = AgentId::parse(agent_id)?;
        self.agent(&id).await?;
        if self.inner.tmux.is_none() {
            return Err(ServiceError::Conflict(format!(
                "cannot force agent {id} to tmux: tmux is not available on this host"
            )));
        }
        self.inner.resilience.force_agent(&id, reason).await
    }

    pub async fn clear_agent_fallback(&self, agent_id: &str) -> Result<bool> {
        let id = AgentId::parse(agent_id)?;
        self.inner.resilience.clear_agent(&id).await
    }

    pub async fn clear_all_fallbacks(&self) -> Result<usize> {
        self.inner.resilience.clear_all().await
    }

    /// Whether tmux can run agents on this host.
    pub fn tmux_available(&self) -> bool {
        self.inner.tmux.is_some()
    }

    // ------------------------------------------------------------------ shadow mode

    pub async fn shadow_metrics(&self, days: u32) -> Result<crate::shadow::ShadowMetrics> {
        let since = self.inner.clock.now() - chrono::Duration::days(i64::from(days));
        let s = self.inner.store.shadow_summary(since).await?;
        Ok(crate::shadow::metrics(days, &s))
    }

    pub async fn shadow_mismatches(&self, limit: u32) -> Result<Vec<crate::shadow::Mismatch>> {
        Ok(self
            .inner
            .store
            .shadow_mismatches(limit)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    pub async fn shadow_failures(
        &self,
        leg: CommMode,
        limit: u32,
    ) -> Result<Vec<kokino_store::ShadowResult>> {
        Ok(self
            .inner
            .store
            .shadow_failures(leg.as_str(), limit)
            .await?)
    }

    pub async fn shadow_decision(&self) -> Result<crate::shadow::Decision> {
        let now = self.inner.clock.now();
        let s = self
            .inner
            .store
            .shadow_summary(now - chrono::Duration::days(365))
            .await?;
        let corruption = match *self.inner.last_integrity.lock().expect("integrity cache") {
            Some(clean) => 1.0 - clean,
            None => 0.0,
        };
        Ok(crate::shadow::decision(&s, now, corruption))
    }

    /// Moves every shadow agent to `to` (headless or tmux); returns how many changed.
    pub async fn shadow_disable_all(&self, to: CommMode) -> Result<usize> {
        if to == CommMode::Shadow {
            return Err(ServiceError::BadRequest {
                field: Some("to"),
                message: "to must be headless or tmux".into(),
            });
        }
        let mut changed = 0;
        for mut agent in self.inner.store.list_agents().await? {
            if agent.spec.comm_mode == CommMode::Shadow {
                agent.spec.comm_mode = to;
                self.inner.store.upsert_agent(&agent.spec).await?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    // ------------------------------------------------------------------ environment doctor

    fn doctor_config(&self) -> kokino_doctor::DoctorConfig {
        let cfg = &self.inner.cfg;
        let mut d = kokino_doctor::DoctorConfig::from_process_env(&cfg.data_dir);
        for cli in CliType::ALL {
            d.binaries.insert(*cli, cfg.binary_for(*cli).to_owned());
            d.conflicting_vars.insert(*cli, cfg.conflicting_for(*cli));
        }
        d.check_timeout = cfg.doctor_check_timeout;
        d.disk_warn_pct = cfg.disk_warn_pct;
        d.disk_fail_pct = cfg.disk_fail_pct;
        d
    }

    /// Runs the doctor for the given CLI types (all when `None`): records the versions seen,
    /// the `ENV_*` events and metrics, and feeds the automatic CLI disable/enable of fallback.
    /// Binary lookups are refreshed, as they are on every doctor run.
    pub async fn environment(&self, cli: Option<CliType>) -> kokino_doctor::EnvironmentReport {
        let cfg = self.doctor_config();
        let clis: Vec<CliType> = match cli {
            Some(c) => vec![c],
            None => CliType::ALL.to_vec(),
        };
        self.inner.binaries.lock().expect("binary cache").clear();
        // The CLI types are checked concurrently: each check has its own timeout, so the whole
        // report takes about as long as the slowest CLI, not the sum.
        let mut set = tokio::task::JoinSet::new();
        for (i, c) in clis.iter().enumerate() {
            let (cfg, c) = (cfg.clone(), *c);
            set.spawn(async move { (i, kokino_doctor::check_cli(&cfg, c).await) });
        }
        let mut indexed = Vec::new();
        while let Some(joined) = set.join_next().await {
            if let Ok(r) = joined {
                indexed.push(r);
            }
        }
        indexed.sort_by_key(|(i, _)| *i);
        let results: Vec<kokino_doctor::CliReport> = indexed.into_iter().map(|(_, r)| r).collect();
        let agents = self.inner.store.list_agents().await.unwrap_or_default();
        for r in &results {
            let cli = r.cli_type;
            for check in &r.checks {
                let result = if check.passed { "pass" } else { "fail" };
                metrics::counter!(telemetry::ENV_CHECKS_TOTAL,
                    "cli" => cli.as_str(), "check" => check.name.as_str(), "result" => result)
                .increment(1);
            }
            metrics::gauge!(telemetry::ENV_CHECK_FAILING, "cli" => cli.as_str()).set(if r.passed {
                0.0
            } else {
                1.0
            });
            for kind in r.event_types() {
                let mut ev = event(kind, None, Some(cli.as_str()));
                ev.success = Some(r.passed);
                ev.duration_ms = Some(r.duration_ms as i64);
                ev.metadata = json!({
                    "failed": r.checks.iter().filter(|c| !c.passed).map(|c| json!({"check": c.name.as_str(), "message": c.message})).collect::<Vec<_>>(),
                    "warnings": r.warnings, "version": r.version,
                });
                self.inner.events.emit(ev);
            }
            if let Some(version) = &r.version {
                let using: Vec<String> = agents
                    .iter()
                    .filter(|a| a.spec.cli_type == cli)
                    .map(|a| a.spec.agent_id.to_string())
                    .collect();
                if let Err(e) = self
                    .inner
                    .store
                    .record_cli_version(cli.as_str(), version, &using)
                    .await
                {
                    tracing::warn!(error = %e, "could not record a CLI version");
                }
            }
            // Only CLI types some headless agent uses are disabled automatically: disabling an
            // uninstalled CLI nobody runs would only put noise in the fallback status.
            let used = agents
                .iter()
                .any(|a| a.spec.cli_type == cli && a.spec.binary.is_none());
            let reason = r
                .checks
                .iter()
                .find(|c| !c.passed)
                .map(|c| {
                    format!(
                        "environment doctor: {} check failed: {}",
                        c.name.as_str(),
                        c.message
                    )
                })
                .unwrap_or_else(|| "environment doctor passed".into());
            if used || r.passed {
                self.inner
                    .resilience
                    .doctor_verdict(cli, r.passed, &reason)
                    .await;
            }
        }
        kokino_doctor::EnvironmentReport::from_results(self.inner.clock.now(), results)
    }

    pub async fn cli_versions(&self) -> Result<Vec<kokino_store::CliVersionRow>> {
        Ok(self.inner.store.list_cli_versions().await?)
    }

    // ------------------------------------------------------------------ integrity

    /// Runs every integrity check; records events for what it finds and keeps the result for
    /// the integrity SLO.
    pub async fn integrity_check(&self) -> Result<crate::integrity::IntegrityReport> {
        let started = Instant::now();
        let store = &self.inner.store;
        let mut issues = store.integrity_findings().await?;
        for exec in self.stuck_executions().await? {
            issues.push(kokino_store::IntegrityFinding {
                kind: "execution_stuck_running".into(),
                conversation_id: exec.conversation_id.clone(),
                turn_id: None,
                message: format!(
                    "execution {} of agent {} is recorded as running but no process runs it",
                    exec.execution_id, exec.agent_id
                ),
            });
        }
        let totals = store.integrity_totals().await?;
        let orphaned = issues.iter().filter(|i| i.kind == "orphaned_turn").count() as u64;
        let mut with_issues: Vec<String> =
            issues.iter().map(|i| i.conversation_id.clone()).collect();
        with_issues.sort_unstable();
        with_issues.dedup();
        let report = crate::integrity::IntegrityReport {
            passed: issues.is_empty(),
            checked_at: self.inner.clock.now(),
            duration_ms: millis(started.elapsed()),
            total_conversations: totals.conversations,
            total_turns: totals.turns,
            orphaned_turns: orphaned,
            conversations_with_issues: with_issues.len() as u64,
            issues,
        };
        if orphaned > 0 {
            let mut ev = event("ORPHAN_DETECTED", None, None);
            ev.success = Some(false);
            ev.metadata = json!({"orphanedTurns": orphaned});
            self.inner.events.emit(ev);
        }
        // One event per affected conversation, bounded so a badly damaged store cannot flood
        // the event table.
        for conv in with_issues.iter().take(100) {
            let kinds: Vec<&str> = report
                .issues
                .iter()
                .filter(|i| i.conversation_id == *conv)
                .map(|i| i.kind.as_str())
                .collect();
            let mut ev = event("CONVERSATION_INTEGRITY_FAIL", None, None);
            ev.success = Some(false);
            ev.metadata = json!({"conversationId": conv, "issues": kinds});
            self.inner.events.emit(ev);
        }
        metrics::gauge!(telemetry::INTEGRITY_ISSUES).set(report.issues.len() as f64);
        *self.inner.last_integrity.lock().expect("integrity cache") = Some(report.clean_ratio());
        Ok(report)
    }

    /// Executions the store says are running that this broker is not running (and whose
    /// recorded process, if any, is gone).
    async fn stuck_executions(&self) -> Result<Vec<kokino_core::ExecutionRecord>> {
        let live: Vec<String> = self
            .inner
            .running
            .lock()
            .expect("running table")
            .values()
            .map(|r| r.execution_id.clone())
            .collect();
        let running = match &self.inner.cfg.cluster {
            Some(c) => {
                self.inner
                    .store
                    .running_executions_of(&c.instance_id)
                    .await?
            }
            None => self.inner.store.running_executions().await?,
        };
        Ok(running
            .into_iter()
            .filter(|e| !live.contains(&e.execution_id))
            .filter(|e| match (e.pid, e.pid_start_time) {
                (Some(pid), Some(start)) => {
                    !kokino_exec::procfs::is_same_process(pid as i32, start)
                }
                _ => true,
            })
            .collect())
    }

    pub async fn integrity_stats(&self) -> Result<crate::integrity::IntegrityStats> {
        let t = self.inner.store.integrity_totals().await?;
        Ok(crate::integrity::IntegrityStats {
            total_conversations: t.conversations,
            total_turns: t.turns,
            conversations_by_agent: t.conversations_by_agent.into_iter().collect(),
            turns_by_role: crate::integrity::TurnsByRole {
                user: t.user_turns,
                assistant: t.assistant_turns,
                system: t.system_turns,
            },
            average_turns_per_conversation: if t.conversations == 0 {
                0.0
            } else {
                t.turns as f64 / t.conversations as f64
            },
        })
    }

    /// Repairs what is safe: deletes orphaned turns and dangling sessions, renumbers gapped
    /// conversations, marks stuck executions `interrupted`. Role-order problems are reported by
    /// the check but never rewritten: there is no safe way to guess the right order.
    pub async fn integrity_cleanup(&self) -> Result<crate::integrity::IntegrityCleanup> {
        let (deleted, renumbered) = self.inner.store.integrity_repair().await?;
        let mut interrupted = 0u64;
        for exec in self.stuck_executions().await? {
            self.mark_interrupted(&exec).await?;
            interrupted += 1;
        }
        let repaired = renumbered + interrupted;
        let message = format!(
            "deleted {deleted} orphaned rows, renumbered {renumbered} conversations, marked {interrupted} stuck executions interrupted"
        );
        tracing::info!("{message}");
        Ok(crate::integrity::IntegrityCleanup {
            deleted,
            repaired,
            message,
        })
    }

    // ------------------------------------------------------------------ SLOs and queries

    pub async fn slo_status(&self) -> Result<crate::slo::SloStatus> {
        let now = self.inner.clock.now();
        let integrity = *self.inner.last_integrity.lock().expect("integrity cache");
        let window = chrono::Duration::days(self.inner.cfg.slo.availability_window_days);
        let shadow = self.inner.store.shadow_summary(now - window).await?;
        let correctness = crate::shadow::match_rate(&shadow);
        Ok(crate::slo::slo_status(
            &self.inner.store,
            &self.inner.cfg.slo,
            now,
            correctness,
            integrity,
        )
        .await?)
    }

    pub async fn failures_by_cli(&self, hours: u32) -> Result<Vec<crate::slo::CliFailures>> {
        let since = self.inner.clock.now() - chrono::Duration::hours(i64::from(hours));
        Ok(crate::slo::failures_by_cli(&self.inner.store, since).await?)
    }

    pub async fn failures_by_agent(&self, hours: u32) -> Result<Vec<crate::slo::AgentFailures>> {
        let since = self.inner.clock.now() - chrono::Duration::hours(i64::from(hours));
        Ok(crate::slo::failures_by_agent(&self.inner.store, since).await?)
    }

    pub async fn latency_by_agent(&self, hours: u32) -> Result<Vec<crate::slo::AgentLatency>> {
        let since = self.inner.clock.now() - chrono::Duration::hours(i64::from(hours));
        Ok(crate::slo::latency_by_agent(&self.inner.store, since).await?)
    }

    /// Deletes telemetry events older than `days` days; returns how many.
    pub async fn cleanup_events(&self, days: u32) -> Result<u64> {
        if days == 0 {
            return Err(ServiceError::BadRequest {
                field: Some("days"),
                message: "days must be at least 1".into(),
            });
        }
        let cutoff = self.inner.clock.now() - chrono::Duration::days(i64::from(days));
        let deleted = self.inner.store.delete_events_before(cutoff).await?;
        if deleted > 0 {
            tracing::info!(deleted, days, "deleted old telemetry events");
        }
        Ok(deleted)
    }

    /// Starts the periodic jobs: the stale-session sweep (hourly by default) and the pruning of
    /// old rotated logs (daily). They stop when the broker shuts down.
    pub fn spawn_maintenance(&self) {
        let this = self.clone();
        self.inner.tasks.spawn(async move {
            let cfg = &this.inner.cfg;
            let start = tokio::time::Instant::now();
            let mut sweep = tokio::time::interval_at(start + cfg.stale_sweep_every, cfg.stale_sweep_every);
            let mut prune = tokio::time::interval_at(start + cfg.log_prune_every, cfg.log_prune_every);
            let doctor_every = cfg.doctor_every.unwrap_or(Duration::from_secs(365 * 24 * 3600));
            // The first doctor run happens right at start, then every `doctor_every`.
            let mut doctor = tokio::time::interval(doctor_every);
            let doctor_on = cfg.doctor_every.is_some();
            // With several brokers, breakers and overrides changed elsewhere are picked up
            // every two seconds.
            let mut shared = tokio::time::interval(Duration::from_secs(2));
            let cluster = cfg.cluster.is_some();
            let mut nightly = tokio::time::Instant::now()
                + until_next_local_hour(chrono::Local::now(), cfg.integrity_check_hour);
            loop {
                tokio::select! {
                    _ = this.inner.stop.cancelled() => return,
                    _ = shared.tick(), if cluster => {
                        if let Err(e) = this.inner.resilience.reload().await {
                            tracing::warn!(error = %e, "could not reload shared breaker and fallback state");
                        }
                    }
                    _ = doctor.tick(), if doctor_on => {
                        let report = this.environment(None).await;
                        if !report.overall {
                            let failing: Vec<&str> = report.results.iter().filter(|r| !r.passed).map(|r| r.cli_type.as_str()).collect();
                            tracing::warn!(?failing, "environment doctor found problems");
                        }
                    }
                    _ = tokio::time::sleep_until(nightly) => {
                        match this.integrity_check().await {
                            Ok(r) if !r.passed => tracing::warn!(issues = r.issues.len(), "nightly integrity check found issues"),
                            Ok(_) => tracing::info!("nightly integrity check passed"),
                            Err(e) => tracing::warn!(error = %e, "nightly integrity check failed to run"),
                        }
                        nightly = tokio::time::Instant::now()
                            + until_next_local_hour(chrono::Local::now(), cfg.integrity_check_hour);
                    }
                    _ = sweep.tick() => {
                        if let Err(e) = this.sweep_stale_sessions().await {
                            tracing::warn!(error = %e, "stale-session sweep failed");
                        }
                    }
                    _ = prune.tick() => {
                        if let Err(e) = this.cleanup_events(this.inner.cfg.event_retention_days).await {
                            tracing::warn!(error = %e, "event retention failed");
                        }
                        let logs = this.inner.logs.clone();
                        let now = std::time::SystemTime::from(this.inner.clock.now());
                        match tokio::task::spawn_blocking(move || logs.prune(now, false)).await {
                            Ok(Ok(done)) if !done.deleted.is_empty() => {
                                tracing::info!(deleted = done.deleted.len(), "pruned old agent logs");
                            }
                            Ok(Err(e)) => tracing::warn!(error = %e, "log pruning failed"),
                            _ => {}
                        }
                    }
                }
            }
        });
    }

    pub async fn health(&self) -> Health {
        let mut reasons = Vec::new();
        let agents = match self.inner.store.list_agents().await {
            Ok(a) => a.len(),
            Err(e) => {
                reasons.push(format!("store unreachable: {e}"));
                0
            }
        };
        if let Err(e) = self.inner.store.ping().await {
            if reasons.is_empty() {
                reasons.push(format!("store unreachable: {e}"));
            }
        }
        Health {
            status: if reasons.is_empty() { "ok" } else { "degraded" },
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.inner.started.elapsed().as_secs(),
            agents,
            executing: self.inner.running.lock().expect("running table").len(),
            store: self.inner.store.kind(),
            instance_id: self.inner.instance_id.clone(),
            reasons,
        }
    }

    /// Pings the store and records the answer in `kokino_store_up`, for the scrape that asked.
    /// The ping is bounded by two seconds: a database that hangs instead of refusing must not
    /// stall the scrape past Prometheus's timeout, which would hide the outage as a missing
    /// target instead of reporting it.
    pub async fn record_store_up(&self) -> bool {
        let up = matches!(
            tokio::time::timeout(Duration::from_secs(2), self.inner.store.ping()).await,
            Ok(Ok(()))
        );
        metrics::gauge!(telemetry::STORE_UP).set(if up { 1.0 } else { 0.0 });
        up
    }

    /// Stops accepting executions, cancels the running ones (recorded as `cancelled`) and waits
    /// for them to finish, so that no CLI outlives the broker.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        self.inner.stop.cancel();
        let running: Vec<Running> = self
            .inner
            .running
            .lock()
            .expect("running table")
            .values()
            .cloned()
            .collect();
        for r in &running {
            r.cancel.cancel();
        }
        self.inner.tasks.close();
        let wait = self.inner.cfg.kill_grace + Duration::from_secs(5);
        if tokio::time::timeout(wait, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!("some executions did not stop in time");
        }
        if let Some(tmux) = &self.inner.tmux {
            tmux.kill_server().await;
        }
    }
}

fn session_view(s: SessionRecord) -> SessionView {
    SessionView {
        conversation_id: s.conversation_id,
        has_session: true,
        session_id: s.cli_session_id.filter(|_| s.cli_session_started),
        created_at: s.created_at,
        last_activity_at: s.last_activity_at,
    }
}

/// How one leg of an execution runs.
enum Runner {
    Headless(HeadlessCommand, Limits),
    Tmux(TmuxRequest, Limits),
}

impl Runner {
    fn limits(&self) -> &Limits {
        match self {
            Runner::Headless(_, l) | Runner::Tmux(_, l) => l,
        }
    }
}

/// The result of a run that could not start at all.
fn spawn_error_result(message: String) -> RunResult {
    RunResult {
        outcome: OutcomeClass::SpawnError,
        parsed: Default::default(),
        exit: Default::default(),
        stop: None,
        stderr_tail: String::new(),
        duration: Duration::ZERO,
        peak_rss_bytes: 0,
        pid: None,
        spawn_error: Some(message),
    }
}

/// Time from `now` until the next `hour`:00 local time (tomorrow's if it has passed today).
fn until_next_local_hour(now: chrono::DateTime<chrono::Local>, hour: u32) -> Duration {
    use chrono::{Days, TimeZone};
    let hour = hour.min(23);
    let today = now
        .date_naive()
        .and_hms_opt(hour, 0, 0)
        .expect("valid hour");
    let mut next = chrono::Local
        .from_local_datetime(&today)
        .earliest()
        .unwrap_or(now);
    if next <= now {
        let tomorrow = today.checked_add_days(Days::new(1)).unwrap_or(today);
        next = chrono::Local
            .from_local_datetime(&tomorrow)
            .earliest()
            .unwrap_or(now + chrono::Duration::days(1));
    }
    (next - now).to_std().unwrap_or(Duration::from_secs(3600))
}

/// The record of an execution that no process will finish: outcome `interrupted`, with a
/// `system` turn carrying `message` (and `extra` metadata).
fn interrupted_finish(
    exec: &kokino_core::ExecutionRecord,
    message: String,
    mut extra: serde_json::Value,
) -> FinishExecution {
    extra["executionId"] = json!(exec.execution_id);
    extra["outcome"] = json!("interrupted");
    FinishExecution {
        execution_id: exec.execution_id.clone(),
        outcome: OutcomeClass::Interrupted,
        exit_code: None,
        error_message: Some(message.clone()),
        duration_ms: (Utc::now() - exec.started_at).num_milliseconds().max(0),
        usage: None,
        cost_usd: None,
        num_turns: None,
        peak_rss_mb: None,
        cli_session_id: None,
        turn: Some(NewTurn {
            turn_id: uuid::Uuid::new_v4().to_string(),
            role: Role::System,
            content: message,
            metadata: extra,
        }),
    }
}

/// Stored shadow answers are cut at this size: the comparison already saw them whole.
const SHADOW_ANSWER_MAX: usize = 256 * 1024;

fn truncate_utf8(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("…[truncated]");
    }
    s
}

/// Which leg answers a shadow agent's caller: tmux by default, as in the operations guide;
/// `metadata.shadowPrimary = "headless"` switches it.
fn shadow_primary(agent: &AgentRecord) -> CommMode {
    match agent
        .spec
        .metadata
        .get("shadowPrimary")
        .and_then(|v| v.as_str())
    {
        Some("headless") => CommMode::Headless,
        _ => CommMode::Tmux,
    }
}

/// A write refused because this broker's lease is stale is a conflict the caller can retry,
/// not a store outage.
fn lease_error(e: kokino_store::StoreError) -> ServiceError {
    match e {
        kokino_store::StoreError::StaleLease { .. } => ServiceError::Conflict(format!(
            "{e}; this broker lost the agent while it ran, the result was not stored; retry the request"
        )),
        other => other.into(),
    }
}

/// SIGHUP's number on Linux (the service does not link libc for one constant).
const SIGHUP: i32 = 1;

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_nightly_job_waits_for_the_next_occurrence_of_its_hour() {
        let at = |h, m| {
            chrono::Local
                .with_ymd_and_hms(2026, 3, 10, h, m, 0)
                .unwrap()
        };
        assert_eq!(
            until_next_local_hour(at(1, 30), 2),
            Duration::from_secs(30 * 60)
        );
        assert_eq!(
            until_next_local_hour(at(2, 0), 2),
            Duration::from_secs(24 * 3600)
        );
        assert_eq!(
            until_next_local_hour(at(23, 0), 2),
            Duration::from_secs(3 * 3600)
        );
    }
}
