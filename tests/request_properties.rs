//! Property tests of the access core: random profiles, a pool of identities and random
//! sequences of steps (open, approve, deny, cancel, revoke, expire, advance time, authorize)
//! run against the request state machine with no database. An independent oracle predicts
//! whether each step is allowed, and the rules of DESIGN.md §4 are checked after every step.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use jitgate::access::{
    authorize, AccessProfile, AccessRequest, Action, AppScope, Grant, GrantIndex, GrantState, HttpScope, Identity,
    KubeScope, Outcome, Policy, Principal, Refusal, RequestState, Resource, SshScope,
};
use jitgate::time::Timestamp;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const MAX_PROFILES: usize = 3;
const MAX_IDENTITIES: usize = 6;
const START: Timestamp = Timestamp::from_millis(1_700_000_000_000);

#[derive(Clone, Debug)]
struct ProfileSpec {
    approvals_required: u32,
    max_duration_ms: u64,
    require_reason: bool,
    port_forwarding: bool,
    /// One identity named as an approver by user principal, besides the approver group.
    approver_user: Option<usize>,
}

#[derive(Clone, Debug)]
struct IdentitySpec {
    requester_of: [bool; MAX_PROFILES],
    approver_of: [bool; MAX_PROFILES],
    admin: bool,
}

#[derive(Clone, Debug)]
struct World {
    profiles: Vec<ProfileSpec>,
    identities: Vec<IdentitySpec>,
    request_ttl_ms: u64,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    SshLogin,
    SshPortForward,
    KubeGet,
    KubeDelete,
    Http,
}

#[derive(Clone, Debug)]
enum Op {
    Open {
        who: usize,
        profile: usize,
        /// Of the profile's max_duration; above 1000 asks for too long.
        duration_permille: u32,
        with_reason: bool,
    },
    Approve {
        request: usize,
        by: usize,
    },
    Deny {
        request: usize,
        by: usize,
        with_reason: bool,
    },
    Cancel {
        request: usize,
        by: usize,
    },
    Revoke {
        grant: usize,
        by: usize,
    },
    ExpireGrant {
        grant: usize,
    },
    ExpirePending {
        request: usize,
    },
    Advance {
        ms: u64,
    },
    /// Moves time to the next deadline (a pending request's or a grant's), or just before it.
    AdvanceToDeadline {
        pick: usize,
        just_before: bool,
    },
    Authorize {
        at_offset_ms: u64,
    },
}

fn profile_spec() -> impl Strategy<Value = ProfileSpec> {
    (
        0u32..=3,
        prop_oneof![Just(1u64), 1u64..=120_000],
        any::<bool>(),
        any::<bool>(),
        proptest::option::weighted(0.3, 0..MAX_IDENTITIES),
    )
        .prop_map(
            |(approvals_required, max_duration_ms, require_reason, port_forwarding, approver_user)| ProfileSpec {
                approvals_required,
                max_duration_ms,
                require_reason,
                port_forwarding,
                approver_user,
            },
        )
}

fn identity_spec() -> impl Strategy<Value = IdentitySpec> {
    (
        any::<[bool; MAX_PROFILES]>(),
        any::<[bool; MAX_PROFILES]>(),
        proptest::bool::weighted(0.2),
    )
        .prop_map(|(requester_of, approver_of, admin)| IdentitySpec {
            requester_of,
            approver_of,
            admin,
        })
}

fn world() -> impl Strategy<Value = World> {
    (
        prop::collection::vec(profile_spec(), 1..=MAX_PROFILES),
        prop::collection::vec(identity_spec(), 2..=MAX_IDENTITIES),
        1u64..=180_000,
    )
        .prop_map(|(profiles, identities, request_ttl_ms)| World {
            profiles,
            identities,
            request_ttl_ms,
        })
}

/// Most picks land on a candidate that makes a step interesting (a pending request, an
/// approver of its profile); the rest pick from the whole pool, so refusals happen too.
const PICK_RANGE: usize = 64;
const PICK_FOCUSED: usize = 48;

fn pick<T>(pool: &[T], n: usize, fits: impl Fn(&T) -> bool) -> usize {
    if n < PICK_FOCUSED {
        let fitting: Vec<usize> = (0..pool.len()).filter(|&i| fits(&pool[i])).collect();
        if !fitting.is_empty() {
            return fitting[n % fitting.len()];
        }
    }
    n % pool.len()
}

