//! What the broker shows of its live processes and the agents' logs.

use chrono::Utc;

use crate::model::{AgentLogTail, ProcessLimits, ProcessStatus};
use crate::{Broker, ServiceError};

/// Live processes with their latest memory and CPU sample, by agent id.
pub(crate) fn processes(b: &Broker) -> Vec<ProcessStatus> {
    let now = Utc::now();
    let running = b.inner.running_table();
    let mut out: Vec<ProcessStatus> = running
        .iter()
        .filter_map(|(id, r)| {
            let pid = r.pid?;
            Some(ProcessStatus {
                agent_id: id.to_string(),
                execution_id: r.execution_id.clone(),
                pid,
                // Every CLI leads its own process group.
                pgid: pid,
                mode: r.mode,
                started_at: r.started_at,
                age_ms: (now - r.started_at).num_milliseconds().max(0),
                memory_mb: r.rss_bytes as f64 / (1024.0 * 1024.0),
                cpu_percent: r.cpu_percent,
                limits: ProcessLimits {
                    max_memory_mb: r.max_memory_mb,
                    timeout_ms: r.timeout_ms,
                },
            })
        })
        .collect();
    out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    out
}

/// The last `lines` lines of the agent's log.
pub(crate) async fn log_tail(
    b: &Broker,
    agent_id: &str,
    lines: usize,
) -> Result<AgentLogTail, ServiceError> {
    let id = crate::agents::existing(b, agent_id).await?;
    let logs = b.inner.logs.clone();
    let tail_id = id.clone();
    // Reading a large log is blocking file IO: keep it off the async workers.
    let content = tokio::task::spawn_blocking(move || logs.tail(&tail_id, lines))
        .await
        .map_err(|e| ServiceError::Internal(format!("log reader failed: {e}")))?
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    Ok(AgentLogTail {
        agent_id: id.to_string(),
        lines: if content.is_empty() {
            0
        } else {
            content.lines().count()
        },
        content,
    })
}
