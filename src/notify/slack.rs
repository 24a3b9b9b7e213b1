//! Slack: the Web API calls the proxy makes (`chat.postMessage`, `chat.update`,
//! `users.lookupByEmail`) and the message that announces a request and keeps showing its
//! state. Everything a user typed is escaped before it reaches Slack's mrkdwn, so a reason
//! cannot mention `@channel` or dress up a link.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::SendError;
use crate::access::{AccessProfile, AccessRequest, Grant, GrantState, RequestState};
use crate::audit::AuditEvent;
use crate::time::{format_duration, Timestamp};

/// The action ids of the buttons; the interactivity endpoint answers these.
pub const APPROVE: &str = "jitgate.approve";
pub const DENY: &str = "jitgate.deny";
pub const OPEN: &str = "jitgate.open";

/// `chat.update` errors that mean the message is no longer there to update.
pub const GONE: &[&str] = &[": message_not_found", ": cant_update_message", ": is_archived"];

/// Slack's own limits: a section's text, a button's value.
const SECTION_MAX: usize = 3000;
const REASON_MAX: usize = 1500;

/// Errors Slack documents as worth another try; every other `ok: false` is for good.
const TRANSIENT: &[&str] = &[
    "ratelimited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
    "team_added_to_org",
];

pub struct SlackApi {
    http: reqwest::Client,
    base: url::Url,
}

