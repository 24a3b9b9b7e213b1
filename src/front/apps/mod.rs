//! Browser apps behind grants. A request on an app's host (`{app}.{base_domain}`) needs an
//! app session (its own cookie, minted through the proxy's login and bound to that app),
//! then a grant that allows its method and path. Allowed requests go to the upstream with
//! the caller's identity and a signed assertion; streaming answers and WebSockets are
//! registered with `live` and cut when their grant ends.

mod forward;
pub(crate) mod headers;
mod memo;
pub mod path;
mod samples;
mod signin;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{self, HeaderValue};
use axum::http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use moka::future::Cache;

use crate::access::{Action, Authorized, Resource};
use crate::audit::AuditDraft;
use crate::config::AppConfig;
use crate::front::api::ApiState;
use crate::front::throttle::{capped, DenialThrottle};
use crate::front::web;
use crate::identity::session::Session;
use crate::live::LiveHandle;
use crate::time::Timestamp;
use forward::Forward;
pub(crate) use forward::Reply;
pub use headers::{APP_COOKIE, STATE_COOKIE};
pub use memo::ConnMemo;
pub use signin::{plausible_state, start_handoff};
use upstream::UpstreamClient;

/// How long a handoff code from the proxy's login to an app's host stays good.
const HANDOFF_TTL: Duration = Duration::from_secs(60);
/// A session's decision for an app is looked up again after this, so new grants show.
const DECISION_TTL: Duration = Duration::from_secs(30);
const DECISION_CACHE_ENTRIES: u64 = 100_000;
/// How long a checked app cookie is trusted without checking its signature again; never
/// past its own expiry by more than this.
const COOKIE_TRUST: Duration = Duration::from_secs(60);
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
    /// One pool per shard: a request and the upstream connection it uses share a thread.
    clients: Box<[UpstreamClient]>,
    upgrades: UpstreamClient,
    /// For plain `http://` upstreams: connections driven by the request's own task.
    pools: Option<Box<[Arc<crate::front::h1pool::H1Pool>]>>,
    /// The upstream's authority, as the Host header of requests sent on `pools`.
    upstream_host: HeaderValue,
}

impl App {
    fn client(&self) -> &UpstreamClient {
        &self.clients[crate::front::shards::current() % self.clients.len()]
    }

    fn pool(&self) -> Option<&Arc<crate::front::h1pool::H1Pool>> {
        self.pools
            .as_ref()
            .map(|p| &p[crate::front::shards::current() % p.len()])
    }
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
    /// Whether the grant's first request to the app is in the audit log: once it is, a
    /// request checks this flag instead of the shared cache.
    first_recorded: AtomicBool,
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

pub struct AppsFront {
    state: Arc<ApiState>,
    by_host: HashMap<String, Arc<App>, crate::FastHash>,
    decisions: Cache<(Arc<str>, Arc<str>), Arc<Access>, crate::FastHash>,
    /// (grant, app) pairs whose first request is already in the audit log.
    first_seen: Cache<(Arc<str>, Arc<str>), ()>,
    /// App cookies whose signature checked out: cookie → (app, session id hash).
    cookies: Cache<String, (Arc<str>, Arc<str>), crate::FastHash>,
    denials: DenialThrottle,
    /// The writer of sampled request lines, when an app samples them.
    samples: Option<samples::Samples>,
}

impl AppsFront {
    pub fn new(state: Arc<ApiState>, apps: &[AppConfig]) -> Result<AppsFront, String> {
        let mut by_host = HashMap::with_hasher(crate::FastHash::default());
        for (config, site) in apps.iter().zip(sites(&state.site, apps)) {
            let (client, upgrades) = upstream::clients(config)?;
            let mut clients = vec![client];
            for _ in 1..crate::front::shards::count() {
                clients.push(upstream::clients(config)?.0);
            }
            let origin = site.origin;
            let host_header =
                HeaderValue::from_str(&config.host).map_err(|e| format!("apps {:?}: {e}", config.name))?;
            let pools = upstream::h1_pools(config)?;
            let authority = match config.upstream.port() {
                Some(port) => format!("{}:{port}", config.upstream.host_str().unwrap_or_default()),
                None => config.upstream.host_str().unwrap_or_default().to_owned(),
            };
            let upstream_host =
                HeaderValue::from_str(&authority).map_err(|e| format!("apps {:?}: upstream: {e}", config.name))?;
            let app = App {
                pools,
                upstream_host,
                host_header,
                name: config.name.as_str().into(),
                config: config.clone(),
                origin,
                clients: clients.into(),
                upgrades,
            };
            by_host.insert(config.host.clone(), Arc::new(app));
        }
        Ok(AppsFront {
            by_host,
            decisions: Cache::builder()
                .max_capacity(DECISION_CACHE_ENTRIES)
                .time_to_live(DECISION_TTL)
                .build_with_hasher(crate::FastHash::default()),
            first_seen: Cache::builder().max_capacity(DECISION_CACHE_ENTRIES).build(),
            cookies: Cache::builder()
                .max_capacity(DECISION_CACHE_ENTRIES)
                .time_to_live(COOKIE_TRUST)
                .build_with_hasher(crate::FastHash::default()),
            denials: DenialThrottle::new(DECISION_CACHE_ENTRIES),
            samples: apps
                .iter()
                .any(|a| a.audit_sample > 0.0)
                .then(|| samples::Samples::start(Arc::clone(state.broker.store()))),
            state,
        })
    }

