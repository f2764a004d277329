//! The two legs of a shadow execution: which leg answers, the secondary leg's run (with its own
//! CLI session), and the comparison that is stored when both have ended.

use kokino_cli::{first_prompt_with_system, SessionArg, StreamEvent};
use kokino_core::{AgentRecord, CommMode, OutcomeClass};
use kokino_exec::{CancellationToken, ExecEvent, RunResult};
use kokino_shadow::Comparison;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::execution::run::Execution;
use crate::execution::runner::{self, Leg, Output};
use crate::state::millis;
use crate::telemetry::{self, event};
use crate::Broker;

/// Stored shadow answers are cut at this size: the comparison already saw them whole.
const SHADOW_ANSWER_MAX: usize = 256 * 1024;

/// The primary leg's mode and, for a shadow execution, the secondary's. Tmux answers by
/// default, as in the operations guide; `metadata.shadowPrimary = "headless"` switches it.
pub(crate) fn modes(exec: &Execution) -> (CommMode, Option<CommMode>) {
    if exec.mode != CommMode::Shadow {
        return (exec.mode, None);
    }
    let primary = match exec
        .agent
        .spec
        .metadata
        .get("shadowPrimary")
        .and_then(|v| v.as_str())
    {
        Some("headless") => CommMode::Headless,
        _ => CommMode::Tmux,
    };
    let secondary = if primary == CommMode::Tmux {
        CommMode::Headless
    } else {
        CommMode::Tmux
    };
    (primary, Some(secondary))
}

