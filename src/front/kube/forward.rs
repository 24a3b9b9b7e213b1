//! An allowed request on its way to the API server, as the proxy acting for the user, and
//! the answer on its way back: bodies bounded, streams cut with their grant, upgrades
//! (exec, attach, port-forward over SPDY or WebSocket) spliced until the grant ends.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{request, Request, Response, StatusCode, Uri, Version};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use serde::Deserialize;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::attrs::Attrs;
use super::{status, stream, Cluster, Held};
use crate::front::apps::headers::{forwarded_for, is_reserved, strip_hop_by_hop, FORWARDED_FOR};

/// The API server's own limit on a request body (3 MiB); larger ones never pass.
pub const MAX_BODY: usize = 3 * 1024 * 1024;
/// Until the API server's first byte; a watch answers its headers at once.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// A WebSocket subprotocol that carries a bearer token (for browsers): never forwarded, so
/// no credential but the proxy's reaches the API server.
const TOKEN_SUBPROTOCOL: &str = "base64url.bearer.authorization.k8s.io.";

pub(super) struct Forward<'a> {
    pub(super) cluster: &'a Cluster,
    pub(super) held: Arc<Held>,
    /// The decoded path under the cluster, as checked.
    pub(super) path: &'a str,
    pub(super) attrs: &'a Attrs<'a>,
    pub(super) peer: SocketAddr,
}

