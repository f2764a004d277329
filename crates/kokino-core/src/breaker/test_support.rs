//! Helpers shared by the breaker tests: fixed instants, agents, breakers in a given state, and a
//! clock set by hand.

use std::sync::Mutex;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::clock::{Clock, SharedClock};
use crate::{AgentId, CliType, OutcomeClass};

pub(super) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 31, 12, 0, 0).unwrap()
}

pub(super) fn secs(s: i64) -> chrono::Duration {
    chrono::Duration::seconds(s)
}

pub(super) fn agent(s: &str) -> AgentId {
    AgentId::parse(s).unwrap()
}

/// A breaker opened at `t0()` by five failures.
pub(super) fn opened() -> Breaker {
    let mut b = Breaker::new(BreakerConfig::default());
    for _ in 0..5 {
        b.record(OutcomeClass::CliError, Some("exit 1"), None, t0(), 0.5);
    }
    assert_eq!(b.state(), BreakerState::Open);
    b
}

/// A breaker gone half open at `t0() + 60 s`, with the probe's ticket.
pub(super) fn half_open() -> (Breaker, ProbeTicket) {
    let mut b = opened();
    let (admission, _) = b.admit(t0() + secs(60));
    let Admission::Probe(ticket) = admission else {
        panic!("expected a probe, got {admission:?}");
    };
    (b, ticket)
}

pub(super) fn registry(clock: SharedClock) -> BreakerRegistry {
    BreakerRegistry::new(BreakerConfig::default(), clock, 42)
}

pub(super) fn fail(
    reg: &BreakerRegistry,
    a: &AgentId,
    cli: CliType,
    class: OutcomeClass,
) -> Vec<ScopedTransition> {
    let permit = reg.admit(a, cli).decision.expect("admitted");
    reg.finish(permit, class, Some("failed"))
}

/// A clock the test sets by hand, for tests on plain threads.
#[derive(Debug)]
pub(super) struct Fixed(pub(super) Mutex<DateTime<Utc>>);

impl Clock for Fixed {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}
