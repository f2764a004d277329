//! The registry of every agent's and CLI type's breaker, shared by the whole broker.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::rng::SplitMix64;
use super::{
    lock, Admission, Breaker, BreakerConfig, BreakerSnapshot, BreakerState, CliBreaker,
    ExecutionPermit, Transition,
};
use crate::clock::SharedClock;
use crate::{AgentId, CliType, CoreError, OutcomeClass};

/// Which breaker: an agent's, or a CLI type's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Agent(AgentId),
    Cli(CliType),
}

impl Scope {
    /// `"agent"` or `"cli"`: the `scope` field of the status endpoint and the stored row.
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Agent(_) => "agent",
            Scope::Cli(_) => "cli",
        }
    }

    /// The agent id or the CLI type's wire name.
    pub fn key(&self) -> &str {
        match self {
            Scope::Agent(id) => id.as_str(),
            Scope::Cli(cli) => cli.as_str(),
        }
    }

    /// The inverse of (`kind`, `key`), for rows read back from the store.
    pub fn parse(kind: &str, key: &str) -> Result<Self, ScopeError> {
        match kind {
            "agent" => Ok(Scope::Agent(AgentId::parse(key)?)),
            "cli" => Ok(Scope::Cli(key.parse()?)),
            other => Err(ScopeError::UnknownKind(other.chars().take(64).collect())),
        }
    }
}

/// Why a stored (`kind`, `key`) pair names no breaker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("unknown breaker scope {0:?}: expected agent or cli")]
    UnknownKind(String),
    #[error(transparent)]
    Key(#[from] CoreError),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind(), self.key())
    }
}

/// One entry of `GET /agents/circuits/status` (http-api.md).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitStatus {
    pub scope: &'static str,
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cli_type: Option<CliType>,
    pub state: BreakerState,
    pub consecutive_failures: u32,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub last_failure_reason: Option<String>,
    pub opened_at: Option<DateTime<Utc>>,
    pub retry_at: Option<DateTime<Utc>>,
}

impl CircuitStatus {
    pub fn new(scope: &Scope, view: &BreakerSnapshot) -> Self {
        let (agent_id, cli_type) = match scope {
            Scope::Agent(id) => (Some(id.clone()), None),
            Scope::Cli(cli) => (None, Some(*cli)),
        };
        CircuitStatus {
            scope: scope.kind(),
            key: scope.key().to_owned(),
            agent_id,
            cli_type,
            state: view.state,
            consecutive_failures: view.consecutive_failures,
            last_failure_at: view.last_failure_at,
            last_failure_reason: view.last_failure_reason.clone(),
            opened_at: view.opened_at,
            retry_at: view.retry_at,
        }
    }
}

/// A transition together with the breaker it happened to and that breaker's state afterwards
/// (the snapshot to persist).
#[derive(Debug, Clone, PartialEq)]
pub struct ScopedTransition {
    pub scope: Scope,
    pub transition: Transition,
    pub snapshot: BreakerSnapshot,
}

/// A call refused by a breaker: which one, in what state, and when to retry (`None` when no
/// time is known, i.e. forced open).
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitRejection {
    pub scope: Scope,
    pub state: BreakerState,
    pub retry_at: Option<DateTime<Utc>>,
}

/// What [`BreakerRegistry::admit`] decided, with the transitions the decision caused (an open
/// breaker whose wait elapsed became half open), even when the call was finally refused.
#[derive(Debug)]
pub struct Admittance {
    pub decision: Result<ExecutionPermit, CircuitRejection>,
    pub transitions: Vec<ScopedTransition>,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) agents: BTreeMap<AgentId, Breaker>,
    pub(super) clis: BTreeMap<CliType, CliBreaker>,
    rng: SplitMix64,
}

/// The breakers of every agent and CLI type, behind one mutex (each operation is a few field
/// updates; no IO ever happens under the lock). Cheap to clone.
///
/// Breakers are created closed on first use. Time comes from the clock; jitter comes from a
/// small seeded generator, so a test that fixes the seed gets the same waits every run.
#[derive(Debug, Clone)]
pub struct BreakerRegistry {
    inner: Arc<Mutex<Inner>>,
    clock: SharedClock,
    config: BreakerConfig,
}

