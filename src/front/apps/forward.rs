//! One allowed request on its way to the upstream, and the answer on its way back: the
//! headers the upstream gets, the WebSocket splice, and the body that ends with its grant.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::header::{self, HeaderValue};
use axum::http::{Request, Response, StatusCode, Uri, Version};
use bytes::Bytes;
use hyper::body::{Frame, Incoming};
use maud::html;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::{headers, text, App, HeldRef, IdentityHeaders};
use crate::front::h1pool::PooledBody;

/// One allowed request on its way to the upstream.
pub(super) struct Forward<'a> {
    pub(super) app: &'a App,
    pub(super) identity: &'a IdentityHeaders,
    pub(super) path: &'a str,
    pub(super) peer: SocketAddr,
}

impl Forward<'_> {
    /// The request's URI on the upstream: in origin form for an inline pool, which sends
    /// it as is, absolute for hyper-util's client, which finds the upstream from it.
    fn upstream_uri(&self, query: Option<&str>, inline: bool) -> Option<Uri> {
        let upstream = &self.app.config.upstream;
        let base = if inline { upstream.path() } else { upstream.as_str() };
        let base = base.trim_end_matches('/');
        // Built at its final size and handed over whole: the URI keeps these bytes.
        let mut uri = String::with_capacity(base.len() + self.path.len() + query.map_or(0, |q| q.len() + 1));
        uri.push_str(base);
        uri.push_str(self.path);
        if let Some(q) = query {
            uri.push('?');
            uri.push_str(q);
        }
        Uri::try_from(uri).ok()
    }

    /// The headers the upstream gets: the client's, cleaned, plus what the proxy knows.
    fn headers(&self, headers: &mut axum::http::HeaderMap, inline: bool) {
        headers::clean_request(headers);
        // Room for what the proxy adds, made once: growing as they go in rehashes twice.
        headers.reserve(9);
        if let Some(v) = headers::forwarded_for(self.peer.ip()) {
            headers.insert(headers::FORWARDED_FOR, v);
        }
        headers.insert(headers::FORWARDED_PROTO, HeaderValue::from_static("https"));
        headers.insert(headers::FORWARDED_HOST, self.app.host_header.clone());
        if self.app.config.pass_identity_headers {
            let id = self.identity;
            headers.insert(headers::USER, id.user.clone());
            if let Some(email) = &id.email {
                headers.insert(headers::EMAIL, email.clone());
            }
            headers.insert(headers::GROUPS, id.groups.clone());
            headers.insert(headers::GRANT, id.grant.clone());
            headers.insert(headers::ASSERTION, id.assertion.clone());
        }
        // The upstream's own name, as for a direct request to it: hyper-util's client
        // adds it from the URI, an inline pool sends what it is given.
        if inline {
            headers.insert(header::HOST, self.app.upstream_host.clone());
        } else {
            headers.remove(header::HOST);
        }
    }

    /// Turns the client's request head into the upstream's: its URI on the upstream,
    /// HTTP/1.1 (the pool picks HTTP/2 where offered), and the cleaned headers.
    #[allow(clippy::result_large_err)]
    fn toward_upstream(&self, parts: &mut axum::http::request::Parts, inline: bool) -> Result<(), Response<Body>> {
        let Some(uri) = self.upstream_uri(parts.uri.query(), inline) else {
            return Err(text(
                StatusCode::BAD_REQUEST,
                "jitgate: the request's URL cannot be forwarded",
            ));
        };
        self.headers(&mut parts.headers, inline);
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        Ok(())
    }

    pub(super) async fn request(&self, req: Request<Incoming>, held: HeldRef) -> Response<Reply> {
        let (mut parts, body) = req.into_parts();
        if let Err(refused) = self.toward_upstream(&mut parts, self.app.pool().is_some()) {
            return refused.map(Reply::Boxed);
        }
        // One token of its own for the whole exchange: waiters on the grant's shared token
        // would all queue on its lock.
        let cut = held.live.token().child_token();
        // An upload ends with its grant too, and its trailers are cleaned like headers.
        let body = if hyper::body::Body::is_end_stream(&body) {
            // Nothing to send: no box to allocate (`Empty` has no size).
            Body::empty()
        } else {
            CutBody::around(body, cut.clone(), &held, Direction::Upstream)
        };
        if cut.is_cancelled() {
            return ended(&held, false).map(Reply::Boxed);
        }
        let up = Request::from_parts(parts, body);
        let resp = match self.app.pool() {
            // The common case, unboxed: its body is the answer's, through the listener.
            Some(pool) => self
                .answer(pool.request(up), &cut, &held)
                .await
                .map(|r| r.map(|b| Reply::Pooled(CutBody::new(b, cut, &held, Direction::Client)))),
            None => self
                .answer(self.app.client().request(up), &cut, &held)
                .await
                .map(|r| r.map(|b| Reply::Boxed(CutBody::around(b, cut, &held, Direction::Client)))),
        };
        match resp {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                headers::clean_response(&mut parts.headers);
                Response::from_parts(parts, body)
            }
            Err(refused) => refused.map(Reply::Boxed),
        }
    }

    /// The upstream's answer to a request under way, or the page that says why there is
    /// none. The cut is raced first: a request whose grant just ended is not handed on,
    /// and a long poll or an upload that waits for the answer's head does not hold the
    /// cut up. Dropping the request drops its upstream connection.
    async fn answer<B, E: std::fmt::Display>(
        &self,
        sent: impl Future<Output = Result<Response<B>, E>>,
        cut: &CancellationToken,
        held: &HeldRef,
    ) -> Result<Response<B>, Response<Body>> {
        let mut sent = std::pin::pin!(tokio::time::timeout(self.app.config.response_timeout, sent));
        let mut cancelled = std::pin::pin!(cut.cancelled());
        // The cut first, then the answer; the cut's waiter, whose every poll takes the
        // token's lock, is only polled while there is no answer, not on the poll that
        // brings it.
        let sent = std::future::poll_fn(|cx| {
            if cut.is_cancelled() {
                return Poll::Ready(None);
            }
            if let Poll::Ready(sent) = sent.as_mut().poll(cx) {
                return Poll::Ready(Some(sent));
            }
            cancelled.as_mut().poll(cx).map(|()| None)
        })
        .await;
        let Some(sent) = sent else {
            return Err(ended(held, true));
        };
        match sent {
            Ok(Ok(r)) => Ok(r),
            // The upload was cut mid-way, so the client error says why.
            Ok(Err(_)) if held.live.is_cut() => Err(ended(held, true)),
            Ok(Err(e)) => Err(self.unreachable(&e.to_string(), held)),
            Err(_) => Err(self.unreachable(
                &format!(
                    "no answer within {}",
                    humantime::format_duration(self.app.config.response_timeout)
                ),
                held,
            )),
        }
    }

    pub(super) async fn websocket(&self, mut req: Request<Incoming>, held: HeldRef) -> Response<Body> {
        let from_client = hyper::upgrade::on(&mut req);
        let (mut parts, _) = req.into_parts();
        if let Err(refused) = self.toward_upstream(&mut parts, false) {
            return refused;
        }
        // The upgrade request goes without a body: no length may claim one, or the upstream
        // would wait for it (or read the next request's bytes as it).
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let key = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned();
        let up = Request::from_parts(parts, Body::empty());
        let sent = tokio::select! {
            biased;
            _ = held.live.cancelled() => return ended(&held, true),
            sent = tokio::time::timeout(self.app.config.response_timeout, self.app.upgrades.request(up)) => sent,
        };
        let mut resp = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return self.unreachable(&e.to_string(), &held),
            Err(_) => return self.unreachable("no answer to the WebSocket upgrade in time", &held),
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            // Not upgraded, but maybe a stream all the same: it ends with the grant too.
            let (mut parts, body) = resp.into_parts();
            headers::clean_response(&mut parts.headers);
            let cut = held.live.token().child_token();
            return Response::from_parts(parts, CutBody::around(body, cut, &held, Direction::Client));
        }
        // Only an upstream that proves it read this handshake gets a raw splice: anything
        // else answering 101 (a confused server, a smuggled request) would get one too.
        if !accepts(key.as_ref(), resp.headers().get(header::SEC_WEBSOCKET_ACCEPT)) {
            return self.unreachable(
                "its answer to the WebSocket upgrade has no valid Sec-WebSocket-Accept",
                &held,
            );
        }
        let from_upstream = hyper::upgrade::on(&mut resp);
        let app = Arc::clone(&self.app.name);
        let grant = held.auth.grant_id().to_owned();
        tokio::spawn(async move {
            let (client, upstream) = match tokio::join!(from_client, from_upstream) {
                (Ok(c), Ok(u)) => (c, u),
                (c, u) => {
                    tracing::debug!(client = ?c.err(), upstream = ?u.err(), "a WebSocket upgrade did not complete");
                    return;
                }
            };
            let mut client = hyper_util::rt::TokioIo::new(client);
            let mut upstream = hyper_util::rt::TokioIo::new(upstream);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                _ = held.live.cancelled() => {
                    tracing::info!(app = %app, grant = %grant, "grant ended; closing its WebSocket");
                }
            }
        });
        let (mut parts, _) = resp.into_parts();
        headers::clean_response(&mut parts.headers);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        Response::from_parts(parts, Body::empty())
    }

    /// The upstream could not be reached: a page that names the app, and a log line with
    /// the grant.
    fn unreachable(&self, why: &str, held: &HeldRef) -> Response<Body> {
        tracing::warn!(app = %self.app.name, grant = %held.auth.grant_id(), error = %why, "upstream unreachable");
        let name = &self.app.name;
        let body = html! {
            (maud::DOCTYPE)
            html lang="en" {
                head { meta charset="utf-8"; title { (name) " is unreachable · jitgate" } }
                body {
                    h1 { (name) " is unreachable" }
                    p { "jitgate let you in, but " (name) " did not answer. Try again in a moment; if it persists, tell the team that runs " (name) "." }
                }
            }
        };
        let mut resp = Response::new(Body::from(body.into_string()));
        *resp.status_mut() = StatusCode::BAD_GATEWAY;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        resp
    }
}

