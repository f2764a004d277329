//! The SQLite backend.
//!
//! Encoding decisions, shared by every table (see `migrations/sqlite/0001_init.sql`):
//!
//! * Timestamps are TEXT in RFC 3339, UTC, with exactly three fractional digits and a `Z`
//!   suffix (`2025-01-31T12:34:56.789Z`). Every value has the same width, so comparing the text
//!   compares the instants, which keeps `ORDER BY` and range filters on indexed columns correct
//!   while the database stays readable with the `sqlite3` shell. Times are truncated to the
//!   millisecond *before* they are written and returned, so a record handed back by a write is
//!   equal to the same record read later.
//! * JSON values are TEXT holding serialised JSON; booleans are INTEGER 0/1; unsigned counters
//!   are INTEGER (`i64`), saturating at `i64::MAX` on the way in.
//! * Every transaction that writes starts with `BEGIN IMMEDIATE`. SQLite allows one writer at a
//!   time; a deferred transaction that first reads and then writes can fail with `SQLITE_BUSY`
//!   without waiting when another writer committed in between (the busy timeout does not apply
//!   to that upgrade). Taking the write lock up front makes writers queue on the busy timeout
//!   instead, and it makes "read the highest `seq`, insert the next one" race-free.
//! * A row that cannot be turned back into a domain record (an unknown CLI type, a malformed
//!   timestamp, invalid JSON, a NULL where none may be) is reported as
//!   [`StoreError::Corrupt`] naming the table, never a panic.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use kokino_core::{
    AgentId, AgentRecord, AgentSpec, CliType, CommMode, Conversation, ExecutionRecord,
    ExecutionState, NewExecution, OutcomeClass, Role, SessionRecord, Turn, Usage,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};

use crate::{Event, EventFilter, FinishExecution, NewEvent, NewTurn, Result, StoreError};

mod analytics;
mod integrity;
mod leases;
mod shadow;
mod versions;

use leases::Fence;

/// The migrations, embedded in the binary so that a deployed broker needs no files besides its
/// database.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Pool size. SQLite serialises writers anyway; a handful of connections lets readers (status
/// endpoints, conversation reads) proceed under WAL while one writer works.
const MAX_CONNECTIONS: u32 = 8;

/// How long a connection waits for another writer's lock before giving up with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Default and maximum number of events one `list_events` call returns.
const DEFAULT_EVENT_LIMIT: u32 = 100;
const MAX_EVENT_LIMIT: u32 = 10_000;

/// The pragmas `Store::sqlite_pragma` may read. Pragma names cannot be bound as parameters, so
/// only these fixed names are ever put into SQL text.
const READABLE_PRAGMAS: &[&str] = &[
    "journal_mode",
    "synchronous",
    "foreign_keys",
    "busy_timeout",
];

const SESSION_COLUMNS: &str =
    "agent_id, conversation_id, cli_session_id, cli_session_started, created_at, last_activity_at";
const CONVERSATION_COLUMNS: &str =
    "conversation_id, agent_id, cli_type, session_id, status, created_at, updated_at";
const TURN_COLUMNS: &str = "turn_id, conversation_id, seq, role, content, metadata, created_at";
const AGENT_COLUMNS: &str = "agent_id, type, comm_mode, cwd, model, role, system_prompt, \
     timeout_ms, max_memory_mb, env, binary, extra_args, metadata, created_at, updated_at";
const EXECUTION_COLUMNS: &str = "execution_id, agent_id, conversation_id, cli_type, mode, state, \
     outcome, pid, pid_start_time, cli_session_id, exit_code, error_message, duration_ms, \
     input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, cost_usd, num_turns, \
     peak_rss_mb, started_at, finished_at";
const EVENT_COLUMNS: &str = "id, type, agent_id, cli_type, duration_ms, success, metadata, at";

#[derive(Clone, Debug)]
pub(crate) struct SqliteStore {
    /// Readers. WAL lets them run beside the writer.
    pool: SqlitePool,
    /// The one writer connection. SQLite admits one writer at a time anyway; queueing writers
    /// in this pool (a FIFO of wakers) instead of letting several connections race for the
    /// file lock avoids SQLite's busy handler, which waits by sleeping and made each contended
    /// write cost milliseconds.
    writer: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database named by `url`: `sqlite://path`, `sqlite:path`
    /// or a bare path. A query string (`?mode=rwc`) is ignored: the options Kokino needs are
    /// always set here, so that no URL can turn WAL, durability or foreign keys off.
    pub(crate) async fn open(url: &str) -> Result<Self> {
        let path = database_path(url)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }

