//! A pool of HTTP/1.1 keep-alive connections to one upstream, for one shard, whose
//! connections are driven by the task of the request that uses them.
//!
//! Why not hyper-util's pooled client: it runs each upstream connection as a task of its
//! own and hands every request, answer and body chunk across a channel to it, a wake-up
//! and a hop through the scheduler each way, behind a pool shared under a lock and keyed
//! by a hashed authority. A shard's request and its upstream connection live on the same
//! thread anyway (`shards`), so here the request's task polls the connection itself: it
//! writes the request and reads the answer's head while the request waits, and the
//! answer's body polls it for the rest. Once the body has ended the connection goes back
//! to the pool, unpolled, until the next request takes it; one the upstream closed in the
//! meantime is found so when it is taken (or by the sweep), and is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::client::conn::TrySendError;
use hyper::{Request, Response, Uri};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tower::ServiceExt;

type Io = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

/// Idle connections are closed after this; servers often close at 60–75 s.
const IDLE_FOR: Duration = Duration::from_secs(50);

/// One upstream connection: the handle requests go in by, and the connection's own state
/// machine, which whoever uses the connection polls.
struct Conn {
    send: SendRequest<Body>,
    conn: Connection<Io, Body>,
}

struct Idle {
    /// Boxed once, when made: it is moved in and out of the pool on every request.
    conn: Box<Conn>,
    since: Instant,
}

/// Connections to one upstream, used by one shard.
pub struct H1Pool {
    connector: HttpsConnector<HttpConnector>,
    /// Where connections go: the upstream's scheme and authority.
    target: Uri,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    /// Whether the sweep of idle connections runs: it starts with the first one pooled.
    sweeping: AtomicBool,
}

/// Why a request did not get an answer.
#[derive(Debug)]
pub enum PoolError {
    Connect(String),
    Http(hyper::Error),
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Connect(e) => write!(f, "cannot connect: {e}"),
            PoolError::Http(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PoolError::Connect(_) => None,
            // What hyper's own message ("connection closed before message completed")
            // leaves out, if anything.
            PoolError::Http(e) => e.source(),
        }
    }
}

impl H1Pool {
    pub fn new(connector: HttpsConnector<HttpConnector>, target: Uri, max_idle: usize) -> H1Pool {
        H1Pool {
            connector,
            target,
            idle: Mutex::new(Vec::new()),
            max_idle,
            sweeping: AtomicBool::new(false),
        }
    }

