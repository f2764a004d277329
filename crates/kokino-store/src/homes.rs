//! Brokers and agent homes (several machines).
//!
//! An agent's CLI session lives in files under the `HOME` of the machine that ran it, and its
//! `cwd` is a directory on that machine; so every agent has a *home*, the broker that runs its
//! CLIs. Brokers announce themselves in `brokers` with the address other brokers forward to and
//! a liveness expiry judged by the database's clock (the same clock as the leases), and each
//! agent's home is a row of `agent_homes` with a generation that grows at every change. A change
//! of home is announced on PostgreSQL with `NOTIFY kokino_home_changed, '<agent_id>'` in the
//! changing transaction, so it is heard only once it is visible.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::db::{Db, Fields, Query, Row, Tx};
use crate::{clamp_ttl, ttl_millis, Result, Store};

/// The PostgreSQL channel a change of an agent's home is announced on, with the agent id as
/// payload.
pub const HOME_CHANGED_CHANNEL: &str = "kokino_home_changed";

/// A broker as the others see it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerRow {
    /// Its stable instance id.
    pub instance_id: String,
    /// Where other brokers reach it (`--advertise-url`).
    pub url: String,
    /// Whether its liveness has not expired, by the database's clock.
    pub alive: bool,
    /// When its liveness expires (or expired), by the database's clock.
    pub expires_at: DateTime<Utc>,
}

/// An agent's home.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Home {
    /// The agent.
    pub agent_id: String,
    /// The broker that runs its CLIs.
    pub instance_id: String,
    /// Whether the agent may be re-homed to a broker even where its `cwd` does not exist
    /// (its work needs no local files).
    pub portable: bool,
    /// Grows by one at every change of home.
    pub generation: i64,
    /// The home broker's address, when it has ever announced itself.
    pub url: Option<String>,
    /// Whether the home broker's liveness has not expired.
    pub alive: bool,
}

/// What a listener hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A notification on one of the channels listened to.
    Message {
        /// The channel.
        channel: String,
        /// Its payload (an agent id for Kokino's channels).
        payload: String,
    },
    /// The listening connection was lost and has been re-established: notifications sent in
    /// between are lost, so every waiter should look again.
    Lost,
}

/// A connection listening on PostgreSQL channels (`LISTEN`).
pub struct Notifications {
    #[cfg(feature = "postgres")]
    inner: sqlx::postgres::PgListener,
}

impl std::fmt::Debug for Notifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notifications")
    }
}

impl Notifications {
    /// The next notice. A lost connection is reconnected by the next call and reported as
    /// [`Notice::Lost`] once; an unreachable database is an error (retry after a pause).
    pub async fn recv(&mut self) -> Result<Notice> {
        #[cfg(feature = "postgres")]
        {
            match self.inner.try_recv().await {
                Ok(Some(n)) => Ok(Notice::Message {
                    channel: n.channel().to_owned(),
                    payload: n.payload().to_owned(),
                }),
                Ok(None) => Ok(Notice::Lost),
                Err(e) => Err(crate::error::from_sqlx(e)),
            }
        }
        #[cfg(not(feature = "postgres"))]
        {
            std::future::pending().await
        }
    }
}

impl Db {
    /// The current instant by the database's clock, in the stored form.
    fn now_sql(&self) -> &'static str {
        match self {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(_) => crate::db::sqlite::LEASE_NOW,
            #[cfg(feature = "postgres")]
            Db::Postgres(_) => crate::db::postgres::LEASE_NOW,
        }
    }
}

impl Tx {
    /// Sends `NOTIFY channel, payload` when the transaction commits (PostgreSQL); SQLite has no
    /// notifications, and its brokers share one machine anyway.
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    async fn notify(&mut self, channel: &str, payload: &str) -> Result<()> {
        match self {
            #[cfg(feature = "sqlite")]
            Tx::Sqlite(_) => Ok(()),
            #[cfg(feature = "postgres")]
            Tx::Postgres(_) => {
                Query::new("SELECT pg_notify($1, $2)::text")
                    .bind(channel)
                    .bind(payload)
                    .fetch_one(&mut *self)
                    .await?;
                Ok(())
            }
        }
    }
}

