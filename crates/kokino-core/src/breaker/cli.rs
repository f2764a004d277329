//! The CLI-scope breaker: the state machine of [`Breaker`] with the rule for what counts.

use chrono::{DateTime, Utc};

use super::state::Verdict;
use super::{Breaker, BreakerConfig, BreakerSnapshot, ProbeTicket, Transition};
use crate::{AgentId, OutcomeClass};

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
    pub(super) breaker: Breaker,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::test_support::*;
    use crate::breaker::*;

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
}