    /// Sends `req` (origin-form URI, with its Host header) on a pooled connection, or a new
    /// one, and returns the answer whose body drives the connection until it ends.
    pub async fn request(self: &Arc<Self>, req: Request<Body>) -> Result<Response<PooledBody>, PoolError> {
        let mut req = req;
        loop {
            let pooled = self.take_idle();
            let reused = pooled.is_some();
            let conn = match pooled {
                Some(c) => c,
                // Boxed: a cold path, which would make every request's future larger.
                None => Box::pin(self.connect()).await?,
            };
            match self.send_on(conn, req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    // A pooled connection the upstream closed as the request went out:
                    // the request was not sent, so it goes on another.
                    Some(again) if reused => req = again,
                    _ => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
    }

    /// Sends `req` on `conn`, driving the connection until the answer's head is in.
    async fn send_on(
        self: &Arc<Self>,
        mut conn: Box<Conn>,
        req: Request<Body>,
    ) -> Result<Response<PooledBody>, TrySendError<Request<Body>>> {
        // Out of tokio's budget: the answer, a oneshot, would otherwise find the budget
        // spent and leave its wake-up with the no-op waker below, lost, with the answer in.
        let mut answer = std::pin::pin!(tokio::task::unconstrained(conn.send.try_send_request(req)));
        let mut conn = Some(conn);
        let mut sent = false;
        let answered = std::future::poll_fn(|cx| {
            // The answer is polled with no waker: it comes only from the poll (or the drop)
            // of the connection, just before. Its own waker, and the one the connection
            // leaves with the answer's body, would each wake this task once more for
            // nothing, a pass through hyper, the proxy and TLS; the body's hand-over wakes
            // whatever the connection held when it read it. So after the first poll (which
            // sends the request), the connection reads with no waker first, and takes this
            // task's only to wait.
            let mut quiet = Context::from_waker(Waker::noop());
            let mut polls: &mut [&mut Context<'_>] = &mut [&mut quiet, cx];
            if !sent {
                sent = true;
                polls = &mut polls[1..];
            }
            for each in polls.iter_mut() {
                if let Some(c) = conn.as_mut() {
                    if Pin::new(&mut c.conn).poll(each).is_ready() {
                        // Dropped as soon as it is done: one that closed before it took the
                        // request (an upstream's close that came after the pool's last look)
                        // gives it back only then, to be sent on another; kept, it would
                        // leave the answer waiting for ever.
                        conn = None;
                    }
                }
                if let Poll::Ready(answered) = answer.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                    return Poll::Ready(answered);
                }
            }
            Poll::Pending
        })
        .await?;
        let (parts, inner) = answered.into_parts();
        let ended = hyper::body::Body::is_end_stream(&inner);
        let body = PooledBody {
            inner,
            conn,
            ended,
            next: None,
            failed: false,
            pool: Arc::clone(self),
        };
        Ok(Response::from_parts(parts, body))
    }

    /// The most recently used idle connection that is still open and ready.
    fn take_idle(&self) -> Option<Box<Conn>> {
        let mut quiet = Context::from_waker(Waker::noop());
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut i) = idle.pop() {
            if i.since.elapsed() >= IDLE_FOR {
                continue;
            }
            // A poll reads what came while it sat: an end or an error closes it. With no
            // waker: the request about to go in would wake whatever the connection last
            // held (this task, or another connection's), for nothing; `send_on` polls it
            // with this task's waker right after.
            if Pin::new(&mut i.conn.conn).poll(&mut quiet).is_ready() {
                continue;
            }
            if i.conn.send.is_ready() {
                return Some(i.conn);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Box<Conn>, PoolError> {
        let io = self.connector.clone().oneshot(self.target.clone()).await.map_err(|e| {
            // With its causes: the connector's own message ("tls handshake eof", "tcp
            // connect error") rarely says what failed underneath.
            let mut text = e.to_string();
            let mut cause = e.source();
            while let Some(c) = cause {
                text.push_str(": ");
                text.push_str(&c.to_string());
                cause = c.source();
            }
            PoolError::Connect(text)
        })?;
        let (send, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(PoolError::Http)?;
        Ok(Box::new(Conn { send, conn }))
    }

    fn put(self: &Arc<Self>, conn: Box<Conn>) {
        if !self.sweeping.load(Ordering::Relaxed) {
            // On the runtime of the request that pooled it, the shard's; a dropped pool
            // ends the sweep. Marked only once started: a put outside a runtime (a drop at
            // shutdown) leaves it for the next.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                if !self.sweeping.swap(true, Ordering::Relaxed) {
                    rt.spawn(sweep(Arc::downgrade(self)));
                }
            }
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= self.max_idle {
            // The oldest goes: it is the likeliest to have been closed.
            idle.remove(0);
        }
        idle.push(Idle {
            conn,
            since: Instant::now(),
        });
    }
}

/// Closes the idle connections that the upstream closed or that sat too long, so that a
/// pool no request takes holds no sockets (half-closed by the upstream) for ever.
async fn sweep(pool: Weak<H1Pool>) {
    let mut every = tokio::time::interval(IDLE_FOR / 5);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        // A poll with no waker only reads what came: whoever takes the connection next
        // polls it again with theirs.
        idle.retain_mut(|i| i.since.elapsed() < IDLE_FOR && Pin::new(&mut i.conn.conn).poll(&mut cx).is_pending());
    }
}

/// An answer's body from a pooled connection: polling it drives the connection, and once
/// it has ended whole the connection goes back to the pool.
///
/// It reads one frame ahead after each data frame, so that it can tell a chunked body's
/// end, which hyper cannot (its `is_end_stream` knows lengths only), as soon as the
/// upstream has sent it. Without that, an HTTP/2 client gets the last chunk, then one more
/// TLS record with an empty DATA frame that ends the stream: a second write, and a second
/// wake-up for the client, on every answer of a Go server such as the Kubernetes API
/// server, which chunks its JSON. (Over HTTP/1.1, hyper writes the end with the last chunk
/// either way.)
pub struct PooledBody {
    inner: Incoming,
    conn: Option<Box<Conn>>,
    /// The body has ended whole: its last frame came, or has been read ahead into `next`.
    ended: bool,
    /// A frame read ahead, the body's next.
    next: Option<Result<Frame<Bytes>, hyper::Error>>,
    /// The body failed: it gives nothing more, and its connection is not pooled (hyper's
    /// body says it ended if polled again after its error).
    failed: bool,
    pool: Arc<H1Pool>,
}

impl PooledBody {
    /// The next frame, from what the connection has already read or can read now: the body
    /// is polled, then the connection and the body once more, all with no waker.
    ///
    /// No waker, because each would wake this task for nothing. What the body gives comes
    /// only from the connection, which this task polls right before, and taking it wakes
    /// the waker the connection left to hear of room for the next: a wake-up that runs the
    /// task once more, a pass through hyper, the proxy and TLS. So no waker of this task is
    /// left with either, but with the connection's socket when the body has to wait
    /// (`poll_frame`). hyper's body channel keeps no tokio budget, so no wake-up of the
    /// budget's is lost with the no-op waker.
    fn poll_ready_frame(&mut self) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut quiet = Context::from_waker(Waker::noop());
        if let Poll::Ready(frame) = self.take(&mut quiet) {
            return Poll::Ready(frame);
        }
        if let Some(c) = self.conn.as_mut() {
            if Pin::new(&mut c.conn).poll(&mut quiet).is_ready() {
                // Closed (after this answer, or failed in it): the body says which.
                self.conn = None;
            }
        }
        self.take(&mut quiet)
    }

    /// The body's next frame, polled with `cx`.
    fn take(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => {
                self.failed = frame.is_err();
                // Trailers are always last: after them the body is not polled again.
                let last = frame.as_ref().is_ok_and(|f| f.is_trailers());
                if last || (frame.is_ok() && self.inner.is_end_stream()) {
                    self.ended = true;
                }
                Poll::Ready(Some(frame))
            }
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = match this.next.take() {
            Some(frame) => frame,
            None if this.ended || this.failed => return Poll::Ready(None),
            None => match this.poll_ready_frame() {
                Poll::Ready(Some(frame)) => frame,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    // Nothing in yet: the connection waits on its socket with this task's
                    // waker. With no connection left, the body ends at once (its sender
                    // went with the connection), and its own waker is the one to leave.
                    match this.conn.as_mut() {
                        Some(c) => {
                            if Pin::new(&mut c.conn).poll(cx).is_ready() {
                                this.conn = None;
                            }
                        }
                        None => return this.take(cx),
                    }
                    let mut quiet = Context::from_waker(Waker::noop());
                    let body_cx = if this.conn.is_some() { &mut quiet } else { &mut *cx };
                    match this.take(body_cx) {
                        Poll::Ready(Some(frame)) => frame,
                        other => return other,
                    }
                }
            },
        };
        // Only where hyper cannot tell the end itself: a body of known length ends with
        // its last byte.
        let unknown_length = this.inner.size_hint().exact().is_none();
        if unknown_length && !this.ended && frame.as_ref().is_ok_and(|f| f.is_data()) {
            // What is already here, in one pass: the body took the last frame, so the
            // connection is free to read on. Nothing here leaves the task's waker: the
            // frame goes out now, and the next poll of the body waits for the rest.
            if let Poll::Ready(Some(next)) = this.poll_ready_frame() {
                this.next = Some(next);
            }
        }
        Poll::Ready(Some(frame))
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.next {
            // What is read ahead is not in the inner body's hint any more.
            Some(Ok(frame)) => {
                let ahead = frame.data_ref().map_or(0, |d| d.len() as u64);
                let inner = self.inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + ahead);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + ahead);
                }
                hint
            }
            _ if self.ended => SizeHint::with_exact(0),
            _ => self.inner.size_hint(),
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body dropped before its end leaves the connection mid-answer: it closes. So
        // does one still sending the request (an upload the upstream answered early): no
        // one would poll it in the pool. hyper wants a new request only once both ways
        // are done.
        if self.ended {
            if let Some(conn) = self.conn.take() {
                if !conn.send.is_closed() && conn.send.is_ready() {
                    self.pool.put(conn);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
