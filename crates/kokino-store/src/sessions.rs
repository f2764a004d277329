//! Agents, their sessions and conversations, and the turns of a conversation.

use kokino_core::{
    AgentId, AgentRecord, AgentSpec, CliType, CommMode, Conversation, Role, SessionRecord, Turn,
};

use std::sync::Arc;

use crate::db::{now, plan_of, saturating_i64, Arg, Batch, Durability, Fields, Query, Row, Tx};
use crate::{Result, Store};
use chrono::{DateTime, Utc};

pub(crate) const SESSION_COLUMNS: &str =
    "agent_id, conversation_id, cli_session_id, cli_session_started, created_at, last_activity_at";
const CONVERSATION_COLUMNS: &str =
    "conversation_id, agent_id, cli_type, session_id, status, created_at, updated_at";
const TURN_COLUMNS: &str = "turn_id, conversation_id, seq, role, content, metadata, created_at";
// `binary` is a keyword in PostgreSQL and must be quoted (SQLite accepts the quotes too); the
// row still names the column `binary`.
const AGENT_COLUMNS: &str = "agent_id, type, comm_mode, cwd, model, role, system_prompt, \
     timeout_ms, max_memory_mb, env, \"binary\", extra_args, metadata, created_at, updated_at, \
     rate_limit";

impl Store {
    // ---- agents ----

    /// Inserts or updates an agent (idempotent); `created_at` is kept on update.
    pub async fn upsert_agent(&self, spec: &AgentSpec) -> Result<AgentRecord> {
        let now = now();
        // `created_at` is deliberately absent from the update list so that re-registering an
        // agent keeps the time it was first registered. One statement is atomic on its own.
        let row = Query::new(format!(
            "INSERT INTO agents ({AGENT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             ON CONFLICT (agent_id) DO UPDATE SET \
                type = EXCLUDED.type, comm_mode = EXCLUDED.comm_mode, cwd = EXCLUDED.cwd, \
                model = EXCLUDED.model, role = EXCLUDED.role, \
                system_prompt = EXCLUDED.system_prompt, timeout_ms = EXCLUDED.timeout_ms, \
                max_memory_mb = EXCLUDED.max_memory_mb, env = EXCLUDED.env, \
                \"binary\" = EXCLUDED.\"binary\", extra_args = EXCLUDED.extra_args, \
                metadata = EXCLUDED.metadata, updated_at = EXCLUDED.updated_at, \
                rate_limit = EXCLUDED.rate_limit \
             RETURNING {AGENT_COLUMNS}"
        ))
        .bind(&spec.agent_id)
        .bind(spec.cli_type.as_str())
        .bind(spec.comm_mode.as_str())
        .bind(spec.cwd.as_deref())
        .bind(spec.model.as_deref())
        .bind(spec.role.as_deref())
        .bind(spec.system_prompt.as_deref())
        .bind(spec.timeout_ms.map(saturating_i64))
        .bind(spec.max_memory_mb.map(saturating_i64))
        .bind(Arg::json(&spec.env))
        .bind(spec.binary.as_deref())
        .bind(Arg::json(&spec.extra_args))
        .bind(Arg::json(&spec.metadata))
        .bind(now)
        .bind(now)
        .bind(spec.rate_limit.map(|r| r.as_str()))
        .fetch_one(self.db.write())
        .await?;
        decode_agent(&row)
    }

    /// The agent with this id, if it is registered.
    pub async fn get_agent(&self, id: &AgentId) -> Result<Option<AgentRecord>> {
        Query::new(format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE agent_id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db.read())
        .await?
        .as_ref()
        .map(decode_agent)
        .transpose()
    }

