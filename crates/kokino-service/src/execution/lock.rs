//! Waiting for the agent: its in-process lock first, then (several brokers) its lease in the
//! database. Both waits share the request's lock timeout.

use std::sync::atomic::Ordering;
use std::time::Duration;

use kokino_core::lock::LockGuard;
use kokino_core::{AgentId, AgentRecord, CliType};
use serde_json::json;
use tokio::sync::mpsc;

use crate::cluster::LeaseHold;
use crate::model::{ExecuteRequest, Progress};
use crate::state::millis;
use crate::telemetry::{self, event};
use crate::{Broker, ServiceError};

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Waits for the agent's lock and lease; a timeout is recorded and answered as `LockTimeout`.
pub(super) async fn acquire(
    b: &Broker,
    agent: &AgentRecord,
    req: &ExecuteRequest,
    progress: Option<&mpsc::UnboundedSender<Progress>>,
) -> Result<(LockGuard, Option<LeaseHold>)> {
    let (id, cli) = (&agent.spec.agent_id, agent.spec.cli_type);
    let wait = req
        .lock_timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(b.inner.cfg.lock_wait);
    if let Some(p) = progress {
        let st = b.inner.locks.status(id);
        let _ = p.send(Progress::Queued {
            position: st.queue_length + usize::from(st.locked),
        });
    }
    let guard = lock(b, id, cli, wait).await?;
    let lease = lease(b, id, cli, wait, &guard).await?;
    Ok((guard, lease))
}

/// The per-agent lock of this broker, counted in the queue-depth gauge while waited for.
async fn lock(b: &Broker, id: &AgentId, cli: CliType, wait: Duration) -> Result<LockGuard> {
    let depth = b.inner.queued.fetch_add(1, Ordering::AcqRel) + 1;
    metrics::gauge!(telemetry::QUEUE_DEPTH).set(depth as f64);
    let acquired = b.inner.locks.acquire(id, wait).await;
    let depth = b.inner.queued.fetch_sub(1, Ordering::AcqRel) - 1;
    metrics::gauge!(telemetry::QUEUE_DEPTH).set(depth as f64);
    let guard = match acquired {
        Ok(g) => g,
        Err(e) => {
            metrics::counter!(telemetry::LOCK_TIMEOUTS_TOTAL, "cli" => cli.as_str()).increment(1);
            let mut ev = event("LOCK_TIMEOUT", Some(id.as_str()), Some(cli.as_str()));
            ev.success = Some(false);
            ev.duration_ms = Some(millis(wait) as i64);
            b.inner.events.emit(ev);
            return Err(e.into());
        }
    };
    metrics::histogram!(telemetry::LOCK_WAIT, "cli" => cli.as_str())
        .record(guard.waited().as_secs_f64());
    let mut ev = event("LOCK_ACQUIRED", Some(id.as_str()), Some(cli.as_str()));
    ev.metadata = json!({"waitedMs": millis(guard.waited())});
    b.inner.events.emit(ev);
    Ok(guard)
}

/// Several brokers: the agent's lease in the database is the cross-broker lock. A lease taken
/// over from a broker that stopped renewing it interrupts that broker's unfinished runs.
async fn lease(
    b: &Broker,
    id: &AgentId,
    cli: CliType,
    wait: Duration,
    guard: &LockGuard,
) -> Result<Option<LeaseHold>> {
    let Some(c) = &b.inner.cfg.cluster else {
        return Ok(None);
    };
    // The lease of the agent's run that ended while this one waited for the lock.
    if let Some(hold) = b.inner.parked_leases.take(id.as_str(), c).await {
        crate::homes::check_home(b, id).await?;
        return Ok(Some(hold));
    }
    let deadline = tokio::time::Instant::now() + wait.saturating_sub(guard.waited());
    let wakeups = b.inner.wakeups.as_ref();
    match crate::cluster::acquire(&b.inner.store, id.as_str(), c, deadline, wakeups).await? {
        Some((hold, lease)) => {
            // Several machines: only the agent's home may run it; a broker that stopped being
            // the home while the request waited refuses before anything runs.
            crate::homes::check_home(b, id).await?;
            if let Some(previous) = lease.taken_over_from.filter(|p| p != &c.instance_id) {
                crate::recovery::take_over(b, id, &previous, &hold).await;
            }
            Ok(Some(hold))
        }
        None => {
            metrics::counter!(telemetry::LOCK_TIMEOUTS_TOTAL, "cli" => cli.as_str()).increment(1);
            let mut ev = event("LOCK_TIMEOUT", Some(id.as_str()), Some(cli.as_str()));
            ev.success = Some(false);
            ev.metadata = json!({"heldBy": "another broker"});
            b.inner.events.emit(ev);
            Err(ServiceError::LockTimeout {
                agent_id: id.to_string(),
                waited_ms: millis(wait),
            })
        }
    }
}
