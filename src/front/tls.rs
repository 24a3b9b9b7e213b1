//! The HTTPS listener: rustls over TCP, then HTTP/1.1 or HTTP/2 by ALPN.

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::front::apps::{AppsFront, ConnMemo, Reply};
use crate::front::kube::{KubeFront, PREFIX as KUBE_PREFIX};
use crate::front::read_ahead::ReadAhead;
use crate::front::shards::Shards;

/// The address a request came from, as seen on the TCP connection.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Caps the request head (line and headers) a client may send.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Caps the number of request headers (HTTP/1.1; HTTP/2 is capped by size).
const MAX_HEADERS: usize = 100;
/// Concurrent HTTP/2 streams per connection.
const MAX_STREAMS: u32 = 128;

pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("{}: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("server certificate: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What answers on the listener: apps by host, everything else the proxy's own router.
#[derive(Clone)]
pub struct Routes {
    pub router: Router,
    pub apps: Arc<AppsFront>,
    pub kube: Arc<KubeFront>,
    /// `server.base_domain`: hosts under it that name no app get a 404, not the console.
    pub base_domain: String,
    /// The proxy's own host name, lower case.
    pub own_host: String,
}

impl Routes {
    async fn route(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        sni: Option<&str>,
        memo: &ConnMemo,
    ) -> Response<Reply> {
        let host = match request_host(&req) {
            Ok(h) => h,
            Err(why) => return plain(StatusCode::BAD_REQUEST, why).map(Reply::Boxed),
        };
        if let Some(app) = host.as_deref().and_then(|h| self.apps.app(h)) {
            // A connection is bound to the name it was opened for: a browser that reuses it
            // for another host is told to open a new one (RFC 9110 §15.5.20).
            if sni != host.as_deref() {
                return plain(
                    StatusCode::MISDIRECTED_REQUEST,
                    "jitgate: this connection was opened for another host; open a new one for this app",
                )
                .map(Reply::Boxed);
            }
            return Arc::clone(&self.apps).handle(Arc::clone(app), req, peer, memo).await;
        }
        if sni.is_some_and(|s| self.apps.app(s).is_some()) {
            return plain(
                StatusCode::MISDIRECTED_REQUEST,
                "jitgate: this connection was opened for an app; open a new one for the proxy",
            )
            .map(Reply::Boxed);
        }
        if let Some(h) = host.as_deref() {
            let under = h
                .strip_suffix(self.base_domain.as_str())
                .is_some_and(|rest| rest.ends_with('.'));
            if under && h != self.own_host {
                return plain(StatusCode::NOT_FOUND, "jitgate: no app is served at this host").map(Reply::Boxed);
            }
        }
        if req.uri().path().starts_with(KUBE_PREFIX) {
            // Boxed, as is the router: an app request's future (every one of them is boxed
            // whole) is then no larger than the apps' own.
            return Box::pin(self.kube.handle(req, peer)).await.map(Reply::Boxed);
        }
        // Only the proxy's own pages read it: an app request is spared the allocations.
        req.extensions_mut().insert(PeerAddr(peer));
        match Box::pin(self.router.clone().oneshot(req)).await {
            Ok(r) => r.map(Reply::Boxed),
            Err(never) => match never {},
        }
    }
}

/// The host a request names, lower case without the port: the URI's authority (HTTP/2,
/// or an absolute-form request line) or the `Host` header. Both present and different is
/// an error, as is more than one `Host`. Borrowed from the request when the URI's host has
/// no upper case or the `Host` is in its plain form (see `plain_host`), as browsers send
/// it: every request asks, and most name their host plainly.
fn request_host(req: &Request<Incoming>) -> Result<Option<Cow<'_, str>>, &'static str> {
    let from_uri = req.uri().authority().map(|a| lower_case(a.host()));
    let mut hosts = req.headers().get_all(hyper::header::HOST).iter();
    let from_header = match (hosts.next(), hosts.next()) {
        (None, _) => None,
        (Some(h), None) => Some(match plain_host(h.as_bytes()) {
            Some(host) => Cow::Borrowed(host),
            None => {
                let text = h.to_str().map_err(|_| "jitgate: the Host header is not text")?;
                let authority: hyper::http::uri::Authority = text
                    .parse()
                    .map_err(|_| "jitgate: the Host header is not a host name")?;
                Cow::Owned(authority.host().to_ascii_lowercase())
            }
        }),
        (Some(_), Some(_)) => return Err("jitgate: more than one Host header"),
    };
    match (from_uri, from_header) {
        (Some(u), Some(h)) if u != h => Err("jitgate: the request names two different hosts"),
        (Some(u), _) => Ok(Some(u)),
        (None, h) => Ok(h),
    }
}

fn lower_case(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// The host of a `Host` value in its plain form, a lower-case name or IPv4 address with
/// or without a port, which `Authority` would parse to the same; `None` for anything else
/// (upper case, IPv6, user info, odd characters), which takes the full parse.
fn plain_host(value: &[u8]) -> Option<&str> {
    let end = memchr::memchr(b':', value).unwrap_or(value.len());
    let (host, port) = value.split_at(end);
    let host_ok = !host.is_empty()
        && host
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let port_ok = port.is_empty() || (2..=6).contains(&port.len()) && port[1..].iter().all(u8::is_ascii_digit);
    if !(host_ok && port_ok) {
        return None;
    }
    std::str::from_utf8(host).ok()
}

fn plain(status: StatusCode, message: &str) -> Response<Body> {
    let mut resp = Response::new(Body::from(format!("{message}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Requests in flight on one connection, and since when it has had none.
struct Activity {
    in_flight: AtomicUsize,
    /// Whether any request came: until one does, the header timeout applies.
    asked: AtomicBool,
    /// Milliseconds after `born` when the last request ended (or, on HTTP/1.1, when a
    /// parked connection woke).
    last_ms: AtomicU64,
    born: tokio::time::Instant,
    /// HTTP/1.1: hyper is letting go of the connection to park it.
    parking: AtomicBool,
    /// HTTP/1.1: a request asked for an upgrade or for the connection to close.
    no_park: AtomicBool,
    /// What the last app request on the connection was let in with.
    memo: ConnMemo,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            asked: AtomicBool::new(false),
            last_ms: AtomicU64::new(0),
            born: tokio::time::Instant::now(),
            parking: AtomicBool::new(false),
            no_park: AtomicBool::new(false),
            memo: ConnMemo::default(),
        })
    }

    fn ms_now(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Since when nothing has been in flight, if nothing is now.
    fn quiet_since(&self) -> Option<tokio::time::Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.born + Duration::from_millis(self.last_ms.load(Ordering::Acquire)))
    }

    /// Counts as activity: a parked connection that woke is not parked again at once.
    fn touch(&self) {
        self.last_ms.fetch_max(self.ms_now(), Ordering::AcqRel);
    }

    /// When the connection will have been idle long enough to close, if nothing is in
    /// flight now.
    fn idle_deadline(&self, idle: Duration) -> Option<tokio::time::Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.asked.load(Ordering::Acquire) {
            return Some(self.born + idle.min(HEADER_READ_TIMEOUT));
        }
        Some(self.born + Duration::from_millis(self.last_ms.load(Ordering::Acquire)) + idle)
    }
}

/// Counts a request in flight until its answer's body is done or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.asked.store(true, Ordering::Release);
        InFlight(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_ms.fetch_max(a.ms_now(), Ordering::AcqRel);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body that keeps its request counted while it streams.
struct Tracked {
    inner: Reply,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A client's TLS stream, read ahead while it sends (see `read_ahead`).
type ClientTls = tokio_rustls::server::TlsStream<ReadAhead<tokio::net::TcpStream>>;

type Answer = Pin<Box<dyn std::future::Future<Output = Result<Response<Tracked>, std::convert::Infallible>> + Send>>;

/// The service either protocol runs: it routes each request, counted in flight until its
/// answer's body is done.
fn counted_service(
    routes: Arc<Routes>,
    peer: SocketAddr,
    sni: Option<Arc<str>>,
    counted: Arc<Activity>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Tracked>,
    Error = std::convert::Infallible,
    Future = Answer,
> + Clone {
    hyper::service::service_fn(move |req: Request<Incoming>| -> Answer {
        let routes = Arc::clone(&routes);
        let sni = sni.clone();
        let in_flight = InFlight::start(&counted);
        // HTTP/1.1: an upgrade takes the stream over, and a client that asked to close
        // gets its close (an HTTP/1.0 body without a length ends by it): neither is parked,
        // and a park already asked for is called off, so that hyper's shutdown is real.
        if req.version() < hyper::Version::HTTP_11
            || req.headers().contains_key(hyper::header::UPGRADE)
            || req
                .headers()
                .get_all(hyper::header::CONNECTION)
                .iter()
                .any(|v| v.as_bytes().windows(5).any(|w| w.eq_ignore_ascii_case(b"close")))
        {
            counted.no_park.store(true, Ordering::Release);
            counted.parking.store(false, Ordering::Release);
        }
        // hyper's HTTP/1.1 keeps room for one request's future for as long as it serves
        // the connection; boxed, that room is a pointer, and the few KiB the future needs
        // are taken only while a request is being answered.
        Box::pin(async move {
            let resp = routes.route(req, peer, sni.as_deref(), &in_flight.0.memo).await;
            Ok(resp.map(|inner| Tracked {
                inner,
                _in_flight: in_flight,
            }))
        })
    })
}

/// Serves one HTTP/2 connection. HTTP/2 keeps a connection open between requests until
/// one side ends it: without a limit, idle clients that answer pings would hold memory for
/// ever. So a connection is closed gracefully once it has had no request in flight for
/// `idle`, or has sent none within the header timeout of its start.
async fn serve_h2(
    tls: ClientTls,
    routes: Arc<Routes>,
    peer: SocketAddr,
    sni: Option<Arc<str>>,
    idle: Duration,
) -> Result<(), hyper::Error> {
    let activity = Activity::new();
    let svc = counted_service(routes, peer, sni, Arc::clone(&activity));
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_concurrent_streams(MAX_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(conn);
    loop {
        let deadline = activity
            .idle_deadline(idle)
            .unwrap_or_else(|| tokio::time::Instant::now() + idle);
        tokio::select! {
            ended = conn.as_mut() => return ended,
            _ = tokio::time::sleep_until(deadline) => {
                if activity.idle_deadline(idle).is_some_and(|d| d <= tokio::time::Instant::now()) {
                    // A client that never asked anything is owed nothing: dropping the
                    // connection closes it, where a graceful end would wait for its preface.
                    if !activity.asked.load(Ordering::Acquire) {
                        tracing::debug!(%peer, "HTTP/2 connection sent no request in time; closing it");
                        return Ok(());
                    }
                    tracing::debug!(%peer, "HTTP/2 connection idle; closing it");
                    conn.as_mut().graceful_shutdown();
                    // GOAWAY, then the client's acknowledgement; one that never comes does
                    // not hold the connection.
                    return tokio::time::timeout(HEADER_READ_TIMEOUT, conn).await.unwrap_or(Ok(()));
                }
            }
        }
    }
}

/// Serves one HTTP/1.1 connection.
///
/// hyper holds about 16 KiB of buffers for as long as it serves a connection, idle or not,
/// and keep-alive connections are mostly idle: a browser keeps several per host open for
/// minutes. So once a connection has had no request in flight for [`PARK_AFTER`], hyper is
/// asked to let go of it between requests (its shutdown of the stream is skipped; the
/// client sees nothing), and the connection waits as a bare TLS stream until the client
/// sends again, then gets a fresh hyper connection. It is closed after `idle` without a
/// request, or, before the first request, after the shorter of `idle` and the header
/// timeout.
async fn serve_h1(
    tls: ClientTls,
    routes: Arc<Routes>,
    peer: SocketAddr,
    sni: Option<Arc<str>>,
    idle: Duration,
) -> Result<(), hyper::Error> {
    let activity = Activity::new();
    let svc = counted_service(routes, peer, sni, Arc::clone(&activity));
    let mut io = Parkable {
        tls,
        unread: bytes::Bytes::new(),
        activity: Arc::clone(&activity),
    };
    loop {
        // Bytes left over from before the park are a request head begun: until a request
        // has been answered, the connection is not parked again, so that a client sending
        // its head slowly cannot restart hyper's header timeout.
        let resumed_mid_head = (!io.unread.is_empty()).then(|| activity.ms_now());
        let mut asked_to_park = false;
        let mut conn = Box::pin(
            hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_headers(MAX_HEADERS)
                // The head's size is checked as such: a buffer limit alone lets a head
                // through that arrives whole in one read.
                .max_header_size(MAX_HEAD_BYTES)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(io), svc.clone())
                .with_upgrades(),
        );
        let parking = loop {
            let now = tokio::time::Instant::now();
            // Not sooner than PARK_AFTER from now when the connection is quiet but may not
            // be parked yet (a head begun): the check would otherwise spin.
            let deadline = activity.quiet_since().unwrap_or(now) + PARK_AFTER;
            let deadline = if deadline <= now { now + PARK_AFTER } else { deadline };
            let mut check = std::pin::pin!(tokio::time::sleep_until(deadline));
            let ended = std::future::poll_fn(|cx| {
                if let std::task::Poll::Ready(ended) = conn.as_mut().poll(cx) {
                    return std::task::Poll::Ready(Some(ended));
                }
                // No check while a request is in flight: it cannot park then, and its end
                // comes in the poll above, on this task. Checked all along, a long stream
                // would be woken every PARK_AFTER for nothing (and a body's cut would
                // seem to work without its own waiter).
                if asked_to_park || activity.quiet_since().is_none() {
                    return std::task::Poll::Pending;
                }
                check.as_mut().poll(cx).map(|()| None)
            })
            .await;
            if let Some(ended) = ended {
                ended?;
                break activity.parking.load(Ordering::Acquire);
            }
            let quiet = activity
                .quiet_since()
                .is_some_and(|t| t + PARK_AFTER <= tokio::time::Instant::now());
            let answered = resumed_mid_head.is_none_or(|r| activity.last_ms.load(Ordering::Acquire) > r);
            if quiet && answered && !activity.no_park.load(Ordering::Acquire) {
                asked_to_park = true;
                activity.parking.store(true, Ordering::Release);
                conn.as_mut().graceful_shutdown();
            }
        };
        activity.parking.store(false, Ordering::Release);
        // Ended by the client, by an error answer, or handed over in an upgrade: done.
        let Some(parts) = (if parking {
            Pin::into_inner(conn).into_parts()
        } else {
            None
        }) else {
            return Ok(());
        };
        tracing::trace!(%peer, unread = parts.read_buf.len(), "connection parked");
        // Past its time by now (`PARK_AFTER` is longer than the memo's 250 ms): what it
        // holds need not sit with an idle connection.
        activity.memo.forget();
        io = parts.io.into_inner();
        // An empty `read_buf` still holds hyper's whole read buffer: only what is in it is kept.
        io.unread = if parts.read_buf.is_empty() {
            bytes::Bytes::new()
        } else {
            bytes::Bytes::copy_from_slice(&parts.read_buf)
        };
        let asked = activity.asked.load(Ordering::Acquire);
        let until = match activity.quiet_since() {
            Some(quiet) if asked => quiet + idle,
            _ => activity.born + idle.min(HEADER_READ_TIMEOUT),
        };
        if io.unread.is_empty() {
            match tokio::time::timeout_at(until, io.wait()).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return Ok(()),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "idle connection failed");
                    return Ok(());
                }
                Err(_) => {
                    tracing::debug!(%peer, "connection idle; closing it");
                    let _ = tokio::time::timeout(Duration::from_secs(1), io.tls.shutdown()).await;
                    return Ok(());
                }
            }
        }
        activity.touch();
    }
}

/// A connection this listener upgraded (`/ssh/connect`), taken back from hyper with its
/// socket moved to the poller of the runtime this is called on.
///
/// The listener serves each connection on a shard, whose poller the socket stays with; a
/// long-lived stream handed to the work-stealing runtime (an SSH session) would otherwise
/// be woken across threads, through the shard's thread, for every read. The session itself
/// stays on the work-stealing runtime: on a shard, a session in full flow would hold up
/// every other task there, its own cut included.
///
/// `Err` gives back a connection that did not come from this listener, unchanged.
pub fn upgraded_here(
    io: hyper::upgrade::Upgraded,
) -> Result<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static, hyper::upgrade::Upgraded> {
    let parts = io.downcast::<TokioIo<Parkable>>()?;
    let mut io = parts.io.into_inner();
    // What hyper read past the upgrade's head comes first, then what it left unread;
    // copied, as `read_buf` would keep hyper's whole read buffer for the session's life.
    if !parts.read_buf.is_empty() {
        io.unread = [&parts.read_buf[..], &io.unread[..]].concat().into();
    }
    if let Err(e) = move_to_this_poller(io.tls.get_mut().0.get_mut()) {
        // Still served, only through the shard's poller.
        tracing::debug!(error = %e, "cannot move an upgraded connection's socket");
    }
    Ok(io)
}

/// Registers `tcp`'s socket with the poller of the runtime this is called on, and takes
/// it off the one it was on: a second descriptor of the same socket is registered here,
/// and dropping the first deregisters it there. What the socket holds (data not yet read,
/// non-blocking mode, nodelay) belongs to the socket, not the descriptor, and stays.
fn move_to_this_poller(tcp: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    let fd = std::os::fd::AsFd::as_fd(&*tcp).try_clone_to_owned()?;
    let here = tokio::net::TcpStream::from_std(std::net::TcpStream::from(fd))?;
    drop(std::mem::replace(tcp, here));
    Ok(())
}

/// How long an HTTP/1.1 connection goes without a request in flight before it is parked.
/// Short enough that idle keep-alive connections cost little; long enough that a client
/// sending request after request keeps its hyper connection.
const PARK_AFTER: Duration = Duration::from_millis(500);

/// The TLS stream under hyper's HTTP/1.1, which hyper can hand back between requests.
struct Parkable {
    tls: ClientTls,
    /// Bytes hyper had read and not parsed when it let go of the connection.
    unread: bytes::Bytes,
    activity: Arc<Activity>,
}

impl Parkable {
    /// Waits until the client sends the start of its next request (false: it closed),
    /// having sent whatever of the last answer is still queued. Bytes on the socket that
    /// make no request, such as a TLS record dribbled in a byte at a time, do not end the
    /// wait, so they do not put off the idle timeout either.
    async fn wait(&mut self) -> std::io::Result<bool> {
        use tokio::io::AsyncReadExt;
        self.tls.flush().await?;
        let mut first = [0u8; 64];
        let n = self.tls.read(&mut first).await?;
        self.unread = bytes::Bytes::copy_from_slice(&first[..n]);
        Ok(n > 0)
    }
}

impl tokio::io::AsyncRead for Parkable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tls).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Parkable {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        // hyper shuts the stream down when it lets go of it; a parked connection stays
        // open. The flag is cleared once hyper is done, so an upgraded stream shuts down.
        if this.activity.parking.load(Ordering::Acquire) {
            return Pin::new(&mut this.tls).poll_flush(cx);
        }
        Pin::new(&mut this.tls).poll_shutdown(cx)
    }
}

