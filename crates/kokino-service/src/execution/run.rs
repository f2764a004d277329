//! One execution with the agent's lock held: the per-execution context ([`Execution`]) and
//! the steps that use it — begin (session, user turn), run the leg(s), finish, release.

use std::time::{Duration, Instant};

use chrono::Utc;
use kokino_cli::{first_prompt_with_system, SessionArg, StreamEvent};
use kokino_core::breaker::ExecutionPermit;
use kokino_core::lock::LockGuard;
use kokino_core::{AgentRecord, CommMode, NewExecution, SessionRecord};
use kokino_exec::{CancellationToken, ExecEvent, RunResult, StdinGate};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::runner::{self, Leg, Output, Runner};
use crate::cluster::LeaseHold;
use crate::model::{ExecuteRequest, ExecuteResponse, Progress};
use crate::shadow::legs as shadow_legs;
use crate::state::{millis, Running};
use crate::telemetry::{self, event};
use crate::{Broker, ServiceError};

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// A request for one execution of an agent, as admitted.
pub(crate) struct Request {
    pub agent: AgentRecord,
    /// The mode admission chose (`shadow` runs two legs).
    pub mode: CommMode,
    pub req: ExecuteRequest,
    pub progress: Option<mpsc::UnboundedSender<Progress>>,
}

/// An admitted execution that holds its agent's lock (and lease) but has not started.
pub(crate) struct Admitted {
    pub request: Request,
    pub guard: LockGuard,
    pub lease: Option<LeaseHold>,
    pub permit: Option<ExecutionPermit>,
    /// When the service took the request, for the phase timings.
    pub entered: Instant,
}

/// One execution once its user turn is stored: what running it, storing its outcome and
/// answering the caller need.
pub(crate) struct Execution {
    pub agent: AgentRecord,
    pub mode: CommMode,
    pub prompt: String,
    pub session: SessionRecord,
    /// The CLI session to resume, when the CLI has started one.
    pub resume_id: Option<String>,
    /// The id a new CLI session gets. Fresh on every attempt: if an earlier attempt got far
    /// enough for the CLI to register the id but not far enough for us to see it, reusing it
    /// would fail with "already in use".
    pub fresh_id: String,
    pub execution_id: String,
    pub waited_ms: u64,
    pub timeout: Duration,
    /// The lock guard's token, which identifies this run in the running table.
    pub token: u64,
    /// Set when this run starts a new CLI session seeded with the stored conversation (the CLI
    /// could not resume its own, or the request asked for it): the session it replaces.
    pub rehydrated_from: Option<String>,
    /// The seeded first prompt of a rehydrated run.
    pub seeded_prompt: Option<String>,
    pub progress: Option<mpsc::UnboundedSender<Progress>>,
    /// When the user turn was being stored, for the phase timings.
    pub phase: Instant,
}

impl Execution {
    /// The CLI session argument of the primary leg.
    fn session_arg(&self) -> SessionArg<'_> {
        match &self.resume_id {
            Some(sid) => SessionArg::Resume { session_id: sid },
            None => SessionArg::New {
                preassigned_id: &self.fresh_id,
            },
        }
    }

    /// The prompt the CLI receives: a new session carries the system prompt where the CLI
    /// has no flag for it.
    fn cli_prompt(&self) -> String {
        if let Some(seeded) = &self.seeded_prompt {
            let system = self.agent.spec.system_prompt.as_deref();
            first_prompt_with_system(self.agent.spec.cli_type, system, seeded)
        } else if self.resume_id.is_some() {
            self.prompt.clone()
        } else {
            let system = self.agent.spec.system_prompt.as_deref();
            first_prompt_with_system(self.agent.spec.cli_type, system, &self.prompt)
        }
    }

    /// The CLI session known when the run starts (only one the CLI has started).
    pub(crate) fn known_session(&self) -> Option<String> {
        self.session
            .cli_session_id
            .clone()
            .filter(|_| self.session.cli_session_started)
    }
}

