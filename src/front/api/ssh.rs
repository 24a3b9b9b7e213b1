//! What SSH clients need from the proxy before they connect: a short-lived certificate that
//! says who they are, and the lines for their `~/.ssh/config` and known_hosts.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use ssh_key::PublicKey;

use super::auth::Caller;
use super::{ApiError, ApiJson, ApiState};
use crate::ca::ssh::{client_cert, SshCas};
use crate::time::Timestamp;

/// The SSH side of the proxy as the API describes it.
pub struct SshState {
    pub cas: SshCas,
    /// Inventory names, for the `Host` line of the client config.
    pub hosts: Vec<String>,
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
    let public = |k: &ssh_key::PrivateKey| {
        k.public_key()
            .to_openssh()
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
    };
    Ok(Json(serde_json::json!({
        "host_ca": public(&state.ssh.cas.host)?,
        "target_ca": public(&state.ssh.cas.target)?,
        "hosts": state.ssh.hosts,
    })))
}
