//! Two proxies on one PostgreSQL store: a grant revoked through one replica is cut on the
//! other at its next look at the store (within a second, by the sweeper's schedule).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TestDb};
use jitgate::access::{AccessProfile, Action, Identity, Policy, Resource, SshScope};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_replica_cuts_connections_on_another() {
    let db = TestDb::new(Backend::Postgres).await;
    let ttl = Duration::from_secs(3600);
    let a = Broker::new(policy(), jitgate::store::open(&db.url).await.unwrap(), Live::new(), ttl);
    let b = Broker::new(policy(), jitgate::store::open(&db.url).await.unwrap(), Live::new(), ttl);
    let dev = Identity::new("dana", ["dev"]);
    let lead = Identity::new("lee", ["leads"]);

    let now = Timestamp::now();
    let request = a
        .open_request(&dev, "staging-shell", "deploy".into(), Duration::from_secs(600), now)
        .await
        .unwrap();
    let grant_id = request.grant_id.clone().expect("auto-approved");

    // Replica B learns of the grant from the store, authorizes and registers a connection.
    b.refresh_index(now).await.unwrap();
    let labels = BTreeMap::from([("env".into(), "staging".into())]);
    let ssh = Resource::Ssh {
        host: "web-stg-1",
        labels: &labels,
        login: "ubuntu",
    };
    let authorized = b
        .authorize(&dev, ssh, Action::SshLogin, now)
        .await
        .unwrap()
        .expect("allowed on B");
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
    let again = b
        .authorize(&dev, ssh, Action::SshLogin, Timestamp::now())
        .await
        .unwrap();
    assert!(again.is_err(), "B no longer authorizes the revoked grant");
}