/// What the execution holds until it ends: the lock, the lease and the lease's renewal.
struct Holds {
    guard: LockGuard,
    lease: Option<LeaseHold>,
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl Holds {
    /// The lease every write of the execution is fenced with.
    fn fence(&self) -> Option<(&str, i64)> {
        self.lease.as_ref().map(|l| (l.owner.as_str(), l.token))
    }

    /// Stops renewing, releases the lease, then the lock: the next waiter sees a finished run.
    /// When the agent's next run already waits for the lock here, the lease is parked for it
    /// instead (see [`crate::cluster::ParkedLeases`]).
    async fn release(self, b: &Broker) {
        if let Some(r) = self.renewal {
            r.abort();
        }
        if let Some(l) = self.lease {
            match &b.inner.cfg.cluster {
                Some(c) if self.guard.others_waiting() && l.can_hand_over(c) => {
                    crate::cluster::park(
                        &b.inner.parked_leases,
                        l,
                        c,
                        &b.inner.tasks,
                        &b.inner.stop,
                    )
                }
                _ => l.release().await,
            }
        }
        drop(self.guard);
    }
}

/// The execution proper, with the lock held.
pub(super) async fn run(b: &Broker, admitted: Admitted) -> Result<ExecuteResponse> {
    let (permit, entered) = (admitted.permit, admitted.entered);
    let mut holds = Holds {
        guard: admitted.guard,
        lease: admitted.lease,
        renewal: None,
    };
    let rehydrate = admitted.request.req.rehydrate;
    let (mut exec, new_execution) = prepare(b, admitted.request, &holds).await?;
    let rehydrating = rehydrate && exec.resume_id.is_some();
    let cancel = CancellationToken::new();
    // In shadow mode the primary leg answers and is stored like any run; the secondary runs
    // beside it with its own CLI session and only feeds the comparison.
    let (primary_mode, secondary_mode) = shadow_legs::modes(&exec);
    let (persisted_user_turn, mut result, secondary) = if primary_mode == CommMode::Headless
        && secondary_mode.is_none()
        && !rehydrating
    {
        // A plain headless run: the CLI starts while the user turn is being stored, and
        // gets its prompt once that is done, so the store's write and the CLI's start
        // overlap. Until then the CLI has nothing to act on; if the write fails, the run
        // is stopped without the CLI ever reading a prompt.
        holds.renewal = spawn_renewal(b, &exec, holds.lease.as_ref(), &cancel);
        // The sender lives until the run has ended: a prompt held back stays held back
        // (stdin open) until the stopped CLI is gone.
        let (gate, gate_rx) = watch::channel(None);
        let stored = async {
            let stored = store_begin(b, &exec, &new_execution, &holds).await;
            let _ = gate.send(Some(stored.is_ok()));
            if stored.is_err() {
                cancel.cancel();
            }
            (stored, exec.phase.elapsed())
        };
        let run = run_primary(b, &exec, primary_mode, cancel.clone(), Some(gate_rx));
        let ((stored, persisted), result) = tokio::join!(stored, run);
        if let Err(e) = stored {
            holds.release(b).await;
            return Err(e);
        }
        (persisted, result, None)
    } else {
        store_begin(b, &exec, &new_execution, &holds).await?;
        if rehydrating {
            super::rehydrate::prepare(b, &mut exec, "requested").await?;
        }
        let persisted = exec.phase.elapsed();
        holds.renewal = spawn_renewal(b, &exec, holds.lease.as_ref(), &cancel);
        let secondary = match secondary_mode {
            Some(mode) => Some(shadow_legs::start_secondary(b, &exec, mode, cancel.clone()).await),
            None => None,
        };
        let result = run_primary(b, &exec, primary_mode, cancel.clone(), None).await;
        (persisted, result, secondary)
    };
    // The CLI no longer has the session it was asked to resume (its files were cleaned up,
    // `HOME` was wiped, the agent moved machines): continue in a new CLI session seeded with
    // the stored conversation rather than fail this and every later execute.
    if result.parsed.session_not_found && exec.resume_id.is_some() && !cancel.is_cancelled() {
        super::rehydrate::prepare(b, &mut exec, "session_not_found").await?;
        result = run_primary(b, &exec, primary_mode, cancel, None).await;
    }
    let primary_result = secondary.as_ref().map(|_| result.clone());
    let ran = exec.phase.elapsed();
    let answer = super::finish::finish(b, &exec, result, permit, holds.fence()).await;
    // Where the time of an execution goes, for `cargo xtask bench` and for operators
    // chasing latency (KOKINO_LOG=kokino_service=debug): before the user turn is stored (the
    // agent and session reads, admission, the lock wait), storing it, the run, storing the
    // outcome. A plain headless run's CLI starts while its user turn is stored: there `run_ms`
    // is the part of the run after the store's commit.
    tracing::debug!(
        agent = %exec.agent.spec.agent_id,
        before_ms = exec.phase.duration_since(entered).as_secs_f64() * 1e3,
        user_turn_ms = persisted_user_turn.as_secs_f64() * 1e3,
        run_ms = (ran - persisted_user_turn).as_secs_f64() * 1e3,
        finish_ms = (exec.phase.elapsed() - ran).as_secs_f64() * 1e3,
        "execution phases"
    );
    match (secondary, primary_result) {
        (Some(task), Some(primary)) => {
            // The caller has its answer; the lock stays held until the secondary leg ends
            // (bounded by its own timeout), so that no other run of the agent overlaps it.
            let this = b.clone();
            b.inner.tasks.spawn(async move {
                let legs = shadow_legs::Legs {
                    primary_mode,
                    primary,
                    secondary: task.await.unwrap_or_else(|_| {
                        runner::spawn_error_result("the secondary leg panicked".into())
                    }),
                };
                shadow_legs::record(&this, &exec.agent, &exec.execution_id, legs).await;
                holds.release(&this).await;
            });
        }
        _ if holds.lease.is_some() => {
            // The caller has its answer; giving the lease back (a durable write to the shared
            // database) goes on without it. The agent's lock here stays held until that write
            // is done, so that this broker's next run of the agent starts after it, and other
            // brokers wait for the lease as they would.
            let this = b.clone();
            b.inner
                .tasks
                .spawn(async move { holds.release(&this).await });
        }
        _ => holds.release(b).await,
    }
    answer
}

/// Stores the user turn and the running execution (fenced by the lease when there is one),
/// and announces the start.
async fn store_begin(
    b: &Broker,
    exec: &Execution,
    new_execution: &NewExecution,
    holds: &Holds,
) -> Result<()> {
    let store = &b.inner.store;
    match &holds.lease {
        Some(l) => {
            // The execution is recorded as this broker's (its `instance_id`) in the same write.
            store
                .begin_execution_fenced(new_execution, &l.owner, l.token)
                .await?;
        }
        None => {
            store.begin_execution(new_execution).await?;
        }
    }
    announce(b, exec);
    Ok(())
}

/// Resolves the conversation and CLI session, and makes the execution and the record of its
/// start (not stored yet).
async fn prepare(b: &Broker, request: Request, holds: &Holds) -> Result<(Execution, NewExecution)> {
    let Request {
        agent,
        mode,
        req,
        progress,
    } = request;
    let session = resolve_session(b, &agent, req.conversation_id.as_deref()).await?;
    let resume_id = session
        .cli_session_id
        .clone()
        .filter(|_| session.cli_session_started);
    if let Some(sid) = &resume_id {
        let (id, cli) = (&agent.spec.agent_id, agent.spec.cli_type);
        let mut ev = event("SESSION_RESUMED", Some(id.as_str()), Some(cli.as_str()));
        ev.metadata = json!({"sessionId": sid, "conversationId": session.conversation_id});
        b.inner.events.emit(ev);
    }
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
        agent_id: agent.spec.agent_id.clone(),
        conversation_id: session.conversation_id.clone(),
        cli_type: agent.spec.cli_type,
        mode,
        user_turn_id: uuid::Uuid::new_v4().to_string(),
        prompt: req.prompt.clone(),
        turn_metadata: user_meta,
    };
    let timeout = Duration::from_millis(
        req.timeout_ms
            .or(agent.spec.timeout_ms)
            .unwrap_or(millis(b.inner.cfg.execution_timeout)),
    );
    let exec = Execution {
        resume_id,
        fresh_id: uuid::Uuid::new_v4().to_string(),
        agent,
        mode,
        prompt: req.prompt,
        session,
        execution_id,
        waited_ms: millis(holds.guard.waited()),
        timeout,
        token: holds.guard.token(),
        rehydrated_from: None,
        seeded_prompt: None,
        progress,
        phase,
    };
    Ok((exec, new_execution))
}

