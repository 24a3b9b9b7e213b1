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

/// The same event in a protobuf watch (`application/vnd.kubernetes.protobuf;stream=watch`),
/// framed as the API server frames it: a 4-byte big-endian length, then a `v1.WatchEvent`
/// whose object is the Status in Kubernetes' protobuf envelope (`k8s\0`, then a
/// `runtime.Unknown` naming `v1` `Status`). client-go decodes it as it decodes the API
/// server's own.
pub fn watch_error_frame(reason: &str, message: &str) -> bytes::Bytes {
    use prost::Message;
    let code = StatusCode::FORBIDDEN;
    let status = proto::Status {
        metadata: Some(proto::ListMeta {}),
        status: "Failure".into(),
        message: message.into(),
        reason: reason.into(),
        code: i32::from(code.as_u16()),
    };
    let mut object = PROTOBUF_MAGIC.to_vec();
    proto::Unknown {
        type_meta: Some(proto::TypeMeta {
            api_version: "v1".into(),
            kind: "Status".into(),
        }),
        raw: status.encode_to_vec(),
    }
    .encode(&mut object)
    .expect("a Vec grows as needed");
    let event = proto::WatchEvent {
        r#type: "ERROR".into(),
        object: Some(proto::RawExtension { raw: object }),
    };
    let body = event.encode_to_vec();
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame.into()
}

/// What starts an object in Kubernetes' protobuf encoding.
pub const PROTOBUF_MAGIC: &[u8] = b"k8s\0";

/// The messages of a protobuf watch event, with the field numbers of the Kubernetes API's
/// `generated.proto` files (apimachinery's `runtime` and `meta/v1`).
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WatchEvent {
        #[prost(string, tag = "1")]
        pub r#type: String,
        #[prost(message, optional, tag = "2")]
        pub object: Option<RawExtension>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RawExtension {
        #[prost(bytes = "vec", tag = "1")]
        pub raw: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Unknown {
        #[prost(message, optional, tag = "1")]
        pub type_meta: Option<TypeMeta>,
        #[prost(bytes = "vec", tag = "2")]
        pub raw: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeMeta {
        #[prost(string, tag = "1")]
        pub api_version: String,
        #[prost(string, tag = "2")]
        pub kind: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListMeta {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<ListMeta>,
        #[prost(string, tag = "2")]
        pub status: String,
        #[prost(string, tag = "3")]
        pub message: String,
        #[prost(string, tag = "4")]
        pub reason: String,
        #[prost(int32, tag = "6")]
        pub code: i32,
    }
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
