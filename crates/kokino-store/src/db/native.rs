//! The execute path's writes on SQLite, run on a thread of our own with a connection of our
//! own (rusqlite over the same bundled SQLite as sqlx).
//!
//! sqlx runs each SQLite connection on a worker thread and sends every statement's result back
//! to the async side through a channel, waking the runtime once per statement. A group of
//! writes of eight statements was eight wake-ups each way, and the profile of the broker under
//! load showed a third of its time in those hand-offs (futexes, eventfd writes, context
//! switches between the runtime thread and sqlx's). Here a whole group (its `BEGIN`, every
//! statement of every write in it, its `COMMIT` and fsync) is one message to this thread and
//! one answer back.
//!
//! The thread writes only while the group writer holds sqlx's one writer connection (see
//! [`super::group`]): that connection is the token that keeps every other writer of the store
//! queued in the pool's FIFO, so this second connection never meets a competing writer and
//! never waits in SQLite's busy handler.
//!
//! Statements keep the store's `$n` placeholders, rewritten to SQLite's numbered `?n` (a `$n`
//! is a *name* to SQLite, numbered by first appearance, whereas `?n` is parameter `n`), and are
//! prepared once per connection (rusqlite's statement cache).

use std::sync::{mpsc, Arc};

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::{Arg, Durability, Query, Row};
use crate::error::from_rusqlite;
use crate::{Result, StoreError};

/// How long the connection waits for a lock held by another connection, as sqlx's do. The
/// store's own writers take turns (see the module documentation); what this waits for is
/// another process on the same file, `kokino-cleanup` for one.
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Prepared statements kept per connection; the execute path has a few dozen.
const STATEMENT_CACHE: usize = 128;

/// A value of any type, as it travels back to the caller that knows the type.
pub(crate) type Erased = Box<dyn std::any::Any + Send>;

/// Turns a write's rows into its answer, inside its transaction: a write whose rows say it
/// failed (an update that found no row, say) rolls back like one whose statement failed.
pub(crate) type Decode = Box<dyn FnOnce(Vec<Row>) -> Result<Erased> + Send>;

/// One write: its statements and the decoding of their rows.
pub(crate) type Write = (Vec<Query>, Decode);

/// One transaction's work and where its answer goes.
struct Job {
    writes: Vec<Write>,
    durability: Durability,
    reply: oneshot::Sender<Result<Vec<Erased>>>,
}

/// The handle the group writer keeps: queues transactions for the thread.
#[derive(Clone, Debug)]
pub(crate) struct Native {
    jobs: mpsc::Sender<Job>,
}

impl Native {
    /// Opens the database file (already created and migrated through sqlx) and starts the
    /// thread. The thread ends when the last handle is dropped.
    pub(crate) fn open(path: &std::path::Path) -> Result<Native> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        configure(&conn)?;
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("kokino-sqlite-writer".into())
            .spawn(move || serve(conn, queue))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(Native { jobs })
    }

    /// Runs `writes` in one transaction of this durability and answers with each write's
    /// decoded rows once it is committed (and on disk, for [`Durability::OnDisk`]). Any
    /// failure, of a statement or of a decoding, rolls all of it back and is the answer.
    pub(crate) async fn run(
        &self,
        writes: Vec<Write>,
        durability: Durability,
    ) -> Result<Vec<Erased>> {
        let gone = || StoreError::Unavailable("the store's writer thread has stopped".to_owned());
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                writes,
                durability,
                reply,
            })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// The same settings as sqlx's connections (see `sqlite::SqliteDb::open`); WAL is a property of
/// the file, set there. `synchronous` is stated by every transaction. A statement journal never
/// spills to a temporary file (`temp_store`): the larger batches made one of 64 KiB and more, a
/// file created, written and deleted inside the transaction.
fn configure(conn: &Connection) -> Result<()> {
    conn.execute_batch(&format!(
        "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}; \
         PRAGMA synchronous = FULL; PRAGMA temp_store = MEMORY"
    ))
    .map_err(from_rusqlite)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// The thread: one transaction at a time.
fn serve(conn: Connection, jobs: mpsc::Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        if job.reply.is_closed() {
            // The group writer stopped waiting (its task panicked or was dropped).
            continue;
        }
        let result = transaction(&conn, job.writes, job.durability);
        let _ = job.reply.send(result);
    }
}