fn op() -> impl Strategy<Value = Op> {
    let pick = || 0..PICK_RANGE;
    prop_oneof![
        4 => (pick(), pick(), prop_oneof![Just(1000u32), 0u32..=1100], proptest::bool::weighted(0.85)).prop_map(
            |(who, profile, duration_permille, with_reason)| Op::Open { who, profile, duration_permille, with_reason }
        ),
        5 => (pick(), pick()).prop_map(|(request, by)| Op::Approve { request, by }),
        1 => (pick(), pick(), proptest::bool::weighted(0.8))
            .prop_map(|(request, by, with_reason)| Op::Deny { request, by, with_reason }),
        1 => (pick(), pick()).prop_map(|(request, by)| Op::Cancel { request, by }),
        1 => (pick(), pick()).prop_map(|(grant, by)| Op::Revoke { grant, by }),
        1 => pick().prop_map(|grant| Op::ExpireGrant { grant }),
        1 => pick().prop_map(|request| Op::ExpirePending { request }),
        2 => prop_oneof![Just(0u64), Just(1), 0u64..=90_000].prop_map(|ms| Op::Advance { ms }),
        2 => (pick(), any::<bool>()).prop_map(|(pick, just_before)| Op::AdvanceToDeadline { pick, just_before }),
        2 => prop_oneof![Just(0u64), 0u64..=120_000].prop_map(|at_offset_ms| Op::Authorize { at_offset_ms }),
    ]
}

/// The state machine's values as a store would keep them, plus what the oracle needs.
struct Model {
    policy: Policy,
    identities: Vec<Identity>,
    request_ttl: Duration,
    requests: Vec<AccessRequest>,
    grants: Vec<Grant>,
    now: Timestamp,
    next_id: u64,
}

fn profile_name(k: usize) -> String {
    format!("p{k}")
}

/// Every profile has a scope of its own: its resources are allowed by its grants only.
fn build_profile(k: usize, spec: &ProfileSpec) -> AccessProfile {
    let mut approvers = vec![Principal::Group(format!("approve-{k}"))];
    if let Some(u) = spec.approver_user {
        approvers.push(Principal::User(format!("u{u}")));
    }
    AccessProfile {
        name: profile_name(k),
        description: String::new(),
        max_duration: Duration::from_millis(spec.max_duration_ms),
        requesters: vec![Principal::Group(format!("request-{k}"))],
        approvers,
        approvals_required: spec.approvals_required,
        require_reason: spec.require_reason,
        ssh: Some(SshScope {
            hosts: BTreeMap::from([("team".to_owned(), format!("t{k}"))]),
            host_names: Vec::new(),
            logins: vec![format!("login{k}")],
            port_forwarding: spec.port_forwarding,
        }),
        kube: Some(KubeScope {
            clusters: vec![format!("c{k}")],
            namespaces: vec![format!("ns{k}")],
            groups: vec![],
            verbs: vec!["get".into(), "list".into()],
            resources: vec!["pods".into()],
            names: vec![],
        }),
        http: Some(HttpScope {
            apps: vec![AppScope::unrestricted(&format!("app{k}"))],
        }),
        notify: Vec::new(),
        approve_in_chat: false,
    }
}

fn build_identity(i: usize, spec: &IdentitySpec, profiles: usize) -> Identity {
    let mut groups = Vec::new();
    for k in 0..profiles {
        if spec.requester_of[k] {
            groups.push(format!("request-{k}"));
        }
        if spec.approver_of[k] {
            groups.push(format!("approve-{k}"));
        }
    }
    if spec.admin {
        groups.push("security".to_owned());
    }
    Identity::new(format!("u{i}"), groups)
}

impl Model {
    fn new(w: &World) -> Model {
        let profiles = w
            .profiles
            .iter()
            .enumerate()
            .map(|(k, s)| build_profile(k, s))
            .collect();
        let identities = w
            .identities
            .iter()
            .enumerate()
            .map(|(i, s)| build_identity(i, s, w.profiles.len()))
            .collect();
        Model {
            policy: Policy::new(profiles, vec![Principal::Group("security".into())]),
            identities,
            request_ttl: Duration::from_millis(w.request_ttl_ms),
            requests: Vec::new(),
            grants: Vec::new(),
            now: START,
            next_id: 0,
        }
    }

    fn profile(&self, name: &str) -> &AccessProfile {
        self.policy.profile(name).expect("requests name existing profiles")
    }

