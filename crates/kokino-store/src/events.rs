//! Telemetry events, and the persisted state of circuit breakers and fallback overrides.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::db::{now, plan_of, Arg, Fields, Query, Row};
use crate::{Event, EventFilter, FallbackRow, NewEvent, Result, Store};

/// Default and maximum number of events one `list_events` call returns.
const DEFAULT_EVENT_LIMIT: u32 = 100;
const MAX_EVENT_LIMIT: u32 = 10_000;

const EVENT_COLUMNS: &str = "id, type, agent_id, cli_type, duration_ms, success, metadata, at";

/// Events per multi-row INSERT. Seven parameters per row keeps each statement far below the
/// parameter limits of both databases (SQLite's 32766, PostgreSQL's 65535).
const EVENTS_PER_STATEMENT: usize = 500;

impl Store {
    // ---- events ----

    /// Records one event; returns its id.
    pub async fn insert_event(&self, event: &NewEvent) -> Result<i64> {
        let mut query = Query::new(
            "INSERT INTO events (type, agent_id, cli_type, duration_ms, success, metadata, at) \
             VALUES ",
        );
        push_event(&mut query, event, now());
        query.push(" RETURNING id");
        let row = query.fetch_one(self.db.write()).await?;
        Fields::new(&row, "events").int("id")
    }

    /// Inserts several events in one transaction; used by the batching event writer, so a burst
    /// costs one commit, not one per event.
    ///
    /// Events are telemetry: on SQLite this write is lazy (it may wait up to 50 ms to share the
    /// commit of an execution's write), so that recording them costs no fsync of its own while
    /// executions are running.
    pub async fn insert_events(&self, events: &[NewEvent]) -> Result<()> {
        let at = now();
        let events = Arc::new(events.to_vec());
        let statements = move |events: &[NewEvent]| {
            events
                .chunks(EVENTS_PER_STATEMENT)
                .map(|chunk| {
                    let mut query = Query::new(
                        "INSERT INTO events \
                         (type, agent_id, cli_type, duration_ms, success, metadata, at) \
                         VALUES ",
                    );
                    for (i, event) in chunk.iter().enumerate() {
                        if i > 0 {
                            query.push(", ");
                        }
                        push_event(&mut query, event, at);
                    }
                    query
                })
                .collect::<Vec<_>>()
        };
        let for_plan = events.clone();
        self.db
            .grouped_plan_lazily(
                move || plan_of(statements(&for_plan)),
                move |tx| {
                    let events = events.clone();
                    Box::pin(async move {
                        for query in statements(&events) {
                            query.execute(&mut *tx).await?;
                        }
                        Ok(())
                    })
                },
            )
            .await
    }

    /// Deletes events older than `before` (retention); returns how many were deleted.
    pub async fn delete_events_before(&self, before: DateTime<Utc>) -> Result<u64> {
        Query::new("DELETE FROM events WHERE at < $1")
            .bind(before)
            .execute(self.db.write())
            .await
    }

    /// How many events are older than `before` (what a dry run would delete).
    pub async fn count_events_before(&self, before: DateTime<Utc>) -> Result<u64> {
        let row = Query::new("SELECT COUNT(*) AS n FROM events WHERE at < $1")
            .bind(before)
            .fetch_one(self.db.read())
            .await?;
        Fields::new(&row, "events").count("n")
    }

    /// Events newest first, filtered; `limit` 0 means the default of 100.
    pub async fn list_events(&self, filter: &EventFilter) -> Result<Vec<Event>> {
        let limit = match filter.limit {
            0 => DEFAULT_EVENT_LIMIT,
            n => n.min(MAX_EVENT_LIMIT),
        };
        let mut query = Query::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE TRUE"));
        if let Some(event_type) = &filter.event_type {
            query.push(" AND type = ").push_bind(event_type);
        }
        if let Some(agent_id) = &filter.agent_id {
            query.push(" AND agent_id = ").push_bind(agent_id);
        }
        if let Some(since) = filter.since {
            query.push(" AND at >= ").push_bind(since);
        }
        query
            .push(" ORDER BY at DESC, id DESC LIMIT ")
            .push_bind(i64::from(limit));
        query
            .fetch_all(self.db.read())
            .await?
            .iter()
            .map(decode_event)
            .collect()
    }

    // ---- breakers and fallback ----

