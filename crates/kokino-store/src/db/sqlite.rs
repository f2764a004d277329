//! What only the SQLite backend has.
//!
//! Encoding decisions, shared by every table (see `migrations/sqlite/0001_init.sql`):
//!
//! * Timestamps are TEXT in RFC 3339, UTC, with exactly three fractional digits and a `Z`
//!   suffix (`2025-01-31T12:34:56.789Z`). Every value has the same width, so comparing the text
//!   compares the instants, which keeps `ORDER BY` and range filters on indexed columns correct
//!   while the database stays readable with the `sqlite3` shell.
//! * JSON values are TEXT holding serialised JSON; booleans are INTEGER 0/1.
//! * Every transaction that writes starts with `BEGIN IMMEDIATE`. SQLite allows one writer at a
//!   time; a deferred transaction that first reads and then writes can fail with `SQLITE_BUSY`
//!   without waiting when another writer committed in between (the busy timeout does not apply
//!   to that upgrade). Taking the write lock up front makes writers queue instead, and it makes
//!   "read the highest `seq`, insert the next one" race-free. The single writer is also why
//!   [`super::Tx::lock_agents`] has nothing to do here.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Row as _, Sqlite};

use super::{Arg, Durability, Fields, Query, Tx};
use crate::error::{from_migrate, from_sqlx};
use crate::{Result, StoreError};

/// The migrations, embedded in the binary so that a deployed broker needs no files besides its
/// database.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Pool size. SQLite serialises writers anyway; a handful of connections lets readers (status
/// endpoints, conversation reads) proceed under WAL while one writer works.
const MAX_CONNECTIONS: u32 = 8;

/// How long a connection waits for another writer's lock before giving up with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The pragmas `Store::sqlite_pragma` may read. Pragma names cannot be bound as parameters, so
/// only these fixed names are ever put into SQL text.
const READABLE_PRAGMAS: &[&str] = &[
    "journal_mode",
    "temp_store",
    "synchronous",
    "foreign_keys",
    "busy_timeout",
];

/// The connections to one SQLite file.
#[derive(Clone, Debug)]
pub(crate) struct SqliteDb {
    /// Readers. WAL lets them run beside the writer.
    pub(super) readers: SqlitePool,
    /// Reader connections kept out of `readers` between single statements (see [`Lent`]).
    stash: Arc<std::sync::Mutex<Stash>>,
    /// The one writer connection. SQLite admits one writer at a time anyway; queueing writers
    /// in this pool (a FIFO of wakers) instead of letting several connections race for the
    /// file lock avoids SQLite's busy handler, which waits by sleeping and made each contended
    /// write cost milliseconds.
    pub(super) writer: SqlitePool,
    /// The execute path's writes, committed in groups through `writer` (see [`super::group`]).
    pub(crate) group: super::group::GroupWriter,
    /// Set while the writer connection runs with `synchronous=NORMAL` (see [`begin`]);
    /// the writer pool puts it back to `FULL` before anyone else gets the connection.
    relaxed: Arc<AtomicBool>,
    /// The writers other than the group writer that want the writer connection now.
    demand: Arc<Demand>,
}

/// How many writers besides the group writer want the writer connection, and a signal when
/// one starts to. The group writer keeps the connection while its writes keep coming (see
/// [`super::group`]) and gives it back as soon as someone else asks.
#[derive(Debug, Default)]
pub(crate) struct Demand {
    waiting: std::sync::atomic::AtomicUsize,
    asked: tokio::sync::Notify,
}

impl Demand {
    /// Counts a writer from now until the guard drops, and tells the group writer.
    pub(super) fn enter(&self) -> DemandGuard<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        self.asked.notify_one();
        DemandGuard(self)
    }

    /// Whether another writer wants the connection.
    pub(super) fn any(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// Resolves when another writer asks for the connection (at once if one asked since the
    /// last call).
    pub(super) async fn asked(&self) {
        self.asked.notified().await;
    }
}