fn home_from(row: &Row) -> Result<Home> {
    let f = Fields::new(row, "agent_homes");
    Ok(Home {
        agent_id: f.text("agent_id")?,
        instance_id: f.text("instance_id")?,
        portable: f.bool("portable")?,
        generation: f.int("generation")?,
        url: f.opt_text("url")?,
        alive: f.opt_bool("alive")?.unwrap_or(false),
    })
}

impl Store {
    /// Announces (or keeps announcing) this broker: its address and a liveness of `ttl` from
    /// now by the database's clock. Called at start and every quarter of `ttl`.
    pub async fn heartbeat_broker(
        &self,
        instance_id: &str,
        url: &str,
        ttl: Duration,
    ) -> Result<()> {
        let now = self.db.now_sql();
        Query::new(format!(
            "INSERT INTO brokers (instance_id, url, expires_at, started_at) \
             VALUES ($1, $2, {expiry}, {now}) \
             ON CONFLICT (instance_id) DO UPDATE SET url = excluded.url, \
                 expires_at = excluded.expires_at",
            expiry = self.db.lease_expiry(3)
        ))
        .bind(instance_id)
        .bind(url)
        .bind(ttl_millis(clamp_ttl(ttl)))
        .execute(self.db.write())
        .await?;
        Ok(())
    }

    /// Ends this broker's liveness now (a clean stop or a drain): its agents may be re-homed by
    /// the next broker that receives their requests. Returns whether it was alive.
    pub async fn expire_broker(&self, instance_id: &str) -> Result<bool> {
        let n = Query::new(format!(
            "UPDATE brokers SET expires_at = {} WHERE instance_id = $1 AND {}",
            self.db.now_sql(),
            self.db.lease_live()
        ))
        .bind(instance_id)
        .execute(self.db.write())
        .await?;
        Ok(n > 0)
    }

    /// Every broker that ever announced itself, by instance id.
    pub async fn brokers(&self) -> Result<Vec<BrokerRow>> {
        let rows = Query::new(format!(
            "SELECT instance_id, url, expires_at, ({}) AS alive FROM brokers ORDER BY instance_id",
            self.db.lease_live()
        ))
        .fetch_all(self.db.read())
        .await?;
        rows.iter()
            .map(|row| {
                let f = Fields::new(row, "brokers");
                Ok(BrokerRow {
                    instance_id: f.text("instance_id")?,
                    url: f.text("url")?,
                    alive: f.bool("alive")?,
                    expires_at: f.time("expires_at")?,
                })
            })
            .collect()
    }

    /// The agent's home with its broker's address and liveness, if it has one.
    pub async fn home(&self, agent_id: &str) -> Result<Option<Home>> {
        let row = Query::new(format!(
            "SELECT h.agent_id, h.instance_id, h.portable, h.generation, b.url, \
                    (b.{live}) AS alive \
             FROM agent_homes h LEFT JOIN brokers b ON b.instance_id = h.instance_id \
             WHERE h.agent_id = $1",
            live = self.db.lease_live()
        ))
        .bind(agent_id)
        .fetch_optional(self.db.read())
        .await?;
        row.as_ref().map(home_from).transpose()
    }

    /// Every agent's home, by agent id.
    pub async fn homes(&self) -> Result<Vec<Home>> {
        let rows = Query::new(format!(
            "SELECT h.agent_id, h.instance_id, h.portable, h.generation, b.url, \
                    (b.{live}) AS alive \
             FROM agent_homes h LEFT JOIN brokers b ON b.instance_id = h.instance_id \
             ORDER BY h.agent_id",
            live = self.db.lease_live()
        ))
        .fetch_all(self.db.read())
        .await?;
        rows.iter().map(home_from).collect()
    }

