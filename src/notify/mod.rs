//! Notices of requests and grants to Slack and to signed webhooks.
//!
//! The audit log is the outbox: every change to a request or grant is sealed there in the
//! transaction that makes it, so the notifier reads the log in order (`tail`) and queues a
//! notice per target in the store, moving its cursor in that same transaction. A worker
//! (`work`) delivers what is due, with retries and backoff; a Slack outage or a receiver
//! that is down delays notices, never loses them, and never holds up a request.

pub mod slack;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::access::{AccessRequest, Identity, Policy};
use crate::audit::{AuditDraft, AuditEvent};
use crate::config::{Delivery, NotifyConfig, TargetKind, NOTICE_EVENTS};
use crate::identity::token::random_id;
use crate::store::{Attempt, LinkedUser, Notice, NoticeState, Store, StoreError};
use crate::time::{format_duration, Timestamp};

/// The chat provider name links are stored under.
pub const SLACK: &str = "slack";
/// Notices to an approver's own Slack messages go to the target `dm:{user}`.
const DM_PREFIX: &str = "dm:";

/// Audit events read per look at the log.
const TAIL_BATCH: u32 = 200;
/// Deliveries under way at once, and to one target: a receiver that hangs takes at most
/// half the slots, and the other targets' notices still go.
const IN_FLIGHT: usize = 16;
const IN_FLIGHT_PER_TARGET: usize = 8;
/// How long a claimed notice is this replica's; past it another may try.
const LEASE: Duration = Duration::from_secs(120);
/// The longest the notifier waits without looking: how soon it sees changes made by other
/// replicas, and notices that fell due.
const POLL: Duration = Duration::from_secs(1);

/// Why a delivery attempt failed, and whether another attempt could succeed.
#[derive(Debug)]
pub struct SendError {
    pub message: String,
    pub permanent: bool,
    /// How long the receiver asked us to wait (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl SendError {
    pub fn permanent(message: String) -> SendError {
        SendError {
            message,
            permanent: true,
            retry_after: None,
        }
    }

    pub fn transient(message: String, retry_after: Option<Duration>) -> SendError {
        SendError {
            message,
            permanent: false,
            retry_after,
        }
    }
}

/// `Retry-After` in seconds, capped at an hour: a broken header must not park a notice.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get("retry-after")?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

/// Who a linked chat account may act as: its user, while the user could still log in and
/// did so lately. Without this, someone removed at the identity provider (who can no longer
/// log in or renew a token) would keep deciding from chat on the groups of their last login.
#[derive(Clone, Debug)]
pub struct ChatPolicy {
    /// Where logins may come from now: "local", and each configured provider.
    pub sources: Vec<String>,
    /// How lately a local user must have logged in: the life of their longest credential.
    pub fresh_for: Duration,
    /// How lately an identity provider's user must have logged in (or renewed, which asks
    /// the provider again): no longer than any of their credentials lasts without it.
    pub fresh_for_idp: Duration,
}

impl ChatPolicy {
    /// The identity a linked account acts as now, or why it may not act.
    pub fn identity(&self, linked: &LinkedUser, now: Timestamp) -> Result<Identity, String> {
        let user = &linked.user;
        if user.disabled {
            return Err(format!("jitgate user {} is disabled", user.name));
        }
        if !self.sources.iter().any(|s| s == user.source()) {
            return Err(format!(
                "jitgate user {} logs in through {}, which this proxy no longer accepts",
                user.name,
                user.source()
            ));
        }
        let fresh_for = if user.source() == "local" {
            self.fresh_for
        } else {
            self.fresh_for_idp
        };
        match linked.last_login {
            Some(at) if at.saturating_add(fresh_for) > now => Ok(Identity::new(&user.name, user.groups.iter().cloned())),
            _ => Err(format!(
                "{} has not logged in to jitgate within {}: log in again (jitgate login, or the console), then press again",
                user.name,
                format_duration(fresh_for)
            )),
        }
    }
}

