//! Shadow-mode results and their aggregates.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;

use super::{ms, now, Fields, PgStore};
use crate::{NewShadowResult, Result, ShadowResult, ShadowSummary};

const COLUMNS: &str = "id, agent_id, execution_id, primary_mode, tmux_success, headless_success, \
     tmux_response, headless_response, tmux_error, headless_error, tmux_latency_ms, \
     headless_latency_ms, similarity, matched, diff, created_at";

fn decode(row: &PgRow) -> Result<ShadowResult> {
    let f = Fields::new(row, "shadow_results");
    Ok(ShadowResult {
        id: f.get("id")?,
        agent_id: f.get("agent_id")?,
        execution_id: f.get("execution_id")?,
        primary_mode: f.get("primary_mode")?,
        tmux_success: f.get("tmux_success")?,
        headless_success: f.get("headless_success")?,
        tmux_response: f.get("tmux_response")?,
        headless_response: f.get("headless_response")?,
        tmux_error: f.get("tmux_error")?,
        headless_error: f.get("headless_error")?,
        tmux_latency_ms: f.get("tmux_latency_ms")?,
        headless_latency_ms: f.get("headless_latency_ms")?,
        similarity: f.get("similarity")?,
        matched: f.get("matched")?,
        diff: f.get("diff")?,
        created_at: f.get("created_at")?,
    })
}

impl PgStore {
    pub(crate) async fn insert_shadow_result(&self, r: &NewShadowResult) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO shadow_results (agent_id, execution_id, primary_mode, tmux_success, \
               headless_success, tmux_response, headless_response, tmux_error, headless_error, \
               tmux_latency_ms, headless_latency_ms, similarity, matched, diff, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             RETURNING id",
        )
        .bind(&r.agent_id)
        .bind(&r.execution_id)
        .bind(&r.primary_mode)
        .bind(r.tmux_success)
        .bind(r.headless_success)
        .bind(r.tmux_response.as_deref())
        .bind(r.headless_response.as_deref())
        .bind(r.tmux_error.as_deref())
        .bind(r.headless_error.as_deref())
        .bind(r.tmux_latency_ms)
        .bind(r.headless_latency_ms)
        .bind(r.similarity)
        .bind(r.matched)
        .bind(r.diff.as_deref())
        .bind(now())
        .fetch_one(&self.pool)
        .await?;
        Fields::new(&row, "shadow_results").get("id")
    }

    pub(crate) async fn shadow_summary(&self, since: DateTime<Utc>) -> Result<ShadowSummary> {
        // COUNT(*) FILTER counts what SQLite sums as 0/1 integers; AVG of a BIGINT is NUMERIC in
        // PostgreSQL and is cast to the f64 the summary holds.
        let row = sqlx::query(
            "SELECT COUNT(*) AS total, \
               COUNT(*) FILTER (WHERE tmux_success) AS tmux_ok, \
               COUNT(*) FILTER (WHERE headless_success) AS headless_ok, \
               COUNT(*) FILTER (WHERE tmux_success AND headless_success) AS both_ok, \
               COUNT(*) FILTER (WHERE tmux_success AND NOT headless_success) AS only_tmux, \
               COUNT(*) FILTER (WHERE NOT tmux_success AND headless_success) AS only_headless, \
               COUNT(*) FILTER (WHERE NOT tmux_success AND NOT headless_success) AS both_failed, \
               COUNT(*) FILTER (WHERE matched) AS matched, \
               COUNT(*) FILTER (WHERE NOT matched) AS mismatched, \
               AVG(headless_latency_ms - tmux_latency_ms) \
                   FILTER (WHERE tmux_success AND headless_success)::DOUBLE PRECISION AS avg_delta, \
               COUNT(*) FILTER (WHERE tmux_success AND headless_success \
                                  AND headless_latency_ms < tmux_latency_ms) AS headless_faster, \
               MIN(created_at) AS first_at \
             FROM shadow_results WHERE created_at >= $1",
        )
        .bind(ms(since))
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
            avg_latency_delta_ms: f.get("avg_delta")?,
            headless_faster: n("headless_faster")?,
            first_at: f.get("first_at")?,
        })
    }

    pub(crate) async fn shadow_mismatches(&self, limit: u32) -> Result<Vec<ShadowResult>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM shadow_results WHERE matched = FALSE \
             ORDER BY created_at DESC, id DESC LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// Results where the given leg (`"headless"` or `"tmux"`) failed, newest first.
    pub(crate) async fn shadow_failures(&self, leg: &str, limit: u32) -> Result<Vec<ShadowResult>> {
        // The column name comes from this fixed pair, never from the caller's text.
        let column = if leg == "tmux" {
            "tmux_success"
        } else {
            "headless_success"
        };
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM shadow_results WHERE {column} = FALSE \
             ORDER BY created_at DESC, id DESC LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }
}
