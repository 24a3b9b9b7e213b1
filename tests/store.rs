//! The store suite: the same tests, through the `Store` trait and the `Broker`, on SQLite and
//! on PostgreSQL. Each test gets a database of its own.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TestDb};
use jitgate::access::{
    AccessProfile, AccessRequest, Action, Approval, Authorized, Grant, GrantState, Identity, Policy, Refusal,
    RequestState, Resource, SshScope,
};
use jitgate::audit::{verify, AuditDraft, AuditEvent};
use jitgate::broker::{Broker, BrokerError};
use jitgate::live::Live;
use jitgate::store::{self, GrantFilter, RequestFilter, SessionRecord, Store, StoreError, UserRecord};
use jitgate::time::Timestamp;

/// Generates `mod name { sqlite, postgres }` calling `async fn name(backend)`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::Backend;
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() { super::$name(Backend::Sqlite).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() { super::$name(Backend::Postgres).await }
        }
    )*};
}

both! {
    users, lifecycle, racing_approvers, revoke, revoke_races_expiry, expiry, tokens, audit_paging, refusals,
    fail_closed, listings, reloads_never_resurrect_revoked_grants, sessions, login_flows, idp_users,
    tightened_profiles,
}

/// A profile made stricter while a request waits: the request needs what the profile asks
/// now, and says so when it is read back.
async fn tightened_profiles(backend: Backend) {
    let e = env(backend, HOUR).await;
    let t0 = Timestamp::now();
    let r = e.open(&alice(), "one", Duration::from_secs(600), t0).await;
    assert_eq!(r.approvals_required, 1);
    let store = store::open(&e.db.url).await.expect("open the store again");
    let stricter = Arc::new(Policy::new(
        vec![profile("one", 2)],
        vec!["group:security".parse().unwrap()],
    ));
    let broker = Broker::new(stricter, store, Live::new(), HOUR);
    let a = broker.approve(&lead("bob"), &r.id, None, ms(t0, 10)).await.unwrap();
    assert_eq!(
        (a.state, a.approvals.len(), a.approvals_required),
        (RequestState::Pending, 1, 2)
    );
    assert_eq!(e.request(&r.id).await, a, "stored as returned");
    let a = broker.approve(&lead("carl"), &r.id, None, ms(t0, 20)).await.unwrap();
    assert_eq!((a.state, a.approvals.len()), (RequestState::Active, 2));
}

const HOUR: Duration = Duration::from_secs(3600);
const ROUNDS: usize = 20;

fn profile(name: &str, approvals_required: u32) -> AccessProfile {
    AccessProfile {
        name: name.into(),
        description: String::new(),
        max_duration: 8 * HOUR,
        requesters: vec!["group:dba".parse().unwrap()],
        approvers: vec!["group:dba-leads".parse().unwrap()],
        approvals_required,
        require_reason: true,
        ssh: Some(SshScope {
            hosts: BTreeMap::from([("env".into(), "prod".into())]),
            host_names: Vec::new(),
            logins: vec!["postgres".into()],
            port_forwarding: false,
        }),
        kube: None,
        http: None,
        notify: Vec::new(),
        approve_in_chat: false,
    }
}

fn policy() -> Arc<Policy> {
    let mut other = profile("other", 1);
    other.approvers = vec!["group:other-leads".parse().unwrap()];
    let profiles = vec![profile("one", 1), profile("two", 2), profile("auto", 0), other];
    Arc::new(Policy::new(profiles, vec!["group:security".parse().unwrap()]))
}

fn alice() -> Identity {
    Identity::new("alice", ["dba"])
}
fn lead(name: &str) -> Identity {
    Identity::new(name, ["dba-leads"])
}
fn admin() -> Identity {
    Identity::new("sam", ["security"])
}

fn ms(t: Timestamp, ms: u64) -> Timestamp {
    t.saturating_add(Duration::from_millis(ms))
}

fn not_pending(state: RequestState) -> Refusal {
    Refusal::NotPending { state }
}

/// `who` asks for ssh as postgres on a prod host; `None` when denied.
async fn ssh(broker: &Broker, who: &Identity, now: Timestamp) -> Option<Authorized> {
    let labels = BTreeMap::from([("env".to_owned(), "prod".to_owned())]);
    let target = Resource::Ssh {
        host: "db-1",
        labels: &labels,
        login: "postgres",
    };
    let decision = broker.authorize(who, target, Action::SshLogin, now).await;
    decision.expect("the store answers").ok()
}

