//! `/auth/login`, `/auth/callback`, `/auth/logout` and the browser's local-user login.
//!
//! A login carries its state, nonce and PKCE verifier in a short-lived pre-login cookie
//! signed by the proxy (`__Host-jitgate-login`): the callback accepts a `state` only from
//! the browser that started that login, and only once (the state is spent in the store,
//! so a replayed callback fails on every replica). A CLI login runs the same flow and ends
//! by handing the CLI's loopback listener a one-time code instead of a session cookie.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use maud::html;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::redirect::safe_redirect;
use super::{check_csrf, check_origin, error_page, page, MaybeSession, Site, WebSession};
use crate::access::Identity;
use crate::audit::AuditDraft;
use crate::front::api::{ApiError, ApiState};
use crate::front::tls::PeerAddr;
use crate::identity::oidc::{IdpIdentity, OidcError};
use crate::identity::session::{clear_cookie, same_secret};
use crate::store::StoreError;
use crate::time::Timestamp;

pub const PRELOGIN_COOKIE: &str = "__Host-jitgate-login";
const PRELOGIN_AUDIENCE: &str = "jitgate-prelogin";
/// How long a user may spend at the IdP's login page.
const PRELOGIN_TTL: Duration = Duration::from_secs(600);
/// How long the CLI has to exchange its one-time code.
pub const CLI_CODE_TTL: Duration = Duration::from_secs(120);

/// What the callback needs from the start of a login, signed into the pre-login cookie.
/// It is signed, not encrypted: the cookie is host-only, HttpOnly and Secure, and lives ten
/// minutes, so whoever can read it controls the browser already; the PKCE verifier in it
/// guards the code against other apps on the way back, not against the browser itself.
#[derive(Serialize, Deserialize)]
struct PreLogin {
    idp: String,
    state: String,
    nonce: String,
    pkce: String,
    rd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cli: Option<CliLogin>,
}

/// A CLI waiting on a loopback port for the end of its login.
#[derive(Serialize, Deserialize)]
struct CliLogin {
    redirect: String,
    challenge: String,
    state: String,
}

/// What a CLI code stands for until the CLI exchanges it for a token.
#[derive(Serialize, Deserialize)]
pub struct CliGrant {
    pub identity: Identity,
    pub idp: String,
    pub challenge: String,
    #[serde(default)]
    pub refresh: Option<RefreshSeed>,
}

/// What the proxy keeps, server side, to re-check a CLI login at its IdP later. The IdP's
/// refresh token never leaves the proxy, and is useless without the client secret.
#[derive(Serialize, Deserialize)]
pub struct RefreshSeed {
    pub subject: String,
    pub token: String,
    /// When the user last logged in at the IdP: renewals stop `[auth] session_lifetime`
    /// after it, so a stolen token cannot be renewed for ever.
    pub login_at: Timestamp,
}