/// A writer counted in [`Demand`].
pub(super) struct DemandGuard<'a>(&'a Demand);

impl Drop for DemandGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SqliteDb {
    /// Opens (creating if needed) the database named by `url`: `sqlite://path`, `sqlite:path`
    /// or a bare path. A query string (`?mode=rwc`) is ignored: the options Kokino needs are
    /// always set here, so that no URL can turn WAL, durability or foreign keys off.
    pub(crate) async fn open(url: &str) -> Result<Self> {
        let path = database_path(url)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }

        // Set on the connect options so that every pooled connection gets them, including ones
        // the pool opens later; per-connection pragmas set once on one connection would not.
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            // A statement inside a larger transaction keeps a journal of its own, so that it
            // can be undone alone; past 64 KiB SQLite spills it to a temporary file, created,
            // written and deleted within the transaction. The group writer's larger batches
            // (an execution's finish carrying queued events) crossed that size, and the file
            // then took half as long as the commit's fsync. Temporary tables and indexes go to
            // memory too; the store makes none of any size.
            .pragma("temp_store", "MEMORY");
        let unavailable = |e: sqlx::Error| {
            StoreError::Unavailable(format!("cannot open {}: {e}", path.display()))
        };
        let relaxed = Arc::new(AtomicBool::new(false));
        let flag = relaxed.clone();
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // sqlx pings a connection before lending it by default, one round trip to its
            // worker thread on every acquire. A connection to a local file cannot go stale
            // the way a network connection can, and a broken one fails its next statement
            // with an error anyway.
            .test_before_acquire(false)
            // A transaction that committed without waiting for the disk left the connection at
            // `synchronous=NORMAL`. Every transaction states its level when it begins, but a
            // single statement outside one (`On::Write`) does not: put the default back before
            // the connection goes to its next user, so that nothing else is relaxed by
            // accident.
            .after_release(move |conn, _| {
                let flag = flag.clone();
                Box::pin(async move {
                    if flag.swap(false, Ordering::AcqRel) {
                        sqlx::query("PRAGMA synchronous = FULL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options.clone())
            .await
            .map_err(unavailable)?;
        MIGRATOR.run(&writer).await.map_err(from_migrate)?;
        let readers = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        let demand = Arc::new(Demand::default());
        let native = super::native::Native::open(&path)?;
        let group = super::group::GroupWriter::start(writer.clone(), demand.clone(), native);
        Ok(Self {
            readers,
            stash: Arc::default(),
            writer,
            group,
            relaxed,
            demand,
        })
    }

    /// A reader connection for one statement, from the stash when one waits there.
    pub(super) async fn lend(&self) -> Result<Lent<'_>> {
        let kept = self.stash.lock().map(|mut s| s.0.pop()).unwrap_or(None);
        let conn = match kept {
            Some(conn) => conn,
            None => self.readers.acquire().await.map_err(from_sqlx)?,
        };
        Ok(Lent {
            conn: Some(conn),
            stash: &self.stash,
        })
    }

    /// Starts a transaction holding SQLite's write lock (see the module documentation).
    pub(super) async fn write_tx(&self, durability: Durability) -> Result<Tx> {
        let _asking = self.demand.enter();
        begin(&self.writer, &self.relaxed, durability).await
    }

    /// Counts a lone statement on the writer connection in [`Demand`] while it runs.
    pub(super) fn asking(&self) -> DemandGuard<'_> {
        self.demand.enter()
    }

    /// Starts a read transaction: under WAL its statements share one snapshot.
    pub(super) async fn read_tx(&self) -> Result<Tx> {
        Ok(Tx::Sqlite(self.readers.begin().await.map_err(from_sqlx)?))
    }

    /// Reads one of a few fixed pragmas from a pooled connection, as text, so tests and
    /// diagnostics can confirm the settings every connection runs with.
    pub(crate) async fn pragma(&self, name: &str) -> Result<String> {
        if !READABLE_PRAGMAS.contains(&name) {
            return Err(StoreError::Unsupported(format!(
                "pragma {name} cannot be read through the store"
            )));
        }
        let row = sqlx::query(&format!("PRAGMA {name}"))
            .fetch_one(&self.readers)
            .await
            .map_err(from_sqlx)?;
        // Some pragmas answer with text (journal_mode), others with integers (synchronous).
        if let Ok(text) = row.try_get::<String, _>(0) {
            return Ok(text);
        }
        let number: i64 = row.try_get(0).map_err(from_sqlx)?;
        Ok(number.to_string())
    }
}

/// How many reader connections the stash keeps. The rest of the pool stays with the pool, for
/// read transactions and for more concurrent readers than the stash holds.
const STASHED: usize = MAX_CONNECTIONS as usize / 2;

/// A reader connection lent for one statement.
///
/// sqlx pings a connection whenever it goes back to its pool (a round trip to the connection's
/// thread, in a task spawned for it), to catch one left mid-statement by a dropped future. On
/// the execute path, which reads the agent and its session each time, that doubled the trips
/// of every read. A lent connection whose statement ran to the end, error or not, is in a known
/// state, so it goes back to this stash instead, unpinged. One whose future was dropped
/// mid-statement never gets here: it is dropped with the future and goes back through the
/// pool's own checks.
pub(super) struct Lent<'a> {
    conn: Option<PoolConnection<Sqlite>>,
    stash: &'a std::sync::Mutex<Stash>,
}

/// The kept reader connections.
#[derive(Debug, Default)]
struct Stash(Vec<PoolConnection<Sqlite>>);

impl Drop for Stash {
    /// A pooled connection dropped on its own is given back to its pool by a task it spawns,
    /// which needs a runtime; the store may be dropped where there is none. Detached, a
    /// connection just closes.
    fn drop(&mut self) {
        for conn in self.0.drain(..) {
            drop(conn.detach());
        }
    }
}

impl Lent<'_> {
    /// The connection, for the statement.
    pub(super) fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        self.conn
            .as_mut()
            .expect("a lent connection is only taken by `finished`")
    }

