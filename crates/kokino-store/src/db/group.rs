//! Group commit for SQLite: the writes of many callers in one transaction and one fsync.
//!
//! SQLite admits one writer at a time, and with `synchronous=FULL` every commit waits for the
//! disk. When an execution's begin, its process id and its finish were commits of their own
//! (and each batch of telemetry events another), concurrent executions queued on the one writer
//! connection for a transaction and an fsync each. Here the writes of the execute path go to one
//! task that takes
//! whatever is queued, runs all of it in one `BEGIN IMMEDIATE … COMMIT`, and only then answers
//! each caller. A caller therefore still hears "done" only once its write is on disk; it shares
//! the fsync with whoever wrote at the same time, and it never waits for a batch to fill: the
//! task starts as soon as one write is queued, and what arrives meanwhile goes into the next.
//!
//! A batch whose writes or commit fail is rolled back as a whole and its writes are run again
//! one transaction each, so that one caller's error (a conversation deleted meanwhile, a
//! constraint) is that caller's answer alone and the others are unaffected. Writes are
//! therefore closures the task may call twice; each call starts from a transaction in which
//! nothing of it was written.
//!
//! A batch whose writes are all [`Durability::Committed`] commits without an fsync; one durable
//! write in it makes the whole batch durable.
//!
//! The task borrows the writer connection from the writer pool per batch, so the store's other
//! writers (maintenance, registration, leases) keep their turn in that pool's queue.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::{Durability, Plan, Query, Row, Tx, TxFuture};
use crate::{Result, StoreError};

/// The most writes one transaction takes. A bound keeps one batch's transaction short when a
/// burst queues thousands of writes at once.
const MAX_BATCH: usize = 128;

/// How many writes may wait for the task before callers wait to queue.
const QUEUE: usize = 4096;

/// A value of any type, as it travels back to the caller that knows the type.
type Erased = Box<dyn Any + Send>;

/// A write as the task holds it: callable again after a rolled-back attempt.
type Op = Box<dyn for<'t> Fn(&'t mut Tx) -> TxFuture<'t, Erased> + Send + Sync>;

/// One queued write and where its answer goes.
struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Erased>>,
    /// The write may wait up to [`LAZY_WINDOW`] for an urgent one to share its commit.
    lazy: bool,
    durability: Durability,
    /// The write as one query with its own transaction, for when it is alone in its group.
    trip: Option<Trip>,
}

/// Turns rows into a write's answer.
type Decode = Box<dyn FnOnce(Vec<Row>) -> Result<Erased> + Send>;

/// A write's one-trip query (`BEGIN IMMEDIATE; …; COMMIT`), its decoding, and whether it runs
/// at `synchronous=NORMAL` (see [`Durability::Committed`]).
struct OneTrip {
    query: Query,
    decode: Decode,
    relaxed: bool,
}

/// Builds a write's [`OneTrip`].
type Trip = Box<dyn Fn() -> OneTrip + Send + Sync>;

/// How long lazy writes (telemetry events, a process id already safe in a claim file) wait for
/// an urgent write to carry them before they are committed on their own. Under load an urgent
/// write comes long before; when the broker is quiet, this is the delay they see.
const LAZY_WINDOW: std::time::Duration = std::time::Duration::from_millis(50);

/// The handle the store keeps: queues writes for the group-commit task.
#[derive(Clone, Debug)]
pub(crate) struct GroupWriter {
    queue: mpsc::Sender<Job>,
    stats: Arc<Counters>,
}

/// What the task writes through: the writer pool (one connection) and its relaxed-durability
/// flag (see `sqlite::begin`).
#[derive(Clone)]
struct Writer {
    pool: SqlitePool,
    relaxed: Arc<AtomicBool>,
}

/// What the task has done so far (see [`crate::GroupCommitStats`]).
#[derive(Debug, Default)]
struct Counters {
    writes: AtomicU64,
    commits: AtomicU64,
}

impl GroupWriter {
    /// Starts the task that writes through `pool` (the one writer connection). The task ends
    /// when the last handle is dropped.
    pub(crate) fn start(pool: SqlitePool, relaxed: Arc<AtomicBool>) -> GroupWriter {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let stats = Arc::new(Counters::default());
        tokio::spawn(run(Writer { pool, relaxed }, jobs, stats.clone()));
        GroupWriter { queue, stats }
    }

