//! The proxy's connection to one cluster's API server: its TLS trust, its own credential
//! there, and pooled clients (HTTP/2 where the API server offers it; HTTP/1.1 alone for
//! exec, attach and port-forward upgrades, which leave the pool).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderValue;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use moka::future::Cache;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::{KubeCluster, KubeCredential, KubeTls};

pub type KubeClient = Client<HttpsConnector<HttpConnector>, Body>;

const POOL_IDLE: Duration = Duration::from_secs(50);
/// A rotated service account token is picked up within this long (client-go re-reads its
/// token file every minute too).
const TOKEN_REREAD: Duration = Duration::from_secs(60);

pub struct Upstream {
    pub config: KubeCluster,
    /// The server URL without a trailing slash, to which request paths are appended.
    pub base: String,
    /// Built on first use and again after a failure: a missing CA or key file is reported
    /// on each request (and at start) instead of keeping the proxy from starting.
    clients: OnceLock<(KubeClient, KubeClient)>,
    token: Cache<(), HeaderValue>,
}

impl Upstream {
    pub fn new(config: KubeCluster) -> Upstream {
        let base = config.server.as_str().trim_end_matches('/').to_owned();
        Upstream {
            config,
            base,
            clients: OnceLock::new(),
            token: Cache::builder().max_capacity(1).time_to_live(TOKEN_REREAD).build(),
        }
    }

    /// The pooled client and the one for upgrades.
    pub fn clients(&self) -> Result<&(KubeClient, KubeClient), String> {
        if let Some(c) = self.clients.get() {
            return Ok(c);
        }
        let built = build_clients(&self.config)?;
        Ok(self.clients.get_or_init(|| built))
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
    let tls = tls_config(cluster)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cluster.connect_timeout));
    let pooled = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http.clone());
    let h1 = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let build = |connector, idle| {
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(idle)
            .build(connector)
    };
    Ok((build(pooled, 64), build(h1, 0)))
}

fn tls_config(cluster: &KubeCluster) -> Result<rustls::ClientConfig, String> {
    let name = &cluster.name;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &cluster.tls {
        KubeTls::CaFile(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("cluster {name:?}: ca_file {}: {e}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("cluster {name:?}: ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("cluster {name:?}: ca_file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "cluster {name:?}: ca_file {} holds no certificate",
                    path.display()
                ));
            }
            builder.with_root_certificates(roots)
        }
        KubeTls::InsecureSkipVerify => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification { provider })),
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

/// `insecure_skip_verify`: any certificate passes, though the handshake's signature is
/// still checked against it. For throwaway test clusters only; the proxy warns at start.
#[derive(Debug)]
struct NoVerification {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
