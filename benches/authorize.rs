//! The cost of one access decision at scale: `authorize` against 1,000 profiles and 10,000
//! active grants held by 2,000 users (5 each), and the cost of building that grant index.
//!
//! `cargo bench --bench authorize`; the goal is a median under 5 µs per decision.
//! Criterion keeps its estimates (mean and median) under target/criterion/.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use jitgate::access::{
    authorize, AccessProfile, AccessRequest, Action, AppScope, Grant, GrantIndex, HttpScope, Identity, KubeScope,
    Outcome, Policy, Principal, Resource, SshScope,
};
use jitgate::time::Timestamp;

const PROFILES: usize = 1_000;
const USERS: usize = 2_000;
/// Each team has `PROFILES / TEAMS` profiles, and each of its members holds a grant of every
/// one of them: 2,000 users × 5 = 10,000 grants.
const TEAMS: usize = 200;
const NOW: Timestamp = Timestamp::from_millis(1_700_000_000_000);

fn team(i: usize) -> usize {
    i % TEAMS
}

/// Profile `i` belongs to team `i % TEAMS`; odd ones need one approval, even ones none.
fn profile(i: usize) -> AccessProfile {
    let t = team(i);
    AccessProfile {
        name: format!("p{i:04}"),
        description: format!("profile {i} of team {t}"),
        max_duration: Duration::from_secs(8 * 3600),
        requesters: vec![Principal::Group(format!("team-{t}"))],
        approvers: vec![Principal::Group(format!("leads-{t}"))],
        approvals_required: (i % 2) as u32,
        require_reason: true,
        ssh: Some(SshScope {
            hosts: host_labels(i),
            host_names: Vec::new(),
            logins: vec![format!("app{}", i % 10), "deploy".into()],
            port_forwarding: i.is_multiple_of(3),
        }),
        kube: Some(KubeScope {
            clusters: vec![format!("cluster-{}", i % 5)],
            namespaces: vec![format!("ns-{i}")],
            groups: vec![format!("jit:{i}")],
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            resources: vec!["pods".into(), "pods/log".into(), "deployments".into()],
            names: vec![],
        }),
        http: Some(HttpScope {
            apps: vec![AppScope::unrestricted(&format!("app-{i}"))],
        }),
        notify: Vec::new(),
        approve_in_chat: false,
    }
}

fn host_labels(i: usize) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "env".to_owned(),
            if i.is_multiple_of(2) { "prod" } else { "staging" }.to_owned(),
        ),
        ("service".to_owned(), format!("svc-{i}")),
    ])
}

fn user(j: usize) -> Identity {
    Identity::new(
        format!("user{j:04}"),
        [format!("team-{}", team(j)), "engineering".to_owned()],
    )
}

/// The profiles user `j` holds grants of.
fn held_by(j: usize) -> impl Iterator<Item = usize> {
    (0..PROFILES / TEAMS).map(move |k| team(j) + k * TEAMS)
}

/// Opens and, where the profile needs it, approves a request per (user, profile).
fn grants(policy: &Policy) -> Vec<Grant> {
    let mut out = Vec::with_capacity(USERS * PROFILES / TEAMS);
    for j in 0..USERS {
        let who = user(j);
        for i in held_by(j) {
            let p = policy.profile(&format!("p{i:04}")).expect("profile exists");
            let n = out.len();
            let outcome = AccessRequest::open(
                format!("req-{n}"),
                p,
                who.clone(),
                "INC-1".into(),
                Duration::from_secs(3600),
                NOW,
                Duration::from_secs(3600),
                || format!("grant-{n}"),
            )
            .expect("a member of the team may request");
            let grant = match outcome {
                Outcome::Activated(_, g) => g,
                Outcome::Pending(r) => {
                    let lead = Identity::new(format!("lead-{}", team(i)), [format!("leads-{}", team(i))]);
                    match r.approve(p, &lead, None, NOW, || format!("grant-{n}")) {
                        Ok(Outcome::Activated(_, g)) => g,
                        other => panic!("one approval should activate p{i:04}: {other:?}"),
                    }
                }
            };
            out.push(grant);
        }
    }
    out
}

fn bench_authorize(c: &mut Criterion) {
    let policy = Policy::new((0..PROFILES).map(profile).collect(), vec![]);
    let grants = grants(&policy);
    let index = GrantIndex::build(&grants, &policy, NOW);
    assert_eq!(index.len(), USERS * PROFILES / TEAMS);
    let now = NOW.saturating_add(Duration::from_secs(60));

    let j = 1_234;
    let who = user(j);
    // The last of the user's profiles, so the decision looks at every grant they hold.
    let held = held_by(j).last().unwrap();
    let held_labels = host_labels(held);
    let ssh_login = Resource::Ssh {
        host: "db-1",
        labels: &held_labels,
        login: "deploy",
    };
    let ns = format!("ns-{held}");
    let cluster = format!("cluster-{}", held % 5);
    let kube_pods = Resource::Kube {
        cluster: &cluster,
        namespace: Some(&ns),
        group: "",
        resource: "pods",
        subresource: None,
        name: None,
    };
    // A host of another team: none of the caller's grants allows it, and no profile they may
    // request does either.
    let other = (held + 1) % PROFILES;
    let other_labels = host_labels(other);
    let ssh_elsewhere = Resource::Ssh {
        host: "db-2",
        labels: &other_labels,
        login: "deploy",
    };

    assert!(authorize(&policy, &index, &who, ssh_login, Action::SshLogin, now).is_ok());
    assert!(authorize(&policy, &index, &who, kube_pods, Action::Kube { verb: "list" }, now).is_ok());
    assert!(authorize(&policy, &index, &who, ssh_elsewhere, Action::SshLogin, now).is_err());

    let mut g = c.benchmark_group("authorize");
    g.bench_function("ssh_login_allowed", |b| {
        b.iter(|| {
            authorize(
                &policy,
                &index,
                black_box(&who),
                black_box(ssh_login),
                Action::SshLogin,
                now,
            )
        })
    });
    g.bench_function("kube_verb_allowed", |b| {
        b.iter(|| {
            authorize(
                &policy,
                &index,
                black_box(&who),
                black_box(kube_pods),
                Action::Kube { verb: "list" },
                now,
            )
        })
    });
    g.bench_function("ssh_login_denied", |b| {
        b.iter(|| {
            authorize(
                &policy,
                &index,
                black_box(&who),
                black_box(ssh_elsewhere),
                Action::SshLogin,
                now,
            )
        })
    });
    g.finish();

    c.bench_function("grant_index_build/10k_grants", |b| {
        b.iter(|| GrantIndex::build(black_box(&grants), &policy, now))
    });
}

criterion_group!(benches, bench_authorize);
criterion_main!(benches);