impl SlackApi {
    pub fn new(base: url::Url, timeout: Duration) -> Result<SlackApi, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("jitgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up the Slack client: {e}"))?;
        Ok(SlackApi { http, base })
    }

    /// Calls a Web API method with a JSON body; the answer when Slack says `ok`.
    pub async fn call(&self, token: &SecretString, method: &str, body: &Value) -> Result<Value, SendError> {
        let url = self.base.join(method).expect("method names are URL segments");
        let request = self
            .http
            .post(url)
            .bearer_auth(token.expose_secret())
            .header("content-type", "application/json; charset=utf-8")
            .body(body.to_string());
        self.answer(method, request).await
    }

    /// Calls a method that takes form arguments (Slack's reading methods do not take JSON).
    pub async fn call_form(
        &self,
        token: &SecretString,
        method: &str,
        args: &[(&str, &str)],
    ) -> Result<Value, SendError> {
        let url = self.base.join(method).expect("method names are URL segments");
        let request = self.http.post(url).bearer_auth(token.expose_secret()).form(args);
        self.answer(method, request).await
    }

    async fn answer(&self, method: &str, request: reqwest::RequestBuilder) -> Result<Value, SendError> {
        let response = request.send().await.map_err(|e| {
            SendError::transient(
                format!(
                    "cannot reach Slack ({method}): {}",
                    super::webhook::chain(&e.without_url())
                ),
                None,
            )
        })?;
        let status = response.status();
        let retry_after = super::retry_after(response.headers());
        if status.as_u16() == 429 {
            return Err(SendError::transient(format!("Slack rate-limits {method}"), retry_after));
        }
        if status.is_server_error() {
            return Err(SendError::transient(
                format!("Slack answered {status} to {method}"),
                retry_after,
            ));
        }
        if !status.is_success() {
            return Err(SendError::permanent(format!("Slack answered {status} to {method}")));
        }
        let body: Value = response.json().await.map_err(|e| {
            SendError::transient(
                format!("Slack's answer to {method} is not JSON: {}", e.without_url()),
                None,
            )
        })?;
        if body["ok"].as_bool() == Some(true) {
            return Ok(body);
        }
        let error = body["error"].as_str().unwrap_or("no error named").to_owned();
        let msg = format!("Slack refused {method}: {error}");
        if TRANSIENT.contains(&error.as_str()) {
            Err(SendError::transient(msg, retry_after))
        } else {
            Err(SendError::permanent(msg))
        }
    }

    /// Posts a message; returns the channel id and timestamp that name it from now on.
    pub async fn post(
        &self,
        token: &SecretString,
        channel: &str,
        message: &Message,
        thread_ts: Option<&str>,
    ) -> Result<(String, String), SendError> {
        let mut body = json!({
            "channel": channel,
            "text": message.text,
            "blocks": message.blocks,
            "unfurl_links": false,
            "unfurl_media": false,
        });
        if let Some(ts) = thread_ts {
            body["thread_ts"] = json!(ts);
        }
        let answer = self.call(token, "chat.postMessage", &body).await?;
        match (answer["channel"].as_str(), answer["ts"].as_str()) {
            (Some(c), Some(ts)) => Ok((c.to_owned(), ts.to_owned())),
            _ => Err(SendError::permanent(
                "Slack's answer to chat.postMessage names no channel and ts".into(),
            )),
        }
    }

    pub async fn update(
        &self,
        token: &SecretString,
        channel: &str,
        ts: &str,
        message: &Message,
    ) -> Result<(), SendError> {
        let body = json!({
            "channel": channel,
            "ts": ts,
            "text": message.text,
            "blocks": message.blocks,
        });
        self.call(token, "chat.update", &body).await.map(drop)
    }

    /// The Slack user id of an email address's account; None when Slack knows no such user.
    pub async fn lookup_by_email(&self, token: &SecretString, email: &str) -> Result<Option<String>, SendError> {
        match self.call_form(token, "users.lookupByEmail", &[("email", email)]).await {
            Ok(answer) => Ok(answer["user"]["id"].as_str().map(str::to_owned)),
            Err(e) if e.message.ends_with(": users_not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The Slack app as the API uses it: to send link codes, and to check and answer presses.
pub struct Chat {
    pub api: SlackApi,
    pub token: Option<SecretString>,
    pub signing_secret: Option<SecretString>,
    pub policy: super::ChatPolicy,
    /// Link codes asked for in the last hour, by asker and by Slack account: codes cannot
    /// be asked for without end (each brings fresh tries), nor direct messages sent to
    /// anyone at will.
    link_codes: moka::future::Cache<String, Arc<AtomicU32>>,
}

impl Chat {
    pub fn new(app: &crate::config::SlackApp, timeout: Duration, policy: super::ChatPolicy) -> Result<Chat, String> {
        Ok(Chat {
            api: SlackApi::new(app.api_url.clone(), timeout)?,
            token: app.bot_token.clone(),
            signing_secret: app.signing_secret.clone(),
            policy,
            link_codes: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        })
    }

    /// Counts a link code asked for under `key` (`user:NAME` before anything is looked up,
    /// `slack:ID…` before a code is sent); false past `per_hour`. Counted per replica.
    pub async fn allow_link_code(&self, key: String, per_hour: u32) -> bool {
        let count = self
            .link_codes
            .get_with(key, async { Arc::new(AtomicU32::new(0)) })
            .await;
        count.fetch_add(1, Ordering::Relaxed) < per_hour
    }
}

/// A message's fallback text (notifications, screen readers) and its blocks.
pub struct Message {
    pub text: String,
    pub blocks: Value,
}

/// `&`, `<` and `>` are the characters Slack's mrkdwn gives meaning to.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// A time each reader sees in their own time zone, with UTC for clients that cannot.
fn when(t: Timestamp) -> String {
    format!(
        "<!date^{}^{{date_short_pretty}} {{time}}|{}>",
        t.as_millis() / 1000,
        t.to_rfc3339()
    )
}

/// The message announcing `request`, as things stand now.
pub fn message(
    request: &AccessRequest,
    grant: Option<&Grant>,
    profile: Option<&AccessProfile>,
    console: &str,
) -> Message {
    let who = escape(&request.requester.user);
    let name = escape(&request.profile);
    let duration = format_duration(request.duration);
    let reason = escape(&clip(&request.reason, REASON_MAX));
    let state = state_line(request, grant);
    let link = format!("{console}/requests/{}", request.id);
    let mut head = format!("*{who}* requests *{name}* for *{duration}*");
    if !reason.is_empty() {
        head.push_str(&format!("\n>{}", reason.replace('\n', "\n>")));
    }
    let mut what: Vec<String> = profile
        .map(|p| p.scope_lines().iter().map(|l| format!("• {}", escape(l))).collect())
        .unwrap_or_default();
    if what.is_empty() {
        what.push(format!("• profile {name} (no longer configured)"));
    }
    let mut buttons = Vec::with_capacity(3);
    // Buttons that could only be refused are not offered.
    let decided_in_chat = profile.is_some_and(|p| p.approve_in_chat);
    if request.state == RequestState::Pending && decided_in_chat {
        buttons.push(json!({
            "type": "button", "action_id": APPROVE, "style": "primary", "value": request.id,
            "text": {"type": "plain_text", "text": "Approve"},
        }));
        buttons.push(json!({
            "type": "button", "action_id": DENY, "style": "danger", "value": request.id,
            "text": {"type": "plain_text", "text": "Deny"},
        }));
    }
    buttons.push(json!({
        "type": "button", "action_id": OPEN, "url": link, "value": request.id,
        "text": {"type": "plain_text", "text": "Open in console"},
    }));
    let blocks = json!([
        {"type": "section", "text": {"type": "mrkdwn", "text": clip(&head, SECTION_MAX)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": clip(&what.join("\n"), SECTION_MAX)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": clip(&state, SECTION_MAX)}},
        {"type": "actions", "block_id": format!("jitgate:{}", request.id), "elements": buttons},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("Request `{}`", request.id)}]},
    ]);
    let text = format!(
        "{} requests {} for {duration}: {}",
        request.requester.user,
        request.profile,
        plain_state(request, grant)
    );
    Message {
        text: escape(&clip(&text, SECTION_MAX)),
        blocks,
    }
}

