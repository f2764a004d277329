//! Cleanup through a running broker. Ending a session this way goes through the broker's own
//! end-session, which also forgets the session in the broker's memory and records the event;
//! it is the right way whenever the broker is up. The broker is spoken to with `kokino-client`,
//! whose types are the broker's own.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use kokino_client::{Client, Error as ClientError, ErrorCode, SessionStatus};
use kokino_core::AgentId;

use crate::backend::{EndResult, Fatal, Listing, Session};

pub struct Remote {
    client: Client,
    url: String,
}

impl Remote {
    /// Builds the client and fetches the session status once, so that a wrong URL or a broker
    /// that is down is found before anything is planned.
    pub async fn connect(url: &str, token: Option<String>) -> Result<Remote> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // End-session waits for a cancelled run to stop, which the broker bounds by its
            // kill grace; a minute covers that with room to spare.
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot build the HTTP client")?;
        let mut client = Client::with_http(url, http).map_err(|e| anyhow!("{e}"))?;
        if let Some(t) = token {
            client = client.with_token(t);
        }
        let remote = Remote {
            client,
            url: url.to_owned(),
        };
        remote.status().await?;
        Ok(remote)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn status(&self) -> Result<Vec<SessionStatus>> {
        self.client.sessions_status().await.map_err(|e| match e {
            ClientError::Transport(e) => anyhow!("cannot reach the broker at {}: {e}", self.url),
            ClientError::Decode { .. } => anyhow!(
                "GET {}/agents/sessions/status answered something that is not a session list: {e}",
                self.url
            ),
            other => refused(other),
        })
    }

    pub async fn sessions(&self, agent: Option<&AgentId>) -> Result<Listing> {
        let rows = self.status().await?;
        let agent_exists = agent.is_none_or(|id| rows.iter().any(|r| r.agent_id == id.as_str()));
        let busy_agents = rows.iter().filter(|r| r.executing).count();
        let mut sessions = Vec::new();
        for row in rows {
            if !row.has_session || agent.is_some_and(|id| row.agent_id != id.as_str()) {
                continue;
            }
            // The broker only lists agents it validated; an id it would refuse is skipped
            // rather than sent back in a URL.
            let Ok(id) = AgentId::parse(&row.agent_id) else {
                eprintln!(
                    "kokino-cleanup: warning: the broker listed an invalid agent id {:?}; skipped",
                    row.agent_id
                );
                continue;
            };
            sessions.push(Session {
                agent: id,
                last_activity: row.last_activity_at,
                conversation: None,
                cli_session: row.session_id,
                // A locked agent is running or about to run; the broker's end-session would
                // cancel that run, which is not what a cleanup of idle sessions is for.
                busy: row.executing || row.locked,
            });
        }
        Ok(Listing {
            sessions,
            agent_exists,
            busy_agents,
        })
    }

    pub async fn end_session(&self, agent: &AgentId) -> Result<EndResult> {
        match self.client.end_session(agent.as_str()).await {
            Ok(r) if r.ended => Ok(EndResult::Ended),
            Ok(_) => Ok(EndResult::Gone),
            // The agent was deleted since the listing: its session went with it.
            Err(e) if e.status() == Some(404) => Ok(EndResult::Gone),
            Err(ClientError::Transport(e)) => Err(anyhow!("cannot reach the broker: {e}")),
            Err(e) => Err(refused(e)),
        }
    }

    pub async fn delete_events(&self, days: u32) -> Result<u64> {
        match self.client.cleanup_events(days).await {
            Ok(r) => Ok(r.deleted),
            Err(ClientError::Transport(e)) => Err(anyhow!("cannot reach the broker: {e}")),
            Err(e @ ClientError::Decode { .. }) => Err(anyhow!(
                "the broker's answer to /api/metrics/cleanup does not have the documented shape: {e}"
            )),
            Err(e) => Err(refused(e)),
        }
    }
}

/// Turns an error answer into an error carrying the broker's message. A refused token is
/// [`Fatal`]: every later request would be refused the same way.
fn refused(e: ClientError) -> anyhow::Error {
    let (status, message) = match &e {
        ClientError::Api { status, body, .. } => (*status, body.error.clone()),
        ClientError::Unexpected { status, snippet } => (*status, snippet.clone()),
        other => return anyhow!("{other}"),
    };
    let auth = matches!(
        e.code(),
        Some(ErrorCode::Unauthorized | ErrorCode::ForbiddenHost | ErrorCode::ForbiddenOrigin)
    ) || status == 401
        || status == 403;
    if auth {
        return Fatal(format!(
            "the broker refused the request ({status}: {message}); pass the broker's token \
             with --token-file"
        ))
        .into();
    }
    anyhow!("the broker answered {status}: {message}")
}
