//! Shadow-mode results and their aggregates.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{now, ts, Fields, SqliteStore};
use crate::{NewShadowResult, Result, ShadowResult, ShadowSummary};

const COLUMNS: &str = "id, agent_id, execution_id, primary_mode, tmux_success, headless_success, \
     tmux_response, headless_response, tmux_error, headless_error, tmux_latency_ms, \
     headless_latency_ms, similarity, matched, diff, created_at";

fn decode(row: &sqlx::sqlite::SqliteRow) -> Result<ShadowResult> {
    let f = Fields::new(row, "shadow_results");
    Ok(ShadowResult {
        id: f.get("id")?,
        agent_id: f.get("agent_id")?,
        execution_id: f.get("execution_id")?,
        primary_mode: f.get("primary_mode")?,
        tmux_success: f.get::<i64>("tmux_success")? == 1,
        headless_success: f.get::<i64>("headless_success")? == 1,
        tmux_response: f.get("tmux_response")?,
        headless_response: f.get("headless_response")?,
        tmux_error: f.get("tmux_error")?,
        headless_error: f.get("headless_error")?,
        tmux_latency_ms: f.get("tmux_latency_ms")?,
        headless_latency_ms: f.get("headless_latency_ms")?,
        similarity: f.get("similarity")?,
        matched: f.get::<Option<i64>>("matched")?.map(|m| m == 1),
        diff: f.get("diff")?,
        created_at: f.time("created_at")?,
    })
}

impl SqliteStore {
    pub(crate) async fn insert_shadow_result(&self, r: &NewShadowResult) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO shadow_results (agent_id, execution_id, primary_mode, tmux_success, \
               headless_success, tmux_response, headless_response, tmux_error, headless_error, \
               tmux_latency_ms, headless_latency_ms, similarity, matched, diff, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&r.agent_id)
        .bind(&r.execution_id)
        .bind(&r.primary_mode)
        .bind(i64::from(r.tmux_success))
        .bind(i64::from(r.headless_success))
        .bind(r.tmux_response.as_deref())
        .bind(r.headless_response.as_deref())
        .bind(r.tmux_error.as_deref())
        .bind(r.headless_error.as_deref())
        .bind(r.tmux_latency_ms)
        .bind(r.headless_latency_ms)
        .bind(r.similarity)
        .bind(r.matched.map(i64::from))
        .bind(r.diff.as_deref())
        .bind(ts(now()))
        .fetch_one(&self.writer)
        .await?;
        Fields::new(&row, "shadow_results").get("id")
    }

    pub(crate) async fn shadow_summary(&self, since: DateTime<Utc>) -> Result<ShadowSummary> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS total, \
               COALESCE(SUM(tmux_success), 0) AS tmux_ok, \
               COALESCE(SUM(headless_success), 0) AS headless_ok, \
               COALESCE(SUM(CASE WHEN tmux_success = 1 AND headless_success = 1 THEN 1 ELSE 0 END), 0) AS both_ok, \
               COALESCE(SUM(CASE WHEN tmux_success = 1 AND headless_success = 0 THEN 1 ELSE 0 END), 0) AS only_tmux, \
               COALESCE(SUM(CASE WHEN tmux_success = 0 AND headless_success = 1 THEN 1 ELSE 0 END), 0) AS only_headless, \
               COALESCE(SUM(CASE WHEN tmux_success = 0 AND headless_success = 0 THEN 1 ELSE 0 END), 0) AS both_failed, \
               COALESCE(SUM(CASE WHEN matched = 1 THEN 1 ELSE 0 END), 0) AS matched, \
               COALESCE(SUM(CASE WHEN matched = 0 THEN 1 ELSE 0 END), 0) AS mismatched, \
               AVG(CASE WHEN tmux_success = 1 AND headless_success = 1 \
                        THEN headless_latency_ms - tmux_latency_ms END) AS avg_delta, \
               COALESCE(SUM(CASE WHEN tmux_success = 1 AND headless_success = 1 \
                        AND headless_latency_ms < tmux_latency_ms THEN 1 ELSE 0 END), 0) AS headless_faster, \
               MIN(created_at) AS first_at \
             FROM shadow_results WHERE created_at >= ?",
        )
        .bind(ts(since))
        .fetch_one(&self.pool)
        .await?;
        let f = Fields::new(&row, "shadow_results");
        let n = |c: &str| -> Result<u64> { Ok(f.get::<i64>(c)?.max(0) as u64) };
        Ok(ShadowSummary {
            total: n("total")?,
            tmux_succeeded: n("tmux_ok")?,
            headless_succeeded: n("headless_ok")?,
            both_succeeded: n("both_ok")?,
            only_tmux_succeeded: n("only_tmux")?,
            only_headless_succeeded: n("only_headless")?,
            both_failed: n("both_failed")?,
            matched: n("matched")?,
            mismatched: n("mismatched")?,
            avg_latency_delta_ms: row.try_get::<Option<f64>, _>("avg_delta").unwrap_or(None),
            headless_faster: n("headless_faster")?,
            first_at: f.time_opt("first_at")?,
        })
    }

    pub(crate) async fn shadow_mismatches(&self, limit: u32) -> Result<Vec<ShadowResult>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM shadow_results WHERE matched = 0 \
             ORDER BY created_at DESC, id DESC LIMIT ?"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// Results where the given leg (`"headless"` or `"tmux"`) failed, newest first.
    pub(crate) async fn shadow_failures(&self, leg: &str, limit: u32) -> Result<Vec<ShadowResult>> {
        let column = if leg == "tmux" {
            "tmux_success"
        } else {
            "headless_success"
        };
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM shadow_results WHERE {column} = 0 \
             ORDER BY created_at DESC, id DESC LIMIT ?"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }
}
