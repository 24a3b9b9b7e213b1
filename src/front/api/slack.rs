//! Slack on the API side: linking a Slack account to a user (a one-time code sent by the
//! bot and typed back by the logged-in user proves both ends), and the interactivity
//! endpoint that takes button presses.
//!
//! A press counts as a decision only when Slack signed it (HMAC-SHA256 over
//! `v0:{timestamp}:{body}` with the signing secret, within five minutes, each payload once),
//! the profile allows deciding in chat, the Slack account is linked, and the linked user
//! may decide it by the same policy as everywhere else. Every other press is answered
//! privately with why and a link to the console, and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::auth::Caller;
use super::{ApiError, ApiJson, ApiQuery, ApiState};
use crate::access::Identity;
use crate::audit::AuditDraft;
use crate::broker::BrokerError;
use crate::notify::slack::{escape, Chat, APPROVE, DENY};
use crate::notify::SLACK;
use crate::store::{ChatLink, StoreError};
use crate::time::Timestamp;

/// How far a request's timestamp may be from now, as Slack advises.
const SIGNATURE_WINDOW: i64 = 5 * 60;
/// A link code's life, and the wrong codes it survives.
const LINK_CODE_TTL: Duration = Duration::from_secs(600);
const LINK_CODE_TRIES: u64 = 5;