    /// How many agents are registered (what `/health` reports, without reading them all).
    pub async fn count_agents(&self) -> Result<usize> {
        let row = Query::new("SELECT COUNT(*) AS n FROM agents")
            .fetch_one(self.db.read())
            .await?;
        let n = Fields::new(&row, "agents").int("n")?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// All agents ordered by id.
    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>> {
        Query::new(format!(
            "SELECT {AGENT_COLUMNS} FROM agents ORDER BY agent_id"
        ))
        .fetch_all(self.db.read())
        .await?
        .iter()
        .map(decode_agent)
        .collect()
    }

    /// Deletes the agent and its session. With `purge`, also its conversations, turns and
    /// executions; without, those stay (with the agent id as plain text) for history.
    /// Returns whether the agent existed.
    pub async fn delete_agent(&self, id: &AgentId, purge: bool) -> Result<bool> {
        let now = now();
        let mut tx = self.db.write_tx().await?;
        tx.lock_agents(&[id.as_str()]).await?;
        // The session goes with the agent; its conversation is ended as `end_session` would,
        // so that history never shows an `active` conversation nobody can continue.
        end_current_conversation(&mut tx, id, now).await?;
        Query::new("DELETE FROM sessions WHERE agent_id = $1")
            .bind(id)
            .execute(&mut tx)
            .await?;
        if purge {
            // Turns and executions follow their conversations through ON DELETE CASCADE.
            Query::new("DELETE FROM conversations WHERE agent_id = $1")
                .bind(id)
                .execute(&mut tx)
                .await?;
        }
        let deleted = Query::new("DELETE FROM agents WHERE agent_id = $1")
            .bind(id)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(deleted > 0)
    }

    // ---- sessions and conversations ----

    /// The agent's current session, if it has one.
    pub async fn get_session(&self, agent: &AgentId) -> Result<Option<SessionRecord>> {
        Query::new(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE agent_id = $1"
        ))
        .bind(agent)
        .fetch_optional(self.db.read())
        .await?
        .as_ref()
        .map(decode_session)
        .transpose()
    }