impl Forward<'_> {
    pub(super) async fn send(self, mut req: Request<Incoming>) -> Response<Body> {
        if let Some(protocol) = upgrade_protocol(req.headers()) {
            let from_client = hyper::upgrade::on(&mut req);
            let (parts, _) = req.into_parts();
            return self.upgrade(parts, protocol, from_client).await;
        }
        let (parts, body) = req.into_parts();
        let body = match read_body(&parts.headers, body).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        if let Err(resp) = self.same_namespace(&parts, &body) {
            return resp;
        }
        self.plain(parts, body).await
    }

    /// A request with its whole body read.
    pub(super) async fn plain(self, mut parts: request::Parts, body: Bytes) -> Response<Body> {
        let clients = match self.cluster.upstream.clients() {
            Ok(c) => c,
            Err(e) => return self.unreachable(&e),
        };
        if let Err(resp) = self.toward_cluster(&mut parts, Some(&clients.host)).await {
            return resp;
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        if !body.is_empty() {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let up = Request::from_parts(parts, Body::from(body));
        let resp = match tokio::time::timeout(RESPONSE_TIMEOUT, clients.pool.request(up)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return self.unreachable(&error_chain(&e)),
            Err(_) => return self.unreachable("no answer within 60s"),
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let last = self.last_words(&parts.headers);
        Response::from_parts(parts, CutBody::around(body, Arc::clone(&self.held), last))
    }

    /// The request head as the API server gets it: the checked path on the server, the
    /// client's credentials and claimed identities gone, the proxy's credential and the
    /// impersonation of the grant's holder in their place. With `pooled_host` (for a pool
    /// connection, which sends what it is given) the URI is in origin form and that is the
    /// Host header; without it (for the upgrade client, which adds Host) it is absolute.
    async fn toward_cluster(
        &self,
        parts: &mut request::Parts,
        pooled_host: Option<&HeaderValue>,
    ) -> Result<(), Response<Body>> {
        let upstream = &self.cluster.upstream;
        let base = if pooled_host.is_some() {
            &upstream.prefix
        } else {
            &upstream.base
        };
        parts.uri = upstream_uri(base, self.path, parts.uri.query())
            .ok_or_else(|| status::bad_request("jitgate: the request's URL cannot be forwarded"))?;
        parts.version = Version::HTTP_11;
        let credential = self
            .cluster
            .upstream
            .authorization()
            .await
            .map_err(|e| self.unreachable(&e))?;
        clean_request(&mut parts.headers);
        let h = &mut parts.headers;
        // Room for what is added, at once rather than by growing the map on the way.
        h.reserve(5 + self.held.groups.len());
        if let Some(host) = pooled_host {
            h.insert(header::HOST, host.clone());
        }
        if let Some(v) = forwarded_for(self.peer.ip()) {
            h.insert(FORWARDED_FOR, v);
        }
        if let Some(c) = credential {
            h.insert(header::AUTHORIZATION, c);
        }
        h.insert(IMPERSONATE_USER, self.held.user.clone());
        for g in &self.held.groups {
            h.append(IMPERSONATE_GROUP, g.clone());
        }
        h.insert(IMPERSONATE_GRANT, self.held.grant.clone());
        Ok(())
    }

    /// A body's `metadata.namespace` must be the path's: the proxy checked the path.
    #[allow(clippy::result_large_err)]
    fn same_namespace(&self, parts: &request::Parts, body: &Bytes) -> Result<(), Response<Body>> {
        let Attrs::Resource(r) = self.attrs else { return Ok(()) };
        let (Some(ns), false) = (r.namespace, body.is_empty()) else {
            return Ok(());
        };
        let json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.contains("json"));
        if !json {
            return Ok(());
        }
        #[derive(Deserialize)]
        struct Object {
            metadata: Option<Meta>,
        }
        #[derive(Deserialize)]
        struct Meta {
            namespace: Option<String>,
        }
        // What does not parse as an object is the API server's to refuse.
        let Ok(Object {
            metadata: Some(Meta { namespace: Some(inner) }),
        }) = serde_json::from_slice::<Object>(body)
        else {
            return Ok(());
        };
        if !inner.is_empty() && inner != ns {
            return Err(status::bad_request(&format!(
                "jitgate: the object's metadata.namespace ({inner:?}) is not the request's namespace ({ns:?})"
            )));
        }
        Ok(())
    }

    async fn upgrade(
        self,
        mut parts: request::Parts,
        protocol: HeaderValue,
        from_client: hyper::upgrade::OnUpgrade,
    ) -> Response<Body> {
        let client = match self.cluster.upstream.clients() {
            Ok(c) => &c.upgrades,
            Err(e) => return self.unreachable(&e),
        };
        if let Err(resp) = self.toward_cluster(&mut parts, None).await {
            return resp;
        }
        // The upgrade request goes without a body: no length may claim one.
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        parts.headers.insert(header::UPGRADE, protocol);
        let up = Request::from_parts(parts, Body::empty());
        let mut resp = match tokio::time::timeout(RESPONSE_TIMEOUT, client.request(up)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return self.unreachable(&error_chain(&e)),
            Err(_) => return self.unreachable("no answer to the upgrade within 60s"),
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            return Response::from_parts(parts, CutBody::around(body, Arc::clone(&self.held), None));
        }
        let from_cluster = hyper::upgrade::on(&mut resp);
        let held = Arc::clone(&self.held);
        let cluster = Arc::clone(&self.cluster.name);
        let what = match self.attrs {
            Attrs::Resource(r) => super::describe(r, &cluster),
            Attrs::NonResource { path, .. } => path.to_string(),
        };
        // Where the error stream is, and what it carries, by the protocol agreed.
        let agreed = |name: header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_ascii_lowercase())
                .unwrap_or_default()
        };
        let upgrade_to = agreed(header::UPGRADE);
        let subresource = match self.attrs {
            Attrs::Resource(r) => r.subresource,
            Attrs::NonResource { .. } => None,
        };
        let framing = if subresource == Some("portforward") {
            match upgrade_to.as_str() {
                "websocket" => (agreed(header::SEC_WEBSOCKET_PROTOCOL) == "spdy/3.1+portforward.k8s.io")
                    .then_some(stream::Framing::PortForward { tunneled: true }),
                "spdy/3.1" => Some(stream::Framing::PortForward { tunneled: false }),
                _ => None,
            }
        } else if !matches!(subresource, Some("exec" | "attach")) {
            None
        } else if upgrade_to == "websocket" {
            matches!(
                agreed(header::SEC_WEBSOCKET_PROTOCOL).as_str(),
                "v5.channel.k8s.io" | "v4.channel.k8s.io"
            )
            .then_some(stream::Framing::Channels)
        } else if upgrade_to == "spdy/3.1" {
            let version = agreed(header::HeaderName::from_static("x-stream-protocol-version"));
            Some(stream::Framing::Spdy {
                status: version == "v4.channel.k8s.io",
            })
        } else {
            None
        };
        let last = framing.map(|f| {
            let held = Arc::clone(&held);
            (f, move || cut_message(&held))
        });
        tokio::spawn(async move {
            // The cut is watched from the start, the upgrade's completion included.
            let both = tokio::select! {
                both = async { tokio::join!(from_client, from_cluster) } => both,
                _ = held.live.cancelled() => return,
            };
            let (client, upstream) = match both {
                (Ok(c), Ok(u)) => (c, u),
                (c, u) => {
                    tracing::debug!(client = ?c.err(), upstream = ?u.err(), "a kube upgrade did not complete");
                    return;
                }
            };
            let client = hyper_util::rt::TokioIo::new(client);
            let upstream = hyper_util::rt::TokioIo::new(upstream);
            let cut = async {
                held.live.cancelled().await;
                tracing::info!(%cluster, grant = %held.auth.grant_id(), stream = %what, "grant ended; closing its stream");
            };
            stream::splice(client, upstream, last, cut).await;
        });
        let (mut parts, _) = resp.into_parts();
        let agreed = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Some(p) = agreed {
            parts.headers.insert(header::UPGRADE, p);
        }
        Response::from_parts(parts, Body::empty())
    }

    /// What a stream says when its grant ends, if it can say anything: a watch (JSON or
    /// protobuf, as the API server answered it) and a log can.
    fn last_words(&self, headers: &HeaderMap) -> Option<LastWords> {
        let Attrs::Resource(r) = self.attrs else { return None };
        let media = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|t| t.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
        if r.verb == "watch" {
            match media.as_deref() {
                Some("application/json") => Some(LastWords::WatchEvent),
                Some("application/vnd.kubernetes.protobuf") => Some(LastWords::WatchFrame),
                _ => None,
            }
        } else if r.subresource == Some("log") {
            Some(LastWords::LogLine)
        } else {
            None
        }
    }

    fn unreachable(&self, why: &str) -> Response<Body> {
        tracing::warn!(cluster = %self.cluster.name, grant = %self.held.auth.grant_id(), error = %why, "API server unreachable");
        status::status(
            StatusCode::BAD_GATEWAY,
            "ServiceUnavailable",
            &format!(
                "jitgate: cluster {:?} did not answer through the proxy: {why}",
                self.cluster.name
            ),
        )
    }
}

