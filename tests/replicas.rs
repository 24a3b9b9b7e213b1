//! Two proxies on one PostgreSQL store: a grant revoked through one replica is cut on the
//! other at its next look at the store (within a second, by the sweeper's schedule).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TestDb};
use jitgate::access::{AccessProfile, AccessRequest, Action, Authorized, Identity, Policy, Resource, SshScope};
use jitgate::broker::Broker;
use jitgate::live::Live;
use jitgate::time::Timestamp;

fn policy() -> Arc<Policy> {
    let profile = AccessProfile {
        name: "staging-shell".into(),
        description: String::new(),
        max_duration: Duration::from_secs(3600),
        requesters: vec!["group:dev".parse().unwrap()],
        approvers: vec!["group:leads".parse().unwrap()],
        approvals_required: 0,
        require_reason: false,
        ssh: Some(SshScope {
            hosts: BTreeMap::from([("env".into(), "staging".into())]),
            host_names: Vec::new(),
            logins: vec!["ubuntu".into()],
            port_forwarding: false,
        }),
        kube: None,
        http: None,
        notify: Vec::new(),
        approve_in_chat: false,
    };
    Arc::new(Policy::new(vec![profile], vec![]))
}

/// Two replicas on one store, A and B, and dana's request, approved by policy, made
/// through A at `now`.
async fn replicas(db: &TestDb, now: Timestamp) -> (Broker, Broker, Identity, AccessRequest) {
    let ttl = Duration::from_secs(3600);
    let open = || async { jitgate::store::open(&db.url).await.unwrap() };
    let a = Broker::new(policy(), open().await, Live::new(), ttl);
    let b = Broker::new(policy(), open().await, Live::new(), ttl);
    let dev = Identity::new("dana", ["dev"]);
    let request = a
        .open_request(&dev, "staging-shell", "deploy".into(), Duration::from_secs(600), now)
        .await
        .unwrap();
    (a, b, dev, request)
}

