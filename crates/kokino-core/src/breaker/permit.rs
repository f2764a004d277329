//! The permission to run one call, and what happens when it is dropped unfinished.

use std::sync::{Arc, Mutex};

use super::registry::Inner;
use super::{lock, ProbeTicket};
use crate::{AgentId, CliType};

/// Permission to run one call of an agent, from [`BreakerRegistry::admit`](super::BreakerRegistry::admit). Hand it to
/// [`BreakerRegistry::finish`](super::BreakerRegistry::finish) with the outcome. Dropping it unfinished (the call never ran, the
/// task panicked) gives back any probe slot it holds, so a lost permit cannot keep a breaker half
/// open and rejecting.
#[derive(Debug)]
pub struct ExecutionPermit {
    pub(super) inner: Arc<Mutex<Inner>>,
    pub(super) agent: AgentId,
    pub(super) cli: CliType,
    pub(super) agent_probe: Option<ProbeTicket>,
    pub(super) cli_probe: Option<ProbeTicket>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::test_support::*;
    use crate::breaker::*;
    use crate::OutcomeClass;

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
}
