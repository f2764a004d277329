//! The PostgreSQL backend.
//!
//! It answers every [`crate::Store`] operation with the same results as the SQLite backend; only
//! the encoding and the concurrency control differ (see `migrations/postgres/0001_init.sql`):
//!
//! * Timestamps are TIMESTAMPTZ. PostgreSQL keeps microseconds, SQLite's text keeps milliseconds;
//!   every time is truncated to the millisecond *before* it is written or compared, so a record
//!   handed back by a write equals the same record read later, and a range filter such as
//!   "events since T" includes an event written in T's millisecond, exactly as on SQLite.
//! * JSON values are JSONB, booleans BOOLEAN, integers BIGINT; unsigned counters saturate at
//!   `i64::MAX` on the way in, as on SQLite.
//! * SQLite runs one writer at a time, which makes every write transaction trivially
//!   serialisable. PostgreSQL runs writers concurrently under READ COMMITTED, so every
//!   transaction that writes an agent's session, conversations or turns first takes that
//!   agent's transaction-scoped advisory lock ([`lock_agents`]). Writes for one agent are then
//!   as serial as on SQLite, while different agents proceed in parallel. This is what makes the
//!   turn `seq` ("highest + 1") race-free: a conversation belongs to one agent for its whole
//!   life, so two appends to it always queue on the same lock. It also rules out deadlocks:
//!   row locks alone, taken in whatever order each operation needs its rows, let an append and
//!   a session change wait for each other in a cycle (PostgreSQL then aborts one of them).
//! * A row that cannot be turned back into a domain record (an unknown CLI type, invalid JSON for
//!   the target type, a NULL where none may be) is reported as [`StoreError::Corrupt`] naming the
//!   table, never a panic.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kokino_core::{
    AgentId, AgentRecord, AgentSpec, CliType, CommMode, Conversation, ExecutionRecord,
    ExecutionState, NewExecution, OutcomeClass, Role, SessionRecord, Turn, Usage,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{ConnectOptions, Connection, Postgres, QueryBuilder, Row, Transaction};

use crate::{Event, EventFilter, FinishExecution, NewEvent, NewTurn, Result, StoreError};

mod analytics;
mod integrity;
mod leases;
mod shadow;
mod versions;

use leases::Fence;

/// The migrations, embedded in the binary so that a deployed broker needs no files besides its
/// configuration. sqlx serialises concurrent runs with an advisory lock, so several brokers may
/// start against the same database at once.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Pool size. Unlike SQLite, PostgreSQL runs writers concurrently, so the pool bounds how many
/// store calls proceed at once; ten covers the broker's concurrent executions and status reads
/// while leaving room on a server's default of 100 connections for other brokers and tools.
const MAX_CONNECTIONS: u32 = 10;

/// How long a store call waits for a free pooled connection before failing. A full pool for this
/// long means the database is overloaded or unreachable, which callers must hear about rather
/// than queue behind forever.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Every statement on a pooled connection is cancelled by the server after this long. No store
/// query should take more than milliseconds; the limit keeps a pathological query or a lock held
/// by a stuck client from holding a pooled connection indefinitely. Migrations run on their own
/// connection without it, because a future index build on a large table may legitimately take
/// longer.
const STATEMENT_TIMEOUT: &str = "30s";

/// Default and maximum number of events one `list_events` call returns.
const DEFAULT_EVENT_LIMIT: u32 = 100;
const MAX_EVENT_LIMIT: u32 = 10_000;

const SESSION_COLUMNS: &str =
    "agent_id, conversation_id, cli_session_id, cli_session_started, created_at, last_activity_at";
const CONVERSATION_COLUMNS: &str =
    "conversation_id, agent_id, cli_type, session_id, status, created_at, updated_at";
const TURN_COLUMNS: &str = "turn_id, conversation_id, seq, role, content, metadata, created_at";
// `binary` is a keyword in PostgreSQL and must be quoted; the row still names the column
// `binary`, so decoding is the same as on SQLite.
const AGENT_COLUMNS: &str = "agent_id, type, comm_mode, cwd, model, role, system_prompt, \
     timeout_ms, max_memory_mb, env, \"binary\", extra_args, metadata, created_at, updated_at";
const EXECUTION_COLUMNS: &str = "execution_id, agent_id, conversation_id, cli_type, mode, state, \
     outcome, pid, pid_start_time, cli_session_id, exit_code, error_message, duration_ms, \
     input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, cost_usd, num_turns, \
     peak_rss_mb, started_at, finished_at";
