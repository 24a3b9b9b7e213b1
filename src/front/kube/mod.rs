//! The Kubernetes API behind grants, at `/k8s/{cluster}/…` on the HTTPS listener. kubectl
//! authenticates with a short-lived proxy token for that cluster (`jitgate kube-credential`);
//! each request's attributes are read as the API server reads them and checked against the
//! caller's grants; an allowed request goes on with the proxy's own credential and
//! `Impersonate-*` headers naming the user, the grant's groups and the grant, so the
//! cluster's RBAC applies as well. Watches, log streams and upgraded streams (exec, attach,
//! port-forward) are registered with `live` and end with their grant.

pub mod attrs;
mod forward;
mod frames;
mod portforward;
mod review;
pub mod status;
mod stream;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{self, HeaderValue};
use axum::http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use moka::future::Cache;

use crate::access::{Action, Authorized, Identity, Resource};
use crate::audit::AuditDraft;
use crate::config::{KubeCluster, KubeTls};
use crate::front::api::{ApiState, Invalid};
use crate::front::throttle::{capped, DenialThrottle};
use crate::live::LiveHandle;
use crate::time::Timestamp;
use attrs::{Attrs, ResourceAttrs};
use upstream::Upstream;

/// The longest a kubectl credential lives; kubectl asks for a new one when it expires.
pub const TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// A checked token is trusted this long before the store is asked again whether its login
/// was logged out or its user disabled.
const CALLER_TRUST: Duration = Duration::from_secs(5);
/// A grant's registration with `live` and its impersonation headers are reused this long.
const HELD_TTL: Duration = Duration::from_secs(30);
const CACHE_ENTRIES: u64 = 100_000;

/// Why a token was refused: kept apart from its response, which a cache's error cannot
/// hold (a body is not `Sync`).
enum Refusal {
    Unauthorized(String),
    Forbidden(String),
    Unavailable(&'static str),
}

impl Refusal {
    fn response(&self) -> Response<Body> {
        match self {
            Refusal::Unauthorized(m) => status::unauthorized(m),
            Refusal::Forbidden(m) => status::forbidden(m),
            Refusal::Unavailable(m) => status::unavailable(m),
        }
    }
}

/// The prefix of the Kubernetes API on the proxy.
pub const PREFIX: &str = "/k8s/";

/// The token audience for one cluster.
pub fn audience(cluster: &str) -> String {
    format!("kube:{cluster}")
}

struct Cluster {
    name: Arc<str>,
    audience: String,
    upstream: Upstream,
    /// Checked tokens, by token: a token is good on its own cluster only. Keyed by
    /// `String` so a lookup borrows the request's token instead of copying it.
    callers: Cache<String, Arc<Caller>, crate::FastHash>,
}

/// Who is calling, from a checked token.
struct Caller {
    identity: Identity,
    expires_at: Timestamp,
    /// The login the token was derived from (`token:{jti}`): its streams end when it does.
    login: Arc<str>,
}

/// A grant in use on a cluster: its registration with `live`, and the headers that tell the
/// API server whom to act as, ready to send.
struct Held {
    auth: Authorized,
    live: LiveHandle,
    user: HeaderValue,
    groups: Vec<HeaderValue>,
    grant: HeaderValue,
}

/// (grant, cluster, login).
type HeldKey = (Arc<str>, Arc<str>, Arc<str>);

pub struct KubeFront {
    state: Arc<ApiState>,
    clusters: HashMap<String, Arc<Cluster>, crate::FastHash>,
    /// Grants in use, by (grant, cluster, login): a logout cuts only that login's streams.
    held: Cache<HeldKey, Arc<Held>, crate::FastHash>,
    /// (grant, cluster) pairs whose first request is already in the audit log.
    first_seen: Cache<(Arc<str>, Arc<str>), ()>,
    denials: DenialThrottle,
}

impl KubeFront {
    pub fn new(state: Arc<ApiState>, clusters: &[KubeCluster]) -> KubeFront {
        // Each cluster checks its own tokens: the bound on them all is shared out.
        let callers_each = (CACHE_ENTRIES / clusters.len().max(1) as u64).max(1_000);
        let clusters = clusters
            .iter()
            .map(|c| {
                if matches!(c.tls, KubeTls::InsecureSkipVerify) {
                    tracing::warn!(
                        cluster = %c.name,
                        "insecure_skip_verify: the API server's certificate is NOT checked; anyone on the path can take the proxy's credential. Use ca_file outside tests"
                    );
                }
                let upstream = Upstream::new(c.clone());
                if let Err(e) = upstream.clients() {
                    tracing::warn!(cluster = %c.name, error = %e, "cluster unusable until this is fixed");
                }
                let cluster = Cluster {
                    name: c.name.as_str().into(),
                    audience: audience(&c.name),
                    upstream,
                    callers: Cache::builder()
                        .max_capacity(callers_each)
                        .time_to_live(CALLER_TRUST)
                        .build_with_hasher(crate::FastHash::default()),
                };
                (c.name.clone(), Arc::new(cluster))
            })
            .collect();
        KubeFront {
            state,
            clusters,
            held: Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .time_to_live(HELD_TTL)
                .build_with_hasher(crate::FastHash::default()),
            first_seen: Cache::builder().max_capacity(CACHE_ENTRIES).build(),
            denials: DenialThrottle::new(CACHE_ENTRIES),
        }
    }

