//! Pooled clients to one app's upstream: HTTP/1.1 keep-alive, and HTTP/2 where an
//! `https://` upstream offers it by ALPN. WebSocket upgrades take an HTTP/1.1-only client,
//! since an upgraded connection leaves the pool.

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

use crate::config::{AppConfig, UpstreamTls};

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Idle pooled connections are closed after this; upstreams often close at 60–75 s.
const POOL_IDLE: Duration = Duration::from_secs(50);
const POOL_MAX_IDLE_PER_HOST: usize = 64;

/// The pooled client and the one for upgrades.
pub fn clients(app: &AppConfig) -> Result<(UpstreamClient, UpstreamClient), String> {
    let tls = tls_config(app)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(app.connect_timeout));
    let pooled = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http.clone());
    let h1 = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let build = |connector, idle| {
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(idle)
            .build(connector)
    };
    // An upgrade that was refused must not leave its connection for the next one.
    Ok((build(pooled, POOL_MAX_IDLE_PER_HOST), build(h1, 0)))
}

fn tls_config(app: &AppConfig) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match &app.tls {
        UpstreamTls::CaFile(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("apps {:?}: ca_file {}: {e}", app.name, path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("apps {:?}: ca_file {}: {e}", app.name, path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("apps {:?}: ca_file {}: {e}", app.name, path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "apps {:?}: ca_file {} holds no certificate",
                    app.name,
                    path.display()
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        UpstreamTls::Pinned(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { pin: *pin, provider }))
            .with_no_client_auth(),
        // Plain http: the config is never used, but the connector wants one.
        UpstreamTls::None => builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Accepts exactly one certificate, by its SHA-256, whatever names it holds: a pin says
/// which certificate, so names and chains add nothing. The handshake signature is still
/// checked, so only the holder of that certificate's key passes.
#[derive(Debug)]
struct Pinned {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if crate::identity::session::same_secret(&hex::encode(got), &hex::encode(self.pin)) {
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