pub struct Notifier {
    store: Arc<dyn Store>,
    policy: Arc<Policy>,
    config: NotifyConfig,
    chat_policy: ChatPolicy,
    /// Whether anything is configured to send to; without, the log is still read (so that
    /// turning notices on later does not announce the past) but only once a second.
    sends: bool,
    /// The console's base URL, for links back to a request.
    console: String,
    slack: Option<slack::SlackApi>,
    webhooks: webhook::Webhooks,
    /// Wakes the worker when notices were queued.
    queued: Notify,
}

impl Notifier {
    pub fn new(
        store: Arc<dyn Store>,
        policy: Arc<Policy>,
        config: NotifyConfig,
        chat_policy: ChatPolicy,
        console: &str,
    ) -> Result<Notifier, String> {
        let timeout = config.delivery.timeout;
        let slack_base = config
            .slack
            .as_ref()
            .map(|s| s.api_url.clone())
            .unwrap_or_else(|| url::Url::parse("https://slack.com/api/").expect("a valid URL"));
        let uses_slack = config
            .targets
            .iter()
            .any(|t| matches!(t.kind, TargetKind::Slack { .. }));
        Ok(Notifier {
            slack: if uses_slack || config.slack.is_some() {
                Some(slack::SlackApi::new(slack_base, timeout)?)
            } else {
                None
            },
            webhooks: webhook::Webhooks::new(&config.delivery.allow_networks, timeout)?,
            sends: !config.targets.is_empty() || config.slack.as_ref().is_some_and(|s| s.bot_token.is_some()),
            store,
            policy,
            config,
            chat_policy,
            console: console.trim_end_matches('/').to_owned(),
            queued: Notify::new(),
        })
    }

