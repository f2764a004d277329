//! What only the PostgreSQL backend has.
//!
//! It answers every store operation with the same results as SQLite; only the encoding and the
//! concurrency control differ (see `migrations/postgres/0001_init.sql`):
//!
//! * Timestamps are TIMESTAMPTZ. PostgreSQL keeps microseconds, SQLite's text keeps milliseconds;
//!   every time is truncated to the millisecond *before* it is written or compared, so a record
//!   handed back by a write equals the same record read later, and a range filter such as
//!   "events since T" includes an event written in T's millisecond, exactly as on SQLite.
//! * JSON values are JSONB, booleans BOOLEAN, integers BIGINT.
//! * SQLite runs one writer at a time, which makes every write transaction trivially
//!   serialisable. PostgreSQL runs writers concurrently under READ COMMITTED, so every
//!   transaction that writes an agent's session, conversations or turns first takes that
//!   agent's transaction-scoped advisory lock ([`lock_agents`]). Writes for one agent are then
//!   as serial as on SQLite, while different agents proceed in parallel. This is what makes the
//!   turn `seq` ("highest + 1") race-free: a conversation belongs to one agent for its whole
//!   life, so two appends to it always queue on the same lock. It also rules out deadlocks:
//!   row locks alone, taken in whatever order each operation needs its rows, let an append and
//!   a session change wait for each other in a cycle (PostgreSQL then aborts one of them).
//! * Lease times come from the server's clock, so brokers whose clocks disagree still agree on
//!   who holds a lease, and a release notifies waiting brokers (`NOTIFY`).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{ConnectOptions, Connection, Postgres};

use super::{ms, Arg, Durability, Query, Tx};
use crate::error::{from_migrate, from_sqlx};
use crate::{Result, StoreError, LEASE_RELEASED_CHANNEL};

/// The migrations, embedded in the binary so that a deployed broker needs no files besides its
/// configuration. sqlx serialises concurrent runs with an advisory lock, so several brokers may
/// start against the same database at once.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Pool size. Unlike SQLite, PostgreSQL runs writers concurrently, so the pool bounds how many
/// store calls proceed at once; ten covers the broker's concurrent executions and status reads
/// while leaving room on a server's default of 100 connections for other brokers and tools.
const MAX_CONNECTIONS: u32 = 10;

/// Connections kept for statements that only read (`/health`, `/metrics`, status endpoints,
/// conversation reads), so that they never wait for a connection behind a burst of executions
/// that holds the write pool.
const READER_CONNECTIONS: u32 = 3;

/// How long a store call waits for a free pooled connection before failing. A full pool for this
/// long means the database is overloaded or unreachable, which callers must hear about rather
/// than queue behind forever.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Every statement on a pooled connection is cancelled by the server after this long. No store
/// query should take more than milliseconds; the limit keeps a pathological query or a lock held
/// by a stuck client from holding a pooled connection indefinitely. Migrations run on their own
/// connection without it, because a future index build on a large table may legitimately take
/// longer.
const STATEMENT_TIMEOUT: &str = "30s";

/// The connections to one PostgreSQL database.
#[derive(Clone, Debug)]
pub(crate) struct PgDb {
    /// Writes and transactions.
    pub(super) pool: PgPool,
    /// Reads outside a transaction (see [`READER_CONNECTIONS`]).
    pub(super) readers: PgPool,
}

impl PgDb {
    /// Connects to the database named by `url` (`postgres://` or `postgresql://`) and applies the
    /// embedded migrations. The database itself must exist: creating databases needs privileges
    /// a broker should not hold, so that stays the operator's step.
    pub(crate) async fn open(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url).map_err(|e| {
            // The error never echoes the URL, which may carry a password.
            StoreError::Unsupported(format!("invalid PostgreSQL URL: {e}"))
        })?;
        let options = options.application_name("kokino");
        // Named without the password, for error messages.
        let target = format!(
            "postgres://{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        let unavailable =
            |e: sqlx::Error| StoreError::Unavailable(format!("cannot connect to {target}: {e}"));

        let mut migration_conn = options.connect().await.map_err(unavailable)?;
        MIGRATOR
            .run(&mut migration_conn)
            .await
            .map_err(from_migrate)?;
        // Closing politely tells the server at once instead of leaving a dead session behind;
        // a failure here changes nothing for the store.
        let _ = migration_conn.close().await;

        let options = options.options([("statement_timeout", STATEMENT_TIMEOUT)]);
        let pool = pool_options(MAX_CONNECTIONS)
            .connect_with(options.clone())
            .await
            .map_err(unavailable)?;
        let readers = pool_options(READER_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        Ok(Self { pool, readers })
    }

    /// A connection of its own listening on `channels`. It takes no pooled connection: a
    /// listener holds its connection for the broker's life.
    pub(crate) async fn listen(&self, channels: &[&str]) -> Result<sqlx::postgres::PgListener> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool)
            .await
            .map_err(from_sqlx)?;
        listener
            .listen_all(channels.iter().copied())
            .await
            .map_err(from_sqlx)?;
        Ok(listener)
    }

    /// Starts a transaction with the given `BEGIN` statement.
    pub(super) async fn begin(&self, statement: &'static str) -> Result<Tx> {
        let tx = self.pool.begin_with(statement).await.map_err(from_sqlx)?;
        Ok(Tx::Postgres(tx))
    }

    /// Starts a read-only transaction on a reader connection.
    pub(super) async fn begin_read(&self, statement: &'static str) -> Result<Tx> {
        let tx = self
            .readers
            .begin_with(statement)
            .await
            .map_err(from_sqlx)?;
        Ok(Tx::Postgres(tx))
    }
}

