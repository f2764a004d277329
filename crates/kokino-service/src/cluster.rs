//! Several brokers on one PostgreSQL: agent leases with fencing tokens.
//!
//! Each execution takes the agent's lease in the database (after the broker's own per-agent
//! lock), renews it while the CLI runs, and releases it at the end. With homes (`crate::homes`,
//! brokers on several machines) requests are forwarded to the agent's home and the lease is the
//! safety net that keeps even a misrouted run from overlapping another; without them a broker
//! that receives a request for an agent another broker is running waits for the lease. Waiting
//! is woken by PostgreSQL notifications ([`Wakeups`]): a release wakes the waiters of that agent
//! at once, and a holder that died (and so never releases) is waited for until its lease's
//! expiry. The database's clock decides expiry; every write
//! of an execution carries the lease's token and is refused when the token is stale. The CLI
//! runs under a lease guard that kills it when heartbeats stop, before the lease can expire, so
//! a paused broker's CLI is gone by the time another broker may start the agent again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kokino_store::{
    Lease, Notice, Store, StoreError, HOME_CHANGED_CHANNEL, LEASE_RELEASED_CHANNEL,
};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a notification wakes: every waiter of the agent it names, or everyone.
pub(crate) const EVERYONE: &str = "*";

/// One `LISTEN` connection per broker, fanned out to the tasks waiting for an agent's lease or
/// watching its home. A lost connection wakes everyone (notifications may have been missed), and
/// while it is down waiters fall back to a short poll.
#[derive(Clone)]
pub(crate) struct Wakeups {
    tx: broadcast::Sender<Arc<str>>,
    listening: Arc<AtomicBool>,
}

impl Wakeups {
    /// Starts listening on the lease and home channels until `stop`.
    pub(crate) fn spawn(store: Store, stop: CancellationToken) -> Wakeups {
        // A waiter that falls this far behind sees `Lagged` and simply looks again.
        let (tx, _) = broadcast::channel(1024);
        let w = Wakeups {
            tx,
            listening: Arc::new(AtomicBool::new(false)),
        };
        let task = w.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = task.listen(store) => {}
            }
        });
        w
    }

    async fn listen(&self, store: Store) {
        loop {
            match store
                .listen(&[LEASE_RELEASED_CHANNEL, HOME_CHANGED_CHANNEL])
                .await
            {
                Ok(Some(mut notes)) => {
                    self.listening.store(true, Ordering::Release);
                    self.wake(EVERYONE);
                    loop {
                        match notes.recv().await {
                            Ok(Notice::Message { payload, .. }) => self.wake(&payload),
                            Ok(Notice::Lost) => self.wake(EVERYONE),
                            Err(e) => {
                                tracing::warn!(error = %e, "lost the database notifications; waiters poll until they are back");
                                break;
                            }
                        }
                    }
                }
                // No notifications on this backend: waiters poll.
                Ok(None) => return,
                Err(e) => tracing::warn!(error = %e, "cannot listen for database notifications"),
            }
            self.listening.store(false, Ordering::Release);
            self.wake(EVERYONE);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn wake(&self, agent: &str) {
        // No receiver is fine: nobody waits.
        let _ = self.tx.send(Arc::from(agent));
    }

    /// A receiver for the notices sent from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.tx.subscribe()
    }

    /// Whether notifications are being received right now.
    pub(crate) fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }
}

/// Returns when a notice names `agent` (or everyone), or the channel lagged.
pub(crate) async fn woken_for(rx: &mut broadcast::Receiver<Arc<str>>, agent: &str) {
    loop {
        match rx.recv().await {
            Ok(a) if &*a == agent || &*a == EVERYONE => return,
            // Another agent's notice.
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// Cluster settings; present only when the store is shared (PostgreSQL).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Stable across restarts of this broker (a restarted broker cleans up its own runs).
    pub instance_id: String,
    /// How long a lease lives without renewal.
    pub lease_ttl: Duration,
    /// The binary that acts as the lease guard (`kokino-broker` itself).
    pub guard_program: PathBuf,
    /// Where other brokers reach this one (`--advertise-url`). When set, every agent has a home
    /// broker and requests are forwarded to it (see `crate::homes`); when not, every broker
    /// serves every agent, queueing for its lease.
    pub advertise_url: Option<String>,
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

/// The poll interval while notifications are unavailable (the listening connection is down).
const POLL_WITHOUT_NOTIFICATIONS: Duration = Duration::from_millis(25);

/// Waits for the agent's lease until `deadline`. `Ok(None)` means the wait timed out.
pub(crate) async fn acquire(
    store: &Store,
    agent_id: &str,
    cfg: &ClusterConfig,
    deadline: Instant,
    wakeups: Option<&Wakeups>,
) -> Result<Option<(LeaseHold, Lease)>, StoreError> {
    loop {
        // Subscribed before trying, so a release between the failed try and the wait is heard.
        let mut rx = wakeups.filter(|w| w.listening()).map(Wakeups::subscribe);
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
        let left = deadline - Instant::now();
        let Some(rx) = rx.as_mut() else {
            tokio::time::sleep(POLL_WITHOUT_NOTIFICATIONS.min(left)).await;
            continue;
        };
        // Another broker runs the agent. Its release is announced; a holder that died never
        // releases, so the wait also ends when its lease expires. The expiry is the database's
        // time and the sleep this machine's, so a skewed clock can make the wait longer, but
        // never longer than one lease lifetime, after which the holder is looked at again.
        let expiry = match store.lease_holder(agent_id).await? {
            Some(l) => {
                (l.expires_at - chrono::Utc::now())
                    .to_std()
                    .unwrap_or_default()
                    .min(cfg.lease_ttl)
                    + Duration::from_millis(5)
            }
            // Released or expired in between: try again at once.
            None => continue,
        };
        tokio::select! {
            _ = woken_for(rx, agent_id) => {}
            _ = tokio::time::sleep(expiry.min(left)) => {}
        }
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
