//! The proxy's connection to one cluster's API server: its TLS trust, its own credential
//! there, and pooled HTTP/1.1 clients (one for requests; one for exec, attach and
//! port-forward upgrades, which leave the pool).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::HeaderValue;
use moka::future::Cache;
use rustls::pki_types::CertificateDer;

use crate::config::{KubeCluster, KubeCredential, KubeTls};
use crate::front::upstream_tls::{self, AcceptOnly};

pub type KubeClient = upstream_tls::UpstreamClient;

/// A rotated service account token is picked up within this long (client-go re-reads its
/// token file every minute too).
const TOKEN_REREAD: Duration = Duration::from_secs(60);

pub struct Upstream {
    pub config: KubeCluster,
    /// The server URL without a trailing slash, to which request paths are appended.
    pub base: String,
    /// Built on first use and again after a failure: a missing CA or key file is reported
    /// on each request (and at start) instead of keeping the proxy from starting. One pair
    /// per shard, so that a request and its API server connection share a thread.
    clients: Box<[OnceLock<(KubeClient, KubeClient)>]>,
    token: Cache<(), HeaderValue>,
}

impl Upstream {
    pub fn new(config: KubeCluster) -> Upstream {
        let base = config.server.as_str().trim_end_matches('/').to_owned();
        Upstream {
            config,
            base,
            clients: (0..crate::front::shards::count()).map(|_| OnceLock::new()).collect(),
            token: Cache::builder().max_capacity(1).time_to_live(TOKEN_REREAD).build(),
        }
    }

    /// The pooled client and the one for upgrades.
    pub fn clients(&self) -> Result<&(KubeClient, KubeClient), String> {
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
        self.token
            .try_get_with((), read)
            .await
            .map(Some)
            .map_err(|e: Arc<String>| (*e).clone())
    }
}

fn build_clients(cluster: &KubeCluster) -> Result<(KubeClient, KubeClient), String> {
    // HTTP/1.1 only, a pooled connection per request in flight. Over HTTP/2 each shard
    // would carry every watch and `logs -f` of every user on one connection, and hyper
    // opens no second one when the API server's stream limit (Go's 250 by default) is
    // reached: later requests would wait behind long-lived ones (hyperium/hyper#2197).
    // It is quicker too: scripts/bench/kube added 0.3 ms at p50 this way, 0.4–0.9 ms
    // over HTTP/2.
    Ok(upstream_tls::clients(
        tls_config(cluster)?,
        cluster.connect_timeout,
        false,
        upstream_tls::Http2::Never,
    ))
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