fn chat(state: &ApiState) -> Result<&Arc<Chat>, ApiError> {
    state.chat.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this proxy has no Slack app configured ([slack] in its config)",
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkStart {
    email: Option<String>,
    slack_user: Option<String>,
}

/// Sends a one-time code to the Slack account named by id or email (default: the caller's
/// name, when it is an email address). The account is linked once the code comes back.
pub async fn link_start(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    ApiJson(body): ApiJson<LinkStart>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let started = start_link(&state, &caller.identity, body.email, body.slack_user).await?;
    Ok((StatusCode::ACCEPTED, Json(started)))
}

/// The API's and the console's first step of linking: a code sent to the Slack account.
pub(crate) async fn start_link(
    state: &ApiState,
    who: &Identity,
    email: Option<String>,
    slack_user: Option<String>,
) -> Result<Value, ApiError> {
    let chat = chat(state)?;
    let token = chat.token.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the Slack app has no bot token ([slack] bot_token_env), so it cannot send a code",
        )
    })?;
    // Counted before anything is looked up: emails are not to be probed at will either.
    if !chat.allow_link_code(format!("user:{}", who.user), 5).await {
        return Err(too_many("by you"));
    }
    let bad = |why: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", why);
    let slack_user = match (slack_user, email) {
        (Some(_), Some(_)) => return Err(bad("give slack_user or email, not both".into())),
        (Some(id), None) => {
            if !(id.len() >= 3
                && id.len() <= 32
                && id.starts_with(['U', 'W'])
                && id.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()))
            {
                return Err(bad(format!("{id:?} is not a Slack member id (U0123ABCD)")));
            }
            id
        }
        (None, email) => {
            let email =
                match email {
                    Some(e) => e,
                    None if who.user.contains('@') => who.user.clone(),
                    None => return Err(bad(
                        "your user name is not an email address: name your Slack account with --email or --slack-user"
                            .into(),
                    )),
                };
            if email.len() > 254 || !email.contains('@') || email.contains(char::is_whitespace) {
                return Err(bad(format!("{email:?} is not an email address")));
            }
            chat.api
                .lookup_by_email(token, &email)
                .await
                .map_err(slack_failed)?
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        format!("no account in the Slack workspace has the email {email}"),
                    )
                })?
        }
    };
    // Per asker and account, so nobody can use up someone else's codes; and a higher cap
    // per account, so nobody is sent codes without end by many askers.
    if !chat
        .allow_link_code(format!("slack:{slack_user}:{}", who.user), 5)
        .await
        || !chat.allow_link_code(format!("slack:{slack_user}"), 20).await
    {
        return Err(too_many("for that Slack account"));
    }
    let code = {
        use rand::Rng;
        format!("{:06}", rand::thread_rng().gen_range(0..1_000_000u32))
    };
    let now = Timestamp::now();
    let expires_at = now.saturating_add(LINK_CODE_TTL);
    let key = link_key(&who.user);
    let payload = json!({
        "slack_user": slack_user,
        "code": hash(&code),
        "tries": 0,
        "expires_at": expires_at.as_millis(),
    })
    .to_string();
    // A new code replaces one not yet used.
    let store = state.broker.store();
    store.take_flow(&key, now).await?;
    store.put_flow(&key, &payload, expires_at).await?;
    let text = format!(
        "Your code to link this Slack account to jitgate user *{}*: *{code}*\n\
         Enter it within 10 minutes with `jitgate link slack --code {code}`, or on the console's Slack page. \
         If you did not ask for this, ignore it: nothing is linked without the code.",
        escape(&who.user)
    );
    let message = crate::notify::slack::Message {
        text: text.clone(),
        blocks: json!([{"type": "section", "text": {"type": "mrkdwn", "text": text}}]),
    };
    if let Err(e) = chat.api.post(token, &slack_user, &message, None).await {
        store.take_flow(&key, now).await?;
        return Err(slack_failed(e));
    }
    store
        .append_audit(vec![
            AuditDraft::new("chat.link_started", &who.user, &slack_user).details(json!({"provider": SLACK}))
        ])
        .await?;
    Ok(json!({"provider": SLACK, "slack_user": slack_user, "expires_at": expires_at}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfirm {
    code: String,
}

pub async fn link_confirm(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    ApiJson(body): ApiJson<LinkConfirm>,
) -> Result<Json<ChatLink>, ApiError> {
    Ok(Json(confirm_link(&state, &caller.identity, &body.code).await?))
}

/// The second step: the code back from a logged-in user links the account it was sent to.
pub(crate) async fn confirm_link(state: &ApiState, who: &Identity, code: &str) -> Result<ChatLink, ApiError> {
    chat(state)?;
    let store = state.broker.store();
    let now = Timestamp::now();
    let key = link_key(&who.user);
    let none = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no Slack link is waiting for a code (or it expired): start with `jitgate link slack` (or the console's Slack page)",
        )
    };
    // Taken, not read: one guess at a time holds the code, so guesses sent at once cannot
    // share a try (the others find nothing waiting), and two right ones link once.
    let pending: Value = store
        .take_flow(&key, now)
        .await?
        .and_then(|p| serde_json::from_str(&p).ok())
        .ok_or_else(none)?;
    let expected = pending["code"].as_str().unwrap_or_default();
    let given = hash(code.trim());
    if !constant_eq(given.as_bytes(), expected.as_bytes()) {
        let tries = pending["tries"].as_u64().unwrap_or(0) + 1;
        if tries >= LINK_CODE_TRIES {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "wrong code too many times; start again with `jitgate link slack` (or the console's Slack page)",
            ));
        }
        let mut updated = pending.clone();
        updated["tries"] = json!(tries);
        let expires_at = pending["expires_at"].as_i64().map_or(now, Timestamp::from_millis);
        // A new code asked for meanwhile wins; this one is then gone.
        match store.put_flow(&key, &updated.to_string(), expires_at).await {
            Ok(()) | Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let left = LINK_CODE_TRIES - tries;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("wrong code; {left} {} left", if left == 1 { "try" } else { "tries" }),
        ));
    }
    let link = ChatLink {
        provider: SLACK.into(),
        chat_user: pending["slack_user"].as_str().unwrap_or_default().to_owned(),
        user: who.user.clone(),
        linked_at: now,
    };
    let event = AuditDraft::new("chat.linked", &link.user, &link.chat_user).details(json!({"provider": SLACK}));
    match store.link_chat(&link, event).await {
        Ok(()) => {}
        Err(StoreError::AlreadyExists(_)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "that Slack account is linked to another user; they must unlink it first",
            ))
        }
        Err(e) => {
            // The store failed, not the user: the code stays good for another try.
            let expires_at = pending["expires_at"].as_i64().map_or(now, Timestamp::from_millis);
            let _ = store.put_flow(&key, &pending.to_string(), expires_at).await;
            return Err(e.into());
        }
    }
    tracing::info!(user = %link.user, slack_user = %link.chat_user, "Slack account linked");
    Ok(link)
}

pub async fn unlink(State(state): State<Arc<ApiState>>, caller: Caller) -> Result<Json<Value>, ApiError> {
    end_link(&state, &caller.identity).await?;
    Ok(Json(json!({"provider": SLACK, "unlinked": caller.identity.user})))
}

pub(crate) async fn end_link(state: &ApiState, who: &Identity) -> Result<(), ApiError> {
    let who = &who.user;
    let event = AuditDraft::new("chat.unlinked", who, who).details(json!({"provider": SLACK}));
    if !state.broker.store().unlink_chat(SLACK, who, event).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "you have no Slack account linked",
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinksQuery {
    #[serde(default)]
    all: bool,
}

/// Your links; with `all`, everyone's (admins only).
pub async fn links(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<LinksQuery>,
) -> Result<Json<Vec<ChatLink>>, ApiError> {
    if q.all && !state.broker.policy().is_admin(&caller.identity) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only admins list everyone's links",
        ));
    }
    let who = (!q.all).then_some(caller.identity.user.as_str());
    Ok(Json(state.broker.store().chat_links(SLACK, who).await?))
}

fn too_many(whose: &str) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many link codes asked for {whose} in the last hour; try again later"),
    )
}