    /// The statement ran to its end: keep the connection for the next one (or give it back to
    /// the pool when the stash is full).
    pub(super) fn finished(mut self) {
        if let (Some(conn), Ok(mut stash)) = (self.conn.take(), self.stash.lock()) {
            if stash.0.len() < STASHED {
                stash.0.push(conn);
            }
        }
    }
}

/// Starts a write transaction of this durability on `writer`, the one writer connection.
///
/// `synchronous` cannot change inside a transaction, so it is set in the same call as the
/// `BEGIN` (one round trip to sqlx's worker thread, which runs the text with `sqlite3_exec`).
/// Under WAL, `NORMAL` commits without an fsync and the next `FULL` commit's fsync of the WAL
/// file covers it; a checkpoint syncs the WAL before copying it (see [`Durability`]).
pub(super) async fn begin(
    writer: &SqlitePool,
    relaxed: &AtomicBool,
    durability: Durability,
) -> Result<Tx> {
    let statement = match durability {
        Durability::OnDisk => "PRAGMA synchronous = FULL; BEGIN IMMEDIATE",
        Durability::Committed => "PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE",
    };
    match writer.begin_with(statement).await {
        Ok(tx) => {
            if durability == Durability::Committed {
                // Set while this transaction holds the connection, so that its own release is
                // the one that sees it (set before, a release still under way could take it).
                relaxed.store(true, Ordering::Release);
            }
            Ok(Tx::Sqlite(tx))
        }
        Err(e) => {
            if durability == Durability::Committed {
                // The pragma may have run before `BEGIN` failed (the write lock busy past the
                // timeout, an I/O error): put the default back.
                let _ = sqlx::query("PRAGMA synchronous = FULL")
                    .execute(writer)
                    .await;
            }
            Err(from_sqlx(e))
        }
    }
}

