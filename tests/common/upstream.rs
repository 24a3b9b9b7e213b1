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

/// The test upstream: echoes method, path, headers and body as JSON; `/ws` echoes
/// WebSocket messages; `/stream` sends a line every 50 ms until the client goes.
pub async fn upstream() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let record = seen.clone();
    let app = axum::Router::new()
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
        .route(
            "/stream",
            get(|| async {
                let ticks = futures_util::stream::unfold(0u64, |n| async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Some((
                        Ok::<_, std::io::Error>(bytes::Bytes::from(format!("tick {n}\n"))),
                        n + 1,
                    ))
                });
                axum::body::Body::from_stream(ticks)
            }),
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
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
                axum::Json(json!({
                    "method": parts.method.as_str(),
                    "path": parts.uri.path(),
                    "query": parts.uri.query(),
                    "headers": headers,
                    "body": String::from_utf8_lossy(&body),
                }))
                .into_response()
            }
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}