/// The conversation the execution belongs to: the requested one (made the agent's session),
/// the agent's current session, or a new session.
async fn resolve_session(
    b: &Broker,
    agent: &AgentRecord,
    conversation_id: Option<&str>,
) -> Result<SessionRecord> {
    let store = &b.inner.store;
    let (id, cli) = (&agent.spec.agent_id, agent.spec.cli_type);
    if let Some(conv) = conversation_id {
        return store
            .switch_session(id, conv)
            .await?
            .ok_or_else(|| ServiceError::ConversationNotFound(conv.to_owned()));
    }
    if let Some(s) = store.get_session(id).await? {
        return Ok(s);
    }
    let preassigned =
        kokino_cli::preassigns_session_id(cli).then(|| uuid::Uuid::new_v4().to_string());
    let s = store
        .create_session(id, cli, preassigned.as_deref())
        .await?;
    let mut ev = event("SESSION_CREATED", Some(id.as_str()), Some(cli.as_str()));
    ev.metadata = json!({"conversationId": s.conversation_id});
    b.inner.events.emit(ev);
    Ok(s)
}

/// The `EXECUTION_STARTED` event (with a prompt preview when configured).
fn announce(b: &Broker, exec: &Execution) {
    let (id, cli) = (&exec.agent.spec.agent_id, exec.agent.spec.cli_type);
    let mut ev = event("EXECUTION_STARTED", Some(id.as_str()), Some(cli.as_str()));
    ev.metadata = json!({
        "executionId": exec.execution_id,
        "mode": exec.mode.as_str(),
        "resume": exec.resume_id.is_some(),
    });
    if b.inner.cfg.event_prompt_preview {
        ev.metadata["promptPreview"] = json!(exec.prompt.chars().take(100).collect::<String>());
    }
    b.inner.events.emit(ev);
}

