//! The end of a run: breakers and parking learn the outcome, the outcome is stored (answer or
//! failure turn, in one transaction), telemetry is recorded, and the run becomes the caller's
//! answer.

use chrono::{DateTime, Utc};
use kokino_core::breaker::ExecutionPermit;
use kokino_core::{OutcomeClass, Role, Turn};
use kokino_exec::{RunResult, StopReason};
use kokino_store::{FinishExecution, NewTurn};
use serde_json::json;

use super::run::Execution;
use crate::model::{ExecuteMetadata, ExecuteResponse};
use crate::state::millis;
use crate::telemetry::{self, event};
use crate::{Broker, ServiceError};

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// What the run produced, as stored and answered.
struct Outcome {
    result: RunResult,
    error_message: Option<String>,
    /// The CLI session to resume next time.
    session_id: Option<String>,
    duration_ms: u64,
}

/// Stores the outcome, records telemetry, and turns the run into the caller's answer.
/// `fence` is the lease (owner, token) the write must still hold, with several brokers.
pub(super) async fn finish(
    b: &Broker,
    exec: &Execution,
    result: RunResult,
    permit: Option<ExecutionPermit>,
    fence: Option<(&str, i64)>,
) -> Result<ExecuteResponse> {
    settle_resilience(b, exec, &result, permit).await;
    let outcome = Outcome {
        error_message: result.error_message(),
        session_id: result
            .parsed
            .session_id
            .clone()
            .or_else(|| exec.known_session()),
        duration_ms: millis(result.duration),
        result,
    };
    let record = finish_record(exec, &outcome);
    let store = &b.inner.store;
    let turn = match fence {
        Some((owner, token)) => {
            let agent = exec.agent.spec.agent_id.as_str();
            store
                .finish_execution_fenced(&record, agent, owner, token)
                .await?
        }
        None => store.finish_execution(&record).await?,
    };
    publish(b, exec, &outcome);
    answer(b, exec, outcome, turn)
}

/// The outcome feeds the breaker (headless runs hold a permit) and, when the provider said
/// "rate limited", parks the agent until the provider's reset time (a minute when it did not
/// say): a rate limit is not a failure, but hammering a quota that is spent helps nobody.
async fn settle_resilience(
    b: &Broker,
    exec: &Execution,
    result: &RunResult,
    permit: Option<ExecutionPermit>,
) {
    let resilience = &b.inner.resilience;
    if let Some(permit) = permit {
        let reason = result.error_message();
        let transitions = resilience
            .breakers
            .finish(permit, result.outcome, reason.as_deref());
        resilience
            .publish(transitions, b.inner.tmux_available())
            .await;
    }
    if result.outcome == OutcomeClass::RateLimited {
        let until = result
            .parsed
            .rate_limit_resets_at
            .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
            .filter(|t| *t > Utc::now())
            .unwrap_or_else(|| Utc::now() + chrono::Duration::seconds(60));
        resilience.parking.park(&exec.agent.spec.agent_id, until);
    }
}

/// The stored record: the execution's outcome and its answer (or failure) turn.
fn finish_record(exec: &Execution, o: &Outcome) -> FinishExecution {
    let r = &o.result;
    let outcome = r.outcome;
    let turn_meta = json!({
        "executionId": exec.execution_id,
        "cliType": exec.agent.spec.cli_type.as_str(),
        "mode": exec.mode.as_str(),
        "outcome": outcome.as_str(),
        "exitCode": r.exit.code,
        "durationMs": o.duration_ms,
        "sessionId": o.session_id,
        "usage": r.parsed.usage,
        "costUsd": r.parsed.cost_usd,
        "numTurns": r.parsed.num_turns,
    });
    let mut turn_meta = turn_meta;
    if let Some(previous) = &exec.rehydrated_from {
        turn_meta["rehydratedFrom"] = json!(previous);
    }
    let (role, content) = if outcome == OutcomeClass::Success {
        (Role::Assistant, r.parsed.answer.clone().unwrap_or_default())
    } else {
        let error = o.error_message.clone().unwrap_or_default();
        (Role::System, format!("{}: {error}", outcome.as_str()))
    };
    FinishExecution {
        execution_id: exec.execution_id.clone(),
        outcome,
        exit_code: r.exit.code.map(i64::from),
        error_message: o.error_message.clone(),
        duration_ms: o.duration_ms as i64,
        usage: r.parsed.usage,
        cost_usd: r.parsed.cost_usd,
        num_turns: r.parsed.num_turns.map(i64::from),
        peak_rss_mb: Some(r.peak_rss_bytes as f64 / (1024.0 * 1024.0)),
        cli_session_id: o.session_id.clone(),
        turn: Some(NewTurn {
            turn_id: uuid::Uuid::new_v4().to_string(),
            role,
            content,
            metadata: turn_meta,
        }),
    }
}

