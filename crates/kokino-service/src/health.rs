//! The broker's own health: store reachability, uptime, what runs.

use crate::model::Health;
use crate::Broker;

/// `ok`, or `degraded` with the reasons (the store cannot be reached).
pub(crate) async fn health(b: &Broker) -> Health {
    let inner = &b.inner;
    let mut reasons = Vec::new();
    let agents = match inner.store.count_agents().await {
        Ok(n) => n,
        Err(e) => {
            reasons.push(format!("store unreachable: {e}"));
            0
        }
    };
    if let Err(e) = inner.store.ping().await {
        if reasons.is_empty() {
            reasons.push(format!("store unreachable: {e}"));
        }
    }
    Health {
        status: if reasons.is_empty() { "ok" } else { "degraded" }.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: inner.started.elapsed().as_secs(),
        agents,
        executing: inner.running_table().len(),
        store: inner.store.kind().to_owned(),
        instance_id: inner.instance_id.clone(),
        reasons,
    }
}

/// See [`Broker::record_store_up`].
pub(crate) async fn record_store_up(b: &Broker) -> bool {
    let up = matches!(
        tokio::time::timeout(std::time::Duration::from_secs(2), b.inner.store.ping()).await,
        Ok(Ok(()))
    );
    metrics::gauge!(crate::telemetry::STORE_UP).set(if up { 1.0 } else { 0.0 });
    if let Some(stats) = b.inner.store.group_commit_stats() {
        metrics::counter!(crate::telemetry::STORE_GROUPED_WRITES_TOTAL).absolute(stats.writes);
        metrics::counter!(crate::telemetry::STORE_GROUP_COMMITS_TOTAL).absolute(stats.commits);
    }
    up
}