/// The store key a one-time secret is kept under: its hash, never the secret.
pub fn flow_key(kind: &str, secret: &str) -> String {
    format!("{kind}:{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

pub fn random_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The marker stored in place of a password hash for users of an identity provider: it
/// binds the user name to one subject at one provider, so nobody else that provider (or
/// another one) calls by the same name becomes this user.
pub fn idp_marker(idp: &str, subject: &str) -> String {
    format!("!idp:{idp}:{subject}")
}

#[derive(Deserialize)]
pub struct LoginQuery {
    idp: Option<String>,
    rd: Option<String>,
    cli_redirect: Option<String>,
    cli_challenge: Option<String>,
    cli_state: Option<String>,
}

pub async fn login(State(state): State<Arc<ApiState>>, Query(q): Query<LoginQuery>) -> Response {
    let site = &state.site;
    let rd = safe_redirect(site, q.rd.as_deref());
    let cli = match (q.cli_redirect, q.cli_challenge, q.cli_state) {
        (None, None, None) => None,
        (Some(redirect), Some(challenge), Some(cli_state)) => {
            if let Err(why) = check_cli(&redirect, &challenge, &cli_state) {
                return error_page(site, StatusCode::BAD_REQUEST, "Bad CLI login", &why);
            }
            Some(CliLogin {
                redirect,
                challenge,
                state: cli_state,
            })
        }
        _ => {
            return error_page(
                site,
                StatusCode::BAD_REQUEST,
                "Bad CLI login",
                "cli_redirect, cli_challenge and cli_state come together; start again with `jitgate login`.",
            )
        }
    };
    let provider = match state.idps.pick(q.idp.as_deref()) {
        Ok(p) => Arc::clone(p),
        Err(e) => return error_page(site, StatusCode::NOT_FOUND, "Unknown identity provider", &e.to_string()),
    };
    let start = match provider.begin().await {
        Ok(s) => s,
        Err(e) => return idp_error_page(site, &e),
    };
    let pre = PreLogin {
        idp: provider.name().to_owned(),
        state: start.state,
        nonce: start.nonce,
        pkce: start.pkce_verifier,
        rd,
        cli,
    };
    let sealed = match state.tokens.seal(PRELOGIN_AUDIENCE, PRELOGIN_TTL, &pre) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot seal a pre-login cookie");
            return error_page(
                site,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Login failed",
                "Internal error; see the proxy's log.",
            );
        }
    };
    let cookie = format!(
        "{PRELOGIN_COOKIE}={sealed}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
        PRELOGIN_TTL.as_secs()
    );
    tracing::info!(idp = %pre.idp, cli = pre.cli.is_some(), "login started");
    let mut response = Redirect::to(&start.url).into_response();
    set_cookie(&mut response, &cookie);
    response
}

/// A CLI's loopback redirect must be plain http on a loopback address with a port
/// (RFC 8252 §7.3); anything else could carry the code off the machine.
fn check_cli(redirect: &str, challenge: &str, cli_state: &str) -> Result<(), String> {
    let url = url::Url::parse(redirect).map_err(|_| format!("cli_redirect {redirect:?} is not a URL"))?;
    let loopback = matches!(url.host(), Some(url::Host::Ipv4(a)) if a.is_loopback())
        || matches!(url.host(), Some(url::Host::Ipv6(a)) if a.is_loopback());
    if url.scheme() != "http" || !loopback || url.port().is_none() || url.query().is_some() || url.fragment().is_some()
    {
        return Err("cli_redirect must be http://127.0.0.1:PORT/PATH (a loopback address with a port)".into());
    }
    if challenge.len() != 43
        || !challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("cli_challenge must be an S256 PKCE challenge (43 base64url characters)".into());
    }
    if cli_state.is_empty() || cli_state.len() > 128 || !cli_state.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("cli_state must be 1 to 128 printable characters".into());
    }
    Ok(())
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    /// RFC 9207: the IdP names itself in its answer, against mix-up attacks.
    iss: Option<String>,
}

