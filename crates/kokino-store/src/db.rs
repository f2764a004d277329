//! The dialect layer: the one place where the store's operations meet a concrete database.
//!
//! Every operation of the store is written once, against the small vocabulary defined here:
//!
//! * [`Query`] holds SQL text and its parameters as [`Arg`]s. The text uses `$1`, `$2`, …
//!   placeholders, which both PostgreSQL and SQLite (through sqlx) accept, so one statement
//!   serves both wherever the SQL itself is the same.
//! * An [`Arg`] is a domain value (text, integer, time, JSON, …); each backend encodes it in its
//!   own column type (a timestamp is RFC 3339 text on SQLite and TIMESTAMPTZ on PostgreSQL, JSON
//!   is text on SQLite and JSONB on PostgreSQL, a boolean is 0/1 on SQLite).
//! * A [`Row`] is read through [`Fields`], which decodes those column types back into domain
//!   values and reports every failure as [`StoreError::Corrupt`] naming the table.
//! * [`On`] says where a statement runs: the readers, the writer, or an open [`Tx`].
//!
//! What really differs between the databases stays in the backend modules: opening and tuning
//! the connections, how a write transaction starts, PostgreSQL's per-agent advisory locks, the
//! lease statements (which clock decides, LISTEN/NOTIFY) and SQLite's pragmas.

use chrono::{DateTime, Utc};
use kokino_core::AgentId;

use crate::error::from_sqlx;
use crate::{Result, StoreError};

#[cfg(feature = "sqlite")]
pub(crate) mod group;
#[cfg(feature = "sqlite")]
pub(crate) mod native;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

/// A connection pool of one backend.
#[derive(Clone, Debug)]
pub(crate) enum Db {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlite::SqliteDb),
    #[cfg(feature = "postgres")]
    Postgres(postgres::PgDb),
}

/// What a grouped write's future borrows: the transaction it runs in (see [`Db::grouped_plan`]).
pub(crate) type TxFuture<'t, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send + 't>>;

/// An open transaction of one backend. Dropping it without [`Tx::commit`] rolls it back.
pub(crate) enum Tx {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// A write that is one batch: its statements and what makes its answer of their rows (see
/// [`Db::grouped_plan`]).
pub(crate) type Plan<T> = (Batch, Box<dyn FnOnce(Vec<Row>) -> Result<T> + Send>);

/// The plan of a write whose statements answer nothing the caller needs.
pub(crate) fn plan_of(statements: impl IntoIterator<Item = Query>) -> Plan<()> {
    (statements.into_iter().collect(), Box::new(|_| Ok(())))
}

/// How far a write has gone when its caller hears that it is done.
///
/// Both levels are atomic and visible to every reader at once, and both survive the broker's
/// death at any instant: a committed write is in the operating system's hands. They differ only
/// on a crash of the machine itself (power loss, kernel panic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// On disk: the commit waited for the fsync (SQLite `synchronous=FULL`, PostgreSQL
    /// `synchronous_commit=on`). Everything an answer or a decision depends on.
    OnDisk,
    /// Committed without waiting for the disk; on disk with the next [`Durability::OnDisk`]
    /// commit at the latest. Both backends write their log in commit order and an fsync covers
    /// everything before it (SQLite's WAL file; PostgreSQL flushes its WAL up to the commit's
    /// position), so a later durable commit cannot be answered before this one is on disk too.
    /// For writes that a durable write always follows before anyone relies on them: the user
    /// turn and the running execution, which the execution's durable finish follows before
    /// the caller gets its answer; telemetry; a process id that a claim file also names.
    Committed,
}

