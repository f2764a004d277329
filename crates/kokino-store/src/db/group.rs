//! Group commit for SQLite: the writes of many callers in one transaction and one fsync.
//!
//! SQLite admits one writer at a time, and with `synchronous=FULL` every commit waits for the
//! disk. When an execution's begin, its process id and its finish were commits of their own
//! (and each batch of telemetry events another), concurrent executions queued on the one writer
//! connection for a transaction and an fsync each. Here the writes of the execute path go to one
//! task that takes whatever is queued, runs all of it in one `BEGIN IMMEDIATE … COMMIT`, and
//! only then answers each caller. A caller therefore still hears "done" only once its write is
//! on disk; it shares the fsync with whoever wrote at the same time, and it never waits for a
//! batch to fill: the task starts as soon as one write is queued, and what arrives meanwhile
//! goes into the next.
//!
//! Every write here is a plan: its statements, known up front, and the decoding of their rows
//! (see [`super::Db::grouped_plan`]). A batch goes to the store's writer thread
//! ([`super::native`]) as one message and comes back as one answer.
//!
//! A batch whose writes or commit fail is rolled back as a whole and its writes are run again
//! one transaction each, so that one caller's error (a conversation deleted meanwhile, a
//! constraint) is that caller's answer alone and the others are unaffected. Plans are therefore
//! closures the task may call twice.
//!
//! A batch whose writes are all [`Durability::Committed`] commits without an fsync; one durable
//! write in it makes the whole batch durable.
//!
//! The task holds sqlx's one writer connection while the writer thread writes (and for a moment
//! after, see [`LINGER`]): the store's other writers (maintenance, registration, leases) keep
//! their turn in that pool's queue, and the writer thread never meets another writer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::native::{Decode, Erased, Write};
use super::{Durability, Plan};
use crate::{Result, StoreError};

/// The most writes one transaction takes. A bound keeps one batch's transaction short when a
/// burst queues thousands of writes at once.
const MAX_BATCH: usize = 128;

/// How many writes may wait for the task before callers wait to queue.
const QUEUE: usize = 4096;

/// A write: its statements and the decoding of their rows, built afresh for each attempt.
type PlanFn = Box<dyn Fn() -> Write + Send + Sync>;

/// One queued write and where its answer goes.
struct Job {
    plan: PlanFn,
    reply: oneshot::Sender<Result<Erased>>,
    /// The write may wait up to [`LAZY_WINDOW`] for a durable one to share its commit.
    lazy: bool,
    durability: Durability,
}

/// How long lazy writes (telemetry events, a process id already safe in a claim file) wait for
/// a durable write to carry them before they are committed on their own. Under load one comes
/// long before; when the broker is quiet, this is the delay they see.
const LAZY_WINDOW: std::time::Duration = std::time::Duration::from_millis(50);

/// The handle the store keeps: queues writes for the group-commit task.
#[derive(Clone, Debug)]
pub(crate) struct GroupWriter {
    queue: mpsc::Sender<Job>,
    stats: Arc<Counters>,
}

/// What the task writes through: the writer pool (its one connection, the token), who else
/// asks for it, and the writer thread.
#[derive(Clone)]
struct Writer {
    pool: SqlitePool,
    /// Who else wants the connection.
    demand: Arc<super::sqlite::Demand>,
    /// The thread that runs plans.
    native: super::native::Native,
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
    pub(crate) fn start(
        pool: SqlitePool,
        demand: Arc<super::sqlite::Demand>,
        native: super::native::Native,
    ) -> GroupWriter {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let stats = Arc::new(Counters::default());
        let writer = Writer {
            pool,
            demand,
            native,
        };
        tokio::spawn(run(writer, jobs, stats.clone()));
        GroupWriter { queue, stats }
    }

    /// How many writes were committed, and in how many commits.
    pub(crate) fn stats(&self) -> crate::GroupCommitStats {
        crate::GroupCommitStats {
            writes: self.stats.writes.load(Ordering::Relaxed),
            commits: self.stats.commits.load(Ordering::Relaxed),
        }
    }

    /// Runs `plan` in the next group transaction and answers once that transaction is
    /// committed. A `lazy` write may wait a little for a durable one to share its commit (see
    /// [`LAZY_WINDOW`]).
    pub(crate) async fn write_plan<T, P>(
        &self,
        lazy: bool,
        durability: Durability,
        plan: P,
    ) -> Result<T>
    where
        T: Send + 'static,
        P: Fn() -> Plan<T> + Send + Sync + 'static,
    {
        let plan: PlanFn = Box::new(move || {
            let (batch, decode) = plan();
            let decode: Decode = Box::new(move |rows| decode(rows).map(|v| Box::new(v) as Erased));
            (batch.into_queries(), decode)
        });
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Unavailable("the store's writer has stopped".to_owned());
        self.queue
            .send(Job {
                plan,
                reply,
                lazy,
                durability,
            })
            .await
            .map_err(|_| gone())?;
        let value = answer.await.map_err(|_| gone())??;
        value.downcast::<T>().map(|v| *v).map_err(|_| {
            StoreError::Database("a grouped write answered with a value of another type".into())
        })
    }
}