/// Extracts the file path from `sqlite://path`, `sqlite:path` or a bare path.
fn database_path(url: &str) -> Result<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path == ":memory:" {
        // A pool of in-memory databases would give every connection its own empty database.
        return Err(StoreError::Unsupported(format!(
            "the SQLite URL {url:?} names no database file"
        )));
    }
    Ok(Path::new(path).to_path_buf())
}

// ---- encoding ----

/// A timestamp in the stored form: fixed-width RFC 3339, UTC, milliseconds.
pub(super) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A list for `json_each` (see `Db::in_list`): SQLite has no arrays.
pub(super) fn json_list(items: &[String]) -> String {
    serde_json::Value::from(items).to_string()
}

/// The sqlx query for `sql` with `args` encoded as this backend stores them: times as text,
/// JSON as text, lists as JSON text; sqlx writes booleans as INTEGER 0/1.
pub(super) fn prepare<'q>(
    sql: &'q str,
    args: &'q [Arg],
) -> sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>> {
    super::prepare!(sql, args, time: ts, json: serde_json::Value::to_string, list: json_list)
}

// ---- decoding ----

pub(super) fn opt_bool(row: &SqliteRow, column: &str) -> Result<Option<bool>, String> {
    bool_of(row.try_get(column).map_err(|e| e.to_string())?)
}

pub(super) fn opt_time(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>, String> {
    time_of(row.try_get(column).map_err(|e| e.to_string())?)
}

pub(super) fn opt_json(row: &SqliteRow, column: &str) -> Result<Option<serde_json::Value>, String> {
    json_of(row.try_get(column).map_err(|e| e.to_string())?)
}

/// A stored boolean (INTEGER 0/1), whichever driver read it.
pub(super) fn bool_of(value: Option<i64>) -> Result<Option<bool>, String> {
    match value {
        None => Ok(None),
        Some(0) => Ok(Some(false)),
        Some(1) => Ok(Some(true)),
        Some(other) => Err(format!("{other} is not a boolean")),
    }
}

/// A stored timestamp (RFC 3339 text), whichever driver read it.
pub(super) fn time_of(text: Option<String>) -> Result<Option<DateTime<Utc>>, String> {
    text.map(|t| {
        DateTime::parse_from_rfc3339(&t)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| e.to_string())
    })
    .transpose()
}

/// A stored JSON value (text), whichever driver read it.
pub(super) fn json_of(text: Option<String>) -> Result<Option<serde_json::Value>, String> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        .transpose()
}

// ---- leases ----
//
// SQLite is one file on one machine, so every process sharing it reads the same clock, the one
// SQLite's `'now'` reads; `strftime` renders it in the stored fixed-width form, and within one
// statement `'now'` is one instant. The single writer makes each write transaction serial,
// which is what PostgreSQL needs row locks for: reading the previous owner and then upserting
// cannot interleave with another acquisition.

/// The current instant, in the stored form.
pub(crate) const LEASE_NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// The condition "the lease row is unexpired now". Under `BEGIN IMMEDIATE` no other writer can
/// change the lease until the transaction ends, so the fencing check at its start holds until
/// commit.
pub(crate) const LEASE_LIVE: &str = "expires_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// "Now plus the ttl in milliseconds bound at `$param`", in the stored form.
pub(crate) fn lease_expiry(param: u32) -> String {
    format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', (${param} / 1000.0) || ' seconds')")
}

/// Ends the lease. There is no notification: brokers sharing a SQLite file are on one machine
/// and simply poll.
pub(crate) const RELEASE_SQL: &str = "UPDATE agent_leases \
     SET expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), owner = '' \
     WHERE agent_id = $1 AND owner = $2 AND token = $3 \
       AND expires_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
     RETURNING agent_id";

