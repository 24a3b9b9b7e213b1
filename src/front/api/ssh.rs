//! What SSH clients need from the proxy before they connect: a short-lived certificate that
//! says who they are, and the lines for their `~/.ssh/config` and known_hosts.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Json;
use hyper_util::rt::TokioIo;
use russh::keys::ssh_key::PublicKey;
use serde::Deserialize;

use super::auth::Caller;
use super::{ApiError, ApiJson, ApiState};
use crate::ca::ssh::{client_cert, SshCas};
use crate::front::ssh::{serve_session, JumpAddress, SshFront};
use crate::time::Timestamp;

/// The SSH side of the proxy as the API describes it.
pub struct SshState {
    pub cas: Arc<SshCas>,
    /// Inventory names, for the `Host` line of the client config.
    pub hosts: Vec<String>,
    pub front: Arc<SshFront>,
    pub jump: JumpAddress,
}

/// The `Upgrade` protocol name `jitgate ssh-proxy` asks for.
pub const UPGRADE_PROTOCOL: &str = "jitgate-ssh";

#[derive(Deserialize)]
pub struct ConnectQuery {
    // Optional so that its absence gets the API's one-line JSON error, not axum's text.
    host: Option<String>,
}

/// `GET /ssh/connect?host=NAME` with `Upgrade: jitgate-ssh`: after `101 Switching
/// Protocols` the connection carries one SSH session for that host, terminated here. The
/// bearer token says who may speak on it; the SSH certificate inside must name the same
/// user.
pub async fn connect(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Query(q): Query<ConnectQuery>,
    mut req: Request,
) -> Result<Response, ApiError> {
    let wants = |name: header::HeaderName, value: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(value)))
        })
    };
    if !wants(header::CONNECTION, "upgrade") || !wants(header::UPGRADE, UPGRADE_PROTOCOL) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("/ssh/connect carries SSH for `jitgate ssh-proxy`: it needs `Connection: Upgrade` and `Upgrade: {UPGRADE_PROTOCOL}` over HTTP/1.1"),
        ));
    }
    let name = q.host.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "/ssh/connect needs ?host=NAME, an inventory name",
        )
    })?;
    let host = state.ssh.front.host(&name).cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no host {name:?} in the proxy's SSH inventory"),
        )
    })?;
    let upgrade = hyper::upgrade::on(&mut req);
    let front = Arc::clone(&state.ssh.front);
    let user = caller.identity.user;
    crate::front::shards::spawn_main(async move {
        match upgrade.await {
            Ok(io) => match crate::front::tls::upgraded_here(io) {
                Ok(io) => serve_session(front, host, io, Some(user)).await,
                Err(io) => {
                    // Every upgrade on the TLS listener takes the branch above; here the
                    // session works, but each read wakes it through another thread.
                    tracing::warn!(
                        "an SSH upgrade did not come from the TLS listener's HTTP/1.1; serving it through hyper"
                    );
                    serve_session(front, host, TokioIo::new(io), Some(user)).await
                }
            },
            Err(e) => tracing::debug!(error = %e, "SSH upgrade failed"),
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, UPGRADE_PROTOCOL)
        .body(Body::empty())
        .expect("a fixed response is valid"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertBody {
    public_key: String,
}

/// Signs the caller's public key as an identity certificate: principal = the caller,
/// valid no longer than the token that asked.
pub async fn cert(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    ApiJson(body): ApiJson<CertBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let bad = |why: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", why);
    if body.public_key.len() > 16 * 1024 {
        return Err(bad("public_key is too long".into()));
    }
    let key = PublicKey::from_openssh(body.public_key.trim())
        .map_err(|e| bad(format!("public_key is not an OpenSSH public key line: {e}")))?;
    let valid_before = caller.claims.expires_at();
    let cert = client_cert(
        &state.ssh.cas.client,
        &key,
        &caller.identity.user,
        &caller.claims.jti,
        valid_before,
        Timestamp::now(),
    )
    .and_then(|c| c.to_openssh())
    .map_err(|e| bad(format!("cannot certify that key: {e}")))?;
    Ok(Json(
        serde_json::json!({ "certificate": cert, "valid_before": valid_before }),
    ))
}

/// The public halves a client trusts: the host CA (known_hosts), and for operators the
/// target CA (a target's `TrustedUserCAKeys`), with the inventory's names.
pub async fn config(State(state): State<Arc<ApiState>>, _caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let public = |k: &russh::keys::ssh_key::PrivateKey| {
        k.public_key()
            .to_openssh()
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
    };
    Ok(Json(serde_json::json!({
        "host_ca": public(&state.ssh.cas.host)?,
        "target_ca": public(&state.ssh.cas.target)?,
        "hosts": state.ssh.hosts,
        "jump": {
            "address": state.ssh.jump.address,
            "names": state.ssh.jump.names,
            "known_hosts": state.ssh.jump.known_hosts,
        },
    })))
}
