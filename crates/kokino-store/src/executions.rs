//! Executions: the user turn and the running row written before a process starts, the result
//! turn and the outcome written when it ends.

use kokino_core::{
    CliType, CommMode, ExecutionRecord, ExecutionState, NewExecution, OutcomeClass, Role, Turn,
    Usage,
};

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::db::{now, saturating_i64, Arg, Batch, Durability, Fields, Plan, Query, Row, Tx};
use crate::leases::Fence;
use crate::sessions::touch_statements;
use crate::{FinishExecution, NewTurn, Result, Store, StoreError};

pub(crate) const EXECUTION_COLUMNS: &str = "execution_id, agent_id, conversation_id, cli_type, \
     mode, state, outcome, pid, pid_start_time, cli_session_id, exit_code, error_message, \
     duration_ms, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, \
     cost_usd, num_turns, peak_rss_mb, started_at, finished_at";

impl Store {
    /// Writes the user turn (next `seq` of the conversation) and the execution row (state
    /// `running`) in one transaction, before any process starts.
    ///
    /// On SQLite the transaction is shared with the other executions' writes queued at the same
    /// moment (group commit). It returns once that transaction is committed, without waiting
    /// for the disk (see "Durability" in `ARCHITECTURE.md`): a crash of the broker cannot lose
    /// it, and the execution's finish, which is on disk before the caller gets the answer,
    /// carries the user turn to disk with it. A crash of the machine before the finish can lose
    /// an execution that was never answered, and nothing else.
    pub async fn begin_execution(&self, new: &NewExecution) -> Result<Turn> {
        let new = Arc::new(new.clone());
        let for_plan = new.clone();
        self.db
            .grouped_plan(
                Durability::Committed,
                move || begin_plan(&for_plan, None),
                move |tx| {
                    let new = new.clone();
                    Box::pin(async move { begin_execution_in(tx, &new, None).await })
                },
            )
            .await
    }

    /// Records the pid and process start time of a running execution.
    ///
    /// This write is lazy (see `Db::grouped_plan_lazily`): on SQLite it may wait up to 50 ms to
    /// share the next durable commit. What must survive a crash at any instant is already on disk
    /// before the CLI starts: the supervisor's claim file names the process group, and recovery
    /// reads it; this row is what operators and recovery read besides.
    pub async fn set_execution_process(
        &self,
        execution_id: &str,
        pid: i64,
        start_time: Option<i64>,
    ) -> Result<()> {
        let execution_id = Arc::<str>::from(execution_id);
        let statement = move |id: &str| {
            // `RETURNING` says whether the row exists, in the plan's rows as in the op's.
            Query::new(
                "UPDATE executions SET pid = $1, pid_start_time = $2 \
                 WHERE execution_id = $3 RETURNING execution_id",
            )
            .bind(pid)
            .bind(start_time)
            .bind(id)
        };
        let for_plan = execution_id.clone();
        self.db
            .grouped_plan_lazily(
                move || {
                    let batch = Batch::from_iter([statement(&for_plan)]);
                    let id = for_plan.clone();
                    let decode = move |rows: Vec<Row>| found(rows.len() as u64, &id);
                    (batch, Box::new(decode) as Box<_>)
                },
                move |tx| {
                    let execution_id = execution_id.clone();
                    Box::pin(async move {
                        let rows = statement(&execution_id).fetch_all(tx).await?;
                        found(rows.len() as u64, &execution_id)
                    })
                },
            )
            .await
    }

    /// Writes the result turn and the outcome in one transaction and touches the session's
    /// last activity. Returns the result turn.
    ///
    /// On SQLite the transaction is shared with the other executions' writes queued at the same
    /// moment (group commit); it returns once that transaction is on disk.
    pub async fn finish_execution(&self, fin: &FinishExecution) -> Result<Option<Turn>> {
        let fin = Arc::new(fin.clone());
        let for_plan = fin.clone();
        self.db
            .grouped_plan(
                Durability::OnDisk,
                move || finish_plan(&for_plan),
                move |tx| {
                    let fin = fin.clone();
                    Box::pin(async move { finish_execution_in(tx, &fin, None).await })
                },
            )
            .await
    }

