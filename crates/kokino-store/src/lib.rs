//! Kokino's store: the only crate that speaks SQL.
//!
//! Callers see one concrete type, [`Store`], whose methods speak in domain records. Behind it sit
//! two databases: SQLite (a file, the default) and PostgreSQL (shared by several brokers). Each
//! operation is written once, against the dialect layer in `db`, which encodes parameters and
//! decodes rows for whichever database is open; what really differs between the two (opening and
//! tuning connections, how write transactions serialise, leases and their clocks, pragmas) lives
//! in `db::sqlite` and `db::postgres`. The Cargo features `sqlite` and `postgres` (both on by
//! default) choose which backends are built.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
compile_error!("kokino-store needs at least one of the features `sqlite` and `postgres`");

use std::time::Duration;

use chrono::{DateTime, Utc};
use kokino_core::{OutcomeClass, Role, Usage};
use serde::Serialize;

mod analytics;
mod db;
mod error;
mod events;
mod executions;
mod homes;
mod integrity;
mod leases;
mod sessions;
mod shadow;
mod versions;

pub use error::StoreError;
pub use homes::{BrokerRow, Home, Notice, Notifications, HOME_CHANGED_CHANNEL};

/// The result of every store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything written in the single transaction that ends an execution.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishExecution {
    /// The execution being finished.
    pub execution_id: String,
    /// How it ended.
    pub outcome: OutcomeClass,
    /// The CLI's exit code, when it exited.
    pub exit_code: Option<i64>,
    /// What went wrong, for failures.
    pub error_message: Option<String>,
    /// Wall-clock time of the run.
    pub duration_ms: i64,
    /// Token usage the CLI reported.
    pub usage: Option<Usage>,
    /// Cost the CLI reported, in US dollars.
    pub cost_usd: Option<f64>,
    /// Agentic turns the CLI reported.
    pub num_turns: Option<i64>,
    /// Peak resident memory of the process tree, in MB.
    pub peak_rss_mb: Option<f64>,
    /// The CLI's session id, when it reported one.
    pub cli_session_id: Option<String>,
    /// The turn that records the result: `assistant` with the answer, or `system` describing the
    /// failure. `None` only when there is nothing to say (never in practice).
    pub turn: Option<NewTurn>,
}

/// A turn to append to a conversation (its `seq` is assigned by the store).
#[derive(Debug, Clone, PartialEq)]
pub struct NewTurn {
    /// The caller-chosen turn id.
    pub turn_id: String,
    /// Who speaks.
    pub role: Role,
    /// What was said.
    pub content: String,
    /// Free-form JSON kept with the turn.
    pub metadata: serde_json::Value,
}

/// A telemetry event (behavior.md, Telemetry events).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// The store-assigned id, increasing.
    pub id: i64,
    /// The event type (`execution_completed`, `breaker_opened`, …).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The agent concerned, if any.
    pub agent_id: Option<String>,
    /// The CLI type concerned, if any.
    pub cli_type: Option<String>,
    /// A duration the event measured.
    pub duration_ms: Option<i64>,
    /// Whether what the event reports succeeded.
    pub success: Option<bool>,
    /// Free-form JSON details.
    pub metadata: serde_json::Value,
    /// When the store recorded it.
    pub at: DateTime<Utc>,
}

/// Group commit so far (see [`Store::group_commit_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct GroupCommitStats {
    /// Writes committed.
    pub writes: u64,
    /// Commits that carried them.
    pub commits: u64,
}

/// A telemetry event to record; the store stamps the time.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The event type.
    pub event_type: String,
    /// The agent concerned, if any.
    pub agent_id: Option<String>,
    /// The CLI type concerned, if any.
    pub cli_type: Option<String>,
    /// A duration the event measured.
    pub duration_ms: Option<i64>,
    /// Whether what the event reports succeeded.
    pub success: Option<bool>,
    /// Free-form JSON details.
    pub metadata: serde_json::Value,
}

/// Which events [`Store::list_events`] returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only events of this agent.
    pub agent_id: Option<String>,
    /// Only events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// At most this many (0: the default of 100; capped at 10,000).
    pub limit: u32,
}

/// Finished executions of one (CLI type, agent, outcome) group.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeCount {
    /// The CLI type.
    pub cli_type: String,
    /// The agent.
    pub agent_id: String,
    /// The outcome class.
    pub outcome: String,
    /// How many executions.
    pub count: u64,
    /// When the latest of them finished.
    pub last_at: Option<DateTime<Utc>>,
}

