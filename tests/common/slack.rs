//! A Slack Web API stand-in: Slack cannot run here, so this answers the calls the proxy makes
//! as Slack documents them — `chat.postMessage`, `chat.update`, `users.lookupByEmail` — with
//! the same request checks (bearer token, channel, block limits) and the same errors
//! (`invalid_auth`, `channel_not_found`, `message_not_found`, `invalid_blocks`,
//! `users_not_found`, HTTP 429 `ratelimited` with `Retry-After`), and records every call.
//! It can also be taken down for a while, as Slack is during an outage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{json, Value};

/// One call as Slack received it.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub args: Value,
    pub at: SystemTime,
    /// What Slack answered: `ok`, or the error.
    pub outcome: String,
}

/// A message as it now stands in a channel.
#[derive(Clone, Debug)]
pub struct Posted {
    pub channel: String,
    pub ts: String,
    pub thread_ts: Option<String>,
    pub text: String,
    pub blocks: Value,
    pub updates: usize,
}

impl Posted {
    /// The `action_id`s of its buttons, in order.
    pub fn buttons(&self) -> Vec<String> {
        self.blocks
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["type"] == "actions")
            .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["action_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// The text of all its sections and context, joined.
    pub fn all_text(&self) -> String {
        let mut out = Vec::new();
        for b in self.blocks.as_array().into_iter().flatten() {
            if let Some(t) = b["text"]["text"].as_str() {
                out.push(t.to_owned());
            }
            for e in b["elements"].as_array().into_iter().flatten() {
                if let Some(t) = e["text"].as_str() {
                    out.push(t.to_owned());
                }
            }
        }
        out.join("\n")
    }
}

#[derive(Default)]
struct Workspace {
    token: String,
    /// `#name` and id, both to the id.
    channels: HashMap<String, String>,
    /// email to user id.
    users: HashMap<String, String>,
    messages: Vec<Posted>,
    /// (channel, user, text) of each ephemeral message.
    ephemerals: Vec<(String, String, String)>,
    calls: Vec<Call>,
    next_ts: u64,
    down_until: Option<Instant>,
    /// The next this many calls are rate-limited, asking for this many seconds.
    rate_limited: Option<(usize, u64)>,
}

#[derive(Clone)]
pub struct Slack {
    /// The Web API base, `http://127.0.0.1:PORT/api/`.
    pub api_url: String,
    pub token: String,
    ws: Arc<Mutex<Workspace>>,
}

impl Slack {
    /// A workspace with the channels (`("#name", "CID")`) and users (`("email", "UID")`)
    /// given, serving on a thread of its own.
    pub fn start(channels: &[(&str, &str)], users: &[(&str, &str)]) -> Slack {
        let token = format!("xoxb-test-{}", super::random_suffix());
        let mut ws = Workspace {
            token: token.clone(),
            next_ts: 1,
            ..Workspace::default()
        };
        for (name, id) in channels {
            ws.channels.insert((*name).to_owned(), (*id).to_owned());
            ws.channels.insert((*id).to_owned(), (*id).to_owned());
        }
        for (email, id) in users {
            ws.users.insert((*email).to_owned(), (*id).to_owned());
            // A user id as channel names the app's direct messages with that user.
            let dm = format!("D{}", &id[1..]);
            ws.channels.insert((*id).to_owned(), dm.clone());
            ws.channels.insert(dm.clone(), dm);
        }
        let ws = Arc::new(Mutex::new(ws));
        let state = Arc::clone(&ws);
        let app = axum::Router::new().route("/api/{method}", post(api)).with_state(state);
        let addr = serve_on_thread("127.0.0.1:0", app);
        Slack {
            api_url: format!("http://{addr}/api/"),
            token,
            ws,
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.ws.lock().unwrap().calls.clone()
    }

    /// Messages at the top of a channel (not thread replies), oldest first.
    pub fn top_messages(&self, channel: &str) -> Vec<Posted> {
        let ws = self.ws.lock().unwrap();
        ws.messages
            .iter()
            .filter(|m| m.channel == channel && m.thread_ts.is_none())
            .cloned()
            .collect()
    }

    /// Replies in the thread under `ts`, oldest first.
    pub fn replies(&self, channel: &str, ts: &str) -> Vec<Posted> {
        let ws = self.ws.lock().unwrap();
        ws.messages
            .iter()
            .filter(|m| m.channel == channel && m.thread_ts.as_deref() == Some(ts))
            .cloned()
            .collect()
    }

    /// The ephemeral messages `user` was shown, oldest first.
    pub fn ephemerals(&self, user: &str) -> Vec<String> {
        let ws = self.ws.lock().unwrap();
        ws.ephemerals
            .iter()
            .filter(|(_, u, _)| u == user)
            .map(|(_, _, t)| t.clone())
            .collect()
    }

    /// The form body Slack posts to the interactivity URL when `user` presses the button
    /// `action_id` of `message`: a `block_actions` payload.
    pub fn press(message: &Posted, user: &str, action_id: &str) -> String {
        let (block, element) = message
            .blocks
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["type"] == "actions")
            .find_map(|b| {
                b["elements"]
                    .as_array()?
                    .iter()
                    .find(|e| e["action_id"] == action_id)
                    .map(|e| (b.clone(), e.clone()))
            })
            .unwrap_or_else(|| panic!("no button {action_id} in {:?}", message.blocks));
        // Every press is its own: Slack gives each a fresh trigger id and action time.
        let nanos = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let mut action = element.clone();
        action["block_id"] = block["block_id"].clone();
        action["action_ts"] = json!(format!("{}.{:06}", nanos / 1_000_000_000, (nanos / 1000) % 1_000_000));
        let payload = json!({
            "type": "block_actions",
            "user": {"id": user, "username": user.to_lowercase(), "name": user.to_lowercase(), "team_id": "T0TEST"},
            "api_app_id": "A0TEST",
            "token": "deprecated-verification-token",
            "container": {"type": "message", "message_ts": message.ts, "channel_id": message.channel, "is_ephemeral": false},
            "trigger_id": format!("{nanos}.1.abcdef"),
            "team": {"id": "T0TEST", "domain": "test"},
            "channel": {"id": message.channel, "name": "dba-approvals"},
            "message": {"type": "message", "ts": message.ts, "text": message.text, "blocks": message.blocks},
            "response_url": "https://hooks.slack.com/actions/T0TEST/1/abc",
            "actions": [action],
        });
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish()
    }

