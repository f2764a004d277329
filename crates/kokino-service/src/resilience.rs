//! Circuit breakers, rate-limit parking and fallback overrides, as the execution path uses them:
//! the pure state machines live in `kokino_core::{breaker, fallback}`; this module persists their
//! changes, publishes them as events and metrics, and applies the auto-fallback rule.
//!
//! How breakers and fallback fit together (the spec says both "an open breaker refuses" and
//! "an opened agent breaker forces the agent to tmux"): the breakers guard the **headless** path.
//! When an agent's breaker opens and tmux can run it, the agent is forced to tmux automatically,
//! and its requests are rerouted there instead of refused. Once the breaker's wait has passed,
//! one request is sent headless as the probe; if it succeeds the breaker closes and the automatic
//! entry is cleared, so the agent returns to headless by itself. Without tmux, the open breaker
//! refuses the request (`ServiceError::CircuitOpen`). Manual entries are never cleared
//! automatically.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use kokino_core::breaker::{
    BreakerConfig, BreakerRegistry, BreakerSnapshot, CircuitStatus, Parking, Scope,
    ScopedTransition,
};
use kokino_core::clock::SharedClock;
use kokino_core::fallback::{FallbackState, FallbackStatus, Override, Target};
use kokino_core::{AgentId, CliType};
use kokino_store::Store;
use serde_json::json;

use crate::telemetry::{self, event, EventSink};
use crate::ServiceError;

pub(crate) struct Resilience {
    pub breakers: BreakerRegistry,
    pub parking: Parking,
    fallback: Mutex<FallbackState>,
    store: Store,
    events: EventSink,
    clock: SharedClock,
}

type Result<T> = std::result::Result<T, ServiceError>;

impl Resilience {
    /// Restores breakers and overrides from the store, so they survive a restart.
    pub async fn load(store: Store, events: EventSink, clock: SharedClock) -> Result<Self> {
        let breakers = BreakerRegistry::new(BreakerConfig::default(), clock.clone(), rand_seed());
        for (scope, key, snapshot) in store.load_circuits().await? {
            match (
                Scope::parse(&scope, &key),
                serde_json::from_value::<BreakerSnapshot>(snapshot),
            ) {
                (Ok(scope), Ok(snap)) => breakers.restore(&scope, &snap),
                _ => tracing::warn!(%scope, %key, "ignoring an unreadable stored breaker"),
            }
        }
        let mut fallback = FallbackState::new();
        for row in store.load_fallbacks().await? {
            match Target::parse(&row.kind, &row.key) {
                Ok(target) => fallback.restore(
                    target,
                    Override {
                        reason: row.reason,
                        since: row.since,
                        auto: row.auto,
                    },
                ),
                Err(_) => {
                    tracing::warn!(kind = %row.kind, key = %row.key, "ignoring an unreadable fallback row")
                }
            }
        }
        let r = Resilience {
            breakers,
            parking: Parking::new(),
            fallback: Mutex::new(fallback),
            store,
            events,
            clock,
        };
        r.update_gauges();
        Ok(r)
    }

