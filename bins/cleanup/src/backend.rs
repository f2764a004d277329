//! The two places cleanup can work on, behind one interface: the store itself, or a running
//! broker through its HTTP API. The plan, the confirmation and the output are the same for both,
//! so an operator sees the same lines whichever way they run it.

use chrono::{DateTime, Utc};
use kokino_core::AgentId;

use crate::direct::Direct;
use crate::remote::Remote;
use crate::settings::Target;

/// One agent's current session, as either backend sees it.
#[derive(Debug, Clone)]
pub struct Session {
    pub agent: AgentId,
    /// `None` only through `--url`, for a session the broker reports without a time.
    pub last_activity: Option<DateTime<Utc>>,
    /// Known in direct mode only; the HTTP status endpoint does not show it.
    pub conversation: Option<String>,
    pub cli_session: Option<String>,
    /// The agent has a running execution (or, through `--url`, holds or waits for its lock).
    /// Its session belongs to that run, and ending it would cut the run short.
    pub busy: bool,
}

/// The sessions of the agents in scope.
#[derive(Debug, Default)]
pub struct Listing {
    pub sessions: Vec<Session>,
    /// With `--agent`, whether that agent exists at all.
    pub agent_exists: bool,
    /// Agents with a running execution, whatever the scope: a forced log rotation must not
    /// pull a log file from under a run that is writing it.
    pub busy_agents: usize,
}

/// What happened to one session at the moment of ending it.
#[derive(Debug)]
pub enum EndResult {
    /// Ended now.
    Ended,
    /// Someone else ended it since the plan was made (the broker's own sweep, an operator).
    Gone,
    /// It started executing since the plan was made.
    Busy,
    /// It was used since the plan was made and is no longer stale.
    Active,
}

/// An error that makes the rest of the run pointless (the broker refuses our token): it stops
/// the run with exit code 2 instead of being counted once per item.
#[derive(Debug)]
pub struct Fatal(pub String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

pub enum Backend {
    Store(Direct),
    Broker(Remote),
}

impl Backend {
    /// Opens the store or checks that the broker answers. Failing here means "could not run".
    pub async fn connect(target: &Target) -> anyhow::Result<Backend> {
        Ok(match target {
            Target::Store { database_url } => Backend::Store(Direct::open(database_url).await?),
            Target::Broker { url, token } => {
                Backend::Broker(Remote::connect(url, token.clone()).await?)
            }
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Backend::Store(d) => format!("the store {}", d.url()),
            Backend::Broker(r) => format!("the broker at {}", r.url()),
        }
    }

    pub async fn sessions(&self, agent: Option<&AgentId>) -> anyhow::Result<Listing> {
        match self {
            Backend::Store(d) => d.sessions(agent).await,
            Backend::Broker(r) => r.sessions(agent).await,
        }
    }

    /// Ends the session if it is still stale (idle since before `cutoff`) and idle. The store
    /// backend re-reads the session and the running executions right before ending it; the
    /// broker backend relies on the listing taken just before the loop.
    pub async fn end_session(
        &self,
        session: &Session,
        cutoff: DateTime<Utc>,
    ) -> anyhow::Result<EndResult> {
        match self {
            Backend::Store(d) => d.end_session(&session.agent, cutoff).await,
            Backend::Broker(r) => r.end_session(&session.agent).await,
        }
    }

    /// How many events are older than `days` days; `None` when the backend cannot tell.
    pub async fn count_events(&self, days: u32) -> anyhow::Result<Option<u64>> {
        match self {
            Backend::Store(d) => Ok(Some(d.count_events(days).await?)),
            Backend::Broker(_) => Ok(None),
        }
    }

    pub async fn delete_events(&self, days: u32) -> anyhow::Result<u64> {
        match self {
            Backend::Store(d) => d.delete_events(days).await,
            Backend::Broker(r) => r.delete_events(days).await,
        }
    }
}

/// The instant `days` days before `now`, as the broker computes its event retention.
pub fn days_ago(now: DateTime<Utc>, days: u32) -> DateTime<Utc> {
    now - chrono::Duration::days(i64::from(days))
}
