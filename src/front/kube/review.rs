//! What callers ask about themselves. `kubectl auth can-i` posts a SelfSubjectAccessReview;
//! its honest answer here is "only if a grant allows it and the cluster's RBAC does too", so
//! the proxy answers "no" itself when no grant allows the asked access, and otherwise asks
//! the API server as the holder of the grant that does.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::header::{self, HeaderValue};
use axum::http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::attrs::ResourceAttrs;
use super::{discovery, forward, status, Caller, Cluster, Held, KubeFront};
use crate::access::{Action, Resource};
use crate::time::Timestamp;

const AUTHORIZATION_GROUP: &str = "authorization.k8s.io";

/// Reviews of the caller's own access and identity (`auth can-i`, `auth whoami`): any
/// grant on the cluster may ask them.
pub(super) fn is_self_review(r: &ResourceAttrs<'_>) -> bool {
    r.verb == "create"
        && r.subresource.is_none()
        && r.name.is_none()
        && match r.group {
            AUTHORIZATION_GROUP => r.resource == "selfsubjectaccessreviews",
            "authentication.k8s.io" => r.resource == "selfsubjectreviews",
            _ => false,
        }
}

/// `kubectl auth can-i --list`: the cluster would answer with the RBAC rules of the grant's
/// groups in any namespace, which says more than the grant allows and not what it allows.
pub(super) fn is_rules_review(r: &ResourceAttrs<'_>) -> bool {
    r.verb == "create" && r.group == AUTHORIZATION_GROUP && r.resource == "selfsubjectrulesreviews"
}

pub(super) fn is_access_review(r: &ResourceAttrs<'_>) -> bool {
    is_self_review(r) && r.group == AUTHORIZATION_GROUP && r.resource == "selfsubjectaccessreviews"
}

/// What a SelfSubjectAccessReview asks, in whichever encoding it came.
#[derive(Deserialize, Clone, PartialEq, prost::Message)]
#[serde(default, rename_all = "camelCase")]
struct Spec {
    #[prost(message, optional, tag = "1")]
    resource_attributes: Option<Asked>,
    #[prost(message, optional, tag = "2")]
    non_resource_attributes: Option<AskedPath>,
}

#[derive(Deserialize, Clone, PartialEq, prost::Message)]
#[serde(default)]
struct Asked {
    #[prost(string, tag = "1")]
    namespace: String,
    #[prost(string, tag = "2")]
    verb: String,
    #[prost(string, tag = "3")]
    group: String,
    #[prost(string, tag = "5")]
    resource: String,
    #[prost(string, tag = "6")]
    subresource: String,
    #[prost(string, tag = "7")]
    name: String,
}

#[derive(Deserialize, Clone, PartialEq, prost::Message)]
#[serde(default)]
struct AskedPath {
    #[prost(string, tag = "1")]
    path: String,
    #[prost(string, tag = "2")]
    verb: String,
}

#[derive(Deserialize)]
struct JsonReview {
    spec: Spec,
}

/// The envelope of Kubernetes' protobuf encoding (`runtime.Unknown`), after its magic.
#[derive(Clone, PartialEq, prost::Message)]
struct Envelope {
    #[prost(bytes = "vec", tag = "2")]
    raw: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoReview {
    #[prost(message, optional, tag = "2")]
    spec: Option<Spec>,
}

use super::status::PROTOBUF_MAGIC;

/// The review's spec from a JSON or protobuf body (kubectl sends protobuf).
fn read_spec(body: &[u8]) -> Option<Spec> {
    use prost::Message;
    if let Some(rest) = body.strip_prefix(PROTOBUF_MAGIC) {
        let envelope = Envelope::decode(rest).ok()?;
        return ProtoReview::decode(envelope.raw.as_slice()).ok()?.spec;
    }
    serde_json::from_slice::<JsonReview>(body).ok().map(|r| r.spec)
}

impl KubeFront {
    pub(super) async fn access_review(
        &self,
        cluster: &Cluster,
        caller: &Caller,
        req: Request<Incoming>,
        path: &str,
        held: Arc<Held>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = match forward::read_body(&parts.headers, body).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let Some(spec) = read_spec(&body) else {
            return status::bad_request("jitgate: the body is not a SelfSubjectAccessReview (JSON or protobuf)");
        };
        let now = Timestamp::now();
        let broker = &self.state.broker;
        let decision = match (&spec.resource_attributes, &spec.non_resource_attributes) {
            (Some(a), None) => {
                let resource = Resource::Kube {
                    cluster: &cluster.name,
                    namespace: opt(a.namespace.as_str()),
                    group: &a.group,
                    resource: &a.resource,
                    subresource: opt(a.subresource.as_str()),
                    name: opt(a.name.as_str()),
                };
                broker.decision(&caller.identity, resource, Action::Kube { verb: &a.verb }, now)
            }
            (None, Some(p)) if discovery(&p.path) && p.verb == "get" => broker.decision(
                &caller.identity,
                Resource::KubeDiscovery { cluster: &cluster.name },
                Action::Kube { verb: "get" },
                now,
            ),
            (None, Some(p)) => return answer(&spec, &format!("jitgate serves no non-resource path {:?}", p.path)),
            _ => return status::bad_request(
                "jitgate: a SelfSubjectAccessReview needs exactly one of resourceAttributes and nonResourceAttributes",
            ),
        };
        // Asked as the holder of the grant that allows it, so the API server applies that
        // grant's groups.
        let held = match decision {
            Ok(Ok(auth)) if auth.grant_id() == held.auth.grant_id() => held,
            Ok(Ok(auth)) => match self.hold(cluster, caller, auth).await {
                Ok(h) => h,
                Err(resp) => return resp,
            },
            Ok(Err(denied)) => return answer(&spec, &denied.reason),
            Err(e) => {
                tracing::error!(error = %e, "cannot decide on an access review; refusing");
                return status::unavailable("jitgate: the proxy cannot decide on access right now; try again shortly");
            }
        };
        let attrs = super::attrs::Attrs::NonResource { path, verb: "post" };
        forward::Forward {
            cluster,
            held,
            path,
            attrs: &attrs,
            peer,
        }
        .plain(parts, body)
        .await
    }
}

fn opt(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// The review, answered "no" by the proxy with its reason, as the API server answers (in
/// JSON, which every client accepts).
fn answer(spec: &Spec, reason: &str) -> Response<Body> {
    let mut asked = serde_json::Map::new();
    if let Some(a) = &spec.resource_attributes {
        let fields = [
            ("namespace", &a.namespace),
            ("verb", &a.verb),
            ("group", &a.group),
            ("resource", &a.resource),
            ("subresource", &a.subresource),
            ("name", &a.name),
        ];
        let attrs: serde_json::Map<String, serde_json::Value> = fields
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_owned(), v.clone().into()))
            .collect();
        asked.insert("resourceAttributes".into(), attrs.into());
    }
    if let Some(p) = &spec.non_resource_attributes {
        asked.insert(
            "nonResourceAttributes".into(),
            serde_json::json!({ "path": p.path, "verb": p.verb }),
        );
    }
    let review = serde_json::json!({
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {},
        "spec": asked,
        "status": { "allowed": false, "reason": format!("jitgate: {reason}") },
    });
    let mut resp = Response::new(Body::from(review.to_string()));
    *resp.status_mut() = StatusCode::CREATED;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