fn link_key(user: &str) -> String {
    format!("chat-link:{SLACK}:{user}")
}

fn hash(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn slack_failed(e: crate::notify::SendError) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "slack_unavailable", e.message)
}

/// Slack's interactivity requests. 401 for anything not proven to come from Slack just now
/// (and never before); 400 for a payload that is not a button press Slack would send; 200
/// for every press, whose outcome the presser is told privately.
pub async fn interactions(State(state): State<Arc<ApiState>>, headers: HeaderMap, body: Bytes) -> Response {
    match interaction(&state, &headers, &body).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => {
            tracing::warn!(status = %e.status(), reason = e.reason(), "Slack interaction refused");
            e.into_response()
        }
    }
}

async fn interaction(state: &Arc<ApiState>, headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    let chat = chat(state)?;
    let unauthorized = |why: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why);
    let Some(secret) = chat.signing_secret.as_ref() else {
        return Err(unauthorized(
            "no signing secret is configured ([slack] signing_secret_env)",
        ));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let timestamp = header("x-slack-request-timestamp").ok_or_else(|| unauthorized("no X-Slack-Request-Timestamp"))?;
    let signature = header("x-slack-signature").ok_or_else(|| unauthorized("no X-Slack-Signature"))?;
    if !signed(secret, timestamp, body, signature) {
        return Err(unauthorized("bad X-Slack-Signature"));
    }
    let now = Timestamp::now();
    let at: i64 = timestamp
        .parse()
        .map_err(|_| unauthorized("bad X-Slack-Request-Timestamp"))?;
    if (now.as_millis() / 1000 - at).abs() > SIGNATURE_WINDOW {
        return Err(unauthorized("X-Slack-Request-Timestamp is more than 5 minutes away"));
    }
    // Each signed payload is taken once. Keyed by what was signed, not by the signature's
    // text (hex has two cases); remembered until the timestamp check refuses it anyway.
    let mut signed_text = Sha256::new();
    signed_text.update(timestamp.as_bytes());
    signed_text.update(b":");
    signed_text.update(body);
    let seen = format!("slack-interaction:{}", hex::encode(signed_text.finalize()));
    let forget_at = Timestamp::from_millis((at + SIGNATURE_WINDOW + 60) * 1000);
    match state.broker.store().put_flow(&seen, "", forget_at).await {
        Ok(()) => {}
        Err(StoreError::AlreadyExists(_)) => return Err(unauthorized("this payload was taken before")),
        Err(e) => return Err(e.into()),
    }
    let press = Press::parse(body)?;
    let Some(decision) = press.decision() else {
        // The console link is a URL button: Slack tells us of the press; nothing to do.
        return Ok(());
    };
    let outcome = decide(state, &press, decision, now).await;
    // Slack reads the answer as mrkdwn: nothing in it may format or mention.
    let (result, text) = match &outcome {
        Ok(text) => ("decided", escape(text)),
        Err(why) => (
            "refused",
            format!(
                "{}\nDecide in the console: {}/requests/{}",
                escape(why),
                state.site.origin,
                escape(&press.request_id)
            ),
        ),
    };
    let actor = outcome_actor(state, &press).await;
    let mut event = AuditDraft::new("chat.action", &actor, &press.request_id)
        .details(json!({"provider": SLACK, "slack_user": press.user, "action": press.action, "result": result}));
    if let Err(why) = &outcome {
        event = event.reason(Some(why));
    }
    if plausible(&press.request_id) {
        event = event.request(&press.request_id);
    }
    state.broker.store().append_audit(vec![event]).await?;
    // Slack wants its answer within three seconds; the private reply goes on its own.
    let chat = Arc::clone(chat);
    tokio::spawn(async move {
        if let Some(token) = &chat.token {
            let body = json!({"channel": press.channel, "user": press.user, "text": text});
            if let Err(e) = chat.api.call(token, "chat.postEphemeral", &body).await {
                tracing::warn!(error = %e.message, "cannot answer a Slack button press");
            }
        }
    });
    Ok(())
}

async fn outcome_actor(state: &ApiState, press: &Press) -> String {
    match state.broker.store().chat_link_of(SLACK, &press.user).await {
        Ok(Some(link)) => link.user,
        _ => format!("slack:{}", press.user),
    }
}

fn plausible(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Approve,
    Deny,
}

/// A button press, as much of Slack's `block_actions` payload as a decision needs.
struct Press {
    user: String,
    channel: String,
    message_ts: String,
    action: String,
    block_id: String,
    request_id: String,
}

