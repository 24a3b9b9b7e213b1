//! Signing in on an app's host: the app cookie, the trip through the proxy's login, and
//! the one-time code that comes back from it, bound to the browser that started the trip.

use std::sync::Arc;

use axum::body::Body;
use axum::http::header::{self, HeaderValue};
use axum::http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::{headers, redirect, text, App, AppSite, AppsFront, APP_COOKIE, CALLBACK_PATH, HANDOFF_TTL, STATE_COOKIE};
use crate::front::api::ApiState;
use crate::front::web;
use crate::identity::session::Session;
use crate::time::Timestamp;

/// What an app's cookie holds: which proxy session it belongs to.
#[derive(Serialize, Deserialize)]
struct AppCookie {
    sid: String,
}

/// What the proxy's login hands to an app's host, once, through the store.
#[derive(Serialize, Deserialize)]
struct Handoff {
    sid: String,
    app: String,
    /// The state the app's host gave the browser when it sent it to log in: the callback
    /// takes the code only from that browser, so nobody can sign another in as themselves.
    state: String,
    /// Path and query on the app's host to land on.
    to: String,
}

impl AppsFront {
    /// The live proxy session an app cookie names, if any. Cookies for another app, forged,
    /// expired, or of an ended session name none.
    pub(super) async fn session(
        &self,
        app: &App,
        cookie: Option<&str>,
        now: Timestamp,
    ) -> Result<Option<(Arc<str>, Arc<Session>)>, Response<Body>> {
        let Some(cookie) = cookie else {
            return Ok(None);
        };
        // A signature check costs more than the rest of a request: a cookie seen valid for
        // this app is trusted again for a while, by its exact bytes. The session behind it
        // is still looked up on every request, so logout ends it as before.
        let sid = match self.cookies.get(cookie).await {
            Some((for_app, sid)) if for_app == app.name => sid,
            Some(_) => return Ok(None),
            None => {
                let Ok(opened) = self.state.tokens.open::<AppCookie>(&audience(&app.name), cookie) else {
                    return Ok(None);
                };
                let sid: Arc<str> = opened.sid.into();
                // Boxed: a cold path, which would make every request's future larger.
                Box::pin(
                    self.cookies
                        .insert(cookie.to_owned(), (Arc::clone(&app.name), Arc::clone(&sid))),
                )
                .await;
                sid
            }
        };
        match self.state.sessions.check_hash(&sid, now).await {
            Ok(s) => Ok(s.map(|s| (sid, s))),
            Err(e) => {
                tracing::error!(error = %e, "cannot check an app session; refusing");
                Err(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "jitgate: the proxy cannot reach its store; try again shortly",
                ))
            }
        }
    }

    /// Sends a browser through the proxy's login and back; anything else is told to.
    pub(super) fn to_login(&self, app: &App, req: &Request<Incoming>) -> Response<Body> {
        if !matches!(*req.method(), Method::GET | Method::HEAD) || headers::wants_websocket(req.headers()) {
            return text(
                StatusCode::UNAUTHORIZED,
                &format!("jitgate: log in first: open {} in a browser", app.origin),
            );
        }
        let here = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let state = secret();
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("app", &app.name)
            .append_pair("rd", &format!("{}{here}", app.origin))
            .append_pair("state", &state)
            .finish();
        let mut resp = redirect(&format!("{}/auth/app?{query}", self.state.site.origin));
        let cookie = format!("{STATE_COOKIE}={state}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=600");
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        resp
    }

    /// `/.jitgate/callback?code=…`: installs the app cookie the proxy's login sent here,
    /// for the browser that was sent to log in from here.
    pub(super) async fn callback(
        &self,
        app: &App,
        query: Option<&str>,
        headers: &axum::http::HeaderMap,
    ) -> Response<Body> {
        let code = query
            .into_iter()
            .flat_map(|q| url::form_urlencoded::parse(q.as_bytes()))
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let now = Timestamp::now();
        let expired = || {
            text(
                StatusCode::BAD_REQUEST,
                &format!(
                    "jitgate: this sign-in link was used already or has expired; open {} again",
                    app.origin
                ),
            )
        };
        // Checked before the store is touched: only a browser that this host sent to log in
        // (it holds the state cookie) with a code of the right shape costs a read.
        if !plausible_state(&code) || web::cookie_values(headers, STATE_COOKIE).len() != 1 {
            return expired();
        }
        let unavailable = |e: crate::store::StoreError| {
            tracing::error!(error = %e, "cannot read an app sign-in; refusing");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "jitgate: the proxy cannot reach its store; try again shortly",
            )
        };
        let store = self.state.broker.store();
        let key = handoff_key(&code);
        // Read first and take only a code that belongs here: guesses cost no write (which
        // would hold the store's one writer), and a code that leaked to another browser is
        // refused there without being used up for the browser it was made for.
        let peeked = match store.peek_flow(&key, now).await {
            Ok(p) => p,
            Err(e) => return unavailable(e),
        };
        let Some(handoff) = peeked.and_then(|t| serde_json::from_str::<Handoff>(&t).ok()) else {
            return expired();
        };
        if handoff.app != *app.name {
            tracing::warn!(app = %app.name, for_app = %handoff.app, "an app sign-in code was presented to another app");
            return expired();
        }
        let from_here = matches!(web::cookie_values(headers, STATE_COOKIE)[..], [state] if crate::identity::session::same_secret(state, &handoff.state));
        if !from_here {
            tracing::warn!(app = %app.name, "an app sign-in code came back in another browser; refused");
            return expired();
        }
        // Taking it is what makes the code single-use: of two requests racing with it, one
        // gets it.
        match store.take_flow(&key, now).await {
            Ok(Some(_)) => {}
            Ok(None) => return expired(),
            Err(e) => return unavailable(e),
        }
        let session = match self.state.sessions.check_hash(&handoff.sid, now).await {
            Ok(Some(s)) => s,
            Ok(None) => return expired(),
            Err(_) => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "jitgate: the proxy cannot reach its store; try again shortly",
                )
            }
        };
        let ttl = now.until(session.expires_at);
        let sealed = match self.state.tokens.seal(
            &audience(&app.name),
            ttl,
            AppCookie {
                sid: session.id_hash.clone(),
            },
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot seal an app cookie");
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "jitgate: internal error; see the proxy's log",
                );
            }
        };
        let to = if handoff.to.starts_with('/') && !handoff.to.starts_with("//") {
            handoff.to
        } else {
            "/".to_owned()
        };
        let mut resp = redirect(&to);
        let cookie = format!(
            "{APP_COOKIE}={sealed}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
            ttl.as_secs()
        );
        for c in [cookie, crate::identity::session::clear_cookie(STATE_COOKIE)] {
            if let Ok(v) = HeaderValue::from_str(&c) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
        }
        // The code was in this URL: no page this redirect leads to should see it.
        resp.headers_mut()
            .insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        tracing::info!(app = %app.name, user = %session.identity.user, "app session started");
        resp
    }
}

