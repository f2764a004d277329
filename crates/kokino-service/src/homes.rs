//! Several machines: every agent has a home broker.
//!
//! An agent's CLI session lives in the CLI's files under the `HOME` of the machine that ran it,
//! and its `cwd` is a directory there, so only one broker can continue its conversation: its
//! home. Homes are rows in the database (`kokino_store::Home`), next to each broker's advertised
//! address and liveness. A request that reaches another broker is forwarded to the home by the
//! transport ([`Route::Remote`]); the lease stays the safety net, so even a misrouted run can
//! never overlap another.
//!
//! When a home's liveness expires its agents can be taken over by the broker that next receives
//! an execution for them, but only where the agent's `cwd` exists (shared storage) or the agent
//! is declared portable; otherwise the caller hears `AgentHomeUnavailable` until the home is
//! back. A broker that returns after its agents were taken over finds the new homes in the
//! database and forwards like any other broker; and a run that reaches a broker that stopped
//! being the home while the request waited is refused (`AgentMoved`) before anything runs.
//!
//! Homes are read through a small cache, invalidated by the `kokino_home_changed` notification
//! (and by every lease release of the agent, which is harmless), and never older than a quarter
//! of the liveness ttl, so a home that died is noticed within that time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kokino_core::{AgentId, AgentRecord, AgentSpec};
use kokino_store::{Home, Store};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterConfig, Wakeups, EVERYONE};
use crate::{Broker, ServiceError};

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Where a request for an agent is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Here: this broker is the home (or homes are off).
    Local,
    /// At the home broker, which is alive: forward the request there.
    Remote {
        /// The home broker's instance id.
        instance_id: String,
        /// Its advertised address.
        url: String,
    },
}

/// The answer to `POST /agents/{id}/move`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MoveResult {
    /// The agent.
    pub agent_id: String,
    /// Its previous home.
    pub from: Option<String>,
    /// Its home now.
    pub to: String,
    /// Grows at every change of home.
    pub generation: i64,
    /// Whether a running execution was cancelled for the move.
    pub cancelled: bool,
    /// Whether the session was ended (`endSession`); otherwise it is transferred, and the new
    /// home continues the conversation from the stored turns.
    pub session_ended: bool,
}

/// One broker as `GET /api/cluster` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerView {
    /// Its instance id.
    pub instance_id: String,
    /// Its advertised address.
    pub url: String,
    /// Whether its liveness has not expired.
    pub alive: bool,
    /// When its liveness expires (or expired), by the database's clock.
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// How many agents live there.
    pub agents: usize,
}

/// One agent's home as `GET /api/cluster` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HomeView {
    /// The agent.
    pub agent_id: String,
    /// Its home broker.
    pub home: String,
    /// Whether it may be re-homed where its `cwd` does not exist.
    pub portable: bool,
    /// Grows at every change of home.
    pub generation: i64,
    /// Whether its home is alive.
    pub alive: bool,
}

/// `GET /api/cluster`: the brokers and the agents' homes.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    /// The broker that answered.
    pub instance_id: String,
    /// Every broker that ever announced itself.
    pub brokers: Vec<BrokerView>,
    /// Every agent's home.
    pub homes: Vec<HomeView>,
}

/// The homes machinery of one broker (present in cluster mode with an advertised address).
pub(crate) struct Homes {
    pub instance_id: String,
    pub url: String,
    pub ttl: Duration,
    cache: Arc<Mutex<HashMap<String, (Home, Instant)>>>,
}

