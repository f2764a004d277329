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
    /// When the database last extended the lease, by this broker's clock: at its acquisition,
    /// then at each renewal (see [`spawn_renewal`]).
    renewed_at: Arc<std::sync::Mutex<Instant>>,
    /// How many runs in a row it has been handed over to (see [`ParkedLeases`]).
    handovers: u32,
}

/// At most this many runs in a row take the lease over from the run before; then it goes back
/// to the database, so that another broker waiting for the agent gets its turn.
const MAX_HANDOVERS: u32 = 16;

impl LeaseHold {
    /// The instant the renewals of a run holding this lease update.
    pub fn renewed_at(&self) -> Arc<std::sync::Mutex<Instant>> {
        self.renewed_at.clone()
    }

    /// Whether the agent's next run here may take the lease over without a write: it was
    /// extended less than half a lifetime ago, so that it stays valid until that run's first
    /// renewal (a quarter of a lifetime after the run starts), and it has not been handed over
    /// too often in a row.
    pub fn can_hand_over(&self, cfg: &ClusterConfig) -> bool {
        let renewed = *self.renewed_at.lock().unwrap_or_else(|e| e.into_inner());
        self.handovers < MAX_HANDOVERS && renewed.elapsed() < cfg.lease_ttl / 2
    }

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
                renewed_at: Arc::new(std::sync::Mutex::new(Instant::now())),
                handovers: 0,
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
    renewed_at: Arc<std::sync::Mutex<Instant>>,
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
            let asked = Instant::now();
            match store
                .renew_lease(&agent_id, &cfg.instance_id, token, cfg.lease_ttl)
                .await
            {
                // The database extended it at some instant after `asked`.
                Ok(true) => *renewed_at.lock().unwrap_or_else(|e| e.into_inner()) = asked,
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

/// Leases kept between runs of one agent on this broker.
///
/// When a run ends while another run of the same agent waits for this broker's lock, the lease
/// is not given back to the database only to be taken again at once (two durable writes, and on
/// a busy agent most of what a run costs in the database): it is parked here, and the next run
/// takes it over with its token, so its fenced writes pass as the last run's did. A parked lease
/// nobody takes within a quarter of a lifetime, or at shutdown, is released.
#[derive(Default)]
pub(crate) struct ParkedLeases {
    slots: std::sync::Mutex<std::collections::HashMap<String, (LeaseHold, u64)>>,
    generation: std::sync::atomic::AtomicU64,
}

impl ParkedLeases {
    fn slots(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (LeaseHold, u64)>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parks `hold` for the agent's next run; the returned number names this parking.
    fn park(&self, hold: LeaseHold) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        // One run of an agent at a time holds its lease here, so nothing is displaced; a lease
        // displaced anyway would be dropped, which releases it in the background.
        self.slots()
            .insert(hold.agent_id.clone(), (hold, generation));
        generation
    }

    /// The agent's parked lease, if one is parked and may still be taken over; one parked too
    /// long is released.
    pub async fn take(&self, agent_id: &str, cfg: &ClusterConfig) -> Option<LeaseHold> {
        let (mut hold, _) = self.slots().remove(agent_id)?;
        if !hold.can_hand_over(cfg) {
            hold.release().await;
            return None;
        }
        hold.handovers += 1;
        Some(hold)
    }

    /// The parking `generation` of the agent's lease, if it is still parked.
    fn take_parking(&self, agent_id: &str, generation: u64) -> Option<LeaseHold> {
        let mut slots = self.slots();
        match slots.get(agent_id) {
            Some((_, g)) if *g == generation => slots.remove(agent_id).map(|(hold, _)| hold),
            _ => None,
        }
    }
}

/// Parks the lease of a run that ended while the agent's next run waits for this broker's lock
/// (see [`ParkedLeases`]), and releases it if that run does not take it in time.
pub(crate) fn park(
    parked: &Arc<ParkedLeases>,
    hold: LeaseHold,
    cfg: &ClusterConfig,
    tasks: &tokio_util::task::TaskTracker,
    stop: &CancellationToken,
) {
    let agent_id = hold.agent_id.clone();
    let generation = parked.park(hold);
    let (parked, stop, wait) = (parked.clone(), stop.clone(), cfg.lease_ttl / 4);
    tasks.spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => {}
        }
        if let Some(hold) = parked.take_parking(&agent_id, generation) {
            hold.release().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("k.db").display());
        // Leases name agents without a foreign key: no agent needs to exist.
        (Store::open(&url).await.unwrap(), dir)
    }

    fn config(ttl: Duration) -> ClusterConfig {
        ClusterConfig {
            instance_id: "me".into(),
            lease_ttl: ttl,
            guard_program: PathBuf::from("/bin/true"),
            advertise_url: None,
        }
    }

    /// A parked lease that no run takes goes back to the database after a quarter of a
    /// lifetime; one taken in time keeps its token and counts the handover; one extended too
    /// long ago is released instead of handed over.
    ///
    /// On the real clock (a quarter of an 800 ms lease): with tokio's paused clock, the clock
    /// jumps while the store's own thread works, and the store's timeouts fire.
    #[tokio::test]
    async fn parked_leases_are_taken_over_in_time_or_released() {
        let (store, _dir) = store().await;
        let cfg = config(Duration::from_millis(800));
        let (tasks, stop) = (
            tokio_util::task::TaskTracker::new(),
            CancellationToken::new(),
        );
        let parked = Arc::new(ParkedLeases::default());
        let far = Instant::now() + Duration::from_secs(5);

        let (hold, lease) = acquire(&store, "a", &cfg, far, None)
            .await
            .unwrap()
            .unwrap();
        park(&parked, hold, &cfg, &tasks, &stop);
        let taken = parked.take("a", &cfg).await.expect("taken in time");
        assert_eq!((taken.token, taken.handovers), (lease.token, 1));

        park(&parked, taken, &cfg, &tasks, &stop);
        tokio::time::sleep(cfg.lease_ttl / 4 + Duration::from_millis(100)).await;
        assert!(parked.take("a", &cfg).await.is_none(), "released, not kept");
        // The release is the parking's own task: done once the task is.
        tasks.close();
        tasks.wait().await;
        assert!(store.lease_holder("a").await.unwrap().is_none());

        // Extended too long ago: released at the taking.
        let (hold, _) = acquire(&store, "a", &cfg, far, None)
            .await
            .unwrap()
            .unwrap();
        *hold.renewed_at.lock().unwrap() = Instant::now() - cfg.lease_ttl;
        parked.park(hold);
        assert!(parked.take("a", &cfg).await.is_none());
        let holder = store.lease_holder("a").await.unwrap();
        assert!(holder.is_none(), "{holder:?}");
    }
}