    /// A press of a button `message` no longer shows, as on a copy of it posted before
    /// the profile's `approve_in_chat` was turned off.
    pub fn press_stale(message: &Posted, user: &str, action_id: &str) -> String {
        let mut older = message.clone();
        let actions = older
            .blocks
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|b| b["type"] == "actions")
            .expect("an actions block");
        let id = actions["block_id"]
            .as_str()
            .unwrap()
            .trim_start_matches("jitgate:")
            .to_owned();
        actions["elements"].as_array_mut().unwrap().insert(
            0,
            json!({"type": "button", "action_id": action_id, "value": id,
                   "text": {"type": "plain_text", "text": "Approve"}}),
        );
        Slack::press(&older, user, action_id)
    }

    /// Slack's request signature headers for `body`, sent at `timestamp` (Unix seconds).
    pub fn sign(secret: &str, timestamp: i64, body: &str) -> [(String, String); 2] {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("v0:{timestamp}:{body}").as_bytes());
        [
            ("x-slack-request-timestamp".into(), timestamp.to_string()),
            (
                "x-slack-signature".into(),
                format!("v0={}", hex::encode(mac.finalize().into_bytes())),
            ),
        ]
    }

    /// Deletes a message, as a person in the channel can.
    pub fn delete(&self, channel: &str, ts: &str) {
        self.ws
            .lock()
            .unwrap()
            .messages
            .retain(|m| !(m.channel == channel && m.ts == ts));
    }

    /// Answers every call with 503 for `d`, as during an outage.
    pub fn go_down_for(&self, d: Duration) {
        self.ws.lock().unwrap().down_until = Some(Instant::now() + d);
    }

    /// Rate-limits the next `calls` calls, asking to wait `secs`.
    pub fn rate_limit(&self, calls: usize, secs: u64) {
        self.ws.lock().unwrap().rate_limited = Some((calls, secs));
    }
}