    /// Serves one request under `/k8s/`.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let rest = req.uri().path().strip_prefix(PREFIX).unwrap_or_default();
        let (name, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let Some(cluster) = self.clusters.get(name).cloned() else {
            // Unauthenticated so far: the names of the clusters are for logged-in callers
            // (`/api/v1/kube/clusters`).
            return status::status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!(
                    "jitgate: no cluster {:?} here; `jitgate kubeconfig --cluster NAME` names the ones there are",
                    capped(name, 64)
                ),
            );
        };
        let caller = match self.caller(&cluster, req.headers()).await {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        let path = match attrs::decode_path(path) {
            Ok(p) => p.into_owned(),
            Err(attrs::BadRequest(why)) => return status::bad_request(&format!("jitgate: {why}")),
        };
        let attrs = match attrs::parse(req.method().as_str(), &path, req.uri().query()) {
            Ok(a) => a,
            Err(attrs::BadRequest(why)) => return status::bad_request(&format!("jitgate: {why}")),
        };
        let now = Timestamp::now();
        let held = match self.decide(&cluster, &caller, &attrs, now).await {
            Ok(h) => h,
            Err(resp) => return resp,
        };
        if let Attrs::Resource(r) = &attrs {
            if review::is_access_review(r) {
                return self.access_review(&cluster, &caller, req, &path, held, peer).await;
            }
        }
        forward::Forward {
            cluster: &cluster,
            held,
            path: &path,
            attrs: &attrs,
            peer,
        }
        .send(req)
        .await
    }