/// The audience of an app's cookie: a cookie for one app opens nothing on another.
pub(super) fn audience(app: &str) -> String {
    format!("app:{app}")
}

fn handoff_key(code: &str) -> String {
    format!("app-handoff:{code}")
}

/// Starts an app session for a logged-in browser: a one-time code, kept in the store for a
/// minute, that the app's host trades for its cookie. Returns the URL to send the browser to.
pub async fn start_handoff(
    state: &ApiState,
    app: &AppSite,
    session: &Session,
    to: &str,
    browser_state: &str,
) -> Result<String, String> {
    let code = secret();
    let handoff = Handoff {
        sid: session.id_hash.clone(),
        app: app.name.clone(),
        state: browser_state.to_owned(),
        to: to.to_owned(),
    };
    let payload = serde_json::to_string(&handoff).map_err(|e| e.to_string())?;
    let expires = Timestamp::now().saturating_add(HANDOFF_TTL);
    state
        .broker
        .store()
        .put_flow(&handoff_key(&code), &payload, expires)
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!("{}{CALLBACK_PATH}?code={code}", app.origin))
}

/// 256 random bits, base64url: a handoff code or a sign-in state, bearer secrets like a
/// session cookie.
fn secret() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `s` looks like what `secret` makes.
pub fn plausible_state(s: &str) -> bool {
    s.len() == 43 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
