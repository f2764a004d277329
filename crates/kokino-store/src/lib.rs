//! Kokino's store: the only crate that speaks SQL.
//!
//! Callers see one concrete type, [`Store`], whose methods speak in domain records. Behind it sits
//! one backend per database (SQLite and PostgreSQL); dialect differences — placeholders,
//! upserts, types — stay inside each backend's module, so no caller ever needs to know which
//! database it talks to. A concrete enum rather than a trait object keeps the async methods simple
//! and lets the compiler check that every backend handles every operation.

#![forbid(unsafe_code)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use kokino_core::{
    AgentId, AgentRecord, AgentSpec, CliType, Conversation, ExecutionRecord, NewExecution,
    OutcomeClass, Role, SessionRecord, Turn, Usage,
};
use serde::Serialize;

mod error;
mod postgres;
mod sqlite;

pub use error::StoreError;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything written in the single transaction that ends an execution.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishExecution {
    pub execution_id: String,
    pub outcome: OutcomeClass,
    pub exit_code: Option<i64>,
    pub error_message: Option<String>,
    pub duration_ms: i64,
    pub usage: Option<Usage>,
    pub cost_usd: Option<f64>,
    pub num_turns: Option<i64>,
    pub peak_rss_mb: Option<f64>,
    pub cli_session_id: Option<String>,
    /// The turn that records the result: `assistant` with the answer, or `system` describing the
    /// failure. `None` only when there is nothing to say (never in practice).
    pub turn: Option<NewTurn>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewTurn {
    pub turn_id: String,
    pub role: Role,
    pub content: String,
    pub metadata: serde_json::Value,
}

/// A telemetry event (behavior.md, Telemetry events).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub agent_id: Option<String>,
    pub cli_type: Option<String>,
    pub duration_ms: Option<i64>,
    pub success: Option<bool>,
    pub metadata: serde_json::Value,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_type: String,
    pub agent_id: Option<String>,
    pub cli_type: Option<String>,
    pub duration_ms: Option<i64>,
    pub success: Option<bool>,
    pub metadata: serde_json::Value,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    pub event_type: Option<String>,
    pub agent_id: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: u32,
}

/// Finished executions of one (CLI type, agent, outcome) group.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeCount {
    pub cli_type: String,
    pub agent_id: String,
    pub outcome: String,
    pub count: u64,
    pub last_at: Option<DateTime<Utc>>,
}

/// Duration statistics of a set of executions; `agent_id` is empty for "all agents".
#[derive(Debug, Clone, PartialEq)]
pub struct DurationStats {
    pub agent_id: String,
    pub count: u64,
    pub avg_ms: f64,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

/// A CLI version the environment doctor saw (`GET /api/health/cli-versions`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CliVersionRow {
    pub cli_type: String,
    pub version: String,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub agents: Vec<String>,
}