/// Serves `app` on `bind` from a thread and runtime of its own, so that plain (not async)
/// tests can use the stand-ins; returns the address it listens on.
pub fn serve_on_thread(bind: &str, app: axum::Router) -> std::net::SocketAddr {
    let bind = bind.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn api(
    State(ws): State<Arc<Mutex<Workspace>>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut ws = ws.lock().unwrap();
    let args = parse_args(&headers, &body);
    let (response, outcome) = handle(&mut ws, &method, &headers, &args);
    ws.calls.push(Call {
        method,
        args,
        at: SystemTime::now(),
        outcome,
    });
    response
}

fn handle(ws: &mut Workspace, method: &str, headers: &HeaderMap, args: &Value) -> (Response, String) {
    if ws.down_until.is_some_and(|t| Instant::now() < t) {
        return (
            (StatusCode::SERVICE_UNAVAILABLE, "upstream connect error").into_response(),
            "down".into(),
        );
    }
    if let Some((n, secs)) = ws.rate_limited {
        ws.rate_limited = (n > 1).then_some((n - 1, secs));
        let mut r = answer(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"ok": false, "error": "ratelimited"}),
        );
        r.headers_mut().insert("retry-after", secs.to_string().parse().unwrap());
        return (r, "ratelimited".into());
    }
    let fail = |error: &str| {
        (
            answer(StatusCode::OK, json!({"ok": false, "error": error})),
            error.to_owned(),
        )
    };
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    match auth.and_then(|a| a.strip_prefix("Bearer ")) {
        None => return fail("not_authed"),
        Some(t) if t != ws.token => return fail("invalid_auth"),
        Some(_) => {}
    }
    match method {
        "chat.postMessage" => {
            let Some(channel) = args["channel"].as_str().and_then(|c| ws.channels.get(c)).cloned() else {
                return fail("channel_not_found");
            };
            let text = args["text"].as_str().unwrap_or_default().to_owned();
            let blocks = blocks_of(args);
            if text.is_empty() && blocks.is_null() {
                return fail("no_text");
            }
            if let Err(why) = check_blocks(&blocks) {
                return (
                    answer(
                        StatusCode::OK,
                        json!({"ok": false, "error": "invalid_blocks", "errors": [why]}),
                    ),
                    "invalid_blocks".into(),
                );
            }
            let thread_ts = args["thread_ts"].as_str().map(str::to_owned);
            if let Some(t) = &thread_ts {
                if !ws.messages.iter().any(|m| m.channel == channel && &m.ts == t) {
                    return fail("thread_not_found");
                }
            }
            let ts = format!("1700000000.{:06}", ws.next_ts);
            ws.next_ts += 1;
            ws.messages.push(Posted {
                channel: channel.clone(),
                ts: ts.clone(),
                thread_ts,
                text: text.clone(),
                blocks: blocks.clone(),
                updates: 0,
            });
            let body = json!({"ok": true, "channel": channel, "ts": ts,
                "message": {"type": "message", "text": text, "blocks": blocks, "ts": ts}});
            (answer(StatusCode::OK, body), "ok".into())
        }
        "chat.update" => {
            // chat.update takes a channel id only, as Slack's does.
            let channel = args["channel"].as_str().unwrap_or_default().to_owned();
            if !ws.channels.values().any(|id| *id == channel) {
                return fail("channel_not_found");
            }
            let ts = args["ts"].as_str().unwrap_or_default().to_owned();
            let blocks = blocks_of(args);
            if let Err(why) = check_blocks(&blocks) {
                return (
                    answer(
                        StatusCode::OK,
                        json!({"ok": false, "error": "invalid_blocks", "errors": [why]}),
                    ),
                    "invalid_blocks".into(),
                );
            }
            let Some(m) = ws.messages.iter_mut().find(|m| m.channel == channel && m.ts == ts) else {
                return fail("message_not_found");
            };
            m.text = args["text"].as_str().unwrap_or_default().to_owned();
            m.blocks = blocks;
            m.updates += 1;
            let body = json!({"ok": true, "channel": channel, "ts": ts, "text": m.text});
            (answer(StatusCode::OK, body), "ok".into())
        }
        "chat.postEphemeral" => {
            let channel = args["channel"].as_str().unwrap_or_default();
            let Some(channel) = ws.channels.get(channel).cloned() else {
                return fail("channel_not_found");
            };
            let user = args["user"].as_str().unwrap_or_default().to_owned();
            if !ws.users.values().any(|u| *u == user) {
                return fail("user_not_found");
            }
            let text = args["text"].as_str().unwrap_or_default().to_owned();
            if text.is_empty() {
                return fail("no_text");
            }
            ws.ephemerals.push((channel, user, text));
            let ts = format!("1700000000.{:06}", ws.next_ts);
            ws.next_ts += 1;
            (
                answer(StatusCode::OK, json!({"ok": true, "message_ts": ts})),
                "ok".into(),
            )
        }
        "users.lookupByEmail" => match args["email"].as_str().and_then(|e| ws.users.get(e)) {
            Some(id) => (
                answer(
                    StatusCode::OK,
                    json!({"ok": true, "user": {"id": id, "deleted": false}}),
                ),
                "ok".into(),
            ),
            None => fail("users_not_found"),
        },
        _ => fail("unknown_method"),
    }
}