    /// The caller named by the bearer token, checked for this cluster.
    async fn caller(&self, cluster: &Cluster, headers: &axum::http::HeaderMap) -> Result<Arc<Caller>, Response<Body>> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                status::unauthorized(&format!(
                    "jitgate: no proxy token; use the kubeconfig from `jitgate kubeconfig --cluster {}`",
                    cluster.name
                ))
            })?;
        let fresh = |c: &Arc<Caller>| Timestamp::now() < c.expires_at;
        if let Some(c) = cluster.callers.get(token).await {
            if fresh(&c) {
                return Ok(c);
            }
            // Expired since: checked again below, it is refused for what it is.
            cluster.callers.invalidate(token).await;
        }
        // Checked once for all the requests that come with it while it is not cached (a
        // client's 16 workers would otherwise each verify it and ask the store, every few
        // seconds); a refusal is not cached. Boxed: the path is cold, its future large.
        let checked = cluster
            .callers
            .try_get_with_by_ref(token, Box::pin(self.check_token(cluster, token)))
            .await;
        match checked {
            Ok(c) if fresh(&c) => Ok(c),
            Ok(_) => Err(status::unauthorized(&format!(
                "jitgate: {}",
                crate::identity::TokenError::Expired
            ))),
            Err(refusal) => Err(refusal.response()),
        }
    }

    /// Verifies a token for this cluster and asks the store whether its login still holds.
    async fn check_token(&self, cluster: &Cluster, token: &str) -> Result<Arc<Caller>, Refusal> {
        let claims = self
            .state
            .tokens
            .verify_for(token, &cluster.audience)
            .map_err(|e| match e {
                crate::identity::TokenError::WrongAudience => Refusal::Unauthorized(format!(
                    "jitgate: this token is not for cluster {:?}; kubectl gets one per cluster from `jitgate kube-credential --cluster {}`",
                    cluster.name, cluster.name
                )),
                e => Refusal::Unauthorized(format!("jitgate: {e}")),
            })?;
        // A token from `derive` names its login; an API token never reaches here (its
        // audience is not a cluster's), and without a login behind it a token is refused.
        let Some(parent) = claims.parent.as_deref() else {
            return Err(Refusal::Unauthorized(
                "jitgate: this token was not made for kubectl; use `jitgate kube-credential`".into(),
            ));
        };
        let login: Arc<str> = crate::live::token_login(parent).into();
        self.state.still_valid(&claims).await.map_err(|e| match e {
            Invalid::Refused(why) => Refusal::Unauthorized(format!("jitgate: {why}")),
            Invalid::Store(e) => {
                tracing::error!(error = %e, "cannot check a kube token; refusing");
                Refusal::Unavailable("jitgate: the proxy cannot check your token right now; try again shortly")
            }
        })?;
        // Kubernetes reserves `system:` names for its own components and gives them roles;
        // an IdP user must never be impersonated as one.
        if claims.sub.starts_with("system:") {
            return Err(Refusal::Forbidden(format!(
                "jitgate: the user name {:?} is reserved by Kubernetes (system:); it cannot be impersonated",
                claims.sub
            )));
        }
        Ok(Arc::new(Caller {
            identity: claims.identity(),
            expires_at: claims.expires_at(),
            login,
        }))
    }

    /// The grant that allows this request, held for the answer's lifetime.
    async fn decide(
        &self,
        cluster: &Cluster,
        caller: &Caller,
        attrs: &Attrs<'_>,
        now: Timestamp,
    ) -> Result<Arc<Held>, Response<Body>> {
        let (resource, verb) = match attrs {
            Attrs::Resource(r) if review::is_rules_review(r) => {
                return Err(status::forbidden(
                    "jitgate: `kubectl auth can-i --list` is not answered through the proxy; `jitgate grants` shows what your grants allow, and `kubectl auth can-i VERB RESOURCE` checks one access",
                ))
            }
            // What the caller may ask about themselves is open to any grant on the cluster;
            // an access review's answer is narrowed to the grants in `access_review`.
            Attrs::Resource(r) if review::is_self_review(r) => (Resource::KubeDiscovery { cluster: &cluster.name }, "get"),
            Attrs::Resource(r) => (resource_of(&cluster.name, r), r.verb),
            Attrs::NonResource { path, verb } if discovery(path) && matches!(*verb, "get" | "head") => {
                (Resource::KubeDiscovery { cluster: &cluster.name }, "get")
            }
            Attrs::NonResource { path, .. } => {
                return Err(status::forbidden(&format!(
                    "jitgate: {path} is not served through the proxy; only the API and discovery (/api, /apis, /version, /openapi) are"
                )))
            }
        };
        let broker = &self.state.broker;
        let decision = broker.decision(&caller.identity, resource, Action::Kube { verb }, now);
        match decision {
            Ok(Ok(auth)) => self.hold(cluster, caller, auth).await,
            Ok(Err(denied)) => Err(self.denied(cluster, caller, attrs, resource, verb, denied).await),
            Err(e) => {
                tracing::error!(error = %e, "cannot decide on a kube request; refusing");
                Err(status::unavailable(
                    "jitgate: the proxy cannot decide on access right now; try again shortly",
                ))
            }
        }
    }

    /// The grant's registration and headers, made once per grant and reused; a grant's
    /// first request on a cluster is audited before it goes through.
    async fn hold(&self, cluster: &Cluster, caller: &Caller, auth: Authorized) -> Result<Arc<Held>, Response<Body>> {
        let id: Arc<str> = auth.grant_id().into();
        let pair = (Arc::clone(&id), Arc::clone(&cluster.name));
        let key = (Arc::clone(&id), Arc::clone(&cluster.name), Arc::clone(&caller.login));
        if let Some(h) = self.held.get(&key).await {
            if !h.live.is_cut() {
                return Ok(h);
            }
            // Until the token check sees the logout, its requests meet the cut entry.
            if h.live.ended_by_logout() {
                return Err(logged_out());
            }
            self.held.invalidate(&key).await;
        }
        if !self.first_seen.contains_key(&pair) {
            let event = AuditDraft::new("kube.first_request", &caller.identity.user, &cluster.name)
                .grant(&id)
                .details(serde_json::json!({ "cluster": &*cluster.name }));
            if let Err(e) = self.state.broker.store().append_audit(vec![event]).await {
                // Access the audit log cannot show does not start.
                tracing::error!(error = %e, "cannot record a grant's first kube request; refusing");
                return Err(status::unavailable(
                    "jitgate: the proxy cannot record this access right now; try again shortly",
                ));
            }
            self.first_seen.insert(pair.clone(), ()).await;
        }
        let headers = || -> Result<(HeaderValue, HeaderValue, Vec<HeaderValue>), String> {
            // UTF-8 bytes as they are: Go reads header values as bytes too.
            let value = |v: &str| {
                HeaderValue::from_bytes(v.as_bytes()).map_err(|_| format!("{v:?} cannot be sent in a header"))
            };
            let groups = auth.profile().kube.as_ref().map(|k| &k.groups[..]).unwrap_or_default();
            Ok((
                value(&caller.identity.user)?,
                value(auth.grant_id())?,
                groups.iter().map(|g| value(g)).collect::<Result<_, _>>()?,
            ))
        };
        let (user, grant, groups) = headers().map_err(|e| {
            status::status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &format!("jitgate: {e}"),
            )
        })?;
        let held = Arc::new(Held {
            user,
            grant,
            groups,
            live: self.state.broker.live().register_for(&auth, &caller.login),
            auth,
        });
        if held.live.ended_by_logout() {
            self.held.insert(key, held).await;
            return Err(logged_out());
        }
        if held.live.is_cut() {
            return Err(status::forbidden(&format!(
                "jitgate: grant {} has ended; request access again",
                held.auth.grant_id()
            )));
        }
        self.held.insert(key, Arc::clone(&held)).await;
        Ok(held)
    }

    async fn denied(
        &self,
        cluster: &Cluster,
        caller: &Caller,
        attrs: &Attrs<'_>,
        resource: Resource<'_>,
        verb: &str,
        denied: crate::access::Denied,
    ) -> Response<Body> {
        let discovering = matches!(resource, Resource::KubeDiscovery { .. });
        let asked = match attrs {
            Attrs::Resource(r) if !discovering => describe(r, &cluster.name),
            _ => format!("access to cluster {:?}", cluster.name),
        };
        let user = &caller.identity.user;
        let what = format!("{}\0{verb}\0{resource}", cluster.name);
        if self.denials.worth_auditing(user, &what).await {
            let event =
                AuditDraft::new("kube.denied", user, &format!("{verb} {resource}")).reason(Some(&denied.reason));
            if let Err(e) = self.state.broker.store().append_audit(vec![event]).await {
                tracing::error!(error = %e, "cannot record a kube denial");
                self.denials.not_recorded(user, &what).await;
            }
        }
        tracing::info!(cluster = %cluster.name, %user, %verb, %resource, "kube request denied");
        let would = match denied.requestable.as_slice() {
            [] => "No profile you may request allows it.".to_owned(),
            [one] => format!("Profile {one} would: jitgate request {one} --reason TEXT --for DURATION"),
            many => format!(
                "Profiles that would: {}. Request one with: jitgate request {} --reason TEXT --for DURATION",
                many.join(", "),
                many[0]
            ),
        };
        let message = format!("jitgate: no active grant allows {asked}. {would}");
        if discovering {
            // kubectl reads discovery before anything else, and shows a refusal there only
            // as "unknown" unless it is plain text.
            let mut resp = status::forbidden(&message);
            *resp.body_mut() = Body::from(message);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return resp;
        }
        status::forbidden(&message)
    }
}

