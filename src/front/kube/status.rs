//! Answers in the API server's own form, a `v1.Status`, so that kubectl shows them as it
//! shows the cluster's: `Error from server (Forbidden): …`.

use axum::body::Body;
use axum::http::header::{self, HeaderValue};
use axum::http::{Response, StatusCode};

/// A `Status` with `reason` (Forbidden, Unauthorized, NotFound, BadRequest, …) and a
/// message for people.
pub fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = failure(code, reason, message);
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub fn bad_request(message: &str) -> Response<Body> {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

pub fn unauthorized(message: &str) -> Response<Body> {
    status(StatusCode::UNAUTHORIZED, "Unauthorized", message)
}

pub fn forbidden(message: &str) -> Response<Body> {
    status(StatusCode::FORBIDDEN, "Forbidden", message)
}

pub fn unavailable(message: &str) -> Response<Body> {
    status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", message)
}

/// One watch event of type ERROR carrying a Status, as the API server ends a watch it can
/// no longer serve (JSON watch framing: one object per line).
pub fn watch_error_event(reason: &str, message: &str) -> bytes::Bytes {
    let event = serde_json::json!({ "type": "ERROR", "object": failure(StatusCode::FORBIDDEN, reason, message) });
    let mut line = event.to_string().into_bytes();
    line.push(b'\n');
    line.into()
}

fn failure(code: StatusCode, reason: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}
