//! Stopping the broker without leaving a CLI behind.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::state::Running;
use crate::Broker;

/// Stops accepting executions, cancels the running ones (recorded as `cancelled`) and waits
/// for them to finish, so that no CLI outlives the broker.
pub(crate) async fn shutdown(b: &Broker) {
    let inner = &b.inner;
    inner.shutting_down.store(true, Ordering::Release);
    inner.stop.cancel();
    let running: Vec<Running> = inner.running_table().values().cloned().collect();
    for r in &running {
        r.cancel.cancel();
    }
    inner.tasks.close();
    let wait = inner.cfg.kill_grace + Duration::from_secs(5);
    if tokio::time::timeout(wait, inner.tasks.wait())
        .await
        .is_err()
    {
        tracing::error!("some executions did not stop in time");
    }
    if let Some(tmux) = &inner.tmux {
        tmux.kill_server().await;
    }
    crate::homes::on_shutdown(b).await;
}

/// Whether shutdown has begun (new executions are refused).
pub(crate) fn is_shutting_down(b: &Broker) -> bool {
    b.inner.shutting_down.load(Ordering::Acquire)
}