    fn identity(&self, user: &str) -> &Identity {
        self.identities
            .iter()
            .find(|i| i.user == user)
            .expect("users come from the pool")
    }

    fn fresh_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    fn request_index(&self, id: &str) -> usize {
        self.requests
            .iter()
            .position(|r| r.id == id)
            .expect("grant's request exists")
    }
}

/// A grant id supplier that records whether the state machine asked for one.
struct IdSupply {
    id: String,
    calls: Cell<u32>,
}

impl IdSupply {
    fn new(id: String) -> Self {
        IdSupply {
            id,
            calls: Cell::new(0),
        }
    }

    fn take(&self) -> impl FnOnce() -> String + '_ {
        || {
            self.calls.set(self.calls.get() + 1);
            self.id.clone()
        }
    }
}

/// Fails the case unless `refusal` is one of the reasons the oracle found.
fn expect_outcome<T>(
    what: &str,
    result: &Result<T, Refusal>,
    reasons: &[Refusal],
    same_kind: fn(&Refusal, &Refusal) -> bool,
) -> Result<(), TestCaseError> {
    match result {
        Ok(_) => prop_assert!(
            reasons.is_empty(),
            "{what} succeeded though it should be refused: {reasons:?}"
        ),
        Err(r) => {
            prop_assert!(
                !reasons.is_empty(),
                "{what} refused ({r:?}) though the oracle allows it"
            );
            prop_assert!(
                reasons.iter().any(|e| same_kind(e, r)),
                "{what} refused with {r:?}; expected one of {reasons:?}"
            );
        }
    }
    Ok(())
}

fn same_variant(a: &Refusal, b: &Refusal) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn may_decide(m: &Model, r: &AccessRequest, who: &Identity) -> bool {
    who.user != r.requester.user && m.profile(&r.profile).may_approve(who)
}

/// Why the oracle thinks `who` may not approve or deny `r` now.
fn decide_refusals(m: &Model, r: &AccessRequest, who: &Identity) -> Vec<Refusal> {
    let profile = m.profile(&r.profile);
    let mut reasons = Vec::new();
    if r.state != RequestState::Pending {
        reasons.push(Refusal::NotPending { state: r.state });
    }
    if m.now >= r.pending_until {
        reasons.push(Refusal::RequestExpired { at: r.pending_until });
    }
    if who.user == r.requester.user {
        reasons.push(Refusal::SelfApproval);
    }
    if !profile.may_approve(who) {
        reasons.push(Refusal::NotApprover {
            profile: profile.name.clone(),
        });
    }
    reasons
}