pub async fn callback(
    State(state): State<Arc<ApiState>>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let site = &state.site;
    let restart = |why: &str| {
        let mut r = error_page(
            site,
            StatusCode::BAD_REQUEST,
            "Login failed",
            &format!("{why} Start the login again."),
        );
        set_cookie(&mut r, &clear_cookie(PRELOGIN_COOKIE));
        r
    };
    // As with the session cookie, two of them (one planted) make it unclear whose login this
    // is: refused.
    let sealed = match super::cookie_values(&headers, PRELOGIN_COOKIE).as_slice() {
        [one] => *one,
        [] => return restart("This browser did not start a login here, or it took longer than 10 minutes."),
        _ => return restart("This browser sent several login cookies."),
    };
    let pre: PreLogin = match state.tokens.open(PRELOGIN_AUDIENCE, sealed) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "refused a pre-login cookie");
            return restart("The login cookie is invalid or expired.");
        }
    };
    let Some(got_state) = q.state.as_deref() else {
        return restart("The identity provider's answer has no state.");
    };
    if !same_secret(got_state, &pre.state) {
        tracing::warn!(idp = %pre.idp, "callback state does not match this browser's login");
        return restart("The answer belongs to another login (its state does not match this browser's).");
    }
    // A state is spent with the session (or the CLI code) it yields, in one transaction, so
    // a second callback with it is refused on every replica.
    let now = Timestamp::now();
    let state_key = flow_key("state", &pre.state);
    let spent_until = now.saturating_add(PRELOGIN_TTL);
    if let Some(err) = q.error {
        let detail = q.error_description.unwrap_or_default();
        tracing::warn!(idp = %pre.idp, %err, %detail, "the IdP returned an error to the callback");
        return restart(&format!("The identity provider answered: {err} {detail}"));
    }
    let Some(code) = q.code else {
        return restart("The identity provider's answer has no code.");
    };
    let provider = match state.idps.pick(Some(&pre.idp)) {
        Ok(p) => Arc::clone(p),
        Err(e) => return restart(&e.to_string()),
    };
    match &q.iss {
        Some(iss) if iss.trim_end_matches('/') != provider.config.issuer.trim_end_matches('/') => {
            return restart("The answer names another identity provider as its issuer.");
        }
        None if provider.sends_iss().await => {
            return restart("The answer does not name its identity provider, which this one always does.");
        }
        _ => {}
    }
    let source = peer.ip().to_string();
    // Whether the state was spent already is looked up while the code is redeemed: a replay
    // gets a clear answer, and redeeming its code twice makes a careful IdP revoke what it
    // issued for it.
    let store = state.broker.store();
    let (spent, finished) = tokio::join!(
        store.peek_flow(&state_key, now),
        provider.finish(&code, &pre.pkce, &pre.nonce)
    );
    match spent {
        Ok(None) => {}
        Ok(Some(_)) => return restart("This login was already completed once."),
        Err(e) => return store_error_page(site, &e),
    }
    let (who, refresh_token) = match finished {
        Ok(login) => (login.who, login.refresh_token),
        Err(e) => {
            audit_failure(&state, &pre.idp, "?", &source, &e.to_string()).await;
            tracing::warn!(idp = %pre.idp, error = %e, "login refused");
            let mut r = idp_error_page(site, &e);
            set_cookie(&mut r, &clear_cookie(PRELOGIN_COOKIE));
            return r;
        }
    };
    let identity = match admit(&state, &pre.idp, &who, &source).await {
        Ok(identity) => identity,
        Err(e) => {
            let mut r = error_page(site, e.status(), "Login refused", e.reason());
            set_cookie(&mut r, &clear_cookie(PRELOGIN_COOKIE));
            return r;
        }
    };
    if let Some(cli) = pre.cli {
        let code = random_secret();
        let grant = CliGrant {
            identity,
            idp: pre.idp.clone(),
            challenge: cli.challenge,
            refresh: refresh_token.map(|token| RefreshSeed {
                subject: who.subject.clone(),
                token,
                login_at: now,
            }),
        };
        let payload = serde_json::to_string(&grant).unwrap_or_default();
        let cli_key = flow_key("cli", &code);
        let flows = [
            (state_key.as_str(), "used", spent_until),
            (cli_key.as_str(), payload.as_str(), now.saturating_add(CLI_CODE_TTL)),
        ];
        match state.broker.store().put_flows(&flows).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists(_)) => return restart("This login was already completed once."),
            Err(e) => return store_error_page(site, &e),
        }
        let mut to = url::Url::parse(&cli.redirect).expect("checked at login start");
        to.query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", &cli.state);
        tracing::info!(user = %grant.identity.user, idp = %pre.idp, "IdP login done; asking before handing the CLI its code");
        // Not a silent redirect: anyone can send a link that starts a CLI login for a port
        // they listen on, and with single sign-on at the IdP it would complete unseen. The
        // person at the browser says whether this terminal login is theirs.
        let listener = format!(
            "{}:{}",
            to.host_str().unwrap_or("?"),
            to.port_or_known_default().unwrap_or_default()
        );
        let mut r = page(
            site,
            StatusCode::OK,
            "Log in the CLI",
            None,
            html! {
                h1 { "Log in the jitgate CLI?" }
                p {
                    "A terminal on this computer (listening on " (listener) ") asks to log in as "
                    strong { (grant.identity.user) } "."
                }
                p { "Continue only if you just ran " code { "jitgate login" } " yourself." }
                p.actions {
                    a.button #continue href=(to.as_str()) { "Continue" }
                    " "
                    a #cancel href="/" { "Cancel" }
                }
            },
        );
        set_cookie(&mut r, &clear_cookie(PRELOGIN_COOKIE));
        return r;
    }
    let details = serde_json::json!({
        "source": source,
        "subject": who.subject,
        "email": who.email,
        "groups": who.groups,
    });
    match state
        .sessions
        .start(
            &identity,
            who.email.as_deref(),
            &pre.idp,
            now,
            details,
            Some((&state_key, spent_until)),
        )
        .await
    {
        Ok((secret, session)) => {
            tracing::info!(user = %identity.user, idp = %pre.idp, "browser session started");
            end_previous(&state, &headers).await;
            let mut r = Redirect::to(&pre.rd).into_response();
            set_cookie(&mut r, &state.sessions.cookie(&secret, &session));
            set_cookie(&mut r, &clear_cookie(PRELOGIN_COOKIE));
            r
        }
        Err(StoreError::AlreadyExists(_)) => restart("This login was already completed once."),
        Err(e) => store_error_page(site, &e),
    }
}