/// How long a pooled connection may have been idle before it is checked (a ping) when it is
/// lent again.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// A pool of at most `max` connections. sqlx pings every connection before lending it by
/// default: one more round trip to the server on every statement of the execute path. Here only
/// connections idle for over a second are checked. A server restart takes longer than that, so a
/// connection it broke has been idle at least that long by the time the server answers again (or
/// it was returned while the server was down, and the ping sqlx runs on every return closed it);
/// a connection in steady use cannot have been broken unnoticed.
fn pool_options(max: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= CHECK_IDLE_AFTER {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// The statement that opens a write transaction of this durability. A
/// [`Durability::Committed`] transaction commits without waiting for the WAL flush
/// (`synchronous_commit` off for it alone); the server flushes its WAL in order, so the next
/// durable commit carries it to disk. One simple query, so no extra round trip.
pub(super) fn begin_statement(durability: Durability) -> &'static str {
    match durability {
        Durability::OnDisk => "BEGIN",
        Durability::Committed => "BEGIN; SET LOCAL synchronous_commit TO OFF",
    }
}

/// The sqlx query for `sql` with `args` encoded as this backend stores them: times truncated to
/// the millisecond, JSON as JSONB, lists as TEXT[] for `= ANY($n)` (see `Db::in_list`).
pub(super) fn prepare<'q>(
    sql: &'q str,
    args: &'q [Arg],
) -> sqlx::query::Query<'q, Postgres, PgArguments> {
    super::prepare!(sql, args, time: ms, json: Json, list: std::convert::identity)
}

// ---- per-agent write locks ----

/// The first key of Kokino's two-key advisory locks ("KKNO"). PostgreSQL keeps one-key and
/// two-key advisory locks apart, so these never collide with sqlx's migration lock (one key);
/// the namespace keeps them apart from any other application sharing the database.
const AGENT_LOCK_NAMESPACE: i32 = 0x4B4B_4E4F;

/// The second key for an agent: 32-bit FNV-1a of its id. Two agents sharing a key only means
/// their writes queue behind each other, never a wrong result. Computed here rather than with
/// the server's `hashtext` so that [`lock_agents`] can sort keys before taking them.
fn agent_lock_key(agent_id: &str) -> i32 {
    let hash = agent_id.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    i32::from_ne_bytes(hash.to_ne_bytes())
}

