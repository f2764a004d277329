//! Circuit breakers: one per agent and one per CLI type (behavior.md, "Circuit breakers").
//!
//! The state machines here are pure: every method that depends on time takes the wall-clock
//! instant as an argument, and the random part of the back-off (the jitter) is a sample the caller
//! passes in. That keeps the rules testable with explicit times, and lets [`BreakerRegistry`]
//! drive them from a [`Clock`](crate::clock::Clock), so tests run under tokio's paused clock with
//! [`TokioClock`](crate::clock::TokioClock). Wall time rather than a monotonic instant is used
//! throughout because the state is persisted: a `retry_at` written before a restart must still
//! mean something after it.
//!
//! The rules, in short:
//!
//! * closed → open after `failure_threshold` consecutive failures (5); the first wait is
//!   `open_for` (60 s) exactly;
//! * open → half_open when the wait has elapsed, on the next admission; half_open admits exactly
//!   one probe at a time and rejects everyone else;
//! * probe success → closed (the back-off returns to `open_for`); probe failure → open again with
//!   the wait doubled, jittered and capped at `max_open_for` (10 min);
//! * `cancelled`, `rate_limited` and `interrupted` are neutral: they neither count nor reset, and a
//!   probe that ends that way frees the probe slot without deciding anything;
//! * `forced_open` rejects everything and `disabled` admits everything; both ignore outcomes and
//!   only a manual reset leaves them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;
use crate::{AgentId, CliType, CoreError, OutcomeClass};

/// Failure reasons are persisted and shown by the status endpoint; a CLI that prints a megabyte
/// of error must not turn into a megabyte in every snapshot.
const MAX_REASON_CHARS: usize = 500;

/// The state of one breaker, as the status endpoint and the persisted snapshot name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    Disabled,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::ForcedOpen => "forced_open",
            BreakerState::Disabled => "disabled",
        }
    }

    /// The value of the `broker_circuit_state` gauge (reliability-notes.md §1): 0 closed, 1 open,
    /// 2 half_open, 3 forced_open, 4 disabled.
    pub fn gauge_value(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
            BreakerState::ForcedOpen => 3,
            BreakerState::Disabled => 4,
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The numbers of a breaker. The defaults are behavior.md's.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive counted failures that open a closed breaker.
    pub failure_threshold: u32,
    /// The first wait in `open` before a probe is allowed.
    pub open_for: Duration,
    /// The ceiling of the doubling wait after failed probes.
    pub max_open_for: Duration,
    /// Relative jitter applied to every doubled wait: 0.1 spreads it over ±10 %.
    pub jitter: f64,
    /// The `retry_at` offered to callers rejected because a probe is already running. The probe
    /// may take minutes, so there is no honest estimate; this is a polite "try again soon".
    pub busy_retry: Duration,
    /// How long a probe may stay unreported before the slot is handed to someone else. It only
    /// matters when a caller lost its ticket (a bug or a panic); without it such a leak would keep
    /// the breaker half open and rejecting forever.
    pub probe_lease: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(60),
            max_open_for: Duration::from_secs(600),
            jitter: 0.1,
            busy_retry: Duration::from_secs(10),
            probe_lease: Duration::from_secs(30 * 60),
        }
    }
}

/// Proof that the holder is the one probe a half-open breaker admitted. Hand it back with the
/// outcome to [`Breaker::record`], or to [`Breaker::release`] when the call never ran.
///
/// It is deliberately neither `Clone` nor `Copy`: one probe, one report.
#[derive(Debug, PartialEq, Eq)]
pub struct ProbeTicket {
    generation: u64,
}

/// What [`Breaker::admit`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead (closed or disabled).
    Allowed,
    /// Go ahead as the half-open probe; report its outcome with the ticket.
    Probe(ProbeTicket),
    /// Do not call. `retry_at` is when trying again makes sense, `None` when nobody knows
    /// (forced open).
    Rejected { retry_at: Option<DateTime<Utc>> },
}

impl Admission {
    pub fn is_rejected(&self) -> bool {
        matches!(self, Admission::Rejected { .. })
    }
}

/// Why a breaker changed state; it decides the telemetry event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// Closed → open: the consecutive-failure threshold was reached.
    Failures,
    /// Open → half_open: the wait elapsed.
    Timer,
    /// Half_open → closed: the probe succeeded.
    ProbeSucceeded,
    /// Half_open → open: the probe failed; the wait doubled.
    ProbeFailed,
    /// Any → closed by an operator.
    Reset,
    /// Any → forced_open by an operator.
    ForcedOpen,
    /// Any → disabled by an operator.
    Disabled,
}

/// A state change, for the caller to persist and to publish as an event and a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    pub cause: Cause,
}

impl Transition {
    /// The telemetry event type (behavior.md, Telemetry events). The manual states have no name
    /// in the spec's list, which says "at least"; they get `CIRCUIT_FORCED_OPEN` and
    /// `CIRCUIT_DISABLED`.
    pub fn event_type(&self) -> &'static str {
        match self.cause {
            Cause::Failures => "CIRCUIT_OPENED",
            Cause::Timer => "CIRCUIT_HALF_OPEN",
            Cause::ProbeSucceeded => "CIRCUIT_RECOVERED",
            Cause::ProbeFailed => "CIRCUIT_RECOVERY_FAILED",
            Cause::Reset => "CIRCUIT_RESET",
            Cause::ForcedOpen => "CIRCUIT_FORCED_OPEN",
            Cause::Disabled => "CIRCUIT_DISABLED",
        }
    }

    /// Whether the breaker has just started refusing calls because of failures (the moment
    /// auto-fallback forces the agent to tmux).
    pub fn opened(&self) -> bool {
        self.from == BreakerState::Closed && self.to == BreakerState::Open
    }

    /// Whether the breaker has just become closed (the moment an auto fallback entry is cleared).
    pub fn closed(&self) -> bool {
        self.to == BreakerState::Closed && self.from != BreakerState::Closed
    }
}