const EVENT_COLUMNS: &str = "id, type, agent_id, cli_type, duration_ms, success, metadata, at";

#[derive(Clone, Debug)]
pub(crate) struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to the database named by `url` (`postgres://` or `postgresql://`) and applies the
    /// embedded migrations. The database itself must exist: creating databases needs privileges
    /// a broker should not hold, so that stays the operator's step.
    pub(crate) async fn open(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url).map_err(|e| {
            // The error never echoes the URL, which may carry a password.
            StoreError::Unsupported(format!("invalid PostgreSQL URL: {e}"))
        })?;
        let options = options.application_name("kokino");
        // Named without the password, for error messages.
        let target = format!(
            "postgres://{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        let unavailable =
            |e: sqlx::Error| StoreError::Unavailable(format!("cannot connect to {target}: {e}"));

        let mut migration_conn = options.connect().await.map_err(unavailable)?;
        MIGRATOR.run(&mut migration_conn).await?;
        // Closing politely tells the server at once instead of leaving a dead session behind;
        // a failure here changes nothing for the store.
        let _ = migration_conn.close().await;

        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.options([("statement_timeout", STATEMENT_TIMEOUT)]))
            .await
            .map_err(unavailable)?;
        Ok(Self { pool })
    }

    async fn write_tx(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ---- agents ----

    pub(crate) async fn upsert_agent(&self, spec: &AgentSpec) -> Result<AgentRecord> {
        let now = now();
        // `created_at` is deliberately absent from the update list so that re-registering an
        // agent keeps the time it was first registered. One statement is atomic on its own.
        let sql = format!(
            "INSERT INTO agents ({AGENT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (agent_id) DO UPDATE SET \
                type = EXCLUDED.type, comm_mode = EXCLUDED.comm_mode, cwd = EXCLUDED.cwd, \
                model = EXCLUDED.model, role = EXCLUDED.role, \
                system_prompt = EXCLUDED.system_prompt, timeout_ms = EXCLUDED.timeout_ms, \
                max_memory_mb = EXCLUDED.max_memory_mb, env = EXCLUDED.env, \
                \"binary\" = EXCLUDED.\"binary\", extra_args = EXCLUDED.extra_args, \
                metadata = EXCLUDED.metadata, updated_at = EXCLUDED.updated_at \
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
            .bind(Json(&spec.env))
            .bind(spec.binary.as_deref())
            .bind(Json(&spec.extra_args))
            .bind(Json(&spec.metadata))
            .bind(now)
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
        decode_agent(&row)
    }

    pub(crate) async fn get_agent(&self, id: &AgentId) -> Result<Option<AgentRecord>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE agent_id = $1");
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
        let now = now();
        let mut tx = self.write_tx().await?;
        lock_agents(&mut tx, &[id.as_str()]).await?;
        // The session goes with the agent; its conversation is ended as `end_session` would,
        // so that history never shows an `active` conversation nobody can continue.
        end_current_conversation(&mut tx, id, now).await?;
        sqlx::query("DELETE FROM sessions WHERE agent_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        if purge {
            // Turns and executions follow their conversations through ON DELETE CASCADE.
            sqlx::query("DELETE FROM conversations WHERE agent_id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let deleted = sqlx::query("DELETE FROM agents WHERE agent_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(deleted > 0)
    }

    // ---- sessions and conversations ----

    pub(crate) async fn get_session(&self, agent: &AgentId) -> Result<Option<SessionRecord>> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE agent_id = $1");
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
        let now = now();
        let conversation_id = uuid::Uuid::new_v4().to_string();
        let mut tx = self.write_tx().await?;
        lock_agents(&mut tx, &[agent.as_str()]).await?;
        end_current_conversation(&mut tx, agent, now).await?;
        // The conversation's `session_id` stays NULL until the CLI confirms the session
        // (`set_cli_session`): a preassigned id the CLI never saw must not make a later
        // `switch_session` believe there is a CLI session to resume.
        sqlx::query(
            "INSERT INTO conversations \
                 (conversation_id, agent_id, cli_type, session_id, status, created_at, updated_at) \
             VALUES ($1, $2, $3, NULL, 'active', $4, $5)",
        )
        .bind(&conversation_id)
        .bind(agent.as_str())
        .bind(cli_type.as_str())
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let session =
            put_session(&mut tx, agent, &conversation_id, cli_session_id, false, now).await?;
        tx.commit().await?;
        Ok(session)
    }

    pub(crate) async fn switch_session(
        &self,
        agent: &AgentId,
        conversation_id: &str,
    ) -> Result<Option<SessionRecord>> {
        let now = now();
        let mut tx = self.write_tx().await?;
        lock_agents(&mut tx, &[agent.as_str()]).await?;
        let row = sqlx::query(
            "SELECT session_id FROM conversations WHERE conversation_id = $1 AND agent_id = $2",
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
            "UPDATE conversations SET status = 'ended', updated_at = $1 \
             WHERE conversation_id IN \
                 (SELECT conversation_id FROM sessions WHERE agent_id = $2) \
               AND conversation_id <> $3",
        )
        .bind(now)
        .bind(agent.as_str())
        .bind(conversation_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE conversations SET status = 'active', updated_at = $1 \
             WHERE conversation_id = $2",
        )
        .bind(now)
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
            now,
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
        lock_agents(&mut tx, &[agent.as_str()]).await?;
        // Only the session still attached to this conversation is updated: if the agent moved
        // to another conversation meanwhile, that session must keep its own CLI session id.
        sqlx::query(
            "UPDATE sessions SET cli_session_id = $1, cli_session_started = TRUE \
             WHERE agent_id = $2 AND conversation_id = $3",
        )
        .bind(cli_session_id)
        .bind(agent.as_str())
        .bind(conversation_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE conversations SET session_id = $1 \
             WHERE conversation_id = $2 AND agent_id = $3",
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
        let now = now();
        let mut tx = self.write_tx().await?;
        lock_agents(&mut tx, &[agent.as_str()]).await?;
        let sql = format!("DELETE FROM sessions WHERE agent_id = $1 RETURNING {SESSION_COLUMNS}");
        let row = sqlx::query(&sql)
            .bind(agent.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let session = decode_session(&row)?;
        mark_ended(&mut tx, &session.conversation_id, now).await?;
        tx.commit().await?;
        Ok(Some(session))
    }

    pub(crate) async fn end_sessions_idle_since(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Vec<SessionRecord>> {
        let now = now();
        let before = ms(before);
        let mut tx = self.write_tx().await?;
        // The candidates are read without locks, then their agents are locked, then the delete
        // checks idleness again: an execution that touched a session in between keeps it.
        let candidates: Vec<String> =
            sqlx::query_scalar("SELECT agent_id FROM sessions WHERE last_activity_at < $1")
                .bind(before)
                .fetch_all(&mut *tx)
                .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = candidates.iter().map(String::as_str).collect();
        lock_agents(&mut tx, &ids).await?;
        let sql = format!(
            "DELETE FROM sessions WHERE agent_id = ANY($1) AND last_activity_at < $2 \
             RETURNING {SESSION_COLUMNS}"
        );
        let rows = sqlx::query(&sql)
            .bind(&candidates)
            .bind(before)
            .fetch_all(&mut *tx)
            .await?;
        let mut sessions = rows
            .iter()
            .map(decode_session)
            .collect::<Result<Vec<_>>>()?;
        sessions.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        for session in &sessions {
            mark_ended(&mut tx, &session.conversation_id, now).await?;
        }
        tx.commit().await?;
        Ok(sessions)
    }

    pub(crate) async fn get_conversation(
        &self,
        conversation_id: &str,
    ) -> Result<Option<(Conversation, Vec<Turn>)>> {
        // READ COMMITTED takes a new snapshot per statement; REPEATABLE READ makes the
        // conversation and its turns come from one snapshot, as SQLite's read transaction does.
        // A read-only transaction at that level never fails with a serialisation error.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        let sql =
            format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE conversation_id = $1");
        let row = sqlx::query(&sql)
            .bind(conversation_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let conversation = decode_conversation(&row)?;
        let sql =
            format!("SELECT {TURN_COLUMNS} FROM turns WHERE conversation_id = $1 ORDER BY seq");
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
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE agent_id = $1 \
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
             WHERE t.turn_id = $1 AND c.agent_id = $2",
        )
        .bind(turn_id)
        .bind(agent.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode_turn).transpose()
    }

    pub(crate) async fn delete_conversation(&self, conversation_id: &str) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        lock_conversation_agent(&mut tx, conversation_id).await?;
        // The foreign keys would remove the session, turns and executions on their own; the
        // session is deleted explicitly so the intent does not hinge on the schema alone.
        sqlx::query("DELETE FROM sessions WHERE conversation_id = $1")
            .bind(conversation_id)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM conversations WHERE conversation_id = $1")
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
        // One statement is atomic on its own: no explicit transaction, one round trip on the
        // execute path.
        let updated = sqlx::query(
            "UPDATE executions SET pid = $1, pid_start_time = $2 WHERE execution_id = $3",
        )
        .bind(pid)
        .bind(start_time)
        .bind(execution_id)
        .execute(&self.pool)
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
        let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE execution_id = $1");
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
        let row = sqlx::query(
            "INSERT INTO events (type, agent_id, cli_type, duration_ms, success, metadata, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(&event.event_type)
        .bind(event.agent_id.as_deref())
        .bind(event.cli_type.as_deref())
        .bind(event.duration_ms)
        .bind(event.success)
        .bind(Json(&event.metadata))
        .bind(now())
        .fetch_one(&self.pool)
        .await?;
        Fields::new(&row, "events").get("id")
    }

    /// Several events in one transaction: the event writer batches what piled up while the
    /// previous batch was being written, so a burst costs one commit, not one per event.
    pub(crate) async fn insert_events(&self, events: &[NewEvent]) -> Result<()> {
        // Multi-row INSERTs: one statement per 500 events rather than one per event. Seven
        // parameters per row keeps each statement far below PostgreSQL's 65535 parameters.
        let at = now();
        let mut tx = self.write_tx().await?;
        for chunk in events.chunks(500) {
            let mut q = QueryBuilder::<Postgres>::new(
                "INSERT INTO events (type, agent_id, cli_type, duration_ms, success, metadata, at) ",
            );
            q.push_values(chunk, |mut row, event| {
                row.push_bind(&event.event_type)
                    .push_bind(event.agent_id.as_deref())
                    .push_bind(event.cli_type.as_deref())
                    .push_bind(event.duration_ms)
                    .push_bind(event.success)
                    .push_bind(Json(&event.metadata))
                    .push_bind(at);
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn delete_events_before(&self, before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query("DELETE FROM events WHERE at < $1")
            .bind(ms(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    pub(crate) async fn count_events_before(&self, before: DateTime<Utc>) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM events WHERE at < $1")
            .bind(ms(before))
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
            QueryBuilder::<Postgres>::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE TRUE"));
        if let Some(event_type) = &filter.event_type {
            query.push(" AND type = ").push_bind(event_type.clone());
        }
        if let Some(agent_id) = &filter.agent_id {
            query.push(" AND agent_id = ").push_bind(agent_id.clone());
        }
        if let Some(since) = filter.since {
            query.push(" AND at >= ").push_bind(ms(since));
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
        sqlx::query(
            "INSERT INTO circuit_states (scope, key, snapshot, updated_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (scope, key) DO UPDATE SET \
                snapshot = EXCLUDED.snapshot, updated_at = EXCLUDED.updated_at",
        )
        .bind(scope)
        .bind(key)
        .bind(Json(snapshot))
        .bind(now())
        .execute(&self.pool)
        .await?;
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
        let done = sqlx::query("DELETE FROM circuit_states WHERE scope = $1 AND key = $2")
            .bind(scope)
            .bind(key)
            .execute(&self.pool)
            .await?;
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
        sqlx::query(
            "INSERT INTO fallback_overrides (kind, key, reason, since, auto) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (kind, key) DO UPDATE SET \
                reason = EXCLUDED.reason, since = EXCLUDED.since, auto = EXCLUDED.auto",
        )
        .bind(kind)
        .bind(key)
        .bind(reason)
        .bind(ms(since))
        .bind(auto)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(crate) async fn delete_fallback(&self, kind: &str, key: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM fallback_overrides WHERE kind = $1 AND key = $2")
            .bind(kind)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub(crate) async fn clear_fallbacks(&self) -> Result<u64> {
        let done = sqlx::query("DELETE FROM fallback_overrides")
            .execute(&self.pool)
            .await?;
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

// ---- per-agent write locks ----

/// The first key of Kokino's two-key advisory locks ("KKNO"). PostgreSQL keeps one-key and
/// two-key advisory locks apart, so these never collide with sqlx's migration lock (one key);
/// the namespace keeps them apart from any other application sharing the database.
const AGENT_LOCK_NAMESPACE: i32 = 0x4B4B_4E4F;

/// The second key for an agent: 32-bit FNV-1a of its id. Two agents sharing a key only means
/// their writes queue behind each other, never a wrong result. Computed here rather than with
/// the server's `hashtext` so that [`lock_agents`] can sort keys before taking them.
fn agent_lock_key(agent_id: &str) -> i32 {
    let hash = agent_id.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    i32::from_ne_bytes(hash.to_ne_bytes())
}

/// Takes the write locks of the given agents until the transaction ends.
///
/// Every transaction that writes an agent's session, conversations or turns calls this once,
/// before it writes or locks any of their rows, so a transaction never waits for an agent's lock
/// while holding rows another writer of that agent needs. Only unlocked reads that find out
/// which agents are concerned may come first, and the writes after the lock re-check their
/// conditions: under READ COMMITTED each statement sees what the previous holder committed. Several agents (the idle sweep, the
/// repair) are locked in ascending key order, so two such transactions cannot each hold a key the
/// other waits for. Agents need not exist: the lock protects the id, which also covers the
/// history of a deleted agent.
pub(super) async fn lock_agents(
    tx: &mut Transaction<'static, Postgres>,
    agent_ids: &[&str],
) -> Result<()> {
    let mut keys: Vec<i32> = agent_ids.iter().map(|id| agent_lock_key(id)).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(AGENT_LOCK_NAMESPACE)
            .bind(key)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Takes the write lock of the agent a conversation belongs to; an unknown conversation locks
/// nothing. The read needs no lock of its own: a conversation's agent never changes.
async fn lock_conversation_agent(
    tx: &mut Transaction<'static, Postgres>,
    conversation_id: &str,
) -> Result<()> {
    let agent: Option<String> =
        sqlx::query_scalar("SELECT agent_id FROM conversations WHERE conversation_id = $1")
            .bind(conversation_id)
            .fetch_optional(&mut **tx)
            .await?;
    if let Some(agent) = agent {
        lock_agents(tx, &[agent.as_str()]).await?;
    }
    Ok(())
}

// ---- transaction steps shared by several operations ----

/// The writes of [`PgStore::begin_execution`], in the caller's transaction; with a fence, only
/// while that lease is current ([`StoreError::StaleLease`] before anything is written otherwise).
async fn begin_execution_in(
    tx: &mut Transaction<'static, Postgres>,
    new: &NewExecution,
    fence: Option<&Fence<'_>>,
) -> Result<Turn> {
    let now = now();
    // An unknown conversation has no agent to lock; the turn insert then fails on its
    // foreign key, as on SQLite.
    lock_conversation_agent(tx, &new.conversation_id).await?;
    if let Some(fence) = fence {
        // After the agent's lock, like every other step of the transaction; the check holds
        // the lease row until commit (see `Fence::check`).
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
        now,
    )
    .await?;
    sqlx::query(
        "INSERT INTO executions \
             (execution_id, agent_id, conversation_id, cli_type, mode, state, \
              user_turn_id, started_at) \
         VALUES ($1, $2, $3, $4, $5, 'running', $6, $7)",
    )
    .bind(&new.execution_id)
    .bind(new.agent_id.as_str())
    .bind(&new.conversation_id)
    .bind(new.cli_type.as_str())
    .bind(new.mode.as_str())
    .bind(&new.user_turn_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    touch_conversation(tx, &new.conversation_id, now).await?;
    Ok(turn)
}

/// The writes of [`PgStore::finish_execution`], in the caller's transaction; with a fence, only
/// while that lease is current ([`StoreError::StaleLease`] before anything is written otherwise).
async fn finish_execution_in(
    tx: &mut Transaction<'static, Postgres>,
    fin: &FinishExecution,
    fence: Option<&Fence<'_>>,
) -> Result<Option<Turn>> {
    let now = now();
    let row =
        sqlx::query("SELECT conversation_id, agent_id FROM executions WHERE execution_id = $1")
            .bind(&fin.execution_id)
            .fetch_optional(&mut **tx)
            .await?;
    let Some(row) = row else {
        // The caller drops the transaction on the error, which rolls it back; nothing was
        // written yet anyway.
        return Err(StoreError::ExecutionNotFound(fin.execution_id.clone()));
    };
    let conversation_id: String = Fields::new(&row, "executions").get("conversation_id")?;
    lock_conversation_agent(tx, &conversation_id).await?;
    if let Some(fence) = fence {
        let agent_id: String = Fields::new(&row, "executions").get("agent_id")?;
        fence.check_covers(&fin.execution_id, &agent_id)?;
        fence.check(tx).await?;
    }

    let turn = match &fin.turn {
        Some(new_turn) => Some(insert_turn(tx, &conversation_id, new_turn, now).await?),
        None => None,
    };
    let usage = fin.usage;
    let updated = sqlx::query(
        "UPDATE executions SET \
             state = 'finished', outcome = $1, exit_code = $2, error_message = $3, \
             duration_ms = $4, input_tokens = $5, output_tokens = $6, \
             cache_read_tokens = $7, cache_creation_tokens = $8, cost_usd = $9, \
             num_turns = $10, peak_rss_mb = $11, \
             cli_session_id = COALESCE($12, cli_session_id), \
             result_turn_id = COALESCE($13, result_turn_id), finished_at = $14 \
         WHERE execution_id = $15",
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
    .bind(now)
    .bind(&fin.execution_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if updated == 0 {
        // The conversation (and with it the execution) was deleted between the read above
        // and the lock; SQLite's single writer cannot get here, and the answer is the same
        // as if the deletion had come first. The caller drops the transaction on the error,
        // which rolls the turn back.
        return Err(StoreError::ExecutionNotFound(fin.execution_id.clone()));
    }
    touch_conversation(tx, &conversation_id, now).await?;
    Ok(turn)
}

/// Inserts a turn with the conversation's next `seq`. The caller must hold the lock of the
/// conversation's agent ([`lock_conversation_agent`]): the UNIQUE (conversation_id, seq)
/// constraint alone would only turn a race into an error. Under READ COMMITTED this statement
/// sees every turn committed before the lock was granted.
async fn insert_turn(
    tx: &mut Transaction<'static, Postgres>,
    conversation_id: &str,
    turn: &NewTurn,
    at: DateTime<Utc>,
) -> Result<Turn> {
    let row = sqlx::query(
        "INSERT INTO turns (turn_id, conversation_id, seq, role, content, metadata, created_at) \
         SELECT $1, $2, COALESCE(MAX(seq), 0) + 1, $3, $4, $5, $6 \
         FROM turns WHERE conversation_id = $2 \
         RETURNING seq",
    )
    .bind(&turn.turn_id)
    .bind(conversation_id)
    .bind(turn.role.as_str())
    .bind(&turn.content)
    .bind(Json(&turn.metadata))
    .bind(at)
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
    tx: &mut Transaction<'static, Postgres>,
    conversation_id: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query("UPDATE conversations SET updated_at = $1 WHERE conversation_id = $2")
        .bind(now)
        .bind(conversation_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE sessions SET last_activity_at = $1 WHERE conversation_id = $2")
        .bind(now)
        .bind(conversation_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn mark_ended(
    tx: &mut Transaction<'static, Postgres>,
    conversation_id: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "UPDATE conversations SET status = 'ended', updated_at = $1 WHERE conversation_id = $2",
    )
    .bind(now)
    .bind(conversation_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends the conversation the agent's session currently points at, if there is one.
async fn end_current_conversation(
    tx: &mut Transaction<'static, Postgres>,
    agent: &AgentId,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "UPDATE conversations SET status = 'ended', updated_at = $1 \
         WHERE conversation_id IN (SELECT conversation_id FROM sessions WHERE agent_id = $2)",
    )
    .bind(now)
    .bind(agent.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes the agent's session row, replacing any previous one, and returns it.
async fn put_session(
    tx: &mut Transaction<'static, Postgres>,
    agent: &AgentId,
    conversation_id: &str,
    cli_session_id: Option<&str>,
    started: bool,
    now: DateTime<Utc>,
) -> Result<SessionRecord> {
    let sql = format!(
        "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (agent_id) DO UPDATE SET \
             conversation_id = EXCLUDED.conversation_id, \
             cli_session_id = EXCLUDED.cli_session_id, \
             cli_session_started = EXCLUDED.cli_session_started, \
             created_at = EXCLUDED.created_at, \
             last_activity_at = EXCLUDED.last_activity_at \
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

/// The current time, truncated to what the store keeps (see the module documentation).
pub(super) fn now() -> DateTime<Utc> {
    ms(Utc::now())
}

/// A time truncated to the millisecond, the precision every stored and compared time has, so
/// that PostgreSQL's microseconds never make a value differ from what SQLite would return.
pub(super) fn ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// Counters and limits are `u64` in the domain but BIGINT (`i64`) in SQL; values beyond
/// `i64::MAX` (hundreds of millions of years in ms) are effectively infinite anyway.
fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

// ---- decoding ----

/// Reads the columns of one row, turning every failure into [`StoreError::Corrupt`].
pub(super) struct Fields<'r> {
    row: &'r PgRow,
    table: &'static str,
}

impl<'r> Fields<'r> {
    pub(super) fn new(row: &'r PgRow, table: &'static str) -> Self {
        Self { row, table }
    }

    fn corrupt(&self, column: &str, message: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            table: self.table,
            message: format!("column {column}: {message}"),
        }
    }

    pub(super) fn get<T>(&self, column: &str) -> Result<T>
    where
        T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
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

    /// A JSONB value turned into the domain type: the database guarantees JSON, not its shape
    /// (an `env` that is an array decodes as JSON but is still corrupt).
    pub(super) fn json<T: serde::de::DeserializeOwned>(&self, column: &str) -> Result<T> {
        let value: serde_json::Value = self.get(column)?;
        serde_json::from_value(value).map_err(|e| self.corrupt(column, e))
    }

    fn unsigned_opt(&self, column: &str) -> Result<Option<u64>> {
        let value: Option<i64> = self.get(column)?;
        value
            .map(|v| u64::try_from(v).map_err(|_| self.corrupt(column, "negative value")))
            .transpose()
    }
}

fn decode_agent(row: &PgRow) -> Result<AgentRecord> {
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
        created_at: f.get("created_at")?,
        updated_at: f.get("updated_at")?,
    })
}

fn decode_session(row: &PgRow) -> Result<SessionRecord> {
    let f = Fields::new(row, "sessions");
    Ok(SessionRecord {
        agent_id: f.agent_id("agent_id")?,
        conversation_id: f.get("conversation_id")?,
        cli_session_id: f.get("cli_session_id")?,
        cli_session_started: f.get("cli_session_started")?,
        created_at: f.get("created_at")?,
        last_activity_at: f.get("last_activity_at")?,
    })
}

fn decode_conversation(row: &PgRow) -> Result<Conversation> {
    let f = Fields::new(row, "conversations");
    Ok(Conversation {
        conversation_id: f.get("conversation_id")?,
        agent_id: f.agent_id("agent_id")?,
        cli_type: f.parse::<CliType>("cli_type")?,
        session_id: f.get("session_id")?,
        status: f.get("status")?,
        created_at: f.get("created_at")?,
        updated_at: f.get("updated_at")?,
    })
}

fn decode_turn(row: &PgRow) -> Result<Turn> {
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
        metadata: f.get("metadata")?,
        created_at: f.get("created_at")?,
    })
}

fn decode_execution(row: &PgRow) -> Result<ExecutionRecord> {
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
        started_at: f.get("started_at")?,
        finished_at: f.get("finished_at")?,
    })
}

fn decode_event(row: &PgRow) -> Result<Event> {
    let f = Fields::new(row, "events");
    Ok(Event {
        id: f.get("id")?,
        event_type: f.get("type")?,
        agent_id: f.get("agent_id")?,
        cli_type: f.get("cli_type")?,
        duration_ms: f.get("duration_ms")?,
        success: f.get("success")?,
        metadata: f.get("metadata")?,
        at: f.get("at")?,
    })
}

fn decode_circuit(row: &PgRow) -> Result<(String, String, serde_json::Value)> {
    let f = Fields::new(row, "circuit_states");
    Ok((f.get("scope")?, f.get("key")?, f.get("snapshot")?))
}

fn decode_fallback(row: &PgRow) -> Result<crate::FallbackRow> {
    let f = Fields::new(row, "fallback_overrides");
    Ok(crate::FallbackRow {
        kind: f.get("kind")?,
        key: f.get("key")?,
        reason: f.get("reason")?,
        since: f.get("since")?,
        auto: f.get("auto")?,
    })
}