    /// Makes `instance_id` the agent's home (registration, or an operator's move); `portable`
    /// `None` keeps what was declared before (false for a new home). Every call is a change:
    /// the generation grows and listeners are notified.
    pub async fn set_home(
        &self,
        agent_id: &str,
        instance_id: &str,
        portable: Option<bool>,
    ) -> Result<Home> {
        let now = self.db.now_sql();
        let mut tx = self.db.write_tx().await?;
        Query::new(format!(
            "INSERT INTO agent_homes (agent_id, instance_id, portable, generation, changed_at) \
             VALUES ($1, $2, COALESCE($3, FALSE), 1, {now}) \
             ON CONFLICT (agent_id) DO UPDATE SET instance_id = excluded.instance_id, \
                 portable = COALESCE($3, agent_homes.portable), \
                 generation = agent_homes.generation + 1, changed_at = excluded.changed_at"
        ))
        .bind(agent_id)
        .bind(instance_id)
        .bind(portable)
        .execute(&mut tx)
        .await?;
        tx.notify(HOME_CHANGED_CHANNEL, agent_id).await?;
        tx.commit().await?;
        self.home(agent_id).await?.ok_or_else(|| {
            crate::StoreError::Database(format!("the home of {agent_id} vanished after writing it"))
        })
    }

    /// Gives the agent a home at `instance_id` unless it has one (agents registered before homes
    /// existed adopt the first broker that serves them); returns the home either way.
    pub async fn claim_home(&self, agent_id: &str, instance_id: &str) -> Result<Home> {
        let now = self.db.now_sql();
        Query::new(format!(
            "INSERT INTO agent_homes (agent_id, instance_id, portable, generation, changed_at) \
             VALUES ($1, $2, FALSE, 1, {now}) ON CONFLICT (agent_id) DO NOTHING"
        ))
        .bind(agent_id)
        .bind(instance_id)
        .execute(self.db.write())
        .await?;
        self.home(agent_id).await?.ok_or_else(|| {
            crate::StoreError::Database(format!("the home of {agent_id} vanished after writing it"))
        })
    }

    /// Failover: moves the agent's home from `from` to `to` only if it is still `from` and
    /// `from`'s liveness has expired. Atomic: of several brokers racing to take one agent over,
    /// exactly one wins (on PostgreSQL the update holds the row lock, and a loser re-checks the
    /// row its winner wrote). Returns whether this call moved it.
    pub async fn take_over_home(&self, agent_id: &str, from: &str, to: &str) -> Result<bool> {
        let mut tx = self.db.write_tx().await?;
        let n = Query::new(format!(
            "UPDATE agent_homes SET instance_id = $3, generation = generation + 1, \
                 changed_at = {now} \
             WHERE agent_id = $1 AND instance_id = $2 \
               AND NOT EXISTS (SELECT 1 FROM brokers WHERE instance_id = $2 AND {live})",
            now = self.db.now_sql(),
            live = self.db.lease_live()
        ))
        .bind(agent_id)
        .bind(from)
        .bind(to)
        .execute(&mut tx)
        .await?;
        if n > 0 {
            tx.notify(HOME_CHANGED_CHANNEL, agent_id).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Forgets the agent's home (the agent was deleted). Returns whether it had one.
    pub async fn forget_home(&self, agent_id: &str) -> Result<bool> {
        let n = Query::new("DELETE FROM agent_homes WHERE agent_id = $1")
            .bind(agent_id)
            .execute(self.db.write())
            .await?;
        Ok(n > 0)
    }

    /// Listens on the given channels (PostgreSQL `LISTEN`, on a connection of its own).
    /// `None` on SQLite, which has no notifications: its callers wait by polling.
    pub async fn listen(&self, channels: &[&str]) -> Result<Option<Notifications>> {
        match &self.db {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(_) => {
                let _ = channels;
                Ok(None)
            }
            #[cfg(feature = "postgres")]
            Db::Postgres(pg) => Ok(Some(Notifications {
                inner: pg.listen(channels).await?,
            })),
        }
    }
}