/// Why a stream ended, and how to get access again. Made when the cut happens, so the time
/// is when it ended (the expiry, or the revocation before it).
fn cut_message(held: &Held) -> String {
    if held.live.ended_by_logout() {
        return format!(
            "jitgate: you logged out of the proxy at {}; grant {} goes on for your other logins. Run `jitgate login` to use it again",
            crate::time::Timestamp::now().to_rfc3339(),
            held.auth.grant_id(),
        );
    }
    format!(
        "jitgate: grant {} ended at {}; request access again with: jitgate request {} --reason TEXT --for DURATION",
        held.auth.grant_id(),
        held.auth.expires_at().min(crate::time::Timestamp::now()).to_rfc3339(),
        held.auth.profile().name,
    )
}

/// What a stream says when its grant ends.
#[derive(Clone, Copy)]
enum LastWords {
    /// A JSON watch: an ERROR event with a Status (kubectl prints its message).
    WatchEvent,
    /// A protobuf watch: the same event in its framing (client-go's error carries it).
    WatchFrame,
    /// A log: a last line.
    LogLine,
}

impl LastWords {
    fn say(self, held: &Held) -> Bytes {
        let message = cut_message(held);
        match self {
            // Forbidden, as the code says: with Expired ("too old resource version") a
            // client-go reflector would re-list quietly and log the reason only at -v=4.
            LastWords::WatchEvent => status::watch_error_event("Forbidden", &message),
            LastWords::WatchFrame => status::watch_error_frame("Forbidden", &message),
            LastWords::LogLine => Bytes::from(format!("{message}\n")),
        }
    }
}

/// An error with its causes: hyper's own message ("client error (Connect)") says little.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

// Names, not strings: a string is parsed into a name again on every use.
const IMPERSONATE_USER: HeaderName = HeaderName::from_static("impersonate-user");
const IMPERSONATE_GROUP: HeaderName = HeaderName::from_static("impersonate-group");
const IMPERSONATE_GRANT: HeaderName = HeaderName::from_static("impersonate-extra-jitgate-grant");