/// What a shadow execution recorded (both legs, and the comparison when both answered).
#[derive(Debug, Clone, PartialEq)]
pub struct NewShadowResult {
    pub agent_id: String,
    pub execution_id: String,
    /// The leg that answered the caller: `"tmux"` or `"headless"`.
    pub primary_mode: String,
    pub tmux_success: bool,
    pub headless_success: bool,
    pub tmux_response: Option<String>,
    pub headless_response: Option<String>,
    pub tmux_error: Option<String>,
    pub headless_error: Option<String>,
    pub tmux_latency_ms: i64,
    pub headless_latency_ms: i64,
    pub similarity: Option<f64>,
    pub matched: Option<bool>,
    pub diff: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowResult {
    pub id: i64,
    pub agent_id: String,
    pub execution_id: String,
    pub primary_mode: String,
    pub tmux_success: bool,
    pub headless_success: bool,
    pub tmux_response: Option<String>,
    pub headless_response: Option<String>,
    pub tmux_error: Option<String>,
    pub headless_error: Option<String>,
    pub tmux_latency_ms: i64,
    pub headless_latency_ms: i64,
    pub similarity: Option<f64>,
    pub matched: Option<bool>,
    pub diff: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Aggregates of the shadow results since some time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShadowSummary {
    pub total: u64,
    pub tmux_succeeded: u64,
    pub headless_succeeded: u64,
    pub both_succeeded: u64,
    pub only_tmux_succeeded: u64,
    pub only_headless_succeeded: u64,
    pub both_failed: u64,
    pub matched: u64,
    pub mismatched: u64,
    /// Average of headless minus tmux latency over runs where both succeeded.
    pub avg_latency_delta_ms: Option<f64>,
    pub headless_faster: u64,
    pub first_at: Option<DateTime<Utc>>,
}

/// One integrity problem found in the store.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IntegrityFinding {
    #[serde(rename = "type")]
    pub kind: String,
    pub conversation_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    pub message: String,
}

/// Counts for `GET /api/integrity/stats`.
#[derive(Debug, Clone, PartialEq)]
pub struct IntegrityTotals {
    pub conversations: u64,
    pub turns: u64,
    pub user_turns: u64,
    pub assistant_turns: u64,
    pub system_turns: u64,
    pub conversations_by_agent: Vec<(String, u64)>,
}

/// The store. Cheap to clone (it holds a connection pool).
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Sqlite(b) => b.$method($($arg),*).await,
            Backend::Postgres(b) => b.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// Opens the database named by `url` (`sqlite://path/to/kokino.db`, or a bare path), creating
    /// the file and its directory on first use and applying the embedded migrations.
    /// A `postgres://` or `postgresql://` URL connects to an existing PostgreSQL database and
    /// applies its migrations.
    pub async fn open(url: &str) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Store {
                backend: Backend::Postgres(postgres::PgStore::open(url).await?),
            });
        }
        Ok(Store {
            backend: Backend::Sqlite(sqlite::SqliteStore::open(url).await?),
        })
    }

    /// `"sqlite"` or `"postgres"`, as `/health` reports it.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// A cheap query proving the database answers.
    pub async fn ping(&self) -> Result<()> {
        dispatch!(self.ping())
    }

    /// Reads one of a few fixed SQLite pragmas (`journal_mode`, `synchronous`, `foreign_keys`,
    /// `busy_timeout`) from a pooled connection, as text. Exists so that tests and diagnostics
    /// can confirm the settings every connection runs with.
    pub async fn sqlite_pragma(&self, name: &str) -> Result<String> {
        match &self.backend {
            Backend::Sqlite(b) => b.pragma(name).await,
            Backend::Postgres(_) => Err(StoreError::Unsupported(format!(
                "pragma {name} is a SQLite setting; this store runs on PostgreSQL"
            ))),
        }
    }

    // ---- agents ----

    /// Inserts or updates an agent (idempotent); `created_at` is kept on update.
    pub async fn upsert_agent(&self, spec: &AgentSpec) -> Result<AgentRecord> {
        dispatch!(self.upsert_agent(spec))
    }
    pub async fn get_agent(&self, id: &AgentId) -> Result<Option<AgentRecord>> {
        dispatch!(self.get_agent(id))
    }
    /// All agents ordered by id.
    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>> {
        dispatch!(self.list_agents())
    }
    /// Deletes the agent and its session. With `purge`, also its conversations, turns and
    /// executions; without, those stay (with the agent id as plain text) for history.
    /// Returns whether the agent existed.
    pub async fn delete_agent(&self, id: &AgentId, purge: bool) -> Result<bool> {
        dispatch!(self.delete_agent(id, purge))
    }

    // ---- sessions and conversations ----

    pub async fn get_session(&self, agent: &AgentId) -> Result<Option<SessionRecord>> {
        dispatch!(self.get_session(agent))
    }
    /// All current sessions (one per agent at most).
    pub async fn list_sessions(&self) -> Result<Vec<SessionRecord>> {
        dispatch!(self.list_sessions())
    }
    /// Opens a new conversation for the agent and makes it the agent's session, replacing any
    /// previous session row. `cli_session_id` is the preassigned id for CLIs that take one.
    pub async fn create_session(
        &self,
        agent: &AgentId,
        cli_type: CliType,
        cli_session_id: Option<&str>,
    ) -> Result<SessionRecord> {
        dispatch!(self.create_session(agent, cli_type, cli_session_id))
    }
    /// Makes an existing conversation of this agent its session again (continuing it resumes the
    /// conversation's CLI session). Returns `None` when the conversation is not the agent's.
    pub async fn switch_session(
        &self,
        agent: &AgentId,
        conversation_id: &str,
    ) -> Result<Option<SessionRecord>> {
        dispatch!(self.switch_session(agent, conversation_id))
    }
    /// Records the CLI's session id on the session and its conversation, and marks the session
    /// started (the next run resumes). Written as soon as the CLI reports the id.
    pub async fn set_cli_session(
        &self,
        agent: &AgentId,
        conversation_id: &str,
        cli_session_id: &str,
    ) -> Result<()> {
        dispatch!(self.set_cli_session(agent, conversation_id, cli_session_id))
    }
    /// Ends the agent's session: the session row is removed, the conversation is marked `ended`
    /// (its CLI session id is kept in history). Returns the ended session.
    pub async fn end_session(&self, agent: &AgentId) -> Result<Option<SessionRecord>> {
        dispatch!(self.end_session(agent))
    }
    /// Ends sessions whose last activity is older than `before`; returns them.
    pub async fn end_sessions_idle_since(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Vec<SessionRecord>> {
        dispatch!(self.end_sessions_idle_since(before))
    }
    pub async fn get_conversation(
        &self,
        conversation_id: &str,
    ) -> Result<Option<(Conversation, Vec<Turn>)>> {
        dispatch!(self.get_conversation(conversation_id))
    }
    /// The agent's conversations, newest first.
    pub async fn list_conversations(&self, agent: &AgentId) -> Result<Vec<Conversation>> {
        dispatch!(self.list_conversations(agent))
    }
    pub async fn get_turn(&self, agent: &AgentId, turn_id: &str) -> Result<Option<Turn>> {
        dispatch!(self.get_turn(agent, turn_id))
    }
    /// Deletes a conversation with its turns and executions (and the session pointing at it).
    pub async fn delete_conversation(&self, conversation_id: &str) -> Result<bool> {
        dispatch!(self.delete_conversation(conversation_id))
    }

    // ---- executions ----

    /// Writes the user turn (next `seq` of the conversation) and the execution row (state
    /// `running`) in one transaction, before any process starts.
    pub async fn begin_execution(&self, new: &NewExecution) -> Result<Turn> {
        dispatch!(self.begin_execution(new))
    }
    /// Records the pid and process start time as soon as the process exists.
    pub async fn set_execution_process(
        &self,
        execution_id: &str,
        pid: i64,
        start_time: Option<i64>,
    ) -> Result<()> {
        dispatch!(self.set_execution_process(execution_id, pid, start_time))
    }
    /// Writes the result turn and the outcome in one transaction and touches the session's
    /// last activity. Returns the result turn.
    pub async fn finish_execution(&self, fin: &FinishExecution) -> Result<Option<Turn>> {
        dispatch!(self.finish_execution(fin))
    }
    pub async fn get_execution(&self, execution_id: &str) -> Result<Option<ExecutionRecord>> {
        dispatch!(self.get_execution(execution_id))
    }
    /// Executions still `running` (used at start-up to find what a previous life left behind).
    pub async fn running_executions(&self) -> Result<Vec<ExecutionRecord>> {
        dispatch!(self.running_executions())
    }

    // ---- events ----

    pub async fn insert_event(&self, event: &NewEvent) -> Result<i64> {
        dispatch!(self.insert_event(event))
    }
    /// Inserts several events in one transaction; used by the batching event writer.
    pub async fn insert_events(&self, events: &[NewEvent]) -> Result<()> {
        dispatch!(self.insert_events(events))
    }
    /// Deletes events older than `before` (retention); returns how many were deleted.
    pub async fn delete_events_before(&self, before: DateTime<Utc>) -> Result<u64> {
        dispatch!(self.delete_events_before(before))
    }
    /// How many events are older than `before`.
    pub async fn count_events_before(&self, before: DateTime<Utc>) -> Result<u64> {
        dispatch!(self.count_events_before(before))
    }
    // ---- shadow mode ----

    pub async fn insert_shadow_result(&self, r: &NewShadowResult) -> Result<i64> {
        dispatch!(self.insert_shadow_result(r))
    }
    pub async fn shadow_summary(&self, since: DateTime<Utc>) -> Result<ShadowSummary> {
        dispatch!(self.shadow_summary(since))
    }
    /// Results whose answers did not match, newest first.
    pub async fn shadow_mismatches(&self, limit: u32) -> Result<Vec<ShadowResult>> {
        dispatch!(self.shadow_mismatches(limit))
    }
    /// Results where `leg` (`"headless"` or `"tmux"`) failed, newest first.
    pub async fn shadow_failures(&self, leg: &str, limit: u32) -> Result<Vec<ShadowResult>> {
        dispatch!(self.shadow_failures(leg, limit))
    }

    // ---- CLI versions ----

    /// Records that `version` of `cli_type` was seen now (first and last seen times are kept
    /// per distinct version), with the agents of that type.
    pub async fn record_cli_version(
        &self,
        cli_type: &str,
        version: &str,
        agents: &[String],
    ) -> Result<()> {
        dispatch!(self.record_cli_version(cli_type, version, agents))
    }
    /// Every version seen, by CLI type, most recently seen first.
    pub async fn list_cli_versions(&self) -> Result<Vec<CliVersionRow>> {
        dispatch!(self.list_cli_versions())
    }

    // ---- integrity ----

    /// Every integrity problem in the store (behavior.md, Conversations and integrity), except
    /// executions stuck `running`, which only the broker can judge (it knows what runs).
    pub async fn integrity_findings(&self) -> Result<Vec<IntegrityFinding>> {
        dispatch!(self.integrity_findings())
    }
    pub async fn integrity_totals(&self) -> Result<IntegrityTotals> {
        dispatch!(self.integrity_totals())
    }
    /// Repairs what is safe; returns (rows deleted, conversations renumbered).
    pub async fn integrity_repair(&self) -> Result<(u64, u64)> {
        dispatch!(self.integrity_repair())
    }

    // ---- analytics (SLOs, metrics queries) ----

    pub async fn outcome_counts(&self, since: DateTime<Utc>) -> Result<Vec<OutcomeCount>> {
        dispatch!(self.outcome_counts(since))
    }
    pub async fn event_counts(
        &self,
        types: &[&str],
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, u64)>> {
        dispatch!(self.event_counts(types, since))
    }
    /// Nearest-rank percentiles of execution durations, per agent or overall.
    pub async fn duration_stats(
        &self,
        since: DateTime<Utc>,
        outcomes: &[&str],
        by_agent: bool,
    ) -> Result<Vec<DurationStats>> {
        dispatch!(self.duration_stats(since, outcomes, by_agent))
    }
    pub async fn avg_peak_rss_mb(&self, since: DateTime<Utc>) -> Result<Option<f64>> {
        dispatch!(self.avg_peak_rss_mb(since))
    }
    /// `(cli_type, reason, count)`, the most frequent failure reasons per CLI type.
    pub async fn top_failure_reasons(
        &self,
        since: DateTime<Utc>,
        per_cli: u32,
    ) -> Result<Vec<(String, String, u64)>> {
        dispatch!(self.top_failure_reasons(since, per_cli))
    }

    /// Events newest first, filtered; `limit` 0 means the default of 100.
    pub async fn list_events(&self, filter: &EventFilter) -> Result<Vec<Event>> {
        dispatch!(self.list_events(filter))
    }

    // ---- breakers and fallback ----

    /// Inserts or replaces the persisted state of one circuit breaker. `scope` is `"agent"` or
    /// `"cli"`, `key` the agent id or CLI type; `snapshot` is whatever the breaker serialises to
    /// (`kokino_core::breaker::BreakerSnapshot`): the store keeps it as opaque JSON.
    pub async fn save_circuit(
        &self,
        scope: &str,
        key: &str,
        snapshot: &serde_json::Value,
    ) -> Result<()> {
        dispatch!(self.save_circuit(scope, key, snapshot))
    }
    /// Every persisted breaker as `(scope, key, snapshot)`, ordered by scope and key.
    pub async fn load_circuits(&self) -> Result<Vec<(String, String, serde_json::Value)>> {
        dispatch!(self.load_circuits())
    }
    /// Forgets one breaker (its agent was deleted). Returns whether it was stored.
    pub async fn delete_circuit(&self, scope: &str, key: &str) -> Result<bool> {
        dispatch!(self.delete_circuit(scope, key))
    }
    /// Inserts or replaces one fallback override: `kind` `"cli"` (a disabled CLI type) or
    /// `"agent"` (an agent forced to tmux). Any other kind is rejected by the database.
    pub async fn put_fallback(
        &self,
        kind: &str,
        key: &str,
        reason: &str,
        since: DateTime<Utc>,
        auto: bool,
    ) -> Result<()> {
        dispatch!(self.put_fallback(kind, key, reason, since, auto))
    }
    /// Removes one override. Returns whether it was stored.
    pub async fn delete_fallback(&self, kind: &str, key: &str) -> Result<bool> {
        dispatch!(self.delete_fallback(kind, key))
    }
    /// Removes every override of both kinds. Returns how many there were.
    pub async fn clear_fallbacks(&self) -> Result<u64> {
        dispatch!(self.clear_fallbacks())
    }
    /// Every override, ordered by kind and key.
    pub async fn load_fallbacks(&self) -> Result<Vec<FallbackRow>> {
        dispatch!(self.load_fallbacks())
    }

    // ---- leases ----
    //
    // Several brokers sharing one PostgreSQL database must never run one agent twice. A broker
    // runs an agent only while it holds the agent's lease; every acquisition hands out a larger
    // fencing token, and the writes that matter (beginning and finishing an execution) can be
    // fenced: they commit only if their token is still the live one, so a broker that stalled
    // past its lease cannot write over its successor (Kleppmann's fencing tokens). Expiry is
    // judged by the database's clock, so brokers whose clocks disagree still agree on who holds
    // a lease.

    /// Takes the agent's lease for `owner` if it is free, expired, or already `owner`'s; each
    /// successful acquisition increments the token (fencing), starting at 1, and the token never
    /// decreases, also across release and re-acquisition. Returns `None` when another owner
    /// holds an unexpired lease. `taken_over_from` names the previous owner when it was another
    /// one (its lease had expired or been released). Atomic: of several brokers racing for one
    /// free lease exactly one wins.
    pub async fn acquire_lease(
        &self,
        agent_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let ttl = clamp_ttl(ttl);
        dispatch!(self.acquire_lease(agent_id, owner, ttl))
    }
    /// Extends the lease to `ttl` from now if `owner` still holds it with `token` and it has not
    /// expired; `false` when it was lost (expired, taken over or released). An expired lease is
    /// never revived, even if nobody took it yet: the holder must acquire again, which gives it
    /// a new token.
    pub async fn renew_lease(
        &self,
        agent_id: &str,
        owner: &str,
        token: i64,
        ttl: Duration,
    ) -> Result<bool> {
        let ttl = clamp_ttl(ttl);
        dispatch!(self.renew_lease(agent_id, owner, token, ttl))
    }
    /// Ends the lease if `owner`/`token` still hold it, by expiring it now (the row and its token
    /// stay, so the next acquisition gets a larger token); a stale release, or the release of an
    /// already expired lease, does nothing. Returns whether it released. On PostgreSQL the same
    /// transaction also sends `NOTIFY kokino_lease_released, '<agent_id>'`
    /// ([`LEASE_RELEASED_CHANNEL`]) so that waiting brokers wake up.
    pub async fn release_lease(&self, agent_id: &str, owner: &str, token: i64) -> Result<bool> {
        dispatch!(self.release_lease(agent_id, owner, token))
    }
    /// The current holder, if the lease is unexpired (`taken_over_from` is always `None`).
    pub async fn lease_holder(&self, agent_id: &str) -> Result<Option<Lease>> {
        dispatch!(self.lease_holder(agent_id))
    }
    /// Whether `owner`/`token` is still the live (unexpired) lease of the agent (fencing check).
    /// Only a snapshot: to make a write depend on it, use the fenced writes.
    pub async fn lease_is_current(&self, agent_id: &str, owner: &str, token: i64) -> Result<bool> {
        dispatch!(self.lease_is_current(agent_id, owner, token))
    }
    /// Executions still `running` recorded by `instance_id`, oldest first (what a restarted
    /// broker with the same stable instance id must clean up).
    pub async fn running_executions_of(&self, instance_id: &str) -> Result<Vec<ExecutionRecord>> {
        dispatch!(self.running_executions_of(instance_id))
    }
    /// Running executions of the agent recorded by an instance other than `owner`, oldest first,
    /// including those with no instance recorded (what a broker that took an expired lease over
    /// marks interrupted; it kills nothing).
    pub async fn foreign_running_executions(
        &self,
        agent_id: &str,
        owner: &str,
    ) -> Result<Vec<ExecutionRecord>> {
        dispatch!(self.foreign_running_executions(agent_id, owner))
    }
    /// Sets the execution's `instance_id` (called right after [`Store::begin_execution`] or
    /// [`Store::begin_execution_fenced`]). [`StoreError::ExecutionNotFound`] for an unknown id.
    pub async fn set_execution_instance(
        &self,
        execution_id: &str,
        instance_id: &str,
    ) -> Result<()> {
        dispatch!(self.set_execution_instance(execution_id, instance_id))
    }
    /// [`Store::begin_execution`], fenced: inside the same transaction it first checks that
    /// (`owner`, `token`) is still the live lease of `new.agent_id` (on PostgreSQL holding the
    /// lease row `FOR SHARE` until commit, so no takeover can slip in before the write lands)
    /// and returns [`StoreError::StaleLease`] without writing anything otherwise.
    pub async fn begin_execution_fenced(
        &self,
        new: &NewExecution,
        owner: &str,
        token: i64,
    ) -> Result<Turn> {
        dispatch!(self.begin_execution_fenced(new, owner, token))
    }
    /// [`Store::finish_execution`], fenced like [`Store::begin_execution_fenced`] on the lease of
    /// `agent_id`, which must be the execution's agent (otherwise [`StoreError::Unsupported`],
    /// and nothing is written).
    pub async fn finish_execution_fenced(
        &self,
        fin: &FinishExecution,
        agent_id: &str,
        owner: &str,
        token: i64,
    ) -> Result<Option<Turn>> {
        dispatch!(self.finish_execution_fenced(fin, agent_id, owner, token))
    }
}

