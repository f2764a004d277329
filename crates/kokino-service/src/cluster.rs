//! Several brokers on one PostgreSQL: agent leases with fencing tokens.
//!
//! Each execution takes the agent's lease in the database (after the broker's own per-agent
//! lock), renews it while the CLI runs, and releases it at the end. A broker that receives a
//! request for an agent another broker is running simply waits for the lease — the request is
//! *queued for the lease*, not forwarded — so any broker can serve any agent, one run at a time,
//! and brokers need no addresses of each other. The database's clock decides expiry; every write
//! of an execution carries the lease's token and is refused when the token is stale. The CLI
//! runs under a lease guard that kills it when heartbeats stop, before the lease can expire, so
//! a paused broker's CLI is gone by the time another broker may start the agent again.

use std::path::PathBuf;
use std::time::Duration;

use kokino_store::{Lease, Store, StoreError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Cluster settings; present only when the store is shared (PostgreSQL).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Stable across restarts of this broker (a restarted broker cleans up its own runs).
    pub instance_id: String,
    /// How long a lease lives without renewal.
    pub lease_ttl: Duration,
    /// The binary that acts as the lease guard (`kokino-broker` itself).
    pub guard_program: PathBuf,
}

impl ClusterConfig {
    /// Heartbeats and renewals every quarter of the lease...
    pub fn renew_every(&self) -> Duration {
        self.lease_ttl / 4
    }

    /// ...and the guard kills the CLI after two thirds of it without a heartbeat: a heartbeat is
    /// sent before each renewal, so the guard's deadline always precedes the lease's expiry.
    pub fn guard_deadline(&self) -> Duration {
        self.lease_ttl * 2 / 3
    }
}

/// A held lease. Dropping it without [`LeaseHold::release`] releases it in the background.
pub(crate) struct LeaseHold {
    store: Store,
    pub agent_id: String,
    pub owner: String,
    pub token: i64,
    released: bool,
}

impl LeaseHold {
    pub async fn release(mut self) {
        self.released = true;
        if let Err(e) = self
            .store
            .release_lease(&self.agent_id, &self.owner, self.token)
            .await
        {
            tracing::warn!(error = %e, agent = %self.agent_id, "could not release a lease");
        }
    }
}

impl Drop for LeaseHold {
    fn drop(&mut self) {
        if !self.released {
            let (store, agent, owner, token) = (
                self.store.clone(),
                self.agent_id.clone(),
                self.owner.clone(),
                self.token,
            );
            tokio::spawn(async move {
                let _ = store.release_lease(&agent, &owner, token).await;
            });
        }
    }
}

/// Waits for the agent's lease until `deadline`. `Ok(None)` means the wait timed out.
pub(crate) async fn acquire(
    store: &Store,
    agent_id: &str,
    cfg: &ClusterConfig,
    deadline: Instant,
) -> Result<Option<(LeaseHold, Lease)>, StoreError> {
    loop {
        if let Some(lease) = store
            .acquire_lease(agent_id, &cfg.instance_id, cfg.lease_ttl)
            .await?
        {
            let hold = LeaseHold {
                store: store.clone(),
                agent_id: agent_id.to_owned(),
                owner: cfg.instance_id.clone(),
                token: lease.token,
                released: false,
            };
            return Ok(Some((hold, lease)));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        // Another broker runs the agent. Its run ends in seconds to minutes; a short poll
        // costs one indexed query per waiter and needs no connection held open.
        tokio::time::sleep(Duration::from_millis(25).min(deadline - Instant::now())).await;
    }
}

/// Keeps the lease alive while the run lasts: heartbeat to the guard, then renew. When the
/// lease is lost (another broker took it after this one stalled), the run is cancelled.
pub(crate) fn spawn_renewal(
    store: Store,
    cfg: ClusterConfig,
    agent_id: String,
    token: i64,
    cancel: CancellationToken,
    guard_pid: impl Fn() -> Option<i32> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(cfg.renew_every());
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Some(pid) = guard_pid() {
                kokino_exec::supervisor::heartbeat(pid);
            }
            match store
                .renew_lease(&agent_id, &cfg.instance_id, token, cfg.lease_ttl)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(agent = %agent_id, token, "lost the agent's lease; stopping its run");
                    cancel.cancel();
                    return;
                }
                Err(e) => tracing::warn!(error = %e, agent = %agent_id, "could not renew a lease"),
            }
        }
    })
}