/// Duration statistics of a set of executions; `agent_id` is empty for "all agents".
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DurationStats {
    /// The agent, or empty over all agents.
    pub agent_id: String,
    /// How many executions.
    pub count: u64,
    /// Mean duration.
    pub avg_ms: f64,
    /// Median (nearest rank).
    pub p50_ms: u64,
    /// 95th percentile (nearest rank).
    pub p95_ms: u64,
    /// 99th percentile (nearest rank).
    pub p99_ms: u64,
    /// Longest duration.
    pub max_ms: u64,
}

/// A CLI version the environment doctor saw (`GET /api/health/cli-versions`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CliVersionRow {
    /// The CLI type.
    pub cli_type: String,
    /// The version string the CLI printed.
    pub version: String,
    /// When this version was first seen.
    pub first_seen_at: DateTime<Utc>,
    /// When this version was last seen.
    pub last_seen_at: DateTime<Utc>,
    /// The agents of that type when it was last seen.
    pub agents: Vec<String>,
}

/// What a shadow execution recorded (both legs, and the comparison when both answered).
#[derive(Debug, Clone, PartialEq)]
pub struct NewShadowResult {
    /// The agent.
    pub agent_id: String,
    /// The execution that answered the caller.
    pub execution_id: String,
    /// The leg that answered the caller: `"tmux"` or `"headless"`.
    pub primary_mode: String,
    /// Whether the tmux leg succeeded.
    pub tmux_success: bool,
    /// Whether the headless leg succeeded.
    pub headless_success: bool,
    /// The tmux leg's answer.
    pub tmux_response: Option<String>,
    /// The headless leg's answer.
    pub headless_response: Option<String>,
    /// Why the tmux leg failed.
    pub tmux_error: Option<String>,
    /// Why the headless leg failed.
    pub headless_error: Option<String>,
    /// The tmux leg's latency.
    pub tmux_latency_ms: i64,
    /// The headless leg's latency.
    pub headless_latency_ms: i64,
    /// Similarity of the two answers (0 to 1), when both answered.
    pub similarity: Option<f64>,
    /// Whether the answers count as the same, when both answered.
    pub matched: Option<bool>,
    /// A short diff of the answers.
    pub diff: Option<String>,
}

/// A stored shadow result ([`NewShadowResult`] with its id and time).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ShadowResult {
    /// The store-assigned id.
    pub id: i64,
    /// The agent.
    pub agent_id: String,
    /// The execution that answered the caller.
    pub execution_id: String,
    /// The leg that answered the caller: `"tmux"` or `"headless"`.
    pub primary_mode: String,
    /// Whether the tmux leg succeeded.
    pub tmux_success: bool,
    /// Whether the headless leg succeeded.
    pub headless_success: bool,
    /// The tmux leg's answer.
    pub tmux_response: Option<String>,
    /// The headless leg's answer.
    pub headless_response: Option<String>,
    /// Why the tmux leg failed.
    pub tmux_error: Option<String>,
    /// Why the headless leg failed.
    pub headless_error: Option<String>,
    /// The tmux leg's latency.
    pub tmux_latency_ms: i64,
    /// The headless leg's latency.
    pub headless_latency_ms: i64,
    /// Similarity of the two answers (0 to 1), when both answered.
    pub similarity: Option<f64>,
    /// Whether the answers count as the same, when both answered.
    pub matched: Option<bool>,
    /// A short diff of the answers.
    pub diff: Option<String>,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
}

/// Aggregates of the shadow results since some time.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ShadowSummary {
    /// All results.
    pub total: u64,
    /// Results whose tmux leg succeeded.
    pub tmux_succeeded: u64,
    /// Results whose headless leg succeeded.
    pub headless_succeeded: u64,
    /// Results where both legs succeeded.
    pub both_succeeded: u64,
    /// Results where only the tmux leg succeeded.
    pub only_tmux_succeeded: u64,
    /// Results where only the headless leg succeeded.
    pub only_headless_succeeded: u64,
    /// Results where both legs failed.
    pub both_failed: u64,
    /// Results whose answers matched.
    pub matched: u64,
    /// Results whose answers differed.
    pub mismatched: u64,
    /// Average of headless minus tmux latency over runs where both succeeded.
    pub avg_latency_delta_ms: Option<f64>,
    /// Runs where both succeeded and headless answered first.
    pub headless_faster: u64,
    /// The oldest result counted.
    pub first_at: Option<DateTime<Utc>>,
}

/// One integrity problem found in the store.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrityFinding {
    /// The kind of problem (`orphaned_turn`, `sequence_gap`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// The conversation concerned.
    pub conversation_id: String,
    /// The turn concerned, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// A sentence describing the problem.
    pub message: String,
}

