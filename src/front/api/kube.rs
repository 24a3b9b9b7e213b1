//! What kubectl needs from the proxy: the clusters it serves, and for one of them a
//! short-lived token (the exec plugin's credential) bound to that cluster alone.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::auth::Caller;
use super::{ApiError, ApiJson, ApiState};
use crate::front::kube::{audience, PREFIX, TOKEN_TTL};
use crate::time::Timestamp;

/// The clusters behind the proxy, each with the URL kubectl uses for it.
pub async fn clusters(State(state): State<Arc<ApiState>>, _caller: Caller) -> Json<serde_json::Value> {
    let origin = &state.site.origin;
    let clusters: Vec<serde_json::Value> = state
        .kube_clusters
        .iter()
        .map(|name| serde_json::json!({ "name": name, "server": format!("{origin}{PREFIX}{name}") }))
        .collect();
    Json(serde_json::json!({ "clusters": clusters }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    cluster: String,
}

/// A token for one cluster (`aud = kube:{name}`), valid at most 15 minutes and never past
/// the login token that asked for it; logging out ends it.
pub async fn token(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    ApiJson(body): ApiJson<TokenBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !state.kube_clusters.contains(&body.cluster) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no cluster {:?} behind this proxy (clusters: {})",
                body.cluster,
                state.kube_clusters.join(", ")
            ),
        ));
    }
    let (token, claims) = state
        .tokens
        .derive(&caller.claims, &audience(&body.cluster), TOKEN_TTL, Timestamp::now())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
    Ok(Json(serde_json::json!({
        "token": token,
        "expires_at": claims.expires_at().to_rfc3339(),
    })))
}
