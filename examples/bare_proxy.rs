//! The floor under the apps front: a reverse proxy made of nothing but the stack it is
//! built on. hyper's HTTP/1.1 server over tokio-rustls in front, hyper's HTTP/1.1 client
//! behind, one single-threaded runtime per core (as jitgate's shards), and no more: no
//! authorization, no header cleaning, no limits or timers, and one upstream connection per
//! client connection, so no pool either. `scripts/bench/http` runs it as a path of its own,
//! so that jitgate's requests/s read against what hyper and rustls allow on the same cores
//! in the same run, and the cost of jitgate's own work shows as the gap between the two.
//! It is a yardstick, not a proxy to deploy: it checks nothing.
//!
//!   cargo run --release --example bare_proxy -- LISTEN UPSTREAM CERT_PEM KEY_PEM [THREADS]
//!
//! LISTEN and UPSTREAM are `host:port`; the upstream speaks plain HTTP/1.1. THREADS is the
//! number of runtimes (the cores by default). Prints `listening on ADDR` once it accepts.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

type Answer = Response<Either<Incoming, Empty<Bytes>>>;

fn tls_config(cert: &str, key: &str) -> Result<rustls::ServerConfig, String> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).map_err(|e| format!("{cert}: {e}"))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| format!("{cert}: {e}"))?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).map_err(|e| format!("{key}: {e}"))?,
    ))
    .map_err(|e| format!("{key}: {e}"))?
    .ok_or_else(|| format!("{key}: no private key in it"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Sends `req` on the connection's own upstream connection. hyper's HTTP/1.1 server asks
/// for one answer at a time, so the handle is taken out for the request and put back once
/// its answer's head is in; the body streams on by the connection's task.
async fn forward(upstream: Arc<Mutex<Option<SendRequest<Incoming>>>>, req: Request<Incoming>) -> Answer {
    let taken = upstream.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(mut send) = taken else {
        return bad_gateway();
    };
    if send.ready().await.is_err() {
        return bad_gateway();
    }
    let answer = send.send_request(req).await;
    *upstream.lock().unwrap_or_else(|e| e.into_inner()) = Some(send);
    match answer {
        Ok(resp) => resp.map(Either::Left),
        Err(_) => bad_gateway(),
    }
}

fn bad_gateway() -> Answer {
    let mut resp = Response::new(Either::Right(Empty::new()));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}

async fn connection(tcp: TcpStream, acceptor: TlsAcceptor, upstream: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let Ok(tls) = acceptor.accept(tcp).await else { return };
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let Ok((send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await else {
        return;
    };
    tokio::spawn(conn);
    let send = Arc::new(Mutex::new(Some(send)));
    let svc = hyper::service::service_fn(move |req| {
        let send = Arc::clone(&send);
        async move { Ok::<_, std::convert::Infallible>(forward(send, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), svc)
        .await;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream, cert, key, threads) = match &args[1..] {
        [l, u, c, k] => (l, u, c, k, None),
        [l, u, c, k, t] => (l, u, c, k, Some(t)),
        _ => {
            eprintln!("usage: bare_proxy LISTEN UPSTREAM CERT_PEM KEY_PEM [THREADS]");
            std::process::exit(2);
        }
    };
    let fail = |what: String| -> ! {
        eprintln!("bare_proxy: {what}");
        std::process::exit(1);
    };
    let threads = match threads {
        Some(t) => t
            .parse()
            .unwrap_or_else(|_| fail(format!("THREADS wants a number, not {t}"))),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let upstream: SocketAddr = upstream
        .parse()
        .unwrap_or_else(|e| fail(format!("UPSTREAM {upstream}: {e}")));
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(cert, key).unwrap_or_else(|e| fail(e))));
    let listener = std::net::TcpListener::bind(listen).unwrap_or_else(|e| fail(format!("listen on {listen}: {e}")));
    listener.set_nonblocking(true).unwrap_or_else(|e| fail(e.to_string()));
    let addr = listener.local_addr().unwrap_or_else(|e| fail(e.to_string()));
    // Every runtime accepts from the one socket, as nginx's workers do.
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let listener = listener.try_clone().unwrap_or_else(|e| fail(e.to_string()));
            let acceptor = acceptor.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| fail(e.to_string()));
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).unwrap_or_else(|e| fail(e.to_string()));
                    loop {
                        match listener.accept().await {
                            Ok((tcp, _)) => {
                                tokio::spawn(connection(tcp, acceptor.clone(), upstream));
                            }
                            Err(e) => {
                                // Out of descriptors, say: wait rather than spin.
                                eprintln!("bare_proxy: accept: {e}");
                                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                            }
                        }
                    }
                });
            })
        })
        .collect();
    println!("listening on {addr}");
    for w in workers {
        let _ = w.join();
    }
}