        // Set on the connect options so that every pooled connection gets them, including ones
        // the pool opens later; per-connection pragmas set once on one connection would not.
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let unavailable = |e: sqlx::Error| {
            StoreError::Unavailable(format!("cannot open {}: {e}", path.display()))
        };
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(unavailable)?;
        MIGRATOR.run(&writer).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        Ok(Self { pool, writer })
    }

    /// Starts a transaction holding SQLite's write lock (see the module documentation).
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Reads one of a few fixed pragmas from a pooled connection, so tests and diagnostics can
    /// confirm the settings every connection runs with.
    pub(crate) async fn pragma(&self, name: &str) -> Result<String> {
        if !READABLE_PRAGMAS.contains(&name) {
            return Err(StoreError::Unsupported(format!(
                "pragma {name} cannot be read through the store"
            )));
        }
        let row = sqlx::query(&format!("PRAGMA {name}"))
            .fetch_one(&self.pool)
            .await?;
        // Some pragmas answer with text (journal_mode), others with integers (synchronous).
        if let Ok(text) = row.try_get::<String, _>(0) {
            return Ok(text);
        }
        let number: i64 = row.try_get(0)?;
        Ok(number.to_string())
    }

    // ---- agents ----

    pub(crate) async fn upsert_agent(&self, spec: &AgentSpec) -> Result<AgentRecord> {
        let now = now();
        let mut tx = self.write_tx().await?;
        // `created_at` is deliberately absent from the update list so that re-registering an
        // agent keeps the time it was first registered.
        let sql = format!(
            "INSERT INTO agents ({AGENT_COLUMNS}) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (agent_id) DO UPDATE SET \
                type = excluded.type, comm_mode = excluded.comm_mode, cwd = excluded.cwd, \
                model = excluded.model, role = excluded.role, \
                system_prompt = excluded.system_prompt, timeout_ms = excluded.timeout_ms, \
                max_memory_mb = excluded.max_memory_mb, env = excluded.env, \
                binary = excluded.binary, extra_args = excluded.extra_args, \
                metadata = excluded.metadata, updated_at = excluded.updated_at \
             RETURNING {AGENT_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(spec.agent_id.as_str())
            .bind(spec.cli_type.as_str())
            .bind(spec.comm_mode.as_str())
            .bind(spec.cwd.as_deref())
            .bind(spec.model.as_deref())
            .bind(spec.role.as_deref())
            .bind(spec.system_prompt.as_deref())
            .bind(spec.timeout_ms.map(saturating_i64))
            .bind(spec.max_memory_mb.map(saturating_i64))
            .bind(to_json_text(&spec.env))
            .bind(spec.binary.as_deref())
            .bind(to_json_text(&spec.extra_args))
            .bind(to_json_text(&spec.metadata))
            .bind(ts(now))
            .bind(ts(now))
            .fetch_one(&mut *tx)
            .await?;
        let record = decode_agent(&row)?;
        tx.commit().await?;
        Ok(record)
    }

    pub(crate) async fn get_agent(&self, id: &AgentId) -> Result<Option<AgentRecord>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE agent_id = ?");
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode_agent).transpose()
    }

    pub(crate) async fn list_agents(&self) -> Result<Vec<AgentRecord>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY agent_id");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(decode_agent).collect()
    }

    pub(crate) async fn delete_agent(&self, id: &AgentId, purge: bool) -> Result<bool> {
        let now = ts(now());
        let mut tx = self.write_tx().await?;
        // The session goes with the agent; its conversation is ended as `end_session` would,
        // so that history never shows an `active` conversation nobody can continue.
        sqlx::query(
            "UPDATE conversations SET status = 'ended', updated_at = ? \
             WHERE conversation_id IN (SELECT conversation_id FROM sessions WHERE agent_id = ?)",
        )
        .bind(&now)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM sessions WHERE agent_id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        if purge {
            // Turns and executions follow their conversations through ON DELETE CASCADE.
            sqlx::query("DELETE FROM conversations WHERE agent_id = ?")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let deleted = sqlx::query("DELETE FROM agents WHERE agent_id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(deleted > 0)
    }

    // ---- sessions and conversations ----

    pub(crate) async fn get_session(&self, agent: &AgentId) -> Result<Option<SessionRecord>> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE agent_id = ?");
        let row = sqlx::query(&sql)
            .bind(agent.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode_session).transpose()
    }

    pub(crate) async fn list_sessions(&self) -> Result<Vec<SessionRecord>> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions ORDER BY agent_id");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(decode_session).collect()
    }

    pub(crate) async fn create_session(
        &self,
        agent: &AgentId,
        cli_type: CliType,
        cli_session_id: Option<&str>,
    ) -> Result<SessionRecord> {
        let now = ts(now());
        let conversation_id = uuid::Uuid::new_v4().to_string();
        let mut tx = self.write_tx().await?;
        end_current_conversation(&mut tx, agent, &now).await?;
        // The conversation's `session_id` stays NULL until the CLI confirms the session
        // (`set_cli_session`): a preassigned id the CLI never saw must not make a later
        // `switch_session` believe there is a CLI session to resume.
        sqlx::query(
            "INSERT INTO conversations \
                 (conversation_id, agent_id, cli_type, session_id, status, created_at, updated_at) \
             VALUES (?, ?, ?, NULL, 'active', ?, ?)",
        )
        .bind(&conversation_id)
        .bind(agent.as_str())
        .bind(cli_type.as_str())
        .bind(&now)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        let session = put_session(
            &mut tx,
            agent,
            &conversation_id,
            cli_session_id,
            false,
            &now,
        )
        .await?;
        tx.commit().await?;
        Ok(session)
    }

    pub(crate) async fn switch_session(
        &self,
        agent: &AgentId,
        conversation_id: &str,
    ) -> Result<Option<SessionRecord>> {
        let now = ts(now());
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "SELECT session_id FROM conversations WHERE conversation_id = ? AND agent_id = ?",
        )
        .bind(conversation_id)
        .bind(agent.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let cli_session_id: Option<String> =
            Fields::new(&row, "conversations").get("session_id")?;

        // The conversation being left (if it is another one) ends, as with `create_session`.
        sqlx::query(
            "UPDATE conversations SET status = 'ended', updated_at = ? \
             WHERE conversation_id IN \
                 (SELECT conversation_id FROM sessions WHERE agent_id = ?) \
               AND conversation_id <> ?",
        )
        .bind(&now)
        .bind(agent.as_str())
        .bind(conversation_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE conversations SET status = 'active', updated_at = ? WHERE conversation_id = ?",
        )
        .bind(&now)
        .bind(conversation_id)
        .execute(&mut *tx)
        .await?;
        let started = cli_session_id.is_some();
        let session = put_session(
            &mut tx,
            agent,
            conversation_id,
            cli_session_id.as_deref(),
            started,
            &now,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(session))
    }

    pub(crate) async fn set_cli_session(
        &self,
        agent: &AgentId,
        conversation_id: &str,
        cli_session_id: &str,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        // Only the session still attached to this conversation is updated: if the agent moved
        // to another conversation meanwhile, that session must keep its own CLI session id.
        sqlx::query(
            "UPDATE sessions SET cli_session_id = ?, cli_session_started = 1 \
             WHERE agent_id = ? AND conversation_id = ?",
        )
        .bind(cli_session_id)
        .bind(agent.as_str())
        .bind(conversation_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE conversations SET session_id = ? WHERE conversation_id = ? AND agent_id = ?",
        )
        .bind(cli_session_id)
        .bind(conversation_id)
        .bind(agent.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn end_session(&self, agent: &AgentId) -> Result<Option<SessionRecord>> {
        let now = ts(now());
        let mut tx = self.write_tx().await?;
        let sql = format!("DELETE FROM sessions WHERE agent_id = ? RETURNING {SESSION_COLUMNS}");
        let row = sqlx::query(&sql)
            .bind(agent.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let session = decode_session(&row)?;
        mark_ended(&mut tx, &session.conversation_id, &now).await?;
        tx.commit().await?;
        Ok(Some(session))
    }

    pub(crate) async fn end_sessions_idle_since(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Vec<SessionRecord>> {
        let now = ts(now());
        let mut tx = self.write_tx().await?;
        let sql =
            format!("DELETE FROM sessions WHERE last_activity_at < ? RETURNING {SESSION_COLUMNS}");
        let rows = sqlx::query(&sql)
            .bind(ts(before))
            .fetch_all(&mut *tx)
            .await?;
        let mut sessions = rows
            .iter()
            .map(decode_session)
            .collect::<Result<Vec<_>>>()?;
        for session in &sessions {
            mark_ended(&mut tx, &session.conversation_id, &now).await?;
        }
        tx.commit().await?;
        sessions.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        Ok(sessions)
    }

    pub(crate) async fn get_conversation(
        &self,
        conversation_id: &str,
    ) -> Result<Option<(Conversation, Vec<Turn>)>> {
        // One read transaction, so the conversation and its turns come from the same snapshot.
        let mut tx = self.pool.begin().await?;
        let sql =
            format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE conversation_id = ?");
        let row = sqlx::query(&sql)
            .bind(conversation_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let conversation = decode_conversation(&row)?;
        let sql =
            format!("SELECT {TURN_COLUMNS} FROM turns WHERE conversation_id = ? ORDER BY seq");
        let rows = sqlx::query(&sql)
            .bind(conversation_id)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let turns = rows.iter().map(decode_turn).collect::<Result<Vec<_>>>()?;
        Ok(Some((conversation, turns)))
    }

    pub(crate) async fn list_conversations(&self, agent: &AgentId) -> Result<Vec<Conversation>> {
        let sql = format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE agent_id = ? \
             ORDER BY created_at DESC, conversation_id DESC"
        );
        let rows = sqlx::query(&sql)
            .bind(agent.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_conversation).collect()
    }

    pub(crate) async fn get_turn(&self, agent: &AgentId, turn_id: &str) -> Result<Option<Turn>> {
        let row = sqlx::query(
            "SELECT t.turn_id, t.conversation_id, t.seq, t.role, t.content, t.metadata, \
                    t.created_at \
             FROM turns t JOIN conversations c ON c.conversation_id = t.conversation_id \
             WHERE t.turn_id = ? AND c.agent_id = ?",
        )
        .bind(turn_id)
        .bind(agent.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode_turn).transpose()
    }

    pub(crate) async fn delete_conversation(&self, conversation_id: &str) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        // The foreign keys would remove the session, turns and executions on their own; the
        // session is deleted explicitly so the intent does not hinge on the schema alone.
        sqlx::query("DELETE FROM sessions WHERE conversation_id = ?")
            .bind(conversation_id)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM conversations WHERE conversation_id = ?")
            .bind(conversation_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(deleted > 0)
    }

    // ---- executions ----

    pub(crate) async fn begin_execution(&self, new: &NewExecution) -> Result<Turn> {
        let mut tx = self.write_tx().await?;
        let turn = begin_execution_in(&mut tx, new, None).await?;
        tx.commit().await?;
        Ok(turn)
    }

    pub(crate) async fn set_execution_process(
        &self,
        execution_id: &str,
        pid: i64,
        start_time: Option<i64>,
    ) -> Result<()> {
        // One statement is atomic on its own: no explicit transaction, one round trip to the
        // writer instead of three, on the execute path.
        let updated =
            sqlx::query("UPDATE executions SET pid = ?, pid_start_time = ? WHERE execution_id = ?")
                .bind(pid)
                .bind(start_time)
                .bind(execution_id)
                .execute(&self.writer)
                .await?
                .rows_affected();
        if updated == 0 {
            return Err(StoreError::ExecutionNotFound(execution_id.to_owned()));
        }
        Ok(())
    }

    pub(crate) async fn finish_execution(&self, fin: &FinishExecution) -> Result<Option<Turn>> {
        let mut tx = self.write_tx().await?;
        let turn = finish_execution_in(&mut tx, fin, None).await?;
        tx.commit().await?;
        Ok(turn)
    }

    pub(crate) async fn get_execution(
        &self,
        execution_id: &str,
    ) -> Result<Option<ExecutionRecord>> {
        let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE execution_id = ?");
        let row = sqlx::query(&sql)
            .bind(execution_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode_execution).transpose()
    }

    pub(crate) async fn running_executions(&self) -> Result<Vec<ExecutionRecord>> {
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions WHERE state = 'running' \
             ORDER BY started_at, execution_id"
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(decode_execution).collect()
    }

    // ---- events ----

    pub(crate) async fn insert_event(&self, event: &NewEvent) -> Result<i64> {
        let mut tx = self.write_tx().await?;
        let id = insert_event_in(&mut tx, event).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Several events in one transaction: the event writer batches what piled up while the
    /// previous batch was being written, so a burst costs one commit, not one per event.
    pub(crate) async fn insert_events(&self, events: &[NewEvent]) -> Result<()> {
        // Multi-row INSERTs: one statement per 500 events rather than one per event. Seven
        // parameters per row keeps each statement far below SQLite's parameter limit.
        let at = ts(now());
        let mut tx = self.write_tx().await?;
        for chunk in events.chunks(500) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO events (type, agent_id, cli_type, duration_ms, success, metadata, at) ",
            );
            q.push_values(chunk, |mut row, event| {
                row.push_bind(&event.event_type)
                    .push_bind(event.agent_id.as_deref())
                    .push_bind(event.cli_type.as_deref())
                    .push_bind(event.duration_ms)
                    .push_bind(event.success)
                    .push_bind(to_json_text(&event.metadata))
                    .push_bind(at.clone());
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes events older than `before`; returns how many.
    pub(crate) async fn delete_events_before(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("DELETE FROM events WHERE at < ?")
            .bind(ts(before))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Counts events older than `before` (what a dry run would delete).
    pub(crate) async fn count_events_before(&self, before: DateTime<Utc>) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM events WHERE at < ?")
            .bind(ts(before))
            .fetch_one(&self.pool)
            .await?;
        let n: i64 = Fields::new(&row, "events").get("n")?;
        Ok(n.max(0) as u64)
    }

    pub(crate) async fn list_events(&self, filter: &EventFilter) -> Result<Vec<Event>> {
        let limit = match filter.limit {
            0 => DEFAULT_EVENT_LIMIT,
            n => n.min(MAX_EVENT_LIMIT),
        };
        let mut query =
            QueryBuilder::<Sqlite>::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE 1 = 1"));
        if let Some(event_type) = &filter.event_type {
            query.push(" AND type = ").push_bind(event_type.clone());
        }
        if let Some(agent_id) = &filter.agent_id {
            query.push(" AND agent_id = ").push_bind(agent_id.clone());
        }
        if let Some(since) = filter.since {
            query.push(" AND at >= ").push_bind(ts(since));
        }
        query
            .push(" ORDER BY at DESC, id DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = query.build().fetch_all(&self.pool).await?;
        rows.iter().map(decode_event).collect()
    }

    // ---- breakers and fallback ----

    pub(crate) async fn save_circuit(
        &self,
        scope: &str,
        key: &str,
        snapshot: &serde_json::Value,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO circuit_states (scope, key, snapshot, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (scope, key) DO UPDATE SET \
                snapshot = excluded.snapshot, updated_at = excluded.updated_at",
        )
        .bind(scope)
        .bind(key)
        .bind(to_json_text(snapshot))
        .bind(ts(now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn load_circuits(&self) -> Result<Vec<(String, String, serde_json::Value)>> {
        let rows =
            sqlx::query("SELECT scope, key, snapshot FROM circuit_states ORDER BY scope, key")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(decode_circuit).collect()
    }

    pub(crate) async fn delete_circuit(&self, scope: &str, key: &str) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("DELETE FROM circuit_states WHERE scope = ? AND key = ?")
            .bind(scope)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    pub(crate) async fn put_fallback(
        &self,
        kind: &str,
        key: &str,
        reason: &str,
        since: DateTime<Utc>,
        auto: bool,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO fallback_overrides (kind, key, reason, since, auto) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (kind, key) DO UPDATE SET \
                reason = excluded.reason, since = excluded.since, auto = excluded.auto",
        )
        .bind(kind)
        .bind(key)
        .bind(reason)
        .bind(ts(since))
        .bind(i64::from(auto))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn delete_fallback(&self, kind: &str, key: &str) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("DELETE FROM fallback_overrides WHERE kind = ? AND key = ?")
            .bind(kind)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    pub(crate) async fn clear_fallbacks(&self) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("DELETE FROM fallback_overrides")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    pub(crate) async fn load_fallbacks(&self) -> Result<Vec<crate::FallbackRow>> {
        let rows = sqlx::query(
            "SELECT kind, key, reason, since, auto FROM fallback_overrides ORDER BY kind, key",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_fallback).collect()
    }
}

// ---- transaction steps shared by several operations ----

/// The writes of [`SqliteStore::begin_execution`], in the caller's write transaction; with a
/// fence, only while that lease is current ([`StoreError::StaleLease`] before anything is
/// written otherwise).
async fn begin_execution_in(
    tx: &mut Transaction<'static, Sqlite>,
    new: &NewExecution,
    fence: Option<&Fence<'_>>,
) -> Result<Turn> {
    // Taken inside the transaction: the write lock may have been a wait.
    let now_ts = now();
    let now = ts(now_ts);
    if let Some(fence) = fence {
        // Under BEGIN IMMEDIATE no other writer can change the lease until this commits, so a
        // check at the start holds for the whole transaction.
        fence.check(tx).await?;
    }
    let turn = insert_turn(
        tx,
        &new.conversation_id,
        &NewTurn {
            turn_id: new.user_turn_id.clone(),
            role: Role::User,
            content: new.prompt.clone(),
            metadata: new.turn_metadata.clone(),
        },
        now_ts,
    )
    .await?;
    sqlx::query(
        "INSERT INTO executions \
             (execution_id, agent_id, conversation_id, cli_type, mode, state, \
              user_turn_id, started_at) \
         VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
    )
    .bind(&new.execution_id)
    .bind(new.agent_id.as_str())
    .bind(&new.conversation_id)
    .bind(new.cli_type.as_str())
    .bind(new.mode.as_str())
    .bind(&new.user_turn_id)
    .bind(&now)
    .execute(&mut **tx)
    .await?;
    touch_conversation(tx, &new.conversation_id, &now).await?;
    Ok(turn)
}

/// The writes of [`SqliteStore::finish_execution`], in the caller's write transaction; with a
/// fence, only while that lease is current ([`StoreError::StaleLease`] before anything is
/// written otherwise).
async fn finish_execution_in(
    tx: &mut Transaction<'static, Sqlite>,
    fin: &FinishExecution,
    fence: Option<&Fence<'_>>,
) -> Result<Option<Turn>> {
    let now_ts = now();
    let now = ts(now_ts);
    let row =
        sqlx::query("SELECT conversation_id, agent_id FROM executions WHERE execution_id = ?")
            .bind(&fin.execution_id)
            .fetch_optional(&mut **tx)
            .await?;
    let Some(row) = row else {
        // The caller drops the transaction on the error, which rolls it back; nothing was
        // written yet anyway.
        return Err(StoreError::ExecutionNotFound(fin.execution_id.clone()));
    };
    let conversation_id: String = Fields::new(&row, "executions").get("conversation_id")?;
    if let Some(fence) = fence {
        let agent_id: String = Fields::new(&row, "executions").get("agent_id")?;
        fence.check_covers(&fin.execution_id, &agent_id)?;
        // As in `begin_execution_in`, the write lock keeps the lease as checked until commit.
        fence.check(tx).await?;
    }

    let turn = match &fin.turn {
        Some(new_turn) => Some(insert_turn(tx, &conversation_id, new_turn, now_ts).await?),
        None => None,
    };
    let usage = fin.usage;
    sqlx::query(
        "UPDATE executions SET \
             state = 'finished', outcome = ?, exit_code = ?, error_message = ?, \
             duration_ms = ?, input_tokens = ?, output_tokens = ?, cache_read_tokens = ?, \
             cache_creation_tokens = ?, cost_usd = ?, num_turns = ?, peak_rss_mb = ?, \
             cli_session_id = COALESCE(?, cli_session_id), \
             result_turn_id = COALESCE(?, result_turn_id), finished_at = ? \
         WHERE execution_id = ?",
    )
    .bind(fin.outcome.as_str())
    .bind(fin.exit_code)
    .bind(fin.error_message.as_deref())
    .bind(fin.duration_ms)
    .bind(usage.map(|u| saturating_i64(u.input_tokens)))
    .bind(usage.map(|u| saturating_i64(u.output_tokens)))
    .bind(usage.map(|u| saturating_i64(u.cache_read_tokens)))
    .bind(usage.map(|u| saturating_i64(u.cache_creation_tokens)))
    .bind(fin.cost_usd)
    .bind(fin.num_turns)
    .bind(fin.peak_rss_mb)
    .bind(fin.cli_session_id.as_deref())
    .bind(turn.as_ref().map(|t| t.turn_id.as_str()))
    .bind(&now)
    .bind(&fin.execution_id)
    .execute(&mut **tx)
    .await?;
    touch_conversation(tx, &conversation_id, &now).await?;
    Ok(turn)
}

/// Inserts a turn with the conversation's next `seq`. Must run inside a `BEGIN IMMEDIATE`
/// transaction: the write lock is what makes "highest seq + 1" unique under concurrency (the
/// UNIQUE constraint would only turn a race into an error).
async fn insert_event_in(tx: &mut Transaction<'static, Sqlite>, event: &NewEvent) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO events (type, agent_id, cli_type, duration_ms, success, metadata, at) \
         VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(&event.event_type)
    .bind(event.agent_id.as_deref())
    .bind(event.cli_type.as_deref())
    .bind(event.duration_ms)
    .bind(event.success)
    .bind(to_json_text(&event.metadata))
    .bind(ts(now()))
    .fetch_one(&mut **tx)
    .await?;
    Fields::new(&row, "events").get("id")
}

async fn insert_turn(
    tx: &mut Transaction<'static, Sqlite>,
    conversation_id: &str,
    turn: &NewTurn,
    at: DateTime<Utc>,
) -> Result<Turn> {
    let row = sqlx::query(
        "INSERT INTO turns (turn_id, conversation_id, seq, role, content, metadata, created_at) \
         SELECT ?, ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ? \
         FROM turns WHERE conversation_id = ? \
         RETURNING seq",
    )
    .bind(&turn.turn_id)
    .bind(conversation_id)
    .bind(turn.role.as_str())
    .bind(&turn.content)
    .bind(to_json_text(&turn.metadata))
    .bind(ts(at))
    .bind(conversation_id)
    .fetch_one(&mut **tx)
    .await?;
    let seq: i64 = Fields::new(&row, "turns").get("seq")?;
    Ok(Turn {
        turn_id: turn.turn_id.clone(),
        conversation_id: conversation_id.to_owned(),
        seq,
        role: turn.role,
        content: turn.content.clone(),
        metadata: turn.metadata.clone(),
        created_at: at,
    })
}

/// Records activity on a conversation and on the session attached to it (if any).
async fn touch_conversation(
    tx: &mut Transaction<'static, Sqlite>,
    conversation_id: &str,
    now: &str,
) -> Result<()> {
    sqlx::query("UPDATE conversations SET updated_at = ? WHERE conversation_id = ?")
        .bind(now)
        .bind(conversation_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE sessions SET last_activity_at = ? WHERE conversation_id = ?")
        .bind(now)
        .bind(conversation_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn mark_ended(
    tx: &mut Transaction<'static, Sqlite>,
    conversation_id: &str,
    now: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE conversations SET status = 'ended', updated_at = ? WHERE conversation_id = ?",
    )
    .bind(now)
    .bind(conversation_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends the conversation the agent's session currently points at, if there is one.
async fn end_current_conversation(
    tx: &mut Transaction<'static, Sqlite>,
    agent: &AgentId,
    now: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE conversations SET status = 'ended', updated_at = ? \
         WHERE conversation_id IN (SELECT conversation_id FROM sessions WHERE agent_id = ?)",
    )
    .bind(now)
    .bind(agent.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes the agent's session row, replacing any previous one, and returns it.
async fn put_session(
    tx: &mut Transaction<'static, Sqlite>,
    agent: &AgentId,
    conversation_id: &str,
    cli_session_id: Option<&str>,
    started: bool,
    now: &str,
) -> Result<SessionRecord> {
    let sql = format!(
        "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) \
         ON CONFLICT (agent_id) DO UPDATE SET \
             conversation_id = excluded.conversation_id, \
             cli_session_id = excluded.cli_session_id, \
             cli_session_started = excluded.cli_session_started, \
             created_at = excluded.created_at, \
             last_activity_at = excluded.last_activity_at \
         RETURNING {SESSION_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(agent.as_str())
        .bind(conversation_id)
        .bind(cli_session_id)
        .bind(started)
        .bind(now)
        .bind(now)
        .fetch_one(&mut **tx)
        .await?;
    decode_session(&row)
}

// ---- encoding ----

/// The current time, truncated to what the database keeps (see the module documentation).
fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

/// A timestamp in the stored form: fixed-width RFC 3339, UTC, milliseconds.
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn to_json_text<T: serde::Serialize + ?Sized>(value: &T) -> String {
    // Serialising maps with string keys, vectors of strings and JSON values cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// Counters and limits are `u64` in the domain but INTEGER (`i64`) in SQL; values beyond
/// `i64::MAX` (hundreds of millions of years in ms) are effectively infinite anyway.
fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Extracts the file path from `sqlite://path`, `sqlite:path` or a bare path.
fn database_path(url: &str) -> Result<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path == ":memory:" {
        // A pool of in-memory databases would give every connection its own empty database.
        return Err(StoreError::Unsupported(format!(
            "the SQLite URL {url:?} names no database file"
        )));
    }
    Ok(Path::new(path).to_path_buf())
}

// ---- decoding ----

/// Reads the columns of one row, turning every failure into [`StoreError::Corrupt`].
struct Fields<'r> {
    row: &'r SqliteRow,
    table: &'static str,
}

impl<'r> Fields<'r> {
    fn new(row: &'r SqliteRow, table: &'static str) -> Self {
        Self { row, table }
    }

    fn corrupt(&self, column: &str, message: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            table: self.table,
            message: format!("column {column}: {message}"),
        }
    }

    fn get<T>(&self, column: &str) -> Result<T>
    where
        T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
    {
        self.row
            .try_get(column)
            .map_err(|e| self.corrupt(column, e))
    }

    fn parse<T>(&self, column: &str) -> Result<T>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let text: String = self.get(column)?;
        text.parse().map_err(|e| self.corrupt(column, e))
    }

    fn parse_opt<T>(&self, column: &str) -> Result<Option<T>>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let text: Option<String> = self.get(column)?;
        text.map(|t| t.parse().map_err(|e| self.corrupt(column, e)))
            .transpose()
    }

    fn agent_id(&self, column: &str) -> Result<AgentId> {
        let text: String = self.get(column)?;
        AgentId::parse(&text).map_err(|e| self.corrupt(column, e))
    }

    fn time(&self, column: &str) -> Result<DateTime<Utc>> {
        let text: String = self.get(column)?;
        parse_time(&text).map_err(|e| self.corrupt(column, e))
    }

    fn time_opt(&self, column: &str) -> Result<Option<DateTime<Utc>>> {
        let text: Option<String> = self.get(column)?;
        text.map(|t| parse_time(&t).map_err(|e| self.corrupt(column, e)))
            .transpose()
    }

    fn json<T: serde::de::DeserializeOwned>(&self, column: &str) -> Result<T> {
        let text: String = self.get(column)?;
        serde_json::from_str(&text).map_err(|e| self.corrupt(column, e))
    }

    fn unsigned_opt(&self, column: &str) -> Result<Option<u64>> {
        let value: Option<i64> = self.get(column)?;
        value
            .map(|v| u64::try_from(v).map_err(|_| self.corrupt(column, "negative value")))
            .transpose()
    }

    fn bool(&self, column: &str) -> Result<bool> {
        let value: i64 = self.get(column)?;
        match value {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.corrupt(column, format!("{other} is not a boolean"))),
        }
    }

    fn bool_opt(&self, column: &str) -> Result<Option<bool>> {
        let value: Option<i64> = self.get(column)?;
        match value {
            None => Ok(None),
            Some(0) => Ok(Some(false)),
            Some(1) => Ok(Some(true)),
            Some(other) => Err(self.corrupt(column, format!("{other} is not a boolean"))),
        }
    }
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    Ok(DateTime::parse_from_rfc3339(text)?.with_timezone(&Utc))
}

fn decode_agent(row: &SqliteRow) -> Result<AgentRecord> {
    let f = Fields::new(row, "agents");
    Ok(AgentRecord {
        spec: AgentSpec {
            agent_id: f.agent_id("agent_id")?,
            cli_type: f.parse::<CliType>("type")?,
            comm_mode: f.parse::<CommMode>("comm_mode")?,
            cwd: f.get("cwd")?,
            model: f.get("model")?,
            role: f.get("role")?,
            system_prompt: f.get("system_prompt")?,
            timeout_ms: f.unsigned_opt("timeout_ms")?,
            max_memory_mb: f.unsigned_opt("max_memory_mb")?,
            env: f.json("env")?,
            binary: f.get("binary")?,
            extra_args: f.json("extra_args")?,
            metadata: f.json("metadata")?,
        },
        created_at: f.time("created_at")?,
        updated_at: f.time("updated_at")?,
    })
}

fn decode_session(row: &SqliteRow) -> Result<SessionRecord> {
    let f = Fields::new(row, "sessions");
    Ok(SessionRecord {
        agent_id: f.agent_id("agent_id")?,
        conversation_id: f.get("conversation_id")?,
        cli_session_id: f.get("cli_session_id")?,
        cli_session_started: f.bool("cli_session_started")?,
        created_at: f.time("created_at")?,
        last_activity_at: f.time("last_activity_at")?,
    })
}

fn decode_conversation(row: &SqliteRow) -> Result<Conversation> {
    let f = Fields::new(row, "conversations");
    Ok(Conversation {
        conversation_id: f.get("conversation_id")?,
        agent_id: f.agent_id("agent_id")?,
        cli_type: f.parse::<CliType>("cli_type")?,
        session_id: f.get("session_id")?,
        status: f.get("status")?,
        created_at: f.time("created_at")?,
        updated_at: f.time("updated_at")?,
    })
}

fn decode_turn(row: &SqliteRow) -> Result<Turn> {
    let f = Fields::new(row, "turns");
    let role_text: String = f.get("role")?;
    let role = Role::parse(&role_text)
        .ok_or_else(|| f.corrupt("role", format!("unknown role {role_text:?}")))?;
    Ok(Turn {
        turn_id: f.get("turn_id")?,
        conversation_id: f.get("conversation_id")?,
        seq: f.get("seq")?,
        role,
        content: f.get("content")?,
        metadata: f.json("metadata")?,
        created_at: f.time("created_at")?,
    })
}

fn decode_execution(row: &SqliteRow) -> Result<ExecutionRecord> {
    let f = Fields::new(row, "executions");
    let state_text: String = f.get("state")?;
    let state = match state_text.as_str() {
        "running" => ExecutionState::Running,
        "finished" => ExecutionState::Finished,
        other => return Err(f.corrupt("state", format!("unknown state {other:?}"))),
    };
    let tokens = [
        f.unsigned_opt("input_tokens")?,
        f.unsigned_opt("output_tokens")?,
        f.unsigned_opt("cache_read_tokens")?,
        f.unsigned_opt("cache_creation_tokens")?,
    ];
    // The four counters are written together, so any of them present means usage was reported.
    let usage = tokens.iter().any(Option::is_some).then(|| Usage {
        input_tokens: tokens[0].unwrap_or(0),
        output_tokens: tokens[1].unwrap_or(0),
        cache_read_tokens: tokens[2].unwrap_or(0),
        cache_creation_tokens: tokens[3].unwrap_or(0),
    });
    Ok(ExecutionRecord {
        execution_id: f.get("execution_id")?,
        agent_id: f.agent_id("agent_id")?,
        conversation_id: f.get("conversation_id")?,
        cli_type: f.parse::<CliType>("cli_type")?,
        mode: f.parse::<CommMode>("mode")?,
        state,
        outcome: f.parse_opt::<OutcomeClass>("outcome")?,
        pid: f.get("pid")?,
        pid_start_time: f.get("pid_start_time")?,
        cli_session_id: f.get("cli_session_id")?,
        exit_code: f.get("exit_code")?,
        error_message: f.get("error_message")?,
        duration_ms: f.get("duration_ms")?,
        usage,
        cost_usd: f.get("cost_usd")?,
        num_turns: f.get("num_turns")?,
        peak_rss_mb: f.get("peak_rss_mb")?,
        started_at: f.time("started_at")?,
        finished_at: f.time_opt("finished_at")?,
    })
}

fn decode_event(row: &SqliteRow) -> Result<Event> {
    let f = Fields::new(row, "events");
    Ok(Event {
        id: f.get("id")?,
        event_type: f.get("type")?,
        agent_id: f.get("agent_id")?,
        cli_type: f.get("cli_type")?,
        duration_ms: f.get("duration_ms")?,
        success: f.bool_opt("success")?,
        metadata: f.json("metadata")?,
        at: f.time("at")?,
    })
}

fn decode_circuit(row: &SqliteRow) -> Result<(String, String, serde_json::Value)> {
    let f = Fields::new(row, "circuit_states");
    Ok((f.get("scope")?, f.get("key")?, f.json("snapshot")?))
}

fn decode_fallback(row: &SqliteRow) -> Result<crate::FallbackRow> {
    let f = Fields::new(row, "fallback_overrides");
    Ok(crate::FallbackRow {
        kind: f.get("kind")?,
        key: f.get("key")?,
        reason: f.get("reason")?,
        since: f.time("since")?,
        auto: f.bool("auto")?,
    })
}