/// What `broker` decides for `who` logging in as ubuntu on a staging host.
async fn ssh_on(broker: &Broker, who: &Identity, now: Timestamp) -> Option<Authorized> {
    let labels = BTreeMap::from([("env".into(), "staging".into())]);
    let ssh = Resource::Ssh {
        host: "web-stg-1",
        labels: &labels,
        login: "ubuntu",
    };
    broker.authorize(who, ssh, Action::SshLogin, now).await.unwrap().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_replica_cuts_connections_on_another() {
    let db = TestDb::new(Backend::Postgres).await;
    let now = Timestamp::now();
    let (a, b, dev, request) = replicas(&db, now).await;
    let lead = Identity::new("lee", ["leads"]);
    let grant_id = request.grant_id.clone().expect("auto-approved");

    // Replica B learns of the grant from the store, authorizes and registers a connection.
    b.refresh_index(now).await.unwrap();
    let authorized = ssh_on(&b, &dev, now).await.expect("allowed on B");
    assert_eq!(authorized.grant_id(), grant_id);
    let conn = b.live().register(&authorized);

    a.revoke(&lead, &grant_id, Some("incident over".into()), Timestamp::now())
        .await
        .unwrap();
    assert!(!conn.is_cut(), "B has not looked at the store yet");
    b.sweep(Timestamp::now()).await.unwrap();
    tokio::time::timeout(Duration::from_millis(100), conn.cancelled())
        .await
        .expect("B cut the connection");
    assert!(
        ssh_on(&b, &dev, Timestamp::now()).await.is_none(),
        "B no longer authorizes the revoked grant"
    );
}

/// A logout through one replica ends what that login opened on another, at the other's next
/// look at the store; the same person's other logins keep theirs. A renewal seen first
/// carries the renewed token's connections over to the new name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_replica_ends_that_logins_connections_on_another() {
    use jitgate::live::{login_events, session_login, token_login};

    let db = TestDb::new(Backend::Postgres).await;
    let now = Timestamp::now();
    let (a, b, dev, _) = replicas(&db, now).await;
    // B's first look at the store: it learns the grant and starts following logins there.
    b.sweep(now).await.unwrap();
    let authorized = ssh_on(&b, &dev, now).await.expect("allowed on B");
    let browser_session = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let laptop = b.live().register_for(&authorized, &token_login("jti-laptop"));
    let desktop = b.live().register_for(&authorized, &token_login("jti-desktop"));
    let browser = b.live().register_for(&authorized, &session_login(browser_session));

    // Through A: the laptop's token is renewed, then logged out with; the browser logs out.
    let store = a.store();
    store
        .append_audit(vec![login_events::token_replaced(
            "dana",
            "corp",
            "jti-laptop",
            "jti-laptop-2",
        )])
        .await
        .unwrap();
    let expires = Timestamp::from_millis(now.as_millis() + 3_600_000);
    store
        .revoke_token("jti-laptop-2", expires, login_events::logout("dana", "jti-laptop-2"))
        .await
        .unwrap();
    store
        .append_audit(vec![login_events::session_ended("dana", "corp", browser_session)])
        .await
        .unwrap();
    assert!(
        !laptop.is_cut() && !browser.is_cut(),
        "B has not looked at the store yet"
    );

    b.sweep(Timestamp::now()).await.unwrap();
    for (what, conn) in [("the renewed laptop login", &laptop), ("the browser session", &browser)] {
        tokio::time::timeout(Duration::from_millis(100), conn.cancelled())
            .await
            .unwrap_or_else(|_| panic!("B cut {what}'s connection"));
        assert!(
            conn.ended_by_logout(),
            "{what} ended by its logout, not its grant's end"
        );
    }
    assert!(
        !desktop.is_cut(),
        "another login of the same person keeps its connection"
    );

    // The next round reads on from there: a later logout of the desktop is seen too.
    store
        .revoke_token("jti-desktop", expires, login_events::logout("dana", "jti-desktop"))
        .await
        .unwrap();
    b.sweep(Timestamp::now()).await.unwrap();
    tokio::time::timeout(Duration::from_millis(100), desktop.cancelled())
        .await
        .expect("B cut the desktop login's connection in its next round");
}

/// A replica follows logouts from the log's head as it was before it could authorize
/// anything: older logouts do not touch what it opens, and every later one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_follows_logouts_from_before_its_first_authorization() {
    use jitgate::live::{login_events, token_login};

    let db = TestDb::new(Backend::Postgres).await;
    // B is made now but looks at the store only later, as a replica starting then would.
    let now = Timestamp::now();
    let (a, b, dev, _) = replicas(&db, now).await;
    let expires = Timestamp::from_millis(now.as_millis() + 3_600_000);
    // A logout recorded before B starts: B never saw that login's connections.
    a.store()
        .revoke_token("jti-old", expires, login_events::logout("dana", "jti-old"))
        .await
        .unwrap();

    assert!(
        ssh_on(&b, &dev, now).await.is_none(),
        "nothing is authorized before B's first look at the store"
    );
    b.sweep(Timestamp::now()).await.unwrap();
    let authorized = ssh_on(&b, &dev, Timestamp::now()).await.expect("allowed on B");
    let conn = b.live().register_for(&authorized, &token_login("jti-new"));
    b.sweep(Timestamp::now()).await.unwrap();
    assert!(!conn.is_cut(), "a logout from before B started ends nothing B opened");

    // The first event after B's start point is not missed.
    a.store()
        .revoke_token("jti-new", expires, login_events::logout("dana", "jti-new"))
        .await
        .unwrap();
    b.sweep(Timestamp::now()).await.unwrap();
    tokio::time::timeout(Duration::from_millis(100), conn.cancelled())
        .await
        .expect("B cut the connection of the login that logged out");
}
