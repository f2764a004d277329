//! Agent leases with fencing tokens (reliability notes §6), so that several brokers sharing one
//! database never run one agent twice.
//!
//! Every time here comes from the server: `now()` (the transaction's start, which for the
//! single-statement operations is the statement's start) or `clock_timestamp()` (the current
//! instant, for the fencing check inside a transaction that may have waited on locks). Brokers'
//! clocks may disagree; the one database clock decides who holds a lease. Times are truncated to
//! the millisecond like every stored time (see the parent module).

use std::time::Duration;

use kokino_core::{ExecutionRecord, NewExecution, Turn};
use sqlx::{Postgres, Transaction};

use super::{
    begin_execution_in, decode_execution, finish_execution_in, Fields, PgStore, EXECUTION_COLUMNS,
};
use crate::{ttl_millis, FinishExecution, Lease, Result, StoreError, LEASE_RELEASED_CHANNEL};

/// Takes or extends the lease in one statement, so two brokers racing for one lease can never
/// both win: `INSERT ... ON CONFLICT DO UPDATE ... WHERE` either inserts the free lease, or
/// updates the row under its row lock only if it expired or is already the caller's; a loser's
/// statement waits for the winner's commit and then sees an unexpired lease of another owner.
///
/// `old` reads the previous owner for `taken_over_from`. All parts of a WITH statement share
/// one snapshot, and the order in which they run is otherwise unspecified, so `old` is
/// (1) `FOR UPDATE`, which under READ COMMITTED waits for a concurrent writer of the row and then
/// returns its committed version, the one the upsert is about to judge, and (2) materialised and
/// scanned by the insert's own input (`old_row_locked`), which makes it run, and lock the row,
/// before the upsert touches it. Without (2), `old` could run after the upsert and read the row
/// version the upsert had just replaced, or a version older than the one the upsert judged.
///
/// Token 1 for a new row, +1 for every acquisition after; rows are never deleted, so tokens
/// never go back. `$3` is the ttl in milliseconds.
const ACQUIRE_SQL: &str = "\
WITH old AS MATERIALIZED (
    SELECT owner FROM agent_leases WHERE agent_id = $1 FOR UPDATE
), up AS (
    INSERT INTO agent_leases (agent_id, owner, token, expires_at, acquired_at)
    SELECT $1, $2, 1,
           date_trunc('milliseconds', now() + $3 * interval '1 millisecond'),
           date_trunc('milliseconds', now())
    FROM (SELECT count(*) FROM old) AS old_row_locked
    ON CONFLICT (agent_id) DO UPDATE SET
        owner = EXCLUDED.owner,
        token = agent_leases.token + 1,
        expires_at = EXCLUDED.expires_at,
        acquired_at = EXCLUDED.acquired_at
    WHERE agent_leases.expires_at <= now() OR agent_leases.owner = EXCLUDED.owner
    RETURNING token, expires_at
)
SELECT up.token, up.expires_at, (SELECT owner FROM old) AS previous_owner FROM up";

/// The lease a fenced write must still hold.
pub(super) struct Fence<'a> {
    pub(super) agent_id: &'a str,
    pub(super) owner: &'a str,
    pub(super) token: i64,
}

impl Fence<'_> {
    fn stale(&self) -> StoreError {
        StoreError::StaleLease {
            agent_id: self.agent_id.to_owned(),
            token: self.token,
        }
    }

    /// Checks, inside the write's transaction, that the lease is still `owner`'s with `token` and
    /// unexpired, and keeps it so until the transaction ends.
    ///
    /// `FOR SHARE` is what makes the check hold at commit rather than only at the check: every
    /// change of the lease row (a takeover, a renewal, a release) needs the row lock, so it waits
    /// until this write has committed or rolled back, and a broker that takes the lease over
    /// afterwards sees the write. Conversely, if a takeover is in flight the check waits for it,
    /// and PostgreSQL re-evaluates the conditions on the new row version, which then no longer
    /// matches. Share locks do not conflict, so fenced writes of one holder do not queue on each
    /// other here. `clock_timestamp()` rather than `now()`: the transaction may have waited for
    /// the agent's lock, and the lease must be live now, not when the transaction began.
    pub(super) async fn check(&self, tx: &mut Transaction<'static, Postgres>) -> Result<()> {
        let live: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM agent_leases \
             WHERE agent_id = $1 AND owner = $2 AND token = $3 \
               AND expires_at > clock_timestamp() \
             FOR SHARE",
        )
        .bind(self.agent_id)
        .bind(self.owner)
        .bind(self.token)
        .fetch_optional(&mut **tx)
        .await?;
        match live {
            Some(_) => Ok(()),
            None => Err(self.stale()),
        }
    }

    /// A lease fences only its own agent's executions; finishing another agent's execution under
    /// it is a caller's mistake, refused before anything is written.
    pub(super) fn check_covers(&self, execution_id: &str, execution_agent: &str) -> Result<()> {
        if execution_agent == self.agent_id {
            return Ok(());
        }
        Err(StoreError::Unsupported(format!(
            "execution {execution_id} belongs to agent {execution_agent}, \
             not to agent {} whose lease fences the write",
            self.agent_id
        )))
    }
}

