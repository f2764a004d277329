//! Rate-limit parking: agents that may not run until their provider's reset time.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use super::lock;
use crate::AgentId;

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
    use std::time::Duration;

    use super::*;
    use crate::breaker::test_support::*;
    use crate::clock::{Clock, TokioClock};

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
}