    /// All current sessions (one per agent at most).
    pub async fn list_sessions(&self) -> Result<Vec<SessionRecord>> {
        Query::new(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions ORDER BY agent_id"
        ))
        .fetch_all(self.db.read())
        .await?
        .iter()
        .map(decode_session)
        .collect()
    }

    /// Opens a new conversation for the agent and makes it the agent's session, replacing any
    /// previous session row. `cli_session_id` is the preassigned id for CLIs that take one.
    pub async fn create_session(
        &self,
        agent: &AgentId,
        cli_type: CliType,
        cli_session_id: Option<&str>,
    ) -> Result<SessionRecord> {
        let now = now();
        let conversation_id = uuid::Uuid::new_v4().to_string();
        let mut tx = self.db.write_tx().await?;
        tx.lock_agents(&[agent.as_str()]).await?;
        end_current_conversation(&mut tx, agent, now).await?;
        // The conversation's `session_id` stays NULL until the CLI confirms the session
        // (`set_cli_session`): a preassigned id the CLI never saw must not make a later
        // `switch_session` believe there is a CLI session to resume.
        Query::new(
            "INSERT INTO conversations \
                 (conversation_id, agent_id, cli_type, session_id, status, created_at, updated_at) \
             VALUES ($1, $2, $3, NULL, 'active', $4, $4)",
        )
        .bind(&conversation_id)
        .bind(agent)
        .bind(cli_type.as_str())
        .bind(now)
        .execute(&mut tx)
        .await?;
        let session =
            put_session(&mut tx, agent, &conversation_id, cli_session_id, false, now).await?;
        tx.commit().await?;
        Ok(session)
    }

    /// Makes an existing conversation of this agent its session again (continuing it resumes the
    /// conversation's CLI session). Returns `None` when the conversation is not the agent's.
    pub async fn switch_session(
        &self,
        agent: &AgentId,
        conversation_id: &str,
    ) -> Result<Option<SessionRecord>> {
        let now = now();
        let mut tx = self.db.write_tx().await?;
        tx.lock_agents(&[agent.as_str()]).await?;
        let row = Query::new(
            "SELECT session_id FROM conversations WHERE conversation_id = $1 AND agent_id = $2",
        )
        .bind(conversation_id)
        .bind(agent)
        .fetch_optional(&mut tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let cli_session_id = Fields::new(&row, "conversations").opt_text("session_id")?;

        // The conversation being left (if it is another one) ends, as with `create_session`.
        Query::new(
            "UPDATE conversations SET status = 'ended', updated_at = $1 \
             WHERE conversation_id IN \
                 (SELECT conversation_id FROM sessions WHERE agent_id = $2) \
               AND conversation_id <> $3",
        )
        .bind(now)
        .bind(agent)
        .bind(conversation_id)
        .execute(&mut tx)
        .await?;
        Query::new(
            "UPDATE conversations SET status = 'active', updated_at = $1 \
             WHERE conversation_id = $2",
        )
        .bind(now)
        .bind(conversation_id)
        .execute(&mut tx)
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

    /// Records the CLI's session id on the session and its conversation, and marks the session
    /// started (the next run resumes). Written as soon as the CLI reports the id.
    pub async fn set_cli_session(
        &self,
        agent: &AgentId,
        conversation_id: &str,
        cli_session_id: &str,
    ) -> Result<()> {
        // Grouped with the executions' writes (on SQLite, one commit for all that are queued):
        // this write is on the execute path of every CLI that names its session as it starts.
        // It must survive the broker's death from here on, which a commit does; the
        // execution's durable finish carries it to disk.
        let ids = Arc::new((
            agent.clone(),
            conversation_id.to_owned(),
            cli_session_id.to_owned(),
        ));
        // Only the session still attached to this conversation is updated: if the agent moved
        // to another conversation meanwhile, that session must keep its own CLI session id.
        let statements = |ids: &(AgentId, String, String)| {
            let (agent, conversation_id, cli_session_id) = ids;
            [
                Query::new(
                    "UPDATE sessions SET cli_session_id = $1, cli_session_started = TRUE \
                     WHERE agent_id = $2 AND conversation_id = $3",
                )
                .bind(cli_session_id.as_str())
                .bind(agent)
                .bind(conversation_id.as_str()),
                Query::new(
                    "UPDATE conversations SET session_id = $1 \
                     WHERE conversation_id = $2 AND agent_id = $3",
                )
                .bind(cli_session_id.as_str())
                .bind(conversation_id.as_str())
                .bind(agent),
            ]
        };
        let for_plan = ids.clone();
        self.db
            .grouped_plan(
                Durability::Committed,
                move || plan_of(statements(&for_plan)),
                move |tx| {
                    let ids = ids.clone();
                    Box::pin(async move {
                        tx.lock_agents(&[ids.0.as_str()]).await?;
                        for query in statements(&ids) {
                            query.execute(&mut *tx).await?;
                        }
                        Ok(())
                    })
                },
            )
            .await
    }

    /// Ends the agent's session: the session row is removed, the conversation is marked `ended`
    /// (its CLI session id is kept in history). Returns the ended session.
    pub async fn end_session(&self, agent: &AgentId) -> Result<Option<SessionRecord>> {
        let now = now();
        let mut tx = self.db.write_tx().await?;
        tx.lock_agents(&[agent.as_str()]).await?;
        let row = Query::new(format!(
            "DELETE FROM sessions WHERE agent_id = $1 RETURNING {SESSION_COLUMNS}"
        ))
        .bind(agent)
        .fetch_optional(&mut tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let session = decode_session(&row)?;
        mark_ended(&mut tx, &session.conversation_id, now).await?;
        tx.commit().await?;
        Ok(Some(session))
    }

    /// Ends sessions whose last activity is older than `before`; returns them.
    pub async fn end_sessions_idle_since(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Vec<SessionRecord>> {
        let now = now();
        let mut tx = self.db.write_tx().await?;
        // The candidates are read without locks, then their agents are locked, then the delete
        // checks idleness again: an execution that touched a session in between keeps it.
        let candidates = Query::new("SELECT agent_id FROM sessions WHERE last_activity_at < $1")
            .bind(before)
            .fetch_all(&mut tx)
            .await?
            .iter()
            .map(|row| Fields::new(row, "sessions").text("agent_id"))
            .collect::<Result<Vec<_>>>()?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = candidates.iter().map(String::as_str).collect();
        tx.lock_agents(&ids).await?;
        let sql = format!(
            "DELETE FROM sessions WHERE {} AND last_activity_at < $2 \
             RETURNING {SESSION_COLUMNS}",
            self.db.in_list("agent_id", 1)
        );
        let mut sessions = Query::new(sql)
            .bind(Arg::list(&ids))
            .bind(before)
            .fetch_all(&mut tx)
            .await?
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

    /// The conversation with its turns in order, if it exists.
    pub async fn get_conversation(
        &self,
        conversation_id: &str,
    ) -> Result<Option<(Conversation, Vec<Turn>)>> {
        // One read transaction, so the conversation and its turns come from the same snapshot.
        let mut tx = self.db.read_tx().await?;
        let row = Query::new(format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE conversation_id = $1"
        ))
        .bind(conversation_id)
        .fetch_optional(&mut tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let conversation = decode_conversation(&row)?;
        let rows = Query::new(format!(
            "SELECT {TURN_COLUMNS} FROM turns WHERE conversation_id = $1 ORDER BY seq"
        ))
        .bind(conversation_id)
        .fetch_all(&mut tx)
        .await?;
        tx.commit().await?;
        let turns = rows.iter().map(decode_turn).collect::<Result<Vec<_>>>()?;
        Ok(Some((conversation, turns)))
    }

    /// The agent's conversations, newest first.
    pub async fn list_conversations(&self, agent: &AgentId) -> Result<Vec<Conversation>> {
        Query::new(format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE agent_id = $1 \
             ORDER BY created_at DESC, conversation_id DESC"
        ))
        .bind(agent)
        .fetch_all(self.db.read())
        .await?
        .iter()
        .map(decode_conversation)
        .collect()
    }

    /// One turn, if it belongs to one of the agent's conversations.
    pub async fn get_turn(&self, agent: &AgentId, turn_id: &str) -> Result<Option<Turn>> {
        Query::new(
            "SELECT t.turn_id, t.conversation_id, t.seq, t.role, t.content, t.metadata, \
                    t.created_at \
             FROM turns t JOIN conversations c ON c.conversation_id = t.conversation_id \
             WHERE t.turn_id = $1 AND c.agent_id = $2",
        )
        .bind(turn_id)
        .bind(agent)
        .fetch_optional(self.db.read())
        .await?
        .as_ref()
        .map(decode_turn)
        .transpose()
    }

    /// Deletes a conversation with its turns and executions (and the session pointing at it).
    pub async fn delete_conversation(&self, conversation_id: &str) -> Result<bool> {
        let mut tx = self.db.write_tx().await?;
        tx.lock_conversation_agent(conversation_id).await?;
        // The foreign keys would remove the session, turns and executions on their own; the
        // session is deleted explicitly so the intent does not hinge on the schema alone.
        Query::new("DELETE FROM sessions WHERE conversation_id = $1")
            .bind(conversation_id)
            .execute(&mut tx)
            .await?;
        let deleted = Query::new("DELETE FROM conversations WHERE conversation_id = $1")
            .bind(conversation_id)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(deleted > 0)
    }
}

// ---- transaction steps shared by several operations ----

/// The statements that touch a conversation (its `updated_at`, its session's last activity),
/// added to `batch`: `conversation` is bound as `$2`
/// and `which` is the SQL that names the conversation from it (`$2` itself, or a subquery).
pub(crate) fn touch_statements(
    batch: &mut Batch,
    conversation: Arg,
    which: &str,
    now: DateTime<Utc>,
) {
    batch.push(
        Query::new(format!(
            "UPDATE conversations SET updated_at = $1 WHERE conversation_id = {which}"
        ))
        .bind(now)
        .bind(conversation.clone()),
    );
    batch.push(
        Query::new(format!(
            "UPDATE sessions SET last_activity_at = $1 WHERE conversation_id = {which}"
        ))
        .bind(now)
        .bind(conversation),
    );
}

async fn mark_ended(tx: &mut Tx, conversation_id: &str, now: DateTime<Utc>) -> Result<()> {
    Query::new(
        "UPDATE conversations SET status = 'ended', updated_at = $1 WHERE conversation_id = $2",
    )
    .bind(now)
    .bind(conversation_id)
    .execute(tx)
    .await?;
    Ok(())
}

/// Ends the conversation the agent's session currently points at, if there is one.
async fn end_current_conversation(tx: &mut Tx, agent: &AgentId, now: DateTime<Utc>) -> Result<()> {
    Query::new(
        "UPDATE conversations SET status = 'ended', updated_at = $1 \
         WHERE conversation_id IN (SELECT conversation_id FROM sessions WHERE agent_id = $2)",
    )
    .bind(now)
    .bind(agent)
    .execute(tx)
    .await?;
    Ok(())
}

/// Writes the agent's session row, replacing any previous one, and returns it.
async fn put_session(
    tx: &mut Tx,
    agent: &AgentId,
    conversation_id: &str,
    cli_session_id: Option<&str>,
    started: bool,
    now: DateTime<Utc>,
) -> Result<SessionRecord> {
    let row = Query::new(format!(
        "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $5) \
         ON CONFLICT (agent_id) DO UPDATE SET \
             conversation_id = EXCLUDED.conversation_id, \
             cli_session_id = EXCLUDED.cli_session_id, \
             cli_session_started = EXCLUDED.cli_session_started, \
             created_at = EXCLUDED.created_at, \
             last_activity_at = EXCLUDED.last_activity_at \
         RETURNING {SESSION_COLUMNS}"
    ))
    .bind(agent)
    .bind(conversation_id)
    .bind(cli_session_id)
    .bind(started)
    .bind(now)
    .fetch_one(tx)
    .await?;
    decode_session(&row)
}

// ---- decoding ----

fn decode_agent(row: &Row) -> Result<AgentRecord> {
    let f = Fields::new(row, "agents");
    Ok(AgentRecord {
        spec: AgentSpec {
            agent_id: f.agent_id("agent_id")?,
            cli_type: f.parse::<CliType>("type")?,
            comm_mode: f.parse::<CommMode>("comm_mode")?,
            cwd: f.opt_text("cwd")?,
            model: f.opt_text("model")?,
            role: f.opt_text("role")?,
            system_prompt: f.opt_text("system_prompt")?,
            timeout_ms: f.unsigned_opt("timeout_ms")?,
            max_memory_mb: f.unsigned_opt("max_memory_mb")?,
            env: f.json("env")?,
            binary: f.opt_text("binary")?,
            extra_args: f.json("extra_args")?,
            metadata: f.json("metadata")?,
            rate_limit: f.parse_opt("rate_limit")?,
        },
        created_at: f.time("created_at")?,
        updated_at: f.time("updated_at")?,
    })
}

fn decode_session(row: &Row) -> Result<SessionRecord> {
    let f = Fields::new(row, "sessions");
    Ok(SessionRecord {
        agent_id: f.agent_id("agent_id")?,
        conversation_id: f.text("conversation_id")?,
        cli_session_id: f.opt_text("cli_session_id")?,
        cli_session_started: f.bool("cli_session_started")?,
        created_at: f.time("created_at")?,
        last_activity_at: f.time("last_activity_at")?,
    })
}

fn decode_conversation(row: &Row) -> Result<Conversation> {
    let f = Fields::new(row, "conversations");
    Ok(Conversation {
        conversation_id: f.text("conversation_id")?,
        agent_id: f.agent_id("agent_id")?,
        cli_type: f.parse::<CliType>("cli_type")?,
        session_id: f.opt_text("session_id")?,
        status: f.text("status")?,
        created_at: f.time("created_at")?,
        updated_at: f.time("updated_at")?,
    })
}

fn decode_turn(row: &Row) -> Result<Turn> {
    let f = Fields::new(row, "turns");
    let role_text = f.text("role")?;
    let role = Role::parse(&role_text)
        .ok_or_else(|| f.corrupt("role", format!("unknown role {role_text:?}")))?;
    Ok(Turn {
        turn_id: f.text("turn_id")?,
        conversation_id: f.text("conversation_id")?,
        seq: f.int("seq")?,
        role,
        content: f.text("content")?,
        metadata: f.json("metadata")?,
        created_at: f.time("created_at")?,
    })
}