    /// Several brokers share breakers and overrides through the database: adopt what the others
    /// changed. Overrides are taken whole (every change is written at once, so the database is
    /// the truth). A breaker is taken from the database only when its stored state differs from
    /// the local one — an operator's reset or another broker's opening; below the threshold each
    /// broker counts its own consecutive failures.
    pub async fn reload(&self) -> Result<()> {
        let mut fresh = FallbackState::new();
        for row in self.store.load_fallbacks().await? {
            if let Ok(target) = Target::parse(&row.kind, &row.key) {
                fresh.restore(
                    target,
                    Override {
                        reason: row.reason,
                        since: row.since,
                        auto: row.auto,
                    },
                );
            }
        }
        *self.fallback.lock().expect("fallback state") = fresh;
        for (scope, key, snapshot) in self.store.load_circuits().await? {
            if let (Ok(scope), Ok(snap)) = (
                Scope::parse(&scope, &key),
                serde_json::from_value::<BreakerSnapshot>(snapshot),
            ) {
                if self.breakers.state(&scope) != snap.state {
                    self.breakers.restore(&scope, &snap);
                }
            }
        }
        self.update_gauges();
        Ok(())
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn with_fallback<T>(&self, f: impl FnOnce(&FallbackState) -> T) -> T {
        f(&self.fallback.lock().expect("fallback state"))
    }

    pub fn fallback_status(&self) -> FallbackStatus {
        self.with_fallback(|f| f.status())
    }

    pub fn circuits(&self) -> Vec<CircuitStatus> {
        self.breakers.status()
    }

    fn update_gauges(&self) {
        let (clis, agents) =
            self.with_fallback(|f| (f.disabled_clis().len(), f.forced_agents().len()));
        metrics::gauge!(telemetry::FALLBACK_OVERRIDES, "kind" => "cli").set(clis as f64);
        metrics::gauge!(telemetry::FALLBACK_OVERRIDES, "kind" => "agent").set(agents as f64);
        let mut counts = std::collections::BTreeMap::<(&str, &str), u32>::new();
        for c in self.breakers.status() {
            *counts.entry((c.scope, c.state.as_str())).or_default() += 1;
        }
        for scope in ["agent", "cli"] {
            for state in ["closed", "open", "half_open", "forced_open", "disabled"] {
                let n = counts.get(&(scope, state)).copied().unwrap_or(0);
                metrics::gauge!(telemetry::CIRCUIT_BREAKERS, "scope" => scope, "state" => state)
                    .set(f64::from(n));
            }
        }
    }

    /// Persists, publishes and reacts to breaker transitions (auto-fallback on an agent
    /// breaker opening or closing).
    pub async fn publish(&self, transitions: Vec<ScopedTransition>, tmux_available: bool) {
        for st in transitions {
            let scope = &st.scope;
            if let Ok(snap) = serde_json::to_value(&st.snapshot) {
                if let Err(e) = self
                    .store
                    .save_circuit(scope.kind(), scope.key(), &snap)
                    .await
                {
                    tracing::warn!(error = %e, "could not persist a breaker");
                }
            }
            let (agent, cli) = match scope {
                Scope::Agent(a) => (Some(a.as_str()), None),
                Scope::Cli(c) => (None, Some(c.as_str())),
            };
            let mut ev = event(st.transition.event_type(), agent, cli);
            ev.metadata = json!({
                "scope": scope.kind(), "key": scope.key(),
                "from": st.transition.from.as_str(), "to": st.transition.to.as_str(),
                "consecutiveFailures": st.snapshot.consecutive_failures,
                "reason": st.snapshot.last_failure_reason, "retryAt": st.snapshot.retry_at,
            });
            self.events.emit(ev);
            metrics::counter!(telemetry::CIRCUIT_TRANSITIONS_TOTAL,
                "scope" => scope.kind(), "to" => st.transition.to.as_str())
            .increment(1);
            tracing::info!(scope = %scope, from = %st.transition.from, to = %st.transition.to, "circuit breaker transition");
            if let Scope::Agent(agent) = scope {
                if st.transition.opened() && tmux_available {
                    let reason = format!(
                        "circuit breaker opened after {} consecutive failures",
                        st.snapshot.consecutive_failures
                    );
                    let forced = {
                        let mut f = self.fallback.lock().expect("fallback state");
                        f.auto_force_agent(agent, &reason, self.now())
                    };
                    if forced {
                        self.persist(&Target::Agent(agent.clone())).await;
                        let mut ev = event("FALLBACK_AGENT_FORCED", Some(agent.as_str()), None);
                        ev.metadata = json!({"reason": reason, "auto": true});
                        self.events.emit(ev);
                    }
                } else if st.transition.closed() {
                    let cleared = {
                        let mut f = self.fallback.lock().expect("fallback state");
                        f.auto_clear_agent(agent)
                    };
                    if cleared {
                        self.persist(&Target::Agent(agent.clone())).await;
                        let mut ev = event("FALLBACK_AGENT_CLEARED", Some(agent.as_str()), None);
                        ev.metadata = json!({"reason": "circuit breaker closed", "auto": true});
                        self.events.emit(ev);
                    }
                }
            }
        }
        self.update_gauges();
    }

    /// Writes the current entry of `target` (or deletes its row when it has none).
    async fn persist(&self, target: &Target) {
        let entry = self.with_fallback(|f| f.get(target).cloned());
        let result = match entry {
            Some(o) => {
                self.store
                    .put_fallback(target.kind(), target.key(), &o.reason, o.since, o.auto)
                    .await
            }
            None => self
                .store
                .delete_fallback(target.kind(), target.key())
                .await
                .map(|_| ()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not persist a fallback override");
        }
    }

    fn emit(
        &self,
        kind: &str,
        agent: Option<&str>,
        cli: Option<&str>,
        metadata: serde_json::Value,
    ) {
        let mut ev = event(kind, agent, cli);
        ev.metadata = metadata;
        self.events.emit(ev);
    }

    pub async fn disable_cli(&self, cli: CliType, reason: &str) -> Result<()> {
        {
            let mut f = self.fallback.lock().expect("fallback state");
            f.disable_cli(cli, reason, self.now());
        }
        self.persist(&Target::Cli(cli)).await;
        self.emit(
            "FALLBACK_CLI_DISABLED",
            None,
            Some(cli.as_str()),
            json!({"reason": reason, "auto": false}),
        );
        self.update_gauges();
        Ok(())
    }

    pub async fn enable_cli(&self, cli: CliType) -> Result<bool> {
        let was = self
            .fallback
            .lock()
            .expect("fallback state")
            .enable_cli(cli);
        self.persist(&Target::Cli(cli)).await;
        if was {
            self.emit(
                "FALLBACK_CLI_ENABLED",
                None,
                Some(cli.as_str()),
                json!({"auto": false}),
            );
        }
        self.update_gauges();
        Ok(was)
    }

    /// The environment doctor's verdict for a CLI type: a failure disables it automatically, a
    /// later pass enables it again (an operator's manual entry is never touched).
    pub async fn doctor_verdict(&self, cli: CliType, passed: bool, reason: &str) {
        let changed = {
            let mut f = self.fallback.lock().expect("fallback state");
            if passed {
                f.auto_enable_cli(cli)
            } else {
                f.auto_disable_cli(cli, reason, self.now())
            }
        };
        if changed {
            self.persist(&Target::Cli(cli)).await;
            let kind = if passed {
                "FALLBACK_CLI_ENABLED"
            } else {
                "FALLBACK_CLI_DISABLED"
            };
            self.emit(
                kind,
                None,
                Some(cli.as_str()),
                json!({"reason": reason, "auto": true}),
            );
            self.update_gauges();
        }
    }

    pub async fn force_agent(&self, agent: &AgentId, reason: &str) -> Result<()> {
        {
            let mut f = self.fallback.lock().expect("fallback state");
            f.force_agent(agent, reason, self.now());
        }
        self.persist(&Target::Agent(agent.clone())).await;
        self.emit(
            "FALLBACK_AGENT_FORCED",
            Some(agent.as_str()),
            None,
            json!({"reason": reason, "auto": false}),
        );
        self.update_gauges();
        Ok(())
    }

    pub async fn clear_agent(&self, agent: &AgentId) -> Result<bool> {
        let cleared = self
            .fallback
            .lock()
            .expect("fallback state")
            .clear_agent(agent);
        self.persist(&Target::Agent(agent.clone())).await;
        if cleared {
            self.emit(
                "FALLBACK_AGENT_CLEARED",
                Some(agent.as_str()),
                None,
                json!({"auto": false}),
            );
        }
        self.update_gauges();
        Ok(cleared)
    }

    pub async fn clear_all(&self) -> Result<usize> {
        let n = self.fallback.lock().expect("fallback state").clear_all();
        self.store.clear_fallbacks().await?;
        self.emit("FALLBACK_CLEARED_ALL", None, None, json!({"cleared": n}));
        self.update_gauges();
        Ok(n)
    }

    /// The operator's reset of one breaker; returns its previous state.
    pub async fn reset(&self, scope: &Scope, tmux_available: bool) -> String {
        let st = self.breakers.reset(scope);
        let previous = st.transition.from.as_str().to_owned();
        self.publish(vec![st], tmux_available).await;
        previous
    }

    /// An agent that is gone leaves no breaker, parking or override behind.
    pub async fn forget_agent(&self, agent: &AgentId) {
        let scope = Scope::Agent(agent.clone());
        self.breakers.remove(&scope);
        self.parking.unpark(agent);
        let _ = self.store.delete_circuit(scope.kind(), scope.key()).await;
        let had = self
            .fallback
            .lock()
            .expect("fallback state")
            .clear_agent(agent);
        if had {
            self.persist(&Target::Agent(agent.clone())).await;
        }
        self.update_gauges();
    }

    /// The agent's override, for `GET /agents/{id}`.
    pub fn agent_override(&self, agent: &AgentId, cli: CliType) -> Option<serde_json::Value> {
        self.with_fallback(|f| {
            f.get(&Target::Agent(agent.clone()))
                .map(|o| json!({"kind": "agent", "reason": o.reason, "since": o.since, "auto": o.auto}))
                .or_else(|| {
                    f.get(&Target::Cli(cli)).map(
                        |o| json!({"kind": "cli", "reason": o.reason, "since": o.since, "auto": o.auto}),
                    )
                })
        })
    }
}

/// The operator's reset of an agent's breaker; returns its previous state.
pub(crate) async fn reset_agent_circuit(b: &crate::Broker, agent_id: &str) -> Result<String> {
    let id = crate::agents::existing(b, agent_id).await?;
    let tmux = b.inner.tmux_available();
    Ok(b.inner.resilience.reset(&Scope::Agent(id), tmux).await)
}

/// Forces an agent to run through tmux. Refused when it could not run there: a fallback that
/// refuses every request is worse than none.
pub(crate) async fn force_agent(b: &crate::Broker, agent_id: &str, reason: &str) -> Result<()> {
    let id = crate::agents::existing(b, agent_id).await?;
    if !b.inner.tmux_available() {
        return Err(ServiceError::InvalidState(format!(
            "cannot force agent {id} to tmux: tmux is not available on this host"
        )));
    }
    b.inner.resilience.force_agent(&id, reason).await
}

/// A seed for breaker jitter that differs between brokers, so a fleet does not retry in step.
fn rand_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ u64::from(std::process::id()).rotate_left(32)
}