/// The last checks on an IdP identity before it may act: its name is not a local user's
/// or another provider's, and it has not been disabled. Records the login.
pub async fn admit(state: &ApiState, idp: &str, who: &IdpIdentity, source: &str) -> Result<Identity, ApiError> {
    let store = state.broker.store();
    let marker = idp_marker(idp, &who.subject);
    let record = store
        .upsert_idp_user(&who.user, &who.groups, &marker, Timestamp::now())
        .await?;
    if record.password_hash != marker {
        audit_failure(state, idp, &who.user, source, "the name belongs to another account").await;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the name {:?} belongs to another account on this proxy (a local user, or another subject at an identity provider); ask an admin",
                who.user
            ),
        ));
    }
    if record.disabled {
        audit_failure(state, idp, &who.user, source, "user disabled").await;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "your account is disabled on this proxy; ask an admin",
        ));
    }
    state.seen(&who.user).await;
    Ok(Identity {
        user: who.user.clone(),
        groups: who.groups.clone(),
    })
}

async fn audit_failure(state: &ApiState, idp: &str, user: &str, source: &str, why: &str) {
    let event = AuditDraft::new("login.failed", user, idp)
        .reason(Some(why))
        .details(serde_json::json!({ "source": source }));
    if let Err(e) = state.broker.store().append_audit(vec![event]).await {
        tracing::error!(error = %e, "cannot record a failed login");
    }
}

fn idp_error_page(site: &Site, e: &OidcError) -> Response {
    let (status, title) = match e {
        OidcError::Unavailable { .. } => (StatusCode::BAD_GATEWAY, "Identity provider unavailable"),
        OidcError::UnknownProvider(_) => (StatusCode::NOT_FOUND, "Unknown identity provider"),
        OidcError::Refused(_) | OidcError::BadIdToken(_) => (StatusCode::UNAUTHORIZED, "Login failed"),
        OidcError::NotAllowed(_) => (StatusCode::FORBIDDEN, "Login refused"),
    };
    // What went wrong inside (the IdP's internal URLs, its errors) is for the log, not for
    // whoever opened the page.
    let text = match e {
        OidcError::Unavailable { idp, .. } => {
            tracing::warn!(error = %e, "identity provider unavailable");
            format!("The identity provider {idp} did not answer properly; try again later (the proxy's log has the details)")
        }
        other => other.to_string(),
    };
    error_page(site, status, title, &format!("{text}. No session was started."))
}

/// A new login in a browser ends the session it had, so a shared browser holds one at most.
async fn end_previous(state: &ApiState, headers: &HeaderMap) {
    let Some(secret) = super::session_cookie(headers) else {
        return;
    };
    if let Ok(Some(old)) = state.sessions.check(secret, Timestamp::now()).await {
        match state.sessions.end(&old, Timestamp::now()).await {
            Ok(_) => {
                let login = crate::live::session_login(&old.id_hash);
                state.broker.live().cut_login(&login, "logged out");
            }
            Err(e) => tracing::warn!(error = %e, "cannot end the session a new login replaces"),
        }
    }
}

