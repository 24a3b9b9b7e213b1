//! The JSON API (`/api/v1/…`), JWKS, health and metrics. Errors leave here exactly once, as
//! `{"error": CODE, "reason": TEXT}` with a fitting status.

mod access;
mod auth;
mod kube;
pub use auth::Invalid;
mod ops;
mod slack;
pub(crate) use slack::{confirm_link, end_link, start_link};
pub mod ssh;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;

use crate::access::Refusal;
use crate::broker::{Broker, BrokerError};
use crate::front::web::{self, Site};
use crate::identity::oidc::Providers;
use crate::identity::session::Sessions;
use crate::identity::TokenIssuer;
use crate::store::StoreError;

pub(crate) use access::MAX_REASON_CHARS;
pub use auth::LoginLimiter;

/// Bodies larger than this are refused with 413 before they are parsed.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub struct ApiState {
    pub broker: Arc<Broker>,
    pub tokens: Arc<TokenIssuer>,
    pub limiter: LoginLimiter,
    pub metrics: PrometheusHandle,
    pub sessions: Sessions,
    pub idps: Arc<Providers>,
    pub site: Site,
    /// `[auth] token_refresh`: IdP logins' tokens may be renewed after a re-check at the IdP.
    pub token_refresh: bool,
    pub ssh: ssh::SshState,
    /// The configured browser apps, for the login handoff and the request page.
    pub apps: Vec<crate::front::apps::AppSite>,
    /// `[[kube.clusters]]` names, for kubectl credentials.
    pub kube_clusters: Vec<String>,
    /// The Slack app (`[slack]`), for linking accounts and taking button presses.
    pub chat: Option<Arc<crate::notify::slack::Chat>>,
    /// `[[notify]]` targets by name, described for people.
    pub notify_places: Arc<std::collections::BTreeMap<String, String>>,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/login", post(auth::login))
        .route("/api/v1/login/providers", get(auth::providers))
        .route("/api/v1/login/exchange", post(auth::exchange))
        .route("/api/v1/login/refresh", post(auth::refresh))
        .route("/api/v1/login/device", post(auth::device_start))
        .route("/api/v1/login/device/poll", post(auth::device_poll))
        .route("/api/v1/logout", post(auth::logout))
        .route("/api/v1/whoami", get(auth::whoami))
        .route("/api/v1/profiles", get(access::profiles))
        .route(
            "/api/v1/requests",
            get(access::list_requests).post(access::create_request),
        )
        .route("/api/v1/requests/{id}", get(access::get_request))
        .route("/api/v1/requests/{id}/approve", post(access::approve))
        .route("/api/v1/requests/{id}/deny", post(access::deny))
        .route("/api/v1/requests/{id}/cancel", post(access::cancel))
        .route("/api/v1/grants", get(access::list_grants))
        .route("/api/v1/grants/{id}", get(access::get_grant))
        .route("/api/v1/grants/{id}/revoke", post(access::revoke))
        .route("/api/v1/audit", get(ops::audit))
        .route("/api/v1/links", get(slack::links))
        .route("/api/v1/links/slack", post(slack::link_start).delete(slack::unlink))
        .route("/api/v1/links/slack/confirm", post(slack::link_confirm))
        .route("/integrations/slack/interactions", post(slack::interactions))
        .route("/api/v1/kube/clusters", get(kube::clusters))
        .route("/api/v1/kube/token", post(kube::token))
        .route("/api/v1/ssh/cert", post(ssh::cert))
        .route("/api/v1/ssh/config", get(ssh::config))
        .route("/ssh/connect", get(ssh::connect))
        .route("/.well-known/jwks.json", get(ops::jwks))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .merge(web::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(record_metrics))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("jitgate_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("jitgate_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    reason: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            reason: reason.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    fn store(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(detail) => {
                tracing::error!(%detail, "store unavailable; refusing new decisions");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the proxy's store is unavailable; no access is granted until it is back",
                )
            }
            StoreError::AlreadyExists(what) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", format!("{what} already exists"))
            }
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the proxy's log",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.error, "reason": self.reason });
        (self.status, Json(body)).into_response()
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let reason = e.to_string();
        match e {
            BrokerError::Refused(r) => {
                let (status, code) = match r {
                    Refusal::ReasonRequired { .. }
                    | Refusal::DurationTooLong { .. }
                    | Refusal::DecisionReasonRequired => (StatusCode::BAD_REQUEST, "invalid_request"),
                    Refusal::NotRequester { .. }
                    | Refusal::NotApprover { .. }
                    | Refusal::SelfApproval
                    | Refusal::NotOwner
                    | Refusal::MayNotRevoke => (StatusCode::FORBIDDEN, "forbidden"),
                    Refusal::AlreadyApproved
                    | Refusal::NotPending { .. }
                    | Refusal::RequestExpired { .. }
                    | Refusal::GrantNotActive { .. }
                    | Refusal::NotYetExpired => (StatusCode::CONFLICT, "conflict"),
                };
                ApiError::new(status, code, reason)
            }
            BrokerError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", reason),
            BrokerError::BadInput(_) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", reason),
            BrokerError::Contended(_) => ApiError::new(StatusCode::CONFLICT, "conflict", reason),
            BrokerError::Store(s) => ApiError::store(s),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::store(e)
    }
}

/// `Json` whose rejections are our error body, one line, with the right status.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let status = r.status();
    let (status, code, reason) = match r {
        JsonRejection::MissingJsonContentType(_) => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as application/json".to_owned(),
        ),
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        ),
        other => (StatusCode::BAD_REQUEST, "invalid_json", other.body_text()),
    };
    ApiError::new(status, code, reason)
}

/// `Query` whose rejections are our error body.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(rejection) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                rejection.body_text(),
            )),
        }
    }
}

/// Free text that people write (reasons) is stored and shown to others: it must be printable
/// and of a sane length. Both stores then keep exactly the same bytes.
pub fn check_text(field: &str, value: &str, max_chars: usize) -> Result<(), ApiError> {
    let bad = |why: String| {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{field}: {why}"),
        ))
    };
    if value.chars().any(char::is_control) {
        return bad("must not contain control characters".into());
    }
    if value.chars().count() > max_chars {
        return bad(format!("longer than {max_chars} characters"));
    }
    Ok(())
}