/// Everything a breaker must remember across a restart, and what the status endpoint shows.
///
/// A probe in flight is deliberately not part of it: after a restart that probe's execution is
/// `interrupted`, so a restored half-open breaker admits a new probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerSnapshot {
    pub state: BreakerState,
    pub consecutive_failures: u32,
    #[serde(default)]
    pub last_failure_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_failure_reason: Option<String>,
    #[serde(default)]
    pub opened_at: Option<DateTime<Utc>>,
    /// When an open breaker admits its next probe; `None` in every other state.
    #[serde(default)]
    pub retry_at: Option<DateTime<Utc>>,
    /// The current back-off before jitter: `open_for` until a probe fails, then doubling.
    pub open_for_ms: u64,
    /// The operator's reason for `forced_open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual_reason: Option<String>,
}

/// How a finished call counts for a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Success,
    /// `n` counted failures; the CLI-scope rule can count two at once (see [`CliBreaker`]).
    Failure(u32),
    Neutral,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    generation: u64,
    started_at: DateTime<Utc>,
}

/// One circuit breaker. Not synchronised: wrap it in a mutex (as [`BreakerRegistry`] does) when
/// several tasks share it.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
    last_failure_at: Option<DateTime<Utc>>,
    last_failure_reason: Option<String>,
    opened_at: Option<DateTime<Utc>>,
    retry_at: Option<DateTime<Utc>>,
    open_for: Duration,
    manual_reason: Option<String>,
    /// Bumped for every probe handed out and every manual change, so a ticket names exactly one
    /// probe: a ticket from before a reset cannot close or reopen the breaker after it.
    generation: u64,
    probe: Option<InFlight>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        let open_for = config.open_for;
        Breaker {
            config,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            last_failure_at: None,
            last_failure_reason: None,
            opened_at: None,
            retry_at: None,
            open_for,
            manual_reason: None,
            generation: 0,
            probe: None,
        }
    }

    /// A breaker in the persisted state. The back-off is clamped to the configuration, which may
    /// have changed since the snapshot was written.
    pub fn from_snapshot(config: BreakerConfig, snapshot: &BreakerSnapshot) -> Self {
        let open_for = Duration::from_millis(snapshot.open_for_ms)
            .clamp(config.open_for, config.max_open_for.max(config.open_for));
        Breaker {
            state: snapshot.state,
            consecutive_failures: snapshot.consecutive_failures,
            last_failure_at: snapshot.last_failure_at,
            last_failure_reason: snapshot.last_failure_reason.clone(),
            opened_at: snapshot.opened_at,
            retry_at: snapshot.retry_at,
            open_for,
            manual_reason: snapshot.manual_reason.clone(),
            generation: 0,
            probe: None,
            config,
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The stored state. An `open` breaker whose wait has elapsed stays `open` here until the
    /// next [`admit`](Self::admit); [`view`](Self::view) shows what that call would meet.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Whether a probe is running (half open, ticket handed out and not yet reported).
    pub fn probe_in_flight(&self) -> bool {
        self.probe.is_some()
    }

    /// The state to persist.
    pub fn snapshot(&self) -> BreakerSnapshot {
        BreakerSnapshot {
            state: self.state,
            consecutive_failures: self.consecutive_failures,
            last_failure_at: self.last_failure_at,
            last_failure_reason: self.last_failure_reason.clone(),
            opened_at: self.opened_at,
            retry_at: self.retry_at,
            open_for_ms: u64::try_from(self.open_for.as_millis()).unwrap_or(u64::MAX),
            manual_reason: self.manual_reason.clone(),
        }
    }

    /// The state as a caller arriving at `now` would find it: an `open` breaker whose wait has
    /// elapsed shows as `half_open` (without `retry_at`). Nothing changes; this is for the status
    /// endpoint, which must not perform transitions (and so swallow their events).
    pub fn view(&self, now: DateTime<Utc>) -> BreakerSnapshot {
        let mut snapshot = self.snapshot();
        if self.open_is_due(now) {
            snapshot.state = BreakerState::HalfOpen;
            snapshot.retry_at = None;
        }
        snapshot
    }

    fn open_is_due(&self, now: DateTime<Utc>) -> bool {
        // An open breaker without a retry time (a hand-edited snapshot) is treated as due, so it
        // can never stay open forever.
        self.state == BreakerState::Open && self.retry_at.is_none_or(|t| now >= t)
    }

    /// Decides whether a call may start at `now`. Returns the transition it caused, if any (open
    /// → half_open), for the caller to persist and publish.
    pub fn admit(&mut self, now: DateTime<Utc>) -> (Admission, Option<Transition>) {
        match self.state {
            BreakerState::Closed | BreakerState::Disabled => (Admission::Allowed, None),
            BreakerState::ForcedOpen => (Admission::Rejected { retry_at: None }, None),
            BreakerState::Open if self.open_is_due(now) => {
                let transition = self.go(BreakerState::HalfOpen, Cause::Timer);
                self.retry_at = None;
                (Admission::Probe(self.issue_probe(now)), Some(transition))
            }
            BreakerState::Open => (
                Admission::Rejected {
                    retry_at: self.retry_at,
                },
                None,
            ),
            BreakerState::HalfOpen => match self.probe {
                Some(probe) if now < after(probe.started_at, self.config.probe_lease) => (
                    Admission::Rejected {
                        retry_at: Some(after(now, self.config.busy_retry)),
                    },
                    None,
                ),
                // No probe running, or the last one was lost: this caller is the probe.
                _ => (Admission::Probe(self.issue_probe(now)), None),
            },
        }
    }

    fn issue_probe(&mut self, now: DateTime<Utc>) -> ProbeTicket {
        self.generation += 1;
        self.probe = Some(InFlight {
            generation: self.generation,
            started_at: now,
        });
        ProbeTicket {
            generation: self.generation,
        }
    }

    /// Gives the probe slot back without an outcome, for a probe that never ran (another scope
    /// rejected the call, or the caller gave up before starting). A stale ticket does nothing.
    pub fn release(&mut self, ticket: ProbeTicket) {
        if self
            .probe
            .is_some_and(|p| p.generation == ticket.generation)
        {
            self.probe = None;
        }
    }

    /// Records how a call ended. `reason` describes a failure for the status endpoint (the
    /// outcome class is used when it is `None`); `probe` is the ticket if the call was the probe;
    /// `jitter_sample` in [0, 1) picks the jitter should a failed probe reopen the breaker.
    pub fn record(
        &mut self,
        outcome: OutcomeClass,
        reason: Option<&str>,
        probe: Option<ProbeTicket>,
        now: DateTime<Utc>,
        jitter_sample: f64,
    ) -> Option<Transition> {
        let verdict = if outcome == OutcomeClass::Success {
            Verdict::Success
        } else if outcome.is_breaker_failure() {
            Verdict::Failure(1)
        } else {
            Verdict::Neutral
        };
        let reason = reason.unwrap_or(outcome.as_str());
        self.apply(verdict, reason, probe, now, jitter_sample)
    }

    fn apply(
        &mut self,
        verdict: Verdict,
        reason: &str,
        probe: Option<ProbeTicket>,
        now: DateTime<Utc>,
        jitter_sample: f64,
    ) -> Option<Transition> {
        // Whatever the outcome, the probe has ended: its slot is free again.
        let is_probe = match probe {
            Some(ticket)
                if self
                    .probe
                    .is_some_and(|p| p.generation == ticket.generation) =>
            {
                self.probe = None;
                true
            }
            _ => false,
        };
        match self.state {
            // Manual states are "not operating": no counting, no transitions.
            BreakerState::ForcedOpen | BreakerState::Disabled => return None,
            BreakerState::Closed | BreakerState::Open | BreakerState::HalfOpen => {}
        }
        match verdict {
            Verdict::Neutral => None,
            Verdict::Success => match self.state {
                BreakerState::Closed => {
                    self.consecutive_failures = 0;
                    None
                }
                BreakerState::HalfOpen if is_probe => Some(self.close(Cause::ProbeSucceeded)),
                // A late success of a call admitted before the breaker opened proves little
                // about now; only the probe decides.
                _ => None,
            },
            Verdict::Failure(n) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(n);
                self.last_failure_at = Some(now);
                self.last_failure_reason = Some(truncate(reason));
                match self.state {
                    BreakerState::Closed
                        if self.consecutive_failures >= self.config.failure_threshold =>
                    {
                        // The first opening waits exactly `open_for`, as behavior.md states it;
                        // jitter only spreads the doubled waits after failed probes.
                        let transition = self.go(BreakerState::Open, Cause::Failures);
                        self.opened_at = Some(now);
                        self.retry_at = Some(after(now, self.open_for));
                        Some(transition)
                    }
                    BreakerState::HalfOpen if is_probe => {
                        let transition = self.go(BreakerState::Open, Cause::ProbeFailed);
                        self.open_for = self
                            .open_for
                            .saturating_mul(2)
                            .min(self.config.max_open_for);
                        let wait = jittered(
                            self.open_for,
                            self.config.jitter,
                            jitter_sample,
                            self.config.max_open_for,
                        );
                        self.opened_at = Some(now);
                        self.retry_at = Some(after(now, wait));
                        Some(transition)
                    }
                    _ => None,
                }
            }
        }
    }

    fn go(&mut self, to: BreakerState, cause: Cause) -> Transition {
        let from = self.state;
        self.state = to;
        Transition { from, to, cause }
    }

    fn close(&mut self, cause: Cause) -> Transition {
        let transition = self.go(BreakerState::Closed, cause);
        self.consecutive_failures = 0;
        self.opened_at = None;
        self.retry_at = None;
        self.open_for = self.config.open_for;
        self.manual_reason = None;
        self.probe = None;
        self.generation += 1;
        transition
    }

    /// Closes the breaker whatever its state (the operator's reset). Always returns the
    /// transition, even closed → closed, because the reset endpoint reports the previous state and
    /// a reset is an event of its own. The last failure is kept as history.
    pub fn reset(&mut self) -> Transition {
        self.close(Cause::Reset)
    }

    /// Holds the breaker open until a reset. `None` when it already was forced open (the reason
    /// is updated).
    pub fn force_open(&mut self, reason: &str, now: DateTime<Utc>) -> Option<Transition> {
        self.manual_reason = Some(truncate(reason));
        if self.state == BreakerState::ForcedOpen {
            return None;
        }
        let transition = self.go(BreakerState::ForcedOpen, Cause::ForcedOpen);
        self.opened_at = Some(now);
        self.retry_at = None;
        self.probe = None;
        self.generation += 1;
        Some(transition)
    }

    /// Turns the breaker off until a reset: every call is admitted and no outcome counts. `None`
    /// when it already was disabled.
    pub fn disable(&mut self) -> Option<Transition> {
        if self.state == BreakerState::Disabled {
            return None;
        }
        let transition = self.go(BreakerState::Disabled, Cause::Disabled);
        self.consecutive_failures = 0;
        self.opened_at = None;
        self.retry_at = None;
        self.manual_reason = None;
        self.probe = None;
        self.generation += 1;
        Some(transition)
    }
}

