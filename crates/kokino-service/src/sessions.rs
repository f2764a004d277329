//! CLI sessions: cancelling what runs, ending sessions (one, all, or the stale ones), and the
//! per-agent session status.

use std::collections::HashMap;
use std::time::Duration;

use kokino_core::{AgentId, SessionRecord};
use serde_json::json;

use crate::model::{CancelResult, EndSessionResult, SessionStatus, SessionView};
use crate::telemetry::event;
use crate::{Broker, ServiceError};

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Cancels the agent's running execution, if any. Returns at once; the signal escalation
/// continues in the execution's own task.
pub(crate) fn cancel(b: &Broker, agent_id: &str) -> Result<CancelResult> {
    let id = AgentId::parse(agent_id)?;
    let running = b.inner.running(&id);
    if let Some(r) = &running {
        r.cancel.cancel();
    }
    Ok(CancelResult {
        cancelled: running.is_some(),
        agent_id: id.to_string(),
        pid: running.as_ref().and_then(|r| r.pid),
        execution_id: running.map(|r| r.execution_id),
    })
}

/// Cancels and waits until the agent's lock is free again (bounded by the kill escalation).
pub(crate) async fn cancel_and_wait(b: &Broker, id: &AgentId) {
    if let Some(r) = b.inner.running(id) {
        r.cancel.cancel();
        let wait = b.inner.cfg.kill_grace + Duration::from_secs(5);
        // Taking the lock proves the cancelled run has finished and stored its outcome.
        let _ = b.inner.locks.acquire(id, wait).await;
    }
}

/// Cancels what runs and forgets the CLI session: the next execute starts a new one.
pub(crate) async fn end(b: &Broker, agent_id: &str) -> Result<EndSessionResult> {
    let id = AgentId::parse(agent_id)?;
    let agent = crate::agents::record(b, &id).await?;
    cancel_and_wait(b, &id).await;
    if let Some(tmux) = &b.inner.tmux {
        tmux.end_session(id.as_str()).await;
    }
    let ended = b.inner.store.end_session(&id).await?;
    if let Some(s) = &ended {
        let mut ev = event(
            "SESSION_ENDED",
            Some(id.as_str()),
            Some(agent.spec.cli_type.as_str()),
        );
        ev.metadata = json!({"sessionId": s.cli_session_id, "conversationId": s.conversation_id});
        b.inner.events.emit(ev);
    }
    Ok(EndSessionResult {
        ended: ended.is_some(),
        agent_id: id.to_string(),
        session_id: ended.and_then(|s| s.cli_session_id),
    })
}

/// Ends the session of every agent that has one; returns how many ended.
pub(crate) async fn clear_all(b: &Broker) -> Result<usize> {
    let mut ended = 0;
    for agent in b.inner.store.list_agents().await? {
        let r = end(b, agent.spec.agent_id.as_str()).await?;
        ended += usize::from(r.ended);
    }
    Ok(ended)
}

/// Every agent's session, lock and running execution.
pub(crate) async fn status(b: &Broker) -> Result<Vec<SessionStatus>> {
    let agents = b.inner.store.list_agents().await?;
    let sessions: HashMap<AgentId, SessionRecord> = b
        .inner
        .store
        .list_sessions()
        .await?
        .into_iter()
        .map(|s| (s.agent_id.clone(), s))
        .collect();
    Ok(agents
        .into_iter()
        .map(|a| {
            let id = &a.spec.agent_id;
            let lock = b.inner.locks.status(id);
            let running = b.inner.running(id);
            let session = sessions.get(id);
            SessionStatus {
                agent_id: id.to_string(),
                session_id: session.and_then(|s| s.cli_session_id.clone()),
                has_session: session.is_some(),
                locked: lock.locked,
                executing: running.is_some(),
                execution_started_at: running.as_ref().map(|r| r.started_at.timestamp_millis()),
                queue_length: lock.queue_length,
                pid: running.as_ref().and_then(|r| r.pid),
                mode: running.as_ref().map(|r| r.mode).unwrap_or(a.spec.comm_mode),
                last_activity_at: session.map(|s| s.last_activity_at),
            }
        })
        .collect())
}

/// Ends sessions idle for longer than `stale_session_after` (the CLI session id stays in the
/// conversation's history). Agents that are executing right now are left alone.
pub(crate) async fn sweep_stale(b: &Broker) -> Result<Vec<SessionRecord>> {
    let cutoff = b.inner.clock.now()
        - chrono::Duration::from_std(b.inner.cfg.stale_session_after).unwrap_or_default();
    let busy: Vec<AgentId> = b.inner.running_table().keys().cloned().collect();
    let mut ended = Vec::new();
    for s in b.inner.store.list_sessions().await? {
        if s.last_activity_at >= cutoff || busy.contains(&s.agent_id) {
            continue;
        }
        if let Some(e) = b.inner.store.end_session(&s.agent_id).await? {
            let mut ev = event("SESSION_ENDED", Some(s.agent_id.as_str()), None);
            ev.metadata = json!({
                "sessionId": e.cli_session_id, "conversationId": e.conversation_id,
                "reason": "stale", "lastActivityAt": e.last_activity_at,
            });
            b.inner.events.emit(ev);
            ended.push(e);
        }
    }
    if !ended.is_empty() {
        tracing::info!(count = ended.len(), "ended stale sessions");
    }
    Ok(ended)
}

/// A stored session as the agent view shows it (the CLI session id only once the CLI has
/// started it).
pub(crate) fn session_view(s: SessionRecord) -> SessionView {
    SessionView {
        conversation_id: s.conversation_id,
        has_session: true,
        session_id: s.cli_session_id.filter(|_| s.cli_session_started),
        created_at: s.created_at,
        last_activity_at: s.last_activity_at,
    }
}