    /// The execution with this id, if it exists.
    pub async fn get_execution(&self, execution_id: &str) -> Result<Option<ExecutionRecord>> {
        Query::new(format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions WHERE execution_id = $1"
        ))
        .bind(execution_id)
        .fetch_optional(self.db.read())
        .await?
        .as_ref()
        .map(decode_execution)
        .transpose()
    }

    /// Executions still `running` (used at start-up to find what a previous life left behind).
    pub async fn running_executions(&self) -> Result<Vec<ExecutionRecord>> {
        self.executions_where("state = 'running'", &[]).await
    }

    /// Executions matching `condition` (SQL over the executions table with parameters `$1`…
    /// bound from `args`), oldest first.
    pub(crate) async fn executions_where(
        &self,
        condition: &str,
        args: &[&str],
    ) -> Result<Vec<ExecutionRecord>> {
        let query = Query::new(format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions WHERE {condition} \
             ORDER BY started_at, execution_id"
        ));
        args.iter()
            .fold(query, |q, arg| q.bind(*arg))
            .fetch_all(self.db.read())
            .await?
            .iter()
            .map(decode_execution)
            .collect()
    }
}

/// What an update of one execution by id answers: [`StoreError::ExecutionNotFound`] when it
/// changed no row.
pub(crate) fn found(updated: u64, execution_id: &str) -> Result<()> {
    if updated == 0 {
        return Err(StoreError::ExecutionNotFound(execution_id.to_owned()));
    }
    Ok(())
}

/// The writes of [`Store::begin_execution`], in the caller's write transaction; with a fence,
/// only while that lease is current ([`StoreError::StaleLease`] before anything is written
/// otherwise).
pub(crate) async fn begin_execution_in(
    tx: &mut Tx,
    new: &NewExecution,
    fence: Option<&Fence<'_>>,
) -> Result<Turn> {
    // An unknown conversation has no agent to lock; the turn insert then fails on its foreign
    // key, on both backends.
    tx.lock_conversation_agent(&new.conversation_id).await?;
    if let Some(fence) = fence {
        fence.check(tx).await?;
    }
    let (batch, decode) = begin_plan(new, fence.map(|f| f.owner));
    decode(batch.fetch_all(tx).await?)
}

/// The statements of a begin, with no lock or fence (on SQLite the write transaction holds the
/// one lock), and the decoding of their rows. `owner` is the broker a fenced execution belongs
/// to.
pub(crate) fn begin_plan(new: &NewExecution, owner: Option<&str>) -> Plan<Turn> {
    let now = now();
    // One batch, one round trip (see `Batch`); the turn's insert comes last, for its `seq`.
    let mut batch = Batch::default();
    batch.push(
        Query::new(
            "INSERT INTO executions \
                 (execution_id, agent_id, conversation_id, cli_type, mode, state, \
                  user_turn_id, started_at, instance_id) \
             VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, $8)",
        )
        .bind(&new.execution_id)
        .bind(&new.agent_id)
        .bind(&new.conversation_id)
        .bind(new.cli_type.as_str())
        .bind(new.mode.as_str())
        .bind(&new.user_turn_id)
        .bind(now)
        // A fenced execution belongs to the broker holding the lease: its instance id is
        // recorded in the same write (see `Store::set_execution_instance`).
        .bind(owner),
    );
    touch_statements(
        &mut batch,
        Arg::from(new.conversation_id.as_str()),
        "$2",
        now,
    );
    batch.push(insert_turn_statement(
        Arg::from(new.conversation_id.as_str()),
        "$2",
        &NewTurn {
            turn_id: new.user_turn_id.clone(),
            role: Role::User,
            content: new.prompt.clone(),
            metadata: new.turn_metadata.clone(),
        },
        now,
    ));
    let new = new.clone();
    let decode = move |rows: Vec<Row>| {
        let seq = match rows.first() {
            Some(row) => Fields::new(row, "turns").int("seq")?,
            None => {
                return Err(StoreError::Database(
                    "the user turn's insert returned no row".into(),
                ))
            }
        };
        Ok(Turn {
            turn_id: new.user_turn_id,
            conversation_id: new.conversation_id,
            seq,
            role: Role::User,
            content: new.prompt,
            metadata: new.turn_metadata,
            created_at: now,
        })
    };
    (batch, Box::new(decode))
}