/// The metrics and events of a finished run.
fn publish(b: &Broker, exec: &Execution, o: &Outcome) {
    let r = &o.result;
    let (id, cli, mode) = (
        &exec.agent.spec.agent_id,
        exec.agent.spec.cli_type,
        exec.mode,
    );
    let outcome = r.outcome;
    metrics::counter!(telemetry::EXECUTIONS_TOTAL,
        "cli" => cli.as_str(), "mode" => mode.as_str(), "outcome" => outcome.as_str())
    .increment(1);
    metrics::histogram!(telemetry::EXECUTION_DURATION,
        "cli" => cli.as_str(), "mode" => mode.as_str(), "outcome" => outcome.as_str())
    .record(r.duration.as_secs_f64());
    if r.peak_rss_bytes > 0 {
        metrics::histogram!(telemetry::PROCESS_PEAK_RSS, "cli" => cli.as_str())
            .record(r.peak_rss_bytes as f64);
    }
    if let Some(pid) = r.pid {
        let mut ev = event("PROCESS_EXITED", Some(id.as_str()), Some(cli.as_str()));
        ev.metadata = json!({
            "pid": pid, "exitCode": r.exit.code, "signal": r.exit.signal,
            "peakRssBytes": r.peak_rss_bytes, "executionId": exec.execution_id,
        });
        b.inner.events.emit(ev);
    }
    if let Some(StopReason::MemoryLimit { rss_bytes }) = r.stop {
        let mut ev = event(
            "PROCESS_LIMIT_EXCEEDED",
            Some(id.as_str()),
            Some(cli.as_str()),
        );
        ev.metadata = json!({"rssBytes": rss_bytes, "executionId": exec.execution_id});
        b.inner.events.emit(ev);
    }
    let event_type = match outcome {
        OutcomeClass::Success => "EXECUTION_COMPLETED",
        OutcomeClass::Timeout => "EXECUTION_TIMEOUT",
        OutcomeClass::Cancelled => "EXECUTION_CANCELLED",
        OutcomeClass::RateLimited => "RATE_LIMITED",
        _ => "EXECUTION_FAILED",
    };
    let mut ev = event(event_type, Some(id.as_str()), Some(cli.as_str()));
    ev.success = Some(outcome == OutcomeClass::Success);
    ev.duration_ms = Some(o.duration_ms as i64);
    ev.metadata = json!({
        "executionId": exec.execution_id, "outcome": outcome.as_str(), "mode": mode.as_str(),
        "exitCode": r.exit.code, "error": o.error_message,
    });
    b.inner.events.emit(ev);
}

/// The caller's answer: the CLI's answer, or the error that says what happened.
fn answer(b: &Broker, exec: &Execution, o: Outcome, turn: Option<Turn>) -> Result<ExecuteResponse> {
    let agent_id = exec.agent.spec.agent_id.to_string();
    let execution_id = exec.execution_id.clone();
    let r = o.result;
    match r.outcome {
        OutcomeClass::Success => Ok(ExecuteResponse {
            turn_id: turn.map(|t| t.turn_id).unwrap_or_default(),
            conversation_id: exec.session.conversation_id.clone(),
            content: r.parsed.answer.unwrap_or_default(),
            success: true,
            duration_ms: o.duration_ms,
            session_id: o.session_id.clone(),
            mode: exec.mode,
            usage: r.parsed.usage,
            cost_usd: r.parsed.cost_usd,
            num_turns: r.parsed.num_turns,
            metadata: ExecuteMetadata {
                session_id: o.session_id,
                exit_code: r.exit.code,
                cli_type: exec.agent.spec.cli_type.as_str().to_owned(),
                waited_ms: exec.waited_ms,
                execution_id,
                rehydrated: exec.rehydrated_from.is_some(),
            },
        }),
        OutcomeClass::Cancelled => Err(ServiceError::Cancelled {
            agent_id,
            execution_id,
        }),
        OutcomeClass::Timeout => Err(ServiceError::Timeout {
            agent_id,
            execution_id,
            timeout_ms: match r.stop {
                Some(StopReason::Inactivity) => millis(b.inner.cfg.inactivity_timeout),
                _ => millis(exec.timeout),
            },
        }),
        class => Err(ServiceError::CliFailed {
            agent_id,
            execution_id,
            class,
            exit_code: r.exit.code,
            signal: r.exit.signal,
            stderr_tail: r.stderr_tail,
            message: o
                .error_message
                .unwrap_or_else(|| format!("the CLI failed ({class})")),
            retry_after_secs: r
                .parsed
                .rate_limit_resets_at
                .map(|at| (at - Utc::now().timestamp()).max(1) as u64),
        }),
    }
}