/// Where a statement runs.
pub(crate) enum On<'a> {
    /// A pooled reader connection (no transaction).
    Read(&'a Db),
    /// The connection that writes: one statement, atomic on its own.
    Write(&'a Db),
    /// An open transaction.
    Tx(&'a mut Tx),
}

impl<'a> From<&'a mut Tx> for On<'a> {
    fn from(tx: &'a mut Tx) -> Self {
        On::Tx(tx)
    }
}

impl Db {
    /// Statements that only read.
    pub(crate) fn read(&self) -> On<'_> {
        On::Read(self)
    }

    /// A single statement that writes; it needs no transaction of its own.
    pub(crate) fn write(&self) -> On<'_> {
        On::Write(self)
    }

    /// Starts a transaction that will write. On SQLite it takes the database's write lock at
    /// once (`BEGIN IMMEDIATE`); on PostgreSQL writers run concurrently and serialise per agent
    /// with [`Tx::lock_agents`]. Its commit is on disk when it returns.
    pub(crate) async fn write_tx(&self) -> Result<Tx> {
        self.write_tx_as(Durability::OnDisk).await
    }

    /// [`Db::write_tx`] whose commit may return before it is on disk (see
    /// [`Durability::Committed`]).
    pub(crate) async fn write_tx_as(&self, durability: Durability) -> Result<Tx> {
        match self {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(db) => db.write_tx(durability).await,
            #[cfg(feature = "postgres")]
            Db::Postgres(db) => db.begin(postgres::begin_statement(durability)).await,
        }
    }

    /// Runs a write of the execute path and answers once it is committed, and on disk unless
    /// `durability` says otherwise.
    ///
    /// On SQLite the write is `plan`: one batch of statements needing nothing read first, and
    /// the decoding of its rows. It runs in one transaction with the other writes queued at the
    /// same time, on the store's writer thread (group commit: one fsync for all of them, see
    /// [`group`] and [`native`]); `plan` may be called again for a retry of its own when the
    /// shared transaction fails. PostgreSQL commits concurrent transactions in parallel and
    /// groups their WAL flushes itself: there `op` runs in a transaction of its own, taking
    /// the agent locks it needs.
    pub(crate) async fn grouped_plan<T, P, F>(
        &self,
        durability: Durability,
        plan: P,
        op: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        P: Fn() -> Plan<T> + Send + Sync + 'static,
        F: for<'t> Fn(&'t mut Tx) -> TxFuture<'t, T> + Send + Sync + 'static,
    {
        self.grouped_plan_as(false, durability, plan, op).await
    }

    /// [`Db::grouped_plan`] for writes that need not be on disk at once (telemetry, facts a
    /// claim file already keeps): they are [`Durability::Committed`], and on SQLite they wait
    /// up to 50 ms for a durable write (an execution's finish) to share its commit, so that
    /// they add no commit of their own while the broker is busy.
    pub(crate) async fn grouped_plan_lazily<T, P, F>(&self, plan: P, op: F) -> Result<T>
    where
        T: Send + 'static,
        P: Fn() -> Plan<T> + Send + Sync + 'static,
        F: for<'t> Fn(&'t mut Tx) -> TxFuture<'t, T> + Send + Sync + 'static,
    {
        self.grouped_plan_as(true, Durability::Committed, plan, op)
            .await
    }

    #[cfg_attr(not(feature = "sqlite"), allow(unused_variables))]
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    async fn grouped_plan_as<T, P, F>(
        &self,
        lazy: bool,
        durability: Durability,
        plan: P,
        op: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        P: Fn() -> Plan<T> + Send + Sync + 'static,
        F: for<'t> Fn(&'t mut Tx) -> TxFuture<'t, T> + Send + Sync + 'static,
    {
        match self {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(db) => db.group.write_plan(lazy, durability, plan).await,
            #[cfg(feature = "postgres")]
            Db::Postgres(db) => {
                let mut tx = db.begin(postgres::begin_statement(durability)).await?;
                let value = op(&mut tx).await?;
                tx.commit().await?;
                Ok(value)
            }
        }
    }

    /// Starts a read-only transaction whose statements all see one snapshot.
    pub(crate) async fn read_tx(&self) -> Result<Tx> {
        match self {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(db) => db.read_tx().await,
            // READ COMMITTED takes a new snapshot per statement; REPEATABLE READ gives one
            // snapshot for the whole transaction, as SQLite's read transaction does. A read-only
            // transaction at that level never fails with a serialisation error.
            #[cfg(feature = "postgres")]
            Db::Postgres(db) => {
                db.begin_read("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await
            }
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Db::Postgres(_) => "postgres",
        }
    }

    /// The SQL condition "`column` is one of the texts bound at `param`" (an [`Arg::List`]):
    /// PostgreSQL compares with an array, SQLite has none and reads the list as a JSON array.
    pub(crate) fn in_list(&self, column: &str, param: u32) -> String {
        match self {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(_) => format!("{column} IN (SELECT value FROM json_each(${param}))"),
            #[cfg(feature = "postgres")]
            Db::Postgres(_) => format!("{column} = ANY(${param})"),
        }
    }
}

