//! `[[profiles]]`: what a grant of each lets one do, who may ask and who approves, all
//! cross-checked against the inventory, the apps, the clusters and the notice targets.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;

use super::apps::{validate_app_scopes, RawAppScope};
use super::kube::{resource_entry_ok, KUBE_VERBS};
use super::{principals, AppConfig, KubeCluster, NotifyConfig, SshConfig};
use crate::access::{AccessProfile, HttpScope, KubeScope, Principal, SshScope};
use crate::time::parse_duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProfile {
    name: String,
    #[serde(default)]
    description: String,
    max_duration: String,
    requesters: Vec<String>,
    #[serde(default)]
    approvers: Vec<String>,
    #[serde(default = "one")]
    approvals_required: u32,
    #[serde(default = "yes")]
    require_reason: bool,
    ssh: Option<RawSsh>,
    kube: Option<RawKube>,
    http: Option<RawHttp>,
    #[serde(default)]
    notify: Vec<String>,
    #[serde(default)]
    approve_in_chat: bool,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    #[serde(default)]
    hosts: BTreeMap<String, String>,
    #[serde(default)]
    host_names: Vec<String>,
    logins: Vec<String>,
    #[serde(default)]
    port_forwarding: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKube {
    clusters: Vec<String>,
    namespaces: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    verbs: Vec<String>,
    resources: Vec<String>,
    #[serde(default)]
    names: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    apps: Vec<RawAppScope>,
}

/// Profiles that name hosts must name hosts the inventory has. `"*"` is no name: it would
/// quietly undo the profile's label restriction (with neither, every host is in scope).
pub(super) fn check_host_names(profiles: &[AccessProfile], ssh: &SshConfig, errors: &mut Vec<String>) {
    for (i, p) in profiles.iter().enumerate() {
        for (j, name) in p.ssh.iter().flat_map(|s| s.host_names.iter()).enumerate() {
            if name == "*" {
                errors.push(format!(
                    "profiles[{i}].ssh.host_names[{j}]: \"*\" is not a host name; leave out hosts and host_names for every host"
                ));
            } else if !ssh.hosts.iter().any(|h| h.name == *name) {
                errors.push(format!(
                    "profiles[{i}].ssh.host_names[{j}]: no host {name:?} in [[ssh.hosts]]"
                ));
            }
        }
    }
}

/// A kube scope names clusters that exist, verbs the API server uses, resources in a form
/// that matches something, and no empty name list (which would read as "any").
fn check_kube_scope(
    at: &str,
    clusters: &[String],
    verbs: &[String],
    resources: &[String],
    names: Option<&[String]>,
    known: &[KubeCluster],
    errors: &mut Vec<String>,
) {
    for (j, c) in clusters.iter().enumerate() {
        if c != "*" && !known.iter().any(|k| k.name == *c) {
            errors.push(format!(
                "{at}.kube.clusters[{j}]: no cluster {c:?} in [[kube.clusters]]"
            ));
        }
    }
    for (j, v) in verbs.iter().enumerate() {
        if v != "*" && !KUBE_VERBS.contains(&v.as_str()) {
            errors.push(format!(
                "{at}.kube.verbs[{j}]: {v:?} is not one of {} (exec, attach, port-forward and proxy are create on their subresource)",
                KUBE_VERBS.join(", ")
            ));
        }
    }
    for (j, r) in resources.iter().enumerate() {
        if !resource_entry_ok(r) {
            errors.push(format!(
                "{at}.kube.resources[{j}]: {r:?} must be like \"pods\", \"pods/log\", \"pods/*\", \"deployments.apps\" or \"*\""
            ));
        }
    }
    if names.is_some_and(<[String]>::is_empty) {
        errors.push(format!("{at}.kube.names: is empty; leave it out to allow any name"));
    }
}

fn non_empty_list(path: &str, list: &[String], errors: &mut Vec<String>) {
    if list.is_empty() {
        errors.push(format!("{path}: must not be empty (use [\"*\"] for any)"));
    }
}

pub(super) fn validate_profiles(
    raw: Vec<RawProfile>,
    apps: &[AppConfig],
    clusters_config: &[KubeCluster],
    notify: &NotifyConfig,
    errors: &mut Vec<String>,
) -> Vec<AccessProfile> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        let at = format!("profiles[{i}]");
        let RawProfile {
            name,
            description,
            max_duration,
            requesters,
            approvers,
            approvals_required,
            require_reason,
            ssh,
            kube,
            http,
            notify: targets,
            approve_in_chat,
        } = p;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            errors.push(format!("{at}.name: {name:?} must be letters, digits, '-' or '_'"));
        }
        if !seen.insert(name.clone()) {
            errors.push(format!("{at}.name: duplicate profile name {name:?}"));
        }
        let max_duration = parse_duration(&max_duration).unwrap_or_else(|e| {
            errors.push(format!("{at}.max_duration: {e}"));
            Duration::ZERO
        });
        if requesters.is_empty() {
            errors.push(format!(
                "{at}.requesters: is empty, so nobody could ever request {name:?}"
            ));
        }
        let requesters = principals(&format!("{at}.requesters"), &requesters, errors);
        let approvers = principals(&format!("{at}.approvers"), &approvers, errors);
        check_approvers(&at, &requesters, &approvers, approvals_required, errors);
        if ssh.is_none() && kube.is_none() && http.is_none() {
            errors.push(format!("{at}: grants nothing; give it ssh, kube or http"));
        }
        let ssh = ssh.map(|s| {
            non_empty_list(&format!("{at}.ssh.logins"), &s.logins, errors);
            SshScope {
                hosts: s.hosts,
                host_names: s.host_names,
                logins: s.logins,
                port_forwarding: s.port_forwarding,
            }
        });
        let kube = kube.map(|k| {
            let RawKube {
                clusters,
                namespaces,
                groups,
                verbs,
                resources,
                names,
            } = k;
            for (field, list) in [
                ("clusters", &clusters),
                ("namespaces", &namespaces),
                ("verbs", &verbs),
                ("resources", &resources),
            ] {
                non_empty_list(&format!("{at}.kube.{field}"), list, errors);
            }
            check_kube_scope(
                &at,
                &clusters,
                &verbs,
                &resources,
                names.as_deref(),
                clusters_config,
                errors,
            );
            KubeScope {
                clusters,
                namespaces,
                groups,
                verbs,
                resources,
                names: names.unwrap_or_default(),
            }
        });
        let http = http.map(|h| HttpScope {
            apps: validate_app_scopes(&format!("{at}.http.apps"), h.apps, apps, errors),
        });
        for (j, t) in targets.iter().enumerate() {
            if notify.target(t).is_none() {
                errors.push(format!("{at}.notify[{j}]: no [[notify]] target is named {t:?}"));
            }
        }
        if approve_in_chat && notify.slack.as_ref().is_none_or(|s| s.signing_secret.is_none()) {
            errors.push(format!(
                "{at}.approve_in_chat: needs [slack] with signing_secret_env or signing_secret_file, \
                 which proves a button press came from Slack"
            ));
        }
        out.push(AccessProfile {
            name,
            description,
            max_duration,
            requesters,
            approvers,
            approvals_required,
            require_reason,
            ssh,
            kube,
            http,
            notify: targets,
            approve_in_chat,
        });
    }
    out
}

