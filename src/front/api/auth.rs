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
use crate::front::web::auth::{admit, flow_key, random_secret, CliGrant, RefreshSeed};
use crate::identity::local::{burn_verify, verify_password};
use crate::identity::oidc::{DevicePoll, OidcError};
use crate::identity::session::same_secret;
use crate::identity::{Claims, TokenError};
use crate::store::StoreError;
use crate::time::Timestamp;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// Why checked claims no longer give access.
pub enum Invalid {
    Refused(String),
    /// The store could not say: fail closed.
    Store(StoreError),
}

impl ApiState {
    /// What a signature cannot tell about a proxy token: whether its login was logged out
    /// (the token's own `jti`, and for a derived token its login's), whether its kind of
    /// login is still allowed here, and whether its user is still enabled. Fails closed.
    pub async fn still_valid(&self, claims: &Claims) -> Result<(), Invalid> {
        let store = self.broker.store();
        for jti in std::iter::once(&claims.jti).chain(&claims.parent) {
            if store.token_revoked(jti).await.map_err(Invalid::Store)? {
                return Err(Invalid::Refused(TokenError::Revoked.to_string()));
            }
        }
        if claims.idp == "local" && !self.site.local_users {
            return Err(Invalid::Refused(
                "local users are turned off here; log in through the identity provider".into(),
            ));
        }
        if claims.idp != "local" && self.idps.pick(Some(&claims.idp)).is_err() {
            return Err(Invalid::Refused(format!(
                "the identity provider {} is no longer configured here; log in again",
                claims.idp
            )));
        }
        // Every login, local or from an IdP, has a users row: disabling the user ends its
        // power at once, not when the token expires.
        if store
            .user(&claims.sub)
            .await
            .map_err(Invalid::Store)?
            .is_none_or(|u| u.disabled)
        {
            return Err(Invalid::Refused(
                "the user is disabled or no longer exists; ask an admin".into(),
            ));
        }
        Ok(())
    }
}

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
        state.still_valid(&claims).await.map_err(|e| match e {
            Invalid::Refused(why) => unauthorized(&why),
            Invalid::Store(e) => e.into(),
        })?;
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

    /// Counts a device login started from `source`; false when it is over the limit.
    pub async fn admit_device(&self, source: IpAddr) -> bool {
        self.add(format!("device:{source}"), 1).await <= self.per_source
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
    /// Whether the CLI may renew this token through `/api/v1/login/refresh`.
    refreshable: bool,
    /// The new token's id, for the proxy's own use.
    #[serde(skip)]
    jti: String,
    token: String,
    user: String,
    groups: Vec<String>,
    expires_at: Timestamp,
}