/// Several brokers: keeps the lease alive while the run lasts (see `cluster.rs`).
fn spawn_renewal(
    b: &Broker,
    exec: &Execution,
    lease: Option<&LeaseHold>,
    cancel: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let (lease, cluster) = (lease?, b.inner.cfg.cluster.as_ref()?);
    let (this, agent_key) = (b.clone(), exec.agent.spec.agent_id.clone());
    Some(crate::cluster::spawn_renewal(
        b.inner.store.clone(),
        cluster.clone(),
        agent_key.to_string(),
        lease.token,
        lease.renewed_at(),
        cancel.clone(),
        move || this.inner.running(&agent_key).and_then(|r| r.watchdog),
    ))
}

/// Builds and runs the primary leg; a leg that cannot be built is a `spawn_error` run. With
/// `gate`, the CLI gets its prompt, and the run's process is recorded, only once the gate says
/// the execution is stored.
async fn run_primary(
    b: &Broker,
    exec: &Execution,
    mode: CommMode,
    cancel: CancellationToken,
    gate: Option<StdinGate>,
) -> RunResult {
    let leg = Leg {
        agent: &exec.agent,
        mode,
        session: exec.session_arg(),
        prompt: exec.cli_prompt(),
        timeout: exec.timeout,
        gate: gate.clone(),
    };
    match runner::build(b, leg).await {
        Err(e) => runner::spawn_error_result(e.0),
        Ok(runner) => run_process(b, exec, runner, cancel, gate).await,
    }
}