impl Tx {
    /// Commits the transaction.
    pub(crate) async fn commit(self) -> Result<()> {
        match self {
            #[cfg(feature = "sqlite")]
            Tx::Sqlite(tx) => tx.commit().await.map_err(from_sqlx),
            #[cfg(feature = "postgres")]
            Tx::Postgres(tx) => tx.commit().await.map_err(from_sqlx),
        }
    }

    /// Whether writes in this transaction take agent locks ([`Tx::lock_agents`]): PostgreSQL's
    /// do; SQLite's write transaction holds the database's one write lock already.
    pub(crate) fn locks_agents(&self) -> bool {
        match self {
            #[cfg(feature = "sqlite")]
            Tx::Sqlite(_) => false,
            #[cfg(feature = "postgres")]
            Tx::Postgres(_) => true,
        }
    }

    /// Takes the write locks of the given agents until the transaction ends. Every transaction
    /// that writes an agent's session, conversations or turns calls this before it writes; on
    /// SQLite, whose write transactions hold the one write lock already, it does nothing.
    // Without PostgreSQL there is nothing to lock, and the ids go unread.
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    pub(crate) async fn lock_agents(&mut self, agent_ids: &[&str]) -> Result<()> {
        match self {
            #[cfg(feature = "sqlite")]
            Tx::Sqlite(_) => Ok(()),
            #[cfg(feature = "postgres")]
            Tx::Postgres(_) => postgres::lock_agents(self, agent_ids).await,
        }
    }

    /// Takes the write lock of the agent a conversation belongs to; an unknown conversation locks
    /// nothing. The read needs no lock of its own: a conversation's agent never changes.
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    pub(crate) async fn lock_conversation_agent(&mut self, conversation_id: &str) -> Result<()> {
        match self {
            #[cfg(feature = "sqlite")]
            Tx::Sqlite(_) => Ok(()),
            #[cfg(feature = "postgres")]
            Tx::Postgres(_) => {
                let row =
                    Query::new("SELECT agent_id FROM conversations WHERE conversation_id = $1")
                        .bind(conversation_id)
                        .fetch_optional(&mut *self)
                        .await?;
                if let Some(row) = row {
                    let agent = Fields::new(&row, "conversations").text("agent_id")?;
                    self.lock_agents(&[agent.as_str()]).await?;
                }
                Ok(())
            }
        }
    }
}

// ---- parameters ----

/// One bound parameter, as a domain value; each backend encodes it in its own column type.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
    Real(Option<f64>),
    Bool(Option<bool>),
    /// Truncated to the millisecond by both backends, the precision of every stored time.
    Time(Option<DateTime<Utc>>),
    Json(serde_json::Value),
    /// A list of texts for [`Db::in_list`].
    List(Vec<String>),
}

impl Arg {
    /// Any serialisable value as JSON.
    pub(crate) fn json<T: serde::Serialize + ?Sized>(value: &T) -> Arg {
        // Serialising maps with string keys, vectors of strings and JSON values cannot fail.
        Arg::Json(serde_json::to_value(value).unwrap_or(serde_json::Value::Null))
    }