fn apply(m: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    let pools = (m.requests.len(), m.grants.len());
    match *op {
        Op::Open {
            who,
            profile,
            duration_permille,
            with_reason,
        } => {
            let profile = m.policy.profiles()[profile % m.policy.profiles().len()].clone();
            let who = m.identities[pick(&m.identities, who, |i| profile.may_request(i))].clone();
            let duration = profile.max_duration * duration_permille / 1000;
            let reason = if with_reason {
                "INC-1".to_owned()
            } else {
                "  ".to_owned()
            };
            let mut reasons = Vec::new();
            if !profile.may_request(&who) {
                reasons.push(Refusal::NotRequester {
                    profile: profile.name.clone(),
                });
            }
            if profile.require_reason && !with_reason {
                reasons.push(Refusal::ReasonRequired {
                    profile: profile.name.clone(),
                });
            }
            if duration > profile.max_duration {
                reasons.push(Refusal::DurationTooLong {
                    profile: profile.name.clone(),
                    requested: String::new(),
                    max: String::new(),
                });
            }
            let id = m.fresh_id("r");
            let supply = IdSupply::new(m.fresh_id("g"));
            let result = AccessRequest::open(
                id.clone(),
                &profile,
                who.clone(),
                reason,
                duration,
                m.now,
                m.request_ttl,
                supply.take(),
            );
            expect_outcome("open", &result, &reasons, same_variant)?;
            let Ok(outcome) = result else { return Ok(()) };
            let r = outcome.request();
            prop_assert_eq!(&r.id, &id);
            prop_assert_eq!(&r.requester, &who);
            prop_assert!(r.approvals.is_empty());
            prop_assert_eq!(r.pending_until, m.now.saturating_add(m.request_ttl));
            match outcome {
                Outcome::Pending(r) => {
                    prop_assert!(profile.approvals_required > 0, "no approval needed, yet pending");
                    prop_assert_eq!(supply.calls.get(), 0);
                    prop_assert_eq!(r.state, RequestState::Pending);
                    m.requests.push(r);
                }
                Outcome::Activated(r, g) => {
                    prop_assert_eq!(profile.approvals_required, 0, "activated without approvals");
                    activated(m, &supply, &r, &g)?;
                    m.requests.push(r);
                    m.grants.push(g);
                }
            }
        }
        Op::Approve { request, by } if pools.0 > 0 => {
            let i = pick(&m.requests, request, |r| r.state == RequestState::Pending);
            let before = m.requests[i].clone();
            let who = m.identities[pick(&m.identities, by, |who| may_decide(m, &before, who))].clone();
            let profile = m.profile(&before.profile).clone();
            let mut reasons = decide_refusals(m, &before, &who);
            if before.approvals.iter().any(|a| a.approver == who.user) {
                reasons.push(Refusal::AlreadyApproved);
            }
            let terminal = matches!(
                before.state,
                RequestState::Denied | RequestState::Cancelled | RequestState::Expired | RequestState::Revoked
            );
            let supply = IdSupply::new(m.fresh_id("g"));
            let result = before
                .clone()
                .approve(&profile, &who, Some(" ok ".into()), m.now, supply.take());
            prop_assert!(!(terminal && result.is_ok()), "a {} request was approved", before.state);
            expect_outcome("approve", &result, &reasons, same_variant)?;
            let Ok(outcome) = result else {
                prop_assert_eq!(supply.calls.get(), 0, "a refused approval asked for a grant id");
                prop_assert_eq!(&m.requests[i], &before);
                return Ok(());
            };
            let r = outcome.request();
            prop_assert_eq!(r.approvals.len(), before.approvals.len() + 1);
            prop_assert_eq!(&r.approvals[..before.approvals.len()], &before.approvals[..]);
            let added = r.approvals.last().unwrap();
            prop_assert_eq!(&added.approver, &who.user);
            prop_assert_eq!(added.at, m.now);
            prop_assert_eq!(added.reason.as_deref(), Some("ok"));
            match outcome {
                Outcome::Pending(r) => {
                    prop_assert!((r.approvals.len() as u32) < r.approvals_required);
                    prop_assert_eq!(supply.calls.get(), 0);
                    prop_assert_eq!(r.state, RequestState::Pending);
                    m.requests[i] = r;
                }
                Outcome::Activated(r, g) => {
                    prop_assert_eq!(r.approvals.len() as u32, r.approvals_required);
                    prop_assert_eq!(r.decided_by.as_deref(), Some(who.user.as_str()));
                    activated(m, &supply, &r, &g)?;
                    m.requests[i] = r;
                    m.grants.push(g);
                }
            }
        }
        Op::Deny {
            request,
            by,
            with_reason,
        } if pools.0 > 0 => {
            let i = pick(&m.requests, request, |r| r.state == RequestState::Pending);
            let before = m.requests[i].clone();
            let who = m.identities[pick(&m.identities, by, |who| may_decide(m, &before, who))].clone();
            let profile = m.profile(&before.profile).clone();
            let mut reasons = decide_refusals(m, &before, &who);
            if !with_reason {
                reasons.push(Refusal::DecisionReasonRequired);
            }
            let reason = if with_reason { "not now" } else { " \n" };
            let result = before.clone().deny(&profile, &who, reason.into(), m.now);
            expect_outcome("deny", &result, &reasons, same_variant)?;
            match result {
                Ok(r) => {
                    prop_assert_eq!(r.state, RequestState::Denied);
                    prop_assert_eq!(r.decided_at, Some(m.now));
                    prop_assert_eq!(r.decided_by.as_deref(), Some(who.user.as_str()));
                    prop_assert_eq!(r.decision_reason.as_deref(), Some("not now"));
                    prop_assert_eq!(&r.approvals, &before.approvals);
                    m.requests[i] = r;
                }
                Err(_) => prop_assert_eq!(&m.requests[i], &before),
            }
        }
        Op::Cancel { request, by } if pools.0 > 0 => {
            let i = pick(&m.requests, request, |r| r.state == RequestState::Pending);
            let before = m.requests[i].clone();
            let who = m.identities[pick(&m.identities, by, |who| who.user == before.requester.user)].clone();
            let mut reasons = Vec::new();
            if who.user != before.requester.user {
                reasons.push(Refusal::NotOwner);
            }
            if before.state != RequestState::Pending {
                reasons.push(Refusal::NotPending { state: before.state });
            }
            let result = before.clone().cancel(&who, m.now);
            expect_outcome("cancel", &result, &reasons, same_variant)?;
            match result {
                Ok(r) => {
                    prop_assert_eq!(r.state, RequestState::Cancelled);
                    prop_assert_eq!(r.grant_id.as_ref(), None);
                    m.requests[i] = r;
                }
                Err(_) => prop_assert_eq!(&m.requests[i], &before),
            }
        }
        Op::Revoke { grant, by } if pools.1 > 0 => {
            let j = pick(&m.grants, grant, |g| g.state == GrantState::Active);
            let before = m.grants[j].clone();
            let profile = m.profile(&before.profile);
            let who = m.identities[pick(&m.identities, by, |who| {
                who.user == before.user || profile.may_approve(who) || m.policy.is_admin(who)
            })]
            .clone();
            let mut reasons = Vec::new();
            if who.user != before.user && !profile.may_approve(&who) && !m.policy.is_admin(&who) {
                reasons.push(Refusal::MayNotRevoke);
            }
            if before.state != GrantState::Active {
                reasons.push(Refusal::GrantNotActive { state: before.state });
            } else if m.now >= before.expires_at {
                reasons.push(Refusal::GrantNotActive {
                    state: GrantState::Expired,
                });
            }
            let result = before.clone().revoke(&m.policy, &who, Some("done".into()), m.now);
            expect_outcome("revoke", &result, &reasons, same_variant)?;
            match result {
                Ok(g) => {
                    prop_assert_eq!(g.state, GrantState::Revoked);
                    prop_assert_eq!(g.ended_at, Some(m.now));
                    prop_assert_eq!(g.ended_by.as_deref(), Some(who.user.as_str()));
                    prop_assert_eq!(g.expires_at, before.expires_at);
                    grant_ended(m, j, g)?;
                }
                Err(_) => prop_assert_eq!(&m.grants[j], &before),
            }
        }
        Op::ExpireGrant { grant } if pools.1 > 0 => {
            let j = pick(&m.grants, grant, |g| g.state == GrantState::Active);
            let before = m.grants[j].clone();
            let mut reasons = Vec::new();
            if before.state != GrantState::Active {
                reasons.push(Refusal::GrantNotActive { state: before.state });
            }
            if m.now < before.expires_at {
                reasons.push(Refusal::NotYetExpired);
            }
            let result = before.clone().expire(m.now);
            expect_outcome("expire grant", &result, &reasons, same_variant)?;
            match result {
                Ok(g) => {
                    prop_assert_eq!(g.state, GrantState::Expired);
                    prop_assert_eq!(g.ended_at, Some(m.now));
                    grant_ended(m, j, g)?;
                }
                Err(_) => prop_assert_eq!(&m.grants[j], &before),
            }
        }
        Op::ExpirePending { request } if pools.0 > 0 => {
            let i = pick(&m.requests, request, |r| r.state == RequestState::Pending);
            let before = m.requests[i].clone();
            let mut reasons = Vec::new();
            if before.state != RequestState::Pending {
                reasons.push(Refusal::NotPending { state: before.state });
            }
            if m.now < before.pending_until {
                reasons.push(Refusal::NotYetExpired);
            }
            let result = before.clone().expire_pending(m.now);
            expect_outcome("expire request", &result, &reasons, same_variant)?;
            match result {
                Ok(r) => {
                    prop_assert_eq!(r.state, RequestState::Expired);
                    prop_assert_eq!(r.grant_id.as_ref(), None);
                    m.requests[i] = r;
                }
                Err(_) => prop_assert_eq!(&m.requests[i], &before),
            }
        }
        Op::Advance { ms } => m.now = m.now.saturating_add(Duration::from_millis(ms)),
        Op::AdvanceToDeadline { pick, just_before } => {
            let deadlines: Vec<Timestamp> = (m.requests.iter())
                .filter(|r| r.state == RequestState::Pending)
                .map(|r| r.pending_until)
                .chain(
                    m.grants
                        .iter()
                        .filter(|g| g.state == GrantState::Active)
                        .map(|g| g.expires_at),
                )
                .map(|t| {
                    if just_before {
                        Timestamp::from_millis(t.as_millis() - 1)
                    } else {
                        t
                    }
                })
                .filter(|&t| t > m.now)
                .collect();
            if !deadlines.is_empty() {
                m.now = deadlines[pick % deadlines.len()];
            }
        }
        Op::Authorize { at_offset_ms } => {
            let at = m.now.saturating_add(Duration::from_millis(at_offset_ms));
            check_authorize(m, at)?;
        }
        // Steps on requests or grants before there are any.
        _ => {}
    }
    Ok(())
}