enum Step<'a> {
    Approve(&'a Identity),
    Deny(&'a Identity, &'a str),
    Cancel(&'a Identity),
}

struct Env {
    store: Arc<dyn Store>,
    broker: Arc<Broker>,
    db: TestDb,
}

async fn env(backend: Backend, request_ttl: Duration) -> Env {
    let db = TestDb::new(backend).await;
    let store = store::open(&db.url).await.expect("open the store");
    let broker = Arc::new(Broker::new(policy(), Arc::clone(&store), Live::new(), request_ttl));
    Env { store, broker, db }
}

impl Env {
    /// Another broker over a store of its own on the same database, as a second replica (or
    /// the admin CLI next to the server) has.
    async fn replica(&self) -> Arc<Broker> {
        let store = store::open(&self.db.url).await.expect("open the store again");
        Arc::new(Broker::new(policy(), store, Live::new(), HOUR))
    }

    async fn audit(&self) -> Vec<AuditEvent> {
        self.store.audit_events(0, None, 100_000).await.unwrap()
    }

    async fn open(&self, who: &Identity, profile: &str, duration: Duration, now: Timestamp) -> AccessRequest {
        let reason = "patch CVE-1".to_owned();
        let opened = self.broker.open_request(who, profile, reason, duration, now).await;
        opened.unwrap()
    }

    /// Alice asks for profile `one` and bob approves: returns the active grant's id.
    async fn granted(&self, duration: Duration, now: Timestamp) -> String {
        let r = self.open(&alice(), "one", duration, now).await;
        let r = self.broker.approve(&lead("bob"), &r.id, None, now).await.unwrap();
        r.grant_id.expect("approved request has a grant")
    }

    async fn pending(&self) -> Vec<AccessRequest> {
        let filter = RequestFilter {
            pending_only: true,
            limit: 10,
            ..RequestFilter::default()
        };
        self.store.requests(filter).await.unwrap()
    }

    async fn request(&self, id: &str) -> AccessRequest {
        self.store.request(id).await.unwrap().expect("request exists")
    }

    async fn grant(&self, id: &str) -> Grant {
        self.store.grant(id).await.unwrap().expect("grant exists")
    }

    /// Runs `step` at `now`, expects `want`, and checks that neither the request nor the log
    /// changed.
    async fn refused(&self, id: &str, step: Step<'_>, now: Timestamp, want: Refusal) {
        let (before, events) = (self.request(id).await, self.audit().await.len());
        let b = &self.broker;
        let got = match step {
            Step::Approve(who) => b.approve(who, id, None, now).await,
            Step::Deny(who, reason) => b.deny(who, id, reason.into(), now).await,
            Step::Cancel(who) => b.cancel(who, id, now).await,
        };
        match got {
            Err(BrokerError::Refused(got)) => assert_eq!(got, want),
            other => panic!("expected {want:?}, got {other:?}"),
        }
        assert_eq!(self.request(id).await, before, "a refusal changed the request");
        assert_eq!(self.audit().await.len(), events, "a refusal wrote to the audit log");
    }
}

fn holder(name: &str, active_only: bool) -> GrantFilter<'_> {
    let holder = Some(name);
    GrantFilter {
        holder,
        active_only,
        ..GrantFilter::default()
    }
}

fn actions(events: &[AuditEvent]) -> Vec<&str> {
    events.iter().map(|e| e.action.as_str()).collect()
}

fn assert_chain(events: &[AuditEvent]) {
    assert_eq!(verify(events), Ok(events.len() as u64), "audit chain");
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let want: Vec<i64> = (1..=events.len() as i64).collect();
    assert_eq!(seqs, want, "seqs are 1..n, no gap or duplicate");
}