    /// A list of texts for [`Db::in_list`].
    pub(crate) fn list(items: &[&str]) -> Arg {
        Arg::List(items.iter().map(|s| (*s).to_owned()).collect())
    }
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(Some(v.to_owned()))
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Arg::Text(Some(v.clone()))
    }
}
impl From<&AgentId> for Arg {
    fn from(v: &AgentId) -> Self {
        Arg::Text(Some(v.as_str().to_owned()))
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::Text(v.map(str::to_owned))
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}
impl From<Option<f64>> for Arg {
    fn from(v: Option<f64>) -> Self {
        Arg::Real(v)
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Arg::Bool(Some(v))
    }
}
impl From<Option<bool>> for Arg {
    fn from(v: Option<bool>) -> Self {
        Arg::Bool(v)
    }
}
impl From<DateTime<Utc>> for Arg {
    fn from(v: DateTime<Utc>) -> Self {
        Arg::Time(Some(v))
    }
}

// ---- statements ----

/// SQL text with `$n` placeholders and its parameters, in order.
#[derive(Debug, Clone)]
pub(crate) struct Query {
    sql: String,
    args: Vec<Arg>,
}

/// The sqlx query for `$sql` with `$args` bound in order. The values whose column types differ
/// between the backends are encoded by the backend's `$time`, `$json` and `$list` functions;
/// every other value is bound as it is.
macro_rules! prepare {
    ($sql:expr, $args:expr, time: $time:expr, json: $json:expr, list: $list:expr) => {
        $args.iter().fold(sqlx::query($sql), |q, arg| match arg {
            Arg::Text(v) => q.bind(v.as_deref()),
            Arg::Int(v) => q.bind(*v),
            Arg::Real(v) => q.bind(*v),
            Arg::Bool(v) => q.bind(*v),
            Arg::Time(v) => q.bind(v.map($time)),
            Arg::Json(v) => q.bind($json(v)),
            Arg::List(v) => q.bind($list(v)),
        })
    };
}
pub(crate) use prepare;

/// Runs `$body` with `$q` bound to the backend's prepared sqlx query and `$ex` to the executor
/// `$on` names. Each arm is type-checked against its own database, which is what lets the
/// statement code above it stay backend-neutral.
macro_rules! run {
    ($query:expr, $on:expr, |$q:ident, $ex:ident| $body:expr) => {
        match $on {
            #[cfg(feature = "sqlite")]
            On::Read(Db::Sqlite(db)) => {
                let mut lent = db.lend().await?;
                let $q = sqlite::prepare(&$query.sql, &$query.args);
                let $ex = lent.conn();
                let out = $body;
                lent.finished();
                out
            }
            #[cfg(feature = "sqlite")]
            On::Write(Db::Sqlite(db)) => {
                let _asking = db.asking();
                let $q = sqlite::prepare(&$query.sql, &$query.args);
                let $ex = &db.writer;
                $body
            }
            #[cfg(feature = "sqlite")]
            On::Tx(Tx::Sqlite(tx)) => {
                let $q = sqlite::prepare(&$query.sql, &$query.args);
                let $ex = &mut **tx;
                $body
            }
            #[cfg(feature = "postgres")]
            On::Read(Db::Postgres(db)) => {
                let $q = postgres::prepare(&$query.sql, &$query.args);
                let $ex = &db.readers;
                $body
            }
            #[cfg(feature = "postgres")]
            On::Write(Db::Postgres(db)) => {
                let $q = postgres::prepare(&$query.sql, &$query.args);
                let $ex = &db.pool;
                $body
            }
            #[cfg(feature = "postgres")]
            On::Tx(Tx::Postgres(tx)) => {
                let $q = postgres::prepare(&$query.sql, &$query.args);
                let $ex = &mut **tx;
                $body
            }
        }
    };
}

impl Query {
    pub(crate) fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            args: Vec::new(),
        }
    }

    /// Adds the next parameter (`$1` first).
    pub(crate) fn bind(mut self, arg: impl Into<Arg>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends SQL text; for statements assembled piece by piece.
    pub(crate) fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    /// Appends the placeholder of a new parameter and binds it.
    pub(crate) fn push_bind(&mut self, arg: impl Into<Arg>) -> &mut Self {
        self.args.push(arg.into());
        let placeholder = format!("${}", self.args.len());
        self.sql.push_str(&placeholder);
        self
    }

    /// Runs the statement; returns how many rows it changed.
    pub(crate) async fn execute(self, on: impl Into<On<'_>>) -> Result<u64> {
        run!(self, on.into(), |q, ex| q
            .execute(ex)
            .await
            .map(|done| done.rows_affected())
            .map_err(from_sqlx))
    }

    /// Runs the statement and returns all rows.
    pub(crate) async fn fetch_all(self, on: impl Into<On<'_>>) -> Result<Vec<Row>> {
        run!(self, on.into(), |q, ex| q
            .fetch_all(ex)
            .await
            .map(|rows| rows.into_iter().map(Row::from).collect())
            .map_err(from_sqlx))
    }

    /// Runs the statement and returns its first row, if any.
    pub(crate) async fn fetch_optional(self, on: impl Into<On<'_>>) -> Result<Option<Row>> {
        run!(self, on.into(), |q, ex| q
            .fetch_optional(ex)
            .await
            .map(|row| row.map(Row::from))
            .map_err(from_sqlx))
    }

    /// Runs a statement that always returns a row (an aggregate, `RETURNING` of an insert).
    pub(crate) async fn fetch_one(self, on: impl Into<On<'_>>) -> Result<Row> {
        run!(self, on.into(), |q, ex| q
            .fetch_one(ex)
            .await
            .map(Row::from)
            .map_err(from_sqlx))
    }
}