/// A grant was just created for `r`: it must match the request and the profile's limits.
fn activated(m: &Model, supply: &IdSupply, r: &AccessRequest, g: &Grant) -> Result<(), TestCaseError> {
    prop_assert_eq!(supply.calls.get(), 1, "a grant id must be asked for exactly once");
    prop_assert_eq!(&g.id, &supply.id);
    prop_assert_eq!(r.state, RequestState::Active);
    prop_assert_eq!(r.grant_id.as_deref(), Some(g.id.as_str()));
    prop_assert_eq!(r.decided_at, Some(m.now));
    prop_assert_eq!(&g.request_id, &r.id);
    prop_assert_eq!(&g.profile, &r.profile);
    prop_assert_eq!(&g.user, &r.requester.user);
    prop_assert_eq!(g.state, GrantState::Active);
    prop_assert_eq!(g.created_at, m.now);
    prop_assert_eq!(g.expires_at, m.now.saturating_add(r.duration));
    prop_assert!(
        !m.grants
            .iter()
            .any(|other| other.request_id == r.id || other.id == g.id),
        "a second grant for request {}",
        r.id
    );
    Ok(())
}

/// Stores an ended grant and mirrors its end on the request, as the broker does.
fn grant_ended(m: &mut Model, j: usize, g: Grant) -> Result<(), TestCaseError> {
    let i = m.request_index(&g.request_id);
    prop_assert_eq!(m.requests[i].state, RequestState::Active);
    let r = m.requests[i].clone().grant_ended(&g);
    let expected = match g.state {
        GrantState::Expired => RequestState::Expired,
        GrantState::Revoked => RequestState::Revoked,
        GrantState::Active => RequestState::Active,
    };
    prop_assert_eq!(r.state, expected);
    m.requests[i] = r;
    m.grants[j] = g;
    Ok(())
}

