//! Agent leases with fencing tokens (reliability notes §6).
//!
//! Several brokers sharing one database must never run one agent twice. A broker runs an agent
//! only while it holds the agent's lease; every acquisition hands out a larger fencing token, and
//! the writes that matter (beginning and finishing an execution) can be fenced: they commit only
//! if their token is still the live one, so a broker that stalled past its lease cannot write
//! over its successor (Kleppmann's fencing tokens). How a lease is taken, renewed and released,
//! and which clock judges expiry, is each backend's own (`db::sqlite`, `db::postgres`); the
//! contract, and everything else here, is shared.

use std::time::Duration;

use kokino_core::{ExecutionRecord, NewExecution, Turn};

use crate::db::{Db, Durability, Fields, On, Query, Tx};
use crate::executions::{begin_execution_in, finish_execution_in, found};
use crate::{clamp_ttl, ttl_millis, FinishExecution, Lease, Result, Store, StoreError};

/// The lease a fenced write must still hold.
pub(crate) struct Fence<'a> {
    pub(crate) agent_id: &'a str,
    pub(crate) owner: &'a str,
    pub(crate) token: i64,
}

impl Fence<'_> {
    /// Checks, inside the write's transaction, that the lease is still `owner`'s with `token` and
    /// unexpired, and keeps it so until the transaction ends: on SQLite because no other writer
    /// can change the lease before the write transaction ends, on PostgreSQL because the check
    /// holds the lease row `FOR SHARE` (see `db::postgres::FENCE_LIVE`).
    pub(crate) async fn check(&self, tx: &mut Tx) -> Result<()> {
        let live = match tx {
            #[cfg(feature = "sqlite")]
            Tx::Sqlite(_) => crate::db::sqlite::LEASE_LIVE,
            #[cfg(feature = "postgres")]
            Tx::Postgres(_) => crate::db::postgres::FENCE_LIVE,
        };
        let row = Query::new(format!(
            "SELECT owner FROM agent_leases \
             WHERE agent_id = $1 AND owner = $2 AND token = $3 AND {live}"
        ))
        .bind(self.agent_id)
        .bind(self.owner)
        .bind(self.token)
        .fetch_optional(tx)
        .await?;
        match row {
            Some(_) => Ok(()),
            None => Err(StoreError::StaleLease {
                agent_id: self.agent_id.to_owned(),
                token: self.token,
            }),
        }
    }

    /// A lease fences only its own agent's executions; finishing another agent's execution under
    /// it is a caller's mistake, refused before anything is written.
    pub(crate) fn check_covers(&self, execution_id: &str, execution_agent: &str) -> Result<()> {
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

/// The SQL that differs per backend for leases: which clock judges them, and how a release is
/// announced.
impl Db {
    /// The condition "the lease row is unexpired now".
    pub(crate) fn lease_live(&self) -> &'static str {
        match self {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(_) => crate::db::sqlite::LEASE_LIVE,
            #[cfg(feature = "postgres")]
            Db::Postgres(_) => crate::db::postgres::LEASE_LIVE,
        }
    }

    /// Takes or extends the lease of (`$1` agent, `$2` owner, `$3` ttl in milliseconds) unless
    /// another owner holds it unexpired, returning the token and expiry when it did.
    fn acquire_sql(&self) -> String {
        match self {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(_) => crate::db::sqlite::acquire_sql(),
            #[cfg(feature = "postgres")]
            Db::Postgres(_) => crate::db::postgres::ACQUIRE_SQL.to_owned(),
        }
    }

    /// "Now plus the ttl in milliseconds bound at `$param`".
    pub(crate) fn lease_expiry(&self, param: u32) -> String {
        match self {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(_) => crate::db::sqlite::lease_expiry(param),
            #[cfg(feature = "postgres")]
            Db::Postgres(_) => crate::db::postgres::lease_expiry(param),
        }
    }

    /// Ends the lease of (`$1` agent, `$2` owner, `$3` token) if it is live, returning a row
    /// when it did.
    fn release_sql(&self) -> String {
        match self {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(_) => crate::db::sqlite::RELEASE_SQL.to_owned(),
            #[cfg(feature = "postgres")]
            Db::Postgres(_) => crate::db::postgres::release_sql(),
        }
    }
}

