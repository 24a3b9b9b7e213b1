//! `[[kube.clusters]]`: Kubernetes API servers the proxy forwards to, each with the proxy's
//! own credential there. That credential needs only the `impersonate` verb (see the README);
//! what a user may do is the grant's scope here and the impersonated groups' RBAC there.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration_field;

#[derive(Clone, Debug)]
pub struct KubeCluster {
    pub name: String,
    /// `https://host:port[/prefix]` of the API server, without a trailing slash.
    pub server: url::Url,
    pub tls: KubeTls,
    pub credential: KubeCredential,
    pub connect_timeout: Duration,
}

#[derive(Clone, Debug)]
pub enum KubeTls {
    /// The API server's certificate must chain to the CAs in this PEM file.
    CaFile(PathBuf),
    /// No check at all: for throwaway test clusters only; the proxy warns at every start.
    InsecureSkipVerify,
}

#[derive(Clone, Debug)]
pub enum KubeCredential {
    /// A bearer token, read from this file (and read again when it changes, as service
    /// account tokens are rotated).
    TokenFile(PathBuf),
    /// A client certificate and its key, both PEM.
    ClientCert { cert: PathBuf, key: PathBuf },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubeSection {
    #[serde(default)]
    clusters: Vec<RawCluster>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: String,
    server: String,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_verify: bool,
    token_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
    connect_timeout: Option<String>,
}

pub(super) fn validate_kube(raw: RawKubeSection, errors: &mut Vec<String>) -> Vec<KubeCluster> {
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(raw.clusters.len());
    for (i, c) in raw.clusters.into_iter().enumerate() {
        let at = format!("kube.clusters[{i}]");
        // The name is a path segment of /k8s/{name}/ and a token audience.
        if c.name.is_empty()
            || c.name == "*"
            || !c
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            errors.push(format!(
                "{at}.name: {:?} must be lower-case letters, digits, '-' or '_'",
                c.name
            ));
        }
        if !names.insert(c.name.clone()) {
            errors.push(format!("{at}.name: duplicate cluster name {:?}", c.name));
        }
        let server = match url::Url::parse(&c.server) {
            Ok(u) if u.scheme() != "https" => {
                errors.push(format!(
                    "{at}.server: {:?} must be an https:// URL (the proxy sends a credential there)",
                    c.server
                ));
                None
            }
            Ok(u)
                if u.host_str().is_none()
                    || !u.username().is_empty()
                    || u.query().is_some()
                    || u.fragment().is_some() =>
            {
                errors.push(format!(
                    "{at}.server: {:?} needs a host, and no user info, query or fragment",
                    c.server
                ));
                None
            }
            Ok(u) => Some(u),
            Err(e) => {
                errors.push(format!("{at}.server: {:?} is not a URL: {e}", c.server));
                None
            }
        };
        let tls = match (c.ca_file, c.insecure_skip_verify) {
            (Some(f), false) => KubeTls::CaFile(f),
            (None, true) => KubeTls::InsecureSkipVerify,
            (Some(_), true) => {
                errors.push(format!("{at}: give ca_file or insecure_skip_verify, not both"));
                KubeTls::InsecureSkipVerify
            }
            (None, false) => {
                errors.push(format!(
                    "{at}: needs ca_file, the CA that signs the API server's certificate (insecure_skip_verify only for test clusters)"
                ));
                KubeTls::InsecureSkipVerify
            }
        };
        let credential = match (c.token_file, c.client_cert_file, c.client_key_file) {
            (Some(t), None, None) => Some(KubeCredential::TokenFile(t)),
            (None, Some(cert), Some(key)) => Some(KubeCredential::ClientCert { cert, key }),
            (None, Some(_), None) | (None, None, Some(_)) => {
                errors.push(format!("{at}: client_cert_file and client_key_file go together"));
                None
            }
            (None, None, None) => {
                errors.push(format!(
                    "{at}: needs the proxy's credential on the cluster: token_file, or client_cert_file and client_key_file"
                ));
                None
            }
            (Some(_), _, _) => {
                errors.push(format!("{at}: give token_file or a client certificate, not both"));
                None
            }
        };
        let connect_timeout = duration_field(
            &format!("{at}.connect_timeout"),
            c.connect_timeout.as_deref(),
            Duration::from_secs(5),
            errors,
        );
        if let (Some(server), Some(credential)) = (server, credential) {
            out.push(KubeCluster {
                name: c.name,
                server,
                tls,
                credential,
                connect_timeout,
            });
        }
    }
    out
}

/// Verbs a profile may list: the API server's request verbs (exec, attach, port-forward and
/// proxy streams are `create` on their subresource).
pub const KUBE_VERBS: [&str; 8] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

/// A profile's `kube.resources` entry: `pods`, `pods/log`, `pods/*`, `*/scale`,
/// `deployments.apps`, or `*`.
pub(super) fn resource_entry_ok(entry: &str) -> bool {
    let (resource, sub) = match entry.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (entry, None),
    };
    let word = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    (resource == "*" || word(resource)) && sub.is_none_or(|s| s == "*" || (word(s) && !s.contains('.')))
}
