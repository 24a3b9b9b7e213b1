//! Pooled clients to one app's upstream: HTTP/1.1 keep-alive, and HTTP/2 where an
//! `https://` upstream offers it by ALPN. A plain `http://` upstream has no HTTP/2 to
//! offer, so its requests go on `h1pool`'s connections, which cost less per request.
//! WebSocket upgrades take an HTTP/1.1-only client, since an upgraded connection leaves the
//! pool.

use crate::config::{AppConfig, UpstreamTls};
pub use crate::front::upstream_tls::UpstreamClient;
use crate::front::upstream_tls::{self, AcceptOnly};

/// The pooled client and the one for upgrades.
pub fn clients(app: &AppConfig) -> Result<(UpstreamClient, UpstreamClient), String> {
    let tls = tls_config(app)?;
    Ok(upstream_tls::clients(tls, app.connect_timeout, true))
}

/// For a plain `http://` upstream (no HTTP/2 to offer): pools driven inline, per shard.
pub fn h1_pools(app: &AppConfig) -> Result<Option<Box<[std::sync::Arc<crate::front::h1pool::H1Pool>]>>, String> {
    if app.upstream.scheme() != "http" {
        return Ok(None);
    }
    let target: hyper::Uri = app
        .upstream
        .as_str()
        .parse()
        .map_err(|e| format!("apps {:?}: upstream: {e}", app.name))?;
    Ok(Some(upstream_tls::h1_pools(
        tls_config(app)?,
        app.connect_timeout,
        true,
        &target,
    )))
}

fn tls_config(app: &AppConfig) -> Result<rustls::ClientConfig, String> {
    let builder = upstream_tls::builder()?;
    let config = match &app.tls {
        UpstreamTls::CaFile(path) => builder
            .with_root_certificates(upstream_tls::roots(path, &format!("apps {:?}: ca_file", app.name))?)
            .with_no_client_auth(),
        UpstreamTls::Pinned(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(AcceptOnly::new(Some(*pin)))
            .with_no_client_auth(),
        // Plain http: the config is never used, but the connector wants one.
        UpstreamTls::None => builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    Ok(config)
}
