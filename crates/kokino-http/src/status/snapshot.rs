//! What the status page shows, gathered from the broker in one pass.
//!
//! Everything here is read through the service's public API: agents and their sessions from the
//! store, running executions, breakers and fallback overrides from memory, finished executions
//! and recent events from the event table. The effective mode of every agent is computed with
//! `kokino_core::fallback`, the same function the execution path uses, from the fallback status.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use kokino_core::breaker::{BreakerState, CircuitStatus};
use kokino_core::fallback::{FallbackState, FallbackStatus, Override, Target};
use kokino_core::{AgentId, CliType, CommMode};
use kokino_service::slo::SloStatus;
use kokino_service::Broker;
use kokino_store::{Event, EventFilter};
use serde::Serialize;

/// How many finished executions and events the page lists.
pub const RECENT_EXECUTIONS: usize = 25;
pub const RECENT_EVENTS: u32 = 40;

/// The event types that end an execution (one per finished execution, written by the service
/// when it stores the outcome, or by recovery for runs a crash interrupted).
const FINISH_EVENTS: &[&str] = &[
    "EXECUTION_COMPLETED",
    "EXECUTION_FAILED",
    "EXECUTION_TIMEOUT",
    "EXECUTION_CANCELLED",
    "RATE_LIMITED",
    "EXECUTION_INTERRUPTED",
];

/// `GET /api/status`, and the first frame of `GET /api/status/stream`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusSnapshot {
    pub broker: BrokerInfo,
    /// Every registered agent, sorted by id.
    pub agents: Vec<AgentRow>,
    /// The latest finished executions, newest first.
    pub executions: Vec<ExecutionRow>,
    /// Every breaker the broker has used (agent and CLI scope).
    pub circuits: Vec<CircuitStatus>,
    pub fallback: FallbackStatus,
    /// `null` when the SLO status could not be computed (the reason is in `problems`).
    pub slo: Option<SloStatus>,
    /// The latest telemetry events, newest first.
    pub events: Vec<Event>,
    /// What could not be read (the store unreachable, …); empty when everything is fresh.
    pub problems: Vec<String>,
}

/// The broker itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerInfo {
    pub version: &'static str,
    pub instance_id: String,
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    /// When the broker started, epoch milliseconds (the page counts the uptime itself).
    pub started_at: i64,
    pub tmux_available: bool,
}

/// One agent with what it is doing now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRow {
    pub agent_id: String,
    #[serde(rename = "type")]
    pub cli_type: CliType,
    /// The registered mode.
    pub comm_mode: CommMode,
    /// The mode the next execution runs in; `null` when none can (see `modeNote`).
    pub effective_mode: Option<CommMode>,
    /// Why the effective mode differs from the registered one, or why there is none.
    pub mode_note: Option<String>,
    /// The CLI's session id, when the agent has a session and the CLI reported one.
    pub session_id: Option<String>,
    pub has_session: bool,
    /// Whether the agent's lock is held.
    pub locked: bool,
    /// Requests waiting for the lock.
    pub queue_length: usize,
    /// The running execution, if any.
    pub execution: Option<LiveExecution>,
    /// The agent's breaker state; `null` until the breaker was first used.
    pub circuit: Option<BreakerState>,
}

/// An execution running now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveExecution {
    pub execution_id: Option<String>,
    pub pid: Option<i32>,
    pub mode: CommMode,
    /// Epoch milliseconds (the page counts the elapsed time itself).
    pub started_at: i64,
    /// Resident memory of the CLI's process group from the latest sample; `null` before it.
    #[serde(rename = "memoryMB")]
    pub memory_mb: Option<f64>,
    pub cpu_percent: Option<f64>,
}

/// A finished execution, from the event that recorded its outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionRow {
    pub at: DateTime<Utc>,
    pub agent_id: Option<String>,
    pub cli_type: Option<String>,
    /// The outcome class (`success`, `cli_error`, `timeout`, `cancelled`, …).
    pub outcome: String,
    pub success: Option<bool>,
    pub duration_ms: Option<i64>,
    pub mode: Option<String>,
    pub execution_id: Option<String>,
    /// The error message of a failed run.
    pub error: Option<String>,
}