/// `BEGIN IMMEDIATE`, the writes, `COMMIT`; a `ROLLBACK` after any failure.
fn transaction(
    conn: &Connection,
    writes: Vec<Write>,
    durability: Durability,
) -> Result<Vec<Erased>> {
    // `synchronous` cannot change inside a transaction; `NORMAL` commits without an fsync,
    // and the next `FULL` commit's fsync of the WAL covers it (see `Durability`).
    let begin = match durability {
        Durability::OnDisk => "PRAGMA synchronous = FULL; BEGIN IMMEDIATE",
        Durability::Committed => "PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE",
    };
    conn.execute_batch(begin).map_err(from_rusqlite)?;
    let result = writes
        .into_iter()
        .map(|(statements, decode)| {
            let mut rows = Vec::new();
            for query in &statements {
                rows.extend(statement(conn, query)?);
            }
            decode(rows)
        })
        .collect::<Result<Vec<_>>>()
        .and_then(|rows| {
            conn.execute_batch("COMMIT").map_err(from_rusqlite)?;
            Ok(rows)
        });
    if result.is_err() && !conn.is_autocommit() {
        // Should the rollback fail too, the transaction stays open and the next `BEGIN`
        // fails: every later write then fails loudly instead of writing into it.
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

/// Runs one statement and returns its rows.
fn statement(conn: &Connection, query: &Query) -> Result<Vec<Row>> {
    let mut stmt = conn
        .prepare_cached(&numbered(&query.sql))
        .map_err(from_rusqlite)?;
    let params = stmt.parameter_count();
    for (i, arg) in query.args.iter().enumerate().take(params) {
        stmt.raw_bind_parameter(i + 1, value(arg))
            .map_err(from_rusqlite)?;
    }
    // The column names are read once the first row comes: most of the execute path's
    // statements return none.
    let mut columns: Option<Arc<[String]>> = None;
    let count = stmt.column_count();
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(from_rusqlite)? {
        let columns = columns.get_or_insert_with(|| {
            let stmt = row.as_ref();
            (0..count)
                .map(|i| stmt.column_name(i).unwrap_or_default().to_owned())
                .collect()
        });
        let values = (0..columns.len())
            .map(|i| row.get::<_, Value>(i))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(from_rusqlite)?;
        out.push(Row::Native(NativeRow {
            columns: columns.clone(),
            values,
        }));
    }
    Ok(out)
}

/// `sql` with every `$n` placeholder written `?n`. Our statements carry no `$` in literals (see
/// `db::renumber`), so every `$` followed by digits is a placeholder.
fn numbered(sql: &str) -> String {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    for (i, c) in sql.char_indices() {
        if c == '$' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// An argument as this backend stores it (see `sqlite::prepare`): times, JSON and lists as
/// text, booleans as 0/1.
fn value(arg: &Arg) -> Value {
    fn or_null<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
        v.map_or(Value::Null, f)
    }
    match arg {
        Arg::Text(v) => or_null(v.clone(), Value::Text),
        Arg::Int(v) => or_null(*v, Value::Integer),
        Arg::Real(v) => or_null(*v, Value::Real),
        Arg::Bool(v) => or_null(*v, |b| Value::Integer(i64::from(b))),
        Arg::Time(v) => or_null(*v, |t| Value::Text(super::sqlite::ts(t))),
        Arg::Json(v) => Value::Text(v.to_string()),
        Arg::List(v) => Value::Text(super::sqlite::json_list(v)),
    }
}

/// A row read by this thread: its columns' names and values.
pub(crate) struct NativeRow {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl NativeRow {
    fn get(&self, column: &str) -> Result<&Value, String> {
        self.columns
            .iter()
            .position(|c| c == column)
            .map(|i| &self.values[i])
            .ok_or_else(|| format!("no column {column}"))
    }

    pub(super) fn opt_text(&self, column: &str) -> Result<Option<String>, String> {
        match self.get(column)? {
            Value::Null => Ok(None),
            Value::Text(t) => Ok(Some(t.clone())),
            other => Err(format!("{other:?} is not text")),
        }
    }

    pub(super) fn opt_int(&self, column: &str) -> Result<Option<i64>, String> {
        match self.get(column)? {
            Value::Null => Ok(None),
            Value::Integer(i) => Ok(Some(*i)),
            other => Err(format!("{other:?} is not an integer")),
        }
    }

    pub(super) fn opt_real(&self, column: &str) -> Result<Option<f64>, String> {
        match self.get(column)? {
            Value::Null => Ok(None),
            Value::Real(r) => Ok(Some(*r)),
            Value::Integer(i) => Ok(Some(*i as f64)),
            other => Err(format!("{other:?} is not a number")),
        }
    }

    pub(super) fn opt_bool(&self, column: &str) -> Result<Option<bool>, String> {
        super::sqlite::bool_of(self.opt_int(column)?)
    }

    pub(super) fn opt_time(
        &self,
        column: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, String> {
        super::sqlite::time_of(self.opt_text(column)?)
    }

    pub(super) fn opt_json(&self, column: &str) -> Result<Option<serde_json::Value>, String> {
        super::sqlite::json_of(self.opt_text(column)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_connection_has_the_stores_settings() {
        let conn = Connection::open_in_memory().unwrap();
        configure(&conn).unwrap();
        let pragma = |name: &str| -> i64 {
            conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(pragma("foreign_keys"), 1);
        assert_eq!(pragma("busy_timeout"), BUSY_TIMEOUT_MS as i64);
        assert_eq!(pragma("synchronous"), 2, "FULL");
        assert_eq!(pragma("temp_store"), 2, "MEMORY");
    }

    #[test]
    fn placeholders_are_numbered_for_sqlite() {
        assert_eq!(
            numbered("UPDATE t SET a = $2, b = $10 WHERE c = $1 AND d = '$x'"),
            "UPDATE t SET a = ?2, b = ?10 WHERE c = ?1 AND d = '$x'"
        );
    }
}