impl BreakerRegistry {
    pub fn new(config: BreakerConfig, clock: SharedClock, jitter_seed: u64) -> Self {
        BreakerRegistry {
            inner: Arc::new(Mutex::new(Inner {
                agents: BTreeMap::new(),
                clis: BTreeMap::new(),
                rng: SplitMix64(jitter_seed),
            })),
            clock,
            config,
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Puts a persisted breaker back (at start-up, before any call).
    pub fn restore(&self, scope: &Scope, snapshot: &BreakerSnapshot) {
        let mut inner = self.lock();
        match scope {
            Scope::Agent(id) => {
                inner.agents.insert(
                    id.clone(),
                    Breaker::from_snapshot(self.config.clone(), snapshot),
                );
            }
            Scope::Cli(cli) => {
                inner.clis.insert(
                    *cli,
                    CliBreaker::from_snapshot(self.config.clone(), snapshot),
                );
            }
        }
    }

    /// Checks the CLI-scope breaker, then the agent's. Both must allow. The CLI's is asked first
    /// so that a CLI-wide outage is reported as such and does not disturb the agent breakers; if
    /// the agent's refuses after the CLI's handed out a probe, that probe slot is given back.
    pub fn admit(&self, agent: &AgentId, cli: CliType) -> Admittance {
        let now = self.clock.now();
        let mut inner = self.lock();
        let mut transitions = Vec::new();

        let config = &self.config;
        let cli_breaker = inner
            .clis
            .entry(cli)
            .or_insert_with(|| CliBreaker::new(config.clone()));
        let (cli_admission, t) = cli_breaker.breaker.admit(now);
        if let Some(t) = t {
            transitions.push(scoped(Scope::Cli(cli), t, &cli_breaker.breaker));
        }
        let cli_probe = match cli_admission {
            Admission::Allowed => None,
            Admission::Probe(ticket) => Some(ticket),
            Admission::Rejected { retry_at } => {
                let state = cli_breaker.breaker.view(now).state;
                return Admittance {
                    decision: Err(CircuitRejection {
                        scope: Scope::Cli(cli),
                        state,
                        retry_at,
                    }),
                    transitions,
                };
            }
        };

        let agent_breaker = inner
            .agents
            .entry(agent.clone())
            .or_insert_with(|| Breaker::new(config.clone()));
        let (agent_admission, t) = agent_breaker.admit(now);
        if let Some(t) = t {
            transitions.push(scoped(Scope::Agent(agent.clone()), t, agent_breaker));
        }
        let agent_probe = match agent_admission {
            Admission::Allowed => None,
            Admission::Probe(ticket) => Some(ticket),
            Admission::Rejected { retry_at } => {
                let state = agent_breaker.view(now).state;
                if let Some(ticket) = cli_probe {
                    if let Some(b) = inner.clis.get_mut(&cli) {
                        b.breaker.release(ticket);
                    }
                }
                return Admittance {
                    decision: Err(CircuitRejection {
                        scope: Scope::Agent(agent.clone()),
                        state,
                        retry_at,
                    }),
                    transitions,
                };
            }
        };
        drop(inner);

        Admittance {
            decision: Ok(ExecutionPermit {
                inner: Arc::clone(&self.inner),
                agent: agent.clone(),
                cli,
                agent_probe,
                cli_probe,
            }),
            transitions,
        }
    }

    /// Records how an admitted call ended, on the agent's breaker and (with the CLI-scope rule)
    /// the CLI's. Returns the transitions for the caller to persist and publish.
    pub fn finish(
        &self,
        mut permit: ExecutionPermit,
        outcome: OutcomeClass,
        reason: Option<&str>,
    ) -> Vec<ScopedTransition> {
        let now = self.clock.now();
        let agent_probe = permit.agent_probe.take();
        let cli_probe = permit.cli_probe.take();
        let mut inner = self.lock();
        let mut transitions = Vec::new();

        let sample = inner.rng.next_f64();
        // An agent deleted while its call ran has had its breaker removed; recording into a new
        // one would bring a deleted agent back into the status list.
        if let Some(agent_breaker) = inner.agents.get_mut(&permit.agent) {
            if let Some(t) = agent_breaker.record(outcome, reason, agent_probe, now, sample) {
                transitions.push(scoped(Scope::Agent(permit.agent.clone()), t, agent_breaker));
            }
        }

        let sample = inner.rng.next_f64();
        let config = &self.config;
        let cli_breaker = inner
            .clis
            .entry(permit.cli)
            .or_insert_with(|| CliBreaker::new(config.clone()));
        if let Some(t) = cli_breaker.record(&permit.agent, outcome, reason, cli_probe, now, sample)
        {
            transitions.push(scoped(Scope::Cli(permit.cli), t, &cli_breaker.breaker));
        }
        transitions
    }

    /// The operator's reset. Always answers with a transition (its `from` is the previous
    /// state); an unknown breaker was closed, and is created closed.
    pub fn reset(&self, scope: &Scope) -> ScopedTransition {
        let mut inner = self.lock();
        let config = &self.config;
        match scope {
            Scope::Agent(id) => {
                let b = inner
                    .agents
                    .entry(id.clone())
                    .or_insert_with(|| Breaker::new(config.clone()));
                let t = b.reset();
                scoped(scope.clone(), t, b)
            }
            Scope::Cli(cli) => {
                let c = inner
                    .clis
                    .entry(*cli)
                    .or_insert_with(|| CliBreaker::new(config.clone()));
                let t = c.reset();
                scoped(scope.clone(), t, &c.breaker)
            }
        }
    }

    /// Holds a breaker open until reset; `None` when it already was forced open.
    pub fn force_open(&self, scope: &Scope, reason: &str) -> Option<ScopedTransition> {
        let now = self.clock.now();
        self.with_breaker_opt(scope, |b| b.force_open(reason, now))
    }

    /// Turns a breaker off until reset; `None` when it already was disabled.
    pub fn disable(&self, scope: &Scope) -> Option<ScopedTransition> {
        self.with_breaker_opt(scope, Breaker::disable)
    }

    fn with_breaker_opt(
        &self,
        scope: &Scope,
        f: impl FnOnce(&mut Breaker) -> Option<Transition>,
    ) -> Option<ScopedTransition> {
        let mut inner = self.lock();
        let config = &self.config;
        let b = match scope {
            Scope::Agent(id) => inner
                .agents
                .entry(id.clone())
                .or_insert_with(|| Breaker::new(config.clone())),
            Scope::Cli(cli) => {
                &mut inner
                    .clis
                    .entry(*cli)
                    .or_insert_with(|| CliBreaker::new(config.clone()))
                    .breaker
            }
        };
        f(b).map(|t| scoped(scope.clone(), t, b))
    }

    /// Forgets a breaker (the agent was deleted). Returns whether it existed.
    pub fn remove(&self, scope: &Scope) -> bool {
        let mut inner = self.lock();
        match scope {
            Scope::Agent(id) => inner.agents.remove(id).is_some(),
            Scope::Cli(cli) => inner.clis.remove(cli).is_some(),
        }
    }

    /// The persistable state of one breaker, if it exists.
    pub fn snapshot(&self, scope: &Scope) -> Option<BreakerSnapshot> {
        let inner = self.lock();
        match scope {
            Scope::Agent(id) => inner.agents.get(id).map(Breaker::snapshot),
            Scope::Cli(cli) => inner.clis.get(cli).map(|c| c.breaker.snapshot()),
        }
    }

    /// Every breaker's persistable state (agents first, then CLI types, each sorted).
    pub fn snapshots(&self) -> Vec<(Scope, BreakerSnapshot)> {
        let inner = self.lock();
        let agents = inner
            .agents
            .iter()
            .map(|(id, b)| (Scope::Agent(id.clone()), b.snapshot()));
        let clis = inner
            .clis
            .iter()
            .map(|(cli, c)| (Scope::Cli(*cli), c.breaker.snapshot()));
        agents.chain(clis).collect()
    }

    /// The status endpoint's list, as callers arriving now would find the breakers (see
    /// [`Breaker::view`]); agents first, then CLI types, each sorted.
    pub fn status(&self) -> Vec<CircuitStatus> {
        let now = self.clock.now();
        let inner = self.lock();
        let agents = inner
            .agents
            .iter()
            .map(|(id, b)| CircuitStatus::new(&Scope::Agent(id.clone()), &b.view(now)));
        let clis = inner
            .clis
            .iter()
            .map(|(cli, c)| CircuitStatus::new(&Scope::Cli(*cli), &c.breaker.view(now)));
        agents.chain(clis).collect()
    }

    /// The state a caller arriving now would find (closed for an unknown breaker).
    pub fn state(&self, scope: &Scope) -> BreakerState {
        let now = self.clock.now();
        let inner = self.lock();
        let view = match scope {
            Scope::Agent(id) => inner.agents.get(id).map(|b| b.view(now)),
            Scope::Cli(cli) => inner.clis.get(cli).map(|c| c.breaker.view(now)),
        };
        view.map_or(BreakerState::Closed, |v| v.state)
    }
}

fn scoped(scope: Scope, transition: Transition, breaker: &Breaker) -> ScopedTransition {
    ScopedTransition {
        scope,
        transition,
        snapshot: breaker.snapshot(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::time::Duration;

    use super::*;
    use crate::breaker::test_support::*;
    use crate::breaker::*;
    use crate::clock::{Clock, TokioClock};

    // ---- the registry ----

    fn registry(clock: SharedClock) -> BreakerRegistry {
        BreakerRegistry::new(BreakerConfig::default(), clock, 42)
    }

    fn fail(
        reg: &BreakerRegistry,
        a: &AgentId,
        cli: CliType,
        class: OutcomeClass,
    ) -> Vec<ScopedTransition> {
        let permit = reg.admit(a, cli).decision.expect("admitted");
        reg.finish(permit, class, Some("failed"))
    }

    #[tokio::test(start_paused = true)]
    async fn registry_runs_the_whole_cycle_on_the_paused_clock() {
        let clock = Arc::new(TokioClock::new());
        let reg = registry(clock.clone());
        let a = agent("alpha");
        let cli = CliType::Codex;
        for _ in 0..4 {
            assert!(fail(&reg, &a, cli, OutcomeClass::Timeout).is_empty());
        }
        let ts = fail(&reg, &a, cli, OutcomeClass::Timeout);
        assert_eq!(ts.len(), 1);
        assert_eq!(ts[0].scope, Scope::Agent(a.clone()));
        assert_eq!(ts[0].transition.event_type(), "CIRCUIT_OPENED");
        assert_eq!(ts[0].snapshot.state, BreakerState::Open);
        // Timeouts are agent-specific: the CLI breaker did not count them.
        assert_eq!(
            reg.snapshot(&Scope::Cli(cli)).unwrap().consecutive_failures,
            0
        );

        let opened_at = clock.now();
        let rejected = reg.admit(&a, cli);
        let rejection = rejected.decision.unwrap_err();
        assert_eq!(rejection.scope, Scope::Agent(a.clone()));
        assert_eq!(rejection.state, BreakerState::Open);
        assert_eq!(rejection.retry_at, Some(opened_at + secs(60)));

        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(reg.state(&Scope::Agent(a.clone())), BreakerState::HalfOpen);
        let admitted = reg.admit(&a, cli);
        assert_eq!(admitted.transitions.len(), 1);
        assert_eq!(
            admitted.transitions[0].transition.event_type(),
            "CIRCUIT_HALF_OPEN"
        );
        let probe = admitted.decision.unwrap();
        assert!(probe.is_probe());
        assert!(reg.admit(&a, cli).decision.is_err());

        tokio::time::advance(Duration::from_secs(5)).await;
        let ts = reg.finish(probe, OutcomeClass::CliError, None);
        assert_eq!(ts[0].transition.event_type(), "CIRCUIT_RECOVERY_FAILED");
        let wait = ts[0].snapshot.retry_at.unwrap() - clock.now();
        assert!(wait >= secs(108) && wait <= secs(132), "{wait}");

        tokio::time::advance(wait.to_std().unwrap()).await;
        let probe = reg.admit(&a, cli).decision.unwrap();
        let ts = reg.finish(probe, OutcomeClass::Success, None);
        assert_eq!(ts.len(), 1);
        assert_eq!(ts[0].transition.event_type(), "CIRCUIT_RECOVERED");
        assert!(ts[0].transition.closed());
        assert!(reg.admit(&a, cli).decision.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn exactly_one_of_twenty_concurrent_callers_is_the_probe() {
        let clock = Arc::new(TokioClock::new());
        let reg = registry(clock);
        let a = agent("alpha");
        for _ in 0..5 {
            fail(&reg, &a, CliType::Gemini, OutcomeClass::CliError);
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        let start = Arc::new(tokio::sync::Barrier::new(20));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (reg, a, start) = (reg.clone(), a.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    let admitted = reg.admit(&a, CliType::Gemini);
                    // Hold the permit until everyone has asked, so no probe finishes early.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    admitted.decision.map(|p| p.is_probe())
                })
            })
            .collect();
        let mut probes = 0;
        let mut rejected = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(true) => probes += 1,
                Ok(false) => panic!("a plain admission while half open"),
                Err(r) => {
                    assert_eq!(r.state, BreakerState::HalfOpen);
                    rejected += 1;
                }
            }
        }
        assert_eq!((probes, rejected), (1, 19));
    }

    #[test]
    fn exactly_one_probe_across_threads() {
        let clock = Arc::new(Fixed(Mutex::new(t0())));
        let reg = registry(clock.clone());
        let a = agent("alpha");
        for _ in 0..5 {
            fail(&reg, &a, CliType::ClaudeCode, OutcomeClass::CliError);
        }
        *clock.0.lock().unwrap() = t0() + secs(60);
        let start = Arc::new(Barrier::new(20));
        let threads: Vec<_> = (0..20)
            .map(|_| {
                let (reg, a, start) = (reg.clone(), a.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    // The permit is returned, not dropped, so the probe stays in flight.
                    reg.admit(&a, CliType::ClaudeCode).decision
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        assert!(results.iter().flatten().all(ExecutionPermit::is_probe));
    }

    #[test]
    fn finishing_after_the_agent_was_removed_does_not_bring_it_back() {
        let clock = Arc::new(Fixed(Mutex::new(t0())));
        let reg = registry(clock);
        let a = agent("alpha");
        let permit = reg.admit(&a, CliType::Codex).decision.unwrap();
        assert!(reg.remove(&Scope::Agent(a.clone())));
        assert!(reg.finish(permit, OutcomeClass::Cancelled, None).is_empty());
        assert!(reg.snapshot(&Scope::Agent(a)).is_none());
        assert_eq!(reg.status().len(), 1, "only the CLI breaker is left");
    }

    #[test]
    fn absurd_waits_saturate_instead_of_panicking() {
        let config = BreakerConfig {
            open_for: Duration::MAX,
            max_open_for: Duration::MAX,
            probe_lease: Duration::MAX,
            busy_retry: Duration::MAX,
            ..BreakerConfig::default()
        };
        let mut b = Breaker::new(config);
        for _ in 0..5 {
            b.record(OutcomeClass::CliError, None, None, t0(), 0.5);
        }
        assert_eq!(b.snapshot().retry_at, Some(DateTime::<Utc>::MAX_UTC));
        assert!(b.admit(t0() + secs(86_400 * 365)).0.is_rejected());
        assert_eq!(
            jittered(Duration::MAX, 0.1, 0.99, Duration::MAX),
            Duration::MAX
        );
    }

    #[test]
    fn an_open_cli_breaker_rejects_without_touching_the_agent() {
        let clock = Arc::new(Fixed(Mutex::new(t0())));
        let reg = registry(clock.clone());
        let names = ["a1", "a2", "a3", "a4", "a5"];
        for name in names {
            fail(&reg, &agent(name), CliType::Codex, OutcomeClass::SpawnError);
        }
        let rejection = reg
            .admit(&agent("a6"), CliType::Codex)
            .decision
            .unwrap_err();
        assert_eq!(rejection.scope, Scope::Cli(CliType::Codex));
        assert_eq!(rejection.retry_at, Some(t0() + secs(60)));
        // The refused agent's breaker was never asked, so it does not even exist yet.
        assert!(reg.snapshot(&Scope::Agent(agent("a6"))).is_none());
        // Other CLI types are unaffected.
        assert!(reg.admit(&agent("a6"), CliType::Gemini).decision.is_ok());
    }

    #[test]
    fn an_agent_rejection_gives_the_cli_probe_back() {
        let clock = Arc::new(Fixed(Mutex::new(t0())));
        let reg = registry(clock.clone());
        let a = agent("alpha");
        // Open the agent's breaker and the CLI's at the same time.
        for _ in 0..5 {
            fail(&reg, &a, CliType::Codex, OutcomeClass::AuthError);
        }
        reg.force_open(&Scope::Agent(a.clone()), "operator")
            .unwrap();
        *clock.0.lock().unwrap() = t0() + secs(60);
        let admitted = reg.admit(&a, CliType::Codex);
        let rejection = admitted.decision.unwrap_err();
        assert_eq!(rejection.scope, Scope::Agent(a.clone()));
        assert_eq!(rejection.state, BreakerState::ForcedOpen);
        assert_eq!(rejection.retry_at, None);
        // The CLI breaker went half open, and its probe slot is free for another agent.
        assert_eq!(admitted.transitions.len(), 1);
        assert_eq!(admitted.transitions[0].scope, Scope::Cli(CliType::Codex));
        let other = reg.admit(&agent("beta"), CliType::Codex).decision.unwrap();
        assert!(other.is_probe());
    }

    #[test]
    fn registry_manual_operations_and_restore() {
        let clock = Arc::new(Fixed(Mutex::new(t0())));
        let reg = registry(clock.clone());
        let a = agent("alpha");
        let scope = Scope::Agent(a.clone());
        // A reset of an unknown breaker reports it was closed.
        let t = reg.reset(&scope);
        assert_eq!(
            (t.transition.from, t.transition.to),
            (BreakerState::Closed, BreakerState::Closed)
        );
        assert!(reg.disable(&scope).is_some());
        assert!(reg.disable(&scope).is_none());
        let forced = reg
            .force_open(&Scope::Cli(CliType::Gemini), "doctor")
            .unwrap();
        assert_eq!(forced.snapshot.manual_reason.as_deref(), Some("doctor"));
        let t = reg.reset(&Scope::Cli(CliType::Gemini));
        assert_eq!(t.transition.from, BreakerState::ForcedOpen);

        // Restore into a fresh registry and find the same states.
        for _ in 0..5 {
            fail(&reg, &agent("beta"), CliType::Codex, OutcomeClass::CliError);
        }
        let saved = reg.snapshots();
        let fresh = registry(clock.clone());
        for (scope, snapshot) in &saved {
            let (kind, key) = (scope.kind(), scope.key());
            fresh.restore(&Scope::parse(kind, key).unwrap(), snapshot);
        }
        assert_eq!(fresh.snapshots(), saved);
        assert_eq!(
            fresh.state(&Scope::Agent(agent("beta"))),
            BreakerState::Open
        );
        assert_eq!(fresh.state(&scope), BreakerState::Disabled);
        assert!(fresh.remove(&scope));
        assert!(!fresh.remove(&scope));
    }

    #[test]
    fn status_matches_the_http_shape() {
        let clock = Arc::new(Fixed(Mutex::new(t0())));
        let reg = registry(clock.clone());
        for _ in 0..5 {
            fail(
                &reg,
                &agent("alpha"),
                CliType::ClaudeCode,
                OutcomeClass::Timeout,
            );
        }
        let status = reg.status();
        assert_eq!(status.len(), 2);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json[0],
            serde_json::json!({
                "scope": "agent",
                "key": "alpha",
                "agentId": "alpha",
                "state": "open",
                "consecutiveFailures": 5,
                "lastFailureAt": "2025-01-31T12:00:00Z",
                "lastFailureReason": "failed",
                "openedAt": "2025-01-31T12:00:00Z",
                "retryAt": "2025-01-31T12:01:00Z",
            })
        );
        assert_eq!(
            json[1],
            serde_json::json!({
                "scope": "cli",
                "key": "claude-code",
                "cliType": "claude-code",
                "state": "closed",
                "consecutiveFailures": 0,
                "lastFailureAt": null,
                "lastFailureReason": null,
                "openedAt": null,
                "retryAt": null,
            })
        );
        // Once the wait has elapsed the status shows what the next caller meets.
        *clock.0.lock().unwrap() = t0() + secs(60);
        assert_eq!(reg.status()[0].state, BreakerState::HalfOpen);
        assert_eq!(reg.status()[0].retry_at, None);
    }

    #[test]
    fn scopes_round_trip_through_kind_and_key() {
        for scope in [
            Scope::Agent(agent("a.b-c_1")),
            Scope::Cli(CliType::FactoryDroid),
        ] {
            assert_eq!(Scope::parse(scope.kind(), scope.key()).unwrap(), scope);
        }
        assert!(matches!(
            Scope::parse("mode", "x"),
            Err(ScopeError::UnknownKind(_))
        ));
        assert!(matches!(
            Scope::parse("agent", "../x"),
            Err(ScopeError::Key(_))
        ));
        assert!(matches!(
            Scope::parse("cli", "claude"),
            Err(ScopeError::Key(_))
        ));
    }

    #[test]
    fn gauge_values_follow_the_reliability_notes() {
        let values: Vec<_> = [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
            BreakerState::ForcedOpen,
            BreakerState::Disabled,
        ]
        .iter()
        .map(|s| s.gauge_value())
        .collect();
        assert_eq!(values, vec![0, 1, 2, 3, 4]);
    }
}