/// The writes of [`Store::finish_execution`], in the caller's write transaction; with a fence,
/// only while that lease is current ([`StoreError::StaleLease`] before anything is written
/// otherwise).
pub(crate) async fn finish_execution_in(
    tx: &mut Tx,
    fin: &FinishExecution,
    fence: Option<&Fence<'_>>,
) -> Result<Option<Turn>> {
    // Where the writes must lock the agent (PostgreSQL) or check a lease, the execution's agent
    // is read first; SQLite's write transaction holds its one lock already, so there the
    // statements below find the conversation themselves.
    if tx.locks_agents() || fence.is_some() {
        let row = Query::new("SELECT agent_id FROM executions WHERE execution_id = $1")
            .bind(&fin.execution_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            // The caller drops the transaction on the error, which rolls it back; nothing was
            // written yet anyway.
            return Err(StoreError::ExecutionNotFound(fin.execution_id.clone()));
        };
        let f = Fields::new(&row, "executions");
        // An execution's agent is its conversation's, which never changes: its lock is the one
        // `lock_conversation_agent` would look up.
        let agent_id = f.text("agent_id")?;
        tx.lock_agents(&[agent_id.as_str()]).await?;
        if let Some(fence) = fence {
            fence.check_covers(&fin.execution_id, &agent_id)?;
            fence.check(tx).await?;
        }
    }
    let (batch, decode) = finish_plan(fin);
    decode(batch.fetch_all(tx).await?)
}

/// The statements of a finish, with no lock or fence (on SQLite the write transaction holds the
/// one lock), and the decoding of their rows.
pub(crate) fn finish_plan(fin: &FinishExecution) -> Plan<Option<Turn>> {
    let now = now();
    // Every statement names the conversation through the execution (`$2` is its id), so a
    // missing execution writes nothing; the batch is one round trip. The last statement returns
    // the turn's `seq` and conversation (or, without a turn, the execution's conversation).
    const CONVERSATION: &str = "(SELECT conversation_id FROM executions WHERE execution_id = $2)";
    let mut batch = Batch::default();
    touch_statements(
        &mut batch,
        Arg::from(fin.execution_id.as_str()),
        CONVERSATION,
        now,
    );
    let usage = fin.usage;
    let tokens = |pick: fn(&Usage) -> u64| usage.as_ref().map(|u| saturating_i64(pick(u)));
    let returning = if fin.turn.is_some() {
        ""
    } else {
        " RETURNING conversation_id"
    };
    batch.push(
        Query::new(format!(
            "UPDATE executions SET \
                 state = 'finished', outcome = $1, exit_code = $2, error_message = $3, \
                 duration_ms = $4, input_tokens = $5, output_tokens = $6, \
                 cache_read_tokens = $7, cache_creation_tokens = $8, cost_usd = $9, \
                 num_turns = $10, peak_rss_mb = $11, \
                 cli_session_id = COALESCE($12, cli_session_id), \
                 result_turn_id = COALESCE($13, result_turn_id), finished_at = $14 \
             WHERE execution_id = $15{returning}"
        ))
        .bind(fin.outcome.as_str())
        .bind(fin.exit_code)
        .bind(fin.error_message.as_deref())
        .bind(fin.duration_ms)
        .bind(tokens(|u| u.input_tokens))
        .bind(tokens(|u| u.output_tokens))
        .bind(tokens(|u| u.cache_read_tokens))
        .bind(tokens(|u| u.cache_creation_tokens))
        .bind(fin.cost_usd)
        .bind(fin.num_turns)
        .bind(fin.peak_rss_mb)
        .bind(fin.cli_session_id.as_deref())
        .bind(fin.turn.as_ref().map(|t| t.turn_id.as_str()))
        .bind(now)
        .bind(&fin.execution_id),
    );
    if let Some(new_turn) = &fin.turn {
        batch.push(insert_turn_statement(
            Arg::from(fin.execution_id.as_str()),
            CONVERSATION,
            new_turn,
            now,
        ));
    }
    let (execution_id, new_turn) = (fin.execution_id.clone(), fin.turn.clone());
    let decode = move |rows: Vec<Row>| {
        // No row: the execution does not exist (on PostgreSQL it may have been deleted with its
        // conversation since the read above), and nothing was written.
        let Some(row) = rows.first() else {
            return Err(StoreError::ExecutionNotFound(execution_id));
        };
        let f = Fields::new(row, "turns");
        let turn = match new_turn {
            Some(t) => Some(Turn {
                turn_id: t.turn_id,
                conversation_id: f.text("conversation_id")?,
                seq: f.int("seq")?,
                role: t.role,
                content: t.content,
                metadata: t.metadata,
                created_at: now,
            }),
            None => None,
        };
        Ok(turn)
    };
    (batch, Box::new(decode))
}