/// Takes the write locks of the given agents until the transaction ends.
///
/// Every transaction that writes an agent's session, conversations or turns calls this once,
/// before it writes or locks any of their rows, so a transaction never waits for an agent's lock
/// while holding rows another writer of that agent needs. Only unlocked reads that find out
/// which agents are concerned may come first, and the writes after the lock re-check their
/// conditions: under READ COMMITTED each statement sees what the previous holder committed.
/// Several agents (the idle sweep, the repair) are locked in ascending key order, so two such
/// transactions cannot each hold a key the other waits for. Agents need not exist: the lock
/// protects the id, which also covers the history of a deleted agent.
pub(super) async fn lock_agents(tx: &mut Tx, agent_ids: &[&str]) -> Result<()> {
    let mut keys: Vec<i32> = agent_ids.iter().map(|id| agent_lock_key(id)).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        Query::new("SELECT pg_advisory_xact_lock($1::int, $2::int)")
            .bind(i64::from(AGENT_LOCK_NAMESPACE))
            .bind(i64::from(key))
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

// ---- leases ----
//
// Every time here comes from the server: `now()` (the transaction's start, which for the
// single-statement operations is the statement's start) or `clock_timestamp()` (the current
// instant, for the fencing check inside a transaction that may have waited on locks). Times are
// truncated to the millisecond like every stored time.

/// Takes or extends the lease in one statement, so two brokers racing for one lease can never
/// both win: `INSERT ... ON CONFLICT DO UPDATE ... WHERE` either inserts the free lease, or
/// updates the row under its row lock only if it expired or is already the caller's; a loser's
/// statement waits for the winner's commit and then sees an unexpired lease of another owner.
///
/// `old` reads the previous owner for `taken_over_from`. All parts of a WITH statement share
/// one snapshot, and the order in which they run is otherwise unspecified, so `old` is
/// (1) `FOR UPDATE`, which under READ COMMITTED waits for a concurrent writer of the row and then
/// returns its committed version, the one the upsert is about to judge, and (2) materialised and
/// scanned by the insert's own input (`old_row_locked`), which makes it run, and lock the row,
/// before the upsert touches it. Without (2), `old` could run after the upsert and read the row
/// version the upsert had just replaced, or a version older than the one the upsert judged.
///
/// Token 1 for a new row, +1 for every acquisition after; rows are never deleted, so tokens
/// never go back. `$3` is the ttl in milliseconds.
pub(crate) const ACQUIRE_SQL: &str = "\
WITH old AS MATERIALIZED (
    SELECT owner FROM agent_leases WHERE agent_id = $1 FOR UPDATE
), up AS (
    INSERT INTO agent_leases (agent_id, owner, token, expires_at, acquired_at)
    SELECT $1, $2, 1,
           date_trunc('milliseconds', now() + $3 * interval '1 millisecond'),
           date_trunc('milliseconds', now())
    FROM (SELECT count(*) FROM old) AS old_row_locked
    ON CONFLICT (agent_id) DO UPDATE SET
        owner = EXCLUDED.owner,
        token = agent_leases.token + 1,
        expires_at = EXCLUDED.expires_at,
        acquired_at = EXCLUDED.acquired_at
    WHERE agent_leases.expires_at <= now() OR agent_leases.owner = EXCLUDED.owner
    RETURNING token, expires_at
)
SELECT up.token, up.expires_at, (SELECT owner FROM old) AS previous_owner FROM up";

/// The current instant by the server's clock, truncated like every stored time.
pub(crate) const LEASE_NOW: &str = "date_trunc('milliseconds', now())";

/// The condition "the lease row is unexpired now", by the server's clock.
pub(crate) const LEASE_LIVE: &str = "expires_at > now()";

/// "Now plus the ttl in milliseconds bound at `$param`", by the server's clock.
pub(crate) fn lease_expiry(param: u32) -> String {
    format!("date_trunc('milliseconds', now() + ${param} * interval '1 millisecond')")
}

/// Ends the lease and notifies [`LEASE_RELEASED_CHANNEL`] in one statement, so the release and
/// its notification commit together: listeners hear of the release only once it is visible, and
/// never of a release that rolled back.
pub(crate) fn release_sql() -> String {
    format!(
        "WITH released AS ( \
             UPDATE agent_leases SET expires_at = {LEASE_NOW}, owner = '' \
             WHERE agent_id = $1 AND owner = $2 AND token = $3 AND {LEASE_LIVE} \
             RETURNING agent_id \
         ) \
         SELECT pg_notify('{LEASE_RELEASED_CHANNEL}', agent_id)::text FROM released"
    )
}

/// The fencing check's condition, and its lock: `FOR SHARE` is what makes the check hold at
/// commit rather than only at the check. Every change of the lease row (a takeover, a renewal, a
/// release) needs the row lock, so it waits until the fenced write has committed or rolled back,
/// and a broker that takes the lease over afterwards sees the write. Conversely, if a takeover is
/// in flight the check waits for it, and PostgreSQL re-evaluates the conditions on the new row
/// version, which then no longer matches. Share locks do not conflict, so fenced writes of one
/// holder do not queue on each other here. `clock_timestamp()` rather than `now()`: the
/// transaction may have waited for the agent's lock, and the lease must be live now, not when
/// the transaction began.
pub(crate) const FENCE_LIVE: &str = "expires_at > clock_timestamp() FOR SHARE";

#[cfg(test)]
mod tests {
    use super::*;

    /// A relaxed transaction turns `synchronous_commit` off for itself alone.
    #[tokio::test]
    async fn relaxed_commits_are_asynchronous_for_themselves_only() {
        let Ok(url) = std::env::var("KOKINO_TEST_DATABASE_URL") else {
            println!("skipped: KOKINO_TEST_DATABASE_URL is not set");
            return;
        };
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        let show = "SELECT current_setting('synchronous_commit')";
        for (durability, setting) in [(Durability::Committed, "off"), (Durability::OnDisk, "on")] {
            let mut tx = pool.begin_with(begin_statement(durability)).await.unwrap();
            let inside: String = sqlx::query_scalar(show).fetch_one(&mut *tx).await.unwrap();
            assert_eq!(inside, setting, "{durability:?}");
            tx.commit().await.unwrap();
            let after: String = sqlx::query_scalar(show).fetch_one(&pool).await.unwrap();
            assert_eq!(after, "on", "after a {durability:?} transaction");
        }
    }
}
