//! A stand-in kubelet, since a real one cannot run here: the real API server proxies pod
//! logs and exec to it exactly as to a kubelet (found through a Node object whose status
//! names its address and port, and declares `ExtendWebSocketsToKubelet` so that WebSocket
//! exec is passed through rather than translated to SPDY). It speaks what a kubelet speaks
//! for those: `GET /containerLogs/{ns}/{pod}/{container}` (a chunked text stream, endless
//! with `follow=true`), and `/exec/{ns}/{pod}/{container}` over WebSocket with the
//! `v5.channel.k8s.io` protocol (one byte of stream id before each message: 0 stdin,
//! 1 stdout, 2 stderr, 3 the exit Status, 255 closes a stream), and `/attach/…` the same way.
//! Its shell echoes each stdin line back on stdout and ends on `exit`; `tar cf - PATH` (what
//! `kubectl cp` runs) answers with a tar archive holding PATH with `CP_CONTENT`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path, Query};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tower::ServiceExt;

pub const V5: &str = "v5.channel.k8s.io";
/// What every file holds for `kubectl cp` from a pod.
pub const CP_CONTENT: &[u8] = b"copied out of the stand-in pod through the proxy\n";

/// Starts the stand-in on a thread of its own (it outlives any one test's runtime) and
/// returns its address.
pub fn start() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            serve(listener).await;
        });
    });
    rx.recv().unwrap()
}

fn tls() -> Arc<rustls::ServerConfig> {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn serve(listener: tokio::net::TcpListener) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls());
    let app = axum::Router::new()
        .route("/containerLogs/{ns}/{pod}/{container}", get(logs))
        .route("/exec/{ns}/{pod}/{container}", get(exec))
        .route("/attach/{ns}/{pod}/{container}", get(attach));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                app.clone().oneshot(req.map(Body::new))
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                .await;
        });
    }
}

#[derive(serde::Deserialize)]
struct LogQuery {
    #[serde(default)]
    follow: bool,
}

/// Three lines, then with `follow` one more every 20 ms for as long as the reader stays.
async fn logs(
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> impl IntoResponse {
    let head = format!("log of {ns}/{pod}/{container}: line 1\nline 2\nline 3\n");
    let stream = futures_util::stream::unfold((Some(head), 4u64, q.follow), |(head, n, follow)| async move {
        if let Some(h) = head {
            return Some((Ok::<_, std::io::Error>(h), (None, n, follow)));
        }
        if !follow {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        Some((Ok(format!("line {n}\n")), (None, n + 1, follow)))
    });
    ([("content-type", "text/plain")], Body::from_stream(stream))
}

fn frame(stream: u8, data: &[u8]) -> Message {
    let mut v = vec![stream];
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

fn normal_close() -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame {
        code: 1000,
        reason: "".into(),
    }))
}

const SUCCESS: &[u8] = br#"{"metadata":{},"status":"Success"}"#;

async fn exec(ws: WebSocketUpgrade, axum::extract::RawQuery(query): axum::extract::RawQuery) -> impl IntoResponse {
    let command: Vec<String> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.into_owned())
        .collect();
    if command.len() == 4 && command[..3] == ["tar", "cf", "-"] {
        let archive = tar_of(&command[3], CP_CONTENT);
        return ws
            .protocols([V5])
            .on_upgrade(|mut socket| async move {
                for chunk in archive.chunks(8 * 1024) {
                    if socket.send(frame(1, chunk)).await.is_err() {
                        return;
                    }
                }
                let _ = socket.send(frame(3, SUCCESS)).await;
                let _ = socket.send(normal_close()).await;
            })
            .into_response();
    }
    shell(ws, "stand-in shell ready\n").await.into_response()
}

async fn attach(ws: WebSocketUpgrade) -> impl IntoResponse {
    shell(ws, "attached to the stand-in container\n").await
}

/// A ustar archive with one file, as `tar cf - PATH` writes it (kubectl cp reads it with
/// Go's archive/tar, which checks the header checksum).
fn tar_of(path: &str, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    let name = path.trim_start_matches('/').as_bytes();
    header[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    let mut field = |at: usize, width: usize, value: u64| {
        let text = format!("{value:0w$o}\0", w = width - 1);
        header[at..at + width].copy_from_slice(text.as_bytes());
    };
    field(100, 8, 0o644);
    field(108, 8, 0);
    field(116, 8, 0);
    field(124, 12, content.len() as u64);
    field(136, 12, 1_700_000_000);
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// The echo shell: `greeting` first, then each stdin line back, until `exit`.
async fn shell(ws: WebSocketUpgrade, greeting: &'static str) -> impl IntoResponse {
    ws.protocols([V5]).on_upgrade(move |mut socket| async move {
        if socket.send(frame(1, greeting.as_bytes())).await.is_err() {
            return;
        }
        let mut pending = Vec::new();
        while let Some(Ok(msg)) = socket.recv().await {
            let Message::Binary(data) = msg else { continue };
            match data.first() {
                Some(0) => pending.extend_from_slice(&data[1..]),
                Some(255) => break,
                _ => continue,
            }
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if line.trim_ascii() == b"exit" {
                    let _ = socket.send(frame(3, SUCCESS)).await;
                    let _ = socket.send(normal_close()).await;
                    return;
                }
                if socket.send(frame(1, &line)).await.is_err() {
                    return;
                }
            }
        }
    })
}
