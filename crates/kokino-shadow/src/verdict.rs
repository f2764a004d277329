//! Which shadow events one execution produces, from both legs' outcomes and the comparison.
//!
//! The service runs the legs and records the events; the rule that turns results into events is
//! pure and lives here, next to the comparison it reads, so it can be tested without processes.

use kokino_core::OutcomeClass;
use serde::{Deserialize, Serialize};

use crate::compare::Comparison;

/// Headless slower than tmux by more than this is a latency regression (the spec's 1 000 ms).
pub const LATENCY_REGRESSION_MS: u64 = 1_000;

/// The telemetry events of shadow mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShadowEvent {
    /// Both legs succeeded and their answers matched.
    ShadowSuccess,
    /// Both legs succeeded and their answers did not match.
    ShadowMismatch,
    /// The headless leg failed.
    ShadowHeadlessFailure,
    /// The tmux leg failed.
    ShadowTmuxFailure,
    /// Both legs succeeded and headless was slower by more than `LATENCY_REGRESSION_MS`.
    ShadowLatencyRegression,
}

impl ShadowEvent {
    /// The event type as the events table and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowEvent::ShadowSuccess => "SHADOW_SUCCESS",
            ShadowEvent::ShadowMismatch => "SHADOW_MISMATCH",
            ShadowEvent::ShadowHeadlessFailure => "SHADOW_HEADLESS_FAILURE",
            ShadowEvent::ShadowTmuxFailure => "SHADOW_TMUX_FAILURE",
            ShadowEvent::ShadowLatencyRegression => "SHADOW_LATENCY_REGRESSION",
        }
    }
}

/// What one leg of a shadow execution came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leg {
    pub outcome: OutcomeClass,
    pub latency_ms: u64,
}

impl Leg {
    pub fn succeeded(&self) -> bool {
        self.outcome == OutcomeClass::Success
    }
}

/// The events for one shadow execution. `comparison` is the comparison of the two answers; it is
/// only read when both legs succeeded, since a failed leg has no answer to compare.
pub fn shadow_events(
    headless: Leg,
    tmux: Leg,
    comparison: Option<&Comparison>,
) -> Vec<ShadowEvent> {
    let mut events = Vec::new();
    if !headless.succeeded() {
        events.push(ShadowEvent::ShadowHeadlessFailure);
    }
    if !tmux.succeeded() {
        events.push(ShadowEvent::ShadowTmuxFailure);
    }
    if headless.succeeded() && tmux.succeeded() {
        match comparison {
            Some(c) if c.matched => events.push(ShadowEvent::ShadowSuccess),
            Some(_) => events.push(ShadowEvent::ShadowMismatch),
            None => {}
        }
        // Latency is only comparable when both legs ran to an answer: a leg that failed fast
        // would otherwise look like a speed-up.
        if headless.latency_ms > tmux.latency_ms.saturating_add(LATENCY_REGRESSION_MS) {
            events.push(ShadowEvent::ShadowLatencyRegression);
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Comparator;

    fn leg(outcome: OutcomeClass, latency_ms: u64) -> Leg {
        Leg {
            outcome,
            latency_ms,
        }
    }

    #[test]
    fn both_ok_and_matching_is_success() {
        let c = Comparator::default().compare("same", "same ");
        let events = shadow_events(
            leg(OutcomeClass::Success, 900),
            leg(OutcomeClass::Success, 1000),
            Some(&c),
        );
        assert_eq!(events, vec![ShadowEvent::ShadowSuccess]);
    }

    #[test]
    fn both_ok_different_and_slow_is_mismatch_and_regression() {
        let c = Comparator::default().compare("yes", "no");
        let events = shadow_events(
            leg(OutcomeClass::Success, 2_001),
            leg(OutcomeClass::Success, 1_000),
            Some(&c),
        );
        assert_eq!(
            events,
            vec![
                ShadowEvent::ShadowMismatch,
                ShadowEvent::ShadowLatencyRegression
            ]
        );
        // Exactly 1 000 ms slower is not "more than" 1 000 ms.
        let events = shadow_events(
            leg(OutcomeClass::Success, 2_000),
            leg(OutcomeClass::Success, 1_000),
            Some(&c),
        );
        assert_eq!(events, vec![ShadowEvent::ShadowMismatch]);
    }

    #[test]
    fn failed_legs() {
        let events = shadow_events(
            leg(OutcomeClass::Timeout, 60_000),
            leg(OutcomeClass::CliError, 10),
            None,
        );
        assert_eq!(
            events,
            vec![
                ShadowEvent::ShadowHeadlessFailure,
                ShadowEvent::ShadowTmuxFailure
            ]
        );
        assert_eq!(events[0].as_str(), "SHADOW_HEADLESS_FAILURE");
    }
}