impl Homes {
    /// The homes of a cluster broker with an advertised address; `None` otherwise.
    pub(crate) fn new(
        cluster: Option<&ClusterConfig>,
        store: &Store,
        stop: &CancellationToken,
    ) -> (Option<Wakeups>, Option<Homes>) {
        let Some(c) = cluster else {
            return (None, None);
        };
        let wakeups = Wakeups::spawn(store.clone(), stop.clone());
        let Some(url) = c.advertise_url.clone() else {
            return (Some(wakeups), None);
        };
        let cache: Arc<Mutex<HashMap<String, (Home, Instant)>>> = Arc::default();
        let (forget, mut rx, stop) = (cache.clone(), wakeups.subscribe(), stop.clone());
        tokio::spawn(async move {
            loop {
                let agent = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = rx.recv() => r,
                };
                let mut cache = forget.lock().expect("home cache");
                match agent {
                    Ok(a) if &*a != EVERYONE => {
                        cache.remove(&*a);
                    }
                    // Everyone, or notices were missed: forget everything.
                    Ok(_) | Err(_) => cache.clear(),
                }
            }
        });
        let homes = Homes {
            instance_id: c.instance_id.clone(),
            url,
            ttl: c.lease_ttl,
            cache,
        };
        (Some(wakeups), Some(homes))
    }

    fn cached(&self, agent: &str) -> Option<Home> {
        let cache = self.cache.lock().expect("home cache");
        cache
            .get(agent)
            .filter(|(_, at)| at.elapsed() < self.ttl / 4)
            .map(|(h, _)| h.clone())
    }

    fn remember(&self, home: &Home) {
        self.cache
            .lock()
            .expect("home cache")
            .insert(home.agent_id.clone(), (home.clone(), Instant::now()));
    }

    fn forget(&self, agent: &str) {
        self.cache.lock().expect("home cache").remove(agent);
    }
}

fn homes(b: &Broker) -> Option<&Homes> {
    b.inner.homes.as_ref()
}

/// Announces this broker now, then every quarter of the ttl until the broker stops; at a clean
/// stop its liveness is expired at once (see [`on_shutdown`]).
pub(crate) async fn start_liveness(b: &Broker) -> Result<()> {
    let Some(h) = homes(b) else {
        return Ok(());
    };
    b.inner
        .store
        .heartbeat_broker(&h.instance_id, &h.url, h.ttl)
        .await?;
    tracing::info!(instance = %h.instance_id, url = %h.url, "homes: agents live on their home broker; requests are forwarded there");
    let broker = b.clone();
    let stop = b.inner.stop.clone();
    tokio::spawn(async move {
        let Some(h) = homes(&broker) else { return };
        let mut tick = tokio::time::interval(h.ttl / 4);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = broker
                .inner
                .store
                .heartbeat_broker(&h.instance_id, &h.url, h.ttl)
                .await
            {
                tracing::warn!(error = %e, "could not renew this broker's liveness");
            }
        }
    });
    Ok(())
}

/// A clean stop: the broker stops being alive at once, so its portable agents are taken over by
/// the next broker that receives them instead of waiting for the liveness to expire.
pub(crate) async fn on_shutdown(b: &Broker) {
    if let Some(h) = homes(b) {
        if let Err(e) = b.inner.store.expire_broker(&h.instance_id).await {
            tracing::warn!(error = %e, "could not end this broker's liveness");
        }
    }
}

/// The agent's home, from the cache or the database; an agent without one (registered before
/// homes existed) adopts this broker.
async fn home_of(b: &Broker, h: &Homes, id: &AgentId) -> Result<Home> {
    if let Some(home) = h.cached(id.as_str()) {
        return Ok(home);
    }
    let home = match b.inner.store.home(id.as_str()).await? {
        Some(home) => home,
        None => {
            b.inner
                .store
                .claim_home(id.as_str(), &h.instance_id)
                .await?
        }
    };
    h.remember(&home);
    Ok(home)
}