    /// Inserts or replaces the persisted state of one circuit breaker. `scope` is `"agent"` or
    /// `"cli"`, `key` the agent id or CLI type; `snapshot` is whatever the breaker serialises to
    /// (`kokino_core::breaker::BreakerSnapshot`): the store keeps it as opaque JSON.
    pub async fn save_circuit(
        &self,
        scope: &str,
        key: &str,
        snapshot: &serde_json::Value,
    ) -> Result<()> {
        Query::new(
            "INSERT INTO circuit_states (scope, key, snapshot, updated_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (scope, key) DO UPDATE SET \
                snapshot = EXCLUDED.snapshot, updated_at = EXCLUDED.updated_at",
        )
        .bind(scope)
        .bind(key)
        .bind(Arg::json(snapshot))
        .bind(now())
        .execute(self.db.write())
        .await?;
        Ok(())
    }

    /// Every persisted breaker as `(scope, key, snapshot)`, ordered by scope and key.
    pub async fn load_circuits(&self) -> Result<Vec<(String, String, serde_json::Value)>> {
        Query::new("SELECT scope, key, snapshot FROM circuit_states ORDER BY scope, key")
            .fetch_all(self.db.read())
            .await?
            .iter()
            .map(|row| {
                let f = Fields::new(row, "circuit_states");
                Ok((f.text("scope")?, f.text("key")?, f.json("snapshot")?))
            })
            .collect()
    }

    /// Forgets one breaker (its agent was deleted). Returns whether it was stored.
    pub async fn delete_circuit(&self, scope: &str, key: &str) -> Result<bool> {
        let deleted = Query::new("DELETE FROM circuit_states WHERE scope = $1 AND key = $2")
            .bind(scope)
            .bind(key)
            .execute(self.db.write())
            .await?;
        Ok(deleted > 0)
    }

    /// Inserts or replaces one fallback override: `kind` `"cli"` (a disabled CLI type) or
    /// `"agent"` (an agent forced to tmux). Any other kind is rejected by the database.
    pub async fn put_fallback(
        &self,
        kind: &str,
        key: &str,
        reason: &str,
        since: DateTime<Utc>,
        auto: bool,
    ) -> Result<()> {
        Query::new(
            "INSERT INTO fallback_overrides (kind, key, reason, since, auto) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (kind, key) DO UPDATE SET \
                reason = EXCLUDED.reason, since = EXCLUDED.since, auto = EXCLUDED.auto",
        )
        .bind(kind)
        .bind(key)
        .bind(reason)
        .bind(since)
        .bind(auto)
        .execute(self.db.write())
        .await?;
        Ok(())
    }

    /// Removes one override. Returns whether it was stored.
    pub async fn delete_fallback(&self, kind: &str, key: &str) -> Result<bool> {
        let deleted = Query::new("DELETE FROM fallback_overrides WHERE kind = $1 AND key = $2")
            .bind(kind)
            .bind(key)
            .execute(self.db.write())
            .await?;
        Ok(deleted > 0)
    }

    /// Removes every override of both kinds. Returns how many there were.
    pub async fn clear_fallbacks(&self) -> Result<u64> {
        Query::new("DELETE FROM fallback_overrides")
            .execute(self.db.write())
            .await
    }

    /// Every override, ordered by kind and key.
    pub async fn load_fallbacks(&self) -> Result<Vec<FallbackRow>> {
        Query::new(
            "SELECT kind, key, reason, since, auto FROM fallback_overrides ORDER BY kind, key",
        )
        .fetch_all(self.db.read())
        .await?
        .iter()
        .map(|row| {
            let f = Fields::new(row, "fallback_overrides");
            Ok(FallbackRow {
                kind: f.text("kind")?,
                key: f.text("key")?,
                reason: f.text("reason")?,
                since: f.time("since")?,
                auto: f.bool("auto")?,
            })
        })
        .collect()
    }
}

/// Appends one event's parenthesised values to a multi-row INSERT.
fn push_event(query: &mut Query, event: &NewEvent, at: DateTime<Utc>) {
    query.push("(").push_bind(&event.event_type);
    query.push(", ").push_bind(event.agent_id.as_deref());
    query.push(", ").push_bind(event.cli_type.as_deref());
    query.push(", ").push_bind(event.duration_ms);
    query.push(", ").push_bind(event.success);
    query.push(", ").push_bind(Arg::json(&event.metadata));
    query.push(", ").push_bind(at).push(")");
}

fn decode_event(row: &Row) -> Result<Event> {
    let f = Fields::new(row, "events");
    Ok(Event {
        id: f.int("id")?,
        event_type: f.text("type")?,
        agent_id: f.opt_text("agent_id")?,
        cli_type: f.opt_text("cli_type")?,
        duration_ms: f.opt_int("duration_ms")?,
        success: f.opt_bool("success")?,
        metadata: f.json("metadata")?,
        at: f.time("at")?,
    })
}