/// The doubled wait spread by ±`jitter` and capped at `max`. A symmetric spread keeps the
/// average wait on the doubling sequence; capping after the spread keeps the promise that no wait
/// exceeds `max` while waits at the cap still differ (they fall in `[max·(1−jitter), max]`).
pub fn jittered(base: Duration, jitter: f64, sample: f64, max: Duration) -> Duration {
    let sample = if sample.is_finite() {
        sample.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let factor = 1.0 + jitter * (2.0 * sample - 1.0);
    // `factor` is in [0, 2], so only an absurdly large base can fail to convert; it is capped.
    Duration::try_from_secs_f64(base.as_secs_f64() * factor)
        .unwrap_or(max)
        .min(max)
}

/// `now + wait`, saturating instead of panicking when a misconfigured wait would leave chrono's
/// range: such a breaker simply stays open "forever" until reset.
fn after(now: DateTime<Utc>, wait: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(wait)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn truncate(reason: &str) -> String {
    match reason.char_indices().nth(MAX_REASON_CHARS) {
        Some((end, _)) => format!("{}…", &reason[..end]),
        None => reason.to_owned(),
    }
}

/// The breaker of a CLI type, with the CLI-scope counting rule (behavior.md): only failures that
/// hit the whole CLI count, namely `auth_error`, `spawn_error`, and `cli_error` seen on at least
/// two different agents in a row.
///
/// The `cli_error` rule, precisely: a `cli_error` from agent A is remembered but not counted (one
/// agent's failure may be that agent's own problem). A `cli_error` from a different agent B then
/// confirms it and counts two (A's and B's). After that, each `cli_error` counts one if it comes
/// from another agent than the previous `cli_error`, and nothing if it is the same agent again.
/// A success from any agent of the CLI resets the counter and forgets the chain. `auth_error` and
/// `spawn_error` count one each and do not break the chain; `timeout`, `resource_limit` and the
/// neutral classes are agent-specific or neutral and change nothing here.
///
/// The chain is not persisted: after a restart it starts empty, which at worst delays the count
/// of one `cli_error`.
#[derive(Debug, Clone)]
pub struct CliBreaker {
    breaker: Breaker,
    last_cli_error_agent: Option<AgentId>,
    /// Whether the remembered `cli_error` has not been counted yet.
    pending: bool,
}

impl CliBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self::wrap(Breaker::new(config))
    }

    pub fn from_snapshot(config: BreakerConfig, snapshot: &BreakerSnapshot) -> Self {
        Self::wrap(Breaker::from_snapshot(config, snapshot))
    }

    fn wrap(breaker: Breaker) -> Self {
        CliBreaker {
            breaker,
            last_cli_error_agent: None,
            pending: false,
        }
    }

    /// The underlying breaker, for `admit`, `release`, `snapshot`, `view` and the manual states.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    pub fn breaker_mut(&mut self) -> &mut Breaker {
        &mut self.breaker
    }

    /// Records how a call of `agent` ended, with the CLI-scope rule. The other arguments are as
    /// for [`Breaker::record`].
    pub fn record(
        &mut self,
        agent: &AgentId,
        outcome: OutcomeClass,
        reason: Option<&str>,
        probe: Option<ProbeTicket>,
        now: DateTime<Utc>,
        jitter_sample: f64,
    ) -> Option<Transition> {
        let verdict = match outcome {
            OutcomeClass::Success => {
                self.forget_chain();
                Verdict::Success
            }
            OutcomeClass::AuthError | OutcomeClass::SpawnError => Verdict::Failure(1),
            OutcomeClass::CliError => match &self.last_cli_error_agent {
                Some(previous) if previous == agent => Verdict::Neutral,
                Some(_) => {
                    let n = if self.pending { 2 } else { 1 };
                    self.pending = false;
                    self.last_cli_error_agent = Some(agent.clone());
                    Verdict::Failure(n)
                }
                None => {
                    self.pending = true;
                    self.last_cli_error_agent = Some(agent.clone());
                    Verdict::Neutral
                }
            },
            _ => Verdict::Neutral,
        };
        let reason = reason.unwrap_or(outcome.as_str());
        self.breaker
            .apply(verdict, reason, probe, now, jitter_sample)
    }

    /// The operator's reset; the `cli_error` chain is forgotten too.
    pub fn reset(&mut self) -> Transition {
        self.forget_chain();
        self.breaker.reset()
    }

    fn forget_chain(&mut self) {
        self.last_cli_error_agent = None;
        self.pending = false;
    }
}

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
#[derive(Debug, Clone, PartialEq, Serialize)]
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
struct Inner {
    agents: BTreeMap<AgentId, Breaker>,
    clis: BTreeMap<CliType, CliBreaker>,
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

/// A poisoned mutex only means another thread panicked between two field updates of a breaker;
/// the state is still a valid breaker, and refusing every later call would be worse.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Permission to run one call of an agent, from [`BreakerRegistry::admit`]. Hand it to
/// [`BreakerRegistry::finish`] with the outcome. Dropping it unfinished (the call never ran, the
/// task panicked) gives back any probe slot it holds, so a lost permit cannot keep a breaker half
/// open and rejecting.
#[derive(Debug)]
pub struct ExecutionPermit {
    inner: Arc<Mutex<Inner>>,
    agent: AgentId,
    cli: CliType,
    agent_probe: Option<ProbeTicket>,
    cli_probe: Option<ProbeTicket>,
}

impl ExecutionPermit {
    pub fn agent(&self) -> &AgentId {
        &self.agent
    }