pub fn store_error_page(site: &Site, e: &StoreError) -> Response {
    tracing::error!(error = %e, "store error during login");
    error_page(
        site,
        StatusCode::SERVICE_UNAVAILABLE,
        "Store unavailable",
        "The proxy cannot reach its store; no session was started. Try again shortly.",
    )
}

fn set_cookie(r: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

pub async fn logout_page(State(state): State<Arc<ApiState>>, MaybeSession(session): MaybeSession) -> Response {
    let Some(s) = session else {
        return Redirect::to("/").into_response();
    };
    page(
        &state.site,
        StatusCode::OK,
        "Log out",
        Some(&s),
        html! {
            h1 { "Log out" }
            p { "End your session as " (s.identity.user) "?" }
            form method="post" action="/auth/logout" {
                input type="hidden" name="csrf" value=(s.csrf);
                button type="submit" { "Log out" }
            }
        },
    )
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn logout(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    WebSession(s): WebSession,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(r) = check_csrf(&state.site, &headers, &s, &form.csrf) {
        return r;
    }
    if let Err(e) = state.sessions.end(&s, Timestamp::now()).await {
        return store_error_page(&state.site, &e);
    }
    // Its app streams and WebSockets end with it, not only the requests that follow.
    let cut = state
        .broker
        .live()
        .cut_login(&crate::live::session_login(&s.id_hash), "logged out");
    tracing::info!(user = %s.identity.user, connections = cut, "browser session ended");
    let back = format!("{}/", state.site.origin);
    let to = match state.idps.pick(Some(&s.idp)) {
        Ok(p) => p.end_session_url(&back).await.unwrap_or_else(|| "/".into()),
        Err(_) => "/".into(),
    };
    let mut r = Redirect::to(&to).into_response();
    set_cookie(&mut r, &clear_cookie(crate::identity::session::SESSION_COOKIE));
    r
}

#[derive(Deserialize)]
pub struct LocalLoginForm {
    user: String,
    password: String,
    rd: Option<String>,
}

/// The console's password form for local users. Login CSRF is stopped by the Origin check
/// and SameSite cookies; attempts count against the same limiter as the API's.
pub async fn local_login(
    State(state): State<Arc<ApiState>>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    headers: HeaderMap,
    Form(form): Form<LocalLoginForm>,
) -> Response {
    let site = &state.site;
    if let Err(r) = check_origin(site, &headers) {
        return r;
    }
    // Browsers send Origin (or at least Sec-Fetch-Site) on every form post; a post with
    // neither is not from this site's login page.
    let same_site = headers.get("sec-fetch-site").map(|v| v == "same-origin");
    if headers.get(header::ORIGIN).is_none() && same_site != Some(true) {
        return error_page(
            site,
            StatusCode::FORBIDDEN,
            "Cross-site request refused",
            "Log in from this site's own page.",
        );
    }
    if !site.local_users {
        return error_page(
            site,
            StatusCode::FORBIDDEN,
            "Local users are off",
            "Log in through your identity provider.",
        );
    }
    let rd = safe_redirect(site, form.rd.as_deref());
    match state.local_login(&form.user, form.password, peer.ip()).await {
        Ok(identity) => {
            let details = serde_json::json!({ "source": peer.ip().to_string() });
            match state
                .sessions
                .start(&identity, None, "local", Timestamp::now(), details, None)
                .await
            {
                Ok((secret, session)) => {
                    end_previous(&state, &headers).await;
                    let mut r = Redirect::to(&rd).into_response();
                    set_cookie(&mut r, &state.sessions.cookie(&secret, &session));
                    r
                }
                Err(e) => store_error_page(site, &e),
            }
        }
        Err(e) => error_page(site, e.status(), "Login failed", e.reason()),
    }
}