    /// Reads the audit log and delivers notices until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let tail = tokio::spawn(Arc::clone(&self).tail(shutdown.clone()));
        self.work(shutdown).await;
        let _ = tail.await;
    }

    async fn tail(self: Arc<Self>, shutdown: CancellationToken) {
        if let Err(e) = self.skip_stale_backlog(Timestamp::now()).await {
            tracing::warn!(error = %e, "cannot check the notice backlog");
        }
        loop {
            let more = match self.tail_once(Timestamp::now()).await {
                Ok(more) => more,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the audit log for notices; trying again");
                    false
                }
            };
            if more {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.store.committed(), if self.sends => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Events older than `give_up_after` (notices were off, or the proxy was down that
    /// long) would only be given up when sent: they are passed over, once, with a warning.
    /// Only those: anything newer is still announced.
    async fn skip_stale_backlog(&self, now: Timestamp) -> Result<(), StoreError> {
        let from = self.store.notice_cursor().await?;
        let cutoff = Timestamp::from_millis(now.as_millis() - self.config.delivery.give_up_after.as_millis() as i64);
        let Some(to) = self.store.last_audit_seq_before(from, cutoff).await? else {
            return Ok(());
        };
        if self.store.enqueue_notices(from, to, &[]).await? {
            tracing::warn!(
                from = from + 1,
                to,
                "audit events older than notifications.give_up_after are not announced"
            );
        }
        Ok(())
    }

    /// Queues the notices of the next batch of audit events; true when there may be more.
    async fn tail_once(&self, now: Timestamp) -> Result<bool, StoreError> {
        let from = self.store.notice_cursor().await?;
        let events = self.store.audit_events(from, None, TAIL_BATCH).await?;
        let Some(last) = events.last() else {
            return Ok(false);
        };
        let to = last.seq;
        let mut notices = Vec::new();
        let mut linked: Option<Vec<Identity>> = None;
        for event in events.iter().filter(|e| NOTICE_EVENTS.contains(&e.action.as_str())) {
            let Some(request_id) = event.request_id.as_deref() else {
                continue;
            };
            let Some(request) = self.store.request(request_id).await? else {
                tracing::warn!(
                    request_id,
                    seq = event.seq,
                    "an audit event names a request the store lacks"
                );
                continue;
            };
            if linked.is_none() {
                linked = Some(self.linked_approvers(now).await?);
            }
            let linked = linked.as_deref().unwrap_or_default();
            self.notices_for(event, &request, linked, now, &mut notices);
        }
        if !self.store.enqueue_notices(from, to, &notices).await? {
            // Another replica queued this batch first.
            return Ok(true);
        }
        if !notices.is_empty() {
            tracing::debug!(notices = notices.len(), up_to = to, "notices queued");
            self.queued.notify_one();
        }
        Ok(events.len() as u32 == TAIL_BATCH)
    }

    /// Users linked to Slack who may act there now, when the app can message them.
    async fn linked_approvers(&self, now: Timestamp) -> Result<Vec<Identity>, StoreError> {
        if self.config.slack.as_ref().and_then(|s| s.bot_token.as_ref()).is_none() {
            return Ok(Vec::new());
        }
        let linked = self.store.linked_users(SLACK, None).await?;
        Ok(linked
            .iter()
            .filter_map(|l| match self.chat_policy.identity(l, now) {
                Ok(who) => Some(who),
                Err(why) => {
                    // Not asked in Slack until they log in again; say so where someone looks.
                    tracing::debug!(user = %l.user.name, why, "a linked approver is not asked by direct message");
                    None
                }
            })
            .collect())
    }

    fn notices_for(
        &self,
        event: &AuditEvent,
        request: &AccessRequest,
        linked: &[Identity],
        now: Timestamp,
        out: &mut Vec<Notice>,
    ) {
        let Some(profile) = self.policy.profile(&request.profile) else {
            return;
        };
        let note = || json!({ "note": slack::note(event).filter(|_| event.action != "request.created") }).to_string();
        let notice = |id: String, target: String, lane: String, payload: String| Notice {
            id,
            target,
            lane,
            event: event.action.clone(),
            audit_seq: event.seq,
            request_id: Some(request.id.clone()),
            payload,
            state: NoticeState::Pending,
            attempts: 0,
            next_at: now,
            claim: None,
            first_tried_at: None,
            last_error: None,
            created_at: now,
            done_at: None,
        };
        // Where the profile is announced in Slack (or decided there), the approvers who could
        // decide it hear of it directly, in their own messages too. A profile kept out of
        // Slack stays out of it.
        let in_slack = profile.approve_in_chat
            || self.config.targets.iter().any(|t| {
                matches!(t.kind, TargetKind::Slack { .. }) && (t.all_profiles || profile.notify.contains(&t.name))
            });
        if request.approvals_required > 0 && in_slack {
            for who in linked {
                if who.user != request.requester.user && profile.may_approve(who) {
                    let place = format!("{DM_PREFIX}{}", who.user);
                    let lane = format!("slack:{place}:{}", request.id);
                    out.push(notice(random_id("ntc-"), place, lane, note()));
                }
            }
        }
        let targets = self
            .config
            .targets
            .iter()
            .filter(|t| t.all_profiles || profile.notify.contains(&t.name))
            .filter(|t| t.wants(&event.action));
        for target in targets {
            let (id, lane, payload) = match &target.kind {
                // One lane per request: a receiver learns of a request's changes in order.
                TargetKind::Webhook { .. } => (
                    random_id("msg_"),
                    format!("hook:{}:{}", target.name, request.id),
                    self.webhook_body(event, request),
                ),
                TargetKind::Slack { .. } => (
                    random_id("ntc-"),
                    format!("slack:{}:{}", target.name, request.id),
                    note(),
                ),
            };
            out.push(notice(id, target.name.clone(), lane, payload));
        }
    }

    /// The Standard Webhooks body: `type`, `timestamp` and `data`. The request is as it
    /// stood when the notice was queued; the event's own facts say what changed.
    fn webhook_body(&self, event: &AuditEvent, request: &AccessRequest) -> String {
        let details: serde_json::Value = serde_json::from_str(&event.details).unwrap_or(json!({}));
        json!({
            "type": event.action,
            "timestamp": event.time,
            "data": {
                "audit_seq": event.seq,
                "actor": event.actor,
                "reason": event.reason,
                "grant_id": event.grant_id,
                "details": details,
                "request": request,
                "console_url": format!("{}/requests/{}", self.console, request.id),
            },
        })
        .to_string()
    }

    async fn work(self: Arc<Self>, shutdown: CancellationToken) {
        let mut running = JoinSet::new();
        let mut per_target: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        loop {
            let now = Timestamp::now();
            let room = IN_FLIGHT - running.len();
            let full: Vec<String> = per_target
                .iter()
                .filter(|(_, n)| **n >= IN_FLIGHT_PER_TARGET)
                .map(|(t, _)| t.clone())
                .collect();
            let mut claimed = 0;
            if room > 0 {
                // No batch can take a target past its share, whichever target it brings.
                let busiest = per_target.values().filter(|n| **n < IN_FLIGHT_PER_TARGET).max();
                let headroom = IN_FLIGHT_PER_TARGET - busiest.copied().unwrap_or(0);
                let limit = room.min(headroom) as u32;
                match self
                    .store
                    .claim_notices(now, now.saturating_add(LEASE), limit, &full)
                    .await
                {
                    Ok(batch) => {
                        for notice in batch {
                            *per_target.entry(notice.target.clone()).or_default() += 1;
                            claimed += 1;
                            let target = notice.target.clone();
                            let this = Arc::clone(&self);
                            running.spawn(async move {
                                this.deliver(notice).await;
                                target
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot claim notices; trying again"),
                }
            }
            if claimed > 0 && running.len() < IN_FLIGHT {
                continue;
            }
            // With every slot busy, only a finished delivery makes room: no need to look.
            let wait = if running.len() == IN_FLIGHT {
                Duration::from_secs(3600)
            } else {
                match self.store.next_notice_at(&full).await {
                    Ok(Some(t)) => now.until(t).clamp(Duration::from_millis(10), POLL),
                    _ => POLL,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {
                    running.abort_all();
                    return;
                }
                _ = self.queued.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok(target) = done {
                        if let Some(n) = per_target.get_mut(&target) {
                            *n -= 1;
                            if *n == 0 {
                                per_target.remove(&target);
                            }
                        }
                    }
                }
            }
        }
    }

    async fn deliver(self: Arc<Self>, notice: Notice) {
        let started = std::time::Instant::now();
        // Within the lease: past it, another replica may take the notice over.
        let result = match tokio::time::timeout(LEASE - Duration::from_secs(10), self.send(&notice)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::transient(
                "the delivery took longer than its lease".into(),
                None,
            )),
        };
        let now = Timestamp::now();
        let outcome = match &result {
            Ok(()) => "delivered",
            Err(e) if e.permanent => "failed",
            Err(_) => "retry",
        };
        metrics::counter!("jitgate_notices_total", "target" => notice.target.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("jitgate_notice_attempt_duration_seconds").record(started.elapsed().as_secs_f64());
        let event = |action: &'static str, reason: Option<&str>| {
            let mut e = AuditDraft::new(action, "system", &notice.target)
                .reason(reason)
                .details(json!({"notice": notice.id, "event": notice.event, "attempts": notice.attempts}));
            if let Some(r) = &notice.request_id {
                e = e.request(r);
            }
            e
        };
        let (attempt, audit) = match result {
            Ok(()) => {
                tracing::info!(notice = %notice.id, target = %notice.target, event = %notice.event, attempts = notice.attempts, "notice delivered");
                (Attempt::Delivered, Some(event("notify.delivered", None)))
            }
            Err(e) => {
                let retry_at = now.saturating_add(backoff(&self.config.delivery, notice.attempts, e.retry_after));
                // From its first try, not its creation: a notice that waited behind a stuck
                // lane head gets its own full time.
                // but never more than twice as late as the event.
                let give_up = self.config.delivery.give_up_after;
                let since = notice.first_tried_at.unwrap_or(notice.created_at);
                let deadline = since
                    .saturating_add(give_up)
                    .min(notice.created_at.saturating_add(give_up * 2));
                if e.permanent || retry_at > deadline {
                    let why = if e.permanent {
                        e.message
                    } else {
                        format!(
                            "not delivered within {}: {}",
                            format_duration(self.config.delivery.give_up_after),
                            e.message
                        )
                    };
                    tracing::error!(notice = %notice.id, target = %notice.target, event = %notice.event, error = %why, "notice given up");
                    let audit = event("notify.failed", Some(&why));
                    (Attempt::Failed { error: why }, Some(audit))
                } else {
                    tracing::warn!(notice = %notice.id, target = %notice.target, event = %notice.event, attempts = notice.attempts, error = %e.message, retry_at = %retry_at, "notice not delivered; will retry");
                    (
                        Attempt::RetryAt {
                            at: retry_at,
                            error: e.message,
                        },
                        None,
                    )
                }
            }
        };
        let claim = notice.claim.as_deref().unwrap_or_default();
        match self.store.finish_notice(&notice.id, claim, attempt, now, audit).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                notice = %notice.id,
                "a notice's lease ran out during its delivery; the replica that took it over records it"
            ),
            // The lease runs out and the notice is tried again: late, never lost.
            Err(e) => tracing::error!(notice = %notice.id, error = %e, "cannot record a notice's delivery"),
        }
        self.queued.notify_one();
    }

    async fn send(&self, notice: &Notice) -> Result<(), SendError> {
        if let Some(user) = notice.target.strip_prefix(DM_PREFIX) {
            let token = self.config.slack.as_ref().and_then(|s| s.bot_token.as_ref());
            let store_failed = |e: StoreError| SendError::transient(format!("the store: {e}"), None);
            let link = self.store.chat_links(SLACK, Some(user)).await.map_err(store_failed)?;
            return match (token, link.first()) {
                (Some(token), Some(link)) => self.send_slack(notice, &notice.target, &link.chat_user, token).await,
                // Maybe a replica on an older config: another may send it, until give-up.
                (None, _) => Err(SendError::transient("[slack] here has no bot token".into(), None)),
                (_, None) => Err(SendError::permanent(format!("{user} unlinked their Slack account"))),
            };
        }
        let Some(target) = self.config.target(&notice.target) else {
            // During a rolling change of the config, a replica may not know a target yet.
            return Err(SendError::transient(
                format!("no [[notify]] target here is named {:?}", notice.target),
                None,
            ));
        };
        match &target.kind {
            TargetKind::Webhook { url, key } => self.webhooks.send(url, &key.0, &notice.id, &notice.payload).await,
            TargetKind::Slack { channel, bot_token } => self.send_slack(notice, &target.name, channel, bot_token).await,
        }
    }

    /// Posts the request's message in `place` the first time, then updates it to show the
    /// request as it stands and threads the change's note under it.
    async fn send_slack(
        &self,
        notice: &Notice,
        place: &str,
        channel: &str,
        token: &secrecy::SecretString,
    ) -> Result<(), SendError> {
        let api = self
            .slack
            .as_ref()
            .expect("a Slack client exists when a Slack target does");
        let store_failed = |e: StoreError| SendError::transient(format!("the store: {e}"), None);
        let request_id = notice.request_id.as_deref().unwrap_or_default();
        let Some(request) = self.store.request(request_id).await.map_err(store_failed)? else {
            return Err(SendError::permanent(format!(
                "request {request_id} is not in the store"
            )));
        };
        let grant = match &request.grant_id {
            Some(id) => self.store.grant(id).await.map_err(store_failed)?,
            None => None,
        };
        let message = slack::message(
            &request,
            grant.as_ref(),
            self.policy.profile(&request.profile).map(|p| &**p),
            &self.console,
        );
        let note: Option<String> = serde_json::from_str::<serde_json::Value>(&notice.payload)
            .ok()
            .and_then(|p| p["note"].as_str().map(str::to_owned));
        let known = self
            .store
            .slack_message(request_id, place)
            .await
            .map_err(store_failed)?;
        let updated = match known {
            Some((channel_id, ts)) => match api.update(token, &channel_id, &ts, &message).await {
                Ok(()) => Some((channel_id, ts)),
                // Someone deleted the message (or it cannot be edited): announce it again.
                Err(e) if e.permanent && slack::GONE.iter().any(|g| e.message.ends_with(g)) => {
                    tracing::warn!(request_id, place, error = %e.message, "the announcing message is gone; posting a new one");
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        let (channel_id, ts) = match updated {
            Some(known) => known,
            None => {
                let (channel_id, ts) = api.post(token, channel, &message, None).await?;
                self.store
                    .put_slack_message(request_id, place, &channel_id, &ts)
                    .await
                    .map_err(store_failed)?;
                (channel_id, ts)
            }
        };
        if let Some(note) = note {
            let note = slack::Message {
                text: note.clone(),
                blocks: json!([{"type": "section", "text": {"type": "mrkdwn", "text": note}}]),
            };
            api.post(token, &channel_id, &note, Some(&ts)).await?;
        }
        Ok(())
    }
}

/// Where a request was announced and who was asked, as one line per place.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Announcement {
    /// The `[[notify]]` target, or `dm:{user}` for an approver's direct messages.
    pub target: String,
    /// For people: `Slack #dba-approvals`, `bob (Slack direct message)`, `webhook at https://…`.
    pub place: String,
    /// `delivered` when every notice there went out, `pending` while one waits, `failed`
    /// when one was given up.
    pub state: &'static str,
    /// The last change sent (or being sent) there.
    pub event: String,
    pub at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Announcement {
    /// What a viewer who neither approves the profile nor administers the proxy sees: that
    /// and how it was announced, not who was asked, where receivers live, or their errors.
    pub fn redacted(mut self) -> Announcement {
        if self.target.starts_with(DM_PREFIX) {
            self.place = "an approver (Slack direct message)".into();
        } else if self.place.starts_with("webhook") {
            self.place = "a webhook".into();
        }
        self.error = None;
        self
    }
}

/// Folds a request's notices (oldest first) into one announcement per place. `places`
/// names the configured targets.
pub fn announcements(notices: &[Notice], places: &std::collections::BTreeMap<String, String>) -> Vec<Announcement> {
    let mut out: Vec<Announcement> = Vec::new();
    for n in notices {
        let state = n.state.as_str();
        let at = n.done_at.unwrap_or(n.next_at);
        match out.iter_mut().find(|a| a.target == n.target) {
            Some(a) => {
                // Failed sticks; otherwise the newest notice tells.
                if a.state != "failed" {
                    a.state = state;
                    a.error = n.last_error.clone();
                }
                a.event = n.event.clone();
                a.at = at;
            }
            None => out.push(Announcement {
                place: match n.target.strip_prefix(DM_PREFIX) {
                    Some(user) => format!("{user} (Slack direct message)"),
                    None => places.get(&n.target).cloned().unwrap_or_else(|| n.target.clone()),
                },
                target: n.target.clone(),
                state,
                event: n.event.clone(),
                at,
                error: n.last_error.clone(),
            }),
        }
    }
    out
}

/// How people read where a target sends, without its secrets.
pub fn describe_target(t: &crate::config::NotifyTarget) -> String {
    match &t.kind {
        TargetKind::Slack { channel, .. } => format!("Slack {channel}"),
        // Only the origin: a webhook's path or query often carries a token.
        TargetKind::Webhook { url, .. } => format!("webhook at {}", url.origin().ascii_serialization()),
    }
}

/// Waits double from one second with each attempt, up to `max_backoff`; a receiver's own
/// `Retry-After` is honoured when longer.
fn backoff(delivery: &Delivery, attempts: u32, asked: Option<Duration>) -> Duration {
    let doubled = Duration::from_secs(1u64 << attempts.saturating_sub(1).min(20));
    doubled.min(delivery.max_backoff).max(asked.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_honours_retry_after() {
        let d = Delivery {
            max_backoff: Duration::from_secs(60),
            ..Delivery::default()
        };
        let waits: Vec<u64> = (1..=9).map(|n| backoff(&d, n, None).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(&d, 1, Some(Duration::from_secs(30))).as_secs(), 30);
        assert_eq!(backoff(&d, 7, Some(Duration::from_secs(5))).as_secs(), 60);
        assert_eq!(backoff(&d, u32::MAX, None).as_secs(), 60);
    }
}