/// The parts of the snapshot that are read from the store, kept from one tick to the next so
/// that a failed read shows the last good value (and a problem) instead of an empty page.
#[derive(Debug, Clone, Default)]
pub struct Collector {
    executions: Vec<ExecutionRow>,
    events: Vec<Event>,
    newest_event: Option<i64>,
    slo: Option<SloStatus>,
    broker: Option<BrokerInfo>,
}

impl Collector {
    /// Reads everything. `slow` also recomputes the SLO status, which costs several queries over
    /// the SLO windows and need not be fresher than a few seconds. A store that cannot be read
    /// shows as a problem (the page's banner), the way `GET /health` would call it degraded.
    /// The reads are independent and run concurrently: the first snapshot is on the page's
    /// critical path, and with a thousand agents each of them takes a while.
    pub async fn collect(&mut self, b: &Broker, slow: bool) -> StatusSnapshot {
        let mut problems = Vec::new();
        let fallback = b.fallback_status();
        let circuits = b.circuits_status();
        let slow = slow || self.broker.is_none();
        let newest_event = self.newest_event;
        let (agents, events, slo) = tokio::join!(
            agent_rows(b, &fallback, &circuits),
            recent_events(b, newest_event),
            async {
                if slow {
                    Some(b.slo_status().await)
                } else {
                    None
                }
            },
        );
        let agents = agents.unwrap_or_else(|e| {
            problems.push(format!("agents could not be read: {e}"));
            Vec::new()
        });
        match events {
            Ok((events, executions)) => {
                self.newest_event = events.first().map(|e| e.id);
                self.events = events;
                if let Some(executions) = executions {
                    self.executions = executions;
                }
            }
            Err(e) => problems.push(format!("events could not be read: {e}")),
        }
        match slo {
            Some(Ok(s)) => self.slo = Some(s),
            Some(Err(e)) => problems.push(format!("SLO status could not be computed: {e}")),
            None => {}
        }
        if self.broker.is_none() {
            // Fixed for the broker's life; the page counts the uptime from `startedAt`.
            self.broker = Some(BrokerInfo {
                version: env!("CARGO_PKG_VERSION"),
                instance_id: b.instance_id().to_owned(),
                store: b.store().kind(),
                started_at: (Utc::now() - b.uptime()).timestamp_millis(),
                tmux_available: b.tmux_available(),
            });
        }
        StatusSnapshot {
            broker: self.broker.clone().expect("read on the first call"),
            agents,
            executions: self.executions.clone(),
            circuits,
            fallback,
            slo: self.slo.clone(),
            events: self.events.clone(),
            problems,
        }
    }
}

/// The latest events, and the finished executions when a new event arrived since `seen` (every
/// finished execution writes one), which keeps an idle broker's page at one query per tick.
async fn recent_events(
    b: &Broker,
    seen: Option<i64>,
) -> Result<(Vec<Event>, Option<Vec<ExecutionRow>>), kokino_store::StoreError> {
    let store = b.store();
    let events = store
        .list_events(&EventFilter {
            limit: RECENT_EVENTS,
            ..EventFilter::default()
        })
        .await?;
    let newest = events.first().map(|e| e.id);
    if seen.is_some() && newest == seen {
        return Ok((events, None));
    }
    let mut finished = Vec::new();
    for kind in FINISH_EVENTS {
        finished.extend(
            store
                .list_events(&EventFilter {
                    event_type: Some((*kind).to_owned()),
                    limit: RECENT_EXECUTIONS as u32,
                    ..EventFilter::default()
                })
                .await?,
        );
    }
    finished.sort_by(|a, b| b.at.cmp(&a.at).then(b.id.cmp(&a.id)));
    finished.truncate(RECENT_EXECUTIONS);
    Ok((events, Some(finished.iter().map(execution_row).collect())))
}