    /// How many writes were committed, and in how many commits.
    pub(crate) fn stats(&self) -> crate::GroupCommitStats {
        crate::GroupCommitStats {
            writes: self.stats.writes.load(Ordering::Relaxed),
            commits: self.stats.commits.load(Ordering::Relaxed),
        }
    }

    /// Runs `op` in the next group transaction and answers once that transaction is committed.
    /// A `lazy` write may wait a little for an urgent one to share its commit (see
    /// [`LAZY_WINDOW`]).
    pub(crate) async fn write<T, F>(&self, lazy: bool, durability: Durability, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'t> Fn(&'t mut Tx) -> TxFuture<'t, T> + Send + Sync + 'static,
    {
        let op: Op = Box::new(move |tx| {
            let fut = op(tx);
            Box::pin(async move { fut.await.map(|v| Box::new(v) as Erased) })
        });
        self.submit(op, lazy, durability, None).await
    }

    /// A write that is one batch of statements needing nothing read first (see
    /// [`super::Db::grouped_plan`]). The one urgent write of its group, the batch goes to
    /// sqlx's thread together with its `BEGIN IMMEDIATE` and `COMMIT`, one trip instead of
    /// three.
    pub(crate) async fn write_plan<T, P>(&self, durability: Durability, plan: P) -> Result<T>
    where
        T: Send + 'static,
        P: Fn() -> Plan<T> + Send + Sync + 'static,
    {
        let plan = Arc::new(plan);
        let for_op = plan.clone();
        let op: Op = Box::new(move |tx| {
            let (batch, decode) = for_op();
            Box::pin(
                async move { decode(batch.fetch_all(tx).await?).map(|v| Box::new(v) as Erased) },
            )
        });
        let relaxed = durability == Durability::Committed;
        let trip: Trip = Box::new(move || {
            let (batch, decode) = plan();
            let mut query = batch.joined(false);
            // `synchronous` cannot change inside a transaction: the pragma comes first, in the
            // same query (sqlx runs its statements in order, preparing each after the one
            // before it has run).
            let pragma = if relaxed {
                "PRAGMA synchronous = NORMAL;\n"
            } else {
                ""
            };
            query.sql = format!("{pragma}BEGIN IMMEDIATE;\n{};\nCOMMIT", query.sql);
            let decode: Decode = Box::new(move |rows| decode(rows).map(|v| Box::new(v) as Erased));
            OneTrip {
                query,
                decode,
                relaxed,
            }
        });
        self.submit(op, false, durability, Some(trip)).await
    }

    /// Queues a write and waits for its answer.
    async fn submit<T: Send + 'static>(
        &self,
        op: Op,
        lazy: bool,
        durability: Durability,
        trip: Option<Trip>,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Unavailable("the store's writer has stopped".to_owned());
        self.queue
            .send(Job {
                op,
                reply,
                lazy,
                durability,
                trip,
            })
            .await
            .map_err(|_| gone())?;
        let value = answer.await.map_err(|_| gone())??;
        value.downcast::<T>().map(|v| *v).map_err(|_| {
            StoreError::Database("a grouped write answered with a value of another type".into())
        })
    }
}

/// The task: one batch at a time, each as large as what is queued when the previous one ends.
async fn run(writer: Writer, mut jobs: mpsc::Receiver<Job>, stats: Arc<Counters>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if batch.iter().all(|job| job.lazy) {
            // Nothing urgent yet: give one a moment to come and carry these.
            let _ = tokio::time::timeout(LAZY_WINDOW, async {
                while batch.len() < MAX_BATCH {
                    let room = MAX_BATCH - batch.len();
                    if jobs.recv_many(&mut batch, room).await == 0 {
                        break;
                    }
                    if batch.iter().any(|job| !job.lazy) {
                        break;
                    }
                }
            })
            .await;
        }
        // A caller that stopped waiting (its request was dropped) no longer wants the write;
        // running it anyway would leave, for example, an execution marked running that no one
        // runs.
        batch.retain(|job| !job.reply.is_closed());
        // In a task of its own, so that a write that panics fails its own batch (whose callers
        // hear that the writer stopped) instead of ending the writer for every later write.
        // The panic itself is reported by the panic hook; its callers' answers were dropped
        // with the batch, which they hear as the writer having stopped.
        let jobs_now = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        let _ = tokio::spawn(commit(writer.clone(), jobs_now, stats.clone())).await;
    }
}

