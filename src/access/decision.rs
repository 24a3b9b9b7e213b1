//! `authorize`: the one place that decides whether an identity may act on a resource now.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::grant::Grant;
use super::identity::Identity;
use super::policy::Policy;
use super::profile::{listed, AccessProfile, SshScope};
use super::resource::{Action, Resource};
use crate::time::Timestamp;

/// Proof that `authorize` allowed an access. Its fields are private and it has no public
/// constructor, so a connect path that takes `&Authorized` cannot run without a decision.
#[derive(Clone, Debug)]
pub struct Authorized {
    grant_id: Arc<str>,
    profile: Arc<AccessProfile>,
    expires_at: Timestamp,
}

impl Authorized {
    pub fn grant_id(&self) -> &str {
        &self.grant_id
    }

    /// The scope of the grant: what the front-end may let through and nothing more.
    pub fn profile(&self) -> &AccessProfile {
        &self.profile
    }

    pub fn expires_at(&self) -> Timestamp {
        self.expires_at
    }

    /// Whether this grant allows `action` on `resource` too: a front-end that holds a
    /// decision for a while (an app session) asks again for each request, here.
    pub fn allows(&self, resource: Resource<'_>, action: Action<'_>) -> bool {
        allows(&self.profile, resource, action)
    }

    #[cfg(test)]
    pub(crate) fn for_test(grant_id: &str, expires_at: Timestamp) -> Self {
        let profile = AccessProfile {
            name: "test".into(),
            description: String::new(),
            max_duration: std::time::Duration::from_secs(3600),
            requesters: vec![],
            approvers: vec![],
            approvals_required: 0,
            require_reason: false,
            ssh: None,
            kube: None,
            http: None,
            notify: Vec::new(),
            approve_in_chat: false,
        };
        Authorized {
            grant_id: grant_id.into(),
            profile: Arc::new(profile),
            expires_at,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Denied {
    pub reason: String,
    /// Profiles the caller could request that would allow this access.
    pub requestable: Vec<String>,
}

#[derive(Clone, Debug)]
struct IndexedGrant {
    id: Arc<str>,
    profile: Arc<AccessProfile>,
    expires_at: Timestamp,
}

/// A snapshot of the active grants, indexed by holder, so a decision looks only at the
/// caller's few grants however many there are in all.
#[derive(Clone, Debug, Default)]
pub struct GrantIndex {
    by_user: HashMap<String, Vec<IndexedGrant>>,
    ids: HashSet<Arc<str>>,
}

impl GrantIndex {
    /// Keeps the grants that are active and whose profile still exists in `policy`.
    pub fn build<'a>(grants: impl IntoIterator<Item = &'a Grant>, policy: &Policy, now: Timestamp) -> Self {
        let mut index = GrantIndex::default();
        for g in grants {
            index.insert(g, policy, now);
        }
        index
    }

    /// Adds one grant if it is live and its profile exists; a grant already present stays.
    pub fn insert(&mut self, g: &Grant, policy: &Policy, now: Timestamp) {
        if !g.is_live(now) || self.ids.contains(g.id.as_str()) {
            return;
        }
        let Some(profile) = policy.profile(&g.profile) else {
            return;
        };
        let id: Arc<str> = g.id.as_str().into();
        self.ids.insert(Arc::clone(&id));
        self.by_user.entry(g.user.clone()).or_default().push(IndexedGrant {
            id,
            profile: Arc::clone(profile),
            expires_at: g.expires_at,
        });
    }

    pub fn remove(&mut self, user: &str, grant_id: &str) {
        if !self.ids.remove(grant_id) {
            return;
        }
        if let Some(grants) = self.by_user.get_mut(user) {
            grants.retain(|g| &*g.id != grant_id);
            if grants.is_empty() {
                self.by_user.remove(user);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether the grant is active in this snapshot.
    pub fn contains(&self, grant_id: &str) -> bool {
        self.ids.contains(grant_id)
    }
}

/// Decides whether `who` may do `action` on `resource` at `now`, from the active grants.
pub fn authorize(
    policy: &Policy,
    grants: &GrantIndex,
    who: &Identity,
    resource: Resource<'_>,
    action: Action<'_>,
    now: Timestamp,
) -> Result<Authorized, Denied> {
    let mine = grants.by_user.get(&who.user).map(Vec::as_slice).unwrap_or_default();
    // Of several grants that allow it, the one that lasts longest keeps the connection open
    // longest; the cut follows that grant.
    let best = mine
        .iter()
        .filter(|g| now < g.expires_at && allows(&g.profile, resource, action))
        .max_by_key(|g| g.expires_at);
    match best {
        Some(g) => Ok(Authorized {
            grant_id: Arc::clone(&g.id),
            profile: Arc::clone(&g.profile),
            expires_at: g.expires_at,
        }),
        None => Err(Denied {
            reason: format!("no active grant allows {action} on {resource}"),
            requestable: policy
                .requestable_by(who)
                .into_iter()
                .filter(|p| allows(p, resource, action))
                .map(|p| p.name.clone())
                .collect(),
        }),
    }
}

/// Every live grant of `who` whose profile reaches `app` at all, whatever its method and
/// path scope, longest-lived first. An app front-end keeps these for a session and checks
/// each request against them with `Authorized::allows`.
pub fn app_grants(grants: &GrantIndex, who: &Identity, app: &str, now: Timestamp) -> Vec<Authorized> {
    let mine = grants.by_user.get(&who.user).map(Vec::as_slice).unwrap_or_default();
    let mut out: Vec<Authorized> = mine
        .iter()
        .filter(|g| now < g.expires_at)
        .filter(|g| {
            g.profile
                .http
                .as_ref()
                .is_some_and(|h| h.apps.iter().any(|a| a.reaches(app)))
        })
        .map(|g| Authorized {
            grant_id: Arc::clone(&g.id),
            profile: Arc::clone(&g.profile),
            expires_at: g.expires_at,
        })
        .collect();
    out.sort_by_key(|a| std::cmp::Reverse(a.expires_at));
    out
}

/// Whether `user` holds a live grant whose SSH scope reaches `host`, whatever the login:
/// enough for the proxy to start its key exchange with the target while the client is
/// still authenticating, never enough to log in there.
pub fn ssh_host_granted(
    grants: &GrantIndex,
    user: &str,
    host: &str,
    labels: &BTreeMap<String, String>,
    now: Timestamp,
) -> bool {
    grants.by_user.get(user).is_some_and(|mine| {
        mine.iter()
            .any(|g| now < g.expires_at && g.profile.ssh.as_ref().is_some_and(|ssh| ssh_reaches(ssh, host, labels)))
    })
}

/// Whether an SSH scope takes in `host`, by its labels or its name.
fn ssh_reaches(ssh: &SshScope, host: &str, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = !ssh.hosts.is_empty()
        && ssh
            .hosts
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|have| v == "*" || have == v));
    let by_name = !ssh.host_names.is_empty() && listed(&ssh.host_names, host);
    let unrestricted = ssh.hosts.is_empty() && ssh.host_names.is_empty();
    by_labels || by_name || unrestricted
}

fn allows(profile: &AccessProfile, resource: Resource<'_>, action: Action<'_>) -> bool {
    match (resource, action) {
        (Resource::Ssh { host, labels, login }, Action::SshLogin | Action::SshPortForward) => {
            let Some(ssh) = &profile.ssh else { return false };
            ssh_reaches(ssh, host, labels)
                && listed(&ssh.logins, login)
                && (action == Action::SshLogin || ssh.port_forwarding)
        }
        (
            Resource::Kube {
                cluster,
                namespace,
                group,
                resource,
                subresource,
                name,
            },
            Action::Kube { verb },
        ) => profile
            .kube
            .as_ref()
            .is_some_and(|k| k.allows(cluster, namespace, group, resource, subresource, name, verb)),
        (Resource::KubeDiscovery { cluster }, Action::Kube { verb: "get" }) => {
            profile.kube.as_ref().is_some_and(|k| listed(&k.clusters, cluster))
        }
        (Resource::Http { app, method, path }, Action::HttpRequest) => profile
            .http
            .as_ref()
            .is_some_and(|h| h.apps.iter().any(|a| a.allows(app, method, path))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::access::{AccessRequest, KubeScope, Outcome, SshScope};

    fn db_patch() -> AccessProfile {
        AccessProfile {
            name: "db-patch".into(),
            description: String::new(),
            max_duration: Duration::from_secs(7200),
            requesters: vec!["group:dba".parse().unwrap()],
            approvers: vec!["group:dba-leads".parse().unwrap()],
            approvals_required: 0,
            require_reason: true,
            ssh: Some(SshScope {
                hosts: BTreeMap::from([("env".into(), "prod".into()), ("role".into(), "db".into())]),
                host_names: Vec::new(),
                logins: vec!["postgres".into()],
                port_forwarding: false,
            }),
            kube: Some(KubeScope {
                clusters: vec!["prod".into()],
                namespaces: vec!["payments".into()],
                groups: vec![],
                verbs: vec!["get".into(), "list".into()],
                resources: vec!["pods".into()],
                names: vec![],
            }),
            http: None,
            notify: Vec::new(),
            approve_in_chat: false,
        }
    }

    fn granted(now: Timestamp) -> (Policy, GrantIndex, Identity, Grant) {
        let policy = Policy::new(vec![db_patch()], vec![]);
        let alice = Identity::new("alice", ["dba"]);
        let profile = policy.profile("db-patch").unwrap();
        let out = AccessRequest::open(
            "r1".into(),
            profile,
            alice.clone(),
            "INC-1".into(),
            Duration::from_secs(60),
            now,
            Duration::from_secs(3600),
            || "g1".into(),
        )
        .unwrap();
        let Outcome::Activated(_, grant) = out else {
            panic!("auto-approval should activate")
        };
        let index = GrantIndex::build([&grant], &policy, now);
        (policy, index, alice, grant)
    }

    #[test]
    fn ssh_hosts_are_in_scope_by_labels_by_name_or_all() {
        let prod_db = BTreeMap::from([("env".into(), "prod".into()), ("role".into(), "db".into())]);
        let bare = BTreeMap::new();
        let ssh = |host, labels| Resource::Ssh {
            host,
            labels,
            login: "postgres",
        };
        let mut p = db_patch();
        assert!(allows(&p, ssh("any-name", &prod_db), Action::SshLogin));
        assert!(!allows(&p, ssh("db-prod-1", &bare), Action::SshLogin));
        // Named hosts are in scope whatever their labels; others still need the labels.
        p.ssh.as_mut().unwrap().host_names = vec!["bastion-1".into()];
        assert!(allows(&p, ssh("bastion-1", &bare), Action::SshLogin));
        assert!(allows(&p, ssh("db-prod-1", &prod_db), Action::SshLogin));
        assert!(!allows(&p, ssh("bastion-2", &bare), Action::SshLogin));
        // Names only: exactly those hosts.
        p.ssh.as_mut().unwrap().hosts.clear();
        assert!(allows(&p, ssh("bastion-1", &bare), Action::SshLogin));
        assert!(!allows(&p, ssh("db-prod-1", &prod_db), Action::SshLogin));
        // Neither: every host.
        p.ssh.as_mut().unwrap().host_names.clear();
        assert!(allows(&p, ssh("anything", &bare), Action::SshLogin));
    }

    /// The gate for starting a target's key exchange early: a live grant of this user
    /// whose hosts take this one in, whatever its logins; nothing else opens it.
    #[test]
    fn a_host_counts_as_granted_only_to_its_holder_in_scope_and_in_time() {
        let now = Timestamp::from_millis(1_000_000);
        let (_, index, _, grant) = granted(now);
        let prod_db = BTreeMap::from([("env".into(), "prod".into()), ("role".into(), "db".into())]);
        let staging = BTreeMap::from([("env".into(), "staging".into()), ("role".into(), "db".into())]);
        assert!(ssh_host_granted(&index, "alice", "db-prod-1", &prod_db, now));
        assert!(!ssh_host_granted(&index, "alice", "db-staging-1", &staging, now));
        assert!(!ssh_host_granted(&index, "bob", "db-prod-1", &prod_db, now));
        assert!(!ssh_host_granted(
            &index,
            "alice",
            "db-prod-1",
            &prod_db,
            grant.expires_at
        ));
    }

    #[test]
    fn a_grant_allows_exactly_its_scope() {
        let now = Timestamp::from_millis(1_000_000);
        let (policy, index, alice, _) = granted(now);
        let prod_db = BTreeMap::from([("env".into(), "prod".into()), ("role".into(), "db".into())]);
        let staging = BTreeMap::from([("env".into(), "staging".into()), ("role".into(), "db".into())]);
        let ssh = |labels, login| Resource::Ssh {
            host: "db-prod-1",
            labels,
            login,
        };

        let ok = authorize(
            &policy,
            &index,
            &alice,
            ssh(&prod_db, "postgres"),
            Action::SshLogin,
            now,
        )
        .unwrap();
        assert_eq!(ok.grant_id(), "g1");
        assert!(authorize(&policy, &index, &alice, ssh(&prod_db, "root"), Action::SshLogin, now).is_err());
        assert!(authorize(
            &policy,
            &index,
            &alice,
            ssh(&staging, "postgres"),
            Action::SshLogin,
            now
        )
        .is_err());
        assert!(authorize(
            &policy,
            &index,
            &alice,
            ssh(&prod_db, "postgres"),
            Action::SshPortForward,
            now
        )
        .is_err());

        let pods = |ns| Resource::Kube {
            cluster: "prod",
            namespace: ns,
            group: "",
            resource: "pods",
            subresource: None,
            name: None,
        };
        assert!(authorize(
            &policy,
            &index,
            &alice,
            pods(Some("payments")),
            Action::Kube { verb: "list" },
            now
        )
        .is_ok());
        assert!(authorize(
            &policy,
            &index,
            &alice,
            pods(Some("payments")),
            Action::Kube { verb: "delete" },
            now
        )
        .is_err());
        assert!(authorize(
            &policy,
            &index,
            &alice,
            pods(Some("kube-system")),
            Action::Kube { verb: "list" },
            now
        )
        .is_err());
        assert!(authorize(&policy, &index, &alice, pods(None), Action::Kube { verb: "list" }, now).is_err());

        let bob = Identity::new("bob", ["dba"]);
        let denied = authorize(&policy, &index, &bob, ssh(&prod_db, "postgres"), Action::SshLogin, now).unwrap_err();
        assert_eq!(denied.requestable, vec!["db-patch".to_string()]);
    }

    #[test]
    fn the_index_follows_inserts_and_removals() {
        let now = Timestamp::from_millis(1_000_000);
        let (policy, mut index, alice, grant) = granted(now);
        let pods = Resource::Kube {
            cluster: "prod",
            namespace: Some("payments"),
            group: "",
            resource: "pods",
            subresource: None,
            name: Some("web-1"),
        };
        let get = Action::Kube { verb: "get" };
        assert!(index.contains("g1"));
        index.remove("alice", "g1");
        assert!(index.is_empty() && !index.contains("g1"));
        assert!(authorize(&policy, &index, &alice, pods, get, now).is_err());
        index.insert(&grant, &policy, now);
        index.insert(&grant, &policy, now);
        assert_eq!(index.len(), 1, "inserting twice keeps one");
        assert!(authorize(&policy, &index, &alice, pods, get, now).is_ok());
        index.insert(
            &Grant {
                id: "g2".into(),
                ..grant.clone()
            },
            &policy,
            grant.expires_at,
        );
        assert_eq!(index.len(), 1, "a grant past its expiry is not inserted");
    }

    #[test]
    fn an_expired_or_revoked_grant_never_authorizes() {
        let now = Timestamp::from_millis(1_000_000);
        let (policy, index, alice, grant) = granted(now);
        let http = Resource::Kube {
            cluster: "prod",
            namespace: Some("payments"),
            group: "",
            resource: "pods",
            subresource: None,
            name: Some("web-1"),
        };
        let get = Action::Kube { verb: "get" };
        let at_expiry = grant.expires_at;
        assert!(
            authorize(&policy, &index, &alice, http, get, at_expiry).is_err(),
            "expiry is exclusive"
        );

        let revoked = grant.revoke(&policy, &alice, None, now).unwrap();
        let index = GrantIndex::build([&revoked], &policy, now);
        assert!(authorize(&policy, &index, &alice, http, get, now).is_err());
    }
}
