//! Admission: how an execution runs, decided before it waits for the lock. Parked agents and
//! open breakers are refused here, fallback reroutes to tmux, and a headless run gets a breaker
//! permit whose outcome is recorded when the run ends (see `resilience.rs`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use kokino_core::breaker::{CircuitRejection, ExecutionPermit};
use kokino_core::fallback::{ModeOrigin, Target};
use kokino_core::{AgentRecord, CommMode};
use serde_json::json;

use crate::telemetry::{self, event};
use crate::{Broker, ServiceError};

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// The mode the execution runs in and, for a headless run, its breaker permit.
pub(super) fn admit(
    b: &Broker,
    agent: &AgentRecord,
) -> Result<(CommMode, Option<ExecutionPermit>)> {
    let id = &agent.spec.agent_id;
    let cli = agent.spec.cli_type;
    let res = &b.inner.resilience;
    let now = b.inner.clock.now();
    if let Some(until) = res.parking.parked_until(id, now) {
        metrics::counter!(telemetry::RATE_LIMITED_TOTAL, "cli" => cli.as_str()).increment(1);
        return Err(ServiceError::RateLimited {
            agent_id: id.to_string(),
            until,
            retry_after: (until - now).to_std().unwrap_or(Duration::from_secs(1)),
        });
    }
    let tmux = b.inner.tmux_available();
    let eff = res
        .with_fallback(|f| f.effective_mode(id, cli, agent.spec.comm_mode, tmux))
        .map_err(|e| ServiceError::NoExecutionMode {
            message: e.reason,
            retry_after: None,
        })?;
    let auto_forced = eff.origin == ModeOrigin::AgentForced
        && res.with_fallback(|f| f.get(&Target::Agent(id.clone())).is_some_and(|o| o.auto));
    if eff.mode != CommMode::Headless && !auto_forced {
        return Ok((eff.mode, None));
    }
    let admittance = res.breakers.admit(id, cli);
    if !admittance.transitions.is_empty() {
        let (this, transitions) = (b.clone(), admittance.transitions);
        tokio::spawn(async move {
            this.inner.resilience.publish(transitions, tmux).await;
        });
    }
    match admittance.decision {
        // An agent moved to tmux by its own breaker goes back to headless only as the
        // breaker's probe; meanwhile it keeps running in tmux.
        Ok(permit) if auto_forced => {
            if permit.is_probe() {
                Ok((CommMode::Headless, Some(permit)))
            } else {
                Ok((CommMode::Tmux, None))
            }
        }
        Err(_) if auto_forced => Ok((CommMode::Tmux, None)),
        Ok(permit) => Ok((CommMode::Headless, Some(permit))),
        Err(rejection) => Err(refuse(b, agent, &rejection, now)),
    }
}

/// Records a breaker's refusal (event and metric) and says what is open until when.
fn refuse(
    b: &Broker,
    agent: &AgentRecord,
    rejection: &CircuitRejection,
    now: DateTime<Utc>,
) -> ServiceError {
    let (id, cli) = (&agent.spec.agent_id, agent.spec.cli_type);
    metrics::counter!(telemetry::CIRCUIT_REJECTIONS_TOTAL, "scope" => rejection.scope.kind())
        .increment(1);
    let mut ev = event("CIRCUIT_REJECTED", Some(id.as_str()), Some(cli.as_str()));
    ev.success = Some(false);
    ev.metadata = json!({
        "scope": rejection.scope.kind(), "key": rejection.scope.key(),
        "state": rejection.state.as_str(), "retryAt": rejection.retry_at,
    });
    b.inner.events.emit(ev);
    let retry_after = rejection
        .retry_at
        .map(|t| (t - now).to_std().unwrap_or(Duration::from_secs(1)));
    ServiceError::CircuitOpen {
        message: format!(
            "the {} circuit breaker for {} is {}{}; requests are refused until it recovers",
            rejection.scope.kind(),
            rejection.scope.key(),
            rejection.state.as_str().replace('_', " "),
            rejection
                .retry_at
                .map(|t| format!(" until {}", t.to_rfc3339()))
                .unwrap_or_default(),
        ),
        scope: rejection.scope.kind().to_owned(),
        state: rejection.state.as_str().to_owned(),
        retry_after,
    }
}