/// Writes one batch and answers its callers.
async fn commit(writer: Writer, mut batch: Vec<Job>, stats: Arc<Counters>) {
    // One urgent write that can go in one trip goes first, on its own: the lazy writes that
    // came with it (telemetry, a process id) would add their statements' trips to the time its
    // caller waits, and they need no fsync; they follow in a commit of their own.
    let mut urgent = (0..batch.len()).filter(|&i| !batch[i].lazy);
    if let (Some(i), None) = (urgent.next(), urgent.next()) {
        if let Some(trip) = &batch[i].trip {
            if let Some(answer) = one_trip(&writer, trip).await {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.writes.fetch_add(1, Ordering::Relaxed);
                let _ = batch.remove(i).reply.send(answer);
                if batch.is_empty() {
                    return;
                }
            }
        }
    }
    if batch.len() > 1 {
        if let Ok(values) = together(&writer, &batch).await {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats
                .writes
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            for (job, value) in batch.drain(..).zip(values) {
                let _ = job.reply.send(Ok(value));
            }
            return;
        }
    }
    // One write alone, or a batch that failed: each in its own transaction, with its own
    // answer.
    for job in batch {
        let answer = alone(&writer, &job).await;
        if answer.is_ok() {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats.writes.fetch_add(1, Ordering::Relaxed);
        }
        let _ = job.reply.send(answer);
    }
}

/// A write with its transaction in one query. `None` when it failed, wherever it failed: the
/// connection may then still be inside the transaction, so it is closed (which rolls back)
/// rather than second-guessed, and the caller runs the write again on its own, like any failed
/// write, so that its answer is that run's error. `COMMIT` is the query's last statement, so a
/// query that failed did not commit. The connection is at `synchronous=FULL` when it is lent:
/// relaxed writes set it to `NORMAL` in their own query and put `FULL` back when they release
/// it (see `sqlite::begin`).
async fn one_trip(writer: &Writer, trip: &Trip) -> Option<Result<Erased>> {
    let mut conn = writer.pool.acquire().await.ok()?;
    let OneTrip {
        query,
        decode,
        relaxed,
    } = trip();
    if relaxed {
        // Set while this write holds the connection (see `sqlite::begin`), so that its release
        // puts `FULL` back.
        writer.relaxed.store(true, Ordering::Release);
    }
    match super::sqlite::prepare(&query.sql, &query.args)
        .fetch_all(&mut *conn)
        .await
    {
        Ok(rows) => Some(decode(rows.into_iter().map(Row::from).collect())),
        Err(_) => {
            conn.close_on_drop();
            None
        }
    }
}

/// All of `batch` in one transaction; any failure rolls all of it back.
async fn together(writer: &Writer, batch: &[Job]) -> Result<Vec<Erased>> {
    // One write that must be on disk makes the whole commit wait for the disk.
    let durability = if batch.iter().any(|j| j.durability == Durability::OnDisk) {
        Durability::OnDisk
    } else {
        Durability::Committed
    };
    let mut tx = begin(writer, durability).await?;
    let mut values = Vec::with_capacity(batch.len());
    for job in batch {
        values.push((job.op)(&mut tx).await?);
    }
    tx.commit().await?;
    Ok(values)
}

/// One write in a transaction of its own.
async fn alone(writer: &Writer, job: &Job) -> Result<Erased> {
    let mut tx = begin(writer, job.durability).await?;
    let value = (job.op)(&mut tx).await?;
    tx.commit().await?;
    Ok(value)
}

/// A transaction holding SQLite's write lock (see the backend's module documentation).
async fn begin(writer: &Writer, durability: Durability) -> Result<Tx> {
    super::sqlite::begin(&writer.pool, &writer.relaxed, durability).await
}