/// Whether `accept` is the answer RFC 6455 (4.2.2) requires to the client's `key`.
fn accepts(key: Option<&HeaderValue>, accept: Option<&HeaderValue>) -> bool {
    use base64::Engine;
    use sha1::{Digest, Sha1};
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let (Some(key), Some(accept)) = (key, accept) else {
        return false;
    };
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID);
    let expected = base64::engine::general_purpose::STANDARD.encode(h.finalize());
    accept.as_bytes() == expected.as_bytes()
}

/// The answer to a request whose grant was cut before the upstream answered; `sent` says
/// whether the request had gone to the app (which may then have acted on it).
fn ended(held: &HeldRef, sent: bool) -> Response<Body> {
    let why = if held.live.ended_by_logout() {
        "you logged out".to_owned()
    } else {
        format!("grant {} ended", held.auth.grant_id())
    };
    let what = if sent {
        "while the app was answering this request: the app may have acted on it, but its answer is withheld"
    } else {
        "before this request reached the app"
    };
    text(
        StatusCode::FORBIDDEN,
        &format!("jitgate: {why} {what}; reload to see what you can do now"),
    )
}

/// Which way a body flows, so its trailers are cleaned as that way's headers are.
#[derive(Clone, Copy)]
enum Direction {
    Upstream,
    Client,
}