impl Store {
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
        let (mut tx, previous) = self.begin_acquire(agent_id).await?;
        let on = match tx.as_mut() {
            Some(tx) => On::Tx(tx),
            None => self.db.write(),
        };
        let row = Query::new(self.db.acquire_sql())
            .bind(agent_id)
            .bind(owner)
            .bind(ttl_millis(ttl))
            .fetch_optional(on)
            .await?;
        if let Some(tx) = tx {
            tx.commit().await?;
        }
        let Some(row) = row else {
            // The upsert's WHERE refused: another owner holds an unexpired lease.
            return Ok(None);
        };
        let f = Fields::new(&row, "agent_leases");
        let previous = match previous {
            Some(previous) => previous,
            None => f.opt_text("previous_owner")?,
        };
        Ok(Some(Lease {
            agent_id: agent_id.to_owned(),
            owner: owner.to_owned(),
            token: f.int("token")?,
            expires_at: f.time("expires_at")?,
            // Re-acquiring one's own lease is not a takeover, and a released lease has no owner
            // (''): taking it is no takeover either.
            taken_over_from: previous.filter(|p| p != owner && !p.is_empty()),
        }))
    }

    /// What precedes the acquiring upsert. SQLite reads the previous owner (for
    /// `taken_over_from`) in a write transaction that the upsert then joins, because its
    /// RETURNING cannot see the replaced row. PostgreSQL's one statement needs no transaction
    /// and reports the previous owner itself, from the very row version it judged.
    // Without SQLite there is nothing to read first, and the id goes unread.
    #[cfg_attr(not(feature = "sqlite"), allow(unused_variables))]
    async fn begin_acquire(&self, agent_id: &str) -> Result<(Option<Tx>, Option<Option<String>>)> {
        match &self.db {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(_) => {
                let mut tx = self.db.write_tx().await?;
                let owner = crate::db::sqlite::lease_owner(&mut tx, agent_id).await?;
                Ok((Some(tx), Some(owner)))
            }
            #[cfg(feature = "postgres")]
            Db::Postgres(_) => Ok((None, None)),
        }
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
        // `expires_at` must still be in the future: a released lease has no owner any more,
        // and an expired one may be taken any moment; neither may be revived.
        let renewed = Query::new(format!(
            "UPDATE agent_leases SET expires_at = {} \
             WHERE agent_id = $1 AND owner = $2 AND token = $3 AND {}",
            self.db.lease_expiry(4),
            self.db.lease_live()
        ))
        .bind(agent_id)
        .bind(owner)
        .bind(token)
        .bind(ttl_millis(ttl))
        .execute(self.db.write())
        .await?;
        Ok(renewed > 0)
    }

    /// Ends the lease if `owner`/`token` still hold it, by expiring it now (the row and its token
    /// stay, so the next acquisition gets a larger token); a stale release, or the release of an
    /// already expired lease, does nothing. Returns whether it released. On PostgreSQL the same
    /// transaction also sends `NOTIFY kokino_lease_released, '<agent_id>'`
    /// ([`crate::LEASE_RELEASED_CHANNEL`]) so that waiting brokers wake up.
    pub async fn release_lease(&self, agent_id: &str, owner: &str, token: i64) -> Result<bool> {
        // The row stays (expired) so the next acquisition continues the token sequence.
        let released = Query::new(self.db.release_sql())
            .bind(agent_id)
            .bind(owner)
            .bind(token)
            .fetch_all(self.db.write())
            .await?;
        Ok(!released.is_empty())
    }

    /// The current holder, if the lease is unexpired (`taken_over_from` is always `None`).
    pub async fn lease_holder(&self, agent_id: &str) -> Result<Option<Lease>> {
        let row = Query::new(format!(
            "SELECT owner, token, expires_at FROM agent_leases WHERE agent_id = $1 AND {}",
            self.db.lease_live()
        ))
        .bind(agent_id)
        .fetch_optional(self.db.read())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let f = Fields::new(&row, "agent_leases");
        Ok(Some(Lease {
            agent_id: agent_id.to_owned(),
            owner: f.text("owner")?,
            token: f.int("token")?,
            expires_at: f.time("expires_at")?,
            taken_over_from: None,
        }))
    }

    /// Whether `owner`/`token` is still the live (unexpired) lease of the agent (fencing check).
    /// Only a snapshot: to make a write depend on it, use the fenced writes.
    pub async fn lease_is_current(&self, agent_id: &str, owner: &str, token: i64) -> Result<bool> {
        let row = Query::new(format!(
            "SELECT owner FROM agent_leases \
             WHERE agent_id = $1 AND owner = $2 AND token = $3 AND {}",
            self.db.lease_live()
        ))
        .bind(agent_id)
        .bind(owner)
        .bind(token)
        .fetch_optional(self.db.read())
        .await?;
        Ok(row.is_some())
    }

    /// Executions still `running` recorded by `instance_id`, oldest first (what a restarted
    /// broker with the same stable instance id must clean up).
    pub async fn running_executions_of(&self, instance_id: &str) -> Result<Vec<ExecutionRecord>> {
        self.executions_where("state = 'running' AND instance_id = $1", &[instance_id])
            .await
    }

    /// Running executions of the agent recorded by an instance other than `owner`, oldest first,
    /// including those with no instance recorded (what a broker that took an expired lease over
    /// marks interrupted; it kills nothing).
    pub async fn foreign_running_executions(
        &self,
        agent_id: &str,
        owner: &str,
    ) -> Result<Vec<ExecutionRecord>> {
        // IS DISTINCT FROM also counts executions with no instance recorded: once the caller
        // holds the lease, nothing it did not start itself can legitimately be running.
        self.executions_where(
            "state = 'running' AND agent_id = $1 AND instance_id IS DISTINCT FROM $2",
            &[agent_id, owner],
        )
        .await
    }

    /// Sets the execution's `instance_id` ([`Store::begin_execution_fenced`] already records the
    /// lease's owner there). [`StoreError::ExecutionNotFound`] for an unknown id.
    pub async fn set_execution_instance(
        &self,
        execution_id: &str,
        instance_id: &str,
    ) -> Result<()> {
        // One statement is atomic on its own; no explicit transaction.
        let updated = Query::new("UPDATE executions SET instance_id = $1 WHERE execution_id = $2")
            .bind(instance_id)
            .bind(execution_id)
            .execute(self.db.write())
            .await?;
        found(updated, execution_id)
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
        let fence = Fence {
            agent_id: new.agent_id.as_str(),
            owner,
            token,
        };
        // Committed without waiting for the disk, like `Store::begin_execution`.
        let mut tx = self.db.write_tx_as(Durability::Committed).await?;
        // On any error the transaction is dropped, which rolls back whatever was written.
        let turn = begin_execution_in(&mut tx, new, Some(&fence)).await?;
        tx.commit().await?;
        Ok(turn)
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
        let fence = Fence {
            agent_id,
            owner,
            token,
        };
        let mut tx = self.db.write_tx().await?;
        let turn = finish_execution_in(&mut tx, fin, Some(&fence)).await?;
        tx.commit().await?;
        Ok(turn)
    }
}