    pub fn cli(&self) -> CliType {
        self.cli
    }

    /// Whether this call is the probe of a half-open breaker (agent or CLI scope).
    pub fn is_probe(&self) -> bool {
        self.agent_probe.is_some() || self.cli_probe.is_some()
    }
}

impl Drop for ExecutionPermit {
    fn drop(&mut self) {
        if self.agent_probe.is_none() && self.cli_probe.is_none() {
            return;
        }
        let mut inner = lock(&self.inner);
        if let Some(ticket) = self.agent_probe.take() {
            if let Some(b) = inner.agents.get_mut(&self.agent) {
                b.release(ticket);
            }
        }
        if let Some(ticket) = self.cli_probe.take() {
            if let Some(c) = inner.clis.get_mut(&self.cli) {
                c.breaker.release(ticket);
            }
        }
    }
}

/// SplitMix64: a tiny, well-mixed generator. Jitter needs spread, not secrecy, and a seed makes
/// tests repeatable without a dependency.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1): the top 53 bits as the mantissa.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Agents parked after a `rate_limited` outcome (behavior.md, Outcome classes): until the
/// provider's reset time, calls answer 503 `RATE_LIMITED` with `Retry-After` instead of running.
/// Parking is not a breaker failure. Expired entries are dropped when looked at.
#[derive(Debug, Default)]
pub struct Parking {
    until: Mutex<HashMap<AgentId, DateTime<Utc>>>,
}

impl Parking {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parks the agent until `until`, replacing any earlier parking: the newest rate-limit answer
    /// carries the provider's current idea of the reset time.
    pub fn park(&self, agent: &AgentId, until: DateTime<Utc>) {
        lock(&self.until).insert(agent.clone(), until);
    }

    /// When the agent may run again, or `None` if it is not parked at `now`.
    pub fn parked_until(&self, agent: &AgentId, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut map = lock(&self.until);
        match map.get(agent) {
            Some(&until) if until > now => Some(until),
            Some(_) => {
                map.remove(agent);
                None
            }
            None => None,
        }
    }

    /// Lifts the parking early (agent deleted, operator reset). Returns whether it was parked.
    pub fn unpark(&self, agent: &AgentId) -> bool {
        lock(&self.until).remove(agent).is_some()
    }

    /// Every agent parked at `now`, sorted by id; expired entries are dropped.
    pub fn parked(&self, now: DateTime<Utc>) -> Vec<(AgentId, DateTime<Utc>)> {
        let mut map = lock(&self.until);
        map.retain(|_, until| *until > now);
        let mut list: Vec<_> = map.iter().map(|(a, u)| (a.clone(), *u)).collect();
        list.sort();
        list
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use chrono::TimeZone;

    use super::*;
    use crate::clock::{Clock, TokioClock};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 31, 12, 0, 0).unwrap()
    }

