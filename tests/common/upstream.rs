//! The test upstream behind the proxy's apps: a small axum server that echoes what it
//! received, serves a WebSocket echo, an endless stream, and a page whose script opens a
//! WebSocket (for the browser test).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::Request;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{any, get};
use serde_json::json;

const UI_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>echo app</title></head>
<body><h1>echo app</h1><p id="ws">connecting</p><p id="echo"></p><script src="/ui/app.js"></script></body></html>
"#;

/// Opens a WebSocket to this app, sends "hello", shows the echo, and notes when it closes.
const UI_SCRIPT: &str = r#"const ws = new WebSocket(`wss://${location.host}/ws`);
ws.onopen = () => { document.getElementById('ws').textContent = 'open'; ws.send('hello'); };
ws.onmessage = (e) => { document.getElementById('echo').textContent = e.data; };
ws.onclose = () => { window.__closedAt = Date.now(); document.getElementById('ws').textContent = 'closed'; };
"#;

/// What the upstream has seen: every request path, in order.
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    pub fn paths(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// The test upstream: echoes method, version, path, headers, trailers and body as JSON;
/// `/ws` echoes WebSocket messages; `/stream` sends a line every 50 ms until the client
/// goes; `/slow` answers after a minute; `/ws-liar` fakes a WebSocket switch.
pub async fn upstream() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let app = router(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// The same upstream over TLS, offering HTTP/2 and HTTP/1.1 by ALPN, with a fresh
/// self-signed certificate for 127.0.0.1; the certificate's SHA-256 in hex, to pin.
pub async fn upstream_tls() -> (SocketAddr, Seen, String) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use sha2::Digest;
    use tower::ServiceExt;
    let seen = Seen::default();
    let app = router(seen.clone());
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let pin = hex::encode(sha2::Sha256::digest(cert.cert.der()));
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    app.clone().oneshot(req.map(axum::body::Body::new))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, seen, pin)
}

fn router(seen: Seen) -> axum::Router {
    let record = seen.clone();
    let slow_seen = seen;
    axum::Router::new()
        .route(
            "/ui",
            get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], UI_PAGE) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], UI_SCRIPT) }),
        )
        .route(
            "/ws",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    while let Some(Ok(msg)) = socket.recv().await {
                        if let Message::Text(t) = msg {
                            if socket.send(Message::Text(t)).await.is_err() {
                                break;
                            }
                        }
                    }
                })
            }),
        )
        // Answers after a minute: a long poll, or an upload the app reads only later.
        .route(
            "/slow",
            any(move || {
                slow_seen.0.lock().unwrap().push("/slow".to_owned());
                async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "late"
                }
            }),
        )
        // Says it switched to WebSocket without proving it read the handshake.
        .route(
            "/ws-liar",
            get(|| async {
                axum::http::Response::builder()
                    .status(axum::http::StatusCode::SWITCHING_PROTOCOLS)
                    .header(header::CONNECTION, "upgrade")
                    .header(header::UPGRADE, "websocket")
                    .header(header::SEC_WEBSOCKET_ACCEPT, "bm90IHRoZSBhbnN3ZXI=")
                    .body(axum::body::Body::empty())
                    .unwrap()
            }),
        )
        .route("/stream", get(|| async { ticking(Duration::from_millis(50)) }))
        // As an event stream that has gone silent: three ticks, then none for a minute, so
        // nothing but the cut itself can end it in time.
        .route(
            "/slow-stream",
            get(|| async { falling_silent(Duration::from_millis(200), 3, Duration::from_secs(60)) }),
        )
        .fallback(any(move |req: Request| {
            let record = record.clone();
            async move {
                record.0.lock().unwrap().push(req.uri().path().to_owned());
                let (parts, body) = req.into_parts();
                let headers: Vec<(String, String)> = parts
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                let (body, trailers) = match http_body_util::BodyExt::collect(body).await {
                    Ok(c) => {
                        let trailers: Vec<(String, String)> = c
                            .trailers()
                            .map(|t| {
                                t.iter()
                                    .map(|(k, v)| {
                                        (
                                            k.as_str().to_owned(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        (c.to_bytes(), trailers)
                    }
                    Err(_) => Default::default(),
                };
                axum::Json(json!({
                    "method": parts.method.as_str(),
                    "version": format!("{:?}", parts.version),
                    "path": parts.uri.path(),
                    "query": parts.uri.query(),
                    "headers": headers,
                    "trailers": trailers,
                    "body": String::from_utf8_lossy(&body),
                }))
                .into_response()
            }
        }))
}

/// A body that sends `count` lines `every` apart, then the next only after `quiet`.
fn falling_silent(every: Duration, count: u64, quiet: Duration) -> axum::body::Body {
    let ticks = futures_util::stream::unfold(0u64, move |n| async move {
        tokio::time::sleep(if n < count { every } else { quiet }).await;
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from(format!("tick {n}\n"))),
            n + 1,
        ))
    });
    axum::body::Body::from_stream(ticks)
}

/// A body that sends a line every `every`, for ever.
fn ticking(every: Duration) -> axum::body::Body {
    let ticks = futures_util::stream::unfold(0u64, move |n| async move {
        tokio::time::sleep(every).await;
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from(format!("tick {n}\n"))),
            n + 1,
        ))
    });
    axum::body::Body::from_stream(ticks)
}
