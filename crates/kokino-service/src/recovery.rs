//! Executions no process will finish: those a previous life of this broker left `running`,
//! those of a broker whose lease this one took over, and those stuck without a process. Each is
//! recorded as `interrupted` with a `system` turn saying why.

use chrono::Utc;
use kokino_core::{AgentId, ExecutionRecord, OutcomeClass, Role};
use kokino_store::{FinishExecution, NewTurn};
use serde_json::json;

use crate::cluster::LeaseHold;
use crate::telemetry::{self, event};
use crate::{Broker, ServiceError};

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Executions still `running` in the store belong to a previous life that died. Their
/// process groups are killed (only if pid *and* start time still match) and they are
/// recorded as `interrupted`; their locks were in memory and are free by construction.
pub(crate) async fn recover_interrupted(b: &Broker) -> Result<()> {
    let running = own_running(b).await?;
    reap_claims(b).await;
    for exec in running {
        if let (Some(pid), Some(start)) = (exec.pid, exec.pid_start_time) {
            if kokino_exec::procfs::kill_recorded_group(pid as i32, start) {
                tracing::warn!(pid, agent = %exec.agent_id, "killed a CLI left over by a previous broker");
                let mut e = event(
                    "PROCESS_ORPHAN_KILLED",
                    Some(exec.agent_id.as_str()),
                    Some(exec.cli_type.as_str()),
                );
                e.metadata = json!({"pid": pid, "executionId": exec.execution_id});
                b.inner.events.emit(e);
            }
        }
        mark_interrupted(b, &exec).await?;
    }
    Ok(())
}

/// Kills what is left of the groups whose supervisors left a claim and whose broker is gone.
/// The claims cover the instant between a spawn and the pid reaching the store, which the rows
/// of `running` executions cannot (see `kokino_exec::supervisor`).
async fn reap_claims(b: &Broker) {
    let run_dir = b.inner.cfg.run_dir();
    let leftovers =
        tokio::task::spawn_blocking(move || kokino_exec::supervisor::reap_leftovers(&run_dir))
            .await
            .unwrap_or_default();
    for l in leftovers.iter().filter(|l| l.killed) {
        let source = if l.orphan {
            tracing::warn!(
                pid = l.pgid,
                "killed a process that a CLI started and that outlived its supervisor"
            );
            "mark"
        } else {
            tracing::warn!(
                pgid = l.pgid,
                "killed a CLI group left over by a previous broker"
            );
            "claim"
        };
        let mut e = event("PROCESS_ORPHAN_KILLED", None, None);
        e.metadata = json!({"pid": l.pgid, "source": source});
        b.inner.events.emit(e);
    }
}

/// The executions recorded as running by this broker. With several brokers on one database,
/// only this broker's own runs are its to clean up (the others' are ended by their brokers, or
/// taken over when their leases expire).
async fn own_running(b: &Broker) -> Result<Vec<ExecutionRecord>> {
    let store = &b.inner.store;
    Ok(match &b.inner.cfg.cluster {
        Some(c) => store.running_executions_of(&c.instance_id).await?,
        None => store.running_executions().await?,
    })
}

/// Records an execution that no process will finish as `interrupted`, with a `system`
/// turn saying so (not counted by breakers or SLOs).
pub(crate) async fn mark_interrupted(b: &Broker, exec: &ExecutionRecord) -> Result<()> {
    b.inner
        .store
        .finish_execution(&interrupted_finish(
            exec,
            "interrupted: the broker stopped while this execution was running".into(),
            json!({}),
        ))
        .await?;
    let mut e = event(
        "EXECUTION_INTERRUPTED",
        Some(exec.agent_id.as_str()),
        Some(exec.cli_type.as_str()),
    );
    e.success = Some(false);
    e.metadata = json!({"executionId": exec.execution_id});
    b.inner.events.emit(e);
    metrics::counter!(telemetry::EXECUTIONS_TOTAL,
        "cli" => exec.cli_type.as_str(), "mode" => exec.mode.as_str(), "outcome" => "interrupted")
    .increment(1);
    Ok(())
}

/// This broker took an agent's lease over from `previous`, whose lease had expired (it died
/// or stalled): its unfinished executions of the agent are marked `interrupted`. Nothing is
/// killed — those processes belong to another broker (its lease guard stops them).
pub(crate) async fn take_over(b: &Broker, id: &AgentId, previous: &str, hold: &LeaseHold) {
    tracing::warn!(agent = %id, %previous, "took over an expired lease");
    let store = &b.inner.store;
    let foreign = match store
        .foreign_running_executions(id.as_str(), &hold.owner)
        .await
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "could not list the previous owner's executions");
            return;
        }
    };
    for exec in foreign {
        let message = format!(
            "interrupted: broker {previous} stopped renewing the agent's lease while this execution ran"
        );
        let fin = interrupted_finish(&exec, message, json!({"previousOwner": previous}));
        if let Err(e) = store
            .finish_execution_fenced(&fin, id.as_str(), &hold.owner, hold.token)
            .await
        {
            tracing::warn!(error = %e, "could not mark a taken-over execution interrupted");
            continue;
        }
        let mut ev = event(
            "EXECUTION_INTERRUPTED",
            Some(id.as_str()),
            Some(exec.cli_type.as_str()),
        );
        ev.success = Some(false);
        ev.metadata = json!({"executionId": exec.execution_id, "previousOwner": previous});
        b.inner.events.emit(ev);
    }
}

/// Executions the store says are running that this broker is not running (and whose
/// recorded process, if any, is gone).
pub(crate) async fn stuck_executions(b: &Broker) -> Result<Vec<ExecutionRecord>> {
    let live: Vec<String> = b
        .inner
        .running_table()
        .values()
        .map(|r| r.execution_id.clone())
        .collect();
    Ok(own_running(b)
        .await?
        .into_iter()
        .filter(|e| !live.contains(&e.execution_id))
        .filter(|e| match (e.pid, e.pid_start_time) {
            (Some(pid), Some(start)) => !kokino_exec::procfs::is_same_process(pid as i32, start),
            _ => true,
        })
        .collect())
}

/// The record of an execution that no process will finish: outcome `interrupted`, with a
/// `system` turn carrying `message` (and `extra` metadata).
fn interrupted_finish(
    exec: &ExecutionRecord,
    message: String,
    mut extra: serde_json::Value,
) -> FinishExecution {
    extra["executionId"] = json!(exec.execution_id);
    extra["outcome"] = json!("interrupted");
    FinishExecution {
        execution_id: exec.execution_id.clone(),
        outcome: OutcomeClass::Interrupted,
        exit_code: None,
        error_message: Some(message.clone()),
        duration_ms: (Utc::now() - exec.started_at).num_milliseconds().max(0),
        usage: None,
        cost_usd: None,
        num_turns: None,
        peak_rss_mb: None,
        cli_session_id: None,
        turn: Some(NewTurn {
            turn_id: uuid::Uuid::new_v4().to_string(),
            role: Role::System,
            content: message,
            metadata: extra,
        }),
    }
}