    fn secs(s: i64) -> chrono::Duration {
        chrono::Duration::seconds(s)
    }

    fn agent(s: &str) -> AgentId {
        AgentId::parse(s).unwrap()
    }

    /// A breaker opened at `t0()` by five failures.
    fn opened() -> Breaker {
        let mut b = Breaker::new(BreakerConfig::default());
        for _ in 0..5 {
            b.record(OutcomeClass::CliError, Some("exit 1"), None, t0(), 0.5);
        }
        assert_eq!(b.state(), BreakerState::Open);
        b
    }

    /// A breaker gone half open at `t0() + 60 s`, with the probe's ticket.
    fn half_open() -> (Breaker, ProbeTicket) {
        let mut b = opened();
        let (admission, _) = b.admit(t0() + secs(60));
        let Admission::Probe(ticket) = admission else {
            panic!("expected a probe, got {admission:?}");
        };
        (b, ticket)
    }

    #[test]
    fn closed_opens_after_five_consecutive_failures() {
        let mut b = Breaker::new(BreakerConfig::default());
        for i in 1..=4 {
            assert_eq!(b.record(OutcomeClass::Timeout, None, None, t0(), 0.5), None);
            assert_eq!(b.consecutive_failures(), i);
            assert_eq!(b.admit(t0()).0, Admission::Allowed);
        }
        let t = b
            .record(OutcomeClass::SpawnError, Some("no binary"), None, t0(), 0.5)
            .unwrap();
        assert_eq!(t.from, BreakerState::Closed);
        assert_eq!(t.to, BreakerState::Open);
        assert_eq!(t.event_type(), "CIRCUIT_OPENED");
        assert!(t.opened() && !t.closed());
        let s = b.snapshot();
        assert_eq!(s.consecutive_failures, 5);
        assert_eq!(s.opened_at, Some(t0()));
        // The first wait is exactly 60 s, without jitter.
        assert_eq!(s.retry_at, Some(t0() + secs(60)));
        assert_eq!(s.open_for_ms, 60_000);
        assert_eq!(s.last_failure_at, Some(t0()));
        assert_eq!(s.last_failure_reason.as_deref(), Some("no binary"));
    }