/// Headers the API server must never get from a client: credentials, identities to act
/// as (`Impersonate-*`, and `X-Remote-*` for front-proxy authentication), forwarding
/// claims, cookies, and hop-by-hop headers. `_` counts as `-`, as some servers read it.
fn clean_request(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    // Most requests carry nothing to remove: look before collecting anything.
    let refused = |n: &HeaderName| {
        let name = n.as_str();
        is_reserved(n)
            || same_name_prefix(name, "impersonate-")
            || same_name_prefix(name, "x-remote-")
            || matches!(name, "authorization" | "cookie" | "host")
    };
    if headers.keys().any(refused) {
        let names: Vec<HeaderName> = headers.keys().filter(|n| refused(n)).cloned().collect();
        for name in names {
            headers.remove(name);
        }
    }
    if !headers.contains_key(header::SEC_WEBSOCKET_PROTOCOL) {
        return;
    }
    let protocols: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.starts_with(TOKEN_SUBPROTOCOL))
        .map(str::to_owned)
        .collect();
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if !protocols.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&protocols.join(", ")) {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
}

/// Whether a (lower-case) header name starts with `prefix`, reading `_` as `-`.
fn same_name_prefix(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name
            .bytes()
            .zip(prefix.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
}

/// `SPDY/3.1` or `websocket`, when the request asks to upgrade to one of them.
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
    if !connection {
        return None;
    }
    let value = headers.get(header::UPGRADE)?;
    let text = value.to_str().ok()?.trim();
    (text.eq_ignore_ascii_case("websocket") || text.eq_ignore_ascii_case("SPDY/3.1")).then(|| value.clone())
}

/// The whole request body, at most `MAX_BODY`.
#[allow(clippy::result_large_err)]
pub(super) async fn read_body(headers: &HeaderMap, body: Incoming) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        status::status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            &format!("jitgate: the request body is larger than {} MiB", MAX_BODY >> 20),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    // Most requests (every get, list and watch) have none: nothing to collect.
    if hyper::body::Body::is_end_stream(&body) {
        return Ok(Bytes::new());
    }
    match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(status::bad_request("jitgate: the request body could not be read")),
    }
}

/// An API server's answer, ended when the grant that allowed it is cut: after its last
/// words (a watch's ERROR event, a log's last line) the stream ends cleanly, since an
/// HTTP/2 reset would discard them unsent; without last words it ends as an error, so the
/// client cannot take it for complete.
struct CutBody<B> {
    inner: B,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    last: Option<LastWords>,
    /// Where what was sent so far ends: last words go out only between two lines or
    /// frames, never in the middle of one.
    sent: Boundary,
    ended: bool,
    said_last: bool,
    held: Arc<Held>,
}

impl<B> CutBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn around(inner: B, held: Arc<Held>, last: Option<LastWords>) -> Body {
        let cut = held.live.token().child_token().cancelled_owned();
        Body::new(CutBody {
            inner,
            cut: Box::pin(cut),
            sent: Boundary::new(last),
            last,
            ended: false,
            said_last: false,
            held,
        })
    }
}

/// How far a stream has got through its lines (JSON watch events, log lines) or its
/// length-prefixed frames (protobuf watch events).
enum Boundary {
    Lines {
        at_end: bool,
    },
    /// `head` holds the first `have` bytes of a frame's 4-byte big-endian length; `left` is
    /// what remains of the frame's body once the length is whole.
    Frames {
        head: [u8; 4],
        have: usize,
        left: usize,
    },
}

impl Boundary {
    fn new(last: Option<LastWords>) -> Boundary {
        match last {
            Some(LastWords::WatchFrame) => Boundary::Frames {
                head: [0; 4],
                have: 0,
                left: 0,
            },
            _ => Boundary::Lines { at_end: true },
        }
    }

