//! The JIT broker: runs the access core's transitions against the store, records each in
//! the audit log in the same transaction, keeps the grant index that `authorize` reads, and
//! cuts live connections when a grant ends. Front-ends call this; it speaks no protocol.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

use crate::access::{
    authorize, AccessProfile, AccessRequest, Action, Authorized, Denied, Grant, GrantIndex, Identity, Outcome, Policy,
    Refusal, Resource,
};
use crate::audit::AuditDraft;
use crate::identity::token::random_id;
use crate::live::{CutReport, Live};
use crate::store::{GrantFilter, RequestFilter, Store, StoreError};
use crate::time::{format_duration, Timestamp};

/// How often a compare-and-swap write is retried when another writer changed the row first.
const CAS_ATTEMPTS: usize = 8;
const LIST_LIMIT: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("too many concurrent changes to {0}; try again")]
    Contended(String),
}

/// A profile as one caller sees it.
#[derive(Debug, Serialize)]
pub struct ProfileView {
    #[serde(flatten)]
    pub profile: Arc<AccessProfile>,
    pub can_request: bool,
    pub can_approve: bool,
}

/// The grant index and a count of the local changes made to it, so that a reload from the
/// store that raced a local approve or revoke is recognised as stale and not installed.
struct IndexState {
    grants: GrantIndex,
    local_changes: u64,
    /// When the index last matched the store. Starts at construction: an index that was
    /// never loaded is empty and so allows nothing.
    loaded_at: Instant,
}

/// Past this without a successful reload, the index may be missing revocations made on
/// other replicas: decisions fail closed until the store answers again.
const INDEX_STALE_AFTER: Duration = Duration::from_secs(10);

pub struct Broker {
    policy: Arc<Policy>,
    store: Arc<dyn Store>,
    live: Live,
    request_ttl: Duration,
    index: RwLock<IndexState>,
    changed: Notify,
    /// How far this replica has applied the audit log's logouts and renewals (a seq); None
    /// until the first sweep, which starts at the log's head.
    logins_followed: tokio::sync::Mutex<Option<i64>>,
}

/// What `follow_logins` reads from the audit log, at most this many a round.
const LOGIN_EVENTS_PER_ROUND: u32 = 1000;

/// How far a round of `follow_logins` got: to the head it read up to, unless `limit` events
/// came back, when there may be more after the last of them.
fn followed_up_to(events: &[crate::audit::AuditEvent], head: i64, limit: u32) -> i64 {
    match events.last() {
        Some(last) if events.len() >= limit as usize => last.seq,
        _ => head,
    }
}

