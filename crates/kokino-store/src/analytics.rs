//! Aggregates for SLOs and the metrics endpoints, computed in SQL (grouping, window functions)
//! so that a status call reads a few rows, never every execution. The statements are the same
//! on both backends: averages are cast because PostgreSQL's AVG of a BIGINT is NUMERIC, and
//! result rows are ordered explicitly rather than in whatever order grouping produced.

use chrono::{DateTime, Utc};

use crate::db::{Arg, Fields, Query};
use crate::{DurationStats, OutcomeCount, Result, Store};

impl Store {
    /// Finished executions since `since`, counted by CLI type, agent and outcome class, with the
    /// time the latest of each group finished.
    pub async fn outcome_counts(&self, since: DateTime<Utc>) -> Result<Vec<OutcomeCount>> {
        Query::new(
            "SELECT cli_type, agent_id, outcome, COUNT(*) AS n, MAX(finished_at) AS last_at \
             FROM executions \
             WHERE state = 'finished' AND finished_at >= $1 AND outcome IS NOT NULL \
             GROUP BY cli_type, agent_id, outcome \
             ORDER BY cli_type, agent_id, outcome",
        )
        .bind(since)
        .fetch_all(self.db.read())
        .await?
        .iter()
        .map(|row| {
            let f = Fields::new(row, "executions");
            Ok(OutcomeCount {
                cli_type: f.text("cli_type")?,
                agent_id: f.text("agent_id")?,
                outcome: f.text("outcome")?,
                count: f.count("n")?,
                last_at: f.opt_time("last_at")?,
            })
        })
        .collect()
    }

    /// Counts of the given event types since `since`.
    pub async fn event_counts(
        &self,
        types: &[&str],
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, u64)>> {
        if types.is_empty() {
            return Ok(Vec::new());
        }
        Query::new(format!(
            "SELECT type, COUNT(*) AS n FROM events \
             WHERE at >= $1 AND {} GROUP BY type ORDER BY type",
            self.db.in_list("type", 2)
        ))
        .bind(since)
        .bind(Arg::list(types))
        .fetch_all(self.db.read())
        .await?
        .iter()
        .map(|row| {
            let f = Fields::new(row, "events");
            Ok((f.text("type")?, f.count("n")?))
        })
        .collect()
    }

    /// Nearest-rank percentiles of the durations of finished executions since `since` whose
    /// outcome is in `outcomes`, per agent (`by_agent`) or over all agents (one row with an empty
    /// agent id).
    pub async fn duration_stats(
        &self,
        since: DateTime<Utc>,
        outcomes: &[&str],
        by_agent: bool,
    ) -> Result<Vec<DurationStats>> {
        // Over all agents the window is the whole result, an empty OVER ().
        let (key, partition) = if by_agent {
            ("agent_id", "PARTITION BY agent_id")
        } else {
            ("CAST('' AS TEXT)", "")
        };
        // The percentile ranks use integer arithmetic, whose division truncates on both
        // backends, so `(n * 95 + 99) / 100` is the same ceiling everywhere.
        let sql = format!(
            "WITH d AS ( \
               SELECT {key} AS k, duration_ms, \
                      ROW_NUMBER() OVER ({partition} ORDER BY duration_ms) AS rn, \
                      COUNT(*) OVER ({partition}) AS n \
               FROM executions \
               WHERE state = 'finished' AND duration_ms IS NOT NULL AND finished_at >= $1 \
                 AND {outcome_in}) \
             SELECT k, MAX(n) AS n, CAST(AVG(duration_ms) AS DOUBLE PRECISION) AS avg_ms, \
               MAX(duration_ms) AS max_ms, \
               MIN(CASE WHEN rn >= (n * 50 + 99) / 100 THEN duration_ms END) AS p50, \
               MIN(CASE WHEN rn >= (n * 95 + 99) / 100 THEN duration_ms END) AS p95, \
               MIN(CASE WHEN rn >= (n * 99 + 99) / 100 THEN duration_ms END) AS p99 \
             FROM d GROUP BY k ORDER BY k",
            outcome_in = self.db.in_list("outcome", 2)
        );
        Query::new(sql)
            .bind(since)
            .bind(Arg::list(outcomes))
            .fetch_all(self.db.read())
            .await?
            .iter()
            .map(|row| {
                let f = Fields::new(row, "executions");
                Ok(DurationStats {
                    agent_id: f.text("k")?,
                    count: f.count("n")?,
                    avg_ms: f.opt_real("avg_ms")?.unwrap_or(0.0),
                    p50_ms: f.count("p50")?,
                    p95_ms: f.count("p95")?,
                    p99_ms: f.count("p99")?,
                    max_ms: f.count("max_ms")?,
                })
            })
            .collect()
    }

    /// Average peak RSS (MB) of finished executions since `since` that recorded one.
    pub async fn avg_peak_rss_mb(&self, since: DateTime<Utc>) -> Result<Option<f64>> {
        let row = Query::new(
            "SELECT CAST(AVG(peak_rss_mb) AS DOUBLE PRECISION) AS avg_mb FROM executions \
             WHERE state = 'finished' AND finished_at >= $1 AND peak_rss_mb > 0",
        )
        .bind(since)
        .fetch_one(self.db.read())
        .await?;
        Fields::new(&row, "executions").opt_real("avg_mb")
    }

    /// `(cli_type, reason, count)`, the most frequent failure reasons per CLI type since
    /// `since`, at most `per_cli` each.
    pub async fn top_failure_reasons(
        &self,
        since: DateTime<Utc>,
        per_cli: u32,
    ) -> Result<Vec<(String, String, u64)>> {
        // `substr` counts characters on both backends, so the 120-character cut is the same.
        Query::new(
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
        .bind(since)
        .bind(i64::from(per_cli))
        .fetch_all(self.db.read())
        .await?
        .iter()
        .map(|row| {
            let f = Fields::new(row, "executions");
            Ok((f.text("cli_type")?, f.text("reason")?, f.count("n")?))
        })
        .collect()
    }
}