    #[test]
    fn success_resets_the_consecutive_count() {
        let mut b = Breaker::new(BreakerConfig::default());
        for _ in 0..4 {
            b.record(OutcomeClass::CliError, None, None, t0(), 0.5);
        }
        assert_eq!(b.record(OutcomeClass::Success, None, None, t0(), 0.5), None);
        assert_eq!(b.consecutive_failures(), 0);
        for _ in 0..4 {
            b.record(OutcomeClass::CliError, None, None, t0(), 0.5);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        // The reason defaults to the outcome class.
        assert_eq!(
            b.snapshot().last_failure_reason.as_deref(),
            Some("cli_error")
        );
    }

    #[test]
    fn every_failure_class_counts_and_neutral_classes_do_not() {
        for class in OutcomeClass::ALL {
            let mut b = Breaker::new(BreakerConfig::default());
            b.record(*class, None, None, t0(), 0.5);
            let expected = u32::from(class.is_breaker_failure());
            assert_eq!(b.consecutive_failures(), expected, "{class}");
        }
        // Neutral classes do not reset the count either.
        let mut b = Breaker::new(BreakerConfig::default());
        for _ in 0..4 {
            b.record(OutcomeClass::AuthError, None, None, t0(), 0.5);
        }
        for class in [
            OutcomeClass::Cancelled,
            OutcomeClass::RateLimited,
            OutcomeClass::Interrupted,
        ] {
            assert_eq!(b.record(class, None, None, t0(), 0.5), None);
            assert_eq!(b.consecutive_failures(), 4);
        }
        assert!(b
            .record(OutcomeClass::ResourceLimit, None, None, t0(), 0.5)
            .is_some());
    }

    #[test]
    fn open_rejects_until_the_wait_elapses_then_admits_one_probe() {
        let mut b = opened();
        let (admission, t) = b.admit(t0() + secs(59));
        assert_eq!(
            admission,
            Admission::Rejected {
                retry_at: Some(t0() + secs(60))
            }
        );
        assert_eq!(t, None);
        // The status view already shows half_open once the wait has elapsed, without changing.
        assert_eq!(b.view(t0() + secs(60)).state, BreakerState::HalfOpen);
        assert_eq!(b.view(t0() + secs(60)).retry_at, None);
        assert_eq!(b.state(), BreakerState::Open);

        let (admission, t) = b.admit(t0() + secs(60));
        assert!(matches!(admission, Admission::Probe(_)));
        let t = t.unwrap();
        assert_eq!(
            (t.from, t.to, t.event_type()),
            (
                BreakerState::Open,
                BreakerState::HalfOpen,
                "CIRCUIT_HALF_OPEN"
            )
        );
        assert!(b.probe_in_flight());
        // Everyone else is refused while the probe runs, with a short retry.
        let (admission, t) = b.admit(t0() + secs(61));
        assert_eq!(
            admission,
            Admission::Rejected {
                retry_at: Some(t0() + secs(71))
            }
        );
        assert_eq!(t, None);
    }

    #[test]
    fn probe_success_closes_and_resets_the_backoff() {
        let (mut b, ticket) = half_open();
        let t = b
            .record(
                OutcomeClass::Success,
                None,
                Some(ticket),
                t0() + secs(70),
                0.5,
            )
            .unwrap();
        assert_eq!(
            (t.from, t.to, t.event_type()),
            (
                BreakerState::HalfOpen,
                BreakerState::Closed,
                "CIRCUIT_RECOVERED"
            )
        );
        assert!(t.closed());
        let s = b.snapshot();
        assert_eq!(s.consecutive_failures, 0);
        assert_eq!((s.opened_at, s.retry_at), (None, None));
        assert_eq!(s.open_for_ms, 60_000);
        // History of the last failure is kept.
        assert_eq!(s.last_failure_reason.as_deref(), Some("exit 1"));
        assert_eq!(b.admit(t0() + secs(70)).0, Admission::Allowed);
    }

    #[test]
    fn probe_failure_reopens_with_a_doubled_wait() {
        let (mut b, ticket) = half_open();
        let now = t0() + secs(100);
        let t = b
            .record(OutcomeClass::Timeout, None, Some(ticket), now, 0.5)
            .unwrap();
        assert_eq!(
            (t.from, t.to, t.event_type()),
            (
                BreakerState::HalfOpen,
                BreakerState::Open,
                "CIRCUIT_RECOVERY_FAILED"
            )
        );
        assert!(!t.opened(), "still open: auto-fallback is already in place");
        let s = b.snapshot();
        assert_eq!(s.open_for_ms, 120_000);
        // A sample of 0.5 is the middle of the jitter range: exactly the doubled wait.
        assert_eq!(s.retry_at, Some(now + secs(120)));
        assert_eq!(s.opened_at, Some(now));
        assert_eq!(s.consecutive_failures, 6);
        assert!(!b.probe_in_flight());
        assert!(b.admit(now + secs(119)).0.is_rejected());
        assert!(matches!(b.admit(now + secs(120)).0, Admission::Probe(_)));
    }

    #[test]
    fn the_wait_doubles_up_to_ten_minutes() {
        let mut b = opened();
        let mut now = t0() + secs(60);
        let mut waits = Vec::new();
        for _ in 0..6 {
            let Admission::Probe(ticket) = b.admit(now).0 else {
                panic!("expected a probe");
            };
            b.record(OutcomeClass::CliError, None, Some(ticket), now, 0.5);
            let s = b.snapshot();
            waits.push(s.open_for_ms / 1000);
            let retry_at = s.retry_at.unwrap();
            assert!(retry_at - now <= secs(600));
            now = retry_at;
        }
        assert_eq!(waits, vec![120, 240, 480, 600, 600, 600]);
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_under_the_cap() {
        let base = Duration::from_secs(120);
        let max = Duration::from_secs(600);
        assert_eq!(jittered(base, 0.1, 0.0, max), Duration::from_secs(108));
        assert_eq!(jittered(base, 0.1, 0.5, max), Duration::from_secs(120));
        assert!(jittered(base, 0.1, 0.999_999, max) < Duration::from_secs(132));
        // Out-of-range samples are clamped, never extrapolated.
        assert_eq!(jittered(base, 0.1, -3.0, max), Duration::from_secs(108));
        assert_eq!(jittered(base, 0.1, 7.0, max), Duration::from_secs(132));
        assert_eq!(jittered(base, 0.1, f64::NAN, max), base);
        // At the cap the spread only goes down, so waits still differ and never exceed it.
        assert_eq!(jittered(max, 0.1, 0.0, max), Duration::from_secs(540));
        assert_eq!(jittered(max, 0.1, 0.99, max), max);
        let mut rng = SplitMix64(7);
        for _ in 0..10_000 {
            let s = rng.next_f64();
            assert!((0.0..1.0).contains(&s));
            let w = jittered(base, 0.1, s, max);
            assert!(w >= Duration::from_secs(108) && w < Duration::from_secs(132));
        }
    }

    #[test]
    fn a_neutral_probe_frees_the_slot_without_deciding() {
        for class in [
            OutcomeClass::Cancelled,
            OutcomeClass::RateLimited,
            OutcomeClass::Interrupted,
        ] {
            let (mut b, ticket) = half_open();
            assert_eq!(
                b.record(class, None, Some(ticket), t0() + secs(61), 0.5),
                None
            );
            assert_eq!(b.state(), BreakerState::HalfOpen, "{class}");
            assert!(!b.probe_in_flight());
            assert!(matches!(b.admit(t0() + secs(62)).0, Admission::Probe(_)));
        }
        // `release` does the same for a probe that never ran.
        let (mut b, ticket) = half_open();
        b.release(ticket);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(matches!(b.admit(t0() + secs(62)).0, Admission::Probe(_)));
    }

    #[test]
    fn only_the_probe_decides_while_open_or_half_open() {
        let (mut b, ticket) = half_open();
        // Late results of calls admitted before the breaker opened.
        assert_eq!(
            b.record(OutcomeClass::Success, None, None, t0() + secs(61), 0.5),
            None
        );
        assert_eq!(
            b.record(OutcomeClass::CliError, None, None, t0() + secs(61), 0.5),
            None
        );
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.probe_in_flight());
        // The late failure is still history.
        assert_eq!(b.consecutive_failures(), 6);
        assert!(b
            .record(
                OutcomeClass::Success,
                None,
                Some(ticket),
                t0() + secs(62),
                0.5
            )
            .is_some());

        let mut b = opened();
        assert_eq!(
            b.record(OutcomeClass::Success, None, None, t0() + secs(1), 0.5),
            None
        );
        assert_eq!(
            b.record(OutcomeClass::Timeout, None, None, t0() + secs(1), 0.5),
            None
        );
        assert_eq!(b.snapshot().retry_at, Some(t0() + secs(60)));
    }

    #[test]
    fn a_ticket_from_before_a_reset_is_not_a_probe() {
        let (mut b, ticket) = half_open();
        b.reset();
        // After the reset the old probe's failure is an ordinary failure of a closed breaker.
        assert_eq!(
            b.record(
                OutcomeClass::CliError,
                None,
                Some(ticket),
                t0() + secs(61),
                0.5
            ),
            None
        );
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 1);
    }

    #[test]
    fn a_lost_probe_is_replaced_after_the_lease() {
        let (mut b, _lost) = half_open();
        let lease = chrono::Duration::from_std(b.config().probe_lease).unwrap();
        let start = t0() + secs(60);
        assert!(b.admit(start + lease - secs(1)).0.is_rejected());
        let (admission, t) = b.admit(start + lease);
        assert!(matches!(admission, Admission::Probe(_)));
        assert_eq!(t, None);
    }

    #[test]
    fn forced_open_rejects_everything_until_reset() {
        let mut b = Breaker::new(BreakerConfig::default());
        let t = b.force_open("maintenance", t0()).unwrap();
        assert_eq!(
            (t.from, t.to, t.event_type()),
            (
                BreakerState::Closed,
                BreakerState::ForcedOpen,
                "CIRCUIT_FORCED_OPEN"
            )
        );
        assert_eq!(b.force_open("still", t0()), None);
        assert_eq!(b.snapshot().manual_reason.as_deref(), Some("still"));
        for later in [0, 60, 3600, 86_400] {
            assert_eq!(
                b.admit(t0() + secs(later)).0,
                Admission::Rejected { retry_at: None }
            );
        }
        // Outcomes of calls admitted before do nothing.
        assert_eq!(b.record(OutcomeClass::Success, None, None, t0(), 0.5), None);
        assert_eq!(b.state(), BreakerState::ForcedOpen);
        let t = b.reset();
        assert_eq!(
            (t.from, t.to, t.event_type()),
            (
                BreakerState::ForcedOpen,
                BreakerState::Closed,
                "CIRCUIT_RESET"
            )
        );
        assert_eq!(b.snapshot().manual_reason, None);
        assert_eq!(b.admit(t0()).0, Admission::Allowed);
    }

