//! Opens many keep-alive HTTPS connections to one of the proxy's apps and holds them idle,
//! so that a benchmark can read what they cost the proxy. Each connection makes one request
//! with the app cookie (so it went through the whole per-request path) and then waits.
//!
//!   cargo run --release --example http_idle -- ADDR HOST PATH COOKIE COUNT CA_PEM
//!
//! ADDR is where the proxy listens (127.0.0.1:8443), HOST the app's host name (the TLS
//! server name and `Host`), COOKIE the `__Host-jitgate-app` value. Prints `ready N` when N
//! connections have had their answer, then holds them until its standard input closes.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

async fn open(
    addr: &str,
    host: &str,
    request: &[u8],
    tls: &tokio_rustls::TlsConnector,
) -> Result<BufReader<TlsStream<TcpStream>>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let mut stream = tls.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
    stream.write_all(request).await.map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.map_err(|e| e.to_string())?;
    if !line.starts_with("HTTP/1.1 200") {
        return Err(format!("the proxy answered {}", line.trim_end()));
    }
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line).await.map_err(|e| e.to_string())?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().map_err(|_| format!("bad content-length {v:?}"))?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    Ok(reader)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, host, path, cookie, count, ca] = &args[..] else {
        eprintln!("usage: http_idle ADDR HOST PATH COOKIE COUNT CA_PEM");
        std::process::exit(2);
    };
    let count: usize = count.parse().expect("COUNT is a number");
    let pem = std::fs::read(ca).expect("read the CA");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("a certificate")).expect("a CA certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: __Host-jitgate-app={cookie}\r\n\r\n");
    let mut held = Vec::with_capacity(count);
    // A few at a time: the point is the idle cost, not a connect storm.
    let mut pending = tokio::task::JoinSet::new();
    let mut started = 0;
    while held.len() < count {
        while started < count && pending.len() < 64 {
            let (addr, host, request, tls) = (addr.clone(), host.clone(), request.clone(), tls.clone());
            pending.spawn(async move { open(&addr, &host, request.as_bytes(), &tls).await });
            started += 1;
        }
        match pending.join_next().await {
            Some(Ok(Ok(c))) => held.push(c),
            Some(Ok(Err(e))) => {
                eprintln!("connection {} failed: {e}", held.len() + 1);
                std::process::exit(1);
            }
            Some(Err(e)) => panic!("{e}"),
            None => break,
        }
        if held.len() % 1000 == 0 {
            println!("open {}", held.len());
        }
    }
    println!("ready {}", held.len());
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 1];
    let _ = stdin.read(&mut buf).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(held);
}