impl Press {
    fn parse(body: &[u8]) -> Result<Press, ApiError> {
        let bad = |why: &str| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", why);
        let payload = url::form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| bad("no payload field in the form body"))?;
        let p: Value = serde_json::from_str(&payload).map_err(|_| bad("the payload is not JSON"))?;
        if p["type"] != "block_actions" {
            return Err(bad("only block_actions payloads are taken"));
        }
        let text = |v: &Value, what: &str| -> Result<String, ApiError> {
            v.as_str()
                .filter(|s| !s.is_empty() && s.len() <= 255)
                .map(str::to_owned)
                .ok_or_else(|| bad(&format!("the payload has no {what}")))
        };
        let actions = p["actions"]
            .as_array()
            .ok_or_else(|| bad("the payload has no actions"))?;
        let [action] = actions.as_slice() else {
            return Err(bad("a button press carries exactly one action"));
        };
        Ok(Press {
            user: text(&p["user"]["id"], "user.id")?,
            channel: text(&p["container"]["channel_id"], "container.channel_id")?,
            message_ts: text(&p["container"]["message_ts"], "container.message_ts")?,
            action: text(&action["action_id"], "action_id")?,
            block_id: text(&action["block_id"], "block_id")?,
            request_id: text(&action["value"], "action value")?,
        })
    }

    fn decision(&self) -> Option<Decision> {
        match self.action.as_str() {
            APPROVE => Some(Decision::Approve),
            DENY => Some(Decision::Deny),
            _ => None,
        }
    }
}

/// Applies a press; the text for the presser, or why it changed nothing.
async fn decide(state: &ApiState, press: &Press, decision: Decision, now: Timestamp) -> Result<String, String> {
    let store = state.broker.store();
    let internal = |e: StoreError| {
        tracing::error!(error = %e, "store error on a Slack button press");
        "the proxy cannot decide right now (its store is unavailable)".to_owned()
    };
    let id = &press.request_id;
    let unknown = || format!("no request {id} is known here");
    if !plausible(id) {
        return Err(unknown());
    }
    // The button must be one of the messages that announce this very request.
    let messages = store.slack_messages_of(id).await.map_err(internal)?;
    let ours = press.block_id == format!("jitgate:{id}")
        && messages
            .iter()
            .any(|(_, channel, ts)| *channel == press.channel && *ts == press.message_ts);
    if !ours {
        return Err(format!(
            "this button does not belong to request {id}; nothing was decided"
        ));
    }
    let request = store.request(id).await.map_err(internal)?.ok_or_else(unknown)?;
    let profile = state.broker.policy().profile(&request.profile).ok_or_else(unknown)?;
    if !profile.approve_in_chat {
        return Err(format!(
            "requests for {} are decided in the console or with the CLI, not in Slack (approve_in_chat is off)",
            request.profile
        ));
    }
    let linked = store.linked_users(SLACK, Some(&press.user)).await.map_err(internal)?;
    let linked = linked.first().ok_or_else(|| {
        "your Slack account is not linked to a jitgate user; link it with `jitgate link slack`".to_owned()
    })?;
    let chat = state.chat.as_ref().expect("presses are taken only with a Slack app");
    let who = chat.policy.identity(linked, now)?;
    let done = match decision {
        Decision::Approve => state.broker.approve(&who, id, None, now).await,
        Decision::Deny => {
            let reason = format!("denied in Slack by {}", who.user);
            state.broker.deny(&who, id, reason, now).await
        }
    };
    match done {
        Ok(r) => Ok(match decision {
            Decision::Approve if r.state.as_str() == "active" => {
                format!(
                    "You approved {id}: {} now holds {} for {}.",
                    r.requester.user,
                    r.profile,
                    crate::time::format_duration(r.duration)
                )
            }
            Decision::Approve => format!(
                "You approved {id}; it needs {} more approval(s).",
                (r.approvals_required as usize).saturating_sub(r.approvals.len())
            ),
            Decision::Deny => format!("You denied {id}."),
        }),
        Err(BrokerError::Store(e)) => Err(internal(e)),
        Err(e) => Err(e.to_string()),
    }
}

/// Slack's scheme: `v0=` and the hex HMAC-SHA256 of `v0:{timestamp}:{body}`, compared in
/// constant time.
fn signed(secret: &secrecy::SecretString, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("v0=") else {
        return false;
    };
    let Ok(raw) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secrecy::ExposeSecret::expose_secret(secret).as_bytes())
        .expect("any key length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&raw).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_signatures_are_checked_as_slack_documents() {
        // The example of Slack's "Verifying requests from Slack" page.
        let secret: secrecy::SecretString = "8f742231b10e8888abcd99yyyzzz85a5".to_owned().into();
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert!(signed(&secret, "1531420618", body, sig));
        assert!(!signed(&secret, "1531420619", body, sig));
        assert!(!signed(&secret, "1531420618", b"token=x", sig));
        assert!(!signed(&secret, "1531420618", body, "v1=a2114d57"));
        assert!(!signed(&secret, "1531420618", body, "v0=zz"));
    }
}
