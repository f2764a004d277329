//! Aggregates for SLOs and the metrics endpoints, computed in SQL (grouping, window functions)
//! so that a status call reads a few rows, never every execution. The queries are those of the
//! SQLite backend; where PostgreSQL types differ (AVG of a BIGINT is NUMERIC) the result is cast
//! to what the domain expects, and result rows are ordered explicitly where SQLite's grouping
//! happens to return them sorted.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{ms, Fields, PgStore};
use crate::{DurationStats, OutcomeCount, Result};

/// Owned strings for a `= ANY($n)` array parameter.
fn text_array(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

impl PgStore {
    /// Finished executions since `since`, counted by CLI type, agent and outcome class, with the
    /// time of the latest failure in each group.
    pub(crate) async fn outcome_counts(&self, since: DateTime<Utc>) -> Result<Vec<OutcomeCount>> {
        let rows = sqlx::query(
            "SELECT cli_type, agent_id, outcome, COUNT(*) AS n, MAX(finished_at) AS last_at \
             FROM executions \
             WHERE state = 'finished' AND finished_at >= $1 AND outcome IS NOT NULL \
             GROUP BY cli_type, agent_id, outcome \
             ORDER BY cli_type, agent_id, outcome",
        )
        .bind(ms(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let f = Fields::new(row, "executions");
                Ok(OutcomeCount {
                    cli_type: f.get("cli_type")?,
                    agent_id: f.get("agent_id")?,
                    outcome: f.get("outcome")?,
                    count: f.get::<i64>("n")?.max(0) as u64,
                    last_at: f.get("last_at")?,
                })
            })
            .collect()
    }

    /// Counts of the given event types since `since`.
    pub(crate) async fn event_counts(
        &self,
        types: &[&str],
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, u64)>> {
        if types.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT type, COUNT(*) AS n FROM events \
             WHERE at >= $1 AND type = ANY($2) GROUP BY type ORDER BY type",
        )
        .bind(ms(since))
        .bind(text_array(types))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let f = Fields::new(row, "events");
                Ok((f.get("type")?, f.get::<i64>("n")?.max(0) as u64))
            })
            .collect()
    }

    /// Duration statistics (nearest-rank percentiles) of finished executions since `since`
    /// whose outcome is in `outcomes`, per agent (`by_agent`) or over all agents (one row with
    /// an empty agent id).
    pub(crate) async fn duration_stats(
        &self,
        since: DateTime<Utc>,
        outcomes: &[&str],
        by_agent: bool,
    ) -> Result<Vec<DurationStats>> {
        // Over all agents the window is the whole result, written as an empty OVER () rather
        // than SQLite's partition by a constant, which says the same thing less plainly.
        let (key, partition) = if by_agent {
            ("agent_id", "PARTITION BY agent_id")
        } else {
            ("''::text", "")
        };
        // The percentile ranks use BIGINT arithmetic, whose division truncates like SQLite's
        // integer division, so `(n * 95 + 99) / 100` is the same ceiling on both backends.
        let sql = format!(
            "WITH d AS ( \
               SELECT {key} AS k, duration_ms, \
                      ROW_NUMBER() OVER ({partition} ORDER BY duration_ms) AS rn, \
                      COUNT(*) OVER ({partition}) AS n \
               FROM executions \
               WHERE state = 'finished' AND duration_ms IS NOT NULL AND finished_at >= $1 \
                 AND outcome = ANY($2)) \
             SELECT k, MAX(n) AS n, AVG(duration_ms)::DOUBLE PRECISION AS avg_ms, \
               MAX(duration_ms) AS max_ms, \
               MIN(CASE WHEN rn >= (n * 50 + 99) / 100 THEN duration_ms END) AS p50, \
               MIN(CASE WHEN rn >= (n * 95 + 99) / 100 THEN duration_ms END) AS p95, \
               MIN(CASE WHEN rn >= (n * 99 + 99) / 100 THEN duration_ms END) AS p99 \
             FROM d GROUP BY k ORDER BY k"
        );
        let rows = sqlx::query(&sql)
            .bind(ms(since))
            .bind(text_array(outcomes))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let f = Fields::new(row, "executions");
                Ok(DurationStats {
                    agent_id: f.get("k")?,
                    count: f.get::<i64>("n")?.max(0) as u64,
                    avg_ms: f.get::<Option<f64>>("avg_ms")?.unwrap_or(0.0),
                    p50_ms: f.get::<i64>("p50")?.max(0) as u64,
                    p95_ms: f.get::<i64>("p95")?.max(0) as u64,
                    p99_ms: f.get::<i64>("p99")?.max(0) as u64,
                    max_ms: f.get::<i64>("max_ms")?.max(0) as u64,
                })
            })
            .collect()
    }

    /// Average peak RSS (MB) of finished executions since `since` that recorded one.
    pub(crate) async fn avg_peak_rss_mb(&self, since: DateTime<Utc>) -> Result<Option<f64>> {
        let row = sqlx::query(
            "SELECT AVG(peak_rss_mb)::DOUBLE PRECISION AS avg_mb FROM executions \
             WHERE state = 'finished' AND finished_at >= $1 AND peak_rss_mb > 0",
        )
        .bind(ms(since))
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<Option<f64>, _>("avg_mb").unwrap_or(None))
    }

    /// The most frequent failure messages per CLI type since `since`, at most `per_cli` each.
    pub(crate) async fn top_failure_reasons(
        &self,
        since: DateTime<Utc>,
        per_cli: u32,
    ) -> Result<Vec<(String, String, u64)>> {
        // `substr` counts characters on both backends, so the 120-character cut is the same.
        let rows = sqlx::query(
            "SELECT cli_type, reason, n FROM ( \
               SELECT cli_type, \
                      outcome || ': ' || COALESCE(substr(error_message, 1, 120), '') AS reason, \
                      COUNT(*) AS n, \
                      ROW_NUMBER() OVER (PARTITION BY cli_type ORDER BY COUNT(*) DESC) AS rn \
               FROM executions \
               WHERE state = 'finished' AND finished_at >= $1 \
                 AND outcome NOT IN ('success', 'cancelled', 'interrupted') \
               GROUP BY cli_type, reason \
             ) AS ranked WHERE rn <= $2 ORDER BY cli_type, n DESC",
        )
        .bind(ms(since))
        .bind(i64::from(per_cli))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let f = Fields::new(row, "executions");
                Ok((
                    f.get("cli_type")?,
                    f.get("reason")?,
                    f.get::<i64>("n")?.max(0) as u64,
                ))
            })
            .collect()
    }
}