    fn pass(&mut self, mut data: &[u8]) {
        match self {
            Boundary::Lines { at_end } => {
                if let Some(&b) = data.last() {
                    *at_end = b == b'\n';
                }
            }
            Boundary::Frames { head, have, left } => {
                while !data.is_empty() {
                    if *left > 0 {
                        let n = (*left).min(data.len());
                        *left -= n;
                        data = &data[n..];
                        continue;
                    }
                    let n = (4 - *have).min(data.len());
                    head[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have == 4 {
                        *have = 0;
                        *left = u32::from_be_bytes(*head) as usize;
                    }
                }
            }
        }
    }

    fn between(&self) -> bool {
        match self {
            Boundary::Lines { at_end } => *at_end,
            Boundary::Frames { have, left, .. } => *have == 0 && *left == 0,
        }
    }
}

impl<B> hyper::body::Body for CutBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.ended {
            if self.said_last {
                return Poll::Ready(None);
            }
            return Poll::Ready(Some(Err("the grant ended".into())));
        }
        if std::future::Future::poll(self.cut.as_mut(), cx).is_ready() {
            self.ended = true;
            if let Some(last) = self.last.take().filter(|_| self.sent.between()) {
                self.said_last = true;
                return Poll::Ready(Some(Ok(Frame::data(last.say(&self.held)))));
            }
            return Poll::Ready(Some(Err("the grant ended".into())));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.sent.pass(data);
            }
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        if self.ended {
            return false;
        }
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        // Last words would not fit an exact length.
        if self.last.is_some() {
            return hyper::body::SizeHint::default();
        }
        self.inner.size_hint()
    }
}

/// The checked path under the server's (`base`: its path for a pool connection, its whole
/// URL for the upgrade client), with the client's query as it came.
fn upstream_uri(base: &str, path: &str, query: Option<&str>) -> Option<Uri> {
    let uri = match query {
        Some(q) => format!("{base}{path}?{q}"),
        None => format!("{base}{path}"),
    };
    uri.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_server_gets_the_checked_path_under_its_own_with_the_query() {
        let pooled = upstream_uri("/behind", "/api/v1/namespaces/p/pods", Some("watch=true&limit=5")).unwrap();
        assert_eq!(
            pooled.to_string(),
            "/behind/api/v1/namespaces/p/pods?watch=true&limit=5"
        );
        assert_eq!(pooled.authority(), None, "origin form on a pool connection");
        let bare = upstream_uri("", "/version", None).unwrap();
        assert_eq!(bare.to_string(), "/version");
        let upgrade = upstream_uri(
            "https://[::1]:6443/behind",
            "/api/v1/namespaces/p/pods/x/exec",
            Some("command=sh"),
        )
        .unwrap();
        assert_eq!(upgrade.authority().unwrap().as_str(), "[::1]:6443");
        assert_eq!(upgrade.path(), "/behind/api/v1/namespaces/p/pods/x/exec");
        assert_eq!(upgrade.query(), Some("command=sh"));
        assert!(
            upstream_uri("", "/api/v1/namespaces/a b", None).is_none(),
            "a decoded path that is no URI is refused, not sent"
        );
    }

    #[test]
    fn protobuf_frames_are_followed_across_chunks() {
        let mut b = Boundary::new(Some(LastWords::WatchFrame));
        assert!(b.between());
        let frame = status::watch_error_frame("Expired", "a frame of some length");
        let two: Vec<u8> = [frame.as_ref(), frame.as_ref()].concat();
        // Every way of cutting two frames in chunks: between frames only at 0, one frame's
        // length and two frames' lengths.
        for cut in 0..=two.len() {
            let mut b = Boundary::new(Some(LastWords::WatchFrame));
            b.pass(&two[..cut]);
            assert_eq!(
                b.between(),
                cut == 0 || cut == frame.len() || cut == two.len(),
                "after {cut} bytes"
            );
            b.pass(&two[cut..]);
            assert!(b.between());
        }
        // A length split byte by byte, then an empty frame.
        for byte in [0u8, 0, 0, 0] {
            b.pass(&[byte]);
        }
        assert!(b.between(), "an empty frame is whole once its length is");
    }

    #[test]
    fn lines_end_at_a_newline() {
        let mut b = Boundary::new(Some(LastWords::WatchEvent));
        assert!(b.between());
        b.pass(b"{\"type\":\"ADDED\"");
        assert!(!b.between());
        b.pass(b"}\n");
        assert!(b.between());
        b.pass(b"");
        assert!(b.between(), "an empty chunk changes nothing");
    }
}
