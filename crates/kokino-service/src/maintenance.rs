//! The periodic jobs: the stale-session sweep, event retention and log pruning, the nightly
//! integrity check, the periodic environment doctor, and (several brokers) the reload of shared
//! breaker and fallback state. They stop when the broker shuts down.

use std::time::Duration;

use tokio::time::{interval, interval_at, sleep_until, Instant};

use crate::{Broker, ServiceError};

/// Starts the periodic jobs in one task tracked with the executions.
pub(crate) fn spawn(b: &Broker) {
    let this = b.clone();
    b.inner.tasks.spawn(async move { run(this).await });
}

async fn run(b: Broker) {
    let cfg = b.inner.cfg.clone();
    let start = Instant::now();
    let mut sweep = interval_at(start + cfg.stale_sweep_every, cfg.stale_sweep_every);
    let mut prune = interval_at(start + cfg.log_prune_every, cfg.log_prune_every);
    // The first doctor run happens right at start, then every `doctor_every`.
    let doctor_on = cfg.doctor_every.is_some();
    let mut doctor = interval(
        cfg.doctor_every
            .unwrap_or(Duration::from_secs(365 * 24 * 3600)),
    );
    // With several brokers, breakers and overrides changed elsewhere are picked up every two
    // seconds.
    let mut shared = interval(Duration::from_secs(2));
    let cluster = cfg.cluster.is_some();
    let mut nightly = next_nightly(cfg.integrity_check_hour);
    loop {
        tokio::select! {
            _ = b.inner.stop.cancelled() => return,
            _ = shared.tick(), if cluster => reload_shared(&b).await,
            _ = doctor.tick(), if doctor_on => run_doctor(&b).await,
            _ = sleep_until(nightly) => {
                run_integrity_check(&b).await;
                nightly = next_nightly(cfg.integrity_check_hour);
            }
            _ = sweep.tick() => {
                if let Err(e) = crate::sessions::sweep_stale(&b).await {
                    tracing::warn!(error = %e, "stale-session sweep failed");
                }
            }
            _ = prune.tick() => prune_old(&b).await,
        }
    }
}

fn next_nightly(hour: u32) -> Instant {
    Instant::now() + until_next_local_hour(chrono::Local::now(), hour)
}

async fn reload_shared(b: &Broker) {
    if let Err(e) = b.inner.resilience.reload().await {
        tracing::warn!(error = %e, "could not reload shared breaker and fallback state");
    }
}

async fn run_doctor(b: &Broker) {
    let report = crate::environment::refresh(b).await;
    if !report.overall {
        let failing: Vec<&str> = report
            .results
            .iter()
            .filter(|r| !r.passed)
            .map(|r| r.cli_type.as_str())
            .collect();
        tracing::warn!(?failing, "environment doctor found problems");
    }
}

async fn run_integrity_check(b: &Broker) {
    match crate::integrity::check(b).await {
        Ok(r) if !r.passed => {
            tracing::warn!(
                issues = r.issues.len(),
                "nightly integrity check found issues"
            )
        }
        Ok(_) => tracing::info!("nightly integrity check passed"),
        Err(e) => tracing::warn!(error = %e, "nightly integrity check failed to run"),
    }
}

/// Deletes events past their retention and rotated logs past theirs.
async fn prune_old(b: &Broker) {
    if let Err(e) = cleanup_events(b, b.inner.cfg.event_retention_days).await {
        tracing::warn!(error = %e, "event retention failed");
    }
    let logs = b.inner.logs.clone();
    let now = std::time::SystemTime::from(b.inner.clock.now());
    match tokio::task::spawn_blocking(move || logs.prune(now, false)).await {
        Ok(Ok(done)) if !done.deleted.is_empty() => {
            tracing::info!(deleted = done.deleted.len(), "pruned old agent logs");
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "log pruning failed"),
        _ => {}
    }
}

/// Deletes telemetry events older than `days` days; returns how many.
pub(crate) async fn cleanup_events(b: &Broker, days: u32) -> Result<u64, ServiceError> {
    if days == 0 {
        return Err(ServiceError::invalid("days", "days must be at least 1"));
    }
    let cutoff = b.inner.clock.now() - chrono::Duration::days(i64::from(days));
    let deleted = b.inner.store.delete_events_before(cutoff).await?;
    if deleted > 0 {
        tracing::info!(deleted, days, "deleted old telemetry events");
    }
    Ok(deleted)
}

/// Time from `now` until the next `hour`:00 local time (tomorrow's if it has passed today).
fn until_next_local_hour(now: chrono::DateTime<chrono::Local>, hour: u32) -> Duration {
    use chrono::{Days, TimeZone};
    let hour = hour.min(23);
    let today = now
        .date_naive()
        .and_hms_opt(hour, 0, 0)
        .expect("valid hour");
    let mut next = chrono::Local
        .from_local_datetime(&today)
        .earliest()
        .unwrap_or(now);
    if next <= now {
        let tomorrow = today.checked_add_days(Days::new(1)).unwrap_or(today);
        next = chrono::Local
            .from_local_datetime(&tomorrow)
            .earliest()
            .unwrap_or(now + chrono::Duration::days(1));
    }
    (next - now).to_std().unwrap_or(Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_nightly_job_waits_for_the_next_occurrence_of_its_hour() {
        let at = |h, m| {
            chrono::Local
                .with_ymd_and_hms(2026, 3, 10, h, m, 0)
                .unwrap()
        };
        assert_eq!(
            until_next_local_hour(at(1, 30), 2),
            Duration::from_secs(30 * 60)
        );
        assert_eq!(
            until_next_local_hour(at(2, 0), 2),
            Duration::from_secs(24 * 3600)
        );
        assert_eq!(
            until_next_local_hour(at(23, 0), 2),
            Duration::from_secs(3 * 3600)
        );
    }
}
