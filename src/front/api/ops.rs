//! Audit log access, JWKS, health and metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use super::auth::Caller;
use super::{ApiError, ApiQuery, ApiState};
use crate::time::Timestamp;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    since: Option<String>,
    #[serde(default)]
    after_seq: i64,
    limit: Option<u32>,
}

pub async fn audit(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    if !state.broker.policy().is_admin(&caller.identity) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only admins may read the audit log",
        ));
    }
    let since = q
        .since
        .as_deref()
        .map(Timestamp::parse_rfc3339)
        .transpose()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("since: {e}")))?;
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let events = state.broker.store().audit_events(q.after_seq, since, limit).await?;
    Ok(Json(events.iter().map(|e| e.to_json()).collect()))
}

pub async fn jwks(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(state.tokens.jwks().clone()),
    )
}

pub async fn healthz(State(state): State<Arc<ApiState>>) -> Result<Json<serde_json::Value>, ApiError> {
    state.broker.store().ping().await?;
    Ok(Json(serde_json::json!({ "status": "ok" })))
}

pub async fn metrics(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