/// Statements that run together, in one round trip: on SQLite as one query of several
/// statements (one trip to sqlx's connection thread instead of one per statement, which is where
/// the execute path's writes spent their time), on PostgreSQL as one statement whose earlier
/// statements are data-modifying `WITH` clauses of the last (one network round trip instead of
/// one per statement).
///
/// Only the last statement may return rows (`RETURNING`): PostgreSQL returns the main
/// statement's rows alone. The statements must not depend on one another's changes: on
/// PostgreSQL they all see the database as it was before the batch.
///
/// Each statement is written with its own `$1`, `$2`…; they are renumbered after the parameters
/// of the statements before it, since both backends then bind `$n` over the whole query.
#[derive(Debug, Default)]
pub(crate) struct Batch(Vec<Query>);

impl FromIterator<Query> for Batch {
    fn from_iter<I: IntoIterator<Item = Query>>(statements: I) -> Self {
        Batch(statements.into_iter().collect())
    }
}

impl Batch {
    /// Adds a statement.
    pub(crate) fn push(&mut self, query: Query) -> &mut Self {
        self.0.push(query);
        self
    }

    /// The statements, each with its own `$1`, `$2`….
    #[cfg(feature = "sqlite")]
    pub(crate) fn into_queries(self) -> Vec<Query> {
        self.0
    }

    /// Runs every statement and returns the rows of the last. A statement that fails fails the
    /// batch; the caller's transaction rolls back what ran before it.
    pub(crate) async fn fetch_all(self, tx: &mut Tx) -> Result<Vec<Row>> {
        let as_with = match tx {
            #[cfg(feature = "sqlite")]
            Tx::Sqlite(_) => false,
            #[cfg(feature = "postgres")]
            Tx::Postgres(_) => true,
        };
        self.joined(as_with).fetch_all(tx).await
    }

    /// The statements as one query, each one's `$n` shifted past the parameters before it:
    /// separated by `;` for SQLite, as `WITH` clauses of the last for PostgreSQL.
    fn joined(self, as_with: bool) -> Query {
        let mut out = Query::new(String::new());
        let last = self.0.len().saturating_sub(1);
        for (i, q) in self.0.into_iter().enumerate() {
            let sql = renumber(&q.sql, out.args.len());
            if !as_with {
                if i > 0 {
                    out.sql.push_str(";\n");
                }
                out.sql.push_str(&sql);
            } else if i == last {
                out.sql.push_str(&sql);
            } else {
                out.sql.push_str(if i == 0 { "WITH " } else { ", " });
                out.sql.push_str(&format!("b{i} AS ({sql})\n"));
            }
            out.args.extend(q.args);
        }
        out
    }
}

/// `sql` with every placeholder `$n` replaced by `$(n + offset)`. Our statements carry no `$`
/// in literals, so every `$` followed by digits is a placeholder.
fn renumber(sql: &str, offset: usize) -> String {
    if offset == 0 {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let start = i + 1;
        let mut end = start;
        while let Some(&(j, d)) = chars.peek() {
            if !d.is_ascii_digit() {
                break;
            }
            end = j + 1;
            chars.next();
        }
        if end > start {
            let n: usize = sql[start..end].parse().unwrap_or(0);
            out.push_str(&(n + offset).to_string());
        }
    }
    out
}