/// Where a request for the agent is served. `failover` (executions) takes the agent over when
/// its home is dead and the agent can run here; other requests are then served here from the
/// database. An unknown agent is `Local`, so that the local handler answers 404.
pub async fn route(b: &Broker, agent_id: &str, failover: bool) -> Result<Route> {
    let Some(h) = homes(b) else {
        return Ok(Route::Local);
    };
    let Ok(id) = AgentId::parse(agent_id) else {
        return Ok(Route::Local);
    };
    let Some(agent) = b.inner.store.get_agent(&id).await? else {
        return Ok(Route::Local);
    };
    // At most twice: a lost take-over race re-reads the home its winner wrote.
    for _ in 0..2 {
        let home = home_of(b, h, &id).await?;
        if home.instance_id == h.instance_id {
            return Ok(Route::Local);
        }
        if home.alive {
            if let Some(url) = home.url.clone() {
                return Ok(Route::Remote {
                    instance_id: home.instance_id,
                    url,
                });
            }
        }
        if !failover {
            return Ok(Route::Local);
        }
        if let Err(reason) = can_run_here(&agent, &home) {
            return Err(ServiceError::AgentHomeUnavailable {
                agent_id: id.to_string(),
                home: home.instance_id,
                url: home.url,
                reason,
                retry_after: h.ttl,
            });
        }
        h.forget(id.as_str());
        if b.inner
            .store
            .take_over_home(id.as_str(), &home.instance_id, &h.instance_id)
            .await?
        {
            tracing::warn!(agent = %id, from = %home.instance_id, "took over an agent whose home broker is gone");
            let mut ev = crate::telemetry::event(
                "AGENT_REHOMED",
                Some(id.as_str()),
                Some(agent.spec.cli_type.as_str()),
            );
            ev.metadata = serde_json::json!({"from": home.instance_id, "to": h.instance_id});
            b.inner.events.emit(ev);
            return Ok(Route::Local);
        }
    }
    Err(ServiceError::AgentHomeUnavailable {
        agent_id: id.to_string(),
        home: "(changing)".into(),
        url: None,
        reason: "its home changed twice while this broker looked".into(),
        retry_after: Duration::from_secs(1),
    })
}

/// Whether this machine can continue the agent: its `cwd` exists here (shared storage), or it is
/// declared portable, or it has no `cwd` at all.
fn can_run_here(agent: &AgentRecord, home: &Home) -> std::result::Result<(), String> {
    match &agent.spec.cwd {
        _ if home.portable => Ok(()),
        None => Ok(()),
        Some(cwd) if Path::new(cwd).is_dir() => Ok(()),
        Some(cwd) => Err(format!(
            "its cwd {cwd:?} does not exist on this broker and it is not declared portable"
        )),
    }
}

/// The execution path's check, after the lease: this broker must (still) be the agent's home.
/// Read from the database, not the cache: this is the decision that lets a CLI start.
pub(crate) async fn check_home(b: &Broker, id: &AgentId) -> Result<()> {
    let Some(h) = homes(b) else {
        return Ok(());
    };
    let home = match b.inner.store.home(id.as_str()).await? {
        Some(home) => home,
        None => {
            b.inner
                .store
                .claim_home(id.as_str(), &h.instance_id)
                .await?
        }
    };
    if home.instance_id == h.instance_id {
        return Ok(());
    }
    h.forget(id.as_str());
    Err(ServiceError::AgentMoved {
        agent_id: id.to_string(),
        home: home.instance_id,
    })
}

/// Registration: the agent's home is `home` when named, else the home it already has, else this
/// broker. Only the home can check the `cwd` (it is a directory on the home's machine), so a
/// registration for another broker's agent skips that check here.
pub(crate) async fn register(
    b: &Broker,
    spec: AgentSpec,
    home: Option<String>,
    portable: Option<bool>,
) -> Result<AgentRecord> {
    let Some(h) = homes(b) else {
        if home.is_some() || portable.is_some() {
            return Err(ServiceError::invalid(
                "home",
                "home and portable need several brokers (a PostgreSQL store and --advertise-url)",
            ));
        }
        return crate::agents::register(b, spec).await;
    };
    let id = spec.agent_id.to_string();
    let current = b.inner.store.home(&id).await?;
    let target = home
        .clone()
        .or_else(|| current.as_ref().map(|c| c.instance_id.clone()))
        .unwrap_or_else(|| h.instance_id.clone());
    if target != h.instance_id {
        let brokers = b.inner.store.brokers().await?;
        if !brokers.iter().any(|r| r.instance_id == target) {
            return Err(ServiceError::invalid(
                "home",
                format!("no broker {target:?} has announced itself (see GET /api/cluster)"),
            ));
        }
    }
    let record = crate::agents::register_checked(b, spec, target == h.instance_id).await?;
    let changes = current.as_ref().is_none_or(|c| c.instance_id != target);
    if changes || portable.is_some_and(|p| current.as_ref().is_none_or(|c| c.portable != p)) {
        b.inner.store.set_home(&id, &target, portable).await?;
    }
    h.forget(&id);
    Ok(record)
}

