//! Browser apps behind grants. A request on an app's host (`{app}.{base_domain}`) needs an
//! app session (its own cookie, minted through the proxy's login and bound to that app),
//! then a grant that allows its method and path. Allowed requests go to the upstream with
//! the caller's identity and a signed assertion; streaming answers and WebSockets are
//! registered with `live` and cut when their grant ends.

mod headers;
pub mod path;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{self, HeaderValue};
use axum::http::{Method, Request, Response, StatusCode, Uri, Version};
use bytes::Bytes;
use hyper::body::{Frame, Incoming};
use maud::html;
use moka::future::Cache;
use serde::{Deserialize, Serialize};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::access::{Action, Authorized, Resource};
use crate::audit::AuditDraft;
use crate::config::AppConfig;
use crate::front::api::ApiState;
use crate::front::web;
use crate::identity::session::Session;
use crate::live::LiveHandle;
use crate::time::Timestamp;
pub use headers::{APP_COOKIE, STATE_COOKIE};
use upstream::UpstreamClient;

/// How long a handoff code from the proxy's login to an app's host stays good.
const HANDOFF_TTL: Duration = Duration::from_secs(60);
/// A session's decision for an app is looked up again after this, so new grants show.
const DECISION_TTL: Duration = Duration::from_secs(30);
const DECISION_CACHE_ENTRIES: u64 = 100_000;
/// How long a checked app cookie is trusted without checking its signature again; never
/// past its own expiry by more than this.
const COOKIE_TRUST: Duration = Duration::from_secs(60);
/// The same denial (user, app, method, path) is audited once in this long.
const DENIAL_REPEAT: Duration = Duration::from_secs(10);
const DENIALS_PER_MINUTE: u32 = 60;
/// The assertion lives this long; one is reused while it has more than half left.
const ASSERTION_TTL: Duration = Duration::from_secs(60);
pub const CALLBACK_PATH: &str = "/.jitgate/callback";

/// Where an app lives, for the proxy's own pages.
#[derive(Clone, Debug)]
pub struct AppSite {
    pub name: String,
    pub host: String,
    /// `https://host[:port]` as browsers reach the app.
    pub origin: String,
}

/// The sites of the configured apps, on the proxy's port.
pub fn sites(site: &web::Site, apps: &[AppConfig]) -> Vec<AppSite> {
    apps.iter()
        .map(|a| AppSite {
            name: a.name.clone(),
            host: a.host.clone(),
            origin: if site.port == 443 {
                format!("https://{}", a.host)
            } else {
                format!("https://{}:{}", a.host, site.port)
            },
        })
        .collect()
}

/// One configured app, ready to serve.
pub struct App {
    pub config: AppConfig,
    pub name: Arc<str>,
    /// `https://host[:port]` as browsers reach the app: the assertion's audience.
    pub origin: String,
    /// The host browsers used, as `X-Forwarded-Host` tells the upstream.
    host_header: HeaderValue,
    client: UpstreamClient,
    upgrades: UpstreamClient,
}

/// Where a session stands with one app: the grants that reach it, each watched by `live`.
struct Access {
    grants: Vec<Held>,
}

struct Held {
    auth: Authorized,
    live: LiveHandle,
    /// What the upstream is told about the caller under this grant, ready to send, with
    /// when its assertion expires.
    identity: Mutex<Option<(Arc<IdentityHeaders>, Timestamp)>>,
}

/// The identity headers for one session under one grant. Header values share their bytes,
/// so each request clones them without copying.
struct IdentityHeaders {
    user: HeaderValue,
    email: Option<HeaderValue>,
    groups: HeaderValue,
    grant: HeaderValue,
    assertion: HeaderValue,
}

impl Access {
    fn fresh(&self, now: Timestamp) -> bool {
        !self.grants.is_empty()
            && self
                .grants
                .iter()
                .all(|h| !h.live.is_cut() && now < h.auth.expires_at())
    }
}

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