/// An answer's body as the listener sends it: an app's answer from a pooled connection, as
/// it comes, or any other (the proxy's pages, other upstreams' answers) boxed.
pub(crate) enum Reply {
    Pooled(CutBody<PooledBody>),
    Boxed(Body),
}

impl hyper::body::Body for Reply {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Reply::Pooled(b) => Pin::new(b).poll_frame(cx),
            Reply::Boxed(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Reply::Pooled(b) => b.is_end_stream(),
            Reply::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Reply::Pooled(b) => b.size_hint(),
            Reply::Boxed(b) => b.size_hint(),
        }
    }
}

/// A body on its way through, ended (as an error, so the receiver cannot take it for
/// complete) when its grant is cut, with its trailers cleaned like the headers before it.
pub(crate) struct CutBody<B> {
    inner: B,
    token: CancellationToken,
    /// Waits for the cut; made the first time the body has nothing to give. A small answer
    /// is all there when first asked for: checking the token then costs an atomic load,
    /// where waiting would allocate and register with the token.
    cut: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    direction: Direction,
    /// Keeps the grant's registration with `live` while the body flows.
    _held: HeldRef,
}

impl<B> CutBody<B>
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Send + Unpin + 'static,
{
    /// `cut` is a child of the grant's token, so that waiting on it does not queue on the
    /// grant's shared lock.
    fn new(inner: B, cut: CancellationToken, held: &HeldRef, direction: Direction) -> CutBody<B> {
        CutBody {
            inner,
            token: cut,
            cut: None,
            direction,
            _held: held.clone(),
        }
    }

    fn around(inner: B, cut: CancellationToken, held: &HeldRef, direction: Direction) -> Body {
        Body::new(CutBody::new(inner, cut, held, direction))
    }
}

impl<B> hyper::body::Body for CutBody<B>
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.token.is_cancelled() {
            return Poll::Ready(Some(Err("the grant ended".into())));
        }
        let direction = self.direction;
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if frame.is_pending() {
            // Nothing to give: the task must also wake when the grant is cut.
            let this = &mut *self;
            let cut = this
                .cut
                .get_or_insert_with(|| Box::pin(this.token.clone().cancelled_owned()));
            if cut.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err("the grant ended".into())));
            }
            return Poll::Pending;
        }
        frame.map(|frame| {
            frame.map(|f| {
                f.map(|f| {
                    // Trailers reach frameworks that merge them into headers: they get
                    // the same cleaning, or they would smuggle what the headers may not.
                    match f.into_trailers() {
                        Ok(mut t) => {
                            match direction {
                                Direction::Upstream => headers::clean_request(&mut t),
                                Direction::Client => headers::clean_response(&mut t),
                            }
                            Frame::trailers(t)
                        }
                        Err(data) => data,
                    }
                })
                .map_err(Into::into)
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_websocket_accept_must_answer_the_key() {
        // The example handshake of RFC 6455, section 1.3.
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let good = HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(accepts(Some(&key), Some(&good)));
        let other = HeaderValue::from_static("x3JJHMbDL1EzLkh9GBhXDw==");
        assert!(!accepts(Some(&other), Some(&good)), "another key's answer");
        assert!(!accepts(Some(&key), None), "no answer");
        assert!(!accepts(None, Some(&good)), "no key asked");
        let lower = HeaderValue::from_static("s3pplmbitxaq9kygzzhzrbk+xoo=");
        assert!(!accepts(Some(&key), Some(&lower)), "base64 is case-sensitive");
    }
}
