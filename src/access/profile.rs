use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::identity::{Identity, Principal};

/// A task-sized set of permissions that people request for a while: the "custom role".
#[derive(Clone, Debug, Serialize)]
pub struct AccessProfile {
    pub name: String,
    pub description: String,
    #[serde(with = "crate::time::duration_str")]
    pub max_duration: Duration,
    pub requesters: Vec<Principal>,
    pub approvers: Vec<Principal>,
    pub approvals_required: u32,
    pub require_reason: bool,
    pub ssh: Option<SshScope>,
    pub kube: Option<KubeScope>,
    pub http: Option<HttpScope>,
    /// The `[[notify]]` targets told of this profile's requests and grants.
    pub notify: Vec<String>,
    /// Whether an approver may decide from a chat message's buttons (once their chat
    /// account is linked to them), not only from the CLI or the console.
    pub approve_in_chat: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SshScope {
    /// Labels a host must carry, all of them, to be in scope.
    pub hosts: BTreeMap<String, String>,
    /// Hosts in scope by inventory name, besides those the labels select. With neither
    /// labels nor names, every host is in scope.
    pub host_names: Vec<String>,
    pub logins: Vec<String>,
    pub port_forwarding: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct KubeScope {
    pub clusters: Vec<String>,
    pub namespaces: Vec<String>,
    /// Kubernetes groups the proxy impersonates for a holder of this grant.
    pub groups: Vec<String>,
    pub verbs: Vec<String>,
    /// `pods`, `pods/log`, `pods/*`, `*/scale`, `deployments.apps` (in that group only; a
    /// bare name matches in any group), or `*`.
    pub resources: Vec<String>,
    /// Object names allowed; empty for any. A request that names no object (a list, a
    /// create) is outside a name-restricted scope.
    pub names: Vec<String>,
}

impl KubeScope {
    /// Whether this scope covers `verb` on the object a request names.
    #[allow(clippy::too_many_arguments)]
    pub fn allows(
        &self,
        cluster: &str,
        namespace: Option<&str>,
        group: &str,
        resource: &str,
        subresource: Option<&str>,
        name: Option<&str>,
        verb: &str,
    ) -> bool {
        let ns_ok = match namespace {
            Some(ns) => listed(&self.namespaces, ns),
            // Cluster-scoped objects, and all namespaces at once, only for a scope that
            // names every namespace.
            None => self.namespaces.iter().any(|n| n == "*"),
        };
        let name_ok = self.names.is_empty() || name.is_some_and(|n| self.names.iter().any(|x| x == n));
        listed(&self.clusters, cluster)
            && ns_ok
            && name_ok
            && listed(&self.verbs, verb)
            && self
                .resources
                .iter()
                .any(|entry| resource_matches(entry, group, resource, subresource))
    }
}

/// Whether a `kube.resources` entry covers a request's group, resource and subresource.
fn resource_matches(entry: &str, group: &str, resource: &str, subresource: Option<&str>) -> bool {
    if entry == "*" {
        return true;
    }
    let (head, sub) = match entry.split_once('/') {
        Some((h, s)) => (h, Some(s)),
        None => (entry, None),
    };
    let (res, grp) = match head.split_once('.') {
        Some((r, g)) => (r, Some(g)),
        None => (head, None),
    };
    (res == "*" || res == resource)
        && grp.is_none_or(|g| g == group)
        && match (sub, subresource) {
            (None, None) => true,
            (Some("*"), Some(_)) => true,
            (Some(want), Some(have)) => want == have,
            _ => false,
        }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct HttpScope {
    pub apps: Vec<AppScope>,
}

/// One app a profile reaches, and optionally only some of it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AppScope {
    /// An `[[apps]]` name, or `*` for every app.
    pub name: String,
    /// Upper-case methods allowed (`GET`, `HEAD` for read-only); empty for any.
    pub methods: Vec<String>,
    /// Path prefixes allowed, matched on whole segments against the normalized path;
    /// empty for any.
    pub paths: Vec<String>,
}

impl AppScope {
    pub fn unrestricted(name: &str) -> AppScope {
        AppScope {
            name: name.to_owned(),
            ..AppScope::default()
        }
    }

    /// Whether this scope covers `method` on `path` of `app`. `path` must already be
    /// normalized (no dot segments, no empty segments, no encoded slashes).
    pub fn allows(&self, app: &str, method: &str, path: &str) -> bool {
        (self.name == "*" || self.name == app)
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && (self.paths.is_empty() || self.paths.iter().any(|p| under_prefix(path, p)))
    }

    /// Whether any request to `app` could pass.
    pub fn reaches(&self, app: &str) -> bool {
        self.name == "*" || self.name == app
    }

    /// One line for people: `okta (GET, HEAD under /admin/)`.
    pub fn describe(&self) -> String {
        let mut out = self.name.clone();
        if !self.methods.is_empty() || !self.paths.is_empty() {
            let methods = if self.methods.is_empty() {
                "any method".to_owned()
            } else {
                self.methods.join(", ")
            };
            let paths = if self.paths.is_empty() {
                String::new()
            } else {
                format!(" under {}", self.paths.join(", "))
            };
            out.push_str(&format!(" ({methods}{paths})"));
        }
        out
    }
}

/// `/admin` covers `/admin` and `/admin/…`, not `/administrator`; `/admin/` covers what
/// starts with it.
fn under_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

impl AccessProfile {
    /// What a grant of this profile lets its holder do, one line per protocol, in words.
    pub fn scope_lines(&self) -> Vec<String> {
        let mut lines = Vec::with_capacity(3);
        if let Some(ssh) = &self.ssh {
            let labels = ssh
                .hosts
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ");
            let hosts = match (labels.is_empty(), ssh.host_names.is_empty()) {
                (true, true) => "SSH to any host".to_owned(),
                (false, true) => format!("SSH to hosts labelled {labels}"),
                (true, false) => format!("SSH to {}", ssh.host_names.join(", ")),
                (false, false) => format!("SSH to hosts labelled {labels} and to {}", ssh.host_names.join(", ")),
            };
            let forwarding = if ssh.port_forwarding {
                ", with port forwarding"
            } else {
                ""
            };
            lines.push(format!("{hosts} as {}{forwarding}", ssh.logins.join(", ")));
        }
        if let Some(k) = &self.kube {
            let groups = if k.groups.is_empty() {
                String::new()
            } else {
                format!(" (as groups {})", k.groups.join(", "))
            };
            lines.push(format!(
                "Kubernetes clusters {}, namespaces {}: {} on {}{groups}",
                k.clusters.join(", "),
                k.namespaces.join(", "),
                k.verbs.join(", "),
                k.resources.join(", ")
            ));
        }
        if let Some(h) = &self.http {
            let apps: Vec<String> = h.apps.iter().map(AppScope::describe).collect();
            lines.push(format!("Web apps {}", apps.join(", ")));
        }
        lines
    }

    pub fn may_request(&self, who: &Identity) -> bool {
        Principal::any_matches(&self.requesters, who)
    }

    pub fn may_approve(&self, who: &Identity) -> bool {
        Principal::any_matches(&self.approvers, who)
    }
}

/// `*` in a scope list means any value.
pub(crate) fn listed(list: &[String], value: &str) -> bool {
    list.iter().any(|v| v == "*" || v == value)
}