impl ApiState {
    /// Checks a local user's password (rate-limited, audited on failure) and returns who
    /// they are. The same answer for unknown, disabled and wrong password.
    pub async fn local_login(&self, user: &str, password: String, source: IpAddr) -> Result<Identity, ApiError> {
        if !self.site.local_users {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "local_users_off",
                "local users are turned off here; log in through the identity provider (`jitgate login --proxy URL`)",
            ));
        }
        // Names in the audit log and the limiter are capped and printable, so a login form can
        // make neither hold megabytes or control bytes; real user names are at most 64 characters.
        let shown: String = user
            .chars()
            .take(64)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        let plausible = shown == user;
        if !self.limiter.admit(&shown, source).await {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many failed logins; wait a few minutes and try again",
            ));
        }
        let record = if plausible {
            self.broker.store().user(user).await?
        } else {
            None
        };
        let ok = tokio::task::spawn_blocking({
            let record = record.clone();
            // An IdP user's row has no password; it gets the same work as an unknown name, so
            // timing does not tell which names belong to IdP users.
            move || match record {
                Some(r) if !r.disabled && r.source() == "local" => verify_password(&password, &r.password_hash),
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
            self.broker
                .store()
                .append_audit(vec![AuditDraft::new("login.failed", &shown, "local").details(details)])
                .await?;
            tracing::warn!(user = %shown, %source, "failed login");
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "wrong user name or password",
            ));
        };
        self.limiter.succeeded(&shown, source).await;
        self.seen(&record.name).await;
        Ok(Identity {
            user: record.name,
            groups: record.groups,
        })
    }

    /// Notes a login, where a chat account's presses depend on it (`[slack]` configured);
    /// elsewhere a login costs no write for it.
    pub async fn seen(&self, user: &str) {
        if self.chat.is_none() {
            return;
        }
        if let Err(e) = self.broker.store().record_login(user, Timestamp::now()).await {
            // Only chat decisions depend on it, and they fail closed without it.
            tracing::warn!(user, error = %e, "cannot record a login");
        }
    }

    /// Issues a proxy token for `identity` and records it as `action`; with `refresh`, keeps
    /// what renewing it at the IdP takes, for as long as the token lives.
    pub async fn issue_token(
        &self,
        identity: Identity,
        idp: &str,
        source: IpAddr,
        action: &'static str,
        refresh: Option<RefreshSeed>,
    ) -> Result<LoginResponse, ApiError> {
        let (token, claims) = self
            .tokens
            .issue(&identity, idp, Timestamp::now())
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
        let store = self.broker.store();
        let refresh = refresh.filter(|_| self.token_refresh);
        if let Some(seed) = &refresh {
            let payload = serde_json::to_string(seed).unwrap_or_default();
            store
                .put_flow(&flow_key("refresh", &claims.jti), &payload, claims.expires_at())
                .await?;
        }
        store
            .append_audit(vec![AuditDraft::new(action, &identity.user, idp).details(
                serde_json::json!({
                    "source": source.to_string(),
                    "jti": claims.jti,
                    "groups": identity.groups,
                    "expires_at": claims.expires_at(),
                }),
            )])
            .await?;
        tracing::info!(user = %identity.user, %idp, %source, %action, "token issued");
        Ok(LoginResponse {
            refreshable: refresh.is_some(),
            jti: claims.jti.clone(),
            token,
            expires_at: claims.expires_at(),
            user: identity.user,
            groups: identity.groups,
        })
    }
}

pub async fn login(
    State(state): State<Arc<ApiState>>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Json<LoginResponse>, ApiError> {
    let LoginBody { user, password } = body;
    let identity = state.local_login(&user, password, peer.ip()).await?;
    Ok(Json(
        state
            .issue_token(identity, "local", peer.ip(), "login.succeeded", None)
            .await?,
    ))
}

pub async fn logout(State(state): State<Arc<ApiState>>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let c = &caller.claims;
    let event = crate::live::login_events::logout(&c.sub, &c.jti);
    state.broker.store().revoke_token(&c.jti, c.expires_at(), event).await?;
    let cut = state
        .broker
        .live()
        .cut_login(&crate::live::token_login(&c.jti), "logged out");
    tracing::info!(user = %c.sub, connections = cut, "logged out; token revoked");
    Ok(Json(serde_json::json!({ "logged_out": true, "user": c.sub })))
}

pub async fn whoami(State(state): State<Arc<ApiState>>, caller: Caller) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "user": caller.identity.user,
        "groups": caller.identity.groups,
        "admin": state.broker.policy().is_admin(&caller.identity),
        "token_expires_at": caller.claims.expires_at(),
        "idp": caller.claims.idp,
        "issuer": caller.claims.iss,
    }))
}

