//! Shadow-mode results and their aggregates.

use chrono::{DateTime, Utc};

use crate::db::{now, Fields, Query, Row};
use crate::{NewShadowResult, Result, ShadowResult, ShadowSummary, Store};

const COLUMNS: &str = "id, agent_id, execution_id, primary_mode, tmux_success, headless_success, \
     tmux_response, headless_response, tmux_error, headless_error, tmux_latency_ms, \
     headless_latency_ms, similarity, matched, diff, created_at";

impl Store {
    /// Records one shadow execution; returns its id.
    pub async fn insert_shadow_result(&self, r: &NewShadowResult) -> Result<i64> {
        let row = Query::new(
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
        .fetch_one(self.db.write())
        .await?;
        Fields::new(&row, "shadow_results").int("id")
    }

    /// Aggregates of the results recorded since `since`.
    pub async fn shadow_summary(&self, since: DateTime<Utc>) -> Result<ShadowSummary> {
        // Booleans are conditions on both backends (SQLite's 0/1 included), so FILTER counts
        // them alike; AVG is cast because PostgreSQL's AVG of a BIGINT is NUMERIC.
        let row = Query::new(
            "SELECT COUNT(*) AS total, \
               COUNT(*) FILTER (WHERE tmux_success) AS tmux_ok, \
               COUNT(*) FILTER (WHERE headless_success) AS headless_ok, \
               COUNT(*) FILTER (WHERE tmux_success AND headless_success) AS both_ok, \
               COUNT(*) FILTER (WHERE tmux_success AND NOT headless_success) AS only_tmux, \
               COUNT(*) FILTER (WHERE NOT tmux_success AND headless_success) AS only_headless, \
               COUNT(*) FILTER (WHERE NOT tmux_success AND NOT headless_success) AS both_failed, \
               COUNT(*) FILTER (WHERE matched) AS matched, \
               COUNT(*) FILTER (WHERE NOT matched) AS mismatched, \
               CAST(AVG(headless_latency_ms - tmux_latency_ms) \
                   FILTER (WHERE tmux_success AND headless_success) AS DOUBLE PRECISION) \
                   AS avg_delta, \
               COUNT(*) FILTER (WHERE tmux_success AND headless_success \
                                  AND headless_latency_ms < tmux_latency_ms) AS headless_faster, \
               MIN(created_at) AS first_at \
             FROM shadow_results WHERE created_at >= $1",
        )
        .bind(since)
        .fetch_one(self.db.read())
        .await?;
        let f = Fields::new(&row, "shadow_results");
        Ok(ShadowSummary {
            total: f.count("total")?,
            tmux_succeeded: f.count("tmux_ok")?,
            headless_succeeded: f.count("headless_ok")?,
            both_succeeded: f.count("both_ok")?,
            only_tmux_succeeded: f.count("only_tmux")?,
            only_headless_succeeded: f.count("only_headless")?,
            both_failed: f.count("both_failed")?,
            matched: f.count("matched")?,
            mismatched: f.count("mismatched")?,
            avg_latency_delta_ms: f.opt_real("avg_delta")?,
            headless_faster: f.count("headless_faster")?,
            first_at: f.opt_time("first_at")?,
        })
    }

    /// Results whose answers did not match, newest first.
    pub async fn shadow_mismatches(&self, limit: u32) -> Result<Vec<ShadowResult>> {
        self.shadow_results_where("matched = FALSE", limit).await
    }

    /// Results where `leg` (`"headless"` or `"tmux"`) failed, newest first.
    pub async fn shadow_failures(&self, leg: &str, limit: u32) -> Result<Vec<ShadowResult>> {
        // The column name comes from this fixed pair, never from the caller's text.
        let condition = if leg == "tmux" {
            "tmux_success = FALSE"
        } else {
            "headless_success = FALSE"
        };
        self.shadow_results_where(condition, limit).await
    }

    async fn shadow_results_where(&self, condition: &str, limit: u32) -> Result<Vec<ShadowResult>> {
        Query::new(format!(
            "SELECT {COLUMNS} FROM shadow_results WHERE {condition} \
             ORDER BY created_at DESC, id DESC LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(self.db.read())
        .await?
        .iter()
        .map(decode)
        .collect()
    }
}

fn decode(row: &Row) -> Result<ShadowResult> {
    let f = Fields::new(row, "shadow_results");
    Ok(ShadowResult {
        id: f.int("id")?,
        agent_id: f.text("agent_id")?,
        execution_id: f.text("execution_id")?,
        primary_mode: f.text("primary_mode")?,
        tmux_success: f.bool("tmux_success")?,
        headless_success: f.bool("headless_success")?,
        tmux_response: f.opt_text("tmux_response")?,
        headless_response: f.opt_text("headless_response")?,
        tmux_error: f.opt_text("tmux_error")?,
        headless_error: f.opt_text("headless_error")?,
        tmux_latency_ms: f.int("tmux_latency_ms")?,
        headless_latency_ms: f.int("headless_latency_ms")?,
        similarity: f.opt_real("similarity")?,
        matched: f.opt_bool("matched")?,
        diff: f.opt_text("diff")?,
        created_at: f.time("created_at")?,
    })
}