    #[test]
    fn disabled_admits_everything_and_counts_nothing() {
        let mut b = opened();
        let t = b.disable().unwrap();
        assert_eq!(
            (t.from, t.to, t.event_type()),
            (
                BreakerState::Open,
                BreakerState::Disabled,
                "CIRCUIT_DISABLED"
            )
        );
        assert_eq!(b.disable(), None);
        for _ in 0..20 {
            assert_eq!(b.admit(t0()).0, Admission::Allowed);
            assert_eq!(
                b.record(OutcomeClass::CliError, None, None, t0(), 0.5),
                None
            );
        }
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.reset().from, BreakerState::Disabled);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn reset_closes_from_every_state() {
        let (half, _ticket) = half_open();
        let mut forced = Breaker::new(BreakerConfig::default());
        forced.force_open("x", t0());
        let mut disabled = Breaker::new(BreakerConfig::default());
        disabled.disable();
        for (mut b, from) in [
            (Breaker::new(BreakerConfig::default()), BreakerState::Closed),
            (opened(), BreakerState::Open),
            (half, BreakerState::HalfOpen),
            (forced, BreakerState::ForcedOpen),
            (disabled, BreakerState::Disabled),
        ] {
            let t = b.reset();
            assert_eq!(t.from, from);
            assert_eq!(t.to, BreakerState::Closed);
            assert_eq!(t.event_type(), "CIRCUIT_RESET");
            let s = b.snapshot();
            assert_eq!(s.state, BreakerState::Closed);
            assert_eq!((s.consecutive_failures, s.retry_at), (0, None));
            assert_eq!(s.open_for_ms, 60_000);
            assert!(!b.probe_in_flight());
        }
    }

    #[test]
    fn snapshots_round_trip_through_json() {
        let (mut b, ticket) = half_open();
        b.record(
            OutcomeClass::CliError,
            Some("boom"),
            Some(ticket),
            t0() + secs(70),
            0.25,
        );
        let snapshot = b.snapshot();
        let json = serde_json::to_value(&snapshot).unwrap();
        assert_eq!(json["state"], "open");
        assert_eq!(json["openForMs"], 120_000);
        assert_eq!(json["consecutiveFailures"], 6);
        assert!(json.get("manualReason").is_none());
        let back: BreakerSnapshot = serde_json::from_value(json).unwrap();
        assert_eq!(back, snapshot);

        // A restored breaker behaves as the original would.
        let mut restored = Breaker::from_snapshot(BreakerConfig::default(), &back);
        assert_eq!(restored.snapshot(), snapshot);
        let retry_at = snapshot.retry_at.unwrap();
        assert!(restored.admit(retry_at - secs(1)).0.is_rejected());
        let Admission::Probe(ticket) = restored.admit(retry_at).0 else {
            panic!("expected a probe");
        };
        restored.record(OutcomeClass::CliError, None, Some(ticket), retry_at, 0.5);
        assert_eq!(restored.snapshot().open_for_ms, 240_000);

        // A half-open snapshot (written while a probe ran) admits a new probe after a restart.
        let (half, _lost) = half_open();
        let mut restored = Breaker::from_snapshot(BreakerConfig::default(), &half.snapshot());
        assert!(!restored.probe_in_flight());
        assert!(matches!(
            restored.admit(t0() + secs(61)).0,
            Admission::Probe(_)
        ));

        // Every state survives, and the minimal form (optional fields absent) is accepted.
        for state in ["closed", "open", "half_open", "forced_open", "disabled"] {
            let s: BreakerSnapshot = serde_json::from_value(serde_json::json!({
                "state": state, "consecutiveFailures": 0, "openForMs": 60000
            }))
            .unwrap();
            assert_eq!(s.state.as_str(), state);
            assert_eq!(serde_json::to_value(s.state).unwrap(), state);
        }
        // A back-off beyond the configured cap is clamped on restore.
        let mut big = snapshot.clone();
        big.open_for_ms = 86_400_000;
        let b = Breaker::from_snapshot(BreakerConfig::default(), &big);
        assert_eq!(b.snapshot().open_for_ms, 600_000);
    }

    #[test]
    fn failure_reasons_are_bounded() {
        let mut b = Breaker::new(BreakerConfig::default());
        let huge = "é".repeat(10_000);
        b.record(OutcomeClass::CliError, Some(&huge), None, t0(), 0.5);
        let reason = b.snapshot().last_failure_reason.unwrap();
        assert_eq!(reason.chars().count(), MAX_REASON_CHARS + 1);
    }

    // ---- the CLI-scope rule ----

    fn cli_record(c: &mut CliBreaker, agent_name: &str, class: OutcomeClass) -> Option<Transition> {
        c.record(&agent(agent_name), class, None, None, t0(), 0.5)
    }

    fn cli_count(c: &CliBreaker) -> u32 {
        c.breaker().consecutive_failures()
    }

    #[test]
    fn cli_scope_counts_auth_and_spawn_errors() {
        let mut c = CliBreaker::new(BreakerConfig::default());
        for i in 1..=4 {
            let class = if i % 2 == 0 {
                OutcomeClass::AuthError
            } else {
                OutcomeClass::SpawnError
            };
            assert_eq!(cli_record(&mut c, "a", class), None);
            assert_eq!(cli_count(&c), i);
        }
        let t = cli_record(&mut c, "a", OutcomeClass::AuthError).unwrap();
        assert_eq!(t.to, BreakerState::Open);
    }

    #[test]
    fn cli_scope_ignores_one_agents_cli_errors() {
        let mut c = CliBreaker::new(BreakerConfig::default());
        for _ in 0..20 {
            assert_eq!(cli_record(&mut c, "a", OutcomeClass::CliError), None);
        }
        assert_eq!(cli_count(&c), 0);
        assert_eq!(c.breaker().state(), BreakerState::Closed);
    }

