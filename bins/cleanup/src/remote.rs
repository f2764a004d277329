//! Cleanup through a running broker. Ending a session this way goes through the broker's own
//! end-session, which also forgets the session in the broker's memory and records the event;
//! it is the right way whenever the broker is up.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use chrono::{DateTime, Utc};
use kokino_core::AgentId;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::backend::{EndResult, Fatal, Listing, Session};

pub struct Remote {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
}

/// One row of `GET /agents/sessions/status`. Only what cleanup needs; other fields are ignored
/// so that the broker can add some without breaking this tool.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusRow {
    agent_id: String,
    session_id: Option<String>,
    has_session: bool,
    #[serde(default)]
    locked: bool,
    #[serde(default)]
    executing: bool,
    last_activity_at: Option<DateTime<Utc>>,
}

impl Remote {
    /// Builds the client and fetches the session status once, so that a wrong URL or a broker
    /// that is down is found before anything is planned.
    pub async fn connect(url: &str, token: Option<String>) -> Result<Remote> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // End-session waits for a cancelled run to stop, which the broker bounds by its
            // kill grace; a minute covers that with room to spare.
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot build the HTTP client")?;
        let remote = Remote {
            client,
            url: url.to_owned(),
            token,
        };
        remote.status().await?;
        Ok(remote)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn post(&self, path: &str) -> RequestBuilder {
        let req = self.client.post(format!("{}{path}", self.url));
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    async fn status(&self) -> Result<Vec<StatusRow>> {
        let url = format!("{}/agents/sessions/status", self.url);
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach the broker at {}: {e}", self.url))?;
        let resp = check(resp).await.map_err(|e| anyhow!("GET {url}: {e}"))?;
        resp.json()
            .await
            .with_context(|| format!("GET {url} answered something that is not a session list"))
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
        let resp = self
            .post(&format!("/agents/{agent}/end-session"))
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach the broker: {e}"))?;
        if resp.status() == StatusCode::NOT_FOUND {
            // The agent was deleted since the listing: its session went with it.
            return Ok(EndResult::Gone);
        }
        let body: Value = check(resp).await?.json().await.unwrap_or(Value::Null);
        Ok(if body["ended"] == Value::Bool(false) {
            EndResult::Gone
        } else {
            EndResult::Ended
        })
    }

    pub async fn delete_events(&self, days: u32) -> Result<u64> {
        let resp = self
            .post(&format!("/api/metrics/cleanup?days={days}"))
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach the broker: {e}"))?;
        let body: Value = check(resp)
            .await?
            .json()
            .await
            .context("the broker's answer to /api/metrics/cleanup is not JSON")?;
        body["deleted"]
            .as_u64()
            .ok_or_else(|| anyhow!("the broker's answer has no `deleted` count: {body}"))
    }
}

/// Passes a 2xx through; turns anything else into an error carrying the broker's message. A
/// refused token is [`Fatal`]: every later request would be refused the same way.
async fn check(resp: Response) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let text = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(300).collect());
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(Fatal(format!(
            "the broker refused the request ({status}: {message}); pass the broker's token \
             with --token-file"
        ))
        .into());
    }
    Err(anyhow!("the broker answered {status}: {message}"))
}
