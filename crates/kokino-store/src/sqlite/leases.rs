//! Agent leases with fencing tokens (reliability notes §6); the same contract as on PostgreSQL.
//!
//! SQLite is one file on one machine, so every process sharing it reads the same clock: "now" is
//! this process's [`now`], taken *inside* the write transaction, because `BEGIN IMMEDIATE` may
//! have waited for another writer and the time must be the time the decision is made. The single
//! writer makes each transaction here serial, which is what PostgreSQL needs row locks for:
//! reading the previous owner and then upserting cannot interleave with another acquisition.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kokino_core::{ExecutionRecord, NewExecution, Turn};
use sqlx::{Sqlite, Transaction};

use super::{
    begin_execution_in, decode_execution, finish_execution_in, now, ts, Fields, SqliteStore,
    EXECUTION_COLUMNS,
};
use crate::{ttl_millis, FinishExecution, Lease, Result, StoreError};

/// The latest time the fixed-width text form can hold; an expiry beyond it (a ttl near the
/// century the store allows, far in the future) is clamped so that text order stays time order.
fn expiry(now: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    let latest = DateTime::parse_from_rfc3339("9999-12-31T23:59:59.999Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now);
    now.checked_add_signed(chrono::Duration::milliseconds(ttl_millis(ttl)))
        .map_or(latest, |t| t.min(latest))
}

/// The lease a fenced write must still hold.
pub(super) struct Fence<'a> {
    pub(super) agent_id: &'a str,
    pub(super) owner: &'a str,
    pub(super) token: i64,
}

impl Fence<'_> {
    /// Checks, inside the write's `BEGIN IMMEDIATE` transaction, that the lease is still
    /// `owner`'s with `token` and unexpired. Nothing else can write the lease before this
    /// transaction ends, so the answer holds until commit.
    pub(super) async fn check(&self, tx: &mut Transaction<'static, Sqlite>) -> Result<()> {
        let live: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM agent_leases \
             WHERE agent_id = ? AND owner = ? AND token = ? AND expires_at > ?",
        )
        .bind(self.agent_id)
        .bind(self.owner)
        .bind(self.token)
        .bind(ts(now()))
        .fetch_optional(&mut **tx)
        .await?;
        match live {
            Some(_) => Ok(()),
            None => Err(StoreError::StaleLease {
                agent_id: self.agent_id.to_owned(),
                token: self.token,
            }),
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

impl SqliteStore {
    pub(crate) async fn acquire_lease(
        &self,
        agent_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let mut tx = self.write_tx().await?;
        let now = now();
        let previous: Option<String> =
            sqlx::query_scalar("SELECT owner FROM agent_leases WHERE agent_id = ?")
                .bind(agent_id)
                .fetch_optional(&mut *tx)
                .await?;
        // The same upsert as on PostgreSQL: token 1 for a new row, +1 for every acquisition
        // after, and an unexpired lease of another owner is left alone (no row returned).
        let row = sqlx::query(
            "INSERT INTO agent_leases (agent_id, owner, token, expires_at, acquired_at) \
             VALUES (?, ?, 1, ?, ?) \
             ON CONFLICT (agent_id) DO UPDATE SET \
                 owner = excluded.owner, token = agent_leases.token + 1, \
                 expires_at = excluded.expires_at, acquired_at = excluded.acquired_at \
             WHERE agent_leases.expires_at <= excluded.acquired_at \
                OR agent_leases.owner = excluded.owner \
             RETURNING token, expires_at",
        )
        .bind(agent_id)
        .bind(owner)
        .bind(ts(expiry(now, ttl)))
        .bind(ts(now))
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let f = Fields::new(&row, "agent_leases");
        Ok(Some(Lease {
            agent_id: agent_id.to_owned(),
            owner: owner.to_owned(),
            token: f.get("token")?,
            expires_at: f.time("expires_at")?,
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
        let mut tx = self.write_tx().await?;
        let now = now();
        // `expires_at > now`: a released lease has no owner any more, and an expired one may
        // be taken any moment; neither may be revived.
        let done = sqlx::query(
            "UPDATE agent_leases SET expires_at = ? \
             WHERE agent_id = ? AND owner = ? AND token = ? AND expires_at > ?",
        )
        .bind(ts(expiry(now, ttl)))
        .bind(agent_id)
        .bind(owner)
        .bind(token)
        .bind(ts(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    pub(crate) async fn release_lease(
        &self,
        agent_id: &str,
        owner: &str,
        token: i64,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let now = ts(now());
        // The row stays (expired) so the next acquisition continues the token sequence. There is
        // no notification: brokers sharing a SQLite file are on one machine and simply poll.
        let done = sqlx::query(
            "UPDATE agent_leases SET expires_at = ?, owner = '' \
             WHERE agent_id = ? AND owner = ? AND token = ? AND expires_at > ?",
        )
        .bind(&now)
        .bind(agent_id)
        .bind(owner)
        .bind(token)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    pub(crate) async fn lease_holder(&self, agent_id: &str) -> Result<Option<Lease>> {
        let row = sqlx::query(
            "SELECT owner, token, expires_at FROM agent_leases \
             WHERE agent_id = ? AND expires_at > ?",
        )
        .bind(agent_id)
        .bind(ts(now()))
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
            expires_at: f.time("expires_at")?,
            taken_over_from: None,
        }))
    }

    pub(crate) async fn lease_is_current(
        &self,
        agent_id: &str,
        owner: &str,
        token: i64,
    ) -> Result<bool> {
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM agent_leases \
             WHERE agent_id = ? AND owner = ? AND token = ? AND expires_at > ?",
        )
        .bind(agent_id)
        .bind(owner)
        .bind(token)
        .bind(ts(now()))
        .fetch_optional(&self.pool)
        .await?;
        Ok(current.is_some())
    }

    pub(crate) async fn running_executions_of(
        &self,
        instance_id: &str,
    ) -> Result<Vec<ExecutionRecord>> {
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions \
             WHERE state = 'running' AND instance_id = ? \
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
        // IS NOT also counts executions with no instance recorded: once the caller holds the
        // lease, nothing it did not start itself can legitimately be running.
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions \
             WHERE state = 'running' AND agent_id = ? AND instance_id IS NOT ? \
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
        // One statement is atomic on its own; no explicit transaction.
        let updated = sqlx::query("UPDATE executions SET instance_id = ? WHERE execution_id = ?")
            .bind(instance_id)
            .bind(execution_id)
            .execute(&self.writer)
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
