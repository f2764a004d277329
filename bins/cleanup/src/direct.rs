//! Cleanup on the store itself, for when the broker is stopped or an operator prefers not to go
//! through it. The store is the truth here, so every session is re-checked against it right
//! before it is ended.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use kokino_core::AgentId;
use kokino_store::{NewEvent, Store};

use crate::backend::{days_ago, EndResult, Listing, Session};

pub struct Direct {
    store: Store,
    url: String,
}

impl Direct {
    pub async fn open(url: &str) -> Result<Direct> {
        // `Store::open` creates a missing database, which is right for the broker's first start
        // and wrong here: a mistyped --data-dir would "clean" a brand-new empty database and
        // report success. A cleanup tool only works on a database that already exists.
        if let Some(path) = sqlite_path(url) {
            if !path.exists() {
                bail!(
                    "there is no database at {}: point --data-dir (or --database-url, or \
                     --config) at the broker's data directory",
                    path.display()
                );
            }
        }
        let store = Store::open(url)
            .await
            .with_context(|| format!("cannot open the store {url}"))?;
        Ok(Direct {
            store,
            url: url.to_owned(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn running_agents(&self) -> Result<BTreeSet<AgentId>> {
        // A `running` row is either a run of the live broker or one a crashed broker left
        // behind; in both cases the session is not ours to end: the broker owns the first, and
        // recovers the second at its next start.
        Ok(self
            .store
            .running_executions()
            .await
            .context("cannot list running executions")?
            .into_iter()
            .map(|e| e.agent_id)
            .collect())
    }

    pub async fn sessions(&self, agent: Option<&AgentId>) -> Result<Listing> {
        let agent_exists = match agent {
            Some(id) => self
                .store
                .get_agent(id)
                .await
                .context("cannot read agents")?
                .is_some(),
            None => true,
        };
        let running = self.running_agents().await?;
        let sessions = self
            .store
            .list_sessions()
            .await
            .context("cannot list sessions")?
            .into_iter()
            .filter(|s| agent.is_none_or(|id| &s.agent_id == id))
            .map(|s| Session {
                busy: running.contains(&s.agent_id),
                agent: s.agent_id,
                last_activity: Some(s.last_activity_at),
                conversation: Some(s.conversation_id),
                cli_session: s.cli_session_id,
            })
            .collect();
        Ok(Listing {
            sessions,
            agent_exists,
            busy_agents: running.len(),
        })
    }

    pub async fn end_session(&self, agent: &AgentId, cutoff: DateTime<Utc>) -> Result<EndResult> {
        // The plan may be minutes old when the operator answers the question, so the session
        // is judged again on what the store says now.
        let Some(current) = self.store.get_session(agent).await? else {
            return Ok(EndResult::Gone);
        };
        if current.last_activity_at > cutoff {
            return Ok(EndResult::Active);
        }
        if self.running_agents().await?.contains(agent) {
            return Ok(EndResult::Busy);
        }
        let Some(ended) = self.store.end_session(agent).await? else {
            return Ok(EndResult::Gone);
        };
        // The broker records every ended session as an event; doing the same keeps the
        // telemetry complete when the broker is not the one ending it. Losing the event is not
        // worth failing a session that is already ended.
        let event = NewEvent {
            event_type: "SESSION_ENDED".into(),
            agent_id: Some(agent.to_string()),
            cli_type: None,
            duration_ms: None,
            success: None,
            metadata: serde_json::json!({
                "sessionId": ended.cli_session_id,
                "conversationId": ended.conversation_id,
                "reason": "cleanup",
                "lastActivityAt": ended.last_activity_at,
            }),
        };
        if let Err(e) = self.store.insert_event(&event).await {
            eprintln!("kokino-cleanup: warning: could not record SESSION_ENDED for {agent}: {e}");
        }
        Ok(EndResult::Ended)
    }

    pub async fn count_events(&self, days: u32) -> Result<u64> {
        Ok(self
            .store
            .count_events_before(days_ago(Utc::now(), days))
            .await?)
    }

    pub async fn delete_events(&self, days: u32) -> Result<u64> {
        Ok(self
            .store
            .delete_events_before(days_ago(Utc::now(), days))
            .await?)
    }
}

/// The file behind a SQLite URL, read the way the store reads it; `None` for other databases,
/// which `Store::open` judges itself.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    if url.contains("://") && !url.starts_with("sqlite://") {
        return None;
    }
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_are_read_like_the_store_reads_them() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/kokino/kokino.db"),
            Some(PathBuf::from("/var/lib/kokino/kokino.db"))
        );
        assert_eq!(
            sqlite_path("sqlite://./data/kokino.db?mode=rwc"),
            Some(PathBuf::from("./data/kokino.db"))
        );
        assert_eq!(sqlite_path("sqlite:x.db"), Some(PathBuf::from("x.db")));
        assert_eq!(sqlite_path("plain.db"), Some(PathBuf::from("plain.db")));
        assert_eq!(sqlite_path("postgres://host/db"), None);
        assert_eq!(sqlite_path("sqlite::memory:"), None);
    }
}