/// How long the task keeps the writer connection after its last write when nobody else asks
/// for it: the next execution's write usually comes within this, and then needs neither the
/// pool's release (a ping, a spawned task) nor a new acquire.
const LINGER: std::time::Duration = std::time::Duration::from_millis(20);

/// The writer connection while the task holds it, between batches.
type Conn = sqlx::pool::PoolConnection<sqlx::Sqlite>;

/// Why the task woke up.
enum Wake {
    /// Writes arrived (0: every handle is gone).
    Jobs(usize),
    /// The oldest lazy write has waited [`LAZY_WINDOW`].
    LazyDue,
    /// Another writer asked for the connection, or none came for [`LINGER`].
    Release,
}

/// The task: one batch at a time, each as large as what is queued when the previous one ends.
///
/// Lazy writes wait for a write that must be on disk (an execution's finish) and go in its
/// transaction: that commit waits for the disk anyway, and a few more statements add little
/// to it. Carried by a begin instead, they ran on the writer thread while the caller's CLI was
/// starting, and that run was measurably slower.
///
/// It keeps the writer connection from batch to batch while writes keep coming, and gives it
/// back to the pool when another writer asks for it (see `sqlite::Demand`), or after
/// [`LINGER`] without a write.
async fn run(writer: Writer, mut jobs: mpsc::Receiver<Job>, stats: Arc<Counters>) {
    let mut incoming = Vec::with_capacity(MAX_BATCH);
    let mut lazy: Vec<Job> = Vec::new();
    let mut due: Option<tokio::time::Instant> = None;
    let mut held: Option<Conn> = None;
    loop {
        let wake = tokio::select! {
            n = jobs.recv_many(&mut incoming, MAX_BATCH) => Wake::Jobs(n),
            () = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)),
                if due.is_some() => Wake::LazyDue,
            () = writer.demand.asked(), if held.is_some() => Wake::Release,
            () = tokio::time::sleep(LINGER), if held.is_some() && due.is_none() => Wake::Release,
        };
        let closed = matches!(wake, Wake::Jobs(0));
        if matches!(wake, Wake::Release) {
            held = None;
            continue;
        }
        let mut batch = Vec::with_capacity(incoming.len());
        for job in incoming.drain(..) {
            if job.lazy {
                due.get_or_insert_with(|| tokio::time::Instant::now() + LAZY_WINDOW);
                lazy.push(job);
            } else {
                batch.push(job);
            }
        }
        let carried = closed
            || matches!(wake, Wake::LazyDue)
            || lazy.len() >= MAX_BATCH
            || batch.iter().any(|job| job.durability == Durability::OnDisk);
        if carried {
            batch.append(&mut lazy);
            due = None;
        }
        // A caller that stopped waiting (its request was dropped) no longer wants the write;
        // running it anyway would leave, for example, an execution marked running that no one
        // runs.
        batch.retain(|job| !job.reply.is_closed());
        if !batch.is_empty() {
            // In a task of its own, so that a write that panics fails its own batch (whose
            // callers hear that the writer stopped) instead of ending the writer for every
            // later write. The panic itself is reported by the panic hook; its callers'
            // answers were dropped with the batch, which they hear as the writer having
            // stopped, and the writer connection it held went back to the pool.
            let task = tokio::spawn(commit(writer.clone(), held.take(), batch, stats.clone()));
            held = task.await.ok().flatten();
            if writer.demand.any() {
                // Another writer waits in the pool's queue: its turn.
                held = None;
            }
        }
        if closed {
            break;
        }
    }
}

/// Writes one batch and answers its callers; gives back the writer connection.
async fn commit(
    writer: Writer,
    held: Option<Conn>,
    batch: Vec<Job>,
    stats: Arc<Counters>,
) -> Option<Conn> {
    // The writer thread writes only while this task holds the writer connection.
    let token = match held {
        Some(conn) => conn,
        None => match writer.pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => {
                let message = format!("the writer connection: {e}");
                for job in batch {
                    let _ = job
                        .reply
                        .send(Err(StoreError::Unavailable(message.clone())));
                }
                return None;
            }
        },
    };
    write_group(&writer.native, batch, &stats).await;
    Some(token)
}

/// Writes `batch` in one transaction on the writer thread and answers its callers; when that
/// fails, each write in a transaction of its own, so that each caller gets its own answer.
async fn write_group(native: &super::native::Native, mut batch: Vec<Job>, stats: &Counters) {
    if batch.len() > 1 {
        let durability = if batch.iter().any(|j| j.durability == Durability::OnDisk) {
            Durability::OnDisk
        } else {
            Durability::Committed
        };
        let writes = batch.iter().map(|job| (job.plan)()).collect();
        if let Ok(values) = native.run(writes, durability).await {
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
        let answer = match native.run(vec![(job.plan)()], job.durability).await {
            Ok(mut values) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.writes.fetch_add(1, Ordering::Relaxed);
                values.pop().ok_or_else(|| {
                    StoreError::Database("the writer thread answered without a value".into())
                })
            }
            Err(e) => Err(e),
        };
        let _ = job.reply.send(answer);
    }
}