// ---- rows ----

/// One result row of either backend.
pub(crate) enum Row {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::sqlite::SqliteRow),
    /// A row of the SQLite writer thread (see [`native`]).
    #[cfg(feature = "sqlite")]
    Native(native::NativeRow),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::postgres::PgRow),
}

#[cfg(feature = "sqlite")]
impl From<sqlx::sqlite::SqliteRow> for Row {
    fn from(row: sqlx::sqlite::SqliteRow) -> Self {
        Row::Sqlite(row)
    }
}

#[cfg(feature = "postgres")]
impl From<sqlx::postgres::PgRow> for Row {
    fn from(row: sqlx::postgres::PgRow) -> Self {
        Row::Postgres(row)
    }
}

/// Reads a column whose type both backends store alike (text, integers, reals).
fn plain<'r, R, T>(row: &'r R, column: &str) -> Result<T, String>
where
    R: sqlx::Row,
    T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
{
    row.try_get(column).map_err(|e| e.to_string())
}

/// Runs `$plain` on a plain column of either backend, or the backend's own decoder.
macro_rules! column {
    ($row:expr, $column:expr, $native:ident, sqlite: $sqlite:path, postgres: $postgres:path) => {
        match $row {
            #[cfg(feature = "sqlite")]
            Row::Sqlite(r) => $sqlite(r, $column),
            #[cfg(feature = "sqlite")]
            Row::Native(r) => r.$native($column),
            #[cfg(feature = "postgres")]
            Row::Postgres(r) => $postgres(r, $column),
        }
    };
}

impl Row {
    fn opt_text(&self, column: &str) -> Result<Option<String>, String> {
        column!(self, column, opt_text, sqlite: plain, postgres: plain)
    }
    fn opt_int(&self, column: &str) -> Result<Option<i64>, String> {
        column!(self, column, opt_int, sqlite: plain, postgres: plain)
    }
    fn opt_real(&self, column: &str) -> Result<Option<f64>, String> {
        column!(self, column, opt_real, sqlite: plain, postgres: plain)
    }
    fn opt_bool(&self, column: &str) -> Result<Option<bool>, String> {
        column!(self, column, opt_bool, sqlite: sqlite::opt_bool, postgres: plain)
    }
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, String> {
        column!(self, column, opt_time, sqlite: sqlite::opt_time, postgres: plain)
    }
    fn opt_json(&self, column: &str) -> Result<Option<serde_json::Value>, String> {
        column!(self, column, opt_json, sqlite: sqlite::opt_json, postgres: plain)
    }
}

/// Reads the columns of one row into domain values, turning every failure (a wrong type, a NULL
/// where none may be, an unparsable value) into [`StoreError::Corrupt`] naming the table.
pub(crate) struct Fields<'r> {
    row: &'r Row,
    table: &'static str,
}

impl<'r> Fields<'r> {
    pub(crate) fn new(row: &'r Row, table: &'static str) -> Self {
        Self { row, table }
    }