fn resource_of<'a>(cluster: &'a str, r: &ResourceAttrs<'a>) -> Resource<'a> {
    Resource::Kube {
        cluster,
        namespace: r.namespace,
        group: r.group,
        resource: r.resource,
        subresource: r.subresource,
        name: r.name,
    }
}

/// `create pods/exec "web-1" in namespace "payments" on cluster "prod"`.
fn describe(r: &ResourceAttrs<'_>, cluster: &str) -> String {
    let mut out = format!("{} {}", r.verb, r.resource);
    if !r.group.is_empty() {
        out.push('.');
        out.push_str(r.group);
    }
    if let Some(sub) = r.subresource {
        out.push('/');
        out.push_str(sub);
    }
    if let Some(name) = r.name {
        out.push_str(&format!(" {name:?}"));
    }
    match r.namespace {
        Some(ns) => out.push_str(&format!(" in namespace {ns:?}")),
        None => out.push_str(" across the cluster"),
    }
    out.push_str(&format!(" on cluster {cluster:?}"));
    out
}

/// The paths kubectl reads to learn the API: open to anyone with a grant on the cluster.
fn discovery(path: &str) -> bool {
    let p = path.trim_end_matches('/');
    matches!(p, "/api" | "/apis" | "/version")
        || p.starts_with("/api/") && p.matches('/').count() == 2
        || p.starts_with("/apis/") && p.matches('/').count() <= 3
        || p == "/openapi/v2"
        || p == "/openapi/v3"
        || p.starts_with("/openapi/v3/")
}

/// The answer to a token whose login ended while the token still lives.
fn logged_out() -> Response<Body> {
    status::unauthorized("jitgate: you logged out of the proxy; run `jitgate login`, and kubectl gets a new token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_paths() {
        for p in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/version",
            "/openapi/v2",
            "/openapi/v3/apis/apps/v1",
        ] {
            assert!(discovery(p), "{p}");
        }
        for p in [
            "/healthz",
            "/metrics",
            "/logs",
            "/",
            "/api/v1/pods",
            "/openapi",
            "/debug/pprof",
        ] {
            assert!(!discovery(p), "{p}");
        }
    }
}