fn execution_row(e: &Event) -> ExecutionRow {
    let meta = &e.metadata;
    let text = |key: &str| meta.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let outcome = text("outcome").unwrap_or_else(|| match e.event_type.as_str() {
        "EXECUTION_INTERRUPTED" => "interrupted".to_owned(),
        other => other.to_ascii_lowercase(),
    });
    ExecutionRow {
        at: e.at,
        agent_id: e.agent_id.clone(),
        cli_type: e.cli_type.clone(),
        outcome,
        success: e.success,
        duration_ms: e.duration_ms,
        mode: text("mode"),
        execution_id: text("executionId"),
        error: text("error"),
    }
}

/// Agents joined with their session and lock (one store pass), their running execution with its
/// latest memory sample, their breaker and their effective mode.
async fn agent_rows(
    b: &Broker,
    fallback: &FallbackStatus,
    circuits: &[CircuitStatus],
) -> Result<Vec<AgentRow>, kokino_service::ServiceError> {
    let (records, sessions) = tokio::join!(b.list_agents(None, None), b.sessions_status());
    let records = records?;
    let sessions: HashMap<String, kokino_service::SessionStatus> = sessions?
        .into_iter()
        .map(|s| (s.agent_id.clone(), s))
        .collect();
    let processes: HashMap<String, kokino_service::ProcessStatus> = b
        .processes_status()
        .into_iter()
        .map(|p| (p.agent_id.clone(), p))
        .collect();
    let breakers: HashMap<&AgentId, BreakerState> = circuits
        .iter()
        .filter_map(|c| c.agent_id.as_ref().map(|id| (id, c.state)))
        .collect();
    let overrides = fallback_state(fallback);
    let tmux = b.tmux_available();
    let mut rows: Vec<AgentRow> = records
        .into_iter()
        .map(|a| {
            let id = a.spec.agent_id.clone();
            let key = id.to_string();
            let session = sessions.get(&key);
            let process = processes.get(&key);
            let (effective_mode, mode_note) =
                match overrides.effective_mode(&id, a.spec.cli_type, a.spec.comm_mode, tmux) {
                    Ok(m) => (Some(m.mode), m.reason),
                    Err(no) => (None, Some(no.reason)),
                };
            let execution = session.filter(|s| s.executing).map(|s| LiveExecution {
                execution_id: process.map(|p| p.execution_id.clone()),
                pid: s.pid,
                mode: s.mode,
                started_at: s.execution_started_at.unwrap_or_default(),
                memory_mb: process.map(|p| p.memory_mb),
                cpu_percent: process.map(|p| p.cpu_percent),
            });
            AgentRow {
                agent_id: key.clone(),
                cli_type: a.spec.cli_type,
                comm_mode: a.spec.comm_mode,
                effective_mode,
                mode_note,
                session_id: session.and_then(|s| s.session_id.clone()),
                has_session: session.is_some_and(|s| s.has_session),
                locked: session.is_some_and(|s| s.locked),
                queue_length: session.map_or(0, |s| s.queue_length),
                execution,
                circuit: breakers.get(&id).copied(),
            }
        })
        .collect();
    rows.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    Ok(rows)
}

/// The overrides as the pure fallback state, so that the effective mode is computed by the same
/// function the execution path uses.
fn fallback_state(status: &FallbackStatus) -> FallbackState {
    let mut state = FallbackState::new();
    for d in &status.disabled_clis {
        state.restore(
            Target::Cli(d.cli_type),
            Override {
                reason: d.reason.clone(),
                since: d.since,
                auto: d.auto,
            },
        );
    }
    for f in &status.forced_fallbacks {
        state.restore(
            Target::Agent(f.agent_id.clone()),
            Override {
                reason: f.reason.clone(),
                since: f.since,
                auto: f.auto,
            },
        );
    }
    state
}