impl PgStore {
    pub(crate) async fn acquire_lease(
        &self,
        agent_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let row = sqlx::query(ACQUIRE_SQL)
            .bind(agent_id)
            .bind(owner)
            .bind(ttl_millis(ttl))
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            // The upsert's WHERE refused: another owner holds an unexpired lease.
            return Ok(None);
        };
        let f = Fields::new(&row, "agent_leases");
        let previous: Option<String> = f.get("previous_owner")?;
        Ok(Some(Lease {
            agent_id: agent_id.to_owned(),
            owner: owner.to_owned(),
            token: f.get("token")?,
            expires_at: f.get("expires_at")?,
            // Re-acquiring one's own lease is not a takeover.
            // A released lease has no owner (''): taking it is no takeover.
            taken_over_from: previous.filter(|p| p != owner && !p.is_empty()),
        }))
    }

    pub(crate) async fn renew_lease(
        &self,
        agent_id: &str,
        owner: &str,
        token: i64,
        ttl: Duration,
    ) -> Result<bool> {
        // `expires_at > now()`: a released lease keeps its owner and token, and an expired one
        // may be taken any moment; neither may be revived.
        let done = sqlx::query(
            "UPDATE agent_leases \
             SET expires_at = date_trunc('milliseconds', now() + $4 * interval '1 millisecond') \
             WHERE agent_id = $1 AND owner = $2 AND token = $3 AND expires_at > now()",
        )
        .bind(agent_id)
        .bind(owner)
        .bind(token)
        .bind(ttl_millis(ttl))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub(crate) async fn release_lease(
        &self,
        agent_id: &str,
        owner: &str,
        token: i64,
    ) -> Result<bool> {
        // One statement, so the release and its notification commit together: listeners hear of
        // the release only once it is visible, and never of a release that rolled back. The row
        // stays (expired) so the next acquisition continues the token sequence.
        let released = sqlx::query(
            "WITH released AS ( \
                 UPDATE agent_leases SET expires_at = date_trunc('milliseconds', now()), owner = '' \
                 WHERE agent_id = $1 AND owner = $2 AND token = $3 AND expires_at > now() \
                 RETURNING agent_id \
             ) \
             SELECT pg_notify($4, agent_id)::text FROM released",
        )
        .bind(agent_id)
        .bind(owner)
        .bind(token)
        .bind(LEASE_RELEASED_CHANNEL)
        .fetch_all(&self.pool)
        .await?;
        Ok(!released.is_empty())
    }

    pub(crate) async fn lease_holder(&self, agent_id: &str) -> Result<Option<Lease>> {
        let row = sqlx::query(
            "SELECT owner, token, expires_at FROM agent_leases \
             WHERE agent_id = $1 AND expires_at > now()",
        )
        .bind(agent_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let f = Fields::new(&row, "agent_leases");
        Ok(Some(Lease {
            agent_id: agent_id.to_owned(),
            owner: f.get("owner")?,
            token: f.get("token")?,
            expires_at: f.get("expires_at")?,
            taken_over_from: None,
        }))
    }

    pub(crate) async fn lease_is_current(
        &self,
        agent_id: &str,
        owner: &str,
        token: i64,
    ) -> Result<bool> {
        let current: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM agent_leases \
                 WHERE agent_id = $1 AND owner = $2 AND token = $3 AND expires_at > now())",
        )
        .bind(agent_id)
        .bind(owner)
        .bind(token)
        .fetch_one(&self.pool)
        .await?;
        Ok(current)
    }

    pub(crate) async fn running_executions_of(
        &self,
        instance_id: &str,
    ) -> Result<Vec<ExecutionRecord>> {
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions \
             WHERE state = 'running' AND instance_id = $1 \
             ORDER BY started_at, execution_id"
        );
        let rows = sqlx::query(&sql)
            .bind(instance_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_execution).collect()
    }

    pub(crate) async fn foreign_running_executions(
        &self,
        agent_id: &str,
        owner: &str,
    ) -> Result<Vec<ExecutionRecord>> {
        // IS DISTINCT FROM also counts executions with no instance recorded: once the caller
        // holds the lease, nothing it did not start itself can legitimately be running.
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions \
             WHERE state = 'running' AND agent_id = $1 AND instance_id IS DISTINCT FROM $2 \
             ORDER BY started_at, execution_id"
        );
        let rows = sqlx::query(&sql)
            .bind(agent_id)
            .bind(owner)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_execution).collect()
    }

    pub(crate) async fn set_execution_instance(
        &self,
        execution_id: &str,
        instance_id: &str,
    ) -> Result<()> {
        let updated = sqlx::query("UPDATE executions SET instance_id = $1 WHERE execution_id = $2")
            .bind(instance_id)
            .bind(execution_id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if updated == 0 {
            return Err(StoreError::ExecutionNotFound(execution_id.to_owned()));
        }
        Ok(())
    }

    pub(crate) async fn begin_execution_fenced(
        &self,
        new: &NewExecution,
        owner: &str,
        token: i64,
    ) -> Result<Turn> {
        let fence = Fence {
            agent_id: new.agent_id.as_str(),
            owner,
            token,
        };
        let mut tx = self.write_tx().await?;
        // On any error the transaction is dropped, which rolls back whatever was written.
        let turn = begin_execution_in(&mut tx, new, Some(&fence)).await?;
        tx.commit().await?;
        Ok(turn)
    }

    pub(crate) async fn finish_execution_fenced(
        &self,
        fin: &FinishExecution,
        agent_id: &str,
        owner: &str,
        token: i64,
    ) -> Result<Option<Turn>> {
        let fence = Fence {
            agent_id,
            owner,
            token,
        };
        let mut tx = self.write_tx().await?;
        let turn = finish_execution_in(&mut tx, fin, Some(&fence)).await?;
        tx.commit().await?;
        Ok(turn)
    }
}