pub struct AppsFront {
    state: Arc<ApiState>,
    by_host: HashMap<String, Arc<App>>,
    decisions: Cache<(Arc<str>, Arc<str>), Arc<Access>>,
    /// (grant, app) pairs whose first request is already in the audit log.
    first_seen: Cache<(Arc<str>, Arc<str>), ()>,
    /// App cookies whose signature checked out: cookie → (app, session id hash).
    cookies: Cache<String, (Arc<str>, Arc<str>)>,
    /// Denials audited lately, and each user's count of denial events this minute.
    denials: Cache<String, ()>,
    denial_budget: Cache<String, Arc<std::sync::atomic::AtomicU32>>,
}

impl AppsFront {
    pub fn new(state: Arc<ApiState>, apps: &[AppConfig]) -> Result<AppsFront, String> {
        let mut by_host = HashMap::new();
        for (config, site) in apps.iter().zip(sites(&state.site, apps)) {
            let (client, upgrades) = upstream::clients(config)?;
            let origin = site.origin;
            let host_header =
                HeaderValue::from_str(&config.host).map_err(|e| format!("apps {:?}: {e}", config.name))?;
            let app = App {
                host_header,
                name: config.name.as_str().into(),
                config: config.clone(),
                origin,
                client,
                upgrades,
            };
            by_host.insert(config.host.clone(), Arc::new(app));
        }
        Ok(AppsFront {
            state,
            by_host,
            decisions: Cache::builder()
                .max_capacity(DECISION_CACHE_ENTRIES)
                .time_to_live(DECISION_TTL)
                .build(),
            first_seen: Cache::builder().max_capacity(DECISION_CACHE_ENTRIES).build(),
            cookies: Cache::builder()
                .max_capacity(DECISION_CACHE_ENTRIES)
                .time_to_live(COOKIE_TRUST)
                .build(),
            denials: Cache::builder()
                .max_capacity(DECISION_CACHE_ENTRIES)
                .time_to_live(DENIAL_REPEAT)
                .build(),
            denial_budget: Cache::builder()
                .max_capacity(DECISION_CACHE_ENTRIES)
                .time_to_live(Duration::from_secs(60))
                .build(),
        })
    }

    /// The app served on `host` (lower case, no port), if any.
    pub fn app(&self, host: &str) -> Option<&Arc<App>> {
        self.by_host.get(host)
    }

