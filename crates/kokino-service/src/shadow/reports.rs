//! The shadow-mode queries and the switch away from shadow mode, as the broker answers them.

use kokino_core::CommMode;

use super::{Decision, Mismatch, ShadowMetrics};
use crate::{Broker, ServiceError};

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Success rates, match rate and latency delta over the last `days` days.
pub(crate) async fn metrics(b: &Broker, days: u32) -> Result<ShadowMetrics> {
    let since = b.inner.clock.now() - chrono::Duration::days(i64::from(days));
    let s = b.inner.store.shadow_summary(since).await?;
    Ok(super::metrics(days, &s))
}

/// The latest runs whose answers differed.
pub(crate) async fn mismatches(b: &Broker, limit: u32) -> Result<Vec<Mismatch>> {
    let rows = b.inner.store.shadow_mismatches(limit).await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// The latest runs whose `leg` failed.
pub(crate) async fn failures(
    b: &Broker,
    leg: CommMode,
    limit: u32,
) -> Result<Vec<kokino_store::ShadowResult>> {
    Ok(b.inner.store.shadow_failures(leg.as_str(), limit).await?)
}

/// The go/no-go for switching shadow agents to headless, over the last year of data and the
/// latest integrity check.
pub(crate) async fn decision(b: &Broker) -> Result<Decision> {
    let now = b.inner.clock.now();
    let s = b
        .inner
        .store
        .shadow_summary(now - chrono::Duration::days(365))
        .await?;
    let corruption = match *b.inner.last_integrity.lock().expect("integrity cache") {
        Some(clean) => 1.0 - clean,
        None => 0.0,
    };
    Ok(super::decision(&s, now, corruption))
}

/// Moves every shadow agent to `to` (headless or tmux); returns how many changed.
pub(crate) async fn disable_all(b: &Broker, to: CommMode) -> Result<usize> {
    if to == CommMode::Shadow {
        return Err(ServiceError::invalid("to", "to must be headless or tmux"));
    }
    let mut changed = 0;
    for mut agent in b.inner.store.list_agents().await? {
        if agent.spec.comm_mode == CommMode::Shadow {
            agent.spec.comm_mode = to;
            b.inner.store.upsert_agent(&agent.spec).await?;
            changed += 1;
        }
    }
    Ok(changed)
}
