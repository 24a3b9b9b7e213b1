//! Profiles, requests, approvals and grants.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::{check_text, ApiError, ApiJson, ApiQuery, ApiState};
use crate::access::{AccessRequest, Grant};
use crate::broker::ProfileView;
use crate::notify::{announcements, Announcement};
use crate::time::{parse_duration, Timestamp};

pub async fn profiles(State(state): State<Arc<ApiState>>, caller: Caller) -> Json<Vec<ProfileView>> {
    Json(state.broker.profiles_for(&caller.identity))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRequest {
    profile: String,
    #[serde(default)]
    reason: String,
    duration: String,
}

pub async fn create_request(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    ApiJson(body): ApiJson<NewRequest>,
) -> Result<(StatusCode, Json<AccessRequest>), ApiError> {
    check_text("reason", &body.reason, MAX_REASON_CHARS)?;
    let duration = parse_duration(&body.duration)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("duration: {e}")))?;
    let request = state
        .broker
        .open_request(&caller.identity, &body.profile, body.reason, duration, Timestamp::now())
        .await?;
    Ok((StatusCode::CREATED, Json(request)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestsQuery {
    #[serde(default)]
    pending: bool,
}

pub async fn list_requests(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<RequestsQuery>,
) -> Result<Json<Vec<AccessRequest>>, ApiError> {
    Ok(Json(state.broker.requests(&caller.identity, q.pending).await?))
}

/// One request, with where it was announced and who was asked.
#[derive(Serialize)]
pub struct RequestView {
    #[serde(flatten)]
    request: AccessRequest,
    announced: Vec<Announcement>,
}

pub async fn get_request(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, ApiError> {
    let request = state.broker.visible_request(&caller.identity, &id).await?;
    // Where it was announced is a courtesy: a failed read of it must not hide the request.
    let policy = state.broker.policy();
    let overseer = policy.is_admin(&caller.identity)
        || policy
            .profile(&request.profile)
            .is_some_and(|p| p.may_approve(&caller.identity));
    let announced = match state.broker.store().request_notices(&request.id).await {
        Ok(notices) => {
            let all = announcements(&notices, &state.notify_places);
            if overseer {
                all
            } else {
                all.into_iter().map(Announcement::redacted).collect()
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, request_id = %request.id, "cannot read where the request was announced");
            Vec::new()
        }
    };
    Ok(Json(RequestView { announced, request }))
}

/// Reasons are a ticket id and a few words, not documents.
/// Reasons are for people: a few sentences, not a document.
pub(crate) const MAX_REASON_CHARS: usize = 1000;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    #[serde(default)]
    reason: Option<String>,
}

impl Decision {
    fn reason(self) -> Result<Option<String>, ApiError> {
        if let Some(r) = &self.reason {
            check_text("reason", r, MAX_REASON_CHARS)?;
        }
        Ok(self.reason)
    }
}

pub async fn approve(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Decision>,
) -> Result<Json<AccessRequest>, ApiError> {
    Ok(Json(
        state
            .broker
            .approve(&caller.identity, &id, body.reason()?, Timestamp::now())
            .await?,
    ))
}

pub async fn deny(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Decision>,
) -> Result<Json<AccessRequest>, ApiError> {
    let reason = body.reason()?.unwrap_or_default();
    Ok(Json(
        state
            .broker
            .deny(&caller.identity, &id, reason, Timestamp::now())
            .await?,
    ))
}

pub async fn cancel(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AccessRequest>, ApiError> {
    Ok(Json(
        state.broker.cancel(&caller.identity, &id, Timestamp::now()).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsQuery {
    #[serde(default)]
    all: bool,
}

pub async fn list_grants(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<GrantsQuery>,
) -> Result<Json<Vec<Grant>>, ApiError> {
    Ok(Json(state.broker.grants(&caller.identity, q.all).await?))
}

pub async fn get_grant(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Grant>, ApiError> {
    Ok(Json(state.broker.visible_grant(&caller.identity, &id).await?))
}

pub async fn revoke(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Decision>,
) -> Result<Json<Grant>, ApiError> {
    Ok(Json(
        state
            .broker
            .revoke(&caller.identity, &id, body.reason()?, Timestamp::now())
            .await?,
    ))
}