    /// Serves one request on an app's host.
    pub async fn handle(self: Arc<Self>, app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        if req.uri().path() == CALLBACK_PATH {
            return self.callback(&app, req.uri().query(), req.headers()).await;
        }
        if req.uri().path().starts_with("/.jitgate/") {
            return text(StatusCode::NOT_FOUND, "jitgate: no such page");
        }
        let now = Timestamp::now();
        let (sid, session) = match self.session(&app, req.headers(), now).await {
            Ok(Some(found)) => found,
            Ok(None) => return self.to_login(&app, &req),
            Err(resp) => return resp,
        };
        let path = match path::normalize(req.uri().path()) {
            Ok(p) => p,
            Err(path::BadPath(why)) => return text(StatusCode::BAD_REQUEST, &format!("jitgate: {why}")),
        };
        // The proxy's own paths on the app host are never the upstream's, however spelled.
        if path.starts_with("/.jitgate/") {
            return text(StatusCode::NOT_FOUND, "jitgate: no such page");
        }
        let websocket = headers::wants_websocket(req.headers());
        if websocket && !app.config.websocket {
            return text(
                StatusCode::FORBIDDEN,
                &format!("jitgate: WebSockets are turned off for {}", app.name),
            );
        }
        let method = req.method().clone();
        let held = match self.decide(&app, &sid, &session, method.as_str(), &path, now).await {
            Ok(held) => held,
            Err(resp) => return resp,
        };
        if app.config.audit_sample > 0.0 && rand::random::<f64>() < app.config.audit_sample {
            let event = AuditDraft::new("app.request", &session.identity.user, &app.name)
                .grant(held.auth.grant_id())
                .details(serde_json::json!({ "method": method.as_str(), "path": path }));
            // A sample: it must not slow the request it describes.
            let store = Arc::clone(self.state.broker.store());
            tokio::spawn(async move {
                if let Err(e) = store.append_audit(vec![event]).await {
                    tracing::warn!(error = %e, "cannot record a sampled app request");
                }
            });
        }
        let identity = match self.identity(&app, &session, &held, now) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign the identity assertion");
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "jitgate: internal error; see the proxy's log",
                );
            }
        };
        let forward = Forward {
            app: &app,
            identity: &identity,
            path: &path,
            peer,
        };
        // The held grant's registration with `live` stays with the answer: a stream or a
        // WebSocket ends when that grant is cut.
        if websocket {
            forward.websocket(req, held).await
        } else {
            forward.request(req, held).await
        }
    }

    /// The live proxy session an app cookie names, if any. Cookies for another app, forged,
    /// expired, or of an ended session name none.
    async fn session(
        &self,
        app: &App,
        headers: &axum::http::HeaderMap,
        now: Timestamp,
    ) -> Result<Option<(Arc<str>, Arc<Session>)>, Response<Body>> {
        let [cookie] = web::cookie_values(headers, APP_COOKIE)[..] else {
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
                self.cookies
                    .insert(cookie.to_owned(), (Arc::clone(&app.name), Arc::clone(&sid)))
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
    fn to_login(&self, app: &App, req: &Request<Incoming>) -> Response<Body> {
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
    async fn callback(&self, app: &App, query: Option<&str>, headers: &axum::http::HeaderMap) -> Response<Body> {
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
        // (it holds the state cookie) with a code of the right shape costs a write.
        if !plausible_state(&code) || web::cookie_values(headers, STATE_COOKIE).len() != 1 {
            return expired();
        }
        let store = self.state.broker.store();
        let taken = match store.take_flow(&handoff_key(&code), now).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot read an app sign-in; refusing");
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "jitgate: the proxy cannot reach its store; try again shortly",
                );
            }
        };
        let Some(handoff) = taken.and_then(|t| serde_json::from_str::<Handoff>(&t).ok()) else {
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

    /// The grant that allows this request, from the session's cached access to the app.
    async fn decide(
        &self,
        app: &App,
        sid: &Arc<str>,
        session: &Session,
        method: &str,
        path: &str,
        now: Timestamp,
    ) -> Result<HeldRef, Response<Body>> {
        let key = (Arc::clone(sid), Arc::clone(&app.name));
        let resource = Resource::Http {
            app: &app.name,
            method,
            path,
        };
        let mut access = match self.decisions.get(&key).await {
            Some(a) if a.fresh(now) => Some(a),
            _ => None,
        };
        for attempt in 0..2 {
            let current = match access.take() {
                Some(a) => a,
                None => match self.access(app, session, now).await {
                    Ok(Some(a)) => {
                        self.decisions.insert(key.clone(), Arc::clone(&a)).await;
                        a
                    }
                    Ok(None) => break,
                    Err(resp) => return Err(resp),
                },
            };
            if let Some(i) = current.grants.iter().position(|h| {
                !h.live.is_cut() && now < h.auth.expires_at() && h.auth.allows(resource, Action::HttpRequest)
            }) {
                return Ok(HeldRef {
                    access: current,
                    index: i,
                });
            }
            // A cached access may predate a grant that allows this: look once more afresh.
            if attempt == 0 {
                self.decisions.invalidate(&key).await;
            }
        }
        Err(self.denied(app, session, method, path, now).await)
    }

    /// Looks up the session's grants for the app; None when it has none.
    async fn access(
        &self,
        app: &App,
        session: &Session,
        now: Timestamp,
    ) -> Result<Option<Arc<Access>>, Response<Body>> {
        let broker = &self.state.broker;
        let grants = broker.app_grants(&session.identity, &app.name, now).map_err(|e| {
            tracing::error!(error = %e, "cannot decide on an app request; refusing");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "jitgate: the proxy cannot decide on access right now; try again shortly",
            )
        })?;
        let held: Vec<Held> = grants
            .into_iter()
            .map(|auth| Held {
                live: broker.live().register(&auth),
                auth,
                identity: Mutex::new(None),
            })
            .filter(|h| !h.live.is_cut())
            .collect();
        if held.is_empty() {
            return Ok(None);
        }
        let mut events = Vec::new();
        let mut firsts = Vec::new();
        for h in &held {
            let pair: (Arc<str>, Arc<str>) = (h.auth.grant_id().into(), Arc::clone(&app.name));
            if !self.first_seen.contains_key(&pair) {
                firsts.push(pair);
                events.push(
                    AuditDraft::new("app.first_request", &session.identity.user, &app.name)
                        .grant(h.auth.grant_id())
                        .details(serde_json::json!({ "app": &*app.name })),
                );
            }
        }
        if !events.is_empty() {
            if let Err(e) = broker.store().append_audit(events).await {
                // Access the audit log cannot show does not start.
                tracing::error!(error = %e, "cannot record an app's first request; refusing");
                return Err(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "jitgate: the proxy cannot record this access right now; try again shortly",
                ));
            }
            // Marked only once written: a failed write is tried again on the next request.
            for pair in firsts {
                self.first_seen.insert(pair, ()).await;
            }
        }
        Ok(Some(Arc::new(Access { grants: held })))
    }

    /// Whether a denial goes to the audit log: the same denial again within
    /// `DENIAL_REPEAT` is only counted, and one user gets at most `DENIALS_PER_MINUTE`
    /// events a minute, so a client that loops on refused requests cannot flood the chain.
    async fn worth_auditing(&self, user: &str, app: &str, method: &str, path: &str) -> bool {
        let key = format!("{user}\0{app}\0{}\0{}", capped(method, 16), capped(path, 512));
        if self.denials.contains_key(&key) {
            return false;
        }
        self.denials.insert(key, ()).await;
        let budget = self
            .denial_budget
            .get_with(user.to_owned(), async {
                Arc::new(std::sync::atomic::AtomicU32::new(0))
            })
            .await;
        let n = budget.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n == DENIALS_PER_MINUTE {
            tracing::warn!(
                user,
                app,
                "too many denials; not auditing more of this user's for a minute"
            );
        }
        n < DENIALS_PER_MINUTE
    }

    /// The answer to a request no grant allows: audited, and for a browser's page load
    /// without any grant for the app, the proxy's page to request one.
    async fn denied(&self, app: &App, session: &Session, method: &str, path: &str, now: Timestamp) -> Response<Body> {
        let broker = &self.state.broker;
        let resource = Resource::Http {
            app: &app.name,
            method,
            path,
        };
        let denied = match broker.decision(&session.identity, resource, Action::HttpRequest, now) {
            Ok(Err(d)) => d,
            Ok(Ok(_)) => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "jitgate: your access just changed; try again",
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot decide on an app request; refusing");
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "jitgate: the proxy cannot decide on access right now; try again shortly",
                );
            }
        };
        if self
            .worth_auditing(&session.identity.user, &app.name, method, path)
            .await
        {
            let event = AuditDraft::new(
                "app.denied",
                &session.identity.user,
                &format!("{} {} {}", app.name, capped(method, 16), capped(path, 512)),
            )
            .reason(Some(&denied.reason));
            if let Err(e) = broker.store().append_audit(vec![event]).await {
                tracing::error!(error = %e, "cannot record an app denial");
            }
        }
        tracing::info!(app = %app.name, user = %session.identity.user, %method, %path, "app request denied");
        let any_grant = broker
            .app_grants(&session.identity, &app.name, now)
            .is_ok_and(|g| !g.is_empty());
        if method == "GET" && !any_grant {
            let rd = format!("{}{path}", app.origin);
            let query = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("rd", &rd)
                .finish();
            return redirect(&format!("{}/apps/{}?{query}", self.state.site.origin, app.name));
        }
        let would = if denied.requestable.is_empty() {
            "No profile you may request allows it.".to_owned()
        } else {
            format!(
                "Profiles that would: {}. Request one at {}/apps/{}",
                denied.requestable.join(", "),
                self.state.site.origin,
                app.name
            )
        };
        text(
            StatusCode::FORBIDDEN,
            &format!(
                "jitgate: no active grant allows {method} {path} on {}. {would}",
                app.name
            ),
        )
    }

    /// The identity headers for this grant, the assertion among them reused while more
    /// than half its life is left.
    fn identity(
        &self,
        app: &App,
        session: &Session,
        held: &HeldRef,
        now: Timestamp,
    ) -> Result<Arc<IdentityHeaders>, String> {
        let h = held.held();
        let mut slot = h.identity.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((headers, until)) = &*slot {
            if now.until(*until) > ASSERTION_TTL / 2 {
                return Ok(Arc::clone(headers));
            }
        }
        // Never valid past the grant.
        let ttl = ASSERTION_TTL.min(now.until(h.auth.expires_at()));
        let who = &session.identity;
        let signed =
            self.state
                .tokens
                .assertion(&app.origin, who, session.email.as_deref(), h.auth.grant_id(), now, ttl)?;
        let value =
            |v: &str| HeaderValue::from_bytes(v.as_bytes()).map_err(|_| format!("{v:?} cannot be a header value"));
        let headers = Arc::new(IdentityHeaders {
            user: value(&who.user)?,
            email: session.email.as_deref().map(value).transpose()?,
            groups: value(
                &who.groups
                    .iter()
                    .map(|g| headers::group_item(g))
                    .collect::<Vec<_>>()
                    .join(","),
            )?,
            grant: value(h.auth.grant_id())?,
            assertion: value(&signed)?,
        });
        *slot = Some((Arc::clone(&headers), now.saturating_add(ttl)));
        Ok(headers)
    }
}