/// The insert of a turn with the conversation's next `seq`, returning that `seq`: `conversation`
/// is bound as `$2`, and `which` is the SQL that names the conversation from it (`$2` itself, or
/// a subquery; when that finds no conversation, nothing is inserted and no row is returned). The
/// caller's write transaction must serialise appends to the conversation (SQLite's write lock,
/// PostgreSQL's agent lock): the UNIQUE (conversation_id, seq) constraint alone would only turn
/// a race into an error.
fn insert_turn_statement(
    conversation: Arg,
    which: &str,
    turn: &NewTurn,
    at: DateTime<Utc>,
) -> Query {
    Query::new(format!(
        "INSERT INTO turns (turn_id, conversation_id, seq, role, content, metadata, created_at) \
         SELECT $1, c.id, \
                COALESCE((SELECT MAX(seq) FROM turns WHERE conversation_id = c.id), 0) + 1, \
                $3, $4, $5, $6 \
         FROM (SELECT {which} AS id) c WHERE c.id IS NOT NULL \
         RETURNING seq, conversation_id"
    ))
    .bind(&turn.turn_id)
    .bind(conversation)
    .bind(turn.role.as_str())
    .bind(turn.content.as_str())
    .bind(Arg::json(&turn.metadata))
    .bind(at)
}

fn decode_execution(row: &Row) -> Result<ExecutionRecord> {
    let f = Fields::new(row, "executions");
    let state = match f.text("state")?.as_str() {
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
        execution_id: f.text("execution_id")?,
        agent_id: f.agent_id("agent_id")?,
        conversation_id: f.text("conversation_id")?,
        cli_type: f.parse::<CliType>("cli_type")?,
        mode: f.parse::<CommMode>("mode")?,
        state,
        outcome: f.parse_opt::<OutcomeClass>("outcome")?,
        pid: f.opt_int("pid")?,
        pid_start_time: f.opt_int("pid_start_time")?,
        cli_session_id: f.opt_text("cli_session_id")?,
        exit_code: f.opt_int("exit_code")?,
        error_message: f.opt_text("error_message")?,
        duration_ms: f.opt_int("duration_ms")?,
        usage,
        cost_usd: f.opt_real("cost_usd")?,
        num_turns: f.opt_int("num_turns")?,
        peak_rss_mb: f.opt_real("peak_rss_mb")?,
        started_at: f.time("started_at")?,
        finished_at: f.opt_time("finished_at")?,
    })
}