/// Runs the process, keeping the running table, the stored session id and the streaming
/// client up to date while it runs.
async fn run_process(
    b: &Broker,
    exec: &Execution,
    runner: Runner,
    cancel: CancellationToken,
    stored: Option<StdinGate>,
) -> RunResult {
    let limits = runner.limits().clone();
    let (id, cli, mode) = (
        &exec.agent.spec.agent_id,
        exec.agent.spec.cli_type,
        exec.mode,
    );
    b.inner.running_table().insert(
        id.clone(),
        Running {
            token: exec.token,
            execution_id: exec.execution_id.clone(),
            cancel: cancel.clone(),
            pid: None,
            watchdog: None,
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
    let out = Output {
        events: tx,
        log: true,
    };
    let run = runner::run(b, &exec.agent, runner, cancel, out);
    let consume = async {
        let mut watch = Watch {
            b,
            exec,
            known_session: exec.known_session(),
            malformed: 0,
            stored,
        };
        while let Some(ev) = rx.recv().await {
            watch.on_event(ev).await;
        }
        watch.malformed
    };
    let (result, malformed) = tokio::join!(run, consume);
    if malformed > 0 {
        metrics::counter!(telemetry::JSONL_PARSE_ERRORS_TOTAL, "cli" => cli.as_str())
            .increment(malformed);
        let mut ev = event("JSONL_PARSE_ERROR", Some(id.as_str()), Some(cli.as_str()));
        ev.metadata = json!({"executionId": exec.execution_id, "lines": malformed});
        b.inner.events.emit(ev);
    }
    {
        let mut running = b.inner.running_table();
        if running.get(id).is_some_and(|r| r.token == exec.token) {
            running.remove(id);
        }
    }
    metrics::gauge!(telemetry::RUNNING_PROCESSES, "cli" => cli.as_str(), "mode" => mode.as_str())
        .decrement(1.0);
    result
}

/// Follows the primary leg's events while it runs.
struct Watch<'a> {
    b: &'a Broker,
    exec: &'a Execution,
    known_session: Option<String>,
    malformed: u64,
    /// Says when the execution is stored, when the run started before that: the process and
    /// the CLI's session id are recorded against a stored execution only.
    stored: Option<StdinGate>,
}

impl Watch<'_> {
    async fn on_event(&mut self, ev: ExecEvent) {
        if let Some(gate) = &mut self.stored {
            let stored = gate
                .wait_for(Option::is_some)
                .await
                .is_ok_and(|d| *d == Some(true));
            if !stored {
                // The run is being stopped: nothing of it gets recorded.
                return;
            }
            self.stored = None;
        }
        let (b, exec) = (self.b, self.exec);
        let id = &exec.agent.spec.agent_id;
        match ev {
            ExecEvent::Started {
                pid,
                start_time,
                cli_pid,
                watchdog,
            } => self.on_started(pid, start_time, cli_pid, watchdog).await,
            ExecEvent::Sample {
                rss_bytes,
                cpu_percent,
            } => b.inner.update_running(id, exec.token, |r| {
                r.rss_bytes = rss_bytes;
                r.cpu_percent = cpu_percent;
            }),
            ExecEvent::Stream(StreamEvent::SessionId(sid)) => {
                if self.known_session.as_deref() != Some(sid.as_str()) {
                    // Persisted the moment it is seen, so that a broker that dies now
                    // still resumes this CLI session next time.
                    if let Err(e) = b
                        .inner
                        .store
                        .set_cli_session(id, &exec.session.conversation_id, &sid)
                        .await
                    {
                        tracing::warn!(error = %e, "could not record the CLI session id");
                    }
                    self.known_session = Some(sid);
                }
            }
            ExecEvent::Stream(ev) => {
                if let StreamEvent::Malformed { reason } = &ev {
                    self.malformed += 1;
                    tracing::debug!(agent = %id, %reason, "malformed CLI output line");
                }
                if let Some(p) = &exec.progress {
                    let _ = p.send(Progress::Stream(ev));
                }
            }
        }
    }

    /// The process is running: record it (table, store, event) and tell a streaming client.
    /// `pid` leads the process group (the supervisor, when there is one, else the CLI) and is
    /// what recovery needs; `cli_pid` is the CLI itself, what an operator looks for in `ps`;
    /// `watchdog` takes the heartbeats of a cluster's lease renewals.
    async fn on_started(
        &mut self,
        pid: i32,
        start_time: Option<i64>,
        cli_pid: Option<i32>,
        watchdog: Option<i32>,
    ) {
        let (b, exec) = (self.b, self.exec);
        let (id, cli) = (&exec.agent.spec.agent_id, exec.agent.spec.cli_type);
        b.inner.update_running(id, exec.token, |r| {
            r.pid = Some(pid);
            r.watchdog = watchdog;
        });
        // Not awaited here: the store commits this lazily (the supervisor's claim file already
        // names the process for recovery), and the run's events must keep flowing meanwhile.
        let (store, execution_id) = (b.inner.store.clone(), exec.execution_id.clone());
        tokio::spawn(async move {
            if let Err(e) = store
                .set_execution_process(&execution_id, pid as i64, start_time)
                .await
            {
                tracing::warn!(error = %e, "could not record the process of an execution");
            }
        });
        let mut ev = event("PROCESS_STARTED", Some(id.as_str()), Some(cli.as_str()));
        ev.metadata = json!({
            "pid": cli_pid.unwrap_or(pid),
            "pgid": pid,
            "supervisorPid": watchdog,
            "executionId": exec.execution_id,
        });
        b.inner.events.emit(ev);
        if let Some(p) = &exec.progress {
            let _ = p.send(Progress::Started {
                pid,
                mode: exec.mode,
                session_id: self.known_session.clone(),
            });
        }
    }
}
