use std::collections::BTreeMap;
use std::fmt;

/// What a front-end wants to reach, borrowed from the request it is handling so that a
/// decision allocates nothing.
#[derive(Clone, Copy, Debug)]
pub enum Resource<'a> {
    Ssh {
        host: &'a str,
        labels: &'a BTreeMap<String, String>,
        login: &'a str,
    },
    /// One Kubernetes API request, as the API server reads it.
    Kube {
        cluster: &'a str,
        /// None for cluster-scoped objects and requests across all namespaces.
        namespace: Option<&'a str>,
        /// The API group; empty for the core group.
        group: &'a str,
        resource: &'a str,
        subresource: Option<&'a str>,
        name: Option<&'a str>,
    },
    /// Discovery on a cluster (`/api`, `/apis`, `/version`, `/openapi/…`): open to anyone
    /// with a grant on it.
    KubeDiscovery { cluster: &'a str },
    /// One HTTP request to an app; `path` normalized by the front-end, without the query.
    Http {
        app: &'a str,
        method: &'a str,
        path: &'a str,
    },
}

/// What it wants to do there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    SshLogin,
    SshPortForward,
    Kube { verb: &'a str },
    HttpRequest,
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Ssh { host, login, .. } => write!(f, "ssh:{login}@{host}"),
            Resource::Kube {
                cluster,
                namespace,
                group,
                resource,
                subresource,
                name,
            } => {
                write!(f, "kube:{cluster}/")?;
                if let Some(ns) = namespace {
                    write!(f, "{ns}/")?;
                }
                f.write_str(resource)?;
                if !group.is_empty() {
                    write!(f, ".{group}")?;
                }
                if let Some(name) = name {
                    write!(f, "/{name}")?;
                }
                if let Some(sub) = subresource {
                    write!(f, "/{sub}")?;
                }
                Ok(())
            }
            Resource::KubeDiscovery { cluster } => write!(f, "kube:{cluster} discovery"),
            Resource::Http { app, method, path } => write!(f, "http:{app} {method} {path}"),
        }
    }
}

impl fmt::Display for Action<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::SshLogin => f.write_str("login"),
            Action::SshPortForward => f.write_str("port-forward"),
            Action::Kube { verb } => f.write_str(verb),
            Action::HttpRequest => f.write_str("request"),
        }
    }
}