/// The resources of profile `k` and whether a grant of it lets `action` through.
fn probe<'a>(
    k: usize,
    kind: Kind,
    labels: &'a BTreeMap<String, String>,
    names: &'a ProbeNames,
    port_forwarding: bool,
) -> (Resource<'a>, Action<'a>, bool) {
    let ssh = Resource::Ssh {
        host: "h",
        labels,
        login: &names.login[k],
    };
    let kube = Resource::Kube {
        cluster: &names.cluster[k],
        namespace: Some(&names.namespace[k]),
        group: "",
        resource: "pods",
        subresource: None,
        name: Some("web-1"),
    };
    match kind {
        Kind::SshLogin => (ssh, Action::SshLogin, true),
        Kind::SshPortForward => (ssh, Action::SshPortForward, port_forwarding),
        Kind::KubeGet => (kube, Action::Kube { verb: "get" }, true),
        Kind::KubeDelete => (kube, Action::Kube { verb: "delete" }, false),
        Kind::Http => (
            Resource::Http {
                app: &names.app[k],
                method: "GET",
                path: "/",
            },
            Action::HttpRequest,
            true,
        ),
    }
}

struct ProbeNames {
    login: Vec<String>,
    cluster: Vec<String>,
    namespace: Vec<String>,
    app: Vec<String>,
}

