//! A webhook receiver that checks deliveries as the Standard Webhooks scheme asks a
//! receiver to: the `webhook-signature` HMAC over `{id}.{timestamp}.{body}` with the shared
//! secret (compared in constant time), a timestamp within five minutes, and each
//! `webhook-id` taken once. It can answer 503 for a while, and redirect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// A delivery that passed every check.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: String,
    pub body: Value,
    pub at: SystemTime,
}

#[derive(Default)]
struct Inbox {
    key: Vec<u8>,
    taken: Vec<Delivery>,
    /// Attempts per webhook-id, repeats and refusals included.
    attempts: HashMap<String, usize>,
    /// Deliveries refused, and why.
    refused: Vec<String>,
    /// Deliveries of an id already taken.
    repeats: usize,
    down_until: Option<Instant>,
    redirect_to: Option<String>,
    /// Answers only after this long, as a receiver that hangs.
    hang: Option<Duration>,
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    /// The secret as configured: `whsec_` and base64.
    pub secret: String,
    inbox: Arc<Mutex<Inbox>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        Receiver::start_on("127.0.0.1")
    }

    /// On another loopback address (`127.0.0.2`), to tell receivers apart by address.
    pub fn start_on(ip: &str) -> Receiver {
        use rand::RngCore;
        let mut key = vec![0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(&key));
        let inbox = Arc::new(Mutex::new(Inbox {
            key,
            ..Inbox::default()
        }));
        let state = Arc::clone(&inbox);
        let app = axum::Router::new().route("/hooks", post(receive)).with_state(state);
        let addr = super::slack::serve_on_thread(&format!("{ip}:0"), app);
        Receiver {
            url: format!("http://{addr}/hooks"),
            secret,
            inbox,
        }
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.inbox.lock().unwrap().taken.clone()
    }

    /// The `type`s delivered, in order.
    pub fn types(&self) -> Vec<String> {
        self.deliveries()
            .iter()
            .map(|d| d.body["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    pub fn attempts(&self, id: &str) -> usize {
        self.inbox.lock().unwrap().attempts.get(id).copied().unwrap_or(0)
    }

    pub fn all_attempts(&self) -> usize {
        self.inbox.lock().unwrap().attempts.values().sum()
    }

    /// How many signed deliveries came again after their id was taken.
    pub fn repeats(&self) -> usize {
        self.inbox.lock().unwrap().repeats
    }

    pub fn refused(&self) -> Vec<String> {
        self.inbox.lock().unwrap().refused.clone()
    }

    pub fn go_down_for(&self, d: Duration) {
        self.inbox.lock().unwrap().down_until = Some(Instant::now() + d);
    }

    pub fn hang(&self, d: Duration) {
        self.inbox.lock().unwrap().hang = Some(d);
    }

    pub fn redirect_to(&self, url: &str) {
        self.inbox.lock().unwrap().redirect_to = Some(url.to_owned());
    }
}

async fn receive(State(inbox): State<Arc<Mutex<Inbox>>>, headers: HeaderMap, body: Bytes) -> Response {
    let hang = inbox.lock().unwrap().hang;
    if let Some(d) = hang {
        tokio::time::sleep(d).await;
    }
    let mut inbox = inbox.lock().unwrap();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let id = header("webhook-id");
    *inbox.attempts.entry(id.clone()).or_default() += 1;
    if let Some(to) = &inbox.redirect_to {
        return (StatusCode::FOUND, [("location", to.clone())]).into_response();
    }
    if inbox.down_until.is_some_and(|t| Instant::now() < t) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let timestamp = header("webhook-timestamp");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let fresh = timestamp.parse::<i64>().is_ok_and(|t| (now - t).abs() <= 300);
    let mut mac = Hmac::<Sha256>::new_from_slice(&inbox.key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&body);
    // The header may list several signatures (during a key rotation); one must match.
    let signed = header("webhook-signature").split(' ').any(|sig| {
        sig.strip_prefix("v1,")
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .is_some_and(|raw| mac.clone().verify_slice(&raw).is_ok())
    });
    let refuse = |inbox: &mut Inbox, why: String| {
        inbox.refused.push(why);
        StatusCode::BAD_REQUEST.into_response()
    };
    if id.is_empty() || !signed {
        return refuse(&mut inbox, format!("bad signature on {id:?}"));
    }
    if !fresh {
        return refuse(&mut inbox, format!("stale timestamp {timestamp:?}"));
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return refuse(&mut inbox, "not application/json".into());
    }
    // Repeats of a delivered id are acknowledged and dropped, as the scheme asks.
    if inbox.taken.iter().any(|d| d.id == id) {
        inbox.repeats += 1;
        return StatusCode::NO_CONTENT.into_response();
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return refuse(&mut inbox, "body is not JSON".into());
    };
    inbox.taken.push(Delivery {
        id,
        body,
        at: SystemTime::now(),
    });
    StatusCode::NO_CONTENT.into_response()
}
