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
    pub resources: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct HttpScope {
    pub apps: Vec<String>,
}

impl AccessProfile {
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