    #[test]
    fn cli_scope_counts_cli_errors_seen_on_two_agents_in_a_row() {
        let mut c = CliBreaker::new(BreakerConfig::default());
        cli_record(&mut c, "a", OutcomeClass::CliError);
        assert_eq!(cli_count(&c), 0);
        // B confirms A's error: both count.
        cli_record(&mut c, "b", OutcomeClass::CliError);
        assert_eq!(cli_count(&c), 2);
        // The same agent twice in a row does not count twice.
        cli_record(&mut c, "b", OutcomeClass::CliError);
        assert_eq!(cli_count(&c), 2);
        cli_record(&mut c, "a", OutcomeClass::CliError);
        assert_eq!(cli_count(&c), 3);
        // Agent-specific failures and neutral outcomes neither count nor break the chain.
        for class in [
            OutcomeClass::Timeout,
            OutcomeClass::ResourceLimit,
            OutcomeClass::Cancelled,
            OutcomeClass::RateLimited,
            OutcomeClass::Interrupted,
        ] {
            assert_eq!(cli_record(&mut c, "c", class), None);
        }
        assert_eq!(cli_count(&c), 3);
        cli_record(&mut c, "c", OutcomeClass::CliError);
        assert_eq!(cli_count(&c), 4);
        let t = cli_record(&mut c, "a", OutcomeClass::CliError).unwrap();
        assert_eq!(t.event_type(), "CIRCUIT_OPENED");
    }

    #[test]
    fn cli_scope_success_from_any_agent_resets_count_and_chain() {
        let mut c = CliBreaker::new(BreakerConfig::default());
        cli_record(&mut c, "a", OutcomeClass::CliError);
        cli_record(&mut c, "b", OutcomeClass::CliError);
        cli_record(&mut c, "c", OutcomeClass::SpawnError);
        assert_eq!(cli_count(&c), 3);
        cli_record(&mut c, "z", OutcomeClass::Success);
        assert_eq!(cli_count(&c), 0);
        // The chain is forgotten: B's error after the success is a new first one.
        cli_record(&mut c, "b", OutcomeClass::CliError);
        assert_eq!(cli_count(&c), 0);
        // So is it after a reset.
        c.reset();
        cli_record(&mut c, "a", OutcomeClass::CliError);
        assert_eq!(cli_count(&c), 0);
    }

    #[test]
    fn cli_scope_probe_that_is_one_agents_cli_error_only_frees_the_slot() {
        let mut c = CliBreaker::new(BreakerConfig::default());
        for _ in 0..5 {
            cli_record(&mut c, "a", OutcomeClass::SpawnError);
        }
        let Admission::Probe(ticket) = c.breaker_mut().admit(t0() + secs(60)).0 else {
            panic!("expected a probe");
        };
        let now = t0() + secs(61);
        // One agent's cli_error is not evidence against the CLI: no decision, slot freed.
        assert_eq!(
            c.record(
                &agent("a"),
                OutcomeClass::CliError,
                None,
                Some(ticket),
                now,
                0.5
            ),
            None
        );
        assert_eq!(c.breaker().state(), BreakerState::HalfOpen);
        let Admission::Probe(ticket) = c.breaker_mut().admit(now).0 else {
            panic!("expected a probe");
        };
        // A second agent's cli_error confirms it: the probe failed.
        let t = c
            .record(
                &agent("b"),
                OutcomeClass::CliError,
                None,
                Some(ticket),
                now,
                0.5,
            )
            .unwrap();
        assert_eq!(t.event_type(), "CIRCUIT_RECOVERY_FAILED");
    }

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
    fn a_dropped_permit_gives_the_probe_back() {
        let clock = Arc::new(Fixed(Mutex::new(t0())));
        let reg = registry(clock.clone());
        let a = agent("alpha");
        for _ in 0..5 {
            fail(&reg, &a, CliType::Codex, OutcomeClass::CliError);
        }
        *clock.0.lock().unwrap() = t0() + secs(60);
        let probe = reg.admit(&a, CliType::Codex).decision.unwrap();
        assert!(reg.admit(&a, CliType::Codex).decision.is_err());
        drop(probe);
        let again = reg.admit(&a, CliType::Codex).decision.unwrap();
        assert!(again.is_probe());
        assert_eq!(reg.state(&Scope::Agent(a)), BreakerState::HalfOpen);
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

    // ---- parking ----

    #[test]
    fn parking_expires_and_drops_old_entries() {
        let parking = Parking::new();
        let (a, b) = (agent("a"), agent("b"));
        assert_eq!(parking.parked_until(&a, t0()), None);
        parking.park(&a, t0() + secs(30));
        parking.park(&b, t0() + secs(90));
        assert_eq!(parking.parked_until(&a, t0()), Some(t0() + secs(30)));
        assert_eq!(
            parking.parked_until(&a, t0() + secs(29)),
            Some(t0() + secs(30))
        );
        // At the reset time the agent may run again, and the entry is gone.
        assert_eq!(parking.parked_until(&a, t0() + secs(30)), None);
        assert_eq!(parking.parked(t0()), vec![(b.clone(), t0() + secs(90))]);
        // A newer rate-limit answer replaces the time, earlier or later.
        parking.park(&b, t0() + secs(40));
        assert_eq!(parking.parked_until(&b, t0()), Some(t0() + secs(40)));
        assert!(parking.unpark(&b));
        assert!(!parking.unpark(&b));
        parking.park(&a, t0() + secs(10));
        assert!(parking.parked(t0() + secs(10)).is_empty());
        assert_eq!(parking.parked_until(&a, t0()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn parking_follows_the_paused_clock() {
        let clock = TokioClock::new();
        let parking = Parking::new();
        let a = agent("a");
        parking.park(&a, clock.now() + secs(3600));
        tokio::time::advance(Duration::from_secs(3599)).await;
        assert!(parking.parked_until(&a, clock.now()).is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(parking.parked_until(&a, clock.now()).is_none());
    }

    /// A clock the test sets by hand, for tests on plain threads.
    #[derive(Debug)]
    struct Fixed(Mutex<DateTime<Utc>>);

    impl Clock for Fixed {
        fn now(&self) -> DateTime<Utc> {
            *self.0.lock().unwrap()
        }
    }
}