async fn users(backend: Backend) {
    let e = env(backend, HOUR).await;
    let s = &e.store;
    let created = Timestamp::from_millis(1_700_000_000_123);
    let user = |name: &str, hash: &str| UserRecord {
        name: name.into(),
        groups: vec!["dba".into(), "ops".into()],
        password_hash: hash.into(),
        disabled: false,
        created_at: created,
    };
    let added = |name: &str| AuditDraft::new("user.added", "admin-cli", name);
    s.add_user(&user("zoe", "hash-zoe"), added("zoe")).await.unwrap();
    s.add_user(&user("adam", "hash-adam"), added("adam")).await.unwrap();

    let zoe = s.user("zoe").await.unwrap().expect("zoe was added");
    let got = (zoe.name.as_str(), zoe.groups.join(","), zoe.password_hash.as_str());
    assert_eq!(got, ("zoe", "dba,ops".into(), "hash-zoe"));
    assert_eq!((zoe.disabled, zoe.created_at), (false, created));
    assert!(s.user("nobody").await.unwrap().is_none());
    let names: Vec<String> = s.users().await.unwrap().into_iter().map(|u| u.name).collect();
    assert_eq!(names, ["adam", "zoe"]);

    match s.add_user(&user("zoe", "hash-other"), added("zoe")).await {
        Err(StoreError::AlreadyExists(_)) => {}
        other => panic!("duplicate user: expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(s.user("zoe").await.unwrap().unwrap().password_hash, "hash-zoe");
    assert_eq!(e.audit().await.len(), 2, "a refused add writes no event");

    let toggle = |on: bool| AuditDraft::new(if on { "user.disabled" } else { "user.enabled" }, "admin-cli", "zoe");
    assert!(s.set_user_disabled("zoe", true, toggle(true)).await.unwrap());
    assert!(s.user("zoe").await.unwrap().unwrap().disabled);
    assert!(!s.user("adam").await.unwrap().unwrap().disabled);
    assert!(s.set_user_disabled("zoe", false, toggle(false)).await.unwrap());
    assert!(!s.user("zoe").await.unwrap().unwrap().disabled);
    assert!(!s.set_user_disabled("nobody", true, toggle(true)).await.unwrap());
    assert!(s.user("nobody").await.unwrap().is_none());

    let events = e.audit().await;
    let want = ["user.added", "user.added", "user.disabled", "user.enabled"];
    assert_eq!(actions(&events), want);
    let targets: Vec<&str> = events.iter().map(|e| e.target.as_str()).collect();
    assert_eq!(targets, ["zoe", "adam", "zoe", "zoe"]);
    assert_chain(&events);
}

async fn lifecycle(backend: Backend) {
    let e = env(backend, HOUR).await;
    let (t0, duration) = (Timestamp::now(), Duration::from_secs(30 * 60));
    let t1 = ms(t0, 1500);

    let r = e.open(&alice(), "one", duration, t0).await;
    let want = (RequestState::Pending, 1, t0.saturating_add(HOUR));
    assert_eq!((r.state, r.approvals_required, r.pending_until), want);
    assert!(r.approvals.is_empty() && r.grant_id.is_none());
    assert_eq!(e.request(&r.id).await, r, "stored as returned");
    let pending = e.pending().await;
    assert_eq!(pending.iter().map(|r| &r.id).collect::<Vec<_>>(), [&r.id]);
    assert!(e.store.grants(GrantFilter::default()).await.unwrap().is_empty());
    assert!(ssh(&e.broker, &alice(), t0).await.is_none(), "no access while pending");

    let bob = lead("bob");
    let a = e.broker.approve(&bob, &r.id, Some("ok".into()), t1).await.unwrap();
    let gid = a.grant_id.clone().expect("an active request names its grant");
    let approval = Approval {
        approver: "bob".into(),
        at: t1,
        reason: Some("ok".into()),
    };
    let want = AccessRequest {
        state: RequestState::Active,
        approvals: vec![approval],
        decided_at: Some(t1),
        decided_by: Some("bob".into()),
        grant_id: Some(gid.clone()),
        version: r.version + 1,
        ..r.clone()
    };
    assert_eq!(a, want);
    assert_eq!(e.request(&r.id).await, want, "stored as returned");

    let g = e.grant(&gid).await;
    let want = Grant {
        id: gid.clone(),
        request_id: r.id.clone(),
        profile: "one".into(),
        user: "alice".into(),
        groups: vec!["dba".into()],
        reason: "patch CVE-1".into(),
        state: GrantState::Active,
        created_at: t1,
        expires_at: t1.saturating_add(duration),
        ended_at: None,
        ended_by: None,
        end_reason: None,
        version: g.version,
    };
    assert_eq!(g, want, "expires a duration after the approval");
    assert_eq!(
        e.store.grants(holder("alice", true)).await.unwrap(),
        std::slice::from_ref(&g)
    );
    assert!(e.store.grants(holder("bob", false)).await.unwrap().is_empty());
    assert!(e.pending().await.is_empty());

    let allowed = ssh(&e.broker, &alice(), t1).await.expect("the grant allows ssh");
    assert_eq!((allowed.grant_id(), allowed.expires_at()), (gid.as_str(), g.expires_at));

    let events = e.audit().await;
    let story: Vec<&AuditEvent> = events.iter().filter(|e| e.request_id.is_some()).collect();
    let names: Vec<&str> = story.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(names, ["request.created", "request.approved", "grant.activated"]);
    assert!(story.iter().all(|e| e.request_id.as_ref() == Some(&r.id)));
    let actors: Vec<&str> = story.iter().map(|e| e.actor.as_str()).collect();
    assert_eq!(actors, ["alice", "bob", "bob"]);
    assert_eq!(story[2].grant_id.as_ref(), Some(&gid));
    let details: serde_json::Value = serde_json::from_str(&story[2].details).unwrap();
    assert_eq!(details["expires_at"], g.expires_at.to_rfc3339());
    assert_eq!(actions(&events).last(), Some(&"access.allowed"));
    assert_chain(&events);
}

/// Approvers racing, through one broker or two replicas, on three requests at once while
/// access decisions append to the log: exactly one grant each, every approval reported as
/// done is recorded, and the audit chain stays whole.
async fn racing_approvers(backend: Backend) {
    let e = env(backend, HOUR).await;
    let other = e.replica().await;
    let cases: [(&str, usize, &[&str]); 3] = [
        ("one", 1, &["bob", "carol"]),
        ("two", 2, &["bob", "carol"]),
        ("two", 2, &["bob", "carol", "dave"]),
    ];
    let mut done = Vec::new();
    for round in 0..ROUNDS {
        let mut opened = Vec::new();
        for (profile, _, _) in cases {
            opened.push(e.open(&alice(), profile, HOUR, Timestamp::now()).await);
        }
        let approvers: usize = cases.iter().map(|(_, _, who)| who.len()).sum();
        let barrier = Arc::new(tokio::sync::Barrier::new(approvers + 2));
        let mut decisions = Vec::new();
        for broker in [&e.broker, &other] {
            let (broker, barrier) = (Arc::clone(broker), Arc::clone(&barrier));
            decisions.push(tokio::spawn(async move {
                barrier.wait().await;
                ssh(&broker, &alice(), Timestamp::now()).await;
            }));
        }
        let mut approvals = Vec::new();
        for (k, (r, (_, _, approvers))) in opened.iter().zip(cases).enumerate() {
            for (i, name) in approvers.iter().enumerate() {
                let broker = Arc::clone(if (round + k + i) % 2 == 0 { &e.broker } else { &other });
                let (who, id, barrier) = (lead(name), r.id.clone(), Arc::clone(&barrier));
                let task = tokio::spawn(async move {
                    barrier.wait().await;
                    broker.approve(&who, &id, None, Timestamp::now()).await
                });
                approvals.push((k, name.to_string(), task));
            }
        }
        for task in decisions {
            task.await.expect("access decisions are recorded");
        }
        let mut won = vec![Vec::new(); cases.len()];
        for (k, who, task) in approvals {
            match task.await.unwrap() {
                Ok(_) => won[k].push(who),
                Err(BrokerError::Refused(refusal)) if refusal == not_pending(RequestState::Active) => {}
                Err(err) => panic!("round {round}: {who} approving {}: {err:?}", opened[k].id),
            }
        }
        for ((r, (_, required, _)), mut won) in opened.into_iter().zip(cases).zip(won) {
            let stored = e.request(&r.id).await;
            assert_eq!(stored.state, RequestState::Active);
            let mut recorded: Vec<String> = stored.approvals.iter().map(|a| a.approver.clone()).collect();
            recorded.sort();
            won.sort();
            assert_eq!(won.len(), required, "round {round} {}: successful approvals", r.profile);
            assert_eq!(recorded, won, "round {round} {}: recorded approvals", r.profile);
            done.push((stored, required));
        }
    }

    let grants = e.store.grants(GrantFilter::default()).await.unwrap();
    assert_eq!(grants.len(), done.len(), "one grant per request");
    let events = e.audit().await;
    assert_chain(&events);
    let decisions = actions(&events).into_iter().filter(|a| a.starts_with("access."));
    assert_eq!(decisions.count(), 2 * ROUNDS);
    for (r, required) in &done {
        let mine: Vec<_> = grants.iter().filter(|g| g.request_id == r.id).collect();
        assert_eq!(mine.len(), 1, "request {} has {} grants", r.id, mine.len());
        assert_eq!(Some(&mine[0].id), r.grant_id.as_ref());
        let count = |action: &str| {
            let about = |e: &&AuditEvent| e.request_id.as_ref() == Some(&r.id) && e.action == action;
            events.iter().filter(about).count()
        };
        let counts = [
            count("request.created"),
            count("request.approved"),
            count("grant.activated"),
        ];
        assert_eq!(counts, [1, *required, 1], "{}: created, approved, activated", r.id);
    }
}

async fn revoke(backend: Backend) {
    let e = env(backend, HOUR).await;
    let t0 = Timestamp::now();
    // May request the profile, but is neither holder, approver nor admin of alice's grant.
    let eve = Identity::new("eve", ["dba"]);
    for (i, by) in [alice(), lead("carol"), admin()].iter().enumerate() {
        let t = ms(t0, 1000 * i as u64);
        let gid = e.granted(HOUR, t).await;
        let allowed = ssh(&e.broker, &alice(), ms(t, 1)).await.expect("allowed");
        assert_eq!(allowed.grant_id(), gid);
        let conn = e.broker.live().register(&allowed);
        assert!(!conn.is_cut());

        // Someone unrelated is told the grant does not exist; the core refuses them too.
        let before = e.grant(&gid).await;
        match e.broker.revoke(&eve, &gid, None, ms(t, 2)).await {
            Err(BrokerError::NotFound(_)) => {}
            other => panic!("eve revoking: {other:?}"),
        }
        let by_eve = before.clone().revoke(e.broker.policy(), &eve, None, ms(t, 2));
        assert_eq!(by_eve, Err(Refusal::MayNotRevoke));
        assert_eq!(e.grant(&gid).await, before);
        assert!(!conn.is_cut());

        let g = e.broker.revoke(by, &gid, Some("done".into()), ms(t, 3)).await.unwrap();
        let want = Grant {
            state: GrantState::Revoked,
            ended_at: Some(ms(t, 3)),
            ended_by: Some(by.user.clone()),
            end_reason: Some("done".into()),
            version: before.version + 1,
            ..before
        };
        assert_eq!(g, want);
        assert!(conn.is_cut(), "revocation cuts the open connection");
        assert_eq!(e.grant(&gid).await, g);
        assert_eq!(e.request(&g.request_id).await.state, RequestState::Revoked);
        assert!(ssh(&e.broker, &alice(), ms(t, 4)).await.is_none(), "no access after it");

        match e.broker.revoke(&admin(), &gid, None, ms(t, 5)).await {
            Err(BrokerError::Refused(Refusal::GrantNotActive {
                state: GrantState::Revoked,
            })) => {}
            other => panic!("second revoke: {other:?}"),
        }
        assert_eq!(e.grant(&gid).await, g);
    }
    let events = e.audit().await;
    let revoked = events.iter().filter(|e| e.action == "grant.revoked");
    let revokers: Vec<&str> = revoked.map(|e| e.actor.as_str()).collect();
    assert_eq!(revokers, ["alice", "carol", "sam"]);
    assert_chain(&events);
}

/// A revocation on one replica and the sweeper on another, both at a grant's expiry: the
/// grant ends once, as one of the two, and the request says the same.
async fn revoke_races_expiry(backend: Backend) {
    let e = env(backend, HOUR).await;
    let other = e.replica().await;
    for round in 0..ROUNDS {
        let t = Timestamp::now();
        let r = e.open(&alice(), "auto", Duration::from_secs(1), t).await;
        let gid = r.grant_id.expect("the auto profile activates at once");
        let end = ms(t, 1000);
        let sweeper = Arc::clone(&e.broker);
        let sweep = tokio::spawn(async move { sweeper.sweep(end).await });
        let (revoker, id) = (Arc::clone(&other), gid.clone());
        let revoked = tokio::spawn(async move { revoker.revoke(&admin(), &id, None, end).await });
        sweep.await.unwrap().expect("sweep");
        let g = e.grant(&gid).await;
        match revoked.await.unwrap() {
            Ok(_) => assert_eq!(g.state, GrantState::Revoked, "round {round}"),
            Err(BrokerError::Refused(Refusal::GrantNotActive {
                state: GrantState::Expired,
            })) => {
                assert_eq!(g.state, GrantState::Expired, "round {round}")
            }
            Err(err) => panic!("round {round}: revoke: {err:?}"),
        }
        let want = match g.state {
            GrantState::Revoked => RequestState::Revoked,
            _ => RequestState::Expired,
        };
        assert_eq!(e.request(&r.id).await.state, want);
        let ends = e.audit().await.into_iter().filter(|ev| {
            ev.grant_id.as_ref() == Some(&gid) && matches!(ev.action.as_str(), "grant.revoked" | "grant.expired")
        });
        assert_eq!(ends.count(), 1, "round {round}: the grant ends once");
    }
    assert_chain(&e.audit().await);
}

async fn expiry(backend: Backend) {
    let e = env(backend, Duration::from_millis(200)).await;
    let t0 = Timestamp::now();
    let at = |n| Some(ms(t0, n));
    let r = e.open(&alice(), "one", Duration::from_millis(300), t0).await;
    let stale = e.open(&alice(), "one", HOUR, ms(t0, 5)).await;
    assert_eq!(e.store.next_due().await.unwrap(), at(200), "first request's end");

    let a = e.broker.approve(&lead("bob"), &r.id, None, ms(t0, 10)).await.unwrap();
    let gid = a.grant_id.unwrap();
    let active = e.grant(&gid).await;
    assert_eq!(active.expires_at, ms(t0, 310));
    assert_eq!(e.store.next_due().await.unwrap(), at(205), "the stale request's end");
    assert!(e.store.due_grants(ms(t0, 309)).await.unwrap().is_empty());
    assert!(e.store.stale_requests(ms(t0, 204)).await.unwrap().is_empty());

    assert_eq!(e.broker.sweep(ms(t0, 204)).await.unwrap(), at(205));
    assert_eq!(e.request(&stale.id).await.state, RequestState::Pending);

    assert_eq!(e.broker.sweep(ms(t0, 205)).await.unwrap(), at(310));
    let s = e.request(&stale.id).await;
    let want = (RequestState::Expired, at(205), Some("system"), None);
    assert_eq!((s.state, s.decided_at, s.decided_by.as_deref(), s.grant_id), want);
    assert_eq!(e.grant(&gid).await, active);
    assert!(
        ssh(&e.broker, &alice(), ms(t0, 309)).await.is_some(),
        "allowed before expiry"
    );

    assert_eq!(e.broker.sweep(ms(t0, 309)).await.unwrap(), at(310));
    assert_eq!(e.grant(&gid).await, active);
    assert_eq!(
        e.store.due_grants(ms(t0, 310)).await.unwrap(),
        std::slice::from_ref(&active)
    );

    assert_eq!(e.broker.sweep(ms(t0, 310)).await.unwrap(), None, "nothing left to do");
    let want = Grant {
        state: GrantState::Expired,
        ended_at: at(310),
        ended_by: Some("system".into()),
        end_reason: Some("reached its expiry".into()),
        version: active.version + 1,
        ..active
    };
    assert_eq!(e.grant(&gid).await, want);
    assert_eq!(e.request(&r.id).await.state, RequestState::Expired);
    assert!(
        ssh(&e.broker, &alice(), ms(t0, 310)).await.is_none(),
        "denied at expiry"
    );

    let before = e.audit().await.len();
    assert_eq!(e.broker.sweep(ms(t0, 10_000)).await.unwrap(), None);
    let events = e.audit().await;
    assert_eq!(events.len(), before, "a second sweep changes nothing");
    let ends: Vec<(&str, Option<&str>, Option<&str>)> = events
        .iter()
        .filter(|e| e.action.ends_with(".expired"))
        .map(|e| (e.action.as_str(), e.request_id.as_deref(), e.grant_id.as_deref()))
        .collect();
    let stale = ("request.expired", Some(stale.id.as_str()), None);
    let grant = ("grant.expired", Some(r.id.as_str()), Some(gid.as_str()));
    assert_eq!(ends, [stale, grant]);
    assert_chain(&events);
}

async fn tokens(backend: Backend) {
    let e = env(backend, HOUR).await;
    let s = &e.store;
    let later = Timestamp::now().saturating_add(HOUR);
    let event = |jti: &str| AuditDraft::new("token.revoked", "alice", jti);
    assert!(!s.token_revoked("jti-1").await.unwrap());
    s.revoke_token("jti-1", later, event("jti-1")).await.unwrap();
    assert!(s.token_revoked("jti-1").await.unwrap());
    assert!(!s.token_revoked("jti-2").await.unwrap());
    let twice = s.revoke_token("jti-1", later, event("jti-1")).await;
    twice.expect("revoking twice is fine");
    assert!(s.token_revoked("jti-1").await.unwrap());

    // An entry past its token's expiry is purged at the next revocation.
    let long_ago = Timestamp::from_millis(1_000);
    s.revoke_token("old", long_ago, event("old")).await.unwrap();
    assert!(s.token_revoked("old").await.unwrap());
    s.revoke_token("jti-2", later, event("jti-2")).await.unwrap();
    assert!(!s.token_revoked("old").await.unwrap());
    assert!(s.token_revoked("jti-1").await.unwrap() && s.token_revoked("jti-2").await.unwrap());

    let events = e.audit().await;
    assert_eq!(actions(&events), ["token.revoked"; 4]);
    assert_chain(&events);
}

async fn sessions(backend: Backend) {
    let e = env(backend, HOUR).await;
    let s = &e.store;
    let now = Timestamp::now();
    s.upsert_idp_user("alice@example.com", &["dba".into()], "!idp:corp", now)
        .await
        .unwrap();
    let record = SessionRecord {
        id_hash: "h1".into(),
        user: "alice@example.com".into(),
        email: Some("alice@example.com".into()),
        groups: vec!["dba".into()],
        idp: "corp".into(),
        created_at: now,
        expires_at: now.saturating_add(HOUR),
        ended_at: None,
    };
    let started = || AuditDraft::new("session.started", "alice@example.com", "corp");
    s.insert_session(&record, started(), None).await.unwrap();
    assert!(matches!(
        s.insert_session(&record, started(), None).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let found = s.session("h1").await.unwrap().expect("the session");
    assert_eq!(found.session.user, "alice@example.com");
    assert_eq!(found.session.groups, ["dba"]);
    assert_eq!(found.session.email.as_deref(), Some("alice@example.com"));
    assert!(found.session.ended_at.is_none() && !found.user_disabled);
    assert!(s.session("h2").await.unwrap().is_none());

    // Disabling the user shows on the session at once.
    s.set_user_disabled(
        "alice@example.com",
        true,
        AuditDraft::new("user.disabled", "admin", "alice"),
    )
    .await
    .unwrap();
    assert!(s.session("h1").await.unwrap().unwrap().user_disabled);

    let ended = || AuditDraft::new("session.ended", "alice@example.com", "corp");
    assert!(s.end_session("h1", now, ended()).await.unwrap());
    assert!(!s.end_session("h1", now, ended()).await.unwrap(), "ends once");
    assert!(s.session("h1").await.unwrap().unwrap().session.ended_at.is_some());

    // A session of a user who has no row at all counts as disabled.
    let orphan = SessionRecord {
        id_hash: "h3".into(),
        user: "ghost".into(),
        ..record.clone()
    };
    s.insert_session(&orphan, started(), None).await.unwrap();
    assert!(s.session("h3").await.unwrap().unwrap().user_disabled);

    // A login's state is spent with the session it yields: once.
    let later = now.saturating_add(HOUR);
    let first = SessionRecord {
        id_hash: "h4".into(),
        ..record.clone()
    };
    s.insert_session(&first, started(), Some(("state:k", later)))
        .await
        .unwrap();
    let second = SessionRecord {
        id_hash: "h5".into(),
        ..record.clone()
    };
    assert!(matches!(
        s.insert_session(&second, started(), Some(("state:k", later))).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(s.session("h5").await.unwrap().is_none(), "no session without the state");
    // Several flows go in together or not at all.
    assert!(matches!(
        s.put_flows(&[("cli:new", "x", later), ("state:k", "used", later)])
            .await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(s.peek_flow("cli:new", now).await.unwrap(), None);

    // Purging removes sessions past their expiry only.
    s.purge_logins(now.saturating_add(2 * HOUR)).await.unwrap();
    assert!(s.session("h3").await.unwrap().is_none());
    let events = e.audit().await;
    assert_eq!(
        actions(&events),
        [
            "session.started",
            "user.disabled",
            "session.ended",
            "session.started",
            "session.started"
        ]
    );
    assert_chain(&events);
}

async fn login_flows(backend: Backend) {
    let e = env(backend, HOUR).await;
    let s = &e.store;
    let now = Timestamp::now();
    let later = now.saturating_add(HOUR);
    s.put_flow("cli:a", "payload-a", later).await.unwrap();
    assert!(matches!(
        s.put_flow("cli:a", "again", later).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(s.peek_flow("cli:a", now).await.unwrap().as_deref(), Some("payload-a"));
    assert!(s.update_flow("cli:a", "payload-b", now).await.unwrap());
    assert!(!s.update_flow("cli:none", "x", now).await.unwrap());
    assert_eq!(s.take_flow("cli:a", now).await.unwrap().as_deref(), Some("payload-b"));
    assert_eq!(s.take_flow("cli:a", now).await.unwrap(), None, "taken once");
    assert_eq!(s.peek_flow("cli:a", now).await.unwrap(), None);

    // Expired values are never handed out, and purging deletes them.
    s.put_flow("cli:old", "x", now).await.unwrap();
    assert_eq!(s.peek_flow("cli:old", now).await.unwrap(), None);
    assert_eq!(s.take_flow("cli:old", now).await.unwrap(), None);
    s.put_flow("cli:old2", "x", now).await.unwrap();
    s.purge_logins(now.saturating_add(Duration::from_secs(1)))
        .await
        .unwrap();
    s.put_flow("cli:old2", "reused key after purge", later).await.unwrap();

    // Racing takers: exactly one gets the value.
    s.put_flow("cli:race", "prize", later).await.unwrap();
    let takers: Vec<_> = (0..8)
        .map(|_| {
            let s = Arc::clone(&e.store);
            tokio::spawn(async move { s.take_flow("cli:race", Timestamp::now()).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for t in takers {
        won += usize::from(t.await.unwrap().is_some());
    }
    assert_eq!(won, 1);
}

async fn idp_users(backend: Backend) {
    let e = env(backend, HOUR).await;
    let s = &e.store;
    let now = Timestamp::now();
    let first = s
        .upsert_idp_user("bob@example.com", &["dba-leads".into()], "!idp:corp", now)
        .await
        .unwrap();
    assert_eq!(first.password_hash, "!idp:corp");
    assert!(!first.disabled);
    // Groups follow the IdP at each login.
    let again = s
        .upsert_idp_user("bob@example.com", &["dba".into(), "security".into()], "!idp:corp", now)
        .await
        .unwrap();
    assert_eq!(again.groups, ["dba", "security"]);
    assert_eq!(
        s.user("bob@example.com").await.unwrap().unwrap().groups,
        ["dba", "security"]
    );

    // A local user of the same name, or another IdP's, is left untouched.
    let local = UserRecord {
        name: "carol".into(),
        groups: vec!["dba".into()],
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        disabled: false,
        created_at: now,
    };
    s.add_user(&local, AuditDraft::new("user.added", "admin", "carol"))
        .await
        .unwrap();
    let clash = s
        .upsert_idp_user("carol", &["security".into()], "!idp:corp", now)
        .await
        .unwrap();
    assert_eq!(clash.password_hash, local.password_hash);
    assert_eq!(s.user("carol").await.unwrap().unwrap().groups, ["dba"]);
    let other = s
        .upsert_idp_user("bob@example.com", &["security".into()], "!idp:other", now)
        .await
        .unwrap();
    assert_eq!(other.password_hash, "!idp:corp");
    assert_eq!(
        s.user("bob@example.com").await.unwrap().unwrap().groups,
        ["dba", "security"]
    );

    // A disabled IdP user stays disabled through later logins.
    s.set_user_disabled(
        "bob@example.com",
        true,
        AuditDraft::new("user.disabled", "admin", "bob"),
    )
    .await
    .unwrap();
    let later = s
        .upsert_idp_user("bob@example.com", &["dba".into()], "!idp:corp", now)
        .await
        .unwrap();
    assert!(later.disabled);
}

async fn audit_paging(backend: Backend) {
    let e = env(backend, HOUR).await;
    let s = &e.store;
    let drafts = |range: std::ops::RangeInclusive<i64>| -> Vec<AuditDraft> {
        let draft = |i: i64| AuditDraft {
            time: Some(Timestamp::from_millis(i * 1000)),
            ..AuditDraft::new("test.event", "tester", &format!("t{i}"))
        };
        range.map(draft).collect()
    };
    s.append_audit(drafts(1..=4)).await.unwrap();
    s.append_audit(vec![]).await.unwrap();
    s.append_audit(drafts(5..=10)).await.unwrap();

    let seqs = |events: &[AuditEvent]| events.iter().map(|e| e.seq).collect::<Vec<_>>();
    let page = |after: i64, since: Option<i64>, limit: u32| async move {
        let since = since.map(Timestamp::from_millis);
        seqs(&s.audit_events(after, since, limit).await.unwrap())
    };
    let all = s.audit_events(0, None, 100).await.unwrap();
    assert_eq!(seqs(&all), (1..=10).collect::<Vec<_>>());
    for (i, ev) in (1..).zip(&all) {
        assert_eq!((ev.target.clone(), ev.time.as_millis()), (format!("t{i}"), i * 1000));
    }
    assert_chain(&all);

    assert_eq!(page(3, None, 4).await, [4, 5, 6, 7]);
    assert_eq!(page(0, Some(5000), 100).await, [5, 6, 7, 8, 9, 10]);
    assert_eq!(page(7, Some(5000), 100).await, [8, 9, 10]);
    assert_eq!(page(0, Some(5001), 2).await, [6, 7]);
    assert!(page(0, Some(10_001), 100).await.is_empty());
    assert!(page(10, None, 100).await.is_empty());
    assert!(page(0, None, 0).await.is_empty());

    // Paging through in small steps gives back the whole log, in order.
    let mut paged: Vec<AuditEvent> = Vec::new();
    loop {
        let after = paged.last().map_or(0, |e| e.seq);
        let next = s.audit_events(after, None, 3).await.unwrap();
        if next.is_empty() {
            break;
        }
        assert!(next.len() <= 3);
        paged.extend(next);
    }
    assert_eq!(paged, all);

    // Events by action, between two seqs: what each replica reads to follow logouts.
    let mut other = AuditDraft::new("other.event", "tester", "t11");
    other.time = Some(Timestamp::from_millis(11_000));
    let mut odd = drafts(12..=12);
    odd[0].action = "odd.event";
    s.append_audit(vec![other]).await.unwrap();
    s.append_audit(odd).await.unwrap();
    let by_action = |after: i64, upto: i64, actions: &'static [&'static str], limit: u32| async move {
        seqs(&s.audit_actions(after, upto, actions, limit).await.unwrap())
    };
    assert_eq!(by_action(0, 12, &["other.event", "odd.event"], 100).await, [11, 12]);
    assert_eq!(
        by_action(0, 11, &["other.event", "odd.event"], 100).await,
        [11],
        "up to the seq given"
    );
    assert_eq!(
        by_action(11, 12, &["other.event", "odd.event"], 100).await,
        [12],
        "after the seq given"
    );
    assert_eq!(
        by_action(0, 12, &["test.event"], 3).await,
        [1, 2, 3],
        "at most the limit"
    );
    assert!(by_action(0, 12, &["no.such.event"], 100).await.is_empty());
    assert!(by_action(0, 12, &[], 100).await.is_empty());
}

async fn refusals(backend: Backend) {
    use RequestState::{Active, Cancelled, Denied, Pending};
    use Step::{Approve, Cancel, Deny};
    let e = env(backend, HOUR).await;
    let t = Timestamp::now();
    let (bob, carol) = (lead("bob"), lead("carol"));

    // Alice is also a lead: she still may not decide her own request.
    let alice_lead = Identity::new("alice", ["dba", "dba-leads"]);
    let own = e.open(&alice_lead, "one", HOUR, t).await.id;
    e.refused(&own, Approve(&alice_lead), t, Refusal::SelfApproval).await;
    e.refused(&own, Deny(&alice_lead, "no"), t, Refusal::SelfApproval).await;

    // A second approval by the same approver does not count.
    let two = e.open(&alice(), "two", HOUR, t).await.id;
    let after_one = e.broker.approve(&bob, &two, None, t).await.unwrap();
    assert_eq!((after_one.state, after_one.approvals.len()), (Pending, 1));
    e.refused(&two, Approve(&bob), ms(t, 1), Refusal::AlreadyApproved).await;
    let reason_required = Refusal::DecisionReasonRequired;
    e.refused(&two, Deny(&carol, "  "), t, reason_required).await;
    e.refused(&two, Cancel(&bob), t, Refusal::NotOwner).await;

    // Denied: nobody can approve, deny again or cancel it.
    let denied = e.broker.deny(&carol, &two, "not now".into(), ms(t, 2)).await.unwrap();
    let got = (
        denied.state,
        denied.decided_by.as_deref(),
        denied.decision_reason.as_deref(),
    );
    assert_eq!(got, (Denied, Some("carol"), Some("not now")));
    e.refused(&two, Approve(&carol), t, not_pending(Denied)).await;
    e.refused(&two, Deny(&bob, "x"), t, not_pending(Denied)).await;
    e.refused(&two, Cancel(&alice()), t, not_pending(Denied)).await;

    // Cancelled.
    let c = e.open(&alice(), "one", HOUR, t).await.id;
    let cancelled = e.broker.cancel(&alice(), &c, ms(t, 3)).await.unwrap();
    assert_eq!(cancelled.state, Cancelled);
    e.refused(&c, Approve(&bob), t, not_pending(Cancelled)).await;

    // Past its time to live, a pending request cannot be approved even before the sweep.
    let late = e.open(&alice(), "one", HOUR, t).await;
    let at = late.pending_until;
    e.refused(&late.id, Approve(&bob), at, Refusal::RequestExpired { at })
        .await;

    // Already active: a later approval or denial changes nothing.
    let gid = e.granted(HOUR, t).await;
    let active = e.grant(&gid).await.request_id;
    e.refused(&active, Approve(&carol), t, not_pending(Active)).await;
    e.refused(&active, Deny(&carol, "late"), t, not_pending(Active)).await;

    let grants = e.store.grants(GrantFilter::default()).await.unwrap();
    let ids: Vec<&str> = grants.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids, [gid.as_str()], "only the approved request has a grant");
    assert_chain(&e.audit().await);
}

/// No store, no access: opening a store that cannot be reached fails as `Unavailable`.
async fn fail_closed(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = match backend {
        Backend::Postgres => "postgres://postgres:jitgate-test@127.0.0.1:1/postgres".to_owned(),
        Backend::Sqlite => {
            // A directory that cannot be created: its parent is a file.
            std::fs::write(dir.path().join("file"), b"").unwrap();
            format!("sqlite://{}/file/sub/jitgate.db", dir.path().display())
        }
    };
    match store::open(&url).await {
        Err(StoreError::Unavailable(_)) => {}
        Err(other) => panic!("{url}: expected Unavailable, got {other:?}"),
        Ok(_) => panic!("{url}: opened a store that cannot exist"),
    }
}

fn ids<T>(list: &[T], id: fn(&T) -> &str) -> Vec<String> {
    list.iter().map(|x| id(x).to_owned()).collect()
}

/// Each person lists what they asked for, what they may decide, and (admins) everything;
/// the store does the filtering, so nobody's own rows fall out of a capped listing.
async fn listings(backend: Backend) {
    let e = env(backend, HOUR).await;
    let b = &e.broker;
    let now = Timestamp::now();
    let carol = Identity::new("carol", ["dba"]);
    let olivia = Identity::new("olivia", ["other-leads"]);
    let mine = e.open(&alice(), "one", HOUR, now).await.id;
    let theirs = e.open(&carol, "other", HOUR, ms(now, 1)).await.id;
    fn req(r: &AccessRequest) -> &str {
        &r.id
    }

    assert_eq!(ids(&b.requests(&alice(), false).await.unwrap(), req), [mine.as_str()]);
    assert_eq!(ids(&b.requests(&carol, false).await.unwrap(), req), [theirs.as_str()]);
    assert_eq!(
        ids(&b.requests(&lead("bob"), true).await.unwrap(), req),
        [mine.as_str()],
        "bob approves one, not other"
    );
    assert_eq!(ids(&b.requests(&olivia, true).await.unwrap(), req), [theirs.as_str()]);
    assert_eq!(
        ids(&b.requests(&admin(), false).await.unwrap(), req),
        [theirs.as_str(), mine.as_str()],
        "newest first"
    );
    assert_eq!(b.pending_count().await.unwrap(), 2);

    let g_mine = b
        .approve(&lead("bob"), &mine, None, now)
        .await
        .unwrap()
        .grant_id
        .unwrap();
    let g_theirs = b
        .approve(&olivia, &theirs, None, ms(now, 2))
        .await
        .unwrap()
        .grant_id
        .unwrap();
    assert!(
        b.requests(&lead("bob"), true).await.unwrap().is_empty(),
        "nothing pending for bob"
    );
    assert_eq!(b.pending_count().await.unwrap(), 0);
    fn grant(g: &Grant) -> &str {
        &g.id
    }
    assert_eq!(ids(&b.grants(&alice(), false).await.unwrap(), grant), [g_mine.as_str()]);
    assert_eq!(
        ids(&b.grants(&lead("bob"), false).await.unwrap(), grant),
        [g_mine.as_str()]
    );
    assert_eq!(
        ids(&b.grants(&olivia, false).await.unwrap(), grant),
        [g_theirs.as_str()]
    );
    assert_eq!(
        ids(&b.grants(&admin(), false).await.unwrap(), grant),
        [g_theirs.as_str(), g_mine.as_str()]
    );

    b.revoke(&olivia, &g_theirs, None, ms(now, 3)).await.unwrap();
    assert!(
        b.grants(&carol, false).await.unwrap().is_empty(),
        "revoked is not active"
    );
    assert_eq!(
        ids(&b.grants(&carol, true).await.unwrap(), grant),
        [g_theirs],
        "--all shows ended grants"
    );
    assert!(b.visible_grant(&lead("bob"), &g_mine).await.is_ok());
    assert!(matches!(
        b.visible_request(&carol, &mine).await,
        Err(BrokerError::NotFound(_))
    ));
}

/// The sweeper reloads the index from the store while approvals and revocations change it;
/// a reload that read the store just before a revocation must not bring the grant back.
async fn reloads_never_resurrect_revoked_grants(backend: Backend) {
    let e = env(backend, HOUR).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reloader = tokio::spawn({
        let (b, stop) = (Arc::clone(&e.broker), Arc::clone(&stop));
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                b.refresh_index(Timestamp::now()).await.unwrap();
            }
        }
    });
    for round in 0..ROUNDS * 2 {
        let now = Timestamp::now();
        let g = e.granted(HOUR, now).await;
        assert!(
            ssh(&e.broker, &alice(), now).await.is_some(),
            "round {round}: the new grant authorizes"
        );
        e.broker.revoke(&lead("bob"), &g, None, now).await.unwrap();
        for _ in 0..5 {
            assert!(
                ssh(&e.broker, &alice(), Timestamp::now()).await.is_none(),
                "round {round}: revoked grant came back"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reloader.await.unwrap();
}