/// For every identity and every profile's resources: `authorize` at `at`, from an index built
/// of the current grants now, allows exactly when a live grant of that profile is held, picks
/// the longest-lasting one, and never answers with a revoked or expired grant.
fn check_authorize(m: &Model, at: Timestamp) -> Result<(), TestCaseError> {
    let index = GrantIndex::build(&m.grants, &m.policy, m.now);
    let live_now = m.grants.iter().filter(|g| g.is_live(m.now)).count();
    prop_assert_eq!(index.len(), live_now);
    for g in &m.grants {
        prop_assert_eq!(
            index.contains(&g.id),
            g.state == GrantState::Active && m.now < g.expires_at
        );
    }
    let n = m.policy.profiles().len();
    let names = ProbeNames {
        login: (0..n).map(|k| format!("login{k}")).collect(),
        cluster: (0..n).map(|k| format!("c{k}")).collect(),
        namespace: (0..n).map(|k| format!("ns{k}")).collect(),
        app: (0..n).map(|k| format!("app{k}")).collect(),
    };
    let ended: HashSet<&str> = m
        .grants
        .iter()
        .filter(|g| g.state != GrantState::Active)
        .map(|g| g.id.as_str())
        .collect();
    for (k, profile) in m.policy.profiles().iter().enumerate() {
        let labels = BTreeMap::from([
            ("team".to_owned(), format!("t{k}")),
            ("env".to_owned(), "prod".to_owned()),
        ]);
        let pf = profile.ssh.as_ref().is_some_and(|s| s.port_forwarding);
        for who in &m.identities {
            let live: Vec<&Grant> = m
                .grants
                .iter()
                .filter(|g| g.user == who.user && g.profile == profile.name)
                .filter(|g| g.state == GrantState::Active && at < g.expires_at)
                .collect();
            for kind in [
                Kind::SshLogin,
                Kind::SshPortForward,
                Kind::KubeGet,
                Kind::KubeDelete,
                Kind::Http,
            ] {
                let (resource, action, in_scope) = probe(k, kind, &labels, &names, pf);
                let decision = authorize(&m.policy, &index, who, resource, action, at);
                match decision {
                    Ok(a) => {
                        prop_assert!(in_scope, "{kind:?} allowed outside profile {}'s scope", profile.name);
                        prop_assert!(
                            !ended.contains(a.grant_id()),
                            "ended grant {} authorized {kind:?}",
                            a.grant_id()
                        );
                        let g = live.iter().find(|g| g.id == a.grant_id());
                        prop_assert!(
                            g.is_some(),
                            "{} is not a live grant of {} for {}",
                            a.grant_id(),
                            profile.name,
                            who.user
                        );
                        let longest = live.iter().map(|g| g.expires_at).max();
                        prop_assert_eq!(Some(a.expires_at()), longest);
                        prop_assert_eq!(&a.profile().name, &profile.name);
                    }
                    Err(d) => {
                        prop_assert!(
                            live.is_empty() || !in_scope,
                            "{} holds live grant {} of {} yet {kind:?} was denied: {}",
                            who.user,
                            live[0].id,
                            profile.name,
                            d.reason
                        );
                        let requestable = if in_scope && profile.may_request(who) {
                            vec![profile.name.clone()]
                        } else {
                            vec![]
                        };
                        prop_assert_eq!(d.requestable, requestable);
                    }
                }
            }
        }
    }
    Ok(())
}

/// The rules that hold after every step, whatever happened before.
fn check_invariants(m: &Model) -> Result<(), TestCaseError> {
    for g in &m.grants {
        let profile = m.profile(&g.profile);
        prop_assert!(
            g.created_at.until(g.expires_at) <= profile.max_duration,
            "grant {} lasts {:?}, more than {:?}",
            g.id,
            g.created_at.until(g.expires_at),
            profile.max_duration
        );
        prop_assert!(g.created_at <= g.expires_at);
        prop_assert_eq!(
            m.grants.iter().filter(|o| o.request_id == g.request_id).count(),
            1,
            "several grants for request {}",
            &g.request_id
        );
        match g.state {
            GrantState::Active => prop_assert_eq!(g.ended_at, None),
            GrantState::Expired => prop_assert!(g.ended_at.is_some_and(|t| t >= g.expires_at)),
            GrantState::Revoked => prop_assert!(g.ended_at.is_some()),
        }
    }
    for r in &m.requests {
        let profile = m.profile(&r.profile);
        prop_assert_eq!(r.approvals_required, profile.approvals_required);
        prop_assert!(r.duration <= profile.max_duration);
        let approvers: HashSet<&str> = r.approvals.iter().map(|a| a.approver.as_str()).collect();
        prop_assert_eq!(approvers.len(), r.approvals.len(), "repeated approver on {}", &r.id);
        prop_assert!(
            !approvers.contains(r.requester.user.as_str()),
            "self-approval on {}",
            &r.id
        );
        for a in &r.approvals {
            prop_assert!(
                profile.may_approve(m.identity(&a.approver)),
                "{} approved {} without being an approver of {}",
                &a.approver,
                &r.id,
                &profile.name
            );
            prop_assert!(a.at < r.pending_until, "approval after the request expired");
        }
        prop_assert!(
            r.approvals.len() as u32 <= r.approvals_required,
            "more approvals than needed"
        );
        let grant = m.grants.iter().find(|g| g.request_id == r.id);
        prop_assert_eq!(r.grant_id.as_deref(), grant.map(|g| g.id.as_str()));
        match grant {
            Some(g) => {
                prop_assert!(r.approvals.len() as u32 >= r.approvals_required);
                // Timestamps count whole milliseconds: a grant lasts the request's duration, less
                // any fraction of a millisecond, never more.
                let whole_ms = Duration::from_millis(r.duration.as_millis() as u64);
                prop_assert_eq!(g.created_at.until(g.expires_at), whole_ms);
                let expected = match g.state {
                    GrantState::Active => RequestState::Active,
                    GrantState::Expired => RequestState::Expired,
                    GrantState::Revoked => RequestState::Revoked,
                };
                prop_assert_eq!(r.state, expected);
            }
            None => prop_assert!(
                matches!(
                    r.state,
                    RequestState::Pending | RequestState::Denied | RequestState::Cancelled | RequestState::Expired
                ),
                "request {} is {} without a grant",
                &r.id,
                r.state
            ),
        }
    }
    Ok(())
}