fn approvers(request: &AccessRequest) -> String {
    request
        .approvals
        .iter()
        .map(|a| escape(&a.approver))
        .collect::<Vec<_>>()
        .join(", ")
}

fn state_line(request: &AccessRequest, grant: Option<&Grant>) -> String {
    let by = |who: &Option<String>| escape(who.as_deref().unwrap_or("policy"));
    let because = |why: &Option<String>| match why.as_deref().filter(|w| !w.is_empty()) {
        Some(w) => format!(": {}", escape(&clip(w, REASON_MAX))),
        None => String::new(),
    };
    match (request.state, grant) {
        (RequestState::Pending, _) => format!(
            ":hourglass_flowing_sand: *Pending*: {} of {} approval{} · expires unanswered {}",
            request.approvals.len(),
            request.approvals_required,
            if request.approvals_required == 1 { "" } else { "s" },
            when(request.pending_until)
        ),
        (RequestState::Active, Some(g)) if g.state == GrantState::Active => format!(
            ":white_check_mark: *Approved* by {} · grant `{}` active until {}",
            approvers_or_policy(request),
            g.id,
            when(g.expires_at)
        ),
        (_, Some(g)) if g.state == GrantState::Revoked => format!(
            ":no_entry: *Revoked* by {} {}{}",
            by(&g.ended_by),
            g.ended_at.map_or_else(String::new, when),
            because(&g.end_reason)
        ),
        (_, Some(g)) if g.state == GrantState::Expired => format!(
            ":checkered_flag: *Ended*: grant `{}` expired {} (approved by {})",
            g.id,
            when(g.expires_at),
            approvers_or_policy(request)
        ),
        (RequestState::Denied, _) => format!(
            ":x: *Denied* by {}{}",
            by(&request.decided_by),
            because(&request.decision_reason)
        ),
        (RequestState::Cancelled, _) => {
            format!(":leftwards_arrow_with_hook: *Cancelled* by {}", by(&request.decided_by))
        }
        (RequestState::Expired, _) => ":zzz: *Expired*: nobody decided in time".to_owned(),
        (state, _) => format!("*{state}*"),
    }
}

fn approvers_or_policy(request: &AccessRequest) -> String {
    if request.approvals.is_empty() {
        "policy (no approval needed)".to_owned()
    } else {
        approvers(request)
    }
}

fn plain_state(request: &AccessRequest, grant: Option<&Grant>) -> String {
    match (request.state, grant.map(|g| g.state)) {
        (_, Some(GrantState::Revoked)) => "revoked".into(),
        (_, Some(GrantState::Expired)) => "ended".into(),
        (RequestState::Active, _) => "approved".into(),
        (state, _) => state.as_str().into(),
    }
}

/// The short note threaded under the message for one change.
pub fn note(event: &AuditEvent) -> Option<String> {
    let actor = escape(&event.actor);
    let because = match event.reason.as_deref().filter(|r| !r.is_empty()) {
        Some(r) => format!(": {}", escape(&clip(r, REASON_MAX))),
        None => String::new(),
    };
    let details: Value = serde_json::from_str(&event.details).unwrap_or(Value::Null);
    Some(match event.action.as_str() {
        "request.approved" => format!(
            "Approved by {actor} ({} of {}){because}",
            details["approvals"].as_u64().unwrap_or(0),
            details["required"].as_u64().unwrap_or(0)
        ),
        "grant.activated" => format!(
            "Grant `{}` active until {}",
            event.grant_id.as_deref().unwrap_or("?"),
            details["expires_at"]
                .as_str()
                .and_then(|t| Timestamp::parse_rfc3339(t).ok())
                .map_or_else(|| "its expiry".to_owned(), when)
        ),
        "request.denied" => format!("Denied by {actor}{because}"),
        "request.cancelled" => format!("Cancelled by {actor}"),
        "request.expired" => "Expired: nobody decided in time".to_owned(),
        "grant.revoked" => format!("Grant revoked by {actor}{because}"),
        "grant.expired" => "Grant expired; access ended".to_owned(),
        "session.cut" => {
            let n = details["connections"].as_u64().unwrap_or(0);
            format!(
                "{n} open connection{} cut ({})",
                if n == 1 { "" } else { "s" },
                escape(event.reason.as_deref().unwrap_or("grant ended"))
            )
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mrkdwn_is_escaped() {
        assert_eq!(
            escape("<!channel> & <https://evil|ok>"),
            "&lt;!channel&gt; &amp; &lt;https://evil|ok&gt;"
        );
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
    }
}