/// Takes or extends the lease (`$1` agent, `$2` owner, `$3` ttl in milliseconds): token 1 for a
/// new row, +1 for every acquisition after, and an unexpired lease of another owner is left
/// alone (no row returned). SQLite's RETURNING cannot see the row's previous owner, so
/// [`lease_owner`] reads it first in the same write transaction.
pub(crate) fn acquire_sql() -> String {
    format!(
        "INSERT INTO agent_leases (agent_id, owner, token, expires_at, acquired_at) \
         VALUES ($1, $2, 1, {expiry}, {LEASE_NOW}) \
         ON CONFLICT (agent_id) DO UPDATE SET \
             owner = excluded.owner, token = agent_leases.token + 1, \
             expires_at = excluded.expires_at, acquired_at = excluded.acquired_at \
         WHERE agent_leases.expires_at <= excluded.acquired_at \
            OR agent_leases.owner = excluded.owner \
         RETURNING token, expires_at",
        expiry = lease_expiry(3)
    )
}

/// The lease's current owner ('' once released), read inside the acquiring write transaction,
/// where no other writer can change it before the upsert.
pub(crate) async fn lease_owner(tx: &mut Tx, agent_id: &str) -> Result<Option<String>> {
    Query::new("SELECT owner FROM agent_leases WHERE agent_id = $1")
        .bind(agent_id)
        .fetch_optional(tx)
        .await?
        .map(|row| Fields::new(&row, "agent_leases").text("owner"))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn temp_db() -> (SqliteDb, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("k.db").display().to_string())
            .await
            .unwrap();
        (db, dir)
    }

    /// The level the writer connection is at for its next user.
    async fn writer_synchronous(db: &SqliteDb) -> i64 {
        sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&db.writer)
            .await
            .unwrap()
    }

    async fn synchronous(tx: &mut Tx) -> i64 {
        let Tx::Sqlite(tx) = tx else {
            unreachable!("a SQLite transaction")
        };
        sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut **tx)
            .await
            .unwrap()
    }

    /// A transaction that commits without waiting for the disk runs at `NORMAL`, and the writer
    /// connection is back at `FULL` for whoever uses it next, a lone statement included.
    #[tokio::test]
    async fn relaxed_commits_leave_the_writer_durable() {
        let (db, _dir) = temp_db().await;
        for (durability, level) in [(Durability::Committed, 1), (Durability::OnDisk, 2)] {
            let mut tx = db.write_tx(durability).await.unwrap();
            assert_eq!(synchronous(&mut tx).await, level, "{durability:?}");
            tx.commit().await.unwrap();
            assert_eq!(
                writer_synchronous(&db).await,
                2,
                "the writer after a {durability:?} transaction"
            );
        }
        // Also after a relaxed transaction that was rolled back (dropped).
        drop(db.write_tx(Durability::Committed).await.unwrap());
        assert_eq!(writer_synchronous(&db).await, 2);
    }

    /// A grouped write (on the writer thread's connection) runs at its own level every time,
    /// and sqlx's writer connection stays at `FULL`.
    #[tokio::test]
    async fn grouped_writes_run_at_their_level_and_leave_the_writer_durable() {
        let (db, _dir) = temp_db().await;
        let levels = [
            (Durability::Committed, 1),
            (Durability::Committed, 1),
            (Durability::OnDisk, 2),
            (Durability::Committed, 1),
        ];
        for (durability, level) in levels {
            let seen: i64 = db
                .group
                .write_plan(false, durability, || {
                    let mut batch = super::super::Batch::default();
                    // A table-valued pragma is read when the statement runs.
                    batch.push(Query::new("SELECT synchronous FROM pragma_synchronous"));
                    let decode = |rows: Vec<super::super::Row>| {
                        Fields::new(&rows[0], "pragma_synchronous").int("synchronous")
                    };
                    (batch, Box::new(decode))
                })
                .await
                .unwrap();
            assert_eq!(seen, level, "{durability:?}");
            assert_eq!(
                writer_synchronous(&db).await,
                2,
                "the writer after a {durability:?} write"
            );
        }
    }
}