/// `POST /agents/{id}/move`: served by the home when it is alive (the transport forwards it
/// there), so that a running execution is cancelled where it runs. The session is transferred
/// (the new home continues the conversation from the stored turns) unless `end_session`.
pub(crate) async fn move_agent(
    b: &Broker,
    agent_id: &str,
    to: &str,
    end_session: bool,
) -> Result<MoveResult> {
    let Some(h) = homes(b) else {
        return Err(ServiceError::InvalidState(
            "moving an agent needs several brokers (a PostgreSQL store and --advertise-url)".into(),
        ));
    };
    let id = crate::agents::existing(b, agent_id).await?;
    let alive = b
        .inner
        .store
        .brokers()
        .await?
        .into_iter()
        .any(|r| r.instance_id == to && r.alive);
    if !alive && to != h.instance_id {
        return Err(ServiceError::invalid(
            "to",
            format!("broker {to:?} is not alive (see GET /api/cluster)"),
        ));
    }
    let from = b
        .inner
        .store
        .home(id.as_str())
        .await?
        .map(|h| h.instance_id);
    let cancelled = b.inner.running(&id).is_some();
    crate::sessions::cancel_and_wait(b, &id).await;
    if let Some(tmux) = &b.inner.tmux {
        tmux.end_session(id.as_str()).await;
    }
    let session_ended = if end_session {
        b.inner.store.end_session(&id).await?.is_some()
    } else {
        false
    };
    let home = b.inner.store.set_home(id.as_str(), to, None).await?;
    h.forget(id.as_str());
    let mut ev = crate::telemetry::event("AGENT_MOVED", Some(id.as_str()), None);
    ev.metadata = serde_json::json!({"from": from, "to": to, "sessionEnded": session_ended});
    b.inner.events.emit(ev);
    Ok(MoveResult {
        agent_id: id.to_string(),
        from,
        to: home.instance_id,
        generation: home.generation,
        cancelled,
        session_ended,
    })
}

/// The agent was deleted: it has no home any more.
pub(crate) async fn forget(b: &Broker, id: &AgentId) -> Result<()> {
    if let Some(h) = homes(b) {
        b.inner.store.forget_home(id.as_str()).await?;
        h.forget(id.as_str());
    }
    Ok(())
}

/// `GET /api/cluster`.
pub(crate) async fn view(b: &Broker) -> Result<ClusterView> {
    let Some(h) = homes(b) else {
        return Err(ServiceError::InvalidState(
            "this broker runs without homes (it needs a PostgreSQL store and --advertise-url)"
                .into(),
        ));
    };
    let homes = b.inner.store.homes().await?;
    let brokers = b
        .inner
        .store
        .brokers()
        .await?
        .into_iter()
        .map(|r| BrokerView {
            agents: homes
                .iter()
                .filter(|h| h.instance_id == r.instance_id)
                .count(),
            instance_id: r.instance_id,
            url: r.url,
            alive: r.alive,
            expires_at: r.expires_at,
        })
        .collect();
    Ok(ClusterView {
        instance_id: h.instance_id.clone(),
        brokers,
        homes: homes
            .into_iter()
            .map(|h| HomeView {
                agent_id: h.agent_id,
                home: h.instance_id,
                portable: h.portable,
                generation: h.generation,
                alive: h.alive,
            })
            .collect(),
    })
}

/// The other live brokers' addresses (for status fan-out), and this broker's instance id.
pub(crate) async fn peers(b: &Broker) -> Result<Vec<(String, String)>> {
    let Some(h) = homes(b) else {
        return Ok(Vec::new());
    };
    Ok(b.inner
        .store
        .brokers()
        .await?
        .into_iter()
        .filter(|r| r.alive && r.instance_id != h.instance_id)
        .map(|r| (r.instance_id, r.url))
        .collect())
}
