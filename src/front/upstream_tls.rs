//! What the apps and the Kubernetes front share on their way out: hyper clients over rustls
//! (one that pools, with HTTP/2 where offered, for apps' `https://` upstreams; one for
//! upgrades, which leave the pool), `h1pool`'s per-shard pools for HTTP/1.1 only (apps'
//! `http://` upstreams, API servers), the roots of a CA file, and a verifier for a
//! certificate named by hash or not at all.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Idle pooled connections are closed after this; servers often close at 60–75 s.
const POOL_IDLE: Duration = Duration::from_secs(50);
const POOL_MAX_IDLE_PER_HOST: usize = 64;

/// The pooled client, with HTTP/2 where the upstream offers it, and the one for upgrades.
/// `plain_http` allows `http://` targets.
pub fn clients(
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    plain_http: bool,
) -> (UpstreamClient, UpstreamClient) {
    let b = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls.clone());
    let b = if plain_http { b.https_or_http() } else { b.https_only() };
    let connector = b
        .enable_http1()
        .enable_http2()
        .wrap_connector(http_connector(connect_timeout));
    // Idle connections are kept per shard (each has its own pools): the cap is shared out.
    let idle_cap = (POOL_MAX_IDLE_PER_HOST / crate::front::shards::count()).max(8);
    let pooled = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(idle_cap)
        .build(connector);
    (pooled, upgrade_client(tls, connect_timeout, plain_http))
}

/// A client for upgrades (WebSocket, SPDY), over HTTP/1.1 and with no pool: an upgrade
/// that was refused must not leave its connection for the next one.
pub fn upgrade_client(tls: rustls::ClientConfig, connect_timeout: Duration, plain_http: bool) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(h1_connector(tls, connect_timeout, plain_http))
}

/// Pools of HTTP/1.1 connections driven by their requests' tasks, one per shard, to
/// `target` (the upstream's scheme and authority).
pub fn h1_pools(
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    plain_http: bool,
    target: &hyper::Uri,
) -> Box<[Arc<crate::front::h1pool::H1Pool>]> {
    (0..crate::front::shards::count())
        .map(|_| h1_pool(tls.clone(), connect_timeout, plain_http, target))
        .collect()
}

/// One shard's pool of HTTP/1.1 connections driven by their requests' tasks, to `target`.
pub fn h1_pool(
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    plain_http: bool,
    target: &hyper::Uri,
) -> Arc<crate::front::h1pool::H1Pool> {
    // Idle connections are kept per shard (each has its own pool): the cap is shared out.
    let idle_cap = (POOL_MAX_IDLE_PER_HOST / crate::front::shards::count()).max(8);
    Arc::new(crate::front::h1pool::H1Pool::new(
        h1_connector(tls, connect_timeout, plain_http),
        target.clone(),
        idle_cap,
    ))
}

/// Connects to an upstream for HTTP/1.1 only, over TLS or (if `plain_http`) not.
pub fn h1_connector(
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    plain_http: bool,
) -> HttpsConnector<HttpConnector> {
    let b = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let b = if plain_http { b.https_or_http() } else { b.https_only() };
    b.enable_http1().wrap_connector(http_connector(connect_timeout))
}

fn http_connector(connect_timeout: Duration) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http
}

/// A client config builder on ring with the safe protocol versions.
pub fn builder() -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, String> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
}

/// The certificates of a PEM file as trust roots; `what` names the file in errors
/// (`apps "grafana": ca_file`).
pub fn roots(path: &Path, what: &str) -> Result<rustls::RootCertStore, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{what} {}: {e}", path.display());
    let pem = std::fs::read(path).map_err(|e| fail(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.map_err(|e| fail(&e))?).map_err(|e| fail(&e))?;
    }
    if roots.is_empty() {
        return Err(fail(&"holds no certificate"));
    }
    Ok(roots)
}

/// Accepts exactly one certificate, by its SHA-256, whatever names it holds (a pin says
/// which certificate, so names and chains add nothing), or with no pin any certificate at
/// all (`insecure_skip_verify`, for throwaway test clusters only). The handshake signature
/// is still checked either way, so only the holder of the certificate's key passes.
#[derive(Debug)]
pub struct AcceptOnly {
    pub pin: Option<[u8; 32]>,
    pub provider: Arc<rustls::crypto::CryptoProvider>,
}

impl AcceptOnly {
    pub fn new(pin: Option<[u8; 32]>) -> Arc<AcceptOnly> {
        Arc::new(AcceptOnly {
            pin,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }
}

impl ServerCertVerifier for AcceptOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pin) = self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if crate::identity::session::same_secret(&hex::encode(got), &hex::encode(pin)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the upstream's certificate (SHA-256 {}) is not the pinned one",
                hex::encode(got)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