/// Slack takes arguments as JSON or as a form; in a form, `blocks` is JSON text.
fn parse_args(headers: &HeaderMap, body: &[u8]) -> Value {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if ct.starts_with("application/json") {
        return serde_json::from_slice(body).unwrap_or(Value::Null);
    }
    let mut map = serde_json::Map::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        map.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    Value::Object(map)
}

fn blocks_of(args: &Value) -> Value {
    match &args["blocks"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}

/// The Block Kit limits Slack enforces on the blocks the proxy sends.
fn check_blocks(blocks: &Value) -> Result<(), String> {
    if blocks.is_null() {
        return Ok(());
    }
    let list = blocks.as_array().ok_or("blocks must be an array")?;
    if list.len() > 50 {
        return Err("no more than 50 blocks".into());
    }
    let mut action_ids = std::collections::HashSet::new();
    for (i, b) in list.iter().enumerate() {
        let text_ok = |t: &Value, max: usize| {
            matches!(t["type"].as_str(), Some("mrkdwn" | "plain_text"))
                && t["text"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty() && s.chars().count() <= max)
        };
        match b["type"].as_str() {
            Some("section") => {
                if !text_ok(&b["text"], 3000) {
                    return Err(format!("[{i}] section text must be 1 to 3000 characters"));
                }
            }
            Some("context") => {
                let els = b["elements"]
                    .as_array()
                    .ok_or(format!("[{i}] context needs elements"))?;
                if els.is_empty() || els.len() > 10 || !els.iter().all(|e| text_ok(e, 3000)) {
                    return Err(format!("[{i}] context elements must be 1 to 10 texts"));
                }
            }
            Some("actions") => {
                let els = b["elements"].as_array().ok_or(format!("[{i}] actions need elements"))?;
                if els.is_empty() || els.len() > 25 {
                    return Err(format!("[{i}] actions must have 1 to 25 elements"));
                }
                if b["block_id"].as_str().is_some_and(|id| id.len() > 255) {
                    return Err(format!("[{i}] block_id longer than 255"));
                }
                for e in els {
                    if e["type"] != "button" {
                        return Err(format!("[{i}] only buttons are expected here"));
                    }
                    let label = &e["text"];
                    if label["type"] != "plain_text"
                        || !label["text"]
                            .as_str()
                            .is_some_and(|s| !s.is_empty() && s.chars().count() <= 75)
                    {
                        return Err(format!(
                            "[{i}] a button's text must be plain_text of 1 to 75 characters"
                        ));
                    }
                    let id = e["action_id"].as_str().unwrap_or_default();
                    if id.is_empty() || id.len() > 255 || !action_ids.insert(id.to_owned()) {
                        return Err(format!("[{i}] action_id {id:?} missing, too long or repeated"));
                    }
                    if e["value"].as_str().is_some_and(|v| v.len() > 2000)
                        || e["url"].as_str().is_some_and(|u| u.len() > 3000)
                    {
                        return Err(format!("[{i}] value or url too long"));
                    }
                    if let Some(style) = e["style"].as_str() {
                        if style != "primary" && style != "danger" {
                            return Err(format!("[{i}] style {style:?}"));
                        }
                    }
                }
            }
            Some("header" | "divider") => {}
            other => return Err(format!("[{i}] unknown block type {other:?}")),
        }
    }
    Ok(())
}
