//! Serving the router on a TCP listener, with limits a slow or idle client cannot get around.
//!
//! `axum::serve` has no header-read timeout, no idle timeout and no connection limit: a client
//! that sends half a request, or opens connections and says nothing, keeps a file descriptor and
//! some memory forever, and enough of them make the listener fail ("Too many open files") while
//! executions are running. Here every connection is watched:
//!
//! * a request head that started arriving must be complete within `header_read_timeout`, or the
//!   connection is closed;
//! * a connection with no request in progress and no bytes for `idle_timeout` is closed;
//! * at most `max_connections` are open. Beyond that, new connections wait in the kernel's
//!   accept queue, and idle connections are asked to close at once to make room. A connection
//!   with a request in progress (an execution, an SSE stream) is never closed for room.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tower::ServiceExt;

/// Connection limits (`[http]` in the broker's config).
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// Time from the first byte of a request head to its end.
    pub header_read_timeout: Duration,
    /// Time a connection may sit without a request in progress and without traffic.
    pub idle_timeout: Duration,
    /// Connections open at once; more wait to be accepted.
    pub max_connections: usize,
    /// After shutdown starts, how long open connections get to finish.
    pub shutdown_grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 256,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, lets open
/// connections finish their requests (closing idle ones at once) for up to `shutdown_grace`,
/// and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    cfg: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) {
    let max = cfg.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max));
    let pressure = Arc::new(Notify::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    'accept: loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => loop {
                // Full: ask idle connections to make room, again while we wait, because a
                // connection busy a moment ago may be idle now.
                pressure.notify_waiters();
                tokio::select! {
                    p = permits.clone().acquire_owned() => break p.expect("the semaphore is never closed"),
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = &mut shutdown => break 'accept,
                }
            },
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors (or a connection reset before accept): keep the
                    // listener, back off a little, and try again.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            app: app.clone(),
            cfg,
            pressure: pressure.clone(),
            stop: stop_rx.clone(),
        };
        tokio::spawn(async move {
            conn.run(stream).await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a permit until it is closed: having them all back means done.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(cfg.shutdown_grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period; closing them");
    }
}

/// What a connection's traffic and requests look like, shared by its IO, its service and its
/// watchdog.
struct Activity {
    started: Instant,
    /// Milliseconds since `started` of the last byte read or written.
    last_io: AtomicU64,
    /// Milliseconds since `started` (plus one, so 0 means none) of the first byte of a request
    /// head that has not been dispatched yet.
    head_since: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            started: Instant::now(),
            last_io: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn read(&self, n: usize) {
        if n == 0 {
            return;
        }
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ =
                self.head_since
                    .compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Release);
        InFlight(self.clone())
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.head_since.load(Ordering::Acquire) == 0
    }
}

/// A request in progress, from its dispatch until its response body is finished or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.wrote();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long a connection must have been quiet before it is closed to make room for a new one.
const EVICTION_GRACE_MS: u64 = 250;

enum Verdict {
    /// Close now, without waiting for anything (a half-sent request).
    Abort,
    /// Finish what is in progress, then close (idle, room needed, shutdown).
    Graceful,
}

struct Conn {
    app: Router,
    cfg: ServeConfig,
    pressure: Arc<Notify>,
    stop: watch::Receiver<bool>,
}

impl Conn {
    async fn run(mut self, stream: TcpStream) {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(WatchedIo {
            inner: stream,
            activity: activity.clone(),
        });
        let app = self.app.clone();
        let svc_activity = activity.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let guard = svc_activity.begin();
            let app = app.clone();
            async move {
                let resp = app.oneshot(req.map(Body::new)).await?;
                Ok::<_, std::convert::Infallible>(resp.map(|body| {
                    Body::new(GuardedBody {
                        inner: body,
                        _guard: guard,
                    })
                }))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        // Our own watchdog times request heads (hyper's timer would also close idle keep-alive
        // connections at the header timeout, which is what `idle_timeout` is for).
        builder.timer(TokioTimer::new()).header_read_timeout(None);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            verdict = self.watch(&activity) => match verdict {
                Verdict::Abort => return,
                Verdict::Graceful => conn.as_mut().graceful_shutdown(),
            }
        }
        let grace = self.cfg.shutdown_grace;
        let _ = tokio::time::timeout(grace, conn).await;
    }

    /// Returns when the connection should close, and how.
    async fn watch(&mut self, activity: &Activity) -> Verdict {
        let tick = (self.cfg.header_read_timeout.min(self.cfg.idle_timeout) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let header_ms = u64::try_from(self.cfg.header_read_timeout.as_millis()).unwrap_or(u64::MAX);
        let idle_ms = u64::try_from(self.cfg.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = self.pressure.notified() => {
                    // A connection accepted a moment ago may not have had its request read yet;
                    // only one quiet for a little while is idle enough to make room.
                    let quiet = activity.now().saturating_sub(activity.last_io.load(Ordering::Relaxed));
                    if activity.idle() && quiet >= EVICTION_GRACE_MS {
                        return Verdict::Graceful;
                    }
                }
                changed = self.stop.changed() => {
                    if changed.is_err() || *self.stop.borrow() {
                        return Verdict::Graceful;
                    }
                }
            }
            if activity.in_flight.load(Ordering::Acquire) > 0 {
                continue;
            }
            let now = activity.now();
            let head = activity.head_since.load(Ordering::Acquire);
            if head != 0 && now.saturating_sub(head - 1) > header_ms {
                tracing::debug!("closing a connection whose request head did not arrive in time");
                return Verdict::Abort;
            }
            if head == 0 && now.saturating_sub(activity.last_io.load(Ordering::Relaxed)) > idle_ms {
                return Verdict::Graceful;
            }
        }
    }
}

/// The socket, noting every byte that passes.
struct WatchedIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            self.activity.read(buf.filled().len() - before);
        }
        res
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                self.activity.wrote();
            }
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                self.activity.wrote();
            }
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request counted as in progress until it is finished (an SSE
/// stream is a request in progress for as long as it runs).
struct GuardedBody {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
