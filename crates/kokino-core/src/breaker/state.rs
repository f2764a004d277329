//! The state machine of one breaker: closed, open, half open, forced open, disabled.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::OutcomeClass;

/// Failure reasons are persisted and shown by the status endpoint; a CLI that prints a megabyte
/// of error must not turn into a megabyte in every snapshot.
const MAX_REASON_CHARS: usize = 500;

/// The state of one breaker, as the status endpoint and the persisted snapshot name it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
pub(super) enum Verdict {
    Success,
    /// `n` counted failures; the CLI-scope rule can count two at once (see [`CliBreaker`](super::CliBreaker)).
    Failure(u32),
    Neutral,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    generation: u64,
    started_at: DateTime<Utc>,
}

/// One circuit breaker. Not synchronised: wrap it in a mutex (as [`BreakerRegistry`](super::BreakerRegistry) does) when
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

    pub(super) fn apply(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::rng::SplitMix64;
    use crate::breaker::test_support::*;

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
}