/// The states a request may move to in one step.
fn legal_transition(from: RequestState, to: RequestState) -> bool {
    use RequestState::*;
    from == to
        || matches!(
            (from, to),
            (Pending, Active | Denied | Cancelled | Expired) | (Active, Expired | Revoked)
        )
}

fn run(w: &World, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut m = Model::new(w);
    for op in ops {
        let before: Vec<RequestState> = m.requests.iter().map(|r| r.state).collect();
        let grants_before = m.grants.len();
        apply(&mut m, op)?;
        for (r, from) in m.requests.iter().zip(&before) {
            prop_assert!(
                legal_transition(*from, r.state),
                "{} went {from} -> {} on {op:?}",
                &r.id,
                r.state
            );
        }
        prop_assert!(m.grants.len() <= grants_before + 1, "one step made several grants");
        check_invariants(&m)?;
    }
    check_authorize(&m, m.now)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn request_lifecycle_keeps_the_rules(w in world(), ops in prop::collection::vec(op(), 1..80)) {
        run(&w, &ops)?;
    }
}

/// A pick of exactly the `i`th item of a pool of at most 6 (60 is a multiple of 1..=6).
fn direct(i: usize) -> usize {
    60 + i
}

/// A fixed walk through the rules the random runs rely on, so a failure here reads plainly.
#[test]
fn two_approvals_from_distinct_approvers_make_one_grant() {
    let spec = |approvals_required| ProfileSpec {
        approvals_required,
        max_duration_ms: 60_000,
        require_reason: true,
        port_forwarding: false,
        approver_user: None,
    };
    let person = |requester: bool, approver: bool| IdentitySpec {
        requester_of: [requester, false, false],
        approver_of: [approver, false, false],
        admin: false,
    };
    let w = World {
        profiles: vec![spec(2)],
        identities: vec![
            person(true, true),
            person(false, true),
            person(false, true),
            person(true, false),
        ],
        request_ttl_ms: 30_000,
    };
    let ops = [
        Op::Open {
            who: direct(0),
            profile: direct(0),
            duration_permille: 1000,
            with_reason: true,
        },
        Op::Approve {
            request: direct(0),
            by: direct(0),
        },
        Op::Approve {
            request: direct(0),
            by: direct(1),
        },
        Op::Approve {
            request: direct(0),
            by: direct(1),
        },
        Op::Authorize { at_offset_ms: 0 },
        Op::Approve {
            request: direct(0),
            by: direct(2),
        },
        Op::Approve {
            request: direct(0),
            by: direct(3),
        },
        Op::Authorize { at_offset_ms: 59_999 },
        Op::Authorize { at_offset_ms: 60_000 },
        Op::Advance { ms: 60_000 },
        Op::ExpireGrant { grant: direct(0) },
        Op::Approve {
            request: direct(0),
            by: direct(1),
        },
        Op::Authorize { at_offset_ms: 0 },
    ];
    run(&w, &ops).unwrap();
    let mut m = Model::new(&w);
    for op in &ops {
        apply(&mut m, op).unwrap();
    }
    assert_eq!(m.grants.len(), 1);
    assert_eq!(m.grants[0].state, GrantState::Expired);
    assert_eq!(m.requests[0].approvals.len(), 2);
}