/// Accepts connections until `shutdown` is cancelled. An HTTP/2 connection with no request
/// in flight for `idle` is closed gracefully (GOAWAY), an HTTP/1.1 keep-alive connection
/// after `idle` without a request.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    routes: Routes,
    idle: Duration,
    shards: Shards,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    // Shared, not copied: a connection holds a pointer to the routes for as long as it lives.
    let routes = Arc::new(routes);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // The connection moves to its shard's thread, and its socket to that thread's poller.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand a connection over");
                continue;
            }
        };
        let (acceptor, routes) = (acceptor.clone(), Arc::clone(&routes));
        shards.spawn(async move {
            match tokio::net::TcpStream::from_std(tcp) {
                Ok(tcp) => connection(acceptor, tcp, peer, routes, idle).await,
                Err(e) => tracing::warn!(%peer, error = %e, "cannot take a connection over"),
            }
        });
    }
}

/// One client connection, from the TLS handshake to its end.
async fn connection(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    routes: Arc<Routes>,
    idle: Duration,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(ReadAhead::new(tcp))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
    };
    let sni: Option<Arc<str>> = tls.get_ref().1.server_name().map(|s| s.to_ascii_lowercase().into());
    // The protocol is the one ALPN agreed on, and only that: HTTP/2's preface on an
    // HTTP/1.1 connection is a bad request, not a way around HTTP/2's limits.
    let ended = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        // Boxed so that HTTP/1.1 connections, the many, do not carry HTTP/2's larger state.
        Box::pin(serve_h2(tls, routes, peer, sni, idle)).await
    } else {
        serve_h1(tls, routes, peer, sni, idle).await
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{move_to_this_poller, plain_host};

    /// The plain form is taken as is, and gives what the full parse would; anything else
    /// is left to the full parse.
    #[test]
    fn a_plain_host_header_reads_as_its_authority_would() {
        for value in [
            "app.example.com",
            "app.example.com:8443",
            "127.0.0.1:443",
            "a-b.c",
            "x:1",
        ] {
            let authority: hyper::http::uri::Authority = value.parse().unwrap();
            assert_eq!(plain_host(value.as_bytes()), Some(authority.host()), "{value}");
        }
        for value in [
            "App.example.com",
            "[::1]:443",
            "user@app.example.com",
            "app.example.com:",
            "app.example.com:1234567",
            "app.example.com:80:80",
            "app.example.com:8a",
            ":443",
            "",
            "app example",
            "app_x.example.com",
            "app.example.com/",
        ] {
            assert_eq!(plain_host(value.as_bytes()), None, "{value:?}");
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A socket moved to another runtime's poller is served there alone: it reads what
    /// was sent before the move and after, and writes, once the runtime it came from,
    /// poller and all, is gone. Left on the old poller, it would fail here.
    #[test]
    fn a_moved_socket_works_after_the_runtime_it_came_from_is_gone() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let first = runtime();
        let mut tcp = first.block_on(tokio::net::TcpStream::connect(addr)).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        peer.write_all(b"before ").unwrap();
        let here = runtime();
        here.block_on(async { move_to_this_poller(&mut tcp) }).unwrap();
        drop(first);
        let got = here.block_on(async {
            let mut got = [0u8; 12];
            tcp.read_exact(&mut got[..7]).await.unwrap();
            peer.write_all(b"after").unwrap();
            tcp.read_exact(&mut got[7..]).await.unwrap();
            tcp.write_all(b"answer").await.unwrap();
            got
        });
        assert_eq!(&got, b"before after");
        let mut answer = [0u8; 6];
        peer.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"answer");
    }
}
