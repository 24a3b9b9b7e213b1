//! Who is calling: bearer-token verification for every API call, and local password login.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::{Extension, Json};
use moka::future::Cache;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiState};
use crate::access::Identity;
use crate::audit::AuditDraft;
use crate::front::tls::PeerAddr;
use crate::identity::local::{burn_verify, verify_password};
use crate::identity::{Claims, TokenError};
use crate::time::Timestamp;

/// The verified caller of an API request.
pub struct Caller {
    pub identity: Identity,
    pub claims: Claims,
}

impl FromRequestParts<Arc<ApiState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, ApiError> {
        let unauthorized = |reason: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", reason);
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("no bearer token; run `jitgate login` first"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer TOKEN`"))?;
        let claims = state
            .tokens
            .verify(token.trim())
            .map_err(|e| unauthorized(&e.to_string()))?;
        // Fail closed: if the deny-list cannot be read, the token is not accepted.
        let store = state.broker.store();
        if store.token_revoked(&claims.jti).await? {
            return Err(unauthorized(&TokenError::Revoked.to_string()));
        }
        // Every token so far comes from a local login: disabling the user ends its power at
        // once, not when the token expires.
        if store.user(&claims.sub).await?.is_none_or(|u| u.disabled) {
            return Err(unauthorized("the user is disabled or no longer exists; ask an admin"));
        }
        Ok(Caller {
            identity: claims.identity(),
            claims,
        })
    }
}

/// Counts login attempts per user name and per source address over a sliding window. An
/// attempt is counted before its password is checked, so a burst of concurrent guesses
/// cannot all slip in under the limit; a successful login gives its count back.
#[derive(Clone)]
pub struct LoginLimiter {
    attempts: Cache<String, u32>,
    per_user: u32,
    per_source: u32,
}

impl LoginLimiter {
    pub fn new(per_user: u32, per_source: u32, window: Duration) -> Self {
        LoginLimiter {
            attempts: Cache::builder().max_capacity(100_000).time_to_live(window).build(),
            per_user,
            per_source,
        }
    }

    /// Counts an attempt; false when the user or the source is over its limit.
    async fn admit(&self, user: &str, source: IpAddr) -> bool {
        let by_user = self.add(format!("user:{user}"), 1).await;
        let by_source = self.add(format!("source:{source}"), 1).await;
        by_user <= self.per_user && by_source <= self.per_source
    }

    async fn succeeded(&self, user: &str, source: IpAddr) {
        self.attempts.invalidate(&format!("user:{user}")).await;
        self.add(format!("source:{source}"), -1).await;
    }

    async fn add(&self, key: String, delta: i64) -> u32 {
        let entry = self
            .attempts
            .entry(key)
            .and_upsert_with(|old| async move {
                let n = i64::from(old.map_or(0, |e| e.into_value())) + delta;
                u32::try_from(n.max(0)).unwrap_or(u32::MAX)
            })
            .await;
        entry.into_value()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    user: String,
    password: String,
}

#[derive(Serialize)]
pub struct LoginResponse {
    token: String,
    user: String,
    groups: Vec<String>,
    expires_at: Timestamp,
}

pub async fn login(
    State(state): State<Arc<ApiState>>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Json<LoginResponse>, ApiError> {
    let LoginBody { user, password } = body;
    let source = peer.ip();
    // Names in the audit log and the limiter are capped and printable, so a login form can
    // make neither hold megabytes or control bytes; real user names are at most 64 characters.
    let shown: String = user
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    let plausible = shown == user;
    if !state.limiter.admit(&shown, source).await {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed logins; wait a few minutes and try again",
        ));
    }
    let record = if plausible {
        state.broker.store().user(&user).await?
    } else {
        None
    };
    let ok = tokio::task::spawn_blocking({
        let record = record.clone();
        move || match record {
            Some(r) if !r.disabled => verify_password(&password, &r.password_hash),
            _ => {
                burn_verify(&password);
                false
            }
        }
    })
    .await
    .unwrap_or(false);
    let details = serde_json::json!({ "source": source.to_string() });
    let Some(record) = record.filter(|_| ok) else {
        state
            .broker
            .store()
            .append_audit(vec![AuditDraft::new("login.failed", &shown, "local").details(details)])
            .await?;
        tracing::warn!(user = %shown, %source, "failed login");
        // Same answer for unknown, disabled and wrong password: it must not tell which.
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong user name or password",
        ));
    };
    state.limiter.succeeded(&shown, source).await;
    let identity = Identity {
        user: record.name,
        groups: record.groups,
    };
    let (token, claims) = state
        .tokens
        .issue(&identity, Timestamp::now())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
    state
        .broker
        .store()
        .append_audit(vec![AuditDraft::new("login.succeeded", &identity.user, "local")
            .details(serde_json::json!({
                "source": source.to_string(),
                "jti": claims.jti,
                "expires_at": claims.expires_at(),
            }))])
        .await?;
    tracing::info!(user = %identity.user, %source, "logged in");
    Ok(Json(LoginResponse {
        token,
        expires_at: claims.expires_at(),
        user: identity.user,
        groups: identity.groups,
    }))
}

pub async fn logout(State(state): State<Arc<ApiState>>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let c = &caller.claims;
    let event = AuditDraft::new("logout", &c.sub, "local").details(serde_json::json!({ "jti": c.jti }));
    state.broker.store().revoke_token(&c.jti, c.expires_at(), event).await?;
    tracing::info!(user = %c.sub, "logged out; token revoked");
    Ok(Json(serde_json::json!({ "logged_out": true, "user": c.sub })))
}

pub async fn whoami(State(state): State<Arc<ApiState>>, caller: Caller) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "user": caller.identity.user,
        "groups": caller.identity.groups,
        "admin": state.broker.policy().is_admin(&caller.identity),
        "token_expires_at": caller.claims.expires_at(),
        "issuer": caller.claims.iss,
    }))
}