/// Counts for `GET /api/integrity/stats`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct IntegrityTotals {
    /// All conversations.
    pub conversations: u64,
    /// All turns.
    pub turns: u64,
    /// User turns.
    pub user_turns: u64,
    /// Assistant turns.
    pub assistant_turns: u64,
    /// System turns.
    pub system_turns: u64,
    /// Conversations per agent, ordered by agent id.
    pub conversations_by_agent: Vec<(String, u64)>,
}

/// One stored fallback override (`kokino_core::fallback::Override` with its target spelled as
/// the row's `kind` and `key`). `since` comes back truncated to the millisecond, like every
/// stored time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackRow {
    /// `"cli"` (a disabled CLI type) or `"agent"` (an agent forced to tmux).
    pub kind: String,
    /// The CLI type or agent id.
    pub key: String,
    /// Why the override was set.
    pub reason: String,
    /// When it was set.
    pub since: DateTime<Utc>,
    /// Whether the broker set it by itself (rather than an operator).
    pub auto: bool,
}

/// The PostgreSQL channel [`Store::release_lease`] notifies, with the agent id as payload.
pub const LEASE_RELEASED_CHANNEL: &str = "kokino_lease_released";

/// An agent's lease as a broker holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// The agent.
    pub agent_id: String,
    /// The broker instance holding it.
    pub owner: String,
    /// The fencing token: larger for every acquisition of this agent's lease, never reused.
    pub token: i64,
    /// By the database's clock, truncated to the millisecond like every stored time.
    pub expires_at: DateTime<Utc>,
    /// The previous owner when this acquisition took the lease over from another broker whose
    /// lease had expired (or been released).
    pub taken_over_from: Option<String>,
}

/// The store. Cheap to clone (it holds a connection pool).
#[derive(Clone, Debug)]
pub struct Store {
    db: db::Db,
}

impl Store {
    /// Opens the database named by `url` (`sqlite://path/to/kokino.db`, or a bare path), creating
    /// the file and its directory on first use and applying the embedded migrations.
    /// A `postgres://` or `postgresql://` URL connects to an existing PostgreSQL database and
    /// applies its migrations.
    pub async fn open(url: &str) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            #[cfg(feature = "postgres")]
            return Ok(Store {
                db: db::Db::Postgres(db::postgres::PgDb::open(url).await?),
            });
            #[cfg(not(feature = "postgres"))]
            return Err(StoreError::Unsupported(
                "this build of kokino-store has no PostgreSQL backend (feature `postgres`)".into(),
            ));
        }
        #[cfg(feature = "sqlite")]
        return Ok(Store {
            db: db::Db::Sqlite(db::sqlite::SqliteDb::open(url).await?),
        });
        #[cfg(not(feature = "sqlite"))]
        Err(StoreError::Unsupported(
            "this build of kokino-store has no SQLite backend (feature `sqlite`)".into(),
        ))
    }

    /// `"sqlite"` or `"postgres"`, as `/health` reports it.
    pub fn kind(&self) -> &'static str {
        self.db.kind()
    }

    /// On SQLite, how many of the execute path's writes were committed and in how many commits
    /// (group commit shares one commit among the writes queued at the same time); `None` on
    /// PostgreSQL, which groups its WAL flushes itself.
    pub fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        match &self.db {
            #[cfg(feature = "sqlite")]
            db::Db::Sqlite(sqlite) => Some(sqlite.group.stats()),
            #[cfg(feature = "postgres")]
            db::Db::Postgres(_) => None,
        }
    }

    /// A cheap query proving the database answers. It runs on a reader connection, so it never
    /// waits behind the writer.
    pub async fn ping(&self) -> Result<()> {
        db::Query::new("SELECT 1").execute(self.db.read()).await?;
        Ok(())
    }

    /// Reads one of a few fixed SQLite pragmas (`journal_mode`, `synchronous`, `foreign_keys`,
    /// `busy_timeout`) from a pooled connection, as text. Exists so that tests and diagnostics
    /// can confirm the settings every connection runs with.
    pub async fn sqlite_pragma(&self, name: &str) -> Result<String> {
        match &self.db {
            #[cfg(feature = "sqlite")]
            db::Db::Sqlite(sqlite) => sqlite.pragma(name).await,
            #[cfg(feature = "postgres")]
            db::Db::Postgres(_) => Err(StoreError::Unsupported(format!(
                "pragma {name} is a SQLite setting; this store runs on PostgreSQL"
            ))),
        }
    }
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
