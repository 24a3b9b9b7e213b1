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
    Kube {
        cluster: &'a str,
        namespace: Option<&'a str>,
        resource: &'a str,
    },
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
                namespace: Some(ns),
                resource,
            } => {
                write!(f, "kube:{cluster}/{ns}/{resource}")
            }
            Resource::Kube {
                cluster,
                namespace: None,
                resource,
            } => {
                write!(f, "kube:{cluster}/{resource}")
            }
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
