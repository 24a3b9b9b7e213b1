//! The proxy's connection to one cluster's API server: its TLS trust, its own credential
//! there, and per shard a pool of HTTP/1.1 connections for requests (`h1pool`: driven by
//! the requests' own tasks) and a client for exec, attach and port-forward upgrades,
//! which leave the pool.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use rustls::pki_types::CertificateDer;

use crate::config::{KubeCluster, KubeCredential, KubeTls};
use crate::front::h1pool::H1Pool;
use crate::front::upstream_tls::{self, AcceptOnly};

pub type KubeClient = upstream_tls::UpstreamClient;

/// A rotated service account token is picked up within this long (client-go re-reads its
/// token file every minute too).
const TOKEN_REREAD: Duration = Duration::from_secs(60);

pub struct Upstream {
    pub config: KubeCluster,
    /// The server URL without a trailing slash, to which upgrades' paths are appended.
    pub base: String,
    /// The server URL's path without a trailing slash (mostly empty): requests on the pool
    /// go in origin form, their path under it.
    pub prefix: String,
    /// Built on first use and again after a failure: a missing CA or key file is reported
    /// on each request (and at start) instead of keeping the proxy from starting. One set
    /// per shard, so that a request and its API server connection share a thread.
    clients: Box<[OnceLock<Clients>]>,
    /// The token file's content and when it was read. A lock held for a clone, not a
    /// cache: a moka lookup cost ten times as much on every request.
    token: Mutex<Option<(Instant, HeaderValue)>>,
}

impl Upstream {
    pub fn new(config: KubeCluster) -> Upstream {
        let base = config.server.as_str().trim_end_matches('/').to_owned();
        let prefix = config.server.path().trim_end_matches('/').to_owned();
        Upstream {
            config,
            base,
            prefix,
            clients: (0..crate::front::shards::count()).map(|_| OnceLock::new()).collect(),
            token: Mutex::new(None),
        }
    }

    /// This shard's pool and client for upgrades.
    pub fn clients(&self) -> Result<&Clients, String> {
        let slot = &self.clients[crate::front::shards::current() % self.clients.len()];
        if let Some(c) = slot.get() {
            return Ok(c);
        }
        let built = build_clients(&self.config)?;
        Ok(slot.get_or_init(|| built))
    }

    /// `Authorization` for the proxy's own token on the cluster, when it uses one.
    pub async fn authorization(&self) -> Result<Option<HeaderValue>, String> {
        let KubeCredential::TokenFile(path) = &self.config.credential else {
            return Ok(None);
        };
        if let Some((read_at, value)) = &*self.token.lock().unwrap_or_else(|e| e.into_inner()) {
            if read_at.elapsed() < TOKEN_REREAD {
                return Ok(Some(value.clone()));
            }
        }
        // Requests that meet an old token at once each read the file: once a minute, a
        // few small reads.
        let read = async {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("cluster {:?}: token_file {}: {e}", self.config.name, path.display()))?;
            let token = text.trim();
            if token.is_empty() {
                return Err(format!(
                    "cluster {:?}: token_file {} is empty",
                    self.config.name,
                    path.display()
                ));
            }
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                format!(
                    "cluster {:?}: token_file {} holds characters a token cannot have",
                    self.config.name,
                    path.display()
                )
            })?;
            value.set_sensitive(true);
            Ok(value)
        };
        let value = read.await?;
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), value.clone()));
        Ok(Some(value))
    }
}

/// One shard's way to the API server.
pub struct Clients {
    /// Requests, one connection per request in flight.
    pub pool: Arc<H1Pool>,
    /// The server's authority, the Host header of requests on `pool`.
    pub host: HeaderValue,
    /// Exec, attach and port-forward upgrades.
    pub upgrades: KubeClient,
}

fn build_clients(cluster: &KubeCluster) -> Result<Clients, String> {
    // HTTP/1.1 only, a pooled connection per request in flight. Over HTTP/2 each shard
    // would carry every watch and `logs -f` of every user on one connection, and hyper
    // opens no second one when the API server's stream limit (Go's 250 by default) is
    // reached: later requests would wait behind long-lived ones (hyperium/hyper#2197).
    // It was quicker too, measured with hyper-util's client before this pool: 0.3 ms
    // added at p50 in scripts/bench/kube, against 0.4–0.9 ms over HTTP/2.
    let tls = tls_config(cluster)?;
    let server = &cluster.server;
    let authority = match server.port() {
        Some(port) => format!("{}:{port}", server.host_str().unwrap_or_default()),
        None => server.host_str().unwrap_or_default().to_owned(),
    };
    let bad = |e: &dyn std::fmt::Display| format!("cluster {:?}: server: {e}", cluster.name);
    let target: hyper::Uri = format!("{}://{authority}", server.scheme())
        .parse()
        .map_err(|e| bad(&e))?;
    let host = HeaderValue::from_str(&authority).map_err(|e| bad(&e))?;
    Ok(Clients {
        upgrades: upstream_tls::upgrade_client(tls.clone(), cluster.connect_timeout, false),
        pool: upstream_tls::h1_pool(tls, cluster.connect_timeout, false, &target),
        host,
    })
}

fn tls_config(cluster: &KubeCluster) -> Result<rustls::ClientConfig, String> {
    let name = &cluster.name;
    let builder = upstream_tls::builder()?;
    let builder = match &cluster.tls {
        KubeTls::CaFile(path) => {
            builder.with_root_certificates(upstream_tls::roots(path, &format!("cluster {name:?}: ca_file"))?)
        }
        KubeTls::InsecureSkipVerify => builder
            .dangerous()
            .with_custom_certificate_verifier(AcceptOnly::new(None)),
    };
    match &cluster.credential {
        KubeCredential::TokenFile(_) => Ok(builder.with_no_client_auth()),
        KubeCredential::ClientCert { cert, key } => {
            let cert_pem = std::fs::read(cert)
                .map_err(|e| format!("cluster {name:?}: client_cert_file {}: {e}", cert.display()))?;
            let key_pem =
                std::fs::read(key).map_err(|e| format!("cluster {name:?}: client_key_file {}: {e}", key.display()))?;
            let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("cluster {name:?}: client_cert_file {}: {e}", cert.display()))?;
            let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
                .map_err(|e| format!("cluster {name:?}: client_key_file {}: {e}", key.display()))?
                .ok_or_else(|| format!("cluster {name:?}: client_key_file {} holds no key", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("cluster {name:?}: client certificate: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(server: &str) -> Upstream {
        Upstream::new(KubeCluster {
            name: "c".into(),
            server: server.parse().unwrap(),
            tls: KubeTls::InsecureSkipVerify,
            credential: KubeCredential::TokenFile("token".into()),
            connect_timeout: Duration::from_secs(1),
        })
    }

    #[test]
    fn requests_on_the_pool_go_under_the_servers_path_with_its_authority_as_host() {
        let behind = upstream("https://[::1]:6443/behind/");
        assert_eq!(behind.base, "https://[::1]:6443/behind");
        assert_eq!(behind.prefix, "/behind");
        assert_eq!(behind.clients().unwrap().host, "[::1]:6443");
        let plain = upstream("https://api.example:443/");
        assert_eq!(plain.base, "https://api.example");
        assert_eq!(plain.prefix, "");
        assert_eq!(
            plain.clients().unwrap().host,
            "api.example",
            "the default port goes unsaid"
        );
    }
}