/// Starts the secondary leg in its own task. It uses its own CLI session (remembered in
/// memory; a restart starts a new one) and shares the primary's cancel token, so a cancel
/// stops both legs.
pub(crate) async fn start_secondary(
    b: &Broker,
    exec: &Execution,
    mode: CommMode,
    cancel: CancellationToken,
) -> JoinHandle<RunResult> {
    let agent = exec.agent.clone();
    let id = agent.spec.agent_id.clone();
    let known = b
        .inner
        .shadow_sessions
        .lock()
        .expect("shadow sessions")
        .get(&id)
        .cloned();
    let fresh = uuid::Uuid::new_v4().to_string();
    let (session, prompt) = match &known {
        Some(sid) => (SessionArg::Resume { session_id: sid }, exec.prompt.clone()),
        None => (
            SessionArg::New {
                preassigned_id: &fresh,
            },
            first_prompt_with_system(
                agent.spec.cli_type,
                agent.spec.system_prompt.as_deref(),
                &exec.prompt,
            ),
        ),
    };
    let leg = Leg {
        agent: &agent,
        mode,
        session,
        prompt,
        timeout: exec.timeout,
        gate: None,
    };
    let runner = runner::build(b, leg).await;
    let this = b.clone();
    tokio::spawn(async move {
        let runner = match runner {
            Ok(r) => r,
            Err(e) => return runner::spawn_error_result(e.0),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let out = Output {
            events: tx,
            log: false,
        };
        let run = runner::run(&this, &agent, runner, cancel, out);
        let sessions = async {
            while let Some(ev) = rx.recv().await {
                if let ExecEvent::Stream(StreamEvent::SessionId(sid)) = ev {
                    remember_session(&this, &id, Some(sid));
                }
            }
        };
        let (result, ()) = tokio::join!(run, sessions);
        if result.outcome != OutcomeClass::Success {
            // A failed secondary session is not resumed: the next run starts a new one.
            remember_session(&this, &id, None);
        }
        result
    })
}

/// Remembers (or, with `None`, forgets) the secondary leg's CLI session of an agent.
fn remember_session(b: &Broker, id: &kokino_core::AgentId, sid: Option<String>) {
    let mut sessions = b.inner.shadow_sessions.lock().expect("shadow sessions");
    match sid {
        Some(sid) => sessions.insert(id.clone(), sid),
        None => sessions.remove(id),
    };
}

/// Both legs' results, once both have ended.
pub(crate) struct Legs {
    pub primary_mode: CommMode,
    pub primary: RunResult,
    pub secondary: RunResult,
}

/// Compares the two legs, stores the result, and publishes events and metrics.
pub(crate) async fn record(b: &Broker, agent: &AgentRecord, execution_id: &str, legs: Legs) {
    let (tmux, headless) = if legs.primary_mode == CommMode::Tmux {
        (&legs.primary, &legs.secondary)
    } else {
        (&legs.secondary, &legs.primary)
    };
    let comparison = compare(tmux, headless).await;
    let row = result_row(
        agent,
        execution_id,
        legs.primary_mode,
        (tmux, headless),
        &comparison,
    );
    if let Err(e) = b.inner.store.insert_shadow_result(&row).await {
        tracing::warn!(error = %e, "could not store a shadow result");
    }
    publish(b, agent, &row, (tmux, headless), comparison.as_ref());
}

fn ok(r: &RunResult) -> bool {
    r.outcome == OutcomeClass::Success
}

/// Compares the answers when both legs answered.
async fn compare(tmux: &RunResult, headless: &RunResult) -> Option<Comparison> {
    if !(ok(tmux) && ok(headless)) {
        return None;
    }
    let answer = |r: &RunResult| r.parsed.answer.clone().unwrap_or_default();
    let (a, b) = (answer(headless), answer(tmux));
    // A 1 MB comparison takes milliseconds of CPU: keep it off the async workers.
    tokio::task::spawn_blocking(move || kokino_shadow::Comparator::terminal().compare(&a, &b))
        .await
        .ok()
}

/// The stored row of one shadow execution.
fn result_row(
    agent: &AgentRecord,
    execution_id: &str,
    primary_mode: CommMode,
    (tmux, headless): (&RunResult, &RunResult),
    comparison: &Option<Comparison>,
) -> kokino_store::NewShadowResult {
    let latency = |r: &RunResult| millis(r.duration) as i64;
    let bounded = |s: String| truncate_utf8(s, SHADOW_ANSWER_MAX);
    kokino_store::NewShadowResult {
        agent_id: agent.spec.agent_id.to_string(),
        execution_id: execution_id.to_owned(),
        primary_mode: primary_mode.as_str().to_owned(),
        tmux_success: ok(tmux),
        headless_success: ok(headless),
        tmux_response: tmux.parsed.answer.clone().map(bounded),
        headless_response: headless.parsed.answer.clone().map(bounded),
        tmux_error: (!ok(tmux)).then(|| tmux.error_message().unwrap_or_default()),
        headless_error: (!ok(headless)).then(|| headless.error_message().unwrap_or_default()),
        tmux_latency_ms: latency(tmux),
        headless_latency_ms: latency(headless),
        similarity: comparison.as_ref().map(|c| c.similarity),
        matched: comparison.as_ref().map(|c| c.matched),
        diff: comparison
            .as_ref()
            .map(|c| c.diff.clone())
            .filter(|d| !d.is_empty()),
    }
}

/// The verdict metric, the similarity and latency histograms, and the `SHADOW_*` events.
fn publish(
    b: &Broker,
    agent: &AgentRecord,
    row: &kokino_store::NewShadowResult,
    (tmux, headless): (&RunResult, &RunResult),
    comparison: Option<&Comparison>,
) {
    let verdict = match (ok(tmux), ok(headless), comparison.map(|c| c.matched)) {
        (true, true, Some(true)) => "matched",
        (true, true, _) => "mismatched",
        (true, false, _) => "headless_failed",
        (false, true, _) => "tmux_failed",
        (false, false, _) => "both_failed",
    };
    metrics::counter!(telemetry::SHADOW_RESULTS_TOTAL, "verdict" => verdict).increment(1);
    if let Some(c) = comparison {
        metrics::histogram!(telemetry::SHADOW_SIMILARITY).record(c.similarity);
        metrics::histogram!(telemetry::SHADOW_LATENCY_DELTA)
            .record((row.headless_latency_ms - row.tmux_latency_ms) as f64 / 1000.0);
    }
    let leg = |r: &RunResult, latency_ms: i64| kokino_shadow::Leg {
        outcome: r.outcome,
        latency_ms: latency_ms.max(0) as u64,
    };
    let (h, t) = (
        leg(headless, row.headless_latency_ms),
        leg(tmux, row.tmux_latency_ms),
    );
    for kind in kokino_shadow::shadow_events(h, t, comparison) {
        let mut ev = event(
            kind.as_str(),
            Some(agent.spec.agent_id.as_str()),
            Some(agent.spec.cli_type.as_str()),
        );
        ev.success = Some(matches!(kind, kokino_shadow::ShadowEvent::ShadowSuccess));
        ev.metadata = json!({
            "executionId": row.execution_id, "similarity": row.similarity,
            "tmuxLatencyMs": row.tmux_latency_ms, "headlessLatencyMs": row.headless_latency_ms,
            "tmuxError": row.tmux_error, "headlessError": row.headless_error,
        });
        b.inner.events.emit(ev);
    }
}

fn truncate_utf8(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("…[truncated]");
    }
    s
}