/// A grant chosen from a cached access; keeps the access alive while the request runs.
struct HeldRef {
    access: Arc<Access>,
    index: usize,
}

impl HeldRef {
    fn held(&self) -> &Held {
        &self.access.grants[self.index]
    }
}

impl std::ops::Deref for HeldRef {
    type Target = Held;
    fn deref(&self) -> &Held {
        self.held()
    }
}

/// One allowed request on its way to the upstream.
struct Forward<'a> {
    app: &'a App,
    identity: &'a IdentityHeaders,
    path: &'a str,
    peer: SocketAddr,
}

impl Forward<'_> {
    fn upstream_uri(&self, query: Option<&str>) -> Option<Uri> {
        let base = self.app.config.upstream.as_str().trim_end_matches('/');
        let uri = match query {
            Some(q) => format!("{base}{}?{q}", self.path),
            None => format!("{base}{}", self.path),
        };
        uri.parse().ok()
    }

    /// The headers the upstream gets: the client's, cleaned, plus what the proxy knows.
    fn headers(&self, headers: &mut axum::http::HeaderMap) {
        headers::clean_request(headers);
        let peer = self.peer.ip().to_string();
        if let Ok(v) = HeaderValue::from_str(&peer) {
            headers.insert(headers::FORWARDED_FOR, v);
        }
        headers.insert(headers::FORWARDED_PROTO, HeaderValue::from_static("https"));
        headers.insert(headers::FORWARDED_HOST, self.app.host_header.clone());
        if self.app.config.pass_identity_headers {
            let id = self.identity;
            headers.insert(headers::USER, id.user.clone());
            if let Some(email) = &id.email {
                headers.insert(headers::EMAIL, email.clone());
            }
            headers.insert(headers::GROUPS, id.groups.clone());
            headers.insert(headers::GRANT, id.grant.clone());
            headers.insert(headers::ASSERTION, id.assertion.clone());
        }
        // The upstream's own name, as for a direct request to it.
        headers.remove(header::HOST);
    }

    async fn request(&self, req: Request<Incoming>, held: HeldRef) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let Some(uri) = self.upstream_uri(parts.uri.query()) else {
            return text(
                StatusCode::BAD_REQUEST,
                "jitgate: the request's URL cannot be forwarded",
            );
        };
        self.headers(&mut parts.headers);
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        let up = Request::from_parts(parts, Body::new(body));
        let sent = tokio::time::timeout(self.app.config.response_timeout, self.app.client.request(up)).await;
        let resp = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return self.unreachable(&e.to_string(), &held),
            Err(_) => {
                return self.unreachable(
                    &format!(
                        "no answer within {}",
                        humantime::format_duration(self.app.config.response_timeout)
                    ),
                    &held,
                )
            }
        };
        let (mut parts, body) = resp.into_parts();
        headers::clean_response(&mut parts.headers);
        // A token of its own: waiters on one shared token would all queue on its lock.
        let cut = held.live.token().child_token().cancelled_owned();
        Response::from_parts(
            parts,
            Body::new(CutBody {
                inner: body,
                cut: Box::pin(cut),
                _held: held,
            }),
        )
    }

    async fn websocket(&self, mut req: Request<Incoming>, held: HeldRef) -> Response<Body> {
        let from_client = hyper::upgrade::on(&mut req);
        let (mut parts, _) = req.into_parts();
        let Some(uri) = self.upstream_uri(parts.uri.query()) else {
            return text(
                StatusCode::BAD_REQUEST,
                "jitgate: the request's URL cannot be forwarded",
            );
        };
        self.headers(&mut parts.headers);
        // The upgrade request goes without a body: no length may claim one, or the upstream
        // would wait for it (or read the next request's bytes as it).
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        let up = Request::from_parts(parts, Body::empty());
        let sent = tokio::time::timeout(self.app.config.response_timeout, self.app.upgrades.request(up)).await;
        let mut resp = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return self.unreachable(&e.to_string(), &held),
            Err(_) => return self.unreachable("no answer to the WebSocket upgrade in time", &held),
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            // Not upgraded, but maybe a stream all the same: it ends with the grant too.
            let (mut parts, body) = resp.into_parts();
            headers::clean_response(&mut parts.headers);
            let cut = held.live.token().child_token().cancelled_owned();
            return Response::from_parts(
                parts,
                Body::new(CutBody {
                    inner: body,
                    cut: Box::pin(cut),
                    _held: held,
                }),
            );
        }
        let from_upstream = hyper::upgrade::on(&mut resp);
        let app = Arc::clone(&self.app.name);
        let grant = held.auth.grant_id().to_owned();
        tokio::spawn(async move {
            let (client, upstream) = match tokio::join!(from_client, from_upstream) {
                (Ok(c), Ok(u)) => (c, u),
                (c, u) => {
                    tracing::debug!(client = ?c.err(), upstream = ?u.err(), "a WebSocket upgrade did not complete");
                    return;
                }
            };
            let mut client = hyper_util::rt::TokioIo::new(client);
            let mut upstream = hyper_util::rt::TokioIo::new(upstream);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                _ = held.live.cancelled() => {
                    tracing::info!(app = %app, grant = %grant, "grant ended; closing its WebSocket");
                }
            }
        });
        let (mut parts, _) = resp.into_parts();
        headers::clean_response(&mut parts.headers);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        Response::from_parts(parts, Body::empty())
    }

    /// The upstream could not be reached: a page that names the app, and a log line with
    /// the grant.
    fn unreachable(&self, why: &str, held: &HeldRef) -> Response<Body> {
        tracing::warn!(app = %self.app.name, grant = %held.auth.grant_id(), error = %why, "upstream unreachable");
        let name = &self.app.name;
        let body = html! {
            (maud::DOCTYPE)
            html lang="en" {
                head { meta charset="utf-8"; title { (name) " is unreachable · jitgate" } }
                body {
                    h1 { (name) " is unreachable" }
                    p { "jitgate let you in, but " (name) " did not answer. Try again in a moment; if it persists, tell the team that runs " (name) "." }
                }
            }
        };
        let mut resp = Response::new(Body::from(body.into_string()));
        *resp.status_mut() = StatusCode::BAD_GATEWAY;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        resp
    }
}

/// An upstream's body, ended (as an error, so the client cannot take it for complete) when
/// its grant is cut.
struct CutBody {
    inner: Incoming,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Keeps the grant's registration with `live` while the body flows.
    _held: HeldRef,
}

impl hyper::body::Body for CutBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if std::future::Future::poll(self.cut.as_mut(), cx).is_ready() {
            return Poll::Ready(Some(Err("the grant ended".into())));
        }
        Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The audience of an app's cookie: a cookie for one app opens nothing on another.
fn audience(app: &str) -> String {
    format!("app:{app}")
}

/// At most `max` bytes of `s`, cut on a character boundary: what a client sends is stored
/// only so far.
fn capped(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
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

fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut resp = Response::new(Body::from(format!("{message}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn redirect(to: &str) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