/// A group may have any number of members, but named users are countable: a profile whose
/// approvers are only users needs at least `approvals_required` of them.
fn check_approvers(
    at: &str,
    requesters: &[Principal],
    approvers: &[Principal],
    required: u32,
    errors: &mut Vec<String>,
) {
    if required == 0 {
        return;
    }
    if approvers.is_empty() {
        errors.push(format!(
            "{at}.approvers: is empty, so approvals_required = {required} can never be met (use approvals_required = 0 to auto-approve)"
        ));
        return;
    }
    let only_users = approvers.iter().all(|p| matches!(p, Principal::User(_)));
    if only_users && (approvers.len() as u64) < u64::from(required) {
        errors.push(format!(
            "{at}.approvals_required: {required} distinct approvers needed but only {} user{} listed",
            approvers.len(),
            if approvers.len() == 1 { " is" } else { "s are" }
        ));
        return;
    }
    // Nobody approves their own request: a requester who is also a listed approver has one
    // approver fewer to draw on.
    for r in requesters {
        let others = approvers.iter().filter(|a| *a != r).count() as u64;
        if only_users && matches!(r, Principal::User(_)) && others < u64::from(required) {
            errors.push(format!(
                "{at}.approvals_required: {required} distinct approvers needed, but a request by {r} can have only {others} (nobody approves their own)"
            ));
        }
    }
}