    pub(crate) fn corrupt(&self, column: &str, message: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            table: self.table,
            message: format!("column {column}: {message}"),
        }
    }

    fn required<T>(&self, column: &str, value: Result<Option<T>, String>) -> Result<T> {
        match value {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(self.corrupt(column, "unexpected NULL")),
            Err(e) => Err(self.corrupt(column, e)),
        }
    }

    fn optional<T>(&self, column: &str, value: Result<Option<T>, String>) -> Result<Option<T>> {
        value.map_err(|e| self.corrupt(column, e))
    }

    pub(crate) fn text(&self, column: &str) -> Result<String> {
        self.required(column, self.row.opt_text(column))
    }
    pub(crate) fn opt_text(&self, column: &str) -> Result<Option<String>> {
        self.optional(column, self.row.opt_text(column))
    }
    pub(crate) fn int(&self, column: &str) -> Result<i64> {
        self.required(column, self.row.opt_int(column))
    }
    pub(crate) fn opt_int(&self, column: &str) -> Result<Option<i64>> {
        self.optional(column, self.row.opt_int(column))
    }
    pub(crate) fn opt_real(&self, column: &str) -> Result<Option<f64>> {
        self.optional(column, self.row.opt_real(column))
    }
    pub(crate) fn bool(&self, column: &str) -> Result<bool> {
        self.required(column, self.row.opt_bool(column))
    }
    pub(crate) fn opt_bool(&self, column: &str) -> Result<Option<bool>> {
        self.optional(column, self.row.opt_bool(column))
    }
    pub(crate) fn time(&self, column: &str) -> Result<DateTime<Utc>> {
        self.required(column, self.row.opt_time(column))
    }
    pub(crate) fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>> {
        self.optional(column, self.row.opt_time(column))
    }

    /// A count (never negative in SQL; a negative value would be corrupt and reads as 0).
    pub(crate) fn count(&self, column: &str) -> Result<u64> {
        Ok(u64::try_from(self.int(column)?).unwrap_or(0))
    }

    /// An unsigned counter stored as a signed integer.
    pub(crate) fn unsigned_opt(&self, column: &str) -> Result<Option<u64>> {
        self.opt_int(column)?
            .map(|v| u64::try_from(v).map_err(|_| self.corrupt(column, "negative value")))
            .transpose()
    }

    /// A JSON value turned into the domain type: the database guarantees at most JSON, not its
    /// shape (an `env` that is an array is valid JSON but still corrupt).
    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self, column: &str) -> Result<T> {
        let value = self.required(column, self.row.opt_json(column))?;
        serde_json::from_value(value).map_err(|e| self.corrupt(column, e))
    }

    /// A text column parsed into a domain type (CLI type, mode, outcome).
    pub(crate) fn parse<T>(&self, column: &str) -> Result<T>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        self.text(column)?
            .parse()
            .map_err(|e| self.corrupt(column, e))
    }

    /// A nullable text column parsed into a domain type.
    pub(crate) fn parse_opt<T>(&self, column: &str) -> Result<Option<T>>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        self.opt_text(column)?
            .map(|t| t.parse().map_err(|e| self.corrupt(column, e)))
            .transpose()
    }

    pub(crate) fn agent_id(&self, column: &str) -> Result<AgentId> {
        AgentId::parse(&self.text(column)?).map_err(|e| self.corrupt(column, e))
    }
}

// ---- encoding shared by both backends ----

/// The current time, truncated to the millisecond, the precision every stored time has, so that
/// a record handed back by a write equals the same record read later.
pub(crate) fn now() -> DateTime<Utc> {
    ms(Utc::now())
}

/// A time truncated to the millisecond.
pub(crate) fn ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// Counters and limits are `u64` in the domain but 64-bit signed integers in SQL; values beyond
/// `i64::MAX` (hundreds of millions of years in ms) are effectively infinite anyway.
pub(crate) fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renumbers_placeholders_past_an_offset() {
        assert_eq!(renumber("a = $1 AND b = $12", 0), "a = $1 AND b = $12");
        assert_eq!(renumber("a = $1 AND b = $12", 3), "a = $4 AND b = $15");
        assert_eq!(renumber("x = $2, y = '$'", 1), "x = $3, y = '$'");
    }

    #[test]
    fn joins_statements_with_their_parameters_in_order() {
        let batch = || {
            let mut b = Batch::default();
            b.push(
                Query::new("INSERT INTO t VALUES ($1, $2)")
                    .bind("a")
                    .bind("b"),
            );
            b.push(Query::new("UPDATE u SET v = $1").bind("c"));
            b.push(Query::new("DELETE FROM w WHERE x = $1 RETURNING y").bind("d"));
            b
        };
        let q = batch().joined(false);
        assert_eq!(
            q.sql,
            "INSERT INTO t VALUES ($1, $2);\nUPDATE u SET v = $3;\nDELETE FROM w WHERE x = $4 RETURNING y"
        );
        assert_eq!(q.args.len(), 4);
        let q = batch().joined(true);
        assert_eq!(
            q.sql,
            "WITH b0 AS (INSERT INTO t VALUES ($1, $2))\n, b1 AS (UPDATE u SET v = $3)\nDELETE FROM w WHERE x = $4 RETURNING y"
        );
        assert_eq!(q.args.len(), 4);
    }
}