/// Which ways of logging in this proxy offers, for `jitgate login` to choose from.
pub async fn providers(State(state): State<Arc<ApiState>>) -> Json<serde_json::Value> {
    let idps: Vec<_> = state
        .idps
        .all()
        .iter()
        .map(|p| serde_json::json!({ "name": p.config.name, "display_name": p.config.display_name }))
        .collect();
    Json(serde_json::json!({ "local_users": state.site.local_users, "oidc": idps }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeBody {
    code: String,
    code_verifier: String,
}

/// The end of a CLI login: the one-time code the callback handed the CLI's loopback
/// listener, proven by the PKCE verifier only that CLI holds, becomes a proxy token.
pub async fn exchange(
    State(state): State<Arc<ApiState>>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    ApiJson(body): ApiJson<ExchangeBody>,
) -> Result<Json<LoginResponse>, ApiError> {
    let refused = |why: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why);
    // Taken before the verifier is checked: a code is spent by its first use, right or wrong.
    let payload = state
        .broker
        .store()
        .take_flow(&flow_key("cli", &body.code), Timestamp::now())
        .await?
        .ok_or_else(|| refused("the login code is unknown, used or expired; run `jitgate login` again"))?;
    let grant: CliGrant = serde_json::from_str(&payload).map_err(|_| refused("the login code is corrupt"))?;
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(body.code_verifier.as_bytes()));
    if !same_secret(&challenge, &grant.challenge) {
        tracing::warn!(user = %grant.identity.user, "CLI login code presented with the wrong verifier");
        return Err(refused(
            "the code_verifier does not match this login; run `jitgate login` again",
        ));
    }
    Ok(Json(
        state
            .issue_token(grant.identity, &grant.idp, peer.ip(), "login.succeeded", grant.refresh)
            .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceStartBody {
    idp: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct DeviceFlow {
    idp: String,
    device_code: String,
}

fn oidc_error(e: OidcError) -> ApiError {
    let reason = e.to_string();
    match e {
        OidcError::UnknownProvider(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", reason),
        OidcError::Unavailable { .. } => ApiError::new(StatusCode::BAD_GATEWAY, "idp_unavailable", reason),
        OidcError::Refused(_) | OidcError::BadIdToken(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", reason)
        }
        OidcError::NotAllowed(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", reason),
    }
}

/// Starts a device login at the IdP on the CLI's behalf; the CLI gets a handle to poll
/// with, never the IdP's device code or the client secret.
pub async fn device_start(
    State(state): State<Arc<ApiState>>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    ApiJson(body): ApiJson<DeviceStartBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // Anyone may start one, and each costs a call at the IdP with the proxy's client and a
    // row in the store: counted per source like password attempts.
    if !state.limiter.admit_device(peer.ip()).await {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many device logins started from this address; wait a few minutes",
        ));
    }
    let provider = Arc::clone(state.idps.pick(body.idp.as_deref()).map_err(oidc_error)?);
    let start = provider.device_start().await.map_err(oidc_error)?;
    let handle = random_secret();
    let flow = DeviceFlow {
        idp: provider.name().to_owned(),
        device_code: start.device_code,
    };
    let expires_in = start.expires_in.min(Duration::from_secs(1800));
    state
        .broker
        .store()
        .put_flow(
            &flow_key("device", &handle),
            &serde_json::to_string(&flow).unwrap_or_default(),
            Timestamp::now().saturating_add(expires_in),
        )
        .await?;
    Ok(Json(serde_json::json!({
        "handle": handle,
        "user_code": start.user_code,
        "verification_uri": start.verification_uri,
        "verification_uri_complete": start.verification_uri_complete,
        "interval_secs": start.interval.as_secs().max(1),
        "expires_in_secs": expires_in.as_secs(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicePollBody {
    handle: String,
}

pub async fn device_poll(
    State(state): State<Arc<ApiState>>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    ApiJson(body): ApiJson<DevicePollBody>,
) -> Result<Json<LoginResponse>, ApiError> {
    let key = flow_key("device", &body.handle);
    let store = state.broker.store();
    let gone = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this device login is unknown, finished or expired; run `jitgate login --device` again",
        )
    };
    let payload = store.peek_flow(&key, Timestamp::now()).await?.ok_or_else(gone)?;
    let flow: DeviceFlow = serde_json::from_str(&payload).map_err(|_| gone())?;
    let provider = Arc::clone(state.idps.pick(Some(&flow.idp)).map_err(oidc_error)?);
    let who = match provider.device_poll(&flow.device_code).await {
        Ok(DevicePoll::Pending) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "authorization_pending",
                "the login is not finished yet",
            ))
        }
        Ok(DevicePoll::SlowDown) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "slow_down", "poll less often")),
        Ok(DevicePoll::Done(login)) => login,
        // The flow is left to expire: a parallel poll may just have finished it, and an IdP
        // that timed out once may answer the next poll.
        Err(e) => return Err(oidc_error(e)),
    };
    // Only the poll that takes the flow turns it into a token.
    store.take_flow(&key, Timestamp::now()).await?.ok_or_else(gone)?;
    let identity = admit(&state, &flow.idp, &who.who, &peer.ip().to_string()).await?;
    let refresh = who.refresh_token.map(|token| RefreshSeed {
        subject: who.who.subject.clone(),
        token,
        login_at: Timestamp::now(),
    });
    Ok(Json(
        state
            .issue_token(identity, &flow.idp, peer.ip(), "login.succeeded", refresh)
            .await?,
    ))
}

/// Renews an IdP login's token before it expires, after asking the IdP about the user
/// again: a user the IdP no longer knows is refused, changed groups take effect, and the
/// old token is revoked. Each refresh token is used once.
pub async fn refresh(
    State(state): State<Arc<ApiState>>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    caller: Caller,
) -> Result<Json<LoginResponse>, ApiError> {
    let c = &caller.claims;
    let again = |why: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("{why}; run `jitgate login` again"),
        )
    };
    if c.idp == "local" {
        return Err(again("a local user's token is not renewed"));
    }
    if !state.token_refresh {
        return Err(again("renewing tokens is turned off on this proxy"));
    }
    let store = state.broker.store();
    let key = flow_key("refresh", &c.jti);
    let payload = store.take_flow(&key, Timestamp::now()).await?.ok_or_else(|| {
        again("this login cannot be renewed (the IdP gave no refresh token, or it was renewed already)")
    })?;
    let seed: RefreshSeed = serde_json::from_str(&payload).map_err(|_| again("the renewal record is corrupt"))?;
    if seed.login_at.saturating_add(state.sessions.lifetime()) <= Timestamp::now() {
        return Err(again(
            "this login is older than [auth] session_lifetime and is not renewed any more",
        ));
    }
    let provider = Arc::clone(state.idps.pick(Some(&c.idp)).map_err(oidc_error)?);
    let login = match provider.refresh(&seed.token, &seed.subject).await {
        Ok(login) => login,
        Err(e) => {
            if matches!(e, OidcError::Unavailable { .. }) {
                // The IdP did not answer: keep the seed, so a later try can still renew.
                let _ = store.put_flow(&key, &payload, c.expires_at()).await;
            }
            let event = AuditDraft::new("login.refresh_failed", &c.sub, &c.idp)
                .reason(Some(&e.to_string()))
                .details(serde_json::json!({ "jti": c.jti, "source": peer.ip().to_string() }));
            store.append_audit(vec![event]).await?;
            tracing::warn!(user = %c.sub, idp = %c.idp, error = %e, "token renewal refused");
            return Err(oidc_error(e));
        }
    };
    let identity = admit(&state, &c.idp, &login.who, &peer.ip().to_string()).await?;
    let seed = RefreshSeed {
        subject: seed.subject,
        token: login.refresh_token.unwrap_or(seed.token),
        login_at: seed.login_at,
    };
    // The new token (with the rotated refresh token) is kept first: failing after this point
    // leaves the user with the old token until it ends, never with none.
    let renewed = state
        .issue_token(identity, &c.idp, peer.ip(), "login.refreshed", Some(seed))
        .await?;
    // The renewed token replaces this one: a copy of the old one stops working now. If this
    // fails, the CLI keeps the old token and the new one goes unused until it expires.
    // Naming the new token lets the other replicas move what the old one opened there too.
    let replaced = crate::live::login_events::token_replaced(&c.sub, &c.idp, &c.jti, &renewed.jti);
    // What the old token opened (SSH sessions) goes on under the new one: logging out
    // with the renewed token ends it.
    state.broker.live().rekey_login(
        &crate::live::token_login(&c.jti),
        &crate::live::token_login(&renewed.jti),
    );
    if let Err(e) = store.revoke_token(&c.jti, c.expires_at(), replaced).await {
        // The renewed token already carries the rotated refresh token: failing now would
        // strand the CLI on the old one. The old token then ends at its own expiry.
        tracing::error!(error = %e, user = %c.sub, jti = %c.jti, "cannot revoke a renewed token");
    }
    Ok(Json(renewed))
}