impl Broker {
    pub fn new(policy: Arc<Policy>, store: Arc<dyn Store>, live: Live, request_ttl: Duration) -> Self {
        Broker {
            policy,
            store,
            live,
            request_ttl,
            index: RwLock::new(IndexState {
                grants: GrantIndex::default(),
                local_changes: 0,
                loaded_at: Instant::now(),
            }),
            changed: Notify::new(),
            logins_followed: tokio::sync::Mutex::new(None),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn live(&self) -> &Live {
        &self.live
    }

    pub fn profiles_for(&self, who: &Identity) -> Vec<ProfileView> {
        self.policy
            .profiles()
            .iter()
            .map(|p| ProfileView {
                profile: Arc::clone(p),
                can_request: p.may_request(who),
                can_approve: p.may_approve(who),
            })
            .filter(|v| v.can_request || v.can_approve || self.policy.is_admin(who))
            .collect()
    }

    fn profile(&self, name: &str) -> Result<&Arc<AccessProfile>, BrokerError> {
        self.policy.profile(name).ok_or_else(|| no_profile(name))
    }

    #[tracing::instrument(skip_all, fields(user = %who.user, profile = %profile, request_id = tracing::field::Empty))]
    pub async fn open_request(
        &self,
        who: &Identity,
        profile: &str,
        reason: String,
        duration: Duration,
        now: Timestamp,
    ) -> Result<AccessRequest, BrokerError> {
        let profile = self.profile(profile)?;
        // A profile the caller may neither request nor approve is not shown to them by
        // `profiles`; asking for it by name must not confirm that it exists either.
        if !(profile.may_request(who) || profile.may_approve(who) || self.policy.is_admin(who)) {
            return Err(no_profile(&profile.name));
        }
        let outcome = AccessRequest::open(
            random_id("req-"),
            profile,
            who.clone(),
            reason,
            duration,
            now,
            self.request_ttl,
            || random_id("grant-"),
        )?;
        let r = outcome.request();
        tracing::Span::current().record("request_id", r.id.as_str());
        let mut events = vec![AuditDraft::new("request.created", &who.user, &r.profile)
            .request(&r.id)
            .reason(Some(&r.reason))
            .details(serde_json::json!({
                "profile": r.profile,
                "duration": format_duration(r.duration),
                "groups": who.groups,
                "approvals_required": r.approvals_required,
            }))];
        let grant = match &outcome {
            Outcome::Activated(r, g) => {
                events.push(activation_event(r, g));
                Some(g)
            }
            Outcome::Pending(_) => None,
        };
        self.store.insert_request(r, grant, events).await?;
        tracing::info!(user = %who.user, request_id = %r.id, profile = %r.profile, state = %r.state, "request opened");
        if let Some(g) = grant {
            self.grant_started(g, now);
        }
        Ok(outcome.request().clone())
    }

    #[tracing::instrument(skip_all, fields(user = %who.user, request_id = %id))]
    pub async fn approve(
        &self,
        who: &Identity,
        id: &str,
        reason: Option<String>,
        now: Timestamp,
    ) -> Result<AccessRequest, BrokerError> {
        for _ in 0..CAS_ATTEMPTS {
            let request = self.visible_request(who, id).await?;
            let profile = self.profile(&request.profile)?;
            let outcome = request.approve(profile, who, reason.clone(), now, || random_id("grant-"))?;
            let r = outcome.request();
            let approval = r.approvals.last().expect("approve adds an approval");
            let mut events = vec![AuditDraft::new("request.approved", &who.user, &r.profile)
                .request(&r.id)
                .reason(approval.reason.as_deref())
                .details(serde_json::json!({"approvals": r.approvals.len(), "required": r.approvals_required}))];
            let grant = match &outcome {
                Outcome::Activated(r, g) => {
                    events.push(activation_event(r, g));
                    Some(g)
                }
                Outcome::Pending(_) => None,
            };
            if self.store.update_request(r, grant, events).await? {
                tracing::info!(user = %who.user, request_id = %r.id, grant_id = ?r.grant_id, state = %r.state, "request approved");
                if let Some(g) = grant {
                    self.grant_started(g, now);
                }
                return self.visible_request(who, id).await;
            }
        }
        Err(BrokerError::Contended(format!("request {id}")))
    }

    #[tracing::instrument(skip_all, fields(user = %who.user, request_id = %id))]
    pub async fn deny(
        &self,
        who: &Identity,
        id: &str,
        reason: String,
        now: Timestamp,
    ) -> Result<AccessRequest, BrokerError> {
        self.decide(who, id, "request.denied", |r| {
            let profile = self.profile(&r.profile)?;
            Ok(r.deny(profile, who, reason.clone(), now)?)
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(user = %who.user, request_id = %id))]
    pub async fn cancel(&self, who: &Identity, id: &str, now: Timestamp) -> Result<AccessRequest, BrokerError> {
        self.decide(who, id, "request.cancelled", |r| Ok(r.cancel(who, now)?))
            .await
    }

    async fn decide(
        &self,
        who: &Identity,
        id: &str,
        action: &'static str,
        step: impl Fn(AccessRequest) -> Result<AccessRequest, BrokerError>,
    ) -> Result<AccessRequest, BrokerError> {
        for _ in 0..CAS_ATTEMPTS {
            let r = step(self.visible_request(who, id).await?)?;
            let event = AuditDraft::new(action, &who.user, &r.profile)
                .request(&r.id)
                .reason(r.decision_reason.as_deref());
            if self.store.update_request(&r, None, vec![event]).await? {
                tracing::info!(user = %who.user, request_id = %r.id, state = %r.state, "request decided");
                return self.visible_request(who, id).await;
            }
        }
        Err(BrokerError::Contended(format!("request {id}")))
    }

    #[tracing::instrument(skip_all, fields(user = %who.user, grant_id = %grant_id))]
    pub async fn revoke(
        &self,
        who: &Identity,
        grant_id: &str,
        reason: Option<String>,
        now: Timestamp,
    ) -> Result<Grant, BrokerError> {
        for _ in 0..CAS_ATTEMPTS {
            let grant = self.visible_grant(who, grant_id).await?;
            let revoked = grant.revoke(&self.policy, who, reason.clone(), now)?;
            let event = AuditDraft::new("grant.revoked", &who.user, &revoked.user)
                .request(&revoked.request_id)
                .grant(&revoked.id)
                .reason(revoked.end_reason.as_deref());
            if self.end_grant(&revoked, event).await? {
                tracing::info!(user = %who.user, grant_id, "grant revoked");
                return self.visible_grant(who, grant_id).await;
            }
        }
        Err(BrokerError::Contended(format!("grant {grant_id}")))
    }

    /// Revokes every active grant `user` holds, on the authority of `by` (an operator, not
    /// a policy decision): disabling a user ends their access now, not at each expiry.
    /// Returns the ids of the grants ended. Open connections close here at once, and on
    /// other replicas (or a server beside an admin CLI) at their next look at the store.
    pub async fn withdraw_user_grants(
        &self,
        user: &str,
        by: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<Vec<String>, BrokerError> {
        let mut ended = Vec::new();
        for _ in 0..CAS_ATTEMPTS {
            let filter = GrantFilter {
                holder: Some(user),
                active_only: true,
                ..GrantFilter::default()
            };
            // One past its expiry but not yet swept has ended already; the sweeper records it.
            let mut active = self.store.grants(filter).await?;
            active.retain(|g| g.is_live(now));
            if active.is_empty() {
                return Ok(ended);
            }
            for grant in active {
                let Ok(withdrawn) = grant.withdraw(by, Some(reason.to_owned()), now) else {
                    continue;
                };
                let event = AuditDraft::new("grant.revoked", by, &withdrawn.user)
                    .request(&withdrawn.request_id)
                    .grant(&withdrawn.id)
                    .reason(Some(reason));
                // A grant changed meanwhile is read again on the next round.
                if self.end_grant(&withdrawn, event).await? {
                    tracing::info!(user, grant_id = %withdrawn.id, reason, "grant withdrawn");
                    ended.push(withdrawn.id);
                }
            }
        }
        Err(BrokerError::Contended(format!("the grants of {user}")))
    }

    /// Stores the end of a grant together with its request, then cuts its connections.
    async fn end_grant(&self, grant: &Grant, event: AuditDraft) -> Result<bool, BrokerError> {
        let request =
            self.store.request(&grant.request_id).await?.ok_or_else(|| {
                StoreError::Corrupt(format!("grant {} has no request {}", grant.id, grant.request_id))
            })?;
        let request = request.grant_ended(grant);
        if !self.store.update_grant(grant, &request, vec![event]).await? {
            return Ok(false);
        }
        self.change_index(|index| index.remove(&grant.user, &grant.id));
        self.live.cut(&grant.id, grant.state.as_str());
        Ok(true)
    }

    /// Ends what is due: grants past their expiry and pending requests past their time to
    /// live. Returns when the next thing falls due.
    #[tracing::instrument(skip_all)]
    pub async fn sweep(&self, now: Timestamp) -> Result<Option<Timestamp>, BrokerError> {
        // One bad row must not stop the rest: each item is tried on its own, and the index
        // is reloaded whatever happened before, so revocations from elsewhere still arrive.
        //
        // Logouts are read from the audit log's head as it was before the grant index first
        // loads: nothing can be authorized, and so opened, before the point they are read
        // from. Until that point is known the index stays empty.
        if self.logins_followed.lock().await.is_none() {
            self.follow_logins().await?;
        }
        let ended = self.expire_due_grants(now).await;
        let stale = self.expire_stale_requests(now).await;
        self.refresh_index(now).await?;
        // Not read now, read next round from where it stopped; the rest goes on meanwhile.
        if let Err(e) = self.follow_logins().await {
            tracing::error!(error = %e, "cannot follow logouts in the audit log; retrying");
        }
        ended.and(stale)?;
        Ok(self.store.next_due().await?)
    }

    async fn expire_due_grants(&self, now: Timestamp) -> Result<(), BrokerError> {
        for grant in self.store.due_grants(now).await? {
            let Ok(expired) = grant.expire(now) else { continue };
            let event = AuditDraft::new("grant.expired", "system", &expired.user)
                .request(&expired.request_id)
                .grant(&expired.id)
                .details(serde_json::json!({"expires_at": expired.expires_at}));
            // A lost race means another replica or a revocation ended it first.
            match self.end_grant(&expired, event).await {
                Ok(true) => tracing::info!(grant_id = %expired.id, user = %expired.user, "grant expired"),
                Ok(false) => {}
                Err(e) => tracing::error!(grant_id = %expired.id, error = %e, "cannot record the grant's expiry"),
            }
        }
        Ok(())
    }

    async fn expire_stale_requests(&self, now: Timestamp) -> Result<(), BrokerError> {
        for request in self.store.stale_requests(now).await? {
            let Ok(expired) = request.expire_pending(now) else {
                continue;
            };
            let event = AuditDraft::new("request.expired", "system", &expired.profile)
                .request(&expired.id)
                .reason(expired.decision_reason.as_deref());
            match self.store.update_request(&expired, None, vec![event]).await {
                Ok(true) => tracing::info!(request_id = %expired.id, "pending request expired"),
                Ok(false) => {}
                Err(e) => tracing::error!(request_id = %expired.id, error = %e, "cannot record the request's expiry"),
            }
        }
        Ok(())
    }

    /// Reloads the active grants into the index `authorize` reads, and cuts connections of
    /// grants that ended through another replica.
    pub async fn refresh_index(&self, now: Timestamp) -> Result<(), BrokerError> {
        // A reload that overlapped a local change could resurrect a grant just revoked here
        // (or drop one just approved): try again, and if writes keep racing, keep the
        // incrementally kept index until the next round.
        for _ in 0..3 {
            let seen = self.index.read().unwrap_or_else(|e| e.into_inner()).local_changes;
            let active = GrantFilter {
                active_only: true,
                ..GrantFilter::default()
            };
            let grants = self.store.grants(active).await?;
            let fresh = GrantIndex::build(&grants, &self.policy, now);
            let mut state = self.index.write().unwrap_or_else(|e| e.into_inner());
            if state.local_changes != seen {
                continue;
            }
            metrics::gauge!("jitgate_active_grants").set(fresh.len() as f64);
            self.live
                .cut_unless(|id| fresh.contains(id), "grant no longer active in the store");
            state.grants = fresh;
            state.loaded_at = Instant::now();
            return Ok(());
        }
        Ok(())
    }

    /// Applies logouts and token renewals recorded since the last round, by any replica, to
    /// this replica's connections: what a login opened here ends when it logs out anywhere.
    /// Its own are applied twice, which changes nothing.
    pub async fn follow_logins(&self) -> Result<(), BrokerError> {
        let mut followed = self.logins_followed.lock().await;
        let head = self.store.audit_head().await?.map_or(0, |h| h.seq);
        let Some(after) = *followed else {
            // Nothing was open here before this replica started.
            *followed = Some(head);
            return Ok(());
        };
        if head <= after {
            return Ok(());
        }
        use crate::live::login_events::{self, LoginChange};
        let events = self
            .store
            .audit_actions(after, head, &login_events::ACTIONS, LOGIN_EVENTS_PER_ROUND)
            .await
            .inspect_err(|e| tracing::warn!(after, head, error = %e, "cannot read login events"))?;
        let upto = followed_up_to(&events, head, LOGIN_EVENTS_PER_ROUND);
        for event in &events {
            match login_events::read(event) {
                Some(LoginChange::Ended(login)) => {
                    self.live.cut_login(&login, "logged out");
                }
                Some(LoginChange::Renamed { old, new }) => self.live.rekey_login(&old, &new),
                None => {
                    tracing::warn!(seq = event.seq, action = %event.action, "a login event without the login it names")
                }
            }
        }
        *followed = Some(upto);
        Ok(())
    }

    fn change_index(&self, change: impl FnOnce(&mut GrantIndex)) {
        let mut state = self.index.write().unwrap_or_else(|e| e.into_inner());
        change(&mut state.grants);
        state.local_changes += 1;
    }

    /// A new grant changes what `authorize` allows at once, and when the sweeper must next
    /// wake. One insert, not a reload: writes stay cheap however many grants are active.
    fn grant_started(&self, grant: &Grant, now: Timestamp) {
        self.change_index(|index| index.insert(grant, &self.policy, now));
        self.changed.notify_one();
    }

    /// Resolves when grants changed, so the sweeper can re-plan its next wake-up.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Reads the grant index, refusing (fail closed) when it could not be reloaded lately.
    fn fresh_index<T>(&self, read: impl FnOnce(&GrantIndex) -> T) -> Result<T, BrokerError> {
        let state = self.index.read().unwrap_or_else(|e| e.into_inner());
        if state.loaded_at.elapsed() > INDEX_STALE_AFTER {
            return Err(StoreError::Unavailable("the grant index could not be reloaded for a while".into()).into());
        }
        Ok(read(&state.grants))
    }

    /// The decision alone, without its audit event: for front-ends that audit per
    /// session rather than per request (apps audit a grant's first request and denials).
    pub fn decision(
        &self,
        who: &Identity,
        resource: Resource<'_>,
        action: Action<'_>,
        now: Timestamp,
    ) -> Result<Result<Authorized, Denied>, BrokerError> {
        self.fresh_index(|grants| authorize(&self.policy, grants, who, resource, action, now))
    }

    /// Every live grant of `who` that reaches `app`, longest-lived first.
    pub fn app_grants(&self, who: &Identity, app: &str, now: Timestamp) -> Result<Vec<Authorized>, BrokerError> {
        self.fresh_index(|grants| crate::access::app_grants(grants, who, app, now))
    }

    /// Whether `who` holds a live grant whose SSH scope reaches `host`, for some login;
    /// false when the grant index is stale (fail closed).
    pub fn ssh_host_granted(&self, who: &str, host: &crate::config::SshHost, now: Timestamp) -> bool {
        self.fresh_index(|grants| crate::access::ssh_host_granted(grants, who, &host.name, &host.labels, now))
            .unwrap_or(false)
    }

    /// Decides an access and records the decision in the audit log.
    pub async fn authorize(
        &self,
        who: &Identity,
        resource: Resource<'_>,
        action: Action<'_>,
        now: Timestamp,
    ) -> Result<Result<Authorized, Denied>, BrokerError> {
        let decision = self.decision(who, resource, action, now)?;
        let target = format!("{action} {resource}");
        let event = match &decision {
            Ok(a) => AuditDraft::new("access.allowed", &who.user, &target).grant(a.grant_id()),
            Err(d) => AuditDraft::new("access.denied", &who.user, &target).reason(Some(&d.reason)),
        };
        self.store.append_audit(vec![event]).await?;
        Ok(decision)
    }

    fn may_see_request(&self, who: &Identity, r: &AccessRequest) -> bool {
        r.requester.user == who.user
            || self.policy.is_admin(who)
            || self.policy.profile(&r.profile).is_some_and(|p| p.may_approve(who))
    }

    fn may_see_grant(&self, who: &Identity, g: &Grant) -> bool {
        g.user == who.user
            || self.policy.is_admin(who)
            || self.policy.profile(&g.profile).is_some_and(|p| p.may_approve(who))
    }

    /// Someone who may not see a request is told it does not exist, so ids cannot be probed.
    pub async fn visible_request(&self, who: &Identity, id: &str) -> Result<AccessRequest, BrokerError> {
        let found = if plausible_id(id) {
            self.store.request(id).await?
        } else {
            None
        };
        match found {
            Some(r) if self.may_see_request(who, &r) => Ok(r),
            _ => Err(BrokerError::NotFound(format!("no request {id:?} that you can see"))),
        }
    }

    pub async fn visible_grant(&self, who: &Identity, id: &str) -> Result<Grant, BrokerError> {
        let found = if plausible_id(id) {
            self.store.grant(id).await?
        } else {
            None
        };
        match found {
            Some(g) if self.may_see_grant(who, &g) => Ok(g),
            _ => Err(BrokerError::NotFound(format!("no grant {id:?} that you can see"))),
        }
    }

    /// Names of the profiles `who` approves: whose requests and grants they may see.
    fn approved_profiles(&self, who: &Identity) -> Vec<String> {
        self.policy
            .profiles()
            .iter()
            .filter(|p| p.may_approve(who))
            .map(|p| p.name.clone())
            .collect()
    }

    pub async fn requests(&self, who: &Identity, pending_only: bool) -> Result<Vec<AccessRequest>, BrokerError> {
        let profiles = self.approved_profiles(who);
        let admin = self.policy.is_admin(who);
        let filter = RequestFilter {
            requester: (!admin).then_some(who.user.as_str()),
            also_profiles: &profiles,
            pending_only,
            limit: LIST_LIMIT,
        };
        Ok(self.store.requests(filter).await?)
    }

    pub async fn grants(&self, who: &Identity, include_ended: bool) -> Result<Vec<Grant>, BrokerError> {
        let profiles = self.approved_profiles(who);
        let admin = self.policy.is_admin(who);
        let filter = GrantFilter {
            holder: (!admin).then_some(who.user.as_str()),
            also_profiles: &profiles,
            active_only: !include_ended,
        };
        Ok(self.store.grants(filter).await?)
    }

    /// Records each cut of open connections in the audit log (`session.cut`): the proof that
    /// access ended, and the event webhooks announce.
    pub async fn record_cuts(self: Arc<Self>, mut reports: tokio::sync::mpsc::UnboundedReceiver<CutReport>) {
        // Taken in batches, one append each: a mass revocation is recorded at the store's
        // pace for many events, not one commit per cut.
        let mut cuts = Vec::with_capacity(256);
        while reports.recv_many(&mut cuts, 256).await > 0 {
            let mut events = Vec::with_capacity(cuts.len());
            for cut in cuts.drain(..) {
                events.push(self.cut_event(cut).await);
            }
            // Nothing waits on this, and a mass revocation during a store outage is when a
            // batch is largest: it is kept until the store takes it, not given up.
            let mut wait = Duration::from_millis(100);
            while let Err(e) = self.store.append_audit(events.clone()).await {
                let grants: Vec<&str> = events.iter().filter_map(|e| e.grant_id.as_deref()).collect();
                tracing::error!(error = %e, ?grants, "cannot record cuts of open connections yet; trying again in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }

    /// The `session.cut` event for one report.
    async fn cut_event(&self, cut: CutReport) -> AuditDraft {
        let grant = match self.store.grant(&cut.grant_id).await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(grant_id = %cut.grant_id, error = %e, "cannot look up a cut grant");
                None
            }
        };
        let mut event = AuditDraft::new("session.cut", "system", grant.as_ref().map_or("", |g| g.user.as_str()))
            .grant(&cut.grant_id)
            .reason(Some(&cut.why))
            .details(serde_json::json!({
                "connections": cut.connections,
                // A logout ends that login's connections; the grant goes on.
                "scope": if cut.login_only { "login" } else { "grant" },
            }));
        event.time = Some(cut.at);
        if let Some(g) = &grant {
            event = event.request(&g.request_id);
        }
        event
    }

    pub async fn pending_count(&self) -> Result<u64, BrokerError> {
        Ok(self.store.count_pending().await?)
    }
}

fn no_profile(name: &str) -> BrokerError {
    BrokerError::NotFound(format!(
        "no profile named {name:?}; `jitgate profiles` lists the ones you can request"
    ))
}

/// Ids are ours: short, of letters, digits and '-'. Anything else cannot name a row, and is
/// not sent to the store at all.
fn plausible_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn activation_event(r: &AccessRequest, g: &Grant) -> AuditDraft {
    AuditDraft::new("grant.activated", r.decided_by.as_deref().unwrap_or("policy"), &g.user)
        .request(&r.id)
        .grant(&g.id)
        .details(serde_json::json!({
            "profile": g.profile,
            "expires_at": g.expires_at,
            "approvers": r.approvals.iter().map(|a| a.approver.as_str()).collect::<Vec<_>>(),
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: i64) -> crate::audit::AuditEvent {
        crate::audit::AuditEvent {
            seq,
            time: Timestamp::now(),
            actor: "dana".into(),
            action: "logout".into(),
            target: "local".into(),
            request_id: None,
            grant_id: None,
            reason: None,
            details: "{}".into(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn a_full_round_of_login_events_stops_at_its_last_and_others_at_the_head() {
        assert_eq!(followed_up_to(&[], 40, 3), 40, "nothing wanted up to the head");
        assert_eq!(followed_up_to(&[at(5), at(9)], 40, 3), 40, "all there was");
        assert_eq!(
            followed_up_to(&[at(5), at(9), at(12)], 40, 3),
            12,
            "more may follow the limit"
        );
    }
}