    /// The app served on `host` (lower case, no port), if any.
    pub fn app(&self, host: &str) -> Option<&Arc<App>> {
        self.by_host.get(host)
    }

    /// Serves one request on an app's host; `memo` is its connection's.
    pub(crate) async fn handle(
        self: Arc<Self>,
        app: Arc<App>,
        req: Request<Incoming>,
        peer: SocketAddr,
        memo: &ConnMemo,
    ) -> Response<Reply> {
        if req.uri().path() == CALLBACK_PATH {
            // Cold paths are boxed here and below: a request's future is moved whole, and
            // would otherwise be as large as its largest branch.
            return Box::pin(self.callback(&app, req.uri().query(), req.headers()))
                .await
                .map(Reply::Boxed);
        }
        if req.uri().path().starts_with("/.jitgate/") {
            return text(StatusCode::NOT_FOUND, "jitgate: no such page").map(Reply::Boxed);
        }
        let now = Timestamp::now();
        let cookie = web::one_cookie(req.headers(), APP_COOKIE);
        let (sid, session, remembered) = match cookie.and_then(|c| memo.recall(&app.name, c, now)) {
            Some(r) => (r.sid, r.session, Some(r.access)),
            None => match self.session(&app, cookie, now).await {
                Ok(Some((sid, session))) => (sid, session, None),
                Ok(None) => return self.to_login(&app, &req).map(Reply::Boxed),
                Err(resp) => return resp.map(Reply::Boxed),
            },
        };
        let path = match path::normalize(req.uri().path()) {
            Ok(p) => p,
            Err(path::BadPath(why)) => {
                return text(StatusCode::BAD_REQUEST, &format!("jitgate: {why}")).map(Reply::Boxed)
            }
        };
        // The proxy's own paths on the app host are never the upstream's, however spelled.
        if path.starts_with("/.jitgate/") {
            return text(StatusCode::NOT_FOUND, "jitgate: no such page").map(Reply::Boxed);
        }
        let websocket = headers::wants_websocket(req.headers());
        if websocket && !app.config.websocket {
            return text(
                StatusCode::FORBIDDEN,
                &format!("jitgate: WebSockets are turned off for {}", app.name),
            )
            .map(Reply::Boxed);
        }
        let method = req.method().clone();
        // An address, as a number: only compared, never followed.
        let recalled = remembered.as_ref().map(|a| Arc::as_ptr(a) as usize);
        let held = match self
            .decide(&app, &sid, &session, method.as_str(), &path, now, remembered)
            .await
        {
            Ok(held) => held,
            Err(resp) => return resp.map(Reply::Boxed),
        };
        // Remembered anew when the access that allowed it is not the one remembered.
        if let Some(cookie) = cookie.filter(|_| recalled != Some(Arc::as_ptr(&held.access) as usize)) {
            memo.remember(&app.name, cookie, &sid, &session, &held.access);
        }
        if app.config.audit_sample > 0.0 && rand::random::<f64>() < app.config.audit_sample {
            let event = AuditDraft::new("app.request", &session.identity.user, &app.name)
                .grant(held.auth.grant_id())
                .details(serde_json::json!({ "method": method.as_str(), "path": capped(&path, 512) }));
            // A sample: it must not slow the request it describes.
            if let Some(samples) = &self.samples {
                samples.record(event);
            }
        }
        let identity = match self.identity(&app, &session, &held, now) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign the identity assertion");
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "jitgate: internal error; see the proxy's log",
                )
                .map(Reply::Boxed);
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
            Box::pin(forward.websocket(req, held)).await.map(Reply::Boxed)
        } else {
            forward.request(req, held).await
        }
    }

    /// The grant that allows this request, from the session's access to the app: the one
    /// its connection remembers, else the shared cache's.
    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &self,
        app: &App,
        sid: &Arc<str>,
        session: &Session,
        method: &str,
        path: &str,
        now: Timestamp,
        remembered: Option<Arc<Access>>,
    ) -> Result<HeldRef, Response<Body>> {
        let resource = Resource::Http {
            app: &app.name,
            method,
            path,
        };
        if let Some(a) = remembered {
            if let Some(i) = allowing(&a, resource, now) {
                return self.held(app, session, a, i).await;
            }
            // The shared cache may hold a newer access than the connection remembers.
        }
        let key = (Arc::clone(sid), Arc::clone(&app.name));
        let mut access = match self.decisions.get(&key).await {
            Some(a) if a.fresh(now) => Some(a),
            _ => None,
        };
        for attempt in 0..2 {
            let current = match access.take() {
                Some(a) => a,
                None => match self.access(app, session, now).await {
                    Ok(Some(a)) => {
                        Box::pin(self.decisions.insert(key.clone(), Arc::clone(&a))).await;
                        a
                    }
                    Ok(None) => break,
                    Err(resp) => return Err(resp),
                },
            };
            if let Some(i) = allowing(&current, resource, now) {
                return self.held(app, session, current, i).await;
            }
            // A cached access may predate a grant that allows this: look once more afresh.
            if attempt == 0 {
                Box::pin(self.decisions.invalidate(&key)).await;
            }
        }
        Err(Box::pin(self.denied(app, session, method, path, now)).await)
    }

    /// The grant at `index` of `access`, once its first request to the app is recorded.
    async fn held(
        &self,
        app: &App,
        session: &Session,
        access: Arc<Access>,
        index: usize,
    ) -> Result<HeldRef, Response<Body>> {
        let held = &access.grants[index];
        if !held.first_recorded.load(Ordering::Relaxed) {
            Box::pin(self.record_first(app, session, held)).await?;
        }
        Ok(HeldRef { access, index })
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
                // Under the browser session too: logging out ends its open streams.
                live: broker
                    .live()
                    .register_for(&auth, &crate::live::session_login(&session.id_hash)),
                auth,
                identity: Mutex::new(None),
                first_recorded: AtomicBool::new(false),
            })
            .filter(|h| !h.live.is_cut())
            .collect();
        if held.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Access { grants: held })))
    }

    /// Records the first request a grant allows on an app, unless it is recorded already.
    /// Only the grant that allows the request: one the session merely holds has not been
    /// used here.
    async fn record_first(&self, app: &App, session: &Session, held: &Held) -> Result<(), Response<Body>> {
        let pair: (Arc<str>, Arc<str>) = (held.auth.grant_id().into(), Arc::clone(&app.name));
        // One write however many first requests race (a page loads its assets at once):
        // the others wait for it. Marked only once written, so a failed write is tried
        // again on the next request.
        let recorded = self
            .first_seen
            .entry(pair)
            .or_try_insert_with(async {
                let event = AuditDraft::new("app.first_request", &session.identity.user, &app.name)
                    .grant(held.auth.grant_id())
                    .details(serde_json::json!({ "app": &*app.name }));
                self.state.broker.store().append_audit(vec![event]).await
            })
            .await;
        if let Err(e) = recorded {
            // Access the audit log cannot show does not start.
            tracing::error!(error = %e, "cannot record an app's first request; refusing");
            return Err(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "jitgate: the proxy cannot record this access right now; try again shortly",
            ));
        }
        held.first_recorded.store(true, Ordering::Relaxed);
        Ok(())
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
        let what = format!("{}\0{}\0{}", app.name, capped(method, 16), capped(path, 512));
        if self.denials.worth_auditing(&session.identity.user, &what).await {
            let event = AuditDraft::new(
                "app.denied",
                &session.identity.user,
                &format!("{} {} {}", app.name, capped(method, 16), capped(path, 512)),
            )
            .reason(Some(&denied.reason));
            if let Err(e) = broker.store().append_audit(vec![event]).await {
                tracing::error!(error = %e, "cannot record an app denial");
                self.denials.not_recorded(&session.identity.user, &what).await;
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

/// Which of an access's grants allows the request, if one does.
fn allowing(access: &Access, resource: Resource<'_>, now: Timestamp) -> Option<usize> {
    access
        .grants
        .iter()
        .position(|h| !h.live.is_cut() && now < h.auth.expires_at() && h.auth.allows(resource, Action::HttpRequest))
}

/// A grant chosen from a cached access; keeps the access alive while the request runs.
#[derive(Clone)]
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