/// One stored fallback override (`kokino_core::fallback::Override` with its target spelled as
/// the row's `kind` and `key`). `since` comes back truncated to the millisecond, like every
/// stored time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackRow {
    pub kind: String,
    pub key: String,
    pub reason: String,
    pub since: DateTime<Utc>,
    pub auto: bool,
}

/// The PostgreSQL channel [`Store::release_lease`] notifies, with the agent id as payload.
pub const LEASE_RELEASED_CHANNEL: &str = "kokino_lease_released";

/// An agent's lease as a broker holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub agent_id: String,
    pub owner: String,
    /// The fencing token: larger for every acquisition of this agent's lease, never reused.
    pub token: i64,
    /// By the database's clock, truncated to the millisecond like every stored time.
    pub expires_at: DateTime<Utc>,
    /// The previous owner when this acquisition took the lease over from another broker whose
    /// lease had expired (or been released).
    pub taken_over_from: Option<String>,
}

/// The longest lease the store grants. Longer ttls are shortened to it so that "now + ttl" can
/// never overflow a timestamp or interval in either database; a century is "forever" enough.
const MAX_LEASE_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn clamp_ttl(ttl: Duration) -> Duration {
    ttl.min(MAX_LEASE_TTL)
}

/// A ttl in whole milliseconds, the precision of every stored time; the ttl is already clamped.
pub(crate) fn ttl_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}
